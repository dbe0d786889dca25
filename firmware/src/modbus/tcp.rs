//! Modbus TCP: the MBAP header around the same PDU handler the RTU slave uses.
//!
//! A TCP stream has no silence to delimit frames: the header's length field does. A header
//! with a foreign protocol id or an impossible length means the stream is not Modbus (or is
//! out of step), and there is no way to resynchronise, so the caller closes the connection.

use super::pdu::{self, DataModel, MAX_PDU, function};
use super::rtu::BROADCAST;

/// Bytes in an MBAP header (transaction, protocol, length, unit).
pub const HEADER_LEN: usize = 7;
/// Largest Modbus TCP frame: header + PDU.
pub const MAX_ADU: usize = HEADER_LEN + MAX_PDU;

/// A parsed MBAP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Echoed in the reply so the client can match it.
    pub transaction: u16,
    /// Unit identifier (the serial address behind a gateway, 0xFF for a direct device).
    pub unit: u8,
    /// Bytes of PDU that follow the header.
    pub pdu_len: usize,
}

/// Why a header cannot start a Modbus frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The protocol identifier is not 0 (Modbus).
    Protocol(u16),
    /// The length field does not allow a PDU of 1..=253 bytes.
    Length(u16),
}

impl Header {
    /// Parses the seven header bytes.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        let transaction = u16::from_be_bytes([bytes[0], bytes[1]]);
        let protocol = u16::from_be_bytes([bytes[2], bytes[3]]);
        let length = u16::from_be_bytes([bytes[4], bytes[5]]);
        if protocol != 0 {
            return Err(HeaderError::Protocol(protocol));
        }
        // The length counts the unit byte and the PDU.
        if !(2..=MAX_PDU as u16 + 1).contains(&length) {
            return Err(HeaderError::Length(length));
        }
        Ok(Header {
            transaction,
            unit: bytes[6],
            pdu_len: length as usize - 1,
        })
    }
}

/// How a TCP device treats unit identifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitFilter {
    /// The device's own unit; 0xFF (the MBAP "not used" value) is always accepted too.
    pub unit: u8,
}

impl UnitFilter {
    /// Whether a request addressed to `unit` is for this device.
    pub fn accepts(self, unit: u8) -> bool {
        unit == self.unit || unit == 0xFF
    }
}

/// Serves one request (header + PDU) and writes the reply frame into `out`: `Some(len)`, or
/// `None` when no reply is due (a broadcast, or another unit).
pub fn serve<M: DataModel + ?Sized>(
    model: &mut M,
    filter: UnitFilter,
    header: &Header,
    request_pdu: &[u8],
    out: &mut [u8; MAX_ADU],
) -> Option<usize> {
    if header.unit == BROADCAST {
        if request_pdu.first().is_some_and(|c| function::is_write(*c)) {
            let mut scratch = [0u8; MAX_PDU];
            pdu::handle(model, request_pdu, &mut scratch);
        }
        return None;
    }
    if !filter.accepts(header.unit) {
        return None;
    }
    let mut pdu_out = [0u8; MAX_PDU];
    let n = pdu::handle(model, request_pdu, &mut pdu_out);
    out[0..2].copy_from_slice(&header.transaction.to_be_bytes());
    out[2..4].copy_from_slice(&[0, 0]);
    out[4..6].copy_from_slice(&(n as u16 + 1).to_be_bytes());
    out[6] = header.unit;
    out[HEADER_LEN..HEADER_LEN + n].copy_from_slice(&pdu_out[..n]);
    Some(HEADER_LEN + n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::pdu::tests::Tables;

    #[test]
    fn header_parsing() {
        let h = Header::parse(&[0, 9, 0, 0, 0, 6, 1]).unwrap();
        assert_eq!(
            h,
            Header {
                transaction: 9,
                unit: 1,
                pdu_len: 5
            }
        );
        assert_eq!(
            Header::parse(&[0, 9, 0, 1, 0, 6, 1]),
            Err(HeaderError::Protocol(1))
        );
        assert_eq!(
            Header::parse(&[0, 9, 0, 0, 0, 1, 1]),
            Err(HeaderError::Length(1))
        );
        assert_eq!(
            Header::parse(&[0, 9, 0, 0, 1, 0, 1]),
            Err(HeaderError::Length(256))
        );
    }

    #[test]
    fn replies_echo_transaction_and_unit() {
        let mut t = Tables::default();
        t.holding[1] = 42;
        let f = UnitFilter { unit: 3 };
        let mut out = [0u8; MAX_ADU];
        let h = Header {
            transaction: 0x0102,
            unit: 3,
            pdu_len: 5,
        };
        let n = serve(&mut t, f, &h, &[3, 0, 1, 0, 1], &mut out).unwrap();
        assert_eq!(&out[..n], &[1, 2, 0, 0, 0, 5, 3, 3, 2, 0, 42]);
        let h = Header { unit: 0xFF, ..h };
        assert!(serve(&mut t, f, &h, &[3, 0, 1, 0, 1], &mut out).is_some());
        let h = Header { unit: 4, ..h };
        assert!(serve(&mut t, f, &h, &[3, 0, 1, 0, 1], &mut out).is_none());
        let h = Header { unit: 0, ..h };
        assert!(serve(&mut t, f, &h, &[6, 0, 1, 0, 7], &mut out).is_none());
        assert_eq!(t.holding[1], 7, "broadcast write carried out");
    }
}
