//! HTTP tests for the forwarder: a real HTTP server on 127.0.0.1 (tiny_http,
//! in a thread) stands in for the Datadog intake, and the [`Forwarder`] is
//! driven directly inside a current-thread tokio runtime, as the listener
//! drives it. Logs are captured through a `tracing` subscriber writing to a
//! buffer. Every wait is bounded.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flate2::read::{GzDecoder, ZlibDecoder};
use serde_json::Value;

use super::payload::{encode_flush, Decoration, Limits};
use super::*;
use crate::dogstatsd::aggregate::{DistributionSketch, Series, SeriesKind};
use crate::dogstatsd::protocol::{AlertType, CheckStatus, Event, Priority, ServiceCheck};
use crate::dogstatsd::sketch::Sketch as Values;

const KEY: &str = "sekrit-key-0123456789abcdef";

// ---------------------------------------------------------------- the intake

/// One request as the intake saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: BTreeMap<String, String>,
    compressed_len: usize,
    raw_len: usize,
    json: Value,
    /// The decompressed body (protobuf for sketches).
    raw: Vec<u8>,
    /// What the intake answered.
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The items of the payload: `series` for metrics, the array for checks,
    /// the object itself for an event.
    fn items(&self) -> Vec<Value> {
        match &self.json {
            Value::Object(map) if map.contains_key("series") => {
                map["series"].as_array().cloned().unwrap_or_default()
            }
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        }
    }
}

type Script = Box<dyn FnMut(&Received) -> u16 + Send>;

/// A tiny HTTP server on 127.0.0.1 that records every request and answers
/// with the status the script picks.
struct Intake {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Intake {
    fn start(script: impl FnMut(&Received) -> u16 + Send + 'static) -> Self {
        Self::start_on(0, script)
    }

    fn start_on(port: u16, script: impl FnMut(&Received) -> u16 + Send + 'static) -> Self {
        let server = tiny_http::Server::http(("127.0.0.1", port))
            .expect("bind the test intake on 127.0.0.1");
        let port = server.server_addr().to_ip().expect("an IP listener").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(script)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, script, stop) = (received.clone(), script.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(20)) else {
                        continue;
                    };
                    let headers: BTreeMap<String, String> = req
                        .headers()
                        .iter()
                        .map(|h| {
                            (
                                h.field.as_str().as_str().to_ascii_lowercase(),
                                h.value.as_str().to_owned(),
                            )
                        })
                        .collect();
                    let mut body = Vec::new();
                    req.as_reader()
                        .read_to_end(&mut body)
                        .expect("read the request body");
                    let mut raw = Vec::new();
                    match headers.get("content-encoding").map(String::as_str) {
                        Some("gzip") => GzDecoder::new(body.as_slice())
                            .read_to_end(&mut raw)
                            .map(|_| ())
                            .expect("the body is valid gzip"),
                        Some("deflate") => ZlibDecoder::new(body.as_slice())
                            .read_to_end(&mut raw)
                            .map(|_| ())
                            .expect("the body is valid deflate"),
                        _ => raw.clone_from(&body),
                    }
                    let json: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                    let mut r = Received {
                        path: req.url().to_owned(),
                        headers,
                        compressed_len: body.len(),
                        raw_len: raw.len(),
                        json,
                        raw,
                        status: 0,
                    };
                    r.status = (script.lock().expect("script lock"))(&r);
                    let answer = if r.status == 400 {
                        // An intake that echoes the key back must not get it into our logs.
                        format!("{{\"errors\":[\"bad payload for key {KEY}\"]}}")
                    } else {
                        "{\"status\":\"ok\"}".to_owned()
                    };
                    let status = r.status;
                    received.lock().expect("received lock").push(r);
                    let _ = req
                        .respond(tiny_http::Response::from_string(answer).with_status_code(status));
                }
            })
        };
        Self {
            url: format!("http://127.0.0.1:{port}"),
            received,
            script,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("received lock").clone()
    }

    fn set_script(&self, script: impl FnMut(&Received) -> u16 + Send + 'static) {
        *self.script.lock().expect("script lock") = Box::new(script);
    }

    /// Metric names (or event titles / check names) in accepted payloads, with counts.
    fn delivered(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.requests().iter().filter(|r| r.accepted()) {
            for item in r.items() {
                let name = ["metric", "title", "check"]
                    .iter()
                    .find_map(|k| item.get(*k).and_then(Value::as_str))
                    .unwrap_or("?")
                    .to_owned();
                *out.entry(name).or_insert(0) += 1;
            }
        }
        out
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

// ------------------------------------------------------------ the harness

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

/// Runs `f` in a current-thread runtime (as the listener's flush thread does),
/// with every log line at any level captured. Returns the output and the logs.
fn run<F: std::future::Future>(f: F) -> (F::Output, String) {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(f)
    });
    (out, logs.text())
}

fn config(url: &str, extra: &[(&str, &str)]) -> Config {
    let mut env: BTreeMap<String, String> = [
        ("DD_API_KEY", KEY),
        ("DD_DD_URL", url),
        ("DD_TAGS", "team:core env:test"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_lookup(&env).expect("a valid test config")
}

fn series(metric: &str, kind: SeriesKind, value: f64, tags: &[&str]) -> Series {
    Series {
        metric: metric.to_owned(),
        kind,
        points: vec![(1_700_000_000, value)],
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        host: None,
        interval: (kind != SeriesKind::Gauge).then_some(10),
        unit: None,
    }
}

fn flush_of(series: Vec<Series>) -> Flush {
    Flush {
        series,
        ..Flush::default()
    }
}

fn deadline_in(d: Duration) -> Instant {
    Instant::now() + d
}

// ---------------------------------------------------------- schema checks

/// Checks one item against the v2 `MetricSeries` schema of Datadog's public
/// OpenAPI spec: known keys only, required `metric` and `points`, and types.
fn assert_metric_series(s: &Value) {
    let obj = s.as_object().expect("a series is an object");
    for key in obj.keys() {
        assert!(
            [
                "metric",
                "type",
                "points",
                "tags",
                "resources",
                "interval",
                "unit",
                "metadata",
                "source_type_name"
            ]
            .contains(&key.as_str()),
            "unknown MetricSeries field {key}"
        );
    }
    assert!(obj["metric"].is_string(), "metric: string");
    let ty = obj["type"].as_u64().expect("type: integer");
    assert!((0..=3).contains(&ty), "type in 0..=3");
    let points = obj["points"].as_array().expect("points: array");
    assert!(!points.is_empty());
    for p in points {
        let p = p.as_object().expect("a MetricPoint is an object");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p["timestamp"].is_i64(), "timestamp: int64");
        assert!(p["value"].is_f64() || p["value"].is_i64(), "value: double");
    }
    for t in obj["tags"].as_array().expect("tags: array") {
        assert!(t.is_string());
    }
    if let Some(res) = obj.get("resources") {
        for r in res.as_array().expect("resources: array") {
            assert!(r["name"].is_string() && r["type"].is_string(), "{r}");
        }
    }
    // Every DogStatsD series carries its interval and its origin, as the
    // Agent's do (issue 25, rows 4 and 6).
    assert!(obj["interval"].is_i64(), "interval: int64");
    assert_eq!(
        obj["metadata"],
        serde_json::json!({"origin": {"origin_product": 10, "origin_sub_product": 10}}),
        "origin: the Agent's DogStatsD"
    );
    assert!(obj.get("unit").is_none(), "the Agent sends no unit");
}

// ------------------------------------------------------------------ tests

#[test]
fn every_endpoint_gets_the_documented_json_compressed_with_the_key() {
    let intake = Intake::start(|_| 202);
    let cfg = config(&intake.url, &[("DD_HOSTNAME", "dyno-host")]);
    let stats = Arc::new(Stats::default());
    let mut rate = series(
        "page.views",
        SeriesKind::Rate,
        0.3,
        &["env:test", "route:/a"],
    );
    rate.host = Some("tagged-host".to_owned());
    let mut timer = series("req.time.avg", SeriesKind::Gauge, 12.5, &[]);
    timer.unit = Some("millisecond");
    let flush = Flush {
        series: vec![
            rate,
            timer,
            series("jobs", SeriesKind::Count, 4.0, &["q:x"]),
        ],
        distributions: vec![DistributionSketch {
            metric: "latency".to_owned(),
            timestamp: 1_700_000_000,
            sketch: Values::of(&[1.0, 2.5, 3.0]),
            tags: vec!["route:/a".to_owned()],
            host: None,
        }],
        events: vec![Event {
            title: "Deploy".to_owned(),
            text: "v2\nshipped".to_owned(),
            timestamp: Some(1_700_000_001),
            host: None,
            aggregation_key: Some("deploys".to_owned()),
            priority: Priority::Low,
            source_type: Some("heroku".to_owned()),
            alert_type: AlertType::Success,
            tags: vec!["team:core".to_owned()],
        }],
        service_checks: vec![ServiceCheck {
            name: "db.up".to_owned(),
            status: CheckStatus::Critical,
            timestamp: Some(1_700_000_002),
            host: Some("db-1".to_owned()),
            tags: vec![],
            message: Some("timeout".to_owned()),
        }],
    };
    let (queued, logs) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            f.submit(flush).await;
            f.settle().await;
            {
                f.settle().await;
                f.queued()
            }
        }
    });
    assert_eq!(queued, 0, "{logs}");
    // Requests go out side by side: put them in endpoint order.
    let order = [
        "/api/v2/series",
        "/api/beta/sketches",
        "/intake/",
        "/api/v1/check_run",
    ];
    let mut reqs = intake.requests();
    reqs.sort_by_key(|r| order.iter().position(|p| *p == r.path));
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v2/series",
            "/api/beta/sketches",
            "/intake/",
            "/api/v1/check_run"
        ]
    );
    for r in &reqs {
        assert_eq!(r.header("DD-API-KEY"), Some(KEY));
        let (ty, enc) = if r.path == "/api/beta/sketches" {
            ("application/x-protobuf", "deflate")
        } else {
            ("application/json", "gzip")
        };
        assert_eq!(r.header("Content-Type"), Some(ty));
        assert_eq!(r.header("Content-Encoding"), Some(enc));
        assert!(r.compressed_len > 0 && r.raw_len > 0);
    }
    assert_eq!(stats.payloads.load(Ordering::Relaxed), 4);
    let bytes: usize = reqs.iter().map(|r| r.compressed_len).sum();
    assert_eq!(stats.bytes.load(Ordering::Relaxed), bytes as u64);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);

    // Series.
    let s = reqs[0].items();
    assert_eq!(s.len(), 3);
    for item in &s {
        assert_metric_series(item);
    }
    assert_eq!(
        s[0],
        serde_json::json!({
            "metric": "page.views", "type": 2,
            "points": [{"timestamp": 1_700_000_000, "value": 0.3}],
            "tags": ["env:test", "route:/a", "team:core"],
            "resources": [{"name": "tagged-host", "type": "host"}],
            "interval": 10,
            "metadata": {"origin": {"origin_product": 10, "origin_sub_product": 10}}
        }),
        "global tags appended once, the series' own host wins"
    );
    assert_eq!(
        s[1],
        serde_json::json!({
            "metric": "req.time.avg", "type": 3,
            "points": [{"timestamp": 1_700_000_000, "value": 12.5}],
            "tags": ["env:test", "team:core"],
            "resources": [{"name": "dyno-host", "type": "host"}],
            "interval": 10,
            "metadata": {"origin": {"origin_product": 10, "origin_sub_product": 10}}
        }),
        "gauges carry the interval and no unit, as the Agent's; the configured host is the default"
    );
    assert_eq!(s[2]["type"], 1);
    assert_eq!(s[2]["interval"], 10);

    // Sketches: protobuf.
    {
        use prost::Message as _;
        let p = super::sketch::SketchPayload::decode(reqs[1].raw.as_slice()).expect("protobuf");
        assert_eq!(p.sketches.len(), 1);
        let s = &p.sketches[0];
        assert_eq!(s.metric, "latency");
        assert_eq!(s.host, "dyno-host");
        assert_eq!(s.tags, ["route:/a", "env:test", "team:core"]);
        let origin = s.metadata.as_ref().and_then(|m| m.origin.as_ref());
        assert_eq!(
            origin.map(|o| (o.origin_product, o.origin_category, o.origin_service)),
            Some((10, 10, 0)),
            "the Agent's DogStatsD origin"
        );
        let d = &s.dogsketches[0];
        assert_eq!(
            (d.ts, d.cnt, d.min, d.max, d.sum),
            (1_700_000_000, 3, 1.0, 3.0, 6.5)
        );
        assert_eq!(d.n, [1, 1, 1]);
        assert_eq!(d.k.len(), 3);
    }
    // Events: the Agent's /intake/ envelope, grouped by source type, in
    // its field names and order (issue 25, row 10).
    assert_eq!(
        reqs[2].json,
        serde_json::json!({
            "apiKey": "",
            "events": {"heroku": [{
                "msg_title": "Deploy", "msg_text": "v2\nshipped", "timestamp": 1_700_000_001,
                "priority": "low", "host": "dyno-host",
                "tags": ["team:core", "env:test"],
                "alert_type": "success", "aggregation_key": "deploys",
                "source_type_name": "heroku"
            }]},
            "internalHostname": "dyno-host"
        })
    );
    // Service checks: an array.
    assert_eq!(
        reqs[3].json,
        serde_json::json!([{
            "check": "db.up", "host_name": "db-1", "status": 2,
            "timestamp": 1_700_000_002, "message": "timeout",
            "tags": ["env:test", "team:core"]
        }])
    );
    assert!(!logs.contains(KEY));
}

#[test]
fn without_a_host_there_are_no_resources_and_check_host_name_is_empty() {
    let intake = Intake::start(|_| 200);
    let cfg = config(&intake.url, &[]);
    let flush = Flush {
        series: vec![series("a", SeriesKind::Gauge, 1.0, &[])],
        service_checks: vec![ServiceCheck {
            name: "c".to_owned(),
            status: CheckStatus::Ok,
            timestamp: None,
            host: None,
            tags: vec![],
            message: None,
        }],
        ..Flush::default()
    };
    let _ = run(async move {
        let mut f = Forwarder::new(&cfg, Arc::new(Stats::default())).expect("forwarder");
        f.submit(flush).await;
        f.settle().await;
    });
    let mut reqs = intake.requests();
    assert_eq!(reqs.len(), 2);
    // The two requests go out side by side: series first.
    reqs.sort_by_key(|r| r.path != "/api/v2/series");
    assert!(reqs[0].items()[0].get("resources").is_none());
    assert_eq!(
        reqs[1].json,
        serde_json::json!([{"check": "c", "host_name": "", "status": 0, "tags": ["env:test", "team:core"]}])
    );
}

#[test]
fn many_series_are_split_into_payloads_under_the_intake_limits() {
    let intake = Intake::start(|_| 202);
    let cfg = config(&intake.url, &[]);
    // Random tags compress poorly, so both size limits matter, not just the count.
    let mut rng = fastrand::Rng::with_seed(7);
    let n = 30_000;
    let all: Vec<Series> = (0..n)
        .map(|i| {
            let noise: String = (0..48).map(|_| rng.alphanumeric()).collect();
            series(
                &format!("load.metric.{i}"),
                SeriesKind::Gauge,
                f64::from(i),
                &[&format!("noise:{noise}"), "env:test"],
            )
        })
        .collect();
    let stats = Arc::new(Stats::default());
    let _ = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            f.submit(flush_of(all)).await;
            f.settle().await;
        }
    });
    let reqs = intake.requests();
    assert!(reqs.len() >= 3, "30k series fit in {} payloads", reqs.len());
    for r in &reqs {
        assert!(
            r.compressed_len <= 512_000,
            "{} compressed",
            r.compressed_len
        );
        assert!(r.raw_len <= 5_242_880, "{} raw", r.raw_len);
        assert!(r.items().len() <= payload::MAX_ITEMS);
    }
    let delivered = intake.delivered();
    assert_eq!(delivered.len(), n as usize);
    assert!(
        delivered.values().all(|&c| c == 1),
        "each series exactly once"
    );
    assert_eq!(stats.payloads.load(Ordering::Relaxed), reqs.len() as u64);
}

#[test]
fn a_small_compressed_limit_closes_payloads_early_and_loses_nothing() {
    let intake = Intake::start(|_| 202);
    let cfg = config(&intake.url, &[]);
    let limits = Limits {
        max_compressed: 3_000,
        max_uncompressed: 1_000_000,
        max_items: 100_000,
    };
    let mut rng = fastrand::Rng::with_seed(3);
    let all: Vec<Series> = (0..400)
        .map(|i| {
            let noise: String = (0..40).map(|_| rng.alphanumeric()).collect();
            series(
                &format!("m{i}"),
                SeriesKind::Gauge,
                1.0,
                &[&format!("n:{noise}")],
            )
        })
        .collect();
    let _ = run(async move {
        let mut f =
            Forwarder::with_limits(&cfg, Arc::new(Stats::default()), limits).expect("forwarder");
        f.submit(flush_of(all)).await;
        f.settle().await;
    });
    let reqs = intake.requests();
    assert!(reqs.len() > 5, "{} payloads", reqs.len());
    assert!(reqs.iter().all(|r| r.compressed_len <= 3_000));
    assert_eq!(intake.delivered().len(), 400);
}

#[test]
fn five_hundred_three_times_then_accepted_delivers_every_series_exactly_once() {
    let mut calls = 0;
    let intake = Intake::start(move |_| {
        calls += 1;
        if calls <= 3 {
            500
        } else {
            202
        }
    });
    let cfg = config(&intake.url, &[]);
    let stats = Arc::new(Stats::default());
    let names: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let flush = flush_of(
        names
            .iter()
            .map(|n| series(n, SeriesKind::Rate, 1.0, &[]))
            .collect(),
    );
    let (queued_after_submit, logs) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            f.submit(flush).await;
            f.settle().await;
            let queued = {
                f.settle().await;
                f.queued()
            };
            // The listener calls this every second; the backoff decides.
            let end = Instant::now() + Duration::from_secs(20);
            while {
                f.settle().await;
                f.queued()
            } > 0
                && Instant::now() < end
            {
                f.settle().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                {
                    f.settle().await;
                    f.queued()
                },
                0,
                "delivered before the bound"
            );
            // Nothing more is sent once accepted.
            f.settle().await;
            f.drain(deadline_in(Duration::from_millis(500))).await;
            queued
        }
    });
    assert_eq!(queued_after_submit, 1);
    let reqs = intake.requests();
    assert_eq!(reqs.len(), 4, "three 500s, then one accepted");
    let delivered = intake.delivered();
    assert_eq!(delivered.len(), 50);
    assert!(delivered.values().all(|&c| c == 1));
    assert_eq!(stats.payloads.load(Ordering::Relaxed), 1);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 3);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
    assert_eq!(stats.queue_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(
        logs.matches("intake unavailable").count(),
        1,
        "bounded: {logs}"
    );
    assert!(logs.contains("HTTP 500"), "{logs}");
}

#[test]
fn drain_retries_quickly_until_accepted() {
    let mut calls = 0;
    let intake = Intake::start(move |_| {
        calls += 1;
        match calls {
            1 => 503,
            2 => 429,
            3 => 408,
            _ => 200,
        }
    });
    let cfg = config(&intake.url, &[]);
    let (queued, _) = run(async move {
        let mut f = Forwarder::new(&cfg, Arc::new(Stats::default())).expect("forwarder");
        f.submit(flush_of(vec![series("x", SeriesKind::Gauge, 1.0, &[])]))
            .await;
        f.settle().await;
        f.drain(deadline_in(Duration::from_secs(5))).await;
        {
            f.settle().await;
            f.queued()
        }
    });
    assert_eq!(queued, 0);
    assert_eq!(intake.requests().len(), 4);
    assert_eq!(intake.delivered().get("x"), Some(&1));
}

#[test]
fn forbidden_is_explained_once_without_the_key_and_not_retried() {
    let intake = Intake::start(|_| 403);
    let cfg = config(&intake.url, &[("DD_SITE", "datadoghq.eu")]);
    let stats = Arc::new(Stats::default());
    let (queued, logs) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            for i in 0..3 {
                f.submit(flush_of(vec![series(
                    &format!("m{i}"),
                    SeriesKind::Gauge,
                    1.0,
                    &[],
                )]))
                .await;
                f.settle().await;
            }
            f.settle().await;
            f.drain(deadline_in(Duration::from_millis(300))).await;
            {
                f.settle().await;
                f.queued()
            }
        }
    });
    assert_eq!(queued, 0, "403s are dropped, not queued");
    assert_eq!(intake.requests().len(), 3, "each payload tried once");
    assert_eq!(stats.failures.load(Ordering::Relaxed), 3);
    assert_eq!(stats.payloads.load(Ordering::Relaxed), 0);
    assert_eq!(logs.matches("rejected the API key").count(), 1, "{logs}");
    assert!(logs.contains("heroku config:set DD_API_KEY="), "{logs}");
    assert!(logs.contains("datadoghq.eu"), "{logs}");
    assert!(logs.contains(&intake.url), "names the intake: {logs}");
    assert!(!logs.contains(KEY), "the key leaked: {logs}");
}

#[test]
fn bad_request_is_dropped_and_an_echoed_key_is_scrubbed_from_the_log() {
    let intake = Intake::start(|_| 400);
    let cfg = config(&intake.url, &[]);
    let stats = Arc::new(Stats::default());
    let (queued, logs) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            f.submit(flush_of(vec![series("m", SeriesKind::Gauge, 1.0, &[])]))
                .await;
            f.settle().await;
            {
                f.settle().await;
                f.queued()
            }
        }
    });
    assert_eq!(queued, 0);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
    assert!(logs.contains("status=400"), "{logs}");
    assert!(logs.contains("<redacted>"), "{logs}");
    assert!(!logs.contains(KEY), "the key leaked: {logs}");
}

#[test]
fn too_large_splits_in_halves_until_accepted() {
    // The intake takes at most 3 series per request.
    let intake = Intake::start(|r| if r.items().len() > 3 { 413 } else { 202 });
    let cfg = config(&intake.url, &[]);
    let stats = Arc::new(Stats::default());
    let names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let flush = Flush {
        series: names
            .iter()
            .map(|n| series(n, SeriesKind::Gauge, 1.0, &[]))
            .collect(),
        service_checks: (0..9)
            .map(|i| ServiceCheck {
                name: format!("c{i}"),
                status: CheckStatus::Ok,
                timestamp: None,
                host: None,
                tags: vec![],
                message: None,
            })
            .collect(),
        ..Flush::default()
    };
    let (queued, _) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            f.submit(flush).await;
            // A request that meets a closed keep-alive connection is retried
            // after the backoff: wait for it, within a bound.
            let end = Instant::now() + Duration::from_secs(10);
            f.settle().await;
            while f.queued() > 0 && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(50)).await;
                f.settle().await;
            }
            f.queued()
        }
    });
    assert_eq!(queued, 0);
    let reqs = intake.requests();
    assert!(reqs.iter().any(|r| r.status == 413));
    for r in reqs.iter().filter(|r| r.accepted()) {
        assert!(r.items().len() <= 3);
        if r.path == "/api/v2/series" {
            r.items().iter().for_each(assert_metric_series);
        }
    }
    let delivered = intake.delivered();
    assert_eq!(delivered.len(), 29);
    assert!(delivered.values().all(|&c| c == 1), "{delivered:?}");
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
}

#[test]
fn too_large_single_event_is_dropped_and_logged() {
    let intake = Intake::start(|_| 413);
    let cfg = config(&intake.url, &[]);
    let stats = Arc::new(Stats::default());
    let flush = Flush {
        events: vec![Event {
            title: "big".to_owned(),
            text: "x".repeat(1000),
            timestamp: None,
            host: None,
            aggregation_key: None,
            priority: Priority::Normal,
            source_type: None,
            alert_type: AlertType::Info,
            tags: vec![],
        }],
        ..Flush::default()
    };
    let (queued, logs) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            f.submit(flush).await;
            f.settle().await;
            {
                f.settle().await;
                f.queued()
            }
        }
    });
    assert_eq!(queued, 0);
    assert_eq!(intake.requests().len(), 1);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
    assert!(logs.contains("413 for a single item"), "{logs}");
}

#[test]
fn retry_queue_overflow_drops_the_oldest_and_counts_them() {
    let intake = Intake::start(|_| 500);
    let flushes: Vec<Flush> = (0..5)
        .map(|i| {
            flush_of(vec![series(
                &format!("m{i}"),
                SeriesKind::Gauge,
                1.0,
                &["a:b"],
            )])
        })
        .collect();
    // Room for two payloads, not three.
    let deco = Decoration {
        global_tags: config(&intake.url, &[]).global_tags,
        hostname: None,
        interval: None,
    };
    let sizes: Vec<usize> = flushes
        .iter()
        .map(|f| {
            encode_flush(f, &deco, Limits::default()).payloads[0]
                .body
                .len()
        })
        .collect();
    let biggest = *sizes.iter().max().expect("sizes");
    let limit = 2 * biggest + biggest / 2;
    let cfg = config(
        &intake.url,
        &[("DYNOSTAT_RETRY_QUEUE_BYTES", &limit.to_string())],
    );
    let stats = Arc::new(Stats::default());
    let (queued, logs) = run({
        let stats = stats.clone();
        let intake = &intake;
        async move {
            let mut f = Forwarder::new(&cfg, stats.clone()).expect("forwarder");
            for fl in flushes {
                f.submit(fl).await;
                f.settle().await;
            }
            let queued = {
                f.settle().await;
                f.queued()
            };
            assert!(stats.queue_bytes.load(Ordering::Relaxed) as usize <= limit);
            intake.set_script(|_| 202);
            f.drain(deadline_in(Duration::from_secs(5))).await;
            queued
        }
    });
    assert_eq!(queued, 2);
    assert_eq!(stats.queue_dropped.load(Ordering::Relaxed), 3);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 3);
    assert_eq!(stats.queue_bytes.load(Ordering::Relaxed), 0);
    let delivered = intake.delivered();
    assert_eq!(
        delivered.keys().collect::<Vec<_>>(),
        ["m3", "m4"],
        "the newest survive"
    );
    assert!(delivered.values().all(|&c| c == 1));
    assert_eq!(logs.matches("send queue full").count(), 1, "{logs}");
}

#[test]
fn intake_down_at_first_everything_is_delivered_once_it_is_up() {
    let port = free_port();
    let cfg = config(&format!("http://127.0.0.1:{port}"), &[]);
    let stats = Arc::new(Stats::default());
    let (intake, logs) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            for i in 0..3 {
                f.submit(flush_of(vec![series(
                    &format!("m{i}"),
                    SeriesKind::Count,
                    1.0,
                    &[],
                )]))
                .await;
                f.settle().await;
            }
            assert_eq!(
                {
                    f.settle().await;
                    f.queued()
                },
                3,
                "refused: all queued"
            );
            // The intake comes up while we drain.
            let starter = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                Intake::start_on(port, |_| 202)
            });
            f.drain(deadline_in(Duration::from_secs(8))).await;
            assert_eq!(
                {
                    f.settle().await;
                    f.queued()
                },
                0
            );
            starter.join().expect("intake thread")
        }
    });
    let delivered = intake.delivered();
    assert_eq!(delivered.keys().collect::<Vec<_>>(), ["m0", "m1", "m2"]);
    assert!(delivered.values().all(|&c| c == 1));
    assert_eq!(stats.payloads.load(Ordering::Relaxed), 3);
    assert!(logs.contains("intake unavailable"), "{logs}");
    assert!(!logs.contains(KEY));
}

#[test]
fn drain_gives_up_at_the_deadline_and_says_so() {
    let intake = Intake::start(|_| 502);
    let cfg = config(&intake.url, &[]);
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let deadline = deadline_in(Duration::from_millis(800));
    let (queued, logs) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            f.submit(flush_of(vec![series("m", SeriesKind::Gauge, 1.0, &[])]))
                .await;
            f.settle().await;
            f.drain(deadline).await;
            {
                f.settle().await;
                f.queued()
            }
        }
    });
    assert_eq!(queued, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain returns near its deadline"
    );
    assert!(
        intake.requests().len() >= 2,
        "retried during the drain: {}",
        intake.requests().len()
    );
    assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
    assert!(logs.contains("shutdown deadline reached"), "{logs}");
}

#[test]
fn a_backing_off_intake_costs_one_request_per_flush_not_one_per_payload() {
    let intake = Intake::start(|_| 500);
    let cfg = config(&intake.url, &[]);
    let _ = run(async move {
        let mut f = Forwarder::new(&cfg, Arc::new(Stats::default())).expect("forwarder");
        let flush = Flush {
            series: vec![series("a", SeriesKind::Gauge, 1.0, &[])],
            distributions: vec![DistributionSketch {
                metric: "d".to_owned(),
                timestamp: 1,
                sketch: Values::of(&[1.0]),
                tags: vec![],
                host: None,
            }],
            ..Flush::default()
        };
        f.submit(flush.clone()).await;
        f.settle().await;
        f.submit(flush).await;
        f.settle().await;
        assert_eq!(
            {
                f.settle().await;
                f.queued()
            },
            4
        );
    });
    // The first flush's two payloads may go out side by side (the intake
    // looked healthy); once it failed, the second flush waits in the queue.
    assert!(intake.requests().len() <= 2, "{}", intake.requests().len());
}

#[test]
fn no_key_off_a_dyno_logs_one_line_and_sends_nothing() {
    let env: BTreeMap<String, String> = [("DYNO", "web.1")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let cfg = Config::from_lookup(&env).expect("valid");
    assert!(!cfg.console && cfg.api_key.is_none());
    let stats = Arc::new(Stats::default());
    let ((), logs) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            f.submit(flush_of(vec![series("m", SeriesKind::Gauge, 1.0, &[])]))
                .await;
            f.settle().await;
            f.settle().await;
            f.drain(deadline_in(Duration::from_millis(100))).await;
        }
    });
    assert_eq!(logs.lines().count(), 1, "{logs}");
    assert!(logs.contains("DD_API_KEY is not set"), "{logs}");
    assert!(logs.contains("heroku config:set DD_API_KEY="), "{logs}");
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
}

/// A flush as the real aggregator and self-telemetry produce it from
/// DogStatsD lines, interval 10 s.
fn aggregated(lines: &[&str], stats: &Stats) -> Flush {
    use crate::dogstatsd::aggregate::{Aggregator, AggregatorOptions};
    use crate::dogstatsd::protocol::{parse_str, Parsed};
    let mut agg = Aggregator::new(AggregatorOptions {
        context_limit: 1_000,
        histogram_aggregates: crate::config::defaults::HISTOGRAM_AGGREGATES.to_vec(),
        histogram_percentiles: crate::config::defaults::PERCENTILES.to_vec(),
        ..AggregatorOptions::default()
    });
    for line in lines {
        Stats::add(&stats.packets, 1);
        Stats::add(&stats.lines, 1);
        match parse_str(line) {
            Ok(Parsed::Metric(m)) => {
                agg.insert(&m, 1_700_000_000);
            }
            Ok(Parsed::Event(e)) => agg.insert_event(*e),
            Ok(Parsed::ServiceCheck(c)) => agg.insert_service_check(*c),
            Err(_) => Stats::add(&stats.parse_errors, 1),
        }
    }
    let bucket = agg.take();
    stats
        .contexts
        .store(bucket.contexts() as u64, Ordering::Relaxed);
    let mut flush = bucket.into_flush(1_700_000_000, 10);
    flush.series.extend(stats.drain_series(1_700_000_000, 10));
    flush
}

fn plain_console() -> console::Console {
    console::Console::with(
        false,
        console::HistogramNames::new(
            crate::config::defaults::HISTOGRAM_AGGREGATES,
            crate::config::defaults::PERCENTILES,
        ),
    )
}

#[test]
fn console_shows_app_metrics_first_one_row_per_histogram_and_a_summary() {
    let deco = Decoration {
        global_tags: vec!["env:dev".to_owned()],
        hostname: None,
        interval: None,
    };
    let stats = Stats::default();
    let flush = aggregated(
        &[
            "app.requests:1|c",
            "app.requests:1|c",
            "app.requests:1|c",
            "app.latency:10|ms",
            "app.latency:20|ms",
            "app.latency:30|ms",
            "app.size:4|h|#route:/",
            "app.temp:21.5|g|@1|#host:h1",
            "_e{6,12}:Deploy|line1\\nline2|t:warning",
            "_sc|db.up|0|#db:main|m:fine",
        ],
        &stats,
    );
    let mut c = plain_console();
    let got = c.render(&flush, &deco).expect("something arrived");
    let expected = "\
METRIC        TYPE           TAGS             TREND     VALUE
app.latency   timer          env:dev          ~         count=3 avg=20ms p95=30ms max=30ms
app.requests  counter        env:dev          ~         3 (0.3/s)
app.size      histogram      route:/,env:dev  ~         count=1 avg=4 p95=4 max=4
app.temp      gauge          env:dev,host:h1  ~         21.5
Deploy        event          env:dev                    warning: line1\\nline2
db.up         service_check  db:main,env:dev            OK: fine
dynostat: 10 packets, 10 lines, 0 parse errors, 4 contexts
";
    assert_eq!(got, expected, "\n{got}");

    // The next flushes draw the trend; a counter absent from one is a zero.
    let flush = aggregated(&["app.requests:6|c", "app.temp:30|g|#host:h1"], &stats);
    let got = c.render(&flush, &deco).expect("something arrived");
    assert!(
        got.contains("app.requests  counter  env:dev          _#        6 (0.6/s)"),
        "\n{got}"
    );
    assert!(
        got.contains("app.temp      gauge    env:dev,host:h1  _#        30"),
        "\n{got}"
    );
    let flush = aggregated(&["app.temp:25.75|g|#host:h1"], &stats);
    let got = c.render(&flush, &deco).expect("something arrived");
    assert!(!got.contains("app.requests"), "\n{got}");
    assert!(
        got.contains("app.temp  gauge  env:dev,host:h1  _#=       25.75"),
        "\n{got}"
    );
}

#[test]
fn console_is_silent_when_nothing_arrived_and_says_what_went_wrong() {
    let deco = Decoration {
        global_tags: Vec::new(),
        hostname: None,
        interval: None,
    };
    let stats = Stats::default();
    let mut c = plain_console();
    assert_eq!(c.render(&aggregated(&[], &stats), &deco), None);
    assert_eq!(c.render(&Flush::default(), &deco), None);
    // Only bad lines: no table, but the trouble is shown.
    let got = c
        .render(&aggregated(&["no colon here", "x:1|zz"], &stats), &deco)
        .expect("parse errors are worth a line");
    assert_eq!(
        got,
        "dynostat: 2 packets, 2 lines, 2 parse errors, 0 contexts\n\
         dynostat: 2 parse errors: lines that are not DogStatsD were dropped; the log shows a sample\n"
    );
    Stats::add(&stats.contexts_dropped, 5);
    let got = c
        .render(&aggregated(&["ok:1|c"], &stats), &deco)
        .expect("something arrived");
    assert!(
        got.starts_with("METRIC  TYPE     TAGS  TREND     VALUE\nok      counter"),
        "{got}"
    );
    assert!(
        got.ends_with(
            "dynostat: 1 packet, 1 line, 0 parse errors, 1 context\n\
             dynostat: 5 contexts dropped: new contexts past DYNOSTAT_CONTEXT_LIMIT\n"
        ),
        "{got}"
    );
}

#[test]
fn console_distributions_are_one_row_and_a_user_gauge_named_max_is_not_folded() {
    let deco = Decoration {
        global_tags: Vec::new(),
        hostname: None,
        interval: None,
    };
    let mut flush = aggregated(&["mine.max:5|g", "other.avg:2|g"], &Stats::default());
    flush.distributions.push(DistributionSketch {
        metric: "latency".to_owned(),
        timestamp: 1,
        sketch: Values::of(&(1..=20).map(f64::from).collect::<Vec<_>>()),
        tags: vec![],
        host: None,
    });
    let got = plain_console()
        .render(&flush, &deco)
        .expect("something arrived");
    // p95 is read from the sketch: 19 within its 1/128 relative accuracy.
    assert!(
        got.contains(
            "latency    distribution        ~         count=20 avg=10.5 p95=19.0258 max=20"
        ),
        "\n{got}"
    );
    assert!(got.contains("mine.max   gauge"), "\n{got}");
    assert!(got.contains("other.avg  gauge"), "\n{got}");
}

#[test]
fn console_trouble_names_are_real_telemetry() {
    let names: Vec<String> = Stats::default()
        .drain_series(0, 10)
        .into_iter()
        .map(|s| s.metric)
        .collect();
    for name in [
        "dynostat.packets",
        "dynostat.parse_errors",
        "dynostat.contexts",
        "dynostat.packets.truncated",
        "dynostat.samples.discarded",
        "dynostat.contexts.dropped",
        "dynostat.forwarder.failures",
        "dynostat.forwarder.queue_dropped",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} is not in {names:?}"
        );
    }
}

#[test]
fn console_mode_sends_nothing_without_a_key() {
    let env: BTreeMap<String, String> = BTreeMap::new();
    let cfg = Config::from_lookup(&env).expect("valid");
    assert!(cfg.console);
    let ((), logs) = run(async move {
        let mut f = Forwarder::new(&cfg, Arc::new(Stats::default())).expect("forwarder");
        f.submit(flush_of(vec![series("m", SeriesKind::Gauge, 1.0, &[])]))
            .await;
        f.settle().await;
        f.drain(deadline_in(Duration::from_millis(100))).await;
    });
    assert!(logs.is_empty(), "{logs}");
}

#[test]
fn the_forwarder_debug_output_hides_the_key() {
    let cfg = config("http://127.0.0.1:9", &[]);
    let f = Forwarder::new(&cfg, Arc::new(Stats::default())).expect("forwarder");
    let dump = format!("{f:?}");
    assert!(!dump.contains(KEY), "{dump}");
}

#[test]
fn a_hanging_intake_is_cut_off_at_the_drain_deadline() {
    let mut calls = 0;
    let intake = Intake::start(move |_| {
        calls += 1;
        if calls > 1 {
            // Answers far too late: the request must time out, not wait.
            std::thread::sleep(Duration::from_secs(3));
        }
        if calls == 1 {
            503
        } else {
            200
        }
    });
    let cfg = config(&intake.url, &[]);
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let (queued, logs) = run({
        let stats = stats.clone();
        async move {
            let mut f = Forwarder::new(&cfg, stats).expect("forwarder");
            f.submit(flush_of(vec![series("m", SeriesKind::Gauge, 1.0, &[])]))
                .await;
            f.settle().await;
            f.drain(deadline_in(Duration::from_millis(700))).await;
            {
                f.settle().await;
                f.queued()
            }
        }
    });
    let took = started.elapsed();
    assert_eq!(queued, 0);
    assert!(
        took < Duration::from_millis(2_500),
        "drain waited for the slow intake: {took:?}"
    );
    assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
    assert_eq!(stats.payloads.load(Ordering::Relaxed), 0);
    assert!(logs.contains("shutdown deadline reached"), "{logs}");
}

#[test]
fn the_idle_hook_runs_once_each_time_all_held_payloads_are_delivered() {
    // The first two flushes are accepted, then the intake fails.
    let mut answered = 0;
    let intake = Intake::start(move |_| {
        answered += 1;
        if answered <= 4 {
            202
        } else {
            503
        }
    });
    let cfg = config(&intake.url, &[]);
    let stats = Arc::new(Stats::default());
    // At each call, the payloads delivered so far.
    let calls: Arc<Mutex<Vec<u64>>> = Arc::default();
    let hook: IdleHook = {
        let (calls, stats) = (calls.clone(), stats.clone());
        Arc::new(move || {
            let delivered = stats.payloads.load(Ordering::Relaxed);
            calls.lock().expect("calls").push(delivered);
        })
    };
    let two = || Flush {
        series: vec![series("a", SeriesKind::Gauge, 1.0, &[])],
        service_checks: vec![ServiceCheck {
            name: "c".to_owned(),
            status: CheckStatus::Ok,
            timestamp: None,
            host: None,
            tags: vec![],
            message: None,
        }],
        ..Flush::default()
    };
    let ((before, queued), logs) = run({
        let calls = calls.clone();
        async move {
            let mut f = Forwarder::with_idle_hook(&cfg, stats, hook).expect("forwarder");
            // Nothing was sent yet: settling calls nothing.
            f.settle().await;
            let before = calls.lock().expect("calls").clone();
            // Each flush's two payloads are in flight together: one call
            // after both. The third flush's wait for a retry: none.
            for _ in 0..3 {
                f.submit(two()).await;
                f.settle().await;
            }
            f.settle().await;
            (before, f.queued())
        }
    });
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(*calls.lock().expect("calls"), [2, 4], "{logs}");
    assert_eq!(queued, 2, "the failed flush waits for its retry");
    assert_eq!(intake.requests().len(), 6);
}
