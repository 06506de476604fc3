//! The flush: a taken bucket turned into series, sketches, events and
//! checks, a bounded number of contexts at a time ([`Chunks`]), with the
//! Agent's histogram aggregates and percentiles and counter zero-fill.
//!
//! In: a [`Bucket`](super::Bucket). Out: [`Flush`](super::Flush)es. Must
//! never: run under the listener's lock.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The zero-fill registry: each counter context's canonical key and when its
/// last sample arrived. Shared by the [`Aggregator`] and its [`Bucket`]s, and
/// locked only while a bucket is turned into series, never on the receive
/// path.
#[derive(Debug, Default)]
pub(super) struct ZeroFill {
    /// Canonical key → (last sample, unix seconds; flush that last saw it).
    pub(super) counters: FxHashMap<Box<str>, (i64, u64)>,
    /// Flushes so far: tells "seen in this bucket" from "idle".
    pub(super) flushes: u64,
    /// Bytes charged to the memory budget for `counters` (part of the
    /// meter's `flushing` bytes, since the registry outlives intervals).
    pub(super) bytes: usize,
}

/// Charged per zero-fill registry entry, plus its key: the key's header and
/// a 32-byte map entry with its control byte, times the table's slack.
pub(super) const ZERO_FILL_BYTES: usize = 100;

/// Updates the zero-fill registry with this bucket's counters and returns
/// the keys of the idle counters to send as 0 for the bucket starting at
/// `bucket_start`, plus how many counters could not be registered (the
/// registry was at `limit`, or the memory budget had no room: registry
/// entries are charged to it for as long as they are kept).
///
/// The Agent's rule (pkg/aggregator/time_sampler.go): a bucket gets a 0 for
/// every counter whose context is still tracked; the newest Agent keeps the
/// last-seen time in whole seconds and forgets a counter when last seen +
/// expiry < the time it is given (context_resolver.go `expireContexts`), so
/// equality keeps it, as here. Which time that is (the Agent's sampler
/// passes its flush time, we compare with the bucket's start) can differ by
/// one 0 at the end of the expiry: see docs/DESIGN.md.
pub(super) fn zero_fill(
    registry: &Mutex<ZeroFill>,
    states: &[State],
    keys: &Keys,
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
    for (id, state) in states.iter().enumerate() {
        let (State::Counter { last, .. }, Some(key)) = (state, keys.get(id)) else {
            continue;
        };
        if let Some(entry) = reg.counters.get_mut(key) {
            *entry = (*last, flush);
        } else if reg.counters.len() < limit
            && reg.bytes + ZERO_FILL_BYTES + key.len() <= meter.limit / 4
            && meter.fits(0, ZERO_FILL_BYTES + key.len())
        {
            // At most a quarter of the budget: a flush copies the idle keys.
            let cost = ZERO_FILL_BYTES + key.len();
            meter.flushing.fetch_add(cost, Ordering::Relaxed);
            reg.bytes += cost;
            reg.counters.insert(Box::from(key), (*last, flush));
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
/// 0.5 MB of series at a time (a histogram context makes six series, each
/// with its own name, tags and points). The flush thread allocates them
/// while the contexts' freed state is the receive thread's, so a chunk is
/// new memory at the flush's peak: 4,096 contexts a chunk cost about 1.5 MB
/// more at 100,000 contexts.
pub const CHUNK_CONTEXTS: usize = 1_024;

/// A bucket being turned into [`Flush`]es chunk by chunk; see [`Bucket::into_chunks`].
#[derive(Debug)]
pub struct Chunks {
    /// Bytes still charged; given back in proportion to the contexts built.
    pub(super) held: Held,
    /// Contexts in the bucket.
    pub(super) total: usize,
    pub(super) prepared: Arc<Prepared>,
    pub(super) states: std::vec::IntoIter<State>,
    /// The bucket's keys, read by id (the table is freed).
    pub(super) keys: Keys,
    /// The id of the next state `states` yields.
    pub(super) next_id: usize,
    /// Idle counters' keys, sent as 0 after the bucket's own contexts.
    pub(super) idle: std::vec::IntoIter<Box<str>>,
    pub(super) zero_fill_untracked: u64,
    /// Events and service checks, until the first chunk takes them.
    pub(super) first: Option<(Vec<Event>, Vec<ServiceCheck>)>,
    pub(super) timestamp: i64,
    pub(super) interval: u64,
    pub(super) max_contexts: usize,
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
        for state in (&mut self.states).take(self.max_contexts) {
            n += 1;
            let id = self.next_id;
            self.next_id += 1;
            let Some(ctx) = self.keys.get(id).and_then(ContextKey::parse) else {
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
pub(super) fn flush_state(
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
        State::Set(mut members) => {
            members.merge();
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
        State::Timestamped(points) => {
            let mut points = *points;
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
/// current Agent computes them. `.sum` and `.avg` are the Agent's
/// compensated sum over the sorted samples ([`sample_sum`]).
#[allow(clippy::cast_precision_loss)] // counts and intervals far below 2^53
pub(super) fn flush_histogram(
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
    // Rank statistics use the kept samples' weight: the count, summed in
    // arrival order as the Agent does, unless the budget left some out.
    let kept = if h.partial {
        h.ones.len() as f64 + h.weighted.iter().map(|w| w.1).sum::<f64>()
    } else {
        h.count
    };
    let wants_sum = prepared
        .aggregates
        .iter()
        .any(|a| matches!(a, HistogramAggregate::Sum | HistogramAggregate::Avg));
    // Integers whose magnitudes sum below 2^53 add exactly in any order, so
    // their compensated sum is their plain sum (see `Histogram::add`).
    let exact = !h.weights_vary && h.ints && h.abs < EXACT_INTS;
    if h.weighted.is_empty() && (exact || !wants_sum) {
        // Unit weights, the common case: each statistic reads one index, so
        // only those indices need their sorted values.
        let targets = prepared
            .aggregates
            .iter()
            .filter(|a| matches!(a, HistogramAggregate::Median))
            .map(|_| median_target(kept))
            .chain(
                prepared
                    .percentiles
                    .iter()
                    .map(|(p, _)| percentile_target(*p, kept)),
            );
        place_ranks(&mut h.ones, targets);
    } else {
        h.ones.sort_unstable_by(f64::total_cmp);
        h.weighted.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    }
    let sum = if !wants_sum {
        0.0
    } else if exact {
        h.plain * h.shared
    } else {
        // Samples past the budget are not held, so they cannot be sorted:
        // their running sum is added to the kept ones' (docs/DESIGN.md).
        let kept_sum = sample_sum(&h.ones, &h.weighted, h.weights_vary, h.shared);
        if h.partial {
            kept_sum + h.unkept
        } else {
            kept_sum
        }
    };
    let unit = h.timer.then_some("millisecond");
    for agg in &prepared.aggregates {
        let (value, kind, unit, series_interval) = match agg {
            HistogramAggregate::Max => (h.max, SeriesKind::Gauge, unit, None),
            HistogramAggregate::Min => (h.min, SeriesKind::Gauge, unit, None),
            HistogramAggregate::Median => {
                let Some(v) = at_rank(&h.ones, &h.weighted, median_target(kept)) else {
                    continue;
                };
                (v, SeriesKind::Gauge, unit, None)
            }
            HistogramAggregate::Avg => (sum / h.count, SeriesKind::Gauge, unit, None),
            HistogramAggregate::Sum => (sum, SeriesKind::Gauge, unit, None),
            // `.count` is a RATE over the interval, dimensionless, as in the Agent.
            HistogramAggregate::Count => (
                h.count / interval as f64,
                SeriesKind::Rate,
                None,
                Some(interval),
            ),
        };
        let name = joined(ctx.name, ".", agg.suffix());
        if prepared.histogram_filter.blocks(&name) {
            continue;
        }
        out.series
            .push(ctx.series(name, kind, vec![(ts, value)], series_interval, unit));
    }
    for (p, suffix) in &prepared.percentiles {
        let target = percentile_target(*p, kept);
        let Some(v) = at_rank(&h.ones, &h.weighted, target) else {
            continue;
        };
        let name = joined(ctx.name, "", suffix);
        if prepared.histogram_filter.blocks(&name) {
            continue;
        }
        out.series
            .push(ctx.series(name, SeriesKind::Gauge, vec![(ts, v)], None, unit));
    }
}

/// `Σ value*weight` over two sorted sample lists, as the Agent's
/// `Histogram.sampleSum` (pkg/metrics/histogram.go, datadog-agent#49913)
/// computes it over its sorted samples:
/// - no weight differs from `shared`: the values alone, negatives from the
///   most negative up and the rest from the largest down, each half with
///   Fast2Sum steps (exact there: the running magnitude never falls below
///   the next term's), the halves merged with one Neumaier step and all
///   three compensations, then scaled once by `shared`;
/// - weights vary: Neumaier steps over `value*weight` in ascending order.
///
/// `{1, 1e100, 1, -1e100}` sums to 2 (a running sum gives 0). Where values
/// tie, the Agent's unstable sort may order their weights otherwise, which
/// can move the varying-weights sum in its last bits.
pub(super) fn sample_sum(
    ones: &[f64],
    weighted: &[(f64, f64)],
    weights_vary: bool,
    shared: f64,
) -> f64 {
    if weights_vary {
        let (mut s, mut c) = (0.0, 0.0);
        for (v, w) in Merged::new(ones, weighted) {
            (s, c) = neumaier_add(s, c, v * w);
        }
        return s + c;
    }
    let na = ones.partition_point(|v| *v < 0.0);
    let nb = weighted.partition_point(|p| p.0 < 0.0);
    let (neg_a, pos_a) = ones.split_at(na);
    let (neg_b, pos_b) = weighted.split_at(nb);
    let (s_neg, c_neg) = fast_two_sum(Merged::new(neg_a, neg_b).map(|(v, _)| v));
    let (s_pos, c_pos) = fast_two_sum(Merged::new(pos_a, pos_b).rev().map(|(v, _)| v));
    let (s, c) = neumaier_add(s_neg, 0.0, s_pos);
    (s + (c + c_neg + c_pos)) * shared
}

/// Fast2Sum steps over `xs`, whose running sum's magnitude never falls
/// below the next term's (one sign, largest magnitude first): the rounded
/// sum and the compensation that collects each step's exact error.
#[inline]
fn fast_two_sum(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in xs {
        let t = s + x;
        c += (s - t) + x;
        s = t;
    }
    (s, c)
}

/// One step of Neumaier's compensated summation: the new running sum and
/// compensation after adding `x` to `(s, c)`.
#[inline]
pub(super) fn neumaier_add(s: f64, c: f64, x: f64) -> (f64, f64) {
    let t = s + x;
    let c = if s.abs() >= x.abs() {
        c + ((s - t) + x)
    } else {
        c + ((x - t) + s)
    };
    (t, c)
}

/// The samples of two lists each sorted by value (`total_cmp`), unit
/// weights and weighted, as one ascending sequence of `(value, weight)`,
/// from either end. At equal values the unit-weight sample comes first.
#[derive(Debug, Clone)]
pub(super) struct Merged<'a> {
    ones: &'a [f64],
    weighted: &'a [(f64, f64)],
}

impl<'a> Merged<'a> {
    pub(super) fn new(ones: &'a [f64], weighted: &'a [(f64, f64)]) -> Self {
        Self { ones, weighted }
    }
}

impl Iterator for Merged<'_> {
    type Item = (f64, f64);

    #[inline]
    fn next(&mut self) -> Option<(f64, f64)> {
        let take_one = match (self.ones.first(), self.weighted.first()) {
            (Some(a), Some(b)) => a.total_cmp(&b.0).is_le(),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if take_one {
            let (&v, rest) = self.ones.split_first()?;
            self.ones = rest;
            Some((v, 1.0))
        } else {
            let (&p, rest) = self.weighted.split_first()?;
            self.weighted = rest;
            Some(p)
        }
    }
}

impl DoubleEndedIterator for Merged<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<(f64, f64)> {
        // The mirror of `next`: at equal values the weighted sample is last.
        let take_weighted = match (self.ones.last(), self.weighted.last()) {
            (Some(a), Some(b)) => a.total_cmp(&b.0).is_le(),
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (None, None) => return None,
        };
        if take_weighted {
            let (&p, rest) = self.weighted.split_last()?;
            self.weighted = rest;
            Some(p)
        } else {
            let (&v, rest) = self.ones.split_last()?;
            self.ones = rest;
            Some((v, 1.0))
        }
    }
}

/// The median's target weight over `kept` weighted samples: `(count-1)/2`.
pub(super) fn median_target(kept: f64) -> f64 {
    (kept - 1.0) / 2.0
}

/// Percentile `p`'s (0-100) target weight over `kept` weighted samples:
/// `(p*count-1)/100`.
#[allow(clippy::cast_precision_loss)] // p is at most 100
pub(super) fn percentile_target(p: u64, kept: f64) -> f64 {
    (p as f64 * kept - 1.0) / 100.0
}

/// Puts at each index that [`at_rank`] reads for `targets` (over unit
/// weights) the value a full sort would put there, by selection: a
/// quickselect per index, largest first, each over the part below the last
/// one (which holds exactly the smaller values). Linear in the samples per
/// index, where the sort the Agent does is `n log n` (the mixed load's 250
/// histograms of 10,000 samples each: 45.9 ms sorted, 11.5 ms selected,
/// `cargo bench --bench aggregate -- aggregate_flush_250`). The values
/// read are the same, bit for bit: under `total_cmp` equal values have equal
/// bits, so the value at an index of the sorted order is unique.
pub(super) fn place_ranks(ones: &mut [f64], targets: impl Iterator<Item = f64>) {
    let Some(last) = ones.len().checked_sub(1) else {
        return;
    };
    // A target past the end reads the last sample, as in `at_rank`.
    // Saturating cast: a negative target reads index 0.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let mut at: Vec<usize> = targets
        .map(|t| (t.max(0.0).floor() as usize).min(last))
        .collect();
    at.sort_unstable_by(|a, b| b.cmp(a));
    at.dedup();
    let mut end = ones.len();
    for i in at {
        if let Some(part) = ones.get_mut(..end) {
            part.select_nth_unstable_by(i, f64::total_cmp);
        }
        end = i;
    }
}

/// `a + sep + b` in one exact allocation (`format!` costs several times more
/// per histogram series at flush).
pub(super) fn joined(a: &str, sep: &str, b: &str) -> String {
    let mut s = String::with_capacity(a.len() + sep.len() + b.len());
    s.push_str(a);
    s.push_str(sep);
    s.push_str(b);
    s
}

/// The first value, in ascending order over both sorted lists, at which the
/// cumulative weight exceeds `target`. `None` when there are no samples.
pub(super) fn at_rank(ones: &[f64], weighted: &[(f64, f64)], target: f64) -> Option<f64> {
    if weighted.is_empty() {
        // Unit weights: the cumulative weight after index i is i + 1, which
        // exceeds `target` first at i = floor(target) (0 for a negative one).
        // Saturating cast: a target past the end reads the last sample.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = target.max(0.0).floor() as usize;
        return ones.get(i).or(ones.last()).copied();
    }
    let mut cum = 0f64;
    let mut last = None;
    for (v, w) in Merged::new(ones, weighted) {
        cum += w;
        if cum > target {
            return Some(v);
        }
        last = Some(v);
    }
    last
}
