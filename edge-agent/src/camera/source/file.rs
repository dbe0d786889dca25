//! Local clips, played at `fps` in real time: H.264 Annex-B (the same decoder path as RTSP,
//! without a network) or Motion JPEG (the same path as HTTP snapshots). Both are what
//! `ffmpeg -f h264` / `ffmpeg -f mjpeg` write, and neither needs a container parser.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::decode::{
    annex_b_access_units, annex_b_is_disposable, annex_b_is_keyframe, mjpeg_pictures,
};
use super::super::settings::{CameraSettings, FileFormat};
use super::super::stream::{Backoff, Frame, FrameData, FrameSink};
use super::sleep_until;
use protocols::time::now_ms;

/// Largest clip read (it is held in memory).
const MAX_FILE_BYTES: u64 = 512 << 20;

fn load(path: &PathBuf, format: FileFormat) -> Result<(Bytes, Vec<(usize, usize)>), String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{len} bytes; at most {MAX_FILE_BYTES} are read"));
    }
    let data = Bytes::from(std::fs::read(path).map_err(|e| e.to_string())?);
    let units = match format {
        FileFormat::H264AnnexB => annex_b_access_units(&data),
        FileFormat::Mjpeg => mjpeg_pictures(&data),
    };
    if units.is_empty() {
        return Err("no pictures in the file".into());
    }
    Ok((data, units))
}

pub(super) fn run(
    path: PathBuf,
    format: FileFormat,
    settings: CameraSettings,
    mut sink: FrameSink,
    stop: std::sync::Arc<AtomicBool>,
) {
    let period = Duration::from_secs_f64(1.0 / settings.fps);
    let mut backoff = Backoff::new(settings.reconnect_min.0, settings.reconnect_max.0);
    loop {
        let (data, units) = match load(&path, format) {
            Ok(x) => x,
            Err(why) => {
                let why = format!("{}: {why}", path.display());
                if sink.state().set_offline(why.clone()) || sink.state().sessions() == 0 {
                    tracing::warn!("camera file unusable: {why}");
                }
                if !sleep_until(Instant::now() + backoff.next_delay(), &stop) {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        sink.restart();
        sink.state().count_session();
        let mut next = Instant::now();
        loop {
            for &(a, b) in &units {
                if !sleep_until(next, &stop) {
                    return;
                }
                next += period;
                // A late thread does not burst to catch up: real cameras do not either.
                let now = Instant::now();
                if next < now {
                    next = now;
                }
                let unit = data.slice(a..b);
                let bytes = unit.len();
                let payload = match format {
                    FileFormat::H264AnnexB => FrameData::H264 {
                        keyframe: annex_b_is_keyframe(&unit),
                        disposable: annex_b_is_disposable(&unit),
                        after_loss: false,
                        unit,
                    },
                    FileFormat::Mjpeg => FrameData::Jpeg(unit),
                };
                let frame = Frame {
                    ts_ms: now_ms(),
                    received: Instant::now(),
                    data: payload,
                };
                if sink.push(frame, bytes).is_err() {
                    return;
                }
            }
            if !settings.loop_file {
                sink.state().set_offline("end of file".into());
                // Stay stopped (offline) until the camera is stopped or reloaded.
                while sleep_until(Instant::now() + Duration::from_secs(1), &stop) {}
                return;
            }
        }
    }
}
