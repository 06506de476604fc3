//! The Redis check: `INFO` mapped to the Agent's `redisdb` check names,
//! types and tags (integrations-core `redisdb/datadog_checks/redisdb/redisdb.py`),
//! over a small hand-written RESP client, TLS for `rediss://` with the
//! certificate not verified (Heroku Key-Value Store's are self-signed; the
//! official buildpack sets `ssl_cert_reqs: 0`).
//!
//! In: one [`DbUrl`]. Out, every interval: the `INFO` fields of the
//! Agent's gauge and rate tables that Redis reports (`redis.net.clients`,
//! `redis.mem.used`, `redis.mem.peak`, `redis.mem.fragmentation_ratio`,
//! `redis.keys.evicted`, `redis.net.rejected`, `redis.rdb.changes_since_last`,
//! replication figures, ... as gauges, the raw counters included, as the
//! Agent sends them; `redis.stats.keyspace_hits`/`_misses` and the CPU
//! times as rates), `redis.net.commands` (a rate of
//! `total_commands_processed`), `redis.info.latency_ms`, per keyspace db
//! `redis.keys`, `redis.expires`, `redis.persist`, `redis.persist.percent`,
//! `redis.expires.percent` (tag `redis_db:db0`), and the service check
//! `redis.can_connect`. Tags: `redis_host:`, `redis_port:`, `redis_role:`.
//!
//! One connection, kept between runs, named `dynostat` (`CLIENT SETNAME`),
//! each command bounded by [`COMMAND_TIMEOUT`] and each reply by
//! [`MAX_REPLY`] bytes.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::net::{self, Stream};
use super::{scrub, CollectFuture, Collected, Collector, Counters};
use crate::config::{DbUrl, Tls};
use crate::dogstatsd::protocol::CheckStatus;

/// How long one command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest reply read (`INFO` is a few KiB).
pub const MAX_REPLY: usize = 4 << 20;

/// `INFO` fields sent as gauges, as the Agent's `GAUGE_KEYS`.
const GAUGES: &[(&str, &str)] = &[
    ("aof_last_rewrite_time_sec", "redis.aof.last_rewrite_time"),
    ("aof_rewrite_in_progress", "redis.aof.rewrite"),
    ("aof_current_size", "redis.aof.size"),
    ("aof_buffer_length", "redis.aof.buffer_length"),
    ("connected_clients", "redis.net.clients"),
    ("connected_slaves", "redis.net.slaves"),
    ("rejected_connections", "redis.net.rejected"),
    ("blocked_clients", "redis.clients.blocked"),
    (
        "client_biggest_input_buf",
        "redis.clients.biggest_input_buf",
    ),
    (
        "client_longest_output_list",
        "redis.clients.longest_output_list",
    ),
    ("evicted_keys", "redis.keys.evicted"),
    ("expired_keys", "redis.keys.expired"),
    ("latest_fork_usec", "redis.perf.latest_fork_usec"),
    ("pubsub_channels", "redis.pubsub.channels"),
    ("pubsub_patterns", "redis.pubsub.patterns"),
    ("rdb_bgsave_in_progress", "redis.rdb.bgsave"),
    (
        "rdb_changes_since_last_save",
        "redis.rdb.changes_since_last",
    ),
    ("rdb_last_bgsave_time_sec", "redis.rdb.last_bgsave_time"),
    ("mem_fragmentation_ratio", "redis.mem.fragmentation_ratio"),
    ("used_memory", "redis.mem.used"),
    ("used_memory_lua", "redis.mem.lua"),
    ("used_memory_peak", "redis.mem.peak"),
    ("used_memory_rss", "redis.mem.rss"),
    ("used_memory_startup", "redis.mem.startup"),
    ("used_memory_overhead", "redis.mem.overhead"),
    ("maxmemory", "redis.mem.maxmemory"),
    (
        "master_last_io_seconds_ago",
        "redis.replication.last_io_seconds_ago",
    ),
    ("master_sync_in_progress", "redis.replication.sync"),
    (
        "master_sync_left_bytes",
        "redis.replication.sync_left_bytes",
    ),
    ("repl_backlog_histlen", "redis.replication.backlog_histlen"),
    ("master_repl_offset", "redis.replication.master_repl_offset"),
    ("slave_repl_offset", "redis.replication.slave_repl_offset"),
    (
        "instantaneous_ops_per_sec",
        "redis.net.instantaneous_ops_per_sec",
    ),
    (
        "master_link_down_since_seconds",
        "redis.replication.master_link_down_since_seconds",
    ),
];

/// `INFO` fields sent as rates, as the Agent's `RATE_KEYS` (and
/// `redis.net.commands`).
const RATES: &[(&str, &str)] = &[
    ("used_cpu_sys", "redis.cpu.sys"),
    ("used_cpu_sys_children", "redis.cpu.sys_children"),
    ("used_cpu_user", "redis.cpu.user"),
    ("used_cpu_user_children", "redis.cpu.user_children"),
    ("keyspace_hits", "redis.stats.keyspace_hits"),
    ("keyspace_misses", "redis.stats.keyspace_misses"),
    ("total_commands_processed", "redis.net.commands"),
];

/// A RESP reply, as far as a check needs one.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Text(String),
    Error(String),
    Int(i64),
    Nil,
    Array(Vec<Reply>),
}

/// A connection speaking RESP2.
struct Conn {
    io: BufReader<Stream>,
}

impl Conn {
    async fn open(url: &DbUrl) -> Result<Self, String> {
        let tcp = net::connect_tcp(&url.host, url.port)
            .await
            .map_err(|e| e.to_string())?;
        let stream = if url.tls == Tls::Off {
            Stream::Plain(tcp)
        } else {
            net::start_tls(tcp, &url.host)
                .await
                .map_err(|e| format!("TLS: {e}"))?
        };
        let mut c = Self {
            io: BufReader::new(stream),
        };
        if !url.password.is_empty() {
            let mut auth = if url.user.is_empty() {
                c.command(&["AUTH", url.password.expose()]).await?
            } else {
                c.command(&["AUTH", &url.user, url.password.expose()])
                    .await?
            };
            // Older Heroku URLs carry a placeholder user (`redis://h:PASSWORD@`)
            // that a server before Redis 6, or without that ACL user, refuses:
            // then the password alone, as before ACLs.
            if matches!(auth, Reply::Error(_)) && !url.user.is_empty() {
                auth = c.command(&["AUTH", url.password.expose()]).await?;
            }
            if let Reply::Error(e) = auth {
                return Err(format!("authentication refused: {e}"));
            }
        }
        // Best effort: older servers and some managed ones refuse it.
        let _ = c.command(&["CLIENT", "SETNAME", "dynostat"]).await?;
        Ok(c)
    }

    async fn command(&mut self, args: &[&str]) -> Result<Reply, String> {
        let mut msg = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            msg.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            msg.extend_from_slice(a.as_bytes());
            msg.extend_from_slice(b"\r\n");
        }
        let work = async {
            self.io
                .get_mut()
                .write_all(&msg)
                .await
                .map_err(|e| e.to_string())?;
            self.io.get_mut().flush().await.map_err(|e| e.to_string())?;
            self.reply(0).await
        };
        tokio::time::timeout(COMMAND_TIMEOUT, work)
            .await
            .map_err(|_| format!("no answer to {} within 5 s", args[0]))?
    }

    async fn line(&mut self) -> Result<String, String> {
        let mut line = Vec::with_capacity(64);
        let n = (&mut self.io)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".to_owned());
        }
        if !line.ends_with(b"\r\n") {
            return Err("a reply line without CRLF".to_owned());
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| "a reply that is not UTF-8".to_owned())
    }

    fn reply(
        &mut self,
        depth: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, String>> + '_>> {
        Box::pin(async move {
            let line = self.line().await?;
            let (kind, rest) = line.split_at(line.len().min(1));
            let int = || {
                rest.parse::<i64>()
                    .map_err(|_| "a bad length in a reply".to_owned())
            };
            match kind {
                "+" => Ok(Reply::Text(rest.to_owned())),
                "-" => Ok(Reply::Error(rest.to_owned())),
                ":" => Ok(Reply::Int(int()?)),
                "$" => {
                    let n = int()?;
                    if n < 0 {
                        return Ok(Reply::Nil);
                    }
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    if n > MAX_REPLY {
                        return Err("a reply larger than dynostat reads (4 MiB)".to_owned());
                    }
                    let mut buf = vec![0u8; n + 2];
                    self.io
                        .read_exact(&mut buf)
                        .await
                        .map_err(|e| e.to_string())?;
                    buf.truncate(n);
                    Ok(Reply::Text(String::from_utf8_lossy(&buf).into_owned()))
                }
                "*" => {
                    let n = int()?;
                    if n < 0 {
                        return Ok(Reply::Nil);
                    }
                    if n > 1024 || depth > 4 {
                        return Err("a reply nested or long beyond what a check reads".to_owned());
                    }
                    let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
                    for _ in 0..n {
                        items.push(self.reply(depth + 1).await?);
                    }
                    Ok(Reply::Array(items))
                }
                _ => Err("not a RESP reply".to_owned()),
            }
        })
    }
}

/// The check for one Redis URL.
pub struct RedisCheck {
    url: DbUrl,
    name: String,
    interval: Duration,
    conn: Option<Conn>,
    counters: Counters,
    tags: Vec<String>,
}

impl RedisCheck {
    /// A check of `url` every `interval`.
    pub fn new(url: DbUrl, interval: Duration) -> Self {
        Self {
            name: format!("redis {}", url.var),
            tags: vec![
                format!("redis_host:{}", url.host),
                format!("redis_port:{}", url.port),
            ],
            url,
            interval,
            conn: None,
            counters: Counters::default(),
        }
    }

    fn critical(&mut self, out: &mut Collected, error: &str) -> String {
        self.conn = None;
        let message = scrub(
            &format!("{}:{}: {error}", self.url.host, self.url.port),
            self.url.password.expose(),
        );
        out.checks.push(super::service_check(
            "redis.can_connect",
            CheckStatus::Critical,
            self.tags.clone(),
            Some(message.clone()),
        ));
        message
    }

    async fn run(&mut self, out: &mut Collected) -> Result<(), String> {
        if self.conn.is_none() {
            match Conn::open(&self.url).await {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    let hint = if e.contains("authentication") || e.contains("NOAUTH") {
                        format!("; check the password in {}", self.url.var)
                    } else {
                        String::new()
                    };
                    return Err(self.critical(out, &format!("{e}{hint}")));
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection".to_owned());
        };
        let started = Instant::now();
        let info = match conn.command(&["INFO"]).await {
            Ok(Reply::Text(t)) => t,
            Ok(Reply::Error(e)) => return Err(self.critical(out, &format!("INFO refused: {e}"))),
            Ok(_) => return Err(self.critical(out, "INFO gave no text")),
            Err(e) => return Err(self.critical(out, &e)),
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let maxclients = match conn.command(&["CONFIG", "GET", "maxclients"]).await {
            Ok(Reply::Array(a)) => match a.get(1) {
                Some(Reply::Text(v)) => v.parse::<f64>().ok(),
                _ => None,
            },
            // Heroku and other managed servers disable CONFIG; the Agent
            // then leaves the metric out too.
            Ok(_) => None,
            Err(e) => return Err(self.critical(out, &e)),
        };
        let fields: Vec<(&str, &str)> = info
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .collect();
        let mut tags = self.tags.clone();
        if let Some((_, role)) = fields.iter().find(|(k, _)| *k == "role") {
            tags.push(format!("redis_role:{role}"));
        }
        let mut s = self.counters.submit(out, self.interval);
        s.gauge(
            "redis.info.latency_ms",
            (latency_ms * 100.0).round() / 100.0,
            tags.clone(),
        );
        if let Some(v) = maxclients {
            s.gauge("redis.net.maxclients", v, tags.clone());
        }
        for (key, value) in &fields {
            if let Some(db) = key
                .strip_prefix("db")
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            {
                let get = |name: &str| {
                    value
                        .split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(k, _)| *k == name)
                        .and_then(|(_, v)| v.parse::<f64>().ok())
                };
                let (Some(keys), Some(expires)) = (get("keys"), get("expires")) else {
                    continue;
                };
                let mut db_tags = tags.clone();
                db_tags.push(format!("redis_db:db{db}"));
                let persist = keys - expires;
                s.gauge("redis.persist", persist, db_tags.clone());
                if keys > 0.0 {
                    s.gauge(
                        "redis.persist.percent",
                        100.0 * persist / keys,
                        db_tags.clone(),
                    );
                    s.gauge(
                        "redis.expires.percent",
                        100.0 * expires / keys,
                        db_tags.clone(),
                    );
                }
                s.gauge("redis.keys", keys, db_tags.clone());
                s.gauge("redis.expires", expires, db_tags);
                continue;
            }
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            if let Some((_, name)) = GAUGES.iter().find(|(k, _)| k == key) {
                s.gauge(name, v, tags.clone());
            } else if let Some((_, name)) = RATES.iter().find(|(k, _)| k == key) {
                s.rate(name, v, tags.clone());
            }
        }
        if let Some((_, status)) = fields.iter().find(|(k, _)| *k == "master_link_status") {
            s.gauge(
                "redis.replication.master_link_status",
                if *status == "up" { 1.0 } else { 0.0 },
                tags.clone(),
            );
        }
        s.service_check("redis.can_connect", CheckStatus::Ok, tags, None);
        s.finish();
        Ok(())
    }
}

impl Collector for RedisCheck {
    fn name(&self) -> &str {
        &self.name
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn collect<'a>(&'a mut self, out: &'a mut Collected) -> CollectFuture<'a> {
        Box::pin(self.run(out))
    }

    fn abandon(&mut self, out: &mut Collected) {
        if self.conn.is_some() {
            self.critical(out, "the check was abandoned before it finished");
        }
    }
}
