//! The store's lifecycle: last-access bookkeeping (batched), sweeps that
//! keep it under its cap and evict idle images, the background task that
//! runs them, and the repair of a crash's leftovers at start.

use super::evict::{self, Limits, Pin, Plan};
use super::{Mirror, MirrorError};
use crate::oci::Digest;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How often batched last-access times are written to the index.
const FLUSH_EVERY: Duration = Duration::from_secs(10);

pub(super) struct StoreLimits {
    /// (high, low) in bytes when `storage.max_size` is set.
    pub watermarks: Option<(u64, u64)>,
    pub max_idle: Option<Duration>,
    pub sweep_interval: Duration,
    pub pins: Vec<Pin>,
}

/// Bytes in the store, between sweeps.
pub struct Usage {
    bytes: AtomicU64,
    high: Option<u64>,
    wake: Notify,
}

impl Usage {
    pub fn new(high: Option<u64>) -> Usage {
        Usage { bytes: AtomicU64::new(0), high, wake: Notify::new() }
    }

    /// Counts a new object; wakes the sweeper when this crosses the cap.
    pub fn add(&self, n: u64) {
        let now = self.bytes.fetch_add(n, Ordering::SeqCst) + n;
        if self.high.is_some_and(|h| now > h) {
            self.wake.notify_one();
        }
    }

    fn set(&self, n: u64) {
        self.bytes.store(n, Ordering::SeqCst);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// What a sweep did (or, dry, would do).
#[derive(Debug, Clone)]
pub struct SweepReport {
    pub plan: Plan,
    pub dry_run: bool,
}

impl std::fmt::Display for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run { "would evict" } else { "evicted" };
        let p = &self.plan;
        for img in &p.images {
            let when = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(img.last_access.max(0) as u64));
            let names = if img.names.is_empty() { "(untagged)".to_owned() } else { img.names.join(", ") };
            writeln!(f, "{verb} {names} {} last pulled {when}, frees {}", img.digest, bytesize::ByteSize(img.freed))?;
        }
        let freed = p.before - p.after;
        write!(
            f,
            "{} {} image(s), {}; store {} -> {}",
            if self.dry_run { "would free" } else { "freed" },
            p.images.len(),
            bytesize::ByteSize(freed),
            bytesize::ByteSize(p.before),
            bytesize::ByteSize(p.after)
        )
    }
}

/// What the repair at start found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub temp_files_removed: usize,
    /// Index rows whose file was gone.
    pub rows_forgotten: usize,
    /// Verified files (they only reach the store after verification) that
    /// had no row, recorded as blobs.
    pub files_adopted: usize,
}

impl Mirror {
    /// Notes that an object was used now (written to the index in batches).
    pub(super) fn touch(&self, d: &Digest) {
        let now = self.clock.now_ms();
        self.touched.lock().expect("touch lock: no panics while held").insert(d.clone(), now);
    }

    /// Writes the batched last-access times.
    pub async fn flush_access(&self) -> Result<(), MirrorError> {
        let batch: Vec<(String, i64)> = std::mem::take(&mut *self.touched.lock().expect("touch lock: no panics while held"))
            .into_iter()
            .map(|(d, t)| (d.to_string(), t))
            .collect();
        Ok(self.index.touch(batch).await?)
    }

    /// Evicts what the cap and `max_idle` require (or, `dry_run`, reports it).
    pub async fn sweep(&self, dry_run: bool) -> Result<SweepReport, MirrorError> {
        let _one = self.sweep_lock.lock().await;
        self.flush_access().await?;
        let graph = self.index.graph().await?;
        let total: u64 = graph.manifests.iter().map(|m| m.1).chain(graph.blobs.iter().map(|b| b.1)).sum();
        let limits = Limits {
            down_to: self.limits.watermarks.and_then(|(high, low)| (total > high).then_some(low)),
            idle_before: self.limits.max_idle.map(|d| self.clock.now_ms() - d.as_millis() as i64),
        };
        let plan = evict::plan(&graph, &self.limits.pins, limits);
        if !dry_run && !plan.roots.is_empty() {
            let gone = self.index.evict(plan.roots.clone(), plan.children.clone()).await?;
            for (d, _) in &gone {
                let Ok(d) = d.parse::<Digest>() else { continue };
                // The row is gone first: nothing points at the file any more.
                if let Err(e) = self.store.delete(&d).await {
                    tracing::warn!(digest = %d, error = %e, "evicted object could not be deleted; it is removed at the next start");
                }
                self.manifests.invalidate(&d).await;
            }
            self.tags.invalidate_all();
            self.metrics.evicted_images.inc_by(plan.images.len() as u64);
            self.metrics.evicted_bytes.inc_by(gone.iter().map(|(_, n)| n).sum());
        }
        let report = SweepReport { plan, dry_run };
        if !report.plan.images.is_empty() && !dry_run {
            tracing::info!(
                images = report.plan.images.len(),
                freed = report.plan.before - report.plan.after,
                size = report.plan.after,
                "evicted"
            );
        }
        self.usage.set(self.index.total_size().await?);
        Ok(report)
    }

    /// Repairs what a crash can leave: temp files, rows whose file is gone,
    /// files without a row.
    pub async fn reconcile(&self) -> Result<Reconciled, MirrorError> {
        let mut r = Reconciled { temp_files_removed: self.store.sweep_temp().await.map_err(MirrorError::store)?, ..Default::default() };
        let files = self.store.list().await.map_err(MirrorError::store)?;
        let on_disk: HashSet<&Digest> = files.iter().map(|(d, _)| d).collect();
        let rows = self.index.all_objects().await?;
        let known: HashSet<&Digest> = rows.iter().map(|(d, _)| d).collect();
        let missing: Vec<String> = rows.iter().filter(|(d, _)| !on_disk.contains(d)).map(|(d, _)| d.to_string()).collect();
        r.rows_forgotten = missing.len();
        self.index.forget(missing).await?;
        let now = self.clock.now_ms();
        for (d, size) in files.iter().filter(|(d, _)| !known.contains(d)) {
            // A manifest is known by its content (after the index was lost or
            // rebuilt), so that it is served with its type again.
            let manifest = if *size <= crate::oci::MAX_MANIFEST_SIZE as u64 {
                match self.store.read_small(d, crate::oci::MAX_MANIFEST_SIZE).await {
                    Ok(Some(bytes)) => crate::oci::parse_manifest(&bytes, "").ok().filter(|i| crate::oci::is_manifest_type(&i.media_type)),
                    _ => None,
                }
            } else {
                None
            };
            match manifest {
                Some(info) => self.index.adopt_manifest(d, *size, &info, now).await?,
                None => self.index.put_blob(d, *size, now).await?,
            }
            r.files_adopted += 1;
        }
        self.usage.set(self.index.total_size().await?);
        tracing::info!(
            temp_files_removed = r.temp_files_removed,
            rows_forgotten = r.rows_forgotten,
            files_adopted = r.files_adopted,
            size = self.usage.bytes.load(Ordering::SeqCst),
            "store reconciled"
        );
        Ok(r)
    }

    /// Starts the owned background task: flushes last-access times, and
    /// sweeps on its interval and when a write crosses the high watermark.
    /// [`Mirror::shutdown`] stops it.
    pub fn start_background(self: &Arc<Self>) {
        let me = self.clone();
        self.tasks.spawn(async move {
            let mut last_sweep = tokio::time::Instant::now();
            loop {
                let woken = tokio::select! {
                    _ = me.cancel.cancelled() => break,
                    _ = tokio::time::sleep(FLUSH_EVERY.min(me.limits.sweep_interval)) => false,
                    _ = me.usage.wake.notified() => true,
                };
                if let Err(e) = me.flush_access().await {
                    tracing::warn!(error = %e, "could not record last access times");
                }
                if woken || last_sweep.elapsed() >= me.limits.sweep_interval {
                    last_sweep = tokio::time::Instant::now();
                    if let Err(e) = me.sweep(false).await {
                        tracing::error!(error = %e, "sweep failed; the store may stay over its cap until the next one");
                    }
                }
            }
        });
    }
}

/// What `regmirror verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub objects: usize,
    pub bytes: u64,
    /// Each problem, in words an operator can act on.
    pub problems: Vec<String>,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        write!(f, "checked {} objects, {} re-hashed; {} problem(s)", self.objects, bytesize::ByteSize(self.bytes), self.problems.len())?;
        if !self.problems.is_empty() {
            write!(f, "\nto repair: restart `regmirror serve` (it drops index rows whose file is gone); delete a corrupt file under blobs/ and it is fetched again")?;
        }
        Ok(())
    }
}

impl Mirror {
    /// Re-hashes every stored object and checks the index against the files:
    /// every row has a file of the recorded size, every file has a row, every
    /// manifest parses, every tag points at a stored manifest.
    pub async fn verify(&self) -> Result<VerifyReport, MirrorError> {
        use futures_util::StreamExt;
        let mut r = VerifyReport::default();
        let files = self.store.list().await.map_err(MirrorError::store)?;
        let graph = self.index.graph().await?;
        let rows: std::collections::HashMap<&str, u64> =
            graph.manifests.iter().map(|m| (m.0.as_str(), m.1)).chain(graph.blobs.iter().map(|b| (b.0.as_str(), b.1))).collect();
        let manifests: HashSet<&str> = graph.manifests.iter().map(|m| m.0.as_str()).collect();
        let on_disk: std::collections::HashMap<String, u64> = files.iter().map(|(d, s)| (d.to_string(), *s)).collect();
        for (d, size) in &files {
            r.objects += 1;
            let Some(mut body) = self.store.read(d, 0..*size).await.map_err(MirrorError::store)? else { continue };
            let mut v = Digest::verifier();
            while let Some(chunk) = body.next().await {
                v.update(&chunk.map_err(MirrorError::store)?);
            }
            r.bytes += v.len();
            let actual = v.finish();
            if &actual != d {
                r.problems.push(format!("{d}: the file's content hashes to {actual}; it is corrupt"));
            }
            match rows.get(d.to_string().as_str()) {
                None => r.problems.push(format!("{d}: file without an index row")),
                Some(s) if s != size => r.problems.push(format!("{d}: the index says {s} bytes, the file has {size}")),
                _ => {}
            }
            if manifests.contains(d.to_string().as_str()) {
                let Some(bytes) = self.store.read_small(d, crate::oci::MAX_MANIFEST_SIZE).await.map_err(MirrorError::store)? else {
                    continue;
                };
                let mt = self.index.manifest(d).await?.map(|m| m.media_type).unwrap_or_default();
                if let Err(e) = crate::oci::parse_manifest(&bytes, &mt) {
                    r.problems.push(format!("{d}: stored manifest does not parse: {e}"));
                }
            }
        }
        for (d, _) in rows.iter().filter(|(d, _)| !on_disk.contains_key(**d)) {
            r.problems.push(format!("{d}: index row without a file"));
        }
        for (u, repo, tag, d) in &graph.tags {
            if !manifests.contains(d.as_str()) {
                r.problems.push(format!("tag {u}/{repo}:{tag} points at {d}, which is not a stored manifest"));
            }
        }
        Ok(r)
    }
}
