//! The HTTP front: accepting connections, routing the pull API, and the
//! headers every response carries. Handlers are in [`handlers`], the mapping
//! of errors to OCI codes in [`error`].

pub mod auth;
mod body;
mod error;
mod handlers;
mod range;
mod routes;
pub mod tls;

pub use range::parse_range;
pub use routes::{route, Route};

use crate::metrics::{CacheLabels, RequestLabels};
use crate::mirror::Mirror;
use body::LogLine;
use error::ApiError;
use handlers::{Handled, Req, Resp};
use http::header::HeaderValue;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Server settings the HTTP layer needs.
#[derive(Clone)]
pub struct ServerOptions {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// Who may pull; `None`: anyone.
    pub htpasswd: Option<Arc<auth::Htpasswd>>,
    /// HTTPS (HTTP/2 and HTTP/1.1); `None`: plain HTTP/1.1.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `listener` until `shutdown` completes, then stops accepting and
/// lets the connections in flight finish.
pub async fn serve(listener: TcpListener, mirror: Arc<Mirror>, opts: ServerOptions, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Past the cap a connection gets a short 503 and is closed, so a
        // client sees why (Docker then falls back to its upstream) and the
        // mirror's memory stays bounded.
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mirror = mirror.clone();
        let htpasswd = opts.htpasswd.clone();
        let svc = hyper::service::service_fn(move |req| {
            let (mirror, htpasswd) = (mirror.clone(), htpasswd.clone());
            async move { Ok::<_, Infallible>(handle(&mirror, htpasswd.as_deref(), req).await) }
        });
        if let Some(acceptor) = opts.tls.clone() {
            // The handshake runs in the connection's task, bounded like the headers.
            let (watcher, limit) = (graceful.watcher(), opts.header_read_timeout);
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                b.http1().timer(TokioTimer::new()).header_read_timeout(limit).max_buf_size(64 * 1024);
                b.http2().timer(TokioTimer::new()).max_header_list_size(64 * 1024);
                let conn = watcher.watch(b.serve_connection(TokioIo::new(tls), svc).into_owned());
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(permit);
            });
            continue;
        }
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(opts.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?opts.shutdown_grace, "responses still in flight after the grace period; closing them");
    }
}

/// Answers a connection over `server.max_connections` with a 503 and closes it.
async fn refuse_busy(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = r#"{"errors":[{"code":"UNAVAILABLE","message":"the mirror is serving its maximum number of connections (server.max_connections); retry shortly","detail":null}]}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\ndocker-distribution-api-version: registry/2.0\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        // Read the request first: closing with unread bytes would reset the
        // connection before the client reads the answer.
        let mut buf = [0u8; 8192];
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn handle(mirror: &Mirror, htpasswd: Option<&auth::Htpasswd>, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("");
    let ns = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "ns").map(|(_, v)| v.into_owned());
    let r = Req { method: &method, headers: req.headers(), ns: ns.as_deref(), query };
    let head = method == http::Method::HEAD;
    let route = route(&method, &path);
    let endpoint = route.name();
    let needs_auth = htpasswd.is_some() && !matches!(route, Route::Metrics | Route::Healthz | Route::Readyz | Route::NotFound);
    let authorized = match htpasswd.filter(|_| needs_auth) {
        Some(h) => h.allows(req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok())).await,
        None => true,
    };
    let result: Result<Handled, ApiError> = match route {
        _ if !authorized => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "this mirror needs credentials: log in to it (docker login, skopeo --creds, podman login)",
        )),
        Route::Base => Ok(Handled { resp: handlers::base(), cache: "-" }),
        Route::Metrics => handlers::metrics(mirror).await,
        Route::Healthz => Ok(Handled { resp: handlers::text(StatusCode::OK, "ok\n".into()), cache: "-" }),
        Route::Readyz => Ok(handlers::ready(mirror).await),
        Route::Manifest { name, reference } => handlers::manifest(mirror, &r, name, reference).await,
        Route::Blob { name, digest } => handlers::blob(mirror, &r, name, digest).await,
        Route::Tags { name } => handlers::tags(mirror, &r, name).await,
        Route::Write => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this is a read-only pull-through mirror: push and delete go to the upstream registry",
        )),
        Route::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            format!("{method} {} is not an endpoint of this registry mirror", path.chars().take(200).collect::<String>()),
        )),
    };
    let (mut resp, cache) = match result {
        Ok(h) => (h.resp, h.cache),
        Err(e) => (handlers::error_response(&e, head), "error"),
    };
    let h = resp.headers_mut();
    h.insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    if !authorized {
        h.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"regmirror\""));
    }
    if let Some(ns) = ns.as_deref().and_then(|n| HeaderValue::from_str(n).ok()) {
        h.insert("oci-namespace", ns);
    }
    let status = resp.status().as_u16();
    let m = mirror.metrics();
    m.requests.get_or_create(&RequestLabels { endpoint: endpoint.into(), method: method.to_string(), status: status.to_string() }).inc();
    if matches!(endpoint, "manifest" | "blob") && cache != "error" {
        m.cache.get_or_create(&CacheLabels { kind: endpoint.into(), result: cache.into() }).inc();
    }
    resp.body_mut().set_log(LogLine { method, path, status, cache, started, metrics: m.clone() });
    resp
}
