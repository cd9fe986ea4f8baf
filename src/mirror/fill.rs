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
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

/// How often a broken download is resumed before it fails for good.
const MAX_RESUMES: u32 = 5;
/// Batches queued between the network task, the writer and the hasher:
/// with the window and the writer's stage, bounds a fill's memory to about
/// 20 MiB whatever the client count.
const PIPE_DEPTH: usize = 4;
/// The most bytes, and network chunks, gathered into one batch (the chunk
/// count stays under the kernel's limit for one vectored write).
const BATCH_BYTES: usize = 1024 * 1024;
const BATCH_CHUNKS: usize = 512;
/// Space left free beside a download (the index and other writers need some).
const DISK_MARGIN: u64 = 1024 * 1024;

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
    /// Bytes received so far: readers may have them (from the in-memory
    /// window, or from the spool once they are on disk).
    pub available: u64,
    pub state: FillState,
}

impl Progress {
    /// The blob's size as far as it is known.
    pub fn size(&self) -> Option<u64> {
        match self.state {
            FillState::Verified => Some(self.available),
            _ => self.total,
        }
    }
}

/// One download in flight.
pub struct Fill {
    file: Arc<File>,
    /// The newest bytes, in memory: readers near the head never touch the disk.
    window: Arc<Mutex<Window>>,
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
    /// Cancelled at shutdown: downloads get `grace` to finish, then stop
    /// (their spool is removed).
    pub cancel: tokio_util::sync::CancellationToken,
    pub grace: Duration,
}

impl Fills {
    /// The fill in flight for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.map.lock().expect("fills lock: no panics while held").get(digest).cloned()
    }

    /// Downloads in flight, and the clients streaming from them.
    pub fn in_flight(&self) -> (usize, usize) {
        let map = self.map.lock().expect("fills lock: no panics while held");
        (map.len(), map.values().map(|f| f.readers.load(Ordering::SeqCst)).sum())
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
        let (tx, rx) = watch::channel(Progress { total: None, available: 0, state: FillState::Connecting });
        let window = Arc::new(Mutex::new(Window::default()));
        let fill =
            Arc::new(Fill { file: spool.file.clone(), window: window.clone(), progress: rx, readers: Arc::new(AtomicUsize::new(0)) });
        map.insert(digest.clone(), fill.clone());
        drop(map);
        let fills = self.clone();
        let ctx2 = ctx.clone();
        ctx.tasks.spawn(async move {
            let outcome = tokio::select! {
                r = run(&ctx2, &upstream, &repo, &digest, spool, &window, &tx) => r,
                _ = async {
                    ctx2.cancel.cancelled().await;
                    tokio::time::sleep(ctx2.grace).await;
                } => Err(MirrorError::Internal("the mirror shut down before the download ended".into())),
            };
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
                FillState::Failed(e) if p.available == 0 => return Err(e),
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
            window: self.window.clone(),
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
                    (true, _) => p.available,
                    (false, Some(t)) => p.available.min(t.saturating_sub(1)),
                    (false, None) => p.available.saturating_sub(1),
                };
                let avail = releasable.min(end);
                if st.pos < avail {
                    let len = (avail - st.pos).min(CHUNK as u64) as usize;
                    // Near the head: the bytes themselves, shared, no copy.
                    let near = st.window.lock().expect("window lock: no panics while held").slice(st.pos, len);
                    if let Some(chunk) = near {
                        st.pos += chunk.len() as u64;
                        return Ok(Some((chunk, st)));
                    }
                    // Behind the window: those bytes are on disk.
                    let (f, pos) = (st.file.clone(), st.pos);
                    let chunk = read_chunk(f, pos, len).await?;
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
    window: Arc<Mutex<Window>>,
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
    window: &Arc<Mutex<Window>>,
    progress: &watch::Sender<Progress>,
) -> Result<u64, MirrorError> {
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Vec<Bytes>>(PIPE_DEPTH);
    let (hash_tx, hash_rx) = std::sync::mpsc::sync_channel::<Vec<Bytes>>(PIPE_DEPTH);
    // Network, disk and hash each on their own thread, so that they overlap;
    // readers are served from the window meanwhile, not from the disk.
    let hasher = tokio::task::spawn_blocking(move || {
        let mut v = Digest::verifier();
        for batch in hash_rx {
            for c in &batch {
                v.update(c);
            }
        }
        v.finish()
    });
    let mut disk = SpoolWriter::new(&spool);
    let win = window.clone();
    let writer = tokio::task::spawn_blocking(move || -> io::Result<()> {
        while let Some(batch) = chunks_rx.blocking_recv() {
            // Cloning the batch clones handles, not bytes.
            if hash_tx.send(batch.clone()).is_err() {
                return Err(io::Error::other("the hashing thread stopped"));
            }
            let mut durable = 0;
            for c in &batch {
                durable = disk.write(c)?;
            }
            win.lock().expect("window lock: no panics while held").prune(durable, WINDOW_KEEP);
        }
        disk.finish()
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
            // Refuse before streaming what cannot fit: the client gets a
            // clear 503 instead of a transfer cut when the disk fills.
            if let (Some(t), Some(free)) = (total, ctx.store.free_space()) {
                if free < t.saturating_add(DISK_MARGIN) {
                    tracing::error!(%digest, size = t, free, "not enough disk space for this blob");
                    break Err(MirrorError::store(io::Error::from_raw_os_error(libc::ENOSPC)));
                }
            }
            progress.send_modify(|p| {
                p.total = total;
                p.state = FillState::Streaming;
            });
        } else if body.total.is_some() && total.is_some() && body.total != total {
            break Err(MirrorError::Upstream(UpstreamError::Invalid("blob size changed between resumes".into())));
        }
        let mut stream = body.stream;
        let mut broke: Option<UpstreamError> = None;
        loop {
            // Wait for one chunk, then take what else has already arrived
            // (up to a batch): one write, one hash hand-off and one wake-up
            // of the readers per batch instead of per network read, without
            // delaying the first byte.
            let mut batch = Vec::new();
            let mut len = 0usize;
            let mut ended = false;
            match stream.next().await {
                None => break,
                Some(Err(e)) => {
                    broke = Some(e);
                    break;
                }
                Some(Ok(c)) => {
                    len += c.len();
                    batch.push(c);
                }
            }
            while len < BATCH_BYTES && batch.len() < BATCH_CHUNKS {
                match stream.next().now_or_never() {
                    Some(Some(Ok(c))) => {
                        len += c.len();
                        batch.push(c);
                    }
                    Some(Some(Err(e))) => {
                        broke = Some(e);
                        break;
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            received += len as u64;
            if let Some(t) = total.filter(|t| received > *t) {
                broke = Some(UpstreamError::Invalid(format!("upstream sent more than the {t} bytes it announced")));
                break;
            }
            // Bytes before a break are good: the resume starts after them.
            // Readers get them at once, from memory; the disk follows.
            {
                let mut w = window.lock().expect("window lock: no panics while held");
                for c in &batch {
                    w.push(c.clone());
                }
            }
            progress.send_modify(|p| p.available += len as u64);
            upstream.count_bytes(len as u64);
            if chunks_tx.send(batch).await.is_err() {
                // The writer stopped: its error is reported below.
                break;
            }
            if ended || broke.is_some() {
                break;
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
    let actual = hasher.await.map_err(|e| MirrorError::Internal(format!("blob hasher panicked: {e}")))?;
    net?;
    written.map_err(MirrorError::store)?;
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

/// The newest bytes of a download, as the network delivered them. A batch
/// leaves only once it is on disk and at least [`WINDOW_KEEP`] newer bytes
/// are here, so every byte is always in the window or in the spool.
#[derive(Default)]
pub(crate) struct Window {
    /// Offset of the first byte held.
    start: u64,
    chunks: std::collections::VecDeque<Bytes>,
    /// Offset just past the last byte held.
    end: u64,
}

/// Bytes kept in memory behind the head for readers that follow closely.
const WINDOW_KEEP: u64 = 8 * 1024 * 1024;

impl Window {
    fn push(&mut self, b: Bytes) {
        self.end += b.len() as u64;
        self.chunks.push_back(b);
    }

    /// Up to `max` bytes at `pos`, sharing the buffer, if still held.
    fn slice(&self, pos: u64, max: usize) -> Option<Bytes> {
        if pos < self.start || pos >= self.end {
            return None;
        }
        // Readers are usually near the head: search from the newest.
        let mut chunk_end = self.end;
        for c in self.chunks.iter().rev() {
            let chunk_start = chunk_end - c.len() as u64;
            if pos >= chunk_start {
                let i = (pos - chunk_start) as usize;
                return Some(c.slice(i..c.len().min(i + max)));
            }
            chunk_end = chunk_start;
        }
        None
    }

    /// Lets go of what is on disk (below `durable`) beyond `keep` bytes.
    fn prune(&mut self, durable: u64, keep: u64) {
        while let Some(front) = self.chunks.front() {
            let front_end = self.start + front.len() as u64;
            if front_end > durable || self.end - front_end < keep {
                break;
            }
            self.start = front_end;
            self.chunks.pop_front();
        }
    }
}

/// Writes a download to its spool with `O_DIRECT` from one reused aligned
/// buffer, so it needs no fresh page cache: on VMs that hand freed memory
/// back to the host, a gigabyte of new page cache costs seconds, and on any
/// host a large cold blob would push hot blobs out of it. The unaligned
/// tail (and every write, where the filesystem refuses `O_DIRECT`, as tmpfs
/// does) goes through the ordinary descriptor.
struct SpoolWriter {
    direct: Option<File>,
    buffered: Arc<File>,
    stage: Vec<u8>,
    /// Where the aligned part of `stage` begins.
    align_at: usize,
    staged: usize,
    /// Bytes on disk (the stage holds the ones after).
    on_disk: u64,
}

const DIRECT_ALIGN: usize = 4096;
const STAGE: usize = 4 * 1024 * 1024;

impl SpoolWriter {
    fn new(spool: &crate::store::Spool) -> SpoolWriter {
        #[cfg(target_os = "linux")]
        let direct = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&spool.path).ok()
        };
        #[cfg(not(target_os = "linux"))]
        let direct = None;
        let stage = if direct.is_some() { vec![0u8; STAGE + DIRECT_ALIGN] } else { Vec::new() };
        let align_at = stage.as_ptr().align_offset(DIRECT_ALIGN);
        SpoolWriter { direct, buffered: spool.file.clone(), stage, align_at, staged: 0, on_disk: 0 }
    }

    /// Appends `data`; returns how many bytes are now on disk.
    fn write(&mut self, mut data: &[u8]) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let Some(direct) = &self.direct else {
            self.buffered.write_all_at(data, self.on_disk)?;
            self.on_disk += data.len() as u64;
            return Ok(self.on_disk);
        };
        while !data.is_empty() {
            let n = (STAGE - self.staged).min(data.len());
            let at = self.align_at + self.staged;
            self.stage[at..at + n].copy_from_slice(&data[..n]);
            self.staged += n;
            data = &data[n..];
            if self.staged == STAGE {
                direct.write_all_at(&self.stage[self.align_at..self.align_at + STAGE], self.on_disk)?;
                self.on_disk += STAGE as u64;
                self.staged = 0;
            }
        }
        Ok(self.on_disk)
    }

    /// Writes what is staged: whole blocks directly, the tail buffered.
    fn finish(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if let Some(direct) = &self.direct {
            let aligned = self.staged & !(DIRECT_ALIGN - 1);
            let base = self.align_at;
            if aligned > 0 {
                direct.write_all_at(&self.stage[base..base + aligned], self.on_disk)?;
            }
            self.buffered.write_all_at(&self.stage[base + aligned..base + self.staged], self.on_disk + aligned as u64)?;
            self.on_disk += self.staged as u64;
            self.staged = 0;
        }
        Ok(())
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_slices_and_keeps_what_is_not_on_disk() {
        let mut w = Window::default();
        for i in 0..4u8 {
            w.push(Bytes::from(vec![i; 10]));
        }
        assert_eq!(w.slice(15, 100).unwrap(), Bytes::from(vec![1u8; 5]));
        assert_eq!(w.slice(0, 3).unwrap(), Bytes::from(vec![0u8; 3]));
        assert!(w.slice(40, 1).is_none());
        // Only bytes on disk leave, and only beyond what is kept.
        w.prune(15, 0);
        assert_eq!((w.start, w.end), (10, 40));
        assert!(w.slice(5, 1).is_none());
        w.prune(40, 20);
        assert_eq!(w.start, 20);
        assert_eq!(w.slice(39, 10).unwrap(), Bytes::from(vec![3u8; 1]));
    }

    /// Direct writes (ext4 under the tempdir) and the buffered fallback
    /// (tmpfs refuses O_DIRECT) write the same bytes, tail included.
    #[test]
    fn spool_writer_direct_and_fallback() {
        let data: Vec<u8> = (0..(STAGE * 2 + 5000)).map(|i| (i * 7 % 251) as u8).collect();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())];
        for dir in &dirs {
            let path = dir.path().join("s.spool");
            let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
            let spool = crate::store::Spool { file: Arc::new(file), path: path.clone() };
            let mut w = SpoolWriter::new(&spool);
            let mut durable = 0;
            for piece in data.chunks(70_001) {
                durable = w.write(piece).unwrap();
                assert!(durable <= data.len() as u64);
            }
            assert!(w.direct.is_none() || durable == 2 * STAGE as u64, "direct writes land a stage at a time");
            w.finish().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "{}", dir.path().display());
        }
    }
}
