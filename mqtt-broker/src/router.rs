//! Routing: which sessions a message goes to, and the retained messages.
//!
//! Subscriptions live in a trie keyed by topic level, so matching a topic costs its depth times
//! the wildcards on the way, not the number of subscriptions. Matching happens under a read
//! lock and only pushes into each session's bounded outbox, so a publisher (a client or the
//! hub) never waits for a subscriber.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use protocols::topic::{filter_matches, validate_filter};

use crate::codec::SubOptions;
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::persist::Persist;
use crate::session::Session;

/// A subscription in the trie.
#[derive(Clone, Debug)]
struct Subscriber {
    session: Arc<Session>,
    opts: SubOptions,
    id: Option<u32>,
}

/// Members of a shared subscription group; each message goes to one of them in turn.
#[derive(Debug)]
struct SharedGroup {
    name: Box<str>,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }

    fn emit<'a>(&'a self, out: &mut Vec<(&'a Subscriber, bool)>) {
        out.extend(self.subs.iter().map(|s| (s, false)));
        for g in &self.shared {
            if g.members.is_empty() {
                continue;
            }
            let i = g.next.fetch_add(1, Ordering::Relaxed) % g.members.len();
            out.push((&g.members[i], true));
        }
    }

    /// Collects the subscriptions matching the rest of a topic.
    fn walk<'a>(
        &'a self,
        mut rest: std::str::Split<'a, char>,
        first: bool,
        dollar: bool,
        out: &mut Vec<(&'a Subscriber, bool)>,
    ) {
        // `#` also matches the parent level ("a/#" matches "a"), except at the root of a
        // `$` topic.
        let wild_ok = !(first && dollar);
        match rest.next() {
            None => {
                self.emit(out);
                if let Some(h) = self.children.get("#") {
                    h.emit(out);
                }
            }
            Some(level) => {
                if wild_ok {
                    if let Some(h) = self.children.get("#") {
                        h.emit(out);
                    }
                    if let Some(p) = self.children.get("+") {
                        p.walk(rest.clone(), false, dollar, out);
                    }
                }
                if let Some(c) = self.children.get(level) {
                    c.walk(rest, false, dollar, out);
                }
            }
        }
    }
}

/// Splits `$share/{group}/{filter}` into the group and the filter; other filters have no group.
pub(crate) fn split_shared(filter: &str) -> Result<(Option<&str>, &str), ()> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok((None, filter));
    };
    let (group, inner) = rest.split_once('/').ok_or(())?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(());
    }
    Ok((Some(group), inner))
}

/// Subscriptions and retained messages, shared by every connection and the hub's publisher.
#[derive(Debug)]
pub(crate) struct Router {
    subs: RwLock<Node>,
    retained: RwLock<HashMap<Arc<str>, Arc<Message>>>,
    metrics: Arc<Metrics>,
    queue_cap: usize,
    /// The state file, told about retained messages and persistent sessions that change.
    persist: Option<Arc<Persist>>,
}

impl Router {
    /// An empty router; each session's outbox holds at most `queue_cap` messages.
    pub fn new(metrics: Arc<Metrics>, queue_cap: usize, persist: Option<Arc<Persist>>) -> Router {
        Router {
            subs: RwLock::new(Node::default()),
            retained: RwLock::new(HashMap::new()),
            metrics,
            queue_cap,
            persist,
        }
    }

    /// The retained messages by topic (the state writer reads them).
    pub fn retained_map(
        &self,
    ) -> parking_lot::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Message>>> {
        self.retained.read()
    }

    /// Tells the state file that a persistent session changed.
    fn session_changed(&self, session: &Session) {
        if let Some(p) = &self.persist
            && session.expiry.load(Ordering::Relaxed) > 0
        {
            p.session_changed(&session.client_id);
        }
    }

    /// Bound of each session's outbox.
    pub fn queue_cap(&self) -> usize {
        self.queue_cap
    }

    /// Adds or replaces a session's subscription; returns whether it is new. The filter
    /// (without `$share/group/`) must be valid.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        opts: SubOptions,
        id: Option<u32>,
    ) -> bool {
        let Ok((group, inner)) = split_shared(filter) else {
            return false;
        };
        debug_assert!(validate_filter(inner).is_ok());
        let sub = Subscriber {
            session: session.clone(),
            opts,
            id,
        };
        let mut root = self.subs.write();
        let mut node = &mut *root;
        for level in inner.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let list = match group {
            None => &mut node.subs,
            Some(g) => {
                let i = match node.shared.iter().position(|s| &*s.name == g) {
                    Some(i) => i,
                    None => {
                        node.shared.push(SharedGroup {
                            name: g.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[i].members
            }
        };
        let new = match list.iter_mut().find(|s| Arc::ptr_eq(&s.session, session)) {
            Some(existing) => {
                *existing = sub;
                false
            }
            None => {
                list.push(sub);
                true
            }
        };
        drop(root);
        session.filters.lock().insert(filter.to_owned(), (opts, id));
        if new {
            self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        self.session_changed(session);
        new
    }

    /// Removes a session's subscription; returns whether it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let Ok((group, inner)) = split_shared(filter) else {
            return false;
        };
        let levels: Vec<&str> = inner.split('/').collect();
        let removed = remove_at(&mut self.subs.write(), &levels, group, session);
        if removed {
            session.filters.lock().remove(filter);
            self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
            self.session_changed(session);
        }
        removed
    }

    /// Removes every subscription of a session that ends.
    pub fn remove_session(&self, session: &Arc<Session>) {
        let filters: Vec<String> = session.filters.lock().keys().cloned().collect();
        for f in filters {
            self.unsubscribe(session, &f);
        }
    }

    /// Delivers a message to every matching subscription (once per session, at the highest
    /// QoS among its matching subscriptions; shared groups to one member each).
    pub fn route(&self, msg: &Arc<Message>) {
        let dollar = msg.topic.starts_with('$');
        let root = self.subs.read();
        let mut hits: Vec<(&Subscriber, bool)> = Vec::new();
        root.walk(msg.topic.split('/'), true, dollar, &mut hits);
        if hits.is_empty() {
            return;
        }
        let origin = msg.origin.as_deref();
        hits.retain(|(s, shared)| {
            !(s.opts.no_local && !shared && Some(&*s.session.client_id) == origin)
        });
        if hits.len() > 1 {
            hits.sort_unstable_by_key(|(s, _)| Arc::as_ptr(&s.session) as usize);
        }
        let mut i = 0;
        while i < hits.len() {
            let session = &hits[i].0.session;
            let mut d = Delivery {
                msg: msg.clone(),
                qos: 0,
                retain: false,
                subscription_ids: Vec::new(),
            };
            while i < hits.len() && Arc::ptr_eq(&hits[i].0.session, session) {
                let s = hits[i].0;
                d.qos = d.qos.max(msg.qos.min(s.opts.qos));
                d.retain |= s.opts.retain_as_published && msg.retain;
                if let Some(id) = s.id {
                    d.subscription_ids.push(id);
                }
                i += 1;
            }
            if session.offer(d, self.queue_cap, &self.metrics) {
                // Queued for a client that is away: its queue must outlive a restart.
                self.session_changed(session);
                self.metrics.queued_offline.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stores (or, with an empty payload, clears) the retained message of its topic.
    pub fn retain(&self, msg: &Arc<Message>) {
        if let Some(p) = &self.persist {
            p.retained_changed(&msg.topic);
        }
        let mut r = self.retained.write();
        if msg.payload.is_empty() {
            if r.remove(&msg.topic).is_some() {
                self.metrics.retained.fetch_sub(1, Ordering::Relaxed);
            }
        } else if r.insert(msg.topic.clone(), msg.clone()).is_none() {
            self.metrics.retained.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The retained messages matching a (valid) filter.
    pub fn retained_for(&self, filter: &str) -> Vec<Arc<Message>> {
        self.retained
            .read()
            .values()
            .filter(|m| filter_matches(filter, &m.topic) && m.expiry_left().is_ok())
            .cloned()
            .collect()
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, s: &Arc<Session>) -> bool {
    match levels.split_first() {
        None => {
            let same = |x: &Subscriber| Arc::ptr_eq(&x.session, s);
            match group {
                None => {
                    let before = node.subs.len();
                    node.subs.retain(|x| !same(x));
                    node.subs.len() != before
                }
                Some(g) => {
                    let Some(i) = node.shared.iter().position(|x| &*x.name == g) else {
                        return false;
                    };
                    let members = &mut node.shared[i].members;
                    let before = members.len();
                    members.retain(|x| !same(x));
                    let removed = members.len() != before;
                    if members.is_empty() {
                        node.shared.remove(i);
                    }
                    removed
                }
            }
        }
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else {
                return false;
            };
            let removed = remove_at(child, rest, group, s);
            if child.is_empty() {
                node.children.remove(*first);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use protocols::access::Principal;

    use super::*;

    fn session(id: &str) -> Arc<Session> {
        let s = Arc::new(Session::new(
            id.into(),
            Arc::new(Principal::Device(id.to_owned())),
        ));
        s.outbox.lock().online = true;
        s
    }

    fn msg(topic: &str, qos: u8) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            properties: Bytes::new(),
            qos,
            retain: false,
            origin: None,
            expires_at: None,
        })
    }

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            ..SubOptions::default()
        }
    }

    fn queued(s: &Session) -> Vec<(String, u8)> {
        s.outbox
            .lock()
            .queue
            .drain(..)
            .map(|d| (d.msg.topic.to_string(), d.qos))
            .collect()
    }

    #[test]
    fn wildcards_match_like_the_spec() {
        let r = Router::new(Arc::default(), 100, None);
        let cases = [
            ("a/b/c", "a/b/c", true),
            ("a/+/c", "a/b/c", true),
            ("a/#", "a/b/c", true),
            ("a/#", "a", true),
            ("#", "a/b", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b/c", false),
        ];
        for (i, (filter, topic, want)) in cases.into_iter().enumerate() {
            let s = session(&format!("s{i}"));
            assert!(r.subscribe(&s, filter, opts(1), None));
            r.route(&msg(topic, 1));
            assert_eq!(!queued(&s).is_empty(), want, "{filter} vs {topic}");
            assert!(r.unsubscribe(&s, filter));
        }
        assert!(r.subs.read().is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn qos_is_downgraded_and_overlaps_deliver_once() {
        let r = Router::new(Arc::default(), 100, None);
        let s = session("s");
        r.subscribe(&s, "a/#", opts(0), None);
        r.subscribe(&s, "a/+", opts(1), None);
        r.route(&msg("a/b", 2));
        assert_eq!(queued(&s), vec![("a/b".to_string(), 1)]);
        r.route(&msg("a/b/c", 2));
        assert_eq!(queued(&s), vec![("a/b/c".to_string(), 0)]);
    }

    #[test]
    fn shared_group_delivers_to_one_member_in_turn() {
        let r = Router::new(Arc::default(), 100, None);
        let (a, b) = (session("a"), session("b"));
        r.subscribe(&a, "$share/g/t/#", opts(1), None);
        r.subscribe(&b, "$share/g/t/#", opts(1), None);
        for _ in 0..4 {
            r.route(&msg("t/x", 1));
        }
        assert_eq!(queued(&a).len(), 2);
        assert_eq!(queued(&b).len(), 2);
        r.remove_session(&a);
        r.remove_session(&b);
        assert!(r.subs.read().is_empty());
    }

    #[test]
    fn full_outbox_drops_and_counts() {
        let m = Arc::new(Metrics::default());
        let r = Router::new(m.clone(), 2, None);
        let s = session("s");
        r.subscribe(&s, "t", opts(0), None);
        for _ in 0..5 {
            r.route(&msg("t", 0));
        }
        assert_eq!(queued(&s).len(), 2);
        assert_eq!(m.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn retained_set_and_cleared() {
        let r = Router::new(Arc::default(), 2, None);
        r.retain(&msg("v1/twin/A", 1));
        r.retain(&msg("v1/twin/B", 1));
        assert_eq!(r.retained_for("v1/twin/+").len(), 2);
        let clear = Arc::new(Message {
            payload: Bytes::new(),
            ..Message::clone_fields(&msg("v1/twin/A", 1))
        });
        r.retain(&clear);
        assert_eq!(r.retained_for("v1/twin/#").len(), 1);
    }

    impl Message {
        fn clone_fields(m: &Message) -> Message {
            Message {
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                properties: m.properties.clone(),
                qos: m.qos,
                retain: m.retain,
                origin: m.origin.clone(),
                expires_at: m.expires_at,
            }
        }
    }
}
