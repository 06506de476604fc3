//! The trace relay end to end: the real binary, HTTP on 127.0.0.1, and the
//! stand-in intake decoding what arrives (`AgentPayload` protobuf with the
//! relay's own prost types, stats msgpack). Payloads here are written by
//! hand; `tests/tracers.rs` drives real Python and Node tracers.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{wait, Intake, Serve, ServeBuilder};
use libdd_trace_protobuf::pb;

/// A `serve` whose `dynostat.*` counters reach the intake: the tests read
/// the `dynostat.traces.*` drop counts there (self-telemetry is opt-in once
/// `DD_DOGSTATSD_STATS_ENABLE` is, issue 22).
fn relay() -> ServeBuilder {
    Serve::builder().env("DD_DOGSTATSD_STATS_ENABLE", "true")
}

/// One HTTP/1.1 request on a fresh connection; (status, body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the relay");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_answer(&mut s)
}

fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
    (status, body)
}

fn span(
    trace_id: u64,
    span_id: u64,
    parent: u64,
    service: &str,
    name: &str,
    resource: &str,
) -> pb::Span {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    pb::Span {
        service: service.to_owned(),
        name: name.to_owned(),
        resource: resource.to_owned(),
        trace_id,
        span_id,
        parent_id: parent,
        start: i64::try_from(now.as_nanos()).unwrap() - 5_000_000,
        duration: 3_000_000,
        r#type: "web".to_owned(),
        ..Default::default()
    }
}

/// A web trace with a SQL child; `priority` on the root.
fn web_trace(trace_id: u64, priority: Option<f64>, error: bool) -> Vec<pb::Span> {
    let mut root = span(trace_id, 1, 0, "shop", "web.request", "GET /items");
    root.error = i32::from(error);
    root.meta
        .insert("http.url".to_owned(), "http://shop/items?id=7".to_owned());
    if let Some(p) = priority {
        root.metrics.insert("_sampling_priority_v1".to_owned(), p);
    }
    let mut db = span(trace_id, 2, 1, "shop-db", "postgres.query", "");
    db.r#type = "sql".to_owned();
    db.resource = format!("SELECT * FROM items WHERE id = {trace_id} AND name = 'secret'");
    vec![root, db]
}

fn v04(traces: &[Vec<pb::Span>]) -> Vec<u8> {
    rmp_serde::to_vec_named(traces).unwrap()
}

fn put_traces(port: u16, traces: &[Vec<pb::Span>]) -> (u16, String) {
    let count = traces.len().to_string();
    request(
        port,
        "PUT",
        "/v0.4/traces",
        &[
            ("Content-Type", "application/msgpack"),
            ("X-Datadog-Trace-Count", &count),
            ("Datadog-Meta-Lang", "test"),
        ],
        &v04(traces),
    )
}

fn total(intake: &Intake, metric: &str) -> f64 {
    intake.total(metric, &[])
}

#[test]
fn endpoints_answer_as_the_trace_agent() {
    let intake = Intake::start();
    let s = relay().intake(&intake).start();
    let (status, info) = request(s.apm_port, "GET", "/info", &[], b"");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let endpoints: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(endpoints.contains(&"/v0.4/traces") && endpoints.contains(&"/v0.6/stats"));
    assert!(
        !endpoints.iter().any(|e| e.contains("config")),
        "{endpoints:?}"
    );
    for path in ["/v0.7/config", "/v0.1/pipeline_stats", "/nothing"] {
        assert_eq!(
            request(s.apm_port, "POST", path, &[], b"{}").0,
            404,
            "{path}"
        );
    }
    assert_eq!(request(s.apm_port, "GET", "/v0.4/traces", &[], b"").0, 405);
    let (status, body) = request(s.apm_port, "PUT", "/v0.4/traces", &[], &[0x90]);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rate_by_service"]["service:,env:"], 1);
    assert_eq!(
        request(s.apm_port, "POST", "/v0.5/traces", &[], &[0x92, 0x90, 0x90]).0,
        200
    );
    let (status, body) = request(s.apm_port, "PUT", "/v0.3/traces", &[], &[0x90]);
    assert_eq!((status, body.as_str()), (200, "OK\n"));
}

#[test]
fn kept_dropped_and_counted_as_the_agent_samples_and_the_last_traces_arrive_on_sigterm() {
    let intake = Intake::start();
    let mut s = relay()
        .intake(&intake)
        .env("DD_ENV", "staging")
        .env("DYNOSTAT_FLUSH_INTERVAL", "30")
        .start();
    let mut traces = Vec::new();
    for id in 1..=4 {
        traces.push(web_trace(id, Some(1.0), false)); // kept
    }
    traces.push(web_trace(5, Some(2.0), true)); // kept
    for id in 6..=8 {
        traces.push(web_trace(id, Some(-1.0), false)); // manual.drop
    }
    traces.push(web_trace(9, Some(0.0), false)); // auto reject
    traces.push(web_trace(10, Some(0.0), true)); // error sampler keeps it
    let (status, body) = put_traces(s.apm_port, &traces);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("service:shop,env:staging"), "{body}");
    // SIGTERM at once: nothing was sent yet (2 s trace flush, 10 s stats
    // buckets); the relay's last flush must deliver it all.
    s.stop_ok(Duration::from_secs(10));

    let chunks = intake.trace_chunks();
    let mut ids: Vec<u64> = chunks.iter().map(|c| c.spans[0].trace_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4, 5, 10], "each kept trace exactly once");
    for c in &chunks {
        let db = c.spans.iter().find(|s| s.r#type == "sql").unwrap();
        assert_eq!(db.resource, "SELECT * FROM items WHERE id = ? AND name = ?");
        assert!(
            !db.meta.values().any(|v| v.contains("secret")),
            "{:?}",
            db.meta
        );
        let root = c.spans.iter().find(|s| s.parent_id == 0).unwrap();
        assert_eq!(root.meta.get("env").map(String::as_str), Some("staging"));
        assert_eq!(root.metrics.get("_top_level"), Some(&1.0));
        assert_eq!(db.metrics.get("_top_level"), Some(&1.0), "another service");
    }
    let payloads = intake.agent_payloads();
    assert_eq!(payloads[0].env, "staging");
    assert_eq!(payloads[0].host_name, "", "hostless by default");
    assert_eq!(payloads[0].tracer_payloads[0].env, "staging");
    assert_eq!(payloads[0].tracer_payloads[0].language_name, "test");
    let key = intake.requests()[0].header("dd-api-key").map(str::to_owned);
    assert_eq!(key.as_deref(), Some("test-key-0123456789abcdef"));

    // Stats count every trace, the dropped ones too.
    assert_eq!(intake.stats_hits("shop", "web.request"), (10, 2, 10));
    assert_eq!(intake.stats_hits("shop-db", "postgres.query").0, 10);
    let stats = intake.trace_stats();
    assert_eq!(stats[0].stats[0].env, "staging");
    assert!(!stats[0].client_computed);

    // Every drop counted by reason.
    assert_eq!(total(&intake, "dynostat.traces.received"), 10.0);
    assert_eq!(total(&intake, "dynostat.traces.kept"), 6.0);
    assert_eq!(total(&intake, "dynostat.traces.dropped.user_reject"), 3.0);
    assert_eq!(total(&intake, "dynostat.traces.dropped.auto_reject"), 1.0);
}

#[test]
fn malformed_payloads_get_400_and_the_relay_lives() {
    let intake = Intake::start();
    let mut s = relay().intake(&intake).start();
    let mut deep = vec![0x91, 0x91, 0x81, 0xa1, b'x'];
    deep.extend(std::iter::repeat_n(0x91u8, 200_000));
    deep.push(0x01);
    let zero = v04(&[vec![span(0, 1, 0, "a", "b", "c")]]);
    let good = v04(&[web_trace(77, Some(1.0), false)]);
    let cases: [(&str, &[u8]); 6] = [
        ("truncated", &good[..good.len() - 5]),
        ("4 G traces", &[0xdd, 0xff, 0xff, 0xff, 0xff]),
        ("4 G spans", &[0x91, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x80]),
        ("deep", &deep),
        ("zero ids", &zero),
        ("json", b"{\"traces\": []}"),
    ];
    for (what, body) in cases {
        let (status, answer) = request(s.apm_port, "PUT", "/v0.4/traces", &[], body);
        assert_eq!(status, 400, "{what}: {answer}");
    }
    let (status, _) = request(
        s.apm_port,
        "POST",
        "/v0.5/traces",
        &[],
        &[0x92, 0xdd, 0xff, 0xff, 0xff, 0xff],
    );
    assert_eq!(status, 400, "v0.5 dictionary of 4 G strings");
    assert!(s.alive());
    assert_eq!(
        put_traces(s.apm_port, &[web_trace(77, Some(1.0), false)]).0,
        200
    );
    s.stop_ok(Duration::from_secs(10));
    assert_eq!(intake.trace_chunks().len(), 1);
    assert_eq!(total(&intake, "dynostat.traces.payload_errors"), 7.0);
}

#[test]
fn a_body_over_the_limit_is_refused_before_it_is_read_and_the_ceiling_answers_429() {
    let intake = Intake::start();
    // 4 MiB in all: the relay's share is 512 KiB.
    let s = relay()
        .intake(&intake)
        .env("DYNOSTAT_MEMORY_LIMIT", "4MiB")
        .start();
    // Headers only, 10 MB announced: the answer comes without the body.
    let mut c = TcpStream::connect(("127.0.0.1", s.apm_port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"PUT /v0.4/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nX-Datadog-Trace-Count: 9\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut c).0, 413);

    // One request holds 400 KB of the share while its body trickles in...
    let mut holder = TcpStream::connect(("127.0.0.1", s.apm_port)).unwrap();
    holder
        .write_all(b"PUT /v0.4/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n\x91")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // ...so 200 KB more is past the ceiling: 429 for a tracer that wants
    // real statuses, 200 (and a counted drop) for the others.
    let body = vec![0x90u8; 200_000];
    let (status, _) = request(
        s.apm_port,
        "PUT",
        "/v0.4/traces",
        &[
            ("Datadog-Send-Real-Http-Status", "1"),
            ("X-Datadog-Trace-Count", "3"),
        ],
        &body,
    );
    assert_eq!(status, 429);
    let (status, answer) = request(
        s.apm_port,
        "PUT",
        "/v0.4/traces",
        &[("X-Datadog-Trace-Count", "4")],
        &body,
    );
    assert_eq!(status, 200);
    assert!(answer.contains("rate_by_service"), "{answer}");
    drop(holder);
    assert!(
        wait(Duration::from_secs(10), || {
            total(&intake, "dynostat.traces.dropped.memory") >= 16.0
        }),
        "9 + 3 + 4 traces counted as dropped at the memory ceiling"
    );
}

#[test]
fn an_intake_outage_loses_nothing_that_fits_the_queue() {
    let intake = Intake::start();
    intake.respond_always(503);
    let mut s = relay().intake(&intake).start();
    for batch in 0..5u64 {
        let traces: Vec<Vec<pb::Span>> = (0..20u64)
            .map(|i| web_trace(1000 + batch * 20 + i, Some(1.0), false))
            .collect();
        assert_eq!(put_traces(s.apm_port, &traces).0, 200);
        std::thread::sleep(Duration::from_millis(700));
    }
    // The intake refused something (metrics or traces: one probe at a time
    // while it fails) before it came back.
    assert!(intake.requests().iter().any(|r| r.status == 503));
    intake.respond_normally();
    assert!(
        wait(Duration::from_secs(40), || intake.trace_chunks().len()
            >= 100),
        "got {} of 100 traces",
        intake.trace_chunks().len()
    );
    s.stop_ok(Duration::from_secs(10));
    let mut ids: Vec<u64> = intake
        .trace_chunks()
        .iter()
        .map(|c| c.spans[0].trace_id)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1000..1100).collect::<Vec<u64>>(), "each exactly once");
}

#[test]
fn proxies_add_the_key_and_dogstatsd_proxy_feeds_the_aggregator() {
    let intake = Intake::start();
    let mut s = relay()
        .intake(&intake)
        .env("DD_EVP_PROXY_CONFIG_DD_URL", &intake.url())
        .start();
    let (status, _) = request(
        s.apm_port,
        "POST",
        "/telemetry/proxy/api/v2/apmtelemetry",
        &[
            ("Content-Type", "application/json"),
            ("DD-Telemetry-Request-Type", "app-started"),
            ("Cookie", "x"),
        ],
        b"{\"request_type\":\"app-started\"}",
    );
    assert_eq!(status, 202, "the intake's answer, passed back");
    let (status, _) = request(
        s.apm_port,
        "POST",
        "/dogstatsd/v2/proxy",
        &[],
        b"proxied.count:3|c|#via:apm\n",
    );
    assert_eq!(status, 200);
    let (status, _) = request(s.apm_port, "POST", "/evp_proxy/v2/api/v2/foo", &[], b"{}");
    assert_eq!(status, 400, "no subdomain header");
    let (status, _) = request(
        s.apm_port,
        "POST",
        "/evp_proxy/v4/api/v2/citestcycle?x=1",
        &[
            ("X-Datadog-EVP-Subdomain", "citestcycle-intake"),
            ("Content-Type", "application/msgpack"),
        ],
        b"\x80",
    );
    assert_eq!(status, 202);
    let (status, _) = request(
        s.apm_port,
        "POST",
        "/profiling/v1/input",
        &[("Content-Type", "multipart/form-data; boundary=b")],
        b"--b--\r\n",
    );
    assert_eq!(status, 202);
    s.stop_ok(Duration::from_secs(10));
    let evp = intake
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/api/v2/citestcycle"))
        .expect("evp proxied");
    assert_eq!(
        evp.path, "/api/v2/citestcycle",
        "the subdomain's path (the intake drops queries)"
    );
    assert_eq!(evp.header("dd-api-key"), Some("test-key-0123456789abcdef"));
    let profile = intake
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v2/profile")
        .expect("profile proxied");
    assert_eq!(
        profile.header("dd-api-key"),
        Some("test-key-0123456789abcdef")
    );
    assert_eq!(
        profile.header("content-type"),
        Some("multipart/form-data; boundary=b")
    );
    let t = intake
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v2/apmtelemetry")
        .expect("telemetry proxied");
    assert_eq!(t.header("dd-api-key"), Some("test-key-0123456789abcdef"));
    assert_eq!(t.header("dd-telemetry-request-type"), Some("app-started"));
    assert_eq!(t.header("cookie"), None);
    assert!((intake.total("proxied.count", &["via:apm"]) - 3.0).abs() < 1e-9);
}

#[test]
fn without_a_key_the_console_prints_a_trace_summary() {
    let mut s = relay().env("DYNOSTAT_CONSOLE", "true").start();
    let traces: Vec<Vec<pb::Span>> = (1..=6).map(|i| web_trace(i, Some(1.0), i == 6)).collect();
    assert_eq!(put_traces(s.apm_port, &traces).0, 200);
    s.stop_ok(Duration::from_secs(10));
    let out = s.stdout();
    let row = out
        .lines()
        .find(|l| l.starts_with("shop ") && l.contains("GET /items"))
        .unwrap_or_else(|| panic!("no summary row in:\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[cells.len() - 4..cells.len() - 2],
        ["6", "1"],
        "{row}"
    );
    assert!(out.contains("TRACES"), "{out}");
}

#[test]
fn apm_disabled_listens_on_nothing() {
    let mut s = relay().env("DD_APM_ENABLED", "false").start();
    assert!(TcpStream::connect(("127.0.0.1", s.apm_port)).is_err());
    s.stop_ok(Duration::from_secs(10));
}

#[test]
fn v05_payloads_are_decoded_with_their_dictionary() {
    let intake = Intake::start();
    let mut s = relay().intake(&intake).start();
    // [dict, [[span]]]: service "svc", name "op", resource "res", meta {env: qa}
    let mut b = vec![0x92, 0x96];
    for w in ["", "svc", "op", "res", "env", "qa"] {
        b.push(0xa0 | u8::try_from(w.len()).unwrap());
        b.extend_from_slice(w.as_bytes());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    b.extend_from_slice(&[0x91, 0x91, 0x9c, 1, 2, 3, 0x2a, 0x07, 0x00, 0xcf]);
    b.extend_from_slice(&u64::try_from(now).unwrap().to_be_bytes());
    b.extend_from_slice(&[0xce, 0, 1, 0, 0, 0x00, 0x81, 4, 5, 0x80, 0]);
    let (status, body) = request(s.apm_port, "PUT", "/v0.5/traces", &[], &b);
    assert_eq!(status, 200, "{body}");
    s.stop_ok(Duration::from_secs(10));
    let chunks = intake.trace_chunks();
    assert_eq!(
        chunks.len(),
        1,
        "no priority: the score sampler keeps the first"
    );
    let sp = &chunks[0].spans[0];
    assert_eq!(
        (sp.service.as_str(), sp.name.as_str(), sp.resource.as_str()),
        ("svc", "op", "res")
    );
    assert_eq!(sp.meta.get("env").map(String::as_str), Some("qa"));
}

#[test]
fn tracer_computed_stats_are_forwarded_and_bad_ones_refused() {
    let intake = Intake::start();
    let mut s = relay().intake(&intake).env("DD_ENV", "prod").start();
    let client = pb::ClientStatsPayload {
        lang: "python".to_owned(),
        stats: vec![pb::ClientStatsBucket {
            start: 1_700_000_000_000_000_000,
            duration: 10_000_000_000,
            stats: vec![pb::ClientGroupedStats {
                service: "shop".to_owned(),
                name: "web.request".to_owned(),
                resource: "GET /".to_owned(),
                hits: 7,
                errors: 1,
                top_level_hits: 7,
                ..Default::default()
            }],
            agent_time_shift: 0,
        }],
        ..Default::default()
    };
    let body = rmp_serde::to_vec_named(&client).unwrap();
    assert_eq!(
        request(s.apm_port, "POST", "/v0.6/stats", &[], &body).0,
        200
    );
    assert_eq!(
        request(s.apm_port, "POST", "/v0.6/stats", &[], b"\xc1garbage").0,
        400
    );
    s.stop_ok(Duration::from_secs(10));
    let stats = intake.trace_stats();
    assert_eq!(stats.len(), 1);
    assert!(stats[0].client_computed);
    assert_eq!(stats[0].stats[0].env, "prod", "filled from DD_ENV");
    assert_eq!(intake.stats_hits("shop", "web.request"), (7, 1, 7));
    assert_eq!(total(&intake, "dynostat.traces.stats_errors"), 1.0);
}

#[test]
fn dyno_tags_and_the_host_are_those_of_the_metrics() {
    let intake = Intake::start();
    let mut s = relay()
        .intake(&intake)
        .env("DYNO", "web.1")
        .env("HEROKU_APP_NAME", "shop-app")
        .env("DD_TAGS", "team:checkout,region:eu")
        .env("DD_DYNO_HOST", "true")
        .start();
    let mut trace = web_trace(5, Some(1.0), false);
    trace[0]
        .meta
        .insert("team".to_owned(), "tracer-wins".to_owned());
    assert_eq!(put_traces(s.apm_port, &[trace]).0, 200);
    s.stop_ok(Duration::from_secs(10));
    let payloads = intake.agent_payloads();
    assert_eq!(payloads[0].host_name, "shop-app.web.1");
    let root = &payloads[0].tracer_payloads[0].chunks[0].spans[0];
    for (k, v) in [
        ("dyno", "web.1"),
        ("dynotype", "web"),
        ("appname", "shop-app"),
        ("region", "eu"),
        ("team", "tracer-wins"),
    ] {
        assert_eq!(root.meta.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(intake.trace_stats()[0].agent_hostname, "shop-app.web.1");
}

#[test]
fn client_computed_stats_and_top_level_are_left_to_the_tracer() {
    let intake = Intake::start();
    let mut s = relay().intake(&intake).start();
    let traces: Vec<Vec<pb::Span>> = (1..=3).map(|i| web_trace(i, Some(1.0), false)).collect();
    let (status, _) = request(
        s.apm_port,
        "PUT",
        "/v0.4/traces",
        &[
            ("Datadog-Client-Computed-Stats", "yes"),
            ("Datadog-Client-Computed-Top-Level", "yes"),
        ],
        &v04(&traces),
    );
    assert_eq!(status, 200);
    s.stop_ok(Duration::from_secs(10));
    assert_eq!(intake.trace_chunks().len(), 3, "kept and sent");
    assert!(intake.trace_stats().is_empty(), "no stats of ours");
    for c in intake.trace_chunks() {
        assert!(c
            .spans
            .iter()
            .all(|s| !s.metrics.contains_key("_top_level")));
    }
}

#[test]
fn the_unix_socket_answers_as_the_port_does() {
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apm.socket");
    let intake = Intake::start();
    let mut s = relay()
        .intake(&intake)
        .env("DD_APM_RECEIVER_SOCKET", path.to_str().unwrap())
        .start();
    let body = v04(&[web_trace(9, Some(1.0), false)]);
    let mut c = UnixStream::connect(&path).expect("the socket listens");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        format!(
            "PUT /v0.4/traces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&body).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("rate_by_service"), "{out}");
    s.stop_ok(Duration::from_secs(10));
    assert_eq!(intake.trace_chunks().len(), 1);
    assert!(!path.exists(), "the socket file is removed at exit");
}

#[test]
fn a_failing_proxy_answers_502_and_never_logs_the_key() {
    let dead = common::free_tcp_port();
    let mut s = relay()
        .env("DD_API_KEY", "secret-key-0123456789abcdef")
        .env("DD_DD_URL", &format!("http://127.0.0.1:{dead}"))
        .env("DD_APM_DD_URL", &format!("http://127.0.0.1:{dead}"))
        .env(
            "DD_APM_TELEMETRY_DD_URL",
            &format!("http://secret-key-0123456789abcdef@127.0.0.1:{dead}"),
        )
        .env("DD_LOG_LEVEL", "debug")
        .start();
    let (status, body) = request(
        s.apm_port,
        "POST",
        "/telemetry/proxy/api/v2/apmtelemetry",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains("secret-key"), "{body}");
    assert_eq!(
        put_traces(s.apm_port, &[web_trace(3, Some(1.0), false)]).0,
        200
    );
    s.stop_ok(Duration::from_secs(15));
    assert!(
        !s.stderr().contains("secret-key-0123456789abcdef"),
        "{}",
        s.stderr()
    );
}

/// By default (no `DD_DOGSTATSD_STATS_ENABLE`) the relay's losses reach the
/// intake as `dynostat.dropped`, tagged with their reason, and nothing else
/// of `dynostat.*` does; a trace the sampler drops is not a loss.
#[test]
fn by_default_trace_losses_are_dynostat_dropped_and_sampling_is_not() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_STATS_ENABLE", "false")
        .start();
    let (status, _) = request(s.apm_port, "PUT", "/v0.4/traces", &[], &[0xdd, 0xff]);
    assert_eq!(status, 400);
    let dropped = web_trace(5, Some(-1.0), false);
    assert_eq!(put_traces(s.apm_port, &[dropped]).0, 200);
    assert_eq!(
        put_traces(s.apm_port, &[web_trace(6, Some(1.0), false)]).0,
        200
    );
    s.stop_ok(Duration::from_secs(10));
    assert_eq!(intake.trace_chunks().len(), 1);
    assert_eq!(
        intake.total("dynostat.dropped", &["reason:trace_payload_error"]),
        1.0
    );
    assert_eq!(intake.total("dynostat.dropped", &[]), 1.0);
    let own: Vec<String> = intake
        .series()
        .iter()
        .filter_map(|s| s["metric"].as_str())
        .filter(|m| m.starts_with("dynostat."))
        .map(str::to_owned)
        .collect();
    assert!(
        own.iter().all(|m| m == "dynostat.dropped"),
        "only dynostat.dropped by default: {own:?}"
    );
}

/// An intake that answers every request with its own headers in the body,
/// as an error page quoting the request might.
fn echoing_intake() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = format!("bad request: {}", String::from_utf8_lossy(&buf));
            let _ = write!(
                c,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_proxy_answer_that_quotes_the_key_is_passed_back_without_it() {
    let port = echoing_intake();
    let mut s = relay()
        .env("DD_API_KEY", "secret-key-0123456789abcdef")
        .env(
            "DD_APM_TELEMETRY_DD_URL",
            &format!("http://127.0.0.1:{port}"),
        )
        .start();
    let (status, body) = request(
        s.apm_port,
        "POST",
        "/telemetry/proxy/api/v2/apmtelemetry",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("bad request"),
        "the answer is passed back: {body}"
    );
    assert!(!body.contains("secret-key-0123456789abcdef"), "{body}");
    s.stop_ok(Duration::from_secs(15));
}

/// An intake that reads each request and answers 202 after `delay`.
fn slow_intake(delay: Duration) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut chunk = [0u8; 65536];
                while matches!(c.read(&mut chunk), Ok(n) if n > 0) {}
                std::thread::sleep(delay);
                let _ = c.write_all(
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
    port
}

#[test]
fn a_proxied_body_waiting_on_the_intake_is_charged_to_the_relays_share() {
    let port = slow_intake(Duration::from_secs(4));
    // 4 MiB in all: the relay's share is 512 KiB.
    let s = relay()
        .env("DD_API_KEY", "test-key-0123456789abcdef")
        .env("DYNOSTAT_MEMORY_LIMIT", "4MiB")
        .env(
            "DD_APM_TELEMETRY_DD_URL",
            &format!("http://127.0.0.1:{port}"),
        )
        .start();
    // A 400 KB profile-sized upload, held while the intake takes its time...
    let apm = s.apm_port;
    let proxied = std::thread::spawn(move || {
        request(
            apm,
            "POST",
            "/telemetry/proxy/api/v2/apmtelemetry",
            &[("Content-Type", "application/json")],
            &vec![b' '; 400_000],
        )
        .0
    });
    std::thread::sleep(Duration::from_millis(1500));
    // ...so 200 KB of traces more is past the ceiling.
    let mut body = vec![0x91, 0x90];
    body.resize(200_000, 0);
    let (status, _) = request(
        apm,
        "PUT",
        "/v0.4/traces",
        &[
            ("Datadog-Send-Real-Http-Status", "1"),
            ("X-Datadog-Trace-Count", "1"),
        ],
        &body,
    );
    assert_eq!(status, 429, "the proxied body is held, and counted");
    assert_eq!(proxied.join().unwrap(), 202);
    // Once it is answered, its share is given back.
    let (status, _) = request(
        apm,
        "PUT",
        "/v0.4/traces",
        &[("Datadog-Send-Real-Http-Status", "1")],
        &body,
    );
    assert_eq!(status, 200);
}

#[test]
fn tracer_stats_that_would_decode_past_the_share_are_refused() {
    // 4 MiB in all: the relay's share is 512 KiB.
    let s = relay().env("DYNOSTAT_MEMORY_LIMIT", "4MiB").start();
    let payload = |groups: usize| pb::ClientStatsPayload {
        stats: vec![pb::ClientStatsBucket {
            start: 1_700_000_000_000_000_000,
            duration: 10_000_000_000,
            stats: vec![pb::ClientGroupedStats::default(); groups],
            agent_time_shift: 0,
        }],
        ..Default::default()
    };
    // 15,000 empty groups as msgpack arrays: 0.4 MB on the wire, under
    // the share, but each a struct of hundreds of bytes once decoded.
    let body = rmp_serde::to_vec(&payload(15_000)).unwrap();
    assert!(body.len() < 512 * 1024, "{} bytes", body.len());
    assert_eq!(
        request(s.apm_port, "POST", "/v0.6/stats", &[], &body).0,
        429
    );
    let body = rmp_serde::to_vec(&payload(3)).unwrap();
    assert_eq!(
        request(s.apm_port, "POST", "/v0.6/stats", &[], &body).0,
        200,
        "a payload that fits is taken, the refused one's share given back"
    );
}

#[test]
fn a_receiver_socket_path_that_is_a_file_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("settings.yml");
    std::fs::write(&path, "the app's own file\n").unwrap();
    let mut s = relay()
        .env("DD_APM_RECEIVER_SOCKET", path.to_str().unwrap())
        .start();
    s.stop_ok(Duration::from_secs(10));
    assert_eq!(
        std::fs::read_to_string(&path).ok().as_deref(),
        Some("the app's own file\n"),
        "only a stale socket is replaced"
    );
    assert!(
        s.stderr().contains("DD_APM_RECEIVER_SOCKET"),
        "{}",
        s.stderr()
    );
}

/// A request whose body is announced but not sent: (status).
fn announce(port: u16, path: &str, len: usize) -> u16 {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_answer(&mut c).0
}

#[test]
fn proxied_bodies_refused_at_the_share_are_counted() {
    let intake = Intake::start();
    // 4 MiB in all: the relay's share is 512 KiB.
    let mut s = relay()
        .intake(&intake)
        .env("DYNOSTAT_MEMORY_LIMIT", "4MiB")
        .start();
    assert_eq!(announce(s.apm_port, "/dogstatsd/v2/proxy", 600_000), 413);
    assert_eq!(announce(s.apm_port, "/profiling/v1/input", 600_000), 413);
    s.stop_ok(Duration::from_secs(10));
    assert_eq!(total(&intake, "dynostat.traces.proxy_errors"), 2.0);
}

/// A bogus `X-Datadog-Trace-Count` on a refused body counts no more traces
/// than the body could hold (one byte each, at most the body limit), so it
/// cannot inflate `dynostat.dropped` or wrap the counter (review, issue 24).
#[test]
fn a_bogus_trace_count_header_counts_no_more_than_the_body_could_hold() {
    let intake = Intake::start();
    let mut s = relay().intake(&intake).start();
    for _ in 0..2 {
        let mut c = TcpStream::connect(("127.0.0.1", s.apm_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"PUT /v0.4/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\nX-Datadog-Trace-Count: 18446744073709551615\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(read_answer(&mut c).0, 413);
    }
    s.stop_ok(Duration::from_secs(10));
    let counted = total(&intake, "dynostat.traces.dropped.memory");
    // Two refusals, each at most the relay's 8 MiB body limit.
    assert!(
        counted > 0.0 && counted <= 2.0 * 8.0 * 1024.0 * 1024.0,
        "{counted}"
    );
}
