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
            let cfg = Config::load(config.as_deref())?;
            init_logging(cfg.log.format);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
            rt.block_on(async move {
                let app = regmirror::App::open(&cfg, regmirror::clock::Clock::system()).await?;
                let report = app.mirror.sweep(dry_run).await.context("gc failed")?;
                app.mirror.shutdown().await;
                println!("{report}");
                Ok(())
            })
        }
        Command::Verify { config } => {
            let cfg = Config::load(config.as_deref())?;
            init_logging(cfg.log.format);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
            let report = rt.block_on(async move {
                let app = regmirror::App::open(&cfg, regmirror::clock::Clock::system()).await?;
                let report = app.mirror.verify().await.context("verify failed")?;
                app.mirror.shutdown().await;
                anyhow::Ok(report)
            })?;
            println!("{report}");
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("the store has {} problem(s)", report.problems.len()))
            }
        }
    }
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
