//! The mirror's errors. The HTTP layer maps each to a status and an OCI code.

use crate::index::IndexError;
use crate::oci::{Digest, NameError};
use crate::upstream::UpstreamError;
use std::fmt;
use std::io;
use std::sync::Arc;

/// What kind of object a request was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    Manifest,
    Blob,
    Repository,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Object::Manifest => "manifest",
            Object::Blob => "blob",
            Object::Repository => "repository",
        })
    }
}

/// Cloneable, because one failure (a fill, a coalesced fetch) is reported to
/// every request that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    #[error("no upstream registry named {0:?} is configured on this mirror")]
    UnknownRegistry(String),
    #[error(transparent)]
    Name(NameError),
    #[error("{registry}/{repo} is not among the repositories this mirror serves (upstream.repositories)")]
    NotAllowed { registry: String, repo: String },
    #[error("{what} {reference} is not known upstream")]
    Unknown { what: Object, reference: String },
    #[error("the manifest is of type {media_type}, which the request's Accept header does not allow")]
    NotAcceptable { media_type: String },
    #[error("the mirror is offline and {what} {reference} is not cached")]
    Offline { what: Object, reference: String },
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error("the upstream sent content whose digest is {actual}, not {expected}; nothing was stored")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("the upstream sent an invalid manifest: {0}")]
    ManifestInvalid(String),
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("store error: {0}")]
    Store(Arc<io::Error>),
    #[error(transparent)]
    Index(Arc<IndexError>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl MirrorError {
    pub fn store(e: io::Error) -> MirrorError {
        MirrorError::Store(Arc::new(e))
    }

    /// An upstream error for a request about `what`: a 404 upstream becomes
    /// "unknown", everything else stays an upstream error.
    pub fn from_upstream(e: UpstreamError, what: Object, reference: &str) -> MirrorError {
        match e {
            UpstreamError::NotFound(_) => MirrorError::Unknown { what, reference: reference.chars().take(200).collect() },
            e => MirrorError::Upstream(e),
        }
    }

    /// The upstream could not be asked (unreachable, timed out, 5xx, 429).
    pub fn is_outage(&self) -> bool {
        matches!(self, MirrorError::Upstream(e) if e.is_outage())
    }

    /// Whether the disk is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, MirrorError::Store(e) if matches!(e.raw_os_error(), Some(28) | Some(122)))
    }
}

/// For errors shared by several requests (fills).
pub trait ForObject {
    fn for_object(&self, what: Object, d: &Digest) -> MirrorError;
}

impl ForObject for Arc<MirrorError> {
    fn for_object(&self, what: Object, d: &Digest) -> MirrorError {
        match &**self {
            MirrorError::Upstream(UpstreamError::NotFound(_)) => MirrorError::Unknown { what, reference: d.to_string() },
            other => other.clone(),
        }
    }
}
