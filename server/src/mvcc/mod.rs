//! The MVCC key-value store on RocksDB: revisions, versions, ranges at any retained revision,
//! writes that become one RocksDB batch per run of applied raft entries, and compaction.
//!
//! Nothing here keeps a per-key index in memory: a range at any revision is answered from the
//! version encoding on disk (see `keys`), so memory and restart time do not grow with the data.

pub mod apply;
pub mod compact;
pub mod hash;
pub mod keys;
pub mod latest;
pub mod read;
pub mod record;
pub mod staged;
pub mod watch;
pub mod write;

#[cfg(test)]
mod model_test;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rocksdb::WriteBatch;

use crate::error::{EtcdError, EtcdResult};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse};
use crate::proto::mvccpb::{Event, KeyValue};
use crate::storage::{Storage, StorageError, CF_LEASE, CF_META};
use read::{execute_range, kv_iterator, scan_visible, KeyRange, KvSource, Visible};

pub use compact::Compactor;
pub use keys::Revision;

pub(crate) const META_CURRENT_REVISION: &[u8] = b"mvcc/current_revision";
pub(crate) const META_COMPACT_SCHEDULED: &[u8] = b"mvcc/compact_scheduled";
pub(crate) const META_COMPACT_FINISHED: &[u8] = b"mvcc/compact_finished";
/// The number of live keys, kept with every applied batch (etcd's `keys_total` gauge).
pub(crate) const META_KEYS_TOTAL: &[u8] = b"mvcc/keys_total";

/// A fresh store is at revision 1, as etcd's is.
const INITIAL_REVISION: i64 = 1;
/// No compaction has happened yet (etcd reports -1 too).
const NO_COMPACTION: i64 = -1;
/// Memory for the newest versions of recently written keys (see `latest`): at 256-byte values
/// about 170k keys, the hot set of most Kubernetes clusters.
const LATEST_VERSIONS_BYTES: usize = 64 << 20;

pub struct MvccStore {
    storage: Arc<Storage>,
    current: AtomicI64,
    /// Live keys at `current`; written only by `commit` (one applier) and `reload`.
    keys: AtomicI64,
    /// Shared with the watch hub, which cancels watchers that fall below it.
    compact_scheduled: Arc<AtomicI64>,
    revision_tx: tokio::sync::watch::Sender<i64>,
    compactor: Compactor,
    hub: Arc<watch::WatchHub>,
    latest: latest::LatestVersions,
    /// Entries applied but not yet written or published (`stage`); only the applier uses it.
    staged: Mutex<staged::Staged>,
}

impl MvccStore {
    pub fn open(storage: Arc<Storage>) -> EtcdResult<Arc<Self>> {
        Self::open_with_latest_budget(storage, LATEST_VERSIONS_BYTES)
    }

    fn open_with_latest_budget(
        storage: Arc<Storage>,
        latest_budget: usize,
    ) -> EtcdResult<Arc<Self>> {
        let current = read_meta_i64(&storage, META_CURRENT_REVISION)?.unwrap_or(INITIAL_REVISION);
        let scheduled = read_meta_i64(&storage, META_COMPACT_SCHEDULED)?.unwrap_or(NO_COMPACTION);
        let finished = read_meta_i64(&storage, META_COMPACT_FINISHED)?.unwrap_or(NO_COMPACTION);
        let (revision_tx, _) = tokio::sync::watch::channel(current);
        let compactor = Compactor::start(storage.clone(), finished)
            .map_err(|e| EtcdError::Internal(format!("cannot start the compactor: {e}")))?;
        let compact_scheduled = Arc::new(AtomicI64::new(scheduled));
        let hub = watch::WatchHub::start(storage.clone(), compact_scheduled.clone(), current)
            .map_err(|e| EtcdError::Internal(format!("cannot start the watch hub: {e}")))?;
        let store = Arc::new(Self {
            storage,
            current: AtomicI64::new(current),
            keys: AtomicI64::new(0),
            compact_scheduled,
            revision_tx,
            compactor,
            hub,
            latest: latest::LatestVersions::new(current, latest_budget),
            staged: Mutex::new(staged::Staged::at(current, 0)),
        });
        if scheduled > finished {
            // A compaction was interrupted by a restart: finish it.
            store.compactor.schedule(scheduled);
        }
        store.load_keys_total()?;
        Ok(store)
    }

    /// The number of live keys.
    pub fn keys_total(&self) -> i64 {
        self.keys.load(Ordering::Acquire)
    }

    /// Reads the live-key count, counting once (and recording it) for a store written
    /// before the count was kept. Runs while nothing is applied.
    fn load_keys_total(&self) -> EtcdResult<()> {
        let keys = match read_meta_i64(&self.storage, META_KEYS_TOTAL)? {
            Some(keys) => keys,
            None => {
                let all = RangeRequest {
                    key: Bytes::from_static(&[0]),
                    range_end: Bytes::from_static(&[0]),
                    count_only: true,
                    ..Default::default()
                };
                let keys = self.range(&all)?.count;
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    self.storage.cf(CF_META),
                    META_KEYS_TOTAL,
                    keys.to_be_bytes(),
                );
                self.storage.write(batch)?;
                keys
            }
        };
        self.keys.store(keys, Ordering::Release);
        *self.staged()? = staged::Staged::at(self.current_revision(), keys);
        Ok(())
    }

    fn staged(&self) -> EtcdResult<MutexGuard<'_, staged::Staged>> {
        self.staged
            .lock()
            .map_err(|_| EtcdError::Internal("the applier's staged state is poisoned".into()))
    }

    /// The revision the next applied entry starts from: the current revision plus what is
    /// staged and not yet published.
    pub fn write_revision(&self) -> i64 {
        match self.staged.lock() {
            Ok(staged) => staged.revision,
            Err(poisoned) => poisoned.into_inner().revision,
        }
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The revision of the last committed change.
    pub fn current_revision(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    /// Reads below this revision fail with `Compacted`.
    pub fn compacted_revision(&self) -> i64 {
        self.compact_scheduled.load(Ordering::Acquire)
    }

    pub fn compactor(&self) -> &Compactor {
        &self.compactor
    }

    /// Watches the current revision as it advances.
    pub fn subscribe_revision(&self) -> tokio::sync::watch::Receiver<i64> {
        self.revision_tx.subscribe()
    }

    pub fn watch_hub(&self) -> &Arc<watch::WatchHub> {
        &self.hub
    }

    /// etcd's Range at the store's current state (or the revision the request names).
    pub fn range(&self, req: &RangeRequest) -> EtcdResult<RangeResponse> {
        let mut reader = StoreReader {
            store: self,
            current: self.current_revision(),
        };
        execute_range(&mut reader, req)
    }

    /// etcd's HashKV at revision `at` (0: the current one): (hash, compacted revision, the
    /// revision hashed).
    pub fn hash_kv(&self, at: i64) -> EtcdResult<(u32, i64, i64)> {
        let current = self.current_revision();
        let compacted = self.compacted_revision();
        let at = if at == 0 { current } else { at };
        if at > current {
            return Err(EtcdError::FutureRevision);
        }
        if at <= compacted {
            return Err(EtcdError::Compacted);
        }
        let any_live = RangeRequest {
            key: Bytes::from_static(&[0]),
            range_end: Bytes::from_static(&[0]),
            revision: at,
            limit: 1,
            keys_only: true,
            ..Default::default()
        };
        let keep_at = if self.range(&any_live)?.kvs.is_empty() {
            compacted
        } else {
            at
        };
        let hash = hash::hash_kv(&self.storage, at, compacted, keep_at)?;
        Ok((hash, compacted, at))
    }

    /// The newest live version of `key` at `at`.
    pub fn get(&self, key: &Bytes, at: i64) -> EtcdResult<Option<KeyValue>> {
        read::latest_version(&self.storage, key, at)
    }

    /// The newest live version of `key` at `at`, through the cache of recent writes: the
    /// lookup every put makes for the version it replaces.
    pub fn get_for_write(&self, key: &Bytes, at: i64) -> EtcdResult<Option<KeyValue>> {
        if let Some(known) = self.latest.get(key, at) {
            return Ok(known);
        }
        {
            // A key the cache lacks was not changed by the staged entries (they are all in
            // it, unless it dropped one): then RocksDB, without them, has its newest version,
            // and the staged entries keep waiting to be written as one batch.
            let mut staged = self.staged()?;
            if self
                .latest
                .may_lack_changes_after(staged.written_revision, at)
            {
                self.write_locked(&mut staged)?;
            }
        }
        let found = self.get(key, at)?;
        self.latest.fill(key, at, &found);
        Ok(found)
    }

    pub fn lease_exists(&self, lease: i64) -> EtcdResult<bool> {
        let key = (lease as u64).to_be_bytes();
        Ok(self
            .storage
            .db()
            .get_pinned_cf(self.storage.cf(CF_LEASE), key)?
            .is_some())
    }

    /// Writes an applied entry's batch, with everything staged before it, and publishes it all.
    pub fn commit(&self, finished: write::FinishedTxn) -> EtcdResult<()> {
        self.stage(finished, &|_| {})?;
        self.commit_staged()
    }

    /// Takes an applied entry's changes without writing them: the next entry starts from its
    /// revision, and `commit_staged` (or `commit`) writes and publishes them with the entries
    /// staged around it in one batch. `record` adds what the caller keeps about this entry
    /// (its applied index); only the newest staged entry's record is written.
    pub fn stage(
        &self,
        finished: write::FinishedTxn,
        record: &dyn Fn(&mut WriteBatch),
    ) -> EtcdResult<()> {
        let write::FinishedTxn {
            batch,
            begin,
            change,
            written,
            compaction,
            keys_delta,
        } = finished;
        let mut staged = self.staged()?;
        if begin != staged.revision {
            return Err(EtcdError::Internal(format!(
                "an entry started at revision {begin} while the store is at {}",
                staged.revision
            )));
        }
        staged.unwritten.append(&batch);
        let mut trailer = WriteBatch::default();
        record(&mut trailer);
        if !trailer.is_empty() {
            staged.trailer.clear();
            staged.trailer.append(&trailer);
        }
        staged.keys += keys_delta;
        if let Some(change) = change {
            self.latest.advance(begin, change.revision, written);
            staged.revision = change.revision;
            staged.unpublished.push(change);
        }
        staged.compactions.extend(compaction);
        Ok(())
    }

    /// Writes what is staged (so that a read of RocksDB sees it), without publishing it.
    pub fn write_staged(&self) -> EtcdResult<()> {
        let mut staged = self.staged()?;
        self.write_locked(&mut staged)
    }

    fn write_locked(&self, staged: &mut staged::Staged) -> EtcdResult<()> {
        if !staged.has_unwritten() {
            return Ok(());
        }
        let mut batch = staged.unwritten.to_batch(&staged.trailer);
        if staged.revision != staged.written_revision {
            batch.put_cf(
                self.storage.cf(CF_META),
                META_CURRENT_REVISION,
                staged.revision.to_be_bytes(),
            );
        }
        if staged.keys != staged.written_keys {
            batch.put_cf(
                self.storage.cf(CF_META),
                META_KEYS_TOTAL,
                staged.keys.to_be_bytes(),
            );
        }
        self.storage.write(batch)?;
        staged.unwritten.clear();
        staged.trailer.clear();
        staged.written_revision = staged.revision;
        staged.written_keys = staged.keys;
        Ok(())
    }

    /// Writes everything staged as one batch, then publishes it: revisions, events, the
    /// live-key count and compactions, in entry order.
    pub fn commit_staged(&self) -> EtcdResult<()> {
        let mut staged = self.staged()?;
        self.write_locked(&mut staged)?;
        self.keys.store(staged.keys, Ordering::Release);
        let changes = std::mem::take(&mut staged.unpublished);
        let compactions = std::mem::take(&mut staged.compactions);
        drop(staged);
        let mut newest = None;
        for change in changes {
            self.current.store(change.revision, Ordering::Release);
            self.hub.publish(change.revision, &change.events);
            newest = Some(change.revision);
        }
        if let Some(revision) = newest {
            self.revision_tx.send_replace(revision);
        }
        for revision in compactions {
            self.start_compaction(revision);
        }
        Ok(())
    }

    /// Records a scheduled compaction in `batch`; physical removal starts after `commit`.
    fn schedule_compaction(&self, batch: &mut WriteBatch, revision: i64) -> EtcdResult<()> {
        if revision <= self.compacted_revision() {
            return Err(EtcdError::Compacted);
        }
        if revision > self.write_revision() {
            return Err(EtcdError::FutureRevision);
        }
        batch.put_cf(
            self.storage.cf(CF_META),
            META_COMPACT_SCHEDULED,
            revision.to_be_bytes(),
        );
        Ok(())
    }

    /// Makes a compaction recorded by `schedule_compaction` visible and starts removing versions.
    fn start_compaction(&self, revision: i64) {
        self.compact_scheduled.store(revision, Ordering::Release);
        self.compactor.schedule(revision);
    }

    /// Reloads in-memory state after the data underneath was replaced (snapshot install).
    pub fn reload(&self) -> EtcdResult<()> {
        let current =
            read_meta_i64(&self.storage, META_CURRENT_REVISION)?.unwrap_or(INITIAL_REVISION);
        let scheduled =
            read_meta_i64(&self.storage, META_COMPACT_SCHEDULED)?.unwrap_or(NO_COMPACTION);
        let finished =
            read_meta_i64(&self.storage, META_COMPACT_FINISHED)?.unwrap_or(NO_COMPACTION);
        self.current.store(current, Ordering::Release);
        self.compact_scheduled.store(scheduled, Ordering::Release);
        self.compactor.reset(finished);
        if scheduled > finished {
            self.compactor.schedule(scheduled);
        }
        self.hub.reset(current);
        self.latest.reset(current);
        self.revision_tx.send_replace(current);
        self.load_keys_total()
    }
}

/// What one applied entry changed: the new revision and the events it produced.
pub struct CommittedChange {
    pub revision: i64,
    pub events: Vec<Event>,
}

/// Reads the committed store: the kv source of plain (non-txn) requests.
struct StoreReader<'a> {
    store: &'a MvccStore,
    current: i64,
}

impl KvSource for StoreReader<'_> {
    fn current_revision(&self) -> i64 {
        self.current
    }

    fn visit(
        &mut self,
        range: &KeyRange,
        at: i64,
        visitor: &mut dyn FnMut(Visible<'_>) -> EtcdResult<bool>,
    ) -> EtcdResult<()> {
        visit_committed(self.store, range, at, visitor)
    }
}

/// Visits committed versions. The iterator pins a consistent view before the compaction check,
/// so a compaction that starts afterwards cannot remove what this read is entitled to see.
fn visit_committed(
    store: &MvccStore,
    range: &KeyRange,
    at: i64,
    visitor: &mut dyn FnMut(Visible<'_>) -> EtcdResult<bool>,
) -> EtcdResult<()> {
    let mut iter = kv_iterator(&store.storage, range);
    if at < store.compacted_revision() {
        return Err(EtcdError::Compacted);
    }
    scan_visible(&mut iter, range, at, visitor)
}

fn read_meta_i64(storage: &Storage, key: &[u8]) -> Result<Option<i64>, StorageError> {
    let Some(raw) = storage.db().get_pinned_cf(storage.cf(CF_META), key)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = raw
        .as_ref()
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("meta key {key:?} is not an i64")))?;
    Ok(Some(i64::from_be_bytes(bytes)))
}
