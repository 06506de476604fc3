//! The trace relay: tracers' HTTP on 127.0.0.1:8126, as the Datadog
//! trace-agent answers it, into the same sender as the metrics.
//!
//! ```text
//! tracer ─HTTP─> receive ─body─> decode ─spans─> process ─chunk─┬─> stats (10 s buckets, every trace)
//!                  │                                            └─> sample ─kept─> pending ─> AgentPayload
//!                  └─ /telemetry/proxy, /profiling, /evp_proxy ─> the intake, key added (answered through)
//!                                       pending, stats ─gzip─> forward::PayloadSink (the metrics' queue)
//! ```
//!
//! In: HTTP requests ([`receive`]). Out: `AgentPayload` protobuf and
//! `StatsPayload` msgpack payloads handed to [`crate::forward`]'s sender
//! (one queue, one byte bound, one backoff, one shutdown drain); with no API
//! key, a summary on the console ([`console`]).
//!
//! Runs on a thread of its own with a current-thread runtime, so nothing
//! here can delay the metrics' flush clock. Memory: what it holds (bodies
//! being read and decoded, kept traces waiting) is charged to a [`Meter`]
//! sized as its share of `DYNOSTAT_MEMORY_LIMIT`; past it, requests are
//! refused (429 for tracers that ask for real statuses, else dropped and
//! counted).
//!
//! Must never: block the metrics, hold more than its share, drop a trace
//! without counting it by reason (`dynostat.traces.*`), log a span or the
//! API key, or exit on SIGTERM before handing what it holds to the sender.

pub mod console;
pub mod decode;
pub mod process;
pub mod receive;
pub mod sample;
pub mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use libdd_trace_protobuf::pb;
use prost::Message as _;
use tokio::sync::{oneshot, watch};

use crate::config::{Config, TraceConfig};
use crate::dogstatsd::stats::Stats;
use crate::forward::http::Http;
use crate::forward::payload::{gzip_payload, Endpoint, Payload};
use crate::forward::PayloadSink;
use crate::progress::Progress;
use process::{Processor, Tracer};
use sample::{Decision, Sampler};

/// Largest `AgentPayload` before compression, as the Agent's trace writer
/// cuts them (3.2 MB).
pub const MAX_PAYLOAD_BYTES: usize = 3_200_000;
/// Largest request body, as the Agent's `max_request_bytes` (25 MB), and
/// never more than the relay's memory share.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;
/// Kept traces are sent at least this often.
pub const TRACE_FLUSH: Duration = Duration::from_secs(2);

/// How long the relay's loop may go without a turn before the watchdog
/// calls it stalled: it turns at least every [`TRACE_FLUSH`], and a flush
/// only hands payloads to the sender's bounded channel, which the sender
/// empties in every turn of its own loop.
pub const PROGRESS_ALLOWANCE: Duration = Duration::from_secs(30);
/// At shutdown, requests being processed get this long to finish.
const SHUTDOWN_REQUESTS: Duration = Duration::from_millis(800);

/// Where `/dogstatsd/v2/proxy` bodies go: the DogStatsD aggregator
/// (`serve` passes its ingest, so this module does not import `serve`).
pub type DogstatsdHook = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Bytes the relay holds, against its share of `DYNOSTAT_MEMORY_LIMIT`.
#[derive(Debug)]
pub struct Meter {
    used: AtomicUsize,
    limit: usize,
}

impl Meter {
    /// A meter allowing `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Charges `n` bytes if they fit.
    pub fn try_charge(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    /// Charges `n` bytes even past the limit (what is already held).
    pub fn force(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives `n` bytes back.
    pub fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Bytes that may still be charged.
    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.used.load(Ordering::Acquire))
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The share.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Why a traces request was not taken.
#[derive(Debug)]
pub enum Refused {
    /// The body is not a valid payload: 400.
    Malformed(decode::DecodeError),
    /// The relay's memory share is full: 429 or a counted drop.
    Memory,
}

/// Kept traces, already encoded and compressed: an `AgentPayload` is built
/// as they come (protobuf messages concatenate: the header fields, then one
/// `tracer_payloads` entry per request), so what waits for the next flush is
/// gzip bytes, not decoded spans (at 10k spans/s, 2 s of them decoded were
/// most of the relay's peak memory).
#[derive(Default)]
struct Pending {
    building: Option<Building>,
    /// Finished payloads (each reached [`MAX_PAYLOAD_BYTES`]).
    ready: Vec<Payload>,
    /// What `building` and `ready` are charged to the meter.
    charged: usize,
    /// Encoding buffers, freed at each flush.
    scratch: Scratch,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("ready", &self.ready.len())
            .field("charged", &self.charged)
            .finish_non_exhaustive()
    }
}

/// An `AgentPayload` being written.
struct Building {
    gz: flate2::write::GzEncoder<Vec<u8>>,
    raw: usize,
    chunks: usize,
}

impl Building {
    fn finish(self) -> Payload {
        Payload {
            endpoint: Endpoint::Traces,
            body: self.gz.finish().unwrap_or_default(),
            raw_len: self.raw,
            items: self.chunks,
            points: self.chunks,
            carry: crate::forward::payload::Carry::default(),
        }
    }
}

/// A tracer payload too large for one request, cut by chunks (the
/// reference for [`agent_payload_entries`], which cuts the same way).
#[cfg(test)]
fn split_tracer_payload(mut tp: pb::TracerPayload) -> Vec<pb::TracerPayload> {
    if tp.chunks.len() < 2 || tp.encoded_len() <= MAX_PAYLOAD_BYTES {
        return vec![tp];
    }
    let chunks = std::mem::take(&mut tp.chunks);
    let mut parts = Vec::new();
    let mut cur = tp.clone();
    let mut cur_len = 0;
    for c in chunks {
        let l = c.encoded_len() + 8;
        if cur_len + l > MAX_PAYLOAD_BYTES && !cur.chunks.is_empty() {
            parts.push(std::mem::replace(&mut cur, tp.clone()));
            cur_len = 0;
        }
        cur_len += l;
        cur.chunks.push(c);
    }
    parts.push(cur);
    parts
}

/// Appends a length-delimited field: its key, then `body`'s length and
/// bytes.
fn put_message(tag: u32, body: &[u8], out: &mut Vec<u8>) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// Appends a string field's key (tags up to 15 take one byte), length and
/// bytes.
fn put_str(key: u8, s: &str, out: &mut Vec<u8>) {
    out.push(key);
    prost::encoding::encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

/// What a map entry's string field takes, 0 when empty (prost leaves a
/// default key or value out of the entry).
fn str_entry_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// A `Span`'s protobuf body, byte for byte what prost's `encode_raw`
/// writes (fields in declaration order, defaults left out, map entries
/// without a default key or value), in one pass: prost measures each map
/// entry before writing it, and the span itself before that.
fn encode_span(s: &pb::Span, out: &mut Vec<u8>) {
    use prost::encoding::encode_varint;
    for (key, v) in [(0x0a, &s.service), (0x12, &s.name), (0x1a, &s.resource)] {
        if !v.is_empty() {
            put_str(key, v, out);
        }
    }
    for (key, v) in [
        (0x20, s.trace_id),
        (0x28, s.span_id),
        (0x30, s.parent_id),
        // int64 and int32 are varints of the two's complement, as u64.
        (0x38, s.start as u64),
        (0x40, s.duration as u64),
        (0x48, i64::from(s.error) as u64),
    ] {
        if v != 0 {
            out.push(key);
            encode_varint(v, out);
        }
    }
    for (k, v) in &s.meta {
        out.push(0x52);
        encode_varint((str_entry_len(k) + str_entry_len(v)) as u64, out);
        if !k.is_empty() {
            put_str(0x0a, k, out);
        }
        if !v.is_empty() {
            put_str(0x12, v, out);
        }
    }
    for (k, v) in &s.metrics {
        let skip = *v == 0.0;
        out.push(0x5a);
        encode_varint((str_entry_len(k) + if skip { 0 } else { 9 }) as u64, out);
        if !k.is_empty() {
            put_str(0x0a, k, out);
        }
        if !skip {
            out.push(0x11);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    if !s.r#type.is_empty() {
        put_str(0x62, &s.r#type, out);
    }
    // Rare: prost's own encoders.
    if !s.meta_struct.is_empty() {
        prost::encoding::hash_map::encode(
            prost::encoding::string::encode,
            prost::encoding::string::encoded_len,
            prost::encoding::bytes::encode,
            prost::encoding::bytes::encoded_len,
            13,
            &s.meta_struct,
            out,
        );
    }
    for link in &s.span_links {
        prost::encoding::message::encode(14, link, out);
    }
    for event in &s.span_events {
        prost::encoding::message::encode(15, event, out);
    }
}

/// One `TraceChunk`'s protobuf body, as prost encodes it (fields in tag
/// order), with each span written once: prost's `encode_to_vec` on the
/// whole `AgentPayload` measures a span's maps once per enclosing message
/// (four times) before writing them. `scratch` holds a span's body while
/// its length is not yet known.
fn encode_chunk(mut c: pb::TraceChunk, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    let spans = std::mem::take(&mut c.spans);
    let tail = pb::TraceChunk {
        tags: std::mem::take(&mut c.tags),
        dropped_trace: std::mem::take(&mut c.dropped_trace),
        ..Default::default()
    };
    // Tags 1 and 2, then 3 (spans), then 4 and 5.
    c.encode_raw(out);
    for span in &spans {
        scratch.clear();
        encode_span(span, scratch);
        put_message(3, scratch, out);
    }
    tail.encode_raw(out);
}

/// Buffers [`agent_payload_entries`] writes into, kept in [`Pending`]
/// from one request to the next until the trace flush frees them: fresh
/// ones of hundreds of kB a request cost a mapping and a page fault per
/// 4 KiB (glibc maps allocations past 64 KiB on their own, see
/// `serve::memory`).
#[derive(Default)]
struct Scratch {
    /// A request's chunks, each framed as field 6 of a `TracerPayload`.
    chunks: Vec<u8>,
    /// One chunk's body while its length is not yet known.
    chunk: Vec<u8>,
    /// One span's body, likewise.
    span: Vec<u8>,
}

/// One `tracer_payloads` entry of an `AgentPayload`: `head`, a run of
/// framed chunks, then `tail`.
#[derive(Debug, PartialEq)]
struct Part {
    /// Where its chunks are in [`Entries::chunks`].
    range: std::ops::Range<usize>,
    /// How many chunks.
    chunks: usize,
    /// The `TracerPayload` message's length.
    len: usize,
}

/// A tracer payload's `tracer_payloads` entries, cut as
/// [`MAX_PAYLOAD_BYTES`] requires.
struct Entries<'a> {
    head: Vec<u8>,
    tail: Vec<u8>,
    chunks: &'a [u8],
    parts: Vec<Part>,
}

impl Entries<'_> {
    /// What `part`'s entry takes: key, length, message.
    fn entry_len(part: &Part) -> usize {
        1 + prost::encoding::encoded_len_varint(part.len as u64) + part.len
    }

    /// Writes `part`'s entry, in four writes (no copy of the chunks).
    fn write(&self, part: &Part, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut prefix = Vec::with_capacity(11);
        prost::encoding::encode_key(5, prost::encoding::WireType::LengthDelimited, &mut prefix);
        prost::encoding::encode_varint(part.len as u64, &mut prefix);
        out.write_all(&prefix)?;
        out.write_all(&self.head)?;
        out.write_all(&self.chunks[part.range.clone()])?;
        out.write_all(&self.tail)
    }
}

/// The `AgentPayload { tracer_payloads: [part] }` entries for each part of
/// `tp` cut as [`MAX_PAYLOAD_BYTES`] requires, with the chunks in each
/// part: byte for byte what encoding each part of
/// `split_tracer_payload(tp)` that way gives, each chunk encoded once.
fn agent_payload_entries(mut tp: pb::TracerPayload, s: &mut Scratch) -> Entries<'_> {
    // All chunks in one buffer, framed, each with its unframed length.
    s.chunks.clear();
    let lens: Vec<(usize, usize)> = std::mem::take(&mut tp.chunks)
        .into_iter()
        .map(|c| {
            s.chunk.clear();
            encode_chunk(c, &mut s.chunk, &mut s.span);
            put_message(6, &s.chunk, &mut s.chunks);
            (s.chunks.len(), s.chunk.len())
        })
        .collect();
    // Tags 1 to 5, then 6 (chunks), then 7 to 11.
    let tail = pb::TracerPayload {
        tags: std::mem::take(&mut tp.tags),
        env: std::mem::take(&mut tp.env),
        hostname: std::mem::take(&mut tp.hostname),
        app_version: std::mem::take(&mut tp.app_version),
        container_debug: tp.container_debug.take(),
        ..Default::default()
    }
    .encode_to_vec();
    let head = tp.encode_to_vec();
    let fixed = head.len() + tail.len();
    let part = |range: std::ops::Range<usize>, chunks: usize| Part {
        len: fixed + range.len(),
        range,
        chunks,
    };
    let mut parts = Vec::new();
    if lens.len() < 2 || fixed + s.chunks.len() <= MAX_PAYLOAD_BYTES {
        parts.push(part(0..s.chunks.len(), lens.len()));
    } else {
        let (mut start, mut end, mut n, mut cur_len) = (0, 0, 0, 0);
        for &(framed_end, raw) in &lens {
            // What `split_tracer_payload` counts: the chunk's encoded length
            // and 8 bytes for its framing.
            let l = raw + 8;
            if cur_len + l > MAX_PAYLOAD_BYTES && n > 0 {
                parts.push(part(start..end, n));
                (start, n, cur_len) = (end, 0, 0);
            }
            cur_len += l;
            n += 1;
            end = framed_end;
        }
        parts.push(part(start..end, n));
    }
    Entries {
        head,
        tail,
        chunks: &s.chunks,
        parts,
    }
}

#[derive(Debug)]
struct State {
    processor: Processor,
    sampler: Sampler,
    stats: stats::Stats,
    pending: Pending,
    summary: Option<console::Summary>,
}

/// Everything the request handlers and the flush timers share.
pub struct Core {
    config: TraceConfig,
    hostname: String,
    /// `key:value` tags added to each chunk's root span where it has no
    /// such key: `DD_TAGS` and the dyno's tags (see docs/DESIGN.md).
    span_tags: Vec<(String, String)>,
    meter: Meter,
    stats: Arc<Stats>,
    sink: Option<PayloadSink>,
    http: Option<Http>,
    dogstatsd: DogstatsdHook,
    info: String,
    body_limit: usize,
    /// The spare buffer for traces bodies.
    bodies: receive::BodyPool,
    active: AtomicUsize,
    state: Mutex<State>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("meter", &self.meter)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// The relay's shared state, from the configuration.
    pub fn new(
        config: &Config,
        sink: Option<PayloadSink>,
        stats: Arc<Stats>,
        dogstatsd: DogstatsdHook,
    ) -> anyhow::Result<Self> {
        let http = match &config.api_key {
            Some(key) => Some(Http::new(config, key)?),
            None => None,
        };
        let t = &config.trace;
        let share = TraceConfig::memory_bytes(config.memory_limit);
        let span_tags = config
            .global_tags
            .iter()
            .filter_map(|tag| tag.split_once(':'))
            .filter(|(k, _)| !matches!(*k, "env" | "service" | "version"))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Self {
            config: t.clone(),
            hostname: config.hostname.clone().unwrap_or_default(),
            span_tags,
            meter: Meter::new(share),
            stats,
            sink,
            http,
            dogstatsd,
            info: receive::info_json(config),
            body_limit: MAX_BODY_BYTES.min(share),
            bodies: receive::BodyPool::default(),
            active: AtomicUsize::new(0),
            state: Mutex::new(State {
                processor: Processor::new(t),
                sampler: Sampler::new(t.max_tps, t.error_tps),
                stats: stats::Stats::new(),
                pending: Pending::default(),
                summary: config.console.then(console::Summary::default),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The relay's meter.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Decodes, processes, computes stats on and samples one traces body.
    /// Returns whether enough is pending for a payload to be sent now.
    pub fn ingest(&self, v05: bool, body: &[u8], tracer: &Tracer) -> Result<bool, Refused> {
        let allowance = self.meter.available();
        let decoded = if v05 {
            decode::v05(body, allowance)
        } else {
            decode::v04(body, allowance)
        };
        let decoded = match decoded {
            Ok(d) => d,
            Err(decode::DecodeError::OverBudget) => return Err(Refused::Memory),
            Err(e) => return Err(Refused::Malformed(e)),
        };
        if !self.meter.try_charge(decoded.cost) {
            return Err(Refused::Memory);
        }
        let cost = decoded.cost;
        let now = Instant::now();
        let s = &self.stats;
        let mut st = self.lock();
        let st = &mut *st;
        let mut kept = Vec::new();
        let (mut env, mut version) = (String::new(), String::new());
        for spans in decoded.traces {
            Stats::add(&s.traces_received, 1);
            Stats::add(&s.spans_received, spans.len() as u64);
            let mut chunk = match st.processor.chunk(spans, tracer) {
                Ok(c) => c,
                Err(_) => {
                    Stats::add(&s.traces_invalid, 1);
                    continue;
                }
            };
            if !tracer.computed_stats {
                st.stats.add(&chunk.spans, &chunk.env, &chunk.version);
            }
            if let Some(summary) = &mut st.summary {
                summary.add(&chunk.spans);
            }
            let decision = st.sampler.decide(&chunk, now);
            match decision {
                Decision::DropUserReject => Stats::add(&s.traces_user_reject, 1),
                Decision::DropAutoReject => Stats::add(&s.traces_auto_reject, 1),
                Decision::DropNoPriority => Stats::add(&s.traces_no_priority, 1),
                Decision::KeepPriority | Decision::KeepError | Decision::KeepNoPriority => {}
            }
            if !decision.kept() {
                continue;
            }
            if self.sink.is_none() {
                Stats::add(&s.traces_unforwarded, 1);
                continue;
            }
            let root = &mut chunk.spans[chunk.root];
            for (k, v) in &self.span_tags {
                if !root.meta.contains_key(k) {
                    root.meta.insert(k.clone(), v.clone());
                }
            }
            if env.is_empty() {
                env.clone_from(&chunk.env);
            }
            if version.is_empty() {
                version.clone_from(&chunk.version);
            }
            kept.push(pb::TraceChunk {
                priority: chunk.priority,
                origin: chunk.origin,
                spans: chunk.spans,
                tags: HashMap::new(),
                dropped_trace: false,
            });
        }
        let mut flush_now = false;
        if !kept.is_empty() {
            Stats::add(&s.traces_kept, kept.len() as u64);
            let tp = pb::TracerPayload {
                container_id: tracer.container_id.clone(),
                language_name: tracer.lang.clone(),
                language_version: tracer.lang_version.clone(),
                tracer_version: tracer.tracer_version.clone(),
                chunks: kept,
                env,
                hostname: self.hostname.clone(),
                app_version: version,
                ..Default::default()
            };
            self.push_kept(&mut st.pending, tp);
            flush_now = !st.pending.ready.is_empty();
        }
        self.meter.release(cost);
        Ok(flush_now)
    }

    /// The `AgentPayload` fields before the tracer payloads.
    fn header(&self) -> Vec<u8> {
        pb::AgentPayload {
            host_name: self.hostname.clone(),
            env: self.config.env.clone().unwrap_or_default(),
            agent_version: concat!("dynostat-", env!("CARGO_PKG_VERSION")).to_owned(),
            target_tps: self.config.max_tps,
            error_tps: self.config.error_tps,
            rare_sampler_enabled: false,
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// Appends one request's kept traces to the payload being built,
    /// starting a new one past [`MAX_PAYLOAD_BYTES`], and charges the
    /// compressed growth to the meter (it may pass the share by one
    /// payload's worth: what is kept is never dropped here).
    fn push_kept(&self, pending: &mut Pending, tp: pb::TracerPayload) {
        use std::io::Write as _;
        let mut scratch = std::mem::take(&mut pending.scratch);
        let entries = agent_payload_entries(tp, &mut scratch);
        for part in &entries.parts {
            let len = Entries::entry_len(part);
            if pending
                .building
                .as_ref()
                .is_some_and(|b| b.raw + len > MAX_PAYLOAD_BYTES)
            {
                if let Some(b) = pending.building.take() {
                    pending.ready.push(b.finish());
                }
            }
            let b = pending.building.get_or_insert_with(|| {
                let header = self.header();
                let mut gz = flate2::write::GzEncoder::new(
                    Vec::new(),
                    flate2::Compression::new(crate::forward::payload::LEVEL),
                );
                // Writing to a Vec cannot fail.
                let _ = gz.write_all(&header);
                Building {
                    gz,
                    raw: header.len(),
                    chunks: 0,
                }
            });
            let _ = entries.write(part, &mut b.gz);
            b.raw += len;
            b.chunks += part.chunks;
        }
        pending.scratch = scratch;
        let now: usize = pending.ready.iter().map(|p| p.body.len()).sum::<usize>()
            + pending
                .building
                .as_ref()
                .map_or(0, |b| b.gz.get_ref().len());
        if now > pending.charged {
            // Kept traces are already counted as kept: charge, never refuse.
            let extra = now - pending.charged;
            if !self.meter.try_charge(extra) {
                self.meter.force(extra);
            }
            pending.charged = now;
        }
    }

    /// Hands the kept traces, as `AgentPayload`s of at most
    /// [`MAX_PAYLOAD_BYTES`], to the sender.
    pub async fn flush_traces(&self) {
        let (payloads, charged) = {
            let mut st = self.lock();
            let p = &mut st.pending;
            if let Some(b) = p.building.take() {
                p.ready.push(b.finish());
            }
            p.scratch = Scratch::default();
            (std::mem::take(&mut p.ready), std::mem::take(&mut p.charged))
        };
        self.meter.release(charged);
        if payloads.is_empty() {
            return;
        }
        if let Some(sink) = &self.sink {
            sink.send(payloads).await;
        }
    }

    /// Closes the stats buckets that are due (all of them with `force`),
    /// sends them, and prints the console summary.
    pub async fn flush_stats(&self, force: bool) {
        let (buckets, summary) = {
            let mut st = self.lock();
            let buckets = st.stats.flush(force, &self.hostname);
            let summary = st.summary.as_mut().and_then(console::Summary::render);
            (buckets, summary)
        };
        self.stats
            .trace_memory_bytes
            .store(self.meter.used() as u64, Ordering::Relaxed);
        if let Some(text) = summary {
            crate::forward::console::print(&text);
        }
        if buckets.is_empty() {
            return;
        }
        self.send_stats(buckets, false).await;
    }

    /// Sends stats payloads (the relay's, or a tracer's own).
    pub async fn send_stats(&self, buckets: Vec<pb::ClientStatsPayload>, client_computed: bool) {
        let Some(sink) = &self.sink else { return };
        let groups = stats::groups(&buckets);
        let env = self.config.env.clone().unwrap_or_default();
        if let Some(raw) = stats::encode(buckets, &self.hostname, &env, client_computed) {
            sink.send(vec![gzip_payload(
                Endpoint::TraceStats,
                &raw,
                groups,
                groups,
            )])
            .await;
        }
    }
}

/// The running relay, as `serve` holds it.
#[derive(Debug)]
pub struct Relay {
    stop: watch::Sender<bool>,
    done: Option<oneshot::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where it listens, for the start-up line.
    pub bound: Vec<String>,
    /// The Unix socket's path, removed when the relay stops.
    socket: Option<std::path::PathBuf>,
}

impl Relay {
    /// Binds the receiver and starts the relay's thread. `Ok(None)` when
    /// `DD_APM_ENABLED=false`. A port that cannot be bound is an error for
    /// the caller to log: the metrics go on without traces.
    pub fn start(
        config: &Config,
        sink: Option<PayloadSink>,
        stats: Arc<Stats>,
        dogstatsd: DogstatsdHook,
        progress: Progress,
    ) -> anyhow::Result<Option<Self>> {
        let t = &config.trace;
        if !t.enabled {
            return Ok(None);
        }
        let mut bound = Vec::new();
        let tcp = if t.port == 0 {
            None
        } else {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], t.port));
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                anyhow::anyhow!(
                    "could not listen for traces on {addr}: {e}; another Datadog Agent or dynostat may be running \
                     (set DD_APM_RECEIVER_PORT to a free port, or DD_APM_ENABLED=false)"
                )
            })?;
            l.set_nonblocking(true)?;
            bound.push(format!("http://{addr}"));
            Some(l)
        };
        let unix = match &t.socket {
            Some(path) => {
                // A stale socket from an earlier run is replaced; a socket
                // someone still answers on is not.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    anyhow::bail!(
                        "DD_APM_RECEIVER_SOCKET={}: another process is listening on it; stop it or choose another path",
                        path.display()
                    );
                }
                match std::fs::symlink_metadata(path) {
                    Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                        let _ = std::fs::remove_file(path);
                    }
                    Ok(_) => anyhow::bail!(
                        "DD_APM_RECEIVER_SOCKET={}: a file that is not a socket is there; it is left alone (choose another path)",
                        path.display()
                    ),
                    Err(_) => {}
                }
                let l = std::os::unix::net::UnixListener::bind(path).with_context(|| {
                    format!("DD_APM_RECEIVER_SOCKET={}: could not bind", path.display())
                })?;
                l.set_nonblocking(true)?;
                bound.push(format!("unix://{}", path.display()));
                Some(l)
            }
            None => None,
        };
        if tcp.is_none() && unix.is_none() {
            return Ok(None);
        }
        let core = Arc::new(Core::new(config, sink, stats, dogstatsd)?);
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = oneshot::channel();
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread = std::thread::Builder::new()
            .name("traces".to_owned())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(run(core, tcp, unix, stop_rx, progress)),
                        Err(e) => {
                            tracing::error!(error = %e, "could not start the trace relay's runtime")
                        }
                    }
                    let _ = done_tx.send(());
                });
            })
            .context("could not start the trace relay's thread")?;
        Ok(Some(Self {
            stop,
            done: Some(done),
            thread: Some(thread),
            bound,
            socket: t.socket.clone(),
        }))
    }

    /// Stops receiving, hands the kept traces and every open stats bucket
    /// to the sender, and returns once they are handed over (or at
    /// `deadline`). Call before the forwarder's drain.
    pub async fn stop(mut self, deadline: std::time::Instant) {
        let _ = self.stop.send(true);
        if let Some(done) = self.done.take() {
            let until = tokio::time::Instant::from_std(deadline);
            if tokio::time::timeout_at(until, done).await.is_ok() {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            } else {
                tracing::error!("the trace relay did not finish its last flush by the deadline");
            }
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The relay's loop: accept connections, flush on the timers, and on stop
/// flush everything held.
async fn run(
    core: Arc<Core>,
    tcp: Option<std::net::TcpListener>,
    unix: Option<std::os::unix::net::UnixListener>,
    mut stop: watch::Receiver<bool>,
    progress: Progress,
) {
    let tcp = tcp.and_then(|l| tokio::net::TcpListener::from_std(l).ok());
    let unix = unix.and_then(|l| tokio::net::UnixListener::from_std(l).ok());
    let mut traces = tokio::time::interval(TRACE_FLUSH);
    traces.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buckets = tokio::time::interval(stats::BUCKET);
    buckets.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Each turn is progress; the trace timer wakes it every
        // TRACE_FLUSH even when no tracer sends (`crate::progress`).
        progress.beat();
        tokio::select! {
            conn = async { tcp.as_ref()?.accept().await.ok() }, if tcp.is_some() => {
                if let Some((stream, _)) = conn {
                    receive::serve_connection(Arc::clone(&core), stream);
                }
            }
            conn = async { unix.as_ref()?.accept().await.ok() }, if unix.is_some() => {
                if let Some((stream, _)) = conn {
                    receive::serve_connection(Arc::clone(&core), stream);
                }
            }
            _ = traces.tick() => {
                core.flush_traces().await;
                core.bodies.release_idle(&core.meter);
            }
            _ = buckets.tick() => core.flush_stats(false).await,
            _ = stop.changed() => break,
        }
    }
    drop(tcp);
    drop(unix);
    // Requests being processed finish first (they are tasks on this runtime).
    let until = Instant::now() + SHUTDOWN_REQUESTS;
    while core.active.load(Ordering::Acquire) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    core.flush_traces().await;
    core.flush_stats(true).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn core() -> Core {
        let env: BTreeMap<String, String> = BTreeMap::new();
        let config = Config::from_lookup(&env).expect("defaults");
        Core::new(
            &config,
            None,
            Arc::new(Stats::default()),
            Arc::new(|_: &[u8]| {}),
        )
        .expect("core")
    }

    fn chunk(id: u64, bytes: usize) -> pb::TraceChunk {
        let mut span = pb::Span {
            trace_id: id,
            span_id: id,
            ..Default::default()
        };
        span.meta.insert("blob".to_owned(), "x".repeat(bytes));
        pb::TraceChunk {
            priority: 1,
            spans: vec![span],
            ..Default::default()
        }
    }

    /// Profiling harness, not a check: ingests the bodies `traceload dump`
    /// wrote to `TRACE_PROF_DIR` (`TRACE_PROF_ROUNDS` times), flushing as
    /// the relay does, so `valgrind --tool=callgrind` or `perf record` see
    /// the relay's own work without the HTTP server around it.
    #[test]
    #[ignore = "profiling harness; needs TRACE_PROF_DIR"]
    fn profile_ingest() {
        let dir = std::env::var("TRACE_PROF_DIR").expect("TRACE_PROF_DIR");
        let rounds: usize = std::env::var("TRACE_PROF_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        let mut bodies: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| {
                let p = e.path();
                (p.display().to_string(), std::fs::read(&p).expect("body"))
            })
            .collect();
        bodies.sort();
        let env: BTreeMap<String, String> =
            BTreeMap::from([("DD_API_KEY".to_owned(), "0".repeat(32))]);
        let config = Config::from_lookup(&env).expect("defaults");
        let core = Core::new(
            &config,
            Some(PayloadSink::detached()),
            Arc::new(Stats::default()),
            Arc::new(|_: &[u8]| {}),
        )
        .expect("core");
        let tracer = Tracer {
            lang: "python".to_owned(),
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let t0 = std::time::Instant::now();
        let mut n = 0;
        for _ in 0..rounds {
            for (i, (_, b)) in bodies.iter().enumerate() {
                core.ingest(false, b, &tracer).expect("ingest");
                n += 1;
                if i % 20 == 19 {
                    rt.block_on(core.flush_traces());
                    rt.block_on(core.flush_stats(false));
                }
            }
        }
        rt.block_on(core.flush_traces());
        rt.block_on(core.flush_stats(true));
        eprintln!("{n} bodies in {:?}", t0.elapsed());
    }

    #[test]
    fn agent_payloads_stay_under_the_intakes_limit_and_keep_every_chunk() {
        let core = core();
        let mut pending = Pending::default();
        // Three requests of 2.4 MB, then one of 4.2 MB, cut by its chunks.
        let sizes = [4u64, 4, 4, 7];
        for (t, n) in (0u64..).zip(sizes) {
            let tp = pb::TracerPayload {
                env: "prod".to_owned(),
                chunks: (0..n).map(|c| chunk(t * 10 + c + 1, 600_000)).collect(),
                ..Default::default()
            };
            core.push_kept(&mut pending, tp);
        }
        assert!(pending.charged > 0 && core.meter.used() == pending.charged);
        let mut payloads = std::mem::take(&mut pending.ready);
        payloads.extend(pending.building.take().map(Building::finish));
        assert_eq!(payloads.len(), 5, "19 chunks of 600 kB in 3.2 MB payloads");
        let mut ids = Vec::new();
        for p in &payloads {
            assert!(p.raw_len <= MAX_PAYLOAD_BYTES, "{} raw bytes", p.raw_len);
            assert_eq!(p.endpoint, Endpoint::Traces);
            let mut raw = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(p.body.as_slice()),
                &mut raw,
            )
            .expect("gzip");
            assert_eq!(raw.len(), p.raw_len);
            let a = pb::AgentPayload::decode(raw.as_slice()).expect("an AgentPayload");
            assert_eq!(
                a.agent_version,
                concat!("dynostat-", env!("CARGO_PKG_VERSION"))
            );
            assert_eq!(a.chunks_len(), p.points);
            for tp in a.tracer_payloads {
                assert_eq!(tp.env, "prod");
                ids.extend(tp.chunks.iter().map(|c| c.spans[0].trace_id));
            }
        }
        ids.sort_unstable();
        let want: Vec<u64> = (0u64..)
            .zip(sizes)
            .flat_map(|(t, n)| (0..n).map(move |c| t * 10 + c + 1))
            .collect();
        assert_eq!(ids, want, "every chunk exactly once");
    }

    #[test]
    fn spans_encode_as_prost_encodes_them() {
        let mut s = pb::Span::default();
        let check = |s: &pb::Span| {
            let mut ours = Vec::new();
            encode_span(s, &mut ours);
            assert_eq!(ours, s.encode_to_vec(), "{s:?}");
        };
        check(&s);
        s.service = "web".to_owned();
        s.resource = "r".repeat(300);
        s.trace_id = u64::MAX;
        s.span_id = 1;
        s.start = -5;
        s.duration = i64::MIN;
        s.error = -1;
        check(&s);
        s.error = 1;
        s.r#type = "sql".to_owned();
        s.meta.insert(String::new(), "no key".to_owned());
        s.meta.insert("no value".to_owned(), String::new());
        s.meta.insert("k".to_owned(), "v".repeat(200));
        s.meta.insert(String::new(), String::new());
        for (i, v) in [0.0, -0.0, 1.5, f64::NAN, f64::INFINITY, -3.0]
            .into_iter()
            .enumerate()
        {
            s.metrics.insert(format!("m{i}"), v);
        }
        s.metrics.insert(String::new(), 0.0);
        check(&s);
        s.meta_struct.insert("appsec".to_owned(), vec![1, 2, 3]);
        s.meta_struct.insert("empty".to_owned(), Vec::new());
        s.span_links.push(pb::SpanLink {
            trace_id: 7,
            span_id: 8,
            ..Default::default()
        });
        s.span_events.push(pb::SpanEvent {
            name: "e".to_owned(),
            ..Default::default()
        });
        check(&s);
    }

    #[test]
    fn tracer_payloads_encode_as_prost_encodes_them() {
        let span = |id: u64| {
            let mut s = pb::Span {
                service: "web".to_owned(),
                name: "flask.request".to_owned(),
                resource: "GET /".to_owned(),
                trace_id: id,
                span_id: id,
                start: 1_700_000_000_000_000_000,
                duration: 1_000,
                ..Default::default()
            };
            for k in 0..6 {
                s.meta.insert(format!("k{k}"), format!("v{id}"));
                s.metrics.insert(format!("m{k}"), id as f64);
            }
            s
        };
        let tp = |n: u64, bytes: usize| pb::TracerPayload {
            container_id: "c".to_owned(),
            language_name: "python".to_owned(),
            tracer_version: "2.0".to_owned(),
            env: "prod".to_owned(),
            hostname: "h".to_owned(),
            app_version: "1".to_owned(),
            tags: HashMap::from([("a".to_owned(), "b".to_owned())]),
            chunks: (1..=n)
                .map(|i| {
                    let mut c = chunk(i * 100, bytes);
                    c.spans.extend((1..4).map(|j| span(i * 100 + j)));
                    c.origin = "lambda".to_owned();
                    c.dropped_trace = i % 2 == 0;
                    c.tags.insert("t".to_owned(), "u".to_owned());
                    c
                })
                .collect(),
            ..Default::default()
        };
        // One part; then cut in several (7 chunks of 600 kB).
        for (n, bytes) in [(0, 0), (1, 10), (5, 100), (7, 600_000)] {
            let tp = tp(n, bytes);
            let want: Vec<(Vec<u8>, usize)> = split_tracer_payload(tp.clone())
                .into_iter()
                .map(|part| {
                    let chunks = part.chunks.len();
                    let bytes = pb::AgentPayload {
                        tracer_payloads: vec![part],
                        ..Default::default()
                    }
                    .encode_to_vec();
                    (bytes, chunks)
                })
                .collect();
            let mut scratch = Scratch::default();
            let entries = agent_payload_entries(tp, &mut scratch);
            let got: Vec<(Vec<u8>, usize)> = entries
                .parts
                .iter()
                .map(|p| {
                    let mut bytes = Vec::new();
                    entries.write(p, &mut bytes).expect("to a Vec");
                    assert_eq!(bytes.len(), Entries::entry_len(p));
                    (bytes, p.chunks)
                })
                .collect();
            assert_eq!(got, want, "{n} chunks");
        }
    }

    trait Chunks {
        fn chunks_len(&self) -> usize;
    }

    impl Chunks for pb::AgentPayload {
        fn chunks_len(&self) -> usize {
            self.tracer_payloads.iter().map(|t| t.chunks.len()).sum()
        }
    }

    #[test]
    fn the_meter_refuses_past_its_limit_and_gives_back() {
        let m = Meter::new(100);
        assert!(m.try_charge(60));
        assert!(!m.try_charge(41));
        assert_eq!(m.available(), 40);
        m.release(60);
        assert!(m.try_charge(100));
        m.release(1_000);
        assert_eq!(m.used(), 0);
    }
}
