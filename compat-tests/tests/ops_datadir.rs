//! Whose data dir is it? keelson adopts a complete etcd data dir (tests/adopt.rs) but must
//! refuse to start on a part of one (and on anything else it does not recognise) instead of
//! serving an empty store beside it, and must leave such a dir untouched; empty dirs, a fresh
//! volume's `lost+found` and its own dirs start as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use compat_tests::ops::{isolated_flags, run_until_exit};
use compat_tests::{OutputExt, Server, ServerKind, ServerOptions};

/// Every file and directory under `root`: size, modification time and content.
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
            let modified = meta.modified().expect("modification time");
            let relative = path.strip_prefix(root).expect("under root").to_path_buf();
            if meta.is_dir() {
                out.insert(relative, (0, modified, Vec::new()));
                pending.push(path);
            } else {
                let content =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                out.insert(relative, (meta.len(), modified, content));
            }
        }
    }
    out
}

fn require_keelson() -> bool {
    // These tests are about keelson's start-up checks; etcd would happily use its own dir.
    ServerKind::from_env() == ServerKind::Keelson
}

/// A complete etcd data dir is adopted (tests/adopt.rs); a part of one (here the log without
/// the bbolt file, as a botched copy leaves it) is refused rather than served as an empty store.
#[tokio::test]
async fn a_partial_etcd_data_dir_is_refused_and_left_untouched() {
    if !require_keelson() {
        return;
    }
    let mut etcd = Server::start(ServerOptions::new(ServerKind::Etcd)).await;
    let mut client = etcd.client().await;
    client
        .put("/registry/pods/default/web", "etcd's data", None)
        .await
        .expect("put into etcd");
    drop(client);
    etcd.kill();
    let data = etcd.data_dir();
    std::fs::remove_file(data.join("member/snap/db")).expect("remove etcd's bbolt file");
    let before = tree(&data);

    let output = run_until_exit(ServerKind::Keelson, &isolated_flags(etcd.dir()), &[]).await;

    assert!(
        !output.status.success(),
        "keelson started on a part of etcd's data dir; stderr:\n{}",
        output.stderr_text()
    );
    let text = output.stderr_text();
    for expected in [
        "holds an etcd data directory",
        "member/wal/",
        "member/snap/db",
        "etcdctl snapshot save",
        "--data-dir",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(
        !text.contains("ready to serve client requests"),
        "it must not serve: {text}"
    );
    assert_eq!(tree(&data), before, "keelson changed etcd's files");
}

#[tokio::test]
async fn a_data_dir_with_a_stray_file_is_refused_by_name() {
    if !require_keelson() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("create the data dir");
    std::fs::write(data.join("backup-2024.tar"), b"something").expect("write a stray file");

    let output = run_until_exit(ServerKind::Keelson, &isolated_flags(dir.path()), &[]).await;

    assert!(
        !output.status.success(),
        "keelson started beside a stray file"
    );
    let text = output.stderr_text();
    assert!(
        text.contains("does not recognise") && text.contains("backup-2024.tar"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(&data).expect("read").count(),
        1,
        "nothing was added to the dir"
    );
}

#[tokio::test]
async fn empty_and_fresh_volume_dirs_start_and_keelsons_own_dir_restarts() {
    if !require_keelson() {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");

    // An existing, empty data dir.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("create");
    let mut server = Server::start(ServerOptions::from_env().data_dir(&empty)).await;
    server
        .client()
        .await
        .put("k", "v1", None)
        .await
        .expect("put");
    // Restarted on its own data: the key is there.
    server.restart().await;
    let mut client = server.client().await;
    let got = client.get("k", None).await.expect("get after restart");
    assert_eq!(got.kvs()[0].value(), b"v1");
    drop(server);

    // The root of a freshly formatted volume (a Kubernetes PersistentVolume): lost+found.
    let volume = dir.path().join("volume");
    std::fs::create_dir_all(volume.join("lost+found")).expect("create lost+found");
    let server = Server::start(ServerOptions::from_env().data_dir(&volume)).await;
    server
        .client()
        .await
        .put("k", "v", None)
        .await
        .expect("put");
    assert!(volume.join("lost+found").is_dir(), "lost+found left alone");
}
