//! Aggregator benchmarks: inserts into existing contexts (the hot path), with
//! short lines and with the long lines of `loadgen --shape long` (3,000
//! contexts, names of 1 to 200 characters, 2 to 50 tags of 3 to 150
//! characters), and the memory held by 100,000 live contexts.
//!
//! Run: `cargo bench --bench aggregate`. Needs `[[bench]] name = "aggregate"
//! harness = false` in Cargo.toml. The memory figures are printed before the
//! timings; they count live and peak heap bytes through a counting global
//! allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, Throughput};
use dynostat::config::defaults;
use dynostat::dogstatsd::aggregate::{Aggregator, AggregatorOptions, InsertOutcome};
use dynostat::dogstatsd::protocol::{Metric, MetricType, Tags};

#[path = "common/splitmix.rs"]
mod splitmix;
use splitmix::{Rng, WORD};

/// Counts live heap bytes so the memory report needs no OS-specific RSS reading.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The highest `LIVE` since the last reset.
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn count_up(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call forwards to the system allocator with the caller's
// arguments; the counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count_up(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            count_up(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NOW: i64 = 1_700_000_000;
/// Inserts per simulated flush interval: 1 M lines/s over 10 s.
const INSERTS_PER_INTERVAL: u64 = 10_000_000;

fn options(context_limit: usize) -> AggregatorOptions {
    AggregatorOptions {
        context_limit,
        memory_bytes: usize::MAX,
        histogram_aggregates: defaults::HISTOGRAM_AGGREGATES.to_vec(),
        histogram_percentiles: defaults::PERCENTILES.to_vec(),
        // Production defaults for the rest, zero-filling included.
        ..AggregatorOptions::default()
    }
}

/// 1000 contexts: 250 names × 4 tag sets, 3 tags each.
fn lines() -> (Vec<String>, Vec<String>) {
    let names = (0..1000)
        .map(|i| format!("app.requests.{}", i % 250))
        .collect();
    let tags = (0..1000)
        .map(|i| format!("env:prod,service:web,endpoint:/api/v{}", i / 250))
        .collect();
    (names, tags)
}

fn metrics<'a>(
    names: &'a [String],
    tags: &'a [String],
    kind: MetricType,
    value: &'a str,
) -> Vec<Metric<'a>> {
    names
        .iter()
        .zip(tags)
        .map(|(n, t)| Metric {
            name: n,
            raw_values: value,
            value: None,
            kind,
            sample_rate: 1.0,
            tags: Tags(t),
            timestamp: None,
        })
        .collect()
}

/// The long shape's contexts: (name, raw tags, type, value), with the types
/// weighted counters 208, gauges 66, distributions 72, sets 9, histograms 1.
/// A long-shape context: name, raw tags, type, value.
type LongContext = (String, String, MetricType, &'static str);

fn long_contexts(n: usize) -> Vec<LongContext> {
    let mut rng = Rng(0x3_000);
    (0..n)
        .map(|_| {
            let mut name = String::new();
            let len = rng.range(1, 200);
            rng.word(&mut name, len, WORD);
            let (kind, value) = match rng.next_u64() % 356 {
                0..208 => (MetricType::Counter, "1"),
                208..274 => (MetricType::Gauge, "42.5"),
                274..346 => (MetricType::Distribution, "12.5"),
                346..355 => (MetricType::Set, "u17"),
                _ => (MetricType::Histogram, "3"),
            };
            let mut tags = String::new();
            rng.long_tags(&mut tags, WORD);
            (name, tags, kind, value)
        })
        .collect()
}

fn long_metrics(ctx: &[LongContext]) -> Vec<Metric<'_>> {
    ctx.iter()
        .map(|(n, t, kind, v)| Metric {
            name: n,
            raw_values: v,
            value: None,
            kind: *kind,
            sample_rate: 1.0,
            tags: Tags(t),
            timestamp: None,
        })
        .collect()
}

fn bench_insert(c: &mut Criterion) {
    {
        let ctx = long_contexts(3_000);
        let batch = long_metrics(&ctx);
        let mut group = c.benchmark_group("aggregate_insert_3000_long_contexts");
        group.throughput(Throughput::Elements(batch.len() as u64));
        let mut agg = Aggregator::new(options(200_000));
        for m in &batch {
            assert_eq!(agg.insert(m, NOW), InsertOutcome::Accepted);
        }
        let mut inserted = 0u64;
        group.bench_function("weighted_mix", |b| {
            b.iter(|| {
                for m in &batch {
                    black_box(agg.insert(black_box(m), NOW));
                }
                inserted += batch.len() as u64;
                if inserted >= INSERTS_PER_INTERVAL {
                    inserted = 0;
                    drop(agg.take());
                }
            });
        });
        group.finish();
    }

    let mut group = c.benchmark_group("aggregate_insert_1000_contexts_3_tags");
    group.throughput(Throughput::Elements(1000));
    for (label, kind, value) in [
        ("counter", MetricType::Counter, "1"),
        ("gauge", MetricType::Gauge, "42.5"),
        ("histogram", MetricType::Histogram, "12.5"),
        ("set", MetricType::Set, "user-1234"),
    ] {
        let (names, tags) = lines();
        let batch = metrics(&names, &tags, kind, value);
        let mut agg = Aggregator::new(options(200_000));
        for m in &batch {
            assert_eq!(agg.insert(m, NOW), InsertOutcome::Accepted);
        }
        let mut inserted = 0u64;
        group.bench_function(label, |b| {
            b.iter(|| {
                for m in &batch {
                    black_box(agg.insert(black_box(m), NOW));
                }
                inserted += batch.len() as u64;
                // Flush like a real interval so histogram samples stay bounded;
                // the contexts are then recreated (cold path), as in production.
                if inserted >= INSERTS_PER_INTERVAL {
                    inserted = 0;
                    drop(agg.take());
                }
            });
        });
    }
    group.finish();

    // Flush cost of 1000 histogram contexts × 10 samples each.
    let (names, tags) = lines();
    let batch = metrics(&names, &tags, MetricType::Histogram, "1:2:3:4:5:6:7:8:9:10");
    c.bench_function("aggregate_flush_1000_histograms_x10", |b| {
        b.iter_batched(
            || {
                let mut agg = Aggregator::new(options(200_000));
                for m in &batch {
                    agg.insert(m, NOW);
                }
                agg.take()
            },
            |bucket| black_box(bucket.into_flush(NOW, 10)),
            criterion::BatchSize::SmallInput,
        );
    });

    // The mixed load's histograms over one 10 s interval at 1 M lines/s:
    // 250 contexts, 10,000 samples each (values as loadgen sends them).
    let hist: Vec<Metric<'_>> = batch.iter().take(250).copied().collect();
    let values: Vec<String> = (0..10_000u64)
        .map(|j| ((j * 13) % 997).to_string())
        .collect();
    // Integers, as loadgen sends them: the plain sum is the compensated
    // sum, so median and percentiles keep their selection. Fractions (the
    // same values in tenths) take the Agent's sort and compensated sum.
    let tenths: Vec<String> = (0..10_000u64)
        .map(|j| format!("{}.{}", (j * 13) % 997, j % 10))
        .collect();
    for (label, values) in [
        ("aggregate_flush_250_histograms_x10000", &values),
        ("aggregate_flush_250_fractional_histograms_x10000", &tenths),
    ] {
        c.bench_function(label, |b| {
            b.iter_batched(
                || {
                    let mut agg = Aggregator::new(options(200_000));
                    for v in values {
                        for m in &hist {
                            let mut m = *m;
                            m.raw_values = v;
                            m.value = v.parse().ok();
                            agg.insert(&m, NOW);
                        }
                    }
                    agg.take()
                },
                |bucket| black_box(bucket.into_flush(NOW, 10)),
                criterion::BatchSize::LargeInput,
            );
        });
    }
}

/// Live heap bytes held by 100,000 counter contexts with 3 tags.
fn report_memory() {
    let names: Vec<String> = (0..100_000)
        .map(|i| format!("app.metric.{}", i % 100))
        .collect();
    let tags: Vec<String> = (0..100_000)
        .map(|i| format!("env:prod,service:web,shard:{}", i / 100))
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut agg = Aggregator::new(options(200_000));
    for (n, t) in names.iter().zip(&tags) {
        let m = Metric {
            name: n,
            raw_values: "1",
            value: None,
            kind: MetricType::Counter,
            sample_rate: 1.0,
            tags: Tags(t),
            timestamp: None,
        };
        assert_eq!(agg.insert(&m, NOW), InsertOutcome::Accepted);
    }
    assert_eq!(agg.contexts(), 100_000);
    let held = LIVE.load(Ordering::Relaxed) - before;
    let bucket = agg.take();
    let flush = bucket.into_flush(NOW, 10);
    let with_flush = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "memory: 100000 live contexts hold {:.1} MiB ({} B/context); the built Flush holds {:.1} MiB",
        held as f64 / 1_048_576.0,
        held / 100_000,
        with_flush as f64 / 1_048_576.0,
    );
    drop(flush);
}

/// A bucket of 100,000 contexts shaped like `examples/loadgen.rs`'s load:
/// counters, gauges, histograms (3 samples each) and sets in turn, 3 tags.
fn loadgen_bucket() -> dynostat::dogstatsd::aggregate::Bucket {
    let mut agg = Aggregator::new(options(200_000));
    for round in 0..3 {
        for k in 0..100_000u32 {
            let (name, kind, value) = match k % 4 {
                0 => (format!("lg.cnt.m{k}"), MetricType::Counter, "1".to_owned()),
                1 => (format!("lg.gge.m{k}"), MetricType::Gauge, format!("{k}.5")),
                2 => (
                    format!("lg.hst.m{k}"),
                    MetricType::Histogram,
                    format!("{}", k + round),
                ),
                _ => (format!("lg.set.m{k}"), MetricType::Set, format!("u{round}")),
            };
            let tags = format!("env:bench,svc:web,shard:{}", k % 16);
            let m = Metric {
                name: &name,
                raw_values: &value,
                value: None,
                kind,
                sample_rate: 1.0,
                tags: Tags(&tags),
                timestamp: None,
            };
            agg.insert(&m, NOW);
        }
    }
    agg.take()
}

/// Peak heap above the live bucket while a flush of it is built and encoded:
/// all at once (`into_flush`, then `encode_flush`) against chunk by chunk
/// (`into_chunks` into a `FlushEncoder`, as the flush loop does).
fn report_flush_peak() {
    use dynostat::dogstatsd::aggregate::CHUNK_CONTEXTS;
    use dynostat::forward::payload::{encode_flush, Decoration, FlushEncoder, Limits};
    let deco = Decoration::default();
    let mib = |b: usize| b as f64 / 1_048_576.0;

    let base = LIVE.load(Ordering::Relaxed);
    let bucket = loadgen_bucket();
    let live = LIVE.load(Ordering::Relaxed) - base;
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let flush = bucket.into_flush(NOW, 10);
    let encoded = encode_flush(&flush, &deco, Limits::default());
    drop(flush);
    let whole = PEAK.load(Ordering::Relaxed) - base;
    let payloads = encoded.payloads.len();
    drop(encoded);

    let bucket = loadgen_bucket();
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let mut enc = FlushEncoder::new(&deco, Limits::default());
    for chunk in bucket.into_chunks(NOW, 10, CHUNK_CONTEXTS) {
        enc.push(&chunk);
    }
    let encoded = enc.finish();
    let chunked = PEAK.load(Ordering::Relaxed) - base;
    assert_eq!(encoded.payloads.len(), payloads);
    println!(
        "memory: 100000 loadgen-shaped contexts hold {:.1} MiB; peak heap through the flush: {:.1} MiB built whole, {:.1} MiB in chunks of {CHUNK_CONTEXTS} ({payloads} payloads)",
        mib(live),
        mib(whole),
        mib(chunked),
    );
}

/// This thread's CPU time in nanoseconds: steadier than wall time on a
/// shared, noisy machine.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(ts.tv_nsec).unwrap_or(0)
}

/// CPU nanoseconds per insert into 1000 existing contexts.
fn report_cpu() {
    let (names, tags) = lines();
    for (label, kind, value) in [
        ("counter", MetricType::Counter, "1"),
        ("gauge", MetricType::Gauge, "42.5"),
        ("histogram", MetricType::Histogram, "12.5"),
        ("timer", MetricType::Timer, "3"),
        ("set", MetricType::Set, "user-1234"),
        ("distribution", MetricType::Distribution, "0.25"),
    ] {
        let batch = metrics(&names, &tags, kind, value);
        // 1.9 M inserts stay under the histogram sample cap; best of 5 runs.
        let rounds = 1_900;
        let mut best = u128::MAX;
        for _ in 0..5 {
            let mut agg = Aggregator::new(options(200_000));
            for m in &batch {
                agg.insert(m, NOW);
            }
            let start = thread_cpu_ns();
            for _ in 0..rounds {
                for m in &batch {
                    black_box(agg.insert(black_box(m), NOW));
                }
            }
            best = best.min(thread_cpu_ns() - start);
            drop(agg);
        }
        let spent = best;
        let n = rounds as u128 * batch.len() as u128;
        println!(
            "cpu: {label:<12} {:.1} ns/insert (thread CPU time, {n} inserts into 1000 existing contexts)",
            spent as f64 / n as f64
        );
    }
    let ctx = long_contexts(3_000);
    let batch = long_metrics(&ctx);
    let bytes: usize = ctx.iter().map(|c| c.0.len() + c.1.len()).sum();
    let rounds = 300;
    let mut best = u128::MAX;
    for _ in 0..5 {
        let mut agg = Aggregator::new(options(200_000));
        for m in &batch {
            agg.insert(m, NOW);
        }
        let start = thread_cpu_ns();
        for _ in 0..rounds {
            for m in &batch {
                black_box(agg.insert(black_box(m), NOW));
            }
        }
        best = best.min(thread_cpu_ns() - start);
    }
    let n = rounds as u128 * batch.len() as u128;
    println!(
        "cpu: long lines   {:.1} ns/insert (thread CPU time, {n} inserts into 3000 existing contexts, {} bytes of name and tags a line on average)",
        best as f64 / n as f64,
        bytes / ctx.len()
    );
}

fn main() {
    report_memory();
    report_flush_peak();
    report_cpu();
    let mut c = Criterion::default().configure_from_args();
    bench_insert(&mut c);
    c.final_summary();
}
