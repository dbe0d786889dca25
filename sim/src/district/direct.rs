//! Rain gauges that publish JSON telemetry to the hub themselves (no agent), as a cellular
//! gauge with its own SIM does: `v1/devices/{id}/telemetry` every few seconds with the rain
//! accumulated since power-up and the air temperature.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::mqtt_events::Events;
use crate::world::Site;

/// How often a gauge reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// A direct device's identity and where the hub is.
#[derive(Clone, Debug)]
pub struct Gauge {
    /// Device id.
    pub id: String,
    /// Its secret.
    pub secret: String,
    /// The hub's MQTT address.
    pub hub: SocketAddr,
    /// Its site (the weather it measures).
    pub site: Site,
}

/// Runs a gauge until `stop` turns true. While `link` is false the gauge is off the network
/// (its connection dropped, its readings lost: a cheap gauge keeps no backlog).
pub async fn run(gauge: Gauge, mut link: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
    let mut rain_mm = 0.0f64;
    let mut last = Instant::now();
    let mut seq = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        if !*link.borrow() {
            tokio::select! {
                _ = async { let _ = link.wait_for(|up| *up).await; } => continue,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
        let mut opts = MqttOptions::new(&gauge.id, gauge.hub.ip().to_string(), gauge.hub.port());
        opts.set_credentials(&gauge.id, &gauge.secret);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, events) = AsyncClient::new(opts, 16);
        let mut events = Events::new(events);
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let topic = format!("v1/devices/{}/telemetry", gauge.id);
        let mut connected = false;
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if !connected { info!(device = %gauge.id, "rain gauge connected"); }
                        connected = true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(device = %gauge.id, "connection: {e}");
                        connected = false;
                        // rumqttc has no backoff of its own.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                },
                _ = tick.tick() => {
                    // The bucket tips all the time, whether or not anyone listens.
                    let w = gauge.site.world().weather();
                    rain_mm += w.rain_rate * last.elapsed().as_secs_f64() / 3600.0;
                    last = Instant::now();
                    if connected {
                        seq += 1;
                        let body = serde_json::json!({
                            "ts": protocols::time::now_ms(),
                            "seq": seq,
                            "values": {
                                "rainfall": {"value": (rain_mm * 10.0).round() / 10.0, "unit": "mm"},
                                "air_temperature": (w.air_temperature * 10.0).round() / 10.0,
                                "relative_humidity": w.relative_humidity.round(),
                            }
                        });
                        let _ = client.try_publish(&topic, QoS::AtLeastOnce, false, body.to_string());
                    }
                }
                r = async { link.wait_for(|up| !*up).await.map(|_| ()) } => {
                    if r.is_err() {
                        return;
                    }
                    info!(device = %gauge.id, "rain gauge off the network");
                    break;
                }
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    let _ = client.try_disconnect();
                    // Let the DISCONNECT go out.
                    let _ = tokio::time::timeout(Duration::from_millis(300), async {
                        while events.next().await.is_ok() {}
                    }).await;
                    return;
                }
            }
        }
    }
}
