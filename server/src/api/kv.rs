//! etcdserverpb.KV: validate, call the member, convert errors.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{caller, credentials};
use super::validate;
use crate::member::Member;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

pub struct KvService {
    member: Arc<Member>,
}

impl KvService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        validate::check_range(request.get_ref())?;
        let credentials = credentials(&request);
        Ok(Response::new(
            self.member
                .range(Some(&credentials), request.into_inner())
                .await?,
        ))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        validate::check_put(request.get_ref())?;
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member.put(&caller, request.into_inner()).await?,
        ))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        validate::check_delete_range(request.get_ref())?;
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .delete_range(&caller, request.into_inner())
                .await?,
        ))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        validate::check_txn(request.get_ref(), self.member.limits().max_txn_ops)?;
        let credentials = credentials(&request);
        Ok(Response::new(
            self.member.txn(&credentials, request.into_inner()).await?,
        ))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd checks no permission for a compaction, but refuses a bad token on it.
        caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member.compact(request.into_inner()).await?,
        ))
    }
}
