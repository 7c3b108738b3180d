//! Leases across a SIGKILL and restart: leases and their keys survive, revoked and expired ones
//! stay gone, acknowledged grants survive a kill under load, and remaining TTLs are neither
//! reset to the full TTL nor shortened.
//!
//! keelson checkpoints remaining TTLs through raft every 5 s and restarts each lease from its
//! checkpoint; etcd 3.4 keeps remaining TTLs in memory only and restarts every lease from its
//! full TTL. Assertions that differ are chosen by `server.kind()`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compat_tests::kv::{current_revision, header_revision};
use compat_tests::lease::{
    fast_options, grant, grant_id, key_exists, lease_exists, lease_ids, poll_until, time_to_live,
};
use compat_tests::server::default_connect_options;
use compat_tests::{Server, ServerKind};
use etcd_client::{Client, GetOptions, PutOptions};

const SLACK: Duration = Duration::from_millis(500);

async fn put_leased(client: &mut Client, key: &str, lease: i64) {
    client
        .put(
            key,
            format!("v-{key}"),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap_or_else(|error| panic!("put {key} with lease {lease:x}: {error}"));
}

async fn lease_of(client: &mut Client, key: &str) -> Option<i64> {
    let response = client.get(key, None).await.expect("get");
    response.kvs().first().map(|kv| kv.lease())
}

/// Waits until TimeToLive reports at most `ttl` seconds left.
async fn wait_remaining_at_most(client: &Client, lease: i64, ttl: i64, timeout: Duration) {
    poll_until(
        timeout,
        &format!("lease {lease:x} has at most {ttl} s left"),
        || {
            let mut client = client.clone();
            async move { (time_to_live(&mut client, lease, false).await.ttl <= ttl).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn leases_and_their_keys_survive_sigkill() {
    let mut server = Server::start(fast_options()).await;
    let mut client = server.client().await;
    let kept = grant(&mut client, 600).await;
    put_leased(&mut client, "r/a", kept).await;
    put_leased(&mut client, "r/b", kept).await;
    let chosen = grant_id(&mut client, 600, 77).await;
    put_leased(&mut client, "r/c", chosen).await;
    let revoked = grant(&mut client, 600).await;
    put_leased(&mut client, "r/d", revoked).await;
    client.lease_revoke(revoked).await.expect("revoke");
    let expired = grant(&mut client, 1).await;
    put_leased(&mut client, "r/e", expired).await;
    client.put("r/plain", "x", None).await.expect("put");
    poll_until(Duration::from_secs(5), "the 1 s lease expires", || {
        let mut client = client.clone();
        async move { (!lease_exists(&mut client, expired).await).then_some(()) }
    })
    .await;
    let revision = current_revision(&mut client).await;

    server.restart().await;
    let mut client = server.client().await;

    let mut expected = vec![kept, chosen];
    expected.sort_unstable();
    assert_eq!(
        lease_ids(&mut client).await,
        expected,
        "the live leases survived, only them"
    );
    let ttl = time_to_live(&mut client, kept, true).await;
    assert_eq!(
        (ttl.granted_ttl, ttl.keys),
        (600, vec!["r/a".into(), "r/b".into()])
    );
    assert_eq!(time_to_live(&mut client, chosen, true).await.keys, ["r/c"]);
    for gone in [revoked, expired] {
        assert_eq!(
            time_to_live(&mut client, gone, false).await.ttl,
            -1,
            "lease {gone:x}"
        );
    }
    assert_eq!(
        current_revision(&mut client).await,
        revision,
        "revision after restart"
    );
    assert_eq!(lease_of(&mut client, "r/a").await, Some(kept));
    assert_eq!(lease_of(&mut client, "r/c").await, Some(chosen));
    assert_eq!(lease_of(&mut client, "r/plain").await, Some(0));
    assert!(
        !key_exists(&mut client, "r/d").await,
        "a revoked lease's key stays deleted"
    );
    assert!(
        !key_exists(&mut client, "r/e").await,
        "an expired lease's key stays deleted"
    );

    // The leases still work: new IDs do not collide, keep-alive, attach, revoke.
    let fresh = grant(&mut client, 600).await;
    assert!(
        !expected.contains(&fresh),
        "a new lease reuses ID {fresh:x}"
    );
    let (_keeper, _answers) = client
        .lease_keep_alive(kept)
        .await
        .expect("keep-alive after restart");
    put_leased(&mut client, "r/f", chosen).await;
    assert_eq!(
        time_to_live(&mut client, chosen, true).await.keys,
        ["r/c", "r/f"]
    );
    let response = client
        .lease_revoke(kept)
        .await
        .expect("revoke after restart");
    assert_eq!(
        header_revision(response.header()),
        revision + 2,
        "one revision for r/a and r/b"
    );
    assert!(!key_exists(&mut client, "r/a").await && !key_exists(&mut client, "r/b").await);
}

#[tokio::test]
async fn remaining_ttl_is_not_reset_by_a_restart() {
    const TTL: i64 = 60;
    let mut server = Server::start_default().await;
    let mut client = server.client().await;
    let sent = Instant::now();
    let lease = grant(&mut client, TTL).await;
    put_leased(&mut client, "ttl/k", lease).await;
    // keelson checkpoints every 5 s the leases that aged 5 s or more: after 10 s one was written.
    wait_remaining_at_most(&client, lease, TTL - 11, Duration::from_secs(15)).await;

    server.restart().await;
    let mut client = server.client().await;
    let after = time_to_live(&mut client, lease, true).await;
    let elapsed = sent.elapsed().as_secs() as i64;
    assert_eq!(after.granted_ttl, TTL);
    assert_eq!(after.keys, ["ttl/k"]);
    match server.kind() {
        ServerKind::Keelson => {
            // From the last checkpoint (written 5 s or more after the grant), never shorter
            // than what was truly left.
            assert!(
                after.ttl <= TTL - 5,
                "remaining TTL after restart {} s: reset towards the full {TTL} s",
                after.ttl
            );
            assert!(
                after.ttl >= TTL - elapsed - 1,
                "remaining TTL after restart {} s, but {elapsed} s of {TTL} s had passed: it \
                 would expire early",
                after.ttl
            );
        }
        ServerKind::Etcd => {
            // etcd 3.4 keeps remaining TTLs in memory only: a restarted member starts every
            // lease from its full TTL.
            assert!(
                after.ttl >= TTL - 2,
                "etcd restarted the lease at {} s",
                after.ttl
            );
        }
    }
}

#[tokio::test]
async fn a_renewed_lease_does_not_expire_early_after_a_restart() {
    const TTL: i64 = 20;
    let mut server = Server::start_default().await;
    let mut client = server.client().await;
    let lease = grant(&mut client, TTL).await;
    put_leased(&mut client, "renewed/k", lease).await;
    // Old enough that a checkpoint recorded a remaining TTL of at most 15 s ...
    wait_remaining_at_most(&client, lease, TTL - 11, Duration::from_secs(15)).await;
    // ... which the keep-alive makes stale: the lease has its full TTL again.
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.expect("keep-alive");
    keeper.keep_alive().await.expect("send a keep-alive");
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("keep-alive answer within 5 s")
        .expect("keep-alive stream")
        .expect("open stream");
    assert_eq!(answer.ttl(), TTL);
    let renewed = Instant::now();
    drop((keeper, answers));

    server.restart().await;
    let restarted = Instant::now();
    let mut client = server.client().await;
    let after = time_to_live(&mut client, lease, false).await.ttl;
    let since_renewal = renewed.elapsed().as_secs() as i64;
    assert!(
        after >= TTL - since_renewal - 1,
        "{after} s left after the restart, {since_renewal} s after a renewal to {TTL} s"
    );

    // Alive until (almost) TTL after the renewal, checked all along ...
    let alive_until = renewed + Duration::from_secs(TTL as u64) - Duration::from_secs(2);
    while Instant::now() < alive_until {
        assert!(
            key_exists(&mut client, "renewed/k").await,
            "the lease expired {:?} after its renewal to {TTL} s (restart {:?} after it)",
            renewed.elapsed(),
            restarted - renewed
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // ... and then it does expire: both servers run it from at most its full TTL at restart.
    poll_until(
        (restarted + Duration::from_secs(TTL as u64) + Duration::from_secs(1) + SLACK * 2)
            .saturating_duration_since(Instant::now()),
        "the renewed lease expires",
        || {
            let mut client = client.clone();
            async move { (!key_exists(&mut client, "renewed/k").await).then_some(()) }
        },
    )
    .await;
    assert!(!lease_exists(&mut client, lease).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remaining_ttls_of_many_leases_survive_a_restart() {
    // More leases than keelson records in one raft entry (1000): every one of them must be
    // recorded, not only the first batch.
    const LEASES: usize = 2500;
    const TTL: i64 = 60;
    let mut server = Server::start_default().await;
    let client = server.client().await;
    let sent = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut leases = Vec::new();
            for _ in 0..LEASES / 16 + 1 {
                let lease = grant(&mut client, TTL).await;
                leases.push((Instant::now(), lease));
            }
            leases
        }));
    }
    let mut granted = Vec::new();
    for task in tasks {
        granted.extend(task.await.expect("grant task"));
    }
    granted.truncate(LEASES);
    let leases: Vec<i64> = granted.iter().map(|(_, lease)| *lease).collect();
    let (_, newest) = *granted
        .iter()
        .max_by_key(|(at, _)| *at)
        .expect("leases were granted");
    // The leader records, every 5 s, the leases that aged at least 5 s, so the round that
    // records the newest lease starts at most 10 s after its grant (a lease granted just after
    // a round is too young for the next one). TimeToLive rounds down: "at most TTL - 16 left"
    // means more than 15 s since the grant, one whole round after that recording round started
    // for its entries to be applied. (Waiting for TTL - 11, "more than 10 s", left no margin
    // at all in the worst phase, and twice the last ~500 leases were not recorded yet.)
    wait_remaining_at_most(&client, newest, TTL - 16, Duration::from_secs(30)).await;

    server.restart().await;
    let client = server.client().await;
    let elapsed = sent.elapsed().as_secs() as i64;
    let mut tasks = Vec::new();
    for chunk in leases.chunks(LEASES / 8) {
        let mut client = client.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut remaining = Vec::new();
            for lease in chunk {
                remaining.push((lease, time_to_live(&mut client, lease, false).await.ttl));
            }
            remaining
        }));
    }
    let mut remaining = Vec::new();
    for task in tasks {
        remaining.extend(task.await.expect("TimeToLive task"));
    }
    let lost: Vec<_> = remaining.iter().filter(|(_, ttl)| *ttl == -1).collect();
    assert!(
        lost.is_empty(),
        "{} leases lost by the restart, e.g. {:?}",
        lost.len(),
        lost[0]
    );
    let early: Vec<_> = remaining
        .iter()
        .filter(|(_, ttl)| *ttl < TTL - elapsed - 1)
        .collect();
    assert!(
        early.is_empty(),
        "{} leases shortened, e.g. {:?}",
        early.len(),
        early[0]
    );
    let reset: Vec<_> = remaining.iter().filter(|(_, ttl)| *ttl > TTL - 5).collect();
    match server.kind() {
        ServerKind::Keelson => assert!(
            reset.is_empty(),
            "{} of {LEASES} leases restarted from (almost) their full TTL after {elapsed} s, \
             e.g. {:x?}",
            reset.len(),
            reset[0]
        ),
        // etcd 3.4 restarts every lease from its full TTL.
        ServerKind::Etcd => assert_eq!(reset.len(), LEASES, "etcd resets every lease"),
    }
}

/// The raft index of the member's Status.
async fn raft_index(client: &mut Client) -> u64 {
    client.status().await.expect("Status").raft_index()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_renewed_while_their_ttl_is_recorded_do_not_expire_early_after_a_restart() {
    // keelson records the remaining TTLs of leases that aged 5 s, every 5 s, through raft. A
    // record taken just before a renewal and applied just after it must not outlive the
    // renewal, or the restarted member expires the lease about 10 s early.
    //
    // To make renewals race with a recording, the recording rhythm is observed first: with no
    // other writes, a probe lease's first record shows as a raft index bump. 1000 leases
    // granted right after it are first recorded one rhythm (5 s) after the next, and are
    // renewed one by one, densely, around that moment. (etcd 3.4 records nothing: the
    // renewals are then spread over the 6 s in which a recording could happen.)
    const LEASES: usize = 1000;
    const TTL: i64 = 20;
    const RENEWERS: usize = 16;
    const RHYTHM: Duration = Duration::from_secs(5);
    let mut server = Server::start_default().await;
    let mut client = server.client().await;
    grant(&mut client, 60).await;
    let before = raft_index(&mut client).await;
    let deadline = Instant::now() + RHYTHM * 2 + Duration::from_secs(1);
    let mut recorded_at = None;
    while Instant::now() < deadline {
        if raft_index(&mut client).await > before {
            recorded_at = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if server.kind() == ServerKind::Keelson {
        assert!(
            recorded_at.is_some(),
            "no lease TTL was recorded within {:?}",
            RHYTHM * 2
        );
    }

    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut leases = Vec::new();
            for _ in 0..LEASES / 10 {
                leases.push(grant(&mut client, TTL).await);
            }
            leases
        }));
    }
    let mut leases = Vec::new();
    for task in tasks {
        leases.extend(task.await.expect("grant task"));
    }
    let granted = Instant::now();
    let (window_start, window) = match recorded_at {
        // Recordings at recorded_at + k·5 s: the first one with these leases 5 s old.
        Some(at) => {
            let mut first = at + RHYTHM;
            while first < granted + RHYTHM {
                first += RHYTHM;
            }
            (
                first - Duration::from_millis(100),
                Duration::from_millis(300),
            )
        }
        None => (
            granted + Duration::from_millis(4500),
            Duration::from_secs(6),
        ),
    };

    let mut tasks = Vec::new();
    for renewer in 0..RENEWERS {
        let mut client = server.client().await;
        let mine: Vec<(usize, i64)> = leases
            .iter()
            .copied()
            .enumerate()
            .filter(|(index, _)| index % RENEWERS == renewer)
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut renewed = Vec::new();
            let mut errors = Vec::new();
            for (index, lease) in mine {
                let at = window_start + window * index as u32 / LEASES as u32;
                tokio::time::sleep_until(at.into()).await;
                let sent = Instant::now();
                if let Err(error) = client.lease_keep_alive(lease).await {
                    errors.push(format!("{lease:x}: {error}"));
                }
                renewed.push((lease, sent));
            }
            (renewed, errors)
        }));
    }
    let mut renewed = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        let (r, e) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("renewals finish")
            .expect("renew task");
        renewed.extend(r);
        errors.extend(e);
    }

    server.restart().await;
    let mut client = server.client().await;
    let mut early = Vec::new();
    for (lease, sent) in &renewed {
        let ttl = time_to_live(&mut client, *lease, false).await.ttl;
        let since = sent.elapsed().as_secs() as i64;
        if ttl < TTL - since - 1 {
            early.push(format!(
                "{lease:x}: {ttl} s left {since} s after a renewal to {TTL} s"
            ));
        }
    }
    // Failed keep-alives are named in both messages: a renewal that failed half-way (renewed,
    // but its recorded TTL not cleared) is one way for a lease to come back short.
    assert!(
        early.is_empty(),
        "{} of {LEASES} leases would expire early after the restart: {:?}; {} keep-alives \
         failed: {:?}",
        early.len(),
        &early[..early.len().min(5)],
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(
        errors.is_empty(),
        "{} of {LEASES} keep-alives failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
}

const GRANTERS: usize = 16;
const TARGET_ACKS: usize = 2_000;
const KEY_PREFIX: &str = "crash-lease/";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_grants_and_attaches_survive_sigkill_under_load() {
    let mut server = Server::start_default().await;
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let options = default_connect_options().with_timeout(Duration::from_secs(5));
    let mut tasks = Vec::new();
    for granter in 0..GRANTERS {
        let mut client = server.client_with(options.clone()).await;
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // (lease, key attached to it, if acknowledged)
            let mut acks: Vec<(i64, Option<String>)> = Vec::new();
            for sequence in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(response) = client.lease_grant(600, None).await else {
                    break;
                };
                acks.push((response.id(), None));
                acked.fetch_add(1, Ordering::Relaxed);
                let key = format!("{KEY_PREFIX}{granter:02}/{sequence:05}");
                let options = PutOptions::new().with_lease(response.id());
                if client.put(key.clone(), "v", Some(options)).await.is_err() {
                    break;
                }
                acks.last_mut().expect("just pushed").1 = Some(key);
            }
            acks
        }));
    }
    poll_until(
        Duration::from_secs(30),
        "enough grants were acknowledged",
        || {
            let acked = acked.load(Ordering::Relaxed);
            async move { (acked >= TARGET_ACKS).then_some(()) }
        },
    )
    .await;
    server.kill();
    stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    for task in tasks {
        let finished = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("granters notice the kill within 30 s")
            .expect("granter task");
        acks.extend(finished);
    }

    server.restart().await;
    let mut client = server.client().await;
    let leases: BTreeSet<i64> = lease_ids(&mut client).await.into_iter().collect();
    let missing: Vec<i64> = acks
        .iter()
        .map(|(lease, _)| *lease)
        .filter(|lease| !leases.contains(lease))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged grants lost, e.g. {:x?}",
        missing.len(),
        acks.len(),
        &missing[..missing.len().min(5)]
    );
    let stored: BTreeMap<String, i64> = client
        .get(KEY_PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .expect("range")
        .kvs()
        .iter()
        .map(|kv| (compat_tests::json::bytes_text(kv.key()), kv.lease()))
        .collect();
    for (lease, key) in &acks {
        if let Some(key) = key {
            assert_eq!(stored.get(key), Some(lease), "acknowledged attach of {key}");
        }
    }
    for (key, lease) in &stored {
        assert!(
            leases.contains(lease),
            "{key} is attached to a lease that does not exist"
        );
    }
    eprintln!(
        "{}: {} grants and {} attaches acknowledged before the kill; {} leases after restart",
        server.kind().name(),
        acks.len(),
        acks.iter().filter(|(_, key)| key.is_some()).count(),
        leases.len()
    );
}
