//! Packets out: a [`Packet`] to its bytes, and [`CpBuilder`] for the CP content of a data
//! upload.
//!
//! The encoder refuses what the parser would read back differently (a `;` inside a field, a
//! split packet without `PNUM`/`PNO`, ...), so `Packet::parse` of an encoded packet's data
//! segment gives the same packet.

use alloc::string::String;
use core::fmt::Write;

use super::cp::DataFlag;
use super::crc;
use super::datetime::DataTime;
use super::frame::MAX_DECLARABLE_LEN;
use super::segment::{Packet, check_split};

/// Why a packet could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The data segment is longer than the 4-digit length field can declare.
    #[error("data segment of {0} bytes does not fit the 4-digit length field")]
    TooLong(usize),
    /// A field is empty where it must not be, or holds a separator (`;` `,` `&` `=`, `-` in
    /// names where it would split the key) or a character outside printable ASCII.
    #[error("{0} is empty or holds a character the packet cannot carry")]
    BadText(&'static str),
    /// `PNUM`/`PNO` and the Flag's D bit disagree.
    #[error("split fields inconsistent: {0}")]
    BadSplit(&'static str),
    /// A number that is NaN or infinite.
    #[error("value is not a finite number")]
    NotFinite,
    /// A reply needs the request's QN, and the request had none.
    #[error("the packet to answer has no QN")]
    MissingQn,
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// A header value or CP value: printable ASCII without separators.
fn check_value(field: &'static str, value: &str) -> Result<(), EncodeError> {
    if printable(value) && !value.contains([';', ',', '&', '=']) {
        Ok(())
    } else {
        Err(EncodeError::BadText(field))
    }
}

/// A required header value: not empty either.
fn check_header(field: &'static str, value: &str) -> Result<(), EncodeError> {
    if value.is_empty() {
        return Err(EncodeError::BadText(field));
    }
    check_value(field, value)
}

/// A name in the CP content: not empty, and no `-`, which separates code and field.
fn check_name(field: &'static str, name: &str) -> Result<(), EncodeError> {
    if name.is_empty() || name.contains('-') {
        return Err(EncodeError::BadText(field));
    }
    check_value(field, name)
}

/// The data segment of a packet (`QN=..;ST=..;...;CP=&&...&&`). Fields are written in the
/// standard's order; `QN`, `Flag`, `PNUM`/`PNO` only when present.
pub fn encode_segment(packet: &Packet<'_>) -> Result<String, EncodeError> {
    if let Some(qn) = packet.qn {
        check_header("QN", qn)?;
    }
    check_header("ST", packet.st)?;
    check_value("PW", packet.pw)?;
    check_header("MN", packet.mn)?;
    if !printable(packet.cp) {
        return Err(EncodeError::BadText("CP"));
    }
    check_split(packet.flag, packet.split).map_err(EncodeError::BadSplit)?;

    let mut s = String::with_capacity(64 + packet.cp.len());
    // Writing to a String cannot fail.
    if let Some(qn) = packet.qn {
        let _ = write!(s, "QN={qn};");
    }
    let _ = write!(
        s,
        "ST={};CN={};PW={};MN={};",
        packet.st, packet.cn, packet.pw, packet.mn
    );
    if let Some(flag) = packet.flag {
        let _ = write!(s, "Flag={};", flag.0);
    }
    if let Some(split) = packet.split {
        let _ = write!(s, "PNUM={};PNO={};", split.total, split.index);
    }
    let _ = write!(s, "CP=&&{}&&", packet.cp);
    Ok(s)
}

/// Wraps a data segment into a packet: `##`, length, segment, CRC, `\r\n`.
pub fn frame(segment: &str) -> Result<String, EncodeError> {
    if segment.len() > MAX_DECLARABLE_LEN {
        return Err(EncodeError::TooLong(segment.len()));
    }
    let crc = crc::to_hex(crc::crc16(segment.as_bytes()));
    let mut s = String::with_capacity(segment.len() + 12);
    let _ = write!(s, "##{:04}{segment}", segment.len());
    for d in crc {
        s.push(d as char);
    }
    s.push_str("\r\n");
    Ok(s)
}

/// A packet's bytes, ready to send. The standard limits the data segment to 1024 bytes; a
/// longer message should be split (`Flag` D bit, `PNUM`/`PNO`) by the caller. Only the
/// 9999-byte limit of the length field is enforced here.
pub fn encode(packet: &Packet<'_>) -> Result<String, EncodeError> {
    frame(&encode_segment(packet)?)
}

/// Builds CP content: `DataTime=...;w01001-Rtd=7.12,w01001-Flag=N;w01009-Rtd=8.1,...`.
///
/// Entries of the same code in a row are joined with `,`, everything else with `;`, as the
/// standard writes them. The first invalid input is remembered and returned by
/// [`finish`](CpBuilder::finish).
#[derive(Clone, Debug, Default)]
pub struct CpBuilder {
    out: String,
    /// The byte range of the last pollutant code written, to choose the separator.
    last_code: Option<(usize, usize)>,
    error: Option<EncodeError>,
}

impl CpBuilder {
    /// An empty CP.
    pub fn new() -> CpBuilder {
        CpBuilder::default()
    }

    fn fail(&mut self, e: EncodeError) -> &mut CpBuilder {
        self.error.get_or_insert(e);
        self
    }

    fn separator(&mut self, code: Option<&str>) {
        if self.out.is_empty() {
            return;
        }
        let same = match (code, self.last_code) {
            (Some(c), Some((from, to))) => &self.out[from..to] == c,
            _ => false,
        };
        self.out.push(if same { ',' } else { ';' });
    }

    /// `DataTime=YYYYMMDDhhmmss`.
    pub fn data_time(&mut self, t: DataTime) -> &mut CpBuilder {
        let digits = t.to_digits();
        self.param("DataTime", core::str::from_utf8(&digits).unwrap_or(""))
    }

    /// A parameter such as `RtdInterval=30` (a name without `-`).
    pub fn param(&mut self, name: &str, value: &str) -> &mut CpBuilder {
        if let Err(e) = check_name("CP parameter name", name).and(check_value("CP value", value)) {
            return self.fail(e);
        }
        self.separator(None);
        self.last_code = None;
        let _ = write!(self.out, "{name}={value}");
        self
    }

    /// A pollutant entry `{code}-{field}={value}` with the value as text.
    pub fn text(&mut self, code: &str, field: &str, value: &str) -> &mut CpBuilder {
        if let Err(e) = check_name("pollutant code", code)
            .and(check_value("pollutant field", field))
            .and(check_value("CP value", value))
        {
            return self.fail(e);
        }
        if field.is_empty() {
            return self.fail(EncodeError::BadText("pollutant field"));
        }
        self.separator(Some(code));
        let from = self.out.len();
        self.out.push_str(code);
        self.last_code = Some((from, self.out.len()));
        let _ = write!(self.out, "-{field}={value}");
        self
    }

    /// A pollutant entry with a number, written in the shortest form that reads back exactly
    /// (never with an exponent).
    pub fn number(&mut self, code: &str, field: &str, value: f64) -> &mut CpBuilder {
        if !value.is_finite() {
            return self.fail(EncodeError::NotFinite);
        }
        let mut buf = String::new();
        let _ = write!(buf, "{value}");
        self.text(code, field, &buf)
    }

    /// A pollutant entry with a number rounded to `decimals` places (`7.12` for pH).
    pub fn fixed(
        &mut self,
        code: &str,
        field: &str,
        value: f64,
        decimals: usize,
    ) -> &mut CpBuilder {
        if !value.is_finite() {
            return self.fail(EncodeError::NotFinite);
        }
        let mut buf = String::new();
        let _ = write!(buf, "{value:.decimals$}");
        self.text(code, field, &buf)
    }

    /// The data flag of a pollutant, `{code}-Flag=N`.
    pub fn flag(&mut self, code: &str, flag: DataFlag) -> &mut CpBuilder {
        match flag.letter() {
            Some(letter) => self.text(code, "Flag", letter),
            None => self.fail(EncodeError::BadText("data flag")),
        }
    }

    /// The CP content (what goes between `CP=&&` and `&&`), or the first error.
    pub fn finish(self) -> Result<String, EncodeError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hj212::command::Cn;
    use crate::hj212::frame::Frame;
    use crate::hj212::segment::{Flag, Split};

    fn sample(cp: &str) -> Packet<'_> {
        Packet {
            qn: Some("20160801085857223"),
            st: "32",
            cn: Cn::Other(1062),
            pw: "100000",
            mn: "010000A8900016F000169DC0",
            flag: Some(Flag(5)),
            split: None,
            cp,
        }
    }

    #[test]
    fn standard_example_byte_for_byte() {
        let text = encode(&sample("RtdInterval=30")).unwrap();
        assert_eq!(
            text,
            "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80\r\n"
        );
        let f = Frame::decode(text.as_bytes()).unwrap();
        assert_eq!(f.packet().unwrap(), sample("RtdInterval=30"));
    }

    #[test]
    fn builder() {
        let mut b = CpBuilder::new();
        b.data_time(DataTime::parse("20240101120000").unwrap())
            .fixed("w01001", "Rtd", 7.1234, 2)
            .flag("w01001", DataFlag::Normal)
            .number("w01009", "Rtd", 8.1)
            .flag("w01009", DataFlag::Fault);
        assert_eq!(
            b.finish().unwrap(),
            "DataTime=20240101120000;w01001-Rtd=7.12,w01001-Flag=N;w01009-Rtd=8.1,w01009-Flag=D"
        );
        let mut b = CpBuilder::new();
        b.number("w01001", "Rtd", 1e-7).param("RtdInterval", "30");
        assert_eq!(b.finish().unwrap(), "w01001-Rtd=0.0000001;RtdInterval=30");
    }

    #[test]
    fn builder_errors() {
        let mut b = CpBuilder::new();
        b.number("w01001", "Rtd", f64::NAN)
            .text("w01009", "Rtd", "1");
        assert_eq!(b.finish(), Err(EncodeError::NotFinite));
        for (code, field, value) in [
            ("w0;1", "Rtd", "1"),
            ("w-1", "Rtd", "1"),
            ("", "Rtd", "1"),
            ("w1", "", "1"),
            ("w1", "Rtd", "1,2"),
            ("w1", "Rtd", "1\r\n"),
        ] {
            let mut b = CpBuilder::new();
            b.text(code, field, value);
            assert!(
                matches!(b.finish(), Err(EncodeError::BadText(_))),
                "{code} {field} {value}"
            );
        }
        let mut b = CpBuilder::new();
        b.flag("w1", DataFlag::Other);
        assert!(b.finish().is_err());
        let mut b = CpBuilder::new();
        b.param("Data-Time", "1");
        assert!(b.finish().is_err());
    }

    #[test]
    fn refuses_what_would_not_read_back() {
        let mut p = sample("");
        p.mn = "A;B";
        assert_eq!(encode(&p), Err(EncodeError::BadText("MN")));
        let mut p = sample("");
        p.st = "";
        assert_eq!(encode(&p), Err(EncodeError::BadText("ST")));
        let mut p = sample("x\ny");
        assert_eq!(encode(&p), Err(EncodeError::BadText("CP")));
        p.cp = "";
        p.flag = Some(Flag(7));
        assert!(matches!(encode(&p), Err(EncodeError::BadSplit(_))));
        p.split = Some(Split { total: 2, index: 3 });
        assert!(matches!(encode(&p), Err(EncodeError::BadSplit(_))));
        p.split = Some(Split { total: 2, index: 2 });
        assert!(encode(&p).is_ok());
        let big = "a".repeat(10_000);
        assert!(matches!(
            encode(&sample(&big)),
            Err(EncodeError::TooLong(_))
        ));
    }
}
