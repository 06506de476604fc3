//! Metric names as the Agent rewrites them: mapper profiles, then the
//! namespace, then the blocklist.
//!
//! In: a metric's name as received. Out: [`Named`]: the name to aggregate
//! under plus the tags the mapper added, or "blocked".
//!
//! The order and rules are the Agent's (comp/dogstatsd/server server.go
//! `parseMetricMessage`, enrich.go `enrichMetricSample`, and
//! comp/dogstatsd/mapper mapper.go `Map`): the mapper sees the raw name;
//! the first profile whose prefix the name starts with (or whose prefix is
//! `*`) decides alone, by its first matching rule, or leaves the name as is
//! when none matches (later profiles are not tried); the namespace is put in
//! front unless the name starts with one of the exception prefixes; the
//! blocklist tests the final name, exactly or by prefix.
//!
//! Cost: the aggregator calls [`Names::resolve`] only when a spelling is not
//! in its per-interval cache, and mapper results are kept in a bounded cache
//! of names (`DD_DOGSTATSD_MAPPER_CACHE_SIZE`, the Agent's
//! `dogstatsd_mapper_cache_size`, emptied when full), so a regex runs about
//! once per distinct name, not per sample.
//!
//! Must never: run on the hot path, or grow without bound.

use rustc_hash::FxHashMap;

use crate::config::MapperProfile;

/// The name rules, from [`crate::config::Config`].
#[derive(Debug, Clone, Default)]
pub struct NameRules {
    /// `DD_DOGSTATSD_MAPPER_PROFILES`, compiled.
    pub mapper_profiles: Vec<MapperProfile>,
    /// `DD_DOGSTATSD_MAPPER_CACHE_SIZE`: names whose mapping is remembered (at least 1).
    pub mapper_cache_size: usize,
    /// `DD_STATSD_METRIC_NAMESPACE`, with its trailing `.`; empty for none.
    pub namespace: String,
    /// `DD_STATSD_METRIC_NAMESPACE_BLACKLIST`: names starting with one of
    /// these are not namespaced.
    pub namespace_exceptions: Vec<String>,
    /// `DD_STATSD_METRIC_BLOCKLIST`: names dropped.
    pub blocklist: Vec<String>,
    /// `DD_STATSD_METRIC_BLOCKLIST_MATCH_PREFIX`: the blocklist holds prefixes.
    pub blocklist_match_prefix: bool,
}

/// What the rules made of one name.
#[derive(Debug, PartialEq)]
pub enum Named<'a> {
    /// Aggregate under this name, adding these tags (from the mapper).
    Keep(&'a str, &'a [String]),
    /// The blocklist drops it.
    Blocked,
}

/// One mapper result: the new name and its tags.
#[derive(Debug)]
struct Mapped {
    name: String,
    tags: Vec<String>,
}

/// [`NameRules`] ready to apply, with the mapper's cache and scratch space.
#[derive(Debug)]
pub struct Names {
    rules: NameRules,
    /// Blocklist, sorted (exact matches by binary search).
    blocklist: Vec<String>,
    /// Name → mapping (`None`: a profile took the name but no rule matched).
    cache: FxHashMap<Box<str>, Option<Mapped>>,
    /// The namespaced name being built.
    scratch: String,
}

impl Names {
    /// Prepares the rules.
    pub fn new(rules: NameRules) -> Self {
        let mut blocklist = rules.blocklist.clone();
        blocklist.sort_unstable();
        blocklist.dedup();
        Self {
            rules,
            blocklist,
            cache: FxHashMap::default(),
            scratch: String::new(),
        }
    }

    /// Whether every name passes through unchanged (no mapper, namespace or
    /// blocklist): the aggregator can skip [`Names::resolve`].
    pub fn is_identity(&self) -> bool {
        self.rules.mapper_profiles.is_empty()
            && self.rules.namespace.is_empty()
            && self.blocklist.is_empty()
    }

    /// Applies the mapper, the namespace and the blocklist to `name`.
    pub fn resolve<'s>(&'s mut self, name: &'s str) -> Named<'s> {
        let (mapped, tags): (&str, &[String]) = match map(
            &self.rules.mapper_profiles,
            &mut self.cache,
            self.rules.mapper_cache_size,
            name,
        ) {
            Some(m) => (m.name.as_str(), &m.tags),
            None => (name, &[]),
        };
        // The Agent's isExcluded: exceptions apply only with a namespace.
        let full: &str = if self.rules.namespace.is_empty()
            || self
                .rules
                .namespace_exceptions
                .iter()
                .any(|p| mapped.starts_with(p.as_str()))
        {
            mapped
        } else {
            self.scratch.clear();
            self.scratch.push_str(&self.rules.namespace);
            self.scratch.push_str(mapped);
            &self.scratch
        };
        let blocked = if self.rules.blocklist_match_prefix {
            self.blocklist.iter().any(|p| full.starts_with(p.as_str()))
        } else {
            self.blocklist
                .binary_search_by(|b| b.as_str().cmp(full))
                .is_ok()
        };
        if blocked {
            Named::Blocked
        } else {
            Named::Keep(full, tags)
        }
    }
}

/// The Agent's `Map`: the first profile whose prefix fits decides.
fn map<'c>(
    profiles: &[MapperProfile],
    cache: &'c mut FxHashMap<Box<str>, Option<Mapped>>,
    cache_size: usize,
    name: &str,
) -> Option<&'c Mapped> {
    let profile = profiles
        .iter()
        .find(|p| p.prefix == "*" || name.starts_with(p.prefix.as_str()))?;
    if !cache.contains_key(name) {
        let result = profile.rules.iter().find_map(|rule| {
            let caps = rule.regex.captures(name)?;
            let expand = |template: &str| {
                let mut out = String::new();
                caps.expand(template, &mut out);
                out
            };
            Some(Mapped {
                name: expand(&rule.name),
                tags: rule
                    .tags
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", expand(v)))
                    .collect(),
            })
        });
        if cache.len() >= cache_size.max(1) {
            cache.clear();
        }
        cache.insert(Box::from(name), result);
    }
    cache.get(name).and_then(Option::as_ref)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_mapper_profiles;

    fn names(profiles: &str, f: impl FnOnce(&mut NameRules)) -> Names {
        let mut rules = NameRules {
            mapper_profiles: parse_mapper_profiles(profiles).expect("valid profiles"),
            mapper_cache_size: 1000,
            ..NameRules::default()
        };
        f(&mut rules);
        Names::new(rules)
    }

    fn keep(n: &mut Names, name: &str) -> (String, Vec<String>) {
        match n.resolve(name) {
            Named::Keep(name, tags) => (name.to_owned(), tags.to_vec()),
            Named::Blocked => panic!("{name} was blocked"),
        }
    }

    const PROFILES: &str = r#"[
        {"name":"airflow","prefix":"airflow.","mappings":[
            {"match":"airflow.job.duration_sec.*.*","name":"airflow.job.duration","tags":{"job_type":"$1","job_name":"$2"}},
            {"match":"airflow.operator_failures_(\\w+)","match_type":"regex","name":"airflow.operator_failures","tags":{"operator":"${1}"}},
            {"match":"airflow.(?P<what>[a-z]+)\\.count","match_type":"regex","name":"airflow.${what}_total","tags":{}}
        ]},
        {"name":"late","prefix":"airflow.pool","mappings":[{"match":"airflow.pool.*","name":"never"}]},
        {"name":"all","prefix":"*","mappings":[{"match":"*.sidekiq.*","name":"sidekiq.$2","tags":{"app":"$1"}}]}
    ]"#;

    #[test]
    fn wildcards_and_regexes_map_names_and_capture_tags() {
        let mut n = names(PROFILES, |_| {});
        assert_eq!(
            keep(&mut n, "airflow.job.duration_sec.local.my_dag"),
            (
                "airflow.job.duration".into(),
                vec!["job_name:my_dag".into(), "job_type:local".into()]
            )
        );
        assert_eq!(
            keep(&mut n, "airflow.operator_failures_BashOperator"),
            (
                "airflow.operator_failures".into(),
                vec!["operator:BashOperator".into()]
            )
        );
        assert_eq!(
            keep(&mut n, "airflow.dag.count"),
            ("airflow.dag_total".into(), vec![])
        );
        // `*` does not cross a dot; anchored at both ends.
        assert_eq!(
            keep(&mut n, "airflow.job.duration_sec.a.b.c"),
            ("airflow.job.duration_sec.a.b.c".into(), vec![])
        );
        assert_eq!(keep(&mut n, "xairflow.dag.count").0, "xairflow.dag.count");
        // The first profile whose prefix fits decides alone: "airflow.pool.x"
        // matches no rule of "airflow", and "late" is never tried.
        assert_eq!(
            keep(&mut n, "airflow.pool.x"),
            ("airflow.pool.x".into(), vec![])
        );
        // The `*` prefix takes any name.
        assert_eq!(
            keep(&mut n, "shop.sidekiq.jobs"),
            ("sidekiq.jobs".into(), vec!["app:shop".into()])
        );
        // Unmatched names pass through.
        assert_eq!(keep(&mut n, "page.views"), ("page.views".into(), vec![]));
        // A second look comes from the cache, with the same answer.
        assert!(n.cache.contains_key("airflow.dag.count"));
        assert_eq!(
            keep(&mut n, "airflow.dag.count"),
            ("airflow.dag_total".into(), vec![])
        );
    }

    #[test]
    fn the_mapper_cache_is_bounded() {
        let mut n = names(PROFILES, |r| r.mapper_cache_size = 3);
        for i in 0..10 {
            let name = format!("airflow.job.duration_sec.t.{i}");
            assert_eq!(keep(&mut n, &name).1[0], format!("job_name:{i}"));
            assert!(n.cache.len() <= 3);
        }
    }

    #[test]
    fn namespace_exceptions_and_blocklist_follow_the_agent() {
        let mut n = names("", |r| {
            r.namespace = "app.".into();
            r.namespace_exceptions = vec!["jvm".into(), "datadog.tracer".into()];
            r.blocklist = vec!["app.noisy".into(), "jvm.gc".into()];
        });
        assert_eq!(keep(&mut n, "hits").0, "app.hits");
        // Exceptions are raw prefixes, no dot implied (as strings.HasPrefix).
        assert_eq!(keep(&mut n, "jvm.heap").0, "jvm.heap");
        assert_eq!(keep(&mut n, "jvmx").0, "jvmx");
        // The blocklist sees the namespaced name, exactly.
        assert_eq!(n.resolve("noisy"), Named::Blocked);
        assert_eq!(keep(&mut n, "noisy.not").0, "app.noisy.not");
        assert_eq!(n.resolve("jvm.gc"), Named::Blocked);
        assert!(!n.is_identity());

        let mut n = names("", |r| {
            r.blocklist = vec!["debug.".into()];
            r.blocklist_match_prefix = true;
        });
        assert_eq!(n.resolve("debug.x"), Named::Blocked);
        assert_eq!(keep(&mut n, "debugx").0, "debugx");
        // Without a namespace, exceptions do nothing.
        assert!(names("", |_| {}).is_identity());
    }

    #[test]
    fn the_blocklist_sees_the_mapped_name() {
        let mut n = names(PROFILES, |r| r.blocklist = vec!["airflow.dag_total".into()]);
        assert_eq!(n.resolve("airflow.dag.count"), Named::Blocked);
    }
}
