//! One pass over a datagram: its lines, each parsed.
//!
//! In: one datagram's bytes, and the same bytes as `&str` when the whole
//! datagram is valid UTF-8 (the listener checks it once). Out: each
//! non-empty line with its parse, exactly the lines of
//! [`protocol::lines`] and the results of [`protocol::parse_line`] on them,
//! in order.
//!
//! How: every line starts with one look at the 64 bytes from its first byte,
//! which gives the positions of every `\n`, `|` and `:` among them as three
//! bit masks ([`marks`]: 16 bytes per SSE2 compare). A short line (its end
//! within those 64 bytes, the mixed and counters loads' ~45-byte lines) is
//! then framed and, when it is a plain metric line, cut into name, value,
//! type and fields with bit operations alone: no byte is scanned twice
//! ([`fast_metric`]). Everything else, long lines, `\r\n`, events, service
//! checks, several values and every line with an error, goes to
//! the general parser ([`protocol::parse_str`]), so the results are its
//! results by construction; the fast path only ever accepts what the general
//! parser accepts, with the same fields (the `scan_agrees_with_lines_and_parse`
//! property test checks both on random datagrams).
//!
//! Why not `memchr`: its searchers find one byte class per call and restart
//! at every call; a 45-byte line needs about six searches (`\n`, `|`, `:`,
//! the fields), whose set-up was most of the parse (callgrind,
//! docs/PERFORMANCE.md). No crate we found gives several classes' positions
//! as masks.
//!
//! Must never: read outside the datagram (a window past its end is a zeroed
//! copy), or give a result the general parser would not.

use super::protocol::{self, Metric, MetricType, ParseError, Parsed, Tags};

/// Bytes looked at from the start of each line.
const WINDOW: usize = 64;

/// Bit `i` is set where byte `i` of a window is `\n`, `|`, `:` respectively.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Marks {
    nl: u64,
    pipe: u64,
    colon: u64,
}

/// The [`Marks`] of one window: SSE2 (part of every x86_64 CPU), four
/// 16-byte compares per class.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn marks(w: &[u8; WINDOW]) -> Marks {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    let mut m = Marks::default();
    // SAFETY: SSE2 is in the x86_64 baseline, so these intrinsics exist on
    // every CPU this code runs on; each load reads 16 bytes at offset
    // 16 * i < 64 of the 64-byte array `w` (unaligned loads are allowed).
    unsafe {
        let nl = _mm_set1_epi8(b'\n' as i8);
        let pipe = _mm_set1_epi8(b'|' as i8);
        let colon = _mm_set1_epi8(b':' as i8);
        for i in 0..WINDOW / 16 {
            let v = _mm_loadu_si128(w.as_ptr().add(16 * i).cast::<__m128i>());
            // movemask gives 16 bits in an i32; as u16 keeps exactly them.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let bits = |x| u64::from(_mm_movemask_epi8(x) as u16) << (16 * i);
            m.nl |= bits(_mm_cmpeq_epi8(v, nl));
            m.pipe |= bits(_mm_cmpeq_epi8(v, pipe));
            m.colon |= bits(_mm_cmpeq_epi8(v, colon));
        }
    }
    m
}

/// The [`Marks`] of one window, a byte at a time (other architectures).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn marks(w: &[u8; WINDOW]) -> Marks {
    let mut m = Marks::default();
    for (i, &b) in w.iter().enumerate() {
        let bit = 1u64 << i;
        match b {
            b'\n' => m.nl |= bit,
            b'|' => m.pipe |= bit,
            b':' => m.colon |= bit,
            _ => {}
        }
    }
    m
}

/// The lines of `data`, each with its parse. `text` is `data` as `&str` when
/// all of it is valid UTF-8; `None` checks each line apart, so only the bad
/// lines of a datagram with invalid bytes are rejected.
pub fn datagram<'a>(data: &'a [u8], text: Option<&'a str>) -> Datagram<'a> {
    Datagram { data, text, pos: 0 }
}

/// The iterator of [`datagram`].
#[derive(Debug, Clone)]
pub struct Datagram<'a> {
    data: &'a [u8],
    text: Option<&'a str>,
    /// Where the next line starts.
    pos: usize,
}

impl<'a> Iterator for Datagram<'a> {
    type Item = (&'a [u8], Result<Parsed<'a>, ParseError>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let start = self.pos;
            let rest = self.data.get(start..).filter(|r| !r.is_empty())?;
            let pad: [u8; WINDOW];
            let window = match rest.first_chunk::<WINDOW>() {
                Some(w) => w,
                None => {
                    // The datagram's last bytes: zeros match no class.
                    pad = padded(rest);
                    &pad
                }
            };
            let m = marks(window);
            let short = if m.nl != 0 {
                Some(m.nl.trailing_zeros() as usize)
            } else if rest.len() < WINDOW {
                Some(rest.len())
            } else {
                None
            };
            let Some(end) = short else {
                // A long line: its `\n` is past the window.
                let end = memchr::memchr(b'\n', rest.get(WINDOW..).unwrap_or_default())
                    .map_or(rest.len(), |i| WINDOW + i);
                self.pos = start + end + 1;
                let line = rest.get(..end).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() {
                    continue;
                }
                return Some((line, self.general(start, line)));
            };
            // Past the `\n` (past the end for an unterminated last line,
            // which ends the iteration).
            self.pos = start + end + 1;
            let line = rest.get(..end).unwrap_or_default();
            if line.is_empty() {
                continue;
            }
            if line.last() == Some(&b'\r') {
                let line = line.get(..end - 1).unwrap_or_default();
                if line.is_empty() {
                    continue;
                }
                return Some((line, self.general(start, line)));
            }
            if let Some(text) = self.text {
                let s = ascii_cut(text, start, start + end).unwrap_or_default();
                // end < 64, so the shift cannot overflow.
                let within = (1u64 << end) - 1;
                let m = Marks {
                    nl: 0,
                    pipe: m.pipe & within,
                    colon: m.colon & within,
                };
                if let Some(metric) = fast_metric(s, m) {
                    return Some((line, Ok(Parsed::Metric(metric))));
                }
            }
            return Some((line, self.general(start, line)));
        }
    }
}

/// `s[from..to]` where `from` and `to` are each 0, `s.len()`, or just
/// before or after an ASCII byte of `s` (every cut in this module is at `\n`,
/// `|`, `:`, `#` or `@`), so both are char boundaries; `None` out of bounds.
/// `str::get` would check the boundaries again, a few instructions per field.
#[inline(always)]
fn ascii_cut(s: &str, from: usize, to: usize) -> Option<&str> {
    let bytes = s.as_bytes().get(from..to)?;
    // SAFETY: `s` is UTF-8 and `from` and `to` are char boundaries of it
    // (see above: a char never contains an ASCII byte), so `bytes` is UTF-8.
    Some(unsafe { std::str::from_utf8_unchecked(bytes) })
}

/// The first bytes of `rest` (shorter than a window), then zeros.
#[inline]
fn padded(rest: &[u8]) -> [u8; WINDOW] {
    let mut pad = [0u8; WINDOW];
    if let Some(head) = pad.get_mut(..rest.len()) {
        head.copy_from_slice(rest);
    }
    pad
}

impl<'a> Datagram<'a> {
    /// The general parser on `line`, which starts at `start` in the datagram.
    #[inline]
    fn general(&self, start: usize, line: &'a [u8]) -> Result<Parsed<'a>, ParseError> {
        match self.text.and_then(|t| t.get(start..start + line.len())) {
            // Lines are cut at ASCII bytes, so they are char boundaries.
            Some(s) => protocol::parse_str(s),
            None => protocol::parse_line(line),
        }
    }
}

/// A plain metric line cut with its marks (`pipe` and `colon` of the line
/// only, which is shorter than 64 bytes): `name:value|type` and optional
/// fields, read by the general parser's own [`protocol::apply_field`]. `None` for anything else, which the general parser
/// then decides: events and service checks (`_`), no `:` before the first
/// `|`, an empty name or value, several values, an unknown type, a value that
/// is not a plain decimal, and a bad rate or timestamp.
#[inline]
fn fast_metric(line: &str, m: Marks) -> Option<Metric<'_>> {
    let b = line.as_bytes();
    if b.first() == Some(&b'_') {
        return None;
    }
    // 64 when absent, which fails the checks below.
    let colon = m.colon.trailing_zeros() as usize;
    let pipe = m.pipe.trailing_zeros() as usize;
    if colon == 0 || colon + 1 >= pipe || pipe >= b.len() {
        return None;
    }
    let name = ascii_cut(line, 0, colon)?;
    let raw_values = ascii_cut(line, colon + 1, pipe)?;
    let (kind, type_len) = protocol::type_prefix(b.get(pipe + 1..)?)?;
    // The type ends the line or a `|` follows it. pipe < len < 64.
    let after_type = pipe + 1 + type_len;
    let later_pipes = m.pipe & !((2u64 << pipe) - 1);
    if after_type != b.len() && later_pipes & (1u64 << after_type) == 0 {
        return None;
    }
    let value = if kind == MetricType::Set {
        // A set keeps its raw member, colons and all.
        None
    } else {
        // One value: no other `:` before the first `|`.
        let between = (m.colon >> (colon + 1)) & ((1u64 << (pipe - colon - 1)) - 1);
        if between != 0 {
            return None;
        }
        Some(protocol::parse_value(raw_values)?)
    };
    let mut metric = Metric {
        name,
        raw_values,
        value,
        kind,
        sample_rate: 1.0,
        tags: Tags::default(),
        timestamp: None,
    };
    if after_type == b.len() {
        return Some(metric);
    }
    // Fields: between each `|` after the type and the next (or the end).
    let mut bits = later_pipes & !((2u64 << after_type) - 1);
    let mut from = after_type + 1;
    loop {
        let to = if bits == 0 {
            b.len()
        } else {
            bits.trailing_zeros() as usize
        };
        // An error (a bad rate or timestamp) is the general parser's to give.
        protocol::apply_field(&mut metric, ascii_cut(line, from, to)?).ok()?;
        if bits == 0 {
            return Some(metric);
        }
        bits &= bits - 1;
        from = to + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the listener got before this module: `lines` + `parse_line`.
    fn reference(data: &[u8]) -> Vec<(&[u8], Result<Parsed<'_>, ParseError>)> {
        protocol::lines(data)
            .map(|l| (l, protocol::parse_line(l)))
            .collect()
    }

    fn both(data: &[u8]) {
        let want = reference(data);
        let text = std::str::from_utf8(data).ok();
        let got: Vec<_> = datagram(data, text).collect();
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(data));
        // Without the whole-datagram check, line by line.
        let got: Vec<_> = datagram(data, None).collect();
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(data));
    }

    #[test]
    fn marks_find_every_class() {
        let mut w = [b'a'; WINDOW];
        w[0] = b':';
        w[17] = b'|';
        w[63] = b'\n';
        w[40] = b':';
        let m = marks(&w);
        assert_eq!(m.colon, 1 | 1 << 40);
        assert_eq!(m.pipe, 1 << 17);
        assert_eq!(m.nl, 1 << 63);
    }

    #[test]
    fn plain_lines_take_the_fast_path_with_the_general_fields() {
        for line in [
            "a:1|c",
            "lg.cnt.m12:2|c|#env:bench,svc:web,shard:7",
            "x:1.5|g|#a",
            "x:-3|ms|@0.5|#a,b",
            "x:7|h|#a|#b",
            "x:u1:2|s|#a",
            "x:1|d|c:abc|#t",
            "x:1|c|",
            "x:1|c||#a",
            "x:1|g|T1700000000|#a",
        ] {
            let m = marks_of(line);
            let fast = fast_metric(line, m).unwrap_or_else(|| panic!("{line}: not fast"));
            assert_eq!(
                Ok(Parsed::Metric(fast)),
                protocol::parse_str(line),
                "{line}"
            );
        }
    }

    #[test]
    fn everything_else_is_left_to_the_general_parser() {
        for line in [
            "_e{1,1}:a|b",
            "_sc|a|0",
            ":1|c",
            "a:|c",
            "a:1|",
            "a:1",
            "a|c:1",
            "a:1:2|c",
            "a:1|x",
            "a:1|cc",
            "a:1|c|@",
            "a:1|c|@x",
            "a:1|c|T0",
            "a:1|c|Tx",
        ] {
            assert_eq!(fast_metric(line, marks_of(line)), None, "{line}");
        }
    }

    fn marks_of(line: &str) -> Marks {
        let mut w = [0u8; WINDOW];
        w[..line.len()].copy_from_slice(line.as_bytes());
        let m = marks(&w);
        Marks { nl: 0, ..m }
    }

    #[test]
    fn framing_matches_lines_at_every_window_edge() {
        for len in 55..75 {
            let long = format!("{}:1|c|#t", "n".repeat(len));
            for data in [
                format!("{long}\na:1|c\n"),
                format!("a:1|c\n{long}"),
                format!("{long}\r\n\r\n\n{long}\r"),
                format!("{}\n", "x".repeat(len)),
            ] {
                both(data.as_bytes());
            }
        }
        for data in ["", "\n", "\n\n", "\r\n", "a:1|c", "a:1|c\n", "\ra:1|c\r\n"] {
            both(data.as_bytes());
        }
        both(b"a:1|c\n\xff:1|c\nb:2|g\n");
    }

    proptest! {
        #[test]
        fn scan_agrees_with_lines_and_parse(
            pieces in proptest::collection::vec(
                prop_oneof![
                    Just("a".to_string()), Just("lg.cnt".to_string()),
                    Just(":".to_string()), Just("|".to_string()),
                    Just("\n".to_string()), Just("\r".to_string()),
                    Just("#".to_string()), Just(",".to_string()),
                    Just("@".to_string()), Just("T".to_string()),
                    Just("_".to_string()), Just("_e{".to_string()),
                    Just("c".to_string()), Just("g".to_string()),
                    Just("h".to_string()), Just("ms".to_string()),
                    Just("s".to_string()), Just("d".to_string()),
                    Just("1".to_string()), Just("0.5".to_string()),
                    Just("-2.25".to_string()), Just("1e3".to_string()),
                    Just("nan".to_string()), Just("é".to_string()),
                    Just("\u{ff}".to_string()),
                    "[a-z0-9.:|#@,]{0,70}",
                ],
                0..40,
            )
        ) {
            let data = pieces.concat();
            both(data.as_bytes());
        }

        #[test]
        fn scan_agrees_on_well_formed_lines(
            lines in proptest::collection::vec(
                (
                    "[a-z][a-z0-9._]{0,40}",
                    prop_oneof![Just("1"), Just("2.5"), Just("-7"), Just("u9"), Just("1:2")],
                    prop_oneof![Just("c"), Just("g"), Just("h"), Just("ms"), Just("s"), Just("d")],
                    "(\\|(#[a-z:,]{0,30}|@0\\.[0-9]|@1|T[0-9]{1,3}|c:[a-z]{0,5}))*",
                ),
                1..20,
            )
        ) {
            let data: String = lines
                .iter()
                .map(|(n, v, t, f)| format!("{n}:{v}|{t}{f}\n"))
                .collect();
            both(data.as_bytes());
        }

        #[test]
        fn scan_agrees_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            both(&data);
        }
    }
}
