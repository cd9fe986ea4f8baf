//! Pulls through regmirror with skopeo, compared byte for byte with the
//! upstream's; then served from the cache, also with the upstream gone.

use crate::common::images::Catalog;
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::registry::Registry;
use crate::common::relay::Relay;
use crate::common::skopeo::{assert_same, copy, copy_ok, manifest_digest};
use crate::common::token::{PASSWORD, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_by_tag_digest_and_all_then_from_cache_then_offline() {
    let cat = Catalog::get();
    let mut reg = Registry::start().await;
    for img in cat.public() {
        reg.push(img).await;
    }
    let relay = Relay::start(reg.url()).await;
    let m = TestMirror::start(&upstream_toml("docker.io", &relay.url())).await;
    let out = tempfile::tempdir().unwrap();
    let dest = |n: &str| out.path().join(n);

    // By tag, each media type; single-platform images are compared whole.
    for img in [&cat.alpine, &cat.alpine_docker, &cat.big] {
        let d = dest(&format!("{}-{}", img.repo.replace('/', "_"), img.tag));
        copy_ok(&m.docker_ref(&format!("{}:{}", img.repo, img.tag)), &d, &[]).await;
        assert_same(&d, img, false);
    }
    // Multi-arch: by tag skopeo picks this machine's platform (amd64)...
    for img in [&cat.multi_oci, &cat.multi_docker] {
        let d = dest(&format!("one-{}", img.tag));
        copy_ok(&m.docker_ref(&format!("{}:{}", img.repo, img.tag)), &d, &[]).await;
        assert_eq!(manifest_digest(&d), img.children[0].digest, "amd64 manifest of {}", img.tag);
        // ...and with --all it copies the index and every platform.
        let d = dest(&format!("all-{}", img.tag));
        copy_ok(&m.docker_ref(&format!("{}:{}", img.repo, img.tag)), &d, &["--all"]).await;
        assert_same(&d, img, true);
    }
    // By digest, and through the short name of an official image.
    let d = dest("by-digest");
    copy_ok(&m.docker_ref(&format!("library/alpine@{}", cat.alpine.top.digest)), &d, &[]).await;
    assert_same(&d, &cat.alpine, false);
    let d = dest("short-name");
    copy_ok(&m.docker_ref("alpine:3.19"), &d, &[]).await;
    assert_same(&d, &cat.alpine, false);
    assert!(relay.count("/v2/library/alpine/") > 0, "official images are fetched under library/: {:?}", relay.log());
    assert_eq!(relay.count("/v2/alpine/"), 0);

    // Everything again: not one blob request reaches the upstream.
    relay.clear();
    for img in cat.public() {
        let d = dest(&format!("again-{}-{}", img.repo.replace('/', "_"), img.tag));
        copy_ok(&m.docker_ref(&format!("{}:{}", img.repo, img.tag)), &d, &["--all"]).await;
        assert_same(&d, img, true);
    }
    assert_eq!(relay.count("/blobs/"), 0, "warm pulls went upstream: {:?}", relay.log());

    // The upstream gone: what was pulled still pulls, by tag and by digest.
    reg.stop();
    for img in cat.public() {
        let d = dest(&format!("offline-{}-{}", img.repo.replace('/', "_"), img.tag));
        copy_ok(&m.docker_ref(&format!("{}:{}", img.repo, img.tag)), &d, &["--all"]).await;
        assert_same(&d, img, true);
    }
    let d = dest("offline-digest");
    copy_ok(&m.docker_ref(&format!("library/big@{}", cat.big.top.digest)), &d, &[]).await;
    assert_same(&d, &cat.big, false);
    // Nothing half-written is left in the store.
    assert!(crate::common::files_under(&m.root().join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_upstream_anonymous_and_with_credentials() {
    let cat = Catalog::get();
    let reg = Registry::start_with_token_auth().await;
    reg.push(&cat.alpine).await;
    reg.push(&cat.multi_oci).await;
    reg.push(&cat.private).await;
    let issued_before = reg.token_server().unwrap().issued.load(std::sync::atomic::Ordering::SeqCst);
    let out = tempfile::tempdir().unwrap();

    // Anonymous: public images pull, the private one is refused.
    let anon = TestMirror::start(&upstream_toml("docker.io", &reg.url())).await;
    let d = out.path().join("anon");
    copy_ok(&anon.docker_ref("library/alpine:3.19"), &d, &[]).await;
    assert_same(&d, &cat.alpine, false);
    let d = out.path().join("anon-all");
    copy_ok(&anon.docker_ref("library/multi:oci"), &d, &["--all"]).await;
    assert_same(&d, &cat.multi_oci, true);
    let r = copy(&anon.docker_ref("private/secret:1"), &out.path().join("anon-private"), &[]).await;
    assert!(!r.status.success(), "an anonymous mirror pulled a private image");
    let issued = reg.token_server().unwrap().issued.load(std::sync::atomic::Ordering::SeqCst) - issued_before;
    // Tokens are cached per scope: far fewer than the requests made.
    assert!((1..=6).contains(&issued), "{issued} tokens for two repositories");

    // With the upstream's credentials, the private image pulls too.
    let toml = format!("{}username = \"{USER}\"\npassword = \"{PASSWORD}\"\n", upstream_toml("docker.io", &reg.url()));
    let authed = TestMirror::start(&toml).await;
    let d = out.path().join("private");
    copy_ok(&authed.docker_ref(&format!("private/secret@{}", cat.private.top.digest)), &d, &[]).await;
    assert_same(&d, &cat.private, false);
    let d = out.path().join("private-tag");
    copy_ok(&authed.docker_ref("private/secret:1"), &d, &[]).await;
    assert_same(&d, &cat.private, false);

    // Wrong credentials: a clear refusal, not a hang or a 500.
    let toml = format!("{}username = \"{USER}\"\npassword = \"wrong\"\n", upstream_toml("docker.io", &reg.url()));
    let wrong = TestMirror::start(&toml).await;
    let r = crate::common::accept_all(crate::common::client().get(format!("{}/v2/private/secret/manifests/1", wrong.url())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("DENIED") && body.contains("credentials"), "{body}");
    assert!(!body.contains("wrong"), "the password leaked into an error body: {body}");
}
