//! `dynostat serve` end to end: the real binary, real UDP packets, and a real
//! HTTP server on 127.0.0.1 standing in for the Datadog intake.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{has_tags, Intake, Serve};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const KEY: &str = "test-key-0123456789abcdef";

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * b.abs().max(1.0)
}

/// The value of the one point of the one series named `metric`.
fn only_value(intake: &Intake, metric: &str) -> f64 {
    let found = intake.series_named(metric);
    assert_eq!(found.len(), 1, "one {metric} in {:#?}", intake.series());
    found[0]["points"][0]["value"].as_f64().unwrap()
}

#[test]
fn every_type_is_flushed_with_agent_values() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "2")
        .start();
    s.send(b"page.views:2|c|@0.5|#env:x\npage.views:1|c|#env:x\npage.views:2|c|#env:x\n");
    s.send(b"page.views:5|c|#env:x\npage.views:0|c|#env:x\npage.views:8|c|#env:x\npage.views:3|c|#env:x");
    s.send(b"temp:10|g\ntemp:21.5|g");
    s.send(b"users:alice|s\nusers:bob|s\nusers:alice|s");
    s.send(b"lat:1|h\nlat:10|h\nlat:4|h\nlat:5|h\nlat:2|h\nlat:2|h");
    s.send(b"db.query:250|ms");
    s.send(b"sizes:1:2:3|d");
    s.stop_ok(T);

    // Counter: (2/0.5 + 1+2+5+0+8+3) = 23, sent as RATE 23/interval.
    let views = intake.series_named("page.views");
    assert!(!views.is_empty(), "no page.views in {:#?}", intake.series());
    assert_eq!(views[0]["type"], 2, "counters are RATE");
    assert!(
        approx(intake.total("page.views", &["env:x"]), 23.0),
        "{views:#?}"
    );
    let gauge = intake.series_named("temp");
    assert_eq!(gauge.last().unwrap()["type"], 3);
    assert!(approx(
        gauge.last().unwrap()["points"][0]["value"]
            .as_f64()
            .unwrap(),
        21.5
    ));
    let set = intake.series_named("users");
    assert!(
        approx(set[0]["points"][0]["value"].as_f64().unwrap(), 2.0),
        "{set:#?}"
    );
    let value = |m: &str| {
        intake.series_named(m)[0]["points"][0]["value"]
            .as_f64()
            .unwrap()
    };
    assert!(approx(value("lat.max"), 10.0));
    assert!(approx(value("lat.median"), 2.0));
    assert!(approx(value("lat.avg"), 4.0));
    assert!(approx(value("lat.95percentile"), 10.0));
    assert!(approx(intake.total("lat.count", &[]), 6.0));
    assert!(approx(value("db.query.max"), 250.0));
    let sizes = intake.sketches_named("sizes");
    assert_eq!(sizes.len(), 1, "one sketch: {sizes:?}");
    let d = &sizes[0].dogsketches[0];
    assert_eq!((d.cnt, d.min, d.max, d.sum), (3, 1.0, 3.0, 6.0));
    assert_eq!(d.n, [1, 1, 1]);
    let values: Vec<f64> = d.k.iter().map(|&k| common::sketch_key_value(k)).collect();
    for (got, want) in values.iter().zip([1.0, 2.0, 3.0]) {
        assert!((got - want).abs() / want <= 1.0 / 128.0, "{values:?}");
    }
}

/// `.sum` and `.avg` are the newest Agent's compensated sum over the sorted
/// samples (datadog-agent#49913), not a running sum: cancellation keeps the
/// small values, and fractions sum as the sorted order does.
#[test]
fn histogram_sum_and_avg_are_compensated_like_the_agent() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "2")
        .env("DD_HISTOGRAM_AGGREGATES", "sum avg count")
        .start();
    s.send(b"cancel:1|h\ncancel:1e100|h\ncancel:1|h\ncancel:-1e100|h");
    s.send(b"frac:0.1|h\nfrac:0.2|h\nfrac:0.3|h");
    s.stop_ok(T);
    let value = |m: &str| only_value(&intake, m);
    // Exact equality: these are the Agent's bits, not approximations.
    assert_eq!(value("cancel.sum"), 2.0);
    assert_eq!(value("cancel.avg"), 0.5);
    // A running sum in arrival order gives 0.6000000000000001.
    assert_eq!(value("frac.sum"), 0.6);
    assert_eq!(value("frac.avg"), 0.6 / 3.0);
}

#[test]
fn a_large_set_counts_each_member_once_through_its_batches() {
    let intake = Intake::start();
    common::clear_of_flush_boundary(3600, Duration::from_secs(10));
    let mut s = Serve::builder()
        .intake(&intake)
        // One bucket: no flush boundary falls among the sends.
        .env("DYNOSTAT_FLUSH_INTERVAL", "3600")
        .start();
    // 3,001 members, each three times in a different order, then 15 new
    // ones: the table passes 64 slots early and then takes members in
    // batches of 16. `more` gets one new member past `users`, so the last
    // batch of at least one of them is part-filled with new members when
    // the flush comes, and the flush must merge it.
    let n = 3_001u64;
    let mut lines: Vec<String> = Vec::new();
    for set in ["users", "more"] {
        for pass in 0..3u64 {
            for i in 0..n {
                lines.push(format!("{set}:u{}|s", (i * (7 + pass * 4) + pass) % n));
            }
        }
        let extra = if set == "more" { 16 } else { 15 };
        lines.extend((0..extra).map(|i| format!("{set}:late{i}|s")));
    }
    lines.push("few:a|s\nfew:b|s\nfew:a|s".to_owned());
    for chunk in lines.chunks(40) {
        s.send(chunk.join("\n").as_bytes());
    }
    s.stop_ok(T);
    let value = |m: &str| only_value(&intake, m);
    assert_eq!(value("users"), 3_016.0);
    assert_eq!(value("more"), 3_017.0);
    assert_eq!(value("few"), 2.0);
}

#[test]
fn payloads_are_compressed_keyed_and_schema_shaped() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_TAGS", "team:core,tier:1")
        .env("DD_ENV", "prod")
        .env("DD_SERVICE", "shop")
        .env("DD_VERSION", "1.0")
        .env("DYNO", "web.1")
        .env("HEROKU_APP_NAME", "myapp")
        // One point per context: no zero-filled points from a later flush.
        .env("DD_DOGSTATSD_EXPIRY_SECONDS", "0")
        .start();
    s.send(b"hits:1|c|#b:2,a:1,b:2\nhits:1|c|#a:1,b:2,host:box7");
    assert!(
        intake.wait_until(T, |i| !i.series_named("hits").is_empty()),
        "stderr:\n{}",
        s.stderr()
    );
    s.stop_ok(T);

    for r in intake.requests() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("dd-api-key"), Some(KEY), "{}", r.path);
        assert!(
            matches!(r.encoding.as_deref(), Some("gzip" | "deflate" | "zstd")),
            "{} not compressed",
            r.path
        );
        assert!(
            r.wire_len < r.body.len() || r.body.len() < 200,
            "compression did not shrink {}",
            r.path
        );
    }
    let hits = intake.series_named("hits");
    let global = [
        "team:core",
        "tier:1",
        "env:prod",
        "dyno:web.1",
        "dynotype:web",
        "appname:myapp",
    ];
    for h in &hits {
        // The v2 schema: metric, type (int enum), points [{timestamp:int, value:num}], tags [str].
        assert!(h["type"].is_i64());
        assert!(h["points"][0]["timestamp"].is_i64());
        assert!(h["points"][0]["value"].is_number());
        assert!(has_tags(h, &global), "global tags missing: {h}");
        assert!(has_tags(h, &["a:1", "b:2"]));
        let tags = h["tags"].as_array().unwrap();
        assert_eq!(
            tags.iter().filter(|t| *t == "b:2").count(),
            1,
            "tags are deduplicated: {h}"
        );
        assert!(
            !tags
                .iter()
                .any(|t| t.as_str().unwrap().starts_with("host:")),
            "host: is not a tag: {h}"
        );
    }
    let with_host: Vec<&Value> = hits
        .iter()
        .filter(|h| h["resources"][0]["name"] == "box7")
        .collect();
    assert_eq!(with_host.len(), 1, "one context has host box7: {hits:#?}");
    assert_eq!(with_host[0]["resources"][0]["type"], "host");
    assert!(approx(intake.total("hits", &[]), 2.0));
    let telemetry = intake.series_named("dynostat.lines");
    assert!(!telemetry.is_empty(), "self-telemetry is sent");
    assert!(
        has_tags(&telemetry[0], &global),
        "self-telemetry carries the global tags"
    );
}

#[test]
fn intake_errors_500_three_times_then_every_metric_arrives_exactly_once() {
    let intake = Intake::start();
    intake.respond_next(&[500, 500, 500]);
    let mut s = Serve::builder().intake(&intake).start();
    for _ in 0..10 {
        s.send(b"orders:1|c|#shop:a");
    }
    assert!(
        intake.wait_until(T, |i| approx(i.total("orders", &["shop:a"]), 10.0)),
        "stderr:\n{}",
        s.stderr()
    );
    s.stop_ok(T);
    assert!(
        approx(intake.total("orders", &["shop:a"]), 10.0),
        "duplicates: {:#?}",
        intake.series_named("orders")
    );
    assert!(intake.requests().iter().filter(|r| r.status == 500).count() >= 3);
}

#[test]
fn intake_down_at_first_then_everything_is_delivered() {
    let port = common::free_tcp_port();
    let mut s = Serve::builder()
        .env("DD_DD_URL", &format!("http://127.0.0.1:{port}"))
        .env("DD_API_KEY", KEY)
        .env("DYNOSTAT_SHUTDOWN_TIMEOUT", "10")
        .start();
    for i in 0..5 {
        s.send(format!("jobs:{i}|g|#q:{i}\nwork:1|c").as_bytes());
    }
    // Let two flushes fail against the closed port.
    std::thread::sleep(Duration::from_millis(2500));
    let intake = Intake::start_on(port);
    assert!(
        intake.wait_until(Duration::from_secs(25), |i| approx(
            i.total("work", &[]),
            5.0
        )),
        "stderr:\n{}",
        s.stderr()
    );
    for i in 0..5 {
        let tag = format!("q:{i}");
        assert!(
            intake
                .series_named("jobs")
                .iter()
                .any(|j| has_tags(j, &[&tag])),
            "jobs {tag} lost"
        );
    }
    s.stop_ok(T);
}

#[test]
fn wrong_key_is_explained_never_printed_and_the_process_keeps_running() {
    let intake = Intake::start();
    intake.respond_always(403);
    let mut s = Serve::builder().intake(&intake).start();
    s.send(b"a:1|c");
    assert!(
        s.wait_stderr(T, "API key"),
        "no rejection message:\n{}",
        s.stderr()
    );
    s.send(b"a:1|c");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(s.alive(), "the process keeps running");
    s.stop_ok(T);
    let err = s.stderr();
    let out = s.stdout();
    assert!(
        !err.contains(KEY) && !out.contains(KEY),
        "the key leaked:\n{err}\n{out}"
    );
    assert!(
        err.contains("DD_API_KEY"),
        "the message says how to fix it:\n{err}"
    );
}

#[test]
fn sigterm_halfway_through_an_interval_delivers_everything_and_exits_zero() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "10")
        .env("DYNOSTAT_SHUTDOWN_GRACE", "1")
        .start();
    for i in 0..100 {
        s.send(format!("checkout:1|c|#n:{}\nlast:{i}|g", i % 5).as_bytes());
    }
    let started = std::time::Instant::now();
    s.signal(libc::SIGTERM);
    // The app's last sends, during the grace period.
    s.send(b"checkout:1|c|#n:0");
    let st = s
        .wait_exit(Duration::from_secs(29))
        .expect("exits before Heroku's SIGKILL");
    assert!(st.success(), "exit {st:?}, stderr:\n{}", s.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        approx(intake.total("checkout", &[]), 101.0),
        "{:#?}",
        intake.series_named("checkout")
    );
    assert!(approx(intake.total("checkout", &["n:0"]), 21.0));
    let last = intake.series_named("last");
    assert!(approx(
        last.last().unwrap()["points"][0]["value"].as_f64().unwrap(),
        99.0
    ));
}

#[test]
fn random_bytes_keep_the_process_alive_and_counting() {
    let intake = Intake::start();
    let mut s = Serve::builder().intake(&intake).start();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut bad_lines_sent = 0;
    for i in 0..3000 {
        let len = (next() % 1400) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 {
            // Near-miss DogStatsD: structure with garbage inside.
            buf = format!(
                "m{}:{}|{}|#{}",
                next() % 7,
                next() % 3,
                ["c", "x", "", "ms|@2x"][i % 4],
                next()
            )
            .into_bytes();
            bad_lines_sent += u64::from(i % 4 != 0);
        }
        s.send(&buf);
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    s.send(b"alive:1|c");
    assert!(
        intake.wait_until(T, |i| approx(i.total("alive", &[]), 1.0)),
        "stderr:\n{}",
        s.stderr()
    );
    assert!(s.alive());
    assert!(
        intake.wait_until(T, |i| i.total("dynostat.parse_errors", &[])
            >= bad_lines_sent as f64)
    );
    assert!(intake.total("dynostat.packets", &[]) >= 3000.0);
    let warnings = s.stderr().matches("malformed DogStatsD line").count();
    assert!(
        warnings <= 3,
        "bad lines are sampled, not logged per packet ({warnings} lines)"
    );
    s.stop_ok(T);
}

#[test]
fn a_real_cadence_client_is_understood() {
    use cadence::prelude::*;
    use cadence::{StatsdClient, UdpMetricSink};
    let intake = Intake::start();
    let mut s = Serve::builder().intake(&intake).start();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink = UdpMetricSink::from(("127.0.0.1", s.port), socket).unwrap();
    let client = StatsdClient::builder("shop", sink)
        .with_tag("region", "eu")
        .build();
    for _ in 0..3 {
        client
            .count_with_tags("orders", 2)
            .with_tag("kind", "web")
            .send();
    }
    client.gauge("queue", 7).unwrap();
    client.time("render", 12).unwrap();
    client.histogram("bytes", 100).unwrap();
    client.set("visitors", 42).unwrap();
    client.distribution("size", 3).unwrap();
    assert!(
        intake.wait_until(T, |i| approx(
            i.total("shop.orders", &["region:eu", "kind:web"]),
            6.0
        )),
        "stderr:\n{}",
        s.stderr()
    );
    s.stop_ok(T);
    for m in [
        "shop.queue",
        "shop.render.max",
        "shop.bytes.avg",
        "shop.visitors",
    ] {
        assert!(!intake.series_named(m).is_empty(), "{m} missing");
    }
}

#[test]
fn without_a_key_flushes_print_to_the_console() {
    let mut s = Serve::builder().start();
    // Idle flushes (self-telemetry only) print nothing.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(s.stdout(), "", "an idle listener is quiet");
    s.send(b"console.test:3|c|#a:b\nconsole.gauge:5|g");
    assert!(
        s.wait_stdout(T, "console.test"),
        "stdout:\n{}\nstderr:\n{}",
        s.stdout(),
        s.stderr()
    );
    assert!(s.wait_stdout(T, "console.gauge"));
    s.signal(libc::SIGINT);
    assert!(s.wait_exit(T).is_some_and(|st| st.success()));
}

#[test]
fn invalid_config_is_one_line_naming_the_variable_exit_2() {
    for (var, value) in [
        ("DD_DOGSTATSD_PORT", "abc"),
        ("DD_HISTOGRAM_PERCENTILES", "2"),
        ("DYNOSTAT_FLUSH_INTERVAL", "0"),
    ] {
        let out = std::process::Command::new(common::bin())
            .arg("serve")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(var), "{err}");
    }
}

#[test]
fn port_taken_is_a_clear_error() {
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let out = std::process::Command::new(common::bin())
        .arg("serve")
        .env("DD_DOGSTATSD_PORT", port.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already in use") && err.contains("DD_DOGSTATSD_PORT"),
        "{err}"
    );
}

#[test]
fn unix_socket_is_read_as_well() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dsd.socket");
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_SOCKET", path.to_str().unwrap())
        .start();
    let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
    client.send_to(b"via.unix:4|c", &path).unwrap();
    assert!(
        intake.wait_until(T, |i| approx(i.total("via.unix", &[]), 4.0)),
        "stderr:\n{}",
        s.stderr()
    );
    s.stop_ok(T);
    assert!(!path.exists(), "the socket file is removed on exit");
}

#[test]
fn events_service_checks_and_timestamped_metrics() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_ENV", "test")
        .start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    s.send(b"_e{6,12}:Deploy|line1\\nline2|t:warning|#v:2");
    s.send(b"_sc|db.up|2|#shard:1|m:replica lag");
    s.send(format!("old.gauge:7|g|T{}\nold.gauge:8|g|T{}", now - 60, now - 120).as_bytes());
    s.stop_ok(T);
    let reqs = intake.requests();
    let events = intake.events();
    assert_eq!(events.len(), 1, "event forwarded once: {events:?}");
    let event = &events[0];
    assert_eq!(event["msg_title"], "Deploy");
    assert_eq!(event["msg_text"], "line1\nline2");
    assert_eq!(event["alert_type"], "warning");
    assert!(has_tags(event, &["v:2", "env:test"]), "{event}");
    let checks = reqs
        .iter()
        .find(|r| r.path == "/api/v1/check_run")
        .expect("check forwarded")
        .json();
    let check = &checks[0];
    assert_eq!(check["check"], "db.up");
    assert_eq!(check["status"], 2);
    assert_eq!(check["message"], "replica lag");
    let old = intake.series_named("old.gauge");
    let mut stamps: Vec<i64> = old
        .iter()
        .flat_map(|o| {
            o["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["timestamp"].as_i64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    stamps.sort_unstable();
    let now = i64::try_from(now).unwrap();
    assert_eq!(
        stamps,
        vec![now - 120, now - 60],
        "timestamped points go out as received: {old:#?}"
    );
}

/// Heroku sends SIGTERM to every process, possibly more than once, and the
/// agent passes its own on as well: a second SIGTERM must not cost the flush.
#[test]
fn repeated_sigterm_still_flushes() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "10")
        .start();
    s.send(b"twice:5|c");
    s.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(50));
    s.signal(libc::SIGTERM);
    let st = s.wait_exit(T).expect("exits");
    assert!(st.success(), "{st:?}\n{}", s.stderr());
    assert!(approx(intake.total("twice", &[]), 5.0));
}

/// The listener checks UTF-8 once per datagram; a datagram with one invalid
/// line must still count its other lines.
#[test]
fn invalid_utf8_drops_only_its_own_line() {
    let intake = Intake::start();
    let mut s = Serve::builder().intake(&intake).start();
    s.send(b"good:1|c\n\xff\xfe:1|c\ngood:2|c|#t:\xc3\xa9");
    s.stop_ok(T);
    assert!(
        approx(intake.total("good", &[]), 3.0),
        "{:#?}",
        intake.series_named("good")
    );
    assert!(approx(intake.total("good", &["t:\u{e9}"]), 2.0));
    assert!(intake.total("dynostat.parse_errors", &[]) >= 1.0);
}
