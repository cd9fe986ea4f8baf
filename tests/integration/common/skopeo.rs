//! skopeo, the real client: `skopeo copy docker://… dir:…`, then checks
//! that what arrived has the upstream's digests.

use super::images::Image;
use super::{require_tool, sha256_hex};
use std::path::Path;
use std::process::{Command, Output};

/// `skopeo copy` from `src` (a `docker://` reference) into a `dir:` at `dest`.
/// Runs on a blocking thread: the mirror under test shares this runtime.
pub async fn copy(src: &str, dest: &Path, extra: &[&str]) -> Output {
    let bin = require_tool("skopeo");
    let mut args: Vec<String> = vec!["--insecure-policy".into(), "copy".into(), "--src-tls-verify=false".into(), "--retry-times=0".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(src.into());
    args.push(format!("dir:{}", dest.display()));
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(bin).args(&args).env("HOME", &home_path).env("XDG_RUNTIME_DIR", &home_path).output().expect("run skopeo");
        drop(home);
        out
    })
    .await
    .unwrap()
}

/// Like [`copy`], and fails the test with skopeo's message when it fails.
pub async fn copy_ok(src: &str, dest: &Path, extra: &[&str]) {
    let out = copy(src, dest, extra).await;
    assert!(out.status.success(), "skopeo copy {src} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The digest of the manifest skopeo stored, as `sha256:<hex>`.
pub fn manifest_digest(dir: &Path) -> String {
    format!("sha256:{}", sha256_hex(&std::fs::read(dir.join("manifest.json")).unwrap()))
}

/// Checks that a `dir:` copy of `img` holds the upstream's exact bytes:
/// the top manifest, every child manifest when `all`, and the blobs.
pub fn assert_same(dir: &Path, img: &Image, all: bool) {
    assert_eq!(manifest_digest(dir), img.top.digest, "manifest of {}:{} differs from the upstream's", img.repo, img.tag);
    if all {
        for c in &img.children {
            let hex = c.digest.strip_prefix("sha256:").unwrap();
            let b = std::fs::read(dir.join(format!("{hex}.manifest.json")))
                .unwrap_or_else(|e| panic!("child manifest {} missing: {e}", c.digest));
            assert_eq!(format!("sha256:{}", sha256_hex(&b)), c.digest);
        }
    }
    let wanted: Vec<_> = if img.children.is_empty() || all { img.blobs.iter().collect() } else { vec![] };
    for b in wanted {
        let hex = b.digest.strip_prefix("sha256:").unwrap();
        let got = std::fs::read(dir.join(hex)).unwrap_or_else(|e| panic!("blob {} missing from the copy: {e}", b.digest));
        assert_eq!(got.len(), b.bytes.len());
        assert_eq!(sha256_hex(&got), hex);
    }
}
