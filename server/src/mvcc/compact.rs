//! Physical compaction: removes versions superseded at or below the compacted revision, in
//! bounded batches on its own thread, so writes and reads never wait behind it.
//!
//! For every change at revision r in (finished, target], every older version of the same key
//! is removed, and r itself goes too if it is a tombstone. Each batch records how far it got in
//! the same RocksDB write, so an interrupted compaction resumes where it stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use rocksdb::{ReadOptions, WriteBatch};
use tokio::sync::watch;

use super::keys::{self, Revision};
use super::record::Record;
use super::META_COMPACT_FINISHED;
use crate::storage::{Storage, StorageError, CF_KV, CF_META, CF_REV};

/// Changes handled per write batch; etcd's default compaction batch limit is also 1000.
const CHANGES_PER_BATCH: usize = 1000;

#[derive(Clone)]
pub struct Compactor {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<Storage>,
    target: Mutex<i64>,
    wake: Condvar,
    finished_tx: watch::Sender<i64>,
    /// Set by `stop`: the worker ends (and lets go of the store) at its next batch boundary.
    stopped: AtomicBool,
    worker: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Compactor {
    pub fn start(storage: Arc<Storage>, finished: i64) -> std::io::Result<Self> {
        let (finished_tx, _) = watch::channel(finished);
        let inner = Arc::new(Inner {
            storage,
            target: Mutex::new(finished),
            wake: Condvar::new(),
            finished_tx,
            stopped: AtomicBool::new(false),
            worker: Mutex::new(None),
        });
        let worker = inner.clone();
        let handle = thread::Builder::new()
            .name("mvcc-compactor".into())
            .spawn(move || worker.run())?;
        if let Ok(mut slot) = inner.worker.lock() {
            *slot = Some(handle);
        }
        Ok(Self { inner })
    }

    /// Stops the worker and waits for it, so that the store can be closed (a store opened for a
    /// one-off job, such as adopting an etcd data dir). A compaction left unfinished resumes
    /// when the store is opened again: each batch records its progress.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        if let Ok(_target) = self.inner.target.lock() {
            self.inner.wake.notify_all();
        }
        let handle = self.inner.worker.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Asks for every version superseded at or below `revision` to be removed.
    pub fn schedule(&self, revision: i64) {
        if let Ok(mut target) = self.inner.target.lock() {
            *target = (*target).max(revision);
            self.inner.wake.notify_one();
        }
    }

    /// Forgets progress after the data was replaced by a snapshot.
    pub fn reset(&self, finished: i64) {
        if let Ok(mut target) = self.inner.target.lock() {
            *target = finished;
        }
        self.inner.finished_tx.send_replace(finished);
    }

    /// The highest revision up to which compaction is physically done.
    pub fn finished(&self) -> i64 {
        *self.inner.finished_tx.borrow()
    }

    /// Waits until compaction at `revision` is physically done.
    pub async fn wait_for(&self, revision: i64) {
        let mut rx = self.inner.finished_tx.subscribe();
        // The sender lives as long as `self`, so this only ends once the revision is reached.
        let _ = rx.wait_for(|done| *done >= revision).await;
    }
}

impl Inner {
    fn run(&self) {
        loop {
            let target = {
                let Ok(mut target) = self.target.lock() else {
                    return;
                };
                while *target <= *self.finished_tx.borrow() {
                    if self.stopped.load(Ordering::Acquire) {
                        return;
                    }
                    target = match self.wake.wait(target) {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                }
                *target
            };
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let from = *self.finished_tx.borrow();
            match compact_batch(&self.storage, from, target) {
                Ok(progress) => {
                    self.finished_tx.send_replace(progress);
                }
                Err(e) => {
                    tracing::error!(error = %e, "compaction failed; retrying");
                    thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }
}

/// Compacts a bounded number of changes after `from`, up to `target`; returns the revision up
/// to which everything is done.
fn compact_batch(storage: &Storage, from: i64, target: i64) -> Result<i64, StorageError> {
    let db = storage.db();
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(Revision::new(target + 1, 0).index_key().to_vec());
    let mut changes = db.raw_iterator_cf_opt(storage.cf(CF_REV), opts);
    changes.seek(Revision::new(from + 1, 0).index_key());

    let mut batch = WriteBatch::default();
    let mut handled = 0usize;
    let mut last_main = None;
    while let (Some(index_key), Some(user_key)) = (changes.key(), changes.value()) {
        let rev = Revision::from_index_key(index_key)
            .ok_or_else(|| StorageError::Corrupt("unreadable revision index key".into()))?;
        // Stop only between main revisions, so recorded progress never splits one.
        if handled >= CHANGES_PER_BATCH && last_main != Some(rev.main) {
            break;
        }
        remove_superseded(storage, &mut batch, user_key, rev)?;
        handled += 1;
        last_main = Some(rev.main);
        changes.next();
    }
    changes.status()?;
    let progress = match (changes.key(), last_main) {
        (Some(_), Some(main)) => main,
        _ => target,
    };
    batch.put_cf(
        storage.cf(CF_META),
        META_COMPACT_FINISHED,
        progress.to_be_bytes(),
    );
    storage.write(batch)?;
    Ok(progress)
}

/// Deletes every version of `user_key` older than `rev`, and `rev` itself if it is a tombstone.
fn remove_superseded(
    storage: &Storage,
    batch: &mut WriteBatch,
    user_key: &[u8],
    rev: Revision,
) -> Result<(), StorageError> {
    let kv_cf = storage.cf(CF_KV);
    let rev_cf = storage.cf(CF_REV);
    let this_version = keys::version_key(user_key, rev);
    let mut versions = storage
        .db()
        .raw_iterator_cf_opt(kv_cf, crate::storage::single_key_options());
    versions.seek(&this_version);
    let part = keys::user_key_part(&this_version).to_vec();
    if let (Some(k), Some(v)) = (versions.key(), versions.value()) {
        if k == this_version.as_slice() && Record::is_tombstone(v) {
            batch.delete_cf(kv_cf, k);
            batch.delete_cf(rev_cf, rev.index_key());
        }
    }
    if versions.key() == Some(this_version.as_slice()) {
        versions.next();
    }
    while let Some(k) = versions.key() {
        if keys::user_key_part(k) != part.as_slice() {
            break;
        }
        batch.delete_cf(kv_cf, k);
        batch.delete_cf(rev_cf, keys::revision_of(k).index_key());
        versions.next();
    }
    versions.status()?;
    Ok(())
}
