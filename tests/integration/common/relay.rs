//! A counting relay between the mirror and a real upstream: it forwards
//! every request, records `METHOD path?query` so tests can count what the
//! mirror sent upstream, and can be switched to fail (an outage) on demand.

use super::{respond, serve, Server, TestBody};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Forward to the upstream.
    Pass,
    /// Answer every request with this status and no forwarding.
    Status(u16, Option<u64>),
    /// Accept, read the request, never answer.
    Hang,
}

pub struct Relay {
    server: Server,
    log: Arc<Mutex<Vec<String>>>,
    mode: Arc<Mutex<Mode>>,
}

impl Relay {
    pub async fn start(upstream: String) -> Relay {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap();
        let (l, m) = (log.clone(), mode.clone());
        let server = serve(move |req: http::Request<hyper::body::Incoming>| {
            let (l, m, http, upstream) = (l.clone(), m.clone(), http.clone(), upstream.clone());
            async move {
                let pq = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
                l.lock().unwrap().push(format!("{} {pq}", req.method()));
                let mode = m.lock().unwrap().clone();
                match mode {
                    Mode::Pass => {}
                    Mode::Status(s, retry_after) => {
                        let mut r = respond(s, r#"{"errors":[{"code":"UNAVAILABLE","message":"relay says no"}]}"#);
                        if let Some(ra) = retry_after {
                            r.headers_mut().insert("retry-after", ra.to_string().parse().unwrap());
                        }
                        return r;
                    }
                    Mode::Hang => {
                        // Bounded: far past every timeout the tests configure.
                        tokio::time::sleep(Duration::from_secs(120)).await;
                        return respond(504, "hung");
                    }
                }
                let mut rb = http.request(req.method().clone(), format!("{upstream}{pq}"));
                for (k, v) in req.headers() {
                    if k != "host" && k != "connection" {
                        rb = rb.header(k, v);
                    }
                }
                let resp = match rb.send().await {
                    Ok(r) => r,
                    Err(e) => return respond(502, format!("relay: {e}")),
                };
                let mut out = http::Response::builder().status(resp.status().as_u16());
                for (k, v) in resp.headers() {
                    if k != "connection" && k != "transfer-encoding" {
                        out = out.header(k, v);
                    }
                }
                let body = http_body_util::StreamBody::new(
                    resp.bytes_stream().map(|r| r.map(hyper::body::Frame::data).map_err(std::io::Error::other)),
                );
                out.body(TestBody::new(BodyExt::boxed(body))).unwrap()
            }
        })
        .await;
        Relay { server, log, mode }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    /// Every request line seen so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Requests whose line contains `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}
