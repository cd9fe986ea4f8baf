//! Keeping the store under its cap, an image at a time.
//!
//! The unit of eviction is the image: a manifest that no other stored
//! manifest references (a root). The least recently pulled roots go first,
//! each with every child manifest and blob that no remaining manifest
//! references, so a multi-arch index goes with its platform manifests and a
//! layer shared with a remaining image stays. Blobs that no manifest
//! references at all compete by their own last access. Pinned images and
//! everything they reference are never evicted.
//!
//! Planning is a pure function over a snapshot of the index ([`plan`]);
//! applying removes the index rows first (re-checking references in the same
//! transaction) and the files after, so the index never points at a file
//! that is gone. A reader with the file open keeps reading after the unlink.

use crate::index::Graph;
use crate::oci::{RepoName, Tag};
use std::collections::{HashMap, HashSet};

/// A pin from `cache.pin`: an upstream, a repository, a tag or every tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub upstream: String,
    pub repo: RepoName,
    /// `None`: every tag.
    pub tag: Option<Tag>,
}

impl Pin {
    /// Parses `[registry/]repository:tag|*`; `upstreams` are the configured
    /// registry names, the first being the default; `docker.io` gets the
    /// `library/` rule.
    pub fn parse(s: &str, upstreams: &[&str]) -> Result<Pin, String> {
        let bad = |why: &str| format!("`cache.pin` entry {s:?}: {why}");
        let (path, tag) = s.rsplit_once(':').ok_or_else(|| bad("expected repository:tag"))?;
        let (upstream, repo) = match path.split_once('/') {
            Some((first, rest)) if upstreams.contains(&first) => (first, rest),
            _ => (*upstreams.first().ok_or_else(|| bad("no upstream is configured"))?, path),
        };
        let mut repo = RepoName::parse(repo).map_err(|e| bad(&e.to_string()))?;
        if upstream == "docker.io" {
            repo = repo.with_library_prefix();
        }
        let tag = if tag == "*" { None } else { Some(Tag::parse(tag).map_err(|e| bad(&e.to_string()))?) };
        Ok(Pin { upstream: upstream.to_owned(), repo, tag })
    }

    pub fn matches(&self, upstream: &str, repo: &str, tag: &str) -> bool {
        self.upstream == upstream && self.repo.as_str() == repo && self.tag.as_ref().is_none_or(|t| t.as_str() == tag)
    }
}

/// What to evict and why.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub images: Vec<EvictedImage>,
    /// Roots, in eviction order.
    pub roots: Vec<String>,
    /// Child manifests and blobs that go with them.
    pub children: Vec<String>,
    /// Store size before, and after the plan is applied.
    pub before: u64,
    pub after: u64,
}

#[derive(Debug, Clone)]
pub struct EvictedImage {
    pub digest: String,
    /// `registry/repository:tag` names that pointed at it.
    pub names: Vec<String>,
    pub last_access: i64,
    /// Bytes freed by this image (its objects no remaining image uses).
    pub freed: u64,
}

/// Why a sweep evicts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Evict while the store is above this many bytes.
    pub down_to: Option<u64>,
    /// Evict images whose last access is before this (ms).
    pub idle_before: Option<i64>,
}

/// Decides what to evict from a snapshot of the index.
pub fn plan(g: &Graph, pins: &[Pin], limits: Limits) -> Plan {
    let mut size: HashMap<&str, u64> = HashMap::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut is_manifest: HashSet<&str> = HashSet::new();
    for (d, s, l) in &g.manifests {
        size.insert(d, *s);
        last.insert(d, *l);
        is_manifest.insert(d);
    }
    for (d, s, l) in &g.blobs {
        size.entry(d).or_insert(*s);
        last.entry(d).or_insert(*l);
    }
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut refcount: HashMap<&str, usize> = HashMap::new();
    for (p, c) in &g.refs {
        if is_manifest.contains(p.as_str()) {
            children.entry(p).or_default().push(c);
            *refcount.entry(c).or_default() += 1;
        }
    }
    // Pinned tags protect their manifest and everything below it.
    let mut protected: HashSet<&str> = HashSet::new();
    let mut stack: Vec<&str> =
        g.tags.iter().filter(|(u, r, t, _)| pins.iter().any(|p| p.matches(u, r, t))).map(|(_, _, _, d)| d.as_str()).collect();
    while let Some(d) = stack.pop() {
        if protected.insert(d) {
            stack.extend(children.get(d).into_iter().flatten().copied());
        }
    }
    let mut names: HashMap<&str, Vec<String>> = HashMap::new();
    for (u, r, t, d) in &g.tags {
        names.entry(d).or_default().push(format!("{u}/{r}:{t}"));
    }
    // Candidates: root manifests (by the latest access of the image's
    // manifests) and unreferenced blobs (by their own).
    let mut candidates: Vec<(i64, &str)> = size
        .keys()
        .filter(|d| refcount.get(*d).copied().unwrap_or(0) == 0 && !protected.contains(*d))
        .map(|d| {
            let kids = children.get(d).into_iter().flatten().filter(|c| is_manifest.contains(*c));
            let eff = kids.map(|c| last[c]).chain(std::iter::once(last[d])).max().unwrap_or(0);
            (eff, *d)
        })
        .collect();
    candidates.sort();
    let total: u64 = size.values().sum();
    let mut plan = Plan { before: total, after: total, ..Plan::default() };
    for (eff, root) in candidates {
        let idle = limits.idle_before.is_some_and(|t| eff < t);
        let over = limits.down_to.is_some_and(|t| plan.after > t);
        if !idle && !over {
            break;
        }
        let mut freed = size[root];
        plan.roots.push(root.to_owned());
        let mut stack: Vec<&str> = children.get(root).cloned().unwrap_or_default();
        while let Some(c) = stack.pop() {
            let n = refcount.get_mut(c).expect("every child was counted");
            *n -= 1;
            if *n == 0 && !protected.contains(c) {
                if let Some(s) = size.get(c) {
                    freed += s;
                    plan.children.push(c.to_owned());
                }
                stack.extend(children.get(c).into_iter().flatten().copied());
            }
        }
        plan.after -= freed;
        plan.images.push(EvictedImage {
            digest: root.to_owned(),
            names: names.remove(root).unwrap_or_default(),
            last_access: last[root],
            freed,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> Graph {
        let m = |d: &str, s: u64, l: i64| (d.to_owned(), s, l);
        Graph {
            // index I -> platform manifests A, B; image C; image D shares blob x with A.
            manifests: vec![m("I", 1, 50), m("A", 1, 10), m("B", 1, 10), m("C", 1, 20), m("D", 1, 60)],
            blobs: vec![m("x", 100, 10), m("a", 100, 10), m("b", 100, 10), m("c", 100, 20), m("orphan", 100, 5)],
            refs: [("I", "A"), ("I", "B"), ("A", "x"), ("A", "a"), ("B", "b"), ("C", "c"), ("D", "x")]
                .iter()
                .map(|(p, c)| (p.to_string(), c.to_string()))
                .collect(),
            tags: vec![
                ("docker.io".into(), "library/multi".into(), "1".into(), "I".into()),
                ("docker.io".into(), "library/c".into(), "1".into(), "C".into()),
            ],
            repos: vec![],
        }
    }

    #[test]
    fn least_recent_first_whole_images_shared_blobs_stay() {
        let total = 5 + 500;
        let p = plan(&g(), &[], Limits { down_to: Some(total - 150), idle_before: None });
        // The orphan blob (5) then image C (20) are older than the index (50).
        assert_eq!(p.roots, vec!["orphan", "C"]);
        assert_eq!(p.children, vec!["c"]);
        assert_eq!(p.after, total - 201);
        // Deeper: the index goes with A and B, but x stays for D.
        let p = plan(&g(), &[], Limits { down_to: Some(150), idle_before: None });
        assert_eq!(p.roots, vec!["orphan", "C", "I"]);
        let mut kids = p.children.clone();
        kids.sort();
        assert_eq!(kids, vec!["A", "B", "a", "b", "c"]);
        assert!(!p.children.contains(&"x".to_string()));
        assert_eq!(p.images[2].names, vec!["docker.io/library/multi:1"]);
    }

    #[test]
    fn pins_and_idle() {
        let pin = Pin::parse("multi:*", &["docker.io"]).unwrap();
        assert_eq!(pin.repo.as_str(), "library/multi");
        let p = plan(&g(), &[pin], Limits { down_to: Some(0), idle_before: None });
        assert!(!p.roots.contains(&"I".to_string()) && !p.children.contains(&"A".to_string()));
        // Idle: only what was last used before t=30.
        let p = plan(&g(), &[], Limits { down_to: None, idle_before: Some(30) });
        assert_eq!(p.roots, vec!["orphan", "C"]);
        assert!(Pin::parse("ghcr.io/org/app:1", &["docker.io", "ghcr.io"]).unwrap().upstream == "ghcr.io");
        assert!(Pin::parse("nocolon", &["docker.io"]).is_err());
        assert!(Pin::parse("Bad:1", &["docker.io"]).is_err());
    }
}
