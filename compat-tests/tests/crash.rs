//! Crash safety: SIGKILL the member while concurrent clients write, restart it on the same
//! data directory, and check that every acknowledged write survived with its revision and
//! that revisions go on without gap or reuse.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::Path;

use compat_tests::kv::{current_revision, header_revision};
use compat_tests::ops::{isolated_flags, path_arg, run_until_exit};
use compat_tests::server::default_connect_options;
use compat_tests::{OutputExt, Server, ServerKind, ServerOptions};
use etcd_client::{Client, GetOptions};

const WRITERS: usize = 16;
const KEYS_PER_WRITER: usize = 25;
/// The member is killed once this much time has passed or this many writes were
/// acknowledged, whichever comes first.
const WRITE_PHASE: Duration = Duration::from_secs(2);
const TARGET_ACKS: usize = 20_000;
/// A writer stops on its own after this many writes, in case the kill never lands.
const MAX_WRITES_PER_WRITER: usize = 50_000;
/// Bound on how long writers may take to notice that the member is gone.
const WRITERS_STOP_TIMEOUT: Duration = Duration::from_secs(30);
const WRITER_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const KEY_PREFIX: &str = "crash/";

/// One write the member acknowledged.
#[derive(Clone, Debug)]
struct Ack {
    key: String,
    value: String,
    revision: i64,
    /// Position in its writer's sequence, to order writes to the same key.
    sequence: usize,
}

fn key_of(writer: usize, sequence: usize) -> String {
    format!("{KEY_PREFIX}{writer:02}/{:02}", sequence % KEYS_PER_WRITER)
}

fn value_of(writer: usize, sequence: usize) -> String {
    format!("w{writer}-s{sequence}")
}

/// The sequence number encoded in a value written by [`value_of`].
fn sequence_of(value: &str) -> usize {
    value
        .rsplit_once("-s")
        .and_then(|(_, sequence)| sequence.parse().ok())
        .unwrap_or_else(|| panic!("{value:?} was not written by this test"))
}

/// Puts in a loop until a put fails (the member is gone) or the bound is reached.
async fn write_until_failure(
    mut client: Client,
    writer: usize,
    acked: Arc<AtomicUsize>,
) -> Vec<Ack> {
    let mut acks = Vec::new();
    for sequence in 0..MAX_WRITES_PER_WRITER {
        let key = key_of(writer, sequence);
        let value = value_of(writer, sequence);
        let Ok(response) = client.put(key.clone(), value.clone(), None).await else {
            break;
        };
        acks.push(Ack {
            key,
            value,
            revision: header_revision(response.header()),
            sequence,
        });
        acked.fetch_add(1, Ordering::Relaxed);
    }
    acks
}

/// Runs the writers, SIGKILLs the member in the middle of their writes, and returns every
/// acknowledged write.
async fn write_then_kill(server: &mut Server, writer_count: usize) -> Vec<Ack> {
    let acked = Arc::new(AtomicUsize::new(0));
    let options = default_connect_options().with_timeout(WRITER_REQUEST_TIMEOUT);
    let mut writers = Vec::new();
    for writer in 0..writer_count {
        let client = server.client_with(options.clone()).await;
        writers.push(tokio::spawn(write_until_failure(
            client,
            writer,
            acked.clone(),
        )));
    }

    let started = Instant::now();
    while started.elapsed() < WRITE_PHASE && acked.load(Ordering::Relaxed) < TARGET_ACKS {
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let acked_before_kill = acked.load(Ordering::Relaxed);
    server.kill();
    assert!(
        acked_before_kill > 0,
        "no write was acknowledged before the kill"
    );

    let mut acks = Vec::new();
    for writer in writers {
        let writer_acks = tokio::time::timeout(WRITERS_STOP_TIMEOUT, writer)
            .await
            .unwrap_or_else(|_| {
                panic!("writers still running {WRITERS_STOP_TIMEOUT:?} after the kill")
            })
            .expect("writer task panicked");
        acks.extend(writer_acks);
    }
    acks
}

#[track_caller]
fn assert_revisions_unique(acks: &[Ack]) {
    let mut seen = HashSet::new();
    for ack in acks {
        assert!(ack.revision > 1, "{ack:?}: revision 1 is the empty store");
        assert!(
            seen.insert(ack.revision),
            "revision {} acknowledged twice",
            ack.revision
        );
    }
}

/// Every acknowledged write is readable at its revision with its value.
async fn assert_acks_readable_at_their_revisions(client: &Client, acks: &[Ack]) {
    let chunk_size = acks.len().div_ceil(WRITERS).max(1);
    let mut checkers = Vec::new();
    for chunk in acks.chunks(chunk_size) {
        let mut client = client.clone();
        let chunk = chunk.to_vec();
        checkers.push(tokio::spawn(async move {
            for ack in chunk {
                let options = GetOptions::new().with_revision(ack.revision);
                let response = client
                    .get(ack.key.clone(), Some(options))
                    .await
                    .unwrap_or_else(|error| panic!("{ack:?}: range at its revision: {error}"));
                let kv = response
                    .kvs()
                    .first()
                    .unwrap_or_else(|| panic!("{ack:?}: lost after the crash"));
                assert_eq!(
                    (kv.value(), kv.mod_revision()),
                    (ack.value.as_bytes(), ack.revision),
                    "{ack:?}: (value, mod_revision) after the crash"
                );
            }
        }));
    }
    for checker in checkers {
        checker.await.expect("a checker panicked");
    }
}

/// Each key now holds its last acknowledged write, or a later write of the same writer
/// that was in flight at the kill.
async fn assert_latest_values(client: &mut Client, acks: &[Ack]) -> i64 {
    let mut last_ack: HashMap<&str, &Ack> = HashMap::new();
    for ack in acks {
        let entry = last_ack.entry(&ack.key).or_insert(ack);
        if ack.sequence > entry.sequence {
            *entry = ack;
        }
    }
    let all = client
        .get(KEY_PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .expect("range every key of the test");
    let mut total_versions = 0;
    for kv in all.kvs() {
        let key = kv.key_str().expect("keys of this test are UTF-8");
        let value = kv.value_str().expect("values of this test are UTF-8");
        total_versions += kv.version();
        let Some(ack) = last_ack.get(key) else {
            continue; // only unacknowledged writes reached this key
        };
        if kv.mod_revision() == ack.revision {
            assert_eq!(
                value, ack.value,
                "{key}: value of its last acknowledged write"
            );
        } else {
            assert!(
                kv.mod_revision() > ack.revision && sequence_of(value) > ack.sequence,
                "{key}: holds {value:?} at {} instead of {ack:?} or a later write",
                kv.mod_revision()
            );
        }
    }
    for key in last_ack.keys() {
        assert!(
            all.kvs().iter().any(|kv| kv.key() == key.as_bytes()),
            "{key} lost after the crash"
        );
    }
    total_versions
}

/// Writes, SIGKILL, restart, and every check above; returns the restarted member.
async fn crash_and_verify(options: ServerOptions, writer_count: usize) -> Server {
    let mut server = Server::start(options).await;
    let acks = write_then_kill(&mut server, writer_count).await;
    assert_revisions_unique(&acks);
    let max_acked = acks.iter().map(|ack| ack.revision).max().unwrap_or(1);

    server.restart().await;
    let mut client = server.client().await;

    let current = current_revision(&mut client).await;
    assert!(
        current >= max_acked,
        "current revision {current} is below the acknowledged revision {max_acked}"
    );
    assert_acks_readable_at_their_revisions(&client, &acks).await;
    let total_versions = assert_latest_values(&mut client, &acks).await;
    // Every put made one revision and one version of its key, and nothing else wrote.
    assert_eq!(
        total_versions,
        current - 1,
        "revisions 2..={current} must be exactly the {total_versions} puts that landed"
    );
    let next = client
        .put("after-crash", "v", None)
        .await
        .expect("put after the restart");
    assert_eq!(
        header_revision(next.header()),
        current + 1,
        "the next revision"
    );
    assert_eq!(current_revision(&mut client).await, current + 1);
    eprintln!(
        "{} writes acknowledged before SIGKILL, {} landed, revision {current} after restart",
        acks.len(),
        total_versions
    );
    server
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill_and_revisions_continue() {
    crash_and_verify(ServerOptions::from_env(), WRITERS).await;
}

/// A lone writer's put is made durable on the appending thread instead of the syncer's
/// (storage/syncer.rs): its acknowledgements must be as durable.
#[tokio::test]
async fn a_lone_writers_acknowledged_writes_survive_sigkill() {
    crash_and_verify(ServerOptions::from_env(), 1).await;
}

/// Files directly in `dir` whose name ends with `suffix`.
fn files_ending_with(dir: &Path, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .collect()
}

#[tokio::test]
async fn with_a_wal_dir_acknowledged_writes_survive_sigkill_and_it_is_required_after() {
    let wal_root = tempfile::tempdir().expect("temporary directory for the WAL");
    let wal_dir = wal_root.path().join("wal");
    let options = ServerOptions::from_env().args(["--wal-dir".to_string(), path_arg(&wal_dir)]);
    let mut server = crash_and_verify(options, WRITERS).await;
    if server.kind() != ServerKind::Keelson {
        return;
    }
    // The log is where it was asked to be, and only there.
    assert!(
        !files_ending_with(&wal_dir, ".log").is_empty(),
        "no RocksDB log file in the WAL dir {}",
        wal_dir.display()
    );
    let store = server.data_dir().join("member").join("db");
    assert_eq!(
        files_ending_with(&store, ".log")
            .into_iter()
            .filter(|name| name != "LOG" && !name.starts_with("LOG."))
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "write-ahead log files left in the store {}",
        store.display()
    );
    // Started again without its WAL, the member would lose what the log holds: refused.
    server.kill();
    let output = run_until_exit(ServerKind::Keelson, &isolated_flags(server.dir()), &[]).await;
    assert!(
        !output.status.success(),
        "keelson started without its --wal-dir"
    );
    let text = output.stderr_text();
    assert!(
        text.contains("Start keelson with the same --wal-dir")
            && text.contains(&path_arg(&wal_dir)),
        "{text}"
    );
    server.restart().await;
}
