//! The operator's commands through the real binary: `prefetch` then an
//! upstream shutdown leaves every platform pullable; `ls --json` lists
//! exactly what was pulled; `check-config` masks secrets and names a bad key.

use crate::common::images::Catalog;
use crate::common::mirror::{upstream_toml, write_config, MirrorProcess};
use crate::common::registry::Registry;
use crate::common::skopeo::{assert_same, copy_ok};
use std::process::Command;

fn run(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_regmirror")).args(args).arg("--config").arg(config).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_then_offline_and_ls_lists_what_was_pulled() {
    let cat = Catalog::get();
    let mut reg = Registry::start().await;
    reg.push(&cat.multi_oci).await;
    reg.push(&cat.multi_docker).await;
    reg.push(&cat.alpine).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = write_config(dir.path(), "", &format!("[cache]\npin = [\"multi:*\"]\n{}", upstream_toml("docker.io", &reg.url())));
    let list = dir.path().join("images.txt");
    std::fs::write(&list, "# for the offline site\nlibrary/multi:docker\n").unwrap();
    let o = run(&["prefetch", "--all-platforms", "multi:oci", "--file", list.to_str().unwrap()], &config);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("prefetched 2 image(s)"), "{text}");

    // The upstream gone: every platform of both images pulls from the cache.
    reg.stop();
    let p = MirrorProcess::spawn(&config, port, &[]).await;
    let out = tempfile::tempdir().unwrap();
    for img in [&cat.multi_oci, &cat.multi_docker] {
        let d = out.path().join(&img.tag);
        copy_ok(&format!("docker://127.0.0.1:{port}/{}:{}", img.repo, img.tag), &d, &["--all"]).await;
        assert_same(&d, img, true);
    }
    drop(p);

    // ls --json: exactly the two images, tagged, pinned by the pattern.
    let o = run(&["ls", "--json"], &config);
    assert!(o.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let seen: Vec<(String, String, String, bool)> = rows
        .iter()
        .map(|r| {
            (
                r["repository"].as_str().unwrap().into(),
                r["tag"].as_str().unwrap().into(),
                r["digest"].as_str().unwrap().into(),
                r["pinned"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("library/multi".to_string(), "docker".to_string(), cat.multi_docker.top.digest.clone(), true),
            ("library/multi".to_string(), "oci".to_string(), cat.multi_oci.top.digest.clone(), true),
        ]
    );
    let total: u64 = cat.multi_oci.total_blob_bytes() as u64;
    assert!(rows.iter().any(|r| r["size"].as_u64().unwrap() > total), "{rows:?}");
    let o = run(&["ls"], &config);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.starts_with("REGISTRY") && table.contains("library/multi") && table.contains("yes"), "{table}");
}

#[test]
fn check_config_masks_secrets_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:1\"\nusername = \"lab\"\npassword = \"hunter2-secret\"\n",
    )
    .unwrap();
    let o = run(&["check-config"], &f);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("username = \"lab\"") && out.contains("********") && !out.contains("hunter2"), "{out}");
    std::fs::write(&f, "[storage]\nmax_size = \"lots\"\n").unwrap();
    let o = run(&["check-config"], &f);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("storage.max_size"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_regmirror")).args(["prefetch", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("--all-platforms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_fields() {
    use crate::common::fake::Fake;
    use crate::common::images::single;
    let fake = Fake::start().await;
    let img = single("library/app", "1", true, 909, 1, &[]);
    fake.add_image(&img, None);
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = write_config(dir.path(), "", &format!("[log]\nformat = \"json\"\n{}", upstream_toml("docker.io", &fake.url())));
    let mut p = MirrorProcess::spawn(&config, port, &[]).await;
    copy_ok(&format!("docker://127.0.0.1:{port}/library/app:1"), &dir.path().join("out"), &[]).await;
    p.terminate();
    let log = p.log_text();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let req = lines
        .iter()
        .find(|l| l["fields"]["path"].as_str().is_some_and(|p| p.contains("/manifests/1")))
        .unwrap_or_else(|| panic!("no request line for the manifest:\n{log}"));
    let f = &req["fields"];
    assert_eq!(f["method"], "GET");
    assert_eq!(f["status"], 200);
    assert_eq!(f["cache"], "miss");
    assert!(f["bytes"].as_u64().unwrap() > 0, "{f}");
    assert!(f["ms"].is_string() || f["ms"].is_number(), "{f}");
}
