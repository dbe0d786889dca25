//! MQTT 5 topic aliases in the broker's PUBLISH packets to one client: the first delivery on a
//! topic carries the topic and a new alias, later ones the alias and an empty topic, which
//! saves the topic's bytes on every message of a busy feed. Aliases are handed out first come,
//! first served up to the client's Topic Alias Maximum and never reassigned: a feed's topics
//! repeat, and reassigning would cost the topic's bytes again. Topics beyond the maximum go
//! out in full. The table lives and dies with the connection, as MQTT 5 says aliases do.

use std::collections::HashMap;
use std::sync::Arc;

/// How to send one delivery's topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// The full topic, no alias (MQTT 3.1.1, no aliases allowed, or the table is full).
    Topic,
    /// The full topic and a new alias; [`OutAliases::commit`] once the packet is written.
    New(u16),
    /// The alias alone, with an empty topic.
    Known(u16),
}

/// One connection's aliases for the topics it receives.
#[derive(Debug, Default)]
pub(super) struct OutAliases {
    max: u16,
    by_topic: HashMap<Arc<str>, u16>,
}

impl OutAliases {
    /// A table of at most `max` aliases (0: aliases are not used).
    pub(super) fn new(max: u16) -> OutAliases {
        OutAliases {
            max,
            by_topic: HashMap::new(),
        }
    }

    /// How `topic` goes out; changes nothing (a packet too large for the client is dropped,
    /// and the client must not be assumed to know an alias it never received).
    pub(super) fn plan(&self, topic: &Arc<str>) -> Plan {
        match self.by_topic.get(topic) {
            Some(&a) => Plan::Known(a),
            None if self.by_topic.len() < usize::from(self.max) => {
                Plan::New(self.by_topic.len() as u16 + 1)
            }
            None => Plan::Topic,
        }
    }

    /// Records that the client received `alias` with `topic`.
    pub(super) fn commit(&mut self, topic: &Arc<str>, alias: u16) {
        self.by_topic.insert(topic.clone(), alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_names_the_topic_then_the_alias_stands_for_it() {
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) =
            ("v1/a".into(), "v1/b".into(), "v1/c".into());
        let mut t = OutAliases::new(2);
        assert_eq!(t.plan(&a), Plan::New(1));
        // Not committed (the packet was dropped): still new.
        assert_eq!(t.plan(&a), Plan::New(1));
        t.commit(&a, 1);
        assert_eq!(t.plan(&a), Plan::Known(1));
        assert_eq!(t.plan(&b), Plan::New(2));
        t.commit(&b, 2);
        // Full: the third topic goes out in full, the others keep their aliases.
        assert_eq!(t.plan(&c), Plan::Topic);
        assert_eq!(t.plan(&b), Plan::Known(2));
        assert_eq!(OutAliases::new(0).plan(&a), Plan::Topic);
    }
}
