//! etcdserverpb.Maintenance.
//!
//! With auth enabled, Defragment, Hash, HashKV and Snapshot are for the root role only, and
//! etcd 3.4 answers a refusal there with its auth package's own text and code Unknown
//! (`auth: permission denied`), not with its gRPC errors.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::caller;
use crate::member::Member;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::snapshot::stream::Chunk;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }

    /// etcd's `authMaintenanceServer.isAuthenticated`.
    async fn check_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let credentials = super::auth::credentials(request);
        let checked = match self.member.caller(&credentials).await {
            Ok(caller) => self.member.auth().check_admin(&caller),
            Err(e) => Err(e),
        };
        Ok(checked.map_err(|e| e.untranslated())?)
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.member.status().await?))
    }

    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        // etcd checks no permission for alarms, but refuses a bad token on them.
        caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member.alarm(request.into_inner()).await?,
        ))
    }

    /// etcd 3.5's Downgrade: admin only (with etcd's gRPC errors, not the auth package's
    /// text), and always refused (see api/downgrade.rs).
    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        let credentials = super::auth::credentials(&request);
        let caller = self.member.caller(&credentials).await?;
        self.member.auth().check_admin(&caller)?;
        let asked = super::downgrade::check(request.get_ref().action, &request.get_ref().version)?;
        self.member.raft().read_index().await?;
        Err(super::downgrade::refusal(asked).into())
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.check_admin(&request).await?;
        self.member.defragment().await?;
        // etcd (3.4 to 3.6) answers Defragment with no header at all.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.check_admin(&request).await?;
        Ok(Response::new(
            self.member.hash_kv(request.get_ref().revision).await?,
        ))
    }

    /// etcd's Hash: a CRC-32C of the whole backend (here: of the state machine in etcd's
    /// format, see `Member::backend_hash`), with the revision it was taken at.
    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.check_admin(&request).await?;
        let (hash, revision) = self.member.backend_hash().await?;
        Ok(Response::new(HashResponse {
            header: Some(self.member.header(revision)),
            hash,
        }))
    }

    /// etcd's MoveLeader: only the leader moves its leadership, to a voting member.
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.member
            .raft()
            .move_leader(request.get_ref().target_id)
            .await?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.member.header(self.member.store().current_revision())),
        }))
    }

    /// etcd's backend file at one revision, in 32 KiB chunks, then its SHA-256.
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.check_admin(&request).await?;
        let member = self.member.clone();
        let chunks = ReceiverStream::new(self.member.snapshot()).map(move |chunk| {
            let header = Some(member.header(member.store().current_revision()));
            match chunk {
                Ok(Chunk::Data {
                    blob, remaining, ..
                }) => Ok(SnapshotResponse {
                    header,
                    // etcd counts the trailer as still to come.
                    remaining_bytes: remaining + crate::snapshot::TRAILER_LEN,
                    blob: blob.into(),
                    version: String::new(),
                }),
                Ok(Chunk::Trailer(sum)) => Ok(SnapshotResponse {
                    header,
                    remaining_bytes: 0,
                    blob: sum.to_vec().into(),
                    version: String::new(),
                }),
                Err(e) => Err(Status::from(crate::error::EtcdError::from(e))),
            }
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}
