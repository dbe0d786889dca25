//! The district's lighting control: an app of the hub (`lighting-control`) that switches the
//! lamps on at dusk, dims them after 23:00, raises them again before dawn and switches them
//! off in daylight, all through the hub's desired state (`v1/twin/{lamp}/desired`), as a real
//! district controls its lamps centrally. The hub turns desired state into `set` commands to
//! the cabinet agents, which write the lamp controllers' dimming registers over Modbus.
//!
//! It reconciles rather than fires and forgets: it watches the lamps' twins and asserts the
//! desired level again for a lamp whose reported level does not follow (a controller that
//! rebooted at its power-up level, a command lost while a cabinet's link was down).
//!
//! An operator's own desired level (from the dashboard or the API) is a manual override: the
//! app leaves that lamp alone until its schedule's next step, as central lighting systems do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tracing::{debug, info};

use super::clock::{DemoClock, local_day_and_hour};
use super::layout::CENTRE;
use super::scenario::Narrator;
use crate::mqtt_events::Events;

/// Sun altitude below which the lamps are on, degrees (about 20 lux under a clear sky: a
/// quarter of an hour after sunset).
const ON_BELOW_ALTITUDE: f64 = -2.0;
/// Level from dusk to 23:00 and from 05:00 to dawn, %.
pub const EVENING_LEVEL: u8 = 100;
/// Level from 23:00 to 05:00, %.
pub const NIGHT_LEVEL: u8 = 50;
/// How long a lamp may ignore its desired level before it is asserted again.
const REASSERT_AFTER: Duration = Duration::from_secs(20);

/// The sun's altitude above the horizon at an instant and place, degrees (the Astronomical
/// Almanac's low-precision formulas: good to about 0.01° for 1950-2050).
pub fn sun_altitude_deg(epoch_ms: i64, lat: f64, lon: f64) -> f64 {
    let n = epoch_ms as f64 / 86_400_000.0 + 2_440_587.5 - 2_451_545.0;
    let l = (280.460 + 0.985_647_4 * n).rem_euclid(360.0);
    let g = (357.528 + 0.985_600_3 * n).rem_euclid(360.0).to_radians();
    let lambda = (l + 1.915 * g.sin() + 0.020 * (2.0 * g).sin()).to_radians();
    let eps = (23.439 - 0.000_000_4 * n).to_radians();
    let ra = (eps.cos() * lambda.sin()).atan2(lambda.cos());
    let dec = (eps.sin() * lambda.sin()).asin();
    let gmst_h = (18.697_374_558 + 24.065_709_824_419_08 * n).rem_euclid(24.0);
    let hour_angle = (gmst_h * 15.0 + lon).to_radians() - ra;
    let lat = lat.to_radians();
    (lat.sin() * dec.sin() + lat.cos() * dec.cos() * hour_angle.cos())
        .asin()
        .to_degrees()
}

/// The schedule: the dimming level for an instant (demo time).
pub fn level_at(epoch_ms: i64) -> u8 {
    if sun_altitude_deg(epoch_ms, CENTRE.0, CENTRE.1) > ON_BELOW_ALTITUDE {
        return 0;
    }
    let (_, hour) = local_day_and_hour(epoch_ms);
    if !(5.0..23.0).contains(&hour) {
        NIGHT_LEVEL
    } else {
        EVENING_LEVEL
    }
}

/// What the twin of a lamp says.
#[derive(Clone, Copy, Debug, Default)]
struct LampView {
    reported: Option<f64>,
    desired: Option<f64>,
    online: bool,
    asserted: Option<Instant>,
    /// The last two levels this app asked for (a twin in flight may still carry the older).
    sent: [Option<f64>; 2],
    /// Someone else set the lamp's desired level: left alone until the schedule's next step.
    manual: bool,
}

/// The app's connection settings.
#[derive(Clone, Debug)]
pub struct App {
    /// App id.
    pub id: String,
    /// Its secret.
    pub secret: String,
    /// The hub's MQTT address.
    pub hub: SocketAddr,
}

/// Runs the lighting control until `stop` turns true.
pub async fn run(
    app: App,
    lamps: Vec<String>,
    clock: DemoClock,
    narrator: Narrator,
    mut stop: watch::Receiver<bool>,
) {
    let mut opts = MqttOptions::new(&app.id, app.hub.ip().to_string(), app.hub.port());
    opts.set_credentials(&app.id, &app.secret);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(256 * 1024, 64 * 1024);
    let (client, events) = AsyncClient::new(opts, 256);
    let mut events = Events::new(events);
    let mut views: HashMap<String, LampView> = lamps
        .iter()
        .map(|l| (l.clone(), LampView::default()))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut announced: Option<u8> = None;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // Subscriptions do not survive a clean-session reconnect: subscribe on each.
                    let _ = client.try_subscribe("v1/twin/+", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(id) = p.topic.strip_prefix("v1/twin/")
                        && let Some(v) = views.get_mut(id)
                        && let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    {
                        v.reported = doc["reported"]["dimming_level"]["value"].as_f64();
                        let desired = doc["desired"]["dimming_level"].as_f64();
                        // Only once this app has asked for something: a retained twin from
                        // before its start is not an operator's doing.
                        if v.sent[0].is_some()
                            && desired.is_some()
                            && !v.sent.contains(&desired)
                            && !v.manual
                        {
                            info!(lamp = %id, level = ?desired, "manual override until the next schedule step");
                            v.manual = true;
                        }
                        v.desired = desired;
                        v.online = doc["online"].as_bool().unwrap_or(false);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    debug!("lighting-control connection: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = tick.tick() => {
                let target = level_at(clock.now_ms());
                if announced != Some(target) {
                    let what = match (announced, target) {
                        (_, 0) => "daylight: lamps off".to_string(),
                        (Some(0) | None, l) => format!("dusk: lamps on at {l} %"),
                        (Some(a), l) if l < a => format!("late night: lamps dimmed to {l} %"),
                        (_, l) => format!("before dawn: lamps up to {l} %"),
                    };
                    narrator.say(&format!("lighting-control: {what} ({} lamps)", lamps.len()));
                    info!(level = target, "lighting schedule");
                    announced = Some(target);
                    for v in views.values_mut() {
                        v.manual = false;
                    }
                }
                // Give the retained twins a moment to arrive before judging what to send.
                if started.elapsed() < Duration::from_secs(2) {
                    continue;
                }
                for (id, v) in views.iter_mut() {
                    if v.manual {
                        continue;
                    }
                    let want = target as f64;
                    let stale = v.asserted.is_none_or(|t| t.elapsed() > REASSERT_AFTER);
                    let send = (v.desired != Some(want)
                        && v.asserted.is_none_or(|t| t.elapsed() > Duration::from_secs(3)))
                        || (v.online && v.reported != Some(want) && stale);
                    if send {
                        let body = format!("{{\"dimming_level\":{target}}}");
                        if client
                            .try_publish(format!("v1/twin/{id}/desired"), QoS::AtLeastOnce, false, body)
                            .is_ok()
                        {
                            v.asserted = Some(Instant::now());
                            if v.sent[0] != Some(want) {
                                v.sent = [Some(want), v.sent[0]];
                            }
                        }
                    }
                }
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    while events.next().await.is_ok() {}
                }).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-06-21 (day 20625 since the epoch) at `h` o'clock district time (UTC+8).
    fn june(h: f64) -> i64 {
        ((20_625.0 * 86_400.0 + (h - 8.0) * 3600.0) * 1000.0) as i64
    }

    #[test]
    fn sun_is_high_at_noon_and_down_at_night() {
        // Midsummer noon at 30.4° N: about 83° (90 - 30.4 + 23.4), near solar noon 12:00.
        let noon = sun_altitude_deg(june(11.98), CENTRE.0, CENTRE.1);
        assert!((noon - 83.0).abs() < 1.0, "{noon}");
        assert!(sun_altitude_deg(june(0.0), CENTRE.0, CENTRE.1) < -30.0);
        // Hangzhou's midsummer sunset is about 19:05 local time.
        assert!(sun_altitude_deg(june(18.9), CENTRE.0, CENTRE.1) > 0.0);
        assert!(sun_altitude_deg(june(19.3), CENTRE.0, CENTRE.1) < -0.833);
    }

    #[test]
    fn schedule_over_a_day() {
        assert_eq!(level_at(june(12.0)), 0);
        assert_eq!(level_at(june(20.0)), EVENING_LEVEL);
        assert_eq!(level_at(june(23.5)), NIGHT_LEVEL);
        assert_eq!(level_at(june(2.0)), NIGHT_LEVEL);
        // Midsummer dawn is about 04:55: the lamps are already off at 05:30.
        assert_eq!(level_at(june(5.5)), 0);
    }
}
