//! The local trace summary: with no API key (`dynostat start`, `run`), each
//! stats flush prints, per service and resource of the top-level spans
//! received (kept or sampled out), the count, the errors and p50/p95
//! latency, so a developer sees their traces without a Datadog account.
//!
//! ```text
//! TRACES          RESOURCE          COUNT  ERRORS     P50     P95
//! web             GET /users            12       1   3.1ms  12.0ms
//! ```
//!
//! Must never: keep more than [`MAX_ROWS`] rows or [`MAX_SAMPLES`]
//! durations a row (a reservoir past that).

use std::collections::HashMap;
use std::fmt::Write as _;

use libdd_trace_protobuf::pb;

/// Rows (service, resource) per flush; spans of further rows are counted in
/// one `(other)` row.
pub const MAX_ROWS: usize = 200;
/// Durations kept per row for the percentiles.
pub const MAX_SAMPLES: usize = 1_024;

#[derive(Debug, Default)]
struct Row {
    count: u64,
    errors: u64,
    durations: Vec<i64>,
}

/// What arrived since the last print.
#[derive(Debug, Default)]
pub struct Summary {
    rows: HashMap<(String, String), Row>,
}

impl Summary {
    /// Counts the top-level spans of one chunk.
    pub fn add(&mut self, spans: &[pb::Span]) {
        for s in spans {
            if !libdd_trace_utils::trace_utils::has_top_level(s) {
                continue;
            }
            let mut key = (s.service.clone(), s.resource.clone());
            if !self.rows.contains_key(&key) && self.rows.len() >= MAX_ROWS {
                key = ("(other)".to_owned(), String::new());
            }
            let row = self.rows.entry(key).or_default();
            row.count += 1;
            row.errors += u64::from(s.error != 0);
            if row.durations.len() < MAX_SAMPLES {
                row.durations.push(s.duration);
            } else {
                // Reservoir sampling keeps the percentiles fair past the cap.
                let i = fastrand::u64(0..row.count);
                if let Ok(i) = usize::try_from(i) {
                    if i < MAX_SAMPLES {
                        row.durations[i] = s.duration;
                    }
                }
            }
        }
    }

    /// The table of what arrived since the last call, or `None` if nothing did.
    pub fn render(&mut self) -> Option<String> {
        if self.rows.is_empty() {
            return None;
        }
        let mut rows: Vec<((String, String), Row)> = self.rows.drain().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let sw = rows
            .iter()
            .map(|r| r.0 .0.len())
            .max()
            .unwrap_or(0)
            .clamp(6, 40);
        let rw = rows
            .iter()
            .map(|r| r.0 .1.len())
            .max()
            .unwrap_or(0)
            .clamp(8, 60);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<sw$}  {:<rw$}  {:>6}  {:>6}  {:>8}  {:>8}",
            "TRACES", "RESOURCE", "COUNT", "ERRORS", "P50", "P95"
        );
        for ((service, resource), mut row) in rows {
            row.durations.sort_unstable();
            let _ = writeln!(
                out,
                "{:<sw$}  {:<rw$}  {:>6}  {:>6}  {:>8}  {:>8}",
                service,
                crate::config::escape_truncate(&resource, 60),
                row.count,
                row.errors,
                human(rank(&row.durations, 0.50)),
                human(rank(&row.durations, 0.95)),
            );
        }
        Some(out)
    }
}

/// Nearest-rank percentile of sorted values.
fn rank(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Nanoseconds as µs, ms or s.
fn human(ns: i64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let ns = ns as f64;
    if ns < 1e6 {
        format!("{:.0}µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_count_errors_and_percentiles() {
        let mut s = Summary::default();
        let spans: Vec<pb::Span> = (1..=20)
            .map(|i| pb::Span {
                service: "web".to_owned(),
                resource: "GET /users".to_owned(),
                duration: i * 1_000_000,
                error: i32::from(i == 20),
                metrics: HashMap::from([("_top_level".to_owned(), 1.0)]),
                ..Default::default()
            })
            .collect();
        s.add(&spans);
        let text = s.render().expect("rows");
        let row = text.lines().nth(1).expect("a row");
        assert!(row.starts_with("web"), "{text}");
        assert!(row.contains("GET /users"), "{text}");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cells[cells.len() - 4..],
            ["20", "1", "10.0ms", "19.0ms"],
            "{text}"
        );
        assert!(s.render().is_none(), "printed once");
    }
}
