//! Clusters under faults: the leader killed under concurrent writes, a follower killed and
//! restarted, a follower that falls behind a purged log (snapshot catch-up), a partitioned
//! minority, quorum loss. Every acknowledged write must be on every member with its revision.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compat_tests::cluster::{with_fault_hook, Cluster};
use compat_tests::kv::header_revision;
use compat_tests::server::default_connect_options;
use compat_tests::{ServerKind, ServerOptions};
use etcd_client::{Client, GetOptions, WatchOptions};

const WRITERS: usize = 8;
const WAIT: Duration = Duration::from_secs(30);
/// A bound on any single request in these tests (above etcd's 7 s request timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Writers that put distinct keys through every member until told to stop; returns every
/// acknowledged (key, value, revision).
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(String, String, i64)>>>,
}

impl Writers {
    async fn start(cluster: &Cluster, prefix: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let options = default_connect_options().with_timeout(REQUEST_TIMEOUT);
            let client = Client::connect(cluster.endpoints(), Some(options))
                .await
                .expect("connect writers");
            let stop = stop.clone();
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                let mut client = client;
                let mut acked = Vec::new();
                for n in 0..100_000usize {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("{prefix}{w}/{n}");
                    let value = format!("v{w}-{n}");
                    match client.put(key.clone(), value.clone(), None).await {
                        Ok(r) => acked.push((key, value, header_revision(r.header()))),
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                acked
            }));
        }
        Writers { stop, tasks }
    }

    async fn stop(self) -> Vec<(String, String, i64)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            let acked = tokio::time::timeout(2 * REQUEST_TIMEOUT, task)
                .await
                .expect("writers stop within two request timeouts")
                .expect("writer task");
            all.extend(acked);
        }
        all
    }
}

async fn count_acked_since(acked_before: usize, writers_probe: &Cluster, prefix: &str) -> usize {
    let mut client = writers_probe.client().await;
    let all = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    (all.count() as usize).saturating_sub(acked_before)
}

/// key -> (value, mod revision) of a range.
type KeyValues = HashMap<Vec<u8>, (Vec<u8>, i64)>;

/// Every acknowledged write is on member `i`, with its value and revision (serializable reads:
/// the member's own state).
async fn assert_all_present_on(cluster: &Cluster, i: usize, acked: &[(String, String, i64)]) {
    let mut client = cluster.member_client(i).await;
    let deadline = Instant::now() + WAIT;
    let max_revision = acked.iter().map(|a| a.2).max().unwrap_or(0);
    // Wait until the member applied up to the last acknowledged revision.
    loop {
        let r = client
            .get("x", Some(GetOptions::new().with_serializable()))
            .await
            .expect("serializable get");
        if header_revision(r.header()) >= max_revision {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member {i} did not catch up to revision {max_revision}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let prefix_of = |k: &str| k.split('/').next().unwrap_or("").to_string() + "/";
    let mut by_prefix: HashMap<String, KeyValues> = HashMap::new();
    for (key, _, _) in acked {
        let prefix = prefix_of(key);
        if by_prefix.contains_key(&prefix) {
            continue;
        }
        let all = client
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .expect("range the test's keys");
        by_prefix.insert(
            prefix,
            all.kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), (kv.value().to_vec(), kv.mod_revision())))
                .collect(),
        );
    }
    for (key, value, revision) in acked {
        let found = by_prefix[&prefix_of(key)].get(key.as_bytes());
        assert_eq!(
            found,
            Some(&(value.clone().into_bytes(), *revision)),
            "member {i}: acknowledged write {key}={value}@{revision}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_under_writes_loses_nothing() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let writers = Writers::start(&cluster, "kl").await;
    let baseline = count_acked_since(0, &cluster, "kl").await;
    let deadline = Instant::now() + WAIT;
    while count_acked_since(baseline, &cluster, "kl").await < 200 {
        assert!(
            Instant::now() < deadline,
            "writes do not proceed before the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at = Instant::now();
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader_among(&[leader], WAIT).await;
    let elected_after = killed_at.elapsed();
    // Writes resume: a fresh write through the survivors succeeds.
    let mut probe = cluster.client().await;
    let first_write = loop {
        match probe.put("kl-probe", "x", None).await {
            Ok(_) => break killed_at.elapsed(),
            Err(e) => {
                assert!(
                    killed_at.elapsed() < WAIT,
                    "no write succeeded after the kill: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    eprintln!(
        "leader killed: new leader after {elected_after:?}, first write after {first_write:?}"
    );
    assert_ne!(new_leader, leader);
    let before_stop = count_acked_since(0, &cluster, "kl").await;
    let deadline = Instant::now() + WAIT;
    while count_acked_since(before_stop, &cluster, "kl").await < 100 {
        assert!(
            Instant::now() < deadline,
            "writes do not resume after the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked = writers.stop().await;
    assert!(
        acked.len() > 300,
        "too few acknowledged writes: {}",
        acked.len()
    );
    let mut revisions: Vec<i64> = acked.iter().map(|a| a.2).collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        acked.len(),
        "a revision acknowledged twice"
    );
    for i in (0..3).filter(|i| *i != leader) {
        assert_all_present_on(&cluster, i, &acked).await;
    }
    // The old leader comes back and catches up with everything.
    cluster.restart(leader).await;
    assert_all_present_on(&cluster, leader, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_far_behind_a_purged_log_catches_up_by_snapshot() {
    // A small snapshot count makes the leader purge its log quickly.
    let base = ServerOptions::from_env().args(["--snapshot-count", "200"]);
    let mut cluster = Cluster::start_with(base, 3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    cluster.kill(follower);
    let mut client = cluster.member_client(leader).await;
    let mut acked = Vec::new();
    // Well past snapshot-count plus the 5000 entries kept after a snapshot.
    let value = "x".repeat(64);
    let puts: Vec<_> = (0..6000usize)
        .map(|n| (format!("snap/{:05}", n % 2500), format!("{value}{n}")))
        .collect();
    for chunk in puts.chunks(100) {
        let mut tasks = Vec::new();
        for (key, value) in chunk.iter().cloned() {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let r = client
                    .put(key.clone(), value.clone(), None)
                    .await
                    .expect("put");
                (key, value, header_revision(r.header()))
            }));
        }
        for task in tasks {
            acked.push(task.await.expect("put task"));
        }
    }
    client
        .compact(acked.iter().map(|a| a.2).max().unwrap_or(1), None)
        .await
        .expect("compact");
    // Only the latest write of each key is still readable at its revision.
    let mut latest: HashMap<String, (String, String, i64)> = HashMap::new();
    for a in acked {
        let entry = latest.entry(a.0.clone()).or_insert(a.clone());
        if a.2 > entry.2 {
            *entry = a;
        }
    }
    let latest: Vec<_> = latest.into_values().collect();
    if cluster.kind() == ServerKind::Keelson {
        // The leader purges its log past what the follower has (a dead member does not hold
        // the purge back).
        let deadline = Instant::now() + WAIT;
        loop {
            let purged = cluster.members[leader]
                .log_text()
                .lines()
                .filter_map(|l| l.split("compact_index=").nth(1))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            if purged > 100 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the leader did not purge its log while a follower was down (purged up to {purged})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.restart(follower).await;
    assert_all_present_on(&cluster, follower, &latest).await;
    if cluster.kind() == ServerKind::Keelson {
        let log = cluster.members[follower].log_text();
        assert!(
            log.contains("received a snapshot"),
            "the follower caught up without a snapshot; its log:\n{}",
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
    }
    // A new member joins after the purge: it too starts from a snapshot.
    let (joined, _) = cluster.add_member(true).await;
    assert_all_present_on(&cluster, joined, &latest).await;
    if cluster.kind() == ServerKind::Keelson {
        assert!(
            cluster.members[joined]
                .log_text()
                .contains("received a snapshot"),
            "the new member caught up without a snapshot"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_minority_refuses_writes_and_linearizable_reads_then_converges() {
    if ServerKind::from_env() != ServerKind::Keelson {
        eprintln!("skipped: partitions use keelson's fault hook");
        return;
    }
    let cluster = Cluster::start_with(with_fault_hook(ServerOptions::from_env()), 3).await;
    let leader = cluster.leader().await;
    // Cut the leader off: the majority elects another one and goes on.
    cluster.partition(&[leader]).await;
    let majority_leader = cluster.wait_for_leader_among(&[leader], WAIT).await;
    assert_ne!(majority_leader, leader);
    let mut majority = cluster.member_client(majority_leader).await;
    let written = majority
        .put("p/majority", "yes", None)
        .await
        .expect("majority write");
    let revision = header_revision(written.header());

    let mut minority = cluster.member_client(leader).await;
    let started = Instant::now();
    let refused = minority.put("p/minority", "no", None).await;
    assert!(refused.is_err(), "the isolated member acknowledged a write");
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("etcdserver: request timed out")
            || message.contains("etcdserver: no leader"),
        "etcd's error for a write without quorum: {message}"
    );
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "the refusal took {:?}",
        started.elapsed()
    );
    let stale = minority.get("p/majority", None).await;
    assert!(
        stale.is_err(),
        "the isolated member answered a linearizable read"
    );
    // Serializable reads on the isolated member still answer (with what it has).
    let local = minority
        .get("p/majority", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable read on the isolated member");
    assert!(
        local.kvs().is_empty(),
        "the isolated member cannot have the majority's write"
    );
    // The isolated member reports no leader.
    let status = cluster
        .status_of(leader)
        .await
        .expect("status of the isolated member");
    assert_eq!(
        status.leader(),
        0,
        "the isolated member still believes in a leader"
    );

    cluster.heal().await;
    wait_until_member_has(&cluster, leader, "p/majority", revision).await;
    assert!(
        minority
            .get("p/minority", None)
            .await
            .expect("read")
            .kvs()
            .is_empty(),
        "the refused write appeared after the partition healed"
    );
    minority
        .put("p/after", "ok", None)
        .await
        .expect("writes through the healed member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_quorum_requests_fail_with_etcds_errors_and_resume_after() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let survivor = (0..3).find(|i| *i != leader).expect("a survivor");
    let mut client = cluster.member_client(survivor).await;
    client
        .put("q/before", "1", None)
        .await
        .expect("write with quorum");
    let mut watcher = cluster.member_client(survivor).await;
    let mut plain_watch =
        compat_tests::watch::open_watch(&mut watcher, "q/", WatchOptions::new().with_prefix())
            .await;
    compat_tests::watch::expect_created(&mut plain_watch, "plain watch").await;
    for i in 0..3 {
        if i != survivor {
            cluster.kill(i);
        }
    }
    let started = Instant::now();
    let refused = client.put("q/none", "x", None).await;
    let message = refused.expect_err("a write without quorum").to_string();
    assert!(
        message.contains("etcdserver: request timed out")
            || message.contains("etcdserver: no leader"),
        "{message} after {:?}; the survivor's log:\n{}",
        started.elapsed(),
        cluster.members[survivor].log_tail()
    );
    assert!(
        started.elapsed() < REQUEST_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
    let stale = client.get("q/before", None).await;
    assert!(
        stale.is_err(),
        "a linearizable read answered without quorum"
    );
    let local = client
        .get("q/before", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable reads keep answering");
    assert_eq!(local.kvs().len(), 1);
    let status = cluster.status_of(survivor).await.expect("status");
    assert_eq!(
        status.leader(),
        0,
        "a member without quorum reports no leader"
    );

    // Quorum returns: everything resumes without restarting the survivor.
    for i in 0..3 {
        if i != survivor {
            cluster.members[i].respawn();
        }
    }
    for i in 0..3 {
        if i != survivor {
            cluster.members[i].wait_ready().await;
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        match client.put("q/after", "2", None).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "writes did not resume: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let event =
        compat_tests::watch::next_message_within(&mut plain_watch, WAIT, "watch after quorum")
            .await;
    assert!(
        event
            .events()
            .iter()
            .any(|e| e.kv().is_some_and(|kv| kv.key() == b"q/after")),
        "the watch on the survivor sees writes again"
    );
}

/// A client of member `i` alone whose requests may wait as long as the server lets them.
async fn patient_client(cluster: &Cluster, i: usize) -> Client {
    let options = default_connect_options().with_timeout(REQUEST_TIMEOUT);
    Client::connect([cluster.members[i].endpoint()], Some(options))
        .await
        .expect("connect to one member")
}

/// Writes in flight through a follower when quorum goes (the leader and the other follower
/// killed under them) fail with etcd's answers for a proposal that cannot commit: a timeout or
/// no leader. Some of them had reached the old leader when it died; keelson used to answer
/// those with "leader changed", and a write handed to the dying leader's connection with the
/// transport's "operation was canceled".
#[tokio::test]
async fn writes_in_flight_when_quorum_goes_fail_with_etcds_errors() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let survivor = (0..3).find(|i| *i != leader).expect("a follower");
    let acked = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = patient_client(&cluster, survivor).await;
        let acked = acked.clone();
        // Each writer puts until its first error: once quorum is gone every put fails.
        writers.push(tokio::spawn(async move {
            for n in 0..100_000usize {
                match client.put(format!("inflight/{w}/{n}"), "v", None).await {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Some(e.to_string()),
                }
            }
            None
        }));
    }
    let deadline = Instant::now() + WAIT;
    while acked.load(Ordering::Relaxed) < 10 * WRITERS {
        assert!(
            Instant::now() < deadline,
            "the writers made {} puts through the follower in {WAIT:?}",
            acked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..3 {
        if i != survivor {
            cluster.kill(i);
        }
    }
    let killed = Instant::now();
    for writer in writers {
        let ended = tokio::time::timeout(REQUEST_TIMEOUT + WAIT, writer)
            .await
            .expect("a writer still waits for its put long after the request timeout")
            .expect("a writer panicked");
        let message = ended.expect("a writer made 100000 puts, none of them after the kill");
        assert!(
            message.contains("etcdserver: request timed out")
                || message.contains("etcdserver: no leader"),
            "a write in flight when quorum went: {message} ({:?} after the kill); the \
             survivor's log:\n{}",
            killed.elapsed(),
            cluster.members[survivor].log_tail()
        );
    }
}

/// Writes a leader appended but could not commit before it was cut off end, once it rejoins
/// and takes the new leader's log (which drops them), with etcd's answer for a proposal whose
/// leader failed: a timeout. keelson used to answer them "leader changed", which etcd gives
/// only to reads. None of them is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_dropped_from_a_cut_off_leaders_log_fail_with_etcds_timeout() {
    if ServerKind::from_env() != ServerKind::Keelson {
        eprintln!("skipped: partitions use keelson's fault hook");
        return;
    }
    let cluster = Cluster::start_with(with_fault_hook(ServerOptions::from_env()), 3).await;
    let leader = cluster.leader().await;
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(patient_client(&cluster, leader).await);
    }
    cluster.partition(&[leader]).await;
    let writers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, mut client)| {
            tokio::spawn(async move {
                let outcome = client.put(format!("cut/{w}"), "v", None).await;
                outcome
                    .map(|r| header_revision(r.header()))
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let new_leader = cluster.wait_for_leader_among(&[leader], WAIT).await;
    cluster.heal().await;
    let mut refused = 0;
    for writer in writers {
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, writer)
            .await
            .expect("a write on the cut-off leader still waits after the request timeout")
            .expect("a writer panicked");
        // A write the old leader refused before appending it goes to the new leader once the
        // partition heals, and may succeed; one it appended can only be dropped.
        if let Err(message) = outcome {
            refused += 1;
            assert!(
                message.contains("etcdserver: request timed out")
                    || message.contains("etcdserver: no leader"),
                "a write pending on a cut-off leader: {message}; its log:\n{}",
                cluster.members[leader].log_tail()
            );
        }
    }
    assert!(
        refused > 0,
        "every write made on the cut-off leader succeeded: none was pending in its log"
    );
    let mut reader = cluster.member_client(new_leader).await;
    let applied = reader
        .get("cut/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read the writes back");
    assert!(
        applied.kvs().len() <= WRITERS - refused,
        "{} of the {WRITERS} writes are applied, but {refused} of them failed",
        applied.kvs().len()
    );
}

/// Keep-alives sent through a follower while the leader dies reach the next leader: a renewal
/// is safe to repeat, and etcd retries it there until its request timeout. keelson used to end
/// the stream of a keep-alive in flight at the kill with "leader changed".
#[tokio::test]
async fn keep_alives_through_a_follower_survive_the_leaders_death() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let renewed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut keepers = Vec::new();
    for _ in 0..WRITERS {
        let mut client = patient_client(&cluster, follower).await;
        let lease = client.lease_grant(60, None).await.expect("grant").id();
        let (mut keeper, mut answers) = client
            .lease_keep_alive(lease)
            .await
            .expect("a keep-alive stream");
        let renewed = renewed.clone();
        let stop = stop.clone();
        keepers.push(tokio::spawn(async move {
            for _ in 0..1_000_000usize {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                keeper.keep_alive().await.map_err(|e| e.to_string())?;
                match answers.message().await {
                    Ok(Some(answer)) if answer.ttl() > 0 => {
                        renewed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(answer)) => return Err(format!("lease gone: TTL {}", answer.ttl())),
                    Ok(None) => return Err("the keep-alive stream ended".to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }));
    }
    let wait_for_renewals = |beyond: usize, what: &'static str| {
        let renewed = renewed.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while renewed.load(Ordering::Relaxed) < beyond + 10 * WRITERS {
                assert!(
                    Instant::now() < deadline,
                    "no renewals {what} within {WAIT:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_renewals(0, "before the kill").await;
    cluster.kill(leader);
    let killed = Instant::now();
    cluster.wait_for_leader_among(&[leader], WAIT).await;
    wait_for_renewals(renewed.load(Ordering::Relaxed), "after the election").await;
    stop.store(true, Ordering::Relaxed);
    for keeper in keepers {
        let ended = tokio::time::timeout(REQUEST_TIMEOUT + WAIT, keeper)
            .await
            .expect("a keeper still waits long after the request timeout")
            .expect("a keeper panicked");
        if let Err(error) = ended {
            panic!(
                "a keep-alive through the follower failed when the leader died: {error} \
                 ({:?} after the kill); the follower's log:\n{}",
                killed.elapsed(),
                cluster.members[follower].log_tail()
            );
        }
    }
}

async fn scrape(cluster: &Cluster, i: usize) -> compat_tests::ops::Scrape {
    let answer = compat_tests::ops::get(
        None,
        &format!("{}/metrics", cluster.members[i].client_url()),
    )
    .await;
    assert_eq!(answer.status, 200, "member {i}: /metrics");
    compat_tests::ops::Scrape::parse(&answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_gauges_follow_leadership_and_peer_traffic() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    cluster
        .client()
        .await
        .put("metrics/k", "v", None)
        .await
        .expect("put");
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(format!("{:x}", cluster.member_id(i).await));
        }
        ids
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let mut leaders = 0.0;
        let mut all_have_leader = true;
        for i in 0..3 {
            let m = scrape(&cluster, i).await;
            leaders += m.value("etcd_server_is_leader", &[]);
            all_have_leader &= m.value("etcd_server_has_leader", &[]) == 1.0;
        }
        if leaders == 1.0 && all_have_leader {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "is_leader/has_leader never settled: {leaders} leaders"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if cluster.kind() == ServerKind::Keelson {
        let m = scrape(&cluster, leader).await;
        for (i, id) in ids.iter().enumerate() {
            if i == leader {
                continue;
            }
            assert!(
                m.value("etcd_network_peer_sent_bytes_total", &[("To", id)]) > 0.0,
                "the leader sent nothing to {id}"
            );
            assert!(
                m.value("etcd_network_peer_received_bytes_total", &[("From", id)]) > 0.0
                    || scrape(&cluster, i).await.value(
                        "etcd_network_peer_received_bytes_total",
                        &[("From", &ids[leader])]
                    ) > 0.0,
                "no bytes counted between the leader and {id}"
            );
        }
        assert_eq!(m.value("etcd_server_is_learner", &[]), 0.0);
    }
    // A leader change is counted by the survivors.
    let survivor = (0..3).find(|i| *i != leader).expect("a survivor");
    let before = scrape(&cluster, survivor)
        .await
        .value("etcd_server_leader_changes_seen_total", &[]);
    cluster.kill(leader);
    cluster.wait_for_leader_among(&[leader], WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let after = scrape(&cluster, survivor)
            .await
            .value("etcd_server_leader_changes_seen_total", &[]);
        if after > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader_changes_seen stayed at {before}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if cluster.kind() == ServerKind::Keelson {
        // The new leader's heartbeats to the killed member cannot be delivered. (etcd counts
        // heartbeats sent late instead, which a loopback cluster rarely sees.)
        let new_leader = cluster.wait_for_leader_among(&[leader], WAIT).await;
        let deadline = Instant::now() + WAIT;
        loop {
            let failures = scrape(&cluster, new_leader)
                .await
                .value("etcd_server_heartbeat_send_failures_total", &[]);
            if failures > 0.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "etcd_server_heartbeat_send_failures_total stayed 0 on the new leader while a \
                 member was down"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Quorum lost: has_leader drops to 0 and /health says so.
    let other = (0..3)
        .find(|i| *i != leader && *i != survivor)
        .expect("a third member");
    cluster.kill(other);
    let deadline = Instant::now() + WAIT;
    loop {
        let m = scrape(&cluster, survivor).await;
        if m.value("etcd_server_has_leader", &[]) == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "has_leader stayed 1 without quorum"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = compat_tests::ops::get(
        None,
        &format!("{}/health", cluster.members[survivor].client_url()),
    )
    .await;
    assert_eq!(
        health.status, 503,
        "/health without a leader: {}",
        health.body
    );
    assert_eq!(health.json()["health"], "false");
    // A linearizable read cannot be confirmed without a quorum: it fails and is counted.
    let failed_before = scrape(&cluster, survivor)
        .await
        .value("etcd_server_read_indexes_failed_total", &[]);
    let mut survivor_client = cluster.member_client(survivor).await;
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        survivor_client.get("metrics/k", None),
    )
    .await
    .expect("a linearizable read without quorum neither failed nor answered within 30 s");
    assert!(
        read.is_err(),
        "a linearizable read without quorum answered: {read:?}"
    );
    if cluster.kind() == ServerKind::Keelson {
        let failed_after = scrape(&cluster, survivor)
            .await
            .value("etcd_server_read_indexes_failed_total", &[]);
        assert!(
            failed_after > failed_before,
            "etcd_server_read_indexes_failed_total stayed at {failed_before} after a failed read"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_survive_the_loss_of_two_including_the_leader() {
    let mut cluster = Cluster::start(5).await;
    let leader = cluster.leader().await;
    let mut client = cluster.client().await;
    client
        .put("five/before", "1", None)
        .await
        .expect("put with five members");
    let other = (0..5).find(|i| *i != leader).expect("another member");
    cluster.kill(leader);
    cluster.kill(other);
    let new_leader = cluster.wait_for_leader_among(&[leader, other], WAIT).await;
    let mut on_new = cluster.member_client(new_leader).await;
    let deadline = Instant::now() + WAIT;
    let revision = loop {
        match on_new.put("five/after", "2", None).await {
            Ok(r) => break header_revision(r.header()),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no write with 3 of 5 members: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for i in (0..5).filter(|i| *i != leader && *i != other) {
        let mut member = cluster.member_client(i).await;
        let got = member
            .get("five/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read");
        assert_eq!(got.kvs().len(), 2, "member {i}");
        assert!(header_revision(got.header()) >= revision);
    }
    cluster.restart(leader).await;
    cluster.restart(other).await;
    assert_all_present_on(
        &cluster,
        leader,
        &[("five/after".into(), "2".into(), revision)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn require_leader_watches_fail_without_a_leader() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let survivor = (0..3).find(|i| *i != leader).expect("a survivor");
    let options = default_connect_options().with_require_leader(true);
    let mut client = Client::connect(
        [cluster.members[survivor].endpoint()],
        Some(options.clone()),
    )
    .await
    .expect("connect with require-leader");
    let mut stream =
        compat_tests::watch::open_watch(&mut client, "rl/", WatchOptions::new().with_prefix())
            .await;
    compat_tests::watch::expect_created(&mut stream, "require-leader watch").await;
    for i in 0..3 {
        if i != survivor {
            cluster.kill(i);
        }
    }
    // The stream is closed with etcd's error once the member has had no leader for a while.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "the stream ended without an error".to_string(),
                Err(e) => return e.to_string(),
            }
        }
    })
    .await
    .expect("the require-leader watch stayed open without a leader");
    assert!(ended.contains("etcdserver: no leader"), "{ended}");
    // A new watch with require-leader is refused at once.
    let again = Client::connect([cluster.members[survivor].endpoint()], Some(options))
        .await
        .expect("connect");
    let refused = again.watch_client().watch("rl/", None).await;
    let message = match refused {
        Ok(mut s) => match s.message().await {
            Err(e) => e.to_string(),
            Ok(m) => format!("answered {m:?}"),
        },
        Err(e) => e.to_string(),
    };
    assert!(message.contains("etcdserver: no leader"), "{message}");
}

/// How long a test watches for a write that must not reach a member: replication that ignored a
/// cut link would deliver it within milliseconds.
const ABSENCE_WINDOW: Duration = Duration::from_secs(1);

/// Waits until member `i` serves `key` at `revision` (a serializable read: its own state).
async fn wait_until_member_has(cluster: &Cluster, i: usize, key: &str, revision: i64) {
    let mut client = cluster.member_client(i).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let read = client
            .get(key, Some(GetOptions::new().with_serializable()))
            .await
            .expect("serializable get");
        if read
            .kvs()
            .first()
            .is_some_and(|kv| kv.mod_revision() == revision)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {i} did not get {key}@{revision} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that member `i` does not get `key` for `ABSENCE_WINDOW`.
async fn assert_stays_without(cluster: &Cluster, i: usize, key: &str, why: &str) {
    let mut client = cluster.member_client(i).await;
    let until = Instant::now() + ABSENCE_WINDOW;
    while Instant::now() < until {
        let read = client
            .get(key, Some(GetOptions::new().with_serializable()))
            .await
            .expect("serializable get");
        assert!(read.kvs().is_empty(), "member {i} got {key}: {why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_cut_at_either_end_stops_replication_on_an_open_stream() {
    if ServerKind::from_env() != ServerKind::Keelson {
        eprintln!("skipped: the cuts use keelson's fault hook");
        return;
    }
    let cluster = Cluster::start_with(with_fault_hook(ServerOptions::from_env()), 3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let mut client = cluster.member_client(leader).await;
    // The leader replicates to the follower on a stream that is open before any cut.
    let first = client.put("cut/first", "1", None).await.expect("put");
    wait_until_member_has(
        &cluster,
        follower,
        "cut/first",
        header_revision(first.header()),
    )
    .await;

    // Each end must stop the stream by itself: the leader stops sending, the follower stops
    // taking what arrives.
    for (cut_at, other, end) in [(leader, follower, "leader"), (follower, leader, "follower")] {
        cluster.cut_links_at(cut_at, &[other]).await;
        let key = format!("cut/at-the-{end}");
        let put = client
            .put(key.as_str(), "x", None)
            .await
            .expect("a write committed by the leader and the other follower");
        assert_stays_without(
            &cluster,
            follower,
            &key,
            &format!("the link was cut at the {end}'s end before the write"),
        )
        .await;
        cluster.heal().await;
        wait_until_member_has(&cluster, follower, &key, header_revision(put.header())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_by_more_than_one_message_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    cluster.kill(follower);
    let mut client = cluster.member_client(leader).await;
    // 12 MiB of entries: more than one AppendEntries carries (8 MiB), so catching up takes
    // several requests, the first of them cut short.
    let mut acked = Vec::new();
    for n in 0..12 {
        let key = format!("behind/{n:02}");
        let value = format!("{n:02}").repeat(512 * 1024);
        let put = client
            .put(key.as_str(), value.as_str(), None)
            .await
            .expect("a 1 MiB put");
        acked.push((key, value, header_revision(put.header())));
    }
    cluster.restart(follower).await;
    // One key at a time: the 12 MiB together are more than a client takes in one answer.
    for (key, value, revision) in &acked {
        wait_until_member_has(&cluster, follower, key, *revision).await;
        let read = cluster
            .member_client(follower)
            .await
            .get(key.as_str(), Some(GetOptions::new().with_serializable()))
            .await
            .expect("serializable get");
        assert_eq!(
            read.kvs().first().map(|kv| kv.value()),
            Some(value.as_bytes()),
            "member {follower}: {key}"
        );
    }
}
