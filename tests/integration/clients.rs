//! Real clients through the mirror: containerd (`hosts.toml`, `?ns=`),
//! podman (`registries.conf` mirror) and the Docker daemon
//! (`--registry-mirror`), each started by the test with private state.

use crate::common::images::Catalog;
use crate::common::mirror::{upstream_toml, TestMirror};
use crate::common::registry::Registry;
use crate::common::relay::Relay;
use crate::common::{require_tool, wait_until};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed (and waited for) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        for _ in 0..200 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(cmd: &mut Command) -> std::process::Output {
    let mut owned = std::mem::replace(cmd, Command::new("true"));
    tokio::task::spawn_blocking(move || owned.output().unwrap()).await.unwrap()
}

fn ok(o: &std::process::Output, what: &str) {
    assert!(o.status.success(), "{what} failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_the_mirror_with_ns() {
    let (containerd, ctr) = (require_tool("containerd"), require_tool("ctr"));
    let cat = Catalog::get();
    let reg = Registry::start().await;
    reg.push(&cat.alpine).await;
    reg.push(&cat.multi_oci).await;
    let m = TestMirror::start(&upstream_toml("docker.io", &reg.url())).await;
    // The relay in front of the mirror keeps containerd's request records.
    let front = Relay::start(m.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = d.join("containerd.sock");
    std::fs::write(
        d.join("config.toml"),
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
            d.join("root").display(),
            d.join("state").display(),
            sock.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("hosts/docker.io")).unwrap();
    std::fs::write(
        d.join("hosts/docker.io/hosts.toml"),
        format!("server = \"https://registry-1.docker.io\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", front.url()),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("containerd.log")).unwrap();
    let _daemon =
        Daemon(Command::new(containerd).arg("--config").arg(d.join("config.toml")).stdout(Stdio::null()).stderr(log).spawn().unwrap());
    wait_until("containerd's socket", Duration::from_secs(30), || sock.exists()).await;
    for image in ["docker.io/library/alpine:3.19", "docker.io/library/multi:oci"] {
        let o = run(Command::new(&ctr)
            .arg("--address")
            .arg(&sock)
            .args(["-n", "test", "images", "pull", "--snapshotter", "native", "--hosts-dir"])
            .arg(d.join("hosts"))
            .arg(image))
        .await;
        ok(&o, &format!("ctr images pull {image}"));
    }
    let records = front.log();
    eprintln!("containerd's requests, as the mirror received them:\n{}", records.join("\n"));
    assert!(records.len() >= 6, "{records:?}");
    assert!(records.iter().all(|r| r.contains("ns=docker.io")), "a request without ?ns=: {records:?}");
    assert!(records.iter().any(|r| r.starts_with("HEAD /v2/library/alpine/manifests/3.19")), "{records:?}");
    let o = run(Command::new(&ctr).arg("--address").arg(&sock).args(["-n", "test", "images", "ls", "-q"])).await;
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(listed.contains("docker.io/library/alpine:3.19") && listed.contains("docker.io/library/multi:oci"), "{listed}");
}

fn registries_conf(d: &Path, mirror: &str) -> std::path::PathBuf {
    let f = d.join("registries.conf");
    std::fs::write(&f, format!("[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n")).unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_the_mirror() {
    let podman = require_tool("podman");
    let cat = Catalog::get();
    let reg = Registry::start().await;
    reg.push(&cat.alpine).await;
    reg.push(&cat.multi_docker).await;
    let m = TestMirror::start(&upstream_toml("docker.io", &reg.url())).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = registries_conf(d, &m.addr.to_string());
    for image in ["docker.io/library/alpine:3.19", "docker.io/library/multi:docker"] {
        let o = run(Command::new(&podman)
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .env("HOME", d)
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs", "pull", "-q", image]))
        .await;
        ok(&o, &format!("podman pull {image}"));
    }
    let rows = m.mirror.images().await.unwrap();
    assert!(rows.iter().any(|r| r.repository == "library/alpine" && r.tag.as_deref() == Some("3.19")), "{rows:?}");
    let _ = Command::new(&podman)
        .arg("--root")
        .arg(d.join("root"))
        .arg("--runroot")
        .arg(d.join("runroot"))
        .args(["--storage-driver", "vfs", "rmi", "-a", "-f"])
        .output();
}

/// dockerd with a private data root, exec root and socket; no iptables or bridge.
struct Dockerd {
    _d: Daemon,
    dir: std::path::PathBuf,
    sock: std::path::PathBuf,
}

impl Dockerd {
    async fn start(dir: &Path, mirror: &str) -> Dockerd {
        let dockerd = require_tool("dockerd");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        let sock = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new(dockerd)
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs"])
            .arg(format!("--registry-mirror={mirror}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Dockerd { _d: Daemon(child), dir: dir.to_owned(), sock };
        let s = d.sock.clone();
        wait_until("dockerd's socket", Duration::from_secs(60), || s.exists()).await;
        d
    }

    async fn pull(&self, image: &str) -> std::process::Output {
        run(Command::new("/usr/bin/docker").arg("-H").arg(format!("unix://{}", self.sock.display())).args(["pull", "-q", image])).await
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // dockerd bind-mounts its data root onto itself until a clean stop.
        let _ = Command::new("umount").arg(self.dir.join("data")).stderr(Stdio::null()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_daemon_pulls_through_the_mirror_and_offline() {
    require_tool("docker");
    let cat = Catalog::get();
    let mut reg = Registry::start().await;
    reg.push(&cat.alpine).await;
    reg.push(&cat.multi_oci).await;
    let m = TestMirror::start(&upstream_toml("docker.io", &reg.url())).await;
    let dir = tempfile::tempdir().unwrap();
    {
        let docker = Dockerd::start(&dir.path().join("d1"), &m.url()).await;
        for image in ["alpine:3.19", "multi:oci"] {
            ok(&docker.pull(image).await, &format!("docker pull {image} (online)"));
        }
    }
    // Docker hides a failing mirror by going to Docker Hub, which is not
    // reachable here: a pull that succeeds came through the mirror.
    reg.stop();
    let docker = Dockerd::start(&dir.path().join("d2"), &m.url()).await;
    for image in ["alpine:3.19", "multi:oci"] {
        ok(&docker.pull(image).await, &format!("docker pull {image} (upstream stopped, fresh data root)"));
    }
}
