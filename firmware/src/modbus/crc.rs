//! CRC-16/MODBUS: polynomial 0x8005 reflected (0xA001), initial value 0xFFFF, no final XOR.
//! On the wire the low byte goes first.

/// The table for byte-at-a-time computation, built at compile time (512 bytes of flash).
const TABLE: [u16; 256] = build_table();

const fn build_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// The CRC-16/MODBUS of `bytes`.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc = (crc >> 8) ^ TABLE[((crc ^ b as u16) & 0xFF) as usize];
    }
    crc
}

/// Whether a frame ends with the correct CRC of what precedes it (low byte first).
pub fn frame_crc_ok(frame: &[u8]) -> bool {
    if frame.len() < 3 {
        return false;
    }
    let (body, tail) = frame.split_at(frame.len() - 2);
    crc16(body) == u16::from_le_bytes([tail[0], tail[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_of_the_catalogue() {
        // CRC-16/MODBUS check value for "123456789" (the CRC catalogue's definition).
        assert_eq!(crc16(b"123456789"), 0x4B37);
    }

    #[test]
    fn known_request_from_the_spec() {
        // Read holding registers 0x006B x3 from unit 0x11: CRC bytes 0x76 0x87 on the wire.
        let frame = [0x11, 0x03, 0x00, 0x6B, 0x00, 0x03, 0x76, 0x87];
        assert!(frame_crc_ok(&frame));
        let mut bad = frame;
        bad[3] ^= 1;
        assert!(!frame_crc_ok(&bad));
        assert!(!frame_crc_ok(&[0x11, 0x03]));
    }
}
