//! etcdctl with every endpoint form people write: `127.0.0.1:2379`, `http://127.0.0.1:2379`
//! and, on a TLS listener, `https://127.0.0.1:2379` (kubeadm's runbooks) as well as the bare
//! form with `--cacert`. etcdctl 3.4 dials the per-endpoint commands (`endpoint status`,
//! `endpoint hashkv`, `defrag`) through a passthrough target, which sends the endpoint as it
//! was written as the HTTP/2 `:authority`; etcd accepts that, and so must keelson.

use compat_tests::ops::{etcdctl_at, Pki};
use compat_tests::{OutputExt, Server, ServerOptions};
use serde_json::Value;

const PROTOCOL_ERROR: &str = "PROTOCOL_ERROR";

/// A member and the etcdctl flags its listener needs.
struct Listener {
    server: Server,
    flags: Vec<String>,
    /// Keeps the certificates alive.
    _pki: Option<Pki>,
}

async fn plain() -> Listener {
    Listener {
        server: Server::start(ServerOptions::from_env()).await,
        flags: Vec::new(),
        _pki: None,
    }
}

async fn tls() -> Listener {
    let pki = Pki::generate();
    let server = Server::start(
        ServerOptions::from_env()
            .tls(compat_tests::server::ClientTls::ca(&pki.ca))
            .args(pki.server_tls_flags()),
    )
    .await;
    Listener {
        server,
        flags: pki.etcdctl_flags(None),
        _pki: Some(pki),
    }
}

impl Listener {
    /// `host:port` and `scheme://host:port`.
    fn endpoint_forms(&self) -> [String; 2] {
        [self.server.client_address(), self.server.client_url()]
    }

    async fn run(&self, endpoint: &str, args: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        all.push("--command-timeout=10s");
        all.extend_from_slice(args);
        etcdctl_at(endpoint, &all).await
    }

    async fn ok(&self, endpoint: &str, args: &[&str]) -> String {
        let output = self.run(endpoint, args).await;
        let what = format!("--endpoints={endpoint} {}", args.join(" "));
        assert!(
            !output.stderr_text().contains(PROTOCOL_ERROR),
            "etcdctl {what}: {}",
            output.stderr_text()
        );
        output.expect_success(&what)
    }
}

async fn every_command_works_with_both_endpoint_forms(listener: Listener) {
    let server = &listener.server;
    let member_id = {
        let out = listener
            .ok(&server.client_url(), &["member", "list", "-w", "json"])
            .await;
        let members: Value = serde_json::from_str(&out).expect("member list JSON");
        members["header"]["member_id"]
            .as_u64()
            .expect("member list has the member ID")
    };
    for endpoint in listener.endpoint_forms() {
        let e = endpoint.as_str();
        assert_eq!(listener.ok(e, &["put", "form", e]).await, "OK\n");
        assert_eq!(
            listener.ok(e, &["get", "form", "--print-value-only"]).await,
            format!("{e}\n")
        );

        let status: Value =
            serde_json::from_str(&listener.ok(e, &["endpoint", "status", "-w", "json"]).await)
                .expect("endpoint status JSON");
        assert_eq!(status[0]["Endpoint"], Value::from(e), "{status}");
        assert_eq!(
            status[0]["Status"]["header"]["member_id"].as_u64(),
            Some(member_id),
            "{status}"
        );
        assert!(status[0]["Status"]["dbSize"]
            .as_u64()
            .is_some_and(|s| s > 0));

        let health = listener.ok(e, &["endpoint", "health"]).await;
        let health = format!(
            "{health}{}",
            listener.run(e, &["endpoint", "health"]).await.stderr_text()
        );
        assert!(health.contains(&format!("{e} is healthy")), "{health}");

        let defrag = listener.ok(e, &["defrag"]).await;
        assert_eq!(
            defrag.trim(),
            format!("Finished defragmenting etcd member[{e}]")
        );

        let members = listener.ok(e, &["member", "list"]).await;
        assert!(
            members.contains(server.name()) && members.contains(&server.client_url()),
            "{members}"
        );

        let hashkv = listener.run(e, &["endpoint", "hashkv", "-w", "json"]).await;
        let out = hashkv.expect_success(&format!("--endpoints={e} endpoint hashkv"));
        let parsed: Value = serde_json::from_str(&out).expect("hashkv JSON");
        assert_eq!(parsed[0]["Endpoint"], Value::from(e), "{parsed}");
        assert!(parsed[0]["HashKV"]["hash"].as_u64().is_some(), "{parsed}");
    }
}

#[tokio::test]
async fn plain_listener_with_bare_and_http_endpoints() {
    every_command_works_with_both_endpoint_forms(plain().await).await;
}

#[tokio::test]
async fn tls_listener_with_bare_and_https_endpoints() {
    every_command_works_with_both_endpoint_forms(tls().await).await;
}
