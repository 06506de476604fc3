//! Property tests for the DogStatsD parser (`dynostat::dogstatsd::protocol`).
//!
//! In: random bytes, and structured-random well-formed lines. Out: pass or a
//! shrunk counterexample. Checks that the parser never panics, that
//! well-formed lines round-trip (every displayed f64 reads back exactly),
//! and that metric lines allocate nothing (a counting global allocator,
//! which is why this lives in its own test binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use dynostat::dogstatsd::protocol::{lines, parse_line, parse_value, MetricType, Parsed};
use proptest::prelude::*;

/// Counts allocations made by the current thread.
struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // try_with: the slot may already be gone while a thread is exiting.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Parses every line and touches every borrowed field, as the aggregator would.
fn exercise(datagram: &[u8]) -> (usize, f64) {
    let mut ok = 0;
    let mut sum = 0.0;
    for line in lines(datagram) {
        if let Ok(p) = parse_line(line) {
            ok += 1;
            if let Parsed::Metric(m) = p {
                sum += m.values().sum::<f64>();
                sum += m.tags.iter().map(str::len).sum::<usize>() as f64;
                sum += m.set_value().len() as f64 + m.name.len() as f64;
            }
        }
    }
    (ok, sum)
}

#[test]
fn metric_lines_do_not_allocate() {
    let datagram = b"page.views:1|c|#env:prod,service:web,version:1.2\n\
        temp:-3.5|g|@0.5|#a,b,c\n\
        lat:1:2:3.25|h|#x:y|c:abc123\n\
        users:alice:bob|s|#k:v\n\
        size:1e3::nan|d|T1700000000\n\
        req:320|ms|card:high|e:ext\n\
        bad:x|c\n\
        _scale:1|c\n";
    // Warm up anything lazily initialised.
    let (ok, _) = exercise(datagram);
    assert_eq!(ok, 7);
    let before = allocs();
    let (ok, sum) = exercise(datagram);
    let after = allocs();
    assert_eq!(ok, 7);
    assert!(sum.is_nan(), "nan is yielded by values()");
    assert_eq!(after - before, 0, "metric parsing allocated");
}

#[test]
fn events_do_allocate_and_are_counted() {
    // Proves the counter works: an event owns its strings.
    let before = allocs();
    let p = parse_line(b"_e{5,4}:title|text|#a,b");
    let after = allocs();
    assert!(matches!(p, Ok(Parsed::Event(_))));
    assert!(after > before);
}

/// Bytes drawn mostly from the protocol's own alphabet, so random input
/// reaches deep into the parser instead of failing at the first byte.
fn protocolish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let alphabet: &[u8] = b"abc_:|#@T,.-+e{}0123456789\n\r sdmghnaif\\\xc3\xa9\xff";
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(alphabet.to_vec()),
            1 => any::<u8>(),
        ],
        0..200,
    )
}

#[derive(Debug, Clone)]
struct GenLine {
    line: String,
    name: String,
    kind: MetricType,
    values: Vec<f64>,
    set_value: String,
    tags: Vec<String>,
    rate: Option<f64>,
    ts: Option<i64>,
}

fn type_str(kind: MetricType) -> &'static str {
    match kind {
        MetricType::Counter => "c",
        MetricType::Gauge => "g",
        MetricType::Histogram => "h",
        MetricType::Timer => "ms",
        MetricType::Set => "s",
        MetricType::Distribution => "d",
    }
}

fn well_formed_line() -> impl Strategy<Value = GenLine> {
    let kind = prop::sample::select(vec![
        MetricType::Counter,
        MetricType::Gauge,
        MetricType::Histogram,
        MetricType::Timer,
        MetricType::Set,
        MetricType::Distribution,
    ]);
    let value = prop_oneof![
        (-1_000_000i64..1_000_000).prop_map(|v| v as f64),
        (-1e6f64..1e6),
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
    ];
    (
        "[a-zA-Z][a-zA-Z0-9_.]{0,40}|_[a-z0-9_.é]{1,10}",
        kind,
        prop::collection::vec(value, 1..5),
        "[a-zA-Z0-9_:.-]{1,20}",
        prop::collection::vec("[a-z0-9_.:/-]{1,20}", 0..6),
        prop::option::of(1u32..=1000),
        prop::option::of(1i64..=i64::MAX),
        prop::option::of("[a-z0-9-]{1,20}"),
        any::<prop::sample::Index>(),
    )
        .prop_map(
            |(name, kind, values, set_value, tags, rate, ts, container, order)| {
                let rate = rate.map(|r| f64::from(r) / 1000.0);
                let raw = if kind == MetricType::Set {
                    set_value.clone()
                } else {
                    values
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                };
                let mut fields = Vec::new();
                if !tags.is_empty() {
                    fields.push(format!("#{}", tags.join(",")));
                }
                if let Some(r) = rate {
                    fields.push(format!("@{r}"));
                }
                if let Some(t) = ts {
                    fields.push(format!("T{t}"));
                }
                if let Some(c) = container {
                    fields.push(format!("c:{c}"));
                }
                if !fields.is_empty() {
                    let n = fields.len();
                    fields.rotate_left(order.index(n));
                }
                let mut line = format!("{name}:{raw}|{}", type_str(kind));
                for f in &fields {
                    line.push('|');
                    line.push_str(f);
                }
                GenLine {
                    line,
                    name,
                    kind,
                    values,
                    set_value,
                    tags,
                    rate,
                    ts,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_line(&bytes);
        let _ = exercise(&bytes);
    }

    #[test]
    fn protocolish_bytes_never_panic(bytes in protocolish_bytes()) {
        let _ = parse_line(&bytes);
        let _ = exercise(&bytes);
        let mut with_event = b"_e{".to_vec();
        with_event.extend_from_slice(&bytes);
        let _ = parse_line(&with_event);
        let mut with_check = b"_sc|".to_vec();
        with_check.extend_from_slice(&bytes);
        let _ = parse_line(&with_check);
    }

    #[test]
    fn well_formed_lines_round_trip(g in well_formed_line()) {
        let parsed = parse_line(g.line.as_bytes());
        let m = match parsed {
            Ok(Parsed::Metric(m)) => m,
            other => return Err(TestCaseError::fail(format!("{:?}: {other:?}", g.line))),
        };
        prop_assert_eq!(m.name, g.name.as_str());
        prop_assert_eq!(m.kind, g.kind);
        prop_assert_eq!(m.tags.iter().count(), g.tags.len());
        prop_assert!(m.tags.iter().eq(g.tags.iter().map(String::as_str)));
        prop_assert_eq!(m.sample_rate, g.rate.unwrap_or(1.0));
        prop_assert_eq!(m.timestamp, g.ts);
        if g.kind == MetricType::Set {
            prop_assert_eq!(m.set_value(), g.set_value.as_str());
            prop_assert_eq!(m.values().count(), 0);
        } else {
            let got: Vec<u64> = m.values().map(f64::to_bits).collect();
            let want: Vec<u64> = g.values.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn events_round_trip_with_byte_lengths(
        title in "[^\\\\\n\r]{1,30}",
        text in "[^\\\\\n\r]{0,60}",
        host in prop::option::of("[a-z0-9.-]{1,20}"),
        tags in prop::collection::vec("[a-z0-9:]{1,10}", 0..4),
    ) {
        let mut line = format!("_e{{{},{}}}:{title}|{text}", title.len(), text.len());
        if let Some(h) = &host {
            line.push_str(&format!("|h:{h}"));
        }
        if !tags.is_empty() {
            line.push_str(&format!("|#{}", tags.join(",")));
        }
        match parse_line(line.as_bytes()) {
            Ok(Parsed::Event(e)) => {
                prop_assert_eq!(e.title, title);
                prop_assert_eq!(e.text, text);
                prop_assert_eq!(e.host, host);
                prop_assert_eq!(e.tags, tags);
            }
            other => return Err(TestCaseError::fail(format!("{line:?}: {other:?}"))),
        }
    }

    /// Any finite f64, written as a Go hex float (`-0x1.8p+3`, subnormals as
    /// `0x0.…p-1022`), with `_` between digits, reads back exactly: the
    /// hex path of the Go-`ParseFloat` parser, rounding included.
    #[test]
    fn parse_value_reads_back_any_hex_written_f64(v in any::<f64>(), under in any::<bool>()) {
        prop_assume!(v.is_finite());
        let bits = v.to_bits();
        let sign = if bits >> 63 == 1 { "-" } else { "" };
        let exp = ((bits >> 52) & 0x7ff) as i64;
        let frac = bits & ((1u64 << 52) - 1);
        let (lead, e) = if exp == 0 { (0, -1022) } else { (1, exp - 1023) };
        let digits = format!("{frac:013x}");
        let digits = if under { format!("{}_{}", &digits[..6], &digits[6..]) } else { digits };
        let s = format!("{sign}0x{lead}.{digits}p{e:+}");
        prop_assert_eq!(parse_value(&s).map(f64::to_bits), Some(bits), "{}", s);
    }

    /// Strings over the float alphabet (signs, `0x`, hex digits, `_`, `.`,
    /// exponents) never panic the Go-`ParseFloat` parser.
    #[test]
    fn parse_value_never_panics_on_float_like_strings(s in "[-+]?(0[xX])?[0-9a-fA-F_.pPeE+-]{0,24}") {
        let _ = parse_value(&s);
    }

    #[test]
    fn parse_value_reads_back_any_displayed_f64(v in any::<f64>()) {
        let s = v.to_string();
        let want = s.parse::<f64>().ok().map(f64::to_bits);
        prop_assert_eq!(parse_value(&s).map(f64::to_bits), want);
    }
}

proptest! {
    // Fewer cases: each one generates up to 30 lines.
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn datagram_of_well_formed_lines_parses_every_line(
        gs in prop::collection::vec(well_formed_line(), 1..30),
        crlf in any::<bool>(),
        trailing in any::<bool>(),
    ) {
        let sep = if crlf { "\r\n" } else { "\n" };
        let mut dgram = gs.iter().map(|g| g.line.as_str()).collect::<Vec<_>>().join(sep);
        if trailing {
            dgram.push_str(sep);
        }
        let (ok, _) = exercise(dgram.as_bytes());
        prop_assert_eq!(ok, gs.len());
    }
}
