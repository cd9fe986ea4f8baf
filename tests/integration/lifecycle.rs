//! Cache lifecycle: fresh and stale tags, serving through outages, offline
//! mode, the disk cap with whole-image LRU eviction and pins, idle
//! eviction, `regmirror gc`, and repair at start. Time is driven through
//! the mirror's manual clock: nothing here sleeps.

use crate::common::images::{layer, random_bytes, single, Catalog, Image};
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::registry::Registry;
use crate::common::relay::{Mode, Relay};
use crate::common::skopeo::{assert_same, copy, copy_ok};
use crate::common::{accept_all, client, digest_of, files_under};
use regmirror::clock::Clock;
use std::sync::Arc;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);

async fn get_tag(m: &TestMirror, repo: &str, tag: &str) -> reqwest::Response {
    accept_all(client().get(format!("{}/v2/{repo}/manifests/{tag}", m.url()))).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_tags_stay_local_stale_ones_send_one_head_and_follow_a_repoint() {
    let cat = Catalog::get();
    let reg = Registry::start().await;
    reg.push(&cat.alpine).await;
    reg.push(&cat.alpine_docker).await;
    let relay = Relay::start(reg.url()).await;
    let m = TestMirror::start(&upstream_toml("docker.io", &relay.url())).await;

    let r = get_tag(&m, "library/alpine", "3.19").await;
    assert_eq!(r.headers()["docker-content-digest"], cat.alpine.top.digest.as_str());
    assert_eq!(relay.count("GET /v2/library/alpine/manifests/3.19"), 1);
    // Fresh: no upstream request at all.
    relay.clear();
    get_tag(&m, "library/alpine", "3.19").await;
    assert_eq!(relay.log(), Vec::<String>::new());
    // Stale: exactly one HEAD, and the same digest keeps the cached bytes.
    m.clock.advance(6 * MIN);
    let r = get_tag(&m, "library/alpine", "3.19").await;
    assert_eq!(r.bytes().await.unwrap(), cat.alpine.top.bytes);
    assert_eq!(relay.log(), vec!["HEAD /v2/library/alpine/manifests/3.19".to_string()]);
    // Fresh again after the HEAD confirmed it.
    relay.clear();
    get_tag(&m, "library/alpine", "3.19").await;
    assert!(relay.log().is_empty());

    // Re-pointed upstream: still the old digest while fresh, the new one after the TTL.
    reg.tag("library/alpine", "3.19", &cat.alpine_docker.top).await;
    let r = get_tag(&m, "library/alpine", "3.19").await;
    assert_eq!(r.headers()["docker-content-digest"], cat.alpine.top.digest.as_str());
    m.clock.advance(6 * MIN);
    relay.clear();
    let r = get_tag(&m, "library/alpine", "3.19").await;
    assert_eq!(r.headers()["docker-content-digest"], cat.alpine_docker.top.digest.as_str());
    assert_eq!(r.bytes().await.unwrap(), cat.alpine_docker.top.bytes);
    assert_eq!(relay.count("HEAD "), 1, "{:?}", relay.log());
    assert_eq!(relay.count("GET /v2/library/alpine/manifests/3.19"), 1, "{:?}", relay.log());

    // A digest reference never goes upstream, however old.
    m.clock.advance(Duration::from_secs(86_400 * 365));
    relay.clear();
    let r = get_tag(&m, "library/alpine", &cat.alpine.top.digest).await;
    assert_eq!(r.status(), 200);
    assert!(relay.log().is_empty(), "{:?}", relay.log());
}

async fn assert_stale(m: &TestMirror, img: &Image, what: &str) {
    let r = get_tag(m, &img.repo, &img.tag).await;
    assert_eq!(r.status(), 200, "{what}: cached tag not served");
    assert_eq!(r.headers().get("warning").map(|v| v.to_str().unwrap()), Some("110 - \"response is stale\""), "{what}");
    assert_eq!(r.bytes().await.unwrap(), img.top.bytes, "{what}");
    let r = get_tag(m, &img.repo, "never-fetched").await;
    assert_eq!(r.status(), 503, "{what}: an uncached tag must say the upstream is unavailable");
    assert!(r.text().await.unwrap().contains("UNAVAILABLE"));
    let r = client().get(format!("{}/v2/{}/tags/list", m.url(), img.repo)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{what}: tags/list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_serve_stale_tags_and_503_for_the_rest() {
    let cat = Catalog::get();
    let mut reg = Registry::start().await;
    reg.push(&cat.alpine).await;
    let relay = Relay::start(reg.url()).await;
    let toml = upstream_toml("docker.io", &relay.url()).replace("header_timeout = \"5s\"", "header_timeout = \"1s\"");
    let m = TestMirror::start(&toml).await;
    assert_eq!(get_tag(&m, "library/alpine", "3.19").await.status(), 200);

    for (mode, what) in [(Mode::Status(503, None), "503"), (Mode::Status(502, None), "502"), (Mode::Hang, "a hanging upstream")] {
        m.clock.advance(6 * MIN);
        relay.set_mode(mode);
        assert_stale(&m, &cat.alpine, what).await;
    }
    // 429: served stale, and the Retry-After is honoured: no more requests.
    m.clock.advance(6 * MIN);
    relay.set_mode(Mode::Status(429, Some(600)));
    assert_stale(&m, &cat.alpine, "429").await;
    relay.clear();
    relay.set_mode(Mode::Pass);
    m.clock.advance(6 * MIN);
    assert_stale(&m, &cat.alpine, "429 remembered").await;
    assert!(relay.log().is_empty(), "the mirror kept asking a rate-limited upstream: {:?}", relay.log());

    // Refused connections: a mirror straight on the registry, then the registry stopped.
    let direct = TestMirror::start(&upstream_toml("docker.io", &reg.url())).await;
    assert_eq!(get_tag(&direct, "library/alpine", "3.19").await.status(), 200);
    reg.stop();
    direct.clock.advance(6 * MIN);
    assert_stale(&direct, &cat.alpine, "refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mode_makes_no_upstream_connection() {
    let cat = Catalog::get();
    let reg = Registry::start().await;
    reg.push(&cat.alpine).await;
    reg.push(&cat.multi_oci).await;
    let relay = Relay::start(reg.url()).await;
    let online = TestMirror::start(&upstream_toml("docker.io", &relay.url())).await;
    let out = tempfile::tempdir().unwrap();
    copy_ok(&online.docker_ref("library/alpine:3.19"), &out.path().join("a"), &[]).await;
    let dir = online.stop().await;

    relay.clear();
    let toml = format!("offline = true\n{}", upstream_toml("docker.io", &relay.url()));
    let m = TestMirror::start_in(dir, &toml, Clock::manual(1_800_000_000_000)).await;
    let d = out.path().join("b");
    copy_ok(&m.docker_ref("library/alpine:3.19"), &d, &[]).await;
    assert_same(&d, &cat.alpine, false);
    let r = get_tag(&m, "library/multi", "oci").await;
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    assert!(body.contains("MANIFEST_UNKNOWN") && body.contains("offline"), "{body}");
    assert_eq!(relay.log(), Vec::<String>::new(), "an offline mirror contacted the upstream");
}

/// Five images of about 1.2 MiB: one unique 1 MiB layer each, and one
/// 200 KiB layer that all of them share.
fn capped_images() -> Vec<Image> {
    let shared = layer("shared/lib.bin", &random_bytes(1000, 200 * 1024));
    (1..=5)
        .map(|i| {
            let unique = layer("data/own.bin", &random_bytes(2000 + i, 1024 * 1024));
            single(&format!("library/img{i}"), "1", true, 3000 + i, 0, &[unique, shared.clone()])
        })
        .collect()
}

fn stored(m_root: &std::path::Path, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    m_root.join("blobs/sha256").join(&hex[..2]).join(hex).is_file()
}

fn store_bytes(root: &std::path::Path) -> u64 {
    files_under(&root.join("blobs")).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

/// Every object of `img` is in the store (`true`), or none of its own is.
fn whole(root: &std::path::Path, img: &Image, shared: &str) -> bool {
    let own: Vec<bool> =
        img.blobs.iter().filter(|b| b.digest != shared).map(|b| stored(root, &b.digest)).chain([stored(root, &img.top.digest)]).collect();
    assert!(own.iter().all(|x| *x) || own.iter().all(|x| !*x), "{} is half evicted: {own:?}", img.repo);
    own[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_store_evicts_whole_images_least_recent_first_and_keeps_pins() {
    let imgs = capped_images();
    let shared = imgs[0].blobs.last().unwrap().digest.clone();
    let mut reg = Registry::start().await;
    for i in &imgs {
        reg.push(i).await;
    }
    let cap = 3 * 1024 * 1024;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let toml = format!(
        "[cache]\ntag_ttl = \"1h\"\npin = [\"img1:*\"]\n{}\n[storage]\nmax_size = \"3MiB\"\nroot = \"{}\"\n",
        upstream_toml("docker.io", &reg.url()),
        dir.path().display()
    );
    let m = TestMirror::start_full(dir.clone(), &toml, Clock::manual(1_700_000_000_000)).await;
    let out = tempfile::tempdir().unwrap();
    for (n, img) in imgs.iter().enumerate() {
        m.clock.advance(MIN);
        copy_ok(&m.docker_ref(&format!("{}:1", img.repo)), &out.path().join(format!("p{n}")), &[]).await;
        m.mirror.sweep(false).await.unwrap();
        assert!(store_bytes(m.root()) <= cap, "over the cap after pulling {}: {}", img.repo, store_bytes(m.root()));
    }
    let kept: Vec<bool> = imgs.iter().map(|i| whole(m.root(), i, &shared)).collect();
    assert_eq!(kept, vec![true, false, false, false, true], "img1 pinned, img5 newest, the rest evicted whole");
    assert!(stored(m.root(), &shared), "a blob shared with a remaining image was evicted");

    // What remains pulls completely with the upstream gone; the rest does not.
    reg.stop();
    for (n, img) in [&imgs[0], &imgs[4]].into_iter().enumerate() {
        let d = out.path().join(format!("after{n}"));
        copy_ok(&m.docker_ref(&format!("{}:1", img.repo)), &d, &[]).await;
        assert_same(&d, img, false);
    }
    assert!(!copy(&m.docker_ref("library/img3:1"), &out.path().join("gone"), &[]).await.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_idle_past_max_idle_are_evicted() {
    let imgs = capped_images();
    let shared = imgs[0].blobs.last().unwrap().digest.clone();
    let reg = Registry::start().await;
    reg.push(&imgs[0]).await;
    reg.push(&imgs[1]).await;
    let toml = format!("[cache]\nmax_idle = \"1d\"\n{}", upstream_toml("docker.io", &reg.url()));
    let m = TestMirror::start(&toml).await;
    let out = tempfile::tempdir().unwrap();
    copy_ok(&m.docker_ref("library/img1:1"), &out.path().join("1"), &[]).await;
    copy_ok(&m.docker_ref("library/img2:1"), &out.path().join("2"), &[]).await;
    m.clock.advance(12 * 60 * MIN);
    copy_ok(&m.docker_ref("library/img2:1"), &out.path().join("2b"), &[]).await;
    m.clock.advance(13 * 60 * MIN);
    let report = m.mirror.sweep(false).await.unwrap();
    assert_eq!(report.plan.images.len(), 1, "{report}");
    assert!(!whole(m.root(), &imgs[0], &shared) && whole(m.root(), &imgs[1], &shared));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_command_reports_then_frees() {
    let imgs = capped_images();
    let shared = imgs[0].blobs.last().unwrap().digest.clone();
    let reg = Registry::start().await;
    for i in &imgs[..3] {
        reg.push(i).await;
    }
    let m = TestMirror::start(&upstream_toml("docker.io", &reg.url())).await;
    let out = tempfile::tempdir().unwrap();
    for (n, img) in imgs[..3].iter().enumerate() {
        m.clock.advance(MIN);
        copy_ok(&m.docker_ref(&format!("{}:1", img.repo)), &out.path().join(format!("{n}")), &[]).await;
    }
    let dir = m.stop().await;
    let before = store_bytes(dir.path());
    let cfg = dir.path().join("gc.toml");
    std::fs::write(&cfg, format!("[storage]\nroot = \"{}\"\nmax_size = \"3MiB\"\n", dir.path().display())).unwrap();
    let gc = |dry: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_regmirror"));
        c.args(["gc", "--config"]).arg(&cfg);
        if dry {
            c.arg("--dry-run");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let dry = gc(true);
    assert!(dry.contains("would evict docker.io/library/img1:1") && !dry.contains("img3"), "{dry}");
    assert_eq!(store_bytes(dir.path()), before, "--dry-run changed the store");
    let real = gc(false);
    assert!(real.contains("evicted docker.io/library/img1:1") && real.contains("freed 1 image"), "{real}");
    assert!(!whole(dir.path(), &imgs[0], &shared) && whole(dir.path(), &imgs[2], &shared));
    assert!(store_bytes(dir.path()) <= 3 * 1024 * 1024);
    let ls = std::process::Command::new(env!("CARGO_BIN_EXE_regmirror")).args(["ls", "--config"]).arg(&cfg).output().unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains("library/img2") && ls.contains("library/img3") && !ls.contains("library/img1"), "{ls}");
    eprintln!("$ regmirror gc --dry-run\n{dry}\n$ regmirror gc\n{real}\n$ regmirror ls\n{ls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything_and_repairs_a_crash() {
    let cat = Catalog::get();
    let mut reg = Registry::start().await;
    reg.push(&cat.alpine).await;
    reg.push(&cat.big).await;
    let m = TestMirror::start(&upstream_toml("docker.io", &reg.url())).await;
    let out = tempfile::tempdir().unwrap();
    copy_ok(&m.docker_ref("library/alpine:3.19"), &out.path().join("a"), &[]).await;
    copy_ok(&m.docker_ref("library/big:latest"), &out.path().join("b"), &[]).await;
    let dir = m.stop().await;

    // A crash's leftovers: a temp file, a row whose file is gone, a file without a row.
    std::fs::write(dir.path().join("tmp/4242-0-0.spool"), b"half a download").unwrap();
    let lost = &cat.big.blobs.last().unwrap().digest;
    let hex = lost.strip_prefix("sha256:").unwrap();
    std::fs::remove_file(dir.path().join("blobs/sha256").join(&hex[..2]).join(hex)).unwrap();
    let orphan = random_bytes(31337, 5000);
    let od = digest_of(&orphan);
    let ohex = od.strip_prefix("sha256:").unwrap();
    std::fs::create_dir_all(dir.path().join("blobs/sha256").join(&ohex[..2])).unwrap();
    std::fs::write(dir.path().join("blobs/sha256").join(&ohex[..2]).join(ohex), &orphan).unwrap();

    let m = TestMirror::start_in(dir, &upstream_toml("docker.io", &reg.url()), Clock::manual(1_700_000_600_000)).await;
    assert_eq!((m.reconciled.temp_files_removed, m.reconciled.rows_forgotten, m.reconciled.files_adopted), (1, 1, 1));
    assert!(files_under(&m.root().join("tmp")).is_empty());
    // The lost layer comes back from the upstream; the rest was kept.
    let d = out.path().join("b2");
    copy_ok(&m.docker_ref("library/big:latest"), &d, &[]).await;
    assert_same(&d, &cat.big, false);
    reg.stop();
    let d = out.path().join("a2");
    copy_ok(&m.docker_ref("library/alpine:3.19"), &d, &[]).await;
    assert_same(&d, &cat.alpine, false);
    let r = client().get(format!("{}/v2/library/any/blobs/{od}", m.url())).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), orphan);
}
