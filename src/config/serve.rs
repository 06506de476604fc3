//! The configuration of `dynostat serve`: [`Config`].
//!
//! In: an [`Env`]. Out: [`Config`], or a [`ConfigError`] naming the variable
//! and the fix. Must never: read the environment other than through the
//! [`Env`] it is given, or put the API key in an error.
//!
//! Two modes. [`Config::from_lookup`] (`serve` in a terminal, `check`,
//! `start`): any invalid value is the error, and the CLI exits 2.
//! [`Config::from_lookup_on_dyno`] (`serve` under `dynostat agent`): an
//! invalid optional setting is kept in [`Config::notes`], with the default
//! used instead, and the listener runs; only the settings without which
//! nothing can work stop it ([`FATAL`]).

use super::mapper::{parse_mapper_profiles, MapperProfile};
use super::trace::TraceConfig;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    defaults, dyno_type, vars, ApiKey, ChecksConfig, ConfigError, Env, LogLevel, ProcessEnv, Proxy,
    Reader,
};

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

/// Settings that stop the listener even on a dyno: without them nothing can
/// be received or sent. Every other setting falls back to its default there.
pub const FATAL: &[&str] = &["DD_DOGSTATSD_PORT", "DD_DOGSTATSD_SOCKET", "DD_API_KEY"];

/// The Agent's standard DogStatsD prefixes, never namespaced unless
/// `DD_STATSD_METRIC_NAMESPACE_BLACKLIST` says otherwise (pkg/config/setup,
/// `StandardStatsdPrefixes`).
pub const STANDARD_STATSD_PREFIXES: &[&str] = &[
    "datadog.agent",
    "datadog.dogstatsd",
    "datadog.process",
    "datadog.trace_agent",
    "datadog.tracer",
    "activemq",
    "activemq_58",
    "airflow",
    "cassandra",
    "confluent",
    "hazelcast",
    "hive",
    "ignite",
    "jboss",
    "jvm",
    "kafka",
    "presto",
    "sidekiq",
    "solr",
    "tomcat",
    "runtime",
];

/// The Agent's DogStatsD settings that dynostat does not implement, and
/// why (the README's migration table says the same). When one is set,
/// `serve` warns once instead of ignoring it silently.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("DD_USE_DOGSTATSD", "dynostat is only DogStatsD; DISABLE_DATADOG_AGENT turns it off"),
    ("DD_DOGSTATSD_PIPE_NAME", "Windows named pipes; dynos run Linux"),
    ("DD_DOGSTATSD_EOL_REQUIRED", "every line is taken, with or without a final newline"),
    ("DD_DOGSTATSD_PACKET_BUFFER_SIZE", "the Agent's internal queue; dynostat reads batches of 32 datagrams straight into the aggregator"),
    ("DD_DOGSTATSD_PACKET_BUFFER_FLUSH_TIMEOUT", "the Agent's internal queue; there is none to flush"),
    ("DD_DOGSTATSD_QUEUE_SIZE", "the Agent's internal queue; there is none"),
    ("DD_DOGSTATSD_PIPELINE_AUTOADJUST", "one receive thread per socket, no pipelines to tune"),
    ("DD_DOGSTATSD_PIPELINE_COUNT", "one receive thread per socket, no pipelines to tune"),
    ("DD_DOGSTATSD_WORKERS_COUNT", "one receive thread per socket, no workers to tune"),
    ("DD_DOGSTATSD_STATS_PORT", "no debug endpoint; DD_DOGSTATSD_STATS_ENABLE=true sends the dynostat.* self-telemetry instead"),
    ("DD_DOGSTATSD_STATS_BUFFER", "no debug endpoint"),
    ("DD_DOGSTATSD_METRICS_STATS_ENABLE", "no per-metric debug statistics"),
    ("DD_DOGSTATSD_LOG_FILE", "dynostat writes no files; logs go to stderr, Heroku's log stream"),
    ("DD_DOGSTATSD_LOGGING_ENABLED", "dynostat writes no metric log file"),
    ("DD_DOGSTATSD_LOG_FILE_MAX_ROLLS", "dynostat writes no files"),
    ("DD_DOGSTATSD_LOG_FILE_MAX_SIZE", "dynostat writes no files"),
    ("DD_DOGSTATSD_CONTEXT_EXPIRY_SECONDS", "contexts live one interval; idle counters are kept for DD_DOGSTATSD_EXPIRY_SECONDS"),
    ("DD_DOGSTATSD_ORIGIN_DETECTION", "origin detection needs the Agent's container tagger; a dyno is tagged dyno:/dynotype:"),
    ("DD_DOGSTATSD_ORIGIN_DETECTION_CLIENT", "origin detection needs the Agent's container tagger"),
    ("DD_DOGSTATSD_ORIGIN_OPTOUT_ENABLED", "origin detection needs the Agent's container tagger"),
    ("DD_DOGSTATSD_ENTITY_ID_PRECEDENCE", "origin detection needs the Agent's container tagger"),
    ("DD_DOGSTATSD_STRING_INTERNER_SIZE", "the Agent's memory tuning; no equivalent"),
    ("DD_DOGSTATSD_DISABLE_VERBOSE_LOGS", "bad lines are already sampled: one log line per 10 s at most"),
    ("DD_DOGSTATSD_CAPTURE_PATH", "no traffic capture"),
    ("DD_DOGSTATSD_CAPTURE_DEPTH", "no traffic capture"),
    ("DD_DOGSTATSD_NO_AGGREGATION_PIPELINE", "|T metrics always bypass aggregation, as with the Agent's default"),
    ("DD_DOGSTATSD_NO_AGGREGATION_PIPELINE_BATCH_SIZE", "payloads are sized by the intake's limits"),
    ("DD_DOGSTATSD_MAX_METRICS_TAGS", "not implemented"),
    ("DD_DOGSTATSD_FLUSH_INCOMPLETE_BUCKETS", "the open buckets are always flushed on shutdown"),
    ("DD_DOGSTATSD_MEM_BASED_RATE_LIMITER_ENABLED", "memory is bounded by the context limit and per-interval caps instead"),
    ("DD_DOGSTATSD_CONTEXT_LIMITER_LIMIT", "use DYNOSTAT_CONTEXT_LIMIT"),
    ("DD_STATSD_FORWARD_HOST", "forwarding raw packets to another StatsD server is not implemented"),
    ("DD_STATSD_FORWARD_PORT", "forwarding raw packets to another StatsD server is not implemented"),
    ("DD_HISTOGRAM_COPY_TO_DISTRIBUTION", "not implemented"),
    ("DD_HISTOGRAM_COPY_TO_DISTRIBUTION_PREFIX", "not implemented"),
];

/// The official Datadog buildpack's variables that dynostat does not read,
/// and what it does instead. When one is set, `serve` says so once at start,
/// so a migrated app learns what changed instead of losing it silently.
pub const MIGRATION: &[(&str, &str)] = &[
    ("DD_ENABLE_DBM", "dynostat has no Database Monitoring (query samples and explain plans need the full Agent); ignored"),
    ("DD_PROCESS_AGENT", "dynostat runs no process agent; the dyno's own memory, load and CPU are sent as heroku.dyno.* (DYNOSTAT_DYNO_METRICS)"),
    ("DD_LOGS_ENABLED", "dynostat collects no logs; send them to Datadog with a Heroku log drain to Datadog's HTTP log intake"),
    ("DD_AGENT_MAJOR_VERSION", "there is no Agent to choose: dynostat is one binary, versioned by its buildpack"),
    ("DD_PYTHON_VERSION", "dynostat runs no Python checks; ignored"),
    ("DD_HEROKU_CONF_FOLDER", "dynostat reads no Agent configuration files (datadog.yaml, conf.d, prerun.sh); set DD_* config vars instead"),
];

/// The official buildpack's `prerun.sh`, relative to the app's directory
/// when `DD_HEROKU_CONF_FOLDER` does not say otherwise.
pub const PRERUN_SCRIPT: &str = "datadog/prerun.sh";

/// `part` with every character outside `A-Za-z0-9-` (and `.` when
/// `dots`) replaced by `-`, and its leading `-`s removed: the official
/// buildpack's `sed -e 's/[^a-zA-Z0-9-]/-/g' -e 's/^-//g'` for
/// `DD_DYNO_HOST` (`[^a-zA-Z0-9.-]` for the dyno's name).
fn host_part(part: &str, dots: bool) -> String {
    let cleaned: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || (dots && c == '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned.trim_start_matches('-').to_owned()
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
    /// Tags added to everything: `DD_TAGS`, `DD_EXTRA_TAGS`, `env:` (never
    /// `service:` or `version:`, as with the Agent), and on a dyno `dyno:`,
    /// `dynotype:`, `appname:`. Defaults to none.
    pub global_tags: Vec<String>,
    /// `DD_HOSTNAME`, or `$HEROKU_APP_NAME.$DYNO` with `DD_DYNO_HOST=true`.
    /// Defaults to no host (the dyno is identified by tags).
    pub hostname: Option<String>,
    /// `DD_HISTOGRAM_AGGREGATES`. Defaults to `max median avg count`.
    pub histogram_aggregates: Vec<HistogramAggregate>,
    /// `DD_HISTOGRAM_PERCENTILES`, each in [0, 1] (the Agent's range). Defaults to `0.95`.
    pub histogram_percentiles: Vec<f64>,
    /// `DD_DOGSTATSD_EXPIRY_SECONDS`: idle counters are sent as 0 this long
    /// after their last sample; 0 turns it off. Defaults to 300.
    pub counter_expiry_secs: u64,
    /// `DD_DOGSTATSD_TAGS`: tags on every metric, event and service check
    /// received over DogStatsD (not on `dynostat.*`). Defaults to none.
    pub dogstatsd_tags: Vec<String>,
    /// `DD_DOGSTATSD_MAPPER_PROFILES`: the Agent's JSON. Defaults to none.
    pub mapper_profiles: Vec<MapperProfile>,
    /// `DD_DOGSTATSD_MAPPER_CACHE_SIZE`: mapped names remembered. Defaults to 1000.
    pub mapper_cache_size: usize,
    /// `DD_STATSD_METRIC_NAMESPACE`, with a `.` added. Defaults to none.
    pub metric_namespace: String,
    /// `DD_STATSD_METRIC_NAMESPACE_BLACKLIST`: prefixes never namespaced.
    /// Defaults to [`STANDARD_STATSD_PREFIXES`].
    pub namespace_exceptions: Vec<String>,
    /// `DD_METRIC_FILTERLIST` when it is set, else
    /// `DD_STATSD_METRIC_BLOCKLIST`, as the Agent reads them: metric names
    /// dropped, and histogram aggregates (`h.max`) not sent. Defaults to none.
    pub metric_blocklist: Vec<String>,
    /// `DD_METRIC_FILTERLIST_MATCH_PREFIX` with the filterlist, else
    /// `DD_STATSD_METRIC_BLOCKLIST_MATCH_PREFIX`: the list holds prefixes.
    /// Defaults to false.
    pub blocklist_match_prefix: bool,
    /// Problems that did not stop the configuration: on a dyno, invalid
    /// settings replaced by their defaults; in both modes, skipped entries
    /// of a list. Each names the variable, the value and what was used.
    pub notes: Vec<ConfigError>,
    /// [`UNSUPPORTED`] variables that are set, with why they do nothing.
    pub ignored: Vec<ConfigError>,
    /// [`MIGRATION`] variables that are set, with what dynostat does instead.
    pub migration: Vec<ConfigError>,
    /// Where the official buildpack would look for `prerun.sh`:
    /// `$DD_HEROKU_CONF_FOLDER/prerun.sh` (relative to the app's directory,
    /// the listener's working directory); `serve` warns when the file
    /// exists. Defaults to [`PRERUN_SCRIPT`].
    pub prerun_script: PathBuf,
    /// `DD_DOGSTATSD_STATS_ENABLE` (the Agent's name): send every `dynostat.*`
    /// counter to Datadog, each a custom metric on the user's bill. Without
    /// it only `dynostat.dropped` is sent, and only when data was lost; the
    /// console shows everything either way. Defaults to false.
    pub stats_enabled: bool,
    /// `DYNOSTAT_CARDINALITY_WARN`: contexts of one metric name in one
    /// interval past which one line (per name, per hour) names the metric,
    /// its contexts and its tag key with the most values; 0 turns it off.
    /// Defaults to 1000.
    pub cardinality_warn: usize,
    /// `DD_LOG_LEVEL`. Defaults to `info`.
    pub log_level: LogLevel,
    /// `DYNOSTAT_FLUSH_INTERVAL`: seconds per bucket. Defaults to 10.
    pub flush_interval: Duration,
    /// `DYNOSTAT_MEMORY_LIMIT`: the process's memory ceiling over its own
    /// pages, split into shares ([`defaults::AGGREGATE_EIGHTHS`]). Defaults
    /// to 64 MiB.
    pub memory_limit: usize,
    /// `DYNOSTAT_CONTEXT_LIMIT`: live contexts per interval; past it new
    /// contexts are counted as dropped. Defaults to the aggregation share of
    /// the memory limit over 256 bytes (65536 at 64 MiB).
    pub context_limit: usize,
    /// `DYNOSTAT_RETRY_QUEUE_BYTES`: bytes of payloads held for retry.
    /// Defaults to a quarter of the memory limit (16 MiB at 64 MiB).
    pub retry_queue_bytes: usize,
    /// `DYNOSTAT_SHUTDOWN_GRACE`: seconds to keep receiving after SIGTERM. Defaults to 1.
    pub shutdown_grace: Duration,
    /// `DYNOSTAT_SHUTDOWN_TIMEOUT`: seconds to flush and drain the retry queue
    /// after the grace period. Defaults to 5.
    pub shutdown_timeout: Duration,
    /// `DYNOSTAT_CONSOLE`: print each flush as a table on stdout. Defaults to
    /// true when there is no API key and we are not on a dyno (`DYNO` unset).
    pub console: bool,
    /// `DYNOSTAT_CONSOLE_TTY`: whether the console's reader is a terminal
    /// (Unicode sparklines) or not (ASCII). `dynostat start` sets it from its
    /// own stdout, since the listener's stdout is the runner's pipe.
    /// Defaults to none: stdout is asked.
    pub console_tty: Option<bool>,
    /// `NO_COLOR`: any non-empty value makes the console plain ASCII.
    pub no_color: bool,
    /// `DYNOSTAT_PROGRESS_FD`: where the watchdog tells the agent that every
    /// loop moves (`crate::progress`); set by the agent only.
    pub progress_fd: Option<i32>,
    /// `DYNOSTAT_TEST_STALL` (hidden, for tests): the line
    /// `dynostat-test-stall` makes its receive thread spin forever, holding
    /// the aggregator, so the watchdog and the shutdown deadline can be tested.
    pub test_stall: bool,
    /// `DYNO`, when on a dyno (or under `dynostat start`).
    pub dyno: Option<String>,
    /// `DYNOSTAT_DYNO_METRICS`: report the dyno's memory, load and CPU as
    /// `heroku.dyno.*` (DESIGN §5b). Defaults to true where `DYNO` is set.
    pub dyno_metrics: bool,
    /// The proxies for the intake, read as the Agent reads them (see
    /// [`Proxy`]). Defaults to none.
    pub proxy: Proxy,
    /// The trace relay (`DD_APM_*`; see [`TraceConfig`]).
    pub trace: TraceConfig,
    /// The Postgres and Redis checks (`DD_ENABLE_HEROKU_POSTGRES`, ...;
    /// see [`ChecksConfig`]). Defaults to none.
    pub checks: ChecksConfig,
}

impl Config {
    /// The aggregation's share of [`Config::memory_limit`]: what the live
    /// interval and the buckets being flushed may hold together.
    pub fn aggregate_memory_bytes(&self) -> usize {
        defaults::aggregate_bytes(self.memory_limit)
    }

    /// Reads the real environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&ProcessEnv)
    }

    /// Reads the real environment as on a dyno: see [`Config::from_lookup_on_dyno`].
    pub fn from_env_on_dyno() -> Result<Self, ConfigError> {
        Self::from_lookup_on_dyno(&ProcessEnv)
    }

    /// Reads any [`Env`]; unit tests pass a map. Any invalid value is the error.
    pub fn from_lookup(env: &dyn Env) -> Result<Self, ConfigError> {
        Self::read(env, false)
    }

    /// As [`Config::from_lookup`], but an invalid setting other than the
    /// [`FATAL`] ones is noted in [`Config::notes`] and replaced by its default.
    pub fn from_lookup_on_dyno(env: &dyn Env) -> Result<Self, ConfigError> {
        Self::read(env, true)
    }

    #[allow(clippy::too_many_lines)] // one setting after the other
    fn read(env: &dyn Env, on_dyno: bool) -> Result<Self, ConfigError> {
        let r = Reader(env);
        let mut n = Notes {
            on_dyno,
            notes: Vec::new(),
        };
        let api_key = r
            .string("DD_API_KEY")?
            .filter(|k| !k.trim().is_empty())
            .map(|k| ApiKey::new(&k));
        let site = n.or(
            r.string("DD_SITE").and_then(|site| match site {
                Some(site)
                    if site.is_empty()
                        || site.contains('/')
                        || site.contains(char::is_whitespace) =>
                {
                    Err(ConfigError::new(
                        "DD_SITE",
                        &site,
                        "not a Datadog site; use e.g. datadoghq.com, datadoghq.eu or us5.datadoghq.com",
                    ))
                }
                Some(site) => Ok(site),
                None => Ok(defaults::SITE.to_owned()),
            }),
            defaults::SITE.to_owned(),
            defaults::SITE,
        )?;
        let default_url = format!("https://api.{site}");
        let intake_url = n.or(
            r.string("DD_DD_URL")
                .and_then(|url| match url.filter(|s| !s.is_empty()) {
                    Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                        Err(ConfigError::new(
                            "DD_DD_URL",
                            &url,
                            "must start with http:// or https://, e.g. https://api.datadoghq.com",
                        ))
                    }
                    Some(url) => Ok(url.trim_end_matches('/').to_owned()),
                    None => Ok(default_url.clone()),
                }),
            default_url.clone(),
            &default_url,
        )?;
        let non_local = n
            .or(r.bool("DD_DOGSTATSD_NON_LOCAL_TRAFFIC"), None, "false")?
            .unwrap_or(false);
        let default_bind = if non_local {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([127, 0, 0, 1])
        };
        let bind_host = n.or(
            r.string("DD_BIND_HOST")
                .and_then(|h| match h.filter(|s| !s.is_empty()) {
                    Some(h) if h == "localhost" => Ok(IpAddr::from([127, 0, 0, 1])),
                    Some(h) => h.parse().map_err(|_| {
                        ConfigError::new(
                            "DD_BIND_HOST",
                            &h,
                            "not an IP address; use e.g. 127.0.0.1 or 0.0.0.0",
                        )
                    }),
                    None => Ok(default_bind),
                }),
            default_bind,
            &default_bind.to_string(),
        )?;
        // Fatal everywhere: without a port or a socket nothing is received.
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
        if port == 0 && socket.is_none() {
            return Err(ConfigError::new(
                "DD_DOGSTATSD_PORT",
                "0",
                "nothing to listen on: UDP is off and DD_DOGSTATSD_SOCKET is not set; set one of them",
            ));
        }
        let buffer_size = n
            .or(
                r.uint("DD_DOGSTATSD_BUFFER_SIZE", 512, 65_536),
                None,
                "8192",
            )?
            .unwrap_or(defaults::BUFFER_SIZE);
        let so_rcvbuf = n
            .or(r.uint("DD_DOGSTATSD_SO_RCVBUF", 0, 1 << 30), None, "25 MiB")?
            .unwrap_or(defaults::SO_RCVBUF);

        let dyno = n
            .or(r.string("DYNO"), None, "none")?
            .filter(|s| !s.is_empty());
        let app_name = n
            .or(r.string("HEROKU_APP_NAME"), None, "none")?
            .filter(|s| !s.is_empty());
        let mut global_tags = Vec::new();
        // `DD_EXTRA_TAGS` is the Agent's `extra_tags`: more host-level tags,
        // added to `DD_TAGS`.
        for var in ["DD_TAGS", "DD_EXTRA_TAGS"] {
            if let Some(tags) = n.or(r.string(var), None, "none")? {
                global_tags.extend(split_list(&tags).map(str::to_owned));
            }
        }
        // `DD_SERVICE` and `DD_VERSION` are not added: the Agent does not add
        // them to DogStatsD metrics (clients do, from the same variables), and
        // a metric sent with its own `service:` would get two.
        for (var, key) in [("DD_ENV", "env")] {
            if let Some(v) = n
                .or(r.string(var), None, "none")?
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
        let dogstatsd_tags: Vec<String> = n
            .or(r.string("DD_DOGSTATSD_TAGS"), None, "none")?
            .map(|t| split_list(&t).map(str::to_owned).collect())
            .unwrap_or_default();

        let hostname = match n
            .or(r.string("DD_HOSTNAME"), None, "none")?
            .filter(|s| !s.trim().is_empty())
        {
            Some(h) => Some(h.trim().to_owned()),
            None if n
                .or(r.bool("DD_DYNO_HOST"), None, "false")?
                .unwrap_or(false) =>
            {
                // As the official buildpack makes it (RFC 1123 characters):
                // the app name keeps `A-Za-z0-9-`, the dyno `.` as well; any
                // other character becomes `-`, and a leading `-` goes.
                match (&app_name, &dyno) {
                    (Some(a), Some(d)) => {
                        Some(format!("{}.{}", host_part(a, false), host_part(d, true)))
                    }
                    (None, Some(d)) => Some(host_part(d, true)),
                    _ => None,
                }
            }
            None => None,
        };

        let histogram_aggregates = match n.or(r.string("DD_HISTOGRAM_AGGREGATES"), None, "")? {
            Some(list) => parse_aggregates(&list, &mut n)?,
            None => defaults::HISTOGRAM_AGGREGATES.to_vec(),
        };
        let histogram_percentiles = match n.or(r.string("DD_HISTOGRAM_PERCENTILES"), None, "")? {
            Some(list) => parse_percentiles(&list, &mut n)?,
            None => defaults::PERCENTILES.to_vec(),
        };
        let log_level = n.or(
            r.string("DD_LOG_LEVEL").and_then(|l| match l {
                Some(l) => match l.trim().to_ascii_lowercase().as_str() {
                    "error" | "critical" => Ok(LogLevel::Error),
                    "warn" | "warning" => Ok(LogLevel::Warn),
                    "info" | "" => Ok(LogLevel::Info),
                    "debug" => Ok(LogLevel::Debug),
                    "trace" => Ok(LogLevel::Trace),
                    _ => Err(ConfigError::new(
                        "DD_LOG_LEVEL",
                        &l,
                        "not a log level; use error, warn, info, debug or trace",
                    )),
                },
                None => Ok(LogLevel::Info),
            }),
            LogLevel::Info,
            "info",
        )?;
        let counter_expiry_secs = n
            .or(
                r.uint("DD_DOGSTATSD_EXPIRY_SECONDS", 0, 31_536_000),
                None,
                "300",
            )?
            .map_or(defaults::EXPIRY_SECONDS, |v| v as u64);
        let mapper_profiles = n.or(
            r.string("DD_DOGSTATSD_MAPPER_PROFILES")
                .and_then(|json| match json {
                    Some(json) => parse_mapper_profiles(&json).map_err(|reason| {
                        ConfigError::new("DD_DOGSTATSD_MAPPER_PROFILES", &json, reason)
                    }),
                    None => Ok(Vec::new()),
                }),
            Vec::new(),
            "no mapping",
        )?;
        let mapper_cache_size = n
            .or(
                r.uint("DD_DOGSTATSD_MAPPER_CACHE_SIZE", 1, 10_000_000),
                None,
                "1000",
            )?
            .unwrap_or(defaults::MAPPER_CACHE_SIZE);
        let metric_namespace = n
            .or(r.string("DD_STATSD_METRIC_NAMESPACE"), None, "none")?
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .map(|ns| if ns.ends_with('.') { ns } else { ns + "." })
            .unwrap_or_default();
        // The Agent reads these lists from the environment split on spaces.
        let words = |s: String| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let namespace_exceptions = n
            .or(r.string("DD_STATSD_METRIC_NAMESPACE_BLACKLIST"), None, "")?
            .map_or_else(
                || {
                    STANDARD_STATSD_PREFIXES
                        .iter()
                        .map(|p| (*p).to_owned())
                        .collect()
                },
                words,
            );
        let mut metric_blocklist = n
            .or(r.string("DD_STATSD_METRIC_BLOCKLIST"), None, "none")?
            .map(words)
            .unwrap_or_default();
        let mut blocklist_match_prefix = n
            .or(
                r.bool("DD_STATSD_METRIC_BLOCKLIST_MATCH_PREFIX"),
                None,
                "false",
            )?
            .unwrap_or(false);
        // The Agent's `metric_filterlist` (comp/filterlist): when it is not
        // empty it replaces `statsd_metric_blocklist`, with its own prefix flag.
        let filterlist = n
            .or(r.string("DD_METRIC_FILTERLIST"), None, "none")?
            .map(words)
            .unwrap_or_default();
        let filterlist_match_prefix = n
            .or(r.bool("DD_METRIC_FILTERLIST_MATCH_PREFIX"), None, "false")?
            .unwrap_or(false);
        if !filterlist.is_empty() {
            metric_blocklist = filterlist;
            blocklist_match_prefix = filterlist_match_prefix;
        }
        let flush_interval = Duration::from_secs(
            n.or(r.uint("DYNOSTAT_FLUSH_INTERVAL", 1, 3600), None, "10")?
                .map_or(defaults::FLUSH_INTERVAL_SECS, |v| v as u64),
        );
        let memory_limit = n
            .or(
                r.bytes(
                    "DYNOSTAT_MEMORY_LIMIT",
                    defaults::MIN_MEMORY_LIMIT,
                    64 << 30,
                ),
                None,
                "64MiB",
            )?
            .unwrap_or(defaults::MEMORY_LIMIT);
        let context_limit = n
            .or(
                r.uint("DYNOSTAT_CONTEXT_LIMIT", 1, usize::MAX),
                None,
                "from DYNOSTAT_MEMORY_LIMIT",
            )?
            .unwrap_or_else(|| defaults::context_limit(memory_limit));
        let retry_queue_bytes = n
            .or(
                r.uint("DYNOSTAT_RETRY_QUEUE_BYTES", 0, usize::MAX),
                None,
                "a quarter of DYNOSTAT_MEMORY_LIMIT",
            )?
            .unwrap_or_else(|| defaults::retry_queue_bytes(memory_limit));
        let shutdown_grace = n
            .or(r.seconds("DYNOSTAT_SHUTDOWN_GRACE", 0.0, 20.0), None, "1")?
            .unwrap_or(defaults::SHUTDOWN_GRACE_SECS);
        let shutdown_timeout = n
            .or(r.seconds("DYNOSTAT_SHUTDOWN_TIMEOUT", 0.0, 25.0), None, "5")?
            .unwrap_or(defaults::SHUTDOWN_TIMEOUT_SECS);
        let console_default = api_key.is_none() && dyno.is_none();
        let console = n
            .or(
                r.bool("DYNOSTAT_CONSOLE"),
                None,
                if console_default { "true" } else { "false" },
            )?
            .unwrap_or(console_default);
        let console_tty = n.or(r.bool(vars::DYNOSTAT_CONSOLE_TTY), None, "ask stdout")?;
        let no_color = n
            .or(r.string(vars::NO_COLOR), None, "unset")?
            .is_some_and(|v| !v.is_empty());
        let progress_fd = n
            .or(
                r.uint(vars::DYNOSTAT_PROGRESS_FD, 3, 65_535),
                None,
                "no watchdog",
            )?
            .and_then(|fd| i32::try_from(fd).ok());
        let test_stall = n
            .or(r.bool(vars::DYNOSTAT_TEST_STALL), None, "false")?
            .unwrap_or(false);
        let dyno_metrics = n
            .or(
                r.bool("DYNOSTAT_DYNO_METRICS"),
                None,
                if dyno.is_some() { "true" } else { "false" },
            )?
            .unwrap_or(dyno.is_some());
        let proxy = n.or(Proxy::from_reader(&r), Proxy::default(), "no proxy")?;
        let stats_enabled = n
            .or(r.bool("DD_DOGSTATSD_STATS_ENABLE"), None, "false")?
            .unwrap_or(false);
        let cardinality_warn = n
            .or(
                r.uint("DYNOSTAT_CARDINALITY_WARN", 0, usize::MAX),
                None,
                "1000",
            )?
            .unwrap_or(defaults::CARDINALITY_WARN);
        let prerun_script = match n
            .or(r.string("DD_HEROKU_CONF_FOLDER"), None, "datadog")?
            .map(|f| f.trim().trim_matches('/').to_owned())
            .filter(|f| !f.is_empty())
        {
            Some(folder) => PathBuf::from(folder).join("prerun.sh"),
            None => PathBuf::from(PRERUN_SCRIPT),
        };
        let trace = TraceConfig::read(&r, &mut n, &site)?;
        let checks = ChecksConfig::read(env, &|| super::app_procfile_types(env));

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
            counter_expiry_secs,
            dogstatsd_tags,
            mapper_profiles,
            mapper_cache_size,
            metric_namespace,
            namespace_exceptions,
            metric_blocklist,
            blocklist_match_prefix,
            log_level,
            flush_interval,
            memory_limit,
            context_limit,
            retry_queue_bytes,
            shutdown_grace: Duration::from_secs_f64(shutdown_grace),
            shutdown_timeout: Duration::from_secs_f64(shutdown_timeout),
            console,
            console_tty,
            no_color,
            progress_fd,
            test_stall,
            dyno,
            dyno_metrics,
            proxy,
            stats_enabled,
            cardinality_warn,
            prerun_script,
            migration: MIGRATION
                .iter()
                .filter_map(|&(var, instead)| {
                    let value = env.get(var)?;
                    Some(ConfigError::new(
                        var,
                        &value.to_string_lossy(),
                        format!("an official Datadog buildpack setting: {instead}"),
                    ))
                })
                .collect(),
            trace,
            checks,
            notes: n.notes,
            ignored: UNSUPPORTED
                .iter()
                .filter_map(|&(var, why)| {
                    let value = env.get(var)?;
                    Some(ConfigError::new(
                        var,
                        &value.to_string_lossy(),
                        format!("not supported by dynostat ({why}); ignored"),
                    ))
                })
                .collect(),
        })
    }
}

/// Collects what did not stop the configuration (see [`Config::notes`]).
pub(super) struct Notes {
    on_dyno: bool,
    notes: Vec<ConfigError>,
}

impl Notes {
    /// An optional setting's value; on a dyno, an invalid one becomes its
    /// `default` (shown as `shown`) and a note.
    pub(super) fn or<T>(
        &mut self,
        result: Result<T, ConfigError>,
        default: T,
        shown: &str,
    ) -> Result<T, ConfigError> {
        match result {
            Ok(v) => Ok(v),
            Err(mut e) if self.on_dyno && !FATAL.contains(&e.var) => {
                e.reason = format!("{}; using the default ({shown})", e.reason);
                self.notes.push(e);
                Ok(default)
            }
            Err(e) => Err(e),
        }
    }

    /// The bad entries of a list: an error in a terminal; on a dyno they
    /// are skipped, as the Agent skips them, with one note; when no good
    /// entry is left, the note says the default is used instead.
    fn skip(
        &mut self,
        bad: Vec<ConfigError>,
        nothing_left: bool,
        shown: &str,
    ) -> Result<(), ConfigError> {
        let Some(mut first) = bad.into_iter().next() else {
            return Ok(());
        };
        if !self.on_dyno {
            return Err(first);
        }
        first.reason = if nothing_left {
            format!("{}; using the default ({shown})", first.reason)
        } else {
            format!("{}; skipped", first.reason)
        };
        self.notes.push(first);
        Ok(())
    }
}

/// Items of a list separated by commas or whitespace.
fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
}

/// `DD_HISTOGRAM_AGGREGATES`: each of `max min median avg sum count`, in
/// order, duplicates once. A bad entry is an error in a terminal and is
/// skipped on a dyno; a list left with no entry means the default.
fn parse_aggregates(list: &str, n: &mut Notes) -> Result<Vec<HistogramAggregate>, ConfigError> {
    const VAR: &str = "DD_HISTOGRAM_AGGREGATES";
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for item in split_list(list) {
        let agg = match item.to_ascii_lowercase().as_str() {
            "max" => HistogramAggregate::Max,
            "min" => HistogramAggregate::Min,
            "median" => HistogramAggregate::Median,
            "avg" => HistogramAggregate::Avg,
            "sum" => HistogramAggregate::Sum,
            "count" => HistogramAggregate::Count,
            _ => {
                bad.push(ConfigError::new(
                    VAR,
                    list,
                    format!(
                        "unknown aggregate {item:?}; use any of max, min, median, avg, sum, count"
                    ),
                ));
                continue;
            }
        };
        if !out.contains(&agg) {
            out.push(agg);
        }
    }
    let nothing_left = !bad.is_empty() && out.is_empty();
    n.skip(bad, nothing_left, "max median avg count")?;
    if nothing_left {
        return Ok(defaults::HISTOGRAM_AGGREGATES.to_vec());
    }
    Ok(out)
}

/// `DD_HISTOGRAM_PERCENTILES`: fractions in the Agent's range [0, 1]
/// (pkg/metrics/histogram.go `ParsePercentiles`, which skips a bad entry
/// with an error log). A bad entry is an error in a terminal and is skipped
/// on a dyno; a list left with no entry means the default.
fn parse_percentiles(list: &str, n: &mut Notes) -> Result<Vec<f64>, ConfigError> {
    const VAR: &str = "DD_HISTOGRAM_PERCENTILES";
    let mut out: Vec<f64> = Vec::new();
    let mut bad = Vec::new();
    for item in split_list(list) {
        match item.parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            _ => bad.push(ConfigError::new(
                VAR,
                list,
                format!(
                    "{item:?} is not a percentile; use fractions from 0 to 1, e.g. \"0.95 0.99\""
                ),
            )),
        }
    }
    let nothing_left = !bad.is_empty() && out.is_empty();
    n.skip(bad, nothing_left, "0.95")?;
    if nothing_left {
        return Ok(defaults::PERCENTILES.to_vec());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::*;

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
        assert!(!c.dyno_metrics, "off where DYNO is not set");
    }

    #[test]
    fn dyno_metrics_on_a_dyno_unless_turned_off() {
        let on = |pairs: &[(&str, &str)]| {
            Config::from_lookup(&env(pairs))
                .expect("valid")
                .dyno_metrics
        };
        assert!(on(&[("DYNO", "web.1")]));
        assert!(!on(&[
            ("DYNO", "web.1"),
            ("DYNOSTAT_DYNO_METRICS", "false")
        ]));
        assert!(on(&[("DYNOSTAT_DYNO_METRICS", "true")]));
        let err = Config::from_lookup(&env(&[("DYNOSTAT_DYNO_METRICS", "maybe")])).unwrap_err();
        assert_eq!(err.var, "DYNOSTAT_DYNO_METRICS");
    }

    #[test]
    fn one_memory_limit_sets_the_per_type_defaults() {
        let c = Config::from_lookup(&env(&[])).expect("defaults are valid");
        assert_eq!(c.memory_limit, 64 << 20);
        assert_eq!(c.aggregate_memory_bytes(), 16 << 20);
        assert_eq!(c.context_limit, 65_536);
        assert_eq!(c.retry_queue_bytes, 16 << 20);
        let c = Config::from_lookup(&env(&[("DYNOSTAT_MEMORY_LIMIT", "32MiB")])).expect("valid");
        assert_eq!(c.memory_limit, 32 << 20);
        assert_eq!(c.context_limit, 32_768);
        assert_eq!(c.retry_queue_bytes, 8 << 20);
        let c = Config::from_lookup(&env(&[("DYNOSTAT_MEMORY_LIMIT", "100MB")])).expect("valid");
        assert_eq!(c.memory_limit, 100_000_000);
        // Explicit per-type values win.
        let c = Config::from_lookup(&env(&[
            ("DYNOSTAT_MEMORY_LIMIT", "32MiB"),
            ("DYNOSTAT_CONTEXT_LIMIT", "500"),
            ("DYNOSTAT_RETRY_QUEUE_BYTES", "1000"),
        ]))
        .expect("valid");
        assert_eq!((c.context_limit, c.retry_queue_bytes), (500, 1000));
        for bad in ["lots", "1MiB", "64TB", "-5"] {
            let e = Config::from_lookup(&env(&[("DYNOSTAT_MEMORY_LIMIT", bad)])).unwrap_err();
            assert_eq!(e.var, "DYNOSTAT_MEMORY_LIMIT");
            assert!(e.to_string().contains("e.g. 64MiB"), "{e}");
        }
    }

    #[test]
    fn dyno_host_is_cleaned_to_rfc_1123_as_the_official_buildpack_does() {
        let host = |app: &str, dyno: &str| {
            Config::from_lookup(&env(&[
                ("DD_DYNO_HOST", "true"),
                ("HEROKU_APP_NAME", app),
                ("DYNO", dyno),
            ]))
            .expect("valid")
            .hostname
        };
        assert_eq!(host("shop", "web.1").as_deref(), Some("shop.web.1"));
        assert_eq!(
            host("_my_app!", "run.1234").as_deref(),
            Some("my-app-.run.1234")
        );
        assert_eq!(
            host("shop", "web-12a34b56d-e78f9").as_deref(),
            Some("shop.web-12a34b56d-e78f9")
        );
        assert_eq!(host("shop", "w\u{e9}b.1").as_deref(), Some("shop.w-b.1"));
        // DD_HOSTNAME is used as given.
        let c = Config::from_lookup(&env(&[("DD_HOSTNAME", "my_host")])).expect("valid");
        assert_eq!(c.hostname.as_deref(), Some("my_host"));
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
                "team:a",
                "tier:b",
            ],
            "DD_SERVICE and DD_VERSION are the clients' to add, as with the Agent"
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
    fn api_key_is_redacted() {
        let c = Config::from_lookup(&env(&[("DD_API_KEY", "sekrit-123")])).expect("valid");
        let dump = format!("{c:?}");
        assert!(!dump.contains("sekrit"), "{dump}");
        assert_eq!(c.api_key.as_ref().map(ApiKey::expose), Some("sekrit-123"));
    }

    #[test]
    fn percentiles_take_the_agents_range_and_skip_bad_entries_on_a_dyno() {
        let c =
            Config::from_lookup(&env(&[("DD_HISTOGRAM_PERCENTILES", "0 0.5 1")])).expect("valid");
        assert_eq!(c.histogram_percentiles, vec![0.0, 0.5, 1.0]);
        for bad in ["2", "-0.1", "x", "0.5,nan"] {
            let e = Config::from_lookup(&env(&[("DD_HISTOGRAM_PERCENTILES", bad)])).unwrap_err();
            assert_eq!(e.var, "DD_HISTOGRAM_PERCENTILES", "{bad}");
        }
        let c = Config::from_lookup_on_dyno(&env(&[("DD_HISTOGRAM_PERCENTILES", "0.5 2 0.99")]))
            .expect("a bad entry is skipped");
        assert_eq!(c.histogram_percentiles, vec![0.5, 0.99]);
        assert_eq!(c.notes.len(), 1);
        assert!(
            c.notes[0].to_string().contains("\"2\" is not a percentile"),
            "{}",
            c.notes[0]
        );
        // Nothing valid left: the default, in one note.
        let c = Config::from_lookup_on_dyno(&env(&[("DD_HISTOGRAM_PERCENTILES", "2")]))
            .expect("default");
        assert_eq!(c.histogram_percentiles, vec![0.95]);
        assert_eq!(c.notes.len(), 1);
        assert!(
            c.notes[0].reason.contains("using the default (0.95)"),
            "{}",
            c.notes[0]
        );
        let c = Config::from_lookup_on_dyno(&env(&[("DD_HISTOGRAM_AGGREGATES", "max,p99 sum")]))
            .expect("a bad entry is skipped");
        assert_eq!(
            c.histogram_aggregates,
            vec![HistogramAggregate::Max, HistogramAggregate::Sum]
        );
        assert!(Config::from_lookup(&env(&[("DD_HISTOGRAM_AGGREGATES", "max,p99")])).is_err());
    }

    #[test]
    fn on_a_dyno_optional_settings_fall_back_and_only_fatal_ones_stop() {
        let bad = [
            ("DD_LOG_LEVEL", "loud"),
            ("DYNOSTAT_FLUSH_INTERVAL", "0"),
            ("DD_DOGSTATSD_EXPIRY_SECONDS", "-1"),
            ("DD_DOGSTATSD_MAPPER_PROFILES", "{"),
            ("DD_SITE", "https://datadoghq.eu"),
            ("DD_BIND_HOST", "local"),
            ("DYNOSTAT_CONSOLE", "maybe"),
        ];
        for (var, value) in bad {
            let e = Config::from_lookup(&env(&[(var, value)])).expect_err(var);
            assert_eq!(e.var, var);
            let c = Config::from_lookup_on_dyno(&env(&[(var, value)])).expect(var);
            assert_eq!(c.notes.len(), 1, "{var}: {:?}", c.notes);
            let note = c.notes[0].to_string();
            assert!(note.starts_with(&format!("{var}={value}: ")), "{note}");
            assert!(note.contains("using the default ("), "{note}");
        }
        let c = Config::from_lookup_on_dyno(&env(&bad)).expect("all fall back");
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.flush_interval, Duration::from_secs(10));
        assert_eq!(c.counter_expiry_secs, 300);
        assert!(c.mapper_profiles.is_empty());
        assert_eq!(c.intake_url, "https://api.datadoghq.com");
        assert_eq!(c.bind_host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.notes.len(), bad.len());
        for fatal in [
            vec![("DD_DOGSTATSD_PORT", "80a")],
            vec![("DD_DOGSTATSD_PORT", "0")],
        ] {
            assert!(
                Config::from_lookup_on_dyno(&env(&fatal)).is_err(),
                "{fatal:?}"
            );
            assert!(Config::from_lookup(&env(&fatal)).is_err(), "{fatal:?}");
        }
        let c = Config::from_lookup(&env(&[
            ("DD_DOGSTATSD_PORT", "0"),
            ("DD_DOGSTATSD_SOCKET", "/tmp/x.sock"),
        ]))
        .expect("a socket alone is enough");
        assert_eq!(c.port, 0);
    }

    #[test]
    fn dogstatsd_settings_with_agent_names_and_defaults() {
        let c = Config::from_lookup(&env(&[])).expect("defaults");
        assert_eq!(c.counter_expiry_secs, 300);
        assert!(c.dogstatsd_tags.is_empty());
        assert_eq!(c.mapper_cache_size, 1000);
        assert_eq!(c.metric_namespace, "");
        assert_eq!(c.namespace_exceptions.len(), STANDARD_STATSD_PREFIXES.len());
        assert!(c.namespace_exceptions.iter().any(|p| p == "sidekiq"));
        assert!(c.metric_blocklist.is_empty() && !c.blocklist_match_prefix);
        let c = Config::from_lookup(&env(&[
            ("DD_DOGSTATSD_EXPIRY_SECONDS", "0"),
            ("DD_DOGSTATSD_TAGS", "team:a, region:eu"),
            ("DD_EXTRA_TAGS", "extra:1"),
            ("DD_TAGS", "t:1"),
            ("DD_STATSD_METRIC_NAMESPACE", "app"),
            ("DD_STATSD_METRIC_NAMESPACE_BLACKLIST", "jvm sidekiq"),
            ("DD_STATSD_METRIC_BLOCKLIST", "a.b  c.d"),
            ("DD_STATSD_METRIC_BLOCKLIST_MATCH_PREFIX", "true"),
            ("DD_DOGSTATSD_MAPPER_CACHE_SIZE", "5"),
            (
                "DD_DOGSTATSD_MAPPER_PROFILES",
                r#"[{"name":"p","prefix":"p.","mappings":[{"match":"p.*","name":"q","tags":{"x":"$1"}}]}]"#,
            ),
        ]))
        .expect("valid");
        assert_eq!(c.counter_expiry_secs, 0);
        assert_eq!(c.dogstatsd_tags, ["team:a", "region:eu"]);
        assert_eq!(c.global_tags, ["extra:1", "t:1"]);
        assert_eq!(c.metric_namespace, "app.");
        assert_eq!(c.namespace_exceptions, ["jvm", "sidekiq"]);
        assert_eq!(c.metric_blocklist, ["a.b", "c.d"]);
        assert!(c.blocklist_match_prefix);
        assert_eq!(c.mapper_cache_size, 5);
        assert_eq!(c.mapper_profiles[0].rules.len(), 1);
        assert!(Config::from_lookup(&env(&[("DD_DOGSTATSD_MAPPER_CACHE_SIZE", "0")])).is_err());
        let c =
            Config::from_lookup(&env(&[("DD_STATSD_METRIC_NAMESPACE", "app.")])).expect("valid");
        assert_eq!(c.metric_namespace, "app.");
    }

    #[test]
    fn unsupported_agent_settings_are_reported_not_silently_ignored() {
        let c = Config::from_lookup(&env(&[
            ("DD_STATSD_FORWARD_HOST", "10.0.0.1"),
            ("DD_DOGSTATSD_QUEUE_SIZE", "2048"),
        ]))
        .expect("still valid");
        let got: Vec<String> = c.ignored.iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("DD_DOGSTATSD_QUEUE_SIZE=2048: not supported"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("DD_STATSD_FORWARD_HOST=10.0.0.1: not supported"),
            "{got:?}"
        );
        assert!(Config::from_lookup(&env(&[]))
            .expect("valid")
            .ignored
            .is_empty());
    }
}
