//! The CPU cost of distribution sketches against raw points.
//!
//! Two comparisons, each over one interval of 100,000 values in one context
//! (values spread over five decades, as latencies are):
//!
//! - `distribution_interval_100k_values/raw_points`: what dynostat did before
//!   sketches: push every value into a `Vec<f64>`, then serialize it as the
//!   `/api/v1/distribution_points` JSON and gzip it.
//! - `distribution_interval_100k_values/sketch`: what it does now: insert
//!   into the Agent-style sketch, then encode the `SketchPayload` protobuf and
//!   zlib it.
//!
//! And the hot path alone, through the aggregator:
//! `aggregate_insert_one_context/{histogram_raw_samples,distribution_sketch}`
//! (a histogram keeps every raw sample, as distributions did).
//!
//! Run: `cargo bench --bench sketch`. Self-contained: shares nothing with
//! benches/aggregate.rs.

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use dynostat::dogstatsd::aggregate::{Aggregator, AggregatorOptions, DistributionSketch};
use dynostat::dogstatsd::protocol::{Metric, MetricType, Tags};
use dynostat::dogstatsd::sketch::Sketch;
use dynostat::forward::payload::Decoration;

const NOW: i64 = 1_700_000_000;
const VALUES: usize = 100_000;

/// 0.1 .. 10,000 in a scrambled order.
fn values() -> Vec<f64> {
    (0..VALUES as u64)
        .map(|i| ((i * 7_919) % 100_000) as f64 / 10.0 + 0.1)
        .collect()
}

fn raw_points(values: &[f64]) -> usize {
    let mut kept = Vec::new();
    for &v in values {
        kept.push(black_box(v));
    }
    let body = serde_json::json!({"series": [{
        "metric": "latency",
        "points": [[NOW, kept]],
        "tags": ["env:prod"],
        "type": "distribution",
    }]});
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(&json);
    gz.finish().map(|b| b.len()).unwrap_or_default()
}

fn sketch(values: &[f64], deco: &Decoration) -> usize {
    let mut s = Sketch::new();
    for &v in values {
        s.insert(black_box(v), 1.0, |_| true);
    }
    let d = DistributionSketch {
        metric: "latency".to_owned(),
        timestamp: NOW,
        sketch: s,
        tags: vec!["env:prod".to_owned()],
        host: None,
    };
    let mut buf = Vec::new();
    let _ = deco.sketch_entry(&d, &mut buf);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(&buf);
    z.finish().map(|b| b.len()).unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let vals = values();
    let deco = Decoration::default();
    eprintln!(
        "one interval of {VALUES} values: raw points {} B compressed, sketch {} B compressed",
        raw_points(&vals),
        sketch(&vals, &deco)
    );
    let mut group = c.benchmark_group("distribution_interval_100k_values");
    group.throughput(Throughput::Elements(VALUES as u64));
    group.bench_function("raw_points", |b| b.iter(|| raw_points(&vals)));
    group.bench_function("sketch", |b| b.iter(|| sketch(&vals, &deco)));
    group.finish();

    let strings: Vec<String> = vals.iter().map(|v| format!("{v}")).collect();
    let mut group = c.benchmark_group("aggregate_insert_one_context");
    group.throughput(Throughput::Elements(VALUES as u64));
    for (label, kind) in [
        ("histogram_raw_samples", MetricType::Histogram),
        ("distribution_sketch", MetricType::Distribution),
    ] {
        let batch: Vec<Metric<'_>> = strings
            .iter()
            .map(|v| Metric {
                name: "latency",
                raw_values: v,
                value: None,
                kind,
                sample_rate: 1.0,
                tags: Tags("env:prod"),
                timestamp: None,
            })
            .collect();
        let mut agg = Aggregator::new(AggregatorOptions {
            context_limit: 10,
            memory_bytes: usize::MAX,
            counter_expiry_secs: 0,
            ..AggregatorOptions::default()
        });
        group.bench_function(label, |b| {
            b.iter(|| {
                for m in &batch {
                    black_box(agg.insert(black_box(m), NOW));
                }
                // One interval per iteration: flush it, as the listener does.
                black_box(agg.take().into_flush(NOW, 10));
            });
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
