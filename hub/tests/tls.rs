//! MQTT over TLS and HTTPS against the whole hub, with real clients (mosquitto_pub with
//! `--cafile/--cert/--key`, rumqttc with rustls) and a development PKI: a device logs in by
//! its client certificate (subject CN or SAN URI) or by password over TLS, on IPv4 and IPv6;
//! a certificate of an unknown id, an expired one, one from another CA, a server the client
//! does not trust and plaintext on the TLS port are all refused, counted, and the hub goes on.

mod hub_e2e_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use hub::tls::dev::{ClientName, DevCa};
use hub_e2e_support::*;
use rumqttc::{TlsConfiguration, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The files of a test PKI.
struct Pki {
    dir: tempfile::TempDir,
    /// The CA the hub trusts for servers and clients.
    ca: PathBuf,
    /// A CA nobody trusts.
    other_ca: PathBuf,
}

impl Pki {
    fn new() -> (Pki, DevCa, DevCa) {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("district test CA").unwrap();
        let other = DevCa::new("someone else's CA").unwrap();
        let ca_path = ca.write(dir.path(), "ca").unwrap();
        let other_path = other.write(dir.path(), "other-ca").unwrap();
        ca.server(&["127.0.0.1", "::1", "localhost"])
            .unwrap()
            .write(dir.path(), "hub")
            .unwrap();
        (
            Pki {
                dir,
                ca: ca_path,
                other_ca: other_path,
            },
            ca,
            other,
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A hub with MQTT over TLS on IPv4 and IPv6, HTTPS, and client certificates from `pki.ca`.
async fn tls_hub(data: &Path, pki: &Pki) -> E2eHub {
    let mut cfg = config(data);
    cfg.hub.mqtt_tls_listen = vec!["127.0.0.1:0".into(), "[::1]:0".into()];
    cfg.hub.https_listen = Some("127.0.0.1:0".into());
    cfg.hub.tls_cert = Some(pki.path("hub.crt"));
    cfg.hub.tls_key = Some(pki.path("hub.key"));
    cfg.hub.client_ca = Some(pki.ca.clone());
    E2eHub::start(cfg).await
}

/// How `mosquitto_pub` logs in.
enum Login<'a> {
    /// `--cert/--key`, optionally with a user name.
    Cert(&'a Path, &'a Path, Option<&'a str>),
    /// `-u/-P`.
    Password(&'a str, &'a str),
}

/// `mosquitto_pub` over TLS trusting `cafile`; (success, stderr).
async fn tls_pub(
    addr: SocketAddr,
    cafile: &Path,
    id: &str,
    login: Login<'_>,
    topic: &str,
    payload: &str,
) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("mosquitto_pub");
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("--cafile")
        .arg(cafile)
        .args(["-i", id, "-t", topic, "-q", "1", "-m", payload]);
    match login {
        Login::Cert(cert, key, user) => {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            if let Some(u) = user {
                cmd.args(["-u", u]);
            }
        }
        Login::Password(user, pass) => {
            cmd.args(["-u", user, "-P", pass]);
        }
    }
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("mosquitto_pub finished")
        .expect("mosquitto_pub (mosquitto-clients) installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn level(t: i64, v: f64) -> String {
    format!(r#"{{"ts":{t},"values":{{"water_level":{v}}}}}"#)
}

/// Waits until the `ops` app sees the reading in the store.
async fn stored(hub: &E2eHub, device: &str, t: i64) -> Vec<(i64, f64)> {
    series(&hub.base_url(), device, "water_level", t, t + 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_log_in_over_tls_by_certificate_or_password() {
    let data = tempfile::tempdir().unwrap();
    let (pki, ca, _) = Pki::new();
    ca.client("WL-0001", ClientName::CommonName)
        .unwrap()
        .write(pki.dir.path(), "wl1")
        .unwrap();
    ca.client("WL-0002", ClientName::Uri)
        .unwrap()
        .write(pki.dir.path(), "wl2")
        .unwrap();
    ca.client("AG-0001", ClientName::Uri)
        .unwrap()
        .write(pki.dir.path(), "ag1")
        .unwrap();
    let hub = tls_hub(data.path(), &pki).await;
    let v4 = hub.server().mqtt_tls_addrs()[0];
    let v6 = hub.server().mqtt_tls_addrs()[1];
    assert!(v6.is_ipv6());
    let t = now_ms() - 60_000;

    // A certificate whose CN is the device, no password: acknowledged means stored.
    let (ok, err) = tls_pub(
        v4,
        &pki.ca,
        "WL-0001",
        Login::Cert(&pki.path("wl1.crt"), &pki.path("wl1.key"), None),
        "v1/devices/WL-0001/telemetry",
        &level(t, 1.25),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(stored(&hub, "WL-0001", t).await, vec![(t, 1.25)]);

    // A SAN URI `urn:district:WL-0002`, over IPv6, with its own id as user name.
    let (ok, err) = tls_pub(
        v6,
        &pki.ca,
        "WL-0002",
        Login::Cert(&pki.path("wl2.crt"), &pki.path("wl2.key"), Some("WL-0002")),
        "v1/devices/WL-0002/telemetry",
        &level(t, 2.5),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(stored(&hub, "WL-0002", t).await, vec![(t, 2.5)]);

    // No certificate: the password still works over TLS.
    let (ok, err) = tls_pub(
        v4,
        &pki.ca,
        "WL-0001",
        Login::Password("WL-0001", "wl-secret-0001"),
        "v1/devices/WL-0001/telemetry",
        &level(t + 1000, 1.5),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        series(&hub.base_url(), "WL-0001", "water_level", t, t + 1001).await,
        vec![(t, 1.25), (t + 1000, 1.5)]
    );

    // An agent with rumqttc + rustls and its certificate, no password.
    let client = rustls_client(&pki.ca, Some((&pki.path("ag1.crt"), &pki.path("ag1.key"))));
    let mut o = rumqttc::MqttOptions::new("AG-0001", "127.0.0.1", v4.port());
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(client)));
    connect_with(o)
        .await
        .expect("the agent's certificate logs it in");

    let base = hub.base_url();
    assert!(metric(&base, "hub_mqtt_tls_handshakes_total").await >= 4.0);
    assert_eq!(metric(&base, "hub_mqtt_tls_failures_total").await, 0.0);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_and_plaintext_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let (pki, ca, other) = Pki::new();
    let dir = pki.dir.path();
    ca.client("XX-9999", ClientName::CommonName)
        .unwrap()
        .write(dir, "unknown")
        .unwrap();
    ca.client("ops", ClientName::CommonName)
        .unwrap()
        .write(dir, "app")
        .unwrap();
    ca.client("WL-0001", ClientName::CommonName)
        .unwrap()
        .write(dir, "wl1")
        .unwrap();
    ca.expired_client("WL-0001")
        .unwrap()
        .write(dir, "expired")
        .unwrap();
    other
        .client("WL-0001", ClientName::CommonName)
        .unwrap()
        .write(dir, "foreign")
        .unwrap();
    let hub = tls_hub(data.path(), &pki).await;
    let addr = hub.server().mqtt_tls_addrs()[0];
    let base = hub.base_url();
    let t = now_ms() - 60_000;
    let publish =
        |cafile: PathBuf, id: &'static str, stem: &'static str, user: Option<&'static str>| {
            let (crt, key) = (
                pki.path(&format!("{stem}.crt")),
                pki.path(&format!("{stem}.key")),
            );
            async move {
                let topic = format!("v1/devices/{id}/telemetry");
                tls_pub(
                    addr,
                    &cafile,
                    id,
                    Login::Cert(&crt, &key, user),
                    &topic,
                    &level(t, 9.0),
                )
                .await
            }
        };

    // Signed by the hub's CA but naming nobody registered: CONNACK 4 (bad user name or
    // password), after a good handshake.
    let (ok, err) = publish(pki.ca.clone(), "XX-9999", "unknown", None).await;
    assert!(!ok, "an unknown id must be refused");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    // An app's name: apps log in by password or token only.
    let (ok, err) = publish(pki.ca.clone(), "ops", "app", None).await;
    assert!(!ok && err.to_lowercase().contains("refused"), "{err}");
    // A device's certificate with another identity's user name.
    let (ok, err) = publish(pki.ca.clone(), "WL-0001", "wl1", Some("WL-0002")).await;
    assert!(!ok && err.to_lowercase().contains("refused"), "{err}");
    assert_eq!(
        metric(
            &base,
            "hub_mqtt_connects_refused_total{reason=\"bad_credentials\"}"
        )
        .await,
        3.0
    );
    let failures = metric(&base, "hub_mqtt_tls_failures_total").await;
    assert_eq!(failures, 0.0, "those three handshakes succeeded");

    // Expired, and from another CA: refused at the handshake.
    let (ok, err) = publish(pki.ca.clone(), "WL-0001", "expired", None).await;
    assert!(!ok, "an expired certificate must be refused: {err}");
    let (ok, err) = publish(pki.ca.clone(), "WL-0001", "foreign", None).await;
    assert!(!ok, "another CA's certificate must be refused: {err}");
    // The client does not trust the hub's certificate: it gives up itself.
    let (ok, err) = publish(pki.other_ca.clone(), "WL-0001", "wl1", None).await;
    assert!(!ok, "a hub the client does not trust: {err}");

    // Plaintext MQTT on the TLS port: no CONNACK, the connection is closed.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connect = b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06abcdef";
    tcp.write_all(connect).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("the hub closes a plaintext connection in time")
        .unwrap_or(0);
    assert!(
        n == 0 || buf[0] != 0x20,
        "no CONNACK on the TLS port: {:?}",
        &buf[..n]
    );

    // Every failed handshake was counted (the untrusting client may close before the hub
    // notices, so at least the three the hub refused or could not read).
    assert!(
        metric(&base, "hub_mqtt_tls_failures_total").await >= 3.0,
        "expired, foreign and plaintext"
    );
    // Nothing of it was stored, and a good device still gets in.
    assert!(stored(&hub, "WL-0001", t).await.is_empty());
    let (ok, err) = publish(pki.ca.clone(), "WL-0001", "wl1", None).await;
    assert!(ok, "{err}");
    assert_eq!(stored(&hub, "WL-0001", t).await, vec![(t, 9.0)]);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_refuses_plain_http() {
    let data = tempfile::tempdir().unwrap();
    let (pki, _ca, _) = Pki::new();
    let hub = tls_hub(data.path(), &pki).await;
    let addr = hub.server().https_addr().expect("HTTPS listening");

    let (status, body) = https_get(addr, &pki.ca, "/healthz").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("ok"), "{body}");
    // The API with a bearer token, over TLS.
    let (status, _) = https_get(addr, &pki.ca, "/api/v1/devices").await;
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");

    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // The plain listener stays for loopback.
    let (status, _) = get_json(&hub.base_url(), "/healthz", None).await;
    assert_eq!(status, 200);
    hub.stop().await;
}

/// A rustls client config (ring) trusting `ca`, with a client certificate when given.
fn rustls_client(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in hub::tls::certificates(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some((crt, key)) => {
            let chain = hub::tls::certificates(crt).unwrap();
            let pem = std::fs::read(key).unwrap();
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

/// GET `path` over HTTPS/1.1 trusting `ca`; (status line, body).
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> (String, String) {
    let connector = tokio_rustls::TlsConnector::from(rustls_client(ca, None));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    // A server that closes without close_notify is an error to rustls; what arrived counts.
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut resp))
        .await
        .expect("HTTPS answer in time");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}
