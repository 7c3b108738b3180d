//! A flood of expiring leases: 10,000 leases with one key each, granted and attached as fast as
//! concurrent clients can, all expire within a few seconds of each other. Every key must go
//! (exactly one DELETE each, none before its lease's TTL ran out) within a bounded time, while
//! writes of other keys keep succeeding with bounded latency.
//!
//! Its own test binary, so that its load does not disturb the timing tests of `lease_client`.
//! Run with `--nocapture` to see the measured numbers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compat_tests::kv::current_revision;
use compat_tests::lease::{collect_deletes, fast_options, lease_ids, poll_until, watch_created};
use compat_tests::Server;
use etcd_client::{GetOptions, PutOptions, WatchFilterType, WatchOptions};

const LEASES: usize = 10_000;
/// Long enough for every grant and attach to land before the first lease expires.
const TTL: i64 = 8;
const CONNECTIONS: usize = 8;
const GRANTERS: usize = 128;
const WRITERS: usize = 4;
/// Every key must be gone this long after the last lease's deadline.
const ALL_GONE_WITHIN: Duration = Duration::from_secs(30);
/// The slowest write of another key allowed while the flood is revoked.
const MAX_PUT_LATENCY: Duration = Duration::from_secs(2);
const PREFIX: &str = "flood/";

fn key_of(index: usize) -> String {
    format!("{PREFIX}{index:05}")
}

#[derive(Default, Debug)]
struct Latencies {
    samples: Vec<Duration>,
}

/// Latencies of the writes that started in a window.
fn window(samples: &[(Instant, Duration)], from: Instant, to: Instant) -> Latencies {
    Latencies {
        samples: samples
            .iter()
            .filter(|(began, _)| *began >= from && *began <= to)
            .map(|(_, latency)| *latency)
            .collect(),
    }
}

impl Latencies {
    fn max(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_leases_expiring_at_once_are_all_revoked_without_stalling_writes() {
    let server = Server::start(fast_options()).await;
    let mut client = server.client().await;
    let start_revision = current_revision(&mut client).await;
    let mut watch = watch_created(
        &mut client,
        PREFIX,
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision + 1)
            .with_filters([WatchFilterType::NoPut]),
    )
    .await;

    // Grant and attach, concurrently.
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(server.client().await);
    }
    // All grants first, then all attaches: the leases' deadlines are then as close together
    // as the grants can be issued.
    let grants_started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for granter in 0..GRANTERS {
        let mut client = clients[granter % CONNECTIONS].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut leases = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < LEASES {
                let lease = client
                    .lease_grant(TTL, None)
                    .await
                    .unwrap_or_else(|error| panic!("grant a lease: {error}"))
                    .id();
                leases.push(lease);
            }
            leases
        }));
    }
    let mut leases = Vec::with_capacity(LEASES);
    for task in tasks {
        leases.extend(task.await.expect("granter task"));
    }
    let granted_in = grants_started.elapsed();
    let granted = Instant::now();
    assert_eq!(leases.len(), LEASES);
    assert_eq!(
        leases.iter().collect::<HashSet<_>>().len(),
        LEASES,
        "every grant got its own ID"
    );

    let leases = Arc::new(leases);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for granter in 0..GRANTERS {
        let mut client = clients[granter % CONNECTIONS].clone();
        let next = next.clone();
        let leases = leases.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(&lease) = leases.get(index) else {
                    return;
                };
                client
                    .put(
                        key_of(index),
                        "v",
                        Some(PutOptions::new().with_lease(lease)),
                    )
                    .await
                    .unwrap_or_else(|error| {
                        panic!("attach {} to lease {lease:x}: {error}", key_of(index))
                    });
            }
        }));
    }
    for task in tasks {
        task.await.expect("attach task");
    }
    let attached_in = granted.elapsed();
    assert!(
        grants_started.elapsed() < Duration::from_secs(TTL as u64),
        "granting and attaching {LEASES} leases took {:?}, longer than their TTL of {TTL} s: \
         the flood would not expire at once",
        grants_started.elapsed()
    );
    let count = client
        .get(
            PREFIX,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count")
        .count();
    assert_eq!(
        count, LEASES as i64,
        "every key attached before any lease expired"
    );

    // Writers of other keys, from before the first deadline until every key is gone.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = server.client().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                client
                    .put(format!("other/{writer}"), sequence.to_string(), None)
                    .await
                    .unwrap_or_else(|error| panic!("write during the flood: {error}"));
                latencies.push((began, began.elapsed()));
                sequence += 1;
            }
            latencies
        }));
    }

    // Every key gets exactly one DELETE, none before its TTL could have run out.
    let first_deadline = grants_started + Duration::from_secs(TTL as u64);
    let last_deadline = granted + Duration::from_secs(TTL as u64);
    let deletes = collect_deletes(
        &mut watch,
        LEASES,
        last_deadline.saturating_duration_since(Instant::now()) + ALL_GONE_WITHIN,
    )
    .await;
    let all_deleted = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for writer in writers {
        let finished = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("writers stop within 30 s")
            .expect("writer task");
        samples.extend(finished);
    }

    let mut keys = HashSet::new();
    for delete in &deletes {
        assert!(
            keys.insert(delete.key.clone()),
            "{} deleted twice",
            delete.key
        );
    }
    assert_eq!(keys.len(), LEASES, "one DELETE per key");
    let first_delete = deletes.iter().map(|d| d.at).min().expect("deletes");
    assert!(
        first_delete >= first_deadline,
        "a lease expired {:?} before its TTL could have run out",
        first_deadline - first_delete
    );
    let latencies = window(&samples, grants_started, all_deleted);
    let during_revokes = window(&samples, first_delete, all_deleted);
    let revisions: HashSet<i64> = deletes.iter().map(|d| d.mod_revision).collect();

    let remaining = client
        .get(
            PREFIX,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count")
        .count();
    assert_eq!(remaining, 0, "every flood key is gone");
    poll_until(
        Duration::from_secs(10),
        "LeaseLeases lists no lease",
        || {
            let mut client = client.clone();
            async move { lease_ids(&mut client).await.is_empty().then_some(()) }
        },
    )
    .await;

    eprintln!(
        "lease flood on {}: {LEASES} leases (TTL {TTL} s) granted in {granted_in:?}, keys \
         attached in {attached_in:?}; first DELETE {:?} after the first deadline, last DELETE \
         {:?} after the last deadline ({:?} from first to last DELETE, {} revisions); writes of \
         other keys: {} in all, latency max {:?} p99 {:?} p50 {:?}; {} while DELETEs arrived, \
         latency max {:?} p99 {:?}",
        server.kind().name(),
        first_delete.saturating_duration_since(first_deadline),
        all_deleted.saturating_duration_since(last_deadline),
        all_deleted - first_delete,
        revisions.len(),
        latencies.samples.len(),
        latencies.max(),
        latencies.percentile(0.99),
        latencies.percentile(0.5),
        during_revokes.samples.len(),
        during_revokes.max(),
        during_revokes.percentile(0.99),
    );
    assert!(
        during_revokes.samples.len() >= WRITERS,
        "the writers wrote while the leases were revoked"
    );
    assert!(
        latencies.max() < MAX_PUT_LATENCY,
        "a write took {:?} during the flood (limit {MAX_PUT_LATENCY:?})",
        latencies.max()
    );
}
