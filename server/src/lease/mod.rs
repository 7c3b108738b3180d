//! The lessor: which leases exist (replicated through raft, stored in RocksDB) and, on the
//! leader only, when each expires.
//!
//! Grants, revokes and checkpoints are applied identically on every member. Deadlines live in
//! memory on the leader; a lease's remaining TTL is checkpointed through raft, so a new leader
//! (or a restarted member) starts each lease from its last checkpoint instead of the full TTL,
//! and a keep-alive clears the checkpoint so a lease is never expired early after a restart.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rocksdb::WriteBatch;

use crate::error::{EtcdError, EtcdResult};
use crate::mvcc::read::KeyRange;
use crate::mvcc::write::WriteTxn;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, ResponseHeader,
};
use crate::proto::raftpb::{LeaseCheckpoint, LeaseCheckpointBatch};
use crate::storage::{Storage, StorageError, CF_LEASE, CF_LEASE_KEYS};

/// etcd's largest TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone)]
struct Lease {
    /// Granted TTL, seconds.
    ttl: i64,
    /// Remaining TTL recorded by the last checkpoint (seconds); 0 when none is recorded.
    checkpoint: i64,
    /// Bumped by every clear (a renewal after a checkpoint); a checkpoint measured in an older
    /// generation is stale.
    generation: i64,
    /// When it expires; only the leader tracks this.
    expiry: Option<Instant>,
}

#[derive(Default)]
struct State {
    leases: HashMap<i64, Lease>,
    /// (expiry, lease) pairs; stale pairs are skipped when popped.
    queue: BinaryHeap<Reverse<(Instant, i64)>>,
    primary: bool,
    /// Expired leases whose revoke has been proposed.
    revoking: HashSet<i64>,
    /// Leases with a checkpoint proposed that may still apply: a renewal must clear it. Kept
    /// across a demotion and after a failed proposal (its entry may still be in the log); an
    /// applied clear or revoke ends it, since whatever was measured before is stale from then.
    checkpointing: HashSet<i64>,
}

pub struct Lessor {
    state: Mutex<State>,
    storage: Arc<Storage>,
    min_ttl: i64,
}

/// What a keep-alive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed to the full TTL; `clear_checkpoint` asks for the recorded remaining TTL to be
    /// cleared through raft before answering.
    Renewed {
        ttl: i64,
        clear_checkpoint: bool,
    },
    NotFound,
    NotPrimary,
}

fn lease_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

fn encode_lease(lease: &Lease) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&lease.ttl.to_be_bytes());
    out[8..16].copy_from_slice(&lease.checkpoint.to_be_bytes());
    out[16..].copy_from_slice(&lease.generation.to_be_bytes());
    out
}

fn decode_lease(bytes: &[u8]) -> Option<Lease> {
    let field = |range: std::ops::Range<usize>| -> Option<i64> {
        Some(i64::from_be_bytes(bytes.get(range)?.try_into().ok()?))
    };
    Some(Lease {
        ttl: field(0..8)?,
        checkpoint: field(8..16)?,
        generation: field(16..24)?,
        expiry: None,
    })
}

/// A stored lease's granted TTL and checkpointed remaining TTL (0: none), for snapshots.
pub fn stored_ttls(bytes: &[u8]) -> Option<(i64, i64)> {
    decode_lease(bytes).map(|lease| (lease.ttl, lease.checkpoint))
}

/// The stored form of a lease brought in from a snapshot.
pub fn stored_lease(ttl: i64, checkpoint: i64) -> [u8; 24] {
    encode_lease(&Lease {
        ttl,
        checkpoint,
        generation: 0,
        expiry: None,
    })
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// etcd's minimum TTL: one and a half election timeouts, rounded up to whole seconds.
pub fn min_ttl(heartbeat: Duration, election: Duration) -> i64 {
    let heartbeat_ms = heartbeat.as_millis().max(1);
    let election_ticks = election.as_millis() / heartbeat_ms;
    let min_ms = (3 * election_ticks / 2) * heartbeat_ms;
    min_ms.div_ceil(1000) as i64
}

impl Lessor {
    pub fn load(storage: Arc<Storage>, min_ttl: i64) -> Result<Self, StorageError> {
        let lessor = Self {
            state: Mutex::new(State::default()),
            storage,
            min_ttl,
        };
        lessor.reload()?;
        Ok(lessor)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads every lease from storage (at start, and after a snapshot is installed).
    pub fn reload(&self) -> Result<(), StorageError> {
        let mut leases = HashMap::new();
        let mut iter = self.storage.db().raw_iterator_cf(self.storage.cf(CF_LEASE));
        iter.seek_to_first();
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            let id = u64::from_be_bytes(
                k.try_into()
                    .map_err(|_| StorageError::Corrupt("unreadable lease key".into()))?,
            ) as i64;
            let lease =
                decode_lease(v).ok_or_else(|| StorageError::Corrupt("unreadable lease".into()))?;
            leases.insert(id, lease);
            iter.next();
        }
        iter.status()?;
        let mut state = self.lock();
        let primary = state.primary;
        *state = State {
            leases,
            ..State::default()
        };
        if primary {
            start_deadlines(&mut state, Instant::now());
        }
        Ok(())
    }

    pub fn contains(&self, id: i64) -> bool {
        self.lock().leases.contains_key(&id)
    }

    // ---- applied on every member, in log order ----

    pub fn apply_grant(
        &self,
        txn: &mut WriteTxn<'_>,
        req: &LeaseGrantRequest,
    ) -> EtcdResult<LeaseGrantResponse> {
        if req.id == 0 {
            return Err(EtcdError::LeaseNotFound);
        }
        if req.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        let mut state = self.lock();
        if state.leases.contains_key(&req.id) {
            return Err(EtcdError::LeaseExists);
        }
        let ttl = req.ttl.max(self.min_ttl);
        let mut lease = Lease {
            ttl,
            checkpoint: 0,
            generation: 0,
            expiry: None,
        };
        txn.batch_mut().put_cf(
            self.storage.cf(CF_LEASE),
            lease_key(req.id),
            encode_lease(&lease),
        );
        if state.primary {
            let expiry = Instant::now() + Duration::from_secs(ttl as u64);
            lease.expiry = Some(expiry);
            state.queue.push(Reverse((expiry, req.id)));
        }
        state.leases.insert(req.id, lease);
        Ok(LeaseGrantResponse {
            header: header(txn.revision()),
            id: req.id,
            ttl,
            error: String::new(),
        })
    }

    /// Deletes every key attached to the lease, in one revision, then the lease.
    pub fn apply_revoke(
        &self,
        txn: &mut WriteTxn<'_>,
        req: &LeaseRevokeRequest,
    ) -> EtcdResult<LeaseRevokeResponse> {
        if !self.contains(req.id) {
            return Err(EtcdError::LeaseNotFound);
        }
        for key in self.attached_keys(req.id)? {
            txn.delete_range(&KeyRange::Single(key))?;
        }
        txn.batch_mut()
            .delete_cf(self.storage.cf(CF_LEASE), lease_key(req.id));
        let mut state = self.lock();
        state.leases.remove(&req.id);
        state.revoking.remove(&req.id);
        state.checkpointing.remove(&req.id);
        Ok(LeaseRevokeResponse {
            header: header(txn.revision()),
        })
    }

    pub fn apply_checkpoints(&self, batch: &mut WriteBatch, checkpoints: &LeaseCheckpointBatch) {
        let mut state = self.lock();
        let State {
            leases,
            checkpointing,
            ..
        } = &mut *state;
        for cp in &checkpoints.checkpoints {
            if let Some(lease) = leases.get_mut(&cp.id) {
                if cp.remaining_ttl <= 0 {
                    // A clear (the lease was renewed): checkpoints measured before it, still
                    // on their way through the log, are stale from now on.
                    lease.generation += 1;
                    lease.checkpoint = 0;
                    checkpointing.remove(&cp.id);
                } else if cp.generation < lease.generation {
                    // Measured before a renewal whose clear was applied first: recording it
                    // would shorten the renewed lease after a restart.
                    continue;
                } else {
                    lease.checkpoint = cp.remaining_ttl;
                }
                batch.put_cf(
                    self.storage.cf(CF_LEASE),
                    lease_key(cp.id),
                    encode_lease(lease),
                );
            }
        }
    }

    /// Keys attached to a lease, in key order.
    pub fn attached_keys(&self, id: i64) -> EtcdResult<Vec<Bytes>> {
        let prefix = lease_key(id);
        let mut keys = Vec::new();
        let mut iter = self
            .storage
            .db()
            .raw_iterator_cf(self.storage.cf(CF_LEASE_KEYS));
        iter.seek(prefix);
        while let Some(k) = iter.key() {
            let Some(user_key) = k.strip_prefix(&prefix[..]) else {
                break;
            };
            keys.push(Bytes::copy_from_slice(user_key));
            iter.next();
        }
        iter.status()?;
        Ok(keys)
    }

    // ---- the leader's side ----

    /// This member became the leader: every lease runs from its checkpoint (or full TTL) now.
    pub fn promote(&self) {
        let mut state = self.lock();
        if state.primary {
            return;
        }
        state.primary = true;
        start_deadlines(&mut state, Instant::now());
    }

    pub fn demote(&self) {
        let mut state = self.lock();
        state.primary = false;
        state.queue.clear();
        state.revoking.clear();
        for lease in state.leases.values_mut() {
            lease.expiry = None;
        }
    }

    pub fn is_primary(&self) -> bool {
        self.lock().primary
    }

    pub fn renew(&self, id: i64) -> Renewal {
        let mut state = self.lock();
        if !state.primary {
            return Renewal::NotPrimary;
        }
        let now = Instant::now();
        let revoking = state.revoking.contains(&id);
        let Some(lease) = state.leases.get_mut(&id) else {
            return Renewal::NotFound;
        };
        if revoking || lease.expiry.is_some_and(|e| e <= now) {
            // Expired: its revoke is (or is about to be) on its way.
            return Renewal::NotFound;
        }
        let expiry = now + Duration::from_secs(lease.ttl as u64);
        lease.expiry = Some(expiry);
        let renewal = Renewal::Renewed {
            ttl: lease.ttl,
            clear_checkpoint: lease.checkpoint > 0 || state.checkpointing.contains(&id),
        };
        state.queue.push(Reverse((expiry, id)));
        renewal
    }

    /// Up to `limit` expired leases not yet being revoked; they are marked as being revoked.
    pub fn take_expired(&self, limit: usize) -> Vec<i64> {
        let mut state = self.lock();
        if !state.primary {
            return Vec::new();
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        while expired.len() < limit {
            let Some(Reverse((when, id))) = state.queue.peek().copied() else {
                break;
            };
            if when > now {
                break;
            }
            state.queue.pop();
            let current = state.leases.get(&id).and_then(|l| l.expiry);
            if current == Some(when) && state.revoking.insert(id) {
                expired.push(id);
            }
        }
        expired
    }

    /// A revoke that did not go through: try again later.
    pub fn revoke_failed(&self, id: i64) {
        let mut state = self.lock();
        state.revoking.remove(&id);
        if let Some(lease) = state.leases.get(&id) {
            if let Some(expiry) = lease.expiry {
                state.queue.push(Reverse((expiry, id)));
            }
        }
    }

    /// Remaining TTLs worth recording: leases that aged at least `min_age` since their last
    /// renewal or checkpoint. Rounded up, so a restart never shortens a lease. The leases are
    /// marked as being checkpointed until a clear or a revoke of them is applied.
    pub fn due_checkpoints(&self, min_age: Duration) -> Vec<LeaseCheckpoint> {
        let mut state = self.lock();
        if !state.primary {
            return Vec::new();
        }
        let now = Instant::now();
        let min_age = min_age.as_secs() as i64;
        let due: Vec<LeaseCheckpoint> = state
            .leases
            .iter()
            .filter_map(|(id, lease)| {
                let left = lease.expiry?.saturating_duration_since(now);
                let remaining = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
                let recorded = if lease.checkpoint > 0 {
                    lease.checkpoint
                } else {
                    lease.ttl
                };
                (remaining > 0 && recorded - remaining >= min_age).then_some(LeaseCheckpoint {
                    id: *id,
                    remaining_ttl: remaining,
                    generation: lease.generation,
                })
            })
            .collect();
        state.checkpointing.extend(due.iter().map(|c| c.id));
        due
    }

    /// (remaining seconds, granted TTL) of a lease, as the leader sees it.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64)> {
        let state = self.lock();
        let lease = state.leases.get(&id)?;
        let remaining = match lease.expiry {
            Some(expiry) => expiry.saturating_duration_since(Instant::now()).as_secs() as i64,
            None if lease.checkpoint > 0 => lease.checkpoint,
            None => lease.ttl,
        };
        Some((remaining, lease.ttl))
    }

    /// Lease IDs, soonest to expire first (as etcd's leader lists them), then by ID.
    pub fn ids(&self) -> Vec<i64> {
        let state = self.lock();
        let mut leases: Vec<(Option<Instant>, i64)> =
            state.leases.iter().map(|(id, l)| (l.expiry, *id)).collect();
        leases.sort_unstable_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => x.cmp(&y).then(a.1.cmp(&b.1)),
            _ => a.1.cmp(&b.1),
        });
        leases.into_iter().map(|(_, id)| id).collect()
    }
}

fn start_deadlines(state: &mut State, now: Instant) {
    state.queue.clear();
    let State { leases, queue, .. } = state;
    for (id, lease) in leases.iter_mut() {
        let left = if lease.checkpoint > 0 {
            lease.checkpoint
        } else {
            lease.ttl
        };
        let expiry = now + Duration::from_secs(left.max(0) as u64);
        lease.expiry = Some(expiry);
        queue.push(Reverse((expiry, *id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(remaining_ttl: i64, generation: i64) -> LeaseCheckpointBatch {
        LeaseCheckpointBatch {
            checkpoints: vec![LeaseCheckpoint {
                id: 7,
                remaining_ttl,
                generation,
            }],
        }
    }

    fn lessor_with_lease_7() -> (tempfile::TempDir, Lessor) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let storage = Storage::open(dir.path()).expect("open storage");
        let lessor = Lessor::load(storage, 1).expect("load the lessor");
        lessor.lock().leases.insert(
            7,
            Lease {
                ttl: 20,
                checkpoint: 0,
                generation: 0,
                expiry: None,
            },
        );
        (dir, lessor)
    }

    /// A checkpoint measured before a renewal may reach the log after the renewal's clear;
    /// applied, it would make a restart expire the renewed lease early.
    #[test]
    fn a_checkpoint_measured_before_an_applied_clear_is_ignored() {
        let (_dir, lessor) = lessor_with_lease_7();
        let mut batch = WriteBatch::default();
        lessor.apply_checkpoints(&mut batch, &checkpoint(0, 0));
        lessor.apply_checkpoints(&mut batch, &checkpoint(10, 0));
        assert_eq!(
            lessor.time_to_live(7),
            Some((20, 20)),
            "stale checkpoint applied"
        );
        lessor.apply_checkpoints(&mut batch, &checkpoint(12, 1));
        assert_eq!(
            lessor.time_to_live(7),
            Some((12, 20)),
            "current checkpoint ignored"
        );
    }

    fn clears(renewal: Renewal) -> bool {
        match renewal {
            Renewal::Renewed {
                clear_checkpoint, ..
            } => clear_checkpoint,
            other => panic!("lease 7 not renewed: {other:?}"),
        }
    }

    /// A checkpoint proposed before a demotion may still be applied after the member leads
    /// again; a renewal in between must clear it, or the renewal is lost on a restart.
    #[test]
    fn a_renewal_after_leadership_came_back_clears_a_checkpoint_still_in_flight() {
        let (_dir, lessor) = lessor_with_lease_7();
        lessor.promote();
        let due = lessor.due_checkpoints(Duration::ZERO);
        assert_eq!(due.len(), 1, "lease 7 is due: {due:?}");
        lessor.demote();
        lessor.promote();
        assert!(
            clears(lessor.renew(7)),
            "the in-flight checkpoint was forgotten"
        );
    }

    /// Once a clear is applied, checkpoints measured before it are stale anyway: renewals
    /// stop paying for a clear of their own.
    #[test]
    fn an_applied_clear_ends_the_need_to_clear() {
        let (_dir, lessor) = lessor_with_lease_7();
        lessor.promote();
        assert_eq!(lessor.due_checkpoints(Duration::ZERO).len(), 1);
        assert!(clears(lessor.renew(7)));
        let mut batch = WriteBatch::default();
        lessor.apply_checkpoints(&mut batch, &checkpoint(0, 0));
        assert!(!clears(lessor.renew(7)), "a clear after an applied clear");
    }

    #[test]
    fn min_ttl_matches_etcd_defaults() {
        assert_eq!(
            min_ttl(Duration::from_millis(100), Duration::from_millis(1000)),
            2
        );
        assert_eq!(
            min_ttl(Duration::from_millis(100), Duration::from_millis(5000)),
            8
        );
    }
}
