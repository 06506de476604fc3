//! The send queue: payloads waiting for a first try or for another one,
//! bounded in bytes as a whole, and the intake's backoff clock.
//!
//! In: fresh payloads from the encoder, and payloads that met a retryable
//! answer (see [`super::http::classify`]). Out: the next payload to send,
//! fresh and retried ones side by side, so a backlog never starves fresh data.
//!
//! Must never: hold more than its byte limit (the oldest payloads, fresh or
//! retried, make room and are handed back to be counted), hand out a payload
//! twice (a payload is taken to be sent and only put back if that attempt
//! failed), or reorder: each payload keeps its sequence number, and the retry
//! queue stays sorted by it whatever order the answers come back in.
//!
//! The backoff is one clock for the whole intake, not one per payload: when
//! the intake is down, every payload would fail alike, and a shared clock
//! means one probe request per backoff step instead of one per payload. As in
//! the Agent's forwarder the wait doubles per failure and is jittered into
//! `[t/2, t]`; our base is 1 s and the cap 32 s, shorter than the Agent's
//! 2 s / 64 s because a dyno lives for hours, not months. A `Retry-After`
//! from the intake lengthens the wait, up to the cap.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::payload::{Carry, Payload};

/// First backoff step.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest backoff step, and the longest `Retry-After` honoured.
pub const BACKOFF_MAX: Duration = Duration::from_secs(32);

/// A payload on its way.
#[derive(Debug)]
pub struct Queued {
    /// The payload.
    pub payload: Payload,
    /// Attempts so far.
    pub attempts: u32,
    /// Its place in the order payloads were made (the halves of a 413 share
    /// their parent's).
    pub seq: u64,
}

/// What had to be dropped to stay under the limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Payloads dropped.
    pub payloads: u64,
    /// Their points.
    pub points: u64,
    /// Their compressed bytes.
    pub bytes: u64,
    /// The drop counts they carried, to be given back to the counters.
    pub carry: Carry,
}

impl Evicted {
    fn add(&mut self, q: &Queued) {
        self.payloads += 1;
        self.points += q.payload.points as u64;
        self.bytes += q.payload.body.len() as u64;
        self.carry.add(&q.payload.carry);
    }
}

/// Fresh and retried payloads under one byte limit, plus the backoff clock.
#[derive(Debug)]
pub struct RetryQueue {
    fresh: VecDeque<Queued>,
    retry: VecDeque<Queued>,
    bytes: usize,
    limit: usize,
    failures: u32,
    next_attempt: Option<Instant>,
    /// Until when the intake asked us to wait (`Retry-After`); a success of
    /// a request that was already in flight does not lift it.
    hold_until: Option<Instant>,
}

impl RetryQueue {
    /// An empty queue holding at most `limit` compressed bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            fresh: VecDeque::new(),
            retry: VecDeque::new(),
            bytes: 0,
            limit,
            failures: 0,
            next_attempt: None,
            hold_until: None,
        }
    }

    /// Payloads waiting, fresh and retried.
    pub fn len(&self) -> usize {
        self.fresh.len() + self.retry.len()
    }

    /// Payloads waiting for another attempt.
    pub fn retries(&self) -> usize {
        self.retry.len()
    }

    /// Payloads waiting for a first attempt.
    pub fn fresh(&self) -> usize {
        self.fresh.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.fresh.is_empty() && self.retry.is_empty()
    }

    /// Compressed bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a fresh payload, dropping the oldest ones if the limit
    /// requires it (a payload larger than the whole limit is dropped itself).
    pub fn push(&mut self, q: Queued) -> Evicted {
        self.bytes += q.payload.body.len();
        self.fresh.push_back(q);
        self.evict()
    }

    /// Puts fresh payloads (the halves of a 413) back at the front, in order.
    pub fn push_fresh_front(&mut self, items: Vec<Queued>) -> Evicted {
        for q in items.into_iter().rev() {
            self.bytes += q.payload.body.len();
            self.fresh.push_front(q);
        }
        self.evict()
    }

    /// Puts a payload that just failed into the retry queue, in its place
    /// by sequence number.
    pub fn push_retry(&mut self, q: Queued) -> Evicted {
        self.bytes += q.payload.body.len();
        let at = self.retry.partition_point(|r| r.seq <= q.seq);
        self.retry.insert(at, q);
        self.evict()
    }

    /// Drops the oldest payloads (lowest sequence number, whichever queue)
    /// until the bytes fit the limit.
    fn evict(&mut self) -> Evicted {
        let mut evicted = Evicted::default();
        while self.bytes > self.limit {
            let from_retry = match (self.retry.front(), self.fresh.front()) {
                (Some(r), Some(f)) => r.seq <= f.seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let old = if from_retry {
                self.retry.pop_front()
            } else {
                self.fresh.pop_front()
            };
            if let Some(old) = old {
                self.bytes -= old.payload.body.len();
                evicted.add(&old);
            }
        }
        evicted
    }

    /// Takes the next payload to send, and whether it is a retry. While the
    /// intake is healthy, retries take at most `retry_share` of the requests
    /// in flight when fresh payloads wait too, so neither starves; while it
    /// is failing, the oldest waiting payload goes first (a probe).
    pub fn pop(&mut self, retries_in_flight: usize, retry_share: usize) -> Option<(Queued, bool)> {
        let retry_first = if self.failures > 0 {
            match (self.retry.front(), self.fresh.front()) {
                (Some(r), Some(f)) => r.seq <= f.seq,
                (Some(_), None) => true,
                _ => false,
            }
        } else {
            !self.retry.is_empty() && (self.fresh.is_empty() || retries_in_flight < retry_share)
        };
        let (q, is_retry) = if retry_first {
            (self.retry.pop_front()?, true)
        } else {
            (self.fresh.pop_front()?, false)
        };
        self.bytes -= q.payload.body.len();
        Some((q, is_retry))
    }

    /// Takes everything (for the final count at the shutdown deadline).
    pub fn take_all(&mut self) -> Vec<Queued> {
        self.bytes = 0;
        self.retry.drain(..).chain(self.fresh.drain(..)).collect()
    }

    /// Whether the intake is failing (the last answer was a retryable failure).
    pub fn failing(&self) -> bool {
        self.failures > 0
    }

    /// Whether the backoff allows an attempt at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next_attempt().is_none_or(|t| now >= t)
    }

    /// When the next attempt is allowed, if the intake is backing off.
    pub fn next_attempt(&self) -> Option<Instant> {
        match (self.next_attempt, self.hold_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    fn hold(&mut self, now: Instant, retry_after: Option<Duration>) {
        if let Some(ra) = retry_after {
            let until = now + ra.min(BACKOFF_MAX);
            self.hold_until = Some(self.hold_until.map_or(until, |h| h.max(until)));
        }
    }

    /// Records a failed attempt: the next one waits base·2ⁿ, capped and
    /// jittered into `[t/2, t]`, or the intake's `Retry-After` if that is
    /// longer (capped at [`BACKOFF_MAX`]).
    pub fn failed(&mut self, now: Instant, retry_after: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(16);
        let t = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
        let wait = jitter(t).max(retry_after.unwrap_or_default().min(BACKOFF_MAX));
        self.next_attempt = Some(now + wait);
        self.hold(now, retry_after);
    }

    /// Records a failed attempt during shutdown: retry within 100-500 ms, or
    /// after the intake's `Retry-After` (the deadline still cuts it short).
    pub fn failed_draining(&mut self, now: Instant, retry_after: Option<Duration>) {
        self.failures = self.failures.saturating_add(1);
        let wait = Duration::from_millis(100 + fastrand::u64(0..=400))
            .max(retry_after.unwrap_or_default().min(BACKOFF_MAX));
        self.next_attempt = Some(now + wait);
        self.hold(now, retry_after);
    }

    /// Allows an attempt right away (shutdown drain start), but not before
    /// the intake's `Retry-After`.
    pub fn wake(&mut self) {
        self.next_attempt = None;
    }

    /// Records a success: the intake is up, no more backoff (a `Retry-After`
    /// still holds until it passes).
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.next_attempt = None;
    }
}

/// A duration in `[t/2, t]`.
fn jitter(t: Duration) -> Duration {
    let half = t / 2;
    let span = u64::try_from((t - half).as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(fastrand::u64(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::payload::Endpoint;

    fn payload(n: usize, seq: u64) -> Queued {
        Queued {
            payload: Payload {
                endpoint: Endpoint::Series,
                body: vec![0; n],
                raw_len: n,
                items: 1,
                points: 3,
                carry: Default::default(),
            },
            attempts: 1,
            seq,
        }
    }

    #[test]
    fn overflow_drops_the_oldest_of_either_queue_and_counts_points() {
        let mut q = RetryQueue::new(250);
        assert_eq!(q.push(payload(100, 1)), Evicted::default());
        assert_eq!(q.push_retry(payload(101, 0)), Evicted::default());
        let e = q.push(payload(102, 2));
        assert_eq!(
            e,
            Evicted {
                payloads: 1,
                points: 3,
                bytes: 101,
                carry: Carry::default(),
            },
            "the retried payload is the oldest"
        );
        assert_eq!(q.bytes(), 202);
        let e = q.push(payload(300, 3));
        assert_eq!(
            e.payloads, 3,
            "larger than the limit: itself, after the older ones"
        );
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn retries_keep_their_order_and_share_with_fresh_ones() {
        let mut q = RetryQueue::new(10_000);
        for seq in [5, 2, 9, 3] {
            q.push_retry(payload(10, seq));
        }
        for seq in [10, 11, 12] {
            q.push(payload(10, seq));
        }
        // Healthy, one retry slot of two: retry, then fresh while one retry flies.
        let (a, ra) = q.pop(0, 1).expect("one");
        assert_eq!((a.seq, ra), (2, true));
        let (b, rb) = q.pop(1, 1).expect("two");
        assert_eq!((b.seq, rb), (10, false));
        // Failing: the oldest goes first, whichever queue.
        q.failed(Instant::now(), None);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop(0, 1).map(|(q, _)| q.seq)).collect();
        assert_eq!(order, [3, 5, 9, 11, 12]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn backoff_doubles_caps_jitters_and_honours_retry_after() {
        let mut q = RetryQueue::new(1);
        let now = Instant::now();
        assert!(q.ready(now));
        let mut last = Duration::ZERO;
        for i in 0..10 {
            q.failed(now, None);
            let wait = q.next_attempt().map(|t| t - now).unwrap_or_default();
            let t = BACKOFF_BASE.saturating_mul(1 << i.min(16)).min(BACKOFF_MAX);
            assert!(
                wait >= t / 2 && wait <= t,
                "step {i}: {wait:?} not in [{:?}, {t:?}]",
                t / 2
            );
            assert!(wait >= last / 2);
            last = wait;
        }
        assert!(!q.ready(now));
        q.succeeded();
        assert!(q.ready(now));
        q.failed(now, Some(Duration::from_secs(5)));
        assert_eq!(
            q.next_attempt(),
            Some(now + Duration::from_secs(5)),
            "Retry-After above the first step"
        );
        q.succeeded();
        assert_eq!(
            q.next_attempt(),
            Some(now + Duration::from_secs(5)),
            "a success of a request already in flight does not lift Retry-After"
        );
        q.failed(now, Some(Duration::from_secs(3600)));
        assert_eq!(q.next_attempt(), Some(now + BACKOFF_MAX), "capped");
    }
}
