//! Shared pieces of configuration files (hub.toml, agent.toml, profiles): TOML loading that
//! names the offending key in one line, human durations (`500ms`, `30s`, `10m`, `1h30m`) and
//! sizes (`64MiB`).

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;
use core::time::Duration;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A configuration problem: which key, on which line, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `devices[2].gb_id` (empty for the whole file).
    pub key: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong, in one line.
    pub problem: String,
}

impl ConfigError {
    /// A problem with a key found after parsing (no line known).
    pub fn new(key: impl Into<String>, problem: impl fmt::Display) -> ConfigError {
        ConfigError {
            key: key.into(),
            line: None,
            problem: one_line(&problem.to_string()),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_empty() || self.key == "." {
            "(file)"
        } else {
            &self.key
        };
        match self.line {
            Some(line) => write!(f, "{key} (line {line}): {}", self.problem),
            None => write!(f, "{key}: {}", self.problem),
        }
    }
}

/// A configuration file that could not be used, with the file it came from (hub.toml,
/// agent.toml): the one line a technician sees.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is invalid.
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// The first problem.
        error: ConfigError,
    },
}

impl LoadError {
    /// The `Invalid` error of `path`.
    pub fn invalid(path: &std::path::Path, error: ConfigError) -> LoadError {
        LoadError::Invalid {
            path: path.to_owned(),
            error,
        }
    }
}

/// Reads a configuration file as text.
pub fn read_config_file(path: &std::path::Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<alloc::vec::Vec<_>>()
        .join(" ")
}

/// Parses TOML into `T`, reporting the first problem with its key path and line.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError {
        key: String::new(),
        line: e.span().map(|s| line_of(s.start)),
        problem: one_line(e.message()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.inner();
        ConfigError {
            key,
            line: inner.span().map(|s| line_of(s.start)),
            problem: one_line(inner.message()),
        }
    })
}

/// Why a duration text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a duration like 500ms, 30s, 10m, 1h30m or 7d")]
pub struct DurationError(pub String);

/// Parses `500ms`, `30s`, `10m`, `2h`, `7d`, or sums like `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.chars().take(40).collect());
    let s = text.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms_per: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total = total
            .checked_add(n.checked_mul(ms_per).ok_or_else(err)?)
            .ok_or_else(err)?;
    }
    u64::try_from(total)
        .map(Duration::from_millis)
        .map_err(|_| err())
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, per) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if ms >= per {
            out.push_str(&format!("{}{unit}", ms / per));
            ms %= per;
        }
    }
    out
}

/// A duration written as text in a config file (`"30s"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// From seconds.
    pub const fn secs(s: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(s))
    }

    /// From milliseconds.
    pub const fn millis(ms: u64) -> HumanDuration {
        HumanDuration(Duration::from_millis(ms))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// A size written in a config file: a number of bytes (`67108864`) or text with a unit
/// (`"64MiB"`, `"500 MB"`, `"1GiB"`, `"4096B"`); KB/MB/GB are powers of 1000, KiB/MiB/GiB of
/// 1024.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// From mebibytes.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Parses `"64MiB"`, `"500 MB"`, `"4096"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. `64MiB`, `500MB`, `4096`)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: bytes, or text like \"64MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        for bad in [
            "",
            "s",
            "10",
            "10x",
            "1.5s",
            "-1s",
            "99999999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("500 MB"), Ok(500_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2KB"), Ok(2000));
        for bad in ["", "MiB", "1.5GiB", "-1", "10 parsecs", "99999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        #[derive(Debug, Deserialize)]
        struct S {
            a: ByteSize,
            b: ByteSize,
        }
        let s: S = parse_toml("a = 1024\nb = \"16MiB\"\n").unwrap();
        assert_eq!((s.a, s.b), (ByteSize(1024), ByteSize::mib(16)));
        assert!(parse_toml::<S>("a = -1\nb = 1\n").is_err());
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        name: String,
        #[serde(default)]
        items: alloc::vec::Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        every: HumanDuration,
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e = parse_toml::<Conf>(
            "name = \"x\"\n[[items]]\nevery = \"30s\"\n[[items]]\nevery = \"soon\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "items[1].every");
        assert_eq!(e.line, Some(5));
        assert!(
            e.to_string()
                .starts_with("items[1].every (line 5): `soon` is not a duration"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
        let e = parse_toml::<Conf>("name = 5\n").unwrap_err();
        assert_eq!(e.key, "name");
        let e = parse_toml::<Conf>("name = \"x\"\ncolour = 1\n").unwrap_err();
        assert!(e.problem.contains("unknown field `colour`"), "{e}");
        let e = parse_toml::<Conf>("name = \"x\nitems = [").unwrap_err();
        assert_eq!(e.key, "");
        assert!(e.line.is_some());
        let e = parse_toml::<Conf>("").unwrap_err();
        assert!(e.problem.contains("missing field `name`"), "{e}");
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
