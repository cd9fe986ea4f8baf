//! The `regmirror` command line: parse arguments, set up logging, load the
//! configuration, and map every failure to a message and an exit code here.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use regmirror::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "regmirror", version, about = "A pull-through caching mirror for OCI and Docker registries")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry pull API, caching what passes through.
    Serve {
        /// A TOML file laid over the embedded defaults (see mirror.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Never contact an upstream: serve only what is cached.
        #[arg(long)]
        offline: bool,
    },
    /// Evict what storage.max_size and cache.max_idle require, as the
    /// running server's sweeper does, and print what it frees. Safe to run
    /// beside a running server on the same store.
    Gc {
        /// A TOML file laid over the embedded defaults (see mirror.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print what would be evicted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash every stored blob and manifest and check the index against
    /// the files. Prints each problem; exits non-zero when there is one.
    Verify {
        /// A TOML file laid over the embedded defaults (see mirror.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Fetch images into the cache now, for offline use later: their
    /// manifests and the blobs of the chosen platforms.
    Prefetch {
        /// Images such as alpine:3.19, library/busybox, ghcr.io/org/app@sha256:...
        images: Vec<String>,
        /// A file with one image per line (# starts a comment).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Platforms of multi-arch images to fetch, e.g. linux/arm64 (repeatable;
        /// default: this machine's).
        #[arg(long, conflicts_with = "all_platforms")]
        platform: Vec<String>,
        /// Fetch every platform of multi-arch images.
        #[arg(long)]
        all_platforms: bool,
        /// A TOML file laid over the embedded defaults (see mirror.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// List the cached images: registry, repository, tag, digest, size,
    /// last pulled, pinned.
    Ls {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A TOML file laid over the embedded defaults (see mirror.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print the effective one (defaults, file
    /// and environment merged), with secrets masked.
    CheckConfig {
        /// A TOML file laid over the embedded defaults (see mirror.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regmirror: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn try_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, offline } => {
            let mut cfg = Config::load(config.as_deref())?;
            cfg.offline |= offline;
            init_logging(cfg.log.format);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(cfg.server.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} (server.listen): is another process using it?", cfg.server.listen))?;
                tracing::info!(listen = %listener.local_addr()?, "regmirror serving");
                regmirror::run(listener, cfg, shutdown_signal()).await
            })
        }
        Command::Gc { config, dry_run } => {
            let report = with_mirror(config.as_deref(), |m| async move { m.sweep(dry_run).await.context("gc failed") })?;
            println!("{report}");
            Ok(())
        }
        Command::Prefetch { images, file, platform, all_platforms, config } => {
            let mut list = images;
            if let Some(f) = file {
                let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read the image list {}", f.display()))?;
                list.extend(text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).map(str::to_owned));
            }
            anyhow::ensure!(!list.is_empty(), "no images given: name them, or pass --file LIST");
            let platforms = if all_platforms {
                regmirror::ops::Platforms::All
            } else if platform.is_empty() {
                regmirror::ops::Platforms::host()
            } else {
                regmirror::ops::Platforms::Only(platform)
            };
            let sum = with_mirror(config.as_deref(), |m| async move {
                anyhow::Ok(regmirror::ops::prefetch(&m, &list, &platforms, &mut std::io::stdout()).await)
            })?;
            println!(
                "prefetched {} image(s), {} blobs: {} fetched, {} already cached{}",
                sum.images,
                sum.blobs,
                bytesize::ByteSize(sum.fetched_bytes),
                bytesize::ByteSize(sum.cached_bytes),
                if sum.failed > 0 { format!("; {} failed", sum.failed) } else { String::new() }
            );
            anyhow::ensure!(sum.failed == 0, "{} image(s) could not be prefetched", sum.failed);
            Ok(())
        }
        Command::Ls { json, config } => {
            let rows = with_mirror(config.as_deref(), |m| async move { m.images().await.context("cannot read the index") })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{}", regmirror::ops::table(&rows));
            }
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(config.as_deref())?;
            println!("# configuration is valid; the effective values, secrets masked:\n{}", cfg.masked_toml());
            Ok(())
        }
        Command::Verify { config } => {
            let report = with_mirror(config.as_deref(), |m| async move { m.verify().await.context("verify failed") })?;
            println!("{report}");
            anyhow::ensure!(report.problems.is_empty(), "the store has {} problem(s)", report.problems.len());
            Ok(())
        }
    }
}

/// For the maintenance commands: opens the mirror described by `config`
/// (without serving, and without touching temp files, so it is safe beside
/// a running server), runs `f`, then lets downloads that `f` started commit
/// and records access times.
fn with_mirror<T, F, Fut>(config: Option<&std::path::Path>, f: F) -> anyhow::Result<T>
where
    F: FnOnce(std::sync::Arc<regmirror::mirror::Mirror>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let cfg = Config::load(config)?;
    init_logging(cfg.log.format);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let app = regmirror::App::open(&cfg, regmirror::clock::Clock::system()).await?;
        let out = f(app.mirror.clone()).await;
        app.mirror.shutdown().await;
        out
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
}
