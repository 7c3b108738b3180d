//! The committed history: what changed at each revision, as the watch streams delivered it
//! (etcd's robustness suite reads it from the members' WAL; the watch is what a black box
//! has). Every revision after the first is made by exactly one change, and every change
//! produces at least one event, so a revision missing from every stream is a gap in what the
//! run observed, not an empty revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::history::KeyValue;
use crate::model::{KvState, Version};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    pub put: bool,
    /// For a delete: the key, and `mod_revision` = the delete's revision (the rest is zero).
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    /// The event without its previous pair (what identifies a change).
    pub fn change(&self) -> Event {
        Event {
            prev: None,
            ..self.clone()
        }
    }
}

/// The changes of each revision, ordered by key.
#[derive(Clone, Debug, Default)]
pub struct CommittedLog {
    pub revisions: BTreeMap<i64, Vec<Event>>,
    /// The last revision of the run (the store's revision when the traffic had stopped).
    pub last: i64,
}

impl CommittedLog {
    /// Revisions in `2..=last` that no stream delivered.
    pub fn missing(&self) -> Vec<i64> {
        (2..=self.last)
            .filter(|r| !self.revisions.contains_key(r))
            .collect()
    }

    pub fn is_complete(&self) -> bool {
        self.missing().is_empty()
    }

    /// Whether every revision up to `revision` is known.
    pub fn complete_up_to(&self, revision: i64) -> bool {
        (2..=revision).all(|r| self.revisions.contains_key(&r))
    }

    /// The state after `revision`, or `None` if a revision up to it is missing.
    pub fn state_at(&self, revision: i64) -> Option<KvState> {
        let mut replay = Replay::new(self);
        replay.advance_to(revision)?;
        Some(replay.state())
    }

    /// The value index: (key, value) -> revision, for every put.
    pub fn put_revisions(&self) -> BTreeMap<(String, String), Vec<i64>> {
        let mut index: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
        for (revision, events) in &self.revisions {
            for event in events.iter().filter(|e| e.put) {
                index
                    .entry((event.kv.key.clone(), event.kv.value.clone()))
                    .or_default()
                    .push(*revision);
            }
        }
        index
    }
}

/// Replays a committed log revision by revision.
pub struct Replay<'a> {
    log: &'a CommittedLog,
    revision: i64,
    kvs: BTreeMap<String, Version>,
}

impl<'a> Replay<'a> {
    pub fn new(log: &'a CommittedLog) -> Replay<'a> {
        Replay {
            log,
            revision: 1,
            kvs: BTreeMap::new(),
        }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.kvs.get(key).map(|v| KeyValue {
            key: key.to_string(),
            value: v.value.clone(),
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            version: v.version,
            lease: v.lease,
        })
    }

    /// Applies revisions up to `revision`; `None` (and no change past the gap) when one is
    /// missing.
    pub fn advance_to(&mut self, revision: i64) -> Option<()> {
        while self.revision < revision {
            let next = self.revision + 1;
            let events = self.log.revisions.get(&next)?;
            for event in events {
                if event.put {
                    self.kvs.insert(
                        event.kv.key.clone(),
                        Version {
                            value: event.kv.value.clone(),
                            create_revision: event.kv.create_revision,
                            mod_revision: event.kv.mod_revision,
                            version: event.kv.version,
                            lease: event.kv.lease,
                        },
                    );
                } else {
                    self.kvs.remove(&event.kv.key);
                }
            }
            self.revision = next;
        }
        Some(())
    }

    pub fn state(&self) -> KvState {
        KvState {
            revision: self.revision,
            kvs: Arc::new(self.kvs.clone()),
            dead_leases: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn put(key: &str, value: &str, create: i64, revision: i64, version: i64) -> Event {
        Event {
            put: true,
            kv: KeyValue {
                key: key.into(),
                value: value.into(),
                create_revision: create,
                mod_revision: revision,
                version,
                lease: 0,
            },
            prev: None,
        }
    }

    #[test]
    fn replay_stops_at_a_gap() {
        let mut log = CommittedLog::default();
        log.revisions.insert(2, vec![put("a", "1", 2, 2, 1)]);
        log.revisions.insert(4, vec![put("a", "3", 2, 4, 3)]);
        log.last = 4;
        assert_eq!(log.missing(), vec![3]);
        assert!(log.state_at(2).is_some());
        assert!(log.state_at(4).is_none());
        let state = log.state_at(2).expect("state at 2");
        assert_eq!(state.key_value("a").map(|kv| kv.version), Some(1));
    }
}
