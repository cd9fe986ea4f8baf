//! `/metrics`, `/healthz` and `/readyz`, scraped and parsed across a cold
//! pull, a warm pull and an upstream error.

use crate::common::client;
use crate::common::fake::{BlobSpec, Fake};
use crate::common::images::{random_bytes, single, Blob};
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::skopeo::copy_ok;
use std::collections::HashMap;

/// `name{labels}` → value, from the text format.
async fn scrape(m: &TestMirror) -> HashMap<String, f64> {
    let r = client().get(format!("{}/metrics", m.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().contains("openmetrics-text"));
    let text = r.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap_or_else(|_| panic!("bad sample {l}")))
        })
        .collect()
}

fn get(s: &HashMap<String, f64>, k: &str) -> f64 {
    s.get(k).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_cold_and_warm_pulls_errors_and_the_rate_limit() {
    let fake = Fake::start().await;
    let img = single("library/app", "1", true, 314, 3, &[]);
    fake.add_image(&img, None);
    fake.set_ratelimit(42, 100);
    let m = TestMirror::start(&upstream_toml("docker.io", &fake.url())).await;
    let bytes: f64 = img.total_blob_bytes() as f64;
    let n = img.blobs.len() as f64;
    for (path, want) in [("/healthz", 200), ("/readyz", 200)] {
        assert_eq!(client().get(format!("{}{path}", m.url())).send().await.unwrap().status(), want);
    }
    let out = tempfile::tempdir().unwrap();

    copy_ok(&m.docker_ref("library/app:1"), &out.path().join("cold"), &[]).await;
    for b in &img.blobs {
        crate::faults::fill_done(&m, &b.digest).await;
    }
    let cold = scrape(&m).await;
    assert_eq!(get(&cold, r#"regmirror_cache_requests_total{kind="manifest",result="miss"}"#), 1.0);
    assert_eq!(get(&cold, r#"regmirror_cache_requests_total{kind="blob",result="miss"}"#), n);
    assert!(get(&cold, r#"regmirror_upstream_fetched_bytes_total{upstream="docker.io"}"#) >= bytes);
    assert!(get(&cold, r#"regmirror_served_bytes_total{source="upstream"}"#) >= bytes);
    assert_eq!(get(&cold, r#"regmirror_upstream_ratelimit_remaining{upstream="docker.io"}"#), 42.0);
    assert_eq!(get(&cold, r#"regmirror_upstream_ratelimit_limit{upstream="docker.io"}"#), 100.0);
    assert_eq!(get(&cold, "regmirror_store_images"), 1.0);
    assert_eq!(get(&cold, "regmirror_store_blobs"), n);
    assert!(get(&cold, "regmirror_store_bytes") >= bytes);
    assert!(get(&cold, r#"regmirror_upstream_request_duration_seconds_count{upstream="docker.io"}"#) >= n + 1.0);

    // Warm: hits, bytes from the cache, nothing more fetched upstream.
    copy_ok(&m.docker_ref("library/app:1"), &out.path().join("warm"), &[]).await;
    let warm = scrape(&m).await;
    assert_eq!(get(&warm, r#"regmirror_cache_requests_total{kind="blob",result="hit"}"#), n);
    assert_eq!(get(&warm, r#"regmirror_cache_requests_total{kind="manifest",result="hit"}"#), 1.0);
    assert!(get(&warm, r#"regmirror_served_bytes_total{source="cache"}"#) >= bytes);
    assert_eq!(
        get(&warm, r#"regmirror_upstream_fetched_bytes_total{upstream="docker.io"}"#),
        get(&cold, r#"regmirror_upstream_fetched_bytes_total{upstream="docker.io"}"#)
    );

    // The budget moves with the upstream's header; an error is counted by kind.
    fake.set_ratelimit(7, 100);
    let broken = Blob::new(random_bytes(99, 1000));
    fake.add_blob(&broken.digest, BlobSpec { status: Some(503), cuts: 1, ..BlobSpec::new(broken.bytes.clone()) });
    let r = client().get(format!("{}/v2/library/app/blobs/{}", m.url(), broken.digest)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let after = scrape(&m).await;
    assert_eq!(get(&after, r#"regmirror_upstream_ratelimit_remaining{upstream="docker.io"}"#), 7.0);
    assert_eq!(get(&after, r#"regmirror_upstream_errors_total{upstream="docker.io",kind="unavailable"}"#), 1.0);
    assert_eq!(get(&after, r#"regmirror_http_requests_total{endpoint="blob",method="GET",status="503"}"#), 1.0);
    let text = client().get(format!("{}/metrics", m.url())).send().await.unwrap().text().await.unwrap();
    eprintln!("{}", text.lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket")).collect::<Vec<_>>().join("\n"));
}
