//! Fuzz target: datagrams through the whole pipeline, as `serve` runs it:
//! scan and parse, aggregate, close the bucket in chunks, and encode the
//! payloads the forwarder would send.
//!
//! In: arbitrary bytes, cut into datagrams at each `\0`; an empty datagram
//! (two `\0` in a row) closes the bucket, as the flush clock does, so
//! counters are zero-filled and state crosses intervals. Out: nothing; fails
//! on a panic, on a payload over the intake's limits, and, run with
//! `-timeout=` and `-rss_limit_mb=`, on an input that costs more than that
//! time or memory (a number from the wire that sets a loop or an
//! allocation: docs/DESIGN.md, "Bounded work").
//!
//! Run from the repo root (needs nightly):
//! `cargo +nightly fuzz run pipeline -- -timeout=5 -rss_limit_mb=1024`
//! (seeds: `fuzz/seed.sh`).
#![no_main]

use dynostat::dogstatsd::aggregate::{Aggregator, AggregatorOptions, InsertOutcome};
use dynostat::dogstatsd::protocol::Parsed;
use dynostat::dogstatsd::scan;
use dynostat::forward::payload::{Decoration, FlushEncoder, Limits};
use libfuzzer_sys::fuzz_target;

/// The bucket's start: any whole interval.
const NOW: i64 = 1_700_000_000;
const INTERVAL: u64 = 10;

fn flush(agg: &mut Aggregator, deco: &Decoration, ts: i64) {
    let limits = Limits::default();
    let mut enc = FlushEncoder::new(deco, limits);
    // Small chunks, so the chunked path is exercised with few contexts.
    for chunk in agg.take().into_chunks(ts, INTERVAL, 7) {
        enc.push(&chunk);
    }
    for p in enc.finish().payloads {
        assert!(p.body.len() <= limits.max_compressed, "{}", p.body.len());
        assert!(p.raw_len <= limits.max_uncompressed, "{}", p.raw_len);
    }
}

fuzz_target!(|data: &[u8]| {
    // A small budget: whatever the input, memory stays under it.
    let mut agg = Aggregator::new(AggregatorOptions {
        context_limit: 2_000,
        memory_bytes: 8 << 20,
        ..AggregatorOptions::default()
    });
    let deco = Decoration {
        global_tags: vec!["env:fuzz".into()],
        hostname: Some("fuzz".into()),
    };
    let mut ts = NOW;
    for datagram in data.split(|&b| b == 0) {
        if datagram.is_empty() {
            flush(&mut agg, &deco, ts);
            ts += 10;
            continue;
        }
        let text = std::str::from_utf8(datagram).ok();
        for (_, parsed) in scan::datagram(datagram, text) {
            match parsed {
                Ok(Parsed::Metric(ref m)) => {
                    let _: InsertOutcome = agg.insert(m, ts);
                }
                Ok(Parsed::Event(e)) => agg.insert_event(*e),
                Ok(Parsed::ServiceCheck(c)) => agg.insert_service_check(*c),
                Err(_) => {}
            }
        }
    }
    flush(&mut agg, &deco, ts);
});
