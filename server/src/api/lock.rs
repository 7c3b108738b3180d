//! v3lockpb.Lock: etcd's lock service over the member's recipe (`member::concurrency`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::credentials;
use crate::member::concurrency::RecipeError;
use crate::member::Member;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

pub struct LockService {
    member: Arc<Member>,
}

impl LockService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }
}

/// etcd's lock and election servers call the store through an in-process client that turns
/// every error, store errors included, into a plain Go error: clients see `Unknown` and the
/// text (`etcdserver: requested lease not found`, `election: not leader`, ...).
pub fn recipe_status(error: RecipeError) -> Status {
    Status::unknown(error.to_string())
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        // The recipe runs as the caller, as etcd's in-process client carries its token.
        let credentials = credentials(&request);
        let req = request.into_inner();
        let (header, key) = self
            .member
            .lock(&credentials, &req.name, req.lease)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(LockResponse {
            header: Some(header),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let credentials = credentials(&request);
        let header = self
            .member
            .unlock(&credentials, request.into_inner().key)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(UnlockResponse {
            header: Some(header),
        }))
    }
}
