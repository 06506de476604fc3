use super::*;
use crate::config::defaults;
use crate::dogstatsd::protocol::{AlertType, CheckStatus, Priority, Tags};

const NOW: i64 = 1_700_000_000;
const TS: i64 = 1_699_999_990;

/// Zero-filling off: most tests look at one flush at a time.
fn opts() -> AggregatorOptions {
    AggregatorOptions {
        context_limit: 1_000,
        memory_bytes: 1 << 30,
        histogram_aggregates: defaults::HISTOGRAM_AGGREGATES.to_vec(),
        histogram_percentiles: defaults::PERCENTILES.to_vec(),
        counter_expiry_secs: 0,
        ..AggregatorOptions::default()
    }
}

fn metric<'a>(name: &'a str, raw: &'a str, kind: MetricType, tags: &'a str) -> Metric<'a> {
    Metric {
        name,
        raw_values: raw,
        value: None,
        kind,
        sample_rate: 1.0,
        tags: Tags(tags),
        timestamp: None,
    }
}

fn rated<'a>(name: &'a str, raw: &'a str, kind: MetricType, rate: f64) -> Metric<'a> {
    Metric {
        sample_rate: rate,
        ..metric(name, raw, kind, "")
    }
}

fn stamped<'a>(name: &'a str, raw: &'a str, kind: MetricType, ts: i64) -> Metric<'a> {
    Metric {
        timestamp: Some(ts),
        ..metric(name, raw, kind, "")
    }
}

fn flush(agg: &mut Aggregator) -> Flush {
    agg.take().into_flush(TS, 10)
}

fn find<'a>(f: &'a Flush, name: &str) -> &'a Series {
    let found: Vec<&Series> = f.series.iter().filter(|s| s.metric == name).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one series {name} in {:#?}",
        f.series
    );
    found[0]
}

fn value(f: &Flush, name: &str) -> f64 {
    let s = find(f, name);
    assert_eq!(s.points.len(), 1, "{name}");
    assert_eq!(s.points[0].0, TS, "{name} timestamp");
    s.points[0].1
}

fn names(f: &Flush) -> Vec<&str> {
    f.series.iter().map(|s| s.metric.as_str()).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn counter_anchor_example_is_a_rate_of_2_3() {
    // ANCHORS: 2@0.5 then 1, 2, 5, 0, 8, 3 flushes 2.3 over 10 s.
    let mut agg = Aggregator::new(opts());
    assert_eq!(
        agg.insert(&rated("c", "2", MetricType::Counter, 0.5), NOW),
        InsertOutcome::Accepted
    );
    for v in ["1", "2", "5", "0", "8", "3"] {
        assert_eq!(
            agg.insert(&metric("c", v, MetricType::Counter, ""), NOW),
            InsertOutcome::Accepted
        );
    }
    let f = flush(&mut agg);
    assert_eq!(f.series.len(), 1);
    let s = find(&f, "c");
    assert_eq!(s.kind, SeriesKind::Rate);
    assert_eq!(s.interval, Some(10));
    assert_eq!(s.unit, None);
    assert!(close(value(&f, "c"), 2.3), "{}", value(&f, "c"));
}

#[test]
fn counter_rate_uses_the_given_interval() {
    let mut agg = Aggregator::new(opts());
    agg.insert(&metric("c", "30", MetricType::Counter, ""), NOW);
    let f = agg.take().into_flush(TS, 15);
    assert_eq!(f.series[0].points, vec![(TS, 2.0)]);
    assert_eq!(f.series[0].interval, Some(15));
}

#[test]
fn gauge_keeps_the_last_value_and_ignores_the_rate() {
    let mut agg = Aggregator::new(opts());
    agg.insert(&metric("g", "5", MetricType::Gauge, ""), NOW);
    agg.insert(&rated("g", "7", MetricType::Gauge, 0.1), NOW);
    agg.insert(&metric("g", "1:2:-3.5", MetricType::Gauge, ""), NOW);
    let f = flush(&mut agg);
    let s = find(&f, "g");
    assert_eq!(s.kind, SeriesKind::Gauge);
    assert_eq!(s.interval, None);
    assert_eq!(value(&f, "g"), -3.5);
}

#[test]
fn set_counts_unique_members_as_a_gauge() {
    let mut agg = Aggregator::new(opts());
    for m in ["a", "b", "a", "abc:def", "b", "abc:def", "c"] {
        assert_eq!(
            agg.insert(&rated("users", m, MetricType::Set, 0.5), NOW),
            InsertOutcome::Accepted
        );
    }
    let f = flush(&mut agg);
    assert_eq!(find(&f, "users").kind, SeriesKind::Gauge);
    assert_eq!(value(&f, "users"), 4.0);
}

#[test]
fn histogram_anchor_example() {
    // ANCHORS: 1, 10, 4, 5, 2, 2 gives max 10, median 2, avg 4, count 0.6, 95percentile 10.
    let mut agg = Aggregator::new(opts());
    for v in ["1", "10", "4", "5", "2", "2"] {
        agg.insert(&metric("h", v, MetricType::Histogram, ""), NOW);
    }
    let f = flush(&mut agg);
    assert_eq!(
        names(&f),
        ["h.max", "h.median", "h.avg", "h.count", "h.95percentile"]
    );
    assert_eq!(value(&f, "h.max"), 10.0);
    assert_eq!(value(&f, "h.median"), 2.0);
    assert_eq!(value(&f, "h.avg"), 4.0);
    assert!(close(value(&f, "h.count"), 0.6));
    assert_eq!(value(&f, "h.95percentile"), 10.0);
    for s in &f.series {
        if s.metric == "h.count" {
            assert_eq!((s.kind, s.interval), (SeriesKind::Rate, Some(10)));
        } else {
            assert_eq!(
                (s.kind, s.interval),
                (SeriesKind::Gauge, None),
                "{}",
                s.metric
            );
        }
        assert_eq!(s.unit, None);
    }
}

#[test]
fn interleaved_histograms_each_flush_as_if_alone() {
    // Samples of several histograms wait in one log in arrival order; each
    // must flush exactly what it gives when it is the only one.
    let values = |k: usize| -> Vec<String> {
        (0..300)
            .map(|i| {
                format!(
                    "{}",
                    ((i * (k + 3) * 37) % 211) as f64 * 0.25 - 7.0 + 1e3 * k as f64
                )
            })
            .collect()
    };
    let hists = ["h.a", "h.b", "t.c", "h.d"];
    let kind = |k: usize| {
        if k == 2 {
            MetricType::Timer
        } else {
            MetricType::Histogram
        }
    };
    let alone: Vec<Flush> = (0..hists.len())
        .map(|k| {
            let mut agg = Aggregator::new(opts());
            // h.d gets every third value, as below.
            let step = if k == 3 { 3 } else { 1 };
            for v in values(k).into_iter().step_by(step) {
                agg.insert(&metric(hists[k], &v, kind(k), "env:x"), NOW);
            }
            flush(&mut agg)
        })
        .collect();
    let mut agg = Aggregator::new(opts());
    let all: Vec<Vec<String>> = (0..hists.len()).map(values).collect();
    #[allow(clippy::needless_range_loop)] // i picks the round, k the histogram
    for i in 0..300 {
        for k in (0..hists.len()).rev() {
            // h.d only every third round: a histogram with fewer samples.
            if k == 3 && i % 3 != 0 {
                continue;
            }
            let v = &all[k][i];
            agg.insert(&metric(hists[k], v, kind(k), "env:x"), NOW);
            // A sampled value, kept apart from the log, now and then.
            if k == 1 && i % 50 == 0 {
                agg.insert(&rated("h.e", v, MetricType::Histogram, 0.5), NOW);
            }
        }
    }
    let together = flush(&mut agg);
    // max, median, avg, count, 95percentile for each of the five.
    assert_eq!(together.series.len(), 25, "{:?}", names(&together));
    for (k, f) in alone.iter().enumerate() {
        assert_eq!(f.series.len(), 5, "{}", hists[k]);
        for s in &f.series {
            assert_eq!(
                find(&together, &s.metric).points,
                s.points,
                "{} interleaved",
                s.metric
            );
        }
    }
    let every_third: Vec<f64> = all[3]
        .iter()
        .step_by(3)
        .map(|v| v.parse().unwrap())
        .collect();
    let mut sorted = every_third.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(value(&together, "h.d.max"), *sorted.last().unwrap());
    assert!(close(
        value(&together, "h.d.count"),
        sorted.len() as f64 / 10.0
    ));
    assert!(close(value(&together, "h.e.count"), 12.0 / 10.0));
}

#[test]
fn a_bucket_of_histograms_gives_every_byte_back() {
    let mut agg = budget(1 << 30);
    for i in 0..20_000 {
        let name = format!("h.{}", i % 40);
        let v = format!("{}", i % 97);
        agg.insert(&metric(&name, &v, MetricType::Histogram, ""), NOW);
    }
    let live = agg.memory_bytes();
    // 20,000 samples at 20 bytes each (12 in the log, 8 in their
    // histogram after the hand-out), with the log's growth slack.
    assert!(live >= 20_000 * 20, "{live}");
    let log_bytes = agg.cur.log.heap_bytes();
    assert!(log_bytes >= 20_000 * 12, "{log_bytes}");
    let mut chunks = agg.take().into_chunks(TS, 1, 10);
    // The histograms' 8 bytes a sample were charged with the log, whose
    // own bytes are given back: nothing is added at the hand-out.
    assert_eq!(agg.memory_bytes(), live - log_bytes);
    let first = chunks.next().expect("a chunk");
    assert_eq!(
        first
            .series
            .iter()
            .filter(|s| s.metric.ends_with(".count"))
            .count(),
        10
    );
    for _ in chunks.by_ref() {}
    assert_eq!(agg.memory_bytes(), 0);
}

/// Past the budget the log keeps its first samples, in arrival order, for
/// the median and percentiles; everything still counts in `.count .sum
/// .avg .min .max`, and the hand-out at the flush stays within the limit.
#[test]
fn histogram_samples_at_the_budget_edge_keep_the_first_ones() {
    const LIMIT: usize = 64 * 1024;
    const SAMPLES: u32 = 20_000;
    let mut agg = budget(LIMIT);
    for i in 0..SAMPLES {
        let name = format!("h.{}", i % 4);
        let v = format!("{i}");
        assert_eq!(
            agg.insert(&metric(&name, &v, MetricType::Histogram, ""), NOW),
            InsertOutcome::Accepted
        );
        assert!(agg.memory_bytes() <= LIMIT, "sample {i}");
    }
    let live = agg.memory_bytes();
    let log_bytes = agg.cur.log.heap_bytes();
    let bucket = agg.take();
    let dropped = u32::try_from(bucket.dropped()).unwrap();
    // 20 B a sample: a 64 KiB budget keeps a few thousand.
    assert!((1_000..SAMPLES).contains(&(SAMPLES - dropped)), "{dropped}");
    let kept = SAMPLES - dropped;
    // The hand-out holds the log and the histograms' values at once: both
    // were charged, within the limit, before it starts.
    assert!(
        log_bytes + kept as usize * 8 <= live,
        "{log_bytes} {kept} {live}"
    );
    let mut chunks = bucket.into_chunks(TS, 10, 1);
    assert_eq!(agg.memory_bytes(), live - log_bytes);
    let mut together = Flush::default();
    for chunk in chunks.by_ref() {
        assert!(agg.memory_bytes() <= LIMIT);
        together.append(chunk);
    }
    assert_eq!(agg.memory_bytes(), 0);
    for j in 0..4 {
        // The same histogram alone: every value, and only the kept ones.
        let mut all = budget(usize::MAX);
        let mut first = budget(usize::MAX);
        for i in (j..SAMPLES).step_by(4) {
            let v = format!("{i}");
            all.insert(&metric("h", &v, MetricType::Histogram, ""), NOW);
            if i < kept {
                first.insert(&metric("h", &v, MetricType::Histogram, ""), NOW);
            }
        }
        let (all, first) = (flush(&mut all), flush(&mut first));
        let prefix = format!("h.{j}.");
        let mut seen = 0;
        for s in together
            .series
            .iter()
            .filter(|s| s.metric.starts_with(&prefix))
        {
            let stat = &s.metric[prefix.len()..];
            let rank = stat == "median" || stat.ends_with("percentile");
            let want = value(if rank { &first } else { &all }, &format!("h.{stat}"));
            assert_eq!(s.points[0].1, want, "{}", s.metric);
            seen += 1;
        }
        // max, median, avg, count and 95percentile, by default.
        assert_eq!(seen, 5, "series of h.{j}");
    }
}

#[test]
fn multi_value_line_is_several_samples() {
    let mut agg = Aggregator::new(opts());
    agg.insert(
        &metric("h", "1:10:4::5:2:2", MetricType::Histogram, ""),
        NOW,
    );
    let f = flush(&mut agg);
    assert!(close(value(&f, "h.count"), 0.6));
    assert_eq!(value(&f, "h.median"), 2.0);
}

#[test]
fn timer_is_a_histogram_in_milliseconds_except_count() {
    let mut agg = Aggregator::new(opts());
    for v in ["100", "300"] {
        agg.insert(&metric("t", v, MetricType::Timer, ""), NOW);
    }
    let f = flush(&mut agg);
    assert_eq!(value(&f, "t.avg"), 200.0);
    assert_eq!(value(&f, "t.median"), 100.0);
    for s in &f.series {
        let want = if s.metric == "t.count" {
            None
        } else {
            Some("millisecond")
        };
        assert_eq!(s.unit, want, "{}", s.metric);
    }
}

#[test]
fn histogram_samples_weigh_float_one_over_rate() {
    let mut agg = Aggregator::new(opts());
    // 1 weighs 4, 100 weighs 1: count 5, sorted weights [1 x4, 100 x1].
    agg.insert(&rated("h", "1", MetricType::Histogram, 0.25), NOW);
    agg.insert(&metric("h", "100", MetricType::Histogram, ""), NOW);
    // 0.3 → 1/0.3 = 3.33, a float weight as in the current Agent.
    agg.insert(&rated("w", "2", MetricType::Histogram, 0.3), NOW);
    // 4 × @0.75: count 5.33.
    for _ in 0..4 {
        agg.insert(&rated("q", "8", MetricType::Histogram, 0.75), NOW);
    }
    // Weights 1 (v=1), 3.33 (v=2), 1 (v=3): count 5.33; median target
    // 2.17 → the 2; p95 target (95*5.33-1)/100 = 5.06 → the 3.
    agg.insert(&metric("m", "1", MetricType::Histogram, ""), NOW);
    agg.insert(&rated("m", "2", MetricType::Histogram, 0.3), NOW);
    agg.insert(&metric("m", "3", MetricType::Histogram, ""), NOW);
    let f = agg.take().into_flush(TS, 1);
    assert_eq!(value(&f, "h.count"), 5.0);
    assert_eq!(value(&f, "h.median"), 1.0);
    assert!(close(value(&f, "h.avg"), 104.0 / 5.0));
    // target (95*5-1)/100 = 4.74: the 5th unit of weight is the 100.
    assert_eq!(value(&f, "h.95percentile"), 100.0);
    assert!(close(value(&f, "w.count"), 1.0 / 0.3));
    assert!(close(value(&f, "w.avg"), 2.0));
    assert!(close(value(&f, "q.count"), 4.0 / 0.75));
    assert!(close(value(&f, "q.avg"), 8.0));
    assert!(close(value(&f, "m.count"), 2.0 + 1.0 / 0.3));
    assert_eq!(value(&f, "m.median"), 2.0);
    assert_eq!(value(&f, "m.95percentile"), 3.0);
    assert!(close(
        value(&f, "m.avg"),
        (1.0 + 2.0 / 0.3 + 3.0) / (2.0 + 1.0 / 0.3)
    ));
}

#[test]
fn percentiles_are_configurable_and_named_like_the_agent() {
    let mut o = opts();
    o.histogram_aggregates = vec![
        HistogramAggregate::Min,
        HistogramAggregate::Sum,
        HistogramAggregate::Count,
    ];
    // Unsorted and duplicated on purpose; the Agent sorts.
    o.histogram_percentiles = vec![0.99, 0.5, 0.29, 0.99];
    let mut agg = Aggregator::new(o);
    for v in 1..=100 {
        let s = v.to_string();
        agg.insert(&metric("lat", &s, MetricType::Histogram, ""), NOW);
    }
    let f = flush(&mut agg);
    assert_eq!(
        names(&f),
        [
            "lat.min",
            "lat.sum",
            "lat.count",
            "lat.29percentile",
            "lat.50percentile",
            "lat.99percentile"
        ]
    );
    assert_eq!(value(&f, "lat.min"), 1.0);
    assert_eq!(value(&f, "lat.sum"), 5050.0);
    assert_eq!(value(&f, "lat.count"), 10.0);
    // target (p*100-1)/100 = p-1 (0-based) → the value p.
    assert_eq!(value(&f, "lat.29percentile"), 29.0);
    assert_eq!(value(&f, "lat.50percentile"), 50.0);
    assert_eq!(value(&f, "lat.99percentile"), 99.0);
}

#[test]
fn one_sample_histogram_reports_it_everywhere() {
    let mut agg = Aggregator::new(opts());
    agg.insert(&metric("h", "7", MetricType::Histogram, ""), NOW);
    let f = flush(&mut agg);
    for n in ["h.max", "h.median", "h.avg", "h.95percentile"] {
        assert_eq!(value(&f, n), 7.0, "{n}");
    }
    assert!(close(value(&f, "h.count"), 0.1));
}

#[test]
fn distribution_is_a_sketch_with_float_weights() {
    let mut agg = Aggregator::new(opts());
    agg.insert(&metric("d", "1:2", MetricType::Distribution, "b,a"), NOW);
    agg.insert(&rated("d2", "5", MetricType::Distribution, 0.25), NOW);
    // 3 values at @0.3 weigh 1/0.3 each in the sum, and count
    // trunc(3.33) = 3 each, as the Agent's uint(1/rate): 9 in all.
    for _ in 0..3 {
        agg.insert(&rated("d3", "9", MetricType::Distribution, 0.3), NOW);
    }
    // A small rate: the weight is 100,000 (below `MAX_WEIGHT`).
    agg.insert(&rated("d4", "9", MetricType::Distribution, 0.000_01), NOW);
    let f = flush(&mut agg);
    assert!(f.series.is_empty(), "{:?}", f.series);
    assert_eq!(f.distributions.len(), 4);
    let d = &f.distributions[0];
    assert_eq!(d.metric, "d");
    assert_eq!(d.timestamp, TS);
    assert_eq!(d.sketch.count(), 2.0);
    assert_eq!(d.sketch.sum(), 3.0);
    assert_eq!((d.sketch.min(), d.sketch.max()), (1.0, 2.0));
    assert_eq!(d.tags, ["a", "b"]);
    assert_eq!(d.host, None);
    assert_eq!(f.distributions[1].sketch.count(), 4.0);
    assert_eq!(f.distributions[1].sketch.sum(), 20.0);
    let d3 = &f.distributions[2].sketch;
    assert!(close(d3.count(), 9.0));
    assert_eq!(d3.count_rounded(), 9);
    assert!(close(d3.sum(), 90.0));
    assert_eq!(d3.bins().map(|b| b.1).sum::<u32>(), 9);
    // 1/0.00001 is 99,999.99999999999 in floats, truncated as the Agent's
    // uint(n) does.
    assert_eq!(f.distributions[3].sketch.count_rounded(), 99_999);
}

#[test]
fn distribution_and_histogram_of_one_name_are_separate_contexts() {
    let mut agg = Aggregator::new(opts());
    agg.insert(&metric("x", "1", MetricType::Distribution, ""), NOW);
    agg.insert(&metric("x", "1", MetricType::Histogram, ""), NOW);
    assert_eq!(agg.contexts(), 2);
    let f = flush(&mut agg);
    assert_eq!(f.distributions.len(), 1);
    assert_eq!(value(&f, "x.max"), 1.0);
}

#[test]
fn tag_order_and_duplicates_make_one_context() {
    let mut agg = Aggregator::new(opts());
    for tags in [
        "b:2,a:1",
        "a:1,b:2",
        "a:1,b:2,a:1",
        "b:2,,a:1,b:2",
        "a:1,a:1,b:2",
    ] {
        agg.insert(&metric("c", "1", MetricType::Counter, tags), NOW);
    }
    agg.insert(&metric("c", "1", MetricType::Counter, "a:1"), NOW);
    agg.insert(&metric("c", "1", MetricType::Counter, ""), NOW);
    assert_eq!(agg.contexts(), 3);
    let f = flush(&mut agg);
    assert_eq!(f.series.len(), 3);
    assert_eq!(f.series[0].tags, ["a:1", "b:2"]);
    assert!(close(f.series[0].points[0].1, 0.5));
    assert_eq!(f.series[1].tags, ["a:1"]);
    assert!(f.series[2].tags.is_empty());
}

#[test]
fn host_tag_sets_the_host_last_wins_and_is_removed() {
    let mut agg = Aggregator::new(opts());
    agg.insert(
        &metric("g", "1", MetricType::Gauge, "host:a,env:prod,host:b"),
        NOW,
    );
    agg.insert(&metric("g", "2", MetricType::Gauge, "env:prod,host:b"), NOW);
    agg.insert(&metric("g", "3", MetricType::Gauge, "env:prod,host:a"), NOW);
    agg.insert(&metric("g", "4", MetricType::Gauge, "env:prod"), NOW);
    agg.insert(&metric("g", "5", MetricType::Gauge, "env:prod,host:"), NOW);
    assert_eq!(agg.contexts(), 3);
    let f = flush(&mut agg);
    let got: Vec<(Option<&str>, &[String], f64)> = f
        .series
        .iter()
        .map(|s| (s.host.as_deref(), &s.tags[..], s.points[0].1))
        .collect();
    let prod = ["env:prod".to_owned()];
    assert_eq!(
        got,
        [
            (Some("b"), &prod[..], 2.0),
            (Some("a"), &prod[..], 3.0),
            (None, &prod[..], 5.0)
        ]
    );
}

fn budget(bytes: usize) -> Aggregator {
    let mut o = opts();
    o.context_limit = usize::MAX;
    o.memory_bytes = bytes;
    Aggregator::new(o)
}

#[test]
fn the_memory_budget_refuses_new_contexts_and_existing_ones_keep_counting() {
    let mut agg = budget(64 * 1024);
    let mut taken = 0;
    let mut refused = 0;
    for i in 0..10_000 {
        let name = format!("ctx.{i}");
        match agg.insert(&metric(&name, "1", MetricType::Counter, "env:x"), NOW) {
            InsertOutcome::Accepted => taken += 1,
            InsertOutcome::ContextLimit => refused += 1,
            other => panic!("{other:?}"),
        }
        assert!(agg.memory_bytes() <= 64 * 1024);
    }
    assert_eq!(taken + refused, 10_000);
    assert!((100..=256).contains(&taken), "{taken} contexts in 64 KiB");
    // An existing context keeps aggregating past the budget.
    for _ in 0..5 {
        assert_eq!(
            agg.insert(&metric("ctx.0", "1", MetricType::Counter, "env:x"), NOW),
            InsertOutcome::Accepted
        );
    }
    let b = agg.take();
    assert_eq!(b.contexts(), taken);
    // The taken bucket still holds its bytes: the next interval has no
    // room for a new context until it is flushed.
    assert_eq!(
        agg.insert(&metric("new", "1", MetricType::Counter, ""), NOW),
        InsertOutcome::ContextLimit
    );
    let f = b.into_flush(TS, 1);
    let c0 = f.series.iter().find(|s| s.metric == "ctx.0").unwrap();
    assert_eq!(c0.points[0].1, 6.0);
    assert_eq!(agg.memory_bytes(), agg.cur.bytes);
    assert_eq!(
        agg.insert(&metric("new", "1", MetricType::Counter, ""), NOW),
        InsertOutcome::Accepted
    );
}

#[test]
fn a_bucket_gives_its_bytes_back_chunk_by_chunk_and_when_dropped() {
    let mut agg = budget(1 << 30);
    for i in 0..100 {
        let name = format!("c.{i}");
        agg.insert(&metric(&name, "1", MetricType::Counter, ""), NOW);
    }
    let live = agg.memory_bytes();
    assert!(live >= 100 * MIN_CONTEXT_BYTES);
    let mut chunks = agg.take().into_chunks(TS, 1, 10);
    assert_eq!(agg.memory_bytes(), live);
    let _ = chunks.next();
    let after_one = agg.memory_bytes();
    assert!(
        after_one < live && after_one >= live * 8 / 10,
        "{after_one} of {live}"
    );
    for _ in chunks.by_ref() {}
    assert_eq!(agg.memory_bytes(), 0);
    // A bucket dropped unflushed gives everything back too.
    agg.insert(&metric("x", "1", MetricType::Counter, ""), NOW);
    drop(agg.take());
    assert_eq!(agg.memory_bytes(), 0);
}

#[test]
fn past_the_budget_samples_members_points_and_bins_are_dropped_and_counted() {
    let mut agg = budget(16 * 1024);
    for (name, k, v) in [
        ("kh", MetricType::Histogram, "1"),
        ("kd", MetricType::Distribution, "1"),
        ("ks", MetricType::Set, "m"),
    ] {
        assert_eq!(
            agg.insert(&metric(name, v, k, ""), NOW),
            InsertOutcome::Accepted
        );
    }
    assert_eq!(
        agg.insert(&stamped("t", "1", MetricType::Gauge, NOW), NOW),
        InsertOutcome::Accepted
    );
    let mut outcomes = std::collections::BTreeMap::new();
    for i in 0..5_000 {
        let v = format!("{}", f64::from(i) * 1.7 + 1.0);
        for (k, class, name) in [
            (MetricType::Distribution, "d", "kd"),
            (MetricType::Set, "s", "ks"),
            (MetricType::Histogram, "h", "kh"),
        ] {
            let o = agg.insert(&metric(name, &v, k, ""), NOW);
            *outcomes.entry((class, format!("{o:?}"))).or_insert(0) += 1;
        }
        let o = agg.insert(&stamped("t", &v, MetricType::Gauge, NOW), NOW);
        *outcomes.entry(("t", format!("{o:?}"))).or_insert(0) += 1;
        assert!(agg.memory_bytes() <= 16 * 1024);
    }
    // Every kind hit the budget; histograms keep aggregating.
    for class in ["d", "s", "t"] {
        assert!(
            outcomes
                .get(&(class, "MemoryLimit".to_owned()))
                .copied()
                .unwrap_or(0)
                > 0,
            "{outcomes:?}"
        );
    }
    assert_eq!(outcomes[&("h", "Accepted".to_owned())], 5_000);
    let refused: u64 = outcomes
        .iter()
        .filter(|((_, o), _)| o == "MemoryLimit")
        .map(|(_, n)| *n)
        .sum();
    let b = agg.take();
    assert!(
        b.dropped() > refused,
        "histogram samples left out count too"
    );
    let f = b.into_flush(TS, 1);
    // The histogram's count is exact even though samples were left out.
    assert_eq!(value(&f, "kh.count"), 5_001.0);
    assert_eq!(value(&f, "kh.max"), 4_999.0 * 1.7 + 1.0);
    // A value in an existing bin is still taken at the budget.
    let d = &f.distributions[0].sketch;
    assert!(d.count() > 1.0 && d.count() < 5_001.0, "{}", d.count());
}

#[test]
fn context_limit_drops_new_contexts_only() {
    let mut o = opts();
    o.context_limit = 2;
    let mut agg = Aggregator::new(o);
    assert_eq!(
        agg.insert(&metric("a", "1", MetricType::Counter, ""), NOW),
        InsertOutcome::Accepted
    );
    assert_eq!(
        agg.insert(&metric("b", "1", MetricType::Counter, "x"), NOW),
        InsertOutcome::Accepted
    );
    assert_eq!(
        agg.insert(&metric("c", "1", MetricType::Counter, ""), NOW),
        InsertOutcome::ContextLimit
    );
    assert_eq!(
        agg.insert(&stamped("c", "1", MetricType::Gauge, NOW), NOW),
        InsertOutcome::ContextLimit
    );
    // Existing contexts, even in a new spelling, still count.
    assert_eq!(
        agg.insert(&metric("b", "1", MetricType::Counter, "x,x"), NOW),
        InsertOutcome::Accepted
    );
    assert_eq!(agg.contexts(), 2);
    let f = flush(&mut agg);
    assert_eq!(names(&f), ["a", "b"]);
    // A new interval has room again.
    assert_eq!(
        agg.insert(&metric("c", "1", MetricType::Counter, ""), NOW),
        InsertOutcome::Accepted
    );
}

#[test]
fn timestamped_gauges_and_counters_go_out_as_received() {
    let mut agg = Aggregator::new(opts());
    let t1 = NOW - 100;
    let t2 = NOW - 50;
    assert_eq!(
        agg.insert(&stamped("g", "3", MetricType::Gauge, t2), NOW),
        InsertOutcome::Accepted
    );
    agg.insert(&stamped("g", "1", MetricType::Gauge, t1), NOW);
    agg.insert(&stamped("c", "20", MetricType::Counter, t1), NOW);
    agg.insert(&stamped("c", "40", MetricType::Counter, t1), NOW);
    // Not mixed with the aggregated context of the same name.
    agg.insert(&metric("g", "9", MetricType::Gauge, ""), NOW);
    let f = flush(&mut agg);
    assert_eq!(names(&f), ["g", "c", "g"]);
    assert_eq!(f.series[0].kind, SeriesKind::Gauge);
    assert_eq!(f.series[0].points, vec![(t1, 1.0), (t2, 3.0)]);
    assert_eq!(f.series[1].kind, SeriesKind::Rate);
    assert_eq!(f.series[1].interval, Some(10));
    assert_eq!(f.series[1].points, vec![(t1, 2.0), (t1, 4.0)]);
    assert_eq!(f.series[2].points, vec![(TS, 9.0)]);
}

#[test]
fn timestamped_histograms_sets_distributions_and_stale_points_are_discarded() {
    let mut agg = Aggregator::new(opts());
    for kind in [
        MetricType::Histogram,
        MetricType::Timer,
        MetricType::Set,
        MetricType::Distribution,
    ] {
        assert_eq!(
            agg.insert(&stamped("x", "1", kind, NOW), NOW),
            InsertOutcome::Discarded,
            "{kind:?}"
        );
    }
    assert_eq!(agg.contexts(), 0);
    assert_eq!(flush(&mut agg), Flush::default());
    // Any age, either way, goes out at its own time, as the Agent's
    // no-aggregation pipeline forwards it: the intake decides (historical
    // ingestion takes old points). Issue 25, row 2.
    for ts in [NOW - 7 * 86_400, NOW - 7_200, NOW + 3_600] {
        assert_eq!(
            agg.insert(&stamped("x", "1", MetricType::Gauge, ts), NOW),
            InsertOutcome::Accepted
        );
    }
    let out = flush(&mut agg);
    assert_eq!(out.series.len(), 1);
    assert_eq!(
        out.series[0].points,
        [
            (NOW - 7 * 86_400, 1.0),
            (NOW - 7_200, 1.0),
            (NOW + 3_600, 1.0)
        ]
    );
}

#[test]
fn nan_and_inf_produce_no_point() {
    let mut agg = Aggregator::new(opts());
    for v in ["nan", "NaN", "inf", "-inf", "nan:inf"] {
        for kind in [
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Histogram,
            MetricType::Distribution,
        ] {
            assert_eq!(
                agg.insert(&metric("n", v, kind, ""), NOW),
                InsertOutcome::Discarded,
                "{v} {kind:?}"
            );
        }
    }
    assert_eq!(agg.contexts(), 0, "no empty context was created");
    agg.insert(&metric("g", "4", MetricType::Gauge, ""), NOW);
    assert_eq!(
        agg.insert(&metric("g", "nan", MetricType::Gauge, ""), NOW),
        InsertOutcome::Discarded
    );
    // A line with one good value is taken; the NaN is skipped.
    assert_eq!(
        agg.insert(&metric("h", "nan:3:inf", MetricType::Histogram, ""), NOW),
        InsertOutcome::Accepted
    );
    let f = flush(&mut agg);
    assert_eq!(value(&f, "g"), 4.0);
    assert_eq!(value(&f, "h.max"), 3.0);
    assert!(close(value(&f, "h.count"), 0.1));
}

#[test]
fn mixed_types_fold_into_the_first_like_the_agent() {
    let mut agg = Aggregator::new(opts());
    agg.insert(&metric("m", "1", MetricType::Counter, ""), NOW);
    assert_eq!(
        agg.insert(&metric("m", "9", MetricType::Gauge, ""), NOW),
        InsertOutcome::Accepted
    );
    assert_eq!(
        agg.insert(&metric("m", "x", MetricType::Set, ""), NOW),
        InsertOutcome::Discarded
    );
    agg.insert(&metric("s", "x", MetricType::Set, ""), NOW);
    assert_eq!(
        agg.insert(&metric("s", "1", MetricType::Counter, ""), NOW),
        InsertOutcome::Discarded
    );
    let f = flush(&mut agg);
    assert_eq!(value(&f, "m"), 1.0);
    assert_eq!(value(&f, "s"), 1.0);
}

#[test]
fn an_idle_context_does_not_reappear() {
    let mut agg = Aggregator::new(opts());
    agg.insert(&metric("old", "1", MetricType::Counter, "a"), NOW);
    agg.insert(&metric("old.h", "1", MetricType::Histogram, ""), NOW);
    agg.insert(&metric("old.s", "1", MetricType::Set, ""), NOW);
    agg.insert(&metric("kept", "1", MetricType::Gauge, ""), NOW);
    assert_eq!(agg.contexts(), 4);
    let first = flush(&mut agg);
    assert_eq!(first.series.len(), 8);
    assert_eq!(agg.contexts(), 0, "take() leaves nothing behind");
    agg.insert(&metric("kept", "2", MetricType::Gauge, ""), NOW);
    let second = flush(&mut agg);
    assert_eq!(names(&second), ["kept"]);
    assert_eq!(value(&second, "kept"), 2.0);
    assert_eq!(flush(&mut agg), Flush::default());
}

#[test]
fn events_and_checks_are_collected_and_capped() {
    let mut agg = Aggregator::new(opts());
    let event = Event {
        title: "t".into(),
        text: "x".into(),
        timestamp: None,
        host: None,
        aggregation_key: None,
        priority: Priority::Normal,
        source_type: None,
        alert_type: AlertType::Info,
        tags: vec![],
    };
    let check = ServiceCheck {
        name: "up".into(),
        status: CheckStatus::Ok,
        timestamp: None,
        host: None,
        tags: vec![],
        message: None,
    };
    for _ in 0..MAX_EVENTS + 3 {
        agg.insert_event(event.clone());
    }
    for _ in 0..MAX_SERVICE_CHECKS + 2 {
        agg.insert_service_check(check.clone());
    }
    let bucket = agg.take();
    assert_eq!(bucket.overflowed(), 5);
    let f = bucket.into_flush(TS, 10);
    assert_eq!(f.events.len(), MAX_EVENTS);
    assert_eq!(f.service_checks.len(), MAX_SERVICE_CHECKS);
    assert_eq!(f.events[0], event);
    assert_eq!(agg.take().overflowed(), 0);
}

#[test]
fn hundred_thousand_contexts() {
    let mut o = opts();
    o.context_limit = 200_000;
    let mut agg = Aggregator::new(o);
    for i in 0..100_000u32 {
        let name = format!("app.metric.{}", i % 100);
        let tags = format!("shard:{},env:prod,service:web", i / 100);
        assert_eq!(
            agg.insert(&metric(&name, "1", MetricType::Counter, &tags), NOW),
            InsertOutcome::Accepted
        );
    }
    assert_eq!(agg.contexts(), 100_000);
    // Second pass: every one is an existing context, in another tag order.
    for i in 0..100_000u32 {
        let name = format!("app.metric.{}", i % 100);
        let tags = format!("service:web,env:prod,shard:{}", i / 100);
        agg.insert(&metric(&name, "1", MetricType::Counter, &tags), NOW);
    }
    assert_eq!(agg.contexts(), 100_000);
    let f = flush(&mut agg);
    assert_eq!(f.series.len(), 100_000);
    assert!(f.series.iter().all(|s| s.points == [(TS, 0.2)]));
    assert_eq!(f.series[0].tags, ["env:prod", "service:web", "shard:0"]);
}

/// Every kind of context, an event and a check, the same each call.
fn mixed_bucket() -> Bucket {
    let mut agg = Aggregator::new(opts());
    let kinds = [
        MetricType::Counter,
        MetricType::Gauge,
        MetricType::Set,
        MetricType::Histogram,
        MetricType::Timer,
        MetricType::Distribution,
    ];
    for i in 0..50u32 {
        let name = format!("m.{}", i % 7);
        let tags = format!("shard:{i},env:x");
        let kind = kinds[i as usize % kinds.len()];
        for v in ["1", "2.5", "7"] {
            agg.insert(&metric(&name, v, kind, &tags), NOW);
        }
    }
    agg.insert(&stamped("ts.g", "3", MetricType::Gauge, NOW - 5), NOW);
    agg.insert(&stamped("ts.c", "4", MetricType::Counter, NOW - 5), NOW);
    agg.insert_event(Event {
        title: "t".into(),
        text: "x".into(),
        timestamp: None,
        host: None,
        aggregation_key: None,
        priority: Priority::Normal,
        source_type: None,
        alert_type: AlertType::Info,
        tags: vec![],
    });
    agg.insert_service_check(ServiceCheck {
        name: "up".into(),
        status: CheckStatus::Ok,
        timestamp: None,
        host: None,
        tags: vec![],
        message: None,
    });
    agg.take()
}

#[test]
fn chunks_join_into_the_whole_flush() {
    let whole: Vec<Flush> = mixed_bucket().into_chunks(TS, 10, usize::MAX).collect();
    assert_eq!(whole.len(), 1);
    let whole = whole.into_iter().next().expect("one chunk");
    assert_eq!(whole, mixed_bucket().into_flush(TS, 10));
    assert_eq!(whole.events.len(), 1);
    assert_eq!(whole.service_checks.len(), 1);
    assert!(!whole.distributions.is_empty());
    let contexts = mixed_bucket().contexts();
    assert_eq!(contexts, 52);
    for max in [1, 3, 7, 51, 52] {
        let chunks: Vec<Flush> = mixed_bucket().into_chunks(TS, 10, max).collect();
        assert_eq!(chunks.len(), contexts.div_ceil(max), "max {max}");
        assert!(chunks.iter().skip(1).all(|c| c.events.is_empty()));
        let mut joined = Flush::default();
        for c in chunks {
            joined.append(c);
        }
        assert_eq!(joined, whole, "max {max}");
    }
    // An empty bucket still yields one (empty) chunk, then nothing.
    let mut empty = Aggregator::new(opts()).take().into_chunks(TS, 10, 4);
    assert_eq!(empty.next(), Some(Flush::default()));
    assert_eq!(empty.next(), None);
}

#[test]
fn set_members_of_any_length_are_counted_once() {
    let mut agg = Aggregator::new(opts());
    let long = "x".repeat(300);
    let longer = "x".repeat(301);
    for m in [
        "", "a", "a:b", &long, &longer, &long, &longer, "a", "é", "e",
    ] {
        let line = metric("s", m, MetricType::Set, "");
        assert_eq!(agg.insert(&line, NOW), InsertOutcome::Accepted, "{m:?}");
    }
    assert_eq!(value(&flush(&mut agg), "s"), 7.0);
    assert_ne!(member_fingerprint(b""), 0);
}

#[test]
fn a_set_counts_each_member_once_across_its_table_growth() {
    // Around each doubling of the table: 3 of 4 slots, 7 of 8, 14 of 16.
    for n in [1, 2, 3, 4, 7, 8, 14, 15, 1_000, 10_000] {
        let mut agg = Aggregator::new(opts());
        let members: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
        let mut charged = Vec::new();
        for round in 0..3 {
            for m in members.iter().rev().skip(round % 2) {
                let line = metric("s", m, MetricType::Set, "");
                assert_eq!(agg.insert(&line, NOW), InsertOutcome::Accepted, "{m}");
            }
            // A batched repeat is charged as new until its batch merges.
            let unmerged = agg.memory_bytes();
            agg.merge_set_batches();
            let merged = agg.memory_bytes();
            assert!(merged <= unmerged, "{n} members");
            assert!(
                unmerged - merged < MEMBER_BATCH * MEMBER_BYTES,
                "{n} members"
            );
            charged.push(merged);
        }
        // Repeats are free: only new members are charged.
        assert_eq!(charged[1], charged[2], "{n} members");
        assert_eq!(value(&flush(&mut agg), "s"), n as f64, "{n} members");
    }
}

#[test]
fn a_member_table_stays_at_most_seven_eighths_full() {
    let mut members = Members::default();
    assert_eq!(members.slots(), 0);
    for i in 0..100u32 {
        let Probe::New(fp) = members.probe(&i.to_le_bytes()) else {
            panic!("{i} is new");
        };
        let grows = members.growth_bytes() > 0;
        let before = members.slots();
        members.insert(fp);
        assert_eq!(grows, members.slots() != before, "{i}");
        assert!(members.len() * 8 <= members.slots() * 7, "{i}");
        assert!(matches!(members.probe(&i.to_le_bytes()), Probe::Held));
    }
    assert_eq!(members.len(), 100);
    assert_eq!(members.slots(), 128);
}

#[test]
fn keys_find_and_give_back_every_key_by_id_through_growth() {
    let mut keys = Keys::default();
    let all: Vec<String> = (0..5_000).map(|i| format!("a{i}\n\nt:{}", i % 7)).collect();
    assert_eq!(keys.push(""), Some(0));
    for (i, k) in all.iter().enumerate() {
        assert_eq!(keys.find(k), None);
        assert_eq!(keys.push(k), Some(i as u32 + 1));
    }
    assert_eq!(keys.len(), all.len() + 1);
    assert_eq!((keys.find(""), keys.get(0)), (Some(0), Some("")));
    for (i, k) in all.iter().enumerate() {
        assert_eq!(keys.find(k), Some(i as u32 + 1));
        assert_eq!(keys.get(i + 1), Some(k.as_str()));
    }
    assert_eq!(keys.find("a5000\n\nt:0"), None);
    assert_eq!(keys.get(all.len() + 1), None);
    keys.drop_table();
    assert_eq!(keys.get(all.len()), all.last().map(String::as_str));
}

#[test]
fn canonical_key_round_trips() {
    let mut spans = Vec::new();
    let mut key = String::new();
    let raw = |raw| TagSources {
        raw,
        mapped: &[],
        extra: &[],
    };
    canonicalise(
        &mut spans,
        &mut key,
        Class::Aggregated,
        "m",
        &raw("z,host:h1,a:b,z,,host:h2"),
    );
    assert_eq!(key, "am\nh2\na:b,z");

    let ctx = ContextKey::parse(&key).expect("parses");
    assert_eq!(ctx.class, Class::Aggregated);
    assert_eq!((ctx.name, ctx.host, ctx.tags), ("m", Some("h2"), "a:b,z"));
    // Internal tags go; look-alikes stay.
    canonicalise(
        &mut spans,
        &mut key,
        Class::Aggregated,
        "m",
        &raw("dd.internal.entity_id:pod,b,dd.internal.card:high,dd.internal.jmx_check_name:jvm,dd.internal.other:x,dd.internal.card"),
    );
    assert_eq!(key, "am\n\nb,dd.internal.card,dd.internal.other:x");
    // The mapper's host wins over the wire's; DD_DOGSTATSD_TAGS' `host:` stays a tag.
    let mapped = ["host:m".to_owned(), "k:v".to_owned()];
    let extra = ["host:x".to_owned(), "a".to_owned(), "k:v".to_owned()];
    canonicalise(
        &mut spans,
        &mut key,
        Class::Aggregated,
        "m",
        &TagSources {
            raw: "host:w,z",
            mapped: &mapped,
            extra: &extra,
        },
    );
    assert_eq!(key, "am\nm\na,host:x,k:v,z");
}

#[test]
fn alias_cache_is_bounded_but_lookups_stay_correct() {
    let mut o = opts();
    o.context_limit = 1;
    let mut agg = Aggregator::new(o);
    let limit = agg.prepared.alias_limit;
    // Many spellings of one context: duplicates make each raw field unique.
    for i in 0..limit + 10 {
        let tags = format!("a{}", ",a".repeat(i));
        assert_eq!(
            agg.insert(&metric("c", "1", MetricType::Counter, &tags), NOW),
            InsertOutcome::Accepted
        );
    }
    assert_eq!(agg.cur.aliases.len(), limit);
    let f = flush(&mut agg);
    assert_eq!(f.series.len(), 1);
    assert!(close(f.series[0].points[0].1, (limit + 10) as f64 / 10.0));
}

#[test]
fn sample_rates_outside_0_1_weigh_as_the_agents_and_tiny_ones_are_bounded() {
    let mut agg = Aggregator::new(opts());
    // 0, negative, NaN and infinite weigh 1; 2 weighs 0.5 on a counter or a
    // histogram (the Agent's 1/rate) and 1 on a distribution (the Agent's
    // sketch falls back to unsampled outside (0, 1]).
    for rate in [0.0, -1.0, 2.0, f64::NAN, f64::INFINITY] {
        agg.insert(&rated("c", "10", MetricType::Counter, rate), NOW);
        agg.insert(&rated("h", "10", MetricType::Histogram, rate), NOW);
        agg.insert(&rated("d", "10", MetricType::Distribution, rate), NOW);
    }
    // Below 1e-6, one value weighs 1e6, and the line is counted.
    for rate in [1e-20, 1e-300, 5e-324] {
        agg.insert(&rated("tiny", "1", MetricType::Counter, rate), NOW);
        agg.insert(&rated("tinyd", "1", MetricType::Distribution, rate), NOW);
    }
    let bucket = agg.take();
    assert_eq!(bucket.clamped(), 6);
    let f = bucket.into_flush(TS, 1);
    assert_eq!(value(&f, "c"), 45.0);
    assert_eq!(value(&f, "h.count"), 4.5);
    assert_eq!(value(&f, "tiny"), 3e6);
    let d = |name: &str| {
        f.distributions
            .iter()
            .find(|d| d.metric == name)
            .expect(name)
            .sketch
            .count_rounded()
    };
    assert_eq!(d("d"), 5);
    assert_eq!(d("tinyd"), 3_000_000);
}

/// One counter sample at `at` (unix seconds), in an aggregator with `expiry`.
fn zero_filled(expiry: u64, interval: i64, flushes: usize) -> Vec<Vec<f64>> {
    let mut agg = Aggregator::new(AggregatorOptions {
        counter_expiry_secs: expiry,
        ..opts()
    });
    let start = 1_000 * interval;
    // Arrives during the first bucket (whole seconds: `start` is start.x).
    agg.insert(&metric("sparse", "5", MetricType::Counter, "a"), start);
    agg.insert(&metric("g", "5", MetricType::Gauge, ""), start);
    (0..flushes)
        .map(|i| {
            let ts = start + interval * i as i64;
            let f = agg.take().into_flush(ts, interval as u64);
            f.series
                .iter()
                .filter(|s| s.metric == "sparse")
                .inspect(|s| {
                    assert_eq!(s.tags, ["a"]);
                    assert_eq!(s.kind, SeriesKind::Rate);
                    assert_eq!(s.points[0].0, ts);
                })
                .map(|s| s.points[0].1)
                .collect()
        })
        .collect()
}

#[test]
fn idle_counters_are_zero_filled_until_they_expire() {
    // 30 s at 10 s buckets: the sample's bucket, then 3 zeros (the
    // Agent's count for a sample that arrives within its bucket).
    assert_eq!(
        zero_filled(30, 10, 6),
        [vec![0.5], vec![0.0], vec![0.0], vec![0.0], vec![], vec![]]
    );
    // 4 s at 1 s buckets: 4 zeros, then nothing.
    assert_eq!(
        zero_filled(4, 1, 7),
        [
            vec![5.0],
            vec![0.0],
            vec![0.0],
            vec![0.0],
            vec![0.0],
            vec![],
            vec![]
        ]
    );
    // 0 turns it off.
    assert_eq!(zero_filled(0, 1, 3), [vec![5.0], vec![], vec![]]);
}

#[test]
fn a_new_sample_restarts_the_expiry_and_is_not_doubled() {
    let mut agg = Aggregator::new(AggregatorOptions {
        counter_expiry_secs: 20,
        ..opts()
    });
    let c = metric("c", "10", MetricType::Counter, "");
    agg.insert(&c, 1_001);
    let values = |f: Flush| -> Vec<f64> { f.series.iter().map(|s| s.points[0].1).collect() };
    assert_eq!(values(agg.take().into_flush(1_000, 10)), [1.0]);
    assert_eq!(values(agg.take().into_flush(1_010, 10)), [0.0]);
    agg.insert(&c, 1_025);
    assert_eq!(values(agg.take().into_flush(1_020, 10)), [1.0]);
    assert_eq!(values(agg.take().into_flush(1_030, 10)), [0.0]);
    assert_eq!(values(agg.take().into_flush(1_040, 10)), [0.0]);
    assert!(values(agg.take().into_flush(1_050, 10)).is_empty());
    // The registry forgot it.
    assert!(agg.zero_fill.lock().expect("lock").counters.is_empty());
}

#[test]
fn the_zero_fill_registry_is_bounded_by_the_context_limit() {
    let mut agg = Aggregator::new(AggregatorOptions {
        counter_expiry_secs: 100,
        context_limit: 3,
        ..opts()
    });
    for n in ["a", "b", "c"] {
        agg.insert(&metric(n, "1", MetricType::Counter, ""), 1_000);
    }
    let chunks = agg.take().into_chunks(1_000, 10, 2);
    assert_eq!(chunks.zero_fill_untracked(), 0);
    assert_eq!(chunks.map(|c| c.series.len()).sum::<usize>(), 3);
    // Three new counters while three are registered: none fits.
    for n in ["d", "e", "f"] {
        agg.insert(&metric(n, "1", MetricType::Counter, ""), 1_010);
    }
    let chunks = agg.take().into_chunks(1_010, 10, 2);
    assert_eq!(chunks.zero_fill_untracked(), 3);
    // Their own points and the idle ones' zeros, over chunks of 2.
    let flushes: Vec<Flush> = chunks.collect();
    assert_eq!(flushes.iter().map(|c| c.series.len()).sum::<usize>(), 6);
    assert!(flushes.iter().all(|c| c.series.len() <= 2));
    let mut names: Vec<(&str, f64)> = flushes
        .iter()
        .flat_map(|c| &c.series)
        .map(|s| (s.metric.as_str(), s.points[0].1))
        .collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        names,
        [
            ("a", 0.0),
            ("b", 0.0),
            ("c", 0.0),
            ("d", 0.1),
            ("e", 0.1),
            ("f", 0.1)
        ]
    );
}

#[test]
fn events_and_checks_take_their_host_from_tags_and_get_dogstatsd_tags() {
    let mut agg = Aggregator::new(AggregatorOptions {
        dogstatsd_tags: vec!["team:a".into(), "host:kept".into()],
        ..opts()
    });
    let event = |host: Option<&str>, tags: &[&str]| Event {
        title: "t".into(),
        text: "x".into(),
        timestamp: None,
        host: host.map(str::to_owned),
        aggregation_key: None,
        priority: Priority::Normal,
        source_type: None,
        alert_type: AlertType::Info,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    };
    agg.insert_event(event(
        None,
        &["host:a", "x", "host:b", "dd.internal.card:low"],
    ));
    agg.insert_event(event(Some("field"), &["host:a"]));
    agg.insert_event(event(None, &["host:"]));
    agg.insert_service_check(ServiceCheck {
        name: "up".into(),
        status: CheckStatus::Ok,
        timestamp: None,
        host: None,
        tags: vec![
            "host:db1".into(),
            "dd.internal.entity_id:x".into(),
            "y".into(),
        ],
        message: None,
    });
    let f = flush(&mut agg);
    let got: Vec<(Option<&str>, &[String])> = f
        .events
        .iter()
        .map(|e| (e.host.as_deref(), &e.tags[..]))
        .collect();
    let tags = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        got,
        [
            (Some("b"), &tags(&["x", "team:a", "host:kept"])[..]),
            (Some("field"), &tags(&["team:a", "host:kept"])[..]),
            (None, &tags(&["team:a", "host:kept"])[..]),
        ]
    );
    assert_eq!(f.service_checks[0].host.as_deref(), Some("db1"));
    assert_eq!(f.service_checks[0].tags, ["y", "team:a", "host:kept"]);
}

#[test]
fn metrics_get_dogstatsd_tags_and_names_are_mapped_namespaced_and_blocked() {
    let profiles = crate::config::parse_mapper_profiles(
        r#"[{"name":"sq","prefix":"sidekiq.","mappings":[
            {"match":"sidekiq.jobs.*.perform","name":"sidekiq.jobs.perform","tags":{"worker":"$1"}}]}]"#,
    )
    .expect("valid");
    let mut agg = Aggregator::new(AggregatorOptions {
        dogstatsd_tags: vec!["team:a".into()],
        names: NameRules {
            mapper_profiles: profiles,
            mapper_cache_size: 10,
            namespace: "app.".into(),
            namespace_exceptions: vec!["sidekiq".into()],
            blocklist: vec!["app.noisy".into()],
            blocklist_match_prefix: false,
        },
        ..opts()
    });
    for _ in 0..3 {
        assert_eq!(
            agg.insert(
                &metric(
                    "sidekiq.jobs.Mailer.perform",
                    "2",
                    MetricType::Counter,
                    "host:h,x"
                ),
                NOW
            ),
            InsertOutcome::Accepted
        );
        // Blocked on every sample, whether from the cold path or the cache.
        assert_eq!(
            agg.insert(&metric("noisy", "1", MetricType::Gauge, ""), NOW),
            InsertOutcome::Filtered
        );
        assert_eq!(
            agg.insert(&metric("hits", "1", MetricType::Counter, ""), NOW),
            InsertOutcome::Accepted
        );
    }
    assert_eq!(agg.contexts(), 2);
    let f = agg.take().into_flush(TS, 1);
    assert_eq!(names(&f), ["sidekiq.jobs.perform", "app.hits"]);
    assert_eq!(f.series[0].tags, ["team:a", "worker:Mailer", "x"]);
    assert_eq!(f.series[0].host.as_deref(), Some("h"));
    assert_eq!(f.series[0].points[0].1, 6.0);
    assert_eq!(f.series[1].tags, ["team:a"]);
}

#[test]
fn an_alias_entry_is_the_size_the_meter_charges() {
    // budget.rs and ALIAS_BYTES charge 24 bytes plus a control byte per
    // alias map entry: the fingerprint's low half, its high half, the id.
    assert_eq!(std::mem::size_of::<(u64, Alias)>(), 24);
}

#[test]
fn spellings_that_differ_only_where_the_separator_falls_stay_apart() {
    // The fingerprint hashes the name (seeded with the class) and the tags
    // apart: moving bytes between them, or changing the class, gives another
    // spelling.
    let mut agg = Aggregator::new(opts());
    agg.insert(&metric("ab", "1", MetricType::Counter, "c"), NOW);
    agg.insert(&metric("a", "2", MetricType::Counter, "bc"), NOW);
    agg.insert(&metric("ab", "4", MetricType::Gauge, "c"), NOW);
    agg.insert(&metric("ab", "8", MetricType::Distribution, "c"), NOW);
    assert_eq!(agg.contexts(), 3);
    let f = agg.take().into_flush(TS, 1);
    assert_eq!(f.series.len(), 2);
    assert_eq!(f.distributions.len(), 1);
}
#[test]
fn a_state_slot_takes_24_bytes() {
    // Every context has one slot: 100,000 contexts at 40 bytes each (a hash
    // set inline) held 1.6 MB more than at 24.
    assert_eq!(std::mem::size_of::<State>(), 24);
}

#[test]
fn both_xxh3_implementations_agree_at_every_length_and_seed() {
    // `context::xxh3_128` and `xxh3_128_seeded` pick one by length: they
    // must be one function.
    let bytes: Vec<u8> = (0..1_100u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for len in 0..bytes.len() {
        for seed in [0, 1, 7, u64::MAX] {
            let b = &bytes[..len];
            if seed == 0 {
                assert_eq!(
                    xxhash_rust::xxh3::xxh3_128(b),
                    twox_hash::XxHash3_128::oneshot(b),
                    "{len} bytes"
                );
            }
            assert_eq!(
                xxhash_rust::xxh3::xxh3_128_with_seed(b, seed),
                twox_hash::XxHash3_128::oneshot_with_seed(seed, b),
                "{len} bytes, seed {seed}"
            );
        }
    }
}

/// Selection puts at every index a statistic reads the value the Agent's
/// full sort puts there, for any samples (duplicates, signed zeros, huge and
/// tiny values) and any set of percentiles.
#[test]
fn place_ranks_reads_what_a_full_sort_reads() {
    use proptest::prelude::*;
    let values = prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        -1e6f64..1e6,
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
    ];
    proptest!(|(mut ones in proptest::collection::vec(values, 0..300),
                pcts in proptest::collection::vec(0u64..=100, 0..6))| {
        let mut sorted = ones.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        let kept = ones.len() as f64;
        let targets: Vec<f64> = std::iter::once(median_target(kept))
            .chain(pcts.iter().map(|&p| percentile_target(p, kept)))
            .collect();
        place_ranks(&mut ones, targets.iter().copied());
        for &t in &targets {
            let want = at_rank(&sorted, &[], t).map(f64::to_bits);
            let got = at_rank(&ones, &[], t).map(f64::to_bits);
            prop_assert_eq!(got, want, "target {}", t);
        }
    });
}

/// `.sum` and `.avg` are the newest Agent's compensated sum
/// (datadog-agent#49913): the textbook cancellation case sums to 2 with one
/// shared weight and with weights that vary; a running sum gives 0.
#[test]
fn histogram_sum_is_compensated_like_the_agent() {
    let mut o = opts();
    o.histogram_aggregates = vec![HistogramAggregate::Sum, HistogramAggregate::Avg];
    let mut agg = Aggregator::new(o);
    for v in ["1", "1e100", "1", "-1e100"] {
        agg.insert(&metric("unit", v, MetricType::Histogram, ""), NOW);
        // One shared weight, 2: the values' sum scaled once.
        agg.insert(&rated("half", v, MetricType::Histogram, 0.5), NOW);
    }
    // Weights vary: the huge values weigh 2, the ones 1.
    for (v, rate) in [("1", 1.0), ("1e100", 0.5), ("1", 1.0), ("-1e100", 0.5)] {
        agg.insert(&rated("vary", v, MetricType::Histogram, rate), NOW);
    }
    let f = flush(&mut agg);
    assert_eq!(value(&f, "unit.sum"), 2.0);
    assert_eq!(value(&f, "unit.avg"), 0.5);
    assert_eq!(value(&f, "half.sum"), 4.0);
    assert_eq!(value(&f, "half.avg"), 0.5);
    assert_eq!(value(&f, "vary.sum"), 2.0);
    assert_eq!(value(&f, "vary.avg"), 2.0 / 6.0);
}

/// Fractions take the sort and the compensated sum; the Agent's order
/// (negatives up from the most negative, the rest down from the largest)
/// gives 0.1 + 0.2 + 0.3 as 0.6 where a running sum in arrival order gives
/// 0.6000000000000001.
#[test]
fn histogram_sum_of_fractions_is_the_sorted_compensated_one() {
    assert_ne!(0.1 + 0.2 + 0.3, 0.6);
    let mut o = opts();
    o.histogram_aggregates = vec![HistogramAggregate::Sum];
    let mut agg = Aggregator::new(o);
    for v in ["0.1", "0.2", "0.3"] {
        agg.insert(&metric("f", v, MetricType::Histogram, ""), NOW);
    }
    assert_eq!(value(&flush(&mut agg), "f.sum"), 0.6);
}

/// The flush skips the sort when every value is an integer and their
/// magnitudes sum below 2^53: the plain sum is then exactly what the
/// compensated sum over the sorted values gives, bit for bit, for one shared
/// weight of any size.
#[test]
fn integer_sums_equal_the_compensated_sum_bit_for_bit() {
    use proptest::prelude::*;
    let ints = prop_oneof![-1_000i64..1_000, -(1i64 << 45)..(1i64 << 45), Just(0),];
    proptest!(|(vals in proptest::collection::vec(ints, 1..300),
                rate in prop_oneof![Just(1.0f64), 0.01f64..1.0])| {
        #[allow(clippy::cast_precision_loss)]
        let vals: Vec<f64> = vals.into_iter().map(|v| v as f64).collect();
        let w = 1.0 / rate;
        let plain: f64 = vals.iter().sum();
        let abs: f64 = vals.iter().map(|v| v.abs()).sum();
        prop_assume!(abs < EXACT_INTS);
        let mut sorted = vals.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        let got = if w == 1.0 {
            sample_sum(&sorted, &[], false, 1.0)
        } else {
            let weighted: Vec<(f64, f64)> = sorted.iter().map(|&v| (v, w)).collect();
            sample_sum(&[], &weighted, false, w)
        };
        prop_assert_eq!(got.to_bits(), (plain * w).to_bits());
    });
}

/// Over fractions of any sign the compensated sum is within an ulp of the
/// exact sum (values on a 2^-20 grid, so the exact sum is an integer count
/// of 2^-20), where a running sum can be many ulps off.
#[test]
fn compensated_sum_is_within_an_ulp_of_the_exact_sum() {
    use proptest::prelude::*;
    proptest!(|(units in proptest::collection::vec(-(1i64 << 50)..(1i64 << 50), 1..300))| {
        let scale = (-20f64).exp2();
        #[allow(clippy::cast_precision_loss)]
        let mut vals: Vec<f64> = units.iter().map(|&u| u as f64 * scale).collect();
        vals.sort_unstable_by(f64::total_cmp);
        let exact_units: i128 = units.iter().map(|&u| i128::from(u)).sum();
        #[allow(clippy::cast_precision_loss)]
        let exact = exact_units as f64 * scale;
        let got = sample_sum(&vals, &[], false, 1.0);
        let ulp = f64::from_bits(exact.abs().to_bits() + 1) - exact.abs();
        prop_assert!((got - exact).abs() <= ulp, "got {} exact {}", got, exact);
    });
}

/// The merge of the two sorted lists runs the same samples from either end.
#[test]
fn merged_samples_run_the_same_from_both_ends() {
    let ones = [-3.0, -0.0, 1.0, 1.0, 5.0];
    let weighted = [(-4.0, 2.0), (1.0, 3.0), (6.0, 2.0)];
    let fwd: Vec<(f64, f64)> = Merged::new(&ones, &weighted).collect();
    let mut back: Vec<(f64, f64)> = Merged::new(&ones, &weighted).rev().collect();
    back.reverse();
    assert_eq!(fwd, back);
    assert_eq!(
        fwd,
        [
            (-4.0, 2.0),
            (-3.0, 1.0),
            (-0.0, 1.0),
            (1.0, 1.0),
            (1.0, 1.0),
            (1.0, 3.0),
            (5.0, 1.0),
            (6.0, 2.0)
        ]
    );
}

/// A set with batched members decides every member as one looking each up
/// at once would: the same outcome line by line, the same count, and after
/// the merge the same charge, under any budget. The model is the unbatched
/// table (`Members::probe` and `insert`, which never batch) with the
/// aggregator's charging rule.
#[test]
fn batched_set_members_are_decided_as_unbatched_ones_are() {
    use proptest::prelude::*;
    // The room is drawn against the alphabet (about 64 B a member), so most
    // cases meet the budget while the set batches.
    let cases = (1usize..400, 1usize..3000, 0usize..100);
    proptest!(ProptestConfig::with_cases(64), |((alphabet, lines, per) in cases,
                                                 seed in any::<u64>(),
                                                 merge_first in any::<bool>())| {
        // At least the first member's table (64 B), whose fit the model
        // takes for granted.
        let room = 64 + alphabet * per;
        // The set's context and first member cost the same in both.
        let mut agg = budget(usize::MAX);
        agg.insert(&metric("s", "m0", MetricType::Set, ""), NOW);
        let base = agg.memory_bytes();
        let limit = base + room;
        let mut agg = budget(limit);
        let mut model = Members::default();
        let mut charged = base - MEMBER_BYTES;
        let mut x = seed | 1;
        for i in 0..lines {
            // xorshift: repeats and new members mixed, many batches.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let member = if i == 0 { "m0".to_owned() } else { format!("m{}", x % alphabet as u64) };
            let want = match model.probe(member.as_bytes()) {
                Probe::Held => InsertOutcome::Accepted,
                Probe::New(fp) => {
                    if charged + MEMBER_BYTES + model.growth_bytes() <= limit {
                        charged += MEMBER_BYTES;
                        model.insert(fp);
                        InsertOutcome::Accepted
                    } else {
                        InsertOutcome::MemoryLimit
                    }
                }
            };
            let got = agg.insert(&metric("s", &member, MetricType::Set, ""), NOW);
            prop_assert_eq!(got, want, "line {} ({})", i, member);
            prop_assert!(agg.memory_bytes() <= limit);
        }
        // Half the cases leave the last batch to the flush's own merge.
        if merge_first {
            agg.merge_set_batches();
            prop_assert_eq!(agg.memory_bytes(), charged);
        } else {
            prop_assert!(agg.memory_bytes() - charged < MEMBER_BATCH * MEMBER_BYTES);
        }
        #[allow(clippy::cast_precision_loss)]
        let count = model.len() as f64;
        prop_assert_eq!(value(&flush(&mut agg), "s"), count);
    });
}

#[test]
fn a_batched_table_merges_its_batch_when_full_and_at_the_flush() {
    let mut members = Members::default();
    for i in 0..29u32 {
        let Probe::New(fp) = members.probe(&i.to_le_bytes()) else {
            panic!("{i} is new");
        };
        members.insert(fp);
    }
    // 29 members took the table to 64 slots: from here it batches.
    assert_eq!(members.slots(), 64);
    assert!(members.batches());
    // 15 queued: not counted yet; the 16th fills the batch.
    for i in 20..35u32 {
        assert!(!members.queue(member_fingerprint(&i.to_le_bytes())));
    }
    assert_eq!(members.len(), 29);
    assert!(members.queue(member_fingerprint(&99u32.to_le_bytes())));
    // 20..29 were held; 29..35 and 99 are new.
    assert_eq!(members.merge(), 9);
    assert_eq!(members.len(), 36);
    assert_eq!(members.merge(), 0);
    // A repeat within one batch is added once.
    for _ in 0..3 {
        members.queue(member_fingerprint(b"again"));
    }
    assert_eq!(members.merge(), 2);
    assert_eq!(members.len(), 37);
    assert!(members.holds(member_fingerprint(b"again")));
}
