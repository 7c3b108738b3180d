//! Backups and migrations both ways (issue 10): a history of many revisions, overwrites,
//! deletes, leases and a compaction, saved with the real `etcdctl snapshot save`, restored
//! into the other server (`keelson snapshot restore` / the real `etcdctl snapshot restore`),
//! and compared revision by revision: every key at every retained revision, the compaction
//! error below, the events a watch from the oldest revision replays, and the leases. Auth
//! (users, roles, permissions, passwords, the switch) travels both ways too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use compat_tests::auth::{anon, as_root, as_user, enable_steps, run_script, Step};
use compat_tests::etcdctl::OutputExt;
use compat_tests::lease::{grant, key_exists, poll_until};
use compat_tests::snapshot::{
    assert_success, dump, etcdctl_offline, keelson, lease_state, range_error, replay,
    write_history, History, RestoreFlags,
};
use compat_tests::{etcdctl, Cluster, Server, ServerKind, ServerOptions};
use etcd_client::{Client, PutOptions};

/// Rounds of the history (each is 8 to 10 revisions).
const ROUNDS: usize = 24;

static RESTORES: AtomicUsize = AtomicUsize::new(0);

/// `etcdctl snapshot save` against `server` into `dir/name`.
async fn save(server: &Server, dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(name);
    let out = etcdctl(server, &["snapshot", "save", &file.display().to_string()]).await;
    assert!(
        out.status.success(),
        "etcdctl snapshot save against {:?}: {}",
        server.kind(),
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

/// Starts `size` members of `kind`, each on a data dir restored from `file` by that kind's
/// restore (keelson's own, or the real etcdctl's for etcd) with the member's cluster flags.
async fn restored_cluster(kind: ServerKind, file: &Path, dirs: &Path, size: usize) -> Cluster {
    let file = file.to_path_buf();
    let dirs = dirs.to_path_buf();
    Cluster::start_tweaked(ServerOptions::new(kind), size, move |_, options| {
        let flags = RestoreFlags::of(options);
        let n = RESTORES.fetch_add(1, Ordering::Relaxed);
        let data_dir = dirs.join(format!("{}-{n}", flags.name));
        let args = flags.args(&file, &data_dir);
        let out = match kind {
            ServerKind::Keelson => keelson(&args),
            ServerKind::Etcd => etcdctl_offline(&args),
        };
        assert_success(&out, &format!("{kind:?}'s snapshot restore"));
        options.data_dir = Some(data_dir);
    })
    .await
}

/// What two servers must agree on after a restore.
async fn assert_same_history(source: &mut Client, restored: &mut Client, history: &History) {
    let from = history.compacted;
    assert_eq!(
        dump(restored, from, history.last).await,
        dump(source, from, history.last).await,
        "every key at every revision from {from} to {}",
        history.last
    );
    assert_eq!(
        range_error(restored, from - 1).await,
        range_error(source, from - 1).await,
        "a range below the compacted revision"
    );
    assert_eq!(
        range_error(restored, history.last + 1).await,
        range_error(source, history.last + 1).await,
        "a range above the current revision"
    );
    assert_eq!(
        replay(restored, from + 1, history.last).await,
        replay(source, from + 1, history.last).await,
        "the events a watch from revision {} replays",
        from + 1
    );
    let hash = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            let answer = client.hash_kv(history.last).await.expect("HashKV");
            (answer.hash(), answer.compact_version())
        }
    };
    assert_eq!(
        hash(restored).await,
        hash(source).await,
        "HashKV at revision {}",
        history.last
    );
    for &lease in &history.leases {
        assert_eq!(
            lease_state(restored, lease).await,
            lease_state(source, lease).await,
            "lease {lease:x}: granted TTL and keys"
        );
    }
}

/// keelson's `snapshot status` prints what etcdctl prints, in every format.
fn assert_same_status(file: &Path) {
    for format in ["json", "table", "simple"] {
        let args: Vec<String> = vec![
            "snapshot".into(),
            "status".into(),
            file.display().to_string(),
            "-w".into(),
            format.into(),
        ];
        let theirs = assert_success(&etcdctl_offline(&args), "etcdctl snapshot status");
        let ours = assert_success(&keelson(&args), "keelson snapshot status");
        assert_eq!(ours, theirs, "snapshot status -w {format}");
    }
}

/// etcd -> keelson -> etcd: the kube-apiserver-like history comes back to etcd unchanged, and
/// keelson in the middle reads the same too; a lease restored into keelson still expires.
#[tokio::test]
async fn etcd_history_round_trips_through_keelson_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let mut source = etcd.client().await;
    let history = write_history(&mut source, ROUNDS).await;
    // Granted last, so that it is in the file but expires soon after the restore.
    let short = grant(&mut source, 3).await;
    source
        .put("/short", "s", Some(PutOptions::new().with_lease(short)))
        .await
        .expect("put with the short lease");
    let file = save(&etcd, dir.path(), "etcd.db").await;
    assert_same_status(&file);
    let cluster = restored_cluster(ServerKind::Keelson, &file, dir.path(), 1).await;
    let mut restored = cluster.client().await;
    assert_same_history(&mut source, &mut restored, &history).await;
    poll_until(
        Duration::from_secs(20),
        "the restored short lease expires",
        || {
            let mut client = restored.clone();
            async move { (!key_exists(&mut client, "/short").await).then_some(()) }
        },
    )
    .await;

    let back = save(&cluster.members[0], dir.path(), "keelson.db").await;
    let etcd_again = restored_cluster(ServerKind::Etcd, &back, dir.path(), 1).await;
    let mut again = etcd_again.client().await;
    assert_same_history(&mut source, &mut again, &history).await;
    // The restored members take writes after the restored revisions.
    let put = again
        .put("/after", "x", None)
        .await
        .expect("put after restore");
    assert!(put.header().is_some_and(|h| h.revision() > history.last));
}

#[tokio::test]
async fn keelson_history_restored_into_etcd_reads_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServerOptions::new(ServerKind::Keelson)).await;
    let mut source = server.client().await;
    let history = write_history(&mut source, ROUNDS).await;
    let file = save(&server, dir.path(), "keelson.db").await;
    assert_same_status(&file);
    let cluster = restored_cluster(ServerKind::Etcd, &file, dir.path(), 1).await;
    let mut restored = cluster.client().await;
    assert_same_history(&mut source, &mut restored, &history).await;
}

#[tokio::test]
async fn one_snapshot_restored_on_three_keelson_members_forms_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServerOptions::new(ServerKind::Keelson)).await;
    let mut source = server.client().await;
    let history = write_history(&mut source, 6).await;
    let file = save(&server, dir.path(), "keelson.db").await;
    let cluster = restored_cluster(ServerKind::Keelson, &file, dir.path(), 3).await;
    let mut client = cluster.client().await;
    client
        .put("/new", "after", None)
        .await
        .expect("put on the restored cluster");
    // etcd's Hash (of the backend) is the same on every member once they applied the same.
    let hashes = poll_until(
        Duration::from_secs(20),
        "the 3 members hash the same",
        || {
            let cluster = &cluster;
            async move {
                let mut answers = Vec::new();
                for i in 0..3 {
                    let mut member = cluster.member_client(i).await;
                    let answer = member.hash().await.ok()?;
                    let revision = answer.header().map(|h| h.revision())?;
                    answers.push((answer.hash(), revision));
                }
                answers.windows(2).all(|w| w[0] == w[1]).then_some(answers)
            }
        },
    )
    .await;
    assert!(hashes[0].1 > history.last, "{hashes:?}");
    let expected = dump(&mut source, history.compacted, history.last).await;
    for i in 0..3 {
        let mut member = cluster.member_client(i).await;
        assert_eq!(
            dump(&mut member, history.compacted, history.last).await,
            expected,
            "member {i}"
        );
    }
}

#[tokio::test]
async fn bad_snapshot_files_are_refused_and_leave_no_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServerOptions::new(ServerKind::Keelson)).await;
    let mut client = server.client().await;
    write_history(&mut client, 4).await;
    let good = std::fs::read(save(&server, dir.path(), "good.db").await).expect("read");
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    let mut wrong_hash = good.clone();
    let at = good.len() - 1;
    wrong_hash[at] ^= 0xff;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "sha256 trailer",
        ),
        ("bit-flipped", flipped, "sha256 mismatch"),
        ("wrong-hash", wrong_hash, "sha256 mismatch"),
        ("not-bbolt", vec![b'x'; 4096 + 32], "sha256 mismatch"),
        ("empty", Vec::new(), "sha256 trailer"),
    ];
    for (name, bytes, expected) in cases {
        let file = dir.path().join(format!("{name}.db"));
        std::fs::write(&file, &bytes).expect("write the bad file");
        let data_dir = dir.path().join(format!("{name}.restored"));
        let args: Vec<String> = vec![
            "snapshot".into(),
            "restore".into(),
            file.display().to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        let out = keelson(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: restore succeeded");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!data_dir.exists(), "{name}: a data dir was left behind");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".restoring-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{name}: temporary dirs left: {leftovers:?}"
        );
    }
    // With --skip-hash-check a file without a valid database is still an error, not a panic.
    let file = dir.path().join("not-bbolt.db");
    let data_dir = dir.path().join("skip.restored");
    let args: Vec<String> = vec![
        "snapshot".into(),
        "restore".into(),
        file.display().to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--skip-hash-check".into(),
    ];
    let out = keelson(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not a bbolt file"),
        "{stderr}"
    );
    assert!(!data_dir.exists());
}

/// A member serves reads and writes while a snapshot stream is open, and the stream is the
/// revision it started at: writes made meanwhile are not in it.
#[tokio::test]
async fn the_member_serves_while_a_snapshot_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServerOptions::new(ServerKind::Keelson)).await;
    let mut client = server.client().await;
    // Enough data for several 32 KiB messages.
    for i in 0..200 {
        client
            .put(format!("/big/{i:04}"), vec![b'v'; 1024], None)
            .await
            .expect("put");
    }
    let before = compat_tests::kv::current_revision(&mut client).await;
    let mut stream = client.snapshot().await.expect("open the snapshot stream");
    let timeout = Duration::from_secs(30);
    let first = tokio::time::timeout(timeout, stream.message())
        .await
        .expect("the first snapshot message within 30 s")
        .expect("snapshot stream")
        .expect("a first message");
    assert!(first.remaining_bytes() > 0, "more than one message");
    let mut bytes = first.blob().to_vec();
    // The stream is open and unread: the member still answers.
    let mut other = server.client().await;
    let put = other
        .put("/during", "x", None)
        .await
        .expect("put during the stream");
    assert!(put.header().is_some_and(|h| h.revision() == before + 1));
    assert_eq!(
        other.get("/big/0001", None).await.expect("get").kvs().len(),
        1
    );
    while let Some(message) = tokio::time::timeout(timeout, stream.message())
        .await
        .expect("the next snapshot message within 30 s")
        .expect("snapshot stream")
    {
        bytes.extend_from_slice(message.blob());
    }
    let file = dir.path().join("during.db");
    std::fs::write(&file, &bytes).expect("write the snapshot");
    let args: Vec<String> = vec![
        "snapshot".into(),
        "status".into(),
        file.display().to_string(),
        "-w".into(),
        "json".into(),
    ];
    let status: serde_json::Value = serde_json::from_str(&assert_success(
        &etcdctl_offline(&args),
        "etcdctl snapshot status",
    ))
    .expect("status JSON");
    assert_eq!(status["revision"], serde_json::json!(before), "{status}");
    let export_dir = server.data_dir().join("member").join("snap-export");
    let left: Vec<_> = std::fs::read_dir(&export_dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The user with a prefix permission in the auth migration tests.
const APP_USER: &str = "app-user:apppw";

/// root, then auth on, then a user allowed to read and write under `/app/` only.
fn auth_setup_steps() -> Vec<Step> {
    let mut steps = enable_steps();
    steps.extend([
        as_root("user add app-user --interactive=false").stdin("apppw\n"),
        as_root("role add app-role"),
        as_root("user grant-role app-user app-role"),
        as_root("role grant-permission app-role readwrite /app/ --prefix=true"),
        as_root("put /app/seed s"),
        as_root("put /other/seed s"),
    ]);
    steps
}

/// What a restored member must answer as its source does: who may write where, and the users
/// and roles as etcdctl lists them.
fn auth_check_steps() -> Vec<Step> {
    vec![
        anon("put /app/anon x"),
        anon("get /app/seed"),
        as_root("put /root-key r"),
        as_user(APP_USER, "put /app/k v"),
        as_user(APP_USER, "get /app/seed"),
        as_user(APP_USER, "put /other/k v"),
        as_user(APP_USER, "get /other/seed"),
        as_user("app-user:wrong", "get /app/seed"),
        as_root("user list"),
        as_root("role list"),
        as_root("user get app-user"),
        as_root("role get app-role"),
        as_root("role get root"),
        as_root("get /other/seed"),
    ]
}

/// Sets up auth on a `from` server, saves a snapshot as root, restores it with `to`'s own
/// restore and starts `to` on it; both then answer the same checks the same way.
async fn auth_migrates(from: ServerKind, to: ServerKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Server::start(ServerOptions::new(from)).await;
    for (step, out) in auth_setup_steps()
        .iter()
        .zip(run_script(&source, &auth_setup_steps()).await)
    {
        assert!(
            out.ends_with("--- exit Some(0)"),
            "{step:?} on {from:?}: {out}"
        );
    }
    let file = dir.path().join("auth.db");
    let saved = etcdctl(
        &source,
        &[
            "--user=root:rootpw",
            "snapshot",
            "save",
            &file.display().to_string(),
        ],
    )
    .await;
    saved.expect_success(&format!(
        "etcdctl --user root snapshot save against {from:?}"
    ));
    let restored = restored_cluster(to, &file, dir.path(), 1).await;
    let target = &restored.members[0];

    let theirs = run_script(&source, &auth_check_steps()).await;
    let ours = run_script(target, &auth_check_steps()).await;
    compat_tests::auth::assert_same_transcript(&theirs, &ours);
    // The transcripts agree; they must also say what the source enforces.
    let exit = |i: usize| ours[i].rsplit("--- exit ").next().unwrap_or("").to_string();
    assert_ne!(
        exit(0),
        "Some(0)",
        "an anonymous put is refused: {}",
        ours[0]
    );
    assert_eq!(exit(2), "Some(0)", "root writes: {}", ours[2]);
    assert_eq!(exit(3), "Some(0)", "app-user writes in /app/: {}", ours[3]);
    assert!(
        ours[5].contains("permission denied"),
        "app-user cannot write outside /app/: {}",
        ours[5]
    );
    assert!(
        ours[6].contains("permission denied"),
        "app-user cannot read outside /app/: {}",
        ours[6]
    );
    assert!(
        ours[7].contains("authentication failed"),
        "a wrong password is refused: {}",
        ours[7]
    );
    assert!(
        ours[8].contains("app-user") && ours[8].contains("root"),
        "{}",
        ours[8]
    );
}

/// etcd with auth on, saved by root, restored by keelson: the same users, passwords, roles
/// and permissions, enforced.
#[tokio::test]
async fn etcd_auth_is_restored_into_keelson() {
    auth_migrates(ServerKind::Etcd, ServerKind::Keelson).await;
}

/// keelson with auth on, saved by root, restored by the real etcdctl: etcd enforces the same.
#[tokio::test]
async fn keelson_auth_is_restored_into_etcd() {
    auth_migrates(ServerKind::Keelson, ServerKind::Etcd).await;
}

/// `snapshot restore --wal-dir W` (etcdctl's flag), then the server started with
/// `--data-dir D --wal-dir W` serves the restored history, restarts on it, and a restore into
/// an existing WAL dir is refused as etcdctl refuses it. Both servers: keelson's restore with
/// keelson, etcdctl's with etcd.
#[tokio::test]
async fn a_restore_with_a_wal_dir_starts_with_the_same_wal_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source_server = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let mut source = source_server.client().await;
    let history = write_history(&mut source, 8).await;
    let file = save(&source_server, dir.path(), "etcd.db").await;
    let kind = ServerKind::from_env();
    let wal_dir = dir.path().join("wal");
    let file_for_restore = file.clone();
    let data_root = dir.path().to_path_buf();
    let wal_for_restore = wal_dir.clone();
    let mut cluster = Cluster::start_tweaked(ServerOptions::new(kind), 1, move |_, options| {
        let flags = RestoreFlags::of(options);
        let data_dir = data_root.join("restored");
        let mut args = flags.args(&file_for_restore, &data_dir);
        args.extend(["--wal-dir".into(), wal_for_restore.display().to_string()]);
        let out = match kind {
            ServerKind::Keelson => keelson(&args),
            ServerKind::Etcd => etcdctl_offline(&args),
        };
        assert_success(&out, &format!("{kind:?}'s snapshot restore --wal-dir"));
        options.data_dir = Some(data_dir);
        options
            .extra_args
            .extend(["--wal-dir".into(), wal_for_restore.display().to_string()]);
    })
    .await;
    let mut restored = cluster.client().await;
    assert_same_history(&mut source, &mut restored, &history).await;
    assert!(
        std::fs::read_dir(&wal_dir).expect("the WAL dir").count() > 0,
        "the server's log lives in --wal-dir"
    );
    restored.put("/after", "restore", None).await.expect("put");
    drop(restored);
    cluster.members[0].restart().await;
    let mut again = cluster.client().await;
    let got = again.get("/after", None).await.expect("get");
    assert_eq!(
        got.kvs()[0].value(),
        b"restore",
        "a write survives a restart"
    );

    let flags = RestoreFlags::of(&ServerOptions {
        cluster: Some(compat_tests::server::ClusterFlags {
            initial_cluster: "m=http://127.0.0.1:2380".into(),
            state: "new".into(),
            token: "t".into(),
        }),
        ..ServerOptions::new(kind).name("m")
    });
    let mut args = flags.args(&file, &dir.path().join("second"));
    args.extend(["--wal-dir".into(), wal_dir.display().to_string()]);
    let out = match kind {
        ServerKind::Keelson => keelson(&args),
        ServerKind::Etcd => etcdctl_offline(&args),
    };
    assert!(!out.status.success(), "a restore into an existing WAL dir");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wal-dir")
            && String::from_utf8_lossy(&out.stderr).contains("exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("second").exists(), "no data dir made");
}

/// A raised alarm, as (member, type) pairs.
async fn alarms(client: &mut Client) -> Vec<(u64, i32)> {
    use etcd_client::{AlarmAction, AlarmType};
    let listed = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    listed
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm() as i32))
        .collect()
}

/// Raises NOSPACE for the member `client` talks to.
async fn raise_nospace(client: &mut Client) {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let id = client
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    let mut options = AlarmOptions::new();
    options.with_member(id);
    client
        .alarm(AlarmAction::Activate, AlarmType::Nospace, Some(options))
        .await
        .expect("raise NOSPACE");
}

/// etcd keeps its `alarm` bucket through a snapshot and a restore (a full disk stays an
/// alarm until disarmed); keelson carries alarms both ways the same.
#[tokio::test]
async fn raised_alarms_travel_in_snapshots_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (from, to) in [
        (ServerKind::Etcd, ServerKind::Keelson),
        (ServerKind::Keelson, ServerKind::Etcd),
    ] {
        let source = Server::start(ServerOptions::new(from)).await;
        let mut client = source.client().await;
        client.put("/k", "v", None).await.expect("put");
        raise_nospace(&mut client).await;
        let raised = alarms(&mut client).await;
        assert_eq!(raised.len(), 1, "{from:?} raised the alarm");
        let file = save(&source, dir.path(), &format!("{from:?}.db")).await;
        let cluster = restored_cluster(to, &file, dir.path(), 1).await;
        let mut restored = cluster.client().await;
        assert_eq!(
            alarms(&mut restored).await,
            raised,
            "{from:?} -> {to:?}: the alarm after the restore"
        );
    }
}
