//! agent: `dynostat agent`, the dyno sidecar the boot script starts with `&`
//! (and the CNB exec.d program starts detached, see `execd`).
//!
//! In: [`AgentConfig`] (from `config`, the only reader of the environment).
//! Out: a supervised `dynostat serve` child for as long as the app lives,
//! and exit code 0 whenever it decides not to run.
//!
//! Decisions, in order: `DISABLE_DATADOG_AGENT` → exit 0 silently; a `DYNO`
//! whose type `DYNOSTAT_DYNO_TYPES` excludes → exit 0; on a dyno without
//! `DD_API_KEY` → one hint line (none in a one-off dyno) and exit 0, since
//! without a key a dyno's listener would only drop what it receives; the UDP
//! port already bound → one debug line and exit 0 (idempotent: two sourced
//! boot scripts leave one agent). Off a dyno it runs without a key, and the
//! listener prints its flushes to the console.
//!
//! Supervision: the listener is restarted with [`Backoff`] (100 ms doubling
//! to 30 s with jitter, reset after a minute of stable running, slow mode
//! after repeated crashes), and each restart is logged with the exit status
//! or signal. The official Datadog buildpack starts its agent once and
//! never restarts it. On SIGTERM, SIGINT or SIGHUP, or when the process that
//! started us goes away (polled with `getppid()`, because PR_SET_PDEATHSIG
//! follows the spawning *thread*; or the pid in `DYNOSTAT_WATCH_PID`, which
//! the CNB exec.d program sets), the signal is passed to the listener,
//! which gets [`SHUTDOWN_WAIT`] to make its final flush, inside Heroku's
//! 30 s window.
//!
//! Watchdog: the listener inherits the write end of a pipe
//! (`DYNOSTAT_PROGRESS_FD`) on which its watchdog thread writes a line every
//! 250 ms (`crate::progress`): `ok` while its receive loops and flush clock
//! move, else `stalled <what>`. On a stalled line, or after [`SILENCE`]
//! without a line, the listener is killed and restarted as after a crash,
//! with one log line that says what was seen. Nothing touches the disk.
//!
//! Must never: read stdin (fd 0 becomes /dev/null), hold the terminal, print
//! in a one-off dyno unless something is wrong, or outlive the app.

use std::io::Read as _;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{vars, AgentConfig, LogLevel};
use crate::process::supervise::{self, Backoff, Job};

/// How long the listener gets for its final flush after the signal:
/// Heroku SIGKILLs everything 30 s after SIGTERM.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(25);

/// How often the original parent is checked.
const PARENT_POLL: Duration = Duration::from_millis(500);

/// Main-loop tick.
const TICK: Duration = Duration::from_millis(100);

/// How long the listener may go without a line from its watchdog thread
/// (which writes every 250 ms) before it is taken for frozen and restarted.
pub const SILENCE: Duration = Duration::from_secs(20);

/// Runs `dynostat agent`; returns the exit code.
pub fn main() -> i32 {
    let config = match AgentConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dynostat agent: {e}");
            return 2;
        }
    };
    if config.disabled {
        return 0;
    }
    detach_stdin();
    let one_off = config.is_one_off();
    // Quiet in a one-off dyno: warnings and errors only, unless the user
    // asked for more detail than the default.
    let level = if one_off && config.log_level == LogLevel::Info {
        LogLevel::Warn
    } else {
        config.log_level
    };
    crate::serve::init_logging(level);
    for note in &config.notes {
        tracing::error!("{note}");
    }

    if let Some(ty) = config.dyno_type() {
        if !config.dyno_types.allows(ty) {
            tracing::debug!(
                dyno_type = ty,
                "DYNOSTAT_DYNO_TYPES excludes this dyno type; not starting"
            );
            return 0;
        }
    }
    if config.dyno.is_some() && !config.has_api_key {
        if !one_off {
            tracing::info!(
                "DD_API_KEY is not set, so metrics are not sent; run `heroku config:set DD_API_KEY=<your key>` to start forwarding"
            );
        }
        return 0;
    }
    if config.port != 0 {
        let addr = SocketAddr::new(config.bind_host, config.port);
        match UdpSocket::bind(addr) {
            Ok(sock) => drop(sock),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::debug!(%addr, "a listener already owns the port; nothing to do");
                return 0;
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind the DogStatsD port; set DD_DOGSTATSD_PORT or DD_BIND_HOST");
                return 1;
            }
        }
    }
    supervise(&config, level)
}

/// Replaces stdin with /dev/null, so nothing we run can read the terminal.
fn detach_stdin() {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 0 of a valid, open descriptor.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
        }
    }
}

/// Whether `sig` was ignored when we started (e.g. SIGINT for a `&` job of
/// a non-interactive shell): such a signal stays ignored.
fn inherited_ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the disposition.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The supervision loop. Returns when the dyno shuts down.
fn supervise(config: &AgentConfig, level: LogLevel) -> i32 {
    supervise::become_subreaper();
    // A background job must be able to write to the terminal without being
    // stopped, and never reads it.
    // SAFETY: setting SIG_IGN for job-control signals; no handler involved.
    unsafe {
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
    }
    let mut wanted = vec![libc::SIGTERM, libc::SIGHUP];
    if !inherited_ignored(libc::SIGINT) {
        wanted.push(libc::SIGINT);
    }
    let (tx, rx) = mpsc::channel::<i32>();
    match signal_hook::iterator::Signals::new(&wanted) {
        Ok(mut signals) => {
            let spawned = std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || {
                    for sig in signals.forever() {
                        if tx.send(sig).is_err() {
                            break;
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the signal thread");
                return 1;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return 1;
        }
    }

    let watch = Watch::new(config.watch_pid);
    let mut last_parent_check = Instant::now();
    let mut backoff = Backoff::default();
    let mut child: Option<Job> = None;
    let mut heart: Option<Heart> = None;
    let mut next_start = Some(Instant::now());

    let signal = loop {
        match rx.recv_timeout(TICK) {
            Ok(sig) => break Signal::try_from(sig).unwrap_or(Signal::SIGTERM),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Signal::SIGTERM,
        }
        if last_parent_check.elapsed() >= PARENT_POLL {
            last_parent_check = Instant::now();
            if watch.app_gone() {
                tracing::info!("the app exited; stopping the listener");
                break Signal::SIGTERM;
            }
        }
        if let (Some(job), Some(h)) = (child.as_mut(), heart.as_mut()) {
            if let Some(seen) = h.check() {
                // Once: the exit below restarts it, without a second line.
                tracing::warn!(
                    pid = job.pid(),
                    "the listener stopped making progress ({seen}); killing and restarting it"
                );
                job.signal(Signal::SIGKILL);
                h.killed = true;
            }
        }
        if let Some(job) = child.as_mut() {
            if let Some(exit) = job.try_wait() {
                let ran = job.started().elapsed();
                // Whatever the listener left in its group goes with it.
                job.signal(Signal::SIGKILL);
                child = None;
                let killed = heart.take().is_some_and(|h| h.killed);
                let retry = backoff.on_exit(Instant::now(), ran, fastrand::f64());
                if killed {
                    tracing::debug!(status = %exit, "the stalled listener is gone");
                } else {
                    tracing::warn!(
                        status = %exit,
                        ran_ms = u64::try_from(ran.as_millis()).unwrap_or(u64::MAX),
                        restart_in_ms = u64::try_from(retry.delay.as_millis()).unwrap_or(u64::MAX),
                        "the listener died; restarting it"
                    );
                }
                if retry.entered_slow_mode {
                    tracing::warn!(
                        crashes = retry.recent_crashes,
                        period_s = backoff.period.as_secs(),
                        retry_every_s = backoff.max.as_secs(),
                        "the listener keeps crashing; retrying at the slowest rate until it runs for a minute"
                    );
                }
                next_start = Some(Instant::now() + retry.delay);
            }
        }
        if child.is_none() && next_start.is_some_and(|t| Instant::now() >= t) {
            match start_serve(config, level) {
                Ok((job, h)) => {
                    tracing::debug!(pid = job.pid(), "listener started");
                    child = Some(job);
                    heart = h;
                    next_start = None;
                }
                Err(e) => {
                    let retry = backoff.on_exit(Instant::now(), Duration::ZERO, fastrand::f64());
                    tracing::error!(error = %e, restart_in_ms = u64::try_from(retry.delay.as_millis()).unwrap_or(u64::MAX), "cannot start the listener");
                    next_start = Some(Instant::now() + retry.delay);
                }
            }
        }
    };

    if let Some(mut job) = child {
        tracing::debug!(
            signal = signal.as_str(),
            "passing the signal to the listener"
        );
        let stopped = job.stop_with(signal, SHUTDOWN_WAIT);
        if stopped.forced {
            tracing::warn!(
                wait_s = SHUTDOWN_WAIT.as_secs(),
                "the listener did not finish its final flush in time and was killed"
            );
        }
    }
    supervise::reap();
    0
}

/// What tells us the app is gone.
enum Watch {
    /// Our parent changed from this pid (the boot shell exec'ed the app).
    Parent(nix::unistd::Pid),
    /// This pid exited (`DYNOSTAT_WATCH_PID`, set by the CNB exec.d program,
    /// whose own exit re-parents us at once).
    Pid(nix::unistd::Pid),
    /// Started already detached under init, without a pid to watch.
    Nothing,
}

impl Watch {
    fn new(watch_pid: Option<i32>) -> Self {
        match watch_pid {
            Some(pid) if pid > 1 => return Self::Pid(nix::unistd::Pid::from_raw(pid)),
            // The app is pid 1 (a container whose entry point is the CNB
            // launcher): when it exits, the kernel ends every process in the
            // namespace. Our parent is exec.d, which exits at once: not a sign.
            Some(_) => return Self::Nothing,
            None => {}
        }
        let parent = nix::unistd::getppid();
        if parent.as_raw() > 1 {
            Self::Parent(parent)
        } else {
            Self::Nothing
        }
    }

    fn app_gone(&self) -> bool {
        match *self {
            Self::Parent(parent) => nix::unistd::getppid() != parent,
            Self::Pid(pid) => {
                nix::sys::signal::kill(pid, None) == Err(nix::errno::Errno::ESRCH)
                    || is_zombie(pid.as_raw())
            }
            Self::Nothing => false,
        }
    }
}

/// Whether `pid` is a zombie (exited, not yet reaped by its parent).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// Spawns `dynostat serve` with our stdout and stderr, stdin from /dev/null,
/// and the write end of a progress pipe (none if the pipe cannot be made:
/// the listener then runs unwatched, as before the watchdog).
fn start_serve(config: &AgentConfig, level: LogLevel) -> std::io::Result<(Job, Option<Heart>)> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    // On a dyno a typo in an optional setting must not cost every metric:
    // the listener logs it and uses the default (config/serve.rs).
    cmd.args(["serve", "--on-dyno"]).stdin(Stdio::null());
    if level != config.log_level {
        cmd.env(vars::DD_LOG_LEVEL, "warn");
    }
    let pipe = progress_pipe()
        .map_err(|e| tracing::warn!(error = %e, "cannot make the progress pipe; the listener runs without the watchdog"))
        .ok();
    if let Some((_, write)) = &pipe {
        let fd = write.as_raw_fd();
        cmd.env(vars::DYNOSTAT_PROGRESS_FD, fd.to_string());
        // SAFETY: fcntl on a descriptor we own, in the child between fork
        // and exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let job = Job::start(&mut cmd)?;
    // Our copy of the write end closes here: the child holds its own.
    Ok((job, pipe.map(|(read, _)| Heart::new(read))))
}

/// A pipe whose read end is non-blocking, both ends close-on-exec.
fn progress_pipe() -> std::io::Result<(std::fs::File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours alone. The write end is
    // non-blocking too: the listener's watchdog skips a line rather than
    // wait on a full pipe.
    unsafe {
        Ok((
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        ))
    }
}

/// The agent's end of one listener's progress pipe.
struct Heart {
    pipe: std::fs::File,
    /// Bytes read since the last newline.
    partial: Vec<u8>,
    /// When the last line came (or the listener started).
    last: Instant,
    /// The watchdog killed this listener.
    killed: bool,
}

impl Heart {
    fn new(pipe: std::fs::File) -> Self {
        Self {
            pipe,
            partial: Vec::new(),
            last: Instant::now(),
            killed: false,
        }
    }

    /// Reads what the listener wrote; says what was seen if it stalled or
    /// went silent (once: `None` after a kill).
    fn check(&mut self) -> Option<String> {
        if self.killed {
            return None;
        }
        let mut buf = [0u8; 4096];
        let mut stalled = None;
        // Non-blocking: ends at WouldBlock, or 0 when the listener closed it.
        while let Ok(n @ 1..) = self.pipe.read(&mut buf) {
            self.partial.extend_from_slice(&buf[..n]);
            while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                self.last = Instant::now();
                if let Some(what) = line.strip_prefix(crate::progress::STALLED_PREFIX) {
                    stalled.get_or_insert_with(|| what.to_owned());
                }
            }
            // A listener never writes long lines: keep the buffer bounded.
            if self.partial.len() > 4096 {
                self.partial.clear();
            }
        }
        if stalled.is_some() {
            return stalled;
        }
        let quiet = self.last.elapsed();
        (quiet > SILENCE).then(|| {
            format!(
                "no word from its watchdog thread for {:.1} s",
                quiet.as_secs_f64()
            )
        })
    }
}
