//! The task of one serial line: many unit ids, one request at a time, a fair schedule.
//!
//! Devices are polled earliest-deadline-first. A unit that fails is given a backoff before
//! its next turn, so a dead unit costs the bus one timeout per backoff period instead of one
//! per interval. After a timeout or a garbled answer the port is reopened, which drops any
//! late bytes that would otherwise be read as the next unit's answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::Slave;
use tokio_modbus::client::Context;
use tokio_modbus::prelude::SlaveContext;
use tokio_serial::{DataBits, Parity, SerialPortBuilderExt, StopBits};

use super::{DeviceCommand, DeviceSample, DeviceState, poll, refuse_offline};
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// A serial port's settings.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SerialLine {
    pub path: String,
    pub baud: u32,
    pub parity: char,
    pub stop_bits: u8,
}

fn open(line: &SerialLine) -> Result<Context, String> {
    let parity = match line.parity {
        'E' => Parity::Even,
        'O' => Parity::Odd,
        _ => Parity::None,
    };
    let stop = if line.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let port = tokio_serial::new(&line.path, line.baud)
        .data_bits(DataBits::Eight)
        .parity(parity)
        .stop_bits(stop)
        .open_native_async()
        .map_err(|e| format!("{}: {e}", line.path))?;
    Ok(tokio_modbus::client::rtu::attach_slave(port, Slave(1)))
}

struct Slot {
    dev: DeviceState,
    due: Instant,
    backoff: Backoff,
}

pub(super) async fn run(
    line: SerialLine,
    devices: Vec<DeviceState>,
    mut cmds: mpsc::Receiver<DeviceCommand>,
    out: mpsc::Sender<DeviceSample>,
    metrics: Arc<Metrics>,
) {
    let now = Instant::now();
    let mut slots: Vec<Slot> = devices
        .into_iter()
        .map(|dev| {
            let cap =
                (dev.plan.interval * 30).clamp(Duration::from_secs(1), Duration::from_secs(60));
            Slot {
                dev,
                due: now,
                backoff: Backoff::new(Duration::from_millis(500), cap),
            }
        })
        .collect();
    let mut port_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let mut ctx = match open(&line) {
            Ok(ctx) => ctx,
            Err(e) => {
                for s in &slots {
                    s.dev.stats.set_online(false);
                }
                let delay = port_backoff.next_delay();
                tracing::warn!(port = %line.path, "cannot open: {e}; retry in {delay:?}");
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        cmd = cmds.recv() => match cmd {
                            Some(cmd) => refuse_offline(cmd, &e),
                            None => return,
                        },
                    }
                }
                continue;
            }
        };
        port_backoff.reset();
        tracing::info!(port = %line.path, devices = slots.len(), "serial line open");
        // Serve the line until a request leaves it in doubt; then reopen.
        loop {
            let Some(next) = (0..slots.len()).min_by_key(|&i| slots[i].due) else {
                // No devices: only commands could come, and they cannot be for us.
                match cmds.recv().await {
                    Some(cmd) => refuse_offline(cmd, "no device on this line"),
                    None => return,
                }
                continue;
            };
            let due = slots[next].due;
            let reopen = tokio::select! {
                _ = tokio::time::sleep_until(due) => {
                    let slot = &mut slots[next];
                    ctx.set_slave(Slave(slot.dev.plan.unit));
                    let ts_ms = protocols::time::now_ms();
                    let outcome = poll::poll_device(&mut ctx, &slot.dev.plan).await;
                    let ok = outcome.any_ok();
                    let broken = outcome.link_broken;
                    slot.dev.finish_poll(outcome, ts_ms, &out, &metrics);
                    let now = Instant::now();
                    if ok {
                        slot.backoff.reset();
                        // Keep the cadence; if the bus fell behind, do not burst to catch up.
                        slot.due = (due + slot.dev.plan.interval).max(now);
                    } else {
                        let delay = slot.backoff.next_delay().max(slot.dev.plan.interval);
                        tracing::debug!(port = %line.path, device = %slot.dev.plan.device,
                            "no answer; next try in {delay:?}");
                        slot.due = now + delay;
                    }
                    broken
                }
                cmd = cmds.recv() => {
                    let Some(DeviceCommand::Set { device, values, reply }) = cmd else { return };
                    match slots.iter_mut().find(|s| s.dev.plan.device == device) {
                        Some(slot) => {
                            ctx.set_slave(Slave(slot.dev.plan.unit));
                            let (result, broken) = slot.dev.set(&mut ctx, &values, &out, &metrics).await;
                            let _ = reply.send(result);
                            broken
                        }
                        None => {
                            let _ = reply.send(Err(format!("no device `{device}` on {}", line.path)));
                            false
                        }
                    }
                }
            };
            if reopen {
                break;
            }
        }
        drop(ctx);
    }
}
