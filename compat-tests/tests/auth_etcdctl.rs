//! Auth through the real etcdctl: users, roles, permissions, `auth enable/disable`, `--user`,
//! the key-value checks of etcd's own e2e auth scenarios (tests/e2e/ctl_v3_auth_test.go), run
//! against the real etcd and the server under test, whose outputs (stdout, stderr, exit code)
//! must be the same line for line.

use compat_tests::auth::{
    anon, as_root, as_user, assert_same_transcript, enable_steps, run_script, test_user_steps, Step,
};
use compat_tests::server::keelson_binary;
use compat_tests::{Server, ServerKind, ServerOptions};

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

/// Runs `steps` on the real etcd and on the server under test (both with `args`) and
/// compares; returns the subject's transcript for further checks.
async fn same_as_etcd(args: &[&str], steps: &[Step]) -> Vec<String> {
    let (reference, subject) = tokio::join!(
        Server::start(ServerOptions::new(ServerKind::Etcd).args(args.iter().copied())),
        Server::start(ServerOptions::new(subject_kind()).args(args.iter().copied())),
    );
    let (expected, actual) =
        tokio::join!(run_script(&reference, steps), run_script(&subject, steps));
    assert_same_transcript(&expected, &actual);
    actual
}

#[track_caller]
fn assert_mentions(transcript: &[String], needle: &str) {
    assert!(
        transcript.iter().any(|step| step.contains(needle)),
        "no step printed {needle:?}:\n{}",
        transcript.join("\n")
    );
}

/// Users and roles, every management error, and what a plain user may see.
#[tokio::test]
async fn user_and_role_management_and_its_errors() {
    let mut steps = vec![
        anon("user add root --interactive=false").stdin("rootpw\n"),
        anon("user add root --interactive=false").stdin("rootpw\n"),
        anon("user get root"),
        anon("user get nobody"),
        // etcdctl creates the root role and grants it when the server says it is missing.
        anon("auth enable"),
        anon("user get root"),
        anon("auth enable"),
        anon("put a b"),
        as_user("root:bad", "put a b"),
        as_user("nobody:bad", "put a b"),
        as_root("put a b"),
        as_root("auth enable"),
        anon("user add foo --interactive=false").stdin("x\n"),
        as_root("user add foo --interactive=false").stdin("x\n"),
        as_root("user add foo --interactive=false").stdin("x\n"),
        as_root("user add nop --no-password"),
        as_user("nop:x", "get a"),
        as_user("foo:x", "get a"),
        as_user("foo:x", "user get foo"),
        as_user("foo:x", "user get root"),
        as_user("foo:x", "user list"),
        as_user("foo:x", "role list"),
        as_user("foo:x", "role add r0"),
        as_user("foo:x", "auth disable"),
        as_user("foo:x", "user passwd foo --interactive=false").stdin("y\n"),
        as_root("role add r1"),
        as_root("role add r1"),
        as_root("role add ''"),
        as_root("user grant-role foo r2"),
        as_root("user grant-role foo2 r1"),
        as_root("user grant-role foo r1"),
        as_root("user grant-role foo r1"),
        as_root("user revoke-role foo r2"),
        as_root("user revoke-role foo3 r2"),
        as_root("user revoke-role root root"),
        as_root("role delete root"),
        as_root("user delete root"),
        as_root("role revoke-permission r1 a"),
        as_root("role revoke-permission r9 a"),
        as_root("role grant-permission r9 read a"),
        as_root("role grant-permission r1 read a"),
        as_root("role grant-permission r1 write b c"),
        as_root("role grant-permission --prefix r1 readwrite p/"),
        as_root("role grant-permission --from-key r1 read z"),
        as_root("role grant-permission r1 readwrite a"),
        as_root("role get r1"),
        as_root("role get r9"),
        as_root("role get root"),
        as_user("foo:x", "role get r1"),
        as_user("foo:x", "role get root"),
        as_root("user get foo9"),
        as_root("user get foo --detail"),
        as_root("user list"),
        as_root("role list"),
        as_root("role revoke-permission r1 b c"),
        as_root("role revoke-permission --from-key r1 z"),
        as_root("role revoke-permission --prefix r1 p/"),
        as_root("role get r1"),
        as_root("user passwd foo --interactive=false").stdin("y\n"),
        as_user("foo:x", "get a"),
        as_user("foo:y", "get a"),
        as_root("role add r2"),
        as_root("user grant-role foo r2"),
        as_root("user get foo"),
        as_root("role delete r2"),
        as_root("user get foo"),
        as_root("user delete foo"),
        as_root("user delete foo"),
        as_user("foo:y", "get a"),
        as_root("role delete r1"),
        as_root("role delete r1"),
        as_root("auth disable"),
        as_root("auth disable"),
        anon("user list"),
        anon("role list"),
        // With auth off, a login is refused and etcdctl goes on without a token.
        as_user("nop:x", "put a c"),
        anon("get a"),
        anon("user delete root"),
        anon("role delete root"),
    ];
    steps.push(anon("user list"));
    let transcript = same_as_etcd(&[], &steps).await;
    assert_mentions(&transcript, "Authentication Enabled");
    assert_mentions(&transcript, "Error: etcdserver: invalid auth management");
    assert_mentions(&transcript, "Error: etcdserver: permission denied");
    assert_mentions(&transcript, "Error: etcdserver: user name is empty");
}

/// etcd's e2e authCredWriteKeyTest, authRoleUpdateTest, authUserDeleteDuringOpsTest,
/// authRoleRevokeDuringOpsTest, authTestRevokeWithDelete and authTestInvalidMgmt.
#[tokio::test]
async fn e2e_write_and_role_update_scenarios() {
    let mut steps = vec![anon("put foo a"), anon("put hoo a")];
    steps.extend(enable_steps());
    steps.extend(test_user_steps());
    steps.extend([
        as_root("put foo bar"),
        as_root("get foo"),
        as_user("a:b", "put foo bar"),
        as_user("test-user:pass", "get foo"),
        as_user("test-user:pass", "put foo bar2"),
        as_user("test-user:pass", "get foo"),
        as_user("test-user:badpass", "put foo baz"),
        as_user("test-user:pass", "put hoo bar"),
        as_root("role grant-permission test-role readwrite hoo"),
        as_user("test-user:pass", "put hoo bar"),
        as_user("test-user:pass", "get hoo"),
        as_root("role revoke-permission test-role hoo"),
        as_user("test-user:pass", "put hoo bar"),
        as_user("test-user:pass", "get foo"),
        as_root("role add test-role2"),
        as_root("role grant-permission test-role2 readwrite hoo"),
        as_root("user grant-role test-user test-role2"),
        as_root("user get test-user"),
        as_user("test-user:pass", "put hoo bar"),
        as_root("user revoke-role test-user test-role"),
        as_user("test-user:pass", "put foo baz"),
        as_user("test-user:pass", "put hoo bar2"),
        as_root("role delete test-role2"),
        as_root("user get test-user"),
        as_user("test-user:pass", "put hoo bar3"),
        as_root("user delete test-user"),
        as_user("test-user:pass", "put foo baz"),
        anon("role delete root"),
        as_root("role delete root"),
        as_root("user revoke-role root root"),
    ]);
    let transcript = same_as_etcd(&[], &steps).await;
    assert_mentions(&transcript, "authentication failed");
}

/// etcd's e2e authTestTxn, authTestPrefixPerm and authTestFromKeyPerm.
#[tokio::test]
async fn e2e_txn_prefix_and_from_key_permissions() {
    let mut steps: Vec<Step> = ["c1", "s1", "f1", "c2", "s2", "f2"]
        .iter()
        .map(|k| anon(&format!("put {k} v")))
        .collect();
    steps.extend(enable_steps());
    steps.extend(test_user_steps());
    steps.extend([
        as_root("role grant-permission test-role readwrite c2"),
        as_root("role grant-permission test-role readwrite s2"),
        as_root("role grant-permission test-role readwrite f2"),
        // Granted compare, success and failure keys.
        as_user("test-user:pass", "txn").stdin("value(\"c2\") = \"v\"\n\nput s2 v\n\nput f2 v\n\n"),
        // A compare, a success op or a failure op outside the permissions refuses the txn.
        as_user("test-user:pass", "txn").stdin("value(\"c1\") = \"v\"\n\nput s2 v\n\nput f2 v\n\n"),
        as_user("test-user:pass", "txn").stdin("value(\"c2\") = \"v\"\n\nput s1 v\n\nput f2 v\n\n"),
        as_user("test-user:pass", "txn").stdin("value(\"c2\") = \"v\"\n\nput s2 v\n\nput f1 v\n\n"),
        // Read-only transactions are checked without consensus, the same way.
        as_user("test-user:pass", "txn").stdin("value(\"c2\") = \"v\"\n\nget s2\n\nget f2\n\n"),
        as_user("test-user:pass", "txn").stdin("value(\"c2\") = \"v\"\n\nget s1\n\nget f2\n\n"),
        // Prefix permissions.
        as_root("role grant-permission test-role readwrite pre --prefix"),
        as_user("test-user:pass", "put pre1 v"),
        as_user("test-user:pass", "put prefix/x v"),
        as_user("test-user:pass", "get pre --prefix"),
        as_user("test-user:pass", "put prf v"),
        as_user("test-user:pass", "get pr --prefix"),
        // Open-ended permissions.
        as_root("role grant-permission test-role readwrite z --from-key"),
        as_user("test-user:pass", "put z0 v"),
        as_user("test-user:pass", "put z9 v"),
        as_user("test-user:pass", "get z --from-key"),
        as_user("test-user:pass", "put x v"),
        as_root("role revoke-permission test-role z --from-key"),
        as_user("test-user:pass", "put z0 v"),
        as_root("role grant-permission test-role readwrite '' --from-key"),
        as_user("test-user:pass", "put z0 v"),
        as_user("test-user:pass", "put x v"),
        as_user("test-user:pass", "get '' --prefix --keys-only"),
        as_root("role revoke-permission test-role '' --from-key"),
        as_user("test-user:pass", "put z0 v"),
        // Ranges with and without their end key; deletes, with and without prev-kv.
        as_root("role grant-permission test-role write w1 w5"),
        as_user("test-user:pass", "put w3 v"),
        as_user("test-user:pass", "put w5 v"),
        as_user("test-user:pass", "del w1 w5"),
        as_user("test-user:pass", "del w1 w5 --prev-kv"),
        as_user("test-user:pass", "get w1 w5"),
        as_user("test-user:pass", "put foo v --prev-kv"),
        as_user("test-user:pass", "put w3 v --prev-kv"),
        // Compaction needs no permission in etcd; the health check counts a refusal as health.
        as_user("test-user:pass", "compaction 2"),
        as_user("test-user:pass", "endpoint health"),
        anon("endpoint health"),
    ]);
    let transcript = same_as_etcd(&[], &steps).await;
    assert_mentions(&transcript, "SUCCESS");
    assert_mentions(&transcript, "permission denied");
}

/// Maintenance and Cluster: what a plain user may and may not do (etcd's e2e authTestDefrag,
/// authTestMemberAdd), and a watch refused for lack of permission.
#[tokio::test]
async fn maintenance_cluster_and_watch_permissions() {
    let mut steps = vec![anon("put foo v"), anon("put key2 v")];
    steps.extend(enable_steps());
    steps.extend(test_user_steps());
    steps.extend([
        as_user("test-user:pass", "defrag"),
        anon("defrag"),
        as_root("defrag"),
        as_user("test-user:pass", "endpoint hashkv"),
        as_user("test-user:pass", "alarm list"),
        as_user(
            "test-user:pass",
            "member add m2 --peer-urls=http://127.0.0.1:1",
        ),
        anon("member add m2 --peer-urls=http://127.0.0.1:1"),
        as_user("test-user:pass", "member remove 1234"),
        as_root("member remove 1234"),
        as_user("test-user:pass", "watch key2"),
        as_user("test-user:pass", "watch key --prefix"),
        anon("watch foo"),
        as_user("test-user:pass", "lease list"),
    ]);
    let transcript = same_as_etcd(&[], &steps).await;
    assert_mentions(&transcript, "auth: permission denied");
    assert_mentions(&transcript, "watch is canceled by the server");
}
