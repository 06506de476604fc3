//! Things dynostat measures itself, on one scheduler: the dyno collector
//! ([`dyno`], DESIGN §5b), the Postgres and Redis checks ([`postgres`],
//! [`redis`]; DESIGN §5d, issue 23), and the place for the next one.
//!
//! In: [`Collector`]s, each with an interval and a `collect()` that appends
//! series and service checks to a [`Collected`]. Out: what they collected,
//! taken by `serve` at each flush ([`Scheduler::drain`]) and sent with the
//! flush's self-telemetry (series keep the time they were collected at, as
//! the Agent's check samples do).
//!
//! One thread, `collectors`, runs a current-thread tokio runtime with one
//! task per collector, each running when it is due (so a check waiting on
//! a slow database never delays the dyno sampler's 5 s load ticks). A collector that fails sends its
//! own CRITICAL service check, logs one line when it goes down and one when
//! it comes back, and is retried after a backoff (its interval doubled per
//! failure, up to [`MAX_BACKOFF`]). Nothing here touches the listener: the
//! receive threads and the flush clock never wait on this thread, and
//! [`Scheduler::drain`] is one short lock.
//!
//! Adding a check is one file: a type that implements [`Collector`], and
//! one line in `serve` that boxes it into the list given to
//! [`Scheduler::start`].
//!
//! Must never: let a collector's series grow without bound (the outbox
//! holds at most [`OUTBOX_SERIES`] series between two flushes; more are
//! dropped and counted), or put a password in a log line, a tag or a
//! service check message ([`scrub`]).

pub mod dyno;
pub mod net;
pub mod pgwire;
pub mod postgres;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{ChecksConfig, Config, Tls};
use crate::dogstatsd::aggregate::{Series, SeriesKind};
use crate::dogstatsd::protocol::{CheckStatus, ServiceCheck};
use crate::dynometrics::DynoMetrics;
use crate::progress::{Monitor, Progress};

/// The longest wait between two tries of a failing collector.
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// The longest one collection may take, whatever its interval: a check
/// has its own, shorter timeouts (connect 5 s, statements 5 s); this is the
/// backstop.
pub const MAX_RUN: Duration = Duration::from_secs(20);

/// How often the collectors' thread tells the watchdog it is alive
/// (`crate::progress`), and how long it may go without: every collection is
/// async and bounded by [`MAX_RUN`], so only a collector that blocks the
/// thread itself misses beats.
const BEAT_EVERY: Duration = Duration::from_secs(1);
const BEAT_ALLOWANCE: Duration = Duration::from_secs(15);

/// Series held between two flushes, at most.
pub const OUTBOX_SERIES: usize = 20_000;

/// What collectors produced since the last flush.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Collected {
    /// Series, each stamped with its collection time.
    pub series: Vec<Series>,
    /// Service checks, e.g. `postgres.can_connect`.
    pub checks: Vec<ServiceCheck>,
}

/// A collection in progress.
pub type CollectFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// A thing dynostat measures itself.
pub trait Collector: Send {
    /// For logs, e.g. `postgres DATABASE_URL`. Never holds a password.
    fn name(&self) -> &str;

    /// How often it runs when it succeeds.
    fn interval(&self) -> Duration;

    /// One run: appends series and service checks to `out`. A failure
    /// returns one line (no password) and has put its CRITICAL service
    /// check in `out` already.
    fn collect<'a>(&'a mut self, out: &'a mut Collected) -> CollectFuture<'a>;

    /// The run was abandoned at [`MAX_RUN`] or at shutdown: drop any
    /// half-used connection, and say so in `out` (a CRITICAL check).
    fn abandon(&mut self, out: &mut Collected);

    /// When the next run is due, counted from the end of this one, for a
    /// collector that keeps its own clock (the dyno sampler's wall-clock
    /// phase). `None`: every [`Collector::interval`] from the first run.
    fn next_in(&self) -> Option<Duration> {
        None
    }
}

/// Replaces `secret` in `text` (a server's error could echo it back).
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.len() < 3 {
        return text.to_owned();
    }
    text.replace(secret, "<redacted>")
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Previous values of a collector's counters, for rates and monotonic
/// counts as the Agent's check sampler makes them: a rate is the
/// per-second difference between two collections, sent as a GAUGE, nothing
/// the first time and nothing when negative (a reset); a monotonic count
/// is the difference, sent as a COUNT, nothing the first time and 0 after a
/// reset (datadog-agent pkg/metrics `Rate`, `MonotonicCount`).
#[derive(Debug, Default)]
pub struct Counters {
    prev: HashMap<String, (f64, Instant, u64)>,
    generation: u64,
}

impl Counters {
    /// Starts one collection's submissions.
    pub fn submit<'a>(&'a mut self, out: &'a mut Collected, interval: Duration) -> Submit<'a> {
        self.generation += 1;
        Submit {
            ts: unix_now(),
            now: Instant::now(),
            interval: interval.as_secs().max(1),
            counters: self,
            out,
        }
    }

    /// How many counters are remembered.
    pub fn len(&self) -> usize {
        self.prev.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.prev.is_empty()
    }
}

/// One collection's submissions (see [`Counters`]).
pub struct Submit<'a> {
    ts: i64,
    now: Instant,
    interval: u64,
    counters: &'a mut Counters,
    out: &'a mut Collected,
}

fn series(
    name: &str,
    kind: SeriesKind,
    ts: i64,
    value: f64,
    mut tags: Vec<String>,
    interval: Option<u64>,
) -> Series {
    tags.sort();
    tags.dedup();
    Series {
        metric: name.to_owned(),
        kind,
        points: vec![(ts, value)],
        tags,
        host: None,
        interval,
        unit: None,
    }
}

impl Submit<'_> {
    /// A gauge.
    pub fn gauge(&mut self, name: &str, value: f64, tags: Vec<String>) {
        if value.is_finite() {
            self.out
                .series
                .push(series(name, SeriesKind::Gauge, self.ts, value, tags, None));
        }
    }

    fn previous(&mut self, name: &str, value: f64, tags: &[String]) -> Option<(f64, f64)> {
        let mut key = String::with_capacity(name.len() + 64);
        key.push_str(name);
        let mut sorted: Vec<&String> = tags.iter().collect();
        sorted.sort();
        for t in sorted {
            key.push('\0');
            key.push_str(t);
        }
        let generation = self.counters.generation;
        let old = self
            .counters
            .prev
            .insert(key, (value, self.now, generation));
        old.map(|(v, at, _)| (v, self.now.duration_since(at).as_secs_f64()))
    }

    /// A rate: the per-second change since the last collection, as a GAUGE.
    pub fn rate(&mut self, name: &str, value: f64, tags: Vec<String>) {
        if !value.is_finite() {
            return;
        }
        if let Some((prev, dt)) = self.previous(name, value, &tags) {
            let r = (value - prev) / dt;
            if dt > 0.0 && r >= 0.0 {
                self.out
                    .series
                    .push(series(name, SeriesKind::Gauge, self.ts, r, tags, None));
            }
        }
    }

    /// A monotonic count: the change since the last collection, as a COUNT.
    pub fn monotonic_count(&mut self, name: &str, value: f64, tags: Vec<String>) {
        if !value.is_finite() {
            return;
        }
        if let Some((prev, _)) = self.previous(name, value, &tags) {
            let d = (value - prev).max(0.0);
            let interval = Some(self.interval);
            self.out
                .series
                .push(series(name, SeriesKind::Count, self.ts, d, tags, interval));
        }
    }

    /// A service check.
    pub fn service_check(
        &mut self,
        name: &str,
        status: CheckStatus,
        tags: Vec<String>,
        message: Option<String>,
    ) {
        self.out
            .checks
            .push(service_check(name, status, tags, message));
    }

    /// Forgets counters this collection did not submit (a database dropped,
    /// a lock released), so their number stays that of the last collection.
    pub fn finish(self) {
        let generation = self.counters.generation;
        self.counters.prev.retain(|_, (_, _, g)| *g == generation);
    }
}

/// A service check stamped now.
pub fn service_check(
    name: &str,
    status: CheckStatus,
    mut tags: Vec<String>,
    message: Option<String>,
) -> ServiceCheck {
    tags.sort();
    tags.dedup();
    ServiceCheck {
        name: name.to_owned(),
        status,
        timestamp: Some(unix_now()),
        host: None,
        tags,
        message,
    }
}

/// Series of one context (name, type, tags) joined into one, points in
/// collection order.
fn merge(series: Vec<Series>) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    let mut at: HashMap<(String, u8, Vec<String>), usize> = HashMap::with_capacity(series.len());
    for s in series {
        let kind = match s.kind {
            SeriesKind::Count => 1,
            SeriesKind::Rate => 2,
            SeriesKind::Gauge => 3,
        };
        match at.entry((s.metric.clone(), kind, s.tags.clone())) {
            std::collections::hash_map::Entry::Occupied(e) => {
                out[*e.get()].points.extend_from_slice(&s.points);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(s);
            }
        }
    }
    out
}

/// What the scheduler hands to the flush.
#[derive(Default)]
struct Outbox {
    held: Collected,
    dropped: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The running scheduler: one thread, every collector.
pub struct Scheduler {
    outbox: Arc<Mutex<Outbox>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the `collectors` thread; each collector runs at once, then
    /// every interval.
    pub fn start(
        collectors: Vec<Box<dyn Collector>>,
        progress: Option<Progress>,
    ) -> std::io::Result<Self> {
        let outbox = Arc::new(Mutex::new(Outbox::default()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = Arc::clone(&outbox);
        let thread = std::thread::Builder::new()
            .name("collectors".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "collectors: could not start their runtime; no checks run");
                        return;
                    }
                };
                runtime.block_on(run(collectors, shared, rx, progress));
            })?;
        Ok(Self {
            outbox,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Takes what was collected since the last call, and how many series
    /// were dropped at [`OUTBOX_SERIES`] since then.
    /// A context collected more than once since (a flush interval longer
    /// than a check's) is one series with a point per collection.
    pub fn drain(&self) -> (Collected, u64) {
        let (mut held, dropped) = {
            let mut o = lock(&self.outbox);
            let dropped = std::mem::take(&mut o.dropped);
            (std::mem::take(&mut o.held), dropped)
        };
        held.series = merge(std::mem::take(&mut held.series));
        (held, dropped)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts what `serve` measures itself: the dyno collector when
/// `DYNOSTAT_DYNO_METRICS` is on (its flush side is returned), and a
/// Postgres check per Postgres URL and a Redis check per Redis URL when this
/// process is the one that runs them, all on one [`Scheduler`]. A failure
/// to start costs only their metrics, never the listener.
pub fn start(config: &Config, monitor: &Monitor) -> (Option<DynoMetrics>, Option<Scheduler>) {
    let mut collectors: Vec<Box<dyn Collector>> = Vec::new();
    let dyno = config.dyno_metrics.then(|| {
        let m = DynoMetrics::new();
        collectors.push(Box::new(dyno::DynoCollector::new(m.latest())));
        m
    });
    collectors.extend(checks(&config.checks));
    if collectors.is_empty() {
        return (dyno, None);
    }
    let progress = monitor.register(
        "the collectors' thread (dyno metrics, checks)",
        BEAT_ALLOWANCE,
    );
    let scheduler = Scheduler::start(collectors, Some(progress))
        .map_err(|e| {
            tracing::warn!(error = %e, "could not start the collectors' thread; heroku.dyno.* and the checks will be missing");
        })
        .ok();
    (dyno, scheduler)
}

/// Logs what the checks configuration says; the checks, when this process
/// is the one that runs them.
fn checks(config: &ChecksConfig) -> Vec<Box<dyn Collector>> {
    for p in &config.problems {
        tracing::warn!("checks: {p}");
    }
    let mut collectors: Vec<Box<dyn Collector>> = Vec::new();
    if config.postgres.is_empty() && config.redis.is_empty() {
        return collectors;
    }
    if !config.run_here {
        tracing::info!("checks: {}", config.placement);
        return collectors;
    }
    for url in &config.postgres {
        tracing::info!(
            check = %format!("postgres {}", url.var),
            server = %format!("{}:{}/{}", url.host, url.port, url.database),
            tls = tls_name(url.tls),
            every_s = config.interval.as_secs(),
            "checks: {}", config.placement
        );
        collectors.push(Box::new(postgres::PostgresCheck::new(
            url.clone(),
            config.interval,
        )));
    }
    for url in &config.redis {
        tracing::info!(
            check = %format!("redis {}", url.var),
            server = %format!("{}:{}", url.host, url.port),
            tls = tls_name(url.tls),
            every_s = config.interval.as_secs(),
            "checks: {}", config.placement
        );
        collectors.push(Box::new(redis::RedisCheck::new(
            url.clone(),
            config.interval,
        )));
    }
    collectors
}

fn tls_name(tls: Tls) -> &'static str {
    match tls {
        Tls::Off => "off",
        Tls::Prefer => "if offered, certificate not verified",
        Tls::Require => "required, certificate not verified",
    }
}

/// The wait after `failures` failures in a row.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(8);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

/// Every collector as a task of its own on this thread's runtime, so a
/// check waiting on a slow database never delays the dyno sampler's 5 s
/// load ticks; until `stop`.
async fn run(
    collectors: Vec<Box<dyn Collector>>,
    outbox: Arc<Mutex<Outbox>>,
    stop: tokio::sync::oneshot::Receiver<()>,
    progress: Option<Progress>,
) {
    let local = tokio::task::LocalSet::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    local
        .run_until(async move {
            let tasks: Vec<_> = collectors
                .into_iter()
                .map(|c| tokio::task::spawn_local(run_one(c, Arc::clone(&outbox), stop_rx.clone())))
                .collect();
            // The thread's heartbeat: a task of its own, so a collection
            // waiting on a database (bounded by MAX_RUN) is not a stall,
            // while a collector that blocks the thread is.
            let mut stop = stop;
            let mut beat = tokio::time::interval(BEAT_EVERY);
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        if let Some(p) = &progress {
                            p.beat();
                        }
                    }
                    _ = &mut stop => break,
                }
            }
            let _ = stop_tx.send(true);
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
}

async fn run_one(
    mut collector: Box<dyn Collector>,
    outbox: Arc<Mutex<Outbox>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut due = tokio::time::Instant::now();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            _ = stop.changed() => return,
        }
        let mut out = Collected::default();
        let result = tokio::select! {
            r = tokio::time::timeout(MAX_RUN, collector.collect(&mut out)) => r,
            _ = stop.changed() => {
                collector.abandon(&mut out);
                return;
            }
        };
        let interval = collector.interval();
        let result = match result {
            Ok(r) => r,
            Err(_) => {
                collector.abandon(&mut out);
                Err(format!(
                    "a collection took over {} s and was abandoned",
                    MAX_RUN.as_secs()
                ))
            }
        };
        let now = tokio::time::Instant::now();
        match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(
                        check = collector.name(),
                        after_failures = failures,
                        "check recovered"
                    );
                }
                failures = 0;
                due = match collector.next_in() {
                    Some(wait) => now + wait,
                    None if due + interval > now => due + interval,
                    None => now + interval,
                };
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(interval, failures);
                if failures == 1 {
                    tracing::warn!(
                        check = collector.name(),
                        error = %e,
                        retry_in_s = wait.as_secs(),
                        "check failed: CRITICAL sent; retrying with backoff, logged again when it recovers"
                    );
                }
                due = now + wait;
            }
        }
        if out.series.is_empty() && out.checks.is_empty() {
            continue;
        }
        let mut o = lock(&outbox);
        let room = OUTBOX_SERIES.saturating_sub(o.held.series.len());
        if out.series.len() > room {
            o.dropped += (out.series.len() - room) as u64;
            out.series.truncate(room);
        }
        o.held.series.append(&mut out.series);
        if o.held.checks.len() < OUTBOX_SERIES {
            o.held.checks.append(&mut out.checks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_monotonic_counts_as_the_agent_makes_them() {
        let mut c = Counters::default();
        let mut out = Collected::default();
        let tags = || vec!["db:a".to_owned()];
        let mut s = c.submit(&mut out, Duration::from_secs(15));
        s.rate("r", 100.0, tags());
        s.monotonic_count("m", 100.0, tags());
        s.gauge("g", 1.5, tags());
        s.finish();
        assert_eq!(
            out.series.len(),
            1,
            "the first collection sends only the gauge"
        );
        std::thread::sleep(Duration::from_millis(200));
        let mut out = Collected::default();
        let mut s = c.submit(&mut out, Duration::from_secs(15));
        s.rate("r", 120.0, tags());
        s.monotonic_count("m", 130.0, tags());
        s.finish();
        let r = &out.series[0];
        assert_eq!(r.kind, SeriesKind::Gauge);
        let v = r.points[0].1;
        assert!(v > 20.0 / 0.4 && v <= 20.0 / 0.2, "{v}");
        let m = &out.series[1];
        assert_eq!(
            (m.kind, m.points[0].1, m.interval),
            (SeriesKind::Count, 30.0, Some(15))
        );
        // A reset: no rate, a zero count.
        let mut out = Collected::default();
        let mut s = c.submit(&mut out, Duration::from_secs(15));
        s.rate("r", 5.0, tags());
        s.monotonic_count("m", 5.0, tags());
        s.finish();
        assert_eq!(out.series.len(), 1);
        assert_eq!(out.series[0].points[0].1, 0.0);
        // Counters not submitted are forgotten.
        let mut out = Collected::default();
        c.submit(&mut out, Duration::from_secs(15)).finish();
        assert!(c.is_empty());
    }

    #[test]
    fn one_series_per_context_with_a_point_per_collection() {
        let g = |v: f64, ts: i64, tag: &str| {
            series("g", SeriesKind::Gauge, ts, v, vec![tag.to_owned()], None)
        };
        let merged = merge(vec![
            g(1.0, 10, "a:1"),
            g(2.0, 10, "a:2"),
            g(3.0, 11, "a:1"),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].points, [(10, 1.0), (11, 3.0)]);
        assert_eq!(merged[1].points, [(10, 2.0)]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let i = Duration::from_secs(15);
        let got: Vec<u64> = (1..=6).map(|f| backoff(i, f).as_secs()).collect();
        assert_eq!(got, [15, 30, 60, 120, 120, 120]);
        assert_eq!(backoff(Duration::from_secs(1), 3), Duration::from_secs(4));
    }

    #[test]
    fn scrub_hides_the_secret() {
        assert_eq!(scrub("bad hunter2 here", "hunter2"), "bad <redacted> here");
        assert_eq!(scrub("x", ""), "x");
    }
}
