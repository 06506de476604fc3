//! The retry queue: payloads the intake could not take yet, bounded in bytes.
//!
//! In: payloads that met a 408, 429, 5xx or a connection error. Out: the same
//! payloads, oldest first, when the shared backoff says the intake may be
//! tried again.
//!
//! Must never: hold more than its byte limit (the oldest payloads make room
//! and are counted), or hand out a payload twice (a payload is popped to be
//! sent and only pushed back if that attempt failed).
//!
//! The backoff is one clock for the whole intake, not one per payload: when
//! the intake is down, every payload would fail alike, and a shared clock
//! means one probe request per backoff step instead of one per payload. As in
//! the Agent's forwarder the wait doubles per failure and is jittered into
//! `[t/2, t]`; our base is 1 s and the cap 32 s, shorter than the Agent's
//! 2 s / 64 s because a dyno lives for hours, not months.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::payload::Payload;

/// First backoff step.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest backoff step.
pub const BACKOFF_MAX: Duration = Duration::from_secs(32);

/// A payload waiting for another attempt.
#[derive(Debug)]
pub struct Queued {
    /// The payload.
    pub payload: Payload,
    /// Attempts so far.
    pub attempts: u32,
}

/// What [`RetryQueue::push`] had to drop to stay under its limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Payloads dropped.
    pub payloads: u64,
    /// Their compressed bytes.
    pub bytes: u64,
}

/// Bounded FIFO of payloads plus the intake's backoff clock.
#[derive(Debug)]
pub struct RetryQueue {
    items: VecDeque<Queued>,
    bytes: usize,
    limit: usize,
    failures: u32,
    next_attempt: Option<Instant>,
}

impl RetryQueue {
    /// An empty queue holding at most `limit` compressed bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
            limit,
            failures: 0,
            next_attempt: None,
        }
    }

    /// Payloads waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Compressed bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a payload, dropping the oldest ones if the limit requires it.
    /// A payload larger than the whole limit is dropped itself.
    pub fn push(&mut self, q: Queued) -> Evicted {
        let mut evicted = Evicted::default();
        let size = q.payload.body.len();
        if size > self.limit {
            evicted.payloads += 1;
            evicted.bytes += size as u64;
            return evicted;
        }
        while self.bytes + size > self.limit {
            let Some(old) = self.items.pop_front() else {
                break;
            };
            self.bytes -= old.payload.body.len();
            evicted.payloads += 1;
            evicted.bytes += old.payload.body.len() as u64;
        }
        self.bytes += size;
        self.items.push_back(q);
        evicted
    }

    /// Puts a payload that just failed back at the front, where the oldest
    /// live. If that takes the queue past its limit, the oldest make room
    /// (possibly this one), as in [`RetryQueue::push`].
    pub fn push_front(&mut self, q: Queued) -> Evicted {
        self.bytes += q.payload.body.len();
        self.items.push_front(q);
        let mut evicted = Evicted::default();
        while self.bytes > self.limit {
            let Some(old) = self.items.pop_front() else {
                break;
            };
            self.bytes -= old.payload.body.len();
            evicted.payloads += 1;
            evicted.bytes += old.payload.body.len() as u64;
        }
        evicted
    }

    /// Takes the oldest payload.
    pub fn pop(&mut self) -> Option<Queued> {
        let q = self.items.pop_front()?;
        self.bytes -= q.payload.body.len();
        Some(q)
    }

    /// Takes everything (for the final drop at the shutdown deadline).
    pub fn take_all(&mut self) -> Vec<Queued> {
        self.bytes = 0;
        self.items.drain(..).collect()
    }

    /// Whether the backoff allows an attempt at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        match self.next_attempt {
            Some(t) => now >= t,
            None => true,
        }
    }

    /// When the next attempt is allowed, if the intake is backing off.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next_attempt
    }

    /// Records a failed attempt: the next one waits base·2ⁿ, capped and
    /// jittered into `[t/2, t]`.
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(16);
        let t = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
        self.next_attempt = Some(now + jitter(t));
    }

    /// Records a failed attempt during shutdown: retry within 100-500 ms.
    pub fn failed_draining(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let ms = 100 + fastrand::u64(0..=400);
        self.next_attempt = Some(now + Duration::from_millis(ms));
    }

    /// Allows an attempt right away (shutdown drain start).
    pub fn wake(&mut self) {
        self.next_attempt = None;
    }

    /// Records a success: the intake is up, no more backoff.
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

    fn payload(n: usize) -> Queued {
        Queued {
            payload: Payload {
                endpoint: Endpoint::Series,
                body: vec![0; n],
                raw_len: n,
                items: 1,
            },
            attempts: 1,
        }
    }

    #[test]
    fn overflow_drops_the_oldest() {
        let mut q = RetryQueue::new(250);
        assert_eq!(q.push(payload(100)), Evicted::default());
        assert_eq!(q.push(payload(101)), Evicted::default());
        let e = q.push(payload(102));
        assert_eq!(
            e,
            Evicted {
                payloads: 1,
                bytes: 100
            }
        );
        assert_eq!(q.bytes(), 203);
        assert_eq!(q.pop().map(|p| p.payload.body.len()), Some(101));
        assert_eq!(q.bytes(), 102);
        let e = q.push(payload(300));
        assert_eq!(
            e,
            Evicted {
                payloads: 1,
                bytes: 300
            },
            "larger than the limit: itself"
        );
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let mut q = RetryQueue::new(1);
        let now = Instant::now();
        assert!(q.ready(now));
        let mut last = Duration::ZERO;
        for i in 0..10 {
            q.failed(now);
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
    }
}
