//! The session registry: client id -> session and the connection holding it.
//!
//! A client id has at most one live connection: a new CONNECT with the same id kicks the old
//! one and waits for it to finish (its will published, its session detached) before taking
//! the session. Every connection carries a generation number, so a late detach or expiry of
//! an old connection never ends a session a newer one holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protocols::access::Principal;
use tokio::sync::watch;

use crate::Core;
use crate::codec::reason;
use crate::session::Session;

/// How long a new connection waits for the one it takes over to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// A live connection as the session registry sees it.
#[derive(Debug)]
pub(crate) struct ConnLink {
    /// Connection generation (unique per accepted CONNECT).
    pub generation: u64,
    /// Asks the connection to close, with an MQTT 5 reason code.
    pub kick: watch::Sender<Option<u8>>,
    /// Becomes true when the connection has finished (will published, session detached).
    pub finished: watch::Receiver<bool>,
}

/// A session in the registry.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The session (subscriptions, outbox, QoS 2 state).
    pub session: Arc<Session>,
    /// The connection serving it, if one does.
    pub conn: Option<ConnLink>,
    /// Generation of the connection that last held the session.
    pub generation: u64,
}

impl Core {
    /// Removes a session that ended (clean) or expired, unless a newer connection holds it.
    pub fn end_session(&self, client_id: &Arc<str>, generation: u64) {
        let mut sessions = self.sessions.lock();
        let Some(slot) = sessions.get(client_id) else {
            return;
        };
        if slot.generation != generation || slot.conn.is_some() {
            return;
        }
        if let Some(slot) = sessions.remove(client_id) {
            drop(sessions);
            self.router.remove_session(&slot.session);
            self.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
            // Only a persistent session has a record to delete (clean ones never had one).
            if slot.session.expiry.load(Ordering::Relaxed) > 0 {
                self.session_changed(client_id);
            }
        }
    }
}

/// Attaches a connection to its session: takes over a live connection with the same client
/// id (waiting for it to finish), resumes a persistent session or starts a new one, with
/// session expiry `expiry` (seconds). Returns the session and whether it was resumed (CONNACK
/// session present).
pub(crate) async fn attach(
    core: &Arc<Core>,
    client_id: &Arc<str>,
    principal: &Arc<Principal>,
    clean_start: bool,
    expiry: u32,
    generation: u64,
    link: Option<ConnLink>,
) -> (Arc<Session>, bool) {
    let (session, present) =
        attach_inner(core, client_id, principal, clean_start, generation, link).await;
    let before = session.expiry.swap(expiry, Ordering::Relaxed);
    session.offline_since_ms.store(0, Ordering::Relaxed);
    // Written (or, when it stops persisting, deleted) by the state file's next flush; a
    // clean session that never persisted has nothing on disk, so a connect storm of them
    // costs the state file nothing.
    if expiry > 0 || before > 0 {
        core.session_changed(client_id);
    }
    (session, present)
}

async fn attach_inner(
    core: &Arc<Core>,
    client_id: &Arc<str>,
    principal: &Arc<Principal>,
    clean_start: bool,
    generation: u64,
    mut link: Option<ConnLink>,
) -> (Arc<Session>, bool) {
    loop {
        let wait = {
            let mut sessions = core.sessions.lock();
            match sessions.get_mut(client_id) {
                Some(Slot {
                    conn: Some(old), ..
                }) => {
                    old.kick.send_replace(Some(reason::SESSION_TAKEN_OVER));
                    Some((old.finished.clone(), old.generation))
                }
                Some(slot) if !clean_start && *slot.session.principal == **principal => {
                    slot.conn = link.take();
                    slot.generation = generation;
                    slot.session.outbox.lock().attach(generation);
                    return (slot.session.clone(), true);
                }
                existing => {
                    if let Some(old) = existing {
                        core.router.remove_session(&old.session);
                        core.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
                        if old.session.expiry.load(Ordering::Relaxed) > 0 {
                            // Its record goes unless the new session persists in its place.
                            core.session_changed(client_id);
                        }
                    }
                    let session = Arc::new(Session::new(client_id.clone(), principal.clone()));
                    session.outbox.lock().attach(generation);
                    sessions.insert(
                        client_id.clone(),
                        Slot {
                            session: session.clone(),
                            conn: link.take(),
                            generation,
                        },
                    );
                    core.metrics.sessions.fetch_add(1, Ordering::Relaxed);
                    return (session, false);
                }
            }
        };
        if let Some((mut finished, old_gen)) = wait {
            core.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client = %client_id, "MQTT session taken over by a new connection");
            let done = async move {
                let _ = finished.wait_for(|f| *f).await;
            };
            if tokio::time::timeout(TAKEOVER_WAIT, done).await.is_err() {
                tracing::warn!(client = %client_id, "previous connection did not finish; detaching it");
                if let Some(slot) = core.sessions.lock().get_mut(client_id)
                    && slot.conn.as_ref().is_some_and(|c| c.generation == old_gen)
                {
                    slot.conn = None;
                }
            }
        }
    }
}

/// Detaches a finished connection from its session; a session without expiry ends now, a
/// persistent one is kept (queueing QoS 1/2) until it expires or the client returns.
pub(crate) fn detach(core: &Arc<Core>, client_id: &Arc<str>, generation: u64, expiry: u32) {
    let mut sessions = core.sessions.lock();
    let Some(slot) = sessions.get_mut(client_id) else {
        return;
    };
    if slot.generation != generation {
        return;
    }
    slot.conn = None;
    slot.session.outbox.lock().detach();
    let before = slot.session.expiry.swap(expiry, Ordering::Relaxed);
    slot.session
        .offline_since_ms
        .store(protocols::time::now_ms(), Ordering::Relaxed);
    drop(sessions);
    if expiry == 0 {
        // A session that persisted until its DISCONNECT set expiry 0: delete its record.
        if before > 0 {
            core.session_changed(client_id);
        }
        core.end_session(client_id, generation);
        return;
    }
    core.session_changed(client_id);
    expire_after(
        core,
        client_id.clone(),
        generation,
        Duration::from_secs(u64::from(expiry)),
    );
}

/// Ends the session of `client_id` after `left`, unless a connection after `generation` took
/// it up (or the broker stops first: a persistent session outlives the process on disk).
pub(crate) fn expire_after(core: &Arc<Core>, client_id: Arc<str>, generation: u64, left: Duration) {
    let core = core.clone();
    tokio::spawn(async move {
        let mut stop = core.shutdown.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(left) => {
                core.end_session(&client_id, generation);
            }
            _ = crate::stopped(&mut stop) => {}
        }
    });
}

/// Whether the session of `client_id` was taken up again after connection `generation` left
/// it (then a delayed will is not published).
pub(crate) fn resumed_since(core: &Core, client_id: &Arc<str>, generation: u64) -> bool {
    core.sessions
        .lock()
        .get(client_id)
        .is_some_and(|s| s.generation != generation || s.conn.is_some())
}
