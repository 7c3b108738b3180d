//! grpc.health.v1.Health on the client URLs (load balancers and Kubernetes gRPC probes): the
//! overall service `""` is SERVING while the member has a leader and no alarm is raised, as
//! etcd reports it; Watch streams every change.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::member::Member;

/// How often the member's state is looked at; a probe sees a change within this.
const REFRESH: Duration = Duration::from_millis(100);

/// The health service, kept up to date by a task that ends with the member.
pub fn service(member: &Arc<Member>) -> HealthServer<impl Health> {
    let (reporter, server) = tonic_health::server::health_reporter();
    let weak = Arc::downgrade(member);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        let mut last = None;
        loop {
            tick.tick().await;
            let Some(member) = weak.upgrade() else { return };
            let status = serving_status(&member);
            drop(member);
            if last != Some(status) {
                set(&reporter, status).await;
                last = Some(status);
            }
        }
    });
    server
}

async fn set(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
}

pub fn serving_status(member: &Member) -> ServingStatus {
    if member.raft_status().leader.is_some() && member.active_alarms().is_empty() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}
