//! etcdserverpb.Maintenance: Status now; the rest as their issues land.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::member::Member;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, StatusRequest,
    StatusResponse,
};

pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.member.status().await?))
    }

    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No alarm is ever raised yet: every GET answers an empty list, as a healthy etcd does.
        Ok(Response::new(AlarmResponse {
            header: Some(self.member.header(self.member.store().current_revision())),
            alarms: Vec::new(),
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.member.defragment().await?;
        Ok(Response::new(DefragmentResponse {
            header: Some(self.member.header(self.member.store().current_revision())),
        }))
    }
}
