//! `edge-agent provision`: a technician's one command to make a working agent.toml, after
//! checking with an MQTT CONNECT that the hub accepts the credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet};

use crate::uplink::{UplinkSettings, parse_hub_url};

/// What the technician gave.
#[derive(Clone, Debug)]
pub struct Provision {
    /// `HOST:PORT`, or a full `mqtt://` / `mqtts://` URL.
    pub hub: String,
    /// Agent id.
    pub id: String,
    /// Agent secret.
    pub secret: String,
    /// Use TLS (`mqtts://`) for a bare `HOST:PORT`.
    pub tls: bool,
    /// CA file for TLS.
    pub ca_file: Option<PathBuf>,
    /// Data directory to write into the config.
    pub data_dir: Option<PathBuf>,
    /// Update key to write into the config.
    pub update_key: Option<String>,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The hub said no.
    #[error("the hub at {hub} refused agent `{id}`: {reason}")]
    Refused {
        /// Hub URL.
        hub: String,
        /// The agent id.
        id: String,
        /// What the hub said, in words.
        reason: String,
    },
    /// The hub could not be reached.
    #[error("cannot reach the hub at {hub}: {reason}")]
    Unreachable {
        /// Hub URL.
        hub: String,
        /// What is wrong, for the technician.
        reason: String,
    },
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// The output file.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl Provision {
    /// The hub URL to write.
    pub fn hub_url(&self) -> String {
        if self.hub.contains("://") {
            self.hub.clone()
        } else if self.tls {
            format!("mqtts://{}", self.hub)
        } else {
            format!("mqtt://{}", self.hub)
        }
    }

    /// The agent.toml text.
    pub fn render(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut t = String::new();
        t.push_str("# Written by `edge-agent provision`. Add [[modbus]] devices below, e.g.\n");
        t.push_str("#   [[modbus]]\n#   device = \"SL-0001\"\n#   profile = \"profiles/streetlight-lc200.toml\"\n");
        t.push_str(
            "#   transport = \"rtu:///dev/ttyUSB0?baud=9600&parity=N\"   # or tcp://host:502\n",
        );
        t.push_str("#   unit = 1\n#   interval = \"1s\"\n\n[agent]\n");
        t.push_str(&format!("id = {}\n", q(&self.id)));
        t.push_str(&format!("secret = {}\n", q(&self.secret)));
        t.push_str(&format!("hub = {}\n", q(&self.hub_url())));
        let data_dir = self
            .data_dir
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "data/agent".into());
        t.push_str(&format!("data_dir = {}\n", q(&data_dir)));
        if let Some(ca) = &self.ca_file {
            t.push_str(&format!("ca = {}\n", q(&ca.display().to_string())));
        }
        if let Some(k) = &self.update_key {
            t.push_str(&format!("update_key = {}\n", q(k)));
        }
        t
    }

    /// Checks the input before touching the network.
    pub fn validate(&self) -> Result<(), ProvisionError> {
        protocols::id::validate_id(&self.id)
            .map_err(|e| ProvisionError::Invalid(format!("--id `{}` {e}", self.id)))?;
        if self.secret.is_empty() {
            return Err(ProvisionError::Invalid("--secret must not be empty".into()));
        }
        parse_hub_url(&self.hub_url()).map_err(|_| {
            ProvisionError::Invalid(format!("--hub `{}` must be HOST:PORT", self.hub))
        })?;
        Ok(())
    }

    /// Connects once with the credentials (no will, clean disconnect) and reports the hub's
    /// verdict.
    pub async fn check(&self, timeout: Duration) -> Result<(), ProvisionError> {
        let url = self.hub_url();
        let settings = UplinkSettings {
            agent: self.id.clone(),
            secret: Some(self.secret.clone()),
            hubs: vec![url.clone()],
            keepalive: Duration::from_secs(30),
            ca: self.ca_file.clone(),
            client_cert: None,
            max_inflight: 1,
            ack_timeout: Duration::from_secs(30),
        };
        let full = crate::uplink::mqtt_options(&settings, &url)
            .map_err(|e| ProvisionError::Invalid(e.to_string()))?;
        // Same identity and transport, but no will: a check must not mark the agent offline.
        let (_, host, port) =
            parse_hub_url(&url).map_err(|e| ProvisionError::Invalid(e.to_string()))?;
        let mut o = MqttOptions::new(self.id.clone(), host, port);
        o.set_credentials(self.id.clone(), self.secret.clone());
        o.set_transport(full.transport());
        let (client, mut eventloop) = AsyncClient::new(o, 4);
        let verdict = tokio::time::timeout(timeout, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        return Err(ProvisionError::Refused {
                            hub: url.clone(),
                            id: self.id.clone(),
                            reason: refusal_text(code),
                        });
                    }
                    Err(e) => {
                        return Err(ProvisionError::Unreachable {
                            hub: url.clone(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(ProvisionError::Unreachable {
                hub: url.clone(),
                reason: format!("no answer within {timeout:?}"),
            })
        });
        if verdict.is_ok() {
            let _ = client.disconnect().await;
            // Let the DISCONNECT go out.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
        verdict
    }
}

fn refusal_text(code: ConnectReturnCode) -> String {
    match code {
        ConnectReturnCode::BadUserNamePassword => {
            "bad user name or password (check --id and --secret against hub.toml [[agents]])".into()
        }
        ConnectReturnCode::NotAuthorized => {
            "not authorized (is the agent registered in hub.toml?)".into()
        }
        ConnectReturnCode::BadClientId => "client id rejected".into(),
        ConnectReturnCode::ServiceUnavailable => "service unavailable; try again later".into(),
        ConnectReturnCode::RefusedProtocolVersion => "MQTT protocol version not supported".into(),
        ConnectReturnCode::Success => "refused without a reason".into(),
    }
}

/// Writes the config, readable by the owner only (it holds the secret). Refuses to replace an
/// existing file unless `force`.
pub fn write_config(path: &Path, text: &str, force: bool) -> Result<(), ProvisionError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| ProvisionError::Write {
        path: path.to_owned(),
        source,
    };
    if path.exists() && !force {
        return Err(ProvisionError::Invalid(format!(
            "{} exists; pass --force to replace it",
            path.display()
        )));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("toml.new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_config_loads() {
        let p = Provision {
            hub: "10.0.0.5:1883".into(),
            id: "AG-0042".into(),
            secret: "s\"ec\\ret".into(),
            tls: false,
            ca_file: None,
            data_dir: None,
            update_key: Some("ab".repeat(32)),
        };
        p.validate().unwrap();
        let text = p.render();
        let cfg =
            crate::config::AgentConfig::from_toml(&text, Path::new("/etc/edge-agent")).unwrap();
        assert_eq!(cfg.file.agent.id, "AG-0042");
        assert_eq!(cfg.file.agent.secret.as_deref(), Some("s\"ec\\ret"));
        assert_eq!(cfg.file.agent.hub.as_slice(), ["mqtt://10.0.0.5:1883"]);
        assert_eq!(
            cfg.file.agent.data_dir,
            Path::new("/etc/edge-agent/data/agent")
        );
        let tls = Provision {
            tls: true,
            ..p.clone()
        };
        assert_eq!(tls.hub_url(), "mqtts://10.0.0.5:1883");
        let bad = Provision {
            id: "no spaces".into(),
            ..p
        };
        assert!(bad.validate().unwrap_err().to_string().contains("--id"));
    }

    #[test]
    fn config_is_private_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("agent.toml");
        write_config(&path, "x", false).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(write_config(&path, "y", false).is_err());
        write_config(&path, "y", true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "y");
    }
}
