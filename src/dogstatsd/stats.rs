//! Self-telemetry: counters shared by the listener and the forwarder,
//! reported every flush as `dynostat.*` series.
//!
//! Must never: lock on the hot path. Counters are relaxed atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::dogstatsd::aggregate::{Series, SeriesKind};

/// How a counter is reported.
#[derive(Clone, Copy)]
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
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $field: AtomicU64,)*
        }

        impl Stats {
            /// Takes the counters' values since the last call (gauges are read, not reset)
            /// as series stamped `timestamp`, RATEs over `interval_secs`.
            pub fn drain_series(&self, timestamp: i64, interval_secs: u64) -> Vec<Series> {
                let mut out = Vec::new();
                $(
                    let v = match Kind::$kind {
                        Kind::Gauge => self.$field.load(Ordering::Relaxed),
                        Kind::Rate | Kind::Peak => self.$field.swap(0, Ordering::Relaxed),
                    };
                    #[allow(clippy::cast_precision_loss)]
                    out.push(stat_series($name, Kind::$kind.series_kind(), timestamp, v as f64, interval_secs));
                )*
                out
            }
        }
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
    /// Proxied requests (telemetry, profiles, EVP) that got no answer.
    trace_proxy_errors => "dynostat.traces.proxy_errors", Rate;
    /// Tracer-computed stats payloads that could not be decoded.
    trace_stats_errors => "dynostat.traces.stats_errors", Rate;
    /// Bytes the trace relay held at the last flush, against its share of
    /// `DYNOSTAT_MEMORY_LIMIT`.
    trace_memory_bytes => "dynostat.memory.trace_bytes", Gauge;
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

impl Stats {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
