//! The Agent's DogStatsD behaviour and settings that users migrating from
//! the official buildpack rely on, through the real binary, real UDP and a
//! loopback intake: counter zero-fill (`DD_DOGSTATSD_EXPIRY_SECONDS`),
//! `host:` on events and service checks, `DD_DOGSTATSD_TAGS`, mapper
//! profiles, the namespace and the blocklist.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{has_tags, Intake, Serve};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn unix_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// `(timestamp, value)` of every point of every series named `metric`, sorted.
fn points(intake: &Intake, metric: &str) -> Vec<(i64, f64)> {
    let mut out = intake.points_where(metric, &[], false);
    out.sort_by_key(|p| p.0);
    out
}

#[test]
fn an_idle_counter_is_zero_filled_until_it_expires_then_nothing() {
    let intake = Intake::start();
    let s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_EXPIRY_SECONDS", "4")
        .start();
    s.send(b"sparse.errors:3|c|#job:a");
    assert!(intake.wait_until(T, |i| !points(i, "sparse.errors").is_empty()));
    let first = points(&intake, "sparse.errors")[0];
    assert_eq!(first.1, 3.0, "the real point: 3 over a 1 s interval");
    // The Agent's rule: a 0 for each bucket starting within 4 s of the
    // sample, i.e. the next 4 one-second buckets, and never another.
    let last_bucket = first.0 + 4;
    assert!(intake.wait_until(T, |_| unix_now() > last_bucket + 3));
    let all = points(&intake, "sparse.errors");
    let zeros: Vec<i64> = all[1..].iter().map(|p| p.0).collect();
    assert!(all[1..].iter().all(|p| p.1 == 0.0), "{all:?}");
    assert!(
        zeros.iter().all(|&t| t > first.0 && t <= last_bucket),
        "zeros only in the 4 s after the sample: {all:?}"
    );
    assert!(
        zeros.len() >= 3 && zeros.len() <= 4,
        "a zero per 1 s bucket for 4 s (one may merge on a loaded box): {all:?}"
    );
    let mut distinct = zeros.clone();
    distinct.dedup();
    assert_eq!(distinct, zeros, "one zero per bucket: {all:?}");
    for s in intake.series_named("sparse.errors") {
        assert_eq!(s["type"], 2, "zeros are RATEs like the counter: {s}");
        assert!(has_tags(&s, &["job:a"]), "{s}");
    }
}

#[test]
fn expiry_zero_turns_zero_filling_off() {
    let intake = Intake::start();
    let s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_EXPIRY_SECONDS", "0")
        .start();
    s.send(b"sparse.once:3|c");
    assert!(intake.wait_until(T, |i| !points(i, "sparse.once").is_empty()));
    let first = points(&intake, "sparse.once")[0];
    assert!(intake.wait_until(T, |_| unix_now() > first.0 + 5));
    assert_eq!(points(&intake, "sparse.once"), [(first.0, 3.0)]);
}

/// Requests to `path`, as JSON.
fn bodies(intake: &Intake, path: &str) -> Vec<Value> {
    intake
        .requests()
        .iter()
        .filter(|r| r.accepted() && r.path == path)
        .map(common::Request::json)
        .collect()
}

fn tags(v: &Value) -> Vec<&str> {
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

#[test]
fn host_tags_become_the_host_of_events_and_checks_and_dogstatsd_tags_go_everywhere() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_TAGS", "team:core,region:eu")
        .env("DD_TAGS", "global:1")
        .start();
    s.send(b"_e{6,4}:Deploy|done|#host:web9,v:2,dd.internal.entity_id:pod1");
    s.send(b"_sc|db.up|0|#shard:1,host:db1|m:fine");
    s.send(b"_sc|db.down|2|h:field-host|#host:tag-host");
    s.send(b"hits:1|c|#a:1,dd.internal.card:high");
    s.stop_ok(T);

    let events = intake.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["host"], "web9", "{e}");
    assert!(
        tags(e)
            .iter()
            .all(|t| !t.starts_with("host:") && !t.starts_with("dd.internal")),
        "{e}"
    );
    assert!(
        has_tags(e, &["v:2", "team:core", "region:eu", "global:1"]),
        "{e}"
    );

    let checks: Vec<Value> = bodies(&intake, "/api/v1/check_run")
        .iter()
        .flat_map(|b| b.as_array().unwrap().clone())
        .collect();
    let by_name: BTreeMap<&str, &Value> = checks
        .iter()
        .map(|c| (c["check"].as_str().unwrap(), c))
        .collect();
    let up = by_name["db.up"];
    assert_eq!(up["host_name"], "db1", "{up}");
    assert_eq!(
        tags(up).iter().filter(|t| t.starts_with("host:")).count(),
        0,
        "{up}"
    );
    assert!(has_tags(up, &["shard:1", "team:core", "region:eu"]), "{up}");
    // The `h:` field wins over a `host:` tag, as in the Agent.
    assert_eq!(by_name["db.down"]["host_name"], "field-host");

    let hits = intake.series_named("hits");
    assert!(!hits.is_empty());
    for h in &hits {
        assert!(
            has_tags(h, &["a:1", "team:core", "region:eu", "global:1"]),
            "{h}"
        );
        assert!(tags(h).iter().all(|t| !t.starts_with("dd.internal")), "{h}");
    }
    // DogStatsD tags are for what came in over DogStatsD, not our own telemetry.
    let own = intake.series_named("dynostat.lines");
    assert!(!own.is_empty());
    assert!(!has_tags(&own[0], &["team:core"]), "{}", own[0]);
}

#[test]
fn mapper_profiles_rename_with_wildcards_and_regexes_and_unmatched_names_pass() {
    let intake = Intake::start();
    let profiles = r#"[
      {"name": "airflow", "prefix": "airflow.", "mappings": [
        {"match": "airflow.job.duration_sec.*.*", "name": "airflow.job.duration",
         "tags": {"job_type": "$1", "job_name": "$2"}},
        {"match": "airflow\\.operator_(successes|failures)_(\\w+)", "match_type": "regex",
         "name": "airflow.operator.${1}", "tags": {"operator": "$2"}}
      ]}
    ]"#;
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_DOGSTATSD_MAPPER_PROFILES", profiles)
        .env("DD_DOGSTATSD_EXPIRY_SECONDS", "0")
        .start();
    s.send(b"airflow.job.duration_sec.local.my_dag:3|g|#env:x");
    s.send(
        b"airflow.operator_failures_BashOperator:2|c\nairflow.operator_failures_BashOperator:1|c",
    );
    s.send(b"airflow.dag.unmatched:1|c\nplain.metric:7|g");
    s.stop_ok(T);

    let dur = intake.series_named("airflow.job.duration");
    assert_eq!(dur.len(), 1, "{:?}", intake.series());
    assert!(
        has_tags(&dur[0], &["job_type:local", "job_name:my_dag", "env:x"]),
        "{}",
        dur[0]
    );
    assert_eq!(dur[0]["points"][0]["value"], 3.0);
    assert!(has_tags(
        &intake.series_named("airflow.operator.failures")[0],
        &["operator:BashOperator"]
    ));
    assert_eq!(
        intake.total("airflow.operator.failures", &["operator:BashOperator"]),
        3.0
    );
    // Names no rule matches keep their name and tags.
    assert_eq!(intake.total("airflow.dag.unmatched", &[]), 1.0);
    assert_eq!(
        intake.series_named("plain.metric")[0]["points"][0]["value"],
        7.0
    );
    for gone in [
        "airflow.job.duration_sec.local.my_dag",
        "airflow.operator_failures_BashOperator",
    ] {
        assert!(intake.series_named(gone).is_empty(), "{gone} was mapped");
    }
}

#[test]
fn namespace_skips_standard_prefixes_and_the_blocklist_drops_names() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_STATSD_METRIC_NAMESPACE", "shop")
        .env("DD_STATSD_METRIC_BLOCKLIST", "shop.noisy jvm.gc.debug")
        .env("DD_DOGSTATSD_EXPIRY_SECONDS", "0")
        .start();
    s.send(b"hits:1|c\njvm.heap:5|g\nsidekiq.jobs:2|c\nnoisy:1|c\njvm.gc.debug:1|g\nnoisy.not:1|c");
    s.stop_ok(T);
    assert_eq!(intake.total("shop.hits", &[]), 1.0);
    assert_eq!(intake.total("shop.noisy.not", &[]), 1.0);
    // jvm and sidekiq are among the Agent's standard prefixes: not namespaced.
    assert_eq!(
        intake.series_named("jvm.heap")[0]["points"][0]["value"],
        5.0
    );
    assert_eq!(intake.total("sidekiq.jobs", &[]), 2.0);
    for gone in [
        "hits",
        "shop.jvm.heap",
        "shop.noisy",
        "noisy",
        "jvm.gc.debug",
    ] {
        assert!(
            intake.series_named(gone).is_empty(),
            "{gone}: {:?}",
            intake.series()
        );
    }
    // The two blocked samples are counted.
    assert_eq!(intake.total("dynostat.metrics.filtered", &[]), 2.0);
}
