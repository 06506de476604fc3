//! The cardinality guard: which metric names passed a number of contexts in
//! one interval, and which of their tag keys did it.
//!
//! Every context is a custom metric on the user's Datadog bill, so a tag
//! that takes a new value per user or per request multiplies the bill
//! before the invoice shows it. No Agent warns about it; dynostat names the
//! metric, its contexts and the tag key with the most distinct values.
//!
//! In: the final name of each *new* context, from the aggregator's cold
//! path. Out: at the flush, the names past the threshold, with their tag
//! key. Must never: run on the hot path (a sample of a known spelling never
//! reaches it), or hold more than [`TRACKED_NAMES`] names per interval.

use rustc_hash::{FxHashMap, FxHashSet};

use super::context::ContextKey;
use super::state::Keys;

/// Distinct names counted per interval, at most. Past it new names are not
/// counted (a flood of distinct names is not one name's cardinality), so
/// the map stays under about 100 KiB whatever is sent.
pub(super) const TRACKED_NAMES: usize = 4096;

/// Contexts per name in one interval.
#[derive(Debug, Default)]
pub(super) struct NameCounts {
    /// Name hash → contexts created this interval.
    counts: FxHashMap<u64, u32>,
    /// Hashes of the names that reached the threshold, once each.
    wide: Vec<u64>,
}

fn name_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

impl NameCounts {
    /// Counts one new context of `name`; `threshold` is at least 1.
    #[cold]
    #[inline(never)]
    pub(super) fn count(&mut self, name: &str, threshold: usize) {
        let h = name_hash(name);
        let n = if let Some(n) = self.counts.get_mut(&h) {
            *n = n.saturating_add(1);
            *n
        } else if self.counts.len() < TRACKED_NAMES {
            self.counts.insert(h, 1);
            1
        } else {
            return;
        };
        if n as usize == threshold {
            self.wide.push(h);
        }
    }

    /// The names past the threshold this interval, read from the
    /// interval's canonical keys in one pass (only when there is one: a
    /// flush without such a name costs nothing).
    pub(super) fn wide_names(&self, keys: &Keys) -> Vec<WideName> {
        if self.wide.is_empty() {
            return Vec::new();
        }
        /// One wide name's contexts, and each tag key's distinct values.
        #[derive(Default)]
        struct Seen<'k> {
            name: &'k str,
            contexts: usize,
            values: FxHashMap<&'k str, FxHashSet<&'k str>>,
        }
        let mut seen: FxHashMap<u64, Seen<'_>> =
            self.wide.iter().map(|&h| (h, Seen::default())).collect();
        for id in 0..keys.len() {
            let Some(key) = keys.get(id).and_then(ContextKey::parse) else {
                continue;
            };
            let Some(s) = seen.get_mut(&name_hash(key.name)) else {
                continue;
            };
            s.name = key.name;
            s.contexts += 1;
            for tag in key.tags.split(',').filter(|t| !t.is_empty()) {
                let (k, v) = tag.split_once(':').unwrap_or((tag, ""));
                s.values.entry(k).or_default().insert(v);
            }
        }
        let mut out: Vec<WideName> = seen
            .into_values()
            .filter(|s| s.contexts > 0)
            .map(|s| WideName {
                name: s.name.to_owned(),
                contexts: s.contexts,
                top_tag: s
                    .values
                    .iter()
                    .map(|(k, v)| (v.len(), *k))
                    .max()
                    .map(|(n, k)| (k.to_owned(), n)),
            })
            .collect();
        out.sort_by(|a, b| {
            b.contexts
                .cmp(&a.contexts)
                .then_with(|| a.name.cmp(&b.name))
        });
        out
    }
}

/// A metric name that passed the threshold of contexts in one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WideName {
    /// The metric's name, as sent to Datadog.
    pub name: String,
    /// Its contexts in the interval.
    pub contexts: usize,
    /// The tag key with the most distinct values, and their number.
    pub top_tag: Option<(String, usize)>,
}

#[cfg(test)]
mod tests {
    use crate::dogstatsd::aggregate::{Aggregator, AggregatorOptions, WideName};
    use crate::dogstatsd::protocol::{parse_str, Parsed};

    fn insert(agg: &mut Aggregator, line: &str) {
        let Ok(Parsed::Metric(m)) = parse_str(line) else {
            panic!("not a metric line: {line}");
        };
        agg.insert(&m, 1_700_000_000);
    }

    /// Only new contexts count: repeats and other spellings of a context do
    /// not; the name that reaches the threshold is reported with its widest
    /// tag key; a name below it is not.
    #[test]
    fn a_name_past_the_threshold_is_reported_with_its_widest_tag_key() {
        let mut agg = Aggregator::new(AggregatorOptions {
            cardinality_warn: 4,
            ..AggregatorOptions::default()
        });
        for i in 0..6 {
            insert(
                &mut agg,
                &format!("wide:1|c|#env:prod,user:{i},region:{}", i % 2),
            );
            insert(
                &mut agg,
                &format!("wide:1|c|#user:{i},region:{},env:prod", i % 2),
            );
        }
        for _ in 0..10 {
            insert(&mut agg, "narrow:1|c|#user:1");
        }
        for i in 0..3 {
            insert(&mut agg, &format!("below:1|g|#user:{i}"));
        }
        let bucket = agg.take();
        assert_eq!(
            bucket.wide_names(),
            [WideName {
                name: "wide".to_owned(),
                contexts: 6,
                top_tag: Some(("user".to_owned(), 6)),
            }]
        );
        // A new interval starts counting again.
        let mut agg2 = agg;
        insert(&mut agg2, "wide:1|c|#user:99");
        assert!(agg2.take().wide_names().is_empty());
    }

    /// Off: nothing is counted.
    #[test]
    fn zero_turns_the_guard_off() {
        let mut agg = Aggregator::new(AggregatorOptions {
            cardinality_warn: 0,
            ..AggregatorOptions::default()
        });
        for i in 0..50 {
            insert(&mut agg, &format!("wide:1|c|#user:{i}"));
        }
        assert!(agg.take().wide_names().is_empty());
    }
}
