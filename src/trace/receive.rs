//! Receive: the trace-agent's HTTP API on 127.0.0.1:`DD_APM_RECEIVER_PORT`
//! (and `DD_APM_RECEIVER_SOCKET`), answered as pkg/trace/api answers it.
//!
//! | path | what happens |
//! |---|---|
//! | `/v0.3/traces`, `/v0.4/traces`, `/v0.5/traces` (PUT, POST) | decode, process, sample; answer `rate_by_service` (v0.3: `OK`) |
//! | `/v0.6/stats` (PUT, POST) | the tracer's own stats, forwarded |
//! | `/info` | what is served here, and nothing else |
//! | `/telemetry/proxy/…` | proxied to `DD_APM_TELEMETRY_DD_URL`, key added |
//! | `/profiling/v1/input` | proxied to `DD_APM_PROFILING_DD_URL`, key added |
//! | `/evp_proxy/v2/…` to `/v4/…` | proxied to `<X-Datadog-EVP-Subdomain>.$DD_SITE`, key added |
//! | `/dogstatsd/v2/proxy` | DogStatsD lines into the aggregator |
//! | anything else, `/v0.7/config` included | 404 at once |
//!
//! Statuses as the Agent's: 400 for a body that does not decode, 413 for
//! one over the limit (refused from its `Content-Length`, before it is
//! read), 429 at the memory ceiling when the tracer sent
//! `Datadog-Send-Real-Http-Status` (otherwise 200 with the rates, the drop
//! counted), 405 for other methods.
//!
//! Must never: read a body past the limit, hold a request's body beyond its
//! handling, or answer a proxy with the API key in it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::process::Tracer;
use super::{Core, Meter, Refused};
use crate::config::Config;
use crate::dogstatsd::stats::Stats;

/// Longest wait for a proxied request's answer.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);
/// Answer bytes passed back from a proxied request.
const MAX_PROXY_ANSWER: usize = 64 * 1024;
/// Headers a proxied request keeps (the rest, cookies included, stay here).
const PROXY_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "dd-telemetry-api-version",
    "dd-telemetry-request-type",
    "dd-telemetry-debug-enabled",
    "dd-client-library-language",
    "dd-client-library-version",
    "dd-evp-origin",
    "dd-evp-origin-version",
    "dd-request-id",
    "x-datadog-additional-tags",
];

/// The endpoints `/info` lists: exactly what [`route`] serves.
const ENDPOINTS: &[&str] = &[
    "/v0.3/traces",
    "/v0.4/traces",
    "/v0.5/traces",
    "/v0.6/stats",
    "/telemetry/proxy/",
    "/profiling/v1/input",
    "/evp_proxy/v2/",
    "/evp_proxy/v3/",
    "/evp_proxy/v4/",
    "/dogstatsd/v2/proxy",
    "/info",
];

type Answer = Response<Full<Bytes>>;

/// The `/info` body.
pub fn info_json(config: &Config) -> String {
    serde_json::json!({
        "version": concat!("dynostat-", env!("CARGO_PKG_VERSION")),
        "endpoints": ENDPOINTS,
        // We take /v0.6/stats, so tracers computing stats may drop P0s.
        "client_drop_p0s": true,
        "span_meta_structs": true,
        "long_running_spans": false,
        "evp_proxy_allowed_headers": PROXY_HEADERS,
        "config": {
            "default_env": config.trace.env.clone().unwrap_or_default(),
            "target_tps": config.trace.max_tps,
            "max_eps": 0,
            "receiver_port": config.trace.port,
            "receiver_socket": config.trace.socket.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "connection_limit": 0,
            "receiver_timeout": 0,
            // What is refused with a 413: 25 MB, or the relay's share if less.
            "max_request_bytes": super::MAX_BODY_BYTES
                .min(crate::config::TraceConfig::memory_bytes(config.memory_limit)),
            "statsd_port": config.port,
            "max_memory": 0,
            "max_cpu": 0,
            "analyzed_spans_by_service": {},
            "obfuscation": {
                "elastic_search": true, "mongo": true, "sql_exec_plan": false,
                "sql_exec_plan_normalize": false,
                "http": {"remove_query_string": false, "remove_path_digits": false},
                "remove_stack_traces": false,
                "redis": {"Enabled": true, "RemoveAllArgs": false},
                "memcached": {"Enabled": true, "KeepCommand": false}
            }
        },
        "peer_tags": []
    })
    .to_string()
}

/// Serves one connection (HTTP/1.1, keep-alive) as a task on the relay's runtime.
pub fn serve_connection<S>(core: Arc<Core>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let core = Arc::clone(&core);
            async move {
                core.active.fetch_add(1, Ordering::AcqRel);
                let answer = route(&core, req).await;
                core.active.fetch_sub(1, Ordering::AcqRel);
                Ok::<_, Infallible>(answer)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
}

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &'static str) -> Answer {
    answer(status, "text/plain; charset=utf-8", body)
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A header the Agent reads as a flag: set, and not `false` or `0`.
fn flag(req: &Request<Incoming>, name: &str) -> bool {
    let v = header(req, name).trim();
    !v.is_empty() && !v.eq_ignore_ascii_case("false") && v != "0"
}

async fn route(core: &Core, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/v0.3/traces" | "/v0.4/traces" | "/v0.5/traces" => traces(core, req, &path).await,
        "/v0.6/stats" => client_stats(core, req).await,
        "/info" => answer(StatusCode::OK, "application/json", core.info.clone()),
        "/profiling/v1/input" => {
            let url = core.config.profiling_url.clone();
            proxy(core, req, url).await
        }
        "/dogstatsd/v2/proxy" => dogstatsd(core, req).await,
        p if p.starts_with("/telemetry/proxy/") => {
            let rest = &p["/telemetry/proxy".len()..];
            let url = format!("{}{rest}{}", core.config.telemetry_url, query(&req));
            proxy(core, req, url).await
        }
        p if p.starts_with("/evp_proxy/v2/")
            || p.starts_with("/evp_proxy/v3/")
            || p.starts_with("/evp_proxy/v4/") =>
        {
            let rest = &p["/evp_proxy/v2".len()..];
            let sub = header(&req, "x-datadog-evp-subdomain");
            if sub.is_empty()
                || !sub
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return text(
                    StatusCode::BAD_REQUEST,
                    "missing or invalid X-Datadog-EVP-Subdomain header\n",
                );
            }
            let base = match &core.config.evp_url {
                Some(u) => u.clone(),
                None => format!("https://{sub}.{}", core.config.site),
            };
            let url = format!("{base}{rest}{}", query(&req));
            proxy(core, req, url).await
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn query(req: &Request<Incoming>) -> String {
    req.uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default()
}

/// Reads a body of at most `limit` bytes; `Err(answer)` when it is larger
/// (from its `Content-Length`, before reading it) or the connection fails.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Answer> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        ));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        )),
        Err(_) => Err(text(StatusCode::BAD_REQUEST, "could not read the body\n")),
    }
}

fn declared_len(req: &Request<Incoming>) -> Option<usize> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
}

/// Appends a body of at most `limit` bytes to `buf`; `Err(answer)` when it
/// is larger or the connection fails. Each frame is copied and dropped
/// before the next is read, so hyper reads the next one into the same
/// buffer instead of a fresh one (frames held until the body is whole
/// share hyper's buffer, which it must then replace).
async fn read_body_into(
    req: Request<Incoming>,
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<(), Answer> {
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(text(StatusCode::BAD_REQUEST, "could not read the body\n"));
        };
        if let Ok(data) = frame.into_data() {
            if data.len() > limit.saturating_sub(buf.len()) {
                return Err(text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large\n",
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(())
}

/// Counts a traces body that was not read whole: its traces when it was
/// too large, else one payload error.
fn count_unread(core: &Core, a: &Answer, count: u64) {
    if a.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Stats::add(&core.stats.traces_memory, count);
    } else {
        Stats::add(&core.stats.trace_payload_errors, 1);
    }
}

/// A traces body: read into a buffer of its declared size, or collected.
enum Body {
    Sized(Vec<u8>),
    Chunked(Bytes),
}

impl Body {
    fn as_slice(&self) -> &[u8] {
        match self {
            Body::Sized(b) => b,
            Body::Chunked(b) => b,
        }
    }
}

/// One request body's buffer kept for the next traces request: a fresh one
/// of hundreds of kB a request costs a mapping, a page fault per 4 KiB and
/// an unmap (glibc maps allocations past 64 KiB on their own, see
/// `serve::memory`). Charged to the meter while it is kept (its capacity),
/// kept only while the meter is less than half full and the buffer at most
/// an eighth of the share, and given up at the trace flush when no request
/// took it since the one before.
#[derive(Debug, Default)]
pub struct BodyPool {
    spare: Mutex<Option<Vec<u8>>>,
    taken: AtomicBool,
}

impl BodyPool {
    fn slot(&self) -> MutexGuard<'_, Option<Vec<u8>>> {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The spare buffer (empty), or a new one; the spare's charge, its
    /// capacity, is the caller's from now on.
    fn take(&self) -> Vec<u8> {
        self.taken.store(true, Ordering::Relaxed);
        self.slot().take().unwrap_or_default()
    }

    /// Gives back a buffer charged `charged` bytes (at least its capacity):
    /// kept as the spare, charged its capacity, or freed and released.
    fn put(&self, meter: &Meter, mut buf: Vec<u8>, charged: usize) {
        buf.clear();
        let cap = buf.capacity();
        let others = meter.used().saturating_sub(charged);
        let keep = cap > 0
            && cap <= charged
            && cap <= meter.limit() / 8
            && others.saturating_add(cap) <= meter.limit() / 2;
        let mut slot = self.slot();
        if keep && slot.is_none() {
            *slot = Some(buf);
            drop(slot);
            meter.release(charged - cap);
        } else {
            drop(slot);
            drop(buf);
            meter.release(charged);
        }
    }

    /// At the trace flush: frees the spare if no request took it since the
    /// last call.
    pub fn release_idle(&self, meter: &Meter) {
        if !self.taken.swap(false, Ordering::Relaxed) {
            self.free(meter);
        }
    }

    /// Frees the spare and releases its charge.
    pub fn free(&self, meter: &Meter) {
        let spare = self.slot().take();
        if let Some(buf) = spare {
            let cap = buf.capacity();
            drop(buf);
            meter.release(cap);
        }
    }
}

async fn traces(core: &Core, req: Request<Incoming>, path: &str) -> Answer {
    if req.method() != Method::PUT && req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let s = &core.stats;
    let v05 = path == "/v0.5/traces";
    let v03 = path == "/v0.3/traces";
    let real_status = flag(&req, "datadog-send-real-http-status");
    let tracer = Tracer {
        lang: header(&req, "datadog-meta-lang").to_owned(),
        lang_version: header(&req, "datadog-meta-lang-version").to_owned(),
        tracer_version: header(&req, "datadog-meta-tracer-version").to_owned(),
        container_id: header(&req, "datadog-container-id").to_owned(),
        computed_top_level: flag(&req, "datadog-client-computed-top-level"),
        computed_stats: flag(&req, "datadog-client-computed-stats"),
    };
    // The body is charged before it is read: its declared length, or what
    // is left of the share when it is chunked (charged exactly once read).
    let declared = declared_len(&req);
    // What the tracer says it sent, counted when the body is refused unread.
    // A trace takes at least one byte of msgpack, so no more are counted
    // than the body could hold: a bogus header cannot inflate
    // `dynostat.dropped` (or wrap its counter).
    let count: u64 = header(&req, "x-datadog-trace-count")
        .trim()
        .parse::<u64>()
        .unwrap_or(0)
        .min(declared.unwrap_or(core.body_limit).min(core.body_limit) as u64);
    if declared.is_some_and(|n| n > core.body_limit) {
        Stats::add(&s.traces_memory, count);
        return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    let (body, charged) = match declared {
        Some(declared) => {
            // Read into one buffer of the declared size (the spare one when
            // it is free), charged before it is read: what it holds, never
            // less than its capacity.
            let mut buf = core.bodies.take();
            let spare = buf.capacity();
            // As if the spare were not there: the body must fit beside what
            // else is charged (kept traces may have forced the meter past
            // its limit).
            let fits = core
                .meter
                .used()
                .saturating_sub(spare)
                .saturating_add(declared)
                <= core.meter.limit();
            let charged = if fits && (declared <= spare || core.meter.try_charge(declared - spare))
            {
                declared.max(spare)
            } else {
                drop(buf);
                core.meter.release(spare);
                buf = Vec::new();
                if !core.meter.try_charge(declared) {
                    return over_ceiling(core, count, real_status, v03);
                }
                declared
            };
            buf.reserve_exact(declared);
            if let Err(a) = read_body_into(req, declared, &mut buf).await {
                core.bodies.put(&core.meter, buf, charged);
                count_unread(core, &a, count);
                return a;
            }
            (Body::Sized(buf), charged)
        }
        None => {
            // Chunked (rare): collected, then charged; the spare is freed
            // so the limit is what it would be without it.
            core.bodies.free(&core.meter);
            if !core.meter.try_charge(0) {
                return over_ceiling(core, count, real_status, v03);
            }
            let limit = core.body_limit.min(core.meter.available());
            let body = match read_body(req, limit).await {
                Ok(b) => b,
                Err(a) => {
                    count_unread(core, &a, count);
                    return a;
                }
            };
            if !core.meter.try_charge(body.len()) {
                return over_ceiling(core, count, real_status, v03);
            }
            let charged = body.len();
            (Body::Chunked(body), charged)
        }
    };
    let result = core.ingest(v05, body.as_slice(), &tracer);
    match body {
        Body::Sized(buf) => core.bodies.put(&core.meter, buf, charged),
        Body::Chunked(bytes) => {
            drop(bytes);
            core.meter.release(charged);
        }
    }
    match result {
        Ok(flush_now) => {
            if flush_now {
                core.flush_traces().await;
            }
            rates(core, v03)
        }
        Err(Refused::Memory) => over_ceiling(core, count, real_status, v03),
        Err(Refused::Malformed(e)) => {
            Stats::add(&s.trace_payload_errors, 1);
            log_bad_payload(&e);
            answer(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            )
        }
    }
}

/// At most one log line per this period for undecodable payloads.
const BAD_PAYLOAD_LOG_EVERY: Duration = Duration::from_secs(10);

fn log_bad_payload(e: &super::decode::DecodeError) {
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() > BAD_PAYLOAD_LOG_EVERY) {
        *last = Some(Instant::now());
        tracing::warn!(error = %e, "refused a traces payload that does not decode (HTTP 400; counted in dynostat.traces.payload_errors)");
    }
}

fn rates(core: &Core, v03: bool) -> Answer {
    if v03 {
        return text(StatusCode::OK, "OK\n");
    }
    let body = core.lock().sampler.rates_json(Instant::now());
    answer(StatusCode::OK, "application/json", body)
}

/// The memory share is full: the Agent's answer is 429 for tracers that
/// asked for real statuses (they retry), else 200 (the traces are lost);
/// either way the traces are counted.
fn over_ceiling(core: &Core, count: u64, real_status: bool, v03: bool) -> Answer {
    Stats::add(&core.stats.traces_memory, count);
    if real_status {
        text(StatusCode::TOO_MANY_REQUESTS, "too many requests\n")
    } else {
        rates(core, v03)
    }
}

async fn client_stats(core: &Core, req: Request<Incoming>) -> Answer {
    if req.method() != Method::PUT && req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let limit = core.body_limit.min(core.meter.available());
    let body = match read_body(req, limit).await {
        Ok(b) => b,
        Err(a) => {
            Stats::add(&core.stats.trace_stats_errors, 1);
            return a;
        }
    };
    // rmp_serde makes a struct of each map or array: what that may take is
    // charged before it decodes (a body of empty groups is ~25 times its size).
    let held = match super::decode::heap_bound(
        &body,
        std::mem::size_of::<libdd_trace_protobuf::pb::ClientGroupedStats>(),
    ) {
        Ok(n) => n.saturating_add(body.len()),
        Err(_) => {
            Stats::add(&core.stats.trace_stats_errors, 1);
            return text(
                StatusCode::BAD_REQUEST,
                "could not decode the stats payload\n",
            );
        }
    };
    if !core.meter.try_charge(held) {
        Stats::add(&core.stats.trace_stats_errors, 1);
        return text(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
    }
    let env = core.config.env.clone().unwrap_or_default();
    let decoded = super::stats::decode_client(&body, &core.hostname, &env);
    drop(body);
    let answer = match decoded {
        Some(p) => {
            core.send_stats(vec![p], true).await;
            text(StatusCode::OK, "OK\n")
        }
        None => {
            Stats::add(&core.stats.trace_stats_errors, 1);
            text(
                StatusCode::BAD_REQUEST,
                "could not decode the stats payload\n",
            )
        }
    };
    core.meter.release(held);
    answer
}

async fn dogstatsd(core: &Core, req: Request<Incoming>) -> Answer {
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    // Bounded by the relay's share too: the body is held while it is parsed.
    let limit = (8 * 1024 * 1024).min(core.meter.available());
    match read_body(req, limit).await {
        Ok(body) => {
            let n = body.len();
            if !core.meter.try_charge(n) {
                Stats::add(&core.stats.trace_proxy_errors, 1);
                return text(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
            }
            (core.dogstatsd)(&body);
            core.meter.release(n);
            text(StatusCode::OK, "")
        }
        Err(a) => {
            Stats::add(&core.stats.trace_proxy_errors, 1);
            a
        }
    }
}

/// Passes a request on to an intake with the API key added, and its answer
/// back. Without an API key nothing is sent and the tracer gets a 200, as
/// it would from an Agent with nowhere to send.
async fn proxy(core: &Core, req: Request<Incoming>, url: String) -> Answer {
    if req.method() != Method::POST && req.method() != Method::PUT {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let mut headers: Vec<(HeaderName, HeaderValue)> = req
        .headers()
        .iter()
        .filter(|(k, _)| PROXY_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !core.hostname.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&core.hostname) {
            headers.push((HeaderName::from_static("dd-agent-hostname"), v));
        }
    }
    if let Some(env) = &core.config.env {
        if let Ok(v) = HeaderValue::from_str(env) {
            headers.push((HeaderName::from_static("dd-agent-env"), v));
        }
    }
    let limit = core.body_limit.min(core.meter.available());
    let body = match read_body(req, limit).await {
        Ok(b) => b,
        Err(a) => {
            Stats::add(&core.stats.trace_proxy_errors, 1);
            return a;
        }
    };
    let Some(http) = &core.http else {
        return text(StatusCode::OK, "");
    };
    // The body is held until the intake answers (up to PROXY_TIMEOUT):
    // charged to the share meanwhile, as a traces body is.
    let held = body.len();
    if !core.meter.try_charge(held) {
        Stats::add(&core.stats.trace_proxy_errors, 1);
        return text(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
    }
    let relayed = http
        .relay(&url, headers, body, PROXY_TIMEOUT, MAX_PROXY_ANSWER)
        .await;
    core.meter.release(held);
    match relayed {
        Ok((status, content_type, bytes)) => {
            let mut r = Response::new(Full::new(Bytes::from(bytes)));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(ct) = content_type {
                r.headers_mut().insert(CONTENT_TYPE, ct);
            }
            r
        }
        Err(e) => {
            Stats::add(&core.stats.trace_proxy_errors, 1);
            tracing::debug!(error = %e, "proxied request failed");
            text(StatusCode::BAD_GATEWAY, "the intake could not be reached\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spare_body_buffer_is_charged_while_kept_and_freed_when_idle() {
        let meter = Meter::new(8 * 1024 * 1024);
        let pool = BodyPool::default();
        // A request's buffer, charged its declared size, is kept: its
        // capacity stays charged.
        assert!(meter.try_charge(300_000));
        let mut buf = pool.take();
        buf.reserve_exact(300_000);
        buf.extend_from_slice(&[1; 1000]);
        let cap = buf.capacity();
        assert!(cap >= 300_000);
        pool.put(&meter, buf, cap.max(300_000));
        assert_eq!(meter.used(), cap);
        // Taken again, empty, with the same capacity (the charge is the
        // taker's now).
        let buf = pool.take();
        assert!(buf.is_empty());
        assert_eq!(buf.capacity(), cap);
        pool.put(&meter, buf, cap);
        assert_eq!(meter.used(), cap);
        // Taken since the last flush: kept; then idle for one: freed.
        pool.release_idle(&meter);
        assert_eq!(meter.used(), cap);
        pool.release_idle(&meter);
        assert_eq!(meter.used(), 0);
        assert_eq!(pool.take().capacity(), 0);
        // Larger than an eighth of the share: freed at once.
        let big = 2 * 1024 * 1024;
        assert!(meter.try_charge(big));
        pool.put(&meter, Vec::with_capacity(big), big);
        assert_eq!(meter.used(), 0);
        // With the meter more than half full: freed at once.
        assert!(meter.try_charge(5 * 1024 * 1024));
        assert!(meter.try_charge(1000));
        pool.put(&meter, Vec::with_capacity(1000), 1000);
        assert_eq!(meter.used(), 5 * 1024 * 1024);
        assert_eq!(pool.take().capacity(), 0);
    }

    #[test]
    fn info_states_the_body_limit_that_is_enforced() {
        let env = std::collections::BTreeMap::from([(
            "DYNOSTAT_MEMORY_LIMIT".to_owned(),
            "4MiB".to_owned(),
        )]);
        let config = Config::from_lookup(&env).expect("valid");
        let info: serde_json::Value = serde_json::from_str(&info_json(&config)).expect("json");
        // The relay's share of 4 MiB is 512 KiB: bodies past it get a 413.
        assert_eq!(info["config"]["max_request_bytes"], 512 * 1024);
    }
}
