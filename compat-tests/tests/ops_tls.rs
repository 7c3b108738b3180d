//! Client TLS as kube-apiserver uses it: mutual TLS with a CA, certificates made at test time
//! (compat_tests::ops::Pki), refusals of a missing, foreign or revoked client certificate,
//! `--auto-tls`, an https and an http client URL side by side, ALPN `h2`, and the TLS version
//! bounds. Each test runs against the server `COMPAT_SERVER` names (keelson by default). With
//! `COMPAT_SERVER=etcd` Debian's etcd 3.4.23 passes all but the two version-bound tests:
//! `--tls-min-version`/`--tls-max-version` arrived in etcd 3.5.

use compat_tests::ops::{etcdctl_at, get, rustls_config, tls_exchange, Pki};
use compat_tests::{OutputExt, Server, ServerOptions};

use compat_tests::server::ClientTls;

async fn start_mtls(pki: &Pki, extra: &[&str]) -> Server {
    let mut options = ServerOptions::from_env()
        .tls(pki.client_tls())
        .args(pki.mtls_flags());
    for arg in extra {
        options = options.arg(*arg);
    }
    Server::start(options).await
}

fn args_with<'a>(flags: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(rest);
    args
}

#[tokio::test]
async fn etcd_client_over_mutual_tls_reads_and_writes() {
    let pki = Pki::generate();
    let server = start_mtls(&pki, &[]).await;
    let mut client = server.client().await;
    client.put("tls-key", "over mTLS", None).await.expect("put");
    let got = client.get("tls-key", None).await.expect("get");
    assert_eq!(got.kvs().len(), 1);
    assert_eq!(got.kvs()[0].value(), b"over mTLS");
}

#[tokio::test]
async fn etcdctl_over_mutual_tls_with_a_good_certificate() {
    let pki = Pki::generate();
    let server = start_mtls(&pki, &[]).await;
    let flags = pki.etcdctl_flags(Some(&pki.client));
    etcdctl_at(&server.client_url(), &args_with(&flags, &["put", "k", "v"]))
        .await
        .expect_success("etcdctl put over mTLS");
    let out = etcdctl_at(
        &server.client_url(),
        &args_with(&flags, &["get", "k", "--print-value-only"]),
    )
    .await
    .expect_success("etcdctl get over mTLS");
    assert_eq!(out.trim(), "v");
    etcdctl_at(
        &server.client_url(),
        &args_with(&flags, &["endpoint", "health"]),
    )
    .await
    .expect_success("etcdctl endpoint health over mTLS");
}

/// A client that cannot show a certificate the trusted CA signed, or shows a revoked one, must
/// not get an answer: etcdctl fails and the raw handshake (or the first request) is refused.
#[tokio::test]
async fn client_cert_auth_refuses_missing_foreign_and_revoked_certificates() {
    let pki = Pki::generate();
    let crl = pki.crl.display().to_string();
    let server = start_mtls(&pki, &["--client-crl-file", &crl]).await;
    let url = server.client_url();

    // No certificate at all.
    let no_cert = pki.etcdctl_flags(None);
    let out = etcdctl_at(
        &url,
        &args_with(&no_cert, &["--command-timeout=3s", "get", "k"]),
    )
    .await;
    assert!(
        !out.status.success(),
        "etcdctl without a client certificate succeeded: {}",
        out.stdout_text()
    );
    let anonymous = ClientTls::ca(&pki.ca);
    let refused = tls_exchange(
        &server.client_address(),
        rustls_config(&anonymous, &["http/1.1"], None),
        Some("/health"),
    )
    .await;
    assert!(
        refused.is_err(),
        "a TLS client without a certificate got an answer: {refused:?}"
    );

    // A certificate from a CA the member does not trust.
    let foreign =
        ClientTls::ca(&pki.ca).identity(&pki.stranger_client.cert, &pki.stranger_client.key);
    let refused = tls_exchange(
        &server.client_address(),
        rustls_config(&foreign, &["http/1.1"], None),
        Some("/health"),
    )
    .await;
    assert!(
        refused.is_err(),
        "a certificate of another CA got an answer: {refused:?}"
    );

    // A certificate the CRL revokes.
    let revoked_flags = pki.etcdctl_flags(Some(&pki.revoked_client));
    let out = etcdctl_at(
        &url,
        &args_with(&revoked_flags, &["--command-timeout=3s", "get", "k"]),
    )
    .await;
    assert!(
        !out.status.success(),
        "etcdctl with a revoked certificate succeeded: {}",
        out.stdout_text()
    );

    // The good certificate still works on the same member.
    let good = pki.etcdctl_flags(Some(&pki.client));
    etcdctl_at(&url, &args_with(&good, &["get", "k"]))
        .await
        .expect_success("etcdctl with the good certificate");
}

#[tokio::test]
async fn the_handshake_offers_h2_and_shows_the_configured_certificate() {
    let pki = Pki::generate();
    let server = start_mtls(&pki, &[]).await;
    let exchange = tls_exchange(
        &server.client_address(),
        rustls_config(&pki.client_tls(), &["h2"], None),
        None,
    )
    .await
    .expect("handshake with the good certificate");
    assert_eq!(exchange.alpn.as_deref(), Some("h2"));
    let expected = compat_tests::ops::read_certs(&pki.server.cert);
    assert_eq!(
        exchange.peer_certificates.first(),
        expected.first(),
        "the member must present --cert-file"
    );
}

#[tokio::test]
async fn tls_min_version_refuses_older_clients() {
    let pki = Pki::generate();
    let server = start_mtls(&pki, &["--tls-min-version", "TLS1.3"]).await;
    let tls12_only = tls_exchange(
        &server.client_address(),
        rustls_config(&pki.client_tls(), &["h2"], Some(&[&rustls::version::TLS12])),
        None,
    )
    .await;
    assert!(
        tls12_only.is_err(),
        "a TLS 1.2 client was accepted with --tls-min-version TLS1.3: {tls12_only:?}"
    );
    let tls13 = tls_exchange(
        &server.client_address(),
        rustls_config(&pki.client_tls(), &["h2"], Some(&[&rustls::version::TLS13])),
        None,
    )
    .await
    .expect("a TLS 1.3 client is accepted");
    assert_eq!(tls13.version, Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test]
async fn tls_max_version_caps_the_handshake() {
    let pki = Pki::generate();
    let server = start_mtls(&pki, &["--tls-max-version", "TLS1.2"]).await;
    let exchange = tls_exchange(
        &server.client_address(),
        rustls_config(&pki.client_tls(), &["h2"], None),
        None,
    )
    .await
    .expect("handshake");
    assert_eq!(exchange.version, Some(rustls::ProtocolVersion::TLSv1_2));
}

#[tokio::test]
async fn https_and_http_client_urls_serve_side_by_side() {
    let pki = Pki::generate();
    let server = Server::start(
        ServerOptions::from_env()
            .tls(ClientTls::ca(&pki.ca))
            .args(pki.server_tls_flags())
            .with_http_client_url(),
    )
    .await;
    let plain = server
        .http_client_url()
        .expect("the harness made a plain client URL");
    etcdctl_at(&plain, &["put", "side", "by side"])
        .await
        .expect_success("put over http");
    let flags = pki.etcdctl_flags(None);
    let out = etcdctl_at(
        &server.client_url(),
        &args_with(&flags, &["get", "side", "--print-value-only"]),
    )
    .await
    .expect_success("get over https");
    assert_eq!(out.trim(), "by side");
    let health = get(None, &format!("{plain}/health")).await;
    assert_eq!(health.status, 200, "{health:?}");
}

#[tokio::test]
async fn auto_tls_serves_https_with_a_generated_certificate() {
    let server = Server::start(
        ServerOptions::from_env()
            .tls(ClientTls::insecure())
            .arg("--auto-tls"),
    )
    .await;
    assert!(server.client_url().starts_with("https://"));
    etcdctl_at(
        &server.client_url(),
        &[
            "--insecure-transport=false",
            "--insecure-skip-tls-verify",
            "put",
            "a",
            "1",
        ],
    )
    .await
    .expect_success("etcdctl put against --auto-tls");
    let exchange = tls_exchange(
        &server.client_address(),
        rustls_config(&ClientTls::insecure(), &["h2"], None),
        None,
    )
    .await
    .expect("handshake with an --auto-tls member");
    assert_eq!(exchange.alpn.as_deref(), Some("h2"));
    assert!(
        !exchange.peer_certificates.is_empty(),
        "an --auto-tls member shows a certificate"
    );
}

#[tokio::test]
async fn peer_tls_flags_are_accepted_on_a_member_without_peers() {
    let pki = Pki::generate();
    let cert = pki.server.cert.display().to_string();
    let key = pki.server.key.display().to_string();
    let ca = pki.ca.display().to_string();
    let server = Server::start(ServerOptions::from_env().peer_https().args([
        "--peer-cert-file",
        &cert,
        "--peer-key-file",
        &key,
        "--peer-trusted-ca-file",
        &ca,
        "--peer-client-cert-auth",
    ]))
    .await;
    let mut client = server.client().await;
    client.put("p", "1", None).await.expect("put");
    let auto = Server::start(
        ServerOptions::from_env()
            .peer_https()
            .arg("--peer-auto-tls"),
    )
    .await;
    let mut client = auto.client().await;
    client
        .put("p", "2", None)
        .await
        .expect("put with --peer-auto-tls");
}

/// `--cipher-suites` limits TLS 1.2 to the listed suites, on the client and the peer listener
/// (checked with Debian's openssl, which can offer a single suite).
#[tokio::test]
async fn cipher_suites_limit_what_tls12_negotiates() {
    compat_tests::ops::require_tool("/usr/bin/openssl", "openssl");
    let server = Server::start(
        ServerOptions::from_env()
            .tls(ClientTls::insecure())
            .peer_https()
            .args([
                "--auto-tls",
                "--peer-auto-tls",
                "--cipher-suites",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "--tls-max-version",
                "TLS1.2",
            ]),
    )
    .await;
    for address in [server.client_address(), server.peer_address()] {
        let offer = |cipher: &'static str| {
            let address = address.clone();
            async move {
                let output = compat_tests::ops::run_tool(
                    "/usr/bin/openssl",
                    &[
                        "s_client", "-connect", &address, "-tls1_2", "-cipher", cipher,
                    ],
                    Some(""),
                )
                .await;
                format!("{}{}", output.stdout_text(), output.stderr_text())
            }
        };
        let refused = offer("ECDHE-ECDSA-AES128-GCM-SHA256").await;
        assert!(
            refused.contains("Cipher is (NONE)"),
            "{address} accepted a suite --cipher-suites leaves out: {refused}"
        );
        let accepted = offer("ECDHE-ECDSA-AES256-GCM-SHA384").await;
        assert!(
            accepted.contains("Cipher is ECDHE-ECDSA-AES256-GCM-SHA384"),
            "{address} refused the listed suite: {accepted}"
        );
    }
}

/// The command line kubeadm writes into its etcd static pod (certificates, `=true` booleans,
/// experimental flags, a metrics URL), with etcdctl over mTLS and the kubelet's probe.
#[tokio::test]
async fn kubeadms_etcd_command_line_starts_and_serves() {
    let pki = Pki::generate();
    let cert = |p: &std::path::Path| p.display().to_string();
    let server = Server::start(
        ServerOptions::from_env()
            .tls(pki.client_tls())
            .peer_https()
            .with_metrics_url()
            .args([
                format!("--cert-file={}", cert(&pki.server.cert)),
                format!("--key-file={}", cert(&pki.server.key)),
                format!("--trusted-ca-file={}", cert(&pki.ca)),
                "--client-cert-auth=true".to_string(),
                "--experimental-initial-corrupt-check=true".to_string(),
                "--experimental-watch-progress-notify-interval=5s".to_string(),
                format!("--peer-cert-file={}", cert(&pki.server.cert)),
                format!("--peer-key-file={}", cert(&pki.server.key)),
                format!("--peer-trusted-ca-file={}", cert(&pki.ca)),
                "--peer-client-cert-auth=true".to_string(),
                "--snapshot-count=10000".to_string(),
            ]),
    )
    .await;
    let flags = pki.etcdctl_flags(Some(&pki.client));
    etcdctl_at(
        &server.client_url(),
        &args_with(&flags, &["endpoint", "health"]),
    )
    .await
    .expect_success("etcdctl endpoint health over mTLS");
    etcdctl_at(
        &server.client_url(),
        &args_with(&flags, &["put", "/registry/x", "y"]),
    )
    .await
    .expect_success("etcdctl put over mTLS");
    let base = server.metrics_url().expect("metrics URL");
    for path in ["/livez", "/readyz", "/health"] {
        let answer = get(None, &format!("{base}{path}")).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
}
