//! What an operator watches, in the Prometheus/OpenMetrics text format at
//! `/metrics`: requests, cache hits and misses, bytes served from the cache
//! and fetched upstream, upstream latency, errors and Docker Hub's
//! rate-limit budget, downloads in flight and the clients sharing them, the
//! store's size and evictions. One [`Metrics`] per process, shared by the
//! layers that record into it; gauges that describe state (store size,
//! downloads in flight) are read when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `manifest` or `blob`.
    pub kind: String,
    /// `hit`, `miss` or `stale`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `cache` or `upstream`.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub upstream: String,
    /// `unavailable`, `rate_limited`, `denied`, `not_found`, `invalid`.
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub cache: Family<CacheLabels, Counter>,
    pub served_bytes: Family<SourceLabels, Counter>,
    pub upstream_bytes: Family<UpstreamLabels, Counter>,
    pub upstream_latency: Family<UpstreamLabels, Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub ratelimit_remaining: Family<UpstreamLabels, Gauge>,
    pub ratelimit_limit: Family<UpstreamLabels, Gauge>,
    pub downloads_in_flight: Gauge,
    pub download_clients: Gauge,
    pub store_bytes: Gauge<u64, AtomicU64>,
    pub store_blobs: Gauge,
    pub store_images: Gauge,
    pub evicted_images: Counter,
    pub evicted_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("regmirror");
        let m = Metrics {
            requests: Family::default(),
            cache: Family::default(),
            served_bytes: Family::default(),
            upstream_bytes: Family::default(),
            upstream_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 14))),
            upstream_errors: Family::default(),
            ratelimit_remaining: Family::default(),
            ratelimit_limit: Family::default(),
            downloads_in_flight: Gauge::default(),
            download_clients: Gauge::default(),
            store_bytes: Gauge::default(),
            store_blobs: Gauge::default(),
            store_images: Gauge::default(),
            evicted_images: Counter::default(),
            evicted_bytes: Counter::default(),
            registry: Registry::default(),
        };
        r.register("http_requests", "Requests answered, by endpoint, method and status", m.requests.clone());
        r.register("cache_requests", "Manifest and blob requests by cache result (hit, miss, stale)", m.cache.clone());
        r.register("served_bytes", "Bytes sent to clients, from the cache or as they arrived from upstream", m.served_bytes.clone());
        r.register("upstream_fetched_bytes", "Bytes fetched from each upstream", m.upstream_bytes.clone());
        r.register("upstream_request_duration_seconds", "Time to the response headers of upstream requests", m.upstream_latency.clone());
        r.register("upstream_errors", "Upstream requests that failed, by kind", m.upstream_errors.clone());
        r.register(
            "upstream_ratelimit_remaining",
            "The upstream's ratelimit-remaining header (Docker Hub pulls left)",
            m.ratelimit_remaining.clone(),
        );
        r.register("upstream_ratelimit_limit", "The upstream's ratelimit-limit header", m.ratelimit_limit.clone());
        r.register("downloads_in_flight", "Blob downloads from upstream in progress", m.downloads_in_flight.clone());
        r.register("download_clients", "Clients streaming from downloads in progress", m.download_clients.clone());
        r.register("store_bytes", "Bytes in the store (blobs and manifests)", m.store_bytes.clone());
        r.register("store_blobs", "Blobs in the store", m.store_blobs.clone());
        r.register("store_images", "Images in the store (manifests no other manifest references)", m.store_images.clone());
        r.register("evicted_images", "Images evicted to keep the store under its cap or max_idle", m.evicted_images.clone());
        r.register("evicted_bytes", "Bytes freed by eviction", m.evicted_bytes.clone());
        Metrics { registry: r, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn upstream(name: &str) -> UpstreamLabels {
        UpstreamLabels { upstream: name.to_owned() }
    }
}

/// The number in a `ratelimit-remaining: 20;w=21600` header.
pub fn ratelimit_value(v: &str) -> Option<i64> {
    v.split(';').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_parses_rate_limits() {
        let m = Metrics::new();
        m.requests.get_or_create(&RequestLabels { endpoint: "blob".into(), method: "GET".into(), status: "200".into() }).inc();
        let t = m.encode();
        assert!(t.contains("regmirror_http_requests_total{endpoint=\"blob\",method=\"GET\",status=\"200\"} 1"), "{t}");
        assert_eq!(ratelimit_value("100;w=21600"), Some(100));
        assert_eq!(ratelimit_value(" 7 "), Some(7));
        assert_eq!(ratelimit_value("x"), None);
    }
}
