//! Synthetic scenes on a thread of their own (rendering, and H.264 encoding when asked, is
//! CPU work), paced at the scene's frame rate. While the scene is dark no picture is sent, so
//! the camera stalls and goes offline like a real one.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::settings::SceneSpec;
use super::super::stream::{Frame, FrameData, FrameSink};
use super::super::synthetic::Scene;
use super::sleep_until;
use protocols::time::now_ms;

struct H264Encoder {
    inner: openh264::encoder::Encoder,
}

impl H264Encoder {
    fn new(spec: &SceneSpec) -> Result<H264Encoder, openh264::Error> {
        use openh264::encoder::{BitRate, EncoderConfig, FrameRate, IntraFramePeriod};
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(spec.width * spec.height * 4))
            .max_frame_rate(FrameRate::from_hz(spec.fps as f32))
            .intra_frame_period(IntraFramePeriod::from_num_frames(
                (spec.fps * 2.0).round() as u32
            ));
        let inner = openh264::encoder::Encoder::with_api_config(
            openh264::OpenH264API::from_source(),
            config,
        )?;
        Ok(H264Encoder { inner })
    }

    fn encode(
        &mut self,
        pic: &super::super::picture::I420,
    ) -> Result<(Bytes, bool), openh264::Error> {
        let yuv = openh264::formats::YUVBuffer::from_vec(
            pic.as_bytes().to_vec(),
            pic.width(),
            pic.height(),
        );
        let out = self.inner.encode(&yuv)?;
        let key = matches!(
            out.frame_type(),
            openh264::encoder::FrameType::IDR | openh264::encoder::FrameType::I
        );
        Ok((Bytes::from(out.to_vec()), key))
    }
}

pub(super) fn run(spec: SceneSpec, mut sink: FrameSink, stop: Arc<AtomicBool>) {
    let mut scene = Scene::new(&spec);
    let mut encoder = if spec.h264 {
        match H264Encoder::new(&spec) {
            Ok(e) => Some(e),
            Err(e) => {
                sink.state().set_offline(format!("h264 encoder: {e}"));
                tracing::warn!("synthetic camera cannot encode: {e}");
                None
            }
        }
    } else {
        None
    };
    let period = Duration::from_secs_f64(1.0 / spec.fps);
    let start = Instant::now();
    let mut next = start;
    let mut dark = true;
    loop {
        if !sleep_until(next, &stop) {
            return;
        }
        let t = next.duration_since(start).as_secs_f64() * spec.speed;
        next += period;
        if next < Instant::now() {
            next = Instant::now();
        }
        let Some(pic) = scene.render(t) else {
            dark = true;
            continue;
        };
        if dark {
            dark = false;
            sink.restart();
            sink.state().count_session();
            // The analysis starts again from a keyframe: give it one at once.
            if let Some(e) = encoder.as_mut() {
                e.inner.force_intra_frame();
            }
        }
        let (payload, bytes) = match encoder.as_mut() {
            Some(enc) => match enc.encode(&pic) {
                Ok((unit, keyframe)) => {
                    let n = unit.len();
                    (
                        FrameData::H264 {
                            unit,
                            keyframe,
                            disposable: false,
                            after_loss: false,
                        },
                        n,
                    )
                }
                Err(e) => {
                    tracing::debug!("synthetic encode failed: {e}");
                    sink.state().count_lost(1);
                    continue;
                }
            },
            // Raw pictures cost no bandwidth: the bitrate reads 0.
            None => (FrameData::Raw(Arc::new(pic)), 0),
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
}
