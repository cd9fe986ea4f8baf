//! One upstream fetch per digest, streamed to every client as it arrives;
//! Range on cold blobs; resume after a cut; one manifest request for many
//! simultaneous pulls of a tag.

use crate::common::fake::{BlobSpec, Fake};
use crate::common::images::{random_bytes, tiny_manifest, OCI_MANIFEST};
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::{accept_all, client, digest_of, files_under, wait_until};
use crate::faults::{fill_done, stored_path};
use bytes::Bytes;
use regmirror::oci::Digest;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

async fn setup(spec: impl FnOnce(Bytes) -> BlobSpec) -> (Fake, TestMirror, Bytes, String) {
    let fake = Fake::start().await;
    let data = Bytes::from(random_bytes(42, 3 * MIB + 777));
    let digest = digest_of(&data);
    fake.add_blob(&digest, spec(data.clone()));
    let m = TestMirror::start(&upstream_toml("docker.io", &fake.url())).await;
    (fake, m, data, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_and_a_late_joiner_share_one_download() {
    let (fake, m, data, digest) = setup(|b| BlobSpec { hold_at: Some(MIB as u64), ..BlobSpec::new(b) }).await;
    let d: Digest = digest.parse().unwrap();
    let url = format!("{}/v2/library/app/blobs/{digest}", m.url());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { client().get(&url).send().await.unwrap() }));
    }
    wait_until("16 readers on one download", Duration::from_secs(20), || m.mirror.fill_readers(&d) == Some(16)).await;
    let mut responses = Vec::new();
    for t in tasks {
        responses.push(t.await.unwrap());
    }
    // A follower gets bytes while the upstream is still held mid-blob.
    let mut first = responses.pop().unwrap();
    let chunk = first.chunk().await.unwrap().expect("bytes before the download completed");
    assert!(!chunk.is_empty());
    assert_eq!(&data[..chunk.len()], &chunk[..]);
    // A late joiner, mid-download.
    let late = tokio::spawn({
        let url = url.clone();
        async move { client().get(&url).send().await.unwrap().bytes().await.unwrap() }
    });
    wait_until("the late joiner to attach", Duration::from_secs(20), || m.mirror.fill_readers(&d) == Some(17)).await;
    fake.open_gate();
    let mut rest = chunk.to_vec();
    while let Some(c) = first.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, data);
    for r in responses {
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap(), data);
    }
    assert_eq!(late.await.unwrap(), data);
    assert_eq!(fake.count(&format!("GET /v2/library/app/blobs/{digest}")), 1, "{:?}", fake.log());
    fill_done(&m, &digest).await;
    assert_eq!(std::fs::read(stored_path(&m, &digest)).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_a_cold_blob_is_answered_before_the_download_ends() {
    let (fake, m, data, digest) = setup(|b| BlobSpec { hold_at: Some(MIB as u64), ..BlobSpec::new(b) }).await;
    let url = format!("{}/v2/library/app/blobs/{digest}", m.url());
    let r = client().get(&url).header("range", "bytes=1000-1999").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 1000-1999/{}", data.len()).as_str());
    assert_eq!(r.bytes().await.unwrap(), data.slice(1000..2000));
    // Bytes past the held point wait for them, then arrive.
    let far = tokio::spawn({
        let url = url.clone();
        async move { client().get(&url).header("range", format!("bytes={}-", 2 * MIB)).send().await.unwrap() }
    });
    let d: Digest = digest.parse().unwrap();
    wait_until("the far range to wait on the download", Duration::from_secs(20), || m.mirror.fill_readers(&d) == Some(1)).await;
    fake.open_gate();
    let r = far.await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), data.slice(2 * MIB..));
    assert_eq!(fake.count("GET /v2/library/app/blobs/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_with_range() {
    let cut = (MIB + MIB / 2) as u64;
    let (fake, m, data, digest) = setup(|b| BlobSpec { cut_at: Some(cut), cuts: 1, ..BlobSpec::new(b) }).await;
    let r = client().get(format!("{}/v2/library/app/blobs/{digest}", m.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), data, "the client saw only a pause");
    fill_done(&m, &digest).await;
    let log = fake.log();
    assert_eq!(fake.count("GET /v2/library/app/blobs/"), 2, "{log:?}");
    // It resumes where its bytes ended (at most the cut: the fake's last
    // buffered bytes may be lost with the connection).
    let resumed_at: u64 = log[1]
        .split("range=bytes=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume: {log:?}"));
    assert!(resumed_at > 0 && resumed_at <= cut, "{log:?}");
    assert_eq!(std::fs::read(stored_path(&m, &digest)).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_that_cannot_resume_aborts_every_client() {
    let (fake, m, _data, digest) = setup(|b| BlobSpec { cut_at: Some(MIB as u64), cuts: 100, ranges: false, ..BlobSpec::new(b) }).await;
    let url = format!("{}/v2/library/app/blobs/{digest}", m.url());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let r = client().get(&url).send().await.unwrap();
            if r.status() != 200 {
                return Err(r.status().to_string());
            }
            r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_err(), "a client got a complete blob from a broken download");
    }
    fill_done(&m, &digest).await;
    assert!(!stored_path(&m, &digest).exists());
    assert!(files_under(&m.root().join("tmp")).is_empty());
    assert!(fake.count("GET /v2/library/app/blobs/") >= 2, "it tried to resume: {:?}", fake.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_abort_every_follower() {
    let (fake, m, data, digest) = setup(|b| {
        let mut bad = b.to_vec();
        bad[10] ^= 1;
        BlobSpec { hold_at: Some(MIB as u64), ..BlobSpec::new(bad) }
    })
    .await;
    let d: Digest = digest.parse().unwrap();
    let url = format!("{}/v2/library/app/blobs/{digest}", m.url());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = client().get(&url).send().await.unwrap();
            let mut n = 0usize;
            loop {
                match r.chunk().await {
                    Ok(Some(c)) => n += c.len(),
                    Ok(None) => return Ok(n),
                    Err(_) => return Err(n),
                }
            }
        }));
    }
    wait_until("4 readers", Duration::from_secs(20), || m.mirror.fill_readers(&d) == Some(4)).await;
    fake.open_gate();
    for t in tasks {
        let got = t.await.unwrap();
        assert!(got.is_err(), "a follower received {got:?} bytes of a wrong blob as a success");
        assert!(got.unwrap_err() < data.len());
    }
    fill_done(&m, &digest).await;
    assert!(!stored_path(&m, &digest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_pulls_of_one_tag_send_one_manifest_request() {
    let fake = Fake::start().await;
    let manifest = tiny_manifest('2');
    fake.add_manifest("library/alpine", "3.19", OCI_MANIFEST, manifest.clone());
    fake.hold_manifests(true);
    let m = TestMirror::start(&upstream_toml("docker.io", &fake.url())).await;
    let url = format!("{}/v2/library/alpine/manifests/3.19", m.url());
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { accept_all(client().get(&url)).send().await.unwrap() })
        })
        .collect();
    wait_until("32 requests waiting on the tag", Duration::from_secs(20), || m.mirror.tag_waiters() == 32).await;
    fake.hold_manifests(false);
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"], digest_of(&manifest).as_str());
        assert_eq!(r.bytes().await.unwrap(), manifest);
    }
    assert_eq!(fake.count("/manifests/3.19"), 1, "{:?}", fake.log());
}
