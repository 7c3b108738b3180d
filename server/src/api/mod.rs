//! The gRPC services of the etcd v3 API.
//!
//! Thin by design: each handler validates the request as etcd does, calls the member and maps
//! errors through `status`. Services a later piece of work implements answer `Unimplemented`.

pub mod auth;
mod cluster;
mod kv;
pub mod learner;
mod lease;
mod maintenance;
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
use auth::AuthService;
use cluster::ClusterService;
use kv::KvService;
use lease::LeaseService;
use maintenance::MaintenanceService;
use watch::WatchService;

/// etcd lets gRPC messages exceed --max-request-bytes by this much, for framing and metadata.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Every etcd gRPC service, sized as etcd sizes its messages.
pub fn routes(member: Arc<Member>) -> Routes {
    let max_recv = member.limits().max_request_bytes + GRPC_OVERHEAD_BYTES;
    // etcd does not cap what it sends (math.MaxInt32); neither do we.
    let max_send = i32::MAX as usize;
    macro_rules! sized {
        ($server:expr) => {
            $server
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(max_send)
        };
    }
    Routes::new(sized!(KvServer::new(KvService::new(member.clone()))))
        .add_service(sized!(WatchServer::new(WatchService::new(member.clone()))))
        .add_service(sized!(LeaseServer::new(LeaseService::new(member.clone()))))
        .add_service(sized!(ClusterServer::new(ClusterService::new(
            member.clone()
        ))))
        .add_service(sized!(MaintenanceServer::new(MaintenanceService::new(
            member.clone()
        ))))
        .add_service(sized!(AuthServer::new(AuthService::new(member))))
}
