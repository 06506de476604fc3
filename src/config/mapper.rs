//! `DD_DOGSTATSD_MAPPER_PROFILES`: the Agent's mapper profiles, read and
//! compiled.
//!
//! In: the variable's JSON, the Agent's format (pkg/config/setup binds
//! `dogstatsd_mapper_profiles` to a JSON list of `{name, prefix, mappings:
//! [{match, match_type, name, tags}]}`). Out: [`MapperProfile`]s whose rules
//! are compiled regexes, ready for `dogstatsd::mapper`, or one error message
//! naming the profile and rule at fault.
//!
//! The rules follow the Agent's comp/dogstatsd/mapper (mapper.go,
//! `NewMetricMapper` and `buildRegex`): a profile needs a `name` and a
//! `prefix`; a rule needs a `match` and a `name`; `match_type` is `wildcard`
//! (the default) or `regex`. A wildcard may hold only `A-Z a-z 0-9 - _ * .`,
//! never `**`; each `*` becomes `([^.]*)` and each `.` a literal dot. Either
//! kind is then anchored by writing `^` before it and `$` after it, as the
//! Agent does (without a group, so `a|b` reads `^a` or `b$`, as there).
//!
//! Must never: read the environment (the caller passes the value).

use std::collections::BTreeMap;

use serde::Deserialize;

/// One profile: rules tried, in order, on names that start with `prefix`.
#[derive(Debug, Clone)]
pub struct MapperProfile {
    /// The profile's name, for error messages.
    pub name: String,
    /// Names that do not start with it skip the profile; `*` takes every name.
    pub prefix: String,
    /// The rules, in order; the first that matches wins.
    pub rules: Vec<MapperRule>,
}

/// One rule: a match, the new name and the tags, both with `$1`/`${name}`
/// captures.
#[derive(Debug, Clone)]
pub struct MapperRule {
    /// The anchored pattern.
    pub regex: regex::Regex,
    /// The new name, a template.
    pub name: String,
    /// `(key, value template)`, sorted by key.
    pub tags: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct ProfileJson {
    #[serde(default)]
    name: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    mappings: Option<Vec<RuleJson>>,
}

#[derive(Deserialize)]
struct RuleJson {
    #[serde(default, rename = "match")]
    pattern: String,
    #[serde(default)]
    match_type: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

/// Reads and compiles the profiles; `Err` says what to fix.
pub fn parse_mapper_profiles(json: &str) -> Result<Vec<MapperProfile>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let profiles: Vec<ProfileJson> = serde_json::from_str(json).map_err(|e| {
        format!(
            "not the Agent's JSON list of profiles ({e}); expected e.g. \
             [{{\"name\":\"app\",\"prefix\":\"app.\",\"mappings\":[{{\"match\":\"app.*.hits\",\"name\":\"app.hits\",\"tags\":{{\"page\":\"$1\"}}}}]}}]"
        )
    })?;
    let mut out = Vec::with_capacity(profiles.len());
    for (i, p) in profiles.into_iter().enumerate() {
        if p.name.is_empty() {
            return Err(format!("profile {i} has no \"name\""));
        }
        if p.prefix.is_empty() {
            return Err(format!("profile {:?} has no \"prefix\"", p.name));
        }
        let mut rules = Vec::new();
        for (j, r) in p.mappings.unwrap_or_default().into_iter().enumerate() {
            let at = format!("profile {:?}, mapping {j}", p.name);
            if r.name.is_empty() {
                return Err(format!("{at}: \"name\" is required"));
            }
            if r.pattern.is_empty() {
                return Err(format!("{at}: \"match\" is required"));
            }
            let pattern = match r.match_type.as_str() {
                "" | "wildcard" => {
                    wildcard_to_regex(&r.pattern).map_err(|e| format!("{at}: {e}"))?
                }
                "regex" => r.pattern.clone(),
                other => {
                    return Err(format!(
                        "{at}: match_type {other:?} is not \"wildcard\" or \"regex\""
                    ))
                }
            };
            let regex = regex::Regex::new(&format!("^{pattern}$")).map_err(|e| {
                format!("{at}: the match {:?} is not a valid regex: {e}", r.pattern)
            })?;
            let tags: Vec<(String, String)> = r.tags.unwrap_or_default().into_iter().collect();
            // Names and tags end up in comma-separated, newline-framed
            // context keys and in DogStatsD tags: neither may hold those.
            for s in std::iter::once(&r.name).chain(tags.iter().flat_map(|(k, v)| [k, v])) {
                if s.contains([',', '\n']) {
                    return Err(format!("{at}: {s:?} contains a comma or a newline"));
                }
            }
            rules.push(MapperRule {
                regex,
                name: r.name,
                tags,
            });
        }
        out.push(MapperProfile {
            name: p.name,
            prefix: p.prefix,
            rules,
        });
    }
    Ok(out)
}

/// The Agent's wildcard form: checked, then `.` escaped and `*` captured.
fn wildcard_to_regex(pattern: &str) -> Result<String, String> {
    if !pattern
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*' | b'.'))
    {
        return Err(format!(
            "the wildcard {pattern:?} may only hold letters, digits, '-', '_', '.' and '*' (or set \"match_type\":\"regex\")"
        ));
    }
    if pattern.contains("**") {
        return Err(format!("the wildcard {pattern:?} has consecutive '*'"));
    }
    Ok(pattern.replace('.', "\\.").replace('*', "([^.]*)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_compile_and_errors_name_the_rule() {
        let p = parse_mapper_profiles(
            r#"[{"name":"air","prefix":"airflow.","mappings":[
                {"match":"airflow.job.duration_sec.*.*","name":"airflow.job.duration","tags":{"job_type":"$1","job_name":"$2"}},
                {"match":"airflow\\.(\\w+)\\.ok","match_type":"regex","name":"airflow.ok","tags":{"what":"${1}"}}]}]"#,
        )
        .expect("valid");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rules.len(), 2);
        assert_eq!(
            p[0].rules[0].regex.as_str(),
            r"^airflow\.job\.duration_sec\.([^.]*)\.([^.]*)$"
        );
        assert_eq!(p[0].rules[0].tags[0], ("job_name".into(), "$2".into()));
        assert!(parse_mapper_profiles("").expect("empty is none").is_empty());
        assert!(parse_mapper_profiles("[]").expect("none").is_empty());

        for (json, needle) in [
            ("{", "JSON"),
            (r#"[{"prefix":"a."}]"#, "no \"name\""),
            (r#"[{"name":"p"}]"#, "no \"prefix\""),
            (
                r#"[{"name":"p","prefix":"a","mappings":[{"match":"a.*"}]}]"#,
                "\"name\" is required",
            ),
            (
                r#"[{"name":"p","prefix":"a","mappings":[{"name":"x"}]}]"#,
                "\"match\" is required",
            ),
            (
                r#"[{"name":"p","prefix":"a","mappings":[{"match":"a.**","name":"x"}]}]"#,
                "consecutive",
            ),
            (
                r#"[{"name":"p","prefix":"a","mappings":[{"match":"a.(x)","name":"x"}]}]"#,
                "may only hold",
            ),
            (
                r#"[{"name":"p","prefix":"a","mappings":[{"match":"a(","match_type":"regex","name":"x"}]}]"#,
                "not a valid regex",
            ),
            (
                r#"[{"name":"p","prefix":"a","mappings":[{"match":"a","match_type":"glob","name":"x"}]}]"#,
                "match_type",
            ),
            (
                r#"[{"name":"p","prefix":"a","mappings":[{"match":"a","name":"x,y"}]}]"#,
                "comma",
            ),
        ] {
            let e = parse_mapper_profiles(json).expect_err(json);
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
