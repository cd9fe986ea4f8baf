//! regmirror: a pull-through caching mirror for OCI and Docker registries.
//!
//! # Layout
//! Dependencies run one way: `http` → `mirror` → {`upstream`, `store`, `index`},
//! with `oci` (validated names, digests, media types) used by all of them.
//!
//! - [`config`]: the embedded `mirror.toml`, a file and the environment, merged and validated.
//! - [`http`]: the listener, routing of `/v2/…`, thin handlers, OCI error mapping.
//! - [`mirror`]: the domain: local hit, or upstream fetch → verify → store → index;
//!   single-flight downloads streamed to every client ([`mirror::fill`]).
//! - [`upstream`]: one client per configured registry, the token dance, timeouts.
//! - [`store`]: content-addressed bytes behind the [`store::Store`] trait ([`store::FsStore`]).
//! - [`index`]: every line of SQL; SQLite on its own thread, schema from `migrations/`.
//! - [`oci`]: repository names, tags, digests, references, manifests, Accept.
//! - [`clock`]: "now", injectable for tests.

pub mod clock;
pub mod config;
pub mod http;
pub mod index;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod ops;
pub mod store;
pub mod upstream;

use anyhow::Context as _;
use clock::Clock;
use config::Config;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// An opened mirror: store, index and upstream clients, ready to serve.
pub struct App {
    pub mirror: Arc<mirror::Mirror>,
    /// What the repair at start found (for `start` only).
    pub reconciled: mirror::Reconciled,
    opts: http::ServerOptions,
}

impl App {
    /// Opens the store and the index under `config.storage.root` (creating
    /// them) and builds the upstream clients. Changes nothing on disk
    /// beyond creating what is missing: safe beside a running server, for
    /// the maintenance commands.
    pub async fn open(config: &Config, clock: Clock) -> anyhow::Result<App> {
        let root = &config.storage.root;
        std::fs::create_dir_all(root).with_context(|| format!("cannot create storage.root {}", root.display()))?;
        let store = store::FsStore::open(root).with_context(|| format!("cannot open the store under {}", root.display()))?;
        let index = index::Index::open(&root.join("index.db"))?;
        let mirror = mirror::Mirror::new(config, Arc::new(store), index, clock).map_err(anyhow::Error::msg)?;
        let htpasswd =
            config.server.htpasswd.as_deref().map(http::auth::Htpasswd::load).transpose().map_err(anyhow::Error::msg)?.map(Arc::new);
        let tls = config.server.tls.as_ref().map(http::tls::acceptor).transpose().map_err(anyhow::Error::msg)?;
        let opts = http::ServerOptions {
            header_read_timeout: config.server.header_read_timeout,
            max_connections: config.server.max_connections,
            shutdown_grace: config.server.shutdown_grace,
            htpasswd,
            tls,
        };
        Ok(App { mirror: Arc::new(mirror), reconciled: Default::default(), opts })
    }

    /// Opens the mirror for serving: repairs what a crash left (temp files,
    /// rows without files, files without rows) and starts the background
    /// sweeper.
    pub async fn start(config: &Config, clock: Clock) -> anyhow::Result<App> {
        let mut app = App::open(config, clock).await?;
        app.reconciled = app.mirror.reconcile().await.context("cannot reconcile the store with its index")?;
        app.mirror.start_background();
        tracing::info!(root = %config.storage.root.display(), upstreams = config.upstream.len(), offline = config.offline, "store opened");
        Ok(app)
    }

    /// Serves until `shutdown` completes; then drains connections, waits for
    /// downloads in flight and stops the sweeper.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let mirror = self.mirror.clone();
        // Downloads start their grace period when the signal comes, together
        // with the responses in flight.
        let shutdown = async move {
            shutdown.await;
            mirror.begin_shutdown();
        };
        http::serve(listener, self.mirror.clone(), self.opts, shutdown).await;
        self.mirror.shutdown().await;
    }
}

/// Opens the mirror described by `config` and serves `listener` until `shutdown`.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let app = App::start(&config, Clock::system()).await?;
    app.serve(listener, shutdown).await;
    Ok(())
}
