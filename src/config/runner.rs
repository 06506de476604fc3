//! The configuration of `dynostat start` / `run`: [`RunnerEnv`].
//!
//! In: the process environment. Out: [`RunnerEnv`], the whole environment as
//! a map (children inherit it) plus the few values the runner decides on.
//! Must never: fail; variables that are not UTF-8 are skipped here, and
//! still inherited by children.

use std::collections::BTreeMap;

use super::vars;

/// What `start` / `run` read from the environment.
#[derive(Debug, Clone)]
pub struct RunnerEnv {
    /// The whole environment, passed on to children (minus nothing).
    pub vars: BTreeMap<String, String>,
    /// `PORT`, the base port when `-p` and the env files do not give one.
    pub port: Option<String>,
    /// `NO_COLOR`: any non-empty value disables colours.
    pub no_color: bool,
    /// `DYNO` is set: `run` is on a dyno, where the agent usually owns the port.
    pub on_dyno: bool,
}

impl RunnerEnv {
    /// Reads the real environment. Variables that are not UTF-8 are skipped
    /// (they could not be substituted in an env file anyway) but still
    /// inherited by children, since children inherit the real environment.
    pub fn from_env() -> Self {
        let vars: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let port = vars.get(vars::PORT).cloned();
        let no_color = vars.get(vars::NO_COLOR).is_some_and(|v| !v.is_empty());
        let on_dyno = vars.contains_key(vars::DYNO);
        Self {
            vars,
            port,
            no_color,
            on_dyno,
        }
    }
}
