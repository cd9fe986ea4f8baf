//! Wrong bytes from the upstream never become visible: the client's
//! response fails, nothing is stored, and the next pull after the fault
//! clears succeeds.

use crate::common::fake::{BlobSpec, Fake};
use crate::common::images::{tiny_manifest, OCI_MANIFEST};
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::{accept_all, client, digest_of, files_under, images::random_bytes, wait_until};
use bytes::Bytes;
use regmirror::oci::Digest;
use std::time::Duration;

/// The path a blob has in the store (the layout is documented in `store/fs.rs`).
pub fn stored_path(m: &TestMirror, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    m.root().join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Waits until no download of `digest` is in flight.
pub async fn fill_done(m: &TestMirror, digest: &str) {
    let d: Digest = digest.parse().unwrap();
    wait_until("the download to end", Duration::from_secs(30), || m.mirror.fill_readers(&d).is_none()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_with_wrong_bytes_is_never_stored_and_heals() {
    let fake = Fake::start().await;
    let good = Bytes::from(random_bytes(9, 700_000));
    let digest = digest_of(&good);
    let mut bad = good.to_vec();
    bad[350_000] ^= 0xff;
    fake.add_blob(&digest, BlobSpec::new(bad));
    let m = TestMirror::start(&upstream_toml("docker.io", &fake.url())).await;
    let url = format!("{}/v2/library/app/blobs/{digest}", m.url());

    let r = client().get(&url).send().await.unwrap();
    // The headers may already be out; the body must not complete.
    if r.status() == 200 {
        let body = r.bytes().await;
        assert!(body.is_err(), "a blob with the wrong digest was delivered whole");
    } else {
        assert!(r.status().is_server_error(), "{}", r.status());
    }
    fill_done(&m, &digest).await;
    assert!(!stored_path(&m, &digest).exists(), "wrong bytes reached the store");
    assert!(files_under(&m.root().join("tmp")).is_empty(), "a temp file was left behind");

    // The upstream heals: the next pull succeeds.
    fake.add_blob(&digest, BlobSpec::new(good.clone()));
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), good);
    fill_done(&m, &digest).await;
    assert_eq!(std::fs::read(stored_path(&m, &digest)).unwrap(), good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_with_wrong_bytes_is_refused() {
    let fake = Fake::start().await;
    let real = tiny_manifest('1');
    let digest = digest_of(&real);
    let mut other = real.to_vec();
    other.push(b' ');
    fake.add_manifest("library/app", &digest, OCI_MANIFEST, Bytes::from(other));
    let m = TestMirror::start(&upstream_toml("docker.io", &fake.url())).await;
    let r = accept_all(client().get(format!("{}/v2/library/app/manifests/{digest}", m.url()))).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("digest"));
    assert!(!stored_path(&m, &digest).exists());
    // Fixed upstream: served with the exact bytes.
    fake.add_manifest("library/app", &digest, OCI_MANIFEST, real.clone());
    let r = accept_all(client().get(format!("{}/v2/library/app/manifests/{digest}", m.url()))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), real);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream_and_a_blob_redirect_to_another_host() {
    // The registry wants Basic credentials and sends blobs to a "CDN".
    let registry = Fake::start().await;
    let cdn = Fake::start().await;
    registry.require_basic("lab", "labpass");
    registry.redirect_blobs_to(&cdn.url());
    let data = Bytes::from(random_bytes(5, 200_000));
    let digest = digest_of(&data);
    cdn.add_blob(&digest, BlobSpec::new(data.clone()));
    let toml = format!("{}username = \"lab\"\npassword = \"labpass\"\n", upstream_toml("docker.io", &registry.url()));
    let m = TestMirror::start(&toml).await;
    let r = client().get(format!("{}/v2/library/app/blobs/{digest}", m.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), data);
    let reg_log = registry.log();
    assert!(reg_log.iter().any(|l| l.contains("/blobs/") && l.contains("auth=yes")), "Basic credentials sent to the registry: {reg_log:?}");
    let cdn_log = cdn.log();
    assert_eq!(cdn_log.len(), 1, "{cdn_log:?}");
    assert!(cdn_log[0].contains("auth=no"), "Authorization leaked to the redirect target: {cdn_log:?}");
    fill_done(&m, &digest).await;
    assert!(stored_path(&m, &digest).exists());

    // Without credentials the mirror says what to configure.
    let anon = TestMirror::start(&upstream_toml("docker.io", &registry.url())).await;
    let r = accept_all(client().get(format!("{}/v2/library/app/manifests/1", anon.url()))).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("username and password"), "{body}");
}
