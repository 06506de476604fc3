//! Proxies for the intake, read from the environment as the Agent reads them.
//!
//! In: `DD_PROXY_HTTPS`, `DD_PROXY_HTTP`, `DD_PROXY_NO_PROXY` and the
//! standard `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` (and their lower-case
//! forms). Out: a [`Proxy`] for the forwarder.
//!
//! Must never: show a proxy's credentials (`user:password@`) in a `Debug`
//! dump or an error; [`redact_url`] takes them out.

use std::fmt;

use super::{ConfigError, Reader};

/// Proxies for the intake, as the Agent reads them from the environment
/// (`LoadProxyFromEnv` in its pkg/config/setup): `DD_PROXY_HTTPS`, else
/// `HTTPS_PROXY`/`https_proxy`, for https intake URLs; `DD_PROXY_HTTP`, else
/// `HTTP_PROXY`/`http_proxy`, for http ones; `DD_PROXY_NO_PROXY` (split at
/// spaces and commas), else `NO_PROXY`/`no_proxy` (split at commas), for the
/// hosts that bypass them. A variable that is set but empty means none.
///
/// Its `Debug` redacts the user and password in the proxy URLs: they are
/// credentials, like the API key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Proxy {
    /// `(variable, URL)` for https intakes.
    pub https: Option<(&'static str, String)>,
    /// `(variable, URL)` for http intakes.
    pub http: Option<(&'static str, String)>,
    /// Hosts, domains (`.example.com`), IPs or CIDR ranges that go direct.
    pub no_proxy: Vec<String>,
}

impl Proxy {
    pub(super) fn from_reader(r: &Reader<'_>) -> Result<Self, ConfigError> {
        let first = |vars: &[&'static str]| -> Result<Option<(&'static str, String)>, ConfigError> {
            for var in vars {
                if let Some(v) = r.string(var)? {
                    let v = v.trim().to_owned();
                    if v.is_empty() {
                        return Ok(None);
                    }
                    if v.contains(char::is_whitespace) {
                        return Err(ConfigError::new(
                            var,
                            &redact_url(&v),
                            "not a proxy URL; use e.g. http://user:password@proxy.example.com:3128",
                        ));
                    }
                    return Ok(Some((*var, v)));
                }
            }
            Ok(None)
        };
        let https = first(&["DD_PROXY_HTTPS", "HTTPS_PROXY", "https_proxy"])?;
        let http = first(&["DD_PROXY_HTTP", "HTTP_PROXY", "http_proxy"])?;
        let no_proxy = if let Some(v) = r.string("DD_PROXY_NO_PROXY")? {
            split_list(&v, &[' ', ','])
        } else if let Some(v) = r.string("NO_PROXY")?.or(r.string("no_proxy")?) {
            split_list(&v, &[','])
        } else {
            Vec::new()
        };
        Ok(Self {
            https,
            http,
            no_proxy,
        })
    }
}

fn split_list(v: &str, seps: &[char]) -> Vec<String> {
    v.split(|c| seps.contains(&c))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A proxy URL with any `user:password@` replaced by `<redacted>@`, for logs
/// and errors.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |p: &Option<(&'static str, String)>| {
            p.as_ref()
                .map(|(var, url)| format!("{var}={}", redact_url(url)))
        };
        f.debug_struct("Proxy")
            .field("https", &show(&self.https))
            .field("http", &show(&self.http))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::super::Config;
    use super::*;

    #[test]
    fn proxies_are_read_as_the_agent_reads_them() {
        let c = Config::from_lookup(&env(&[])).expect("valid");
        assert_eq!(c.proxy, Proxy::default());

        // DD_* wins over the standard names; upper case over lower case.
        let c = Config::from_lookup(&env(&[
            ("DD_PROXY_HTTPS", "http://dd:3128"),
            ("HTTPS_PROXY", "http://std:3128"),
            ("https_proxy", "http://lower:3128"),
            ("HTTP_PROXY", "http://plain:8080"),
            (
                "DD_PROXY_NO_PROXY",
                "a.example.com .b.example.com,10.0.0.0/8",
            ),
            ("NO_PROXY", "ignored"),
        ]))
        .expect("valid");
        assert_eq!(
            c.proxy.https,
            Some(("DD_PROXY_HTTPS", "http://dd:3128".to_owned()))
        );
        assert_eq!(
            c.proxy.http,
            Some(("HTTP_PROXY", "http://plain:8080".to_owned()))
        );
        assert_eq!(
            c.proxy.no_proxy,
            ["a.example.com", ".b.example.com", "10.0.0.0/8"],
            "DD_PROXY_NO_PROXY splits at spaces and commas"
        );

        let c = Config::from_lookup(&env(&[
            ("https_proxy", "http://lower:3128"),
            ("no_proxy", "x.com, y.com"),
        ]))
        .expect("valid");
        assert_eq!(
            c.proxy.https,
            Some(("https_proxy", "http://lower:3128".to_owned()))
        );
        assert_eq!(
            c.proxy.no_proxy,
            ["x.com", "y.com"],
            "NO_PROXY splits at commas"
        );

        // Set but empty: no proxy, and the standard name is not consulted.
        let c = Config::from_lookup(&env(&[
            ("DD_PROXY_HTTPS", ""),
            ("HTTPS_PROXY", "http://std:1"),
        ]))
        .expect("valid");
        assert_eq!(c.proxy.https, None);
    }

    #[test]
    fn proxy_credentials_never_show() {
        let c = Config::from_lookup(&env(&[(
            "DD_PROXY_HTTPS",
            "http://user:hunter2@proxy.example.com:3128/",
        )]))
        .expect("valid");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("user:"),
            "{shown}"
        );
        assert!(
            shown.contains("DD_PROXY_HTTPS=http://<redacted>@proxy.example.com:3128/"),
            "{shown}"
        );
        let err = Config::from_lookup(&env(&[("HTTPS_PROXY", "http://u:hunter2@bad host")]))
            .expect_err("whitespace");
        let text = err.to_string();
        assert!(
            text.contains("HTTPS_PROXY") && !text.contains("hunter2"),
            "{text}"
        );
        assert_eq!(redact_url("http://proxy:3128"), "http://proxy:3128");
        assert_eq!(redact_url("u:p@proxy:3128"), "<redacted>@proxy:3128");
    }
}
