//! The HJ 212-2017 CRC16 over the data segment.
//!
//! The standard's appendix gives the algorithm as C code: register 0xFFFF; for every byte the
//! register becomes `(register >> 8) ^ byte`, then eight reflected shifts with polynomial
//! 0xA001. The first step *replaces* the low byte with the data byte instead of XOR-ing into
//! it, so this is not CRC-16/MODBUS although polynomial and initial value are the same: a
//! MODBUS implementation gives a different check value and would refuse every real packet.
//! The check value is written as four hexadecimal digits, upper case.

/// The HJ 212-2017 CRC16 of `data` (the data segment, from `QN=`/`ST=` to the closing `&&`).
pub const fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    let mut i = 0;
    while i < data.len() {
        crc = (crc >> 8) ^ data[i] as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        i += 1;
    }
    crc
}

/// The check value as it is written in a packet: four upper-case hexadecimal digits.
pub fn to_hex(crc: u16) -> [u8; 4] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [
        HEX[(crc >> 12) as usize & 0xF],
        HEX[(crc >> 8) as usize & 0xF],
        HEX[(crc >> 4) as usize & 0xF],
        HEX[crc as usize & 0xF],
    ]
}

/// Reads a check value from four hexadecimal digits. Lower case is accepted: some loggers
/// write it, and the value is what matters.
pub fn from_hex(digits: &[u8]) -> Option<u16> {
    if digits.len() != 4 {
        return None;
    }
    let mut v: u16 = 0;
    for &d in digits {
        let n = match d {
            b'0'..=b'9' => d - b'0',
            b'A'..=b'F' => d - b'A' + 10,
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | n as u16;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data segment of the example packet HJ 212-2017 gives for its CRC field
    /// (`##0101...&&1C80\r\n`), checked with the algorithm of its Appendix A.
    const STANDARD_EXAMPLE: &[u8] = b"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&";

    #[test]
    fn standard_example() {
        assert_eq!(STANDARD_EXAMPLE.len(), 101);
        assert_eq!(crc16(STANDARD_EXAMPLE), 0x1C80);
        assert_eq!(&to_hex(crc16(STANDARD_EXAMPLE)), b"1C80");
    }

    /// The reason the algorithm is spelled out: CRC-16/MODBUS (XOR the byte into the register)
    /// gives another value for the same segment.
    #[test]
    fn differs_from_modbus() {
        let mut modbus: u16 = 0xFFFF;
        for &b in STANDARD_EXAMPLE {
            modbus ^= b as u16;
            for _ in 0..8 {
                modbus = if modbus & 1 != 0 {
                    (modbus >> 1) ^ 0xA001
                } else {
                    modbus >> 1
                };
            }
        }
        assert_ne!(modbus, 0x1C80);
    }

    #[test]
    fn empty_and_hex() {
        assert_eq!(crc16(b""), 0xFFFF);
        assert_eq!(&to_hex(0x00AF), b"00AF");
        assert_eq!(from_hex(b"1c80"), Some(0x1C80));
        assert_eq!(from_hex(b"1C8G"), None);
        assert_eq!(from_hex(b"1C8"), None);
        for v in [0u16, 1, 0x1C80, 0xFFFF, 0xA001] {
            assert_eq!(from_hex(&to_hex(v)), Some(v));
        }
    }
}
