//! agent.toml: the agent's identity, its hub, its durable queue, its Modbus devices and cameras.
//!
//! Relative paths (data_dir, profiles, camera files, the TLS files `ca`, `cert`, `key`) are
//! relative to the config file, so a technician can move a provisioned directory as a whole.

use std::path::{Path, PathBuf};

use protocols::config::{ByteSize, ConfigError, HumanDuration, parse_toml};
use protocols::id::validate_id;
use protocols::profile::DeviceProfile;
use serde::{Deserialize, Serialize};

/// The whole agent.toml.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Identity, hub and queue.
    pub agent: AgentSection,
    /// Modbus devices polled by this agent.
    #[serde(default)]
    pub modbus: Vec<ModbusDevice>,
    /// Cameras watched by this agent.
    #[serde(default)]
    pub camera: Vec<CameraSource>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data/agent")
}

fn default_queue_bytes() -> u64 {
    256 << 20
}

/// Readings held in memory while the queue cannot be written (disk full or failing, or below
/// `min_free_disk`). A reading costs about 40 bytes in memory (value, quantity, quality, its
/// share of the sample), so the default holds ~4 MB: minutes to hours of a typical agent's
/// polling (a 100-reading device at 10 Hz fills it in 100 s; 20 slow meters in hours) without
/// threatening a 256 MB box.
pub const DEFAULT_BUFFER_READINGS: usize = 100_000;

/// Free bytes the agent leaves on the data directory's file system. 16 MiB: enough for redb to
/// grow the queue file by a region and commit the buffered batches once writing resumes, and
/// for the rest of the box (logs, an update's download) to keep working; on the smallest cards
/// in the field (4 GB) it is under 0.5 %. 0 turns the watermark off.
pub const DEFAULT_MIN_FREE_DISK: u64 = 16 << 20;

fn default_buffer_readings() -> usize {
    DEFAULT_BUFFER_READINGS
}

fn default_min_free_disk() -> ByteSize {
    ByteSize(DEFAULT_MIN_FREE_DISK)
}

fn default_batch_readings() -> usize {
    2000
}

fn default_batch_age() -> HumanDuration {
    HumanDuration::millis(500)
}

fn default_health_interval() -> HumanDuration {
    HumanDuration::secs(30)
}

fn default_keepalive() -> HumanDuration {
    HumanDuration::secs(30)
}

fn default_max_inflight() -> usize {
    64
}

fn default_ack_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}

/// The `[agent]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The agent's id at the hub.
    pub id: String,
    /// Its secret (the MQTT password). May be left out when `cert` and `key` identify the agent
    /// to the hub instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `mqtt://host:port` or `mqtts://host:port`, or a list of them: the hubs the uplink fails
    /// over between, first to last and round again (see [`HubList`]).
    pub hub: HubList,
    /// Where the durable queue lives.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Disk budget of the queue; when full the oldest batches are dropped and counted.
    #[serde(default = "default_queue_bytes")]
    pub queue_max_bytes: u64,
    /// A batch is sealed at this many readings...
    #[serde(default = "default_batch_readings")]
    pub batch_max_readings: usize,
    /// ...or when its oldest reading is this old.
    #[serde(default = "default_batch_age")]
    pub batch_max_age: HumanDuration,
    /// Readings held in memory while the queue cannot be written (see
    /// [`DEFAULT_BUFFER_READINGS`]); past it the oldest are dropped and counted. At least
    /// `batch_max_readings`.
    #[serde(default = "default_buffer_readings")]
    pub buffer_readings: usize,
    /// Free bytes to leave on the data directory's file system (see [`DEFAULT_MIN_FREE_DISK`]):
    /// below it nothing is written to the queue and readings are buffered in memory until
    /// space is back. Bytes, or text like `"16MiB"`.
    #[serde(default = "default_min_free_disk")]
    pub min_free_disk: ByteSize,
    /// How often health is published.
    #[serde(default = "default_health_interval")]
    pub health_interval: HumanDuration,
    /// MQTT keepalive.
    #[serde(default = "default_keepalive")]
    pub keepalive: HumanDuration,
    /// For `mqtts://`: a PEM file of CA certificates to trust instead of the system roots.
    /// `ca_file` is the older name, still accepted.
    #[serde(default, alias = "ca_file", skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// For `mqtts://`: the agent's client certificate chain (PEM, the agent's certificate
    /// first), presented to the hub in the TLS handshake. Its subject CN (or a SAN URI
    /// `urn:district:{id}`) is the agent id, and it is signed by the hub's `client_ca`; with it
    /// the agent needs no `secret`. X.509 v3 (rustls refuses v1 certificates). Goes with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Local Prometheus metrics address, e.g. `127.0.0.1:9101`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Where link quality comes from: the path of a file the modem daemon writes with `rssi=`,
    /// `rsrp=`, `sinr=` lines, or `cmd:PROGRAM ARGS...` (run without a shell) printing the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_source: Option<String>,
    /// Public key (hex ed25519) that update bundles must be signed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_key: Option<String>,
    /// Batches sent and not yet acknowledged by the hub, at most (the pipelining window).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// A batch unacknowledged this long is sent again.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: HumanDuration,
    /// Where released versions are installed (`versions/`, `current`, `previous`); by default
    /// the directory above the running binary's version directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_dir: Option<PathBuf>,
}

/// `[agent] hub`: one hub URL (`hub = "mqtt://10.0.0.1:1883"`) or a list of them
/// (`hub = ["mqtt://10.0.0.1:1883", "mqtt://10.0.0.2:1883"]`), the hubs of a cluster the
/// uplink fails over between in this order. Written back as a plain string when it holds one
/// URL, so a single-hub agent.toml reads as it always did. Validation refuses an empty list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubList(Vec<String>);

impl HubList {
    /// The hubs in order (no validation; [`AgentConfig::from_toml`] validates).
    pub fn new(urls: Vec<String>) -> HubList {
        HubList(urls)
    }

    /// The first hub: the one the uplink tries first (`""` for an empty list, which a
    /// validated config never has).
    pub fn first(&self) -> &str {
        self.0.first().map(String::as_str).unwrap_or_default()
    }

    /// The hubs in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The hubs as a slice.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// How many hubs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No hub at all (refused by validation).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for HubList {
    fn from(url: String) -> HubList {
        HubList(vec![url])
    }
}

impl From<&str> for HubList {
    fn from(url: &str) -> HubList {
        HubList(vec![url.to_string()])
    }
}

impl From<Vec<String>> for HubList {
    fn from(urls: Vec<String>) -> HubList {
        HubList(urls)
    }
}

impl std::fmt::Display for HubList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl Serialize for HubList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for HubList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HubList, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = HubList;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a hub URL (mqtt://host:port) or a list of them")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HubList, E> {
                Ok(HubList::from(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<HubList, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    urls.push(url);
                }
                Ok(HubList(urls))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn default_unit() -> u8 {
    1
}

fn default_interval() -> HumanDuration {
    HumanDuration::secs(1)
}

fn default_heartbeat() -> HumanDuration {
    HumanDuration::secs(60)
}

fn default_timeout() -> HumanDuration {
    HumanDuration::millis(1000)
}

/// A `[[modbus]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// The device id registered at the hub.
    pub device: String,
    /// The device's profile file.
    pub profile: PathBuf,
    /// `tcp://host:port` or `rtu:///dev/ttyUSB0?baud=9600&parity=N`.
    pub transport: String,
    /// Modbus unit id (slave address).
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Poll interval.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Send only changes larger than this (engineering units); 0 sends every poll.
    #[serde(default)]
    pub deadband: f64,
    /// But send at least this often.
    #[serde(default = "default_heartbeat")]
    pub heartbeat: HumanDuration,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

/// A `[[camera]]` entry.
// No `deny_unknown_fields` here: serde cannot combine it with `flatten`; the camera module
// refuses unknown keys when it types `settings` (`camera::CameraSettings`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CameraSource {
    /// The camera device id registered at the hub.
    pub id: String,
    /// `rtsp://...`, `http://.../snapshot.jpg`, or `file:clip.mp4`.
    pub source: String,
    /// Further camera settings (motion thresholds, masks) owned by the video module.
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// The parsed transport of a Modbus device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// Modbus RTU over a serial line.
    Rtu {
        /// Device path.
        path: String,
        /// Baud rate.
        baud: u32,
        /// `N`, `E` or `O`.
        parity: char,
        /// 1 or 2.
        stop_bits: u8,
    },
}

/// Why a transport string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: {1}")]
pub struct TransportError(String, &'static str);

impl Transport {
    /// Parses `tcp://host:port` or `rtu:///dev/tty...?baud=9600&parity=N&stop=1`.
    pub fn parse(s: &str) -> Result<Transport, TransportError> {
        let e = |why| TransportError(s.to_string(), why);
        if let Some(addr) = s.strip_prefix("tcp://") {
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| e("needs host:port"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(e("needs host:port"));
            }
            return Ok(Transport::Tcp {
                addr: addr.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("rtu://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !path.starts_with('/') {
                return Err(e("needs an absolute device path, e.g. rtu:///dev/ttyUSB0"));
            }
            let (mut baud, mut parity, mut stop_bits) = (9600u32, 'N', 1u8);
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                match kv.split_once('=') {
                    Some(("baud", v)) => {
                        baud = v.parse().map_err(|_| e("baud must be a number"))?
                    }
                    Some(("parity", v)) => {
                        parity = match v {
                            "N" | "n" => 'N',
                            "E" | "e" => 'E',
                            "O" | "o" => 'O',
                            _ => return Err(e("parity must be N, E or O")),
                        }
                    }
                    Some(("stop", v)) => {
                        stop_bits = match v {
                            "1" => 1,
                            "2" => 2,
                            _ => return Err(e("stop must be 1 or 2")),
                        }
                    }
                    _ => return Err(e("unknown option; use baud, parity, stop")),
                }
            }
            if !(300..=921_600).contains(&baud) {
                return Err(e("baud out of range 300..=921600"));
            }
            return Ok(Transport::Rtu {
                path: path.to_string(),
                baud,
                parity,
                stop_bits,
            });
        }
        Err(e("must start with tcp:// or rtu://"))
    }
}

pub use protocols::config::LoadError;

/// A loaded, validated agent configuration with its profiles.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The file as written, with paths resolved.
    pub file: AgentFile,
    /// The profile of each `[[modbus]]` entry, same order.
    pub profiles: Vec<DeviceProfile>,
    /// The transport of each `[[modbus]]` entry, same order.
    pub transports: Vec<Transport>,
    /// Where the file was loaded from, for `reload`.
    pub path: Option<PathBuf>,
}

impl AgentConfig {
    /// Reads, resolves and validates an agent.toml and the profiles it names.
    pub fn load(path: &Path) -> Result<AgentConfig, LoadError> {
        let text = protocols::config::read_config_file(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut cfg =
            AgentConfig::from_toml(&text, base).map_err(|error| LoadError::invalid(path, error))?;
        cfg.path = Some(path.to_owned());
        Ok(cfg)
    }

    /// Parses and validates agent.toml text; relative paths are taken against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<AgentConfig, ConfigError> {
        let mut file: AgentFile = parse_toml(text)?;
        let a = &mut file.agent;
        validate_id(&a.id).map_err(|e| ConfigError::new("agent.id", format!("`{}` {e}", a.id)))?;
        check_hubs(&a.hub)?;
        match (&a.cert, &a.key) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "agent.key",
                    "is needed with agent.cert (the certificate's private key, PEM)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "agent.cert",
                    "is needed with agent.key (the client certificate chain, PEM)",
                ));
            }
            (Some(_), Some(_)) => {
                // The certificate is presented in the TLS handshake: every hub the agent may
                // fail over to must be mqtts://, or the agent could not log in there.
                for (i, url) in a.hub.iter().enumerate() {
                    if !url.starts_with("mqtts://") {
                        let which = if a.hub.len() == 1 {
                            "hub".to_string()
                        } else {
                            format!("agent.hub[{i}]")
                        };
                        return Err(ConfigError::new(
                            "agent.cert",
                            format!(
                                "needs an mqtts:// hub (a client certificate is presented in the TLS handshake; {which} is `{url}`)"
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
        match &a.secret {
            Some(s) if s.is_empty() => {
                return Err(ConfigError::new("agent.secret", "must not be empty"));
            }
            // A client certificate authenticates the agent without a password.
            None if a.cert.is_none() => {
                return Err(ConfigError::new(
                    "agent.secret",
                    "is needed unless agent.cert and agent.key identify the agent",
                ));
            }
            _ => {}
        }
        if a.data_dir.is_relative() {
            a.data_dir = base.join(&a.data_dir);
        }
        for file in [&mut a.ca, &mut a.cert, &mut a.key].into_iter().flatten() {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        if let Some(d) = &mut a.install_dir
            && d.is_relative()
        {
            *d = base.join(&*d);
        }
        if let Some(src) = &mut a.link_source {
            if let Some(cmd) = src.strip_prefix("cmd:") {
                if cmd.split_whitespace().next().is_none() {
                    return Err(ConfigError::new(
                        "agent.link_source",
                        "`cmd:` needs a command, e.g. `cmd:/usr/bin/modem-status`",
                    ));
                }
            } else if Path::new(src.as_str()).is_relative() {
                *src = base.join(src.as_str()).display().to_string();
            }
        }
        if !(1..=1000).contains(&a.max_inflight) {
            return Err(ConfigError::new("agent.max_inflight", "must be 1..=1000"));
        }
        if a.ack_timeout.0 < std::time::Duration::from_millis(100) {
            return Err(ConfigError::new(
                "agent.ack_timeout",
                "must be at least 100ms",
            ));
        }
        if a.health_interval.0 < std::time::Duration::from_millis(100) {
            return Err(ConfigError::new(
                "agent.health_interval",
                "must be at least 100ms",
            ));
        }
        if a.batch_max_readings > 20_000 {
            return Err(ConfigError::new(
                "agent.batch_max_readings",
                "must be at most 20000 (a batch must stay far below the hub's 1 MiB limit)",
            ));
        }
        if a.batch_max_age.0.is_zero() {
            return Err(ConfigError::new(
                "agent.batch_max_age",
                "must be longer than zero",
            ));
        }
        if a.queue_max_bytes < 64 << 10 {
            return Err(ConfigError::new(
                "agent.queue_max_bytes",
                "must be at least 64 KiB",
            ));
        }
        if a.batch_max_readings == 0 {
            return Err(ConfigError::new(
                "agent.batch_max_readings",
                "must be at least 1",
            ));
        }
        if a.buffer_readings < a.batch_max_readings {
            return Err(ConfigError::new(
                "agent.buffer_readings",
                "must be at least batch_max_readings (the buffer holds whole batches)",
            ));
        }
        if let Some(m) = &a.metrics_listen
            && m.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::new(
                "agent.metrics_listen",
                format!("`{m}` is not an address like 127.0.0.1:9101"),
            ));
        }
        if let Some(k) = &a.update_key
            && (k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ConfigError::new(
                "agent.update_key",
                "must be 64 hex digits (an ed25519 public key)",
            ));
        }
        let mut profiles = Vec::with_capacity(file.modbus.len());
        let mut transports = Vec::with_capacity(file.modbus.len());
        let mut ids = std::collections::HashSet::new();
        for (i, m) in file.modbus.iter_mut().enumerate() {
            let key = format!("modbus[{i}]");
            validate_id(&m.device).map_err(|e| {
                ConfigError::new(format!("{key}.device"), format!("`{}` {e}", m.device))
            })?;
            if !ids.insert(m.device.clone()) {
                return Err(ConfigError::new(
                    format!("{key}.device"),
                    format!("`{}` is listed twice", m.device),
                ));
            }
            if m.profile.is_relative() {
                m.profile = base.join(&m.profile);
            }
            let text = std::fs::read_to_string(&m.profile).map_err(|e| {
                ConfigError::new(
                    format!("{key}.profile"),
                    format!("{}: {e}", m.profile.display()),
                )
            })?;
            let profile = DeviceProfile::from_toml(&text).map_err(|e| {
                ConfigError::new(
                    format!("{key}.profile"),
                    format!("{}: {e}", m.profile.display()),
                )
            })?;
            profiles.push(profile);
            transports.push(
                Transport::parse(&m.transport)
                    .map_err(|e| ConfigError::new(format!("{key}.transport"), e))?,
            );
            if m.unit == 0 || m.unit > 247 {
                return Err(ConfigError::new(format!("{key}.unit"), "must be 1..=247"));
            }
            if m.interval.0.as_millis() < 10 {
                return Err(ConfigError::new(
                    format!("{key}.interval"),
                    "must be at least 10ms",
                ));
            }
            if !m.deadband.is_finite() || m.deadband < 0.0 {
                return Err(ConfigError::new(
                    format!("{key}.deadband"),
                    "must be zero or positive",
                ));
            }
            if m.heartbeat.0 < m.interval.0 {
                return Err(ConfigError::new(
                    format!("{key}.heartbeat"),
                    "must not be shorter than interval",
                ));
            }
            if m.timeout.0.is_zero() {
                return Err(ConfigError::new(
                    format!("{key}.timeout"),
                    "must be longer than zero",
                ));
            }
        }
        for (i, c) in file.camera.iter_mut().enumerate() {
            let key = format!("camera[{i}]");
            validate_id(&c.id)
                .map_err(|e| ConfigError::new(format!("{key}.id"), format!("`{}` {e}", c.id)))?;
            if !ids.insert(c.id.clone()) {
                return Err(ConfigError::new(
                    format!("{key}.id"),
                    format!("`{}` is listed twice", c.id),
                ));
            }
            let ok = ["rtsp://", "http://", "https://", "file:", "synthetic:"]
                .iter()
                .any(|p| c.source.starts_with(p));
            if !ok {
                return Err(ConfigError::new(
                    format!("{key}.source"),
                    "must start with rtsp://, http://, https://, file: or synthetic:",
                ));
            }
            if let Some(rel) = c.source.strip_prefix("file:")
                && !rel.starts_with('/')
            {
                c.source = format!("file:{}", base.join(rel).display());
            }
            crate::camera::CameraConfig::from_entry(c)
                .map_err(|e| ConfigError::new(format!("{key}.{}", e.key), e.problem))?;
        }
        Ok(AgentConfig {
            file,
            profiles,
            transports,
            path: None,
        })
    }
}

/// Checks `mqtt://host:port` / `mqtts://host:port`.
pub fn check_hub_url(url: &str) -> Result<(), ConfigError> {
    check_hub_url_at("agent.hub", url)
}

/// Checks `[agent] hub`: one URL, or a non-empty list whose entries are named by their index
/// (`agent.hub[1]`) when one is bad.
pub fn check_hubs(hubs: &HubList) -> Result<(), ConfigError> {
    match hubs.as_slice() {
        [] => Err(ConfigError::new(
            "agent.hub",
            "must name at least one hub (an mqtt:// or mqtts:// URL)",
        )),
        [one] => check_hub_url(one),
        many => many
            .iter()
            .enumerate()
            .try_for_each(|(i, url)| check_hub_url_at(&format!("agent.hub[{i}]"), url)),
    }
}

fn check_hub_url_at(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("mqtts://"))
        .ok_or_else(|| {
            ConfigError::new(key, format!("`{url}` must start with mqtt:// or mqtts://"))
        })?;
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(ConfigError::new(key, format!("`{url}` needs host:port"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = "model = \"radar\"\nkind = \"water_level\"\n[[points]]\nquantity = \"water_level\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\nunit = \"mm\"\n";

    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("profiles")).unwrap();
        std::fs::write(d.path().join("profiles/radar.toml"), PROFILE).unwrap();
        d
    }

    const GOOD: &str = r#"
[agent]
id = "AG-0001"
secret = "agent-secret-1"
hub = "mqtt://127.0.0.1:1883"
data_dir = "data/agent"

[[modbus]]
device = "WL-0001"
profile = "profiles/radar.toml"
transport = "tcp://127.0.0.1:5020"
unit = 1
interval = "1s"
deadband = 0.0
heartbeat = "60s"

[[camera]]
id = "CAM-0001"
source = "rtsp://127.0.0.1:8554/cam1"
"#;

    #[test]
    fn contract_example_loads_with_relative_paths() {
        let d = dir();
        let path = d.path().join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let c = AgentConfig::load(&path).unwrap();
        assert_eq!(c.file.agent.data_dir, d.path().join("data/agent"));
        assert_eq!(c.profiles.len(), 1);
        assert_eq!(
            c.transports[0],
            Transport::Tcp {
                addr: "127.0.0.1:5020".into()
            }
        );
        assert_eq!(c.file.camera[0].source, "rtsp://127.0.0.1:8554/cam1");
    }

    #[test]
    fn transports() {
        assert_eq!(
            Transport::parse("rtu:///dev/ttyUSB0?baud=19200&parity=E").unwrap(),
            Transport::Rtu {
                path: "/dev/ttyUSB0".into(),
                baud: 19200,
                parity: 'E',
                stop_bits: 1
            }
        );
        assert_eq!(
            Transport::parse("rtu:///dev/ttyS1").unwrap(),
            Transport::Rtu {
                path: "/dev/ttyS1".into(),
                baud: 9600,
                parity: 'N',
                stop_bits: 1
            }
        );
        for bad in [
            "udp://x:1",
            "tcp://nohost",
            "tcp://:502",
            "rtu://ttyUSB0",
            "rtu:///dev/x?baud=fast",
            "rtu:///dev/x?parity=Q",
            "rtu:///dev/x?speed=1",
        ] {
            assert!(Transport::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_names_its_key() {
        let d = dir();
        let cases = [
            (GOOD.replace("AG-0001", "AG 1"), "agent.id: `AG 1`"),
            (
                GOOD.replace("mqtt://127.0.0.1:1883", "http://x:1"),
                "agent.hub: `http://x:1` must start",
            ),
            (
                GOOD.replace("mqtt://127.0.0.1:1883", "mqtt://x"),
                "agent.hub: `mqtt://x` needs host:port",
            ),
            (
                GOOD.replace("profiles/radar.toml", "profiles/none.toml"),
                "modbus[0].profile:",
            ),
            (
                GOOD.replace("tcp://127.0.0.1:5020", "tcp://x"),
                "modbus[0].transport:",
            ),
            (
                GOOD.replace("unit = 1", "unit = 0"),
                "modbus[0].unit: must be 1..=247",
            ),
            (
                GOOD.replace("interval = \"1s\"", "interval = \"1ms\""),
                "modbus[0].interval:",
            ),
            (
                GOOD.replace("deadband = 0.0", "deadband = -1.0"),
                "modbus[0].deadband:",
            ),
            (
                GOOD.replace("heartbeat = \"60s\"", "heartbeat = \"500ms\""),
                "modbus[0].heartbeat:",
            ),
            (
                GOOD.replace("heartbeat = \"60s\"", "heartbeat = \"often\""),
                "modbus[0].heartbeat (line",
            ),
            (
                GOOD.replace("rtsp://127.0.0.1:8554/cam1", "ftp://cam"),
                "camera[0].source:",
            ),
            (
                GOOD.replace("cam1\"", "cam1\"\nthreshold = 0"),
                "camera[0].threshold: must be 1..=254",
            ),
            (
                GOOD.replace("CAM-0001", "WL-0001"),
                "camera[0].id: `WL-0001` is listed twice",
            ),
            (
                GOOD.replace("deadband", "dead_band"),
                "modbus[0].dead_band (line",
            ),
            (format!("{GOOD}\n[agent2]\n"), "agent2 (line"),
        ];
        for (text, want) in cases {
            let got = AgentConfig::from_toml(&text, d.path())
                .unwrap_err()
                .to_string();
            assert!(got.starts_with(want), "got: {got}\nwant: {want}");
            assert!(!got.contains('\n'));
        }
        std::fs::write(
            d.path().join("profiles/bad.toml"),
            "model = \"m\"\nkind = \"x\"\npoints = []\n",
        )
        .unwrap();
        let got = AgentConfig::from_toml(&GOOD.replace("radar.toml", "bad.toml"), d.path())
            .unwrap_err()
            .to_string();
        assert!(
            got.contains("bad.toml: points: a profile needs at least one point"),
            "{got}"
        );
    }

    /// GOOD with `[agent]` lines replaced: `secret`, `hub` (a URL, or a TOML list when it
    /// starts with `[`) and the lines in `tls`.
    fn with_agent(secret: Option<&str>, hub: &str, tls: &str) -> String {
        let secret = secret
            .map(|s| format!("secret = \"{s}\"\n"))
            .unwrap_or_default();
        let hub = match hub.starts_with('[') {
            true => hub.to_string(),
            false => format!("\"{hub}\""),
        };
        GOOD.replace("secret = \"agent-secret-1\"\n", &format!("{secret}{tls}"))
            .replace("\"mqtt://127.0.0.1:1883\"", &hub)
    }

    #[test]
    fn a_client_certificate_replaces_the_secret_and_paths_resolve_against_the_file() {
        let d = dir();
        let tls = "ca = \"tls/hub-ca.crt\"\ncert = \"tls/agent.crt\"\nkey = \"/etc/agent.key\"\n";
        let c =
            AgentConfig::from_toml(&with_agent(None, "mqtts://hub:8883", tls), d.path()).unwrap();
        let a = &c.file.agent;
        assert_eq!(a.secret, None);
        assert_eq!(
            a.ca.as_deref(),
            Some(d.path().join("tls/hub-ca.crt").as_path())
        );
        assert_eq!(
            a.cert.as_deref(),
            Some(d.path().join("tls/agent.crt").as_path())
        );
        assert_eq!(a.key.as_deref(), Some(Path::new("/etc/agent.key")));
        let s = crate::agent::uplink_settings(a);
        assert_eq!(s.secret, None);
        assert_eq!(
            s.client_cert,
            Some(crate::uplink::ClientCert {
                cert: d.path().join("tls/agent.crt"),
                key: "/etc/agent.key".into(),
            })
        );

        // A secret as well is fine: the hub may take either.
        let c = AgentConfig::from_toml(&with_agent(Some("s"), "mqtts://hub:8883", tls), d.path())
            .unwrap();
        assert_eq!(c.file.agent.secret.as_deref(), Some("s"));
    }

    #[test]
    fn ca_file_is_still_accepted_for_ca() {
        let d = dir();
        let text = with_agent(Some("s"), "mqtts://hub:8883", "ca_file = \"ca.pem\"\n");
        let c = AgentConfig::from_toml(&text, d.path()).unwrap();
        assert_eq!(c.file.agent.ca, Some(d.path().join("ca.pem")));
    }

    #[test]
    fn tls_identity_problems_name_their_key() {
        let d = dir();
        let mqtts = "mqtts://hub:8883";
        let cases = [
            (
                with_agent(None, mqtts, "cert = \"a.crt\"\n"),
                "agent.key: is needed with agent.cert",
            ),
            (
                with_agent(Some("s"), mqtts, "key = \"a.key\"\n"),
                "agent.cert: is needed with agent.key",
            ),
            (
                with_agent(
                    Some("s"),
                    "mqtt://hub:1883",
                    "cert = \"a.crt\"\nkey = \"a.key\"\n",
                ),
                "agent.cert: needs an mqtts:// hub",
            ),
            (
                with_agent(None, mqtts, "ca = \"ca.pem\"\n"),
                "agent.secret: is needed unless agent.cert and agent.key",
            ),
            (
                with_agent(Some(""), mqtts, "cert = \"a.crt\"\nkey = \"a.key\"\n"),
                "agent.secret: must not be empty",
            ),
            (
                with_agent(Some("s"), mqtts, "ca = \"a.pem\"\nca_file = \"b.pem\"\n"),
                "agent (line 2): duplicate field `ca`",
            ),
            (
                with_agent(Some("s"), mqtts, "cert = 1\nkey = \"a.key\"\n"),
                "agent.cert (line",
            ),
        ];
        for (text, want) in cases {
            let got = AgentConfig::from_toml(&text, d.path())
                .unwrap_err()
                .to_string();
            assert!(got.starts_with(want), "got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn hub_is_a_url_or_a_list_of_them() {
        let d = dir();
        let c = AgentConfig::from_toml(GOOD, d.path()).unwrap();
        assert_eq!(c.file.agent.hub.as_slice(), ["mqtt://127.0.0.1:1883"]);
        assert_eq!(c.file.agent.hub.first(), "mqtt://127.0.0.1:1883");

        let list = r#"["mqtt://10.0.0.1:1883", "mqtts://10.0.0.2:8883", "mqtt://[::1]:1883"]"#;
        let text = GOOD.replace("\"mqtt://127.0.0.1:1883\"", list);
        let c = AgentConfig::from_toml(&text, d.path()).unwrap();
        let hub = &c.file.agent.hub;
        assert_eq!(hub.len(), 3);
        assert_eq!(hub.first(), "mqtt://10.0.0.1:1883");
        assert_eq!(
            hub.iter().collect::<Vec<_>>(),
            [
                "mqtt://10.0.0.1:1883",
                "mqtts://10.0.0.2:8883",
                "mqtt://[::1]:1883"
            ]
        );
        // Mixed schemes without a client certificate: mqtts:// uses `ca` or the system roots.
        assert_eq!(
            crate::agent::uplink_settings(&c.file.agent).hubs,
            hub.as_slice()
        );

        // A one-element list is the same as the string.
        let text = GOOD.replace("\"mqtt://127.0.0.1:1883\"", r#"["mqtt://127.0.0.1:1883"]"#);
        let one = AgentConfig::from_toml(&text, d.path()).unwrap();
        assert_eq!(one.file.agent.hub, HubList::from("mqtt://127.0.0.1:1883"));
    }

    #[test]
    fn hub_is_written_back_as_a_string_when_there_is_one() {
        let d = dir();
        let mut c = AgentConfig::from_toml(GOOD, d.path()).unwrap();
        let text = toml::to_string(&c.file).unwrap();
        assert!(text.contains("hub = \"mqtt://127.0.0.1:1883\"\n"), "{text}");
        c.file.agent.hub = HubList::new(vec!["mqtt://a:1883".into(), "mqtt://b:1883".into()]);
        let text = toml::to_string(&c.file).unwrap();
        assert!(
            text.contains("hub = [\"mqtt://a:1883\", \"mqtt://b:1883\"]"),
            "{text}"
        );
        let back: AgentFile = parse_toml(&text).unwrap();
        assert_eq!(back.agent.hub, c.file.agent.hub);
    }

    #[test]
    fn hub_list_problems_name_the_entry() {
        let d = dir();
        let hub = |v: &str| GOOD.replace("\"mqtt://127.0.0.1:1883\"", v);
        let cases = [
            (hub("[]"), "agent.hub: must name at least one hub"),
            (
                hub(r#"["mqtt://a:1883", "http://b:1"]"#),
                "agent.hub[1]: `http://b:1` must start with mqtt:// or mqtts://",
            ),
            (
                hub(r#"["mqtt://a", "mqtt://b:1883"]"#),
                "agent.hub[0]: `mqtt://a` needs host:port",
            ),
            (hub("1883"), "agent.hub (line"),
            (
                hub(r#"["mqtt://a:1883", 2]"#),
                "agent.hub[1] (line 5): invalid type: integer `2`, expected a string",
            ),
        ];
        for (text, want) in cases {
            let got = AgentConfig::from_toml(&text, d.path())
                .unwrap_err()
                .to_string();
            assert!(got.starts_with(want), "got: {got}\nwant: {want}");
            assert!(!got.contains('\n'));
        }
    }

    #[test]
    fn a_client_certificate_needs_every_hub_of_the_list_to_be_mqtts() {
        let d = dir();
        let tls = "cert = \"a.crt\"\nkey = \"a.key\"\n";
        let all = r#"["mqtts://a:8883", "mqtts://b:8883"]"#;
        let c = AgentConfig::from_toml(&with_agent(None, all, tls), d.path()).unwrap();
        assert_eq!(c.file.agent.hub.len(), 2);

        let mixed = r#"["mqtts://a:8883", "mqtt://b:1883"]"#;
        let got = AgentConfig::from_toml(&with_agent(None, mixed, tls), d.path())
            .unwrap_err()
            .to_string();
        assert!(
            got.starts_with("agent.cert: needs an mqtts:// hub")
                && got.contains("agent.hub[1] is `mqtt://b:1883`"),
            "{got}"
        );
        // The same mix without a client certificate is fine.
        let c = AgentConfig::from_toml(&with_agent(Some("s"), mixed, ""), d.path()).unwrap();
        assert_eq!(c.file.agent.hub.len(), 2);
    }
}
