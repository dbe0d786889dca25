//! End-to-end tests live in `tests/tests/`; this library holds what they share: the main of
//! the test binaries (`test-hub`, `video-agent`), the repository root, free ports, and child
//! processes that die with the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

/// The main of a test binary taking `--config FILE`: logs to stderr (`RUST_LOG`), runs `run`
/// on the file, and exits non-zero with one line naming `program` when it fails.
pub fn main_with_config(program: &str, run: impl FnOnce(&Path) -> anyhow::Result<()>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let config = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => path,
        _ => {
            eprintln!("usage: {program} --config FILE");
            return ExitCode::FAILURE;
        }
    };
    match run(Path::new(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime the test binaries serve on: two workers, like the machine.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process, SIGKILLed and reaped on drop (so a failing test leaves nothing behind).
pub struct Proc(Option<Child>);

impl Proc {
    /// Takes charge of a started child.
    pub fn new(child: Child) -> Proc {
        Proc(Some(child))
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then its exit status once it has stopped; `None` if it had not stopped within
    /// `within` (it is then killed).
    pub async fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = self.0.as_ref()?.id();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "SIGTERM to {pid}");
        let status = self.exited(within).await;
        if status.is_none() {
            self.kill();
        }
        status
    }

    /// Waits until the process has exited on its own; `None` if it is still running after
    /// `within`.
    pub async fn exited(&mut self, within: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + within;
        loop {
            let c = self.0.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.0 = None;
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The hub as a process (`test-hub`), killed on drop.
pub struct HubProc {
    /// The process.
    pub proc: Proc,
    /// Its HTTP address (from its `ready` line).
    pub http: std::net::SocketAddr,
}

impl HubProc {
    /// Starts `BIN --config CONFIG` (with `HUB_FAILPOINT` when given; `RUST_LOG` from the
    /// test's environment, `error` by default) and waits up to `within` for its `ready` line.
    pub async fn start(
        bin: &Path,
        config: &Path,
        failpoint: Option<&str>,
        within: Duration,
    ) -> HubProc {
        use std::io::BufRead;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .env_remove("HUB_FAILPOINT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped());
        if let Some(f) = failpoint {
            cmd.env("HUB_FAILPOINT", f);
        }
        let mut child = cmd.spawn().expect("start test-hub");
        let out = child.stdout.take().expect("piped stdout");
        let proc = Proc::new(child);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = tokio::time::timeout(within, rx.recv())
            .await
            .expect("the hub is ready in time")
            .expect("the hub printed its ready line");
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .unwrap_or_else(|| panic!("no http address in {line:?}"))
            .parse()
            .expect("an address after http=");
        HubProc { proc, http }
    }
}
