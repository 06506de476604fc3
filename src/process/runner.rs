//! runner: `dynostat start`, `run` and `check`, the foreman-style side.
//!
//! In: the CLI arguments (defaults from `.foreman`), a Procfile, env files
//! and [`RunnerEnv`]. Out: running processes with prefixed, merged output,
//! and an exit code.
//!
//! The Procfile runs as Heroku runs it: `release` only when named, or with
//! `--release` as a release phase run to completion before the others.
//!
//! `start` follows foreman's conventions where they are good (output format
//! `HH:MM:SS web.1  | line`, `PORT = base + 100 × index + (instance − 1)`,
//! `PS`, "one process exits, stop them all") and fixes where they are not:
//! every process runs via `/bin/sh -c` in its own process group, shutdown is
//! SIGTERM to every group, `-t` seconds, then SIGKILL to the groups, and the
//! runner is a child subreaper, so no child or grandchild survives it; the
//! exit code is the first exiting process's code or 128 + signal (foreman
//! says 0 for a signal, honcho 247 for SIGKILL), or 130/143 when the runner
//! itself was interrupted. The listener (`dynostat serve`) runs beside the
//! processes as `statsd`; it is not *significant*: its death is reported and
//! the app carries on, and at shutdown it is stopped last so that it flushes
//! the app's final metrics.
//!
//! Must never: leave a process running after it returns, block one
//! process's output on another's, fail on invalid UTF-8 output, or read an
//! environment variable except through [`RunnerEnv`] and `config`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{vars, Config, RunnerEnv};
use crate::process::dotenv;
use crate::process::foreman;
use crate::process::procfile::{self, Procfile};
use crate::process::supervise::{self, Exit, Job, StartOptions};

/// `dynostat start` arguments. `-f`, `-e`, `-m`, `-p` and `-t` default to
/// what `.foreman` in the current directory says, as in foreman.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Process names to run (default: all but `release`).
    pub names: Vec<String>,
    /// The Procfile [default: Procfile].
    #[arg(short = 'f', long = "procfile")]
    pub procfile: Option<PathBuf>,
    /// Env files, repeatable (default: .env if present).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<PathBuf>,
    /// The root directory to run in.
    #[arg(short = 'd', long = "root")]
    pub root: Option<PathBuf>,
    /// Formation, e.g. `web=2,worker=1` or `all=2` (`release` only when named).
    #[arg(short = 'm', long = "formation")]
    pub formation: Option<String>,
    /// Base port [default: 5000].
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Seconds between SIGTERM and SIGKILL at shutdown [default: 5].
    #[arg(short = 't', long = "timeout")]
    pub timeout: Option<u64>,
    /// Run the `release` process to completion first, as Heroku's release
    /// phase does; start the others only if it exits 0.
    #[arg(long = "release")]
    pub release: bool,
    /// Do not print timestamps.
    #[arg(long = "no-timestamp")]
    pub no_timestamp: bool,
    /// Do not run the listener.
    #[arg(long = "no-statsd")]
    pub no_statsd: bool,
    /// The real environment does not win over env files.
    #[arg(long = "env-override")]
    pub env_override: bool,
    /// auto, always or never.
    #[arg(long = "color", default_value = "auto")]
    pub color: String,
}

/// `dynostat run` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Env files, repeatable (default: .env if present).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<PathBuf>,
    /// Do not run the listener.
    #[arg(long = "no-statsd")]
    pub no_statsd: bool,
    /// The real environment does not win over env files.
    #[arg(long = "env-override")]
    pub env_override: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `dynostat check` arguments (`-f` and `-e` default to `.foreman`'s, as for `start`).
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The Procfile [default: Procfile].
    #[arg(short = 'f', long = "procfile")]
    pub procfile: Option<PathBuf>,
    /// Env files, repeatable (default: .env if present).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<PathBuf>,
}

/// The exit code for bad input (Procfile, env file, flags).
const EXIT_USAGE: i32 = 2;

/// The default base port, as in foreman.
const DEFAULT_PORT: u16 = 5000;

/// The default Procfile.
const DEFAULT_PROCFILE: &str = "Procfile";

/// The default shutdown timeout, seconds, as in foreman.
const DEFAULT_TIMEOUT: u64 = 5;

/// The process Heroku runs as the release phase, and `start` runs only when
/// it is named (`start release`, `-m release=1`) or with `--release`.
pub const RELEASE: &str = "release";

/// A partial line (no newline yet) is printed after this long.
const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(100);

/// A line longer than this is printed in pieces.
const MAX_LINE: usize = 16 * 1024;

/// How long the listener gets to flush at shutdown before SIGKILL. Its own
/// deadline (grace + timeout, 6 s by default) is shorter.
const STATSD_STOP: Duration = Duration::from_secs(25);

/// How long the app waits for the listener to bind before starting anyway.
const LISTENER_READY: Duration = Duration::from_secs(3);

/// Main-loop tick: how quickly exits and signals are noticed.
const TICK: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------- formation

/// A formation: how many instances of each process, e.g. `web=2,worker=1`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Formation {
    all: Option<usize>,
    named: Vec<(String, usize)>,
}

impl Formation {
    /// Parses `web=2, worker = 1` or `all=2`. Spaces around items are fine;
    /// an empty item, a missing name or count, or a non-number is an error.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = Self::default();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!(
                    "formation `{s}` has an empty item; write e.g. web=2,worker=1"
                ));
            }
            let Some((name, count)) = item.split_once('=') else {
                return Err(format!(
                    "formation item `{item}` is not NAME=COUNT; write e.g. web=2"
                ));
            };
            let (name, count) = (name.trim(), count.trim());
            if name.is_empty() {
                return Err(format!(
                    "formation item `{item}` has no process name; write e.g. web={count}"
                ));
            }
            if !procfile::is_valid_name(name) {
                return Err(format!(
                    "formation item `{item}`: `{name}` is not a process name (letters, digits, `_`, `-`)"
                ));
            }
            let n: usize = count.parse().map_err(|_| {
                format!("formation item `{item}`: `{count}` is not a number of instances; write e.g. {name}=2")
            })?;
            if name == "all" {
                f.all = Some(n);
            } else if let Some(slot) = f.named.iter_mut().find(|(k, _)| k == name) {
                slot.1 = n;
            } else {
                f.named.push((name.to_owned(), n));
            }
        }
        Ok(f)
    }

    /// Instances of `name`: its own count, else `all`, else 1 when the
    /// formation names no process and 0 when it does (foreman's rule).
    pub fn count(&self, name: &str) -> usize {
        if let Some((_, n)) = self.named.iter().find(|(k, _)| k == name) {
            return *n;
        }
        self.all
            .unwrap_or(if self.named.is_empty() { 1 } else { 0 })
    }

    /// Whether the formation gives `name` a count of its own.
    fn names(&self, name: &str) -> bool {
        self.named.iter().any(|(k, _)| k == name)
    }

    /// Names the formation gives that the Procfile lacks.
    fn unknown<'a>(&'a self, procfile: &Procfile) -> Vec<&'a str> {
        self.named
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| procfile.get(k).is_none())
            .collect()
    }
}

/// One process instance to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `web.1`.
    pub name: String,
    /// The command for `sh -c`.
    pub command: OsString,
    /// `PORT`.
    pub port: u32,
}

/// Expands a Procfile, a formation and a name filter into instances, with
/// PORT = base + 100 × index + (instance − 1), the index counting the
/// Procfile's processes other than `release` (so that `web` gets 5000 when
/// `release` comes first); `release`, when it runs, comes after them.
/// `release` runs only when `only` or the formation names it, as in
/// `heroku local`.
pub fn plan(
    procfile: &Procfile,
    formation: &Formation,
    only: &[String],
    base: u16,
) -> Vec<Instance> {
    let mut out = Vec::new();
    let others = procfile.entries.iter().filter(|e| e.name != RELEASE);
    let release = procfile.entries.iter().filter(|e| e.name == RELEASE);
    for (index, entry) in others.chain(release).enumerate() {
        if !only.is_empty() && !only.iter().any(|n| n == &entry.name) {
            continue;
        }
        let named = only.iter().any(|n| n == RELEASE) || formation.names(RELEASE);
        if entry.name == RELEASE && !named {
            continue;
        }
        let count = formation.count(&entry.name);
        for i in 1..=count {
            out.push(Instance {
                name: format!("{}.{i}", entry.name),
                command: entry.command.clone(),
                port: u32::from(base)
                    + 100 * u32::try_from(index).unwrap_or(u32::MAX / 200)
                    + (i as u32 - 1),
            });
        }
    }
    out
}

// ---------------------------------------------------------------- output

/// The prefixed, optionally coloured writer all processes share.
struct Output {
    color: bool,
    timestamps: bool,
    width: usize,
    lock: Mutex<()>,
}

/// ANSI colours cycled per process, as foreman does.
const COLORS: &[&str] = &["36", "33", "32", "35", "34", "91", "96", "93", "92", "95"];

impl Output {
    fn line(&self, name: &str, color: Option<usize>, text: &str) {
        let mut prefix = String::new();
        if self.timestamps {
            prefix.push_str(&clock());
            prefix.push(' ');
        }
        prefix.push_str(&format!("{name:<width$} |", width = self.width));
        let out = if self.color {
            let code = color.map_or("1", |i| COLORS[i % COLORS.len()]);
            format!("\x1b[{code}m{prefix}\x1b[0m {text}\n")
        } else {
            format!("{prefix} {text}\n")
        };
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. `| head`) must not stop the processes.
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    fn system(&self, text: &str) {
        self.line("system", None, text);
    }
}

/// Local wall-clock `HH:MM:SS`.
fn clock() -> String {
    // SAFETY: localtime_r writes only into the tm we own.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return "--:--:--".to_owned();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

/// Copies one process's merged stdout+stderr to `out`, line by line. A
/// partial line is printed after [`PARTIAL_LINE_DELAY`]; invalid UTF-8 is
/// replaced. Returns at end of file (every writer closed).
fn pump(fd: OwnedFd, name: &str, color: Option<usize>, out: &Output) {
    let mut file = std::fs::File::from(fd);
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut since: Option<Instant> = None;
    let mut flushed_partial = false;
    let emit = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        out.line(name, color, &String::from_utf8_lossy(bytes));
    };
    loop {
        let wait_ms: u16 = match since {
            None => 1000,
            Some(t) => {
                let left = PARTIAL_LINE_DELAY.saturating_sub(t.elapsed());
                u16::try_from(left.as_millis()).unwrap_or(u16::MAX)
            }
        };
        let ready = {
            let mut fds = [nix::poll::PollFd::new(
                file.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, wait_ms) {
                Ok(n) => n > 0,
                Err(nix::errno::Errno::EINTR) => false,
                Err(_) => true,
            }
        };
        if !ready {
            if since.is_some_and(|t| t.elapsed() >= PARTIAL_LINE_DELAY) && !pending.is_empty() {
                emit(&pending);
                pending.clear();
                since = None;
                flushed_partial = true;
            }
            continue;
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut data = &buf[..n];
        // The rest of a line already printed as a partial: its newline alone
        // would print an empty line.
        if flushed_partial && pending.is_empty() {
            if let Some(rest) = data.strip_prefix(b"\n") {
                data = rest;
            }
        }
        flushed_partial = false;
        pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            emit(&pending[start..start + pos]);
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            emit(&pending);
            pending = rest;
        }
        since = if pending.is_empty() {
            None
        } else {
            since.or_else(|| Some(Instant::now()))
        };
    }
    if !pending.is_empty() {
        emit(&pending);
    }
}

// ---------------------------------------------------------------- shared setup

/// Events for the main loop.
enum Event {
    /// A signal arrived.
    Signal(i32),
    /// A process's output reached end of file.
    OutputDone,
}

/// Forwards SIGINT, SIGTERM, SIGHUP (and `extra`) to the channel.
fn watch_signals(tx: Sender<Event>, extra: &[i32]) -> std::io::Result<()> {
    let mut list = vec![libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    list.extend_from_slice(extra);
    let mut signals = signal_hook::iterator::Signals::new(&list)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}

/// The env files to load: the given ones (relative to `root`), else `.env`
/// under `root` if present.
fn env_files(root: &Path, given: &[PathBuf]) -> Vec<PathBuf> {
    let files = if given.is_empty() {
        dotenv::default_files(root)
    } else {
        given.iter().map(|p| root.join(p)).collect()
    };
    // Show `.env`, not `./.env`, in messages.
    files
        .into_iter()
        .map(|p| p.strip_prefix(".").map(Path::to_path_buf).unwrap_or(p))
        .collect()
}

/// Variables the env files set for children, after precedence.
fn file_vars(
    real: &RunnerEnv,
    files: &[PathBuf],
    env_override: bool,
) -> Result<BTreeMap<String, String>, dotenv::DotenvError> {
    let parsed = dotenv::read_files(files)?;
    let merged = dotenv::merge(&parsed);
    Ok(merged
        .into_iter()
        .filter(|(k, _)| env_override || !real.vars.contains_key(k))
        .collect())
}

/// `DD_TRACE_AGENT_PORT` for the app's tracer, pointing at the trace relay
/// the listener runs, unless the environment already says where traces go
/// (`DD_TRACE_AGENT_PORT` or `DD_TRACE_AGENT_URL`) or the relay is off.
fn tracer_env(effective: &BTreeMap<String, String>) -> Option<(&'static str, String)> {
    if effective.contains_key(vars::DD_TRACE_AGENT_PORT)
        || effective.contains_key(vars::DD_TRACE_AGENT_URL)
    {
        return None;
    }
    let config = Config::from_lookup(effective).ok()?;
    (config.trace.enabled && config.trace.port != 0)
        .then(|| (vars::DD_TRACE_AGENT_PORT, config.trace.port.to_string()))
}

/// Checks whether the listener's UDP port is free. `Ok(None)`: free (or no
/// UDP); `Ok(Some(msg))`: taken or unusable, say so and run without it.
fn statsd_port_check(effective: &BTreeMap<String, String>) -> Result<Option<String>, String> {
    let config = Config::from_lookup(effective).map_err(|e| e.to_string())?;
    if config.port == 0 {
        return Ok(None);
    }
    let addr = SocketAddr::new(config.bind_host, config.port);
    match UdpSocket::bind(addr) {
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(Some(format!(
            "{addr} is already in use (another dynostat or Datadog Agent?); running without the listener"
        ))),
        Err(e) => Ok(Some(format!(
            "cannot bind {addr}: {e}; running without the listener"
        ))),
    }
}

/// Waits, at most [`LISTENER_READY`], until the listener has bound its UDP
/// port, so that the app's first metrics are not sent into the void.
fn wait_listening(job: &mut Job, effective: &BTreeMap<String, String>) {
    let Ok(config) = Config::from_lookup(effective) else {
        return;
    };
    if config.port == 0 {
        return;
    }
    let addr = SocketAddr::new(config.bind_host, config.port);
    let deadline = Instant::now() + LISTENER_READY;
    while Instant::now() < deadline && job.try_wait().is_none() {
        let bound = udp_port_listed(addr).unwrap_or_else(|| {
            UdpSocket::bind(addr).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
        });
        if bound {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the kernel's socket table (`/proc/net/udp` for IPv4,
/// `/proc/net/udp6` for IPv6) lists a UDP socket bound to `addr`, address
/// and port; `None` where it cannot be read (not Linux). Reading it has no
/// side effect, where probing with a bind holds the port for a moment: the
/// listener's own bind could then fail, and a datagram sent in that moment
/// went to the probe and was lost.
fn udp_port_listed(addr: SocketAddr) -> Option<bool> {
    let (table, want) = proc_net_local(addr);
    let text = std::fs::read_to_string(table).ok()?;
    Some(
        text.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|local| local == want),
    )
}

/// The table of `/proc/net` that lists sockets of `addr`'s family, and
/// `addr` as that table's local-address column spells it: the address's
/// 32-bit words in hex as the kernel holds them (its bytes in memory order,
/// read as native integers), a colon, the port in 4 hex digits.
fn proc_net_local(addr: SocketAddr) -> (&'static str, String) {
    let word = |b: &[u8]| {
        let mut w = [0u8; 4];
        w.copy_from_slice(b);
        format!("{:08X}", u32::from_ne_bytes(w))
    };
    match addr {
        SocketAddr::V4(a) => (
            "/proc/net/udp",
            format!("{}:{:04X}", word(&a.ip().octets()), a.port()),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = o.chunks(4).map(word).collect();
            ("/proc/net/udp6", format!("{words}:{:04X}", a.port()))
        }
    }
}

/// A command that runs `dynostat serve`.
fn serve_command() -> std::io::Result<Command> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve").stdin(Stdio::null());
    Ok(cmd)
}

// ---------------------------------------------------------------- start

struct Proc {
    name: String,
    job: Job,
    exit: Option<Exit>,
    /// A Procfile process (its exit stops everything); false for `statsd`.
    significant: bool,
}

/// Runs `start`; returns the exit code. The steps: `prepare` everything
/// that can be wrong before anything runs, then a `Session` starts the
/// listener, runs the release phase if asked, starts the processes, waits
/// for the first exit or a signal, and stops them all.
pub fn start(args: &StartArgs) -> i32 {
    let real = RunnerEnv::from_env();
    let plan = match prepare(args, &real) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("dynostat start: {message}");
            return EXIT_USAGE;
        }
    };
    supervise::become_subreaper();
    let mut session = match Session::new(&plan) {
        Ok(session) => session,
        Err(e) => {
            eprintln!("dynostat start: cannot install signal handlers: {e}");
            return 1;
        }
    };
    if !plan.no_statsd {
        session.start_listener(&plan);
    }
    if let Some(release) = &plan.release {
        if let Err(code) = session.release_phase(&plan, release) {
            return session.stop(plan.timeout, code);
        }
        if plan.instances.is_empty() {
            return session.stop(plan.timeout, 0);
        }
    }
    if let Err(code) = session.start_instances(&plan) {
        return code;
    }
    let code = session.wait_first_exit();
    session.stop(plan.timeout, code)
}

/// What `start` runs, decided before anything starts.
struct StartPlan {
    /// The directory processes run in.
    root: PathBuf,
    /// Colour the prefixes.
    color: bool,
    /// Our stdout is a terminal (the listener's is our pipe).
    tty: bool,
    /// Print `HH:MM:SS` before each line.
    timestamps: bool,
    /// Seconds between SIGTERM and SIGKILL at shutdown.
    timeout: Duration,
    /// Do not run the listener.
    no_statsd: bool,
    /// Variables the env files set for children, after precedence.
    from_files: BTreeMap<String, String>,
    /// The environment children see: the real one plus `from_files`.
    effective: BTreeMap<String, String>,
    /// With `--release`: the release command, run to completion first.
    release: Option<Instance>,
    /// The process instances, in Procfile order (`release` last, if named).
    instances: Vec<Instance>,
}

/// The settings `start` and `check` read from flags, else `.foreman`, else
/// the defaults; with where each came from, for messages.
struct Settings {
    procfile: PathBuf,
    env: Vec<PathBuf>,
    /// The formation and who gave it (`-m` or `.foreman`).
    formation: Option<(String, &'static str)>,
    port: Option<u16>,
    timeout: u64,
}

impl Settings {
    /// Flags win over `.foreman` in the current directory, as in foreman.
    /// `.foreman`'s warnings (keys dynostat does not use) are printed.
    fn resolve(
        command: &str,
        procfile: Option<&PathBuf>,
        env: &[PathBuf],
        formation: Option<&String>,
        port: Option<u16>,
        timeout: Option<u64>,
    ) -> Result<Self, String> {
        let d = foreman::read(Path::new(foreman::FILE))?;
        for w in &d.warnings {
            eprintln!("dynostat {command}: {w}");
        }
        Ok(Self {
            procfile: procfile
                .cloned()
                .or(d.procfile)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PROCFILE)),
            env: if env.is_empty() { d.env } else { env.to_vec() },
            formation: match formation {
                Some(f) => Some((f.clone(), "-m")),
                None => d.formation.map(|f| (f, ".foreman: formation")),
            },
            port: port.or(d.port),
            timeout: timeout.or(d.timeout).unwrap_or(DEFAULT_TIMEOUT),
        })
    }
}

/// Reads and checks the flags, `.foreman`, the Procfile, the formation, the
/// env files and the ports. An `Err` is the message for bad input (exit 2).
fn prepare(args: &StartArgs, real: &RunnerEnv) -> Result<StartPlan, String> {
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("."));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let color = match args.color.as_str() {
        // NO_COLOR disables automatic colour; an explicit --color=always
        // overrides it, as no-color.org asks of command-line flags.
        "auto" => !real.no_color && tty,
        "always" => true,
        "never" => false,
        other => return Err(format!("--color={other}: use auto, always or never")),
    };
    let settings = Settings::resolve(
        "start",
        args.procfile.as_ref(),
        &args.env,
        args.formation.as_ref(),
        args.port,
        args.timeout,
    )?;

    let procfile_shown = settings.procfile.display().to_string();
    let procfile =
        procfile::read(&root.join(&settings.procfile), &procfile_shown).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\ndynostat start: ")
        })?;
    let (formation, formation_from) = match &settings.formation {
        Some((text, from)) => (
            Formation::parse(text).map_err(|e| format!("{from}: {e}"))?,
            *from,
        ),
        None => (Formation::default(), "-m"),
    };
    let known = procfile.names().join(", ");
    if let Some(bad) = formation.unknown(&procfile).first() {
        return Err(format!(
            "{formation_from}: `{bad}` is not in {procfile_shown} (it has {known})"
        ));
    }
    if let Some(bad) = args.names.iter().find(|n| procfile.get(n).is_none()) {
        return Err(format!(
            "`{bad}` is not in {procfile_shown} (it has {known})"
        ));
    }
    let files = env_files(&root, &settings.env);
    let from_files = file_vars(real, &files, args.env_override).map_err(|e| e.to_string())?;
    let base = base_port(
        settings.port,
        &dotenv_merged_port(&files),
        real.port.as_deref(),
    )?;
    let mut instances = plan(&procfile, &formation, &args.names, base);
    let release = if args.release {
        let Some((_, entry)) = procfile.get(RELEASE) else {
            return Err(format!(
                "--release: {procfile_shown} has no `{RELEASE}` process (it has {known})"
            ));
        };
        // The release phase replaces `release` as a process.
        instances.retain(|i| !is_release(i));
        Some(Instance {
            name: format!("{RELEASE}.1"),
            command: entry.command.clone(),
            port: 0,
        })
    } else {
        None
    };
    if instances.is_empty() && release.is_none() {
        return Err("nothing to run: the formation gives every process 0 instances".to_owned());
    }
    let mut effective = real.vars.clone();
    effective.extend(from_files.clone());
    Ok(StartPlan {
        root,
        color,
        tty,
        timestamps: !args.no_timestamp,
        timeout: Duration::from_secs(settings.timeout),
        no_statsd: args.no_statsd,
        from_files,
        effective,
        release,
        instances,
    })
}

/// Whether `inst` is an instance of the `release` process.
fn is_release(inst: &Instance) -> bool {
    inst.name
        .rsplit_once('.')
        .is_some_and(|(name, _)| name == RELEASE)
}

/// The running side of `start`: the shared output, the event channel and
/// the processes started so far.
struct Session {
    out: Arc<Output>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    procs: Vec<Proc>,
    /// Output readers that have not reached end of file.
    readers: usize,
}

impl Session {
    /// Sets up the output (prefix width from the instance names) and the
    /// signal handlers.
    fn new(plan: &StartPlan) -> std::io::Result<Self> {
        let width = plan
            .instances
            .iter()
            .chain(&plan.release)
            .map(|i| i.name.len())
            .chain([6])
            .max()
            .unwrap_or(6);
        let out = Arc::new(Output {
            color: plan.color,
            timestamps: plan.timestamps,
            width,
            lock: Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel();
        watch_signals(tx.clone(), &[])?;
        Ok(Self {
            out,
            tx,
            rx,
            procs: Vec::new(),
            readers: 0,
        })
    }

    /// Starts the listener as `statsd`, first, so the app's first metrics
    /// find it. Any trouble is a `system` line; the app runs without it.
    fn start_listener(&mut self, plan: &StartPlan) {
        let out = &self.out;
        match statsd_port_check(&plan.effective) {
            Ok(None) => {
                let spawned = serve_command().and_then(|mut cmd| {
                    cmd.envs(&plan.from_files)
                        .env_remove(vars::DYNO)
                        .env_remove(vars::PS)
                        .env_remove(vars::PORT)
                        .current_dir(&plan.root);
                    if !plan.effective.contains_key(vars::DYNOSTAT_CONSOLE) {
                        cmd.env(vars::DYNOSTAT_CONSOLE, "true");
                    }
                    // The console draws for our reader, not for the pipe.
                    if !plan.effective.contains_key(vars::DYNOSTAT_CONSOLE_TTY) {
                        cmd.env(vars::DYNOSTAT_CONSOLE_TTY, plan.tty.to_string());
                    }
                    spawn_piped(cmd, "statsd", None, out, &self.tx)
                });
                match spawned {
                    Ok(mut job) => {
                        self.readers += 1;
                        out.system(&format!("statsd started with pid {}", job.pid()));
                        wait_listening(&mut job, &plan.effective);
                        self.procs.push(Proc {
                            name: "statsd".into(),
                            job,
                            exit: None,
                            significant: false,
                        });
                    }
                    Err(e) => out.system(&format!(
                        "statsd could not start ({e}); running without the listener"
                    )),
                }
            }
            Ok(Some(msg)) => out.system(&format!("statsd: {msg}")),
            Err(e) => out.system(&format!("statsd: {e}; running without the listener")),
        }
    }

    /// The release phase, as Heroku runs it: the release command alone, to
    /// completion, with the env the processes get (`PS` and `DYNO` are
    /// `release.1`; no `PORT`, as a release dyno serves nothing). `Ok` when
    /// it exits 0; else the code to exit with, after a `system` line.
    fn release_phase(&mut self, plan: &StartPlan, release: &Instance) -> Result<(), i32> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&release.command)
            .envs(&plan.from_files)
            .env(vars::PS, &release.name)
            .env(vars::DYNO, &release.name)
            .current_dir(&plan.root)
            .stdin(Stdio::null());
        if !plan.no_statsd {
            cmd.envs(tracer_env(&plan.effective));
        }
        let color = Some(plan.instances.len());
        let job = match spawn_piped(cmd, &release.name, color, &self.out, &self.tx) {
            Ok(job) => job,
            Err(e) => {
                self.out
                    .system(&format!("{} could not start: {e}", release.name));
                return Err(1);
            }
        };
        self.readers += 1;
        self.out.system(&format!(
            "{} started with pid {} (release phase: the other processes start when it exits 0)",
            release.name,
            job.pid()
        ));
        self.procs.push(Proc {
            name: release.name.clone(),
            job,
            exit: None,
            significant: true,
        });
        let index = self.procs.len() - 1;
        loop {
            match self.rx.recv_timeout(TICK) {
                Ok(Event::Signal(sig)) => {
                    let name = signal_name(sig);
                    self.out
                        .system(&format!("{name} received, stopping all processes"));
                    return Err(128 + sig);
                }
                Ok(Event::OutputDone) => self.readers = self.readers.saturating_sub(1),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            let p = &mut self.procs[index];
            let Some(exit) = p.job.try_wait() else {
                continue;
            };
            p.exit = Some(exit);
            self.out.system(&format!("{} {exit}", p.name));
            if exit.code() == 0 {
                return Ok(());
            }
            let code = exit.code();
            self.out.system(&format!(
                "release phase failed ({} {exit}); not starting the other processes",
                p.name
            ));
            return Err(code);
        }
    }

    /// Starts every instance with its `PORT`, `PS` and `DYNO`. If one cannot
    /// start, stops those already running and returns `Err(1)`.
    fn start_instances(&mut self, plan: &StartPlan) -> Result<(), i32> {
        for (i, inst) in plan.instances.iter().enumerate() {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(&inst.command)
                .envs(&plan.from_files)
                .env(vars::PORT, inst.port.to_string())
                .env(vars::PS, &inst.name)
                .env(vars::DYNO, &inst.name)
                .current_dir(&plan.root)
                .stdin(Stdio::null());
            if !plan.no_statsd {
                cmd.envs(tracer_env(&plan.effective));
            }
            match spawn_piped(cmd, &inst.name, Some(i), &self.out, &self.tx) {
                Ok(job) => {
                    self.readers += 1;
                    self.out
                        .system(&format!("{} started with pid {}", inst.name, job.pid()));
                    self.procs.push(Proc {
                        name: inst.name.clone(),
                        job,
                        exit: None,
                        significant: true,
                    });
                }
                Err(e) => {
                    self.out
                        .system(&format!("{} could not start: {e}", inst.name));
                    stop_all(&mut self.procs, &self.out, &self.rx, plan.timeout, None);
                    finish(&self.out, &self.rx, self.readers);
                    return Err(1);
                }
            }
        }
        Ok(())
    }

    /// Runs until the first significant exit (its code) or a signal
    /// (128 + its number).
    fn wait_first_exit(&mut self) -> i32 {
        let mut first: Option<i32> = None;
        while first.is_none() {
            match self.rx.recv_timeout(TICK) {
                Ok(Event::Signal(sig)) => {
                    let name = signal_name(sig);
                    self.out
                        .system(&format!("{name} received, stopping all processes"));
                    first = Some(128 + sig);
                }
                Ok(Event::OutputDone) => self.readers = self.readers.saturating_sub(1),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            for p in &mut self.procs {
                if p.exit.is_none() {
                    if let Some(exit) = p.job.try_wait() {
                        p.exit = Some(exit);
                        self.out.system(&format!("{} {exit}", p.name));
                        if p.significant && first.is_none() {
                            first = Some(exit.code());
                        }
                    }
                }
            }
        }
        first.unwrap_or(1)
    }

    /// Stops everything and lets the readers print what remains; returns
    /// the exit code (`code`, unless a signal during shutdown changes it).
    fn stop(mut self, timeout: Duration, code: i32) -> i32 {
        let code =
            stop_all(&mut self.procs, &self.out, &self.rx, timeout, Some(code)).unwrap_or(code);
        finish(&self.out, &self.rx, self.readers);
        code
    }
}

/// `PORT`'s value in the env files, if any, for the base-port rule.
fn dotenv_merged_port(files: &[PathBuf]) -> Option<String> {
    dotenv::read_files(files)
        .ok()
        .and_then(|f| dotenv::merge(&f).remove(vars::PORT))
}

/// The base port: `-p`, else `PORT` in the env files, else `$PORT`, else 5000.
fn base_port(flag: Option<u16>, file: &Option<String>, real: Option<&str>) -> Result<u16, String> {
    if let Some(p) = flag {
        return Ok(p);
    }
    for (src, v) in [("PORT in the env file", file.as_deref()), ("$PORT", real)] {
        if let Some(v) = v.filter(|v| !v.trim().is_empty()) {
            return v.trim().parse().map_err(|_| {
                format!("{src}={v} is not a port number (1-65535); fix it or pass -p PORT")
            });
        }
    }
    Ok(DEFAULT_PORT)
}

/// Spawns `cmd` in its own group with stdout and stderr merged into a pipe
/// that a reader thread prints with `name`'s prefix.
fn spawn_piped(
    mut cmd: Command,
    name: &str,
    color: Option<usize>,
    out: &Arc<Output>,
    tx: &Sender<Event>,
) -> std::io::Result<Job> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    cmd.stdout(Stdio::from(w.try_clone()?))
        .stderr(Stdio::from(w));
    let job = Job::start(&mut cmd);
    // Our copies of the write end must close, or the reader never sees EOF.
    drop(cmd);
    let job = job?;
    let out = Arc::clone(out);
    let tx = tx.clone();
    let name = name.to_owned();
    std::thread::Builder::new()
        .name(format!("out-{name}"))
        .spawn(move || {
            pump(r, &name, color, &out);
            let _ = tx.send(Event::OutputDone);
        })?;
    Ok(job)
}

fn signal_name(sig: i32) -> &'static str {
    Signal::try_from(sig).map_or("signal", Signal::as_str)
}

/// Stops every process: SIGTERM to each app group, up to `timeout`, SIGKILL
/// to what remains; then the listener (so it flushes the app's last
/// metrics); a second SIGINT/SIGTERM kills everything at once. Returns a
/// new exit code if the runner was interrupted during shutdown and had none.
fn stop_all(
    procs: &mut [Proc],
    out: &Output,
    rx: &Receiver<Event>,
    timeout: Duration,
    code: Option<i32>,
) -> Option<i32> {
    let apps_alive = |procs: &mut [Proc]| {
        procs
            .iter_mut()
            .filter(|p| p.significant)
            .any(|p| p.job.try_wait().is_none() || p.job.group_alive())
    };
    let mut code = code;
    let mut killed = false;
    if apps_alive(procs) {
        out.system("sending SIGTERM to all processes");
        for p in procs.iter().filter(|p| p.significant) {
            p.job.signal(Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        supervise::reap();
        report_exits(procs, out);
        if !apps_alive(procs) {
            break;
        }
        if Instant::now() >= deadline && !killed {
            for p in procs.iter().filter(|p| p.significant) {
                if p.job.group_alive() {
                    out.system(&format!(
                        "sending SIGKILL to {} (still running {} s after SIGTERM)",
                        p.name,
                        timeout.as_secs()
                    ));
                    p.job.signal(Signal::SIGKILL);
                }
            }
            killed = true;
        }
        if Instant::now() >= deadline + Duration::from_secs(5) {
            out.system("some processes did not die after SIGKILL; giving up waiting");
            break;
        }
        if let Ok(Event::Signal(sig)) = rx.recv_timeout(TICK) {
            if sig == libc::SIGINT || sig == libc::SIGTERM {
                out.system(&format!(
                    "{} received again, killing all processes",
                    signal_name(sig)
                ));
                for p in procs.iter() {
                    p.job.signal(Signal::SIGKILL);
                }
                killed = true;
                code = code.or(Some(128 + sig));
            }
        }
    }
    // The listener last: it keeps receiving for a moment, then flushes.
    for p in procs.iter_mut().filter(|p| !p.significant) {
        if p.exit.is_none() && p.job.try_wait().is_none() {
            let deadline = Instant::now() + STATSD_STOP;
            p.job.signal(Signal::SIGTERM);
            loop {
                if p.job.try_wait().is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    out.system("statsd did not flush in time; sending SIGKILL");
                    p.job.kill();
                    break;
                }
                if let Ok(Event::Signal(sig)) = rx.recv_timeout(TICK) {
                    if sig == libc::SIGINT || sig == libc::SIGTERM {
                        p.job.kill();
                        break;
                    }
                }
            }
        }
    }
    report_exits(procs, out);
    // Anything that escaped its group (setsid) was re-parented to us.
    let leftovers = supervise::children();
    if !leftovers.is_empty() {
        supervise::signal_all_children(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(1);
        while !supervise::children().is_empty() && Instant::now() < deadline {
            supervise::reap();
            std::thread::sleep(TICK);
        }
        supervise::signal_all_children(Signal::SIGKILL);
        supervise::reap();
    }
    code
}

fn report_exits(procs: &mut [Proc], out: &Output) {
    for p in procs.iter_mut() {
        if p.exit.is_none() {
            if let Some(exit) = p.job.try_wait() {
                p.exit = Some(exit);
                out.system(&format!("{} {exit}", p.name));
            }
        }
    }
}

/// Waits (boundedly) for the output readers to print what remains.
fn finish(_out: &Output, rx: &Receiver<Event>, mut readers: usize) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while readers > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(Event::OutputDone) => readers -= 1,
            Ok(Event::Signal(_)) => {}
            Err(_) => break,
        }
    }
}

// ---------------------------------------------------------------- run

/// Runs `run`; returns the exit code.
pub fn run(args: &RunArgs) -> i32 {
    let real = RunnerEnv::from_env();
    let root = PathBuf::from(".");
    let files = env_files(&root, &args.env);
    let from_files = match file_vars(&real, &files, args.env_override) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("dynostat run: {e}");
            return EXIT_USAGE;
        }
    };
    let Some((program, rest)) = args.command.split_first() else {
        eprintln!("dynostat run: no command given; usage: dynostat run -- CMD [ARGS...]");
        return EXIT_USAGE;
    };
    supervise::become_subreaper();
    let (tx, rx) = mpsc::channel();
    if let Err(e) = watch_signals(tx, &[libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2]) {
        eprintln!("dynostat run: cannot install signal handlers: {e}");
        return 1;
    }
    let mut effective = real.vars.clone();
    effective.extend(from_files.clone());
    let on_dyno = real.on_dyno;

    let mut statsd = None;
    if !args.no_statsd {
        match statsd_port_check(&effective) {
            Ok(None) => match serve_command().and_then(|mut cmd| {
                cmd.envs(&from_files);
                Job::start(&mut cmd)
            }) {
                Ok(mut job) => {
                    wait_listening(&mut job, &effective);
                    statsd = Some(job);
                }
                Err(e) => eprintln!(
                    "dynostat run: the listener could not start ({e}); running without it"
                ),
            },
            // On a dyno, the agent from the boot script usually owns the
            // port already: that is fine and not worth a line.
            Ok(Some(msg)) if !on_dyno => eprintln!("dynostat run: {msg}"),
            Ok(Some(_)) => {}
            Err(e) => eprintln!("dynostat run: {e}; running without the listener"),
        }
    }

    let mut cmd = Command::new(program);
    cmd.args(rest).envs(&from_files);
    if !args.no_statsd {
        cmd.envs(tracer_env(&effective));
    }
    let foreground = supervise::owns_terminal();
    let mut job = match Job::start_with(&mut cmd, StartOptions { foreground }) {
        Ok(j) => j,
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 1,
            };
            eprintln!("dynostat run: cannot run `{program}`: {e}");
            if let Some(mut s) = statsd {
                s.stop(STATSD_STOP);
            }
            return code;
        }
    };
    let exit = loop {
        if let Some(exit) = job.try_wait() {
            break exit;
        }
        match rx.recv_timeout(TICK) {
            Ok(Event::Signal(sig)) => {
                if let Ok(sig) = Signal::try_from(sig) {
                    job.signal(sig);
                }
            }
            Ok(Event::OutputDone) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {}
        }
    };
    if foreground {
        supervise::reclaim_terminal();
    }
    // Whatever the command left in its group goes with it.
    if job.group_alive() {
        job.stop(Duration::from_secs(5));
    }
    if let Some(mut s) = statsd {
        s.stop(STATSD_STOP);
    }
    if !supervise::children().is_empty() {
        supervise::signal_all_children(Signal::SIGTERM);
        supervise::reap();
    }
    exit.code()
}

// ---------------------------------------------------------------- check

/// Runs `check`; returns the exit code.
pub fn check(args: &CheckArgs) -> i32 {
    let real = RunnerEnv::from_env();
    let root = PathBuf::from(".");
    let mut ok = true;
    let settings =
        match Settings::resolve("check", args.procfile.as_ref(), &args.env, None, None, None) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        };
    let shown = settings.procfile.display().to_string();
    match procfile::read(&settings.procfile, &shown) {
        Ok(p) => {
            println!("valid procfile detected ({})", detected(&p));
            for e in &p.entries {
                println!("  {}: {}", e.name, e.command_lossy());
            }
        }
        Err(errors) => {
            ok = false;
            for e in errors {
                eprintln!("{e}");
            }
        }
    }
    let files = env_files(&root, &settings.env);
    match dotenv::read_files(&files) {
        Ok(parsed) => {
            for f in &parsed {
                let n = f.vars.len();
                let s = if n == 1 { "" } else { "s" };
                println!("valid env file {} ({n} variable{s})", f.path.display());
            }
            let mut effective = real.vars.clone();
            for (k, v) in dotenv::merge(&parsed) {
                effective.entry(k).or_insert(v);
            }
            match Config::from_lookup(&effective) {
                Err(e) => {
                    ok = false;
                    eprintln!("configuration: {e}");
                }
                Ok(config) => {
                    // The checks never stop the listener, but `check` says
                    // what is wrong with them, and fails.
                    for p in &config.checks.problems {
                        ok = false;
                        eprintln!("checks: {p}");
                    }
                    for u in config.checks.postgres.iter().chain(&config.checks.redis) {
                        let kind = match u.kind {
                            crate::config::DbKind::Postgres => "postgres",
                            crate::config::DbKind::Redis => "redis",
                        };
                        println!("valid {kind} check on {} ({}:{})", u.var, u.host, u.port);
                    }
                }
            }
        }
        Err(e) => {
            ok = false;
            eprintln!("{e}");
        }
    }
    if ok {
        0
    } else {
        1
    }
}

/// `web, worker; release phase: release`: the processes `start` runs, and
/// the release phase apart, as Heroku runs it.
fn detected(p: &Procfile) -> String {
    let names = p.names();
    let (release, others): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| **n == RELEASE);
    match (others.is_empty(), release.is_empty()) {
        (_, true) => others.join(", "),
        (true, false) => format!("release phase: {RELEASE}"),
        (false, false) => format!("{}; release phase: {RELEASE}", others.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket table lists a bound socket under its own address and
    /// port, and a socket on another address of the same port is not it.
    #[test]
    fn the_socket_table_finds_a_bound_address_and_port_only() {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("addr");
        assert_eq!(udp_port_listed(addr), Some(true));
        let other: SocketAddr = format!("127.0.0.2:{}", addr.port()).parse().expect("addr");
        assert_eq!(udp_port_listed(other), Some(false));
        if cfg!(target_endian = "little") {
            assert_eq!(
                proc_net_local(addr).1,
                format!("0100007F:{:04X}", addr.port())
            );
        }
        if let Ok(six) = UdpSocket::bind("[::1]:0") {
            let addr = six.local_addr().expect("addr");
            assert_eq!(udp_port_listed(addr), Some(true));
        }
        drop(sock);
        assert_eq!(udp_port_listed(addr), Some(false));
    }

    #[test]
    fn concurrency_strings() {
        let f = Formation::parse("foo   =   2, bar = 3").expect("valid");
        assert_eq!(f.count("foo"), 2);
        assert_eq!(f.count("bar"), 3);
        assert_eq!(f.count("baz"), 0);
        for bad in [
            "foo=x", "foo=", "=1", ",,", "", "foo", "foo=1,", "a.b=1", "foo=-1",
        ] {
            let e = Formation::parse(bad).expect_err(bad);
            assert!(!e.is_empty());
        }
        assert!(Formation::parse("foo=x")
            .unwrap_err()
            .contains("`x` is not a number"));
        assert!(Formation::parse(",,").unwrap_err().contains("empty item"));
    }

    #[test]
    fn all_and_defaults() {
        assert_eq!(Formation::default().count("web"), 1);
        let f = Formation::parse("all=2,web=1").expect("valid");
        assert_eq!(f.count("web"), 1);
        assert_eq!(f.count("worker"), 2);
    }

    fn procfile(text: &str) -> Procfile {
        procfile::parse("Procfile", text.as_bytes()).expect("valid")
    }

    #[test]
    fn ports_follow_foreman() {
        let p = procfile("foo: a\nbar: b\n");
        let f = Formation::parse("foo=3,bar=2").expect("valid");
        let got: Vec<(String, u32)> = plan(&p, &f, &[], 4000)
            .into_iter()
            .map(|i| (i.name, i.port))
            .collect();
        assert_eq!(
            got,
            vec![
                ("foo.1".into(), 4000),
                ("foo.2".into(), 4001),
                ("foo.3".into(), 4002),
                ("bar.1".into(), 4100),
                ("bar.2".into(), 4101),
            ]
        );
    }

    #[test]
    fn a_formation_that_names_processes_runs_only_those() {
        let p = procfile("alpha: a\nbravo: b\n");
        let f = Formation::parse("alpha=2").expect("valid");
        let names: Vec<String> = plan(&p, &f, &[], 5000)
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, vec!["alpha.1", "alpha.2"]);
        // Naming a process on the command line keeps its Procfile index for PORT.
        let only = plan(&p, &Formation::default(), &["bravo".into()], 5000);
        assert_eq!(only[0].port, 5100);
    }

    #[test]
    fn release_runs_only_when_named_and_takes_no_port_slot() {
        let p = procfile("release: ./migrate\nweb: a\nworker: b\n");
        let got: Vec<(String, u32)> = plan(&p, &Formation::default(), &[], 5000)
            .into_iter()
            .map(|i| (i.name, i.port))
            .collect();
        assert_eq!(
            got,
            vec![("web.1".into(), 5000), ("worker.1".into(), 5100)],
            "heroku local leaves release out; web keeps 5000"
        );
        let f = Formation::parse("release=1").expect("valid");
        let names: Vec<(String, u32)> = plan(&p, &f, &[], 5000)
            .into_iter()
            .map(|i| (i.name, i.port))
            .collect();
        assert_eq!(names, vec![("release.1".into(), 5200)], "after the others");
        let named = plan(&p, &Formation::default(), &["release".into()], 5000);
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].name, "release.1");
        // `all` does not name it.
        let all = plan(&p, &Formation::parse("all=2").expect("valid"), &[], 5000);
        assert!(all.iter().all(|i| !is_release(i)), "{all:?}");
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn check_lists_the_release_phase_apart() {
        assert_eq!(detected(&procfile("web: a\nworker: b\n")), "web, worker");
        assert_eq!(
            detected(&procfile("release: m\nweb: a\nworker: b\n")),
            "web, worker; release phase: release"
        );
        assert_eq!(
            detected(&procfile("release: m\n")),
            "release phase: release"
        );
    }

    #[test]
    fn base_port_precedence() {
        assert_eq!(base_port(Some(1), &Some("2".into()), Some("3")), Ok(1));
        assert_eq!(base_port(None, &Some("2".into()), Some("3")), Ok(2));
        assert_eq!(base_port(None, &None, Some("3")), Ok(3));
        assert_eq!(base_port(None, &None, None), Ok(5000));
        assert!(base_port(None, &None, Some("x")).is_err());
    }
}
