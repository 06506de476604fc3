//! Decode: tracer payloads (msgpack, `/v0.3|v0.4/traces` and
//! `/v0.5/traces`) into protobuf spans, one `Vec` per trace chunk.
//!
//! In: a request body and a memory allowance. Out: the traces, or a
//! [`DecodeError`] (the request is answered 400, or refused at the memory
//! ceiling for [`DecodeError::OverBudget`]).
//!
//! Must never: allocate from a count read on the wire (a count is checked
//! against the bytes left, each item taking at least one, and capacity is
//! reserved for at most [`MAX_PREALLOC`] items), recurse without a bound
//! (skipping an unknown value is iterative, to [`MAX_DEPTH`] levels), panic,
//! or hold more than its allowance: every string, span and map entry is
//! charged an estimate of its heap bytes as it is decoded.
//!
//! Written here rather than taken from `libdd-trace-utils`: its decoders
//! reserve `Vec::with_capacity(count)` from the wire's array lengths, so one
//! 5-byte array header claiming 4 G traces aborts the process.

use std::collections::HashMap;

use libdd_trace_protobuf::pb;

/// Items reserved up front for any array or map, whatever its header says.
const MAX_PREALLOC: usize = 256;
/// Nesting a skipped value may have (span links, meta_struct, unknown keys).
pub const MAX_DEPTH: usize = 32;
/// What a decoded string costs beyond its bytes (the `String` and allocator
/// slack), a span beyond its strings (the struct, two hash maps), and a map
/// entry beyond its strings (its slot with load-factor slack).
const STRING_COST: usize = 32;
const SPAN_COST: usize = 320;
const ENTRY_COST: usize = 48;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ends inside a value.
    #[error("truncated msgpack")]
    Truncated,
    /// A value of the wrong type, or a marker msgpack does not define.
    #[error("malformed msgpack: {0}")]
    Malformed(&'static str),
    /// A count larger than the bytes left could hold.
    #[error("msgpack claims {0} items, more than the body holds")]
    ImpossibleCount(u64),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("msgpack nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A span with a zero trace or span id.
    #[error("a span has a zero trace_id or span_id")]
    ZeroId,
    /// A v0.5 string index outside the dictionary.
    #[error("v0.5 string index {0} is outside the dictionary")]
    BadIndex(u64),
    /// Decoding would hold more than the allowance.
    #[error("the decoded traces would exceed the trace relay's memory share")]
    OverBudget,
}

/// The traces of one payload and what holding them costs.
#[derive(Debug, Default)]
pub struct Decoded {
    /// One `Vec` of spans per trace chunk, as the tracer grouped them.
    pub traces: Vec<Vec<pb::Span>>,
    /// Estimated heap bytes of `traces`.
    pub cost: usize,
}

/// A reader over a body with a memory allowance.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    cost: usize,
    allowance: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], allowance: usize) -> Self {
        Self {
            buf,
            pos: 0,
            cost: 0,
            allowance,
        }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn charge(&mut self, bytes: usize) -> Result<(), DecodeError> {
        self.cost = self.cost.saturating_add(bytes);
        if self.cost > self.allowance {
            return Err(DecodeError::OverBudget);
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.left() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// A count of items that each take at least one byte.
    fn count(&self, n: u64) -> Result<usize, DecodeError> {
        match usize::try_from(n) {
            Ok(c) if c <= self.left() => Ok(c),
            _ => Err(DecodeError::ImpossibleCount(n)),
        }
    }

    /// An array header; `None` for nil.
    fn array(&mut self) -> Result<Option<usize>, DecodeError> {
        let m = self.byte()?;
        let n = match m {
            0x90..=0x9f => u64::from(m & 0x0f),
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            0xc0 => return Ok(None),
            _ => return Err(DecodeError::Malformed("expected an array")),
        };
        self.count(n).map(Some)
    }

    /// A map header; `None` for nil. Each entry takes at least two bytes.
    fn map(&mut self) -> Result<Option<usize>, DecodeError> {
        let m = self.byte()?;
        let n = match m {
            0x80..=0x8f => u64::from(m & 0x0f),
            0xde => self.be(2)?,
            0xdf => self.be(4)?,
            0xc0 => return Ok(None),
            _ => return Err(DecodeError::Malformed("expected a map")),
        };
        match usize::try_from(n) {
            Ok(c) if c.saturating_mul(2) <= self.left() => Ok(Some(c)),
            _ => Err(DecodeError::ImpossibleCount(n)),
        }
    }

    /// Raw string or binary bytes; `None` for nil.
    #[inline]
    fn raw_str(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let m = self.byte()?;
        let n = match m {
            0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 | 0xc4 => usize::from(self.byte()?),
            0xda | 0xc5 => usize::from(u16::from_be_bytes(self.fixed()?)),
            0xdb | 0xc6 => usize::try_from(u32::from_be_bytes(self.fixed()?))
                .map_err(|_| DecodeError::Truncated)?,
            0xc0 => return Ok(None),
            _ => return Err(DecodeError::Malformed("expected a string")),
        };
        let s = self
            .buf
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or(DecodeError::Truncated)?;
        self.pos += n;
        Ok(Some(s))
    }

    /// A string, invalid UTF-8 replaced as the Agent replaces it; nil is "".
    fn string(&mut self) -> Result<String, DecodeError> {
        let Some(bytes) = self.raw_str()? else {
            return Ok(String::new());
        };
        self.charge(bytes.len() + STRING_COST)?;
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8. Tracers' strings nearly always
            // are, and `is_ascii` is several times cheaper than a full
            // validation on strings this short.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) }.to_owned());
        }
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        })
    }

    /// The next `N` bytes, for a fixed-size number.
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Truncated)
    }

    /// Any number as i128 (floats truncated), nil as 0.
    fn int(&mut self) -> Result<i128, DecodeError> {
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => i128::from(m),
            0xe0..=0xff => i128::from(m as i8),
            0xcc => i128::from(self.byte()?),
            0xcd => i128::from(u16::from_be_bytes(self.fixed()?)),
            0xce => i128::from(u32::from_be_bytes(self.fixed()?)),
            0xcf => i128::from(u64::from_be_bytes(self.fixed()?)),
            0xd0 => i128::from(self.byte()? as i8),
            0xd1 => i128::from(i16::from_be_bytes(self.fixed()?)),
            0xd2 => i128::from(i32::from_be_bytes(self.fixed()?)),
            0xd3 => i128::from(i64::from_be_bytes(self.fixed()?)),
            0xca => f32::from_be_bytes(self.fixed()?) as i128,
            0xcb => f64::from_be_bytes(self.fixed()?) as i128,
            0xc0 => 0,
            0xc2 => 0,
            0xc3 => 1,
            _ => return Err(DecodeError::Malformed("expected a number")),
        })
    }

    /// Any number as f64, nil as 0.
    fn float(&mut self) -> Result<f64, DecodeError> {
        match self.peek()? {
            0xca => {
                self.pos += 1;
                Ok(f64::from(f32::from_be_bytes(self.fixed()?)))
            }
            0xcb => {
                self.pos += 1;
                Ok(f64::from_be_bytes(self.fixed()?))
            }
            _ => Ok(self.int()? as f64),
        }
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        // Tracers send ids as uint64; some send them as int64 (two's
        // complement). Those two directly; anything else through `int`.
        match self.peek()? {
            0xcf => {
                self.pos += 1;
                Ok(u64::from_be_bytes(self.fixed()?))
            }
            0xd3 => {
                self.pos += 1;
                Ok(i64::from_be_bytes(self.fixed()?) as u64)
            }
            _ => {
                let v = self.int()?;
                Ok(if v < 0 { v as i64 as u64 } else { v as u64 })
            }
        }
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        match self.peek()? {
            0xd3 => {
                self.pos += 1;
                Ok(i64::from_be_bytes(self.fixed()?))
            }
            0xcf => {
                self.pos += 1;
                Ok(i64::try_from(u64::from_be_bytes(self.fixed()?)).unwrap_or(i64::MAX))
            }
            _ => {
                let v = self.int()?;
                Ok(v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
            }
        }
    }

    /// Skips one value of any type, iteratively, at most [`MAX_DEPTH`] deep.
    fn skip(&mut self) -> Result<(), DecodeError> {
        self.walk().map(|_| ())
    }

    /// Skips one value as [`Reader::skip`] does; returns how many arrays and
    /// maps it held, how many other values, and their data bytes.
    fn walk(&mut self) -> Result<(usize, usize, usize), DecodeError> {
        let (mut containers, mut scalars, mut bytes) = (0usize, 0usize, 0usize);
        // Values still to skip at each open level.
        let mut pending: Vec<usize> = vec![1];
        while let Some(top) = pending.last_mut() {
            if *top == 0 {
                pending.pop();
                continue;
            }
            *top -= 1;
            let m = self.byte()?;
            let (children, data): (u64, u64) = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
                0x80..=0x8f => (u64::from(m & 0x0f) * 2, 0),
                0x90..=0x9f => (u64::from(m & 0x0f), 0),
                0xa0..=0xbf => (0, u64::from(m & 0x1f)),
                0xc4 | 0xd9 => (0, self.be(1)?),
                0xc5 | 0xda => (0, self.be(2)?),
                0xc6 | 0xdb => (0, self.be(4)?),
                0xc7 => (0, self.be(1)? + 1),
                0xc8 => (0, self.be(2)? + 1),
                0xc9 => (0, self.be(4)? + 1),
                0xca => (0, 4),
                0xcb => (0, 8),
                0xcc | 0xd0 => (0, 1),
                0xcd | 0xd1 => (0, 2),
                0xce | 0xd2 => (0, 4),
                0xcf | 0xd3 => (0, 8),
                0xd4 => (0, 2),
                0xd5 => (0, 3),
                0xd6 => (0, 5),
                0xd7 => (0, 9),
                0xd8 => (0, 17),
                0xdc => (self.be(2)?, 0),
                0xdd => (self.be(4)?, 0),
                0xde => (self.be(2)? * 2, 0),
                0xdf => (self.be(4)? * 2, 0),
                0xc1 => return Err(DecodeError::Malformed("reserved marker 0xc1")),
            };
            if data > 0 {
                let n = usize::try_from(data).map_err(|_| DecodeError::Truncated)?;
                self.take(n)?;
                bytes += n;
            }
            if matches!(m, 0x80..=0x9f | 0xdc..=0xdf) {
                containers += 1;
            } else {
                scalars += 1;
            }
            if children > 0 {
                let n = self.count(children)?;
                if pending.len() >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                pending.push(n);
            }
        }
        Ok((containers, scalars, bytes))
    }
}

/// The most heap that decoding `body` (one msgpack value) into structs with
/// serde may take: each array or map a struct of `container` bytes, each
/// other value a `String` or a number, and every string's bytes. For the
/// tracer stats `rmp_serde` decodes, where 16 bytes on the wire (a group of
/// empty fields) become a struct of several hundred.
pub fn heap_bound(body: &[u8], container: usize) -> Result<usize, DecodeError> {
    let (containers, scalars, bytes) = Reader::new(body, usize::MAX).walk()?;
    Ok(containers
        .saturating_mul(container)
        .saturating_add(scalars.saturating_mul(STRING_COST))
        .saturating_add(bytes))
}

/// Decodes a `/v0.3/traces` or `/v0.4/traces` body: an array of traces,
/// each an array of spans, each a map.
pub fn v04(body: &[u8], allowance: usize) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(body, allowance);
    let n = r.array()?.unwrap_or(0);
    let mut traces = Vec::with_capacity(n.min(MAX_PREALLOC));
    for _ in 0..n {
        let spans = r.array()?.unwrap_or(0);
        let mut trace = Vec::with_capacity(spans.min(MAX_PREALLOC));
        for _ in 0..spans {
            trace.push(v04_span(&mut r)?);
        }
        r.charge(24)?;
        traces.push(trace);
    }
    Ok(Decoded {
        traces,
        cost: r.cost,
    })
}

fn v04_span(r: &mut Reader<'_>) -> Result<pb::Span, DecodeError> {
    r.charge(SPAN_COST)?;
    let mut span = pb::Span::default();
    let fields = r.map()?.ok_or(DecodeError::Malformed("a span is nil"))?;
    for _ in 0..fields {
        let key = r.raw_str()?.unwrap_or_default();
        match key {
            b"service" => span.service = r.string()?,
            b"name" => span.name = r.string()?,
            b"resource" => span.resource = r.string()?,
            b"type" => span.r#type = r.string()?,
            b"trace_id" => span.trace_id = r.u64()?,
            b"span_id" => span.span_id = r.u64()?,
            b"parent_id" => span.parent_id = r.u64()?,
            b"start" => span.start = r.i64()?,
            b"duration" => span.duration = r.i64()?,
            b"error" => span.error = i32::from(r.int()? != 0),
            b"meta" => {
                let n = r.map()?.unwrap_or(0);
                span.meta.reserve(n.min(MAX_PREALLOC));
                for _ in 0..n {
                    let k = r.string()?;
                    let v = r.string()?;
                    r.charge(ENTRY_COST)?;
                    span.meta.insert(k, v);
                }
            }
            b"metrics" => {
                let n = r.map()?.unwrap_or(0);
                span.metrics.reserve(metrics_capacity(n));
                for _ in 0..n {
                    let k = r.string()?;
                    let v = r.float()?;
                    r.charge(ENTRY_COST)?;
                    span.metrics.insert(k, v);
                }
            }
            b"meta_struct" => {
                let n = r.map()?.unwrap_or(0);
                for _ in 0..n {
                    let k = r.string()?;
                    let v = r.raw_str()?.unwrap_or_default();
                    r.charge(v.len() + ENTRY_COST)?;
                    span.meta_struct.insert(k, v.to_vec());
                }
            }
            // Span links and events, and anything newer: skipped (see
            // docs/DESIGN.md, "Traces").
            _ => r.skip()?,
        }
    }
    check_ids(&span)?;
    Ok(span)
}

/// Room for a span's `n` metrics and the `_top_level` that processing
/// adds to top-level spans (a table grown for it would rehash every key);
/// none when there are none (an insert allocates the same table).
fn metrics_capacity(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        n.min(MAX_PREALLOC) + 1
    }
}

fn check_ids(span: &pb::Span) -> Result<(), DecodeError> {
    if span.trace_id == 0 || span.span_id == 0 {
        return Err(DecodeError::ZeroId);
    }
    Ok(())
}

/// Decodes a `/v0.5/traces` body: `[dictionary, traces]`, each span an
/// array of 12 values whose strings are indexes into the dictionary.
pub fn v05(body: &[u8], allowance: usize) -> Result<Decoded, DecodeError> {
    let mut r = Reader::new(body, allowance);
    if r.array()? != Some(2) {
        return Err(DecodeError::Malformed("v0.5 wants [dictionary, traces]"));
    }
    let words = r.array()?.unwrap_or(0);
    let mut dict: Vec<&str> = Vec::with_capacity(words.min(MAX_PREALLOC));
    for _ in 0..words {
        let raw = r.raw_str()?.unwrap_or_default();
        r.charge(16)?;
        // Invalid UTF-8 is rare enough to be replaced where it is used.
        dict.push(std::str::from_utf8(raw).unwrap_or("\u{fffd}"));
    }
    let n = r.array()?.unwrap_or(0);
    let mut traces = Vec::with_capacity(n.min(MAX_PREALLOC));
    for _ in 0..n {
        let spans = r.array()?.unwrap_or(0);
        let mut trace = Vec::with_capacity(spans.min(MAX_PREALLOC));
        for _ in 0..spans {
            trace.push(v05_span(&mut r, &dict)?);
        }
        r.charge(24)?;
        traces.push(trace);
    }
    Ok(Decoded {
        traces,
        cost: r.cost,
    })
}

fn v05_span(r: &mut Reader<'_>, dict: &[&str]) -> Result<pb::Span, DecodeError> {
    if r.array()? != Some(12) {
        return Err(DecodeError::Malformed("a v0.5 span is an array of 12"));
    }
    r.charge(SPAN_COST)?;
    let word = |r: &mut Reader<'_>| -> Result<String, DecodeError> {
        let i = r.u64()?;
        let s = usize::try_from(i)
            .ok()
            .and_then(|i| dict.get(i))
            .ok_or(DecodeError::BadIndex(i))?;
        r.charge(s.len() + STRING_COST)?;
        Ok((*s).to_owned())
    };
    let mut span = pb::Span {
        service: word(r)?,
        name: word(r)?,
        resource: word(r)?,
        trace_id: r.u64()?,
        span_id: r.u64()?,
        parent_id: r.u64()?,
        start: r.i64()?,
        duration: r.i64()?,
        error: i32::from(r.int()? != 0),
        ..Default::default()
    };
    let n = r.map()?.unwrap_or(0);
    let mut meta = HashMap::with_capacity(n.min(MAX_PREALLOC));
    for _ in 0..n {
        let k = word(r)?;
        let v = word(r)?;
        r.charge(ENTRY_COST)?;
        meta.insert(k, v);
    }
    span.meta = meta;
    let n = r.map()?.unwrap_or(0);
    let mut metrics = HashMap::with_capacity(metrics_capacity(n));
    for _ in 0..n {
        let k = word(r)?;
        let v = r.float()?;
        r.charge(ENTRY_COST)?;
        metrics.insert(k, v);
    }
    span.metrics = metrics;
    span.r#type = word(r)?;
    check_ids(&span)?;
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal msgpack writer for the tests.
    fn str_(out: &mut Vec<u8>, s: &str) {
        assert!(s.len() < 32);
        out.push(0xa0 | s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn strings_of_every_header_decode_and_truncation_is_an_error() {
        for len in [0usize, 1, 31, 32, 255, 256, 65_535, 65_536] {
            let body = "x".repeat(len);
            let mut heads: Vec<Vec<u8>> = Vec::new();
            if len < 32 {
                heads.push(vec![0xa0 | len as u8]);
            }
            for (m8, m16, m32) in [(0xd9, 0xda, 0xdb), (0xc4, 0xc5, 0xc6)] {
                if let Ok(n) = u8::try_from(len) {
                    heads.push(vec![m8, n]);
                }
                if let Ok(n) = u16::try_from(len) {
                    heads.push([&[m16][..], &n.to_be_bytes()].concat());
                }
                heads.push([&[m32][..], &(len as u32).to_be_bytes()].concat());
            }
            for h in heads {
                let b = [&h[..], body.as_bytes(), b"!"].concat();
                let mut r = Reader::new(&b, usize::MAX);
                assert_eq!(r.raw_str(), Ok(Some(body.as_bytes())), "{h:x?}");
                assert_eq!(r.pos, h.len() + len);
                let short = &b[..h.len() + len.saturating_sub(1)];
                if len > 0 {
                    assert_eq!(
                        Reader::new(short, usize::MAX).raw_str(),
                        Err(DecodeError::Truncated),
                        "{h:x?}"
                    );
                }
                assert_eq!(
                    Reader::new(&h[..h.len() - 1], usize::MAX).raw_str().err(),
                    Some(DecodeError::Truncated)
                );
            }
        }
        assert_eq!(Reader::new(&[0xc0], usize::MAX).raw_str(), Ok(None));
        assert_eq!(
            Reader::new(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'x'], usize::MAX).raw_str(),
            Err(DecodeError::Truncated)
        );
        assert!(Reader::new(&[0x01], usize::MAX).raw_str().is_err());
    }

    #[test]
    fn numbers_of_every_width_and_sign_decode_to_their_values() {
        let ints: [i128; 14] = [
            0,
            1,
            127,
            128,
            255,
            65_535,
            4_294_967_295,
            u64::MAX as i128,
            -1,
            -32,
            -33,
            -129,
            -40_000,
            i64::MIN as i128,
        ];
        for v in ints {
            // Every width that holds the value, fixints included.
            let mut all = Vec::new();
            if (-32..=127).contains(&v) {
                all.push(vec![v as i8 as u8]);
            }
            if let Ok(x) = u8::try_from(v) {
                all.push(vec![0xcc, x]);
            }
            if let Ok(x) = u16::try_from(v) {
                all.push([&[0xcd][..], &x.to_be_bytes()].concat());
            }
            if let Ok(x) = u32::try_from(v) {
                all.push([&[0xce][..], &x.to_be_bytes()].concat());
            }
            if let Ok(x) = u64::try_from(v) {
                all.push([&[0xcf][..], &x.to_be_bytes()].concat());
            }
            if let Ok(x) = i8::try_from(v) {
                all.push(vec![0xd0, x as u8]);
            }
            if let Ok(x) = i16::try_from(v) {
                all.push([&[0xd1][..], &x.to_be_bytes()].concat());
            }
            if let Ok(x) = i32::try_from(v) {
                all.push([&[0xd2][..], &x.to_be_bytes()].concat());
            }
            if let Ok(x) = i64::try_from(v) {
                all.push([&[0xd3][..], &x.to_be_bytes()].concat());
            }
            for b in all {
                assert_eq!(Reader::new(&b, usize::MAX).int(), Ok(v), "{b:x?}");
                // Ids: two's complement of negatives; times: clamped.
                let id = if v < 0 { v as i64 as u64 } else { v as u64 };
                assert_eq!(Reader::new(&b, usize::MAX).u64(), Ok(id), "{b:x?}");
                let t = v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
                assert_eq!(Reader::new(&b, usize::MAX).i64(), Ok(t), "{b:x?}");
                assert_eq!(Reader::new(&b, usize::MAX).float(), Ok(v as f64), "{b:x?}");
                let mut short = b.clone();
                short.pop();
                if !short.is_empty() {
                    assert_eq!(
                        Reader::new(&short, usize::MAX).int(),
                        Err(DecodeError::Truncated)
                    );
                    assert_eq!(
                        Reader::new(&short, usize::MAX).u64(),
                        Err(DecodeError::Truncated)
                    );
                    assert_eq!(
                        Reader::new(&short, usize::MAX).i64(),
                        Err(DecodeError::Truncated)
                    );
                }
            }
        }
        for f in [0.0f64, 1.5, -2.25, 1e300, f64::from(f32::MAX)] {
            let b = [&[0xcb][..], &f.to_be_bytes()].concat();
            assert_eq!(Reader::new(&b, usize::MAX).float(), Ok(f));
            assert_eq!(Reader::new(&b, usize::MAX).int(), Ok(f as i128));
            let g = f as f32;
            let b = [&[0xca][..], &g.to_be_bytes()].concat();
            assert_eq!(Reader::new(&b, usize::MAX).float(), Ok(f64::from(g)));
            assert_eq!(Reader::new(&b, usize::MAX).int(), Ok(g as i128));
        }
    }

    fn span_v04(trace_id: u8, span_id: u8) -> Vec<u8> {
        let mut o = vec![0x86];
        str_(&mut o, "service");
        str_(&mut o, "web");
        str_(&mut o, "trace_id");
        o.push(trace_id);
        str_(&mut o, "span_id");
        o.push(span_id);
        str_(&mut o, "meta");
        o.push(0x81);
        str_(&mut o, "k");
        str_(&mut o, "v");
        str_(&mut o, "metrics");
        o.push(0x81);
        str_(&mut o, "_sampling_priority_v1");
        o.push(0x01);
        str_(&mut o, "span_links");
        o.extend_from_slice(&[0x91, 0x81, 0xa1, b'x', 0x92, 0x01, 0x02]);
        o
    }

    #[test]
    fn v04_decodes_spans_and_skips_unknown_keys() {
        let mut body = vec![0x91, 0x92];
        body.extend(span_v04(7, 1));
        body.extend(span_v04(7, 2));
        let d = v04(&body, 1 << 20).expect("valid");
        assert_eq!(d.traces.len(), 1);
        assert_eq!(d.traces[0].len(), 2);
        let s = &d.traces[0][1];
        assert_eq!((s.service.as_str(), s.trace_id, s.span_id), ("web", 7, 2));
        assert_eq!(s.meta.get("k").map(String::as_str), Some("v"));
        assert_eq!(s.metrics.get("_sampling_priority_v1"), Some(&1.0));
        assert!(d.cost > 0);
    }

    #[test]
    fn malformed_bodies_are_errors_not_allocations() {
        // An array claiming 4 G traces, in 5 bytes.
        assert_eq!(
            v04(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1 << 20).unwrap_err(),
            DecodeError::ImpossibleCount(0xffff_ffff)
        );
        // A map claiming 4 G entries inside a span.
        assert!(matches!(
            v04(&[0x91, 0x91, 0xdf, 0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(DecodeError::ImpossibleCount(_))
        ));
        // Truncated inside a span.
        let mut body = vec![0x91, 0x91];
        let s = span_v04(7, 1);
        body.extend_from_slice(&s[..s.len() - 3]);
        assert_eq!(v04(&body, 1 << 20).unwrap_err(), DecodeError::Truncated);
        // Zero ids.
        let mut body = vec![0x91, 0x91];
        body.extend(span_v04(0, 1));
        assert_eq!(v04(&body, 1 << 20).unwrap_err(), DecodeError::ZeroId);
        // Deep nesting under an unknown key.
        let mut body = vec![0x91, 0x91, 0x81, 0xa1, b'x'];
        body.extend(std::iter::repeat_n(0x91, 100_000));
        body.push(0x01);
        assert_eq!(v04(&body, 1 << 20).unwrap_err(), DecodeError::TooDeep);
        // Not msgpack at all.
        assert!(v04(b"{\"json\": true}", 1 << 20).is_err());
        assert!(v04(&[], 1 << 20).is_err());
        // Over the allowance.
        let mut body = vec![0x91, 0x92];
        body.extend(span_v04(7, 1));
        body.extend(span_v04(7, 2));
        assert_eq!(v04(&body, 100).unwrap_err(), DecodeError::OverBudget);
    }

    #[test]
    fn v05_reads_the_dictionary() {
        let mut b = vec![0x92, 0x94];
        for w in ["", "svc", "op", "res"] {
            str_(&mut b, w);
        }
        b.extend_from_slice(&[0x91, 0x91, 0x9c, 1, 2, 3, 9, 4, 0, 0xcd, 0x01, 0x00, 100, 1]);
        b.extend_from_slice(&[0x81, 1, 2]); // meta {svc: op}
        b.extend_from_slice(&[0x81, 3, 0xcb]);
        b.extend_from_slice(&2.5f64.to_bits().to_be_bytes());
        b.push(0); // type ""
        let d = v05(&b, 1 << 20).expect("valid");
        let s = &d.traces[0][0];
        assert_eq!(
            (s.service.as_str(), s.name.as_str(), s.resource.as_str()),
            ("svc", "op", "res")
        );
        assert_eq!(
            (s.trace_id, s.span_id, s.start, s.duration, s.error),
            (9, 4, 256, 100, 1)
        );
        assert_eq!(s.meta.get("svc").map(String::as_str), Some("op"));
        assert_eq!(s.metrics.get("res"), Some(&2.5));
        // An index outside the dictionary.
        let mut bad = b.clone();
        bad[b.len() - 1] = 9;
        assert_eq!(v05(&bad, 1 << 20).unwrap_err(), DecodeError::BadIndex(9));
    }
}
