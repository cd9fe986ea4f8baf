//! Turning a request line into a [`Route`]. Names contain slashes, so the
//! path is read from the right: `/v2/<name>/(manifests|blobs|tags)/…`.
//! Nothing is percent-decoded: `%` is not allowed in names, tags or
//! digests, so an encoded `..` or `/` is simply an invalid name.

use http::Method;

#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`
    Base,
    Manifest {
        name: &'a str,
        reference: &'a str,
    },
    Blob {
        name: &'a str,
        digest: &'a str,
    },
    Tags {
        name: &'a str,
    },
    /// A push, upload or delete endpoint: a mirror is read-only.
    Write,
    /// `/metrics`, `/healthz`, `/readyz`: for operators, outside `/v2/`.
    Metrics,
    Healthz,
    Readyz,
    /// Not an endpoint of the pull API.
    NotFound,
}

/// The longest request path looked at; longer paths cannot be valid (a
/// name is at most 255 bytes, a digest at most 71 for sha256).
pub const MAX_PATH: usize = 1024;

pub fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    if path.len() > MAX_PATH {
        return Route::NotFound;
    }
    if method == Method::GET || method == Method::HEAD {
        match path {
            "/metrics" => return Route::Metrics,
            "/healthz" => return Route::Healthz,
            "/readyz" => return Route::Readyz,
            _ => {}
        }
    }
    let Some(rest) = path.strip_prefix("/v2") else {
        return Route::NotFound;
    };
    if rest.is_empty() || rest == "/" {
        return Route::Base;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Route::NotFound;
    };
    let read = method == Method::GET || method == Method::HEAD;
    let write = [Method::PUT, Method::POST, Method::PATCH, Method::DELETE].contains(method);
    // blobs/uploads/... (with or without an upload id) is always a write.
    if let Some(i) = rest.rfind("/blobs/uploads") {
        let after = &rest[i + "/blobs/uploads".len()..];
        if i > 0 && (after.is_empty() || after.starts_with('/')) {
            return Route::Write;
        }
    }
    let r = if let Some(name) = rest.strip_suffix("/tags/list") {
        Route::Tags { name }
    } else if let Some((name, reference)) = split_last(rest, "/manifests/") {
        Route::Manifest { name, reference }
    } else if let Some((name, digest)) = split_last(rest, "/blobs/") {
        Route::Blob { name, digest }
    } else {
        return Route::NotFound;
    };
    match r {
        _ if write && !matches!(r, Route::Tags { .. }) => Route::Write,
        _ if !read => Route::NotFound,
        r => r,
    }
}

/// Splits at the last `sep` when what follows has no `/`.
fn split_last<'a>(s: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
    let i = s.rfind(sep)?;
    let (name, last) = (&s[..i], &s[i + sep.len()..]);
    (!name.is_empty() && !last.is_empty() && !last.contains('/')).then_some((name, last))
}

impl Route<'_> {
    /// The endpoint's name, for metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Tags { .. } => "tags",
            Route::Write => "write",
            Route::Metrics => "metrics",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::NotFound => "not_found",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let g = Method::GET;
        assert_eq!(route(&g, "/v2/"), Route::Base);
        assert_eq!(route(&g, "/v2"), Route::Base);
        assert_eq!(route(&g, "/v2/library/alpine/manifests/3.19"), Route::Manifest { name: "library/alpine", reference: "3.19" });
        assert_eq!(route(&g, "/v2/a/manifests/b/manifests/c"), Route::Manifest { name: "a/manifests/b", reference: "c" });
        assert_eq!(route(&g, "/v2/a/blobs/sha256:00"), Route::Blob { name: "a", digest: "sha256:00" });
        assert_eq!(route(&g, "/v2/a/b/tags/list"), Route::Tags { name: "a/b" });
        assert_eq!(route(&Method::HEAD, "/v2/a/blobs/x"), Route::Blob { name: "a", digest: "x" });
        assert_eq!(route(&Method::PUT, "/v2/a/manifests/x"), Route::Write);
        assert_eq!(route(&Method::DELETE, "/v2/a/blobs/x"), Route::Write);
        assert_eq!(route(&Method::POST, "/v2/a/blobs/uploads/"), Route::Write);
        assert_eq!(route(&g, "/v2/a/blobs/uploads/abc"), Route::Write);
        assert_eq!(route(&g, "/v2/_catalog"), Route::NotFound);
        assert_eq!(route(&g, "/v2/manifests/x"), Route::NotFound);
        assert_eq!(route(&g, "/v3/a/manifests/x"), Route::NotFound);
        assert_eq!(route(&g, "/v2x"), Route::NotFound);
        assert_eq!(route(&Method::OPTIONS, "/v2/a/manifests/x"), Route::NotFound);
        assert_eq!(route(&g, "/metrics"), Route::Metrics);
        assert_eq!(route(&g, "/readyz"), Route::Readyz);
        assert_eq!(route(&Method::POST, "/healthz"), Route::NotFound);
    }
}
