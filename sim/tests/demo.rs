//! The demo's assembly in-process on free ports: the whole district comes alive (feeds from
//! every kind of device through the real agents and hub, twins online, the lighting control
//! switching the lamps through desired state, a storm raising the river), the scripted
//! incidents show up in what the hub publishes, it stops cleanly, and a second start in the
//! same directory keeps its secrets.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use sim::district::demo::{Demo, DemoOptions};
use tokio::sync::mpsc;

/// How long anything the tests wait for may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// What an app sees of the district: every feed and twin message.
struct Watcher {
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    feeds: HashMap<String, Value>,
    feed_kinds: HashSet<String>,
    twins: HashMap<String, Value>,
    ever_online: HashSet<String>,
}

impl Watcher {
    /// Subscribes as the command center to feeds and twins.
    async fn start(demo: &Demo) -> Watcher {
        let (app, secret) = demo.command_center();
        let addr = demo.mqtt_addr();
        let mut opts = MqttOptions::new(format!("{app}.test"), addr.ip().to_string(), addr.port());
        opts.set_credentials(app, secret);
        opts.set_max_packet_size(1 << 20, 1 << 16);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client
                            .subscribe("v1/feeds/#", QoS::AtMostOnce)
                            .await
                            .unwrap();
                        client
                            .subscribe("v1/twin/+", QoS::AtMostOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap();
                        if tx.send((p.topic.clone(), v)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Watcher {
            rx,
            feeds: HashMap::new(),
            feed_kinds: HashSet::new(),
            twins: HashMap::new(),
            ever_online: HashSet::new(),
        }
    }

    /// Takes in messages until `done` holds, or fails naming `what`.
    async fn until(&mut self, what: &str, done: impl Fn(&Watcher) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(self) {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv()).await;
            let Ok(Some((topic, v))) = msg else {
                panic!(
                    "timed out waiting for {what}; feeds from {:?}, {} twins, {} ever online",
                    self.feed_kinds,
                    self.twins.len(),
                    self.ever_online.len()
                );
            };
            if topic.starts_with("v1/feeds/") {
                self.feed_kinds
                    .insert(v["kind"].as_str().unwrap().to_string());
                self.feeds
                    .insert(v["device"].as_str().unwrap().to_string(), v);
            } else if let Some(id) = topic.strip_prefix("v1/twin/") {
                if v["online"] == true {
                    self.ever_online.insert(id.to_string());
                }
                self.twins.insert(id.to_string(), v);
            }
        }
    }

    fn reported(&self, id: &str, q: &str) -> Option<Value> {
        let v = &self.twins.get(id)?["reported"][q]["value"];
        (!v.is_null()).then(|| v.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_district_comes_alive_and_the_storm_raises_the_river() {
    let dir = tempfile::tempdir().unwrap();
    // Noon at 120x: the lighting control switches the lamps off (they power up lit), and the
    // storm (45 demo seconds in) reaches the downstream gauges within tens of real seconds.
    let started = std::time::Instant::now();
    let demo = Demo::start(DemoOptions {
        speed: 120.0,
        start: Some("12:00".parse().unwrap()),
        incidents: false,
        ..DemoOptions::local(dir.path())
    })
    .await
    .unwrap();
    eprintln!("demo started in {:?}", started.elapsed());
    let ids: Vec<String> = demo.layout().device_ids().map(String::from).collect();
    let mut w = Watcher::start(&demo).await;

    w.until("feeds from every kind of device", |w| {
        [
            "streetlight",
            "water_level",
            "water_quality",
            "manhole",
            "weather",
        ]
        .iter()
        .all(|k| w.feed_kinds.contains(*k))
    })
    .await;
    // Both a Modbus weather station (through an agent) and a JSON rain gauge (direct).
    w.until("feeds from the weather station and the rain gauges", |w| {
        ["WX-0001", "RG-0001", "RG-0002"]
            .iter()
            .all(|d| w.feeds.contains_key(*d))
    })
    .await;
    let f = &w.feeds["WL-0003"]["values"]["water_level"];
    assert_eq!(f["unit"], "m");
    assert_eq!(f["quality"], "good");
    let rain = &w.feeds["RG-0001"]["values"]["rainfall"];
    assert_eq!(rain["unit"], "mm");

    w.until("every device's twin online", |w| {
        ids.iter().all(|id| w.ever_online.contains(id))
    })
    .await;

    // The lighting control's desired 0 % went hub -> agent -> Modbus -> lamp and back.
    let lamps: Vec<String> = demo.layout().lamps().map(|d| d.id.clone()).collect();
    w.until("every lamp switched off by the schedule", |w| {
        lamps.iter().all(|l| {
            w.reported(l, "dimming_level").and_then(|v| v.as_f64()) == Some(0.0)
                && w.twins
                    .get(l)
                    .is_some_and(|t| t["desired"]["dimming_level"] == 0.0)
        })
    })
    .await;

    // The river rises at the downstream gauge as the storm's runoff arrives.
    let base = demo.layout().stations[4].reach.base_level;
    w.until("the storm raising WL-0005 by 0.3 m", |w| {
        w.reported("WL-0005", "water_level")
            .and_then(|v| v.as_f64())
            .is_some_and(|l| l > base + 0.3)
    })
    .await;
    let rain = w.feeds["RG-0001"]["values"]["rainfall"]["value"]
        .as_f64()
        .unwrap();
    assert!(rain > 0.0, "the rain gauges measured no rain");

    // Everything the demo wrote is a valid config for the hub binary.
    hub::config::HubConfig::load(&dir.path().join("hub.toml")).unwrap();
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_show_up_at_the_hub_and_the_demo_restarts_with_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    // 20:00 at 30x: the lamps are on (a burnt-out lamp shows), incidents come within seconds.
    let demo = Demo::start(DemoOptions {
        speed: 30.0,
        start: Some("20:00".parse().unwrap()),
        ..DemoOptions::local(dir.path())
    })
    .await
    .unwrap();
    let events = sim::district::scenario::cycle(0, demo.layout(), 30.0);
    let pick = |f: &dyn Fn(&sim::district::scenario::Action) -> Option<String>| {
        events.iter().find_map(|e| f(&e.action)).unwrap()
    };
    use sim::district::scenario::Action;
    let fault = pick(&|a| match a {
        Action::DriverFault { lamp, failed: true } => Some(lamp.clone()),
        _ => None,
    });
    let broken = pick(&|a| match a {
        Action::LampBroken { lamp, broken: true } => Some(lamp.clone()),
        _ => None,
    });
    let manhole = pick(&|a| match a {
        Action::Cover {
            manhole,
            lifted: true,
        } => Some(manhole.clone()),
        _ => None,
    });
    let cabinet = pick(&|a| match a {
        Action::Backhaul { agent, up: false } => Some(agent.clone()),
        _ => None,
    });
    let behind_cabinet: Vec<String> = demo
        .layout()
        .field
        .iter()
        .filter(|d| d.agent == cabinet)
        .map(|d| d.id.clone())
        .collect();
    let mut w = Watcher::start(&demo).await;
    eprintln!("fault {fault}, broken {broken}, cover {manhole}, cut {cabinet}");
    w.until(
        "the driver fault, the dead lamp and the open cover reported",
        |w| {
            w.reported(&fault, "lamp_status") == Some("driver_failure".into())
                && w.reported(&broken, "lamp_status") == Some("lamp_failure".into())
                && w.reported(&manhole, "cover_open") == Some(true.into())
        },
    )
    .await;
    w.until("the cut cabinet's devices offline", |w| {
        behind_cabinet
            .iter()
            .all(|d| w.twins.get(d).is_some_and(|t| t["online"] == false))
    })
    .await;
    let secret = demo.command_center().1.to_string();
    demo.shutdown().await;

    let again = Demo::start(DemoOptions {
        speed: 30.0,
        ..DemoOptions::local(dir.path())
    })
    .await
    .unwrap();
    assert_eq!(again.command_center().1, secret);
    again.shutdown().await;
}
