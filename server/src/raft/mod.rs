//! Consensus: the only module that names openraft.
//!
//! `RaftNode` is what the rest of keelson sees: propose a request and get the applied result
//! (from any member: a follower hands it to the leader), wait for a linearizable read point,
//! change the membership, and read the member's raft status. The peer protocol (client and
//! server) lives in `peer/`.

mod cluster_state;
mod forward;
mod log_store;
mod membership;
pub mod peer;
mod read_index;
mod recent_entries;
mod snapshot;
mod state_machine;
mod types;

pub(crate) use state_machine::{applied_index, META_APPLIED};

#[cfg(test)]
mod storage_suite;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, Instant as _, ServerState, SnapshotPolicy};
use rocksdb::WriteBatch;
use tokio::sync::watch;

use crate::error::{EtcdError, EtcdResult};
use crate::metrics::METRICS;
use crate::proto::etcdserverpb::{
    LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::peerpb::MembershipChange;
use crate::proto::raftpb::{RaftRequest, RaftResponse};
use crate::storage::{Storage, StorageError, WalSyncer};
use cluster_state::ClusterState;
use forward::Forwarder;
use log_store::{LogStore, ProposalsInFlight};
use peer::client::{PeerCallError, PeerNetwork, PeerPool, CLUSTER_MISMATCH_MESSAGE};
use peer::faults::PeerFaults;
use peer::snapshot_transfer::Incoming;
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
/// How long a removed member keeps answering before it stops (etcd waits 1 s).
pub(crate) const REMOVED_STOP_DELAY: Duration = Duration::from_secs(1);
/// How long a forwarded request waits between attempts while the cluster has no leader.
const LEADER_POLL: Duration = Duration::from_millis(20);

/// What the state machine needs from the layer that executes requests (the member's applier).
pub trait StateMachineApplier: Send + Sync + 'static {
    fn storage(&self) -> &Arc<Storage>;
    /// Applies `request` (or nothing, for raft's own entries), the entry at log `index`, and
    /// commits it together with what `record` adds to the batch.
    fn apply(
        &self,
        index: u64,
        request: Option<&RaftRequest>,
        record: &dyn Fn(&mut WriteBatch),
    ) -> Result<RaftResponse, StorageError>;
    /// Applies `request` if it changes nothing but keys and leaves its changes staged, to be
    /// written with the entries around it as one batch: readers and watchers see them after
    /// `commit_staged` (or the next `apply`), which writes `record`'s part of the newest
    /// staged entry with them. `None`, with nothing done, for any other request.
    fn stage(
        &self,
        index: u64,
        request: &RaftRequest,
        record: &dyn Fn(&mut WriteBatch),
    ) -> Result<Option<RaftResponse>, StorageError>;
    /// Writes every staged entry as one batch and publishes them.
    fn commit_staged(&self) -> Result<(), StorageError>;
    /// Whether applying `request` costs no more than its size says: it touches only keys it
    /// names, each once, so it may be applied on the async runtime. Anything that may touch a
    /// range of keys (a ranged delete, a lease revoke) goes to the blocking pool.
    fn is_bounded(&self, _request: &RaftRequest) -> bool {
        false
    }
    /// Reloads in-memory state after the data underneath was replaced by a snapshot.
    fn reload(&self) -> Result<(), StorageError>;
    /// Whether [`StateMachineApplier::replay`] wants the entries applied before this start.
    fn replays_log(&self) -> bool {
        false
    }
    /// An entry applied before this start that is still in the log, in log order: what the
    /// applier keeps only in memory (simple auth tokens) is rebuilt from them, as etcd rebuilds
    /// it when it replays its WAL on a restart.
    fn replay(&self, _index: u64, _request: &RaftRequest) {}
}

/// The membership as the leader sees it when a change is asked for.
pub struct MembershipView {
    /// This member (the leader).
    pub me: u64,
    pub nodes: BTreeMap<u64, MemberNode>,
    pub voters: std::collections::BTreeSet<u64>,
    /// Per follower: the index of the last log entry it has (None when unknown yet).
    pub matched: BTreeMap<u64, Option<u64>>,
    /// Per member ever reached: whether it has answered without interruption for the whole
    /// health interval.
    pub connected: BTreeMap<u64, bool>,
    pub last_log_index: u64,
    /// Members removed from the cluster; their IDs are never reused.
    pub removed: std::collections::BTreeSet<u64>,
}

/// Whether a membership change is allowed; the member decides (etcd's rules), the raft layer
/// asks on the leader before changing the membership.
pub trait MembershipRules: Send + Sync + 'static {
    fn check(&self, view: &MembershipView, change: &MembershipChangeKind) -> EtcdResult<()>;
}

pub use crate::proto::peerpb::membership_change::Change as MembershipChangeKind;

/// What the leader does for the lease clients of its followers; the member implements it.
#[tonic::async_trait]
pub trait LeaderLeases: Send + Sync + 'static {
    async fn keep_alive(&self, id: i64) -> EtcdResult<LeaseKeepAliveResponse>;
    async fn time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> EtcdResult<LeaseTimeToLiveResponse>;
}

#[derive(Clone)]
pub struct RaftSettings {
    pub member_id: u64,
    pub cluster_id: u64,
    pub member: MemberNode,
    /// Every member of a new cluster, this one included; empty when joining one.
    pub initial_members: BTreeMap<u64, MemberNode>,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub snapshot_dir: PathBuf,
    /// Where snapshots sent by a leader are written while they arrive.
    pub incoming_snapshot_dir: PathBuf,
    /// How long a proposal may wait to be applied before the client is told it timed out.
    pub request_timeout: Duration,
    /// TLS towards https peer URLs.
    pub peer_tls: Option<Arc<rustls::ClientConfig>>,
    /// Which membership changes are allowed.
    pub membership_rules: Arc<dyn MembershipRules>,
}

#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    /// The leader this member follows (or itself), when it is in contact with it.
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
    peers: Arc<PeerPool>,
    /// Batches the plain writes this member forwards to the leader.
    forwarder: Forwarder,
    cluster: Arc<ClusterState>,
    incoming: Incoming,
    leases: OnceLock<Weak<dyn LeaderLeases>>,
    /// Membership changes run one at a time on the leader.
    membership_changes: tokio::sync::Mutex<()>,
    /// Client proposals in flight in a one-member cluster; the log store syncs a lone one on
    /// its own thread.
    proposals: ProposalsInFlight,
}

impl RaftNode {
    pub async fn start(
        settings: RaftSettings,
        storage: Arc<Storage>,
        applier: Arc<dyn StateMachineApplier>,
    ) -> Result<Arc<Self>, RaftStartError> {
        let faults = Arc::new(PeerFaults::from_env());
        let cluster = Arc::new(ClusterState::new(
            settings.member_id,
            settings.cluster_id,
            faults.clone(),
        ));
        let peers = Arc::new(peer_pool(&settings, &cluster, faults));
        let syncer = WalSyncer::start(storage.clone())?;
        let proposals = ProposalsInFlight::default();
        let log_store = LogStore::new(storage, syncer, proposals.clone());
        let state_machine = StateMachine::open(
            applier,
            SnapshotStore::new(settings.snapshot_dir.clone())?,
            cluster.clone(),
        )?;
        let checkpoint_on_demand = state_machine.checkpoint_on_demand();
        let config = raft_config(&settings)?;
        let raft = Raft::new(
            settings.member_id,
            Arc::new(config),
            PeerNetwork::new(peers.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        checkpoint_on_demand.store(true, std::sync::atomic::Ordering::Release);
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        if !initialized && !settings.initial_members.is_empty() {
            raft.initialize(settings.initial_members.clone())
                .await
                .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        }
        let node = Arc::new(Self {
            reads: ReadIndexBatcher::new(),
            incoming: Incoming::new(settings.incoming_snapshot_dir.clone())?,
            raft,
            settings,
            forwarder: Forwarder::new(peers.clone()),
            peers,
            cluster,
            leases: OnceLock::new(),
            membership_changes: tokio::sync::Mutex::new(()),
            proposals,
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

    /// Lets the leader answer its followers' lease clients.
    pub fn set_leader_leases(&self, leases: Weak<dyn LeaderLeases>) {
        let _ = self.leases.set(leases);
    }

    fn leader_leases(&self) -> EtcdResult<Arc<dyn LeaderLeases>> {
        self.leases
            .get()
            .and_then(Weak::upgrade)
            .ok_or(EtcdError::Stopped)
    }

    pub fn member_id(&self) -> u64 {
        self.settings.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.settings.cluster_id
    }

    pub fn election_timeout(&self) -> Duration {
        self.settings.election_timeout
    }

    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    /// Resolves with a reason when the member must stop (it was removed from the cluster, or
    /// its peers belong to another cluster).
    pub fn fatal_receiver(&self) -> watch::Receiver<Option<String>> {
        self.cluster.fatal_receiver()
    }

    /// The peer listener's routes: the peer protocol and etcd's peer HTTP endpoints.
    pub fn peer_front_door(self: &Arc<Self>) -> peer::server::PeerFrontDoor {
        peer::server::front_door(self.clone())
    }

    /// How long a leader's claim lasts without hearing from a quorum, and a follower's trust
    /// in a leader it has not heard from: one election timeout, as etcd's check-quorum.
    fn leader_lease(&self) -> Duration {
        self.settings.election_timeout.max(Duration::from_millis(1))
    }

    /// The leader this member is in contact with: itself while a quorum acknowledges it, or
    /// the leader that replicated to it within a leader lease. A partitioned leader or follower
    /// thus reports no leader, as etcd's do (check-quorum; pre-candidates drop their leader).
    fn effective_leader(&self, m: &openraft::RaftMetrics<TypeConfig>) -> Option<u64> {
        let me = self.settings.member_id;
        let leader = m.current_leader?;
        if leader == me {
            if m.state != ServerState::Leader {
                return None;
            }
            #[allow(deprecated)]
            let self_quorum = m.millis_since_quorum_ack == Some(0);
            let acked_recently = m
                .last_quorum_acked
                .as_ref()
                .is_some_and(|t| t.elapsed() < self.leader_lease());
            return (self_quorum || acked_recently).then_some(me);
        }
        match self.cluster.leader_contact() {
            Some((contact_leader, at))
                if contact_leader == leader && at.elapsed() < self.leader_lease() =>
            {
                Some(leader)
            }
            _ => None,
        }
    }

    pub fn status(&self) -> RaftStatus {
        // Read under the borrow: every response header asks, and cloning the whole metrics
        // (membership maps included) showed up in profiles of watch fan-out.
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let leader = self.effective_leader(&m);
        if leader.is_some() {
            self.cluster.note_leader();
        }
        RaftStatus {
            leader,
            term: m.current_term,
            commit_index: m.local_committed.as_ref().map_or(0, |id| id.index),
            applied_index: m.last_applied.as_ref().map_or(0, |id| id.index),
            is_leader: leader == Some(self.settings.member_id),
        }
    }

    pub fn members(&self) -> Vec<ClusterMember> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
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

    pub fn is_learner(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let me = self.settings.member_id;
        membership.get_node(&me).is_some() && !membership.voter_ids().any(|id| id == me)
    }

    fn node_of(&self, id: u64) -> Option<MemberNode> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// The leader to send a request to: this member (`None`) or another one with its peer URLs.
    /// Waits for a leader until `deadline`.
    async fn leader_until(&self, deadline: Instant) -> EtcdResult<Option<(u64, Vec<String>)>> {
        loop {
            let status = self.status();
            match status.leader {
                Some(leader) if leader == self.settings.member_id => return Ok(None),
                Some(leader) => {
                    if let Some(node) = self.node_of(leader) {
                        return Ok(Some((leader, node.peer_urls)));
                    }
                }
                None => {}
            }
            if Instant::now() + LEADER_POLL >= deadline {
                return Err(EtcdError::Timeout);
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    fn remaining(deadline: Instant) -> Duration {
        deadline.saturating_duration_since(Instant::now())
    }

    /// Replicates `request`, waits until it is applied here, and returns the applied result.
    /// A follower hands the request to the leader and answers once it applied it itself, so
    /// that a client reading from this member next sees its own write.
    pub async fn propose(&self, request: &RaftRequest) -> EtcdResult<RaftResponse> {
        let deadline = Instant::now() + self.settings.request_timeout;
        let response = loop {
            match self.leader_until(deadline).await? {
                None => match self.propose_here(request, deadline).await {
                    Err(ProposeOutcome::NotLeader) => {
                        tokio::time::sleep(LEADER_POLL).await;
                        continue;
                    }
                    Err(ProposeOutcome::Failed(e)) => return Err(e),
                    Ok(response) => break response,
                },
                Some((leader, urls)) => {
                    // Boxed: the peer client's future is ~14 KB, and held inline it made every
                    // put's future that large, copied on each move (memmove was 7% of a put).
                    let forwarded = if forward::batchable(request) {
                        Box::pin(self.forwarder.propose(leader, &urls, request, deadline)).await
                    } else {
                        Box::pin(self.peers.propose(
                            leader,
                            &urls,
                            request,
                            Self::remaining(deadline),
                        ))
                        .await
                    };
                    match forwarded {
                        Ok(answer) => {
                            self.wait_applied(answer.applied_index, deadline).await?;
                            break answer.response.unwrap_or_default();
                        }
                        Err(PeerCallError::NotSent(_))
                        | Err(PeerCallError::Failed(EtcdError::NotLeader))
                        | Err(PeerCallError::Failed(EtcdError::NoLeader)) => {
                            // Not proposed anywhere: try the next leader.
                            if Instant::now() + LEADER_POLL >= deadline {
                                return Err(EtcdError::Timeout);
                            }
                            tokio::time::sleep(LEADER_POLL).await;
                            continue;
                        }
                        // The call broke after it reached the leader: the write may or may
                        // not be made. etcd reports such a proposal as timed out, never as
                        // a changed leader (that answer is for reads).
                        Err(PeerCallError::Broken(_)) => {
                            return Err(EtcdError::TimeoutDueToLeaderFail)
                        }
                        Err(PeerCallError::Failed(e)) => return Err(e),
                    }
                }
            }
        };
        if response.error.is_empty() {
            Ok(response)
        } else {
            Err(EtcdError::from_message(&response.error))
        }
    }

    /// Proposes on this member, the leader.
    async fn propose_here(
        &self,
        request: &RaftRequest,
        deadline: Instant,
    ) -> Result<RaftResponse, ProposeOutcome> {
        // Counted only in a one-member cluster: there a lone proposal's fsync can run on the
        // appending thread, while a leader with peers must not delay replication behind it.
        let _counted = self.is_only_member().then(|| self.proposals.enter());
        let write = self.raft.client_write(Proposal::encode(request));
        match tokio::time::timeout(Self::remaining(deadline), write).await {
            Err(_) => Err(ProposeOutcome::Failed(EtcdError::Timeout)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(ProposeOutcome::NotLeader)
            }
            Ok(Err(e)) => Err(ProposeOutcome::Failed(write_error(e))),
            Ok(Ok(response)) => Ok(response.data.0),
        }
    }

    fn is_only_member(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().nodes().count() == 1
    }

    /// The leader's side of a forwarded proposal: the result and the index it was applied at.
    async fn propose_for_follower(&self, request: &RaftRequest) -> EtcdResult<(RaftResponse, u64)> {
        self.propose_many_for_follower(std::slice::from_ref(request))
            .await
            .pop()
            .unwrap_or(Err(EtcdError::Stopped))
    }

    /// The leader's side of a follower's batch of proposals: each one's result and the index it
    /// was applied at, in order. Handed to openraft as one batch (one message to its core, one
    /// responder each) rather than one write call per proposal.
    pub async fn propose_many_for_follower(
        &self,
        requests: &[RaftRequest],
    ) -> Vec<EtcdResult<(RaftResponse, u64)>> {
        if !self.status().is_leader {
            return requests.iter().map(|_| Err(EtcdError::NotLeader)).collect();
        }
        let mut results = Vec::with_capacity(requests.len());
        let writes = async {
            let mut answers = self
                .raft
                .client_write_many(requests.iter().map(Proposal::encode))
                .await?;
            while let Some(answer) = futures::StreamExt::next(&mut answers).await {
                results.push(match answer? {
                    Ok(written) => Ok((written.response.0, written.log_id.index)),
                    Err(ClientWriteError::ForwardToLeader(_)) => Err(EtcdError::NotLeader),
                    Err(e) => Err(write_error(RaftError::APIError(e))),
                });
            }
            Ok::<_, openraft::error::Fatal<TypeConfig>>(())
        };
        // The proposals answered by then keep their answers; the rest timed out, or the core
        // stopped before it answered them.
        let unanswered = match tokio::time::timeout(self.settings.request_timeout, writes).await {
            Err(_) => EtcdError::Timeout,
            Ok(_) => EtcdError::Stopped,
        };
        results.resize_with(requests.len(), || Err(unanswered.clone()));
        results
    }

    /// Waits until this member applied the entry at `index`; one already applied (nearly always,
    /// for the requests with a simple token that ask) costs no timer and no registration.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> EtcdResult<()> {
        let Some(notice) = self.cluster.applied_notice(index) else {
            return Ok(());
        };
        match tokio::time::timeout(Self::remaining(deadline), notice).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Waits (at most a request timeout) until this member applied the entry at `index`.
    pub async fn wait_for_applied(&self, index: u64) -> EtcdResult<()> {
        self.wait_applied(index, Instant::now() + self.settings.request_timeout)
            .await
    }

    /// Waits until this member's state reflects every write acknowledged before the call.
    pub async fn read_index(self: &Arc<Self>) -> EtcdResult<()> {
        let node = self.clone();
        match tokio::time::timeout(
            self.settings.request_timeout,
            self.reads.wait(move || {
                let node = node.clone();
                async move { node.read_index_round().await }
            }),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                METRICS.read_indexes_failed.inc();
                Err(e)
            }
            Err(_) => {
                // etcd counts a read index that did not come back in time as both slow and
                // failed.
                METRICS.slow_read_indexes.inc();
                METRICS.read_indexes_failed.inc();
                Err(EtcdError::Timeout)
            }
        }
    }

    /// One ReadIndex round: the leader confirms it still leads and names the commit index; the
    /// member then waits until it applied that far.
    async fn read_index_round(&self) -> EtcdResult<()> {
        let deadline = Instant::now() + self.settings.request_timeout;
        loop {
            let index = match self.leader_until(deadline).await? {
                None => match self.read_index_here().await {
                    Err(EtcdError::NotLeader) => {
                        tokio::time::sleep(LEADER_POLL).await;
                        continue;
                    }
                    other => other?,
                },
                Some((leader, urls)) => {
                    match self
                        .peers
                        .read_index(leader, &urls, Self::remaining(deadline))
                        .await
                    {
                        Ok(index) => index,
                        Err(PeerCallError::NotSent(_))
                        | Err(PeerCallError::Failed(EtcdError::NotLeader)) => {
                            tokio::time::sleep(LEADER_POLL).await;
                            continue;
                        }
                        // etcd's answer to a read whose leader went away under it.
                        Err(PeerCallError::Broken(_)) => return Err(EtcdError::LeaderChanged),
                        Err(PeerCallError::Failed(e)) => return Err(e),
                    }
                }
            };
            return self.wait_applied(index, deadline).await;
        }
    }

    /// As the leader: waits until this member applied every entry committed so far, those of
    /// earlier terms included (a new leader's first entry commits them). Fails with `NotLeader`
    /// on any other member.
    pub async fn leader_caught_up(&self) -> EtcdResult<()> {
        let deadline = Instant::now() + self.settings.request_timeout;
        let index = tokio::time::timeout(self.settings.request_timeout, self.read_index_here())
            .await
            .map_err(|_| EtcdError::Timeout)??;
        self.wait_applied(index, deadline).await
    }

    /// The leader's read point: confirmed by a quorum before it is returned.
    async fn read_index_here(&self) -> EtcdResult<u64> {
        match self
            .raft
            .get_read_linearizer(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(linearizer) => Ok(linearizer.read_log_id().index()),
            Err(e) => Err(read_error(e)),
        }
    }

    /// Renews a lease on the leader, from whichever member the client talks to. A renewal is
    /// safe to repeat, so one that did not reach the leader or broke on it (the leader died)
    /// goes to the next leader until the deadline, as etcd's LeaseRenew does.
    pub async fn lease_keep_alive_on_leader(&self, id: i64) -> EtcdResult<LeaseKeepAliveResponse> {
        let deadline = Instant::now() + self.settings.request_timeout;
        loop {
            match self.leader_until(deadline).await? {
                None => match self.leader_leases()?.keep_alive(id).await {
                    Err(EtcdError::NotLeader) => tokio::time::sleep(LEADER_POLL).await,
                    other => return other,
                },
                Some((leader, urls)) => {
                    match self
                        .peers
                        .lease_keep_alive(leader, &urls, id, Self::remaining(deadline))
                        .await
                    {
                        Ok(answer) => return Ok(answer),
                        Err(e) => {
                            lease_call_goes_to_next_leader(e)?;
                            tokio::time::sleep(LEADER_POLL).await
                        }
                    }
                }
            }
        }
    }

    /// A lease's remaining TTL as the leader (which alone tracks expiry) sees it; asked of the
    /// next leader as a renewal is.
    pub async fn lease_time_to_live_on_leader(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> EtcdResult<LeaseTimeToLiveResponse> {
        let deadline = Instant::now() + self.settings.request_timeout;
        loop {
            match self.leader_until(deadline).await? {
                None => match self.leader_leases()?.time_to_live(req).await {
                    Err(EtcdError::NotLeader) => tokio::time::sleep(LEADER_POLL).await,
                    other => return other,
                },
                Some((leader, urls)) => {
                    match self
                        .peers
                        .lease_time_to_live(leader, &urls, req, Self::remaining(deadline))
                        .await
                    {
                        Ok(answer) => return Ok(answer),
                        Err(e) => {
                            lease_call_goes_to_next_leader(e)?;
                            tokio::time::sleep(LEADER_POLL).await
                        }
                    }
                }
            }
        }
    }

    /// Changes the membership through the leader and waits until this member applied it (a
    /// member removing itself does not: the leader stops replicating to it).
    pub async fn change_members(&self, change: MembershipChange) -> EtcdResult<()> {
        let removes_me = matches!(
            &change.change,
            Some(MembershipChangeKind::Remove(r)) if r.id == self.settings.member_id
        );
        let deadline = Instant::now() + self.settings.request_timeout;
        loop {
            let index = match self.leader_until(deadline).await? {
                None => match self.change_members_here(change.clone()).await {
                    Err(EtcdError::NotLeader) => {
                        tokio::time::sleep(LEADER_POLL).await;
                        continue;
                    }
                    other => other?,
                },
                Some((leader, urls)) => {
                    match self
                        .peers
                        .change_members(leader, &urls, change.clone(), Self::remaining(deadline))
                        .await
                    {
                        Ok(answer) => answer.applied_index,
                        Err(PeerCallError::NotSent(_))
                        | Err(PeerCallError::Failed(EtcdError::NotLeader)) => {
                            tokio::time::sleep(LEADER_POLL).await;
                            continue;
                        }
                        // The change may or may not be made: as a write, etcd's timeout.
                        Err(PeerCallError::Broken(_)) => {
                            return Err(EtcdError::TimeoutDueToLeaderFail)
                        }
                        Err(PeerCallError::Failed(e)) => return Err(e),
                    }
                }
            };
            if removes_me {
                return Ok(());
            }
            return self.wait_applied(index, deadline).await;
        }
    }

    /// Moves the leadership to `target` (this member must lead) and waits until it leads.
    pub async fn move_leader(&self, target: u64) -> EtcdResult<()> {
        if !self.status().is_leader {
            return Err(EtcdError::NotLeader);
        }
        let is_voter = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let found = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == target);
            found
        };
        if !is_voter {
            return Err(EtcdError::BadLeaderTransferee);
        }
        if target == self.settings.member_id {
            return Ok(());
        }
        tracing::info!(
            transferee = %format!("{target:x}"),
            "leadership transfer starting"
        );
        let started = Instant::now();
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|_| EtcdError::Stopped)?;
        let waited = self
            .raft
            .wait(Some(self.settings.request_timeout))
            .current_leader(target, "leadership moved")
            .await;
        match waited {
            Ok(_) => {
                tracing::info!(
                    new_leader = %format!("{target:x}"),
                    took = ?started.elapsed(),
                    "leadership transfer finished"
                );
                Ok(())
            }
            Err(_) => Err(EtcdError::LeaderTransferTimeout),
        }
    }

    /// Waits (bounded) until this member is in contact with a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.leader_until(deadline).await.is_ok()
    }

    /// Asks every URL in `urls` (another member's peer URLs) what cluster it belongs to.
    pub async fn ask_cluster(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<crate::proto::peerpb::ClusterInfo, String> {
        self.peers.get_cluster(url, timeout).await
    }

    /// Stops the member with `reason`.
    pub fn fail(&self, reason: String) {
        tracing::error!("{reason}");
        self.cluster.fail(reason);
    }

    pub fn ever_had_leader(&self) -> bool {
        self.cluster.ever_had_leader()
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

enum ProposeOutcome {
    NotLeader,
    Failed(EtcdError),
}

fn peer_pool(
    settings: &RaftSettings,
    cluster: &Arc<ClusterState>,
    faults: Arc<PeerFaults>,
) -> PeerPool {
    let on_removed = {
        let cluster = Arc::downgrade(cluster);
        Box::new(move || {
            if let Some(cluster) = cluster.upgrade() {
                tracing::warn!("{}", peer::client::REMOVED_MESSAGE);
                // As etcd: answer what is in flight (its own removal included) before stopping.
                cluster.fail_after(
                    REMOVED_STOP_DELAY,
                    peer::client::REMOVED_MESSAGE.to_string(),
                );
            }
        }) as Box<dyn Fn() + Send + Sync>
    };
    let on_mismatch = {
        let cluster = Arc::downgrade(cluster);
        let local = settings.cluster_id;
        Box::new(move |peer: u64, message: String| {
            if let Some(cluster) = cluster.upgrade() {
                tracing::error!(
                    "request sent was ignored (cluster ID mismatch: peer[{peer:x}]={}, local={local:x})",
                    message
                        .strip_prefix(CLUSTER_MISMATCH_MESSAGE)
                        .unwrap_or(&message)
                        .trim_start_matches([':', ' '])
                );
                let _ = cluster;
            }
        }) as Box<dyn Fn(u64, String) + Send + Sync>
    };
    PeerPool::new(
        settings.member_id,
        settings.cluster_id,
        settings.peer_tls.clone(),
        faults,
        on_removed,
        on_mismatch,
    )
}

fn raft_config(settings: &RaftSettings) -> Result<Config, RaftStartError> {
    let heartbeat = settings.heartbeat_interval.as_millis() as u64;
    let election = settings.election_timeout.as_millis() as u64;
    Config {
        cluster_name: "keelson".into(),
        heartbeat_interval: heartbeat.max(1),
        // openraft starts an election once a follower has heard nothing for its leader lease
        // (the maximum below, during which voters also refuse a new leader) plus a random
        // timeout between the two. etcd's followers campaign after a random timeout in
        // [1, 2) election timeouts; these bounds put openraft's in [1.25, 1.5), so a failover
        // takes what etcd's does, and the leader lease is 3/4 of an election timeout.
        election_timeout_min: (election / 2).max(heartbeat + 1),
        election_timeout_max: (election * 3 / 4).max(heartbeat + 2),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_count.max(1)),
        max_in_snapshot_log_to_keep: LOG_ENTRIES_KEPT_AFTER_SNAPSHOT,
        // A follower further behind than the entries kept gets a snapshot.
        replication_lag_threshold: LOG_ENTRIES_KEPT_AFTER_SNAPSHOT
            .max(settings.snapshot_count.max(1)),
        enable_pre_vote: Some(true),
        // A leader restarting on its own term would serve reads and promote its lessor from a
        // commit index it never made durable (the state machine and `save_committed` are not
        // fsynced): its ReadIndex could name a point before writes it had acknowledged. As
        // etcd's members, a restarted leader comes back a follower and is elected again.
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| RaftStartError::Config(e.to_string()))
}

/// A lease call to the leader that failed: `Ok` when it is to be asked of the next leader (it
/// did not reach this one, broke on it, or the leader was losing its place; a renewal is safe
/// to repeat), else the error for the client.
fn lease_call_goes_to_next_leader(error: PeerCallError) -> EtcdResult<()> {
    match error {
        PeerCallError::NotSent(_)
        | PeerCallError::Broken(_)
        | PeerCallError::Failed(
            EtcdError::NotLeader | EtcdError::LeaderChanged | EtcdError::TimeoutDueToLeaderFail,
        ) => Ok(()),
        PeerCallError::Failed(e) => Err(e),
    }
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> EtcdError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_id {
            Some(_) => EtcdError::NotLeader,
            None => EtcdError::NoLeader,
        },
        // The entry was appended here, then dropped when this member took another leader's
        // log: it may still commit there. etcd answers such a proposal as timed out.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
            EtcdError::TimeoutDueToLeaderFail
        }
        RaftError::APIError(other) => {
            tracing::warn!(error = %other, "proposal failed");
            EtcdError::Internal(format!("proposal failed: {other}"))
        }
        RaftError::Fatal(_) => EtcdError::Stopped,
    }
}

fn read_error(
    e: openraft::error::RaftError<TypeConfig, openraft::error::LinearizableReadError<TypeConfig>>,
) -> EtcdError {
    use openraft::error::LinearizableReadError;
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(_)) => EtcdError::NotLeader,
        RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)) => EtcdError::Timeout,
        RaftError::Fatal(_) => EtcdError::Stopped,
    }
}
