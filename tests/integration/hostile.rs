//! Hostile input: properties of the parsers that stand between a request
//! and the store, and raw requests no well-behaved client would send.

use crate::common::fake::Fake;
use crate::common::mirror::{upstream_toml, TestMirror};
use proptest::prelude::*;
use regmirror::http::{parse_range, route, Route};
use regmirror::oci::{Digest, Reference, RepoName, Tag};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What may appear in a name or digest that reaches the store.
fn path_safe(s: &str) -> bool {
    !s.contains("..") && !s.contains('\\') && !s.contains('\0') && !s.contains('%') && !s.starts_with('/')
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn routes_never_panic_and_only_slice_the_path(path in "(/v2/)?[a-zA-Z0-9._/%:\\\\-]{0,300}", write in any::<bool>()) {
        let m = if write { http::Method::PUT } else { http::Method::GET };
        match route(&m, &path) {
            Route::Manifest { name, reference } => prop_assert!(path.contains(name) && path.ends_with(reference)),
            Route::Blob { name, digest } => prop_assert!(path.contains(name) && path.ends_with(digest)),
            Route::Tags { name } => prop_assert!(path.contains(name)),
            _ => {}
        }
    }

    #[test]
    fn accepted_names_are_grammatical_and_path_safe(s in "[a-z0-9._/%\\\\-]{0,80}") {
        if let Ok(n) = RepoName::parse(&s) {
            prop_assert!(path_safe(n.as_str()) && !n.as_str().ends_with('/') && n.as_str().len() <= 255);
            prop_assert!(n.as_str().split('/').all(|c| !c.is_empty() && c.as_bytes()[0].is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn accepted_digests_are_64_lowercase_hex(s in "(sha256|sha512|md5|SHA256)?:?[0-9a-fA-Z./%-]{0,130}") {
        if let Ok(d) = s.parse::<Digest>() {
            prop_assert_eq!(d.hex().len(), 64);
            prop_assert!(d.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn tags_and_references_never_panic(s in "\\PC{0,140}") {
        if let Ok(t) = Tag::parse(&s) {
            prop_assert!(t.as_str().len() <= 128 && path_safe(t.as_str()) && !t.as_str().contains('/'));
        }
        let _ = Reference::parse(&s);
    }

    #[test]
    fn ranges_resolve_inside_the_blob(h in "(bytes=)?[0-9]{0,21}-?[0-9]{0,21},?", size in 0u64..1_000_000) {
        if let Some(r) = parse_range(&h) {
            if let Ok(x) = r.resolve(size) {
                prop_assert!(x.start < x.end && x.end <= size);
            }
        }
    }
}

/// Sends raw bytes, returns the status line (or what the server did).
fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(req);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.lines().next().unwrap_or("<closed without an answer>").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_oversized_requests_never_reach_the_upstream_or_the_disk() {
    let fake = Fake::start().await;
    let m = TestMirror::start(&upstream_toml("docker.io", &fake.url())).await;
    let d0 = "0".repeat(64);
    let paths = [
        format!("/v2/../../etc/passwd/blobs/sha256:{d0}"),
        format!("/v2/a/%2e%2e/%2e%2e/etc/blobs/sha256:{d0}"),
        "/v2/a%2f..%2f..%2fetc/manifests/latest".to_string(),
        "/v2/a\\..\\b/manifests/latest".to_string(),
        format!("/v2/library/alpine/blobs/sha256:..%2f..%2f{}", "0".repeat(58)),
        format!("/v2/library/alpine/blobs/sha256%3a{d0}"),
        "/v2/library/alpine/manifests/..%2f..%2fetc".to_string(),
        format!("/v2/{}/manifests/latest", "a/".repeat(200)),
        format!("/v2/library/alpine/manifests/{}", "t".repeat(5000)),
    ];
    let addr = m.addr;
    for p in &paths {
        let line = tokio::task::spawn_blocking({
            let req = format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            move || raw(addr, req.as_bytes())
        })
        .await
        .unwrap();
        assert!(line.contains(" 400 ") || line.contains(" 404 ") || line.contains(" 414 "), "{p}: {line}");
    }
    // A NUL byte and a header block over the limit.
    let nul = tokio::task::spawn_blocking(move || raw(addr, b"GET /v2/a\0b/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n")).await.unwrap();
    assert!(nul.contains(" 400 ") || nul.starts_with('<'), "{nul}");
    let big = tokio::task::spawn_blocking(move || {
        let req = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(200_000));
        raw(addr, req.as_bytes())
    })
    .await
    .unwrap();
    assert!(big.contains(" 431 ") || big.starts_with('<'), "an oversized header block was accepted: {big}");
    assert_eq!(fake.log(), Vec::<String>::new(), "hostile paths reached the upstream");
    let entries: Vec<_> = crate::common::files_under(m.root()).into_iter().filter(|p| !p.to_string_lossy().contains("index.db")).collect();
    assert!(entries.is_empty(), "{entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_timed_out_and_excess_connections_get_503() {
    let fake = Fake::start().await;
    let toml = format!("[server]\nheader_read_timeout = \"1s\"\nmax_connections = 2\n{}", upstream_toml("docker.io", &fake.url()));
    let m = TestMirror::start(&toml).await;
    let addr = m.addr;
    let (timed_out, busy) = tokio::task::spawn_blocking(move || {
        // Two slow clients hold both connections, sending half a request.
        let mut slow: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for s in &mut slow {
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        // The third is told the mirror is busy, once the two hold their
        // places (until then it is served and closes: bounded retries).
        let mut busy = String::new();
        for _ in 0..200 {
            busy = raw(addr, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            if busy.contains(" 503 ") {
                break;
            }
        }
        // The slow ones are cut after header_read_timeout (bounded read).
        let started = std::time::Instant::now();
        let mut buf = [0u8; 1024];
        let n = slow[0].read(&mut buf).unwrap_or(0);
        let line = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned();
        (started.elapsed() < Duration::from_secs(9) && (n == 0 || line.contains("408")), busy)
    })
    .await
    .unwrap();
    assert!(busy.contains(" 503 "), "{busy}");
    assert!(timed_out, "a slow client kept its connection past header_read_timeout");
    // Once they are gone, requests are served again.
    let r = crate::common::client().get(format!("{}/v2/", m.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A listener that counts the connections it accepts.
async fn trap() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    (port, n, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_makes_the_mirror_connect_anywhere_else() {
    use crate::common::{accept_all, client};
    let (port, hits, _t) = trap().await;
    let fake = Fake::start().await;
    let m = TestMirror::start(&upstream_toml("docker.io", &fake.url())).await;
    let c = client();
    let trap_host = format!("127.0.0.1:{port}");
    let attempts = [
        format!("{}/v2/library/x/manifests/1?ns={trap_host}", m.url()),
        format!("{}/v2/{trap_host}/library/x/manifests/1", m.url()),
        format!("{}/v2/library/x/manifests/1?ns=http://{trap_host}/", m.url()),
        format!("{}/v2/http:%2f%2f{trap_host}/x/manifests/1", m.url()),
        format!("{}/v2/library/x/blobs/sha256:{}?ns={trap_host}", m.url(), "1".repeat(64)),
    ];
    for u in &attempts {
        let r = accept_all(c.get(u)).header("host", &trap_host).header("x-forwarded-host", &trap_host).send().await.unwrap();
        assert!(r.status().is_client_error(), "{u}: {}", r.status());
    }
    // Headers that name another host are ignored: the request goes to the configured upstream.
    let r = accept_all(c.get(format!("{}/v2/library/x/manifests/1", m.url())))
        .header("host", &trap_host)
        .header("x-forwarded-host", &trap_host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // An upstream that redirects a manifest request elsewhere is refused.
    fake.redirect_manifests_to(&format!("http://{trap_host}"));
    let r = accept_all(c.get(format!("{}/v2/library/x/manifests/2", m.url()))).send().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the mirror connected to a host nobody configured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_tokens_never_reach_the_log() {
    use crate::common::images::Catalog;
    use crate::common::mirror::MirrorProcess;
    use crate::common::registry::Registry;
    use crate::common::token::{PASSWORD, USER};
    let cat = Catalog::get();
    let reg = Registry::start_with_token_auth().await;
    reg.push(&cat.private).await;
    let dir = tempfile::tempdir().unwrap();
    let upstream = format!("{}username = \"{USER}\"\npassword = \"{PASSWORD}\"\n", upstream_toml("docker.io", &reg.url()));
    let (config, port) = crate::common::mirror::write_config(dir.path(), "", &upstream);
    let mut p = MirrorProcess::spawn(&config, port, &[("RUST_LOG", "trace")]).await;
    crate::common::skopeo::copy_ok(&format!("docker://127.0.0.1:{port}/private/secret:1"), &dir.path().join("out"), &[]).await;
    p.terminate();
    let log = p.log_text();
    assert!(log.contains("request"), "no request lines were logged");
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let token = reg.token_server().unwrap().mint("private/secret", &["pull"]);
    let token_head = &token[..token.find('.').unwrap()];
    for secret in [PASSWORD, basic.as_str(), token_head, "Bearer ey"] {
        assert!(!log.contains(secret), "{secret:?} appeared in the log at RUST_LOG=trace");
    }
}
