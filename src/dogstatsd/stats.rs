//! Self-telemetry: counters shared by the listener and the forwarder,
//! reported every flush as `dynostat.*` series.
//!
//! What reaches Datadog is the user's bill: every series is a custom metric.
//! So by default a flush sends only [`DROPPED`], one count per kind of loss
//! and only when something was lost ([`Snapshot::dropped_series`]);
//! `DD_DOGSTATSD_STATS_ENABLE=true` sends every counter
//! ([`Snapshot::series`]). The console shows every counter either way.
//!
//! Counts survive the payloads that carry them: a flush's counts travel in
//! its telemetry payload as a [`Carry`]; when that payload is dropped (the
//! retry queue evicts it, the intake rejects it, the shutdown deadline
//! passes), [`Stats::give_back`] adds them to the next flush's.
//!
//! Must never: lock on the hot path. Counters are relaxed atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::dogstatsd::aggregate::{Series, SeriesKind};

/// The one series sent without `DD_DOGSTATSD_STATS_ENABLE`: what was lost in
/// a flush, tagged `reason:`.
pub const DROPPED: &str = "dynostat.dropped";

/// How a counter is reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A count since the last flush, sent as a RATE.
    Rate,
    /// A level, read and kept.
    Gauge,
    /// The highest value since the last flush, sent as a GAUGE and reset.
    Peak,
}

impl Kind {
    const fn series_kind(self) -> SeriesKind {
        match self {
            Self::Rate => SeriesKind::Rate,
            Self::Gauge | Self::Peak => SeriesKind::Gauge,
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident => $name:literal, $kind:ident;)*) => {
        /// The listener's and forwarder's counters.
        #[derive(Debug)]
        pub struct Stats {
            $($(#[$doc])* pub $field: AtomicU64,)*
            /// Counts given back by dropped telemetry payloads
            /// ([`Stats::give_back`]), reported with the next flush's; kept
            /// apart so the flush's log lines count only what happened since
            /// the last flush.
            carried: [AtomicU64; COUNT],
        }

        /// How many counters there are.
        pub const COUNT: usize = [$($name),*].len();
        const NAMES: [&str; COUNT] = [$($name),*];
        const KINDS: [Kind; COUNT] = [$(Kind::$kind),*];

        impl Default for Stats {
            fn default() -> Self {
                Self {
                    $($field: AtomicU64::new(0),)*
                    carried: std::array::from_fn(|_| AtomicU64::new(0)),
                }
            }
        }

        impl Stats {
            /// The counters, in [`NAMES`] order.
            fn cells(&self) -> [&AtomicU64; COUNT] {
                [$(&self.$field),*]
            }
        }

        /// The index of each counter in a [`Snapshot`] or a [`Carry`].
        #[allow(non_camel_case_types, dead_code)]
        #[derive(Clone, Copy)]
        enum Index { $($field),* }
    };
}

counters! {
    /// Datagrams received (UDP and Unix).
    packets => "dynostat.packets", Rate;
    /// Datagrams that filled the whole buffer and were probably truncated.
    packets_truncated => "dynostat.packets.truncated", Rate;
    /// Lines parsed, good or bad.
    lines => "dynostat.lines", Rate;
    /// Metric samples accepted.
    metrics => "dynostat.metrics", Rate;
    /// Events accepted.
    events => "dynostat.events", Rate;
    /// Service checks accepted.
    service_checks => "dynostat.service_checks", Rate;
    /// Lines rejected by the parser.
    parse_errors => "dynostat.parse_errors", Rate;
    /// Samples dropped (NaN, `|T` histograms, ...).
    samples_discarded => "dynostat.samples.discarded", Rate;
    /// Live contexts at the last flush.
    contexts => "dynostat.contexts", Gauge;
    /// New contexts dropped at the context limit or the memory budget.
    contexts_dropped => "dynostat.contexts.dropped", Rate;
    /// Counters that will not be zero-filled when idle: the zero-fill
    /// registry was at the context limit.
    zero_fill_dropped => "dynostat.contexts.zero_fill_dropped", Rate;
    /// Metric samples dropped by `DD_STATSD_METRIC_BLOCKLIST`.
    metrics_filtered => "dynostat.metrics.filtered", Rate;
    /// Values dropped at the memory budget: new set members, `|T` points,
    /// distribution values needing a new bin, and histogram samples left out
    /// of median and percentiles (still in count, sum, avg, min, max).
    samples_dropped => "dynostat.samples.dropped", Rate;
    /// Lines whose sample rate was below `1 / protocol::MAX_WEIGHT` and
    /// weighed `MAX_WEIGHT` (docs/DESIGN.md, "Sample rates").
    rates_clamped => "dynostat.samples.rate_clamped", Rate;
    /// Approximate bytes the aggregation held at the last flush (the live
    /// interval and buckets still being flushed), against its share of
    /// `DYNOSTAT_MEMORY_LIMIT`.
    memory_bytes => "dynostat.memory.aggregation_bytes", Gauge;
    /// Payloads sent and accepted.
    payloads => "dynostat.forwarder.payloads", Rate;
    /// Points (series points, distribution values, events, checks) in accepted payloads.
    points => "dynostat.forwarder.points", Rate;
    /// Compressed bytes sent and accepted.
    bytes => "dynostat.forwarder.bytes", Rate;
    /// Requests made (first tries and retries).
    requests => "dynostat.forwarder.requests", Rate;
    /// Retried send attempts.
    retries => "dynostat.forwarder.retries", Rate;
    /// Requests waiting for an answer at the last flush.
    in_flight => "dynostat.forwarder.in_flight", Gauge;
    /// The longest request (answered or not) since the last flush, in ms.
    latency_ms => "dynostat.forwarder.latency_ms", Peak;
    /// Payloads dropped, for whatever reason: rejected (400, 403, 3xx), a
    /// single item answered 413, the queue bound, the shutdown deadline.
    failures => "dynostat.forwarder.failures", Rate;
    /// Points in the payloads counted in `failures`, and in items that could not be encoded.
    points_dropped => "dynostat.forwarder.points_dropped", Rate;
    /// Payloads dropped because the send queue was full (also in `failures`).
    queue_dropped => "dynostat.forwarder.queue_dropped", Rate;
    /// Bytes waiting in the send and retry queues.
    queue_bytes => "dynostat.forwarder.queue_bytes", Gauge;
    /// Events and service checks whose text was cut to fit one payload.
    truncated => "dynostat.forwarder.items_truncated", Rate;
    /// Milliseconds the last flush took to build.
    flush_ms => "dynostat.flush.duration_ms", Gauge;
    // The trace relay (src/trace/): what arrived, and every drop by reason.
    /// Trace chunks received from tracers.
    traces_received => "dynostat.traces.received", Rate;
    /// Spans received from tracers.
    spans_received => "dynostat.traces.spans", Rate;
    /// Trace chunks kept and handed to the forwarder.
    traces_kept => "dynostat.traces.kept", Rate;
    /// Trace chunks dropped with priority < 0 (`manual.drop`, user rules).
    traces_user_reject => "dynostat.traces.dropped.user_reject", Rate;
    /// Trace chunks dropped with priority 0 and not kept by the error sampler.
    traces_auto_reject => "dynostat.traces.dropped.auto_reject", Rate;
    /// Trace chunks without priority dropped by the score sampler.
    traces_no_priority => "dynostat.traces.dropped.no_priority", Rate;
    /// Trace chunks dropped by normalization (empty, foreign spans).
    traces_invalid => "dynostat.traces.dropped.invalid", Rate;
    /// Trace chunks refused at the relay's memory share or body limit (as
    /// the tracer's `X-Datadog-Trace-Count` says).
    traces_memory => "dynostat.traces.dropped.memory", Rate;
    /// Trace chunks received while nothing is forwarded (no API key).
    traces_unforwarded => "dynostat.traces.dropped.not_forwarded", Rate;
    /// Trace requests answered 400: malformed msgpack, zero ids.
    trace_payload_errors => "dynostat.traces.payload_errors", Rate;
    /// Proxied requests (telemetry, profiles, EVP, DogStatsD) that got no
    /// answer, or whose body was refused (too large, past the share).
    trace_proxy_errors => "dynostat.traces.proxy_errors", Rate;
    /// Tracer-computed stats payloads that could not be decoded, or were
    /// refused at the relay's share.
    trace_stats_errors => "dynostat.traces.stats_errors", Rate;
    /// Bytes the trace relay held at the last flush, against its share of
    /// `DYNOSTAT_MEMORY_LIMIT`.
    trace_memory_bytes => "dynostat.memory.trace_bytes", Gauge;
}

/// Each kind of loss, as `dynostat.dropped` tags it, and the counter that
/// counts it. Blocklisted names are not here: the user asked for that; nor
/// are traces the samplers drop, which is what sampling is for (the APM
/// stats still count them).
const LOSSES: [(Index, &str); 11] = [
    (Index::parse_errors, "reason:parse_error"),
    (Index::packets_truncated, "reason:packet_truncated"),
    (Index::samples_discarded, "reason:invalid_sample"),
    (Index::contexts_dropped, "reason:context_limit"),
    (Index::samples_dropped, "reason:memory_limit"),
    (Index::points_dropped, "reason:send_failed"),
    (Index::traces_invalid, "reason:trace_invalid"),
    (Index::traces_memory, "reason:trace_memory_limit"),
    (Index::trace_payload_errors, "reason:trace_payload_error"),
    (Index::trace_stats_errors, "reason:trace_stats_error"),
    (Index::trace_proxy_errors, "reason:proxy_failed"),
];

/// The counters' values taken at one flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    values: [u64; COUNT],
}

/// The counts a telemetry payload reports (RATE counters only; levels are
/// read again at each flush). Dropping the payload gives them back
/// ([`Stats::give_back`]), so what it counted is reported by a later flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carry {
    counts: [u64; COUNT],
}

impl Default for Carry {
    fn default() -> Self {
        Self { counts: [0; COUNT] }
    }
}

impl Carry {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }
}

impl Snapshot {
    /// Every counter as a series stamped `timestamp`, RATEs over
    /// `interval_secs` (`DD_DOGSTATSD_STATS_ENABLE=true`, and the console).
    pub fn series(&self, timestamp: i64, interval_secs: u64) -> Vec<Series> {
        #[allow(clippy::cast_precision_loss)]
        NAMES
            .iter()
            .zip(KINDS)
            .zip(self.values)
            .map(|((name, kind), v)| {
                stat_series(name, kind.series_kind(), timestamp, v as f64, interval_secs)
            })
            .collect()
    }

    /// One [`DROPPED`] count per kind of loss in this flush, tagged
    /// `reason:`; none when nothing was lost.
    pub fn dropped_series(&self, timestamp: i64, interval_secs: u64) -> Vec<Series> {
        LOSSES
            .iter()
            .filter(|(i, _)| self.values[*i as usize] > 0)
            .map(|&(i, reason)| {
                #[allow(clippy::cast_precision_loss)]
                let mut s = stat_series(
                    DROPPED,
                    SeriesKind::Rate,
                    timestamp,
                    self.values[i as usize] as f64,
                    interval_secs,
                );
                s.tags.push(reason.to_owned());
                s
            })
            .collect()
    }

    /// The RATE counts, for the payload that reports them.
    pub fn carry(&self) -> Carry {
        let mut counts = [0; COUNT];
        for ((c, v), kind) in counts.iter_mut().zip(self.values).zip(KINDS) {
            if kind == Kind::Rate {
                *c = v;
            }
        }
        Carry { counts }
    }
}

impl Stats {
    /// Takes the counters' values since the last call (gauges are read, not
    /// reset), with the counts given back since.
    pub fn drain(&self) -> Snapshot {
        let mut values = [0; COUNT];
        for (((v, cell), carried), kind) in values
            .iter_mut()
            .zip(self.cells())
            .zip(&self.carried)
            .zip(KINDS)
        {
            *v = match kind {
                Kind::Gauge => cell.load(Ordering::Relaxed),
                Kind::Peak => cell.swap(0, Ordering::Relaxed),
                Kind::Rate => cell
                    .swap(0, Ordering::Relaxed)
                    .saturating_add(carried.swap(0, Ordering::Relaxed)),
            };
        }
        Snapshot { values }
    }

    /// [`Stats::drain`] as every counter's series.
    pub fn drain_series(&self, timestamp: i64, interval_secs: u64) -> Vec<Series> {
        self.drain().series(timestamp, interval_secs)
    }

    /// The counts of a dropped telemetry payload, for the next flush to report.
    pub fn give_back(&self, c: &Carry) {
        for (cell, n) in self.carried.iter().zip(c.counts) {
            if n > 0 {
                cell.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

fn stat_series(
    name: &str,
    kind: SeriesKind,
    timestamp: i64,
    value: f64,
    interval_secs: u64,
) -> Series {
    #[allow(clippy::cast_precision_loss)]
    let value = if kind == SeriesKind::Rate {
        value / interval_secs.max(1) as f64
    } else {
        value
    };
    Series {
        metric: name.to_owned(),
        kind,
        points: vec![(timestamp, value)],
        tags: Vec::new(),
        host: None,
        interval: (kind == SeriesKind::Rate).then_some(interval_secs),
        unit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_is_sent_only_for_what_was_lost_and_given_back_counts_return() {
        let stats = Stats::default();
        Stats::add(&stats.lines, 10);
        let snap = stats.drain();
        assert!(snap.dropped_series(0, 10).is_empty(), "nothing lost");
        assert_eq!(snap.series(0, 10).len(), COUNT);

        Stats::add(&stats.parse_errors, 3);
        Stats::add(&stats.points_dropped, 20);
        Stats::add(&stats.queue_bytes, 5);
        let snap = stats.drain();
        let dropped = snap.dropped_series(0, 10);
        let tags: Vec<_> = dropped.iter().map(|s| s.tags.join(",")).collect();
        assert_eq!(tags, ["reason:parse_error", "reason:send_failed"]);
        assert!(dropped
            .iter()
            .all(|s| s.metric == DROPPED && s.interval == Some(10)));
        assert!((dropped[0].points[0].1 - 0.3).abs() < 1e-12);

        // The payload that carried them is dropped: the next flush reports them.
        stats.give_back(&snap.carry());
        Stats::add(&stats.parse_errors, 1);
        let next = stats.drain();
        let series = next.series(0, 1);
        let value = |name: &str| series.iter().find(|s| s.metric == name).unwrap().points[0].1;
        assert!((value("dynostat.parse_errors") - 4.0).abs() < 1e-12);
        assert!((value("dynostat.forwarder.points_dropped") - 20.0).abs() < 1e-12);
        assert!((value("dynostat.lines")).abs() < 1e-12);
        // A level is not carried: it is read again.
        assert!((value("dynostat.forwarder.queue_bytes") - 5.0).abs() < 1e-12);
    }
}
