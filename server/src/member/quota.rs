//! The backend quota: what a request is expected to add to the store, in etcd's terms.

use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest};

/// etcd's estimate of a key's bookkeeping overhead.
const KV_OVERHEAD: usize = 256;

pub fn put_cost(req: &PutRequest) -> usize {
    KV_OVERHEAD + req.key.len() + req.value.len()
}

fn op_cost(op: &RequestOp) -> usize {
    match &op.request {
        Some(Request::RequestPut(p)) => put_cost(p),
        _ => 0,
    }
}

/// The larger branch's puts (nested txns are not counted, as in etcd).
pub fn txn_cost(req: &TxnRequest) -> usize {
    let success: usize = req.success.iter().map(op_cost).sum();
    let failure: usize = req.failure.iter().map(op_cost).sum();
    success.max(failure)
}
