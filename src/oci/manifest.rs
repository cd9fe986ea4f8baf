//! Reading the parts of a manifest that a mirror needs (which blobs and
//! child manifests it references) and Accept negotiation. Manifest bytes are
//! never re-serialised: this only reads them.

use super::{Digest, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST};
use serde::Deserialize;

/// The largest manifest accepted from an upstream, as in distribution.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Whether a manifest is an image (references blobs) or an index
/// (references other manifests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    Image,
    Index,
}

/// What a manifest references, read from its JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestInfo {
    pub kind: ManifestKind,
    /// The media type to serve it as: the upstream's `Content-Type` when
    /// that is a manifest type, else the JSON's own `mediaType`.
    pub media_type: String,
    /// Config and layers of an image manifest.
    pub blobs: Vec<Digest>,
    /// Platform manifests of an index.
    pub manifests: Vec<Digest>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
}

/// Reads a manifest's references. `media_type` is what the upstream's
/// `Content-Type` said; the JSON's own `mediaType` is used when the header is
/// absent or generic. Errors name what is wrong, for a `MANIFEST_INVALID`.
pub fn parse_manifest(bytes: &[u8], media_type: &str) -> Result<ManifestInfo, String> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    if raw.schema_version != Some(2) {
        return Err(format!("unsupported manifest schemaVersion {:?} (only 2; schema 1 is deprecated)", raw.schema_version));
    }
    let mt = if is_manifest_type(media_type) { media_type } else { raw.media_type.as_deref().unwrap_or("") };
    let digest = |d: Descriptor| d.digest.parse::<Digest>().map_err(|e| format!("manifest references an invalid digest: {e}"));
    let mt = if mt.is_empty() {
        if raw.manifests.is_some() {
            OCI_INDEX
        } else {
            OCI_MANIFEST
        }
    } else {
        mt
    };
    let index = match mt {
        OCI_INDEX | DOCKER_MANIFEST_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST_V2 => false,
        // OCI allows mediaType to be absent: decide by shape.
        _ => raw.manifests.is_some(),
    };
    if index {
        let manifests = raw.manifests.unwrap_or_default().into_iter().map(digest).collect::<Result<_, _>>()?;
        Ok(ManifestInfo { kind: ManifestKind::Index, media_type: mt.to_owned(), blobs: Vec::new(), manifests })
    } else {
        let config = raw.config.ok_or("image manifest has no config")?;
        let mut blobs = vec![digest(config)?];
        for l in raw.layers {
            blobs.push(digest(l)?);
        }
        Ok(ManifestInfo { kind: ManifestKind::Image, media_type: mt.to_owned(), blobs, manifests: Vec::new() })
    }
}

/// Whether `media_type` is one of the four manifest types a mirror serves.
pub fn is_manifest_type(media_type: &str) -> bool {
    [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2].contains(&media_type)
}

/// Whether a client whose Accept values are `accept` (each value may be a
/// comma-joined list, as containerd sends it) accepts `media_type`. No
/// Accept at all, or `*/*`, accepts everything.
pub fn accepts(accept: &[String], media_type: &str) -> bool {
    if accept.is_empty() {
        return true;
    }
    accept.iter().flat_map(|v| v.split(',')).any(|item| {
        let t = item.split(';').next().unwrap_or("").trim();
        t == "*/*" || t.eq_ignore_ascii_case(media_type) || (t == "application/*" && media_type.starts_with("application/"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn image_and_index() {
        let img =
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{D1}"}},"layers":[{{"digest":"{D2}"}}]}}"#);
        let info = parse_manifest(img.as_bytes(), OCI_MANIFEST).unwrap();
        assert_eq!(info.kind, ManifestKind::Image);
        assert_eq!(info.blobs.len(), 2);
        let idx = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D1}"}},{{"digest":"{D2}"}}]}}"#);
        let info = parse_manifest(idx.as_bytes(), "application/json").unwrap();
        assert_eq!(info.kind, ManifestKind::Index);
        assert_eq!(info.manifests.len(), 2);
        assert!(parse_manifest(b"{\"schemaVersion\":1}", "").is_err());
        assert!(parse_manifest(b"nope", "").is_err());
        let bad = r#"{"schemaVersion":2,"config":{"digest":"sha256:zz"},"layers":[]}"#;
        assert!(parse_manifest(bad.as_bytes(), OCI_MANIFEST).is_err());
    }

    #[test]
    fn accept_lists() {
        assert!(accepts(&[], OCI_INDEX));
        let containerd = vec![format!("{DOCKER_MANIFEST_V2}, {DOCKER_MANIFEST_LIST}, {OCI_MANIFEST}, {OCI_INDEX}, */*")];
        assert!(accepts(&containerd, "anything/else"));
        let schema2 = vec![DOCKER_MANIFEST_V2.to_string()];
        assert!(accepts(&schema2, DOCKER_MANIFEST_V2));
        assert!(!accepts(&schema2, OCI_MANIFEST));
        assert!(accepts(&[format!("{OCI_MANIFEST};q=0.5")], OCI_MANIFEST));
    }
}
