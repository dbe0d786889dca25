//! Many simulated devices in one process, as the district runs them: each answers a Modbus
//! client nobody here wrote (tokio-modbus), and changes to the shared `World`/`Site` handles
//! show up in what the firmware reports.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use protocols::Value;
use protocols::profile::DeviceProfile;
use protocols::registers::Table;
use sim::device::{DeviceSpec, RunningDevice, spawn_fleet};
use sim::world::World;
use tokio_modbus::client::{Context, Reader, Writer, tcp};
use tokio_modbus::prelude::Slave;

fn load(name: &str) -> DeviceProfile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../profiles")
        .join(name);
    DeviceProfile::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn client(d: &RunningDevice, unit: u8) -> Context {
    tcp::connect_slave(d.addr.unwrap(), Slave(unit))
        .await
        .unwrap()
}

/// Reads one point through the profile's plan and decodes it with the profile.
async fn read(ctx: &mut Context, profile: &DeviceProfile, quantity: &str) -> Value {
    let q = protocols::Quantity::from_name(quantity).unwrap();
    let p = profile.point(q).unwrap();
    let words: Vec<u16> = match p.table {
        Table::Input => ctx
            .read_input_registers(p.address, p.width())
            .await
            .unwrap()
            .unwrap(),
        Table::Holding => ctx
            .read_holding_registers(p.address, p.width())
            .await
            .unwrap()
            .unwrap(),
        Table::Discrete => vec![
            ctx.read_discrete_inputs(p.address, 1)
                .await
                .unwrap()
                .unwrap()[0] as u16,
        ],
        Table::Coil => vec![ctx.read_coils(p.address, 1).await.unwrap().unwrap()[0] as u16],
    };
    p.decode(&words).unwrap()
}

/// Polls a point until it satisfies `ok` (the firmware samples once a second).
async fn wait_for(
    ctx: &mut Context,
    profile: &DeviceProfile,
    quantity: &str,
    ok: impl Fn(Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = read(ctx, profile, quantity).await;
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{quantity} stuck at {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_in_one_process_follow_the_world() {
    let world = World::default();
    let names = [
        "streetlight-lc200.toml",
        "water-level-radar.toml",
        "water-quality-5in1.toml",
        "manhole-cover.toml",
        "weather-station.toml",
    ];
    let profiles: Vec<DeviceProfile> = names.iter().map(|n| load(n)).collect();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let specs = (0..50).map(|i| {
        let id = format!("DEV-{i:04}");
        let site = world.site(&id);
        let mut spec = DeviceSpec::new(id, profiles[i % 5].clone(), 1, site);
        // Sample faster than the field's 1 s so the test waits less for changes to show.
        spec.sample_interval = Duration::from_millis(200);
        (spec, any)
    });
    let devices = spawn_fleet(specs).await.unwrap();
    assert_eq!(devices.len(), 50);

    // Every device answers every point of its profile.
    for (i, d) in devices.iter().enumerate() {
        let profile = &profiles[i % 5];
        assert_eq!(d.model, profile.source.model);
        let mut ctx = client(d, 1).await;
        for block in profile.plan_reads(0) {
            let words = match block.table {
                Table::Input => ctx
                    .read_input_registers(block.start, block.count)
                    .await
                    .unwrap()
                    .unwrap(),
                Table::Holding => ctx
                    .read_holding_registers(block.start, block.count)
                    .await
                    .unwrap()
                    .unwrap(),
                Table::Discrete => ctx
                    .read_discrete_inputs(block.start, block.count)
                    .await
                    .unwrap()
                    .unwrap()
                    .into_iter()
                    .map(u16::from)
                    .collect(),
                Table::Coil => unreachable!("no profile has coils"),
            };
            for &pi in &block.points {
                let p = &profile.points[pi];
                let at = (p.address - block.start) as usize;
                p.decode(&words[at..at + p.width() as usize]).unwrap();
            }
        }
    }

    // A lamp breaks: its controller reports lamp_failure, its neighbours stay ok.
    let (sl, sl_profile) = (&devices[0], &profiles[0]);
    let mut ctx = client(sl, 1).await;
    sl.site.update(|c| c.lamp_broken = true);
    wait_for(&mut ctx, sl_profile, "lamp_status", |v| {
        v == Value::State(1)
    })
    .await;
    let mut other = client(&devices[5], 1).await;
    assert_eq!(
        read(&mut other, sl_profile, "lamp_status").await,
        Value::State(0)
    );
    // The mains fail on another pole: power_loss.
    devices[10].site.update(|c| c.mains_present = false);
    let mut ctx10 = client(&devices[10], 1).await;
    wait_for(&mut ctx10, sl_profile, "lamp_status", |v| {
        v == Value::State(3)
    })
    .await;

    // Dimming through Modbus acts on the simulated lamp.
    let mut ctx15 = client(&devices[15], 1).await;
    ctx15.write_single_register(16, 30).await.unwrap().unwrap();
    wait_for(&mut ctx15, sl_profile, "lamp_power", |v| {
        (v.as_f64() - 30.3).abs() < 2.0
    })
    .await;

    // The river rises at one station.
    let (wl, wl_profile) = (&devices[1], &profiles[1]);
    wl.site.update(|c| c.water_level = 3.4);
    let mut ctx = client(wl, 1).await;
    wait_for(&mut ctx, wl_profile, "water_level", |v| {
        (v.as_f64() - 3.4).abs() < 0.02
    })
    .await;

    // A cover is lifted.
    let (mh, mh_profile) = (&devices[3], &profiles[3]);
    mh.site.update(|c| c.cover_lifted = true);
    let mut ctx = client(mh, 1).await;
    wait_for(&mut ctx, mh_profile, "cover_open", |v| {
        v == Value::Bool(true)
    })
    .await;

    // A storm over the district: every weather station's gauge counts rain.
    world.update_weather(|w| w.rain_rate = 1500.0);
    for d in devices.iter().skip(4).step_by(5).take(3) {
        let mut ctx = client(d, 1).await;
        wait_for(&mut ctx, &profiles[4], "rainfall", |v| v.as_f64() > 0.0).await;
    }

    for d in devices {
        d.stop().await;
    }
}
