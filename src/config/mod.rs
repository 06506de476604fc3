//! Configuration: the ONE place that reads environment variables.
//!
//! In: the process environment. Out: one typed configuration per command:
//! [`Config`] for `serve` (`serve.rs`), [`AgentConfig`] for `agent` and the
//! exec.d helper (`agent.rs`), and [`RunnerEnv`] for `start` / `run`
//! (`runner.rs`). This file holds what they share: the [`Env`] lookup, the
//! typed `Reader`, [`ConfigError`], [`ApiKey`], [`LogLevel`], the
//! `$DYNO` helpers, the [`defaults`] and the names of the variables other
//! modules set for children ([`vars`]). Every default and every error
//! message lives under `config/`; the README's configuration table mirrors
//! it. An invalid value is a one-line [`ConfigError`] that names the
//! variable and the fix; the CLI exits 2 on it.
//!
//! Must never: log or format the API key. [`ApiKey`] redacts itself in
//! `Debug` and has no `Display`.

mod agent;
mod checks;
mod mapper;
mod proxy;
mod runner;
mod serve;
mod trace;

pub use agent::{AgentConfig, DynoTypes};
pub use checks::{
    app_procfile_types, parse_url, placement, procfile_types, ChecksConfig, DbKind, DbUrl, Secret,
    Tls,
};
pub use mapper::{parse_mapper_profiles, MapperProfile, MapperRule};
pub use proxy::{redact_url, Proxy};
pub use runner::RunnerEnv;
pub use serve::{Config, HistogramAggregate};
pub use trace::TraceConfig;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;

/// A variable lookup: the real environment in production, a map in unit tests.
pub trait Env {
    /// The value of `name`, or `None` when it is unset. Values that are not
    /// valid UTF-8 are reported as errors by the caller, never panicked on.
    fn get(&self, name: &str) -> Option<OsString>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<OsString> {
        BTreeMap::get(self, name).map(OsString::from)
    }
}

/// An invalid configuration value: names the variable, the value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// The offending value, truncated and escaped (never the API key).
    pub value: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl ConfigError {
    fn new(var: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            var,
            value: escape_truncate(value, 64),
            reason: reason.into(),
        }
    }
}

/// Escapes control characters and truncates to `max` chars, for error messages.
pub fn escape_truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_debug).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// The Datadog API key. Never printed: `Debug` shows `ApiKey(<redacted>)`,
/// and there is no `Display`. Use [`ApiKey::expose`] only to build the header.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key. Surrounding whitespace (a common copy-paste slip) is trimmed.
    pub fn new(key: &str) -> Self {
        Self(key.trim().to_owned())
    }

    /// The raw key, for the `DD-API-KEY` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Log verbosity, from `DD_LOG_LEVEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Lifecycle events (the default).
    Info,
    /// Per-flush detail.
    Debug,
    /// Everything, including per-packet detail.
    Trace,
}

impl LogLevel {
    /// The `tracing` level filter for this level.
    pub fn as_filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            Self::Error => LevelFilter::ERROR,
            Self::Warn => LevelFilter::WARN,
            Self::Info => LevelFilter::INFO,
            Self::Debug => LevelFilter::DEBUG,
            Self::Trace => LevelFilter::TRACE,
        }
    }
}

/// The dyno type of a `$DYNO` value, for both Cedar and Fir forms.
///
/// - Cedar: `web.1` → `web`, `run.9157` → `run`, `web-api.2` → `web-api`.
/// - Fir: `web-12a34b56d-e78f9` → `web` (the last two `-` segments are the
///   deployment and instance ids).
pub fn dyno_type(dyno: &str) -> &str {
    if let Some((ty, _)) = dyno.rsplit_once('.') {
        return ty;
    }
    let mut parts = dyno.rsplitn(3, '-');
    let (Some(inst), Some(dep), Some(ty)) = (parts.next(), parts.next(), parts.next()) else {
        return dyno;
    };
    let is_id = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if is_id(inst) && is_id(dep) && !ty.is_empty() {
        ty
    } else {
        dyno
    }
}

/// Defaults, named so docs and tests can refer to them.
pub mod defaults {
    /// `DD_SITE`.
    pub const SITE: &str = "datadoghq.com";
    /// `DD_DOGSTATSD_PORT`.
    pub const PORT: u16 = 8125;
    /// `DD_BIND_HOST`.
    pub const BIND_HOST: &str = "127.0.0.1";
    /// `DD_DOGSTATSD_BUFFER_SIZE`, as in the Agent.
    pub const BUFFER_SIZE: usize = 8192;
    /// `DD_DOGSTATSD_SO_RCVBUF`: 25 MiB, as the Agent's high-throughput docs advise.
    pub const SO_RCVBUF: usize = 25 * 1024 * 1024;
    /// `DYNOSTAT_FLUSH_INTERVAL`, seconds.
    pub const FLUSH_INTERVAL_SECS: u64 = 10;
    /// `DYNOSTAT_MEMORY_LIMIT`: 64 MiB, an eighth of a 512 MB dyno.
    pub const MEMORY_LIMIT: usize = 64 * 1024 * 1024;
    /// The smallest `DYNOSTAT_MEMORY_LIMIT` accepted.
    pub const MIN_MEMORY_LIMIT: usize = 4 * 1024 * 1024;
    /// Shares of `DYNOSTAT_MEMORY_LIMIT`, in eighths: 2/8 for the
    /// aggregation (live interval, buckets being flushed, the zero-fill
    /// registry), 2/8 for the retry queue, and 4/8 left for the rest (flushes
    /// being encoded, payloads in flight, buffers, allocator slack and
    /// fragmentation, the runtime).
    pub const AGGREGATE_EIGHTHS: usize = 2;
    /// See [`AGGREGATE_EIGHTHS`].
    pub const RETRY_QUEUE_EIGHTHS: usize = 2;
    /// The aggregation's share of `memory_limit`.
    pub fn aggregate_bytes(memory_limit: usize) -> usize {
        memory_limit / 8 * AGGREGATE_EIGHTHS
    }
    /// The least the aggregator charges a context, whatever its name and
    /// tags (map entries with their growth slack, the state slot, allocator
    /// headers; see `dogstatsd::aggregate`).
    pub const MIN_CONTEXT_BYTES: usize = 256;
    /// `DYNOSTAT_CONTEXT_LIMIT` by default: the aggregation share divided by
    /// the least a context costs, so the memory budget is what binds.
    pub fn context_limit(memory_limit: usize) -> usize {
        (aggregate_bytes(memory_limit) / MIN_CONTEXT_BYTES).max(1)
    }
    /// `DYNOSTAT_RETRY_QUEUE_BYTES` by default: a quarter of the memory
    /// limit (16 MiB at the default, near the Agent's 15 MiB).
    pub fn retry_queue_bytes(memory_limit: usize) -> usize {
        memory_limit / 8 * RETRY_QUEUE_EIGHTHS
    }
    /// `DYNOSTAT_SHUTDOWN_GRACE`, seconds of receiving after SIGTERM.
    pub const SHUTDOWN_GRACE_SECS: f64 = 1.0;
    /// `DYNOSTAT_SHUTDOWN_TIMEOUT`, seconds to flush and drain after the grace.
    pub const SHUTDOWN_TIMEOUT_SECS: f64 = 5.0;
    /// `DD_DOGSTATSD_EXPIRY_SECONDS`: idle counters are sent as 0 this long, as in the Agent.
    pub const EXPIRY_SECONDS: u64 = 300;
    /// `DYNOSTAT_CARDINALITY_WARN`: contexts of one name in one interval
    /// past which the cardinality guard logs the name.
    pub const CARDINALITY_WARN: usize = 1000;
    /// `DD_DOGSTATSD_MAPPER_CACHE_SIZE`, as in the Agent.
    pub const MAPPER_CACHE_SIZE: usize = 1000;
    /// `DD_HISTOGRAM_PERCENTILES`.
    pub const PERCENTILES: &[f64] = &[0.95];
    /// `DD_HISTOGRAM_AGGREGATES`, as in the Agent.
    pub const HISTOGRAM_AGGREGATES: &[super::HistogramAggregate] = &[
        super::HistogramAggregate::Max,
        super::HistogramAggregate::Median,
        super::HistogramAggregate::Avg,
        super::HistogramAggregate::Count,
    ];
}

/// Names of variables that other modules set (for children) or test for in
/// a map of variables, so that only `config/` spells them.
pub mod vars {
    /// The dyno name, e.g. `web.1`; set for each process by `start`.
    pub const DYNO: &str = "DYNO";
    /// foreman's name for the process, e.g. `web.1`; set by `start`.
    pub const PS: &str = "PS";
    /// The port a process should listen on; set by `start`.
    pub const PORT: &str = "PORT";
    /// Where clients send metrics; exported by the exec.d helper.
    pub const DD_AGENT_HOST: &str = "DD_AGENT_HOST";
    /// The DogStatsD port; exported by the exec.d helper.
    pub const DD_DOGSTATSD_PORT: &str = "DD_DOGSTATSD_PORT";
    /// The trace relay's port, as tracers read it; exported beside
    /// `DD_DOGSTATSD_PORT`.
    pub const DD_TRACE_AGENT_PORT: &str = "DD_TRACE_AGENT_PORT";
    /// A tracer's full agent URL; when set, tracers ignore the port.
    pub const DD_TRACE_AGENT_URL: &str = "DD_TRACE_AGENT_URL";
    /// The log level; set to `warn` for quiet children.
    pub const DD_LOG_LEVEL: &str = "DD_LOG_LEVEL";
    /// Console output of `serve`; `start` turns it on unless it is set.
    pub const DYNOSTAT_CONSOLE: &str = "DYNOSTAT_CONSOLE";
    /// Whether the console's reader is a terminal; `start` sets it unless it is set.
    pub const DYNOSTAT_CONSOLE_TTY: &str = "DYNOSTAT_CONSOLE_TTY";
    /// Any non-empty value turns colour and Unicode drawing off (no-color.org).
    pub const NO_COLOR: &str = "NO_COLOR";
    /// The pid the agent leaves with; set by the exec.d helper.
    pub const DYNOSTAT_WATCH_PID: &str = "DYNOSTAT_WATCH_PID";
    /// The write end of the agent's progress pipe, inherited by `serve`;
    /// set by the agent (`crate::progress`).
    pub const DYNOSTAT_PROGRESS_FD: &str = "DYNOSTAT_PROGRESS_FD";
    /// Tests only: `serve` stalls on purpose on the line `dynostat-test-stall`.
    pub const DYNOSTAT_TEST_STALL: &str = "DYNOSTAT_TEST_STALL";
}

/// Typed reads with the variable name in every error.
struct Reader<'a>(&'a dyn Env);

impl Reader<'_> {
    fn string(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        match self.0.get(var) {
            None => Ok(None),
            Some(v) => v.into_string().map(Some).map_err(|v| {
                let shown = if var == "DD_API_KEY" || var.to_ascii_uppercase().contains("PROXY") {
                    "<redacted>".to_owned()
                } else {
                    v.to_string_lossy().into_owned()
                };
                ConfigError::new(var, &shown, "is not valid UTF-8")
            }),
        }
    }

    fn bool(&self, var: &'static str) -> Result<Option<bool>, ConfigError> {
        let Some(v) = self.string(var)? else {
            return Ok(None);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" | "" => Ok(Some(false)),
            _ => Err(ConfigError::new(
                var,
                &v,
                "not a boolean; use true or false",
            )),
        }
    }

    fn uint(
        &self,
        var: &'static str,
        min: usize,
        max: usize,
    ) -> Result<Option<usize>, ConfigError> {
        let Some(v) = self.string(var)? else {
            return Ok(None);
        };
        match v.trim().parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ConfigError::new(
                var,
                &v,
                format!("not a whole number between {min} and {max}"),
            )),
        }
    }

    /// A size in bytes: a whole number, optionally followed by a unit, `KiB
    /// MiB GiB` (or `K M G`, also binary) or `KB MB GB` (decimal), in any case.
    fn bytes(
        &self,
        var: &'static str,
        min: usize,
        max: usize,
    ) -> Result<Option<usize>, ConfigError> {
        let Some(v) = self.string(var)? else {
            return Ok(None);
        };
        match parse_size(&v) {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ConfigError::new(
                var,
                &v,
                format!(
                    "not a size between {} MiB and {} GiB; use bytes or a unit, e.g. 64MiB or 128MB",
                    min >> 20,
                    max >> 30
                ),
            )),
        }
    }

    fn seconds(&self, var: &'static str, min: f64, max: f64) -> Result<Option<f64>, ConfigError> {
        let Some(v) = self.string(var)? else {
            return Ok(None);
        };
        match v.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n >= min && n <= max => Ok(Some(n)),
            _ => Err(ConfigError::new(
                var,
                &v,
                format!("not a number of seconds between {min} and {max}"),
            )),
        }
    }
}

/// `64MiB`, `64 MB`, `1g`, `1048576` → bytes; `None` when not a size.
fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1_000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("67108864"), Some(64 << 20));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("64 mib"), Some(64 << 20));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("64MB"), Some(64_000_000));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("2gb"), Some(2_000_000_000));
        for bad in ["", "MiB", "64 MiBs", "-1", "1.5GiB", "64TB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    /// A map environment from pairs, for the tests of every configuration.
    pub(super) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn dyno_types_cedar_and_fir() {
        assert_eq!(dyno_type("web.1"), "web");
        assert_eq!(dyno_type("web-api.2"), "web-api");
        assert_eq!(dyno_type("run.9157"), "run");
        assert_eq!(dyno_type("web-12a34b56d-e78f9"), "web");
        assert_eq!(dyno_type("web-api-12a34b56d-e78f9"), "web-api");
        assert_eq!(dyno_type("worker"), "worker");
    }
}
