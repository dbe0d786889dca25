//! A `nats-server` cluster with JetStream, one process per node.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{EngineError, log_tail, ports, wait_until};

/// How long a node (or the cluster's meta leader election) may take.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Starts tried before giving up (each on new ports).
const ATTEMPTS: usize = 3;

/// One node's ports and files.
struct Node {
    name: String,
    client: u16,
    route: u16,
    monitor: u16,
    child: Option<Child>,
}

/// A running JetStream cluster; every node is killed and its directory removed when dropped.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts `n` nodes (`n1`..`nN`, cluster `district`) and waits until JetStream has a meta
    /// leader, so streams can be created at once.
    pub fn start(n: usize) -> Result<NatsCluster, EngineError> {
        let program = which("nats-server")?;
        let mut last = None;
        // A port found free may be taken by another process before the node binds it (tests
        // run in parallel): a node that exits at once is started again on new ports.
        for _ in 0..ATTEMPTS {
            let dir = tempfile::Builder::new().prefix("district-nats").tempdir()?;
            let mut nodes = Vec::with_capacity(n);
            for i in 1..=n.max(1) {
                nodes.push(Node {
                    name: format!("n{i}"),
                    client: ports::free_port()?,
                    route: ports::free_port()?,
                    monitor: ports::free_port()?,
                    child: None,
                });
            }
            let mut cluster = NatsCluster { dir, nodes };
            for i in 0..cluster.nodes.len() {
                cluster.write_config(i)?;
                cluster.spawn(i, &program)?;
            }
            match cluster.wait_ready() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| EngineError::Failed {
            what: "starting nats-server".into(),
            detail: "no attempt made".into(),
        }))
    }

    /// The client URLs, `nats://127.0.0.1:PORT`, node by node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect()
    }

    /// The node names (`n1`, ...), in the order of [`urls`](Self::urls).
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// SIGKILL of node `i` (no goodbye to its peers, no flush); returns once it has exited.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes.get_mut(i).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on its store directory and ports; returns once it answers its
    /// health check (it then catches up with the cluster by itself).
    pub fn restart(&mut self, i: usize) -> Result<(), EngineError> {
        let program = which("nats-server")?;
        if self.nodes.get(i).is_some_and(|n| n.child.is_none()) {
            self.spawn(i, &program)?;
        }
        let monitor = self.nodes.get(i).map_or(0, |n| n.monitor);
        if !wait_until(START_LIMIT, || {
            http_get(monitor, "/healthz").is_some_and(|b| b.contains("ok"))
        }) {
            return Err(self.not_ready(i));
        }
        Ok(())
    }

    /// The JetStream monitoring document (`/jsz?streams=true...`) of node `i`, for tests that
    /// look for a stream's leader.
    pub fn jsz(&self, i: usize, query: &str) -> Option<String> {
        let n = self.nodes.get(i)?;
        n.child.as_ref()?;
        http_get(n.monitor, &format!("/jsz?{query}"))
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.conf", self.nodes[i].name))
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    fn write_config(&self, i: usize) -> Result<(), EngineError> {
        let n = &self.nodes[i];
        let routes: Vec<String> = self
            .nodes
            .iter()
            .filter(|o| o.name != n.name)
            .map(|o| format!("\"nats-route://127.0.0.1:{}\"", o.route))
            .collect();
        let store = self.dir.path().join(&n.name);
        let cluster = if self.nodes.len() > 1 {
            format!(
                "cluster {{\n  name: district\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                n.route,
                routes.join(", ")
            )
        } else {
            String::new()
        };
        let text = format!(
            "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
             max_payload: 8MB\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 8GB\n}}\n{}",
            n.name,
            n.client,
            n.monitor,
            store.display(),
            cluster
        );
        std::fs::write(self.config_path(i), text)?;
        Ok(())
    }

    fn spawn(&mut self, i: usize, program: &Path) -> Result<(), EngineError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let child = Command::new(program)
            .arg("-c")
            .arg(self.config_path(i))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C at a terminal (`sim demo --cluster`) reaches the
            // demo, which stops its hubs before the engines they hand partitions over through.
            .process_group(0)
            .spawn()
            .map_err(|e| EngineError::Failed {
                what: format!("starting nats-server {}", self.nodes[i].name),
                detail: e.to_string(),
            })?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Every node healthy and a JetStream meta leader known; fails at once when a node exits
    /// (a port taken in the meantime).
    fn wait_ready(&mut self) -> Result<(), EngineError> {
        let count = self.nodes.len();
        for i in 0..count {
            let monitor = self.nodes[i].monitor;
            let mut exited = false;
            let ok = wait_until(START_LIMIT, || {
                if let Some(c) = self.nodes[i].child.as_mut()
                    && matches!(c.try_wait(), Ok(Some(_)))
                {
                    exited = true;
                    return true;
                }
                http_get(monitor, "/jsz").is_some_and(|b| has_meta_leader(&b, count))
            });
            if !ok || exited {
                let e = self.not_ready(i);
                for k in 0..count {
                    self.kill(k);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn not_ready(&self, i: usize) -> EngineError {
        EngineError::NotReady {
            what: format!("nats-server {}", self.nodes[i].name),
            waited: START_LIMIT,
            log: log_tail(&self.log_path(i), 2000),
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A single node has no meta group to wait for; a cluster's `/jsz` names its meta leader once
/// elected.
fn has_meta_leader(jsz: &str, nodes: usize) -> bool {
    if nodes <= 1 {
        return jsz.contains("\"config\"");
    }
    jsz.split("\"meta_cluster\"")
        .nth(1)
        .is_some_and(|m| m.contains("\"leader\""))
}

fn which(program: &str) -> Result<PathBuf, EngineError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(program))
        .find(|p| p.exists())
        .ok_or_else(|| EngineError::Missing {
            program: program.into(),
            hint: "looked in PATH and /usr/sbin".into(),
        })
}

/// A plain HTTP/1.0 GET of the monitoring port: the body, or `None` when nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    // Go answers in the request's version: `HTTP/1.0 200 OK`.
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}
