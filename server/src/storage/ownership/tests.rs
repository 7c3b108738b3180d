use std::fs;
use std::path::Path;

use super::*;
use crate::storage::Storage;

fn touch(path: &Path) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent");
    }
    fs::write(path, b"x").expect("write file");
}

/// A data dir as the current keelson leaves it: a RocksDB store with keelson's column
/// families and a snapshot directory, and no marker (as before the marker existed).
fn keelson_store_without_marker(data: &Path) {
    drop(Storage::open(&data.join("member/db")).expect("open the store"));
    touch(&data.join("member/snap/CURRENT"));
    touch(
        &data
            .join("member/snap/0000000000000002-0000000000002711")
            .join("keelson-snapshot.json"),
    );
}

fn marker(data: &Path) -> Marker {
    let raw = fs::read(data.join("member").join(MARKER)).expect("the marker exists");
    serde_json::from_slice(&raw).expect("the marker is JSON")
}

#[test]
fn missing_empty_and_lost_found_only_dirs_are_claimed() {
    let root = tempfile::tempdir().expect("tempdir");
    let missing = root.path().join("missing");
    claim(&missing, None).expect("a missing dir is fresh");
    assert_eq!(marker(&missing).wal_dir, None);

    let empty = root.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    claim(&empty, None).expect("an empty dir is fresh");

    let pvc = root.path().join("pvc");
    fs::create_dir_all(pvc.join("lost+found")).expect("mkdir");
    claim(&pvc, None).expect("a fresh volume's root is fresh");
    assert!(pvc.join("lost+found").is_dir(), "left alone");

    // Claimed once, claimed again: the marker is enough.
    claim(&pvc, None).expect("keelson's own dir");
}

#[test]
fn a_keelson_dir_without_marker_is_recognised_and_adopted() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    keelson_store_without_marker(&data);
    touch(&data.join("fixtures/client/cert.pem"));
    claim(&data, None).expect("keelson's own dir");
    assert_eq!(
        marker(&data),
        Marker {
            format: FORMAT,
            wal_dir: None
        }
    );
}

#[test]
fn etcds_layout_is_refused_with_what_was_found() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("etcd");
    touch(&data.join("member/snap/db"));
    touch(&data.join("member/snap/0000000000000002-0000000000002711.snap"));
    touch(&data.join("member/wal/0000000000000000-0000000000000000.wal"));
    touch(&data.join("member/wal/0.tmp"));
    let err = claim(&data, None).expect_err("etcd's data");
    let text = err.to_string();
    assert!(matches!(err, OwnershipError::EtcdData { .. }), "{text}");
    for found in [
        "member/snap/db",
        "member/snap/0000000000000002-0000000000002711.snap",
        "member/wal/0000000000000000-0000000000000000.wal",
    ] {
        assert!(text.contains(found), "{text}");
    }
    assert!(text.contains("etcdctl snapshot save"), "{text}");
    assert!(text.contains("--data-dir"), "{text}");
    assert!(
        !data.join("member").join(MARKER).exists(),
        "nothing is written into etcd's dir"
    );
}

#[test]
fn unknown_content_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    for (name, stray, named) in [
        ("top", "notes.txt", "notes.txt"),
        ("member", "member/something", "member/something"),
        ("snap", "member/snap/other", "member/snap/other"),
        ("db", "member/db/README", "member/db (not a RocksDB store)"),
    ] {
        let data = root.path().join(name);
        touch(&data.join(stray));
        let err = claim(&data, None).expect_err(stray);
        assert!(
            matches!(err, OwnershipError::Unrecognised { .. }),
            "{stray}: {err}"
        );
        assert!(err.to_string().contains(named), "{err}");
    }
    // Another program's RocksDB store.
    let data = root.path().join("other-rocksdb");
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    drop(rocksdb::DB::open_cf(&opts, data.join("member/db"), ["users"]).expect("another store"));
    let err = claim(&data, None).expect_err("not keelson's store");
    assert!(err.to_string().contains("users"), "{err}");
}

#[test]
fn the_wal_dir_is_recorded_and_must_stay_the_same() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let wal = root.path().join("wal");
    claim(&data, Some(&wal)).expect("fresh");
    assert_eq!(marker(&data).wal_dir, Some(wal.clone()));
    assert!(wal.join(WAL_MARKER).is_file());
    touch(&wal.join("000004.log"));
    claim(&data, Some(&wal)).expect("the same WAL dir");

    let err = claim(&data, None).expect_err("the WAL dir left out");
    assert!(matches!(err, OwnershipError::WalDirChanged { .. }), "{err}");
    let elsewhere = root.path().join("wal2");
    let err = claim(&data, Some(&elsewhere)).expect_err("another WAL dir");
    assert!(matches!(err, OwnershipError::WalDirChanged { .. }), "{err}");

    // A store made without --wal-dir keeps its WAL inside: adding --wal-dir would lose it.
    let legacy = root.path().join("legacy");
    keelson_store_without_marker(&legacy);
    let err = claim(&legacy, Some(&root.path().join("legacy-wal"))).expect_err("new WAL dir");
    assert!(matches!(err, OwnershipError::WalDirChanged { .. }), "{err}");

    // One WAL dir for two data dirs would mix their logs.
    let other = root.path().join("other");
    let err = claim(&other, Some(&wal)).expect_err("a WAL dir in use");
    assert!(matches!(err, OwnershipError::WalDirTaken { .. }), "{err}");

    for bad in [
        data.clone(),
        data.join("member"),
        data.join("member/db/wal"),
    ] {
        let err = claim(&data, Some(&bad)).expect_err("not a dir of its own");
        assert!(matches!(err, OwnershipError::WalDirInvalid(_)), "{err}");
    }
}

#[test]
fn etcds_wal_dir_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let wal = root.path().join("wal");
    touch(&wal.join("0000000000000000-0000000000000000.wal"));
    let err = claim(&data, Some(&wal)).expect_err("etcd's WAL");
    assert!(matches!(err, OwnershipError::EtcdData { .. }), "{err}");
    assert!(err.to_string().contains(".wal"), "{err}");

    // etcd's own default place, given explicitly: inspected as the WAL dir.
    let data = root.path().join("data2");
    let wal = data.join("member/wal");
    touch(&wal.join("0000000000000000-0000000000000000.wal"));
    let err = claim(&data, Some(&wal)).expect_err("etcd's WAL");
    assert!(matches!(err, OwnershipError::EtcdData { .. }), "{err}");

    let data = root.path().join("data3");
    let wal = root.path().join("wal3");
    touch(&wal.join("notes.txt"));
    let err = claim(&data, Some(&wal)).expect_err("unknown content");
    assert!(matches!(err, OwnershipError::Unrecognised { .. }), "{err}");
}

#[test]
fn a_newer_format_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    claim(&data, None).expect("fresh");
    fs::write(
        data.join("member").join(MARKER),
        br#"{"format": 99, "wal_dir": null}"#,
    )
    .expect("write");
    let err = claim(&data, None).expect_err("newer");
    assert!(
        matches!(err, OwnershipError::NewerFormat { found: 99, .. }),
        "{err}"
    );
}
