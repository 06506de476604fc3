//! `.foreman`: the defaults file foreman reads from the current directory,
//! so that users who switch from foreman keep their setup.
//!
//! In: the bytes of `.foreman`, a YAML mapping of option names to values,
//! one `key: value` per line (foreman loads it with `YAML.load_file` and
//! merges the command-line options over it). Out: [`Defaults`] for
//! `procfile`, `env` (comma-separated, as foreman splits it), `port`,
//! `formation` (or its old name `concurrency`) and `timeout`, plus a warning
//! for each key dynostat does not use.
//!
//! What is read is the flat subset of YAML such files use: `key: value`
//! lines, `#` comments, blank lines, a leading `---`, and values that are
//! plain or single- or double-quoted scalars. Anything else (nested maps,
//! lists, multi-line values) is an error naming the line, never a guess.
//!
//! Must never: read the environment, or fail on a missing file (no file is
//! no defaults).

use std::path::{Path, PathBuf};

use crate::config::escape_truncate;

/// The file's name, in the current directory, as foreman reads it.
pub const FILE: &str = ".foreman";

/// The defaults a `.foreman` file gives; `None` where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    /// `procfile`.
    pub procfile: Option<PathBuf>,
    /// `env`: files, comma-separated.
    pub env: Vec<PathBuf>,
    /// `port`: the base port.
    pub port: Option<u16>,
    /// `formation`, else `concurrency`.
    pub formation: Option<String>,
    /// `timeout`: seconds between SIGTERM and SIGKILL.
    pub timeout: Option<u64>,
    /// One line per key dynostat does not use (foreman options such as
    /// `color` or `root`), to be shown and otherwise ignored.
    pub warnings: Vec<String>,
}

/// Reads `path`; a missing file is `Ok(Defaults::default())`. Errors name the
/// file and line and say what to write instead.
pub fn read(path: &Path) -> Result<Defaults, String> {
    match std::fs::read(path) {
        Ok(bytes) => parse(&path.display().to_string(), &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Defaults::default()),
        Err(e) => Err(format!("{}: cannot read it: {e}", path.display())),
    }
}

/// Parses the text of a `.foreman` file called `shown` in messages.
pub fn parse(shown: &str, bytes: &[u8]) -> Result<Defaults, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| format!("{shown}: not UTF-8 text; write it as `key: value` lines"))?;
    let mut d = Defaults::default();
    let mut concurrency = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = strip_comment(raw).trim_end();
        if line.trim().is_empty() || (n == 1 && line.trim() == "---") {
            continue;
        }
        let at = |what: &str| format!("{shown}:{n}: {what}");
        if line.starts_with(char::is_whitespace) || line.trim_start().starts_with('-') {
            return Err(at(&format!(
                "`{}` is not a top-level `key: value` line; dynostat reads flat files such as `procfile: Procfile.dev`",
                escape_truncate(line.trim(), 60)
            )));
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(at(&format!(
                "`{}` is not `key: value`; write e.g. `port: 5000`",
                escape_truncate(line, 60)
            )));
        };
        let key = key.trim();
        let value = unquote(value.trim()).map_err(|e| at(&e))?;
        if value.is_empty() {
            return Err(at(&format!(
                "`{key}` has no value; give one, e.g. `{key}: ...`, or remove the line"
            )));
        }
        match key {
            "procfile" => d.procfile = Some(PathBuf::from(value)),
            "env" => {
                d.env = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect();
            }
            "port" => {
                d.port = Some(value.parse().map_err(|_| {
                    at(&format!(
                        "port `{}` is not a port number (1-65535)",
                        escape_truncate(&value, 20)
                    ))
                })?);
            }
            "formation" => d.formation = Some(value),
            "concurrency" => concurrency = Some(value),
            "timeout" => {
                d.timeout = Some(value.parse().map_err(|_| {
                    at(&format!(
                        "timeout `{}` is not a whole number of seconds",
                        escape_truncate(&value, 20)
                    ))
                })?);
            }
            other => d.warnings.push(at(&format!(
                "`{}` is not used by dynostat start; ignored",
                escape_truncate(other, 40)
            ))),
        }
    }
    d.formation = d.formation.or(concurrency);
    Ok(d)
}

/// The line without a `#` comment: YAML starts one at a `#` that begins the
/// line or follows a space, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

/// A plain, `'single'` (with `''` for a quote) or `"double"` (with `\"` and
/// `\\`) quoted scalar.
fn unquote(v: &str) -> Result<String, String> {
    let bad = || format!("`{}` has an unclosed quote", escape_truncate(v, 60));
    if let Some(rest) = v.strip_prefix('\'') {
        let inner = rest.strip_suffix('\'').ok_or_else(bad)?;
        return Ok(inner.replace("''", "'"));
    }
    if let Some(rest) = v.strip_prefix('"') {
        let inner = rest.strip_suffix('"').ok_or_else(bad)?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('t') => out.push('\t'),
                    Some(other) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        return Ok(out);
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_foreman_users_write() {
        let d = parse(
            ".foreman",
            b"---\n# local setup\nprocfile: Procfile.dev\nenv: .env, .env.local\nport: 3000\nformation: all=1,release=0   # no migrations\ntimeout: 10\n",
        )
        .expect("valid");
        assert_eq!(d.procfile, Some(PathBuf::from("Procfile.dev")));
        assert_eq!(
            d.env,
            vec![PathBuf::from(".env"), PathBuf::from(".env.local")]
        );
        assert_eq!(d.port, Some(3000));
        assert_eq!(d.formation.as_deref(), Some("all=1,release=0"));
        assert_eq!(d.timeout, Some(10));
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn quotes_concurrency_and_unknown_keys() {
        let d = parse(
            ".foreman",
            b"procfile: \"Procfile #dev\"\nconcurrency: 'web=2'\ncolor: true\n",
        )
        .expect("valid");
        assert_eq!(d.procfile, Some(PathBuf::from("Procfile #dev")));
        assert_eq!(d.formation.as_deref(), Some("web=2"), "the old name");
        assert_eq!(
            d.warnings,
            vec![".foreman:3: `color` is not used by dynostat start; ignored"]
        );
        let d = parse(".foreman", b"concurrency: web=2\nformation: web=3\n").expect("valid");
        assert_eq!(d.formation.as_deref(), Some("web=3"), "formation wins");
        assert_eq!(parse(".foreman", b"").expect("valid"), Defaults::default());
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            (
                &b"port: abc\n"[..],
                ".foreman:1: port `abc` is not a port number",
            ),
            (
                b"\nnothing here\n",
                ".foreman:2: `nothing here` is not `key: value`",
            ),
            (b"env:\n  - .env\n", ".foreman:1: `env` has no value"),
            (
                b"procfile: \"open\n",
                ".foreman:1: `\\\"open` has an unclosed quote",
            ),
            (
                b"timeout: 1.5\n",
                ".foreman:1: timeout `1.5` is not a whole number",
            ),
        ] {
            let e = parse(".foreman", text).expect_err(want);
            assert!(e.starts_with(want), "{e}");
        }
        let e = parse(".foreman", b"port: 1\n  nested: x\n").expect_err("nested");
        assert!(
            e.starts_with(".foreman:2: `nested: x` is not a top-level"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_file_is_no_defaults() {
        let d = read(Path::new("/nonexistent/dir/.foreman")).expect("no file, no defaults");
        assert_eq!(d, Defaults::default());
    }
}
