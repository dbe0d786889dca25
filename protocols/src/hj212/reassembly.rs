//! Messages a station split into several packets (`Flag` D bit, `PNUM` parts, `PNO` this
//! part's number) put back together, per station (`MN`) and request (`QN`).
//!
//! Memory is bounded: at most `max_pending` messages wait, each of at most `max_parts` parts.
//! Nothing here reads a clock: the caller passes `now_ms` and calls
//! [`expire`](Reassembler::expire) to drop messages whose parts stopped coming.

use alloc::string::String;
use alloc::vec::Vec;

use super::command::Cn;
use super::segment::{Flag, Packet};

/// Messages waiting for parts, by default.
pub const DEFAULT_MAX_PENDING: usize = 64;
/// Parts one message may have, by default (with the reader's default 4096-byte data segments,
/// 256 KiB per message).
pub const DEFAULT_MAX_PARTS: u16 = 64;
/// How long a message waits for its next part, by default.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// Why a part was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// The packet has no `PNUM`/`PNO`.
    #[error("packet is not part of a split message")]
    NotSplit,
    /// A split packet without `QN`, which identifies the message.
    #[error("split packet has no QN")]
    MissingQn,
    /// `PNUM` over the limit.
    #[error("message of {total} parts exceeds the limit of {max}")]
    TooManyParts {
        /// `PNUM`.
        total: u16,
        /// The limit.
        max: u16,
    },
    /// A new message while `max` are already waiting.
    #[error("{max} split messages already waiting")]
    TooManyPending {
        /// The limit.
        max: usize,
    },
    /// The part disagrees with the message's earlier parts.
    #[error("part disagrees with earlier parts of the message on {0}")]
    Inconsistent(&'static str),
}

/// A message put back together: the header of its first part, `Flag` without the D bit, the
/// parts' CP contents joined with `;` in part order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssembledPacket {
    /// `QN`.
    pub qn: String,
    /// `ST`.
    pub st: String,
    /// `CN`.
    pub cn: Cn,
    /// `PW`.
    pub pw: String,
    /// `MN`.
    pub mn: String,
    /// `Flag` of the first part received, D bit cleared.
    pub flag: Option<Flag>,
    /// The joined CP content.
    pub cp: String,
    /// How many parts it had.
    pub parts: u16,
}

impl AssembledPacket {
    /// The message as a packet, to go through the same path as unsplit ones.
    pub fn as_packet(&self) -> Packet<'_> {
        Packet {
            qn: Some(&self.qn),
            st: &self.st,
            cn: self.cn,
            pw: &self.pw,
            mn: &self.mn,
            flag: self.flag,
            split: None,
            cp: &self.cp,
        }
    }
}

/// A message dropped by [`Reassembler::expire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    /// `MN`.
    pub mn: String,
    /// `QN`.
    pub qn: String,
    /// `CN`.
    pub cn: Cn,
    /// Parts received.
    pub received: u16,
    /// `PNUM`.
    pub total: u16,
}

#[derive(Debug, Clone)]
struct Pending {
    mn: String,
    qn: String,
    st: String,
    cn: Cn,
    pw: String,
    flag: Option<Flag>,
    /// CP content by `PNO - 1`.
    parts: Vec<Option<String>>,
    received: u16,
    last_ms: u64,
}

/// Reassembles split messages.
#[derive(Debug, Clone)]
pub struct Reassembler {
    /// Few enough (bounded by `max_pending`) that a linear search beats building keys.
    pending: Vec<Pending>,
    max_pending: usize,
    max_parts: u16,
    timeout_ms: u64,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::new(DEFAULT_MAX_PENDING, DEFAULT_MAX_PARTS, DEFAULT_TIMEOUT_MS)
    }
}

impl Reassembler {
    /// A reassembler holding at most `max_pending` incomplete messages of at most `max_parts`
    /// parts, each dropped by [`expire`](Reassembler::expire) `timeout_ms` after its last part.
    pub fn new(max_pending: usize, max_parts: u16, timeout_ms: u64) -> Reassembler {
        Reassembler {
            pending: Vec::new(),
            max_pending,
            max_parts,
            timeout_ms,
        }
    }

    /// Takes one part. Returns the whole message when this part completes it. A part received
    /// twice (a retransmission) is ignored.
    pub fn push(
        &mut self,
        packet: &Packet<'_>,
        now_ms: u64,
    ) -> Result<Option<AssembledPacket>, ReassemblyError> {
        let split = packet.split.ok_or(ReassemblyError::NotSplit)?;
        let qn = packet.qn.ok_or(ReassemblyError::MissingQn)?;
        if split.total > self.max_parts {
            return Err(ReassemblyError::TooManyParts {
                total: split.total,
                max: self.max_parts,
            });
        }
        // `Packet::parse` guarantees 1 <= index <= total; a hand-built packet may not.
        if split.index == 0 || split.index > split.total {
            return Err(ReassemblyError::Inconsistent("PNO"));
        }
        let i = match self
            .pending
            .iter()
            .position(|p| p.mn == packet.mn && p.qn == qn)
        {
            Some(i) => {
                let p = &self.pending[i];
                if p.parts.len() != split.total as usize {
                    return Err(ReassemblyError::Inconsistent("PNUM"));
                }
                if p.cn != packet.cn {
                    return Err(ReassemblyError::Inconsistent("CN"));
                }
                if p.st != packet.st {
                    return Err(ReassemblyError::Inconsistent("ST"));
                }
                if p.pw != packet.pw {
                    return Err(ReassemblyError::Inconsistent("PW"));
                }
                i
            }
            None => {
                // A one-part message completes at once and never waits.
                if split.total > 1 && self.pending.len() >= self.max_pending {
                    return Err(ReassemblyError::TooManyPending {
                        max: self.max_pending,
                    });
                }
                self.pending.push(Pending {
                    mn: packet.mn.into(),
                    qn: qn.into(),
                    st: packet.st.into(),
                    cn: packet.cn,
                    pw: packet.pw.into(),
                    flag: packet.flag.map(|f| Flag(f.0 & !Flag::SPLIT)),
                    parts: (0..split.total).map(|_| None).collect(),
                    received: 0,
                    last_ms: now_ms,
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[i];
        p.last_ms = p.last_ms.max(now_ms);
        let slot = &mut p.parts[split.index as usize - 1];
        if slot.is_none() {
            *slot = Some(packet.cp.into());
            p.received += 1;
        }
        if p.received < split.total {
            return Ok(None);
        }
        let p = self.pending.swap_remove(i);
        let mut cp = String::new();
        for part in p.parts.iter().flatten().filter(|c| !c.is_empty()) {
            if !cp.is_empty() {
                cp.push(';');
            }
            cp.push_str(part);
        }
        Ok(Some(AssembledPacket {
            qn: p.qn,
            st: p.st,
            cn: p.cn,
            pw: p.pw,
            mn: p.mn,
            flag: p.flag,
            cp,
            parts: split.total,
        }))
    }

    /// Drops the messages whose last part came `timeout_ms` or longer before `now_ms`, and
    /// says which (for the dead letters).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Expired> {
        let mut out = Vec::new();
        let timeout = self.timeout_ms;
        self.pending.retain(|p| {
            let stale = now_ms.saturating_sub(p.last_ms) >= timeout;
            if stale {
                out.push(Expired {
                    mn: p.mn.clone(),
                    qn: p.qn.clone(),
                    cn: p.cn,
                    received: p.received,
                    total: p.parts.len() as u16,
                });
            }
            !stale
        });
        out
    }

    /// Messages waiting for parts.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hj212::segment::Split;
    use alloc::format;

    fn part(
        mn: &'static str,
        qn: &'static str,
        total: u16,
        index: u16,
        cp: &'static str,
    ) -> Packet<'static> {
        Packet {
            qn: Some(qn),
            st: "21",
            cn: Cn::Minute,
            pw: "123456",
            mn,
            flag: Some(Flag(7)),
            split: Some(Split { total, index }),
            cp,
        }
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let mut r = Reassembler::default();
        assert_eq!(r.push(&part("M", "1", 3, 3, "c=3"), 0), Ok(None));
        assert_eq!(r.push(&part("M", "1", 3, 1, "a=1"), 1), Ok(None));
        assert_eq!(r.push(&part("M", "1", 3, 1, "a=1"), 2), Ok(None));
        // Same QN from another station is another message.
        assert_eq!(r.push(&part("N", "1", 2, 1, "x=1"), 2), Ok(None));
        assert_eq!(r.pending(), 2);
        let whole = r.push(&part("M", "1", 3, 2, "b=2"), 3).unwrap().unwrap();
        assert_eq!(whole.cp, "a=1;b=2;c=3");
        assert_eq!(whole.flag, Some(Flag(5)));
        assert_eq!(whole.parts, 3);
        let p = whole.as_packet();
        assert_eq!(
            (p.mn, p.qn, p.cn, p.split),
            ("M", Some("1"), Cn::Minute, None)
        );
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn limits_and_expiry() {
        let mut r = Reassembler::new(2, 4, 1000);
        let mut unsplit = part("M", "1", 2, 1, "");
        unsplit.split = None;
        assert_eq!(r.push(&unsplit, 0), Err(ReassemblyError::NotSplit));
        let mut no_qn = part("M", "1", 2, 1, "");
        no_qn.qn = None;
        assert_eq!(r.push(&no_qn, 0), Err(ReassemblyError::MissingQn));
        assert_eq!(
            r.push(&part("M", "1", 5, 1, ""), 0),
            Err(ReassemblyError::TooManyParts { total: 5, max: 4 })
        );
        assert_eq!(
            r.push(&part("M", "1", 2, 3, ""), 0),
            Err(ReassemblyError::Inconsistent("PNO"))
        );
        r.push(&part("M", "1", 2, 1, ""), 0).unwrap();
        r.push(&part("M", "2", 2, 1, ""), 500).unwrap();
        assert_eq!(
            r.push(&part("M", "3", 2, 1, ""), 600),
            Err(ReassemblyError::TooManyPending { max: 2 })
        );
        assert_eq!(
            r.push(&part("M", "1", 3, 2, ""), 600),
            Err(ReassemblyError::Inconsistent("PNUM"))
        );
        let mut other_cn = part("M", "1", 2, 2, "");
        other_cn.cn = Cn::Hour;
        assert_eq!(
            r.push(&other_cn, 600),
            Err(ReassemblyError::Inconsistent("CN"))
        );
        assert!(r.expire(999).is_empty());
        let gone = r.expire(1000);
        assert_eq!(
            gone,
            [Expired {
                mn: "M".into(),
                qn: "1".into(),
                cn: Cn::Minute,
                received: 1,
                total: 2
            }]
        );
        assert_eq!(r.pending(), 1);
        r.push(&part("M", "3", 2, 1, ""), 1000).unwrap();
        // A one-part "split" message completes at once, even when the table is full.
        let whole = r.push(&part("M", "4", 1, 1, "a=1"), 1000).unwrap().unwrap();
        assert_eq!(whole.cp, "a=1");
        assert_eq!(r.pending(), 2);
        assert_eq!(r.expire(5000).len(), 2);
        // Empty parts add no separator.
        r.push(&part("M", "5", 2, 1, ""), 5000).unwrap();
        let whole = r.push(&part("M", "5", 2, 2, "b=2"), 5000).unwrap().unwrap();
        assert_eq!(whole.cp, "b=2");
        assert_eq!(
            format!("{}", ReassemblyError::NotSplit),
            "packet is not part of a split message"
        );
    }
}
