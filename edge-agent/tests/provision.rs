//! `edge-agent provision` against mosquitto with a password file.

mod common;

use std::process::Command;

use common::*;

fn provision(args: &[&str]) -> (bool, String) {
    let out = Command::new(agent_bin())
        .arg("provision")
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn provision_checks_credentials_and_writes_a_working_config() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let passwd = d.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    let st = Command::new("mosquitto_passwd")
        .args(["-b", passwd.to_str().unwrap(), "AG-0007", "right-secret"])
        .status()
        .unwrap();
    assert!(st.success());
    let port = free_port();
    let conf = d.join("m.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            passwd.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(&conf);
    let _broker = Proc::spawn("mosquitto", cmd);
    assert!(wait_port(port, std::time::Duration::from_secs(10)));
    let hub = format!("127.0.0.1:{port}");
    let out = d.join("etc/agent.toml");
    let o = out.to_str().unwrap();

    let (ok, text) = provision(&[
        "--hub", &hub, "--id", "AG-0007", "--secret", "wrong", "--out", o,
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains("refused agent `AG-0007`"), "{text}");
    assert!(!out.exists(), "nothing written on refusal");

    let (ok, text) = provision(&[
        "--hub",
        &format!("127.0.0.1:{}", free_port()),
        "--id",
        "AG-0007",
        "--secret",
        "right-secret",
        "--out",
        o,
    ]);
    assert!(!ok && text.contains("cannot reach the hub"), "{text}");

    let (ok, text) = provision(&[
        "--hub",
        &hub,
        "--id",
        "AG-0007",
        "--secret",
        "right-secret",
        "--out",
        o,
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("accepted agent AG-0007"), "{text}");
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let cfg = edge_agent::config::AgentConfig::load(&out).unwrap();
    assert_eq!(cfg.file.agent.hub.as_slice(), [format!("mqtt://{hub}")]);
    assert_eq!(cfg.file.agent.secret.as_deref(), Some("right-secret"));
    let (ok, text) = provision(&[
        "--hub",
        &hub,
        "--id",
        "AG-0007",
        "--secret",
        "right-secret",
        "--out",
        o,
    ]);
    assert!(!ok && text.contains("--force"), "{text}");

    // The written config really runs: the agent connects with it.
    let check = Command::new(agent_bin())
        .args(["check-config", o])
        .output()
        .unwrap();
    assert!(check.status.success());
    let mut agent = start_agent(&out);
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            "AG-0007",
            "-P",
            "right-secret",
            "-i",
            "observer",
            "-t",
            "v1/status/AG-0007",
            "-C",
            "1",
            "-W",
            "20",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&sub.stdout).trim(), "online");
    agent.terminate(std::time::Duration::from_secs(10));
}
