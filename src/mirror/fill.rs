//! Single-flight blob downloads ("fills") streamed to every reader at once.
//!
//! The first request for a missing blob starts one fill: a task that streams
//! the upstream body into a spool file while a blocking thread writes and
//! hashes it. Progress (bytes written, total, state) is published on a
//! `watch` channel. Every client, the first one too, is a [`reader`] of the
//! spool: it reads what is written and awaits the next change when it has
//! caught up; no polling. The final byte of the blob is withheld from every
//! reader until the digest has verified, so a mismatch always ends a
//! response early: a client never receives a complete wrong blob.
//!
//! A fill belongs to the mirror, not to a client: it runs to its end when
//! every client has gone, and a broken upstream connection is resumed with
//! `Range` from the last byte received.

use super::MirrorError;
use crate::clock::Clock;
use crate::index::Index;
use crate::oci::{Digest, RepoName};
use crate::store::{read_chunk, ByteStream, Store, CHUNK};
use crate::upstream::{Upstream, UpstreamError};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

/// How often a broken download is resumed before it fails for good.
const MAX_RESUMES: u32 = 5;
/// Chunks between the network task and the writer thread: bounds a fill's
/// memory to a few MiB whatever the client count.
const PIPE_DEPTH: usize = 32;

#[derive(Clone, Debug)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes are arriving.
    Streaming,
    /// Complete and the digest matched: every byte may be served.
    Verified,
    /// Ended without a verified blob; readers abort.
    Failed(Arc<MirrorError>),
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// The blob's size, when the upstream said it.
    pub total: Option<u64>,
    /// Bytes in the spool file.
    pub written: u64,
    pub state: FillState,
}

impl Progress {
    /// The blob's size as far as it is known.
    pub fn size(&self) -> Option<u64> {
        match self.state {
            FillState::Verified => Some(self.written),
            _ => self.total,
        }
    }
}

/// One download in flight.
pub struct Fill {
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
    /// Clients streaming from this fill right now.
    readers: Arc<AtomicUsize>,
}

/// Counts a reader for as long as it lives.
struct ReaderGuard(Arc<AtomicUsize>);

impl ReaderGuard {
    fn new(n: &Arc<AtomicUsize>) -> ReaderGuard {
        n.fetch_add(1, Ordering::SeqCst);
        ReaderGuard(n.clone())
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The fills in flight, by digest. Owned by the mirror.
#[derive(Default)]
pub struct Fills {
    map: Mutex<HashMap<Digest, Arc<Fill>>>,
}

/// What a fill needs from the mirror.
pub struct FillContext {
    pub store: Arc<dyn Store>,
    pub index: Index,
    pub clock: Clock,
    pub tasks: TaskTracker,
    pub usage: Arc<super::lifecycle::Usage>,
}

impl Fills {
    /// The fill in flight for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.map.lock().expect("fills lock: no panics while held").get(digest).cloned()
    }

    /// How many clients stream from the fill for `digest` (`None`: no fill).
    pub fn readers(&self, digest: &Digest) -> Option<usize> {
        self.get(digest).map(|f| f.readers.load(Ordering::SeqCst))
    }

    /// Joins the fill for `digest`, or starts one. `stored` is re-checked
    /// under the lock, after a fill has removed itself, so that a request
    /// racing with a fill's end never starts a second download: `Ok(None)`
    /// then means "it is in the store now".
    pub async fn join_or_start(
        self: &Arc<Self>,
        ctx: &Arc<FillContext>,
        upstream: Arc<Upstream>,
        repo: RepoName,
        digest: Digest,
    ) -> Result<Option<Arc<Fill>>, MirrorError> {
        if let Some(f) = self.get(&digest) {
            return Ok(Some(f));
        }
        // Created outside the lock (it touches the disk); dropped unused if
        // another request won the race.
        let spool = ctx.store.spool().await.map_err(MirrorError::store)?;
        let mut map = self.map.lock().expect("fills lock: no panics while held");
        if let Some(f) = map.get(&digest) {
            return Ok(Some(f.clone()));
        }
        // A fill that finished between our store check and now has
        // committed before removing itself; a stat under the lock sees it.
        if ctx.store_has_sync(&digest) {
            return Ok(None);
        }
        let (tx, rx) = watch::channel(Progress { total: None, written: 0, state: FillState::Connecting });
        let fill = Arc::new(Fill { file: spool.file.clone(), progress: rx, readers: Arc::new(AtomicUsize::new(0)) });
        map.insert(digest.clone(), fill.clone());
        drop(map);
        let fills = self.clone();
        let ctx2 = ctx.clone();
        ctx.tasks.spawn(async move {
            let outcome = run(&ctx2, &upstream, &repo, &digest, spool, &tx).await;
            // Remove only after committing, so that a new request finds
            // either this fill or the stored blob.
            fills.map.lock().expect("fills lock: no panics while held").remove(&digest);
            match outcome {
                Ok(size) => tracing::debug!(%digest, size, upstream = upstream.name(), "blob stored"),
                Err(e) => {
                    tracing::warn!(%digest, upstream = upstream.name(), error = %e, "blob download failed; nothing stored");
                    let e = Arc::new(e);
                    // After the verdict the readers have every byte; a
                    // failure to commit must not abort them.
                    tx.send_if_modified(|p| match p.state {
                        FillState::Verified => false,
                        _ => {
                            p.state = FillState::Failed(e);
                            true
                        }
                    });
                }
            }
        });
        Ok(Some(fill))
    }
}

impl FillContext {
    fn store_has_sync(&self, d: &Digest) -> bool {
        // Only the filesystem backend can be asked synchronously; others
        // rely on the fill map alone (a rare double download, never wrong).
        self.store.has_local(d)
    }
}

impl Fill {
    /// Waits until the upstream has answered: the progress once bytes flow,
    /// or the error when it refused before sending any.
    pub async fn started(&self) -> Result<Progress, Arc<MirrorError>> {
        let mut rx = self.progress.clone();
        loop {
            let p = rx.borrow_and_update().clone();
            match p.state {
                FillState::Connecting => {}
                FillState::Failed(e) if p.written == 0 => return Err(e),
                _ => return Ok(p),
            }
            if rx.changed().await.is_err() {
                let p = rx.borrow().clone();
                return match p.state {
                    FillState::Failed(e) => Err(e),
                    FillState::Connecting => Err(Arc::new(MirrorError::Internal("blob download ended without a result".into()))),
                    _ => Ok(p),
                };
            }
        }
    }

    /// Waits until the blob's size is known (for a Range on a body that came
    /// without a Content-Length, that is the end of the download).
    pub async fn sized(&self) -> Result<u64, Arc<MirrorError>> {
        let mut rx = self.progress.clone();
        loop {
            let p = rx.borrow_and_update().clone();
            if let FillState::Failed(e) = p.state {
                return Err(e);
            }
            if let Some(s) = p.size() {
                return Ok(s);
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(MirrorError::Internal("blob download ended without a size".into())));
            }
        }
    }

    /// A stream of `range` of the blob (`None`: to its end), served from
    /// the spool as it grows.
    pub fn reader(&self, range: Option<Range<u64>>) -> ByteStream {
        let start = range.as_ref().map_or(0, |r| r.start);
        let st = ReaderState {
            _guard: ReaderGuard::new(&self.readers),
            file: self.file.clone(),
            rx: self.progress.clone(),
            pos: start,
            end: range.map(|r| r.end),
        };
        Box::pin(futures_util::stream::try_unfold(st, |mut st| async move {
            loop {
                let p = st.rx.borrow_and_update().clone();
                if let FillState::Failed(e) = &p.state {
                    return Err(io::Error::other(format!("blob download failed: {e}")));
                }
                let verified = matches!(p.state, FillState::Verified);
                let end = match (st.end, p.size()) {
                    (Some(e), Some(s)) => e.min(s),
                    (Some(e), None) => e,
                    (None, s) => s.unwrap_or(u64::MAX),
                };
                if st.pos >= end {
                    return Ok(None);
                }
                // The last byte of the blob waits for the verdict.
                let releasable = match (verified, p.total) {
                    (true, _) => p.written,
                    (false, Some(t)) => p.written.min(t.saturating_sub(1)),
                    (false, None) => p.written.saturating_sub(1),
                };
                let avail = releasable.min(end);
                if st.pos < avail {
                    let len = (avail - st.pos).min(CHUNK as u64) as usize;
                    let (f, pos) = (st.file.clone(), st.pos);
                    let chunk = tokio::task::spawn_blocking(move || read_chunk(&f, pos, len)).await.map_err(io::Error::other)??;
                    if chunk.is_empty() {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spool file shorter than its progress"));
                    }
                    st.pos += chunk.len() as u64;
                    return Ok(Some((chunk, st)));
                }
                if verified {
                    // Verified with fewer bytes than asked: the range ran past the end.
                    return Ok(None);
                }
                if st.rx.changed().await.is_err() {
                    let p = st.rx.borrow().clone();
                    if !matches!(p.state, FillState::Verified) {
                        return Err(io::Error::other("blob download ended before the blob was complete"));
                    }
                }
            }
        }))
    }
}

struct ReaderState {
    _guard: ReaderGuard,
    file: Arc<File>,
    rx: watch::Receiver<Progress>,
    pos: u64,
    end: Option<u64>,
}

/// Downloads, verifies and commits one blob; returns its size.
async fn run(
    ctx: &FillContext,
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    spool: crate::store::Spool,
    progress: &watch::Sender<Progress>,
) -> Result<u64, MirrorError> {
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Bytes>(PIPE_DEPTH);
    let file = spool.file.clone();
    let prog = progress.clone();
    // Writes and hashes beside the network task, so the two overlap.
    let writer = tokio::task::spawn_blocking(move || -> io::Result<Digest> {
        let mut v = Digest::verifier();
        while let Some(c) = chunks_rx.blocking_recv() {
            (&*file).write_all(&c)?;
            v.update(&c);
            prog.send_modify(|p| p.written += c.len() as u64);
        }
        Ok(v.finish())
    });

    let mut received: u64 = 0;
    let mut total: Option<u64> = None;
    let mut resumes = 0u32;
    let net: Result<(), MirrorError> = loop {
        let body = match upstream.get_blob(repo, digest, received).await {
            Ok(b) => b,
            Err(e) if resumes < MAX_RESUMES && received > 0 && matches!(e, UpstreamError::Unavailable(_)) => {
                resumes += 1;
                tracing::info!(%digest, received, attempt = resumes, error = %e, "resuming blob download");
                tokio::time::sleep(backoff(resumes)).await;
                continue;
            }
            Err(e) => break Err(MirrorError::Upstream(e)),
        };
        if received == 0 {
            total = body.total;
            progress.send_modify(|p| {
                p.total = total;
                p.state = FillState::Streaming;
            });
        } else if body.total.is_some() && total.is_some() && body.total != total {
            break Err(MirrorError::Upstream(UpstreamError::Invalid("blob size changed between resumes".into())));
        }
        let mut stream = body.stream;
        let mut broke: Option<UpstreamError> = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(c) => {
                    received += c.len() as u64;
                    if total.is_some_and(|t| received > t) {
                        broke =
                            Some(UpstreamError::Invalid(format!("upstream sent more than the {} bytes it announced", total.unwrap_or(0))));
                        break;
                    }
                    if chunks_tx.send(c).await.is_err() {
                        // The writer stopped: its error is reported below.
                        break;
                    }
                }
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            }
        }
        match broke {
            Some(e @ UpstreamError::Invalid(_)) => break Err(MirrorError::Upstream(e)),
            None if chunks_tx.is_closed() => break Ok(()),
            None if total.is_none_or(|t| received == t) => break Ok(()),
            other => {
                let e = other.unwrap_or_else(|| UpstreamError::Unavailable(format!("body ended at {received} of {:?} bytes", total)));
                if resumes >= MAX_RESUMES {
                    break Err(MirrorError::Upstream(UpstreamError::Unavailable(format!("download broke {resumes} times; last: {e}"))));
                }
                resumes += 1;
                tracing::info!(%digest, received, attempt = resumes, error = %e, "blob download broke; resuming");
                tokio::time::sleep(backoff(resumes)).await;
            }
        }
    };
    drop(chunks_tx);
    let written = writer.await.map_err(|e| MirrorError::Internal(format!("blob writer panicked: {e}")))?;
    net?;
    let actual = written.map_err(MirrorError::store)?;
    if &actual != digest {
        return Err(MirrorError::DigestMismatch { expected: digest.clone(), actual });
    }
    let size = received;
    progress.send_modify(|p| p.state = FillState::Verified);
    ctx.store.commit(spool, digest).await.map_err(MirrorError::store)?;
    ctx.index.put_blob(digest, size, ctx.clock.now_ms()).await.map_err(MirrorError::from)?;
    ctx.usage.add(size);
    Ok(size)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(6))
}
