//! supervise: child processes as values with a lifecycle.
//!
//! In: a `std::process::Command`. Out: a [`Job`] you can `signal`, `stop`
//! (SIGTERM, a grace period, then SIGKILL, reported as forced) and `wait` on,
//! and an [`Exit`] that maps to the shell's exit-code convention (code, or
//! 128 + signal). Also the restart budget ([`Backoff`]) the agent uses.
//!
//! Every job runs in its **own process group**, and signals go to the whole
//! group, so a `sh -c` wrapper and the grandchildren it forks are stopped
//! together (foreman signals pids and orphans grandchildren; dumb-init and
//! honcho signal groups, as we do). Reaping is central: [`reap`] collects
//! every exited child with `waitpid(-1)`, including orphans adopted when the
//! process is a child subreaper ([`become_subreaper`]).
//!
//! Must never: block without a deadline in `stop`, wait for children by any
//! other means in a process that uses `Job` (the central reaper would race
//! it), or signal a process group it did not create.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
}

impl Exit {
    /// The shell convention: the code, or 128 + the signal number
    /// (dumb-init's rule; honcho's 247 for SIGKILL and foreman's 0 are wrong).
    pub fn code(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128 + s,
        }
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Code(c) => write!(f, "exited with code {c}"),
            Self::Signal(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// The exit statuses collected by [`reap`], by pid, for pids that are jobs.
/// `None` means still running.
static REGISTRY: Mutex<Option<HashMap<i32, Option<Exit>>>> = Mutex::new(None);

fn registry() -> MutexGuard<'static, Option<HashMap<i32, Option<Exit>>>> {
    // The map stays consistent even if a holder panicked.
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reaps every child that has exited: jobs get their status recorded, adopted
/// orphans (when a subreaper) are simply collected. Never blocks.
pub fn reap() {
    let mut reg = registry();
    let map = reg.get_or_insert_with(HashMap::new);
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                if let Some(slot) = map.get_mut(&pid.as_raw()) {
                    *slot = Some(Exit::Code(code));
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                if let Some(slot) = map.get_mut(&pid.as_raw()) {
                    *slot = Some(Exit::Signal(sig as i32));
                }
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Makes this process a child subreaper (Linux): orphaned descendants are
/// re-parented to us, so [`reap`] collects them and none lingers as a zombie.
/// Returns false where unsupported.
pub fn become_subreaper() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument
        // and touches no memory of ours.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Our direct children that are still alive (Linux `/proc`), e.g. adopted
/// orphans that left their group with `setsid`.
pub fn children() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Sends `sig` to every direct child (and its group, if it leads one).
/// Used last at shutdown so that nothing outlives the runner.
pub fn signal_all_children(sig: Signal) {
    for pid in children() {
        let _ = killpg(Pid::from_raw(pid), sig);
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// How a [`Job::stop`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// How the process ended.
    pub exit: Exit,
    /// True when the grace period ran out and the group was SIGKILLed: a
    /// timeout, never to be reported as a clean stop.
    pub forced: bool,
}

/// Options for [`Job::start_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Make the job's group the terminal's foreground group (stdin must be
    /// that terminal), so an interactive command can read it and gets the
    /// terminal's Ctrl-C directly. Call [`reclaim_terminal`] after it exits.
    pub foreground: bool,
}

/// A supervised child process, leader of its own process group.
#[derive(Debug)]
pub struct Job {
    pid: Pid,
    exit: Option<Exit>,
    started: Instant,
}

impl Job {
    /// Starts `cmd` in a new process group.
    pub fn start(cmd: &mut Command) -> io::Result<Self> {
        Self::start_with(cmd, StartOptions::default())
    }

    /// Starts `cmd` in a new process group, with options.
    pub fn start_with(cmd: &mut Command, opts: StartOptions) -> io::Result<Self> {
        let foreground = opts.foreground;
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe functions (setpgid, sigprocmask, tcsetpgrp,
        // getpid) with no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if foreground {
                    // A background group calling tcsetpgrp gets SIGTTOU: block it.
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    let mut old: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGTTOU);
                    libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
                    libc::tcsetpgrp(0, libc::getpid());
                    libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                }
                Ok(())
            });
        }
        // Hold the registry across spawn so a concurrent reap cannot collect
        // the child before it is registered.
        let mut reg = registry();
        let child = cmd.spawn()?;
        let raw = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
        reg.get_or_insert_with(HashMap::new).insert(raw, None);
        drop(reg);
        // The std handle is dropped on purpose: reaping is central (see reap).
        drop(child);
        Ok(Self {
            pid: Pid::from_raw(raw),
            exit: None,
            started: Instant::now(),
        })
    }

    /// The process id (also the process-group id).
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// When the job was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Sends `sig` to the job's whole process group. Still works after the
    /// leader exited, while grandchildren remain in the group. Returns false
    /// when nothing was left to signal.
    pub fn signal(&self, sig: Signal) -> bool {
        match killpg(self.pid, sig) {
            Ok(()) => true,
            // The group is gone; the leader alone may still be a zombie.
            Err(Errno::ESRCH) => false,
            Err(_) => kill(self.pid, sig).is_ok(),
        }
    }

    /// Whether any process of the job's group is still alive (zombies
    /// aside: call [`reap`] first; as a subreaper, orphans are reaped too).
    pub fn group_alive(&self) -> bool {
        match killpg(self.pid, None) {
            Ok(()) => true,
            Err(Errno::EPERM) => true,
            Err(_) => false,
        }
    }

    /// The exit status, if the leader has exited. Never blocks.
    pub fn try_wait(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            reap();
            let mut reg = registry();
            if let Some(map) = reg.as_mut() {
                if let Some(Some(exit)) = map.get(&self.pid.as_raw()).copied() {
                    map.remove(&self.pid.as_raw());
                    self.exit = Some(exit);
                }
            }
        }
        self.exit
    }

    /// Waits for the leader to exit (polling the central reaper).
    pub fn wait(&mut self) -> Exit {
        loop {
            if let Some(exit) = self.try_wait() {
                return exit;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the leader to exit until `deadline`.
    pub fn wait_until(&mut self, deadline: Instant) -> Option<Exit> {
        loop {
            if let Some(exit) = self.try_wait() {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM to the group, up to `timeout` for the leader and the rest of
    /// the group to go, then SIGKILL to the group. Leaves nothing behind.
    pub fn stop(&mut self, timeout: Duration) -> Stopped {
        self.stop_with(Signal::SIGTERM, timeout)
    }

    /// As [`Job::stop`], with another first signal (e.g. SIGINT).
    pub fn stop_with(&mut self, first: Signal, timeout: Duration) -> Stopped {
        self.signal(first);
        let deadline = Instant::now() + timeout;
        loop {
            let exit = self.try_wait();
            if let Some(exit) = exit {
                if !self.group_alive() {
                    return Stopped {
                        exit,
                        forced: false,
                    };
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        self.kill()
    }

    /// SIGKILL to the group at once, then reap the leader.
    pub fn kill(&mut self) -> Stopped {
        self.signal(Signal::SIGKILL);
        // SIGKILL cannot be caught; a process in uninterruptible sleep may
        // take a moment, so wait, but boundedly.
        let exit = self
            .wait_until(Instant::now() + KILL_WAIT)
            .unwrap_or(Exit::Signal(Signal::SIGKILL as i32));
        Stopped { exit, forced: true }
    }
}

/// How often waits poll the reaper.
const POLL: Duration = Duration::from_millis(10);

/// How long to wait for a SIGKILLed process to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Takes the terminal on stdin back for our own process group after a
/// foreground job ended. Harmless when stdin is not a terminal.
pub fn reclaim_terminal() {
    // SAFETY: plain syscalls on our own fd 0 and signal mask.
    unsafe {
        if libc::isatty(0) != 1 {
            return;
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        libc::tcsetpgrp(0, libc::getpgrp());
        libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

/// Whether we own the terminal on stdin (it is a TTY and our group is its
/// foreground group): then a `run` command may take it over.
pub fn owns_terminal() -> bool {
    // SAFETY: plain syscalls on fd 0.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// A restart budget with exponential backoff and jitter.
///
/// About 100 ms after the first crash, doubling to 30 s; a run that lasted a
/// minute resets it. More than `intensity` crashes within `period` (OTP's
/// restart intensity) switches to *slow mode*: every retry waits the maximum
/// until a run is stable again, and the caller is told once so it can say so.
/// supervisord gives up (FATAL) instead; for a metrics sidecar, retrying
/// slowly forever is the better failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first delay. Defaults to 100 ms.
    pub initial: Duration,
    /// The longest delay. Defaults to 30 s.
    pub max: Duration,
    /// A run at least this long resets the backoff. Defaults to 60 s.
    pub stable_after: Duration,
    /// Crashes allowed within `period` before slow mode. Defaults to 5.
    pub intensity: usize,
    /// The window for `intensity`. Defaults to 60 s.
    pub period: Duration,
    attempt: u32,
    recent: std::collections::VecDeque<Instant>,
    slow: bool,
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Wait this long before starting again.
    pub delay: Duration,
    /// True exactly when this crash switched to slow mode.
    pub entered_slow_mode: bool,
    /// Crashes within the current period, this one included.
    pub recent_crashes: usize,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            intensity: 5,
            period: Duration::from_secs(60),
            attempt: 0,
            recent: std::collections::VecDeque::new(),
            slow: false,
        }
    }
}

impl Backoff {
    /// Records a crash at `now` after a run of `ran`; returns the delay before
    /// the next start. `jitter` is a number in [0, 1) (e.g. `fastrand::f64()`).
    pub fn on_exit(&mut self, now: Instant, ran: Duration, jitter: f64) -> Retry {
        if ran >= self.stable_after {
            self.attempt = 0;
            self.recent.clear();
            self.slow = false;
        }
        self.recent.push_back(now);
        while let Some(&first) = self.recent.front() {
            if now.duration_since(first) > self.period {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        let entered = !self.slow && self.recent.len() > self.intensity;
        if entered {
            self.slow = true;
        }
        let base = if self.slow {
            self.max
        } else {
            let factor = 2u32.saturating_pow(self.attempt.min(20));
            self.initial.saturating_mul(factor).min(self.max)
        };
        self.attempt = self.attempt.saturating_add(1);
        // ±25 % jitter so that many dynos do not restart in lockstep.
        let scaled = base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0));
        Retry {
            delay: scaled.min(self.max),
            entered_slow_mode: entered,
            recent_crashes: self.recent.len(),
        }
    }

    /// Whether we are retrying at the slowest rate.
    pub fn is_slow(&self) -> bool {
        self.slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Exit::Code(42).code(), 42);
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(Exit::Signal(15).to_string(), "killed by SIGTERM");
        assert_eq!(Exit::Code(3).to_string(), "exited with code 3");
    }

    #[test]
    fn backoff_doubles_from_100ms_to_30s_with_jitter() {
        let mut b = Backoff {
            intensity: 100,
            ..Backoff::default()
        };
        let t0 = Instant::now();
        let d: Vec<Duration> = (0..12)
            .map(|i| {
                b.on_exit(t0 + Duration::from_secs(i), Duration::ZERO, 0.5)
                    .delay
            })
            .collect();
        assert_eq!(d[0], Duration::from_millis(100));
        assert_eq!(d[1], Duration::from_millis(200));
        assert_eq!(d[3], Duration::from_millis(800));
        assert_eq!(d[11], Duration::from_secs(30));
        let lo = Backoff::default().on_exit(t0, Duration::ZERO, 0.0).delay;
        let hi = Backoff::default().on_exit(t0, Duration::ZERO, 0.999).delay;
        assert_eq!(lo, Duration::from_millis(75));
        assert!(hi > Duration::from_millis(124) && hi <= Duration::from_millis(125));
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        for i in 0..4 {
            b.on_exit(t0 + Duration::from_secs(i), Duration::ZERO, 0.5);
        }
        let r = b.on_exit(t0 + Duration::from_secs(100), Duration::from_secs(61), 0.5);
        assert_eq!(r.delay, Duration::from_millis(100));
    }

    #[test]
    fn repeated_crashes_enter_slow_mode_once() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let mut entered = 0;
        let mut last = Duration::ZERO;
        for i in 0..10 {
            let r = b.on_exit(t0 + Duration::from_millis(i * 100), Duration::ZERO, 0.5);
            entered += usize::from(r.entered_slow_mode);
            last = r.delay;
        }
        assert_eq!(entered, 1);
        assert!(b.is_slow());
        assert_eq!(last, Duration::from_secs(30));
    }

    // Job itself is tested through the binary (tests/runner.rs, tests/agent.rs):
    // its central waitpid(-1) must not run inside the shared unit-test process.
}
