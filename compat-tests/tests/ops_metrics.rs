//! `/metrics` as etcd's dashboards and alerts read it: parsed by `promtool check metrics`
//! (Debian `prometheus`), the families of etcd-compat.md §7 present with etcd's types and labels,
//! counters that move with traffic, and etcd's own alert rules (the etcd mixin shipped in
//! Debian's `etcd-server` docs, compiled with Debian's `jsonnet`) evaluated by
//! `promtool test rules` over series scraped from the server: quiet for a healthy member, firing
//! for a synthetic member without a leader.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use compat_tests::ops::{
    compile_etcd_mixin_alerts, get, promtool_check_metrics, require_tool, run_tool,
    series_selector, Scrape, PROMTOOL,
};
use compat_tests::{Server, ServerKind, ServerOptions};
use etcd_client::{GetOptions, WatchOptions};

async fn scrape(server: &Server) -> Scrape {
    let answer = get(None, &format!("{}/metrics", server.client_url())).await;
    assert_eq!(answer.status, 200);
    Scrape::parse(&answer.body)
}

/// Puts, gets, a watch stream opened and closed, a lease: the traffic whose metrics we check.
async fn traffic(server: &Server) {
    let mut client = server.client().await;
    for i in 0..20 {
        client.put(format!("m/{i}"), "v", None).await.expect("put");
    }
    client
        .get("m/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let mut stream = client
        .watch("m/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let created = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("the watch was not created within 10 s");
    assert!(
        created.expect("watch stream").is_some(),
        "watch stream ended"
    );
    drop(stream);
    client.lease_grant(60, None).await.expect("lease grant");
}

/// promtool lints names; etcd's own names break some lint rules, and ours must be etcd's. So a
/// parse error fails, and every lint complaint about keelson's scrape must be one promtool also
/// makes about the real etcd's scrape (or concern a family etcd 3.4 does not export).
#[tokio::test]
async fn promtool_accepts_the_scrape_and_complains_only_as_about_etcd() {
    let (etcd, ours) = tokio::join!(
        Server::start(ServerOptions::new(ServerKind::Etcd)),
        Server::start(ServerOptions::from_env()),
    );
    traffic(&ours).await;
    traffic(&etcd).await;
    let ours_scrape = scrape(&ours).await;
    let etcd_scrape = scrape(&etcd).await;
    let (code, problems) = promtool_check_metrics(&ours_scrape.text).await;
    assert!(
        matches!(code, Some(0) | Some(3)),
        "promtool check metrics failed to parse the scrape (exit {code:?}): {problems:#?}"
    );
    let (_, etcd_problems) = promtool_check_metrics(&etcd_scrape.text).await;
    let etcd_problems: BTreeSet<String> = etcd_problems.into_iter().collect();
    for problem in &problems {
        let family = problem.split_whitespace().next().unwrap_or_default();
        let in_etcd = etcd_scrape.family(family).is_some();
        assert!(
            !in_etcd || etcd_problems.contains(problem),
            "promtool complains about keelson's {family} but not about etcd's: {problem}"
        );
    }
}

#[tokio::test]
async fn etcds_families_exist_with_etcds_types_and_labels() {
    let (etcd, ours) = tokio::join!(
        Server::start(ServerOptions::new(ServerKind::Etcd)),
        Server::start(ServerOptions::from_env()),
    );
    traffic(&ours).await;
    traffic(&etcd).await;
    let ours = scrape(&ours).await;
    let etcd = scrape(&etcd).await;
    let families = [
        "etcd_server_has_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_server_quota_backend_bytes",
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ];
    for name in families {
        let reference = etcd
            .family(name)
            .unwrap_or_else(|| panic!("etcd itself lacks {name}: fix the test"));
        let family = ours
            .family(name)
            .unwrap_or_else(|| panic!("keelson's /metrics lacks {name}"));
        assert_eq!(family.kind, reference.kind, "type of {name}");
        assert_eq!(
            family.label_names(),
            reference.label_names(),
            "label names of {name}"
        );
    }
    assert_eq!(ours.value("etcd_server_has_leader", &[]), 1.0);
    // Series exist before any call (pre-initialised), as with etcd's go-grpc-prometheus.
    assert!(
        !ours
            .samples(
                "grpc_server_started_total",
                &[
                    ("grpc_service", "etcdserverpb.Maintenance"),
                    ("grpc_method", "Defragment")
                ],
            )
            .is_empty(),
        "grpc_server_started_total is not pre-initialised for an unused method"
    );
}

#[tokio::test]
async fn counters_move_with_traffic() {
    let server = Server::start(ServerOptions::from_env()).await;
    let before = scrape(&server).await;
    traffic(&server).await;
    let after = scrape(&server).await;
    let fsyncs = |s: &Scrape| s.value("etcd_disk_wal_fsync_duration_seconds_count", &[]);
    assert!(
        fsyncs(&after) > fsyncs(&before),
        "puts did not count an fsync"
    );
    let puts_ok = |s: &Scrape| {
        s.value(
            "grpc_server_handled_total",
            &[("grpc_method", "Put"), ("grpc_code", "OK")],
        )
    };
    assert_eq!(
        puts_ok(&after) - puts_ok(&before),
        20.0,
        "handled Put calls"
    );
    let watch_handled = |s: &Scrape| {
        s.value(
            "grpc_server_handled_total",
            &[
                ("grpc_service", "etcdserverpb.Watch"),
                ("grpc_method", "Watch"),
            ],
        )
    };
    // The watch stream was closed by the client; it counts as handled once it has ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = scrape(&server).await;
        if watch_handled(&now) > watch_handled(&before) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed Watch stream was not counted in grpc_server_handled_total within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A gauge of the raft commit index; etcd refreshes it on its own schedule, so poll.
    let committed = |s: &Scrape| s.value("etcd_server_proposals_committed_total", &[]);
    loop {
        let now = scrape(&server).await;
        if committed(&now) >= committed(&before) + 21.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "etcd_server_proposals_committed_total did not grow by the 21 proposals within 10 s \
             ({} -> {})",
            committed(&before),
            committed(&now)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn metrics_extensive_adds_the_grpc_handling_histogram() {
    let basic = Server::start(ServerOptions::from_env()).await;
    let extensive = Server::start(ServerOptions::from_env().args(["--metrics", "extensive"])).await;
    traffic(&basic).await;
    traffic(&extensive).await;
    assert!(
        scrape(&basic)
            .await
            .family("grpc_server_handling_seconds")
            .is_none(),
        "--metrics basic (the default) must not export grpc_server_handling_seconds"
    );
    let extensive = scrape(&extensive).await;
    let family = extensive
        .family("grpc_server_handling_seconds")
        .expect("--metrics extensive exports grpc_server_handling_seconds");
    assert_eq!(family.kind, "histogram");
}

/// Turns a scrape into promtool `input_series`: each sample with `job`/`instance` added, its
/// value held for `minutes`.
fn input_series(out: &mut String, scrape: &Scrape, instance: &str, minutes: u32) {
    for family in scrape.families.values() {
        for sample in &family.samples {
            if !sample.value.is_finite() {
                continue;
            }
            let mut labels = sample.labels.clone();
            labels.insert("job".into(), "etcd".into());
            labels.insert("instance".into(), instance.into());
            let selector = series_selector(&sample.name, &labels);
            let _ = writeln!(
                out,
                "      - series: '{}'\n        values: '{}+0x{minutes}'",
                selector.replace('\'', "''"),
                sample.value
            );
        }
    }
}

#[tokio::test]
async fn etcd_mixin_alerts_stay_quiet_for_keelson_and_fire_without_a_leader() {
    require_tool(PROMTOOL, "prometheus");
    let server = Server::start(ServerOptions::from_env()).await;
    traffic(&server).await;
    let scraped = scrape(&server).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let rules = compile_etcd_mixin_alerts(dir.path()).await;

    let mut test = String::new();
    let _ = writeln!(
        test,
        "rule_files:\n  - '{}'\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:",
        rules.display()
    );
    input_series(&mut test, &scraped, "keelson", 30);
    let _ = writeln!(
        test,
        "      - series: 'etcd_server_has_leader{{job=\"etcd\",instance=\"leaderless\"}}'\n        values: '0+0x30'"
    );
    let _ = writeln!(
        test,
        "    promql_expr_test:\n      - expr: 'count by (alertname, instance) (ALERTS{{alertstate=\"firing\"}})'\n        eval_time: 20m\n        exp_samples:\n          - labels: '{{alertname=\"etcdNoLeader\", instance=\"leaderless\"}}'\n            value: 1"
    );
    let test_file = dir.path().join("etcd-alerts-test.yaml");
    std::fs::write(&test_file, &test).expect("write the promtool test");
    let output = run_tool(
        PROMTOOL,
        &["test", "rules", &test_file.display().to_string()],
        None,
    )
    .await;
    assert!(
        output.status.success(),
        "promtool test rules: the only firing alert must be etcdNoLeader for the leaderless \
         member (keelson's series must fire none):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
