//! The measuring subscriber: an app that receives what the load caused and times it.
//!
//! Against the hub it subscribes to `v1/feeds/#` (QoS 0, as a live dashboard would) and times
//! each feed message from the first send of the batch that carried the reading (the feed names
//! the device, which belongs to one agent, and carries the batch's `seq`). Against a plain
//! broker (relay mode) it subscribes to `v1/agents/+/batch` (QoS 1) and times each relayed
//! batch, decoding it fully to count its readings.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::agent::{Phase, Shared};
use super::mqtt::{self, Incoming, SessionError};
use super::stats::Histogram;

/// What the probe listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// The hub's feeds.
    Feeds,
    /// The agents' batches themselves, relayed by a broker.
    Relay,
}

/// A connected, subscribed probe.
pub struct Probe {
    session: mqtt::Session,
    kind: ProbeKind,
    /// Device id (feeds) or agent id (relay) to agent index.
    index: HashMap<Arc<str>, usize>,
    shared: Arc<Shared>,
    latency: Arc<Histogram>,
}

impl Probe {
    /// Connects as `client_id` with the given credentials and subscribes.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        target: &str,
        client_id: &str,
        credentials: Option<(&str, &str)>,
        kind: ProbeKind,
        index: HashMap<Arc<str>, usize>,
        shared: Arc<Shared>,
        latency: Arc<Histogram>,
    ) -> Result<Probe, SessionError> {
        let filter = match kind {
            ProbeKind::Feeds => ("v1/feeds/#", 0),
            ProbeKind::Relay => ("v1/agents/+/batch", 1),
        };
        let session = mqtt::open(
            target,
            client_id,
            credentials.map(|c| c.0),
            credentials.map(|c| c.1),
            &[filter],
            Duration::from_secs(10),
        )
        .await?;
        Ok(Probe {
            session,
            kind,
            index,
            shared,
            latency,
        })
    }

    /// Receives until the phase is `Stop` or the connection ends.
    pub async fn run(self, mut phase: watch::Receiver<Phase>) -> Result<(), String> {
        let Probe {
            session,
            kind,
            index,
            shared,
            latency,
        } = self;
        let mqtt::Session {
            mut stream,
            mut rbuf,
            early,
        } = session;
        let mut wbuf = BytesMut::with_capacity(4096);
        let on = |p: mqtt::Publish, wbuf: &mut BytesMut| {
            if p.qos > 0 {
                mqtt::puback(wbuf, p.pid);
            }
            let now = Instant::now();
            match kind {
                ProbeKind::Feeds => on_feed(&p, now, &index, &shared, &latency),
                ProbeKind::Relay => on_relayed(&p, now, &index, &shared, &latency),
            }
        };
        for p in early {
            on(p, &mut wbuf);
        }
        loop {
            if !wbuf.is_empty() {
                stream
                    .write_all(&wbuf)
                    .await
                    .map_err(|e| format!("probe: {e}"))?;
                wbuf.clear();
            }
            if rbuf.capacity() - rbuf.len() < 16 * 1024 {
                rbuf.reserve(256 * 1024);
            }
            tokio::select! {
                r = stream.read_buf(&mut rbuf) => match r {
                    Ok(0) => return Err("probe: closed by the broker".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("probe: {e}")),
                },
                _ = async { let _ = phase.wait_for(|p| *p == Phase::Stop).await; } => {
                    let mut bye = BytesMut::new();
                    mqtt::disconnect(&mut bye);
                    let _ = stream.write_all(&bye).await;
                    return Ok(());
                }
            }
            while let Some(p) = mqtt::decode(&mut rbuf).map_err(|e| format!("probe: {e}"))? {
                if let Incoming::Publish(p) = p {
                    on(p, &mut wbuf);
                }
            }
        }
    }
}

/// The number after `"seq":` in a feed document.
fn feed_seq(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"seq\":";
    // Jump from one `"` to the next rather than comparing at every offset: this runs for
    // every feed message, hundreds of thousands a second.
    let mut from = 0;
    let at = loop {
        let q = from + payload[from..].iter().position(|&b| b == b'"')?;
        if payload[q..].starts_with(KEY) {
            break q + KEY.len();
        }
        from = q + 1;
    };
    payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(None, |acc: Option<u64>, b| {
            Some(acc.unwrap_or(0) * 10 + u64::from(b - b'0'))
        })
}

fn on_feed(
    p: &mqtt::Publish,
    now: Instant,
    index: &HashMap<Arc<str>, usize>,
    shared: &Shared,
    latency: &Histogram,
) {
    shared.counters.probe_messages.fetch_add(1, Relaxed);
    // v1/feeds/{kind}/{device}
    let Some(slash) = p.topic.iter().rposition(|&b| b == b'/') else {
        return;
    };
    let Ok(device) = std::str::from_utf8(&p.topic[slash + 1..]) else {
        return;
    };
    let (Some(&agent), Some(seq)) = (index.get(device), feed_seq(&p.payload)) else {
        return;
    };
    if let Some(d) = shared.send_times.since(agent, seq, now) {
        latency.record(d);
        shared.probe_observed(d, now);
    }
}

fn on_relayed(
    p: &mqtt::Publish,
    now: Instant,
    index: &HashMap<Arc<str>, usize>,
    shared: &Shared,
    latency: &Histogram,
) {
    shared.counters.probe_messages.fetch_add(1, Relaxed);
    let Ok(batch) = protocols::batch::decode(&p.payload) else {
        tracing::warn!("relayed batch does not decode");
        return;
    };
    shared
        .counters
        .probe_readings
        .fetch_add(batch.reading_count() as u64, Relaxed);
    if let Some(&agent) = index.get(batch.agent.as_str())
        && let Some(d) = shared.send_times.since(agent, batch.seq, now)
    {
        latency.record(d);
        shared.probe_observed(d, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_found_in_a_feed() {
        let feed = br#"{"device":"SL-000001","kind":"streetlight","ts":"2026-11-22T08:00:00.000Z","seq":4711,"values":{}}"#;
        assert_eq!(feed_seq(feed), Some(4711));
        assert_eq!(feed_seq(br#"{"device":"x","seq":}"#), None);
        assert_eq!(feed_seq(br#"{"device":"x"}"#), None);
    }
}
