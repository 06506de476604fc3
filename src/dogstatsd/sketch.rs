//! Distribution sketches: the Datadog Agent's DDSketch variant (pkg/quantile).
//!
//! In: finite values with a float weight (`1/rate`). Out: a bounded sketch
//! (at most [`BIN_LIMIT`] bins of int16 keys, at most [`MAX_COUNT`] values)
//! with the Agent's count, min, max, sum and mean, turned into the intake's
//! integer bins by [`Sketch::bins`].
//!
//! Must never: grow past [`BIN_LIMIT`] bins or [`MAX_COUNT`] values whatever
//! it is sent, or allocate without asking the caller's budget first
//! ([`Sketch::insert`]).
//!
//! # The mapping, as the Agent's `Config.key`
//!
//! Relative accuracy 1/128, so gamma = 1 + 2/128. The smallest indexable
//! value is 1e-9: `emin = floor(ln(1e-9) / ln(gamma)) = -1337` and the key
//! bias is `-emin + 1 = 1338`, so the lowest positive key is 1. For `v > 0`:
//! `key(v) = round_half_even(ln(v) / ln(gamma)) + 1338`, clamped to
//! `1..=32766`, and 32767 (the infinity key) above the largest representable
//! value. Negative values take `-key(-v)`. Zero, and every value with
//! `|v| < gamma^-1337` (about 1e-9), take key 0. Key `k > 0` stands for the
//! value `gamma^(k - 1338)`; with round-half-even, every value within a
//! factor `sqrt(gamma)` of it maps to `k`, so the relative error of a
//! quantile read at a key's value is at most `sqrt(gamma) - 1 < 1/128`.
//!
//! # Weights
//!
//! As the Agent's `quantile.Agent.Insert` and `summary.InsertN` (pkg/quantile):
//! a value of weight `w` (`1/rate`) counts `trunc(w)` in its bin and in the
//! count (`uint(n)`, `int64(n)`), adds `w * v` to the sum (the float weight),
//! and moves the mean incrementally, `avg += (v - avg) * trunc(w) / count`.
//! So 1, 2 and 3@0.3 count 5, sum 13 and average 2.4, not 13/5.33. A
//! weight below 1 counts nothing and changes nothing, as there.
//!
//! # Count limit
//!
//! A sketch holds at most [`MAX_COUNT`] values in one interval
//! ([`Sketch::has_room`]; the caller drops and counts the rest), so its wire
//! form is at most [`BIN_LIMIT`] bins plus one per 65,535 values: 70 k bins,
//! about 400 KB raw, inside one payload. The Agent has no such limit.
//!
//! # Bin limit
//!
//! Past [`BIN_LIMIT`] distinct keys, the lowest bin's weight moves into the
//! next one up, as the Agent's `trimLeft` does. On the wire a bin holds at
//! most [`MAX_BIN_COUNT`] (the Agent's uint16 bins); a larger count goes out
//! as several bins with the same key, as the Agent's `appendSafe` does.

use std::sync::LazyLock;

/// The Agent's relative accuracy.
pub const RELATIVE_ACCURACY: f64 = 1.0 / 128.0;
/// `1 + 2 * RELATIVE_ACCURACY`.
pub const GAMMA: f64 = 1.0 + 2.0 * RELATIVE_ACCURACY;
/// The smallest value that gets a key of its own (the Agent's `defaultMin`).
pub const MIN_INDEXABLE: f64 = 1e-9;
/// Distinct keys kept per sketch (the Agent's `defaultBinLimit`).
pub const BIN_LIMIT: usize = 4096;
/// The largest finite key (`2^15 - 2`); `MAX_KEY + 1` is the infinity key.
pub const MAX_KEY: i16 = i16::MAX - 1;
/// The key of values above the largest representable one.
pub const INF_KEY: i16 = i16::MAX;
/// Most a wire bin holds: the Agent's bins are uint16.
pub const MAX_BIN_COUNT: u32 = u16::MAX as u32;
/// Heap bytes one bin costs (key and count, padded).
pub const BIN_BYTES: usize = std::mem::size_of::<(i16, u64)>();
/// Most values one sketch holds in an interval (`u32::MAX`): its wire bins
/// are then at most [`BIN_LIMIT`] + 65,538.
pub const MAX_COUNT: u64 = u32::MAX as u64;

struct Mapping {
    ln_gamma: f64,
    bias: i32,
    /// `gamma^(1 - bias)`: values below it (in magnitude) take key 0.
    min: f64,
}

static MAPPING: LazyLock<Mapping> = LazyLock::new(|| {
    let ln_gamma = (2.0 * RELATIVE_ACCURACY).ln_1p();
    // A small negative number (-1337): the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let emin = (MIN_INDEXABLE.ln() / ln_gamma).floor() as i32;
    let bias = 1 - emin;
    Mapping {
        ln_gamma,
        bias,
        min: GAMMA.powi(1 - bias),
    }
});

/// The key bias (1338 with the Agent's parameters).
pub fn bias() -> i32 {
    MAPPING.bias
}

/// The Agent's key for `v` (see the module docs). `v` must be finite.
#[inline]
pub fn key(v: f64) -> i16 {
    if v < 0.0 {
        return -key(-v);
    }
    let m = &*MAPPING;
    // Also catches NaN, which never gets here (the aggregator drops it).
    if v.is_nan() || v < m.min {
        return 0;
    }
    // ln(v)/ln(gamma) is within ±32767 for every finite v: the cast is exact.
    #[allow(clippy::cast_possible_truncation)]
    let i = (v.ln() / m.ln_gamma).round_ties_even() as i32 + m.bias;
    if i > i32::from(MAX_KEY) {
        INF_KEY
    } else {
        // 1..=MAX_KEY fits an i16.
        #[allow(clippy::cast_possible_truncation)]
        let k = i.max(1) as i16;
        k
    }
}

/// The value key `k` stands for: `gamma^(k - bias)`, negated for negative
/// keys, 0 for key 0 and ±infinity for the infinity keys (the Agent's `f64`).
pub fn value_of(k: i16) -> f64 {
    match k {
        0 => 0.0,
        INF_KEY => f64::INFINITY,
        k if k == -INF_KEY => f64::NEG_INFINITY,
        k if k < 0 => -value_of(-k),
        k => GAMMA.powf(f64::from(i32::from(k) - MAPPING.bias)),
    }
}

/// One context's distribution over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Sketch {
    /// `(key, count)`, sorted by key, at most [`BIN_LIMIT`] of them.
    bins: Vec<(i16, u64)>,
    /// Values counted (each `trunc(weight)`), at most [`MAX_COUNT`].
    count: u64,
    /// Sum of `value * weight`.
    sum: f64,
    /// The Agent's incremental mean.
    avg: f64,
    min: f64,
    max: f64,
}

impl Default for Sketch {
    fn default() -> Self {
        Self::new()
    }
}

impl Sketch {
    /// An empty sketch (no allocation).
    pub const fn new() -> Self {
        Self {
            bins: Vec::new(),
            count: 0,
            sum: 0.0,
            avg: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// A sketch of `values`, each weighing 1 (tests, benches, tools).
    pub fn of(values: &[f64]) -> Self {
        let mut s = Self::new();
        for &v in values.iter().filter(|v| v.is_finite()) {
            s.insert(v, 1.0, |_| true);
        }
        s
    }

    /// Whether a value of weight `w` fits under [`MAX_COUNT`].
    #[inline]
    pub fn has_room(&self, w: f64) -> bool {
        // `w` is at most `protocol::MAX_WEIGHT`: the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = w as u64;
        n <= MAX_COUNT - self.count
    }

    /// Adds `v` (finite) with weight `w` (>= 0, and [`Sketch::has_room`]
    /// for it, else it counts up to [`MAX_COUNT`] only). When a new bin
    /// needs more heap, `grow(bytes)` is asked first; if it says no, nothing
    /// is added and this returns `false`. A value whose bin exists never
    /// allocates. A weight below 1 adds nothing (the Agent's `uint(n)` = 0).
    #[inline]
    pub fn insert(&mut self, v: f64, w: f64, grow: impl FnOnce(usize) -> bool) -> bool {
        // Truncated, as the Agent's uint(n); saturating for any float.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = (w as u64).min(MAX_COUNT - self.count);
        if n == 0 {
            return true;
        }
        let k = key(v);
        match self.bins.binary_search_by_key(&k, |b| b.0) {
            Ok(i) => self.bins[i].1 += n,
            Err(i) => {
                if self.bins.len() == self.bins.capacity() {
                    let cap = self.bins.capacity();
                    let want = (cap * 2).clamp(4, BIN_LIMIT + 1);
                    if !grow((want - cap) * BIN_BYTES) {
                        return false;
                    }
                    self.bins.reserve_exact(want - cap);
                }
                self.bins.insert(i, (k, n));
                if self.bins.len() > BIN_LIMIT {
                    // The Agent's trimLeft: the lowest bin's weight moves up.
                    let (_, low) = self.bins.remove(0);
                    self.bins[0].1 += low;
                }
            }
        }
        self.count += n;
        self.sum += v * w;
        // The Agent's summary Merge: the first value sets the mean.
        #[allow(clippy::cast_precision_loss)] // counts below 2^32
        if self.count == n {
            self.avg = v;
        } else {
            self.avg += (v - self.avg) * n as f64 / self.count as f64;
        }
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        true
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }

    /// Heap bytes held by the bins.
    pub fn heap_bytes(&self) -> usize {
        self.bins.capacity() * BIN_BYTES
    }

    /// Distinct keys held.
    pub fn bin_count(&self) -> usize {
        self.bins.len()
    }

    /// The count (each value's truncated weight, summed), as a float.
    #[allow(clippy::cast_precision_loss)] // at most 2^32
    pub fn count(&self) -> f64 {
        self.count as f64
    }

    /// The count as the intake takes it (at most [`MAX_COUNT`]).
    #[allow(clippy::cast_possible_wrap)] // at most 2^32
    pub fn count_rounded(&self) -> i64 {
        self.count as i64
    }

    /// Sum of `value * weight`.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The Agent's incremental mean (see the module docs); 0 when empty.
    pub fn avg(&self) -> f64 {
        self.avg
    }

    /// Smallest value inserted (0 when empty).
    pub fn min(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            self.min
        }
    }

    /// Largest value inserted (0 when empty).
    pub fn max(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            self.max
        }
    }

    /// The bins as the intake takes them: `(key, count)` in key order (they
    /// add up to [`Sketch::count_rounded`]), and counts above
    /// [`MAX_BIN_COUNT`] spread over several bins of the same key (the
    /// remainder first, then full bins, as the Agent does): at most
    /// [`BIN_LIMIT`] + 65,538 of them, by [`MAX_COUNT`].
    pub fn bins(&self) -> impl Iterator<Item = (i16, u32)> + '_ {
        self.bins.iter().flat_map(move |&(k, n)| {
            let full = n / u64::from(MAX_BIN_COUNT);
            // Both below 2^32 by construction.
            #[allow(clippy::cast_possible_truncation)]
            let rem = (n % u64::from(MAX_BIN_COUNT)) as u32;
            let full = usize::try_from(full).unwrap_or(usize::MAX);
            (rem > 0)
                .then_some((k, rem))
                .into_iter()
                .chain(std::iter::repeat_n((k, MAX_BIN_COUNT), full))
        })
    }

    /// The value at quantile `q` in [0, 1], as read from the bins: the value
    /// of the first key whose cumulative weight exceeds rank
    /// `round_half_even(q * (count - 1))`, clamped to [min, max]. `None` when
    /// empty. Quantiles 0 and 1 are the exact min and max.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.is_empty() {
            return None;
        }
        if q <= 0.0 {
            return Some(self.min);
        }
        if q >= 1.0 {
            return Some(self.max);
        }
        #[allow(clippy::cast_precision_loss)] // at most 2^32
        let rank = (q * (self.count as f64 - 1.0)).round_ties_even();
        let mut cum = 0.0;
        for &(k, n) in &self.bins {
            #[allow(clippy::cast_precision_loss)] // at most 2^32
            let n = n as f64;
            cum += n;
            if cum > rank {
                return Some(value_of(k).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn always(_: usize) -> bool {
        true
    }

    fn sketch_of(values: impl IntoIterator<Item = f64>) -> (Sketch, Vec<f64>) {
        let mut s = Sketch::new();
        let mut all = Vec::new();
        for v in values {
            assert!(s.insert(v, 1.0, always));
            all.push(v);
        }
        all.sort_by(f64::total_cmp);
        (s, all)
    }

    /// The exact quantile with the same rank rule.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let r = (q * (sorted.len() as f64 - 1.0)).round_ties_even() as usize;
        sorted[r]
    }

    fn check_accuracy(name: &str, values: Vec<f64>) {
        let (s, sorted) = sketch_of(values);
        for q in [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999] {
            let want = exact(&sorted, q);
            let got = s.quantile(q).expect("non-empty");
            let err = if want == 0.0 {
                got.abs()
            } else {
                ((got - want) / want).abs()
            };
            assert!(
                err <= RELATIVE_ACCURACY,
                "{name}: q{q}: got {got}, want {want}, relative error {err}"
            );
        }
    }

    #[test]
    fn the_mapping_constants_are_the_agents() {
        assert_eq!(bias(), 1338);
        assert!((GAMMA - 1.015625).abs() < f64::EPSILON);
        // gamma^-1337 is just below 1e-9: the Agent's sanity check.
        assert!(MAPPING.min <= MIN_INDEXABLE && MAPPING.min > MIN_INDEXABLE / GAMMA);
    }

    #[test]
    fn keys_match_the_agents_formula_for_hand_computed_values() {
        // ln(1)/ln(γ) = 0 → 0 + 1338.
        assert_eq!(key(1.0), 1338);
        // γ^k maps to exactly k + 1338.
        assert_eq!(key(GAMMA), 1339);
        assert_eq!(key(GAMMA.powi(10)), 1348);
        // ln(2)/ln(1.015625) = 0.693147/0.0155042 = 44.707 → 45.
        assert_eq!(key(2.0), 1338 + 45);
        // ln(10)/ln(γ) = 148.514 → 149; ln(1000)/ln(γ) = 445.54 → 446.
        assert_eq!(key(10.0), 1338 + 149);
        assert_eq!(key(1000.0), 1338 + 446);
        // ln(0.5)/ln(γ) = -44.707 → -45.
        assert_eq!(key(0.5), 1338 - 45);
        // Negative values mirror; zero and tiny values take 0.
        assert_eq!(key(-2.0), -(1338 + 45));
        assert_eq!(key(0.0), 0);
        assert_eq!(key(-0.0), 0);
        assert_eq!(key(1e-10), 0);
        assert_eq!(key(-1e-10), 0);
        // The smallest indexable value has key 1.
        assert_eq!(key(1e-9), 1);
        // Far above γ^(32766-1338) ≈ 1e211: the infinity key.
        assert_eq!(key(1e250), INF_KEY);
        assert_eq!(key(-1e250), -INF_KEY);
        assert_eq!(key(f64::MAX), INF_KEY);
        // key(value_of(k)) == k, the reason for round-half-even.
        for k in [1i16, 2, 500, 1338, 1339, 5000, 20_000, MAX_KEY] {
            assert_eq!(key(value_of(k)), k, "key {k}");
            assert_eq!(key(-value_of(k)), -k, "key -{k}");
        }
    }

    #[test]
    fn quantiles_are_within_the_relative_accuracy() {
        // Uniform 1..=10000.
        check_accuracy("uniform", (1..=10_000).map(f64::from).collect());
        // Exponential-ish spread over six decades (deterministic LCG).
        let mut x: u64 = 42;
        let mut next = move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            #[allow(clippy::cast_precision_loss)]
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            u
        };
        let lognormal: Vec<f64> = (0..50_000)
            .map(|_| (next() * 14.0 - 7.0).exp() * 1000.0)
            .collect();
        check_accuracy("log-spread", lognormal);
        let exp: Vec<f64> = (0..50_000).map(|_| -(1.0 - next()).ln() * 250.0).collect();
        check_accuracy("exponential", exp);
        // Mixed signs, and zero.
        let mixed: Vec<f64> = (-5_000..=5_000).map(|i| f64::from(i) * 0.37).collect();
        check_accuracy("mixed signs", mixed);
        // A constant.
        check_accuracy("constant", vec![42.5; 1_000]);
    }

    #[test]
    fn counts_truncate_per_value_and_the_mean_is_the_agents() {
        // The Agent (pkg/quantile agent.go Insert, summary.go InsertN and
        // Merge): 1 and 2 unsampled, then 3 at @0.3 (weight 3.33, counted 3).
        let mut s = Sketch::new();
        assert!(s.insert(1.0, 1.0, always));
        assert!(s.insert(2.0, 1.0, always));
        assert!(s.insert(3.0, 1.0 / 0.3, always));
        assert_eq!(s.count_rounded(), 5);
        // The sum keeps the float weight: 1 + 2 + 3 * 3.33.
        assert!((s.sum() - 13.0).abs() < 1e-9);
        // 1.5 + (3 - 1.5) * 3 / 5, not 13 / 5.33 = 2.4375.
        assert!((s.avg() - 2.4).abs() < 1e-12, "{}", s.avg());
        assert_eq!((s.min(), s.max()), (1.0, 3.0));
        let bins: Vec<(i16, u32)> = s.bins().collect();
        assert_eq!(bins, vec![(key(1.0), 1), (key(2.0), 1), (key(3.0), 3)]);
        // A weight below 1 counts nothing (uint(0.5) = 0).
        assert!(s.insert(9.0, 0.5, always));
        assert_eq!((s.count_rounded(), s.max()), (5, 3.0));
    }

    #[test]
    fn the_count_stops_at_its_limit_and_the_wire_bins_stay_bounded() {
        let mut s = Sketch::new();
        let mut n = 0u64;
        while s.has_room(1e6) {
            assert!(s.insert(7.0, 1e6, always));
            n += 1;
        }
        assert_eq!(n, MAX_COUNT / 1_000_000);
        assert!(!s.has_room(1e6));
        // An insert past the room counts only up to the limit.
        assert!(s.insert(8.0, 1e6, always));
        assert_eq!(s.count_rounded(), i64::try_from(MAX_COUNT).unwrap());
        assert!(s.bins().count() <= BIN_LIMIT + 65_538);
        assert_eq!(s.bins().map(|b| u64::from(b.1)).sum::<u64>(), MAX_COUNT);
    }

    #[test]
    fn big_counts_split_like_the_agents_uint16_bins() {
        let mut s = Sketch::new();
        for _ in 0..150_000 {
            s.insert(7.0, 1.0, always);
        }
        let bins: Vec<(i16, u32)> = s.bins().collect();
        let k = key(7.0);
        assert_eq!(
            bins,
            vec![(k, 150_000 - 2 * 65_535), (k, 65_535), (k, 65_535)]
        );
    }

    #[test]
    fn the_bin_limit_holds_and_the_lowest_bins_merge_upward() {
        let mut s = Sketch::new();
        // 6000 distinct keys: 1.0 * γ^i.
        for i in 0..6_000 {
            s.insert(GAMMA.powi(i) * 1e-6, 1.0, always);
        }
        assert_eq!(s.bin_count(), BIN_LIMIT);
        assert!(s.heap_bytes() <= (BIN_LIMIT + 1) * BIN_BYTES);
        assert_eq!(s.count_rounded(), 6_000);
        let bins: Vec<(i16, u32)> = s.bins().collect();
        assert_eq!(bins.iter().map(|b| u64::from(b.1)).sum::<u64>(), 6_000);
        // The lowest kept bin holds the 1905 merged ones plus its own.
        assert_eq!(bins[0].1, 6_000 - 4_095);
        assert_eq!(s.min(), 1e-6);
    }

    #[test]
    fn growth_asks_the_budget_and_a_refusal_adds_nothing() {
        let mut s = Sketch::new();
        assert!(!s.insert(1.0, 1.0, |_| false));
        assert!(s.is_empty());
        assert_eq!(s.count(), 0.0);
        let mut asked = Vec::new();
        assert!(s.insert(1.0, 1.0, |b| {
            asked.push(b);
            true
        }));
        assert_eq!(asked, vec![4 * BIN_BYTES]);
        // An existing bin never asks.
        assert!(s.insert(1.0, 1.0, |_| false));
        assert_eq!(s.count(), 2.0);
    }
}
