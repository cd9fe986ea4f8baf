//! The content-addressed store: bytes by digest, nothing else.
//!
//! [`Store`] is the interface the mirror uses; [`FsStore`] is the local
//! filesystem backend. A second backend (an S3-compatible bucket shared by
//! several replicas) implements the same trait: downloads are always spooled
//! to a local file first ([`Spool`]), and `commit` is where that backend
//! would upload. The store never sees HTTP, names or tags, and only `commit`
//! and `put` make bytes visible, both after the caller verified the digest.

mod fs;

pub use fs::FsStore;

use crate::oci::Digest;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// The size of one read from a blob file: large enough that a 1 GiB blob is
/// a few thousand reads, small enough that 1000 concurrent streams stay in
/// bounded memory.
pub const CHUNK: usize = 256 * 1024;

/// A stream of a blob's bytes.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// A local temp file that a download is written into before it is verified.
/// Readers share the open file (positioned reads), so they keep working
/// when the file is renamed into the store.
pub struct Spool {
    pub file: Arc<File>,
    pub path: PathBuf,
}

impl Drop for Spool {
    fn drop(&mut self) {
        // A spool that was committed has been renamed away, so this fails
        // harmlessly; one that was abandoned is removed here, on every path.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a store backend provides. Every method that touches the disk runs
/// off the async worker threads.
pub trait Store: Send + Sync + 'static {
    /// The size of the stored object, or `None` when it is not stored.
    fn stat(&self, digest: &Digest) -> BoxFuture<'_, io::Result<Option<u64>>>;
    /// A stream of `range` of the object (clamped to its size), or `None`.
    fn read(&self, digest: &Digest, range: Range<u64>) -> BoxFuture<'_, io::Result<Option<ByteStream>>>;
    /// The whole object if it is at most `limit` bytes (manifests).
    fn read_small(&self, digest: &Digest, limit: usize) -> BoxFuture<'_, io::Result<Option<Bytes>>>;
    /// Stores bytes the caller has verified to have this digest.
    fn put(&self, digest: &Digest, bytes: Bytes) -> BoxFuture<'_, io::Result<()>>;
    /// A new temp file to download into.
    fn spool(&self) -> BoxFuture<'_, io::Result<Spool>>;
    /// Makes a verified spool visible under its digest (fsync, then rename).
    fn commit(&self, spool: Spool, digest: &Digest) -> BoxFuture<'_, io::Result<()>>;
    /// Removes an object; absent is not an error.
    fn delete(&self, digest: &Digest) -> BoxFuture<'_, io::Result<()>>;
    /// Removes temp files left by a crash; returns how many.
    fn sweep_temp(&self) -> BoxFuture<'_, io::Result<usize>>;
    /// A cheap synchronous presence check, used under a lock; a backend
    /// that cannot answer without the network returns `false`.
    fn has_local(&self, digest: &Digest) -> bool;
    /// Every stored object with its size.
    fn list(&self) -> BoxFuture<'_, io::Result<Vec<(Digest, u64)>>>;
    /// Bytes that can still be written where downloads are spooled, when
    /// the backend can tell.
    fn free_space(&self) -> Option<u64>;
}

/// Reads up to `len` bytes at `offset` from `file` on the blocking pool
/// (a positioned read: the file's cursor is not used, so many readers
/// share one descriptor). Returns fewer bytes only at the end of the file.
///
/// The buffer is allocated here, on the calling (async) thread, not in the
/// blocking thread: glibc gives each thread its own arena, and buffers
/// allocated across hundreds of blocking threads but freed by the few
/// threads that send them fragment into a resident size several times the
/// bytes in flight.
pub async fn read_chunk(file: Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    let buf = vec![0u8; len];
    tokio::task::spawn_blocking(move || read_into(&file, offset, buf)).await.map_err(io::Error::other)?
}

fn read_into(file: &File, offset: u64, mut buf: Vec<u8>) -> io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let len = buf.len();
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

/// A stream of `range` of an open file, read in [`CHUNK`]s on the blocking
/// pool, one chunk ahead: the next read runs while the previous chunk is
/// being sent, so disk and socket overlap. Memory per stream stays at two
/// chunks. The file must hold at least `range.end` bytes.
pub fn file_stream(file: Arc<File>, range: Range<u64>) -> ByteStream {
    Box::pin(FileStream { file, pos: range.start, end: range.end, ahead: None })
}

struct FileStream {
    file: Arc<File>,
    /// Where the read in flight (or the next one) starts.
    pos: u64,
    end: u64,
    ahead: Option<futures_util::future::BoxFuture<'static, io::Result<Bytes>>>,
}

impl FileStream {
    fn start_read(&mut self) {
        if self.ahead.is_none() && self.pos < self.end {
            let len = (self.end - self.pos).min(CHUNK as u64) as usize;
            self.ahead = Some(Box::pin(read_chunk(self.file.clone(), self.pos, len)));
        }
    }
}

impl futures_util::Stream for FileStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        self.start_read();
        let Some(h) = self.ahead.as_mut() else { return Poll::Ready(None) };
        let r = match h.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        self.ahead = None;
        let chunk = match r {
            Ok(c) if c.is_empty() => {
                self.pos = self.end;
                return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob file is shorter than recorded"))));
            }
            Ok(c) => c,
            Err(e) => {
                self.pos = self.end;
                return Poll::Ready(Some(Err(e)));
            }
        };
        self.pos += chunk.len() as u64;
        self.start_read();
        Poll::Ready(Some(Ok(chunk)))
    }
}
