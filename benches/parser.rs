//! Parser benchmark: a realistic 1432-byte DogStatsD datagram (about 30
//! lines, 3 tags each, mixed c/g/h/s) through `lines` + `parse_line`, with and
//! without reading the values and tags back as the aggregator does.
//!
//! Run: `cargo bench --bench parser`. Throughput is reported in lines/s
//! (elements); ns per line = 1e9 / that.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use dynostat::dogstatsd::protocol::{lines, parse_line, Parsed};

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

criterion_group!(benches, bench_datagram);
criterion_main!(benches);
