//! regmirror under test: in-process on a 127.0.0.1:0 listener (with a clock
//! the test drives), or as the real binary in a child process.

use super::wait_http;
use regmirror::clock::Clock;
use regmirror::config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The `[[upstream]]` entry for a test upstream, with short timeouts.
pub fn upstream_toml(name: &str, url: &str) -> String {
    format!("[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\nconnect_timeout = \"2s\"\nheader_timeout = \"5s\"\nread_timeout = \"5s\"\n")
}

pub struct TestMirror {
    pub addr: SocketAddr,
    /// Storage root, shared with a restarted mirror.
    pub dir: Arc<tempfile::TempDir>,
    pub clock: Clock,
    pub mirror: Arc<regmirror::mirror::Mirror>,
    /// What the repair at start found.
    pub reconciled: regmirror::mirror::Reconciled,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestMirror {
    /// A mirror with a fresh store; `toml` is laid over the defaults
    /// (`storage.root` is set here).
    pub async fn start(toml: &str) -> TestMirror {
        Self::start_in(Arc::new(tempfile::tempdir().unwrap()), toml, Clock::manual(1_700_000_000_000)).await
    }

    pub async fn start_in(dir: Arc<tempfile::TempDir>, toml: &str, clock: Clock) -> TestMirror {
        let full = format!("{toml}\n[storage]\nroot = \"{}\"\n", dir.path().display());
        Self::start_full(dir, &full, clock).await
    }

    /// A mirror from a TOML that sets `storage.root` itself.
    pub async fn start_full(dir: Arc<tempfile::TempDir>, full: &str, clock: Clock) -> TestMirror {
        let cfg = Config::from_toml_str(full).unwrap_or_else(|e| panic!("test config refused: {e}\n{full}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = regmirror::App::start(&cfg, clock.clone()).await.expect("open the mirror");
        let reconciled = app.reconciled.clone();
        let mirror = app.mirror.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(listener, async move {
                let _ = rx.await;
            })
            .await
        });
        TestMirror { addr, dir, clock, mirror, reconciled, shutdown: Some(tx), task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `docker://host:port/<path>` for skopeo.
    pub fn docker_ref(&self, path: &str) -> String {
        format!("docker://{}/{path}", self.addr)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Stops serving and waits for downloads in flight (bounded).
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        self.stop_inner().await;
        self.dir.clone()
    }

    async fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t).await.expect("mirror did not stop within 30s").unwrap();
        }
    }
}

impl Drop for TestMirror {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Writes `DIR/mirror.toml` for the binary: listening on a free port, the
/// store in `DIR/store`, `server_extra` under `[server]`, then `upstream`
/// (one or more `[[upstream]]` entries). Returns (config path, port).
pub fn write_config(dir: &Path, server_extra: &str, upstream: &str) -> (PathBuf, u16) {
    let port = super::free_port();
    let config = dir.join("mirror.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{server_extra}\n[storage]\nroot = \"{}\"\n{upstream}",
        dir.join("store").display()
    );
    std::fs::write(&config, toml).unwrap();
    (config, port)
}

/// The real `regmirror` binary, as a user runs it.
pub struct MirrorProcess {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl MirrorProcess {
    /// `regmirror serve --config FILE` with `env`, waiting until it answers.
    pub async fn spawn(config: &Path, port: u16, env: &[(&str, &str)]) -> MirrorProcess {
        let log = config.with_extension("log");
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_regmirror"));
        cmd.arg("serve").arg("--config").arg(config).stdout(Stdio::null()).stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start regmirror");
        let p = MirrorProcess { child: Some(child), port, log };
        wait_http(&format!("http://127.0.0.1:{port}/v2/"), Duration::from_secs(20)).await;
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGTERM, and waits (bounded) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.wait_exit()
    }

    pub fn sigterm(&self) {
        unsafe_kill(self.child.as_ref().expect("running").id(), 15);
    }

    /// Waits (at most 6 s) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        for _ in 0..300 {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        panic!("regmirror did not exit within 6s of SIGTERM");
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for MirrorProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
