//! The response body: empty, a buffer, or a stream of blob chunks. It
//! counts what it sends and writes the request's log line when it is
//! dropped, so the line has the real byte count and duration (a client that
//! hung up shows fewer bytes than the Content-Length).

use crate::store::ByteStream;
use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

pub enum Content {
    Empty,
    Full(Option<Bytes>),
    Stream(ByteStream),
}

/// What the request log line says, filled in by the handler.
pub struct LogLine {
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub cache: &'static str,
    pub started: Instant,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

pub struct ResponseBody {
    content: Content,
    len: Option<u64>,
    sent: u64,
    failed: bool,
    log: Option<LogLine>,
}

impl ResponseBody {
    pub fn new(content: Content, len: Option<u64>) -> ResponseBody {
        ResponseBody { content, len, sent: 0, failed: false, log: None }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::new(Content::Empty, Some(0))
    }

    pub fn full(b: impl Into<Bytes>) -> ResponseBody {
        let b = b.into();
        let len = b.len() as u64;
        ResponseBody::new(Content::Full(Some(b)), Some(len))
    }

    pub fn set_log(&mut self, log: LogLine) {
        self.log = Some(log);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let r = match &mut this.content {
            Content::Empty => Poll::Ready(None),
            Content::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Content::Stream(s) => Pin::new(s).poll_next(cx).map(|o| o.map(|r| r.map(Frame::data))),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => this.sent += f.data_ref().map_or(0, |d| d.len() as u64),
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                tracing::warn!(error = %e, "response body aborted");
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            Content::Empty => true,
            Content::Full(b) => b.is_none(),
            Content::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.content, self.len) {
            (Content::Stream(_), Some(l)) => SizeHint::with_exact(l.saturating_sub(self.sent)),
            (Content::Stream(_), None) => SizeHint::default(),
            (Content::Full(Some(b)), _) => SizeHint::with_exact(b.len() as u64),
            _ => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(l) = self.log.take() {
            let source = match l.cache {
                "hit" | "stale" => Some("cache"),
                "miss" => Some("upstream"),
                _ => None,
            };
            if let Some(source) = source {
                l.metrics.served_bytes.get_or_create(&crate::metrics::SourceLabels { source: source.into() }).inc_by(self.sent);
            }
            let ms = l.started.elapsed().as_secs_f64() * 1000.0;
            let complete = !self.failed && self.len.is_none_or(|n| n == self.sent);
            tracing::info!(
                target: "regmirror::request",
                method = %l.method,
                path = %l.path,
                status = l.status,
                bytes = self.sent,
                ms = format_args!("{ms:.1}"),
                cache = %l.cache,
                complete,
                "request"
            );
        }
    }
}
