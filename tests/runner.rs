//! `dynostat start` and `dynostat run`, driven through the real binary:
//! PORT and formation, output format, exit codes, process groups (no
//! orphans, SIGKILL escalation), env files, and the listener beside the app.
#![allow(clippy::unwrap_used)]

#[path = "fixtures/process/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{app, dynostat, marker, pids_with_arg, wait, Proc};

const T: Duration = Duration::from_secs(20);

/// `start` with `args` in a fresh app with this Procfile; output collected.
fn start(procfile: &str, dotenv: Option<&str>, args: &[&str]) -> (tempfile::TempDir, Proc) {
    let dir = app(procfile, dotenv);
    let mut full = vec!["start"];
    full.extend_from_slice(args);
    let p = Proc::spawn(&mut dynostat(dir.path(), &full));
    (dir, p)
}

#[test]
fn formation_and_ports_follow_foreman() {
    let (_dir, mut p) = start(
        "foo: echo \"$PS port=$PORT dyno=$DYNO\"; sleep 30\nbar: echo \"$PS port=$PORT dyno=$DYNO\"; sleep 30\n",
        None,
        &["--no-statsd", "-m", "foo=3,bar=2", "-p", "4000"],
    );
    for want in [
        "foo.1 port=4000 dyno=foo.1",
        "foo.2 port=4001 dyno=foo.2",
        "foo.3 port=4002 dyno=foo.3",
        "bar.1 port=4100 dyno=bar.1",
        "bar.2 port=4101 dyno=bar.2",
    ] {
        p.expect_stdout(want, T);
    }
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 143);
    assert!(!p.stdout().contains("bar.3"));
}

#[test]
fn a_formation_naming_alpha_runs_no_bravo() {
    let (_dir, mut p) = start(
        "alpha: echo \"alpha $PORT\"; sleep 30\nbravo: echo bravo; sleep 30\n",
        None,
        &["--no-statsd", "-m", "alpha=2", "--no-timestamp"],
    );
    p.expect_stdout("alpha.2 | alpha 5001", T);
    p.signal(libc::SIGINT);
    assert_eq!(p.code(T), 130);
    let out = p.stdout();
    assert!(out.contains("alpha.1 | alpha 5000"), "{out}");
    assert!(!out.contains("bravo"), "{out}");
}

#[test]
fn base_port_comes_from_the_env_file_then_port() {
    let (_dir, mut p) = start(
        "web: echo \"port=$PORT\"\n",
        Some("PORT=6100\n"),
        &["--no-statsd"],
    );
    assert_eq!(p.code(T), 0);
    assert!(p.stdout().contains("port=6100"), "{}", p.stdout());

    let dir = app("web: echo \"port=$PORT\"\n", None);
    let mut p = Proc::spawn(dynostat(dir.path(), &["start", "--no-statsd"]).env("PORT", "7000"));
    assert_eq!(p.code(T), 0);
    assert!(p.stdout().contains("port=7000"), "{}", p.stdout());
}

#[test]
fn output_format_is_prefixed_padded_and_plain_without_a_tty() {
    let (_dir, mut p) = start(
        "web: echo hello; echo oops >&2; printf 'bad \\377 byte\\n'\n",
        None,
        &["--no-statsd", "--no-timestamp"],
    );
    assert_eq!(p.code(T), 0);
    let out = p.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"web.1  | hello"), "{out}");
    // stderr is merged into stdout.
    assert!(lines.contains(&"web.1  | oops"), "{out}");
    // Invalid UTF-8 is replaced, never fatal.
    assert!(lines.contains(&"web.1  | bad \u{fffd} byte"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("system | web.1 started with pid ")),
        "{out}"
    );
    assert!(
        lines.contains(&"system | web.1 exited with code 0"),
        "{out}"
    );
    assert!(
        !out.contains('\x1b'),
        "no colour when stdout is a pipe: {out:?}"
    );

    // With timestamps: `HH:MM:SS name | line`.
    let (_dir, mut p) = start("web: echo stamped\n", None, &["--no-statsd"]);
    assert_eq!(p.code(T), 0);
    let out = p.stdout();
    let line = out
        .lines()
        .find(|l| l.ends_with("web.1  | stamped"))
        .unwrap_or_else(|| panic!("{out}"));
    let ts = &line[..8];
    assert!(
        ts.bytes().enumerate().all(|(i, b)| if i == 2 || i == 5 {
            b == b':'
        } else {
            b.is_ascii_digit()
        }),
        "{line}"
    );
    assert_eq!(&line[8..], " web.1  | stamped");
}

#[test]
fn color_always_uses_ansi_and_no_color_disables_auto() {
    let (_dir, mut p) = start("web: echo hi\n", None, &["--no-statsd", "--color=always"]);
    assert_eq!(p.code(T), 0);
    assert!(p.stdout().contains("\x1b["), "{:?}", p.stdout());

    // On a TTY, auto colours unless NO_COLOR is set.
    for (no_color, want_ansi) in [(None, true), (Some("1"), false)] {
        let dir = app("web: echo hi\n", None);
        let mut cmd = dynostat(dir.path(), &["start", "--no-statsd"]);
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = run_on_pty(&mut cmd);
        assert!(
            out.contains("web.1  |") || out.contains("web.1  \x1b"),
            "{out:?}"
        );
        assert_eq!(
            out.contains("\x1b["),
            want_ansi,
            "NO_COLOR={no_color:?}: {out:?}"
        );
    }
}

/// Runs `cmd` with stdout and stderr on a pseudo-terminal; returns the output.
fn run_on_pty(cmd: &mut std::process::Command) -> String {
    use std::io::Read;
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave;
    cmd.stdout(std::process::Stdio::from(slave.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(slave));
    let mut child = cmd.spawn().unwrap();
    // The command holds the slave's copies until dropped.
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once every slave copy is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    assert!(
        wait(T, || child.try_wait().unwrap().is_some()),
        "start on a pty did not exit"
    );
    // Drop the Command's slave copies so the reader sees EIO.
    let _ = cmd.stdout(std::process::Stdio::null());
    let _ = cmd.stderr(std::process::Stdio::null());
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}

#[test]
fn exit_code_is_the_first_exiting_process() {
    let (_dir, mut p) = start(
        "web: sleep 30\nworker: exit 42\n",
        None,
        &["--no-statsd", "--no-timestamp"],
    );
    assert_eq!(p.code(T), 42);
    let out = p.stdout();
    assert!(
        out.contains("system   | worker.1 exited with code 42"),
        "{out}"
    );
    assert!(out.contains("system   | web.1 killed by SIGTERM"), "{out}");
}

#[test]
fn a_process_killed_with_9_makes_137() {
    // foreman exits 0 here and honcho 247; the shell convention is 128 + 9.
    let (_dir, mut p) = start(
        "web: kill -9 $$\nworker: sleep 30\n",
        None,
        &["--no-statsd", "--no-timestamp"],
    );
    assert_eq!(p.code(T), 137);
    assert!(
        p.stdout().contains("system   | web.1 killed by SIGKILL"),
        "{}",
        p.stdout()
    );
}

#[test]
fn run_exits_with_the_command_code() {
    let dir = app("web: true\n", None);
    let mut p = Proc::spawn(&mut dynostat(
        dir.path(),
        &["run", "--no-statsd", "--", "sh", "-c", "exit 7"],
    ));
    assert_eq!(p.code(T), 7);

    let mut p = Proc::spawn(&mut dynostat(
        dir.path(),
        &["run", "--no-statsd", "--", "sh", "-c", "kill -9 $$"],
    ));
    assert_eq!(p.code(T), 137);

    let mut p = Proc::spawn(&mut dynostat(
        dir.path(),
        &["run", "--no-statsd", "--", "dynostat-no-such-command"],
    ));
    assert_eq!(p.code(T), 127);
    assert!(
        p.stderr().contains("dynostat-no-such-command"),
        "{}",
        p.stderr()
    );
}

#[test]
fn run_forwards_signals_and_loads_env() {
    let dir = app("web: true\n", Some("GREETING='hello from .env'\n"));
    let mut p = Proc::spawn(&mut dynostat(
        dir.path(),
        &[
            "run",
            "--no-statsd",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; trap 'echo got TERM; exit 3' TERM; while :; do sleep 0.05; done",
        ],
    ));
    p.expect_stdout("hello from .env", T);
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 3);
    assert!(p.stdout().contains("got TERM"), "{}", p.stdout());
}

#[test]
fn no_orphans_after_sigterm() {
    // foreman issues #618 and #628: grandchildren survive Ctrl-C / TERM.
    let m = marker();
    let procfile = format!(
        "web: sh -c 'sleep {m} & sleep {m} & wait'\nworker: setsid sleep {m} & sleep {m}\n"
    );
    let (_dir, mut p) = start(&procfile, None, &["--no-statsd", "-t", "3"]);
    assert!(
        wait(T, || pids_with_arg(&m).len() >= 4),
        "grandchildren never started: {:?}\n{}",
        pids_with_arg(&m),
        p.stdout()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 143);
    assert!(
        wait(Duration::from_secs(5), || pids_with_arg(&m).is_empty()),
        "processes survived the runner: {:?}\n{}",
        pids_with_arg(&m),
        p.stdout()
    );
}

#[test]
fn a_process_ignoring_term_is_killed_after_the_timeout() {
    let m = marker();
    // `trap '' TERM` is inherited by the sleeps: the whole group ignores TERM.
    let procfile = format!("web: trap '' TERM; sleep {m} & sleep {m}\nworker: sleep 30\n");
    let (_dir, mut p) = start(
        &procfile,
        None,
        &["--no-statsd", "--no-timestamp", "-t", "1"],
    );
    assert!(wait(T, || pids_with_arg(&m).len() >= 2), "{}", p.stdout());
    p.signal(libc::SIGINT);
    assert_eq!(p.code(T), 130);
    let out = p.stdout();
    assert!(
        out.contains("system   | sending SIGKILL to web.1 (still running 1 s after SIGTERM)"),
        "{out}"
    );
    assert!(out.contains("system   | web.1 killed by SIGKILL"), "{out}");
    assert!(
        wait(Duration::from_secs(5), || pids_with_arg(&m).is_empty()),
        "survivors: {:?}",
        pids_with_arg(&m)
    );
}

#[test]
fn a_second_interrupt_kills_at_once() {
    let m = marker();
    let procfile = format!("web: trap '' TERM INT; sleep {m}\n");
    let (_dir, mut p) = start(
        &procfile,
        None,
        &["--no-statsd", "--no-timestamp", "-t", "60"],
    );
    assert!(wait(T, || !pids_with_arg(&m).is_empty()), "{}", p.stdout());
    p.signal(libc::SIGINT);
    p.expect_stdout("sending SIGTERM to all processes", T);
    p.signal(libc::SIGINT);
    // Well before the 60 s timeout.
    assert_eq!(p.code(T), 130);
    assert!(p
        .stdout()
        .contains("SIGINT received again, killing all processes"));
    assert!(wait(Duration::from_secs(5), || pids_with_arg(&m).is_empty()));
}

#[test]
fn partial_lines_are_flushed_without_a_newline() {
    let (_dir, mut p) = start(
        "web: printf 'no newline yet'; sleep 30\nworker: sleep 30; echo\n",
        None,
        &["--no-statsd", "--no-timestamp"],
    );
    p.expect_stdout("web.1    | no newline yet\n", T);
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 143);
}

#[test]
fn env_file_values_substitution_and_precedence() {
    let env = "FOO=\"a b\"\nexport BAR=${FOO}-x\n# comment\nQUOTED='$FOO'\n";
    let (_dir, mut p) = start(
        "web: echo \"[$FOO|$BAR|$QUOTED]\"\n",
        Some(env),
        &["--no-statsd"],
    );
    assert_eq!(p.code(T), 0);
    assert!(p.stdout().contains("[a b|a b-x|$FOO]"), "{}", p.stdout());

    // The real environment wins, unless --env-override.
    for (flag, want) in [(None, "[real]"), (Some("--env-override"), "[a b]")] {
        let dir = app("web: echo \"[$FOO]\"\n", Some(env));
        let mut args = vec!["start", "--no-statsd"];
        args.extend(flag);
        let mut p = Proc::spawn(dynostat(dir.path(), &args).env("FOO", "real"));
        assert_eq!(p.code(T), 0);
        assert!(p.stdout().contains(want), "{flag:?}: {}", p.stdout());
    }

    // -e files load in order, a later file wins.
    let dir = app("web: echo \"[$A|$B]\"\n", None);
    std::fs::write(dir.path().join("one.env"), "A=1\nB=1\n").unwrap();
    std::fs::write(dir.path().join("two.env"), "B=2\n").unwrap();
    let mut p = Proc::spawn(&mut dynostat(
        dir.path(),
        &["start", "--no-statsd", "-e", "one.env", "-e", "two.env"],
    ));
    assert_eq!(p.code(T), 0);
    assert!(p.stdout().contains("[1|2]"), "{}", p.stdout());
}

#[test]
fn env_file_errors_name_file_and_line() {
    let (_dir, mut p) = start(
        "web: echo never\n",
        Some("GOOD=1\nBAD VALUE=2\n"),
        &["--no-statsd"],
    );
    assert_eq!(p.code(T), 2);
    assert!(
        p.stderr()
            .contains(".env:2: variable name `BAD VALUE` contains a space"),
        "{}",
        p.stderr()
    );
    assert!(!p.stdout().contains("never"));

    let dir = app("web: true\n", None);
    let mut p = Proc::spawn(&mut dynostat(dir.path(), &["start", "-e", "missing.env"]));
    assert_eq!(p.code(T), 2);
    assert!(
        p.stderr().contains("missing.env: no such env file"),
        "{}",
        p.stderr()
    );
}

#[test]
fn bad_flags_and_names_are_errors() {
    for (args, want) in [
        (&["start", "-m", "web=x"][..], "`x` is not a number"),
        (
            &["start", "-m", "nope=1"][..],
            "`nope` is not in Procfile (it has web)",
        ),
        (
            &["start", "nope"][..],
            "`nope` is not in Procfile (it has web)",
        ),
        (
            &["start", "--color=sometimes"][..],
            "use auto, always or never",
        ),
        (&["start", "-f", "Nope"][..], "Nope: no such file"),
    ] {
        let dir = app("web: true\n", None);
        let mut p = Proc::spawn(&mut dynostat(dir.path(), args));
        assert_eq!(p.code(T), 2, "{args:?}");
        assert!(p.stderr().contains(want), "{args:?}: {}", p.stderr());
    }
}

#[test]
fn named_processes_only_and_root_dir() {
    let dir = app(
        "web: echo web ran\nworker: echo \"worker $PORT $(pwd)\"\n",
        None,
    );
    let root = dir.path().to_str().unwrap().to_owned();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(&mut dynostat(
        elsewhere.path(),
        &["start", "--no-statsd", "-d", &root, "worker"],
    ));
    assert_eq!(p.code(T), 0);
    let out = p.stdout();
    assert!(!out.contains("web ran"), "{out}");
    let canon = std::fs::canonicalize(dir.path()).unwrap();
    assert!(
        out.contains(&format!("worker 5100 {}", canon.display()))
            || out.contains(&format!("worker 5100 {root}")),
        "{out}"
    );
}

#[test]
fn the_listener_runs_beside_the_app_as_statsd() {
    let port = harness::free_udp_port();
    let dir = app("web: sleep 30\n", None);
    let mut p = Proc::spawn(
        dynostat(dir.path(), &["start", "--no-timestamp"])
            .env("DD_DOGSTATSD_PORT", port.to_string())
            .env("DYNOSTAT_FLUSH_INTERVAL", "1")
            .env("DYNOSTAT_SHUTDOWN_GRACE", "0.2"),
    );
    p.expect_stdout("statsd | ", T);
    assert!(wait(T, || listening(&p.stdout(), port)), "{}", p.stdout());
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Console flushes are prefixed like any process.
    assert!(
        wait(T, || {
            sock.send_to(b"runner.beside.app:1|c", ("127.0.0.1", port))
                .unwrap();
            p.stdout()
                .lines()
                .any(|l| l.starts_with("statsd | ") && l.contains("runner.beside.app"))
        }),
        "{}",
        p.stdout()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 143);
    let out = p.stdout();
    assert!(out.contains("system | statsd "), "{out}");
    assert!(
        !harness::udp_bound(port),
        "the listener outlived the runner"
    );
}

/// A ddtrace app under `dynostat start` with no API key: the tracer finds
/// the relay through `DD_TRACE_AGENT_PORT`, and its traces are summed up on
/// the console. Skipped when ddtrace is not installed under target/tracers.
#[test]
fn start_exports_the_trace_port_and_prints_a_trace_summary() {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tracers/py4/bin/python");
    if !python.exists() {
        eprintln!("skipped: ddtrace is not installed (run scripts/install-test-deps.sh)");
        return;
    }
    let app_py =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tracers/app.py");
    let procfile = format!(
        "web: echo port=$DD_TRACE_AGENT_PORT && {} {} 12 && sleep 30\n",
        python.display(),
        app_py.display()
    );
    let apm = harness::free_tcp_port();
    let dir = app(&procfile, None);
    let mut p = Proc::spawn(
        dynostat(dir.path(), &["start", "--no-timestamp"])
            .env("DD_DOGSTATSD_PORT", harness::free_udp_port().to_string())
            .env("DD_APM_RECEIVER_PORT", apm.to_string())
            .env("DYNOSTAT_SHUTDOWN_GRACE", "0.2"),
    );
    p.expect_stdout(&format!("web.1  | port={apm}"), T);
    p.expect_stdout("web.1  | traced 12", T);
    // The summary comes with the 10 s stats flush, or at the latest on stop.
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 143);
    let out = p.stdout();
    let row = out
        .lines()
        .find(|l| l.starts_with("statsd | shop ") && l.contains("GET /items"))
        .unwrap_or_else(|| panic!("no trace summary row:\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[cells.len() - 4..cells.len() - 2],
        ["12", "3"],
        "{row}"
    );
}

#[test]
fn a_taken_statsd_port_is_reported_and_the_app_still_runs() {
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = app("web: echo app ran\n", None);
    let mut p = Proc::spawn(
        dynostat(dir.path(), &["start", "--no-timestamp"])
            .env("DD_DOGSTATSD_PORT", port.to_string()),
    );
    assert_eq!(p.code(T), 0);
    let out = p.stdout();
    assert!(
        out.contains(&format!(
            "system | statsd: 127.0.0.1:{port} is already in use"
        )),
        "{out}"
    );
    assert!(out.contains("web.1  | app ran"), "{out}");
}

#[test]
fn run_starts_the_listener_first_and_stops_it_with_a_final_flush() {
    let port = harness::free_udp_port();
    let dir = app("web: true\n", None);
    let mut p = Proc::spawn(
        dynostat(
            dir.path(),
            &[
                "run",
                "--",
                "sh",
                "-c",
                "while [ ! -f done ]; do sleep 0.05; done; echo command done",
            ],
        )
        .env("DD_DOGSTATSD_PORT", port.to_string())
        .env("DYNOSTAT_FLUSH_INTERVAL", "300")
        .env("DYNOSTAT_SHUTDOWN_GRACE", "0.2"),
    );
    assert!(wait(T, || listening(&p.stderr(), port)), "{}", p.stderr());
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"run.final.metric:2|c", ("127.0.0.1", port))
        .unwrap();
    std::fs::write(dir.path().join("done"), "").unwrap();
    assert_eq!(p.code(T), 0);
    let out = p.stdout();
    assert!(out.contains("command done"), "{out}");
    // Only the shutdown flush (interval 300 s) can have printed it.
    assert!(out.contains("run.final.metric"), "{out}\n{}", p.stderr());
    assert!(!harness::udp_bound(port), "the listener outlived `run`");
}

/// `start` beside a listener with 1 s flushes; three counts in one datagram.
fn start_console(extra_env: &[(&str, &str)]) -> (tempfile::TempDir, std::process::Command, u16) {
    let port = harness::free_udp_port();
    let dir = app("web: sleep 30\n", None);
    let mut cmd = dynostat(dir.path(), &["start", "--no-timestamp"]);
    cmd.env("DD_DOGSTATSD_PORT", port.to_string())
        .env("DYNOSTAT_FLUSH_INTERVAL", "1")
        .env("DYNOSTAT_SHUTDOWN_GRACE", "0.2")
        .env_remove("NO_COLOR")
        .env_remove("DYNOSTAT_CONSOLE_TTY");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    (dir, cmd, port)
}

/// Whether the listener has said it listens on UDP `port`. Tests wait for
/// this line, not for the port in `/proc/net/udp`: the runner checks that the
/// port is free by binding it for a moment before it starts the listener,
/// and a datagram sent in that moment goes to the check and is lost.
fn listening(out: &str, port: u16) -> bool {
    out.contains(&format!("listening on=udp://127.0.0.1:{port}"))
}

/// Sends three increments of `name` in one datagram (one flush).
fn send_three(port: u16, name: &str) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let line = format!("{name}:1|c\n{name}:1|c\n{name}:1|c");
    sock.send_to(line.as_bytes(), ("127.0.0.1", port)).unwrap();
}

/// The console row for `name` (without the `statsd | ` prefix), once shown.
fn console_row(out: &str, name: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.split_once("statsd | ").map(|(_, rest)| rest))
        .find(|l| l.starts_with(&format!("{name} ")))
        .map(str::to_owned)
}

#[test]
fn console_in_a_pipe_shows_the_count_an_ascii_trend_and_one_summary_line() {
    let (_dir, mut cmd, port) = start_console(&[]);
    let mut p = Proc::spawn(&mut cmd);
    assert!(wait(T, || listening(&p.stdout(), port)), "{}", p.stdout());
    send_three(port, "pipe.requests");
    assert!(
        wait(T, || console_row(&p.stdout(), "pipe.requests").is_some()),
        "{}",
        p.stdout()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 143);
    let out = p.stdout();
    let row = console_row(&out, "pipe.requests").unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    // METRIC TYPE TREND VALUE: no tags; three increments in a 1 s interval.
    assert_eq!(
        cells,
        ["pipe.requests", "counter", "~", "3", "(3/s)"],
        "{out}"
    );
    assert!(row.is_ascii(), "{row:?}");
    assert!(
        out.contains("statsd | METRIC         TYPE     TAGS  TREND     VALUE\n"),
        "{out}"
    );
    assert!(
        out.contains("statsd | dynostat: 1 packet, 3 lines, 0 parse errors, 1 context\n"),
        "{out}"
    );
    // Self-telemetry is the summary line, never rows.
    assert!(console_row(&out, "dynostat.packets").is_none(), "{out}");
}

#[test]
fn console_on_a_terminal_draws_a_sparkline_and_no_color_makes_it_ascii() {
    for (no_color, spark) in [(None, "▄"), (Some("1"), "~")] {
        let extra: Vec<(&str, &str)> = no_color.map(|v| ("NO_COLOR", v)).into_iter().collect();
        let (_dir, mut cmd, port) = start_console(&extra);
        let pty = PtyRun::spawn(&mut cmd);
        assert!(
            wait(T, || listening(&strip_ansi(&pty.output()), port)),
            "{}",
            pty.output()
        );
        send_three(port, "tty.requests");
        assert!(
            wait(T, || console_row(
                &strip_ansi(&pty.output()),
                "tty.requests"
            )
            .is_some()),
            "{}",
            pty.output()
        );
        let out = pty.stop();
        let out = strip_ansi(&out);
        let row = console_row(&out, "tty.requests").unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            ["tty.requests", "counter", spark, "3", "(3/s)"],
            "NO_COLOR={no_color:?}: {out}"
        );
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`) and carriage returns.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// A command running with stdout and stderr on a pseudo-terminal, its output
/// collected while it runs.
struct PtyRun {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl PtyRun {
    fn spawn(cmd: &mut std::process::Command) -> Self {
        use std::io::Read;
        let pty = nix::pty::openpty(None, None).unwrap();
        cmd.stdout(std::process::Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(pty.slave));
        let child = cmd.spawn().unwrap();
        // Drop the Command's slave copies so the reader sees EIO at the end.
        let _ = cmd.stdout(std::process::Stdio::null());
        let _ = cmd.stderr(std::process::Stdio::null());
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut master = std::fs::File::from(pty.master);
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            child,
            out,
            reader: Some(reader),
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// SIGTERM, wait for the exit and the last output; returns all output.
    fn stop(mut self) -> String {
        let pid = i32::try_from(self.child.id()).unwrap();
        unsafe { libc::kill(pid, libc::SIGTERM) };
        assert!(
            wait(T, || self.child.try_wait().unwrap().is_some()),
            "start on a pty did not exit"
        );
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.output()
    }
}

// ------------------------------------------------------------ release phase

#[test]
fn release_is_not_started_by_default_and_web_gets_5000() {
    let (_dir, mut p) = start(
        "release: echo RELEASED\nweb: echo \"web on $PORT\"\n",
        None,
        &["--no-statsd", "--no-timestamp"],
    );
    assert_eq!(p.code(T), 0);
    let out = p.stdout();
    assert!(out.contains("web.1  | web on 5000"), "{out}");
    assert!(!out.contains("RELEASED"), "{out}");
    assert!(!out.contains("release.1"), "{out}");
}

#[test]
fn naming_release_or_giving_it_a_count_runs_it() {
    for args in [&["release"][..], &["-m", "release=1"]] {
        let mut full = vec!["--no-statsd", "--no-timestamp"];
        full.extend_from_slice(args);
        let (_dir, mut p) = start("release: echo RELEASED\nweb: sleep 30\n", None, &full);
        assert_eq!(p.code(T), 0, "{args:?}: {}", p.stdout());
        let out = p.stdout();
        assert!(out.contains("release.1 | RELEASED"), "{args:?}: {out}");
        assert!(!out.contains("web.1"), "{args:?}: {out}");
    }
}

#[test]
fn release_flag_runs_the_release_phase_first_with_the_same_env() {
    let (dir, mut p) = start(
        "web: test -f migrated && echo \"web after migration, $FROM_ENV\"; sleep 30\n\
         release: echo \"migrating as $DYNO, $FROM_ENV\"; sleep 0.3; touch migrated\n",
        Some("FROM_ENV=from-dotenv\n"),
        &["--no-statsd", "--no-timestamp", "--release"],
    );
    p.expect_stdout("web.1     | web after migration, from-dotenv", T);
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 143);
    let out = p.stdout();
    let order: Vec<usize> = [
        "release.1 | migrating as release.1, from-dotenv",
        "system    | release.1 exited with code 0",
        "system    | web.1 started with pid",
        "web.1     | web after migration, from-dotenv",
    ]
    .iter()
    .map(|l| {
        out.find(l)
            .unwrap_or_else(|| panic!("{l:?} missing:\n{out}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{out}");
    assert!(dir.path().join("migrated").exists());
}

#[test]
fn a_failing_release_phase_stops_the_run_with_its_code() {
    let port = harness::free_udp_port();
    let dir = app(
        "release: echo failing; exit 3\nweb: echo SHOULD NOT RUN\n",
        None,
    );
    let mut p = Proc::spawn(
        dynostat(dir.path(), &["start", "--no-timestamp", "--release"])
            .env("DD_DOGSTATSD_PORT", port.to_string())
            .env("DYNOSTAT_SHUTDOWN_GRACE", "0.2"),
    );
    assert_eq!(p.code(T), 3, "{}", p.stdout());
    let out = p.stdout();
    assert!(out.contains("release.1 | failing"), "{out}");
    assert!(
        out.contains(
            "system    | release phase failed (release.1 exited with code 3); not starting the other processes"
        ),
        "{out}"
    );
    assert!(!out.contains("SHOULD NOT RUN"), "{out}");
    assert!(!out.contains("web.1"), "{out}");
    assert!(
        out.contains("system    | statsd "),
        "the listener ran: {out}"
    );
    assert!(
        !harness::udp_bound(port),
        "the listener outlived the runner"
    );

    // Without a `release` process, --release is a usage error.
    let (_dir, mut p) = start("web: true\n", None, &["--no-statsd", "--release"]);
    assert_eq!(p.code(T), 2);
    assert!(
        p.stderr()
            .contains("--release: Procfile has no `release` process (it has web)"),
        "{}",
        p.stderr()
    );
}

// ------------------------------------------------------------ .foreman

#[test]
fn dot_foreman_gives_defaults_and_flags_win() {
    let dir = app("web: echo never\n", None);
    std::fs::write(
        dir.path().join(".foreman"),
        "# as foreman users write it\nprocfile: Procfile.dev\nenv: dev.env\nport: 6000\nformation: web=2\ntimeout: 1\ncolor: true\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("Procfile.dev"),
        "web: echo \"dev $PORT $FROM_DEV\"; sleep 30\nworker: echo WORKER\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("dev.env"), "FROM_DEV=yes\n").unwrap();

    let mut p = Proc::spawn(&mut dynostat(
        dir.path(),
        &["start", "--no-statsd", "--no-timestamp"],
    ));
    p.expect_stdout("web.2  | dev 6001 yes", T);
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 143);
    let out = p.stdout();
    assert!(out.contains("web.1  | dev 6000 yes"), "{out}");
    assert!(!out.contains("WORKER") && !out.contains("never"), "{out}");
    assert!(
        p.stderr()
            .contains("dynostat start: .foreman:7: `color` is not used by dynostat start; ignored"),
        "{}",
        p.stderr()
    );

    let mut p = Proc::spawn(&mut dynostat(
        dir.path(),
        &[
            "start",
            "--no-statsd",
            "--no-timestamp",
            "-p",
            "7000",
            "-m",
            "web=1",
        ],
    ));
    p.expect_stdout("web.1  | dev 7000 yes", T);
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 143);
    assert!(!p.stdout().contains("web.2"), "{}", p.stdout());

    // `timeout: 1` from .foreman: a group ignoring TERM is killed after 1 s.
    let m = marker();
    std::fs::write(
        dir.path().join("Procfile.dev"),
        format!("web: trap '' TERM; sleep {m} & sleep {m}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".foreman"),
        "procfile: Procfile.dev\ntimeout: 1\n",
    )
    .unwrap();
    let mut p = Proc::spawn(&mut dynostat(
        dir.path(),
        &["start", "--no-statsd", "--no-timestamp"],
    ));
    assert!(wait(T, || pids_with_arg(&m).len() >= 2), "{}", p.stdout());
    p.signal(libc::SIGINT);
    assert_eq!(p.code(T), 130);
    assert!(
        p.stdout()
            .contains("sending SIGKILL to web.1 (still running 1 s after SIGTERM)"),
        "{}",
        p.stdout()
    );
}

#[test]
fn a_bad_dot_foreman_is_an_error_naming_the_line() {
    let dir = app("web: true\n", None);
    std::fs::write(dir.path().join(".foreman"), "port: 5000\nport: abc\n").unwrap();
    let mut p = Proc::spawn(&mut dynostat(dir.path(), &["start", "--no-statsd"]));
    assert_eq!(p.code(T), 2);
    assert!(
        p.stderr()
            .contains("dynostat start: .foreman:2: port `abc` is not a port number (1-65535)"),
        "{}",
        p.stderr()
    );
}

#[test]
fn an_interrupt_during_the_release_phase_stops_it_and_starts_nothing() {
    let m = marker();
    let (_dir, mut p) = start(
        &format!("release: echo migrating; sleep {m}\nweb: echo SHOULD NOT RUN\n"),
        None,
        &["--no-statsd", "--no-timestamp", "--release"],
    );
    p.expect_stdout("release.1 | migrating", T);
    assert!(wait(T, || !pids_with_arg(&m).is_empty()), "{}", p.stdout());
    p.signal(libc::SIGINT);
    assert_eq!(p.code(T), 130);
    let out = p.stdout();
    assert!(
        out.contains("system    | SIGINT received, stopping all processes"),
        "{out}"
    );
    assert!(
        !out.contains("SHOULD NOT RUN") && !out.contains("web.1"),
        "{out}"
    );
    assert!(
        wait(Duration::from_secs(5), || pids_with_arg(&m).is_empty()),
        "the release command outlived the runner"
    );
}
