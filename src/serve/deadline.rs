//! The shutdown deadline: SIGTERM ends `serve` by
//! `DYNOSTAT_SHUTDOWN_GRACE + DYNOSTAT_SHUTDOWN_TIMEOUT` (plus [`SLACK`])
//! whatever its threads are doing.
//!
//! In: the first SIGTERM or SIGINT, seen by a thread of its own (not by the
//! flush runtime, which a busy or blocked main thread would never poll).
//! Out: nothing when the orderly shutdown finishes in time (the process
//! exits first); else one error line saying what was not flushed, from the
//! [`Phase`] the shutdown reached, and `_exit(0)`: the signal was obeyed, and
//! the agent must not restart a listener the dyno is stopping.
//!
//! Must never: take the aggregator's lock, or wait on anything another
//! thread holds (`_exit` runs no `atexit` handler and flushes no stdio).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::Shared;
use crate::config::Config;

/// Past the deadline, the orderly path gets this long to return before the
/// process is ended (within the contract's 1 s).
pub(super) const SLACK: Duration = Duration::from_millis(500);

/// A loop quiet this long at the deadline is named in the last line.
const BUSY_AFTER: Duration = Duration::from_millis(500);

/// How far shutdown got, for the last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// No signal seen by the flush loop yet (it may be stuck in a flush).
    Running = 0,
    /// Receiving the last metrics.
    Grace = 1,
    /// Closing and encoding the open bucket.
    FinalFlush = 2,
    /// Delivering what is queued.
    Draining = 3,
    /// Everything handed over and drained; threads are being joined.
    Done = 4,
}

/// Records that shutdown reached `phase`.
pub(super) fn enter(shared: &Shared, phase: Phase) {
    shared.phase.store(phase as u8, Ordering::Relaxed);
}

/// Starts the deadline thread.
pub(super) fn arm(config: &Config, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .context("could not install the shutdown deadline's signal handler")?;
    let allowed = config.shutdown_grace + config.shutdown_timeout;
    std::thread::Builder::new()
        .name("deadline".into())
        .spawn(move || {
            let Some(first) = signals.forever().next() else {
                return;
            };
            let at = Instant::now() + allowed + SLACK;
            let mut interrupted = first == libc::SIGINT;
            // Later signals: a second SIGINT exits at once (130), as the
            // flush loop would if it could run; SIGTERMs wait.
            loop {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(Duration::from_millis(50)));
                // Measures each loop's quiet, for the last line.
                let _ = shared.monitor.laggard(Duration::MAX);
                for sig in signals.pending() {
                    if sig == libc::SIGINT {
                        if interrupted {
                            exit(128 + libc::SIGINT);
                        }
                        interrupted = true;
                    }
                }
            }
            tracing::error!(
                after_ms = u64::try_from(allowed.as_millis()).unwrap_or(u64::MAX),
                queued_bytes = shared.stats.queue_bytes.load(Ordering::Relaxed),
                "shutdown deadline (DYNOSTAT_SHUTDOWN_GRACE + DYNOSTAT_SHUTDOWN_TIMEOUT) passed; exiting now: {}",
                unflushed(&shared)
            );
            exit(0);
        })
        .context("could not start the shutdown deadline thread")?;
    Ok(())
}

/// What was left, said from the phase shutdown reached.
fn unflushed(shared: &Shared) -> String {
    let busy = shared
        .monitor
        .laggard(BUSY_AFTER)
        .map_or_else(String::new, |what| format!(" (busy: {what})"));
    let phase = shared.phase.load(Ordering::Relaxed);
    let what = match phase {
        p if p == Phase::Running as u8 || p == Phase::Grace as u8 => {
            "the open bucket was not flushed; the flush loop did not get to it"
        }
        p if p == Phase::FinalFlush as u8 => {
            "the open bucket was not flushed; its flush did not finish"
        }
        p if p == Phase::Draining as u8 => {
            "the payloads still queued were not delivered; the drain did not return"
        }
        _ => "everything was flushed; a thread did not stop",
    };
    format!("{what}{busy}")
}

/// Ends the process now, from any thread, without waiting on locks.
fn exit(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and ends the process; nothing
    // after it runs.
    unsafe { libc::_exit(code) }
}
