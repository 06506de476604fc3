//! dotenv: `.env` files, with `dotenvy`'s grammar and `FILE:LINE` errors.
//!
//! In: env-file bytes (or paths) and the real environment. Out: the
//! variables in file order, or one error that names the file and line and
//! says how to fix it.
//!
//! The grammar is exactly `dotenvy` 0.15's (we call it, we do not re-implement
//! it): `NAME=value`, an optional `export ` prefix, `#` comments, single
//! quotes (literal), double quotes (escapes `\\ \" \' \$ \n`, and values that
//! span lines), `$VAR` / `${VAR}` substitution. dotenvy's iterator reports a
//! bad line without its line number, so we hand it one logical line at a time
//! and keep the count ourselves; the variables already defined (earlier in the
//! file, or in earlier files) are replayed before each line, quoted so they
//! read back unchanged, so that `${VAR}` sees them.
//!
//! Precedence: a later file overrides an earlier one, and the real
//! environment wins over every file unless `--env-override` is given. In
//! `${VAR}` substitution dotenvy itself consults the real environment first.
//!
//! Must never: skip a line it cannot parse, or panic on any input.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A bad env file: the file, the 1-based line (0 for the whole file), and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotenvError {
    /// The path as the user gave it.
    pub path: String,
    /// The 1-based line, or 0 when the error concerns the whole file.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for DotenvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path, self.message)
        } else {
            write!(f, "{}:{}: {}", self.path, self.line, self.message)
        }
    }
}

impl std::error::Error for DotenvError {}

/// One parsed env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    /// The path as given.
    pub path: PathBuf,
    /// The variables in file order (a repeated name appears twice; the last wins).
    pub vars: Vec<(String, String)>,
}

/// Reads and parses env files in order. `known` holds variables visible to
/// `${VAR}` in the first file; each file also sees the ones before it.
pub fn read_files(paths: &[PathBuf]) -> Result<Vec<EnvFile>, DotenvError> {
    let mut known = BTreeMap::new();
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| DotenvError {
            path: shown.clone(),
            line: 0,
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "no such env file; create it or drop the -e option".to_owned()
            } else {
                format!("cannot read: {e}")
            },
        })?;
        let vars = parse(&shown, &bytes, &known)?;
        for (k, v) in &vars {
            known.insert(k.clone(), v.clone());
        }
        out.push(EnvFile {
            path: path.clone(),
            vars,
        });
    }
    Ok(out)
}

/// The env files' variables merged in order (a later file wins).
pub fn merge(files: &[EnvFile]) -> BTreeMap<String, String> {
    files.iter().flat_map(|f| f.vars.iter().cloned()).collect()
}

/// The environment children get: `real` plus the files' variables. The real
/// environment wins unless `env_override`.
pub fn apply(
    real: &BTreeMap<String, String>,
    files: &BTreeMap<String, String>,
    env_override: bool,
) -> BTreeMap<String, String> {
    let mut out = real.clone();
    for (k, v) in files {
        if env_override || !real.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// The default env file list: `.env` under `root` when it exists.
pub fn default_files(root: &Path) -> Vec<PathBuf> {
    let p = root.join(".env");
    if p.is_file() {
        vec![p]
    } else {
        Vec::new()
    }
}

/// Parses one env file's bytes. `known` is visible to `${VAR}`.
pub fn parse(
    shown: &str,
    bytes: &[u8],
    known: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, DotenvError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| DotenvError {
        path: shown.to_owned(),
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not valid UTF-8; save the file as UTF-8".to_owned(),
    })?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut seen: BTreeMap<String, String> = known.clone();
    let mut i = 0;
    while i < lines.len() {
        let first_line = i + 1;
        let mut chunk = String::new();
        let parsed = loop {
            chunk.push_str(lines[i]);
            if !chunk.ends_with('\n') {
                chunk.push('\n');
            }
            match parse_logical(&seen, &chunk) {
                Logical::Incomplete if i + 1 < lines.len() => i += 1,
                Logical::Incomplete => {
                    break Err(DotenvError {
                        path: shown.to_owned(),
                        line: first_line,
                        message: format!(
                            "`{}`: the quote opened here is never closed; add the closing quote",
                            shorten(lines[first_line - 1])
                        ),
                    })
                }
                Logical::Bad => {
                    break Err(DotenvError {
                        path: shown.to_owned(),
                        line: first_line,
                        message: hint(lines[first_line - 1]),
                    })
                }
                Logical::Ok(kv) => break Ok(kv),
            }
        };
        if let Some((k, v)) = parsed? {
            seen.insert(k.clone(), v.clone());
            vars.push((k, v));
        }
        i += 1;
    }
    Ok(vars)
}

enum Logical {
    /// A quote is still open at the end of the chunk: add the next line.
    Incomplete,
    /// dotenvy rejected the line.
    Bad,
    /// A variable, or `None` for a blank or comment line.
    Ok(Option<(String, String)>),
}

/// Runs dotenvy on `chunk` (one logical line, ending in `\n`), with `seen`
/// replayed first so that `${VAR}` resolves.
fn parse_logical(seen: &BTreeMap<String, String>, chunk: &str) -> Logical {
    let mut input = String::new();
    for (k, v) in seen {
        input.push_str(k);
        input.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' | '"' | '$' => {
                    input.push('\\');
                    input.push(c);
                }
                '\n' => input.push_str("\\n"),
                _ => input.push(c),
            }
        }
        input.push_str("\"\n");
    }
    input.push_str(chunk);
    let mut last = None;
    for (n, item) in dotenvy::from_read_iter(input.as_bytes()).enumerate() {
        match item {
            Ok(kv) if n >= seen.len() => last = Some(kv),
            Ok(_) => {}
            // dotenvy's line reader returns the raw, unterminated text at EOF
            // when a quote is still open; a real parse error carries the line
            // with its newline stripped, or just the value.
            Err(dotenvy::Error::LineParse(text, idx)) if text == chunk && idx == text.len() => {
                return Logical::Incomplete
            }
            Err(_) => return Logical::Bad,
        }
    }
    Logical::Ok(last)
}

/// The line for a message: trimmed, control characters escaped, at most 60 chars.
fn shorten(line: &str) -> String {
    let line = line.trim();
    let mut out = String::new();
    for c in line.chars().take(60) {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if line.chars().count() > 60 {
        out.push('…');
    }
    out
}

/// A message that says how to fix a line dotenvy rejected.
fn hint(line: &str) -> String {
    let shown = shorten(line);
    let trimmed = line.trim();
    let body = trimmed
        .strip_prefix("export ")
        .map_or(trimmed, str::trim_start);
    let Some((key, value)) = body.split_once('=') else {
        return format!("`{shown}` is not NAME=value; write e.g. FOO=bar, or start the line with # to comment it out");
    };
    let key = key.trim_end();
    if key.is_empty() {
        return format!("`{shown}` has no variable name before `=`; write e.g. FOO=bar");
    }
    if key.contains(char::is_whitespace) {
        return format!(
            "variable name `{}` contains a space; names are letters, digits, `_` and `.`",
            crate::config::escape_truncate(key, 40)
        );
    }
    if !key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return format!(
            "variable name `{}` must start with a letter or `_`",
            crate::config::escape_truncate(key, 40)
        );
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return format!(
            "variable name `{}` may contain only letters, digits, `_` and `.`",
            crate::config::escape_truncate(key, 40)
        );
    }
    let value = value.trim();
    if let Some(pos) = value.find('\\') {
        let next = value[pos + 1..].chars().next();
        if !matches!(next, Some('\\' | '\'' | '"' | '$' | ' ' | 'n')) {
            return format!(
                "`{shown}`: unsupported escape `\\{}`; dotenv understands \\n, \\\\, \\\", \\', \\$ and \\ (space); use single quotes for a literal backslash",
                next.map(String::from).unwrap_or_default()
            );
        }
    }
    if value.contains("${") && !value[value.find("${").unwrap_or(0)..].contains('}') {
        return format!("`{shown}`: `${{` is never closed; write ${{NAME}}");
    }
    if !value.starts_with(['"', '\'']) && value.contains(char::is_whitespace) {
        return format!(
            "`{shown}`: the value contains a space; wrap it in quotes, e.g. {key}=\"{}\"",
            crate::config::escape_truncate(value, 30)
        );
    }
    format!("`{shown}` cannot be parsed; write NAME=value, NAME=\"quoted value\" or NAME='literal value'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<(String, String)> {
        parse(".env", text.as_bytes(), &BTreeMap::new()).expect("valid env file")
    }

    fn err(text: &str) -> String {
        parse(".env", text.as_bytes(), &BTreeMap::new())
            .expect_err("invalid env file")
            .to_string()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn grammar_quotes_export_comments() {
        let got = ok(concat!(
            "# comment\n",
            "\n",
            "A=1\n",
            "export B=two\n",
            "C='single $A \\n'\n",
            "D=\"dq \\\"x\\\" \\n y\"\n",
            "E=   # empty with comment\n",
            "F=v # trailing comment\r\n",
            "G = spaced\n",
        ));
        assert_eq!(
            got,
            kv(&[
                ("A", "1"),
                ("B", "two"),
                ("C", "single $A \\n"),
                ("D", "dq \"x\" \n y"),
                ("E", ""),
                ("F", "v"),
                ("G", "spaced"),
            ])
        );
    }

    #[test]
    fn substitution_sees_earlier_lines_and_known_vars() {
        let mut known = BTreeMap::new();
        known.insert("DYNOSTAT_TEST_KNOWN_7F3".to_owned(), "k\"$\\v".to_owned());
        let got = parse(
            ".env",
            b"DYNOSTAT_T_HOST=localhost\nURL=http://${DYNOSTAT_T_HOST}:1/${DYNOSTAT_TEST_KNOWN_7F3}\nRAW='${DYNOSTAT_T_HOST}'\n",
            &known,
        )
        .expect("valid");
        assert_eq!(got[1].1, "http://localhost:1/k\"$\\v");
        assert_eq!(got[2].1, "${DYNOSTAT_T_HOST}");
    }

    #[test]
    fn multi_line_double_quoted_value_keeps_line_numbers() {
        let text = "A=\"line1\nline2\"\nB=ok\nC=bad value\n";
        let got = parse(".env", text.as_bytes(), &BTreeMap::new());
        let e = got.expect_err("line 4 is bad").to_string();
        assert!(
            e.starts_with(".env:4: `C=bad value`: the value contains a space"),
            "{e}"
        );
        assert_eq!(ok("A=\"line1\nline2\"\nB=ok\n")[0].1, "line1\nline2");
    }

    #[test]
    fn errors_carry_file_and_line_and_a_fix() {
        assert!(err("A=1\nNOEQUALS\n").starts_with(".env:2: `NOEQUALS` is not NAME=value"));
        assert!(err("1A=x\n").starts_with(".env:1: variable name `1A` must start with a letter"));
        assert!(err("A B=x\n").starts_with(".env:1: variable name `A B` contains a space"));
        assert!(err("A-B=x\n").starts_with(".env:1: variable name `A-B` may contain only"));
        assert!(err("A=1\nB=\"open\nC=2\n")
            .starts_with(".env:2: `B=\"open`: the quote opened here is never closed"));
        assert!(
            err("A=\"bad \\q\"\n").starts_with(".env:1: `A=\"bad \\q\"`: unsupported escape"),
            "{}",
            err("A=\"bad \\q\"\n")
        );
        assert!(err("=x\n").starts_with(".env:1: `=x` has no variable name"));
    }

    #[test]
    fn invalid_utf8_is_an_error_with_line() {
        let e = parse(".env", b"A=1\nB=\xff\n", &BTreeMap::new()).expect_err("not utf-8");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn real_env_wins_unless_override() {
        let real: BTreeMap<String, String> = [("A".to_owned(), "real".to_owned())].into();
        let files: BTreeMap<String, String> = [
            ("A".to_owned(), "file".to_owned()),
            ("B".to_owned(), "file".to_owned()),
        ]
        .into();
        let env = apply(&real, &files, false);
        assert_eq!(env["A"], "real");
        assert_eq!(env["B"], "file");
        assert_eq!(apply(&real, &files, true)["A"], "file");
    }

    #[test]
    fn later_files_win_and_see_earlier_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.env");
        let b = dir.path().join("b.env");
        std::fs::write(&a, "X=1\nDYNOSTAT_T_BASE=base\n").expect("write");
        std::fs::write(&b, "X=2\nY=${DYNOSTAT_T_BASE}/y\n").expect("write");
        let files = read_files(&[a, b]).expect("valid");
        let merged = merge(&files);
        assert_eq!(merged["X"], "2");
        assert_eq!(merged["Y"], "base/y");
        let missing = read_files(&[dir.path().join("nope.env")]).expect_err("missing");
        assert!(missing
            .to_string()
            .ends_with("nope.env: no such env file; create it or drop the -e option"));
    }

    #[test]
    fn never_panics() {
        for input in [
            "'", "\"", "\\", "A=\\", "A=${", "export", "export =", "A='\\'", "#", "A=\"\\",
        ] {
            let _ = parse(".env", input.as_bytes(), &BTreeMap::new());
        }
    }
}
