//! Client-certificate authentication (`--client-cert-auth`): without a token, the common name
//! of the verified client certificate is the user name, and a user without a password
//! (`user add --no-password`) logs in that way only. etcd's e2e authTestCertCN and
//! certCNAndUsername scenarios over mutual TLS, etcdctl's output compared with the real etcd's.

use compat_tests::auth::{anon, as_root, as_user, assert_same_transcript, run_script, Step};
use compat_tests::ops::{CertFiles, Pki};
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

/// etcdctl's TLS flags presenting `cert`.
fn with_cert(pki: &Pki, cert: &CertFiles, step: Step) -> Step {
    let mut args = pki
        .etcdctl_flags(Some(cert))
        .into_iter()
        .collect::<Vec<_>>();
    args.extend(step.args);
    Step { args, ..step }
}

#[tokio::test]
async fn the_certificate_common_name_is_the_user() {
    let pki = Pki::generate();
    let client = |step: Step| with_cert(&pki, &pki.client, step);
    let example = |step: Step| with_cert(&pki, &pki.example_client, step);
    let root_cert = |step: Step| with_cert(&pki, &pki.root_client, step);
    let steps = vec![
        client(anon("user add root --interactive=false").stdin("rootpw\n")),
        client(anon("user grant-role root root")),
        client(anon("auth enable")),
        // CN "client" is nobody: refused as an unknown user, not as an anonymous one.
        client(anon("put foo bar")),
        client(anon("user list")),
        client(as_root("user add test-user --interactive=false").stdin("pass\n")),
        client(as_root("role add test-role")),
        client(as_root("user grant-role test-user test-role")),
        client(as_root("role grant-permission test-role readwrite bar")),
        client(as_root("user add example.com --no-password")),
        client(as_root("role add test-role-cn")),
        client(as_root("user grant-role example.com test-role-cn")),
        client(as_root("role grant-permission test-role-cn readwrite hoo")),
        // The certificate alone: its CN's permissions.
        example(anon("put hoo bar")),
        example(anon("get hoo")),
        example(anon("put baz bar")),
        example(anon("user get example.com")),
        example(anon("user list")),
        // A password login of a user without one is refused.
        example(as_user("example.com:x", "put hoo bar")),
        // A token wins over the certificate.
        example(as_user("test-user:pass", "put bar bar")),
        example(as_user("test-user:pass", "put hoo bar")),
        // CN root: the root role, no password needed.
        root_cert(anon("user list")),
        root_cert(anon("put anything v")),
        root_cert(anon("defrag")),
        root_cert(anon("auth disable")),
        example(anon("put baz bar")),
    ];
    let flags: Vec<String> = pki.mtls_flags();
    let options = |kind| {
        ServerOptions::new(kind)
            .tls(pki.client_tls())
            .args(flags.iter().cloned())
    };
    let (reference, subject) = tokio::join!(
        Server::start(options(ServerKind::Etcd)),
        Server::start(options(subject_kind())),
    );
    let (expected, actual) =
        tokio::join!(run_script(&reference, &steps), run_script(&subject, &steps));
    assert_same_transcript(&expected, &actual);
    let joined = actual.join("\n");
    assert!(joined.contains("Authentication Disabled"), "{joined}");
    assert!(joined.contains("etcdserver: permission denied"), "{joined}");
}
