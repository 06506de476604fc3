//! Bounded work per input, and a signal that always works (issue 22): the
//! real binary, real UDP, the stand-in intake. A line whose numbers would
//! set a loop or an allocation (a sample rate of 1e-20, a count past the
//! wire's bins, an event length of 10^20) costs bounded work; a normal line
//! sent after it is flushed on time; SIGTERM ends the listener by
//! `DYNOSTAT_SHUTDOWN_GRACE + DYNOSTAT_SHUTDOWN_TIMEOUT` + 1 s, even with a
//! thread that never returns.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Intake, Serve};

const T: Duration = Duration::from_secs(30);

/// `DYNOSTAT_SHUTDOWN_GRACE` and `DYNOSTAT_SHUTDOWN_TIMEOUT` of these tests,
/// and the contract's bound past them.
const GRACE: f64 = 0.3;
const TIMEOUT: f64 = 1.0;
const EXIT_WITHIN: Duration = Duration::from_millis(2_300);

fn serve(intake: &Intake) -> Serve {
    Serve::builder()
        .intake(intake)
        .env("DYNOSTAT_SHUTDOWN_GRACE", &GRACE.to_string())
        .env("DYNOSTAT_SHUTDOWN_TIMEOUT", &TIMEOUT.to_string())
        .start()
}

/// Sends `bad`, then a counter; the counter must reach the intake within
/// three 1 s intervals, and SIGTERM must end the listener with 0 in time.
fn survives(bad: &[u8]) {
    let intake = Intake::start();
    let mut s = serve(&intake);
    s.send(bad);
    let sent = Instant::now();
    s.send(b"after.bad:1|c");
    assert!(
        intake.wait_until(Duration::from_secs(3), |i| i.total("after.bad", &[]) > 0.0),
        "the normal line was not flushed within 3 s of {:?}\n{}",
        String::from_utf8_lossy(&bad[..bad.len().min(80)]),
        s.stderr()
    );
    assert!(sent.elapsed() < Duration::from_secs(3));
    let signalled = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(EXIT_WITHIN);
    assert!(
        status.is_some_and(|st| st.success()),
        "SIGTERM did not end it with 0 within {EXIT_WITHIN:?} (after {:?}): {status:?}\n{}",
        signalled.elapsed(),
        s.stderr()
    );
}

#[test]
fn tiny_sample_rates_on_a_distribution_cost_bounded_work() {
    for rate in ["1e-20", "1e-300", "5e-324", "1e-12"] {
        survives(format!("x:1|d|@{rate}").as_bytes());
    }
}

#[test]
fn tiny_and_impossible_sample_rates_on_every_type_cost_bounded_work() {
    let mut lines = String::new();
    for rate in [
        "1e-20",
        "1e-300",
        "5e-324",
        "1e-12",
        "0",
        "-1",
        "2",
        "nan",
        "inf",
        "0x1p-1074",
    ] {
        for ty in ["c", "h", "ms", "d", "g", "s"] {
            lines.push_str(&format!("r.{ty}:1|{ty}|@{rate}\n"));
        }
    }
    survives(lines.as_bytes());
}

/// Found in the review: values at a small but plain rate (1e-6, each
/// weighing 10^6) add up without a bound in one context, and the sketch's
/// wire form carries one bin per 65,535 of them. 100,000 values made 1.5
/// million bins, a sketch over the intake's 5 MB raw payload, dropped
/// whole. A sketch now holds at most 2^32 values an interval (the rest are
/// discarded and counted), so it is sent, at most 70 k bins.
#[test]
fn many_values_at_the_largest_weight_stop_at_the_sketch_count_limit() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "2")
        .start();
    let line = format!("many:{}7|d|@0.000001", "7:".repeat(999));
    common::clear_of_flush_boundary(2, Duration::from_millis(800));
    for _ in 0..100 {
        s.send(line.as_bytes());
    }
    s.send(b"after.many:1|c");
    assert!(
        intake.wait_until(Duration::from_secs(6), |i| i.total("after.many", &[]) > 0.0
            && !i.sketches_named("many").is_empty()),
        "the sketch or the normal line did not arrive\n{}",
        s.stderr()
    );
    let sketches = intake.sketches_named("many");
    let d = &sketches[0].dogsketches[0];
    // 4,294 values of 10^6 fit under 2^32.
    assert_eq!(d.cnt, 4_294_000_000, "{:?}", (d.cnt, d.n.len()));
    assert_eq!(d.n.iter().map(|&n| i64::from(n)).sum::<i64>(), d.cnt);
    assert!(d.n.len() <= 4_096 + 65_538, "{}", d.n.len());
    let signalled = Instant::now();
    s.signal(libc::SIGTERM);
    assert!(
        s.wait_exit(Duration::from_millis(2_300 + 1_000 * 5))
            .is_some_and(|st| st.success()),
        "after {:?}\n{}",
        signalled.elapsed(),
        s.stderr()
    );
}

/// Guards from the number-by-number review: these were bounded already
/// (they pass on the code before issue 22 too), and must stay so.
#[test]
fn large_numbers_in_other_fields_cost_bounded_work() {
    for bad in [
        // Event lengths far past the line.
        &b"_e{99999999999999999999,1}:a|b"[..],
        b"_e{4294967295,4294967295}:a|b",
        b"_e{1,18446744073709551615}:a|b",
        // Timestamps at the ends of i64.
        b"x:1|c|T9223372036854775807\nx:1|g|T99999999999999999999\nx:1|c|T1",
        // Values at the ends of f64, weighted.
        b"x:1e308:-1e308:5e-324|h|@0.000001\nx:1e308|c|@0.000001\nx:1e308:1e308|d|@0.000001",
    ] {
        survives(bad);
    }
    // Many tags, many set members, many values on one line.
    let tags = format!("x:1|c|#{}", "t,".repeat(4_000));
    survives(tags.as_bytes());
    let members = format!("x:{}|s", "m:".repeat(4_000));
    survives(members.as_bytes());
    let values = format!("x:{}1|h|@0.000001", "1:".repeat(4_000));
    survives(values.as_bytes());
}

#[test]
fn the_weight_of_a_tiny_rate_is_bounded_and_counted() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_STATS_ENABLE", "true")
        .start();
    s.send(b"tiny:1|d|@1e-20\ntiny.c:1|c|@1e-20");
    assert!(
        intake.wait_until(T, |i| !i.sketches_named("tiny").is_empty()
            && i.total("dynostat.samples.rate_clamped", &[]) > 0.0),
        "{}",
        s.stderr()
    );
    let sketch = &intake.sketches_named("tiny")[0].dogsketches[0];
    assert_eq!(sketch.cnt, 1_000_000);
    assert_eq!(
        sketch.n.iter().map(|&n| i64::from(n)).sum::<i64>(),
        1_000_000
    );
    // A RATE over the 1 s interval: 10^6.
    assert!((intake.total("tiny.c", &[]) - 1e6).abs() < 1e-3);
    s.stop_ok(T);
}

/// A receive thread that never returns (the test-only stall line holds the
/// aggregator and spins): SIGTERM still ends the process by the deadline,
/// with 0 and one line saying what was not flushed.
#[test]
fn sigterm_ends_a_listener_with_a_busy_thread_by_its_deadline() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_SHUTDOWN_GRACE", &GRACE.to_string())
        .env("DYNOSTAT_SHUTDOWN_TIMEOUT", &TIMEOUT.to_string())
        .env("DYNOSTAT_TEST_STALL", "1")
        .start();
    s.send(b"before.stall:1|c");
    assert!(intake.wait_until(T, |i| i.total("before.stall", &[]) > 0.0));
    s.send(b"dynostat-test-stall");
    assert!(s.wait_stderr(T, "spins forever"), "{}", s.stderr());
    s.send(b"lost.in.stall:1|c");
    // Let the flush clock block on the held aggregator.
    std::thread::sleep(Duration::from_millis(1_500));
    let signalled = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(EXIT_WITHIN);
    assert!(
        status.is_some_and(|st| st.success()),
        "not ended with 0 within {EXIT_WITHIN:?} of SIGTERM (after {:?}): {status:?}\n{}",
        signalled.elapsed(),
        s.stderr()
    );
    let stderr = s.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("shutdown deadline"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("the open bucket was not flushed"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("receive loop"),
        "names the busy loop: {}",
        lines[0]
    );
}
