//! grpc.health.v1.Health on the client URLs (load balancers and Kubernetes gRPC probes): the
//! overall service `""` is SERVING while the member has a leader and no alarm is raised.
//! Check looks at the member when asked; Watch sends the status, then every change.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::member::Member;

/// How often a Watch looks at the member; a watcher sees a change within this.
const WATCH_REFRESH: Duration = Duration::from_millis(100);
/// Updates queued per Watch stream (only changes are sent, so one is plenty).
const WATCH_BUFFER: usize = 4;

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

pub fn service(member: &Arc<Member>) -> HealthServer<MemberHealth> {
    HealthServer::new(MemberHealth {
        member: Arc::downgrade(member),
    })
}

pub struct MemberHealth {
    member: Weak<Member>,
}

/// etcd registers its health under the empty name only.
fn status_of(member: &Weak<Member>, service: &str) -> ServingStatus {
    if !service.is_empty() {
        return ServingStatus::ServiceUnknown;
    }
    match member.upgrade() {
        Some(member)
            if member.raft_status().leader.is_some() && member.active_alarms().is_empty() =>
        {
            ServingStatus::Serving
        }
        _ => ServingStatus::NotServing,
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for MemberHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match status_of(&self.member, &request.get_ref().service) {
            // grpc-go's answer for a name it does not know.
            ServingStatus::ServiceUnknown => Err(Status::not_found("unknown service")),
            status => Ok(Response::new(response(status))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let member = self.member.clone();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_REFRESH);
            let mut last = None;
            // Ends when the watcher goes away or the member stops.
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = tx.closed() => return,
                }
                if member.strong_count() == 0 {
                    return;
                }
                let status = status_of(&member, &service);
                if last != Some(status) {
                    last = Some(status);
                    if tx.send(Ok(response(status))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
