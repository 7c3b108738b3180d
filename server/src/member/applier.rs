//! Executes committed requests against the store: the deterministic heart of every member.
//!
//! Everything an entry changes, plus whatever the caller records about the entry itself (the
//! applied log id), lands in one RocksDB batch, so a crash replays an entry entirely or not at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::WriteBatch;

use super::alarms::Alarms;
use super::quota;
use crate::auth::{AuthStore, Caller};
use crate::error::EtcdError;
use crate::lease::Lessor;
use crate::metrics::METRICS;
use crate::mvcc::write::WriteTxn;
use crate::mvcc::{apply, MvccStore};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::request_op::Request as OpRequest;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, LeaseCheckpointResponse, TxnRequest,
};
use crate::proto::raftpb::raft_request::Request;
use crate::proto::raftpb::raft_response::Response;
use crate::proto::raftpb::{RaftRequest, RaftResponse};
use crate::raft::StateMachineApplier;
use crate::storage::{Storage, StorageError};

/// etcd's warnApplyDuration: an apply slower than this is logged and counted.
const SLOW_APPLY: Duration = Duration::from_millis(100);

pub struct Applier {
    store: Arc<MvccStore>,
    alarms: Arc<Alarms>,
    lessor: Arc<Lessor>,
    auth: Arc<AuthStore>,
}

impl Applier {
    pub fn new(
        store: Arc<MvccStore>,
        lessor: Arc<Lessor>,
        auth: Arc<AuthStore>,
    ) -> Result<Self, StorageError> {
        let alarms = Arc::new(Alarms::load(store.storage())?);
        Ok(Self {
            store,
            alarms,
            lessor,
            auth,
        })
    }

    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.lessor
    }

    pub fn alarms(&self) -> &Arc<Alarms> {
        &self.alarms
    }

    /// Reloads in-memory state after the data underneath was replaced by a snapshot.
    pub fn reload(&self) -> Result<(), StorageError> {
        self.store
            .reload()
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        self.alarms.reload(self.store.storage())?;
        self.auth.reload()?;
        self.lessor.reload()
    }

    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    /// Applies `request` (or nothing, for raft's own entries) and commits it together with
    /// what `record` adds to the batch, and with every entry staged before it. A failed request
    /// commits only `record`'s part.
    pub fn apply(
        &self,
        index: u64,
        request: Option<&RaftRequest>,
        record: &dyn Fn(&mut WriteBatch),
    ) -> Result<RaftResponse, StorageError> {
        let (txn, response) = self.execute_entry(index, request)?;
        // Through the staged path, so that `record` replaces the record of any entry staged
        // before this one instead of being written ahead of it in the batch.
        self.store
            .stage(txn.finish(), record)
            .and_then(|()| self.store.commit_staged())
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        Ok(response)
    }

    /// Applies a request that changes nothing but keys (Put, DeleteRange, Txn) and stages it:
    /// it is written and published with the entries around it by `commit_staged`. `None`,
    /// with nothing done, for any other request.
    pub fn stage(
        &self,
        index: u64,
        request: &RaftRequest,
        record: &dyn Fn(&mut WriteBatch),
    ) -> Result<Option<RaftResponse>, StorageError> {
        if !matches!(
            request.request,
            Some(Request::Put(_) | Request::DeleteRange(_) | Request::Txn(_))
        ) {
            return Ok(None);
        }
        let (txn, response) = self.execute_entry(index, Some(request))?;
        self.store
            .stage(txn.finish(), record)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        Ok(Some(response))
    }

    /// Writes every staged entry as one batch and publishes them.
    pub fn commit_staged(&self) -> Result<(), StorageError> {
        self.store
            .commit_staged()
            .map_err(|e| StorageError::Corrupt(e.to_string()))
    }

    /// Executes an entry's request: the txn holding its changes (none if it was refused) and
    /// the answer for the client.
    fn execute_entry(
        &self,
        index: u64,
        request: Option<&RaftRequest>,
    ) -> Result<(WriteTxn<'_>, RaftResponse), StorageError> {
        let mut txn = WriteTxn::new(&self.store);
        let outcome = match request {
            Some(RaftRequest {
                request: Some(inner),
                auth,
                ..
            }) => self.execute(&mut txn, index, &Caller::of_entry(auth.as_ref()), inner),
            _ => Ok(None),
        };
        match outcome {
            Ok(response) => Ok((
                txn,
                RaftResponse {
                    response,
                    error: String::new(),
                },
            )),
            Err(EtcdError::Internal(message)) => Err(StorageError::Corrupt(message)),
            Err(refused) => Ok((
                WriteTxn::new(&self.store),
                RaftResponse {
                    response: None,
                    error: refused.to_string(),
                },
            )),
        }
    }
}

/// Whether a request reads and changes only keys it names: a put, a single-key delete, a
/// txn of single-key compares and operations, or a request that touches no key (lease grant,
/// lease checkpoints, compaction, which only schedules the removal, alarms). Its cost is then
/// bounded by its size; a txn's by --max-txn-ops.
fn touches_only_named_keys(request: &Request) -> bool {
    match request {
        Request::Put(_)
        | Request::LeaseGrant(_)
        | Request::LeaseCheckpoint(_)
        | Request::Compaction(_)
        | Request::Alarm(_) => true,
        Request::DeleteRange(delete) => delete.range_end.is_empty(),
        Request::Txn(txn) => txn_touches_only_named_keys(txn),
        _ => false,
    }
}

fn txn_touches_only_named_keys(txn: &TxnRequest) -> bool {
    txn.compare
        .iter()
        .all(|compare| compare.range_end.is_empty())
        && txn
            .success
            .iter()
            .chain(&txn.failure)
            .all(|op| match &op.request {
                Some(OpRequest::RequestRange(range)) => range.range_end.is_empty(),
                Some(OpRequest::RequestPut(_)) | None => true,
                Some(OpRequest::RequestDeleteRange(delete)) => delete.range_end.is_empty(),
                Some(OpRequest::RequestTxn(nested)) => txn_touches_only_named_keys(nested),
            })
}

/// etcd's warning and counter for an apply over 100 ms: a slow disk or an overloaded member,
/// which the mixin's dashboards show.
fn note_apply_duration(took: Duration) {
    if took > SLOW_APPLY {
        METRICS.slow_apply.inc();
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            "apply request took too long"
        );
    }
}

impl StateMachineApplier for Applier {
    fn storage(&self) -> &Arc<Storage> {
        self.store.storage()
    }

    fn apply(
        &self,
        index: u64,
        request: Option<&RaftRequest>,
        record: &dyn Fn(&mut WriteBatch),
    ) -> Result<RaftResponse, StorageError> {
        let started = Instant::now();
        let outcome = Applier::apply(self, index, request, record);
        note_apply_duration(started.elapsed());
        outcome
    }

    fn stage(
        &self,
        index: u64,
        request: &RaftRequest,
        record: &dyn Fn(&mut WriteBatch),
    ) -> Result<Option<RaftResponse>, StorageError> {
        let started = Instant::now();
        let outcome = Applier::stage(self, index, request, record);
        note_apply_duration(started.elapsed());
        outcome
    }

    fn commit_staged(&self) -> Result<(), StorageError> {
        Applier::commit_staged(self)
    }

    fn is_bounded(&self, request: &RaftRequest) -> bool {
        request
            .request
            .as_ref()
            .is_some_and(touches_only_named_keys)
    }

    fn reload(&self) -> Result<(), StorageError> {
        Applier::reload(self)
    }

    fn replays_log(&self) -> bool {
        self.auth.replays_log()
    }

    fn replay(&self, index: u64, request: &RaftRequest) {
        if let Some(request) = &request.request {
            self.auth.replay(index, request);
        }
    }
}

impl Applier {
    fn execute(
        &self,
        txn: &mut WriteTxn<'_>,
        index: u64,
        caller: &Caller,
        request: &Request,
    ) -> Result<Option<Response>, EtcdError> {
        // As etcd's applier chain: permissions first, then the quota.
        if let Some(outcome) = self.auth.apply(txn.batch_mut(), index, caller, request) {
            return outcome.map(|result| Some(Response::Auth(result)));
        }
        self.auth.check_entry(caller, request, &|lease| {
            // Keys staged entries attached to the lease must be in RocksDB to be listed.
            self.store.write_staged()?;
            self.lessor.attached_keys(lease)
        })?;
        let capped = self.alarms.is_active(AlarmType::Nospace);
        let response = match request {
            Request::Put(_) if capped => return Err(EtcdError::NoSpace),
            Request::Txn(r) if capped && quota::txn_cost(r) > 0 => return Err(EtcdError::NoSpace),
            Request::Put(r) => Response::Put(apply::put(txn, r)?),
            Request::DeleteRange(r) => Response::DeleteRange(apply::delete_range(txn, r)?),
            Request::Txn(r) => Response::Txn(apply::txn(txn, r)?),
            Request::Compaction(r) => Response::Compaction(apply::compaction(txn, r)?),
            Request::Alarm(r) => Response::Alarm(self.alarm(txn, r)),
            Request::LeaseGrant(_) if capped => return Err(EtcdError::NoSpace),
            Request::LeaseGrant(r) => Response::LeaseGrant(self.lessor.apply_grant(txn, r)?),
            Request::LeaseRevoke(r) => Response::LeaseRevoke(self.lessor.apply_revoke(txn, r)?),
            Request::LeaseCheckpoint(r) => {
                self.lessor.apply_checkpoints(txn.batch_mut(), r);
                Response::LeaseCheckpoint(LeaseCheckpointResponse {
                    header: Some(Default::default()),
                })
            }
            // Applied by the auth store above.
            Request::AuthEnable(_)
            | Request::AuthDisable(_)
            | Request::Authenticate(_)
            | Request::AuthUserAdd(_)
            | Request::AuthUserDelete(_)
            | Request::AuthUserChangePassword(_)
            | Request::AuthUserGrantRole(_)
            | Request::AuthUserRevokeRole(_)
            | Request::AuthRoleAdd(_)
            | Request::AuthRoleDelete(_)
            | Request::AuthRoleGrantPermission(_)
            | Request::AuthRoleRevokePermission(_) => return Ok(None),
        };
        Ok(Some(response))
    }

    fn alarm(&self, txn: &mut WriteTxn<'_>, req: &AlarmRequest) -> AlarmResponse {
        let storage = self.store.storage().clone();
        let alarms = match req.action() {
            AlarmAction::Get => self.alarms.list(req.alarm()),
            AlarmAction::Activate => self
                .alarms
                .activate(txn.batch_mut(), &storage, req.member_id, req.alarm)
                .into_iter()
                .collect(),
            AlarmAction::Deactivate => self
                .alarms
                .deactivate(txn.batch_mut(), &storage, req.member_id, req.alarm)
                .into_iter()
                .collect(),
        };
        if let Some(raised) = alarms
            .first()
            .filter(|_| req.action() == AlarmAction::Activate)
        {
            tracing::warn!(member = %format!("{:x}", raised.member_id), alarm = raised.alarm, "alarm raised");
        }
        AlarmResponse {
            header: Some(Default::default()),
            alarms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{
        Compare, DeleteRangeRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    };

    fn op(request: OpRequest) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    fn single_key_delete() -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: b"a".to_vec().into(),
            ..Default::default()
        }
    }

    fn ranged_delete() -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: b"a".to_vec().into(),
            range_end: b"b".to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_requests_naming_their_keys_count_as_bounded() {
        assert!(touches_only_named_keys(
            &Request::Put(PutRequest::default())
        ));
        assert!(touches_only_named_keys(&Request::DeleteRange(
            single_key_delete()
        )));
        assert!(!touches_only_named_keys(&Request::DeleteRange(
            ranged_delete()
        )));
        assert!(
            !touches_only_named_keys(&Request::LeaseRevoke(LeaseRevokeRequest { id: 7 })),
            "a revoke deletes every key attached to the lease"
        );
    }

    #[test]
    fn a_txn_is_bounded_only_when_every_compare_and_op_names_one_key() {
        let cas = TxnRequest {
            compare: vec![Compare {
                key: b"a".to_vec().into(),
                ..Default::default()
            }],
            success: vec![op(OpRequest::RequestPut(PutRequest::default()))],
            failure: vec![op(OpRequest::RequestRange(RangeRequest {
                key: b"a".to_vec().into(),
                ..Default::default()
            }))],
        };
        assert!(touches_only_named_keys(&Request::Txn(cas.clone())));

        let mut ranged_compare = cas.clone();
        ranged_compare.compare[0].range_end = b"\0".to_vec().into();
        assert!(!touches_only_named_keys(&Request::Txn(ranged_compare)));

        let mut ranged_read = cas.clone();
        ranged_read.failure = vec![op(OpRequest::RequestRange(RangeRequest {
            key: b"a".to_vec().into(),
            range_end: b"\0".to_vec().into(),
            ..Default::default()
        }))];
        assert!(!touches_only_named_keys(&Request::Txn(ranged_read)));

        let nested = |inner: DeleteRangeRequest| TxnRequest {
            success: vec![op(OpRequest::RequestTxn(TxnRequest {
                success: vec![op(OpRequest::RequestDeleteRange(inner))],
                ..Default::default()
            }))],
            ..Default::default()
        };
        assert!(touches_only_named_keys(&Request::Txn(nested(
            single_key_delete()
        ))));
        assert!(
            !touches_only_named_keys(&Request::Txn(nested(ranged_delete()))),
            "a ranged delete inside a nested txn"
        );
    }
}
