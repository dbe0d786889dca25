//! `mqtts://` with rustls against mosquitto with a TLS listener: the hub's CA (`ca`, or its
//! older name `ca_file`), and the agent's client certificate (`cert`, `key`) on a listener that
//! requires one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_agent::uplink::{ClientCert, UplinkError, check_tls_files};

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

/// A self-signed CA `{name}.crt` / `{name}.key` in `dir` (EC P-256, quicker than RSA).
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// Signs `{name}.csr` with the CA `{ca}` into `{name}.crt`, as an X.509 v3 client certificate:
/// rustls (webpki) refuses the v1 certificates `openssl x509 -req` makes without extensions.
fn sign_client(dir: &Path, ca: &str, name: &str) {
    std::fs::write(
        dir.join("client-ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            "client-ext.cnf",
        ],
    );
}

/// A client certificate `{name}.crt` for subject CN `cn`, signed by the CA `{ca}`, with an EC
/// key `{name}.key` in SEC1 form (`BEGIN EC PRIVATE KEY`).
fn client_cert(dir: &Path, ca: &str, name: &str, cn: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &key,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    sign_client(dir, ca, name);
}

/// The hub side of client-certificate authentication: [`pki`]'s server certificate, plus a
/// client CA `clients-ca` that signed `agent` (CN AG-TLS) and `observer` (the test's
/// subscriber), and a `rogue` certificate also for CN AG-TLS but from `other-ca`.
fn mtls_pki(dir: &Path) {
    pki(dir);
    ca(dir, "clients-ca");
    client_cert(dir, "clients-ca", "agent", "AG-TLS");
    client_cert(dir, "clients-ca", "observer", "observer");
    ca(dir, "other-ca");
    client_cert(dir, "other-ca", "rogue", "AG-TLS");
}

/// mosquitto with a TLS listener that requires a client certificate signed by `clients-ca`
/// and takes its CN as the user name; no anonymous or password logins. It logs to
/// `broker.log` (a file: mosquitto flushes it per line, unlike a piped stdout).
struct MtlsBroker {
    _proc: Proc,
    port: u16,
    log: PathBuf,
}

impl MtlsBroker {
    fn start(d: &Path) -> MtlsBroker {
        let port = free_port();
        let log = d.join("broker.log");
        let conf = d.join("mtls.conf");
        std::fs::write(
            &conf,
            // `user root`: see connects_over_tls_with_a_ca_file_and_refuses_an_unknown_ca.
            format!(
                "user root\nper_listener_settings false\nallow_anonymous false\n\
                 log_dest file {log}\nlog_type all\n\
                 listener {port} 127.0.0.1\ncafile {d}/clients-ca.crt\ncertfile {d}/server.crt\n\
                 keyfile {d}/server.key\nrequire_certificate true\nuse_identity_as_username true\n",
                log = log.display(),
                d = d.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf);
        let proc = Proc::spawn("mosquitto", cmd);
        assert!(wait_port(port, Duration::from_secs(10)));
        MtlsBroker {
            _proc: proc,
            port,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// mosquitto_sub / mosquitto_pub arguments to reach this broker as `observer`.
    fn observer_args(&self, d: &Path) -> Vec<String> {
        let f = |n: &str| d.join(n).display().to_string();
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "--cafile",
            &f("ca.crt"),
            "--cert",
            &f("observer.crt"),
            "--key",
            &f("observer.key"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// A subscriber on `v1/#` printing `topic payload` lines; returns once mosquitto has
    /// acknowledged its subscription.
    fn subscribe_all(&self, d: &Path) -> Proc {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(self.observer_args(d))
            .args(["-i", "tls-observer", "-v", "-t", "v1/#"]);
        let sub = Proc::spawn("mosquitto_sub", cmd);
        assert!(
            wait_until(Duration::from_secs(10), || self
                .log()
                .contains("Sending SUBACK to tls-observer")),
            "the observer did not subscribe:\n{}",
            self.log()
        );
        sub
    }
}

/// An agent.toml in `d` for AG-TLS with a client certificate and no secret.
fn cert_agent_toml(d: &Path, name: &str, port: u16, cert: &str, metrics_port: u16) -> PathBuf {
    let cfg = d.join(format!("{name}.toml"));
    // Relative names: `ca`, `cert` and `key` resolve against the config file's directory.
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nid = \"AG-TLS\"\nhub = \"mqtts://127.0.0.1:{port}\"\nca = \"ca.crt\"\n\
             cert = \"{cert}.crt\"\nkey = \"{cert}.key\"\ndata_dir = \"data-{name}\"\n\
             health_interval = \"200ms\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n"
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn connects_with_a_client_certificate_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mtls_pki(d);
    let broker = MtlsBroker::start(d);
    let sub = broker.subscribe_all(d);

    let cfg = cert_agent_toml(d, "agent", broker.port, "agent", free_port());
    let mut agent = start_agent(&cfg);
    let health_prefix = "v1/agents/AG-TLS/health ";
    let mut lines = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            lines = sub.lines();
            lines.iter().any(|l| l == "v1/status/AG-TLS online")
                && lines.iter().any(|l| l.starts_with(health_prefix))
        }),
        "no status and health over mutual TLS: {lines:?}\nbroker:\n{}",
        broker.log()
    );
    let health = lines
        .iter()
        .find_map(|l| l.strip_prefix(health_prefix))
        .unwrap();
    let health: serde_json::Value = serde_json::from_str(health).unwrap();
    assert_eq!(health["agent"], "AG-TLS");
    // mosquitto took the user name from the certificate (`use_identity_as_username`); the
    // agent sent no password (the config has no secret).
    assert!(
        broker.log().contains("as AG-TLS (p2, c1, k30, u'AG-TLS')"),
        "{}",
        broker.log()
    );
    agent.terminate(Duration::from_secs(10));
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mtls_pki(d);
    let broker = MtlsBroker::start(d);
    let sub = broker.subscribe_all(d);

    let metrics_port = free_port();
    let cfg = cert_agent_toml(d, "rogue", broker.port, "rogue", metrics_port);
    let mut agent = start_agent(&cfg);
    // Both sides saw at least two attempts fail: the agent counts its connection errors (it
    // keeps retrying with backoff), mosquitto logs each failed certificate check.
    let refusals = |log: &str| log.matches("certificate verify failed").count();
    assert!(
        wait_until(Duration::from_secs(30), || {
            metric(&scrape(metrics_port), "edge_agent_mqtt_errors_total").unwrap_or(0.0) >= 2.0
                && refusals(&broker.log()) >= 2
        }),
        "errors: {:?}\nbroker:\n{}",
        metric(&scrape(metrics_port), "edge_agent_mqtt_errors_total"),
        broker.log()
    );
    assert_eq!(
        metric(&scrape(metrics_port), "edge_agent_mqtt_connects_total"),
        Some(0.0)
    );
    assert!(
        !broker.log().contains(" as AG-TLS "),
        "mosquitto accepted the rogue agent:\n{}",
        broker.log()
    );
    // A fence instead of a timed wait for absence: mosquitto delivers to the observer (on v1/#)
    // in the order it received, so whatever the agent could have published would be ahead of
    // this marker.
    let status = Command::new("mosquitto_pub")
        .args(broker.observer_args(d))
        .args(["-t", "v1/test/fence", "-m", "fence"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_until(Duration::from_secs(10), || sub
        .lines()
        .contains(&"v1/test/fence fence".to_string())));
    assert_eq!(sub.lines(), ["v1/test/fence fence"]);
    agent.kill();
}

/// Runs `edge-agent ARGS` to its end (at most 20 s) and returns (success, stderr).
fn run_agent_to_exit(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let mut child = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("edge-agent {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.success(), err)
}

#[test]
fn client_keys_in_pkcs8_pkcs1_and_sec1_load_and_bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "clients-ca");
    client_cert(d, "clients-ca", "ec", "AG-EC");
    // The same EC key as PKCS#8.
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "ec.key",
            "-out",
            "ec-pkcs8.key",
        ],
    );
    // An RSA key as PKCS#1 and as PKCS#8, and a certificate for it.
    openssl(
        d,
        &["genrsa", "-traditional", "-out", "rsa-pkcs1.key", "2048"],
    );
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "rsa-pkcs1.key",
            "-out",
            "rsa-pkcs8.key",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "rsa-pkcs1.key",
            "-out",
            "rsa.csr",
            "-subj",
            "/CN=AG-RSA",
        ],
    );
    sign_client(d, "clients-ca", "rsa");
    // An encrypted key: the agent has no passphrase to open it.
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "ec.key",
            "-passout",
            "pass:x",
            "-out",
            "ec-encrypted.key",
        ],
    );
    let heads = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert!(heads("ec.key").starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert!(heads("ec-pkcs8.key").starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(heads("rsa-pkcs1.key").starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(heads("rsa-pkcs8.key").starts_with("-----BEGIN PRIVATE KEY-----"));

    let id = |cert: &str, key: &str| ClientCert {
        cert: d.join(cert),
        key: d.join(key),
    };
    let ca = d.join("clients-ca.crt");
    for (cert, key) in [
        ("ec.crt", "ec.key"),
        ("ec.crt", "ec-pkcs8.key"),
        ("rsa.crt", "rsa-pkcs1.key"),
        ("rsa.crt", "rsa-pkcs8.key"),
    ] {
        check_tls_files(Some(&ca), Some(&id(cert, key)))
            .unwrap_or_else(|e| panic!("{cert} with {key}: {e}"));
    }

    // A key that is not the certificate's.
    let e = check_tls_files(Some(&ca), Some(&id("ec.crt", "rsa-pkcs8.key"))).unwrap_err();
    assert!(matches!(e, UplinkError::ClientCert { .. }), "{e:?}");
    assert!(e.to_string().starts_with("agent.cert "), "{e}");
    // An encrypted key, a certificate where the key should be, a missing key.
    let e = check_tls_files(Some(&ca), Some(&id("ec.crt", "ec-encrypted.key"))).unwrap_err();
    assert!(
        e.to_string()
            .contains("no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC; unencrypted)"),
        "{e}"
    );
    let e = check_tls_files(Some(&ca), Some(&id("ec.crt", "ec.crt"))).unwrap_err();
    assert!(
        matches!(e, UplinkError::TlsFileEmpty { key: "key", .. }),
        "{e:?}"
    );
    let e = check_tls_files(Some(&ca), Some(&id("ec.crt", "none.key"))).unwrap_err();
    assert!(
        matches!(e, UplinkError::TlsFile { key: "key", .. }),
        "{e:?}"
    );

    // The binary: `check-config` and a start both stop with the reason, not a panic.
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        "[agent]\nid = \"AG-EC\"\nhub = \"mqtts://127.0.0.1:1\"\nca = \"clients-ca.crt\"\n\
         cert = \"ec.crt\"\nkey = \"none.key\"\ndata_dir = \"data\"\n",
    )
    .unwrap();
    let want = format!("agent.key {}: ", d.join("none.key").display());
    let (ok, err) = run_agent_to_exit(&["check-config".as_ref(), cfg.as_os_str()]);
    assert!(
        !ok && err.contains(&want) && !err.contains("panicked"),
        "{err}"
    );
    let (ok, err) = run_agent_to_exit(&["--config".as_ref(), cfg.as_os_str()]);
    assert!(
        !ok && err.contains(&want) && !err.contains("panicked"),
        "{err}"
    );
}
