//! Auth on a cluster of three: changes made through one member bind every member, a token
//! from one member is good on the others (simple tokens travel through the raft log; JWTs are
//! signed with the shared key), and a member that restarted still knows the tokens, as etcd's
//! members do. Runs against the server `COMPAT_SERVER` names; etcd passes it too.

use compat_tests::auth::{raw_error, RawClient, ROOT_PASSWORD};
use compat_tests::server::default_connect_options;
use compat_tests::{Cluster, ServerOptions};
use etcd_client::{Client, Permission};
use tonic::Code;

async fn setup(cluster: &Cluster) {
    let mut client = cluster.member_client(0).await;
    client
        .user_add("root", ROOT_PASSWORD, None)
        .await
        .expect("root");
    client.user_grant_role("root", "root").await.expect("grant");
    client.user_add("alice", "pw", None).await.expect("user");
    client.role_add("app").await.expect("role");
    client
        .role_grant_permission("app", Permission::read_write("app/").with_prefix())
        .await
        .expect("grant");
    client.user_grant_role("alice", "app").await.expect("grant");
    client.auth_enable().await.expect("enable");
}

async fn raw(cluster: &Cluster, i: usize) -> RawClient {
    RawClient::connect(&cluster.members[i].client_url()).await
}

async fn root_of(cluster: &Cluster, i: usize) -> Client {
    Client::connect(
        [cluster.members[i].endpoint()],
        Some(default_connect_options().with_user("root", ROOT_PASSWORD)),
    )
    .await
    .unwrap_or_else(|e| panic!("root on member {i}: {e}"))
}

/// Every member accepts a token that `issuer` issued, at once.
async fn token_works_everywhere(cluster: &Cluster, token: &str, round: &str) {
    for i in 0..cluster.size() {
        let mut client = raw(cluster, i).await.with_token(token);
        let key = format!("app/{round}-{i}");
        client
            .put(&key, "v")
            .await
            .unwrap_or_else(|e| panic!("{round}: put on member {i}: {e}"));
        // Read back on the next member: the write is visible everywhere, and so is the token.
        let next = (i + 1) % cluster.size();
        let got = raw(cluster, next)
            .await
            .with_token(token)
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("{round}: get on member {next}: {e}"));
        assert_eq!(got, Some(b"v".to_vec()), "{round}: {key} on member {next}");
        assert_eq!(
            raw_error(client.put("other", "v").await),
            (
                Code::PermissionDenied,
                "etcdserver: permission denied".into()
            ),
            "{round}: member {i} checks permissions"
        );
    }
}

#[tokio::test]
async fn a_token_from_one_member_works_on_every_member() {
    let mut cluster = Cluster::start(3).await;
    setup(&cluster).await;
    for issuer in 0..3 {
        let token = raw(&cluster, issuer)
            .await
            .authenticate("alice", "pw")
            .await
            .expect("login");
        token_works_everywhere(&cluster, &token, &format!("issued by {issuer}")).await;
    }

    // Auth changes made through one member bind the others.
    let token = raw(&cluster, 1)
        .await
        .authenticate("alice", "pw")
        .await
        .expect("login");
    let mut root = root_of(&cluster, 2).await;
    root.role_revoke_permission(
        "app",
        "app/",
        Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .expect("revoke");
    for i in 0..3 {
        // A linearizable read makes member i apply the revoke first: a write admitted before
        // it applied would be refused with "revision of auth store is old" instead (etcd too).
        root_of(&cluster, i)
            .await
            .get("barrier", None)
            .await
            .expect("linearizable read");
        let mut alice = raw(&cluster, i).await.with_token(&token);
        assert_eq!(
            raw_error(alice.put("app/x", "v").await),
            (
                Code::PermissionDenied,
                "etcdserver: permission denied".into()
            ),
            "member {i} after the revoke"
        );
    }
    root.role_grant_permission("app", Permission::read_write("app/").with_prefix())
        .await
        .expect("grant again");

    // A token issued before a member restarted is still good on it (etcd replays the logins
    // of its log), and on the others.
    let before = raw(&cluster, 0)
        .await
        .authenticate("alice", "pw")
        .await
        .expect("login");
    cluster.restart(1).await;
    token_works_everywhere(&cluster, &before, "after member 1 restarted").await;
    let after = raw(&cluster, 1)
        .await
        .authenticate("alice", "pw")
        .await
        .expect("login");
    token_works_everywhere(&cluster, &after, "issued by the restarted member").await;
    // A password change kills the tokens of that user on every member.
    root_of(&cluster, 0)
        .await
        .user_change_password("alice", "pw2")
        .await
        .expect("passwd");
    for i in 0..3 {
        assert_eq!(
            raw_error(raw(&cluster, i).await.with_token(&after).get("app/x").await),
            (
                Code::Unauthenticated,
                "etcdserver: invalid auth token".into()
            ),
            "member {i} after the password change"
        );
    }
}

#[tokio::test]
async fn jwt_tokens_work_on_every_member_that_has_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let key_path = dir.path().join("jwt.key");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let spec = format!(
        "jwt,priv-key={},sign-method=ES256,ttl=5m",
        key_path.display()
    );
    let cluster = Cluster::start_with(
        ServerOptions::from_env().args(["--auth-token", spec.as_str()]),
        3,
    )
    .await;
    setup(&cluster).await;
    for issuer in 0..3 {
        let token = raw(&cluster, issuer)
            .await
            .authenticate("alice", "pw")
            .await
            .expect("login");
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        token_works_everywhere(&cluster, &token, &format!("JWT issued by {issuer}")).await;
    }
}
