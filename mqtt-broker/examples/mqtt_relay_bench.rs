//! Relay throughput: publishers -> broker -> one subscriber, for the embedded broker and for
//! mosquitto in the same run, with the same rumqttc clients and the same load.
//!
//! ```text
//! cargo run --release -p hub --example mqtt_relay_bench -- [--messages N] [--publishers P]
//!     [--payload BYTES] [--qos 0|1] [--broker embedded|mosquitto|both|external --target ADDR]
//! ```
//! Prints one JSON line per (broker, QoS): messages/s from the first publish to the last
//! message received, and how many arrived. Devices publish `v1/devices/D-i/telemetry`; an
//! app subscribed to `v1/devices/+/telemetry` receives. The embedded broker authenticates and
//! authorizes every message and hands it to a pipeline stand-in that answers `done` at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use mqtt_broker::ingress::{AuthError, Authenticator, Disposition, IngressEvent};
use mqtt_broker::{Broker, BrokerConfig};
use protocols::access::{Principal, grant_filter};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

#[derive(Debug, Parser)]
struct Args {
    /// Messages per publisher.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Publishing clients.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Payload size, bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// QoS levels to run (0, 1 or both).
    #[arg(long, value_delimiter = ',', default_values_t = [0u8, 1])]
    qos: Vec<u8>,
    /// Which broker(s): embedded, mosquitto, both, or external (with --target).
    #[arg(long, default_value = "both")]
    broker: String,
    /// An already running broker for `--broker external` (any credentials accepted there).
    #[arg(long)]
    target: Option<std::net::SocketAddr>,
    /// Instead of client relay: the hub's own feed path (`Publisher::publish` of the embedded
    /// broker) to this many subscribing apps, `--messages` messages in all.
    #[arg(long)]
    hub_feed: Option<usize>,
}

/// Accepts `D-i`/`D-i` devices and the `bench` app, like the hub's registry would.
struct BenchAuth(HashMap<String, Arc<Principal>>);

impl Authenticator for BenchAuth {
    fn authenticate(
        &self,
        _client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> impl std::future::Future<Output = Result<Arc<Principal>, AuthError>> + Send {
        let p = username
            .filter(|u| password == Some(u.as_bytes()))
            .and_then(|u| self.0.get(u).cloned());
        async move { p.ok_or(AuthError::BadCredentials) }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(subscribers) = args.hub_feed {
        for &qos in &args.qos {
            let r = hub_feed(&args, qos, subscribers).await?;
            println!(
                "{{\"path\":\"hub_feed\",\"qos\":{qos},\"subscribers\":{subscribers},\"payload\":{},\"published\":{},\"delivered\":{},\"secs\":{:.3},\"deliveries_per_s\":{:.0}}}",
                args.payload,
                r.sent,
                r.received,
                r.secs,
                r.received as f64 / r.secs
            );
        }
        return Ok(());
    }
    let which: Vec<&str> = match args.broker.as_str() {
        "both" => vec!["embedded", "mosquitto"],
        "embedded" => vec!["embedded"],
        "mosquitto" => vec!["mosquitto"],
        "external" => vec!["external"],
        other => bail!("unknown broker {other}"),
    };
    for &qos in &args.qos {
        for &name in &which {
            let r = match name {
                "embedded" => run_embedded(&args, qos).await?,
                "external" => {
                    let Some(addr) = args.target else {
                        bail!("--broker external needs --target HOST:PORT");
                    };
                    relay(&args, qos, addr).await?
                }
                _ => run_mosquitto(&args, qos).await?,
            };
            println!(
                "{{\"broker\":\"{name}\",\"qos\":{qos},\"publishers\":{},\"payload\":{},\"sent\":{},\"received\":{},\"secs\":{:.3},\"msgs_per_s\":{:.0}}}",
                args.publishers,
                args.payload,
                r.sent,
                r.received,
                r.secs,
                r.received as f64 / r.secs
            );
        }
    }
    Ok(())
}

struct Outcome {
    sent: usize,
    received: usize,
    secs: f64,
}

async fn run_embedded(args: &Args, qos: u8) -> anyhow::Result<Outcome> {
    let mut users = HashMap::new();
    for i in 0..args.publishers {
        let id = format!("D-{i}");
        users.insert(id.clone(), Arc::new(Principal::Device(id)));
    }
    users.insert(
        "bench".to_string(),
        Arc::new(Principal::App {
            id: "bench".into(),
            grants: vec![grant_filter("devices/#")?],
        }),
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(8192);
    let broker = Broker::start(
        BrokerConfig::new(vec!["127.0.0.1:0".parse()?]),
        BenchAuth(users),
        tx,
    )
    .await?;
    // The pipeline stand-in: everything is durable at once.
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let IngressEvent::Message(mut m) = ev {
                m.finish(Disposition::Accepted);
            }
        }
    });
    let addr = broker.local_addrs()[0];
    let r = relay(args, qos, addr).await;
    broker.shutdown().await;
    r
}

/// The hub's outbound path: `Publisher::publish` in a loop, apps subscribed to `v1/feeds/#`.
async fn hub_feed(args: &Args, qos: u8, subscribers: usize) -> anyhow::Result<Outcome> {
    use mqtt_broker::ingress::{Outbound, Publisher};
    let mut users = HashMap::new();
    for i in 0..subscribers {
        let id = format!("app-{i}");
        users.insert(
            id.clone(),
            Arc::new(Principal::App {
                id,
                grants: vec![grant_filter("feeds/#")?],
            }),
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(8192);
    let broker = Broker::start(
        BrokerConfig::new(vec!["127.0.0.1:0".parse()?]),
        BenchAuth(users),
        tx,
    )
    .await?;
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let addr = broker.local_addrs()[0];
    let q = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let total = args.messages;
    let mut counters = Vec::new();
    for i in 0..subscribers {
        let (sub, mut el) = AsyncClient::new(options(&format!("app-{i}"), addr), 1000);
        sub.subscribe("v1/feeds/#", q).await?;
        loop {
            if let Event::Incoming(Incoming::SubAck(_)) = el.poll().await? {
                break;
            }
        }
        counters.push(tokio::spawn(async move {
            let _keep = sub;
            let mut n = 0usize;
            let mut last = Instant::now();
            while n < total {
                match tokio::time::timeout(Duration::from_secs(2), el.poll()).await {
                    Ok(Ok(Event::Incoming(Incoming::Publish(_)))) => {
                        n += 1;
                        last = Instant::now();
                    }
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            (n, last)
        }));
    }
    let payload = bytes::Bytes::from(vec![b'x'; args.payload]);
    let start = Instant::now();
    for i in 0..total {
        broker.publish(Outbound {
            topic: format!("v1/feeds/water_level/WL-{}", i % 1000),
            payload: payload.clone(),
            retain: false,
            at_most_once: false,
        });
        // The pipeline publishes between its own work; let the writers run.
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut received = 0;
    let mut last = start;
    for c in counters {
        let (n, l) = c.await?;
        received += n;
        last = last.max(l);
    }
    broker.shutdown().await;
    Ok(Outcome {
        sent: total,
        received,
        secs: last.duration_since(start).as_secs_f64(),
    })
}

/// Kills the mosquitto it started, also on error.
struct Mosquitto {
    child: std::process::Child,
    /// Holds the config file until mosquitto is gone.
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run_mosquitto(args: &Args, qos: u8) -> anyhow::Result<Outcome> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("mosquitto.conf");
    // Defaults otherwise, but the same subscriber window (256) and queue (10k) as ours.
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 256\nmax_queued_messages 10000\npersistence false\n"
        ),
    )?;
    let child = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting mosquitto")?;
    let _guard = Mosquitto { child, _dir: dir };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("mosquitto did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay(args, qos, addr).await
}

fn options(id: &str, addr: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(id, id);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(200);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

async fn relay(args: &Args, qos: u8, addr: SocketAddr) -> anyhow::Result<Outcome> {
    let q = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let total = args.messages * args.publishers;
    let (sub, mut sub_loop) = AsyncClient::new(options("bench", addr), 1000);
    sub.subscribe("v1/devices/+/telemetry", q).await?;
    loop {
        if let Event::Incoming(Incoming::SubAck(_)) = sub_loop.poll().await? {
            break;
        }
    }
    let counter = tokio::spawn(async move {
        let mut n = 0usize;
        let mut last = Instant::now();
        // Stop at the total, or when nothing arrives for two seconds (lost messages).
        while n < total {
            match tokio::time::timeout(Duration::from_secs(2), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::Publish(_)))) => {
                    n += 1;
                    last = Instant::now();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("subscriber: {e}");
                    break;
                }
                Err(_) => break,
            }
        }
        (n, last)
    });
    let payload = vec![b'x'; args.payload];
    let start = Instant::now();
    let mut pubs = Vec::new();
    for i in 0..args.publishers {
        let id = format!("D-{i}");
        let (client, mut el) = AsyncClient::new(options(&id, addr), 1000);
        let topic = format!("v1/devices/{id}/telemetry");
        let payload = payload.clone();
        let n = args.messages;
        let driver = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("publisher: {e}");
                        return;
                    }
                }
            }
        });
        pubs.push(tokio::spawn(async move {
            for _ in 0..n {
                if client
                    .publish(&topic, q, false, payload.clone())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            (client, driver)
        }));
    }
    let mut clients = Vec::new();
    for p in pubs {
        clients.push(p.await?);
    }
    let (received, last) = counter.await?;
    let secs = last.duration_since(start).as_secs_f64();
    for (c, d) in clients {
        let _ = c.disconnect().await;
        d.abort();
    }
    Ok(Outcome {
        sent: total,
        received,
        secs,
    })
}
