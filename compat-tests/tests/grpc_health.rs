//! grpc.health.v1.Health on the client URL, probed with a gRPC client as load balancers and
//! Kubernetes' gRPC probes do: SERVING while the member has a leader and no alarm.

use std::time::Duration;

use compat_tests::{Cluster, Server, ServerKind};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const STEP: Duration = Duration::from_secs(20);

async fn health_client(endpoint: &str) -> HealthClient<Channel> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let channel = Channel::from_shared(url)
        .expect("an endpoint URL")
        .connect_timeout(STEP)
        .timeout(STEP)
        .connect()
        .await
        .expect("connect to the client URL");
    HealthClient::new(channel)
}

async fn check(client: &mut HealthClient<Channel>, service: &str) -> Result<i32, tonic::Status> {
    client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// The status of the next update a Watch stream sends.
async fn next(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(STEP, watch.message())
        .await
        .expect("a health update in time")
        .expect("the watch stream")
        .expect("the stream goes on")
        .status
}

#[tokio::test]
async fn check_and_watch_report_serving_and_alarms() {
    let server = Server::start_default().await;
    let mut health = health_client(&server.endpoint()).await;
    assert_eq!(
        check(&mut health, "").await.expect("check"),
        ServingStatus::Serving as i32
    );
    let unknown = check(&mut health, "no.such.Service")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
    if server.kind() == ServerKind::Etcd {
        // etcd 3.4 reports SERVING whatever its state; keelson also reports its alarms.
        return;
    }
    let mut client = server.client().await;
    let member = client
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    let mut options = AlarmOptions::new();
    options.with_member(member);
    client
        .alarm(
            AlarmAction::Activate,
            AlarmType::Nospace,
            Some(options.clone()),
        )
        .await
        .expect("raise NOSPACE");
    assert_eq!(next(&mut watch).await, ServingStatus::NotServing as i32);
    assert_eq!(
        check(&mut health, "").await.expect("check"),
        ServingStatus::NotServing as i32
    );
    client
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
        .await
        .expect("clear NOSPACE");
    assert_eq!(next(&mut watch).await, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_member_without_a_leader_is_not_serving() {
    if ServerKind::from_env() == ServerKind::Etcd {
        // etcd 3.4 reports SERVING whatever its state.
        return;
    }
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let survivor = (leader + 1) % 3;
    let mut health = health_client(&cluster.endpoints()[survivor]).await;
    assert_eq!(
        check(&mut health, "").await.expect("check"),
        ServingStatus::Serving as i32
    );
    for i in 0..3 {
        if i != survivor {
            cluster.kill(i);
        }
    }
    // Without a quorum the survivor loses its leader within a few election timeouts.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if check(&mut health, "").await.expect("check") == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the member should report NOT_SERVING without a leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
