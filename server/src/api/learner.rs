//! What a learner serves: etcd 3.4 lets a learner answer Status and serializable Range only
//! (the Range handler checks the serializable flag); every other RPC, streams included, gets
//! `etcdserver: rpc not supported for learner`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::EtcdError;
use crate::member::Member;

const ALLOWED_FOR_LEARNER: [&str; 2] =
    ["/etcdserverpb.Maintenance/Status", "/etcdserverpb.KV/Range"];

pub async fn refuse_for_learner(
    State(member): State<Arc<Member>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if allowed_for_learner(path) || !member.raft().is_learner() {
        return next.run(request).await;
    }
    tonic::Status::from(EtcdError::NotSupportedForLearner)
        .into_http::<axum::body::Body>()
        .into_response()
}

/// Whether a learner serves this gRPC method (`/package.Service/Method`).
pub fn allowed_for_learner(path: &str) -> bool {
    ALLOWED_FOR_LEARNER.contains(&path)
}
