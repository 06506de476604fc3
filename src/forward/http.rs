//! One request to the intake, and what its answer means.
//!
//! In: a [`Payload`] and a timeout. Out: a [`Sent`], the intake's answer
//! classified as the Agent's forwarder classifies it (its
//! `comp/forwarder/defaultforwarder/transaction/transaction.go`), with the
//! `Retry-After` of a 429 or 503.
//!
//! Must never: follow a redirect (it would carry the `DD-API-KEY` header to
//! wherever it points), read proxies from anywhere but [`crate::config`],
//! or put the API key or a proxy's credentials into an error or log text.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};

use super::payload::{Endpoint, Payload};
use crate::config::{escape_truncate, redact_url, ApiKey, Config};

/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Response bytes kept for the log.
const MAX_BODY_LOG: usize = 512;

/// What to do with a payload after the intake answered `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: delivered.
    Accepted,
    /// 403: the key is wrong; dropped (as the Agent does), explained in the log.
    Forbidden,
    /// 413: split in halves and resent (the Agent drops it).
    TooLarge,
    /// 400, and 1xx/3xx: dropped. (The Agent counts anything below 400 as
    /// sent; a redirect we do not follow delivered nothing, so it is a drop.)
    Drop,
    /// Every other status above 400 (401, 404, 408, 429, 5xx, ...): retried,
    /// as the Agent retries them.
    Retry,
}

/// The Agent's classification of an HTTP status, with 413 split instead of
/// dropped and 1xx/3xx dropped instead of counted as sent.
pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Accepted,
        403 => Class::Forbidden,
        413 => Class::TooLarge,
        400 => Class::Drop,
        s if s > 400 => Class::Retry,
        _ => Class::Drop,
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP-date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`), as a wait from `now`. `None` when it
/// cannot be read; a date in the past is a zero wait.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Unix seconds of an IMF-fixdate.
fn parse_http_date(s: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = s.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + i64::try_from(day).ok()? - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

/// What the intake said about one payload.
#[derive(Debug)]
pub enum Sent {
    /// 2xx.
    Accepted,
    /// 403.
    Forbidden,
    /// 413.
    TooLarge,
    /// Dropped: 400, 1xx, 3xx.
    Rejected {
        /// The status.
        status: u16,
        /// The start of the answer, for the log (not yet scrubbed).
        body: String,
    },
    /// Worth another try: statuses above 400 but 403 and 413, transport
    /// errors, timeouts.
    Retry {
        /// For the log (not yet scrubbed).
        reason: String,
        /// The answer's `Retry-After`, on a 429 or 503.
        retry_after: Option<Duration>,
    },
}

/// The intake client. Its `Debug` shows no key: [`ApiKey`] redacts itself and
/// the header value is marked sensitive.
#[derive(Debug)]
pub struct Http {
    client: reqwest::Client,
    /// The intake base URL, no trailing slash.
    pub base_url: String,
    /// The trace intake's base URL (`DD_APM_DD_URL`), no trailing slash.
    pub trace_url: String,
    /// `DD_SITE`, for the 403 explanation.
    pub site: String,
    key_header: HeaderValue,
    key: ApiKey,
    /// Proxy URLs, to scrub from error texts.
    secrets: Vec<String>,
}

impl Http {
    /// Builds the client: rustls, hickory DNS, no redirects, the configured
    /// proxies only.
    pub fn new(config: &Config, key: &ApiKey) -> anyhow::Result<Self> {
        let mut key_header = HeaderValue::from_str(key.expose()).map_err(|_| {
            anyhow::anyhow!(
                "DD_API_KEY contains characters that cannot be sent in an HTTP header; \
                 copy the key again from Datadog (Organization Settings → API Keys)"
            )
        })?;
        key_header.set_sensitive(true);
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            // hickory resolves names itself: no glibc NSS, so the static binary works anywhere
            // (forward::dns, shared with the checks).
            .dns_resolver(std::sync::Arc::new(super::dns::Dns::default()))
            // A redirect would carry the DD-API-KEY header to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            // reqwest would read the proxy variables itself; config.rs does.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("dynostat/", env!("CARGO_PKG_VERSION")));
        let no_proxy = reqwest::NoProxy::from_string(&config.proxy.no_proxy.join(","));
        let mut secrets = Vec::new();
        for (target, proxy) in [("https", &config.proxy.https), ("http", &config.proxy.http)] {
            let Some((var, url)) = proxy else { continue };
            let make = if target == "https" {
                reqwest::Proxy::https
            } else {
                reqwest::Proxy::http
            };
            let p = make(url.as_str()).map_err(|_| {
                anyhow::anyhow!(
                    "{var}={}: not a proxy URL; use e.g. http://proxy.example.com:3128",
                    redact_url(url)
                )
            })?;
            builder = builder.proxy(p.no_proxy(no_proxy.clone()));
            secrets.push(url.clone());
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("could not set up the HTTPS client: {e}"))?;
        Ok(Self {
            client,
            base_url: config.intake_url.trim_end_matches('/').to_owned(),
            trace_url: config.trace.intake_url.trim_end_matches('/').to_owned(),
            site: config.site.clone(),
            key_header,
            key: key.clone(),
            secrets,
        })
    }

    /// The full URL of `endpoint`.
    pub fn url(&self, endpoint: Endpoint) -> String {
        let base = if endpoint.is_trace() {
            &self.trace_url
        } else {
            &self.base_url
        };
        format!("{base}{}", endpoint.path())
    }

    /// One proxied request for the trace relay (telemetry, profiles, EVP):
    /// `body` to `url` with the caller's `headers` and the API key, the
    /// answer's status, content type and at most `max_answer` bytes of body
    /// back. Not queued or retried: the tracer waits for the answer and
    /// retries itself, as it does with the Agent. Errors are scrubbed.
    pub async fn relay(
        &self,
        url: &str,
        headers: Vec<(reqwest::header::HeaderName, HeaderValue)>,
        body: bytes::Bytes,
        timeout: Duration,
        max_answer: usize,
    ) -> Result<(u16, Option<HeaderValue>, Vec<u8>), String> {
        let mut request = self.client.post(url).timeout(timeout);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut response = request
            .header("DD-API-KEY", self.key_header.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| self.scrub(&error_chain(&e)))?;
        let status = response.status().as_u16();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let mut answer = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            if answer.len() + chunk.len() > max_answer {
                break;
            }
            answer.extend_from_slice(&chunk);
        }
        // The answer goes back to the tracer: an intake (or a proxy in the
        // way) quoting the request must not hand it the key.
        Ok((status, content_type, self.scrub_bytes(answer)))
    }

    /// [`Http::scrub`] for bytes that may not be UTF-8 (a proxied answer).
    fn scrub_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        let key = self.key.expose().as_bytes();
        let leaks = |b: &[u8], s: &[u8]| !s.is_empty() && b.windows(s.len()).any(|w| w == s);
        if !leaks(&bytes, key)
            && !self
                .secrets
                .iter()
                .any(|u| leaks(&bytes, u.as_str().as_bytes()))
        {
            return bytes;
        }
        self.scrub(&String::from_utf8_lossy(&bytes)).into_bytes()
    }

    /// Removes the API key and proxy URLs from text that came from outside
    /// (error chains, response bodies), in case anything ever echoes them.
    pub fn scrub(&self, text: &str) -> String {
        let key = self.key.expose();
        let mut out = if key.is_empty() {
            text.to_owned()
        } else {
            text.replace(key, "<redacted>")
        };
        for url in &self.secrets {
            out = out.replace(url.as_str(), &redact_url(url));
        }
        out
    }

    /// Sends `p` once, within `timeout`.
    pub async fn send(&self, p: &Payload, timeout: Duration) -> Sent {
        let request = self
            .client
            .post(self.url(p.endpoint))
            .header("DD-API-KEY", self.key_header.clone())
            .header(CONTENT_TYPE, p.endpoint.content_type())
            .header(CONTENT_ENCODING, p.endpoint.content_encoding())
            .timeout(timeout)
            .body(p.body.clone());
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Sent::Retry {
                    reason: error_chain(&e),
                    retry_after: None,
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = if status == 429 || status == 503 {
            response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
        } else {
            None
        };
        // Read a little of the body: for the log, and so the connection can be reused.
        let mut body = Vec::new();
        while body.len() < MAX_BODY_LOG {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        match classify(status) {
            Class::Accepted => Sent::Accepted,
            Class::Forbidden => Sent::Forbidden,
            Class::TooLarge => Sent::TooLarge,
            Class::Retry => Sent::Retry {
                reason: format!("HTTP {status}"),
                retry_after,
            },
            Class::Drop => Sent::Rejected {
                status,
                body: escape_truncate(&String::from_utf8_lossy(&body), MAX_BODY_LOG),
            },
        }
    }
}

/// An error and its causes, `outer: inner: …` (reqwest hides the useful part,
/// such as "Connection refused", in the source chain).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_agent_does() {
        for s in [200, 202, 204, 299] {
            assert_eq!(classify(s), Class::Accepted, "{s}");
        }
        assert_eq!(classify(400), Class::Drop);
        assert_eq!(classify(403), Class::Forbidden);
        assert_eq!(classify(413), Class::TooLarge);
        for s in [
            401, 404, 405, 408, 409, 429, 451, 499, 500, 502, 503, 504, 599,
        ] {
            assert_eq!(classify(s), Class::Retry, "{s}");
        }
        for s in [100, 301, 302, 304, 307, 308] {
            assert_eq!(classify(s), Class::Drop, "{s}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Mon, 07 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", SystemTime::UNIX_EPOCH),
            Some(Duration::from_secs(1_709_164_800))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
