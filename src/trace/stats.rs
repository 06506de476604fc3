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

use std::time::{Duration, SystemTime};

use libdd_trace_protobuf::pb;
use libdd_trace_stats::span_concentrator::{SpanConcentrator, StatSpan};

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
    /// (env, version, concentrator), at most [`MAX_GROUPS`] and the empty
    /// pair: searched in order, as there are few (no key to allocate and
    /// SipHash for every chunk).
    groups: Vec<(String, String, SpanConcentrator)>,
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
            groups: Vec::new(),
            span_kinds: libdd_trace_stats::span_concentrator::default_stats_eligible_span_kinds(),
        }
    }

    /// Adds the eligible spans of one chunk (top-level, measured, or of an
    /// eligible `span.kind`, as the Agent picks them). Past [`MAX_GROUPS`]
    /// pairs, a new pair's spans count under the empty pair.
    pub fn add(&mut self, spans: &[pb::Span], env: &str, version: &str) {
        let find = |groups: &[(String, String, SpanConcentrator)], env: &str, version: &str| {
            groups.iter().position(|(e, v, _)| e == env && v == version)
        };
        // A pair not seen before, past the limit, goes to the empty pair.
        let (env, version) =
            if self.groups.len() >= MAX_GROUPS && find(&self.groups, env, version).is_none() {
                ("", "")
            } else {
                (env, version)
            };
        let at = find(&self.groups, env, version).unwrap_or_else(|| {
            self.groups.push((
                env.to_owned(),
                version.to_owned(),
                SpanConcentrator::new(
                    BUCKET,
                    SystemTime::now(),
                    self.span_kinds.clone(),
                    Vec::new(),
                    None,
                    Vec::new(),
                ),
            ));
            self.groups.len() - 1
        });
        let c = &mut self.groups[at].2;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let latest = now.saturating_add(MAX_AHEAD.as_nanos() as i64);
        for span in spans {
            if span.start.saturating_add(span.duration) > latest {
                let mut moved = span.clone();
                moved.start = now.saturating_sub(moved.duration.max(0));
                c.add_span(&View::new(&moved));
            } else {
                c.add_span(&View::new(span));
            }
        }
    }

    /// The buckets that are due (all with `force`, at shutdown), one
    /// `ClientStatsPayload` per (env, version). Concentrators left empty
    /// are forgotten.
    pub fn flush(&mut self, force: bool, hostname: &str) -> Vec<pb::ClientStatsPayload> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        self.groups.retain_mut(|(env, version, c)| {
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

/// The `meta` keys the concentrator asks of every span it reads (its
/// eligibility, aggregation key, HTTP method and status, gRPC status and
/// stats obfuscation), each a slot of [`View`]'s table.
#[inline(always)]
fn meta_slot(key: &str) -> Option<usize> {
    Some(match key {
        "span.kind" => 0,
        "_dd.base_service" => 1,
        "http.method" => 2,
        "http.request.method" => 3,
        "http.endpoint" => 4,
        "http.route" => 5,
        "http.status_code" => 6,
        "http.response.status_code" => 7,
        "rpc.grpc.status_code" => 8,
        "grpc.code" => 9,
        "rpc.grpc.status.code" => 10,
        "grpc.status.code" => 11,
        "_dd.svc_src" => 12,
        "_dd.origin" => 13,
        "db.type" => 14,
        _ => return None,
    })
}
const META_SLOTS: usize = 15;

/// The `metrics` keys it asks, likewise.
#[inline(always)]
fn metric_slot(key: &str) -> Option<usize> {
    Some(match key {
        "_dd.measured" => 0,
        "_dd.partial_version" => 1,
        "_dd.top_level" => 2,
        "_top_level" => 3,
        "http.status_code" => 4,
        "http.response.status_code" => 5,
        "rpc.grpc.status_code" => 6,
        "grpc.code" => 7,
        "rpc.grpc.status.code" => 8,
        "grpc.status.code" => 9,
        _ => return None,
    })
}
const METRIC_SLOTS: usize = 10;

/// A span as the concentrator reads it: what `libdd-trace-stats`' own
/// `StatSpan for pb::Span` answers, but the keys it asks about (about 17
/// of every span) are found in one pass over `meta` and `metrics` into a
/// table, not SipHashed one lookup at a time; other keys are looked up in
/// the maps.
struct View<'s> {
    span: &'s pb::Span,
    meta: [Option<&'s str>; META_SLOTS],
    metrics: [Option<f64>; METRIC_SLOTS],
}

impl<'s> View<'s> {
    fn new(span: &'s pb::Span) -> Self {
        let mut meta = [None; META_SLOTS];
        for (k, v) in &span.meta {
            if let Some(i) = meta_slot(k) {
                meta[i] = Some(v.as_str());
            }
        }
        let mut metrics = [None; METRIC_SLOTS];
        for (k, v) in &span.metrics {
            if let Some(i) = metric_slot(k) {
                metrics[i] = Some(*v);
            }
        }
        Self {
            span,
            meta,
            metrics,
        }
    }

    #[inline(always)]
    fn meta(&self, key: &str) -> Option<&'s str> {
        match meta_slot(key) {
            Some(i) => self.meta[i],
            None => self.span.meta.get(key).map(String::as_str),
        }
    }

    #[inline(always)]
    fn metric(&self, key: &str) -> Option<f64> {
        match metric_slot(key) {
            Some(i) => self.metrics[i],
            None => self.span.metrics.get(key).copied(),
        }
    }
}

impl<'a> StatSpan<'a> for View<'a> {
    fn service(&'a self) -> &'a str {
        &self.span.service
    }

    fn resource(&'a self) -> &'a str {
        &self.span.resource
    }

    fn name(&'a self) -> &'a str {
        &self.span.name
    }

    fn r#type(&'a self) -> &'a str {
        &self.span.r#type
    }

    fn start(&'a self) -> i64 {
        self.span.start
    }

    fn duration(&'a self) -> i64 {
        self.span.duration
    }

    fn is_error(&'a self) -> bool {
        self.span.error != 0
    }

    fn is_trace_root(&'a self) -> bool {
        self.span.parent_id == 0
    }

    fn is_measured(&'a self) -> bool {
        self.metrics[0] == Some(1.0)
    }

    fn is_partial_snapshot(&'a self) -> bool {
        self.metrics[1].is_some_and(|v| v >= 0.0)
    }

    fn has_top_level(&'a self) -> bool {
        self.metrics[2] == Some(1.0) || self.metrics[3] == Some(1.0)
    }

    #[inline(always)]
    fn get_meta(&'a self, key: &str) -> Option<&'a str> {
        self.meta(key)
    }

    #[inline(always)]
    fn get_metrics(&'a self, key: &str) -> Option<f64> {
        self.metric(key)
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
    fn pairs_past_the_limit_count_under_the_empty_pair() {
        let mut s = Stats::new();
        for round in 0..2 {
            for i in 0..MAX_GROUPS + 5 {
                s.add(&[span(1, false)], "prod", &format!("v{i}"));
            }
            // A known pair is still its own after the limit.
            s.add(&[span(2, round == 0)], "prod", "v0");
        }
        assert_eq!(s.groups.len(), MAX_GROUPS + 1);
        let out = s.flush(true, "h");
        let hits = |version: &str| -> u64 {
            out.iter()
                .filter(|p| {
                    p.env == if version.is_empty() { "" } else { "prod" } && p.version == version
                })
                .flat_map(|p| &p.stats)
                .flat_map(|b| &b.stats)
                .map(|g| g.hits)
                .sum()
        };
        assert_eq!(hits("v0"), 4);
        assert_eq!(hits("v31"), 2);
        assert_eq!(hits(""), 10, "v32 to v36, twice");
        assert_eq!(out.len(), MAX_GROUPS + 1);
        assert!(s.flush(true, "h").is_empty());
        assert!(s.groups.is_empty(), "empty at a forced flush: forgotten");
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
    fn the_view_answers_as_the_crates_span_does() {
        let keys = [
            "_dd.measured",
            "_dd.partial_version",
            "_dd.top_level",
            "_top_level",
            "span.kind",
            "http.status_code",
            "missing",
            "_dd.base_service",
            "http.method",
            "http.request.method",
            "http.endpoint",
            "http.route",
            "http.response.status_code",
            "rpc.grpc.status_code",
            "grpc.code",
            "rpc.grpc.status.code",
            "grpc.status.code",
            "_dd.svc_src",
            "_dd.origin",
            "db.type",
            "span.kin",
            "",
        ];
        for n in [0usize, 3, 16, 17, 22, 40, 90] {
            let mut s = span(1, n % 2 == 0);
            s.parent_id = n as u64;
            for i in 0..n {
                let k = keys[i % keys.len()];
                let k = if i < keys.len() {
                    k.to_owned()
                } else {
                    format!("{k}{i}")
                };
                s.meta.insert(k.clone(), format!("v{i}"));
                s.metrics.insert(k, [1.0, -1.0, 0.0, 2.0][i % 4]);
            }
            let v = View::new(&s);
            assert_eq!(v.is_measured(), StatSpan::is_measured(&s), "{n}");
            assert_eq!(
                v.is_partial_snapshot(),
                StatSpan::is_partial_snapshot(&s),
                "{n}"
            );
            assert_eq!(v.has_top_level(), StatSpan::has_top_level(&s), "{n}");
            assert_eq!(v.is_trace_root(), StatSpan::is_trace_root(&s), "{n}");
            assert_eq!(v.is_error(), StatSpan::is_error(&s), "{n}");
            assert_eq!(
                (
                    v.service(),
                    v.name(),
                    v.resource(),
                    v.r#type(),
                    v.start(),
                    v.duration()
                ),
                (
                    StatSpan::service(&s),
                    StatSpan::name(&s),
                    StatSpan::resource(&s),
                    StatSpan::r#type(&s),
                    StatSpan::start(&s),
                    StatSpan::duration(&s)
                )
            );
            for k in keys
                .iter()
                .map(|k| k.to_string())
                .chain((0..n).map(|i| format!("{}{i}", keys[i % keys.len()])))
            {
                assert_eq!(v.get_meta(&k), StatSpan::get_meta(&s, &k), "{n} {k}");
                assert_eq!(v.get_metrics(&k), StatSpan::get_metrics(&s, &k), "{n} {k}");
            }
        }
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
