//! etcd's key-value store as a sequential specification: one global revision, per key its
//! value, create and mod revisions, version and lease; txn compares and branches; puts,
//! deletes (single and ranges), ranges with limit, count and keys-only; leases only as far as
//! they touch keys (a revoked or expired lease deletes its keys in one revision and never comes
//! back). Lease time-to-live is not modelled: expiry is a server decision, seen in the watch
//! history as a revision that deletes exactly a lease's keys.
//!
//! [`KvModel`] plugs this into the generic checker (`linearize`). Every operation carries what
//! is known of its answer ([`Expect`]): the whole response, only the revision it committed at
//! (an indeterminate request found in the watch history), or nothing (it may or may not have
//! happened). Compaction is checked apart (`check.rs`): it changes what old-revision reads may
//! answer, not the state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::history::{
    Compare, CompareOp, CompareTarget, KeyValue, RangeRequest, RangeResult, Request, Response,
    TxnOp, TxnRequest, TxnResult,
};
use crate::linearize::{Entry, Model};

/// A key's current version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct KvState {
    pub revision: i64,
    pub kvs: Arc<BTreeMap<String, Version>>,
    /// Leases revoked or expired: a put with one of them must fail, a keep-alive answer 0.
    pub dead_leases: Arc<BTreeSet<i64>>,
}

impl KvState {
    /// The state of a fresh store (revision 1, as etcd's first revision).
    pub fn fresh() -> KvState {
        KvState {
            revision: 1,
            ..KvState::default()
        }
    }

    pub fn key_value(&self, key: &str) -> Option<KeyValue> {
        self.kvs.get(key).map(|v| KeyValue {
            key: key.to_string(),
            value: v.value.clone(),
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            version: v.version,
            lease: v.lease,
        })
    }

    /// What a Range answers in this state (the revision aside).
    pub fn range(&self, request: &RangeRequest) -> RangeResult {
        let matching: Vec<KeyValue> = match &request.end {
            None => self.key_value(&request.key).into_iter().collect(),
            Some(_) => self
                .kvs
                .range(request.key.clone()..)
                .take_while(|(k, _)| request.contains(k))
                .filter_map(|(k, _)| self.key_value(k))
                .collect(),
        };
        let count = matching.len() as i64;
        let mut kvs = if request.count_only {
            Vec::new()
        } else {
            matching
        };
        let more = request.limit > 0 && count > request.limit;
        if request.limit > 0 {
            kvs.truncate(request.limit as usize);
        }
        if request.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        RangeResult { kvs, count, more }
    }

    fn field(&self, key: &str, target: CompareTarget) -> (i64, i64) {
        let v = self.kvs.get(key);
        match target {
            CompareTarget::Version(want) => (v.map_or(0, |v| v.version), want),
            CompareTarget::Create(want) => (v.map_or(0, |v| v.create_revision), want),
            CompareTarget::Mod(want) => (v.map_or(0, |v| v.mod_revision), want),
            CompareTarget::Lease(want) => (v.map_or(0, |v| v.lease), want),
        }
    }

    pub fn compare(&self, compare: &Compare) -> bool {
        fn holds<T: Ord>(have: T, op: CompareOp, want: T) -> bool {
            match op {
                CompareOp::Equal => have == want,
                CompareOp::NotEqual => have != want,
                CompareOp::Greater => have > want,
                CompareOp::Less => have < want,
            }
        }
        match compare {
            Compare::Field { key, target, op } => {
                let (have, want) = self.field(key, *target);
                holds(have, *op, want)
            }
            Compare::Value { key, value, op } => match self.kvs.get(key) {
                None => false,
                Some(v) => holds(v.value.as_str(), *op, value.as_str()),
            },
        }
    }
}

/// The effect of a request on a state, as the store would answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub state: KvState,
    pub response: Response,
}

/// Why a request cannot be applied at all (etcd refuses it before any effect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    LeaseNotFound,
    /// Not a KV request (compaction, defragment, lease grant): nothing to apply.
    NotKv,
}

/// A write set under construction: the mutable copy is made on the first write only.
struct Writer<'a> {
    base: &'a KvState,
    kvs: Option<BTreeMap<String, Version>>,
    dead: Option<BTreeSet<i64>>,
    changed: bool,
}

impl<'a> Writer<'a> {
    fn new(base: &'a KvState) -> Writer<'a> {
        Writer {
            base,
            kvs: None,
            dead: None,
            changed: false,
        }
    }

    fn kvs(&self) -> &BTreeMap<String, Version> {
        self.kvs.as_ref().unwrap_or(&self.base.kvs)
    }

    fn kvs_mut(&mut self) -> &mut BTreeMap<String, Version> {
        self.kvs.get_or_insert_with(|| (*self.base.kvs).clone())
    }

    fn is_dead(&self, lease: i64) -> bool {
        self.dead
            .as_ref()
            .unwrap_or(&self.base.dead_leases)
            .contains(&lease)
    }

    fn kill(&mut self, lease: i64) {
        let base = &self.base.dead_leases;
        self.dead
            .get_or_insert_with(|| (**base).clone())
            .insert(lease);
    }

    /// The state as reads inside the txn see it (writes of this txn at `revision + 1`).
    fn view(&self) -> KvState {
        KvState {
            revision: self.base.revision + 1,
            kvs: Arc::new(self.kvs().clone()),
            dead_leases: self.base.dead_leases.clone(),
        }
    }

    fn put(&mut self, key: &str, value: &str, lease: i64) {
        let revision = self.base.revision + 1;
        let kvs = self.kvs_mut();
        let version = match kvs.get(key) {
            Some(old) => Version {
                value: value.to_string(),
                create_revision: old.create_revision,
                mod_revision: revision,
                version: old.version + 1,
                lease,
            },
            None => Version {
                value: value.to_string(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease,
            },
        };
        kvs.insert(key.to_string(), version);
        self.changed = true;
    }

    fn delete(&mut self, key: &str, end: &Option<String>) -> i64 {
        let request = RangeRequest {
            end: end.clone(),
            ..RangeRequest::key(key)
        };
        let doomed: Vec<String> = match end {
            None => self
                .kvs()
                .get(key)
                .map(|_| key.to_string())
                .into_iter()
                .collect(),
            Some(_) => self
                .kvs()
                .range(key.to_string()..)
                .take_while(|(k, _)| request.contains(k))
                .map(|(k, _)| k.clone())
                .collect(),
        };
        if doomed.is_empty() {
            return 0;
        }
        let kvs = self.kvs_mut();
        for k in &doomed {
            kvs.remove(k);
        }
        self.changed = true;
        doomed.len() as i64
    }

    fn finish(self) -> KvState {
        let revision = self.base.revision + i64::from(self.changed);
        KvState {
            revision,
            kvs: self.kvs.map_or_else(|| self.base.kvs.clone(), Arc::new),
            dead_leases: self
                .dead
                .map_or_else(|| self.base.dead_leases.clone(), Arc::new),
        }
    }
}

fn apply_txn_ops(writer: &mut Writer<'_>, ops: &[TxnOp]) -> Result<Vec<TxnResult>, Refused> {
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            TxnOp::Range(range) => {
                let view = if writer.changed {
                    writer.view()
                } else {
                    writer.base.clone()
                };
                TxnResult::Range(view.range(range))
            }
            TxnOp::Put { key, value, lease } => {
                if *lease != 0 && writer.is_dead(*lease) {
                    return Err(Refused::LeaseNotFound);
                }
                writer.put(key, value, *lease);
                TxnResult::Put
            }
            TxnOp::Delete { key, end } => TxnResult::Delete {
                deleted: writer.delete(key, end),
            },
        });
    }
    Ok(results)
}

/// Applies `request` to `state` as the store would, with the answer it would give.
pub fn apply(state: &KvState, request: &Request) -> Result<Applied, Refused> {
    match request {
        Request::Range(range) => Ok(Applied {
            state: state.clone(),
            response: Response::Range {
                revision: state.revision,
                result: state.range(range),
            },
        }),
        Request::Put { key, value, lease } => {
            let mut writer = Writer::new(state);
            if *lease != 0 && writer.is_dead(*lease) {
                return Err(Refused::LeaseNotFound);
            }
            writer.put(key, value, *lease);
            let next = writer.finish();
            Ok(Applied {
                response: Response::Put {
                    revision: next.revision,
                },
                state: next,
            })
        }
        Request::Delete { key, end } => {
            let mut writer = Writer::new(state);
            let deleted = writer.delete(key, end);
            let next = writer.finish();
            Ok(Applied {
                response: Response::Delete {
                    revision: next.revision,
                    deleted,
                },
                state: next,
            })
        }
        Request::Txn(TxnRequest {
            compares,
            success,
            failure,
        }) => {
            let succeeded = compares.iter().all(|c| state.compare(c));
            let mut writer = Writer::new(state);
            let results = apply_txn_ops(&mut writer, if succeeded { success } else { failure })?;
            let next = writer.finish();
            Ok(Applied {
                response: Response::Txn {
                    revision: next.revision,
                    succeeded,
                    results,
                },
                state: next,
            })
        }
        Request::LeaseRevoke { id } => {
            let mut writer = Writer::new(state);
            let keys: Vec<String> = state
                .kvs
                .iter()
                .filter(|(_, v)| v.lease == *id)
                .map(|(k, _)| k.clone())
                .collect();
            for key in &keys {
                writer.delete(key, &None);
            }
            writer.kill(*id);
            let next = writer.finish();
            Ok(Applied {
                response: Response::LeaseRevoke {
                    revision: next.revision,
                },
                state: next,
            })
        }
        Request::LeaseExpiry { id, keys } => {
            let attached: Vec<&String> = state
                .kvs
                .iter()
                .filter(|(_, v)| v.lease == *id)
                .map(|(k, _)| k)
                .collect();
            let mut listed: Vec<&String> = keys.iter().collect();
            listed.sort();
            if attached != listed {
                // An expiry deletes every key of its lease, and only those.
                return Err(Refused::LeaseNotFound);
            }
            let mut writer = Writer::new(state);
            for key in keys {
                writer.delete(key, &None);
            }
            writer.kill(*id);
            let next = writer.finish();
            Ok(Applied {
                response: Response::LeaseRevoke {
                    revision: next.revision,
                },
                state: next,
            })
        }
        Request::LeaseKeepAlive { id } => Ok(Applied {
            state: state.clone(),
            response: Response::LeaseKeepAlive {
                ttl: i64::from(!state.dead_leases.contains(id)),
            },
        }),
        Request::LeaseGrant { .. } | Request::Compact { .. } | Request::Defragment => {
            Err(Refused::NotKv)
        }
    }
}

/// What the checker knows of an operation's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The whole answer: the model must give exactly it.
    Response(Response),
    /// An indeterminate request known to have committed at this revision (from the watch
    /// history), in the txn branch given if known.
    CommittedAt {
        revision: i64,
        succeeded: Option<bool>,
    },
    /// Nothing: the request may have happened once, any time after its invocation, or not.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct KvOp {
    /// Index of the operation in the recorded history.
    pub id: usize,
    pub request: Request,
    pub expect: Expect,
}

/// Whether the answer given matches the model's. Reads at an old revision are matched on
/// their header only: their content is checked against the watch history's replay.
pub fn matches(request: &Request, model: &Response, observed: &Response) -> bool {
    match (request, model, observed) {
        (
            Request::Range(range),
            Response::Range { revision, result },
            Response::Range {
                revision: seen_revision,
                result: seen,
            },
        ) => revision == seen_revision && (range.revision != 0 || result == seen),
        // Lease answers: keelson's and etcd's headers on lease calls are not part of what
        // clients rely on; only the key effects (modelled) and liveness matter.
        (
            Request::LeaseRevoke { .. },
            Response::LeaseRevoke { .. },
            Response::LeaseRevoke { .. },
        ) => true,
        (
            Request::LeaseKeepAlive { .. },
            Response::LeaseKeepAlive { ttl: alive },
            Response::LeaseKeepAlive { ttl },
        ) => *ttl <= 0 || *alive > 0,
        (_, model, observed) => model == observed,
    }
}

/// etcd's KV as a `linearize::Model`. The store has one global revision, so a history does
/// not split by key: one part, from `initial`.
pub struct KvModel {
    pub initial: KvState,
}

impl Model for KvModel {
    type State = KvState;
    type Op = KvOp;

    fn step(&self, state: &KvState, op: &KvOp) -> Option<KvState> {
        let applied = apply(state, &op.request);
        match (&op.expect, applied) {
            (Expect::Response(observed), Ok(applied)) => {
                matches(&op.request, &applied.response, observed).then_some(applied.state)
            }
            (Expect::Response(_), Err(_)) => None,
            (
                Expect::CommittedAt {
                    revision,
                    succeeded,
                },
                Ok(applied),
            ) => {
                let branch_ok = match (succeeded, &applied.response) {
                    (Some(want), Response::Txn { succeeded, .. }) => want == succeeded,
                    _ => true,
                };
                (applied.state.revision == *revision
                    && applied.state.revision == state.revision + 1
                    && branch_ok)
                    .then_some(applied.state)
            }
            (Expect::CommittedAt { .. }, Err(_)) => None,
            (Expect::Unknown, Ok(applied)) => Some(applied.state),
            // A refused request had no effect: linearizing it changes nothing.
            (Expect::Unknown, Err(_)) => Some(state.clone()),
        }
    }

    fn initial(&self, _: &[usize]) -> KvState {
        self.initial.clone()
    }
}

/// Entries for the checker, in the order of `ops`.
pub fn entries(ops: Vec<(u64, Option<u64>, KvOp)>) -> Vec<Entry<KvOp>> {
    ops.into_iter()
        .map(|(call, ret, op)| Entry {
            call,
            ret,
            optional: matches!(op.expect, Expect::Unknown),
            op,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    #[test]
    fn puts_count_versions_and_keep_the_create_revision() {
        let s = KvState::fresh();
        let a = apply(&s, &put("a", "1")).expect("put");
        assert_eq!(a.response, Response::Put { revision: 2 });
        let b = apply(&a.state, &put("a", "2")).expect("put");
        let kv = b.state.key_value("a").expect("a");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    }

    #[test]
    fn deleting_nothing_keeps_the_revision() {
        let s = KvState::fresh();
        let d = apply(
            &s,
            &Request::Delete {
                key: "a".into(),
                end: None,
            },
        )
        .expect("delete");
        assert_eq!(
            d.response,
            Response::Delete {
                revision: 1,
                deleted: 0
            }
        );
    }

    #[test]
    fn txn_reads_see_its_own_writes_and_compares_missing_keys_as_zero() {
        let s = KvState::fresh();
        let txn = Request::Txn(TxnRequest {
            compares: vec![Compare::Field {
                key: "a".into(),
                target: CompareTarget::Mod(0),
                op: CompareOp::Equal,
            }],
            success: vec![
                TxnOp::Put {
                    key: "a".into(),
                    value: "x".into(),
                    lease: 0,
                },
                TxnOp::Range(RangeRequest::key("a")),
            ],
            failure: vec![TxnOp::Range(RangeRequest::key("a"))],
        });
        let a = apply(&s, &txn).expect("txn");
        let Response::Txn {
            revision,
            succeeded,
            results,
        } = &a.response
        else {
            panic!("not a txn answer");
        };
        assert_eq!((*revision, *succeeded), (2, true));
        let TxnResult::Range(r) = &results[1] else {
            panic!("range result");
        };
        assert_eq!(r.kvs[0].mod_revision, 2);
        // Again: the key exists now, the compare fails, nothing changes.
        let b = apply(&a.state, &txn).expect("txn");
        assert!(matches!(
            b.response,
            Response::Txn {
                revision: 2,
                succeeded: false,
                ..
            }
        ));
        // A value compare on a missing key is false whatever the operator.
        assert!(!s.compare(&Compare::Value {
            key: "zz".into(),
            value: "".into(),
            op: CompareOp::NotEqual
        }));
    }

    #[test]
    fn ranges_honour_limit_count_only_and_keys_only() {
        let mut s = KvState::fresh();
        for k in ["a", "b", "c"] {
            s = apply(&s, &put(k, k)).expect("put").state;
        }
        let mut r = RangeRequest::range("a", "\0");
        r.limit = 2;
        let got = s.range(&r);
        assert_eq!((got.kvs.len(), got.count, got.more), (2, 3, true));
        r.count_only = true;
        assert!(s.range(&r).kvs.is_empty());
        let mut k = RangeRequest::range("b", "c");
        k.keys_only = true;
        let got = s.range(&k);
        assert_eq!(got.kvs.len(), 1);
        assert_eq!(got.kvs[0].value, "");
    }

    #[test]
    fn revoking_a_lease_deletes_its_keys_in_one_revision_and_it_stays_dead() {
        let mut s = KvState::fresh();
        for k in ["a", "b"] {
            s = apply(
                &s,
                &Request::Put {
                    key: k.into(),
                    value: k.into(),
                    lease: 9,
                },
            )
            .expect("put")
            .state;
        }
        let r = apply(&s, &Request::LeaseRevoke { id: 9 }).expect("revoke");
        assert_eq!(r.state.revision, s.revision + 1);
        assert!(r.state.kvs.is_empty());
        assert_eq!(
            apply(
                &r.state,
                &Request::Put {
                    key: "c".into(),
                    value: "c".into(),
                    lease: 9
                }
            ),
            Err(Refused::LeaseNotFound)
        );
        // An expiry must name exactly the lease's keys.
        let partial = Request::LeaseExpiry {
            id: 9,
            keys: vec!["a".into()],
        };
        assert_eq!(apply(&s, &partial), Err(Refused::LeaseNotFound));
    }
}
