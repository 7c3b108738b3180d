//! Request checks etcd makes before proposing anything, with etcd's errors.

use std::collections::HashSet;

use bytes::Bytes;

use crate::error::{EtcdError, EtcdResult};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

pub fn check_range(req: &RangeRequest) -> EtcdResult<()> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(req: &PutRequest) -> EtcdResult<()> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete_range(req: &DeleteRangeRequest) -> EtcdResult<()> {
    if req.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// Op counts, keys, and (after those, to avoid quadratic work on huge requests) overlaps.
pub fn check_txn(req: &TxnRequest, max_txn_ops: usize) -> EtcdResult<()> {
    check_txn_shape(req, max_txn_ops as i64)?;
    check_overlaps(&req.success)?;
    check_overlaps(&req.failure)?;
    Ok(())
}

fn check_txn_shape(req: &TxnRequest, max_txn_ops: i64) -> EtcdResult<()> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len()) as i64;
    if ops > max_txn_ops {
        return Err(EtcdError::TooManyTxnOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        check_op(op, max_txn_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_txn_ops: i64) -> EtcdResult<()> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(p)) => check_put(p),
        Some(Request::RequestDeleteRange(d)) => check_delete_range(d),
        Some(Request::RequestTxn(t)) => check_txn_shape(t, max_txn_ops),
        // etcd answers an empty op this way.
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A half-open key interval where an empty end means "no end", as etcd's interval checks
/// treat it. A range_end of "\0" is taken literally there, so it never overlaps anything.
#[derive(Debug, Clone)]
struct Interval {
    begin: Bytes,
    end: Bytes,
}

/// Compares with "" greater than every other string.
fn affine_less(a: &[u8], b: &[u8]) -> bool {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => false,
        (false, true) => true,
        (false, false) => a < b,
    }
}

impl Interval {
    fn point(key: &Bytes) -> Self {
        let mut end = key.to_vec();
        end.push(0);
        Self {
            begin: key.clone(),
            end: Bytes::from(end),
        }
    }

    fn of_delete(req: &DeleteRangeRequest) -> Self {
        if req.range_end.is_empty() {
            Self::point(&req.key)
        } else {
            Self {
                begin: req.key.clone(),
                end: req.range_end.clone(),
            }
        }
    }

    fn contains_point(&self, key: &[u8]) -> bool {
        !affine_less(key, &self.begin) && affine_less(key, &self.end)
    }
}

struct Writes {
    puts: HashSet<Bytes>,
    deletes: Vec<Interval>,
}

impl Writes {
    fn deletes_hit(&self, key: &[u8]) -> bool {
        self.deletes.iter().any(|d| d.contains_point(key))
    }
}

/// etcd's rule: within one txn path a key may be put once, and not put where it is deleted.
fn check_overlaps(ops: &[RequestOp]) -> EtcdResult<Writes> {
    let mut writes = Writes {
        puts: HashSet::new(),
        deletes: ops
            .iter()
            .filter_map(|op| match &op.request {
                Some(Request::RequestDeleteRange(d)) => Some(Interval::of_delete(d)),
                _ => None,
            })
            .collect(),
    };
    for op in ops {
        let Some(Request::RequestTxn(inner)) = &op.request else {
            continue;
        };
        let then_writes = check_overlaps(&inner.success)?;
        let else_writes = check_overlaps(&inner.failure)?;
        for key in &then_writes.puts {
            if writes.puts.contains(key) || writes.deletes_hit(key) {
                return Err(EtcdError::DuplicateKey);
            }
            writes.puts.insert(key.clone());
        }
        for key in &else_writes.puts {
            // A key put by both branches of one txn is fine: only one branch runs.
            let clashes = writes.puts.contains(key) && !then_writes.puts.contains(key);
            if clashes || writes.deletes_hit(key) {
                return Err(EtcdError::DuplicateKey);
            }
            writes.puts.insert(key.clone());
        }
        writes.deletes.extend(then_writes.deletes);
        writes.deletes.extend(else_writes.deletes);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if writes.puts.contains(&put.key) || writes.deletes_hit(&put.key) {
            return Err(EtcdError::DuplicateKey);
        }
        writes.puts.insert(put.key.clone());
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::request_op::Request;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                range_end: Bytes::copy_from_slice(end.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_are_refused() {
        let req = txn(vec![put("a"), put("a")], vec![]);
        assert_eq!(check_txn(&req, 128), Err(EtcdError::DuplicateKey));
    }

    #[test]
    fn put_inside_deleted_range_is_refused() {
        let req = txn(vec![delete("a", "c"), put("b")], vec![]);
        assert_eq!(check_txn(&req, 128), Err(EtcdError::DuplicateKey));
        let ok = txn(vec![delete("a", "c"), put("c")], vec![]);
        assert_eq!(check_txn(&ok, 128), Ok(()));
    }

    #[test]
    fn from_key_delete_is_taken_literally_as_etcd_does() {
        let req = txn(vec![delete("a", "\0"), put("b")], vec![]);
        assert_eq!(check_txn(&req, 128), Ok(()));
    }

    #[test]
    fn nested_branches_may_put_the_same_key() {
        let nested = RequestOp {
            request: Some(Request::RequestTxn(txn(vec![put("k")], vec![put("k")]))),
        };
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        let clash = txn(vec![nested, put("k")], vec![]);
        assert_eq!(check_txn(&clash, 128), Err(EtcdError::DuplicateKey));
    }

    #[test]
    fn too_many_ops_and_empty_ops() {
        let req = txn(vec![put("a"), put("b"), put("c")], vec![]);
        assert_eq!(check_txn(&req, 2), Err(EtcdError::TooManyTxnOps));
        let empty = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&empty, 2), Err(EtcdError::KeyNotFound));
    }
}
