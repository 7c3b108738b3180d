//! Maintenance responses field by field against the real etcd: which fields are set, and
//! the values that must agree (IDs, leader, alarms), for every Maintenance RPC keelson serves.

use compat_tests::{Server, ServerKind, ServerOptions};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client};

struct Member {
    kind: ServerKind,
    client: Client,
    _server: Server,
}

async fn both() -> [Member; 2] {
    let (etcd, ours) = tokio::join!(
        Server::start(ServerOptions::new(ServerKind::Etcd)),
        Server::start(ServerOptions::from_env()),
    );
    let mut members = Vec::new();
    for server in [etcd, ours] {
        members.push(Member {
            kind: server.kind(),
            client: server.client().await,
            _server: server,
        });
    }
    let [etcd, ours]: [Member; 2] = members.try_into().unwrap_or_else(|_| unreachable!());
    [etcd, ours]
}

fn member_option(id: u64) -> AlarmOptions {
    let mut options = AlarmOptions::new();
    options.with_member(id);
    options
}

#[tokio::test]
async fn defragment_answers_without_a_header_as_etcd_does() {
    for mut member in both().await {
        let response = member.client.defragment().await.expect("defragment");
        assert!(
            response.header().is_none(),
            "{}: etcd's DefragmentResponse has no header (the etcd-client crate's own test \
             asserts it): {:?}",
            member.kind.name(),
            response.header()
        );
    }
}

#[tokio::test]
async fn status_sets_the_fields_etcd_sets() {
    for mut member in both().await {
        let name = member.kind.name();
        member.client.put("k", "v", None).await.expect("put");
        let status = member.client.status().await.expect("status");
        let header = status.header().expect("Status has a header");
        assert_ne!(header.cluster_id(), 0, "{name}");
        assert_ne!(header.member_id(), 0, "{name}");
        assert_eq!(header.revision(), 2, "{name}");
        assert!(header.raft_term() > 0, "{name}");
        assert_eq!(
            status.leader(),
            header.member_id(),
            "{name}: the only member leads"
        );
        assert_eq!(status.raft_term(), header.raft_term(), "{name}");
        assert!(
            status.raft_index() >= status.raft_applied_index() && status.raft_applied_index() > 0,
            "{name}: index {} applied {}",
            status.raft_index(),
            status.raft_applied_index()
        );
        assert!(status.db_size() > 0, "{name}");
        assert!(
            status.raft_used_db_size() > 0 && status.raft_used_db_size() <= status.db_size(),
            "{name}: in use {} of {}",
            status.raft_used_db_size(),
            status.db_size()
        );
        assert!(status.errors().is_empty(), "{name}: {:?}", status.errors());
        assert!(!status.is_learner(), "{name}");
        assert!(!status.version().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn alarms_list_activate_and_deactivate_as_etcd_does() {
    for mut member in both().await {
        let name = member.kind.name();
        let id = member
            .client
            .status()
            .await
            .expect("status")
            .header()
            .expect("header")
            .member_id();
        let none = member
            .client
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("alarm list");
        assert!(none.alarms().is_empty(), "{name}: an alarm at start");
        let raised = member
            .client
            .alarm(
                AlarmAction::Activate,
                AlarmType::Nospace,
                Some(member_option(id)),
            )
            .await
            .expect("alarm activate");
        assert_eq!(raised.alarms().len(), 1, "{name}");
        assert_eq!(raised.alarms()[0].member_id(), id, "{name}");
        assert_eq!(raised.alarms()[0].alarm(), AlarmType::Nospace, "{name}");
        let status = member.client.status().await.expect("status");
        assert_eq!(
            status.errors(),
            [format!("memberID:{id} alarm:NOSPACE ")],
            "{name}: Status lists the alarm as etcd prints it"
        );
        let listed = member
            .client
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("alarm list");
        assert_eq!(listed.alarms().len(), 1, "{name}");
        let lowered = member
            .client
            .alarm(
                AlarmAction::Deactivate,
                AlarmType::Nospace,
                Some(member_option(id)),
            )
            .await
            .expect("alarm deactivate");
        assert_eq!(lowered.alarms().len(), 1, "{name}: the deactivated alarm");
        // etcd 3.4 leaves the AlarmResponse header unset; 3.5 and later fill it, as keelson
        // (which reports 3.5) does: the header's presence is the one accepted difference.
        match member.kind {
            ServerKind::Etcd => {}
            ServerKind::Keelson => {
                let header = lowered
                    .header()
                    .expect("keelson fills the header as etcd 3.5");
                assert_eq!(header.member_id(), id);
            }
        }
        let after = member
            .client
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("alarm list");
        assert!(after.alarms().is_empty(), "{name}: the alarm stayed");
        member
            .client
            .put("writable", "again", None)
            .await
            .unwrap_or_else(|e| panic!("{name}: writes resume after the alarm: {e}"));
    }
}

/// etcd 3.5's Downgrade, as etcd 3.5 answers it for a cluster that cannot go back to any
/// target (keelson cannot take etcd 3.4's format in place): exact codes and messages. etcd
/// 3.4 has no Downgrade at all, so this runs against keelson only.
#[tokio::test]
async fn downgrade_is_refused_as_etcd_3_5_refuses_it() {
    use compat_tests::auth::{raw_error, RawClient};
    use tonic::Code;
    const VALIDATE: i32 = 0;
    const ENABLE: i32 = 1;
    const CANCEL: i32 = 2;
    if ServerKind::from_env() != ServerKind::Keelson {
        return;
    }
    let server = Server::start(ServerOptions::new(ServerKind::Keelson)).await;
    let mut raw = RawClient::connect(&server.client_url()).await;
    let invalid = (
        Code::InvalidArgument,
        "etcdserver: invalid downgrade target version".to_string(),
    );
    for (action, target) in [
        (VALIDATE, "3.4"),
        (VALIDATE, "3.4.0"),
        (ENABLE, "3.4"),
        (ENABLE, "3.5.0"),
    ] {
        assert_eq!(
            raw_error(raw.downgrade(action, target).await),
            invalid,
            "{action} {target}"
        );
    }
    for (action, target) in [(VALIDATE, "v3.4"), (ENABLE, "three"), (VALIDATE, "")] {
        assert_eq!(
            raw_error(raw.downgrade(action, target).await),
            (
                Code::InvalidArgument,
                "etcdserver: wrong downgrade target version format".to_string()
            ),
            "{action} {target:?}"
        );
    }
    assert_eq!(
        raw_error(raw.downgrade(CANCEL, "").await),
        (
            Code::FailedPrecondition,
            "etcdserver: no inflight downgrade job".to_string()
        )
    );
    assert_eq!(
        raw_error(raw.downgrade(9, "3.4").await),
        (Code::Unknown, "etcdserver: unknown method".to_string())
    );
}
