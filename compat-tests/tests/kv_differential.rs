//! Differential tests: the same sequence of requests against the real etcd (the reference)
//! and against the server under test must give the same normalised answers, revisions,
//! versions, counts, errors and all.
//!
//! The server under test is the one `COMPAT_SERVER` names; when that is keelson and its
//! binary is absent, or when it is etcd, etcd is compared with itself, which still checks
//! that the sequences are deterministic.

use compat_tests::json::{
    compact_json, delete_json, first_difference, get_json, put_json, result_json, txn_json,
    Normalizer,
};
use compat_tests::server::keelson_binary;
use compat_tests::{etcdctl, etcdctl_stdin, OutputExt, Server, ServerKind, ServerOptions};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp,
};
use serde_json::{json, Value};

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

/// Starts the reference etcd and the server under test side by side.
async fn start_pair() -> (Server, Server) {
    tokio::join!(
        Server::start(ServerOptions::new(ServerKind::Etcd)),
        Server::start(ServerOptions::new(subject_kind())),
    )
}

/// A recording in which the reference failed for reasons outside the API (no connection,
/// a timeout) would compare equal for the wrong reason: every step must be an answer or
/// one of etcd's own errors.
#[track_caller]
fn assert_reference_answered(steps: &[(String, Value)]) {
    for (label, answer) in steps {
        let etcd_error = answer
            .pointer("/error/message")
            .and_then(Value::as_str)
            .is_some_and(|message| message.starts_with("etcdserver: "));
        assert!(
            answer.get("ok").is_some() || etcd_error,
            "reference etcd: `{label}` gave {answer}"
        );
    }
}

/// Compares two recordings step by step and reports every step that differs (a later
/// difference may follow from an earlier one, but a list shows more than the first).
#[track_caller]
fn assert_same_steps(
    normalizer: &Normalizer,
    reference: &[(String, Value)],
    subject: &[(String, Value)],
) {
    assert_eq!(reference.len(), subject.len(), "number of steps");
    let mut report = Vec::new();
    for (index, ((label, expected), (_, actual))) in reference.iter().zip(subject).enumerate() {
        let expected = normalizer.apply(expected);
        let actual = normalizer.apply(actual);
        if let Some(difference) = first_difference(&expected, &actual) {
            if report.is_empty() {
                report.push(format!(
                    "step {index} `{label}`: at {difference}\n  etcd:    {expected}\n  subject: {actual}"
                ));
            } else {
                report.push(format!("step {index} `{label}`: at {difference}"));
            }
        }
    }
    assert!(
        report.is_empty(),
        "{} of {} steps differ from etcd:\n{}",
        report.len(),
        reference.len(),
        report.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// etcd-client
// ---------------------------------------------------------------------------------------

/// Runs requests and records each answer (or error) as JSON with a label.
struct Recorder {
    client: Client,
    steps: Vec<(String, Value)>,
}

impl Recorder {
    fn record(&mut self, label: String, answer: Value) {
        self.steps.push((label, answer));
    }

    async fn put(&mut self, key: &str, value: &str, options: Option<PutOptions>) {
        let result = self.client.put(key, value, options.clone()).await;
        self.record(
            format!("put {key}={value} {options:?}"),
            result_json(&result, put_json),
        );
    }

    async fn get(&mut self, key: &str, options: Option<GetOptions>) {
        let result = self.client.get(key, options.clone()).await;
        self.record(
            format!("get {key} {options:?}"),
            result_json(&result, get_json),
        );
    }

    async fn delete(&mut self, key: &str, options: Option<DeleteOptions>) {
        let result = self.client.delete(key, options.clone()).await;
        self.record(
            format!("delete {key} {options:?}"),
            result_json(&result, delete_json),
        );
    }

    async fn txn(&mut self, name: &str, txn: Txn) {
        let result = self.client.txn(txn).await;
        self.record(format!("txn {name}"), result_json(&result, txn_json));
    }

    async fn compact(&mut self, revision: i64, physical: bool) {
        let options = physical.then(|| CompactionOptions::new().with_physical());
        let result = self.client.compact(revision, options).await;
        self.record(
            format!("compact {revision} physical={physical}"),
            result_json(&result, compact_json),
        );
    }
}

async fn record_client_script(server: &Server) -> Vec<(String, Value)> {
    let mut recorder = Recorder {
        client: server.client().await,
        steps: Vec::new(),
    };
    writes_and_reads(&mut recorder).await;
    transactions(&mut recorder).await;
    errors(&mut recorder).await;
    compaction(&mut recorder).await;
    recorder.steps
}

async fn writes_and_reads(r: &mut Recorder) {
    let prev = || Some(PutOptions::new().with_prev_key());
    let all = || GetOptions::new().with_all_keys();
    r.put("a", "1", None).await;
    r.put("b", "2", prev()).await;
    r.put("c", "3", None).await;
    r.put("a", "11", prev()).await;
    r.put("p/1", "x", None).await;
    r.put("p/2", "y", None).await;
    r.put(
        "b",
        "",
        Some(PutOptions::new().with_ignore_value().with_prev_key()),
    )
    .await;
    r.get("a", None).await;
    r.get("", Some(all())).await;
    r.get("p/", Some(GetOptions::new().with_prefix().with_limit(1)))
        .await;
    r.get("a", Some(GetOptions::new().with_range("c"))).await;
    r.get("c", Some(GetOptions::new().with_range("a"))).await;
    r.get(
        "b",
        Some(GetOptions::new().with_from_key().with_keys_only()),
    )
    .await;
    r.get("", Some(all().with_revision(3))).await;
    r.get("", Some(all().with_count_only())).await;
    r.get(
        "",
        Some(all().with_sort(SortTarget::Mod, SortOrder::Descend)),
    )
    .await;
    r.get(
        "",
        Some(
            all()
                .with_sort(SortTarget::Mod, SortOrder::None)
                .with_limit(1),
        ),
    )
    .await;
    r.get(
        "",
        Some(all().with_min_mod_revision(4).with_max_create_revision(5)),
    )
    .await;
    r.get("a", Some(GetOptions::new().with_serializable()))
        .await;
    r.delete("b", Some(DeleteOptions::new().with_prev_key()))
        .await;
    r.delete("absent", None).await;
    r.delete(
        "p/",
        Some(DeleteOptions::new().with_prefix().with_prev_key()),
    )
    .await;
    r.put("b", "again", None).await;
    r.get("b", None).await;
}

async fn transactions(r: &mut Recorder) {
    r.txn(
        "create if absent",
        Txn::new()
            .when([Compare::mod_revision("t", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("t", "1", None)])
            .or_else([TxnOp::get("t", None)]),
    )
    .await;
    r.txn(
        "create again fails",
        Txn::new()
            .when([Compare::mod_revision("t", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("t", "2", None)])
            .or_else([TxnOp::get("t", None)]),
    )
    .await;
    r.txn(
        "mixed ops",
        Txn::new()
            .when([
                Compare::value("a", CompareOp::Equal, "11"),
                Compare::version("c", CompareOp::Greater, 0),
            ])
            .and_then([
                TxnOp::get("a", None),
                TxnOp::put("a", "12", Some(PutOptions::new().with_prev_key())),
                TxnOp::get("a", None),
                TxnOp::delete("c", Some(DeleteOptions::new().with_prev_key())),
                TxnOp::delete("absent", None),
            ]),
    )
    .await;
    r.txn(
        "nested",
        Txn::new()
            .when([Compare::create_revision("a", CompareOp::Less, 100)])
            .and_then([TxnOp::txn(
                Txn::new()
                    .when([Compare::lease("a", CompareOp::NotEqual, 0)])
                    .and_then([TxnOp::put("n", "then", None)])
                    .or_else([TxnOp::put("n", "else", None)]),
            )]),
    )
    .await;
    r.txn(
        "prefix compare",
        Txn::new()
            .when([Compare::version("a", CompareOp::Greater, 0).with_range("z")])
            .and_then([TxnOp::get("", Some(GetOptions::new().with_all_keys()))]),
    )
    .await;
    r.txn("empty", Txn::new()).await;
}

async fn errors(r: &mut Recorder) {
    r.txn(
        "duplicate key",
        Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]),
    )
    .await;
    r.txn(
        "empty key in compare",
        Txn::new().when([Compare::value("", CompareOp::Equal, "")]),
    )
    .await;
    r.put("", "v", None).await;
    r.get("", None).await;
    r.delete("", None).await;
    r.put("absent", "", Some(PutOptions::new().with_ignore_value()))
        .await;
    r.put("a", "v", Some(PutOptions::new().with_ignore_value()))
        .await;
    r.put("a", "v", Some(PutOptions::new().with_lease(99)))
        .await;
    r.put(
        "a",
        "v",
        Some(PutOptions::new().with_ignore_lease().with_lease(99)),
    )
    .await;
    r.get("a", Some(GetOptions::new().with_revision(1000)))
        .await;
}

async fn compaction(r: &mut Recorder) {
    r.compact(6, false).await;
    r.get("a", Some(GetOptions::new().with_revision(5))).await;
    r.get("", Some(GetOptions::new().with_all_keys().with_revision(6)))
        .await;
    r.compact(6, false).await;
    r.compact(1000, false).await;
    r.put("a", "after", None).await;
    r.compact(9, true).await;
    r.get("", Some(GetOptions::new().with_all_keys())).await;
    r.get("a", Some(GetOptions::new().with_revision(8))).await;
}

#[tokio::test]
async fn client_requests_get_the_same_answers_as_from_etcd() {
    let (reference, subject) = start_pair().await;

    let (expected, actual) = tokio::join!(
        record_client_script(&reference),
        record_client_script(&subject)
    );

    assert_reference_answered(&expected);
    assert_same_steps(
        &Normalizer::default().tolerate_fuller_headers(),
        &expected,
        &actual,
    );
}

// ---------------------------------------------------------------------------------------
// etcdctl
// ---------------------------------------------------------------------------------------

/// One etcdctl invocation of the script; `stdin` is for `txn`.
struct Command {
    args: &'static [&'static str],
    stdin: Option<&'static str>,
}

const fn run(args: &'static [&'static str]) -> Command {
    Command { args, stdin: None }
}

const fn txn(args: &'static [&'static str], stdin: &'static str) -> Command {
    Command {
        args,
        stdin: Some(stdin),
    }
}

const ETCDCTL_SCRIPT: &[Command] = &[
    run(&["put", "foo", "bar", "-w", "json"]),
    run(&["put", "foo", "baz", "--prev-kv", "-w", "json"]),
    run(&["put", "foo1", "1"]),
    run(&["put", "foo2", "2", "--prev-kv"]),
    run(&["put", "zoo", "z"]),
    run(&["get", "foo"]),
    run(&["get", "foo", "-w", "json"]),
    run(&["get", "foo", "--prefix", "-w", "json"]),
    run(&["get", "foo", "--prefix", "--print-value-only"]),
    run(&["get", "foo", "foo2", "-w", "json"]),
    run(&["get", "foo", "--prefix", "--limit=1", "-w", "json"]),
    run(&["get", "foo", "--rev=2", "-w", "json"]),
    run(&["get", "foo", "--prefix", "--keys-only", "-w", "json"]),
    run(&[
        "get",
        "",
        "--from-key",
        "--sort-by=MODIFY",
        "--order=DESCEND",
        "-w",
        "json",
    ]),
    run(&[
        "get",
        "",
        "--from-key",
        "--sort-by=KEY",
        "--order=ASCEND",
        "-w",
        "json",
    ]),
    run(&["get", "missing", "-w", "json"]),
    run(&["get", "foo", "--rev=100"]),
    run(&["del", "foo1", "--prev-kv", "-w", "json"]),
    run(&["del", "missing", "-w", "json"]),
    run(&["del", "foo", "--prefix"]),
    txn(
        &["txn", "-w", "json"],
        "mod(\"zoo\") > \"0\"\n\nget zoo\nput t 1\ndel zoo\n\nput never 1\n\n",
    ),
    txn(&["txn"], "value(\"t\") = \"2\"\n\nput never 1\n\nget t\n\n"),
    run(&["put", "k", "--ignore-value"]),
    run(&["put", "k", "v", "--lease=1234"]),
    run(&["compaction", "5"]),
    run(&["get", "foo", "--rev=4"]),
    run(&["compaction", "5"]),
    run(&["compaction", "--physical", "9"]),
    run(&["get", "", "--from-key", "-w", "json"]),
    run(&["endpoint", "status", "-w", "json"]),
    run(&["member", "list", "-w", "json"]),
];

/// Fields of `endpoint status` and `member list` that name ports, IDs, versions, sizes or
/// raft positions, which legitimately differ between two servers.
fn etcdctl_normalizer() -> Normalizer {
    [
        "Endpoint",
        "ID",
        "leader",
        "Status.version",
        "dbSize",
        "dbSizeInUse",
        "raftIndex",
        "raftTerm",
        "raftAppliedIndex",
        "peerURLs",
        "clientURLs",
    ]
    .into_iter()
    .fold(
        Normalizer::default().tolerate_fuller_headers(),
        Normalizer::blank,
    )
}

/// An invocation's outcome: exit status, stdout (parsed when JSON) and the error line.
async fn record_etcdctl(server: &Server, command: &Command) -> Value {
    let output = match command.stdin {
        Some(stdin) => etcdctl_stdin(server, command.args, stdin).await,
        None => etcdctl(server, command.args).await,
    };
    let stdout = output.stdout_text();
    let error_line = output
        .stderr_text()
        .lines()
        .find_map(|line| line.strip_prefix("Error: ").map(String::from));
    let mut stdout = serde_json::from_str::<Value>(&stdout).unwrap_or(Value::String(stdout));
    if command.args.starts_with(&["member", "list"]) {
        // etcd leaves MemberList's header revision out; keelson fills every header
        // (shared/etcd-compat.md section 2).
        if let Some(header) = stdout.get_mut("header").and_then(Value::as_object_mut) {
            header.remove("revision");
        }
    }
    json!({
        "success": output.status.success(),
        "stdout": stdout,
        "error": error_line,
    })
}

async fn record_etcdctl_script(server: &Server) -> Vec<(String, Value)> {
    let mut steps = Vec::new();
    for command in ETCDCTL_SCRIPT {
        let outcome = record_etcdctl(server, command).await;
        steps.push((command.args.join(" "), outcome));
    }
    steps
}

#[tokio::test]
async fn etcdctl_prints_the_same_as_with_etcd() {
    let (reference, subject) = start_pair().await;

    let (expected, actual) = tokio::join!(
        record_etcdctl_script(&reference),
        record_etcdctl_script(&subject)
    );

    for (label, outcome) in &expected {
        let etcd_error = outcome["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("etcdserver: "));
        assert!(
            outcome["success"] == Value::Bool(true) || etcd_error,
            "reference etcd: `etcdctl {label}` gave {outcome}"
        );
    }
    assert_same_steps(&etcdctl_normalizer(), &expected, &actual);
}
