//! The gRPC services of the etcd v3 API.
//!
//! Thin by design: each handler validates the request as etcd does, calls the member and maps
//! errors through `status`. Services a later piece of work implements answer `Unimplemented`.

pub mod auth;
pub mod cluster;
pub mod dispatch;
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
pub mod watch_reply;

use std::sync::Arc;

use crate::member::Member;
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

/// The largest gRPC message a client may send (`--max-request-bytes` and etcd's allowance for
/// framing) and the largest the services send, as etcd sizes them.
fn message_sizes(member: &Member) -> (usize, usize) {
    let max_recv = member.limits().max_request_bytes + GRPC_OVERHEAD_BYTES;
    // etcd does not cap what it sends (math.MaxInt32); neither do we.
    let max_send = i32::MAX as usize;
    (max_recv, max_send)
}
