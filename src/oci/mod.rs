//! Validated OCI vocabulary: repository names, tags, digests, references,
//! media types and the manifest fields a mirror needs to read.
//!
//! Everything here is pure: parsing and validation, no I/O. The HTTP layer
//! turns the errors into OCI error codes; nothing past this module ever sees
//! an unvalidated name or digest, so no path can be built from user input.

mod digest;
mod manifest;
mod name;

pub use digest::{Digest, DigestError, DigestVerifier};
pub use manifest::{accepts, is_manifest_type, parse_manifest, ManifestInfo, ManifestKind, MAX_MANIFEST_SIZE};
pub use name::{NameError, Reference, RepoName, Tag};

/// Docker schema2 image manifest.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-arch).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-arch).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The Accept list sent upstream when a client sends none: every manifest
/// type a current client can use, so the upstream never falls back to schema 1.
pub const DEFAULT_ACCEPT: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2];
