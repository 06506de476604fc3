//! Parser benchmark: a realistic 1432-byte DogStatsD datagram (about 30
//! lines, 3 tags each, mixed c/g/h/s) through `lines` + `parse_line`, with and
//! without reading the values and tags back as the aggregator does; and an
//! 8 KiB datagram of long lines (names of 1 to 200 characters, 2 to 50 tags
//! of 3 to 150 characters, the shape of `loadgen --shape long`), through the
//! listener's path: one UTF-8 check per datagram, then `lines` + `parse_str`.
//!
//! `scan` is the listener's path since the one-pass scanner
//! (`dogstatsd::scan`): one UTF-8 check per datagram, then one pass.
//!
//! Run: `cargo bench --bench parser`. Throughput is reported in lines/s
//! (elements); ns per line = 1e9 / that.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use dynostat::dogstatsd::protocol::{lines, parse_line, parse_str, Parsed};
use dynostat::dogstatsd::scan;

#[path = "common/splitmix.rs"]
mod splitmix;
use splitmix::{Rng, WORD};

/// Builds a datagram of whole lines no longer than `limit` bytes: counters,
/// gauges, histograms and sets in turn, 3 tags each, values typical of real
/// clients (small integers, a few decimals, set members that are ids).
fn realistic_datagram(limit: usize) -> (Vec<u8>, usize) {
    let routes = ["/", "/api", "/login", "/cart", "/search"];
    let mut out = Vec::with_capacity(limit);
    let mut n = 0;
    for i in 0.. {
        let route = routes[i % routes.len()];
        let line = match i % 4 {
            0 => format!("web.req.count:1|c|#env:prod,route:{route},code:200"),
            1 => format!("web.pool.used:{}|g|#env:prod,db:main,az:eu1", 10 + i % 7),
            2 => format!(
                "web.req.ms:{}.{}|h|#env:prod,route:{route},m:GET",
                12 + i,
                i % 10
            ),
            _ => format!("web.users:u{}|s|#env:prod,route:{route},v:2", 1000 + i),
        };
        if out.len() + line.len() + 1 > limit {
            break;
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        n += 1;
    }
    (out, n)
}

fn bench_datagram(c: &mut Criterion) {
    let (dgram, n) = realistic_datagram(1432);
    let mut g = c.benchmark_group(format!("datagram_1432B_{n}_lines"));
    g.throughput(Throughput::Elements(n as u64));

    g.bench_function("parse", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for line in lines(black_box(&dgram)) {
                if let Ok(p) = parse_line(line) {
                    black_box(&p);
                    ok += 1;
                }
            }
            assert_eq!(ok, n);
        })
    });

    g.bench_function("scan", |b| {
        b.iter(|| {
            // The listener's path: one UTF-8 check, then one pass.
            let d = black_box(&dgram);
            let text = simdutf8::basic::from_utf8(d).ok();
            let mut ok = 0usize;
            for (_, p) in scan::datagram(d, text) {
                if let Ok(p) = p {
                    black_box(&p);
                    ok += 1;
                }
            }
            assert_eq!(ok, n);
        })
    });

    g.bench_function("parse_values_tags", |b| {
        b.iter(|| {
            let mut acc = 0.0f64;
            let mut tags = 0usize;
            for line in lines(black_box(&dgram)) {
                if let Ok(Parsed::Metric(m)) = parse_line(line) {
                    acc += m.values().sum::<f64>();
                    tags += m.tags.iter().count();
                    black_box((m.name, m.set_value()));
                }
            }
            black_box((acc, tags))
        })
    });
    g.finish();
}

/// One long line: a name of 1 to 200 characters, 2 to 50 `key:value` tags
/// of 3 to 150 characters, a type weighted as in `loadgen --shape long`.
fn long_line(rng: &mut Rng) -> String {
    let mut s = String::new();
    let n = rng.range(1, 200);
    rng.word(&mut s, n, WORD);
    let kind = match rng.next_u64() % 356 {
        0..208 => "1|c",
        208..274 => "42.5|g",
        274..346 => "12.5|d",
        346..355 => "u17|s",
        _ => "3|h",
    };
    s.push(':');
    s.push_str(kind);
    s.push_str("|#");
    rng.long_tags(&mut s, WORD);
    s
}

/// Whole long lines packed into datagrams of at most `limit` bytes; returns
/// the datagrams and the lines in them.
fn long_datagrams(limit: usize, count: usize) -> (Vec<Vec<u8>>, usize) {
    let mut rng = Rng(0x10_46);
    let mut out = Vec::new();
    let mut cur = Vec::with_capacity(limit);
    let mut n = 0;
    while out.len() < count {
        let line = long_line(&mut rng);
        if line.len() + 1 > limit {
            continue;
        }
        if cur.len() + line.len() + 1 > limit {
            out.push(std::mem::take(&mut cur));
            continue;
        }
        cur.extend_from_slice(line.as_bytes());
        cur.push(b'\n');
        n += 1;
    }
    // The last partial datagram was never pushed; its lines do not count.
    let n = out.iter().map(|d| lines(d).count()).sum::<usize>().min(n);
    (out, n)
}

fn bench_long(c: &mut Criterion) {
    let (dgrams, n) = long_datagrams(8192, 16);
    let bytes: usize = dgrams.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group(format!("long_16x8KiB_{n}_lines_{bytes}B"));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("utf8_lines_parse", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for d in black_box(&dgrams) {
                // As the listener does: one check per datagram, then the
                // lines cut from the checked text.
                let Ok(text) = std::str::from_utf8(d) else {
                    continue;
                };
                for line in lines(d) {
                    let start = line.as_ptr() as usize - d.as_ptr() as usize;
                    let Some(line) = text.get(start..start + line.len()) else {
                        continue;
                    };
                    if let Ok(p) = parse_str(line) {
                        black_box(&p);
                        ok += 1;
                    }
                }
            }
            assert_eq!(ok, n);
        })
    });
    g.bench_function("scan", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for d in black_box(&dgrams) {
                let text = simdutf8::basic::from_utf8(d).ok();
                for (_, p) in scan::datagram(d, text) {
                    if let Ok(p) = p {
                        black_box(&p);
                        ok += 1;
                    }
                }
            }
            assert_eq!(ok, n);
        })
    });
    g.bench_function("parse_line", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for d in black_box(&dgrams) {
                for line in lines(d) {
                    if let Ok(p) = parse_line(line) {
                        black_box(&p);
                        ok += 1;
                    }
                }
            }
            assert_eq!(ok, n);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_datagram, bench_long);
criterion_main!(benches);
