//! The simulated Sparkplug B edge node against a real mosquitto broker, watched by a host:
//! every message goes through `protocols::sparkplug::EdgeNodes`, which asks for a rebirth on
//! any gap in `seq` or any alias it does not know.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use protocols::sparkplug::payload::metric;
use protocols::sparkplug::{
    BD_SEQ_METRIC, DataType, EdgeNodes, IgnoreReason, Metric, MetricValue, Outcome, Payload,
    REBIRTH_METRIC, decode, encode, rebirth_request, write_metric,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sim::sparkplug_node::{
    self, FIRST_DEVICE_ALIAS, NodeSpec, NodeStats, PUMP_FLOW, PUMP_PRESSURE, PUMP_RUNNING,
    PUMP_SPEED, VERSION_METRIC, WELL_LEVEL,
};
use tokio::sync::{mpsc, watch};

/// The longest wait for any one expected message.
const WAIT: Duration = Duration::from_secs(15);
const GROUP: &str = "District";
const NODE: &str = "PS-EN01";
const PUMPS: [&str; 2] = ["PS-P01", "PS-P02"];
const WELL: &str = "PS-WW01";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker on a port of its own, killed on drop.
struct Mosquitto {
    child: Child,
    conf: PathBuf,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\n"
            ),
        )
        .unwrap();
        let child = Self::spawn(&conf, port);
        Mosquitto { child, conf, port }
    }

    fn spawn(conf: &Path, port: u16) -> Child {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed");
        // Listening is the event to wait for; connecting is how to see it.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.conf, self.port);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Msg {
    Subscribed,
    Publish(String, Vec<u8>),
}

/// One message as the host saw it.
#[derive(Debug)]
struct Seen {
    topic: String,
    payload: Payload,
    outcome: Outcome,
}

impl Seen {
    fn names(&self) -> Vec<&str> {
        self.outcome.readings().iter().map(|r| &*r.name).collect()
    }

    fn bd_seq(&self) -> Option<u64> {
        let m = self
            .payload
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(BD_SEQ_METRIC))?;
        match m.value {
            Some(metric::Value::LongValue(v)) => Some(v),
            _ => None,
        }
    }

    fn is_node_birth(&self) -> bool {
        matches!(self.outcome, Outcome::Online { device: None, .. })
    }

    fn is_node_death(&self) -> bool {
        matches!(self.outcome, Outcome::Offline { device: None, .. })
    }

    fn device_birth(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Online {
                device: Some(d), ..
            } => Some(d),
            _ => None,
        }
    }

    fn device_data(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Readings {
                device: Some(d), ..
            } => Some(d),
            _ => None,
        }
    }

    fn value(&self, name: &str) -> Option<&MetricValue> {
        self.outcome
            .readings()
            .iter()
            .find(|r| &*r.name == name)
            .map(|r| &r.value)
    }
}

/// A host application: subscribed to `spBv1.0/#`, every message into `EdgeNodes`.
struct Host {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    nodes: EdgeNodes,
}

fn now() -> u64 {
    protocols::time::now_ms() as u64
}

impl Host {
    async fn connect(port: u16) -> Host {
        let opts = MqttOptions::new("test-host", "127.0.0.1", port);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let sub = client.clone();
        tokio::spawn(async move {
            loop {
                let msg = match events.poll().await {
                    // Subscribed again after each connection: sessions are clean.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sub.try_subscribe("spBv1.0/#", QoS::AtLeastOnce).unwrap();
                        continue;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => Msg::Subscribed,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Msg::Publish(p.topic, p.payload.to_vec())
                    }
                    Ok(_) => continue,
                    Err(_) => {
                        // The broker is away (restarted on purpose): retry its port.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
        });
        let mut host = Host {
            client,
            rx,
            nodes: EdgeNodes::default(),
        };
        host.subscribed().await;
        host
    }

    async fn recv(&mut self) -> Msg {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for the broker")
            .expect("the host's connection task ended")
    }

    async fn subscribed(&mut self) {
        while !matches!(self.recv().await, Msg::Subscribed) {}
    }

    /// The next message of an edge node (or a host state), through the session model; the
    /// host's own commands are skipped.
    async fn next(&mut self) -> Seen {
        loop {
            let Msg::Publish(topic, bytes) = self.recv().await else {
                continue;
            };
            let outcome = self
                .nodes
                .handle_message(&topic, &bytes, now())
                .unwrap_or_else(|e| panic!("{topic}: {e}"));
            if matches!(
                outcome,
                Outcome::Ignored {
                    reason: IgnoreReason::Command
                }
            ) {
                continue;
            }
            // A STATE payload is JSON, not protobuf.
            let payload = decode(&bytes).unwrap_or_default();
            return Seen {
                topic,
                payload,
                outcome,
            };
        }
    }

    /// The next message, which must not break the session.
    async fn next_in_order(&mut self) -> Seen {
        let seen = self.next().await;
        assert!(
            !matches!(
                seen.outcome,
                Outcome::RequestRebirth { .. } | Outcome::Ignored { .. }
            ),
            "{} broke the session: {:?}",
            seen.topic,
            seen.outcome
        );
        seen
    }

    /// Skips messages (all in order) until one satisfies `what`.
    async fn until(&mut self, what: impl Fn(&Seen) -> bool) -> Seen {
        loop {
            let seen = self.next_in_order().await;
            if what(&seen) {
                return seen;
            }
        }
    }

    /// The three DBIRTHs that follow an NBIRTH, in order, with their metrics.
    async fn device_births(&mut self) {
        for pump in PUMPS {
            let seen = self.next_in_order().await;
            assert_eq!(seen.device_birth(), Some(pump), "{seen:?}");
            assert_eq!(
                seen.names(),
                [PUMP_RUNNING, PUMP_SPEED, PUMP_FLOW, PUMP_PRESSURE]
            );
        }
        let seen = self.next_in_order().await;
        assert_eq!(seen.device_birth(), Some(WELL), "{seen:?}");
        assert_eq!(seen.names(), [WELL_LEVEL]);
    }

    async fn command(&self, kind: &str, device: Option<&str>, payload: Vec<u8>) {
        let topic = match device {
            Some(d) => format!("spBv1.0/{GROUP}/{kind}/{NODE}/{d}"),
            None => format!("spBv1.0/{GROUP}/{kind}/{NODE}"),
        };
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
}

fn spec(port: u16) -> NodeSpec {
    NodeSpec {
        broker: format!("127.0.0.1:{port}"),
        node: NODE.into(),
        secret: "pumping-secret".into(),
        group: GROUP.into(),
        pumps: PUMPS.iter().map(|p| p.to_string()).collect(),
        well: Some(WELL.into()),
        interval: Duration::from_millis(200),
        seed: 1,
    }
}

type NodeTask = (
    tokio::task::JoinHandle<anyhow::Result<NodeStats>>,
    watch::Receiver<NodeStats>,
    watch::Sender<bool>,
);

fn start_node(port: u16) -> NodeTask {
    let (stats_tx, stats) = watch::channel(NodeStats::default());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(sparkplug_node::run(spec(port), stats_tx, stop_rx));
    (task, stats, stop)
}

/// NBIRTH, the DBIRTHs, then a DDATA from every device with its analog metrics.
async fn birth_and_data(host: &mut Host, bd_seq: u64) {
    let birth = host.next_in_order().await;
    assert!(birth.is_node_birth(), "{birth:?}");
    assert_eq!(birth.payload.seq, Some(0));
    assert_eq!(birth.bd_seq(), Some(bd_seq));
    assert_eq!(birth.names(), [REBIRTH_METRIC, VERSION_METRIC]);
    host.device_births().await;
    let mut waiting: Vec<&str> = PUMPS.iter().copied().chain([WELL]).collect();
    while !waiting.is_empty() {
        let seen = host.until(|s| s.device_data().is_some()).await;
        let device = seen.device_data().unwrap();
        if device == WELL {
            assert_eq!(seen.names(), [WELL_LEVEL]);
        } else {
            for name in [PUMP_SPEED, PUMP_FLOW, PUMP_PRESSURE] {
                assert!(seen.names().contains(&name), "{device}: {:?}", seen.names());
            }
        }
        // By alias only, as data messages are meant to be.
        assert!(
            seen.payload
                .metrics
                .iter()
                .all(|m| m.alias.is_some() && m.name.is_none() && m.datatype.is_none())
        );
        waiting.retain(|d| *d != device);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pumping_station_keeps_its_sparkplug_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path());
    let mut host = Host::connect(broker.port).await;

    // Births, then data, all in sequence.
    let (node, stats, _stop) = start_node(broker.port);
    birth_and_data(&mut host, 0).await;

    // A rebirth request: NBIRTH (same bdSeq, seq 0 again) and every DBIRTH.
    host.command("NCMD", None, rebirth_request(now())).await;
    let birth = host.until(Seen::is_node_birth).await;
    assert_eq!((birth.payload.seq, birth.bd_seq()), (Some(0), Some(0)));
    host.device_births().await;
    assert_eq!(stats.borrow().rebirths, 1);

    // A speed written by name (Float), reported at once.
    let write = write_metric(
        PUMP_SPEED,
        DataType::Float,
        &MetricValue::Float(35.0),
        now(),
    );
    host.command("DCMD", Some(PUMPS[0]), write.unwrap()).await;
    host.until(|s| {
        s.device_data() == Some(PUMPS[0]) && s.value(PUMP_SPEED) == Some(&MetricValue::Float(35.0))
    })
    .await;
    // By name as an Int32, clamped.
    let write = write_metric(PUMP_SPEED, DataType::Int32, &MetricValue::Int(120), now());
    host.command("DCMD", Some(PUMPS[0]), write.unwrap()).await;
    host.until(|s| {
        s.device_data() == Some(PUMPS[0]) && s.value(PUMP_SPEED) == Some(&MetricValue::Float(100.0))
    })
    .await;
    // By the alias of the second pump's speed, without a datatype; an unknown metric beside it
    // is ignored.
    let alias = sparkplug_node::pump_metrics(FIRST_DEVICE_ALIAS + 4)[1].alias;
    let by_alias = encode(&Payload {
        timestamp: Some(now()),
        metrics: vec![
            Metric {
                alias: Some(alias),
                value: Some(metric::Value::FloatValue(55.5)),
                ..Default::default()
            },
            Metric::new(DataType::Boolean, &MetricValue::Bool(true))
                .unwrap()
                .named("Pump/Self Destruct"),
        ],
        ..Default::default()
    });
    host.command("DCMD", Some(PUMPS[1]), by_alias).await;
    host.until(|s| {
        s.device_data() == Some(PUMPS[1]) && s.value(PUMP_SPEED) == Some(&MetricValue::Float(55.5))
    })
    .await;
    assert_eq!(stats.borrow().commands, 3);

    // The broker goes away and comes back: the node reconnects under the next bdSeq. The host
    // may miss the NBIRTH while it resubscribes; then it asks for a rebirth, as hosts do.
    broker.restart();
    host.subscribed().await;
    let birth = loop {
        let seen = host.next().await;
        match &seen.outcome {
            Outcome::RequestRebirth { .. } => {
                host.command("NCMD", None, rebirth_request(now())).await
            }
            Outcome::Online { device: None, .. } => break seen,
            _ => {}
        }
    };
    assert_eq!((birth.payload.seq, birth.bd_seq()), (Some(0), Some(1)));
    host.device_births().await;
    assert_eq!(stats.borrow().connections, 2);

    // Killed: the broker publishes the will, the NDEATH of the current session.
    node.abort();
    assert!(node.await.unwrap_err().is_cancelled());
    let death = host.until(|s| s.topic.contains("/NDEATH/")).await;
    assert!(death.is_node_death(), "{death:?}");
    assert_eq!(death.bd_seq(), Some(1));
    assert_eq!(death.payload.seq, None);

    // A new run, stopped gracefully: it publishes the NDEATH itself and disconnects, so the
    // will is not sent as well.
    let (node, _stats, stop) = start_node(broker.port);
    birth_and_data(&mut host, 0).await;
    stop.send(true).unwrap();
    let death = host.until(|s| s.topic.contains("/NDEATH/")).await;
    assert!(death.is_node_death(), "{death:?}");
    assert_eq!(death.bd_seq(), Some(0));
    let final_stats = node.await.unwrap().unwrap();
    assert_eq!(final_stats.connections, 1);
    assert_eq!((final_stats.rebirths, final_stats.commands), (0, 0));
    assert_eq!(final_stats.births, 4);
    assert!(final_stats.data >= 3, "{final_stats:?}");
    // Nothing but our marker after the NDEATH: no second death from a will.
    host.client
        .publish(
            "spBv1.0/STATE/test-host",
            QoS::AtLeastOnce,
            false,
            protocols::sparkplug::host_state(true, now()),
        )
        .await
        .unwrap();
    let after = host.next().await;
    assert!(
        matches!(
            after.outcome,
            Outcome::Ignored {
                reason: IgnoreReason::HostState
            }
        ),
        "{after:?}"
    );
}
