//! The gRPC services of the etcd v3 API.
//!
//! Thin by design: each handler validates the request as etcd does, calls the member and maps
//! errors through `status`. Services a later piece of work implements answer `Unimplemented`.

pub mod auth;
pub mod cluster;
pub mod downgrade;
pub mod election;
pub mod health;
pub mod kv;
pub mod learner;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod message_limit;
pub mod status;
pub mod validate;
pub mod watch;

use std::sync::Arc;

use tonic::service::Routes;

use crate::member::Member;
use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use auth::AuthService;
use cluster::ClusterService;
use election::ElectionService;
use kv::KvService;
use lease::LeaseService;
use lock::LockService;
use maintenance::MaintenanceService;
use watch::WatchService;

/// etcd lets gRPC messages exceed --max-request-bytes by this much, for framing and metadata.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// One instance of every etcd service, shared by the gRPC routes and the JSON gateway, which
/// calls the same methods in-process (validation, errors and auth are the services' own).
#[derive(Clone)]
pub struct Services {
    pub member: Arc<Member>,
    pub kv: Arc<KvService>,
    pub watch: Arc<WatchService>,
    pub lease: Arc<LeaseService>,
    pub cluster: Arc<ClusterService>,
    pub maintenance: Arc<MaintenanceService>,
    pub auth: Arc<AuthService>,
    pub lock: Arc<LockService>,
    pub election: Arc<ElectionService>,
}

impl Services {
    pub fn new(member: Arc<Member>) -> Self {
        Self {
            kv: Arc::new(KvService::new(member.clone())),
            watch: Arc::new(WatchService::new(member.clone())),
            lease: Arc::new(LeaseService::new(member.clone())),
            cluster: Arc::new(ClusterService::new(member.clone())),
            maintenance: Arc::new(MaintenanceService::new(member.clone())),
            auth: Arc::new(AuthService::new(member.clone())),
            lock: Arc::new(LockService::new(member.clone())),
            election: Arc::new(ElectionService::new(member.clone())),
            member,
        }
    }
}

/// Every etcd gRPC service and grpc.health.v1, sized as etcd sizes its messages.
pub fn routes(services: &Services) -> Routes {
    let max_recv = services.member.limits().max_request_bytes + GRPC_OVERHEAD_BYTES;
    // etcd does not cap what it sends (math.MaxInt32); neither do we.
    let max_send = i32::MAX as usize;
    macro_rules! sized {
        ($server:expr) => {
            $server
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(max_send)
        };
    }
    Routes::new(sized!(KvServer::from_arc(services.kv.clone())))
        .add_service(sized!(WatchServer::from_arc(services.watch.clone())))
        .add_service(sized!(LeaseServer::from_arc(services.lease.clone())))
        .add_service(sized!(ClusterServer::from_arc(services.cluster.clone())))
        .add_service(sized!(MaintenanceServer::from_arc(
            services.maintenance.clone()
        )))
        .add_service(sized!(AuthServer::from_arc(services.auth.clone())))
        .add_service(sized!(LockServer::from_arc(services.lock.clone())))
        .add_service(sized!(ElectionServer::from_arc(services.election.clone())))
        .add_service(health::service(&services.member))
}
