//! Clients for the configured upstream registries.
//!
//! One [`Upstream`] per `[[upstream]]` entry: its own reqwest client (with
//! that entry's timeouts), its credentials, and its token cache. Every
//! request goes through [`Upstream::send`], which does the authentication
//! dance of [`auth`] and maps failures to [`UpstreamError`] kinds the mirror
//! can act on (serve stale, answer 404, retry later).

mod auth;

use crate::config::UpstreamConfig;
use crate::oci::{Digest, RepoName, DEFAULT_ACCEPT, MAX_MANIFEST_SIZE};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What went wrong with an upstream request, in the terms the mirror needs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0} is not known upstream")]
    NotFound(String),
    #[error("upstream refused access: {0}")]
    Denied(String),
    #[error("upstream rate limit reached; retry after {}", retry_after.map(|d| format!("{}s", d.as_secs())).unwrap_or_else(|| "a while".into()))]
    RateLimited { retry_after: Option<Duration> },
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("upstream sent an invalid response: {0}")]
    Invalid(String),
}

impl UpstreamError {
    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::NotFound(_) => "not_found",
            UpstreamError::Denied(_) => "denied",
            UpstreamError::RateLimited { .. } => "rate_limited",
            UpstreamError::Unavailable(_) => "unavailable",
            UpstreamError::Invalid(_) => "invalid",
        }
    }

    /// Whether the upstream could not answer at all (so a stale cached
    /// answer is better than an error).
    pub fn is_outage(&self) -> bool {
        matches!(self, UpstreamError::Unavailable(_) | UpstreamError::RateLimited { .. })
    }
}

/// A manifest as the upstream sent it.
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    /// `Docker-Content-Digest`, when the upstream sent a valid one.
    pub digest: Option<Digest>,
}

/// The answer to a manifest `HEAD`.
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: String,
    pub size: Option<u64>,
}

/// A blob body streaming from the upstream.
pub struct BlobBody {
    /// The blob's total size when the upstream said it.
    pub total: Option<u64>,
    /// Where this body starts in the blob (non-zero after a resume).
    pub offset: u64,
    pub stream: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>,
}

pub struct Upstream {
    name: String,
    base: String,
    http: reqwest::Client,
    auth: auth::Auth,
    header_timeout: Duration,
    /// Set from a 429's `Retry-After`: until then no request is sent.
    backoff_until: Mutex<Option<Instant>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    labels: crate::metrics::UpstreamLabels,
}

fn transport_error(e: reqwest::Error) -> UpstreamError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "too many redirects"
    } else {
        "request failed"
    };
    // reqwest's message names the URL without credentials.
    UpstreamError::Unavailable(format!("{kind}: {}", e.without_url_if_sensitive()))
}

trait WithoutSensitive {
    fn without_url_if_sensitive(self) -> String;
}
impl WithoutSensitive for reqwest::Error {
    fn without_url_if_sensitive(self) -> String {
        // Blob redirects point at signed URLs whose query is a credential.
        let e = self.without_url();
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        msg
    }
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Result<Upstream, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .redirect(redirect_policy(&cfg.url))
            .user_agent(concat!("regmirror/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("upstream {}: cannot build HTTP client: {e}", cfg.name))?;
        let creds = cfg.username.clone().zip(crate::config::Config::password(cfg)?);
        Ok(Upstream {
            name: cfg.name.clone(),
            base: cfg.url.as_str().trim_end_matches('/').to_owned(),
            auth: auth::Auth::new(http.clone(), creds),
            http,
            header_timeout: cfg.header_timeout,
            backoff_until: Mutex::new(None),
            metrics,
            labels: crate::metrics::Metrics::upstream(&cfg.name),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a request for `repo`, authenticating as the upstream asks, and
    /// returns a response with a 2xx status (or 404/416 mapped to errors).
    async fn send(&self, method: Method, repo: &RepoName, path: &str, headers: HeaderMap) -> Result<reqwest::Response, UpstreamError> {
        let r = self.send_inner(method, repo, path, headers).await;
        if let Err(e) = &r {
            let labels = crate::metrics::UpstreamErrorLabels { upstream: self.name.clone(), kind: e.kind().to_owned() };
            self.metrics.upstream_errors.get_or_create(&labels).inc();
        }
        r
    }

    /// Counts bytes fetched from this upstream.
    pub fn count_bytes(&self, n: u64) {
        self.metrics.upstream_bytes.get_or_create(&self.labels).inc_by(n);
    }

    /// Records the rate-limit budget the upstream announces (Docker Hub).
    fn record_ratelimit(&self, h: &HeaderMap) {
        for (name, family) in
            [("ratelimit-remaining", &self.metrics.ratelimit_remaining), ("ratelimit-limit", &self.metrics.ratelimit_limit)]
        {
            if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()).and_then(crate::metrics::ratelimit_value) {
                family.get_or_create(&self.labels).set(v);
            }
        }
    }

    async fn send_inner(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        if let Some(until) = *self.backoff_until.lock().expect("backoff lock is never poisoned: no panics under it") {
            let now = Instant::now();
            if now < until {
                return Err(UpstreamError::RateLimited { retry_after: Some(until - now) });
            }
        }
        let url = format!("{}/v2/{}", self.base, path);
        let scope = format!("repository:{}:pull", repo.as_str());
        let mut retried_auth = false;
        let mut retried_closed = false;
        loop {
            let mut req = self.http.request(method.clone(), &url).headers(headers.clone());
            if let Some(h) = self.auth.header_for(&scope).await {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            let started = std::time::Instant::now();
            let resp = match tokio::time::timeout(self.header_timeout, req.send()).await {
                Err(_) => return Err(UpstreamError::Unavailable(format!("no response headers within {:?}", self.header_timeout))),
                // The connection closed before the response head, as happens
                // when the upstream drops a pooled keep-alive connection just
                // as it is reused: GET and HEAD are safe to send once more.
                Ok(Err(e)) if !retried_closed && !e.is_connect() && !e.is_timeout() => {
                    tracing::debug!(error = %transport_error(e), "upstream closed the connection before answering; retrying once");
                    retried_closed = true;
                    continue;
                }
                Ok(Err(e)) => return Err(transport_error(e)),
                Ok(Ok(r)) => r,
            };
            self.metrics.upstream_latency.get_or_create(&self.labels).observe(started.elapsed().as_secs_f64());
            self.record_ratelimit(resp.headers());
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !retried_auth {
                let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let Some(challenge) = challenge else {
                    return Err(UpstreamError::Denied("401 without a WWW-Authenticate challenge".into()));
                };
                self.auth.answer(&challenge, &scope).await?;
                retried_auth = true;
                continue;
            }
            return match status {
                s if s.is_success() => Ok(resp),
                StatusCode::NOT_FOUND => Err(UpstreamError::NotFound(path.to_owned())),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(UpstreamError::Denied(format!(
                    "{} for {}: the repository does not exist upstream or needs credentials for upstream {}",
                    status.as_u16(),
                    repo,
                    self.name
                ))),
                StatusCode::TOO_MANY_REQUESTS => {
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let wait = retry_after.unwrap_or(Duration::from_secs(60)).min(Duration::from_secs(3600));
                    *self.backoff_until.lock().expect("backoff lock is never poisoned") = Some(Instant::now() + wait);
                    Err(UpstreamError::RateLimited { retry_after })
                }
                s if s.is_server_error() => Err(UpstreamError::Unavailable(format!("upstream answered {s}"))),
                s => Err(UpstreamError::Invalid(format!("unexpected status {s} for {path}"))),
            };
        }
    }

    fn accept_headers(accept: &[String]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let mut any = false;
        for a in accept {
            if let Ok(v) = HeaderValue::from_str(a) {
                h.append(ACCEPT, v);
                any = true;
            }
        }
        if !any {
            for a in DEFAULT_ACCEPT {
                h.append(ACCEPT, HeaderValue::from_static(a));
            }
        }
        h
    }

    fn manifest_meta(resp: &reqwest::Response) -> (String, Option<Digest>, Option<u64>) {
        let h = resp.headers();
        let mt = h
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default();
        let digest = h.get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
        let len = h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
        (mt, digest, len)
    }

    /// `GET` a manifest by tag or digest, at most [`MAX_MANIFEST_SIZE`] bytes.
    pub async fn get_manifest(&self, repo: &RepoName, reference: &str, accept: &[String]) -> Result<FetchedManifest, UpstreamError> {
        let resp = self.send(Method::GET, repo, &format!("{repo}/manifests/{reference}"), Self::accept_headers(accept)).await?;
        let (media_type, digest, len) = Self::manifest_meta(&resp);
        if len.is_some_and(|l| l > MAX_MANIFEST_SIZE as u64) {
            return Err(UpstreamError::Invalid(format!("manifest is {} bytes, over the {MAX_MANIFEST_SIZE}-byte limit", len.unwrap_or(0))));
        }
        let mut body = BytesMut::with_capacity(len.unwrap_or(4096).min(MAX_MANIFEST_SIZE as u64) as usize);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(transport_error)?;
            if body.len() + chunk.len() > MAX_MANIFEST_SIZE {
                return Err(UpstreamError::Invalid(format!("manifest is over the {MAX_MANIFEST_SIZE}-byte limit")));
            }
            body.extend_from_slice(&chunk);
        }
        if len.is_some_and(|l| l != body.len() as u64) {
            return Err(UpstreamError::Unavailable(format!("manifest body ended after {} of {} bytes", body.len(), len.unwrap_or(0))));
        }
        Ok(FetchedManifest { bytes: body.freeze(), media_type, digest })
    }

    /// `HEAD` a manifest: its digest without spending a Docker Hub pull.
    pub async fn head_manifest(&self, repo: &RepoName, reference: &str, accept: &[String]) -> Result<ManifestHead, UpstreamError> {
        let resp = self.send(Method::HEAD, repo, &format!("{repo}/manifests/{reference}"), Self::accept_headers(accept)).await?;
        let (media_type, digest, size) = Self::manifest_meta(&resp);
        Ok(ManifestHead { digest, media_type, size })
    }

    /// `GET` a blob from `offset` on (a `Range` request when non-zero).
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest, offset: u64) -> Result<BlobBody, UpstreamError> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(RANGE, HeaderValue::from_str(&format!("bytes={offset}-")).expect("digits are a valid header value"));
        }
        let resp = self.send(Method::GET, repo, &format!("{repo}/blobs/{digest}"), headers).await?;
        let len: Option<u64> = resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
        let (start, total) = if offset > 0 {
            if resp.status() != StatusCode::PARTIAL_CONTENT {
                // A property of the upstream, not a passing fault: retrying cannot help.
                return Err(UpstreamError::Invalid("upstream does not support resuming (no 206 for a Range request)".into()));
            }
            let cr = resp.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            match parse_content_range(cr) {
                Some((s, total)) if s == offset => (s, total),
                _ => return Err(UpstreamError::Invalid(format!("resume at {offset} answered with Content-Range {cr:?}"))),
            }
        } else {
            (0, len)
        };
        let stream = resp.bytes_stream().map(|r| r.map_err(transport_error));
        Ok(BlobBody { total, offset: start, stream: Box::pin(stream) })
    }

    /// `HEAD` a blob: its size.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        let resp = self.send(Method::HEAD, repo, &format!("{repo}/blobs/{digest}"), HeaderMap::new()).await?;
        Ok(resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok()))
    }

    /// The repository's tags (all pages), sorted.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut path = format!("{repo}/tags/list?n=1000");
        // A bounded walk over `Link` pages.
        for _ in 0..100 {
            let resp = self.send(Method::GET, repo, &path, HeaderMap::new()).await?;
            let next = resp.headers().get(reqwest::header::LINK).and_then(|v| v.to_str().ok()).and_then(next_link);
            let bytes = resp.bytes().await.map_err(transport_error)?;
            let list: TagList =
                serde_json::from_slice(&bytes).map_err(|e| UpstreamError::Invalid(format!("tags/list is not valid JSON: {e}")))?;
            out.extend(list.tags.unwrap_or_default());
            match next.and_then(|n| n.strip_prefix("/v2/").map(str::to_owned)) {
                Some(n) if n.starts_with(&format!("{repo}/tags/list")) => path = n,
                _ => break,
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Redirects are followed within the upstream's own host, and to other
/// hosts only for blob downloads (Docker Hub sends them to its CDN): a
/// manifest, tag or token request is never sent anywhere else. reqwest
/// drops `Authorization` on a redirect to another host.
fn redirect_policy(base: &url::Url) -> reqwest::redirect::Policy {
    let origin = base.origin();
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("too many redirects (5)");
        }
        let same_host = attempt.url().origin() == origin;
        let blob = attempt.previous().first().is_some_and(|u| u.path().contains("/blobs/sha256:"));
        if same_host || blob {
            attempt.follow()
        } else {
            attempt.error("the upstream redirected a non-blob request to another host; refused")
        }
    })
}

/// `bytes S-E/T` → (S, Some(T)); `T` may be `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total == "*" { None } else { Some(total.parse().ok()?) };
    Some((start.parse().ok()?, total))
}

/// The target of a `Link: <…>; rel="next"` header.
fn next_link(v: &str) -> Option<String> {
    v.split(',').find(|p| p.contains("rel=\"next\"")).and_then(|p| {
        let s = p.find('<')? + 1;
        let e = p.find('>')?;
        (s <= e).then(|| p[s..e].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsers() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes x"), None);
        assert_eq!(next_link("</v2/a/tags/list?n=2&last=b>; rel=\"next\"").as_deref(), Some("/v2/a/tags/list?n=2&last=b"));
    }
}
