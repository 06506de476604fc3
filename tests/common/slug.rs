//! Helpers shared by the buildpack tests (`tests/buildpack.rs`, classic
//! Heroku) and the CNB tests (`tests/cnb.rs`, Fir): the repository root,
//! scratch directories, script output, clean commands, release artifacts laid
//! out as the build scripts download them, and the static release binary and
//! example app built once per machine into `<target>/dyno-test`.
//!
//! In: the repository's scripts and the `dynostat` binary cargo built for the
//! tests. Out: paths, outputs and artifacts for the tests to check. Never
//! leaves 127.0.0.1, and never writes under /tmp (a booted dyno gets a fresh
//! tmpfs there): every directory is under `CARGO_TARGET_TMPDIR`.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The repository root (the `dynostat` crate's manifest dir).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The architecture name in release artifacts, as `uname -m` prints it.
pub fn arch() -> &'static str {
    std::env::consts::ARCH
}

/// A temp directory under the target dir, not under /tmp: a booted dyno gets
/// a fresh tmpfs on /tmp, which would hide a slug kept there. Its name starts
/// with the test file's name (`buildpack-`, `cnb-`).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(concat!(env!("CARGO_CRATE_NAME"), "-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a temp dir under CARGO_TARGET_TMPDIR")
}

/// The sha256 of the file at `path`, in hex, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a checksum")
        .to_owned()
}

/// The output of a finished script.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn of(out: std::process::Output) -> Self {
        Self {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Both streams, labelled, for an assertion message.
    pub fn both(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// A command with an empty environment but PATH and LANG: nothing from the
/// test runner's environment (DYNOSTAT_*, DD_*) leaks into the scripts.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null());
    cmd
}

/// A release artifact laid out as scripts/release-build.sh writes it and the
/// build scripts download it: `dynostat-<arch>` and `dynostat-<arch>.sha256`
/// in a directory.
pub struct Artifact {
    /// The scratch copy's directory; `None` for the release build itself.
    _dir: Option<tempfile::TempDir>,
    pub binary: PathBuf,
    pub sha256: String,
}

impl Artifact {
    /// Lays out a copy of `binary` with its checksum file.
    pub fn of(binary: &Path) -> Self {
        Self::with_trailer(binary, b"")
    }

    /// Lays out a copy of `binary`, plus `extra` bytes at its end (an ELF
    /// file still runs with trailing bytes: a different build, same code),
    /// with its checksum file.
    pub fn with_trailer(binary: &Path, extra: &[u8]) -> Self {
        let dir = scratch();
        let name = format!("dynostat-{}", arch());
        let dest = dir.path().join(&name);
        fs::copy(binary, &dest).expect("copy the binary into the artifact dir");
        if !extra.is_empty() {
            fs::OpenOptions::new()
                .append(true)
                .open(&dest)
                .and_then(|mut f| f.write_all(extra))
                .expect("append to the artifact");
        }
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).expect("chmod");
        let sum = sha256(&dest);
        fs::write(
            dir.path().join(format!("{name}.sha256")),
            format!("{sum}  {name}\n"),
        )
        .expect("write the .sha256 file");
        Self {
            _dir: Some(dir),
            binary: dest,
            sha256: sum,
        }
    }

    /// The debug `dynostat` that cargo built for these tests.
    pub fn debug() -> Self {
        Self::of(Path::new(super::bin()))
    }

    /// The static release binary, where scripts/release-build.sh put it
    /// (not copied).
    pub fn release() -> Self {
        let dist = &builds().dist;
        let binary = dist.join(format!("dynostat-{}", arch()));
        let sums = fs::read_to_string(dist.join(format!("dynostat-{}.sha256", arch())))
            .expect("the release .sha256");
        let sha256 = sums.split_whitespace().next().expect("a sum").to_owned();
        Self {
            _dir: None,
            binary,
            sha256,
        }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.binary.display())
    }

    pub fn checksum_file(&self) -> PathBuf {
        PathBuf::from(format!("{}.sha256", self.binary.display()))
    }
}

/// The static release binary and the example app, built once per test run
/// (and kept between runs in `<target>/dyno-test`, so later runs only relink;
/// whichever test file runs second finds them up to date).
pub struct Builds {
    /// `dynostat-<arch>` and `.sha256`, as scripts/release-build.sh lays them out.
    pub dist: PathBuf,
    pub example_app: PathBuf,
}

/// Builds (once) and returns the static release binary and the example app.
pub fn builds() -> &'static Builds {
    static BUILDS: OnceLock<Builds> = OnceLock::new();
    BUILDS.get_or_init(|| {
        // Its own target dir: the running `cargo test` holds the lock on ours.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
            .join("dyno-test");
        let dist = target.join("dist");
        // One build at a time across processes: cargo-nextest runs each test
        // in a process of its own, and two release-build.sh runs writing the
        // same dist/ race on its temporary file. Whoever comes second finds
        // the build up to date. The lock goes with the file at the end.
        fs::create_dir_all(&target).expect("create <target>/dyno-test");
        let lock = fs::File::create(target.join("build.lock")).expect("create the build lock");
        // SAFETY: flock on a descriptor this function owns; it blocks until
        // the other build is done and touches no memory.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            locked,
            0,
            "flock the build lock: {}",
            std::io::Error::last_os_error()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // Release, minus what makes it slow; linking stays exactly as released.
        let fast = [
            ("CARGO_TARGET_DIR", target.as_os_str()),
            ("CARGO_PROFILE_RELEASE_LTO", "false".as_ref()),
            ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16".as_ref()),
            ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0".as_ref()),
            ("CARGO", cargo.as_ref()),
        ];
        let out = Output::of(
            Command::new(repo().join("scripts/release-build.sh"))
                .arg("--out")
                .arg(&dist)
                .envs(fast)
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/release-build.sh"),
        );
        assert!(
            out.status.success(),
            "scripts/release-build.sh failed:\n{}",
            out.both()
        );
        let out = Output::of(
            Command::new(&cargo)
                .args(["build", "--release", "--locked", "-p", "example-app"])
                .current_dir(repo())
                .envs(fast)
                .stdin(Stdio::null())
                .output()
                .expect("run cargo build -p example-app"),
        );
        assert!(
            out.status.success(),
            "building example-app failed:\n{}",
            out.both()
        );
        drop(lock);
        Builds {
            dist,
            example_app: target.join("release/example-app"),
        }
    })
}

/// One HTTP/1.1 GET on 127.0.0.1; returns the whole response.
pub fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the app");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send a request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}
