//! A full disk: the store on a small tmpfs of its own (mounted by the test,
//! as root, removed after). A blob that cannot fit gets a clear 503; one
//! that fills the disk mid-download is cut and leaves nothing; cached
//! content is still served; the mirror recovers by itself when space returns.

use crate::common::fake::{BlobSpec, Fake};
use crate::common::images::{random_bytes, Blob};
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::{client, files_under, wait_until};
use regmirror::clock::Clock;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A size-limited tmpfs, unmounted when dropped.
struct SmallDisk {
    dir: Arc<tempfile::TempDir>,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()).status().unwrap();
        assert!(st.success(), "mounting a tmpfs needs root: run scripts/test as root (CI does)");
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn stored(root: &std::path::Path, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    root.join("blobs/sha256").join(&hex[..2]).join(hex).is_file()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_clearly_keeps_the_cache_and_recovers() {
    let disk = SmallDisk::mount("8m");
    let fake = Fake::start().await;
    let small = Blob::new(random_bytes(1, 200_000));
    let huge = Blob::new(random_bytes(2, 12 * 1024 * 1024));
    let mid = Blob::new(random_bytes(3, 3 * 1024 * 1024));
    fake.add_blob(&small.digest, BlobSpec::new(small.bytes.clone()));
    fake.add_blob(&huge.digest, BlobSpec::new(huge.bytes.clone()));
    fake.add_blob(&mid.digest, BlobSpec { hold_at: Some(512 * 1024), ..BlobSpec::new(mid.bytes.clone()) });
    let m = TestMirror::start_in(disk.dir.clone(), &upstream_toml("docker.io", &fake.url()), Clock::manual(1_700_000_000_000)).await;
    let url = |b: &Blob| format!("{}/v2/library/app/blobs/{}", m.url(), b.digest);
    let c = client();

    let r = c.get(url(&small)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), small.bytes);
    crate::faults::fill_done(&m, &small.digest).await;

    // Larger than the disk: refused before a byte is sent.
    let r = c.get(url(&huge)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("disk is full"), "{body}");

    // Fits when it starts, but the disk fills during the download.
    let filler = m.root().join("filler");
    let download = tokio::spawn({
        let u = url(&mid);
        async move {
            let r = client().get(u).send().await.map_err(|e| e.to_string())?;
            r.bytes().await.map_err(|e| e.to_string())
        }
    });
    let d: regmirror::oci::Digest = mid.digest.parse().unwrap();
    wait_until("the download to start", Duration::from_secs(20), || m.mirror.fill_readers(&d) == Some(1)).await;
    // Take (nearly) all the space that is left.
    let _ = std::fs::write(&filler, vec![7u8; 8 * 1024 * 1024]);
    fake.open_gate();
    assert!(download.await.unwrap().is_err(), "a download that hit a full disk looked complete");
    crate::faults::fill_done(&m, &mid.digest).await;
    assert!(!stored(m.root(), &mid.digest));
    assert!(files_under(&m.root().join("tmp")).is_empty(), "the partial file was left on the full disk");

    // Cached content is still served.
    let r = c.get(url(&small)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), small.bytes);

    // Space returns: the same pull now works, with no restart.
    std::fs::remove_file(&filler).unwrap();
    let r = c.get(url(&mid)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), mid.bytes);
    crate::faults::fill_done(&m, &mid.digest).await;
    assert!(stored(m.root(), &mid.digest));
    drop(m);
}
