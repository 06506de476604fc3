//! Progress: loops that must keep moving say so, and one check names the
//! first that stopped. `dynostat agent` restarts a `serve` that stopped.
//!
//! In: a [`Monitor`] that `serve` makes; each loop that must keep moving
//! (a receive loop, the flush clock; later the trace relay, the checks)
//! takes a [`Progress`] from [`Monitor::register`] with how long it may go
//! without moving, and calls [`Progress::beat`] each time round. Out:
//! [`Monitor::stalled`], a one-line description of the first loop that has
//! not beaten within its allowance, which the watchdog thread
//! ([`watch`]) reports to the agent over an inherited pipe.
//!
//! Registering, from any subsystem that `serve` starts:
//!
//! ```
//! use std::time::Duration;
//! let monitor = dynostat::progress::Monitor::new();
//! let progress = monitor.register("trace relay", Duration::from_secs(30));
//! // ... in the loop, each time round:
//! progress.beat();
//! assert!(monitor.stalled().is_none());
//! // Dropping the handle stops the watching (a loop that ended on purpose).
//! drop(progress);
//! ```
//!
//! Must never: cost a loop more than one relaxed atomic add per beat (a
//! receive loop beats once per `recvmmsg` call, not per line), lock, or
//! write anything to disk.

use std::io::Write as _;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// How often the watchdog looks, and writes a line to the agent.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The line the watchdog writes while every loop moves.
pub const OK_LINE: &str = "ok";

/// The prefix of the line it writes once a loop stopped; the rest says which
/// and for how long.
pub const STALLED_PREFIX: &str = "stalled ";

/// One watched loop.
#[derive(Debug)]
struct Slot {
    name: &'static str,
    within: Duration,
    beats: AtomicU64,
}

/// What the monitor remembers of a slot between checks.
#[derive(Debug)]
struct Seen {
    slot: Weak<Slot>,
    beats: u64,
    since: Instant,
}

/// The registry of watched loops. Cheap to share: clone the `Arc` it lives in.
#[derive(Debug, Default)]
pub struct Monitor {
    seen: Mutex<Vec<Seen>>,
    /// Set once the process is stopping on purpose: loops end then, and
    /// that is not a stall.
    stopping: AtomicBool,
}

/// A loop's handle: call [`Progress::beat`] each time round. Dropping it
/// stops the watching.
#[derive(Debug)]
pub struct Progress(Arc<Slot>);

impl Progress {
    /// This loop moved.
    #[inline]
    pub fn beat(&self) {
        self.0.beats.fetch_add(1, Ordering::Relaxed);
    }
}

impl Monitor {
    /// An empty monitor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Watches a loop called `name` (as the log will say it), which must
    /// beat at least once every `within` from now on.
    pub fn register(&self, name: &'static str, within: Duration) -> Progress {
        let slot = Arc::new(Slot {
            name,
            within,
            beats: AtomicU64::new(0),
        });
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Seen {
                slot: Arc::downgrade(&slot),
                beats: 0,
                since: Instant::now(),
            });
        Progress(slot)
    }

    /// From now on nothing counts as stalled: the process is stopping.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The first loop that has not beaten within its allowance, said in
    /// one line (`"the UDP receive loop: no progress for 3.2 s (allowed
    /// 2.0 s)"`), or `None` while all move (or the process is stopping).
    pub fn stalled(&self) -> Option<String> {
        if self.stopping.load(Ordering::Relaxed) {
            return None;
        }
        let (name, quiet, within) = self.quietest()?;
        (quiet > within).then(|| {
            format!(
                "{name}: no progress for {:.1} s (allowed {:.1} s)",
                quiet.as_secs_f64(),
                within.as_secs_f64()
            )
        })
    }

    /// Even while stopping: the loop quiet the longest, if for at least
    /// `over`, said in one line. What a shutdown that ran out of time was
    /// waiting for; call it now and then while waiting, since a loop's
    /// quiet is measured between calls (of this or [`Monitor::stalled`]).
    pub fn laggard(&self, over: Duration) -> Option<String> {
        let (name, quiet, _) = self.quietest()?;
        (quiet >= over).then(|| format!("{name}: no progress for {:.1} s", quiet.as_secs_f64()))
    }

    /// Notes new beats; the live loop that has gone the longest without one
    /// since a call saw it move: its name, how long, and its allowance.
    fn quietest(&self) -> Option<(&'static str, Duration, Duration)> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|s| s.slot.strong_count() > 0);
        let mut out: Option<(&'static str, Duration, Duration)> = None;
        for s in seen.iter_mut() {
            let Some(slot) = s.slot.upgrade() else {
                continue;
            };
            let beats = slot.beats.load(Ordering::Relaxed);
            if beats != s.beats {
                s.beats = beats;
                s.since = now;
            }
            let quiet = now.duration_since(s.since);
            // The one furthest past its allowance, so a stalled loop is named
            // before one that is merely slow.
            let past = |q: Duration, w: Duration| q.as_secs_f64() - w.as_secs_f64();
            if out.is_none_or(|(_, q, w)| past(quiet, slot.within) > past(q, w)) {
                out = Some((slot.name, quiet, slot.within));
            }
        }
        out
    }
}

/// Starts the watchdog thread: every [`CHECK_EVERY`] it writes
/// [`OK_LINE`], or [`STALLED_PREFIX`] and what [`Monitor::stalled`] saw, as
/// one line to `fd` (the write end of the agent's pipe, which this process
/// inherited). The agent restarts the process on a stalled line, or when
/// the lines stop. A full pipe skips a line; other errors writing (the
/// agent is gone) end the thread.
pub fn watch(monitor: Arc<Monitor>, fd: RawFd) -> std::io::Result<()> {
    // SAFETY: the agent passed this descriptor open for us (config checked
    // it is a number); nothing else in this process uses or closes it.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            let line = match monitor.stalled() {
                None => format!("{OK_LINE}\n"),
                Some(what) => format!("{STALLED_PREFIX}{what}\n"),
            };
            match pipe.write_all(line.as_bytes()) {
                // A full pipe (the agent is busy): this line is skipped.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
                Ok(()) => {}
            }
            std::thread::sleep(CHECK_EVERY);
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_named_and_a_dropped_one_is_forgotten() {
        let m = Monitor::new();
        let fast = m.register("fast", Duration::from_millis(50));
        let slow = m.register("slow", Duration::from_secs(60));
        assert_eq!(m.stalled(), None);
        std::thread::sleep(Duration::from_millis(80));
        slow.beat();
        let said = m.stalled().expect("fast stalled");
        assert!(said.starts_with("fast: no progress for "), "{said}");
        fast.beat();
        assert_eq!(m.stalled(), None, "a beat since the last check");
        std::thread::sleep(Duration::from_millis(80));
        drop(fast);
        assert_eq!(m.stalled(), None, "dropped: not watched");
        let again = m.register("again", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert!(m.stalled().is_some());
        m.stopping();
        assert_eq!(m.stalled(), None, "stopping on purpose");
        let said = m.laggard(Duration::from_millis(1)).expect("still quiet");
        assert!(said.starts_with("again: no progress for "), "{said}");
        assert_eq!(m.laggard(Duration::from_secs(60)), None);
        drop(again);
    }
}
