//! Forwarding: turns a [`Flush`] into Datadog API requests, or a console table.
//!
//! In: [`Flush`]es from the flush loop, whole or in chunks (encoded one by
//! one, so a big flush is never held whole). Out: gzip-compressed `POST`s to
//! `/api/v2/series`, `/api/beta/sketches` (protobuf), `/api/v1/events` and
//! `/api/v1/check_run`, split below the intake's limits ([`payload`]), with a
//! bounded retry queue ([`retry`]); and/or a table on stdout ([`console`]).
//!
//! Responses, as the Agent's forwarder handles them except for 413:
//! - 2xx: done, counted in `payloads` and `bytes`.
//! - 403: the API key was rejected. Logged at most once a minute with the fix;
//!   the payload is dropped (`failures`), never retried forever.
//! - 400 and other 4xx/3xx: logged at a bounded rate and dropped.
//! - 413: split in two and both halves resent; a single item is dropped.
//! - 408, 429, 5xx, connection errors and timeouts: into the retry queue,
//!   retried with exponential backoff and jitter; on shutdown, every 100-500 ms
//!   until the deadline.
//!
//! While the intake is backing off, fresh payloads join the queue without an
//! attempt, so a dead intake costs at most one request timeout per flush tick
//! on the flush thread instead of one per payload.
//!
//! Must never: block the receive path (it runs on the flush thread's runtime),
//! hold more than the retry-queue byte limit, send a payload again once the
//! intake accepted it, or print the API key (it is a sensitive header value,
//! redirects are not followed, and every error text is scrubbed of it).

pub mod console;
pub mod payload;
pub mod retry;
pub mod sketch;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use tokio::time::Instant;

use crate::config::{escape_truncate, ApiKey, Config};
use crate::dogstatsd::aggregate::Flush;
use crate::dogstatsd::stats::Stats;
use console::Console;
use payload::{encode_flush, Decoration, Encoded, FlushEncoder, Limits, Payload};
use retry::{Evicted, Queued, RetryQueue};

/// Longest wait for one request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// During the drain, an attempt with less time than this left is not made.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);
/// At most one log line per kind of trouble per this period.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Response bytes kept for the log.
const MAX_BODY_LOG: usize = 512;

/// Where flushes go.
#[derive(Debug)]
pub struct Forwarder {
    stats: Arc<Stats>,
    deco: Decoration,
    limits: Limits,
    console: Option<Console>,
    http: Option<Http>,
    queue: RetryQueue,
    logs: Logs,
}

/// The intake client. Its `Debug` shows no key: [`ApiKey`] redacts itself and
/// the header value is marked sensitive.
#[derive(Debug)]
struct Http {
    client: reqwest::Client,
    base_url: String,
    site: String,
    key_header: HeaderValue,
    key: ApiKey,
}

/// One log line per kind of trouble per [`LOG_EVERY`], with a count of what
/// happened in between.
#[derive(Debug)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    const fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[derive(Debug)]
struct Logs {
    forbidden: Throttle,
    rejected: Throttle,
    unavailable: Throttle,
    evicted: Throttle,
    oversize: Throttle,
}

/// What the intake said about one payload.
enum Sent {
    Accepted,
    Forbidden,
    TooLarge,
    /// Dropped: 400, other 4xx, 3xx.
    Rejected {
        status: u16,
        body: String,
    },
    /// Worth another try: 408, 429, 5xx, transport errors.
    Retry {
        reason: String,
    },
}

impl Forwarder {
    /// Builds the HTTP client or console sink from the config.
    pub fn new(config: &Config, stats: Arc<Stats>) -> anyhow::Result<Self> {
        Self::with_limits(config, stats, Limits::default())
    }

    /// As [`Forwarder::new`], with payload limits other than the intake's
    /// (tests use small ones).
    pub fn with_limits(config: &Config, stats: Arc<Stats>, limits: Limits) -> anyhow::Result<Self> {
        let http = match &config.api_key {
            Some(key) => Some(Http::new(config, key)?),
            None => {
                if !config.console {
                    tracing::warn!(
                        "DD_API_KEY is not set: metrics are received but not forwarded to Datadog. \
                         Set it with `heroku config:set DD_API_KEY=<your API key>` \
                         (or DYNOSTAT_CONSOLE=true to print them to the log instead)"
                    );
                }
                None
            }
        };
        Ok(Self {
            stats,
            deco: Decoration {
                global_tags: config.global_tags.clone(),
                hostname: config.hostname.clone(),
            },
            limits,
            console: config.console.then(|| Console::new(config)),
            http,
            queue: RetryQueue::new(config.retry_queue_bytes),
            logs: Logs {
                forbidden: Throttle::new(),
                rejected: Throttle::new(),
                unavailable: Throttle::new(),
                evicted: Throttle::new(),
                oversize: Throttle::new(),
            },
        })
    }

    /// Payloads waiting in the retry queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Sends (or prints) one flush. Failed retryable payloads go to the retry
    /// queue; this returns once the fresh payloads have been tried once, or
    /// queued without a try while the intake is backing off.
    pub async fn submit(&mut self, flush: Flush) {
        if let Some(console) = &mut self.console {
            if let Some(text) = console.render(&flush, &self.deco) {
                console::print(&text);
            }
        }
        if self.http.is_none() {
            return;
        }
        let encoded = encode_flush(&flush, &self.deco, self.limits);
        drop(flush);
        self.send_encoded(encoded).await;
    }

    /// As [`Forwarder::submit`] for a flush that arrives in chunks (see
    /// [`crate::dogstatsd::aggregate::Bucket::into_chunks`]): each chunk is encoded and
    /// dropped before the next is taken, so only the compressed payloads
    /// accumulate. Every chunk is taken, even when nothing is forwarded (the
    /// last one may drain the self-telemetry). The console table needs the
    /// whole flush to sort it: with the console on, the chunks are joined.
    pub async fn submit_chunks<I: IntoIterator<Item = Flush>>(&mut self, chunks: I) {
        if self.console.is_some() {
            let mut all = Flush::default();
            for chunk in chunks {
                all.append(chunk);
            }
            return self.submit(all).await;
        }
        if self.http.is_none() {
            chunks.into_iter().for_each(drop);
            return;
        }
        let encoded = {
            let mut enc = FlushEncoder::new(&self.deco, self.limits);
            for chunk in chunks {
                enc.push(&chunk);
            }
            enc.finish()
        };
        self.send_encoded(encoded).await;
    }

    /// Logs what could not be encoded, then sends the payloads.
    async fn send_encoded(&mut self, encoded: Encoded) {
        if !encoded.oversize.is_empty() {
            let n = encoded.oversize.len() as u64;
            Stats::add(&self.stats.failures, n);
            if let Some(suppressed) = self.logs.oversize.check(Instant::now()) {
                let (endpoint, name) = &encoded.oversize[0];
                tracing::error!(
                    count = n,
                    first = %escape_truncate(name, 100),
                    kind = endpoint.name(),
                    suppressed,
                    "dropped items larger than one intake payload may be (512 KB compressed, 5 MB raw); send fewer points or tags per metric"
                );
            }
        }
        if encoded.empty > 0 {
            tracing::debug!(
                count = encoded.empty,
                "left out series without a finite value"
            );
        }

        let mut fresh: VecDeque<Queued> = encoded
            .payloads
            .into_iter()
            .map(|payload| Queued {
                payload,
                attempts: 0,
            })
            .collect();
        let (mut delivered_any, mut failed) = (false, false);
        while let Some(q) = fresh.pop_front() {
            if !self.queue.ready(Instant::now()) {
                // The intake is backing off: wait in line with the others.
                self.enqueue(q);
                continue;
            }
            let left = self.attempt(q, None).await;
            if left.is_empty() {
                delivered_any = true;
            } else {
                failed = true;
                self.queue.failed(Instant::now());
                for q in left {
                    self.enqueue(q);
                }
            }
        }
        self.publish_queue_bytes();
        if delivered_any && !failed && !self.queue.is_empty() {
            // The intake is up again: no need to wait out the backoff.
            self.queue.succeeded();
            self.retry_due().await;
        }
    }

    /// Retries what the queue holds if the backoff has expired: oldest
    /// first, until the queue is empty or an attempt fails again.
    pub async fn retry_due(&mut self) {
        if self.http.is_none() || self.queue.is_empty() || !self.queue.ready(Instant::now()) {
            return;
        }
        let mut delivered = 0u64;
        while let Some(q) = self.queue.pop() {
            Stats::add(&self.stats.retries, 1);
            let left = self.attempt(q, None).await;
            if left.is_empty() {
                delivered += 1;
                self.queue.succeeded();
            } else {
                self.requeue_front(left);
                self.queue.failed(Instant::now());
                break;
            }
        }
        self.publish_queue_bytes();
        if delivered > 0 && self.queue.is_empty() {
            tracing::info!(
                delivered,
                "the intake accepts data again; the retry queue is empty"
            );
        }
    }

    /// Shutdown: retries everything queued until it is empty or `deadline`
    /// passes, every 100-500 ms after a failure. What is left at the deadline
    /// is dropped, counted and logged.
    pub async fn drain(&mut self, deadline: std::time::Instant) {
        if self.http.is_none() {
            return;
        }
        let deadline = Instant::from_std(deadline);
        self.queue.wake();
        loop {
            if self.queue.is_empty() {
                break;
            }
            let now = Instant::now();
            if now + MIN_ATTEMPT >= deadline {
                let left = self.queue.take_all();
                let bytes: usize = left.iter().map(|q| q.payload.body.len()).sum();
                Stats::add(&self.stats.failures, left.len() as u64);
                tracing::error!(
                    payloads = left.len(),
                    bytes,
                    "shutdown deadline reached with payloads still undelivered; they are dropped \
                     (raise DYNOSTAT_SHUTDOWN_TIMEOUT if the intake is slow)"
                );
                break;
            }
            if !self.queue.ready(now) {
                let until = self.queue.next_attempt().unwrap_or(now).min(deadline);
                tokio::time::sleep_until(until).await;
                continue;
            }
            let Some(q) = self.queue.pop() else { break };
            Stats::add(&self.stats.retries, 1);
            let left = self.attempt(q, Some(deadline)).await;
            if left.is_empty() {
                self.queue.succeeded();
            } else {
                self.requeue_front(left);
                self.queue.failed_draining(Instant::now());
            }
            self.publish_queue_bytes();
        }
        self.publish_queue_bytes();
    }

    /// Tries one payload (and, after a 413, its halves). Returns what should
    /// be retried later; once one piece meets a retryable failure the rest are
    /// not tried, since the intake is evidently unwell.
    async fn attempt(&mut self, first: Queued, deadline: Option<Instant>) -> Vec<Queued> {
        let mut stack = vec![first];
        let mut retry = Vec::new();
        while let Some(mut q) = stack.pop() {
            if !retry.is_empty() {
                retry.push(q);
                continue;
            }
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left < MIN_ATTEMPT {
                        retry.push(q);
                        continue;
                    }
                    left.min(REQUEST_TIMEOUT)
                }
                None => REQUEST_TIMEOUT,
            };
            let Some(http) = &self.http else {
                return Vec::new();
            };
            q.attempts = q.attempts.saturating_add(1);
            match http.send(&q.payload, timeout).await {
                Sent::Accepted => {
                    Stats::add(&self.stats.payloads, 1);
                    Stats::add(&self.stats.bytes, q.payload.body.len() as u64);
                }
                Sent::Forbidden => {
                    Stats::add(&self.stats.failures, 1);
                    if let Some(suppressed) = self.logs.forbidden.check(Instant::now()) {
                        tracing::error!(
                            intake = %http.base_url,
                            site = %http.site,
                            suppressed,
                            "Datadog rejected the API key (HTTP 403) at {}; payloads are dropped until it is fixed. \
                             Set a valid API key (not an application key) for this site with \
                             `heroku config:set DD_API_KEY=<your API key>`, and check DD_SITE \
                             (e.g. datadoghq.eu for an EU account; now {})",
                            http.base_url,
                            http.site,
                        );
                    }
                }
                Sent::TooLarge => match q.payload.split(&self.limits) {
                    Some((a, b)) => {
                        tracing::debug!(
                            kind = q.payload.endpoint.name(),
                            items = q.payload.items,
                            "intake answered 413: resending the payload in two halves"
                        );
                        // The first half is tried first: push it last.
                        for payload in b.into_iter().chain(a).rev() {
                            stack.push(Queued {
                                payload,
                                attempts: q.attempts,
                            });
                        }
                    }
                    None => {
                        Stats::add(&self.stats.failures, 1);
                        if let Some(suppressed) = self.logs.oversize.check(Instant::now()) {
                            tracing::error!(
                                kind = q.payload.endpoint.name(),
                                bytes = q.payload.body.len(),
                                suppressed,
                                "intake answered 413 for a single item; it is dropped"
                            );
                        }
                    }
                },
                Sent::Rejected { status, body } => {
                    Stats::add(&self.stats.failures, 1);
                    if let Some(suppressed) = self.logs.rejected.check(Instant::now()) {
                        let body = http.scrub(&body);
                        tracing::error!(
                            status,
                            kind = q.payload.endpoint.name(),
                            url = %http.url(q.payload.endpoint),
                            response = %body,
                            suppressed,
                            "intake rejected a payload; it is dropped (check DD_DD_URL / DD_SITE if this persists)"
                        );
                    }
                }
                Sent::Retry { reason } => {
                    if let Some(suppressed) = self.logs.unavailable.check(Instant::now()) {
                        let reason = http.scrub(&reason);
                        tracing::warn!(
                            kind = q.payload.endpoint.name(),
                            url = %http.url(q.payload.endpoint),
                            reason = %reason,
                            queued = self.queue.len() + 1,
                            suppressed,
                            "intake unavailable; the payload is queued for retry"
                        );
                    }
                    retry.push(q);
                }
            }
        }
        // Keep the original order: the first piece in `retry` is the oldest.
        retry
    }

    /// Appends to the retry queue, counting and logging what made room.
    fn enqueue(&mut self, q: Queued) {
        let evicted = self.queue.push(q);
        self.count_evicted(evicted);
    }

    /// Puts failed pieces back at the front, in their order.
    fn requeue_front(&mut self, left: Vec<Queued>) {
        for q in left.into_iter().rev() {
            let evicted = self.queue.push_front(q);
            self.count_evicted(evicted);
        }
    }

    fn count_evicted(&mut self, e: Evicted) {
        if e.payloads == 0 {
            return;
        }
        Stats::add(&self.stats.queue_dropped, e.payloads);
        Stats::add(&self.stats.failures, e.payloads);
        if let Some(suppressed) = self.logs.evicted.check(Instant::now()) {
            tracing::warn!(
                payloads = e.payloads,
                bytes = e.bytes,
                suppressed,
                "retry queue full: dropped the oldest payloads (raise DYNOSTAT_RETRY_QUEUE_BYTES to hold more while the intake is down)"
            );
        }
    }

    fn publish_queue_bytes(&self) {
        self.stats
            .queue_bytes
            .store(self.queue.bytes() as u64, Ordering::Relaxed);
    }
}

impl Http {
    fn new(config: &Config, key: &ApiKey) -> anyhow::Result<Self> {
        let mut key_header = HeaderValue::from_str(key.expose()).map_err(|_| {
            anyhow::anyhow!(
                "DD_API_KEY contains characters that cannot be sent in an HTTP header; \
                 copy the key again from Datadog (Organization Settings → API Keys)"
            )
        })?;
        key_header.set_sensitive(true);
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            // hickory resolves names itself: no glibc NSS, so the static binary works anywhere.
            .hickory_dns(true)
            // A redirect would carry the DD-API-KEY header to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            // Proxies from the environment would bypass `config`; none are read.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("dynostat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("could not set up the HTTPS client: {e}"))?;
        Ok(Self {
            client,
            base_url: config.intake_url.trim_end_matches('/').to_owned(),
            site: config.site.clone(),
            key_header,
            key: key.clone(),
        })
    }

    fn url(&self, endpoint: payload::Endpoint) -> String {
        format!("{}{}", self.base_url, endpoint.path())
    }

    /// Removes the API key from text that came from outside (error chains,
    /// response bodies), in case anything ever echoes it.
    fn scrub(&self, text: &str) -> String {
        let key = self.key.expose();
        if key.is_empty() {
            text.to_owned()
        } else {
            text.replace(key, "<redacted>")
        }
    }

    async fn send(&self, p: &Payload, timeout: Duration) -> Sent {
        let request = self
            .client
            .post(self.url(p.endpoint))
            .header("DD-API-KEY", self.key_header.clone())
            .header(CONTENT_TYPE, p.endpoint.content_type())
            .header(CONTENT_ENCODING, p.endpoint.content_encoding())
            .timeout(timeout)
            .body(p.body.clone());
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Sent::Retry {
                    reason: error_chain(&e),
                }
            }
        };
        let status = response.status().as_u16();
        // Read a little of the body: for the log, and so the connection can be reused.
        let mut body = Vec::new();
        while body.len() < MAX_BODY_LOG {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        match status {
            200..=299 => Sent::Accepted,
            403 => Sent::Forbidden,
            413 => Sent::TooLarge,
            408 | 429 | 500..=599 => Sent::Retry {
                reason: format!("HTTP {status}"),
            },
            _ => Sent::Rejected {
                status,
                body: escape_truncate(&String::from_utf8_lossy(&body), MAX_BODY_LOG),
            },
        }
    }
}

/// An error and its causes, `outer: inner: …` (reqwest hides the useful part,
/// such as "Connection refused", in the source chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
