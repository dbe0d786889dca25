//! RTSP cameras through `retina`: DESCRIBE, SETUP of the first H.264 video stream, PLAY, then
//! access units (Annex-B with inline parameter sets) to analysis. A session that fails or
//! stalls (no picture for `stall_timeout`) marks the camera offline and is replaced after an
//! exponential, jittered delay.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use retina::client::{Credentials, PlayOptions, Session, SessionOptions, SetupOptions, Transport};
use retina::codec::{CodecItem, FrameFormat};
use url::Url;

use super::super::decode::annex_b_is_disposable;
use super::super::settings::{CameraSettings, RtspTransport};
use super::super::stream::{Backoff, Frame, FrameData, FrameSink};
use protocols::time::now_ms;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("{0}")]
    Rtsp(#[from] retina::Error),
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    #[error("no picture for {0:?} (stalled)")]
    Stalled(Duration),
    #[error("the server ended the stream")]
    Ended,
    #[error("no H.264 video stream in the session description")]
    NoH264,
    /// The analysis thread is gone: stop, this is not a failure.
    #[error("stopping")]
    Stopping,
}

pub(super) async fn run(
    url: Url,
    credentials: Option<(String, String)>,
    settings: CameraSettings,
    mut sink: FrameSink,
) {
    let mut backoff = Backoff::new(settings.reconnect_min.0, settings.reconnect_max.0);
    let creds = credentials.map(|(username, password)| Credentials { username, password });
    loop {
        match session(&url, creds.clone(), &settings, &mut sink, &mut backoff).await {
            SessionEnd::Stopping => return,
            why => {
                let was_online = sink.state().set_offline(why.to_string());
                if was_online {
                    tracing::warn!(url = %url, "camera offline: {why}");
                } else {
                    tracing::debug!(url = %url, "camera still unreachable: {why}");
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn session(
    url: &Url,
    creds: Option<Credentials>,
    settings: &CameraSettings,
    sink: &mut FrameSink,
    backoff: &mut Backoff,
) -> SessionEnd {
    match play(url, creds, settings, sink, backoff).await {
        Ok(never) => match never {},
        Err(end) => end,
    }
}

async fn play(
    url: &Url,
    creds: Option<Credentials>,
    settings: &CameraSettings,
    sink: &mut FrameSink,
    backoff: &mut Backoff,
) -> Result<std::convert::Infallible, SessionEnd> {
    let stall = settings.stall_timeout.0;
    // Connecting gets at least a few seconds even with a short stall timeout.
    let step = stall.max(Duration::from_secs(3));
    let within = |what, d| move |_| SessionEnd::Timeout(what, d);
    let options = SessionOptions::default()
        .creds(creds)
        .user_agent(format!("district-edge-agent/{}", env!("CARGO_PKG_VERSION")));
    let mut described = tokio::time::timeout(step, Session::describe(url.clone(), options))
        .await
        .map_err(within("DESCRIBE", step))??;
    let index = described
        .streams()
        .iter()
        .position(|s| s.media() == "video" && s.encoding_name().eq_ignore_ascii_case("h264"))
        .ok_or(SessionEnd::NoH264)?;
    let transport = match settings.rtsp_transport {
        RtspTransport::Tcp => Transport::default(),
        RtspTransport::Udp => "udp".parse().map_err(SessionEnd::Rtsp)?,
    };
    let setup = SetupOptions::default()
        .transport(transport)
        .frame_format(FrameFormat::SIMPLE);
    tokio::time::timeout(step, described.setup(index, setup))
        .await
        .map_err(within("SETUP", step))??;
    let playing = tokio::time::timeout(step, described.play(PlayOptions::default()))
        .await
        .map_err(within("PLAY", step))??;
    let mut frames = playing.demuxed()?;
    sink.restart();
    sink.state().count_session();
    let mut first = true;
    loop {
        let item = match tokio::time::timeout(stall, frames.next()).await {
            Err(_) => return Err(SessionEnd::Stalled(stall)),
            Ok(None) => return Err(SessionEnd::Ended),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(item))) => item,
        };
        let CodecItem::VideoFrame(frame) = item else {
            continue;
        };
        if first {
            first = false;
            backoff.reset();
            tracing::info!(url = %url, "camera online");
        }
        let keyframe = frame.is_random_access_point();
        let after_loss = frame.loss() > 0;
        if after_loss {
            sink.state().count_lost(1);
        }
        let unit = Bytes::from(frame.into_data());
        let bytes = unit.len();
        let disposable = annex_b_is_disposable(&unit);
        let picture = Frame {
            ts_ms: now_ms(),
            received: Instant::now(),
            data: FrameData::H264 {
                unit,
                keyframe,
                disposable,
                after_loss,
            },
        };
        sink.push(picture, bytes)
            .map_err(|_| SessionEnd::Stopping)?;
    }
}
