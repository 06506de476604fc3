//! Aggregation: contexts and per-type state over one flush interval.
//!
//! In: parsed [`Metric`]s, [`Event`]s and [`ServiceCheck`]s from the listener.
//! Out: a [`Flush`] of Datadog series (Agent-exact semantics), raw
//! distribution points, events and service checks.
//!
//! Must never: allocate per sample for an existing context, grow past the
//! context limit, or do the heavy per-flush work (sorting samples, building
//! series) while holding the listener's lock: [`Aggregator::take`] is a cheap
//! swap and [`Bucket::into_flush`] does the rest off the receive path.

use crate::config::HistogramAggregate;
use crate::protocol::{Event, Metric, ServiceCheck};

/// Options from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct AggregatorOptions {
    /// Live contexts allowed per interval; new ones past it are dropped and counted.
    pub context_limit: usize,
    /// Histogram aggregates, in order.
    pub histogram_aggregates: Vec<HistogramAggregate>,
    /// Histogram percentiles, each in (0, 1).
    pub histogram_percentiles: Vec<f64>,
}

/// The series type in Datadog's v2 API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    /// `1` COUNT
    Count,
    /// `2` RATE (counters, histogram `.count`)
    Rate,
    /// `3` GAUGE
    Gauge,
}

/// One output series with one or more points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Metric name, e.g. `page.views` or `latency.95percentile`.
    pub metric: String,
    /// COUNT, RATE or GAUGE.
    pub kind: SeriesKind,
    /// `(unix seconds, value)` points.
    pub points: Vec<(i64, f64)>,
    /// Sorted, deduplicated tags, without any `host:` tag (global tags are added by the forwarder).
    pub tags: Vec<String>,
    /// Host from a `host:` tag (last wins), else none; the forwarder applies the configured default.
    pub host: Option<String>,
    /// Interval in seconds, for RATE and COUNT series.
    pub interval: Option<u64>,
    /// Unit, e.g. `millisecond` for `ms` timers.
    pub unit: Option<&'static str>,
}

/// Raw distribution points for `/api/v1/distribution_points`.
#[derive(Debug, Clone, PartialEq)]
pub struct DistributionSeries {
    /// Metric name.
    pub metric: String,
    /// `(unix seconds, values)`.
    pub points: Vec<(i64, Vec<f64>)>,
    /// Sorted, deduplicated tags without `host:`.
    pub tags: Vec<String>,
    /// Host from a `host:` tag.
    pub host: Option<String>,
}

/// Everything one flush produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flush {
    /// Series for `/api/v2/series`.
    pub series: Vec<Series>,
    /// Distributions for `/api/v1/distribution_points`.
    pub distributions: Vec<DistributionSeries>,
    /// Events for `/api/v1/events`.
    pub events: Vec<Event>,
    /// Service checks for `/api/v1/check_run`.
    pub service_checks: Vec<ServiceCheck>,
}

/// What happened to one inserted sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Aggregated (or queued as timestamped).
    Accepted,
    /// A new context past the limit: dropped.
    ContextLimit,
    /// NaN/Inf values, or a `|T` histogram/set/distribution: dropped as the Agent does.
    Discarded,
}

/// The live aggregation state. Owned by the listener behind a mutex.
#[derive(Debug)]
pub struct Aggregator {
    opts: AggregatorOptions,
}

/// One interval's state, taken out of the [`Aggregator`] at flush time.
#[derive(Debug)]
pub struct Bucket {
    opts: AggregatorOptions,
}

impl Aggregator {
    /// A new, empty aggregator.
    pub fn new(opts: AggregatorOptions) -> Self {
        Self { opts }
    }

    /// Adds one metric line. `now` is unix seconds (for `|T` sanity only).
    pub fn insert(&mut self, metric: &Metric<'_>, now: i64) -> InsertOutcome {
        let _ = (metric, now);
        InsertOutcome::Discarded
    }

    /// Adds an event.
    pub fn insert_event(&mut self, event: Event) {
        let _ = event;
    }

    /// Adds a service check.
    pub fn insert_service_check(&mut self, check: ServiceCheck) {
        let _ = check;
    }

    /// Live contexts now.
    pub fn contexts(&self) -> usize {
        0
    }

    /// Swaps out this interval's state. Cheap: call it under the lock.
    pub fn take(&mut self) -> Bucket {
        Bucket {
            opts: self.opts.clone(),
        }
    }
}

impl Bucket {
    /// Turns the bucket into series, stamped `timestamp` (unix seconds, the
    /// interval's start as the Agent does), with RATE values over `interval_secs`.
    pub fn into_flush(self, timestamp: i64, interval_secs: u64) -> Flush {
        let _ = (timestamp, interval_secs, self.opts);
        Flush::default()
    }
}
