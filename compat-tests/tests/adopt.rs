//! Adopting an etcd data dir in place (issue 10): keelson started with the flags etcd ran with,
//! on the data dir the real etcd left (stopped, killed, or written by the real `etcdctl
//! snapshot restore`), serves etcd's data with the same revisions, leases, compaction and IDs,
//! leaves etcd's files untouched (so etcd can start on them again), does not import twice, and
//! refuses a log it cannot read instead of losing anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use compat_tests::ops::run_until_exit;
use compat_tests::snapshot::{
    assert_success, dump, etcdctl_offline, lease_state, range_error, write_history, RestoreFlags,
};
use compat_tests::{etcdctl, Cluster, OutputExt, Server, ServerKind, ServerOptions};
use etcd_client::Client;

/// Rounds of the written history (each is 8 to 10 revisions).
const ROUNDS: usize = 16;
/// Acknowledged writes the load test waits for before it stops etcd.
const LOAD_ACKS: usize = 400;
const WRITERS: usize = 4;
/// The longest one put may take before a writer stops (etcd is gone).
const PUT_TIMEOUT: Duration = Duration::from_secs(3);

fn require_keelson() -> bool {
    // These tests move a data dir from etcd to keelson; with COMPAT_SERVER=etcd there is
    // nothing to compare.
    ServerKind::from_env() == ServerKind::Keelson && ServerKind::Etcd.is_available()
}

/// Every file under `root` (etcd's `member/`): size, modification time and content.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u64, SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let path = entry.path();
            let meta = entry.metadata().expect("metadata");
            let relative = path.strip_prefix(root).expect("under root").to_path_buf();
            if meta.is_dir() {
                pending.push(path);
            } else {
                let content =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                let modified = meta.modified().expect("modification time");
                out.insert(relative, (meta.len(), modified, content));
            }
        }
    }
    out
}

/// (cluster ID, member ID) as a response header shows them.
async fn ids(client: &mut Client) -> (u64, u64) {
    let response = client.get("/", None).await.expect("get");
    let header = response.header().expect("a response header");
    (header.cluster_id(), header.member_id())
}

async fn hash_kv(client: &mut Client, revision: i64) -> (u32, i64) {
    let response = client.hash_kv(revision).await.expect("hash_kv");
    (response.hash(), response.compact_version())
}

/// The real `etcdctl snapshot restore`, then keelson started on the restored dir with the
/// same flags: the history etcd had, revision by revision, with its leases and compaction.
#[tokio::test]
async fn keelson_starts_on_a_dir_restored_by_etcdctl() {
    if !require_keelson() {
        return;
    }
    let mut etcd = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let mut source = etcd.client().await;
    let history = write_history(&mut source, ROUNDS).await;
    let files = tempfile::tempdir().expect("temporary directory");
    let file = files.path().join("etcd.db");
    let out = etcdctl(&etcd, &["snapshot", "save", &file.display().to_string()]).await;
    assert_success(&out, "etcdctl snapshot save");

    let restored_dir = files.path().to_path_buf();
    let snapshot = file.clone();
    let cluster = Cluster::start_tweaked(
        ServerOptions::new(ServerKind::Keelson),
        1,
        move |_, options| {
            let flags = RestoreFlags::of(options);
            let data_dir = restored_dir.join("restored");
            assert_success(
                &etcdctl_offline(&flags.args(&snapshot, &data_dir)),
                "etcdctl snapshot restore",
            );
            options.data_dir = Some(data_dir);
        },
    )
    .await;
    let mut adopted = cluster.client().await;

    let from = history.compacted;
    assert_eq!(
        dump(&mut adopted, from, history.last).await,
        dump(&mut source, from, history.last).await,
        "every key at every revision from {from} to {}",
        history.last
    );
    assert_eq!(
        range_error(&mut adopted, from - 1).await,
        range_error(&mut source, from - 1).await,
        "a range below the compacted revision"
    );
    for &lease in &history.leases {
        assert_eq!(
            lease_state(&mut adopted, lease).await,
            lease_state(&mut source, lease).await,
            "lease {lease:x}"
        );
    }
    assert!(
        files.path().join("restored/keelson").is_dir(),
        "keelson's store goes beside etcd's files"
    );
    etcd.stop();
}

/// What concurrent writers got acknowledged: key, value, revision.
type Acks = Arc<Mutex<Vec<(String, String, i64)>>>;

/// Starts `WRITERS` writers against `server`; each records what was acknowledged and stops at
/// its first failure (the server is gone).
async fn start_writers(server: &Server) -> (Acks, Vec<tokio::task::JoinHandle<()>>) {
    let acks: Acks = Arc::default();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let mut client = server.client().await;
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/load/w{writer}/k{}", i % 50);
                let value = format!("w{writer}-{i}");
                let put =
                    tokio::time::timeout(PUT_TIMEOUT, client.put(key.clone(), value.clone(), None))
                        .await;
                match put {
                    Ok(Ok(response)) => {
                        let revision = response.header().expect("header").revision();
                        acks.lock().expect("acks").push((key, value, revision));
                    }
                    _ => return,
                }
            }
        }));
    }
    (acks, tasks)
}

async fn wait_for_acks(acks: &Acks, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if acks.lock().expect("acks").len() >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writers got fewer than {count} acknowledgements in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// etcd stopped (SIGTERM or SIGKILL) under write load, then keelson on its data dir with the
/// same flags: every acknowledged write with the revision etcd acknowledged, the same IDs, a
/// revision that continues, and the same HashKV as etcd itself computes on the same dir.
async fn adopt_after_stop(kill: bool) {
    let mut server = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let mut client = server.client().await;
    let etcd_ids = ids(&mut client).await;
    let (acks, writers) = start_writers(&server).await;
    wait_for_acks(&acks, LOAD_ACKS).await;
    if kill {
        server.kill();
    } else {
        server.stop();
    }
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("writers stop once etcd is gone")
            .expect("writer task");
    }
    let acks = acks.lock().expect("acks").clone();

    server.set_kind(ServerKind::Keelson);
    server.restart().await;
    let mut client = server.client().await;
    assert_eq!(ids(&mut client).await, etcd_ids, "cluster and member IDs");
    // A read shows the newest acknowledged write of each key, or a later one that was in
    // flight when etcd stopped (written, just not acknowledged yet).
    let mut newest: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for (key, value, revision) in &acks {
        if newest.get(key).is_none_or(|(_, r)| r < revision) {
            newest.insert(key.clone(), (value.clone(), *revision));
        }
    }
    for (key, (value, revision)) in &newest {
        let got = client.get(key.as_str(), None).await.expect("get");
        let kv = &got.kvs()[0];
        assert!(
            kv.mod_revision() >= *revision,
            "{key} lost its write at {revision}"
        );
        if kv.mod_revision() == *revision {
            assert_eq!(kv.value_str().expect("utf-8"), value, "{key}");
        }
    }
    // Every acknowledged write, at the revision etcd acknowledged it with.
    for (key, value, revision) in &acks {
        let got = client
            .get(
                key.as_str(),
                Some(etcd_client::GetOptions::new().with_revision(*revision)),
            )
            .await
            .expect("get at a revision");
        assert_eq!(
            got.kvs()[0].value_str().expect("utf-8"),
            value,
            "{key}@{revision}"
        );
        assert_eq!(got.kvs()[0].mod_revision(), *revision);
    }
    let last_acked = acks
        .iter()
        .map(|a| a.2)
        .max()
        .expect("writes were acknowledged");
    let adopted_revision = compat_tests::kv::current_revision(&mut client).await;
    assert!(adopted_revision >= last_acked);
    let keelson_hash = hash_kv(&mut client, adopted_revision).await;
    let next = client
        .put("/after", "adoption", None)
        .await
        .expect("put on keelson");
    assert_eq!(
        next.header().expect("header").revision(),
        adopted_revision + 1,
        "revisions continue from etcd's"
    );
    drop(client);

    // etcd on the same dir (its files untouched) computes the same history.
    server.stop();
    std::fs::rename(
        server.data_dir().join("keelson"),
        server.dir().join("keelson-set-aside"),
    )
    .expect("set keelson's store aside");
    server.set_kind(ServerKind::Etcd);
    server.restart().await;
    let mut etcd = server.client().await;
    assert_eq!(
        compat_tests::kv::current_revision(&mut etcd).await,
        adopted_revision,
        "etcd replays its own log to the revision keelson adopted"
    );
    assert_eq!(
        hash_kv(&mut etcd, adopted_revision).await,
        keelson_hash,
        "HashKV at the adopted revision"
    );
}

#[tokio::test]
async fn etcd_killed_under_load_is_adopted_with_every_acknowledged_write() {
    if require_keelson() {
        adopt_after_stop(true).await;
    }
}

#[tokio::test]
async fn etcd_stopped_under_load_is_adopted_with_every_acknowledged_write() {
    if require_keelson() {
        adopt_after_stop(false).await;
    }
}

/// kubeadm's etcd static pod flags (without TLS): etcd, then keelson with the same argv, a
/// restart of keelson (no second import), then etcd again, which finds its data as it was.
#[tokio::test]
async fn kubeadm_swaps_the_image_and_back() {
    if !require_keelson() {
        return;
    }
    let options = ServerOptions::new(ServerKind::Etcd)
        .kubeadm_style()
        .with_http_client_url()
        .with_metrics_url()
        .arg("--snapshot-count=10000");
    let mut server = Server::start(options).await;
    let mut client = server.client().await;
    let history = write_history(&mut client, ROUNDS).await;
    let etcd_dump = dump(&mut client, history.compacted, history.last).await;
    let etcd_ids = ids(&mut client).await;
    drop(client);
    server.stop();
    let member = server.data_dir().join("member");
    let etcd_files = tree(&member);

    server.set_kind(ServerKind::Keelson);
    server.restart().await;
    assert!(
        server.log_text().contains("adopted etcd's data dir"),
        "{}",
        server.log_text()
    );
    let mut client = server.client().await;
    assert_eq!(ids(&mut client).await, etcd_ids, "cluster and member IDs");
    assert_eq!(
        dump(&mut client, history.compacted, history.last).await,
        etcd_dump,
        "etcd's history on keelson"
    );
    let members = etcdctl(&server, &["member", "list"]).await.stdout_text();
    assert!(
        members.contains(&format!("{:x}", etcd_ids.1)) && members.contains(server.name()),
        "{members}"
    );
    drop(client);

    server.stop();
    server.restart().await;
    let log = server.log_text();
    assert!(
        !log.contains("adopted etcd's data dir") && log.contains("adopted earlier"),
        "a restart must use the import, not redo it:\n{log}"
    );
    let mut client = server.client().await;
    assert_eq!(
        dump(&mut client, history.compacted, history.last).await,
        etcd_dump,
        "after a restart of keelson"
    );
    drop(client);
    server.stop();
    assert_eq!(tree(&member), etcd_files, "keelson changed etcd's files");

    server.set_kind(ServerKind::Etcd);
    server.restart().await;
    let mut client = server.client().await;
    assert_eq!(
        dump(&mut client, history.compacted, history.last).await,
        etcd_dump,
        "etcd on its own files again"
    );
    drop(client);
    server.stop();

    // etcd ran again: the earlier import is stale, and keelson says so rather than serve it.
    server.set_kind(ServerKind::Keelson);
    let output = run_until_exit(ServerKind::Keelson, &server.member_args(), &[]).await;
    assert!(!output.status.success(), "keelson served a stale import");
    let text = output.stderr_text();
    assert!(
        text.contains("etcd's files changed since keelson imported them"),
        "{text}"
    );
}

/// A byte flipped in the middle of etcd's log: a clear refusal naming the file, and etcd's
/// files unchanged, no half-made store.
#[tokio::test]
async fn a_corrupt_wal_is_refused_and_left_untouched() {
    if !require_keelson() {
        return;
    }
    let mut server = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let mut client = server.client().await;
    client
        .put("/marker", "flip-this-value-in-the-log", None)
        .await
        .expect("put");
    for i in 0..20 {
        client
            .put(format!("/after/{i}"), "x", None)
            .await
            .expect("put");
    }
    drop(client);
    server.stop();
    let data = server.data_dir();
    let wal_dir = data.join("member/wal");
    let wal = std::fs::read_dir(&wal_dir)
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .expect("a .wal file");
    let mut bytes = std::fs::read(&wal).expect("read the wal");
    let needle = b"flip-this-value-in-the-log";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the value is in the log");
    bytes[at + 5] ^= 0x01;
    std::fs::write(&wal, &bytes).expect("write the wal back");
    let before = tree(&data);

    let output = run_until_exit(ServerKind::Keelson, &server.member_args(), &[]).await;
    assert!(!output.status.success(), "keelson started on a corrupt log");
    let text = output.stderr_text();
    for expected in [
        "CRC mismatch",
        &wal.display().to_string(),
        "etcd's files were left unchanged",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert_eq!(tree(&data), before, "keelson changed the dir");
    assert!(!data.join("keelson").exists() && !data.join("keelson.adopting").exists());
}

/// etcd with auth on, killed right after its last auth changes and writes (still only in its
/// log, most likely): keelson serves the same users, passwords, roles and permissions.
#[tokio::test]
async fn etcd_auth_is_adopted_with_its_passwords_and_permissions() {
    if !require_keelson() {
        return;
    }
    let mut server = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let steps: [&[&str]; 8] = [
        &["user", "add", "root:rootpw"],
        &["role", "add", "pods"],
        &[
            "role",
            "grant-permission",
            "pods",
            "readwrite",
            "/pods/",
            "--prefix",
        ],
        &["user", "add", "alice:alicepw"],
        &["user", "grant-role", "alice", "pods"],
        &["auth", "enable"],
        &[
            "--user",
            "alice:alicepw",
            "put",
            "/pods/a",
            "written-by-alice",
        ],
        &["--user", "root:rootpw", "user", "add", "bob:bobpw"],
    ];
    for step in steps {
        let out = etcdctl(&server, step).await;
        assert!(
            out.status.success(),
            "etcdctl {step:?}: {}",
            out.stderr_text()
        );
    }
    server.kill();
    server.set_kind(ServerKind::Keelson);
    server.restart().await;
    let log = server.log_text();
    let adopted = log
        .lines()
        .find(|l| l.contains("adopted etcd's data dir"))
        .unwrap_or_else(|| panic!("no adoption in the log:\n{log}"));
    eprintln!("{adopted}");

    let alice = etcdctl(
        &server,
        &[
            "--user",
            "alice:alicepw",
            "get",
            "/pods/a",
            "--print-value-only",
        ],
    )
    .await;
    assert_eq!(
        alice.stdout_text().trim(),
        "written-by-alice",
        "{}",
        alice.stderr_text()
    );
    let bob = etcdctl(&server, &["--user", "bob:bobpw", "get", "/pods/a"]).await;
    assert!(
        !bob.status.success() && bob.stderr_text().contains("permission denied"),
        "bob has no role: {}",
        bob.stderr_text()
    );
    let wrong = etcdctl(&server, &["--user", "alice:wrong", "get", "/pods/a"]).await;
    assert!(
        wrong.stderr_text().contains("authentication failed"),
        "{}",
        wrong.stderr_text()
    );
    let anonymous = etcdctl(&server, &["put", "/pods/b", "x"]).await;
    assert!(!anonymous.status.success(), "auth stays enabled");
}

/// Once the move is final the operator may delete etcd's files: keelson keeps running on the
/// store it adopted (and a part of them left behind is a change it refuses to guess about).
#[tokio::test]
async fn etcds_files_can_be_removed_after_the_move() {
    if !require_keelson() {
        return;
    }
    let mut server = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let mut client = server.client().await;
    client.put("/kept", "from etcd", None).await.expect("put");
    drop(client);
    server.stop();
    server.set_kind(ServerKind::Keelson);
    server.restart().await;
    let mut client = server.client().await;
    client.put("/later", "on keelson", None).await.expect("put");
    drop(client);
    server.stop();

    let member = server.data_dir().join("member");
    std::fs::remove_dir_all(member.join("wal")).expect("remove etcd's log");
    let output = run_until_exit(ServerKind::Keelson, &server.member_args(), &[]).await;
    assert!(!output.status.success(), "a part of etcd's files is left");
    let text = output.stderr_text();
    assert!(text.contains("etcd's files changed"), "{text}");

    std::fs::remove_dir_all(&member).expect("remove the rest of etcd's files");
    server.restart().await;
    let mut client = server.client().await;
    for (key, value) in [("/kept", "from etcd"), ("/later", "on keelson")] {
        let got = client.get(key, None).await.expect("get");
        assert_eq!(got.kvs()[0].value_str().expect("utf-8"), value, "{key}");
    }
}

/// keelson started while etcd still runs on the dir (a container that has not stopped yet):
/// refused, nothing imported, etcd unaffected.
#[tokio::test]
async fn a_running_etcd_is_not_adopted() {
    if !require_keelson() {
        return;
    }
    let server = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let mut client = server.client().await;
    client.put("/k", "v", None).await.expect("put");
    let output = run_until_exit(ServerKind::Keelson, &server.member_args(), &[]).await;
    assert!(
        !output.status.success(),
        "keelson adopted a running etcd's dir"
    );
    let text = output.stderr_text();
    assert!(text.contains("etcd is still running on it"), "{text}");
    assert!(
        !server.data_dir().join("keelson").exists(),
        "nothing imported"
    );
    client
        .put("/k2", "v2", None)
        .await
        .expect("etcd still serves");
}

/// etcd that took raft snapshots (`member/snap/*.snap`, read for its membership): adopted with
/// its data, IDs and member list.
#[tokio::test]
async fn etcd_with_raft_snapshots_is_adopted() {
    if !require_keelson() {
        return;
    }
    let options = ServerOptions::new(ServerKind::Etcd).args(["--snapshot-count", "20"]);
    let mut server = Server::start(options).await;
    let mut client = server.client().await;
    let history = write_history(&mut client, 8).await;
    let etcd_dump = dump(&mut client, history.compacted, history.last).await;
    let etcd_ids = ids(&mut client).await;
    let etcd_members = etcdctl(&server, &["member", "list", "-w", "json"])
        .await
        .stdout_text();
    drop(client);
    server.stop();
    let snaps = std::fs::read_dir(server.data_dir().join("member/snap"))
        .expect("etcd's snap dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "snap"))
        })
        .count();
    assert!(snaps > 0, "etcd took no raft snapshot");

    server.set_kind(ServerKind::Keelson);
    server.restart().await;
    let mut client = server.client().await;
    assert_eq!(ids(&mut client).await, etcd_ids);
    assert_eq!(
        dump(&mut client, history.compacted, history.last).await,
        etcd_dump
    );
    let members = etcdctl(&server, &["member", "list", "-w", "json"])
        .await
        .stdout_text();
    let names_and_urls = |text: &str| {
        let value: serde_json::Value = serde_json::from_str(text).expect("member list json");
        value["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| {
                (
                    m["ID"].as_u64(),
                    m["name"].clone(),
                    m["peerURLs"].clone(),
                    m["clientURLs"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(names_and_urls(&members), names_and_urls(&etcd_members));
}

/// A member of a cluster of three: refused (which of its last entries the cluster committed is
/// known only to the cluster), naming the members, and its files unchanged.
#[tokio::test]
async fn a_member_of_a_larger_etcd_cluster_is_refused() {
    if !require_keelson() {
        return;
    }
    let mut cluster = Cluster::start_with(ServerOptions::new(ServerKind::Etcd), 3).await;
    let mut client = cluster.client().await;
    client.put("/k", "v", None).await.expect("put");
    drop(client);
    for member in &mut cluster.members {
        member.stop();
    }
    let member = &cluster.members[0];
    let before = tree(&member.data_dir());
    let output = run_until_exit(ServerKind::Keelson, &member.member_args(), &[]).await;
    assert!(
        !output.status.success(),
        "keelson adopted one member of three"
    );
    let text = output.stderr_text();
    assert!(
        text.contains("it belongs to a cluster of 3 members")
            && text.contains("migrate with a snapshot"),
        "{text}"
    );
    assert_eq!(tree(&member.data_dir()), before, "etcd's files changed");
}

/// etcd killed right after a compaction (most likely still only in its log): the replayed
/// compaction is done on the import, which is closed before it is moved into place, and
/// keelson serves the compacted revision as etcd does after its own restart.
#[tokio::test]
async fn a_compaction_in_etcds_log_is_replayed() {
    if !require_keelson() {
        return;
    }
    let mut server = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let mut client = server.client().await;
    for i in 0..50 {
        client
            .put(format!("/c/{}", i % 5), format!("v{i}"), None)
            .await
            .expect("put");
    }
    let compacted = compat_tests::kv::current_revision(&mut client).await - 10;
    client
        .compact(
            compacted,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
    let after = client.put("/c/after", "x", None).await.expect("put");
    let last = after.header().expect("header").revision();
    drop(client);
    server.kill();
    server.set_kind(ServerKind::Keelson);
    server.restart().await;
    let mut client = server.client().await;
    assert!(
        range_error(&mut client, compacted - 1)
            .await
            .contains("compacted"),
        "below the compacted revision"
    );
    let at = client
        .get(
            "/c/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_revision(compacted),
            ),
        )
        .await
        .expect("the compacted revision is readable");
    assert_eq!(at.kvs().len(), 5);
    assert_eq!(compat_tests::kv::current_revision(&mut client).await, last);
    let log = server.log_text();
    eprintln!(
        "{}",
        log.lines()
            .find(|l| l.contains("adopted etcd's data dir"))
            .unwrap_or("")
    );
}
