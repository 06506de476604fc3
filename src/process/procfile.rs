//! procfile: the order-preserving Procfile parser.
//!
//! In: the bytes of a Procfile and the name to show in errors. Out: the
//! entries in file order, or every bad line as a `Procfile:LINE: …` error.
//!
//! The grammar is Heroku's and foreman's: `^([A-Za-z0-9_-]+):\s*(.+)$`, plus
//! `#` comments and blank lines. Unlike foreman and honcho, a line that
//! matches neither is an error here, never silently dropped, because Heroku
//! would silently not run it. A duplicate name is an error (as in honcho and
//! overmind; foreman runs both). CRLF endings are accepted; the command text
//! is otherwise kept byte-for-byte, because it goes to `sh -c` verbatim.
//!
//! Must never: panic on any input, reorder entries, or alter a command.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// One `name: command` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The process name, `[A-Za-z0-9_-]+`.
    pub name: String,
    /// The command, byte-for-byte (minus a CRLF's `\r`), for `sh -c`.
    pub command: OsString,
    /// The 1-based line number.
    pub line: usize,
}

impl Entry {
    /// The command for display (invalid UTF-8 replaced).
    pub fn command_lossy(&self) -> String {
        self.command.to_string_lossy().into_owned()
    }
}

/// A parsed Procfile: entries in file order, names unique.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Procfile {
    /// The entries, in the order of the file.
    pub entries: Vec<Entry>,
}

impl Procfile {
    /// The names, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The entry called `name`, with its index in the file.
    pub fn get(&self, name: &str) -> Option<(usize, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.name == name)
    }
}

/// What is wrong with a Procfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcfileError {
    /// The file does not exist.
    Missing {
        /// The path as the user gave it.
        path: String,
    },
    /// The file could not be read.
    Unreadable {
        /// The path as the user gave it.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// No process is defined.
    Empty {
        /// The path as the user gave it.
        path: String,
    },
    /// A line that is neither `name: command`, a comment nor blank.
    Syntax {
        /// The path as the user gave it.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A name defined twice.
    Duplicate {
        /// The path as the user gave it.
        path: String,
        /// The 1-based line of the second definition.
        line: usize,
        /// The name.
        name: String,
        /// The line of the first definition.
        first: usize,
    },
}

impl fmt::Display for ProcfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { path } => write!(
                f,
                "{path}: no such file; create it with one line per process, e.g. `web: bundle exec puma`, or pass -f PATH"
            ),
            Self::Unreadable { path, reason } => write!(f, "{path}: cannot read: {reason}"),
            Self::Empty { path } => write!(
                f,
                "{path}: no processes defined; add one line per process, e.g. `web: bundle exec puma`"
            ),
            Self::Syntax { path, line, reason } => write!(f, "{path}:{line}: {reason}"),
            Self::Duplicate {
                path,
                line,
                name,
                first,
            } => write!(
                f,
                "{path}:{line}: duplicate process name `{name}` (first defined on line {first}); rename or remove one of them"
            ),
        }
    }
}

impl std::error::Error for ProcfileError {}

/// Reads and parses the Procfile at `path`; `shown` is the name for errors.
pub fn read(path: &std::path::Path, shown: &str) -> Result<Procfile, Vec<ProcfileError>> {
    match std::fs::read(path) {
        Ok(bytes) => parse(shown, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(vec![ProcfileError::Missing {
            path: shown.to_owned(),
        }]),
        Err(e) => Err(vec![ProcfileError::Unreadable {
            path: shown.to_owned(),
            reason: e.to_string(),
        }]),
    }
}

/// Parses Procfile bytes. Returns every error, in line order.
pub fn parse(shown: &str, bytes: &[u8]) -> Result<Procfile, Vec<ProcfileError>> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut errors = Vec::new();
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        match parse_line(line) {
            Ok(None) => {}
            Ok(Some((name, command))) => {
                if let Some(first) = entries.iter().find(|e| e.name == name) {
                    errors.push(ProcfileError::Duplicate {
                        path: shown.to_owned(),
                        line: line_no,
                        name,
                        first: first.line,
                    });
                } else {
                    entries.push(Entry {
                        name,
                        command,
                        line: line_no,
                    });
                }
            }
            Err(reason) => errors.push(ProcfileError::Syntax {
                path: shown.to_owned(),
                line: line_no,
                reason,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if entries.is_empty() {
        return Err(vec![ProcfileError::Empty {
            path: shown.to_owned(),
        }]);
    }
    Ok(Procfile { entries })
}

/// Whether `name` matches the process-name grammar `[A-Za-z0-9_-]+`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One line: `Ok(None)` for a blank or comment line.
fn parse_line(line: &[u8]) -> Result<Option<(String, OsString)>, String> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() || trimmed.starts_with(b"#") {
        return Ok(None);
    }
    let shown = crate::config::escape_truncate(&String::from_utf8_lossy(trimmed), 60);
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(format!(
            "`{shown}` is not `name: command`; write e.g. `web: bundle exec puma`, or start the line with # to comment it out"
        ));
    };
    let name_bytes = &line[..colon];
    let name = String::from_utf8_lossy(name_bytes).into_owned();
    if name.is_empty() {
        return Err(format!(
            "`{shown}` has no process name before the `:`; write e.g. `web: {}`",
            crate::config::escape_truncate(
                &String::from_utf8_lossy(line[colon + 1..].trim_ascii()),
                40
            )
        ));
    }
    if name_bytes.first().is_some_and(u8::is_ascii_whitespace) {
        return Err(format!(
            "`{shown}` starts with whitespace; Heroku ignores such lines, so remove the leading spaces"
        ));
    }
    if !is_valid_name(&name) {
        return Err(format!(
            "process name `{}` may contain only letters, digits, `_` and `-`",
            crate::config::escape_truncate(&name, 40)
        ));
    }
    let rest = &line[colon + 1..];
    let start = rest
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    let command = &rest[start..];
    if command.is_empty() {
        return Err(format!(
            "process `{name}` has no command; write e.g. `{name}: bundle exec puma`"
        ));
    }
    Ok(Some((name, OsStr::from_bytes(command).to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Procfile {
        parse("Procfile", text.as_bytes()).expect("valid Procfile")
    }

    fn errs(text: &str) -> Vec<String> {
        parse("Procfile", text.as_bytes())
            .expect_err("invalid Procfile")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn keeps_file_order_and_dashes_underscores() {
        // From foreman's and honcho's suites: four entries, a comment, in order.
        let p =
            ok("alpha: ./alpha\n# baz\nbravo:\t./bravo\nfoo_bar:./foo_bar\nfoo-bar:   ./foo-bar\n");
        assert_eq!(p.names(), vec!["alpha", "bravo", "foo_bar", "foo-bar"]);
        assert_eq!(p.entries[2].command, OsString::from("./foo_bar"));
        assert_eq!(p.entries[3].line, 5);
    }

    #[test]
    fn no_space_after_colon_is_valid() {
        let p = ok("web:echo x");
        assert_eq!(p.entries[0].command, OsString::from("echo x"));
    }

    #[test]
    fn command_is_kept_verbatim() {
        let p = ok("web: sh -c \"echo $FOO\" >/dev/null 2>&1  \r\nworker: a  b   c\n");
        assert_eq!(
            p.entries[0].command,
            OsString::from("sh -c \"echo $FOO\" >/dev/null 2>&1  ")
        );
        assert_eq!(p.entries[1].command, OsString::from("a  b   c"));
        assert_eq!(p.entries[1].line, 2);
    }

    #[test]
    fn colons_in_command_are_kept() {
        let p = ok("web: echo a:b:c\n");
        assert_eq!(p.entries[0].command, OsString::from("echo a:b:c"));
    }

    #[test]
    fn invalid_utf8_command_is_kept_bytes() {
        let p = parse("Procfile", b"web: echo \xff\n").expect("valid");
        assert_eq!(p.entries[0].command.as_bytes(), b"echo \xff");
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers() {
        let e = errs("web: ok\nthis is not a process\nweb.1: x\n: x\nworker:\n  w: x\n");
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e[0].starts_with("Procfile:2: `this is not a process` is not `name: command`"));
        assert!(e[1].starts_with("Procfile:3: process name `web.1` may contain only"));
        assert!(e[2].starts_with("Procfile:4: "));
        assert!(e[3].starts_with("Procfile:5: process `worker` has no command"));
        assert!(e[4].starts_with("Procfile:6: "));
    }

    #[test]
    fn duplicate_names_are_errors() {
        let e = errs("web: a\nworker: b\nweb: c\n");
        assert_eq!(
            e,
            vec!["Procfile:3: duplicate process name `web` (first defined on line 1); rename or remove one of them"]
        );
    }

    #[test]
    fn empty_and_comment_only_files_are_errors() {
        assert!(errs("")[0].starts_with("Procfile: no processes defined"));
        assert!(errs("# only\n\n   \n")[0].starts_with("Procfile: no processes defined"));
    }

    #[test]
    fn missing_file() {
        let e = read(
            std::path::Path::new("/nonexistent/dynostat/Procfile"),
            "Procfile",
        )
        .expect_err("missing");
        assert!(e[0].to_string().starts_with("Procfile: no such file"));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        for input in [
            &b"\xff:\xff"[..],
            b":",
            b"\r\n\r",
            b"a:\r",
            b"\xEF\xBB\xBFweb: x",
        ] {
            let _ = parse("P", input);
        }
        assert_eq!(ok("\u{feff}web: x").names(), vec!["web"]);
    }
}
