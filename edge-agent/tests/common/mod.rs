//! Test harness: real peers (pymodbus, mosquitto, socat) started on free ports and killed on
//! drop, plus a test peer that plays the hub's side of the agent protocol.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A profile shipped in `profiles/`.
pub fn profile(name: &str) -> PathBuf {
    root().join("profiles").join(name)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Async flavour of [`wait_until`].
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A child process killed (SIGKILL) and reaped on drop, with its stdout lines collected.
pub struct Proc {
    pub child: Option<Child>,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        if std::env::var_os("TEST_VERBOSE").is_none() {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Proc {
            child: Some(child),
            lines,
            name: name.to_string(),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (graceful) and wait.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.as_ref()?.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        self.wait_exit(timeout)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// A pymodbus server for the devices of `spec` (JSON, see tests/peers/modbus_server.py).
pub struct ModbusPeer {
    pub proc: Proc,
    pub port: u16,
    spec: PathBuf,
}

impl ModbusPeer {
    pub fn tcp(dir: &Path, spec: &serde_json::Value, port: u16) -> ModbusPeer {
        let path = dir.join(format!("spec-{port}.json"));
        std::fs::write(&path, spec.to_string()).unwrap();
        let proc = Self::start_tcp(&path, port);
        ModbusPeer {
            proc,
            port,
            spec: path,
        }
    }

    fn start_tcp(spec: &Path, port: u16) -> Proc {
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("edge-agent/tests/peers/modbus_server.py"))
            .arg("--spec")
            .arg(spec)
            .arg("--tcp")
            .arg(port.to_string());
        let p = Proc::spawn("pymodbus", cmd);
        assert!(
            wait_port(port, Duration::from_secs(15)),
            "pymodbus did not start on {port}"
        );
        p
    }

    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Self::start_tcp(&self.spec, self.port);
    }

    /// The REQ lines: (unit, fc, addr, count).
    pub fn requests(&self) -> Vec<(u8, u8, u16, u16)> {
        parse_requests(&self.proc.lines())
    }

    pub fn writes(&self) -> Vec<String> {
        self.proc
            .lines()
            .into_iter()
            .filter(|l| l.starts_with("WRITE"))
            .collect()
    }
}

pub fn parse_requests(lines: &[String]) -> Vec<(u8, u8, u16, u16)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("REQ "))
        .map(|l| {
            let f: Vec<u64> = l
                .split(' ')
                .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
                .collect();
            (f[0] as u8, f[1] as u8, f[2] as u16, f[3] as u16)
        })
        .collect()
}

/// A mosquitto broker on a free port.
pub struct Mosquitto {
    pub proc: Proc,
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_on(dir, free_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Mosquitto {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 100\nlog_type error\n"
            ),
        )
        .unwrap();
        let proc = Self::run(&conf, port);
        Mosquitto { proc, port, conf }
    }

    fn run(conf: &Path, port: u16) -> Proc {
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(conf);
        let p = Proc::spawn("mosquitto", cmd);
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "mosquitto did not start on {port}"
        );
        p
    }

    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Self::run(&self.conf, self.port);
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Writes an agent.toml into `dir` and returns its path.
pub fn write_agent_toml(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The edge-agent binary under test.
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"))
}

/// Starts `edge-agent --config FILE`.
pub fn start_agent(config: &Path) -> Proc {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--config").arg(config);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "edge_agent=debug");
    }
    Proc::spawn("edge-agent", cmd)
}
