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
}

/// Reads `len` bytes at `offset` from `file` (a positioned read: the file's
/// cursor is not used, so many readers share one descriptor). Returns fewer
/// bytes only at the end of the file.
pub fn read_chunk(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
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
/// pool. The file must hold at least `range.end` bytes.
pub fn file_stream(file: Arc<File>, range: Range<u64>) -> ByteStream {
    Box::pin(futures_util::stream::try_unfold((file, range.start), move |(file, pos)| {
        let end = range.end;
        async move {
            if pos >= end {
                return Ok(None);
            }
            let len = (end - pos).min(CHUNK as u64) as usize;
            let f = file.clone();
            let chunk = tokio::task::spawn_blocking(move || read_chunk(&f, pos, len)).await.map_err(io::Error::other)??;
            if chunk.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob file is shorter than recorded"));
            }
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, (file, next))))
        }
    }))
}
