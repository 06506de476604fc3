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
//!
//! Agent behaviour followed (datadog-agent `comp/dogstatsd/server`): name and
//! value split at the first `:`; nothing is trimmed; sets keep colons; empty
//! items in a value list are skipped but a list with no number is an error;
//! `@rate`, `#tags`, `T<ts>` in any order, last one wins, unknown fields
//! ignored; `T` below 1 is rejected; event lengths are bytes and `\n` is
//! unescaped in title and text; bad optional event/check fields are ignored;
//! values and rates are read exactly as Go's `strconv.ParseFloat` reads them
//! ([`parse_value`]: hex floats, `_` between digits, `inf`/`nan` spellings,
//! out-of-range literals rejected).
//! A rate outside (0, 1] parses, as in the Agent; [`sample_weight`] says
//! what it weighs. Deliberate differences: a service check
//! needs the prefix `_sc|` (the Agent's bare `_sc` also captures metrics such
//! as `_scale:1|c`); event lengths must land on `|` or the end of the line.

/// The most one value weighs: a rate below `1 / MAX_WEIGHT` (1e-6) weighs
/// this much, so no number from the wire sets a count past it (docs/DESIGN.md,
/// "Sample rates").
pub const MAX_WEIGHT: f64 = 1e6;

/// What one value of a `kind` line sent at `rate` weighs (the Agent's
/// `1/rate`, bounded), and whether [`MAX_WEIGHT`] bounded it. Gauges and
/// sets ignore it. Called only for a rate other than 1, off the hot path.
///
/// - a rate in (0, 1]: `1/rate`, at most [`MAX_WEIGHT`] (the Agent has no
///   bound: `@5e-324` weighs +Inf on a counter, and a distribution's
///   `uint(1/rate)` count at `@1e-20` is out of range);
/// - above 1 (finite): `1/rate` for counters, histograms and timers (the
///   Agent's `Counter.addSample`, `Histogram.addSample`: `@2` weighs 0.5),
///   1 for distributions (the Agent's `quantile.Agent.Insert` falls back to
///   unsampled for a rate outside (0, 1]);
/// - 0, negative, NaN or infinite: 1 (the Agent's histograms take 0 as 1 and
///   its distributions all of these; its counters would sum an infinite,
///   negative or NaN weight).
#[cold]
#[inline(never)]
pub fn sample_weight(kind: MetricType, rate: f64) -> (f64, bool) {
    if !(rate.is_finite() && rate > 0.0) {
        return (1.0, false);
    }
    if rate > 1.0 && kind == MetricType::Distribution {
        return (1.0, false);
    }
    let w = 1.0 / rate;
    if w > MAX_WEIGHT {
        (MAX_WEIGHT, true)
    } else {
        (w, false)
    }
}

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
    /// The value of a line with exactly one (the common case), as
    /// [`parse_line`] read it while validating, so it is parsed once; `None`
    /// for sets and for lines of several values, whose [`Metric::values`]
    /// reads `raw_values` again. A hand-built `Metric` may leave it `None`;
    /// when `Some`, [`Metric::values`] yields it alone.
    pub value: Option<f64>,
    /// The type.
    pub kind: MetricType,
    /// The sample rate as sent (any float Go's `ParseFloat` reads, NaN and
    /// infinities included); 1.0 when absent. What it weighs is
    /// [`sample_weight`]'s.
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
        let single = if self.kind == MetricType::Set {
            None
        } else {
            self.value
        };
        let raw = if self.kind == MetricType::Set || single.is_some() {
            ""
        } else {
            self.raw_values
        };
        single
            .into_iter()
            .chain(SplitNonEmpty::new(raw, b':').filter_map(parse_value))
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
        SplitNonEmpty::new(self.0, b',')
    }
}

/// The first index of `needle` in `hay`.
///
/// Long input goes to the `memchr` crate, which picks its SSE2 or AVX2
/// searcher at run time and goes 16 or 32 bytes a step; short input (a
/// value, a short name or tag field) to [`find_byte_swar`], whose setup is a
/// fraction of `memchr`'s dispatch. On the long lines of `loadgen --shape
/// long` (about 2 KiB each, most of it one tag field scanned twice: for
/// `\n`, then for `|`) the SWAR loop alone was most of the receive thread's
/// instructions; on the mixed load's 45-byte lines `memchr` alone cost more
/// than the SWAR loop (callgrind, docs/PERFORMANCE.md).
#[inline(always)]
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    if hay.len() >= MEMCHR_FROM {
        memchr::memchr(needle, hay)
    } else {
        find_byte_swar(hay, needle)
    }
}

/// Input at least this long is searched with `memchr`.
const MEMCHR_FROM: usize = 32;

/// The first index of `needle` in `hay`, eight bytes at a time (SWAR).
///
/// Why not `str::split`/`find`: on lines of ~50 bytes the generic
/// `CharSearcher` + `core::slice::memchr` setup dominated the parse. Measured
/// with callgrind on the `benches/parser.rs` datagram, per line:
/// `lines` 312 -> 112 instructions, `lines` + `parse_line` 1485 -> 753,
/// plus reading `values()` and `tags.iter()` 2128 -> 1011.
#[inline(always)]
fn find_byte_swar(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    let pattern = LO.wrapping_mul(u64::from(needle));
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // Bytes equal to `needle` become zero; the classic has-zero-byte
        // test then marks them. The lowest mark is exact (borrows only run
        // upwards), and little-endian loading makes it the first byte.
        let x = u64::from_le_bytes(word) ^ pattern;
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(base + (found.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == needle)
        .map(|i| base + i)
}

/// The part of `s` before the first ASCII `sep`, and the part after it if
/// there is one. Cutting at an ASCII byte is always a char boundary.
#[inline(always)]
fn cut(s: &str, sep: u8) -> (&str, Option<&str>) {
    match find_byte(s.as_bytes(), sep) {
        Some(i) => (
            s.get(..i).unwrap_or_default(),
            Some(s.get(i + 1..).unwrap_or_default()),
        ),
        None => (s, None),
    }
}

/// [`find_byte`] for a byte that is usually within the first `near` bytes
/// (the `|` after `name:value`): those bytes with
/// [`find_byte_swar`], then the rest with [`find_byte`], which saves
/// `memchr`'s dispatch on short lines.
#[inline(always)]
fn find_near(hay: &[u8], needle: u8, near: usize) -> Option<usize> {
    let (head, tail) = hay.split_at(hay.len().min(near));
    match find_byte_swar(head, needle) {
        Some(i) => Some(i),
        None => find_byte(tail, needle).map(|i| head.len() + i),
    }
}

/// [`cut`] with [`find_near`] over the first [`MEMCHR_FROM`] bytes.
#[inline(always)]
fn cut_near(s: &str, sep: u8) -> (&str, Option<&str>) {
    match find_near(s.as_bytes(), sep, MEMCHR_FROM) {
        Some(i) => (
            s.get(..i).unwrap_or_default(),
            Some(s.get(i + 1..).unwrap_or_default()),
        ),
        None => (s, None),
    }
}

/// Iterates the non-empty pieces of `s` between ASCII `sep` bytes.
struct SplitNonEmpty<'a> {
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> SplitNonEmpty<'a> {
    fn new(s: &'a str, sep: u8) -> Self {
        SplitNonEmpty { rest: Some(s), sep }
    }
}

impl<'a> Iterator for SplitNonEmpty<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        loop {
            let (piece, rest) = cut(self.rest?, self.sep);
            self.rest = rest;
            if !piece.is_empty() {
                return Some(piece);
            }
        }
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
    /// An event, boxed: events are rare and large, and every line's result
    /// is moved through the listener's loop at the size of the largest variant.
    Event(Box<Event>),
    /// A service check, boxed as events are.
    ServiceCheck(Box<ServiceCheck>),
}

/// Why a line was rejected. Small and cheap: the hot path returns it by value.
/// The listener counts these and logs a rate-limited sample with the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No `:` between name and value.
    #[error("missing ':' between name and value (expected name:value|type)")]
    MissingColon,
    /// No `|type`.
    #[error("missing '|' and metric type (expected name:value|type, type one of c g h ms s d)")]
    MissingType,
    /// Empty metric name.
    #[error("empty metric name (expected name:value|type)")]
    EmptyName,
    /// No value at all.
    #[error("empty value (expected name:value|type, e.g. requests:1|c)")]
    EmptyValue,
    /// A value that is not a number.
    #[error("value is not a number (values are floats, several may be joined with ':')")]
    BadValue,
    /// An unknown type letter.
    #[error("unknown metric type (expected one of c g h ms s d)")]
    UnknownType,
    /// A sample rate that does not parse as a number.
    #[error("sample rate must be a number, e.g. |@0.5")]
    BadSampleRate,
    /// A `|T` timestamp that does not parse.
    #[error("bad timestamp (|T takes positive integer unix seconds, e.g. |T1700000000)")]
    BadTimestamp,
    /// Not valid UTF-8.
    #[error("not valid UTF-8")]
    InvalidUtf8,
    /// Longer than the limit.
    #[error("line too long (limit is 65536 bytes)")]
    TooLong,
    /// A malformed event.
    #[error("malformed event (expected _e{{title_len,text_len}}:title|text with lengths in bytes and title_len > 0)")]
    BadEvent,
    /// A malformed service check.
    #[error("malformed service check (expected _sc|name|status with status 0-3)")]
    BadServiceCheck,
}

impl ParseError {
    /// A short, stable, snake_case name, e.g. for a telemetry tag `reason:bad_value`.
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::MissingColon => "missing_colon",
            ParseError::MissingType => "missing_type",
            ParseError::EmptyName => "empty_name",
            ParseError::EmptyValue => "empty_value",
            ParseError::BadValue => "bad_value",
            ParseError::UnknownType => "unknown_type",
            ParseError::BadSampleRate => "bad_sample_rate",
            ParseError::BadTimestamp => "bad_timestamp",
            ParseError::InvalidUtf8 => "invalid_utf8",
            ParseError::TooLong => "too_long",
            ParseError::BadEvent => "bad_event",
            ParseError::BadServiceCheck => "bad_service_check",
        }
    }
}

/// The longest line accepted; longer lines are [`ParseError::TooLong`].
pub const MAX_LINE_LEN: usize = 65_536;

/// Bytes of a datagram searched for the next `\n` eight at a time before
/// `memchr` takes over: the short lines of the mixed and counters loads
/// (about 45 bytes) end within them.
const LINE_NEAR: usize = 64;

/// Splits a datagram into lines: on `\n`, dropping a trailing `\r`, skipping
/// empty lines; an unterminated last line counts (as the Agent's scanner does).
pub fn lines(datagram: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = datagram;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        // A short line's `\n` is found by the SWAR loop without `memchr`'s
        // set-up; a long line's by `memchr` past its first bytes.
        let (line, next) = match find_near(rest, b'\n', LINE_NEAR) {
            Some(i) => rest.split_at(i),
            None => (rest, &[][..]),
        };
        rest = next.get(1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            return Some(line);
        }
    })
}

/// Parses one line (without its newline).
///
/// The line's UTF-8 is checked once, up front; every field after that is a
/// `&str` slice cut at an ASCII delimiter (`:`, `|`, `,`), so no field is
/// re-validated and no slice can land inside a character. Metric lines
/// allocate nothing. Lines starting `_e{` are events and lines starting
/// `_sc|` are service checks; everything else is a metric.
pub fn parse_line(line: &[u8]) -> Result<Parsed<'_>, ParseError> {
    if line.len() > MAX_LINE_LEN {
        return Err(ParseError::TooLong);
    }
    parse_str(simdutf8::basic::from_utf8(line).map_err(|_| ParseError::InvalidUtf8)?)
}

/// [`parse_line`] for a line already known to be UTF-8, e.g. one cut from a
/// datagram validated whole: the listener checks each datagram once instead
/// of each line. Callgrind put the per-line check at ~134 instructions
/// (docs/PERFORMANCE.md); the saving was measured only as CPU-s per million
/// lines (0.77 → 0.68 with the value-parser change, same benchmark).
pub fn parse_str(s: &str) -> Result<Parsed<'_>, ParseError> {
    if s.len() > MAX_LINE_LEN {
        return Err(ParseError::TooLong);
    }
    if s.starts_with('_') {
        if s.starts_with("_e{") {
            return parse_event(s).map(|e| Parsed::Event(Box::new(e)));
        }
        // The Agent matches the bare prefix `_sc`, which also swallows
        // metrics such as `_scale:1|c`; we require the `|` so those stay metrics.
        if let Some(body) = s.strip_prefix("_sc|") {
            return parse_service_check(body).map(|c| Parsed::ServiceCheck(Box::new(c)));
        }
    }
    parse_metric(s).map(Parsed::Metric)
}

/// Parses one numeric value exactly as the Agent does: it reads values and
/// sample rates with Go's `strconv.ParseFloat(s, 64)` (datadog-agent
/// `comp/dogstatsd/server` parse.go). So, as Go does (golang `strconv/atof.go`):
/// decimals with an optional sign, `.5`, `5.`, exponents `1e3`/`1E+3`; hex
/// floats `0x1.8p1`, whose `p` exponent is required (`0x10` is an error);
/// `_` between digits or after the `0x` prefix (`1_000`, `0x_1p3`; not `_1`,
/// `1_`, `1__0`); `inf`/`infinity` with an optional sign and `nan` without
/// one, any case; a finite value too large for an f64 (`1e400`) is an error
/// (Go's `ErrRange`), one too small rounds to 0. Whitespace never parses.
///
/// The one definition of a value, shared by validation here and by the
/// aggregator's reads: [`parse_value_bytes`], exact fast path for plain
/// decimals, else [`parse_go_float`]. Callgrind on the receive thread put
/// `f64::from_str` at ~100 instructions per value against ~30 for the fast
/// path (docs/PERFORMANCE.md), and both gave the same bits in the tests.
#[inline]
pub fn parse_value(s: &str) -> Option<f64> {
    parse_value_bytes(s.as_bytes())
}

/// Powers of ten exactly representable as f64.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Parses one value as [`parse_value`] describes. Fast path (Clinger's): an
/// optional `-`, at most 15 digits with at most one `.`; the digits form an
/// integer below 2^53 and 10^k is exact, so one IEEE division gives the
/// correctly rounded result, the same bits Go and `f64::from_str` return.
/// Anything else (exponents, `+`, `_`, hex, `nan`, `inf`, long mantissas)
/// takes [`parse_go_float`].
#[inline]
pub fn parse_value_bytes(item: &[u8]) -> Option<f64> {
    let (neg, digits) = match item.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, item),
    };
    if digits.is_empty() || digits.len() > 16 {
        return parse_go_float(item);
    }
    let mut mantissa: u64 = 0;
    // Where the `.` is; `usize::MAX` while there is none.
    let mut dot = usize::MAX;
    for (i, &b) in digits.iter().enumerate() {
        let d = b.wrapping_sub(b'0');
        if d < 10 {
            mantissa = mantissa * 10 + u64::from(d);
        } else if b == b'.' && dot == usize::MAX {
            dot = i;
        } else {
            return parse_go_float(item);
        }
    }
    let (count, decimals) = if dot == usize::MAX {
        (digits.len(), 0)
    } else {
        (digits.len() - 1, digits.len() - dot - 1)
    };
    if count == 0 || count > 15 {
        return parse_go_float(item);
    }
    // Exact: mantissa < 10^15 < 2^53, and so is 10^decimals. Through i64,
    // which converts in one instruction (`cvtsi2sd`); x86-64 has none for an
    // unsigned 64-bit integer, and `u64 as f64` takes a sequence of several.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_wrap)]
    let m = mantissa as i64 as f64;
    let v = if decimals == 0 {
        m
    } else {
        m / POW10.get(decimals).copied().unwrap_or(1.0)
    };
    Some(if neg { -v } else { v })
}

/// Go's `strconv.ParseFloat(s, 64)`, as a function of the bytes: `None`
/// where Go returns an error (syntax, or a finite value out of range).
///
/// The syntax is checked here, by Go's rules (see [`parse_value`]). A decimal
/// is then converted by `f64::from_str` (with any `_` removed), which, like
/// Go, rounds correctly, so the bits agree; a hex float is converted by
/// [`hex_to_f64`]. Checked against Go 1.19's `ParseFloat` on a table of edge
/// cases and on a million random strings over the float alphabet (the table
/// is the `go_parse_float_table` test).
#[cold]
pub fn parse_go_float(s: &[u8]) -> Option<f64> {
    let (neg, body) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, s),
    };
    // Go's `special`: a signed or unsigned `inf`/`infinity`, an unsigned `nan`.
    if body.eq_ignore_ascii_case(b"inf") || body.eq_ignore_ascii_case(b"infinity") {
        return Some(if neg {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if body.len() == s.len() && body.eq_ignore_ascii_case(b"nan") {
        return Some(f64::NAN);
    }
    let hex = body.len() > 2 && body[0] == b'0' && (body[1] | 0x20) == b'x';
    let digits_start = if hex { 2 } else { 0 };
    let is_digit = |c: u8| c.is_ascii_digit() || (hex && c.is_ascii_hexdigit());

    // Mantissa: digits, `_`, at most one `.`, at least one digit.
    let mut i = digits_start;
    let mut saw_digit = false;
    let mut saw_dot = false;
    let mut underscores = false;
    while let Some(&c) = body.get(i) {
        if is_digit(c) {
            saw_digit = true;
        } else if c == b'_' {
            underscores = true;
        } else if c == b'.' && !saw_dot {
            saw_dot = true;
        } else {
            break;
        }
        i += 1;
    }
    if !saw_digit {
        return None;
    }
    let mantissa_end = i;
    // Exponent: `e` (decimal) or `p` (hex, required), a sign, then digits and
    // `_`, starting with a digit.
    let exp_char = if hex { b'p' } else { b'e' };
    let mut exp_range = None;
    if body.get(i).is_some_and(|&c| (c | 0x20) == exp_char) {
        i += 1;
        if matches!(body.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !body.get(i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let start = i;
        while let Some(&c) = body.get(i) {
            if c == b'_' {
                underscores = true;
            } else if !c.is_ascii_digit() {
                break;
            }
            i += 1;
        }
        exp_range = Some((start, i));
    } else if hex {
        return None;
    }
    if i != body.len() || (underscores && !underscores_between_digits(body, hex)) {
        return None;
    }

    let v = if hex {
        let exp = match exp_range {
            Some((a, b)) => {
                let sign_neg = body.get(a - 1) == Some(&b'-');
                // Saturating, like Go's cap at 10000: far past any f64.
                let mut e: i64 = 0;
                for &c in &body[a..b] {
                    if c.is_ascii_digit() {
                        e = (e * 10 + i64::from(c - b'0')).min(100_000);
                    }
                }
                if sign_neg {
                    -e
                } else {
                    e
                }
            }
            None => 0,
        };
        hex_to_f64(&body[2..mantissa_end], exp)?
    } else if underscores {
        // At most the line length; rare. Stack buffer for the common short case.
        let mut buf = [0u8; 64];
        let mut heap = Vec::new();
        let cleaned: &[u8] = if body.len() <= buf.len() {
            let mut n = 0;
            for &c in body.iter().filter(|&&c| c != b'_') {
                buf[n] = c;
                n += 1;
            }
            &buf[..n]
        } else {
            heap.extend(body.iter().copied().filter(|&c| c != b'_'));
            &heap
        };
        std::str::from_utf8(cleaned).ok()?.parse::<f64>().ok()?
    } else {
        std::str::from_utf8(body).ok()?.parse::<f64>().ok()?
    };
    // Go: a finite literal beyond f64's range is ErrRange, an error.
    if v.is_infinite() {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// Go's rule for `_` in a number (after the sign): each one sits between
/// two digits, or between the `0x` prefix and a digit. Hex digits count as
/// digits only in a hex literal.
fn underscores_between_digits(body: &[u8], hex: bool) -> bool {
    #[derive(PartialEq)]
    enum Last {
        Start,
        Digit,
        Underscore,
        Other,
    }
    let (mut last, rest) = if hex {
        (Last::Digit, &body[2..])
    } else {
        (Last::Start, body)
    };
    for &c in rest {
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            last = Last::Digit;
        } else if c == b'_' {
            if last != Last::Digit {
                return false;
            }
            last = Last::Underscore;
        } else {
            if last == Last::Underscore {
                return false;
            }
            last = Last::Other;
        }
    }
    last != Last::Underscore
}

/// A hex mantissa (`[0-9a-fA-F_]*` with at most one `.`, already checked)
/// times 2^`exp`, rounded to nearest, ties to even, as Go's `atofHex` does.
/// `None` when the result overflows (Go's `ErrRange`).
fn hex_to_f64(mantissa: &[u8], exp: i64) -> Option<f64> {
    // Up to 16 significant hex digits (64 bits) are kept exactly; any
    // further non-zero digit only sets the sticky bit, which is all that
    // rounding to 53 bits needs.
    let mut m: u64 = 0;
    let mut kept = 0u32;
    let mut sticky = false;
    let mut exp2 = exp;
    let mut after_dot = false;
    for &c in mantissa {
        let d = u64::from(match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            b'.' => {
                after_dot = true;
                continue;
            }
            // `_`; the caller admits nothing else.
            _ => continue,
        });
        if kept == 0 && d == 0 {
            // A leading zero: only moves the point.
            if after_dot {
                exp2 -= 4;
            }
            continue;
        }
        if kept < 16 {
            m = (m << 4) | d;
            kept += 1;
            if after_dot {
                exp2 -= 4;
            }
        } else {
            sticky |= d != 0;
            if !after_dot {
                exp2 += 4;
            }
        }
    }
    if m == 0 {
        return Some(0.0);
    }
    // Normalise: the value is m * 2^exp2 with m's top bit at 63, so it lies
    // in [2^top, 2^(top+1)).
    let lz = m.leading_zeros();
    let m = m << lz;
    let top = exp2 + 63 - i64::from(lz);
    if top > 1023 {
        return None;
    }
    if top < -1075 {
        // Below half the smallest subnormal.
        return Some(0.0);
    }
    // Bits dropped from the 64-bit m: 11 for a normal result, more for a
    // subnormal one (whose exponent is pinned at -1022).
    let shift = 11 + u32::try_from((-1022 - top).max(0)).unwrap_or(64);
    let (mut q, rem, half) = if shift >= 64 {
        // Only top == -1075 gets here (shift 64): q is 0, and m >= 2^63 is
        // the remainder against a half of exactly 2^63.
        (0u64, m, 1u64 << 63)
    } else {
        (m >> shift, m & ((1u64 << shift) - 1), 1u64 << (shift - 1))
    };
    if rem > half || (rem == half && (sticky || q & 1 == 1)) {
        q += 1;
    }
    let bits = if top >= -1022 {
        // q is in [2^52, 2^53]; 2^53 carries into the exponent.
        let (q, top) = if q == 1 << 53 {
            (q >> 1, top + 1)
        } else {
            (q, top)
        };
        if top > 1023 {
            return None;
        }
        let biased = u64::try_from(top + 1023).unwrap_or(0);
        (biased << 52) | (q & ((1 << 52) - 1))
    } else {
        // Subnormal: q < 2^52, or exactly 2^52 after rounding up, which is
        // the bit pattern of the smallest normal number.
        q
    };
    Some(f64::from_bits(bits))
}

/// `name:value[:value…]|type[|@rate][|#tags][|T<ts>][|c:…][|e:…][|card:…]`,
/// read as the Agent does: fields split on `|`, name and value at the first
/// `:`, no trimming of whitespace anywhere (`a:1|c ` has type `c `).
fn parse_metric(s: &str) -> Result<Metric<'_>, ParseError> {
    let (head, rest) = cut_near(s, b'|');
    let (name, raw_values) = match cut(head, b':') {
        (name, Some(values)) => (name, values),
        (_, None) => return Err(ParseError::MissingColon),
    };
    if name.is_empty() {
        return Err(ParseError::EmptyName);
    }
    if raw_values.is_empty() {
        return Err(ParseError::EmptyValue);
    }
    let rest = rest.ok_or(ParseError::MissingType)?;
    let (kind, after) = match type_prefix(rest.as_bytes()) {
        Some((kind, len)) => (kind, rest.as_bytes().get(len..).unwrap_or_default()),
        None => {
            return Err(match rest.as_bytes() {
                [] | [b'|', ..] => ParseError::MissingType,
                _ => ParseError::UnknownType,
            })
        }
    };
    let fields = match after {
        [] => None,
        [b'|', ..] => Some(rest.get(rest.len() - after.len() + 1..).unwrap_or_default()),
        _ => return Err(ParseError::UnknownType),
    };
    // A set keeps its raw member, colons and all; anything else must be a
    // list of numbers with empty items skipped (`1::2`), as in the Agent.
    // The one value of a single-value line is kept, so the aggregator does
    // not parse it again.
    let mut value = None;
    if kind != MetricType::Set {
        let mut count = 0usize;
        for item in SplitNonEmpty::new(raw_values, b':') {
            let v = parse_value(item).ok_or(ParseError::BadValue)?;
            if count == 0 {
                value = Some(v);
            }
            count += 1;
        }
        match count {
            0 => return Err(ParseError::EmptyValue),
            1 => {}
            _ => value = None,
        }
    }

    let mut metric = Metric {
        name,
        raw_values,
        value,
        kind,
        sample_rate: 1.0,
        tags: Tags::default(),
        timestamp: None,
    };
    for field in SplitNonEmpty::new(fields.unwrap_or_default(), b'|') {
        apply_field(&mut metric, field)?;
    }
    Ok(metric)
}

/// The metric type spelled at the start of `b` (the bytes after the first
/// `|`), and the spelling's length: one or two bytes, matched directly rather
/// than scanned. `None` when no type is spelled there. Shared by
/// [`parse_metric`] and the scanner's fast path, so both read the same types.
#[inline(always)]
pub(super) fn type_prefix(b: &[u8]) -> Option<(MetricType, usize)> {
    Some(match b {
        [b'c', ..] => (MetricType::Counter, 1),
        [b'g', ..] => (MetricType::Gauge, 1),
        [b'h', ..] => (MetricType::Histogram, 1),
        [b'm', b's', ..] => (MetricType::Timer, 2),
        [b's', ..] => (MetricType::Set, 1),
        [b'd', ..] => (MetricType::Distribution, 1),
        _ => return None,
    })
}

/// Applies one optional field of a metric line (the text between two `|`
/// after the type) to `metric`. Optional fields come in any order; a repeated
/// one: the last wins. Unknown fields (`c:` container id, `e:`, `card:`,
/// anything else, even empty) are ignored, as the Agent does. Shared by
/// [`parse_metric`] and the scanner's fast path.
#[inline(always)]
pub(super) fn apply_field<'a>(metric: &mut Metric<'a>, field: &'a str) -> Result<(), ParseError> {
    // The body after the field's one-byte (ASCII) key; `strip_prefix` of a
    // known byte needs no char-boundary check, unlike `get(1..)`.
    let body = |key: char| field.strip_prefix(key).unwrap_or_default();
    match field.as_bytes().first() {
        Some(b'#') => metric.tags = Tags(body('#')),
        Some(b'@') => {
            // Any number Go's ParseFloat reads, as the Agent takes it (0,
            // negatives, above 1, NaN, infinities); the weight it gives is
            // [`sample_weight`]'s, bounded, at the aggregator.
            metric.sample_rate = parse_value(body('@')).ok_or(ParseError::BadSampleRate)?;
        }
        Some(b'T') => {
            let ts = body('T')
                .parse::<i64>()
                .map_err(|_| ParseError::BadTimestamp)?;
            // The Agent rejects timestamps below 1 too.
            if ts < 1 {
                return Err(ParseError::BadTimestamp);
            }
            metric.timestamp = Some(ts);
        }
        _ => {}
    }
    Ok(())
}

/// Splits at the first `sep` (ASCII): the part before and, if found, after.
fn split_field(s: &str, sep: char) -> (&str, Option<&str>) {
    match s.split_once(sep) {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

/// The non-empty tags of a `#a,b:c` field body, owned (events and checks are rare).
fn owned_tags(raw: &str) -> Vec<String> {
    raw.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `Some(v)` unless empty: an empty `h:` means "no host", as in the Agent.
fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

/// `_e{title_len,text_len}:title|text|d:|h:|k:|p:|s:|t:|#tags`.
///
/// Lengths are in bytes. Stricter than the Agent on one point: the bytes
/// right after the title and after the text must be `|` (or the end of the
/// line), so lengths that do not match the content are [`ParseError::BadEvent`]
/// instead of silently cutting the title or text. This also guarantees every
/// cut is on a character boundary. A bad optional field is ignored.
fn parse_event(s: &str) -> Result<Event, ParseError> {
    let (header, body) = s.split_once(':').ok_or(ParseError::BadEvent)?;
    let lens = header
        .strip_prefix("_e{")
        .and_then(|h| h.strip_suffix('}'))
        .ok_or(ParseError::BadEvent)?;
    let (title_len, text_len) = lens.split_once(',').ok_or(ParseError::BadEvent)?;
    // usize parsing rejects negatives and overflow; huge values fail the
    // length check below through checked arithmetic, never a slice panic.
    let title_len: usize = title_len.parse().map_err(|_| ParseError::BadEvent)?;
    let text_len: usize = text_len.parse().map_err(|_| ParseError::BadEvent)?;
    if title_len == 0 {
        return Err(ParseError::BadEvent);
    }
    let text_start = title_len.checked_add(1).ok_or(ParseError::BadEvent)?;
    let text_end = text_start
        .checked_add(text_len)
        .ok_or(ParseError::BadEvent)?;
    let bytes = body.as_bytes();
    if bytes.get(title_len) != Some(&b'|') {
        return Err(ParseError::BadEvent);
    }
    let fields = match bytes.len().cmp(&text_end) {
        std::cmp::Ordering::Less => return Err(ParseError::BadEvent),
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater if bytes.get(text_end) == Some(&b'|') => {
            body.get(text_end + 1..)
        }
        std::cmp::Ordering::Greater => return Err(ParseError::BadEvent),
    };
    let title = body.get(..title_len).ok_or(ParseError::BadEvent)?;
    let text = body.get(text_start..text_end).ok_or(ParseError::BadEvent)?;

    // The Agent unescapes `\n` in both title and text.
    let mut event = Event {
        title: title.replace("\\n", "\n"),
        text: text.replace("\\n", "\n"),
        timestamp: None,
        host: None,
        aggregation_key: None,
        priority: Priority::Normal,
        source_type: None,
        alert_type: AlertType::Info,
        tags: Vec::new(),
    };
    for field in fields.into_iter().flat_map(|f| f.split('|')) {
        if let Some(v) = field.strip_prefix("d:") {
            if let Ok(ts) = v.parse::<i64>() {
                event.timestamp = Some(ts);
            }
        } else if let Some(v) = field.strip_prefix("h:") {
            event.host = non_empty(v);
        } else if let Some(v) = field.strip_prefix("k:") {
            event.aggregation_key = non_empty(v);
        } else if let Some(v) = field.strip_prefix("p:") {
            match v {
                "normal" => event.priority = Priority::Normal,
                "low" => event.priority = Priority::Low,
                _ => {}
            }
        } else if let Some(v) = field.strip_prefix("s:") {
            event.source_type = non_empty(v);
        } else if let Some(v) = field.strip_prefix("t:") {
            match v {
                "info" => event.alert_type = AlertType::Info,
                "warning" => event.alert_type = AlertType::Warning,
                "error" => event.alert_type = AlertType::Error,
                "success" => event.alert_type = AlertType::Success,
                _ => {}
            }
        } else if let Some(v) = field.strip_prefix('#') {
            event.tags = owned_tags(v);
        }
    }
    Ok(event)
}

/// `_sc|name|status|d:|h:|#tags|m:message` (the `_sc|` already stripped).
/// Status is exactly `0`..`3`. Optional fields in any order, the last of a
/// kind wins, a bad one is ignored. As in the Agent, `m:` is an ordinary
/// field: a `|` inside the message ends it.
fn parse_service_check(body: &str) -> Result<ServiceCheck, ParseError> {
    let (name, rest) = split_field(body, '|');
    if name.is_empty() {
        return Err(ParseError::BadServiceCheck);
    }
    let rest = rest.ok_or(ParseError::BadServiceCheck)?;
    let (status, fields) = split_field(rest, '|');
    let status = match status {
        "0" => CheckStatus::Ok,
        "1" => CheckStatus::Warning,
        "2" => CheckStatus::Critical,
        "3" => CheckStatus::Unknown,
        _ => return Err(ParseError::BadServiceCheck),
    };
    let mut check = ServiceCheck {
        name: name.to_owned(),
        status,
        timestamp: None,
        host: None,
        tags: Vec::new(),
        message: None,
    };
    for field in fields.into_iter().flat_map(|f| f.split('|')) {
        if let Some(v) = field.strip_prefix("d:") {
            if let Ok(ts) = v.parse::<i64>() {
                check.timestamp = Some(ts);
            }
        } else if let Some(v) = field.strip_prefix("h:") {
            check.host = non_empty(v);
        } else if let Some(v) = field.strip_prefix('#') {
            check.tags = owned_tags(v);
        } else if let Some(v) = field.strip_prefix("m:") {
            check.message = Some(v.to_owned());
        }
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_byte_agrees_with_position_on_both_sides_of_the_memchr_cut() {
        // Every length around the SWAR/memchr cut and past one AVX2 vector,
        // the needle at every position, once and twice, and absent.
        for len in 0..(3 * MEMCHR_FROM + 5) {
            let hay = vec![b'a'; len];
            assert_eq!(find_byte(&hay, b'|'), None, "len {len}");
            for at in 0..len {
                let mut h = hay.clone();
                h[at] = b'|';
                if at + 3 < len {
                    h[at + 3] = b'|';
                }
                assert_eq!(find_byte(&h, b'|'), Some(at), "len {len} at {at}");
            }
        }
    }

    #[test]
    fn value_fast_path_gives_the_slow_paths_bits() {
        for v in [
            "0",
            "-0",
            "1",
            "7",
            "1.",
            "1.5",
            ".5",
            "-.5",
            "-",
            ".",
            "-.",
            "",
            "1..2",
            "123456789012345",
            "1234567890123456",
            "-999999999999999",
            "12345678.1234567",
            "0.000000000000001",
            "1e3",
            "+1",
            "1_0",
            "00012.500",
            "9007199254740993",
        ] {
            let fast = parse_value_bytes(v.as_bytes()).map(f64::to_bits);
            let slow = parse_go_float(v.as_bytes()).map(f64::to_bits);
            assert_eq!(fast, slow, "{v:?}");
        }
    }

    #[test]
    fn long_lines_parse_the_same_through_both_entry_points() {
        let tags: Vec<String> = (0..50)
            .map(|i| format!("key{i}:{}", "v".repeat(140)))
            .collect();
        let line = format!(
            "{}:1.5|d|@0.5|#{}|T1700000000",
            "n".repeat(200),
            tags.join(",")
        );
        let m = metric(&line);
        assert_eq!(m.name.len(), 200);
        assert_eq!(m.tags.iter().count(), 50);
        assert_eq!(m.sample_rate, 0.5);
        assert_eq!(m.timestamp, Some(1_700_000_000));
        assert_eq!(parse_str(&line), parse_line(line.as_bytes()));
        let datagram = format!("{line}\n{line}\r\n\n{line}");
        assert_eq!(lines(datagram.as_bytes()).count(), 3);
    }

    fn metric(line: &str) -> Metric<'_> {
        match parse_line(line.as_bytes()) {
            Ok(Parsed::Metric(m)) => m,
            other => panic!("{line:?}: expected a metric, got {other:?}"),
        }
    }

    fn event(line: &str) -> Event {
        match parse_line(line.as_bytes()) {
            Ok(Parsed::Event(e)) => *e,
            other => panic!("{line:?}: expected an event, got {other:?}"),
        }
    }

    fn check(line: &str) -> ServiceCheck {
        match parse_line(line.as_bytes()) {
            Ok(Parsed::ServiceCheck(c)) => *c,
            other => panic!("{line:?}: expected a service check, got {other:?}"),
        }
    }

    struct Case {
        line: &'static str,
        name: &'static str,
        kind: MetricType,
        values: &'static [f64],
        rate: f64,
        tags: &'static [&'static str],
        ts: Option<i64>,
    }

    const fn case(
        line: &'static str,
        name: &'static str,
        kind: MetricType,
        values: &'static [f64],
    ) -> Case {
        Case {
            line,
            name,
            kind,
            values,
            rate: 1.0,
            tags: &[],
            ts: None,
        }
    }

    #[test]
    fn valid_metric_lines() {
        use MetricType::*;
        let cases = [
            case("page.views:1|c", "page.views", Counter, &[1.0]),
            case("temp:-3.5|g", "temp", Gauge, &[-3.5]),
            case("lat:12|h", "lat", Histogram, &[12.0]),
            case("req.time:320|ms", "req.time", Timer, &[320.0]),
            case("size:1.25|d", "size", Distribution, &[1.25]),
            // several values per line, empty items skipped (Agent)
            case("name:1:2:3|h", "name", Histogram, &[1.0, 2.0, 3.0]),
            case("name:1::2|d", "name", Distribution, &[1.0, 2.0]),
            case("name:1:|ms", "name", Timer, &[1.0]),
            case("name::7|c", "name", Counter, &[7.0]),
            // float syntax accepted by the Agent's ParseFloat
            case("a:1e3|c", "a", Counter, &[1000.0]),
            case("a:+1|c", "a", Counter, &[1.0]),
            case("a:.5|c", "a", Counter, &[0.5]),
            case("a:5.|c", "a", Counter, &[5.0]),
            case("a:-0|g", "a", Gauge, &[-0.0]),
            case("a:0x1p3|c", "a", Counter, &[8.0]),
            case("a:1_000:0X_1P-1|g", "a", Gauge, &[1000.0, 0.5]),
            case("a:Infinity|g", "a", Gauge, &[f64::INFINITY]),
            case("a:0.1|g", "a", Gauge, &[0.1]),
            case(
                "a:1234567890123456789|g",
                "a",
                Gauge,
                &[1234567890123456789.0],
            ),
            // names are not trimmed, and may be any UTF-8
            case("name with space:1|c", "name with space", Counter, &[1.0]),
            case(" lead:1|c", " lead", Counter, &[1.0]),
            case("métrique.é:1|c", "métrique.é", Counter, &[1.0]),
            // `_sc`/`_e` prefixes without the full marker stay metrics
            case("_scale:1|c", "_scale", Counter, &[1.0]),
            case("_e:1|c", "_e", Counter, &[1.0]),
            Case {
                rate: 0.5,
                ..case("a:2|c|@0.5", "a", Counter, &[2.0])
            },
            Case {
                rate: 1.0,
                ..case("a:2|c|@1", "a", Counter, &[2.0])
            },
            Case {
                rate: 1.0,
                ..case("a:2|c|@0.5|@1", "a", Counter, &[2.0])
            },
            Case {
                ts: Some(1_700_000_000),
                ..case("a:1|g|T1700000000", "a", Gauge, &[1.0])
            },
            Case {
                tags: &["env:prod", "service:web"],
                ..case("a:1|c|#env:prod,service:web", "a", Counter, &[1.0])
            },
            Case {
                tags: &["host:box", "a"],
                ..case("a:1|h|#host:box,a", "a", Histogram, &[1.0])
            },
            // python `datadog` client: `|c:` container id
            case("a:1|c|c:abc123", "a", Counter, &[1.0]),
            Case {
                tags: &["x"],
                ..case("a:1|c|#x|c:abc123", "a", Counter, &[1.0])
            },
            // any order
            Case {
                rate: 0.5,
                tags: &["a:b"],
                ts: Some(1_700_000_000),
                ..case("a:1|c|#a:b|c:abc123|@0.5|T1700000000", "a", Counter, &[1.0])
            },
            Case {
                rate: 0.25,
                tags: &["x"],
                ts: Some(1_700_000_000),
                ..case("a:1|c|T1700000000|@0.25|#x", "a", Counter, &[1.0])
            },
            // unknown and empty fields ignored
            case("a:1|c|e:it-abc|card:high|x:unknown|", "a", Counter, &[1.0]),
            Case {
                tags: &["t"],
                ..case("a:1|c||#t", "a", Counter, &[1.0])
            },
            // repeated tag field: the last wins
            Case {
                tags: &["b"],
                ..case("a:1|c|#a|#b", "a", Counter, &[1.0])
            },
            // empty tags skipped
            case("a:1|c|#", "a", Counter, &[1.0]),
            Case {
                tags: &["a", "b"],
                ..case("a:1|c|#,a,,b,", "a", Counter, &[1.0])
            },
        ];
        for c in &cases {
            let m = metric(c.line);
            assert_eq!(m.name, c.name, "{:?}", c.line);
            assert_eq!(m.kind, c.kind, "{:?}", c.line);
            let values: Vec<f64> = m.values().collect();
            assert_eq!(values.len(), c.values.len(), "{:?}", c.line);
            for (got, want) in values.iter().zip(c.values) {
                assert_eq!(got.to_bits(), want.to_bits(), "{:?}", c.line);
            }
            assert_eq!(m.sample_rate, c.rate, "{:?}", c.line);
            assert_eq!(m.tags.iter().collect::<Vec<_>>(), c.tags, "{:?}", c.line);
            assert_eq!(m.timestamp, c.ts, "{:?}", c.line);
        }
    }

    #[test]
    fn a_single_value_is_kept_and_values_agree_with_reading_the_raw_field() {
        let bits = |m: &Metric<'_>| m.values().map(f64::to_bits).collect::<Vec<_>>();
        for line in [
            "a:1|c",
            "a:-2.5|g|#x:y",
            "a:0x1p3|h",
            "a:1::|ms",
            "a:nan|g",
            "a:1:2|h",
            "a::3:4.5|d|@0.5",
            "a:1_000|c",
        ] {
            let m = metric(line);
            let reread = Metric { value: None, ..m };
            assert_eq!(bits(&m), bits(&reread), "{line}");
            let n = bits(&reread).len();
            assert_eq!(m.value.is_some(), n == 1, "{line}");
            if let Some(v) = m.value {
                assert_eq!(Some(v.to_bits()), bits(&reread).first().copied(), "{line}");
            }
        }
        let set = metric("u:1|s");
        assert_eq!(set.value, None);
        assert_eq!(set.values().count(), 0);
        // A hand-built set with a value still yields nothing.
        assert_eq!(
            Metric {
                value: Some(1.0),
                ..set
            }
            .values()
            .count(),
            0
        );
    }

    #[test]
    fn sets_keep_colons_and_yield_no_values() {
        let m = metric("daemon:abc:def|s");
        assert_eq!(m.kind, MetricType::Set);
        assert_eq!(m.name, "daemon");
        assert_eq!(m.set_value(), "abc:def");
        assert_eq!(m.values().count(), 0);
        // a set member need not be numeric, and may be only colons
        assert_eq!(metric("users:alice|s").set_value(), "alice");
        assert_eq!(metric("users:::|s").set_value(), "::");
        assert_eq!(metric("users:1.5|s|#a").set_value(), "1.5");
    }

    #[test]
    fn nan_and_inf_parse_and_are_yielded() {
        let v: Vec<f64> = metric("a:nan|g").values().collect();
        assert!(v.len() == 1 && v[0].is_nan());
        let v: Vec<f64> = metric("a:inf:-Infinity|h").values().collect();
        assert_eq!(v, [f64::INFINITY, f64::NEG_INFINITY]);
    }

    #[test]
    fn raw_fields_borrow_from_the_line() {
        let m = metric("a.b:1:2|h|@0.5|#x:y,z");
        assert_eq!(m.raw_values, "1:2");
        assert_eq!(m.tags.raw(), "x:y,z");
        assert!(!m.tags.is_empty());
        assert!(metric("a:1|c").tags.is_empty());
    }

    #[test]
    fn malformed_lines_give_the_specific_error() {
        use ParseError::*;
        let cases: &[(&[u8], ParseError)] = &[
            (b"", MissingColon),
            (b"abc", MissingColon),
            (b"abc|c", MissingColon),
            (b"a|b:1|c", MissingColon),
            (b":1|c", EmptyName),
            (b":|c", EmptyName),
            (b"name:|c", EmptyValue),
            (b"name:|s", EmptyValue),
            (b"name::|c", EmptyValue),
            (b"name:::|g", EmptyValue),
            (b"name:1", MissingType),
            (b"name:1|", MissingType),
            (b"name:1||#a", MissingType),
            (b"name:1|x", UnknownType),
            (b"name:1|C", UnknownType),
            (b"name:1|c ", UnknownType),
            (b"name:1|msx", UnknownType),
            (b"name:1|cc", UnknownType),
            (b"name:abc|c", BadValue),
            (b"name: 1|c", BadValue),
            (b"name:1 |g", BadValue),
            (b"name:1:x|h", BadValue),
            (b"name:1,2|h", BadValue),
            (b"name:0x10|c", BadValue),
            (b"name:1e400|c", BadValue),
            (b"name:-nan|g", BadValue),
            (b"name:1__0|g", BadValue),
            (b"name:1-|c", BadValue),
            (b"name:--1|c", BadValue),
            (b"name:1..2|c", BadValue),
            (b"name:.|c", BadValue),
            (b"name:-|c", BadValue),
            (b"a:b:1|c", BadValue),
            (b"name:1|c|@", BadSampleRate),
            (b"name:1|c|@abc", BadSampleRate),
            (b"name:1|c|@0.5 ", BadSampleRate),
            (b"name:1|c|T", BadTimestamp),
            (b"name:1|c|Tabc", BadTimestamp),
            (b"name:1|c|T1.5", BadTimestamp),
            (b"name:1|c|T0", BadTimestamp),
            (b"name:1|c|T-5", BadTimestamp),
            (b"name:1|c|T99999999999999999999", BadTimestamp),
            (b"name:\xff|c", InvalidUtf8),
            (b"na\xc3me:1|c", InvalidUtf8),
            (b"name:1|c|#\xe2\x82", InvalidUtf8),
            (b"_e{0,4}:|text", BadEvent),
            (b"_e{5,4}:title|tex", BadEvent),
            (b"_e{4,4}:title|text", BadEvent),
            (b"_e{5,3}:title|text", BadEvent),
            (b"_e{5,5}:title|text", BadEvent),
            (b"_e{5,4}title|text", BadEvent),
            (b"_e{a,4}:title|text", BadEvent),
            (b"_e{5}:title|text", BadEvent),
            (b"_e{5,}:title|text", BadEvent),
            (b"_e{-1,4}:title|text", BadEvent),
            (b"_e{5,4:title|text", BadEvent),
            (b"_e{18446744073709551615,1}:t|x", BadEvent),
            (b"_e{5,18446744073709551615}:title|x", BadEvent),
            (b"_e{99999999999999999999999,1}:a|b", BadEvent),
            (b"_e{1,4}:\xc3\xa9|text", BadEvent),
            (b"_e{5,4}:title", BadEvent),
            (b"_sc|", BadServiceCheck),
            (b"_sc||0", BadServiceCheck),
            (b"_sc|name", BadServiceCheck),
            (b"_sc|name|", BadServiceCheck),
            (b"_sc|name|4", BadServiceCheck),
            (b"_sc|name|ok", BadServiceCheck),
            (b"_sc|name|-1", BadServiceCheck),
            (b"_sc|name|00", BadServiceCheck),
            (b"_sc|name| 0", BadServiceCheck),
        ];
        assert!(cases.len() >= 30);
        for (line, want) in cases {
            assert_eq!(
                parse_line(line),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn line_length_limit() {
        let mut line = b"a:1|c|#".to_vec();
        line.resize(MAX_LINE_LEN, b'x');
        assert!(matches!(parse_line(&line), Ok(Parsed::Metric(_))));
        line.push(b'x');
        assert_eq!(parse_line(&line), Err(ParseError::TooLong));
    }

    #[test]
    fn events() {
        let e = event("_e{5,4}:title|text");
        assert_eq!(
            e,
            Event {
                title: "title".into(),
                text: "text".into(),
                timestamp: None,
                host: None,
                aggregation_key: None,
                priority: Priority::Normal,
                source_type: None,
                alert_type: AlertType::Info,
                tags: vec![],
            }
        );

        let e =
            event("_e{5,4}:title|text|d:1700000000|h:myhost|k:agg|p:low|s:src|t:warning|#a:b,c");
        assert_eq!(e.timestamp, Some(1_700_000_000));
        assert_eq!(e.host.as_deref(), Some("myhost"));
        assert_eq!(e.aggregation_key.as_deref(), Some("agg"));
        assert_eq!(e.priority, Priority::Low);
        assert_eq!(e.source_type.as_deref(), Some("src"));
        assert_eq!(e.alert_type, AlertType::Warning);
        assert_eq!(e.tags, ["a:b", "c"]);

        // `\n` (backslash, n) in the text becomes a newline; 12 bytes on the wire
        let e = event(r"_e{5,12}:title|line1\nline2");
        assert_eq!(e.text, "line1\nline2");

        // bad optional fields are ignored, unknown ones too
        let e = event("_e{5,4}:title|text|d:abc|p:urgent|t:fatal|x:y|c:abc|h:");
        assert_eq!(e.timestamp, None);
        assert_eq!(e.priority, Priority::Normal);
        assert_eq!(e.alert_type, AlertType::Info);
        assert_eq!(e.host, None);

        // a repeated field: the last good one wins
        let e = event("_e{5,4}:title|text|t:error|t:bogus|h:a|h:b");
        assert_eq!(e.alert_type, AlertType::Error);
        assert_eq!(e.host.as_deref(), Some("b"));
        assert_eq!(
            event("_e{1,1}:a|b|t:success|p:normal").alert_type,
            AlertType::Success
        );

        // lengths are bytes: é is 2, 日 is 3
        let e = event("_e{2,3}:é|日");
        assert_eq!((e.title.as_str(), e.text.as_str()), ("é", "日"));

        // the lengths, not the `|`, delimit title and text (as in the Agent)
        let e = event("_e{3,1}:a|b|c");
        assert_eq!((e.title.as_str(), e.text.as_str()), ("a|b", "c"));

        // empty text
        let e = event("_e{5,0}:title|");
        assert_eq!(e.text, "");
        assert_eq!(event("_e{5,0}:title||h:x").host.as_deref(), Some("x"));
    }

    #[test]
    fn service_checks() {
        let c = check("_sc|db.ok|0");
        assert_eq!(
            c,
            ServiceCheck {
                name: "db.ok".into(),
                status: CheckStatus::Ok,
                timestamp: None,
                host: None,
                tags: vec![],
                message: None,
            }
        );
        let c = check("_sc|db|2|d:1700000000|h:box|#a,b|m:down again");
        assert_eq!(c.status, CheckStatus::Critical);
        assert_eq!(c.timestamp, Some(1_700_000_000));
        assert_eq!(c.host.as_deref(), Some("box"));
        assert_eq!(c.tags, ["a", "b"]);
        assert_eq!(c.message.as_deref(), Some("down again"));

        // repeated fields: the last wins; a bad `d:` is ignored
        let c = check("_sc|db|1|h:a|h:b|m:x|m:y|d:abc|#t1|#t2");
        assert_eq!(c.status, CheckStatus::Warning);
        assert_eq!(c.host.as_deref(), Some("b"));
        assert_eq!(c.message.as_deref(), Some("y"));
        assert_eq!(c.timestamp, None);
        assert_eq!(c.tags, ["t2"]);

        assert_eq!(check("_sc|db|3|m:a:b").message.as_deref(), Some("a:b"));
        assert_eq!(check("_sc|db|3").status, CheckStatus::Unknown);
    }

    #[test]
    fn datagram_framing() {
        let dgram = b"a:1|c\nb:2|g\r\n\n\r\nc:3|s";
        let got: Vec<&[u8]> = lines(dgram).collect();
        assert_eq!(got, [&b"a:1|c"[..], b"b:2|g", b"c:3|s"]);
        assert_eq!(lines(b"a:1|c\n").count(), 1);
        assert_eq!(lines(b"").count(), 0);
        assert_eq!(lines(b"\n\n").count(), 0);
        // only one trailing `\r` is dropped, as the Agent's dropCR does
        assert_eq!(lines(b"a\r\r\n").collect::<Vec<_>>(), [b"a\r"]);
        // a bad line drops only itself
        let results: Vec<_> = lines(b"a:1|c\nbad\nb:x|g\nc:2|h")
            .map(|l| parse_line(l).is_ok())
            .collect();
        assert_eq!(results, [true, false, false, true]);
    }

    #[test]
    fn find_byte_matches_position() {
        // every length across two SWAR words, every needle position, and
        // bytes that trip naive has-zero tricks (0x80, 0xff, needle ^ 1)
        for len in 0..40 {
            for at in 0..=len {
                for filler in [b'a', 0x80, 0xff, b'|' ^ 1, 0x00] {
                    let mut hay = vec![filler; len];
                    if at < len {
                        hay[at] = b'|';
                    }
                    if at + 1 < len {
                        hay[at + 1] = b'|';
                    }
                    let want = hay.iter().position(|&c| c == b'|');
                    assert_eq!(find_byte(&hay, b'|'), want, "{hay:?}");
                }
            }
        }
    }

    /// Go's answers, from `strconv.ParseFloat(s, 64)` in Go 1.19.8 (bits in
    /// hex, `None` for an error, [`NAN`] for NaN whatever its payload).
    /// The edge cases of syntax, rounding, subnormals and range.
    #[test]
    fn go_parse_float_table() {
        const NAN: u64 = u64::MAX;
        let table: &[(&str, Option<u64>)] = &[
            ("1", Some(0x3ff0000000000000)),
            ("-2.5", Some(0xc004000000000000)),
            ("1_000", Some(0x408f400000000000)),
            ("1_0.5", Some(0x4025000000000000)),
            ("1__0", None),
            ("_1", None),
            ("1_", None),
            ("1.5_0", Some(0x3ff8000000000000)),
            ("1e1_0", Some(0x4202a05f20000000)),
            ("1_e5", None),
            ("1e_5", None),
            ("+_1", None),
            ("0x1p3", Some(0x4020000000000000)),
            ("0x_1p3", Some(0x4020000000000000)),
            ("0X1P-2", Some(0x3fd0000000000000)),
            ("0x1.8p1", Some(0x4008000000000000)),
            ("0x.8p1", Some(0x3ff0000000000000)),
            ("0x1.p0", Some(0x3ff0000000000000)),
            ("0x10", None),
            ("0x1e3", None),
            ("0xp1", None),
            ("0x", None),
            ("0x1p", None),
            ("0x1p_1", None),
            ("0x1p1_0", Some(0x4090000000000000)),
            ("0x_1_2.3_4p+1_2", Some(0x40f2340000000000)),
            ("0b101", None),
            ("0o7", None),
            ("1e400", None),
            ("-1e400", None),
            ("1e-400", Some(0x0000000000000000)),
            ("4.9e-324", Some(0x0000000000000001)),
            ("2e-324", Some(0x0000000000000000)),
            ("1e", None),
            ("1e+", None),
            (".e1", None),
            (".", None),
            (".5", Some(0x3fe0000000000000)),
            ("5.", Some(0x4014000000000000)),
            ("+5", Some(0x4014000000000000)),
            ("-0", Some(0x8000000000000000)),
            ("1E+3", Some(0x408f400000000000)),
            ("inf", Some(0x7ff0000000000000)),
            ("-inf", Some(0xfff0000000000000)),
            ("+inf", Some(0x7ff0000000000000)),
            ("Infinity", Some(0x7ff0000000000000)),
            ("-INFINITY", Some(0xfff0000000000000)),
            ("iNf", Some(0x7ff0000000000000)),
            ("infin", None),
            ("infinityy", None),
            ("nan", Some(NAN)),
            ("NaN", Some(NAN)),
            ("NAN", Some(NAN)),
            ("-nan", None),
            ("+nan", None),
            ("nan1", None),
            (" 1", None),
            ("1 ", None),
            ("", None),
            ("-", None),
            ("+", None),
            ("0x1p-1074", Some(0x0000000000000001)),
            ("0x1p-1075", Some(0x0000000000000000)),
            ("0x1.8p-1075", Some(0x0000000000000001)),
            ("0x1p-1076", Some(0x0000000000000000)),
            ("0x1.fffffffffffff8p1023", None),
            ("0x1.fffffffffffff7p1023", Some(0x7fefffffffffffff)),
            ("0x1p1023", Some(0x7fe0000000000000)),
            ("0x1p1024", None),
            ("0x1.00000000000008p0", Some(0x3ff0000000000000)),
            ("0x1.00000000000018p0", Some(0x3ff0000000000002)),
            ("0x1.0000000000000800000000001p0", Some(0x3ff0000000000001)),
            ("0x0.0000000000001p-1022", Some(0x0000000000000001)),
            ("0x0.00000000000008p-1022", Some(0x0000000000000000)),
            ("-0x0p0", Some(0x8000000000000000)),
            ("0x1000000000000000000000p-100", Some(0x3ef0000000000000)),
            ("0x1p99999999999", None),
            ("0x1p-99999999999", Some(0x0000000000000000)),
            ("1e99999999999", None),
            ("0e99999999999", Some(0x0000000000000000)),
            ("9007199254740993", Some(0x4340000000000000)),
            ("0.1e-400000", Some(0x0000000000000000)),
        ];
        assert!(table.len() > 80);
        for &(s, want) in table {
            let got = parse_value(s).map(|v| if v.is_nan() { NAN } else { v.to_bits() });
            assert_eq!(got, want, "{s:?}: got {got:x?}, Go {want:x?}");
        }
    }

    #[test]
    fn fast_value_parser_matches_the_general_one() {
        let items = [
            "0",
            "-0",
            "1",
            "42.5",
            "-3.25",
            "007.50",
            "1.",
            ".5",
            "-.5",
            ".",
            "-",
            "",
            "123456789012345",
            "1234567890123456",
            "0.1",
            "0.3",
            "2.675",
            "9007199254740993",
            "1e3",
            "+1",
            "nan",
            "inf",
            "-inf",
            "1.2.3",
            "abc",
            "1_0",
            "0.000000000000001",
            "99999999999999.9",
            "3.14159265358979",
        ];
        for item in items {
            // The fast path must agree with the general one.
            let want = parse_go_float(item.as_bytes());
            let got = parse_value_bytes(item.as_bytes());
            assert_eq!(
                got.map(f64::to_bits),
                want.map(f64::to_bits),
                "{item:?}: {got:?} vs {want:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn fast_value_parser_agrees_on_random_decimals(s in "-?[0-9]{0,17}(\\.[0-9]{0,17})?") {
            let want = s.parse::<f64>().ok().map(f64::to_bits);
            let got = parse_value_bytes(s.as_bytes()).map(f64::to_bits);
            proptest::prop_assert_eq!(got, want, "{:?}", s);
        }
    }
    #[test]
    fn parse_str_agrees_with_parse_line() {
        for line in [
            "a:1|c",
            "a:1:2::3|h|@0.5|#x:y,z|T1700000000",
            "daemon:abc:def|s",
            "_e{2,3}:ab|cde|t:error",
            "_sc|db|1|m:slow",
            "bad",
            "a:x|c",
            "é:1|g|#ü",
        ] {
            assert_eq!(parse_str(line), parse_line(line.as_bytes()), "{line:?}");
        }
    }

    #[test]
    fn error_codes_are_distinct() {
        use ParseError::*;
        let all = [
            MissingColon,
            MissingType,
            EmptyName,
            EmptyValue,
            BadValue,
            UnknownType,
            BadSampleRate,
            BadTimestamp,
            InvalidUtf8,
            TooLong,
            BadEvent,
            BadServiceCheck,
        ];
        let mut codes: Vec<_> = all.iter().map(ParseError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(BadSampleRate.to_string().contains("|@0.5"));
    }
}
