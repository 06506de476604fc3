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
    /// interval's canonical keys (only when there is one: a flush without
    /// such a name costs nothing).
    pub(super) fn wide_names(&self, keys: &Keys) -> Vec<WideName> {
        if self.wide.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<WideName> = Vec::new();
        for &h in &self.wide {
            let mut name = None;
            let mut contexts = 0usize;
            // tag key → its distinct values
            let mut values: FxHashMap<&str, FxHashSet<&str>> = FxHashMap::default();
            for id in 0..keys.len() {
                let Some(key) = keys.get(id).and_then(ContextKey::parse) else {
                    continue;
                };
                if name_hash(key.name) != h {
                    continue;
                }
                name.get_or_insert(key.name);
                contexts += 1;
                for tag in key.tags.split(',').filter(|t| !t.is_empty()) {
                    let (k, v) = tag.split_once(':').unwrap_or((tag, ""));
                    values.entry(k).or_default().insert(v);
                }
            }
            let Some(name) = name else { continue };
            let top_tag = values
                .iter()
                .map(|(k, v)| (v.len(), *k))
                .max()
                .map(|(n, k)| (k.to_owned(), n));
            out.push(WideName {
                name: name.to_owned(),
                contexts,
                top_tag,
            });
        }
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
