//! A real upstream: Debian's `docker-registry` (distribution 2.8, i.e.
//! registry:2) as a child process on a free loopback port, with its own
//! storage, optionally behind Bearer-token auth as Docker Hub does it.

use super::images::{Doc, Image};
use super::token::TokenServer;
use super::{client, free_port, require_tool, wait_http};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    config: std::path::PathBuf,
    /// The token server that signs this registry's tokens, if any.
    auth: Option<TokenServer>,
}

impl Registry {
    /// Starts an anonymous registry.
    pub async fn start() -> Registry {
        Self::launch(None).await
    }

    /// Starts a registry that accepts only tokens from a token server of
    /// its own (anonymous pulls of public repositories, `private/*` only
    /// with credentials), as Docker Hub does.
    pub async fn start_with_token_auth() -> Registry {
        let ts = TokenServer::start().await;
        Self::launch(Some(ts)).await
    }

    async fn launch(auth: Option<TokenServer>) -> Registry {
        let bin = require_tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth_yaml = match &auth {
            None => String::new(),
            Some(ts) => {
                let cert = dir.path().join("token-cert.pem");
                std::fs::write(&cert, &ts.cert_pem).unwrap();
                format!(
                    "auth:\n  token:\n    realm: {}/token\n    service: registry.docker.io\n    issuer: auth.docker.io\n    rootcertbundle: {}\n",
                    ts.url(),
                    cert.display()
                )
            }
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut r = Registry { child: None, port, dir, config, auth };
        r.spawn(bin).await;
        r
    }

    async fn spawn(&mut self, bin: String) {
        let log = std::fs::File::create(self.dir.path().join("registry.log")).unwrap();
        let child =
            Command::new(bin).arg("serve").arg(&self.config).stdout(Stdio::null()).stderr(log).spawn().expect("start docker-registry");
        self.child = Some(child);
        wait_http(&format!("{}/v2/", self.url()), Duration::from_secs(20)).await;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn token_server(&self) -> Option<&TokenServer> {
        self.auth.as_ref()
    }

    /// Stops the process (SIGKILL; it keeps no state we need in memory).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn(require_tool("docker-registry")).await;
    }

    fn bearer(&self, repo: &str) -> Option<String> {
        self.auth.as_ref().map(|ts| format!("Bearer {}", ts.mint(repo, &["pull", "push"])))
    }

    /// Pushes an image through the v2 API: blobs, child manifests by
    /// digest, then the top manifest by tag.
    pub async fn push(&self, img: &Image) {
        let c = client();
        let auth = self.bearer(&img.repo);
        let with_auth = |rb: reqwest::RequestBuilder| match &auth {
            Some(a) => rb.header("authorization", a),
            None => rb,
        };
        for b in &img.blobs {
            let r = with_auth(c.post(format!("{}/v2/{}/blobs/uploads/", self.url(), img.repo))).send().await.unwrap();
            assert_eq!(r.status(), 202, "start upload: {:?}", r.text().await);
            let loc = r.headers()["location"].to_str().unwrap().to_owned();
            let loc = if loc.starts_with('/') { format!("{}{loc}", self.url()) } else { loc };
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = with_auth(c.put(format!("{loc}{sep}digest={}", b.digest)))
                .header("content-type", "application/octet-stream")
                .body(b.bytes.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "finish upload: {:?}", r.text().await);
        }
        for m in &img.children {
            self.put_manifest_as(&img.repo, &m.digest, m, &with_auth).await;
        }
        self.put_manifest_as(&img.repo, &img.tag, &img.top, &with_auth).await;
    }

    async fn put_manifest_as(
        &self,
        repo: &str,
        reference: &str,
        m: &Doc,
        with_auth: &impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) {
        let r = with_auth(client().put(format!("{}/v2/{repo}/manifests/{reference}", self.url())))
            .header("content-type", &m.media_type)
            .body(m.bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "put manifest {repo}:{reference}: {:?}", r.text().await);
    }

    /// Re-points `repo:tag` at another manifest (pushed beforehand).
    pub async fn tag(&self, repo: &str, tag: &str, m: &Doc) {
        let auth = self.bearer(repo);
        let with_auth = |rb: reqwest::RequestBuilder| match &auth {
            Some(a) => rb.header("authorization", a),
            None => rb,
        };
        self.put_manifest_as(repo, tag, m, &with_auth).await;
    }

    /// The file in registry:2's own storage that holds a blob's bytes.
    pub fn blob_data_path(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
