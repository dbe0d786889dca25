//! One PostgreSQL server in a temporary directory.
//!
//! PostgreSQL refuses to run as root; when this process is root (CI, the demo machine) every
//! program runs as the `postgres` user that Debian's package creates (`setpriv`, which execs
//! rather than forks, so the child is the postmaster itself).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{EngineError, log_tail, ports, wait_until};

/// The database user the servers are made with (trust authentication on loopback only).
pub const USER: &str = "hub";
/// The database created in every server.
pub const DATABASE: &str = "district";
/// How long a start may take.
const START_LIMIT: Duration = Duration::from_secs(60);
/// First starts tried before giving up (each on another port).
const ATTEMPTS: usize = 3;

/// A running (or stopped) PostgreSQL server; stopped immediately and removed when dropped.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    /// `initdb`, start, create [`DATABASE`]. Blocks until the server takes connections.
    pub fn start() -> Result<Postgres, EngineError> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("district-pg").tempdir()?;
        let as_root = is_root();
        if as_root {
            run(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(dir.path()),
                "chown",
            )?;
        }
        let data = dir.path().join("data");
        run(
            user_command(&bin.join("initdb"), as_root)
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    USER,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--locale=C",
                ]),
            "initdb",
        )?;
        let mut pg = Postgres {
            bin,
            port: ports::free_port()?,
            dir,
            child: None,
        };
        // A port found free may be taken before the server binds it (tests run in parallel):
        // a server that exits at once is started again on another port.
        let mut started = pg.start_again();
        for _ in 1..ATTEMPTS {
            if started.is_ok() || pg.child.is_some() {
                break;
            }
            pg.port = ports::free_port()?;
            started = pg.start_again();
        }
        started?;
        run(
            Command::new(pg.bin.join("createdb")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                USER,
                DATABASE,
            ]),
            "createdb",
        )?;
        Ok(pg)
    }

    /// The connection URL of [`DATABASE`].
    pub fn url(&self) -> String {
        format!("postgresql://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server on its data directory (again, after a stop or a kill) and waits until
    /// it takes connections.
    pub fn start_again(&mut self) -> Result<(), EngineError> {
        if let Some(c) = self.child.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            return Ok(());
        }
        let log = self.log_path();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = user_command(&self.bin.join("postgres"), is_root())
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group, as nats-server's: Ctrl-C reaches the demo, not the engine.
            .process_group(0)
            .spawn()
            .map_err(|e| EngineError::Failed {
                what: "starting postgres".into(),
                detail: e.to_string(),
            })?;
        self.child = Some(child);
        let (bin, port) = (self.bin.clone(), self.port);
        let mut exited = false;
        let ready = wait_until(START_LIMIT, || {
            if let Some(c) = self.child.as_mut()
                && matches!(c.try_wait(), Ok(Some(_)))
            {
                exited = true;
                return true;
            }
            is_ready(&bin, port)
        });
        if exited {
            // Gone at once (e.g. its port taken): nothing is running.
            self.child = None;
        }
        if !ready || exited {
            return Err(EngineError::NotReady {
                what: format!("postgres on port {port}"),
                waited: START_LIMIT,
                log: log_tail(&log, 2000),
            });
        }
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: the server quits without a checkpoint, as after a crash
    /// (its next start replays the WAL). Returns when the postmaster has exited.
    pub fn stop_immediate(&mut self) -> Result<(), EngineError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let stopped = run(
            user_command(&self.bin.join("pg_ctl"), is_root())
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        );
        if stopped.is_err() {
            let _ = child.kill();
        }
        let _ = child.wait();
        stopped
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Immediate: nothing is worth a checkpoint in a directory about to be removed.
            let _ = user_command(&self.bin.join("pg_ctl"), is_root())
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Debian keeps the server programs out of PATH, under `/usr/lib/postgresql/{major}/bin`;
/// `PG_BIN` overrides. The newest major is taken.
fn bin_dir() -> Result<PathBuf, EngineError> {
    if let Some(d) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| EngineError::Missing {
            program: "postgres".into(),
            hint: "looked in /usr/lib/postgresql/*/bin and PG_BIN".into(),
        })
}

fn is_root() -> bool {
    // `id -u` rather than a libc call: this crate stays free of unsafe code and bindings.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// `program`, as the `postgres` user when this process is root.
fn user_command(program: &Path, as_root: bool) -> Command {
    if as_root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn is_ready(bin: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command, what: &str) -> Result<(), EngineError> {
    let out = cmd.output().map_err(|e| EngineError::Failed {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EngineError::Failed {
            what: what.into(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}
