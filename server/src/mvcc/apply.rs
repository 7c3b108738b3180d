//! etcd's KV operations applied inside one entry: Put, DeleteRange, Txn and Compaction.
//!
//! Validation that depends only on the request (empty key, duplicate keys, op counts) happens
//! before proposing; what depends on the state (leases, ignore_* on a missing key, revisions in
//! txn ranges) is checked here, for the whole chosen path of a txn before anything is written.

use std::cmp::Ordering;

use bytes::Bytes;

use super::read::{execute_range, KeyRange, KvSource};
use super::write::WriteTxn;
use crate::error::{EtcdError, EtcdResult};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// A plain Put (outside a txn).
pub fn put(txn: &mut WriteTxn<'_>, req: &PutRequest) -> EtcdResult<PutResponse> {
    if req.lease != 0 && !txn.store().lease_exists(req.lease)? {
        return Err(EtcdError::LeaseNotFound);
    }
    execute_put(txn, req)
}

fn execute_put(txn: &mut WriteTxn<'_>, req: &PutRequest) -> EtcdResult<PutResponse> {
    let existing = txn.latest(&req.key)?;
    if (req.ignore_value || req.ignore_lease) && existing.is_none() {
        return Err(EtcdError::KeyNotFound);
    }
    let value = match (&existing, req.ignore_value) {
        (Some(prev), true) => prev.value.clone(),
        _ => req.value.clone(),
    };
    let lease = match (&existing, req.ignore_lease) {
        (Some(prev), true) => prev.lease,
        _ => req.lease,
    };
    let prev = txn.put(req.key.clone(), value, lease, existing);
    Ok(PutResponse {
        header: header(txn.revision()),
        prev_kv: if req.prev_kv { prev } else { None },
    })
}

pub fn delete_range(
    txn: &mut WriteTxn<'_>,
    req: &DeleteRangeRequest,
) -> EtcdResult<DeleteRangeResponse> {
    let deleted = txn.delete_range(&KeyRange::new(&req.key, &req.range_end))?;
    Ok(DeleteRangeResponse {
        header: header(txn.revision()),
        deleted: deleted.len() as i64,
        prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
    })
}

pub fn compaction(
    txn: &mut WriteTxn<'_>,
    req: &CompactionRequest,
) -> EtcdResult<CompactionResponse> {
    txn.schedule_compaction(req.revision)?;
    Ok(CompactionResponse {
        header: header(txn.revision()),
    })
}

/// Which branch each txn (and each nested txn on the chosen path) takes, decided against the
/// state before the txn writes anything, as etcd does.
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

pub fn txn(txn: &mut WriteTxn<'_>, req: &TxnRequest) -> EtcdResult<TxnResponse> {
    let path = decide_path(txn, req)?;
    check_path(txn, req, &path)?;
    execute_txn(txn, req, &path)
}

fn chosen_ops<'r>(req: &'r TxnRequest, path: &TxnPath) -> &'r [RequestOp] {
    if path.succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn decide_path(txn: &mut WriteTxn<'_>, req: &TxnRequest) -> EtcdResult<TxnPath> {
    let mut succeeded = true;
    for cmp in &req.compare {
        if !compare_holds(txn, cmp)? {
            succeeded = false;
            break;
        }
    }
    let mut path = TxnPath {
        succeeded,
        nested: Vec::new(),
    };
    for op in chosen_ops(req, &path).iter() {
        if let Some(Request::RequestTxn(inner)) = &op.request {
            path.nested.push(decide_path(txn, inner)?);
        }
    }
    Ok(path)
}

fn check_path(txn: &mut WriteTxn<'_>, req: &TxnRequest, path: &TxnPath) -> EtcdResult<()> {
    let mut nested = path.nested.iter();
    for op in chosen_ops(req, path) {
        match &op.request {
            Some(Request::RequestPut(put)) => check_put_in_txn(txn, put)?,
            Some(Request::RequestRange(range)) => check_range_in_txn(txn, range.revision)?,
            Some(Request::RequestTxn(inner)) => {
                let inner_path = nested
                    .next()
                    .ok_or_else(|| EtcdError::Internal("txn path mismatch".into()))?;
                check_path(txn, inner, inner_path)?;
            }
            Some(Request::RequestDeleteRange(_)) | None => {}
        }
    }
    Ok(())
}

fn check_put_in_txn(txn: &WriteTxn<'_>, req: &PutRequest) -> EtcdResult<()> {
    if (req.ignore_value || req.ignore_lease) && txn.latest(&req.key)?.is_none() {
        return Err(EtcdError::KeyNotFound);
    }
    if req.lease != 0 && !txn.store().lease_exists(req.lease)? {
        return Err(EtcdError::LeaseNotFound);
    }
    Ok(())
}

fn check_range_in_txn(txn: &WriteTxn<'_>, revision: i64) -> EtcdResult<()> {
    if revision == 0 {
        return Ok(());
    }
    if revision > txn.begin_revision() {
        return Err(EtcdError::FutureRevision);
    }
    if revision < txn.store().compacted_revision() {
        return Err(EtcdError::Compacted);
    }
    Ok(())
}

fn execute_txn(
    txn: &mut WriteTxn<'_>,
    req: &TxnRequest,
    path: &TxnPath,
) -> EtcdResult<TxnResponse> {
    let mut nested = path.nested.iter();
    let mut responses = Vec::new();
    for op in chosen_ops(req, path) {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => Response::ResponseRange(execute_range(txn, r)?),
            Some(Request::RequestPut(p)) => Response::ResponsePut(execute_put(txn, p)?),
            Some(Request::RequestDeleteRange(d)) => {
                Response::ResponseDeleteRange(delete_range(txn, d)?)
            }
            Some(Request::RequestTxn(inner)) => {
                let inner_path = nested
                    .next()
                    .ok_or_else(|| EtcdError::Internal("txn path mismatch".into()))?;
                Response::ResponseTxn(execute_txn(txn, inner, inner_path)?)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: header(txn.revision()),
        succeeded: path.succeeded,
        responses,
    })
}

/// A compare holds when every key in its range satisfies it; a missing key compares as zero
/// for revisions, versions and leases, and fails a value compare.
fn compare_holds(txn: &mut WriteTxn<'_>, cmp: &Compare) -> EtcdResult<bool> {
    let range = KeyRange::new(&cmp.key, &cmp.range_end);
    let at = txn.begin_revision();
    let mut holds = true;
    let mut seen_any = false;
    txn.visit(&range, at, &mut |v| {
        seen_any = true;
        holds = compare_key_value(cmp, &v.to_key_value()?);
        Ok(holds)
    })?;
    if !seen_any {
        if cmp.target() == CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_key_value(cmp, &KeyValue::default()));
    }
    Ok(holds)
}

fn compare_key_value(cmp: &Compare, kv: &KeyValue) -> bool {
    let target = CompareTarget::try_from(cmp.target);
    let ordering = match (target, &cmp.target_union) {
        (Ok(CompareTarget::Value), union) => {
            let wanted = match union {
                Some(TargetUnion::Value(v)) => v.clone(),
                _ => Bytes::new(),
            };
            kv.value.as_ref().cmp(wanted.as_ref())
        }
        (Ok(CompareTarget::Version), union) => kv.version.cmp(&int_target(union, |u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        (Ok(CompareTarget::Create), union) => {
            kv.create_revision.cmp(&int_target(union, |u| match u {
                TargetUnion::CreateRevision(v) => Some(*v),
                _ => None,
            }))
        }
        (Ok(CompareTarget::Mod), union) => kv.mod_revision.cmp(&int_target(union, |u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        (Ok(CompareTarget::Lease), union) => kv.lease.cmp(&int_target(union, |u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        (Err(_), _) => Ordering::Equal,
    };
    match CompareResult::try_from(cmp.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => true,
    }
}

/// The integer a compare names for its target; a union of another kind counts as zero.
fn int_target(union: &Option<TargetUnion>, pick: impl Fn(&TargetUnion) -> Option<i64>) -> i64 {
    union.as_ref().and_then(pick).unwrap_or(0)
}
