//! CNB tests: dynostat as a Cloud Native Buildpack (Heroku Fir), with the
//! CNB lifecycle emulated without Docker or `pack`.
//!
//! In: `buildpack.toml`, the real `bin/detect` and `bin/build` (run with the
//! `CNB_*` variables the Buildpack API 0.10 defines), the exec.d program they
//! install, and `tests/cnb/launcher.py`, which does what the lifecycle's
//! launcher does before a process: launch layers' `bin/` on PATH, every
//! `exec.d` program run with a pipe on fd 3 (read to end-of-file, then
//! waited for), its TOML added to the environment, and the process `exec`ed
//! in the same pid. The quick tests install the debug `dynostat` as the
//! release artifact; the Fir dyno test installs the static release binary and
//! runs the example app (a real DogStatsD client, `cadence`), both built as
//! tests/buildpack.rs builds them, into the same `<target>/dyno-test`, so
//! whichever test runs second finds them built.
//!
//! Needs bash, coreutils, `python3` (3.11 or later, for `tomllib`) and
//! `sha256sum`. Nothing leaves 127.0.0.1: every process that could start an
//! agent gets `DD_DD_URL` pointing at a loopback intake. Every process a test
//! starts carries a unique `DYNOSTAT_TEST_MARK` in its environment, which is
//! how the test finds them all ("every process in the dyno") and kills what a
//! failed test leaves behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::slug::{
    arch, builds, clean_command, http_get, repo, scratch, sha256, Artifact, Output,
};
use common::{free_tcp_port, free_udp_port, Intake};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The test API key: it must reach the intake's header and nothing else.
const API_KEY: &str = "cnb0123456789abcdef0123456789abc";
/// A `$DYNO` as Fir sets it: process type, deployment id, instance id.
const FIR_DYNO: &str = "web-12a34b56d-e78f9";
/// The directory the lifecycle gives a buildpack, `<layers>/<escaped id>`.
const BP_LAYERS: &str = "dynostat_dynostat";

/// The same architecture, as CNB names it (`CNB_TARGET_ARCH`).
fn cnb_arch() -> &'static str {
    match arch() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Python interpreter's real path: the launcher stand-in runs with a
/// clean environment, where a version manager's shim would not work.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Output::of(
            Command::new("python3")
                .args(["-c", "import sys, tomllib; print(sys.executable)"])
                .output()
                .expect("run python3 (3.11 or later, for tomllib)"),
        );
        assert!(
            out.status.success(),
            "python3 3.11 or later is needed (tomllib):\n{}",
            out.both()
        );
        PathBuf::from(out.stdout.trim())
    })
}

/// Parses a TOML file with Python's `tomllib` (no TOML crate here) into JSON.
fn toml_file(path: &Path) -> Value {
    let out = Output::of(
        Command::new(python())
            .args([
                "-c",
                "import json, sys, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))",
            ])
            .arg(path)
            .output()
            .expect("run python3 (3.11 or later, for tomllib)"),
    );
    assert!(
        out.status.success(),
        "{} is not valid TOML:\n{}",
        path.display(),
        out.both()
    );
    serde_json::from_str(&out.stdout).expect("tomllib's JSON")
}

// ---------------------------------------------------------------------------
// The emulated lifecycle.

/// One app built with the CNB: the platform dir, the layers and the workspace.
struct Cnb {
    root: tempfile::TempDir,
}

impl Cnb {
    fn new() -> Self {
        let root = scratch();
        for d in ["platform/env", "workspace"] {
            fs::create_dir_all(root.path().join(d)).expect("create the CNB dirs");
        }
        fs::create_dir_all(root.path().join("layers").join(BP_LAYERS)).expect("layers");
        // An empty buildpack plan: dynostat requires nothing.
        fs::write(root.path().join("plan.toml"), "").expect("write the plan");
        Self { root }
    }

    fn layers_root(&self) -> PathBuf {
        self.root.path().join("layers")
    }

    /// `CNB_LAYERS_DIR`, as the lifecycle gives it to this buildpack.
    fn bp_layers(&self) -> PathBuf {
        self.layers_root().join(BP_LAYERS)
    }

    fn layer(&self) -> PathBuf {
        self.bp_layers().join("dynostat")
    }

    fn platform(&self) -> PathBuf {
        self.root.path().join("platform")
    }

    fn workspace(&self) -> PathBuf {
        self.root.path().join("workspace")
    }

    /// A config var the way the platform passes it: `$CNB_PLATFORM_DIR/env/NAME`.
    fn config(&self, name: &str, value: &str) -> &Self {
        fs::write(self.platform().join("env").join(name), value).expect("write a config var");
        self
    }

    /// Runs `bin/detect` as the lifecycle's detector does: no arguments.
    fn detect(&self) -> Output {
        Output::of(
            clean_command(repo().join("bin/detect"))
                .current_dir(self.workspace())
                .env("CNB_BUILDPACK_DIR", repo())
                .env("CNB_PLATFORM_DIR", self.platform())
                .env(
                    "CNB_BUILD_PLAN_PATH",
                    self.root.path().join("build-plan.toml"),
                )
                .output()
                .expect("run bin/detect"),
        )
    }

    /// Runs `bin/build` as the lifecycle's builder does.
    fn build(&self) -> Output {
        Output::of(
            clean_command(repo().join("bin/build"))
                .current_dir(self.workspace())
                .env("CNB_BUILDPACK_DIR", repo())
                .env("CNB_LAYERS_DIR", self.bp_layers())
                .env("CNB_PLATFORM_DIR", self.platform())
                .env("CNB_BP_PLAN_PATH", self.root.path().join("plan.toml"))
                .env("CNB_TARGET_OS", "linux")
                .env("CNB_TARGET_ARCH", cnb_arch())
                .output()
                .expect("run bin/build"),
        )
    }

    /// Builds with `artifact` as DYNOSTAT_BINARY_URL; the build must pass.
    fn build_ok(&self, artifact: &Artifact) -> Output {
        self.config("DYNOSTAT_BINARY_URL", &artifact.url());
        let out = self.build();
        assert!(out.status.success(), "bin/build failed:\n{}", out.both());
        out
    }

    /// Starts `command` through the launcher stand-in, in the workspace, with
    /// `env` (plus PATH) as the process environment.
    fn launch(&self, env: &[(&str, String)], command: &[&str]) -> Launched {
        self.launch_under(&[], env, command)
    }

    /// Like [`Cnb::launch`], with the launcher run by `wrapper` (e.g. `unshare`).
    fn launch_under(&self, wrapper: &[&str], env: &[(&str, String)], command: &[&str]) -> Launched {
        static N: AtomicU32 = AtomicU32::new(0);
        let mark = format!(
            "cnb-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let logs = scratch();
        let report = logs.path().join("report.json");
        let out = logs.path().join("stdout");
        let err = logs.path().join("stderr");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = clean_command(program);
                cmd.args(args).arg(python());
                cmd
            }
            None => clean_command(python()),
        };
        cmd.arg(repo().join("tests/cnb/launcher.py"))
            .arg(self.layers_root())
            .arg(&report)
            .args(command)
            .current_dir(self.workspace())
            .env("DYNOSTAT_TEST_MARK", &mark)
            .stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&err).expect("stderr file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Like a dyno's process, not in the test runner's process group.
        cmd.process_group(0);
        let child = cmd.spawn().expect("run tests/cnb/launcher.py");
        Launched {
            child,
            mark,
            report,
            out,
            err,
            _logs: logs,
        }
    }
}

/// A process started through the launcher stand-in, and everything it started.
struct Launched {
    child: Child,
    mark: String,
    report: PathBuf,
    out: PathBuf,
    err: PathBuf,
    _logs: tempfile::TempDir,
}

/// One live process of a launched app.
#[derive(Debug)]
struct Proc {
    pid: i32,
    args: Vec<String>,
    env: Vec<String>,
}

impl Proc {
    fn is(&self, subcommand: &str) -> bool {
        self.args.get(1).is_some_and(|a| a == subcommand)
    }

    fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }
}

impl Launched {
    /// The launcher's report, once exec.d programs are done (the launcher
    /// writes it just before `exec`).
    fn report(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = fs::read_to_string(&self.report) {
                return serde_json::from_str(&text).expect("the launcher's report is JSON");
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the launcher exited ({status}) before starting the app:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no launcher report after 20 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exec.d run of dynostat's layer, from the report.
    fn exec_d_run(&mut self) -> Value {
        let report = self.report();
        let runs = report["execd"].as_array().expect("execd runs").clone();
        assert_eq!(runs.len(), 1, "exactly one exec.d program ran: {report}");
        runs[0].clone()
    }

    fn logs(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}",
            fs::read_to_string(&self.out).unwrap_or_default(),
            fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Every live (not zombie) process carrying this launch's mark.
    fn processes(&self) -> Vec<Proc> {
        let needle = format!("DYNOSTAT_TEST_MARK={}", self.mark);
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").expect("list /proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(environ) = fs::read(entry.path().join("environ")) else {
                continue;
            };
            let env: Vec<String> = environ
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            if !env.contains(&needle) || is_zombie(pid) {
                continue;
            }
            let args = fs::read(entry.path().join("cmdline"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            out.push(Proc { pid, args, env });
        }
        out
    }

    fn agents(&self) -> Vec<Proc> {
        self.processes()
            .into_iter()
            .filter(|p| p.is("agent"))
            .collect()
    }

    /// Stops the "dyno" as Heroku does: SIGTERM to every process at once,
    /// then waits up to 30 s. Returns whether everything exited in time.
    fn stop(&mut self) -> bool {
        for p in self.processes() {
            // SAFETY: kill(2) on a pid we found by its mark; no memory involved.
            unsafe { libc::kill(p.pid, libc::SIGTERM) };
        }
        self.wait_all_gone(Duration::from_secs(30))
    }

    fn wait_all_gone(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let _ = self.child.try_wait();
            if self.processes().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        for p in self.processes() {
            // SAFETY: as in stop().
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        matches!(state, Some('Z' | 'X') | None)
    })
}

/// Whether something has bound UDP `port` (as /proc/net/udp{,6} show it).
fn udp_bound(port: u16) -> bool {
    let hex = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|table| {
        fs::read_to_string(table).is_ok_and(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(1))
                .any(|local| local.ends_with(&hex))
        })
    })
}

fn wait_for(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    common::wait(timeout, cond)
}

/// The environment of a Fir web dyno whose agent forwards to `intake`.
fn fir_env(intake: &Intake, statsd_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("DYNO", FIR_DYNO.to_owned()),
        ("DD_API_KEY", API_KEY.to_owned()),
        ("DD_DD_URL", intake.url()),
        ("DD_DOGSTATSD_PORT", statsd_port.to_string()),
        // Never the default 8126: tests run side by side.
        ("DD_APM_RECEIVER_PORT", common::free_tcp_port().to_string()),
        ("DYNOSTAT_FLUSH_INTERVAL", "1".to_owned()),
        ("HOME", "/nonexistent".to_owned()),
    ]
}

/// The trace relay's port in a [`fir_env`].
fn apm_port(env: &[(&str, String)]) -> String {
    env.iter()
        .find(|(k, _)| *k == "DD_APM_RECEIVER_PORT")
        .map(|(_, v)| v.clone())
        .expect("fir_env sets it")
}

/// An app that records its environment in `file`, then sleeps in the same
/// pid (exec) until it is signalled.
fn env_recording_app(file: &Path) -> Vec<String> {
    vec![
        "bash".into(),
        "-c".into(),
        "env > \"$0\"; exec sleep 600".into(),
        file.display().to_string(),
    ]
}

fn wait_for_file(path: &Path, timeout: Duration) -> String {
    assert!(
        wait_for(timeout, || fs::metadata(path).is_ok_and(|m| m.len() > 0)),
        "{} did not appear",
        path.display()
    );
    fs::read_to_string(path).expect("read it")
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

fn send_udp(port: u16, datagram: &str) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    socket
        .send_to(datagram.as_bytes(), ("127.0.0.1", port))
        .expect("send a datagram");
}

// ---------------------------------------------------------------------------
// buildpack.toml and bin/detect.

#[test]
fn buildpack_toml_declares_a_cnb_in_step_with_the_crate() {
    let bp = toml_file(&repo().join("buildpack.toml"));
    let api = bp["api"].as_str().expect("api is a string");
    let (major, minor) = api.split_once('.').expect("api is MAJOR.MINOR");
    let (major, minor): (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
    assert!(
        (major, minor) >= (0, 10),
        "Buildpack API {api}: 0.10 or later"
    );
    assert!(
        bp["buildpack"]["id"]
            .as_str()
            .is_some_and(|id| id.contains("dynostat")),
        "{bp}"
    );
    assert_eq!(
        bp["buildpack"]["id"]
            .as_str()
            .map(|id| id.replace('/', "_")),
        Some(BP_LAYERS.to_owned()),
        "the layers dir the tests use is <layers>/<escaped id>"
    );
    assert!(bp["buildpack"]["name"].is_string(), "{bp}");
    assert_eq!(
        bp["buildpack"]["version"].as_str(),
        Some(VERSION),
        "buildpack.toml's version must be Cargo.toml's: bin/build downloads release v<version>"
    );
    let targets: Vec<(String, String)> = bp["targets"]
        .as_array()
        .expect("[[targets]]")
        .iter()
        .map(|t| {
            (
                t["os"].as_str().unwrap_or_default().to_owned(),
                t["arch"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for arch in ["amd64", "arm64"] {
        assert!(
            targets.contains(&("linux".into(), arch.into())),
            "no linux/{arch} target: {targets:?}"
        );
    }
    // A classic-only key would make CNB platforms reject or misread it.
    assert!(bp.get("stacks").is_none(), "[[stacks]] is deprecated: {bp}");
}

#[test]
fn detect_passes_under_the_cnb_api_and_still_names_itself_for_classic() {
    let cnb = Cnb::new();
    let out = cnb.detect();
    assert_eq!(out.status.code(), Some(0), "{}", out.both());
    // It requires and provides nothing, so it writes no build plan.
    assert!(!cnb.root.path().join("build-plan.toml").exists());

    let classic = Output::of(
        clean_command(repo().join("bin/detect"))
            .arg(cnb.workspace())
            .output()
            .expect("run bin/detect BUILD_DIR"),
    );
    assert_eq!(classic.status.code(), Some(0), "{}", classic.both());
    assert_eq!(classic.stdout, "dynostat\n");
}

// ---------------------------------------------------------------------------
// bin/build.

#[test]
fn build_installs_a_verified_launch_layer_and_reuses_it() {
    let cnb = Cnb::new();
    cnb.config("DD_API_KEY", API_KEY);
    let artifact = Artifact::debug();
    let out = cnb.build_ok(&artifact);

    // The layer: the binary, and exec.d/dynostat pointing at it.
    let layer = cnb.layer();
    let bin = layer.join("bin/dynostat");
    assert_eq!(sha256(&bin), artifact.sha256, "the verified binary");
    let mode = fs::metadata(&bin)
        .expect("bin/dynostat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o755, 0o755, "executable: {mode:o}");
    let exec_d = layer.join("exec.d/dynostat");
    let link = fs::read_link(&exec_d).expect("exec.d/dynostat is a symlink");
    assert_eq!(
        link,
        Path::new("../bin/dynostat"),
        "relative, so it survives export"
    );
    assert_eq!(
        fs::canonicalize(&exec_d).expect("it resolves"),
        fs::canonicalize(&bin).expect("bin resolves")
    );

    // Nothing else in the buildpack's layers dir: one layer and its toml.
    let mut entries: Vec<String> = fs::read_dir(cnb.bp_layers())
        .expect("list CNB_LAYERS_DIR")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["dynostat", "dynostat.toml"]);

    let toml = toml_file(&cnb.bp_layers().join("dynostat.toml"));
    assert_eq!(toml["types"]["launch"], true, "{toml}");
    assert_eq!(toml["types"]["cache"], true, "{toml}");
    assert_ne!(toml["types"]["build"], true, "{toml}");
    assert_eq!(toml["metadata"]["version"], VERSION, "{toml}");
    assert_eq!(toml["metadata"]["arch"], arch(), "{toml}");
    assert_eq!(
        toml["metadata"]["sha256"],
        artifact.sha256.as_str(),
        "{toml}"
    );

    // Heroku-style output, naming the version and architecture.
    assert!(
        out.stdout
            .contains(&format!("-----> dynostat {VERSION} ({})", arch())),
        "{}",
        out.both()
    );
    assert!(
        out.stdout
            .contains(&format!("Verified sha256 {}", artifact.sha256)),
        "{}",
        out.both()
    );
    assert!(!out.both().contains(API_KEY), "{}", out.both());

    // A rebuild, with the layer restored from the cache as the lifecycle
    // does: the same version and sha256 reuse it, and fetch nothing.
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let before = inode(&bin);
    let again = cnb.build_ok(&artifact);
    assert!(
        again.stdout.contains("Reusing the dynostat layer"),
        "{}",
        again.both()
    );
    assert!(
        !again.stdout.contains("Verified sha256"),
        "{}",
        again.both()
    );
    assert_eq!(inode(&bin), before, "the binary was not reinstalled");
    assert_eq!(
        toml_file(&cnb.bp_layers().join("dynostat.toml"))["types"]["launch"],
        true
    );

    // Another binary (another sha256): installed afresh, metadata updated.
    let other = Artifact::with_trailer(Path::new(common::bin()), b"\0rebuilt");
    let third = cnb.build_ok(&other);
    assert!(
        !third.stdout.contains("Reusing"),
        "a new sha256 must not reuse the layer:\n{}",
        third.both()
    );
    assert_eq!(sha256(&bin), other.sha256);
    assert_eq!(
        toml_file(&cnb.bp_layers().join("dynostat.toml"))["metadata"]["sha256"],
        other.sha256.as_str()
    );
}

#[test]
fn build_refuses_a_tampered_binary_and_installs_nothing() {
    let cnb = Cnb::new();
    let artifact = Artifact::debug();
    // Checksum file of the genuine binary, content altered afterwards.
    let mut bytes = fs::read(&artifact.binary).expect("read");
    bytes.extend_from_slice(b"tampered");
    fs::write(&artifact.binary, bytes).expect("tamper");
    cnb.config("DYNOSTAT_BINARY_URL", &artifact.url());
    let out = cnb.build();
    assert!(!out.status.success(), "{}", out.both());
    assert!(
        out.stderr.contains(" !     "),
        "Heroku error block:\n{}",
        out.both()
    );
    assert!(out.stderr.contains("Checksum mismatch"), "{}", out.both());
    assert!(!cnb.layer().exists(), "a layer was created");
    assert!(!cnb.bp_layers().join("dynostat.toml").exists());

    // No checksum at all: refused too.
    fs::remove_file(format!("{}.sha256", artifact.binary.display())).expect("rm .sha256");
    let out = cnb.build();
    assert!(!out.status.success(), "{}", out.both());
    assert!(out.stderr.contains("No checksum"), "{}", out.both());
    assert!(!cnb.layer().exists());

    // An explicit DYNOSTAT_BINARY_SHA256 (from the platform env dir) is honoured.
    cnb.config("DYNOSTAT_BINARY_SHA256", &sha256(&artifact.binary));
    let out = cnb.build();
    assert!(out.status.success(), "{}", out.both());
    assert!(
        out.stdout.contains("Using DYNOSTAT_BINARY_SHA256"),
        "{}",
        out.both()
    );
}

// ---------------------------------------------------------------------------
// The exec.d program, run as the launcher runs it.

#[test]
fn exec_d_exports_the_port_and_leaves_a_detached_agent_running() {
    let cnb = Cnb::new();
    cnb.build_ok(&Artifact::debug());
    let intake = Intake::start();
    let port = free_udp_port();
    let env_file = cnb.root.path().join("app.env");
    let app = env_recording_app(&env_file);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let env = fir_env(&intake, port);
    let mut launched = cnb.launch(&env, &app);

    // The launcher read fd 3 to end-of-file and saw exec.d exit 0, at once.
    let run = launched.exec_d_run();
    assert!(
        run["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/dynostat_dynostat/dynostat/exec.d/dynostat")),
        "{run}"
    );
    assert_eq!(run["status"], 0, "{run}\n{}", launched.logs());
    let seconds = run["seconds"].as_f64().expect("seconds");
    assert!(
        seconds < 1.0,
        "exec.d took {seconds:.3} s; the launcher waits for it before starting the app"
    );
    assert_eq!(
        run["env"],
        serde_json::json!({
            "DD_DOGSTATSD_PORT": port.to_string(),
            "DD_TRACE_AGENT_PORT": apm_port(&env),
            "DD_AGENT_HOST": "127.0.0.1"
        }),
        "TOML on fd 3: {}",
        run["toml"]
    );

    // The app got those variables, and the layer's bin/ on PATH, in the
    // launcher's own pid.
    let app_env = wait_for_file(&env_file, Duration::from_secs(10));
    assert!(
        has_line(&app_env, &format!("DD_DOGSTATSD_PORT={port}")),
        "{app_env}"
    );
    assert!(has_line(&app_env, "DD_AGENT_HOST=127.0.0.1"), "{app_env}");
    let path_line = app_env
        .lines()
        .find(|l| l.starts_with("PATH="))
        .expect("PATH");
    assert!(
        path_line.starts_with(&format!("PATH={}", cnb.layer().join("bin").display())),
        "{path_line}"
    );
    let report = launched.report();
    assert_eq!(
        report["pid"].as_u64(),
        Some(u64::from(launched.child.id())),
        "the app runs in the launcher's pid"
    );

    // The agent outlives exec.d: detached, in its own session, stdin from
    // /dev/null, without the launcher's fd 3 pipe, told which pid to leave with.
    assert!(
        wait_for(Duration::from_secs(20), || udp_bound(port)),
        "no listener on UDP {port}:\n{}",
        launched.logs()
    );
    let agents = launched.agents();
    assert_eq!(agents.len(), 1, "one agent: {:?}", launched.processes());
    let agent = &agents[0];
    // SAFETY: getsid(2) on a pid; no memory involved.
    let sid = unsafe { libc::getsid(agent.pid) };
    assert_eq!(sid, agent.pid, "the agent leads its own session");
    assert_eq!(
        fs::read_link(format!("/proc/{}/fd/0", agent.pid)).expect("fd 0"),
        Path::new("/dev/null")
    );
    let pipe = format!("pipe:[{}]", run["pipe_inode"]);
    for p in launched.processes() {
        for fd in fs::read_dir(format!("/proc/{}/fd", p.pid))
            .expect("list fds")
            .flatten()
        {
            let target = fs::read_link(fd.path()).unwrap_or_default();
            assert_ne!(
                target,
                Path::new(&pipe),
                "{:?} holds the launcher's fd 3 pipe as fd {:?}",
                p.args,
                fd.file_name()
            );
        }
    }
    assert_eq!(
        agent.env_var("DYNOSTAT_WATCH_PID"),
        Some(launched.child.id().to_string().as_str()),
        "the agent watches the app's pid (the launcher's)"
    );

    assert!(
        launched.stop(),
        "processes left after 30 s: {:?}",
        launched.processes()
    );
    assert!(!launched.logs().contains(API_KEY), "{}", launched.logs());
}

#[test]
fn exec_d_honours_disable_and_a_missing_key_and_the_app_still_starts() {
    let cnb = Cnb::new();
    cnb.build_ok(&Artifact::debug());
    let intake = Intake::start();

    // DISABLE_DATADOG_AGENT: nothing exported, nothing started, one line.
    let port = free_udp_port();
    let env_file = cnb.root.path().join("disabled.env");
    let app = env_recording_app(&env_file);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let mut env = fir_env(&intake, port);
    env.push(("DISABLE_DATADOG_AGENT", "true".to_owned()));
    let mut launched = cnb.launch(&env, &app);
    let run = launched.exec_d_run();
    assert_eq!(run["status"], 0);
    assert_eq!(run["env"], serde_json::json!({}), "{run}");
    let app_env = wait_for_file(&env_file, Duration::from_secs(10));
    assert!(!app_env.contains("DD_AGENT_HOST="), "{app_env}");
    assert!(launched.agents().is_empty(), "{:?}", launched.processes());
    assert!(
        launched
            .logs()
            .contains("DISABLE_DATADOG_AGENT is set; not starting the agent"),
        "{}",
        launched.logs()
    );
    assert!(launched.stop());

    // No DD_API_KEY: the port is exported (clients stay quiet), one hint, no agent.
    let port = free_udp_port();
    let env_file = cnb.root.path().join("keyless.env");
    let app = env_recording_app(&env_file);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let env: Vec<_> = fir_env(&intake, port)
        .into_iter()
        .filter(|(k, _)| *k != "DD_API_KEY")
        .collect();
    let mut launched = cnb.launch(&env, &app);
    let run = launched.exec_d_run();
    assert_eq!(run["status"], 0);
    assert_eq!(run["env"]["DD_DOGSTATSD_PORT"], port.to_string(), "{run}");
    wait_for_file(&env_file, Duration::from_secs(10));
    assert!(launched.agents().is_empty(), "{:?}", launched.processes());
    assert!(
        launched
            .logs()
            .contains("heroku config:set DD_API_KEY=<your Datadog API key>"),
        "{}",
        launched.logs()
    );
    assert!(launched.stop());

    // A DD_AGENT_HOST the app set already is left alone.
    let port = free_udp_port();
    let env_file = cnb.root.path().join("host.env");
    let app = env_recording_app(&env_file);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let mut env = fir_env(&intake, port);
    env.push(("DD_AGENT_HOST", "localhost".to_owned()));
    env.push(("DYNOSTAT_DYNO_TYPES", "worker".to_owned()));
    let mut launched = cnb.launch(&env, &app);
    let run = launched.exec_d_run();
    assert_eq!(
        run["env"],
        serde_json::json!({"DD_DOGSTATSD_PORT": port.to_string(), "DD_TRACE_AGENT_PORT": apm_port(&env)}),
        "{run}"
    );
    let app_env = wait_for_file(&env_file, Duration::from_secs(10));
    assert!(has_line(&app_env, "DD_AGENT_HOST=localhost"), "{app_env}");
    // DYNOSTAT_DYNO_TYPES=worker excludes this Fir web dyno.
    assert!(launched.agents().is_empty(), "{:?}", launched.processes());
    assert!(
        launched
            .logs()
            .contains(&format!("not starting the agent on {FIR_DYNO}")),
        "{}",
        launched.logs()
    );
    assert!(launched.stop());
    assert!(intake.requests().is_empty(), "nothing was forwarded");
}

#[test]
fn exec_d_without_fd_3_still_exits_0_and_says_so_in_debug() {
    let cnb = Cnb::new();
    cnb.build_ok(&Artifact::debug());
    let mut cmd = clean_command(cnb.layer().join("exec.d/dynostat"));
    cmd.current_dir(cnb.workspace())
        .env("DYNO", FIR_DYNO)
        .env("DD_API_KEY", API_KEY)
        .env("DYNOSTAT_DYNO_TYPES", "worker")
        .env("DD_LOG_LEVEL", "debug");
    // SAFETY: close(2) of one fd in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::close(3);
            Ok(())
        });
    }
    let out = Output::of(cmd.output().expect("run exec.d/dynostat"));
    assert_eq!(out.status.code(), Some(0), "{}", out.both());
    assert!(out.stderr.contains("fd 3 is not open"), "{}", out.both());
    assert!(!out.both().contains(API_KEY));
}

#[test]
fn a_config_error_never_keeps_the_app_from_starting() {
    let cnb = Cnb::new();
    cnb.build_ok(&Artifact::debug());
    let intake = Intake::start();
    let env_file = cnb.root.path().join("app.env");
    let app = env_recording_app(&env_file);
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let mut env = fir_env(&intake, 0);
    env.retain(|(k, _)| *k != "DD_DOGSTATSD_PORT");
    env.push(("DD_DOGSTATSD_PORT", "eighty".to_owned()));
    let mut launched = cnb.launch(&env, &app);
    let run = launched.exec_d_run();
    assert_eq!(run["status"], 0, "{}", launched.logs());
    assert_eq!(run["env"], serde_json::json!({}), "{run}");
    wait_for_file(&env_file, Duration::from_secs(10));
    assert!(
        launched.logs().contains("DD_DOGSTATSD_PORT=eighty"),
        "the error names the variable:\n{}",
        launched.logs()
    );
    assert!(launched.agents().is_empty());
    assert!(launched.stop());
}

#[test]
fn the_agent_leaves_with_the_app_and_flushes() {
    let cnb = Cnb::new();
    cnb.build_ok(&Artifact::debug());
    let intake = Intake::start();
    let port = free_udp_port();
    let mut env = fir_env(&intake, port);
    // A long interval: only the final flush can deliver the metric in time.
    env.retain(|(k, _)| *k != "DYNOSTAT_FLUSH_INTERVAL");
    env.push(("DYNOSTAT_FLUSH_INTERVAL", "600".to_owned()));
    let mut launched = cnb.launch(&env, &["bash", "-c", "exec sleep 600"]);
    assert_eq!(launched.exec_d_run()["status"], 0);
    assert!(
        wait_for(Duration::from_secs(20), || udp_bound(port)),
        "no listener on UDP {port}:\n{}",
        launched.logs()
    );
    send_udp(port, "cnb.leaves.with.app:3|c|#k:v");
    // The app ends on its own (here: killed), and nothing signals the agent.
    launched.child.kill().expect("kill the app");
    launched.child.wait().expect("reap the app");
    assert!(
        launched.wait_all_gone(Duration::from_secs(30)),
        "the agent outlived the app: {:?}\n{}",
        launched.processes(),
        launched.logs()
    );
    assert!(
        intake.wait_until(Duration::from_secs(5), |i| {
            (i.total("cnb.leaves.with.app", &["k:v", "dynotype:web"]) - 3.0).abs() < 1e-9
        }),
        "the final flush did not arrive: {:#?}\n{}",
        intake.series(),
        launched.logs()
    );
}

#[test]
fn with_the_launcher_as_pid_1_the_agent_stays_with_the_app() {
    // In a container the launcher, then the app, is pid 1, so exec.d's parent
    // is pid 1 and the agent must not mistake exec.d's exit for the app's.
    let unshare = ["unshare", "-rm", "--pid", "--fork", "--mount-proc", "--"];
    let works = clean_command(unshare[0])
        .args(&unshare[1..])
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        eprintln!("SKIPPED: `unshare -rm --pid --fork --mount-proc true` fails here");
        return;
    }
    let cnb = Cnb::new();
    cnb.build_ok(&Artifact::debug());
    let intake = Intake::start();
    let port = free_udp_port();
    let mut launched = cnb.launch_under(
        &unshare,
        &fir_env(&intake, port),
        &["bash", "-c", "exec sleep 600"],
    );
    assert_eq!(launched.exec_d_run()["status"], 0, "{}", launched.logs());
    assert_eq!(
        launched.report()["pid"],
        1,
        "the app is pid 1 in its namespace"
    );
    assert!(
        wait_for(Duration::from_secs(20), || udp_bound(port)),
        "no listener on UDP {port}:\n{}",
        launched.logs()
    );
    let agents = launched.agents();
    assert_eq!(agents.len(), 1, "{:?}", launched.processes());
    assert_eq!(agents[0].env_var("DYNOSTAT_WATCH_PID"), Some("1"));
    // exec.d is long gone; the agent polls every 500 ms. Watch it for 1.5 s.
    assert!(
        !wait_for(Duration::from_millis(1500), || launched.agents().is_empty()),
        "the agent left while the app still runs:\n{}",
        launched.logs()
    );
    // SIGKILL to the namespace's init ends the whole "container" at once.
    let init = launched
        .processes()
        .into_iter()
        .find(|p| p.args.first().is_some_and(|a| a.ends_with("sleep")))
        .expect("the app process");
    // SAFETY: kill(2) on a pid we found by its mark.
    unsafe { libc::kill(init.pid, libc::SIGKILL) };
    assert!(
        launched.wait_all_gone(Duration::from_secs(10)),
        "{:?}",
        launched.processes()
    );
}

// ---------------------------------------------------------------------------
// The whole thing: a Fir dyno, from build to SIGTERM.

#[test]
fn fir_dyno_delivers_every_metric_with_fir_tags_through_sigterm() {
    let b = builds();
    let artifact = Artifact::release();
    let cnb = Cnb::new();
    cnb.config("DD_API_KEY", API_KEY);

    // The app, as a language CNB would leave it in the workspace.
    fs::create_dir(cnb.workspace().join("bin")).expect("mkdir bin");
    fs::copy(&b.example_app, cnb.workspace().join("bin/example-app")).expect("copy example-app");

    let detect = cnb.detect();
    assert_eq!(detect.status.code(), Some(0), "{}", detect.both());
    let build = cnb.build_ok(&artifact);
    assert_eq!(sha256(&cnb.layer().join("bin/dynostat")), artifact.sha256);
    assert!(!build.both().contains(API_KEY));

    let intake = Intake::start();
    let statsd_port = free_udp_port();
    let web_port = free_tcp_port();
    let mut env = fir_env(&intake, statsd_port);
    env.push(("PORT", web_port.to_string()));
    // heroku/buildpacks-procfile launches `bash -c CMD`.
    let mut dyno = cnb.launch(&env, &["bash", "-c", "exec bin/example-app"]);
    let run = dyno.exec_d_run();
    assert_eq!(run["status"], 0, "{}", dyno.logs());
    assert!(run["seconds"].as_f64().is_some_and(|s| s < 1.0), "{run}");
    assert!(
        wait_for(Duration::from_secs(30), || udp_bound(statsd_port)),
        "the agent's listener did not come up:\n{}",
        dyno.logs()
    );
    assert!(
        wait_for(Duration::from_secs(30), || TcpStream::connect((
            "127.0.0.1",
            web_port
        ))
        .is_ok()),
        "the app did not come up:\n{}",
        dyno.logs()
    );

    // Traffic, then SIGTERM to everything at once: the last requests' metrics
    // are still in the open bucket.
    let mut expected: std::collections::BTreeMap<(&str, &str), u32> = Default::default();
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
    assert!(
        dyno.stop(),
        "processes left 30 s after SIGTERM: {:?}\n{}",
        dyno.processes(),
        dyno.logs()
    );
    let logs = dyno.logs();
    assert!(
        !logs.contains(API_KEY),
        "the API key reached the logs:\n{logs}"
    );

    let fir_tags = [
        "dyno:web-12a34b56d-e78f9",
        "dynotype:web",
        "service:example-app",
    ];
    for ((route, code), n) in &expected {
        let route_tag = format!("route:{route}");
        let status_tag = format!("status:{code}");
        let mut tags: Vec<&str> = fir_tags.to_vec();
        tags.extend(["method:GET", route_tag.as_str(), status_tag.as_str()]);
        let requests = intake.total("example_app.requests", &tags);
        let timed = intake.total("example_app.request.duration.count", &tags);
        assert!(
            (requests - f64::from(*n)).abs() < 1e-6 && (timed - f64::from(*n)).abs() < 1e-6,
            "{route} {code}: sent {n}, the intake counted {requests} requests and {timed} timings\n\
             series: {:#?}\n{logs}",
            intake.series_named("example_app.requests")
        );
    }
    for s in intake.series().iter().filter(|s| {
        s["metric"]
            .as_str()
            .is_some_and(|m| m.starts_with("example_app."))
    }) {
        assert!(common::has_tags(s, &fir_tags), "untagged series {s}");
        assert!(
            !common::has_tags(s, &["dynotype:web-12a34b56d"]),
            "Cedar-style parsing of a Fir DYNO: {s}"
        );
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
