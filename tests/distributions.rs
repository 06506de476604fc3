//! Distributions and sample rates end to end: the real binary, real UDP, and
//! the loopback intake decoding `/api/beta/sketches` protobuf with the test's
//! own reader (tests/common).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Intake, Serve};

const T: Duration = Duration::from_secs(60);

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn sample_rates_weigh_one_over_rate_as_floats() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "2")
        .start();
    // One datagram each, so each lands in one bucket.
    s.send(b"h:8|h|@0.75\nh:8|h|@0.75\nh:8|h|@0.75\nh:8|h|@0.75");
    s.send(b"d:5|d|@0.3\nd:5|d|@0.3\nd:5|d|@0.3");
    s.send(b"one:2|d|@0.3");
    s.stop_ok(T);
    // 4 × 1/0.75 = 5.333 (the Agent's float weight; int(1/rate) gave 4).
    let count = intake.total("h.count", &[]);
    assert!(close(count, 16.0 / 3.0, 1e-9), "h.count totals {count}");
    let avg = intake.series_named("h.avg");
    assert!(close(
        avg[0]["points"][0]["value"].as_f64().unwrap(),
        8.0,
        1e-9
    ));

    // 3 values at @0.3 count trunc(1/0.3) = 3 each, 9 in all, as the
    // Agent's uint(1/rate); the sum keeps the float weight: 3 × 5 / 0.3.
    let d = intake.sketches_named("d");
    let cnt: i64 = d.iter().flat_map(|s| &s.dogsketches).map(|x| x.cnt).sum();
    let n: u32 = d
        .iter()
        .flat_map(|s| &s.dogsketches)
        .flat_map(|x| &x.n)
        .sum();
    let sum: f64 = d.iter().flat_map(|s| &s.dogsketches).map(|x| x.sum).sum();
    assert_eq!(cnt, 9, "{d:?}");
    assert_eq!(n, 9, "bins add up to the count: {d:?}");
    assert!(close(sum, 50.0, 1e-9), "{d:?}");
    assert!(close(d[0].dogsketches[0].avg, 5.0, 1e-9), "{d:?}");
    // One value at @0.3: 3.33, counted 3 (truncated), with the exact float
    // sum.
    let one = &intake.sketches_named("one")[0].dogsketches[0];
    assert_eq!((one.cnt, one.n.as_slice()), (3, &[3][..]));
    assert!(close(one.sum, 2.0 / 0.3, 1e-9), "{one:?}");
}

/// The Agent's mean (pkg/quantile summary.go): incremental, weighted by the
/// truncated counts. 1 and 2 unsampled, then 3 at @0.3 (counted 3): 1.5,
/// then 1.5 + (3 - 1.5) × 3/5 = 2.4 (the float weights' 13/5.33 would be
/// 2.4375). And `@2` on a distribution weighs 1, as there.
#[test]
fn distribution_count_and_mean_are_the_agents() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "2")
        .start();
    s.send(b"m:1|d\nm:2|d\nm:3|d|@0.3\nover:4|d|@2\nover:4|d|@0");
    s.stop_ok(T);
    let m = &intake.sketches_named("m")[0].dogsketches[0];
    assert_eq!(m.cnt, 5, "{m:?}");
    assert!(close(m.sum, 13.0, 1e-9), "{m:?}");
    assert!(close(m.avg, 2.4, 1e-12), "{m:?}");
    let over = &intake.sketches_named("over")[0].dogsketches[0];
    assert_eq!((over.cnt, over.sum, over.avg), (2, 8.0, 4.0), "{over:?}");
}

/// A rate outside (0, 1] is the Agent's: `@2` weighs 0.5 on a counter and a
/// histogram; 0, negatives and NaN weigh 1. The line is not an error.
#[test]
fn sample_rates_above_one_weigh_as_the_agents() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "2")
        .env("DD_DOGSTATSD_STATS_ENABLE", "true")
        .start();
    s.send(b"c2:10|c|@2\nc2:10|c|@0\nc2:10|c|@-1\nc2:10|c|@nan\nh2:10|h|@2");
    s.stop_ok(T);
    // 5 + 10 + 10 + 10, and 0.5 (`total` gives counts, not rates).
    let c2 = intake.total("c2", &[]);
    assert!(
        close(c2, 35.0, 1e-9),
        "{c2} {:?}",
        intake.series_named("c2")
    );
    assert!(close(intake.total("h2.count", &[]), 0.5, 1e-9));
    assert_eq!(intake.total("dynostat.parse_errors", &[]), 0.0);
}

/// Sends `values` as `name:v1:v2:…|d` datagrams of at most 8 KB, paced by
/// the listener's socket queue. Returns the datagrams sent.
fn flood_distribution(s: &Serve, name: &str, values: impl Iterator<Item = f64>) -> u64 {
    let mut datagrams = 0u64;
    let mut buf = String::with_capacity(8192);
    let flush = |buf: &mut String, datagrams: &mut u64| {
        buf.push_str("|d");
        s.send(buf.as_bytes());
        buf.clear();
        *datagrams += 1;
        if *datagrams % 8 == 0 {
            common::wait_for_udp_queue_below(s.port, 128 * 1024);
        }
    };
    for v in values {
        let item = format!("{v}");
        if !buf.is_empty() && buf.len() + item.len() + 3 > 8000 {
            flush(&mut buf, &mut datagrams);
        }
        if buf.is_empty() {
            buf.push_str(name);
        }
        buf.push(':');
        buf.push_str(&item);
    }
    if !buf.is_empty() {
        flush(&mut buf, &mut datagrams);
    }
    datagrams
}

#[test]
fn three_million_values_in_one_context_make_one_small_exact_sketch() {
    const VALUES: u64 = 3_000_000;
    let intake = Intake::start();
    // One bucket for the whole flood: a long interval, flushed by SIGTERM.
    common::clear_of_flush_boundary(3600, Duration::from_secs(120));
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "3600")
        .start();
    std::thread::sleep(Duration::from_millis(500));
    let idle = s.vm_bytes("VmRSS");
    let started = Instant::now();
    // Values over five decades (0.1 to 10,000): about 740 bins.
    let datagrams = flood_distribution(
        &s,
        "flood.latency",
        (0..VALUES).map(|i| ((i * 7_919) % 100_000) as f64 / 10.0 + 0.1),
    );
    let sent_in = started.elapsed();
    // Let the listener read what is queued before reading the peak.
    common::wait_for_udp_queue_below(s.port, 1);
    std::thread::sleep(Duration::from_millis(300));
    let peak = s.vm_bytes("VmHWM");
    let drops = common::udp_socket_queue(s.port).map_or(0, |q| q.1);
    s.stop_ok(T);
    eprintln!(
        "{VALUES} values in {datagrams} datagrams in {sent_in:?}; idle RSS {} KiB, peak {} KiB (+{} KiB); kernel drops {drops}",
        idle / 1024,
        peak / 1024,
        peak.saturating_sub(idle) / 1024
    );
    let packets = intake.total("dynostat.packets", &[]);
    assert_eq!(
        packets as u64, datagrams,
        "every datagram was read (kernel drops {drops})"
    );

    // One context. An hour-long bucket is aligned to the wall clock, so a
    // run across the full hour ends up in two buckets: read them together.
    let sketches = intake.sketches_named("flood.latency");
    let d: Vec<&common::DogsketchOut> = sketches.iter().flat_map(|s| &s.dogsketches).collect();
    assert!(
        sketches.len() == d.len() && (1..=2).contains(&d.len()),
        "one sketch per bucket: {sketches:?}"
    );
    let cnt: i64 = d.iter().map(|x| x.cnt).sum();
    assert_eq!(cnt as u64, VALUES, "the sketches count every value");
    let mut bins: Vec<(i32, u32)> = Vec::new();
    for x in &d {
        assert_eq!(x.k.len(), x.n.len());
        assert_eq!(x.n.iter().map(|&n| i64::from(n)).sum::<i64>(), x.cnt);
        assert!(x.n.iter().all(|&n| n <= 65_535), "bins hold at most 65,535");
        assert!(x.k.windows(2).all(|w| w[0] <= w[1]), "keys ascend");
        bins.extend(x.k.iter().copied().zip(x.n.iter().copied()));
    }
    bins.sort_unstable();
    let min = d.iter().map(|x| x.min).fold(f64::INFINITY, f64::min);
    let max = d.iter().map(|x| x.max).fold(f64::NEG_INFINITY, f64::max);
    assert_eq!((min, max), (0.1, 10_000.0));
    // Mean of the 100,000 equally frequent values 0.1, 0.2, ... 10000.0.
    let avg = d.iter().map(|x| x.sum).sum::<f64>() / cnt as f64;
    assert!(close(avg, 5_000.05, 1e-6), "avg {avg}");

    // The median from the bins is within the relative accuracy of 5000.
    let mut cum = 0u64;
    let median_key = bins
        .iter()
        .find(|(_, n)| {
            cum += u64::from(*n);
            cum > VALUES / 2
        })
        .map(|&(k, _)| k)
        .unwrap();
    let median = common::sketch_key_value(median_key);
    assert!(
        (median - 5_000.0).abs() / 5_000.0 <= 1.0 / 128.0,
        "median {median}"
    );

    let wire: Vec<usize> = intake
        .requests()
        .iter()
        .filter(|r| r.path == "/api/beta/sketches")
        .map(|r| r.wire_len)
        .collect();
    assert_eq!(wire.len(), 1, "{wire:?}");
    assert!(
        wire[0] <= 64 * 1024,
        "sketch payload is {} bytes compressed",
        wire[0]
    );
    let growth = peak.saturating_sub(idle);
    assert!(
        growth <= 16 * 1024 * 1024,
        "RSS grew by {} KiB over idle ({} KiB)",
        growth / 1024,
        idle / 1024
    );
}
