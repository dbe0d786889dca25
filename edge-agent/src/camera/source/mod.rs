//! Sources: tasks that bring a camera's pictures to its analysis thread.
//!
//! Network sources (RTSP, HTTP) are async tasks on the agent's runtime: they only move bytes.
//! Sources that compute their pictures (synthetic scenes, optionally H.264-encoded) or pace a
//! local file run on a thread of their own. Either way they hand pictures to a [`FrameSink`]
//! that never blocks them, and they end when the analysis thread is gone.

mod file;
mod http;
mod rtsp;
mod synthetic;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::settings::{CameraConfig, SourceSpec};
use super::stream::FrameSink;

/// A running source, to be stopped.
pub(crate) enum SourceRunner {
    /// An async task on the runtime.
    Task(tokio::task::JoinHandle<()>),
    /// A thread of its own, polling a stop flag.
    Thread {
        stop: Arc<AtomicBool>,
        handle: std::thread::JoinHandle<()>,
    },
}

impl SourceRunner {
    /// Asks the source to end. Dropping the sink then ends the analysis thread.
    pub(crate) fn stop(&self) {
        match self {
            SourceRunner::Task(t) => t.abort(),
            SourceRunner::Thread { stop, .. } => stop.store(true, Ordering::Release),
        }
    }

    /// Waits for a thread source to end (tasks end at their next await point).
    pub(crate) fn join(self) {
        if let SourceRunner::Thread { handle, .. } = self {
            let _ = handle.join();
        }
    }
}

/// Starts the source of `cfg`, feeding `sink`.
pub(crate) fn spawn(
    cfg: &CameraConfig,
    sink: FrameSink,
    rt: &tokio::runtime::Handle,
) -> std::io::Result<SourceRunner> {
    let settings = cfg.settings.clone();
    let thread = |name: String, f: Box<dyn FnOnce(Arc<AtomicBool>) + Send>| {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new().name(name).spawn(move || f(s))?;
        Ok(SourceRunner::Thread { stop, handle })
    };
    match &cfg.source {
        SourceSpec::Rtsp { url, credentials } => Ok(SourceRunner::Task(rt.spawn(rtsp::run(
            url.clone(),
            credentials.clone(),
            settings,
            sink,
        )))),
        SourceSpec::Http { url } => Ok(SourceRunner::Task(rt.spawn(http::run(
            url.clone(),
            settings,
            sink,
        )))),
        SourceSpec::File { path, format } => {
            let (path, format) = (path.clone(), *format);
            thread(
                format!("cam-src-{}", cfg.id),
                Box::new(move |stop| file::run(path, format, settings, sink, stop)),
            )
        }
        SourceSpec::Synthetic(scene) => {
            let scene = scene.clone();
            thread(
                format!("cam-src-{}", cfg.id),
                Box::new(move |stop| synthetic::run(scene, sink, stop)),
            )
        }
    }
}

/// Sleeps until `deadline` in short steps, so a stop request is seen within 50 ms.
/// Returns false when asked to stop.
fn sleep_until(deadline: std::time::Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(std::time::Duration::from_millis(50)));
    }
}
