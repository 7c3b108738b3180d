//! The member: proposes writes through raft, serves reads (linearizable by default), and
//! answers with etcd's response headers. The gRPC layer above it only validates and converts.

pub mod alarms;
pub mod applier;
mod auth;
pub mod auto_compaction;
mod cluster;
pub mod concurrency;
mod db_size;
pub mod identity;
pub mod ids;
pub mod join;
mod leases;
pub mod membership;
pub mod quota;

pub use auth::Credentials;

use std::sync::Arc;

use crate::auth::{AuthStore, Caller};
use crate::error::{EtcdError, EtcdResult};
use crate::lease::Lessor;
use crate::metrics::METRICS;
use crate::mvcc::write::WriteTxn;
use crate::mvcc::{apply, MvccStore};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::request_op::Request as TxnOp;
use crate::proto::etcdserverpb::response_op::Response as TxnOpResponse;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, StatusResponse, TxnRequest, TxnResponse,
};
use crate::proto::raftpb::raft_request::Request;
use crate::proto::raftpb::raft_response::Response;
use crate::proto::raftpb::RaftRequest;
use crate::raft::{RaftNode, RaftStatus};
use crate::version::ETCD_VERSION;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_backend_bytes: i64,
}

pub struct Member {
    cluster_id: u64,
    raft: Arc<RaftNode>,
    store: Arc<MvccStore>,
    alarms: Arc<alarms::Alarms>,
    lessor: Arc<Lessor>,
    auth: Arc<AuthStore>,
    ids: ids::IdGenerator,
    limits: Limits,
    /// The store's size for the quota check (and the size gauges).
    db_size: db_size::DbSize,
}

/// Bytes etcd's raft envelope adds around a request (request header with its 64-bit ID, the
/// request's field tag); the size limit applies to the whole envelope, so we count them too.
fn envelope_len(member_id: u64, body_len: usize) -> usize {
    let id = ((member_id & 0xffff) << 48) | (1 << 40);
    let header = 2 + 1 + 1 + prost::encoding::encoded_len_varint(id);
    header + 1 + prost::encoding::encoded_len_varint(body_len as u64) + body_len
}

impl Member {
    pub fn new(
        cluster_id: u64,
        raft: Arc<RaftNode>,
        store: Arc<MvccStore>,
        alarms: Arc<alarms::Alarms>,
        lessor: Arc<Lessor>,
        auth: Arc<AuthStore>,
        limits: Limits,
    ) -> Self {
        let db_size = db_size::DbSize::start(store.storage().clone());
        let ids = ids::IdGenerator::new(raft.member_id());
        Self {
            cluster_id,
            raft,
            store,
            alarms,
            lessor,
            auth,
            ids,
            limits,
            db_size,
        }
    }

    pub fn id(&self) -> u64 {
        self.raft.member_id()
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.raft
    }

    pub fn raft_status(&self) -> RaftStatus {
        self.raft.status()
    }

    /// The header every response carries; `revision` is the store revision it reports.
    /// etcd's Hash (of the whole backend) over the state machine as etcd's buckets: the
    /// CRC-32C `keelson snapshot status` and `etcdctl snapshot status` compute on the file a
    /// snapshot would send, without `meta`'s consistent index. Equal on members at the same
    /// applied state; not comparable with etcd's (its file holds member and alarm data).
    pub async fn backend_hash(&self) -> EtcdResult<(u32, i64)> {
        let storage = self.store().storage().clone();
        tokio::task::spawn_blocking(move || crate::snapshot::export::backend_hash(&storage))
            .await
            .map_err(|e| EtcdError::Internal(format!("hash task failed: {e}")))?
            .map_err(EtcdError::from)
    }

    /// Starts streaming a snapshot of the state machine in etcd's format.
    pub fn snapshot(
        &self,
    ) -> tokio::sync::mpsc::Receiver<
        Result<crate::snapshot::stream::Chunk, crate::snapshot::SnapshotError>,
    > {
        let storage = self.store().storage().clone();
        let dir = crate::snapshot::export_dir(storage.dir());
        crate::snapshot::stream::start(storage, dir)
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id(),
            revision,
            raft_term: self.raft.status().term,
        }
    }

    fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header
            .as_ref()
            .map_or(self.store.current_revision(), |h| h.revision);
        *header = Some(self.header(revision));
    }

    fn fill_txn(&self, resp: &mut TxnResponse) {
        self.fill(&mut resp.header);
        for op in &mut resp.responses {
            match &mut op.response {
                Some(TxnOpResponse::ResponseRange(r)) => self.fill(&mut r.header),
                Some(TxnOpResponse::ResponsePut(r)) => self.fill(&mut r.header),
                Some(TxnOpResponse::ResponseDeleteRange(r)) => self.fill(&mut r.header),
                Some(TxnOpResponse::ResponseTxn(r)) => self.fill_txn(r),
                None => {}
            }
        }
    }

    /// Proposes what the member does on its own behalf.
    async fn propose(&self, request: Request) -> EtcdResult<Response> {
        self.propose_as(&Caller::Member, request).await
    }

    /// Proposes a request of `caller`; the permission checks made when it is applied use it.
    async fn propose_as(&self, caller: &Caller, request: Request) -> EtcdResult<Response> {
        let request = RaftRequest {
            id: 0,
            request: Some(request),
            auth: caller.to_entry(),
        };
        let body_len = request.request.as_ref().map_or(0, |r| r.encoded_len());
        if envelope_len(self.id(), body_len) > self.limits.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        METRICS.proposals_pending.inc();
        let outcome = self.raft.propose(&request).await;
        METRICS.proposals_pending.dec();
        if matches!(
            outcome,
            Err(EtcdError::Timeout
                | EtcdError::TimeoutDueToLeaderFail
                | EtcdError::NoLeader
                | EtcdError::NotLeader
                | EtcdError::LeaderChanged
                | EtcdError::Stopped)
        ) {
            METRICS.proposals_failed.inc();
        }
        outcome?
            .response
            .ok_or_else(|| EtcdError::Internal("applied request returned nothing".into()))
    }

    async fn read_locally<T: Send + 'static>(
        &self,
        read: impl FnOnce(&MvccStore) -> EtcdResult<T> + Send + 'static,
    ) -> EtcdResult<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|e| EtcdError::Internal(format!("read task failed: {e}")))?
    }

    /// A Range for a client (`credentials`) or for the member itself (`None`). As etcd's
    /// `doSerialize`, the credentials are resolved after the linearizable barrier: a token that
    /// an auth change applied meanwhile invalidated is refused as such.
    pub async fn range(
        &self,
        credentials: Option<&Credentials>,
        req: RangeRequest,
    ) -> EtcdResult<RangeResponse> {
        METRICS.mvcc_range.inc();
        if !req.serializable && self.raft.is_learner() {
            return Err(EtcdError::NotSupportedForLearner);
        }
        if !req.serializable {
            self.raft.read_index().await?;
        }
        let caller = &self.caller_of(credentials).await?;
        self.auth.check_read(caller, &req.key, &req.range_end)?;
        let mut resp = self.read_locally(move |store| store.range(&req)).await?;
        self.auth.check_unchanged(caller)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// etcd's quota check: a request that would take the store past the quota raises the
    /// NOSPACE alarm and is refused.
    async fn check_quota(&self, cost: usize) -> EtcdResult<()> {
        let quota = u64::try_from(self.limits.quota_backend_bytes).unwrap_or(0);
        if self.db_size.admit(cost as u64, quota) {
            return Ok(());
        }
        let raise = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.id(),
            alarm: AlarmType::Nospace as i32,
        };
        // Boxed: this rare path would otherwise make every put's future as large as a proposal's.
        if let Err(e) = Box::pin(self.propose(Request::Alarm(raise))).await {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        }
        Err(EtcdError::NoSpace)
    }

    pub async fn alarm(&self, req: AlarmRequest) -> EtcdResult<AlarmResponse> {
        match self.propose(Request::Alarm(req)).await? {
            Response::Alarm(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn put(&self, caller: &Caller, req: PutRequest) -> EtcdResult<PutResponse> {
        METRICS.mvcc_put.inc();
        self.check_quota(quota::put_cost(&req)).await?;
        match self.propose_as(caller, Request::Put(req)).await? {
            Response::Put(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_range(
        &self,
        caller: &Caller,
        req: DeleteRangeRequest,
    ) -> EtcdResult<DeleteRangeResponse> {
        METRICS.mvcc_delete.inc();
        match self.propose_as(caller, Request::DeleteRange(req)).await? {
            Response::DeleteRange(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    /// A Txn for a client; a read-only one resolves the credentials after the linearizable
    /// barrier, as `range` does.
    pub async fn txn(&self, credentials: &Credentials, req: TxnRequest) -> EtcdResult<TxnResponse> {
        METRICS.mvcc_txn.inc();
        let mut resp = if txn_is_read_only(&req) {
            if !txn_is_serializable(&req) {
                self.raft.read_index().await?;
            }
            let caller = &self.caller(credentials).await?;
            self.auth.check_txn(caller, &req)?;
            let resp = self
                .read_locally(move |store| apply::txn(&mut WriteTxn::for_reading(store), &req))
                .await?;
            self.auth.check_unchanged(caller)?;
            resp
        } else {
            let caller = &self.caller(credentials).await?;
            self.check_quota(quota::txn_cost(&req)).await?;
            match self.propose_as(caller, Request::Txn(req)).await? {
                Response::Txn(resp) => resp,
                other => return Err(unexpected(other)),
            }
        };
        self.fill_txn(&mut resp);
        Ok(resp)
    }

    pub async fn compact(&self, req: CompactionRequest) -> EtcdResult<CompactionResponse> {
        let physical = req.physical;
        let revision = req.revision;
        match self.propose(Request::Compaction(req)).await? {
            Response::Compaction(mut resp) => {
                if physical {
                    self.store.compactor().wait_for(revision).await;
                }
                self.fill(&mut resp.header);
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn status(&self) -> EtcdResult<StatusResponse> {
        let raft = self.raft.status();
        let (db_size, db_size_in_use) = self
            .read_locally(|store| {
                let size = store.storage().data_size();
                Ok((size.total as i64, size.in_use as i64))
            })
            .await?;
        Ok(StatusResponse {
            header: Some(self.header(self.store.current_revision())),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors: self.status_errors(&raft),
            db_size_in_use,
            is_learner: self.raft.is_learner(),
            // Only etcd 3.6 reports a storage version; keelson answers as 3.5 does.
            storage_version: String::new(),
            db_size_quota: self.limits.quota_backend_bytes,
            downgrade_info: None,
        })
    }

    /// Whether this member is a learner (a non-voting member catching up).
    pub fn is_learner(&self) -> bool {
        self.raft.is_learner()
    }

    pub fn active_alarms(&self) -> Vec<crate::proto::etcdserverpb::AlarmMember> {
        self.alarms.list(AlarmType::None)
    }

    fn status_errors(&self, raft: &RaftStatus) -> Vec<String> {
        let mut errors = Vec::new();
        if raft.leader.is_none() {
            errors.push(EtcdError::NoLeader.to_string());
        }
        errors.extend(self.alarms.status_lines());
        errors
    }
}

fn unexpected(response: Response) -> EtcdError {
    EtcdError::Internal(format!("unexpected applied response: {response:?}"))
}

/// A txn that cannot write, whichever branch it takes, needs no consensus.
pub fn txn_is_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(TxnOp::RequestRange(_)) | None => true,
            Some(TxnOp::RequestTxn(inner)) => txn_is_read_only(inner),
            Some(TxnOp::RequestPut(_)) | Some(TxnOp::RequestDeleteRange(_)) => false,
        })
}

fn txn_is_serializable(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(TxnOp::RequestRange(r)) => r.serializable,
            Some(TxnOp::RequestTxn(inner)) => txn_is_serializable(inner),
            _ => true,
        })
}

impl Member {
    pub async fn hash_kv(&self, revision: i64) -> EtcdResult<HashKvResponse> {
        let (hash, compact_revision, hash_revision) = self
            .read_locally(move |store| store.hash_kv(revision))
            .await?;
        Ok(HashKvResponse {
            header: Some(self.header(self.store.current_revision())),
            hash,
            compact_revision,
            hash_revision,
        })
    }

    /// Rewrites the store's files without superseded data. Unlike etcd's, this does not stop
    /// the member: RocksDB compacts in the background while reads and writes go on.
    pub async fn defragment(&self) -> EtcdResult<()> {
        let started = std::time::Instant::now();
        self.read_locally(|store| {
            store.storage().compact_all();
            Ok(())
        })
        .await?;
        METRICS
            .backend_defrag_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}
