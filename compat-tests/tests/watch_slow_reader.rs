//! A watcher that stops reading while 100,000 events of 4 KiB (400 MB) are written must not
//! make the server hold them: the memory it costs stays far below the events' size (a slow
//! watcher falls behind into catch-up from storage). When it reads again it gets every
//! event, in order, exactly once. And a stalled watcher must not keep the server busy once
//! nothing is written.
//!
//! What the watcher costs is measured against a control: the same writes on a fresh member
//! without the watcher, since the write path itself (memtables, raft log, allocator) grows
//! the process by a few hundred MiB under this load, on keelson and on etcd alike.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compat_tests::kv::header_revision;
use compat_tests::watch::{expect_created, memory_of, next_message, open_watch, Kind, Resp};
use compat_tests::Server;
use etcd_client::{Txn, TxnOp, WatchOptions};

const TXNS: usize = 1000;
const PUTS_PER_TXN: usize = 100;
const EVENTS: usize = TXNS * PUTS_PER_TXN;
const VALUE_SIZE: usize = 4096;
const WRITERS: usize = 4;
const MIB: u64 = 1 << 20;
/// What the stalled watcher may add to the server's peak memory, over the control run. The
/// events written meanwhile weigh 400 MB (more once decoded), so a server that buffered
/// them would go well past it.
const WATCHER_MEMORY_BOUND: u64 = 200 * MIB;
const WRITE_PHASE_LIMIT: Duration = Duration::from_secs(45);
const READ_PHASE_LIMIT: Duration = Duration::from_secs(45);
const SAMPLE_EVERY: Duration = Duration::from_millis(25);

fn key_of(txn: usize, put: usize) -> String {
    format!("s/{:02}/{put:02}", txn % 10)
}

fn value_of(txn: usize, put: usize) -> Vec<u8> {
    let mut value = format!("{txn:05}-{put:02}-").into_bytes();
    value.resize(VALUE_SIZE, b'x');
    value
}

/// What the write phase measured.
struct WritePhase {
    /// `revision -> txn`.
    revisions: BTreeMap<i64, usize>,
    baseline_rss: u64,
    peak_rss: u64,
    took: Duration,
}

/// Writes `txns` txns of 100 puts under `s/` from four writers while sampling the server's
/// VmRSS, and returns each txn's revision and the memory seen.
async fn write_phase(server: &Server, txns: usize) -> WritePhase {
    let pid = server.pid().expect("the server runs");
    let client = server.client().await;
    let (baseline_rss, _) = memory_of(pid).expect("read the server's memory");
    let peak = Arc::new(AtomicU64::new(baseline_rss));
    let writing = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, writing) = (peak.clone(), writing.clone());
        tokio::spawn(async move {
            while writing.load(Ordering::SeqCst) {
                if let Some((rss, _)) = memory_of(pid) {
                    peak.fetch_max(rss, Ordering::SeqCst);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    let revisions: Arc<Mutex<BTreeMap<i64, usize>>> = Arc::default();
    let next_txn = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (mut client, revisions, next_txn) =
            (client.clone(), revisions.clone(), next_txn.clone());
        writers.spawn(async move {
            loop {
                let txn = next_txn.fetch_add(1, Ordering::SeqCst);
                if txn >= txns {
                    break;
                }
                assert!(
                    started.elapsed() < WRITE_PHASE_LIMIT,
                    "writing {txns} txns took more than {WRITE_PHASE_LIMIT:?} (at txn {txn})"
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
    let took = started.elapsed();
    if let Some((rss, _)) = memory_of(pid) {
        peak.fetch_max(rss, Ordering::SeqCst);
    }
    writing.store(false, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let revisions = revisions.lock().expect("revisions").clone();
    WritePhase {
        revisions,
        baseline_rss,
        peak_rss: peak.load(Ordering::SeqCst),
        took,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_that_stops_reading_costs_bounded_memory_and_then_gets_every_event() {
    // Control: the same writes, nobody watching them.
    let control = {
        let server = Server::start_default().await;
        write_phase(&server, TXNS).await
    };
    let control_growth = control.peak_rss.saturating_sub(control.baseline_rss);

    let server = Server::start_default().await;
    let mut watcher_client = server.client().await;
    let mut stream = open_watch(&mut watcher_client, "s/", WatchOptions::new().with_prefix()).await;
    let created = expect_created(&mut stream, "the slow reader's watch").await;
    // From here on the reader does not read until every write is done.
    let phase = write_phase(&server, TXNS).await;
    let growth = phase.peak_rss.saturating_sub(phase.baseline_rss);
    eprintln!(
        "{}: {EVENTS} events ({} MB); VmRSS growth during the writes: {} MiB without a \
         watcher ({:?}), {} MiB with a watcher that does not read ({:?})",
        server.kind().name(),
        EVENTS * VALUE_SIZE / 1_000_000,
        control_growth / MIB,
        control.took,
        growth / MIB,
        phase.took,
    );

    let revisions = phase.revisions;
    let first = created.header_revision + 1;
    assert_eq!(
        revisions.keys().copied().collect::<Vec<_>>(),
        (first..first + TXNS as i64).collect::<Vec<_>>(),
        "each txn has its own revision"
    );
    // Now read everything: every event, in order, exactly once.
    let read_started = Instant::now();
    let mut expected = revisions
        .iter()
        .flat_map(|(revision, txn)| (0..PUTS_PER_TXN).map(move |put| (*revision, *txn, put)));
    let mut received = 0usize;
    let mut responses = 0usize;
    while received < EVENTS {
        let remaining = READ_PHASE_LIMIT
            .checked_sub(read_started.elapsed())
            .unwrap_or_else(|| {
                panic!("only {received} of {EVENTS} events within {READ_PHASE_LIMIT:?}")
            });
        let response = match tokio::time::timeout(remaining, stream.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => panic!("the watch stream ended after {received} of {EVENTS} events"),
            Ok(Err(error)) => {
                panic!("the watch stream failed after {received} of {EVENTS} events: {error}")
            }
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
                panic!(
                    "more than {EVENTS} events: an extra one at revision {}",
                    kv.mod_revision()
                );
            };
            let what = format!("event {received} (txn {txn}, put {put})");
            assert_eq!(
                Kind::Put,
                match event.event_type() {
                    etcd_client::EventType::Put => Kind::Put,
                    etcd_client::EventType::Delete => Kind::Delete,
                },
                "{what}: type"
            );
            assert_eq!(
                kv.mod_revision(),
                revision,
                "{what}: revision (a gap, a duplicate or a reordering)"
            );
            assert_eq!(kv.key(), key_of(txn, put).as_bytes(), "{what}: key");
            assert!(
                kv.value() == value_of(txn, put).as_slice(),
                "{what}: value differs"
            );
            received += 1;
        }
    }
    eprintln!(
        "read {received} events in {responses} responses in {:?}",
        read_started.elapsed()
    );

    assert!(
        growth < control_growth + WATCHER_MEMORY_BOUND,
        "a watcher that did not read grew the server by {} MiB during the writes, {} MiB more \
         than the same writes without it (bound: {} MiB)",
        growth / MIB,
        growth.saturating_sub(control_growth) / MIB,
        WATCHER_MEMORY_BOUND / MIB
    );
}

/// CPU time (user + system, in clock ticks of 10 ms) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the command name (which is in parentheses and may hold spaces):
    // state is field 3, utime field 14, stime field 15.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |index: usize| -> u64 { fields[index].parse().expect("a tick count") };
    field(11) + field(12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_costs_no_cpu_while_nothing_is_written() {
    const IDLE: Duration = Duration::from_secs(3);
    /// 10% of one core over the idle period; an idle member uses almost nothing.
    const MAX_TICKS: u64 = 30;
    let server = Server::start_default().await;
    let pid = server.pid().expect("the server runs");
    let mut watcher_client = server.client().await;
    let mut stream = open_watch(&mut watcher_client, "s/", WatchOptions::new().with_prefix()).await;
    expect_created(&mut stream, "the stalled reader's watch").await;
    // 200 revisions of 100 × 4 KiB: far more than the stream can buffer, so the watcher is
    // behind when the writes stop, and stays behind since it never reads.
    write_phase(&server, 200).await;
    let before = cpu_ticks(pid);
    // Not a synchronisation: the measurement is the CPU the idle server uses meanwhile.
    tokio::time::sleep(IDLE).await;
    let used = cpu_ticks(pid) - before;
    eprintln!(
        "{}: {used} ticks of CPU in {IDLE:?} with a stalled watcher",
        server.kind().name()
    );
    assert!(
        used <= MAX_TICKS,
        "with one stalled watcher and no writes, the server used {} ms of CPU in {IDLE:?} \
         (bound {} ms): it keeps working for a watcher that cannot take anything",
        used * 10,
        MAX_TICKS * 10
    );
    // The watcher still gets its events once it reads.
    let first = Resp::of(&next_message(&mut stream, "first event after the stall").await);
    assert!(!first.events.is_empty(), "expected events, got {first}");
}
