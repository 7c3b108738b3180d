//! The raft log and vote in RocksDB, with group commit.
//!
//! `append` writes its entries without syncing, so they are readable at once, and hands the
//! flush callback to the WAL syncer: the callback fires only after an fsync that covers the
//! entries, and one fsync serves every append that arrived while the previous one ran.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::recent_entries::RecentEntries;
use super::types::{Entry, LogId, Membership, Proposal, TypeConfig, Vote};
use crate::proto::raftpb::RaftRequest;
use crate::storage::{Storage, StorageError, WalSyncer, CF_LOG, CF_RAFT};
use prost::Message;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// Client proposals a one-member cluster has handed to raft and not had answered yet.
#[derive(Clone, Default)]
pub struct ProposalsInFlight(Arc<AtomicUsize>);

impl ProposalsInFlight {
    /// Counts a proposal until the returned guard is dropped.
    pub fn enter(&self) -> ProposalGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        ProposalGuard(self.0.clone())
    }

    fn is_lone(&self) -> bool {
        self.0.load(Ordering::Acquire) == 1
    }
}

pub struct ProposalGuard(Arc<AtomicUsize>);

impl Drop for ProposalGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct LogStore {
    storage: Arc<Storage>,
    syncer: WalSyncer,
    proposals: ProposalsInFlight,
    /// Shared by the store and its readers (clones), so that they read what it appended.
    recent: Arc<RecentEntries>,
}

impl LogStore {
    pub fn new(storage: Arc<Storage>, syncer: WalSyncer, proposals: ProposalsInFlight) -> Self {
        Self {
            storage,
            syncer,
            proposals,
            recent: Arc::default(),
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let raw = self
            .storage
            .db()
            .get_pinned_cf(self.storage.cf(CF_RAFT), key)
            .map_err(StorageError::from)?;
        raw.map(|bytes| serde_json::from_slice(&bytes).map_err(io::Error::other))
            .transpose()
    }

    fn last_entry_id(&self) -> io::Result<Option<LogId>> {
        let mut iter = self
            .storage
            .db()
            .iterator_cf(self.storage.cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            Some(item) => {
                let (key, value) = item.map_err(StorageError::from)?;
                Ok(Some(decode_entry(&key, &value)?.log_id))
            }
            None => Ok(None),
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt raft log: {what}"),
    )
}

pub fn encode_entry(entry: &Entry) -> io::Result<Vec<u8>> {
    let term = entry.log_id.leader_id.term;
    let mut out = Vec::with_capacity(16);
    match &entry.payload {
        EntryPayload::Blank => {
            out.push(KIND_BLANK);
            out.extend_from_slice(&term.to_be_bytes());
        }
        EntryPayload::Normal(proposal) => {
            out.reserve(proposal.0.len());
            out.push(KIND_NORMAL);
            out.extend_from_slice(&term.to_be_bytes());
            out.extend_from_slice(&proposal.0);
        }
        EntryPayload::Membership(membership) => {
            out.push(KIND_MEMBERSHIP);
            out.extend_from_slice(&term.to_be_bytes());
            serde_json::to_writer(&mut out, membership).map_err(io::Error::other)?;
        }
    }
    Ok(out)
}

pub fn decode_entry(key: &[u8], value: &[u8]) -> io::Result<Entry> {
    let index = u64::from_be_bytes(key.try_into().map_err(|_| corrupt("index key"))?);
    if value.len() < 9 {
        return Err(corrupt("short entry"));
    }
    let term = u64::from_be_bytes(value[1..9].try_into().map_err(|_| corrupt("term"))?);
    let body = &value[9..];
    let payload = match value[0] {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(Proposal(bytes::Bytes::copy_from_slice(body))),
        KIND_MEMBERSHIP => {
            let membership: Membership =
                serde_json::from_slice(body).map_err(|_| corrupt("membership"))?;
            EntryPayload::Membership(membership)
        }
        _ => return Err(corrupt("entry kind")),
    };
    Ok(Entry::new(LogId::new_term_index(term, index), payload))
}

/// Calls `visit` with every client request in the log up to `last` (inclusive), in order.
pub fn for_each_request(
    storage: &Storage,
    last: u64,
    visit: &mut dyn FnMut(u64, RaftRequest),
) -> io::Result<()> {
    let mut iter = storage.db().raw_iterator_cf(storage.cf(CF_LOG));
    iter.seek_to_first();
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        let index = u64::from_be_bytes(key.try_into().map_err(|_| corrupt("index key"))?);
        if index > last {
            break;
        }
        if value.first() == Some(&KIND_NORMAL) && value.len() >= 9 {
            let request = RaftRequest::decode(&value[9..]).map_err(|_| corrupt("proposal"))?;
            visit(index, request);
        }
        iter.next();
    }
    iter.status().map_err(StorageError::from)?;
    Ok(())
}

pub(super) fn start_index(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

pub(super) fn end_is_past(range: &impl RangeBounds<u64>, index: u64) -> bool {
    match range.end_bound() {
        Bound::Included(end) => index > *end,
        Bound::Excluded(end) => index >= *end,
        Bound::Unbounded => false,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        if let Some(entries) = self.recent.get(&range) {
            return Ok(entries);
        }
        let start = index_key(start_index(&range));
        let iter = self.storage.db().iterator_cf(
            self.storage.cf(CF_LOG),
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut entries = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(StorageError::from)?;
            let entry = decode_entry(&key, &value)?;
            if end_is_past(&range, entry.log_id.index) {
                break;
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_json(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.read_json(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        let encoded = serde_json::to_vec(vote).map_err(io::Error::other)?;
        batch.put_cf(self.storage.cf(CF_RAFT), KEY_VOTE, encoded);
        let storage = self.storage.clone();
        run_blocking(move || storage.write_durable(batch)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        let encoded = serde_json::to_vec(&committed).map_err(io::Error::other)?;
        batch.put_cf(self.storage.cf(CF_RAFT), KEY_COMMITTED, encoded);
        Ok(self.storage.write(batch)?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_json::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.storage.cf(CF_LOG);
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut batch = WriteBatch::default();
        for entry in &entries {
            batch.put_cf(cf, index_key(entry.log_id.index), encode_entry(entry)?);
        }
        // Entries this append replaces must not be read from memory while RocksDB already
        // holds their replacements (`keep` would drop them too, but only after the write).
        if let Some(first) = entries.first() {
            self.recent.forget_from(first.log_id.index);
        }
        // Written in place rather than on the blocking pool: an unsynced write of a few
        // entries takes microseconds, while the hand-off to another thread and back cost more
        // than the write itself (profiles of one client writing). The fsync, the slow part,
        // happens on the syncer thread, shared by every append that arrives meanwhile.
        self.storage.write(batch)?;
        self.recent.keep(entries);
        // One client proposal in flight (a lone writer): nothing can join this fsync, so it
        // runs here rather than on the syncer thread, sparing a lone put two thread wake-ups.
        // With more in flight (or none: a follower's append, a leader's blank entry) the core
        // must not block on it, so that appends overlap with the sync in progress (step 13 of
        // bench/results/perf-push-2.md measured that loss).
        if self.proposals.is_lone() {
            if let Some(outcome) = self.syncer.sync_here_if_idle() {
                callback.io_completed(outcome);
                return Ok(());
            }
        }
        self.syncer
            .after_sync(move |outcome| callback.io_completed(outcome));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |id| id.index + 1);
        self.recent.forget_from(first_removed);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.storage.cf(CF_LOG),
            index_key(first_removed),
            index_key(u64::MAX),
        );
        batch.delete_cf(self.storage.cf(CF_LOG), index_key(u64::MAX));
        let storage = self.storage.clone();
        run_blocking(move || storage.write_durable(batch)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.recent.forget_up_to(log_id.index);
        let mut batch = WriteBatch::default();
        let encoded = serde_json::to_vec(&log_id).map_err(io::Error::other)?;
        batch.put_cf(self.storage.cf(CF_RAFT), KEY_LAST_PURGED, encoded);
        batch.delete_range_cf(
            self.storage.cf(CF_LOG),
            index_key(0),
            index_key(log_id.index + 1),
        );
        let storage = self.storage.clone();
        run_blocking(move || storage.write(batch)).await?;
        // etcd's wording: operators (and our tests) watch for it.
        tracing::info!(compact_index = log_id.index, "compacted Raft logs");
        Ok(())
    }
}

/// Runs a RocksDB write off the async runtime.
async fn run_blocking(
    write: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
) -> io::Result<()> {
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorageExt;

    fn entry(term: u64, index: u64) -> Entry {
        let payload = Proposal(bytes::Bytes::from(format!("{term}/{index}")));
        Entry::new(
            LogId::new_term_index(term, index),
            EntryPayload::Normal(payload),
        )
    }

    async fn read(store: &mut LogStore, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64)> {
        let mut reader = store.get_log_reader().await;
        reader
            .try_get_log_entries(range)
            .await
            .expect("read the log")
            .iter()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }

    /// The recent entries a reader is served from memory must follow every change of the log:
    /// a truncated or purged entry is not read back, a rewritten one is read in its new term.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_follow_truncation_rewrites_and_purges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let syncer = WalSyncer::start(storage.clone()).expect("syncer");
        let mut store = LogStore::new(storage.clone(), syncer, ProposalsInFlight::default());
        store
            .blocking_append((1..=6).map(|i| entry(1, i)))
            .await
            .expect("append");
        assert_eq!(read(&mut store, 2..=3).await, vec![(2, 1), (3, 1)]);

        store
            .truncate_after(Some(LogId::new_term_index(1, 4)))
            .await
            .expect("truncate");
        assert_eq!(
            read(&mut store, 3..=6).await,
            vec![(3, 1), (4, 1)],
            "entries 5 and 6 were truncated"
        );

        store.blocking_append([entry(2, 5)]).await.expect("append");
        assert_eq!(read(&mut store, 4..=5).await, vec![(4, 1), (5, 2)]);
        // An append over an entry without a truncation first (not what openraft does, but
        // the log must still never read back what it replaced).
        store.blocking_append([entry(3, 5)]).await.expect("append");
        assert_eq!(read(&mut store, 5..=5).await, vec![(5, 3)]);

        store
            .purge(LogId::new_term_index(1, 3))
            .await
            .expect("purge");
        assert_eq!(read(&mut store, 1..=5).await, vec![(4, 1), (5, 3)]);

        // The syncer thread closes the database when it ends: let it end before the test does,
        // or the process may exit (and run RocksDB's static destructors) while it closes.
        drop(store);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&storage) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL syncer thread still holds the database after 10 s"
            );
            tokio::task::yield_now().await;
        }
    }
}
