//! hub.toml: listeners, storage, identities (devices, agents, apps) and rules.
//!
//! Loading validates everything that can be checked without running: ids, kinds, secrets and
//! their hashes, GB/T 28181 ids, grants, references between entries, rule shapes. Every problem
//! is reported as one line naming the key, e.g. `devices[3].gb_id: must be 20 digits, got 19
//! characters`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use protocols::Quantity;
use protocols::access::grant_filter;
use protocols::config::{ByteSize, ConfigError, HumanDuration, parse_toml};
use protocols::gb28181::GbId;
use protocols::id::{validate_id, validate_kind};
use protocols::topic::AlertLevel;
use serde::{Deserialize, Serialize};

pub mod cluster;
pub mod sparkplug;
pub use cluster::ClusterSettings;
pub use sparkplug::{AgentProtocol, SparkplugMetricConfig, SparkplugSettings};

/// The whole hub.toml.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Listeners, storage and pipeline settings.
    #[serde(default)]
    pub hub: HubSettings,
    /// Field devices.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// Edge agents.
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    /// Consumer apps.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// Alert rules.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The HJ 212-2017 listener for environmental monitoring stations.
    #[serde(default)]
    pub hj212: Hj212Settings,
    /// The hub as a Sparkplug B host application.
    #[serde(default)]
    pub sparkplug: SparkplugSettings,
    /// Sparkplug B metric names and the quantities they measure.
    #[serde(default)]
    pub sparkplug_metrics: Vec<SparkplugMetricConfig>,
    /// The dashboard's base map.
    #[serde(default)]
    pub dashboard: DashboardSettings,
    /// Cluster mode: several hubs on NATS JetStream and PostgreSQL (one hub with everything
    /// embedded without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSettings>,
    /// The file this configuration was loaded from (rules are reloaded from it).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_mqtt_listen() -> Vec<String> {
    vec!["0.0.0.0:1883".to_string(), "[::]:1883".to_string()]
}

fn default_http_listen() -> String {
    "0.0.0.0:8080".to_string()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

fn default_retention() -> HumanDuration {
    HumanDuration::secs(90 * 86_400)
}

fn default_snapshot_retention() -> HumanDuration {
    HumanDuration::secs(7 * 86_400)
}

fn default_max_skew() -> HumanDuration {
    HumanDuration::secs(300)
}

fn default_group_commit() -> HumanDuration {
    HumanDuration::millis(2)
}

fn default_max_packet() -> usize {
    2 << 20
}

fn default_cap_sender() -> String {
    "district-gateway".to_string()
}

fn default_cap_sender_name() -> String {
    "District sensing gateway".to_string()
}

fn default_command_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}

fn default_command_retry() -> HumanDuration {
    HumanDuration::secs(2)
}

/// The `[hub]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSettings {
    /// MQTT listen addresses (IPv4 and IPv6 by default).
    #[serde(default = "default_mqtt_listen")]
    pub mqtt_listen: Vec<String>,
    /// HTTP listen address.
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// Where the store, WAL, alerts and snapshots live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How long time series are kept.
    #[serde(default = "default_retention")]
    pub retention: HumanDuration,
    /// How long camera snapshots are kept.
    #[serde(default = "default_snapshot_retention")]
    pub snapshot_retention: HumanDuration,
    /// A device timestamp further than this from hub time is corrected and marked uncertain.
    #[serde(default = "default_max_skew")]
    pub max_clock_skew: HumanDuration,
    /// Longest wait to gather writes into one fsync.
    #[serde(default = "default_group_commit")]
    pub group_commit: HumanDuration,
    /// Largest MQTT packet accepted, bytes.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Local time of the district as an offset from UTC (`+08:00`): rule time windows
    /// (`active`) and CAP times use it.
    #[serde(default)]
    pub utc_offset: UtcOffset,
    /// CAP `sender`: the hub's identifier in CAP messages.
    #[serde(default = "default_cap_sender")]
    pub cap_sender: String,
    /// CAP `senderName`: the human-readable name of the operator.
    #[serde(default = "default_cap_sender_name")]
    pub cap_sender_name: String,
    /// A command to a device fails when reported state does not match desired state by then.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: HumanDuration,
    /// First wait before a command is sent again; doubles with every retry (at most 30 s).
    #[serde(default = "default_command_retry")]
    pub command_retry: HumanDuration,
    /// Below this much free space on the data directory's filesystem the hub refuses new data
    /// (leaves it unacknowledged) and reports the disk as failing, so that the store, twins
    /// and alerts keep room to finish and recover (bytes, or `"64MiB"`).
    #[serde(default = "default_min_free_disk")]
    pub min_free_disk: ByteSize,
    /// Publishes per second one MQTT client may sustain (bursts of two seconds' worth pass);
    /// beyond, the client is throttled. 0 is no limit.
    #[serde(default = "default_max_messages_per_s")]
    pub max_messages_per_s: u32,
    /// Publish bytes per second one MQTT client may sustain (bytes, or `"16MiB"`); 0 is no
    /// limit.
    #[serde(default = "default_max_bytes_per_s")]
    pub max_bytes_per_s: ByteSize,
    /// A client over its rate without pause this long is disconnected, counted and logged.
    #[serde(default = "default_throttle_grace")]
    pub throttle_grace: HumanDuration,
    /// Subscriptions one MQTT session may hold; 0 is no limit.
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions: usize,
    /// MQTT connections served at once (plain and TLS); beyond, a client is refused with
    /// CONNACK "Quota exceeded"/"Server unavailable". 0 (the default) takes the process's
    /// open-file limit less a reserve for the store, the API and the state files.
    #[serde(default)]
    pub max_connections: usize,
    /// MQTT over TLS listen addresses (none by default); needs `tls_cert` and `tls_key`.
    #[serde(default)]
    pub mqtt_tls_listen: Vec<String>,
    /// HTTPS listen address for the API and dashboard (off by default); needs `tls_cert` and
    /// `tls_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_listen: Option<String>,
    /// The hub's certificate chain, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert`, PEM (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) whose client certificates identify devices and agents on the TLS
    /// listeners, without a password. Without it, TLS clients log in by password only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// The `[dashboard]` table: the base map the command-center page draws under the devices.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardSettings {
    /// A GeoJSON FeatureCollection (streets, river, areas) served at
    /// `/dashboard/district.geojson`; without it the map shows the devices alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geojson: Option<PathBuf>,
    /// A raster tile server URL template (`https://tiles.example/{z}/{x}/{y}.png`) the page
    /// draws under the GeoJSON; none by default, since command centers often run offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_url: Option<String>,
}

impl DashboardSettings {
    /// Checks the tile URL's form (the GeoJSON file is read and checked when the hub starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.tile_url {
            let scheme = url.starts_with("https://") || url.starts_with("http://");
            let placeholders = ["{z}", "{x}", "{y}"].iter().all(|p| url.contains(p));
            if !scheme || !placeholders {
                return Err(ConfigError::new(
                    "dashboard.tile_url",
                    format!(
                        "`{}` is not a tile URL template like https://tiles.example/{{z}}/{{x}}/{{y}}.png",
                        protocols::id::clip(url)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The `[hj212]` table: where stations that speak HJ 212-2017 connect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hj212Settings {
    /// TCP listen addresses; none (the default) turns the listener off.
    #[serde(default)]
    pub listen: Vec<String>,
    /// The stations' local time (their `DataTime`) as an offset from UTC; `+08:00` by default.
    #[serde(default)]
    pub utc_offset: UtcOffset,
    /// A station silent this long is disconnected (it reconnects; stations report at least
    /// every few minutes).
    #[serde(default = "default_hj212_idle")]
    pub idle_timeout: HumanDuration,
}

fn default_hj212_idle() -> HumanDuration {
    HumanDuration::secs(600)
}

impl Default for Hj212Settings {
    fn default() -> Self {
        Hj212Settings {
            listen: Vec::new(),
            utc_offset: UtcOffset::default(),
            idle_timeout: default_hj212_idle(),
        }
    }
}

fn default_min_free_disk() -> ByteSize {
    ByteSize::mib(64)
}

fn default_max_messages_per_s() -> u32 {
    5_000
}

fn default_max_bytes_per_s() -> ByteSize {
    ByteSize::mib(16)
}

fn default_max_subscriptions() -> usize {
    1_000
}

fn default_throttle_grace() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            mqtt_listen: default_mqtt_listen(),
            http_listen: default_http_listen(),
            data_dir: default_data_dir(),
            retention: default_retention(),
            snapshot_retention: default_snapshot_retention(),
            max_clock_skew: default_max_skew(),
            group_commit: default_group_commit(),
            max_packet_bytes: default_max_packet(),
            utc_offset: UtcOffset::default(),
            cap_sender: default_cap_sender(),
            cap_sender_name: default_cap_sender_name(),
            command_timeout: default_command_timeout(),
            command_retry: default_command_retry(),
            min_free_disk: default_min_free_disk(),
            max_messages_per_s: default_max_messages_per_s(),
            max_bytes_per_s: default_max_bytes_per_s(),
            throttle_grace: default_throttle_grace(),
            max_subscriptions: default_max_subscriptions(),
            max_connections: 0,
            mqtt_tls_listen: Vec::new(),
            https_listen: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
        }
    }
}

/// An offset from UTC written `+08:00`, `-05:30` or `Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcOffset {
    /// Minutes east of UTC.
    pub minutes: i32,
}

impl Default for UtcOffset {
    /// China Standard Time, +08:00.
    fn default() -> Self {
        UtcOffset { minutes: 8 * 60 }
    }
}

impl UtcOffset {
    /// Parses `+08:00`, `-05:30`, `+0800` or `Z`.
    pub fn parse(text: &str) -> Result<UtcOffset, String> {
        let bad = || format!("`{text}` is not an offset like +08:00 or -05:30");
        if text == "Z" {
            return Ok(UtcOffset { minutes: 0 });
        }
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => return Err(bad()),
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let h: i32 = digits[..2].parse().map_err(|_| bad())?;
        let m: i32 = digits[2..].parse().map_err(|_| bad())?;
        if h > 14 || m > 59 {
            return Err(bad());
        }
        Ok(UtcOffset {
            minutes: sign * (h * 60 + m),
        })
    }

    /// The offset in milliseconds.
    pub fn millis(self) -> i64 {
        i64::from(self.minutes) * 60_000
    }
}

impl std::fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.minutes < 0 { '-' } else { '+' };
        let m = self.minutes.abs();
        write!(f, "{sign}{:02}:{:02}", m / 60, m % 60)
    }
}

impl Serialize for UtcOffset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        UtcOffset::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A daily time window in local time, `22:00-06:00` (crossing midnight) or `08:00-18:00`.
/// The start is inside, the end is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DailyWindow {
    /// Minute of the day the window opens.
    pub start_min: u16,
    /// Minute of the day the window closes.
    pub end_min: u16,
}

impl DailyWindow {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<DailyWindow, String> {
        let bad = || format!("`{text}` is not a daily window like 22:00-06:00");
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Result<u16, String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            if h.len() != 2 || m.len() != 2 {
                return Err(bad());
            }
            let h: u16 = h.parse().map_err(|_| bad())?;
            let m: u16 = m.parse().map_err(|_| bad())?;
            // 24:00 closes a window at midnight.
            if m > 59 || h > 24 || (h == 24 && m != 0) {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let w = DailyWindow {
            start_min: minute(a)?,
            end_min: minute(b)?,
        };
        if w.start_min == w.end_min {
            return Err(format!("`{text}` is empty; leave `active` out for always"));
        }
        Ok(w)
    }

    /// Whether a minute of the local day (0..1440) is inside.
    pub fn contains(self, minute: u16) -> bool {
        let (s, e) = (self.start_min % 1440, self.end_min);
        if s < e {
            minute >= s && minute < e
        } else {
            minute >= s || minute < e
        }
    }

    /// Whether an instant (epoch ms) is inside, in local time at `offset`.
    pub fn contains_ms(self, ts_ms: i64, offset: UtcOffset) -> bool {
        let local = ts_ms + offset.millis();
        let minute = local.rem_euclid(86_400_000) / 60_000;
        self.contains(minute as u16)
    }
}

impl std::fmt::Display for DailyWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start_min), hm(self.end_min))
    }
}

impl Serialize for DailyWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DailyWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DailyWindow::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// CAP 1.2 `category` values.
pub const CAP_CATEGORIES: [&str; 12] = [
    "Geo",
    "Met",
    "Safety",
    "Security",
    "Rescue",
    "Fire",
    "Health",
    "Env",
    "Transport",
    "Infra",
    "CBRNE",
    "Other",
];

/// A `[[devices]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    /// `streetlight`, `water_level`, ...
    pub kind: String,
    /// Plain secret, for devices that connect themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Argon2 PHC hash of the secret, instead of `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    /// The agent that speaks for the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Owning department.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dept: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Latitude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Longitude.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Cameras: GB/T 28181 id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gb_id: Option<String>,
    /// Cameras: the stream URL as the agent sees it (shown in the catalog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Modbus devices: the profile file, for range checks of desired values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<PathBuf>,
    /// HJ 212 stations: the station's MN (its id in every packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hj212_mn: Option<String>,
    /// HJ 212 stations: the station's PW (its access password in every packet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hj212_pw: Option<String>,
}

/// An `[[agents]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    /// Plain secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Argon2 PHC hash, instead of `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    /// Owning department.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dept: Option<String>,
    /// What it speaks: the platform's own agent messages, or Sparkplug B as an edge node.
    #[serde(default, skip_serializing_if = "AgentProtocol::is_native")]
    pub protocol: AgentProtocol,
}

/// An `[[apps]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    /// Plain secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Argon2 PHC hash, instead of `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    /// MQTT filters under `v1/` the app may read; the HTTP API applies the same grants.
    #[serde(default)]
    pub grants: Vec<String>,
}

/// A `[[rules]]` entry. Exactly one condition: `above`/`below`, `equals`, `rise_per_hour`, or
/// `silent_for`. The semantics are in docs/decisions/0011-alerts-and-commands.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique rule id.
    pub id: String,
    /// Device kind the rule applies to; `*` or absent for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// One device only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// One department only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dept: Option<String>,
    /// The quantity watched (threshold and rate rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
    /// Fires when the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Fires when the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Fires while the value equals this: a boolean (`motion`, `cover_open`), a state name
    /// (`lamp_status = "lamp_failure"`) or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<protocols::messages::Scalar>,
    /// With `above` or `rise_per_hour`: clears only below this (hysteresis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_below: Option<f64>,
    /// With `below`: clears only above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_above: Option<f64>,
    /// The condition must hold this long before the alert is raised.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<HumanDuration>,
    /// Fires when the value rises faster than this per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise_per_hour: Option<f64>,
    /// The window the rise is measured over (default 15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<HumanDuration>,
    /// Fires when a device has sent nothing for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_for: Option<HumanDuration>,
    /// Only in this daily window of local time (`22:00-06:00`); outside it the condition
    /// counts as false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<DailyWindow>,
    /// Warning level.
    pub level: AlertLevel,
    /// Text for the alert; `{device}`, `{value}`, `{threshold}`, `{unit}`, `{quantity}`,
    /// `{level}` are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// CAP category (`Env`, `Safety`, `Infra`, ...); derived from the quantity when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Radius of the CAP area around the device, km (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius_km: Option<f64>,
}

pub use protocols::config::LoadError;

/// The device id of alerts about the hub itself; no device may have it.
pub const RESERVED_DEVICE_ID: &str = "hub";

impl HubConfig {
    /// Reads and validates a hub.toml. Relative paths inside (data_dir, profiles) are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<HubConfig, LoadError> {
        let text = protocols::config::read_config_file(path)?;
        let invalid = |error| LoadError::invalid(path, error);
        let mut cfg = HubConfig::from_toml(&text).map_err(invalid)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.source = Some(path.to_owned());
        Ok(cfg)
    }

    /// Parses and validates hub.toml text (paths stay as written).
    pub fn from_toml(text: &str) -> Result<HubConfig, ConfigError> {
        let cfg: HubConfig = parse_toml(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.dashboard.geojson
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        if self.hub.data_dir.is_relative() {
            self.hub.data_dir = base.join(&self.hub.data_dir);
        }
        for p in [
            &mut self.hub.tls_cert,
            &mut self.hub.tls_key,
            &mut self.hub.client_ca,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for d in &mut self.devices {
            if let Some(p) = &mut d.profile
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks everything that can be checked without running.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.dashboard.validate()?;
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        let s = &self.hub;
        if s.mqtt_listen.is_empty() {
            return Err(ConfigError::new(
                "hub.mqtt_listen",
                "needs at least one address",
            ));
        }
        for (i, a) in s.mqtt_listen.iter().enumerate() {
            check_addr(&format!("hub.mqtt_listen[{i}]"), a)?;
        }
        check_addr("hub.http_listen", &s.http_listen)?;
        for (i, a) in s.mqtt_tls_listen.iter().enumerate() {
            check_addr(&format!("hub.mqtt_tls_listen[{i}]"), a)?;
        }
        if let Some(a) = &s.https_listen {
            check_addr("hub.https_listen", a)?;
        }
        let serves_tls = !s.mqtt_tls_listen.is_empty() || s.https_listen.is_some();
        match (&s.tls_cert, &s.tls_key) {
            (None, None) if serves_tls => {
                return Err(ConfigError::new(
                    "hub.tls_cert",
                    "TLS listeners need tls_cert and tls_key",
                ));
            }
            (Some(_), None) => {
                return Err(ConfigError::new("hub.tls_key", "tls_cert needs tls_key"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new("hub.tls_cert", "tls_key needs tls_cert"));
            }
            _ => {}
        }
        if s.client_ca.is_some() && s.mqtt_tls_listen.is_empty() {
            return Err(ConfigError::new(
                "hub.client_ca",
                "client certificates need mqtt_tls_listen",
            ));
        }
        if s.max_packet_bytes < 1024 {
            return Err(ConfigError::new(
                "hub.max_packet_bytes",
                "must be at least 1024",
            ));
        }
        // CAP 1.2: sender has no spaces, commas or restricted characters.
        if s.cap_sender.is_empty()
            || s.cap_sender
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, ',' | '<' | '&'))
        {
            return Err(ConfigError::new(
                "hub.cap_sender",
                "must be non-empty, without spaces, commas, < or &",
            ));
        }
        if s.command_timeout.0.is_zero() {
            return Err(ConfigError::new(
                "hub.command_timeout",
                "must be longer than zero",
            ));
        }
        if s.command_retry.0.is_zero() {
            return Err(ConfigError::new(
                "hub.command_retry",
                "must be longer than zero",
            ));
        }

        // One namespace: an MQTT client id identifies exactly one principal.
        let mut seen: HashMap<String, String> = HashMap::new();
        let mut claim = |id: &str, key: String| -> Result<(), ConfigError> {
            validate_id(id)
                .map_err(|e| ConfigError::new(format!("{key}.id"), format!("`{id}` {e}")))?;
            if let Some(first) = seen.insert(id.to_string(), key.clone()) {
                return Err(ConfigError::new(
                    format!("{key}.id"),
                    format!("`{id}` is already used by {first}"),
                ));
            }
            Ok(())
        };
        for (i, a) in self.hj212.listen.iter().enumerate() {
            check_addr(&format!("hj212.listen[{i}]"), a)?;
        }
        if self.hj212.idle_timeout.0.is_zero() {
            return Err(ConfigError::new(
                "hj212.idle_timeout",
                "must be longer than zero",
            ));
        }
        let mut mns: HashMap<&str, usize> = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            match (&d.hj212_mn, &d.hj212_pw) {
                (None, None) => {}
                (Some(mn), Some(pw)) => {
                    // Both travel inside `;`-separated `key=value` fields of the data segment.
                    let plain = |v: &str| {
                        !v.is_empty()
                            && v.len() <= 64
                            && v.bytes()
                                .all(|b| b.is_ascii_graphic() && !b"&;,=".contains(&b))
                    };
                    if !plain(mn) {
                        return Err(ConfigError::new(
                            format!("devices[{i}].hj212_mn"),
                            "must be 1-64 printable ASCII characters without & ; , =",
                        ));
                    }
                    if !plain(pw) {
                        return Err(ConfigError::new(
                            format!("devices[{i}].hj212_pw"),
                            "must be 1-64 printable ASCII characters without & ; , =",
                        ));
                    }
                    if let Some(first) = mns.insert(mn, i) {
                        return Err(ConfigError::new(
                            format!("devices[{i}].hj212_mn"),
                            format!("`{mn}` is already used by devices[{first}]"),
                        ));
                    }
                    if d.agent.is_some() {
                        return Err(ConfigError::new(
                            format!("devices[{i}].hj212_mn"),
                            "a station connects itself: it cannot also have an `agent`",
                        ));
                    }
                }
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        format!("devices[{i}].hj212_pw"),
                        "is needed with hj212_mn",
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        format!("devices[{i}].hj212_mn"),
                        "is needed with hj212_pw",
                    ));
                }
            }
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.id == RESERVED_DEVICE_ID {
                return Err(ConfigError::new(
                    format!("devices[{i}].id"),
                    format!(
                        "`{RESERVED_DEVICE_ID}` is reserved for the hub's own alerts (v1/alerts/{{level}}/{RESERVED_DEVICE_ID})"
                    ),
                ));
            }
        }
        for (i, a) in self.agents.iter().enumerate() {
            claim(&a.id, format!("agents[{i}]"))?;
        }
        for (i, a) in self.apps.iter().enumerate() {
            claim(&a.id, format!("apps[{i}]"))?;
        }
        for (i, d) in self.devices.iter().enumerate() {
            claim(&d.id, format!("devices[{i}]"))?;
        }

        for (i, a) in self.agents.iter().enumerate() {
            let key = format!("agents[{i}]");
            check_secret(&key, a.secret.as_deref(), a.secret_hash.as_deref(), true)?;
        }
        for (i, a) in self.apps.iter().enumerate() {
            let key = format!("apps[{i}]");
            check_secret(&key, a.secret.as_deref(), a.secret_hash.as_deref(), true)?;
            for (j, g) in a.grants.iter().enumerate() {
                grant_filter(g).map_err(|e| {
                    ConfigError::new(format!("{key}.grants[{j}]"), format!("`{g}`: {e}"))
                })?;
            }
        }
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("devices[{i}]");
            validate_kind(&d.kind).map_err(|e| {
                ConfigError::new(format!("{key}.kind"), format!("`{}` {e}", d.kind))
            })?;
            check_secret(&key, d.secret.as_deref(), d.secret_hash.as_deref(), false)?;
            if let Some(agent) = &d.agent
                && !self.agents.iter().any(|a| &a.id == agent)
            {
                return Err(ConfigError::new(
                    format!("{key}.agent"),
                    format!("no agent `{agent}` in [[agents]]"),
                ));
            }
            if let Some(lat) = d.lat
                && !(-90.0..=90.0).contains(&lat)
            {
                return Err(ConfigError::new(
                    format!("{key}.lat"),
                    format!("{lat} is not a latitude"),
                ));
            }
            if let Some(lon) = d.lon
                && !(-180.0..=180.0).contains(&lon)
            {
                return Err(ConfigError::new(
                    format!("{key}.lon"),
                    format!("{lon} is not a longitude"),
                ));
            }
            if d.lat.is_some() != d.lon.is_some() {
                return Err(ConfigError::new(
                    format!("{key}.lat"),
                    "lat and lon go together",
                ));
            }
            match &d.gb_id {
                Some(g) => {
                    GbId::parse(g).map_err(|e| ConfigError::new(format!("{key}.gb_id"), e))?;
                }
                None if d.kind == "camera" => {
                    return Err(ConfigError::new(
                        format!("{key}.gb_id"),
                        "a camera needs its 20-digit GB/T 28181 id",
                    ));
                }
                None => {}
            }
        }

        let mut rule_ids: HashMap<&str, usize> = HashMap::new();
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("rules[{i}]");
            if let Some(first) = rule_ids.insert(&r.id, i) {
                return Err(ConfigError::new(
                    format!("{key}.id"),
                    format!("`{}` is already used by rules[{first}]", r.id),
                ));
            }
            r.validate(&key, self)?;
        }
        sparkplug::validate(self)
    }

    /// The device with this id.
    pub fn device(&self, id: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.id == id)
    }
}

impl RuleConfig {
    /// Checks the rule's shape; `key` names it in messages (`rules[2]`).
    pub fn validate(&self, key: &str, cfg: &HubConfig) -> Result<(), ConfigError> {
        validate_id(&self.id)
            .map_err(|e| ConfigError::new(format!("{key}.id"), format!("`{}` {e}", self.id)))?;
        let key = format!("{key} ({})", self.id);
        if let Some(k) = &self.kind
            && k != "*"
        {
            validate_kind(k)
                .map_err(|e| ConfigError::new(format!("{key}.kind"), format!("`{k}` {e}")))?;
        }
        if let Some(d) = &self.device
            && cfg.device(d).is_none()
        {
            return Err(ConfigError::new(
                format!("{key}.device"),
                format!("no device `{d}` in [[devices]]"),
            ));
        }
        let threshold = self.above.is_some() || self.below.is_some();
        let conditions = [
            threshold,
            self.equals.is_some(),
            self.rise_per_hour.is_some(),
            self.silent_for.is_some(),
        ];
        match conditions.iter().filter(|c| **c).count() {
            0 => {
                return Err(ConfigError::new(
                    &key,
                    "needs a condition: above, below, equals, rise_per_hour or silent_for",
                ));
            }
            1 => {}
            _ => {
                return Err(ConfigError::new(
                    &key,
                    "has more than one condition; write one rule per condition",
                ));
            }
        }
        if self.above.is_some() && self.below.is_some() {
            return Err(ConfigError::new(
                &key,
                "has both above and below; write two rules",
            ));
        }
        let needs_quantity = self.silent_for.is_none();
        let quantity = match (&self.quantity, needs_quantity) {
            (None, true) => {
                return Err(ConfigError::new(
                    format!("{key}.quantity"),
                    "is required for this rule",
                ));
            }
            (Some(q), _) => {
                let quantity = Quantity::from_name(q).ok_or_else(|| {
                    ConfigError::new(format!("{key}.quantity"), format!("unknown quantity `{q}`"))
                })?;
                if (threshold || self.rise_per_hour.is_some())
                    && !matches!(
                        quantity.kind(),
                        protocols::ValueKind::Number | protocols::ValueKind::Bool
                    )
                {
                    return Err(ConfigError::new(
                        format!("{key}.quantity"),
                        format!("`{q}` is not numeric; use `equals` for its states"),
                    ));
                }
                Some(quantity)
            }
            (None, false) => None,
        };
        if let (Some(want), Some(q)) = (&self.equals, quantity)
            && want.to_value(q).is_none()
        {
            let expected = match q.kind() {
                protocols::ValueKind::Number => "a number".to_string(),
                protocols::ValueKind::Bool => "true or false".to_string(),
                protocols::ValueKind::Enum(states) => format!("one of {}", states.join(", ")),
            };
            return Err(ConfigError::new(
                format!("{key}.equals"),
                format!("`{}` takes {expected}", q.name()),
            ));
        }
        for (name, v) in [
            ("above", self.above),
            ("below", self.below),
            ("clear_below", self.clear_below),
            ("clear_above", self.clear_above),
            ("rise_per_hour", self.rise_per_hour),
            ("radius_km", self.radius_km),
        ] {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(ConfigError::new(
                    format!("{key}.{name}"),
                    "must be a finite number",
                ));
            }
        }
        if let (Some(a), Some(c)) = (self.above.or(self.rise_per_hour), self.clear_below)
            && c > a
        {
            return Err(ConfigError::new(
                format!("{key}.clear_below"),
                format!("{c} is above the threshold {a}"),
            ));
        }
        if let (Some(b), Some(c)) = (self.below, self.clear_above)
            && c < b
        {
            return Err(ConfigError::new(
                format!("{key}.clear_above"),
                format!("{c} is below the threshold {b}"),
            ));
        }
        if self.clear_below.is_some() && self.above.is_none() && self.rise_per_hour.is_none() {
            return Err(ConfigError::new(
                format!("{key}.clear_below"),
                "goes with `above` or `rise_per_hour`",
            ));
        }
        if self.clear_above.is_some() && self.below.is_none() {
            return Err(ConfigError::new(
                format!("{key}.clear_above"),
                "goes with `below`",
            ));
        }
        if let Some(r) = self.rise_per_hour
            && r <= 0.0
        {
            return Err(ConfigError::new(
                format!("{key}.rise_per_hour"),
                "must be positive",
            ));
        }
        if self.window.is_some() && self.rise_per_hour.is_none() {
            return Err(ConfigError::new(
                format!("{key}.window"),
                "goes with `rise_per_hour`",
            ));
        }
        if let Some(w) = self.window
            && w.0 < std::time::Duration::from_secs(1)
        {
            return Err(ConfigError::new(
                format!("{key}.window"),
                "must be at least 1s",
            ));
        }
        if self.hold.is_some() && self.silent_for.is_some() {
            return Err(ConfigError::new(
                format!("{key}.for"),
                "does not go with `silent_for` (silence is a duration already)",
            ));
        }
        if let Some(s) = self.silent_for
            && s.0.is_zero()
        {
            return Err(ConfigError::new(
                format!("{key}.silent_for"),
                "must be longer than zero",
            ));
        }
        if let Some(c) = &self.category
            && !CAP_CATEGORIES.contains(&c.as_str())
        {
            return Err(ConfigError::new(
                format!("{key}.category"),
                format!(
                    "`{c}` is not a CAP category ({})",
                    CAP_CATEGORIES.join(", ")
                ),
            ));
        }
        if let Some(r) = self.radius_km
            && r <= 0.0
        {
            return Err(ConfigError::new(
                format!("{key}.radius_km"),
                "must be positive",
            ));
        }
        Ok(())
    }
}

fn check_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    addr.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| {
            ConfigError::new(
                key,
                format!("`{addr}` is not an address like 0.0.0.0:1883 or [::]:1883"),
            )
        })
}

fn check_secret(
    key: &str,
    secret: Option<&str>,
    hash: Option<&str>,
    required: bool,
) -> Result<(), ConfigError> {
    match (secret, hash) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("{key}.secret_hash"),
            "give either secret or secret_hash, not both",
        )),
        (Some(s), None) if s.len() < 8 => Err(ConfigError::new(
            format!("{key}.secret"),
            "must be at least 8 characters",
        )),
        (None, Some(h)) => {
            let parsed = argon2::PasswordHash::new(h).map_err(|e| {
                ConfigError::new(
                    format!("{key}.secret_hash"),
                    format!("not a PHC hash string: {e}"),
                )
            })?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(ConfigError::new(
                    format!("{key}.secret_hash"),
                    format!("algorithm `{}` is not argon2", parsed.algorithm),
                ));
            }
            Ok(())
        }
        (None, None) if required => Err(ConfigError::new(
            format!("{key}.secret"),
            "is required (or secret_hash)",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
