//! The upstream fault matrix: for each fault, what the client receives (a
//! clean OCI error, or success through a resume), that nothing corrupt or
//! partial is stored, that no temp file is left, and that the next pull
//! after the fault clears succeeds. Run with `--nocapture` to see the table.

use crate::common::fake::{BlobSpec, Fake, RawFault};
use crate::common::images::{random_bytes, Blob, OCI_MANIFEST};
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::{accept_all, client, files_under};
use crate::faults::{fill_done, stored_path};
use bytes::Bytes;
use std::time::Duration;

fn toml(url: &str) -> String {
    upstream_toml("docker.io", url)
        .replace("header_timeout = \"5s\"", "header_timeout = \"1s\"")
        .replace("read_timeout = \"5s\"", "read_timeout = \"1s\"")
}

/// What a client saw for a blob: "200 complete", "200 then cut", or the status and OCI code.
async fn saw_blob(m: &TestMirror, b: &Blob) -> String {
    let r = client().get(format!("{}/v2/library/app/blobs/{}", m.url(), b.digest)).send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        return match r.bytes().await {
            Ok(got) if got == b.bytes => "200 complete".into(),
            Ok(_) => "200 WRONG BYTES".into(),
            Err(_) => "200 then cut".into(),
        };
    }
    let body = r.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not an OCI error body: {body}"));
    format!("{status} {}", v["errors"][0]["code"].as_str().unwrap_or("?"))
}

async fn saw_manifest(m: &TestMirror, reference: &str) -> String {
    let r = accept_all(client().get(format!("{}/v2/library/app/manifests/{reference}", m.url()))).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    if status == 200 {
        return "200 complete".into();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not an OCI error body: {body}"));
    format!("{status} {}", v["errors"][0]["code"].as_str().unwrap_or("?"))
}

struct Matrix(Vec<String>);

impl Matrix {
    /// Checks the store after a fault and records the row.
    async fn row(&mut self, fault: &str, saw: &str, m: &TestMirror, b: Option<&Blob>, expect: &[&str]) {
        if let Some(b) = b {
            fill_done(m, &b.digest).await;
        }
        let stored = b.map(|b| stored_path(m, &b.digest).exists()).unwrap_or(false);
        let temp = files_under(&m.root().join("tmp"));
        assert!(expect.iter().any(|e| saw.starts_with(e)), "{fault}: the client saw {saw:?}, expected one of {expect:?}");
        assert!(temp.is_empty(), "{fault}: temp files left: {temp:?}");
        if let Some(b) = b {
            if saw.starts_with("200 complete") {
                assert_eq!(std::fs::read(stored_path(m, &b.digest)).unwrap(), b.bytes, "{fault}: stored bytes differ");
            } else {
                assert!(!stored, "{fault}: a failed download was stored");
            }
        }
        self.0.push(format!("| {fault} | {saw} | {} |", if stored { "the verified blob" } else { "nothing" }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_fault_matrix() {
    let mut mx = Matrix(vec!["| fault | client saw | store holds |".into(), "|---|---|---|".into()]);
    let blob = || Blob::new(random_bytes(rand_seed(), 1536 * 1024 + 321));

    // Connection cut inside the body, at many offsets: resumed with Range.
    for at in [1u64, 1000, 768 * 1024, 1536 * 1024 + 320] {
        let fake = Fake::start().await;
        let b = blob();
        fake.add_blob(&b.digest, BlobSpec { cut_at: Some(at), cuts: 1, ..BlobSpec::new(b.bytes.clone()) });
        let m = TestMirror::start(&toml(&fake.url())).await;
        let saw = saw_blob(&m, &b).await;
        mx.row(&format!("reset after {at} body bytes"), &saw, &m, Some(&b), &["200 complete"]).await;
    }
    // Truncated with a Content-Length and no Range support: cannot resume.
    {
        let fake = Fake::start().await;
        let b = blob();
        fake.add_blob(&b.digest, BlobSpec { cut_at: Some(700_000), cuts: 1, ranges: false, ..BlobSpec::new(b.bytes.clone()) });
        let m = TestMirror::start(&toml(&fake.url())).await;
        let saw = saw_blob(&m, &b).await;
        mx.row("truncated body, Content-Length, no Range support", &saw, &m, Some(&b), &["200 then cut", "503"]).await;
        assert_eq!(saw_blob(&m, &b).await, "200 complete", "after the fault cleared");
    }
    // Truncated without a Content-Length (chunked): resumed.
    {
        let fake = Fake::start().await;
        let b = blob();
        fake.add_blob(&b.digest, BlobSpec { cut_at: Some(500_000), cuts: 1, no_length: true, ..BlobSpec::new(b.bytes.clone()) });
        let m = TestMirror::start(&toml(&fake.url())).await;
        let saw = saw_blob(&m, &b).await;
        mx.row("truncated chunked body (no Content-Length)", &saw, &m, Some(&b), &["200 complete"]).await;
    }
    // Wrong bytes.
    {
        let fake = Fake::start().await;
        let b = blob();
        let mut bad = b.bytes.to_vec();
        bad[1000] ^= 1;
        fake.add_blob(&b.digest, BlobSpec::new(bad));
        let m = TestMirror::start(&toml(&fake.url())).await;
        let saw = saw_blob(&m, &b).await;
        mx.row("wrong bytes", &saw, &m, Some(&b), &["200 then cut", "502"]).await;
        fake.add_blob(&b.digest, BlobSpec::new(b.bytes.clone()));
        assert_eq!(saw_blob(&m, &b).await, "200 complete", "after the fault cleared");
    }
    // A stall in the middle of a body: the idle timeout, then a resume.
    {
        let fake = Fake::start().await;
        let b = blob();
        fake.add_blob(&b.digest, BlobSpec { hold_at: Some(600_000), cuts: 1, stall_first: true, ..BlobSpec::new(b.bytes.clone()) });
        let m = TestMirror::start(&toml(&fake.url())).await;
        let saw = saw_blob(&m, &b).await;
        mx.row("stall mid-body (read_timeout 1s)", &saw, &m, Some(&b), &["200 complete"]).await;
    }
    // Error statuses, 429 with Retry-After, a redirect loop.
    for (name, spec_fn, expect) in [
        ("500", (|s: BlobSpec| BlobSpec { status: Some(500), cuts: 1, ..s }) as fn(BlobSpec) -> BlobSpec, "503 UNAVAILABLE"),
        ("502", |s| BlobSpec { status: Some(502), cuts: 1, ..s }, "503 UNAVAILABLE"),
        ("503", |s| BlobSpec { status: Some(503), cuts: 1, ..s }, "503 UNAVAILABLE"),
        ("429 with Retry-After: 1", |s| BlobSpec { status: Some(429), cuts: 1, ..s }, "503 UNAVAILABLE"),
        ("redirect loop", |s| BlobSpec { loop_redirect: true, ..s }, "503 UNAVAILABLE"),
    ] {
        let fake = Fake::start().await;
        let b = blob();
        fake.add_blob(&b.digest, spec_fn(BlobSpec::new(b.bytes.clone())));
        let m = TestMirror::start(&toml(&fake.url())).await;
        let saw = saw_blob(&m, &b).await;
        mx.row(name, &saw, &m, Some(&b), &[expect, "502"]).await;
        fake.add_blob(&b.digest, BlobSpec::new(b.bytes.clone()));
        // A 429 is honoured for its Retry-After: bounded retries until it passes.
        let mut last = String::new();
        for _ in 0..100 {
            last = saw_blob(&m, &b).await;
            if last == "200 complete" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last, "200 complete", "{name}: after the fault cleared");
    }
    // 401 for every credential (wrong password): no loop, a clear 403.
    {
        let fake = Fake::start().await;
        let b = blob();
        fake.add_blob(&b.digest, BlobSpec::new(b.bytes.clone()));
        fake.require_basic("lab", "other");
        let m = TestMirror::start(&format!("{}username = \"lab\"\npassword = \"labpass\"\n", toml(&fake.url()))).await;
        let saw = saw_blob(&m, &b).await;
        mx.row("401 loop (credentials refused)", &saw, &m, Some(&b), &["403 DENIED"]).await;
        assert!(fake.count("/blobs/") <= 2, "the mirror looped on 401: {:?}", fake.log());
        fake.require_basic("lab", "labpass");
        assert_eq!(saw_blob(&m, &b).await, "200 complete", "after the fault cleared");
    }
    // Token endpoint down, then answering garbage.
    {
        let fake = Fake::start().await;
        let b = blob();
        fake.add_blob(&b.digest, BlobSpec::new(b.bytes.clone()));
        let dead = crate::common::free_port();
        fake.require_bearer(Some(&format!("http://127.0.0.1:{dead}/token")), "");
        let m = TestMirror::start(&toml(&fake.url())).await;
        let saw = saw_blob(&m, &b).await;
        mx.row("token endpoint down", &saw, &m, Some(&b), &["503 UNAVAILABLE"]).await;
        fake.require_bearer(Some(&format!("{}/token", fake.url())), "<html>not a token</html>");
        let saw = saw_blob(&m, &b).await;
        mx.row("token endpoint answers garbage", &saw, &m, Some(&b), &["502"]).await;
        fake.require_bearer(Some(&format!("{}/token", fake.url())), r#"{"token":"good-token","expires_in":300}"#);
        assert_eq!(saw_blob(&m, &b).await, "200 complete", "after the fault cleared");
    }
    // Below HTTP: a reset inside the status line or headers, a stall before
    // any header, oversized headers.
    {
        let raw = RawFault::start().await;
        let b = blob();
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", b.bytes.len());
        let full: Vec<u8> = [head.as_bytes(), &b.bytes].concat();
        let m = TestMirror::start(&toml(&raw.url())).await;
        for at in [0usize, 9, 40, head.len() - 2] {
            raw.set(full.clone(), Some(at), false);
            let saw = saw_blob(&m, &b).await;
            mx.row(&format!("reset after {at} bytes of the response head"), &saw, &m, Some(&b), &["503 UNAVAILABLE", "502"]).await;
        }
        raw.set(full.clone(), None, true);
        let saw = saw_blob(&m, &b).await;
        mx.row("stall before the headers (header_timeout 1s)", &saw, &m, Some(&b), &["503 UNAVAILABLE"]).await;
        let huge = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n", "x".repeat(2 * 1024 * 1024));
        raw.set(huge.into_bytes(), None, false);
        let saw = saw_blob(&m, &b).await;
        mx.row("oversized response headers (2 MiB)", &saw, &m, Some(&b), &["503 UNAVAILABLE", "502"]).await;
        raw.set(full.clone(), None, false);
        assert_eq!(saw_blob(&m, &b).await, "200 complete", "after the faults cleared");
    }
    // A manifest over the 4 MiB limit.
    {
        let fake = Fake::start().await;
        let pad = "x".repeat(5 * 1024 * 1024);
        let huge = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","annotations":{{"pad":"{pad}"}},"config":{{"digest":"sha256:{}"}},"layers":[]}}"#,
            "3".repeat(64)
        ));
        fake.add_manifest("library/app", "big", OCI_MANIFEST, huge);
        let m = TestMirror::start(&toml(&fake.url())).await;
        let saw = saw_manifest(&m, "big").await;
        mx.row("manifest over 4 MiB", &saw, &m, None, &["502"]).await;
        let ok = crate::common::images::tiny_manifest('3');
        fake.add_manifest("library/app", "big", OCI_MANIFEST, ok);
        assert_eq!(saw_manifest(&m, "big").await, "200 complete", "after the fault cleared");
    }
    eprintln!("\n{}\n", mx.0.join("\n"));
}

fn rand_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(9000);
    N.fetch_add(1, Ordering::Relaxed)
}
