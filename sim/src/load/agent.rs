//! One simulated edge agent: an MQTT connection of its own, batches of its devices' readings,
//! and the agent's half of the acknowledgement protocol.
//!
//! Like the real agent (`edge_agent::uplink`), it keeps a window of unacknowledged batches,
//! forgets a batch only when the hub's `v1/agents/{id}/ack` covers it, sends again what stays
//! unacknowledged past the ack timeout, and after a reconnect sends the whole window again.
//! Unlike it, the batches live in memory (the load generator measures the hub, not a disk).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use protocols::batch::{Ack, AgentBatch, DeviceReadings, Sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::mqtt::{self, Incoming};
use super::plan::{AgentPlan, Signal};
use super::stats::{Counters, Histogram, SendTimes};

/// What counts as "delivered" for the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// The hub's end-to-end ack on `v1/agents/{id}/ack` (stored durably).
    Hub,
    /// The broker's PUBACK (plain relay through any broker).
    PubAck,
}

/// Where a load run stands; agents watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Send at the configured rate.
    Run,
    /// Send nothing new; finish when every batch is acknowledged.
    Drain,
    /// Stop now.
    Stop,
}

/// How every agent of a run behaves.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// `HOST:PORT` of the broker.
    pub target: String,
    /// The hubs of a cluster (`HOST:PORT` each): agent `i` connects to `spread[i % len]`
    /// instead of `target` (empty: every agent to `target`).
    pub spread: Vec<String>,
    /// What acknowledges a batch.
    pub ack: AckMode,
    /// Devices in each batch (taken round-robin from the agent's devices).
    pub devices_per_batch: usize,
    /// Polls of each device in each batch.
    pub samples_per_device: usize,
    /// Unacknowledged batches in flight at most.
    pub window: usize,
    /// Send again what is unacknowledged after this long.
    pub ack_timeout: Duration,
    /// One batch per this interval per agent; `None` sends as fast as the window allows.
    pub batch_interval: Option<Duration>,
    /// The queue incarnation every agent uses (sequence numbers restart per run).
    pub stream: u64,
}

/// What all agents share.
pub struct Shared {
    /// Counters.
    pub counters: Counters,
    /// First-send times, for latency at the subscriber.
    pub send_times: SendTimes,
    /// From first send to acknowledgement.
    pub ack_latency: Histogram,
    /// Latency at the probe since the last progress report (reset by the reporter).
    pub recent: Histogram,
    /// Batches first sent from this instant on count in the steady-state histograms.
    pub steady_from: std::time::Instant,
    /// [`Shared::ack_latency`] after the warm-up.
    pub ack_steady: Histogram,
    /// Probe latency after the warm-up.
    pub probe_steady: Histogram,
    /// With [`AckMode::Hub`]: from the last send of a batch to the broker's PUBACK, after the
    /// warm-up.
    pub puback_steady: Histogram,
}

impl Shared {
    /// Records a probe latency `d` observed at `now`.
    pub fn probe_observed(&self, d: Duration, now: std::time::Instant) {
        self.recent.record(d);
        if now
            .checked_sub(d)
            .is_some_and(|sent| sent >= self.steady_from)
        {
            self.probe_steady.record(d);
        }
    }
}

struct Pending {
    seq: u64,
    payload: Bytes,
    readings: u32,
    first_sent: Instant,
    last_sent: Instant,
    /// The PUBACK of its last send came (hub ack mode measures it on the side).
    pubacked: bool,
}

fn pid_of(seq: u64) -> u16 {
    (seq % 65_535) as u16 + 1
}

/// A device of the agent with its value source.
struct Device {
    id: String,
    kind: super::plan::Kind,
    signal: Signal,
    last_ts: i64,
}

/// The agent's generator state across connections.
struct Agent {
    idx: usize,
    plan: AgentPlan,
    settings: Arc<AgentSettings>,
    shared: Arc<Shared>,
    batch_topic: String,
    ack_topic: String,
    devices: Vec<Device>,
    cursor: usize,
    seq: u64,
    window: VecDeque<Pending>,
    /// Reused between batches, so building one allocates only its encoding.
    batch: AgentBatch,
    next_due: Instant,
    stalled: bool,
}

/// Runs one agent until the phase is `Stop`, or `Drain` with nothing left unacknowledged.
pub async fn run(
    idx: usize,
    plan: AgentPlan,
    settings: Arc<AgentSettings>,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) {
    let devices = plan
        .devices
        .iter()
        .map(|d| Device {
            id: d.id.to_string(),
            kind: d.kind,
            signal: Signal::new(d.seed),
            last_ts: 0,
        })
        .collect();
    let mut agent = Agent {
        idx,
        batch_topic: format!("v1/agents/{}/batch", plan.id),
        ack_topic: format!("v1/agents/{}/ack", plan.id),
        batch: AgentBatch {
            agent: plan.id.clone(),
            stream: settings.stream,
            seq: 0,
            devices: Vec::new(),
        },
        plan,
        settings,
        shared,
        devices,
        cursor: 0,
        seq: 0,
        window: VecDeque::new(),
        next_due: Instant::now(),
        stalled: false,
    };
    // Spread the agents' first batches over one interval, so paced agents do not send in step.
    if let Some(iv) = agent.settings.batch_interval {
        let n = agent.shared.send_times.agents().max(1) as u32;
        agent.next_due += iv * (idx as u32 % n) / n;
    }
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        if *phase.borrow() == Phase::Stop {
            return;
        }
        let filters: Vec<(&str, u8)> = match agent.settings.ack {
            AckMode::Hub => vec![(agent.ack_topic.as_str(), 1)],
            AckMode::PubAck => Vec::new(),
        };
        let target = match agent.settings.spread.as_slice() {
            [] => agent.settings.target.as_str(),
            hubs => hubs[agent.idx % hubs.len()].as_str(),
        };
        let opened = mqtt::open(
            target,
            &agent.plan.id,
            Some(&agent.plan.id),
            Some(&agent.plan.secret),
            &filters,
            Duration::from_secs(10),
        )
        .await;
        match opened {
            Ok(session) => {
                if !first {
                    agent.shared.counters.reconnects.fetch_add(1, Relaxed);
                }
                first = false;
                backoff = Duration::from_millis(100);
                match agent.session(session, &mut phase).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(agent = %agent.plan.id, "connection lost: {e}"),
                }
            }
            Err(e) => tracing::warn!(agent = %agent.plan.id, "cannot connect: {e}"),
        }
        // Reconnect with backoff and jitter, unless told to stop meanwhile.
        let jitter = Duration::from_millis((idx as u64 * 37) % 100);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = async { let _ = phase.wait_for(|p| *p == Phase::Stop).await; } => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl Agent {
    /// One connection: until it fails (Err) or the run is over (Ok).
    async fn session(
        &mut self,
        session: mqtt::Session,
        phase: &mut watch::Receiver<Phase>,
    ) -> Result<(), String> {
        let mqtt::Session {
            stream,
            mut rbuf,
            early,
        } = session;
        let (mut rd, mut wr) = stream.into_split();
        let mut wbuf = BytesMut::with_capacity(64 * 1024);
        for p in early {
            self.on_publish(p, &mut wbuf);
        }
        // A new session: everything unacknowledged goes again (the hub dedups).
        let now = Instant::now();
        for p in &mut self.window {
            mqtt::publish_flags(
                &mut wbuf,
                &self.batch_topic,
                1,
                false,
                pid_of(p.seq),
                &p.payload,
            );
            p.last_sent = now;
            self.shared.counters.resent.fetch_add(1, Relaxed);
        }
        let mut last_write = Instant::now();
        loop {
            let current = *phase.borrow_and_update();
            if current == Phase::Stop || (current == Phase::Drain && self.window.is_empty()) {
                mqtt::disconnect(&mut wbuf);
                let _ = wr.write_all(&wbuf).await;
                return Ok(());
            }
            let now = Instant::now();
            if current == Phase::Run {
                self.send_due(now, &mut wbuf);
            }
            self.resend_expired(now, &mut wbuf);
            if wbuf.is_empty() && now.duration_since(last_write) > Duration::from_secs(30) {
                mqtt::pingreq(&mut wbuf);
            }
            if !wbuf.is_empty() {
                wr.write_all(&wbuf).await.map_err(|e| e.to_string())?;
                wbuf.clear();
                last_write = Instant::now();
            }
            let wake = self.next_wake(current, last_write);
            tokio::select! {
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) => return Err("closed by the broker".into()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                },
                _ = tokio::time::sleep_until(wake) => {}
                _ = phase.changed() => {}
            }
            while let Some(p) = mqtt::decode(&mut rbuf).map_err(|e| e.to_string())? {
                match p {
                    Incoming::Publish(p) => self.on_publish(p, &mut wbuf),
                    Incoming::PubAck(pid) if self.settings.ack == AckMode::Hub => {
                        let now = Instant::now();
                        if let Some(p) = self
                            .window
                            .iter_mut()
                            .find(|p| !p.pubacked && pid_of(p.seq) == pid)
                        {
                            p.pubacked = true;
                            if p.first_sent.into_std() >= self.shared.steady_from {
                                self.shared
                                    .puback_steady
                                    .record(now.duration_since(p.last_sent));
                            }
                        }
                    }
                    Incoming::PubAck(pid) if self.settings.ack == AckMode::PubAck => {
                        let now = Instant::now();
                        if let Some(i) = self.window.iter().position(|p| pid_of(p.seq) == pid)
                            && let Some(p) = self.window.remove(i)
                        {
                            self.acked(&p, now);
                        }
                    }
                    _ => {}
                }
            }
            if rbuf.capacity() - rbuf.len() < 4096 {
                rbuf.reserve(64 * 1024);
            }
        }
    }

    fn next_wake(&self, phase: Phase, last_write: Instant) -> Instant {
        let mut wake = last_write + Duration::from_secs(30);
        if let Some(oldest) = self.window.iter().map(|p| p.last_sent).min() {
            wake = wake.min(oldest + self.settings.ack_timeout);
        }
        if phase == Phase::Run
            && self.window.len() < self.settings.window
            && self.settings.batch_interval.is_some()
        {
            wake = wake.min(self.next_due);
        }
        wake
    }

    /// Sends every batch that is due and fits the window.
    fn send_due(&mut self, now: Instant, wbuf: &mut BytesMut) {
        loop {
            let paced = self.settings.batch_interval;
            if paced.is_some() && now < self.next_due {
                self.stalled = false;
                return;
            }
            if self.window.len() >= self.settings.window {
                if !self.stalled {
                    self.stalled = true;
                    self.shared.counters.window_stalls.fetch_add(1, Relaxed);
                }
                return;
            }
            self.stalled = false;
            self.send_new(now, wbuf);
            match paced {
                Some(iv) => self.next_due += iv,
                None => {
                    // Unpaced: fill the window, but write in pieces of reasonable size.
                    if wbuf.len() > 256 * 1024 {
                        return;
                    }
                }
            }
        }
    }

    fn send_new(&mut self, now: Instant, wbuf: &mut BytesMut) {
        self.seq += 1;
        let (payload, readings, groups) = self.build_batch();
        mqtt::publish(wbuf, &self.batch_topic, 1, pid_of(self.seq), &payload);
        let c = &self.shared.counters;
        c.batches_sent.fetch_add(1, Relaxed);
        c.readings_sent.fetch_add(u64::from(readings), Relaxed);
        c.groups_sent.fetch_add(u64::from(groups), Relaxed);
        self.shared
            .send_times
            .record(self.idx, self.seq, now.into_std());
        self.window.push_back(Pending {
            seq: self.seq,
            payload,
            readings,
            first_sent: now,
            last_sent: now,
            pubacked: false,
        });
    }

    /// The next batch: the next devices in turn, each with its polls.
    fn build_batch(&mut self) -> (Bytes, u32, u32) {
        let per_batch = self.settings.devices_per_batch.clamp(1, self.devices.len());
        let samples = self.settings.samples_per_device.max(1);
        let now = protocols::time::now_ms();
        self.batch.seq = self.seq;
        self.batch
            .devices
            .resize_with(per_batch, || DeviceReadings {
                device: String::new(),
                samples: Vec::new(),
            });
        let mut readings = 0u32;
        let n = self.devices.len();
        for slot in self.batch.devices.iter_mut() {
            let d = &mut self.devices[self.cursor];
            self.cursor = (self.cursor + 1) % n;
            slot.device.clear();
            slot.device.push_str(&d.id);
            slot.samples.resize_with(samples, || Sample {
                ts_ms: 0,
                readings: Vec::new(),
            });
            for (k, s) in slot.samples.iter_mut().enumerate() {
                // Polls of one batch are 1 ms apart at the latest; a device's times only grow.
                let ts = (now - (samples - 1 - k) as i64).max(d.last_ts + 1);
                d.last_ts = ts;
                s.ts_ms = ts;
                s.readings.clear();
                d.signal.poll(d.kind, ts, &mut s.readings);
                readings += s.readings.len() as u32;
            }
        }
        let bytes = Bytes::from(protocols::batch::encode(&self.batch));
        (bytes, readings, (per_batch * samples) as u32)
    }

    fn resend_expired(&mut self, now: Instant, wbuf: &mut BytesMut) {
        let timeout = self.settings.ack_timeout;
        for p in &mut self.window {
            if now.duration_since(p.last_sent) >= timeout {
                mqtt::publish_flags(wbuf, &self.batch_topic, 1, true, pid_of(p.seq), &p.payload);
                p.last_sent = now;
                self.shared.counters.resent.fetch_add(1, Relaxed);
            }
        }
    }

    fn on_publish(&mut self, p: mqtt::Publish, wbuf: &mut BytesMut) {
        if p.qos > 0 {
            mqtt::puback(wbuf, p.pid);
        }
        if self.settings.ack != AckMode::Hub || p.topic != self.ack_topic.as_bytes() {
            return;
        }
        let ack: Ack = match serde_json::from_slice(&p.payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(agent = %self.plan.id, "unreadable ack: {e}");
                return;
            }
        };
        if ack.stream != self.settings.stream {
            return;
        }
        let now = Instant::now();
        let mut i = 0;
        while i < self.window.len() {
            if ack.covers(self.window[i].seq) {
                if let Some(p) = self.window.remove(i) {
                    self.acked(&p, now);
                }
            } else {
                i += 1;
            }
        }
    }

    fn acked(&self, p: &Pending, now: Instant) {
        let c = &self.shared.counters;
        c.batches_acked.fetch_add(1, Relaxed);
        c.readings_acked.fetch_add(u64::from(p.readings), Relaxed);
        let d = now.duration_since(p.first_sent);
        self.shared.ack_latency.record(d);
        if p.first_sent.into_std() >= self.shared.steady_from {
            self.shared.ack_steady.record(d);
        }
    }
}
