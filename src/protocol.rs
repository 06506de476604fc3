//! DogStatsD datagram parser: metrics, events and service checks.
//!
//! In: raw datagram bytes. Out: borrowed [`Parsed`] lines, or a [`ParseError`]
//! per bad line. Zero-copy: a metric line borrows its name, values and tags
//! from the datagram; nothing is allocated per metric line.
//!
//! Must never: panic on any input, or allocate on the metric hot path.
//!
//! INTERFACE (fixed; the aggregator and listener depend on it):
//! - [`lines`] splits a datagram on `\n`, drops a trailing `\r`, skips empty lines.
//! - [`parse_line`] parses one line.
//! - [`Metric::values`] iterates the numeric values (already validated).
//! - [`Metric::set_value`] is the raw set member (colons kept).
//! - [`Tags`] iterates tags in the order given, including any `host:` tag;
//!   the aggregator sorts, deduplicates and extracts `host:`.

/// The DogStatsD metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// `c`
    Counter,
    /// `g`
    Gauge,
    /// `h`
    Histogram,
    /// `ms`: a histogram with unit millisecond.
    Timer,
    /// `s`
    Set,
    /// `d`
    Distribution,
}

/// One parsed metric line, borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric<'a> {
    /// The metric name, non-empty, valid UTF-8.
    pub name: &'a str,
    /// The raw value field (everything between the first `:` and the first `|`).
    /// Validated by [`parse_line`]: for non-sets every non-empty `:`-separated
    /// item is a float.
    pub raw_values: &'a str,
    /// The type.
    pub kind: MetricType,
    /// The sample rate in (0, 1]; 1.0 when absent.
    pub sample_rate: f64,
    /// The raw tag field without the leading `#` (e.g. `a:b,c`); empty when absent.
    pub tags: Tags<'a>,
    /// `|T<unix seconds>`: send at this timestamp without aggregation.
    pub timestamp: Option<i64>,
}

impl<'a> Metric<'a> {
    /// The numeric values, skipping empty items (`1::2` is 1 and 2). NaN and
    /// infinities are yielded; the aggregator drops them as the Agent does.
    /// For sets, yields nothing; use [`Metric::set_value`].
    pub fn values(&self) -> impl Iterator<Item = f64> + 'a {
        let raw = if self.kind == MetricType::Set {
            ""
        } else {
            self.raw_values
        };
        raw.split(':')
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<f64>().ok())
    }

    /// For sets: the member, with colons kept (`daemon:abc:def|s` is `abc:def`).
    pub fn set_value(&self) -> &'a str {
        self.raw_values
    }
}

/// A tag list as given on the wire, e.g. `a:b,c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tags<'a>(pub &'a str);

impl<'a> Tags<'a> {
    /// The raw field.
    pub fn raw(&self) -> &'a str {
        self.0
    }

    /// Whether there are no tags.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each non-empty tag, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.0.split(',').filter(|t| !t.is_empty())
    }
}

/// Event priority `p:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `normal` (default)
    Normal,
    /// `low`
    Low,
}

/// Event alert type `t:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertType {
    /// `info` (default)
    Info,
    /// `warning`
    Warning,
    /// `error`
    Error,
    /// `success`
    Success,
}

/// An event `_e{title_len,text_len}:title|text|…`. Rare, so it owns its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The title (length in bytes from the header).
    pub title: String,
    /// The text, with `\\n` turned into newlines.
    pub text: String,
    /// `d:` unix seconds.
    pub timestamp: Option<i64>,
    /// `h:` host.
    pub host: Option<String>,
    /// `k:` aggregation key.
    pub aggregation_key: Option<String>,
    /// `p:` priority.
    pub priority: Priority,
    /// `s:` source type name.
    pub source_type: Option<String>,
    /// `t:` alert type.
    pub alert_type: AlertType,
    /// `#` tags.
    pub tags: Vec<String>,
}

/// Service check status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// 0
    Ok = 0,
    /// 1
    Warning = 1,
    /// 2
    Critical = 2,
    /// 3
    Unknown = 3,
}

/// A service check `_sc|name|status|…`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceCheck {
    /// The check name.
    pub name: String,
    /// The status 0-3.
    pub status: CheckStatus,
    /// `d:` unix seconds.
    pub timestamp: Option<i64>,
    /// `h:` host.
    pub host: Option<String>,
    /// `#` tags.
    pub tags: Vec<String>,
    /// `m:` message (must be last on the wire).
    pub message: Option<String>,
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed<'a> {
    /// A metric sample.
    Metric(Metric<'a>),
    /// An event.
    Event(Event),
    /// A service check.
    ServiceCheck(ServiceCheck),
}

/// Why a line was rejected. Small and cheap: the hot path returns it by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No `:` between name and value.
    #[error("missing ':' between name and value")]
    MissingColon,
    /// No `|type`.
    #[error("missing '|' and metric type")]
    MissingType,
    /// Empty metric name.
    #[error("empty metric name")]
    EmptyName,
    /// No value at all.
    #[error("empty value")]
    EmptyValue,
    /// A value that is not a number.
    #[error("value is not a number")]
    BadValue,
    /// An unknown type letter.
    #[error("unknown metric type")]
    UnknownType,
    /// A sample rate that does not parse or is outside (0, 1].
    #[error("sample rate must be in (0, 1]")]
    BadSampleRate,
    /// A `|T` timestamp that does not parse.
    #[error("bad timestamp")]
    BadTimestamp,
    /// Not valid UTF-8.
    #[error("not valid UTF-8")]
    InvalidUtf8,
    /// Longer than the limit.
    #[error("line too long")]
    TooLong,
    /// A malformed event.
    #[error("malformed event")]
    BadEvent,
    /// A malformed service check.
    #[error("malformed service check")]
    BadServiceCheck,
}

/// The longest line accepted; longer lines are [`ParseError::TooLong`].
pub const MAX_LINE_LEN: usize = 65_536;

/// Splits a datagram into lines: on `\n`, dropping a trailing `\r`, skipping
/// empty lines; an unterminated last line counts.
pub fn lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    datagram
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<Parsed<'_>, ParseError> {
    let _ = line;
    Err(ParseError::MissingType)
}
