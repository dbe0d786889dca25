//! HTTP JPEG snapshot cameras: the URL is fetched every `poll_interval` (credentials in the URL
//! go as basic auth). The blocking client runs on the runtime's blocking pool, never on an I/O
//! thread. A failed fetch counts one lost picture; no good picture for `stall_timeout` marks
//! the camera offline, and failures back off exponentially (never faster than the poll).

use std::time::{Duration, Instant};

use bytes::Bytes;
use url::Url;

use super::super::settings::{CameraSettings, redact};
use super::super::stream::{Backoff, Frame, FrameData, FrameSink};
use protocols::time::now_ms;

/// Largest snapshot accepted.
const MAX_JPEG_BYTES: u64 = 16 << 20;

fn fetch(agent: &ureq::Agent, url: &str) -> Result<Bytes, String> {
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_JPEG_BYTES)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    if !body.starts_with(&[0xFF, 0xD8]) {
        return Err(format!("not a JPEG ({} bytes)", body.len()));
    }
    Ok(Bytes::from(body))
}

pub(super) async fn run(url: Url, settings: CameraSettings, mut sink: FrameSink) {
    let shown = redact(url.as_str());
    let poll = settings.poll_interval.0;
    let timeout = settings.stall_timeout.0.min(Duration::from_secs(10));
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(true)
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut backoff = Backoff::new(
        settings.reconnect_min.0.max(poll),
        settings.reconnect_max.0.max(poll),
    );
    let mut last_good = Instant::now();
    let mut failing = false;
    sink.state().count_session();
    loop {
        let started = Instant::now();
        let (a, u) = (agent.clone(), url.to_string());
        let got = tokio::task::spawn_blocking(move || fetch(&a, &u))
            .await
            .unwrap_or_else(|e| Err(format!("fetch task failed: {e}")));
        match got {
            Ok(jpeg) => {
                if failing {
                    failing = false;
                    sink.state().count_session();
                    tracing::info!(url = %shown, "camera online");
                }
                backoff.reset();
                last_good = Instant::now();
                let bytes = jpeg.len();
                let frame = Frame {
                    ts_ms: now_ms(),
                    received: Instant::now(),
                    data: FrameData::Jpeg(jpeg),
                };
                if sink.push(frame, bytes).is_err() {
                    return;
                }
                tokio::time::sleep(poll.saturating_sub(started.elapsed())).await;
            }
            Err(why) => {
                sink.state().count_lost(1);
                sink.state().note_error(why.clone());
                failing = true;
                if last_good.elapsed() >= settings.stall_timeout.0 {
                    if sink.state().set_offline(why.clone()) {
                        tracing::warn!(url = %shown, "camera offline: {why}");
                    }
                } else {
                    tracing::debug!(url = %shown, "snapshot failed: {why}");
                }
                tokio::time::sleep(backoff.next_delay().saturating_sub(started.elapsed())).await;
            }
        }
    }
}
