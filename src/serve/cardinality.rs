//! The cardinality guard's log: one line per metric name per hour, when a
//! name passed `DYNOSTAT_CARDINALITY_WARN` contexts in an interval (see
//! [`crate::dogstatsd::aggregate::WideName`]). On the console as well.
//!
//! Must never: log a name more than once an hour, or remember more names
//! than were logged in the last hour.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::dogstatsd::aggregate::WideName;

/// A name is logged again at most this often.
const EVERY: Duration = Duration::from_secs(3600);

/// When each name was last logged.
#[derive(Debug)]
pub(super) struct CardinalityLog {
    threshold: usize,
    console: bool,
    logged: HashMap<String, Instant>,
}

impl CardinalityLog {
    pub(super) fn new(threshold: usize, console: bool) -> Self {
        Self {
            threshold,
            console,
            logged: HashMap::new(),
        }
    }

    /// Logs each name not logged in the last hour.
    pub(super) fn report(&mut self, wide: Vec<WideName>, now: Instant) {
        if wide.is_empty() {
            return;
        }
        self.logged
            .retain(|_, at| now.saturating_duration_since(*at) < EVERY);
        for w in wide {
            if self.logged.contains_key(&w.name) {
                continue;
            }
            let (tag_key, tag_values) = w.top_tag.clone().unwrap_or_default();
            tracing::warn!(
                metric = %w.name,
                contexts = w.contexts,
                tag_key = %tag_key,
                tag_values,
                threshold = self.threshold,
                "one metric name passed the cardinality threshold in one interval: each context is a \
                 custom metric on the Datadog bill; the tag with the most values is the likely cause \
                 (logged once an hour per name; DYNOSTAT_CARDINALITY_WARN sets the threshold, 0 turns it off)"
            );
            if self.console {
                let tag = if tag_key.is_empty() {
                    String::new()
                } else {
                    format!(", {tag_key}: {tag_values} values")
                };
                crate::forward::console::print(&format!(
                    "dynostat: {} has {} contexts in one interval{tag} (each one a custom metric)\n",
                    w.name, w.contexts
                ));
            }
            self.logged.insert(w.name, now);
        }
    }
}
