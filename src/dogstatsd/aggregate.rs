//! Aggregation: contexts and per-type state over one flush interval.
//!
//! In: parsed [`Metric`]s, [`Event`]s and [`ServiceCheck`]s from the listener.
//! Out: a [`Flush`] of Datadog series (Agent-exact semantics), distribution
//! sketches ([`crate::dogstatsd::sketch`]), events and service checks.
//!
//! Must never: allocate per sample for an existing context, grow past the
//! context limit or the memory budget ([`AggregatorOptions::memory_bytes`]),
//! or do the heavy per-flush work (sorting samples, building
//! series) while holding the listener's lock: [`Aggregator::take`] is a cheap
//! swap and [`Bucket::into_chunks`] (or [`Bucket::into_flush`]) does the rest
//! off the receive path, a bounded number of contexts at a time.
//!
//! # How a sample finds its context
//!
//! A context is the metric name plus its sorted, deduplicated tags and the
//! host from a `host:` tag (last wins, removed from the tags), as in the Agent.
//! Sorting tags per line would cost an allocation and a sort on every sample,
//! so the hot path never does it:
//!
//! 1. hash `(class, name, raw tag field)` with FxHash and look the hash up in
//!    the *alias* map; on a hit whose stored bytes match, that is the context id;
//! 2. on a miss (the first line of a context in this interval, or a new tag
//!    order), the cold path [`Aggregator::resolve_new`] canonicalises the tags,
//!    looks up or creates the canonical context, and caches the raw alias.
//!
//! Per-context state lives in a `Vec` indexed by context id.
//!
//! # The memory budget
//!
//! Every allocation an interval makes is charged, in approximate bytes, to
//! one meter before it is made: a context (its two keys, map entries and
//! state, with the slack of maps and vectors that grow by doubling), a kept
//! histogram sample, a set member, a `|T` point, a sketch bin, an event or a
//! service check. The live interval and the buckets still being flushed share
//! the budget: a taken [`Bucket`] keeps its bytes charged until its chunks
//! are built, and gives them back as it goes. Past the budget a new context
//! is refused ([`InsertOutcome::ContextLimit`]) and a new sample, member,
//! point or bin is dropped and counted ([`Bucket::dropped`]); existing
//! contexts keep aggregating (counters, gauges, histogram count/sum/min/max,
//! values that fall in an existing sketch bin, members already in a set).
//!
//! # Idle contexts
//!
//! Every interval starts empty: [`Aggregator::take`] moves the maps and the
//! state vector into the [`Bucket`], so a context not seen in an interval holds
//! no per-interval memory. The one thing kept across intervals is, for each
//! counter, its canonical key and when it was last sampled (the zero-fill
//! registry, [`ZeroFill`]): as the Agent does (pkg/aggregator/time_sampler.go,
//! `countersSampleZeroValue`), every flush sends 0 for a counter whose last
//! sample arrived less than `DD_DOGSTATSD_EXPIRY_SECONDS` (default 300; 0
//! turns it off) before the bucket's start, so a monitor on a sparse counter
//! sees 0 rather than "no data". The registry is bounded by the context limit
//! (counters past it are not zero-filled, and are counted), and it is updated
//! off the receive path, while the bucket is turned into series.
//!
//! # Names and tags
//!
//! As the Agent's server does, a new spelling's name goes through the mapper
//! profiles, the namespace and the blocklist ([`crate::dogstatsd::mapper`]);
//! then `host:` (the host, last wins), `dd.internal.entity_id:`,
//! `dd.internal.card:` and `dd.internal.jmx_check_name:` come out of the tags,
//! and `DD_DOGSTATSD_TAGS` go in (comp/dogstatsd/server enrich.go
//! `extractTagsMetadata`, server.go `extraTags`). All of this runs on the cold
//! path only: the raw spelling's cache entry leads straight to the context,
//! or, for a blocked name, to "filtered".

use std::collections::hash_map::Entry;
use std::hash::Hasher;
use std::mem;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::{FxHashMap, FxHashSet, FxHasher};

use crate::config::HistogramAggregate;
use crate::dogstatsd::mapper::{NameRules, Named, Names};
use crate::dogstatsd::protocol::{Event, Metric, MetricType, ServiceCheck};
use crate::dogstatsd::sketch::Sketch;

/// Events kept per interval (within the memory budget); more are counted in
/// [`Bucket::overflowed`].
pub const MAX_EVENTS: usize = 10_000;
/// Service checks kept per interval (within the memory budget); more are
/// counted in [`Bucket::overflowed`].
pub const MAX_SERVICE_CHECKS: usize = 10_000;
/// The least a context is charged, whatever its name and tags: map entries
/// with their growth slack, the state slot, allocator headers. The default
/// context limit is the budget divided by this.
pub const MIN_CONTEXT_BYTES: usize = crate::config::defaults::MIN_CONTEXT_BYTES;
/// Charged per extra raw spelling (another tag order) of a context, plus
/// its bytes: an alias map entry with its growth slack and a header.
const ALIAS_BYTES: usize = 96;
/// Charged per set member, plus its bytes past the inline ones: a 24-byte
/// slot and its control byte, times the table's growth slack.
const MEMBER_BYTES: usize = 64;
/// Charged per event or service check, plus its strings.
const EVENT_BYTES: usize = 256;
/// `|T` points older than this (seconds before `now`) are discarded: the
/// intake silently drops points more than 1 h in the past.
pub const MAX_TIMESTAMP_PAST_SECS: i64 = 3_600;
/// `|T` points further in the future than this are discarded: the intake
/// silently drops points more than 10 min ahead.
pub const MAX_TIMESTAMP_FUTURE_SECS: i64 = 600;

/// Options from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct AggregatorOptions {
    /// Live contexts allowed per interval; new ones past it are dropped and
    /// counted. Also the most counters kept for zero-filling.
    pub context_limit: usize,
    /// Approximate heap bytes the live interval and the buckets being flushed
    /// may hold together; past it, new contexts and samples are dropped and
    /// counted (see the module docs).
    pub memory_bytes: usize,
    /// Histogram aggregates, in order.
    pub histogram_aggregates: Vec<HistogramAggregate>,
    /// Histogram percentiles, each in [0, 1].
    pub histogram_percentiles: Vec<f64>,
    /// `DD_DOGSTATSD_EXPIRY_SECONDS`: idle counters are sent as 0 for this
    /// long after their last sample; 0 turns zero-filling off.
    pub counter_expiry_secs: u64,
    /// `DD_DOGSTATSD_TAGS`: added to every metric, event and service check.
    pub dogstatsd_tags: Vec<String>,
    /// Mapper, namespace and blocklist.
    pub names: NameRules,
}

impl Default for AggregatorOptions {
    /// The defaults of [`crate::config::defaults`].
    fn default() -> Self {
        use crate::config::defaults;
        Self {
            context_limit: defaults::context_limit(defaults::MEMORY_LIMIT),
            memory_bytes: defaults::aggregate_bytes(defaults::MEMORY_LIMIT),
            histogram_aggregates: defaults::HISTOGRAM_AGGREGATES.to_vec(),
            histogram_percentiles: defaults::PERCENTILES.to_vec(),
            counter_expiry_secs: defaults::EXPIRY_SECONDS,
            dogstatsd_tags: Vec::new(),
            names: NameRules {
                mapper_cache_size: defaults::MAPPER_CACHE_SIZE,
                ..NameRules::default()
            },
        }
    }
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

/// One distribution context's sketch for `/api/beta/sketches`.
#[derive(Debug, Clone, PartialEq)]
pub struct DistributionSketch {
    /// Metric name.
    pub metric: String,
    /// Unix seconds: the interval's start.
    pub timestamp: i64,
    /// Every value of the interval, weighted `1/rate`.
    pub sketch: Sketch,
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
    /// Distribution sketches for `/api/beta/sketches`.
    pub distributions: Vec<DistributionSketch>,
    /// Events for `/api/v1/events`.
    pub events: Vec<Event>,
    /// Service checks for `/api/v1/check_run`.
    pub service_checks: Vec<ServiceCheck>,
}

/// What happened to one inserted sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Aggregated (or queued as timestamped). For a multi-value line: at
    /// least one value was taken.
    Accepted,
    /// A new context past the context limit or the memory budget: dropped.
    ContextLimit,
    /// No value was taken because the memory budget was reached; each value
    /// is counted in [`Bucket::dropped`].
    MemoryLimit,
    /// NaN/Inf values, or a `|T` histogram/set/distribution: dropped as the Agent does.
    /// Also: a set sample on a numeric context (or the reverse), a `|T` point
    /// outside the intake's window, or a per-interval storage cap reached.
    Discarded,
    /// The name is in `DD_STATSD_METRIC_BLOCKLIST` (after mapping and namespacing).
    Filtered,
}

/// Options prepared once: percentiles as the Agent names them.
#[derive(Debug)]
struct Prepared {
    context_limit: usize,
    meter: Meter,
    /// Raw-alias cache entries allowed per interval: a context can be sent
    /// with many tag orders, and each order is one alias.
    alias_limit: usize,
    aggregates: Vec<HistogramAggregate>,
    /// `(percent 0-100, ".95percentile")`, ascending, deduplicated.
    percentiles: Vec<(u64, String)>,
    /// `DD_DOGSTATSD_EXPIRY_SECONDS`; 0: no zero-filling.
    counter_expiry_secs: i64,
    /// `DD_DOGSTATSD_TAGS`.
    dogstatsd_tags: Vec<String>,
}

impl Prepared {
    fn new(opts: &AggregatorOptions) -> Self {
        // The Agent turns `0.95` into the integer 95 with `int(p*100 + 0.5)`
        // (pkg/metrics/histogram.go ParsePercentiles), sorts the list, and
        // names the series `fmt.Sprintf(".%dpercentile", p)`.
        let mut pcts: Vec<u64> = opts
            .histogram_percentiles
            .iter()
            .filter(|p| p.is_finite())
            // Saturating float->int cast; the clamp keeps it in 0..=100.
            .map(|p| ((p * 100.0 + 0.5) as u64).min(100))
            .collect();
        pcts.sort_unstable();
        pcts.dedup();
        Self {
            context_limit: opts.context_limit,
            meter: Meter {
                limit: opts.memory_bytes,
                flushing: Arc::new(AtomicUsize::new(0)),
            },
            alias_limit: opts.context_limit.saturating_mul(2).saturating_add(1_024),
            aggregates: opts.histogram_aggregates.clone(),
            percentiles: pcts
                .into_iter()
                .map(|p| (p, format!(".{p}percentile")))
                .collect(),
            counter_expiry_secs: i64::try_from(opts.counter_expiry_secs).unwrap_or(i64::MAX),
            dogstatsd_tags: opts.dogstatsd_tags.clone(),
        }
    }
}

/// The memory budget's limit and the bytes still held by taken buckets.
#[derive(Debug)]
struct Meter {
    limit: usize,
    /// Bytes charged to buckets taken but not yet fully flushed.
    flushing: Arc<AtomicUsize>,
}

impl Meter {
    /// Whether `live + extra` bytes fit beside what is being flushed.
    #[inline]
    fn fits(&self, live: usize, extra: usize) -> bool {
        live.saturating_add(extra)
            .saturating_add(self.flushing.load(Ordering::Relaxed))
            <= self.limit
    }
}

/// Bytes a taken bucket still holds against the budget; given back as the
/// bucket is flushed, and at the latest when dropped.
#[derive(Debug)]
struct Held {
    bytes: usize,
    flushing: Arc<AtomicUsize>,
}

impl Held {
    fn new(bytes: usize, flushing: &Arc<AtomicUsize>) -> Self {
        flushing.fetch_add(bytes, Ordering::Relaxed);
        Self {
            bytes,
            flushing: Arc::clone(flushing),
        }
    }

    /// Charges `bytes` more (memory made without asking: the zero-fill keys
    /// of a flush).
    fn add(&mut self, bytes: usize) {
        self.flushing.fetch_add(bytes, Ordering::Relaxed);
        self.bytes += bytes;
    }

    /// Keeps `bytes` at most, giving the rest back.
    fn keep(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.flushing
                .fetch_sub(self.bytes - bytes, Ordering::Relaxed);
            self.bytes = bytes;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.keep(0);
    }
}

/// Grows `v` for one more element if it is full, charging the new capacity
/// to `bytes` when `meter` has room; `false` (nothing changed) when not.
#[inline]
fn grow_for_one<T>(v: &mut Vec<T>, bytes: &mut usize, meter: &Meter) -> bool {
    if v.len() < v.capacity() {
        return true;
    }
    let size = std::mem::size_of::<T>().max(1);
    let cap = v.capacity();
    let mut want = (cap * 2).max(4);
    if !meter.fits(*bytes, (want - cap) * size) {
        // Not room to double: take what is left, if anything.
        let left = meter
            .limit
            .saturating_sub(*bytes)
            .saturating_sub(meter.flushing.load(Ordering::Relaxed));
        want = cap + left / size;
        if want == cap {
            return false;
        }
    }
    v.reserve_exact(want - cap);
    *bytes += (v.capacity() - cap) * size;
    true
}

/// Which pipeline a context belongs to. It is part of the context key: the
/// Agent keeps distributions and `|T` samples apart from aggregated metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `c g s h ms` without `|T`.
    Aggregated,
    /// `d` without `|T`.
    Distribution,
    /// `g` with `|T`.
    TimestampedGauge,
    /// `c` with `|T`.
    TimestampedRate,
}

impl Class {
    fn of(m: &Metric<'_>) -> Option<Self> {
        match (m.timestamp, m.kind) {
            (None, MetricType::Distribution) => Some(Self::Distribution),
            (None, _) => Some(Self::Aggregated),
            (Some(_), MetricType::Gauge) => Some(Self::TimestampedGauge),
            (Some(_), MetricType::Counter) => Some(Self::TimestampedRate),
            // The Agent's no-aggregation pipeline only takes gauges and counts.
            (
                Some(_),
                MetricType::Histogram
                | MetricType::Timer
                | MetricType::Set
                | MetricType::Distribution,
            ) => None,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Self::Aggregated => b'a',
            Self::Distribution => b'd',
            Self::TimestampedGauge => b'g',
            Self::TimestampedRate => b'r',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'a' => Some(Self::Aggregated),
            b'd' => Some(Self::Distribution),
            b'g' => Some(Self::TimestampedGauge),
            b'r' => Some(Self::TimestampedRate),
            _ => None,
        }
    }
}

/// One cached raw spelling of a context: `class, name, 0xFF, raw tags`.
/// 0xFF never occurs in UTF-8, so the split is unambiguous.
#[derive(Debug)]
struct Alias {
    key: Box<[u8]>,
    ctx: u32,
}

impl Alias {
    fn new(class: Class, name: &str, tags: &str, ctx: u32) -> Self {
        let mut key = Vec::with_capacity(2 + name.len() + tags.len());
        key.push(class.byte());
        key.extend_from_slice(name.as_bytes());
        key.push(0xFF);
        key.extend_from_slice(tags.as_bytes());
        Self {
            key: key.into_boxed_slice(),
            ctx,
        }
    }

    #[inline]
    fn matches(&self, class: Class, name: &str, tags: &str) -> bool {
        let k = &self.key[..];
        let n = name.len();
        k.len() == 2 + n + tags.len()
            && k[0] == class.byte()
            && &k[1..1 + n] == name.as_bytes()
            && k[1 + n] == 0xFF
            && &k[2 + n..] == tags.as_bytes()
    }
}

#[inline]
fn alias_hash(class: Class, name: &str, tags: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write_u8(class.byte());
    h.write(name.as_bytes());
    h.write_u8(0xFF);
    h.write(tags.as_bytes());
    h.finish()
}

/// Histogram or timer state for one interval.
#[derive(Debug)]
struct Histogram {
    /// `ms`: unit millisecond.
    timer: bool,
    /// Weighted sample count, each sample weighing `1/rate`.
    count: f64,
    /// Sum of `value * weight`.
    sum: f64,
    min: f64,
    max: f64,
    /// Unsampled values (weight 1), the common case, kept at 8 bytes each.
    ones: Vec<f64>,
    /// Sampled values with their weight `1/rate`.
    weighted: Vec<(f64, f64)>,
}

impl Histogram {
    fn new(timer: bool) -> Self {
        Self {
            timer,
            count: 0.0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ones: Vec::new(),
            weighted: Vec::new(),
        }
    }

    /// Weights are the float `1/rate`, as in the Agent's weightSample
    /// (pkg/metrics/histogram.go, current 7.x): four samples at `@0.75`
    /// count 5.33, and `.avg` of a constant is that constant at any rate.
    ///
    /// The sample is kept for median and percentiles while the budget has
    /// room; past it, it still counts in `.count .sum .avg .min .max`, and
    /// `false` says it was left out of the rank statistics.
    #[inline]
    fn add(&mut self, v: f64, weight: f64, bytes: &mut usize, meter: &Meter) -> bool {
        self.count += weight;
        self.sum += v * weight;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if weight == 1.0 {
            if !grow_for_one(&mut self.ones, bytes, meter) {
                return false;
            }
            self.ones.push(v);
        } else {
            if !grow_for_one(&mut self.weighted, bytes, meter) {
                return false;
            }
            self.weighted.push((v, weight));
        }
        true
    }
}

/// Bytes of a set member kept inline in [`Member`].
const INLINE_MEMBER: usize = 22;

/// A set member's bytes: up to [`INLINE_MEMBER`] bytes inline (user ids,
/// hashes, small numbers: the common case, with no allocation and 24 bytes
/// per member), longer ones on the heap. Hashes and compares as its bytes,
/// so a set can be probed with a borrowed `&[u8]`.
#[derive(Debug)]
enum Member {
    Inline { len: u8, bytes: [u8; INLINE_MEMBER] },
    Heap(Box<[u8]>),
}

impl Member {
    fn new(s: &str) -> Self {
        let b = s.as_bytes();
        match u8::try_from(b.len()) {
            Ok(len) if b.len() <= INLINE_MEMBER => {
                let mut bytes = [0u8; INLINE_MEMBER];
                bytes[..b.len()].copy_from_slice(b);
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(Box::from(b)),
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for Member {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::hash::Hash for Member {
    // Must hash exactly as `[u8]` does, for lookups by `&[u8]`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Member {}

/// One context's state for one interval. The first sample's type decides the
/// variant; later samples of another numeric type are folded into it, as the
/// Agent's `ContextMetrics.AddSample` does (it keys contexts by name, host
/// and tags, not by type).
#[derive(Debug)]
enum State {
    /// Sum of `value * 1/rate`, and when (unix seconds) the last sample
    /// arrived, for zero-filling.
    Counter { sum: f64, last: i64 },
    /// Last value.
    Gauge(f64),
    /// Unique members.
    Set(FxHashSet<Member>),
    /// Boxed: most contexts are not histograms, and the box keeps `State` small.
    Histogram(Box<Histogram>),
    /// A sketch, boxed like histograms: bounded by its bins, not by the values.
    Distribution(Box<Sketch>),
    /// `|T` points as received.
    Timestamped(Vec<(i64, f64)>),
}

impl State {
    /// Heap bytes a new state holds at once (its box, with a header).
    fn heap_bytes(&self) -> usize {
        match self {
            Self::Histogram(_) => std::mem::size_of::<Histogram>() + 16,
            Self::Distribution(_) => std::mem::size_of::<Sketch>() + 16,
            _ => 0,
        }
    }

    fn new(class: Class, kind: MetricType) -> Self {
        match class {
            Class::Distribution => Self::Distribution(Box::default()),
            Class::TimestampedGauge | Class::TimestampedRate => Self::Timestamped(Vec::new()),
            Class::Aggregated => match kind {
                MetricType::Counter => Self::Counter { sum: 0.0, last: 0 },
                MetricType::Gauge => Self::Gauge(0.0),
                MetricType::Set => Self::Set(FxHashSet::default()),
                MetricType::Histogram => Self::Histogram(Box::new(Histogram::new(false))),
                MetricType::Timer => Self::Histogram(Box::new(Histogram::new(true))),
                // Class::of never puts a distribution here; sketch it anyway.
                MetricType::Distribution => Self::Distribution(Box::default()),
            },
        }
    }
}

/// Everything that belongs to one interval. Moved whole into a [`Bucket`].
#[derive(Debug, Default)]
struct Interval {
    /// Raw spelling hash → alias (the hot-path lookup).
    aliases: FxHashMap<u64, Alias>,
    /// Canonical key → context id. The key is `class byte, name, '\n', host,
    /// '\n', sorted tags joined by ','`; `\n` cannot occur in a name, host or tag.
    canon: FxHashMap<Box<str>, u32>,
    /// Per-context state, indexed by context id.
    states: Vec<State>,
    events: Vec<Event>,
    service_checks: Vec<ServiceCheck>,
    /// Events and service checks past their caps.
    overflowed: u64,
    /// Values, members, points and bins refused at the memory budget.
    dropped: u64,
    /// Approximate heap bytes charged by this interval (see the module docs).
    bytes: usize,
}

impl Interval {
    /// Applies one line's values to an existing context. The hot path: no
    /// allocation except amortised `Vec` growth and new set members.
    #[inline]
    fn apply(&mut self, id: usize, m: &Metric<'_>, now: i64, meter: &Meter) -> InsertOutcome {
        let Some(state) = self.states.get_mut(id) else {
            // The only ids without a state are [`BLOCKED`] aliases.
            return InsertOutcome::Filtered;
        };
        if let State::Set(members) = state {
            if m.kind != MetricType::Set {
                return InsertOutcome::Discarded;
            }
            let member = m.set_value();
            if members.contains(member.as_bytes()) {
                return InsertOutcome::Accepted;
            }
            let cost = MEMBER_BYTES
                + if member.len() > INLINE_MEMBER {
                    member.len() + 16
                } else {
                    0
                };
            if !meter.fits(self.bytes, cost) {
                self.dropped += 1;
                return InsertOutcome::MemoryLimit;
            }
            self.bytes += cost;
            members.insert(Member::new(member));
            return InsertOutcome::Accepted;
        }
        if m.kind == MetricType::Set {
            return InsertOutcome::Discarded;
        }
        // Gauges and sets ignore the rate; counters, histograms and
        // distributions weigh each sample by the float 1/rate, as the Agent's
        // Counter.addSample and Histogram.addSample do. A rate outside (0, 1]
        // cannot come from the parser; treat it as 1 like the Agent treats 0.
        let inv = if m.sample_rate >= 1.0 || m.sample_rate <= 0.0 || m.sample_rate.is_nan() {
            // Unsampled (the common case, no division).
            1.0
        } else {
            1.0 / m.sample_rate
        };
        let ts = m.timestamp.unwrap_or_default();
        let (mut accepted, mut dropped) = (false, false);
        let bytes = &mut self.bytes;
        for v in m.values() {
            if !v.is_finite() {
                // NaN and Inf parse but produce no point, as in the Agent.
                continue;
            }
            match state {
                State::Counter { sum, last } => {
                    *sum += v * inv;
                    *last = now;
                }
                State::Gauge(last) => *last = v,
                State::Histogram(h) => {
                    if !h.add(v, inv, bytes, meter) {
                        // Aggregated, but left out of the rank statistics.
                        self.dropped += 1;
                    }
                }
                State::Distribution(sketch) => {
                    let grown = sketch.insert(v, inv, |extra| {
                        let ok = meter.fits(*bytes, extra);
                        if ok {
                            *bytes += extra;
                        }
                        ok
                    });
                    if !grown {
                        self.dropped += 1;
                        dropped = true;
                        continue;
                    }
                }
                State::Timestamped(points) => {
                    // The Agent's no-aggregation pipeline sends the raw value
                    // (no 1/rate scaling); a counter's is divided by the
                    // interval at flush.
                    if !grow_for_one(points, bytes, meter) {
                        self.dropped += 1;
                        dropped = true;
                        continue;
                    }
                    points.push((ts, v));
                }
                State::Set(_) => return InsertOutcome::Discarded,
            }
            accepted = true;
        }
        if accepted {
            InsertOutcome::Accepted
        } else if dropped {
            InsertOutcome::MemoryLimit
        } else {
            InsertOutcome::Discarded
        }
    }
}

/// What a new context is charged: its canonical key and first spelling (with
/// allocator headers), plus map entries and its state slot with the slack of
/// structures that grow by doubling, at least [`MIN_CONTEXT_BYTES`].
fn context_bytes(canon_len: usize, spelling_len: usize) -> usize {
    // Canonical map: Box<str> + u32 → 24 B + a control byte; alias map:
    // u64 + Box<[u8]> + u32 → 32 B + a control byte; the state slot. Each
    // times 2.5 for the load factor and a resize's old and new tables.
    let fixed = (25 + 33 + std::mem::size_of::<State>()) * 5 / 2;
    (fixed + canon_len + spelling_len + 2 * 16).max(MIN_CONTEXT_BYTES)
}

/// Heap bytes of a list of tags, with headers.
fn tags_bytes(tags: &[String]) -> usize {
    tags.iter().map(|t| t.len() + 24 + 16).sum()
}

/// Tag prefixes the Agent takes out of every metric's, event's and service
/// check's tags (comp/dogstatsd/server enrich.go `extractTagsMetadata`):
/// they steer its origin detection and never reach the intake.
const INTERNAL_TAG_PREFIXES: [&str; 3] = [
    "dd.internal.entity_id:",
    "dd.internal.card:",
    "dd.internal.jmx_check_name:",
];

/// Whether the Agent strips `tag` (an internal tag; `host:` is handled apart).
fn is_internal_tag(tag: &str) -> bool {
    tag.starts_with("dd.internal.") && INTERNAL_TAG_PREFIXES.iter().any(|p| tag.starts_with(p))
}

/// Where a tag of a canonical key comes from: the raw field (`[a..b]`), the
/// mapper's tags or `DD_DOGSTATSD_TAGS` (index `a`).
#[derive(Debug, Clone, Copy)]
enum Span {
    Raw(usize, usize),
    Mapped(usize),
    Extra(usize),
}

/// The tags of one new context: the wire's, the mapper's, `DD_DOGSTATSD_TAGS`.
struct TagSources<'a> {
    raw: &'a str,
    mapped: &'a [String],
    extra: &'a [String],
}

impl<'a> TagSources<'a> {
    fn get(&self, span: Span) -> &'a str {
        match span {
            // Spans start and end at ',' or the ends of the field: char boundaries.
            Span::Raw(a, b) => self.raw.get(a..b).unwrap_or_default(),
            Span::Mapped(i) => self.mapped.get(i).map_or("", String::as_str),
            Span::Extra(i) => self.extra.get(i).map_or("", String::as_str),
        }
    }
}

/// Writes the canonical key of `(class, name, tags)` into `key`: tags sorted
/// and deduplicated; every `host:` tag of the wire's and the mapper's removed
/// and the last one kept as the host, internal tags removed; then
/// `DD_DOGSTATSD_TAGS`, which the Agent adds after that extraction, so a
/// `host:` among them stays a tag. `spans` is scratch space, reused so the
/// cold path at the context limit does not allocate either.
fn canonicalise(
    spans: &mut Vec<Span>,
    key: &mut String,
    class: Class,
    name: &str,
    tags: &TagSources<'_>,
) {
    spans.clear();
    key.clear();
    let mut host = "";
    let mut start = 0;
    fn take<'t>(span: Span, part: &'t str, host: &mut &'t str, spans: &mut Vec<Span>) {
        if part.is_empty() {
            return;
        }
        match part.strip_prefix("host:") {
            Some(h) => *host = h,
            None if is_internal_tag(part) => {}
            None => spans.push(span),
        }
    }
    for part in tags.raw.split(',') {
        let end = start + part.len();
        take(Span::Raw(start, end), part, &mut host, spans);
        start = end + 1;
    }
    for (i, part) in tags.mapped.iter().enumerate() {
        take(Span::Mapped(i), part, &mut host, spans);
    }
    spans.extend(
        tags.extra
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(|(i, _)| Span::Extra(i)),
    );
    spans.sort_unstable_by(|a, b| tags.get(*a).cmp(tags.get(*b)));
    spans.dedup_by(|a, b| tags.get(*a) == tags.get(*b));

    key.push(char::from(class.byte()));
    key.push_str(name);
    key.push('\n');
    key.push_str(host);
    key.push('\n');
    for (i, &span) in spans.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(tags.get(span));
    }
}

/// The host and tags of an event or service check, as the Agent's
/// `enrichEvent`/`enrichServiceCheck` make them: `host:` tags (last wins)
/// and internal tags come out, the `h:` field wins over a `host:` tag, and
/// `DD_DOGSTATSD_TAGS` are added last.
fn enrich_event_tags(tags: &mut Vec<String>, host: &mut Option<String>, extra: &[String]) {
    let mut tag_host: Option<String> = None;
    tags.retain(|t| match t.strip_prefix("host:") {
        Some(h) => {
            tag_host = Some(h.to_owned());
            false
        }
        None => !is_internal_tag(t),
    });
    if host.is_none() {
        // An empty `host:` means no host here, as for metrics: the
        // forwarder's default applies.
        *host = tag_host.filter(|h| !h.is_empty());
    }
    tags.extend(extra.iter().cloned());
}

/// A canonical key split back into its parts.
struct ContextKey<'a> {
    class: Class,
    name: &'a str,
    host: Option<&'a str>,
    tags: &'a str,
}

impl<'a> ContextKey<'a> {
    fn parse(key: &'a str) -> Option<Self> {
        let class = Class::from_byte(*key.as_bytes().first()?)?;
        let mut parts = key.get(1..)?.splitn(3, '\n');
        let name = parts.next()?;
        let host = parts.next()?;
        let tags = parts.next()?;
        Some(Self {
            class,
            name,
            host: (!host.is_empty()).then_some(host),
            tags,
        })
    }

    fn tags(&self) -> Vec<String> {
        if self.tags.is_empty() {
            Vec::new()
        } else {
            self.tags.split(',').map(str::to_owned).collect()
        }
    }

    fn series(
        &self,
        metric: String,
        kind: SeriesKind,
        points: Vec<(i64, f64)>,
        interval: Option<u64>,
        unit: Option<&'static str>,
    ) -> Series {
        Series {
            metric,
            kind,
            points,
            tags: self.tags(),
            host: self.host.map(str::to_owned),
            interval,
            unit,
        }
    }
}

/// The context id of a cached spelling whose name is blocklisted.
const BLOCKED: u32 = u32::MAX;

/// The zero-fill registry: each counter context's canonical key and when its
/// last sample arrived. Shared by the [`Aggregator`] and its [`Bucket`]s, and
/// locked only while a bucket is turned into series, never on the receive
/// path.
#[derive(Debug, Default)]
struct ZeroFill {
    /// Canonical key → (last sample, unix seconds; flush that last saw it).
    counters: FxHashMap<Box<str>, (i64, u64)>,
    /// Flushes so far: tells "seen in this bucket" from "idle".
    flushes: u64,
    /// Bytes charged to the memory budget for `counters` (part of the
    /// meter's `flushing` bytes, since the registry outlives intervals).
    bytes: usize,
}

/// Charged per zero-fill registry entry, plus its key: the key's header and
/// a 32-byte map entry with its control byte, times the table's slack.
const ZERO_FILL_BYTES: usize = 100;

/// The live aggregation state. Owned by the listener behind a mutex.
#[derive(Debug)]
pub struct Aggregator {
    prepared: Arc<Prepared>,
    cur: Interval,
    /// Mapper, namespace and blocklist, with the mapper's cache.
    names: Names,
    zero_fill: Arc<Mutex<ZeroFill>>,
    /// Cold-path scratch: tag spans and the canonical key being built.
    scratch_spans: Vec<Span>,
    scratch_key: String,
}

/// One interval's state, taken out of the [`Aggregator`] at flush time.
#[derive(Debug)]
pub struct Bucket {
    prepared: Arc<Prepared>,
    interval: Interval,
    zero_fill: Arc<Mutex<ZeroFill>>,
    held: Held,
}

impl Aggregator {
    /// A new, empty aggregator.
    pub fn new(opts: AggregatorOptions) -> Self {
        Self {
            prepared: Arc::new(Prepared::new(&opts)),
            cur: Interval::default(),
            names: Names::new(opts.names),
            zero_fill: Arc::default(),
            scratch_spans: Vec::new(),
            scratch_key: String::new(),
        }
    }

    /// Adds one metric line. `now` is unix seconds (for `|T` sanity only).
    #[inline]
    pub fn insert(&mut self, metric: &Metric<'_>, now: i64) -> InsertOutcome {
        let Some(class) = Class::of(metric) else {
            return InsertOutcome::Discarded;
        };
        if let Some(ts) = metric.timestamp {
            if ts < now.saturating_sub(MAX_TIMESTAMP_PAST_SECS)
                || ts > now.saturating_add(MAX_TIMESTAMP_FUTURE_SECS)
            {
                return InsertOutcome::Discarded;
            }
        }
        let tags = metric.tags.raw();
        let hash = alias_hash(class, metric.name, tags);
        let hit = self
            .cur
            .aliases
            .get(&hash)
            .filter(|a| a.matches(class, metric.name, tags))
            .map(|a| a.ctx);
        let id = match hit {
            Some(id) => id,
            None => match self.resolve_new(class, metric, hash) {
                Ok(id) => id,
                Err(outcome) => return outcome,
            },
        };
        self.cur
            .apply(id as usize, metric, now, &self.prepared.meter)
    }

    /// The cold path: a raw spelling not seen this interval. Canonicalises,
    /// finds or creates the context, and caches the spelling.
    #[cold]
    #[inline(never)]
    fn resolve_new(
        &mut self,
        class: Class,
        m: &Metric<'_>,
        hash: u64,
    ) -> Result<u32, InsertOutcome> {
        let tags = m.tags.raw();
        let (name, mapped) = if self.names.is_identity() {
            (m.name, &[][..])
        } else {
            match self.names.resolve(m.name) {
                Named::Keep(name, mapped) => (name, mapped),
                Named::Blocked => {
                    // Cache the spelling as blocked: later samples cost one lookup.
                    if self.cur.aliases.len() < self.prepared.alias_limit {
                        if let Entry::Vacant(e) = self.cur.aliases.entry(hash) {
                            e.insert(Alias::new(class, m.name, tags, BLOCKED));
                        }
                    }
                    return Err(InsertOutcome::Filtered);
                }
            }
        };
        canonicalise(
            &mut self.scratch_spans,
            &mut self.scratch_key,
            class,
            name,
            &TagSources {
                raw: tags,
                mapped,
                extra: &self.prepared.dogstatsd_tags,
            },
        );
        let id = match self.cur.canon.get(self.scratch_key.as_str()) {
            Some(&id) => id,
            None => {
                // Do not create a context that would hold nothing.
                if m.kind != MetricType::Set && !m.values().any(f64::is_finite) {
                    return Err(InsertOutcome::Discarded);
                }
                let n = self.cur.states.len();
                if n >= self.prepared.context_limit {
                    return Err(InsertOutcome::ContextLimit);
                }
                let state = State::new(class, m.kind);
                let cost = context_bytes(self.scratch_key.len(), m.name.len() + tags.len())
                    + state.heap_bytes();
                if !self.prepared.meter.fits(self.cur.bytes, cost) {
                    return Err(InsertOutcome::ContextLimit);
                }
                let id = u32::try_from(n)
                    .ok()
                    .filter(|&id| id != BLOCKED)
                    .ok_or(InsertOutcome::ContextLimit)?;
                self.cur.bytes += cost;
                self.cur.states.push(state);
                self.cur
                    .canon
                    .insert(Box::from(self.scratch_key.as_str()), id);
                // The context's first spelling is paid for in its cost.
                if let Entry::Vacant(e) = self.cur.aliases.entry(hash) {
                    e.insert(Alias::new(class, m.name, tags, id));
                }
                return Ok(id);
            }
        };
        // Cache another spelling, unless the cache is full (many tag orders
        // for few contexts), the budget has no room (the spelling then keeps
        // taking the cold path), or another spelling owns this hash (a 64-bit
        // collision: that spelling simply keeps taking the cold path).
        let cost = ALIAS_BYTES + m.name.len() + tags.len();
        if self.cur.aliases.len() < self.prepared.alias_limit
            && self.prepared.meter.fits(self.cur.bytes, cost)
        {
            if let Entry::Vacant(e) = self.cur.aliases.entry(hash) {
                e.insert(Alias::new(class, m.name, tags, id));
                self.cur.bytes += cost;
            }
        }
        Ok(id)
    }

    /// Adds an event. Past [`MAX_EVENTS`] per interval it is dropped and
    /// counted in [`Bucket::overflowed`].
    /// Its host and tags are enriched as the Agent does (`host:` tags,
    /// internal tags, `DD_DOGSTATSD_TAGS`).
    pub fn insert_event(&mut self, mut event: Event) {
        let cost = EVENT_BYTES
            + event.title.len()
            + event.text.len()
            + tags_bytes(&event.tags)
            + tags_bytes(&self.prepared.dogstatsd_tags)
            + event.host.as_ref().map_or(0, String::len)
            + event.aggregation_key.as_ref().map_or(0, String::len)
            + event.source_type.as_ref().map_or(0, String::len);
        if self.cur.events.len() < MAX_EVENTS && self.prepared.meter.fits(self.cur.bytes, cost) {
            self.cur.bytes += cost;
            enrich_event_tags(
                &mut event.tags,
                &mut event.host,
                &self.prepared.dogstatsd_tags,
            );
            self.cur.events.push(event);
        } else {
            self.cur.overflowed += 1;
        }
    }

    /// Adds a service check. Past [`MAX_SERVICE_CHECKS`] per interval it is
    /// dropped and counted in [`Bucket::overflowed`].
    /// Enriched as [`Aggregator::insert_event`] says.
    pub fn insert_service_check(&mut self, mut check: ServiceCheck) {
        let cost = EVENT_BYTES
            + check.name.len()
            + tags_bytes(&check.tags)
            + tags_bytes(&self.prepared.dogstatsd_tags)
            + check.host.as_ref().map_or(0, String::len)
            + check.message.as_ref().map_or(0, String::len);
        if self.cur.service_checks.len() < MAX_SERVICE_CHECKS
            && self.prepared.meter.fits(self.cur.bytes, cost)
        {
            self.cur.bytes += cost;
            enrich_event_tags(
                &mut check.tags,
                &mut check.host,
                &self.prepared.dogstatsd_tags,
            );
            self.cur.service_checks.push(check);
        } else {
            self.cur.overflowed += 1;
        }
    }

    /// Live contexts now (this interval, every kind).
    pub fn contexts(&self) -> usize {
        self.cur.states.len()
    }

    /// Approximate heap bytes charged to the budget now: the live interval
    /// plus the buckets still being flushed.
    pub fn memory_bytes(&self) -> usize {
        self.cur.bytes + self.prepared.meter.flushing.load(Ordering::Relaxed)
    }

    /// Swaps out this interval's state. Cheap: call it under the lock. Only
    /// moves; freeing the old maps happens in [`Bucket::into_chunks`]. The
    /// bucket's bytes stay charged to the budget until it is flushed.
    pub fn take(&mut self) -> Bucket {
        let interval = mem::take(&mut self.cur);
        Bucket {
            held: Held::new(interval.bytes, &self.prepared.meter.flushing),
            prepared: Arc::clone(&self.prepared),
            interval,
            zero_fill: Arc::clone(&self.zero_fill),
        }
    }
}

impl Bucket {
    /// Events and service checks dropped in this interval because their
    /// per-interval cap was reached (they are not in the flush).
    pub fn overflowed(&self) -> u64 {
        self.interval.overflowed
    }

    /// Values, set members, `|T` points and sketch bins dropped in this
    /// interval at the memory budget, and histogram samples left out of its
    /// median and percentiles (they still count in `.count .sum .avg .min
    /// .max`).
    pub fn dropped(&self) -> u64 {
        self.interval.dropped
    }

    /// Contexts in this bucket.
    pub fn contexts(&self) -> usize {
        self.interval.states.len()
    }

    /// Turns the bucket into series, stamped `timestamp` (unix seconds, the
    /// interval's start as the Agent does), with RATE values over `interval_secs`.
    /// Series come out in the order their contexts were first seen.
    ///
    /// Builds every series at once: the flush loop uses [`Bucket::into_chunks`]
    /// instead, which keeps memory near the live size.
    pub fn into_flush(self, timestamp: i64, interval_secs: u64) -> Flush {
        let mut out = Flush {
            series: Vec::with_capacity(self.interval.states.len()),
            ..Flush::default()
        };
        for chunk in self.into_chunks(timestamp, interval_secs, CHUNK_CONTEXTS) {
            out.append(chunk);
        }
        out
    }

    /// As [`Bucket::into_flush`], but a bounded number of contexts at a time:
    /// each [`Flush`] the iterator yields holds the series of at most
    /// `max_contexts` contexts (the first one also holds the events and
    /// service checks), and each context's state is freed as its series are
    /// built. Appending every chunk in order gives exactly
    /// [`Bucket::into_flush`]'s result.
    pub fn into_chunks(self, timestamp: i64, interval_secs: u64, max_contexts: usize) -> Chunks {
        let Interval {
            aliases,
            canon,
            states,
            events,
            service_checks,
            ..
        } = self.interval;
        drop(aliases);
        let total = states.len();
        let mut keys: Vec<Option<Box<str>>> =
            std::iter::repeat_with(|| None).take(states.len()).collect();
        for (key, id) in canon {
            if let Some(slot) = keys.get_mut(id as usize) {
                *slot = Some(key);
            }
        }
        let mut held = self.held;
        let (idle, untracked) = if self.prepared.counter_expiry_secs > 0 {
            zero_fill(
                &self.zero_fill,
                &states,
                &keys,
                timestamp,
                self.prepared.counter_expiry_secs,
                self.prepared.context_limit,
                &self.prepared.meter,
            )
        } else {
            (Vec::new(), 0)
        };
        // The idle keys are copies, held until their zeros are built.
        held.add(idle.iter().map(|k| k.len() + 24).sum());
        Chunks {
            held,
            total,
            prepared: self.prepared,
            states: states.into_iter(),
            keys: keys.into_iter(),
            idle: idle.into_iter(),
            zero_fill_untracked: untracked,
            first: Some((events, service_checks)),
            timestamp,
            interval: interval_secs.max(1),
            max_contexts: max_contexts.max(1),
        }
    }
}

/// Updates the zero-fill registry with this bucket's counters and returns
/// the keys of the idle counters to send as 0 for the bucket starting at
/// `bucket_start`, plus how many counters could not be registered (the
/// registry was at `limit`, or the memory budget had no room: registry
/// entries are charged to it for as long as they are kept).
///
/// The Agent's rule (pkg/aggregator/time_sampler.go): a bucket gets a 0 for
/// every counter whose last sample time plus the expiry is after the bucket's
/// start; others are forgotten. The Agent keeps the sample time to the
/// nanosecond; we keep whole seconds and read "after" as "at or after", which
/// is the same unless a sample arrives exactly on a whole second.
fn zero_fill(
    registry: &Mutex<ZeroFill>,
    states: &[State],
    keys: &[Option<Box<str>>],
    bucket_start: i64,
    expiry: i64,
    limit: usize,
    meter: &Meter,
) -> (Vec<Box<str>>, u64) {
    let mut reg = registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    reg.flushes += 1;
    let flush = reg.flushes;
    let mut untracked = 0u64;
    for (state, key) in states.iter().zip(keys) {
        let (State::Counter { last, .. }, Some(key)) = (state, key) else {
            continue;
        };
        if let Some(entry) = reg.counters.get_mut(&**key) {
            *entry = (*last, flush);
        } else if reg.counters.len() < limit
            && reg.bytes + ZERO_FILL_BYTES + key.len() <= meter.limit / 4
            && meter.fits(0, ZERO_FILL_BYTES + key.len())
        {
            // At most a quarter of the budget: a flush copies the idle keys.
            let cost = ZERO_FILL_BYTES + key.len();
            meter.flushing.fetch_add(cost, Ordering::Relaxed);
            reg.bytes += cost;
            reg.counters.insert(key.clone(), (*last, flush));
        } else {
            untracked += 1;
        }
    }
    let mut idle = Vec::new();
    let mut freed = 0usize;
    reg.counters.retain(|key, &mut (last, seen)| {
        if seen == flush {
            return true;
        }
        let live = last.saturating_add(expiry) >= bucket_start;
        if live {
            idle.push(key.clone());
        } else {
            freed += ZERO_FILL_BYTES + key.len();
        }
        live
    });
    let freed = freed.min(reg.bytes);
    reg.bytes -= freed;
    meter.flushing.fetch_sub(freed, Ordering::Relaxed);
    (idle, untracked)
}

/// Contexts per chunk in [`Bucket::into_flush`] and the flush loop: about
/// 1-2 MB of series at a time.
pub const CHUNK_CONTEXTS: usize = 4_096;

/// A bucket being turned into [`Flush`]es chunk by chunk; see [`Bucket::into_chunks`].
#[derive(Debug)]
pub struct Chunks {
    /// Bytes still charged; given back in proportion to the contexts built.
    held: Held,
    /// Contexts in the bucket.
    total: usize,
    prepared: Arc<Prepared>,
    states: std::vec::IntoIter<State>,
    keys: std::vec::IntoIter<Option<Box<str>>>,
    /// Idle counters' keys, sent as 0 after the bucket's own contexts.
    idle: std::vec::IntoIter<Box<str>>,
    zero_fill_untracked: u64,
    /// Events and service checks, until the first chunk takes them.
    first: Option<(Vec<Event>, Vec<ServiceCheck>)>,
    timestamp: i64,
    interval: u64,
    max_contexts: usize,
}

impl Iterator for Chunks {
    type Item = Flush;

    /// The next chunk; the first one always comes, even from an empty bucket.
    fn next(&mut self) -> Option<Flush> {
        let mut out = match self.first.take() {
            Some((events, service_checks)) => Flush {
                events,
                service_checks,
                ..Flush::default()
            },
            None if self.states.as_slice().is_empty() && self.idle.as_slice().is_empty() => {
                return None
            }
            None => Flush::default(),
        };
        let mut n = 0;
        for (state, key) in (&mut self.states)
            .zip(&mut self.keys)
            .take(self.max_contexts)
        {
            n += 1;
            let Some(key) = key else { continue };
            let Some(ctx) = ContextKey::parse(&key) else {
                continue;
            };
            flush_state(
                state,
                &ctx,
                &self.prepared,
                self.timestamp,
                self.interval,
                &mut out,
            );
        }
        // Then the idle counters' zeros, in the room left in this chunk.
        for key in (&mut self.idle).take(self.max_contexts - n) {
            if let Some(ctx) = ContextKey::parse(&key) {
                out.series.push(ctx.series(
                    ctx.name.to_owned(),
                    SeriesKind::Rate,
                    vec![(self.timestamp, 0.0)],
                    Some(self.interval),
                    None,
                ));
            }
        }
        // The contexts built so far are freed: give their share back.
        let left = self.states.as_slice().len();
        let keep = if self.total == 0 {
            0
        } else {
            // At most bytes * contexts: no overflow for any real budget.
            (self.held.bytes as u128 * left as u128 / self.total as u128) as usize
        };
        self.held.keep(keep);
        Some(out)
    }
}

impl Chunks {
    /// Counters of this bucket that will not be zero-filled when they go
    /// idle, because the zero-fill registry was full (at the context limit).
    pub fn zero_fill_untracked(&self) -> u64 {
        self.zero_fill_untracked
    }
}

impl Flush {
    /// Appends `other`'s items after this flush's, kind by kind.
    pub fn append(&mut self, mut other: Flush) {
        self.series.append(&mut other.series);
        self.distributions.append(&mut other.distributions);
        self.events.append(&mut other.events);
        self.service_checks.append(&mut other.service_checks);
    }
}

#[allow(clippy::cast_precision_loss)] // counts and intervals far below 2^53
fn flush_state(
    state: State,
    ctx: &ContextKey<'_>,
    prepared: &Prepared,
    ts: i64,
    interval: u64,
    out: &mut Flush,
) {
    let secs = interval as f64;
    match state {
        // Counters are sent as RATE = sum/interval, with `interval` set, as the Agent does.
        State::Counter { sum, .. } => out.series.push(ctx.series(
            ctx.name.to_owned(),
            SeriesKind::Rate,
            vec![(ts, sum / secs)],
            Some(interval),
            None,
        )),
        State::Gauge(last) => out.series.push(ctx.series(
            ctx.name.to_owned(),
            SeriesKind::Gauge,
            vec![(ts, last)],
            None,
            None,
        )),
        State::Set(members) => {
            if !members.is_empty() {
                out.series.push(ctx.series(
                    ctx.name.to_owned(),
                    SeriesKind::Gauge,
                    vec![(ts, members.len() as f64)],
                    None,
                    None,
                ));
            }
        }
        State::Histogram(h) => flush_histogram(*h, ctx, prepared, ts, interval, out),
        State::Distribution(sketch) => {
            if !sketch.is_empty() {
                out.distributions.push(DistributionSketch {
                    metric: ctx.name.to_owned(),
                    timestamp: ts,
                    sketch: *sketch,
                    tags: ctx.tags(),
                    host: ctx.host.map(str::to_owned),
                });
            }
        }
        State::Timestamped(mut points) => {
            if points.is_empty() {
                return;
            }
            points.sort_by_key(|p| p.0);
            let series = if ctx.class == Class::TimestampedRate {
                // The Agent's no-aggregation pipeline sends counters as RATE,
                // value / bucket size, at their own timestamp.
                for p in &mut points {
                    p.1 /= secs;
                }
                ctx.series(
                    ctx.name.to_owned(),
                    SeriesKind::Rate,
                    points,
                    Some(interval),
                    None,
                )
            } else {
                ctx.series(ctx.name.to_owned(), SeriesKind::Gauge, points, None, None)
            };
            out.series.push(series);
        }
    }
}

/// The Agent's Histogram.flush (pkg/metrics/histogram.go): aggregates in the
/// configured order, then percentiles ascending. Median and percentiles are
/// nearest rank over the weighted, sorted samples: the first sample whose
/// cumulative (float) weight exceeds the target, with target `(count-1)/2`
/// for the median and `(p*count-1)/100` for percentile `p`, in floats as the
/// current Agent computes them.
#[allow(clippy::cast_precision_loss)] // counts and intervals far below 2^53
fn flush_histogram(
    mut h: Histogram,
    ctx: &ContextKey<'_>,
    prepared: &Prepared,
    ts: i64,
    interval: u64,
    out: &mut Flush,
) {
    if h.ones.is_empty() && h.weighted.is_empty() {
        return;
    }
    h.ones.sort_unstable_by(f64::total_cmp);
    h.weighted.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    // Rank statistics use the kept samples (all of them below the cap).
    let kept = h.ones.len() as f64 + h.weighted.iter().map(|w| w.1).sum::<f64>();
    let unit = h.timer.then_some("millisecond");
    for agg in &prepared.aggregates {
        let (value, kind, unit, series_interval) = match agg {
            HistogramAggregate::Max => (h.max, SeriesKind::Gauge, unit, None),
            HistogramAggregate::Min => (h.min, SeriesKind::Gauge, unit, None),
            HistogramAggregate::Median => {
                let Some(v) = at_rank(&h.ones, &h.weighted, (kept - 1.0) / 2.0) else {
                    continue;
                };
                (v, SeriesKind::Gauge, unit, None)
            }
            HistogramAggregate::Avg => (h.sum / h.count, SeriesKind::Gauge, unit, None),
            HistogramAggregate::Sum => (h.sum, SeriesKind::Gauge, unit, None),
            // `.count` is a RATE over the interval, dimensionless, as in the Agent.
            HistogramAggregate::Count => (
                h.count / interval as f64,
                SeriesKind::Rate,
                None,
                Some(interval),
            ),
        };
        out.series.push(ctx.series(
            joined(ctx.name, ".", agg.suffix()),
            kind,
            vec![(ts, value)],
            series_interval,
            unit,
        ));
    }
    for (p, suffix) in &prepared.percentiles {
        let target = (*p as f64 * kept - 1.0) / 100.0;
        let Some(v) = at_rank(&h.ones, &h.weighted, target) else {
            continue;
        };
        out.series.push(ctx.series(
            joined(ctx.name, "", suffix),
            SeriesKind::Gauge,
            vec![(ts, v)],
            None,
            unit,
        ));
    }
}

/// `a + sep + b` in one exact allocation (`format!` costs several times more
/// per histogram series at flush).
fn joined(a: &str, sep: &str, b: &str) -> String {
    let mut s = String::with_capacity(a.len() + sep.len() + b.len());
    s.push_str(a);
    s.push_str(sep);
    s.push_str(b);
    s
}

/// The first value, in ascending order over both sorted lists, at which the
/// cumulative weight exceeds `target`. `None` when there are no samples.
fn at_rank(ones: &[f64], weighted: &[(f64, f64)], target: f64) -> Option<f64> {
    if weighted.is_empty() {
        // Unit weights: the cumulative weight after index i is i + 1, which
        // exceeds `target` first at i = floor(target) (0 for a negative one).
        // Saturating cast: a target past the end reads the last sample.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = target.max(0.0).floor() as usize;
        return ones.get(i).or(ones.last()).copied();
    }
    let (mut i, mut j, mut cum) = (0usize, 0usize, 0f64);
    let mut last = None;
    loop {
        let (v, w) = match (ones.get(i), weighted.get(j)) {
            (Some(&a), Some(&(b, wb))) => {
                if a.total_cmp(&b).is_le() {
                    i += 1;
                    (a, 1.0)
                } else {
                    j += 1;
                    (b, wb)
                }
            }
            (Some(&a), None) => {
                i += 1;
                (a, 1.0)
            }
            (None, Some(&(b, wb))) => {
                j += 1;
                (b, wb)
            }
            (None, None) => return last,
        };
        cum += w;
        if cum > target {
            return Some(v);
        }
        last = Some(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::defaults;
    use crate::dogstatsd::protocol::{AlertType, CheckStatus, Priority, Tags};

    const NOW: i64 = 1_700_000_000;
    const TS: i64 = 1_699_999_990;

    /// Zero-filling off: most tests look at one flush at a time.
    fn opts() -> AggregatorOptions {
        AggregatorOptions {
            context_limit: 1_000,
            memory_bytes: 1 << 30,
            histogram_aggregates: defaults::HISTOGRAM_AGGREGATES.to_vec(),
            histogram_percentiles: defaults::PERCENTILES.to_vec(),
            counter_expiry_secs: 0,
            ..AggregatorOptions::default()
        }
    }

    fn metric<'a>(name: &'a str, raw: &'a str, kind: MetricType, tags: &'a str) -> Metric<'a> {
        Metric {
            name,
            raw_values: raw,
            kind,
            sample_rate: 1.0,
            tags: Tags(tags),
            timestamp: None,
        }
    }

    fn rated<'a>(name: &'a str, raw: &'a str, kind: MetricType, rate: f64) -> Metric<'a> {
        Metric {
            sample_rate: rate,
            ..metric(name, raw, kind, "")
        }
    }

    fn stamped<'a>(name: &'a str, raw: &'a str, kind: MetricType, ts: i64) -> Metric<'a> {
        Metric {
            timestamp: Some(ts),
            ..metric(name, raw, kind, "")
        }
    }

    fn flush(agg: &mut Aggregator) -> Flush {
        agg.take().into_flush(TS, 10)
    }

    fn find<'a>(f: &'a Flush, name: &str) -> &'a Series {
        let found: Vec<&Series> = f.series.iter().filter(|s| s.metric == name).collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one series {name} in {:#?}",
            f.series
        );
        found[0]
    }

    fn value(f: &Flush, name: &str) -> f64 {
        let s = find(f, name);
        assert_eq!(s.points.len(), 1, "{name}");
        assert_eq!(s.points[0].0, TS, "{name} timestamp");
        s.points[0].1
    }

    fn names(f: &Flush) -> Vec<&str> {
        f.series.iter().map(|s| s.metric.as_str()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn counter_anchor_example_is_a_rate_of_2_3() {
        // ANCHORS: 2@0.5 then 1, 2, 5, 0, 8, 3 flushes 2.3 over 10 s.
        let mut agg = Aggregator::new(opts());
        assert_eq!(
            agg.insert(&rated("c", "2", MetricType::Counter, 0.5), NOW),
            InsertOutcome::Accepted
        );
        for v in ["1", "2", "5", "0", "8", "3"] {
            assert_eq!(
                agg.insert(&metric("c", v, MetricType::Counter, ""), NOW),
                InsertOutcome::Accepted
            );
        }
        let f = flush(&mut agg);
        assert_eq!(f.series.len(), 1);
        let s = find(&f, "c");
        assert_eq!(s.kind, SeriesKind::Rate);
        assert_eq!(s.interval, Some(10));
        assert_eq!(s.unit, None);
        assert!(close(value(&f, "c"), 2.3), "{}", value(&f, "c"));
    }

    #[test]
    fn counter_rate_uses_the_given_interval() {
        let mut agg = Aggregator::new(opts());
        agg.insert(&metric("c", "30", MetricType::Counter, ""), NOW);
        let f = agg.take().into_flush(TS, 15);
        assert_eq!(f.series[0].points, vec![(TS, 2.0)]);
        assert_eq!(f.series[0].interval, Some(15));
    }

    #[test]
    fn gauge_keeps_the_last_value_and_ignores_the_rate() {
        let mut agg = Aggregator::new(opts());
        agg.insert(&metric("g", "5", MetricType::Gauge, ""), NOW);
        agg.insert(&rated("g", "7", MetricType::Gauge, 0.1), NOW);
        agg.insert(&metric("g", "1:2:-3.5", MetricType::Gauge, ""), NOW);
        let f = flush(&mut agg);
        let s = find(&f, "g");
        assert_eq!(s.kind, SeriesKind::Gauge);
        assert_eq!(s.interval, None);
        assert_eq!(value(&f, "g"), -3.5);
    }

    #[test]
    fn set_counts_unique_members_as_a_gauge() {
        let mut agg = Aggregator::new(opts());
        for m in ["a", "b", "a", "abc:def", "b", "abc:def", "c"] {
            assert_eq!(
                agg.insert(&rated("users", m, MetricType::Set, 0.5), NOW),
                InsertOutcome::Accepted
            );
        }
        let f = flush(&mut agg);
        assert_eq!(find(&f, "users").kind, SeriesKind::Gauge);
        assert_eq!(value(&f, "users"), 4.0);
    }

    #[test]
    fn histogram_anchor_example() {
        // ANCHORS: 1, 10, 4, 5, 2, 2 gives max 10, median 2, avg 4, count 0.6, 95percentile 10.
        let mut agg = Aggregator::new(opts());
        for v in ["1", "10", "4", "5", "2", "2"] {
            agg.insert(&metric("h", v, MetricType::Histogram, ""), NOW);
        }
        let f = flush(&mut agg);
        assert_eq!(
            names(&f),
            ["h.max", "h.median", "h.avg", "h.count", "h.95percentile"]
        );
        assert_eq!(value(&f, "h.max"), 10.0);
        assert_eq!(value(&f, "h.median"), 2.0);
        assert_eq!(value(&f, "h.avg"), 4.0);
        assert!(close(value(&f, "h.count"), 0.6));
        assert_eq!(value(&f, "h.95percentile"), 10.0);
        for s in &f.series {
            if s.metric == "h.count" {
                assert_eq!((s.kind, s.interval), (SeriesKind::Rate, Some(10)));
            } else {
                assert_eq!(
                    (s.kind, s.interval),
                    (SeriesKind::Gauge, None),
                    "{}",
                    s.metric
                );
            }
            assert_eq!(s.unit, None);
        }
    }

    #[test]
    fn multi_value_line_is_several_samples() {
        let mut agg = Aggregator::new(opts());
        agg.insert(
            &metric("h", "1:10:4::5:2:2", MetricType::Histogram, ""),
            NOW,
        );
        let f = flush(&mut agg);
        assert!(close(value(&f, "h.count"), 0.6));
        assert_eq!(value(&f, "h.median"), 2.0);
    }

    #[test]
    fn timer_is_a_histogram_in_milliseconds_except_count() {
        let mut agg = Aggregator::new(opts());
        for v in ["100", "300"] {
            agg.insert(&metric("t", v, MetricType::Timer, ""), NOW);
        }
        let f = flush(&mut agg);
        assert_eq!(value(&f, "t.avg"), 200.0);
        assert_eq!(value(&f, "t.median"), 100.0);
        for s in &f.series {
            let want = if s.metric == "t.count" {
                None
            } else {
                Some("millisecond")
            };
            assert_eq!(s.unit, want, "{}", s.metric);
        }
    }

    #[test]
    fn histogram_samples_weigh_float_one_over_rate() {
        let mut agg = Aggregator::new(opts());
        // 1 weighs 4, 100 weighs 1: count 5, sorted weights [1 x4, 100 x1].
        agg.insert(&rated("h", "1", MetricType::Histogram, 0.25), NOW);
        agg.insert(&metric("h", "100", MetricType::Histogram, ""), NOW);
        // 0.3 → 1/0.3 = 3.33, a float weight as in the current Agent.
        agg.insert(&rated("w", "2", MetricType::Histogram, 0.3), NOW);
        // 4 × @0.75: count 5.33.
        for _ in 0..4 {
            agg.insert(&rated("q", "8", MetricType::Histogram, 0.75), NOW);
        }
        // Weights 1 (v=1), 3.33 (v=2), 1 (v=3): count 5.33; median target
        // 2.17 → the 2; p95 target (95*5.33-1)/100 = 5.06 → the 3.
        agg.insert(&metric("m", "1", MetricType::Histogram, ""), NOW);
        agg.insert(&rated("m", "2", MetricType::Histogram, 0.3), NOW);
        agg.insert(&metric("m", "3", MetricType::Histogram, ""), NOW);
        let f = agg.take().into_flush(TS, 1);
        assert_eq!(value(&f, "h.count"), 5.0);
        assert_eq!(value(&f, "h.median"), 1.0);
        assert!(close(value(&f, "h.avg"), 104.0 / 5.0));
        // target (95*5-1)/100 = 4.74: the 5th unit of weight is the 100.
        assert_eq!(value(&f, "h.95percentile"), 100.0);
        assert!(close(value(&f, "w.count"), 1.0 / 0.3));
        assert!(close(value(&f, "w.avg"), 2.0));
        assert!(close(value(&f, "q.count"), 4.0 / 0.75));
        assert!(close(value(&f, "q.avg"), 8.0));
        assert!(close(value(&f, "m.count"), 2.0 + 1.0 / 0.3));
        assert_eq!(value(&f, "m.median"), 2.0);
        assert_eq!(value(&f, "m.95percentile"), 3.0);
        assert!(close(
            value(&f, "m.avg"),
            (1.0 + 2.0 / 0.3 + 3.0) / (2.0 + 1.0 / 0.3)
        ));
    }

    #[test]
    fn percentiles_are_configurable_and_named_like_the_agent() {
        let mut o = opts();
        o.histogram_aggregates = vec![
            HistogramAggregate::Min,
            HistogramAggregate::Sum,
            HistogramAggregate::Count,
        ];
        // Unsorted and duplicated on purpose; the Agent sorts.
        o.histogram_percentiles = vec![0.99, 0.5, 0.29, 0.99];
        let mut agg = Aggregator::new(o);
        for v in 1..=100 {
            let s = v.to_string();
            agg.insert(&metric("lat", &s, MetricType::Histogram, ""), NOW);
        }
        let f = flush(&mut agg);
        assert_eq!(
            names(&f),
            [
                "lat.min",
                "lat.sum",
                "lat.count",
                "lat.29percentile",
                "lat.50percentile",
                "lat.99percentile"
            ]
        );
        assert_eq!(value(&f, "lat.min"), 1.0);
        assert_eq!(value(&f, "lat.sum"), 5050.0);
        assert_eq!(value(&f, "lat.count"), 10.0);
        // target (p*100-1)/100 = p-1 (0-based) → the value p.
        assert_eq!(value(&f, "lat.29percentile"), 29.0);
        assert_eq!(value(&f, "lat.50percentile"), 50.0);
        assert_eq!(value(&f, "lat.99percentile"), 99.0);
    }

    #[test]
    fn one_sample_histogram_reports_it_everywhere() {
        let mut agg = Aggregator::new(opts());
        agg.insert(&metric("h", "7", MetricType::Histogram, ""), NOW);
        let f = flush(&mut agg);
        for n in ["h.max", "h.median", "h.avg", "h.95percentile"] {
            assert_eq!(value(&f, n), 7.0, "{n}");
        }
        assert!(close(value(&f, "h.count"), 0.1));
    }

    #[test]
    fn distribution_is_a_sketch_with_float_weights() {
        let mut agg = Aggregator::new(opts());
        agg.insert(&metric("d", "1:2", MetricType::Distribution, "b,a"), NOW);
        agg.insert(&rated("d2", "5", MetricType::Distribution, 0.25), NOW);
        // 3 values at @0.3 weigh 1/0.3 each: 10 in all.
        for _ in 0..3 {
            agg.insert(&rated("d3", "9", MetricType::Distribution, 0.3), NOW);
        }
        // A tiny rate no longer caps the repeat: the weight is 100,000.
        agg.insert(&rated("d4", "9", MetricType::Distribution, 0.000_01), NOW);
        let f = flush(&mut agg);
        assert!(f.series.is_empty(), "{:?}", f.series);
        assert_eq!(f.distributions.len(), 4);
        let d = &f.distributions[0];
        assert_eq!(d.metric, "d");
        assert_eq!(d.timestamp, TS);
        assert_eq!(d.sketch.count(), 2.0);
        assert_eq!(d.sketch.sum(), 3.0);
        assert_eq!((d.sketch.min(), d.sketch.max()), (1.0, 2.0));
        assert_eq!(d.tags, ["a", "b"]);
        assert_eq!(d.host, None);
        assert_eq!(f.distributions[1].sketch.count(), 4.0);
        assert_eq!(f.distributions[1].sketch.sum(), 20.0);
        let d3 = &f.distributions[2].sketch;
        assert!(close(d3.count(), 10.0));
        assert_eq!(d3.count_rounded(), 10);
        assert!(close(d3.sum(), 90.0));
        assert_eq!(d3.bins().map(|b| b.1).sum::<u32>(), 10);
        assert!(close(f.distributions[3].sketch.count(), 100_000.0));
    }

    #[test]
    fn distribution_and_histogram_of_one_name_are_separate_contexts() {
        let mut agg = Aggregator::new(opts());
        agg.insert(&metric("x", "1", MetricType::Distribution, ""), NOW);
        agg.insert(&metric("x", "1", MetricType::Histogram, ""), NOW);
        assert_eq!(agg.contexts(), 2);
        let f = flush(&mut agg);
        assert_eq!(f.distributions.len(), 1);
        assert_eq!(value(&f, "x.max"), 1.0);
    }

    #[test]
    fn tag_order_and_duplicates_make_one_context() {
        let mut agg = Aggregator::new(opts());
        for tags in [
            "b:2,a:1",
            "a:1,b:2",
            "a:1,b:2,a:1",
            "b:2,,a:1,b:2",
            "a:1,a:1,b:2",
        ] {
            agg.insert(&metric("c", "1", MetricType::Counter, tags), NOW);
        }
        agg.insert(&metric("c", "1", MetricType::Counter, "a:1"), NOW);
        agg.insert(&metric("c", "1", MetricType::Counter, ""), NOW);
        assert_eq!(agg.contexts(), 3);
        let f = flush(&mut agg);
        assert_eq!(f.series.len(), 3);
        assert_eq!(f.series[0].tags, ["a:1", "b:2"]);
        assert!(close(f.series[0].points[0].1, 0.5));
        assert_eq!(f.series[1].tags, ["a:1"]);
        assert!(f.series[2].tags.is_empty());
    }

    #[test]
    fn host_tag_sets_the_host_last_wins_and_is_removed() {
        let mut agg = Aggregator::new(opts());
        agg.insert(
            &metric("g", "1", MetricType::Gauge, "host:a,env:prod,host:b"),
            NOW,
        );
        agg.insert(&metric("g", "2", MetricType::Gauge, "env:prod,host:b"), NOW);
        agg.insert(&metric("g", "3", MetricType::Gauge, "env:prod,host:a"), NOW);
        agg.insert(&metric("g", "4", MetricType::Gauge, "env:prod"), NOW);
        agg.insert(&metric("g", "5", MetricType::Gauge, "env:prod,host:"), NOW);
        assert_eq!(agg.contexts(), 3);
        let f = flush(&mut agg);
        let got: Vec<(Option<&str>, &[String], f64)> = f
            .series
            .iter()
            .map(|s| (s.host.as_deref(), &s.tags[..], s.points[0].1))
            .collect();
        let prod = ["env:prod".to_owned()];
        assert_eq!(
            got,
            [
                (Some("b"), &prod[..], 2.0),
                (Some("a"), &prod[..], 3.0),
                (None, &prod[..], 5.0)
            ]
        );
    }

    fn budget(bytes: usize) -> Aggregator {
        let mut o = opts();
        o.context_limit = usize::MAX;
        o.memory_bytes = bytes;
        Aggregator::new(o)
    }

    #[test]
    fn the_memory_budget_refuses_new_contexts_and_existing_ones_keep_counting() {
        let mut agg = budget(64 * 1024);
        let mut taken = 0;
        let mut refused = 0;
        for i in 0..10_000 {
            let name = format!("ctx.{i}");
            match agg.insert(&metric(&name, "1", MetricType::Counter, "env:x"), NOW) {
                InsertOutcome::Accepted => taken += 1,
                InsertOutcome::ContextLimit => refused += 1,
                other => panic!("{other:?}"),
            }
            assert!(agg.memory_bytes() <= 64 * 1024);
        }
        assert_eq!(taken + refused, 10_000);
        assert!((100..=256).contains(&taken), "{taken} contexts in 64 KiB");
        // An existing context keeps aggregating past the budget.
        for _ in 0..5 {
            assert_eq!(
                agg.insert(&metric("ctx.0", "1", MetricType::Counter, "env:x"), NOW),
                InsertOutcome::Accepted
            );
        }
        let b = agg.take();
        assert_eq!(b.contexts(), taken);
        // The taken bucket still holds its bytes: the next interval has no
        // room for a new context until it is flushed.
        assert_eq!(
            agg.insert(&metric("new", "1", MetricType::Counter, ""), NOW),
            InsertOutcome::ContextLimit
        );
        let f = b.into_flush(TS, 1);
        let c0 = f.series.iter().find(|s| s.metric == "ctx.0").unwrap();
        assert_eq!(c0.points[0].1, 6.0);
        assert_eq!(agg.memory_bytes(), agg.cur.bytes);
        assert_eq!(
            agg.insert(&metric("new", "1", MetricType::Counter, ""), NOW),
            InsertOutcome::Accepted
        );
    }

    #[test]
    fn a_bucket_gives_its_bytes_back_chunk_by_chunk_and_when_dropped() {
        let mut agg = budget(1 << 30);
        for i in 0..100 {
            let name = format!("c.{i}");
            agg.insert(&metric(&name, "1", MetricType::Counter, ""), NOW);
        }
        let live = agg.memory_bytes();
        assert!(live >= 100 * MIN_CONTEXT_BYTES);
        let mut chunks = agg.take().into_chunks(TS, 1, 10);
        assert_eq!(agg.memory_bytes(), live);
        let _ = chunks.next();
        let after_one = agg.memory_bytes();
        assert!(
            after_one < live && after_one >= live * 8 / 10,
            "{after_one} of {live}"
        );
        for _ in chunks.by_ref() {}
        assert_eq!(agg.memory_bytes(), 0);
        // A bucket dropped unflushed gives everything back too.
        agg.insert(&metric("x", "1", MetricType::Counter, ""), NOW);
        drop(agg.take());
        assert_eq!(agg.memory_bytes(), 0);
    }

    #[test]
    fn past_the_budget_samples_members_points_and_bins_are_dropped_and_counted() {
        let mut agg = budget(16 * 1024);
        for (name, k, v) in [
            ("kh", MetricType::Histogram, "1"),
            ("kd", MetricType::Distribution, "1"),
            ("ks", MetricType::Set, "m"),
        ] {
            assert_eq!(
                agg.insert(&metric(name, v, k, ""), NOW),
                InsertOutcome::Accepted
            );
        }
        assert_eq!(
            agg.insert(&stamped("t", "1", MetricType::Gauge, NOW), NOW),
            InsertOutcome::Accepted
        );
        let mut outcomes = std::collections::BTreeMap::new();
        for i in 0..5_000 {
            let v = format!("{}", f64::from(i) * 1.7 + 1.0);
            for (k, class, name) in [
                (MetricType::Distribution, "d", "kd"),
                (MetricType::Set, "s", "ks"),
                (MetricType::Histogram, "h", "kh"),
            ] {
                let o = agg.insert(&metric(name, &v, k, ""), NOW);
                *outcomes.entry((class, format!("{o:?}"))).or_insert(0) += 1;
            }
            let o = agg.insert(&stamped("t", &v, MetricType::Gauge, NOW), NOW);
            *outcomes.entry(("t", format!("{o:?}"))).or_insert(0) += 1;
            assert!(agg.memory_bytes() <= 16 * 1024);
        }
        // Every kind hit the budget; histograms keep aggregating.
        for class in ["d", "s", "t"] {
            assert!(
                outcomes
                    .get(&(class, "MemoryLimit".to_owned()))
                    .copied()
                    .unwrap_or(0)
                    > 0,
                "{outcomes:?}"
            );
        }
        assert_eq!(outcomes[&("h", "Accepted".to_owned())], 5_000);
        let refused: u64 = outcomes
            .iter()
            .filter(|((_, o), _)| o == "MemoryLimit")
            .map(|(_, n)| *n)
            .sum();
        let b = agg.take();
        assert!(
            b.dropped() > refused,
            "histogram samples left out count too"
        );
        let f = b.into_flush(TS, 1);
        // The histogram's count is exact even though samples were left out.
        assert_eq!(value(&f, "kh.count"), 5_001.0);
        assert_eq!(value(&f, "kh.max"), 4_999.0 * 1.7 + 1.0);
        // A value in an existing bin is still taken at the budget.
        let d = &f.distributions[0].sketch;
        assert!(d.count() > 1.0 && d.count() < 5_001.0, "{}", d.count());
    }

    #[test]
    fn context_limit_drops_new_contexts_only() {
        let mut o = opts();
        o.context_limit = 2;
        let mut agg = Aggregator::new(o);
        assert_eq!(
            agg.insert(&metric("a", "1", MetricType::Counter, ""), NOW),
            InsertOutcome::Accepted
        );
        assert_eq!(
            agg.insert(&metric("b", "1", MetricType::Counter, "x"), NOW),
            InsertOutcome::Accepted
        );
        assert_eq!(
            agg.insert(&metric("c", "1", MetricType::Counter, ""), NOW),
            InsertOutcome::ContextLimit
        );
        assert_eq!(
            agg.insert(&stamped("c", "1", MetricType::Gauge, NOW), NOW),
            InsertOutcome::ContextLimit
        );
        // Existing contexts, even in a new spelling, still count.
        assert_eq!(
            agg.insert(&metric("b", "1", MetricType::Counter, "x,x"), NOW),
            InsertOutcome::Accepted
        );
        assert_eq!(agg.contexts(), 2);
        let f = flush(&mut agg);
        assert_eq!(names(&f), ["a", "b"]);
        // A new interval has room again.
        assert_eq!(
            agg.insert(&metric("c", "1", MetricType::Counter, ""), NOW),
            InsertOutcome::Accepted
        );
    }

    #[test]
    fn timestamped_gauges_and_counters_go_out_as_received() {
        let mut agg = Aggregator::new(opts());
        let t1 = NOW - 100;
        let t2 = NOW - 50;
        assert_eq!(
            agg.insert(&stamped("g", "3", MetricType::Gauge, t2), NOW),
            InsertOutcome::Accepted
        );
        agg.insert(&stamped("g", "1", MetricType::Gauge, t1), NOW);
        agg.insert(&stamped("c", "20", MetricType::Counter, t1), NOW);
        agg.insert(&stamped("c", "40", MetricType::Counter, t1), NOW);
        // Not mixed with the aggregated context of the same name.
        agg.insert(&metric("g", "9", MetricType::Gauge, ""), NOW);
        let f = flush(&mut agg);
        assert_eq!(names(&f), ["g", "c", "g"]);
        assert_eq!(f.series[0].kind, SeriesKind::Gauge);
        assert_eq!(f.series[0].points, vec![(t1, 1.0), (t2, 3.0)]);
        assert_eq!(f.series[1].kind, SeriesKind::Rate);
        assert_eq!(f.series[1].interval, Some(10));
        assert_eq!(f.series[1].points, vec![(t1, 2.0), (t1, 4.0)]);
        assert_eq!(f.series[2].points, vec![(TS, 9.0)]);
    }

    #[test]
    fn timestamped_histograms_sets_distributions_and_stale_points_are_discarded() {
        let mut agg = Aggregator::new(opts());
        for kind in [
            MetricType::Histogram,
            MetricType::Timer,
            MetricType::Set,
            MetricType::Distribution,
        ] {
            assert_eq!(
                agg.insert(&stamped("x", "1", kind, NOW), NOW),
                InsertOutcome::Discarded,
                "{kind:?}"
            );
        }
        assert_eq!(
            agg.insert(&stamped("x", "1", MetricType::Gauge, NOW - 7_200), NOW),
            InsertOutcome::Discarded
        );
        assert_eq!(
            agg.insert(&stamped("x", "1", MetricType::Gauge, NOW + 3_600), NOW),
            InsertOutcome::Discarded
        );
        assert_eq!(agg.contexts(), 0);
        assert_eq!(flush(&mut agg), Flush::default());
    }

    #[test]
    fn nan_and_inf_produce_no_point() {
        let mut agg = Aggregator::new(opts());
        for v in ["nan", "NaN", "inf", "-inf", "nan:inf"] {
            for kind in [
                MetricType::Counter,
                MetricType::Gauge,
                MetricType::Histogram,
                MetricType::Distribution,
            ] {
                assert_eq!(
                    agg.insert(&metric("n", v, kind, ""), NOW),
                    InsertOutcome::Discarded,
                    "{v} {kind:?}"
                );
            }
        }
        assert_eq!(agg.contexts(), 0, "no empty context was created");
        agg.insert(&metric("g", "4", MetricType::Gauge, ""), NOW);
        assert_eq!(
            agg.insert(&metric("g", "nan", MetricType::Gauge, ""), NOW),
            InsertOutcome::Discarded
        );
        // A line with one good value is taken; the NaN is skipped.
        assert_eq!(
            agg.insert(&metric("h", "nan:3:inf", MetricType::Histogram, ""), NOW),
            InsertOutcome::Accepted
        );
        let f = flush(&mut agg);
        assert_eq!(value(&f, "g"), 4.0);
        assert_eq!(value(&f, "h.max"), 3.0);
        assert!(close(value(&f, "h.count"), 0.1));
    }

    #[test]
    fn mixed_types_fold_into_the_first_like_the_agent() {
        let mut agg = Aggregator::new(opts());
        agg.insert(&metric("m", "1", MetricType::Counter, ""), NOW);
        assert_eq!(
            agg.insert(&metric("m", "9", MetricType::Gauge, ""), NOW),
            InsertOutcome::Accepted
        );
        assert_eq!(
            agg.insert(&metric("m", "x", MetricType::Set, ""), NOW),
            InsertOutcome::Discarded
        );
        agg.insert(&metric("s", "x", MetricType::Set, ""), NOW);
        assert_eq!(
            agg.insert(&metric("s", "1", MetricType::Counter, ""), NOW),
            InsertOutcome::Discarded
        );
        let f = flush(&mut agg);
        assert_eq!(value(&f, "m"), 1.0);
        assert_eq!(value(&f, "s"), 1.0);
    }

    #[test]
    fn an_idle_context_does_not_reappear() {
        let mut agg = Aggregator::new(opts());
        agg.insert(&metric("old", "1", MetricType::Counter, "a"), NOW);
        agg.insert(&metric("old.h", "1", MetricType::Histogram, ""), NOW);
        agg.insert(&metric("old.s", "1", MetricType::Set, ""), NOW);
        agg.insert(&metric("kept", "1", MetricType::Gauge, ""), NOW);
        assert_eq!(agg.contexts(), 4);
        let first = flush(&mut agg);
        assert_eq!(first.series.len(), 8);
        assert_eq!(agg.contexts(), 0, "take() leaves nothing behind");
        agg.insert(&metric("kept", "2", MetricType::Gauge, ""), NOW);
        let second = flush(&mut agg);
        assert_eq!(names(&second), ["kept"]);
        assert_eq!(value(&second, "kept"), 2.0);
        assert_eq!(flush(&mut agg), Flush::default());
    }

    #[test]
    fn events_and_checks_are_collected_and_capped() {
        let mut agg = Aggregator::new(opts());
        let event = Event {
            title: "t".into(),
            text: "x".into(),
            timestamp: None,
            host: None,
            aggregation_key: None,
            priority: Priority::Normal,
            source_type: None,
            alert_type: AlertType::Info,
            tags: vec![],
        };
        let check = ServiceCheck {
            name: "up".into(),
            status: CheckStatus::Ok,
            timestamp: None,
            host: None,
            tags: vec![],
            message: None,
        };
        for _ in 0..MAX_EVENTS + 3 {
            agg.insert_event(event.clone());
        }
        for _ in 0..MAX_SERVICE_CHECKS + 2 {
            agg.insert_service_check(check.clone());
        }
        let bucket = agg.take();
        assert_eq!(bucket.overflowed(), 5);
        let f = bucket.into_flush(TS, 10);
        assert_eq!(f.events.len(), MAX_EVENTS);
        assert_eq!(f.service_checks.len(), MAX_SERVICE_CHECKS);
        assert_eq!(f.events[0], event);
        assert_eq!(agg.take().overflowed(), 0);
    }

    #[test]
    fn hundred_thousand_contexts() {
        let mut o = opts();
        o.context_limit = 200_000;
        let mut agg = Aggregator::new(o);
        for i in 0..100_000u32 {
            let name = format!("app.metric.{}", i % 100);
            let tags = format!("shard:{},env:prod,service:web", i / 100);
            assert_eq!(
                agg.insert(&metric(&name, "1", MetricType::Counter, &tags), NOW),
                InsertOutcome::Accepted
            );
        }
        assert_eq!(agg.contexts(), 100_000);
        // Second pass: every one is an existing context, in another tag order.
        for i in 0..100_000u32 {
            let name = format!("app.metric.{}", i % 100);
            let tags = format!("service:web,env:prod,shard:{}", i / 100);
            agg.insert(&metric(&name, "1", MetricType::Counter, &tags), NOW);
        }
        assert_eq!(agg.contexts(), 100_000);
        let f = flush(&mut agg);
        assert_eq!(f.series.len(), 100_000);
        assert!(f.series.iter().all(|s| s.points == [(TS, 0.2)]));
        assert_eq!(f.series[0].tags, ["env:prod", "service:web", "shard:0"]);
    }

    /// Every kind of context, an event and a check, the same each call.
    fn mixed_bucket() -> Bucket {
        let mut agg = Aggregator::new(opts());
        let kinds = [
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Set,
            MetricType::Histogram,
            MetricType::Timer,
            MetricType::Distribution,
        ];
        for i in 0..50u32 {
            let name = format!("m.{}", i % 7);
            let tags = format!("shard:{i},env:x");
            let kind = kinds[i as usize % kinds.len()];
            for v in ["1", "2.5", "7"] {
                agg.insert(&metric(&name, v, kind, &tags), NOW);
            }
        }
        agg.insert(&stamped("ts.g", "3", MetricType::Gauge, NOW - 5), NOW);
        agg.insert(&stamped("ts.c", "4", MetricType::Counter, NOW - 5), NOW);
        agg.insert_event(Event {
            title: "t".into(),
            text: "x".into(),
            timestamp: None,
            host: None,
            aggregation_key: None,
            priority: Priority::Normal,
            source_type: None,
            alert_type: AlertType::Info,
            tags: vec![],
        });
        agg.insert_service_check(ServiceCheck {
            name: "up".into(),
            status: CheckStatus::Ok,
            timestamp: None,
            host: None,
            tags: vec![],
            message: None,
        });
        agg.take()
    }

    #[test]
    fn chunks_join_into_the_whole_flush() {
        let whole: Vec<Flush> = mixed_bucket().into_chunks(TS, 10, usize::MAX).collect();
        assert_eq!(whole.len(), 1);
        let whole = whole.into_iter().next().expect("one chunk");
        assert_eq!(whole, mixed_bucket().into_flush(TS, 10));
        assert_eq!(whole.events.len(), 1);
        assert_eq!(whole.service_checks.len(), 1);
        assert!(!whole.distributions.is_empty());
        let contexts = mixed_bucket().contexts();
        assert_eq!(contexts, 52);
        for max in [1, 3, 7, 51, 52] {
            let chunks: Vec<Flush> = mixed_bucket().into_chunks(TS, 10, max).collect();
            assert_eq!(chunks.len(), contexts.div_ceil(max), "max {max}");
            assert!(chunks.iter().skip(1).all(|c| c.events.is_empty()));
            let mut joined = Flush::default();
            for c in chunks {
                joined.append(c);
            }
            assert_eq!(joined, whole, "max {max}");
        }
        // An empty bucket still yields one (empty) chunk, then nothing.
        let mut empty = Aggregator::new(opts()).take().into_chunks(TS, 10, 4);
        assert_eq!(empty.next(), Some(Flush::default()));
        assert_eq!(empty.next(), None);
    }

    #[test]
    fn set_members_inline_and_on_the_heap_are_counted_once() {
        let mut agg = Aggregator::new(opts());
        let long = "x".repeat(INLINE_MEMBER + 1);
        let edge = "y".repeat(INLINE_MEMBER);
        for m in ["", "a", "a:b", &edge, &long, &edge, &long, "a", "é"] {
            let line = metric("s", m, MetricType::Set, "");
            assert_eq!(agg.insert(&line, NOW), InsertOutcome::Accepted, "{m:?}");
        }
        assert_eq!(value(&flush(&mut agg), "s"), 6.0);
        assert_eq!(Member::new(&long).as_bytes(), long.as_bytes());
        assert!(matches!(Member::new(&edge), Member::Inline { .. }));
        assert!(matches!(Member::new(&long), Member::Heap(_)));
    }

    #[test]
    fn canonical_key_round_trips() {
        let mut spans = Vec::new();
        let mut key = String::new();
        let raw = |raw| TagSources {
            raw,
            mapped: &[],
            extra: &[],
        };
        canonicalise(
            &mut spans,
            &mut key,
            Class::Aggregated,
            "m",
            &raw("z,host:h1,a:b,z,,host:h2"),
        );
        assert_eq!(key, "am\nh2\na:b,z");

        let ctx = ContextKey::parse(&key).expect("parses");
        assert_eq!(ctx.class, Class::Aggregated);
        assert_eq!((ctx.name, ctx.host, ctx.tags), ("m", Some("h2"), "a:b,z"));
        // Internal tags go; look-alikes stay.
        canonicalise(
            &mut spans,
            &mut key,
            Class::Aggregated,
            "m",
            &raw("dd.internal.entity_id:pod,b,dd.internal.card:high,dd.internal.jmx_check_name:jvm,dd.internal.other:x,dd.internal.card"),
        );
        assert_eq!(key, "am\n\nb,dd.internal.card,dd.internal.other:x");
        // The mapper's host wins over the wire's; DD_DOGSTATSD_TAGS' `host:` stays a tag.
        let mapped = ["host:m".to_owned(), "k:v".to_owned()];
        let extra = ["host:x".to_owned(), "a".to_owned(), "k:v".to_owned()];
        canonicalise(
            &mut spans,
            &mut key,
            Class::Aggregated,
            "m",
            &TagSources {
                raw: "host:w,z",
                mapped: &mapped,
                extra: &extra,
            },
        );
        assert_eq!(key, "am\nm\na,host:x,k:v,z");
    }

    #[test]
    fn alias_cache_is_bounded_but_lookups_stay_correct() {
        let mut o = opts();
        o.context_limit = 1;
        let mut agg = Aggregator::new(o);
        let limit = agg.prepared.alias_limit;
        // Many spellings of one context: duplicates make each raw field unique.
        for i in 0..limit + 10 {
            let tags = format!("a{}", ",a".repeat(i));
            assert_eq!(
                agg.insert(&metric("c", "1", MetricType::Counter, &tags), NOW),
                InsertOutcome::Accepted
            );
        }
        assert_eq!(agg.cur.aliases.len(), limit);
        let f = flush(&mut agg);
        assert_eq!(f.series.len(), 1);
        assert!(close(f.series[0].points[0].1, (limit + 10) as f64 / 10.0));
    }

    #[test]
    fn impossible_sample_rates_count_as_one() {
        let mut agg = Aggregator::new(opts());
        for rate in [0.0, -1.0, 2.0, f64::NAN] {
            agg.insert(&rated("c", "10", MetricType::Counter, rate), NOW);
            agg.insert(&rated("h", "10", MetricType::Histogram, rate), NOW);
        }
        let f = agg.take().into_flush(TS, 1);
        assert_eq!(value(&f, "c"), 40.0);
        assert_eq!(value(&f, "h.count"), 4.0);
    }

    /// One counter sample at `at` (unix seconds), in an aggregator with `expiry`.
    fn zero_filled(expiry: u64, interval: i64, flushes: usize) -> Vec<Vec<f64>> {
        let mut agg = Aggregator::new(AggregatorOptions {
            counter_expiry_secs: expiry,
            ..opts()
        });
        let start = 1_000 * interval;
        // Arrives during the first bucket (whole seconds: `start` is start.x).
        agg.insert(&metric("sparse", "5", MetricType::Counter, "a"), start);
        agg.insert(&metric("g", "5", MetricType::Gauge, ""), start);
        (0..flushes)
            .map(|i| {
                let ts = start + interval * i as i64;
                let f = agg.take().into_flush(ts, interval as u64);
                f.series
                    .iter()
                    .filter(|s| s.metric == "sparse")
                    .inspect(|s| {
                        assert_eq!(s.tags, ["a"]);
                        assert_eq!(s.kind, SeriesKind::Rate);
                        assert_eq!(s.points[0].0, ts);
                    })
                    .map(|s| s.points[0].1)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn idle_counters_are_zero_filled_until_they_expire() {
        // 30 s at 10 s buckets: the sample's bucket, then 3 zeros (the
        // Agent's count for a sample that arrives within its bucket).
        assert_eq!(
            zero_filled(30, 10, 6),
            [vec![0.5], vec![0.0], vec![0.0], vec![0.0], vec![], vec![]]
        );
        // 4 s at 1 s buckets: 4 zeros, then nothing.
        assert_eq!(
            zero_filled(4, 1, 7),
            [
                vec![5.0],
                vec![0.0],
                vec![0.0],
                vec![0.0],
                vec![0.0],
                vec![],
                vec![]
            ]
        );
        // 0 turns it off.
        assert_eq!(zero_filled(0, 1, 3), [vec![5.0], vec![], vec![]]);
    }

    #[test]
    fn a_new_sample_restarts_the_expiry_and_is_not_doubled() {
        let mut agg = Aggregator::new(AggregatorOptions {
            counter_expiry_secs: 20,
            ..opts()
        });
        let c = metric("c", "10", MetricType::Counter, "");
        agg.insert(&c, 1_001);
        let values = |f: Flush| -> Vec<f64> { f.series.iter().map(|s| s.points[0].1).collect() };
        assert_eq!(values(agg.take().into_flush(1_000, 10)), [1.0]);
        assert_eq!(values(agg.take().into_flush(1_010, 10)), [0.0]);
        agg.insert(&c, 1_025);
        assert_eq!(values(agg.take().into_flush(1_020, 10)), [1.0]);
        assert_eq!(values(agg.take().into_flush(1_030, 10)), [0.0]);
        assert_eq!(values(agg.take().into_flush(1_040, 10)), [0.0]);
        assert!(values(agg.take().into_flush(1_050, 10)).is_empty());
        // The registry forgot it.
        assert!(agg.zero_fill.lock().expect("lock").counters.is_empty());
    }

    #[test]
    fn the_zero_fill_registry_is_bounded_by_the_context_limit() {
        let mut agg = Aggregator::new(AggregatorOptions {
            counter_expiry_secs: 100,
            context_limit: 3,
            ..opts()
        });
        for n in ["a", "b", "c"] {
            agg.insert(&metric(n, "1", MetricType::Counter, ""), 1_000);
        }
        let chunks = agg.take().into_chunks(1_000, 10, 2);
        assert_eq!(chunks.zero_fill_untracked(), 0);
        assert_eq!(chunks.map(|c| c.series.len()).sum::<usize>(), 3);
        // Three new counters while three are registered: none fits.
        for n in ["d", "e", "f"] {
            agg.insert(&metric(n, "1", MetricType::Counter, ""), 1_010);
        }
        let chunks = agg.take().into_chunks(1_010, 10, 2);
        assert_eq!(chunks.zero_fill_untracked(), 3);
        // Their own points and the idle ones' zeros, over chunks of 2.
        let flushes: Vec<Flush> = chunks.collect();
        assert_eq!(flushes.iter().map(|c| c.series.len()).sum::<usize>(), 6);
        assert!(flushes.iter().all(|c| c.series.len() <= 2));
        let mut names: Vec<(&str, f64)> = flushes
            .iter()
            .flat_map(|c| &c.series)
            .map(|s| (s.metric.as_str(), s.points[0].1))
            .collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(
            names,
            [
                ("a", 0.0),
                ("b", 0.0),
                ("c", 0.0),
                ("d", 0.1),
                ("e", 0.1),
                ("f", 0.1)
            ]
        );
    }

    #[test]
    fn events_and_checks_take_their_host_from_tags_and_get_dogstatsd_tags() {
        let mut agg = Aggregator::new(AggregatorOptions {
            dogstatsd_tags: vec!["team:a".into(), "host:kept".into()],
            ..opts()
        });
        let event = |host: Option<&str>, tags: &[&str]| Event {
            title: "t".into(),
            text: "x".into(),
            timestamp: None,
            host: host.map(str::to_owned),
            aggregation_key: None,
            priority: Priority::Normal,
            source_type: None,
            alert_type: AlertType::Info,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        };
        agg.insert_event(event(
            None,
            &["host:a", "x", "host:b", "dd.internal.card:low"],
        ));
        agg.insert_event(event(Some("field"), &["host:a"]));
        agg.insert_event(event(None, &["host:"]));
        agg.insert_service_check(ServiceCheck {
            name: "up".into(),
            status: CheckStatus::Ok,
            timestamp: None,
            host: None,
            tags: vec![
                "host:db1".into(),
                "dd.internal.entity_id:x".into(),
                "y".into(),
            ],
            message: None,
        });
        let f = flush(&mut agg);
        let got: Vec<(Option<&str>, &[String])> = f
            .events
            .iter()
            .map(|e| (e.host.as_deref(), &e.tags[..]))
            .collect();
        let tags = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                (Some("b"), &tags(&["x", "team:a", "host:kept"])[..]),
                (Some("field"), &tags(&["team:a", "host:kept"])[..]),
                (None, &tags(&["team:a", "host:kept"])[..]),
            ]
        );
        assert_eq!(f.service_checks[0].host.as_deref(), Some("db1"));
        assert_eq!(f.service_checks[0].tags, ["y", "team:a", "host:kept"]);
    }

    #[test]
    fn metrics_get_dogstatsd_tags_and_names_are_mapped_namespaced_and_blocked() {
        let profiles = crate::config::parse_mapper_profiles(
            r#"[{"name":"sq","prefix":"sidekiq.","mappings":[
                {"match":"sidekiq.jobs.*.perform","name":"sidekiq.jobs.perform","tags":{"worker":"$1"}}]}]"#,
        )
        .expect("valid");
        let mut agg = Aggregator::new(AggregatorOptions {
            dogstatsd_tags: vec!["team:a".into()],
            names: NameRules {
                mapper_profiles: profiles,
                mapper_cache_size: 10,
                namespace: "app.".into(),
                namespace_exceptions: vec!["sidekiq".into()],
                blocklist: vec!["app.noisy".into()],
                blocklist_match_prefix: false,
            },
            ..opts()
        });
        for _ in 0..3 {
            assert_eq!(
                agg.insert(
                    &metric(
                        "sidekiq.jobs.Mailer.perform",
                        "2",
                        MetricType::Counter,
                        "host:h,x"
                    ),
                    NOW
                ),
                InsertOutcome::Accepted
            );
            // Blocked on every sample, whether from the cold path or the cache.
            assert_eq!(
                agg.insert(&metric("noisy", "1", MetricType::Gauge, ""), NOW),
                InsertOutcome::Filtered
            );
            assert_eq!(
                agg.insert(&metric("hits", "1", MetricType::Counter, ""), NOW),
                InsertOutcome::Accepted
            );
        }
        assert_eq!(agg.contexts(), 2);
        let f = agg.take().into_flush(TS, 1);
        assert_eq!(names(&f), ["sidekiq.jobs.perform", "app.hits"]);
        assert_eq!(f.series[0].tags, ["team:a", "worker:Mailer", "x"]);
        assert_eq!(f.series[0].host.as_deref(), Some("h"));
        assert_eq!(f.series[0].points[0].1, 6.0);
        assert_eq!(f.series[1].tags, ["team:a"]);
    }
}
