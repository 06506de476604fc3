//! `dynostat agent`, the dyno sidecar, through the real binary: quiet
//! exits, idempotence, restarting a killed listener, forwarding again, the
//! final flush on SIGTERM, and leaving when the app (its parent) leaves.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::harness::{self, children_of, dynostat, gone, udp_bound, wait, Proc};
use common::Intake;

const T: Duration = Duration::from_secs(20);

/// `dynostat agent` forwarding to `intake` on `port`, as on a web dyno.
fn agent(port: u16, intake: &Intake) -> Command {
    let dir = std::env::temp_dir();
    let mut cmd = dynostat(&dir, &["agent"]);
    cmd.env("DD_DOGSTATSD_PORT", port.to_string())
        .env("DD_DD_URL", intake.url())
        .env("DD_API_KEY", "test-key-0123456789abcdef")
        .env("DYNO", "web.1")
        .env("DYNOSTAT_FLUSH_INTERVAL", "1")
        .env("DYNOSTAT_SHUTDOWN_GRACE", "0.2");
    cmd
}

/// Sends `datagram` until the intake has seen `metric` (bounded).
fn send_until_seen(port: u16, intake: &Intake, datagram: &[u8], metric: &str) -> bool {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    wait(T, || {
        sock.send_to(datagram, ("127.0.0.1", port)).unwrap();
        !intake.series_named(metric).is_empty()
    })
}

#[test]
fn disabled_agent_exits_quietly() {
    let dir = std::env::temp_dir();
    let mut p = Proc::spawn(dynostat(&dir, &["agent"]).env("DISABLE_DATADOG_AGENT", "true"));
    assert_eq!(p.code(T), 0);
    assert_eq!(p.stdout(), "");
    assert_eq!(p.stderr(), "");
}

#[test]
fn excluded_dyno_type_and_one_off_without_key_exit_quietly() {
    let dir = std::env::temp_dir();
    let mut p = Proc::spawn(
        dynostat(&dir, &["agent"])
            .env("DYNO", "worker-12a34b56d-e78f9")
            .env("DYNOSTAT_DYNO_TYPES", "web")
            .env("DD_API_KEY", "k"),
    );
    assert_eq!(p.code(T), 0);
    assert_eq!(p.stdout() + &p.stderr(), "");

    let mut p = Proc::spawn(dynostat(&dir, &["agent"]).env("DYNO", "run.1234"));
    assert_eq!(p.code(T), 0);
    assert_eq!(p.stdout() + &p.stderr(), "");

    // On a normal dyno, a missing key is worth one hint line.
    let mut p = Proc::spawn(dynostat(&dir, &["agent"]).env("DYNO", "web.1"));
    assert_eq!(p.code(T), 0);
    assert_eq!(p.stderr().lines().count(), 1, "{}", p.stderr());
    assert!(p.stderr().contains("DD_API_KEY"), "{}", p.stderr());
}

#[test]
fn a_second_agent_exits_when_the_port_is_taken() {
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let intake = Intake::start();
    let mut p = Proc::spawn(&mut agent(port, &intake));
    assert_eq!(p.code(T), 0);
    assert_eq!(
        p.stdout() + &p.stderr(),
        "",
        "one debug line only, hidden at info"
    );
}

#[test]
fn restarts_a_killed_listener_and_forwards_again() {
    let port = harness::free_udp_port();
    let intake = Intake::start();
    let mut p = Proc::spawn(&mut agent(port, &intake));
    p.expect_stderr("listening", T);
    assert!(send_until_seen(
        port,
        &intake,
        b"agent.before:1|c",
        "agent.before"
    ));

    let first = children_of(p.pid());
    assert_eq!(first.len(), 1, "one listener child: {first:?}");
    // SAFETY: kill(2) on the listener, a child of our child.
    unsafe {
        libc::kill(first[0], libc::SIGKILL);
    }
    assert!(
        wait(T, || {
            let now = children_of(p.pid());
            now.len() == 1 && now[0] != first[0]
        }),
        "no new listener: {:?}\n{}",
        children_of(p.pid()),
        p.stderr()
    );
    p.expect_stderr("the listener died; restarting it", T);
    p.expect_stderr("killed by SIGKILL", T);
    assert!(
        send_until_seen(port, &intake, b"agent.after:1|c", "agent.after"),
        "not forwarding after the restart\n{}",
        p.stderr()
    );

    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 0);
    assert!(!udp_bound(port), "the listener outlived the agent");
}

#[test]
fn sigterm_passes_to_the_listener_which_flushes_before_the_agent_exits() {
    let port = harness::free_udp_port();
    let intake = Intake::start();
    // A long interval: only the shutdown flush can deliver the metric.
    let mut p = Proc::spawn(agent(port, &intake).env("DYNOSTAT_FLUSH_INTERVAL", "300"));
    p.expect_stderr("listening", T);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"agent.final:5|c", ("127.0.0.1", port))
        .unwrap();
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 0);
    assert!(
        intake.wait_until(Duration::from_secs(5), |i| i.total("agent.final", &[])
            == 5.0),
        "the final flush was lost\n{}",
        p.stderr()
    );
    let listener_gone = children_of(p.pid()).is_empty();
    assert!(listener_gone);
}

#[test]
fn one_off_dyno_runs_silently() {
    let port = harness::free_udp_port();
    let intake = Intake::start();
    let mut p = Proc::spawn(agent(port, &intake).env("DYNO", "run.7"));
    assert!(wait(T, || udp_bound(port)), "{}", p.stderr());
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 0);
    assert_eq!(p.stdout() + &p.stderr(), "", "a one-off dyno stays quiet");
}

#[test]
fn agent_exits_when_its_parent_exits() {
    let port = harness::free_udp_port();
    let intake = Intake::start();
    let inner = agent(port, &intake);
    // The "app": a shell that starts the agent in the background, like the
    // boot script, and lives until we close its stdin.
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("\"$0\" agent & echo $!; read _")
        .arg(harness::bin())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    let mut shell = sh.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let agent_pid: i32 = line.trim().parse().unwrap();
    assert!(wait(T, || udp_bound(port)), "the agent never started serve");
    let listener = children_of(agent_pid);
    assert_eq!(listener.len(), 1, "{listener:?}");

    // The app exits.
    drop(shell.stdin.take());
    shell.wait().unwrap();
    assert!(
        wait(T, || gone(agent_pid) && gone(listener[0])),
        "the agent ({agent_pid}) or its listener outlived the app"
    );
    assert!(!udp_bound(port));
}

#[test]
fn agent_exits_when_the_watched_pid_exits() {
    // DYNOSTAT_WATCH_PID: how the detached agent started by the CNB exec.d
    // program follows the app.
    let port = harness::free_udp_port();
    let intake = Intake::start();
    let mut app = Command::new("sleep").arg("30").spawn().unwrap();
    let mut p = Proc::spawn(agent(port, &intake).env("DYNOSTAT_WATCH_PID", app.id().to_string()));
    assert!(wait(T, || udp_bound(port)), "{}", p.stderr());
    app.kill().unwrap();
    // Leave it a zombie for a while: the agent must still see it as gone.
    assert_eq!(p.code(T), 0);
    app.wait().unwrap();
    assert!(!udp_bound(port), "the listener outlived the agent");
    assert!(p.stderr().contains("the app exited"), "{}", p.stderr());
}

/// On a dyno a typo in an optional setting costs nothing but one error line:
/// the listener runs with the default (here the 0.95 percentile) and
/// forwards. A setting without which nothing works still stops it.
#[test]
fn an_invalid_optional_setting_is_logged_once_and_the_default_used() {
    let port = harness::free_udp_port();
    let intake = Intake::start();
    let mut p = Proc::spawn(agent(port, &intake).env("DD_HISTOGRAM_PERCENTILES", "2"));
    p.expect_stderr("listening", T);
    assert!(
        send_until_seen(
            port,
            &intake,
            b"agent.lat:1|h\nagent.lat:3|h",
            "agent.lat.95percentile"
        ),
        "not forwarding with the default percentile\n{}",
        p.stderr()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 0);
    let stderr = p.stderr();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("DD_HISTOGRAM_PERCENTILES=2"))
        .collect();
    assert_eq!(errors.len(), 1, "logged once:\n{stderr}");
    assert!(errors[0].contains("ERROR"), "{}", errors[0]);
    assert!(
        errors[0].contains("using the default (0.95)"),
        "{}",
        errors[0]
    );

    // A port that is not a number: nothing can work, so it stops (exit 2).
    let mut p = Proc::spawn(agent(port, &intake).env("DD_DOGSTATSD_PORT", "81x"));
    assert_eq!(p.code(T), 2);
    assert!(
        p.stderr().contains("DD_DOGSTATSD_PORT=81x"),
        "{}",
        p.stderr()
    );
}

/// The watchdog (issue 22): a listener whose receive loop stops (the
/// test-only stall line makes it spin forever, holding the aggregator, so
/// the flush clock stops too) is killed and restarted, with one line that
/// says what was seen, and metrics flow again within 3 intervals.
#[test]
fn a_stalled_listener_is_restarted_and_metrics_flow_again_within_three_intervals() {
    let port = harness::free_udp_port();
    let intake = Intake::start();
    let interval = Duration::from_secs(2);
    let mut p = Proc::spawn(
        agent(port, &intake)
            .env("DYNOSTAT_FLUSH_INTERVAL", "2")
            .env("DYNOSTAT_TEST_STALL", "1"),
    );
    p.expect_stderr("listening", T);
    assert!(send_until_seen(
        port,
        &intake,
        b"wd.before:1|c",
        "wd.before"
    ));
    let first = children_of(p.pid());
    assert_eq!(first.len(), 1, "{first:?}");

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"dynostat-test-stall", ("127.0.0.1", port))
        .unwrap();
    let stalled = std::time::Instant::now();
    let flowing = wait(3 * interval, || {
        sock.send_to(b"wd.after:1|c", ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        !intake.series_named("wd.after").is_empty()
    });
    assert!(
        flowing,
        "no metric within 3 intervals of the stall ({:?})\n{}",
        stalled.elapsed(),
        p.stderr()
    );
    eprintln!("metrics flow again {:?} after the stall", stalled.elapsed());
    let now = children_of(p.pid());
    assert!(
        now.len() == 1 && now[0] != first[0],
        "not a new listener: {first:?} -> {now:?}"
    );
    let stderr = p.stderr();
    let seen: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("stopped making progress"))
        .collect();
    assert_eq!(seen.len(), 1, "one line:\n{stderr}");
    assert!(seen[0].contains("receive loop"), "{}", seen[0]);
    assert!(
        !stderr.contains("the listener died"),
        "no second line for the same restart:\n{stderr}"
    );

    p.signal(libc::SIGTERM);
    assert_eq!(p.code(T), 0);
    assert!(!udp_bound(port), "the listener outlived the agent");
}
