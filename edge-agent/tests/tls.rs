//! `mqtts://` with rustls and `ca_file`, against mosquitto with a TLS listener.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[test]
fn connects_over_tls_with_a_ca_file_and_refuses_an_unknown_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d);
    let port = free_port();
    let conf = d.join("m.conf");
    std::fs::write(
        &conf,
        // `user root`: a broker started as root would otherwise drop to `mosquitto` and not be
        // able to read the key in a private temp dir.
        format!("user root\nlistener {port} 127.0.0.1\ncafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\nallow_anonymous true\n", d.display()),
    )
    .unwrap();
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(&conf);
    let _broker = Proc::spawn("mosquitto", cmd);
    assert!(wait_port(port, Duration::from_secs(10)));

    // A CA the broker's certificate does not chain to: the agent must not connect.
    let (other, _) = (d.join("other"), ());
    std::fs::create_dir_all(&other).unwrap();
    openssl(
        &other,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=other-ca",
        ],
    );
    let metrics_port = free_port();
    let run = |ca: &Path, name: &str| {
        let cfg = d.join(name);
        std::fs::write(
            &cfg,
            format!("[agent]\nid = \"AG-TLS\"\nsecret = \"s\"\nhub = \"mqtts://127.0.0.1:{port}\"\nca_file = \"{}\"\ndata_dir = \"data-{name}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n", ca.display()),
        )
        .unwrap();
        start_agent(&cfg)
    };
    let observe = || {
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--cafile",
                d.join("ca.crt").to_str().unwrap(),
            ])
            .args(["-t", "v1/status/AG-TLS", "-C", "1", "-W", "4"])
            .output()
            .unwrap()
    };
    let mut wrong = run(&other.join("ca.crt"), "wrong.toml");
    // Wait until it has tried (and failed) twice, then check it never got on.
    assert!(wait_until(Duration::from_secs(20), || metric(
        &scrape(metrics_port),
        "edge_agent_mqtt_errors_total"
    )
    .unwrap_or(0.0)
        >= 2.0));
    assert_eq!(
        metric(&scrape(metrics_port), "edge_agent_mqtt_connects_total"),
        Some(0.0)
    );
    assert_eq!(
        String::from_utf8_lossy(&observe().stdout).trim(),
        "",
        "connected despite an unknown CA"
    );
    wrong.kill();
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_err()
    }));

    let mut agent = run(&d.join("ca.crt"), "right.toml");
    let mut seen = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            seen = String::from_utf8_lossy(&observe().stdout)
                .trim()
                .to_string();
            seen == "online"
        }),
        "no online status over TLS: {seen:?}"
    );
    agent.terminate(Duration::from_secs(10));
}
