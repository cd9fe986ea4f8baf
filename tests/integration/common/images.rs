//! Images built offline, byte for byte: gzipped tar layers, config JSON and
//! manifests in both OCI and Docker schema2 media types, single-platform and
//! multi-arch. Deterministic, so digests are stable across runs.

use super::digest_of;
use bytes::Bytes;
use serde_json::json;
use std::io::Write;
use std::sync::OnceLock;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub bytes: Bytes,
}

impl Blob {
    pub fn new(bytes: impl Into<Bytes>) -> Blob {
        let bytes = bytes.into();
        Blob { digest: digest_of(&bytes), bytes }
    }
}

#[derive(Clone, Debug)]
pub struct Doc {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Doc {
    fn new(media_type: &str, v: serde_json::Value) -> Doc {
        let bytes = Bytes::from(serde_json::to_vec_pretty(&v).unwrap());
        Doc { digest: digest_of(&bytes), media_type: media_type.into(), bytes }
    }
}

/// One tag of a repository: its top manifest, child manifests (for an
/// index) and every blob.
#[derive(Clone, Debug)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub top: Doc,
    pub children: Vec<Doc>,
    pub blobs: Vec<Blob>,
}

impl Image {
    pub fn total_blob_bytes(&self) -> usize {
        self.blobs.iter().map(|b| b.bytes.len()).sum()
    }
}

/// A small deterministic generator (xorshift) for incompressible data.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A gzipped tar with one file; returns (compressed blob, diff_id).
pub fn layer(path: &str, content: &[u8]) -> (Blob, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    tar.append_data(&mut h, path, content).unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = digest_of(&raw);
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    (Blob::new(gz.finish().unwrap()), diff_id)
}

fn config(arch: &str, diff_ids: &[String], note: &str) -> Blob {
    let v = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "Labels": {"note": note}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    });
    Blob::new(serde_json::to_vec(&v).unwrap())
}

fn descriptor(media_type: &str, b: &Blob) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": b.digest, "size": b.bytes.len()})
}

/// An image manifest in OCI (`oci = true`) or Docker schema2 types.
fn image_manifest(oci: bool, cfg: &Blob, layers: &[Blob]) -> Doc {
    let (mt, cfg_mt, layer_mt) = if oci {
        (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip")
    } else {
        (DOCKER_MANIFEST, "application/vnd.docker.container.image.v1+json", "application/vnd.docker.image.rootfs.diff.tar.gzip")
    };
    Doc::new(
        mt,
        json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": descriptor(cfg_mt, cfg),
            "layers": layers.iter().map(|l| descriptor(layer_mt, l)).collect::<Vec<_>>(),
        }),
    )
}

/// A single-platform image with `n` small layers (plus `extra` layers).
pub fn single(repo: &str, tag: &str, oci: bool, seed: u64, n: usize, extra: &[(Blob, String)]) -> Image {
    let mut layers: Vec<(Blob, String)> =
        (0..n).map(|i| layer(&format!("etc/layer{i}"), &random_bytes(seed * 100 + i as u64, 2000 + 700 * i))).collect();
    layers.extend_from_slice(extra);
    let diff_ids: Vec<String> = layers.iter().map(|l| l.1.clone()).collect();
    let cfg = config("amd64", &diff_ids, &format!("{repo}:{tag}"));
    let blobs: Vec<Blob> = layers.into_iter().map(|l| l.0).collect();
    let top = image_manifest(oci, &cfg, &blobs);
    let mut all = vec![cfg];
    all.extend(blobs);
    Image { repo: repo.into(), tag: tag.into(), top, children: vec![], blobs: all }
}

/// A two-platform image: an OCI index or a Docker manifest list.
pub fn multi(repo: &str, tag: &str, oci: bool, seed: u64) -> Image {
    let mut children = Vec::new();
    let mut blobs = Vec::new();
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let (l, diff) = layer("bin/tool", &random_bytes(seed * 1000 + i as u64, 3000));
        let cfg = config(arch, &[diff], &format!("{repo}:{tag}:{arch}"));
        let m = image_manifest(oci, &cfg, std::slice::from_ref(&l));
        entries.push(json!({"mediaType": m.media_type, "digest": m.digest, "size": m.bytes.len(), "platform": {"architecture": arch, "os": "linux"}}));
        blobs.push(cfg);
        blobs.push(l);
        children.push(m);
    }
    let mt = if oci { OCI_INDEX } else { DOCKER_LIST };
    let top = Doc::new(mt, json!({"schemaVersion": 2, "mediaType": mt, "manifests": entries}));
    Image { repo: repo.into(), tag: tag.into(), top, children, blobs }
}

/// A minimal OCI image manifest (no layers) whose config digest is `fill`
/// repeated: distinct bytes, hence a distinct digest, per `fill`.
pub fn tiny_manifest(fill: char) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":1}},"layers":[]}}"#,
        fill.to_string().repeat(64)
    ))
}

/// The images every real-upstream test seeds.
pub struct Catalog {
    /// A 3-layer OCI image.
    pub alpine: Image,
    /// The same layers under a Docker schema2 manifest.
    pub alpine_docker: Image,
    /// A multi-arch OCI index.
    pub multi_oci: Image,
    /// A multi-arch Docker manifest list.
    pub multi_docker: Image,
    /// An image with a layer of several MiB of random data.
    pub big: Image,
    /// Only credentials can pull this one from the token upstream.
    pub private: Image,
}

impl Catalog {
    pub fn get() -> &'static Catalog {
        static C: OnceLock<Catalog> = OnceLock::new();
        C.get_or_init(|| {
            let alpine = single("library/alpine", "3.19", true, 1, 3, &[]);
            let mut alpine_docker = single("library/alpine", "3.19", false, 1, 3, &[]);
            alpine_docker.tag = "3.19-docker".into();
            let big_layer = layer("data/random.bin", &random_bytes(77, 6 * 1024 * 1024 + 12345));
            Catalog {
                alpine,
                alpine_docker,
                multi_oci: multi("library/multi", "oci", true, 3),
                multi_docker: multi("library/multi", "docker", false, 4),
                big: single("library/big", "latest", true, 5, 1, &[big_layer]),
                private: single("private/secret", "1", true, 6, 2, &[]),
            }
        })
    }

    /// The public images.
    pub fn public(&self) -> Vec<&Image> {
        vec![&self.alpine, &self.alpine_docker, &self.multi_oci, &self.multi_docker, &self.big]
    }
}
