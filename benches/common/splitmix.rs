//! A small deterministic generator (SplitMix64), shared by the benches and
//! `examples/loadgen.rs` (through `#[path]`), so every run builds the same
//! lines. Not a bench target itself: Cargo only discovers `benches/*.rs`.
#![allow(dead_code)]

/// Letters, digits, `_` and `.`: what metric names and tags are made of.
pub const WORD: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_.";

/// SplitMix64 from a seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Appends `n` characters from `alphabet` to `out`.
    pub fn word(&mut self, out: &mut String, n: u64, alphabet: &[u8]) {
        for _ in 0..n {
            out.push(char::from(
                alphabet[(self.next_u64() % alphabet.len() as u64) as usize],
            ));
        }
    }

    /// Appends the long shape's tag field (Datadog's SMP "3k contexts"
    /// DogStatsD cases): 2 to 50 `key:value` tags of 3 to 150 characters,
    /// comma-separated, from `alphabet`.
    pub fn long_tags(&mut self, out: &mut String, alphabet: &[u8]) {
        for i in 0..self.range(2, 50) {
            if i > 0 {
                out.push(',');
            }
            let len = self.range(3, 150);
            let key = self.range(1, (len - 2).min(20));
            self.word(out, key, alphabet);
            out.push(':');
            self.word(out, len - key - 1, alphabet);
        }
    }
}
