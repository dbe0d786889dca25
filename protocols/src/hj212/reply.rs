//! Replies the platform sends to a station.

use alloc::string::String;

use super::command::Cn;
use super::encode::{EncodeError, encode};
use super::segment::{Flag, Packet};

/// `ST` of system interaction packets (replies).
pub const ST_SYSTEM: &str = "91";

/// The data acknowledgement (CN 9014) for an upload whose `Flag` asked for one:
/// `QN=<same QN>;ST=91;CN=9014;PW=<same>;MN=<same>;Flag=4;CP=&&&&`, framed.
///
/// Each packet that asks is answered, parts of a split message included: the station
/// retransmits the one that was not. The reply's `Flag` is HJ 212-2017 without A and D bits
/// (4), whatever version the station wrote.
pub fn data_ack(request: &Packet<'_>) -> Result<String, EncodeError> {
    let qn = request.qn.ok_or(EncodeError::MissingQn)?;
    encode(&Packet {
        qn: Some(qn),
        st: ST_SYSTEM,
        cn: Cn::DataAck,
        pw: request.pw,
        mn: request.mn,
        flag: Some(Flag::new(Flag::VERSION_2017, false, false)),
        split: None,
        cp: "",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hj212::frame::Frame;

    #[test]
    fn ack_echoes_qn_pw_mn() {
        let req = Packet::parse("QN=20160801085857223;ST=32;CN=2011;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&DataTime=20160801085857;w01001-Rtd=7.1&&").unwrap();
        let ack = data_ack(&req).unwrap();
        let body = "QN=20160801085857223;ST=91;CN=9014;PW=100000;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&";
        assert_eq!(&ack[..6], "##0087");
        assert_eq!(&ack[6..6 + body.len()], body);
        let f = Frame::decode(ack.as_bytes()).unwrap();
        let p = f.packet().unwrap();
        assert_eq!(p.cn, Cn::DataAck);
        assert!(!p.wants_ack());
    }

    #[test]
    fn ack_needs_qn() {
        let req = Packet::parse("ST=32;CN=2011;PW=1;MN=X;Flag=5;CP=&&&&").unwrap();
        assert_eq!(data_ack(&req), Err(EncodeError::MissingQn));
    }
}
