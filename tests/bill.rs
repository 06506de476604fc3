//! What dynostat adds to the user's Datadog bill (issue 25): by default
//! nothing but the app's metrics, and `dynostat.dropped` only in a flush
//! that lost data; the cardinality guard; the warnings for the official
//! buildpack's settings that dynostat does not read.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Intake, Serve};

const T: Duration = Duration::from_secs(30);

/// Every metric name at the intake, whatever the endpoint: series, sketches.
fn names(intake: &Intake) -> Vec<String> {
    intake.metric_names()
}

/// Only a key and an app metric: the intake receives that metric and
/// nothing else, over several flushes.
#[test]
fn by_default_only_the_apps_metrics_reach_the_intake() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_STATS_ENABLE", "false")
        .start();
    s.send(b"app.hits:1|c|#route:home");
    assert!(intake.wait_until(T, |i| i.total("app.hits", &[]) >= 1.0));
    // Two more flushes, with nothing received.
    std::thread::sleep(Duration::from_millis(2_200));
    s.stop_ok(T);
    assert_eq!(names(&intake), ["app.hits"], "{:#?}", intake.series());
    let paths: Vec<String> = intake.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths.iter().all(|p| p == "/api/v2/series"),
        "only series were sent: {paths:?}"
    );
    assert!(intake.total("app.hits", &[]) >= 1.0);
}

/// A run that loses data sends `dynostat.dropped`, one count per reason,
/// and still none of the other `dynostat.*` counters.
#[test]
fn dynostat_dropped_is_sent_only_when_something_was_lost() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_STATS_ENABLE", "false")
        .env("DYNOSTAT_CONTEXT_LIMIT", "2")
        .env("DYNOSTAT_FLUSH_INTERVAL", "3600")
        .start();
    common::clear_of_flush_boundary(3600, Duration::from_secs(10));
    // Two contexts fit; three more are refused at the limit; two lines are malformed.
    s.send(b"a:1|c\nb:1|c\nc:1|c\nd:1|c\ne:1|c\nbad line\nworse:|c");
    common::wait_for_udp_queue_below(s.port, 1);
    std::thread::sleep(Duration::from_millis(200));
    s.stop_ok(T);
    assert_eq!(names(&intake), ["a", "b", "dynostat.dropped"]);
    assert_eq!(
        intake.total("dynostat.dropped", &["reason:context_limit"]),
        3.0
    );
    assert_eq!(
        intake.total("dynostat.dropped", &["reason:parse_error"]),
        2.0
    );
    assert_eq!(intake.total("dynostat.dropped", &[]), 5.0);
    // The log says it too, as before.
    assert!(
        s.stderr().contains("new contexts dropped"),
        "{}",
        s.stderr()
    );
}

/// The Agent's `DD_DOGSTATSD_STATS_ENABLE=true` sends the full set.
#[test]
fn stats_enable_sends_every_counter() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_STATS_ENABLE", "true")
        .start();
    s.send(b"app.hits:1|c");
    assert!(intake.wait_until(T, |i| i.total("dynostat.lines", &[]) >= 1.0));
    s.stop_ok(T);
    let own = names(&intake)
        .into_iter()
        .filter(|n| n.starts_with("dynostat."))
        .count();
    assert!(own >= 20, "{:?}", names(&intake));
    assert!(
        intake.series_named("dynostat.dropped").is_empty(),
        "nothing was lost"
    );
}

fn send_users(s: &Serve, from: u32, n: u32) {
    let mut buf = String::new();
    for i in from..from + n {
        let line = format!("app.requests:1|c|#env:prod,user_id:{i},region:eu\n");
        if buf.len() + line.len() > 8000 {
            s.send(buf.as_bytes());
            buf.clear();
        }
        buf.push_str(&line);
    }
    s.send(buf.as_bytes());
    common::wait_for_udp_queue_below(s.port, 1);
}

/// 2,000 contexts of one name, one tag key with 2,000 values: one log line
/// names the metric, its contexts and the tag, once, though the next
/// interval passes the threshold again. The console shows the same.
#[test]
fn a_name_past_the_cardinality_threshold_is_logged_once_with_its_widest_tag() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "2")
        .start();
    common::clear_of_flush_boundary(2, Duration::from_millis(1_500));
    send_users(&s, 0, 2_000);
    s.send(b"app.other:1|c|#user_id:1");
    assert!(
        s.wait_stderr(T, "cardinality threshold"),
        "stderr:\n{}",
        s.stderr()
    );
    // The next interval passes it again.
    common::clear_of_flush_boundary(2, Duration::from_millis(1_500));
    send_users(&s, 5_000, 1_500);
    let before = intake.total("app.requests", &[]);
    assert!(intake.wait_until(T, |i| i.total("app.requests", &[]) >= before + 1_500.0));
    s.stop_ok(T);
    let err = s.stderr();
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("cardinality threshold"))
        .collect();
    assert_eq!(lines.len(), 1, "once per name per hour:\n{err}");
    let line = lines[0];
    for want in [
        "metric=app.requests",
        "contexts=2000",
        "tag_key=user_id",
        "tag_values=2000",
    ] {
        assert!(line.contains(want), "{want} in {line}");
    }
    assert_eq!(intake.total("app.requests", &[]), 3_500.0);

    // The console, without a key.
    let mut c = Serve::builder().env("DYNOSTAT_CONSOLE", "true").start();
    common::clear_of_flush_boundary(1, Duration::from_millis(700));
    send_users(&c, 0, 2_000);
    assert!(
        c.wait_stdout(
            T,
            "app.requests has 2000 contexts in one interval, user_id: 2000 values"
        ),
        "stdout:\n{}",
        c.stdout()
    );
    c.stop_ok(T);
}

/// The official buildpack's settings that dynostat does not read, and its
/// `datadog/prerun.sh`, each get one warning at start saying what dynostat
/// does instead.
#[test]
fn official_buildpack_settings_each_get_a_warning() {
    let app = tempfile::tempdir().unwrap();
    std::fs::create_dir(app.path().join("datadog")).unwrap();
    std::fs::write(app.path().join("datadog/prerun.sh"), "export DD_TAGS=a:b\n").unwrap();
    let vars = [
        ("DD_ENABLE_DBM", "true", "Database Monitoring"),
        ("DD_PROCESS_AGENT", "true", "heroku.dyno.*"),
        ("DD_LOGS_ENABLED", "true", "log drain"),
        ("DD_AGENT_MAJOR_VERSION", "7", "one binary"),
        ("DD_PYTHON_VERSION", "3", "no Python checks"),
        // As the official buildpack's users set it: relative to the app.
        ("DD_HEROKU_CONF_FOLDER", "/datadog", "configuration files"),
    ];
    let mut b = Serve::builder().current_dir(app.path());
    for (k, v, _) in vars {
        b = b.env(k, v);
    }
    let mut s = b.start();
    s.stop_ok(T);
    let err = s.stderr();
    for (k, v, instead) in vars {
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(&format!("{k}={v}:")))
            .collect();
        assert_eq!(lines.len(), 1, "one warning for {k}:\n{err}");
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
        assert!(lines[0].contains(instead), "{}", lines[0]);
    }
    let prerun: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("prerun.sh is not run"))
        .collect();
    assert_eq!(prerun.len(), 1, "{err}");
    assert!(prerun[0].contains("datadog/prerun.sh") && prerun[0].contains("config vars"));
    // Unset, and without the script: not a word.
    let quiet = tempfile::tempdir().unwrap();
    let mut s = Serve::builder().current_dir(quiet.path()).start();
    s.stop_ok(T);
    let err = s.stderr();
    assert!(!err.contains("official Datadog buildpack"), "{err}");
}
