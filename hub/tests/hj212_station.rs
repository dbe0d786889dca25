//! HJ 212-2017 stations against the whole hub over real TCP: data uploads become readings with
//! their units and data-flag qualities, are acknowledged (CN 9014) only once stored, split
//! messages are reassembled, and bad frames, unknown stations and wrong passwords get dead
//! letters (the latter two a closed connection).

mod hub_e2e_support;

use std::time::Duration;

use hub_e2e_support::*;
use protocols::hj212::{Cn, CpBuilder, DataFlag, DataTime, Flag, Frame, Packet, Split, encode};
use rumqttc::QoS;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const MN: &str = "88888880000001";
const PW: &str = "123456";
const OPS: (&str, &str) = ("ops", "ops-secret-123");

fn hub_config(dir: &std::path::Path) -> hub::config::HubConfig {
    let mut cfg = config(dir);
    let station = hub::config::HubConfig::from_toml(&format!(
        "[[devices]]\nid = \"WQ-0001\"\nkind = \"water_quality\"\ndept = \"water\"\n\
         hj212_mn = \"{MN}\"\nhj212_pw = \"{PW}\"\n"
    ))
    .unwrap();
    cfg.devices.extend(station.devices);
    cfg.hj212.listen = vec!["127.0.0.1:0".into()];
    cfg
}

/// A station's packet: `cp` built by `fill`, DataTime `ts` in the station's time (UTC+8).
fn packet(
    qn: &str,
    cn: Cn,
    flag: Flag,
    split: Option<Split>,
    pw: &str,
    ts: i64,
    fill: impl FnOnce(&mut CpBuilder),
) -> String {
    let mut cp = CpBuilder::new();
    cp.data_time(DataTime::from_utc_ms(ts, 480));
    fill(&mut cp);
    let cp = cp.finish().unwrap();
    encode(&Packet {
        qn: Some(qn),
        st: "21",
        cn,
        pw,
        mn: MN,
        flag: Some(flag),
        split,
        cp: &cp,
    })
    .unwrap()
}

struct Station {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl Station {
    async fn connect(hub: &E2eHub) -> Station {
        let addr = hub.server().hub().hj212_addrs()[0];
        let (rd, wr) = TcpStream::connect(addr).await.unwrap().into_split();
        Station {
            rd: BufReader::new(rd),
            wr,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
    }

    /// The next reply packet's data segment.
    async fn reply(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.rd.read_line(&mut line))
            .await
            .expect("no reply")
            .unwrap();
        assert!(n > 0, "connection closed instead of a reply");
        let f = Frame::decode(line.as_bytes()).unwrap();
        f.data.to_string()
    }

    /// Whether the hub closed the connection (within [`WAIT`]).
    async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(WAIT, self.rd.read_line(&mut line)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn json(p: &rumqttc::Publish) -> serde_json::Value {
    serde_json::from_slice(&p.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_reports_and_is_acknowledged_once_stored() {
    let dir = tempfile::tempdir().unwrap();
    let hub = E2eHub::start(hub_config(dir.path())).await;
    let base = hub.base_url();
    let mut ops = connect_with(options(hub.mqtt, "ops", "ops", "ops-secret-123"))
        .await
        .unwrap();
    ops.subscribe("v1/feeds/water_quality/#", QoS::AtLeastOnce)
        .await;
    // Dead letters on a connection of their own: `next_on` skips what it is not waiting for.
    let mut letters = connect_with(options(hub.mqtt, "ops.letters", "ops", "ops-secret-123"))
        .await
        .unwrap();
    letters.subscribe("v1/deadletter/#", QoS::AtLeastOnce).await;

    // Real-time data with an acknowledgement requested (Flag=5); the turbidity analyser
    // reports a fault (D), ammonia is over its range (T), one code is not in the table.
    let t = (now_ms() / 1000 - 30) * 1000;
    let mut station = Station::connect(&hub).await;
    let p = packet(
        "20261207101500001",
        Cn::RealTime,
        Flag::new(Flag::VERSION_2017, false, true),
        None,
        PW,
        t,
        |cp| {
            cp.number("w01001", "Rtd", 7.42)
                .flag("w01001", DataFlag::Normal)
                .number("w01003", "Rtd", 12.5)
                .flag("w01003", DataFlag::Fault)
                .number("w21003", "Rtd", 0.42)
                .flag("w21003", DataFlag::OverRange)
                .number("w99999", "Rtd", 1.0);
        },
    );
    station.send(p.as_bytes()).await;
    let ack = station.reply().await;
    let ack = Packet::parse(&ack).unwrap();
    assert_eq!(ack.cn, Cn::DataAck);
    assert_eq!(ack.qn, Some("20261207101500001"));
    assert_eq!(ack.mn, MN);
    // Acknowledged means stored: the API has it now.
    assert_eq!(
        series(&base, "WQ-0001", "ph", t - 1, t + 1).await,
        vec![(t, 7.42)]
    );
    assert_eq!(
        series(&base, "WQ-0001", "ammonia_nitrogen", t - 1, t + 1).await,
        vec![(t, 0.42)]
    );
    let feed = json(&ops.next_on("v1/feeds/water_quality/WQ-0001").await);
    assert_eq!(feed["values"]["ph"]["quality"], "good");
    assert_eq!(feed["values"]["turbidity"]["quality"], "bad");
    assert_eq!(feed["values"]["turbidity"]["unit"], "NTU");
    assert_eq!(feed["values"]["ammonia_nitrogen"]["quality"], "uncertain");
    let dl = json(&letters.next_on("v1/deadletter/WQ-0001").await);
    assert!(
        dl["reason"]
            .as_str()
            .unwrap()
            .starts_with("unknown_quantity"),
        "{dl}"
    );

    // Minute data split in two packets: stored once both are in.
    let t2 = t - 60_000;
    let flag = Flag::new(Flag::VERSION_2017, true, true);
    let part = |index: u16, fill: &dyn Fn(&mut CpBuilder)| {
        packet(
            "20261207101600002",
            Cn::Minute,
            flag,
            Some(Split { total: 2, index }),
            PW,
            t2,
            |cp| fill(cp),
        )
    };
    station
        .send(
            part(1, &|cp| {
                cp.number("w01001", "Avg", 7.4);
            })
            .as_bytes(),
        )
        .await;
    assert_eq!(
        Packet::parse(&station.reply().await).unwrap().cn,
        Cn::DataAck
    );
    station
        .send(
            part(2, &|cp| {
                cp.number("w01009", "Avg", 8.1);
            })
            .as_bytes(),
        )
        .await;
    assert_eq!(
        Packet::parse(&station.reply().await).unwrap().cn,
        Cn::DataAck
    );
    assert_eq!(
        series(&base, "WQ-0001", "ph", t2 - 1, t2 + 1).await,
        vec![(t2, 7.4)]
    );
    assert_eq!(
        series(&base, "WQ-0001", "dissolved_oxygen", t2 - 1, t2 + 1).await,
        vec![(t2, 8.1)]
    );

    // A corrupted packet (wrong CRC) and garbage: dead letters, the connection goes on.
    let mut bad = p.clone().into_bytes();
    let crc_at = bad.len() - 6;
    bad[crc_at] = if bad[crc_at] == b'0' { b'1' } else { b'0' };
    station.send(b"garbage\r\n").await;
    station.send(&bad).await;
    let dl = json(&letters.next_on("v1/deadletter/hj212").await);
    assert!(
        dl["reason"].as_str().unwrap().starts_with("bad_frame"),
        "{dl}"
    );
    assert!(dl["reason"].as_str().unwrap().contains("CRC"), "{dl}");
    // Without an acknowledgement request, nothing is answered; the data is stored.
    let t3 = t - 120_000;
    let quiet = packet(
        "20261207101700003",
        Cn::Hour,
        Flag::new(Flag::VERSION_2017, false, false),
        None,
        PW,
        t3,
        |cp| {
            cp.number("w01001", "Avg", 7.3);
        },
    );
    station.send(quiet.as_bytes()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while series(&base, "WQ-0001", "ph", t3 - 1, t3 + 1)
        .await
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hourly data never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&base, "hub_hj212_acks_total").await >= 3.0);
    let (_, dev) = get_json(&base, "/api/v1/devices/WQ-0001", Some(OPS)).await;
    assert_eq!(dev["online"], true, "{dev}");

    // A wrong password: a dead letter (without the packet, which holds the password) and a
    // closed connection.
    let mut intruder = Station::connect(&hub).await;
    let wrong = packet(
        "20261207101800004",
        Cn::RealTime,
        Flag::new(Flag::VERSION_2017, false, true),
        None,
        "654321",
        t,
        |cp| {
            cp.number("w01001", "Rtd", 1.0);
        },
    );
    intruder.send(wrong.as_bytes()).await;
    assert!(
        intruder.closed().await,
        "a wrong PW must close the connection"
    );
    let dl = json(&letters.next_on("v1/deadletter/WQ-0001").await);
    assert!(
        dl["reason"]
            .as_str()
            .unwrap()
            .starts_with("bad_credentials"),
        "{dl}"
    );
    assert!(!dl.to_string().contains("654321"), "{dl}");
    assert_eq!(
        series(&base, "WQ-0001", "ph", t - 1, t + 1).await,
        vec![(t, 7.42)],
        "the intruder's value was stored"
    );
    assert!(metric(&base, "hub_hj212_closed_for_credentials_total").await >= 1.0);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_station_is_refused_and_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = hub_config(dir.path());
    cfg.devices.retain(|d| d.id != "WQ-0001");
    let hub = E2eHub::start(cfg).await;
    let mut ops = connect_with(options(hub.mqtt, "ops", "ops", "ops-secret-123"))
        .await
        .unwrap();
    ops.subscribe("v1/deadletter/#", QoS::AtLeastOnce).await;
    let mut station = Station::connect(&hub).await;
    let p = packet(
        "20261207101500001",
        Cn::RealTime,
        Flag::new(Flag::VERSION_2017, false, true),
        None,
        PW,
        now_ms(),
        |cp| {
            cp.number("w01001", "Rtd", 7.0);
        },
    );
    station.send(p.as_bytes()).await;
    assert!(station.closed().await);
    let dl = json(&ops.next_on("v1/deadletter/hj212").await);
    assert!(
        dl["reason"]
            .as_str()
            .unwrap()
            .starts_with("bad_credentials"),
        "{dl}"
    );
    assert!(dl["reason"].as_str().unwrap().contains(MN), "{dl}");
    hub.stop().await;
}
