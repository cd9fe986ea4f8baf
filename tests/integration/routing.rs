//! One mirror, two registries: routing by containerd's `?ns=`, by a path
//! prefix, or to the default upstream; the `library/` rule for docker.io
//! only; one store shared across upstreams; tags kept per upstream.

use crate::common::images::Catalog;
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::registry::Registry;
use crate::common::relay::Relay;
use crate::common::skopeo::{assert_same, copy_ok};
use crate::common::token::{PASSWORD, USER};
use crate::common::{accept_all, client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registries_by_ns_prefix_and_default() {
    let cat = Catalog::get();
    let hub = Registry::start().await;
    hub.push(&cat.alpine).await;
    let ghcr = Registry::start_with_token_auth().await;
    ghcr.push(&cat.private).await;
    let mut short = cat.alpine.clone();
    short.repo = "alpine".into();
    ghcr.push(&short).await;
    let (hub_relay, ghcr_relay) = (Relay::start(hub.url()).await, Relay::start(ghcr.url()).await);
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("ghcr.password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let toml = format!(
        "{}{}username = \"{USER}\"\npassword_file = \"{}\"\n",
        upstream_toml("docker.io", &hub_relay.url()),
        upstream_toml("ghcr.io", &ghcr_relay.url()),
        pw.display()
    );
    let m = TestMirror::start(&toml).await;
    let out = tempfile::tempdir().unwrap();

    // Default upstream, with Docker Hub's library/ rule.
    copy_ok(&m.docker_ref("alpine:3.19"), &out.path().join("hub"), &[]).await;
    assert_same(&out.path().join("hub"), &cat.alpine, false);
    assert!(hub_relay.count("/v2/library/alpine/manifests/3.19") == 1);
    // A path prefix names the second registry (credentials from password_file).
    copy_ok(&m.docker_ref("ghcr.io/private/secret:1"), &out.path().join("ghcr"), &[]).await;
    assert_same(&out.path().join("ghcr"), &cat.private, false);
    assert_eq!(hub_relay.count("private/secret"), 0);
    // containerd's ?ns=: routed there, echoed in OCI-Namespace; no library/ rule off Docker Hub.
    let r = accept_all(client().get(format!("{}/v2/alpine/manifests/3.19?ns=ghcr.io", m.url()))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["oci-namespace"], "ghcr.io");
    // (Twice: the 401 challenge, then the request with its token.)
    assert!(ghcr_relay.count("/v2/alpine/manifests/3.19") >= 1, "{:?}", ghcr_relay.log());
    assert_eq!(ghcr_relay.count("library/"), 0);
    let r = accept_all(client().get(format!("{}/v2/library/alpine/manifests/3.19?ns=docker.io", m.url()))).send().await.unwrap();
    assert_eq!(r.headers()["oci-namespace"], "docker.io");

    // The store is shared: the same layers through ghcr.io are not fetched again.
    ghcr_relay.clear();
    for b in &cat.alpine.blobs {
        let r = client().get(format!("{}/v2/alpine/blobs/{}?ns=ghcr.io", m.url(), b.digest)).send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), b.bytes);
    }
    assert_eq!(ghcr_relay.count("/blobs/"), 0, "{:?}", ghcr_relay.log());

    // Credentials a client sends for Docker Hub (the Docker daemon forwards
    // them, moby#30880) do not break an anonymous mirror, nor go upstream.
    hub_relay.clear();
    let r = accept_all(client().get(format!("{}/v2/library/alpine/manifests/{}", m.url(), cat.alpine.top.digest)))
        .header("authorization", "Basic dXNlcjpodWItcGFzc3dvcmQ=")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(format!("{}/v2/", m.url())).header("authorization", "Bearer some-hub-token").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Tags are per upstream: the same digest under two registries.
    let rows = m.mirror.images().await.unwrap();
    let names: Vec<String> =
        rows.iter().map(|r| format!("{}/{}:{}", r.registry, r.repository, r.tag.clone().unwrap_or_default())).collect();
    assert!(
        names.contains(&"docker.io/library/alpine:3.19".to_string()) && names.contains(&"ghcr.io/alpine:3.19".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"ghcr.io/private/secret:1".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_guards_pulls() {
    use crate::common::fake::Fake;
    use crate::common::images::single;
    let fake = Fake::start().await;
    let img = single("library/app", "1", true, 808, 2, &[]);
    fake.add_image(&img, None);
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("ci:{}\n", bcrypt::hash("s3cret", 4).unwrap())).unwrap();
    let toml = format!("[server]\nhtpasswd = \"{}\"\n{}", htpasswd.display(), upstream_toml("docker.io", &fake.url()));
    let m = TestMirror::start(&toml).await;

    let r = client().get(format!("{}/v2/", m.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"regmirror\"");
    assert!(r.text().await.unwrap().contains("UNAUTHORIZED"));
    let r = client().get(format!("{}/v2/", m.url())).basic_auth("ci", Some("wrong")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(client().get(format!("{}/healthz", m.url())).send().await.unwrap().status(), 200);

    let out = tempfile::tempdir().unwrap();
    let r = crate::common::skopeo::copy(&m.docker_ref("library/app:1"), &out.path().join("anon"), &[]).await;
    assert!(!r.status.success(), "pulled without credentials");
    assert_eq!(fake.count("/manifests/"), 0, "an unauthenticated request reached the upstream");
    copy_ok(&m.docker_ref("library/app:1"), &out.path().join("ci"), &["--src-creds", "ci:s3cret"]).await;
    assert_same(&out.path().join("ci"), &img, false);
}
