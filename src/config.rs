//! Configuration: the ONE place that reads environment variables.
//!
//! In: the process environment. Out: typed [`Config`] (for `serve`),
//! [`AgentConfig`] (for `agent`) and [`RunnerEnv`] (for `start` / `run`).
//! Every default and every error message lives here; the README's
//! configuration table mirrors this file. An invalid value is a one-line
//! [`ConfigError`] that names the variable and the fix; the CLI exits 2 on it.
//!
//! Must never: log or format the API key. [`ApiKey`] redacts itself in
//! `Debug` and has no `Display`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

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

/// One histogram aggregate, as in the Agent's `histogram_aggregates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistogramAggregate {
    /// `.max`
    Max,
    /// `.min`
    Min,
    /// `.median`
    Median,
    /// `.avg`
    Avg,
    /// `.sum`
    Sum,
    /// `.count`, sent as a RATE like the Agent.
    Count,
}

impl HistogramAggregate {
    /// The metric-name suffix without the dot, e.g. `median`.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Max => "max",
            Self::Min => "min",
            Self::Median => "median",
            Self::Avg => "avg",
            Self::Sum => "sum",
            Self::Count => "count",
        }
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

/// Which dyno types run the agent, from `DYNOSTAT_DYNO_TYPES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DynoTypes {
    /// `all` (the default): every dyno type.
    All,
    /// An explicit list, e.g. `web,worker`.
    Only(Vec<String>),
}

impl DynoTypes {
    /// Whether a dyno of type `dyno_type` (e.g. `web`) should run the agent.
    pub fn allows(&self, dyno_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.iter().any(|t| t == dyno_type),
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
    /// `DYNOSTAT_CONTEXT_LIMIT`: live contexts per interval.
    pub const CONTEXT_LIMIT: usize = 200_000;
    /// `DYNOSTAT_RETRY_QUEUE_BYTES`: 15 MiB, as the Agent's forwarder.
    pub const RETRY_QUEUE_BYTES: usize = 15 * 1024 * 1024;
    /// `DYNOSTAT_SHUTDOWN_GRACE`, seconds of receiving after SIGTERM.
    pub const SHUTDOWN_GRACE_SECS: f64 = 1.0;
    /// `DYNOSTAT_SHUTDOWN_TIMEOUT`, seconds to flush and drain after the grace.
    pub const SHUTDOWN_TIMEOUT_SECS: f64 = 5.0;
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

/// Everything `dynostat serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DD_API_KEY`: enables forwarding. Defaults to none (console output).
    pub api_key: Option<ApiKey>,
    /// `DD_SITE`: the Datadog site. Defaults to `datadoghq.com`.
    pub site: String,
    /// `DD_DD_URL`, else `https://api.$DD_SITE`: the intake base URL, no trailing slash.
    pub intake_url: String,
    /// `DD_BIND_HOST`: the address to bind. Defaults to `127.0.0.1`, or
    /// `0.0.0.0` with `DD_DOGSTATSD_NON_LOCAL_TRAFFIC=true`.
    pub bind_host: IpAddr,
    /// `DD_DOGSTATSD_PORT`: the UDP port; 0 disables UDP. Defaults to 8125.
    pub port: u16,
    /// `DD_DOGSTATSD_SOCKET`: a Unix datagram socket path. Defaults to none.
    pub socket: Option<PathBuf>,
    /// `DD_DOGSTATSD_BUFFER_SIZE`: the largest datagram read whole. Defaults to 8192.
    pub buffer_size: usize,
    /// `DD_DOGSTATSD_SO_RCVBUF`: the socket receive buffer requested. Defaults to 25 MiB.
    pub so_rcvbuf: usize,
    /// Tags added to everything: `DD_TAGS`, `env:`, `service:`, `version:`,
    /// and on a dyno `dyno:`, `dynotype:`, `appname:`. Defaults to none.
    pub global_tags: Vec<String>,
    /// `DD_HOSTNAME`, or `$HEROKU_APP_NAME.$DYNO` with `DD_DYNO_HOST=true`.
    /// Defaults to no host (the dyno is identified by tags).
    pub hostname: Option<String>,
    /// `DD_HISTOGRAM_AGGREGATES`. Defaults to `max median avg count`.
    pub histogram_aggregates: Vec<HistogramAggregate>,
    /// `DD_HISTOGRAM_PERCENTILES`, each in (0, 1). Defaults to `0.95`.
    pub histogram_percentiles: Vec<f64>,
    /// `DD_LOG_LEVEL`. Defaults to `info`.
    pub log_level: LogLevel,
    /// `DYNOSTAT_FLUSH_INTERVAL`: seconds per bucket. Defaults to 10.
    pub flush_interval: Duration,
    /// `DYNOSTAT_CONTEXT_LIMIT`: live contexts per interval; past it new
    /// contexts are counted as dropped. Defaults to 200000.
    pub context_limit: usize,
    /// `DYNOSTAT_RETRY_QUEUE_BYTES`: bytes of payloads held for retry. Defaults to 15 MiB.
    pub retry_queue_bytes: usize,
    /// `DYNOSTAT_SHUTDOWN_GRACE`: seconds to keep receiving after SIGTERM. Defaults to 1.
    pub shutdown_grace: Duration,
    /// `DYNOSTAT_SHUTDOWN_TIMEOUT`: seconds to flush and drain the retry queue
    /// after the grace period. Defaults to 5.
    pub shutdown_timeout: Duration,
    /// `DYNOSTAT_CONSOLE`: print each flush as a table on stdout. Defaults to
    /// true when there is no API key and we are not on a dyno (`DYNO` unset).
    pub console: bool,
    /// `DYNO`, when on a dyno (or under `dynostat start`).
    pub dyno: Option<String>,
}

impl Config {
    /// Reads the real environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&ProcessEnv)
    }

    /// Reads any [`Env`]; unit tests pass a map.
    pub fn from_lookup(env: &dyn Env) -> Result<Self, ConfigError> {
        let r = Reader(env);
        let api_key = r
            .string("DD_API_KEY")?
            .filter(|k| !k.trim().is_empty())
            .map(|k| ApiKey::new(&k));
        let site = r
            .string("DD_SITE")?
            .unwrap_or_else(|| defaults::SITE.to_owned());
        if site.is_empty() || site.contains('/') || site.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "DD_SITE",
                &site,
                "not a Datadog site; use e.g. datadoghq.com, datadoghq.eu or us5.datadoghq.com",
            ));
        }
        let intake_url = match r.string("DD_DD_URL")?.filter(|s| !s.is_empty()) {
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::new(
                        "DD_DD_URL",
                        &url,
                        "must start with http:// or https://, e.g. https://api.datadoghq.com",
                    ));
                }
                url.trim_end_matches('/').to_owned()
            }
            None => format!("https://api.{site}"),
        };
        let non_local = r.bool("DD_DOGSTATSD_NON_LOCAL_TRAFFIC")?.unwrap_or(false);
        let bind_host = match r.string("DD_BIND_HOST")?.filter(|s| !s.is_empty()) {
            Some(h) if h == "localhost" => IpAddr::from([127, 0, 0, 1]),
            Some(h) => h.parse().map_err(|_| {
                ConfigError::new(
                    "DD_BIND_HOST",
                    &h,
                    "not an IP address; use e.g. 127.0.0.1 or 0.0.0.0",
                )
            })?,
            None if non_local => IpAddr::from([0, 0, 0, 0]),
            None => IpAddr::from([127, 0, 0, 1]),
        };
        let port = match r.string("DD_DOGSTATSD_PORT")? {
            Some(p) => p.trim().parse::<u16>().map_err(|_| {
                ConfigError::new(
                    "DD_DOGSTATSD_PORT",
                    &p,
                    "not a port number (0-65535; 0 disables UDP)",
                )
            })?,
            None => defaults::PORT,
        };
        let socket = r
            .string("DD_DOGSTATSD_SOCKET")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let buffer_size = r
            .uint("DD_DOGSTATSD_BUFFER_SIZE", 512, 65_536)?
            .unwrap_or(defaults::BUFFER_SIZE);
        let so_rcvbuf = r
            .uint("DD_DOGSTATSD_SO_RCVBUF", 0, 1 << 30)?
            .unwrap_or(defaults::SO_RCVBUF);

        let dyno = r.string("DYNO")?.filter(|s| !s.is_empty());
        let app_name = r.string("HEROKU_APP_NAME")?.filter(|s| !s.is_empty());
        let mut global_tags = Vec::new();
        if let Some(tags) = r.string("DD_TAGS")? {
            global_tags.extend(
                tags.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            );
        }
        for (var, key) in [
            ("DD_ENV", "env"),
            ("DD_SERVICE", "service"),
            ("DD_VERSION", "version"),
        ] {
            if let Some(v) = r
                .string(var)?
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
            {
                global_tags.push(format!("{key}:{v}"));
            }
        }
        if let Some(d) = &dyno {
            global_tags.push(format!("dyno:{d}"));
            global_tags.push(format!("dynotype:{}", dyno_type(d)));
        }
        if let Some(a) = &app_name {
            global_tags.push(format!("appname:{a}"));
        }
        global_tags.sort();
        global_tags.dedup();

        let hostname = match r.string("DD_HOSTNAME")?.filter(|s| !s.trim().is_empty()) {
            Some(h) => Some(h.trim().to_owned()),
            None if r.bool("DD_DYNO_HOST")?.unwrap_or(false) => match (&app_name, &dyno) {
                (Some(a), Some(d)) => Some(format!("{a}.{d}")),
                (None, Some(d)) => Some(d.clone()),
                _ => None,
            },
            None => None,
        };

        let histogram_aggregates = match r.string("DD_HISTOGRAM_AGGREGATES")? {
            Some(list) => parse_aggregates(&list)?,
            None => defaults::HISTOGRAM_AGGREGATES.to_vec(),
        };
        let histogram_percentiles = match r.string("DD_HISTOGRAM_PERCENTILES")? {
            Some(list) => parse_percentiles(&list)?,
            None => defaults::PERCENTILES.to_vec(),
        };
        let log_level = match r.string("DD_LOG_LEVEL")? {
            Some(l) => match l.trim().to_ascii_lowercase().as_str() {
                "error" | "critical" => LogLevel::Error,
                "warn" | "warning" => LogLevel::Warn,
                "info" | "" => LogLevel::Info,
                "debug" => LogLevel::Debug,
                "trace" => LogLevel::Trace,
                _ => {
                    return Err(ConfigError::new(
                        "DD_LOG_LEVEL",
                        &l,
                        "not a log level; use error, warn, info, debug or trace",
                    ))
                }
            },
            None => LogLevel::Info,
        };
        let flush_interval = Duration::from_secs(
            r.uint("DYNOSTAT_FLUSH_INTERVAL", 1, 3600)?
                .map_or(defaults::FLUSH_INTERVAL_SECS, |v| v as u64),
        );
        let context_limit = r
            .uint("DYNOSTAT_CONTEXT_LIMIT", 1, usize::MAX)?
            .unwrap_or(defaults::CONTEXT_LIMIT);
        let retry_queue_bytes = r
            .uint("DYNOSTAT_RETRY_QUEUE_BYTES", 0, usize::MAX)?
            .unwrap_or(defaults::RETRY_QUEUE_BYTES);
        let shutdown_grace = r
            .seconds("DYNOSTAT_SHUTDOWN_GRACE", 0.0, 20.0)?
            .unwrap_or(defaults::SHUTDOWN_GRACE_SECS);
        let shutdown_timeout = r
            .seconds("DYNOSTAT_SHUTDOWN_TIMEOUT", 0.0, 25.0)?
            .unwrap_or(defaults::SHUTDOWN_TIMEOUT_SECS);
        let console = r
            .bool("DYNOSTAT_CONSOLE")?
            .unwrap_or(api_key.is_none() && dyno.is_none());

        Ok(Self {
            api_key,
            site,
            intake_url,
            bind_host,
            port,
            socket,
            buffer_size,
            so_rcvbuf,
            global_tags,
            hostname,
            histogram_aggregates,
            histogram_percentiles,
            log_level,
            flush_interval,
            context_limit,
            retry_queue_bytes,
            shutdown_grace: Duration::from_secs_f64(shutdown_grace),
            shutdown_timeout: Duration::from_secs_f64(shutdown_timeout),
            console,
            dyno,
        })
    }
}

fn parse_aggregates(list: &str) -> Result<Vec<HistogramAggregate>, ConfigError> {
    let mut out = Vec::new();
    for item in list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let agg = match item.to_ascii_lowercase().as_str() {
            "max" => HistogramAggregate::Max,
            "min" => HistogramAggregate::Min,
            "median" => HistogramAggregate::Median,
            "avg" => HistogramAggregate::Avg,
            "sum" => HistogramAggregate::Sum,
            "count" => HistogramAggregate::Count,
            _ => {
                return Err(ConfigError::new(
                    "DD_HISTOGRAM_AGGREGATES",
                    list,
                    format!(
                        "unknown aggregate {item:?}; use any of max, min, median, avg, sum, count"
                    ),
                ))
            }
        };
        if !out.contains(&agg) {
            out.push(agg);
        }
    }
    Ok(out)
}

fn parse_percentiles(list: &str) -> Result<Vec<f64>, ConfigError> {
    let mut out: Vec<f64> = Vec::new();
    for item in list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        match item.parse::<f64>() {
            Ok(p) if p > 0.0 && p < 1.0 => {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            _ => {
                return Err(ConfigError::new(
                    "DD_HISTOGRAM_PERCENTILES",
                    list,
                    format!("{item:?} is not a percentile; use fractions between 0 and 1, e.g. \"0.95 0.99\""),
                ))
            }
        }
    }
    Ok(out)
}

/// Typed reads with the variable name in every error.
struct Reader<'a>(&'a dyn Env);

impl Reader<'_> {
    fn string(&self, var: &'static str) -> Result<Option<String>, ConfigError> {
        match self.0.get(var) {
            None => Ok(None),
            Some(v) => v.into_string().map(Some).map_err(|v| {
                let shown = if var == "DD_API_KEY" {
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

/// Everything `dynostat agent` (and the `exec-d` helper) needs to decide
/// whether and how to run on this dyno.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `DISABLE_DATADOG_AGENT`: any non-empty value means do nothing, quietly.
    pub disabled: bool,
    /// `DYNOSTAT_DYNO_TYPES`: which dyno types run the agent. Defaults to `all`.
    pub dyno_types: DynoTypes,
    /// `DYNO`, e.g. `web.1` or `web-12a34b56d-e78f9`. Defaults to none (not on a dyno).
    pub dyno: Option<String>,
    /// Whether `DD_API_KEY` is set (the key itself is not kept here).
    pub has_api_key: bool,
    /// `DD_DOGSTATSD_PORT`, to check whether a listener already owns it.
    pub port: u16,
    /// The bind address, as for `serve`.
    pub bind_host: IpAddr,
    /// `DD_LOG_LEVEL`, for the agent's own logging.
    pub log_level: LogLevel,
    /// `DYNOSTAT_WATCH_PID`: a process whose exit means the app is gone (set
    /// by the CNB exec.d program, whose own exit reparents the agent at once).
    /// Defaults to none: the agent watches its parent instead.
    pub watch_pid: Option<i32>,
}

impl AgentConfig {
    /// Reads the real environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&ProcessEnv)
    }

    /// Reads any [`Env`].
    pub fn from_lookup(env: &dyn Env) -> Result<Self, ConfigError> {
        let r = Reader(env);
        let disabled = r
            .string("DISABLE_DATADOG_AGENT")?
            .is_some_and(|v| !v.is_empty());
        let dyno_types = match r.string("DYNOSTAT_DYNO_TYPES")? {
            None => DynoTypes::All,
            Some(v) => {
                let list: Vec<String> = v
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if list.is_empty() || list.iter().any(|t| t == "all") {
                    DynoTypes::All
                } else if let Some(bad) = list.iter().find(|t| {
                    !t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                }) {
                    return Err(ConfigError::new(
                        "DYNOSTAT_DYNO_TYPES",
                        &v,
                        format!(
                            "{bad:?} is not a process type; use a list such as web,worker or all"
                        ),
                    ));
                } else {
                    DynoTypes::Only(list)
                }
            }
        };
        let full = Config::from_lookup(env)?;
        Ok(Self {
            disabled,
            dyno_types,
            dyno: full.dyno,
            has_api_key: full.api_key.is_some(),
            port: full.port,
            bind_host: full.bind_host,
            log_level: full.log_level,
            watch_pid: match r
                .string("DYNOSTAT_WATCH_PID")?
                .filter(|s| !s.trim().is_empty())
            {
                Some(v) => Some(
                    v.trim()
                        .parse::<i32>()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or_else(|| {
                            ConfigError::new(
                                "DYNOSTAT_WATCH_PID",
                                &v,
                                "not a process id; unset it to watch the parent",
                            )
                        })?,
                ),
                None => None,
            },
        })
    }

    /// The dyno type, e.g. `web`, when on a dyno.
    pub fn dyno_type(&self) -> Option<&str> {
        self.dyno.as_deref().map(dyno_type)
    }

    /// Whether this is a one-off dyno (`heroku run`), where we stay quiet.
    pub fn is_one_off(&self) -> bool {
        self.dyno_type() == Some("run")
    }
}

/// What `start` / `run` read from the environment.
#[derive(Debug, Clone)]
pub struct RunnerEnv {
    /// The whole environment, passed on to children (minus nothing).
    pub vars: BTreeMap<String, String>,
    /// `PORT`, the base port when `-p` and the env files do not give one.
    pub port: Option<String>,
    /// `NO_COLOR`: any non-empty value disables colours.
    pub no_color: bool,
}

impl RunnerEnv {
    /// Reads the real environment. Variables that are not UTF-8 are skipped
    /// (they could not be substituted in an env file anyway) but still
    /// inherited by children, since children inherit the real environment.
    pub fn from_env() -> Self {
        let vars: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let port = vars.get("PORT").cloned();
        let no_color = vars.get("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            vars,
            port,
            no_color,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_without_any_variable() {
        let c = Config::from_lookup(&env(&[])).expect("defaults are valid");
        assert!(c.api_key.is_none());
        assert_eq!(c.intake_url, "https://api.datadoghq.com");
        assert_eq!(c.port, 8125);
        assert_eq!(c.bind_host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.flush_interval, Duration::from_secs(10));
        assert_eq!(c.histogram_percentiles, vec![0.95]);
        assert_eq!(c.histogram_aggregates.len(), 4);
        assert!(c.console);
        assert!(c.global_tags.is_empty());
    }

    #[test]
    fn invalid_port_names_the_variable() {
        let e = Config::from_lookup(&env(&[("DD_DOGSTATSD_PORT", "abc")])).unwrap_err();
        assert_eq!(e.var, "DD_DOGSTATSD_PORT");
        assert!(e
            .to_string()
            .starts_with("DD_DOGSTATSD_PORT=abc: not a port number"));
    }

    #[test]
    fn percentile_of_two_is_an_error() {
        let e = Config::from_lookup(&env(&[("DD_HISTOGRAM_PERCENTILES", "0.5 2")])).unwrap_err();
        assert_eq!(e.var, "DD_HISTOGRAM_PERCENTILES");
        let c =
            Config::from_lookup(&env(&[("DD_HISTOGRAM_PERCENTILES", "0.5, 0.99")])).expect("valid");
        assert_eq!(c.histogram_percentiles, vec![0.5, 0.99]);
    }

    #[test]
    fn site_and_url() {
        let c = Config::from_lookup(&env(&[("DD_SITE", "datadoghq.eu")])).expect("valid");
        assert_eq!(c.intake_url, "https://api.datadoghq.eu");
        let c = Config::from_lookup(&env(&[("DD_DD_URL", "http://127.0.0.1:9/")])).expect("valid");
        assert_eq!(c.intake_url, "http://127.0.0.1:9");
        assert!(Config::from_lookup(&env(&[("DD_DD_URL", "127.0.0.1:9")])).is_err());
    }

    #[test]
    fn global_tags_from_all_sources() {
        let c = Config::from_lookup(&env(&[
            ("DD_TAGS", "team:a, tier:b c"),
            ("DD_ENV", "prod"),
            ("DD_SERVICE", "api"),
            ("DD_VERSION", "1.2"),
            ("DYNO", "web.1"),
            ("HEROKU_APP_NAME", "shop"),
        ]))
        .expect("valid");
        assert_eq!(
            c.global_tags,
            vec![
                "appname:shop",
                "c",
                "dyno:web.1",
                "dynotype:web",
                "env:prod",
                "service:api",
                "team:a",
                "tier:b",
                "version:1.2"
            ]
        );
        assert!(
            !c.console,
            "on a dyno without a key we idle rather than print"
        );
    }

    #[test]
    fn hostname_rules() {
        let c = Config::from_lookup(&env(&[
            ("DD_DYNO_HOST", "true"),
            ("DYNO", "web.1"),
            ("HEROKU_APP_NAME", "shop"),
        ]))
        .expect("valid");
        assert_eq!(c.hostname.as_deref(), Some("shop.web.1"));
        let c = Config::from_lookup(&env(&[("DD_HOSTNAME", "h1"), ("DD_DYNO_HOST", "true")]))
            .expect("valid");
        assert_eq!(c.hostname.as_deref(), Some("h1"));
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

    #[test]
    fn api_key_is_redacted() {
        let c = Config::from_lookup(&env(&[("DD_API_KEY", "sekrit-123")])).expect("valid");
        let dump = format!("{c:?}");
        assert!(!dump.contains("sekrit"), "{dump}");
        assert_eq!(c.api_key.as_ref().map(ApiKey::expose), Some("sekrit-123"));
    }

    #[test]
    fn agent_config() {
        let a = AgentConfig::from_lookup(&env(&[
            ("DYNOSTAT_DYNO_TYPES", "web, worker"),
            ("DYNO", "run.12"),
        ]))
        .expect("valid");
        assert!(a.is_one_off());
        assert!(!a.dyno_types.allows("run"));
        assert!(a.dyno_types.allows("worker"));
        let a = AgentConfig::from_lookup(&env(&[("DISABLE_DATADOG_AGENT", "1")])).expect("valid");
        assert!(a.disabled);
        assert!(AgentConfig::from_lookup(&env(&[("DYNOSTAT_DYNO_TYPES", "web;x")])).is_err());
    }
}
