//! Model-based property test: random sequences of put, delete, txn, compact and range at any
//! revision, run against the RocksDB store and a tiny in-memory model of etcd's semantics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::write::WriteTxn;
use super::{apply, MvccStore};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::proto::mvccpb::KeyValue;
use crate::storage::Storage;

const KEYS: [&[u8]; 6] = [b"a", b"a\x00", b"a\x00b", b"b", b"c\xff", b"d"];

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: usize,
        value: u8,
    },
    Delete {
        start: usize,
        end: Option<usize>,
    },
    /// If version(key) == expected then put else delete `other`.
    Txn {
        key: usize,
        expected: i64,
        put_value: u8,
        other: usize,
    },
    Compact {
        back: i64,
    },
    Range {
        start: usize,
        end: Option<usize>,
        back: i64,
        limit: i64,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    prop_oneof![
        4 => (key.clone(), any::<u8>()).prop_map(|(key, value)| Op::Put { key, value }),
        2 => (key.clone(), proptest::option::of(0..KEYS.len() + 1)).prop_map(|(start, end)| Op::Delete { start, end }),
        2 => (key.clone(), 0i64..3, any::<u8>(), key.clone()).prop_map(|(key, expected, put_value, other)| Op::Txn { key, expected, put_value, other }),
        1 => (0i64..6).prop_map(|back| Op::Compact { back }),
        4 => (key.clone(), proptest::option::of(0..KEYS.len() + 1), -1i64..8, 0i64..4).prop_map(|(start, end, back, limit)| Op::Range { start, end, back, limit }),
    ]
}

fn key_bytes(i: usize) -> Bytes {
    Bytes::from_static(KEYS[i])
}

/// `end` index past the last key means "every key from start" ("\0").
fn range_end(end: Option<usize>) -> Bytes {
    match end {
        None => Bytes::new(),
        Some(i) if i >= KEYS.len() => Bytes::from_static(b"\0"),
        Some(i) => key_bytes(i),
    }
}

/// The model: every version of every key, forever.
#[derive(Default)]
struct Model {
    current: i64,
    compacted: i64,
    /// key -> versions (revision, live value or None for a delete), oldest first.
    history: BTreeMap<Bytes, Vec<(i64, Option<KeyValue>)>>,
}

impl Model {
    fn new() -> Self {
        Self {
            current: 1,
            compacted: -1,
            history: BTreeMap::new(),
        }
    }

    fn at(&self, key: &Bytes, rev: i64) -> Option<KeyValue> {
        self.history
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .and_then(|(_, kv)| kv.clone())
    }

    fn in_range(key: &[u8], start: &Bytes, end: &Bytes) -> bool {
        match end.as_ref() {
            [] => key == start.as_ref(),
            [0] => key >= start.as_ref(),
            e => key >= start.as_ref() && key < e,
        }
    }

    fn live(&self, start: &Bytes, end: &Bytes, rev: i64) -> Vec<KeyValue> {
        self.history
            .keys()
            .filter(|k| Self::in_range(k, start, end))
            .filter_map(|k| self.at(k, rev))
            .collect()
    }

    fn live_keys(&self) -> i64 {
        let all = Bytes::from_static(&[0]);
        self.live(&all, &all, self.current).len() as i64
    }

    fn put(&mut self, key: Bytes, value: Bytes, rev: i64) {
        let prev = self.at(&key, rev - 1);
        let kv = KeyValue {
            key: key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease: 0,
        };
        self.history.entry(key).or_default().push((rev, Some(kv)));
    }

    fn delete(&mut self, start: &Bytes, end: &Bytes, rev: i64) -> usize {
        let doomed = self.live(start, end, rev - 1);
        for kv in &doomed {
            self.history
                .entry(kv.key.clone())
                .or_default()
                .push((rev, None));
        }
        doomed.len()
    }
}

/// Room in the cache of newest versions for about one small entry, so that staged changes
/// are evicted before they are written.
const TINY_LATEST_BUDGET: usize = 200;

fn fresh_store(latest_budget: Option<usize>) -> (tempfile::TempDir, Arc<MvccStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::open(&dir.path().join("db")).expect("storage opens");
    let store = match latest_budget {
        None => MvccStore::open(storage),
        Some(budget) => MvccStore::open_with_latest_budget(storage, budget),
    }
    .expect("store opens");
    (dir, store)
}

/// How writes reach the store: each committed on its own, or staged in runs as the applier
/// stages a chunk of entries, committed before anything reads the published state.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Writes {
    Committed,
    Staged,
}

fn run_write<T>(
    store: &MvccStore,
    writes: Writes,
    f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T, EtcdError>,
) -> Result<T, EtcdError> {
    let mut txn = WriteTxn::new(store);
    let out = f(&mut txn)?;
    match writes {
        Writes::Committed => store.commit(txn.finish())?,
        Writes::Staged => store.stage(txn.finish(), &|_| {})?,
    }
    Ok(out)
}

fn wait_compacted(store: &MvccStore, rev: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.compactor().finished() < rev {
        assert!(
            Instant::now() < deadline,
            "compaction to {rev} did not finish in 10s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn check(ops: Vec<Op>, writes: Writes, latest_budget: Option<usize>) -> Result<(), TestCaseError> {
    let (_dir, store) = fresh_store(latest_budget);
    let mut model = Model::new();
    let mut published = store.current_revision();
    for op in ops {
        let reads = matches!(op, Op::Compact { .. } | Op::Range { .. });
        if reads || writes == Writes::Committed {
            store.commit_staged().expect("staged entries commit");
            published = model.current;
        }
        match op {
            Op::Put { key, value } => {
                let req = PutRequest {
                    key: key_bytes(key),
                    value: Bytes::from(vec![value]),
                    ..Default::default()
                };
                let resp = run_write(&store, writes, |t| apply::put(t, &req)).expect("put applies");
                model.current += 1;
                model.put(req.key.clone(), req.value.clone(), model.current);
                prop_assert_eq!(resp.header.map(|h| h.revision), Some(model.current));
            }
            Op::Delete { start, end } => {
                let req = DeleteRangeRequest {
                    key: key_bytes(start),
                    range_end: range_end(end),
                    ..Default::default()
                };
                let resp = run_write(&store, writes, |t| apply::delete_range(t, &req))
                    .expect("delete applies");
                let deleted = model.delete(&req.key, &req.range_end, model.current + 1);
                if deleted > 0 {
                    model.current += 1;
                }
                prop_assert_eq!(resp.deleted, deleted as i64);
                prop_assert_eq!(resp.header.map(|h| h.revision), Some(model.current));
            }
            Op::Txn {
                key,
                expected,
                put_value,
                other,
            } => {
                let req = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Version as i32,
                        key: key_bytes(key),
                        range_end: Bytes::new(),
                        target_union: Some(TargetUnion::Version(expected)),
                    }],
                    success: vec![RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key: key_bytes(key),
                            value: Bytes::from(vec![put_value]),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: key_bytes(other),
                            ..Default::default()
                        })),
                    }],
                };
                let resp = run_write(&store, writes, |t| apply::txn(t, &req)).expect("txn applies");
                let version = model
                    .at(&key_bytes(key), model.current)
                    .map_or(0, |kv| kv.version);
                let succeeded = version == expected;
                prop_assert_eq!(resp.succeeded, succeeded);
                if succeeded {
                    model.current += 1;
                    model.put(key_bytes(key), Bytes::from(vec![put_value]), model.current);
                } else if model.delete(&key_bytes(other), &Bytes::new(), model.current + 1) > 0 {
                    model.current += 1;
                }
                prop_assert_eq!(resp.header.map(|h| h.revision), Some(model.current));
            }
            Op::Compact { back } => {
                let rev = model.current - back;
                let req = CompactionRequest {
                    revision: rev,
                    physical: true,
                };
                let got = run_write(&store, Writes::Committed, |t| apply::compaction(t, &req))
                    .map(|_| ());
                let want = if rev <= model.compacted {
                    Err(EtcdError::Compacted)
                } else if rev > model.current {
                    Err(EtcdError::FutureRevision)
                } else {
                    model.compacted = rev;
                    Ok(())
                };
                prop_assert_eq!(&got, &want);
                if got.is_ok() {
                    wait_compacted(&store, rev);
                }
            }
            Op::Range {
                start,
                end,
                back,
                limit,
            } => {
                let revision = if back < 0 {
                    0
                } else {
                    model.current - back + 1
                };
                let req = RangeRequest {
                    key: key_bytes(start),
                    range_end: range_end(end),
                    revision,
                    limit,
                    ..Default::default()
                };
                let got = store.range(&req);
                let at = if revision <= 0 {
                    model.current
                } else {
                    revision
                };
                if revision > model.current {
                    prop_assert_eq!(got.err(), Some(EtcdError::FutureRevision));
                } else if at < model.compacted {
                    prop_assert_eq!(got.err(), Some(EtcdError::Compacted));
                } else {
                    let resp = got.expect("range succeeds");
                    let mut want = model.live(&req.key, &req.range_end, at);
                    prop_assert_eq!(resp.count, want.len() as i64);
                    let more = limit > 0 && want.len() > limit as usize;
                    if limit > 0 {
                        want.truncate(limit as usize);
                    }
                    prop_assert_eq!(resp.more, more);
                    prop_assert_eq!(resp.kvs, want);
                    prop_assert_eq!(resp.header.map(|h| h.revision), Some(model.current));
                }
            }
        }
        if writes == Writes::Staged && !reads {
            // Staged writes are not published: readers stay at the last committed revision
            // while the next write starts after them.
            prop_assert_eq!(store.current_revision(), published, "published revision");
            prop_assert_eq!(store.write_revision(), model.current, "write revision");
            continue;
        }
        prop_assert_eq!(store.current_revision(), model.current, "current revision");
        prop_assert_eq!(store.keys_total(), model.live_keys(), "live-key count");
    }
    store.commit_staged().expect("staged entries commit");
    prop_assert_eq!(store.current_revision(), model.current, "current revision");
    // The count is read back as persisted (a restart or a snapshot install reloads it).
    store.reload().expect("reload");
    prop_assert_eq!(
        store.keys_total(),
        model.live_keys(),
        "live-key count reloaded"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        check(ops, Writes::Committed, None)?;
    }

    #[test]
    fn store_matches_model_with_staged_writes(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        check(ops, Writes::Staged, None)?;
    }

    /// Staged changes evicted from the cache before they are written: a put that misses it
    /// must not read RocksDB without them.
    #[test]
    fn store_matches_model_with_staged_writes_and_a_tiny_cache(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        check(ops, Writes::Staged, Some(TINY_LATEST_BUDGET))?;
    }
}

#[test]
fn reads_at_the_compacted_revision_still_work_after_physical_compaction() {
    let (_dir, store) = fresh_store(None);
    for v in [b"1", b"2", b"3"] {
        let req = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::copy_from_slice(v),
            ..Default::default()
        };
        run_write(&store, Writes::Committed, |t| apply::put(t, &req)).expect("put");
    }
    let req = CompactionRequest {
        revision: 3,
        physical: true,
    };
    run_write(&store, Writes::Committed, |t| apply::compaction(t, &req)).expect("compact");
    wait_compacted(&store, 3);
    let at3 = store
        .range(&RangeRequest {
            key: Bytes::from_static(b"k"),
            revision: 3,
            ..Default::default()
        })
        .expect("read at the compacted revision");
    assert_eq!(at3.kvs[0].value, Bytes::from_static(b"2"));
    let below = store.range(&RangeRequest {
        key: Bytes::from_static(b"k"),
        revision: 2,
        ..Default::default()
    });
    assert_eq!(below.err(), Some(EtcdError::Compacted));
}

#[test]
fn a_store_without_a_recorded_key_count_is_counted_once() {
    let (_dir, store) = fresh_store(None);
    for key in [&b"a"[..], b"b", b"c"] {
        let req = PutRequest {
            key: Bytes::copy_from_slice(key),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        };
        run_write(&store, Writes::Committed, |t| apply::put(t, &req)).expect("put");
    }
    // As a store written before the count existed.
    let storage = store.storage().clone();
    storage
        .db()
        .delete_cf(storage.cf(crate::storage::CF_META), b"mvcc/keys_total")
        .expect("delete the recorded count");
    store.reload().expect("reload");
    assert_eq!(store.keys_total(), 3);
}
