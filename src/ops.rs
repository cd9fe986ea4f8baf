//! The operator's commands that work through the mirror: `prefetch` (warm
//! the cache for offline use) and `ls` (what the cache holds). They speak
//! to the mirror as the HTTP layer does, in OCI terms.

use crate::mirror::{ImageRow, Mirror, Source};
use crate::oci::{Digest, Reference, DEFAULT_ACCEPT};
use futures_util::StreamExt;
use std::io::{IsTerminal, Write};

/// Which platforms of a multi-arch image to fetch.
pub enum Platforms {
    All,
    /// `os/arch[/variant]` values.
    Only(Vec<String>),
}

impl Platforms {
    /// This machine's platform, as images name it.
    pub fn host() -> Platforms {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Platforms::Only(vec![format!("linux/{arch}")])
    }

    fn wants(&self, p: &serde_json::Value) -> bool {
        let Platforms::Only(list) = self else { return true };
        let os = p["os"].as_str().unwrap_or("");
        let arch = p["architecture"].as_str().unwrap_or("");
        let variant = p["variant"].as_str();
        list.iter().any(|w| {
            let mut parts = w.split('/');
            let (wo, wa, wv) = (parts.next(), parts.next(), parts.next());
            wo == Some(os) && wa == Some(arch) && (wv.is_none() || wv == variant)
        })
    }
}

/// `name[:tag]` or `name@digest`, with an optional registry in front.
fn split_image(s: &str) -> Result<(&str, Reference), String> {
    let (name, reference) = match s.split_once('@') {
        Some((n, d)) => (n, d),
        None => match s.rfind(':').filter(|i| !s[*i..].contains('/')) {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, "latest"),
        },
    };
    Ok((name, Reference::parse(reference).map_err(|e| e.to_string())?))
}

#[derive(Default)]
pub struct PrefetchSummary {
    pub images: usize,
    pub failed: usize,
    pub blobs: usize,
    pub fetched_bytes: u64,
    pub cached_bytes: u64,
}

/// Fetches every image into the cache (its manifests and the blobs of the
/// chosen platforms), printing progress on `out`.
pub async fn prefetch(mirror: &Mirror, images: &[String], platforms: &Platforms, out: &mut impl Write) -> PrefetchSummary {
    let mut sum = PrefetchSummary::default();
    let bar = std::io::stderr().is_terminal();
    for image in images {
        match prefetch_one(mirror, image, platforms, bar, out, &mut sum).await {
            Ok(()) => sum.images += 1,
            Err(e) => {
                sum.failed += 1;
                let _ = writeln!(out, "{image}: failed: {e}");
            }
        }
    }
    sum
}

async fn prefetch_one(
    mirror: &Mirror,
    image: &str,
    platforms: &Platforms,
    bar: bool,
    out: &mut impl Write,
    sum: &mut PrefetchSummary,
) -> Result<(), String> {
    let (name, reference) = split_image(image)?;
    let target = mirror.route(None, name).map_err(|e| e.to_string())?;
    let accept: Vec<String> = DEFAULT_ACCEPT.iter().map(|s| s.to_string()).collect();
    let top = mirror.manifest(&target, &reference, &accept).await.map_err(|e| e.to_string())?.manifest;
    let json: serde_json::Value = serde_json::from_slice(&top.bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
    // An index: its chosen platforms; an image: itself.
    let mut images = Vec::new();
    if let Some(list) = json["manifests"].as_array() {
        for m in list.iter().filter(|m| platforms.wants(&m["platform"])) {
            let d: Digest = m["digest"].as_str().unwrap_or("").parse().map_err(|e| format!("index entry: {e}"))?;
            images.push(mirror.manifest(&target, &Reference::Digest(d), &accept).await.map_err(|e| e.to_string())?.manifest);
        }
        if images.is_empty() {
            return Err("no platform of this index matches --platform".into());
        }
    } else {
        images.push(top.clone());
    }
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for m in &images {
        let j: serde_json::Value = serde_json::from_slice(&m.bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
        for d in std::iter::once(&j["config"]).chain(j["layers"].as_array().into_iter().flatten()) {
            let digest: Digest = d["digest"].as_str().unwrap_or("").parse().map_err(|e| format!("manifest entry: {e}"))?;
            blobs.push((digest, d["size"].as_u64().unwrap_or(0)));
        }
    }
    let total: u64 = blobs.iter().map(|b| b.1).sum();
    let mut done = 0u64;
    for (d, _) in &blobs {
        let a = mirror.blob(&target, d, None, false).await.map_err(|e| format!("blob {d}: {e}"))?;
        let mut body = a.body.ok_or("no body")?;
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            n += chunk.map_err(|e| format!("blob {d}: {e}"))?.len() as u64;
            if bar {
                let shown = done + n;
                let filled = (shown * 30 / total.max(1)) as usize;
                eprint!(
                    "\r{image} [{}{}] {} / {}",
                    "#".repeat(filled.min(30)),
                    "-".repeat(30 - filled.min(30)),
                    bytesize::ByteSize(shown),
                    bytesize::ByteSize(total)
                );
            }
        }
        done += n;
        sum.blobs += 1;
        if a.source == Source::Hit {
            sum.cached_bytes += n;
        } else {
            sum.fetched_bytes += n;
        }
        if !bar {
            let how = if a.source == Source::Hit { "cached" } else { "fetched" };
            let _ = writeln!(out, "{image}: {how} {d} ({})", bytesize::ByteSize(n));
        }
    }
    if bar {
        eprintln!();
    }
    let _ = writeln!(out, "{image}: {} platform(s), {} blobs, {} ({})", images.len(), blobs.len(), bytesize::ByteSize(done), top.digest);
    Ok(())
}

/// `regmirror ls` as a table.
pub fn table(rows: &[ImageRow]) -> String {
    let when =
        |ms: i64| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)).to_string();
    let head = ["REGISTRY", "REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST PULLED", "PINNED"].map(String::from);
    let body: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.registry.clone(),
                r.repository.clone(),
                r.tag.clone().unwrap_or_else(|| "-".into()),
                r.digest.chars().take(19).collect(),
                bytesize::ByteSize(r.size).to_string(),
                when(r.last_pulled),
                if r.pinned { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    let w: Vec<usize> = (0..7).map(|i| std::iter::once(&head).chain(body.iter()).map(|r| r[i].len()).max().unwrap_or(0)).collect();
    std::iter::once(&head)
        .chain(body.iter())
        .map(|r| r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = w[i])).collect::<Vec<_>>().join("  ").trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let (n, r) = split_image("alpine:3.19").unwrap();
        assert_eq!((n, r.to_string()), ("alpine", "3.19".to_string()));
        let (n, r) = split_image("127.0.0.1:5000/org/app").unwrap();
        assert_eq!((n, r.to_string()), ("127.0.0.1:5000/org/app", "latest".to_string()));
        let d = format!("sha256:{}", "a".repeat(64));
        let s = format!("ghcr.io/org/app@{d}");
        let (n, r) = split_image(&s).unwrap();
        assert_eq!((n, r.to_string()), ("ghcr.io/org/app", d));
        assert!(split_image("x:-bad").is_err());
    }
}
