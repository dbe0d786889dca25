//! The data segment: `QN=..;ST=..;CN=..;PW=..;MN=..;Flag=..;PNUM=..;PNO=..;CP=&&...&&`.
//!
//! [`Packet::parse`] borrows every field from the segment: the hub parses a packet per
//! station per few seconds and only copies what it keeps. The command parameters stay raw in
//! [`Packet::cp`]; [`Packet::cp_data`] parses them.

use super::command::Cn;
use super::cp::{CpData, CpError};
use crate::quantity::ShortText;

/// Why a data segment was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// No `CP=&&` field.
    #[error("no `CP=&&` field")]
    MissingCp,
    /// The CP field does not end with `&&` at the end of the segment.
    #[error("CP field is not closed by `&&`")]
    UnterminatedCp,
    /// A header field without `=`.
    #[error("header field `{0}` has no `=`")]
    NoEquals(ShortText),
    /// A required field is absent.
    #[error("required field {0} is missing")]
    Missing(&'static str),
    /// A field given twice.
    #[error("field {0} given twice")]
    Duplicate(&'static str),
    /// A field whose value is malformed or out of range.
    #[error("field {field} has a bad value `{value}`")]
    BadValue {
        /// The field name.
        field: &'static str,
        /// The offending value (truncated).
        value: ShortText,
    },
    /// `PNUM`/`PNO` inconsistent: only one of them, `PNO` outside 1..=`PNUM`, or the Flag's
    /// D bit set without them.
    #[error("split fields inconsistent: {0}")]
    BadSplit(&'static str),
}

/// The `Flag` field: `V5 V4 V3 V2 V1 V0 D A`, the standard version in the upper six bits, D
/// (bit 1) set when the packet is one part of a split message (`PNUM`/`PNO` present), A
/// (bit 0) set when the sender wants an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flag(pub u8);

impl Flag {
    /// The A bit: acknowledgement requested.
    pub const ACK: u8 = 0b01;
    /// The D bit: the packet is split.
    pub const SPLIT: u8 = 0b10;
    /// Version number of HJ 212-2017 (0 is HJ/T 212-2005).
    pub const VERSION_2017: u8 = 1;

    /// A flag from its parts (`version` is cut to six bits).
    pub const fn new(version: u8, split: bool, ack: bool) -> Flag {
        Flag(((version & 0x3F) << 2) | if split { Flag::SPLIT } else { 0 } | ack as u8)
    }

    /// Whether the sender wants an acknowledgement (A bit).
    pub const fn ack_requested(self) -> bool {
        self.0 & Flag::ACK != 0
    }

    /// Whether the packet is one part of a split message (D bit).
    pub const fn is_split(self) -> bool {
        self.0 & Flag::SPLIT != 0
    }

    /// The standard version (upper six bits): 1 for HJ 212-2017.
    pub const fn version(self) -> u8 {
        self.0 >> 2
    }
}

/// Which part of a split message a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Split {
    /// `PNUM`: how many packets the message has (at least 1).
    pub total: u16,
    /// `PNO`: this packet's number, 1..=`total`.
    pub index: u16,
}

/// A parsed data segment, borrowing from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// `QN`, the request number (`YYYYMMDDhhmmsszzz` local time); echoed in replies.
    /// Optional: HJ/T 212-2005 uploads have none.
    pub qn: Option<&'a str>,
    /// `ST`, the system code (e.g. `21` surface water, `32` water pollution source, `91`
    /// system interaction).
    pub st: &'a str,
    /// `CN`, the command.
    pub cn: Cn,
    /// `PW`, the station's access password (may be empty).
    pub pw: &'a str,
    /// `MN`, the station's unique id.
    pub mn: &'a str,
    /// `Flag`; absent in HJ/T 212-2005 uploads.
    pub flag: Option<Flag>,
    /// `PNUM`/`PNO` when the packet is part of a split message.
    pub split: Option<Split>,
    /// The CP content between `CP=&&` and the closing `&&`, unparsed.
    pub cp: &'a str,
}

fn bad(field: &'static str, value: &str) -> SegmentError {
    SegmentError::BadValue {
        field,
        value: ShortText::new(value),
    }
}

fn number<T: core::str::FromStr>(field: &'static str, value: &str) -> Result<T, SegmentError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(field, value));
    }
    value.parse().map_err(|_| bad(field, value))
}

fn set<'a>(
    slot: &mut Option<&'a str>,
    field: &'static str,
    value: &'a str,
) -> Result<(), SegmentError> {
    if slot.replace(value).is_some() {
        return Err(SegmentError::Duplicate(field));
    }
    Ok(())
}

impl<'a> Packet<'a> {
    /// Parses a data segment. Header fields may come in any order before `CP`, which must be
    /// last (its content contains `;`). Unknown header fields are ignored. `ST`, `CN`, `PW`,
    /// `MN` are required and `ST`, `MN`, `QN` must not be empty; `PW` may be (some loggers
    /// send `PW=;`).
    pub fn parse(segment: &'a str) -> Result<Packet<'a>, SegmentError> {
        let cp_at = if segment.starts_with("CP=&&") {
            0
        } else {
            segment
                .find(";CP=&&")
                .map(|i| i + 1)
                .ok_or(SegmentError::MissingCp)?
        };
        let cp = segment[cp_at + 5..]
            .strip_suffix("&&")
            .ok_or(SegmentError::UnterminatedCp)?;
        let header = segment[..cp_at].strip_suffix(';').unwrap_or("");

        let (mut qn, mut st, mut cn, mut pw, mut mn) = (None, None, None, None, None);
        let (mut flag, mut pnum, mut pno) = (None, None, None);
        for field in header.split(';').filter(|f| !f.is_empty()) {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| SegmentError::NoEquals(ShortText::new(field)))?;
            match key {
                "QN" => set(&mut qn, "QN", value)?,
                "ST" => set(&mut st, "ST", value)?,
                "CN" => set(&mut cn, "CN", value)?,
                "PW" => set(&mut pw, "PW", value)?,
                "MN" => set(&mut mn, "MN", value)?,
                "Flag" => set(&mut flag, "Flag", value)?,
                "PNUM" => set(&mut pnum, "PNUM", value)?,
                "PNO" => set(&mut pno, "PNO", value)?,
                _ => {}
            }
        }

        let non_empty = |v: Option<&'a str>, field| match v {
            None => Err(SegmentError::Missing(field)),
            Some("") => Err(bad(field, "")),
            Some(v) => Ok(v),
        };
        let qn = match qn {
            Some(v) => Some(non_empty(Some(v), "QN")?),
            None => None,
        };
        let st = non_empty(st, "ST")?;
        let mn = non_empty(mn, "MN")?;
        let pw = pw.ok_or(SegmentError::Missing("PW"))?;
        let cn = Cn::from_code(number("CN", cn.ok_or(SegmentError::Missing("CN"))?)?);
        let flag = match flag {
            Some(v) => Some(Flag(number("Flag", v)?)),
            None => None,
        };
        let split = match (pnum, pno) {
            (None, None) => None,
            (Some(total), Some(index)) => Some(Split {
                total: number("PNUM", total)?,
                index: number("PNO", index)?,
            }),
            _ => return Err(SegmentError::BadSplit("PNUM and PNO come together")),
        };
        check_split(flag, split).map_err(SegmentError::BadSplit)?;
        Ok(Packet {
            qn,
            st,
            cn,
            pw,
            mn,
            flag,
            split,
            cp,
        })
    }

    /// Whether the sender asked for an acknowledgement (`Flag` A bit).
    pub fn wants_ack(&self) -> bool {
        self.flag.is_some_and(Flag::ack_requested)
    }

    /// Parses the CP content.
    pub fn cp_data(&self) -> Result<CpData<'a>, CpError> {
        CpData::parse(self.cp)
    }
}

/// The rules `PNUM`/`PNO` follow, shared by the parser and the encoder so that what one
/// accepts the other produces.
pub(crate) fn check_split(flag: Option<Flag>, split: Option<Split>) -> Result<(), &'static str> {
    if let Some(s) = split {
        if s.total == 0 || s.index == 0 || s.index > s.total {
            return Err("PNO must be within 1..=PNUM");
        }
    } else if flag.is_some_and(Flag::is_split) {
        return Err("Flag has the D bit but PNUM/PNO are missing");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_example() {
        let p = Packet::parse("QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&").unwrap();
        assert_eq!(p.qn, Some("20160801085857223"));
        assert_eq!(p.st, "32");
        assert_eq!(p.cn, Cn::Other(1062));
        assert_eq!(p.pw, "100000");
        assert_eq!(p.mn, "010000A8900016F000169DC0");
        assert_eq!(p.flag, Some(Flag(5)));
        assert!(p.wants_ack());
        assert_eq!(p.flag.unwrap().version(), Flag::VERSION_2017);
        assert_eq!(p.split, None);
        assert_eq!(p.cp, "RtdInterval=30");
    }

    #[test]
    fn flags() {
        assert_eq!(Flag::new(Flag::VERSION_2017, false, false), Flag(4));
        assert_eq!(Flag::new(Flag::VERSION_2017, false, true), Flag(5));
        assert_eq!(Flag::new(Flag::VERSION_2017, true, true), Flag(7));
        assert!(Flag(7).is_split() && Flag(7).ack_requested());
        assert!(!Flag(4).is_split() && !Flag(4).ack_requested());
        assert_eq!(Flag(9).version(), 2);
        assert_eq!(Flag(0).version(), 0);
    }

    #[test]
    fn cn() {
        for c in [2011, 2051, 2061, 2031, 9011, 9012, 9014, 1062, 0, 65535] {
            assert_eq!(Cn::from_code(c).code(), c);
        }
        assert_eq!(Cn::Other(2011), Cn::RealTime);
        assert_eq!(Cn::RealTime.to_string(), "2011");
        assert_eq!(Cn::Other(11).to_string(), "0011");
        assert_eq!(Cn::Hour.value_field(), Some("Avg"));
        assert!(Cn::Daily.is_data_upload() && !Cn::DataAck.is_data_upload());
    }

    #[test]
    fn old_style_and_order() {
        // HJ/T 212-2005 style: no QN, no Flag.
        let p =
            Packet::parse("ST=21;CN=2011;PW=123456;MN=6C611136H;CP=&&DataTime=20180315164206&&")
                .unwrap();
        assert_eq!((p.qn, p.flag), (None, None));
        assert!(!p.wants_ack());
        let p = Packet::parse("MN=X;PW=;CN=2011;ST=21;Extra=1;CP=&&&&").unwrap();
        assert_eq!((p.mn, p.pw, p.cp), ("X", "", ""));
    }

    #[test]
    fn errors() {
        use SegmentError::*;
        let e = |s| Packet::parse(s).unwrap_err();
        assert_eq!(e("ST=21;CN=2011;PW=1;MN=X"), MissingCp);
        assert_eq!(e("ST=21;CN=2011;PW=1;MN=X;CP=&&a=1"), UnterminatedCp);
        assert_eq!(e("ST=21;CN=2011;PW=1;MN=X;CP=&&&"), UnterminatedCp);
        assert_eq!(e("ST=21;CN=2011;PW=1;CP=&&&&"), Missing("MN"));
        assert_eq!(e("ST=21;CN=2011;MN=X;CP=&&&&"), Missing("PW"));
        assert_eq!(e("ST=21;PW=1;MN=X;CP=&&&&"), Missing("CN"));
        assert_eq!(e("CN=2011;PW=1;MN=X;CP=&&&&"), Missing("ST"));
        assert_eq!(e("ST=21;CN=2011;PW=1;MN=;CP=&&&&"), bad("MN", ""));
        assert_eq!(e("QN=;ST=21;CN=2011;PW=1;MN=X;CP=&&&&"), bad("QN", ""));
        assert_eq!(e("ST=21;CN=20x1;PW=1;MN=X;CP=&&&&"), bad("CN", "20x1"));
        assert_eq!(e("ST=21;CN=99999;PW=1;MN=X;CP=&&&&"), bad("CN", "99999"));
        assert_eq!(
            e("ST=21;CN=2011;PW=1;MN=X;Flag=-1;CP=&&&&"),
            bad("Flag", "-1")
        );
        assert_eq!(
            e("ST=21;CN=2011;PW=1;MN=X;Flag=256;CP=&&&&"),
            bad("Flag", "256")
        );
        assert_eq!(e("ST=21;ST=22;CN=2011;PW=1;MN=X;CP=&&&&"), Duplicate("ST"));
        assert_eq!(
            e("ST=21;CN;PW=1;MN=X;CP=&&&&"),
            NoEquals(ShortText::new("CN"))
        );
        assert!(matches!(
            e("ST=21;CN=2011;PW=1;MN=X;Flag=7;CP=&&&&"),
            BadSplit(_)
        ));
        assert!(matches!(
            e("ST=21;CN=2011;PW=1;MN=X;Flag=7;PNUM=2;CP=&&&&"),
            BadSplit(_)
        ));
        assert!(matches!(
            e("ST=21;CN=2011;PW=1;MN=X;Flag=7;PNUM=2;PNO=3;CP=&&&&"),
            BadSplit(_)
        ));
        assert!(matches!(
            e("ST=21;CN=2011;PW=1;MN=X;Flag=7;PNUM=2;PNO=0;CP=&&&&"),
            BadSplit(_)
        ));
    }

    #[test]
    fn split() {
        let p =
            Packet::parse("QN=1;ST=21;CN=2051;PW=1;MN=X;Flag=7;PNUM=2;PNO=1;CP=&&a=1&&").unwrap();
        assert_eq!(p.split, Some(Split { total: 2, index: 1 }));
        assert_eq!(p.cn, Cn::Minute);
    }
}
