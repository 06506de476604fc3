//! The memory ceiling end to end: the real binary under floods, its peak RSS
//! (`VmHWM` from /proc) against `DYNOSTAT_MEMORY_LIMIT` over its own idle
//! pages, and the drops counted in `dynostat.*`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Intake, Serve};

const T: Duration = Duration::from_secs(60);
const LIMIT: u64 = 32 * 1024 * 1024;

/// Sends `lines` packed into datagrams of at most 8 KB, paced by the
/// listener's socket queue. Returns the datagrams sent.
fn flood(s: &Serve, lines: impl Iterator<Item = String>) -> u64 {
    let mut datagrams = 0u64;
    let mut buf = String::with_capacity(8192);
    let send = |buf: &mut String, datagrams: &mut u64| {
        s.send(buf.as_bytes());
        buf.clear();
        *datagrams += 1;
        if *datagrams % 8 == 0 {
            common::wait_for_udp_queue_below(s.port, 128 * 1024);
        }
    };
    for line in lines {
        if !buf.is_empty() && buf.len() + line.len() + 1 > 8000 {
            send(&mut buf, &mut datagrams);
        }
        if !buf.is_empty() {
            buf.push('\n');
        }
        buf.push_str(&line);
    }
    if !buf.is_empty() {
        send(&mut buf, &mut datagrams);
    }
    datagrams
}

/// Starts with the test limit and returns it with its idle `VmHWM`.
fn start(intake: &Intake, interval: &str) -> (Serve, u64) {
    let s = Serve::builder()
        .intake(intake)
        .env("DYNOSTAT_MEMORY_LIMIT", "32MiB")
        .env("DYNOSTAT_FLUSH_INTERVAL", interval)
        .start();
    std::thread::sleep(Duration::from_millis(500));
    let idle = s.vm_bytes("VmHWM");
    (s, idle)
}

#[test]
fn two_million_contexts_in_one_interval_stay_under_the_limit_and_are_counted() {
    const CONTEXTS: u64 = 2_000_000;
    let intake = Intake::start();
    // One bucket for the whole flood, flushed by SIGTERM (the flood takes
    // about 30 s here; a bucket boundary inside it split the count).
    common::clear_of_flush_boundary(3600, Duration::from_secs(120));
    let (mut s, idle) = start(&intake, "3600");
    let hwm = s.watch_hwm();
    let started = Instant::now();
    let datagrams = flood(
        &s,
        (0..CONTEXTS).map(|i| format!("flood.ctx.{i}:1|c|#env:test,shard:{}", i % 97)),
    );
    common::wait_for_udp_queue_below(s.port, 1);
    // An existing context keeps counting past the limit.
    s.send(b"flood.ctx.0:5|c|#env:test,shard:0");
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.alive(), "stderr:\n{}", s.stderr());
    let sent_in = started.elapsed();
    s.stop_ok(T);
    let peak = hwm.finish();
    eprintln!(
        "{CONTEXTS} contexts in {datagrams} datagrams in {sent_in:?}: idle VmHWM {} KiB, peak {} KiB (+{} KiB, limit {} KiB)",
        idle / 1024,
        peak / 1024,
        peak.saturating_sub(idle) / 1024,
        LIMIT / 1024
    );
    let packets = intake.total("dynostat.packets", &[]) as u64;
    assert_eq!(packets, datagrams + 1, "every datagram was read");
    let delivered = intake
        .series()
        .iter()
        .filter(|x| {
            x["metric"]
                .as_str()
                .is_some_and(|m| m.starts_with("flood.ctx."))
        })
        .count() as u64;
    let dropped = intake.total("dynostat.contexts.dropped", &[]).round() as u64;
    eprintln!("delivered {delivered} contexts, dropped {dropped}");
    assert!(delivered > 10_000 && dropped > 0, "{delivered} {dropped}");
    assert_eq!(
        delivered + dropped,
        CONTEXTS,
        "every context is delivered or counted"
    );
    assert_eq!(intake.total("flood.ctx.0", &["shard:0"]), 6.0);
    assert!(
        peak <= idle + LIMIT,
        "peak VmHWM {} KiB over idle {} KiB + limit {} KiB",
        peak / 1024,
        idle / 1024,
        LIMIT / 1024
    );
}

#[test]
fn sixty_seconds_with_the_intake_down_stay_under_the_limit() {
    let intake = Intake::start();
    intake.respond_always(503);
    let (mut s, idle) = start(&intake, "1");
    let hwm = s.watch_hwm();
    let started = Instant::now();
    let mut second = 0u64;
    let mut datagrams = 0u64;
    // 20,000 new contexts a second (tags change every second), for 60 s:
    // every flush fails, the retry queue overflows and drops its oldest.
    while started.elapsed() < Duration::from_secs(60) {
        // A hashed user id per context: payloads that compress like real
        // ones (a few tens of bytes a series), so the retry queue fills.
        let batch = (0..20_000u64).map(|i| {
            let user = (i ^ (second << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            format!(
                "down.requests:1|c|#env:production,service:web-frontend,second:{second},user:{user:016x}"
            )
        });
        datagrams += flood(&s, batch);
        second += 1;
        let next = started + Duration::from_secs(second);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    assert!(s.alive(), "stderr:\n{}", s.stderr());
    let during = s.vm_bytes("VmHWM");
    // The intake comes back: the telemetry says what was dropped.
    intake.respond_normally();
    assert!(
        intake.wait_until(2 * T, |i| i.total("dynostat.forwarder.queue_dropped", &[])
            > 0.0),
        "stderr:\n{}",
        s.stderr()
    );
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit(T).is_some(), "stderr:\n{}", s.stderr());
    let peak = hwm.finish().max(during);
    eprintln!(
        "{second} s, {datagrams} datagrams with the intake down: idle VmHWM {} KiB, peak {} KiB (+{} KiB, limit {} KiB); queue_dropped {}",
        idle / 1024,
        peak / 1024,
        peak.saturating_sub(idle) / 1024,
        LIMIT / 1024,
        intake.total("dynostat.forwarder.queue_dropped", &[])
    );
    assert!(second >= 50, "the flood ran for a minute ({second} s)");
    assert!(
        peak <= idle + LIMIT,
        "peak VmHWM {} KiB over idle {} KiB + limit {} KiB",
        peak / 1024,
        idle / 1024,
        LIMIT / 1024
    );
}
