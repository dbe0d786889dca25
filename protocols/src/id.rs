//! Identifiers of devices, agents and apps, and device kinds.

/// Why an id or kind was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("must not be empty")]
    Empty,
    /// Longer than allowed.
    #[error("is {len} bytes long, at most {max} allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("has {found:?} at byte {at}; allowed are {allowed}")]
    BadChar {
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
        /// The allowed set.
        allowed: &'static str,
    },
}

/// Longest id: 64 bytes.
pub const MAX_ID_LEN: usize = 64;

/// The first [`MAX_ID_LEN`] characters of an id from outside, for quoting it in an error or a
/// dead letter: whatever a client sends, the message about it stays short.
pub fn clip(id: &str) -> alloc::string::String {
    id.chars().take(MAX_ID_LEN).collect()
}

/// Checks a device, agent or app id against `[A-Za-z0-9_.-]{1,64}`.
///
/// The set keeps ids safe as MQTT topic levels (no `/`, `+`, `#`), file names and URL segments.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    check(
        id,
        MAX_ID_LEN,
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'),
        "[A-Za-z0-9_.-]",
    )
}

/// Checks a device kind against `[a-z][a-z0-9_]{0,31}`.
pub fn validate_kind(kind: &str) -> Result<(), IdError> {
    check(
        kind,
        32,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
        "[a-z0-9_]",
    )?;
    if kind.starts_with(|c: char| !c.is_ascii_lowercase()) {
        let found = kind.chars().next().unwrap_or('?');
        return Err(IdError::BadChar {
            found,
            at: 0,
            allowed: "[a-z] first",
        });
    }
    Ok(())
}

fn check(
    s: &str,
    max: usize,
    ok: impl Fn(char) -> bool,
    allowed: &'static str,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { len: s.len(), max });
    }
    match s.char_indices().find(|(_, c)| !ok(*c)) {
        Some((at, found)) => Err(IdError::BadChar { found, at, allowed }),
        None => Ok(()),
    }
}

/// The device kinds the platform knows how to show and simulate. Other kinds matching
/// [`validate_kind`] are accepted too: a new sensor type needs no code change.
pub const KNOWN_KINDS: &[&str] = &[
    "streetlight",
    "water_level",
    "water_quality",
    "manhole",
    "camera",
    "weather",
    "rain_gauge",
    "flow_meter",
    "pump",
    "wet_well",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("WL-0001").is_ok());
        assert!(validate_id("command-center.tablet_2").is_ok());
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert!(matches!(
            validate_id(&"a".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(matches!(
            validate_id("a/b"),
            Err(IdError::BadChar {
                found: '/',
                at: 1,
                ..
            })
        ));
        assert!(matches!(
            validate_id("a+"),
            Err(IdError::BadChar { found: '+', .. })
        ));
        assert!(matches!(
            validate_id("#"),
            Err(IdError::BadChar { found: '#', .. })
        ));
        assert!(matches!(validate_id("ä"), Err(IdError::BadChar { .. })));
    }

    #[test]
    fn clip_keeps_64_characters() {
        assert_eq!(clip("WL-1"), "WL-1");
        assert_eq!(clip(&"ä".repeat(100)).chars().count(), MAX_ID_LEN);
    }

    #[test]
    fn kinds() {
        for k in KNOWN_KINDS {
            assert!(validate_kind(k).is_ok());
        }
        assert!(validate_kind("Streetlight").is_err());
        assert!(validate_kind("1abc").is_err());
        assert!(validate_kind("water-level").is_err());
    }
}
