//! Trace load generator and floor receiver for the trace relay's benchmark
//! (`scripts/bench/traces.sh`). Standard library only, so the benchmark
//! builds it with `rustc` alone.
//!
//! Modes:
//! - `traceload floor --port P --seconds S`: an HTTP/1.1 server on
//!   127.0.0.1 that reads each request's body and discards it, answering 200
//!   with an empty `rate_by_service`: the least any receiver must do. What a
//!   relay costs beyond it is its own work.
//! - `traceload send --port P --rate SPANS_PER_S --seconds S --server-pid PID
//!   [--requests-per-s 10] [--settle-ms 2500] [--sql-literals 1]`:
//!   `PUT /v0.4/traces` bodies (msgpack) of web traces of 5 spans each (a web
//!   root, SQL, Redis, an HTTP client call, a template render, with the tags
//!   a Python tracer sets; the SQL parameterized, or with `--sql-literals 1`
//!   a distinct query per trace),
//!   priority 1, new ids each time, over one keep-alive connection, paced to
//!   the rate. Prints one JSON line: spans sent, seconds, and the server's
//!   CPU seconds (utime + stime from `/proc/PID/stat`, from just before the
//!   first request until `--settle-ms` after the last, so its flushes are
//!   paid for), `VmHWM` and `VmRSS` in KiB.
//!
//! - `traceload dump --out DIR [--requests 20] [--rate 10000] [--sql-literals 1]`: writes the
//!   bodies `send` would send (`DIR/body-N.msgpack`), for profiling the
//!   relay's work in-process (`TRACE_PROF_DIR` in src/trace/mod.rs' tests).
//!
//! Never: connects anywhere but 127.0.0.1, or runs past its `--seconds`
//! (plus the settle time).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("floor") => floor(
            u16::try_from(arg(&args, "--port", 18300)).unwrap_or(18300),
            arg(&args, "--seconds", 3600),
        ),
        Some("send") => send(&args),
        Some("dump") => dump(&args),
        _ => {
            eprintln!("usage: traceload floor --port P --seconds S | send --port P --rate R --seconds S --server-pid PID");
            std::process::exit(2);
        }
    }
}

fn floor(port: u16, seconds: u64) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the floor");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        std::process::exit(0);
    });
    eprintln!("floor listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve_floor(stream));
    }
}

fn serve_floor(stream: TcpStream) {
    let mut out = stream.try_clone().expect("clone the stream");
    let mut r = BufReader::new(stream);
    let mut body = Vec::new();
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        body.resize(len, 0);
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let answer = b"{\"rate_by_service\":{}}";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(answer).is_err() {
            return;
        }
    }
}

/// A tiny msgpack writer.
struct Mp(Vec<u8>);

impl Mp {
    fn arr(&mut self, n: usize) {
        if n < 16 {
            self.0.push(0x90 | n as u8);
        } else {
            self.0.push(0xdd);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    fn map(&mut self, n: usize) {
        self.0.push(0x80 | n as u8);
    }
    fn str(&mut self, s: &str) {
        let n = s.len();
        if n < 32 {
            self.0.push(0xa0 | n as u8);
        } else if n < 256 {
            self.0.push(0xd9);
            self.0.push(n as u8);
        } else {
            self.0.push(0xda);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        }
        self.0.extend_from_slice(s.as_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.push(0xcf);
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.push(0xd3);
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.push(0xcb);
        self.0.extend_from_slice(&v.to_bits().to_be_bytes());
    }
}

struct SpanDef {
    service: &'static str,
    name: &'static str,
    resource: String,
    kind: &'static str,
    meta: Vec<(&'static str, String)>,
}

/// The SQL span's query. As tracers record it, a parameterized query keeps
/// its placeholders (psycopg's `%s`, node-postgres' `$1`): the same text
/// for every request. `literals` puts the id in the text instead, as an app
/// that formats its own SQL does: every query distinct, the worst case for
/// the relay's obfuscation cache.
fn sql(i: u64, literals: bool) -> String {
    let id = if literals {
        i.to_string()
    } else {
        "%s".to_owned()
    };
    format!(
        "SELECT items.id, items.name, items.price FROM items JOIN owners ON owners.id = items.owner_id WHERE items.id = {id} AND owners.name = 'alice' LIMIT 1"
    )
}

fn trace_spans(i: u64, literals: bool) -> Vec<SpanDef> {
    vec![
        SpanDef {
            service: "shop",
            name: "flask.request",
            resource: "GET /items/<int:id>".into(),
            kind: "web",
            meta: vec![
                ("http.method", "GET".into()),
                (
                    "http.url",
                    format!("http://shop.example.com/items/{i}?ref=home&page=2"),
                ),
                ("http.status_code", "200".into()),
                ("component", "flask".into()),
                ("span.kind", "server".into()),
                ("env", "bench".into()),
                ("version", "1.0.0".into()),
                ("runtime-id", "2d5b2c2f6d2e4a7b9c1e8f0a3b4c5d6e".into()),
            ],
        },
        SpanDef {
            service: "shop-db",
            name: "postgres.query",
            resource: sql(i, literals),
            kind: "sql",
            meta: vec![
                ("db.system", "postgresql".into()),
                ("db.name", "shop".into()),
                ("out.host", "db.internal".into()),
                ("span.kind", "client".into()),
                ("component", "psycopg".into()),
            ],
        },
        SpanDef {
            service: "shop-redis",
            name: "redis.command",
            resource: "GET".into(),
            kind: "redis",
            meta: vec![
                ("redis.raw_command", format!("GET item:{i}:price")),
                ("out.host", "redis.internal".into()),
                ("span.kind", "client".into()),
            ],
        },
        SpanDef {
            service: "shop",
            name: "requests.request",
            resource: "GET /prices".into(),
            kind: "http",
            meta: vec![
                (
                    "http.url",
                    format!("https://prices.example.com/prices?item={i}"),
                ),
                ("http.method", "GET".into()),
                ("http.status_code", "200".into()),
                ("span.kind", "client".into()),
            ],
        },
        SpanDef {
            service: "shop",
            name: "jinja2.render",
            resource: "items/show.html".into(),
            kind: "template",
            meta: vec![("jinja2.template_name", "items/show.html".into())],
        },
    ]
}

fn body(traces: usize, first_id: u64, now_ns: i64, literals: bool) -> Vec<u8> {
    let mut m = Mp(Vec::with_capacity(traces * 1500));
    m.arr(traces);
    for t in 0..traces {
        let trace_id = first_id + t as u64;
        let spans = trace_spans(trace_id, literals);
        m.arr(spans.len());
        for (j, s) in spans.iter().enumerate() {
            m.map(11);
            m.str("service");
            m.str(s.service);
            m.str("name");
            m.str(s.name);
            m.str("resource");
            m.str(&s.resource);
            m.str("type");
            m.str(s.kind);
            m.str("trace_id");
            m.u64(trace_id);
            m.str("span_id");
            m.u64(trace_id * 8 + j as u64 + 1);
            m.str("parent_id");
            m.u64(if j == 0 { 0 } else { trace_id * 8 + 1 });
            m.str("start");
            m.i64(now_ns - 20_000_000 + j as i64 * 1_000_000);
            m.str("duration");
            m.i64(if j == 0 { 15_000_000 } else { 2_000_000 });
            m.str("meta");
            m.map(s.meta.len());
            for (k, v) in &s.meta {
                m.str(k);
                m.str(v);
            }
            m.str("metrics");
            if j == 0 {
                m.map(3);
                m.str("_sampling_priority_v1");
                m.f64(1.0);
                m.str("_dd.top_level");
                m.f64(1.0);
                m.str("process_id");
                m.f64(4242.0);
            } else {
                m.map(0);
            }
        }
    }
    m.0
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn send(args: &[String]) {
    let port = u16::try_from(arg(args, "--port", 18301)).unwrap_or(18301);
    let rate = arg(args, "--rate", 10_000);
    let seconds = arg(args, "--seconds", 20);
    let pid = arg(args, "--server-pid", 0) as u32;
    let per_s = arg(args, "--requests-per-s", 10).max(1);
    let settle = Duration::from_millis(arg(args, "--settle-ms", 2500));
    let literals = arg(args, "--sql-literals", 0) != 0;
    let traces_per_request = ((rate / 5) / per_s).max(1) as usize;
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let requests = seconds * per_s;
    let mut spans = 0u64;
    let mut id = 1u64 << 40;
    for n in 0..requests {
        let due = start + Duration::from_secs_f64(n as f64 / per_s as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let b = body(traces_per_request, id, now_ns, literals);
        id += traces_per_request as u64;
        let head = format!(
            "PUT /v0.4/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/msgpack\r\nDatadog-Meta-Lang: python\r\nX-Datadog-Trace-Count: {traces_per_request}\r\nContent-Length: {}\r\n\r\n",
            b.len()
        );
        conn.write_all(head.as_bytes()).expect("send");
        conn.write_all(&b).expect("send");
        // Read the answer: status line, headers, body.
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                eprintln!("the server closed the connection");
                std::process::exit(1);
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut ans = vec![0; len];
        reader.read_exact(&mut ans).expect("answer");
        spans += traces_per_request as u64 * 5;
    }
    let sent_s = start.elapsed().as_secs_f64();
    std::thread::sleep(settle);
    let cpu = cpu_seconds(pid) - cpu0;
    println!(
        "{{\"spans\":{spans},\"seconds\":{sent_s:.3},\"cpu_s\":{cpu:.3},\"hwm_kib\":{},\"rss_kib\":{}}}",
        status_kib(pid, "VmHWM:"),
        status_kib(pid, "VmRSS:")
    );
}

fn dump(args: &[String]) {
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .expect("--out DIR");
    let requests = arg(args, "--requests", 20);
    let traces = ((arg(args, "--rate", 10_000) / 5) / 10).max(1) as usize;
    let literals = arg(args, "--sql-literals", 0) != 0;
    std::fs::create_dir_all(out).expect("mkdir");
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    for n in 0..requests {
        let b = body(traces, (1u64 << 40) + n * traces as u64, now_ns, literals);
        std::fs::write(format!("{out}/body-{n}.msgpack"), b).expect("write");
    }
}
