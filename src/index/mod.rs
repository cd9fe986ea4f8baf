//! The metadata index: every line of SQL in the program is in this module.
//!
//! One thread owns the SQLite connection (WAL mode) and runs the jobs sent
//! to it in order, so the async workers never block on SQLite and writes
//! never contend for the lock. Schema versions live in `migrations/` and are
//! applied at open, each in its own transaction, tracked by `user_version`.

use crate::oci::{Digest, ManifestInfo, ManifestKind, RepoName};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::mpsc;
use tokio::sync::oneshot;

const MIGRATIONS: &[&str] = &[include_str!("../../migrations/0001_init.sql")];

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the index thread; cheap to clone.
#[derive(Clone)]
pub struct Index {
    jobs: mpsc::Sender<Job>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("index database {path} could not be opened: {source}. If the file is corrupt, move it away and restart: the index is rebuilt from the store")]
    Open { path: String, source: rusqlite::Error },
    #[error("index database {path} has schema version {found}, newer than this regmirror knows ({known}); upgrade regmirror")]
    TooNew { path: String, found: i64, known: usize },
    #[error("the index thread has stopped")]
    Stopped,
}

/// A tag's current target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRow {
    pub digest: Digest,
    /// When the upstream last confirmed it (ms since the epoch).
    pub fetched_at: i64,
}

/// A stored manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRow {
    pub media_type: String,
    pub size: u64,
}

impl Index {
    /// Opens (creating and migrating) the database at `path` and starts its thread.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let shown = path.display().to_string();
        let mut conn = Connection::open(path).map_err(|source| IndexError::Open { path: shown.clone(), source })?;
        configure(&conn).map_err(|source| IndexError::Open { path: shown.clone(), source })?;
        migrate(&mut conn, &shown)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("regmirror-index".into())
            .spawn(move || {
                // Ends when every handle is dropped.
                for job in rx {
                    job(&mut conn);
                }
            })
            .map_err(|e| IndexError::Open { path: shown, source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)) })?;
        Ok(Index { jobs })
    }

    /// Runs `f` on the index thread.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, IndexError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| IndexError::Stopped)?;
        Ok(rx.await.map_err(|_| IndexError::Stopped)??)
    }

    pub async fn tag(&self, upstream: &str, repo: &RepoName, tag: &str) -> Result<Option<TagRow>, IndexError> {
        let (u, r, t) = (upstream.to_owned(), repo.as_str().to_owned(), tag.to_owned());
        self.call(move |c| {
            c.query_row(
                "SELECT t.manifest_digest, t.fetched_at FROM tags t
                 JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id
                 WHERE u.name = ?1 AND r.name = ?2 AND t.name = ?3",
                params![u, r, t],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
            )
            .optional()
        })
        .await
        .map(|o| o.and_then(|(d, fetched_at)| d.parse().ok().map(|digest| TagRow { digest, fetched_at })))
    }

    /// Points a tag at a digest, confirmed at `now`.
    pub async fn set_tag(&self, upstream: &str, repo: &RepoName, tag: &str, digest: &Digest, now: i64) -> Result<(), IndexError> {
        let (u, r, t, d) = (upstream.to_owned(), repo.as_str().to_owned(), tag.to_owned(), digest.to_string());
        self.call(move |c| {
            let tx = c.transaction()?;
            let repo_id = repository_id(&tx, &u, &r)?;
            tx.execute(
                "INSERT INTO tags (repository_id, name, manifest_digest, fetched_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (repository_id, name) DO UPDATE SET manifest_digest = excluded.manifest_digest, fetched_at = excluded.fetched_at",
                params![repo_id, t, d, now],
            )?;
            tx.commit()
        })
        .await
    }

    /// The tags of a repository, sorted; `None` when the repository is unknown.
    pub async fn tags(&self, upstream: &str, repo: &RepoName) -> Result<Option<Vec<String>>, IndexError> {
        let (u, r) = (upstream.to_owned(), repo.as_str().to_owned());
        self.call(move |c| {
            let id: Option<i64> = c
                .query_row(
                    "SELECT r.id FROM repositories r JOIN upstreams u ON u.id = r.upstream_id WHERE u.name = ?1 AND r.name = ?2",
                    params![u, r],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            let mut st = c.prepare("SELECT name FROM tags WHERE repository_id = ?1 ORDER BY name")?;
            let tags = st.query_map([id], |row| row.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(Some(tags))
        })
        .await
    }

    pub async fn manifest(&self, digest: &Digest) -> Result<Option<ManifestRow>, IndexError> {
        let d = digest.to_string();
        self.call(move |c| {
            c.query_row("SELECT media_type, size FROM manifests WHERE digest = ?1", [d], |row| {
                Ok(ManifestRow { media_type: row.get(0)?, size: row.get::<_, i64>(1)? as u64 })
            })
            .optional()
        })
        .await
    }

    /// Records a stored manifest, what it references, and the repository it
    /// was pulled through.
    pub async fn put_manifest(
        &self,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        info: &ManifestInfo,
        now: i64,
    ) -> Result<(), IndexError> {
        let (u, r, d, mt) = (upstream.to_owned(), repo.as_str().to_owned(), digest.to_string(), info.media_type.clone());
        let is_index = info.kind == ManifestKind::Index;
        let refs: Vec<(String, &'static str)> =
            info.blobs.iter().map(|b| (b.to_string(), "blob")).chain(info.manifests.iter().map(|m| (m.to_string(), "manifest"))).collect();
        self.call(move |c| {
            let tx = c.transaction()?;
            let repo_id = repository_id(&tx, &u, &r)?;
            tx.execute(
                "INSERT INTO manifests (digest, media_type, size, is_index, created_at, last_access) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (digest) DO UPDATE SET last_access = excluded.last_access",
                params![d, mt, size as i64, is_index, now],
            )?;
            for (child, kind) in &refs {
                tx.execute(
                    "INSERT OR IGNORE INTO manifest_refs (manifest_digest, child_digest, kind) VALUES (?1, ?2, ?3)",
                    params![d, child, kind],
                )?;
            }
            tx.execute("INSERT OR IGNORE INTO repository_manifests (repository_id, manifest_digest) VALUES (?1, ?2)", params![repo_id, d])?;
            tx.commit()
        })
        .await
    }

    /// Records that a repository holds a manifest already stored (pulled
    /// through another repository).
    pub async fn link_manifest(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Result<(), IndexError> {
        let (u, r, d) = (upstream.to_owned(), repo.as_str().to_owned(), digest.to_string());
        self.call(move |c| {
            let tx = c.transaction()?;
            let repo_id = repository_id(&tx, &u, &r)?;
            tx.execute("INSERT OR IGNORE INTO repository_manifests (repository_id, manifest_digest) VALUES (?1, ?2)", params![repo_id, d])?;
            tx.commit()
        })
        .await
    }

    pub async fn put_blob(&self, digest: &Digest, size: u64, now: i64) -> Result<(), IndexError> {
        let d = digest.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT INTO blobs (digest, size, created_at, last_access) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (digest) DO UPDATE SET last_access = excluded.last_access",
                params![d, size as i64, now],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn blob(&self, digest: &Digest) -> Result<Option<u64>, IndexError> {
        let d = digest.to_string();
        self.call(move |c| c.query_row("SELECT size FROM blobs WHERE digest = ?1", [d], |row| row.get::<_, i64>(0)).optional())
            .await
            .map(|o| o.map(|s| s as u64))
    }

    /// Every digest the index knows as a blob or a manifest.
    pub async fn all_objects(&self) -> Result<Vec<(Digest, bool)>, IndexError> {
        self.call(|c| {
            let mut st = c.prepare("SELECT digest, 0 FROM blobs UNION ALL SELECT digest, 1 FROM manifests")?;
            let rows =
                st.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().filter_map(|(d, m)| d.parse().ok().map(|d| (d, m))).collect())
        })
        .await
    }
}

/// Everything eviction needs to know, read in one transaction.
#[derive(Debug, Default)]
pub struct Graph {
    /// (digest, size, last access)
    pub manifests: Vec<(String, u64, i64)>,
    pub blobs: Vec<(String, u64, i64)>,
    /// (parent manifest, child digest)
    pub refs: Vec<(String, String)>,
    /// (upstream, repository, tag, manifest digest)
    pub tags: Vec<(String, String, String, String)>,
    /// (upstream, repository, manifest digest): where each was pulled through.
    pub repos: Vec<(String, String, String)>,
}

impl Index {
    /// Sets last-access times (ms) collected since the last flush; never
    /// moves one backwards.
    pub async fn touch(&self, batch: Vec<(String, i64)>) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.call(move |c| {
            let tx = c.transaction()?;
            {
                let mut m = tx.prepare_cached("UPDATE manifests SET last_access = max(last_access, ?2) WHERE digest = ?1")?;
                let mut b = tx.prepare_cached("UPDATE blobs SET last_access = max(last_access, ?2) WHERE digest = ?1")?;
                for (d, t) in &batch {
                    if m.execute(params![d, t])? == 0 {
                        b.execute(params![d, t])?;
                    }
                }
            }
            tx.commit()
        })
        .await
    }

    /// A consistent snapshot of objects, references and tags.
    pub async fn graph(&self) -> Result<Graph, IndexError> {
        self.call(|c| {
            let tx = c.transaction()?;
            let mut g = Graph::default();
            {
                let obj = |row: &rusqlite::Row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64, row.get::<_, i64>(2)?));
                let mut st = tx.prepare("SELECT digest, size, last_access FROM manifests")?;
                g.manifests = st.query_map([], obj)?.collect::<rusqlite::Result<_>>()?;
                let mut st = tx.prepare("SELECT digest, size, last_access FROM blobs")?;
                g.blobs = st.query_map([], obj)?.collect::<rusqlite::Result<_>>()?;
                let mut st = tx.prepare("SELECT manifest_digest, child_digest FROM manifest_refs")?;
                g.refs = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
                let mut st = tx.prepare(
                    "SELECT u.name, r.name, t.name, t.manifest_digest FROM tags t
                     JOIN repositories r ON r.id = t.repository_id JOIN upstreams u ON u.id = r.upstream_id",
                )?;
                g.tags = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect::<rusqlite::Result<_>>()?;
                let mut st = tx.prepare(
                    "SELECT u.name, r.name, rm.manifest_digest FROM repository_manifests rm
                     JOIN repositories r ON r.id = rm.repository_id JOIN upstreams u ON u.id = r.upstream_id",
                )?;
                g.repos = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
            }
            tx.commit()?;
            Ok(g)
        })
        .await
    }

    /// Removes evicted objects in one transaction: the `roots`, then each
    /// of `children` (manifests and blobs) that no remaining manifest
    /// references, re-checked here so that an image recorded since the
    /// plan was made keeps what it uses. Tags pointing at a removed
    /// manifest go too. Returns what was removed, with sizes.
    pub async fn evict(&self, roots: Vec<String>, children: Vec<String>) -> Result<Vec<(String, u64)>, IndexError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let mut gone = Vec::new();
            let root_set: std::collections::HashSet<&String> = roots.iter().collect();
            let referenced = |tx: &rusqlite::Transaction, d: &str| -> rusqlite::Result<bool> {
                tx.query_row("SELECT EXISTS (SELECT 1 FROM manifest_refs WHERE child_digest = ?1)", [d], |r| r.get(0))
            };
            for d in roots.iter().chain(children.iter()) {
                let is_root = root_set.contains(d);
                if !is_root && referenced(&tx, d)? {
                    continue;
                }
                let size: Option<i64> = tx.query_row("SELECT size FROM manifests WHERE digest = ?1", [d], |r| r.get(0)).optional()?;
                if let Some(size) = size {
                    tx.execute("DELETE FROM tags WHERE manifest_digest = ?1", [d])?;
                    tx.execute("DELETE FROM manifests WHERE digest = ?1", [d])?;
                    gone.push((d.clone(), size as u64));
                    continue;
                }
                let size: Option<i64> = tx.query_row("SELECT size FROM blobs WHERE digest = ?1", [d], |r| r.get(0)).optional()?;
                if let Some(size) = size {
                    tx.execute("DELETE FROM blobs WHERE digest = ?1", [d])?;
                    gone.push((d.clone(), size as u64));
                }
            }
            tx.commit()?;
            Ok(gone)
        })
        .await
    }

    /// Records a stored manifest found without a row (a rebuilt index): its
    /// type and references, with no repository (learned again on pulls).
    pub async fn adopt_manifest(&self, digest: &Digest, size: u64, info: &ManifestInfo, now: i64) -> Result<(), IndexError> {
        let (d, mt) = (digest.to_string(), info.media_type.clone());
        let is_index = info.kind == ManifestKind::Index;
        let refs: Vec<(String, &'static str)> =
            info.blobs.iter().map(|b| (b.to_string(), "blob")).chain(info.manifests.iter().map(|m| (m.to_string(), "manifest"))).collect();
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR IGNORE INTO manifests (digest, media_type, size, is_index, created_at, last_access) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![d, mt, size as i64, is_index, now],
            )?;
            for (child, kind) in &refs {
                tx.execute("INSERT OR IGNORE INTO manifest_refs (manifest_digest, child_digest, kind) VALUES (?1, ?2, ?3)", params![d, child, kind])?;
            }
            tx.commit()
        })
        .await
    }

    /// Forgets objects whose files are gone (repair at start).
    pub async fn forget(&self, digests: Vec<String>) -> Result<(), IndexError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            for d in &digests {
                tx.execute("DELETE FROM tags WHERE manifest_digest = ?1", [d])?;
                tx.execute("DELETE FROM manifests WHERE digest = ?1", [d])?;
                tx.execute("DELETE FROM blobs WHERE digest = ?1", [d])?;
            }
            tx.commit()
        })
        .await
    }

    /// (blobs, images): images are manifests no other manifest references.
    pub async fn counts(&self) -> Result<(u64, u64), IndexError> {
        self.call(|c| {
            c.query_row(
                "SELECT (SELECT count(*) FROM blobs),
                        (SELECT count(*) FROM manifests m WHERE NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child_digest = m.digest))",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        })
        .await
    }

    /// Bytes of every stored object the index knows.
    pub async fn total_size(&self) -> Result<u64, IndexError> {
        self.call(|c| {
            c.query_row("SELECT (SELECT coalesce(sum(size), 0) FROM blobs) + (SELECT coalesce(sum(size), 0) FROM manifests)", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .await
        .map(|n| n as u64)
    }
}

fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    // Fails fast on a file that is not a database, before any migration.
    c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
}

fn migrate(c: &mut Connection, shown: &str) -> Result<(), IndexError> {
    let open_err = |source| IndexError::Open { path: shown.to_owned(), source };
    let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(open_err)?;
    if version as usize > MIGRATIONS.len() {
        return Err(IndexError::TooNew { path: shown.to_owned(), found: version, known: MIGRATIONS.len() });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = c.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn repository_id(tx: &rusqlite::Transaction, upstream: &str, repo: &str) -> rusqlite::Result<i64> {
    tx.execute("INSERT OR IGNORE INTO upstreams (name) VALUES (?1)", [upstream])?;
    let uid: i64 = tx.query_row("SELECT id FROM upstreams WHERE name = ?1", [upstream], |r| r.get(0))?;
    tx.execute("INSERT OR IGNORE INTO repositories (upstream_id, name) VALUES (?1, ?2)", params![uid, repo])?;
    tx.query_row("SELECT id FROM repositories WHERE upstream_id = ?1 AND name = ?2", params![uid, repo], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tags_manifests_blobs_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        let repo = RepoName::parse("library/alpine").unwrap();
        let d = Digest::of(b"m");
        {
            let ix = Index::open(&path).unwrap();
            assert_eq!(ix.tags("docker.io", &repo).await.unwrap(), None);
            let info = ManifestInfo {
                kind: ManifestKind::Image,
                media_type: crate::oci::OCI_MANIFEST.into(),
                blobs: vec![Digest::of(b"c")],
                manifests: vec![],
            };
            ix.put_manifest("docker.io", &repo, &d, 1, &info, 5).await.unwrap();
            ix.set_tag("docker.io", &repo, "3.19", &d, 10).await.unwrap();
            ix.set_tag("docker.io", &repo, "3.18", &d, 11).await.unwrap();
            ix.put_blob(&Digest::of(b"c"), 1, 5).await.unwrap();
        }
        let ix = Index::open(&path).unwrap();
        assert_eq!(ix.tag("docker.io", &repo, "3.19").await.unwrap(), Some(TagRow { digest: d.clone(), fetched_at: 10 }));
        assert_eq!(ix.tag("ghcr.io", &repo, "3.19").await.unwrap(), None);
        assert_eq!(ix.tags("docker.io", &repo).await.unwrap(), Some(vec!["3.18".into(), "3.19".into()]));
        assert_eq!(ix.manifest(&d).await.unwrap().unwrap().size, 1);
        assert_eq!(ix.blob(&Digest::of(b"c")).await.unwrap(), Some(1));
        assert_eq!(ix.all_objects().await.unwrap().len(), 2);
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let e = Index::open(&path).err().unwrap().to_string();
        assert!(e.contains("index.db") && e.contains("rebuilt"), "{e}");
    }
}
