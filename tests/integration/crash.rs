//! Crash safety: regmirror is killed with SIGKILL while several cold
//! downloads are in flight, ten times over; after each restart
//! `regmirror verify` finds nothing wrong and every image pulls whole.

use crate::common::fake::Fake;
use crate::common::images::{layer, random_bytes, single, Image};
use crate::common::mirror::{upstream_toml, write_config, MirrorProcess};
use crate::common::skopeo::{assert_same, copy_ok};
use crate::common::{client, wait_until};
use std::time::Duration;

fn verify(config: &std::path::Path) -> (bool, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_regmirror")).args(["verify", "--config"]).arg(config).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_downloads_loses_nothing() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = write_config(dir.path(), "", &upstream_toml("docker.io", &fake.url()));
    let out = tempfile::tempdir().unwrap();
    let mut pulled: Vec<Image> = Vec::new();
    for round in 0..10u64 {
        // A new image each round, so its blobs are cold: two large layers
        // held at a different offset each time, and small ones.
        let big = |k: u64| layer(&format!("big{k}"), &random_bytes(round * 10 + k, 2 * 1024 * 1024 + 999 * round as usize));
        let img = single("library/app", &format!("r{round}"), round % 2 == 0, 500 + round, 2, &[big(1), big(2)]);
        fake.close_gate();
        fake.add_image(&img, Some(64 * 1024 * (round + 1)));
        let mut p = MirrorProcess::spawn(&config, port, &[]).await;
        let before = fake.count("/blobs/");
        let downloads: Vec<_> = img
            .blobs
            .iter()
            .map(|b| {
                let url = format!("http://127.0.0.1:{port}/v2/library/app/blobs/{}", b.digest);
                tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) })
            })
            .collect();
        let n = img.blobs.len();
        wait_until("every download to reach the upstream", Duration::from_secs(20), || fake.count("/blobs/") >= before + n).await;
        p.kill9();
        for d in downloads {
            let _ = d.await;
        }
        fake.open_gate();

        let p = MirrorProcess::spawn(&config, port, &[]).await;
        let (ok, report) = verify(&config);
        assert!(ok, "round {round}: verify found problems after a SIGKILL:\n{report}");
        assert!(crate::common::files_under(&dir.path().join("store/tmp")).is_empty(), "round {round}: temp files survived the restart");
        pulled.push(img);
        for (i, img) in pulled.iter().enumerate() {
            let d = out.path().join(format!("r{round}-{i}"));
            copy_ok(&format!("docker://127.0.0.1:{port}/{}:{}", img.repo, img.tag), &d, &[]).await;
            assert_same(&d, img, false);
        }
        drop(p);
    }
    let (ok, report) = verify(&config);
    assert!(ok && report.contains("0 problem(s)"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_corrupt_file_and_a_missing_one() {
    let fake = Fake::start().await;
    let img = single("library/app", "1", true, 77, 2, &[]);
    fake.add_image(&img, None);
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = write_config(dir.path(), "", &upstream_toml("docker.io", &fake.url()));
    let mut p = MirrorProcess::spawn(&config, port, &[]).await;
    copy_ok(&format!("docker://127.0.0.1:{port}/library/app:1"), &dir.path().join("copy"), &[]).await;
    p.terminate();
    assert!(verify(&config).0);
    let path = |d: &str| {
        let hex = d.strip_prefix("sha256:").unwrap();
        dir.path().join("store/blobs/sha256").join(&hex[..2]).join(hex)
    };
    let mut bytes = std::fs::read(path(&img.blobs[1].digest)).unwrap();
    bytes[0] ^= 1;
    std::fs::write(path(&img.blobs[1].digest), bytes).unwrap();
    std::fs::remove_file(path(&img.blobs[2].digest)).unwrap();
    let (ok, report) = verify(&config);
    assert!(!ok, "{report}");
    assert!(report.contains(&format!("{}: the file's content hashes to", img.blobs[1].digest)), "{report}");
    assert!(report.contains(&format!("{}: index row without a file", img.blobs[2].digest)), "{report}");
}

/// SIGTERM: new connections are refused, a download in flight may finish
/// within `server.shutdown_grace`, one that cannot is cut and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_within_the_grace_period_or_leaves_nothing() {
    use crate::common::images::Blob;
    let fake = Fake::start().await;
    for (grace, finishes) in [("1s", false), ("30s", true)] {
        let blob = Blob::new(random_bytes(if finishes { 1 } else { 2 }, 3 * 1024 * 1024));
        fake.close_gate();
        fake.add_blob(
            &blob.digest,
            crate::common::fake::BlobSpec { hold_at: Some(1024 * 1024), ..crate::common::fake::BlobSpec::new(blob.bytes.clone()) },
        );
        let dir = tempfile::tempdir().unwrap();
        let (config, port) = write_config(dir.path(), &format!("shutdown_grace = \"{grace}\""), &upstream_toml("docker.io", &fake.url()));
        let mut p = MirrorProcess::spawn(&config, port, &[]).await;
        let url = format!("http://127.0.0.1:{port}/v2/library/app/blobs/{}", blob.digest);
        let download = tokio::spawn(async move {
            let r = client().get(url).send().await.map_err(|e| e.to_string())?;
            r.bytes().await.map_err(|e| e.to_string())
        });
        let before = fake.count(&blob.digest);
        wait_until("the download to start", Duration::from_secs(20), || fake.count(&blob.digest) > before).await;
        p.sigterm();
        // The listener closes at once.
        wait_until("new connections to be refused", Duration::from_secs(5), || std::net::TcpStream::connect(("127.0.0.1", port)).is_err())
            .await;
        if finishes {
            fake.open_gate();
        }
        let status = p.wait_exit();
        assert!(status.success(), "{status:?}");
        let got = download.await.unwrap();
        let hex = blob.digest.strip_prefix("sha256:").unwrap();
        let stored = dir.path().join("store/blobs/sha256").join(&hex[..2]).join(hex);
        if finishes {
            assert_eq!(got.unwrap(), blob.bytes, "the download in flight was not allowed to finish");
            assert_eq!(std::fs::read(&stored).unwrap(), blob.bytes);
        } else {
            assert!(got.is_err(), "a cut download looked complete");
            assert!(!stored.exists());
        }
        assert!(crate::common::files_under(&dir.path().join("store/tmp")).is_empty(), "grace {grace}: a temp file was left behind");
    }
}
