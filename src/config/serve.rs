//! The configuration of `dynostat serve`: [`Config`].
//!
//! In: an [`Env`]. Out: [`Config`], or a [`ConfigError`] naming the variable
//! and the fix. Must never: read the environment other than through the
//! [`Env`] it is given, or put the API key in an error.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{defaults, dyno_type, vars, ApiKey, ConfigError, Env, LogLevel, ProcessEnv, Reader};

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
    /// `DYNOSTAT_CONSOLE_TTY`: whether the console's reader is a terminal
    /// (Unicode sparklines) or not (ASCII). `dynostat start` sets it from its
    /// own stdout, since the listener's stdout is the runner's pipe.
    /// Defaults to none: stdout is asked.
    pub console_tty: Option<bool>,
    /// `NO_COLOR`: any non-empty value makes the console plain ASCII.
    pub no_color: bool,
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
        let console_tty = r.bool(vars::DYNOSTAT_CONSOLE_TTY)?;
        let no_color = r.string(vars::NO_COLOR)?.is_some_and(|v| !v.is_empty());

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
            console_tty,
            no_color,
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
    fn api_key_is_redacted() {
        let c = Config::from_lookup(&env(&[("DD_API_KEY", "sekrit-123")])).expect("valid");
        let dump = format!("{c:?}");
        assert!(!dump.contains("sekrit"), "{dump}");
        assert_eq!(c.api_key.as_ref().map(ApiKey::expose), Some("sekrit-123"));
    }
}
