//! An in-process fake upstream for faults a real registry cannot be made to
//! produce on demand: wrong bytes, a body held at an offset until the test
//! releases it, a connection cut at an offset, no Range support, a gate in
//! front of manifests. It logs every request line.

use super::{respond, serve, Server, TestBody};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How the fake serves one blob.
#[derive(Clone)]
pub struct BlobSpec {
    /// The bytes sent (may differ from what the digest says).
    pub bytes: Bytes,
    /// Stop after this many bytes until the gate opens.
    pub hold_at: Option<u64>,
    /// Cut the connection after this many bytes, on the first `cuts` requests.
    pub cut_at: Option<u64>,
    pub cuts: usize,
    /// Answer `Range` with 206; else ignore it and send 200 with everything.
    pub ranges: bool,
    /// Answer with this status and no body, on the first `cuts` requests.
    pub status: Option<u16>,
    /// Send no Content-Length (a chunked body).
    pub no_length: bool,
    /// Redirect blob requests to this same path (a redirect loop).
    pub loop_redirect: bool,
    /// Hold at `hold_at` on the first `cuts` requests only, whatever the
    /// gate (a stall that the mirror's idle timeout and resume get past).
    pub stall_first: bool,
}

impl BlobSpec {
    pub fn new(bytes: impl Into<Bytes>) -> BlobSpec {
        BlobSpec {
            bytes: bytes.into(),
            hold_at: None,
            cut_at: None,
            cuts: 0,
            ranges: true,
            status: None,
            no_length: false,
            loop_redirect: false,
            stall_first: false,
        }
    }
}

#[derive(Default)]
struct State {
    manifests: HashMap<String, (String, Bytes)>,
    blobs: HashMap<String, BlobSpec>,
    log: Vec<String>,
    /// Answer 401 with a Basic challenge unless this `Authorization` comes.
    require: Option<String>,
    /// Answer blob GETs with a 307 to this base URL (another server).
    redirect_blobs: Option<String>,
    /// Answer manifest requests with a 307 to this base URL.
    redirect_manifests: Option<String>,
    /// Demand a Bearer token from this realm; `/token` here answers `token_body`.
    bearer_realm: Option<String>,
    token_body: String,
    /// `ratelimit-remaining` and `ratelimit-limit` on every answer, as Docker Hub sends them.
    ratelimit: Option<(i64, i64)>,
}

pub struct Fake {
    server: Server,
    state: Arc<Mutex<State>>,
    /// Opens held blob bodies.
    gate: watch::Sender<bool>,
    /// While closed, manifest responses wait.
    manifest_gate: watch::Sender<bool>,
}

impl Fake {
    pub async fn start() -> Fake {
        let state = Arc::new(Mutex::new(State::default()));
        let (gate, _) = watch::channel(false);
        let (manifest_gate, _) = watch::channel(true);
        let (s, g, mg) = (state.clone(), gate.clone(), manifest_gate.clone());
        let server = serve(move |req: http::Request<hyper::body::Incoming>| {
            let (s, g, mg) = (s.clone(), g.subscribe(), mg.subscribe());
            async move {
                let rl = s.lock().unwrap().ratelimit;
                let mut r = handle(s, g, mg, req).await;
                if let Some((remaining, limit)) = rl {
                    r.headers_mut().insert("ratelimit-remaining", format!("{remaining};w=21600").parse().unwrap());
                    r.headers_mut().insert("ratelimit-limit", format!("{limit};w=21600").parse().unwrap());
                }
                r
            }
        })
        .await;
        Fake { server, state, gate, manifest_gate }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn add_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: Bytes) {
        self.state.lock().unwrap().manifests.insert(format!("{repo}/{reference}"), (media_type.into(), bytes));
    }

    pub fn add_blob(&self, digest: &str, spec: BlobSpec) {
        self.state.lock().unwrap().blobs.insert(digest.into(), spec);
    }

    /// Demands Basic credentials, as some registries do.
    pub fn require_basic(&self, user: &str, password: &str) {
        use base64::Engine as _;
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        self.state.lock().unwrap().require = Some(v);
    }

    /// Sends blob GETs elsewhere with a 307, as Docker Hub does to its CDN.
    pub fn redirect_blobs_to(&self, base: &str) {
        self.state.lock().unwrap().redirect_blobs = Some(base.to_owned());
    }

    /// Demands a Bearer token from `realm` (use `self.url() + "/token"` for
    /// this fake's own endpoint, which answers `token_body`).
    pub fn require_bearer(&self, realm: Option<&str>, token_body: &str) {
        let mut st = self.state.lock().unwrap();
        st.bearer_realm = realm.map(str::to_owned);
        st.token_body = token_body.to_owned();
    }

    /// Sends Docker Hub's rate-limit headers: `remaining` of `limit` pulls.
    pub fn set_ratelimit(&self, remaining: i64, limit: i64) {
        self.state.lock().unwrap().ratelimit = Some((remaining, limit));
    }

    /// Sends manifest requests elsewhere with a 307 (what a mirror must refuse).
    pub fn redirect_manifests_to(&self, base: &str) {
        self.state.lock().unwrap().redirect_manifests = Some(base.to_owned());
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    /// Serves `img` (by tag and by digest), holding every blob over 1 MiB
    /// at `hold_at` until the gate opens.
    pub fn add_image(&self, img: &super::images::Image, hold_at: Option<u64>) {
        for m in std::iter::once(&img.top).chain(img.children.iter()) {
            self.add_manifest(&img.repo, &m.digest, &m.media_type, m.bytes.clone());
        }
        self.add_manifest(&img.repo, &img.tag, &img.top.media_type, img.top.bytes.clone());
        for b in &img.blobs {
            let hold = hold_at.filter(|_| b.bytes.len() > 1024 * 1024);
            self.add_blob(&b.digest, BlobSpec { hold_at: hold, ..BlobSpec::new(b.bytes.clone()) });
        }
    }

    pub fn hold_manifests(&self, hold: bool) {
        self.manifest_gate.send_replace(!hold);
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.state.lock().unwrap().log.iter().filter(|l| l.contains(needle)).count()
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    mut gate: watch::Receiver<bool>,
    mut mgate: watch::Receiver<bool>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<TestBody> {
    let path = req.uri().path().to_owned();
    let range = req.headers().get("range").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if path == "/token" {
        let body = state.lock().unwrap().token_body.clone();
        return respond(200, body);
    }
    let (require, redirect, redirect_m, realm) = {
        let mut st = state.lock().unwrap();
        st.log.push(format!(
            "{} {} range={} auth={}",
            req.method(),
            path,
            range.as_deref().unwrap_or("-"),
            if auth.is_some() { "yes" } else { "no" }
        ));
        (st.require.clone(), st.redirect_blobs.clone(), st.redirect_manifests.clone(), st.bearer_realm.clone())
    };
    if let Some(realm) = realm {
        if auth.as_deref() != Some("Bearer good-token") {
            let mut r = respond(401, r#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#);
            r.headers_mut().insert("www-authenticate", format!("Bearer realm=\"{realm}\",service=\"fake\"").parse().unwrap());
            return r;
        }
    }
    if let (Some(base), true) = (redirect_m, path.contains("/manifests/")) {
        let mut r = respond(307, "");
        r.headers_mut().insert("location", format!("{base}{path}").parse().unwrap());
        return r;
    }
    if require.is_some() && auth != require {
        let mut r = respond(401, r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#);
        r.headers_mut().insert("www-authenticate", "Basic realm=\"fake\"".parse().unwrap());
        return r;
    }
    if let (Some(base), true, false) = (redirect, path.contains("/blobs/"), req.method() == http::Method::HEAD) {
        let mut r = respond(307, "");
        r.headers_mut().insert("location", format!("{base}{path}?signature=secret").parse().unwrap());
        return r;
    }
    if path == "/v2/" {
        return respond(200, "{}");
    }
    let head = req.method() == http::Method::HEAD;
    if let Some(i) = path.find("/manifests/") {
        let key = format!("{}/{}", &path[4..i], &path[i + "/manifests/".len()..]);
        let found = state.lock().unwrap().manifests.get(&key).cloned();
        let _ = mgate.wait_for(|open| *open).await;
        return match found {
            None => respond(404, r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#),
            Some((mt, bytes)) => {
                let d = super::digest_of(&bytes);
                let mut r = respond(200, if head { Bytes::new() } else { bytes.clone() });
                let h = r.headers_mut();
                h.insert("content-type", mt.parse().unwrap());
                h.insert("docker-content-digest", d.parse().unwrap());
                if head {
                    h.insert("content-length", bytes.len().into());
                }
                r
            }
        };
    }
    let Some(i) = path.find("/blobs/") else { return respond(404, "no route") };
    let digest = path[i + "/blobs/".len()..].to_owned();
    let spec = {
        let mut st = state.lock().unwrap();
        let Some(spec) = st.blobs.get_mut(&digest) else {
            return respond(404, r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}"#);
        };
        let this = spec.clone();
        if spec.cuts > 0 {
            spec.cuts -= 1;
        }
        this
    };
    if spec.loop_redirect {
        let mut r = respond(307, "");
        r.headers_mut().insert("location", path.parse().unwrap());
        return r;
    }
    if let (Some(st), true) = (spec.status, spec.cuts > 0) {
        let mut r = respond(st, r#"{"errors":[{"code":"UNKNOWN","message":"injected"}]}"#);
        if st == 429 {
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
        }
        return r;
    }
    let total = spec.bytes.len() as u64;
    let start = match (&range, spec.ranges) {
        (Some(r), true) => r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0),
        _ => 0,
    };
    let mut b = http::Response::builder().header("content-type", "application/octet-stream").header("docker-content-digest", &digest);
    if !spec.no_length {
        b = b.header("content-length", total - start);
    }
    b = if start > 0 { b.status(206).header("content-range", format!("bytes {start}-{}/{total}", total - 1)) } else { b.status(200) };
    if head {
        return b.body(super::full(Bytes::new())).unwrap();
    }
    let cut = if spec.cuts > 0 { spec.cut_at } else { None };
    let bytes = spec.bytes.clone();
    let (hold, stall) = match (spec.stall_first, spec.cuts > 0) {
        (true, true) => (spec.hold_at, true),
        (true, false) => (None, false),
        (false, _) => (spec.hold_at, false),
    };
    let stream = async_stream(bytes, start, hold, cut, async move {
        if stall {
            // Longer than any idle timeout the tests configure; bounded.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        } else {
            let _ = gate.wait_for(|open| *open).await;
        }
    });
    b.body(TestBody::new(http_body_util::StreamBody::new(stream).boxed())).unwrap()
}

/// The body as 64 KiB frames from `start`, pausing at `hold` until
/// `released` completes, failing at `cut`.
fn async_stream(
    bytes: Bytes,
    start: u64,
    hold: Option<u64>,
    cut: Option<u64>,
    released: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, std::io::Error>> + Send {
    let released = Box::pin(released);
    futures_util::stream::unfold((start, Some(released)), move |(pos, mut released)| {
        let bytes = bytes.clone();
        async move {
            let total = bytes.len() as u64;
            if pos >= total {
                return None;
            }
            if let (Some(h), Some(r)) = (hold, released.as_mut()) {
                if pos >= h {
                    r.await;
                    released = None;
                }
            }
            if cut.is_some_and(|c| pos >= c) {
                return Some((Err(std::io::Error::other("cut by the fake upstream")), (total, None)));
            }
            let mut end = (pos + 65536).min(total);
            if let Some(h) = hold.filter(|h| *h > pos && released.is_some()) {
                end = end.min(h);
            }
            if let Some(c) = cut.filter(|c| *c > pos) {
                end = end.min(c);
            }
            let chunk = bytes.slice(pos as usize..end as usize);
            Some((Ok(hyper::body::Frame::data(chunk)), (end, released)))
        }
    })
}

/// A raw TCP upstream for faults below HTTP: it answers every request with
/// `response`, cut after `cut` bytes (or never answers, with `hang`).
/// (response bytes, cut after, hang).
type RawState = Arc<Mutex<(Vec<u8>, Option<usize>, bool)>>;

pub struct RawFault {
    pub addr: std::net::SocketAddr,
    state: RawState,
    task: tokio::task::JoinHandle<()>,
}

impl RawFault {
    pub async fn start() -> RawFault {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state: RawState = Arc::new(Mutex::new((Vec::new(), None, false)));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (resp, cut, hang) = st.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut seen = Vec::new();
                    // Read the request head (bounded).
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 65536 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    if hang {
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                        return;
                    }
                    let n = cut.unwrap_or(resp.len()).min(resp.len());
                    let _ = s.write_all(&resp[..n]).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RawFault { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, response: Vec<u8>, cut: Option<usize>, hang: bool) {
        *self.state.lock().unwrap() = (response, cut, hang);
    }
}

impl Drop for RawFault {
    fn drop(&mut self) {
        self.task.abort();
    }
}
