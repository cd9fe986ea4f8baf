//! SQLite under pressure: a lock held by another process delays writes
//! without failing requests; a corrupt index is refused at start with a
//! clear message; an index rebuilt from the store serves pulls by digest.

use crate::common::fake::Fake;
use crate::common::images::{single, Catalog};
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::registry::Registry;
use crate::common::skopeo::{assert_same, copy_ok};
use crate::common::{accept_all, client, free_port, wait_until};
use regmirror::clock::Clock;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_index_delays_writes_without_failing_requests() {
    let fake = Fake::start().await;
    let img = single("library/app", "1", true, 42, 1, &[]);
    fake.add_image(&img, None);
    let m = TestMirror::start(&upstream_toml("docker.io", &fake.url())).await;
    // Another process takes the write lock (as `regmirror gc` may).
    let db = m.root().join("index.db");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(Duration::from_secs(30));
        c.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    // A cold manifest must be recorded before it is answered: it waits.
    let req = tokio::spawn({
        let url = format!("{}/v2/library/app/manifests/1", m.url());
        async move { accept_all(client().get(url)).send().await.unwrap() }
    });
    wait_until("the manifest to be fetched upstream", Duration::from_secs(20), || fake.count("/manifests/1") == 1).await;
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let r = req.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.top.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_index_is_refused_and_a_rebuilt_one_serves_digests() {
    let cat = Catalog::get();
    let mut reg = Registry::start().await;
    reg.push(&cat.alpine).await;
    reg.push(&cat.multi_docker).await;
    let m = TestMirror::start(&upstream_toml("docker.io", &reg.url())).await;
    let out = tempfile::tempdir().unwrap();
    copy_ok(&m.docker_ref("library/alpine:3.19"), &out.path().join("a"), &[]).await;
    copy_ok(&m.docker_ref("library/multi:docker"), &out.path().join("m"), &["--all"]).await;
    let dir = m.stop().await;
    reg.stop();

    // Corrupt: the binary refuses to start and says what to do.
    let db = dir.path().join("index.db");
    let saved = dir.path().join("index.db.saved");
    std::fs::rename(&db, &saved).unwrap();
    let _ = std::fs::remove_file(dir.path().join("index.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("index.db-shm"));
    std::fs::write(&db, vec![0x42u8; 16384]).unwrap();
    let config = dir.path().join("mirror.toml");
    std::fs::write(&config, format!("[server]\nlisten = \"127.0.0.1:{}\"\n[storage]\nroot = \"{}\"\n", free_port(), dir.path().display()))
        .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_regmirror")).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("index.db") && err.contains("move it away"), "{err}");

    // Rebuilt (the documented way: move it away and restart), offline.
    std::fs::remove_file(&db).unwrap();
    let toml = format!("offline = true\n{}", upstream_toml("docker.io", &reg.url()));
    let m = TestMirror::start_in(dir.clone(), &toml, Clock::manual(1_800_000_000_000)).await;
    assert!(m.reconciled.files_adopted > cat.alpine.blobs.len(), "{:?}", m.reconciled);
    let d = out.path().join("a2");
    copy_ok(&m.docker_ref(&format!("library/alpine@{}", cat.alpine.top.digest)), &d, &[]).await;
    assert_same(&d, &cat.alpine, false);
    let d = out.path().join("m2");
    copy_ok(&m.docker_ref(&format!("library/multi@{}", cat.multi_docker.top.digest)), &d, &["--all"]).await;
    assert_same(&d, &cat.multi_docker, true);
    // Tags are not in the store: they come back with the next online pull.
    let r = accept_all(client().get(format!("{}/v2/library/alpine/manifests/3.19", m.url()))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let report = m.mirror.verify().await.unwrap();
    assert!(report.problems.is_empty(), "{report}");
}
