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
        "{}repositories = [\"library/*\"]\n{}username = \"{USER}\"\npassword_file = \"{}\"\n",
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

    // Only the allowed repositories of an upstream are served.
    let r = accept_all(client().get(format!("{}/v2/someorg/app/manifests/1", m.url()))).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("DENIED"));
    assert_eq!(hub_relay.count("someorg"), 0);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_http2_and_htpasswd_for_skopeo_with_a_ca_file() {
    use crate::common::fake::Fake;
    use crate::common::images::single;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
    let fake = Fake::start().await;
    let img = single("library/app", "1", true, 707, 2, &[]);
    fake.add_image(&img, None);
    // A CA, and a certificate for 127.0.0.1 that it signs.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("ci:{}\n", bcrypt::hash("s3cret", 4).unwrap())).unwrap();
    let toml = format!(
        "[server]\nhtpasswd = \"{}\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        htpasswd.display(),
        dir.path().join("server.pem").display(),
        dir.path().join("server.key").display(),
        upstream_toml("docker.io", &fake.url())
    );
    let m = TestMirror::start(&toml).await;
    let https = format!("https://{}", m.addr);

    // HTTP/2 over TLS, verified against the CA.
    let c = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let r = c.get(format!("{https}/v2/")).basic_auth("ci", Some("s3cret")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // skopeo with TLS verification on, the CA in a cert dir, and credentials.
    let out = tempfile::tempdir().unwrap();
    let certs_arg = format!("--src-cert-dir={}", certs.display());
    let r =
        crate::common::skopeo::copy(&m.docker_ref("library/app:1"), &out.path().join("anon"), &[&certs_arg, "--src-tls-verify=true"]).await;
    assert!(!r.status.success(), "pulled over TLS without credentials");
    // Verification is really on: without the CA the certificate is refused.
    let r = crate::common::skopeo::copy(
        &m.docker_ref("library/app:1"),
        &out.path().join("noca"),
        &["--src-tls-verify=true", "--src-creds", "ci:s3cret"],
    )
    .await;
    assert!(!r.status.success(), "an unknown CA was accepted");
    copy_ok(&m.docker_ref("library/app:1"), &out.path().join("ci"), &[&certs_arg, "--src-tls-verify=true", "--src-creds", "ci:s3cret"])
        .await;
    assert_same(&out.path().join("ci"), &img, false);
    // Plain HTTP on the TLS port is not served.
    assert!(client().get(format!("{}/v2/", m.url())).send().await.is_err());
}
