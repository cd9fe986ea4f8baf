//! The filesystem backend. Layout under `root`, computed only in [`FsStore::path`]:
//!
//! ```text
//! blobs/sha256/<first 2 hex>/<64 hex>   verified objects (blobs and manifests)
//! tmp/<pid>-<n>.spool                    downloads in progress
//! ```
//!
//! `tmp/` is on the same filesystem as `blobs/`, so moving a verified spool
//! into place is an atomic rename.

use super::{file_stream, ByteStream, Spool, Store};
use crate::oci::Digest;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct FsStore {
    root: PathBuf,
    next_temp: AtomicU64,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

fn not_found_as_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl FsStore {
    /// Opens (creating if needed) a store under `root`.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        fs::create_dir_all(root.join("blobs/sha256"))?;
        fs::create_dir_all(root.join("tmp"))?;
        Ok(FsStore { root: root.to_owned(), next_temp: AtomicU64::new(0) })
    }

    /// The one place a path is made from a digest. A [`Digest`] is always
    /// 64 lowercase hex characters, so this cannot leave `root`.
    fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        self.root.join("tmp").join(format!("{}-{nanos}-{n}.spool", std::process::id()))
    }

    fn new_spool(&self) -> io::Result<Spool> {
        let path = self.temp_path();
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(Spool { file: Arc::new(file), path })
    }

    /// fsync the spool, rename it to its final path and fsync the directory,
    /// so that a crash leaves either nothing or the whole verified file.
    fn commit_blocking(spool: &Spool, dest: &Path) -> io::Result<()> {
        spool.file.sync_all()?;
        let dir = dest.parent().expect("a blob path has a parent directory");
        fs::create_dir_all(dir)?;
        fs::rename(&spool.path, dest)?;
        File::open(dir)?.sync_all()
    }
}

impl Store for FsStore {
    fn stat(&self, d: &Digest) -> BoxFuture<'_, io::Result<Option<u64>>> {
        let p = self.path(d);
        Box::pin(blocking(move || not_found_as_none(fs::metadata(p).map(|m| m.len()))))
    }

    fn read(&self, d: &Digest, range: Range<u64>) -> BoxFuture<'_, io::Result<Option<ByteStream>>> {
        let p = self.path(d);
        Box::pin(async move {
            let Some((file, len)) = blocking(move || {
                not_found_as_none(File::open(p).and_then(|f| {
                    let len = f.metadata()?.len();
                    Ok((f, len))
                }))
            })
            .await?
            else {
                return Ok(None);
            };
            let end = range.end.min(len);
            Ok(Some(file_stream(Arc::new(file), range.start.min(end)..end)))
        })
    }

    fn read_small(&self, d: &Digest, limit: usize) -> BoxFuture<'_, io::Result<Option<Bytes>>> {
        let p = self.path(d);
        Box::pin(blocking(move || {
            let Some(meta) = not_found_as_none(fs::metadata(&p))? else {
                return Ok(None);
            };
            if meta.len() > limit as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("stored object is {} bytes, over the {limit} limit", meta.len()),
                ));
            }
            not_found_as_none(fs::read(&p).map(Bytes::from))
        }))
    }

    fn put(&self, d: &Digest, bytes: Bytes) -> BoxFuture<'_, io::Result<()>> {
        let dest = self.path(d);
        Box::pin(async move {
            let spool = self.spool().await?;
            blocking(move || {
                (&*spool.file).write_all(&bytes)?;
                FsStore::commit_blocking(&spool, &dest)
            })
            .await
        })
    }

    fn spool(&self) -> BoxFuture<'_, io::Result<Spool>> {
        let r = self.new_spool();
        Box::pin(async move { r })
    }

    fn commit(&self, spool: Spool, d: &Digest) -> BoxFuture<'_, io::Result<()>> {
        let dest = self.path(d);
        Box::pin(blocking(move || FsStore::commit_blocking(&spool, &dest)))
    }

    fn delete(&self, d: &Digest) -> BoxFuture<'_, io::Result<()>> {
        let p = self.path(d);
        Box::pin(blocking(move || not_found_as_none(fs::remove_file(p)).map(|_| ())))
    }

    fn sweep_temp(&self) -> BoxFuture<'_, io::Result<usize>> {
        let dir = self.root.join("tmp");
        Box::pin(blocking(move || {
            let mut n = 0;
            for e in fs::read_dir(dir)? {
                let e = e?;
                if e.file_type()?.is_file() {
                    fs::remove_file(e.path())?;
                    n += 1;
                }
            }
            Ok(n)
        }))
    }

    fn has_local(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    fn free_space(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.root.join("tmp").as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `st` a valid out-parameter.
        let r = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        (r == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }

    fn list(&self) -> BoxFuture<'_, io::Result<Vec<(Digest, u64)>>> {
        let dir = self.root.join("blobs/sha256");
        Box::pin(blocking(move || {
            let mut out = Vec::new();
            for sub in fs::read_dir(dir)? {
                let sub = sub?;
                if !sub.file_type()?.is_dir() {
                    continue;
                }
                for e in fs::read_dir(sub.path())? {
                    let e = e?;
                    let name = e.file_name();
                    let Some(d) = name.to_str().and_then(|n| format!("sha256:{n}").parse::<Digest>().ok()) else {
                        continue;
                    };
                    out.push((d, e.metadata()?.len()));
                }
            }
            Ok(out)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    #[tokio::test]
    async fn put_read_commit_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        assert_eq!(s.stat(&d).await.unwrap(), None);
        s.put(&d, Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(s.stat(&d).await.unwrap(), Some(5));
        let got: Vec<Bytes> = s.read(&d, 1..4).await.unwrap().unwrap().try_collect().await.unwrap();
        assert_eq!(got.concat(), b"ell");
        assert_eq!(s.read_small(&d, 10).await.unwrap().unwrap(), Bytes::from_static(b"hello"));
        assert!(s.read_small(&d, 2).await.is_err());
        let spool = s.spool().await.unwrap();
        let tmp = spool.path.clone();
        (&*spool.file).write_all(b"x").unwrap();
        let dx = Digest::of(b"x");
        s.commit(spool, &dx).await.unwrap();
        assert!(!tmp.exists());
        assert_eq!(s.list().await.unwrap().len(), 2);
        let abandoned = s.spool().await.unwrap();
        let p = abandoned.path.clone();
        drop(abandoned);
        assert!(!p.exists());
        let _left = s.new_spool().unwrap();
        std::mem::forget(_left);
        assert_eq!(s.sweep_temp().await.unwrap(), 1);
        s.delete(&d).await.unwrap();
        s.delete(&d).await.unwrap();
        assert_eq!(s.stat(&d).await.unwrap(), None);
    }
}
