//! A watcher that stops reading while 100,000 events of 2 KiB (200 MB) are written must not
//! make the server hold them: its memory stays within a bound far below the events' size
//! (a slow watcher falls behind into catch-up from storage). When it reads again it gets
//! every event, in order, exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compat_tests::kv::header_revision;
use compat_tests::watch::{expect_created, memory_of, open_watch, Kind};
use compat_tests::{Server, ServerKind};
use etcd_client::{Txn, TxnOp, WatchOptions};

const TXNS: usize = 1000;
const PUTS_PER_TXN: usize = 100;
const EVENTS: usize = TXNS * PUTS_PER_TXN;
const VALUE_SIZE: usize = 2048;
const WRITERS: usize = 4;
const MIB: u64 = 1 << 20;
/// Growth over the baseline the server may show while the reader does not read. The events
/// written meanwhile weigh 200 MB (more in memory), so a server that buffered them would
/// go well past it.
const MEMORY_BOUND: u64 = 200 * MIB;
const WRITE_PHASE_LIMIT: Duration = Duration::from_secs(60);
const READ_PHASE_LIMIT: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_millis(25);

fn key_of(txn: usize, put: usize) -> String {
    format!("s/{:02}/{put:02}", txn % 10)
}

fn value_of(txn: usize, put: usize) -> Vec<u8> {
    let mut value = format!("{txn:05}-{put:02}-").into_bytes();
    value.resize(VALUE_SIZE, b'x');
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_that_stops_reading_costs_bounded_memory_and_then_gets_every_event() {
    let server = Server::start_default().await;
    let pid = server.pid().expect("the server runs");
    let client = server.client().await;
    let mut watcher_client = server.client().await;
    let mut stream = open_watch(&mut watcher_client, "s/", WatchOptions::new().with_prefix()).await;
    let created = expect_created(&mut stream, "the slow reader's watch").await;
    // From here on the reader does not read until every write is done.

    let (baseline_rss, baseline_anon) = memory_of(pid).expect("read the server's memory");
    let peak_rss = Arc::new(AtomicU64::new(baseline_rss));
    let peak_anon = Arc::new(AtomicU64::new(baseline_anon));
    let writing = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak_rss, peak_anon, writing) = (peak_rss.clone(), peak_anon.clone(), writing.clone());
        tokio::spawn(async move {
            while writing.load(Ordering::SeqCst) {
                if let Some((rss, anon)) = memory_of(pid) {
                    peak_rss.fetch_max(rss, Ordering::SeqCst);
                    peak_anon.fetch_max(anon, Ordering::SeqCst);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    // Write 1000 txns of 100 puts from four writers, recording each txn's revision.
    let revisions: Arc<Mutex<BTreeMap<i64, usize>>> = Arc::default();
    let next_txn = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (mut client, revisions, next_txn) = (client.clone(), revisions.clone(), next_txn.clone());
        writers.spawn(async move {
            loop {
                let txn = next_txn.fetch_add(1, Ordering::SeqCst);
                if txn >= TXNS {
                    break;
                }
                assert!(
                    started.elapsed() < WRITE_PHASE_LIMIT,
                    "writing {TXNS} txns took more than {WRITE_PHASE_LIMIT:?} (at txn {txn})"
                );
                let ops = (0..PUTS_PER_TXN)
                    .map(|put| TxnOp::put(key_of(txn, put), value_of(txn, put), None))
                    .collect::<Vec<_>>();
                let response = client
                    .txn(Txn::new().and_then(ops))
                    .await
                    .unwrap_or_else(|error| panic!("txn {txn}: {error}"));
                revisions
                    .lock()
                    .expect("revisions")
                    .insert(header_revision(response.header()), txn);
            }
        });
    }
    while let Some(result) = writers.join_next().await {
        result.expect("a writer failed");
    }
    let write_time = started.elapsed();
    // One more sample after the last write, then stop sampling.
    if let Some((rss, anon)) = memory_of(pid) {
        peak_rss.fetch_max(rss, Ordering::SeqCst);
        peak_anon.fetch_max(anon, Ordering::SeqCst);
    }
    writing.store(false, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let (peak_rss, peak_anon) = (peak_rss.load(Ordering::SeqCst), peak_anon.load(Ordering::SeqCst));
    eprintln!(
        "{}: wrote {EVENTS} events ({} MB) in {write_time:?}; server memory while the reader \
         did not read: VmRSS {} → peak {} MiB, RssAnon {} → peak {} MiB",
        server.kind().name(),
        EVENTS * VALUE_SIZE / 1_000_000,
        baseline_rss / MIB,
        peak_rss / MIB,
        baseline_anon / MIB,
        peak_anon / MIB
    );

    let revisions = revisions.lock().expect("revisions").clone();
    let first = created.header_revision + 1;
    assert_eq!(
        revisions.keys().copied().collect::<Vec<_>>(),
        (first..first + TXNS as i64).collect::<Vec<_>>(),
        "each txn has its own revision"
    );

    // Now read everything: every event, in order, exactly once.
    let read_started = Instant::now();
    let mut expected = revisions.iter().flat_map(|(revision, txn)| {
        (0..PUTS_PER_TXN).map(move |put| (*revision, *txn, put))
    });
    let mut received = 0usize;
    let mut responses = 0usize;
    while received < EVENTS {
        let remaining = READ_PHASE_LIMIT
            .checked_sub(read_started.elapsed())
            .unwrap_or_else(|| panic!("only {received} of {EVENTS} events within {READ_PHASE_LIMIT:?}"));
        let response = match tokio::time::timeout(remaining, stream.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => panic!("the watch stream ended after {received} of {EVENTS} events"),
            Ok(Err(error)) => panic!("the watch stream failed after {received} of {EVENTS} events: {error}"),
            Err(_) => panic!("only {received} of {EVENTS} events within {READ_PHASE_LIMIT:?}"),
        };
        responses += 1;
        assert!(
            response.watch_id() == created.watch_id && !response.canceled() && !response.created(),
            "unexpected response after {received} events: watch {} canceled {} created {}",
            response.watch_id(),
            response.canceled(),
            response.created()
        );
        for event in response.events() {
            let kv = event.kv().expect("an event carries its kv");
            let Some((revision, txn, put)) = expected.next() else {
                panic!("more than {EVENTS} events: an extra one at revision {}", kv.mod_revision());
            };
            let what = format!("event {received} (txn {txn}, put {put})");
            assert_eq!(Kind::Put, match event.event_type() {
                etcd_client::EventType::Put => Kind::Put,
                etcd_client::EventType::Delete => Kind::Delete,
            }, "{what}: type");
            assert_eq!(kv.mod_revision(), revision, "{what}: revision (a gap, a duplicate or a reordering)");
            assert_eq!(kv.key(), key_of(txn, put).as_bytes(), "{what}: key");
            assert!(kv.value() == value_of(txn, put).as_slice(), "{what}: value differs");
            received += 1;
        }
    }
    eprintln!(
        "read {received} events in {responses} responses in {:?}",
        read_started.elapsed()
    );

    // The bound is on the server's memory while the reader did not read. On etcd, VmRSS
    // also counts the pages of its bbolt file that it maps into memory (200 MB of new data),
    // which are the page cache, not memory it holds for the watcher: use RssAnon there.
    let (kind_of_memory, baseline, peak) = match server.kind() {
        ServerKind::Keelson => ("VmRSS", baseline_rss, peak_rss),
        ServerKind::Etcd => ("RssAnon", baseline_anon, peak_anon),
    };
    assert!(
        peak < baseline + MEMORY_BOUND,
        "{kind_of_memory} grew from {} MiB to {} MiB while a watcher did not read (bound: +{} MiB)",
        baseline / MIB,
        peak / MIB,
        MEMORY_BOUND / MIB
    );
}
