//! The Postgres check: what the Agent's `postgres` check collects by
//! default that a non-superuser role on Heroku Postgres can read, under
//! its names, types and tags (integrations-core `postgres/`: util.py,
//! metrics_cache.py), plus `postgresql.connection_state`.
//!
//! In: one [`DbUrl`]. Out, every interval (15 s, the Agent's):
//!
//! | metric | type | tags | from |
//! |---|---|---|---|
//! | `postgresql.connections` | gauge | `db` | `pg_stat_database.numbackends` |
//! | `postgresql.commits`, `.rollbacks`, `.disk_read`, `.buffer_hit`, `.rows_returned`, `.rows_fetched`, `.rows_inserted`, `.rows_updated`, `.rows_deleted`, `.deadlocks`, `.temp_bytes`, `.temp_files` | rate (per second, sent as a gauge) | `db` | `pg_stat_database` |
//! | `postgresql.deadlocks.count`, `.blk_read_time`, `.blk_write_time` | monotonic count | `db` | `pg_stat_database` |
//! | `postgresql.before_xid_wraparound`, `.database_size` | gauge | `db` | `age(datfrozenxid)`, `pg_database_size` |
//! | `postgresql.max_connections`, `.percent_usage_connections` | gauge | instance | `pg_settings`; the second is a fraction (0-1), as the Agent's |
//! | `postgresql.locks` | gauge | `db`, `lock_mode`, `lock_type`, `schema`, `table`, `granted`, `fastpath` | `pg_locks` on relations |
//! | `postgresql.replication_delay`, `_bytes` | gauge | instance | a follower only |
//! | `postgresql.connection_state` | gauge | `db`, `application_name`, `state` | `pg_stat_activity`, client backends |
//! | `postgres.can_connect` | service check | instance | OK, or CRITICAL with the error |
//!
//! Instance tags are the Agent's: `server:HOST`, `port:PORT`, `db:NAME`;
//! figures per database carry that database's `db:` instead.
//! Per-database rows are limited to databases the role may connect to
//! (a shared cluster lists others), without the Agent's default ignored
//! ones (`template%`, `rdsadmin`, `azure_maintenance`, `postgres`).
//!
//! One connection, kept open between runs, named `dynostat` in
//! `pg_stat_activity`, with `statement_timeout=5s`; dropped and opened
//! again after any failure.

use std::time::Duration;

use super::pgwire::{Client, PgError, Row};
use super::{scrub, CollectFuture, Collected, Collector, Counters, Submit};
use crate::config::DbUrl;
use crate::dogstatsd::protocol::CheckStatus;

/// How long one query may take on our side (the server's own limit is 5 s).
const QUERY_TIMEOUT: Duration = Duration::from_secs(8);

const PER_DATABASE: &str = "SELECT psd.datname, psd.numbackends, psd.xact_commit, psd.xact_rollback, \
psd.blks_read, psd.blks_hit, psd.tup_returned, psd.tup_fetched, psd.tup_inserted, psd.tup_updated, \
psd.tup_deleted, 2^31 - age(pd.datfrozenxid), psd.deadlocks, psd.temp_bytes, psd.temp_files, \
psd.blk_read_time, psd.blk_write_time, pg_database_size(psd.datname) \
FROM pg_stat_database psd JOIN pg_database pd ON psd.datname = pd.datname \
WHERE psd.datname NOT ILIKE 'template%' AND psd.datname NOT IN ('rdsadmin', 'azure_maintenance', 'postgres') \
AND has_database_privilege(psd.datname, 'CONNECT') LIMIT 200";

/// Column 1.. of [`PER_DATABASE`] after `datname`: name and how it is sent.
const PER_DATABASE_METRICS: &[(&str, Kind)] = &[
    ("postgresql.connections", Kind::Gauge),
    ("postgresql.commits", Kind::Rate),
    ("postgresql.rollbacks", Kind::Rate),
    ("postgresql.disk_read", Kind::Rate),
    ("postgresql.buffer_hit", Kind::Rate),
    ("postgresql.rows_returned", Kind::Rate),
    ("postgresql.rows_fetched", Kind::Rate),
    ("postgresql.rows_inserted", Kind::Rate),
    ("postgresql.rows_updated", Kind::Rate),
    ("postgresql.rows_deleted", Kind::Rate),
    ("postgresql.before_xid_wraparound", Kind::Gauge),
    ("postgresql.deadlocks", Kind::Rate),
    ("postgresql.temp_bytes", Kind::Rate),
    ("postgresql.temp_files", Kind::Rate),
    ("postgresql.blk_read_time", Kind::Monotonic),
    ("postgresql.blk_write_time", Kind::Monotonic),
    ("postgresql.database_size", Kind::Gauge),
];

const CONNECTIONS: &str =
    "WITH max_con AS (SELECT setting::float FROM pg_settings WHERE name = 'max_connections') \
SELECT MAX(setting), SUM(numbackends)/MAX(setting) FROM pg_stat_database, max_con";

const LOCKS: &str = "SELECT mode, locktype, pn.nspname, pd.datname, pc.relname, granted, fastpath, count(*) \
FROM pg_locks l JOIN pg_database pd ON (l.database = pd.oid) JOIN pg_class pc ON (l.relation = pc.oid) \
LEFT JOIN pg_namespace pn ON (pn.oid = pc.relnamespace) \
WHERE l.mode IS NOT NULL AND pc.relname NOT LIKE 'pg^_%' ESCAPE '^' \
GROUP BY pd.datname, pc.relname, pn.nspname, locktype, mode, granted, fastpath LIMIT 200";

const REPLICATION: &str = "SELECT CASE WHEN exists(SELECT * FROM pg_stat_wal_receiver) \
AND (pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()) THEN 0 \
ELSE GREATEST(0, EXTRACT (EPOCH FROM now() - pg_last_xact_replay_timestamp())) END, \
abs(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())) \
WHERE (SELECT pg_is_in_recovery())";

const CONNECTION_STATE: &str =
    "SELECT datname, application_name, state, count(*) FROM pg_stat_activity \
WHERE backend_type = 'client backend' GROUP BY 1, 2, 3 LIMIT 500";

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Rate,
    Monotonic,
}

/// The check for one database URL.
pub struct PostgresCheck {
    url: DbUrl,
    name: String,
    interval: Duration,
    client: Option<Client>,
    counters: Counters,
    /// `server:`, `port:`, `db:`.
    tags: Vec<String>,
    /// The instance tags without `db:`, for figures per database.
    tags_without_db: Vec<String>,
    /// Queries refused by the server (no privilege, an old version), each
    /// logged once.
    refused: Vec<&'static str>,
}

impl PostgresCheck {
    /// A check of `url` every `interval`.
    pub fn new(url: DbUrl, interval: Duration) -> Self {
        let tags_without_db = vec![format!("server:{}", url.host), format!("port:{}", url.port)];
        let mut tags = tags_without_db.clone();
        tags.push(format!("db:{}", url.database));
        Self {
            name: format!("postgres {}", url.var),
            url,
            interval,
            client: None,
            counters: Counters::default(),
            tags,
            tags_without_db,
            refused: Vec::new(),
        }
    }

    fn critical(&mut self, out: &mut Collected, error: &str) -> String {
        self.client = None;
        let message = scrub(error, self.url.password.expose());
        out.checks.push(super::service_check(
            "postgres.can_connect",
            CheckStatus::Critical,
            self.tags.clone(),
            Some(message.clone()),
        ));
        message
    }

    async fn run(&mut self, out: &mut Collected) -> Result<(), String> {
        if self.client.is_none() {
            match Client::connect(&self.url).await {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    let hint = if e.is_auth() {
                        format!("; check the credentials in {}", self.url.var)
                    } else {
                        String::new()
                    };
                    let msg = format!(
                        "{}:{}/{}: {e}{hint}",
                        self.url.host, self.url.port, self.url.database
                    );
                    return Err(self.critical(out, &msg));
                }
            }
        }
        let mut results: Vec<(&'static str, Result<Vec<Row>, PgError>)> = Vec::with_capacity(5);
        for q in [
            PER_DATABASE,
            CONNECTIONS,
            LOCKS,
            REPLICATION,
            CONNECTION_STATE,
        ] {
            let Some(client) = self.client.as_mut() else {
                break;
            };
            let r = match tokio::time::timeout(QUERY_TIMEOUT, client.query(q)).await {
                Ok(r) => r,
                Err(_) => Err(PgError::Io("a query took over 8 s".to_owned())),
            };
            match r {
                Err(e @ (PgError::Io(_) | PgError::Protocol(_))) => {
                    let msg = format!(
                        "{}:{}/{}: {e}",
                        self.url.host, self.url.port, self.url.database
                    );
                    return Err(self.critical(out, &msg));
                }
                r => results.push((q, r)),
            }
        }
        let mut s = self.counters.submit(out, self.interval);
        let mut refused = Vec::new();
        for (q, r) in results {
            match r {
                Ok(rows) => submit(q, &rows, &mut s, &self.tags, &self.tags_without_db),
                Err(e) => refused.push((q, e)),
            }
        }
        s.service_check(
            "postgres.can_connect",
            CheckStatus::Ok,
            self.tags.clone(),
            None,
        );
        s.finish();
        for (q, e) in refused {
            if !self.refused.contains(&q) {
                self.refused.push(q);
                tracing::warn!(
                    check = %self.name,
                    error = %scrub(&e.to_string(), self.url.password.expose()),
                    query = %q.split_whitespace().take(6).collect::<Vec<_>>().join(" "),
                    "postgres check: the server refused one query; its metrics are left out (logged once)"
                );
            }
        }
        Ok(())
    }
}

fn num(v: Option<&Option<String>>) -> Option<f64> {
    v?.as_deref()?.parse::<f64>().ok()
}

fn text(v: Option<&Option<String>>) -> Option<&str> {
    v?.as_deref()
}

/// A tag value as Datadog keeps it: whitespace as `_`, at most 200 chars.
fn tag_value(v: &str) -> String {
    v.chars()
        .take(200)
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

/// A boolean column as the Agent's Python check tags it (`True`, `False`).
fn py_bool(v: Option<&str>) -> &'static str {
    if v == Some("t") {
        "True"
    } else {
        "False"
    }
}

fn submit(q: &str, rows: &[Row], s: &mut Submit<'_>, tags: &[String], tags_without_db: &[String]) {
    let with = |extra: &[String]| -> Vec<String> {
        let mut t = tags_without_db.to_vec();
        t.extend_from_slice(extra);
        t
    };
    if q == PER_DATABASE {
        for row in rows {
            let Some(db) = text(row.first()) else {
                continue;
            };
            let db_tag = [format!("db:{db}")];
            for (i, (name, kind)) in PER_DATABASE_METRICS.iter().enumerate() {
                let Some(v) = num(row.get(i + 1)) else {
                    continue;
                };
                match kind {
                    Kind::Gauge => s.gauge(name, v, with(&db_tag)),
                    Kind::Rate => s.rate(name, v, with(&db_tag)),
                    Kind::Monotonic => s.monotonic_count(name, v, with(&db_tag)),
                }
            }
            // The Agent's newer query sends deadlocks as a monotonic count too.
            if let Some(v) = num(row.get(12)) {
                s.monotonic_count("postgresql.deadlocks.count", v, with(&db_tag));
            }
        }
    } else if q == CONNECTIONS {
        if let Some(row) = rows.first() {
            if let Some(v) = num(row.first()) {
                s.gauge("postgresql.max_connections", v, tags.to_vec());
            }
            if let Some(v) = num(row.get(1)) {
                s.gauge("postgresql.percent_usage_connections", v, tags.to_vec());
            }
        }
    } else if q == LOCKS {
        for row in rows {
            let Some(n) = num(row.get(7)) else { continue };
            let mut extra = Vec::with_capacity(7);
            for (i, key) in ["lock_mode", "lock_type", "schema", "db", "table"]
                .iter()
                .enumerate()
            {
                if let Some(v) = text(row.get(i)) {
                    extra.push(format!("{key}:{}", tag_value(v)));
                }
            }
            extra.push(format!("granted:{}", py_bool(text(row.get(5)))));
            extra.push(format!("fastpath:{}", py_bool(text(row.get(6)))));
            s.gauge("postgresql.locks", n, with(&extra));
        }
    } else if q == REPLICATION {
        if let Some(row) = rows.first() {
            if let Some(v) = num(row.first()) {
                s.gauge("postgresql.replication_delay", v, tags.to_vec());
            }
            if let Some(v) = num(row.get(1)) {
                s.gauge("postgresql.replication_delay_bytes", v, tags.to_vec());
            }
        }
    } else if q == CONNECTION_STATE {
        for row in rows {
            let Some(n) = num(row.get(3)) else { continue };
            let db = text(row.first()).unwrap_or("none");
            let app = text(row.get(1)).filter(|a| !a.is_empty()).unwrap_or("none");
            // NULL: a session of another role, whose state this role may not see.
            let state = text(row.get(2)).unwrap_or("unknown");
            s.gauge(
                "postgresql.connection_state",
                n,
                with(&[
                    format!("db:{}", tag_value(db)),
                    format!("application_name:{}", tag_value(app)),
                    format!("state:{}", tag_value(state)),
                ]),
            );
        }
    }
}

impl Collector for PostgresCheck {
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
        if self.client.is_some() {
            self.critical(out, "the check was abandoned before it finished");
        }
    }
}
