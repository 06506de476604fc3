//! Real tracers through the relay: Python `ddtrace` (newest 4.x and 2.x)
//! and Node `dd-trace` (6 and 5), installed under `target/tracers/` by
//! `scripts/install-test-deps.sh`. Each runs `tests/fixtures/tracers/app.*`:
//! 40 web traces with a SQL child, every fifth an error, every fourth
//! (i % 4 == 3) marked `manual.drop`. Then the app exits, `serve` gets
//! SIGTERM at once, and the stand-in intake must hold: each kept trace
//! exactly once, stats counting all 40 (the dropped ones too), SQL without
//! literals, env and version, and the API key on what was proxied.
//!
//! A tracer that is not installed is skipped with a note, unless
//! `DYNOSTAT_REQUIRE_TRACERS=1` (CI) makes that a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Intake, Serve};

const N: u64 = 40;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tracer's directory, or `None` (skip) when it is not installed.
fn installed(dir: &str, probe: &str) -> Option<PathBuf> {
    let d = repo().join("target/tracers").join(dir);
    if d.join(probe).exists() {
        return Some(d);
    }
    assert!(
        std::env::var_os("DYNOSTAT_REQUIRE_TRACERS").is_none(),
        "{} is not installed; run scripts/install-test-deps.sh",
        d.display()
    );
    eprintln!(
        "skipped: {} is not installed (run scripts/install-test-deps.sh)",
        d.display()
    );
    None
}

/// How the app and the relay are configured.
#[derive(Clone, Copy)]
enum EnvFrom {
    /// The app sets DD_ENV=test, DD_SERVICE=shop and DD_VERSION=1.2.3; the
    /// tracer tags its spans.
    App,
    /// Only the relay has DD_ENV / DD_SERVICE / DD_VERSION; it fills them in.
    Relay,
}

fn run(program: &Path, args: &[&str], node_path: Option<&Path>, env_from: EnvFrom) {
    let intake = Intake::start();
    let mut b = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "10");
    if let EnvFrom::Relay = env_from {
        b = b
            .env("DD_ENV", "relayenv")
            .env("DD_SERVICE", "shop")
            .env("DD_VERSION", "9.9.9");
    }
    let mut s = b.start();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(repo().join("tests/fixtures/tracers"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("DD_") || k == "NODE_PATH" {
            cmd.env_remove(k);
        }
    }
    cmd.env(
        "DD_TRACE_AGENT_URL",
        format!("http://127.0.0.1:{}", s.apm_port),
    )
    .env("DD_DOGSTATSD_PORT", s.port.to_string())
    .env("DD_AGENT_HOST", "127.0.0.1");
    if let Some(p) = node_path {
        cmd.env("NODE_PATH", p);
    }
    if let EnvFrom::App = env_from {
        cmd.env("DD_ENV", "test")
            .env("DD_SERVICE", "shop")
            .env("DD_VERSION", "1.2.3");
    }
    let out = cmd.output().expect("run the traced app");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("traced 40"),
        "the app failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // SIGTERM right after the app's last flush: what the relay holds (the
    // last traces, the open stats buckets) must still arrive.
    s.stop_ok(Duration::from_secs(15));

    let chunks = intake.trace_chunks();
    let mut kept: Vec<u64> = chunks
        .iter()
        .filter_map(|c| {
            let root = c.spans.iter().find(|s| s.name == "web.request")?;
            root.meta.get("trace.index")?.parse().ok()
        })
        .collect();
    kept.sort_unstable();
    let want: Vec<u64> = (0..N).filter(|i| i % 4 != 3).collect();
    assert_eq!(
        kept, want,
        "each kept trace exactly once, the manual.drop ones not at all"
    );

    let (env, version) = match env_from {
        EnvFrom::App => ("test", "1.2.3"),
        EnvFrom::Relay => ("relayenv", "9.9.9"),
    };
    for c in &chunks {
        let root = c.spans.iter().find(|s| s.name == "web.request").unwrap();
        assert_eq!(root.meta.get("env").map(String::as_str), Some(env));
        assert_eq!(root.meta.get("version").map(String::as_str), Some(version));
        let db = c
            .spans
            .iter()
            .find(|s| s.name == "postgres.query")
            .expect("the SQL child");
        assert_eq!(
            db.resource, "SELECT * FROM items WHERE id = ? AND owner = ?",
            "SQL without literals"
        );
        assert!(
            !db.meta.values().any(|v| v.contains("alice")),
            "{:?}",
            db.meta
        );
    }
    let tp = &intake.agent_payloads()[0].tracer_payloads[0];
    assert_eq!(tp.env, env);
    assert_eq!(tp.app_version, version);

    // Stats count every trace, kept or dropped, whoever computed them.
    let (hits, errors, top) = intake.stats_hits("shop", "web.request");
    assert_eq!(
        (hits, errors, top),
        (N, N / 5, N),
        "stats over all 40 traces"
    );
    assert_eq!(intake.stats_hits("shop-db", "postgres.query").0, N);
    assert!(intake
        .trace_stats()
        .iter()
        .any(|p| p.stats.iter().any(|c| c.env == env)));

    // Whatever the tracer sent through the proxies carried the key.
    for r in intake.requests() {
        assert_eq!(
            r.header("dd-api-key"),
            Some("test-key-0123456789abcdef"),
            "{}",
            r.path
        );
    }
}

#[test]
fn python_ddtrace_4() {
    let Some(d) = installed("py4", "bin/python") else {
        return;
    };
    run(&d.join("bin/python"), &["app.py", "40"], None, EnvFrom::App);
}

#[test]
fn python_ddtrace_2() {
    let Some(d) = installed("py2", "bin/python") else {
        return;
    };
    run(
        &d.join("bin/python"),
        &["app.py", "40"],
        None,
        EnvFrom::Relay,
    );
}

#[test]
fn node_dd_trace_6() {
    let Some(d) = installed("node6", "node_modules/dd-trace/package.json") else {
        return;
    };
    run(
        Path::new("node"),
        &["app.js", "40"],
        Some(&d.join("node_modules")),
        EnvFrom::App,
    );
}

#[test]
fn node_dd_trace_5() {
    let Some(d) = installed("node5", "node_modules/dd-trace/package.json") else {
        return;
    };
    run(
        Path::new("node"),
        &["app.js", "40"],
        Some(&d.join("node_modules")),
        EnvFrom::Relay,
    );
}
