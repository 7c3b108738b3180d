//! Clusters whose members talk over TLS with etcd's peer flags: certificates from a CA with
//! client certificate authentication (a peer without the right certificate is refused),
//! `--peer-cert-allowed-cn`, and `--peer-auto-tls`.

use compat_tests::cluster::Cluster;
use compat_tests::ops::{path_arg, rustls_config, tls_exchange, Pki};
use compat_tests::server::ClientTls;
use compat_tests::{ServerKind, ServerOptions};

fn peer_mtls_flags(pki: &Pki) -> Vec<String> {
    vec![
        "--peer-cert-file".into(),
        path_arg(&pki.server.cert),
        "--peer-key-file".into(),
        path_arg(&pki.server.key),
        "--peer-trusted-ca-file".into(),
        path_arg(&pki.ca),
        "--peer-client-cert-auth".into(),
    ]
}

/// Whether a TLS client with `tls` (and h2) completes a gRPC-capable exchange with the peer
/// listener at `address`: a refused client certificate fails the handshake or the request.
async fn peer_accepts(address: &str, tls: &ClientTls) -> bool {
    let config = rustls_config(tls, &["h2", "http/1.1"], None);
    tls_exchange(address, config, Some("/version"))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_replicate_over_mutual_tls_and_refuse_peers_without_the_right_certificate() {
    let pki = Pki::generate();
    let base = ServerOptions::from_env()
        .peer_https()
        .args(peer_mtls_flags(&pki));
    let cluster = Cluster::start_with(base, 3).await;
    let mut client = cluster.client().await;
    client
        .put("tls/k", "v", None)
        .await
        .expect("a write replicated over TLS");
    for i in 0..3 {
        let mut member = cluster.member_client(i).await;
        let got = member.get("tls/k", None).await.expect("linearizable read");
        assert_eq!(got.kvs().len(), 1, "member {i}");
    }
    let peer = cluster.members[0].peer_address();
    let good = ClientTls::ca(&pki.ca).identity(&pki.server.cert, &pki.server.key);
    assert!(
        peer_accepts(&peer, &good).await,
        "a member's own certificate is accepted"
    );
    let stranger =
        ClientTls::ca(&pki.ca).identity(&pki.stranger_client.cert, &pki.stranger_client.key);
    assert!(
        !peer_accepts(&peer, &stranger).await,
        "a certificate of another CA was accepted on the peer listener"
    );
    let anonymous = ClientTls::ca(&pki.ca);
    assert!(
        !peer_accepts(&peer, &anonymous).await,
        "a peer without a certificate was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_cert_allowed_cn_refuses_other_names_of_the_same_ca() {
    if ServerKind::from_env() != ServerKind::Keelson {
        eprintln!("skipped: checked with keelson's refusal");
        return;
    }
    let pki = Pki::generate();
    let mut flags = peer_mtls_flags(&pki);
    flags.extend([
        "--peer-cert-allowed-cn".to_string(),
        "keelson-server".to_string(),
    ]);
    let cluster = Cluster::start_with(ServerOptions::from_env().peer_https().args(flags), 3).await;
    cluster
        .client()
        .await
        .put("cn/k", "v", None)
        .await
        .expect("members with the allowed CN form a cluster");
    let peer = cluster.members[1].peer_address();
    let other_name = ClientTls::ca(&pki.ca).identity(&pki.client.cert, &pki.client.key);
    assert!(
        !peer_accepts(&peer, &other_name).await,
        "a certificate with CN `client` passed --peer-cert-allowed-cn keelson-server"
    );
    let allowed = ClientTls::ca(&pki.ca).identity(&pki.server.cert, &pki.server.key);
    assert!(peer_accepts(&peer, &allowed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_with_peer_auto_tls_form_a_cluster() {
    let base = ServerOptions::from_env()
        .peer_https()
        .arg("--peer-auto-tls");
    let cluster = Cluster::start_with(base, 3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.member_client(follower).await;
    client
        .put("auto/k", "v", None)
        .await
        .expect("a write forwarded over auto-TLS");
    // The peer listener speaks TLS: a plain connection gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!(
            "http://{}/version",
            cluster.members[0].peer_address()
        ))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "the https peer URL answered plain HTTP");
}
