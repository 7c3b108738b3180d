//! v3lock.Lock and v3election.Election through the etcd-client crate's lock and election
//! clients, mixed with etcdctl's client-side `lock` and `elect` recipes on the same names.
//! Every test also runs against the real etcd with `COMPAT_SERVER=etcd`.

use std::process::Stdio;
use std::time::Duration;

use compat_tests::grpc::{assert_grpc_error, Code};
use compat_tests::messages::LEASE_NOT_FOUND;
use compat_tests::server::inherited_env_names;
use compat_tests::Server;
use etcd_client::{Client, GetOptions, LockOptions, ProclaimOptions, ResignOptions};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// The longest a step may take (a lock handed on, a lease expiring, etcdctl printing).
const STEP: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

async fn grant(client: &mut Client, ttl: i64) -> i64 {
    client
        .lease_grant(ttl, None)
        .await
        .expect("lease grant")
        .id()
}

/// The keys under `<name>/`, oldest first.
async fn contenders(client: &mut Client, name: &str) -> Vec<String> {
    let options = GetOptions::new().with_prefix().with_sort(
        etcd_client::SortTarget::Create,
        etcd_client::SortOrder::Ascend,
    );
    let resp = client
        .get(format!("{name}/"), Some(options))
        .await
        .expect("range over the contenders");
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// Waits (bounded) until `<name>/` holds exactly `count` keys.
async fn wait_for_contenders(client: &mut Client, name: &str, count: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let keys = contenders(client, name).await;
        if keys.len() == count {
            return keys;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}/ should hold {count} keys, holds {keys:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn finished<T>(task: JoinHandle<T>) -> T {
    tokio::time::timeout(STEP, task)
        .await
        .expect("the waiter should have been woken")
        .expect("the waiter task")
}

fn lease_key(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

/// Spawns a lock waiter on its own connection.
async fn spawn_lock(server: &Server, name: &str, lease: i64) -> JoinHandle<String> {
    let mut client = server.client().await;
    let name = name.to_string();
    tokio::spawn(async move {
        let resp = client
            .lock(name, Some(LockOptions::new().with_lease(lease)))
            .await
            .expect("lock");
        String::from_utf8_lossy(resp.key()).into_owned()
    })
}

#[tokio::test]
async fn waiters_get_the_lock_in_order_one_release_at_a_time() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let holder = grant(&mut client, 60).await;
    let held = client
        .lock("ordered", Some(LockOptions::new().with_lease(holder)))
        .await
        .expect("uncontended lock");
    assert_eq!(held.key(), lease_key("ordered", holder).as_bytes());
    assert!(held.header().is_some_and(|h| h.revision() > 0));

    let mut waiters = Vec::new();
    for i in 0..3 {
        let lease = grant(&mut client, 60).await;
        waiters.push((lease, spawn_lock(&server, "ordered", lease).await));
        wait_for_contenders(&mut client, "ordered", i + 2).await;
    }
    assert!(waiters.iter().all(|(_, w)| !w.is_finished()));

    let mut release = held.key().to_vec();
    for i in 0..waiters.len() {
        client.unlock(release).await.expect("unlock");
        let (lease, waiter) = waiters.remove(0);
        let key = finished(waiter).await;
        assert_eq!(key, lease_key("ordered", lease), "waiter {i} is next");
        // Only the next waiter was woken: the others still wait behind it.
        let keys = contenders(&mut client, "ordered").await;
        assert_eq!(keys.first(), Some(&key));
        assert!(waiters.iter().all(|(_, w)| !w.is_finished()));
        release = key.into_bytes();
    }
    client.unlock(release).await.expect("last unlock");
    assert!(contenders(&mut client, "ordered").await.is_empty());
}

#[tokio::test]
async fn a_holder_whose_lease_expires_releases_the_lock() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    {
        // The holder's process dies: its connection goes and nothing renews its lease.
        let mut doomed = server.client().await;
        let lease = grant(&mut doomed, 2).await;
        doomed
            .lock("expiring", Some(LockOptions::new().with_lease(lease)))
            .await
            .expect("lock");
    }
    let lease = grant(&mut client, 60).await;
    let waiter = spawn_lock(&server, "expiring", lease).await;
    let key = finished(waiter).await;
    assert_eq!(key, lease_key("expiring", lease));
    assert_eq!(contenders(&mut client, "expiring").await, vec![key]);
}

#[tokio::test]
async fn a_waiter_that_goes_away_removes_its_key() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let holder = grant(&mut client, 60).await;
    client
        .lock("abandoned", Some(LockOptions::new().with_lease(holder)))
        .await
        .expect("lock");
    let lease = grant(&mut client, 60).await;
    let waiter = spawn_lock(&server, "abandoned", lease).await;
    wait_for_contenders(&mut client, "abandoned", 2).await;
    // Dropping the waiter's future closes its RPC (and its connection with the task).
    waiter.abort();
    let keys = wait_for_contenders(&mut client, "abandoned", 1).await;
    assert_eq!(keys, vec![lease_key("abandoned", holder)]);
}

#[tokio::test]
async fn lock_errors_and_the_default_session_are_etcds() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    // etcd's lock server reaches the store through an in-process client: store errors reach
    // the caller as Unknown with their text.
    assert_grpc_error(
        client
            .lock("errors", Some(LockOptions::new().with_lease(0x7777)))
            .await,
        Code::Unknown,
        LEASE_NOT_FOUND,
    );
    // Without a lease, the server makes a session of its own: a 60 s lease nobody renews.
    let resp = client
        .lock("errors", None)
        .await
        .expect("lock without lease");
    let key = String::from_utf8_lossy(resp.key()).into_owned();
    let hex = key.strip_prefix("errors/").expect("key under the name");
    let lease = i64::from_str_radix(hex, 16).expect("a lease ID in hex");
    let ttl = client
        .lease_time_to_live(lease, None)
        .await
        .expect("time to live");
    assert_eq!(ttl.granted_ttl(), 60);
    let unlocked = client.unlock(key).await.expect("unlock");
    assert!(unlocked.header().is_some());
}

/// A long-running etcdctl (`lock`, `elect`) whose output lines are read as they come.
struct Etcdctl {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Etcdctl {
    fn spawn(server: &Server, args: &[&str]) -> Etcdctl {
        let mut command = Command::new(compat_tests::etcdctl::etcdctl_binary());
        for name in inherited_env_names("ETCDCTL_") {
            command.env_remove(name);
        }
        let mut child = command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start etcdctl");
        let stdout = child.stdout.take().expect("etcdctl's stdout");
        Etcdctl {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(STEP, self.lines.next_line())
            .await
            .expect("etcdctl should have printed a line")
            .expect("read etcdctl's output")
            .expect("etcdctl ended without printing")
    }

    /// SIGINT, as a user's Ctrl-C: etcdctl closes its session (revokes its lease) and exits.
    async fn interrupt(mut self) {
        let pid = self.child.id().expect("etcdctl is running");
        let status = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("etcdctl should exit on SIGINT")
            .expect("wait for etcdctl");
    }
}

#[tokio::test]
async fn etcdctl_lock_and_the_lock_service_exclude_each_other() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let lease = grant(&mut client, 60).await;
    let held = client
        .lock("shared", Some(LockOptions::new().with_lease(lease)))
        .await
        .expect("service lock");
    let mut etcdctl = Etcdctl::spawn(&server, &["lock", "shared"]);
    let keys = wait_for_contenders(&mut client, "shared", 2).await;
    client.unlock(held.key()).await.expect("unlock");
    assert_eq!(etcdctl.line().await, keys[1], "etcdctl holds the lock next");

    let lease = grant(&mut client, 60).await;
    let waiter = spawn_lock(&server, "shared", lease).await;
    wait_for_contenders(&mut client, "shared", 2).await;
    assert!(!waiter.is_finished(), "etcdctl still holds the lock");
    etcdctl.interrupt().await;
    assert_eq!(finished(waiter).await, lease_key("shared", lease));
}

/// The value of the next leader change an Observe stream reports.
async fn next_observed(observer: &mut etcd_client::ObserveStream) -> String {
    let message = tokio::time::timeout(STEP, observer.message())
        .await
        .expect("an observed leader change")
        .expect("observe stream")
        .expect("the stream goes on");
    let kv = message.kv().expect("a leader key-value");
    String::from_utf8_lossy(kv.value()).into_owned()
}

#[tokio::test]
async fn campaign_proclaim_observe_leader_and_resign() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    assert_grpc_error(
        client.leader("vote").await,
        Code::Unknown,
        "election: no leader",
    );
    let lease_a = grant(&mut client, 60).await;
    let won = client
        .campaign("vote", "a1", lease_a)
        .await
        .expect("campaign");
    let leader_a = won.leader().expect("leader key").clone();
    assert_eq!(leader_a.key(), lease_key("vote", lease_a).as_bytes());
    assert_eq!(leader_a.lease(), lease_a);
    assert_eq!(leader_a.name(), b"vote");
    // Opened once there is a leader: etcd answers an Observe call only with its first message,
    // and the client waits for that answer before it returns the stream.
    let mut observer = server
        .client()
        .await
        .observe("vote")
        .await
        .expect("observe");
    assert_eq!(next_observed(&mut observer).await, "a1");

    let lease_b = grant(&mut client, 60).await;
    let mut other = server.client().await;
    let candidate = tokio::spawn(async move {
        other
            .campaign("vote", "b1", lease_b)
            .await
            .expect("campaign")
    });
    wait_for_contenders(&mut client, "vote", 2).await;

    client
        .proclaim(
            "a2",
            Some(ProclaimOptions::new().with_leader(leader_a.clone())),
        )
        .await
        .expect("proclaim");
    assert_eq!(next_observed(&mut observer).await, "a2");
    let leader = client.leader("vote").await.expect("leader");
    assert_eq!(leader.kv().map(|kv| kv.value()), Some(&b"a2"[..]));
    assert!(!candidate.is_finished());

    // A leader key of another creation is not the leader.
    let stale = etcd_client::LeaderKey::new()
        .with_name("vote")
        .with_key(lease_key("vote", lease_b));
    assert_grpc_error(
        client
            .proclaim("x", Some(ProclaimOptions::new().with_leader(stale)))
            .await,
        Code::Unknown,
        "election: not leader",
    );
    assert_grpc_error(
        client.proclaim("x", None).await,
        Code::Unknown,
        r#""leader" field must be provided"#,
    );

    client
        .resign(Some(ResignOptions::new().with_leader(leader_a)))
        .await
        .expect("resign");
    let won_b = finished(candidate).await;
    assert_eq!(
        won_b.leader().map(|l| l.key().to_vec()),
        Some(lease_key("vote", lease_b).into_bytes())
    );
    assert_eq!(next_observed(&mut observer).await, "b1");
    let leader = client.leader("vote").await.expect("leader");
    assert_eq!(leader.kv().map(|kv| kv.value()), Some(&b"b1"[..]));
}

#[tokio::test]
async fn etcdctl_elect_and_the_election_service_see_the_same_leader() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let lease = grant(&mut client, 60).await;
    let won = client
        .campaign("mixed", "svc", lease)
        .await
        .expect("campaign");
    let leader = won.leader().expect("leader key").clone();

    let mut listener = Etcdctl::spawn(&server, &["elect", "-l", "mixed"]);
    assert_eq!(listener.line().await, lease_key("mixed", lease));
    assert_eq!(listener.line().await, "svc");

    let mut candidate = Etcdctl::spawn(&server, &["elect", "mixed", "cli"]);
    let keys = wait_for_contenders(&mut client, "mixed", 2).await;
    client
        .resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .expect("resign");
    assert_eq!(candidate.line().await, keys[1]);
    assert_eq!(candidate.line().await, "cli");
    assert_eq!(listener.line().await, keys[1]);
    assert_eq!(listener.line().await, "cli");
    let seen = client.leader("mixed").await.expect("leader");
    assert_eq!(seen.kv().map(|kv| kv.value()), Some(&b"cli"[..]));
    candidate.interrupt().await;
    listener.interrupt().await;
}

#[tokio::test]
async fn lock_and_election_work_across_the_members_of_a_cluster() {
    let cluster = compat_tests::Cluster::start(3).await;
    let leader = cluster.leader().await;
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut on_a = cluster.member_client(a).await;
    let mut on_b = cluster.member_client(b).await;
    let lease_a = grant(&mut on_a, 60).await;
    let held = on_a
        .lock("spread", Some(LockOptions::new().with_lease(lease_a)))
        .await
        .expect("lock on one follower");
    let lease_b = grant(&mut on_b, 60).await;
    let mut waiter_client = cluster.member_client(b).await;
    let waiter = tokio::spawn(async move {
        let resp = waiter_client
            .lock("spread", Some(LockOptions::new().with_lease(lease_b)))
            .await
            .expect("lock on the other follower");
        String::from_utf8_lossy(resp.key()).into_owned()
    });
    wait_for_contenders(&mut on_a, "spread", 2).await;
    assert!(!waiter.is_finished());
    on_a.unlock(held.key()).await.expect("unlock");
    assert_eq!(finished(waiter).await, lease_key("spread", lease_b));

    // The leader, asked through a third member, is the campaign's on another one.
    let won = on_b
        .campaign("spread-vote", "b", lease_b)
        .await
        .expect("campaign");
    assert!(won.leader().is_some());
    let mut on_leader = cluster.member_client(leader).await;
    let seen = on_leader.leader("spread-vote").await.expect("leader");
    assert_eq!(seen.kv().map(|kv| kv.value()), Some(&b"b"[..]));
}
