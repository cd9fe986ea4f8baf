//! What the cache holds, image by image, for `regmirror ls`.

use super::{Mirror, MirrorError};
use std::collections::{HashMap, HashSet};

/// One cached image: a manifest that no other stored manifest references.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageRow {
    pub registry: String,
    pub repository: String,
    /// `None` for an image pulled by digest only.
    pub tag: Option<String>,
    pub digest: String,
    /// Bytes of the image's manifests and blobs that are stored.
    pub size: u64,
    /// When it was last pulled (ms since the epoch).
    pub last_pulled: i64,
    pub pinned: bool,
}

impl Mirror {
    /// Every cached image, one row per tag (or per repository for an image
    /// pulled by digest), sorted by registry, repository and tag.
    pub async fn images(&self) -> Result<Vec<ImageRow>, MirrorError> {
        self.flush_access().await?;
        let g = self.index.graph().await?;
        let size: HashMap<&str, u64> =
            g.manifests.iter().map(|m| (m.0.as_str(), m.1)).chain(g.blobs.iter().map(|b| (b.0.as_str(), b.1))).collect();
        let last: HashMap<&str, i64> = g.manifests.iter().map(|m| (m.0.as_str(), m.2)).collect();
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for (p, c) in &g.refs {
            children.entry(p).or_default().push(c);
        }
        let referenced: HashSet<&str> = g.refs.iter().filter(|(p, _)| last.contains_key(p.as_str())).map(|(_, c)| c.as_str()).collect();
        let mut rows = Vec::new();
        for (root, _, _) in g.manifests.iter().filter(|m| !referenced.contains(m.0.as_str())) {
            // The image's stored objects and latest access, walking its children.
            let (mut bytes, mut latest, mut seen, mut stack) = (0u64, 0i64, HashSet::new(), vec![root.as_str()]);
            while let Some(d) = stack.pop() {
                if seen.insert(d) {
                    bytes += size.get(d).copied().unwrap_or(0);
                    latest = latest.max(last.get(d).copied().unwrap_or(0));
                    stack.extend(children.get(d).into_iter().flatten().copied());
                }
            }
            let tags: Vec<_> = g.tags.iter().filter(|t| &t.3 == root).collect();
            let row = |registry: &str, repository: &str, tag: Option<&str>| ImageRow {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
                tag: tag.map(str::to_owned),
                digest: root.clone(),
                size: bytes,
                last_pulled: latest,
                pinned: tag.is_some_and(|t| self.limits.pins.iter().any(|p| p.matches(registry, repository, t))),
            };
            if tags.is_empty() {
                for (u, r, _) in g.repos.iter().filter(|r| &r.2 == root) {
                    rows.push(row(u, r, None));
                }
            } else {
                rows.extend(tags.iter().map(|(u, r, t, _)| row(u, r, Some(t))));
            }
        }
        rows.sort_by(|a, b| (&a.registry, &a.repository, &a.tag).cmp(&(&b.registry, &b.repository, &b.tag)));
        Ok(rows)
    }
}
