//! Console output: a flush as a compact, stable table for humans.
//!
//! In: a [`Flush`] and the same global tags and host the intake would get.
//! Out: text, one line per series point, distribution (count, avg, p50,
//! p95 and max, read from its sketch), event and
//! service check, sorted by name then tags so the same input always prints
//! the same way:
//!
//! ```text
//! dynostat flush: 2 series, 1 event
//! METRIC      TYPE   TAGS     VALUE
//! page.views  rate   env:dev  0.3
//! …
//! ```
//!
//! Must never: panic on a closed stdout (write errors are ignored), or print
//! anything secret (there is nothing secret in a flush).

use std::fmt::Write as _;

use super::payload::{alert_type_name, Decoration, TagList};
use crate::dogstatsd::aggregate::{Flush, SeriesKind};
use crate::dogstatsd::protocol::CheckStatus;

/// Longest name or tag column, past which a cell simply overflows its column.
const MAX_WIDTH: usize = 60;

struct Row {
    name: String,
    kind: &'static str,
    tags: String,
    value: String,
}

fn tags_cell(own: &[String], deco: &Decoration, host: Option<&String>) -> String {
    let mut out = TagList::new(own, &deco.global_tags)
        .iter()
        .collect::<Vec<_>>()
        .join(",");
    if let Some(h) = host.or(deco.hostname.as_ref()).filter(|h| !h.is_empty()) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str("host:");
        out.push_str(h);
    }
    out
}

fn kind_name(kind: SeriesKind) -> &'static str {
    match kind {
        SeriesKind::Count => "count",
        SeriesKind::Rate => "rate",
        SeriesKind::Gauge => "gauge",
    }
}

fn status_name(s: CheckStatus) -> &'static str {
    match s {
        CheckStatus::Ok => "OK",
        CheckStatus::Warning => "WARNING",
        CheckStatus::Critical => "CRITICAL",
        CheckStatus::Unknown => "UNKNOWN",
    }
}

/// Newlines and other control characters would break the table: escape them.
fn one_line(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

/// A number with at most 4 significant decimals, without trailing zeros.
fn short(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Renders a flush as a table. Empty flushes render as one line.
pub fn render(flush: &Flush, deco: &Decoration) -> String {
    let mut parts = Vec::new();
    for (n, one, many) in [
        (flush.series.len(), "series", "series"),
        (flush.distributions.len(), "distribution", "distributions"),
        (flush.events.len(), "event", "events"),
        (
            flush.service_checks.len(),
            "service check",
            "service checks",
        ),
    ] {
        if n > 0 {
            parts.push(plural(n, one, many));
        }
    }
    if parts.is_empty() {
        return "dynostat flush: nothing received\n".to_owned();
    }

    let mut metric_rows = Vec::new();
    for s in &flush.series {
        let tags = tags_cell(&s.tags, deco, s.host.as_ref());
        for &(_, v) in &s.points {
            metric_rows.push(Row {
                name: s.metric.clone(),
                kind: kind_name(s.kind),
                tags: tags.clone(),
                value: format!("{v}"),
            });
        }
    }
    for d in &flush.distributions {
        let tags = tags_cell(&d.tags, deco, d.host.as_ref());
        let s = &d.sketch;
        // What Datadog shows for a distribution, read from the sketch (the
        // percentiles within 1/128 of the true value).
        let pct = |q: f64| s.quantile(q).map(short).unwrap_or_default();
        metric_rows.push(Row {
            name: d.metric.clone(),
            kind: "distribution",
            tags,
            value: format!(
                "count={} avg={} p50={} p95={} max={}",
                short(s.count()),
                short(s.avg()),
                pct(0.5),
                pct(0.95),
                short(s.max()),
            ),
        });
    }
    // Sort by name, then tags, then kind; the value keeps the input order of
    // points within one series (a stable sort).
    metric_rows.sort_by(|a, b| (&a.name, &a.tags, a.kind).cmp(&(&b.name, &b.tags, b.kind)));

    let mut other_rows = Vec::new();
    for e in &flush.events {
        let text = one_line(&e.text);
        other_rows.push(Row {
            name: one_line(&e.title),
            kind: "event",
            tags: tags_cell(&e.tags, deco, e.host.as_ref()),
            value: format!("{}: {text}", alert_type_name(e.alert_type)),
        });
    }
    for c in &flush.service_checks {
        let mut value = status_name(c.status).to_owned();
        if let Some(m) = c.message.as_deref().filter(|m| !m.is_empty()) {
            let _ = write!(value, ": {}", one_line(m));
        }
        other_rows.push(Row {
            name: c.name.clone(),
            kind: "service_check",
            tags: tags_cell(&c.tags, deco, c.host.as_ref()),
            value,
        });
    }
    other_rows.sort_by(|a, b| (a.kind, &a.name, &a.tags).cmp(&(b.kind, &b.name, &b.tags)));

    let rows: Vec<&Row> = metric_rows.iter().chain(other_rows.iter()).collect();
    let width = |f: fn(&Row) -> usize, header: &str| {
        rows.iter()
            .map(|r| f(r))
            .chain([header.len()])
            .max()
            .unwrap_or(0)
            .min(MAX_WIDTH)
    };
    let w_name = width(|r| r.name.chars().count(), "METRIC");
    let w_kind = width(|r| r.kind.len(), "TYPE");
    let w_tags = width(|r| r.tags.chars().count(), "TAGS");

    let mut out = format!("dynostat flush: {}\n", parts.join(", "));
    let mut line = |name: &str, kind: &str, tags: &str, value: &str| {
        let _ = writeln!(
            out,
            "{name:<w_name$}  {kind:<w_kind$}  {tags:<w_tags$}  {value}"
        );
    };
    line("METRIC", "TYPE", "TAGS", "VALUE");
    for r in rows {
        line(&r.name, r.kind, &r.tags, &r.value);
    }
    // Trailing spaces would appear when a row has no value; there always is one.
    out
}

/// Writes a rendered table to stdout and flushes it. Errors (a closed pipe)
/// are ignored: the console is a convenience, never a reason to stop.
pub fn print(table: &str) {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(table.as_bytes());
    let _ = lock.flush();
}
