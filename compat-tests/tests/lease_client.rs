//! The Lease service through the etcd-client crate: grant (IDs, TTL limits, etcd's minimum
//! TTL), revoke (one revision for every attached key), keep-alive (one and many leases per
//! stream), TimeToLive, Leases, keys attached by Put and Txn, and expiry timing.
//!
//! The flood of 10,000 expiring leases lives in `lease_flood.rs`, its own test binary, so that
//! its load does not disturb the timing assertions here (cargo runs test binaries one at a time).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use compat_tests::grpc::Code;
use compat_tests::kv::{current_revision, header_revision};
use compat_tests::lease::{
    collect_deletes, fast_options, grant, grant_id, key_exists, lease_exists, lease_ids,
    poll_until, raw_keep_alive, time_to_live, watch_created, DEFAULT_MIN_TTL, FAST_ELECTION_ARGS,
    FAST_MIN_TTL, LEASE_EXISTS, LEASE_TTL_TOO_LARGE, MAX_LEASE_TTL,
};
use compat_tests::{assert_grpc_error, messages, Server, ServerOptions};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions, PutOptions, Txn,
    TxnOp, WatchFilterType, WatchOptions,
};

/// What the scheduler of a loaded test machine may add on top of a deadline.
const SLACK: Duration = Duration::from_millis(500);

async fn put_leased(client: &mut Client, key: &str, value: &str, lease: i64) -> i64 {
    let response = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap_or_else(|error| panic!("put {key} with lease {lease:x}: {error}"));
    header_revision(response.header())
}

/// The lease field of a key, or `None` when the key does not exist.
async fn lease_of(client: &mut Client, key: &str) -> Option<i64> {
    let response = client.get(key, None).await.expect("get");
    response.kvs().first().map(|kv| kv.lease())
}

// ---------------------------------------------------------------------------------------
// LeaseGrant
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn grant_with_id_zero_picks_unique_positive_ids() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let before = current_revision(&mut client).await;

    let mut ids = HashSet::new();
    for _ in 0..20 {
        let response = client.lease_grant(600, None).await.expect("grant");
        assert!(
            response.id() > 0,
            "a server-picked ID is positive: {}",
            response.id()
        );
        assert_eq!(response.ttl(), 600, "granted TTL");
        assert_eq!(response.error(), "", "no error text in a successful grant");
        assert_eq!(
            header_revision(response.header()),
            before,
            "a grant does not change the store's revision"
        );
        assert!(
            ids.insert(response.id()),
            "ID {:x} given twice",
            response.id()
        );
    }
    // Concurrent grants from several connections must not collide either.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..25 {
                ids.push(grant(&mut client, 600).await);
            }
            ids
        }));
    }
    for task in tasks {
        for id in task.await.expect("grant task") {
            assert!(id > 0, "a server-picked ID is positive: {id}");
            assert!(ids.insert(id), "ID {id:x} given twice");
        }
    }
    let mut expected: Vec<i64> = ids.into_iter().collect();
    expected.sort_unstable();
    assert_eq!(
        lease_ids(&mut client).await,
        expected,
        "LeaseLeases lists every grant"
    );
    assert_eq!(
        current_revision(&mut client).await,
        before,
        "grants left the revision alone"
    );
}

#[tokio::test]
async fn grant_with_a_chosen_id_and_a_taken_id() {
    let server = Server::start_default().await;
    let mut client = server.client().await;

    let response = client
        .lease_grant(600, Some(LeaseGrantOptions::new().with_id(4242)))
        .await
        .expect("grant a chosen ID");
    assert_eq!((response.id(), response.ttl()), (4242, 600));

    assert_grpc_error(
        client
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(4242)))
            .await,
        Code::FailedPrecondition,
        LEASE_EXISTS,
    );
    let ttl = time_to_live(&mut client, 4242, false).await;
    assert_eq!(
        ttl.granted_ttl, 600,
        "a refused grant leaves the lease as it was"
    );

    // A server-picked ID never lands on a taken one, and a revoked ID can be granted again.
    let picked = grant(&mut client, 600).await;
    assert_ne!(picked, 4242);
    client.lease_revoke(4242).await.expect("revoke");
    assert_eq!(
        grant_id(&mut client, 60, 4242).await,
        4242,
        "a revoked ID is free again"
    );
    assert_eq!(time_to_live(&mut client, 4242, false).await.granted_ttl, 60);
}

#[tokio::test]
async fn a_negative_chosen_id_works_like_any_other() {
    // etcd refuses only ID 0 (it means "pick one"); a negative ID is a valid lease.
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let id = -3;
    assert_eq!(grant_id(&mut client, 600, id).await, id);
    put_leased(&mut client, "neg/k", "v", id).await;
    assert_eq!(lease_of(&mut client, "neg/k").await, Some(id));
    let positive = grant(&mut client, 600).await;
    let mut expected = vec![id, positive];
    expected.sort_unstable();
    assert_eq!(lease_ids(&mut client).await, expected);
    assert_eq!(time_to_live(&mut client, id, true).await.keys, ["neg/k"]);
    client.lease_revoke(id).await.expect("revoke a negative ID");
    assert!(!key_exists(&mut client, "neg/k").await);
    assert_eq!(lease_ids(&mut client).await, vec![positive]);
}

#[tokio::test]
async fn grant_ttl_limits_are_etcds() {
    let server = Server::start_default().await;
    let mut client = server.client().await;

    assert_grpc_error(
        client.lease_grant(MAX_LEASE_TTL + 1, None).await,
        Code::OutOfRange,
        LEASE_TTL_TOO_LARGE,
    );
    assert_grpc_error(
        client
            .lease_grant(MAX_LEASE_TTL + 1, Some(LeaseGrantOptions::new().with_id(7)))
            .await,
        Code::OutOfRange,
        LEASE_TTL_TOO_LARGE,
    );
    assert!(
        !lease_exists(&mut client, 7).await,
        "a refused grant creates nothing"
    );

    let largest = client
        .lease_grant(MAX_LEASE_TTL, None)
        .await
        .expect("the largest TTL");
    assert_eq!(largest.ttl(), MAX_LEASE_TTL);
    let ttl = time_to_live(&mut client, largest.id(), false).await;
    assert_eq!(ttl.granted_ttl, MAX_LEASE_TTL);
    assert!(
        ttl.ttl > MAX_LEASE_TTL - 10 && ttl.ttl <= MAX_LEASE_TTL,
        "remaining TTL of the largest lease: {}",
        ttl.ttl
    );
    assert_eq!(lease_ids(&mut client).await, vec![largest.id()]);
}

/// Grants `ttl` and returns the granted TTL, checked against TimeToLive.
async fn granted(client: &mut Client, ttl: i64) -> i64 {
    let response = client
        .lease_grant(ttl, None)
        .await
        .unwrap_or_else(|error| panic!("grant TTL {ttl}: {error}"));
    let seen = time_to_live(client, response.id(), false).await;
    assert_eq!(
        seen.granted_ttl,
        response.ttl(),
        "TimeToLive's granted TTL is the one the grant answered"
    );
    response.ttl()
}

#[tokio::test]
async fn ttl_below_the_minimum_is_raised_to_it() {
    // The minimum is ceil(1.5 × election timeout): 2 s by default, 1 s with a 100 ms election
    // timeout, 8 s with 5000 ms (heartbeat 100 ms: 75 ticks of 100 ms = 7.5 s, rounded up).
    let (default, fast, slow) = tokio::join!(
        Server::start_default(),
        Server::start(fast_options()),
        Server::start(ServerOptions::from_env().args(["--election-timeout", "5000"])),
    );
    let (mut default, mut fast, mut slow) =
        tokio::join!(default.client(), fast.client(), slow.client());

    for (asked, expected) in [(0, 2), (1, 2), (2, 2), (3, 3), (60, 60)] {
        assert_eq!(
            granted(&mut default, asked).await,
            expected,
            "default timings: TTL {asked} (minimum {DEFAULT_MIN_TTL})"
        );
    }
    for (asked, expected) in [(0, 1), (1, 1), (2, 2)] {
        assert_eq!(
            granted(&mut fast, asked).await,
            expected,
            "{FAST_ELECTION_ARGS:?}: TTL {asked} (minimum {FAST_MIN_TTL})"
        );
    }
    for (asked, expected) in [(1, 8), (5, 8), (7, 8), (8, 8), (9, 9)] {
        assert_eq!(
            granted(&mut slow, asked).await,
            expected,
            "--election-timeout 5000: TTL {asked} (minimum 8)"
        );
    }
}

#[tokio::test]
async fn a_negative_ttl_is_raised_to_the_minimum() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    assert_eq!(granted(&mut client, -5).await, DEFAULT_MIN_TTL);
}

// ---------------------------------------------------------------------------------------
// LeaseRevoke
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn revoke_deletes_every_attached_key_in_one_revision() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let lease = grant(&mut client, 600).await;
    let other = grant(&mut client, 600).await;
    let keys = ["rv/a", "rv/b", "rv/c", "rv/d", "rv/e"];
    let mut put_revisions = BTreeMap::new();
    for key in keys {
        put_revisions.insert(
            key,
            put_leased(&mut client, key, &format!("v-{key}"), lease).await,
        );
    }
    client
        .put("rv/plain", "x", None)
        .await
        .expect("put without lease");
    put_leased(&mut client, "rv/other", "y", other).await;
    let before = current_revision(&mut client).await;

    let mut watch = watch_created(
        &mut client,
        "rv/",
        WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(before + 1),
    )
    .await;
    let response = client.lease_revoke(lease).await.expect("revoke");
    assert_eq!(
        header_revision(response.header()),
        before + 1,
        "the revoke's header carries the revision of its deletes"
    );

    let deletes = collect_deletes(&mut watch, keys.len(), Duration::from_secs(10)).await;
    let mut seen_keys: Vec<&str> = deletes.iter().map(|d| d.key.as_str()).collect();
    seen_keys.sort();
    assert_eq!(seen_keys, keys, "one DELETE per attached key, nothing else");
    for delete in &deletes {
        assert_eq!(
            delete.mod_revision,
            before + 1,
            "DELETE {} revision",
            delete.key
        );
        assert_eq!(
            delete.response, 0,
            "all DELETEs of one revision arrive in one response"
        );
        let prev = delete.prev.as_ref().expect("prev_kv on a DELETE");
        assert_eq!(
            (prev.0.as_str(), prev.1.clone(), prev.3, prev.5),
            (
                delete.key.as_str(),
                format!("v-{}", delete.key),
                put_revisions[delete.key.as_str()],
                lease
            ),
            "prev_kv of {}",
            delete.key
        );
    }
    assert_eq!(
        current_revision(&mut client).await,
        before + 1,
        "exactly one revision"
    );
    for key in keys {
        assert!(!key_exists(&mut client, key).await, "{key} deleted");
    }
    assert!(
        key_exists(&mut client, "rv/plain").await,
        "a key without lease stays"
    );
    assert_eq!(
        lease_of(&mut client, "rv/other").await,
        Some(other),
        "another lease's key stays"
    );
    assert_eq!(
        time_to_live(&mut client, lease, true).await.ttl,
        -1,
        "the lease is gone"
    );
    assert_eq!(lease_ids(&mut client).await, vec![other]);
}

#[tokio::test]
async fn revoking_a_lease_without_keys_leaves_the_revision() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    client.put("k", "v", None).await.expect("put");
    let lease = grant(&mut client, 600).await;
    let before = current_revision(&mut client).await;
    let response = client.lease_revoke(lease).await.expect("revoke");
    assert_eq!(
        header_revision(response.header()),
        before,
        "nothing was deleted"
    );
    assert_eq!(current_revision(&mut client).await, before);
    assert!(!lease_exists(&mut client, lease).await);
}

#[tokio::test]
async fn revoking_an_unknown_lease_is_not_found() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    assert_grpc_error(
        client.lease_revoke(12345).await,
        Code::NotFound,
        messages::LEASE_NOT_FOUND,
    );
    let lease = grant(&mut client, 600).await;
    client.lease_revoke(lease).await.expect("first revoke");
    assert_grpc_error(
        client.lease_revoke(lease).await,
        Code::NotFound,
        messages::LEASE_NOT_FOUND,
    );
}

// ---------------------------------------------------------------------------------------
// LeaseKeepAlive
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_keeps_a_lease_alive_past_its_ttl() {
    let server = Server::start(fast_options()).await;
    let mut client = server.client().await;
    const TTL: i64 = 2;
    let lease = grant(&mut client, TTL).await;
    put_leased(&mut client, "ka/key", "v", lease).await;
    let granted_at = Instant::now();

    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.expect("keep-alive");
    assert_eq!(keeper.id(), lease);
    // Renew every half second for 2.5 TTLs: without the renewals it would have expired twice.
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    while granted_at.elapsed() < Duration::from_secs(TTL as u64) * 5 / 2 {
        pace.tick().await;
        keeper.keep_alive().await.expect("send a keep-alive");
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("a keep-alive answer within 5 s")
            .expect("keep-alive stream")
            .expect("keep-alive stream still open");
        assert_eq!(
            (answer.id(), answer.ttl()),
            (lease, TTL),
            "keep-alive answer"
        );
        assert!(
            answer.header().is_some(),
            "keep-alive answers carry a header"
        );
    }
    assert!(
        key_exists(&mut client, "ka/key").await,
        "the key outlived its TTL"
    );
    let remaining = time_to_live(&mut client, lease, false).await.ttl;
    assert!((0..=TTL).contains(&remaining), "remaining TTL {remaining}");

    // Without renewals it expires, and the same stream then answers TTL 0.
    let stopped = Instant::now();
    poll_until(
        Duration::from_secs(TTL as u64) + Duration::from_secs(1) + SLACK * 2,
        "the lease expires once keep-alives stop",
        || {
            let mut client = client.clone();
            async move { (!lease_exists(&mut client, lease).await).then_some(()) }
        },
    )
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(TTL as u64) - Duration::from_millis(600),
        "expired {:?} after the last keep-alive, before its TTL",
        stopped.elapsed()
    );
    assert!(
        !key_exists(&mut client, "ka/key").await,
        "expiry deleted the key"
    );
    keeper
        .keep_alive()
        .await
        .expect("send a keep-alive for the expired lease");
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("an answer within 5 s")
        .expect("keep-alive stream")
        .expect("keep-alive stream still open");
    assert_eq!(
        (answer.id(), answer.ttl()),
        (lease, 0),
        "an expired lease is answered TTL 0"
    );
}

#[tokio::test]
async fn keep_alive_of_a_lease_older_than_a_checkpoint_answers_its_ttl() {
    // keelson records remaining TTLs through raft every 5 s for leases that aged 5 s, and a
    // keep-alive clears such a record through raft before answering. After 13 s a lease of
    // 20 s has certainly been recorded once; a keep-alive must still just answer TTL 20, on a
    // stream of many leases as on a stream of one.
    const TTL: i64 = 20;
    let server = Server::start_default().await;
    let mut client = server.client().await;
    for id in [1, 2] {
        grant_id(&mut client, TTL, id).await;
    }
    let lease = grant(&mut client, TTL).await;
    put_leased(&mut client, "old/k", "v", lease).await;
    poll_until(Duration::from_secs(16), "the leases aged 13 s", || {
        let mut client = client.clone();
        async move { (time_to_live(&mut client, lease, false).await.ttl <= TTL - 13).then_some(()) }
    })
    .await;

    let answers = raw_keep_alive(&server, &[1, 2]).await;
    let answers: Vec<(i64, i64)> = answers.iter().map(|a| (a.id, a.ttl)).collect();
    assert_eq!(
        answers,
        [(1, TTL), (2, TTL)],
        "keep-alives of two old leases on one stream"
    );

    let (mut keeper, mut answers) = client
        .lease_keep_alive(lease)
        .await
        .expect("the first keep-alive of an old lease");
    keeper.keep_alive().await.expect("send a second keep-alive");
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("an answer within 5 s")
        .expect("the keep-alive stream stays up")
        .expect("the keep-alive stream stays open");
    assert_eq!((answer.id(), answer.ttl()), (lease, TTL));
    for id in [1, 2, lease] {
        let remaining = time_to_live(&mut client, id, false).await.ttl;
        assert!(
            remaining >= TTL - 1,
            "lease {id:x} renewed: {remaining} s left"
        );
    }
}

#[tokio::test]
async fn keep_alive_stream_carries_many_leases() {
    let server = Server::start(fast_options()).await;
    let mut client = server.client().await;
    const TTL: i64 = 4;
    let live: Vec<i64> = (1..=10).collect();
    for &id in &live {
        grant_id(&mut client, TTL, id).await;
    }
    grant_id(&mut client, TTL, 20).await;
    client.lease_revoke(20).await.expect("revoke lease 20");
    client.put("marker", "x", None).await.expect("put");
    let revision = current_revision(&mut client).await;

    // Let them age so that the renewal shows.
    poll_until(Duration::from_secs(5), "lease 1 has aged by 2 s", || {
        let mut client = client.clone();
        async move { (time_to_live(&mut client, 1, false).await.ttl <= TTL - 2).then_some(()) }
    })
    .await;

    let mut sent = live.clone();
    sent.extend([99, 20, 5]);
    let answers = raw_keep_alive(&server, &sent).await;
    assert_eq!(
        answers.len(),
        sent.len(),
        "one answer per request: {answers:?}"
    );
    for (asked, answer) in sent.iter().zip(&answers) {
        let expected_ttl = if live.contains(asked) { TTL } else { 0 };
        assert_eq!(
            (answer.id, answer.ttl),
            (*asked, expected_ttl),
            "answer to a keep-alive of lease {asked} (99: never granted, 20: revoked)"
        );
        assert_eq!(
            answer.header_revision,
            Some(revision),
            "header of the answer to {asked}"
        );
        assert_ne!(answer.header_member_id, Some(0), "member_id in the header");
    }
    for &id in &live {
        let remaining = time_to_live(&mut client, id, false).await.ttl;
        assert!(
            remaining >= TTL - 1,
            "lease {id} renewed: remaining {remaining}"
        );
    }
    assert!(
        !lease_exists(&mut client, 99).await,
        "a keep-alive creates no lease"
    );
}

#[tokio::test]
async fn keep_alive_of_an_unknown_lease_is_refused_by_the_client() {
    // etcd-client turns the first answer's TTL 0 into an error.
    let server = Server::start_default().await;
    let mut client = server.client().await;
    match client.lease_keep_alive(777).await {
        Err(etcd_client::Error::LeaseKeepAliveError(message)) => {
            assert_eq!(message, "lease not found")
        }
        other => panic!("keep-alive of an unknown lease: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// LeaseTimeToLive and LeaseLeases
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn time_to_live_with_and_without_keys() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let lease = grant(&mut client, 30).await;
    for key in ["ttl/b", "ttl/a", "ttl/c"] {
        put_leased(&mut client, key, "v", lease).await;
    }
    client.put("ttl/plain", "v", None).await.expect("put");

    let plain = time_to_live(&mut client, lease, false).await;
    assert_eq!(plain.granted_ttl, 30);
    assert!(
        (28..=30).contains(&plain.ttl),
        "remaining TTL right after grant: {}",
        plain.ttl
    );
    assert!(
        plain.keys.is_empty(),
        "no keys unless asked: {:?}",
        plain.keys
    );

    let with_keys = time_to_live(&mut client, lease, true).await;
    assert_eq!(with_keys.granted_ttl, 30);
    assert_eq!(with_keys.keys, ["ttl/a", "ttl/b", "ttl/c"]);

    // The remaining TTL goes down with time and never up.
    let first = with_keys.ttl;
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut last = first;
    while last == first {
        assert!(
            Instant::now() < deadline,
            "the remaining TTL stayed {first} for 4 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = time_to_live(&mut client, lease, false).await.ttl;
        assert!(now <= last, "remaining TTL went up from {last} to {now}");
        last = now;
    }
    assert!(last >= first - 4, "remaining {last} within 4 s of {first}");

    for with_keys in [false, true] {
        let unknown = time_to_live(&mut client, 987654, with_keys).await;
        assert_eq!(
            (unknown.ttl, unknown.granted_ttl, unknown.keys.len()),
            (-1, 0, 0),
            "TimeToLive of an unknown lease (keys: {with_keys})"
        );
    }
    client.lease_revoke(lease).await.expect("revoke");
    assert_eq!(
        time_to_live(&mut client, lease, true).await.ttl,
        -1,
        "revoked lease"
    );
}

#[tokio::test]
async fn leases_lists_the_live_leases() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    assert_eq!(
        lease_ids(&mut client).await,
        Vec::<i64>::new(),
        "a fresh server has none"
    );
    let a = grant(&mut client, 600).await;
    let b = grant_id(&mut client, 600, 77).await;
    let c = grant(&mut client, 600).await;
    client.lease_revoke(a).await.expect("revoke");
    let mut expected = vec![b, c];
    expected.sort_unstable();
    assert_eq!(lease_ids(&mut client).await, expected);
}

// ---------------------------------------------------------------------------------------
// Keys on leases
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn put_attaches_plain_put_and_delete_detach_ignore_lease_keeps() {
    let server = Server::start(fast_options()).await;
    let mut client = server.client().await;
    const TTL: i64 = 2;
    let short = grant(&mut client, TTL).await;
    let long = grant(&mut client, 600).await;

    put_leased(&mut client, "p/attached", "v", short).await;
    put_leased(&mut client, "p/detached", "v", short).await;
    client
        .put("p/detached", "v2", None)
        .await
        .expect("plain put");
    put_leased(&mut client, "p/ignore", "v", short).await;
    client
        .put(
            "p/ignore",
            "v2",
            Some(PutOptions::new().with_ignore_lease()),
        )
        .await
        .expect("put with ignore_lease");
    put_leased(&mut client, "p/deleted", "v", short).await;
    client.delete("p/deleted", None).await.expect("delete");
    client
        .put("p/deleted", "again", None)
        .await
        .expect("put again");
    put_leased(&mut client, "p/moved", "v", short).await;
    put_leased(&mut client, "p/moved", "v2", long).await;

    assert_eq!(lease_of(&mut client, "p/attached").await, Some(short));
    assert_eq!(lease_of(&mut client, "p/detached").await, Some(0));
    assert_eq!(lease_of(&mut client, "p/ignore").await, Some(short));
    assert_eq!(lease_of(&mut client, "p/deleted").await, Some(0));
    assert_eq!(lease_of(&mut client, "p/moved").await, Some(long));
    assert_eq!(
        time_to_live(&mut client, short, true).await.keys,
        ["p/attached", "p/ignore"],
        "the short lease's keys"
    );
    assert_eq!(
        time_to_live(&mut client, long, true).await.keys,
        ["p/moved"]
    );

    // Errors leave the key alone.
    let before = current_revision(&mut client).await;
    assert_grpc_error(
        client
            .put("p/attached", "x", Some(PutOptions::new().with_lease(555)))
            .await,
        Code::NotFound,
        messages::LEASE_NOT_FOUND,
    );
    assert_grpc_error(
        client
            .put(
                "p/attached",
                "x",
                Some(PutOptions::new().with_lease(long).with_ignore_lease()),
            )
            .await,
        Code::InvalidArgument,
        messages::LEASE_PROVIDED,
    );
    assert_eq!(
        current_revision(&mut client).await,
        before,
        "failed puts change nothing"
    );

    poll_until(
        Duration::from_secs(TTL as u64 + 5),
        "the short lease expires",
        || {
            let mut client = client.clone();
            async move { (!lease_exists(&mut client, short).await).then_some(()) }
        },
    )
    .await;
    let survivors = client
        .get("p/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .expect("range");
    let survivors: Vec<String> = compat_tests::kv::keys(&survivors);
    assert_eq!(
        survivors,
        ["p/deleted", "p/detached", "p/moved"],
        "expiry deletes the attached keys (attached, ignore) and only them"
    );
}

#[tokio::test]
async fn txn_puts_honour_leases() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let lease = grant(&mut client, 600).await;
    client
        .put("t/old", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");

    let response = client
        .txn(Txn::new().and_then([
            TxnOp::put("t/a", "1", Some(PutOptions::new().with_lease(lease))),
            TxnOp::put("t/b", "2", Some(PutOptions::new().with_lease(lease))),
            TxnOp::put("t/c", "3", None),
            TxnOp::delete("t/old", None),
        ]))
        .await
        .expect("txn with leased puts");
    assert!(response.succeeded());
    assert_eq!(lease_of(&mut client, "t/a").await, Some(lease));
    assert_eq!(lease_of(&mut client, "t/b").await, Some(lease));
    assert_eq!(lease_of(&mut client, "t/c").await, Some(0));
    assert_eq!(
        time_to_live(&mut client, lease, true).await.keys,
        ["t/a", "t/b"]
    );

    // A compare on the lease, as kube-apiserver's guaranteed updates may issue.
    let response = client
        .txn(
            Txn::new()
                .when([Compare::lease("t/a", CompareOp::Equal, lease)])
                .and_then([TxnOp::put(
                    "t/a",
                    "1b",
                    Some(PutOptions::new().with_ignore_lease()),
                )]),
        )
        .await
        .expect("txn comparing the lease");
    assert!(response.succeeded(), "Compare LEASE equal");
    assert_eq!(lease_of(&mut client, "t/a").await, Some(lease));

    // One put with an unknown lease fails the whole txn, and nothing of it is applied.
    let before = current_revision(&mut client).await;
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([
                TxnOp::put("t/d", "4", None),
                TxnOp::put("t/e", "5", Some(PutOptions::new().with_lease(424242))),
            ]))
            .await,
        Code::NotFound,
        messages::LEASE_NOT_FOUND,
    );
    assert_eq!(
        current_revision(&mut client).await,
        before,
        "the failed txn changed nothing"
    );
    assert!(
        !key_exists(&mut client, "t/d").await,
        "no op of the failed txn was applied"
    );

    // Only the branch that runs is checked: an unknown lease in the other one is harmless.
    let response = client
        .txn(
            Txn::new()
                .when([Compare::version("t/a", CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    "t/f",
                    "6",
                    Some(PutOptions::new().with_lease(424242)),
                )])
                .or_else([TxnOp::get("t/a", None)]),
        )
        .await
        .expect("txn whose other branch names an unknown lease");
    assert!(!response.succeeded());
    assert_eq!(current_revision(&mut client).await, before);

    // A txn delete detaches: revoking the lease no longer touches the deleted-and-recreated key.
    client
        .txn(Txn::new().and_then([TxnOp::delete("t/b", Some(DeleteOptions::new()))]))
        .await
        .expect("txn delete");
    client.put("t/b", "new", None).await.expect("put");
    client.lease_revoke(lease).await.expect("revoke");
    assert!(
        !key_exists(&mut client, "t/a").await,
        "t/a was on the lease"
    );
    assert_eq!(
        lease_of(&mut client, "t/b").await,
        Some(0),
        "t/b was detached by the delete"
    );
    assert!(key_exists(&mut client, "t/c").await);
}

// ---------------------------------------------------------------------------------------
// Expiry timing
// ---------------------------------------------------------------------------------------

/// When a lease's deadline can have started: the server starts it when the grant (or the
/// keep-alive) is handled, somewhere between sending the request and receiving the answer.
#[derive(Clone, Copy, Debug)]
struct Window {
    sent: Instant,
    answered: Instant,
}

#[tokio::test]
async fn expiry_happens_within_a_second_of_the_deadline() {
    let server = Server::start(fast_options()).await;
    let mut client = server.client().await;
    let start = current_revision(&mut client).await;
    let mut watch = watch_created(
        &mut client,
        "exp/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(start + 1)
            .with_filters([WatchFilterType::NoPut]),
    )
    .await;

    // (key, ttl, window of the last renewal)
    let mut plan = Vec::new();
    for ttl in [1i64, 2, 3] {
        let sent = Instant::now();
        let lease = grant(&mut client, ttl).await;
        let answered = Instant::now();
        let key = format!("exp/ttl{ttl}");
        put_leased(&mut client, &key, "v", lease).await;
        plan.push((key, ttl, Window { sent, answered }));
    }
    // A lease renewed once: its deadline runs from the keep-alive.
    let renewed = grant(&mut client, 2).await;
    put_leased(&mut client, "exp/renewed", "v", renewed).await;
    let (mut keeper, mut answers) = client.lease_keep_alive(renewed).await.expect("keep-alive");
    poll_until(
        Duration::from_secs(3),
        "the renewed lease aged a second",
        || {
            let mut client = client.clone();
            async move { (time_to_live(&mut client, renewed, false).await.ttl <= 1).then_some(()) }
        },
    )
    .await;
    let sent = Instant::now();
    keeper.keep_alive().await.expect("send keep-alive");
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("keep-alive answer within 5 s")
        .expect("keep-alive stream")
        .expect("open stream");
    let answered = Instant::now();
    assert_eq!(answer.ttl(), 2);
    plan.push(("exp/renewed".to_string(), 2, Window { sent, answered }));

    let deletes = collect_deletes(&mut watch, plan.len(), Duration::from_secs(15)).await;
    let mut report = Vec::new();
    for (key, ttl, window) in &plan {
        let delete = deletes
            .iter()
            .find(|d| &d.key == key)
            .unwrap_or_else(|| panic!("no DELETE of {key}"));
        let ttl = Duration::from_secs(*ttl as u64);
        let earliest = window.sent + ttl;
        let latest = window.answered + ttl + Duration::from_secs(1) + SLACK;
        report.push(format!(
            "{key}: deleted {:?} after its deadline",
            delete.at.saturating_duration_since(window.answered + ttl)
        ));
        assert!(
            delete.at >= earliest,
            "{key} expired early: {:?} before its TTL ran out",
            earliest - delete.at
        );
        assert!(
            delete.at <= latest,
            "{key} expired late: {:?} after TTL + 1 s + {SLACK:?}",
            delete.at - latest
        );
    }
    eprintln!(
        "expiry timing on {}: {}",
        server.kind().name(),
        report.join("; ")
    );
}
