//! The watch guarantee checker (etcd's robustness properties), black-box: concurrent writers
//! do puts, deletes, range deletes and multi-key (sometimes conditional) txns, while many
//! watchers record everything their streams deliver: live watchers, watchers starting at
//! revision 1 or at a past revision mid-run, one starting in the future, slow readers that
//! stop reading for seconds, streams that keep sending progress requests, per-watch progress
//! notifications, filters, fragments and 32 watches sharing one stream.
//!
//! The oracle is rebuilt from the writers' acknowledged responses alone (never from a
//! watch), and checked against a Range of the store at the end. Every watcher must then be
//! ordered, unique, atomic per revision, gap-free, prev_kv-correct, its progress
//! revisions safe resume points, and resumable from revisions it saw
//! (`compat_tests::watch::check_stream` and `check_resumable`).
//!
//! The seed is printed; `COMPAT_SEED=<n>` replays a workload's choices (the interleaving of
//! concurrent writers still varies).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compat_tests::kv::current_revision;
use compat_tests::watch::{
    check_resumable, check_stream, resume_points, run_workload, seed_from_env, CheckOptions,
    History, Resp, StreamBehaviour, StreamRecorder, Violations, WatchSpec, WorkloadConfig,
    WorkloadControl,
};
use compat_tests::{Server, ServerKind, ServerOptions};

const PREFIX: &str = "g/";
const MAX_WRITES: usize = 3000;
const MAX_WRITE_PHASE: Duration = Duration::from_secs(25);
/// How long every watcher may take to catch up once the writers stopped.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
const RESUME_POINTS_PER_WATCH: usize = 4;

fn key(group: char, index: usize) -> Vec<u8> {
    format!("{PREFIX}{group}/{index:02}").into_bytes()
}

/// The revision of the last event each watch of `recorder` must receive, from its created
/// answer (for watches starting now) or its start revision.
fn expected_last(
    recorder: &StreamRecorder,
    history: &History,
    final_revision: i64,
) -> HashMap<i64, i64> {
    let log = recorder.snapshot();
    recorder
        .watches
        .iter()
        .map(|(id, spec)| {
            let from = if spec.start_revision != 0 {
                spec.start_revision
            } else {
                log.iter()
                    .find(|r: &&Resp| r.created && r.watch_id == *id)
                    .map_or(final_revision + 1, |r| r.header_revision + 1)
            };
            let last = history
                .expected(spec, from, final_revision)
                .last()
                .map_or(0, |event| event.revision());
            (*id, last)
        })
        .collect()
}

async fn wait_for_writes(control: &WorkloadControl, at_least: usize) {
    let started = Instant::now();
    while control.sent.load(Ordering::Relaxed) < at_least {
        assert!(
            started.elapsed() < MAX_WRITE_PHASE,
            "the writers did not reach {at_least} writes within {MAX_WRITE_PHASE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_watcher_sees_the_history_exactly_and_progress_never_runs_ahead() {
    let server = Server::start(
        ServerOptions::from_env().args(["--experimental-watch-progress-notify-interval", "1s"]),
    )
    .await;
    let mut client = server.client().await;
    let seed = seed_from_env();
    eprintln!(
        "{}: seed {seed} (COMPAT_SEED={seed} to replay the workload's choices)",
        server.kind().name()
    );
    let initial = current_revision(&mut client).await;
    let config = WorkloadConfig {
        prefix: PREFIX.into(),
        writers: 4,
        max_writes: MAX_WRITES,
        max_duration: MAX_WRITE_PHASE,
        keys_per_group: 16,
        value_size: 64,
        seed,
    };
    let all = WatchSpec::prefix(PREFIX);
    let progress = |every: u64| StreamBehaviour {
        progress_every: Some(Duration::from_millis(every)),
        read_pause: None,
    };
    let slow = |read: u64, pause: u64, every: u64| StreamBehaviour {
        progress_every: Some(Duration::from_millis(every)),
        read_pause: Some((Duration::from_millis(read), Duration::from_millis(pause))),
    };

    // Watchers that exist before the first write.
    let mut recorders = Vec::new();
    let mut from_one = StreamRecorder::start(
        &mut client,
        "from revision 1",
        StreamBehaviour::default(),
        1,
        all.clone().from_revision(1).with_prev_kv(),
    )
    .await;
    from_one.watch(2, WatchSpec::prefix(format!("{PREFIX}a/")));
    recorders.push(from_one);
    let mut progress_stream = StreamRecorder::start(
        &mut client,
        "live, progress requests every 15 ms",
        progress(15),
        1,
        all.clone().with_prev_kv(),
    )
    .await;
    let mut slow_reader = StreamRecorder::start(
        &mut client,
        "slow reader (reads 200 ms, pauses 1.5 s), progress requests",
        slow(200, 1500, 50),
        1,
        all.clone().with_prev_kv(),
    )
    .await;
    slow_reader.watch(2, WatchSpec::prefix(format!("{PREFIX}b/")).no_delete());
    let mut future = StreamRecorder::start(
        &mut client,
        "future start, progress_notify",
        StreamBehaviour::default(),
        1,
        all.clone()
            .from_revision(initial + 300)
            .with_progress_notify(),
    )
    .await;
    future.watch(
        2,
        WatchSpec::key(key('a', 7))
            .with_prev_kv()
            .with_progress_notify(),
    );
    let fragment = StreamRecorder::start(
        &mut client,
        "fragment",
        StreamBehaviour::default(),
        1,
        all.clone().with_prev_kv().with_fragment(),
    )
    .await;
    let mut many = StreamRecorder::start(
        &mut client,
        "32 key watches on one stream, progress requests",
        progress(40),
        100,
        WatchSpec::key(key('a', 0)).with_prev_kv(),
    )
    .await;
    for index in 1..32 {
        let (group, number) = if index < 16 {
            ('a', index)
        } else {
            ('b', index - 16)
        };
        many.watch(
            100 + index as i64,
            WatchSpec::key(key(group, number)).with_prev_kv(),
        );
    }

    // The writers.
    let control = Arc::new(WorkloadControl::default());
    let mut clients = Vec::new();
    for _ in 0..config.writers {
        clients.push(server.client().await);
    }
    let workload = tokio::spawn(run_workload(clients, config.clone(), control.clone()));

    // Watchers created mid-run, starting in the past.
    wait_for_writes(&control, MAX_WRITES / 3).await;
    let now = current_revision(&mut client).await;
    let past = (now - 150).max(initial);
    progress_stream.watch(
        2,
        WatchSpec::range(key('a', 3), key('b', 2)).from_revision(past),
    );
    let mut past_stream = StreamRecorder::start(
        &mut client,
        "created mid-run from a past revision, progress requests",
        progress(30),
        1,
        all.clone().from_revision(past).with_prev_kv(),
    )
    .await;
    past_stream.watch(
        2,
        WatchSpec::range(key('b', 5), vec![0])
            .from_revision(past + 7)
            .no_put(),
    );
    let slow_past = StreamRecorder::start(
        &mut client,
        "created mid-run from revision 1, slow reader, progress requests every 10 ms",
        slow(100, 1000, 10),
        1,
        all.clone().from_revision(1).with_prev_kv(),
    )
    .await;
    recorders.extend([
        progress_stream,
        slow_reader,
        future,
        fragment,
        many,
        past_stream,
        slow_past,
    ]);

    let writes = tokio::time::timeout(MAX_WRITE_PHASE + Duration::from_secs(30), workload)
        .await
        .expect("the writers did not stop in time")
        .expect("a writer failed");
    let final_revision = current_revision(&mut client).await;
    let history = History::from_writes(initial, &writes)
        .unwrap_or_else(|error| panic!("the acknowledged writes are inconsistent: {error}"));
    assert_eq!(
        history.last, final_revision,
        "the last acknowledged revision is the store's"
    );
    history
        .check_against_store(&mut client, PREFIX)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let events: usize = history.revisions.values().map(Vec::len).sum();
    eprintln!(
        "{} writes changed the store: revisions {}..={final_revision}, {events} events",
        writes.len(),
        initial + 1
    );
    assert!(
        writes.len() >= 500,
        "too few writes ({}) for a meaningful check",
        writes.len()
    );

    // Let every watcher catch up: stop pausing, and ask for progress until each stream has
    // its last expected events and a progress answer at the final revision.
    for recorder in &recorders {
        recorder.catch_up();
    }
    let started = Instant::now();
    let mut last_request = Instant::now() - Duration::from_secs(1);
    loop {
        let behind: Vec<&StreamRecorder> = recorders
            .iter()
            .filter(|r| !r.caught_up(&expected_last(r, &history, final_revision), final_revision))
            .collect();
        if behind.is_empty() {
            break;
        }
        if started.elapsed() > CATCH_UP_TIMEOUT {
            eprintln!(
                "not caught up within {CATCH_UP_TIMEOUT:?}: {:?}; checking what they received",
                behind.iter().map(|r| &r.name).collect::<Vec<_>>()
            );
            break;
        }
        if last_request.elapsed() >= Duration::from_millis(200) {
            for recorder in &behind {
                recorder.request_progress();
            }
            last_request = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "watchers caught up {:?} after the writers stopped",
        started.elapsed()
    );

    // Check every stream.
    let keelson = server.kind() == ServerKind::Keelson;
    let mut violations = Violations::default();
    let mut etcd_progress_violations = Violations::default();
    let mut views = Vec::new();
    for recorder in recorders {
        let name = recorder.name.clone();
        let watches = recorder.watches.clone();
        let log = match recorder.finish().await {
            Ok(log) => log,
            Err(error) => {
                violations.add("stream", format!("{name}: {error}"));
                continue;
            }
        };
        let progress_answers = log.iter().filter(|r| r.is_progress()).count();
        // keelson must keep every property. etcd 3.4 answers a progress request at once,
        // ahead of events it has not sent yet (fixed in etcd 3.5.8); that one property is
        // reported for etcd but not enforced.
        let (found, stream_views) = check_stream(
            &name,
            &watches,
            &log,
            &history,
            final_revision,
            CheckOptions {
                progress_safety: true,
            },
        );
        let mut found = found;
        if !keelson {
            if let Some(progress) = found.0.remove("progress-safe") {
                etcd_progress_violations.0.insert("progress-safe", progress);
            }
        }
        eprintln!(
            "{name}: {} responses, {progress_answers} progress notifications, events per watch {:?}",
            log.len(),
            stream_views.iter().map(|v| (v.watch_id, v.events.len())).collect::<Vec<_>>()
        );
        violations.merge(found);
        views.extend(stream_views.into_iter().map(|view| (name.clone(), view)));
    }
    if !etcd_progress_violations.is_empty() {
        eprintln!(
            "etcd 3.4 sent progress revisions ahead of events (known etcd < 3.5.8 bug, not enforced on etcd):\n{}",
            etcd_progress_violations.report(3)
        );
    }

    // Resumable: a new watch from a revision the watcher saw reproduces its suffix.
    let mut resumed = 0;
    for (name, view) in &views {
        let points = resume_points(view, RESUME_POINTS_PER_WATCH);
        resumed += points.len();
        let who = format!("{name}: watch {} ({})", view.watch_id, view.spec);
        violations.merge(check_resumable(&client, &who, view, &points).await);
    }
    eprintln!("{} watches checked, {resumed} resume points", views.len());
    assert!(
        violations.is_empty(),
        "{} violation(s) of the watch guarantees on {} (seed {seed}):\n{}",
        violations.count(),
        server.kind().name(),
        violations.report(5)
    );
}

/// The checker itself must catch what it is meant to catch: fed a history and recordings
/// with one fault each, it names the broken property.
#[test]
fn the_checker_reports_each_kind_of_fault() {
    use compat_tests::watch::{AckedWrite, Applied, Ev, Kind, Kv};
    let writes: Vec<AckedWrite> = (2..=6)
        .map(|revision| AckedWrite {
            revision,
            ops: vec![
                Applied::Put {
                    key: b"g/a/00".to_vec(),
                    value: format!("v{revision}").into_bytes(),
                },
                Applied::Put {
                    key: b"g/b/00".to_vec(),
                    value: format!("w{revision}").into_bytes(),
                },
            ],
            label: format!("txn {revision}"),
        })
        .collect();
    let history = History::from_writes(1, &writes).expect("a consistent history");
    let spec = WatchSpec::prefix(PREFIX).with_prev_kv();
    let watches = vec![(1, spec.clone())];
    let created = Resp {
        watch_id: 1,
        header_revision: 1,
        created: true,
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
        fragment: false,
        events: Vec::new(),
    };
    let events_at = |revision: i64| -> Resp {
        Resp {
            created: false,
            header_revision: revision,
            events: history.revisions[&revision].clone(),
            ..created.clone()
        }
    };
    let progress_at = |revision: i64| -> Resp {
        Resp {
            created: false,
            watch_id: -1,
            header_revision: revision,
            ..created.clone()
        }
    };
    let check = |log: Vec<Resp>| -> Vec<&'static str> {
        let (violations, _) =
            check_stream("test", &watches, &log, &history, 6, CheckOptions::default());
        violations.0.keys().copied().collect()
    };
    let good: Vec<Resp> = std::iter::once(created.clone())
        .chain((2..=6).map(events_at))
        .collect();
    assert_eq!(
        check(good.clone()),
        Vec::<&str>::new(),
        "a correct recording"
    );

    let mut gap = good.clone();
    gap.remove(3);
    assert_eq!(check(gap), ["gap-free"]);

    let mut duplicate = good.clone();
    duplicate.insert(3, events_at(3));
    assert!(check(duplicate).contains(&"unique"));

    let mut reordered = good.clone();
    reordered.swap(2, 3);
    assert!(check(reordered).contains(&"ordered"));

    let mut partial = good.clone();
    partial[2].events.pop();
    assert_eq!(check(partial), ["atomic"]);

    let mut wrong_prev = good.clone();
    wrong_prev[3].events[0].prev = None;
    assert_eq!(check(wrong_prev), ["prev_kv"]);

    let mut early_progress = good.clone();
    early_progress.insert(2, progress_at(5));
    assert_eq!(check(early_progress), ["progress-safe"]);
    let mut safe_progress = good.clone();
    safe_progress.insert(4, progress_at(4));
    assert_eq!(check(safe_progress), Vec::<&str>::new());

    let mut split = good.clone();
    let mut first_half = events_at(4);
    first_half.events.truncate(1);
    let mut second_half = events_at(4);
    second_half.events.remove(0);
    split.splice(3..4, [first_half, second_half]);
    assert!(
        check(split).contains(&"ordered"),
        "a revision split across responses"
    );

    let mut events_before_created = good.clone();
    events_before_created.swap(0, 1);
    assert!(check(events_before_created).contains(&"created"));

    let mut extra = good;
    extra[1].events.push(Ev {
        kind: Kind::Put,
        kv: Kv {
            key: b"g/zz".to_vec(),
            value: b"x".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: 0,
        },
        prev: None,
    });
    assert!(check(extra).contains(&"no-extra"));

    // An inconsistent set of acknowledged writes is refused.
    let mut gapped = writes.clone();
    gapped.remove(1);
    assert!(History::from_writes(1, &gapped).is_err());
}
