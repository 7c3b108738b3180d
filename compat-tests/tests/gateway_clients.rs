//! Real gateway clients doing their normal work: Debian's python3-etcd3gw (the OpenStack
//! client of etcd's JSON gateway) runs `scripts/etcd3gw_workout.py` against the member, and
//! Debian's Patroni (its etcd3 DCS speaks the gateway) runs two PostgreSQL members through a
//! bootstrap, a switchover and a failover in `scripts/patroni_failover.py`.

use std::time::Duration;

use compat_tests::Server;
use tokio::process::Command;

/// The whole workout; each step inside it is bounded by the script's own timeouts.
const WORKOUT_TIMEOUT: Duration = Duration::from_secs(120);

/// The Patroni run's own deadline: the script stops its Patroni and PostgreSQL processes and
/// exits before it, so the harder timeout below never leaves them behind.
const PATRONI_DEADLINE: Duration = Duration::from_secs(240);
const PATRONI_TIMEOUT: Duration = Duration::from_secs(300);

/// Debian's interpreter, which sees Debian's python3-etcd3gw (installed by
/// `scripts/install-deps.sh --test`).
const PYTHON: &str = "/usr/bin/python3";

async fn workout(server: &Server, api_path: &str) {
    let address = server.client_address();
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/etcd3gw_workout.py");
    let output = tokio::time::timeout(
        WORKOUT_TIMEOUT,
        Command::new(PYTHON)
            .args([script, host, port, api_path])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the etcd3gw workout should finish in time")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("workout done"),
        "etcd3gw workout on {api_path} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

#[tokio::test]
async fn etcd3gw_does_its_normal_work() {
    let server = Server::start_default().await;
    workout(&server, "/v3/").await;
}

#[tokio::test]
async fn etcd3gw_works_on_the_v3beta_alias_too() {
    let server = Server::start_default().await;
    workout(&server, "/v3beta/").await;
}

/// Runs `scripts/patroni_failover.py` against a fresh member (`auth`: with auth enabled first).
async fn patroni(auth: bool) {
    let server = Server::start_default().await;
    let address = server.client_address();
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let work = tempfile::Builder::new()
        .prefix("patroni-")
        .tempdir()
        .expect("a work directory");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/patroni_failover.py");
    let deadline = PATRONI_DEADLINE.as_secs().to_string();
    let work_dir = work.path().to_str().expect("a UTF-8 temporary path");
    let mut args = vec![script, host, port, work_dir, deadline.as_str()];
    if auth {
        args.push("auth");
    }
    let output = tokio::time::timeout(
        PATRONI_TIMEOUT,
        Command::new(PYTHON).args(&args).kill_on_drop(true).output(),
    )
    .await
    .expect("the Patroni run should finish in time")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("patroni done"),
        "Patroni against {} failed ({}):\n{stdout}\n{stderr}",
        server.kind().name(),
        output.status
    );
}

#[tokio::test]
async fn patroni_bootstraps_switches_over_and_fails_over() {
    patroni(false).await;
}

/// The same with auth on: Patroni logs in through `auth/authenticate` and sends its token in
/// the `Authorization` header, its role limited to its scope's keys.
#[tokio::test]
async fn patroni_works_with_auth_enabled() {
    patroni(true).await;
}
