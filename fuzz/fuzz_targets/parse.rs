//! Fuzz target: any bytes through `lines` + `parse_line`, and through the
//! listener's one-pass `scan::datagram`, which must give the same lines and
//! results.
//!
//! In: arbitrary datagram bytes. Out: nothing; fails on a panic or a broken
//! invariant of an accepted line (non-empty name, values and
//! tags readable, event title non-empty, lines non-empty and free of `\n`).
#![no_main]

use dynostat::dogstatsd::protocol::{lines, parse_line, Parsed, MAX_LINE_LEN};
use dynostat::dogstatsd::scan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The whole input as one line, too (it may contain newlines).
    let _ = parse_line(data);
    let want: Vec<_> = lines(data).map(|l| (l, parse_line(l))).collect();
    let text = std::str::from_utf8(data).ok();
    assert!(scan::datagram(data, text).eq(want.iter().cloned()));
    assert!(scan::datagram(data, None).eq(want.iter().cloned()));
    for line in lines(data) {
        assert!(!line.is_empty());
        assert!(!line.contains(&b'\n'));
        // Only one trailing `\r` is dropped (as the Agent's dropCR), so
        // `a\r\r\n` leaves `a\r`: no assertion on `\r` here.
        match parse_line(line) {
            Ok(Parsed::Metric(m)) => {
                assert!(line.len() <= MAX_LINE_LEN);
                assert!(!m.name.is_empty());
                assert!(m.timestamp.map_or(true, |t| t > 0));
                let _ = m.values().count();
                let _ = m.set_value();
                for tag in m.tags.iter() {
                    assert!(!tag.is_empty() && !tag.contains(','));
                }
            }
            Ok(Parsed::Event(e)) => assert!(!e.title.is_empty()),
            Ok(Parsed::ServiceCheck(c)) => assert!(!c.name.is_empty()),
            Err(_) => {}
        }
    }
});
