//! Persistent sessions and retained messages on disk (`BrokerConfig::state_dir`), so that a
//! restart, clean or `kill -9`, keeps them: a command queued for a lamp that was offline is
//! delivered when it comes back, also across a hub restart.
//!
//! One redb file, two tables: `retained` (topic -> message) and `sessions` (client id -> the
//! session's principal, expiry, subscriptions and, while it is offline, its queued and
//! unacknowledged QoS 1/2 messages). Changes only mark a key dirty (a set under a mutex, no
//! I/O on the routing path); a task writes the dirty keys every [`FLUSH_EVERY`] in one
//! transaction, and once more at shutdown. What it does not keep: the queue of a session whose
//! client is connected (at most its window of in-flight messages is lost by a `kill -9`), the
//! QoS 2 packet ids a client has not released, and anything marked in the last
//! [`FLUSH_EVERY`] before a crash. Records are postcard; a record that does not decode is
//! skipped with a warning, never a failed start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use protocols::access::Principal;
use protocols::time::now_ms;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::Core;
use crate::codec::SubOptions;
use crate::message::{Delivery, Message};
use crate::session::Session;

/// How often dirty sessions and retained messages are written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);

const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("broker state {path}: {detail}")]
pub struct PersistError {
    path: PathBuf,
    detail: String,
}

/// A message as kept on disk.
#[derive(Debug, Serialize, Deserialize)]
struct MessageRecord {
    topic: String,
    payload: Vec<u8>,
    properties: Vec<u8>,
    qos: u8,
    retain: bool,
    /// Wall-clock expiry, epoch ms.
    expires_ms: Option<i64>,
    subscription_ids: Vec<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
enum PrincipalRecord {
    Device(String),
    Agent(String),
    SparkplugNode(String),
    App { id: String, grants: Vec<String> },
}

#[derive(Debug, Serialize, Deserialize)]
struct SubscriptionRecord {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    id: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    principal: PrincipalRecord,
    /// Session expiry, seconds.
    expiry: u32,
    /// When the client left (epoch ms), or when this was written if it was connected.
    since_ms: i64,
    subscriptions: Vec<SubscriptionRecord>,
    /// Oldest first: the unacknowledged ones, then the queue.
    queue: Vec<MessageRecord>,
}

/// Keys changed since the last flush.
#[derive(Debug, Default)]
struct Dirty {
    sessions: HashSet<Arc<str>>,
    retained: HashSet<Arc<str>>,
}

/// The state file and what is waiting to be written to it.
#[derive(Debug)]
pub(crate) struct Persist {
    /// Closed (`None`) after the last flush, so that a broker started again in the same
    /// process can open the file while tasks of the old one still hold this.
    db: Mutex<Option<Arc<redb::Database>>>,
    path: PathBuf,
    dirty: Mutex<Dirty>,
    /// Keys being written right now (the state file's pending gauge counts them too).
    writing: std::sync::atomic::AtomicUsize,
    wake: Notify,
    metrics: Arc<crate::Metrics>,
}

impl Persist {
    /// Opens (or creates) `dir/broker.redb`.
    pub fn open(dir: &Path, metrics: Arc<crate::Metrics>) -> Result<Persist, PersistError> {
        let path = dir.join("broker.redb");
        let fail = |detail: String| PersistError {
            path: path.clone(),
            detail,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let db = redb::Database::create(&path).map_err(|e| fail(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        txn.open_table(RETAINED).map_err(|e| fail(e.to_string()))?;
        txn.open_table(SESSIONS).map_err(|e| fail(e.to_string()))?;
        txn.commit().map_err(|e| fail(e.to_string()))?;
        Ok(Persist {
            db: Mutex::new(Some(Arc::new(db))),
            path,
            dirty: Mutex::new(Dirty::default()),
            writing: std::sync::atomic::AtomicUsize::new(0),
            wake: Notify::new(),
            metrics,
        })
    }

    /// Marks a session to be written (or deleted, when it no longer persists).
    pub fn session_changed(&self, client_id: &Arc<str>) {
        let mut d = self.dirty.lock();
        if d.sessions.insert(client_id.clone()) {
            self.count_pending(&d);
        }
    }

    /// Marks a retained topic to be written (or deleted).
    pub fn retained_changed(&self, topic: &Arc<str>) {
        let mut d = self.dirty.lock();
        if d.retained.insert(topic.clone()) {
            self.count_pending(&d);
        }
    }

    /// Updates the pending gauge: keys marked plus keys being written.
    fn count_pending(&self, d: &Dirty) {
        let n = d.sessions.len() + d.retained.len() + self.writing.load(Ordering::Relaxed);
        self.metrics
            .state_pending
            .store(n as i64, Ordering::Relaxed);
    }

    /// Asks the writer to flush now (shutdown).
    fn flush_soon(&self) {
        self.wake.notify_one();
    }

    fn error(&self, e: impl std::fmt::Display) -> PersistError {
        PersistError {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// Puts what the file holds back into the broker: retained messages into the router,
    /// sessions (offline, with their subscriptions, queues and remaining expiry) into the
    /// registry. Expired ones are dropped from the file.
    pub fn restore(&self, core: &Arc<Core>) -> Result<(), PersistError> {
        let now = now_ms();
        let db = self.db.lock().clone().ok_or_else(|| self.error("closed"))?;
        let txn = db.begin_read().map_err(|e| self.error(e))?;
        let retained = txn.open_table(RETAINED).map_err(|e| self.error(e))?;
        let mut stale = Vec::new();
        let mut restored = (0usize, 0usize);
        for row in retained.iter().map_err(|e| self.error(e))? {
            let (k, v) = row.map_err(|e| self.error(e))?;
            match postcard::from_bytes::<MessageRecord>(v.value()) {
                Ok(r) => match message(r, now) {
                    Some(m) => {
                        core.router.retain(&m);
                        restored.0 += 1;
                    }
                    None => stale.push(Arc::<str>::from(k.value())),
                },
                Err(e) => {
                    tracing::warn!(topic = k.value(), error = %e, "retained message record skipped");
                }
            }
        }
        let sessions = txn.open_table(SESSIONS).map_err(|e| self.error(e))?;
        for row in sessions.iter().map_err(|e| self.error(e))? {
            let (k, v) = row.map_err(|e| self.error(e))?;
            let client_id: Arc<str> = k.value().into();
            let record = match postcard::from_bytes::<SessionRecord>(v.value()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(client = %client_id, error = %e, "session record skipped");
                    continue;
                }
            };
            let left_ms = i64::from(record.expiry) * 1000 - (now - record.since_ms);
            if left_ms <= 0 {
                self.session_changed(&client_id);
                continue;
            }
            restore_session(
                core,
                client_id,
                record,
                now,
                Duration::from_millis(left_ms as u64),
            );
            restored.1 += 1;
        }
        {
            let mut dirty = self.dirty.lock();
            dirty.retained.extend(stale);
        }
        if restored != (0, 0) {
            tracing::info!(
                retained = restored.0,
                sessions = restored.1,
                "MQTT state restored from {}",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Writes what is dirty, every [`FLUSH_EVERY`], until the broker stops; then once more.
    pub async fn run(self: Arc<Self>, core: Arc<Core>, mut stop: watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
                _ = crate::stopped(&mut stop) => true,
            };
            if stopping {
                // The connections are closing and detaching: wait for the handle's word.
                self.wake.notified().await;
            }
            let batch = self.collect(&core);
            let me = self.clone();
            let written = tokio::task::spawn_blocking(move || me.write(batch)).await;
            // Written or marked again: either way no longer in this batch.
            self.writing.store(0, Ordering::Relaxed);
            match written {
                Ok(Ok(wrote)) => {
                    if wrote {
                        core.metrics.state_flushes.fetch_add(1, Ordering::Relaxed);
                    }
                    if failing {
                        failing = false;
                        tracing::info!("MQTT state writes work again");
                    }
                }
                Ok(Err((e, batch))) => {
                    if !failing {
                        tracing::warn!(error = %e, "MQTT state not written; retrying");
                    }
                    failing = true;
                    self.requeue(batch);
                }
                Err(e) => tracing::warn!(error = %e, "MQTT state writer failed"),
            }
            self.count_pending(&self.dirty.lock());
            if stopping {
                self.db.lock().take();
                return;
            }
        }
    }

    /// Takes the dirty keys and reads their current state.
    fn collect(&self, core: &Core) -> Batch {
        let dirty = {
            let mut d = self.dirty.lock();
            self.writing
                .store(d.sessions.len() + d.retained.len(), Ordering::Relaxed);
            std::mem::take(&mut *d)
        };
        let now = now_ms();
        let at = Instant::now();
        let mut batch = Batch::default();
        {
            let retained = core.router.retained_map();
            for topic in dirty.retained {
                let rec = retained
                    .get(&topic)
                    .and_then(|m| record(m, false, &[], at, now));
                batch.retained.push((topic, rec.and_then(|r| encode(&r))));
            }
        }
        let sessions = core.sessions.lock();
        for id in dirty.sessions {
            let rec = sessions
                .get(&id)
                .filter(|slot| slot.session.expiry.load(Ordering::Relaxed) > 0)
                .map(|slot| session_record(&slot.session, slot.conn.is_none(), at, now));
            batch.sessions.push((id, rec.and_then(|r| encode(&r))));
        }
        batch
    }

    /// Writes a batch in one transaction; false when there was nothing to write.
    fn write(&self, batch: Batch) -> Result<bool, (PersistError, Batch)> {
        if batch.retained.is_empty() && batch.sessions.is_empty() {
            return Ok(false);
        }
        let Some(db) = self.db.lock().clone() else {
            return Err((self.error("closed"), batch));
        };
        let r = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(RETAINED)?;
                for (k, v) in &batch.retained {
                    match v {
                        Some(v) => t.insert(&**k, v.as_slice())?,
                        None => t.remove(&**k)?,
                    };
                }
                let mut t = txn.open_table(SESSIONS)?;
                for (k, v) in &batch.sessions {
                    match v {
                        Some(v) => t.insert(&**k, v.as_slice())?,
                        None => t.remove(&**k)?,
                    };
                }
            }
            txn.commit()?;
            Ok(())
        })();
        r.map(|()| true).map_err(|e| (self.error(e), batch))
    }

    /// Marks a failed batch's keys dirty again (their state is read afresh next time).
    fn requeue(&self, batch: Batch) {
        let mut d = self.dirty.lock();
        d.retained
            .extend(batch.retained.into_iter().map(|(k, _)| k));
        d.sessions
            .extend(batch.sessions.into_iter().map(|(k, _)| k));
    }
}

impl Core {
    /// Marks a session dirty for the state file (if there is one).
    pub(crate) fn session_changed(&self, client_id: &Arc<str>) {
        if let Some(p) = &self.persist {
            p.session_changed(client_id);
        }
    }

    /// Lets the state writer do its last flush: the connections are gone.
    pub(crate) fn final_flush(&self) {
        if let Some(p) = &self.persist {
            p.flush_soon();
        }
    }
}

/// Keys with their encoded records (`None`: delete).
#[derive(Default)]
struct Batch {
    retained: Vec<(Arc<str>, Option<Vec<u8>>)>,
    sessions: Vec<(Arc<str>, Option<Vec<u8>>)>,
}

fn encode<T: Serialize>(r: &T) -> Option<Vec<u8>> {
    match postcard::to_allocvec(r) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "MQTT state record not encoded");
            None
        }
    }
}

/// A message's record; `None` once it expired.
fn record(
    m: &Message,
    retain: bool,
    subscription_ids: &[u32],
    at: Instant,
    now: i64,
) -> Option<MessageRecord> {
    let expires_ms = match m.expires_at {
        None => None,
        Some(t) => {
            let left = t.checked_duration_since(at)?;
            Some(now + left.as_millis() as i64)
        }
    };
    Some(MessageRecord {
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        properties: m.properties.to_vec(),
        qos: m.qos,
        retain: retain || m.retain,
        expires_ms,
        subscription_ids: subscription_ids.to_vec(),
    })
}

/// A message from its record; `None` once it expired.
fn message(r: MessageRecord, now: i64) -> Option<Arc<Message>> {
    let expires_at = match r.expires_ms {
        None => None,
        Some(ms) if ms <= now => return None,
        Some(ms) => Some(Instant::now() + Duration::from_millis((ms - now) as u64)),
    };
    Some(Arc::new(Message {
        topic: r.topic.into(),
        payload: Bytes::from(r.payload),
        properties: Bytes::from(r.properties),
        qos: r.qos,
        retain: r.retain,
        origin: None,
        expires_at,
    }))
}

fn session_record(s: &Session, offline: bool, at: Instant, now: i64) -> SessionRecord {
    let principal = match &*s.principal {
        Principal::Device(id) => PrincipalRecord::Device(id.clone()),
        Principal::Agent(id) => PrincipalRecord::Agent(id.clone()),
        Principal::SparkplugNode(id) => PrincipalRecord::SparkplugNode(id.clone()),
        Principal::App { id, grants } => PrincipalRecord::App {
            id: id.clone(),
            grants: grants.clone(),
        },
    };
    let subscriptions = s
        .filters
        .lock()
        .iter()
        .map(|(filter, (o, id))| SubscriptionRecord {
            filter: filter.clone(),
            qos: o.qos,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            retain_handling: o.retain_handling,
            id: *id,
        })
        .collect();
    let mut queue = Vec::new();
    if offline {
        let outbox = s.outbox.lock();
        let pending = outbox
            .inflight
            .iter()
            .map(|i| &i.delivery)
            .chain(outbox.queue.iter());
        for d in pending.filter(|d| d.qos > 0) {
            if let Some(r) = record(&d.msg, d.retain, &d.subscription_ids, at, now) {
                queue.push(MessageRecord { qos: d.qos, ..r });
            }
        }
    }
    let offline_since = s.offline_since_ms.load(Ordering::Relaxed);
    SessionRecord {
        principal,
        expiry: s.expiry.load(Ordering::Relaxed),
        since_ms: if offline && offline_since > 0 {
            offline_since
        } else {
            now
        },
        subscriptions,
        queue,
    }
}

/// Puts a session back: offline, subscribed, its queue in its outbox, its expiry running.
fn restore_session(
    core: &Arc<Core>,
    client_id: Arc<str>,
    r: SessionRecord,
    now: i64,
    left: Duration,
) {
    let principal = Arc::new(match r.principal {
        PrincipalRecord::Device(id) => Principal::Device(id),
        PrincipalRecord::Agent(id) => Principal::Agent(id),
        PrincipalRecord::SparkplugNode(id) => Principal::SparkplugNode(id),
        PrincipalRecord::App { id, grants } => Principal::App { id, grants },
    });
    let session = Arc::new(Session::new(client_id.clone(), principal));
    session.expiry.store(r.expiry, Ordering::Relaxed);
    session
        .offline_since_ms
        .store(r.since_ms, Ordering::Relaxed);
    {
        let mut outbox = session.outbox.lock();
        outbox.detach();
        for m in r.queue {
            let (qos, retain, ids) = (m.qos, m.retain, m.subscription_ids.clone());
            if let Some(msg) = message(m, now) {
                outbox.queue.push_back(Delivery {
                    msg,
                    qos,
                    retain,
                    subscription_ids: ids,
                });
            }
        }
    }
    for s in r.subscriptions {
        let opts = SubOptions {
            qos: s.qos,
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            retain_handling: s.retain_handling,
        };
        core.router.subscribe(&session, &s.filter, opts, s.id);
    }
    core.sessions.lock().insert(
        client_id.clone(),
        crate::registry::Slot {
            session,
            conn: None,
            generation: 0,
        },
    );
    core.metrics.sessions.fetch_add(1, Ordering::Relaxed);
    // Generation 0: any connection that resumes it has a later one, so this timer never ends
    // a session someone took up again.
    crate::registry::expire_after(core, client_id, 0, left);
}
