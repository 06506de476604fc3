//! The pipeline against an intake that misbehaves: the real binary, real
//! UDP, and a loopback intake (tests/common) that hangs, answers slowly,
//! resets, refuses large bodies and answers `Retry-After`; plus a loopback
//! proxy. Every wait is a poll with a deadline.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_tcp_port, Intake, Proxy, Reply, Serve};
use serde_json::Value;

/// Points of the accepted series named `metric`: `(timestamp, value × interval
/// for RATEs)`, in arrival order.
fn points(intake: &Intake, metric: &str) -> Vec<(i64, f64)> {
    intake.points_where(metric, &[], true)
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Sleeps until just after the next multiple of `secs` in wall-clock time.
fn until_boundary(secs: u128) {
    let ms = secs * 1000;
    let wait = ms - unix_ms() % ms + 100;
    std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap()));
}

#[test]
fn a_slow_intake_delays_only_its_own_payload_every_bucket_is_on_time_and_exact() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "2")
        .start();
    // 10 increments a second for 40 s, on an absolute schedule.
    let start = Instant::now();
    let mut sent = 0u32;
    let mut hung = false;
    while sent < 400 {
        let due = start + Duration::from_millis(100 * u64::from(sent));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        s.send(b"steady:1|c");
        sent += 1;
        if !hung && start.elapsed() > Duration::from_secs(5) {
            // The next request hangs 12 s, then is accepted.
            intake.reply_next(&[Reply::Hang(Duration::from_secs(12))]);
            hung = true;
        }
    }
    s.signal(libc::SIGTERM);
    let st = s.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(st.success(), "{}", s.stderr());
    assert!(intake.requests().len() > 10, "requests went through");

    let pts = points(&intake, "steady");
    let mut stamps: Vec<i64> = pts.iter().map(|p| p.0).collect();
    stamps.sort_unstable();
    let n = stamps.len();
    stamps.dedup();
    assert_eq!(stamps.len(), n, "a bucket went out twice: {pts:?}");
    assert!(
        stamps.windows(2).all(|w| w[1] - w[0] == 2),
        "a bucket is missing or merged: {stamps:?}"
    );
    let total: f64 = pts.iter().map(|p| p.1).sum();
    assert!(
        (total - 400.0).abs() < 1e-6,
        "delivered {total} for 400 sent: {pts:?}"
    );
    // Every whole bucket (not the first or last) within 10 % of 20 per 2 s.
    let (first, last) = (stamps[0], stamps[stamps.len() - 1]);
    for (ts, v) in &pts {
        if *ts != first && *ts != last {
            assert!((18.0..=22.0).contains(v), "bucket {ts} holds {v}: {pts:?}");
        }
    }
    assert!(
        !s.stderr().contains("could not run"),
        "the clock skipped: {}",
        s.stderr()
    );
}

#[test]
fn a_429_with_retry_after_is_waited_out_and_everything_arrives_once() {
    let intake = Intake::start();
    intake.reply_next(&[Reply::RetryAfter(429, "3".to_owned())]);
    let mut s = Serve::builder().intake(&intake).start();
    for _ in 0..5 {
        s.send(b"ra.count:1|c");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| {
            (i.total("ra.count", &[]) - 5.0).abs() < 1e-9
        }),
        "{:?}",
        points(&intake, "ra.count")
    );
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10)).expect("exits");
    let arrivals = intake.arrivals();
    let reqs = intake.requests();
    let t429 = reqs
        .iter()
        .find(|r| r.status == 429)
        .expect("a 429")
        .arrived;
    assert_eq!(t429, arrivals[0], "the first request got the 429");
    // The flush's other payload may have gone out beside it; after the 429
    // nothing goes until Retry-After has passed.
    let next = arrivals
        .iter()
        .find(|t| **t > t429 + Duration::from_millis(100))
        .expect("a retry");
    let waited = *next - t429;
    assert!(
        waited >= Duration::from_millis(2900),
        "retried after {waited:?}, before Retry-After: 3"
    );
    eprintln!("retried {waited:?} after a 429 with Retry-After: 3");
    assert!((intake.total("ra.count", &[]) - 5.0).abs() < 1e-9);
    let mut stamps: Vec<i64> = points(&intake, "ra.count").iter().map(|p| p.0).collect();
    let n = stamps.len();
    stamps.sort_unstable();
    stamps.dedup();
    assert_eq!(stamps.len(), n, "a payload arrived twice");
}

#[test]
fn a_413_above_50_kb_is_split_until_20000_contexts_all_arrive() {
    let intake = Intake::start();
    intake.too_large_above(50_000);
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "4")
        .start();
    until_boundary(4);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for d in 0..400 {
        let lines: Vec<String> = (0..50)
            .map(|j| {
                // A tag that does not compress away, so payloads pass 50 KB.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                format!("wide.count:1|c|#ctx:{},r:{rng:016x}", d * 50 + j)
            })
            .collect();
        s.send(lines.join("\n").as_bytes());
        if d % 20 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(
        intake.wait_until(Duration::from_secs(30), |i| {
            (i.total("wide.count", &[]) - 20_000.0).abs() < 1e-9
        }),
        "got {}",
        intake.total("wide.count", &[])
    );
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10)).expect("exits");
    let reqs = intake.requests();
    assert!(
        reqs.iter().any(|r| r.status == 413),
        "nothing was too large"
    );
    assert!(reqs
        .iter()
        .filter(|r| r.accepted())
        .all(|r| r.wire_len <= 50_000));
    let series = intake.series_named("wide.count");
    let mut ctx: Vec<String> = series.iter().map(|s| s["tags"].to_string()).collect();
    ctx.sort();
    ctx.dedup();
    assert_eq!(ctx.len(), 20_000, "every context once");
    assert!((intake.total("wide.count", &[]) - 20_000.0).abs() < 1e-9);
}

/// SIGTERM, then checks the exit time against grace + timeout + 1 s and the
/// one line saying what was lost. Returns the exit time.
fn sigterm_keeps_the_deadline(s: &mut Serve) -> Duration {
    let signalled = Instant::now();
    s.signal(libc::SIGTERM);
    let st = s.wait_exit(Duration::from_secs(15)).expect("exits");
    let took = signalled.elapsed();
    // DYNOSTAT_SHUTDOWN_GRACE=0.3 (the builder's) + DYNOSTAT_SHUTDOWN_TIMEOUT=2 + 1 s.
    assert!(took < Duration::from_millis(3300), "exit took {took:?}");
    assert!(st.success(), "{st:?}: {}", s.stderr());
    let err = s.stderr();
    let lost: Vec<&str> = err.lines().filter(|l| l.contains("are lost")).collect();
    assert_eq!(lost.len(), 1, "one line on what was lost:\n{err}");
    for field in ["payloads=", "points=", "bytes="] {
        assert!(lost[0].contains(field), "{}", lost[0]);
    }
    eprintln!("exit after {took:?}: {}", lost[0]);
    took
}

#[test]
fn sigterm_with_the_intake_down_exits_by_the_deadline_and_says_what_was_lost() {
    let mut s = Serve::builder()
        .env(
            "DD_DD_URL",
            &format!("http://127.0.0.1:{}", free_tcp_port()),
        )
        .env("DD_API_KEY", "test-key-0123456789abcdef")
        .env("DYNOSTAT_SHUTDOWN_TIMEOUT", "2")
        .start();
    s.send(b"lost.count:1|c");
    std::thread::sleep(Duration::from_millis(1500));
    sigterm_keeps_the_deadline(&mut s);
}

#[test]
fn sigterm_with_the_intake_hanging_mid_request_exits_by_the_deadline() {
    let intake = Intake::start();
    intake.reply_next(&vec![Reply::Hang(Duration::from_secs(60)); 50]);
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_SHUTDOWN_TIMEOUT", "2")
        .start();
    s.send(b"hung.count:1|c");
    assert!(common::wait(Duration::from_secs(10), || !intake
        .arrivals()
        .is_empty()));
    sigterm_keeps_the_deadline(&mut s);
}

#[test]
fn intake_down_60_s_points_delivered_plus_counted_as_dropped_equal_points_sent() {
    let port = free_tcp_port();
    let intake = Intake::start_on(port);
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_RETRY_QUEUE_BYTES", "20000")
        .start();
    assert!(intake.wait_until(Duration::from_secs(10), |i| !i.series().is_empty()));
    let before = intake.requests();
    drop(intake);
    // Unique gauge contexts: each is exactly one point in one bucket.
    let start = Instant::now();
    let mut sent = 0usize;
    let mut tick = 0u64;
    while start.elapsed() < Duration::from_secs(60) {
        let lines: Vec<String> = (0..20)
            .map(|j| format!("down.gauge:1|g|#n:{}", sent + j))
            .collect();
        s.send(lines.join("\n").as_bytes());
        sent += 20;
        tick += 1;
        let due = start + Duration::from_millis(100 * tick);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let intake = Intake::start_on(port);
    // Up to one backoff step (32 s) to notice, then the queue drains.
    assert!(
        intake.wait_until(Duration::from_secs(45), |i| {
            i.series_named("dynostat.forwarder.queue_bytes")
                .iter()
                .any(|q| q["points"][0]["value"] == 0.0)
                && !i.series_named("down.gauge").is_empty()
        }),
        "the queue never drained:\n{}",
        s.stderr()
    );
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10)).expect("exits");

    let mut all: Vec<Value> = Vec::new();
    for r in before.iter().chain(intake.requests().iter()) {
        if r.accepted() && r.path == "/api/v2/series" {
            all.extend(r.json()["series"].as_array().cloned().unwrap_or_default());
        }
    }
    let delivered: usize = all
        .iter()
        .map(|s| s["points"].as_array().unwrap().len())
        .sum();
    let dropped: f64 = all
        .iter()
        .filter(|s| s["metric"] == "dynostat.forwarder.points_dropped")
        .map(|s| s["points"][0]["value"].as_f64().unwrap() * s["interval"].as_f64().unwrap())
        .sum();
    // Points made: the app's, plus the self-telemetry of every flush. The
    // flushes are one per second from the first to the last, each with the
    // same telemetry series.
    let telemetry_at = |ts: i64| {
        all.iter()
            .filter(|s| {
                s["metric"].as_str().unwrap().starts_with("dynostat.")
                    && s["points"][0]["timestamp"] == ts
            })
            .count()
    };
    let stamps: Vec<i64> = all
        .iter()
        .filter(|s| s["metric"] == "dynostat.contexts")
        .map(|s| s["points"][0]["timestamp"].as_i64().unwrap())
        .collect();
    let (first, last) = (*stamps.iter().min().unwrap(), *stamps.iter().max().unwrap());
    let per_flush = telemetry_at(first);
    assert_eq!(
        per_flush,
        telemetry_at(last),
        "the telemetry per flush changed"
    );
    let flushes = usize::try_from(last - first + 1).unwrap();
    let made = sent + per_flush * flushes;
    let dropped = dropped.round() as usize;
    eprintln!(
        "sent {sent} app points + {per_flush} × {flushes} telemetry = {made}; delivered {delivered} + dropped {dropped} = {}",
        delivered + dropped
    );
    assert!(
        dropped > 0,
        "nothing was dropped: the queue bound did not bite"
    );
    assert_eq!(delivered + dropped, made);
}

/// A 20 s outage (the intake answers 503) under a flood of 2,000 new
/// counter contexts a second, 500 a second past the context limit, with a
/// 60 KB queue that soon evicts payloads, telemetry ones included; then the
/// intake comes back, the queue drains and `serve` stops. Returns the lines
/// sent, the kernel's dropped datagrams of 20 lines, and the process.
fn outage_under_a_context_flood(intake: &Intake, stats: bool) -> (u64, u64, Serve) {
    const PER_DATAGRAM: u64 = 20;
    intake.respond_always(503);
    let mut s = Serve::builder()
        .intake(intake)
        .env("DYNOSTAT_RETRY_QUEUE_BYTES", "60000")
        .env("DYNOSTAT_CONTEXT_LIMIT", "1500")
        .env(
            "DD_DOGSTATSD_STATS_ENABLE",
            if stats { "true" } else { "false" },
        )
        .start();
    let start = Instant::now();
    let mut lines = 0u64;
    let mut second = 0u64;
    while start.elapsed() < Duration::from_secs(20) {
        for d in 0..2_000 / PER_DATAGRAM {
            let datagram: Vec<String> = (0..PER_DATAGRAM)
                .map(|j| {
                    format!(
                        "flood.hits:1|c|#second:{second},user:{}",
                        d * PER_DATAGRAM + j
                    )
                })
                .collect();
            s.send(datagram.join("\n").as_bytes());
            lines += PER_DATAGRAM;
        }
        second += 1;
        let due = start + Duration::from_secs(second);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    common::wait_for_udp_queue_below(s.port, 1);
    let kernel_dropped = common::udp_socket_queue(s.port).map_or(0, |(_, drops)| drops);
    assert!(s.alive(), "stderr:\n{}", s.stderr());
    assert!(
        s.stderr().contains("send queue full"),
        "the queue did not overflow:\n{}",
        s.stderr()
    );
    intake.respond_normally();
    // Up to one backoff step (32 s) for the sender to notice; then a few
    // flushes, and the shutdown's drain delivers what is left, the last
    // telemetry included.
    assert!(
        intake.wait_until(Duration::from_secs(50), |i| i
            .requests()
            .iter()
            .any(common::Request::accepted)),
        "the intake was never reached again:\n{}",
        s.stderr()
    );
    std::thread::sleep(Duration::from_secs(3));
    s.stop_ok(Duration::from_secs(15));
    (lines, kernel_dropped * PER_DATAGRAM, s)
}

/// What the log counted as refused at the context limit, summed.
fn logged_context_drops(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.contains("new contexts dropped"))
        .filter_map(|l| {
            let n = l.split("dropped=").nth(1)?;
            n.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Issue 22 item 5: after an outage long enough for the retry queue to
/// evict telemetry payloads, under a context flood, the `dynostat.*` counts
/// that reach the intake still add up: every line sent is in
/// `dynostat.lines` unless the kernel dropped its datagram, and every line
/// counted is accepted or counted as dropped at the context limit. The
/// counts of an evicted telemetry payload travel on in a later one.
#[test]
fn telemetry_counts_survive_an_outage_that_overflows_the_queue() {
    let intake = Intake::start();
    let (lines, kernel_lost, s) = outage_under_a_context_flood(&intake, true);
    let counted = intake.total("dynostat.lines", &[]).round() as u64;
    let accepted = intake.total("dynostat.metrics", &[]).round() as u64;
    let refused = intake.total("dynostat.contexts.dropped", &[]).round() as u64;
    let evicted = intake
        .total("dynostat.forwarder.queue_dropped", &[])
        .round() as u64;
    eprintln!(
        "sent {lines} lines; the kernel dropped {kernel_lost}; delivered counts: \
         lines {counted}, accepted {accepted}, refused at the context limit {refused}; \
         payloads evicted {evicted}"
    );
    assert!(evicted > 0, "the queue evicted payloads");
    assert!(refused > 0, "the context limit refused lines");
    assert_eq!(
        counted + kernel_lost,
        lines,
        "every line sent is counted, unless the kernel dropped it"
    );
    assert_eq!(
        accepted + refused,
        counted,
        "every line counted is accounted for"
    );
    assert_eq!(
        refused,
        logged_context_drops(&s.stderr()),
        "the intake and the log agree"
    );
}

/// The same with the default (no `dynostat.*` but `dynostat.dropped`): what
/// the log counted as refused at the limit reaches the intake as
/// `dynostat.dropped{reason:context_limit}`, though the payloads that first
/// carried it were evicted; the loss of the evicted payloads themselves
/// arrives as `reason:send_failed`.
#[test]
fn dynostat_dropped_survives_an_outage_that_overflows_the_queue() {
    let intake = Intake::start();
    let (_, _, s) = outage_under_a_context_flood(&intake, false);
    let logged = logged_context_drops(&s.stderr());
    let delivered = intake
        .total("dynostat.dropped", &["reason:context_limit"])
        .round() as u64;
    let send_failed = intake.total("dynostat.dropped", &["reason:send_failed"]);
    eprintln!(
        "refused at the limit: logged {logged}, delivered {delivered}; send_failed {send_failed}"
    );
    assert!(logged > 0);
    assert_eq!(
        delivered, logged,
        "every refused line is counted at the intake"
    );
    assert!(send_failed > 0.0, "the evicted payloads are counted too");
    let own: Vec<String> = intake
        .series()
        .iter()
        .filter_map(|x| x["metric"].as_str().map(str::to_owned))
        .filter(|m| m.starts_with("dynostat.") && m != "dynostat.dropped")
        .collect();
    assert!(own.is_empty(), "{own:?}");
}

#[test]
fn an_http_proxy_carries_the_requests_with_its_credentials_never_logged() {
    let intake = Intake::start();
    let proxy = Proxy::start();
    let url = format!("http://dyno:s3cret-pw@{}", proxy.addr);
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_PROXY_HTTP", &url)
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("DD_LOG_LEVEL", "debug")
        .start();
    s.send(b"via.proxy:1|c");
    assert!(
        intake.wait_until(Duration::from_secs(10), |i| i.total("via.proxy", &[])
            == 1.0)
    );
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10)).expect("exits");
    let seen = proxy.seen();
    let line = format!("POST {}/api/v2/series HTTP/1.1", intake.url());
    assert!(seen.iter().any(|(l, _)| *l == line), "{seen:?}");
    // "dyno:s3cret-pw" in base64.
    assert!(seen
        .iter()
        .all(|(_, a)| a.as_deref() == Some("Basic ZHlubzpzM2NyZXQtcHc=")));
    assert!(!s.stderr().contains("s3cret"), "{}", s.stderr());
}

#[test]
fn no_proxy_bypasses_the_proxy() {
    let intake = Intake::start();
    let proxy = Proxy::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("HTTP_PROXY", &proxy.url())
        .env("NO_PROXY", "localhost,127.0.0.1")
        .start();
    s.send(b"direct:1|c");
    assert!(intake.wait_until(Duration::from_secs(10), |i| i.total("direct", &[]) == 1.0));
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
}

#[test]
fn an_https_intake_goes_through_the_https_proxy_with_connect() {
    // The loopback intake speaks plain HTTP, so the TLS handshake through
    // the tunnel fails; what this checks is that the proxy is asked to open
    // the tunnel to the intake, and DD_PROXY_HTTPS wins over HTTPS_PROXY.
    let intake = Intake::start();
    let proxy = Proxy::start();
    let mut s = Serve::builder()
        .env("DD_DD_URL", &format!("https://{}", intake.addr))
        .env("DD_API_KEY", "test-key-0123456789abcdef")
        .env("DD_PROXY_HTTPS", &proxy.url())
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .start();
    s.send(b"tunnel:1|c");
    let want = format!("CONNECT {} HTTP/1.1", intake.addr);
    assert!(
        common::wait(Duration::from_secs(10), || proxy
            .seen()
            .iter()
            .any(|(l, _)| *l == want)),
        "{:?}",
        proxy.seen()
    );
    assert!(intake.series().is_empty());
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10)).expect("exits");
}

#[test]
fn a_reset_connection_and_a_slow_answer_lose_nothing_and_duplicate_nothing() {
    let intake = Intake::start();
    intake.reply_next(&[Reply::Reset]);
    intake.set_delay(Duration::from_millis(700));
    let mut s = Serve::builder().intake(&intake).start();
    for _ in 0..6 {
        s.send(b"reset.count:1|c");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| {
            (i.total("reset.count", &[]) - 6.0).abs() < 1e-9
        }),
        "{:?}",
        points(&intake, "reset.count")
    );
    s.signal(libc::SIGTERM);
    s.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(
        intake.requests()[0].status,
        0,
        "the first request was reset"
    );
    assert!((intake.total("reset.count", &[]) - 6.0).abs() < 1e-9);
    assert!(s.stderr().contains("queued for retry"), "{}", s.stderr());
}
