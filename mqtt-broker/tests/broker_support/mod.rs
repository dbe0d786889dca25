//! Shared by the broker tests: a test authenticator, a pipeline stand-in that records events
//! and answers `done`, and helpers for real clients (rumqttc, mosquitto_pub/sub, raw TCP).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use mqtt_broker::ingress::{AuthError, Authenticator, Disposition, IngressEvent};
use mqtt_broker::{Broker, BrokerConfig, BrokerHandle};
use parking_lot::Mutex;
use protocols::access::{Principal, grant_filter};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc, oneshot};

/// Longest any test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// id -> (secret, principal). Deliberately does not check client ids: the broker must.
pub struct TestAuth(HashMap<String, (String, Arc<Principal>)>);

impl TestAuth {
    /// The identities every broker test uses.
    pub fn standard() -> TestAuth {
        let app = |id: &str, grants: &[&str]| Principal::App {
            id: id.into(),
            grants: grants.iter().map(|g| grant_filter(g).unwrap()).collect(),
        };
        let mut m = HashMap::new();
        let mut add = |id: &str, secret: &str, p: Principal| {
            m.insert(id.to_string(), (secret.to_string(), Arc::new(p)));
        };
        add("WL-1", "s1", Principal::Device("WL-1".into()));
        add("WL-2", "s2", Principal::Device("WL-2".into()));
        add("AG-1", "a1", Principal::Agent("AG-1".into()));
        add(
            "ops",
            "opss",
            app(
                "ops",
                &["devices/#", "agents/#", "status/#", "twin/#", "feeds/#"],
            ),
        );
        add("narrow", "ns", app("narrow", &["feeds/water_level/#"]));
        TestAuth(m)
    }
}

impl Authenticator for TestAuth {
    fn authenticate(
        &self,
        _client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> impl std::future::Future<Output = Result<Arc<Principal>, AuthError>> + Send {
        let found = username
            .and_then(|u| self.0.get(u))
            .filter(|(secret, _)| password == Some(secret.as_bytes()))
            .map(|(_, p)| p.clone());
        async move { found.ok_or(AuthError::BadCredentials) }
    }
}

/// An event as the test pipeline saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A message handed to the pipeline.
    Message {
        client_id: String,
        topic: String,
        payload: Vec<u8>,
        acked: bool,
    },
    /// A refused publish or subscribe.
    Refused {
        who: String,
        topic: String,
        reason: String,
    },
    Connected {
        client_id: String,
    },
    Disconnected {
        client_id: String,
        graceful: bool,
    },
}

/// How the test pipeline answers `done`.
#[derive(Clone, Debug)]
pub enum Answer {
    Accept,
    Hold,
    Drop,
    Reject(String),
    NoRoom(String),
}

/// What the test pipeline recorded.
pub struct Pipeline {
    seen: Mutex<Vec<Seen>>,
    changed: Notify,
    pub answer: Mutex<Answer>,
    /// `done` senders kept while answering [`Answer::Hold`].
    pub held: Mutex<Vec<oneshot::Sender<Disposition>>>,
}

impl Pipeline {
    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// Waits until `pred` holds over the events seen (panics after [`WAIT`]).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Seen]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let changed = self.changed.notified();
            if pred(&self.seen.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("timed out waiting for {what}; seen: {:#?}", self.seen());
            }
        }
    }

    /// Messages seen on `topic`.
    pub fn messages_on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.seen
            .lock()
            .iter()
            .filter_map(|s| match s {
                Seen::Message {
                    topic: t, payload, ..
                } if t == topic => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }

    /// Refusals seen for `topic`.
    pub fn refusals_of(&self, topic: &str) -> usize {
        self.seen
            .lock()
            .iter()
            .filter(|s| matches!(s, Seen::Refused { topic: t, .. } if t == topic))
            .count()
    }

    /// Releases held `done`s with this disposition, oldest first; returns how many.
    pub fn release(&self, d: Disposition) -> usize {
        let held: Vec<_> = self.held.lock().drain(..).collect();
        let n = held.len();
        for tx in held {
            let _ = tx.send(d.clone());
        }
        n
    }
}

/// A broker on free ports with the test pipeline behind it. Shut down on drop.
pub struct TestBroker {
    pub broker: BrokerHandle,
    pub addr: SocketAddr,
    pub pipeline: Arc<Pipeline>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        TestBroker::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        let mut config = BrokerConfig::new(vec!["127.0.0.1:0".parse().unwrap()]);
        tune(&mut config);
        let (tx, rx) = mpsc::channel(1024);
        let broker = Broker::start(config, TestAuth::standard(), tx)
            .await
            .unwrap();
        let pipeline = Arc::new(Pipeline {
            seen: Mutex::new(Vec::new()),
            changed: Notify::new(),
            answer: Mutex::new(Answer::Accept),
            held: Mutex::new(Vec::new()),
        });
        tokio::spawn(drain(rx, pipeline.clone()));
        let addr = broker.local_addrs()[0];
        TestBroker {
            broker,
            addr,
            pipeline,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn drain(mut rx: mpsc::Receiver<IngressEvent>, p: Arc<Pipeline>) {
    while let Some(ev) = rx.recv().await {
        let seen = match ev {
            IngressEvent::Message(mut m) => {
                let acked = m.done.is_some();
                let answer = p.answer.lock().clone();
                match answer {
                    Answer::Accept => m.finish(Disposition::Accepted),
                    Answer::Reject(why) => m.finish(Disposition::Rejected(why)),
                    Answer::NoRoom(why) => m.finish(Disposition::NoRoom(why)),
                    Answer::Drop => drop(m.done.take()),
                    Answer::Hold => {
                        if let Some(tx) = m.done.take() {
                            p.held.lock().push(tx);
                        }
                    }
                }
                Seen::Message {
                    client_id: m.client_id.to_string(),
                    topic: m.topic,
                    payload: m.payload.to_vec(),
                    acked,
                }
            }
            IngressEvent::Refused {
                principal,
                topic,
                reason,
                ..
            } => Seen::Refused {
                who: principal.id().to_string(),
                topic,
                reason,
            },
            IngressEvent::Connected { client_id, .. } => Seen::Connected {
                client_id: client_id.to_string(),
            },
            IngressEvent::Disconnected {
                client_id,
                graceful,
                ..
            } => Seen::Disconnected {
                client_id: client_id.to_string(),
                graceful,
            },
        };
        p.seen.lock().push(seen);
        p.changed.notify_waiters();
    }
}

// ---------------------------------------------------------------- rumqttc, MQTT 3.1.1

pub mod v4 {
    use super::*;
    use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions};

    pub fn options(addr: SocketAddr, client_id: &str, user: &str, pass: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        o.set_credentials(user, pass);
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// A connected client whose event loop runs in a task, its events on a channel.
    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        pub session_present: bool,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Connects; Err carries the connection error (e.g. the refusal).
    pub async fn connect(o: MqttOptions) -> Result<Client, ConnectionError> {
        let (client, mut el) = AsyncClient::new(o, 100);
        let session_present = loop {
            match tokio::time::timeout(WAIT, el.poll())
                .await
                .expect("connect timed out")?
            {
                Event::Incoming(Incoming::ConnAck(a)) => break a.session_present,
                _ => continue,
            }
        };
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(el, tx));
        Ok(Client {
            client,
            events,
            session_present,
            task,
        })
    }

    async fn run(mut el: EventLoop, tx: mpsc::UnboundedSender<Result<Event, String>>) {
        loop {
            let r = el.poll().await;
            let stop = r.is_err();
            if tx.send(r.map_err(|e| e.to_string())).is_err() || stop {
                return;
            }
        }
    }

    impl Client {
        /// The next incoming packet matching `pred` (panics after [`WAIT`] or on error).
        pub async fn next_incoming<T>(
            &mut self,
            mut pred: impl FnMut(&Incoming) -> Option<T>,
        ) -> T {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let ev = tokio::time::timeout_at(deadline, self.events.recv())
                    .await
                    .expect("timed out waiting for a packet")
                    .expect("event loop ended");
                match ev {
                    Ok(Event::Incoming(i)) => {
                        if let Some(t) = pred(&i) {
                            return t;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("connection error: {e}"),
                }
            }
        }

        /// Incoming packets during `d`, stopping early on a connection error (returned).
        pub async fn collect_for(&mut self, d: Duration) -> (Vec<Incoming>, Option<String>) {
            let deadline = tokio::time::Instant::now() + d;
            let mut out = Vec::new();
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
                match ev {
                    Ok(Event::Incoming(i)) => out.push(i),
                    Ok(_) => {}
                    Err(e) => return (out, Some(e)),
                }
            }
            (out, None)
        }

        /// The connection error that ends the event loop (panics after [`WAIT`]).
        pub async fn wait_error(&mut self) -> String {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv())
                    .await
                    .expect("timed out waiting for the connection to end")
                {
                    Some(Err(e)) => return e,
                    Some(Ok(_)) => {}
                    None => return "event loop ended".into(),
                }
            }
        }
    }
}

// ---------------------------------------------------------------- rumqttc, MQTT 5

pub mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};

    pub fn options(addr: SocketAddr, client_id: &str, user: &str, pass: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        o.set_credentials(user, pass);
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub struct Client {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
        pub session_present: bool,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn connect(o: MqttOptions) -> Result<Client, ConnectionError> {
        let (client, mut el) = AsyncClient::new(o, 100);
        let session_present = loop {
            match tokio::time::timeout(WAIT, el.poll())
                .await
                .expect("connect timed out")?
            {
                Event::Incoming(Packet::ConnAck(a)) => break a.session_present,
                _ => continue,
            }
        };
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(el, tx));
        Ok(Client {
            client,
            events,
            session_present,
            task,
        })
    }

    async fn run(mut el: EventLoop, tx: mpsc::UnboundedSender<Result<Event, String>>) {
        loop {
            let r = el.poll().await;
            let stop = r.is_err();
            if tx.send(r.map_err(|e| e.to_string())).is_err() || stop {
                return;
            }
        }
    }

    impl Client {
        /// The connection error that ends the event loop (panics after [`WAIT`]).
        pub async fn wait_error(&mut self) -> String {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv())
                    .await
                    .expect("timed out waiting for the connection to end")
                {
                    Some(Err(e)) => return e,
                    Some(Ok(_)) => {}
                    None => return "event loop ended".into(),
                }
            }
        }

        /// Incoming packets during `d`, stopping early on a connection error (returned).
        pub async fn collect_for(&mut self, d: Duration) -> (Vec<Packet>, Option<String>) {
            let deadline = tokio::time::Instant::now() + d;
            let mut out = Vec::new();
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
                match ev {
                    Ok(Event::Incoming(i)) => out.push(i),
                    Ok(_) => {}
                    Err(e) => return (out, Some(e)),
                }
            }
            (out, None)
        }

        pub async fn next_incoming<T>(&mut self, mut pred: impl FnMut(&Packet) -> Option<T>) -> T {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let ev = tokio::time::timeout_at(deadline, self.events.recv())
                    .await
                    .expect("timed out waiting for a packet")
                    .expect("event loop ended");
                match ev {
                    Ok(Event::Incoming(i)) => {
                        if let Some(t) = pred(&i) {
                            return t;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("connection error: {e}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------- mosquitto clients

/// Runs `mosquitto_pub` to completion; returns (exit success, stderr).
pub async fn mosquitto_pub(port: u16, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        WAIT,
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mosquitto_pub hung")
    .expect("mosquitto_pub runs (install mosquitto-clients)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `mosquitto_sub`, killed on drop; its output lines on a channel.
pub struct MosquittoSub {
    child: Child,
    pub lines: mpsc::UnboundedReceiver<String>,
}

impl MosquittoSub {
    pub async fn spawn(host: &str, port: u16, args: &[&str]) -> MosquittoSub {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", host, "-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub runs (install mosquitto-clients)");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let mut l = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = l.next_line().await {
                let _ = tx.send(line);
            }
        });
        tokio::spawn(async move {
            let mut l = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = l.next_line().await {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        MosquittoSub { child, lines }
    }

    /// The next output line (panics after [`WAIT`]).
    pub async fn next_line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .expect("timed out waiting for mosquitto_sub output")
            .expect("mosquitto_sub ended")
    }

    /// Waits for the process to exit; returns its status code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("mosquitto_sub did not exit")
            .ok()
            .and_then(|s| s.code())
    }

    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

// ---------------------------------------------------------------- raw bytes

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s);
}

fn put_len(b: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut x = (n & 0x7f) as u8;
        n >>= 7;
        if n > 0 {
            x |= 0x80;
        }
        b.push(x);
        if n == 0 {
            break;
        }
    }
}

/// A 3.1.1 CONNECT (clean session) with credentials and keepalive.
pub fn raw_connect(client_id: &str, user: &str, pass: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(4);
    body.push(0xC2);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    put_str(&mut body, user.as_bytes());
    put_str(&mut body, pass.as_bytes());
    let mut out = vec![0x10];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// A PUBLISH (3.1.1) with an arbitrary body size.
pub fn raw_publish(topic: &str, qos: u8, pid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    let mut out = vec![0x30 | (qos << 1)];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Waits until the broker holds `n` subscriptions (a SUBACK from a CLI client is not visible to
/// the test, so poll the gauge with a deadline).
pub async fn wait_subscriptions(b: &TestBroker, n: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while b
        .broker
        .metrics()
        .subscriptions
        .load(std::sync::atomic::Ordering::Relaxed)
        < n
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriptions never reached {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads from a raw socket until the peer closes it (true) or [`WAIT`] passes (false).
pub async fn closed_by_peer(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// An MQTT 5 CONNECT (clean start, no properties) with credentials and keepalive.
pub fn raw_connect_v5(client_id: &str, user: &str, pass: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(5);
    body.push(0xC2);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.push(0);
    put_str(&mut body, client_id.as_bytes());
    put_str(&mut body, user.as_bytes());
    put_str(&mut body, pass.as_bytes());
    let mut out = vec![0x10];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// A 3.1.1 SUBSCRIBE of one filter.
pub fn raw_subscribe(pid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    let mut out = vec![0x82];
    put_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Reads one packet from a raw socket (or its read half): (first byte, body). None when the
/// peer closed.
pub async fn read_packet(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let fut = async {
        let first = s.read_u8().await.ok()?;
        let mut len = 0usize;
        for i in 0..4 {
            let b = s.read_u8().await.ok()?;
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.ok()?;
        Some((first, body))
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("timed out reading a packet")
}

/// Opens a raw connection and completes CONNECT (3.1.1); panics unless accepted.
pub async fn raw_client(
    addr: SocketAddr,
    id: &str,
    user: &str,
    pass: &str,
    ka: u16,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw_connect(id, user, pass, ka)).await.unwrap();
    let (first, body) = read_packet(&mut s).await.expect("CONNACK");
    assert_eq!((first, body[1]), (0x20, 0), "CONNACK accepted");
    s
}
