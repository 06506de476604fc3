//! The configuration of the Postgres and Redis checks: [`ChecksConfig`]
//! (DESIGN §5d, issue 23).
//!
//! In: an [`Env`] (the official buildpack's `DD_ENABLE_HEROKU_POSTGRES`,
//! `DD_POSTGRES_URL_VAR`, `DD_ENABLE_HEROKU_REDIS`, `DD_REDIS_URL_VAR`, and
//! `DYNOSTAT_CHECKS_DYNO`, `DYNOSTAT_CHECKS_INTERVAL`, `DYNO`), plus the
//! process types of the app's `Procfile` (the one thing a dyno can read about
//! its formation). Out: [`ChecksConfig`]: the databases to watch, whether
//! this process runs the checks, and one-line problems to log.
//!
//! Must never: put a password, or a URL that holds one, in an error, a log
//! line or a `Debug` dump. [`Secret`] redacts itself; a bad URL is reported
//! by the variable's name and what is wrong with it, never by its value.

use std::fmt;
use std::time::Duration;

use super::{dyno_type, Env, Reader};

/// The check interval by default: the Agent's 15 s.
pub const DEFAULT_INTERVAL_SECS: u64 = 15;

/// A password. `Debug` shows `<redacted>`; there is no `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The password, for the authentication exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which server a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `redis://` or `rediss://`.
    Redis,
}

/// How the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP (`sslmode=disable`, or `redis://`).
    Off,
    /// TLS if the server offers it, else plain (`sslmode=prefer`/`allow`;
    /// the default for a loopback host).
    Prefer,
    /// TLS or nothing, the certificate not verified (`sslmode=require`, the
    /// official buildpack's setting and the default; `rediss://`, where the
    /// buildpack sets `ssl_cert_reqs: 0`). Heroku's Postgres and Redis
    /// certificates are self-signed per server, so there is nothing to
    /// verify them against.
    Require,
}

/// One database to watch, parsed from a config var.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbUrl {
    /// The config var it came from, e.g. `DATABASE_URL`; names it in logs.
    pub var: String,
    /// Postgres or Redis.
    pub kind: DbKind,
    /// Host name or address (brackets of an IPv6 address removed).
    pub host: String,
    /// Port (5432 and 6379 by default).
    pub port: u16,
    /// User name; may be empty for Redis.
    pub user: String,
    /// Password; may be empty.
    pub password: Secret,
    /// Postgres: the database name (default: the user's). Redis: the
    /// database index (default 0).
    pub database: String,
    /// Encryption.
    pub tls: Tls,
}

/// What the Postgres and Redis checks need.
#[derive(Debug, Clone)]
pub struct ChecksConfig {
    /// `DD_ENABLE_HEROKU_POSTGRES=true`: the URLs of the vars named in
    /// `DD_POSTGRES_URL_VAR` (comma-separated). Defaults to `DATABASE_URL`.
    pub postgres: Vec<DbUrl>,
    /// `DD_ENABLE_HEROKU_REDIS=true`: the URLs of the vars named in
    /// `DD_REDIS_URL_VAR`. Defaults to `REDIS_URL`.
    pub redis: Vec<DbUrl>,
    /// `DYNOSTAT_CHECKS_INTERVAL`: seconds between two runs of a check.
    /// Defaults to 15, the Agent's check interval.
    pub interval: Duration,
    /// Whether this process runs the checks (see [`placement`]).
    pub run_here: bool,
    /// One line saying where the checks run and why, for the log.
    pub placement: String,
    /// One line per problem (an unset variable, a bad URL), each naming the
    /// variable and the fix, never its value.
    pub problems: Vec<String>,
}

impl ChecksConfig {
    /// Whether any check is enabled (on this dyno or another).
    pub fn enabled(&self) -> bool {
        !self.postgres.is_empty() || !self.redis.is_empty() || !self.problems.is_empty()
    }

    /// Reads `env`; `procfile_types` gives the app's process types in
    /// Procfile order, asked only when the default dyno must be chosen.
    /// Never fails: the checks are optional, so every problem is a line in
    /// [`ChecksConfig::problems`] and the listener runs.
    pub fn read(env: &dyn Env, procfile_types: &dyn Fn() -> Vec<String>) -> Self {
        let r = Reader(env);
        let mut problems = Vec::new();
        let mut flag = |var: &'static str| match r.bool(var) {
            Ok(v) => v.unwrap_or(false),
            Err(e) => {
                problems.push(format!("{e}; the check stays off"));
                false
            }
        };
        let pg_on = flag("DD_ENABLE_HEROKU_POSTGRES");
        let redis_on = flag("DD_ENABLE_HEROKU_REDIS");
        let mut urls = |on: bool, list_var: &'static str, default: &str, kind: DbKind| {
            if !on {
                return Vec::new();
            }
            let list = r
                .string(list_var)
                .ok()
                .flatten()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| default.to_owned());
            let mut out = Vec::new();
            for var in list.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                match env.get(var).map(std::ffi::OsString::into_string) {
                    None => problems.push(format!(
                        "{var} is not set, so it is not watched; set it, or name the right config var in {list_var}"
                    )),
                    Some(Err(_)) => problems.push(format!("{var} is not valid UTF-8; it is not watched")),
                    Some(Ok(value)) => match parse_url(var, &value, kind) {
                        Ok(u) => out.push(u),
                        Err(e) => problems.push(e),
                    },
                }
            }
            out
        };
        let postgres = urls(
            pg_on,
            "DD_POSTGRES_URL_VAR",
            "DATABASE_URL",
            DbKind::Postgres,
        );
        let redis = urls(redis_on, "DD_REDIS_URL_VAR", "REDIS_URL", DbKind::Redis);
        let interval = match r.uint("DYNOSTAT_CHECKS_INTERVAL", 1, 3600) {
            Ok(v) => v.map_or(DEFAULT_INTERVAL_SECS, |v| v as u64),
            Err(e) => {
                problems.push(format!("{e}; using {DEFAULT_INTERVAL_SECS}"));
                DEFAULT_INTERVAL_SECS
            }
        };
        let dyno = r.string("DYNO").ok().flatten().filter(|s| !s.is_empty());
        let chosen = r
            .string("DYNOSTAT_CHECKS_DYNO")
            .ok()
            .flatten()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        // Only the types that run the agent can run the checks.
        let agent_types: Option<Vec<String>> = r
            .string("DYNOSTAT_DYNO_TYPES")
            .ok()
            .flatten()
            .map(|v| {
                v.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|list| !list.is_empty() && !list.iter().any(|t| t == "all"));
        let types = || {
            let mut t = procfile_types();
            if let Some(allowed) = &agent_types {
                t.retain(|ty| allowed.contains(ty));
            }
            t
        };
        let (run_here, placement) = placement(dyno.as_deref(), chosen.as_deref(), &types);
        Self {
            postgres,
            redis,
            interval: Duration::from_secs(interval),
            run_here,
            placement,
            problems,
        }
    }
}

/// Whether the dyno `dyno` runs the checks, and one line saying why.
///
/// - Not on a dyno (`DYNO` unset: `dynostat start`, `run`, a terminal): yes.
/// - `DYNOSTAT_CHECKS_DYNO` set: on the dyno of that name (`web.1`,
///   `worker.2`); a value without an index (`worker`) is that type's `.1`
///   on Cedar, and on Fir, where names carry no index, every dyno of that
///   type, so there it should be a type scaled to one dyno.
/// - Otherwise, on Cedar: `web.1` when the Procfile has a `web` type, else
///   the first type's `.1` (a Procfile that cannot be read counts as web);
///   `read` leaves out the types `DYNOSTAT_DYNO_TYPES` starts no agent on.
///   What a dyno cannot see is the formation's scale: a web type scaled to
///   0 means no dyno runs the checks until `DYNOSTAT_CHECKS_DYNO` names one.
/// - Otherwise, on Fir: no dyno, and each says so once: nothing tells a
///   Fir dyno that it is the first of its type.
pub fn placement(
    dyno: Option<&str>,
    chosen: Option<&str>,
    procfile_types: &dyn Fn() -> Vec<String>,
) -> (bool, String) {
    let Some(dyno) = dyno else {
        return (
            true,
            "not on a dyno (DYNO unset): the checks run here".to_owned(),
        );
    };
    let fir = !dyno.contains('.') && dyno_type(dyno) != dyno;
    if let Some(chosen) = chosen {
        // A type alone names every dyno of that type on Fir, and its first
        // dyno (`worker` as `worker.1`) on Cedar.
        let here = dyno == chosen
            || (!chosen.contains('.')
                && if fir {
                    dyno_type(dyno) == chosen
                } else {
                    dyno.strip_suffix(".1") == Some(chosen)
                });
        let why = if here {
            format!("DYNOSTAT_CHECKS_DYNO={chosen}: the checks run on this dyno ({dyno})")
        } else {
            format!(
                "DYNOSTAT_CHECKS_DYNO={chosen}: the checks run there, not on this dyno ({dyno})"
            )
        };
        return (here, why);
    }
    let types = procfile_types();
    let default_type = if types.is_empty() || types.iter().any(|t| t == "web") {
        "web".to_owned()
    } else {
        types[0].clone()
    };
    if fir {
        return (
            false,
            format!(
                "on Fir, dyno names carry no index, so no dyno runs the checks by default; \
                 set DYNOSTAT_CHECKS_DYNO to a process type that runs one dyno (e.g. {default_type}) \
                 (this dyno: {dyno})"
            ),
        );
    }
    let default = format!("{default_type}.1");
    if dyno == default {
        (true, format!("the checks run on this dyno ({dyno}), the default; DYNOSTAT_CHECKS_DYNO chooses another"))
    } else {
        (
            false,
            format!(
                "the checks run on {default}, not on this dyno ({dyno}); DYNOSTAT_CHECKS_DYNO chooses another"
            ),
        )
    }
}

/// The process types of a Procfile, in order (foreman's line rule:
/// `^([A-Za-z0-9_-]+):`).
pub fn procfile_types(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some((name, _)) = line.split_once(':') else {
            continue;
        };
        if !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && !out.iter().any(|t| t == name)
        {
            out.push(name.to_owned());
        }
    }
    out
}

/// The process types of `./Procfile`, else `$HOME/Procfile` (`/app` on
/// Cedar, the app's directory on Fir); none when neither can be read.
pub fn app_procfile_types(env: &dyn Env) -> Vec<String> {
    let home = Reader(env).string("HOME").ok().flatten();
    let mut paths = vec![std::path::PathBuf::from("Procfile")];
    if let Some(h) = home {
        paths.push(std::path::Path::new(&h).join("Procfile"));
    }
    paths
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| procfile_types(&t))
        .unwrap_or_default()
}

/// Decodes `%XX` escapes; `None` on a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a `postgres://` or `redis(s)://` URL from `var`. The error is one
/// line naming `var`, what is wrong and the fix, and never the value.
pub fn parse_url(var: &str, value: &str, kind: DbKind) -> Result<DbUrl, String> {
    let (form, fix) = match kind {
        DbKind::Postgres => (
            "postgres://USER:PASSWORD@HOST:PORT/DATABASE",
            "set it to the URL Heroku gives (heroku config:get DATABASE_URL), or name another config var in DD_POSTGRES_URL_VAR",
        ),
        DbKind::Redis => (
            "redis://:PASSWORD@HOST:PORT or rediss://...",
            "set it to the URL Heroku gives (heroku config:get REDIS_URL), or name another config var in DD_REDIS_URL_VAR",
        ),
    };
    let bad = |what: &str| {
        format!("{var}: {what}; expected {form}: {fix} (the value is not shown: it may hold a password)")
    };
    let value = value.trim();
    let (scheme, rest) = value.split_once("://").ok_or_else(|| bad("not a URL"))?;
    let scheme = scheme.to_ascii_lowercase();
    let mut tls = match (kind, scheme.as_str()) {
        (DbKind::Postgres, "postgres" | "postgresql") => Tls::Require,
        (DbKind::Redis, "redis") => Tls::Off,
        (DbKind::Redis, "rediss") => Tls::Require,
        _ => return Err(bad("the scheme is not one this check reads")),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (&authority[..i], &authority[i + 1..]),
        None => ("", authority),
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, p),
        None => (userinfo, ""),
    };
    let user = percent_decode(user).ok_or_else(|| bad("the user name has a bad %-escape"))?;
    let password = Secret::new(
        percent_decode(password).ok_or_else(|| bad("the password has a bad %-escape"))?,
    );
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 host lacks its ]"))?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("there is no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
        None if kind == DbKind::Postgres => 5432,
        None => 6379,
    };
    let mut database =
        percent_decode(path).ok_or_else(|| bad("the database name has a bad %-escape"))?;
    match kind {
        DbKind::Postgres => {
            if user.is_empty() {
                return Err(bad("there is no user name"));
            }
            if database.is_empty() {
                database.clone_from(&user);
            }
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
            if loopback {
                tls = Tls::Prefer;
            }
            for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if k == "sslmode" {
                    tls = match v {
                        "disable" => Tls::Off,
                        "allow" | "prefer" => Tls::Prefer,
                        "require" => Tls::Require,
                        "verify-ca" | "verify-full" => {
                            return Err(bad(
                                "sslmode=verify-ca/verify-full is not supported (Heroku's certificates are self-signed, \
                                 so the official buildpack uses require); use sslmode=require",
                            ))
                        }
                        _ => return Err(bad("sslmode is not one of disable, allow, prefer, require")),
                    };
                }
            }
        }
        DbKind::Redis => {
            if database.is_empty() {
                database = "0".to_owned();
            }
            if database.parse::<u32>().is_err() {
                return Err(bad("the database after the / is not a number"));
            }
        }
    }
    Ok(DbUrl {
        var: var.to_owned(),
        kind,
        host,
        port,
        user,
        password,
        database,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::*;

    fn web_worker() -> Vec<String> {
        vec!["web".to_owned(), "worker".to_owned()]
    }

    #[test]
    fn heroku_urls_parse_and_never_show_the_password() {
        let u = parse_url(
            "DATABASE_URL",
            "postgres://u1:p%40ss@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d9",
            DbKind::Postgres,
        )
        .expect("valid");
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.user.as_str(),
                u.database.as_str(),
                u.tls
            ),
            (
                "ec2-1-2-3-4.compute-1.amazonaws.com",
                5432,
                "u1",
                "d9",
                Tls::Require
            )
        );
        assert_eq!(u.password.expose(), "p@ss");
        assert!(!format!("{u:?}").contains("p@ss"), "{u:?}");
        let r = parse_url(
            "REDIS_URL",
            "rediss://:s3cr3t@ec2-5.amazonaws.com:7290",
            DbKind::Redis,
        )
        .expect("valid");
        assert_eq!(
            (r.port, r.tls, r.database.as_str(), r.user.as_str()),
            (7290, Tls::Require, "0", "")
        );
        let l = parse_url(
            "DATABASE_URL",
            "postgres://me@localhost/app?sslmode=disable",
            DbKind::Postgres,
        )
        .expect("valid");
        assert_eq!(
            (l.port, l.tls, l.database.as_str()),
            (5432, Tls::Off, "app")
        );
        let l = parse_url(
            "DATABASE_URL",
            "postgresql://me:pw@127.0.0.1:5433",
            DbKind::Postgres,
        )
        .expect("valid");
        assert_eq!(
            (l.port, l.tls, l.database.as_str()),
            (5433, Tls::Prefer, "me")
        );
    }

    #[test]
    fn a_bad_url_is_one_line_with_the_fix_and_without_the_value() {
        for (value, what) in [
            ("mysql://u:hunter2@h:1/d", "scheme"),
            ("postgres://u:hunter2@h:99999/d", "port"),
            ("hunter2", "not a URL"),
            (
                "postgres://u:hunter2@h/d?sslmode=verify-full",
                "verify-full",
            ),
            ("postgres://:hunter2@h/d", "no user"),
        ] {
            let e = parse_url("DATABASE_URL", value, DbKind::Postgres).expect_err(value);
            assert!(e.starts_with("DATABASE_URL: "), "{e}");
            assert!(e.contains(what), "{e}");
            assert!(e.contains("heroku config:get DATABASE_URL"), "{e}");
            assert!(!e.contains("hunter2") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_official_buildpacks_variables() {
        let c = ChecksConfig::read(
            &env(&[
                ("DD_ENABLE_HEROKU_POSTGRES", "true"),
                (
                    "DD_POSTGRES_URL_VAR",
                    "DATABASE_URL, HEROKU_POSTGRESQL_RED_URL,MISSING_URL",
                ),
                ("DATABASE_URL", "postgres://a:b@h1:5432/d1"),
                ("HEROKU_POSTGRESQL_RED_URL", "postgres://a:b@h2:5432/d2"),
                ("DD_ENABLE_HEROKU_REDIS", "true"),
                ("REDIS_URL", "rediss://:x@r:6380"),
            ]),
            &web_worker,
        );
        let vars: Vec<&str> = c.postgres.iter().map(|u| u.var.as_str()).collect();
        assert_eq!(vars, ["DATABASE_URL", "HEROKU_POSTGRESQL_RED_URL"]);
        assert_eq!(c.redis.len(), 1);
        assert_eq!(c.interval, Duration::from_secs(15));
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
        assert!(
            c.problems[0].starts_with("MISSING_URL is not set"),
            "{:?}",
            c.problems
        );
        assert!(c.run_here, "not on a dyno");
        let full = crate::config::Config::from_lookup(&env(&[
            ("DD_ENABLE_HEROKU_POSTGRES", "true"),
            ("DATABASE_URL", "postgres://a:pg-Secret-1@h1:5432/d1"),
            ("DD_ENABLE_HEROKU_REDIS", "true"),
            ("REDIS_URL", "rediss://:redis-Secret-2@r:6380"),
        ]))
        .expect("valid");
        let dump = format!("{full:?}");
        assert!(!dump.contains("Secret"), "{dump}");
        assert_eq!(full.checks.postgres.len() + full.checks.redis.len(), 2);
        // DYNOSTAT_DYNO_TYPES=worker: web runs no agent, so worker.1 is the default.
        let on_worker = |dyno: &str| {
            ChecksConfig::read(
                &env(&[
                    ("DD_ENABLE_HEROKU_POSTGRES", "true"),
                    ("DATABASE_URL", "postgres://a:b@h1:5432/d1"),
                    ("DYNOSTAT_DYNO_TYPES", "worker"),
                    ("DYNO", dyno),
                ]),
                &web_worker,
            )
            .run_here
        };
        assert!(on_worker("worker.1") && !on_worker("web.1"));
        let off = ChecksConfig::read(
            &env(&[("DATABASE_URL", "postgres://a:b@h1/d1")]),
            &web_worker,
        );
        assert!(!off.enabled());
    }

    #[test]
    fn one_dyno_per_app() {
        let none = Vec::new;
        let only_worker = || vec!["worker".to_owned(), "clock".to_owned()];
        assert!(placement(Some("web.1"), None, &web_worker).0);
        assert!(!placement(Some("web.2"), None, &web_worker).0);
        assert!(!placement(Some("worker.1"), None, &web_worker).0);
        assert!(!placement(Some("run.4242"), None, &web_worker).0);
        assert!(placement(Some("web.1"), None, &none).0, "no Procfile: web");
        assert!(placement(Some("worker.1"), None, &only_worker).0);
        assert!(!placement(Some("clock.1"), None, &only_worker).0);
        assert!(placement(Some("worker.2"), Some("worker.2"), &web_worker).0);
        assert!(!placement(Some("web.1"), Some("worker.2"), &web_worker).0);
        assert!(placement(Some("worker.1"), Some("worker"), &web_worker).0);
        assert!(!placement(Some("worker.2"), Some("worker"), &web_worker).0);
        assert!(placement(None, None, &web_worker).0, "locally");
        // Fir: no default; a type named explicitly runs on its dynos.
        let (here, why) = placement(Some("web-12a34b56d-e78f9"), None, &web_worker);
        assert!(!here);
        assert!(why.contains("DYNOSTAT_CHECKS_DYNO"), "{why}");
        assert!(placement(Some("checks-12a34b56d-e78f9"), Some("checks"), &web_worker).0);
        assert!(!placement(Some("web-12a34b56d-e78f9"), Some("checks"), &web_worker).0);
    }

    #[test]
    fn procfile_types_in_order() {
        assert_eq!(
            procfile_types(
                "# c\nweb: bundle exec puma\nworker:  sidekiq\n\nbad line\nweb: again\nrelease: x"
            ),
            ["web", "worker", "release"]
        );
    }
}
