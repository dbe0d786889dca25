//! The task of one Modbus TCP device: connect, poll on its interval, serve writes, reconnect
//! with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_modbus::Slave;
use tokio_modbus::client::Context;

use super::{DeviceCommand, DeviceSample, DeviceState, poll, refuse_offline};
use crate::backoff::Backoff;
use crate::metrics::Metrics;

async fn connect(addr: &str, unit: u8, timeout: Duration) -> Result<Context, String> {
    let attempt = async {
        let mut last = format!("{addr}: no address");
        for sa in tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?
        {
            match tokio_modbus::client::tcp::connect_slave(sa, Slave(unit)).await {
                Ok(ctx) => return Ok(ctx),
                Err(e) => last = format!("{sa}: {e}"),
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{addr}: connect timed out after {timeout:?}")))
}

/// Waits `delay`, answering commands with "not reachable" meanwhile.
async fn wait_offline(
    delay: Duration,
    cmds: &mut mpsc::Receiver<DeviceCommand>,
    why: &str,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            cmd = cmds.recv() => match cmd {
                Some(cmd) => refuse_offline(cmd, why),
                None => return false,
            },
        }
    }
}

pub(super) async fn run(
    addr: String,
    mut dev: DeviceState,
    mut cmds: mpsc::Receiver<DeviceCommand>,
    out: mpsc::Sender<DeviceSample>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let connect_timeout = dev.plan.timeout.max(Duration::from_secs(1));
    loop {
        let mut ctx = match connect(&addr, dev.plan.unit, connect_timeout).await {
            Ok(ctx) => ctx,
            Err(e) => {
                dev.stats.set_online(false);
                dev.stats.errors.fetch_add(1, Relaxed);
                let delay = backoff.next_delay();
                tracing::warn!(device = %dev.plan.device, "connect failed: {e}; retry in {delay:?}");
                if !wait_offline(delay, &mut cmds, &e).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(device = %dev.plan.device, %addr, "connected");
        let mut ticker = tokio::time::interval(dev.plan.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let ts_ms = protocols::time::now_ms();
                    let outcome = poll::poll_device(&mut ctx, &dev.plan).await;
                    let broken = outcome.link_broken;
                    let reason = outcome
                        .failures
                        .last()
                        .map(|(_, f)| f.to_string())
                        .unwrap_or_default();
                    if outcome.any_ok() {
                        backoff.reset();
                    }
                    dev.finish_poll(outcome, ts_ms, &out, &metrics);
                    if broken {
                        break reason;
                    }
                }
                cmd = cmds.recv() => {
                    let Some(DeviceCommand::Set { values, reply, .. }) = cmd else { return };
                    let (result, broken) = dev.set(&mut ctx, &values, &out, &metrics).await;
                    let reason = result.as_ref().err().cloned().unwrap_or_default();
                    let _ = reply.send(result);
                    if broken {
                        break reason;
                    }
                }
            }
        };
        dev.stats.set_online(false);
        let delay = backoff.next_delay();
        tracing::warn!(device = %dev.plan.device, "link lost: {why}; reconnect in {delay:?}");
        drop(ctx);
        if !wait_offline(delay, &mut cmds, &why).await {
            return;
        }
    }
}
