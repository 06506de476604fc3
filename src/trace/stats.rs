//! APM stats: hits, errors, durations and ok/error DDSketches per
//! (service, name, resource, type, status...) in 10 s buckets, computed on
//! every trace before sampling, as the trace-agent's concentrator does
//! (pkg/trace/stats), with `libdd-trace-stats`' `SpanConcentrator`; and
//! the encoding of those buckets, or a tracer's own (`/v0.6/stats`), as the
//! `StatsPayload` msgpack the intake takes.
//!
//! In: processed spans, tagged with their chunk's env and version. Out:
//! msgpack bodies for `/api/v0.2/stats`. Must never: hold more than
//! [`MAX_GROUPS`] (env, version) concentrators, each bounded by the
//! crate's cardinality limits (7,000 keys a bucket), or open a bucket more
//! than [`MAX_AHEAD`] in the future.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use libdd_trace_protobuf::pb;
use libdd_trace_stats::span_concentrator::SpanConcentrator;

/// The Agent's stats bucket.
pub const BUCKET: Duration = Duration::from_secs(10);
/// (env, version) pairs with a concentrator of their own; the spans of
/// further pairs are counted under the empty pair (see [`Stats::add`]).
pub const MAX_GROUPS: usize = 32;
/// How far past now a span may end and still be counted in its own bucket;
/// later ends (a tracer's clock or unit off) count in the current bucket,
/// or every 10 s of the future would be a bucket held until shutdown.
pub const MAX_AHEAD: Duration = Duration::from_secs(60);

/// The concentrators, one per (env, version), as the Agent keys its
/// payloads.
pub struct Stats {
    groups: HashMap<(String, String), SpanConcentrator>,
    span_kinds: Vec<String>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// No buckets yet.
    pub fn new() -> Self {
        Self {
            groups: HashMap::new(),
            span_kinds: libdd_trace_stats::span_concentrator::default_stats_eligible_span_kinds(),
        }
    }

    /// Adds the eligible spans of one chunk (top-level, measured, or of an
    /// eligible `span.kind`, as the Agent picks them). Past [`MAX_GROUPS`]
    /// pairs, a new pair's spans count under the empty pair.
    pub fn add(&mut self, spans: &[pb::Span], env: &str, version: &str) {
        let mut key = (env.to_owned(), version.to_owned());
        if !self.groups.contains_key(&key) && self.groups.len() >= MAX_GROUPS {
            key = (String::new(), String::new());
        }
        let kinds = &self.span_kinds;
        let c = self.groups.entry(key).or_insert_with(|| {
            SpanConcentrator::new(
                BUCKET,
                SystemTime::now(),
                kinds.clone(),
                Vec::new(),
                None,
                Vec::new(),
            )
        });
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let latest = now.saturating_add(MAX_AHEAD.as_nanos() as i64);
        for span in spans {
            if span.start.saturating_add(span.duration) > latest {
                let mut moved = span.clone();
                moved.start = now.saturating_sub(moved.duration.max(0));
                c.add_span(&moved);
            } else {
                c.add_span(span);
            }
        }
    }

    /// The buckets that are due (all with `force`, at shutdown), one
    /// `ClientStatsPayload` per (env, version). Concentrators left empty
    /// are forgotten.
    pub fn flush(&mut self, force: bool, hostname: &str) -> Vec<pb::ClientStatsPayload> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        self.groups.retain(|(env, version), c| {
            let buckets = c.flush(now, force).all_buckets();
            let keep = !buckets.is_empty() || !force;
            if !buckets.is_empty() {
                out.push(pb::ClientStatsPayload {
                    hostname: hostname.to_owned(),
                    env: env.clone(),
                    version: version.clone(),
                    stats: buckets,
                    ..Default::default()
                });
            }
            keep
        });
        out
    }
}

/// A `StatsPayload` for the intake, msgpack as the Agent sends it.
pub fn encode(
    stats: Vec<pb::ClientStatsPayload>,
    hostname: &str,
    env: &str,
    client_computed: bool,
) -> Option<Vec<u8>> {
    let payload = pb::StatsPayload {
        agent_hostname: hostname.to_owned(),
        agent_env: env.to_owned(),
        stats,
        agent_version: concat!("dynostat-", env!("CARGO_PKG_VERSION")).to_owned(),
        client_computed,
        split_payload: false,
    };
    rmp_serde::to_vec_named(&payload).ok()
}

/// Stats a tracer computed itself (`/v0.6/stats`, msgpack
/// `ClientStatsPayload`), with the host and env filled where it left them
/// empty, as the Agent does.
pub fn decode_client(body: &[u8], hostname: &str, env: &str) -> Option<pb::ClientStatsPayload> {
    let mut p: pb::ClientStatsPayload = rmp_serde::from_slice(body).ok()?;
    if p.hostname.is_empty() {
        hostname.clone_into(&mut p.hostname);
    }
    if p.env.is_empty() {
        env.clone_into(&mut p.env);
    }
    Some(p)
}

/// Groups in a set of stats payloads: what the forwarder counts as points.
pub fn groups(stats: &[pb::ClientStatsPayload]) -> usize {
    stats
        .iter()
        .flat_map(|p| &p.stats)
        .map(|b| b.stats.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn span(id: u64, error: bool) -> pb::Span {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0));
        pb::Span {
            service: "web".to_owned(),
            name: "flask.request".to_owned(),
            resource: "GET /".to_owned(),
            trace_id: id,
            span_id: id,
            start: now - 30_000_000_000,
            duration: 5_000_000,
            error: i32::from(error),
            metrics: HashMap::from([("_top_level".to_owned(), 1.0)]),
            ..Default::default()
        }
    }

    #[test]
    fn spans_from_the_future_do_not_open_a_bucket_each() {
        // A tracer whose clock (or unit) is off sends spans ending years
        // ahead: each 10 s of the future would be a bucket of its own,
        // never due, held until shutdown.
        let mut s = Stats::new();
        for i in 0..500i64 {
            let mut sp = span(1, false);
            sp.start += 86_400_000_000_000 * 365 + i * 10_000_000_000;
            s.add(&[sp], "prod", "1.0");
        }
        s.add(&[span(2, false)], "prod", "1.0");
        let out = s.flush(true, "");
        let buckets: usize = out.iter().map(|p| p.stats.len()).sum();
        assert!(buckets <= 2, "{buckets} buckets held");
        let hits: u64 = out
            .iter()
            .flat_map(|p| &p.stats)
            .flat_map(|b| &b.stats)
            .map(|g| g.hits)
            .sum();
        assert_eq!(hits, 501, "the future spans are still counted");
    }

    #[test]
    fn hits_and_errors_are_counted_and_encoded_as_msgpack() {
        let mut s = Stats::new();
        s.add(&[span(1, false)], "prod", "1.0");
        s.add(&[span(2, true)], "prod", "1.0");
        s.add(&[span(3, false)], "prod", "1.0");
        let out = s.flush(true, "");
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].env.as_str(), out[0].version.as_str()),
            ("prod", "1.0")
        );
        let g = &out[0].stats[0].stats[0];
        assert_eq!((g.hits, g.errors, g.top_level_hits), (3, 1, 3));
        assert_eq!(groups(&out), 1);
        let body = encode(out, "", "prod", false).expect("encodes");
        let back: pb::StatsPayload = rmp_serde::from_slice(&body).expect("decodes");
        assert_eq!(back.stats[0].stats[0].stats[0].hits, 3);
        assert!(s.flush(true, "").is_empty(), "nothing twice");
    }
}
