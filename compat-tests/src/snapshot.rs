//! Backup and migration tests' helpers: a history worth restoring, a dump of every retained
//! revision to compare two servers with, and `keelson snapshot` / `etcdctl snapshot` runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn,
    TxnOp, WatchOptions,
};

use crate::etcdctl::etcdctl_binary;
use crate::server::{inherited_env_names, keelson_binary, ServerOptions};
use crate::watch::{Ev, Kv};

/// The longest a `snapshot restore` / `status` may take in the tests.
pub const SNAPSHOT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a restore needs from a member's cluster flags.
pub struct RestoreFlags {
    pub name: String,
    pub initial_cluster: String,
    pub token: String,
    pub peer_url: String,
}

impl RestoreFlags {
    /// The flags of a member that `Cluster::start_tweaked` prepared.
    pub fn of(options: &ServerOptions) -> RestoreFlags {
        let cluster = options
            .cluster
            .as_ref()
            .expect("restores are tested on members started with cluster flags");
        let peer_url = cluster
            .initial_cluster
            .split(',')
            .find_map(|item| item.strip_prefix(&format!("{}=", options.name)))
            .expect("the member is in --initial-cluster")
            .to_string();
        RestoreFlags {
            name: options.name.clone(),
            initial_cluster: cluster.initial_cluster.clone(),
            token: cluster.token.clone(),
            peer_url,
        }
    }

    pub fn args(&self, file: &Path, data_dir: &Path) -> Vec<String> {
        vec![
            "snapshot".into(),
            "restore".into(),
            file.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--name".into(),
            self.name.clone(),
            "--initial-cluster".into(),
            self.initial_cluster.clone(),
            "--initial-cluster-token".into(),
            self.token.clone(),
            "--initial-advertise-peer-urls".into(),
            self.peer_url.clone(),
        ]
    }
}

/// Runs a command to completion within [`SNAPSHOT_COMMAND_TIMEOUT`] (synchronously: restores
/// run inside `Cluster::start_tweaked`'s option hook, before the members start).
pub fn run_bounded(program: &Path, args: &[String], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    for name in inherited_env_names("ETCDCTL_") {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let deadline = Instant::now() + SNAPSHOT_COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                panic!(
                    "{} {args:?} did not finish in {SNAPSHOT_COMMAND_TIMEOUT:?}",
                    program.display()
                );
            }
            Err(e) => panic!("waiting for {}: {e}", program.display()),
        }
    }
    child.wait_with_output().expect("collect the output")
}

/// `keelson <args>`.
pub fn keelson(args: &[String]) -> Output {
    run_bounded(&keelson_binary(), args, &[])
}

/// `etcdctl <args>` (API 3) without endpoints: the offline snapshot commands.
pub fn etcdctl_offline(args: &[String]) -> Output {
    run_bounded(&etcdctl_binary(), args, &[("ETCDCTL_API", "3")])
}

#[track_caller]
pub fn assert_success(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What a history left: the revisions to compare and the leases it kept.
pub struct History {
    pub compacted: i64,
    pub last: i64,
    pub leases: Vec<i64>,
}

/// Writes a history of `rounds` rounds (overwrites, deletes, a txn, keys under two leases, one
/// lease revoked), compacts in the middle and writes on after the compaction.
pub async fn write_history(client: &mut Client, rounds: usize) -> History {
    let kept = client.lease_grant(600, None).await.expect("grant").id();
    let revoked = client.lease_grant(600, None).await.expect("grant").id();
    let mut compacted = 0;
    for round in 0..rounds {
        for i in 0..5 {
            let key = format!("/registry/pods/ns{}/p{i}", round % 3);
            let value = format!("v{round}-{i}-{}", "x".repeat(round % 7));
            client.put(key, value, None).await.expect("put");
        }
        let leased = format!("/leases/k{round}");
        let lease = if round % 2 == 0 { kept } else { revoked };
        client
            .put(leased, "l", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put with a lease");
        if round % 4 == 1 {
            let prefix = format!("/registry/pods/ns{}/", round % 3);
            client
                .delete(prefix, Some(DeleteOptions::new().with_prefix()))
                .await
                .expect("delete a prefix");
        }
        // A CAS update the way kube-apiserver does them.
        let key = "/registry/configmaps/cas";
        let current = client.get(key, None).await.expect("get");
        let mod_rev = current.kvs().first().map_or(0, |kv| kv.mod_revision());
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_rev)])
            .and_then([
                TxnOp::put(key, format!("cas-{round}"), None),
                TxnOp::put(format!("{key}-shadow"), "s", None),
            ]);
        client.txn(txn).await.expect("txn");
        if round == rounds / 2 {
            let rev = crate::kv::current_revision(client).await - 3;
            client
                .compact(rev, Some(CompactionOptions::new().with_physical()))
                .await
                .expect("compact");
            compacted = rev;
        }
    }
    client.lease_revoke(revoked).await.expect("revoke");
    client.put("/last", "done", None).await.expect("put");
    let last = crate::kv::current_revision(client).await;
    History {
        compacted,
        last,
        leases: vec![kept],
    }
}

/// Every key at every revision from `from` to `to`, and the answer to a read below `from`.
pub async fn dump(client: &mut Client, from: i64, to: i64) -> BTreeMap<i64, Vec<Kv>> {
    let mut out = BTreeMap::new();
    for rev in from..=to {
        let response = client
            .get(
                vec![0u8],
                Some(GetOptions::new().with_from_key().with_revision(rev)),
            )
            .await
            .unwrap_or_else(|e| panic!("range at revision {rev}: {e}"));
        out.insert(rev, response.kvs().iter().map(Kv::of).collect());
    }
    out
}

/// The error a range at `rev` gets (the compaction error below the compacted revision).
pub async fn range_error(client: &mut Client, rev: i64) -> String {
    match client
        .get(
            vec![0u8],
            Some(GetOptions::new().with_from_key().with_revision(rev)),
        )
        .await
    {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

/// The events a watch of every key from `start` replays, up to revision `last`.
pub async fn replay(client: &mut Client, start: i64, last: i64) -> Vec<Ev> {
    let mut stream = client
        .watch(
            vec![0u8],
            Some(
                WatchOptions::new()
                    .with_from_key()
                    .with_start_revision(start)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while events.last().is_none_or(|e: &Ev| e.revision() < last) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("replay from {start} did not reach {last} in 30 s"))
            .expect("watch stream")
            .expect("watch stream open");
        events.extend(message.events().iter().map(Ev::of));
    }
    events
}

/// (granted TTL, attached keys) of a lease.
pub async fn lease_state(client: &mut Client, id: i64) -> (i64, Vec<String>) {
    let ttl = crate::lease::time_to_live(client, id, true).await;
    (ttl.granted_ttl, ttl.keys)
}
