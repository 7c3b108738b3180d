//! Watch recordings and etcd's watch guarantees, checked against the committed history.
//!
//! A *session* is one watch request on one stream, from its creation to its end (the stream
//! broke, the server cancelled it, or the run stopped it). A watcher whose stream breaks opens
//! a new session from the revision after the last one it saw (events or progress), as
//! kube-apiserver does, so the resume itself is checked too.
//!
//! The committed history is the union of what the sessions over the whole key space
//! delivered; sessions that disagree about a revision are an anomaly of their own. Then every
//! session must be (etcd's api_guarantees): ordered, unique, atomic (a revision in one
//! response), within its filter, reliable (everything committed in its window, nothing else),
//! resumable (a start revision gets everything from there), bookmarkable (progress never
//! ahead of the events delivered), with prev_kv the real previous pair, and a compaction
//! reported (ErrCompacted) only when a compaction above the start revision was requested.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::committed::{CommittedLog, Event, Replay};
use crate::history::RangeRequest;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatchSpec {
    pub key: String,
    /// As etcd's range_end: "\0" = every key from `key` on.
    pub end: String,
    pub prev_kv: bool,
    pub progress_notify: bool,
}

impl WatchSpec {
    pub fn all(prev_kv: bool) -> WatchSpec {
        WatchSpec {
            key: "\0".into(),
            end: "\0".into(),
            prev_kv,
            progress_notify: true,
        }
    }

    pub fn covers_everything(&self) -> bool {
        self.key == "\0" && self.end == "\0"
    }

    pub fn contains(&self, key: &str) -> bool {
        if self.covers_everything() {
            return true;
        }
        RangeRequest::range(self.key.clone(), self.end.clone()).contains(key)
    }
}

/// One response of a watch stream, as received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Received {
    /// Nanoseconds since the run started.
    pub at: u64,
    pub header_revision: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub events: Vec<Event>,
}

impl Received {
    /// A progress notification (periodic or an answer to RequestProgress).
    pub fn is_progress(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SessionEnd {
    /// The run stopped it.
    Stopped,
    /// The stream failed or closed (a member died, a connection was cut).
    Broken(String),
    /// Cancelled by the server.
    Canceled {
        compact_revision: i64,
        reason: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub watcher: usize,
    pub member: usize,
    pub spec: WatchSpec,
    /// 0: from the store's revision when the watch was created.
    pub start_revision: i64,
    pub responses: Vec<Received>,
    pub end: SessionEnd,
}

impl Session {
    fn created_revision(&self) -> Option<i64> {
        self.responses
            .iter()
            .find(|r| r.created)
            .map(|r| r.header_revision)
    }

    /// The first revision the session must deliver.
    pub fn first_revision(&self) -> Option<i64> {
        if self.start_revision > 0 {
            Some(self.start_revision)
        } else {
            self.created_revision().map(|r| r + 1)
        }
    }

    /// The last revision the session vouches for: its last event or progress notification.
    pub fn last_revision(&self) -> i64 {
        let mut last = 0;
        for response in &self.responses {
            if let Some(event) = response.events.last() {
                last = last.max(event.revision());
            }
            if response.is_progress() {
                last = last.max(response.header_revision);
            }
        }
        last
    }

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.responses.iter().flat_map(|r| r.events.iter())
    }

    fn name(&self) -> String {
        format!(
            "watcher {} on member {} from {}",
            self.watcher,
            self.member,
            if self.start_revision == 0 {
                "now".to_string()
            } else {
                format!("revision {}", self.start_revision)
            }
        )
    }
}

/// Violations by property, with a bounded number of examples each.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Violations(pub BTreeMap<String, Vec<String>>);

const EXAMPLES_KEPT: usize = 20;

impl Violations {
    pub fn add(&mut self, property: &str, message: String) {
        let list = self.0.entry(property.to_string()).or_default();
        if list.len() < EXAMPLES_KEPT {
            list.push(message);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn merge(&mut self, other: Violations) {
        for (property, messages) in other.0 {
            for message in messages {
                self.add(&property, message);
            }
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(move |m| format!("{p}: {m}")))
            .collect()
    }
}

/// The committed history from the sessions over the whole key space, and their
/// disagreements. `last` is the store's final revision (a later lease expiry may extend it).
pub fn committed_log(sessions: &[Session], last: i64, violations: &mut Violations) -> CommittedLog {
    let mut log = CommittedLog {
        last,
        ..CommittedLog::default()
    };
    let mut source: BTreeMap<i64, usize> = BTreeMap::new();
    for (index, session) in sessions.iter().enumerate() {
        if !session.spec.covers_everything() {
            continue;
        }
        let mut by_revision: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        for event in session.events() {
            by_revision
                .entry(event.revision())
                .or_default()
                .push(event.change());
        }
        for (revision, mut changes) in by_revision {
            changes.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
            match log.revisions.get(&revision) {
                None => {
                    log.revisions.insert(revision, changes);
                    source.insert(revision, index);
                }
                Some(known) if *known == changes => {}
                Some(known) => violations.add(
                    "watchers-agree",
                    format!(
                        "revision {revision}: {} delivered {:?}, {} delivered {:?}",
                        sessions[source[&revision]].name(),
                        known,
                        session.name(),
                        changes
                    ),
                ),
            }
        }
    }
    if let Some(max) = log.revisions.keys().next_back() {
        log.last = log.last.max(*max);
    }
    check_log_consistency(&log, violations);
    log
}

/// Every revision's events fit the state before it: a put bumps the version (a create starts
/// at version 1 with create = mod revision), a delete removes an existing key, and a revision
/// never changes a key twice.
fn check_log_consistency(log: &CommittedLog, violations: &mut Violations) {
    let mut replay = Replay::new(log);
    for (revision, events) in &log.revisions {
        if replay.advance_to(revision - 1).is_none() {
            // A gap: restart the replay's knowledge from what is known.
            return;
        }
        let mut keys = BTreeSet::new();
        for event in events {
            if !keys.insert(event.kv.key.clone()) {
                violations.add(
                    "committed-history",
                    format!("revision {revision} changes {} twice", event.kv.key),
                );
            }
            let before = replay.get(&event.kv.key);
            if event.put {
                let (create, version) = match &before {
                    Some(old) => (old.create_revision, old.version + 1),
                    None => (*revision, 1),
                };
                if event.kv.create_revision != create || event.kv.version != version {
                    violations.add(
                        "committed-history",
                        format!(
                            "revision {revision}: put {} has create {} version {}, the history says create {create} version {version}",
                            event.kv, event.kv.create_revision, event.kv.version
                        ),
                    );
                }
            } else if before.is_none() {
                violations.add(
                    "committed-history",
                    format!(
                        "revision {revision}: delete of {} which did not exist",
                        event.kv.key
                    ),
                );
            }
        }
    }
}

/// The compactions the clients requested: (invocation time, revision).
pub type Compactions = [(u64, i64)];

/// Checks every session against the committed history.
pub fn validate(
    sessions: &[Session],
    log: &CommittedLog,
    compactions: &Compactions,
    violations: &mut Violations,
) {
    for session in sessions {
        validate_session(session, log, compactions, violations);
    }
}

fn validate_session(
    session: &Session,
    log: &CommittedLog,
    compactions: &Compactions,
    violations: &mut Violations,
) {
    let name = session.name();
    if let Some(first) = session.responses.first() {
        if !first.created {
            violations.add(
                "created-first",
                format!("{name}: first response is not the created answer"),
            );
        }
    }
    // Ordered, unique, atomic, filter, bookmarkable.
    let mut last_event: i64 = 0;
    let mut last_progress: i64 = 0;
    let mut seen = BTreeSet::new();
    for response in &session.responses {
        let mut previous_in_response: Option<i64> = None;
        if let Some(first) = response.events.first() {
            if first.revision() <= last_event {
                let property = if first.revision() == last_event {
                    "atomic"
                } else {
                    "ordered"
                };
                violations.add(
                    property,
                    format!(
                        "{name}: a response starts at revision {} after an event at {last_event}",
                        first.revision()
                    ),
                );
            }
        }
        for event in &response.events {
            let revision = event.revision();
            if previous_in_response.is_some_and(|p| revision < p) {
                violations.add(
                    "ordered",
                    format!("{name}: revision {revision} after {previous_in_response:?} in one response"),
                );
            }
            previous_in_response = Some(revision);
            if !seen.insert((revision, event.kv.key.clone())) {
                violations.add(
                    "unique",
                    format!(
                        "{name}: {} at revision {revision} delivered twice",
                        event.kv.key
                    ),
                );
            }
            if !session.spec.contains(&event.kv.key) {
                violations.add(
                    "filter",
                    format!(
                        "{name}: event for {} outside the watched range",
                        event.kv.key
                    ),
                );
            }
            if revision <= last_progress {
                violations.add(
                    "bookmarkable",
                    format!(
                        "{name}: event at revision {revision} after a progress notification at {last_progress}"
                    ),
                );
            }
            if session.start_revision > 0 && revision < session.start_revision {
                violations.add(
                    "resumable",
                    format!(
                        "{name}: event at revision {revision} below the start revision {}",
                        session.start_revision
                    ),
                );
            }
        }
        if let Some(last) = response.events.last() {
            last_event = last_event.max(last.revision());
        }
        if response.is_progress() {
            if response.header_revision < last_event {
                violations.add(
                    "bookmarkable",
                    format!(
                        "{name}: progress at revision {} after an event at {last_event}",
                        response.header_revision
                    ),
                );
            }
            last_progress = last_progress.max(response.header_revision);
        }
    }
    // Compaction reports.
    if let SessionEnd::Canceled {
        compact_revision, ..
    } = &session.end
    {
        if *compact_revision > 0 {
            let asked = compactions
                .iter()
                .filter(|(at, _)| session.responses.last().is_none_or(|r| *at <= r.at))
                .map(|(_, revision)| *revision)
                .max()
                .unwrap_or(0);
            if *compact_revision > asked {
                violations.add(
                    "compaction",
                    format!(
                        "{name}: cancelled as compacted at {compact_revision}, but the highest compaction requested by then was {asked}"
                    ),
                );
            }
            if session.start_revision >= *compact_revision {
                violations.add(
                    "compaction",
                    format!(
                        "{name}: start revision {} is not below the reported compaction {compact_revision}",
                        session.start_revision
                    ),
                );
            }
        }
    }
    check_reliable(session, log, &name, violations);
    check_prev_kv(session, log, compactions, &name, violations);
}

/// Reliable and resumable: between its first revision and the last it vouches for, the
/// session delivered exactly the committed events in its range; and every progress
/// notification came after all events up to it.
fn check_reliable(session: &Session, log: &CommittedLog, name: &str, violations: &mut Violations) {
    let Some(first) = session.first_revision() else {
        return;
    };
    let last = session.last_revision();
    if last < first {
        return;
    }
    if (first.max(2)..=last).any(|r| !log.revisions.contains_key(&r)) {
        // Part of the window is unknown to every full session: nothing to compare with.
        return;
    }
    let expected: Vec<Event> = log
        .revisions
        .range(first..=last)
        .flat_map(|(_, events)| events.iter())
        .filter(|e| session.spec.contains(&e.kv.key))
        .cloned()
        .collect();
    let mut delivered_count = 0usize;
    let mut delivered: Vec<Event> = Vec::with_capacity(expected.len());
    for response in &session.responses {
        for event in &response.events {
            delivered.push(event.change());
        }
        delivered_count += response.events.len();
        if response.is_progress() {
            let due = expected
                .iter()
                .take_while(|e| e.revision() <= response.header_revision)
                .count();
            if delivered_count < due {
                violations.add(
                    "progress-not-ahead",
                    format!(
                        "{name}: progress at revision {} after {delivered_count} events; {due} were committed up to it",
                        response.header_revision
                    ),
                );
            }
        }
    }
    let mut sorted_delivered = delivered.clone();
    sorted_delivered.sort_by(|a, b| (a.revision(), &a.kv.key).cmp(&(b.revision(), &b.kv.key)));
    let mut sorted_expected = expected.clone();
    sorted_expected.sort_by(|a, b| (a.revision(), &a.kv.key).cmp(&(b.revision(), &b.kv.key)));
    if sorted_delivered != sorted_expected {
        let want: BTreeSet<(i64, String)> = sorted_expected
            .iter()
            .map(|e| (e.revision(), e.kv.key.clone()))
            .collect();
        let got: BTreeSet<(i64, String)> = sorted_delivered
            .iter()
            .map(|e| (e.revision(), e.kv.key.clone()))
            .collect();
        let missing: Vec<_> = want.difference(&got).take(5).collect();
        let extra: Vec<_> = got.difference(&want).take(5).collect();
        let first_delivered = sorted_delivered.first().map(Event::revision);
        let property = if missing
            .first()
            .is_some_and(|(r, _)| first_delivered.is_none_or(|f| *r < f))
        {
            "resumable"
        } else {
            "reliable"
        };
        if missing.is_empty() && extra.is_empty() {
            violations.add(
                "reliable",
                format!("{name}: events in revisions {first}..={last} differ from the committed ones (values or kinds)"),
            );
        } else {
            violations.add(
                property,
                format!(
                    "{name}: revisions {first}..={last}: missing {missing:?}, not committed {extra:?}"
                ),
            );
        }
    }
}

/// prev_kv is the pair before the event (absent for a create), and a non-create event carries
/// it unless a compaction may have removed the previous version.
fn check_prev_kv(
    session: &Session,
    log: &CommittedLog,
    compactions: &Compactions,
    name: &str,
    violations: &mut Violations,
) {
    let highest_compaction = compactions.iter().map(|c| c.1).max().unwrap_or(0);
    let mut replay = Replay::new(log);
    let mut events: Vec<&Event> = session.events().collect();
    events.sort_by_key(|e| e.revision());
    for event in events {
        let revision = event.revision();
        if replay.advance_to(revision - 1).is_none() {
            return;
        }
        let before = replay.get(&event.kv.key);
        match (&event.prev, session.spec.prev_kv, &before) {
            (Some(prev), false, _) => violations.add(
                "prev-kv",
                format!("{name}: revision {revision}: prev_kv {prev} not requested"),
            ),
            (Some(prev), true, Some(real)) if prev != real => violations.add(
                "prev-kv",
                format!(
                    "{name}: revision {revision}: prev_kv {prev}, the previous pair was {real}"
                ),
            ),
            (Some(prev), true, None) => violations.add(
                "prev-kv",
                format!("{name}: revision {revision}: prev_kv {prev} for a key that did not exist"),
            ),
            (None, true, Some(real)) if real.mod_revision > highest_compaction => violations.add(
                "prev-kv",
                format!(
                    "{name}: revision {revision}: no prev_kv for {}, the previous pair was {real}",
                    event.kv.key
                ),
            ),
            _ => {}
        }
        if event.put {
            let is_create = event.kv.create_revision == revision;
            if is_create != before.is_none() {
                violations.add(
                    "is-create",
                    format!(
                        "{name}: revision {revision}: {} {} a create",
                        event.kv,
                        if is_create { "is" } else { "is not" }
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::history::KeyValue;

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

    pub fn delete(key: &str, revision: i64) -> Event {
        Event {
            put: false,
            kv: KeyValue {
                key: key.into(),
                value: String::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
                lease: 0,
            },
            prev: None,
        }
    }

    fn with_prev(mut event: Event, prev: Event) -> Event {
        event.prev = Some(prev.kv);
        event
    }

    fn response(at: u64, events: Vec<Event>) -> Received {
        Received {
            at,
            header_revision: events.last().map_or(0, Event::revision),
            created: false,
            canceled: false,
            compact_revision: 0,
            cancel_reason: String::new(),
            events,
        }
    }

    fn created(revision: i64) -> Received {
        Received {
            created: true,
            header_revision: revision,
            ..response(0, Vec::new())
        }
    }

    fn progress(revision: i64) -> Received {
        Received {
            header_revision: revision,
            ..response(0, Vec::new())
        }
    }

    fn session(start: i64, responses: Vec<Received>) -> Session {
        Session {
            watcher: 0,
            member: 0,
            spec: WatchSpec::all(true),
            start_revision: start,
            responses,
            end: SessionEnd::Stopped,
        }
    }

    /// a=1 @2, b=1 @3, a=2 @4 (with prev), delete b @5.
    fn good_events() -> Vec<Event> {
        let a1 = put("a", "1", 2, 2, 1);
        let b1 = put("b", "1", 3, 3, 1);
        vec![
            a1.clone(),
            b1.clone(),
            with_prev(put("a", "2", 2, 4, 2), a1),
            with_prev(delete("b", 5), b1),
        ]
    }

    fn check(sessions: &[Session], compactions: &Compactions) -> Violations {
        let mut violations = Violations::default();
        let reference = session(1, vec![created(1), response(1, good_events())]);
        let mut all = vec![reference];
        all.extend_from_slice(sessions);
        let log = committed_log(&all, 5, &mut violations);
        validate(&all, &log, compactions, &mut violations);
        violations
    }

    fn properties(v: &Violations) -> Vec<String> {
        v.0.keys().cloned().collect()
    }

    #[test]
    fn a_faithful_stream_passes() {
        let e = good_events();
        let split = session(
            1,
            vec![
                created(1),
                response(1, e[..2].to_vec()),
                progress(3),
                response(2, e[2..].to_vec()),
                progress(5),
            ],
        );
        let resumed = session(4, vec![created(5), response(3, e[2..].to_vec())]);
        let v = check(&[split, resumed], &[]);
        assert!(v.is_empty(), "{:?}", v.lines());
    }

    #[test]
    fn a_missing_event_breaks_reliable() {
        let e = good_events();
        let gap = session(
            1,
            vec![
                created(1),
                response(1, vec![e[0].clone(), e[2].clone(), e[3].clone()]),
            ],
        );
        assert_eq!(properties(&check(&[gap], &[])), vec!["reliable"]);
    }

    #[test]
    fn a_resumed_watch_missing_its_first_event_breaks_resumable() {
        let e = good_events();
        let late = session(3, vec![created(5), response(1, e[2..].to_vec())]);
        assert_eq!(properties(&check(&[late], &[])), vec!["resumable"]);
    }

    #[test]
    fn duplicates_reorders_and_split_revisions_are_caught() {
        let e = good_events();
        let dup = session(
            1,
            vec![
                created(1),
                response(1, e.clone()),
                response(2, vec![e[3].clone()]),
            ],
        );
        let props = properties(&check(&[dup], &[]));
        assert!(props.contains(&"unique".to_string()), "{props:?}");
        let reordered = session(
            1,
            vec![
                created(1),
                response(
                    1,
                    vec![e[1].clone(), e[0].clone(), e[2].clone(), e[3].clone()],
                ),
            ],
        );
        assert!(properties(&check(&[reordered], &[])).contains(&"ordered".to_string()));
        // One txn changing two keys at revision 2, delivered in two responses.
        let mut txn = CommittedLog::default();
        let x = put("x", "1", 2, 2, 1);
        let y = put("y", "1", 2, 2, 1);
        txn.revisions.insert(2, vec![x.clone(), y.clone()]);
        let split = session(
            1,
            vec![
                created(1),
                response(1, vec![x.clone()]),
                response(2, vec![y.clone()]),
            ],
        );
        let mut v = Violations::default();
        validate(&[split], &txn, &[], &mut v);
        assert!(
            properties(&v).contains(&"atomic".to_string()),
            "{:?}",
            v.lines()
        );
    }

    #[test]
    fn progress_ahead_of_events_is_caught() {
        let e = good_events();
        let ahead = session(
            1,
            vec![
                created(1),
                response(1, e[..2].to_vec()),
                progress(4),
                response(2, e[2..].to_vec()),
            ],
        );
        let props = properties(&check(&[ahead], &[]));
        assert!(props.contains(&"bookmarkable".to_string()), "{props:?}");
        assert!(
            props.contains(&"progress-not-ahead".to_string()),
            "{props:?}"
        );
    }

    #[test]
    fn a_wrong_or_missing_prev_kv_is_caught() {
        let e = good_events();
        let mut wrong = e.clone();
        wrong[2].prev = Some(put("a", "0", 2, 2, 1).kv);
        let v = check(&[session(1, vec![created(1), response(1, wrong)])], &[]);
        assert!(properties(&v).contains(&"prev-kv".to_string()));
        let mut missing = e.clone();
        missing[3].prev = None;
        let v = check(
            &[session(1, vec![created(1), response(1, missing.clone())])],
            &[],
        );
        assert!(properties(&v).contains(&"prev-kv".to_string()));
        // ...unless a compaction may have removed it.
        let v = check(
            &[session(1, vec![created(1), response(1, missing)])],
            &[(0, 3)],
        );
        assert!(v.is_empty(), "{:?}", v.lines());
    }

    #[test]
    fn watchers_that_disagree_and_impossible_versions_are_caught() {
        let e = good_events();
        let mut other = e.clone();
        other[1].kv.value = "other".into();
        let v = check(&[session(1, vec![created(1), response(1, other)])], &[]);
        assert!(properties(&v).contains(&"watchers-agree".to_string()));
        let mut log = CommittedLog::default();
        log.revisions.insert(2, vec![put("a", "1", 2, 2, 1)]);
        log.revisions.insert(3, vec![put("a", "2", 3, 3, 1)]);
        log.last = 3;
        let mut v = Violations::default();
        check_log_consistency(&log, &mut v);
        assert!(properties(&v).contains(&"committed-history".to_string()));
    }

    #[test]
    fn a_compaction_must_have_been_requested_above_the_start() {
        let canceled = |start: i64, compact: i64| Session {
            end: SessionEnd::Canceled {
                compact_revision: compact,
                reason: "compacted".into(),
            },
            ..session(start, vec![created(5)])
        };
        assert!(check(&[canceled(2, 3)], &[(0, 3)]).is_empty());
        assert!(
            properties(&check(&[canceled(2, 4)], &[(0, 3)])).contains(&"compaction".to_string())
        );
        assert!(
            properties(&check(&[canceled(3, 3)], &[(0, 3)])).contains(&"compaction".to_string())
        );
    }
}
