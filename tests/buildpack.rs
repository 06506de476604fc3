//! Buildpack tests: the real `bin/detect`, `bin/compile` and `bin/release` on
//! temp directories, the boot script in real login shells, and the dyno boot
//! test: a compiled slug booted as Heroku boots a dyno (private namespaces,
//! read-only root, tmpfs `/tmp`), sending metrics with a real DogStatsD client
//! (the example app, through `cadence`), stopped with SIGTERM to every process,
//! and checked at a loopback intake.
//!
//! In: the scripts under `bin/`, `lib/`, `profile.d/`, `tests/buildpack/`, the
//! debug `dynostat` binary for the quick tests, and for the boot test the
//! static release binary, built once per machine into `<target>/dyno-test` by
//! `scripts/release-build.sh` (without LTO and optimisation, which keeps it to a
//! minute or two; linking is exactly as released).
//!
//! Needs bash, coreutils, curl, `file`, `shellcheck` and `unshare`
//! (`scripts/install-test-deps.sh` installs them). Nothing leaves 127.0.0.1:
//! every dyno that could start an agent gets `DD_DD_URL` pointing at a
//! loopback intake.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::slug::{
    arch, builds, clean_command, http_get, repo, scratch, sha256, Artifact, Output,
};
use common::{free_tcp_port, free_udp_port, Intake};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The test API key: it must reach the intake's header and nothing else.
const API_KEY: &str = "dd0123456789abcdef0123456789abcd";
const APP_NAME: &str = "dynostat-boot-test";

/// An app checkout to compile: BUILD_DIR, CACHE_DIR and ENV_DIR in one temp dir.
struct App {
    root: tempfile::TempDir,
    stack: String,
}

impl App {
    fn new() -> Self {
        let root = scratch();
        for d in ["build", "cache", "env"] {
            fs::create_dir(root.path().join(d)).expect("create app dirs");
        }
        fs::write(
            root.path().join("build/Procfile"),
            "web: exec bin/example-app\n",
        )
        .expect("write the Procfile");
        Self {
            root,
            stack: "heroku-24".into(),
        }
    }

    fn build(&self) -> PathBuf {
        self.root.path().join("build")
    }

    fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    fn env_dir(&self) -> PathBuf {
        self.root.path().join("env")
    }

    /// Sets a config var the way Heroku passes it: a file in ENV_DIR.
    fn config(&self, name: &str, value: &str) -> &Self {
        fs::write(self.env_dir().join(name), value).expect("write a config var file");
        self
    }

    /// Runs the real bin/compile with `env` added to a clean environment.
    fn compile_with(&self, env: &[(&str, &str)]) -> Output {
        let mut cmd = clean_command(repo().join("bin/compile"));
        cmd.arg(self.build())
            .arg(self.cache())
            .arg(self.env_dir())
            .env("STACK", &self.stack)
            .env("HOME", self.root.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Output::of(cmd.output().expect("run bin/compile"))
    }

    fn compile(&self) -> Output {
        self.compile_with(&[])
    }

    fn installed_binary(&self) -> PathBuf {
        self.build().join(".dynostat/bin/dynostat")
    }

    fn installed_profile(&self) -> PathBuf {
        self.build().join(".profile.d/dynostat.sh")
    }

    /// Cached binaries: one directory per cache key.
    fn cache_entries(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(self.cache().join("dynostat")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Compiles with `artifact` from ENV_DIR and a DD_API_KEY, asserting success.
    fn compile_ok(&self, artifact: &Artifact) -> Output {
        self.config("DYNOSTAT_BINARY_URL", &artifact.url())
            .config("DD_API_KEY", API_KEY);
        let out = self.compile();
        assert!(out.status.success(), "compile failed:\n{}", out.both());
        out
    }

    fn assert_nothing_installed(&self, out: &Output) {
        assert!(
            !self.build().join(".dynostat").exists(),
            "a failed compile left .dynostat behind:\n{}",
            out.both()
        );
        assert!(
            !self.installed_profile().exists(),
            "a failed compile installed the boot script:\n{}",
            out.both()
        );
        let cached: Vec<PathBuf> = self
            .cache_entries()
            .iter()
            .map(|k| self.cache().join("dynostat").join(k).join("dynostat"))
            .filter(|p| p.exists())
            .collect();
        assert!(
            cached.is_empty(),
            "a failed compile cached {cached:?}:\n{}",
            out.both()
        );
    }
}

/// Every stdout line of a build is a Heroku step or a 7-space detail.
fn assert_heroku_style(stdout: &str) {
    for line in stdout.lines().filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("-----> ") || line.starts_with("       "),
            "not a `-----> ` step or 7-space detail: {line:?}\nin:\n{stdout}"
        );
    }
}

/// A ` !     ` error block on stderr with a numbered list of fixes.
fn assert_error_block(out: &Output, what: &str) {
    assert!(!out.status.success(), "expected failure:\n{}", out.both());
    assert_eq!(out.status.code(), Some(1), "{}", out.both());
    assert!(
        out.stderr.contains(&format!(" !     {what}")),
        "no ` !     {what}` error on stderr:\n{}",
        out.both()
    );
    assert!(
        out.stderr.contains(" !       1. "),
        "the error gives no numbered fixes:\n{}",
        out.both()
    );
}

#[test]
fn detect_always_applies_and_names_the_buildpack() {
    let app = App::new();
    let out = Output::of(
        clean_command(repo().join("bin/detect"))
            .arg(app.build())
            .output()
            .expect("run bin/detect"),
    );
    assert!(out.status.success(), "{}", out.both());
    assert_eq!(out.stdout, "dynostat\n");
}

#[test]
fn release_prints_empty_yaml() {
    let app = App::new();
    let out = Output::of(
        clean_command(repo().join("bin/release"))
            .arg(app.build())
            .output()
            .expect("run bin/release"),
    );
    assert!(out.status.success(), "{}", out.both());
    assert_eq!(out.stdout, "---\n");
}

#[test]
fn compile_installs_the_verified_binary_and_the_boot_script() {
    let artifact = Artifact::debug();
    let app = App::new();
    let out = app.compile_ok(&artifact);

    let bin = app.installed_binary();
    let mode = fs::metadata(&bin)
        .expect("the binary is installed")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "binary mode {mode:o}");
    assert_eq!(sha256(&bin), artifact.sha256);
    assert_eq!(
        fs::read(app.installed_profile()).expect("the boot script is installed"),
        fs::read(repo().join("profile.d/dynostat.sh")).expect("read profile.d/dynostat.sh"),
    );
    // The app's own files are untouched.
    assert_eq!(
        fs::read_to_string(app.build().join("Procfile")).expect("Procfile"),
        "web: exec bin/example-app\n"
    );

    assert_heroku_style(&out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "-----> dynostat {VERSION} ({}, heroku-24)",
            arch()
        )),
        "the first step names the version, from Cargo.toml:\n{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("       Verified sha256 {}", artifact.sha256)),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("-----> Installing dynostat"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(".dynostat/bin/dynostat (") && out.stdout.contains(" MB): dynostat "),
        "the install line gives the size and the binary's own version:\n{}",
        out.stdout
    );
    assert!(
        out.stderr.is_empty(),
        "a clean build with DD_API_KEY set prints nothing on stderr:\n{}",
        out.stderr
    );
}

#[test]
fn compile_without_an_api_key_still_installs_and_warns() {
    let artifact = Artifact::debug();
    let app = App::new();
    app.config("DYNOSTAT_BINARY_URL", &artifact.url());
    let out = app.compile();
    assert!(out.status.success(), "{}", out.both());
    assert!(app.installed_binary().exists());
    assert!(
        out.stderr.contains(" !     DD_API_KEY is not set")
            && out.stderr.contains("heroku config:set DD_API_KEY="),
        "{}",
        out.both()
    );
}

#[test]
fn tampered_artifact_fails_compile_and_installs_nothing() {
    let artifact = Artifact::debug();
    // One flipped byte after the checksum was published.
    let mut bytes = fs::read(&artifact.binary).expect("read the artifact");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&artifact.binary, &bytes).expect("tamper with the artifact");

    let app = App::new();
    app.config("DYNOSTAT_BINARY_URL", &artifact.url())
        .config("DD_API_KEY", API_KEY);
    let out = app.compile();
    assert_error_block(&out, "Checksum mismatch");
    assert!(
        out.stderr
            .contains(&format!("expected sha256 {}", artifact.sha256)),
        "{}",
        out.both()
    );
    app.assert_nothing_installed(&out);
}

#[test]
fn missing_checksum_fails_compile_and_installs_nothing() {
    let artifact = Artifact::debug();
    fs::remove_file(artifact.checksum_file()).expect("remove the .sha256");
    let app = App::new();
    app.config("DYNOSTAT_BINARY_URL", &artifact.url());
    let out = app.compile();
    assert_error_block(&out, "No checksum for");
    app.assert_nothing_installed(&out);
}

#[test]
fn a_wrong_or_malformed_sha256_override_fails_compile() {
    let artifact = Artifact::debug();
    let app = App::new();
    app.config("DYNOSTAT_BINARY_URL", &artifact.url());

    app.config("DYNOSTAT_BINARY_SHA256", &"0".repeat(64));
    let out = app.compile();
    assert_error_block(&out, "Checksum mismatch");
    app.assert_nothing_installed(&out);

    app.config("DYNOSTAT_BINARY_SHA256", "not-a-checksum");
    let out = app.compile();
    assert_error_block(
        &out,
        "The checksum from DYNOSTAT_BINARY_SHA256 is not a sha256",
    );
    app.assert_nothing_installed(&out);
}

#[test]
fn plain_path_from_the_environment_with_a_pinned_sha256_works() {
    let artifact = Artifact::debug();
    // No .sha256 next to it: the pinned checksum is all there is.
    fs::remove_file(artifact.checksum_file()).expect("remove the .sha256");
    let app = App::new();
    let path = artifact.binary.display().to_string();
    let out = app.compile_with(&[
        ("DYNOSTAT_BINARY_URL", &path),
        ("DYNOSTAT_BINARY_SHA256", &artifact.sha256.to_uppercase()),
    ]);
    assert!(out.status.success(), "{}", out.both());
    assert_eq!(sha256(&app.installed_binary()), artifact.sha256);
}

#[test]
fn config_vars_in_env_dir_win_over_the_environment() {
    let artifact = Artifact::debug();
    let app = App::new();
    app.config("DYNOSTAT_BINARY_URL", &artifact.url())
        .config("DD_API_KEY", API_KEY);
    let out = app.compile_with(&[("DYNOSTAT_BINARY_URL", "/nonexistent/dynostat")]);
    assert!(out.status.success(), "{}", out.both());
}

#[test]
fn an_unreachable_download_is_a_clean_error() {
    // A port that nothing listens on: curl is refused at once, on loopback.
    let port = free_tcp_port();
    let app = App::new();
    app.config(
        "DYNOSTAT_BINARY_URL",
        &format!("http://127.0.0.1:{port}/dynostat-{}", arch()),
    );
    let out = app.compile();
    assert_error_block(&out, "No checksum for http://127.0.0.1:");
    app.assert_nothing_installed(&out);

    app.config("DYNOSTAT_BINARY_SHA256", &"a".repeat(64));
    let out = app.compile();
    assert_error_block(&out, "Could not download http://127.0.0.1:");
    app.assert_nothing_installed(&out);
}

#[test]
fn second_compile_uses_the_cache() {
    let artifact = Artifact::debug();
    let first = App::new();
    let out = first.compile_ok(&artifact);
    assert!(!out.stdout.contains("cached"), "{}", out.stdout);
    assert_eq!(first.cache_entries().len(), 1, "one cache entry");

    // The next build of the same app: same cache, fresh build dir, and the
    // binary gone from its URL. Only the cache can supply it now.
    let second = App::new();
    fs::remove_dir(second.cache()).expect("drop the fresh cache dir");
    copy_dir(&first.cache(), &second.cache());
    fs::remove_file(&artifact.binary).expect("remove the artifact's binary");
    let out = second.compile_ok(&artifact);
    assert!(
        out.stdout.contains("       Using the cached binary"),
        "{}",
        out.stdout
    );
    assert_heroku_style(&out.stdout);
    assert_eq!(sha256(&second.installed_binary()), artifact.sha256);
}

#[test]
fn a_new_stack_or_a_corrupt_cache_entry_misses_the_cache() {
    let artifact = Artifact::debug();
    let mut app = App::new();
    app.compile_ok(&artifact);
    let old = app.cache_entries();
    assert_eq!(old.len(), 1);
    assert!(old[0].contains("heroku-24"), "{old:?}");

    // The stack is part of the key; the old entry is pruned.
    app.stack = "heroku-26".into();
    let out = app.compile_ok(&artifact);
    assert!(!out.stdout.contains("cached"), "{}", out.stdout);
    let new = app.cache_entries();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains("heroku-26"), "{new:?}");

    // A cached file that no longer matches its checksum is never installed.
    let cached = app.cache().join("dynostat").join(&new[0]).join("dynostat");
    fs::write(&cached, b"not the binary").expect("corrupt the cache");
    let out = app.compile_ok(&artifact);
    assert!(
        out.stdout.contains("no longer matches its checksum"),
        "{}",
        out.stdout
    );
    assert_eq!(sha256(&app.installed_binary()), artifact.sha256);
    assert_eq!(sha256(&cached), artifact.sha256, "the cache is repaired");
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(status.success());
}

#[test]
fn the_version_compile_downloads_is_the_crate_version() {
    // bin/compile reads [package] version from Cargo.toml; the release tag
    // v<version> and the workflow's asset names must match what it builds.
    let workflow = fs::read_to_string(repo().join(".github/workflows/release.yml"))
        .expect("read .github/workflows/release.yml");
    for needle in [
        "dynostat-${{ matrix.arch }}",
        "dynostat-${{ matrix.arch }}.sha256",
        "scripts/release-build.sh",
        "v*",
    ] {
        assert!(workflow.contains(needle), "release.yml lacks {needle:?}");
    }
    let lib = fs::read_to_string(repo().join("lib/binary.sh")).expect("read lib/binary.sh");
    assert!(
        lib.contains("releases/download/v%s/dynostat-%s"),
        "URL pattern"
    );
}

#[test]
fn shell_scripts_pass_shellcheck() {
    if !has_command("shellcheck") {
        // Try to install it, as CI does; skip only if that is impossible here.
        let _ = Command::new(repo().join("scripts/install-test-deps.sh")).status();
    }
    if !has_command("shellcheck") {
        eprintln!(
            "SKIPPED shell_scripts_pass_shellcheck: shellcheck is not installed and \
             scripts/install-test-deps.sh could not install it"
        );
        return;
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["bin", "lib", "profile.d", "tests/buildpack"] {
        for entry in fs::read_dir(repo().join(dir)).expect("list the script dirs") {
            files.push(entry.expect("a dir entry").path());
        }
    }
    files.push(repo().join("scripts/release-build.sh"));
    files.push(repo().join("scripts/install-test-deps.sh"));
    files.sort();
    let out = Output::of(
        Command::new("shellcheck")
            .current_dir(repo())
            .args(&files)
            .output()
            .expect("run shellcheck"),
    );
    assert!(out.status.success(), "shellcheck:\n{}", out.both());
}

fn has_command(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------
// The static release binary and the example app, built once per test run
// by `common::slug::builds` (and kept between runs in <target>/dyno-test, so
// later runs only relink).

#[test]
fn release_binary_is_statically_linked() {
    let b = builds();
    let name = format!("dynostat-{}", arch());
    let binary = b.dist.join(&name);
    let file = Output::of(
        Command::new("file")
            .arg(&binary)
            .output()
            .expect("run `file` (scripts/install-test-deps.sh installs it)"),
    );
    assert!(
        file.stdout.contains("statically linked") || file.stdout.contains("static-pie linked"),
        "`file` does not call it static: {}",
        file.stdout
    );
    let ldd = Command::new("ldd").arg(&binary).output();
    if let Ok(ldd) = ldd {
        let text = Output::of(ldd).both();
        assert!(
            text.contains("not a dynamic executable") || text.contains("statically linked"),
            "ldd lists libraries: {text}"
        );
    }
    let sums = fs::read_to_string(b.dist.join(format!("{name}.sha256"))).expect("the .sha256");
    assert_eq!(sums, format!("{}  {name}\n", sha256(&binary)));
    // It runs, and it is the crate's version.
    let version = Output::of(
        clean_command(&binary)
            .arg("version")
            .output()
            .expect("run it"),
    );
    assert!(
        version.stdout.starts_with(&format!("dynostat {VERSION} ")),
        "{}",
        version.both()
    );
}

// ---------------------------------------------------------------------------
// Booting slugs as dynos.

/// A slug booted by tests/buildpack/dyno.sh, with its output collected as it comes.
struct Dyno {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<String>>,
    pumps: Vec<thread::JoinHandle<()>>,
}

impl Dyno {
    /// Boots `slug` and runs `command` in it, with `env` on top of a clean
    /// environment (PATH only).
    fn boot(slug: &Path, command: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = clean_command(repo().join("tests/buildpack/dyno.sh"));
        cmd.arg(slug)
            .arg(command)
            .env(
                "DYNO_PROBE",
                repo().join("tests/buildpack/probe.sh").as_os_str(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run tests/buildpack/dyno.sh");
        let output = Arc::new(Mutex::new(String::new()));
        let pumps = vec![
            pump(child.stdout.take().expect("stdout"), &output),
            pump(child.stderr.take().expect("stderr"), &output),
        ];
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            output,
            pumps,
        }
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Polls until the output contains `needle`, or `timeout` passes.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline || self.child.try_wait().ok().flatten().is_some() {
                return self.output().contains(needle);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the dyno as Heroku does (SIGTERM to every process, 30 s to
    /// exit) and returns the manager's status and the whole output.
    fn stop(&mut self) -> (ExitStatus, String) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        self.finish(Duration::from_secs(45))
    }

    /// Waits for the dyno to end by itself (its command exits).
    fn finish(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll dyno.sh") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the dyno did not stop within {timeout:?}:\n{}",
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
        (status, self.output())
    }
}

impl Drop for Dyno {
    fn drop(&mut self) {
        // Closing stdin stops the dyno; the manager then stops everything in it.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pump(reader: impl Read + Send + 'static, into: &Arc<Mutex<String>>) -> thread::JoinHandle<()> {
    let into = Arc::clone(into);
    thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let mut s = into
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.push_str(&line);
            s.push('\n');
        }
    })
}

/// A compiled slug with the debug binary, for the boot script's behaviour.
fn debug_slug() -> App {
    let app = App::new();
    app.compile_ok(&Artifact::debug());
    app
}

/// The environment of a web dyno whose agent (if any) forwards to `intake`.
fn dyno_env(intake: &Intake, statsd_port: u16) -> Vec<(String, String)> {
    vec![
        ("DYNO".into(), "web.1".into()),
        ("PORT".into(), free_tcp_port().to_string()),
        ("HEROKU_APP_NAME".into(), APP_NAME.into()),
        ("DD_API_KEY".into(), API_KEY.into()),
        ("DD_DD_URL".into(), intake.url()),
        ("DD_DOGSTATSD_PORT".into(), statsd_port.to_string()),
        // Never the default 8126: tests run side by side.
        ("DD_APM_RECEIVER_PORT".into(), free_tcp_port().to_string()),
        ("DYNOSTAT_FLUSH_INTERVAL".into(), "1".into()),
    ]
}

fn with<'a>(
    base: &'a [(String, String)],
    changes: &'a [(&'a str, Option<&'a str>)],
) -> Vec<(&'a str, &'a str)> {
    let mut map: BTreeMap<&str, &str> =
        base.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (k, v) in changes {
        match v {
            Some(v) => map.insert(k, v),
            None => map.remove(k),
        };
    }
    map.into_iter().collect()
}

/// The lines of `output` that start with `prefix`, prefix removed.
fn lines_with<'a>(output: &'a str, prefix: &str) -> Vec<&'a str> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .collect()
}

/// Boots a debug slug with the dyno command `command` (which must end by
/// itself) and returns the output after the dyno stopped cleanly.
fn boot_and_finish(app: &App, command: &str, env: &[(&str, &str)]) -> String {
    let mut dyno = Dyno::boot(&app.build(), command, env);
    let (status, output) = dyno.finish(Duration::from_secs(60));
    assert!(status.success(), "the dyno did not stop cleanly:\n{output}");
    assert!(
        !output.contains("Read-only file system"),
        "something needed a writable root:\n{output}"
    );
    output
}

/// The command prefix that loads tests/buildpack/probe.sh in a dyno.
const PROBE: &str = r#". "$DYNO_PROBE"; "#;

#[test]
fn disable_datadog_agent_starts_nothing_and_the_shell_carries_on() {
    let app = debug_slug();
    let intake = Intake::start();
    let base = dyno_env(&intake, free_udp_port());
    let env = with(&base, &[("DISABLE_DATADOG_AGENT", Some("true"))]);
    let output = boot_and_finish(
        &app,
        &format!(
            r#"{PROBE}echo "carried on: opts=$- agent=${{DYNOSTAT_AGENT_PID:-none}}"; probe::processes"#
        ),
        &env,
    );
    assert!(
        output.contains("carried on: opts=hBc agent=none"),
        "the shell did not carry on with its options intact:\n{output}"
    );
    assert_eq!(
        lines_with(&output, "proc "),
        Vec::<&str>::new(),
        "processes were started:\n{output}"
    );
    assert_eq!(
        lines_with(&output, "dynostat: "),
        vec!["DISABLE_DATADOG_AGENT is set; not starting the agent."],
        "{output}"
    );
    assert!(intake.requests().is_empty());
}

#[test]
fn without_an_api_key_one_hint_and_nothing_started() {
    let app = debug_slug();
    let intake = Intake::start();
    let base = dyno_env(&intake, free_udp_port());
    let env = with(&base, &[("DD_API_KEY", None), ("DD_DOGSTATSD_PORT", None)]);
    // Sourcing again under `set -eu` must neither abort nor change options.
    let output = boot_and_finish(
        &app,
        &format!(
            r#"{PROBE}set -eu; . "$HOME/.profile.d/dynostat.sh"; echo "after: opts=$- port=$DD_DOGSTATSD_PORT host=$DD_AGENT_HOST"; case ":$PATH:" in *":$HOME/.dynostat/bin:"*) echo "on PATH";; esac; probe::processes"#
        ),
        &env,
    );
    assert!(
        output.contains("after: opts=ehuBc port=8125 host=127.0.0.1"),
        "{output}"
    );
    assert!(output.contains("on PATH"), "{output}");
    assert_eq!(lines_with(&output, "proc "), Vec::<&str>::new(), "{output}");
    let hints = lines_with(&output, "dynostat: ");
    // One hint per sourcing: the dyno's boot, then the command's own.
    assert_eq!(hints.len(), 2, "{output}");
    assert!(
        hints[0].starts_with("DD_API_KEY is not set")
            && hints[0].contains("heroku config:set DD_API_KEY="),
        "{output}"
    );
}

#[test]
fn one_off_dynos_are_quiet() {
    let app = debug_slug();
    let intake = Intake::start();
    let base = dyno_env(&intake, free_udp_port());
    for changes in [
        vec![("DYNO", Some("run.4321")), ("DD_API_KEY", None)],
        vec![
            ("DYNO", Some("run.4321")),
            ("DISABLE_DATADOG_AGENT", Some("1")),
        ],
        vec![
            ("DYNO", Some("run.4321")),
            ("DYNOSTAT_DYNO_TYPES", Some("web")),
        ],
    ] {
        let env = with(&base, &changes);
        let output = boot_and_finish(&app, "echo one-off shell ran", &env);
        assert!(output.contains("one-off shell ran"), "{output}");
        assert!(
            !output.contains("dynostat"),
            "a one-off dyno printed dynostat lines ({changes:?}):\n{output}"
        );
    }
}

#[test]
fn dyno_types_decide_which_dynos_start_the_agent() {
    let app = debug_slug();
    let intake = Intake::start();
    let base = dyno_env(&intake, free_udp_port());
    let started = r#"echo "started=${DYNOSTAT_AGENT_PID:+yes}""#;

    let env = with(&base, &[("DYNOSTAT_DYNO_TYPES", Some("worker, clock"))]);
    let output = boot_and_finish(&app, started, &env);
    assert!(output.contains("started=\n"), "{output}");
    assert_eq!(
        lines_with(&output, "dynostat: "),
        vec!["not starting the agent on web.1 (DYNOSTAT_DYNO_TYPES=worker, clock)."],
        "{output}"
    );

    // Fir's dyno names, and a list that includes the type.
    for (dyno, types) in [
        ("worker-12a34b56d-e78f9", "web,worker"),
        ("web.1", "all"),
        ("web.1", " "),
    ] {
        let changes = [("DYNO", Some(dyno)), ("DYNOSTAT_DYNO_TYPES", Some(types))];
        let env = with(&base, &changes);
        let output = boot_and_finish(&app, &format!("{started}; exec sleep 0"), &env);
        assert!(
            output.contains("started=yes\n"),
            "DYNO={dyno} DYNOSTAT_DYNO_TYPES={types:?} did not start the agent:\n{output}"
        );
    }
}

/// Needs `dynostat agent` (issue 3): it must exit quietly when a listener owns the port.
#[test]
fn sourcing_twice_leaves_one_agent() {
    let app = debug_slug();
    let intake = Intake::start();
    let statsd_port = free_udp_port();
    let base = dyno_env(&intake, statsd_port);
    let env = with(&base, &[]);
    let command = format!(
        r#"{PROBE}first=$DYNOSTAT_AGENT_PID
. "$HOME/.profile.d/dynostat.sh"
echo "same agent after a second source: $([ "$first" = "$DYNOSTAT_AGENT_PID" ] && echo yes || echo no)"
echo "agent stdin: $(readlink "/proc/$first/fd/0")"
probe::wait_udp_port "$DD_DOGSTATSD_PORT" 30 && echo "listener up"
unset DYNOSTAT_AGENT_PID
. "$HOME/.profile.d/dynostat.sh"
second=$DYNOSTAT_AGENT_PID
[ "$second" != "$first" ] && probe::wait_gone "$second" 30 && echo "second agent exited"
probe::alive "$first" && echo "first agent alive"
probe::processes
echo "report done"
exec sleep 1000"#
    );
    let mut dyno = Dyno::boot(&app.build(), &command, &env);
    let reported = dyno.wait_for("report done", Duration::from_secs(60));
    let (status, output) = dyno.stop();
    assert!(reported, "the dyno never reported:\n{output}");
    for needle in [
        "same agent after a second source: yes",
        "agent stdin: /dev/null",
        "listener up",
        "second agent exited",
        "first agent alive",
    ] {
        assert!(output.contains(needle), "no {needle:?} in:\n{output}");
    }
    let procs = lines_with(&output, "proc ");
    let agents = procs
        .iter()
        .filter(|p| p.ends_with("dynostat agent"))
        .count();
    // The agent runs its listener as `serve --on-dyno` (lenient configuration).
    let servers = procs
        .iter()
        .filter(|p| p.ends_with(" serve --on-dyno"))
        .count();
    assert_eq!((agents, servers), (1, 1), "processes: {procs:#?}\n{output}");
    assert!(status.success(), "the dyno did not stop cleanly:\n{output}");
}

/// The headline test. Needs `dynostat agent` (issue 3) and `dynostat serve`.
#[test]
fn dyno_boot_on_a_read_only_root_delivers_every_metric_through_sigterm() {
    let b = builds();
    let artifact = Artifact::of(&b.dist.join(format!("dynostat-{}", arch())));
    assert_eq!(
        fs::read_to_string(artifact.checksum_file()).expect("checksum"),
        fs::read_to_string(b.dist.join(format!("dynostat-{}.sha256", arch())))
            .expect("dist checksum"),
        "the release script's checksum file is the one compile checks"
    );

    // The app: the example app's binary and its Procfile, as the Rust
    // buildpack would leave them in BUILD_DIR.
    let app = App::new();
    fs::create_dir(app.build().join("bin")).expect("mkdir bin");
    fs::copy(&b.example_app, app.build().join("bin/example-app")).expect("copy example-app");

    let detect = Output::of(
        clean_command(repo().join("bin/detect"))
            .arg(app.build())
            .output()
            .expect("run bin/detect"),
    );
    assert!(detect.status.success(), "{}", detect.both());
    let compile = app.compile_ok(&artifact);
    assert_heroku_style(&compile.stdout);

    let before = snapshot(&app.build());
    let intake = Intake::start();
    let statsd_port = free_udp_port();
    let base = dyno_env(&intake, statsd_port);
    let web_port: u16 = base
        .iter()
        .find(|(k, _)| k == "PORT")
        .and_then(|(_, v)| v.parse().ok())
        .expect("PORT");
    let env = with(&base, &[]);
    let procfile = fs::read_to_string(app.build().join("Procfile")).expect("Procfile");
    let web = procfile
        .strip_prefix("web: ")
        .expect("a web process")
        .trim();

    let mut dyno = Dyno::boot(&app.build(), web, &env);
    let up = dyno.wait_for("dynostat listening", Duration::from_secs(30))
        && dyno.wait_for("example-app listening", Duration::from_secs(30));
    assert!(up, "the dyno did not come up:\n{}", dyno.output());

    // Traffic, then SIGTERM at once: the last requests' metrics are still
    // in the open bucket when the dyno stops.
    let mut expected: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for i in 0..30 {
        let (path, route, status) = match i % 5 {
            0 => ("/slow", "/slow", "200"),
            1 => ("/nowhere", "other", "404"),
            _ => ("/", "/", "200"),
        };
        let got = http_get(web_port, path);
        assert!(got.starts_with(&format!("HTTP/1.1 {status} ")), "{got}");
        *expected.entry((route, status)).or_default() += 1;
    }
    let (status, output) = dyno.stop();
    // Shown with --nocapture: what a user sees in the build log and the dyno's log.
    eprintln!(
        "--- build log\n{}{}--- dyno log\n{output}",
        compile.stdout, compile.stderr
    );

    assert!(
        status.success(),
        "the dyno's processes did not all exit within 30 s of SIGTERM:\n{output}"
    );
    assert!(
        !output.lines().any(|l| l.contains(" ERROR ")),
        "errors in the dyno's log:\n{output}"
    );
    assert!(output.contains("dyno: all processes exited"), "{output}");
    assert!(
        !output.contains("Read-only file system"),
        "something needed a writable root:\n{output}"
    );
    assert!(
        !output.contains(API_KEY),
        "the API key appeared in the dyno's logs:\n{output}"
    );
    assert_eq!(
        snapshot(&app.build()),
        before,
        "the dyno wrote into the slug"
    );

    let dyno_tags = [
        "dyno:web.1",
        "dynotype:web",
        "appname:dynostat-boot-test",
        "service:example-app",
    ];
    for ((route, code), n) in &expected {
        let route_tag = format!("route:{route}");
        let status_tag = format!("status:{code}");
        let mut tags: Vec<&str> = dyno_tags.to_vec();
        tags.extend(["method:GET", route_tag.as_str(), status_tag.as_str()]);
        let requests = intake.total("example_app.requests", &tags);
        let timed = intake.total("example_app.request.duration.count", &tags);
        assert!(
            (requests - f64::from(*n)).abs() < 1e-6 && (timed - f64::from(*n)).abs() < 1e-6,
            "{route} {code}: sent {n}, the intake counted {requests} requests and {timed} timings\n\
             series: {:#?}\n{output}",
            intake.series_named("example_app.requests")
        );
    }
    for s in intake.series().iter().filter(|s| {
        s["metric"]
            .as_str()
            .is_some_and(|m| m.starts_with("example_app."))
    }) {
        assert!(common::has_tags(s, &dyno_tags), "untagged series {s}");
    }
    let keys: Vec<String> = intake
        .requests()
        .iter()
        .filter_map(|r| r.header("DD-API-KEY").map(str::to_owned))
        .collect();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == API_KEY),
        "{keys:?}"
    );
}

/// Every path under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("list the slug") {
            let entry = entry.expect("a dir entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            }
            out.insert(entry.path(), (meta.len(), meta.modified().ok()));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The dyno collector (issue 11): heroku.dyno.* from inside a booted dyno, with
// fake cgroup files on a tmpfs at /sys/fs/cgroup (dyno.sh's DYNO_FAKE_CGROUP).

/// A directory of fake cgroup files, `(relative path, content)`.
fn fake_cgroup(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = scratch();
    for (path, content) in files {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        fs::write(path, content).expect("write a fake cgroup file");
    }
    dir
}

/// Every point value of `metric` the intake accepted, in arrival order.
fn values(intake: &Intake, metric: &str) -> Vec<f64> {
    intake
        .series_named(metric)
        .iter()
        .flat_map(|s| {
            s["points"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| p["value"].as_f64())
        })
        .collect()
}

fn dyno_series(intake: &Intake) -> Vec<serde_json::Value> {
    intake
        .series()
        .into_iter()
        .filter(|s| {
            s["metric"]
                .as_str()
                .is_some_and(|m| m.starts_with("heroku.dyno."))
        })
        .collect()
}

/// A dyno command that holds 80 MiB of touched memory in a helper process
/// (perl is Essential on Debian and Ubuntu: no download, nothing to build).
const HOLD_80_MB: &str =
    r#"exec perl -e '$| = 1; vec($x, (80 << 20) - 1, 8) = 1; print "holding 80 MB\n"; sleep 120'"#;

#[test]
fn dyno_metrics_v1_limit_only_gives_the_quota_and_rss_from_proc() {
    let app = debug_slug();
    let intake = Intake::start();
    let cgroup = fake_cgroup(&[("memory/memory.limit_in_bytes", "536870912\n")]);
    let base = dyno_env(&intake, free_udp_port());
    let cgroup_dir = cgroup.path().display().to_string();
    let changes = [("DYNO_FAKE_CGROUP", Some(cgroup_dir.as_str()))];
    let env = with(&base, &changes);
    let mut dyno = Dyno::boot(&app.build(), HOLD_80_MB, &env);
    let holding = dyno.wait_for("holding 80 MB", Duration::from_secs(30));
    // The next sample after the allocation: within one 5 s period.
    let counted = holding
        && intake.wait_until(Duration::from_secs(20), |i| {
            values(i, "heroku.dyno.memory_rss")
                .last()
                .is_some_and(|&mb| mb >= 80.0)
        });
    let (status, output) = dyno.stop();
    assert!(status.success(), "{output}");
    assert!(
        counted,
        "memory_rss never counted the app's 80 MB: {:?}\n{output}",
        values(&intake, "heroku.dyno.memory_rss")
    );
    let quota = values(&intake, "heroku.dyno.memory_quota");
    assert!(
        !quota.is_empty() && quota.iter().all(|&q| q == 512.0),
        "memory_quota from memory.limit_in_bytes: {quota:?}"
    );
    let rss = values(&intake, "heroku.dyno.memory_rss");
    let last = rss.last().copied().unwrap_or_default();
    // The app's 80 MB plus bash, perl, the agent and the listener; far below
    // what the host's memory or the host's cgroup would say.
    assert!((80.0..200.0).contains(&last), "memory_rss {rss:?}");
    for s in intake.series_named("heroku.dyno.memory_rss") {
        assert!(common::has_tags(&s, &["source:proc", "dyno:web.1"]), "{s}");
    }
    // /proc has no page-cache figure; the cgroup's would be a lie here.
    assert!(values(&intake, "heroku.dyno.memory_cache").is_empty());
    let total = values(&intake, "heroku.dyno.memory_total");
    assert!(total.last().is_some_and(|&t| t >= last), "{total:?}");
}

#[test]
fn dyno_metrics_v2_accounting_reports_the_files_values_with_the_dyno_tags() {
    let app = debug_slug();
    let intake = Intake::start();
    let stat = "anon 209715200\nfile 52428800\nkernel 6291456\nkernel_stack 425984\npagetables 1056768\nsock 0\nshmem 0\nfile_mapped 31457280\nfile_dirty 4096\ninactive_anon 209100800\nactive_anon 614400\ninactive_file 40000000\nactive_file 12428800\nunevictable 0\nslab 4000000\npgfault 120000\n";
    let cgroup = fake_cgroup(&[
        ("memory.max", "1073741824\n"),
        ("memory.current", "314572800\n"),
        ("memory.stat", stat),
        ("memory.swap.current", "10485760\n"),
    ]);
    let base = dyno_env(&intake, free_udp_port());
    let cgroup_dir = cgroup.path().display().to_string();
    let changes = [
        ("DYNO_FAKE_CGROUP", Some(cgroup_dir.as_str())),
        ("DD_TAGS", Some("team:core")),
    ];
    let env = with(&base, &changes);
    let mut dyno = Dyno::boot(&app.build(), "exec sleep 120", &env);
    // The CPU rate needs two samples, 5 s apart.
    let arrived = intake.wait_until(Duration::from_secs(30), |i| {
        !values(i, "heroku.dyno.cpu_time").is_empty()
    });
    let (status, output) = dyno.stop();
    assert!(status.success(), "{output}");
    assert!(arrived, "no heroku.dyno.cpu_time:\n{output}");
    for (metric, mb) in [
        ("heroku.dyno.memory_quota", 1024.0),
        ("heroku.dyno.memory_total", 310.0),
        ("heroku.dyno.memory_rss", 200.0),
        ("heroku.dyno.memory_cache", 50.0),
        ("heroku.dyno.memory_swap", 10.0),
    ] {
        let got = values(&intake, metric);
        assert!(
            !got.is_empty() && got.iter().all(|&v| v == mb),
            "{metric}: expected {mb} in every point, got {got:?}"
        );
    }
    for s in intake.series_named("heroku.dyno.memory_total") {
        assert!(common::has_tags(&s, &["source:cgroup"]), "{s}");
    }
    let processes = values(&intake, "heroku.dyno.processes");
    let threads = values(&intake, "heroku.dyno.threads");
    // bash, the agent, the listener, sleep: at least 3 processes and more threads.
    assert!(processes.last().is_some_and(|&p| p >= 3.0), "{processes:?}");
    assert!(
        threads.last() > processes.last(),
        "{threads:?} vs {processes:?}"
    );
    let cpu = values(&intake, "heroku.dyno.cpu_time");
    assert!(cpu.iter().all(|&c| (0.0..4.0).contains(&c)), "{cpu:?}");
    let all = dyno_series(&intake);
    for s in &all {
        assert!(
            common::has_tags(
                s,
                &[
                    "dyno:web.1",
                    "dynotype:web",
                    "appname:dynostat-boot-test",
                    "team:core"
                ]
            ),
            "a dyno metric without the dyno's tags: {s}"
        );
    }
}

#[test]
fn dyno_load_reads_zero_when_idle_and_rises_with_a_busy_process() {
    let app = debug_slug();
    let intake = Intake::start();
    let base = dyno_env(&intake, free_udp_port());
    let env = with(&base, &[]);
    // Load ticks come every 5 s, the first 5 to 10 s after the listener
    // starts, so 21 s asleep holds at least two idle ticks. An idle dyno's
    // threads are asleep at a tick, but on a loaded machine one of them can
    // still be runnable at one tick, waiting for a CPU (the kernel would
    // count it too): that is 0.08. The idle bound, 0.1, lets one such tick
    // by and fails if a task is counted at every tick (0.15 after two).
    // A spinning shell is runnable at every tick: two of them make 0.15.
    let command = r#"sleep 21; echo "busy now"; while :; do :; done"#;
    let mut dyno = Dyno::boot(&app.build(), command, &env);
    let busy = dyno.wait_for("busy now", Duration::from_secs(45));
    let idle = values(&intake, "heroku.dyno.load_avg_1m");
    let rose = busy
        && intake.wait_until(Duration::from_secs(15), |i| {
            values(i, "heroku.dyno.load_avg_1m")
                .iter()
                .any(|&l| l > 0.12)
        });
    let (status, output) = dyno.stop();
    assert!(status.success(), "{output}");
    assert!(busy, "{output}");
    assert!(
        !idle.is_empty() && idle.iter().all(|&l| l < 0.1),
        "an idle dyno's load_avg_1m: {idle:?}\n{output}"
    );
    assert!(
        rose,
        "load_avg_1m did not pass 0.12 within 15 s of a busy process: {:?}",
        values(&intake, "heroku.dyno.load_avg_1m")
    );
    for metric in ["heroku.dyno.load_avg_5m", "heroku.dyno.load_avg_15m"] {
        assert!(!values(&intake, metric).is_empty(), "no {metric}");
    }
}

#[test]
fn dyno_metrics_survive_malformed_cgroup_files() {
    let app = debug_slug();
    let intake = Intake::start();
    let cgroup = fake_cgroup(&[
        ("memory.max", "12abc\n"),
        ("memory.current", "lots\n"),
        ("memory.stat", "\u{0}\u{1}garbage"),
        ("memory.swap.current", ""),
    ]);
    let statsd_port = free_udp_port();
    let base = dyno_env(&intake, statsd_port);
    let cgroup_dir = cgroup.path().display().to_string();
    let changes = [
        ("DYNO_FAKE_CGROUP", Some(cgroup_dir.as_str())),
        ("DD_LOG_LEVEL", Some("debug")),
    ];
    let env = with(&base, &changes);
    let mut dyno = Dyno::boot(&app.build(), "exec sleep 120", &env);
    let up = dyno.wait_for("dynostat listening", Duration::from_secs(30));
    // Load needs a tick, 5 s in: by then the files were read at least twice.
    let arrived = up
        && intake.wait_until(Duration::from_secs(20), |i| {
            !values(i, "heroku.dyno.load_avg_1m").is_empty()
        });
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .send_to(b"probe.after_bad_files:1|c", ("127.0.0.1", statsd_port))
        .expect("send");
    let received = intake.wait_until(Duration::from_secs(10), |i| {
        i.total("probe.after_bad_files", &[]) == 1.0
    });
    let (status, output) = dyno.stop();
    assert!(status.success(), "{output}");
    assert!(arrived, "no load average:\n{output}");
    assert!(received, "the listener stopped taking metrics:\n{output}");
    assert!(!output.contains("panicked"), "{output}");
    assert!(values(&intake, "heroku.dyno.memory_quota").is_empty());
    // Usage falls back to /proc; processes and load still come.
    let rss = intake.series_named("heroku.dyno.memory_rss");
    assert!(
        !rss.is_empty() && rss.iter().all(|s| common::has_tags(s, &["source:proc"])),
        "{rss:?}"
    );
    assert!(!values(&intake, "heroku.dyno.processes").is_empty());
    // Each bad file is logged once, at debug, however many samples read it.
    for file in ["memory.max", "memory.current"] {
        let logged = output
            .lines()
            .filter(|l| l.contains("leaving out what this file gives") && l.contains(file))
            .count();
        assert_eq!(logged, 1, "{file} logged {logged} times:\n{output}");
    }
}

#[test]
fn dyno_metrics_false_sends_none() {
    let app = debug_slug();
    let intake = Intake::start();
    let base = dyno_env(&intake, free_udp_port());
    // The flushes are counted by dynostat's own telemetry, sent on request.
    let env = with(
        &base,
        &[
            ("DYNOSTAT_DYNO_METRICS", Some("false")),
            ("DD_DOGSTATSD_STATS_ENABLE", Some("true")),
        ],
    );
    let mut dyno = Dyno::boot(&app.build(), "exec sleep 120", &env);
    // Three flushes: the collector's first sample is taken at start, so it
    // would be in the first.
    let flushed = intake.wait_until(Duration::from_secs(30), |i| {
        i.series_named("dynostat.packets").len() >= 3
    });
    let (status, output) = dyno.stop();
    assert!(status.success(), "{output}");
    assert!(flushed, "{output}");
    assert_eq!(dyno_series(&intake), Vec::<serde_json::Value>::new());
}

/// `DD_TRACE_AGENT_PORT` is exported exactly when the relay listens on a
/// port, whichever spelling of a boolean `DD_APM_ENABLED` has (as `serve`
/// and the CNB's exec.d read it).
#[test]
fn the_trace_port_is_exported_only_when_the_relay_listens_on_one() {
    let app = debug_slug();
    let intake = Intake::start();
    let base = dyno_env(&intake, free_udp_port());
    for (changes, want) in [
        (vec![("DD_APM_RECEIVER_PORT", None)], "apm=8126"),
        (vec![("DD_APM_ENABLED", Some("OFF"))], "apm=none"),
        (vec![("DD_APM_ENABLED", Some("No"))], "apm=none"),
        (vec![("DD_APM_ENABLED", Some(""))], "apm=none"),
        (
            vec![
                ("DD_APM_ENABLED", Some("TRUE")),
                ("DD_APM_RECEIVER_PORT", None),
            ],
            "apm=8126",
        ),
        (vec![("DD_APM_RECEIVER_PORT", Some("0"))], "apm=none"),
        (vec![("DD_APM_RECEIVER_PORT", Some("9126"))], "apm=9126"),
    ] {
        let mut changes = changes;
        changes.push(("DD_API_KEY", None));
        changes.push(("DD_TRACE_AGENT_PORT", None));
        let env = with(&base, &changes);
        let output = boot_and_finish(
            &app,
            &format!(
                r#"{PROBE}. "$HOME/.profile.d/dynostat.sh"; echo "apm=${{DD_TRACE_AGENT_PORT:-none}}""#
            ),
            &env,
        );
        assert!(output.contains(want), "{changes:?}: {output}");
    }
}
