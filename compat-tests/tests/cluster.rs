//! Clusters of several members built from etcd's flags: every client API on every member,
//! forwarding to the leader, reads that are never stale, watches and leases on followers,
//! MoveLeader, HashKV and Status across members. Runs against keelson by default and against
//! the real etcd with `COMPAT_SERVER=etcd`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use compat_tests::cluster::Cluster;
use compat_tests::etcdctl::etcdctl_at;
use compat_tests::kv::header_revision;
use compat_tests::watch::{expect_created, next_message_within};
use compat_tests::OutputExt;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_start_from_flags_and_agree_on_everything() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let mut cluster_ids = BTreeSet::new();
    let mut member_ids = BTreeSet::new();
    for i in 0..3 {
        let status = cluster
            .status_of(i)
            .await
            .expect("every member answers Status");
        let header = status.header().expect("Status has a header");
        cluster_ids.insert(header.cluster_id());
        member_ids.insert(header.member_id());
        assert!(!status.is_learner(), "member {i} is a voter");
        assert!(status.raft_term() >= 1, "member {i}: raft term");
        assert_eq!(
            status.leader(),
            cluster.member_id(leader).await,
            "member {i} names the leader"
        );
    }
    assert_eq!(cluster_ids.len(), 1, "one cluster ID: {cluster_ids:x?}");
    assert_eq!(member_ids.len(), 3, "three member IDs: {member_ids:x?}");

    // etcdctl's member list, asked of each member, lists the three with their published
    // names and client URLs.
    for i in 0..3 {
        let listed = etcdctl_at(
            &cluster.members[i].endpoint(),
            &["member", "list", "-w", "json"],
        )
        .await
        .expect_json("member list");
        let members = listed["members"].as_array().expect("a member array");
        assert_eq!(members.len(), 3, "member {i} lists three members: {listed}");
        for m in members {
            let name = m["name"].as_str().unwrap_or("");
            let owner = cluster
                .members
                .iter()
                .find(|s| s.name() == name)
                .unwrap_or_else(|| panic!("unknown member name {name:?} in {listed}"));
            assert_eq!(m["peerURLs"][0], owner.peer_url(), "{name}: peer URL");
            assert_eq!(m["clientURLs"][0], owner.client_url(), "{name}: client URL");
            assert!(m.get("isLearner").is_none() || m["isLearner"] == false);
        }
    }

    // The peer URLs answer etcd's peer HTTP endpoints next to the peer protocol, and
    // anything else as Go's mux does.
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let peer = cluster.members[0].peer_url();
    let listed = get_json(&http, &format!("{peer}/members")).await;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(3),
        "{peer}/members lists three members: {listed}"
    );
    let version = get_json(&http, &format!("{peer}/version")).await;
    assert!(
        version["etcdserver"].is_string(),
        "{peer}/version: {version}"
    );
    let unknown = http
        .get(format!("{peer}/no/such/path"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {peer}/no/such/path: {e}"));
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.text().await.unwrap_or_default(),
        "404 page not found\n"
    );

    // endpoint status and health across the cluster, as operators run them.
    let all = cluster.endpoints_flag();
    let status = etcdctl_at(&all, &["endpoint", "status", "-w", "json"])
        .await
        .expect_json("endpoint status");
    let leaders: BTreeSet<u64> = status
        .as_array()
        .expect("one status per endpoint")
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().expect("leader field"))
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "every endpoint names the same leader: {status}"
    );
    let health = etcdctl_at(&all, &["endpoint", "health", "--cluster"]).await;
    health.expect_success("endpoint health --cluster");
    // etcdctl 3.4 prints the health lines on stderr.
    let text = health.stdout_text() + &health.stderr_text();
    assert_eq!(
        text.lines().filter(|l| l.contains("is healthy")).count(),
        3,
        "three healthy endpoints:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_followers_are_forwarded_and_reads_are_never_stale() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut on_follower = cluster.member_client(followers[0]).await;
    let mut on_other = cluster.member_client(followers[1]).await;
    let mut on_leader = cluster.member_client(leader).await;

    let mut last_revision = 0;
    for n in 0..50 {
        let written = on_follower
            .put(format!("forwarded/{n}"), format!("v{n}"), None)
            .await
            .expect("a put on a follower succeeds (no `not leader` for clients)");
        let revision = header_revision(written.header());
        assert!(revision > last_revision, "revisions increase: {revision}");
        last_revision = revision;
        // Linearizable reads on another follower and on the leader see the write at once.
        for (who, client) in [
            ("other follower", &mut on_other),
            ("leader", &mut on_leader),
        ] {
            let read = client
                .get(format!("forwarded/{n}"), None)
                .await
                .expect("linearizable get");
            assert_eq!(
                read.kvs().first().map(|kv| kv.value().to_vec()),
                Some(format!("v{n}").into_bytes()),
                "{who} misses write {n} (a stale read)"
            );
            assert!(header_revision(read.header()) >= revision);
        }
        // The member that took the write serves it even to a serializable read.
        let local = on_follower
            .get(
                format!("forwarded/{n}"),
                Some(GetOptions::new().with_serializable()),
            )
            .await
            .expect("serializable get");
        assert_eq!(
            local.kvs().len(),
            1,
            "the member that acknowledged write {n} lacks it"
        );
    }

    // Txn, delete and compaction through a follower.
    let deleted = on_other
        .delete("forwarded/0", None)
        .await
        .expect("delete on a follower");
    assert_eq!(deleted.deleted(), 1);
    on_other
        .compact(last_revision, None)
        .await
        .expect("compaction through a follower");
    let compacted = on_leader
        .get(
            "forwarded/1",
            Some(GetOptions::new().with_revision(last_revision - 1)),
        )
        .await;
    assert!(compacted.is_err(), "the compaction reached the leader");

    // Every member ends with the same HashKV at the same revision.
    let revision = header_revision(
        on_leader
            .get("forwarded/1", None)
            .await
            .expect("get")
            .header(),
    );
    let mut hashes = BTreeSet::new();
    for i in 0..3 {
        let mut client = cluster.member_client(i).await;
        let deadline = Instant::now() + WAIT;
        let hash = loop {
            match client.hash_kv(revision).await {
                Ok(h) => break h.hash(),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("member {i}: HashKV at {revision}: {e}"),
            }
        };
        hashes.insert(hash);
    }
    assert_eq!(
        hashes.len(),
        1,
        "HashKV differs between members: {hashes:?}"
    );
}

/// keelson sends the plain puts and deletes a follower forwards at once to the leader in one
/// call: every client must still get its own answer (its own revision, its own deleted count).
/// Kubernetes-style updates (a txn: compare, put, or read the key back) forwarded at the same
/// time must each get their own outcome and the value of their own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_on_a_follower_each_get_their_own_answer() {
    const WRITERS: usize = 64;
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let on_follower = cluster.member_client(follower).await;
    let mut on_leader = cluster.member_client(leader).await;
    for n in (0..WRITERS).step_by(2) {
        on_leader
            .put(format!("batched/del/{n}"), "x", None)
            .await
            .expect("put");
    }
    let mut created = Vec::new();
    for n in 0..WRITERS {
        let put = on_leader
            .put(format!("batched/cas/{n}"), format!("old{n}"), None)
            .await
            .expect("put");
        created.push(header_revision(put.header()));
    }

    // The writers start each kind of write together, so that they travel together.
    let together = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for (n, created_at) in created.into_iter().enumerate() {
        let mut client = on_follower.clone();
        let together = together.clone();
        // Every other update compares with the key's real mod revision and must succeed; the
        // others must fail and read back their own key's value.
        let compared = created_at + i64::from(n % 2 == 1) * 1_000_000;
        tasks.push(tokio::spawn(async move {
            together.wait().await;
            let put = client
                .put(format!("batched/put/{n}"), format!("v{n}"), None)
                .await
                .expect("put on a follower");
            // Every other key exists: its delete must say 1, the others 0.
            together.wait().await;
            let deleted = client
                .delete(format!("batched/del/{n}"), None)
                .await
                .expect("delete on a follower");
            let key = format!("batched/cas/{n}");
            let update = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    compared,
                )])
                .and_then(vec![TxnOp::put(key.clone(), format!("new{n}"), None)])
                .or_else(vec![TxnOp::get(key, None)]);
            together.wait().await;
            let updated = client.txn(update).await.expect("txn on a follower");
            let read_back = updated.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(range) => range.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            });
            (
                n,
                header_revision(put.header()),
                deleted.deleted(),
                updated.succeeded(),
                read_back,
            )
        }));
    }
    let mut revisions = BTreeSet::new();
    for task in tasks {
        let (n, revision, deleted, succeeded, read_back) = task.await.expect("writer task");
        assert_eq!(
            succeeded,
            n % 2 == 0,
            "update {n} got another txn's outcome"
        );
        if succeeded {
            assert_eq!(read_back, None, "update {n} succeeded yet read its key");
        } else {
            assert_eq!(
                read_back.as_deref(),
                Some(format!("old{n}").as_bytes()),
                "failed update {n} read another key's value"
            );
        }
        let read = on_leader
            .get(format!("batched/put/{n}"), None)
            .await
            .expect("get");
        let kv = read.kvs().first().expect("the put key exists");
        assert_eq!(kv.value(), format!("v{n}").as_bytes());
        assert_eq!(
            kv.mod_revision(),
            revision,
            "put {n} was answered with another write's revision"
        );
        assert!(
            revisions.insert(revision),
            "revision {revision} answered twice"
        );
        assert_eq!(
            deleted,
            i64::from(n % 2 == 0),
            "delete {n} was answered with another delete's count"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_on_a_follower_see_every_event_once_across_a_leader_change() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let writer_index = (0..3)
        .find(|i| *i != leader && *i != follower)
        .expect("a third member");
    let mut watcher = cluster.member_client(follower).await;
    let mut stream = compat_tests::watch::open_watch(
        &mut watcher,
        "w/",
        WatchOptions::new().with_prefix().with_prev_key(),
    )
    .await;
    expect_created(&mut stream, "watch on a follower").await;

    let mut writer = cluster.member_client(writer_index).await;
    for n in 0..20 {
        writer
            .put(format!("w/{}", n % 5), format!("a{n}"), None)
            .await
            .expect("put before the leader change");
    }
    // Move the leadership away and keep writing.
    let target = cluster.member_id(follower).await;
    let mut leader_client = cluster.member_client(leader).await;
    leader_client
        .move_leader(target)
        .await
        .expect("move leader to the watching follower");
    assert_eq!(cluster.leader().await, follower, "the leadership moved");
    for n in 20..40 {
        writer
            .put(format!("w/{}", n % 5), format!("b{n}"), None)
            .await
            .expect("put after the leader change");
    }
    cluster.kill(leader);
    for n in 40..50 {
        writer
            .put(format!("w/{}", n % 5), format!("c{n}"), None)
            .await
            .expect("put after the old leader died");
    }

    let mut seen = Vec::new();
    while seen.len() < 50 {
        let message = next_message_within(&mut stream, WAIT, "watch events").await;
        for event in message.events() {
            let kv = event.kv().expect("an event with a key");
            assert_eq!(event.event_type(), EventType::Put);
            if kv.version() > 1 {
                assert!(
                    event.prev_kv().is_some(),
                    "a non-create event carries prev_kv"
                );
            }
            seen.push(kv.mod_revision());
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(seen, sorted, "events in revision order, each once");
    assert_eq!(seen.len(), 50, "every event exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_live_on_across_a_leader_change_without_early_expiry() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let mut client = cluster.member_client(follower).await;
    let granted = client
        .lease_grant(30, None)
        .await
        .expect("grant on a follower");
    let lease = granted.id();
    client
        .put(
            "leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put on the lease");
    // Keep-alive and TimeToLive through a follower reach the leader.
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.expect("keep-alive");
    keeper.keep_alive().await.expect("send keep-alive");
    let answer = answers
        .message()
        .await
        .expect("keep-alive answer")
        .expect("an answer");
    assert_eq!(
        answer.ttl(),
        30,
        "renewed to the full TTL through a follower"
    );
    let ttl = client
        .lease_time_to_live(lease, None)
        .await
        .expect("time to live through a follower");
    assert!(
        (25..=30).contains(&ttl.ttl()),
        "remaining TTL {}",
        ttl.ttl()
    );

    cluster.kill(leader);
    let new_leader = cluster
        .wait_for_leader_among(&[leader], Duration::from_secs(30))
        .await;
    assert_ne!(new_leader, leader);
    // Well after one election the lease still holds its key, with most of its TTL.
    let mut survivor = cluster.member_client(new_leader).await;
    let ttl = survivor
        .lease_time_to_live(lease, None)
        .await
        .expect("time to live on the new leader");
    assert!(
        ttl.ttl() > 10,
        "lease shortened by the leader change: {}",
        ttl.ttl()
    );
    let still = survivor.get("leased", None).await.expect("get");
    assert_eq!(still.kvs().len(), 1, "the leased key expired early");
    // A short lease granted now expires on the new leader (leases do not live forever).
    let short = survivor.lease_grant(2, None).await.expect("grant").id();
    survivor
        .put(
            "short",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(short)),
        )
        .await
        .expect("put");
    let deadline = Instant::now() + WAIT;
    loop {
        let left = survivor.get("short", None).await.expect("get").kvs().len();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a 2 s lease did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn move_leader_follows_etcds_rules() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let target = cluster.member_id(follower).await;
    let mut on_follower = cluster.member_client(follower).await;
    let refused = on_follower.move_leader(target).await;
    let (code, message) = compat_tests::grpc::expect_grpc_error(refused);
    assert_eq!(
        (code, message.as_str()),
        (tonic::Code::FailedPrecondition, "etcdserver: not leader"),
        "MoveLeader on a follower"
    );
    let mut on_leader = cluster.member_client(leader).await;
    let unknown = on_leader.move_leader(0x1234).await;
    let (code, message) = compat_tests::grpc::expect_grpc_error(unknown);
    assert_eq!(
        (code, message.as_str()),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: bad leader transferee"
        )
    );
    // etcdctl move-leader finds the leader among the endpoints itself.
    let moved = etcdctl_at(
        &cluster.endpoints_flag(),
        &["move-leader", &format!("{target:x}")],
    )
    .await;
    let text = moved.expect_success("move-leader");
    assert!(text.contains("Leadership transferred"), "{text}");
    assert_eq!(cluster.leader().await, follower);
}

async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let body = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}
