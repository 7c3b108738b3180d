//! The client listener's front door. A gRPC call goes straight to its service: the learner's
//! refusal, the gRPC metrics and etcd's message-limit wording are applied on the way, in one
//! boxed future. Everything else goes to the HTTP router (`/metrics`, `/health`, the JSON
//! gateway, and the fallback that answers unknown gRPC services `Unimplemented`).
//!
//! Before, the same steps were an axum router holding tonic's router behind three layers, and
//! each level boxed and moved its own future: ~6% of a put's CPU went to that nesting
//! (bench/results/perf-push-2.md, step 14).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::server::NamedService;
use tower::Service;

use super::auth::AuthService;
use super::cluster::ClusterService;
use super::election::ElectionService;
use super::health::{self, MemberHealth};
use super::kv::KvService;
use super::lease::LeaseService;
use super::lock::LockService;
use super::maintenance::MaintenanceService;
use super::watch::WatchService;
use super::watch_reply::{WatchMethod, WatchReply};
use super::{learner, message_limit, message_sizes, Services};
use crate::member::Member;
use crate::metrics::grpc::GrpcCall;
use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::etcdserverpb::WatchRequest;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use tonic_health::pb::health_server::HealthServer;
use tonic_prost::ProstCodec;

/// The tonic server of every gRPC service the client URLs serve.
struct GrpcServers {
    kv: KvServer<KvService>,
    /// The Watch method itself, served with shared, once-encoded events ([`WatchMethod`]).
    watch_method: WatchStreams,
    /// The rest of the Watch service: tonic's answer to methods it does not have.
    watch: WatchServer<WatchService>,
    lease: LeaseServer<LeaseService>,
    cluster: ClusterServer<ClusterService>,
    maintenance: MaintenanceServer<MaintenanceService>,
    auth: AuthServer<AuthService>,
    lock: LockServer<LockService>,
    election: ElectionServer<ElectionService>,
    health: HealthServer<MemberHealth>,
}

impl GrpcServers {
    fn new(services: &Services) -> Self {
        let (max_recv, max_send) = message_sizes(&services.member);
        macro_rules! sized {
            ($server:expr) => {
                $server
                    .max_decoding_message_size(max_recv)
                    .max_encoding_message_size(max_send)
            };
        }
        Self {
            kv: sized!(KvServer::from_arc(services.kv.clone())),
            watch_method: WatchStreams {
                service: services.watch.clone(),
                max_recv,
                max_send,
            },
            watch: sized!(WatchServer::from_arc(services.watch.clone())),
            lease: sized!(LeaseServer::from_arc(services.lease.clone())),
            cluster: sized!(ClusterServer::from_arc(services.cluster.clone())),
            maintenance: sized!(MaintenanceServer::from_arc(services.maintenance.clone())),
            auth: sized!(AuthServer::from_arc(services.auth.clone())),
            lock: sized!(LockServer::from_arc(services.lock.clone())),
            election: sized!(ElectionServer::from_arc(services.election.clone())),
            health: health::service(&services.member),
        }
    }

    /// Starts `request` on `service`.
    fn call(
        &self,
        service: GrpcService,
        request: Request<Body>,
    ) -> tonic::codegen::BoxFuture<Response<tonic::body::Body>, Infallible> {
        match service {
            GrpcService::Kv => self.kv.clone().call(request),
            GrpcService::Watch if request.uri().path() == WATCH_METHOD_PATH => {
                self.watch_method.call(request)
            }
            GrpcService::Watch => self.watch.clone().call(request),
            GrpcService::Lease => self.lease.clone().call(request),
            GrpcService::Cluster => self.cluster.clone().call(request),
            GrpcService::Maintenance => self.maintenance.clone().call(request),
            GrpcService::Auth => self.auth.clone().call(request),
            GrpcService::Lock => self.lock.clone().call(request),
            GrpcService::Election => self.election.clone().call(request),
            GrpcService::Health => self.health.clone().call(request),
        }
    }
}

const WATCH_METHOD_PATH: &str = "/etcdserverpb.Watch/Watch";

/// `etcdserverpb.Watch/Watch` as tonic's generated server would serve it (same codec, same
/// message limits; no compression, like every other service here), with [`WatchReply`] as the
/// response type.
struct WatchStreams {
    service: Arc<WatchService>,
    max_recv: usize,
    max_send: usize,
}

impl WatchStreams {
    fn call(
        &self,
        request: Request<Body>,
    ) -> tonic::codegen::BoxFuture<Response<tonic::body::Body>, Infallible> {
        let method = WatchMethod(self.service.clone());
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<WatchReply, WatchRequest>::default())
            .apply_max_message_size_config(Some(self.max_recv), Some(self.max_send));
        Box::pin(async move { Ok(grpc.streaming(method, request).await) })
    }
}

/// The gRPC services of the client URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrpcService {
    Kv,
    Watch,
    Lease,
    Cluster,
    Maintenance,
    Auth,
    Lock,
    Election,
    Health,
}

impl GrpcService {
    const ALL: [(&'static str, GrpcService); 9] = [
        (<KvServer<KvService> as NamedService>::NAME, GrpcService::Kv),
        (
            <WatchServer<WatchService> as NamedService>::NAME,
            GrpcService::Watch,
        ),
        (
            <LeaseServer<LeaseService> as NamedService>::NAME,
            GrpcService::Lease,
        ),
        (
            <ClusterServer<ClusterService> as NamedService>::NAME,
            GrpcService::Cluster,
        ),
        (
            <MaintenanceServer<MaintenanceService> as NamedService>::NAME,
            GrpcService::Maintenance,
        ),
        (
            <AuthServer<AuthService> as NamedService>::NAME,
            GrpcService::Auth,
        ),
        (
            <LockServer<LockService> as NamedService>::NAME,
            GrpcService::Lock,
        ),
        (
            <ElectionServer<ElectionService> as NamedService>::NAME,
            GrpcService::Election,
        ),
        (
            <HealthServer<MemberHealth> as NamedService>::NAME,
            GrpcService::Health,
        ),
    ];

    /// The service a gRPC path (`/etcdserverpb.KV/Put`) names, if the client URLs serve it.
    fn of_path(path: &str) -> Option<Self> {
        let (name, _method) = path.strip_prefix('/')?.split_once('/')?;
        Self::ALL
            .iter()
            .find(|(served, _)| *served == name)
            .map(|(_, service)| *service)
    }
}

/// What the client URLs serve: etcd's gRPC services and the HTTP endpoints, on one port.
#[derive(Clone)]
pub struct ClientService {
    grpc: Arc<GrpcServers>,
    member: Arc<Member>,
    http: axum::Router,
}

impl ClientService {
    pub fn new(services: &Services, http: axum::Router) -> Self {
        Self {
            grpc: Arc::new(GrpcServers::new(services)),
            member: services.member.clone(),
            http,
        }
    }

    fn call_grpc(&self, service: GrpcService, request: Request<Body>) -> ResponseFuture {
        let (call, request) = GrpcCall::start(request);
        if let Some(refusal) = learner::refusal(&self.member, request.uri().path()) {
            return Box::pin(async move { Ok(answered(call, refusal)) });
        }
        let answer = self.grpc.call(service, request);
        Box::pin(async move {
            let mut response = answer.await?.map(Body::new);
            message_limit::rewrite(&mut response);
            Ok(answered(call, response))
        })
    }
}

type ResponseFuture = BoxFuture<'static, Result<Response<Body>, Infallible>>;

fn answered(call: Option<GrpcCall>, response: Response<Body>) -> Response<Body> {
    match call {
        Some(call) => call.answered(response),
        None => response,
    }
}

impl Service<Request<Body>> for ClientService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match GrpcService::of_path(request.uri().path()) {
            Some(service) => self.call_grpc(service, request),
            None => Box::pin(self.http.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_name_their_service() {
        assert_eq!(
            GrpcService::of_path("/etcdserverpb.KV/Put"),
            Some(GrpcService::Kv)
        );
        assert_eq!(
            GrpcService::of_path("/etcdserverpb.KV/NoSuchMethod"),
            Some(GrpcService::Kv)
        );
        assert_eq!(
            GrpcService::of_path("/grpc.health.v1.Health/Check"),
            Some(GrpcService::Health)
        );
        assert_eq!(
            GrpcService::of_path("/v3electionpb.Election/Campaign"),
            Some(GrpcService::Election)
        );
        assert_eq!(
            GrpcService::of_path("/v3lockpb.Lock/Lock"),
            Some(GrpcService::Lock)
        );
        assert_eq!(GrpcService::of_path("/etcdserverpb.Nothing/Put"), None);
        assert_eq!(GrpcService::of_path("/metrics"), None);
        assert_eq!(GrpcService::of_path("/v3/kv/range"), None);
        assert_eq!(GrpcService::of_path(""), None);
    }
}
