//! The one place where errors become HTTP statuses, OCI error codes and
//! JSON bodies. Every [`MirrorError`] variant is matched explicitly; an
//! internal error is logged here, once, and the client gets a message that
//! says what to do.

use crate::mirror::{MirrorError, Object};
use crate::oci::NameError;
use crate::upstream::UpstreamError;
use http::StatusCode;

/// An error response: status, OCI code, message, and extra headers.
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// For a 416: the blob's size, for `Content-Range: bytes */size`.
    pub unsatisfied_size: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None, unsatisfied_size: None }
    }

    pub fn body(&self) -> String {
        serde_json::json!({"errors": [{"code": self.code, "message": self.message, "detail": null}]}).to_string()
    }
}

fn unknown_code(what: Object) -> &'static str {
    match what {
        Object::Manifest => "MANIFEST_UNKNOWN",
        Object::Blob => "BLOB_UNKNOWN",
        Object::Repository => "NAME_UNKNOWN",
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        let code = match e {
            NameError::Repo(_) => "NAME_INVALID",
            NameError::Tag(_) => "TAG_INVALID",
            NameError::Digest(_) => "DIGEST_INVALID",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<MirrorError> for ApiError {
    fn from(e: MirrorError) -> ApiError {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            MirrorError::UnknownRegistry(_) => ApiError::new(S::BAD_REQUEST, "NAME_INVALID", msg),
            MirrorError::Name(n) => n.into(),
            MirrorError::NotAllowed { .. } => ApiError::new(S::FORBIDDEN, "DENIED", msg),
            MirrorError::Unknown { what, .. } => ApiError::new(S::NOT_FOUND, unknown_code(what), msg),
            MirrorError::NotAcceptable { .. } => ApiError::new(S::NOT_FOUND, "MANIFEST_UNKNOWN", msg),
            MirrorError::Offline { what, .. } => ApiError::new(S::NOT_FOUND, unknown_code(what), msg),
            MirrorError::Upstream(u) => match u {
                UpstreamError::NotFound(_) => ApiError::new(S::NOT_FOUND, "NAME_UNKNOWN", msg),
                UpstreamError::Denied(_) => ApiError::new(S::FORBIDDEN, "DENIED", msg),
                UpstreamError::RateLimited { retry_after } => {
                    let mut a = ApiError::new(S::SERVICE_UNAVAILABLE, "UNAVAILABLE", format!("{msg}; this is not cached yet"));
                    a.retry_after = retry_after.map(|d| d.as_secs().max(1));
                    a
                }
                UpstreamError::Unavailable(_) => ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    format!("{msg}; this is not cached yet, retry when the upstream is back"),
                ),
                UpstreamError::Invalid(_) => {
                    tracing::warn!(error = %msg, "upstream sent an invalid response");
                    ApiError::new(S::BAD_GATEWAY, "UNKNOWN", msg)
                }
            },
            MirrorError::DigestMismatch { .. } => {
                tracing::error!(error = %msg, "digest mismatch from upstream");
                ApiError::new(S::BAD_GATEWAY, "UNKNOWN", msg)
            }
            MirrorError::ManifestInvalid(_) => ApiError::new(S::BAD_GATEWAY, "MANIFEST_INVALID", msg),
            MirrorError::RangeNotSatisfiable { size } => {
                let mut a = ApiError::new(S::RANGE_NOT_SATISFIABLE, "RANGE_INVALID", msg);
                a.unsatisfied_size = Some(size);
                a
            }
            ref err @ MirrorError::Store(_) if err.is_disk_full() => {
                tracing::error!(error = %msg, "store is full");
                ApiError::new(S::SERVICE_UNAVAILABLE, "UNAVAILABLE", "the mirror's disk is full: nothing more can be cached until space is freed (set storage.max_size below the disk's size, and old images are evicted to make room)")
            }
            MirrorError::Store(_) | MirrorError::Index(_) | MirrorError::Internal(_) => {
                tracing::error!(error = %msg, "internal error");
                ApiError::new(S::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("{msg} (see the mirror's log)"))
            }
        }
    }
}
