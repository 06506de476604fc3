//! The sender: takes encoded payloads off a bounded channel and delivers
//! them, on its own thread and runtime, with a few requests in flight.
//!
//! In: [`Command`]s from the [`super::Forwarder`]: payloads, a settle probe
//! (tests), and the shutdown deadline. Out: requests to the intake, counters
//! in [`Stats`], log lines at a bounded rate, and a call of the caller's
//! [`IdleHook`] each time it has nothing left to send after requests ended.
//!
//! Must never: leave a payload on the channel while it waits on the network
//! (every wait is a `select!` that also reads the channel), have more than
//! [`MAX_IN_FLIGHT`] requests open, drop a payload without counting it and
//! its points, or outlive the shutdown deadline: at the deadline the requests
//! in flight are cut and what is left is counted and logged in one line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::http::{Http, Sent};
use super::payload::{Carry, Limits, Payload};
use super::retry::{Evicted, Queued, RetryQueue};
use super::Throttle;
use crate::dogstatsd::stats::Stats;

/// Requests open at once. A few, so one slow answer delays only its own
/// payload, and a recovering intake is not hit by the whole backlog at once.
pub const MAX_IN_FLIGHT: usize = 4;
/// Of those, at most this many carry retries while fresh payloads wait.
const RETRY_SHARE: usize = MAX_IN_FLIGHT / 2;
/// Longest wait for one request. Well above the intake's normal latency (a
/// timeout cannot tell whether the intake took the payload, so each one may
/// cost a duplicate); the Agent's `forwarder_timeout` default is 20 s too.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// During the drain, an attempt with less time than this left is not made.
const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// Called on the sender thread when its requests have ended and nothing
/// waits to be sent or retried (`serve` gives back the memory the requests
/// used). It must be quick.
pub type IdleHook = Arc<dyn Fn() + Send + Sync>;

/// What the forwarder tells the sender.
#[derive(Debug)]
pub enum Command {
    /// One flush's payloads, in order.
    Payloads(Vec<Payload>),
    /// Answer once nothing is in flight and nothing can go right now (what
    /// waits, waits out the backoff).
    Settle(oneshot::Sender<()>),
    /// Deliver what is held until `deadline`, then stop; answer when done.
    Shutdown {
        /// When to cut everything.
        deadline: Instant,
        /// Answered when the sender is done.
        done: oneshot::Sender<()>,
    },
}

/// A request's outcome, back from its task.
struct Done {
    ticket: u64,
    sent: Sent,
    latency: Duration,
}

/// A payload whose request is open.
struct Flying {
    q: Queued,
    retry: bool,
}

struct Logs {
    forbidden: Throttle,
    rejected: Throttle,
    unavailable: Throttle,
    evicted: Throttle,
    oversize: Throttle,
}

/// The sender's state. Built on the caller's thread, run on its own.
pub struct Sender {
    http: Arc<Http>,
    stats: Arc<Stats>,
    limits: Limits,
    queue: RetryQueue,
    queued: Arc<AtomicUsize>,
    tasks: JoinSet<Done>,
    flying: HashMap<u64, Flying>,
    next_ticket: u64,
    next_seq: u64,
    deadline: Option<Instant>,
    settles: Vec<oneshot::Sender<()>>,
    done: Option<oneshot::Sender<()>>,
    logs: Logs,
    recovered: u64,
    idle: Option<IdleHook>,
    /// A request ended since the last call of `idle`.
    ended: bool,
}

impl Sender {
    /// A sender for `http` whose queue holds at most `queue_bytes`; `idle`
    /// is called each time it has delivered (or given up on) all it held.
    pub fn new(
        http: Http,
        stats: Arc<Stats>,
        limits: Limits,
        queue_bytes: usize,
        queued: Arc<AtomicUsize>,
        idle: Option<IdleHook>,
    ) -> Self {
        Self {
            http: Arc::new(http),
            stats,
            limits,
            queue: RetryQueue::new(queue_bytes),
            queued,
            tasks: JoinSet::new(),
            flying: HashMap::new(),
            next_ticket: 0,
            next_seq: 0,
            deadline: None,
            settles: Vec::new(),
            done: None,
            logs: Logs {
                forbidden: Throttle::new(),
                rejected: Throttle::new(),
                unavailable: Throttle::new(),
                evicted: Throttle::new(),
                oversize: Throttle::new(),
            },
            recovered: 0,
            idle,
            ended: false,
        }
    }

    /// Runs on the current thread until shutdown ends (or the forwarder is
    /// dropped without one).
    pub fn run_blocking(self, rx: mpsc::Receiver<Command>) {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(self.run(rx)),
            Err(e) => {
                tracing::error!(error = %e, "could not start the sender runtime; nothing is forwarded")
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut open = true;
        loop {
            self.dispatch();
            self.publish();
            // Idle: dispatch started whatever could go; what waits, waits
            // for the backoff.
            if self.flying.is_empty() {
                // Delivered all it holds (not while retries wait: an outage
                // or a drain would call it after every attempt).
                if self.queue.is_empty() && std::mem::take(&mut self.ended) {
                    if let Some(idle) = &self.idle {
                        idle();
                    }
                }
                for s in self.settles.drain(..) {
                    let _ = s.send(());
                }
            }
            if self.deadline.is_some() && self.queue.is_empty() && self.flying.is_empty() {
                break;
            }
            if !open && self.deadline.is_none() {
                // The forwarder went away without a shutdown (tests): stop.
                self.tasks.abort_all();
                return;
            }
            // Wake when the backoff ends, if that would let a request start.
            let backoff = self.queue.next_attempt().filter(|t| {
                *t > Instant::now() && !self.queue.is_empty() && self.flying.is_empty()
            });
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                cmd = rx.recv(), if open => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => open = false,
                },
                Some(res) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok(done) = res {
                        self.completed(done);
                    }
                }
                () = tokio::time::sleep_until(backoff.unwrap_or(far)), if backoff.is_some() => {}
                () = tokio::time::sleep_until(self.deadline.unwrap_or(far)), if self.deadline.is_some() => {
                    self.give_up();
                    break;
                }
            }
        }
        self.publish();
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Payloads(payloads) => {
                for payload in payloads {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let evicted = self.queue.push(Queued {
                        payload,
                        attempts: 0,
                        seq,
                    });
                    self.count_evicted(evicted);
                }
            }
            Command::Settle(tx) => self.settles.push(tx),
            Command::Shutdown { deadline, done } => {
                self.deadline = Some(deadline);
                self.done = Some(done);
                self.queue.wake();
            }
        }
    }

    /// Starts requests while slots are free and the backoff allows: up to
    /// [`MAX_IN_FLIGHT`] while the intake answers, one probe at a time while
    /// it fails.
    fn dispatch(&mut self) {
        loop {
            let now = Instant::now();
            if self.flying.len() >= MAX_IN_FLIGHT
                || !self.queue.ready(now)
                || (self.queue.failing() && !self.flying.is_empty())
            {
                return;
            }
            let timeout = match self.deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(now);
                    if left < MIN_ATTEMPT {
                        return;
                    }
                    left.min(REQUEST_TIMEOUT)
                }
                None => REQUEST_TIMEOUT,
            };
            let retries = self.flying.values().filter(|f| f.retry).count();
            let Some((mut q, retry)) = self.queue.pop(retries, RETRY_SHARE) else {
                return;
            };
            if retry {
                Stats::add(&self.stats.retries, 1);
            }
            Stats::add(&self.stats.requests, 1);
            q.attempts = q.attempts.saturating_add(1);
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            let http = Arc::clone(&self.http);
            // The task sends its own copy: the bytes stay here, to be counted
            // if the request is cut, and resent unchanged if it fails.
            let payload = q.payload.clone();
            self.tasks.spawn(async move {
                let started = Instant::now();
                let sent = http.send(&payload, timeout).await;
                Done {
                    ticket,
                    sent,
                    latency: started.elapsed(),
                }
            });
            self.flying.insert(ticket, Flying { q, retry });
        }
    }

    fn completed(&mut self, done: Done) {
        let Some(Flying { q, .. }) = self.flying.remove(&done.ticket) else {
            return;
        };
        self.ended = true;
        let ms = u64::try_from(done.latency.as_millis()).unwrap_or(u64::MAX);
        self.stats.latency_ms.fetch_max(ms, Ordering::Relaxed);
        let now = Instant::now();
        match done.sent {
            Sent::Accepted => {
                Stats::add(&self.stats.payloads, 1);
                Stats::add(&self.stats.points, q.payload.points as u64);
                Stats::add(&self.stats.bytes, q.payload.body.len() as u64);
                if self.queue.failing() {
                    self.queue.succeeded();
                    self.recovered = 0;
                }
                if q.attempts > 1 {
                    self.recovered += 1;
                    if self.queue.retries() == 0 {
                        tracing::info!(
                            delivered = self.recovered,
                            "the intake accepts data again; the retry queue is empty"
                        );
                        self.recovered = 0;
                    }
                }
            }
            Sent::Forbidden => {
                self.dropped(&q);
                if let Some(suppressed) = self.logs.forbidden.check(now) {
                    tracing::error!(
                        intake = %self.http.base_url,
                        site = %self.http.site,
                        suppressed,
                        "Datadog rejected the API key (HTTP 403) at {}; payloads are dropped until it is fixed. \
                         Set a valid API key (not an application key) for this site with \
                         `heroku config:set DD_API_KEY=<your API key>`, and check DD_SITE \
                         (e.g. datadoghq.eu for an EU account; now {})",
                        self.http.base_url,
                        self.http.site,
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
                    let halves = a
                        .into_iter()
                        .chain(b)
                        .map(|payload| Queued {
                            payload,
                            attempts: q.attempts,
                            seq: q.seq,
                        })
                        .collect();
                    let evicted = self.queue.push_fresh_front(halves);
                    self.count_evicted(evicted);
                }
                None => {
                    self.dropped(&q);
                    if let Some(suppressed) = self.logs.oversize.check(now) {
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
                self.dropped(&q);
                if let Some(suppressed) = self.logs.rejected.check(now) {
                    tracing::error!(
                        status,
                        kind = q.payload.endpoint.name(),
                        url = %self.http.url(q.payload.endpoint),
                        response = %self.http.scrub(&body),
                        suppressed,
                        "intake rejected a payload; it is dropped (check DD_DD_URL / DD_SITE if this persists)"
                    );
                }
            }
            Sent::Retry {
                reason,
                retry_after,
            } => {
                if let Some(suppressed) = self.logs.unavailable.check(now) {
                    tracing::warn!(
                        kind = q.payload.endpoint.name(),
                        url = %self.http.url(q.payload.endpoint),
                        reason = %self.http.scrub(&reason),
                        retry_after_s = retry_after.map(|d| d.as_secs()),
                        queued = self.queue.len() + 1,
                        suppressed,
                        "intake unavailable; the payload is queued for retry"
                    );
                }
                if self.deadline.is_some() {
                    self.queue.failed_draining(now, retry_after);
                } else {
                    self.queue.failed(now, retry_after);
                }
                let evicted = self.queue.push_retry(q);
                self.count_evicted(evicted);
            }
        }
    }

    /// Counts one payload given up on.
    fn dropped(&self, q: &Queued) {
        Stats::add(&self.stats.failures, 1);
        Stats::add(&self.stats.points_dropped, q.payload.points as u64);
        self.give_back(q.payload.carry);
    }

    /// A dropped self-telemetry payload's drop counts go back to the
    /// counters, for the next flush to report.
    fn give_back(&self, c: Carry) {
        self.stats.give_back(&c);
    }

    fn count_evicted(&mut self, e: Evicted) {
        if e.payloads == 0 {
            return;
        }
        Stats::add(&self.stats.queue_dropped, e.payloads);
        Stats::add(&self.stats.failures, e.payloads);
        Stats::add(&self.stats.points_dropped, e.points);
        self.give_back(e.carry);
        if let Some(suppressed) = self.logs.evicted.check(Instant::now()) {
            tracing::warn!(
                payloads = e.payloads,
                points = e.points,
                bytes = e.bytes,
                suppressed,
                "send queue full: dropped the oldest payloads (raise DYNOSTAT_RETRY_QUEUE_BYTES to hold more while the intake is down; counted in dynostat.forwarder.points_dropped)"
            );
        }
    }

    /// The deadline: cut the requests in flight, count everything held as
    /// lost, and say so in one line.
    fn give_up(&mut self) {
        self.tasks.abort_all();
        let mut lost: Vec<Queued> = self.flying.drain().map(|(_, f)| f.q).collect();
        lost.extend(self.queue.take_all());
        if lost.is_empty() {
            return;
        }
        let payloads = lost.len() as u64;
        let points: u64 = lost.iter().map(|q| q.payload.points as u64).sum();
        let bytes: u64 = lost.iter().map(|q| q.payload.body.len() as u64).sum();
        Stats::add(&self.stats.failures, payloads);
        Stats::add(&self.stats.points_dropped, points);
        tracing::error!(
            payloads,
            points,
            bytes,
            "shutdown deadline reached: {payloads} payloads ({points} points, {bytes} bytes) were not delivered and are lost \
             (raise DYNOSTAT_SHUTDOWN_TIMEOUT if the intake is slow)"
        );
    }

    fn publish(&self) {
        self.stats
            .queue_bytes
            .store(self.queue.bytes() as u64, Ordering::Relaxed);
        self.stats
            .in_flight
            .store(self.flying.len() as u64, Ordering::Relaxed);
        self.queued.store(self.queue.len(), Ordering::Relaxed);
    }
}
