//! Per-type state for one interval: histograms (weighted samples), set
//! members, sketches, gauges, counters, and the [`Interval`] that holds every
//! context's state plus events and service checks.
//!
//! In: samples for a known context id. Out: state for the flush. Must never:
//! allocate per sample for an existing context without charging the budget.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Histogram or timer state for one interval.
#[derive(Debug)]
pub(super) struct Histogram {
    /// `ms`: unit millisecond.
    pub(super) timer: bool,
    /// Weighted sample count, each sample weighing `1/rate`, in arrival
    /// order as the Agent adds it.
    pub(super) count: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    /// The first sample's weight (0 while empty): the Agent's
    /// `sharedWeight`, which scales the sum when no weight differs from it.
    pub(super) shared: f64,
    /// Some weight differs from `shared` by more than [`WEIGHT_EPSILON`].
    pub(super) weights_vary: bool,
    /// Every value so far is an integer (and `abs` says how large the sum
    /// can get): then every sum over them, in any order, is exact, and
    /// `plain * shared` is the Agent's compensated sum (see [`Self::add`]).
    pub(super) ints: bool,
    /// Sum of the values, unweighted, in arrival order.
    pub(super) plain: f64,
    /// Sum of the values' magnitudes.
    pub(super) abs: f64,
    /// Sum of `value * weight` over the samples the budget left out of
    /// `ones` and `weighted` (they count in `.sum` and `.avg` all the same).
    pub(super) unkept: f64,
    /// The budget left some sample out of `ones` and `weighted`.
    pub(super) partial: bool,
    /// Unsampled values (weight 1), the common case, in arrival order. Empty
    /// while the interval runs: they wait in the interval's [`SampleLog`],
    /// which [`SampleLog::scatter`] moves here before the flush reads them.
    pub(super) ones: Vec<f64>,
    /// Unsampled values of this histogram in the interval's [`SampleLog`].
    pub(super) logged: u32,
    /// Sampled values with their weight `1/rate`.
    pub(super) weighted: Vec<(f64, f64)>,
}

/// Two weights closer than this are the same weight, for the choice of the
/// sum's algorithm (the Agent's `weightEpsilon`, pkg/metrics/histogram.go).
pub(super) const WEIGHT_EPSILON: f64 = 1e-9;

/// Integers below this magnitude add exactly in an `f64`.
pub(super) const EXACT_INTS: f64 = 9_007_199_254_740_992.0; // 2^53

impl Histogram {
    pub(super) fn new(timer: bool) -> Self {
        Self {
            timer,
            count: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            shared: 0.0,
            weights_vary: false,
            ints: true,
            plain: 0.0,
            abs: 0.0,
            unkept: 0.0,
            partial: false,
            ones: Vec::new(),
            logged: 0,
            weighted: Vec::new(),
        }
    }

    /// Weights are the float `1/rate`, as in the Agent's weightSample
    /// (pkg/metrics/histogram.go, current 7.x): four samples at `@0.75`
    /// count 5.33, and `.avg` of a constant is that constant at any rate.
    ///
    /// The sample is kept for median, percentiles and the compensated sum
    /// while the budget has room; past it, it still counts in `.count .sum
    /// .avg .min .max`, and `false` says it was left out of the rank
    /// statistics. A histogram none of whose samples was kept sends nothing
    /// (every sample counted as dropped).
    ///
    /// `plain`, `abs` and `ints` cost a few instructions a sample and spare
    /// the flush its sort in the common case: when every value is an integer
    /// and their magnitudes sum below 2^53, every partial sum in any order
    /// is an exact integer, so the Agent's compensated sum over the sorted
    /// values is exactly `plain` (times the shared weight).
    ///
    /// `id` is this histogram's context id, under which an unsampled value
    /// waits in `log`.
    #[inline]
    pub(super) fn add(
        &mut self,
        v: f64,
        weight: f64,
        (id, log): (u32, &mut SampleLog),
        bytes: &mut usize,
        meter: &Meter,
    ) -> bool {
        // Weights are at least 1, so the count is 0 only before the first.
        if self.count == 0.0 {
            self.shared = weight;
        } else if (self.shared - weight).abs() > WEIGHT_EPSILON {
            self.weights_vary = true;
        }
        self.count += weight;
        self.plain += v;
        self.abs += v.abs();
        // Saturating cast: a value at or past 2^63 in magnitude may pass
        // this test, but the sum of magnitudes then cannot stay below 2^53,
        // which the flush also requires.
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let int = (v as i64) as f64 == v;
        self.ints &= int;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        let kept = if weight == 1.0 {
            // 2^32 - 1 samples (48 GiB of log) are past any budget anyway.
            let room = self.logged < u32::MAX && log.push(id, v, bytes, meter);
            self.logged += u32::from(room);
            room
        } else {
            let room = grow_for_one(&mut self.weighted, bytes, meter);
            if room {
                self.weighted.push((v, weight));
            }
            room
        };
        if !kept {
            self.unkept += v * weight;
            self.partial = true;
        }
        kept
    }
}

/// The unsampled histogram samples of one interval, each with its context
/// id, in arrival order, appended to blocks that every histogram shares, so
/// a sample is one store next to the last one. In a vector of its own per
/// histogram, each sample was a store to that vector's tail, which the
/// other contexts' lines had pushed out of cache by the next sample: 60 to
/// 80 ns a sample with 1,000 histograms live (docs/PERFORMANCE.md). Each
/// sample is charged [`CHARGED_BYTES`] as its block is allocated: its 12
/// bytes here (value and id) and the 8 its histogram will take when
/// [`SampleLog::scatter`] gives every histogram its own values before the
/// flush, so the hand-out, with the log and the histograms' values both
/// alive, stays within what was charged.
#[derive(Debug, Default)]
pub(super) struct SampleLog {
    /// Full blocks, oldest first.
    full: Vec<LogBlock>,
    /// The block being filled.
    open: LogBlock,
}

/// One block of the log: `ids[i]` is the context of `values[i]`.
#[derive(Debug, Default)]
struct LogBlock {
    ids: Vec<u32>,
    values: Vec<f64>,
}

impl LogBlock {
    fn heap_bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<f64>()
            + self.ids.capacity() * std::mem::size_of::<u32>()
    }
}

/// The first block's size, in samples; each next one doubles, up to
/// [`LOG_BLOCK`].
const FIRST_LOG: usize = 256;
/// The largest block, in samples (512 KiB of values and 256 KiB of ids).
const LOG_BLOCK: usize = 64 * 1024;
/// Bytes a logged sample takes: its value and its context id.
const LOGGED_BYTES: usize = std::mem::size_of::<f64>() + std::mem::size_of::<u32>();
/// Bytes a logged sample is charged: its place in the log, and its value
/// in its histogram after [`SampleLog::scatter`].
pub(super) const CHARGED_BYTES: usize = LOGGED_BYTES + std::mem::size_of::<f64>();

impl SampleLog {
    /// Appends `v` for context `id`, in a new block when the open one is
    /// full and the budget has room for it; `false` when it has none.
    #[inline]
    pub(super) fn push(&mut self, id: u32, v: f64, bytes: &mut usize, meter: &Meter) -> bool {
        let b = &mut self.open;
        if (b.values.len() == b.values.capacity() || b.ids.len() == b.ids.capacity())
            && !self.next_block(bytes, meter)
        {
            return false;
        }
        self.open.ids.push(id);
        self.open.values.push(v);
        true
    }

    /// Closes the open block and opens one twice its size (at most
    /// [`LOG_BLOCK`]), or as large as the budget has room for.
    #[cold]
    #[inline(never)]
    fn next_block(&mut self, bytes: &mut usize, meter: &Meter) -> bool {
        let last = self.open.values.capacity();
        let mut want = (last * 2).clamp(FIRST_LOG, LOG_BLOCK);
        if !meter.fits(*bytes, want * CHARGED_BYTES) {
            // The flush thread may have given bytes back since `fits`:
            // never more than the block's usual size.
            want = want.min(meter.left(*bytes) / CHARGED_BYTES);
            if want == 0 {
                return false;
            }
        }
        let block = LogBlock {
            ids: Vec::with_capacity(want),
            values: Vec::with_capacity(want),
        };
        // As allocated (`want * CHARGED_BYTES` in practice): the block's
        // bytes, and the 8 each of its samples takes in its histogram.
        *bytes += block.heap_bytes() + block.values.capacity() * std::mem::size_of::<f64>();
        let full = mem::replace(&mut self.open, block);
        if !full.values.is_empty() {
            self.full.push(full);
        }
        true
    }

    /// Heap bytes the log's blocks hold: [`LOGGED_BYTES`] of each sample's
    /// [`CHARGED_BYTES`]. The list of full blocks (48 bytes a block, a
    /// block being up to [`LOG_BLOCK`] samples) is not counted.
    pub(super) fn heap_bytes(&self) -> usize {
        self.full.iter().map(LogBlock::heap_bytes).sum::<usize>() + self.open.heap_bytes()
    }

    /// Moves every logged value into its histogram's `ones`, in arrival
    /// order, freeing each block once read. The histograms' bytes were
    /// charged with the log's ([`CHARGED_BYTES`]); the caller gives back
    /// the log's [`SampleLog::heap_bytes`] once this returns.
    pub(super) fn scatter(self, states: &mut [State]) {
        if self.open.values.is_empty() && self.full.is_empty() {
            return;
        }
        for state in states.iter_mut() {
            if let State::Histogram(h) = state {
                h.ones.reserve_exact(h.logged as usize);
            }
        }
        for block in self.full.into_iter().chain([self.open]) {
            for (&id, &v) in block.ids.iter().zip(&block.values) {
                if let Some(State::Histogram(h)) = states.get_mut(id as usize) {
                    h.ones.push(v);
                }
            }
        }
    }
}

/// The smallest member table: four 16-byte slots, one cache line.
const FIRST_SLOTS: usize = 4;
/// Tables of at least this many slots (1 KiB) take new members in batches
/// (see [`Members`]); smaller ones, the common case, look each member up at
/// once.
const BATCH_FROM_SLOTS: usize = 64;
/// Members a batched table holds before it merges them: 16 lookups whose
/// cache misses overlap.
pub(super) const MEMBER_BATCH: usize = 16;

/// A set member's fingerprint: XXH3-128 of its bytes, never 0 (the empty
/// slot). Two members count as one only if all 128 bits agree, the same
/// bound as a context's spelling fingerprint (about 2^-128 per pair;
/// docs/DESIGN.md, "Set members").
#[inline]
pub(super) fn member_fingerprint(member: &[u8]) -> u128 {
    super::context::xxh3_128(member).max(1)
}

/// A set's unique members, as the fingerprints of their bytes in one
/// open-addressing table (linear probing, at most 7/8 full, 0 marks an empty
/// slot). The flush needs only their number, so no member's bytes are kept:
/// a probe reads one 16-byte slot (rarely two), where a hash table of the
/// members themselves read its control bytes, then the slot, then, for a
/// long member, its bytes on the heap.
///
/// A large table is bigger than the cache, so that one slot is a miss (perf
/// on the mixed load: a fifth of all CPU, about 200 ns a set line, in the
/// load of the slot). From [`BATCH_FROM_SLOTS`] on, the table keeps
/// [`MEMBER_BATCH`] more slots after its power-of-two part. A member is
/// written there unlooked-at, and when they are full, [`Members::merge`]
/// looks all of them up together: 16 independent loads, whose misses
/// overlap, instead of 16 misses one after another.
#[derive(Debug, Default)]
pub(super) struct Members {
    /// The table, then (when batched) the batch slots.
    slots: Vec<u128>,
    /// Members in the table.
    len: usize,
    /// Members in the batch slots, not looked up yet.
    queued: usize,
}

/// What [`Members::probe`] found: the member is held, or not (with its
/// fingerprint, for [`Members::insert`]).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(super) enum Probe {
    Held,
    New(u128),
}

/// The slots a table of `table` slots allocates: the table, and the batch
/// slots when it is large enough to batch.
fn allocation(table: usize) -> usize {
    if table >= BATCH_FROM_SLOTS {
        table + MEMBER_BATCH
    } else {
        table
    }
}

impl Members {
    #[cfg(test)]
    pub(super) fn probe(&self, member: &[u8]) -> Probe {
        let fp = member_fingerprint(member);
        if self.holds(fp) {
            Probe::Held
        } else {
            Probe::New(fp)
        }
    }

    /// Whether the table holds `fp` (the batch slots are not looked at).
    #[inline]
    pub(super) fn holds(&self, fp: u128) -> bool {
        !self.slots.is_empty() && self.find(fp).is_ok()
    }

    /// The table's slots, without the batch slots.
    #[inline]
    fn table(&self) -> usize {
        let n = self.slots.len();
        if n >= BATCH_FROM_SLOTS {
            n - MEMBER_BATCH
        } else {
            n
        }
    }

    /// The slot holding `fp` (`Ok`), or the empty slot where it goes
    /// (`Err`), walking from the slot its low bits pick. The table must have
    /// slots, and an empty one (it is never full).
    #[inline]
    fn find(&self, fp: u128) -> Result<usize, usize> {
        let mask = self.table() - 1;
        // Truncation: the low bits pick the first slot.
        #[allow(clippy::cast_possible_truncation)]
        let mut i = fp as usize & mask;
        loop {
            match self.slots[i] {
                0 => return Err(i),
                s if s == fp => return Ok(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Whether `more` more members would take the table past 7/8 (or it has
    /// no slots yet).
    fn must_grow(&self, more: usize) -> bool {
        (self.len + more) * 8 > self.table() * 7
    }

    /// Bytes the table grows by if one more member is inserted now (0 while
    /// it has room), counting every batched member as new: what the budget
    /// is asked for first. One doubling always makes room: a batched table
    /// has at least 64 slots, so doubling adds room for 56 more members, and
    /// at most 16 are batched.
    pub(super) fn growth_bytes(&self) -> usize {
        if self.must_grow(self.queued + 1) {
            allocation((self.table() * 2).max(FIRST_SLOTS)) * std::mem::size_of::<u128>()
        } else {
            0
        }
    }

    /// Whether this table takes members in batches ([`Members::queue`]).
    #[inline]
    pub(super) fn batches(&self) -> bool {
        self.slots.len() >= BATCH_FROM_SLOTS
    }

    /// Writes `fp` into the next batch slot, unlooked-at (the table must
    /// batch, and have a free batch slot, which it has after every
    /// [`Members::merge`]); true when the batch is now full and must be
    /// merged.
    #[inline]
    pub(super) fn queue(&mut self, fp: u128) -> bool {
        let at = self.table() + self.queued;
        self.slots[at] = fp;
        self.queued += 1;
        self.queued == MEMBER_BATCH
    }

    /// Looks the batched members up together and adds those not held (each
    /// once); returns how many were already held, or repeated in the batch.
    pub(super) fn merge(&mut self) -> usize {
        let n = self.queued;
        if n == 0 {
            return 0;
        }
        self.queued = 0;
        let mut batch = [0u128; MEMBER_BATCH];
        let at = self.table();
        batch[..n].copy_from_slice(&self.slots[at..at + n]);
        self.slots[at..at + n].fill(0);
        // First, one independent load per member, of the slot its walk
        // starts at: the loads do not wait for each other, so their cache
        // misses overlap. Every walk below then starts in the cache.
        let mask = at - 1;
        let mut first = 0u128;
        for &fp in &batch[..n] {
            // Truncation: the low bits pick the first slot.
            #[allow(clippy::cast_possible_truncation)]
            let i = fp as usize & mask;
            first ^= self.slots[i];
        }
        std::hint::black_box(first);
        let mut held = 0;
        for &fp in &batch[..n] {
            if self.holds(fp) {
                held += 1;
            } else {
                self.insert(fp);
            }
        }
        held
    }

    /// [`Members::merge`], giving back to `bytes` the [`MEMBER_BYTES`] each
    /// batched member was charged as new and turned out to be held.
    pub(super) fn settle(&mut self, bytes: &mut usize) {
        *bytes -= self.merge() * MEMBER_BYTES;
    }

    /// Adds a member not held yet, by the fingerprint [`Members::probe`] gave
    /// it, with no member batched.
    pub(super) fn insert(&mut self, fp: u128) {
        if self.must_grow(1) {
            // Only the table moves: every caller has merged the batch.
            debug_assert_eq!(self.queued, 0, "insert with members batched");
            let table = (self.table() * 2).max(FIRST_SLOTS);
            let old_table = self.table();
            let old = std::mem::replace(&mut self.slots, vec![0; allocation(table)]);
            for &s in old[..old_table].iter().filter(|&&s| s != 0) {
                self.place(s);
            }
        }
        self.place(fp);
        self.len += 1;
    }

    /// Writes `fp`, which the table does not hold, into its empty slot.
    fn place(&mut self, fp: u128) {
        if let Err(i) = self.find(fp) {
            self.slots[i] = fp;
        }
    }

    /// Members in the table. Batched members are not counted until
    /// [`Members::merge`].
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// No member, in the table or batched.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0 && self.queued == 0
    }

    /// The table's slots, without the batch slots (for tests).
    #[cfg(test)]
    pub(super) fn slots(&self) -> usize {
        self.table()
    }
}

/// One context's state for one interval. The first sample's type decides the
/// variant; later samples of another numeric type are folded into it, as the
/// Agent's `ContextMetrics.AddSample` does (it keys contexts by name, host
/// and tags, not by type).
#[derive(Debug)]
pub(super) enum State {
    /// Sum of `value * 1/rate`, and when (unix seconds) the last sample
    /// arrived, for zero-filling.
    Counter { sum: f64, last: i64 },
    /// Last value.
    Gauge(f64),
    /// Unique members, boxed like histograms: every variant's data then
    /// fits in 16 bytes, so a state takes 24 with a plain tag (a set inline
    /// took 40, and its 24-byte vector inline made the tag a niche in the
    /// vector's capacity, which costs instructions at every match).
    Set(Box<Members>),
    /// Boxed: most contexts are not histograms, and the box keeps `State` small.
    Histogram(Box<Histogram>),
    /// A sketch, boxed like histograms: bounded by its bins, not by the values.
    Distribution(Box<Sketch>),
    /// `|T` points as received, boxed like histograms.
    #[allow(clippy::box_collection)] // The box is the point: a thin pointer.
    Timestamped(Box<Vec<(i64, f64)>>),
}

impl State {
    /// Heap bytes a new state holds at once (its box, with a header).
    pub(super) fn heap_bytes(&self) -> usize {
        match self {
            Self::Histogram(_) => std::mem::size_of::<Histogram>() + 16,
            Self::Distribution(_) => std::mem::size_of::<Sketch>() + 16,
            Self::Timestamped(_) => std::mem::size_of::<Vec<(i64, f64)>>() + 16,
            Self::Set(_) => std::mem::size_of::<Members>() + 16,
            _ => 0,
        }
    }

    pub(super) fn new(class: Class, kind: MetricType) -> Self {
        match class {
            Class::Distribution => Self::Distribution(Box::default()),
            Class::TimestampedGauge | Class::TimestampedRate => Self::Timestamped(Box::default()),
            Class::Aggregated => match kind {
                MetricType::Counter => Self::Counter { sum: 0.0, last: 0 },
                MetricType::Gauge => Self::Gauge(0.0),
                MetricType::Set => Self::Set(Box::default()),
                MetricType::Histogram => Self::Histogram(Box::new(Histogram::new(false))),
                MetricType::Timer => Self::Histogram(Box::new(Histogram::new(true))),
                // Class::of never puts a distribution here; sketch it anyway.
                MetricType::Distribution => Self::Distribution(Box::default()),
            },
        }
    }
}

/// One interval's canonical keys: every key's bytes back to back in one
/// buffer, in context id order, and a table of the ids hashed by their key.
/// A key costs its own bytes plus 9 bytes of table entry and end offset
/// (with their growth slack); a boxed key in a map costs an allocation (its
/// header and rounding, about 20 bytes on top of the key) and a 24-byte
/// entry. Keys are only added, and freed with the interval.
#[derive(Debug, Default)]
pub(super) struct Keys {
    /// The keys' bytes, back to back.
    text: String,
    /// `ends[id]`: where key `id` ends in `text`; it starts where key
    /// `id - 1` ends (key 0 at 0).
    ends: Vec<u32>,
    /// Context ids, hashed by their key (rehashed from `text` on growth).
    table: hashbrown::HashTable<u32>,
}

/// Bytes a key adds to [`Keys`] beyond its own: a table entry (a 4-byte id
/// and a control byte) and a 4-byte end offset.
pub(super) const KEY_ENTRY_BYTES: usize = 9;

#[inline]
fn key_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// Key `id` of `text` cut at `ends`.
#[inline]
fn key_at<'t>(text: &'t str, ends: &[u32], id: usize) -> Option<&'t str> {
    let end = *ends.get(id)? as usize;
    let start = match id.checked_sub(1) {
        Some(prev) => *ends.get(prev)? as usize,
        None => 0,
    };
    text.get(start..end)
}

impl Keys {
    /// Keys held.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The key of context `id`.
    pub(super) fn get(&self, id: usize) -> Option<&str> {
        key_at(&self.text, &self.ends, id)
    }

    /// The id of `key`, if it is held.
    pub(super) fn find(&self, key: &str) -> Option<u32> {
        let (text, ends) = (&self.text, &self.ends);
        self.table
            .find(key_hash(key), |&id| {
                key_at(text, ends, id as usize) == Some(key)
            })
            .copied()
    }

    /// Adds `key` (not held yet) as the next id, [`Keys::len`] before the
    /// call. `None`, with nothing changed, when the buffer would pass the
    /// 4 GiB its offsets can reach.
    pub(super) fn push(&mut self, key: &str) -> Option<u32> {
        let id = u32::try_from(self.ends.len()).ok()?;
        let end = u32::try_from(self.text.len().checked_add(key.len())?).ok()?;
        self.text.push_str(key);
        self.ends.push(end);
        let Self { text, ends, table } = self;
        table.insert_unique(key_hash(key), id, |&i| {
            key_hash(key_at(text, ends, i as usize).unwrap_or_default())
        });
        Some(id)
    }

    /// Frees the lookup table: a flush reads keys by id only.
    pub(super) fn drop_table(&mut self) {
        self.table = hashbrown::HashTable::new();
    }
}

/// Everything that belongs to one interval. Moved whole into a [`Bucket`].
#[derive(Debug, Default)]
pub(super) struct Interval {
    /// Raw spelling hash → alias (the hot-path lookup).
    pub(super) aliases: FxHashMap<u64, Alias>,
    /// Canonical key → context id, and id → key. The key is `class byte,
    /// name, '\n', host, '\n', sorted tags joined by ','`; `\n` cannot occur
    /// in a name, host or tag.
    pub(super) keys: Keys,
    /// Per-context state, indexed by context id.
    pub(super) states: Vec<State>,
    pub(super) events: Vec<Event>,
    pub(super) service_checks: Vec<ServiceCheck>,
    /// Events and service checks past their caps.
    pub(super) overflowed: u64,
    /// Values, members, points and bins refused at the memory budget.
    pub(super) dropped: u64,
    /// Lines whose rate weighed more than `protocol::MAX_WEIGHT`, bounded to it.
    pub(super) clamped: u64,
    /// Approximate heap bytes charged by this interval (see the module docs).
    pub(super) bytes: usize,
    /// Unsampled histogram samples, until the flush gives them to their
    /// histograms.
    pub(super) log: SampleLog,
    /// Contexts per metric name, counted on the cold path for the
    /// cardinality guard.
    pub(super) names: super::cardinality::NameCounts,
}

impl Interval {
    /// Applies one line's values to an existing context. The hot path: no
    /// allocation except amortised `Vec` growth and new set members.
    #[inline]
    pub(super) fn apply(
        &mut self,
        id: usize,
        m: &Metric<'_>,
        now: i64,
        meter: &Meter,
    ) -> InsertOutcome {
        let Some(state) = self.states.get_mut(id) else {
            // The only ids without a state are [`BLOCKED`] aliases.
            return InsertOutcome::Filtered;
        };
        if let State::Set(members) = state {
            if m.kind != MetricType::Set {
                return InsertOutcome::Discarded;
            }
            let fp = member_fingerprint(m.set_value().as_bytes());
            // The member's charge, and the table's growth on top when it
            // doubles now, must both fit. A batched member is charged as
            // new (and the growth as if every batched member were new);
            // the merge gives back the charge of those already held.
            let cost = MEMBER_BYTES;
            if members.batches() {
                if meter.fits(self.bytes, cost + members.growth_bytes()) {
                    self.bytes += cost;
                    if members.queue(fp) {
                        members.settle(&mut self.bytes);
                    }
                    return InsertOutcome::Accepted;
                }
                // At the budget: settle the batch, then decide this member
                // exactly as an unbatched table does.
                members.settle(&mut self.bytes);
            }
            if members.holds(fp) {
                return InsertOutcome::Accepted;
            }
            if !meter.fits(self.bytes, cost + members.growth_bytes()) {
                self.dropped += 1;
                return InsertOutcome::MemoryLimit;
            }
            self.bytes += cost;
            members.insert(fp);
            return InsertOutcome::Accepted;
        }
        if m.kind == MetricType::Set {
            return InsertOutcome::Discarded;
        }
        // Gauges and sets ignore the rate; counters, histograms and
        // distributions weigh each sample by the float 1/rate, as the Agent's
        // Counter.addSample and Histogram.addSample do, bounded by
        // `protocol::sample_weight` (a rate outside (0, 1] included).
        let inv = if m.sample_rate == 1.0 {
            // Unsampled (the common case, no division).
            1.0
        } else {
            let (w, clamped) = sample_weight(m.kind, m.sample_rate);
            self.clamped += u64::from(clamped);
            w
        };
        // The common lines, one finite value into a counter, a gauge or a
        // histogram: the closure's arms below, written out because the
        // closure is not inlined (callgrind: 45 instructions a counters line).
        if let Some(v) = m.value.filter(|v| v.is_finite()) {
            match state {
                State::Counter { sum, last } => {
                    *sum += v * inv;
                    *last = now;
                    return InsertOutcome::Accepted;
                }
                State::Gauge(last) => {
                    *last = v;
                    return InsertOutcome::Accepted;
                }
                // The closure's histogram arm.
                State::Histogram(h) => {
                    #[allow(clippy::cast_possible_truncation)] // ids are u32
                    let at = (id as u32, &mut self.log);
                    if !h.add(v, inv, at, &mut self.bytes, meter) {
                        // Aggregated, but left out of the rank statistics.
                        self.dropped += 1;
                    }
                    return InsertOutcome::Accepted;
                }
                _ => {}
            }
        }
        let ts = m.timestamp.unwrap_or_default();
        let (mut accepted, mut dropped) = (false, false);
        let bytes = &mut self.bytes;
        let lost = &mut self.dropped;
        let log = &mut self.log;
        let mut add = |v: f64| -> Option<InsertOutcome> {
            if !v.is_finite() {
                // NaN and Inf parse but produce no point, as in the Agent.
                return None;
            }
            match state {
                State::Counter { sum, last } => {
                    *sum += v * inv;
                    *last = now;
                }
                State::Gauge(last) => *last = v,
                State::Histogram(h) => {
                    #[allow(clippy::cast_possible_truncation)] // ids are u32
                    if !h.add(v, inv, (id as u32, log), bytes, meter) {
                        // Aggregated, but left out of the rank statistics.
                        *lost += 1;
                    }
                }
                State::Distribution(sketch) => {
                    if !sketch.has_room(inv) {
                        // Past `sketch::MAX_COUNT` values this interval.
                        return Some(InsertOutcome::Discarded);
                    }
                    let grown = sketch.insert(v, inv, |extra| {
                        let ok = meter.fits(*bytes, extra);
                        if ok {
                            *bytes += extra;
                        }
                        ok
                    });
                    if !grown {
                        *lost += 1;
                        return Some(InsertOutcome::MemoryLimit);
                    }
                }
                State::Timestamped(points) => {
                    // The Agent's no-aggregation pipeline sends the raw value
                    // (no 1/rate scaling); a counter's is divided by the
                    // interval at flush.
                    if !grow_for_one(points, bytes, meter) {
                        *lost += 1;
                        return Some(InsertOutcome::MemoryLimit);
                    }
                    points.push((ts, v));
                }
                State::Set(_) => return Some(InsertOutcome::Discarded),
            }
            Some(InsertOutcome::Accepted)
        };
        // The one value of most lines, as the parser kept it (sets were
        // handled above), without building the values iterator.
        if let Some(v) = m.value {
            return add(v).unwrap_or(InsertOutcome::Discarded);
        }
        for v in m.values() {
            match add(v) {
                Some(InsertOutcome::Accepted) => accepted = true,
                Some(InsertOutcome::MemoryLimit) => dropped = true,
                Some(other) => return other,
                None => {}
            }
        }
        if accepted {
            InsertOutcome::Accepted
        } else if dropped {
            InsertOutcome::MemoryLimit
        } else {
            InsertOutcome::Discarded
        }
    }
}
