//! Leases at the member level: grants and revokes through raft, keep-alives on the leader, and
//! the leader's background work (expiring leases, checkpointing remaining TTLs).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{unexpected, Member};
use crate::auth::Caller;
use crate::error::{EtcdError, EtcdResult};
use crate::lease::{Renewal, MAX_LEASE_TTL};
use crate::metrics::METRICS;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use crate::proto::raftpb::raft_request::Request;
use crate::proto::raftpb::raft_response::Response;
use crate::proto::raftpb::{LeaseCheckpoint, LeaseCheckpointBatch};
use crate::raft::LeaderLeases;

/// etcd's quota estimate for a lease.
const LEASE_COST: usize = 64;
/// How often the leader looks for expired leases (expiry is due within a second).
const EXPIRY_SCAN: Duration = Duration::from_millis(100);
/// Revokes proposed at once when many leases expire together (they share raft appends).
const REVOKES_IN_FLIGHT: usize = 256;
/// Expired leases taken per scan; the in-flight limit is what bounds the work.
const EXPIRED_PER_SCAN: usize = 10_000;
/// How often remaining TTLs are checkpointed, and the staleness that earns a checkpoint.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Checkpoints per raft entry (etcd's batch limit).
const CHECKPOINTS_PER_ENTRY: usize = 1000;
/// How often leadership is checked to start or stop the leader's lease work.
const LEADERSHIP_POLL: Duration = Duration::from_millis(50);

#[tonic::async_trait]
impl LeaderLeases for Member {
    async fn keep_alive(&self, id: i64) -> EtcdResult<LeaseKeepAliveResponse> {
        self.renew_as_leader(id).await
    }

    async fn time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> EtcdResult<LeaseTimeToLiveResponse> {
        self.time_to_live_as_leader(req).await
    }
}

impl Member {
    pub async fn lease_grant(&self, mut req: LeaseGrantRequest) -> EtcdResult<LeaseGrantResponse> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        if req.id == 0 {
            // The ID is chosen before proposing, so that every member applies the same one.
            req.id = loop {
                let id = self.ids.next_positive();
                if !self.lessor.contains(id) {
                    break id;
                }
            };
        }
        self.check_quota(LEASE_COST).await?;
        match self.propose(Request::LeaseGrant(req)).await? {
            Response::LeaseGrant(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Revokes a lease; a client must be allowed to write every key attached to it.
    pub async fn lease_revoke(
        &self,
        caller: &Caller,
        req: LeaseRevokeRequest,
    ) -> EtcdResult<LeaseRevokeResponse> {
        match self.propose_as(caller, Request::LeaseRevoke(req)).await? {
            Response::LeaseRevoke(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Renews a lease on the leader (from a follower, through it); TTL 0 answers a lease that
    /// does not exist (any more).
    pub async fn lease_keep_alive(&self, id: i64) -> EtcdResult<LeaseKeepAliveResponse> {
        let mut answer = self.raft.lease_keep_alive_on_leader(id).await?;
        answer.header = Some(self.header(self.store.current_revision()));
        Ok(answer)
    }

    /// The leader's renewal: only the leader tracks when leases expire.
    async fn renew_as_leader(&self, id: i64) -> EtcdResult<LeaseKeepAliveResponse> {
        // Asked of raft, not of the lessor's flag (refreshed every 50 ms): a leader that was
        // frozen and no longer has a quorum must not renew what the new leader may expire.
        if !self.raft_status().is_leader {
            return Err(EtcdError::NotLeader);
        }
        let ttl = match self.lessor.renew(id) {
            Renewal::Renewed {
                ttl,
                clear_checkpoint,
            } => {
                if clear_checkpoint {
                    // The recorded remaining TTL is now stale and too short: clear it before
                    // telling the client, or a restart could expire the lease early.
                    self.checkpoint(vec![LeaseCheckpoint {
                        id,
                        remaining_ttl: 0,
                        generation: 0,
                    }])
                    .await?;
                }
                ttl
            }
            Renewal::NotFound => 0,
            Renewal::NotPrimary => return Err(EtcdError::NotLeader),
        };
        Ok(LeaseKeepAliveResponse {
            header: Some(self.header(self.store.current_revision())),
            id,
            ttl,
        })
    }

    /// A lease's remaining TTL, as the leader (which alone tracks expiry) knows it.
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> EtcdResult<LeaseTimeToLiveResponse> {
        let mut answer = self.raft.lease_time_to_live_on_leader(req).await?;
        answer.header = Some(self.header(self.store.current_revision()));
        Ok(answer)
    }

    async fn time_to_live_as_leader(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> EtcdResult<LeaseTimeToLiveResponse> {
        if !self.lessor.is_primary() {
            return Err(EtcdError::NotLeader);
        }
        let header = Some(self.header(self.store.current_revision()));
        let Some((remaining, granted)) = self.lessor.time_to_live(req.id) else {
            return Ok(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let keys = if req.keys {
            let lessor = self.lessor.clone();
            let id = req.id;
            tokio::task::spawn_blocking(move || lessor.attached_keys(id))
                .await
                .map_err(|e| EtcdError::Internal(format!("lease keys task failed: {e}")))??
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
        })
    }

    pub fn lease_leases(&self) -> LeaseLeasesResponse {
        LeaseLeasesResponse {
            header: Some(self.header(self.store.current_revision())),
            leases: self
                .lessor
                .ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        }
    }

    async fn checkpoint(&self, checkpoints: Vec<LeaseCheckpoint>) -> EtcdResult<()> {
        let batch = LeaseCheckpointBatch { checkpoints };
        self.propose(Request::LeaseCheckpoint(batch))
            .await
            .map(|_| ())
    }

    /// Deadlines start from the recorded TTLs, so the entries committed before this term must
    /// be applied first: after a restart, a renewal's clear may still be in the log behind the
    /// checkpoint it clears. Left for the next poll when leadership went meanwhile.
    async fn promote_lessor_when_caught_up(&self) {
        if self.raft.leader_caught_up().await.is_ok() && self.raft_status().is_leader {
            self.lessor.promote();
        }
    }

    /// Starts the leader's lease work; it follows leadership as it comes and goes.
    pub fn start_lease_tasks(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut poll = tokio::time::interval(LEADERSHIP_POLL);
            loop {
                poll.tick().await;
                let Some(member) = weak.upgrade() else { return };
                let leading = member.raft_status().is_leader;
                match (leading, member.lessor.is_primary()) {
                    (true, false) => member.promote_lessor_when_caught_up().await,
                    (false, true) => member.lessor.demote(),
                    _ => {}
                }
            }
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(REVOKES_IN_FLIGHT));
            let mut scan = tokio::time::interval(EXPIRY_SCAN);
            loop {
                scan.tick().await;
                let Some(member) = weak.upgrade() else { return };
                if !member.raft_status().is_leader {
                    continue;
                }
                for id in member.lessor.take_expired(EXPIRED_PER_SCAN) {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let member = member.clone();
                    tokio::spawn(async move {
                        let outcome = member
                            .lease_revoke(&Caller::Member, LeaseRevokeRequest { id })
                            .await;
                        match outcome {
                            // As etcd: an expired lease counts once its revoke went through.
                            Ok(_) => METRICS.lease_expired.inc(),
                            Err(EtcdError::LeaseNotFound) => {}
                            Err(e) => {
                                tracing::warn!(lease = id, error = %e, "revoking an expired lease failed");
                                member.lessor.revoke_failed(id);
                            }
                        }
                        drop(permit);
                    });
                }
            }
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECKPOINT_EVERY);
            loop {
                every.tick().await;
                let Some(member) = weak.upgrade() else { return };
                let due = member.lessor.due_checkpoints(CHECKPOINT_EVERY);
                for chunk in due.chunks(CHECKPOINTS_PER_ENTRY) {
                    if let Err(e) = member.checkpoint(chunk.to_vec()).await {
                        // Its leases stay marked: a failed proposal may still be applied.
                        tracing::warn!(error = %e, "checkpointing lease TTLs failed");
                    }
                }
            }
        });
    }
}
