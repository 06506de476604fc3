//! execd: the Cloud Native Buildpack `exec.d` program, for Heroku Fir.
//!
//! In: what the CNB launcher gives every `exec.d` program before it starts a
//! process: the app's environment (config vars included), the app directory as
//! the working directory, no arguments, and file descriptor 3 open for writing.
//! `bin/build` installs it as `<layer>/exec.d/dynostat`, a symlink to the layer's
//! `bin/dynostat`, and the binary recognises that name ([`invoked_as_exec_d`]).
//!
//! Out:
//! - `NAME = "value"` TOML lines on fd 3, which the launcher adds to the app's
//!   environment: `DD_DOGSTATSD_PORT`, and `DD_AGENT_HOST` when it is unset, so
//!   DogStatsD clients find the listener (the boot script's exports, on Fir);
//! - `dynostat agent` started **detached**: its own session, stdin from
//!   `/dev/null`, stdout and stderr shared with the app's log stream, and
//!   `DYNOSTAT_WATCH_PID` set to this program's parent. That parent is the
//!   launcher, which then `exec`s the app under the same pid, so the agent
//!   leaves with the app by watching that pid (its own parent, this program,
//!   is gone at once).
//!
//! It takes the same decisions as the classic boot script, `profile.d/dynostat.sh`,
//! from the same variables: `DISABLE_DATADOG_AGENT`, `DYNOSTAT_DYNO_TYPES`,
//! `DD_API_KEY`, and quiet one-off dynos.
//!
//! Must never: block or wait for the agent (the launcher waits for this program
//! to exit before it starts the app); let the agent inherit fd 3 (the launcher
//! reads fd 3 until end-of-file); or fail the launch: every path exits 0,
//! because a non-zero exit would keep the app from starting. It never prints
//! the API key.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use crate::config::{vars, AgentConfig, LogLevel};

/// The file descriptor on which the CNB launcher reads an exec.d program's output.
pub const ENV_FD: RawFd = 3;

/// The name of the directory the launcher runs programs from.
const EXEC_D_DIR: &str = "exec.d";

/// Whether this process was started as a CNB exec.d program: no arguments,
/// and `argv[0]` is a file in a directory named `exec.d` (the launcher runs
/// `<layer>/exec.d/dynostat` by its path). `main` checks this before parsing
/// the command line, since the launcher passes no subcommand.
pub fn invoked_as_exec_d() -> bool {
    let mut args = std::env::args_os();
    match (args.next(), args.next()) {
        (Some(argv0), None) => is_exec_d_path(Path::new(&argv0)),
        _ => false,
    }
}

/// Whether `path` names a file directly inside an `exec.d` directory.
fn is_exec_d_path(path: &Path) -> bool {
    path.parent()
        .and_then(Path::file_name)
        .is_some_and(|dir| dir == EXEC_D_DIR)
}

/// What the environment says beyond [`AgentConfig`]: whether two variables
/// are set at all, which the boot script also asks (`${VAR:-default}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// `DD_AGENT_HOST` is set (to anything): leave it alone.
    pub agent_host_set: bool,
    /// `DD_LOG_LEVEL` is set: do not quieten the agent in one-off dynos.
    pub log_level_set: bool,
}

impl Facts {
    /// The two facts, as `config` read them.
    fn of(config: &AgentConfig) -> Self {
        Self {
            agent_host_set: config.agent_host_set,
            log_level_set: config.log_level_set,
        }
    }
}

/// Whether and how to start the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Start nothing.
    No,
    /// Start `dynostat agent`; with `quiet`, its log level is `warn`
    /// (one-off dynos, where people type, unless `DD_LOG_LEVEL` says otherwise).
    Agent {
        /// Run the agent with `DD_LOG_LEVEL=warn`.
        quiet: bool,
    },
}

/// The decision, computed without side effects so it can be tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Variables for the app's environment, written to fd 3 in this order.
    pub env: Vec<(&'static str, String)>,
    /// Whether to start the agent.
    pub start: Start,
    /// One line for the log stream (without the `dynostat: ` prefix), if any.
    pub notice: Option<String>,
}

/// Decides what to do, exactly as `profile.d/dynostat.sh` does on a classic dyno:
///
/// 1. `DISABLE_DATADOG_AGENT` set: nothing at all, not even the exports;
/// 2. otherwise `DD_DOGSTATSD_PORT`, `DD_TRACE_AGENT_PORT` (unless the relay
///    is off), and `DD_AGENT_HOST` if unset, are exported;
/// 3. a dyno type that `DYNOSTAT_DYNO_TYPES` excludes, or no `DD_API_KEY`:
///    one line, and no agent;
/// 4. otherwise the agent starts.
///
/// Notices are dropped in one-off dynos (`run.N`), as the boot script does.
pub fn plan(config: &AgentConfig, facts: Facts) -> Plan {
    let quiet = config.is_one_off();
    let notice = |text: String| (!quiet).then_some(text);

    if config.disabled {
        return Plan {
            env: Vec::new(),
            start: Start::No,
            notice: notice("DISABLE_DATADOG_AGENT is set; not starting the agent.".to_owned()),
        };
    }

    let mut env = vec![(vars::DD_DOGSTATSD_PORT, config.port.to_string())];
    if let Some(port) = config.trace_port {
        env.push((vars::DD_TRACE_AGENT_PORT, port.to_string()));
    }
    if !facts.agent_host_set {
        env.push((vars::DD_AGENT_HOST, client_host(config)));
    }

    if let Some(ty) = config.dyno_type() {
        if !config.dyno_types.allows(ty) {
            let dyno = config.dyno.as_deref().unwrap_or("this dyno");
            return Plan {
                env,
                start: Start::No,
                notice: notice(format!(
                    "not starting the agent on {dyno} (DYNOSTAT_DYNO_TYPES does not list {ty})."
                )),
            };
        }
    }

    if !config.has_api_key {
        return Plan {
            env,
            start: Start::No,
            notice: notice(
                "DD_API_KEY is not set, so no metrics are sent; set it with: \
                 heroku config:set DD_API_KEY=<your Datadog API key>"
                    .to_owned(),
            ),
        };
    }

    Plan {
        env,
        start: Start::Agent {
            quiet: quiet && !facts.log_level_set,
        },
        notice: None,
    }
}

/// The address clients should send to: the listener's bind address, or
/// 127.0.0.1 when it listens on every address (as the boot script exports).
fn client_host(config: &AgentConfig) -> String {
    if config.bind_host.is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        config.bind_host.to_string()
    }
}

/// Renders `NAME = "value"` lines as TOML: bare keys, basic strings.
pub fn to_toml(env: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (name, value) in env {
        out.push_str(name);
        out.push_str(" = \"");
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push_str("\"\n");
    }
    out
}

/// Runs the exec.d program; returns the exit code, which is always 0 (see the
/// module doc: failing here would keep the app from starting).
pub fn main() -> i32 {
    // First, before anything else could open a file that lands on fd 3.
    let env_pipe = take_env_fd();

    let config = match AgentConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dynostat: {e}; the agent was not started.");
            // Nothing is exported either: the port variable may be the culprit.
            drop(env_pipe);
            return 0;
        }
    };
    let debug = matches!(config.log_level, LogLevel::Debug | LogLevel::Trace);
    let say_debug = |msg: &str| {
        if debug {
            eprintln!("dynostat: exec.d: {msg}");
        }
    };

    let plan = plan(&config, Facts::of(&config));
    if let Some(line) = &plan.notice {
        eprintln!("dynostat: {line}");
    }

    // Write and close fd 3 BEFORE starting the agent, so the agent can never
    // hold the launcher's pipe open (it is also close-on-exec, see take_env_fd).
    match env_pipe {
        Some(mut pipe) => {
            let toml = to_toml(&plan.env);
            match pipe.write_all(toml.as_bytes()).and_then(|()| pipe.flush()) {
                Ok(()) => say_debug(&format!("wrote {} variable(s) to fd 3", plan.env.len())),
                Err(e) => eprintln!(
                    "dynostat: could not write the environment to fd 3 ({e}); \
                     DogStatsD clients may not find the port"
                ),
            }
        }
        None => say_debug(
            "fd 3 is not open (not run by a CNB launcher?); not exporting \
             DD_DOGSTATSD_PORT / DD_AGENT_HOST",
        ),
    }

    if let Start::Agent { quiet } = plan.start {
        let watch = nix::unistd::getppid();
        match spawn_agent(watch.as_raw(), quiet) {
            Ok(pid) => say_debug(&format!(
                "started `dynostat agent` (pid {pid}), leaving with pid {watch}"
            )),
            Err(e) => eprintln!(
                "dynostat: could not start `dynostat agent` ({e}); no metrics will be \
                 sent from this dyno. Check that the dynostat layer is intact (rebuild \
                 the app), and report it if it persists."
            ),
        }
    }
    0
}

/// Takes fd 3 when it is open, marked close-on-exec so no child inherits it.
/// Returns `None` when fd 3 is not open.
fn take_env_fd() -> Option<File> {
    let flags = fcntl(ENV_FD, FcntlArg::F_GETFD).ok()?;
    let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
    if let Err(e) = fcntl(ENV_FD, FcntlArg::F_SETFD(flags)) {
        // Still usable: it is written and closed before the agent starts.
        eprintln!("dynostat: exec.d: could not mark fd 3 close-on-exec ({e})");
    }
    // SAFETY: fd 3 is open (F_GETFD succeeded), this program opened nothing
    // before this call, and nothing else in it uses fd 3: the File becomes its
    // only owner and closes it when dropped.
    Some(unsafe { File::from_raw_fd(ENV_FD) })
}

/// Starts `dynostat agent` (this very binary) in its own session, and does not
/// wait for it. Returns its pid.
fn spawn_agent(watch_pid: i32, quiet: bool) -> io::Result<u32> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent")
        .env(vars::DYNOSTAT_WATCH_PID, watch_pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if quiet {
        cmd.env(vars::DD_LOG_LEVEL, "warn");
    }
    // SAFETY: the closure runs in the forked child before exec and calls only
    // setsid(2), which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))
        });
    }
    // The Child is dropped without waiting: the agent outlives this program
    // and is reaped by whoever adopts it.
    cmd.spawn().map(|child| child.id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(pairs: &[(&str, &str)]) -> AgentConfig {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AgentConfig::from_lookup(&env).expect("valid test config")
    }

    const KEY: (&str, &str) = ("DD_API_KEY", "0123456789abcdef0123456789abcdef");

    #[test]
    fn fir_web_dyno_with_a_key_starts_the_agent_and_exports_the_port() {
        let c = config(&[KEY, ("DYNO", "web-12a34b56d-e78f9")]);
        let p = plan(&c, Facts::default());
        assert_eq!(p.start, Start::Agent { quiet: false });
        assert_eq!(
            p.env,
            vec![
                ("DD_DOGSTATSD_PORT", "8125".to_owned()),
                ("DD_TRACE_AGENT_PORT", "8126".to_owned()),
                ("DD_AGENT_HOST", "127.0.0.1".to_owned())
            ]
        );
        assert_eq!(p.notice, None);
    }

    #[test]
    fn configured_port_is_exported_and_a_set_agent_host_is_left_alone() {
        let c = config(&[
            KEY,
            ("DD_DOGSTATSD_PORT", "9125"),
            ("DD_APM_RECEIVER_PORT", "9126"),
            ("DD_AGENT_HOST", "x"),
        ]);
        let facts = Facts {
            agent_host_set: true,
            log_level_set: false,
        };
        assert_eq!(
            Facts::of(&c),
            facts,
            "config notes that DD_AGENT_HOST is set"
        );
        let p = plan(&c, facts);
        assert_eq!(
            p.env,
            vec![
                ("DD_DOGSTATSD_PORT", "9125".to_owned()),
                ("DD_TRACE_AGENT_PORT", "9126".to_owned())
            ]
        );
        let off = config(&[KEY, ("DD_APM_ENABLED", "false")]);
        assert!(!plan(&off, Facts::default())
            .env
            .iter()
            .any(|(k, _)| *k == "DD_TRACE_AGENT_PORT"));
    }

    #[test]
    fn disabled_exports_nothing_and_starts_nothing() {
        let c = config(&[KEY, ("DISABLE_DATADOG_AGENT", "true"), ("DYNO", "web.1")]);
        let p = plan(&c, Facts::default());
        assert_eq!(p.start, Start::No);
        assert!(p.env.is_empty());
        assert!(p
            .notice
            .expect("a notice")
            .contains("DISABLE_DATADOG_AGENT"));
    }

    #[test]
    fn no_api_key_exports_the_port_hints_and_starts_nothing() {
        let c = config(&[("DYNO", "worker-12a34b56d-e78f9")]);
        let p = plan(&c, Facts::default());
        assert_eq!(p.start, Start::No);
        assert_eq!(
            p.env.len(),
            3,
            "the DogStatsD and trace ports, and the host"
        );
        let notice = p.notice.expect("a hint");
        assert!(notice.contains("heroku config:set DD_API_KEY="), "{notice}");
    }

    #[test]
    fn excluded_fir_dyno_type_starts_nothing_but_exports() {
        let c = config(&[
            KEY,
            ("DYNO", "worker-12a34b56d-e78f9"),
            ("DYNOSTAT_DYNO_TYPES", "web"),
        ]);
        let p = plan(&c, Facts::default());
        assert_eq!(p.start, Start::No);
        assert_eq!(
            p.env.len(),
            3,
            "the DogStatsD and trace ports, and the host"
        );
        let notice = p.notice.expect("a notice");
        assert!(notice.contains("worker-12a34b56d-e78f9"), "{notice}");
        assert!(notice.contains("worker"), "{notice}");
    }

    #[test]
    fn one_off_dynos_are_quiet() {
        let c = config(&[("DYNO", "run.4242")]);
        assert_eq!(plan(&c, Facts::default()).notice, None);
        let c = config(&[("DYNO", "run.4242"), ("DISABLE_DATADOG_AGENT", "1")]);
        assert_eq!(plan(&c, Facts::default()).notice, None);
        let c = config(&[KEY, ("DYNO", "run.4242")]);
        assert_eq!(
            plan(&c, Facts::default()).start,
            Start::Agent { quiet: true }
        );
        let facts = Facts {
            agent_host_set: false,
            log_level_set: true,
        };
        assert_eq!(plan(&c, facts).start, Start::Agent { quiet: false });
    }

    #[test]
    fn explicit_bind_host_is_what_clients_get() {
        let c = config(&[KEY, ("DD_BIND_HOST", "::1")]);
        let p = plan(&c, Facts::default());
        assert!(
            p.env.contains(&("DD_AGENT_HOST", "::1".to_owned())),
            "{p:?}"
        );
    }

    #[test]
    fn toml_is_escaped() {
        let env = [("A", "1".to_owned()), ("B", "q\"b\\n\nt\u{1}".to_owned())];
        assert_eq!(to_toml(&env), "A = \"1\"\nB = \"q\\\"b\\\\n\\nt\\u0001\"\n");
        assert_eq!(to_toml(&[]), "");
    }

    #[test]
    fn exec_d_paths_are_recognised() {
        assert!(is_exec_d_path(Path::new(
            "/layers/dynostat_dynostat/dynostat/exec.d/dynostat"
        )));
        assert!(is_exec_d_path(Path::new("exec.d/dynostat")));
        assert!(!is_exec_d_path(Path::new("/app/.dynostat/bin/dynostat")));
        assert!(!is_exec_d_path(Path::new("dynostat")));
        assert!(!is_exec_d_path(Path::new("/exec.d")));
    }
}
