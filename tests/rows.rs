//! The differences from the Agent that issue 25 listed and that dynostat now
//! matches, end to end: the real binary, real UDP, the loopback intake. One
//! test per row; the rows declared instead are in docs/DESIGN.md.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{has_tags, Intake, Serve};

const T: Duration = Duration::from_secs(30);

/// The app's metric names at the intake (not dynostat's own).
fn names(intake: &Intake) -> Vec<String> {
    let mut names = intake.metric_names();
    names.retain(|n| !n.starts_with("dynostat."));
    names
}

/// Row 1: the blocklist drops a histogram's flushed aggregates by name, and
/// `DD_METRIC_FILTERLIST` (with its prefix flag) replaces
/// `DD_STATSD_METRIC_BLOCKLIST` when set, as the Agent's filterlist does.
#[test]
fn row_1_filterlist_and_histogram_aggregates() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_STATSD_METRIC_BLOCKLIST", "h1.max h1.95percentile")
        .start();
    s.send(b"h1:1|h\nh1:2|h\nh2:1|h");
    s.stop_ok(T);
    assert_eq!(
        names(&intake),
        [
            "h1.avg",
            "h1.count",
            "h1.median",
            "h2.95percentile",
            "h2.avg",
            "h2.count",
            "h2.max",
            "h2.median"
        ]
    );

    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        // Replaced by the filterlist: nothing is dropped by name `c1`.
        .env("DD_STATSD_METRIC_BLOCKLIST", "c1")
        .env("DD_METRIC_FILTERLIST", "noisy. t1.m")
        .env("DD_METRIC_FILTERLIST_MATCH_PREFIX", "true")
        .start();
    s.send(b"c1:1|c\nnoisy.a:1|c\nnoisy.b:1|g\nt1:5|ms");
    s.stop_ok(T);
    assert_eq!(
        names(&intake),
        ["c1", "t1.95percentile", "t1.avg", "t1.count"],
        "prefixes drop names and aggregates (t1.max, t1.median)"
    );
}

/// Row 2: a `|T` point of any age is forwarded as is; the intake decides.
#[test]
fn row_2_timestamped_points_of_any_age_are_forwarded() {
    let intake = Intake::start();
    let mut s = Serve::builder().intake(&intake).start();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (week_ago, ahead) = (now - 7 * 86_400, now + 3_600);
    s.send(format!("hist.gauge:3|g|T{week_ago}\nhist.gauge:4|g|T{ahead}").as_bytes());
    s.stop_ok(T);
    let mut stamps: Vec<i64> = intake
        .points_where("hist.gauge", &[], false)
        .iter()
        .map(|p| p.0)
        .collect();
    stamps.sort_unstable();
    assert_eq!(
        stamps,
        [
            i64::try_from(week_ago).unwrap(),
            i64::try_from(ahead).unwrap()
        ]
    );
    assert_eq!(intake.total("dynostat.samples.discarded", &[]), 0.0);
}

/// Row 3: `DD_SERVICE` and `DD_VERSION` are not added; a metric's own
/// `service:` arrives alone.
#[test]
fn row_3_service_and_version_are_the_clients_to_add() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_SERVICE", "web-svc")
        .env("DD_VERSION", "1.2")
        .env("DD_ENV", "prod")
        .start();
    s.send(b"jobs:1|c|#service:worker\nplain:1|c");
    s.send(b"_e{2,2}:up|ok");
    s.stop_ok(T);
    for name in ["jobs", "plain"] {
        for series in intake.series_named(name) {
            let tags: Vec<&str> = series["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            assert!(tags.contains(&"env:prod"), "{series}");
            assert!(
                !tags.contains(&"service:web-svc")
                    && !tags.iter().any(|t| t.starts_with("version:")),
                "{series}"
            );
        }
    }
    let jobs = intake.series_named("jobs");
    assert!(!jobs.is_empty() && jobs.iter().all(|j| has_tags(j, &["service:worker"])));
    let events = intake.events();
    assert_eq!(events.len(), 1);
    assert!(!events[0].to_string().contains("web-svc"), "{}", events[0]);
}

/// Row 4: every series and sketch carries the Agent's DogStatsD origin.
#[test]
fn row_4_origin_metadata_on_series_and_sketches() {
    let intake = Intake::start();
    let mut s = Serve::builder().intake(&intake).start();
    s.send(b"o.count:1|c\no.gauge:2|g\no.dist:3|d");
    s.stop_ok(T);
    let series = intake.series();
    assert!(!series.is_empty());
    for x in &series {
        assert_eq!(x["metadata"]["origin"]["origin_product"], 10, "{x}");
        assert_eq!(x["metadata"]["origin"]["origin_sub_product"], 10, "{x}");
        assert!(
            x["interval"].is_i64(),
            "row 6: interval on every series: {x}"
        );
        assert!(x.get("unit").is_none(), "row 5: no unit: {x}");
    }
    let sketches = intake.sketches_named("o.dist");
    assert_eq!(sketches.len(), 1);
    assert_eq!(sketches[0].origin, (10, 10, 0));
}

/// Row 10: events go to the Agent's `/intake/`, batched per flush in its
/// envelope, grouped by source type.
#[test]
fn row_10_events_are_batched_to_the_intake_endpoint() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DYNOSTAT_FLUSH_INTERVAL", "3600")
        .start();
    common::clear_of_flush_boundary(3600, Duration::from_secs(10));
    s.send(b"_e{1,1}:a|1\n_e{1,1}:b|2|s:deploys\n_e{1,1}:c|3");
    common::wait_for_udp_queue_below(s.port, 1);
    s.stop_ok(T);
    let reqs: Vec<_> = intake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/intake/")
        .collect();
    assert_eq!(reqs.len(), 2, "one request per source type");
    assert!(intake.requests().iter().all(|r| r.path != "/api/v1/events"));
    let api = reqs
        .iter()
        .map(common::Request::json)
        .find(|j| j["events"].get("api").is_some())
        .expect("events without a source type go under api");
    assert_eq!(api["apiKey"], "");
    let titles: Vec<&str> = api["events"]["api"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["msg_title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["a", "c"]);
    assert!(reqs
        .iter()
        .all(|r| r.header("content-encoding") == Some("gzip")));
    assert_eq!(intake.events().len(), 3);
}

/// Row 13: `DD_DYNO_HOST=true` makes an RFC 1123 host, as the official
/// buildpack does.
#[test]
fn row_13_dyno_host_is_cleaned() {
    let intake = Intake::start();
    let mut s = Serve::builder()
        .intake(&intake)
        .env("DD_DYNO_HOST", "true")
        .env("HEROKU_APP_NAME", "my_shop")
        .env("DYNO", "web.1")
        .env("DYNOSTAT_DYNO_METRICS", "false")
        .start();
    s.send(b"hits:1|c");
    s.stop_ok(T);
    let hits = intake.series_named("hits");
    assert!(!hits.is_empty());
    for h in hits {
        assert_eq!(h["resources"][0]["name"], "my-shop.web.1", "{h}");
    }
}
