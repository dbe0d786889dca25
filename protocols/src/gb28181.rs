//! GB/T 28181 device ids: 20 decimal digits naming where a video device sits and what it is.
//!
//! Layout (GB/T 28181-2016, appendix D): digits 1-8 the center code (province 2, city 2,
//! district 2, grassroots unit 2), 9-10 the industry code, 11-13 the type code, 14 the network
//! code, 15-20 the serial number.

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

/// Why a GB/T 28181 id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GbIdError {
    /// Not 20 characters.
    #[error("must be 20 digits, got {0} characters")]
    Length(usize),
    /// A character that is not an ASCII digit.
    #[error("character {at} is not a digit")]
    NotDigit {
        /// 1-based position.
        at: usize,
    },
    /// The province part is 00.
    #[error("province code 00 is not assigned")]
    Province,
    /// The type code is not an assigned one (111-199, 200-299, 300-399, 400-499).
    #[error("type code {0} is not assigned")]
    TypeCode(u16),
}

/// A validated GB/T 28181 id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GbId([u8; 20]);

impl GbId {
    /// Parses and validates an id.
    pub fn parse(s: &str) -> Result<GbId, GbIdError> {
        let n = s.chars().count();
        if n != 20 || s.len() != 20 {
            return Err(GbIdError::Length(n));
        }
        let mut d = [0u8; 20];
        for (i, c) in s.bytes().enumerate() {
            if !c.is_ascii_digit() {
                return Err(GbIdError::NotDigit { at: i + 1 });
            }
            d[i] = c;
        }
        let id = GbId(d);
        if id.province() == "00" {
            return Err(GbIdError::Province);
        }
        let t = id.type_code();
        if !(111..=499).contains(&t) {
            return Err(GbIdError::TypeCode(t));
        }
        Ok(id)
    }

    fn part(&self, from: usize, to: usize) -> &str {
        // Only ASCII digits are stored.
        core::str::from_utf8(&self.0[from..to]).unwrap_or("")
    }

    /// The whole id.
    pub fn as_str(&self) -> &str {
        self.part(0, 20)
    }

    /// Digits 1-8: the center (administrative area and grassroots unit).
    pub fn center(&self) -> &str {
        self.part(0, 8)
    }

    /// Digits 1-2: province.
    pub fn province(&self) -> &str {
        self.part(0, 2)
    }

    /// Digits 3-4: city.
    pub fn city(&self) -> &str {
        self.part(2, 4)
    }

    /// Digits 5-6: district.
    pub fn district(&self) -> &str {
        self.part(4, 6)
    }

    /// Digits 7-8: grassroots unit.
    pub fn unit(&self) -> &str {
        self.part(6, 8)
    }

    /// Digits 9-10: industry.
    pub fn industry(&self) -> &str {
        self.part(8, 10)
    }

    /// Digits 11-13: device or user type code.
    pub fn type_code(&self) -> u16 {
        self.0[10..13]
            .iter()
            .fold(0u16, |a, d| a * 10 + (d - b'0') as u16)
    }

    /// Digit 14: network code.
    pub fn network(&self) -> u8 {
        self.0[13] - b'0'
    }

    /// Digits 15-20: serial number.
    pub fn serial(&self) -> &str {
        self.part(14, 20)
    }

    /// A name for the type code.
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_code())
    }

    /// Whether the id names a camera (131) or a network camera (132).
    pub fn is_camera(&self) -> bool {
        matches!(self.type_code(), 131 | 132)
    }

    /// A name for the industry code, where assigned.
    pub fn industry_name(&self) -> &'static str {
        match self.industry() {
            "00" => "social security (road)",
            "01" => "social security (transport hubs)",
            "02" => "social security (key venues)",
            "03" => "social security (schools and hospitals)",
            "04" => "social security (public places)",
            "05" => "social security (residential)",
            "10" => "public security (police)",
            "20" => "urban management",
            "21" => "water conservancy",
            "40" => "transport",
            "41" => "education",
            _ => "other",
        }
    }
}

/// A name for a GB/T 28181 type code.
pub fn type_name(code: u16) -> &'static str {
    match code {
        111 => "DVR",
        112 => "video server",
        113 => "encoder",
        114 => "decoder",
        115 => "video switching matrix",
        116 => "audio switching matrix",
        117 => "alarm controller",
        118 => "NVR",
        119..=130 => "front-end device (reserved)",
        131 => "camera",
        132 => "network camera",
        133 => "display",
        134 => "alarm input",
        135 => "alarm output",
        136 => "voice input",
        137 => "voice output",
        138 => "mobile transmitter",
        139..=199 => "peripheral",
        200 => "central signaling server",
        201 => "web application server",
        202 => "media distribution server",
        203 => "proxy server",
        204 => "security server",
        205 => "alarm server",
        206 => "database server",
        207 => "GIS server",
        208 => "management server",
        209 => "access gateway",
        210 => "media storage server",
        211 => "signaling security routing gateway",
        215 => "business group",
        216 => "virtual organization",
        212..=299 => "platform component",
        300..=399 => "center user",
        400..=499 => "terminal user",
        _ => "unassigned",
    }
}

impl FromStr for GbId {
    type Err = GbIdError;
    fn from_str(s: &str) -> Result<GbId, GbIdError> {
        GbId::parse(s)
    }
}

impl fmt::Display for GbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for GbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GbId({})", self.as_str())
    }
}

impl serde::Serialize for GbId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for GbId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GbId, D::Error> {
        let s = String::deserialize(d)?;
        GbId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use proptest::prelude::*;

    #[test]
    fn contract_example_parts() {
        let id = GbId::parse("33011000001320000001").unwrap();
        assert_eq!(id.center(), "33011000");
        assert_eq!(id.province(), "33");
        assert_eq!(id.city(), "01");
        assert_eq!(id.district(), "10");
        assert_eq!(id.unit(), "00");
        assert_eq!(id.industry(), "00");
        assert_eq!(id.type_code(), 132);
        assert_eq!(id.type_name(), "network camera");
        assert!(id.is_camera());
        assert_eq!(id.network(), 0);
        assert_eq!(id.serial(), "000001");
        assert_eq!(id.to_string(), "33011000001320000001");
    }

    #[test]
    fn rejections() {
        assert_eq!(
            GbId::parse("3301100000132000000"),
            Err(GbIdError::Length(19))
        );
        assert_eq!(
            GbId::parse("330110000013200000012"),
            Err(GbIdError::Length(21))
        );
        assert_eq!(
            GbId::parse("3301100000132000000x"),
            Err(GbIdError::NotDigit { at: 20 })
        );
        assert_eq!(
            GbId::parse("00011000001320000001"),
            Err(GbIdError::Province)
        );
        assert_eq!(
            GbId::parse("33011000000990000001"),
            Err(GbIdError::TypeCode(99))
        );
        assert_eq!(
            GbId::parse("33011000005000000001"),
            Err(GbIdError::TypeCode(500))
        );
        assert!(matches!(
            GbId::parse("３3011000001320000001"),
            Err(GbIdError::Length(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trip(center in 1_000_000u32..99_999_999, ind in 0u8..100, ty in 111u16..500, net in 0u8..10, serial in 0u32..1_000_000) {
            let s = format!("{center:08}{ind:02}{ty:03}{net}{serial:06}");
            let id = GbId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(id.type_code(), ty);
            prop_assert_eq!(id.network(), net);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<GbId>(&json).unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = GbId::parse(&s);
        }
    }
}
