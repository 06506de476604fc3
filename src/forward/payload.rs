//! Payload encoding: Datadog JSON (gzip) and sketch protobuf (zlib), split
//! below the intake's limits.
//!
//! In: a [`Flush`] plus the global tags and default host. Out: [`Payload`]s,
//! each one complete, compressed request body for one endpoint, every one
//! under [`Limits`].
//!
//! Must never: drop an item for its size (an item that does not fit closes
//! the payload and starts the next one; a series too large for any payload
//! is split by points (a sketch is bounded by its bins); an event or service
//! check too large
//! has its text cut to fit, counted), drop anything silently, compare raw
//! JSON against the compressed limit (a large item is compressed to see
//! whether it fits), or emit JSON that the public API schema rejects
//! (non-finite values are left out). Every payload knows how many points it
//! carries, so the forwarder can count what it delivers and what it drops.
//!
//! Shapes, from Datadog's public OpenAPI spec (the source of the official
//! `datadog-api-client-*` libraries):
//! - `POST /api/v2/series`: `MetricPayload {series: [MetricSeries]}`, where a
//!   `MetricSeries` is `{metric, type (0-3), points: [{timestamp, value}],
//!   tags, resources: [{name, type}], interval, unit}`.
//! - `POST /api/beta/sketches`: the Agent's protobuf `SketchPayload`
//!   ([`super::sketch`]), `Content-Type: application/x-protobuf`, compressed
//!   with zlib and sent as `Content-Encoding: deflate`, as the Agent's
//!   serializer does with its zlib compressor (newer Agents default to zstd;
//!   the intake takes both).
//! - `POST /intake/`: events, batched per flush as the Agent sends them
//!   (pkg/serializer `SendEvents` → `SubmitV1Intake`; the JSON of
//!   pkg/serializer/internal/metrics events.go): `{"apiKey":"","events":
//!   {"<source type, or api>":[{msg_title, msg_text, timestamp, priority,
//!   host, tags, alert_type, aggregation_key, source_type_name}]},
//!   "internalHostname":"<host>"}`, compressed like the other JSON. One
//!   payload holds one source type.
//! - `POST /api/v1/check_run`: a JSON array of `{check, host_name, status,
//!   timestamp, message, tags}` (`check`, `host_name`, `status`, `tags` required).

use std::io::{Read, Write};

use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use crate::dogstatsd::aggregate::{Series, SeriesKind};
use crate::dogstatsd::protocol::{AlertType, CheckStatus, Event, Priority, ServiceCheck};

/// The `/api/v2/series` limits: 512,000 bytes compressed, 5,242,880 decompressed.
pub const MAX_COMPRESSED: usize = 512_000;
/// See [`MAX_COMPRESSED`].
pub const MAX_UNCOMPRESSED: usize = 5_242_880;
/// Items per payload: small enough that a 413 or a retry costs little, as the
/// Agent caps points per payload.
pub const MAX_ITEMS: usize = 10_000;

/// The uncompressed bytes between two sync flushes of the compressor. A sync
/// flush makes everything written so far show up in the output, which bounds
/// how far the compressed-size estimate can be off.
const SYNC_EVERY: usize = 64 * 1024;

/// Bytes kept free when a large item's compressed size was measured alone:
/// the sync-flush markers the builder adds cost a few bytes each.
const SYNC_MARGIN: usize = 64;

/// Size limits for one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Compressed body bytes, at most.
    pub max_compressed: usize,
    /// Uncompressed JSON bytes, at most.
    pub max_uncompressed: usize,
    /// Items (series, checks…) per payload, at most.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_compressed: MAX_COMPRESSED,
            max_uncompressed: MAX_UNCOMPRESSED,
            max_items: MAX_ITEMS,
        }
    }
}

/// The intake endpoint a payload goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/v2/series`
    Series,
    /// `/api/beta/sketches` (protobuf)
    Sketches,
    /// `/intake/` (events, batched per source type)
    Events,
    /// `/api/v1/check_run`
    Checks,
    /// `/api/v0.2/traces` on the trace intake (`AgentPayload` protobuf,
    /// from [`crate::trace`]).
    Traces,
    /// `/api/v0.2/stats` on the trace intake (`StatsPayload` msgpack).
    TraceStats,
}

impl Endpoint {
    /// The URL path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Series => "/api/v2/series",
            Self::Sketches => "/api/beta/sketches",
            Self::Events => "/intake/",
            Self::Checks => "/api/v1/check_run",
            Self::Traces => "/api/v0.2/traces",
            Self::TraceStats => "/api/v0.2/stats",
        }
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Series => "series",
            Self::Sketches => "sketches",
            Self::Events => "events",
            Self::Checks => "service checks",
            Self::Traces => "traces",
            Self::TraceStats => "APM stats",
        }
    }

    /// The `Content-Type` header.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Sketches | Self::Traces => "application/x-protobuf",
            Self::TraceStats => "application/msgpack",
            _ => "application/json",
        }
    }

    /// Whether it goes to the trace intake (`DD_APM_DD_URL`) rather than
    /// the metrics intake.
    pub fn is_trace(self) -> bool {
        matches!(self, Self::Traces | Self::TraceStats)
    }

    /// The `Content-Encoding` header: how [`Payload::body`] is compressed.
    pub fn content_encoding(self) -> &'static str {
        match self {
            Self::Sketches => "deflate",
            _ => "gzip",
        }
    }

    fn prefix(self) -> &'static [u8] {
        match self {
            Self::Series => b"{\"series\":[",
            Self::Events | Self::Sketches | Self::Traces | Self::TraceStats => b"",
            Self::Checks => b"[",
        }
    }

    fn suffix(self) -> &'static [u8] {
        match self {
            Self::Series => b"]}",
            Self::Events | Self::Sketches | Self::Traces | Self::TraceStats => b"",
            Self::Checks => b"]",
        }
    }

    /// Between two items: protobuf entries simply follow each other.
    fn separator(self) -> &'static [u8] {
        match self {
            Self::Sketches => b"",
            _ => b",",
        }
    }

    fn max_items(self, limits: &Limits) -> usize {
        limits.max_items.max(1)
    }
}

/// A payload whose body is `raw`, gzipped at the level every payload uses
/// (the trace relay builds its bodies whole, below the intake's limits).
pub fn gzip_payload(endpoint: Endpoint, raw: &[u8], items: usize, points: usize) -> Payload {
    let mut enc = GzEncoder::new(Vec::with_capacity(raw.len() / 4), Compression::new(LEVEL));
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(raw);
    Payload {
        endpoint,
        body: enc.finish().unwrap_or_default(),
        raw_len: raw.len(),
        items,
        points,
        carry: Carry::default(),
    }
}

/// One compressed request body, ready to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    /// Where it goes.
    pub endpoint: Endpoint,
    /// The compressed body ([`Endpoint::content_encoding`]).
    pub body: Vec<u8>,
    /// The body's length before compression.
    pub raw_len: usize,
    /// How many items (series, events, checks) it holds.
    pub items: usize,
    /// How many points it carries: series points, distribution values, one
    /// per event or service check. What the forwarder counts as delivered or
    /// dropped.
    pub points: usize,
    /// The drop counts this payload reports (set on the self-telemetry
    /// payload only). Dropping it gives them back to the counters, so a
    /// later payload reports them: the counts of what was lost cannot be
    /// lost with it.
    pub carry: Carry,
}

/// Drop counts carried by a self-telemetry payload (see [`Payload::carry`]).
pub use crate::dogstatsd::stats::Carry;

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("endpoint", &self.endpoint)
            .field("bytes", &self.body.len())
            .field("raw_len", &self.raw_len)
            .field("items", &self.items)
            .field("points", &self.points)
            .finish()
    }
}

impl Payload {
    /// Splits the payload in two halves of its items, for a 413. `None` when
    /// it holds a single item (or cannot be decoded, which would be our bug).
    pub fn split(&self, limits: &Limits) -> Option<(Vec<Payload>, Vec<Payload>)> {
        if self.items < 2 {
            return None;
        }
        let mut json = Vec::with_capacity(self.raw_len);
        if self.endpoint == Endpoint::Sketches {
            ZlibDecoder::new(self.body.as_slice())
                .read_to_end(&mut json)
                .ok()?;
            return split_sketches(&json, limits);
        }
        GzDecoder::new(self.body.as_slice())
            .read_to_end(&mut json)
            .ok()?;
        // The items are re-sent as the bytes they were encoded as (raw JSON
        // values), so no number is parsed and printed again on the way.
        let items: Vec<&serde_json::value::RawValue> = match self.endpoint {
            Endpoint::Series => {
                let mut body: std::collections::HashMap<String, &serde_json::value::RawValue> =
                    serde_json::from_slice(&json).ok()?;
                serde_json::from_str(body.remove("series")?.get()).ok()?
            }
            Endpoint::Checks => serde_json::from_slice(&json).ok()?,
            Endpoint::Events => return split_events(&json, limits, self.carry),
            // A trace or stats payload is one request's worth, built below
            // the intake's limit; the Agent drops a 413 too.
            Endpoint::Sketches | Endpoint::Traces | Endpoint::TraceStats => return None,
        };
        if items.len() < 2 {
            return None;
        }
        let half = items.len() / 2;
        let encode_half = |part: &[&serde_json::value::RawValue]| -> Option<Vec<Payload>> {
            let mut enc = Encoder::new(self.endpoint, *limits);
            for item in part {
                let bytes = item.get().as_bytes();
                let points = json_points(self.endpoint, item);
                // Each half is smaller than the whole, so nothing is handed back
                // unless the limits shrank; then the item stays in the result.
                if let Err(Oversize) = enc.push(bytes, points) {
                    enc.force(bytes, points);
                }
            }
            Some(enc.finish())
        };
        let mut first = encode_half(&items[..half])?;
        if let Some(p) = first.first_mut() {
            p.carry = self.carry;
        }
        Some((first, encode_half(&items[half..])?))
    }
}

/// An events payload (one source type) split in two halves of its events,
/// each framed as the whole was.
fn split_events(
    json: &[u8],
    limits: &Limits,
    carry: Carry,
) -> Option<(Vec<Payload>, Vec<Payload>)> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        events: std::collections::BTreeMap<String, Vec<&'a serde_json::value::RawValue>>,
        #[serde(rename = "internalHostname", default)]
        host: String,
    }
    let body: Body<'_> = serde_json::from_slice(json).ok()?;
    let (source, items) = body.events.into_iter().next()?;
    if items.len() < 2 {
        return None;
    }
    let half = items.len() / 2;
    let encode_half = |part: &[&serde_json::value::RawValue]| -> Vec<Payload> {
        let mut enc = Encoder::events(&source, &body.host, *limits);
        for item in part {
            let bytes = item.get().as_bytes();
            if let Err(Oversize) = enc.push(bytes, 1) {
                enc.force(bytes, 1);
            }
        }
        enc.finish()
    };
    let mut first = encode_half(&items[..half]);
    if let Some(p) = first.first_mut() {
        p.carry = carry;
    }
    Some((first, encode_half(&items[half..])))
}

/// The points one encoded item carries (see [`Payload::points`]).
fn json_points(endpoint: Endpoint, item: &serde_json::value::RawValue) -> usize {
    if endpoint != Endpoint::Series {
        return 1;
    }
    // Only the number of points is read: the values are skipped.
    let fields: Result<std::collections::HashMap<String, &serde_json::value::RawValue>, _> =
        serde_json::from_str(item.get());
    fields
        .ok()
        .and_then(|mut f| f.remove("points"))
        .and_then(|p| serde_json::from_str::<Vec<serde::de::IgnoredAny>>(p.get()).ok())
        .map_or(1, |p| p.len())
}

/// [`Payload::split`] for a decompressed `SketchPayload`.
fn split_sketches(raw: &[u8], limits: &Limits) -> Option<(Vec<Payload>, Vec<Payload>)> {
    use prost::Message as _;
    let decoded = super::sketch::SketchPayload::decode(raw).ok()?;
    if decoded.sketches.len() < 2 {
        return None;
    }
    let half = decoded.sketches.len() / 2;
    let encode_half = |part: &[super::sketch::Sketch]| -> Vec<Payload> {
        let mut enc = Encoder::new(Endpoint::Sketches, *limits);
        let mut buf = Vec::new();
        for s in part {
            buf.clear();
            super::sketch::encode_entry(s, &mut buf);
            if let Err(Oversize) = enc.push(&buf, 1) {
                enc.force(&buf, 1);
            }
        }
        enc.finish()
    };
    Some((
        encode_half(&decoded.sketches[..half]),
        encode_half(&decoded.sketches[half..]),
    ))
}

/// Deflate level of every payload: 1, the fastest. Series of many contexts
/// with long tags made the flush's deflate most of the process's CPU (perf:
/// 18 % of all samples, counters at 1 M lines/s with 1,750 counters of the
/// long-line load still zero-filled); level 1 spends several times less on
/// the same bytes, and its payloads stay far under the intake's limits,
/// which the payload splitter enforces on the compressed size anyway.
pub const LEVEL: u32 = 1;

/// The compressor of one payload: gzip for JSON, zlib for sketches.
enum Compressor {
    Gzip(GzEncoder<Vec<u8>>),
    Zlib(ZlibEncoder<Vec<u8>>),
}

impl Compressor {
    fn new(endpoint: Endpoint) -> Self {
        let out = Vec::with_capacity(16 * 1024);
        match endpoint {
            Endpoint::Sketches => Self::Zlib(ZlibEncoder::new(out, Compression::new(LEVEL))),
            _ => Self::Gzip(GzEncoder::new(out, Compression::new(LEVEL))),
        }
    }

    /// Compressed bytes written so far.
    fn len(&self) -> usize {
        match self {
            Self::Gzip(e) => e.get_ref().len(),
            Self::Zlib(e) => e.get_ref().len(),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Self::Gzip(e) => e.finish(),
            Self::Zlib(e) => e.finish(),
        }
    }
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Gzip(e) => e.write(buf),
            Self::Zlib(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Gzip(e) => e.flush(),
            Self::Zlib(e) => e.flush(),
        }
    }
}

/// An item larger than a whole payload may be: the caller logs and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize;

/// Builds one payload at a time; hands back items that do not fit.
struct Builder {
    endpoint: Endpoint,
    limits: Limits,
    /// Closes the payload (the endpoint's, or an events payload's).
    suffix: Vec<u8>,
    gz: Compressor,
    raw_len: usize,
    items: usize,
    points: usize,
    since_sync: usize,
}

impl Builder {
    fn new(endpoint: Endpoint, limits: Limits, prefix: &[u8], suffix: &[u8]) -> Self {
        let mut gz = Compressor::new(endpoint);
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(prefix);
        Self {
            endpoint,
            limits,
            suffix: suffix.to_vec(),
            gz,
            raw_len: prefix.len(),
            items: 0,
            points: 0,
            since_sync: prefix.len(),
        }
    }

    /// Whether `item` fits, with its separator and the closing suffix.
    fn fits(&self, item: &[u8]) -> bool {
        let sep = if self.items > 0 {
            self.endpoint.separator().len()
        } else {
            0
        };
        let add = item.len() + sep;
        let suffix = self.suffix.len();
        let raw_ok = self.raw_len + add + suffix <= self.limits.max_uncompressed;
        let compressed_ok = self.gz.len() + deflate_bound(self.since_sync + add + suffix)
            <= self.limits.max_compressed;
        let count_ok = self.items < self.endpoint.max_items(&self.limits);
        raw_ok && compressed_ok && count_ok
    }

    /// Adds `item`, which carries `points` points, unconditionally.
    fn write(&mut self, item: &[u8], points: usize) {
        self.points += points;
        if self.items > 0 {
            let sep = self.endpoint.separator();
            let _ = self.gz.write_all(sep);
            self.raw_len += sep.len();
            self.since_sync += sep.len();
        }
        let _ = self.gz.write_all(item);
        self.raw_len += item.len();
        self.since_sync += item.len();
        self.items += 1;
        if self.since_sync >= SYNC_EVERY {
            // A sync flush on a Vec writer cannot fail.
            let _ = self.gz.flush();
            self.since_sync = 0;
        }
    }

    fn finish(mut self) -> Option<Payload> {
        if self.items == 0 {
            return None;
        }
        let suffix = std::mem::take(&mut self.suffix);
        let _ = self.gz.write_all(&suffix);
        self.raw_len += suffix.len();
        let mut body = self.gz.finish().ok()?;
        // Payloads wait for each other and in the retry queue: keep only their bytes.
        body.shrink_to_fit();
        Some(Payload {
            endpoint: self.endpoint,
            body,
            raw_len: self.raw_len,
            items: self.items,
            points: self.points,
            carry: Carry::default(),
        })
    }
}

/// A worst-case compressed size for `n` fresh bytes, plus the gzip header,
/// trailer and sync-flush markers. Deflate falls back to stored blocks, which
/// cost 5 bytes per 64 KiB; this is generous on purpose.
fn deflate_bound(n: usize) -> usize {
    n + (n >> 10) + 64
}

/// Turns a stream of serialized items into payloads under the limits.
pub struct Encoder {
    endpoint: Endpoint,
    limits: Limits,
    /// What opens and closes each payload: the endpoint's, or an events
    /// payload's envelope ([`Encoder::events`]).
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    /// The open payload; made at the first item, so an endpoint with nothing
    /// to send costs no compressor (its tables and window are a few hundred
    /// KiB, and a flush has one encoder per endpoint).
    current: Option<Builder>,
    done: Vec<Payload>,
}

impl Encoder {
    /// A new encoder for `endpoint`.
    pub fn new(endpoint: Endpoint, limits: Limits) -> Self {
        Self {
            endpoint,
            limits,
            prefix: endpoint.prefix().to_vec(),
            suffix: endpoint.suffix().to_vec(),
            current: None,
            done: Vec::new(),
        }
    }

    /// A new encoder for the events of one source type (`api` for none, as
    /// the Agent groups them), in the Agent's `/intake/` envelope with
    /// `internalHostname` set to `host`.
    pub fn events(source: &str, host: &str, limits: Limits) -> Self {
        let json = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        let mut enc = Self::new(Endpoint::Events, limits);
        enc.prefix = format!("{{\"apiKey\":\"\",\"events\":{{{}:[", json(source)).into_bytes();
        enc.suffix = format!("]}},\"internalHostname\":{}}}", json(host)).into_bytes();
        enc
    }

    /// The bytes every payload adds around its items.
    fn frame_len(&self) -> usize {
        self.prefix.len() + self.suffix.len()
    }

    /// Adds one serialized item carrying `points` points. When it would push
    /// the open payload past a limit, that payload is closed and the item
    /// starts a fresh one; an item that does not fit even an empty payload is
    /// refused with [`Oversize`]. Whether a large item fits alone is decided
    /// on its compressed size, not on the raw size's worst case.
    pub fn push(&mut self, item: &[u8], points: usize) -> Result<(), Oversize> {
        let current = self.open();
        if current.fits(item) {
            current.write(item, points);
            return Ok(());
        }
        if !self.fits_alone(item) {
            // Closing the open payload would not help: keep it open for the next item.
            return Err(Oversize);
        }
        self.close_if_used();
        // Alone in an empty payload, it fits: the estimate may say otherwise
        // for a large, compressible item, but `fits_alone` compressed it.
        self.open().write(item, points);
        Ok(())
    }

    /// The open payload, made if there is none.
    fn open(&mut self) -> &mut Builder {
        let (endpoint, limits) = (self.endpoint, self.limits);
        let (prefix, suffix) = (&self.prefix, &self.suffix);
        self.current
            .get_or_insert_with(|| Builder::new(endpoint, limits, prefix, suffix))
    }

    /// Closes the open payload if it holds an item; an empty one stays open.
    fn close_if_used(&mut self) {
        if self.current.as_ref().is_some_and(|b| b.items > 0) {
            self.done
                .extend(self.current.take().and_then(Builder::finish));
        }
    }

    /// Whether `item` fits an empty payload: within the raw limit, and
    /// within the compressed limit once compressed (tried only when the
    /// worst-case bound says no).
    fn fits_alone(&self, item: &[u8]) -> bool {
        let (prefix, suffix) = (&self.prefix, &self.suffix);
        let n = prefix.len() + item.len() + suffix.len();
        if n > self.limits.max_uncompressed {
            return false;
        }
        if deflate_bound(n) <= self.limits.max_compressed {
            return true;
        }
        let mut gz = Compressor::new(self.endpoint);
        let _ = gz.write_all(prefix);
        let _ = gz.write_all(item);
        let _ = gz.write_all(suffix);
        // Room for the sync-flush markers the builder may add.
        gz.finish()
            .is_ok_and(|out| out.len() + SYNC_MARGIN <= self.limits.max_compressed)
    }

    /// Adds an item past the limits, alone in its own payload (413 splitting only).
    fn force(&mut self, item: &[u8], points: usize) {
        self.close_if_used();
        self.open().write(item, points);
    }

    /// Closes the open payload and returns them all.
    pub fn finish(mut self) -> Vec<Payload> {
        self.done
            .extend(self.current.take().and_then(Builder::finish));
        self.done
    }
}

/// What is added to every item: global tags and the default host.
#[derive(Debug, Clone, Default)]
pub struct Decoration {
    /// Tags added to everything, deduplicated against the item's own.
    pub global_tags: Vec<String>,
    /// Host for items that carry none.
    pub hostname: Option<String>,
    /// The flush interval, for series that carry none: the Agent sets
    /// `interval` on every DogStatsD series, gauges included.
    pub interval: Option<u64>,
}

/// Item tags followed by the global tags the item does not already have.
pub struct TagList<'a> {
    own: &'a [String],
    global: &'a [String],
}

impl<'a> TagList<'a> {
    /// Combines an item's tags with the global ones.
    pub fn new(own: &'a [String], global: &'a [String]) -> Self {
        Self { own, global }
    }

    /// The merged tags, in order: the item's own, then new global ones.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        let own = self.own;
        let global = self.global;
        own.iter().map(String::as_str).chain(
            global
                .iter()
                .enumerate()
                .filter(move |(i, g)| !own.contains(g) && !global[..*i].contains(g))
                .map(|(_, g)| g.as_str()),
        )
    }
}

impl Serialize for TagList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for t in self.iter() {
            seq.serialize_element(t)?;
        }
        seq.end()
    }
}

/// The v2 intake type number: 1 COUNT, 2 RATE, 3 GAUGE.
pub fn intake_type(kind: SeriesKind) -> u8 {
    match kind {
        SeriesKind::Count => 1,
        SeriesKind::Rate => 2,
        SeriesKind::Gauge => 3,
    }
}

#[derive(Serialize)]
struct MetricPoint {
    timestamp: i64,
    value: f64,
}

struct Points<'a>(&'a [(i64, f64)]);

impl Serialize for Points<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for &(timestamp, value) in self.0.iter().filter(|(_, v)| v.is_finite()) {
            seq.serialize_element(&MetricPoint { timestamp, value })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct MetricResource<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct MetricSeries<'a> {
    metric: &'a str,
    #[serde(rename = "type")]
    kind: u8,
    points: Points<'a>,
    tags: TagList<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<[MetricResource<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<u64>,
    metadata: SeriesMetadata,
}

/// `metadata.origin` of a series, as the Agent sets it on every DogStatsD
/// series (pkg/serializer/internal/metrics: `metricSourceToOriginProduct`
/// and `metricSourceToOriginCategory` give 10, the Agent, and 10,
/// DogStatsD; the service is 0). Metrics Summary and usage attribution read
/// it. The JSON names are those of the intake's v2 JSON (the Agent's own
/// `Origin` JSON tags, and what Datadog's tools post to `/api/v2/series`);
/// a zero is left out, as the Agent's `omitempty` and protobuf do.
#[derive(Serialize, Clone, Copy)]
struct SeriesMetadata {
    origin: Origin,
}

#[derive(Serialize, Clone, Copy)]
struct Origin {
    origin_product: u32,
    origin_sub_product: u32,
}

/// Product 10: the Agent.
pub const ORIGIN_PRODUCT_AGENT: u32 = 10;
/// Sub-product (category) 10: DogStatsD.
pub const ORIGIN_SUB_PRODUCT_DOGSTATSD: u32 = 10;

const DOGSTATSD_ORIGIN: SeriesMetadata = SeriesMetadata {
    origin: Origin {
        origin_product: ORIGIN_PRODUCT_AGENT,
        origin_sub_product: ORIGIN_SUB_PRODUCT_DOGSTATSD,
    },
};

/// One event as the Agent's events marshaler writes it (pkg/serializer
/// internal/metrics events.go `writeEvent`), in its field order.
#[derive(Serialize)]
struct IntakeEvent<'a> {
    msg_title: &'a str,
    msg_text: &'a str,
    timestamp: i64,
    priority: &'static str,
    host: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<&'a str>,
    alert_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregation_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_type_name: Option<&'a str>,
}

#[derive(Serialize)]
struct ServiceCheckJson<'a> {
    check: &'a str,
    host_name: &'a str,
    status: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    tags: TagList<'a>,
}

/// `normal` or `low`.
pub fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// `info`, `warning`, `error` or `success`.
pub fn alert_type_name(a: AlertType) -> &'static str {
    match a {
        AlertType::Info => "info",
        AlertType::Warning => "warning",
        AlertType::Error => "error",
        AlertType::Success => "success",
    }
}

/// The status number 0-3.
pub fn status_code(s: CheckStatus) -> u8 {
    s as u8
}

impl Decoration {
    pub(crate) fn host<'a>(&'a self, own: Option<&'a String>) -> Option<&'a str> {
        own.or(self.hostname.as_ref())
            .map(String::as_str)
            .filter(|h| !h.is_empty())
    }

    /// One `MetricSeries` as JSON, or `None` when no point is finite.
    pub fn series_json(&self, s: &Series, buf: &mut Vec<u8>) -> Option<()> {
        if !s.points.iter().any(|(_, v)| v.is_finite()) {
            return None;
        }
        let host = self.host(s.host.as_ref());
        let item = MetricSeries {
            metric: &s.metric,
            kind: intake_type(s.kind),
            points: Points(&s.points),
            tags: TagList::new(&s.tags, &self.global_tags),
            resources: host.map(|name| [MetricResource { name, kind: "host" }]),
            interval: s.interval.or(self.interval),
            // The Agent's series writer sends no unit; a timer's unit stays on
            // the series for the console only.
            metadata: DOGSTATSD_ORIGIN,
        };
        buf.clear();
        serde_json::to_writer(&mut *buf, &item).ok()
    }

    /// One event as the Agent's `/intake/` JSON. Without a `d:` field its
    /// timestamp is now, as the Agent stamps an event when it parses it (a
    /// flush interval later here, at most). The host is always written,
    /// empty when unknown, as the Agent writes it.
    pub fn event_json(&self, e: &Event, buf: &mut Vec<u8>) -> Option<()> {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        };
        let item = IntakeEvent {
            msg_title: &e.title,
            msg_text: &e.text,
            timestamp: e.timestamp.unwrap_or_else(now),
            priority: priority_name(e.priority),
            host: self.host(e.host.as_ref()).unwrap_or(""),
            tags: TagList::new(&e.tags, &self.global_tags).iter().collect(),
            alert_type: alert_type_name(e.alert_type),
            aggregation_key: e.aggregation_key.as_deref().filter(|k| !k.is_empty()),
            source_type_name: e.source_type.as_deref().filter(|s| !s.is_empty()),
        };
        buf.clear();
        serde_json::to_writer(&mut *buf, &item).ok()
    }

    /// One `ServiceCheck` as JSON (`host_name` is required: empty when unknown,
    /// as the Agent sends it).
    pub fn check_json(&self, c: &ServiceCheck, buf: &mut Vec<u8>) -> Option<()> {
        let item = ServiceCheckJson {
            check: &c.name,
            host_name: self.host(c.host.as_ref()).unwrap_or(""),
            status: status_code(c.status),
            timestamp: c.timestamp,
            message: c.message.as_deref(),
            tags: TagList::new(&c.tags, &self.global_tags),
        };
        buf.clear();
        serde_json::to_writer(&mut *buf, &item).ok()
    }
}

/// Payloads for one flush, and what could not be sent at all.
#[derive(Debug, Default)]
pub struct Encoded {
    /// Ready to send, in endpoint order.
    pub payloads: Vec<Payload>,
    /// Items that could not be sent at any size: `(endpoint, name)` for the
    /// log. Only a single point whose name and tags alone exceed a payload
    /// can end here; series are split by points, events
    /// and checks are cut.
    pub oversize: Vec<(Endpoint, String)>,
    /// The points those items carried.
    pub oversize_points: usize,
    /// Events and service checks whose text was cut to fit one payload:
    /// `(endpoint, name)` for the log.
    pub truncated: Vec<(Endpoint, String)>,
    /// Series or distributions with no finite value, left out.
    pub empty: usize,
}

/// Encodes a whole flush.
pub fn encode_flush(
    flush: &crate::dogstatsd::aggregate::Flush,
    deco: &Decoration,
    limits: Limits,
) -> Encoded {
    let mut enc = FlushEncoder::new(deco, limits);
    enc.push(flush);
    enc.finish()
}

/// The raw JSON bytes of one item that surely fit an empty payload under
/// `limits` (the worst-case compressed bound holds for them), when each
/// payload adds `frame` bytes around its items.
fn item_budget(frame: usize, limits: &Limits) -> usize {
    // The largest n with deflate_bound(n) <= max_compressed.
    let compressed = limits.max_compressed.saturating_sub(64) * 1024 / 1025;
    limits
        .max_uncompressed
        .min(compressed)
        .saturating_sub(frame)
}

/// `text` cut by at least `excess` bytes, at a char boundary.
fn cut(text: &str, excess: usize) -> String {
    let mut keep = text.len().saturating_sub(excess);
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    text[..keep].to_owned()
}

/// Encodes a flush that arrives in chunks: each chunk's items are serialized
/// and compressed as it is pushed, so the caller can drop the chunk before
/// building the next. Pushing chunks one by one gives the same payloads as
/// [`encode_flush`] on their concatenation.
pub struct FlushEncoder<'a> {
    deco: &'a Decoration,
    limits: Limits,
    series: Encoder,
    sketches: Encoder,
    /// One encoder per source type: the Agent's envelope groups events by it.
    events: std::collections::BTreeMap<String, Encoder>,
    checks: Encoder,
    buf: Vec<u8>,
    out: Encoded,
}

impl<'a> FlushEncoder<'a> {
    /// An encoder with nothing pushed yet.
    pub fn new(deco: &'a Decoration, limits: Limits) -> Self {
        Self {
            deco,
            limits,
            series: Encoder::new(Endpoint::Series, limits),
            sketches: Encoder::new(Endpoint::Sketches, limits),
            events: std::collections::BTreeMap::new(),
            checks: Encoder::new(Endpoint::Checks, limits),
            buf: Vec::with_capacity(512),
            out: Encoded::default(),
        }
    }

    /// Serializes and compresses every item of `flush`.
    pub fn push(&mut self, flush: &crate::dogstatsd::aggregate::Flush) {
        for s in &flush.series {
            self.push_series(s);
        }
        for d in &flush.distributions {
            if self.deco.sketch_entry(d, &mut self.buf).is_none() {
                self.out.empty += 1;
            } else if self.sketches.push(&self.buf, 1).is_err() {
                // A sketch is bounded by its bins: only absurd names or
                // tags can get here.
                self.out
                    .oversize
                    .push((Endpoint::Sketches, d.metric.clone()));
                self.out.oversize_points += 1;
            }
        }
        for e in &flush.events {
            self.push_event(e);
        }
        for c in &flush.service_checks {
            self.push_check(c);
        }
    }

    /// One series; split in halves by points while it does not fit a payload.
    fn push_series(&mut self, s: &Series) {
        if self.deco.series_json(s, &mut self.buf).is_none() {
            self.out.empty += 1;
            return;
        }
        let points = s.points.iter().filter(|(_, v)| v.is_finite()).count();
        if self.series.push(&self.buf, points).is_ok() {
            return;
        }
        if s.points.len() < 2 {
            self.out.oversize.push((Endpoint::Series, s.metric.clone()));
            self.out.oversize_points += points;
            return;
        }
        let half = s.points.len() / 2;
        for part in [&s.points[..half], &s.points[half..]] {
            let piece = Series {
                points: part.to_vec(),
                ..s.clone()
            };
            self.push_series(&piece);
        }
    }

    /// One event, into its source type's payloads; its text is cut when
    /// the whole does not fit a payload.
    fn push_event(&mut self, e: &Event) {
        if self.deco.event_json(e, &mut self.buf).is_none() {
            return;
        }
        let source = e
            .source_type
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("api");
        let (deco, limits) = (self.deco, self.limits);
        let events = self.events.entry(source.to_owned()).or_insert_with(|| {
            Encoder::events(source, deco.hostname.as_deref().unwrap_or(""), limits)
        });
        if events.push(&self.buf, 1).is_ok() {
            return;
        }
        let excess = self
            .buf
            .len()
            .saturating_sub(item_budget(events.frame_len(), &self.limits));
        let cut_event = Event {
            text: cut(&e.text, excess),
            ..e.clone()
        };
        let fits = cut_event.text.len() < e.text.len()
            && self.deco.event_json(&cut_event, &mut self.buf).is_some()
            && events.push(&self.buf, 1).is_ok();
        if fits {
            self.out.truncated.push((Endpoint::Events, e.title.clone()));
        } else {
            self.out.oversize.push((Endpoint::Events, e.title.clone()));
            self.out.oversize_points += 1;
        }
    }

    /// One service check; its message is cut when the whole does not fit.
    fn push_check(&mut self, c: &ServiceCheck) {
        if self.deco.check_json(c, &mut self.buf).is_none() {
            return;
        }
        if self.checks.push(&self.buf, 1).is_ok() {
            return;
        }
        let excess = self.buf.len().saturating_sub(item_budget(
            Endpoint::Checks.prefix().len() + Endpoint::Checks.suffix().len(),
            &self.limits,
        ));
        let message = c.message.as_deref().unwrap_or("");
        let cut_check = ServiceCheck {
            message: Some(cut(message, excess)),
            ..c.clone()
        };
        let fits = !message.is_empty()
            && self.deco.check_json(&cut_check, &mut self.buf).is_some()
            && self.checks.push(&self.buf, 1).is_ok();
        if fits {
            self.out.truncated.push((Endpoint::Checks, c.name.clone()));
        } else {
            self.out.oversize.push((Endpoint::Checks, c.name.clone()));
            self.out.oversize_points += 1;
        }
    }

    /// Closes the open payloads: series first, then sketches, events
    /// and service checks.
    pub fn finish(self) -> Encoded {
        let mut out = self.out;
        out.payloads.extend(self.series.finish());
        out.payloads.extend(self.sketches.finish());
        for events in self.events.into_values() {
            out.payloads.extend(events.finish());
        }
        out.payloads.extend(self.checks.finish());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload as JSON; a sketch payload as `{"sketches": [{metric, cnt}]}`.
    fn decode(p: &Payload) -> serde_json::Value {
        let mut raw = Vec::new();
        if p.endpoint == Endpoint::Sketches {
            use prost::Message as _;
            ZlibDecoder::new(p.body.as_slice())
                .read_to_end(&mut raw)
                .expect("valid zlib");
            assert_eq!(raw.len(), p.raw_len);
            let decoded =
                super::super::sketch::SketchPayload::decode(raw.as_slice()).expect("protobuf");
            let items: Vec<serde_json::Value> = decoded
                .sketches
                .iter()
                .map(|s| serde_json::json!({"metric": s.metric, "cnt": s.dogsketches[0].cnt}))
                .collect();
            return serde_json::json!({ "series": items });
        }
        GzDecoder::new(p.body.as_slice())
            .read_to_end(&mut raw)
            .expect("valid gzip");
        assert_eq!(raw.len(), p.raw_len);
        serde_json::from_slice(&raw).expect("valid JSON")
    }

    fn items_of(p: &Payload) -> Vec<serde_json::Value> {
        match decode(p) {
            serde_json::Value::Object(mut m) if m.contains_key("events") => {
                // The Agent's envelope: one source type's list.
                let events = m.remove("events").expect("events");
                let groups = events.as_object().expect("events by source type");
                assert_eq!(groups.len(), 1, "one source type per payload");
                groups
                    .values()
                    .next()
                    .expect("a group")
                    .as_array()
                    .expect("a list")
                    .clone()
            }
            serde_json::Value::Object(mut m) => match m.remove("series") {
                Some(serde_json::Value::Array(a)) => a,
                other => panic!("no series array: {other:?}"),
            },
            serde_json::Value::Array(a) => a,
            other => vec![other],
        }
    }

    /// Random items of random sizes and entropy: every payload stays under
    /// every limit, and the items come out whole, once, in order.
    #[test]
    fn encoder_splits_under_every_limit_and_keeps_every_item() {
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let limits = Limits {
                max_compressed: rng.usize(300..4_000),
                max_uncompressed: rng.usize(400..20_000),
                max_items: rng.usize(1..200),
            };
            let mut enc = Encoder::new(Endpoint::Series, limits);
            let mut kept = Vec::new();
            let mut refused = 0;
            for i in 0..500 {
                let len = rng.usize(0..600);
                let text: String = if rng.bool() {
                    (0..len).map(|_| rng.alphanumeric()).collect()
                } else {
                    "a".repeat(len)
                };
                let item = serde_json::json!({"metric": format!("m{i}"), "t": text});
                let bytes = serde_json::to_vec(&item).expect("json");
                match enc.push(&bytes, 1) {
                    Ok(()) => kept.push(item),
                    Err(Oversize) => refused += 1,
                }
            }
            let payloads = enc.finish();
            let mut out = Vec::new();
            for p in &payloads {
                assert!(p.body.len() <= limits.max_compressed, "seed {seed}: {p:?}");
                assert!(p.raw_len <= limits.max_uncompressed, "seed {seed}: {p:?}");
                assert!(p.items <= limits.max_items && p.items > 0);
                let items = items_of(p);
                assert_eq!(items.len(), p.items);
                out.extend(items);
            }
            assert_eq!(out, kept, "seed {seed}");
            assert_eq!(kept.len() + refused, 500);
        }
    }

    #[test]
    fn chunked_encoding_equals_whole_encoding() {
        use crate::dogstatsd::aggregate::{Flush, Series};
        let series = |i: usize| Series {
            metric: format!("m.{i}"),
            kind: if i % 2 == 0 {
                SeriesKind::Gauge
            } else {
                SeriesKind::Rate
            },
            points: vec![(1_700_000_000, if i % 13 == 0 { f64::NAN } else { 1.0 })],
            tags: vec![format!("shard:{i}"), "env:x".to_owned()],
            host: None,
            interval: Some(10),
            unit: None,
        };
        let dist = |i: usize| crate::dogstatsd::aggregate::DistributionSketch {
            metric: format!("d.{i}"),
            timestamp: 1_700_000_000,
            sketch: crate::dogstatsd::sketch::Sketch::of(&[1.0, 2.0]),
            tags: vec![],
            host: None,
        };
        let chunks: Vec<Flush> = (0..7)
            .map(|c| Flush {
                series: (c * 40..c * 40 + 40).map(series).collect(),
                distributions: (c * 3..c * 3 + 3).map(dist).collect(),
                ..Flush::default()
            })
            .collect();
        let mut whole = Flush::default();
        for c in chunks.clone() {
            whole.append(c);
        }
        let deco = Decoration {
            global_tags: vec!["g:1".to_owned()],
            hostname: Some("h".to_owned()),
            interval: None,
        };
        let limits = Limits {
            max_compressed: 2_000,
            max_uncompressed: 6_000,
            max_items: 25,
        };
        let once = encode_flush(&whole, &deco, limits);
        let mut enc = FlushEncoder::new(&deco, limits);
        for c in &chunks {
            enc.push(c);
        }
        let chunked = enc.finish();
        assert!(once.payloads.len() > 2);
        assert_eq!(once.empty, chunked.empty);
        assert_eq!(once.oversize, chunked.oversize);
        let items = |e: &Encoded| -> Vec<(Endpoint, Vec<serde_json::Value>)> {
            e.payloads
                .iter()
                .map(|p| (p.endpoint, items_of(p)))
                .collect()
        };
        assert_eq!(items(&once), items(&chunked));
    }

    #[test]
    fn an_item_larger_than_a_payload_is_handed_back() {
        let limits = Limits {
            max_compressed: 1_000,
            max_uncompressed: 100,
            max_items: 10,
        };
        let mut enc = Encoder::new(Endpoint::Checks, limits);
        assert_eq!(enc.push(br#"{"check":"a"}"#, 1), Ok(()));
        assert_eq!(enc.push(&[b'1'; 200], 1), Err(Oversize));
        assert_eq!(enc.push(br#"{"check":"b"}"#, 1), Ok(()));
        let payloads = enc.finish();
        assert_eq!(payloads.len(), 1);
        assert_eq!(
            decode(&payloads[0]),
            serde_json::json!([{"check": "a"}, {"check": "b"}])
        );
    }

    #[test]
    fn a_sketch_payload_splits_into_halves_that_keep_every_sketch() {
        let deco = Decoration::default();
        let mut enc = Encoder::new(Endpoint::Sketches, Limits::default());
        let mut buf = Vec::new();
        for i in 0..5 {
            let d = crate::dogstatsd::aggregate::DistributionSketch {
                metric: format!("d.{i}"),
                timestamp: 1_700_000_000,
                sketch: crate::dogstatsd::sketch::Sketch::of(&[1.0, f64::from(i) + 2.0]),
                tags: vec![],
                host: None,
            };
            deco.sketch_entry(&d, &mut buf).expect("non-empty");
            enc.push(&buf, 1).expect("fits");
        }
        let payloads = enc.finish();
        assert_eq!(payloads.len(), 1);
        assert_eq!(payloads[0].items, 5);
        let (a, b) = payloads[0].split(&Limits::default()).expect("splits");
        let names = |ps: &[Payload]| -> Vec<serde_json::Value> {
            ps.iter()
                .flat_map(items_of)
                .map(|v| v["metric"].clone())
                .collect()
        };
        assert_eq!(names(&a), ["d.0", "d.1"]);
        assert_eq!(names(&b), ["d.2", "d.3", "d.4"]);
        for p in a.iter().chain(&b) {
            assert_eq!(p.endpoint, Endpoint::Sketches);
        }
    }

    /// A split re-reads the payload's JSON: every item must go out as the
    /// bytes it was encoded as. Parsing the values and printing them again
    /// turned 0.19999999999999998 into 0.2 after a 413 (serde_json's default
    /// float parser is not exact). Test builds enable `float_roundtrip` for
    /// the stand-in intake, which makes that parse exact here, so the value
    /// checks alone would not catch a return to it: the spelling no
    /// serializer writes (`2.50E0`) does.
    #[test]
    fn split_halves_keep_every_value_bit_for_bit() {
        let limits = Limits::default();
        let values = [
            0.199_999_999_999_999_98,
            0.300_000_000_000_000_04,
            0.1,
            1.0 / 3.0,
            2.0 / 3.0,
            123_456.789_012_345_67,
            5e-324,
            2.225_073_858_507_201e-308,
            f64::MAX,
            f64::MIN_POSITIVE,
            9_007_199_254_740_991.0,
            -8.881_784_197_001_252e-16,
        ];
        let mut enc = Encoder::new(Endpoint::Series, limits);
        for (i, v) in values.iter().enumerate() {
            let item = serde_json::json!({"metric": format!("m{i}"), "points": [{"timestamp": 1, "value": v}]});
            enc.push(&serde_json::to_vec(&item).expect("json"), 1)
                .expect("fits");
        }
        // Spelled as no serializer would: only bytes kept verbatim keep it.
        enc.push(
            br#"{"metric":"raw","points":[{"timestamp":1,"value":2.50E0}]}"#,
            1,
        )
        .expect("fits");
        let p = enc.finish().remove(0);
        let (a, b) = p.split(&limits).expect("items split");
        let mut raw = Vec::new();
        for half in a.iter().chain(&b) {
            GzDecoder::new(half.body.as_slice())
                .read_to_end(&mut raw)
                .expect("valid gzip");
        }
        let text = String::from_utf8(raw).expect("utf-8");
        assert!(text.contains(r#""value":2.50E0}"#), "{text}");
        for v in values {
            let want = format!(r#""value":{}"#, serde_json::to_string(&v).expect("json"));
            assert!(text.contains(&want), "{want} not in {text}");
        }
    }

    #[test]
    fn split_halves_keep_every_item_and_events_do_not_split() {
        let limits = Limits::default();
        let mut enc = Encoder::new(Endpoint::Series, limits);
        for i in 0..5 {
            enc.push(format!(r#"{{"metric":"m{i}"}}"#).as_bytes(), 1)
                .expect("fits");
        }
        let p = enc.finish().remove(0);
        let (a, b) = p.split(&limits).expect("five items split");
        let names =
            |ps: &[Payload]| -> Vec<serde_json::Value> { ps.iter().flat_map(items_of).collect() };
        assert_eq!(names(&a).len(), 2);
        assert_eq!(names(&b).len(), 3);
        let mut all = names(&a);
        all.extend(names(&b));
        assert_eq!(all, items_of(&p));

        // Events are batched in the Agent's envelope, and split in it.
        let mut enc = Encoder::events("my apps", "h1", limits);
        for i in 0..5 {
            enc.push(format!(r#"{{"msg_title":"e{i}"}}"#).as_bytes(), 1)
                .expect("fits");
        }
        let events = enc.finish();
        assert_eq!(events.len(), 1, "batched");
        assert_eq!(
            decode(&events[0]),
            serde_json::json!({
                "apiKey": "",
                "events": {"my apps": [
                    {"msg_title": "e0"}, {"msg_title": "e1"}, {"msg_title": "e2"},
                    {"msg_title": "e3"}, {"msg_title": "e4"}
                ]},
                "internalHostname": "h1"
            })
        );
        let (a, b) = events[0].split(&limits).expect("five events split");
        assert_eq!((names(&a).len(), names(&b).len()), (2, 3));
        assert_eq!(decode(&b[0])["internalHostname"], "h1");
        let mut all = names(&a);
        all.extend(names(&b));
        assert_eq!(all, items_of(&events[0]));
    }

    #[test]
    fn global_tags_are_appended_once() {
        let own = vec!["a:1".to_owned(), "env:x".to_owned()];
        let global = vec!["env:x".to_owned(), "g:1".to_owned(), "g:1".to_owned()];
        let tags: Vec<&str> = TagList::new(&own, &global).iter().collect();
        assert_eq!(tags, ["a:1", "env:x", "g:1"]);
    }

    fn flush_with(
        series: Vec<Series>,
        events: Vec<Event>,
        checks: Vec<ServiceCheck>,
    ) -> crate::dogstatsd::aggregate::Flush {
        crate::dogstatsd::aggregate::Flush {
            series,
            events,
            service_checks: checks,
            ..Default::default()
        }
    }

    /// A series with more points than one payload holds is split by points:
    /// every point arrives, each payload is under the limits and knows its
    /// points.
    #[test]
    fn a_series_too_large_for_one_payload_is_split_by_points() {
        let limits = Limits {
            max_compressed: 20_000,
            max_uncompressed: 60_000,
            max_items: 100,
        };
        let points: Vec<(i64, f64)> = (0..20_000)
            .map(|i| (1_700_000_000 + i, (i % 977) as f64 * 0.25)) // exact in JSON
            .collect();
        let s = Series {
            metric: "many.points".to_owned(),
            kind: SeriesKind::Gauge,
            points: points.clone(),
            tags: vec!["a:b".to_owned()],
            host: None,
            interval: None,
            unit: None,
        };
        let out = encode_flush(
            &flush_with(vec![s], vec![], vec![]),
            &Decoration::default(),
            limits,
        );
        assert!(out.oversize.is_empty() && out.oversize_points == 0);
        assert!(out.payloads.len() > 5, "{} payloads", out.payloads.len());
        let mut got = Vec::new();
        for p in &out.payloads {
            assert!(
                p.body.len() <= limits.max_compressed && p.raw_len <= limits.max_uncompressed,
                "{p:?}"
            );
            let mut n = 0;
            for item in items_of(p) {
                assert_eq!(item["metric"], "many.points");
                for pt in item["points"].as_array().expect("points") {
                    got.push((
                        pt["timestamp"].as_i64().expect("ts"),
                        pt["value"].as_f64().expect("v"),
                    ));
                    n += 1;
                }
            }
            assert_eq!(p.points, n, "the payload knows its points");
        }
        assert_eq!(got.len(), points.len());
        let first_diff = got.iter().zip(&points).position(|(a, b)| a != b);
        assert_eq!(
            first_diff,
            None,
            "every point once, in order: {:?}",
            first_diff.map(|i| (got[i], points[i]))
        );
    }

    /// An item whose raw JSON is larger than the compressed limit but which
    /// compresses well fits (the old check compared raw bytes with the
    /// compressed limit).
    #[test]
    fn a_large_compressible_item_is_judged_by_its_compressed_size() {
        let limits = Limits {
            max_compressed: 10_000,
            max_uncompressed: 1_000_000,
            max_items: 100,
        };
        let mut enc = Encoder::new(Endpoint::Checks, limits);
        let item = format!(r#"{{"check":"c","message":"{}"}}"#, "a".repeat(200_000));
        assert_eq!(enc.push(item.as_bytes(), 1), Ok(()));
        let ps = enc.finish();
        assert_eq!(ps.len(), 1);
        assert!(ps[0].body.len() <= limits.max_compressed, "{:?}", ps[0]);
        assert_eq!(ps[0].raw_len, item.len() + 2);
    }

    /// An event or check too large for any payload has its text cut to fit,
    /// and is counted; the rest of it is kept.
    #[test]
    fn an_event_or_check_too_large_is_cut_to_fit_and_counted() {
        let limits = Limits {
            max_compressed: 4_000,
            max_uncompressed: 8_000,
            max_items: 100,
        };
        let mut rng = fastrand::Rng::with_seed(5);
        let noise: String = (0..50_000).map(|_| rng.alphanumeric()).collect();
        let event = Event {
            title: "deploy".to_owned(),
            text: format!("é{noise}"),
            timestamp: Some(1),
            host: None,
            aggregation_key: None,
            priority: Priority::Normal,
            source_type: None,
            alert_type: AlertType::Info,
            tags: vec!["t:1".to_owned()],
        };
        let check = ServiceCheck {
            name: "db.up".to_owned(),
            status: CheckStatus::Critical,
            timestamp: None,
            host: None,
            tags: vec!["t:2".to_owned()],
            message: Some(noise.clone()),
        };
        let out = encode_flush(
            &flush_with(vec![], vec![event], vec![check]),
            &Decoration::default(),
            limits,
        );
        assert!(out.oversize.is_empty());
        assert_eq!(
            out.truncated,
            [
                (Endpoint::Events, "deploy".to_owned()),
                (Endpoint::Checks, "db.up".to_owned())
            ]
        );
        assert_eq!(out.payloads.len(), 2);
        for p in &out.payloads {
            assert!(
                p.body.len() <= limits.max_compressed && p.raw_len <= limits.max_uncompressed,
                "{p:?}"
            );
            assert_eq!(p.points, 1);
        }
        let e = &items_of(&out.payloads[0])[0];
        assert_eq!(e["msg_title"], "deploy");
        assert_eq!(e["tags"], serde_json::json!(["t:1"]));
        let text = e["msg_text"].as_str().expect("text");
        assert!(
            text.len() > 1_000 && format!("é{noise}").starts_with(text),
            "{}",
            text.len()
        );
        let c = &items_of(&out.payloads[1])[0];
        assert_eq!(c["check"], "db.up");
        assert!(noise.starts_with(c["message"].as_str().expect("message")));
    }

    #[test]
    fn non_finite_points_are_left_out() {
        let deco = Decoration::default();
        let mut buf = Vec::new();
        let s = Series {
            metric: "m".to_owned(),
            kind: SeriesKind::Gauge,
            points: vec![(1, f64::NAN), (2, 1.5), (3, f64::INFINITY)],
            tags: vec![],
            host: None,
            interval: None,
            unit: None,
        };
        deco.series_json(&s, &mut buf).expect("one finite point");
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("json");
        assert_eq!(
            v["points"],
            serde_json::json!([{"timestamp": 2, "value": 1.5}])
        );
        let all_nan = Series {
            points: vec![(1, f64::NAN)],
            ..s
        };
        assert!(deco.series_json(&all_nan, &mut buf).is_none());
    }
}
