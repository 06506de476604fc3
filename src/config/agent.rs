//! The configuration of `dynostat agent` and the exec.d helper: [`AgentConfig`].
//!
//! In: an [`Env`]. Out: [`AgentConfig`] (built on [`Config`] for the parts
//! they share). Must never: read the environment other than through the
//! [`Env`] it is given, or keep the API key (only whether it is set).

use std::net::IpAddr;

use super::{dyno_type, vars, Config, ConfigError, Env, LogLevel, ProcessEnv, Reader};

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
    /// The trace relay's port (`DD_APM_RECEIVER_PORT`), exported to apps as
    /// `DD_TRACE_AGENT_PORT`; none with `DD_APM_ENABLED=false` or port 0.
    pub trace_port: Option<u16>,
    /// The bind address, as for `serve`.
    pub bind_host: IpAddr,
    /// `DD_LOG_LEVEL`, for the agent's own logging.
    pub log_level: LogLevel,
    /// `DYNOSTAT_WATCH_PID`: a process whose exit means the app is gone (set
    /// by the CNB exec.d program, whose own exit reparents the agent at once).
    /// Defaults to none: the agent watches its parent instead.
    pub watch_pid: Option<i32>,
    /// `DD_AGENT_HOST` is set (to anything): the exec.d helper leaves it alone.
    pub agent_host_set: bool,
    /// `DD_LOG_LEVEL` is set: do not quieten the agent in one-off dynos.
    pub log_level_set: bool,
    /// The agent's own invalid settings, replaced by their defaults (the
    /// listener reports its own): logged once by the agent.
    pub notes: Vec<ConfigError>,
}

impl AgentConfig {
    /// Reads the real environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&ProcessEnv)
    }

    /// Reads any [`Env`].
    pub fn from_lookup(env: &dyn Env) -> Result<Self, ConfigError> {
        let r = Reader(env);
        let mut notes = Vec::new();
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
                    // On a dyno, a typo must not stop the metrics: run everywhere.
                    notes.push(ConfigError::new(
                        "DYNOSTAT_DYNO_TYPES",
                        &v,
                        format!(
                            "{bad:?} is not a process type; use a list such as web,worker or all; using the default (all)"
                        ),
                    ));
                    DynoTypes::All
                } else {
                    DynoTypes::Only(list)
                }
            }
        };
        let set = |var: &'static str| -> Result<bool, ConfigError> {
            Ok(r.string(var)?.is_some_and(|v| !v.is_empty()))
        };
        let agent_host_set = set(vars::DD_AGENT_HOST)?;
        let log_level_set = set(vars::DD_LOG_LEVEL)?;
        // As the listener reads it under the agent: only a fatal setting is
        // an error here; the listener logs the others.
        let full = Config::from_lookup_on_dyno(env)?;
        Ok(Self {
            disabled,
            dyno_types,
            dyno: full.dyno,
            has_api_key: full.api_key.is_some(),
            port: full.port,
            trace_port: (full.trace.enabled && full.trace.port != 0).then_some(full.trace.port),
            bind_host: full.bind_host,
            log_level: full.log_level,
            watch_pid: match r
                .string(vars::DYNOSTAT_WATCH_PID)?
                .filter(|s| !s.trim().is_empty())
            {
                Some(v) => Some(
                    v.trim()
                        .parse::<i32>()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or_else(|| {
                            ConfigError::new(
                                vars::DYNOSTAT_WATCH_PID,
                                &v,
                                "not a process id; unset it to watch the parent",
                            )
                        })?,
                ),
                None => None,
            },
            agent_host_set,
            log_level_set,
            notes,
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

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::*;

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
        // A typo in an optional setting falls back to its default, noted.
        let a = AgentConfig::from_lookup(&env(&[
            ("DYNOSTAT_DYNO_TYPES", "web;x"),
            ("DD_HISTOGRAM_PERCENTILES", "2"),
        ]))
        .expect("optional settings fall back");
        assert_eq!(a.dyno_types, DynoTypes::All);
        assert_eq!(
            a.notes.len(),
            1,
            "the listener reports its own: {:?}",
            a.notes
        );
        assert!(a.notes[0].to_string().contains("using the default (all)"));
        // A port that is not a number stops it.
        assert!(AgentConfig::from_lookup(&env(&[("DD_DOGSTATSD_PORT", "x")])).is_err());
    }

    #[test]
    fn agent_host_and_log_level_are_noted_when_set_and_non_empty() {
        let a = AgentConfig::from_lookup(&env(&[("DD_AGENT_HOST", "10.0.0.1")])).expect("valid");
        assert!(a.agent_host_set);
        assert!(!a.log_level_set);
        let a = AgentConfig::from_lookup(&env(&[("DD_AGENT_HOST", ""), ("DD_LOG_LEVEL", "debug")]))
            .expect("valid");
        assert!(!a.agent_host_set, "an empty value counts as unset");
        assert!(a.log_level_set);
    }
}
