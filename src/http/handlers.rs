//! Thin handlers: parse and validate the request, ask the mirror, shape the
//! response headers. No I/O of their own.

use super::body::{Content, ResponseBody};
use super::error::ApiError;
use super::range::parse_range;
use crate::mirror::{Mirror, Source, Target};
use crate::oci::{Digest, Reference};
use http::header::{HeaderValue, ACCEPT, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LINK, RANGE};
use http::{HeaderMap, Method, Response, StatusCode};

pub type Resp = Response<ResponseBody>;

/// What a handler returns: the response and how it was answered (for the log).
pub struct Handled {
    pub resp: Resp,
    pub cache: &'static str,
}

/// The request's parts a handler reads.
pub struct Req<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// containerd's `?ns=`.
    pub ns: Option<&'a str>,
    pub query: &'a str,
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn builder(status: StatusCode) -> http::response::Builder {
    Response::builder().status(status)
}

fn accept_list(h: &HeaderMap) -> Vec<String> {
    h.get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
}

fn target(mirror: &Mirror, req: &Req, name: &str) -> Result<Target, ApiError> {
    Ok(mirror.route(req.ns, name)?)
}

pub fn base() -> Resp {
    let mut r = Response::new(ResponseBody::full("{}"));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub async fn manifest(mirror: &Mirror, req: &Req<'_>, name: &str, reference: &str) -> Result<Handled, ApiError> {
    let t = target(mirror, req, name)?;
    let reference = Reference::parse(reference)?;
    let a = mirror.manifest(&t, &reference, &accept_list(req.headers)).await?;
    let m = &a.manifest;
    let etag = format!("\"{}\"", m.digest);
    let not_modified = req
        .headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == etag || v.trim() == "*");
    let status = if not_modified { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
    let body = if req.method == Method::HEAD || not_modified { ResponseBody::empty() } else { ResponseBody::full(m.bytes.clone()) };
    let mut b = builder(status)
        .header(CONTENT_TYPE, hv(&m.media_type))
        .header("docker-content-digest", hv(&m.digest.to_string()))
        .header(ETAG, hv(&etag));
    if !not_modified {
        b = b.header(CONTENT_LENGTH, m.bytes.len());
    }
    if a.source == Source::Stale {
        b = b.header("warning", "110 - \"response is stale\"");
    }
    Ok(Handled { resp: b.body(body).expect("static header names and checked values"), cache: a.source.as_str() })
}

pub async fn blob(mirror: &Mirror, req: &Req<'_>, name: &str, digest: &str) -> Result<Handled, ApiError> {
    let t = target(mirror, req, name)?;
    let d: Digest = digest.parse().map_err(|e| ApiError::from(crate::oci::NameError::Digest(e)))?;
    let range = req.headers.get(RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range);
    let head = req.method == Method::HEAD;
    let a = mirror.blob(&t, &d, range, head).await?;
    let mut b = builder(if a.range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK })
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", hv(&d.to_string()))
        .header(ACCEPT_RANGES, "bytes")
        .header(ETAG, hv(&format!("\"{d}\"")));
    let len = match (&a.range, a.size) {
        (Some(r), Some(size)) => {
            b = b.header(CONTENT_RANGE, format!("bytes {}-{}/{size}", r.start, r.end - 1));
            Some(r.end - r.start)
        }
        (_, size) => size,
    };
    if let Some(len) = len {
        b = b.header(CONTENT_LENGTH, len);
    }
    let body = match a.body {
        Some(s) => ResponseBody::new(Content::Stream(s), len),
        None => ResponseBody::empty(),
    };
    Ok(Handled { resp: b.body(body).expect("static header names and checked values"), cache: a.source.as_str() })
}

pub async fn tags(mirror: &Mirror, req: &Req<'_>, name: &str) -> Result<Handled, ApiError> {
    let t = target(mirror, req, name)?;
    let mut n: Option<usize> = None;
    let mut last: Option<String> = None;
    for (k, v) in url::form_urlencoded::parse(req.query.as_bytes()) {
        match &*k {
            "n" => {
                n = Some(v.parse().map_err(|_| {
                    ApiError::new(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID", format!("n={v:?} is not a non-negative number"))
                })?)
            }
            "last" => last = Some(v.into_owned()),
            _ => {}
        }
    }
    let (all, source) = mirror.tags(&t).await?;
    let after: Vec<&String> = all.iter().filter(|t| last.as_ref().is_none_or(|l| t.as_str() > l.as_str())).collect();
    let take = n.unwrap_or(usize::MAX).min(after.len());
    let page = &after[..take];
    let mut b = builder(StatusCode::OK).header(CONTENT_TYPE, "application/json");
    if take < after.len() && take > 0 {
        let mut link = format!("</v2/{name}/tags/list?n={}&last={}", n.unwrap_or(take), page[take - 1]);
        if let Some(ns) = req.ns {
            link.push_str("&ns=");
            link.push_str(ns);
        }
        link.push_str(">; rel=\"next\"");
        b = b.header(LINK, hv(&link));
    }
    if source == Source::Stale {
        b = b.header("warning", "110 - \"response is stale\"");
    }
    let body = serde_json::json!({"name": name, "tags": page}).to_string();
    Ok(Handled { resp: b.body(ResponseBody::full(body)).expect("static header names and checked values"), cache: source.as_str() })
}

/// A plain-text response (health endpoints).
pub fn text(status: StatusCode, body: String) -> Resp {
    builder(status).header(CONTENT_TYPE, "text/plain; charset=utf-8").body(ResponseBody::full(body)).expect("static header names")
}

/// `/metrics`: the Prometheus/OpenMetrics text format.
pub async fn metrics(mirror: &Mirror) -> Result<Handled, ApiError> {
    let body = mirror.metrics_text().await?;
    let resp = builder(StatusCode::OK)
        .header(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(ResponseBody::full(body))
        .expect("static header names");
    Ok(Handled { resp, cache: "-" })
}

/// `/readyz`: 200 when the index answers and the store takes a file.
pub async fn ready(mirror: &Mirror) -> Handled {
    let resp = match mirror.ready().await {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    };
    Handled { resp, cache: "-" }
}

/// An OCI error response.
pub fn error_response(e: &ApiError, head: bool) -> Resp {
    let body = e.body();
    let mut b = builder(e.status).header(CONTENT_TYPE, "application/json").header(CONTENT_LENGTH, body.len());
    if let Some(s) = e.retry_after {
        b = b.header("retry-after", s);
    }
    if let Some(size) = e.unsatisfied_size {
        b = b.header(CONTENT_RANGE, format!("bytes */{size}"));
    }
    b.body(if head { ResponseBody::empty() } else { ResponseBody::full(body) }).expect("static header names and checked values")
}
