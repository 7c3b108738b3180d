//! Membership changes with the real etcdctl, as kubeadm and operators make them: a learner
//! added, started with `--initial-cluster-state existing`, caught up, promoted; members removed
//! (a removed member stops itself); etcd's errors for every refused change, compared with the
//! real etcd (`COMPAT_SERVER=etcd` runs the same flows against it; `membership_errors_match_etcd`
//! runs both).

use std::time::{Duration, Instant};

use compat_tests::cluster::Cluster;
use compat_tests::etcdctl::etcdctl_at;
use compat_tests::{OutputExt, ServerKind, ServerOptions};
use etcd_client::GetOptions;

const WAIT: Duration = Duration::from_secs(30);

fn member_hex_ids(listing: &serde_json::Value) -> Vec<(String, String, bool)> {
    listing["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                format!("{:x}", m["ID"].as_u64().expect("member ID")),
                m["name"].as_str().unwrap_or("").to_string(),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learner_joins_catches_up_is_promoted_and_removed_with_etcdctl() {
    let mut cluster = Cluster::start(3).await;
    let mut client = cluster.client().await;
    for n in 0..200 {
        client
            .put(format!("m/{n}"), format!("v{n}"), None)
            .await
            .expect("data before the learner joins");
    }
    let (learner, learner_id) = cluster.add_member(true).await;
    let id_hex = format!("{learner_id:x}");
    // The voters' endpoints: a learner refuses member commands, as etcd's does.
    let endpoints = (0..3)
        .map(|i| cluster.members[i].endpoint())
        .collect::<Vec<_>>()
        .join(",");
    let listing = etcdctl_at(&endpoints, &["member", "list", "-w", "json"])
        .await
        .expect_json("member list");
    let members = member_hex_ids(&listing);
    assert!(
        members
            .iter()
            .any(|(id, name, is_learner)| *id == id_hex && *is_learner && !name.is_empty()),
        "the started learner is listed as a learner with its name: {members:?}"
    );
    // The learner serves serializable reads of everything, and refuses the rest.
    let mut on_learner = cluster.member_client(learner).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let got = on_learner
            .get(
                "m/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_serializable()
                        .with_count_only(),
                ),
            )
            .await
            .expect("serializable read on a learner");
        if got.count() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the learner did not catch up: {}",
            got.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = on_learner.put("m/x", "no", None).await;
    let (code, message) = compat_tests::grpc::expect_grpc_error(refused);
    assert_eq!(
        (code, message.as_str()),
        (
            tonic::Code::Unavailable,
            "etcdserver: rpc not supported for learner"
        )
    );
    let refused = on_learner.get("m/1", None).await;
    let (_, message) = compat_tests::grpc::expect_grpc_error(refused);
    assert_eq!(message, "etcdserver: rpc not supported for learner");
    let status = cluster
        .status_of(learner)
        .await
        .expect("Status on a learner");
    assert!(status.is_learner());

    // Promote: retried while etcd says the learner is not in sync yet.
    let deadline = Instant::now() + WAIT;
    loop {
        let promoted = etcdctl_at(&endpoints, &["member", "promote", &id_hex]).await;
        if promoted.status.success() {
            assert!(
                promoted.stdout_text().contains("promoted"),
                "{}",
                promoted.stdout_text()
            );
            break;
        }
        let error = promoted.expect_error("member promote");
        assert!(
            error.contains("can only promote a learner member which is in sync with leader"),
            "{error}"
        );
        assert!(Instant::now() < deadline, "the learner never got in sync");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = cluster.status_of(learner).await.expect("Status");
    assert!(
        !status.is_learner(),
        "promoted member still reports itself a learner"
    );
    on_learner
        .put("m/by-new-voter", "ok", None)
        .await
        .expect("the new voter takes writes");

    // Remove it again (asking any member, itself included): it stops itself, with etcd's
    // message. etcd refuses while the new voter has been connected for less than 5 s.
    let all = cluster.endpoints_flag();
    let deadline = Instant::now() + WAIT;
    loop {
        let removed = etcdctl_at(&all, &["member", "remove", &id_hex]).await;
        if removed.status.success() {
            break;
        }
        let error = removed.expect_error("member remove");
        assert!(
            error.contains("unhealthy cluster"),
            "member remove: {error}"
        );
        assert!(
            Instant::now() < deadline,
            "member remove kept failing: {error}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exit = cluster.members[learner].wait_for_exit(WAIT).await;
    assert!(exit.is_some(), "the removed member keeps running");
    if cluster.kind() == ServerKind::Keelson {
        let log = cluster.members[learner].log_text();
        assert!(
            log.contains("the member has been permanently removed from the cluster"),
            "etcd's message in the removed member's log:\n{log}"
        );
    }
    let listing = etcdctl_at(&cluster.endpoints_flag(), &["member", "list", "-w", "json"])
        .await
        .expect_json("member list");
    assert_eq!(member_hex_ids(&listing).len(), 3);
    cluster
        .client()
        .await
        .put("m/after-remove", "ok", None)
        .await
        .expect("the cluster works after the removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_added_with_member_add_joins_and_votes() {
    let mut cluster = Cluster::start(3).await;
    cluster
        .client()
        .await
        .put("v/1", "a", None)
        .await
        .expect("put");
    let (voter, _) = cluster.add_member(false).await;
    let status = cluster.status_of(voter).await.expect("status");
    assert!(!status.is_learner());
    let mut on_new = cluster.member_client(voter).await;
    let got = on_new
        .get("v/1", None)
        .await
        .expect("linearizable read on the new voter");
    assert_eq!(got.kvs().len(), 1);
    // With four voters, losing one keeps a quorum (3 of 4).
    let leader = cluster.leader().await;
    let victim = (0..4)
        .find(|i| *i != leader && *i != voter)
        .expect("a member to stop");
    cluster.kill(victim);
    on_new
        .put("v/2", "b", None)
        .await
        .expect("a write with 3 of 4 voters");
}

/// The refusals of membership changes: code and message, on keelson and on the real etcd.
async fn membership_errors(kind: ServerKind) -> Vec<(String, String)> {
    let cluster = Cluster::start_with(ServerOptions::new(kind), 3).await;
    let mut client = cluster.client().await;
    let mut outcomes = Vec::new();
    let mut record = |what: &str, result: Result<String, etcd_client::Error>| {
        let text = match result {
            Ok(ok) => format!("ok {ok}"),
            Err(e) => {
                let (code, message) = compat_tests::grpc::expect_grpc_error::<()>(Err(e));
                format!("{code:?}: {message}")
            }
        };
        outcomes.push((what.to_string(), text));
    };
    let taken = cluster.members[1].peer_url();
    // etcd refuses every membership change until its members have been connected for 5 s
    // (`unhealthy cluster`); so does keelson. Wait for that, bounded.
    let deadline = Instant::now() + WAIT;
    let first = loop {
        let outcome = client.member_add([taken.clone()], None).await;
        let unhealthy = matches!(&outcome, Err(e) if e.to_string().contains("unhealthy cluster"));
        if !unhealthy || Instant::now() >= deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    record("add with a peer URL in use", first.map(|_| String::new()));
    record(
        "remove an unknown member",
        client.member_remove(0xdead).await.map(|_| String::new()),
    );
    let voter = cluster.member_id(0).await;
    record(
        "promote a voter",
        client.member_promote(voter).await.map(|_| String::new()),
    );
    record(
        "update an unknown member",
        client
            .member_update(0xdead, ["http://127.0.0.1:1".to_string()])
            .await
            .map(|_| String::new()),
    );
    record(
        "add with a bad URL",
        client
            .member_add(["http://127.0.0.1"], None)
            .await
            .map(|_| String::new()),
    );
    let learner = client
        .member_add(
            ["http://127.0.0.1:1"],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("a first learner");
    let learner_id = learner.member().map(|m| m.id()).expect("the learner");
    record(
        "a second learner",
        client
            .member_add(
                ["http://127.0.0.1:2"],
                Some(etcd_client::MemberAddOptions::new().with_is_learner()),
            )
            .await
            .map(|_| String::new()),
    );
    record(
        "promote a learner that never started",
        client
            .member_promote(learner_id)
            .await
            .map(|_| String::new()),
    );
    record(
        "remove the learner",
        client
            .member_remove(learner_id)
            .await
            .map(|r| format!("{} members", r.members().len())),
    );
    record(
        "remove it again",
        client
            .member_remove(learner_id)
            .await
            .map(|_| String::new()),
    );
    // An unstarted voter: adding a second one would leave too few started members.
    let added = client
        .member_add(["http://127.0.0.1:3"], None)
        .await
        .map(|r| format!("{} members", r.member_list().len()));
    record("add an unstarted voter", added);
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_errors_match_etcd() {
    let keelson = membership_errors(ServerKind::Keelson).await;
    if !ServerKind::Etcd.is_available() {
        panic!("the real etcd is needed as the oracle (install etcd-server)");
    }
    let etcd = membership_errors(ServerKind::Etcd).await;
    assert_eq!(keelson, etcd, "membership refusals differ from etcd's");
    // With an unstarted voter, the cluster is not fully connected: etcd's rule refuses another
    // voter (`unhealthy cluster`). etcd 3.4 itself applies it unevenly (a member may answer
    // before it notices the new peer), so keelson is checked on its own here.
    let cluster = Cluster::start(3).await;
    let mut client = cluster.client().await;
    let deadline = Instant::now() + WAIT;
    loop {
        match client.member_add(["http://127.0.0.1:3"], None).await {
            Ok(_) => break,
            Err(e) if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("adding a first unstarted voter: {e}"),
        }
    }
    let refused = client.member_add(["http://127.0.0.1:4"], None).await;
    let (code, message) = compat_tests::grpc::expect_grpc_error(refused);
    assert_eq!(
        (code, message.as_str()),
        (tonic::Code::Unavailable, "etcdserver: unhealthy cluster"),
        "a second voter while one voter was never reached"
    );
    // And they are the refusals, not successes.
    assert!(
        keelson
            .iter()
            .filter(|(_, outcome)| outcome.starts_with("ok"))
            .count()
            == 2,
        "{keelson:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_flags_disagree_with_its_peers_stops_with_etcds_message() {
    if ServerKind::from_env() != ServerKind::Keelson {
        eprintln!("skipped: etcd keeps such a member waiting; keelson stops it");
        return;
    }
    // Member 2 has another --initial-cluster-token: other member IDs, another cluster ID.
    let mut cluster = Cluster::spawn_tweaked(ServerOptions::from_env(), 3, |i, options| {
        if i == 2 {
            if let Some(flags) = options.cluster.as_mut() {
                flags.token = "another-token".into();
            }
        }
    });
    cluster.members[0].wait_ready().await;
    cluster.members[1].wait_ready().await;
    let exit = cluster.members[2].wait_for_exit(WAIT).await;
    let status = exit.expect("the odd member keeps running instead of stopping");
    assert!(!status.success(), "it exits with a failure status");
    let log = cluster.members[2].log_text();
    assert!(
        log.contains("cluster ID mismatch"),
        "etcd's wording in its log:\n{log}"
    );
    // The two agreeing members formed a working cluster.
    let mut client = cluster.member_client(0).await;
    client
        .put("k", "v", None)
        .await
        .expect("the majority works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_lost_its_data_dir_refuses_to_bootstrap_again() {
    if ServerKind::from_env() != ServerKind::Keelson {
        eprintln!("skipped: keelson's message is checked");
        return;
    }
    let mut cluster = Cluster::start(3).await;
    cluster.kill(2);
    let data = cluster.members[2].data_dir();
    std::fs::remove_dir_all(&data).expect("wipe the member's data dir");
    cluster.members[2].respawn();
    let exit = cluster.members[2].wait_for_exit(WAIT).await;
    assert!(
        exit.is_some_and(|s| !s.success()),
        "the wiped member bootstrapped again"
    );
    let id = format!("{:x}", cluster.member_id(0).await);
    let log = cluster.members[2].log_text();
    assert!(
        log.contains("has already been bootstrapped"),
        "etcd's message ({id} is member 0) in the log:\n{log}"
    );
}
