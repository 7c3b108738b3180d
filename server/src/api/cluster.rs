//! etcdserverpb.Cluster: the member list and membership changes, taken by any member.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::caller;
use crate::member::Member;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};

pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }

    /// Membership changes need the root role while auth is enabled (etcd checks it before
    /// proposing them).
    async fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = caller(&self.member, request).await?;
        Ok(self.member.auth().check_admin(&caller)?)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.check_admin(&request).await?;
        let req = request.into_inner();
        Ok(Response::new(
            self.member
                .member_add(req.peer_ur_ls, req.is_learner)
                .await?,
        ))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.check_admin(&request).await?;
        Ok(Response::new(
            self.member.member_remove(request.get_ref().id).await?,
        ))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.check_admin(&request).await?;
        let req = request.into_inner();
        Ok(Response::new(
            self.member.member_update(req.id, req.peer_ur_ls).await?,
        ))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.member.raft().read_index().await?;
        }
        Ok(Response::new(self.member.member_list()))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.check_admin(&request).await?;
        Ok(Response::new(
            self.member.member_promote(request.get_ref().id).await?,
        ))
    }
}
