//! Headers, Range answers, tag lists and error codes, as
//! `shared/PROTOCOL.md` describes them, against a real upstream.

use crate::common::images::{Catalog, DOCKER_MANIFEST, OCI_MANIFEST};
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::registry::Registry;
use crate::common::{accept_all, client};
use reqwest::StatusCode;

async fn error_code(r: reqwest::Response) -> (StatusCode, String) {
    let s = r.status();
    assert_eq!(r.headers().get("docker-distribution-api-version").map(|v| v.to_str().unwrap()), Some("registry/2.0"));
    let v = json(r).await;
    (s, v["errors"][0]["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_ranges_tags_and_errors() {
    let cat = Catalog::get();
    let mut reg = Registry::start().await;
    for img in cat.public() {
        reg.push(img).await;
    }
    let m = TestMirror::start(&upstream_toml("docker.io", &reg.url())).await;
    let c = client();
    let base = m.url();

    // /v2/
    let r = c.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");

    // Manifest HEAD and GET by tag: digest, length, type, ETag; bytes exact.
    let a = &cat.alpine;
    let url = format!("{base}/v2/library/alpine/manifests/3.19");
    let r = accept_all(c.head(&url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], a.top.digest.as_str());
    assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
    assert_eq!(r.headers()["content-length"], a.top.bytes.len().to_string().as_str());
    assert_eq!(r.headers()["etag"], format!("\"{}\"", a.top.digest).as_str());
    let r = accept_all(c.get(&url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), a.top.bytes);
    let r = accept_all(c.get(&url)).header("if-none-match", format!("\"{}\"", a.top.digest)).send().await.unwrap();
    assert_eq!(r.status(), 304);
    // By digest, the schema2 one keeps its type.
    let r = accept_all(c.get(format!("{base}/v2/library/alpine/manifests/{}", cat.alpine_docker.top.digest))).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], DOCKER_MANIFEST);
    assert_eq!(r.bytes().await.unwrap(), cat.alpine_docker.top.bytes);
    // A client that accepts only schema2 never gets the OCI manifest passed off as one.
    let r = c.get(&url).header("accept", DOCKER_MANIFEST).send().await.unwrap();
    assert_ne!(r.status(), 200, "an OCI manifest was served to a schema2-only client");

    // Blob: cold Range first (206 with the right bytes), then warm ranges.
    let big = cat.big.blobs.last().unwrap();
    let n = big.bytes.len() as u64;
    let burl = format!("{base}/v2/library/big/blobs/{}", big.digest);
    let r = c.get(&burl).header("range", "bytes=500-1499").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 500-1499/{n}").as_str());
    assert_eq!(r.headers()["content-length"], "1000");
    assert_eq!(r.bytes().await.unwrap(), big.bytes.slice(500..1500));
    // Let the download finish (a full GET waits for it), then ranges from the store.
    let r = c.get(&burl).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["docker-content-digest"], big.digest.as_str());
    assert_eq!(r.bytes().await.unwrap(), big.bytes);
    for (h, start, end) in [
        ("bytes=500-", 500, n),
        ("bytes=-500", n - 500, n),
        (&format!("bytes={}-{}", n - 10, n + 5000) as &str, n - 10, n),
        ("bytes=0-0", 0, 1),
    ] {
        let r = c.get(&burl).header("range", h).send().await.unwrap();
        assert_eq!(r.status(), 206, "{h}");
        assert_eq!(r.headers()["content-range"], format!("bytes {start}-{}/{n}", end - 1).as_str(), "{h}");
        assert_eq!(r.bytes().await.unwrap(), big.bytes.slice(start as usize..end as usize), "{h}");
    }
    for h in ["bytes=500-0", &format!("bytes={}-{}", n, n + 10) as &str] {
        let r = c.get(&burl).header("range", h).send().await.unwrap();
        assert_eq!(r.status(), 416, "{h}");
        assert_eq!(r.headers()["content-range"], format!("bytes */{n}").as_str());
    }
    let r = c.head(&burl).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], n.to_string().as_str());

    // tags/list: sorted, n, last, Link.
    let r = c.get(format!("{base}/v2/library/alpine/tags/list")).send().await.unwrap();
    let v = json(r).await;
    assert_eq!(v["tags"], serde_json::json!(["3.19", "3.19-docker"]));
    assert_eq!(v["name"], "library/alpine");
    let r = c.get(format!("{base}/v2/library/alpine/tags/list?n=1")).send().await.unwrap();
    assert_eq!(r.headers()["link"], "</v2/library/alpine/tags/list?n=1&last=3.19>; rel=\"next\"");
    let v = json(r).await;
    assert_eq!(v["tags"], serde_json::json!(["3.19"]));
    let r = c.get(format!("{base}/v2/library/alpine/tags/list?last=3.19")).send().await.unwrap();
    let v = json(r).await;
    assert_eq!(v["tags"], serde_json::json!(["3.19-docker"]));
    let r = c.get(format!("{base}/v2/library/alpine/tags/list?n=0")).send().await.unwrap();
    assert!(r.headers().get("link").is_none());
    let v = json(r).await;
    assert_eq!(v["tags"], serde_json::json!([]));

    // Errors: the right status and OCI code, never a 500.
    let d0 = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (accept_all(c.get(format!("{base}/v2/library/alpine/manifests/nope"))), 404, "MANIFEST_UNKNOWN"),
        (accept_all(c.get(format!("{base}/v2/library/alpine/manifests/{d0}"))), 404, "MANIFEST_UNKNOWN"),
        (c.get(format!("{base}/v2/library/alpine/blobs/{d0}")), 404, "BLOB_UNKNOWN"),
        (c.get(format!("{base}/v2/library/nothere/tags/list")), 404, "NAME_UNKNOWN"),
        (c.get(format!("{base}/v2/Library/Alpine/manifests/3.19")), 400, "NAME_INVALID"),
        (c.get(format!("{base}/v2/a..b/manifests/3.19")), 400, "NAME_INVALID"),
        (c.get(format!("{base}/v2/a%2f..%2fb/manifests/3.19")), 400, "NAME_INVALID"),
        (c.get(format!("{base}/v2/library/alpine/manifests/-bad")), 400, "TAG_INVALID"),
        (c.get(format!("{base}/v2/library/alpine/manifests/sha256:1234")), 400, "DIGEST_INVALID"),
        (c.get(format!("{base}/v2/library/alpine/blobs/sha256:{}", "Z".repeat(64))), 400, "DIGEST_INVALID"),
        (c.get(format!("{base}/v2/library/alpine/blobs/md5:abcd")), 400, "DIGEST_INVALID"),
        (c.put(format!("{base}/v2/library/alpine/manifests/3.19")).body("{}"), 405, "UNSUPPORTED"),
        (c.delete(format!("{base}/v2/library/alpine/blobs/{d0}")), 405, "UNSUPPORTED"),
        (c.post(format!("{base}/v2/library/alpine/blobs/uploads/")), 405, "UNSUPPORTED"),
        (c.get(format!("{base}/v2/library/alpine/manifests/3.19?ns=evil.example.com")), 400, "NAME_INVALID"),
    ];
    for (rb, status, code) in cases {
        let req = rb.build().unwrap();
        let what = format!("{} {}", req.method(), req.url());
        let (s, got) = error_code(c.execute(req).await.unwrap()).await;
        assert_eq!((s.as_u16(), got.as_str()), (status, code), "{what}");
    }

    // The upstream gone: tags/list comes from the index, manifests from the cache.
    reg.stop();
    let r = c.get(format!("{base}/v2/library/alpine/tags/list")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v = json(r).await;
    assert!(v["tags"].as_array().unwrap().iter().any(|t| t == "3.19"), "{v}");
    // A tag never fetched: 503, not a 404 that hides the outage.
    let (s, code) = error_code(accept_all(c.get(format!("{base}/v2/library/multi/manifests/never"))).send().await.unwrap()).await;
    assert_eq!((s.as_u16(), code.as_str()), (503, "UNAVAILABLE"));
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    let b = r.bytes().await.unwrap();
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b)))
}
