//! Shared test machinery: real upstreams (Debian's `docker-registry`), a
//! token server, images built offline, a counting relay, a fault-injecting
//! fake upstream, the mirror in-process or as a process, and skopeo.
//!
//! Every server binds 127.0.0.1; every wait is bounded in count and time.

#![allow(dead_code)]

pub mod fake;
pub mod images;
pub mod mirror;
pub mod registry;
pub mod relay;
pub mod skopeo;
pub mod token;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A port that was free a moment ago, for servers we cannot hand a listener
/// (child processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// Fails the test with a clear message when a required tool is absent: the
/// test command installs them (`scripts/test`), so absence is an error.
pub fn require_tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/test, which installs it with apt-get");
}

/// Polls `url` until it answers any HTTP status, for at most `bound`.
pub async fn wait_http(url: &str, bound: Duration) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
    let deadline = Instant::now() + bound;
    for _ in 0..10_000 {
        if client.get(url).send().await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{url} did not answer within {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url} did not answer");
}

/// A plain HTTP client for tests: no redirects followed, no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

/// The full Accept list a real client sends.
pub const ACCEPT_ALL: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A request with every manifest type in separate Accept headers.
pub fn accept_all(mut rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    for a in ACCEPT_ALL {
        rb = rb.header("accept", a);
    }
    rb
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

pub fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Files under `dir` (recursively), for "nothing left behind" checks.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The response body of the in-process test servers.
pub type TestBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;

pub fn full(b: impl Into<bytes::Bytes>) -> TestBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn respond(status: u16, body: impl Into<bytes::Bytes>) -> http::Response<TestBody> {
    http::Response::builder().status(status).body(full(body)).unwrap()
}

/// Serves `handler` on 127.0.0.1:0 until the returned handle is dropped.
pub async fn serve<F, Fut>(handler: F) -> Server
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<TestBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, std::convert::Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
            });
        }
    });
    Server { addr, task }
}

/// An in-process server; stops accepting when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn url(&self) -> String {
        url(self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `cond` holds, checking every 5 ms for at most `bound`.
pub async fn wait_until(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {bound:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting for: {what}");
}
