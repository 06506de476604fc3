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
//! 1. fingerprint `(class, name, raw tag field)` with the 128-bit XXH3 and
//!    look its low half up in the *alias* map; on a hit whose high half
//!    matches, that is the context id (no spelling bytes are stored or
//!    compared: docs/DESIGN.md, "Context keys");
//! 2. on a miss (the first line of a context in this interval, or a new tag
//!    order), the cold path [`Aggregator::resolve_new`] canonicalises the tags,
//!    looks up or creates the canonical context, and caches the raw alias.
//!
//! Per-context state lives in a `Vec` indexed by context id, and the
//! canonical keys back to back in one buffer whose table maps a key to its
//! id ([`Keys`]).
//!
//! # The memory budget
//!
//! Every allocation an interval makes is charged, in approximate bytes, to
//! one meter before it is made: a context (its canonical key, table and map
//! entries and state, with the slack of maps and vectors that grow by
//! doubling), a kept
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
use std::mem;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::config::HistogramAggregate;
use crate::dogstatsd::mapper::{NameRules, Named, Names};
use crate::dogstatsd::protocol::{sample_weight, Event, Metric, MetricType, ServiceCheck};
use crate::dogstatsd::sketch::Sketch;

mod budget;
mod cardinality;
mod context;
mod flush;
mod state;
#[cfg(test)]
mod tests;

use budget::*;
pub use cardinality::WideName;
use context::*;
use flush::*;
pub use flush::{Chunks, CHUNK_CONTEXTS};
use state::*;

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
/// Charged per extra raw spelling (another tag order) of a context: an
/// alias map entry (a fingerprint's low half, its high half and the context
/// id, 24 bytes, and a control byte) times 2.5 for the load factor and a
/// resize's old and new tables. No spelling bytes are kept.
const ALIAS_BYTES: usize = 64;
/// Charged per set member, whatever its length: its 16-byte fingerprint slot
/// in a table at least 7/16 full after it doubles (36.6 B), plus the old
/// table's share while it doubles.
const MEMBER_BYTES: usize = 64;
/// Charged per event or service check, plus its strings.
const EVENT_BYTES: usize = 256;

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
    /// `DYNOSTAT_CARDINALITY_WARN`: contexts of one name in one interval
    /// past which [`Bucket::wide_names`] reports it; 0 turns it off.
    pub cardinality_warn: usize,
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
            cardinality_warn: defaults::CARDINALITY_WARN,
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
    /// Events, for the Agent's `/intake/` envelope.
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
    /// See [`AggregatorOptions::cardinality_warn`].
    cardinality_warn: usize,
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
    /// The blocklist entries that can name a histogram's aggregate or
    /// percentile series (see [`HistogramFilter`]).
    histogram_filter: HistogramFilter,
}

/// The Agent's histogram filter list (comp/filterlist: `GetHistoFilterList`,
/// applied by the time sampler): the flushed aggregates of a histogram or
/// timer (`h.max`, `h.95percentile`) are dropped when the blocklist names
/// them. Exact entries count only when they end in a configured aggregate
/// or percentile suffix; with `..._MATCH_PREFIX`, every entry is a prefix
/// that can match one. Empty (the default) costs nothing at the flush.
#[derive(Debug, Default)]
pub(super) struct HistogramFilter {
    exact: rustc_hash::FxHashSet<String>,
    prefixes: Vec<String>,
}

impl HistogramFilter {
    fn new(opts: &AggregatorOptions, percentiles: &[(u64, String)]) -> Self {
        let names = &opts.names;
        if names.blocklist_match_prefix {
            return Self {
                exact: rustc_hash::FxHashSet::default(),
                prefixes: names.blocklist.clone(),
            };
        }
        let is_aggregate = |entry: &str| {
            opts.histogram_aggregates.iter().any(|a| {
                entry.len() > a.suffix().len() + 1 && entry.ends_with(&format!(".{}", a.suffix()))
            }) || percentiles
                .iter()
                .any(|(_, suffix)| entry.len() > suffix.len() && entry.ends_with(suffix.as_str()))
        };
        Self {
            exact: names
                .blocklist
                .iter()
                .filter(|e| is_aggregate(e))
                .cloned()
                .collect(),
            prefixes: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Whether the aggregate series `name` is filtered out.
    pub(super) fn blocks(&self, name: &str) -> bool {
        !self.is_empty()
            && (self.exact.contains(name)
                || self.prefixes.iter().any(|p| name.starts_with(p.as_str())))
    }
}

/// The configured percentiles (fractions, e.g. 0.95) as the whole numbers
/// their series are named after (`.95percentile`), ascending, without
/// repeats. The Agent turns `0.95` into 95 with `int(p*100 + 0.5)`
/// (pkg/metrics/histogram.go ParsePercentiles), sorts the list, and names
/// the series `fmt.Sprintf(".%dpercentile", p)`.
pub fn percentile_ranks(percentiles: &[f64]) -> Vec<u64> {
    let mut pcts: Vec<u64> = percentiles
        .iter()
        .filter(|p| p.is_finite())
        // Saturating float->int cast; the clamp keeps it in 0..=100.
        .map(|p| ((p * 100.0 + 0.5) as u64).min(100))
        .collect();
    pcts.sort_unstable();
    pcts.dedup();
    pcts
}

impl Prepared {
    fn new(opts: &AggregatorOptions) -> Self {
        let pcts = percentile_ranks(&opts.histogram_percentiles);
        let percentiles: Vec<(u64, String)> = pcts
            .into_iter()
            .map(|p| (p, format!(".{p}percentile")))
            .collect();
        Self {
            histogram_filter: HistogramFilter::new(opts, &percentiles),
            context_limit: opts.context_limit,
            cardinality_warn: opts.cardinality_warn,
            meter: Meter {
                limit: opts.memory_bytes,
                flushing: Arc::new(AtomicUsize::new(0)),
            },
            alias_limit: opts.context_limit.saturating_mul(2).saturating_add(1_024),
            aggregates: opts.histogram_aggregates.clone(),
            percentiles,
            counter_expiry_secs: i64::try_from(opts.counter_expiry_secs).unwrap_or(i64::MAX),
            dogstatsd_tags: opts.dogstatsd_tags.clone(),
        }
    }
}

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

    /// Adds one metric line. `now` is unix seconds. A `|T` point of any age
    /// is kept, as the Agent forwards it: the intake decides.
    #[inline]
    pub fn insert(&mut self, metric: &Metric<'_>, now: i64) -> InsertOutcome {
        let Some(class) = Class::of(metric) else {
            return InsertOutcome::Discarded;
        };
        let fp = fingerprint(class, metric.name, metric.tags.raw());
        let hit = self
            .cur
            .aliases
            .get(&fp.lo)
            .filter(|a| a.hi == fp.hi)
            .map(|a| a.ctx);
        let id = match hit {
            Some(id) => id,
            None => match self.resolve_new(class, metric, fp) {
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
        fp: Fingerprint,
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
                        if let Entry::Vacant(e) = self.cur.aliases.entry(fp.lo) {
                            e.insert(Alias::new(fp, BLOCKED));
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
        let id = match self.cur.keys.find(&self.scratch_key) {
            Some(id) => id,
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
                let cost = context_bytes(self.scratch_key.len()) + state.heap_bytes();
                if !self.prepared.meter.fits(self.cur.bytes, cost) {
                    return Err(InsertOutcome::ContextLimit);
                }
                if u32::try_from(n).map_or(true, |id| id == BLOCKED) {
                    return Err(InsertOutcome::ContextLimit);
                }
                // Keys and states grow together: the key's id is `n`.
                let id = self
                    .cur
                    .keys
                    .push(&self.scratch_key)
                    .ok_or(InsertOutcome::ContextLimit)?;
                debug_assert_eq!(id as usize, n);
                self.cur.bytes += cost;
                self.cur.states.push(state);
                if self.prepared.cardinality_warn > 0 {
                    self.cur.names.count(name, self.prepared.cardinality_warn);
                }
                // The context's first spelling is paid for in its cost.
                if let Entry::Vacant(e) = self.cur.aliases.entry(fp.lo) {
                    e.insert(Alias::new(fp, id));
                }
                return Ok(id);
            }
        };
        // Cache another spelling, unless the cache is full (many tag orders
        // for few contexts), the budget has no room (the spelling then keeps
        // taking the cold path), or another spelling owns this fingerprint's
        // low half (a 64-bit collision: that spelling simply keeps taking the
        // cold path).
        if self.cur.aliases.len() < self.prepared.alias_limit
            && self.prepared.meter.fits(self.cur.bytes, ALIAS_BYTES)
        {
            if let Entry::Vacant(e) = self.cur.aliases.entry(fp.lo) {
                e.insert(Alias::new(fp, id));
                self.cur.bytes += ALIAS_BYTES;
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

    /// Merges every set's batched members now, as the flush does, giving
    /// back the charges of those already held (for tests).
    #[cfg(test)]
    pub(super) fn merge_set_batches(&mut self) {
        for state in &mut self.cur.states {
            if let State::Set(members) = state {
                members.settle(&mut self.cur.bytes);
            }
        }
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

    /// The metric names that passed `DYNOSTAT_CARDINALITY_WARN` contexts in
    /// this interval, each with its tag key with the most distinct values.
    /// Reads the bucket's keys only when some name passed it.
    pub fn wide_names(&self) -> Vec<WideName> {
        self.interval.names.wide_names(&self.interval.keys)
    }

    /// Lines in this interval whose sample rate weighed more than
    /// [`crate::dogstatsd::protocol::MAX_WEIGHT`] and were bounded to it.
    pub fn clamped(&self) -> u64 {
        self.interval.clamped
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
            mut keys,
            mut states,
            events,
            service_checks,
            log,
            ..
        } = self.interval;
        // The lookups are done with: only the keys by id are read from here.
        drop(aliases);
        keys.drop_table();
        debug_assert_eq!(keys.len(), states.len());
        let total = states.len();
        let mut held = self.held;
        // Each histogram's samples, from the log. Both were charged as the
        // log grew; the log's share is given back once it is freed.
        let log_bytes = log.heap_bytes();
        log.scatter(&mut states);
        held.keep(held.bytes.saturating_sub(log_bytes));
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
            keys,
            next_id: 0,
            idle: idle.into_iter(),
            zero_fill_untracked: untracked,
            first: Some((events, service_checks)),
            timestamp,
            interval: interval_secs.max(1),
            max_contexts: max_contexts.max(1),
        }
    }
}
