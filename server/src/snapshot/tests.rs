//! Auth state through an export and a restore: etcd's buckets in between, the auth store's keys
//! on both sides.

use std::collections::BTreeMap;
use std::fs::File;

use bytes::Bytes;
use prost::Message;
use rocksdb::WriteBatch;

use super::bbolt::BoltReader;
use super::etcd;
use super::export::write_backend;
use super::restore::{self, RestoreOptions, RestoredAuth};
use crate::auth::{KEY_ENABLED, KEY_REVISION, ROLE_PREFIX, USER_PREFIX};
use crate::proto::authpb::{permission, Permission, Role, User, UserAddOptions};
use crate::storage::{Storage, CF_META};

fn user(name: &str, hash: &str, roles: &[&str]) -> User {
    User {
        name: Bytes::from(name.to_string()),
        password: Bytes::from(hash.to_string()),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        options: Some(UserAddOptions { no_password: false }),
    }
}

fn role(name: &str, prefix: &str) -> Role {
    Role {
        name: Bytes::from(name.to_string()),
        key_permission: vec![Permission {
            perm_type: permission::Type::Readwrite as i32,
            key: Bytes::from(prefix.to_string()),
            range_end: Bytes::from(format!("{}0", prefix.trim_end_matches('/'))),
        }],
    }
}

fn bucket(reader: &BoltReader, name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    reader
        .bucket(name)
        .expect("bucket readable")
        .map(|b| {
            b.map(|e| {
                let e = e.expect("entry readable");
                (e.key, e.value)
            })
            .collect()
        })
        .unwrap_or_default()
}

/// The `auth/` keys of a store, in key order.
fn auth_keys(storage: &Storage) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut iter = storage.db().raw_iterator_cf(storage.cf(CF_META));
    iter.seek(crate::auth::PREFIX);
    while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
        if !k.starts_with(crate::auth::PREFIX) {
            break;
        }
        out.push((k.to_vec(), v.to_vec()));
        iter.next();
    }
    out
}

#[test]
fn auth_state_travels_as_etcds_buckets_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Storage::open(&dir.path().join("source")).expect("open source");
    let root = user("root", "$2a$10$roothash", &["root"]);
    let alice = user("alice", "$2a$10$alicehash", &["app"]);
    let app = role("app", "/app/");
    let root_role = Role {
        name: Bytes::from_static(b"root"),
        key_permission: Vec::new(),
    };
    let meta = source.cf(CF_META);
    let mut batch = WriteBatch::default();
    batch.put_cf(meta, KEY_ENABLED, [1]);
    batch.put_cf(meta, KEY_REVISION, 7u64.to_be_bytes());
    batch.put_cf(meta, [USER_PREFIX, b"root"].concat(), root.encode_to_vec());
    batch.put_cf(
        meta,
        [USER_PREFIX, b"alice"].concat(),
        alice.encode_to_vec(),
    );
    batch.put_cf(
        meta,
        [ROLE_PREFIX, b"root"].concat(),
        root_role.encode_to_vec(),
    );
    batch.put_cf(meta, [ROLE_PREFIX, b"app"].concat(), app.encode_to_vec());
    source.write(batch).expect("write auth");
    let before = auth_keys(&source);

    let file = dir.path().join("snap.db");
    write_backend(&source, &file).expect("export");
    let len = std::fs::metadata(&file).expect("stat").len();
    let reader = BoltReader::new(File::open(&file).expect("open file"), len).expect("bolt");
    // etcd's encodings: the switch is the byte 1, the revision 8 bytes big-endian.
    assert_eq!(
        bucket(&reader, etcd::BUCKET_AUTH),
        vec![
            (etcd::AUTH_ENABLED_KEY.to_vec(), vec![1]),
            (
                etcd::AUTH_REVISION_KEY.to_vec(),
                7u64.to_be_bytes().to_vec()
            ),
        ]
    );
    assert_eq!(
        bucket(&reader, etcd::BUCKET_AUTH_USERS),
        vec![
            (b"alice".to_vec(), alice.encode_to_vec()),
            (b"root".to_vec(), root.encode_to_vec()),
        ]
    );
    assert_eq!(
        bucket(&reader, etcd::BUCKET_AUTH_ROLES),
        vec![
            (b"app".to_vec(), app.encode_to_vec()),
            (b"root".to_vec(), root_role.encode_to_vec()),
        ]
    );
    drop(reader);
    drop(source);

    let data_dir = dir.path().join("restored");
    // write_backend leaves out the trailer `Maintenance.Snapshot` appends: the options skip
    // the hash check.
    let done = restore::run(&restore_options(file, data_dir.clone())).expect("restore");
    assert_eq!(
        done.auth,
        RestoredAuth {
            enabled: true,
            revision: 7,
            users: 2,
            roles: 2
        }
    );
    let restored = Storage::open(&data_dir.join("member").join("db")).expect("open restored");
    assert_eq!(auth_keys(&restored), before);
}

#[test]
fn a_store_that_never_touched_auth_exports_etcds_initial_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Storage::open(&dir.path().join("source")).expect("open source");
    let file = dir.path().join("snap.db");
    write_backend(&source, &file).expect("export");
    let len = std::fs::metadata(&file).expect("stat").len();
    let reader = BoltReader::new(File::open(&file).expect("open file"), len).expect("bolt");
    assert_eq!(
        bucket(&reader, etcd::BUCKET_AUTH),
        vec![(
            etcd::AUTH_REVISION_KEY.to_vec(),
            1u64.to_be_bytes().to_vec()
        )]
    );
    assert!(bucket(&reader, etcd::BUCKET_AUTH_USERS).is_empty());
    assert!(bucket(&reader, etcd::BUCKET_AUTH_ROLES).is_empty());
}

fn restore_options(file: std::path::PathBuf, data_dir: std::path::PathBuf) -> RestoreOptions {
    let url = "http://127.0.0.1:2380".to_string();
    RestoreOptions {
        file,
        data_dir,
        name: "m1".into(),
        initial_cluster: BTreeMap::from([("m1".to_string(), vec![url.clone()])]),
        initial_cluster_token: "t".into(),
        initial_advertise_peer_urls: vec![url],
        skip_hash_check: true,
        wal_dir: None,
    }
}

/// A file holding one bad auth record: its name, bucket, key, value, and the error expected.
type BadAuthCase = (
    &'static str,
    &'static [u8],
    &'static [u8],
    &'static [u8],
    &'static str,
);

#[test]
fn unreadable_auth_records_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A store whose user record is not an authpb.User: the export refuses it.
    let source = Storage::open(&dir.path().join("source")).expect("open source");
    let mut batch = WriteBatch::default();
    batch.put_cf(
        source.cf(CF_META),
        [USER_PREFIX, b"bad"].concat(),
        [0xff, 0xff, 0xff],
    );
    source.write(batch).expect("write");
    let err = write_backend(&source, &dir.path().join("bad-store.db"))
        .expect_err("a corrupt user fails the export");
    assert!(err.to_string().contains("unreadable user"), "{err}");

    // Files with a short auth revision, or a user or role that is not protobuf.
    let cases: [BadAuthCase; 3] = [
        (
            "revision",
            etcd::BUCKET_AUTH,
            etcd::AUTH_REVISION_KEY,
            &[1, 2, 3],
            "auth revision",
        ),
        (
            "user",
            etcd::BUCKET_AUTH_USERS,
            b"u",
            &[0xff, 0xff],
            "unreadable user",
        ),
        (
            "role",
            etcd::BUCKET_AUTH_ROLES,
            b"r",
            &[0xff, 0xff],
            "unreadable role",
        ),
    ];
    for (name, bucket_name, key, value, expected) in cases {
        let file = dir.path().join(format!("{name}.db"));
        let mut writer = super::bbolt::BoltWriter::create(&file).expect("create");
        writer.begin_bucket(bucket_name).expect("bucket");
        writer.put(key, value).expect("put");
        writer.finish().expect("finish");
        let data_dir = dir.path().join(format!("{name}.restored"));
        let err = restore::run(&restore_options(file, data_dir.clone()))
            .expect_err("a bad auth record fails the restore");
        assert!(err.to_string().contains(expected), "{name}: {err}");
        assert!(!data_dir.exists(), "{name}: a data dir was left");
    }
}
