//! Sample: which processed chunks are kept, and the `rate_by_service`
//! answered to tracers, as the trace-agent's samplers decide them
//! (pkg/trace/sampler): priority < 0 dropped; priority > 0 kept; priority
//! 0 dropped unless the error sampler keeps it (`DD_APM_ERROR_TPS`);
//! chunks without a priority through a score sampler at `DD_APM_MAX_TPS`.
//! The rates tracers get aim the kept traces of all services together at
//! `DD_APM_MAX_TPS`, shared out as the Agent shares them (max-min fairness
//! over the signatures seen).
//!
//! In: a [`Chunk`]. Out: a [`Decision`]. Must never: hold more than
//! [`MAX_SIGNATURES`] signatures (older ones are forgotten first).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::process::{Chunk, PRIORITY_NONE};

/// Window over which traffic is counted to compute rates (the Agent's
/// decay period).
const WINDOW: Duration = Duration::from_secs(10);
/// Signatures (service, env) remembered per sampler.
pub const MAX_SIGNATURES: usize = 1_000;
/// The Agent's multiplier for sampling by trace id (Knuth).
const KNUTH_FACTOR: u64 = 1_111_111_111_111_111_111;

/// Why a chunk is kept or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// priority > 0: the tracer kept it.
    KeepPriority,
    /// priority 0 with an error, kept by the error sampler.
    KeepError,
    /// No priority, kept by the score sampler.
    KeepNoPriority,
    /// priority < 0 (`manual.drop`, user rules).
    DropUserReject,
    /// priority 0, not kept by the error sampler.
    DropAutoReject,
    /// No priority, not kept by the score sampler.
    DropNoPriority,
}

impl Decision {
    /// Whether the chunk goes to the intake.
    pub fn kept(self) -> bool {
        matches!(
            self,
            Self::KeepPriority | Self::KeepError | Self::KeepNoPriority
        )
    }
}

/// Whether a trace id is kept at `rate`, as the Agent's `SampledByRate`:
/// the same trace is decided the same way on every agent.
pub fn sampled_by_rate(trace_id: u64, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let bound = (rate * u64::MAX as f64) as u64;
    trace_id.wrapping_mul(KNUTH_FACTOR) < bound
}

/// Traffic per signature over the current and last window, and the rates
/// computed from them at each window's end.
#[derive(Debug)]
struct Rates {
    target_tps: f64,
    window_start: Instant,
    /// (seen this window, seen last window, rate, last seen)
    sigs: HashMap<String, (f64, f64, f64, Instant)>,
}

impl Rates {
    fn new(target_tps: f64, now: Instant) -> Self {
        Self {
            target_tps,
            window_start: now,
            sigs: HashMap::new(),
        }
    }

    /// Counts one trace of `sig` and returns its rate.
    fn count(&mut self, sig: &str, now: Instant) -> f64 {
        self.roll(now);
        // A signature seen before (nearly always): no key to allocate and
        // hash twice.
        if let Some(e) = self.sigs.get_mut(sig) {
            e.0 += 1.0;
            e.3 = now;
            return e.2;
        }
        if self.sigs.len() >= MAX_SIGNATURES {
            if let Some(oldest) = self
                .sigs
                .iter()
                .min_by_key(|(_, v)| v.3)
                .map(|(k, _)| k.clone())
            {
                self.sigs.remove(&oldest);
            }
        }
        let e = self
            .sigs
            .entry(sig.to_owned())
            .or_insert((0.0, 0.0, 1.0, now));
        e.0 += 1.0;
        e.3 = now;
        e.2
    }

    fn rate(&self, sig: &str) -> f64 {
        self.sigs.get(sig).map_or(1.0, |e| e.2)
    }

    /// At each window's end, new rates from the traffic seen: the target is
    /// shared out by max-min fairness, each signature's rate its share over
    /// its traffic (at most 1).
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < WINDOW {
            return;
        }
        let secs = elapsed.as_secs_f64();
        self.window_start = now;
        self.sigs
            .retain(|_, e| now.saturating_duration_since(e.3) < WINDOW * 6);
        let mut tps: Vec<(String, f64)> = self
            .sigs
            .iter_mut()
            .map(|(k, e)| {
                // The traffic of the last two windows, the newer weighing more.
                let t = (e.0 + e.1 * 0.5) / (secs * 1.5);
                e.1 = e.0;
                e.0 = 0.0;
                (k.clone(), t)
            })
            .collect();
        tps.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut left = self.target_tps;
        let n = tps.len();
        for (i, (k, t)) in tps.into_iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let share = left / (n - i) as f64;
            let given = t.min(share);
            left -= given;
            if let Some(e) = self.sigs.get_mut(&k) {
                e.2 = if t <= 0.0 {
                    1.0
                } else {
                    (given / t).clamp(0.0, 1.0)
                };
            }
        }
    }
}

/// The samplers of one relay.
#[derive(Debug)]
pub struct Sampler {
    priority: Rates,
    errors: Rates,
    no_priority: Rates,
    /// The signature of the chunk being decided, its allocation reused.
    sig: String,
}

/// The signature key, in the form tracers read in `rate_by_service`.
pub fn signature(service: &str, env: &str) -> String {
    let mut sig = String::new();
    signature_into(service, env, &mut sig);
    sig
}

/// [`signature`] written into `out`.
fn signature_into(service: &str, env: &str, out: &mut String) {
    out.clear();
    out.push_str("service:");
    out.push_str(service);
    out.push_str(",env:");
    out.push_str(env);
}

impl Sampler {
    /// Samplers aimed at `max_tps` and `error_tps`.
    pub fn new(max_tps: f64, error_tps: f64) -> Self {
        let now = Instant::now();
        Self {
            priority: Rates::new(max_tps, now),
            errors: Rates::new(error_tps, now),
            no_priority: Rates::new(max_tps, now),
            sig: String::new(),
        }
    }

    /// Decides one chunk.
    pub fn decide(&mut self, chunk: &Chunk, now: Instant) -> Decision {
        let root = chunk.root();
        signature_into(&root.service, &chunk.env, &mut self.sig);
        let sig = self.sig.as_str();
        match chunk.priority {
            PRIORITY_NONE => {
                let rate = self.no_priority.count(sig, now);
                if sampled_by_rate(root.trace_id, rate) {
                    Decision::KeepNoPriority
                } else {
                    Decision::DropNoPriority
                }
            }
            p => {
                // Every trace a tracer sampled counts towards the rate it
                // will be told, kept or not (the Agent counts them all).
                self.priority.count(sig, now);
                if p > 0 {
                    Decision::KeepPriority
                } else if p < 0 {
                    Decision::DropUserReject
                } else if chunk.has_error {
                    let rate = self.errors.count(sig, now);
                    if sampled_by_rate(root.trace_id, rate) {
                        Decision::KeepError
                    } else {
                        Decision::DropAutoReject
                    }
                } else {
                    Decision::DropAutoReject
                }
            }
        }
    }

    /// The `rate_by_service` body tracers get: every signature seen, and
    /// the default `service:,env:` at 1.
    pub fn rates_json(&mut self, now: Instant) -> String {
        self.priority.roll(now);
        let mut out = String::from("{\"rate_by_service\":{\"service:,env:\":1");
        let mut keys: Vec<&String> = self.priority.sigs.keys().collect();
        keys.sort();
        for k in keys {
            out.push(',');
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push(':');
            out.push_str(&format!("{}", self.priority.rate(k)));
        }
        out.push_str("}}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libdd_trace_protobuf::pb;

    fn chunk(id: u64, priority: i32, error: bool) -> Chunk {
        Chunk {
            spans: vec![pb::Span {
                service: "web".to_owned(),
                trace_id: id,
                span_id: 1,
                error: i32::from(error),
                ..Default::default()
            }],
            root: 0,
            priority,
            origin: String::new(),
            env: "prod".to_owned(),
            version: String::new(),
            has_error: error,
        }
    }

    #[test]
    fn priorities_decide_as_in_the_agent() {
        let mut s = Sampler::new(10.0, 10.0);
        let now = Instant::now();
        assert_eq!(s.decide(&chunk(1, 2, false), now), Decision::KeepPriority);
        assert_eq!(s.decide(&chunk(2, 1, false), now), Decision::KeepPriority);
        assert_eq!(
            s.decide(&chunk(3, -1, false), now),
            Decision::DropUserReject
        );
        assert_eq!(s.decide(&chunk(4, 0, false), now), Decision::DropAutoReject);
        // The error sampler starts at rate 1.
        assert_eq!(s.decide(&chunk(5, 0, true), now), Decision::KeepError);
    }

    #[test]
    fn signatures_past_the_limit_forget_the_least_recently_seen() {
        let t0 = Instant::now();
        let mut r = Rates::new(10.0, t0);
        let at = |i: usize| t0 + Duration::from_millis(i as u64);
        for i in 0..MAX_SIGNATURES {
            r.count(&signature(&format!("s{i}"), "prod"), at(i));
        }
        // s0 seen again: s1 is now the least recently seen.
        r.count(&signature("s0", "prod"), at(MAX_SIGNATURES));
        r.count(&signature("new", "prod"), at(MAX_SIGNATURES + 1));
        assert_eq!(r.sigs.len(), MAX_SIGNATURES);
        assert!(r.sigs.contains_key("service:s0,env:prod"));
        assert!(r.sigs.contains_key("service:new,env:prod"));
        assert!(!r.sigs.contains_key("service:s1,env:prod"));
        assert_eq!(r.sigs["service:s0,env:prod"].0, 2.0, "counted twice");
    }

    #[test]
    fn rates_aim_at_the_target() {
        let mut s = Sampler::new(10.0, 10.0);
        let t0 = Instant::now();
        // 100 traces a second for 10 s.
        for i in 0..1000u64 {
            s.decide(&chunk(i + 1, 1, false), t0 + Duration::from_millis(i * 10));
        }
        let json = s.rates_json(t0 + Duration::from_secs(10));
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        let rate = v["rate_by_service"]["service:web,env:prod"]
            .as_f64()
            .expect("rate");
        assert!((0.05..0.2).contains(&rate), "{rate}: 10 of 100 a second");
        assert_eq!(v["rate_by_service"]["service:,env:"], 1);
    }

    #[test]
    fn sampling_by_rate_is_deterministic_and_proportional() {
        let kept = (1..=100_000u64)
            .filter(|&id| sampled_by_rate(id, 0.25))
            .count();
        assert!((20_000..30_000).contains(&kept), "{kept}");
        assert!(sampled_by_rate(12_345, 1.0));
        assert!(!sampled_by_rate(12_345, 0.0));
    }
}
