//! `etcdctl watch` (Debian's etcdctl 3.4, API v3) against the real etcd and the server under
//! test, side by side: a key, `--prefix`, `--rev` with `--prev-kv`, `-w json`, interactive
//! mode (`watch -i` fed commands on stdin) and a compacted `--rev`. Each scenario runs the
//! same steps against both members; the printed output must be identical, and equal to what
//! the scenario expects.
//!
//! `etcdctl watch` runs until it is killed: it runs as a child whose stdout is read line by
//! line, each line within a bounded wait, and is killed at the end. A live watch (without
//! `--rev`) is known to be in place once it printed an event of a probe key; output before
//! a marker event is discarded, so what is compared does not depend on timing.
//!
//! The server under test is the one `COMPAT_SERVER` names; when that is etcd, or keelson's
//! binary is absent, etcd is compared with itself.

use compat_tests::json::{b64, first_difference, Normalizer};
use compat_tests::server::keelson_binary;
use compat_tests::watch::{wait_until_watching, EtcdctlWatch};
use compat_tests::{Server, ServerKind, ServerOptions};
use etcd_client::{Client, CompactionOptions, DeleteOptions, Txn, TxnOp};
use serde_json::Value;

fn subject_kind() -> ServerKind {
    let kind = ServerKind::from_env();
    if kind == ServerKind::Keelson && !kind.is_available() {
        eprintln!(
            "note: no keelson binary at {}; comparing etcd with etcd",
            keelson_binary().display()
        );
        return ServerKind::Etcd;
    }
    kind
}

/// The reference etcd and the server under test.
async fn start_pair() -> (Server, Server) {
    tokio::join!(
        Server::start(ServerOptions::new(ServerKind::Etcd)),
        Server::start(ServerOptions::new(subject_kind())),
    )
}

/// Runs `scenario` against both members at once and asserts that both printed `expected`.
macro_rules! compare {
    ($scenario:ident, $expected:expr) => {{
        let (etcd, subject) = start_pair().await;
        let (reference, actual) = tokio::join!($scenario(&etcd), $scenario(&subject));
        let expected: Vec<String> = $expected.iter().map(|line| line.to_string()).collect();
        assert_eq!(
            reference, expected,
            "etcd's output is not what the scenario expects"
        );
        assert_eq!(
            actual,
            reference,
            "{} printed something else than etcd",
            subject.kind().name()
        );
    }};
}

async fn put(client: &mut Client, key: &str, value: &str) {
    client
        .put(key, value, None)
        .await
        .unwrap_or_else(|error| panic!("put {key}: {error}"));
}

async fn delete(client: &mut Client, key: &str, options: Option<DeleteOptions>) {
    client
        .delete(key, options)
        .await
        .unwrap_or_else(|error| panic!("delete {key}: {error}"));
}

// ---------------------------------------------------------------------------------------
// Scenarios: each returns what etcdctl printed
// ---------------------------------------------------------------------------------------

async fn watch_one_key(server: &Server) -> Vec<String> {
    let mut client = server.client().await;
    let mut watch = EtcdctlWatch::spawn(server, &["watch", "k"]);
    wait_until_watching(&mut client, &mut watch, "k", "marker", |line| {
        line == "marker"
    })
    .await;
    put(&mut client, "k", "v1").await;
    put(&mut client, "other", "x").await;
    put(&mut client, "kk", "y").await;
    put(&mut client, "k", "v2").await;
    delete(&mut client, "k", None).await;
    put(&mut client, "k", "v3").await;
    let mut lines = watch.lines(12, "four events of k").await;
    lines.extend(watch.kill().await);
    lines
}

#[tokio::test]
async fn watch_a_key_prints_its_puts_and_deletes_only() {
    compare!(
        watch_one_key,
        ["PUT", "k", "v1", "PUT", "k", "v2", "DELETE", "k", "", "PUT", "k", "v3"]
    );
}

async fn watch_prefix(server: &Server) -> Vec<String> {
    let mut client = server.client().await;
    let mut watch = EtcdctlWatch::spawn(server, &["watch", "--prefix", "p/"]);
    wait_until_watching(&mut client, &mut watch, "p/probe", "marker", |line| {
        line == "marker"
    })
    .await;
    put(&mut client, "p/a", "1").await;
    put(&mut client, "q/x", "not watched").await;
    put(&mut client, "p", "not under p/").await;
    put(&mut client, "p/b", "2").await;
    client
        .txn(Txn::new().and_then([TxnOp::put("p/c", "3", None), TxnOp::delete("p/a", None)]))
        .await
        .expect("txn");
    delete(&mut client, "p/", Some(DeleteOptions::new().with_prefix())).await;
    let mut lines = watch.lines(21, "seven events under p/").await;
    lines.extend(watch.kill().await);
    lines
}

#[tokio::test]
async fn watch_prefix_prints_events_under_the_prefix_in_order() {
    compare!(
        watch_prefix,
        [
            "PUT", "p/a", "1", //
            "PUT", "p/b", "2", //
            "PUT", "p/c", "3", //
            "DELETE", "p/a", "", //
            "DELETE", "p/b", "", //
            "DELETE", "p/c", "", //
            "DELETE", "p/probe", "",
        ]
    );
}

async fn watch_rev_prev_kv(server: &Server) -> Vec<String> {
    let mut client = server.client().await;
    put(&mut client, "k", "a").await; // 2
    put(&mut client, "k", "b").await; // 3
    put(&mut client, "other", "x").await; // 4
    delete(&mut client, "k", None).await; // 5
    put(&mut client, "k", "c").await; // 6
                                      // History from revision 3, then live events: the same lines whenever the watch starts.
    let mut watch = EtcdctlWatch::spawn(server, &["watch", "k", "--rev=3", "--prev-kv"]);
    let mut lines = watch.lines(13, "replay from revision 3").await;
    put(&mut client, "k", "d").await;
    lines.extend(watch.lines(5, "a live event").await);
    lines.extend(watch.kill().await);
    lines
}

#[tokio::test]
async fn watch_rev_with_prev_kv_replays_history_then_goes_live() {
    compare!(
        watch_rev_prev_kv,
        [
            "PUT", "k", "a", "k", "b", // an update: the previous pair first
            "DELETE", "k", "b", "k", "", // a delete: the deleted pair, then the key
            "PUT", "k", "c", // a create: no previous pair
            "PUT", "k", "c", "k", "d",
        ]
    );
}

async fn watch_prefix_rev(server: &Server) -> Vec<String> {
    let mut client = server.client().await;
    put(&mut client, "p/a", "1").await; // 2
    put(&mut client, "p/b", "2").await; // 3
    client
        .txn(Txn::new().and_then([TxnOp::put("p/c", "3", None), TxnOp::put("q", "x", None)]))
        .await
        .expect("txn"); // 4
    delete(&mut client, "p/", Some(DeleteOptions::new().with_prefix())).await; // 5
    let mut watch = EtcdctlWatch::spawn(server, &["watch", "--prefix", "p/", "--rev", "3"]);
    let mut lines = watch.lines(15, "replay of p/ from revision 3").await;
    lines.extend(watch.kill().await);
    lines
}

#[tokio::test]
async fn watch_prefix_from_a_past_revision() {
    compare!(
        watch_prefix_rev,
        [
            "PUT", "p/b", "2", //
            "PUT", "p/c", "3", //
            "DELETE", "p/a", "", //
            "DELETE", "p/b", "", //
            "DELETE", "p/c", "",
        ]
    );
}

/// `-w json` of live events: whole responses, compared after blanking what differs between
/// members (cluster and member IDs, raft term).
async fn watch_json(server: &Server) -> Vec<String> {
    let mut client = server.client().await;
    let mut watch = EtcdctlWatch::spawn(server, &["watch", "--prefix", "j/", "-w", "json"]);
    let marker = b64("marker");
    wait_until_watching(&mut client, &mut watch, "j/probe", "marker", |line| {
        line.contains(&marker)
    })
    .await;
    put(&mut client, "j/a", "1").await;
    client
        .txn(Txn::new().and_then([TxnOp::put("j/b", "2", None), TxnOp::delete("j/a", None)]))
        .await
        .expect("txn");
    let mut lines = watch.lines(2, "two responses").await;
    lines.extend(watch.kill().await);
    // Revisions differ with the number of probes; the offset to the marker does not.
    let normalizer = Normalizer::default();
    lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            normalizer.apply(&value).to_string()
        })
        .collect()
}

#[tokio::test]
async fn watch_json_prints_whole_responses() {
    let (etcd, subject) = start_pair().await;
    let (reference, actual) = tokio::join!(watch_json(&etcd), watch_json(&subject));
    assert_eq!(reference.len(), 2, "etcd: {reference:?}");
    // The revisions depend on how many probes each member needed: compare each response
    // relative to its first event's revision.
    let shift = |lines: &[String]| -> Vec<Value> {
        let values: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        let base = values[0]
            .pointer("/Events/0/kv/mod_revision")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("no mod_revision in {}", values[0]));
        let normalizer = Normalizer::default().revision_offset(base);
        values.iter().map(|v| normalizer.apply(v)).collect()
    };
    let (reference, actual) = (shift(&reference), shift(&actual));
    eprintln!("etcd, normalised: {}", Value::Array(reference.clone()));
    for (index, (expected, got)) in reference.iter().zip(&actual).enumerate() {
        if let Some(difference) = first_difference(expected, got) {
            panic!(
                "response {index}: {} differs from etcd at {difference}\n  etcd:    {expected}\n  subject: {got}",
                subject.kind().name()
            );
        }
    }
    assert_eq!(actual.len(), reference.len(), "number of responses");
}

/// Interactive mode: watch commands on stdin, one after another on the same stream.
async fn watch_interactive(server: &Server) -> Vec<String> {
    let mut client = server.client().await;
    put(&mut client, "r", "r1").await; // 2
    put(&mut client, "r", "r2").await; // 3
    let mut watch = EtcdctlWatch::spawn(server, &["watch", "-i"]);
    // A watch from the past first, while the revisions are still the same on both members.
    watch.send_line("watch --rev 2 --prev-kv r").await;
    let mut lines = watch.lines(8, "replay of r").await;
    watch.send_line("watch a").await;
    wait_until_watching(&mut client, &mut watch, "a", "marker-a", |line| {
        line == "marker-a"
    })
    .await;
    watch.send_line("watch --prefix b/").await;
    wait_until_watching(&mut client, &mut watch, "b/probe", "marker-b", |line| {
        line == "marker-b"
    })
    .await;
    // One write at a time: each watch prints from its own goroutine, so two events printed
    // by different watches could interleave if they were not waited for one by one.
    put(&mut client, "a", "1").await;
    lines.extend(watch.lines(3, "event of a").await);
    put(&mut client, "b/x", "2").await;
    lines.extend(watch.lines(3, "event of b/x").await);
    put(&mut client, "c", "not watched").await;
    delete(&mut client, "b/x", None).await;
    lines.extend(watch.lines(3, "delete of b/x").await);
    put(&mut client, "r", "r3").await;
    lines.extend(watch.lines(5, "live event of r").await);
    lines.extend(watch.kill().await);
    lines
}

#[tokio::test]
async fn watch_interactive_runs_each_command_on_one_stream() {
    compare!(
        watch_interactive,
        [
            "PUT", "r", "r1", // create: no previous pair
            "PUT", "r", "r1", "r", "r2", //
            "PUT", "a", "1", //
            "PUT", "b/x", "2", //
            "DELETE", "b/x", "", //
            "PUT", "r", "r2", "r", "r3",
        ]
    );
}

/// A `--rev` below the compaction: etcdctl reports the cancel and exits.
async fn watch_compacted(server: &Server) -> Vec<String> {
    let mut client = server.client().await;
    for value in ["1", "2", "3", "4"] {
        put(&mut client, "k", value).await; // 2..=5
    }
    client
        .compact(4, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let watch = EtcdctlWatch::spawn(server, &["watch", "k", "--rev=2"]);
    let (status, stdout, stderr) = watch.wait_exit("watch below the compaction").await;
    let mut lines = vec![format!("exit code {:?}", status.code())];
    lines.extend(stdout);
    lines.extend(stderr.lines().map(|line| format!("stderr: {line}")));
    lines
}

#[tokio::test]
async fn watch_rev_below_the_compaction_is_canceled() {
    compare!(
        watch_compacted,
        [
            "exit code Some(5)",
            "stderr: watch was canceled (etcdserver: mvcc: required revision has been compacted)",
            "stderr: Error: watch is canceled by the server",
        ]
    );
}
