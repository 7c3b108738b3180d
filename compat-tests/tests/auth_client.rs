//! Auth through the etcd-client crate and a raw gRPC client: the crate's own auth scenarios,
//! the permission check of every RPC type compared with the real etcd, bad and expired tokens,
//! auth revisions, JWT tokens, and a restart with auth on.

use std::path::Path;
use std::time::Duration;

use compat_tests::auth::{pb, raw_error, RawClient, ROOT_PASSWORD};
use compat_tests::grpc::grpc_status;
use compat_tests::server::{default_connect_options, keelson_binary};
use compat_tests::watch::next_message_within;
use compat_tests::{Server, ServerKind, ServerOptions};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, Permission, PutOptions, Txn, TxnOp,
    UserAddOptions,
};
use tonic::Code;

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

async fn client_as(server: &Server, user: &str, password: &str) -> Client {
    server
        .client_with(default_connect_options().with_user(user, password))
        .await
}

/// `Ok` or `code: message`, the form in which outcomes are compared with etcd's.
fn outcome<T>(result: Result<T, etcd_client::Error>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(error) => match grpc_status(&error) {
            Some(status) => format!("{:?}: {}", status.code(), status.message()),
            None => format!("client error: {error}"),
        },
    }
}

/// root (password rootpw) with the root role, then auth on: the setup of the crate's tests.
async fn enable_with_root(client: &mut Client) {
    client
        .user_add("root", ROOT_PASSWORD, None)
        .await
        .expect("add root");
    client
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    client.auth_enable().await.expect("enable auth");
}

/// The etcd-client crate's own `test_auth`, `test_role` and `test_user`, on both servers.
#[tokio::test]
async fn the_etcd_client_crates_auth_tests() {
    let server = Server::start(ServerOptions::new(subject_kind())).await;
    let mut client = server.client().await;

    // test_role
    let (role1, role2) = ("role1_", "role2_");
    client.role_add(role1).await.expect("role add");
    client.role_get(role1).await.expect("role get");
    client.role_delete(role1).await.expect("role delete");
    client.role_get(role1).await.expect_err("deleted role");
    client.role_add(role2).await.expect("role add");
    assert!(client
        .role_list()
        .await
        .expect("role list")
        .roles()
        .contains(&role2.to_string()));
    let grants = [
        Permission::read("123"),
        Permission::write("abc").with_from_key(),
        Permission::read_write("hi").with_range_end("hjj"),
        Permission::write("pp").with_prefix(),
        Permission::read("xyz").with_all_keys(),
    ];
    for perm in &grants {
        client
            .role_grant_permission(role2, perm.clone())
            .await
            .expect("grant");
    }
    let perms = client.role_get(role2).await.expect("role get");
    for perm in &grants {
        assert!(perms.permissions().contains(perm), "{perm:?} in {perms:?}");
    }
    use etcd_client::RoleRevokePermissionOptions as Revoke;
    client
        .role_revoke_permission(role2, "123", None)
        .await
        .expect("revoke");
    client
        .role_revoke_permission(role2, "abc", Some(Revoke::new().with_from_key()))
        .await
        .expect("revoke");
    client
        .role_revoke_permission(role2, "hi", Some(Revoke::new().with_range_end("hjj")))
        .await
        .expect("revoke");
    client
        .role_revoke_permission(role2, "pp", Some(Revoke::new().with_prefix()))
        .await
        .expect("revoke");
    client
        .role_revoke_permission(role2, "xyz", Some(Revoke::new().with_all_keys()))
        .await
        .expect("revoke");
    assert!(client
        .role_get(role2)
        .await
        .expect("role get")
        .permissions()
        .is_empty());
    client.role_delete(role2).await.expect("role delete");

    // test_user
    client
        .user_add("usr1", "pwd1", Some(UserAddOptions::new()))
        .await
        .expect("user add");
    client
        .user_add("usr2", "pwd2", Some(UserAddOptions::new().with_no_pwd()))
        .await
        .expect("user add without password");
    client
        .user_add("usr3", "pwd3", None)
        .await
        .expect("user add");
    client.user_get("usr1").await.expect("user get");
    assert!(client
        .user_list()
        .await
        .expect("user list")
        .users()
        .contains(&"usr1".to_string()));
    client.user_delete("usr2").await.expect("user delete");
    client.user_get("usr2").await.expect_err("deleted user");
    client
        .user_change_password("usr1", "pwd2")
        .await
        .expect("change password");
    client.role_add("role1").await.expect("role add");
    client
        .user_grant_role("usr1", "role1")
        .await
        .expect("grant");
    assert_eq!(
        client.user_get("usr1").await.expect("user get").roles(),
        ["role1".to_string()]
    );
    client
        .user_revoke_role("usr1", "role1")
        .await
        .expect("revoke");

    // test_auth
    enable_with_root(&mut client).await;
    client
        .put("auth-test", "value", None)
        .await
        .expect_err("anonymous put with auth on");
    let mut root = client_as(&server, "root", ROOT_PASSWORD).await;
    root.put("auth-test", "value", None)
        .await
        .expect("root put");
    root.member_list().await.expect("member list");
    // usr1's new password works, the old one does not.
    client_as(&server, "usr1", "pwd2").await;
    let refused = Client::connect(
        [server.endpoint()],
        Some(default_connect_options().with_user("usr1", "pwd1")),
    )
    .await;
    assert_eq!(
        outcome(refused),
        "InvalidArgument: etcdserver: authentication failed, invalid user ID or password"
    );
    root.auth_disable().await.expect("disable");
    let mut client = server.client().await;
    client
        .put("auth-test", "value", None)
        .await
        .expect("put after disable");
}

/// What a user with some permissions gets from every RPC type, compared with etcd.
async fn permission_probes(server: &Server) -> Vec<(String, String)> {
    let mut admin = server.client().await;
    for key in ["foo", "bar", "ro", "wo/1"] {
        admin.put(key, "v", None).await.expect("seed");
    }
    admin.user_add("alice", "pw", None).await.expect("user");
    admin.role_add("app").await.expect("role");
    admin
        .role_grant_permission("app", Permission::read_write("foo"))
        .await
        .expect("grant");
    admin
        .role_grant_permission("app", Permission::read("ro"))
        .await
        .expect("grant");
    admin
        .role_grant_permission("app", Permission::write("wo/").with_prefix())
        .await
        .expect("grant");
    admin.user_grant_role("alice", "app").await.expect("grant");
    enable_with_root(&mut admin).await;
    let mut root = client_as(server, "root", ROOT_PASSWORD).await;
    let mut alice = client_as(server, "alice", "pw").await;
    let mut anonymous = server.client().await;

    // A lease of alice's with her key, and one of root's with a key alice may not write.
    let own_lease = alice.lease_grant(60, None).await.expect("grant").id();
    alice
        .put(
            "foo",
            "leased",
            Some(PutOptions::new().with_lease(own_lease)),
        )
        .await
        .expect("put on own lease");
    let roots_lease = root.lease_grant(60, None).await.expect("grant").id();
    root.put(
        "bar",
        "leased",
        Some(PutOptions::new().with_lease(roots_lease)),
    )
    .await
    .expect("root put on lease");

    let mut out: Vec<(String, String)> = Vec::new();
    let mut note = |what: &str, result: String| out.push((what.to_string(), result));
    note("range granted key", outcome(alice.get("foo", None).await));
    note("range other key", outcome(alice.get("bar", None).await));
    note("range read-only key", outcome(alice.get("ro", None).await));
    note(
        "range over granted and not",
        outcome(
            alice
                .get("foo", Some(GetOptions::new().with_prefix()))
                .await,
        ),
    );
    note(
        "range serializable other key",
        outcome(
            alice
                .get("bar", Some(GetOptions::new().with_serializable()))
                .await,
        ),
    );
    note(
        "range write-only prefix",
        outcome(
            alice
                .get("wo/", Some(GetOptions::new().with_prefix()))
                .await,
        ),
    );
    note("anonymous range", outcome(anonymous.get("foo", None).await));
    note(
        "put granted key",
        outcome(alice.put("foo", "x", None).await),
    );
    note(
        "put read-only key",
        outcome(alice.put("ro", "x", None).await),
    );
    note(
        "put write-only key",
        outcome(alice.put("wo/2", "x", None).await),
    );
    note(
        "put write-only key with prev_kv",
        outcome(
            alice
                .put("wo/2", "x", Some(PutOptions::new().with_prev_key()))
                .await,
        ),
    );
    note(
        "put on a lease with another's key",
        outcome(
            alice
                .put("foo", "x", Some(PutOptions::new().with_lease(roots_lease)))
                .await,
        ),
    );
    note(
        "anonymous put",
        outcome(anonymous.put("foo", "x", None).await),
    );
    note(
        "delete granted key",
        outcome(alice.delete("wo/2", None).await),
    );
    note(
        "delete write-only prefix with prev_kv",
        outcome(
            alice
                .delete(
                    "wo/",
                    Some(DeleteOptions::new().with_prefix().with_prev_key()),
                )
                .await,
        ),
    );
    note(
        "delete read-only key",
        outcome(alice.delete("ro", None).await),
    );
    let txn = |compare: &str, then: &str, otherwise: &str| {
        Txn::new()
            .when([Compare::value(compare, CompareOp::Equal, "v")])
            .and_then([TxnOp::put(then, "t", None)])
            .or_else([TxnOp::put(otherwise, "t", None)])
    };
    note(
        "txn all granted",
        outcome(alice.txn(txn("foo", "foo", "foo")).await),
    );
    note(
        "txn compare denied",
        outcome(alice.txn(txn("bar", "foo", "foo")).await),
    );
    note(
        "txn success op denied",
        outcome(alice.txn(txn("foo", "bar", "foo")).await),
    );
    note(
        "txn failure op denied",
        outcome(alice.txn(txn("foo", "foo", "bar")).await),
    );
    let read_only = Txn::new()
        .when([Compare::version("ro", CompareOp::Greater, 0)])
        .and_then([TxnOp::get("ro", None)])
        .or_else([TxnOp::get("bar", None)]);
    note(
        "read-only txn reading a denied key",
        outcome(alice.txn(read_only).await),
    );
    note(
        "txn delete with prev_kv on write-only",
        outcome(
            alice
                .txn(Txn::new().and_then([TxnOp::delete(
                    "wo/",
                    Some(DeleteOptions::new().with_prefix().with_prev_key()),
                )]))
                .await,
        ),
    );
    note("compact", outcome(alice.compact(2, None).await));
    note("lease grant", outcome(alice.lease_grant(30, None).await));
    note(
        "lease time-to-live",
        outcome(alice.lease_time_to_live(roots_lease, None).await),
    );
    note(
        "lease keep-alive",
        outcome(alice.lease_keep_alive(roots_lease).await),
    );
    note("lease list", outcome(alice.leases().await));
    note(
        "revoke a lease with another's key",
        outcome(alice.lease_revoke(roots_lease).await),
    );
    note(
        "revoke own lease",
        outcome(alice.lease_revoke(own_lease).await),
    );
    note("status", outcome(alice.status().await));
    note(
        "alarm list",
        outcome(
            alice
                .alarm(
                    etcd_client::AlarmAction::Get,
                    etcd_client::AlarmType::None,
                    None,
                )
                .await,
        ),
    );
    note("defragment", outcome(alice.defragment().await));
    note("hash kv", outcome(alice.hash_kv(0).await));
    note(
        "anonymous defragment",
        outcome(anonymous.defragment().await),
    );
    note("root defragment", outcome(root.defragment().await));
    note("member list", outcome(alice.member_list().await));
    note(
        "member add",
        outcome(alice.member_add(["http://127.0.0.1:1"], None).await),
    );
    note("member remove", outcome(alice.member_remove(0x1234).await));
    note(
        "anonymous member remove",
        outcome(anonymous.member_remove(0x1234).await),
    );
    note(
        "root member remove",
        outcome(root.member_remove(0x1234).await),
    );
    note("user get self", outcome(alice.user_get("alice").await));
    note("user get other", outcome(alice.user_get("root").await));
    note("user list", outcome(alice.user_list().await));
    note("role get own", outcome(alice.role_get("app").await));
    note("role get other", outcome(alice.role_get("root").await));
    note("role list", outcome(alice.role_list().await));
    note("role add", outcome(alice.role_add("r").await));
    note("auth disable", outcome(alice.auth_disable().await));
    note("anonymous user list", outcome(anonymous.user_list().await));
    for (what, key, prefix) in [
        ("watch granted key", "foo", false),
        ("watch other key", "bar", false),
        ("watch over granted and not", "f", true),
    ] {
        let options = prefix.then(|| etcd_client::WatchOptions::new().with_prefix());
        let result = match alice.watch(key, options).await {
            Err(e) => outcome::<()>(Err(e)),
            Ok(mut stream) => {
                let r = next_message_within(&mut stream, Duration::from_secs(10), what).await;
                format!(
                    "created={} canceled={} reason={:?}",
                    r.created(),
                    r.canceled(),
                    r.cancel_reason()
                )
            }
        };
        note(what, result);
    }
    out
}

#[tokio::test]
async fn every_rpc_type_is_checked_as_etcd_checks_it() {
    let (reference, subject) = tokio::join!(
        Server::start(ServerOptions::new(ServerKind::Etcd)),
        Server::start(ServerOptions::new(subject_kind())),
    );
    let (expected, actual) =
        tokio::join!(permission_probes(&reference), permission_probes(&subject));
    let differing: Vec<String> = expected
        .iter()
        .zip(&actual)
        .filter(|(e, a)| e != a)
        .map(|((what, e), (_, a))| format!("{what}:\n  etcd:    {e}\n  subject: {a}"))
        .collect();
    assert!(
        differing.is_empty(),
        "differs from etcd:\n{}",
        differing.join("\n")
    );
    // The comparison is only worth something if the probes were refused for the right reason.
    let outcome_of = |what: &str| {
        actual
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, o)| o.as_str())
            .unwrap_or_default()
    };
    assert_eq!(outcome_of("range granted key"), "ok");
    assert_eq!(
        outcome_of("range other key"),
        "PermissionDenied: etcdserver: permission denied"
    );
    assert_eq!(outcome_of("defragment"), "Unknown: auth: permission denied");
    assert_eq!(
        outcome_of("revoke a lease with another's key"),
        "PermissionDenied: etcdserver: permission denied"
    );
    assert_eq!(
        outcome_of("anonymous put"),
        "InvalidArgument: etcdserver: user name is empty"
    );
}

/// Requests with a token the server never issued, compared with etcd.
#[tokio::test]
async fn a_bad_token_is_refused_where_etcd_refuses_it() {
    async fn probes(server: &Server) -> Vec<String> {
        let mut admin = server.client().await;
        admin.put("k", "v", None).await.expect("seed");
        let raw = RawClient::connect(&server.client_url()).await;
        let mut with_bad = raw.with_token("nosuch.5");
        let mut with_garbage = raw.with_token("garbage");
        let mut out = vec![format!(
            "auth off, get: {:?}",
            with_bad
                .get("k")
                .await
                .map_err(|s| (s.code(), s.message().to_string()))
        )];
        enable_with_root(&mut admin).await;
        for (what, client) in [("bad", &mut with_bad), ("garbage", &mut with_garbage)] {
            out.push(format!(
                "{what} get: {:?}",
                raw_error(client.get("k").await)
            ));
            out.push(format!(
                "{what} put: {:?}",
                raw_error(client.put("k", "x").await)
            ));
            out.push(format!(
                "{what} txn: {:?}",
                raw_error(client.txn(pb::TxnRequest::default()).await)
            ));
        }
        out
    }
    let (reference, subject) = tokio::join!(
        Server::start(ServerOptions::new(ServerKind::Etcd)),
        Server::start(ServerOptions::new(subject_kind())),
    );
    let (expected, actual) = tokio::join!(probes(&reference), probes(&subject));
    assert_eq!(expected, actual);
    assert!(actual[1].contains("Unauthenticated"), "{actual:?}");
}

/// A simple token dies after --auth-token-ttl seconds without use; a client that refreshes
/// its token goes on (the crate's test_auth_refresh_token).
#[tokio::test]
async fn simple_tokens_expire_and_clients_log_in_again() {
    let ttl = Duration::from_secs(2);
    let server =
        Server::start(ServerOptions::new(subject_kind()).args(["--auth-token-ttl", "2"])).await;
    enable_with_root(&mut server.client().await).await;
    let mut plain = client_as(&server, "root", ROOT_PASSWORD).await;
    plain.get("key", None).await.expect("fresh token");
    // The TTL itself is under test: nothing else can tell the token that time passed.
    tokio::time::sleep(ttl + Duration::from_secs(2)).await;
    assert_eq!(
        outcome(plain.get("key", None).await),
        "Unauthenticated: etcdserver: invalid auth token"
    );
    let mut refreshing = server
        .client_with(
            default_connect_options()
                .with_user("root", ROOT_PASSWORD)
                .with_auto_token_refresh(true),
        )
        .await;
    refreshing.get("key", None).await.expect("fresh token");
    tokio::time::sleep(ttl + Duration::from_secs(2)).await;
    refreshing
        .get("key", None)
        .await
        .expect("refreshed after expiry");
    refreshing
        .user_list()
        .await
        .expect("auth calls refresh too");
    // Use renews a token: a request every half TTL keeps it alive past the TTL.
    let mut busy = client_as(&server, "root", ROOT_PASSWORD).await;
    for _ in 0..4 {
        tokio::time::sleep(ttl / 2).await;
        busy.get("key", None).await.expect("a used token lives on");
    }
}

/// AuthStatus (etcd 3.5's RPC): admin only, with the auth revision that every change bumps.
#[tokio::test]
async fn auth_status_reports_the_switch_and_the_revision() {
    let server = Server::start(ServerOptions::new(subject_kind())).await;
    let mut raw = RawClient::connect(&server.client_url()).await;
    if server.kind() == ServerKind::Etcd {
        // etcd 3.4 has no AuthStatus.
        assert_eq!(raw_error(raw.auth_status().await).0, Code::Unimplemented);
        return;
    }
    assert_eq!(raw.auth_status().await.expect("status"), (false, 1));
    let mut client = server.client().await;
    client
        .user_add("root", ROOT_PASSWORD, None)
        .await
        .expect("root");
    assert_eq!(raw.auth_status().await.expect("status"), (false, 2));
    client.user_grant_role("root", "root").await.expect("grant");
    client.auth_enable().await.expect("enable");
    assert_eq!(
        raw_error(raw.auth_status().await),
        (
            Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        )
    );
    let token = raw
        .authenticate("root", ROOT_PASSWORD)
        .await
        .expect("login");
    assert_eq!(
        raw.with_token(&token).auth_status().await.expect("status"),
        (true, 3)
    );
}

/// Nested transactions are checked op by op (etcd 3.4 skips them, which lets a nested txn write
/// anywhere; keelson does not copy that).
#[tokio::test]
async fn nested_transactions_are_checked_too() {
    let server = Server::start(ServerOptions::new(subject_kind())).await;
    if server.kind() == ServerKind::Etcd {
        return;
    }
    let mut client = server.client().await;
    client.user_add("alice", "pw", None).await.expect("user");
    client.role_add("app").await.expect("role");
    client
        .role_grant_permission("app", Permission::read_write("foo"))
        .await
        .expect("grant");
    client.user_grant_role("alice", "app").await.expect("grant");
    enable_with_root(&mut client).await;
    let mut raw = RawClient::connect(&server.client_url()).await;
    let token = raw.authenticate("alice", "pw").await.expect("login");
    let mut alice = raw.with_token(&token);
    let put = |key: &str| pb::RequestOp {
        put: Some(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        }),
        ..Default::default()
    };
    let nested = |inner: pb::RequestOp| pb::TxnRequest {
        success: vec![pb::RequestOp {
            txn: Some(pb::TxnRequest {
                success: vec![inner],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(alice
        .txn(nested(put("foo")))
        .await
        .expect("a granted nested put"));
    assert_eq!(
        raw_error(alice.txn(nested(put("bar"))).await),
        (
            Code::PermissionDenied,
            "etcdserver: permission denied".into()
        )
    );
    let mut root = client_as(&server, "root", ROOT_PASSWORD).await;
    assert!(root.get("bar", None).await.expect("get").kvs().is_empty());
}

/// Writes `etcd-jwt.key` (ECDSA P-256, PKCS#8) and `etcd-jwt.secret` into `dir`.
fn jwt_keys(dir: &Path) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let key_path = dir.join("etcd-jwt.key");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let secret_path = dir.join("etcd-jwt.secret");
    std::fs::write(&secret_path, b"a jwt secret of some length").expect("write secret");
    (
        key_path.display().to_string(),
        secret_path.display().to_string(),
    )
}

/// JWT tokens (ES256 and HS256): they carry their auth revision, so any auth change makes
/// them stale ('revision of auth store is old'), as in etcd; compared with etcd.
#[tokio::test]
async fn jwt_tokens_and_stale_auth_revisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ec_key, secret) = jwt_keys(dir.path());
    for spec in [
        format!("jwt,priv-key={ec_key},sign-method=ES256,ttl=10m"),
        format!("jwt,priv-key={secret},sign-method=HS256"),
    ] {
        async fn probes(server: &Server) -> Vec<String> {
            let mut admin = server.client().await;
            admin.user_add("alice", "pw", None).await.expect("user");
            admin.role_add("app").await.expect("role");
            admin
                .role_grant_permission("app", Permission::read_write("foo"))
                .await
                .expect("grant");
            admin.user_grant_role("alice", "app").await.expect("grant");
            enable_with_root(&mut admin).await;
            let mut root = client_as(server, "root", ROOT_PASSWORD).await;
            let mut alice = client_as(server, "alice", "pw").await;
            let mut out = vec![
                outcome(alice.put("foo", "1", None).await),
                outcome(alice.get("foo", None).await),
                outcome(alice.put("bar", "1", None).await),
            ];
            root.role_add("later").await.expect("an auth change");
            out.push(outcome(alice.put("foo", "2", None).await));
            out.push(outcome(alice.get("foo", None).await));
            let mut again = client_as(server, "alice", "pw").await;
            out.push(outcome(again.put("foo", "3", None).await));
            out
        }
        let args = ["--auth-token", spec.as_str()];
        let (reference, subject) = tokio::join!(
            Server::start(ServerOptions::new(ServerKind::Etcd).args(args)),
            Server::start(ServerOptions::new(subject_kind()).args(args)),
        );
        let (expected, actual) = tokio::join!(probes(&reference), probes(&subject));
        assert_eq!(expected, actual, "{spec}");
        assert_eq!(
            actual[3], "InvalidArgument: etcdserver: revision of auth store is old",
            "{spec}"
        );
        // A JWT is a JWT: three base64url parts.
        let token = RawClient::connect(&subject.client_url())
            .await
            .authenticate("alice", "pw")
            .await
            .expect("login");
        assert_eq!(token.split('.').count(), 3, "{token}");
    }
}

/// Auth survives a restart: users, roles, permissions and the switch come back, and so do
/// simple tokens (etcd replays the logins of its log when it restarts; a token whose user's
/// password changed stays dead). etcd's e2e authTestCacheReload, with more checks.
#[tokio::test]
async fn a_restart_keeps_auth_and_its_tokens() {
    let mut server = Server::start(ServerOptions::new(subject_kind())).await;
    let mut admin = server.client().await;
    for user in ["user0", "user1"] {
        admin.user_add(user, "123", None).await.expect("user");
    }
    admin.role_add("role0").await.expect("role");
    admin
        .user_grant_role("user0", "role0")
        .await
        .expect("grant");
    admin
        .user_grant_role("user1", "role0")
        .await
        .expect("grant");
    admin
        .role_grant_permission("role0", Permission::read_write("foo"))
        .await
        .expect("grant");
    enable_with_root(&mut admin).await;
    let mut user0 = client_as(&server, "user0", "123").await;
    user0.put("foo", "bar", None).await.expect("put");
    let mut raw = RawClient::connect(&server.client_url()).await;
    let token0 = raw.authenticate("user0", "123").await.expect("login");
    let token1 = raw.authenticate("user1", "123").await.expect("login");
    let mut root = client_as(&server, "root", ROOT_PASSWORD).await;
    root.user_change_password("user1", "456")
        .await
        .expect("passwd");

    server.restart().await;

    let mut raw = RawClient::connect(&server.client_url()).await;
    assert_eq!(
        raw.with_token(&token0)
            .get("foo")
            .await
            .expect("a token from before the restart"),
        Some(b"bar".to_vec())
    );
    assert_eq!(
        raw_error(raw.with_token(&token1).get("foo").await),
        (
            Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        )
    );
    assert_eq!(
        raw_error(raw.get("foo").await),
        (
            Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        )
    );
    let mut user0 = client_as(&server, "user0", "123").await;
    user0
        .put("foo", "bar2", None)
        .await
        .expect("put after restart");
    assert_eq!(
        outcome(user0.put("bar", "x", None).await),
        "PermissionDenied: etcdserver: permission denied"
    );
    let mut root = client_as(&server, "root", ROOT_PASSWORD).await;
    let users = root.user_list().await.expect("user list");
    assert_eq!(
        users.users(),
        ["root".to_string(), "user0".to_string(), "user1".to_string()]
    );
    client_as(&server, "user1", "456").await;
    let got = root.get("foo", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"bar2");
}
