//! The command parameters: the content of `CP=&&...&&`.
//!
//! A data upload's CP is `DataTime=YYYYMMDDhhmmss;` followed by per-pollutant entries
//! `{code}-{field}={value}`: `;` between pollutants, `,` between one pollutant's entries, e.g.
//! `DataTime=20240101120000;w01001-Rtd=7.12,w01001-Flag=N;w01009-Rtd=8.1,w01009-Flag=N`.
//! Loggers are not consistent about the separators, so both are accepted anywhere and the
//! entries are grouped by code instead. Other parameters (`RtdInterval=30`, `QnRtn=1`, ...)
//! have no `-` in their key.
//!
//! [`items`] walks the content without allocating; [`CpData`] collects it with one vector for
//! the pollutant entries and one for the other parameters, every string borrowed.

use alloc::vec::Vec;

use super::command::Cn;
use super::datetime::{DataTime, DataTimeError};
use crate::quantity::{Quality, ShortText};

/// Why CP content was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpError {
    /// An entry without `=`.
    #[error("CP entry `{0}` has no `=`")]
    NoEquals(ShortText),
    /// An entry with an empty key, code or field name.
    #[error("CP entry `{0}` has an empty name")]
    EmptyName(ShortText),
    /// `DataTime` is malformed.
    #[error("DataTime `{value}`: {error}")]
    BadDataTime {
        /// The offending value.
        value: ShortText,
        /// What is wrong with it.
        error: DataTimeError,
    },
    /// `DataTime` given twice with different values.
    #[error("DataTime given twice with different values")]
    ConflictingDataTime,
    /// A value that should be a number is not one.
    #[error("`{0}` is not a finite decimal number")]
    BadNumber(ShortText),
}

/// One `key=value` entry of the CP content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpItem<'a> {
    /// The pollutant code for `{code}-{field}` keys (`w01001` of `w01001-Rtd`), `None` for
    /// parameters such as `DataTime`.
    pub code: Option<&'a str>,
    /// The field (`Rtd`, `Avg`, `Flag`, ...) or the parameter name.
    pub field: &'a str,
    /// The value, unparsed.
    pub value: &'a str,
}

/// An iterator over the entries of CP content, see [`items`].
#[derive(Clone, Debug)]
pub struct CpItems<'a> {
    parts: core::str::Split<'a, [char; 2]>,
}

/// The entries of CP content in order, without allocating. Empty entries (`;;`, a trailing
/// `;`) are skipped.
pub fn items(cp: &str) -> CpItems<'_> {
    CpItems {
        parts: cp.split([';', ',']),
    }
}

impl<'a> Iterator for CpItems<'a> {
    type Item = Result<CpItem<'a>, CpError>;

    fn next(&mut self) -> Option<Self::Item> {
        let part = self.parts.by_ref().find(|p| !p.is_empty())?;
        Some(item(part))
    }
}

fn item(part: &str) -> Result<CpItem<'_>, CpError> {
    let (key, value) = part
        .split_once('=')
        .ok_or_else(|| CpError::NoEquals(ShortText::new(part)))?;
    let (code, field) = match key.split_once('-') {
        Some((code, field)) => (Some(code), field),
        None => (None, key),
    };
    if field.is_empty() || code.is_some_and(str::is_empty) {
        return Err(CpError::EmptyName(ShortText::new(part)));
    }
    Ok(CpItem { code, field, value })
}

/// A data flag (`{code}-Flag=N`): the state of the instrument when it produced the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataFlag {
    /// `N`: normal.
    Normal,
    /// `F`: stopped (the monitored source or the instrument is out of operation).
    Stopped,
    /// `M`: maintenance.
    Maintenance,
    /// `S`: a set value entered by hand.
    ManualInput,
    /// `D`: fault.
    Fault,
    /// `C`: calibration.
    Calibration,
    /// `T`: over the instrument's measuring range ("超限").
    OverRange,
    /// `B`: communication between instrument and data logger failed.
    CommunicationError,
    /// Any other letter (or text) the standard does not define.
    Other,
}

impl DataFlag {
    /// The flag for a value of a `-Flag` field.
    pub fn parse(value: &str) -> DataFlag {
        match value {
            "N" => DataFlag::Normal,
            "F" => DataFlag::Stopped,
            "M" => DataFlag::Maintenance,
            "S" => DataFlag::ManualInput,
            "D" => DataFlag::Fault,
            "C" => DataFlag::Calibration,
            "T" => DataFlag::OverRange,
            "B" => DataFlag::CommunicationError,
            _ => DataFlag::Other,
        }
    }

    /// How far a value with this flag can be trusted.
    ///
    /// - `N` is [`Quality::Good`].
    /// - `T` and `S` are [`Quality::Uncertain`]: the value is real but doubtful. Over range,
    ///   the instrument measured the sample but saturated, so the true value is at least the
    ///   one reported (the quality the platform uses for readings outside a sensor's rated
    ///   range). A manual input is a value a person entered, e.g. from a laboratory analysis
    ///   while the analyser is down: possibly right, but not this instrument's measurement at
    ///   this time.
    /// - `F`, `M`, `C`, `D`, `B` are [`Quality::Bad`]: the value does not describe the water.
    ///   Stopped, in maintenance or in calibration the instrument measures nothing or a
    ///   reference solution; on a fault the instrument itself says the value is wrong; on a
    ///   communication failure the logger reports a stale or placeholder value.
    /// - An undefined flag is [`Quality::Uncertain`]: the station says the value is not
    ///   normal without saying how; it is kept, but not trusted as good.
    pub const fn quality(self) -> Quality {
        match self {
            DataFlag::Normal => Quality::Good,
            DataFlag::OverRange | DataFlag::ManualInput | DataFlag::Other => Quality::Uncertain,
            DataFlag::Stopped
            | DataFlag::Maintenance
            | DataFlag::Calibration
            | DataFlag::Fault
            | DataFlag::CommunicationError => Quality::Bad,
        }
    }

    /// The letter written in packets (`None` for [`DataFlag::Other`]).
    pub const fn letter(self) -> Option<&'static str> {
        Some(match self {
            DataFlag::Normal => "N",
            DataFlag::Stopped => "F",
            DataFlag::Maintenance => "M",
            DataFlag::ManualInput => "S",
            DataFlag::Fault => "D",
            DataFlag::Calibration => "C",
            DataFlag::OverRange => "T",
            DataFlag::CommunicationError => "B",
            DataFlag::Other => return None,
        })
    }
}

/// Parses a value as a finite decimal number (`7.12`, `-0.5`, `1e-3`). Rust's float syntax
/// also takes `inf` and `NaN`; a station never means those, so only digits, sign, point and
/// exponent are let through.
pub fn parse_number(value: &str) -> Result<f64, CpError> {
    let plausible = value.bytes().any(|b| b.is_ascii_digit())
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    match value.parse::<f64>() {
        Ok(v) if plausible && v.is_finite() => Ok(v),
        _ => Err(CpError::BadNumber(ShortText::new(value))),
    }
}

/// A pollutant entry of [`CpData`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The pollutant code.
    pub code: &'a str,
    /// The field (`Rtd`, `Flag`, ...).
    pub field: &'a str,
    /// The value, unparsed.
    pub value: &'a str,
}

/// Parsed CP content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpData<'a> {
    /// `DataTime`, the station-local time the data is for.
    pub data_time: Option<DataTime>,
    /// Parameters other than `DataTime` (`RtdInterval`, `QnRtn`, ...), in order.
    pub params: Vec<(&'a str, &'a str)>,
    /// Pollutant entries, grouped by code in order of each code's first appearance.
    entries: Vec<Entry<'a>>,
}

impl<'a> CpData<'a> {
    /// Parses CP content.
    pub fn parse(cp: &'a str) -> Result<CpData<'a>, CpError> {
        let mut out = CpData::default();
        for it in items(cp) {
            let it = it?;
            match it.code {
                None if it.field == "DataTime" => {
                    let t = DataTime::parse(it.value).map_err(|error| CpError::BadDataTime {
                        value: ShortText::new(it.value),
                        error,
                    })?;
                    // Parts of a split message each repeat it.
                    match out.data_time {
                        Some(seen) if seen != t => return Err(CpError::ConflictingDataTime),
                        _ => out.data_time = Some(t),
                    }
                }
                None => out.params.push((it.field, it.value)),
                Some(code) => out.insert(Entry {
                    code,
                    field: it.field,
                    value: it.value,
                }),
            }
        }
        Ok(out)
    }

    /// Appends an entry behind the last one of its code. Loggers group by code, so the last
    /// entry almost always matches and this is a push.
    fn insert(&mut self, e: Entry<'a>) {
        match self.entries.iter().rposition(|x| x.code == e.code) {
            Some(i) if i + 1 != self.entries.len() => self.entries.insert(i + 1, e),
            _ => self.entries.push(e),
        }
    }

    /// The value of a parameter (first occurrence).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }

    /// Every pollutant entry, grouped by code.
    pub fn entries(&self) -> &[Entry<'a>] {
        &self.entries
    }

    /// The pollutants, in order of first appearance.
    pub fn pollutants(&self) -> impl Iterator<Item = Pollutant<'_, 'a>> + '_ {
        self.entries
            .chunk_by(|a, b| a.code == b.code)
            .map(|entries| Pollutant {
                code: entries[0].code,
                entries,
            })
    }

    /// The pollutant with this code, if present.
    pub fn pollutant(&self, code: &str) -> Option<Pollutant<'_, 'a>> {
        self.pollutants().find(|p| p.code == code)
    }
}

/// One pollutant's entries, e.g. `w01001-Rtd=7.12,w01001-Flag=N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pollutant<'p, 'a> {
    /// The pollutant code (`w01001`).
    pub code: &'a str,
    /// Its entries, in order.
    pub entries: &'p [Entry<'a>],
}

impl<'a> Pollutant<'_, 'a> {
    /// The value of a field (first occurrence).
    pub fn get(&self, field: &str) -> Option<&'a str> {
        self.entries
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.value)
    }

    /// The value for this kind of upload (`Rtd` for real-time, `Avg` for minute, hour and
    /// daily data), unparsed.
    pub fn value_for(&self, cn: Cn) -> Option<&'a str> {
        cn.value_field().and_then(|f| self.get(f))
    }

    /// A field's value as a number: `None` when absent, an error when not a number.
    pub fn number(&self, field: &str) -> Option<Result<f64, CpError>> {
        self.get(field).map(parse_number)
    }

    /// The data flag (`{code}-Flag`), `None` when the station sent none.
    pub fn flag(&self) -> Option<DataFlag> {
        self.get("Flag").map(DataFlag::parse)
    }

    /// The quality of the values: from the data flag, [`Quality::Good`] without one (the
    /// standard makes the flag optional and its absence means nothing is wrong).
    pub fn quality(&self) -> Quality {
        self.flag().map_or(Quality::Good, DataFlag::quality)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn grouped_pollutants() {
        let cp = CpData::parse(
            "DataTime=20240101120000;w01001-Rtd=7.12,w01001-Flag=N;w01009-Rtd=8.1,w01009-Flag=D;",
        )
        .unwrap();
        assert_eq!(cp.data_time.unwrap().to_string(), "20240101120000");
        let ps: Vec<_> = cp.pollutants().collect();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].code, "w01001");
        assert_eq!(ps[0].value_for(Cn::RealTime), Some("7.12"));
        assert_eq!(ps[0].number("Rtd"), Some(Ok(7.12)));
        assert_eq!(ps[0].quality(), Quality::Good);
        assert_eq!(ps[1].flag(), Some(DataFlag::Fault));
        assert_eq!(ps[1].quality(), Quality::Bad);
        assert_eq!(ps[1].value_for(Cn::Hour), None);
        assert!(cp.params.is_empty());
    }

    #[test]
    fn separators_are_loose() {
        // All commas, entries of one code scattered.
        let cp =
            CpData::parse("DataTime=20240101120000,a-Rtd=1,b-Rtd=2,a-Flag=T;b-Flag=N").unwrap();
        let ps: Vec<_> = cp.pollutants().collect();
        assert_eq!(ps.len(), 2);
        assert_eq!(
            ps[0].entries.iter().map(|e| e.field).collect::<Vec<_>>(),
            vec!["Rtd", "Flag"]
        );
        assert_eq!(ps[0].quality(), Quality::Uncertain);
        assert_eq!(cp.pollutant("b").unwrap().get("Flag"), Some("N"));
        assert!(cp.pollutant("c").is_none());
    }

    #[test]
    fn params_and_errors() {
        let cp = CpData::parse("QnRtn=1;ExeRtn=1").unwrap();
        assert_eq!(cp.param("ExeRtn"), Some("1"));
        assert_eq!(cp.data_time, None);
        assert_eq!(CpData::parse("").unwrap(), CpData::default());
        assert!(matches!(CpData::parse("a-Rtd"), Err(CpError::NoEquals(_))));
        assert!(matches!(
            CpData::parse("-Rtd=1"),
            Err(CpError::EmptyName(_))
        ));
        assert!(matches!(CpData::parse("a-=1"), Err(CpError::EmptyName(_))));
        assert!(matches!(CpData::parse("=1"), Err(CpError::EmptyName(_))));
        assert!(matches!(
            CpData::parse("DataTime=20241301000000"),
            Err(CpError::BadDataTime {
                error: DataTimeError::Range,
                ..
            })
        ));
        assert!(CpData::parse("DataTime=20240101000000;DataTime=20240101000000").is_ok());
        assert_eq!(
            CpData::parse("DataTime=20240101000000;DataTime=20240101000100"),
            Err(CpError::ConflictingDataTime)
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("7.12"), Ok(7.12));
        assert_eq!(parse_number("-0.5"), Ok(-0.5));
        assert_eq!(parse_number("1e-3"), Ok(0.001));
        assert_eq!(parse_number("12"), Ok(12.0));
        for bad in ["", "inf", "NaN", "-", "1,5", "0x10", " 1", "1e999", "e"] {
            assert!(parse_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_and_quality() {
        use DataFlag::*;
        for (letter, flag, quality) in [
            ("N", Normal, Quality::Good),
            ("F", Stopped, Quality::Bad),
            ("M", Maintenance, Quality::Bad),
            ("S", ManualInput, Quality::Uncertain),
            ("D", Fault, Quality::Bad),
            ("C", Calibration, Quality::Bad),
            ("T", OverRange, Quality::Uncertain),
            ("B", CommunicationError, Quality::Bad),
        ] {
            assert_eq!(DataFlag::parse(letter), flag);
            assert_eq!(flag.letter(), Some(letter));
            assert_eq!(flag.quality(), quality);
        }
        assert_eq!(DataFlag::parse("X"), Other);
        assert_eq!(DataFlag::parse("n"), Other);
        assert_eq!(Other.quality(), Quality::Uncertain);
    }
}
