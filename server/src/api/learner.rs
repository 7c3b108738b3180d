//! What a learner serves: etcd 3.4 lets a learner answer Status and serializable Range only
//! (the Range handler checks the serializable flag); every other RPC, streams included, gets
//! `etcdserver: rpc not supported for learner`.

use axum::response::{IntoResponse, Response};

use crate::error::EtcdError;
use crate::member::Member;

const ALLOWED_FOR_LEARNER: [&str; 2] =
    ["/etcdserverpb.Maintenance/Status", "/etcdserverpb.KV/Range"];

/// etcd's refusal of `path` while this member is a learner, or `None` when it may be served.
pub fn refusal(member: &Member, path: &str) -> Option<Response> {
    if allowed_for_learner(path) || !member.raft().is_learner() {
        return None;
    }
    Some(
        tonic::Status::from(EtcdError::NotSupportedForLearner)
            .into_http::<axum::body::Body>()
            .into_response(),
    )
}

/// Whether a learner serves this gRPC method (`/package.Service/Method`).
pub fn allowed_for_learner(path: &str) -> bool {
    ALLOWED_FOR_LEARNER.contains(&path)
}
