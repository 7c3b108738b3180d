//! The Watch service through the etcd-client crate, one test per rule of
//! shared/etcd-compat.md section 4: created before events, client-chosen IDs, many watches on a
//! stream, every key-range form, history replay and its seam with live events, compaction,
//! future start revisions, prev_kv, DELETE events, txn atomicity, filters, cancel, fragments,
//! progress notifications and progress requests. Each test starts its own member.
//!
//! Waits are bounded ([`WATCH_TIMEOUT`] per message); the absence of a message is never
//! shown by waiting, but by a later message that must come first (a fence).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compat_tests::kv::{current_revision, header_revision, put};
use compat_tests::watch::{
    events_of, expect_created, next_message, open_watch, read_events, summary, Ev, Kind, Kv, Resp,
    WATCH_TIMEOUT,
};
use compat_tests::{Server, ServerKind, ServerOptions};
use etcd_client::{
    Client, CompactionOptions, DeleteOptions, Txn, TxnOp, WatchFilterType, WatchOptions,
    WatchStream,
};

const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

async fn start() -> (Server, Client) {
    let server = Server::start_default().await;
    let client = server.client().await;
    (server, client)
}

async fn start_with(args: &[&str]) -> (Server, Client) {
    let server = Server::start(ServerOptions::from_env().args(args.iter().copied())).await;
    let client = server.client().await;
    (server, client)
}

async fn next(stream: &mut WatchStream, what: &str) -> Resp {
    Resp::of(&next_message(stream, what).await)
}

async fn txn(client: &mut Client, ops: Vec<TxnOp>) -> i64 {
    let response = client
        .txn(Txn::new().and_then(ops))
        .await
        .unwrap_or_else(|error| panic!("txn: {error}"));
    header_revision(response.header())
}

async fn delete(client: &mut Client, key: &str, options: Option<DeleteOptions>) -> i64 {
    let response = client
        .delete(key, options)
        .await
        .unwrap_or_else(|error| panic!("delete {key}: {error}"));
    header_revision(response.header())
}

fn put_kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Kv {
    Kv {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: 0,
    }
}

fn keys_of(events: &[Ev]) -> Vec<String> {
    events
        .iter()
        .map(|event| String::from_utf8_lossy(&event.kv.key).into_owned())
        .collect()
}

/// Reads responses until every watch in `expected` received that many events; any other
/// message, or an event beyond the count, fails the test.
async fn read_per_watch(
    stream: &mut WatchStream,
    expected: &HashMap<i64, usize>,
    what: &str,
) -> HashMap<i64, Vec<Resp>> {
    let total: usize = expected.values().sum();
    let mut got: HashMap<i64, Vec<Resp>> = HashMap::new();
    let mut seen = 0;
    while seen < total {
        let response = next(stream, &format!("{what}: {seen} of {total} events so far")).await;
        let want = expected.get(&response.watch_id).copied().unwrap_or(0);
        assert!(
            !response.events.is_empty() && !response.created && !response.canceled,
            "{what}: expected events, got {response}"
        );
        let responses = got.entry(response.watch_id).or_default();
        let before: usize = responses.iter().map(|r| r.events.len()).sum();
        assert!(
            before + response.events.len() <= want,
            "{what}: watch {} expected {want} events, got more: {response}",
            response.watch_id
        );
        seen += response.events.len();
        responses.push(response);
    }
    got
}

// ---------------------------------------------------------------------------------------
// Created, IDs, many watches
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn created_answer_comes_before_any_event_of_the_watch() {
    let (_server, mut client) = start().await;
    for i in 0..3 {
        put(&mut client, "k", format!("v{i}")).await;
    }
    let current = current_revision(&mut client).await;

    // Events from the past exist when the watch is created: created still comes first, and
    // carries the current revision.
    let mut stream = open_watch(&mut client, "k", WatchOptions::new().with_start_revision(2)).await;
    let created = expect_created(&mut stream, "watch k from revision 2").await;
    assert_eq!(created.header_revision, current, "created header revision");
    let events = events_of(&read_events(&mut stream, created.watch_id, 3, "replay of k").await);
    assert_eq!(
        summary(&events),
        [
            (Kind::Put, "k".into(), "v0".into()),
            (Kind::Put, "k".into(), "v1".into()),
            (Kind::Put, "k".into(), "v2".into()),
        ]
    );

    // A second watch on the same stream while its key is being written: nothing of it may
    // arrive before its created answer.
    let writes = 200;
    let mut writer = client.clone();
    let writer = tokio::spawn(async move {
        for i in 0..writes {
            put(&mut writer, "k2", format!("w{i}")).await;
        }
    });
    stream
        .watch(
            "k2",
            Some(WatchOptions::new().with_watch_id(5).with_start_revision(2)),
        )
        .await
        .expect("send the second create");
    let mut created_seen = false;
    let mut events_of_5 = 0;
    while events_of_5 < writes {
        let response = next(&mut stream, "second watch, while k2 is written").await;
        assert_eq!(
            response.watch_id, 5,
            "only watch 5 has anything to say: {response}"
        );
        if response.created {
            assert!(!created_seen, "watch 5 created twice");
            assert!(!response.canceled, "watch 5 refused: {response}");
            created_seen = true;
        } else {
            assert!(
                created_seen,
                "an event of watch 5 came before its created answer: {response}"
            );
            events_of_5 += response.events.len();
        }
    }
    writer.await.expect("writer");
}

#[tokio::test]
async fn client_chosen_watch_id_is_honoured_and_a_taken_one_refused() {
    let (_server, mut client) = start().await;
    let mut stream = open_watch(&mut client, "k", WatchOptions::new().with_watch_id(7)).await;
    let created = expect_created(&mut stream, "watch with id 7").await;
    assert_eq!(created.watch_id, 7, "the client-chosen ID");

    stream
        .watch("k", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .expect("send a second create with id 7");
    let refused = next(&mut stream, "second create with id 7").await;
    assert!(
        refused.created && refused.canceled,
        "a taken ID is answered created + canceled: {refused}"
    );
    assert_eq!(refused.cancel_reason, DUPLICATE_WATCH_ID);
    assert_eq!(
        refused.watch_id, -1,
        "etcd answers a refused create with watch ID -1"
    );

    // The refusal did not add a watcher: one put of k gives exactly one event (for 7); the
    // fence watch's event proves nothing else was queued before it.
    stream
        .watch("fence", Some(WatchOptions::new().with_watch_id(8)))
        .await
        .expect("create the fence watch");
    assert_eq!(expect_created(&mut stream, "fence watch").await.watch_id, 8);
    put(&mut client, "k", "v").await;
    put(&mut client, "fence", "f").await;
    let first = next(&mut stream, "event of k").await;
    assert_eq!(
        (first.watch_id, keys_of(&first.events)),
        (7, vec!["k".to_string()])
    );
    let second = next(&mut stream, "event of fence").await;
    assert_eq!(
        (second.watch_id, keys_of(&second.events)),
        (8, vec!["fence".to_string()]),
        "after k's single event comes the fence"
    );

    // IDs are per stream: 7 is free on another stream.
    let mut other = open_watch(&mut client, "k", WatchOptions::new().with_watch_id(7)).await;
    assert_eq!(
        expect_created(&mut other, "id 7 on another stream")
            .await
            .watch_id,
        7
    );
}

#[tokio::test]
async fn automatic_watch_ids_skip_client_chosen_ones() {
    let (_server, mut client) = start().await;
    let mut stream = open_watch(&mut client, "a", WatchOptions::new().with_watch_id(1)).await;
    assert_eq!(expect_created(&mut stream, "id 1").await.watch_id, 1);
    let mut ids = Vec::new();
    for key in ["b", "c", "d"] {
        stream
            .watch(key, Some(WatchOptions::new()))
            .await
            .expect("create with an automatic ID");
        ids.push(expect_created(&mut stream, key).await.watch_id);
    }
    assert_eq!(
        ids,
        [0, 2, 3],
        "automatic IDs count from 0 and skip the taken 1"
    );
}

#[tokio::test]
async fn many_watches_share_one_stream() {
    let (_server, mut client) = start().await;
    const WATCHES: i64 = 50;
    let mut stream = open_watch(
        &mut client,
        "m/",
        WatchOptions::new().with_prefix().with_watch_id(1000),
    )
    .await;
    expect_created(&mut stream, "prefix watch").await;
    for i in 0..WATCHES {
        stream
            .watch(
                format!("m/{i:02}"),
                Some(WatchOptions::new().with_watch_id(i)),
            )
            .await
            .expect("create a key watch");
        let created = expect_created(&mut stream, "key watch").await;
        assert_eq!(created.watch_id, i);
    }

    // One txn touching every key: each key watch gets its key, the prefix watch all of them
    // in one response.
    let revision = txn(
        &mut client,
        (0..WATCHES)
            .map(|i| TxnOp::put(format!("m/{i:02}"), format!("v{i}"), None))
            .collect(),
    )
    .await;
    let mut expected: HashMap<i64, usize> = (0..WATCHES).map(|i| (i, 1)).collect();
    expected.insert(1000, WATCHES as usize);
    let got = read_per_watch(&mut stream, &expected, "one txn over 50 watched keys").await;
    for i in 0..WATCHES {
        let events = events_of(&got[&i]);
        assert_eq!(
            summary(&events),
            [(Kind::Put, format!("m/{i:02}"), format!("v{i}"))],
            "watch {i}"
        );
        assert_eq!(events[0].revision(), revision);
    }
    assert_eq!(
        got[&1000].len(),
        1,
        "the prefix watch gets the txn in one response"
    );
    assert_eq!(got[&1000][0].events.len(), WATCHES as usize);

    // Cancel the even watches: the next txn reaches only the odd ones (and the prefix).
    for i in (0..WATCHES).step_by(2) {
        stream.cancel(i).await.expect("send cancel");
        let canceled = next(&mut stream, "cancel answer").await;
        assert!(
            canceled.canceled && canceled.watch_id == i,
            "cancel of {i}: {canceled}"
        );
    }
    txn(
        &mut client,
        (0..WATCHES)
            .map(|i| TxnOp::put(format!("m/{i:02}"), "again", None))
            .collect(),
    )
    .await;
    let mut expected: HashMap<i64, usize> = (1..WATCHES).step_by(2).map(|i| (i, 1)).collect();
    expected.insert(1000, WATCHES as usize);
    let got = read_per_watch(&mut stream, &expected, "second txn").await;
    assert!(
        got.keys().all(|id| *id == 1000 || id % 2 == 1),
        "canceled watches got events"
    );
}

// ---------------------------------------------------------------------------------------
// Key ranges
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn key_range_prefix_from_key_and_all_keys_forms() {
    let (_server, mut client) = start().await;
    let forms: [(i64, &str, WatchOptions); 5] = [
        (1, "b", WatchOptions::new()),
        (2, "a", WatchOptions::new().with_range("c")),
        (3, "a", WatchOptions::new().with_prefix()),
        (4, "b", WatchOptions::new().with_from_key()),
        (5, "", WatchOptions::new().with_all_keys()),
    ];
    let mut stream: Option<WatchStream> = None;
    for (id, key, options) in forms {
        let options = options.with_watch_id(id);
        match stream.as_mut() {
            None => stream = Some(open_watch(&mut client, key, options).await),
            Some(stream) => stream.watch(key, Some(options)).await.expect("create"),
        }
        let stream = stream.as_mut().expect("opened");
        assert_eq!(expect_created(stream, "create").await.watch_id, id);
    }
    let mut stream = stream.expect("opened");

    for key in ["0", "a", "ab", "b", "c", "abc", "zzz"] {
        put(&mut client, key, "v").await;
    }
    // The last write touches every watch, so each one's events end there and anything it
    // should not have received would show up before.
    let last = txn(
        &mut client,
        vec![TxnOp::put("az", "v", None), TxnOp::put("b", "last", None)],
    )
    .await;

    let expected: BTreeMap<i64, Vec<&str>> = BTreeMap::from([
        (1, vec!["b", "b"]),
        (2, vec!["a", "ab", "b", "abc", "az", "b"]),
        (3, vec!["a", "ab", "abc", "az"]),
        (4, vec!["b", "c", "zzz", "b"]),
        (5, vec!["0", "a", "ab", "b", "c", "abc", "zzz", "az", "b"]),
    ]);
    let counts = expected
        .iter()
        .map(|(id, keys)| (*id, keys.len()))
        .collect();
    let got = read_per_watch(&mut stream, &counts, "every range form").await;
    for (id, keys) in &expected {
        let responses = &got[id];
        assert_eq!(&keys_of(&events_of(responses)), keys, "watch {id}");
        let final_response = responses.last().expect("events");
        assert!(
            final_response.events.iter().all(|e| e.revision() == last),
            "watch {id}: the txn's events come together in the last response: {final_response}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------------------

/// Puts in a loop, recording `revision -> (key, value)`, until `total` puts were made in
/// all by every writer sharing `done`.
async fn record_puts(
    mut client: Client,
    writer: usize,
    total: usize,
    done: Arc<AtomicUsize>,
    log: Arc<Mutex<BTreeMap<i64, (String, String)>>>,
) {
    let mut sequence = 0;
    while done.fetch_add(1, Ordering::SeqCst) < total {
        sequence += 1;
        let key = format!("s/{}", (writer * 7 + sequence) % 20);
        let value = format!("w{writer}-{sequence}");
        let revision = put(&mut client, key.clone(), value.clone()).await;
        log.lock().expect("log").insert(revision, (key, value));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_start_revision_replays_then_goes_live_without_gap_or_duplicate() {
    let (_server, mut client) = start().await;
    let log: Arc<Mutex<BTreeMap<i64, (String, String)>>> = Arc::default();

    // History first: 600 puts from four writers.
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4 {
        writers.spawn(record_puts(
            client.clone(),
            writer,
            600,
            done.clone(),
            log.clone(),
        ));
    }
    while writers.join_next().await.is_some() {}

    // Then writers keep going while the watch replays from revision 2: the seam between
    // replay and live events falls somewhere in the middle of these writes.
    let done = Arc::new(AtomicUsize::new(0));
    for writer in 0..2 {
        writers.spawn(record_puts(
            client.clone(),
            writer + 10,
            400,
            done.clone(),
            log.clone(),
        ));
    }
    let started = Instant::now();
    while done.load(Ordering::SeqCst) < 20 {
        assert!(
            started.elapsed() < WATCH_TIMEOUT,
            "the live writers did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut stream = open_watch(
        &mut client,
        "s/",
        WatchOptions::new().with_prefix().with_start_revision(2),
    )
    .await;
    let created = expect_created(&mut stream, "watch from revision 2").await;
    while writers.join_next().await.is_some() {}
    let log = log.lock().expect("log").clone();
    let final_revision = *log.keys().last().expect("writes");
    assert_eq!(log.len(), 1000);
    assert_eq!(
        log.keys().copied().collect::<Vec<_>>(),
        (2..=final_revision).collect::<Vec<_>>(),
        "every put has its own revision"
    );
    assert!(
        created.header_revision < final_revision,
        "writes went on after the watch was created (created at {}, last write {final_revision})",
        created.header_revision
    );

    let events =
        events_of(&read_events(&mut stream, created.watch_id, log.len(), "replay and live").await);
    let received: Vec<(i64, String, String)> = events
        .iter()
        .map(|e| {
            (
                e.revision(),
                String::from_utf8_lossy(&e.kv.key).into_owned(),
                String::from_utf8_lossy(&e.kv.value).into_owned(),
            )
        })
        .collect();
    let expected: Vec<(i64, String, String)> = log
        .into_iter()
        .map(|(revision, (key, value))| (revision, key, value))
        .collect();
    if let Some(at) = expected.iter().zip(&received).position(|(a, b)| a != b) {
        panic!(
            "event {at} differs (created at revision {}): expected {:?}, got {:?}",
            created.header_revision, expected[at], received[at]
        );
    }
}

#[tokio::test]
async fn compacted_start_revision_is_canceled_with_the_compact_revision() {
    let (_server, mut client) = start().await;
    for i in 0..5 {
        put(&mut client, "k", format!("v{i}")).await; // revisions 2..=6
    }
    client
        .compact(4, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact at 4");

    for from in [2, 3] {
        let mut stream = open_watch(
            &mut client,
            "k",
            WatchOptions::new().with_start_revision(from),
        )
        .await;
        let created = expect_created(&mut stream, "watch below the compaction").await;
        let canceled = next(&mut stream, "compaction answer").await;
        assert!(
            canceled.canceled && canceled.events.is_empty(),
            "from {from}: expected a cancel, got {canceled}"
        );
        assert_eq!(canceled.watch_id, created.watch_id);
        assert_eq!(
            canceled.compact_revision, 4,
            "from {from}: compact_revision"
        );
    }

    // The compacted revision itself is still there.
    let mut stream = open_watch(&mut client, "k", WatchOptions::new().with_start_revision(4)).await;
    let created = expect_created(&mut stream, "watch from the compact revision").await;
    let events = events_of(&read_events(&mut stream, created.watch_id, 3, "from 4").await);
    assert_eq!(
        events.iter().map(Ev::revision).collect::<Vec<_>>(),
        [4, 5, 6]
    );
}

#[tokio::test]
async fn future_start_revision_waits_for_that_revision() {
    let (_server, mut client) = start().await;
    let current = current_revision(&mut client).await;
    let mut stream = open_watch(
        &mut client,
        "k",
        WatchOptions::new().with_start_revision(current + 3),
    )
    .await;
    let created = expect_created(&mut stream, "watch from a future revision").await;
    assert_eq!(created.header_revision, current);
    for i in 1..=4 {
        assert_eq!(put(&mut client, "k", format!("v{i}")).await, current + i);
    }
    let events = events_of(&read_events(&mut stream, created.watch_id, 2, "future start").await);
    assert_eq!(
        events.iter().map(Ev::revision).collect::<Vec<_>>(),
        [current + 3, current + 4],
        "events before the start revision are not sent"
    );
}

// ---------------------------------------------------------------------------------------
// Event contents
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn prev_kv_on_updates_and_deletes_but_not_on_creates() {
    let (_server, mut client) = start().await;
    let mut stream = open_watch(
        &mut client,
        "p/",
        WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_watch_id(1),
    )
    .await;
    expect_created(&mut stream, "prev_kv watch").await;
    stream
        .watch(
            "p/",
            Some(WatchOptions::new().with_prefix().with_watch_id(2)),
        )
        .await
        .expect("create the plain watch");
    expect_created(&mut stream, "plain watch").await;

    let r1 = put(&mut client, "p/a", "v1").await;
    let r2 = put(&mut client, "p/a", "v2").await;
    let r3 = delete(&mut client, "p/a", None).await;
    let r4 = put(&mut client, "p/a", "v3").await;
    let got = read_per_watch(&mut stream, &HashMap::from([(1, 4), (2, 4)]), "prev_kv").await;

    let v1 = put_kv("p/a", "v1", r1, r1, 1);
    let v2 = put_kv("p/a", "v2", r1, r2, 2);
    let with_prev = vec![
        Ev {
            kind: Kind::Put,
            kv: v1.clone(),
            prev: None,
        },
        Ev {
            kind: Kind::Put,
            kv: v2.clone(),
            prev: Some(v1),
        },
        Ev {
            kind: Kind::Delete,
            kv: Kv::tombstone(b"p/a", r3),
            prev: Some(v2),
        },
        // A create after a delete: a new life of the key, no prev_kv.
        Ev {
            kind: Kind::Put,
            kv: put_kv("p/a", "v3", r4, r4, 1),
            prev: None,
        },
    ];
    assert_eq!(events_of(&got[&1]), with_prev, "watch with prev_kv");
    let without: Vec<Ev> = with_prev.iter().map(Ev::without_prev).collect();
    assert_eq!(events_of(&got[&2]), without, "watch without prev_kv");
}

#[tokio::test]
async fn delete_events_carry_the_key_and_the_delete_revision() {
    let (_server, mut client) = start().await;
    for key in ["d/3", "d/1", "d/2", "e"] {
        put(&mut client, key, "v").await;
    }
    let mut stream = open_watch(&mut client, "d/", WatchOptions::new().with_prefix()).await;
    let created = expect_created(&mut stream, "watch d/").await;
    let revision = delete(&mut client, "d/", Some(DeleteOptions::new().with_prefix())).await;
    let responses = read_events(&mut stream, created.watch_id, 3, "range delete").await;
    assert_eq!(responses.len(), 1, "one revision, one response");
    assert_eq!(responses[0].header_revision, revision);
    let expected: Vec<Ev> = ["d/1", "d/2", "d/3"]
        .iter()
        .map(|key| Ev {
            kind: Kind::Delete,
            kv: Kv::tombstone(key.as_bytes(), revision),
            prev: None,
        })
        .collect();
    assert_eq!(responses[0].events, expected, "DELETE events in key order");
}

#[tokio::test]
async fn events_of_one_txn_arrive_in_one_response_in_op_order() {
    let (_server, mut client) = start().await;
    put(&mut client, "t/b", "old").await;
    put(&mut client, "t/x1", "old").await;
    put(&mut client, "t/x2", "old").await;
    let mut stream = open_watch(&mut client, "t/", WatchOptions::new().with_prefix()).await;
    let created = expect_created(&mut stream, "watch t/").await;
    let first = txn(
        &mut client,
        vec![
            TxnOp::put("t/c", "1", None),
            TxnOp::put("t/a", "2", None),
            TxnOp::delete("t/b", None),
            TxnOp::put("t/d", "3", None),
        ],
    )
    .await;
    let second = txn(
        &mut client,
        vec![
            TxnOp::put("t/z", "4", None),
            TxnOp::delete("t/x", Some(DeleteOptions::new().with_prefix())),
        ],
    )
    .await;
    let responses = read_events(&mut stream, created.watch_id, 7, "two txns").await;
    assert_eq!(responses.len(), 2, "one response per txn");
    assert_eq!(
        summary(&responses[0].events),
        [
            (Kind::Put, "t/c".into(), "1".into()),
            (Kind::Put, "t/a".into(), "2".into()),
            (Kind::Delete, "t/b".into(), "".into()),
            (Kind::Put, "t/d".into(), "3".into()),
        ]
    );
    assert!(responses[0].events.iter().all(|e| e.revision() == first));
    assert_eq!(
        summary(&responses[1].events),
        [
            (Kind::Put, "t/z".into(), "4".into()),
            (Kind::Delete, "t/x1".into(), "".into()),
            (Kind::Delete, "t/x2".into(), "".into()),
        ]
    );
    assert!(responses[1].events.iter().all(|e| e.revision() == second));
}

#[tokio::test]
async fn noput_and_nodelete_filters() {
    let (_server, mut client) = start().await;
    put(&mut client, "f/c", "0").await;
    put(&mut client, "f/end2", "0").await;
    let mut stream = open_watch(
        &mut client,
        "f/",
        WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut])
            .with_watch_id(1),
    )
    .await;
    expect_created(&mut stream, "NOPUT watch").await;
    stream
        .watch(
            "f/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoDelete])
                    .with_watch_id(2),
            ),
        )
        .await
        .expect("create the NODELETE watch");
    expect_created(&mut stream, "NODELETE watch").await;

    put(&mut client, "f/a", "1").await;
    delete(&mut client, "f/a", None).await;
    txn(
        &mut client,
        vec![TxnOp::put("f/b", "2", None), TxnOp::delete("f/c", None)],
    )
    .await;
    // Both watches end with this revision, so anything filtered wrongly shows up before.
    let last = txn(
        &mut client,
        vec![
            TxnOp::put("f/end1", "3", None),
            TxnOp::delete("f/end2", None),
        ],
    )
    .await;

    let got = read_per_watch(&mut stream, &HashMap::from([(1, 3), (2, 3)]), "filters").await;
    assert_eq!(
        summary(&events_of(&got[&1])),
        [
            (Kind::Delete, "f/a".into(), "".into()),
            (Kind::Delete, "f/c".into(), "".into()),
            (Kind::Delete, "f/end2".into(), "".into()),
        ],
        "NOPUT"
    );
    assert_eq!(
        summary(&events_of(&got[&2])),
        [
            (Kind::Put, "f/a".into(), "1".into()),
            (Kind::Put, "f/b".into(), "2".into()),
            (Kind::Put, "f/end1".into(), "3".into()),
        ],
        "NODELETE"
    );
    for id in [1, 2] {
        assert_eq!(got[&id].last().expect("events").events[0].revision(), last);
    }
}

// ---------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cancel_is_answered_and_stops_the_events() {
    let (_server, mut client) = start().await;
    let mut stream = open_watch(&mut client, "c/a", WatchOptions::new().with_watch_id(1)).await;
    expect_created(&mut stream, "watch c/a").await;
    stream
        .watch("c/b", Some(WatchOptions::new().with_watch_id(2)))
        .await
        .expect("create watch c/b");
    expect_created(&mut stream, "watch c/b").await;

    stream.cancel(1).await.expect("send cancel");
    let canceled = next(&mut stream, "cancel answer").await;
    assert!(
        canceled.canceled && !canceled.created && canceled.events.is_empty(),
        "cancel answered with canceled=true: {canceled}"
    );
    assert_eq!(canceled.watch_id, 1);

    put(&mut client, "c/a", "after cancel").await;
    put(&mut client, "c/b", "fence").await;
    let response = next(&mut stream, "fence").await;
    assert_eq!(
        (response.watch_id, keys_of(&response.events)),
        (2, vec!["c/b".to_string()]),
        "the canceled watch got an event: {response}"
    );
}

#[tokio::test]
async fn cancel_of_an_unknown_watch_gets_no_reply() {
    let (_server, mut client) = start().await;
    let mut stream = open_watch(&mut client, "u/a", WatchOptions::new().with_watch_id(1)).await;
    expect_created(&mut stream, "watch u/a").await;
    stream.cancel(42).await.expect("send cancel of 42");
    // The progress answer and the event must come first: a reply to the cancel would be
    // queued before them.
    stream.request_progress().await.expect("request progress");
    let progress = next(&mut stream, "progress answer").await;
    assert!(
        progress.is_stream_progress(),
        "expected the progress answer, got {progress}"
    );
    put(&mut client, "u/a", "v").await;
    let event = next(&mut stream, "event of u/a").await;
    assert_eq!((event.watch_id, event.events.len()), (1, 1), "got {event}");
}

// ---------------------------------------------------------------------------------------
// Fragments
// ---------------------------------------------------------------------------------------

/// Default --max-request-bytes.
const MAX_REQUEST_BYTES: usize = 1_572_864;
/// etcd splits watch responses at `--max-request-bytes` plus gRPC's overhead allowance of
/// 512 KiB (`maxRequestBytes: int(s.Cfg.MaxRequestBytes + grpcOverheadBytes)` in
/// etcdserver/api/v3rpc/watch.go), the size its own gRPC server accepts.
const FRAGMENT_LIMIT: usize = MAX_REQUEST_BYTES + 512 * 1024;

/// Writes `keys` values of `size` bytes, watches them with prev_kv (fragmenting and not),
/// overwrites them all in one txn and returns `(fragments, whole response, txn revision)`.
async fn huge_revision(keys: usize, size: usize) -> (Vec<Resp>, Resp, i64) {
    let (_server, mut client) = start().await;
    let value = |round: u8| vec![b'a' + round; size];
    for i in 0..keys {
        put(&mut client, format!("big/{i}"), value(0)).await;
    }
    let options = WatchOptions::new().with_prefix().with_prev_key();
    let mut fragmented = open_watch(&mut client, "big/", options.clone().with_fragment()).await;
    let fragmented_id = expect_created(&mut fragmented, "fragmenting watch")
        .await
        .watch_id;
    let mut whole = open_watch(&mut client, "big/", options).await;
    let whole_id = expect_created(&mut whole, "plain watch").await.watch_id;

    let revision = txn(
        &mut client,
        (0..keys)
            .map(|i| TxnOp::put(format!("big/{i}"), value(1), None))
            .collect(),
    )
    .await;
    let parts = read_events(&mut fragmented, fragmented_id, keys, "fragments").await;
    let mut unsplit = read_events(&mut whole, whole_id, keys, "plain watch").await;
    assert_eq!(
        unsplit.len(),
        1,
        "without fragment the revision comes whole"
    );
    let unsplit = unsplit.remove(0);
    assert!(!unsplit.fragment);
    let reassembled = events_of(&parts);
    assert_eq!(
        reassembled, unsplit.events,
        "fragments reassemble to the events"
    );
    assert!(reassembled
        .iter()
        .all(|e| e.kv.value == value(1) && e.prev.as_ref().is_some_and(|p| p.value == value(0))));
    (parts, unsplit, revision)
}

fn payload(response: &Resp) -> usize {
    response
        .events
        .iter()
        .map(|e| e.kv.value.len() + e.prev.as_ref().map_or(0, |p| p.value.len()))
        .sum()
}

#[tokio::test]
async fn huge_revisions_are_fragmented_when_asked_and_reassemble_to_the_events() {
    // A txn of five 300 KB values (1.5 MB) fits the default request limit; with prev_kv its
    // watch response is twice that, 3 MB, over any split limit, so a fragmenting watch gets
    // it in several pieces.
    let (parts, _, revision) = huge_revision(5, 300_000).await;
    assert!(
        parts.len() >= 2,
        "expected several fragments, got {}",
        parts.len()
    );
    let (last, rest) = parts.split_last().expect("fragments");
    assert!(
        rest.iter().all(|part| part.fragment),
        "every part but the last has fragment=true"
    );
    assert!(!last.fragment, "the last part has fragment=false");
    for part in &parts {
        assert_eq!(
            part.header_revision, revision,
            "every fragment has the txn's revision"
        );
        assert!(
            part.events.len() == 1 || payload(part) < FRAGMENT_LIMIT,
            "a fragment of {} events carries {} bytes, over the limit",
            part.events.len(),
            payload(part)
        );
    }
}

#[tokio::test]
async fn fragments_are_split_where_etcd_splits_them() {
    // Five events of 2 × 280 KB: etcd packs events while a fragment stays under
    // max-request-bytes + 512 KiB (2 MiB): three (1.68 MB) then two. A server splitting at
    // max-request-bytes alone (1.5 MiB) sends 2 + 2 + 1.
    let (parts, _, _) = huge_revision(5, 280_000).await;
    let sizes: Vec<usize> = parts.iter().map(|part| part.events.len()).collect();
    assert_eq!(
        sizes,
        [3, 2],
        "events per fragment (etcd fills fragments up to {FRAGMENT_LIMIT} bytes)"
    );

    // And a response under that limit is not split at all, though it is over
    // max-request-bytes: three events of 2 × 290 KB = 1.74 MB.
    let (parts, _, _) = huge_revision(3, 290_000).await;
    assert!(payload(&parts[0]) > MAX_REQUEST_BYTES);
    assert_eq!(
        parts.len(),
        1,
        "a 1.74 MB response stays whole under etcd's 2 MiB split limit"
    );
}

// ---------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------

/// With notifications every second, an idle `progress_notify` watch gets empty responses
/// with its ID and the current revision (also after writes elsewhere); a watch without
/// `progress_notify` on the same stream gets none.
async fn check_progress_notifications(interval_flag: &str) {
    let (_server, mut client) = start_with(&[interval_flag, "1s"]).await;
    let mut stream = open_watch(
        &mut client,
        "pn/a",
        WatchOptions::new().with_progress_notify().with_watch_id(1),
    )
    .await;
    expect_created(&mut stream, "progress_notify watch").await;
    stream
        .watch("pn/b", Some(WatchOptions::new().with_watch_id(2)))
        .await
        .expect("create the quiet watch");
    expect_created(&mut stream, "quiet watch").await;
    let revision = put(&mut client, "pn/other", "1").await;

    // Within a few intervals, a notification at the current revision.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut notifications = Vec::new();
    while notifications.last() != Some(&revision) {
        assert!(
            Instant::now() < deadline,
            "no progress notification at revision {revision} within 10 s; got {notifications:?}"
        );
        let response = next(&mut stream, "progress notification").await;
        assert!(
            response.is_progress() && response.watch_id == 1,
            "only watch 1's notifications may come, got {response}"
        );
        assert!(response.header_revision <= revision);
        notifications.push(response.header_revision);
    }

    // A write elsewhere moves the notified revision on, though the watch saw no event.
    let later = put(&mut client, "pn/other", "2").await;
    let mut next_revision = 0;
    while next_revision != later {
        assert!(
            Instant::now() < deadline + Duration::from_secs(5),
            "no notification at {later}"
        );
        let response = next(&mut stream, "notification after a write elsewhere").await;
        assert!(
            response.is_progress() && response.watch_id == 1,
            "got {response}"
        );
        assert!((revision..=later).contains(&response.header_revision));
        next_revision = response.header_revision;
    }

    // An event for the watch still arrives normally, and only for it.
    let event_revision = put(&mut client, "pn/a", "x").await;
    loop {
        let response = next(&mut stream, "event of pn/a").await;
        if response.is_progress() {
            assert_eq!(response.watch_id, 1);
            continue;
        }
        assert_eq!(response.watch_id, 1, "got {response}");
        assert_eq!(response.events[0].revision(), event_revision);
        break;
    }
}

#[tokio::test]
async fn progress_notify_with_the_experimental_interval_flag() {
    check_progress_notifications("--experimental-watch-progress-notify-interval").await;
}

#[tokio::test]
async fn progress_notify_with_the_watch_progress_notify_interval_flag() {
    if ServerKind::from_env() == ServerKind::Etcd {
        // etcd 3.4 has only the experimental spelling; etcd 3.6 renamed it to this one,
        // which keelson accepts too.
        eprintln!("skipped on etcd 3.4: it does not know --watch-progress-notify-interval");
        return;
    }
    check_progress_notifications("--watch-progress-notify-interval").await;
}

#[tokio::test]
async fn progress_request_is_answered_with_watch_id_minus_one_and_the_current_revision() {
    let (_server, mut client) = start().await;
    let mut stream = open_watch(&mut client, "pr/a", WatchOptions::new()).await;
    expect_created(&mut stream, "watch pr/a").await;
    for round in 0..3 {
        let mut revision = 0;
        for i in 0..=round {
            revision = put(&mut client, "pr/elsewhere", format!("{round}-{i}")).await;
        }
        stream.request_progress().await.expect("request progress");
        let progress = next(&mut stream, "progress answer").await;
        assert!(
            progress.is_stream_progress(),
            "expected a progress answer, got {progress}"
        );
        assert_eq!(progress.header_revision, revision, "round {round}");
    }
}

/// The progress answer of a stream whose watch is still replaying history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_answer_never_runs_ahead_of_a_replaying_watch() {
    let (server, mut client) = start().await;
    // 1000 revisions of 5 × 1 KiB: more than the stream's buffer of responses, so the watch
    // below is still catching up from storage when the request arrives.
    let value = vec![b'v'; 1024];
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4 {
        let mut client = client.clone();
        let value = value.clone();
        writers.spawn(async move {
            for i in 0..250 {
                let ops = (0..5)
                    .map(|j| {
                        TxnOp::put(
                            format!("pd/{writer}/{}", (i * 5 + j) % 40),
                            value.clone(),
                            None,
                        )
                    })
                    .collect();
                txn(&mut client, ops).await;
            }
        });
    }
    while let Some(result) = writers.join_next().await {
        result.expect("writer");
    }
    let current = current_revision(&mut client).await;
    assert_eq!(current, 1001);

    let mut stream = open_watch(
        &mut client,
        "pd/",
        WatchOptions::new().with_prefix().with_start_revision(2),
    )
    .await;
    let created = expect_created(&mut stream, "replaying watch").await;
    stream.request_progress().await.expect("request progress");

    let mut last_event = 0;
    let mut progress_after = None;
    while last_event < current || progress_after.is_none() {
        let response = next(&mut stream, "replay and progress answer").await;
        if response.is_stream_progress() {
            assert!(progress_after.is_none(), "one request, one answer");
            assert_eq!(response.header_revision, current, "progress revision");
            progress_after = Some(last_event);
        } else {
            assert_eq!(response.watch_id, created.watch_id, "got {response}");
            last_event = response.events.last().expect("events").revision();
        }
    }
    let progress_after = progress_after.expect("answered");
    match server.kind() {
        // keelson answers only once every watch of the stream was sent every event up to
        // the answer's revision (as etcd 3.5.8+ does): resuming from it loses nothing.
        ServerKind::Keelson => assert_eq!(
            progress_after, current,
            "the progress answer (revision {current}) came when the watch had only reached revision {progress_after}"
        ),
        // etcd 3.4 answers at once with its current revision, ahead of the replay; a client
        // resuming from it would lose the events in between (etcd issue 15220).
        ServerKind::Etcd => eprintln!(
            "etcd 3.4: progress answer at {current} came after events up to revision {progress_after}"
        ),
    }
}
