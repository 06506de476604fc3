//! The trace relay's configuration: [`TraceConfig`], part of
//! [`super::Config`] (read in the same pass, with the same on-dyno rules).
//!
//! Names are the Agent's (`DD_APM_*`), so an app moving off the official
//! buildpack renames nothing. Must never: read the environment other than
//! through the [`Reader`] it is given.

use std::path::PathBuf;

use super::serve::Notes;
use super::{ConfigError, Reader};

/// `DD_APM_RECEIVER_PORT` by default, as in the Agent.
pub const DEFAULT_PORT: u16 = 8126;
/// `DD_APM_MAX_TPS` by default: the priority sampler's target, as in the Agent.
pub const DEFAULT_MAX_TPS: f64 = 10.0;
/// `DD_APM_ERROR_TPS` by default: the error sampler's target, as in the Agent.
pub const DEFAULT_ERROR_TPS: f64 = 10.0;
/// The trace relay's share of `DYNOSTAT_MEMORY_LIMIT`, in eighths, taken
/// from the half that is not metered otherwise (see `defaults`): request
/// bodies being read and decoded, and kept traces waiting to be encoded.
pub const TRACE_EIGHTHS: usize = 1;

/// The trace relay's settings.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// `DD_APM_ENABLED`: run the relay. Defaults to true.
    pub enabled: bool,
    /// `DD_APM_RECEIVER_PORT`: the TCP port on 127.0.0.1; 0 turns TCP off.
    /// Defaults to 8126.
    pub port: u16,
    /// `DD_APM_RECEIVER_SOCKET`: a Unix stream socket to listen on as well.
    /// Defaults to none.
    pub socket: Option<PathBuf>,
    /// `DD_APM_DD_URL`: the trace intake's base URL. Defaults to
    /// `https://trace.agent.$DD_SITE`.
    pub intake_url: String,
    /// `DD_APM_PROFILING_DD_URL`: where `/profiling/v1/input` goes. Defaults
    /// to `https://intake.profile.$DD_SITE/api/v2/profile`.
    pub profiling_url: String,
    /// `DD_APM_TELEMETRY_DD_URL`: the base of `/telemetry/proxy/…`. Defaults
    /// to `https://instrumentation-telemetry-intake.$DD_SITE`.
    pub telemetry_url: String,
    /// `DD_EVP_PROXY_CONFIG_DD_URL`: the base of `/evp_proxy/…`, instead of
    /// `https://<X-Datadog-EVP-Subdomain>.$DD_SITE`. Defaults to none.
    pub evp_url: Option<String>,
    /// The site, for the EVP subdomains.
    pub site: String,
    /// `DD_APM_MAX_TPS`: the priority sampler's target traces per second.
    /// Defaults to 10.
    pub max_tps: f64,
    /// `DD_APM_ERROR_TPS`: the error sampler's target. Defaults to 10.
    pub error_tps: f64,
    /// `DD_ENV`: filled into traces that carry none. Defaults to none.
    pub env: Option<String>,
    /// `DD_SERVICE`, as the Agent has it: only to pair with `DD_VERSION`.
    pub service: Option<String>,
    /// `DD_VERSION`: filled into the spans of `DD_SERVICE` that carry none.
    pub version: Option<String>,
    /// `DD_APM_OBFUSCATION_CACHE_ENABLED`: keep SQL obfuscation results in a
    /// bounded cache (1 MiB, see docs/DESIGN.md). Defaults to true, as in
    /// the Agent.
    pub obfuscation_cache: bool,
}

impl TraceConfig {
    /// Reads the `DD_APM_*` settings.
    pub(super) fn read(r: &Reader<'_>, n: &mut Notes, site: &str) -> Result<Self, ConfigError> {
        let enabled = n
            .or(r.bool("DD_APM_ENABLED"), None, "true")?
            .unwrap_or(true);
        let port = n
            .or(r.uint("DD_APM_RECEIVER_PORT", 0, 65_535), None, "8126")?
            .map_or(DEFAULT_PORT, |p| u16::try_from(p).unwrap_or(DEFAULT_PORT));
        let socket = n
            .or(r.string("DD_APM_RECEIVER_SOCKET"), None, "none")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let url = |n: &mut Notes, var: &'static str, default: String| {
            n.or(
                r.string(var)
                    .and_then(|u| match u.filter(|s| !s.trim().is_empty()) {
                        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => Err(
                            ConfigError::new(var, &u, "must start with http:// or https://"),
                        ),
                        Some(u) => Ok(u.trim().trim_end_matches('/').to_owned()),
                        None => Ok(default.clone()),
                    }),
                default.clone(),
                &default,
            )
        };
        let intake_url = url(n, "DD_APM_DD_URL", format!("https://trace.agent.{site}"))?;
        let profiling_url = url(
            n,
            "DD_APM_PROFILING_DD_URL",
            format!("https://intake.profile.{site}/api/v2/profile"),
        )?;
        let telemetry_url = url(
            n,
            "DD_APM_TELEMETRY_DD_URL",
            format!("https://instrumentation-telemetry-intake.{site}"),
        )?;
        let evp_url =
            Some(url(n, "DD_EVP_PROXY_CONFIG_DD_URL", String::new())?).filter(|u| !u.is_empty());
        let tps = |n: &mut Notes, var: &'static str, default: f64| -> Result<f64, ConfigError> {
            n.or(
                r.string(var).and_then(|v| match v {
                    Some(v) => match v.trim().parse::<f64>() {
                        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
                        _ => Err(ConfigError::new(
                            var,
                            &v,
                            "not a number of traces per second (0 or more)",
                        )),
                    },
                    None => Ok(default),
                }),
                default,
                "10",
            )
        };
        let obfuscation_cache = n
            .or(r.bool("DD_APM_OBFUSCATION_CACHE_ENABLED"), None, "true")?
            .unwrap_or(true);
        let max_tps = tps(n, "DD_APM_MAX_TPS", DEFAULT_MAX_TPS)?;
        let error_tps = tps(n, "DD_APM_ERROR_TPS", DEFAULT_ERROR_TPS)?;
        let mut word = |var: &'static str| -> Result<Option<String>, ConfigError> {
            Ok(n.or(r.string(var), None, "none")?
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()))
        };
        Ok(Self {
            enabled,
            port,
            socket,
            intake_url,
            profiling_url,
            telemetry_url,
            evp_url,
            site: site.to_owned(),
            max_tps,
            error_tps,
            env: word("DD_ENV")?,
            service: word("DD_SERVICE")?,
            version: word("DD_VERSION")?,
            obfuscation_cache,
        })
    }

    /// The relay's share of `memory_limit`.
    pub fn memory_bytes(memory_limit: usize) -> usize {
        memory_limit / 8 * TRACE_EIGHTHS
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_lookup(&super::super::tests::env(pairs)).expect("valid")
    }

    #[test]
    fn defaults_are_the_agents() {
        let c = config(&[]).trace;
        assert!(c.enabled);
        assert_eq!(c.port, 8126);
        assert_eq!(c.intake_url, "https://trace.agent.datadoghq.com");
        assert_eq!(
            c.telemetry_url,
            "https://instrumentation-telemetry-intake.datadoghq.com"
        );
        assert!((c.max_tps - 10.0).abs() < f64::EPSILON);
        assert!((c.error_tps - 10.0).abs() < f64::EPSILON);
        assert!(c.obfuscation_cache);
        let eu = config(&[("DD_SITE", "datadoghq.eu")]).trace;
        assert_eq!(eu.intake_url, "https://trace.agent.datadoghq.eu");
    }

    #[test]
    fn overrides_and_errors_name_the_variable() {
        let c = config(&[
            ("DD_APM_ENABLED", "false"),
            ("DD_APM_RECEIVER_PORT", "9126"),
            ("DD_APM_DD_URL", "http://127.0.0.1:1/"),
            ("DD_APM_MAX_TPS", "2.5"),
            ("DD_APM_OBFUSCATION_CACHE_ENABLED", "false"),
        ])
        .trace;
        assert!(!c.enabled);
        assert!(!c.obfuscation_cache);
        assert_eq!(c.port, 9126);
        assert_eq!(c.intake_url, "http://127.0.0.1:1");
        assert!((c.max_tps - 2.5).abs() < f64::EPSILON);
        let e = Config::from_lookup(&super::super::tests::env(&[("DD_APM_RECEIVER_PORT", "x")]))
            .expect_err("bad port");
        assert_eq!(e.var, "DD_APM_RECEIVER_PORT");
        let e = Config::from_lookup(&super::super::tests::env(&[("DD_APM_DD_URL", "trace")]))
            .expect_err("bad url");
        assert_eq!(e.var, "DD_APM_DD_URL");
    }
}
