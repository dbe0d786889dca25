//! Which agent messages are already stored: per (agent, stream), a contiguous watermark plus the
//! ranges stored above it.
//!
//! Agents number a stream's batches from 1 without gaps and mostly deliver them in order, so the
//! state is tiny: `watermark` = every seq in `1..=watermark` is stored, and a few ranges above it
//! while a gap is open. Bounds, both chosen so that the failure mode is storing a batch twice
//! (harmless: the same points at the same timestamps collapse in queries), never answering
//! `Duplicate` for something not stored: at most [`MAX_RANGES`] ranges per stream (the oldest is
//! forgotten), and at most [`MAX_STREAMS`] streams per agent (the least recently written is
//! forgotten; a new stream means the agent's queue was recreated).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::bits::{ByteReader, Truncated, put_varint};

/// Ranges kept above the watermark of one stream.
pub const MAX_RANGES: usize = 4096;
/// Streams kept per agent.
pub const MAX_STREAMS: usize = 16;

/// The stored sequence numbers of one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Every seq in `1..=watermark` is stored.
    pub watermark: u64,
    /// Stored ranges above the watermark, start -> inclusive end, disjoint and not adjacent.
    pub above: BTreeMap<u64, u64>,
    /// Logical time of the last write, for eviction.
    pub last_used: u64,
}

impl StreamState {
    /// Whether `seq` is stored.
    pub fn contains(&self, seq: u64) -> bool {
        // Agents count from 1; a stray 0 is tracked like any seq above the watermark.
        if seq != 0 && seq <= self.watermark {
            return true;
        }
        self.above
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| seq <= end)
    }

    /// Records `seq` as stored.
    pub fn insert(&mut self, seq: u64) {
        if self.contains(seq) {
            return;
        }
        let mut start = seq;
        let mut end = seq;
        // Merge with a range ending just below and one starting just above.
        if let Some((&s, &e)) = self.above.range(..seq).next_back()
            && e.checked_add(1) == Some(seq)
        {
            start = s;
            self.above.remove(&s);
        }
        if let Some(next) = seq.checked_add(1)
            && let Some(e) = self.above.remove(&next)
        {
            end = e;
        }
        if self.watermark.checked_add(1) == Some(start) {
            self.watermark = end;
        } else {
            self.above.insert(start, end);
            if self.above.len() > MAX_RANGES {
                self.above.pop_first();
            }
        }
    }

    /// The state alone (watermark and ranges), as the PostgreSQL store keeps it per row.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8);
        self.encode(&mut out);
        out
    }

    /// The state saved by [`StreamState::to_bytes`]; empty bytes are the empty state.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn from_bytes(bytes: &[u8]) -> Result<StreamState, Truncated> {
        if bytes.is_empty() {
            return Ok(StreamState::default());
        }
        StreamState::decode(&mut ByteReader::new(bytes))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.watermark);
        put_varint(out, self.above.len() as u64);
        for (&s, &e) in &self.above {
            put_varint(out, s);
            put_varint(out, e - s);
        }
    }

    fn decode(r: &mut ByteReader<'_>) -> Result<StreamState, Truncated> {
        let watermark = r.varint()?;
        let n = r.varint()?;
        let mut above = BTreeMap::new();
        for _ in 0..n.min(MAX_RANGES as u64 + 1) {
            let s = r.varint()?;
            let len = r.varint()?;
            above.insert(s, s.saturating_add(len));
        }
        Ok(StreamState {
            watermark,
            above,
            last_used: 0,
        })
    }
}

/// The dedup index of all agents.
#[derive(Debug, Default)]
pub struct OriginIndex {
    agents: HashMap<Arc<str>, HashMap<u64, StreamState>>,
    clock: u64,
    /// Agents changed since the last [`OriginIndex::take_dirty`].
    dirty: HashSet<Arc<str>>,
}

impl OriginIndex {
    /// Whether (agent, stream, seq) is stored.
    pub fn contains(&self, agent: &str, stream: u64, seq: u64) -> bool {
        self.agents
            .get(agent)
            .and_then(|s| s.get(&stream))
            .is_some_and(|s| s.contains(seq))
    }

    /// Records (agent, stream, seq) as stored.
    pub fn insert(&mut self, agent: &Arc<str>, stream: u64, seq: u64) {
        self.clock += 1;
        let streams = self.agents.entry(agent.clone()).or_default();
        if !streams.contains_key(&stream)
            && streams.len() >= MAX_STREAMS
            && let Some(old) = streams
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(&k, _)| k)
        {
            streams.remove(&old);
        }
        let st = streams.entry(stream).or_default();
        st.insert(seq);
        st.last_used = self.clock;
        self.dirty.insert(agent.clone());
    }

    /// The agents changed since the last call, with their serialized state.
    pub fn take_dirty(&mut self) -> Vec<(Arc<str>, Vec<u8>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|a| {
                let bytes = self.encode_agent(&a);
                (a, bytes)
            })
            .collect()
    }

    fn encode_agent(&self, agent: &str) -> Vec<u8> {
        let mut out = vec![1u8];
        let streams = self.agents.get(agent);
        let mut list: Vec<(&u64, &StreamState)> =
            streams.map(|s| s.iter().collect()).unwrap_or_default();
        // Oldest first, so a reload restores the eviction order.
        list.sort_by_key(|(_, s)| s.last_used);
        put_varint(&mut out, list.len() as u64);
        for (&stream, st) in list {
            put_varint(&mut out, stream);
            st.encode(&mut out);
        }
        out
    }

    /// Restores one agent's state saved by [`OriginIndex::take_dirty`].
    pub fn load_agent(&mut self, agent: Arc<str>, bytes: &[u8]) -> Result<(), Truncated> {
        let mut r = ByteReader::new(bytes);
        if r.u8()? != 1 {
            return Err(Truncated);
        }
        let n = r.varint()?;
        let mut streams = HashMap::new();
        for _ in 0..n.min(MAX_STREAMS as u64 + 1) {
            let stream = r.varint()?;
            let mut st = StreamState::decode(&mut r)?;
            self.clock += 1;
            st.last_used = self.clock;
            streams.insert(stream, st);
        }
        self.agents.insert(agent, streams);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn watermark_and_gaps() {
        let mut s = StreamState::default();
        for seq in [1, 2, 3, 5, 6, 9] {
            s.insert(seq);
        }
        assert_eq!(s.watermark, 3);
        assert_eq!(s.above.len(), 2);
        assert!(s.contains(6) && !s.contains(4) && !s.contains(7) && s.contains(9));
        s.insert(4);
        assert_eq!(s.watermark, 6);
        s.insert(8);
        s.insert(7);
        assert_eq!(s.watermark, 9);
        assert!(s.above.is_empty());
    }

    #[test]
    fn streams_per_agent_are_bounded_and_persist() {
        let mut idx = OriginIndex::default();
        let a: Arc<str> = "agent-1".into();
        for stream in 0..(MAX_STREAMS as u64 + 3) {
            idx.insert(&a, stream, 1);
        }
        assert!(!idx.contains("agent-1", 0, 1));
        assert!(idx.contains("agent-1", MAX_STREAMS as u64 + 2, 1));
        let dirty = idx.take_dirty();
        assert_eq!(dirty.len(), 1);
        let mut back = OriginIndex::default();
        back.load_agent(a.clone(), &dirty[0].1).unwrap();
        for stream in 3..(MAX_STREAMS as u64 + 3) {
            assert!(back.contains("agent-1", stream, 1));
        }
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(seqs in proptest::collection::vec(0u64..200, 0..300)) {
            let mut s = StreamState::default();
            let mut reference = std::collections::BTreeSet::new();
            for q in seqs {
                prop_assert_eq!(s.contains(q), reference.contains(&q));
                s.insert(q);
                reference.insert(q);
            }
            for q in 0..210 {
                prop_assert_eq!(s.contains(q), reference.contains(&q));
            }
        }
    }
}
