//! The memory budget's meter: approximate bytes charged before an
//! interval allocates, and given back as taken buckets are flushed.
//!
//! In: sizes of contexts, samples, members, points and bins about to be
//! kept. Out: yes or no, and the bytes held. Must never: allocate, or let a
//! charge pass the limit.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The memory budget's limit and the bytes still held by taken buckets.
#[derive(Debug)]
pub(super) struct Meter {
    pub(super) limit: usize,
    /// Bytes charged to buckets taken but not yet fully flushed.
    pub(super) flushing: Arc<AtomicUsize>,
}

impl Meter {
    /// Whether `live + extra` bytes fit beside what is being flushed.
    #[inline]
    pub(super) fn fits(&self, live: usize, extra: usize) -> bool {
        live.saturating_add(extra)
            .saturating_add(self.flushing.load(Ordering::Relaxed))
            <= self.limit
    }

    /// Bytes that still fit beside `live` and what is being flushed.
    #[inline]
    pub(super) fn left(&self, live: usize) -> usize {
        self.limit
            .saturating_sub(live)
            .saturating_sub(self.flushing.load(Ordering::Relaxed))
    }
}

/// Bytes a taken bucket still holds against the budget; given back as the
/// bucket is flushed, and at the latest when dropped.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) bytes: usize,
    pub(super) flushing: Arc<AtomicUsize>,
}

impl Held {
    pub(super) fn new(bytes: usize, flushing: &Arc<AtomicUsize>) -> Self {
        flushing.fetch_add(bytes, Ordering::Relaxed);
        Self {
            bytes,
            flushing: Arc::clone(flushing),
        }
    }

    /// Charges `bytes` more (memory made without asking: the zero-fill keys
    /// of a flush).
    pub(super) fn add(&mut self, bytes: usize) {
        self.flushing.fetch_add(bytes, Ordering::Relaxed);
        self.bytes += bytes;
    }

    /// Keeps `bytes` at most, giving the rest back.
    pub(super) fn keep(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.flushing
                .fetch_sub(self.bytes - bytes, Ordering::Relaxed);
            self.bytes = bytes;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.keep(0);
    }
}

/// Grows `v` for one more element if it is full, charging the new capacity
/// to `bytes` when `meter` has room; `false` (nothing changed) when not.
#[inline]
pub(super) fn grow_for_one<T>(v: &mut Vec<T>, bytes: &mut usize, meter: &Meter) -> bool {
    if v.len() < v.capacity() {
        return true;
    }
    let size = std::mem::size_of::<T>().max(1);
    let cap = v.capacity();
    let mut want = (cap * 2).max(4);
    if !meter.fits(*bytes, (want - cap) * size) {
        // Not room to double: take what is left, if anything.
        want = cap + meter.left(*bytes) / size;
        if want == cap {
            return false;
        }
    }
    v.reserve_exact(want - cap);
    *bytes += (v.capacity() - cap) * size;
    true
}

/// What a new context is charged: its canonical key's bytes in the
/// interval's key buffer ([`Keys`]), times 2 for the buffer's growth by
/// doubling, plus the key's table entry and end offset, its alias map entry
/// and its state slot, each with the slack of structures that grow by
/// doubling; at least [`MIN_CONTEXT_BYTES`]. Its first spelling costs only
/// its alias map entry: the spelling's bytes are not kept.
pub(super) fn context_bytes(canon_len: usize) -> usize {
    // Key table entry and end offset: 9 B; alias map: u64 + (u64, u32) →
    // 24 B + a control byte; the state slot. Each times 2.5 for the load
    // factor (or a vector's spare capacity) and a resize's old and new tables.
    let fixed = (KEY_ENTRY_BYTES + 25 + std::mem::size_of::<State>()) * 5 / 2;
    (fixed + canon_len * 2).max(MIN_CONTEXT_BYTES)
}

/// Heap bytes of a list of tags, with headers.
pub(super) fn tags_bytes(tags: &[String]) -> usize {
    tags.iter().map(|t| t.len() + 24 + 16).sum()
}
