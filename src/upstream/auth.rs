//! The registry authentication dance: answer a `401` challenge with a
//! Bearer token from the realm it names (anonymously, or with the upstream's
//! credentials as Basic auth), or with Basic credentials directly; keep each
//! token per scope until it expires. Tokens and passwords never appear in an
//! error message or a log line.

use super::UpstreamError;
use base64::Engine as _;
use moka::future::Cache;
use moka::Expiry;
use reqwest::header::HeaderValue;
use std::time::{Duration, Instant};

/// An `Authorization` header value and how long it may be used.
#[derive(Clone)]
struct Cred {
    /// Marked sensitive, so it is never printed in a debug dump.
    header: HeaderValue,
    ttl: Duration,
}

struct CredExpiry;

impl Expiry<String, Cred> for CredExpiry {
    fn expire_after_create(&self, _key: &String, value: &Cred, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub(super) struct Auth {
    http: reqwest::Client,
    creds: Option<(String, String)>,
    /// Per scope (`repository:<name>:pull`).
    cache: Cache<String, Cred>,
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn parse(v: &str) -> Option<Challenge> {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let mut params = Vec::new();
        let mut s = rest.trim();
        while !s.is_empty() {
            let (key, after) = s.split_once('=')?;
            let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, remain) = if let Some(q) = after.strip_prefix('"') {
                let end = q.find('"')?;
                (q[..end].to_owned(), &q[end + 1..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            };
            params.push((key, value));
            s = remain.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
    }

    fn param(&self, k: &str) -> Option<&str> {
        self.params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Auth {
    pub fn new(http: reqwest::Client, creds: Option<(String, String)>) -> Auth {
        Auth { http, creds, cache: Cache::builder().max_capacity(10_000).expire_after(CredExpiry).build() }
    }

    pub async fn header_for(&self, scope: &str) -> Option<HeaderValue> {
        self.cache.get(scope).await.map(|c| c.header)
    }

    fn basic(&self) -> Option<String> {
        self.creds.as_ref().map(|(u, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
    }

    /// Answers a challenge for `scope`; afterwards [`Auth::header_for`] has a
    /// fresh credential.
    pub async fn answer(&self, www_authenticate: &str, scope: &str) -> Result<(), UpstreamError> {
        let ch =
            Challenge::parse(www_authenticate).ok_or_else(|| UpstreamError::Invalid("unparseable WWW-Authenticate challenge".into()))?;
        let cred = match ch.scheme.as_str() {
            "basic" => {
                let header = self.basic().ok_or_else(|| {
                    UpstreamError::Denied("the upstream asks for Basic credentials; set username and password for it".into())
                })?;
                Cred { header: sensitive(&header)?, ttl: Duration::from_secs(3600) }
            }
            "bearer" => self.fetch_token(&ch, scope).await?,
            other => return Err(UpstreamError::Invalid(format!("unsupported authentication scheme {other:?}"))),
        };
        self.cache.insert(scope.to_owned(), cred).await;
        Ok(())
    }

    async fn fetch_token(&self, ch: &Challenge, scope: &str) -> Result<Cred, UpstreamError> {
        let realm = ch.param("realm").ok_or_else(|| UpstreamError::Invalid("Bearer challenge without a realm".into()))?;
        let mut url = url::Url::parse(realm).map_err(|_| UpstreamError::Invalid("Bearer realm is not a URL".into()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UpstreamError::Invalid("Bearer realm is not an http(s) URL".into()));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = ch.param("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", ch.param("scope").unwrap_or(scope));
        }
        let mut req = self.http.get(url);
        if let Some(b) = self.basic() {
            req = req.header(reqwest::header::AUTHORIZATION, b);
        }
        let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
            .await
            .map_err(|_| UpstreamError::Unavailable("token service did not answer within 30s".into()))?
            .map_err(|e| UpstreamError::Unavailable(format!("token service unreachable: {}", e.without_url())))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(UpstreamError::Denied(format!("the token service refused the upstream's credentials ({status})")));
        }
        if status.is_server_error() {
            return Err(UpstreamError::Unavailable(format!("token service answered {status}")));
        }
        if !status.is_success() {
            return Err(UpstreamError::Invalid(format!("token service answered {status}")));
        }
        let body = resp.bytes().await.map_err(|e| UpstreamError::Unavailable(format!("token response broke off: {}", e.without_url())))?;
        if body.len() > 1 << 20 {
            return Err(UpstreamError::Invalid("token response is over 1 MiB".into()));
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| UpstreamError::Invalid("token service answered something that is not a token JSON".into()))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| UpstreamError::Invalid("token response has no token".into()))?;
        let header = sensitive(&format!("Bearer {token}"))?;
        let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(1));
        // Renew a little before the upstream would refuse it.
        let ttl = life.saturating_sub(Duration::from_secs(10).min(life / 2));
        Ok(Cred { header, ttl })
    }
}

/// A header value for a credential, marked sensitive.
fn sensitive(v: &str) -> Result<HeaderValue, UpstreamError> {
    let mut h =
        HeaderValue::from_str(v).map_err(|_| UpstreamError::Invalid("credential contains characters not allowed in a header".into()))?;
    h.set_sensitive(true);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("scope"), Some("repository:library/alpine:pull,push"));
        let b = Challenge::parse("Basic realm=\"Registry Realm\"").unwrap();
        assert_eq!(b.scheme, "basic");
        assert_eq!(Challenge::parse("Bearer").unwrap().params.len(), 0);
        assert!(Challenge::parse("Bearer realm=\"unterminated").is_none());
    }
}
