//! Consensus: the only module that names openraft.
//!
//! `RaftNode` is what the rest of keelson sees: propose a request and get the applied result,
//! wait for a linearizable read point, and read the member's raft status.

mod log_store;
mod network;
mod read_index;
mod snapshot;
mod state_machine;
mod types;

#[cfg(test)]
mod storage_suite;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, SnapshotPolicy};

use crate::error::{EtcdError, EtcdResult};
use crate::member::applier::Applier;
use crate::proto::raftpb::{RaftRequest, RaftResponse};
use crate::storage::{Storage, WalSyncer};
use log_store::LogStore;
use network::PeerNetwork;
use read_index::ReadIndexBatcher;
use snapshot::{SnapshotData, SnapshotStore};
use state_machine::StateMachine;
pub use types::MemberNode;
use types::{Proposal, TypeConfig};

type Raft = openraft::Raft<TypeConfig, StateMachine>;
pub(crate) type RaftSnapshot = openraft::Snapshot<
    openraft::vote::leader_id_std::CommittedLeaderId<u64>,
    u64,
    MemberNode,
    SnapshotData,
>;

/// Entries kept after a snapshot so that a slightly lagging follower needs no snapshot
/// (etcd keeps 5000 for the same reason).
const LOG_ENTRIES_KEPT_AFTER_SNAPSHOT: u64 = 5000;

#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub member_id: u64,
    pub member: MemberNode,
    /// Every member of a new cluster, this one included.
    pub initial_members: BTreeMap<u64, MemberNode>,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub snapshot_dir: PathBuf,
    /// How long a proposal may wait to be applied before the client is told it timed out.
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
}

#[derive(Debug, Clone)]
pub struct ClusterMember {
    pub id: u64,
    pub node: MemberNode,
    pub is_learner: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    #[error("raft storage: {0}")]
    Storage(#[from] std::io::Error),
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
}

pub struct RaftNode {
    raft: Raft,
    settings: RaftSettings,
    reads: ReadIndexBatcher,
}

impl RaftNode {
    pub async fn start(
        settings: RaftSettings,
        storage: Arc<Storage>,
        applier: Arc<Applier>,
    ) -> Result<Arc<Self>, RaftStartError> {
        let syncer = WalSyncer::start(storage.clone())?;
        let log_store = LogStore::new(storage, syncer);
        let state_machine =
            StateMachine::open(applier, SnapshotStore::new(settings.snapshot_dir.clone())?)?;
        let config = raft_config(&settings)?;
        let raft = Raft::new(
            settings.member_id,
            Arc::new(config),
            PeerNetwork,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        if !initialized {
            raft.initialize(settings.initial_members.clone())
                .await
                .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        }
        let node = Arc::new(Self {
            reads: ReadIndexBatcher::new(raft.clone()),
            raft,
            settings,
        });
        node.campaign_if_alone().await;
        Ok(node)
    }

    /// A member that is the only voter need not wait an election timeout to lead.
    async fn campaign_if_alone(&self) {
        let (voters, has_leader) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            (voters, m.current_leader.is_some())
        };
        if voters == [self.settings.member_id] && !has_leader {
            if let Err(e) = self.raft.trigger().elect(false).await {
                tracing::warn!(error = %e, "could not start an election");
            }
        }
    }

    pub fn member_id(&self) -> u64 {
        self.settings.member_id
    }

    pub fn election_timeout(&self) -> Duration {
        self.settings.election_timeout
    }

    /// Replicates `request`, waits until it is applied here, and returns the applied result.
    pub async fn propose(&self, request: &RaftRequest) -> EtcdResult<RaftResponse> {
        let write = self.raft.client_write(Proposal::encode(request));
        let response = match tokio::time::timeout(self.settings.request_timeout, write).await {
            Err(_) => return Err(EtcdError::Timeout),
            Ok(Err(e)) => return Err(write_error(e)),
            Ok(Ok(response)) => response.data.0,
        };
        if response.error.is_empty() {
            Ok(response)
        } else {
            Err(EtcdError::from_message(&response.error))
        }
    }

    /// Waits until this member's state reflects every write acknowledged before the call.
    pub async fn read_index(&self) -> EtcdResult<()> {
        match tokio::time::timeout(self.settings.request_timeout, self.reads.wait()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    pub fn status(&self) -> RaftStatus {
        // Read under the borrow: every response header asks, and cloning the whole metrics
        // (membership maps included) showed up in profiles of watch fan-out.
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        RaftStatus {
            leader: m.current_leader,
            term: m.current_term,
            commit_index: m.cluster_committed.as_ref().map_or(0, |id| id.index),
            applied_index: m.last_applied.as_ref().map_or(0, |id| id.index),
            is_leader: m.current_leader == Some(self.settings.member_id),
        }
    }

    pub fn members(&self) -> Vec<ClusterMember> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| ClusterMember {
                id: *id,
                node: node.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// Waits (bounded) until some member leads.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if metrics.borrow_watched().current_leader.is_some() {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        waited.is_ok() && self.status().leader.is_some()
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

fn raft_config(settings: &RaftSettings) -> Result<Config, RaftStartError> {
    let heartbeat = settings.heartbeat_interval.as_millis() as u64;
    let election = settings.election_timeout.as_millis() as u64;
    Config {
        cluster_name: "keelson".into(),
        heartbeat_interval: heartbeat.max(1),
        election_timeout_min: election.max(heartbeat + 1),
        election_timeout_max: election.max(heartbeat + 1) * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_count.max(1)),
        max_in_snapshot_log_to_keep: LOG_ENTRIES_KEPT_AFTER_SNAPSHOT,
        enable_pre_vote: Some(true),
        ..Default::default()
    }
    .validate()
    .map_err(|e| RaftStartError::Config(e.to_string()))
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> EtcdError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            Some(_) => EtcdError::NotLeader,
            None => EtcdError::NoLeader,
        },
        RaftError::APIError(other) => {
            tracing::warn!(error = %other, "proposal failed");
            EtcdError::LeaderChanged
        }
        RaftError::Fatal(_) => EtcdError::Stopped,
    }
}
