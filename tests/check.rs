//! `dynostat check`: Procfile and env-file validation messages, through the
//! real binary.
#![allow(clippy::unwrap_used)]

#[path = "fixtures/process/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{app, dynostat, Proc};

const T: Duration = Duration::from_secs(20);

/// Runs `check ARGS` in a fresh app; returns (code, stdout, stderr).
fn check(procfile: Option<&str>, dotenv: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let dir = app(procfile.unwrap_or(""), dotenv);
    if procfile.is_none() {
        std::fs::remove_file(dir.path().join("Procfile")).unwrap();
    }
    let mut full = vec!["check"];
    full.extend_from_slice(args);
    let mut p = Proc::spawn(&mut dynostat(dir.path(), &full));
    let code = p.code(T);
    (code, p.stdout(), p.stderr())
}

#[test]
fn valid_procfile_lists_names_in_file_order() {
    let (code, out, err) = check(
        Some("web: bundle exec puma\nweb-api: ./api\r\nworker:rake jobs:work\n"),
        None,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l == "valid procfile detected (web, web-api, worker)"),
        "{out}"
    );
    // What would run, verbatim.
    assert!(out.contains("  worker: rake jobs:work"), "{out}");
}

#[test]
fn foreman_cases_comment_dash_underscore() {
    let (code, out, _) = check(
        Some("alpha: ./alpha\n# baz\nbravo: ./bravo\nfoo_bar: ./foo_bar\nfoo-bar: ./foo-bar\n"),
        None,
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("valid procfile detected (alpha, bravo, foo_bar, foo-bar)"),
        "{out}"
    );
    let (code, out, _) = check(
        Some("web: sh -c \"echo $FOO\" >/dev/null 2>&1\n"),
        None,
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("  web: sh -c \"echo $FOO\" >/dev/null 2>&1\n"),
        "{out}"
    );
}

#[test]
fn bad_line_is_an_error_with_its_line_number() {
    let (code, out, err) = check(Some("web: ok\n\nthis line is wrong\n"), None, &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Procfile:3: `this line is wrong` is not `name: command`"),
        "{err}"
    );
    assert!(!out.contains("valid procfile"), "{out}");
}

#[test]
fn duplicate_name_is_an_error() {
    let (code, _, err) = check(Some("web: a\nworker: b\nweb: c\n"), None, &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Procfile:3: duplicate process name `web` (first defined on line 1)"),
        "{err}"
    );
}

#[test]
fn empty_and_missing_procfiles_are_errors() {
    let (code, _, err) = check(Some("# nothing here\n"), None, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("Procfile: no processes defined"), "{err}");

    let (code, _, err) = check(None, None, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("Procfile: no such file"), "{err}");

    let (code, _, err) = check(Some("web: x\n"), None, &["-f", "Procfile.dev"]);
    assert_ne!(code, 0);
    assert!(err.contains("Procfile.dev: no such file"), "{err}");
}

#[test]
fn env_files_are_checked_with_file_and_line() {
    let (code, out, err) = check(Some("web: x\n"), Some("A=1\nexport B='two'\n"), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid env file .env (2 variables)"), "{out}");

    let (code, _, err) = check(Some("web: x\n"), Some("A=1\n\nB=\"unclosed\n"), &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            ".env:3: `B=\"unclosed`: the quote opened here is never closed; add the closing quote"
        ),
        "{err}"
    );

    let (code, _, err) = check(Some("web: x\n"), Some("A=has space\n"), &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains(".env:1: `A=has space`: the value contains a space; wrap it in quotes"),
        "{err}"
    );
}

#[test]
fn configuration_in_the_env_file_is_validated() {
    let (code, _, err) = check(Some("web: x\n"), Some("DD_DOGSTATSD_PORT=abc\n"), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("DD_DOGSTATSD_PORT=abc"), "{err}");
}

#[test]
fn the_release_phase_is_listed_apart() {
    let (code, out, err) = check(
        Some("release: rails db:migrate\nweb: bundle exec puma\nworker: rake jobs:work\n"),
        None,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l == "valid procfile detected (web, worker; release phase: release)"),
        "{out}"
    );
    assert!(out.contains("  release: rails db:migrate\n"), "{out}");
}

#[test]
fn check_reads_the_procfile_named_in_dot_foreman() {
    let dir = app("web: ./prod\n", None);
    std::fs::write(dir.path().join(".foreman"), "procfile: Procfile.dev\n").unwrap();
    std::fs::write(
        dir.path().join("Procfile.dev"),
        "web: ./dev\nrelease: ./migrate\n",
    )
    .unwrap();
    let mut p = Proc::spawn(&mut dynostat(dir.path(), &["check"]));
    assert_eq!(p.code(T), 0, "{}", p.stderr());
    let out = p.stdout();
    assert!(
        out.contains("valid procfile detected (web; release phase: release)\n  web: ./dev\n"),
        "{out}"
    );
    // -f wins.
    let mut p = Proc::spawn(&mut dynostat(dir.path(), &["check", "-f", "Procfile"]));
    assert_eq!(p.code(T), 0, "{}", p.stderr());
    assert!(p.stdout().contains("  web: ./prod\n"), "{}", p.stdout());
}
