//! Console output: each flush as a short table for a developer at a
//! terminal (console mode: no `DD_API_KEY`, e.g. under `dynostat start`).
//!
//! In: a [`Flush`] and the same global tags and host the intake would get.
//! Out: text, in this order:
//!
//! ```text
//! METRIC                TYPE     TAGS  TREND     VALUE
//! example_app.requests  counter        ▁▃▇       3 (0.3/s)
//! example_app.latency   timer          ▂▅▇       count=3 avg=12ms p95=20ms max=20ms
//! Deploy                event          warning: shipped
//! dynostat: 31 packets, 40 lines, 0 parse errors, 22 contexts
//! ```
//!
//! - the app's metrics, one row per metric and tag set, sorted by name then
//!   tags: counters as the interval's count and the rate; histograms, timers
//!   and distributions (from their sketch) as `count avg pNN max` in one row (the flush carries a
//!   histogram as its `.max`, `.avg`, `.count`, `.95percentile`... series:
//!   [`Console`] folds those back together, see [`HistogramNames`]); gauges,
//!   sets and `|T` series as their last value;
//! - a trend per row: the row's value over the last [`TREND_LEN`] flushes,
//!   as a sparkline (`▁▃▇`) on a terminal and plain ASCII (`_-#`) otherwise
//!   or under `NO_COLOR`;
//! - events and service checks;
//! - the `dynostat.*` self-telemetry as one summary line, and one more line
//!   per kind of trouble (drops, parse errors) when there was some.
//!
//! A flush in which nothing arrived and nothing went wrong prints nothing.
//!
//! Must never: panic on a closed stdout (write errors are ignored), print
//! anything secret (there is nothing secret in a flush), or keep more than
//! [`MAX_TREND_ROWS`] × [`TREND_LEN`] trend points.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use super::payload::{alert_type_name, Decoration, TagList};
use crate::config::{Config, HistogramAggregate};
use crate::dogstatsd::aggregate::{
    percentile_ranks, DistributionSketch, Flush, Series, SeriesKind,
};
use crate::dogstatsd::protocol::CheckStatus;

/// Flushes a trend remembers, and the width of the TREND column.
pub const TREND_LEN: usize = 8;

/// Rows whose trend is remembered; past it, the row seen longest ago is
/// forgotten. A row unseen for [`TREND_LEN`] flushes is forgotten anyway.
pub const MAX_TREND_ROWS: usize = 1_000;

/// Longest name or tag column, past which a cell simply overflows its column.
const MAX_WIDTH: usize = 60;

/// Sparkline levels, low to high, on a terminal.
const LEVELS_UNICODE: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Sparkline levels, low to high, in a pipe or under `NO_COLOR`.
const LEVELS_ASCII: [char; 8] = ['_', '.', '-', '~', '=', '+', '*', '#'];

/// The `dynostat.*` series that mean something went wrong: the name, what
/// one and many are called, and what it means or how to fix it.
const TROUBLE: &[(&str, &str, &str, &str)] = &[
    (
        "dynostat.parse_errors",
        "parse error",
        "parse errors",
        "lines that are not DogStatsD were dropped; the log shows a sample",
    ),
    (
        "dynostat.packets.truncated",
        "packet truncated",
        "packets truncated",
        "datagrams filled the buffer; raise DD_DOGSTATSD_BUFFER_SIZE",
    ),
    (
        "dynostat.samples.discarded",
        "sample discarded",
        "samples discarded",
        "NaN, a |T outside the intake's window, or a storage cap",
    ),
    (
        "dynostat.contexts.dropped",
        "context dropped",
        "contexts dropped",
        "new contexts past DYNOSTAT_CONTEXT_LIMIT",
    ),
    (
        "dynostat.forwarder.failures",
        "payload failed",
        "payloads failed",
        "rejected by the intake or given up on",
    ),
    (
        "dynostat.forwarder.queue_dropped",
        "payload dropped",
        "payloads dropped",
        "the retry queue was full; see DYNOSTAT_RETRY_QUEUE_BYTES",
    ),
];

/// The console: how to draw, and the trends it remembers between flushes.
#[derive(Debug)]
pub struct Console {
    levels: [char; 8],
    names: HistogramNames,
    trends: Trends,
}

impl Console {
    /// The console for this configuration: Unicode sparklines when stdout is
    /// a terminal (or `DYNOSTAT_CONSOLE_TTY` says the reader is one) and
    /// `NO_COLOR` is unset.
    pub fn new(config: &Config) -> Self {
        let tty = config
            .console_tty
            .unwrap_or_else(|| std::io::IsTerminal::is_terminal(&std::io::stdout()));
        Self::with(
            tty && !config.no_color,
            HistogramNames::new(&config.histogram_aggregates, &config.histogram_percentiles),
        )
    }

    /// A console that draws Unicode sparklines or ASCII ones.
    pub fn with(unicode: bool, names: HistogramNames) -> Self {
        Self {
            levels: if unicode {
                LEVELS_UNICODE
            } else {
                LEVELS_ASCII
            },
            names,
            trends: Trends::default(),
        }
    }

    /// Renders one flush, and remembers its values for the trends. `None`
    /// when nothing arrived and nothing went wrong: such flushes print nothing.
    pub fn render(&mut self, flush: &Flush, deco: &Decoration) -> Option<String> {
        self.trends.tick();
        let (telemetry, app): (Vec<&Series>, Vec<&Series>) = flush
            .series
            .iter()
            .partition(|s| s.metric.starts_with("dynostat."));
        let troubles = troubles(&telemetry);
        if app.is_empty()
            && flush.distributions.is_empty()
            && flush.events.is_empty()
            && flush.service_checks.is_empty()
            && troubles.is_empty()
        {
            return None;
        }

        let mut rows = metric_rows(&app, &self.names, deco);
        rows.extend(
            flush
                .distributions
                .iter()
                .map(|d| distribution_row(d, deco)),
        );
        rows.sort_by(|a, b| (&a.name, &a.tags, a.kind).cmp(&(&b.name, &b.tags, b.kind)));
        for r in &mut rows {
            let key = format!("{}\0{}\0{}", r.kind, r.name, r.tags);
            let history = self.trends.record(key, r.trend);
            r.spark = sparkline(history, r.kind == "counter", &self.levels);
        }
        let mut other = other_rows(flush, deco);
        other.sort_by(|a, b| (a.kind, &a.name, &a.tags).cmp(&(b.kind, &b.name, &b.tags)));
        self.trends.forget_old();

        let mut out = table(&rows, &other);
        out.push_str(&summary(&telemetry));
        for line in troubles {
            out.push_str(&line);
        }
        Some(out)
    }
}

/// The series names a histogram or timer flushes as, from the configured
/// aggregates (`.max`, `.avg`, `.count`...) and percentiles
/// (`.95percentile`), so that the console can show it as one row.
///
/// A set of series with the same base name, tags and host, each named with
/// one of these suffixes and of the kind the aggregator gives it (`.count`
/// a RATE, the others GAUGEs), and at least two of them, is one histogram.
/// Only a client that sends its own `x.max` and `x.avg` gauges with the same
/// tags would be shown folded too; nothing is changed in what is sent.
#[derive(Debug, Clone)]
pub struct HistogramNames {
    aggregates: Vec<&'static str>,
    percentiles: Vec<(u64, String)>,
}

impl HistogramNames {
    /// From the configured aggregates and percentiles (fractions, e.g. 0.95).
    pub fn new(aggregates: &[HistogramAggregate], percentiles: &[f64]) -> Self {
        let pcts = percentile_ranks(percentiles);
        Self {
            aggregates: aggregates.iter().map(|a| a.suffix()).collect(),
            percentiles: pcts
                .into_iter()
                .map(|p| (p, format!("{p}percentile")))
                .collect(),
        }
    }

    /// `(base name, member)` when `s` looks like one series of a histogram.
    fn split<'a>(&self, s: &'a Series) -> Option<(&'a str, Member)> {
        let (base, suffix) = s.metric.rsplit_once('.')?;
        if base.is_empty() {
            return None;
        }
        let member = if let Some((p, _)) = self.percentiles.iter().find(|(_, n)| n == suffix) {
            Member::Percentile(*p)
        } else if let Some(a) = self.aggregates.iter().find(|a| **a == suffix) {
            Member::Aggregate(a)
        } else {
            return None;
        };
        let want = if member == Member::Aggregate("count") {
            SeriesKind::Rate
        } else {
            SeriesKind::Gauge
        };
        (s.kind == want && s.points.len() == 1).then_some((base, member))
    }

    /// How many series one histogram flushes as.
    fn members(&self) -> usize {
        self.aggregates.len() + self.percentiles.len()
    }
}

/// One series of a histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Member {
    /// `.max`, `.count`...
    Aggregate(&'static str),
    /// `.95percentile` → 95.
    Percentile(u64),
}

/// One table row.
struct Row {
    name: String,
    kind: &'static str,
    tags: String,
    /// The number the trend follows.
    trend: Option<f64>,
    spark: String,
    value: String,
}

impl Row {
    fn new(
        name: String,
        kind: &'static str,
        tags: String,
        trend: Option<f64>,
        value: String,
    ) -> Self {
        Self {
            name,
            kind,
            tags,
            trend,
            spark: String::new(),
            value,
        }
    }
}

/// The app's series as rows: histograms folded into one row each.
fn metric_rows(app: &[&Series], names: &HistogramNames, deco: &Decoration) -> Vec<Row> {
    type Key<'a> = (&'a str, &'a [String], Option<&'a String>);
    let mut groups: HashMap<Key<'_>, Vec<(Member, &Series)>> = HashMap::new();
    if names.members() >= 2 {
        for s in app {
            if let Some((base, member)) = names.split(s) {
                groups
                    .entry((base, &s.tags, s.host.as_ref()))
                    .or_default()
                    .push((member, s));
            }
        }
        groups.retain(|_, members| members.len() >= 2);
    }
    let folded = |s: &Series| {
        names
            .split(s)
            .is_some_and(|(base, _)| groups.contains_key(&(base, &s.tags[..], s.host.as_ref())))
    };

    let mut rows = Vec::new();
    for s in app.iter().filter(|s| !folded(s)) {
        rows.push(series_row(s, deco));
    }
    for ((base, tags, host), members) in &groups {
        rows.push(histogram_row(base, tags, *host, members, deco));
    }
    rows
}

/// A counter, gauge or `|T` series as a row.
fn series_row(s: &Series, deco: &Decoration) -> Row {
    let tags = tags_cell(&s.tags, deco, s.host.as_ref());
    let last = s.points.last().map_or(0.0, |p| p.1);
    let many = if s.points.len() > 1 {
        format!(" ({} points)", s.points.len())
    } else {
        String::new()
    };
    match (s.kind, s.interval) {
        // A counter: RATE = count / interval.
        (SeriesKind::Rate, Some(secs)) => {
            let rate: f64 = s.points.iter().map(|p| p.1).sum();
            #[allow(clippy::cast_precision_loss)] // intervals are at most 3600
            let count = rate * secs as f64;
            Row::new(
                s.metric.clone(),
                "counter",
                tags,
                Some(count),
                format!("{} ({}/s){many}", short(count), short(rate)),
            )
        }
        (kind, _) => Row::new(
            s.metric.clone(),
            match kind {
                SeriesKind::Count => "count",
                SeriesKind::Rate => "rate",
                SeriesKind::Gauge => "gauge",
            },
            tags,
            Some(last),
            format!("{}{many}", short(last)),
        ),
    }
}

/// A histogram's or timer's series as one row: `count avg pNN max`, each
/// only when configured.
fn histogram_row(
    base: &str,
    tags: &[String],
    host: Option<&String>,
    members: &[(Member, &Series)],
    deco: &Decoration,
) -> Row {
    let value_of = |m: Member| {
        members
            .iter()
            .find(|(k, _)| *k == m)
            .and_then(|(_, s)| Some((s.points.first()?.1, *s)))
    };
    let timer = members.iter().any(|(_, s)| s.unit == Some("millisecond"));
    let unit = if timer { "ms" } else { "" };
    let count = value_of(Member::Aggregate("count")).map(|(rate, s)| {
        #[allow(clippy::cast_precision_loss)] // intervals are at most 3600
        let secs = s.interval.unwrap_or(1) as f64;
        rate * secs
    });
    let avg = value_of(Member::Aggregate("avg")).map(|(v, _)| v);
    let mut summary = Summary {
        count,
        avg,
        percentiles: Vec::new(),
        max: value_of(Member::Aggregate("max")).map(|(v, _)| v),
    };
    let mut pcts: Vec<u64> = members
        .iter()
        .filter_map(|(m, _)| match m {
            Member::Percentile(p) => Some(*p),
            Member::Aggregate(_) => None,
        })
        .collect();
    pcts.sort_unstable();
    for p in pcts {
        if let Some((v, _)) = value_of(Member::Percentile(p)) {
            summary.percentiles.push((p, v));
        }
    }
    Row::new(
        base.to_owned(),
        if timer { "timer" } else { "histogram" },
        tags_cell(tags, deco, host),
        summary.avg.or(summary.count),
        summary.show(unit),
    )
}

/// A distribution as one row, like a histogram.
fn distribution_row(d: &DistributionSketch, deco: &Decoration) -> Row {
    let s = distribution_summary(d);
    Row::new(
        d.metric.clone(),
        "distribution",
        tags_cell(&d.tags, deco, d.host.as_ref()),
        s.avg.or(s.count),
        s.show(""),
    )
}

/// What a histogram-like row shows.
struct Summary {
    count: Option<f64>,
    avg: Option<f64>,
    /// `(percent, value)`, ascending.
    percentiles: Vec<(u64, f64)>,
    max: Option<f64>,
}

impl Summary {
    /// `count=3 avg=12ms p95=20ms max=20ms`, leaving out what is missing.
    fn show(&self, unit: &str) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.count {
            parts.push(format!("count={}", short(c)));
        }
        if let Some(a) = self.avg {
            parts.push(format!("avg={}{unit}", short(a)));
        }
        for (p, v) in &self.percentiles {
            parts.push(format!("p{p}={}{unit}", short(*v)));
        }
        if let Some(m) = self.max {
            parts.push(format!("max={}{unit}", short(m)));
        }
        parts.join(" ")
    }
}

/// A distribution's count, avg, p95 and max, read from its sketch (the
/// percentile within the sketch's relative accuracy, as Datadog shows it).
fn distribution_summary(d: &DistributionSketch) -> Summary {
    let s = &d.sketch;
    if s.is_empty() {
        return Summary {
            count: Some(0.0),
            avg: None,
            percentiles: Vec::new(),
            max: None,
        };
    }
    Summary {
        count: Some(s.count()),
        avg: Some(s.avg()),
        percentiles: s.quantile(0.95).map(|v| (95, v)).into_iter().collect(),
        max: Some(s.max()),
    }
}

/// Events and service checks, as before.
fn other_rows(flush: &Flush, deco: &Decoration) -> Vec<Row> {
    let mut rows = Vec::new();
    for e in &flush.events {
        let text = one_line(&e.text);
        rows.push(Row::new(
            one_line(&e.title),
            "event",
            tags_cell(&e.tags, deco, e.host.as_ref()),
            None,
            format!("{}: {text}", alert_type_name(e.alert_type)),
        ));
    }
    for c in &flush.service_checks {
        let mut value = status_name(c.status).to_owned();
        if let Some(m) = c.message.as_deref().filter(|m| !m.is_empty()) {
            let _ = write!(value, ": {}", one_line(m));
        }
        rows.push(Row::new(
            c.name.clone(),
            "service_check",
            tags_cell(&c.tags, deco, c.host.as_ref()),
            None,
            value,
        ));
    }
    rows
}

/// The table: metric rows with a TREND column, then events and checks
/// (whose trend cell is blank).
fn table(metrics: &[Row], other: &[Row]) -> String {
    let rows: Vec<&Row> = metrics.iter().chain(other.iter()).collect();
    if rows.is_empty() {
        return String::new();
    }
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
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, tags: &str, trend: &str, value: &str| {
        // Pad by characters: the sparkline's are 3 bytes each.
        let pad = TREND_LEN.saturating_sub(trend.chars().count());
        let _ = writeln!(
            out,
            "{name:<w_name$}  {kind:<w_kind$}  {tags:<w_tags$}  {trend}{:pad$}  {value}",
            ""
        );
    };
    line("METRIC", "TYPE", "TAGS", "TREND", "VALUE");
    for r in rows {
        line(&r.name, r.kind, &r.tags, &r.spark, &r.value);
    }
    out
}

/// `dynostat: 31 packets, 40 lines, 0 parse errors, 22 contexts`.
fn summary(telemetry: &[&Series]) -> String {
    let packets = count_of(telemetry, "dynostat.packets").unwrap_or(0.0);
    let lines = count_of(telemetry, "dynostat.lines").unwrap_or(0.0);
    let errors = count_of(telemetry, "dynostat.parse_errors").unwrap_or(0.0);
    let contexts = count_of(telemetry, "dynostat.contexts").unwrap_or(0.0);
    format!(
        "dynostat: {}, {}, {}, {}\n",
        plural(packets, "packet", "packets"),
        plural(lines, "line", "lines"),
        plural(errors, "parse error", "parse errors"),
        plural(contexts, "context", "contexts"),
    )
}

/// One line per kind of trouble in this flush.
fn troubles(telemetry: &[&Series]) -> Vec<String> {
    TROUBLE
        .iter()
        .filter_map(|(name, one, many, why)| {
            let n = count_of(telemetry, name).filter(|n| *n > 0.0)?;
            Some(format!("dynostat: {}: {why}\n", plural(n, one, many)))
        })
        .collect()
}

/// A telemetry series' value as a count for the interval (RATEs times the
/// interval; gauges as they are).
fn count_of(telemetry: &[&Series], name: &str) -> Option<f64> {
    let s = telemetry.iter().find(|s| s.metric == name)?;
    let v: f64 = s.points.iter().map(|p| p.1).sum();
    #[allow(clippy::cast_precision_loss)] // intervals are at most 3600
    Some(match (s.kind, s.interval) {
        (SeriesKind::Rate, Some(secs)) => v * secs as f64,
        _ => v,
    })
}

/// The trends of rows, bounded in rows and in points per row.
#[derive(Debug, Default)]
struct Trends {
    /// Flushes rendered so far.
    now: u64,
    rows: HashMap<String, Trend>,
}

#[derive(Debug)]
struct Trend {
    /// One entry per flush, oldest first, `None` when the row was absent.
    points: VecDeque<Option<f64>>,
    /// The flush in which the row was last seen.
    seen: u64,
}

impl Trends {
    fn tick(&mut self) {
        self.now += 1;
    }

    /// Adds this flush's value to the row's trend; returns the trend.
    fn record(&mut self, key: String, value: Option<f64>) -> &VecDeque<Option<f64>> {
        if !self.rows.contains_key(&key) && self.rows.len() >= MAX_TREND_ROWS {
            if let Some(oldest) = self
                .rows
                .iter()
                .min_by_key(|(_, t)| t.seen)
                .map(|(k, _)| k.clone())
            {
                self.rows.remove(&oldest);
            }
        }
        let now = self.now;
        let t = self.rows.entry(key).or_insert_with(|| Trend {
            points: VecDeque::with_capacity(TREND_LEN),
            seen: now,
        });
        let gaps = now.saturating_sub(t.seen).saturating_sub(1);
        for _ in 0..gaps.min(TREND_LEN as u64) {
            t.points.push_back(None);
        }
        t.points.push_back(value);
        while t.points.len() > TREND_LEN {
            t.points.pop_front();
        }
        t.seen = now;
        &t.points
    }

    /// Forgets rows not seen for [`TREND_LEN`] flushes: nothing of them would show.
    fn forget_old(&mut self) {
        let now = self.now;
        self.rows
            .retain(|_, t| now.saturating_sub(t.seen) < TREND_LEN as u64);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.rows.len()
    }
}

/// Draws a trend: each flush as one of 8 levels between the lowest and the
/// highest value shown. A flush without the row is blank, or the lowest
/// level for a counter (nothing counted).
fn sparkline(points: &VecDeque<Option<f64>>, counter: bool, levels: &[char; 8]) -> String {
    let values: Vec<Option<f64>> = points
        .iter()
        .map(|p| p.or(if counter { Some(0.0) } else { None }))
        .collect();
    let shown = values.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = shown.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    values
        .iter()
        .map(|v| match v {
            Some(v) if v.is_finite() => {
                let level = if hi > lo {
                    ((v - lo) / (hi - lo) * 7.0).round() as usize
                } else if *v == 0.0 {
                    0
                } else {
                    3
                };
                levels[level.min(7)]
            }
            _ => ' ',
        })
        .collect()
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

/// A number with at most 4 decimals, without trailing zeros: `3`, `0.3`,
/// `12.3457`; tiny non-zero values in exponent form.
fn short(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.0001 {
        return format!("{v:.2e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn plural(n: f64, one: &str, many: &str) -> String {
    format!("{} {}", short(n), if n == 1.0 { one } else { many })
}

/// Writes rendered text to stdout and flushes it. Errors (a closed pipe)
/// are ignored: the console is a convenience, never a reason to stop.
pub fn print(text: &str) {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(text.as_bytes());
    let _ = lock.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels() -> &'static [char; 8] {
        &LEVELS_UNICODE
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(short(3.000_000_000_000_4), "3");
        assert_eq!(short(0.3), "0.3");
        assert_eq!(short(12.345_67), "12.3457");
        assert_eq!(short(-0.0), "0");
        assert_eq!(short(0.000_01), "1.00e-5");
    }

    #[test]
    fn sparkline_scales_between_low_and_high() {
        let pts: VecDeque<Option<f64>> = [Some(0.0), Some(3.5), Some(7.0)].into();
        assert_eq!(sparkline(&pts, false, levels()), "▁▅█");
        let flat: VecDeque<Option<f64>> = [Some(5.0), Some(5.0)].into();
        assert_eq!(sparkline(&flat, false, levels()), "▄▄");
        // A counter absent in a flush counted nothing; a gauge is blank.
        let gap: VecDeque<Option<f64>> = [Some(4.0), None, Some(2.0)].into();
        assert_eq!(sparkline(&gap, true, levels()), "█▁▅");
        assert_eq!(sparkline(&gap, false, levels()), "█ ▁");
        assert_eq!(sparkline(&gap, true, &LEVELS_ASCII), "#_=");
    }

    #[test]
    fn trends_are_bounded_in_points_and_rows() {
        let mut t = Trends::default();
        for i in 0..20 {
            t.tick();
            let h = t.record("a".to_owned(), Some(f64::from(i)));
            assert!(h.len() <= TREND_LEN);
        }
        t.tick();
        t.tick();
        let h = t.record("a".to_owned(), Some(1.0));
        assert_eq!(h.len(), TREND_LEN);
        assert_eq!(h[TREND_LEN - 2], None, "the flush without the row is a gap");
        assert_eq!(h[TREND_LEN - 1], Some(1.0));

        t.tick();
        for i in 0..MAX_TREND_ROWS + 50 {
            t.record(format!("row{i}"), Some(1.0));
        }
        assert_eq!(t.len(), MAX_TREND_ROWS);
        for _ in 0..TREND_LEN {
            t.tick();
            t.forget_old();
        }
        assert_eq!(
            t.len(),
            0,
            "rows unseen for {TREND_LEN} flushes are forgotten"
        );
    }
}
