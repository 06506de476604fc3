//! Contexts: the class a sample belongs to, the cached raw spelling
//! (alias) that leads straight to a context id, and the cold path that makes
//! a canonical key (tags sorted and deduplicated, `host:` and the Agent's
//! internal tags taken out, `DD_DOGSTATSD_TAGS` added).
//!
//! In: a metric's name and raw tag field, or an event's tags. Out: keys and
//! hosts. Must never: run on the hot path except [`fingerprint`] and the
//! alias compare.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Which pipeline a context belongs to. It is part of the context key: the
/// Agent keeps distributions and `|T` samples apart from aggregated metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// `c g s h ms` without `|T`.
    Aggregated,
    /// `d` without `|T`.
    Distribution,
    /// `g` with `|T`.
    TimestampedGauge,
    /// `c` with `|T`.
    TimestampedRate,
}

impl Class {
    pub(super) fn of(m: &Metric<'_>) -> Option<Self> {
        match (m.timestamp, m.kind) {
            (None, MetricType::Distribution) => Some(Self::Distribution),
            (None, _) => Some(Self::Aggregated),
            (Some(_), MetricType::Gauge) => Some(Self::TimestampedGauge),
            (Some(_), MetricType::Counter) => Some(Self::TimestampedRate),
            // The Agent's no-aggregation pipeline only takes gauges and counts.
            (
                Some(_),
                MetricType::Histogram
                | MetricType::Timer
                | MetricType::Set
                | MetricType::Distribution,
            ) => None,
        }
    }

    pub(super) fn byte(self) -> u8 {
        match self {
            Self::Aggregated => b'a',
            Self::Distribution => b'd',
            Self::TimestampedGauge => b'g',
            Self::TimestampedRate => b'r',
        }
    }

    pub(super) fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'a' => Some(Self::Aggregated),
            b'd' => Some(Self::Distribution),
            b'g' => Some(Self::TimestampedGauge),
            b'r' => Some(Self::TimestampedRate),
            _ => None,
        }
    }
}

/// A raw spelling's fingerprint: 128 bits of `(class, name, raw tags)`, the
/// XOR of XXH3-128 of the name (seeded with the class byte) and XXH3-128 of
/// the raw tag field (unseeded), so neither is copied to be hashed. The
/// alias map is keyed on its low half and the entry keeps the high half, so
/// a hit compares 8 bytes instead of the spelling's bytes, and no spelling is
/// stored. Two spellings merge only if all 128 bits agree (about 2^-128 per
/// pair; docs/DESIGN.md, "Context keys"); when only the low halves agree, the
/// second spelling finds the slot taken and keeps taking the cold path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint {
    pub(super) lo: u64,
    pub(super) hi: u64,
}

/// One cached raw spelling of a context: the high half of its
/// [`Fingerprint`] (the low half is the map's key) and the context id.
#[derive(Debug)]
pub(super) struct Alias {
    pub(super) hi: u64,
    pub(super) ctx: u32,
}

impl Alias {
    pub(super) fn new(fp: Fingerprint, ctx: u32) -> Self {
        Self { hi: fp.hi, ctx }
    }
}

/// The [`Fingerprint`] of `(class, name, tags)`. The name's hash is seeded
/// (seeds only cost extra past 240 bytes, which names rarely reach); the tag
/// field, often longer, is hashed with the default secret.
#[inline]
pub(super) fn fingerprint(class: Class, name: &str, tags: &str) -> Fingerprint {
    let h = xxh3_128_seeded(u64::from(class.byte()), name.as_bytes()) ^ xxh3_128(tags.as_bytes());
    // Truncations: the two halves of the 128-bit hash.
    #[allow(clippy::cast_possible_truncation)]
    Fingerprint {
        lo: h as u64,
        hi: (h >> 64) as u64,
    }
}

/// Inputs longer than this take `twox-hash`'s XXH3 (the long-input loop,
/// AVX2 when the CPU has it, picked at run time); shorter ones take
/// `xxhash-rust`'s, which runs fewer instructions on short input (callgrind,
/// per line: counters 519 against 549 with `twox-hash` alone; long lines
/// 3,235 with `xxhash-rust` alone against 2,666). Both are XXH3: the same
/// input gives the same hash through either (tested).
const XXH3_LONG: usize = 240;

/// XXH3-128 of `bytes` (unseeded).
#[inline(always)]
pub(super) fn xxh3_128(bytes: &[u8]) -> u128 {
    if bytes.len() <= XXH3_LONG {
        xxhash_rust::xxh3::xxh3_128(bytes)
    } else {
        twox_hash::XxHash3_128::oneshot(bytes)
    }
}

/// XXH3-128 of `bytes` with `seed`.
#[inline(always)]
pub(super) fn xxh3_128_seeded(seed: u64, bytes: &[u8]) -> u128 {
    if bytes.len() <= XXH3_LONG {
        xxhash_rust::xxh3::xxh3_128_with_seed(bytes, seed)
    } else {
        twox_hash::XxHash3_128::oneshot_with_seed(seed, bytes)
    }
}

/// Tag prefixes the Agent takes out of every metric's, event's and service
/// check's tags (comp/dogstatsd/server enrich.go `extractTagsMetadata`):
/// they steer its origin detection and never reach the intake.
pub(super) const INTERNAL_TAG_PREFIXES: [&str; 3] = [
    "dd.internal.entity_id:",
    "dd.internal.card:",
    "dd.internal.jmx_check_name:",
];

/// Whether the Agent strips `tag` (an internal tag; `host:` is handled apart).
pub(super) fn is_internal_tag(tag: &str) -> bool {
    tag.starts_with("dd.internal.") && INTERNAL_TAG_PREFIXES.iter().any(|p| tag.starts_with(p))
}

/// Where a tag of a canonical key comes from: the raw field (`[a..b]`), the
/// mapper's tags or `DD_DOGSTATSD_TAGS` (index `a`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Span {
    Raw(usize, usize),
    Mapped(usize),
    Extra(usize),
}

/// The tags of one new context: the wire's, the mapper's, `DD_DOGSTATSD_TAGS`.
pub(super) struct TagSources<'a> {
    pub(super) raw: &'a str,
    pub(super) mapped: &'a [String],
    pub(super) extra: &'a [String],
}

impl<'a> TagSources<'a> {
    pub(super) fn get(&self, span: Span) -> &'a str {
        match span {
            // Spans start and end at ',' or the ends of the field: char boundaries.
            Span::Raw(a, b) => self.raw.get(a..b).unwrap_or_default(),
            Span::Mapped(i) => self.mapped.get(i).map_or("", String::as_str),
            Span::Extra(i) => self.extra.get(i).map_or("", String::as_str),
        }
    }
}

/// Writes the canonical key of `(class, name, tags)` into `key`: tags sorted
/// and deduplicated; every `host:` tag of the wire's and the mapper's removed
/// and the last one kept as the host, internal tags removed; then
/// `DD_DOGSTATSD_TAGS`, which the Agent adds after that extraction, so a
/// `host:` among them stays a tag. `spans` is scratch space, reused so the
/// cold path at the context limit does not allocate either.
pub(super) fn canonicalise(
    spans: &mut Vec<Span>,
    key: &mut String,
    class: Class,
    name: &str,
    tags: &TagSources<'_>,
) {
    spans.clear();
    key.clear();
    let mut host = "";
    let mut start = 0;
    fn take<'t>(span: Span, part: &'t str, host: &mut &'t str, spans: &mut Vec<Span>) {
        if part.is_empty() {
            return;
        }
        match part.strip_prefix("host:") {
            Some(h) => *host = h,
            None if is_internal_tag(part) => {}
            None => spans.push(span),
        }
    }
    for part in tags.raw.split(',') {
        let end = start + part.len();
        take(Span::Raw(start, end), part, &mut host, spans);
        start = end + 1;
    }
    for (i, part) in tags.mapped.iter().enumerate() {
        take(Span::Mapped(i), part, &mut host, spans);
    }
    spans.extend(
        tags.extra
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(|(i, _)| Span::Extra(i)),
    );
    spans.sort_unstable_by(|a, b| tags.get(*a).cmp(tags.get(*b)));
    spans.dedup_by(|a, b| tags.get(*a) == tags.get(*b));

    key.push(char::from(class.byte()));
    key.push_str(name);
    key.push('\n');
    key.push_str(host);
    key.push('\n');
    for (i, &span) in spans.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(tags.get(span));
    }
}

/// The host and tags of an event or service check, as the Agent's
/// `enrichEvent`/`enrichServiceCheck` make them: `host:` tags (last wins)
/// and internal tags come out, the `h:` field wins over a `host:` tag, and
/// `DD_DOGSTATSD_TAGS` are added last.
pub(super) fn enrich_event_tags(
    tags: &mut Vec<String>,
    host: &mut Option<String>,
    extra: &[String],
) {
    let mut tag_host: Option<String> = None;
    tags.retain(|t| match t.strip_prefix("host:") {
        Some(h) => {
            tag_host = Some(h.to_owned());
            false
        }
        None => !is_internal_tag(t),
    });
    if host.is_none() {
        // An empty `host:` means no host here, as for metrics: the
        // forwarder's default applies.
        *host = tag_host.filter(|h| !h.is_empty());
    }
    tags.extend(extra.iter().cloned());
}

/// A canonical key split back into its parts.
pub(super) struct ContextKey<'a> {
    pub(super) class: Class,
    pub(super) name: &'a str,
    pub(super) host: Option<&'a str>,
    pub(super) tags: &'a str,
}

impl<'a> ContextKey<'a> {
    pub(super) fn parse(key: &'a str) -> Option<Self> {
        let class = Class::from_byte(*key.as_bytes().first()?)?;
        let mut parts = key.get(1..)?.splitn(3, '\n');
        let name = parts.next()?;
        let host = parts.next()?;
        let tags = parts.next()?;
        Some(Self {
            class,
            name,
            host: (!host.is_empty()).then_some(host),
            tags,
        })
    }

    pub(super) fn tags(&self) -> Vec<String> {
        if self.tags.is_empty() {
            Vec::new()
        } else {
            self.tags.split(',').map(str::to_owned).collect()
        }
    }

    pub(super) fn series(
        &self,
        metric: String,
        kind: SeriesKind,
        points: Vec<(i64, f64)>,
        interval: Option<u64>,
        unit: Option<&'static str>,
    ) -> Series {
        Series {
            metric,
            kind,
            points,
            tags: self.tags(),
            host: self.host.map(str::to_owned),
            interval,
            unit,
        }
    }
}

/// The context id of a cached spelling whose name is blocklisted.
pub(super) const BLOCKED: u32 = u32::MAX;
