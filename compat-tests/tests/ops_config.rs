//! Configuration as etcd takes it: `--config-file` in etcd's YAML, `ETCD_*` variables (one that
//! repeats a command-line flag is fatal, as in etcd), unknown flags refused with Go's message,
//! and `--logger zap` JSON lines. Exit behaviour is compared with the real etcd.

use compat_tests::ops::{isolated_flags, run_until_exit};
use compat_tests::{OutputExt, Server, ServerKind, ServerOptions};
use etcd_client::{Txn, TxnOp};

#[tokio::test]
async fn a_config_file_in_etcds_yaml_starts_a_member_with_its_settings() {
    let template = "\
name: '{name}'
data-dir: '{data_dir}'
listen-client-urls: '{client_url}'
advertise-client-urls: '{client_url}'
listen-peer-urls: '{peer_url}'
initial-advertise-peer-urls: '{peer_url}'
initial-cluster: '{name}={peer_url}'
initial-cluster-state: new
max-txn-ops: 3
";
    let server = Server::start(ServerOptions::from_env().config_file(template)).await;
    let mut client = server.client().await;
    client.put("from-config", "yes", None).await.expect("put");
    let ops: Vec<TxnOp> = (0..4)
        .map(|i| TxnOp::put(format!("t{i}"), "v", None))
        .collect();
    let refused = client.txn(Txn::new().and_then(ops)).await;
    let message = format!("{refused:?}");
    assert!(
        message.contains("too many operations in txn request"),
        "max-txn-ops: 3 from the file was not applied: {message}"
    );
}

fn stderr_of(output: &std::process::Output) -> String {
    format!("{}{}", output.stderr_text(), output.stdout_text())
}

#[tokio::test]
async fn an_etcd_variable_that_repeats_a_flag_is_fatal_as_in_etcd() {
    for kind in [ServerKind::Etcd, ServerKind::from_env()] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut args = isolated_flags(dir.path());
        args.extend(["--name".to_string(), "default".to_string()]);
        let output = run_until_exit(kind, &args, &[("ETCD_NAME", "other")]).await;
        assert!(!output.status.success(), "{} started", kind.name());
        let text = stderr_of(&output);
        assert!(
            text.contains("conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag"),
            "{}: {text}",
            kind.name()
        );
    }
}

#[tokio::test]
async fn etcd_variables_configure_the_member_and_unknown_ones_only_warn() {
    let server = Server::start(
        ServerOptions::from_env()
            .env("ETCD_MAX_TXN_OPS", "2")
            .env("ETCD_NO_SUCH_SETTING", "1"),
    )
    .await;
    let mut client = server.client().await;
    let ops: Vec<TxnOp> = (0..3)
        .map(|i| TxnOp::put(format!("t{i}"), "v", None))
        .collect();
    let refused = client.txn(Txn::new().and_then(ops)).await;
    assert!(
        format!("{refused:?}").contains("too many operations in txn request"),
        "ETCD_MAX_TXN_OPS=2 was not applied: {refused:?}"
    );
    // The warning comes at startup, so the whole log is read, not its tail.
    let log = server.log_text();
    assert!(
        log.contains("ETCD_NO_SUCH_SETTING"),
        "an unknown ETCD_ variable must be named in a warning: {log}"
    );
    // A new leader refuses membership changes until its first entry is committed; publishing
    // this member retried that refusal with no pause and filled the log (seen in CI).
    let refusals = log.matches("membership change refused").count();
    assert!(
        refusals <= 10,
        "publishing the member retried {refusals} times without a pause: {log}"
    );
}

#[tokio::test]
async fn an_unknown_flag_is_refused_with_gos_message() {
    for kind in [ServerKind::Etcd, ServerKind::from_env()] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut args = isolated_flags(dir.path());
        args.push("--no-such-flag".to_string());
        let output = run_until_exit(kind, &args, &[]).await;
        assert!(!output.status.success(), "{} started", kind.name());
        let text = stderr_of(&output);
        assert!(
            text.contains("flag provided but not defined: -no-such-flag"),
            "{}: {text}",
            kind.name()
        );
    }
}

#[tokio::test]
async fn logger_zap_writes_json_lines_with_etcds_fields() {
    let server = Server::start(ServerOptions::from_env().args(["--logger", "zap"])).await;
    let log = std::fs::read_to_string(server.log_path()).expect("read the log");
    let mut lines = 0;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["level", "ts", "msg"] {
            assert!(entry.get(field).is_some(), "no {field:?} in {line}");
        }
        lines += 1;
    }
    assert!(lines > 0, "--logger zap wrote no JSON line: {log}");
    assert!(
        log.lines()
            .all(|l| l.trim().is_empty() || l.starts_with('{')),
        "--logger zap wrote a line that is not JSON: {log}"
    );
}
