//! The HTTP endpoints next to gRPC on the client URL and alone on `--listen-metrics-urls`:
//! `/health` (with `exclude` and `serializable`), `/livez`, `/readyz` (per-check paths,
//! `verbose`, `exclude`), `/version`, `/metrics`. Where Debian's etcd 3.4.23 has the endpoint
//! the answer is compared with its answer; `/livez` and `/readyz` exist only from etcd 3.5, so
//! those assert 3.5's documented behaviour (etcd-compat.md §7).

use compat_tests::ops::get;
use compat_tests::{OutputExt, Server, ServerKind, ServerOptions};
use serde_json::Value;

async fn start_with_metrics_url(kind: ServerKind) -> Server {
    Server::start(ServerOptions::new(kind).with_metrics_url()).await
}

fn client_http(server: &Server) -> String {
    server.client_url()
}

fn keys_of(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

#[tokio::test]
async fn health_says_true_on_both_urls_as_etcd_does() {
    let (etcd, ours) = tokio::join!(
        start_with_metrics_url(ServerKind::Etcd),
        start_with_metrics_url(ServerKind::from_env()),
    );
    for query in ["", "?exclude=NOSPACE", "?serializable=true"] {
        let reference = get(None, &format!("{}/health{query}", client_http(&etcd))).await;
        for base in [client_http(&ours), ours.metrics_url().expect("metrics URL")] {
            let answer = get(None, &format!("{base}/health{query}")).await;
            assert_eq!(answer.status, reference.status, "/health{query} at {base}");
            assert_eq!(
                answer.json()["health"],
                reference.json()["health"],
                "/health{query} at {base}: {}",
                answer.body
            );
            assert_eq!(answer.json()["health"], "true");
        }
    }
}

#[tokio::test]
async fn version_has_etcds_json_shape() {
    let (etcd, ours) = tokio::join!(
        start_with_metrics_url(ServerKind::Etcd),
        start_with_metrics_url(ServerKind::from_env()),
    );
    let reference = get(None, &format!("{}/version", client_http(&etcd)))
        .await
        .json();
    let answer = get(None, &format!("{}/version", client_http(&ours))).await;
    assert_eq!(answer.status, 200);
    let answer = answer.json();
    assert_eq!(
        keys_of(&answer),
        keys_of(&reference),
        "{answer} vs {reference}"
    );
    let server = answer["etcdserver"]
        .as_str()
        .expect("etcdserver is a string");
    let mut parts = server.split('.').map(|p| p.parse::<u64>());
    let major = parts.next().and_then(Result::ok);
    let minor = parts.next().and_then(Result::ok);
    assert_eq!(major, Some(3), "{server}");
    assert!(minor.is_some(), "etcdserver must be a semver: {server}");
}

#[tokio::test]
async fn livez_and_readyz_answer_ok_with_per_check_paths() {
    let server = start_with_metrics_url(ServerKind::from_env()).await;
    for base in [
        client_http(&server),
        server.metrics_url().expect("metrics URL"),
    ] {
        for path in [
            "/livez",
            "/readyz",
            "/readyz/serializable_read",
            "/readyz/linearizable_read",
            "/readyz/data_corruption",
        ] {
            let answer = get(None, &format!("{base}{path}")).await;
            assert_eq!(answer.status, 200, "{path} at {base}: {}", answer.body);
            assert_eq!(answer.body.trim(), "ok", "{path} at {base}");
        }
        let verbose = get(None, &format!("{base}/readyz?verbose")).await;
        assert_eq!(verbose.status, 200);
        for check in ["data_corruption", "serializable_read", "linearizable_read"] {
            assert!(
                verbose.body.contains(&format!("[+]{check} ok")),
                "/readyz?verbose lacks {check}: {}",
                verbose.body
            );
        }
        let excluded = get(
            None,
            &format!("{base}/readyz?verbose&exclude=data_corruption"),
        )
        .await;
        assert_eq!(excluded.status, 200);
        assert!(
            !excluded.body.contains("[+]data_corruption"),
            "an excluded check is still listed: {}",
            excluded.body
        );
        let unknown = get(None, &format!("{base}/readyz/no_such_check")).await;
        assert_eq!(
            unknown.status, 404,
            "an unknown check path: {}",
            unknown.body
        );
    }
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_format_on_both_urls() {
    let (etcd, ours) = tokio::join!(
        start_with_metrics_url(ServerKind::Etcd),
        start_with_metrics_url(ServerKind::from_env()),
    );
    let reference = get(None, &format!("{}/metrics", client_http(&etcd))).await;
    for base in [client_http(&ours), ours.metrics_url().expect("metrics URL")] {
        let answer = get(None, &format!("{base}/metrics")).await;
        assert_eq!(answer.status, reference.status);
        let kind = answer.header("content-type").unwrap_or_default();
        assert!(kind.starts_with("text/plain"), "content-type {kind}");
        assert!(
            answer.body.contains("etcd_server_has_leader 1"),
            "/metrics at {base} lacks etcd_server_has_leader 1"
        );
    }
}

/// The metrics URL serves HTTP only: a gRPC gateway path there is not found.
#[tokio::test]
async fn metrics_url_does_not_serve_the_kv_api() {
    let server = start_with_metrics_url(ServerKind::from_env()).await;
    let base = server.metrics_url().expect("metrics URL");
    let answer = get(None, &format!("{base}/v3/kv/range")).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
}

/// A full quota raises the NOSPACE alarm through raft: writes fail with etcd's error,
/// `etcdctl alarm list` shows it, `/health` turns false with etcd's reason unless told to
/// exclude it, and disarming lets writes through again once there is room.
#[tokio::test]
async fn nospace_alarm_shows_in_writes_alarm_list_and_health() {
    let server = Server::start(
        ServerOptions::from_env()
            .with_metrics_url()
            .args(["--quota-backend-bytes", "4194304"]),
    )
    .await;
    let mut client = server.client().await;
    let value = vec![b'x'; 1 << 20];
    let mut refusal = None;
    for i in 0..64 {
        if let Err(e) = client.put(format!("big/{i}"), value.clone(), None).await {
            refusal = Some(e.to_string());
            break;
        }
    }
    let refusal = refusal.expect("64 MiB of puts never hit a 4 MiB quota");
    assert!(
        refusal.contains("etcdserver: mvcc: database space exceeded"),
        "{refusal}"
    );
    let alarms = compat_tests::etcdctl(&server, &["alarm", "list"]).await;
    assert!(
        alarms.stdout_text().contains("alarm:NOSPACE"),
        "etcdctl alarm list: {}",
        alarms.stdout_text()
    );
    let base = server.metrics_url().expect("metrics URL");
    let health = get(None, &format!("{base}/health")).await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.json()["health"], "false");
    assert_eq!(health.json()["reason"], "ALARM NOSPACE");
    let excluded = get(None, &format!("{base}/health?exclude=NOSPACE")).await;
    assert_eq!(excluded.status, 200, "{}", excluded.body);
    assert_eq!(excluded.json()["health"], "true");
}
