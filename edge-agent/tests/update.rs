//! Signed updates through the CLI (`keygen`, `bundle`, `update`), resumable downloads, and the
//! hub's `update` offer end to end.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A signing key via `edge-agent keygen`: (secret key file, public hex).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let (ok, out) = cli(&["keygen", "--out", p(&key)]);
    assert!(ok, "{out}");
    let public = out
        .trim()
        .strip_prefix("update_key = \"")
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    (key, public)
}

fn bundle(dir: &Path, binary: &Path, version: &str, key: &Path) -> PathBuf {
    let out = dir.join(format!("edge-agent-{version}.bundle"));
    let (ok, text) = cli(&[
        "bundle",
        "--binary",
        p(binary),
        "--version",
        version,
        "--signing-key",
        p(key),
        "--out",
        p(&out),
    ]);
    assert!(ok, "{text}");
    out
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// An install dir with 0.1.0 current, and an agent.toml trusting `public`.
fn installed(dir: &Path, public: &str, hub: &str) -> (PathBuf, PathBuf) {
    let install = dir.join("opt");
    std::fs::create_dir_all(install.join("versions/0.1.0")).unwrap();
    std::fs::copy(
        script(dir, "v010", "#!/bin/sh\nexit 0\n"),
        install.join("versions/0.1.0/edge-agent"),
    )
    .unwrap();
    std::os::unix::fs::symlink("versions/0.1.0", install.join("current")).unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"AG-0001\"\nsecret = \"s\"\nhub = \"{hub}\"\ndata_dir = \"data\"\nupdate_key = \"{public}\"\ninstall_dir = \"{}\"\nack_timeout = \"1s\"\n",
            install.display()
        ),
    )
    .unwrap();
    (install, cfg)
}

fn current(install: &Path) -> String {
    std::fs::read_link(install.join("current"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn signed_bundles_install_and_bad_ones_are_refused_or_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keygen(d, "release.key");
    let (other_key, _) = keygen(d, "other.key");
    let (install, cfg) = installed(d, &public, "mqtt://127.0.0.1:1");
    let update = |b: &Path| cli(&["update", p(b), "--config", p(&cfg)]);

    // The real binary as 0.2.0: verified, switched, its own self-test passes.
    let good = bundle(d, &agent_bin(), "0.2.0", &key);
    let (ok, out) = update(&good);
    assert!(ok, "{out}");
    assert_eq!(current(&install), "versions/0.2.0");
    assert_eq!(
        std::fs::read_link(install.join("previous"))
            .unwrap()
            .display()
            .to_string(),
        "versions/0.1.0"
    );
    assert_eq!(
        std::fs::read(install.join("current/edge-agent")).unwrap(),
        std::fs::read(agent_bin()).unwrap()
    );

    // Tampered binary, signed by someone else, not newer: refused, nothing changes.
    let healthy = script(d, "healthy", "#!/bin/sh\nexit 0\n");
    let tampered = bundle(d, &healthy, "0.3.0", &key);
    let mut bytes = std::fs::read(&tampered).unwrap();
    let n = bytes.len();
    bytes[n - 4] ^= 0x20;
    std::fs::write(&tampered, bytes).unwrap();
    let (ok, out) = update(&tampered);
    assert!(
        !ok && out.contains("does not match the signed manifest"),
        "{out}"
    );
    let forged = bundle(d, &healthy, "0.3.0", &other_key);
    let (ok, out) = update(&forged);
    assert!(!ok && out.contains("signature does not verify"), "{out}");
    let old = bundle(d, &healthy, "0.1.5", &key);
    let (ok, out) = update(&old);
    assert!(!ok && out.contains("not newer"), "{out}");
    assert_eq!(current(&install), "versions/0.2.0");
    assert!(!install.join("versions/0.3.0").exists());

    // A release whose health check fails is rolled back automatically.
    let broken = script(
        d,
        "broken",
        "#!/bin/sh\necho 'cannot open /dev/ttyUSB0' >&2\nexit 3\n",
    );
    let failing = bundle(d, &broken, "0.3.0", &key);
    let (ok, out) = update(&failing);
    assert!(!ok, "{out}");
    assert!(
        out.contains("failed its health check and was rolled back to 0.2.0"),
        "{out}"
    );
    assert!(out.contains("cannot open /dev/ttyUSB0"), "{out}");
    assert_eq!(current(&install), "versions/0.2.0");
    assert!(!install.join("versions/0.3.0").exists());

    // Garbage is not a bundle.
    let junk = d.join("junk.bundle");
    std::fs::write(&junk, b"definitely not a bundle").unwrap();
    let (ok, out) = update(&junk);
    assert!(!ok && out.contains("not an update bundle"), "{out}");
}

fn http_server(file: &Path, port: u16, cut_first: u32, cut_at: u64) -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("edge-agent/tests/peers/http_range_server.py"))
        .args(["--file", p(file), "--port", &port.to_string()])
        .args([
            "--cut-first",
            &cut_first.to_string(),
            "--cut-at",
            &cut_at.to_string(),
        ]);
    let proc = Proc::spawn("http", cmd);
    assert!(wait_port(port, T));
    proc
}

fn sha256(path: &Path) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).into()
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let port = free_port();
    let server = http_server(&file, port, 2, 100_000);
    let dest = dir.path().join("dl/payload.bin");
    let opts = edge_agent::update::download::DownloadOptions {
        retry_base: Duration::from_millis(50),
        ..Default::default()
    };
    let got = edge_agent::update::download::download(
        &format!("http://127.0.0.1:{port}/payload.bin"),
        &dest,
        &sha256(&file),
        &opts,
    )
    .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(got.attempts, 3);
    assert_eq!(
        got.resumed_from, 200_000,
        "the third attempt continued after two cut transfers"
    );
    let requests: Vec<String> = server
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("GET"))
        .collect();
    assert_eq!(
        requests,
        [
            "GET /payload.bin range=-",
            "GET /payload.bin range=bytes=100000-",
            "GET /payload.bin range=bytes=200000-"
        ]
    );
    // A wrong hash is never accepted.
    let e = edge_agent::update::download::download(
        &format!("http://127.0.0.1:{port}/payload.bin"),
        &dir.path().join("dl/other.bin"),
        &[0u8; 32],
        &edge_agent::update::download::DownloadOptions {
            attempts: 2,
            ..opts
        },
    )
    .unwrap_err();
    assert!(e.contains("does not match"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_offers_an_update_and_the_agent_restarts_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let hub = HubPeer::start(broker.port, true).await;
    let (key, public) = keygen(d, "release.key");
    let (install, cfg) = installed(d, &public, &broker.url());
    let release = bundle(d, &script(d, "v020", "#!/bin/sh\nexit 0\n"), "0.2.0", &key);
    let port = free_port();
    let server = http_server(&release, port, 1, 200);
    let mut agent = start_agent(&cfg);
    assert!(
        wait_for(T, || hub
            .with(|h| h.status.iter().any(|(_, s)| s == "online")))
        .await
    );

    hub.command(
        "AG-0001",
        json!({"id": "u1", "name": "update", "args": {
            "url": format!("http://127.0.0.1:{port}/edge-agent-0.2.0.bundle"),
            "version": "0.2.0",
            "sha256": hex::encode(sha256(&release)),
        }}),
    )
    .await;
    let status = agent
        .wait_exit(Duration::from_secs(60))
        .expect("agent did not restart into the update");
    assert_eq!(status.code(), Some(edge_agent::REBOOT_EXIT_CODE as i32));
    hub.with(|h| {
        let r = h.results.iter().find(|r| r.id == "u1").expect("no result");
        assert!(r.ok, "{r:?}");
        assert_eq!(
            r.values["version"],
            protocols::messages::Scalar::Text("0.2.0".into())
        );
    });
    assert_eq!(current(&install), "versions/0.2.0");
    let ranges: Vec<String> = server
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("GET"))
        .collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(ranges[1].ends_with("range=bytes=200-"), "{ranges:?}");
}
