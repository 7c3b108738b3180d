//! The KV service, Maintenance.Status and Cluster.MemberList through the real `etcdctl`
//! (Debian's etcd-client, API v3), asserting on its exact output where it is deterministic.

use compat_tests::json::{b64, b64_decode};
use compat_tests::{etcdctl, etcdctl_stdin, messages, OutputExt, Server, ServerKind};
use serde_json::Value;

/// Runs etcdctl and returns its stdout, failing the test if it failed.
async fn ok(server: &Server, args: &[&str]) -> String {
    etcdctl(server, args).await.expect_success(&args.join(" "))
}

/// Runs etcdctl with `-w json` and returns its parsed stdout.
async fn json(server: &Server, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-w", "json"]);
    etcdctl(server, &args).await.expect_json(&args.join(" "))
}

/// Runs etcdctl, expects it to fail, and returns its `Error: ` message.
async fn error(server: &Server, args: &[&str]) -> String {
    etcdctl(server, args).await.expect_error(&args.join(" "))
}

async fn put_all(server: &Server, pairs: &[(&str, &str)]) {
    for (key, value) in pairs {
        assert_eq!(ok(server, &["put", key, value]).await, "OK\n", "put {key}");
    }
}

#[track_caller]
fn int(value: &Value, pointer: &str) -> i64 {
    value
        .pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no integer at {pointer} in {value}"))
}

#[track_caller]
fn uint(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned integer at {pointer} in {value}"))
}

#[track_caller]
fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

// ---------------------------------------------------------------------------------------
// put / get
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn put_and_get_print_keys_and_values() {
    let server = Server::start_default().await;

    assert_eq!(ok(&server, &["put", "foo", "bar"]).await, "OK\n");
    assert_eq!(ok(&server, &["get", "foo"]).await, "foo\nbar\n");
    assert_eq!(
        ok(&server, &["get", "foo", "--print-value-only"]).await,
        "bar\n"
    );
    assert_eq!(
        ok(&server, &["get", "missing"]).await,
        "",
        "a missing key prints nothing"
    );
    assert_eq!(
        ok(&server, &["put", "foo", "baz", "--prev-kv"]).await,
        "OK\nfoo\nbar\n"
    );
    assert_eq!(ok(&server, &["put", "foo", "--ignore-value"]).await, "OK\n");
    assert_eq!(ok(&server, &["get", "foo"]).await, "foo\nbaz\n");
}

#[tokio::test]
async fn put_errors_are_etcds() {
    let server = Server::start_default().await;

    assert_eq!(
        error(&server, &["put", "k", "v", "--lease=1234"]).await,
        messages::LEASE_NOT_FOUND
    );
    assert_eq!(
        error(&server, &["put", "missing", "--ignore-value"]).await,
        messages::KEY_NOT_FOUND
    );
}

#[tokio::test]
async fn get_prefix_ranges_from_key_and_limits() {
    let server = Server::start_default().await;
    put_all(
        &server,
        &[
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("foo", "x"),
            ("foo1", "y"),
            ("foo2", "z"),
        ],
    )
    .await;

    assert_eq!(
        ok(&server, &["get", "foo", "--prefix"]).await,
        "foo\nx\nfoo1\ny\nfoo2\nz\n"
    );
    assert_eq!(ok(&server, &["get", "a", "c"]).await, "a\n1\nb\n2\n");
    assert_eq!(
        ok(&server, &["get", "c", "--from-key", "--keys-only"]).await,
        "c\n\nfoo\n\nfoo1\n\nfoo2\n\n"
    );
    assert_eq!(
        ok(
            &server,
            &["get", "foo", "--prefix", "--print-value-only", "--limit=2"]
        )
        .await,
        "x\ny\n"
    );
    assert_eq!(
        ok(&server, &["get", "a", "--consistency=s"]).await,
        "a\n1\n",
        "serializable read"
    );
}

#[tokio::test]
async fn get_sorts_by_every_target() {
    let server = Server::start_default().await;
    // | key | create | mod | version | value |
    // | a   | 3      | 7   | 3       | 4     |
    // | b   | 4      | 6   | 2       | 8     |
    // | c   | 2      | 2   | 1       | 1     |
    put_all(
        &server,
        &[
            ("c", "1"),
            ("a", "2"),
            ("b", "9"),
            ("a", "3"),
            ("b", "8"),
            ("a", "4"),
        ],
    )
    .await;
    let sorted = |target: &'static str, order: &'static str| {
        let server = &server;
        async move {
            let sort = format!("--sort-by={target}");
            let order = format!("--order={order}");
            ok(
                server,
                &["get", "", "--prefix", "--keys-only", &sort, &order],
            )
            .await
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(",")
        }
    };

    // KEY + ASCEND goes to the server as is here (etcd-client would send NONE).
    assert_eq!(sorted("KEY", "ASCEND").await, "a,b,c");
    assert_eq!(sorted("KEY", "DESCEND").await, "c,b,a");
    assert_eq!(sorted("CREATE", "ASCEND").await, "c,a,b");
    assert_eq!(sorted("CREATE", "DESCEND").await, "b,a,c");
    assert_eq!(sorted("MODIFY", "ASCEND").await, "c,b,a");
    assert_eq!(sorted("MODIFY", "DESCEND").await, "a,b,c");
    assert_eq!(sorted("VERSION", "ASCEND").await, "c,b,a");
    assert_eq!(sorted("VERSION", "DESCEND").await, "a,b,c");
    assert_eq!(sorted("VALUE", "ASCEND").await, "c,a,b");
    assert_eq!(sorted("VALUE", "DESCEND").await, "b,a,c");
}

#[tokio::test]
async fn get_at_past_revisions() {
    let server = Server::start_default().await;
    put_all(&server, &[("k", "v2"), ("k", "v3")]).await;
    assert_eq!(ok(&server, &["del", "k"]).await, "1\n"); // 4

    assert_eq!(ok(&server, &["get", "k", "--rev=2"]).await, "k\nv2\n");
    assert_eq!(ok(&server, &["get", "k", "--rev=3"]).await, "k\nv3\n");
    assert_eq!(ok(&server, &["get", "k", "--rev=4"]).await, "");
    assert_eq!(
        error(&server, &["get", "k", "--rev=5"]).await,
        messages::FUTURE_REVISION
    );
}

#[tokio::test]
async fn get_json_shows_every_field_of_the_response() {
    let server = Server::start_default().await;
    put_all(&server, &[("foo", "bar"), ("foo", "baz"), ("fop", "x")]).await;

    let one = json(&server, &["get", "foo"]).await;
    let limited = json(&server, &["get", "fo", "--prefix", "--limit=1"]).await;
    let past = json(&server, &["get", "foo", "--rev=2"]).await;
    let missing = json(&server, &["get", "missing"]).await;

    assert_eq!(int(&one, "/header/revision"), 4);
    assert_ne!(uint(&one, "/header/cluster_id"), 0);
    assert_ne!(uint(&one, "/header/member_id"), 0);
    assert!(uint(&one, "/header/raft_term") > 0);
    let kv = &one["kvs"][0];
    assert_eq!(b64_decode(text(kv, "/key")), b"foo");
    assert_eq!(text(kv, "/value"), b64("baz"));
    assert_eq!(
        (
            int(kv, "/create_revision"),
            int(kv, "/mod_revision"),
            int(kv, "/version")
        ),
        (2, 3, 2)
    );
    assert!(kv.get("lease").is_none(), "lease 0 is omitted: {kv}");
    assert_eq!(int(&one, "/count"), 1);
    assert!(one.get("more").is_none(), "more=false is omitted: {one}");

    assert_eq!(limited["kvs"].as_array().map(Vec::len), Some(1));
    assert_eq!(limited["more"], Value::Bool(true));
    assert_eq!(int(&limited, "/count"), 2);

    assert_eq!(text(&past, "/kvs/0/value"), b64("bar"));
    assert_eq!(int(&past, "/header/revision"), 4);

    assert!(
        missing.get("kvs").is_none(),
        "no kvs for a missing key: {missing}"
    );
    assert!(
        missing.get("count").is_none(),
        "count 0 is omitted: {missing}"
    );
}

// ---------------------------------------------------------------------------------------
// del
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn del_prints_the_count_and_previous_pairs() {
    let server = Server::start_default().await;
    put_all(
        &server,
        &[("foo", "1"), ("foo1", "2"), ("foo2", "3"), ("goo", "4")],
    )
    .await;

    assert_eq!(
        ok(&server, &["del", "foo1", "--prev-kv"]).await,
        "1\nfoo1\n2\n"
    );
    assert_eq!(ok(&server, &["del", "missing"]).await, "0\n");
    assert_eq!(ok(&server, &["del", "foo", "--prefix"]).await, "2\n");
    assert_eq!(
        ok(&server, &["get", "", "--from-key", "--keys-only"]).await,
        "goo\n\n"
    );

    let deleted = json(&server, &["del", "goo", "--prev-kv"]).await;
    assert_eq!(int(&deleted, "/deleted"), 1);
    assert_eq!(int(&deleted, "/header/revision"), 8);
    assert_eq!(text(&deleted, "/prev_kvs/0/value"), b64("4"));
}

// ---------------------------------------------------------------------------------------
// txn
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn txn_from_stdin_runs_the_success_branch() {
    let server = Server::start_default().await;
    put_all(&server, &[("a", "1"), ("b", "2")]).await;
    let input = "mod(\"a\") > \"0\"\nvalue(\"b\") = \"2\"\n\nput c 3\nget a\ndel b\n\nput x y\n\n";

    let output = etcdctl_stdin(&server, &["txn"], input).await;

    assert_eq!(output.expect_success("txn"), "SUCCESS\n\nOK\n\na\n1\n\n1\n");
    assert_eq!(
        ok(&server, &["get", "", "--from-key", "--keys-only"]).await,
        "a\n\nc\n\n"
    );
}

#[tokio::test]
async fn txn_from_stdin_runs_the_failure_branch() {
    let server = Server::start_default().await;
    put(&server, "foo", "bar").await;
    let input = "version(\"foo\") = \"9\"\n\nput x 1\n\nget foo\nput y 2\n\n";

    let output = etcdctl_stdin(&server, &["txn"], input).await;

    assert_eq!(output.expect_success("txn"), "FAILURE\n\nfoo\nbar\n\nOK\n");
    assert_eq!(
        ok(&server, &["get", "x"]).await,
        "",
        "the success branch did not run"
    );
}

async fn put(server: &Server, key: &str, value: &str) {
    put_all(server, &[(key, value)]).await;
}

#[tokio::test]
async fn txn_interactive_prompts_and_runs() {
    let server = Server::start_default().await;
    put(&server, "a", "1").await;
    let input = "value(\"a\") = \"1\"\ncreate(\"a\") = \"2\"\nver(\"a\") = \"1\"\n\nget a\n\n\n";

    let output = etcdctl_stdin(&server, &["txn", "-i"], input).await;

    assert_eq!(
        output.expect_success("txn -i"),
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n\
         SUCCESS\n\na\n1\n"
    );
}

#[tokio::test]
async fn txn_json_shows_sub_responses_with_their_revisions() {
    let server = Server::start_default().await;
    put_all(&server, &[("a", "1"), ("b", "2")]).await;
    let input = "mod(\"a\") > \"0\"\n\nget a\nput c 3\ndel b\n\n\n";

    let output = etcdctl_stdin(&server, &["txn", "-w", "json"], input).await;
    let response = output.expect_json("txn -w json");

    assert_eq!(response["succeeded"], Value::Bool(true));
    assert_eq!(int(&response, "/header/revision"), 4);
    let range = &response["responses"][0]["Response"]["ResponseRange"];
    let put = &response["responses"][1]["Response"]["ResponsePut"];
    let delete = &response["responses"][2]["Response"]["ResponseDeleteRange"];
    assert_eq!(text(range, "/kvs/0/value"), b64("1"));
    assert_eq!(
        int(range, "/header/revision"),
        3,
        "read before the txn's first write"
    );
    assert_eq!(int(put, "/header/revision"), 4);
    assert_eq!(int(delete, "/header/revision"), 4);
    assert_eq!(int(delete, "/deleted"), 1);
}

// ---------------------------------------------------------------------------------------
// compaction
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn compaction_removes_history_below_the_revision() {
    let server = Server::start_default().await;
    put_all(&server, &[("k", "2"), ("k", "3"), ("k", "4"), ("k", "5")]).await;

    assert_eq!(
        ok(&server, &["compaction", "3"]).await,
        "compacted revision 3\n"
    );
    assert_eq!(
        error(&server, &["get", "k", "--rev=2"]).await,
        messages::COMPACTED
    );
    assert_eq!(ok(&server, &["get", "k", "--rev=3"]).await, "k\n3\n");
    assert_eq!(
        error(&server, &["compaction", "3"]).await,
        messages::COMPACTED
    );
    assert_eq!(
        error(&server, &["compaction", "6"]).await,
        messages::FUTURE_REVISION
    );
    assert_eq!(
        ok(&server, &["compaction", "--physical", "5"]).await,
        "compacted revision 5\n"
    );
    assert_eq!(
        error(&server, &["get", "k", "--rev=4"]).await,
        messages::COMPACTED
    );
    assert_eq!(ok(&server, &["get", "k"]).await, "k\n5\n");
}

// ---------------------------------------------------------------------------------------
// endpoint status, member list
// ---------------------------------------------------------------------------------------

/// `major.minor.patch` of a version string such as `3.5.13` or `3.6.0-alpha.0`.
fn semver(version: &str) -> (u64, u64, u64) {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let numbers: Vec<u64> = core
        .split('.')
        .map(|part| {
            part.parse()
                .unwrap_or_else(|_| panic!("{version:?} is not a semantic version"))
        })
        .collect();
    match numbers[..] {
        [major, minor, patch] => (major, minor, patch),
        _ => panic!("{version:?} is not major.minor.patch"),
    }
}

/// keelson must report a version kube-apiserver accepts (>= 3.5.13); etcd reports its own.
#[track_caller]
fn assert_reported_version(server: &Server, version: &str) {
    let parsed = semver(version);
    match server.kind() {
        ServerKind::Keelson => assert!(parsed >= (3, 5, 13), "keelson reports {version}"),
        ServerKind::Etcd => assert!(parsed >= (3, 4, 0), "etcd reports {version}"),
    }
}

async fn member_id_hex(server: &Server) -> String {
    let members = json(server, &["member", "list"]).await;
    format!("{:x}", uint(&members, "/members/0/ID"))
}

#[tokio::test]
async fn endpoint_status_table_describes_the_single_leader() {
    let server = Server::start_default().await;
    put(&server, "k", "v").await;
    let id = member_id_hex(&server).await;

    let table = ok(&server, &["endpoint", "status"]).await;

    // endpoint, ID, version, db size, is leader, is learner, raft term, raft index,
    // raft applied index, errors
    let fields: Vec<&str> = table.trim_end_matches('\n').split(", ").collect();
    assert_eq!(fields.len(), 10, "{table:?}");
    assert_eq!(fields[0], server.endpoint());
    assert_eq!(fields[1], id);
    assert_reported_version(&server, fields[2]);
    assert!(
        fields[3].ends_with(" kB") || fields[3].ends_with(" MB"),
        "db size {:?}",
        fields[3]
    );
    assert_eq!(
        (fields[4], fields[5]),
        ("true", "false"),
        "leader, not learner"
    );
    let numbers: Vec<u64> = fields[6..9]
        .iter()
        .map(|field| {
            field
                .parse()
                .unwrap_or_else(|_| panic!("{field:?} in {table:?}"))
        })
        .collect();
    assert!(numbers[0] > 0, "raft term");
    assert!(
        numbers[2] > 0 && numbers[2] <= numbers[1],
        "applied <= index"
    );
    assert_eq!(fields[9], "", "no errors");
}

#[tokio::test]
async fn endpoint_status_json_has_the_status_response() {
    let server = Server::start_default().await;
    put_all(&server, &[("a", "1"), ("b", "2")]).await;

    let status = json(&server, &["endpoint", "status"]).await;

    assert_eq!(status.as_array().map(Vec::len), Some(1), "{status}");
    let entry = &status[0];
    assert_eq!(text(entry, "/Endpoint"), server.endpoint());
    let member_id = uint(entry, "/Status/header/member_id");
    assert_ne!(member_id, 0);
    assert_ne!(uint(entry, "/Status/header/cluster_id"), 0);
    assert_eq!(int(entry, "/Status/header/revision"), 3);
    assert_eq!(
        uint(entry, "/Status/leader"),
        member_id,
        "the only member leads"
    );
    assert_reported_version(&server, text(entry, "/Status/version"));
    assert!(uint(entry, "/Status/dbSize") > 0);
    assert!(uint(entry, "/Status/dbSizeInUse") > 0);
    assert!(uint(entry, "/Status/dbSizeInUse") <= uint(entry, "/Status/dbSize"));
    assert_eq!(
        uint(entry, "/Status/raftTerm"),
        uint(entry, "/Status/header/raft_term")
    );
    let index = uint(entry, "/Status/raftIndex");
    let applied = uint(entry, "/Status/raftAppliedIndex");
    assert!(
        applied > 0 && applied <= index,
        "applied {applied}, index {index}"
    );
    assert!(
        entry["Status"].get("isLearner").is_none(),
        "isLearner=false is omitted"
    );
    assert!(entry["Status"].get("errors").is_none(), "no alarms");
}

#[tokio::test]
async fn member_list_shows_the_member_with_its_urls() {
    let server = Server::start_default().await;

    let table = ok(&server, &["member", "list"]).await;
    let members = json(&server, &["member", "list"]).await;

    let id = uint(&members, "/members/0/ID");
    assert_eq!(
        table,
        format!(
            "{id:x}, started, {}, {}, {}, false\n",
            server.name(),
            server.peer_url(),
            server.client_url()
        )
    );
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(text(&members, "/members/0/name"), server.name());
    assert_eq!(
        members["members"][0]["peerURLs"],
        serde_json::json!([server.peer_url()])
    );
    assert_eq!(
        members["members"][0]["clientURLs"],
        serde_json::json!([server.client_url()])
    );
    assert_eq!(uint(&members, "/header/member_id"), id);
    assert_ne!(uint(&members, "/header/cluster_id"), 0);
    match server.kind() {
        ServerKind::Etcd => assert!(
            members["header"].get("revision").is_none(),
            "etcd's Cluster service leaves the header revision at 0: {members}"
        ),
        // keelson fills every header (shared/etcd-compat.md section 2).
        ServerKind::Keelson => assert!(
            uint(&members, "/header/revision") >= 1,
            "keelson reports the store revision in every header: {members}"
        ),
    }
}
