//! The mirror: a local hit, or an upstream fetch that is verified, stored
//! and indexed on its way to the client.
//!
//! [`Mirror`] owns everything stateful: the upstream clients, the store, the
//! index, the in-memory caches, the fills in flight and the background tasks
//! they run on. The HTTP layer asks it questions in OCI terms (a target
//! repository, a reference, an Accept list, a range) and gets answers or a
//! [`MirrorError`]; it never sees a file, a row or an upstream response.

mod error;
pub mod evict;
pub mod fill;
mod lifecycle;
mod listing;
mod range;

pub use error::{ForObject, MirrorError, Object};
pub use lifecycle::{Reconciled, SweepReport, VerifyReport};
pub use listing::ImageRow;
pub use range::ByteRange;

use crate::clock::Clock;
use crate::config::Config;
use crate::index::{Index, TagRow};
use crate::oci::{accepts, parse_manifest, Digest, Reference, RepoName, Tag, MAX_MANIFEST_SIZE};
use crate::store::{ByteStream, Store};
use crate::upstream::{Upstream, UpstreamError};
use bytes::Bytes;
use fill::{FillContext, Fills};
use moka::future::Cache;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// A manifest exactly as the upstream served it.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// Where an answer came from, for the request log and the headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// From the cache, without asking the upstream (or after it confirmed).
    Hit,
    /// Fetched from the upstream for this request.
    Miss,
    /// From the cache because the upstream could not be asked.
    Stale,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hit => "hit",
            Source::Miss => "miss",
            Source::Stale => "stale",
        }
    }
}

pub struct ManifestAnswer {
    pub manifest: Arc<Manifest>,
    pub source: Source,
}

pub struct BlobAnswer {
    /// The blob's size; `None` only for a cold blob whose upstream sent no length.
    pub size: Option<u64>,
    /// The range served, for a `206`.
    pub range: Option<Range<u64>>,
    /// `None` for a `HEAD`.
    pub body: Option<ByteStream>,
    pub source: Source,
}

/// A repository on one upstream: what a request resolves to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    upstream: usize,
    pub repo: RepoName,
}

struct UpstreamEntry {
    client: Arc<Upstream>,
    tag_ttl: Duration,
    /// Docker Hub's `library/` rule applies.
    docker_hub: bool,
    /// Repository patterns clients may pull; empty: all.
    allowed: Vec<String>,
}

/// `library/*` matches `library/alpine` and `library/a/b`; otherwise exact.
fn repo_allowed(patterns: &[String], repo: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.strip_suffix('*').map_or(p == repo, |prefix| repo.starts_with(prefix)))
}

type TagKey = (usize, RepoName, Tag);

pub struct Mirror {
    upstreams: Vec<UpstreamEntry>,
    offline: bool,
    index: Index,
    store: Arc<dyn Store>,
    clock: Clock,
    /// Hot manifests by digest; `try_get_with` on it coalesces concurrent
    /// fetches of one digest.
    manifests: Cache<Digest, Arc<Manifest>>,
    /// Tag targets in front of the index.
    tags: Cache<TagKey, TagRow>,
    /// Coalesces concurrent refreshes of one tag; entries live only while
    /// a refresh runs.
    tag_flights: Cache<TagKey, (Arc<Manifest>, Source)>,
    /// Requests waiting on a tag refresh (their own or another's).
    tag_waiters: AtomicUsize,
    fills: Arc<Fills>,
    fill_ctx: Arc<FillContext>,
    tasks: TaskTracker,
    metrics: Arc<crate::metrics::Metrics>,
    /// Cap, watermarks, idle limit and pins: what the sweeper enforces.
    limits: lifecycle::StoreLimits,
    /// Bytes stored, kept current between sweeps; wakes the sweeper when a
    /// write crosses the high watermark.
    usage: Arc<lifecycle::Usage>,
    /// Last-access times not yet written to the index (batched).
    touched: std::sync::Mutex<std::collections::HashMap<Digest, i64>>,
    /// One sweep at a time (the background one or `regmirror gc`).
    sweep_lock: tokio::sync::Mutex<()>,
    /// Stops the background sweeper.
    cancel: tokio_util::sync::CancellationToken,
}

impl Mirror {
    pub fn new(config: &Config, store: Arc<dyn Store>, index: Index, clock: Clock) -> Result<Mirror, String> {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let upstreams = config
            .upstream
            .iter()
            .map(|u| {
                Ok(UpstreamEntry {
                    client: Arc::new(Upstream::new(u, metrics.clone())?),
                    tag_ttl: config.tag_ttl(u),
                    docker_hub: u.name == "docker.io",
                    allowed: u.repositories.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let tasks = TaskTracker::new();
        let names: Vec<&str> = config.upstream.iter().map(|u| u.name.as_str()).collect();
        let pins = config.cache.pin.iter().map(|p| evict::Pin::parse(p, &names)).collect::<Result<Vec<_>, String>>()?;
        let limits = lifecycle::StoreLimits {
            watermarks: config.storage.watermarks(),
            max_idle: config.cache.max_idle,
            sweep_interval: config.cache.sweep_interval,
            pins,
        };
        let usage = Arc::new(lifecycle::Usage::new(limits.watermarks.map(|w| w.0)));
        let cancel = tokio_util::sync::CancellationToken::new();
        Ok(Mirror {
            upstreams,
            offline: config.offline,
            fill_ctx: Arc::new(FillContext {
                store: store.clone(),
                index: index.clone(),
                clock: clock.clone(),
                tasks: tasks.clone(),
                usage: usage.clone(),
                cancel: cancel.clone(),
                grace: config.server.shutdown_grace,
            }),
            index,
            store,
            clock,
            manifests: Cache::builder().max_capacity(config.cache.memory_manifests).build(),
            tags: Cache::builder().max_capacity(100_000).build(),
            tag_flights: Cache::builder().build(),
            tag_waiters: AtomicUsize::new(0),
            fills: Arc::new(Fills::default()),
            tasks,
            limits,
            usage,
            metrics,
            touched: Default::default(),
            sweep_lock: tokio::sync::Mutex::new(()),
            cancel,
        })
    }

    /// The process's metrics (recorded by every layer).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The metrics text, with the gauges that describe state read now.
    pub async fn metrics_text(&self) -> Result<String, MirrorError> {
        let (blobs, images) = self.index.counts().await?;
        let m = &self.metrics;
        m.store_bytes.set(self.usage.bytes());
        m.store_blobs.set(blobs as i64);
        m.store_images.set(images as i64);
        let (fills, clients) = self.fills.in_flight();
        m.downloads_in_flight.set(fills as i64);
        m.download_clients.set(clients as i64);
        Ok(m.encode())
    }

    /// Whether the mirror can serve: the index answers and the store takes a
    /// new file. The error says which part failed.
    pub async fn ready(&self) -> Result<(), String> {
        self.index.counts().await.map_err(|e| format!("the index does not answer: {e}"))?;
        self.store.spool().await.map_err(|e| format!("the store cannot create a file: {e}"))?;
        Ok(())
    }

    /// Requests waiting right now on an upstream tag lookup.
    pub fn tag_waiters(&self) -> usize {
        self.tag_waiters.load(Ordering::SeqCst)
    }

    /// Clients streaming right now from the download of `digest`, or `None`
    /// when it is not being downloaded.
    pub fn fill_readers(&self, digest: &Digest) -> Option<usize> {
        self.fills.readers(digest)
    }

    /// Stops the sweeper and gives the downloads in flight the grace period.
    pub fn begin_shutdown(&self) {
        self.cancel.cancel();
    }

    /// Stops the sweeper, waits for the downloads in flight to end (at most
    /// the grace period after [`Mirror::begin_shutdown`]), and writes the
    /// last access times.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Err(e) = self.flush_access().await {
            tracing::warn!(error = %e, "could not record the last access times at shutdown");
        }
    }

    /// Decides which upstream and repository a request means: containerd's
    /// `?ns=`, else a first path component that names an upstream
    /// (`/v2/ghcr.io/org/app/...`), else the first upstream. An `ns` that
    /// names no configured upstream is refused.
    pub fn route(&self, ns: Option<&str>, raw_name: &str) -> Result<Target, MirrorError> {
        let (upstream, name) = match ns {
            Some(ns) => (
                self.upstreams
                    .iter()
                    .position(|u| u.client.name() == ns)
                    .ok_or_else(|| MirrorError::UnknownRegistry(ns.chars().take(100).collect()))?,
                raw_name,
            ),
            None => match raw_name
                .split_once('/')
                .and_then(|(first, rest)| self.upstreams.iter().position(|u| u.client.name() == first).map(|i| (i, rest)))
            {
                Some(found) => found,
                None => (0, raw_name),
            },
        };
        let repo = RepoName::parse(name).map_err(MirrorError::Name)?;
        let repo = if self.upstreams[upstream].docker_hub { repo.with_library_prefix() } else { repo };
        if !repo_allowed(&self.upstreams[upstream].allowed, repo.as_str()) {
            return Err(MirrorError::NotAllowed { registry: self.upstreams[upstream].client.name().to_owned(), repo: repo.to_string() });
        }
        Ok(Target { upstream, repo })
    }

    /// The registry name a target is on (for `OCI-Namespace` and logs).
    pub fn registry(&self, t: &Target) -> &str {
        self.upstreams[t.upstream].client.name()
    }

    fn offline_error(&self, t: &Target, what: Object, reference: String) -> MirrorError {
        MirrorError::Offline { what, reference: format!("{}/{}@{}", self.registry(t), t.repo, reference) }
    }

    // ---- manifests ----

    /// A manifest by tag or digest.
    pub async fn manifest(&self, t: &Target, reference: &Reference, accept: &[String]) -> Result<ManifestAnswer, MirrorError> {
        let a = match reference {
            Reference::Digest(d) => self.manifest_by_digest(t, d, accept).await?,
            Reference::Tag(tag) => self.manifest_by_tag(t, tag, accept).await?,
        };
        self.touch(&a.manifest.digest);
        Ok(a)
    }

    /// A stored manifest, from memory or from the store.
    async fn local_manifest(&self, d: &Digest) -> Result<Option<Arc<Manifest>>, MirrorError> {
        if let Some(m) = self.manifests.get(d).await {
            return Ok(Some(m));
        }
        let Some(row) = self.index.manifest(d).await? else {
            return Ok(None);
        };
        let Some(bytes) = self.store.read_small(d, MAX_MANIFEST_SIZE).await.map_err(MirrorError::store)? else {
            tracing::warn!(digest = %d, "manifest is in the index but not in the store; fetching it again");
            return Ok(None);
        };
        let m = Arc::new(Manifest { digest: d.clone(), media_type: row.media_type, bytes });
        self.manifests.insert(d.clone(), m.clone()).await;
        Ok(Some(m))
    }

    async fn manifest_by_digest(&self, t: &Target, d: &Digest, accept: &[String]) -> Result<ManifestAnswer, MirrorError> {
        let (m, source) = match self.local_manifest(d).await? {
            Some(m) => (m, Source::Hit),
            None if self.offline => return Err(self.offline_error(t, Object::Manifest, d.to_string())),
            None => {
                let up = self.upstreams[t.upstream].client.clone();
                let m = self
                    .manifests
                    .try_get_with(d.clone(), self.fetch_manifest(&up, &t.repo, &d.to_string(), accept, Some(d)))
                    .await
                    .map_err(|e| (*e).clone())?;
                (m, Source::Miss)
            }
        };
        if !accepts(accept, &m.media_type) {
            return Err(MirrorError::NotAcceptable { media_type: m.media_type.clone() });
        }
        Ok(ManifestAnswer { manifest: m, source })
    }

    /// Fetches, verifies, stores and indexes a manifest.
    async fn fetch_manifest(
        &self,
        up: &Upstream,
        repo: &RepoName,
        reference: &str,
        accept: &[String],
        expect: Option<&Digest>,
    ) -> Result<Arc<Manifest>, MirrorError> {
        let fm = up.get_manifest(repo, reference, accept).await.map_err(|e| MirrorError::from_upstream(e, Object::Manifest, reference))?;
        let digest = Digest::of(&fm.bytes);
        if let Some(expected) = expect.or(fm.digest.as_ref()) {
            if expected != &digest {
                return Err(MirrorError::DigestMismatch { expected: expected.clone(), actual: digest });
            }
        }
        let info = parse_manifest(&fm.bytes, &fm.media_type).map_err(MirrorError::ManifestInvalid)?;
        self.store.put(&digest, fm.bytes.clone()).await.map_err(MirrorError::store)?;
        up.count_bytes(fm.bytes.len() as u64);
        self.index.put_manifest(up.name(), repo, &digest, fm.bytes.len() as u64, &info, self.clock.now_ms()).await?;
        self.usage.add(fm.bytes.len() as u64);
        let m = Arc::new(Manifest { digest: digest.clone(), media_type: info.media_type, bytes: fm.bytes });
        self.manifests.insert(digest, m.clone()).await;
        Ok(m)
    }

    async fn tag_row(&self, key: &TagKey) -> Result<Option<TagRow>, MirrorError> {
        if let Some(r) = self.tags.get(key).await {
            return Ok(Some(r));
        }
        let row = self.index.tag(self.upstreams[key.0].client.name(), &key.1, key.2.as_str()).await?;
        if let Some(r) = &row {
            self.tags.insert(key.clone(), r.clone()).await;
        }
        Ok(row)
    }

    async fn set_tag(&self, key: &TagKey, d: &Digest) -> Result<(), MirrorError> {
        let now = self.clock.now_ms();
        self.index.set_tag(self.upstreams[key.0].client.name(), &key.1, key.2.as_str(), d, now).await?;
        self.tags.insert(key.clone(), TagRow { digest: d.clone(), fetched_at: now }).await;
        Ok(())
    }

    async fn manifest_by_tag(&self, t: &Target, tag: &Tag, accept: &[String]) -> Result<ManifestAnswer, MirrorError> {
        let entry = &self.upstreams[t.upstream];
        let key: TagKey = (t.upstream, t.repo.clone(), tag.clone());
        let row = self.tag_row(&key).await?;
        if let Some(row) = &row {
            let age = self.clock.now_ms().saturating_sub(row.fetched_at);
            if self.offline || age < entry.tag_ttl.as_millis() as i64 {
                if let Some(m) = self.local_manifest(&row.digest).await? {
                    if accepts(accept, &m.media_type) {
                        return Ok(ManifestAnswer { manifest: m, source: Source::Hit });
                    }
                }
            }
        }
        if self.offline {
            return Err(self.offline_error(t, Object::Manifest, tag.to_string()));
        }
        self.tag_waiters.fetch_add(1, Ordering::SeqCst);
        let refreshed = self.tag_flights.try_get_with(key.clone(), self.refresh_tag(&key, row.clone(), accept)).await;
        self.tag_waiters.fetch_sub(1, Ordering::SeqCst);
        self.tag_flights.invalidate(&key).await;
        match refreshed {
            Ok((m, source)) if accepts(accept, &m.media_type) => Ok(ManifestAnswer { manifest: m, source }),
            Ok(_) => {
                // Another client's refresh got a type this one does not
                // accept: ask for this client's types, leave the tag alone.
                let m = self.fetch_manifest(&entry.client, &t.repo, tag.as_str(), accept, None).await?;
                Ok(ManifestAnswer { manifest: m, source: Source::Miss })
            }
            Err(e) if e.is_outage() => {
                if let Some(row) = &row {
                    if let Some(m) = self.local_manifest(&row.digest).await? {
                        tracing::warn!(registry = self.registry(t), repo = %t.repo, %tag, error = %e, "upstream unavailable; serving the cached tag stale");
                        return Ok(ManifestAnswer { manifest: m, source: Source::Stale });
                    }
                }
                Err((*e).clone())
            }
            Err(e) => Err((*e).clone()),
        }
    }

    /// Revalidates a stale tag with a `HEAD` (free on Docker Hub), or
    /// fetches it when it is new or has moved.
    async fn refresh_tag(&self, key: &TagKey, row: Option<TagRow>, accept: &[String]) -> Result<(Arc<Manifest>, Source), MirrorError> {
        let up = &self.upstreams[key.0].client;
        let tag = key.2.as_str();
        if let Some(row) = row {
            if let Some(m) = self.local_manifest(&row.digest).await? {
                let head = up.head_manifest(&key.1, tag, accept).await.map_err(|e| MirrorError::from_upstream(e, Object::Manifest, tag))?;
                if head.digest.as_ref() == Some(&row.digest) {
                    self.set_tag(key, &row.digest).await?;
                    return Ok((m, Source::Hit));
                }
            }
        }
        let m = self.fetch_manifest(up, &key.1, tag, accept, None).await?;
        self.set_tag(key, &m.digest).await?;
        Ok((m, Source::Miss))
    }

    // ---- blobs ----

    /// A blob, or a range of it; `head` answers without a body.
    pub async fn blob(&self, t: &Target, d: &Digest, range: Option<ByteRange>, head: bool) -> Result<BlobAnswer, MirrorError> {
        if let Some(a) = self.stored_blob(d, range, head).await? {
            self.touch(d);
            return Ok(a);
        }
        if self.offline {
            return Err(self.offline_error(t, Object::Blob, d.to_string()));
        }
        let up = self.upstreams[t.upstream].client.clone();
        if head && self.fills.get(d).is_none() {
            // Not worth a download: the client may never ask for the body.
            let size = up.head_blob(&t.repo, d).await.map_err(|e| MirrorError::from_upstream(e, Object::Blob, &d.to_string()))?;
            let r = match (range, size) {
                (Some(r), Some(s)) => Some(r.resolve(s)?),
                _ => None,
            };
            return Ok(BlobAnswer { size, range: r, body: None, source: Source::Miss });
        }
        let Some(fill) = self.fills.join_or_start(&self.fill_ctx, up, t.repo.clone(), d.clone()).await? else {
            // Stored between our two looks.
            return self
                .stored_blob(d, range, head)
                .await?
                .ok_or_else(|| MirrorError::Internal("blob vanished right after it was stored".into()));
        };
        let started = fill.started().await.map_err(|e| e.for_object(Object::Blob, d))?;
        let (size, r) = match range {
            None => (started.size(), None),
            Some(r) => {
                let size = fill.sized().await.map_err(|e| e.for_object(Object::Blob, d))?;
                (Some(size), Some(r.resolve(size)?))
            }
        };
        let body = (!head).then(|| fill.reader(r.clone()));
        Ok(BlobAnswer { size, range: r, body, source: Source::Miss })
    }

    async fn stored_blob(&self, d: &Digest, range: Option<ByteRange>, head: bool) -> Result<Option<BlobAnswer>, MirrorError> {
        let Some(size) = self.store.stat(d).await.map_err(MirrorError::store)? else {
            return Ok(None);
        };
        let r = range.map(|r| r.resolve(size)).transpose()?;
        let body = if head {
            None
        } else {
            match self.store.read(d, r.clone().unwrap_or(0..size)).await.map_err(MirrorError::store)? {
                Some(b) => Some(b),
                None => return Ok(None),
            }
        };
        Ok(Some(BlobAnswer { size: Some(size), range: r, body, source: Source::Hit }))
    }

    // ---- tags ----

    /// The repository's tags, sorted: from the upstream, or from the index
    /// when the upstream cannot be asked.
    pub async fn tags(&self, t: &Target) -> Result<(Vec<String>, Source), MirrorError> {
        let mut outage = None;
        if !self.offline {
            match self.upstreams[t.upstream].client.tags(&t.repo).await {
                Ok(tags) => return Ok((tags, Source::Miss)),
                Err(e) if e.is_outage() => outage = Some(e),
                Err(e) => return Err(MirrorError::from_upstream(e, Object::Repository, t.repo.as_str())),
            }
        }
        match self.index.tags(self.registry(t), &t.repo).await? {
            Some(tags) => Ok((tags, if self.offline { Source::Hit } else { Source::Stale })),
            None => Err(match outage {
                Some(e) => MirrorError::from_upstream(e, Object::Repository, t.repo.as_str()),
                None => self.offline_error(t, Object::Repository, "tags".into()),
            }),
        }
    }
}

impl From<crate::index::IndexError> for MirrorError {
    fn from(e: crate::index::IndexError) -> Self {
        MirrorError::Index(Arc::new(e))
    }
}

impl From<UpstreamError> for MirrorError {
    fn from(e: UpstreamError) -> Self {
        MirrorError::Upstream(e)
    }
}
