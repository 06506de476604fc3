//! The Postgres and Redis checks against real servers (issue 23): Debian's
//! `postgresql` and `redis-server` (scripts/install-test-deps.sh installs
//! them), started here as throwaway instances on 127.0.0.1, with the real
//! binary forwarding to the stand-in intake.
//!
//! `initdb` refuses to run as root, so as root (CI) the Postgres instance
//! runs as the `postgres` user Debian's package creates (else `nobody`),
//! through `runuser`; its directory is handed to that user.
//!
//! When the servers are missing these tests fail with the install command,
//! rather than pass without having run.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use common::{free_tcp_port, wait, Intake, Serve};
use serde_json::Value;

const PG_PASSWORD: &str = "app-Secret-7f3a9";
const REDIS_PASSWORD: &str = "redis-Secret-4b2c1";

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    let bin = dirs.last().map(|d| d.join(name));
    match bin {
        Some(b) if b.exists() => b,
        _ => panic!("PostgreSQL is not installed ({name} not found under /usr/lib/postgresql/*/bin); run scripts/install-test-deps.sh"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The user a root test runs the server as.
fn server_user() -> &'static str {
    let has_postgres = Command::new("id")
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_postgres {
        "postgres"
    } else {
        "nobody"
    }
}

/// A command run as the server's user when we are root.
fn as_server(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", server_user(), "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway PostgreSQL: `initdb` in a temp dir, `pg_ctl` on a free
/// port of 127.0.0.1, a non-superuser `app` owning database `appdb`.
struct Pg {
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
}

impl Pg {
    fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        let pg = Self { dir, port, tls };
        std::fs::write(pg.dir.path().join("pw"), "super-pw\n").unwrap();
        if tls {
            run_ok(
                Command::new("openssl")
                    .args([
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-days",
                        "1",
                        "-subj",
                        "/CN=localhost",
                    ])
                    .arg("-keyout")
                    .arg(pg.dir.path().join("server.key"))
                    .arg("-out")
                    .arg(pg.dir.path().join("server.crt")),
                "openssl req (a test certificate)",
            );
            run_ok(
                Command::new("chmod")
                    .arg("600")
                    .arg(pg.dir.path().join("server.key")),
                "chmod the key",
            );
        }
        if is_root() {
            run_ok(
                Command::new("chown")
                    .arg("-R")
                    .arg(server_user())
                    .arg(pg.dir.path()),
                "chown the data directory",
            );
        }
        run_ok(
            as_server(&pg_bin("initdb"))
                .arg("-D")
                .arg(pg.data())
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                ])
                .arg(format!("--pwfile={}", pg.dir.path().join("pw").display())),
            "initdb",
        );
        pg.pg_ctl_start();
        pg.psql_super("CREATE ROLE app LOGIN PASSWORD 'app-Secret-7f3a9'");
        pg.psql_super("CREATE DATABASE appdb OWNER app");
        pg.psql_app("CREATE TABLE t (id int)");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=20 -c fsync=off -c autovacuum=off",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                self.dir.path().display()
            ));
        }
        run_ok(
            as_server(&pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "30", "-o", &opts, "-l"])
                .arg(self.dir.path().join("log"))
                .arg("start"),
            "pg_ctl start",
        );
    }

    fn stop(&self) {
        run_ok(
            as_server(&pg_bin("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "30", "-m", "immediate", "stop"]),
            "pg_ctl stop",
        );
    }

    fn psql(&self, user: &str, db: &str, sql: &str) -> String {
        let out = Command::new(pg_bin("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .arg(self.port.to_string())
            .args(["-U", user, "-d", db, "-c", sql])
            .env(
                "PGPASSWORD",
                if user == "app" {
                    PG_PASSWORD
                } else {
                    "super-pw"
                },
            )
            .env("PGSSLMODE", "prefer")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn psql_super(&self, sql: &str) -> String {
        self.psql("postgres", "postgres", sql)
    }

    fn psql_app(&self, sql: &str) -> String {
        self.psql("app", "appdb", sql)
    }

    /// An open session named `app` (psql reading its stdin), kept until dropped.
    fn session(&self, app: &str, sql: &str) -> Session {
        let mut child = Command::new(pg_bin("psql"))
            .args(["-X", "-q", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", "app", "-d", "appdb"])
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGAPPNAME", app)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{sql}").unwrap();
        stdin.flush().unwrap();
        Session {
            child,
            _stdin: stdin,
        }
    }

    fn url(&self, password: &str, sslmode: &str) -> String {
        format!(
            "postgres://app:{password}@127.0.0.1:{}/appdb?sslmode={sslmode}",
            self.port
        )
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = as_server(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

struct Session {
    child: Child,
    _stdin: ChildStdin,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway `redis-server` on 127.0.0.1 with a password, plain or TLS.
struct Redis {
    child: Child,
    port: u16,
    tls: bool,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            REDIS_PASSWORD,
        ])
        .arg("--dir")
        .arg(dir.path());
        if tls {
            run_ok(
                Command::new("openssl")
                    .args([
                        "req",
                        "-x509",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-days",
                        "1",
                        "-subj",
                        "/CN=localhost",
                    ])
                    .arg("-keyout")
                    .arg(dir.path().join("r.key"))
                    .arg("-out")
                    .arg(dir.path().join("r.crt")),
                "openssl req (a test certificate)",
            );
            cmd.args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(dir.path().join("r.crt"))
            .arg("--tls-key-file")
            .arg(dir.path().join("r.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.path().join("r.crt"));
        } else {
            cmd.args(["--port", &port.to_string()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e}; run scripts/install-test-deps.sh"));
        assert!(
            wait(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "redis-server did not listen on {port}"
        );
        Self {
            child,
            port,
            tls,
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) {
        run_ok(
            Command::new("redis-cli")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "--no-auth-warning",
                    "-a",
                    REDIS_PASSWORD,
                ])
                .args(if self.tls {
                    &["--tls", "--insecure"][..]
                } else {
                    &[]
                })
                .args(args),
            "redis-cli",
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every service check the intake accepted.
fn service_checks(intake: &Intake) -> Vec<Value> {
    intake
        .requests()
        .iter()
        .filter(|r| r.accepted() && r.path == "/api/v1/check_run")
        .flat_map(|r| r.json().as_array().cloned().unwrap_or_default())
        .collect()
}

fn checks_named(intake: &Intake, name: &str, status: u64) -> Vec<Value> {
    service_checks(intake)
        .into_iter()
        .filter(|c| c["check"] == name && c["status"] == status)
        .collect()
}

/// The last value of `metric` with all of `tags`.
fn last(intake: &Intake, metric: &str, tags: &[&str]) -> Option<f64> {
    intake.points_where(metric, tags, false).last().map(|p| p.1)
}

fn tags_of(v: &Value) -> Vec<String> {
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// Asserts `secret` is nowhere: not on stderr or stdout, not in any body.
fn assert_never_shown(serve: &Serve, intake: &Intake, secret: &str) {
    assert!(
        !serve.stderr().contains(secret),
        "the password is in the log:\n{}",
        serve.stderr()
    );
    assert!(
        !serve.stdout().contains(secret),
        "the password is on stdout"
    );
    for r in intake.requests() {
        assert!(
            !String::from_utf8_lossy(&r.body).contains(secret),
            "the password was sent to {}",
            r.path
        );
    }
}

fn serve_with_pg(intake: &Intake, url: &str) -> Serve {
    Serve::builder()
        .intake(intake)
        .env("DD_ENABLE_HEROKU_POSTGRES", "true")
        .env("DATABASE_URL", url)
        .env("DYNOSTAT_CHECKS_INTERVAL", "1")
        .start()
}

#[test]
fn connection_states_by_application_and_the_usage_of_max_connections() {
    let pg = Pg::start(false);
    let _a1 = pg.session("appA", "SELECT 1;");
    let _a2 = pg.session("appA", "SELECT 1;");
    let _b1 = pg.session("appB", "SELECT 1;");
    let _b2 = pg.session("appB", "BEGIN; SELECT 1;");
    assert!(
        wait(Duration::from_secs(10), || {
            pg.psql_super(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('appA', 'appB') AND state IS NOT NULL AND state <> 'active'"
        ) == "4"
        }),
        "the four sessions did not settle"
    );
    let intake = Intake::start();
    let mut serve = serve_with_pg(&intake, &pg.url(PG_PASSWORD, "disable"));
    let state = |app: &str, state: &str| {
        last(
            &intake,
            "postgresql.connection_state",
            &[
                "db:appdb",
                &format!("application_name:{app}"),
                &format!("state:{state}"),
            ],
        )
    };
    assert!(
        intake.wait_until(Duration::from_secs(20), |_| state(
            "appB",
            "idle_in_transaction"
        )
        .is_some()),
        "no connection_state; stderr:\n{}",
        serve.stderr()
    );
    assert_eq!(state("appA", "idle"), Some(2.0));
    assert_eq!(state("appB", "idle"), Some(1.0));
    assert_eq!(state("appB", "idle_in_transaction"), Some(1.0));
    assert_eq!(
        state("dynostat", "active"),
        Some(1.0),
        "our own one connection, named"
    );
    assert_eq!(state("appA", "idle_in_transaction"), None);
    let series = intake.series_named("postgresql.connection_state");
    let tags = tags_of(&series[0]);
    for t in ["server:127.0.0.1".to_owned(), format!("port:{}", pg.port)] {
        assert!(tags.contains(&t), "{tags:?}");
    }
    assert_eq!(
        tags.iter().filter(|t| t.starts_with("db:")).count(),
        1,
        "{tags:?}"
    );

    // 4 sessions and ours on appdb, none elsewhere; max_connections=20.
    let instance = ["db:appdb", "server:127.0.0.1"];
    assert_eq!(
        last(&intake, "postgresql.max_connections", &instance),
        Some(20.0)
    );
    assert_eq!(
        last(&intake, "postgresql.connections", &["db:appdb"]),
        Some(5.0)
    );
    assert_eq!(
        last(&intake, "postgresql.percent_usage_connections", &instance),
        Some(0.25)
    );
    let ok = checks_named(&intake, "postgres.can_connect", 0);
    assert!(!ok.is_empty());
    assert!(tags_of(&ok[0]).contains(&"db:appdb".to_owned()));
    // Exactly one connection of ours, however many runs.
    assert_eq!(
        pg.psql_super("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dynostat'"),
        "1"
    );
    serve.stop_ok(Duration::from_secs(10));
    assert_never_shown(&serve, &intake, PG_PASSWORD);
}

#[test]
fn rows_inserted_show_up_as_their_rate() {
    let pg = Pg::start(false);
    let intake = Intake::start();
    // Runs 2 s apart: the rate is rows per second, so its points times 2
    // add up to the rows (a per-run count would add up to twice that).
    let mut serve = Serve::builder()
        .intake(&intake)
        .env("DD_ENABLE_HEROKU_POSTGRES", "true")
        .env("DATABASE_URL", &pg.url(PG_PASSWORD, "disable"))
        .env("DYNOSTAT_CHECKS_INTERVAL", "2")
        .start();
    // A first collection is the base of every rate, and sends none.
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !i
            .series_named("postgresql.connections")
            .is_empty()),
        "no first collection; stderr:\n{}",
        serve.stderr()
    );
    let before = intake.points_where("postgresql.rows_inserted", &["db:appdb"], false);
    assert!(before.iter().all(|p| p.1 == 0.0), "{before:?}");
    pg.psql_app("INSERT INTO t SELECT generate_series(1, 3000)");
    let inserted = |i: &Intake| -> f64 {
        2.0 * i
            .points_where("postgresql.rows_inserted", &["db:appdb"], false)
            .iter()
            .map(|p| p.1)
            .sum::<f64>()
    };
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| inserted(i) > 2000.0),
        "no rows_inserted rate; stderr:\n{}",
        serve.stderr()
    );
    // Two more runs, so every point of the insert is in.
    std::thread::sleep(Duration::from_secs(5));
    let total = inserted(&intake);
    // The runs are 2 s apart give or take a busy machine's delays.
    assert!((total - 3000.0).abs() < 3000.0 * 0.15, "{total}");
    let s = &intake.series_named("postgresql.rows_inserted")[0];
    assert_eq!(
        s["type"], 3,
        "a check's rate is sent as a gauge, per second, as the Agent's"
    );
    let deadlocks = intake.series_named("postgresql.deadlocks.count");
    assert!(
        !deadlocks.is_empty() && deadlocks[0]["type"] == 1,
        "monotonic count: a COUNT"
    );
    assert!(last(&intake, "postgresql.database_size", &["db:appdb"]).unwrap_or(0.0) > 1e6);
    serve.stop_ok(Duration::from_secs(10));
}

#[test]
fn a_database_that_goes_away_is_critical_once_in_the_log_and_comes_back() {
    let pg = Pg::start(false);
    let intake = Intake::start();
    let mut serve = serve_with_pg(&intake, &pg.url(PG_PASSWORD, "disable"));
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !checks_named(
            i,
            "postgres.can_connect",
            0
        )
        .is_empty()),
        "no OK; stderr:\n{}",
        serve.stderr()
    );
    pg.stop();
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !checks_named(
            i,
            "postgres.can_connect",
            2
        )
        .is_empty()),
        "no CRITICAL; stderr:\n{}",
        serve.stderr()
    );
    // The listener is untouched: a metric sent now is delivered.
    serve.send(b"app.during_outage:1|c");
    assert!(intake.wait_until(Duration::from_secs(10), |i| i
        .total("app.during_outage", &[])
        == 1.0));
    std::thread::sleep(Duration::from_secs(3));
    pg.pg_ctl_start();
    let oks = checks_named(&intake, "postgres.can_connect", 0).len();
    assert!(
        intake.wait_until(Duration::from_secs(30), |i| checks_named(
            i,
            "postgres.can_connect",
            0
        )
        .len()
            > oks),
        "no OK after the restart; stderr:\n{}",
        serve.stderr()
    );
    let log = serve.stderr();
    assert_eq!(
        log.matches("check failed").count(),
        1,
        "one line per outage:\n{log}"
    );
    assert_eq!(log.matches("check recovered").count(), 1, "{log}");
    let critical = &checks_named(&intake, "postgres.can_connect", 2)[0];
    assert!(
        critical["message"].as_str().unwrap().contains("127.0.0.1"),
        "{critical}"
    );
    serve.stop_ok(Duration::from_secs(10));
}

#[test]
fn wrong_credentials_are_critical_and_the_password_is_never_shown() {
    let pg = Pg::start(false);
    let intake = Intake::start();
    let wrong = "wrong-Secret-9d8e7";
    let mut serve = serve_with_pg(&intake, &pg.url(wrong, "disable"));
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !checks_named(
            i,
            "postgres.can_connect",
            2
        )
        .is_empty()),
        "no CRITICAL; stderr:\n{}",
        serve.stderr()
    );
    let c = &checks_named(&intake, "postgres.can_connect", 2)[0];
    let message = c["message"].as_str().unwrap();
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(
        message.contains("check the credentials in DATABASE_URL"),
        "{message}"
    );
    assert!(serve.wait_stderr(Duration::from_secs(5), "check failed"));
    serve.stop_ok(Duration::from_secs(10));
    assert_never_shown(&serve, &intake, wrong);
    assert_never_shown(&serve, &intake, PG_PASSWORD);
}

#[test]
fn postgres_over_tls_with_a_self_signed_certificate() {
    let pg = Pg::start(true);
    let intake = Intake::start();
    let mut serve = serve_with_pg(&intake, &pg.url(PG_PASSWORD, "require"));
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !checks_named(
            i,
            "postgres.can_connect",
            0
        )
        .is_empty()),
        "no OK over TLS; stderr:\n{}",
        serve.stderr()
    );
    assert!(
        serve
            .stderr()
            .contains("required, certificate not verified"),
        "{}",
        serve.stderr()
    );
    assert_eq!(
        pg.psql_super("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'dynostat' AND s.ssl"),
        "1",
        "our connection is encrypted"
    );
    serve.stop_ok(Duration::from_secs(10));
}

#[test]
fn sslmode_require_refuses_a_server_without_tls() {
    let pg = Pg::start(false);
    let intake = Intake::start();
    let mut serve = serve_with_pg(&intake, &pg.url(PG_PASSWORD, "require"));
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !checks_named(
            i,
            "postgres.can_connect",
            2
        )
        .is_empty()),
        "no CRITICAL; stderr:\n{}",
        serve.stderr()
    );
    let c = &checks_named(&intake, "postgres.can_connect", 2)[0];
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("does not offer TLS"),
        "{c}"
    );
    serve.stop_ok(Duration::from_secs(10));
}

#[test]
fn a_dyno_other_than_the_chosen_one_runs_no_checks() {
    let pg = Pg::start(false);
    let intake = Intake::start();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("Procfile"), "web: true\nworker: true\n").unwrap();
    let mut cmd_env = Serve::builder()
        .intake(&intake)
        .env("DD_ENABLE_HEROKU_POSTGRES", "true")
        .env("DATABASE_URL", &pg.url(PG_PASSWORD, "disable"))
        .env("DYNOSTAT_CHECKS_INTERVAL", "1")
        .env("DYNO", "worker.1")
        .env("HOME", app.path().to_str().unwrap())
        .start();
    assert!(
        cmd_env.wait_stderr(
            Duration::from_secs(5),
            "the checks run on web.1, not on this dyno (worker.1)"
        ),
        "{}",
        cmd_env.stderr()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(intake.series_named("postgresql.connections").is_empty());
    assert!(service_checks(&intake).is_empty());
    assert_eq!(
        pg.psql_super("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dynostat'"),
        "0"
    );
    cmd_env.stop_ok(Duration::from_secs(10));

    // DYNOSTAT_CHECKS_DYNO names this one: it runs them.
    let mut chosen = Serve::builder()
        .intake(&intake)
        .env("DD_ENABLE_HEROKU_POSTGRES", "true")
        .env("DATABASE_URL", &pg.url(PG_PASSWORD, "disable"))
        .env("DYNOSTAT_CHECKS_INTERVAL", "1")
        .env("DYNO", "worker.1")
        .env("DYNOSTAT_CHECKS_DYNO", "worker.1")
        .start();
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !i
            .series_named("postgresql.connections")
            .is_empty()),
        "{}",
        chosen.stderr()
    );
    let s = &intake.series_named("postgresql.connections")[0];
    assert!(
        tags_of(s).contains(&"dyno:worker.1".to_owned()),
        "the dyno's tags, as every series"
    );
    chosen.stop_ok(Duration::from_secs(10));
}

#[test]
fn a_bad_url_is_one_line_with_the_fix() {
    let intake = Intake::start();
    let mut serve = Serve::builder()
        .intake(&intake)
        .env("DD_ENABLE_HEROKU_POSTGRES", "true")
        .env(
            "DATABASE_URL",
            "postgres://app:hunter2-Secret@127.0.0.1:notaport/appdb",
        )
        .start();
    assert!(serve.wait_stderr(
        Duration::from_secs(5),
        "DATABASE_URL: the port is not a number"
    ));
    let line = serve
        .stderr()
        .lines()
        .find(|l| l.contains("DATABASE_URL: the port"))
        .unwrap()
        .to_owned();
    assert!(line.contains("heroku config:get DATABASE_URL"), "{line}");
    serve.send(b"app.still_listening:1|c");
    assert!(intake.wait_until(Duration::from_secs(10), |i| i
        .total("app.still_listening", &[])
        == 1.0));
    serve.stop_ok(Duration::from_secs(10));
    assert_never_shown(&serve, &intake, "hunter2-Secret");
}

fn redis_serve(intake: &Intake, url: &str) -> Serve {
    Serve::builder()
        .intake(intake)
        .env("DD_ENABLE_HEROKU_REDIS", "true")
        .env("REDIS_URL", url)
        .env("DYNOSTAT_CHECKS_INTERVAL", "1")
        .start()
}

fn redis_figures(tls: bool) {
    let redis = Redis::start(tls);
    redis.cli(&["SET", "a", "1"]);
    redis.cli(&["SET", "b", "2", "EX", "600"]);
    redis.cli(&["SET", "c", "3"]);
    let intake = Intake::start();
    let scheme = if tls { "rediss" } else { "redis" };
    let mut serve = redis_serve(
        &intake,
        &format!("{scheme}://:{REDIS_PASSWORD}@127.0.0.1:{}", redis.port),
    );
    let base = [
        "redis_host:127.0.0.1".to_owned(),
        format!("redis_port:{}", redis.port),
        "redis_role:master".to_owned(),
    ];
    let base: Vec<&str> = base.iter().map(String::as_str).collect();
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !i
            .series_named("redis.net.commands")
            .is_empty()),
        "no second collection; stderr:\n{}",
        serve.stderr()
    );
    let db0: Vec<&str> = base.iter().copied().chain(["redis_db:db0"]).collect();
    assert_eq!(last(&intake, "redis.keys", &db0), Some(3.0));
    assert_eq!(last(&intake, "redis.expires", &db0), Some(1.0));
    assert_eq!(last(&intake, "redis.persist", &db0), Some(2.0));
    assert!(last(&intake, "redis.net.clients", &base).unwrap_or(0.0) >= 1.0);
    assert!(last(&intake, "redis.mem.used", &base).unwrap_or(0.0) > 0.0);
    assert!(last(&intake, "redis.mem.peak", &base).unwrap_or(0.0) > 0.0);
    assert!(last(&intake, "redis.mem.fragmentation_ratio", &base).is_some());
    assert!(last(&intake, "redis.rdb.changes_since_last", &base).is_some());
    assert!(last(&intake, "redis.keys.evicted", &base).is_some());
    let commands = &intake.series_named("redis.net.commands")[0];
    assert_eq!(commands["type"], 3, "a rate, sent as a gauge");
    let ok = checks_named(&intake, "redis.can_connect", 0);
    assert!(!ok.is_empty(), "{:?}", service_checks(&intake));
    serve.stop_ok(Duration::from_secs(10));
    assert_never_shown(&serve, &intake, REDIS_PASSWORD);
}

#[test]
fn redis_info_and_keyspace_under_the_agents_names() {
    redis_figures(false);
}

#[test]
fn rediss_with_a_self_signed_certificate() {
    redis_figures(true);
}

#[test]
fn redis_with_a_wrong_password_is_critical_and_never_shown() {
    let redis = Redis::start(false);
    let intake = Intake::start();
    let wrong = "wrong-Redis-Secret-5";
    let mut serve = redis_serve(
        &intake,
        &format!("redis://:{wrong}@127.0.0.1:{}", redis.port),
    );
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !checks_named(
            i,
            "redis.can_connect",
            2
        )
        .is_empty()),
        "no CRITICAL; stderr:\n{}",
        serve.stderr()
    );
    let c = &checks_named(&intake, "redis.can_connect", 2)[0];
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("check the password in REDIS_URL"),
        "{c}"
    );
    serve.stop_ok(Duration::from_secs(10));
    assert_never_shown(&serve, &intake, wrong);
}

#[test]
fn dynostat_start_runs_the_checks_and_shows_them_on_the_console() {
    let redis = Redis::start(false);
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("Procfile"), "web: sleep 30\n").unwrap();
    std::fs::write(
        app.path().join(".env"),
        format!(
            "DD_ENABLE_HEROKU_REDIS=true\nREDIS_URL=redis://:{REDIS_PASSWORD}@127.0.0.1:{}\nDYNOSTAT_CHECKS_INTERVAL=1\n",
            redis.port
        ),
    )
    .unwrap();
    let mut cmd = Command::new(common::bin());
    cmd.args(["start", "--no-timestamp"])
        .current_dir(app.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("DD_") || k.starts_with("DYNOSTAT_") || k == "DYNO" {
            cmd.env_remove(k);
        }
    }
    cmd.env("DD_DOGSTATSD_PORT", common::free_udp_port().to_string())
        .env("DYNOSTAT_FLUSH_INTERVAL", "1")
        .env("DYNOSTAT_SHUTDOWN_GRACE", "0.2");
    let mut child = cmd.spawn().unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let out = std::sync::Arc::clone(&out);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                let mut o = out.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
    }
    let text = || out.lock().unwrap().clone();
    let shown = wait(Duration::from_secs(20), || {
        let t = text();
        t.lines()
            .any(|l| l.contains("redis.can_connect") && l.contains("OK"))
            && t.contains("redis.net.commands")
    });
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM);
    }
    let _ = child.wait();
    let t = text();
    assert!(shown, "{t}");
    assert!(t.contains("the checks run here"), "{t}");
    assert!(!t.contains(REDIS_PASSWORD), "{t}");
}

/// Older Heroku Redis URLs name a placeholder user (`redis://h:PASSWORD@`)
/// that the server has no ACL user for.
#[test]
fn an_old_heroku_redis_url_with_a_placeholder_user_still_connects() {
    let redis = Redis::start(false);
    let intake = Intake::start();
    let mut serve = redis_serve(
        &intake,
        &format!("redis://h:{REDIS_PASSWORD}@127.0.0.1:{}", redis.port),
    );
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !checks_named(
            i,
            "redis.can_connect",
            0
        )
        .is_empty()),
        "no OK; stderr:\n{}",
        serve.stderr()
    );
    serve.stop_ok(Duration::from_secs(10));
    assert_never_shown(&serve, &intake, REDIS_PASSWORD);
}

#[test]
fn dynostat_check_names_a_bad_url_and_fails_without_showing_it() {
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("Procfile"), "web: true\n").unwrap();
    let run = |env_file: &str| {
        std::fs::write(app.path().join(".env"), env_file).unwrap();
        let mut cmd = Command::new(common::bin());
        cmd.arg("check").current_dir(app.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("DD_")
                || k.starts_with("DYNOSTAT_")
                || k == "DYNO"
                || k.ends_with("_URL")
            {
                cmd.env_remove(k);
            }
        }
        cmd.output().unwrap()
    };
    let out = run("DD_ENABLE_HEROKU_POSTGRES=true\nDATABASE_URL=postgres://u:hunter2-Secret@db.example.com:5432/d\n");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("valid postgres check on DATABASE_URL (db.example.com:5432)"),
        "{stdout}"
    );
    let out = run("DD_ENABLE_HEROKU_POSTGRES=true\nDATABASE_URL=mysql://u:hunter2-Secret@db/d\n");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("checks: DATABASE_URL: the scheme"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2") && !String::from_utf8_lossy(&out.stdout).contains("hunter2")
    );
}

/// Host names go through hickory (forward::dns), for the intake and the
/// checks alike: `/etc/hosts` names `localhost` on every machine.
#[test]
fn names_resolve_through_the_shared_resolver_for_the_intake_and_a_check() {
    let redis = Redis::start(false);
    let intake = Intake::start();
    let mut serve = Serve::builder()
        .env(
            "DD_DD_URL",
            &format!("http://localhost:{}", intake.addr.port()),
        )
        .env("DD_API_KEY", "test-key-0123456789abcdef")
        .env("DD_ENABLE_HEROKU_REDIS", "true")
        // The trailing dot keeps the name off the check's own `localhost`
        // shortcut, so the resolver answers.
        .env(
            "REDIS_URL",
            &format!("redis://:{REDIS_PASSWORD}@localhost.:{}", redis.port),
        )
        .env("DYNOSTAT_CHECKS_INTERVAL", "1")
        .start();
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| !checks_named(
            i,
            "redis.can_connect",
            0
        )
        .is_empty()),
        "stderr:\n{}",
        serve.stderr()
    );
    serve.stop_ok(Duration::from_secs(10));
}

#[test]
fn a_lock_held_shows_in_postgresql_locks() {
    let pg = Pg::start(false);
    let _holder = pg.session("migrator", "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;");
    assert!(
        wait(Duration::from_secs(10), || {
            // pg_class is per database: ask in appdb.
            pg.psql(
                "postgres",
                "appdb",
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 't' AND l.granted",
            ) == "1"
        }),
        "the lock was not taken"
    );
    let intake = Intake::start();
    let mut serve = serve_with_pg(&intake, &pg.url(PG_PASSWORD, "disable"));
    let lock_tags = [
        "db:appdb",
        "table:t",
        "schema:public",
        "lock_mode:AccessExclusiveLock",
        "lock_type:relation",
        "granted:True",
        "fastpath:False",
    ];
    assert!(
        intake.wait_until(Duration::from_secs(20), |i| last(
            i,
            "postgresql.locks",
            &lock_tags
        )
        .is_some()),
        "no lock series; {:?}\nstderr:\n{}",
        intake.series_named("postgresql.locks"),
        serve.stderr()
    );
    assert_eq!(last(&intake, "postgresql.locks", &lock_tags), Some(1.0));
    serve.stop_ok(Duration::from_secs(10));
}
