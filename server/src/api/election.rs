//! v3electionpb.Election: etcd's election service over the member's recipe
//! (`member::concurrency`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::auth::credentials;
use super::lock::recipe_status;
use crate::member::Member;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

/// Leader changes queued per Observe stream; a slow observer holds the recipe back (it reads
/// the store again), it never grows this.
const OBSERVE_BUFFER: usize = 16;

pub struct ElectionService {
    member: Arc<Member>,
}

impl ElectionService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }
}

/// etcd's `ErrMissingLeaderKey`, sent as `Unknown` like the recipes' errors.
fn missing_leader_key() -> Status {
    Status::unknown(r#""leader" field must be provided"#)
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        // The recipes run as the caller, as etcd's in-process client carries its token.
        let credentials = credentials(&request);
        let req = request.into_inner();
        let won = self
            .member
            .campaign(&credentials, &req.name, req.lease, req.value)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(CampaignResponse {
            header: Some(won.header),
            leader: Some(LeaderKey {
                name: req.name,
                key: won.key,
                rev: won.rev,
                lease: won.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let credentials = credentials(&request);
        let req = request.into_inner();
        let leader = req.leader.ok_or_else(missing_leader_key)?;
        let header = self
            .member
            .proclaim(
                &credentials,
                leader.key,
                leader.rev,
                leader.lease,
                req.value,
            )
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let (header, kv) = self
            .member
            .election_leader(&credentials(&request), &request.get_ref().name)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        }))
    }

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let credentials = credentials(&request);
        let name = request.into_inner().name;
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        let member = self.member.clone();
        tokio::spawn(async move { member.observe(&credentials, &name, tx).await });
        let stream = ReceiverStream::new(rx).map(|(header, kv)| {
            Ok(LeaderResponse {
                header: Some(header),
                kv: Some(kv),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let credentials = credentials(&request);
        let leader = request.into_inner().leader.ok_or_else(missing_leader_key)?;
        let header = self
            .member
            .resign(&credentials, leader.key, leader.rev)
            .await
            .map_err(recipe_status)?;
        Ok(Response::new(ResignResponse {
            header: Some(header),
        }))
    }
}
