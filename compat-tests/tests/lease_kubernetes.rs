//! The Kubernetes lease pattern: kube-apiserver grants one lease and reuses it for up to 1000
//! objects (events, endpoint records), creating them with `Txn If(mod_revision(k) == 0)
//! Then(Put k v lease)` and updating with `Txn If(mod_revision(k) == R) Then(Put k v lease)`.
//! When the lease expires every key must disappear in ONE revision, and a watcher with prev_kv
//! must see 1000 DELETE events of that revision, each with the exact previous pair: the
//! apiserver's watch cache aborts without prev_kv.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compat_tests::kv::{current_revision, header_revision};
use compat_tests::lease::{
    collect_deletes, fast_options, grant, lease_exists, time_to_live, watch_created, SeenDelete,
};
use compat_tests::Server;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

const KEYS: usize = 1000;
/// Kept alive while the objects are created, then left to expire.
const TTL: i64 = 3;
const CREATORS: usize = 32;
const PREFIX: &str = "/registry/events/default/";

fn key_of(index: usize) -> String {
    format!("{PREFIX}event-{index:04}")
}

/// `(value, create_revision, mod_revision, version, lease)` of a stored key.
type Stored = (String, i64, i64, i64, i64);

/// Creates (and for every tenth key updates) the objects the way kube-apiserver does.
async fn create_objects(server: &Server, lease: i64) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CREATORS {
        let mut client = server.client().await;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= KEYS {
                    return;
                }
                let key = key_of(index);
                let leased = || Some(PutOptions::new().with_lease(lease));
                let created = client
                    .txn(
                        Txn::new()
                            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(key.clone(), format!("v1-{index}"), leased())])
                            .or_else([TxnOp::get(key.clone(), None)]),
                    )
                    .await
                    .unwrap_or_else(|error| panic!("create {key}: {error}"));
                assert!(created.succeeded(), "{key} did not exist");
                if index.is_multiple_of(10) {
                    let revision = header_revision(created.header());
                    let updated = client
                        .txn(
                            Txn::new()
                                .when([Compare::mod_revision(
                                    key.clone(),
                                    CompareOp::Equal,
                                    revision,
                                )])
                                .and_then([TxnOp::put(
                                    key.clone(),
                                    format!("v2-{index}"),
                                    leased(),
                                )])
                                .or_else([TxnOp::get(key.clone(), None)]),
                        )
                        .await
                        .unwrap_or_else(|error| panic!("update {key}: {error}"));
                    assert!(updated.succeeded(), "{key} was at revision {revision}");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("creator task");
    }
}

/// Every key under the prefix, as stored.
async fn stored_objects(client: &mut etcd_client::Client) -> BTreeMap<String, Stored> {
    let response = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .expect("list the objects");
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                compat_tests::json::bytes_text(kv.key()),
                (
                    compat_tests::json::bytes_text(kv.value()),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                ),
            )
        })
        .collect()
}

/// The DELETEs must be one per object, all of `revision`, in one response, each with the exact
/// previous pair.
#[track_caller]
fn assert_one_revision_of_deletes(
    who: &str,
    deletes: &[SeenDelete],
    expected: &BTreeMap<String, Stored>,
    revision: i64,
) {
    assert_eq!(
        deletes.len(),
        expected.len(),
        "{who}: number of DELETE events"
    );
    let mut seen = BTreeMap::new();
    for delete in deletes {
        assert_eq!(
            delete.mod_revision, revision,
            "{who}: DELETE of {} is not of the expiry's revision",
            delete.key
        );
        assert_eq!(
            delete.response, 0,
            "{who}: the DELETEs of one revision span responses"
        );
        assert_eq!(
            delete.header_revision, revision,
            "{who}: header revision of the response"
        );
        assert_eq!(
            delete.other_fields,
            (0, 0, 0, 0),
            "{who}: a DELETE's kv carries only key and mod_revision ({})",
            delete.key
        );
        let (key, value, create, modified, version, lease) = delete
            .prev
            .clone()
            .unwrap_or_else(|| panic!("{who}: DELETE of {} without prev_kv", delete.key));
        assert_eq!(key, delete.key, "{who}: prev_kv key");
        assert!(
            seen.insert(key, (value, create, modified, version, lease))
                .is_none(),
            "{who}: {} deleted twice",
            delete.key
        );
    }
    if &seen != expected {
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(key, stored)| seen.get(*key) != Some(stored))
            .take(5)
            .map(|(key, stored)| format!("{key}: stored {stored:?}, prev_kv {:?}", seen.get(key)))
            .collect();
        panic!("{who}: prev_kv differs from the stored pairs, e.g. {wrong:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_of_a_lease_shared_by_1000_keys_deletes_them_in_one_revision() {
    let server = Server::start(fast_options()).await;
    let mut client = server.client().await;
    let lease = grant(&mut client, TTL).await;

    // Keep the lease alive while the objects are created.
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.expect("keep-alive");
    let mut creating = Box::pin(create_objects(&server, lease));
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::select! {
            () = &mut creating => break,
            _ = pace.tick() => {
                assert!(Instant::now() < setup_deadline, "creating {KEYS} objects took over 60 s");
                keeper.keep_alive().await.expect("send a keep-alive");
                let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
                    .await
                    .expect("keep-alive answer within 5 s")
                    .expect("keep-alive stream")
                    .expect("open keep-alive stream");
                assert_eq!(answer.ttl(), TTL, "the lease is alive while objects are created");
            }
        }
    }
    client
        .put(format!("{PREFIX}unleased"), "x", None)
        .await
        .expect("put");

    let mut expected = stored_objects(&mut client).await;
    assert!(expected.remove(&format!("{PREFIX}unleased")).is_some());
    assert_eq!(expected.len(), KEYS, "every object was created");
    assert!(
        expected.values().all(|stored| stored.4 == lease),
        "every object is on the lease"
    );
    assert_eq!(
        expected.values().filter(|stored| stored.3 == 2).count(),
        KEYS / 10,
        "every tenth object was updated once"
    );
    assert_eq!(
        time_to_live(&mut client, lease, true).await.keys.len(),
        KEYS
    );
    let before = current_revision(&mut client).await;

    let mut watch = watch_created(
        &mut client,
        PREFIX,
        WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(before + 1),
    )
    .await;
    // The last renewal: the lease may expire TTL seconds from here, not earlier.
    keeper.keep_alive().await.expect("send the last keep-alive");
    let last_renewal = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("keep-alive answer within 5 s")
        .expect("keep-alive stream")
        .expect("open keep-alive stream");
    assert_eq!(answer.ttl(), TTL);
    let answered = Instant::now();

    let deletes = collect_deletes(
        &mut watch,
        KEYS,
        Duration::from_secs(TTL as u64) + Duration::from_secs(10),
    )
    .await;
    let expired_at = deletes.iter().map(|d| d.at).min().expect("deletes");
    assert!(
        expired_at >= last_renewal + Duration::from_secs(TTL as u64),
        "the lease expired {:?} early",
        last_renewal + Duration::from_secs(TTL as u64) - expired_at
    );
    eprintln!(
        "1000-key lease on {}: DELETEs arrived {:?} after the deadline",
        server.kind().name(),
        expired_at.saturating_duration_since(answered + Duration::from_secs(TTL as u64))
    );
    assert_one_revision_of_deletes("live watcher", &deletes, &expected, before + 1);

    assert_eq!(
        current_revision(&mut client).await,
        before + 1,
        "one revision for 1000 deletes"
    );
    assert!(!lease_exists(&mut client, lease).await, "the lease is gone");
    let left = stored_objects(&mut client).await;
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        [&format!("{PREFIX}unleased")],
        "only the key without lease is left"
    );

    // A watcher that starts after the expiry replays the same revision from history.
    let mut replay = watch_created(
        &mut client,
        PREFIX,
        WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(before + 1),
    )
    .await;
    let replayed = collect_deletes(&mut replay, KEYS, Duration::from_secs(10)).await;
    assert_one_revision_of_deletes("replaying watcher", &replayed, &expected, before + 1);
}
