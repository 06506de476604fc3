//! Process: one decoded trace chunk made ready, as the trace-agent's
//! `Process` does it (pkg/trace/agent/agent.go): normalize (invalid traces
//! are dropped), truncate, obfuscate with the Agent's defaults, mark
//! top-level spans unless the tracer did, and fill env and version.
//!
//! In: the spans of one chunk and the request's [`Tracer`] headers. Out: a
//! [`Chunk`] (spans, priority, root, env), or the reason it was dropped.
//! Must never: log a span (normalization errors quote them; only the
//! reason is kept), or keep a string longer than the Agent's limits.

use libdd_trace_obfuscation::obfuscate::obfuscate_pb_span;
use libdd_trace_obfuscation::obfuscation_config::{DbmsKind, ObfuscationConfig};
use libdd_trace_obfuscation::redis::{obfuscate_redis_string, remove_all_redis_args};
use libdd_trace_obfuscation::sql::obfuscate_sql_resource;
use libdd_trace_protobuf::pb;

use crate::config::TraceConfig;

mod cache;
use cache::SqlCache;

/// The Agent's truncation limits (pkg/trace/traceutil/truncate.go).
const MAX_RESOURCE_LEN: usize = 5_000;
const MAX_META_KEY_LEN: usize = 200;
const MAX_META_VALUE_LEN: usize = 25_000;
const MAX_METRICS_KEY_LEN: usize = 200;

/// The metric tracers put their sampling decision in.
pub const PRIORITY_KEY: &str = "_sampling_priority_v1";
/// No priority was sent (the Agent's `PriorityNone`).
pub const PRIORITY_NONE: i32 = i8::MIN as i32;

/// What the request's headers say about the tracer (the Agent's
/// `TracerHeaderTags`).
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    /// `Datadog-Meta-Lang`
    pub lang: String,
    /// `Datadog-Meta-Lang-Version`
    pub lang_version: String,
    /// `Datadog-Meta-Tracer-Version`
    pub tracer_version: String,
    /// `Datadog-Container-ID`
    pub container_id: String,
    /// `Datadog-Client-Computed-Top-Level`: the tracer marked top-level spans.
    pub computed_top_level: bool,
    /// `Datadog-Client-Computed-Stats`: the tracer computes stats itself.
    pub computed_stats: bool,
}

/// A chunk ready for stats and sampling.
#[derive(Debug)]
pub struct Chunk {
    /// Its spans, normalized and obfuscated.
    pub spans: Vec<pb::Span>,
    /// Index of the root span in `spans`.
    pub root: usize,
    /// The sampling priority, or [`PRIORITY_NONE`].
    pub priority: i32,
    /// `_dd.origin` of the root.
    pub origin: String,
    /// The root's env (filled from `DD_ENV` when it had none).
    pub env: String,
    /// The root's version (filled from `DD_VERSION` when it had none).
    pub version: String,
    /// Whether any span is an error.
    pub has_error: bool,
}

impl Chunk {
    /// The root span.
    pub fn root(&self) -> &pb::Span {
        &self.spans[self.root]
    }
}

/// The processing step, with its obfuscation settings built once.
pub struct Processor {
    obfuscation: ObfuscationConfig,
    /// `obfuscation` without the credit card pass, for spans with no value
    /// it could change (see [`Processor::config_for`]).
    no_cards: ObfuscationConfig,
    /// SQL obfuscation results (`DD_APM_OBFUSCATION_CACHE_ENABLED`).
    sql_cache: Option<SqlCache>,
    env: Option<String>,
    service: Option<String>,
    version: Option<String>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor").finish_non_exhaustive()
    }
}

impl Processor {
    /// The Agent's default obfuscation: SQL and Cassandra resources, Redis
    /// and Valkey commands, memcached commands removed, credit card numbers
    /// in tags; `http.url` goes through the URL obfuscator with the Agent's
    /// defaults (`remove_query_string` and `remove_paths_with_digits` off).
    pub fn new(config: &TraceConfig) -> Self {
        Self {
            obfuscation: ObfuscationConfig::default(),
            no_cards: without_cards(&ObfuscationConfig::default()),
            sql_cache: config
                .obfuscation_cache
                .then(|| SqlCache::new(cache::BUDGET)),
            env: config.env.clone(),
            service: config.service.clone(),
            version: config.version.clone(),
        }
    }

    /// The obfuscation settings for `span`: without the credit card pass
    /// when no `meta` value could be a card number (`is_card_number` wants
    /// 12 characters or more, all digits, spaces or dashes) and there are no
    /// span events (which the pass also reads), as the pass would change
    /// nothing; it checks each key against a list first, which costs more
    /// than this look at the values.
    fn config_for(&self, span: &pb::Span) -> &ObfuscationConfig {
        let could_be_card = |v: &String| {
            v.len() >= 12
                && v.bytes()
                    .all(|c| c.is_ascii_digit() || c == b' ' || c == b'-')
        };
        if self.obfuscation.credit_cards.enabled
            && span.span_events.is_empty()
            && !span.meta.values().any(could_be_card)
        {
            &self.no_cards
        } else {
            &self.obfuscation
        }
    }

    /// `obfuscate_pb_span`, skipping the URL obfuscator where it would
    /// give back the URL as it is (see [`plain_url`]): it parses and
    /// rebuilds every `http.url`, a sixth of the relay's instructions on
    /// web traces.
    fn obfuscate(&mut self, span: &mut pb::Span) {
        if self.sql_cache.is_some()
            && matches!(span.r#type.as_str(), "sql" | "cassandra")
            && !span.resource.is_empty()
            && self.obfuscation.tag_replace_rules.is_empty()
        {
            self.obfuscate_sql(span);
            return;
        }
        if matches!(span.r#type.as_str(), "redis" | "valkey")
            && self.obfuscation.tag_replace_rules.is_empty()
            && redis_word(&span.resource)
        {
            self.obfuscate_redis_word(span);
            return;
        }
        let http = &self.obfuscation.http;
        let skip_url = matches!(span.r#type.as_str(), "web" | "http")
            && !http.remove_query_string
            && !http.remove_path_digits
            && lookup(&span.meta, "http.url").is_none_or(|u| plain_url(u));
        if skip_url {
            // The type selects the URL obfuscator and nothing else; a plain
            // URL is no card number, so the credit card pass leaves it too.
            let kind = std::mem::take(&mut span.r#type);
            obfuscate_pb_span(span, self.config_for(span));
            span.r#type = kind;
        } else {
            obfuscate_pb_span(span, self.config_for(span));
        }
    }

    /// `obfuscate_pb_span` for a SQL span with a resource, the query's
    /// obfuscation looked up in the cache first. The crate's order: span
    /// events and the credit card pass over `meta` (the type selects
    /// nothing else, and no replace rules are set), then the resource and
    /// `sql.query` both set to `obfuscate_sql_resource(resource)` for the
    /// DBMS `db.type` names.
    fn obfuscate_sql(&mut self, span: &mut pb::Span) {
        let kind = std::mem::take(&mut span.r#type);
        obfuscate_pb_span(span, self.config_for(span));
        span.r#type = kind;
        let dbms: DbmsKind = lookup(&span.meta, "db.type")
            .and_then(|d| DbmsKind::try_from(d.as_str()).ok())
            .unwrap_or_default();
        let Some(cache) = self.sql_cache.as_mut() else {
            return;
        };
        let hash = SqlCache::hash(dbms, &span.resource);
        let query = match cache.get(hash, dbms, &span.resource) {
            Some(q) => {
                span.resource.clear();
                span.resource.push_str(q);
                span.resource.clone()
            }
            None => {
                let q = obfuscate_sql_resource(&span.resource, &self.obfuscation.sql, dbms);
                cache.insert(hash, dbms, &span.resource, &q);
                span.resource.clone_from(&q);
                q
            }
        };
        span.meta.insert("sql.query".to_owned(), query);
    }

    /// `obfuscate_pb_span` for a Redis or Valkey span whose resource is one
    /// word (see [`redis_word`]): `quantize_redis_string` gives that word
    /// in upper case, so it is upper-cased in place; the rest as the crate
    /// does it, in its order (span events and credit cards, the resource,
    /// then the raw command).
    fn obfuscate_redis_word(&self, span: &mut pb::Span) {
        let kind = std::mem::take(&mut span.r#type);
        obfuscate_pb_span(span, self.config_for(span));
        span.resource.make_ascii_uppercase();
        let (config, key) = if kind == "redis" {
            (&self.obfuscation.redis, "redis.raw_command")
        } else {
            (&self.obfuscation.valkey, "valkey.raw_command")
        };
        span.r#type = kind;
        if config.enabled {
            if let Some(cmd) = span.meta.get_mut(key) {
                if config.remove_all_args {
                    *cmd = remove_all_redis_args(cmd);
                } else if !redis_one_argument(cmd) {
                    *cmd = obfuscate_redis_string(cmd);
                }
            }
        }
    }

    /// Makes one chunk ready, or says why it is dropped (normalization
    /// refused it: foreign spans, an empty trace).
    pub fn chunk(
        &mut self,
        mut spans: Vec<pb::Span>,
        tracer: &Tracer,
    ) -> Result<Chunk, &'static str> {
        if spans.is_empty() {
            return Err("empty trace");
        }
        if normalize_trace(&mut spans).is_err() {
            // The error text quotes a span; only the reason is kept.
            return Err("invalid trace (normalization)");
        }
        let root = libdd_trace_utils::trace_utils::get_root_span_index(&spans).unwrap_or(0);
        let mut priority = PRIORITY_NONE;
        if let Some(p) = lookup(&spans[root].metrics, PRIORITY_KEY) {
            priority = *p as i32;
        } else if let Some(p) = spans.iter().find_map(|s| lookup(&s.metrics, PRIORITY_KEY)) {
            priority = *p as i32;
        }
        for span in &mut spans {
            truncate(span);
            self.obfuscate(span);
        }
        if !tracer.computed_top_level {
            compute_top_level(&mut spans);
        }
        let root_span = &mut spans[root];
        let env = match lookup(&root_span.meta, "env").filter(|e| !e.is_empty()) {
            Some(e) => e.clone(),
            None => match &self.env {
                Some(e) => {
                    root_span.meta.insert("env".to_owned(), e.clone());
                    e.clone()
                }
                None => String::new(),
            },
        };
        let version = match lookup(&root_span.meta, "version").filter(|v| !v.is_empty()) {
            Some(v) => v.clone(),
            None => match (&self.version, &self.service) {
                (Some(v), Some(s)) if *s == root_span.service => {
                    root_span.meta.insert("version".to_owned(), v.clone());
                    v.clone()
                }
                (Some(v), None) => {
                    root_span.meta.insert("version".to_owned(), v.clone());
                    v.clone()
                }
                _ => String::new(),
            },
        };
        let origin = lookup(&root_span.meta, "_dd.origin")
            .cloned()
            .unwrap_or_default();
        let has_error = spans.iter().any(|s| s.error != 0);
        Ok(Chunk {
            spans,
            root,
            priority,
            origin,
            env,
            version,
            has_error,
        })
    }
}

/// Whether the URL obfuscator (with neither `remove_query_string` nor
/// `remove_path_digits`) returns `url` unchanged, because it is of the
/// plainest form: `http://` or `https://`, a host of lowercase letters,
/// digits, dots and dashes, an optional port of digits, a path of
/// unreserved characters and slashes (nothing to escape or unescape), and
/// an optional query of printable ASCII (kept verbatim), no fragment.
/// A test checks this against the obfuscator on generated URLs.
fn plain_url(url: &str) -> bool {
    let b = url.as_bytes();
    let rest = if let Some(r) = b.strip_prefix(b"http://") {
        r
    } else if let Some(r) = b.strip_prefix(b"https://") {
        r
    } else {
        return false;
    };
    let host = rest
        .iter()
        .take_while(|&&c| URL_HOST[usize::from(c)])
        .count();
    if host == 0 {
        return false;
    }
    let mut rest = &rest[host..];
    if let Some(r) = rest.strip_prefix(b":") {
        let port = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if port == 0 {
            return false;
        }
        rest = &r[port..];
    }
    let path = rest
        .iter()
        .take_while(|&&c| URL_PATH[usize::from(c)])
        .count();
    if path > 0 && rest[0] != b'/' {
        return false;
    }
    let rest = &rest[path..];
    rest.is_empty() || (rest[0] == b'?' && rest.iter().all(|&c| URL_QUERY[usize::from(c)]))
}

/// A table of the bytes for which `$e` holds, built at compile time.
macro_rules! byte_class {
    (|$c:ident| $e:expr) => {{
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $c = i as u8;
            t[i] = $e;
            i += 1;
        }
        t
    }};
}

/// [`plain_url`]'s host bytes: lowercase letters, digits, dots and dashes.
static URL_HOST: [bool; 256] =
    byte_class!(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
/// Its path bytes: unreserved characters and slashes.
static URL_PATH: [bool; 256] = byte_class!(|c| {
    c.is_ascii_alphanumeric() || c == b'/' || c == b'-' || c == b'.' || c == b'_' || c == b'~'
});
/// Its query bytes: printable ASCII but `#`.
static URL_QUERY: [bool; 256] = byte_class!(|c| c.is_ascii_graphic() && c != b'#');

/// `map.get(key)`, comparing the keys of a small map in order rather than
/// SipHashing `key` (spans' maps hold a handful of entries).
fn lookup<'m, V>(map: &'m std::collections::HashMap<String, V>, key: &str) -> Option<&'m V> {
    if map.len() <= 16 {
        map.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

/// `libdd_trace_normalization::normalizer::normalize_trace` (the Agent's
/// `normalizeTrace`), from the crate's own steps, but `env` and
/// `http.status_code` found in one pass over a small `meta` rather than by
/// two SipHash lookups in every span. An error (a foreign span, a zero id,
/// an empty trace) drops the whole chunk, as the crate's does; a test checks
/// this against it on generated traces.
fn normalize_trace(spans: &mut [pb::Span]) -> Result<(), ()> {
    use libdd_trace_normalization::normalize_utils as n;
    use libdd_trace_normalization::normalizer::is_valid_http_status_code;
    const LINEAR: usize = 16;
    let first = spans.first().ok_or(())?.trace_id;
    for s in spans {
        if s.trace_id != first || s.trace_id == 0 || s.span_id == 0 {
            return Err(());
        }
        n::normalize_service(&mut s.service);
        n::normalize_name(&mut s.name);
        n::normalize_resource(&mut s.resource, &s.name);
        n::normalize_parent_id(&mut s.parent_id, s.trace_id, s.span_id);
        n::normalize_span_start_duration(&mut s.start, &mut s.duration);
        n::normalize_span_type(&mut s.r#type);
        let bad_status = if s.meta.len() <= LINEAR {
            let mut bad = false;
            for (k, v) in &mut s.meta {
                match k.as_str() {
                    "env" => n::normalize_tag(v),
                    "http.status_code" => bad = !is_valid_http_status_code(v),
                    _ => {}
                }
            }
            bad
        } else {
            if let Some(env) = s.meta.get_mut("env") {
                n::normalize_tag(env);
            }
            s.meta
                .get("http.status_code")
                .is_some_and(|c| !is_valid_http_status_code(c))
        };
        if bad_status {
            s.meta.remove("http.status_code");
        }
    }
    Ok(())
}

/// Whether `quantize_redis_string(resource)` is `resource` in ASCII upper
/// case: one word of ASCII letters, digits and underscores (a command name,
/// as tracers set it), so no line, space or truncation mark to handle. A
/// test checks this against the quantizer on generated resources.
fn redis_word(resource: &str) -> bool {
    !resource.is_empty()
        && resource
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `config` with the credit card pass off.
fn without_cards(config: &ObfuscationConfig) -> ObfuscationConfig {
    let mut c = config.clone();
    c.credit_cards.enabled = false;
    c
}

/// Whether `obfuscate_redis_string(cmd)` is `cmd` itself: one command and
/// at most one argument, each of printable ASCII without quotes or
/// backslashes, one space between them, and not `AUTH`, `MIGRATE` or
/// `HELLO` (whose argument it hides). The obfuscator hides the second
/// argument and later ones of other commands, so a single key (`GET
/// item:42`) comes back as it is. A test checks this against it.
fn redis_one_argument(cmd: &str) -> bool {
    let plain = |w: &[u8]| {
        !w.is_empty()
            && w.iter()
                .all(|&c| c.is_ascii_graphic() && c != b'"' && c != b'\\')
    };
    let b = cmd.as_bytes();
    let (word, arg) = match b.iter().position(|&c| c == b' ') {
        Some(i) => (&b[..i], Some(&b[i + 1..])),
        None => (b, None),
    };
    plain(word)
        && arg.is_none_or(|a| {
            plain(a)
                && !word.eq_ignore_ascii_case(b"AUTH")
                && !word.eq_ignore_ascii_case(b"MIGRATE")
                && !word.eq_ignore_ascii_case(b"HELLO")
        })
}

/// `libdd_trace_utils::trace_utils::compute_top_level_span` (the Agent's
/// `ComputeTopLevel`) without its SipHash map of cloned service names: a
/// span is top-level (`_top_level: 1`) when it has no parent, its parent
/// is not in the chunk, or its parent's service differs. Where two spans
/// share an id, the last one is the parent, as in the crate's map.
fn compute_top_level(spans: &mut [pb::Span]) {
    const LINEAR: usize = 32;
    let mark = |span: &mut pb::Span| {
        span.metrics.insert("_top_level".to_owned(), 1.0);
    };
    if spans.len() <= LINEAR {
        // A bit a span, no vector to allocate.
        let mut top = 0u32;
        for (i, s) in spans.iter().enumerate() {
            let is_top = s.parent_id == 0
                || spans
                    .iter()
                    .rev()
                    .find(|p| p.span_id == s.parent_id)
                    .is_none_or(|p| p.service != s.service);
            top |= u32::from(is_top) << i;
        }
        for (i, span) in spans.iter_mut().enumerate() {
            if top & (1 << i) != 0 {
                mark(span);
            }
        }
        return;
    }
    let mut by_id: rustc_hash::FxHashMap<u64, usize> = rustc_hash::FxHashMap::default();
    by_id.reserve(spans.len());
    for (i, s) in spans.iter().enumerate() {
        by_id.insert(s.span_id, i);
    }
    let top: Vec<bool> = spans
        .iter()
        .map(|s| {
            s.parent_id == 0
                || by_id
                    .get(&s.parent_id)
                    .is_none_or(|&p| spans[p].service != s.service)
        })
        .collect();
    for (span, top) in spans.iter_mut().zip(top) {
        if top {
            mark(span);
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The Agent's `Truncate`: resource, meta keys and values, metrics keys.
fn truncate(span: &mut pb::Span) {
    cut(&mut span.resource, MAX_RESOURCE_LEN);
    let long_meta = span
        .meta
        .iter()
        .any(|(k, v)| k.len() > MAX_META_KEY_LEN || v.len() > MAX_META_VALUE_LEN);
    if long_meta {
        span.meta = std::mem::take(&mut span.meta)
            .into_iter()
            .map(|(mut k, mut v)| {
                if k.len() > MAX_META_KEY_LEN {
                    cut(&mut k, MAX_META_KEY_LEN);
                    k.push_str("...");
                }
                if v.len() > MAX_META_VALUE_LEN {
                    cut(&mut v, MAX_META_VALUE_LEN);
                    v.push_str("...");
                }
                (k, v)
            })
            .collect();
    }
    if span.metrics.keys().any(|k| k.len() > MAX_METRICS_KEY_LEN) {
        span.metrics = std::mem::take(&mut span.metrics)
            .into_iter()
            .map(|(mut k, v)| {
                if k.len() > MAX_METRICS_KEY_LEN {
                    cut(&mut k, MAX_METRICS_KEY_LEN);
                    k.push_str("...");
                }
                (k, v)
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn span(id: u64, parent: u64, service: &str) -> pb::Span {
        pb::Span {
            service: service.to_owned(),
            name: "op".to_owned(),
            resource: "r".to_owned(),
            trace_id: 1,
            span_id: id,
            parent_id: parent,
            start: 1_700_000_000_000_000_000,
            duration: 1000,
            ..Default::default()
        }
    }

    fn processor(env: Option<&str>, version: Option<&str>) -> Processor {
        Processor {
            obfuscation: ObfuscationConfig::default(),
            no_cards: without_cards(&ObfuscationConfig::default()),
            sql_cache: Some(SqlCache::new(cache::BUDGET)),
            env: env.map(str::to_owned),
            service: Some("web".to_owned()),
            version: version.map(str::to_owned),
        }
    }

    #[test]
    fn sql_loses_its_literals_and_top_level_is_computed() {
        let mut db = span(2, 1, "db");
        db.r#type = "sql".to_owned();
        db.resource = "SELECT * FROM users WHERE id = 42 AND name = 'bob'".to_owned();
        let mut root = span(1, 0, "web");
        root.metrics = HashMap::from([(PRIORITY_KEY.to_owned(), 2.0)]);
        let c = processor(Some("prod"), Some("1.2"))
            .chunk(vec![db, root], &Tracer::default())
            .expect("valid");
        assert_eq!(c.root, 1);
        assert_eq!(c.priority, 2);
        assert_eq!(
            c.spans[0].resource,
            "SELECT * FROM users WHERE id = ? AND name = ?"
        );
        assert_eq!(
            c.spans[0].metrics.get("_top_level"),
            Some(&1.0),
            "another service"
        );
        assert_eq!(c.spans[1].metrics.get("_top_level"), Some(&1.0), "the root");
        assert_eq!((c.env.as_str(), c.version.as_str()), ("prod", "1.2"));
        assert_eq!(c.spans[1].meta.get("env").map(String::as_str), Some("prod"));
    }

    /// The byte-by-byte version [`plain_url`] replaced, which the tests
    /// below checked against the URL obfuscator.
    fn plain_url_reference(url: &str) -> bool {
        let b = url.as_bytes();
        let rest = if let Some(r) = b.strip_prefix(b"http://") {
            r
        } else if let Some(r) = b.strip_prefix(b"https://") {
            r
        } else {
            return false;
        };
        let host = rest
            .iter()
            .position(|&c| matches!(c, b':' | b'/' | b'?'))
            .unwrap_or(rest.len());
        if host == 0
            || !rest[..host]
                .iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        {
            return false;
        }
        let mut rest = &rest[host..];
        if let Some(r) = rest.strip_prefix(b":") {
            let port = r
                .iter()
                .position(|&c| !c.is_ascii_digit())
                .unwrap_or(r.len());
            if port == 0 {
                return false;
            }
            rest = &r[port..];
        }
        let path = rest.iter().position(|&c| c == b'?').unwrap_or(rest.len());
        if path > 0 && rest[0] != b'/' {
            return false;
        }
        rest[..path]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'-' | b'.' | b'_' | b'~'))
            && rest[path..]
                .iter()
                .all(|&c| c.is_ascii_graphic() && c != b'#')
    }

    proptest::proptest! {
        #[test]
        fn plain_url_is_its_reference(
            url in "(https?|http:/|HTTP)://[a-zA-Z0-9.@:_~-]{0,12}(:[0-9a]{0,5})?(/[a-zA-Z0-9._~%!$&'()*+,;=:@ #?-]{0,8}){0,4}(\\?[ -~é]{0,16})?(#[a-z]{0,3})?|[ -~]{0,30}"
        ) {
            proptest::prop_assert_eq!(plain_url(&url), plain_url_reference(&url), "{}", url);
        }
    }

    #[test]
    fn plain_urls_are_what_the_obfuscator_leaves_alone() {
        use libdd_trace_obfuscation::http::obfuscate_url_string;
        for url in [
            "http://shop.example.com/items/42?ref=home&page=2",
            "https://prices.example.com/prices?item=1",
            "http://h",
            "http://h:8080",
            "http://h/",
            "http://h?",
            "http://h/?a=%zz&b=[]&c=ü",
        ] {
            let same = obfuscate_url_string(url, false, false) == url;
            assert!(!plain_url(url) || same, "{url}");
        }
        for url in [
            "HTTP://h/",
            "http://u:p@h/",
            "http://H/",
            "http://h/a%41",
            "http://h/a b",
            "http://h/#f",
            "http://h:/",
            "http:///p",
            "ftp://h/",
            "http://h/é",
        ] {
            assert!(!plain_url(url), "{url}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_plain_url_comes_out_of_the_obfuscator_unchanged(
            url in "(https?|HTTP|ftp)://[a-zA-Z0-9.@:\\[\\]-]{0,12}(:[0-9]{0,5})?(/[a-zA-Z0-9._~%!$&'()*+,;=:@ -]{0,8}){0,4}(\\?[ -~]{0,16})?(#[a-z]{0,3})?"
        ) {
            if plain_url(&url) {
                proptest::prop_assert_eq!(
                    libdd_trace_obfuscation::http::obfuscate_url_string(&url, false, false),
                    url
                );
            }
        }

        #[test]
        fn every_plain_url_comes_out_unchanged(
            url in "https?://[a-z0-9.-]{1,12}(:[0-9]{1,5})?(/[a-zA-Z0-9._~-]{0,8}){0,4}(\\?[!-\"$-~]{0,16})?"
        ) {
            proptest::prop_assert!(plain_url(&url), "{}", url);
            if plain_url(&url) {
                proptest::prop_assert_eq!(
                    libdd_trace_obfuscation::http::obfuscate_url_string(&url, false, false),
                    url
                );
            }
        }
    }

    /// One SQL span of `query` under `db_type`, with a credit card number
    /// and an old `sql.query` in its meta, processed by `p`.
    fn sql_out(p: &mut Processor, query: &str, db_type: &str) -> pb::Span {
        let mut db = span(1, 0, "db");
        db.r#type = "sql".to_owned();
        db.resource = query.to_owned();
        db.meta.insert("db.type".to_owned(), db_type.to_owned());
        db.meta.insert("sql.query".to_owned(), query.to_owned());
        db.meta
            .insert("card".to_owned(), "4111 1111 1111 1111".to_owned());
        let mut c = p.chunk(vec![db], &Tracer::default()).expect("valid");
        c.spans.remove(0)
    }

    fn uncached() -> Processor {
        Processor {
            sql_cache: None,
            ..processor(None, None)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The cached path gives what `obfuscate_pb_span` gives, on each
        /// query's first (miss), second (stored) and later (hit) sightings,
        /// with other queries in between, and stays within its budget.
        #[test]
        fn cached_sql_obfuscation_is_the_obfuscators(
            queries in proptest::collection::vec(
                ("(SELECT|select|INSERT INTO|UPDATE|DELETE FROM|WITH|BEGIN|-- c\\n|/\\*x\\*/| )[ a-z0-9_.,*()=<>'\"`$:?@#%!;\\[\\]\\\\-]{0,80}",
                 "(postgresql|mysql|mssql|oracle|MySQL|other|)"),
                1..12,
            ),
            order in proptest::collection::vec(0usize..12, 0..48),
        ) {
            let mut cached = processor(None, None);
            let mut plain = uncached();
            let seq = queries.iter().chain(order.iter().map(|&i| &queries[i % queries.len()]));
            for (q, dbms) in seq.clone().chain(seq) {
                let a = sql_out(&mut cached, q, dbms);
                let b = sql_out(&mut plain, q, dbms);
                proptest::prop_assert_eq!(&a, &b, "{:?} {:?}", q, dbms);
                let bytes = cached.sql_cache.as_ref().map_or(0, SqlCache::bytes);
                proptest::prop_assert!(bytes <= cache::BUDGET);
            }
        }
    }

    #[test]
    fn cached_sql_is_hit_and_identical() {
        let mut cached = processor(None, None);
        let mut plain = uncached();
        for q in [
            "SELECT items.id FROM items WHERE items.id = %s AND owners.name = 'alice' LIMIT 1",
            "SELECT * FROM t WHERE a IN (1, 2, 3)",
            "   ",
            "-- only a comment",
            "UPDATE t SET a = $1 WHERE b = 4111111111111111",
        ] {
            for db_type in ["postgresql", "mssql", ""] {
                for _ in 0..4 {
                    assert_eq!(
                        sql_out(&mut cached, q, db_type),
                        sql_out(&mut plain, q, db_type),
                        "{q:?} {db_type:?}"
                    );
                }
            }
        }
        let c = cached.sql_cache.as_ref().expect("on");
        assert_eq!(c.entries(), 15, "each query and DBMS stored once");
    }

    proptest::proptest! {
        /// A one-word resource quantizes to itself in upper case, and a
        /// Redis or Valkey span comes out as `obfuscate_pb_span` makes it,
        /// with each Redis setting.
        #[test]
        fn redis_words_are_what_the_quantizer_makes_of_them(
            resource in "[a-zA-Z0-9_ .\n\t\r-]{0,12}|[A-Za-z_]{1,8}|(CLIENT|client|Config|SCRIPT)( [a-z]{1,5})?",
            raw in "[a-zA-Z0-9 :\n\\\"]{0,30}|(GET|get|AUTH|auth|Hello|MIGRATE|SET|PING|CONFIG|ZADD|MSET|[A-Z]{1,40})( [a-z0-9:\"\\\t\x00]{1,8}){0,2}",
            kind in "(redis|valkey)",
            enabled: bool,
            remove_all_args: bool,
            card: bool,
        ) {
            use libdd_trace_obfuscation::redis::quantize_redis_string;
            if redis_word(&resource) {
                proptest::prop_assert_eq!(
                    quantize_redis_string(&resource),
                    resource.to_ascii_uppercase()
                );
            }
            let mut p = processor(None, None);
            p.obfuscation.redis.enabled = enabled;
            p.obfuscation.redis.remove_all_args = remove_all_args;
            p.obfuscation.valkey = p.obfuscation.redis.clone();
            p.no_cards = without_cards(&p.obfuscation);
            let mut s = span(1, 0, "cache");
            s.r#type = kind.clone();
            s.resource = resource;
            s.meta.insert(format!("{kind}.raw_command"), raw);
            if card {
                s.meta.insert("card".to_owned(), "4111 1111 1111 1111".to_owned());
            }
            let mut theirs = s.clone();
            obfuscate_pb_span(&mut theirs, &p.obfuscation);
            p.obfuscate(&mut s);
            proptest::prop_assert_eq!(s, theirs);
        }
    }

    proptest::proptest! {
        /// Our `normalize_trace` accepts and refuses the traces the
        /// crate's does, and leaves the accepted ones as it does.
        #[test]
        fn normalization_is_the_crates(
            spans in proptest::collection::vec(
                (
                    "[a-zA-Z0-9 _.:/!é-]{0,12}",
                    "[a-zA-Z0-9 _.:/!é-]{0,12}",
                    "[a-z /]{0,6}",
                    proptest::option::of("[A-Za-z0-9 :_!é-]{0,10}"),
                    proptest::option::of("(200|99|600|abc|404|)"),
                    0u64..3,
                    0u64..4,
                    0u64..4,
                    (946_684_800_000_000_000i64..=i64::MAX, -5i64..i64::MAX),
                    0usize..20,
                ),
                0..6,
            ),
        ) {
            let mut ours: Vec<pb::Span> = spans
                .into_iter()
                .map(|(service, name, resource, env, status, trace, id, parent, (start, duration), extra)| {
                    let mut s = pb::Span {
                        service,
                        name,
                        resource,
                        trace_id: 1 + trace / 2,
                        span_id: id,
                        parent_id: parent,
                        start,
                        duration,
                        r#type: "web".to_owned(),
                        ..Default::default()
                    };
                    if let Some(e) = env {
                        s.meta.insert("env".to_owned(), e);
                    }
                    if let Some(c) = status {
                        s.meta.insert("http.status_code".to_owned(), c);
                    }
                    for i in 0..extra {
                        s.meta.insert(format!("k{i}"), "v".to_owned());
                    }
                    s
                })
                .collect();
            let mut theirs = ours.clone();
            let a = normalize_trace(&mut ours);
            let b = libdd_trace_normalization::normalizer::normalize_trace(&mut theirs);
            proptest::prop_assert_eq!(a.is_ok(), b.is_ok());
            if a.is_ok() {
                proptest::prop_assert_eq!(ours, theirs);
            }
        }
    }

    #[test]
    fn lookup_is_get() {
        for n in [0usize, 1, 5, 16, 17, 40] {
            let m: HashMap<String, usize> = (0..n).map(|i| (format!("k{i}"), i)).collect();
            for i in 0..n + 2 {
                let k = format!("k{i}");
                assert_eq!(lookup(&m, &k), m.get(&k), "{n} {k}");
            }
            assert_eq!(lookup(&m, ""), None);
        }
    }

    proptest::proptest! {
        #[test]
        fn a_one_argument_redis_command_comes_back_unchanged(
            cmd in "(GET|get|AUTH|auth|Hello|MIGRATE|migrate|SET|PING|CONFIG|ZADD|MSET|BITFIELD|[A-Za-z]{1,40})( {1,2}[ -~\t\x00é]{0,8}){0,2}|[ -~\n]{0,20}"
        ) {
            if redis_one_argument(&cmd) {
                proptest::prop_assert_eq!(
                    libdd_trace_obfuscation::redis::obfuscate_redis_string(&cmd),
                    cmd
                );
            }
        }
    }

    #[test]
    fn redis_one_argument_cases() {
        for c in ["GET item:42:price", "PING", "get k", "CONFIG GET", "ZADD k"] {
            assert!(redis_one_argument(c), "{c}");
        }
        for c in [
            "AUTH secret",
            "hello 3",
            "migrate h",
            "SET k v",
            "GET  k",
            " GET k",
            "GET k ",
            "GET \"k\"",
            "GET k\\",
            "",
            "GET k\nGET j",
        ] {
            assert!(!redis_one_argument(c), "{c:?}");
        }
    }

    proptest::proptest! {
        /// Each span comes out of our obfuscation as `obfuscate_pb_span`
        /// makes it, card numbers or none among its values.
        #[test]
        fn obfuscation_is_obfuscate_pb_span(
            kind in "(web|http|sql|redis|template|memcached|)",
            resource in "(GET|SELECT 1|SELECT \\* FROM t WHERE a = 4111111111111111|items/show)",
            values in proptest::collection::vec(
                ("(http\\.url|card|env|k[0-9]|sql\\.query|db\\.type|redis\\.raw_command|memcached\\.command)",
                 "4111 1111 1111 1111|4111-1111-1111-1111|378282246310005|[0-9 -]{10,18}|[a-z0-9 ]{0,14}|http://h/p\\?q=1"),
                0..6,
            ),
        ) {
            let mut p = processor(None, None);
            let mut s = span(1, 0, "svc");
            s.r#type = kind;
            s.resource = resource;
            s.meta = values.into_iter().collect();
            let mut theirs = s.clone();
            obfuscate_pb_span(&mut theirs, &p.obfuscation);
            p.obfuscate(&mut s);
            proptest::prop_assert_eq!(s, theirs);
        }
    }

    #[test]
    fn top_level_is_computed_as_the_crate_does() {
        // Small (linear) and large (map) chunks, with duplicate ids,
        // missing parents and service changes.
        for n in [1usize, 5, 32, 33, 200] {
            let mut spans: Vec<pb::Span> = (0..n as u64)
                .map(|i| {
                    let mut s = span(i % 40 + 1, (i * 7) % 50, ["a", "b"][(i % 3 == 0) as usize]);
                    s.metrics.insert("_top_level".to_owned(), 0.5);
                    s
                })
                .collect();
            let mut theirs = spans.clone();
            compute_top_level(&mut spans);
            libdd_trace_utils::trace_utils::compute_top_level_span(&mut theirs);
            assert_eq!(spans, theirs, "{n} spans");
        }
    }

    #[test]
    fn a_trace_with_a_foreign_span_is_invalid() {
        let mut other = span(2, 1, "web");
        other.trace_id = 99;
        assert!(processor(None, None)
            .chunk(vec![span(1, 0, "web"), other], &Tracer::default())
            .is_err());
        assert!(processor(None, None)
            .chunk(vec![], &Tracer::default())
            .is_err());
    }

    #[test]
    fn long_values_are_truncated_on_char_boundaries() {
        let mut s = span(1, 0, "web");
        s.resource = "é".repeat(4000);
        s.meta.insert("k".repeat(300), "v".to_owned());
        truncate(&mut s);
        assert!(s.resource.len() <= MAX_RESOURCE_LEN);
        assert!(s.meta.keys().all(|k| k.len() <= MAX_META_KEY_LEN + 3));
    }
}
