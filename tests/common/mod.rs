//! Shared integration-test harness: a real HTTP server on 127.0.0.1 that
//! stands in for the Datadog intake, and a builder that spawns the real
//! `dynostat` binary.
//!
//! Use from a test file with `mod common;`. Not every test file uses every
//! helper, hence the `dead_code` allowance.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod slug;

// The process side's harness owns these; the intake side uses the same.
#[path = "../fixtures/process/harness.rs"]
pub mod harness;
pub use harness::{bin, free_tcp_port, free_udp_port};

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One request the intake received, with its body decompressed.
#[derive(Debug, Clone)]
pub struct Request {
    /// `POST`, ...
    pub method: String,
    /// e.g. `/api/v2/series`.
    pub path: String,
    /// Header (lower-case name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// The `Content-Encoding` header, if any.
    pub encoding: Option<String>,
    /// The body after decompression.
    pub body: Vec<u8>,
    /// Bytes on the wire (compressed).
    pub wire_len: usize,
    /// The status the intake answered.
    pub status: u16,
    /// When it arrived (before any delay or hang).
    pub arrived: Instant,
}

impl Request {
    /// A header by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Whether the intake accepted it.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How the intake answers one request (see [`Intake::reply_next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer with this status.
    Status(u16),
    /// Answer with this status and a `Retry-After` header.
    RetryAfter(u16, String),
    /// Read the request, say nothing for this long, then accept it (202).
    /// The request is recorded when the answer goes out; if the client gave
    /// up before, it is still recorded as accepted, as a real intake would
    /// have kept it.
    Hang(Duration),
    /// Read the request, then reset the connection (TCP RST), no answer.
    Reset,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    script: VecDeque<Reply>,
    delay: Duration,
    max_body: Option<usize>,
    /// When each request arrived (before any delay or hang), in order.
    arrivals: Vec<Instant>,
}

/// A loopback stand-in for the Datadog intake: a small HTTP/1.1 server on a
/// raw `TcpListener` (keep-alive, one thread per connection), so it can also
/// hang, answer slowly, reset a connection, refuse large bodies and answer
/// `Retry-After`.
pub struct Intake {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Intake {
    /// Starts on a free port.
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Starts on `port` (0 = any free port). Used to bring an intake up late.
    pub fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the test intake");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
                            conns.push(thread::spawn(move || serve_conn(stream, &state, &stop)));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            })
        };
        Self {
            addr,
            state,
            stop,
            threads: vec![accept],
        }
    }

    /// The base URL to put in `DD_DD_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next requests get these statuses, in order; then 202 again.
    pub fn respond_next(&self, statuses: &[u16]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(statuses.iter().map(|s| Reply::Status(*s)));
    }

    /// The next requests get these replies, in order; then 202 again.
    pub fn reply_next(&self, replies: &[Reply]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(replies.iter().cloned());
    }

    /// Every request gets this status until changed (e.g. 403 for a wrong key).
    pub fn respond_always(&self, status: u16) {
        let mut s = self.state.lock().unwrap();
        s.script.clear();
        s.script
            .extend(std::iter::repeat_n(Reply::Status(status), 100_000));
    }

    /// Back to accepting everything at once.
    pub fn respond_normally(&self) {
        self.state.lock().unwrap().script.clear();
    }

    /// Each answer waits this long first (a slow intake).
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// A body larger than `bytes` on the wire (compressed) gets a 413.
    pub fn too_large_above(&self, bytes: usize) {
        self.state.lock().unwrap().max_body = Some(bytes);
    }

    /// Every request so far (recorded once answered), in the order they
    /// arrived: two connections answered after the same delay can be
    /// recorded the other way round.
    pub fn requests(&self) -> Vec<Request> {
        let mut all = self.state.lock().unwrap().requests.clone();
        all.sort_by_key(|r| r.arrived);
        all
    }

    /// When each request arrived, in order, including ones not answered yet.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.state.lock().unwrap().arrivals.clone()
    }

    /// Every `AgentPayload` in accepted `/api/v0.2/traces` requests, decoded
    /// with the same prost types the relay encodes with.
    pub fn agent_payloads(&self) -> Vec<libdd_trace_protobuf::pb::AgentPayload> {
        use prost::Message as _;
        self.requests()
            .iter()
            .filter(|r| r.accepted() && r.path == "/api/v0.2/traces")
            .map(|r| {
                assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
                libdd_trace_protobuf::pb::AgentPayload::decode(r.body.as_slice())
                    .expect("an AgentPayload")
            })
            .collect()
    }

    /// Every trace chunk delivered, in arrival order.
    pub fn trace_chunks(&self) -> Vec<libdd_trace_protobuf::pb::TraceChunk> {
        self.agent_payloads()
            .into_iter()
            .flat_map(|a| a.tracer_payloads)
            .flat_map(|t| t.chunks)
            .collect()
    }

    /// Every `StatsPayload` in accepted `/api/v0.2/stats` requests (msgpack).
    pub fn trace_stats(&self) -> Vec<libdd_trace_protobuf::pb::StatsPayload> {
        self.requests()
            .iter()
            .filter(|r| r.accepted() && r.path == "/api/v0.2/stats")
            .map(|r| {
                assert_eq!(r.header("content-type"), Some("application/msgpack"));
                rmp_serde::from_slice(&r.body).expect("a StatsPayload")
            })
            .collect()
    }

    /// The grouped stats delivered for `service` and operation `name`:
    /// (hits, errors, top-level hits), summed over buckets.
    pub fn stats_hits(&self, service: &str, name: &str) -> (u64, u64, u64) {
        let mut out = (0, 0, 0);
        for p in self.trace_stats() {
            for c in p.stats {
                for b in c.stats {
                    for g in b.stats {
                        if g.service == service && g.name == name {
                            out.0 += g.hits;
                            out.1 += g.errors;
                            out.2 += g.top_level_hits;
                        }
                    }
                }
            }
        }
        out
    }

    /// Every series object in accepted `/api/v2/series` payloads.
    pub fn series(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.accepted() && r.path == "/api/v2/series")
            .flat_map(|r| r.json()["series"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Every event in accepted `/intake/` payloads (the Agent's envelope:
    /// `{"events": {"<source type>": [event, ...]}}`), in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.accepted() && r.path == "/intake/")
            .flat_map(|r| {
                r.json()["events"]
                    .as_object()
                    .map(|groups| {
                        groups
                            .values()
                            .flat_map(|g| g.as_array().cloned().unwrap_or_default())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Accepted series named `metric`.
    pub fn series_named(&self, metric: &str) -> Vec<Value> {
        self.series()
            .into_iter()
            .filter(|s| s["metric"] == metric)
            .collect()
    }

    /// `(timestamp, value)` of every point of every accepted series named
    /// `metric` whose tags include every tag in `tags`, in arrival order.
    /// With `counts`, a RATE's (type 2) value is multiplied by its interval,
    /// so counters read as their count.
    pub fn points_where(&self, metric: &str, tags: &[&str], counts: bool) -> Vec<(i64, f64)> {
        self.series_named(metric)
            .iter()
            .filter(|s| has_tags(s, tags))
            .flat_map(|s| {
                let scale = if counts && s["type"] == 2 {
                    s["interval"].as_f64().unwrap_or(1.0)
                } else {
                    1.0
                };
                s["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p["timestamp"].as_i64().unwrap(),
                            p["value"].as_f64().unwrap() * scale,
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The sum of the point values of all accepted series named `metric`
    /// whose tags include every tag in `tags`, multiplied by each series'
    /// interval when it is a RATE (type 2), so counters add up to their count.
    pub fn total(&self, metric: &str, tags: &[&str]) -> f64 {
        self.points_where(metric, tags, true)
            .iter()
            .map(|p| p.1)
            .sum()
    }

    /// Every sketch in accepted `/api/beta/sketches` payloads, decoded by the
    /// test's own protobuf reader ([`decode_sketch_payload`]).
    pub fn sketches(&self) -> Vec<SketchOut> {
        self.requests()
            .iter()
            .filter(|r| r.accepted() && r.path == "/api/beta/sketches")
            .flat_map(|r| decode_sketch_payload(&r.body))
            .collect()
    }

    /// Every metric name at the intake, series and sketches, sorted, once each.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .series()
            .iter()
            .filter_map(|s| s["metric"].as_str().map(str::to_owned))
            .chain(self.sketches().into_iter().map(|s| s.metric))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Accepted sketches named `metric`.
    pub fn sketches_named(&self, metric: &str) -> Vec<SketchOut> {
        self.sketches()
            .into_iter()
            .filter(|s| s.metric == metric)
            .collect()
    }

    /// Polls until `pred` holds for the requests so far, or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&Intake) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(self) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        pred(self)
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sleeps `d`, waking early when `stop` is set.
fn sleep_unless(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(10).min(end.saturating_duration_since(Instant::now())));
    }
}

/// One parsed request head and body.
struct RawRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// One read from `stream` appended to `buf`: `Some` when there may be more
/// (including a read timeout, so the caller can poll its stop flag), `None`
/// at EOF or on an error.
fn read_some(stream: &mut TcpStream, chunk: &mut [u8], buf: &mut Vec<u8>) -> Option<()> {
    match stream.read(chunk) {
        Ok(0) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Some(())
        }
        Err(_) => None,
    }
}

/// Reads one HTTP/1.1 request (Content-Length bodies) from `stream`,
/// polling `stop`. `None` at EOF, on garbage, or when stopped.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
) -> Option<RawRequest> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 || stop.load(Ordering::Relaxed) {
            return None;
        }
        read_some(stream, &mut chunk, buf)?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?.to_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        read_some(stream, &mut chunk, buf)?;
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some(RawRequest {
        method,
        target,
        headers,
        body,
    })
}

/// Resets `stream` (SO_LINGER 0, then close: the peer sees a RST).
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket we own, with a plain struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

fn serve_conn(mut stream: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf, stop) {
        let encoding = req
            .headers
            .iter()
            .find(|(k, _)| k == "content-encoding")
            .map(|(_, v)| v.clone());
        let (arrived, reply, delay) = {
            let mut s = state.lock().unwrap();
            // Stamped under the lock that hands out the script's next reply,
            // so arrival order is the order replies were given.
            let arrived = Instant::now();
            s.arrivals.push(arrived);
            let too_large = s.max_body.is_some_and(|m| req.body.len() > m);
            let reply = if too_large {
                Reply::Status(413)
            } else {
                s.script.pop_front().unwrap_or(Reply::Status(202))
            };
            (arrived, reply, s.delay)
        };
        if !delay.is_zero() {
            sleep_unless(delay, stop);
        }
        let (status, retry_after) = match &reply {
            Reply::Status(s) => (*s, None),
            Reply::RetryAfter(s, v) => (*s, Some(v.clone())),
            Reply::Hang(d) => {
                sleep_unless(*d, stop);
                (202, None)
            }
            Reply::Reset => (0, None),
        };
        // A path in absolute form (through a forward proxy) is cut to its path.
        let path = req
            .target
            .split_once("://")
            .map_or(req.target.as_str(), |(_, rest)| {
                rest.find('/').map_or("/", |i| &rest[i..])
            })
            .split('?')
            .next()
            .unwrap_or("")
            .to_owned();
        let record = Request {
            method: req.method,
            path,
            body: if status == 0 {
                Vec::new()
            } else {
                decode(encoding.as_deref(), &req.body)
            },
            headers: req.headers,
            encoding,
            wire_len: req.body.len(),
            status,
            arrived,
        };
        // Record before answering, so a client that sees the answer sees the record.
        state.lock().unwrap().requests.push(record);
        if status == 0 {
            reset(stream);
            return;
        }
        let answer = if (200..300).contains(&status) {
            r#"{"errors":[]}"#
        } else {
            r#"{"errors":["test intake says no"]}"#
        };
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            answer.len()
        );
        if let Some(v) = retry_after {
            head.push_str(&format!("Retry-After: {v}\r\n"));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).is_err()
            || stream.write_all(answer.as_bytes()).is_err()
        {
            return;
        }
    }
}

/// Request lines a proxy saw, each with its `Proxy-Authorization`.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A loopback HTTP proxy: `CONNECT host:port` tunnels, and absolute-form
/// requests (`POST http://host:port/path`) are passed to their host. It
/// records each request line and its `Proxy-Authorization`, if any.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Seen,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts on a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
                            thread::spawn(move || proxy_conn(stream, &seen, &stop));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Each request line the proxy saw (`CONNECT 127.0.0.1:1234 HTTP/1.1`,
    /// `POST http://… HTTP/1.1`) with its `Proxy-Authorization`.
    pub fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn proxy_conn(
    mut client: TcpStream,
    seen: &Mutex<Vec<(String, Option<String>)>>,
    stop: &AtomicBool,
) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match client.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let line = head.lines().next().unwrap_or("").to_owned();
    let auth = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned());
    seen.lock().unwrap().push((line.clone(), auth));
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let host = if method == "CONNECT" {
        target.to_owned()
    } else {
        let rest = target.split_once("://").map_or(target, |(_, r)| r);
        rest.split('/').next().unwrap_or("").to_owned()
    };
    let Ok(mut upstream) = TcpStream::connect(&host) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if method == "CONNECT" {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
        buf.drain(..head_end);
    }
    // Whatever was read so far goes first; then bytes flow both ways.
    if upstream.write_all(&buf).is_err() {
        return;
    }
    let _ = upstream.set_read_timeout(Some(Duration::from_millis(50)));
    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let pipe = |from: &mut TcpStream, to: &mut TcpStream| {
        let mut chunk = [0u8; 16 * 1024];
        while !stop.load(Ordering::Relaxed) {
            match from.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    };
    thread::scope(|s| {
        s.spawn(|| pipe(&mut client, &mut upstream));
        s.spawn(|| pipe(&mut u2, &mut c2));
    });
}

/// One `SketchPayload.Sketch` as the intake would read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SketchOut {
    pub metric: String,
    pub host: String,
    pub tags: Vec<String>,
    pub dogsketches: Vec<DogsketchOut>,
    /// `metadata.origin`: (product, category, service).
    pub origin: (u64, u64, u64),
}

/// One `Dogsketch`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DogsketchOut {
    pub ts: i64,
    pub cnt: i64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub sum: f64,
    pub k: Vec<i32>,
    pub n: Vec<u32>,
}

/// A minimal protobuf wire reader, written from the agent-payload schema
/// independently of the binary's prost definitions, so that a wrong field
/// number or type in the binary shows up here.
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().expect("truncated varint");
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint too long")
    }

    fn bytes(&mut self) -> &'a [u8] {
        let n = usize::try_from(self.varint()).unwrap();
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }

    fn fixed64(&mut self) -> u64 {
        let (a, b) = self.0.split_at(8);
        self.0 = b;
        u64::from_le_bytes(a.try_into().unwrap())
    }

    /// `(field, wire type)`, or `None` at the end.
    fn key(&mut self) -> Option<(u64, u64)> {
        if self.0.is_empty() {
            return None;
        }
        let k = self.varint();
        Some((k >> 3, k & 7))
    }

    fn skip(&mut self, wire: u64) {
        match wire {
            0 => {
                self.varint();
            }
            1 => {
                self.fixed64();
            }
            2 => {
                self.bytes();
            }
            5 => self.0 = &self.0[4..],
            w => panic!("unknown wire type {w}"),
        }
    }
}

fn zigzag32(v: u64) -> i32 {
    let v = u32::try_from(v).expect("sint32 fits 32 bits");
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

/// Decodes a `SketchPayload`: sketches = 1 (Sketch: metric 1, host 2, tags 4,
/// dogsketches 7 (Dogsketch: ts 1, cnt 2, min 3, max 4, avg 5, sum 6,
/// k 7 packed sint32, n 8 packed uint32), metadata 8 (origin 1: product 4,
/// category 5, service 6)). Panics on malformed input.
pub fn decode_sketch_payload(body: &[u8]) -> Vec<SketchOut> {
    let mut out = Vec::new();
    let mut w = Wire(body);
    while let Some((field, wire)) = w.key() {
        if (field, wire) != (1, 2) {
            w.skip(wire);
            continue;
        }
        let mut s = SketchOut::default();
        let mut m = Wire(w.bytes());
        while let Some((field, wire)) = m.key() {
            match (field, wire) {
                (1, 2) => s.metric = String::from_utf8(m.bytes().to_vec()).unwrap(),
                (2, 2) => s.host = String::from_utf8(m.bytes().to_vec()).unwrap(),
                (4, 2) => s.tags.push(String::from_utf8(m.bytes().to_vec()).unwrap()),
                (7, 2) => {
                    let mut d = DogsketchOut::default();
                    let mut x = Wire(m.bytes());
                    while let Some((field, wire)) = x.key() {
                        match (field, wire) {
                            (1, 0) => d.ts = x.varint() as i64,
                            (2, 0) => d.cnt = x.varint() as i64,
                            (3, 1) => d.min = f64::from_bits(x.fixed64()),
                            (4, 1) => d.max = f64::from_bits(x.fixed64()),
                            (5, 1) => d.avg = f64::from_bits(x.fixed64()),
                            (6, 1) => d.sum = f64::from_bits(x.fixed64()),
                            (7, 2) => {
                                let mut p = Wire(x.bytes());
                                while !p.0.is_empty() {
                                    d.k.push(zigzag32(p.varint()));
                                }
                            }
                            (8, 2) => {
                                let mut p = Wire(x.bytes());
                                while !p.0.is_empty() {
                                    d.n.push(u32::try_from(p.varint()).unwrap());
                                }
                            }
                            (f, w) => panic!("unexpected Dogsketch field {f} (wire type {w})"),
                        }
                    }
                    s.dogsketches.push(d);
                }
                (8, 2) => {
                    // Metadata { origin = 1: Origin { product 4, category 5, service 6 } }
                    let mut md = Wire(m.bytes());
                    while let Some((field, wire)) = md.key() {
                        if (field, wire) != (1, 2) {
                            panic!("unexpected Metadata field {field} (wire type {wire})");
                        }
                        let mut o = Wire(md.bytes());
                        while let Some((field, wire)) = o.key() {
                            match (field, wire) {
                                (4, 0) => s.origin.0 = o.varint(),
                                (5, 0) => s.origin.1 = o.varint(),
                                (6, 0) => s.origin.2 = o.varint(),
                                (f, w) => panic!("unexpected Origin field {f} (wire type {w})"),
                            }
                        }
                    }
                }
                (f, w) => panic!("unexpected Sketch field {f} (wire type {w})"),
            }
        }
        out.push(s);
    }
    out
}

/// The value a sketch key stands for, with the Agent's parameters (gamma
/// 1 + 2/128, bias 1338), for reading quantiles in tests.
pub fn sketch_key_value(k: i32) -> f64 {
    let gamma: f64 = 1.0 + 2.0 / 128.0;
    match k {
        0 => 0.0,
        k if k < 0 => -sketch_key_value(-k),
        k => gamma.powi(k - 1338),
    }
}

/// Whether a series JSON object carries every tag in `tags`.
pub fn has_tags(series: &Value, tags: &[&str]) -> bool {
    let have: Vec<&str> = series["tags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    tags.iter().all(|t| have.contains(t))
}

fn decode(encoding: Option<&str>, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let ok = match encoding {
        Some("gzip") => flate2::read::GzDecoder::new(raw)
            .read_to_end(&mut out)
            .is_ok(),
        Some("deflate") => flate2::read::ZlibDecoder::new(raw)
            .read_to_end(&mut out)
            .is_ok(),
        Some(other) => panic!("the intake does not know Content-Encoding {other}"),
        None => {
            out.extend_from_slice(raw);
            true
        }
    };
    assert!(ok, "body does not decode as {encoding:?}");
    out
}

/// Waits, when the next wall-clock multiple of `interval_s` is less than
/// `need` away, until just past it. Buckets end at those multiples (as the
/// Agent's do), so a test that wants one bucket for its whole run starts
/// clear of one: a 3600 s interval still ends at the top of the hour. Waits
/// at most `need` plus 50 ms.
pub fn clear_of_flush_boundary(interval_s: u64, need: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let interval = Duration::from_secs(interval_s);
    let into = Duration::from_nanos(u64::try_from(now.as_nanos() % interval.as_nanos()).unwrap());
    let left = interval - into;
    if left < need {
        std::thread::sleep(left + Duration::from_millis(50));
    }
}

/// Builds a `dynostat serve` process with a clean DD_* environment.
pub struct ServeBuilder {
    envs: Vec<(String, String)>,
    port: u16,
    dir: Option<std::path::PathBuf>,
    apm_port: u16,
}

impl ServeBuilder {
    /// Sets a variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Runs it in `dir` (the app's directory on a dyno).
    pub fn current_dir(mut self, dir: &std::path::Path) -> Self {
        self.dir = Some(dir.to_owned());
        self
    }

    /// Forwards to `intake` with a test key (metrics, traces, and the
    /// trace relay's telemetry and profiling proxies).
    pub fn intake(self, intake: &Intake) -> Self {
        self.env("DD_DD_URL", &intake.url())
            .env("DD_APM_DD_URL", &intake.url())
            .env("DD_APM_TELEMETRY_DD_URL", &intake.url())
            .env(
                "DD_APM_PROFILING_DD_URL",
                &format!("{}/api/v2/profile", intake.url()),
            )
            .env("DD_API_KEY", "test-key-0123456789abcdef")
    }

    /// Spawns and waits until it says it is listening.
    pub fn start(self) -> Serve {
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("DD_")
                || k.starts_with("DYNOSTAT_")
                || k.to_ascii_uppercase().ends_with("_PROXY")
                || k == "DYNO"
                || k == "HEROKU_APP_NAME"
            {
                cmd.env_remove(k);
            }
        }
        // Most tests read dynostat's own counters at the intake; a test of
        // the default (nothing but `dynostat.dropped`) sets it to false.
        cmd.env("DD_DOGSTATSD_PORT", self.port.to_string())
            .env("DD_DOGSTATSD_STATS_ENABLE", "true")
            // Never the default 8126: tests run side by side.
            .env("DD_APM_RECEIVER_PORT", self.apm_port.to_string())
            .env("DYNOSTAT_FLUSH_INTERVAL", "1")
            .env("DYNOSTAT_SHUTDOWN_GRACE", "0.3");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().expect("spawn dynostat serve");
        let mut serve = Serve::attach(child, self.port);
        serve.apm_port = self.apm_port;
        serve
    }
}

/// A running `dynostat serve` (or any dynostat process whose output we read).
pub struct Serve {
    /// The child.
    pub child: Child,
    /// Its UDP port.
    pub port: u16,
    /// Its trace relay's TCP port (from the builder; 0 otherwise).
    pub apm_port: u16,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    sender: UdpSocket,
}

impl Serve {
    /// A builder on a fresh port.
    pub fn builder() -> ServeBuilder {
        ServeBuilder {
            envs: Vec::new(),
            port: free_udp_port(),
            dir: None,
            apm_port: free_tcp_port(),
        }
    }

    /// Wraps a spawned child with piped stdout/stderr and waits for "listening".
    pub fn attach(mut child: Child, port: u16) -> Self {
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        pump(
            child.stdout.take().expect("piped stdout"),
            Arc::clone(&stdout),
        );
        pump(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&stderr),
        );
        let s = Self {
            child,
            port,
            apm_port: 0,
            stdout,
            stderr,
            sender: UdpSocket::bind("127.0.0.1:0").unwrap(),
        };
        assert!(
            s.wait_stderr(Duration::from_secs(20), "listening"),
            "dynostat did not start listening; stderr:\n{}",
            s.stderr()
        );
        s
    }

    /// Sends one datagram to the listener.
    pub fn send(&self, datagram: &[u8]) {
        self.sender
            .send_to(datagram, ("127.0.0.1", self.port))
            .expect("send UDP");
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Polls stderr for `needle`.
    pub fn wait_stderr(&self, timeout: Duration, needle: &str) -> bool {
        wait(timeout, || self.stderr().contains(needle))
    }

    /// Polls stdout for `needle`.
    pub fn wait_stdout(&self, timeout: Duration, needle: &str) -> bool {
        wait(timeout, || self.stdout().contains(needle))
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let pid = i32::try_from(self.child.id()).unwrap();
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Sends SIGTERM and asserts a clean exit within `timeout` (the last
    /// flush is then in), with the server's stderr if it was not.
    pub fn stop_ok(&mut self, timeout: Duration) {
        self.signal(libc::SIGTERM);
        assert!(
            self.wait_exit(timeout).is_some_and(|st| st.success()),
            "stderr:\n{}",
            self.stderr()
        );
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the pumps catch the last output.
                thread::sleep(Duration::from_millis(100));
                return Some(st);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn vm_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        let line = status
            .lines()
            .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        let kb: u64 = line[field.len() + 1..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("a number of kB");
        kb * 1024
    }

    /// Polls `VmHWM` every 20 ms in a thread until the process exits (its
    /// status no longer lists it) or the handle is stopped; the highest
    /// value read, in bytes.
    pub fn watch_hwm(&self) -> HwmWatch {
        let pid = self.child.id();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut max = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(v) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                            l[6..]
                                .trim()
                                .trim_end_matches("kB")
                                .trim()
                                .parse::<u64>()
                                .ok()
                        })
                    })
                else {
                    break;
                };
                max = max.max(v * 1024);
                thread::sleep(Duration::from_millis(20));
            }
            max
        });
        HwmWatch { stop, thread }
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// See [`Serve::watch_hwm`].
pub struct HwmWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<u64>,
}

impl HwmWatch {
    /// Stops watching (or waits for the exit already seen) and returns the
    /// highest `VmHWM` read.
    pub fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel's `(rx_queue bytes, drops)` for the IPv4 UDP socket bound to
/// `port`, from `/proc/net/udp`; `None` when no such socket is listed.
pub fn udp_socket_queue(port: u16) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let want = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f.get(1)?.ends_with(&want) {
            return None;
        }
        let rx = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
        let drops = f.last()?.parse().ok()?;
        Some((rx, drops))
    })
}

/// Waits (up to 10 s) until the listener's socket on `port` holds less than
/// `bytes` unread, so a flood can be paced to what the listener reads
/// instead of to the clock.
pub fn wait_for_udp_queue_below(port: u16, bytes: u64) {
    wait(Duration::from_secs(10), || {
        udp_socket_queue(port).is_none_or(|(rx, _)| rx < bytes)
    });
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn pump(reader: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => into.lock().unwrap().push_str(&line),
            }
        }
    });
}
