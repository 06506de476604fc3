//! Forwarding: turns a [`Flush`] into Datadog API requests, or a console table.
//!
//! In: [`Flush`]es from the flush clock, whole or in chunks (encoded one by
//! one, so a big flush is never held whole). Out: gzip-compressed `POST`s to
//! `/api/v2/series`, `/api/beta/sketches` (protobuf), `/intake/` (events) and
//! `/api/v1/check_run`, split below the intake's limits ([`payload`]); and/or
//! a table on stdout ([`console`]).
//!
//! The [`Forwarder`] lives on the clock's side: it encodes, then hands the
//! payloads over a bounded channel to the [`sender`], which runs on its own
//! thread and runtime. The clock never waits on the network: the sender
//! takes every payload off the channel at once into its byte-bounded queue
//! ([`retry`]), and keeps up to a few requests in flight, so a slow request
//! delays only its own payload.
//!
//! Responses, as the Agent's forwarder handles them except for 413 and
//! 1xx/3xx (see [`http::classify`]):
//! - 2xx: done, counted in `payloads`, `points` and `bytes`.
//! - 403: the API key was rejected. Logged at most once a minute with the fix;
//!   the payload is dropped and counted, never retried forever.
//! - 400, 1xx, 3xx: logged at a bounded rate, dropped and counted.
//! - 413: split in two and both halves resent; a single item is dropped.
//! - Any other status above 400 (401, 404, 408, 429, 5xx...), connection
//!   errors and timeouts: retried with exponential backoff and jitter, or the
//!   intake's `Retry-After` on a 429/503 (up to the backoff's cap); on
//!   shutdown, every 100-500 ms until the deadline.
//!
//! Must never: block the clock on the network, hold more than the queue's
//! byte limit (plus the few payloads in flight), drop without counting the
//! payload and its points, send a payload again once the intake accepted it,
//! or print the API key or a proxy's credentials (the key is a sensitive
//! header value, redirects are not followed, and every error text is
//! scrubbed).

pub mod console;
pub mod dns;
pub mod http;
pub mod payload;
pub mod retry;
pub mod sender;
pub mod sketch;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{escape_truncate, Config};
use crate::dogstatsd::aggregate::Flush;
use crate::dogstatsd::stats::{self, Stats};
use console::Console;
use payload::{encode_flush, Decoration, Encoded, FlushEncoder, Limits, Payload};
pub use sender::IdleHook;
use sender::{Command, Sender};

/// At most one log line per kind of trouble per this period.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Flushes' worth of payloads the channel to the sender holds. The sender
/// empties it at once into its bounded queue, so this only absorbs bursts.
const CHANNEL_FLUSHES: usize = 4;
/// How long past the deadline the clock waits for the sender's last word.
const SHUTDOWN_SLACK: Duration = Duration::from_millis(300);

/// Where flushes go.
#[derive(Debug)]
pub struct Forwarder {
    stats: Arc<Stats>,
    deco: Decoration,
    limits: Limits,
    console: Option<Console>,
    sender: Option<SenderHandle>,
    logs: EncodeLogs,
    /// `DD_DOGSTATSD_STATS_ENABLE`: every `dynostat.*` counter goes to the
    /// intake, not only `dynostat.dropped`.
    stats_enabled: bool,
}

/// The clock's end of the channel to the sender thread.
#[derive(Debug)]
struct SenderHandle {
    tx: mpsc::Sender<Command>,
    queued: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Another source's way into the sender (see [`Forwarder::sink`]). Its
/// payloads share the queue's byte bound, the backoff and the shutdown
/// drain with the metrics'.
#[derive(Debug, Clone)]
pub struct PayloadSink {
    tx: mpsc::Sender<Command>,
    stats: Arc<Stats>,
}

impl PayloadSink {
    /// A sink whose sender is gone (what it is given is counted as lost):
    /// for tests and profiling of the sources.
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        let (tx, _) = mpsc::channel(1);
        Self {
            tx,
            stats: Arc::new(Stats::default()),
        }
    }

    /// Hands `payloads` to the sender; waits only while the channel is full
    /// (the sender empties it at once). What the sender can no longer take
    /// is counted as dropped.
    pub async fn send(&self, payloads: Vec<Payload>) {
        hand_over(&self.tx, &self.stats, payloads).await;
    }
}

/// Hands `payloads` to the sender over `tx`; what it can no longer take (its
/// thread is gone: it panicked) is counted as failed payloads and dropped
/// points. The one way in for the metrics and the trace relay alike.
async fn hand_over(tx: &mpsc::Sender<Command>, stats: &Stats, payloads: Vec<Payload>) {
    if payloads.is_empty() {
        return;
    }
    if let Err(mpsc::error::SendError(Command::Payloads(lost))) =
        tx.send(Command::Payloads(payloads)).await
    {
        Stats::add(&stats.failures, lost.len() as u64);
        Stats::add(
            &stats.points_dropped,
            lost.iter().map(|p| p.points as u64).sum(),
        );
    }
}

/// One log line per kind of trouble per [`LOG_EVERY`], with a count of what
/// happened in between.
#[derive(Debug)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub(crate) const fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub(crate) fn check(&mut self, now: Instant) -> Option<u64> {
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
struct EncodeLogs {
    oversize: Throttle,
    truncated: Throttle,
}

impl Forwarder {
    /// Builds the HTTP client (and starts the sender thread) or the console
    /// sink from the config.
    pub fn new(config: &Config, stats: Arc<Stats>) -> anyhow::Result<Self> {
        Self::build(config, stats, Limits::default(), None)
    }

    /// As [`Forwarder::new`]; the sender thread calls `idle` each time its
    /// requests have ended and nothing waits to be sent or retried (`serve`
    /// trims memory there).
    pub fn with_idle_hook(
        config: &Config,
        stats: Arc<Stats>,
        idle: IdleHook,
    ) -> anyhow::Result<Self> {
        Self::build(config, stats, Limits::default(), Some(idle))
    }

    /// As [`Forwarder::new`], with payload limits other than the intake's
    /// (tests use small ones).
    pub fn with_limits(config: &Config, stats: Arc<Stats>, limits: Limits) -> anyhow::Result<Self> {
        Self::build(config, stats, limits, None)
    }

    fn build(
        config: &Config,
        stats: Arc<Stats>,
        limits: Limits,
        idle: Option<IdleHook>,
    ) -> anyhow::Result<Self> {
        let sender = match &config.api_key {
            Some(key) => {
                let http = http::Http::new(config, key)?;
                let queued = Arc::new(AtomicUsize::new(0));
                let (tx, rx) = mpsc::channel(CHANNEL_FLUSHES);
                let sender = Sender::new(
                    http,
                    Arc::clone(&stats),
                    limits,
                    config.retry_queue_bytes,
                    Arc::clone(&queued),
                    idle,
                );
                // The sender's logs go where the caller's go (tests capture them).
                let dispatch = tracing::dispatcher::get_default(Clone::clone);
                let thread = std::thread::Builder::new()
                    .name("sender".to_owned())
                    .spawn(move || {
                        tracing::dispatcher::with_default(&dispatch, || sender.run_blocking(rx));
                    })
                    .map_err(|e| anyhow::anyhow!("could not start the sender thread: {e}"))?;
                Some(SenderHandle {
                    tx,
                    queued,
                    thread: Some(thread),
                })
            }
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
                interval: Some(config.flush_interval.as_secs().max(1)),
            },
            limits,
            console: config.console.then(|| Console::new(config)),
            sender,
            logs: EncodeLogs {
                oversize: Throttle::new(),
                truncated: Throttle::new(),
            },
            stats_enabled: config.stats_enabled,
        })
    }

    /// A handle through which another source (the trace relay) hands its
    /// payloads to the same sender, queue and memory bound. `None` when
    /// nothing is forwarded (no API key).
    pub fn sink(&self) -> Option<PayloadSink> {
        self.sender.as_ref().map(|s| PayloadSink {
            tx: s.tx.clone(),
            stats: Arc::clone(&self.stats),
        })
    }

    /// Payloads waiting in the sender's queue (fresh and retried), as of
    /// its last change.
    pub fn queued(&self) -> usize {
        self.sender
            .as_ref()
            .map_or(0, |s| s.queued.load(Ordering::Relaxed))
    }

    /// Encodes (or prints) one flush and hands its payloads to the sender.
    /// Returns as soon as the sender has them: nothing here waits on the
    /// network.
    pub async fn submit(&mut self, flush: Flush) {
        if let Some(console) = &mut self.console {
            if let Some(text) = console.render(&flush, &self.deco) {
                console::print(&text);
            }
        }
        if self.sender.is_none() {
            return;
        }
        let encoded = encode_flush(&flush, &self.deco, self.limits);
        drop(flush);
        self.hand_over(encoded).await;
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
        if self.sender.is_none() {
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
        self.hand_over(encoded).await;
    }

    /// As [`Forwarder::submit_chunks`], then the flush's self-telemetry,
    /// built by `telemetry` once every chunk is taken: every `dynostat.*`
    /// counter and the dyno's series, with the counts they report.
    ///
    /// The console shows all of it. The intake gets the `dynostat.*` counters
    /// only with `DD_DOGSTATSD_STATS_ENABLE=true`; otherwise only
    /// [`stats::DROPPED`] (present only when something was lost) and the
    /// other series (the dyno's). The telemetry goes in a payload of its own
    /// that carries its counts (see [`payload::Carry`]): if it is dropped,
    /// the counts are given back and a later flush reports them, so what was
    /// lost is always counted.
    pub async fn submit_flush<I, T>(&mut self, chunks: I, telemetry: T)
    where
        I: IntoIterator<Item = Flush>,
        T: FnOnce() -> (Flush, payload::Carry),
    {
        if self.console.is_some() || self.sender.is_none() {
            let mut all = Flush::default();
            let mut forward = self.sender.is_some();
            if self.console.is_some() {
                for chunk in chunks {
                    all.append(chunk);
                }
            } else {
                chunks.into_iter().for_each(drop);
                forward = false;
            }
            let (mut own, _) = telemetry();
            if let Some(console) = &mut self.console {
                // The console shows every counter, and what the collectors
                // measured (series and service checks).
                let (app, app_checks) = (all.series.len(), all.service_checks.len());
                all.series.extend(own.series.iter().cloned());
                all.service_checks
                    .extend(own.service_checks.iter().cloned());
                if let Some(text) = console.render(&all, &self.deco) {
                    console::print(&text);
                }
                all.series.truncate(app);
                all.service_checks.truncate(app_checks);
            }
            if forward {
                self.keep_billed(&mut own);
                all.append(own);
                let encoded = encode_flush(&all, &self.deco, self.limits);
                drop(all);
                self.hand_over(encoded).await;
            }
            return;
        }
        self.submit_chunks(chunks).await;
        let (mut telemetry, carry) = telemetry();
        self.keep_billed(&mut telemetry);
        let mut encoded = encode_flush(&telemetry, &self.deco, self.limits);
        if let Some(p) = encoded.payloads.first_mut() {
            p.carry = carry;
        }
        self.hand_over(encoded).await;
    }

    /// Leaves out the `dynostat.*` series the user did not ask to pay for:
    /// without `DD_DOGSTATSD_STATS_ENABLE` every counter but
    /// [`stats::DROPPED`]; with it, [`stats::DROPPED`], whose counts the full
    /// set already holds under their own names (the Agent's option sends
    /// today's full set, nothing more).
    fn keep_billed(&self, telemetry: &mut Flush) {
        if self.stats_enabled {
            telemetry.series.retain(|s| s.metric != stats::DROPPED);
        } else {
            telemetry
                .series
                .retain(|s| s.metric == stats::DROPPED || !s.metric.starts_with("dynostat."));
        }
    }

    /// Counts and logs what could not be encoded whole, then gives the
    /// payloads to the sender.
    async fn hand_over(&mut self, encoded: Encoded) {
        if !encoded.oversize.is_empty() {
            let n = encoded.oversize.len() as u64;
            Stats::add(&self.stats.points_dropped, encoded.oversize_points as u64);
            if let Some(suppressed) = self.logs.oversize.check(Instant::now()) {
                let (endpoint, name) = &encoded.oversize[0];
                tracing::error!(
                    count = n,
                    first = %escape_truncate(name, 100),
                    kind = endpoint.name(),
                    suppressed,
                    "dropped items whose name and tags alone exceed one intake payload (512 KB compressed, 5 MB raw); \
                     send shorter names and fewer tags (counted in dynostat.forwarder.points_dropped)"
                );
            }
        }
        if !encoded.truncated.is_empty() {
            Stats::add(&self.stats.truncated, encoded.truncated.len() as u64);
            if let Some(suppressed) = self.logs.truncated.check(Instant::now()) {
                let (endpoint, name) = &encoded.truncated[0];
                tracing::warn!(
                    count = encoded.truncated.len(),
                    first = %escape_truncate(name, 100),
                    kind = endpoint.name(),
                    suppressed,
                    "cut the text of items larger than one intake payload so they fit \
                     (counted in dynostat.forwarder.items_truncated)"
                );
            }
        }
        if encoded.empty > 0 {
            tracing::debug!(
                count = encoded.empty,
                "left out series without a finite value"
            );
        }
        self.send(encoded.payloads).await;
    }

    /// Gives payloads to the sender. Waits only while the channel is full,
    /// which it is not for long: the sender empties it into its queue at once.
    async fn send(&mut self, payloads: Vec<Payload>) {
        let Some(s) = &self.sender else { return };
        hand_over(&s.tx, &self.stats, payloads).await;
    }

    /// Waits until the sender has no request in flight and nothing it could
    /// send right now (what waits, waits out the backoff). For tests.
    pub async fn settle(&self) {
        let Some(s) = &self.sender else { return };
        let (tx, rx) = oneshot::channel();
        if s.tx.send(Command::Settle(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Shutdown: the sender tries everything it holds until it is delivered
    /// or `deadline` passes; at the deadline it cuts the requests in flight
    /// and logs one line with the payloads, points and bytes lost. Returns by
    /// the deadline (plus a few hundred ms), whatever the intake does.
    pub async fn drain(&mut self, deadline: std::time::Instant) {
        let Some(mut s) = self.sender.take() else {
            return;
        };
        let deadline = Instant::from_std(deadline);
        let (tx, rx) = oneshot::channel();
        let until = deadline + SHUTDOWN_SLACK;
        let sent =
            tokio::time::timeout_at(until, s.tx.send(Command::Shutdown { deadline, done: tx }))
                .await;
        let finished = matches!(sent, Ok(Ok(())))
            && tokio::time::timeout_at(until, rx)
                .await
                .is_ok_and(|r| r.is_ok());
        if finished {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        } else {
            tracing::error!(
                "the sender did not finish by the shutdown deadline; exiting without it"
            );
        }
    }
}
