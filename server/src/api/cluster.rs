//! etcdserverpb.Cluster: MemberList now; membership changes with multi-member clusters.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::member::Member;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{MemberListRequest, MemberListResponse};

pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.member.raft().read_index().await?;
        }
        Ok(Response::new(self.member.member_list()))
    }
}
