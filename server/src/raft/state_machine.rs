//! openraft's state machine: the applier over the MVCC store, plus snapshots.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, Stream, StreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot};
use rocksdb::WriteBatch;

use super::cluster_state::ClusterState;
use super::peer::client::REMOVED_MESSAGE;
use super::snapshot::{copy_state_machine, SnapshotData, SnapshotStore};
use super::types::{Applied, Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use super::{RaftSnapshot, StateMachineApplier, REMOVED_STOP_DELAY};
use crate::proto::raftpb::RaftRequest;
use crate::storage::{Storage, StorageError, CF_META, CF_RAFT};

pub(crate) const META_APPLIED: &[u8] = b"raft/applied";
const META_MEMBERSHIP: &[u8] = b"raft/membership";
/// IDs of members removed from the cluster (JSON list); they are never reused.
const META_REMOVED: &[u8] = b"raft/removed_members";
/// Set while a snapshot is being copied in; a restart finishes the copy.
const KEY_INSTALLING: &[u8] = b"installing_snapshot";
/// Entries applied per blocking task: enough to amortise the hand-off, small enough to stream.
const APPLY_CHUNK: usize = 512;
/// Up to this many entries are applied in place on the state machine's task when each costs
/// what its size says (`StateMachineApplier::is_bounded`): such an entry takes tens of
/// microseconds, and the round trip to the blocking pool cost a chunk two thread wake-ups, a
/// tenth of a put's CPU under put-64 (bench/results/perf-push-2.md, eighteenth session).
const APPLY_IN_PLACE: usize = 64;

#[derive(Debug, Clone, Default)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Clone)]
pub struct StateMachine {
    applier: Arc<dyn StateMachineApplier>,
    snapshots: Arc<SnapshotStore>,
    applied: Arc<Mutex<AppliedState>>,
    cluster: Arc<ClusterState>,
    /// Set once raft runs: from then on a snapshot asked for is checkpointed if stale.
    /// openraft also asks while it starts, only to learn the snapshot's metadata, and a
    /// checkpoint (a flush of every memtable) there would only slow the start down.
    checkpoint_on_demand: Arc<AtomicBool>,
}

impl StateMachine {
    pub fn open(
        applier: Arc<dyn StateMachineApplier>,
        snapshots: SnapshotStore,
        cluster: Arc<ClusterState>,
    ) -> io::Result<Self> {
        let storage = applier.storage().clone();
        let snapshots = Arc::new(snapshots);
        if storage
            .db()
            .get_pinned_cf(storage.cf(CF_RAFT), KEY_INSTALLING)
            .map_err(StorageError::from)?
            .is_some()
        {
            if let Some((_, data)) = snapshots.current()? {
                finish_install(&storage, &data)?;
                applier.reload()?;
            }
        }
        let applied = read_applied_state(&storage)?;
        if applier.replays_log() {
            let last = applied.last_applied.map_or(0, |id| id.index);
            super::log_store::for_each_request(&storage, last, &mut |index, request| {
                applier.replay(index, &request)
            })?;
        }
        cluster.set_removed(read_removed(&storage)?);
        cluster.set_applied(applied.last_applied.map_or(0, |id| id.index));
        Ok(Self {
            applier,
            snapshots,
            applied: Arc::new(Mutex::new(applied)),
            cluster,
            checkpoint_on_demand: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The switch that makes `get_current_snapshot` checkpoint a stale snapshot; the raft
    /// node turns it on once openraft has started.
    pub fn checkpoint_on_demand(&self) -> Arc<AtomicBool> {
        self.checkpoint_on_demand.clone()
    }

    fn storage(&self) -> &Arc<Storage> {
        self.applier.storage()
    }

    fn applied_state_now(&self) -> AppliedState {
        self.applied.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Applies entries in order on the calling thread: the state machine's task for a small
    /// chunk of cheap entries (`may_apply_in_place`), else a blocking one. Entries that change only
    /// keys are staged and written together as one batch; their clients are answered once it
    /// is written and published.
    fn apply_entries(&self, entries: Vec<Decoded>) -> io::Result<()> {
        let mut staged = StagedEntries::default();
        for Decoded {
            entry,
            responder,
            request,
        } in entries
        {
            if let Some(request) = &request {
                if let Some(applied) = self.stage_entry(entry.log_id, request)? {
                    staged.answers.push((responder, applied));
                    staged.last = Some(entry.log_id);
                    continue;
                }
            }
            self.commit_staged(&mut staged)?;
            let applied = self.apply_entry(&entry, request.as_ref())?;
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        self.commit_staged(&mut staged)
    }

    fn stage_entry(&self, log_id: LogId, request: &RaftRequest) -> io::Result<Option<Applied>> {
        let applied_json = serde_json::to_vec(&Some(log_id)).map_err(io::Error::other)?;
        let meta_cf = self.storage().cf(CF_META);
        let record = |batch: &mut WriteBatch| batch.put_cf(meta_cf, META_APPLIED, &applied_json);
        Ok(self
            .applier
            .stage(log_id.index, request, &record)?
            .map(Applied))
    }

    /// Writes and publishes the staged entries, then answers their clients.
    fn commit_staged(&self, staged: &mut StagedEntries) -> io::Result<()> {
        let Some(last) = staged.last.take() else {
            return Ok(());
        };
        self.applier.commit_staged()?;
        self.note_applied(last);
        for (responder, applied) in staged.answers.drain(..) {
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    fn note_applied(&self, log_id: LogId) {
        if let Ok(mut current) = self.applied.lock() {
            current.last_applied = Some(log_id);
        }
        self.cluster.set_applied(log_id.index);
    }

    fn apply_entry(&self, entry: &Entry, request: Option<&RaftRequest>) -> io::Result<Applied> {
        let log_id = entry.log_id;
        let membership = match &entry.payload {
            EntryPayload::Membership(m) => Some(StoredMembership::new(Some(log_id), m.clone())),
            _ => None,
        };
        let applied_json = serde_json::to_vec(&Some(log_id)).map_err(io::Error::other)?;
        let membership_json = membership
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(io::Error::other)?;
        let removal = membership.as_ref().and_then(|m| self.removal_by(m));
        let removed_json = removal
            .as_ref()
            .map(|(all, _)| serde_json::to_vec(all))
            .transpose()
            .map_err(io::Error::other)?;
        let meta_cf = self.storage().cf(CF_META);
        let record = |batch: &mut WriteBatch| {
            batch.put_cf(meta_cf, META_APPLIED, &applied_json);
            if let Some(m) = &membership_json {
                batch.put_cf(meta_cf, META_MEMBERSHIP, m);
            }
            if let Some(r) = &removed_json {
                batch.put_cf(meta_cf, META_REMOVED, r);
            }
        };
        let response = self.applier.apply(log_id.index, request, &record)?;
        if let Some(m) = membership {
            if let Ok(mut current) = self.applied.lock() {
                current.membership = m;
            }
        }
        self.note_applied(log_id);
        if let Some((all, removes_me)) = removal {
            self.cluster.set_removed(all);
            if removes_me {
                tracing::warn!("{REMOVED_MESSAGE}");
                self.cluster
                    .fail_after(REMOVED_STOP_DELAY, REMOVED_MESSAGE.to_string());
            }
        }
        Ok(Applied(response))
    }

    /// Members that `next` drops from the current membership: every removed ID so far, and
    /// whether this member is among the new ones. `None` when nobody is removed.
    fn removal_by(&self, next: &StoredMembership) -> Option<(BTreeSet<u64>, bool)> {
        let current = self.applied_state_now().membership;
        let before: BTreeSet<u64> = current.membership().nodes().map(|(id, _)| *id).collect();
        let after: BTreeSet<u64> = next.membership().nodes().map(|(id, _)| *id).collect();
        let gone: BTreeSet<u64> = before.difference(&after).copied().collect();
        if gone.is_empty() {
            return None;
        }
        let removes_me = gone.contains(&self.cluster.member_id);
        let mut all = self.cluster.removed();
        all.extend(gone);
        Some((all, removes_me))
    }
}

/// Staged entries waiting for their batch to be written: the newest one's log id and the
/// answers for their clients.
#[derive(Default)]
struct StagedEntries {
    last: Option<LogId>,
    answers: Vec<(Option<ApplyResponder<TypeConfig>>, Applied)>,
}

/// A committed entry, its client's responder, and the request it carries, decoded once.
struct Decoded {
    entry: Entry,
    responder: Option<ApplyResponder<TypeConfig>>,
    request: Option<RaftRequest>,
}

impl Decoded {
    fn of((entry, responder): EntryResponder<TypeConfig>) -> io::Result<Self> {
        let request = decode_request(&entry)?;
        Ok(Self {
            entry,
            responder,
            request,
        })
    }
}

/// The client request an entry carries, if any.
fn decode_request(entry: &Entry) -> io::Result<Option<RaftRequest>> {
    match &entry.payload {
        EntryPayload::Normal(proposal) => proposal.decode().map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("undecodable proposal: {e}"),
            )
        }),
        _ => Ok(None),
    }
}

/// The log index in a stored `raft/applied` value (etcd calls it the consistent index).
pub(crate) fn applied_index(raw: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Option<LogId>>(raw)
        .ok()
        .flatten()
        .map(|log_id| log_id.index)
}

fn read_removed(storage: &Storage) -> io::Result<BTreeSet<u64>> {
    match storage
        .db()
        .get_cf(storage.cf(CF_META), META_REMOVED)
        .map_err(StorageError::from)?
    {
        Some(raw) => serde_json::from_slice(&raw).map_err(io::Error::other),
        None => Ok(BTreeSet::new()),
    }
}

fn read_applied_state(storage: &Storage) -> io::Result<AppliedState> {
    let read = |key: &[u8]| -> io::Result<Option<Vec<u8>>> {
        Ok(storage
            .db()
            .get_cf(storage.cf(CF_META), key)
            .map_err(StorageError::from)?)
    };
    let last_applied = match read(META_APPLIED)? {
        Some(raw) => serde_json::from_slice(&raw).map_err(io::Error::other)?,
        None => None,
    };
    let membership = match read(META_MEMBERSHIP)? {
        Some(raw) => serde_json::from_slice(&raw).map_err(io::Error::other)?,
        None => StoredMembership::default(),
    };
    Ok(AppliedState {
        last_applied,
        membership,
    })
}

/// Copies a snapshot's state machine into the live database, crash-safely.
fn finish_install(storage: &Storage, data: &SnapshotData) -> io::Result<()> {
    copy_state_machine(storage, data)?;
    let mut batch = WriteBatch::default();
    batch.delete_cf(storage.cf(CF_RAFT), KEY_INSTALLING);
    storage.write_durable(batch)?;
    Ok(())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("state machine task failed: {e}")))?
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = BuiltSnapshot;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.applied_state_now();
        Ok((state.last_applied, state.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(first) = entries.next().await {
            let mut chunk = vec![Decoded::of(first?)?];
            while chunk.len() < APPLY_CHUNK {
                match entries.next().now_or_never() {
                    Some(Some(item)) => chunk.push(Decoded::of(item?)?),
                    _ => break,
                }
            }
            if self.may_apply_in_place(&chunk) {
                self.apply_entries(chunk)?;
            } else {
                let sm = self.clone();
                blocking(move || sm.apply_entries(chunk)).await?;
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        // etcd's snapshot at --snapshot-count: what it buys is a bound on the raft log, which
        // openraft purges up to a few thousand entries behind this point. The live store is
        // already the state at the applied index (written before any later purge, so a crash
        // recovers both or neither), so nothing is copied here: a checkpoint made on every
        // snapshot flushed every memtable while applies waited, the 100-300 ms write stalls
        // and a third of the CPU per put under load (bench/results/perf-push-2.md). The
        // checkpoint a lagging follower needs is made when one asks (`get_current_snapshot`).
        let state = self.applied_state_now();
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership,
        };
        tracing::info!(
            snapshot_index = meta.last_log_id.map_or(0, |id| id.index),
            "saved snapshot"
        );
        Some(BuiltSnapshot {
            built: Some(Ok(Snapshot {
                meta,
                snapshot: SnapshotData::not_materialised(),
            })),
        })
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        match self.try_create_snapshot_builder(true).await {
            Some(builder) => builder,
            None => BuiltSnapshot { built: None },
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let sm = self.clone();
        let meta = meta.clone();
        blocking(move || {
            let saved = sm.snapshots.adopt(&meta, &snapshot)?;
            let storage = sm.storage();
            let mut batch = WriteBatch::default();
            batch.put_cf(storage.cf(CF_RAFT), KEY_INSTALLING, b"1");
            storage.write_durable(batch)?;
            finish_install(storage, &saved)?;
            sm.applier.reload()?;
            sm.cluster.set_removed(read_removed(storage)?);
            let state = read_applied_state(storage)?;
            let last_applied = meta.last_log_id.or(state.last_applied);
            if let Ok(mut current) = sm.applied.lock() {
                *current = AppliedState {
                    last_applied,
                    membership: meta.last_membership.clone(),
                };
            }
            sm.cluster
                .set_applied(last_applied.map_or(0, |id| id.index));
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<RaftSnapshot>, io::Error> {
        // openraft asks from its state machine task, so no entry is applied meanwhile and a
        // checkpoint taken now matches the applied state exactly.
        let sm = self.clone();
        blocking(move || sm.checkpoint_of_applied_state()).await
    }
}

impl StateMachine {
    /// Whether `chunk` is small and cheap enough to apply without leaving the async runtime.
    /// Raft's own entries (blank, membership) count as cheap. While RocksDB slows or stops
    /// writes, a write may wait for a flush: then the chunk goes to the blocking pool, so that
    /// the runtime's worker is not held. RocksDB is asked last, only about a chunk that
    /// would otherwise be applied here.
    fn may_apply_in_place(&self, chunk: &[Decoded]) -> bool {
        chunk.len() <= APPLY_IN_PLACE
            && chunk.iter().all(|decoded| {
                decoded
                    .request
                    .as_ref()
                    .is_none_or(|request| self.applier.is_bounded(request))
            })
            && !self.storage().writes_throttled()
    }

    /// A snapshot of exactly the applied state: the last checkpoint if nothing was applied
    /// since, else a new one (which replaces it).
    fn checkpoint_of_applied_state(&self) -> io::Result<Option<RaftSnapshot>> {
        let state = self.applied_state_now();
        let current = self.snapshots.current()?;
        if state.last_applied.is_none() || !self.checkpoint_on_demand.load(Ordering::Acquire) {
            return Ok(current.map(|(meta, snapshot)| Snapshot { meta, snapshot }));
        }
        if let Some((meta, snapshot)) = current {
            if meta.last_log_id == state.last_applied {
                return Ok(Some(Snapshot { meta, snapshot }));
            }
        }
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership,
        };
        let snapshot = self.snapshots.create(self.storage(), &meta)?;
        tracing::info!(
            snapshot_index = meta.last_log_id.map_or(0, |id| id.index),
            "checkpointed the state machine for a snapshot"
        );
        Ok(Some(Snapshot { meta, snapshot }))
    }
}

/// What `try_create_snapshot_builder` recorded: the snapshot's metadata.
pub struct BuiltSnapshot {
    built: Option<io::Result<RaftSnapshot>>,
}

impl RaftSnapshotBuilder<TypeConfig> for BuiltSnapshot {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<RaftSnapshot, io::Error> {
        self.built
            .take()
            .unwrap_or_else(|| Err(io::Error::other("snapshot already built")))
    }
}
