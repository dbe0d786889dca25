//! Coalesced acknowledgements to agents (`v1/agents/{id}/ack`).
//!
//! The publish stage collects the sequence numbers that became durable (or turned out to be
//! redeliveries of durable ones: the agent missed that ack and must get it again) while it
//! drains its queue, then sends one [`Ack`] per agent and queue incarnation.

use protocols::batch::Ack;

use crate::registry::AgentIdx;

/// Sequence numbers waiting to be acknowledged.
#[derive(Debug, Default)]
pub struct AckCoalescer {
    pending: Vec<(AgentIdx, u64, Vec<u64>)>,
    snapshots: Vec<(AgentIdx, Vec<String>)>,
}

impl AckCoalescer {
    /// Notes a durable sequence number of an agent's stream.
    pub fn add(&mut self, agent: AgentIdx, stream: u64, seq: u64) {
        match self
            .pending
            .iter_mut()
            .find(|(a, s, _)| *a == agent && *s == stream)
        {
            Some((_, _, seqs)) => seqs.push(seq),
            None => self.pending.push((agent, stream, vec![seq])),
        }
    }

    /// Notes a durably stored snapshot of an agent, by event id.
    pub fn add_snapshot(&mut self, agent: AgentIdx, event: String) {
        match self.snapshots.iter_mut().find(|(a, _)| *a == agent) {
            Some((_, ids)) => ids.push(event),
            None => self.snapshots.push((agent, vec![event])),
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.snapshots.is_empty()
    }

    /// Hands out one ack per agent and stream, and forgets them. Snapshot ids ride on the
    /// agent's first ack; an agent with only snapshots gets an ack with stream 0 and no seqs
    /// (snapshots are acknowledged by event id, whatever the stream).
    pub fn flush(&mut self, mut send: impl FnMut(AgentIdx, Ack)) {
        let mut snapshots = std::mem::take(&mut self.snapshots);
        for (agent, stream, seqs) in self.pending.drain(..) {
            let mut ack = Ack::from_seqs(stream, seqs);
            if let Some(i) = snapshots.iter().position(|(a, _)| *a == agent) {
                ack.snapshots = snapshots.swap_remove(i).1;
            }
            send(agent, ack);
        }
        for (agent, ids) in snapshots {
            send(
                agent,
                Ack {
                    stream: 0,
                    seqs: Vec::new(),
                    snapshots: ids,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ack_per_agent_and_stream_with_ranges() {
        let mut c = AckCoalescer::default();
        for s in [3, 1, 2, 7, 2] {
            c.add(0, 10, s);
        }
        c.add(1, 5, 9);
        c.add(0, 11, 1);
        let mut out = Vec::new();
        c.flush(|a, ack| out.push((a, ack)));
        assert!(c.is_empty());
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0, 0);
        assert_eq!(out[0].1.stream, 10);
        assert_eq!(out[0].1.seqs, vec![(1, 3), (7, 7)]);
        assert_eq!(out[1].1.seqs, vec![(9, 9)]);
        assert_eq!((out[2].1.stream, out[2].1.seqs.clone()), (11, vec![(1, 1)]));
    }

    #[test]
    fn snapshot_ids_ride_on_the_agents_ack_or_go_alone() {
        let mut c = AckCoalescer::default();
        c.add(0, 10, 1);
        c.add_snapshot(0, "CAM-1.5.1".into());
        c.add_snapshot(2, "CAM-9.6.1".into());
        c.add_snapshot(2, "CAM-9.7.2".into());
        assert!(!c.is_empty());
        let mut out = Vec::new();
        c.flush(|a, ack| out.push((a, ack)));
        assert!(c.is_empty());
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].1,
            Ack {
                stream: 10,
                seqs: vec![(1, 1)],
                snapshots: vec!["CAM-1.5.1".into()]
            }
        );
        assert_eq!(out[1].0, 2);
        assert_eq!(out[1].1.stream, 0);
        assert!(out[1].1.seqs.is_empty());
        assert_eq!(out[1].1.snapshots, ["CAM-9.6.1", "CAM-9.7.2"]);
    }
}
