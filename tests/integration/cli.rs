//! The real binary, as a user runs it: the issue's configuration file as
//! written (ports and paths filled in), environment overrides, refusals.

use crate::common::images::Catalog;
use crate::common::mirror::MirrorProcess;
use crate::common::registry::Registry;
use crate::common::skopeo::{assert_same, copy_ok};
use crate::common::{free_port, token};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_the_documented_config_file_and_env_override() {
    let cat = Catalog::get();
    let reg = Registry::start_with_token_auth().await;
    reg.push(&cat.private).await;
    reg.push(&cat.alpine).await;
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port) = (free_port(), free_port());
    let config = dir.path().join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{file_port}"

[storage]
root = "{root}"        # blobs, temp files and the SQLite database

[[upstream]]
name = "docker.io"                  # the registry that clients ask for
url = "{url}"      # where it really is; https://registry-1.docker.io by default
username = "{user}"                    # optional credentials for the upstream
password = "{password}"
"#,
            root = dir.path().join("store").display(),
            url = reg.url(),
            user = token::USER,
            password = token::PASSWORD,
        ),
    )
    .unwrap();
    // The environment wins over the file.
    let listen = format!("127.0.0.1:{env_port}");
    let mut p = MirrorProcess::spawn(&config, env_port, &[("REGMIRROR_SERVER__LISTEN", &listen), ("RUST_LOG", "info")]).await;
    let out = tempfile::tempdir().unwrap();
    copy_ok(&format!("docker://127.0.0.1:{env_port}/private/secret:1"), &out.path().join("p"), &[]).await;
    assert_same(&out.path().join("p"), &cat.private, false);
    copy_ok(&format!("docker://127.0.0.1:{env_port}/library/alpine:3.19"), &out.path().join("a"), &[]).await;
    assert_same(&out.path().join("a"), &cat.alpine, false);
    // Again: from the cache.
    copy_ok(&format!("docker://127.0.0.1:{env_port}/library/alpine:3.19"), &out.path().join("a2"), &[]).await;
    assert_same(&out.path().join("a2"), &cat.alpine, false);
    assert!(dir.path().join("store/index.db").is_file());
    let status = p.terminate();
    assert!(status.success(), "exit on SIGTERM: {status:?}");
    let log = p.log_text();
    // One line per request, with the fields operators filter on.
    assert!(log.contains("request") && log.contains("status=200") && log.contains("cache=miss") && log.contains("cache=hit"), "{log}");
    assert!(!log.contains(token::PASSWORD), "the upstream password appeared in the log");
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: &str, env: &[(&str, &str)]| {
        let f = dir.path().join("c.toml");
        std::fs::write(&f, toml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_regmirror"));
        cmd.args(["serve", "--config"]).arg(&f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        assert!(!o.status.success(), "accepted: {toml}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run("[server]\nlisen = \"127.0.0.1:1\"\n", &[]);
    assert!(e.contains("lisen") && e.contains("server"), "{e}");
    let e = run("[cache]\ntag_ttl = \"soon\"\n", &[]);
    assert!(e.contains("cache.tag_ttl") && e.contains("duration"), "{e}");
    let e = run("", &[("REGMIRROR_SERVER__LISTEN", "not-an-address")]);
    assert!(e.contains("server.listen"), "{e}");
    let o = Command::new(env!("CARGO_BIN_EXE_regmirror")).args(["serve", "--config", "/nonexistent/mirror.toml"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("/nonexistent/mirror.toml"));
    let o = Command::new(env!("CARGO_BIN_EXE_regmirror")).args(["serve", "--help"]).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--config"));
}
