//! Writes the state machine, as one RocksDB snapshot sees it, as etcd's backend file.
//!
//! The `key` bucket is etcd's revision log: the `rev` column family walked in revision order,
//! each change's record fetched from `kv` at the same snapshot. Everything streams into the
//! bbolt writer, so memory stays a few pages whatever the store's size, and writes go on while
//! the file is written (the snapshot pins the data it reads, nothing is locked).

use std::path::Path;

use prost::Message;
use rocksdb::{ReadOptions, SnapshotWithThreadMode, DB};

use super::bbolt::BoltWriter;
use super::etcd::{self, LeaseRecord};
use super::SnapshotError;
use crate::mvcc::keys::version_key;
use crate::mvcc::record::Record;
use crate::mvcc::{Revision, META_COMPACT_FINISHED, META_COMPACT_SCHEDULED, META_CURRENT_REVISION};
use crate::proto::mvccpb::KeyValue;
use crate::storage::{scan_options, Storage, CF_KV, CF_LEASE, CF_META, CF_REV};

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// The store's revision at the snapshot.
    pub revision: i64,
    /// Pairs in the `key` bucket.
    pub changes: u64,
    pub leases: u64,
}

struct View<'a> {
    storage: &'a Storage,
    snapshot: SnapshotWithThreadMode<'a, DB>,
}

impl View<'_> {
    fn options(&self) -> ReadOptions {
        let mut opts = scan_options();
        opts.set_snapshot(&self.snapshot);
        opts
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        Ok(self
            .storage
            .db()
            .get_cf_opt(self.storage.cf(CF_META), key, &self.options())?)
    }

    fn meta_i64(&self, key: &[u8]) -> Result<Option<i64>, SnapshotError> {
        match self.meta(key)? {
            None => Ok(None),
            Some(raw) => {
                let bytes: [u8; 8] = raw.as_slice().try_into().map_err(|_| {
                    SnapshotError::Store(format!(
                        "meta {} is not an i64",
                        String::from_utf8_lossy(key)
                    ))
                })?;
                Ok(Some(i64::from_be_bytes(bytes)))
            }
        }
    }
}

/// Where an export goes: etcd's buckets in name order, each bucket's pairs in key order.
pub trait BackendSink {
    fn begin_bucket(&mut self, name: &[u8]) -> Result<(), SnapshotError>;
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError>;
}

impl BackendSink for BoltWriter {
    fn begin_bucket(&mut self, name: &[u8]) -> Result<(), SnapshotError> {
        Ok(BoltWriter::begin_bucket(self, name)?)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        Ok(BoltWriter::put(self, key, value)?)
    }
}

/// etcd's `Hash` of a backend: CRC-32C over every bucket's name, then its keys and values,
/// leaving out `meta`'s `consistent_index` (etcd's DefaultIgnores).
#[derive(Default)]
pub struct HashSink {
    crc: u32,
    in_meta: bool,
}

impl HashSink {
    pub fn hash(&self) -> u32 {
        self.crc
    }
}

impl BackendSink for HashSink {
    fn begin_bucket(&mut self, name: &[u8]) -> Result<(), SnapshotError> {
        self.crc = crc32c::crc32c_append(self.crc, name);
        self.in_meta = name == etcd::BUCKET_META;
        Ok(())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        if !(self.in_meta && key == etcd::META_CONSISTENT_INDEX) {
            self.crc = crc32c::crc32c_append(self.crc, key);
            self.crc = crc32c::crc32c_append(self.crc, value);
        }
        Ok(())
    }
}

/// Writes etcd's backend file for the current state of `storage` to `path` (fsynced).
pub fn write_backend(storage: &Storage, path: &Path) -> Result<Exported, SnapshotError> {
    let mut out = BoltWriter::create(path)?;
    let exported = export(storage, &mut out)?;
    out.finish()?;
    Ok(exported)
}

/// etcd's Hash of what `write_backend` would write, and the revision it is at.
pub fn backend_hash(storage: &Storage) -> Result<(u32, i64), SnapshotError> {
    let mut sink = HashSink::default();
    let exported = export(storage, &mut sink)?;
    Ok((sink.hash(), exported.revision))
}

/// Sends the state of `storage`, as one RocksDB snapshot sees it, to `out` as etcd's buckets.
pub fn export(storage: &Storage, out: &mut dyn BackendSink) -> Result<Exported, SnapshotError> {
    let view = View {
        storage,
        snapshot: storage.db().snapshot(),
    };
    let auth = read_auth(&view)?;
    out.begin_bucket(etcd::BUCKET_ALARM)?;
    for key in read_alarms(&view)? {
        out.put(&key, &[])?;
    }
    for (bucket, pairs) in [
        (etcd::BUCKET_AUTH, &auth.settings),
        (etcd::BUCKET_AUTH_ROLES, &auth.roles),
        (etcd::BUCKET_AUTH_USERS, &auth.users),
    ] {
        out.begin_bucket(bucket)?;
        for (key, value) in pairs {
            out.put(key, value)?;
        }
    }
    out.begin_bucket(etcd::BUCKET_CLUSTER)?;
    out.put(etcd::CLUSTER_VERSION_KEY, etcd::CLUSTER_VERSION)?;
    out.begin_bucket(etcd::BUCKET_KEY)?;
    let changes = write_changes(&view, out)?;
    out.begin_bucket(etcd::BUCKET_LEASE)?;
    let leases = write_leases(&view, out)?;
    // Membership is not carried: a restore (etcd's or keelson's) gives the cluster a new one.
    out.begin_bucket(etcd::BUCKET_MEMBERS)?;
    out.begin_bucket(etcd::BUCKET_MEMBERS_REMOVED)?;
    out.begin_bucket(etcd::BUCKET_META)?;
    let applied = view
        .meta(crate::raft::META_APPLIED)?
        .and_then(|raw| crate::raft::applied_index(&raw))
        .unwrap_or(0);
    out.put(etcd::META_CONSISTENT_INDEX, &applied.to_be_bytes())?;
    let finished = view.meta_i64(META_COMPACT_FINISHED)?.unwrap_or(-1);
    let scheduled = view.meta_i64(META_COMPACT_SCHEDULED)?.unwrap_or(-1);
    if finished > 0 {
        out.put(etcd::META_FINISHED_COMPACT, &etcd::compact_value(finished))?;
    }
    if scheduled > 0 {
        out.put(
            etcd::META_SCHEDULED_COMPACT,
            &etcd::compact_value(scheduled),
        )?;
    }
    Ok(Exported {
        revision: view.meta_i64(META_CURRENT_REVISION)?.unwrap_or(1),
        changes,
        leases,
    })
}

/// etcd's three auth buckets, each in key order.
struct AuthBuckets {
    /// `authEnabled` (when the switch was ever set) and `authRevision`.
    settings: Vec<(Vec<u8>, Vec<u8>)>,
    /// User name -> authpb.User (its bcrypt hash in `password`).
    users: Vec<(Vec<u8>, Vec<u8>)>,
    /// Role name -> authpb.Role.
    roles: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The auth store's `auth/` keys in `meta`, as etcd 3.4's buckets. The auth store keeps users
/// and roles in etcd's own encoding, so their values pass through once checked readable (a
/// corrupt record fails the export rather than giving etcd a file it cannot load). Auth data is
/// a few records per user and role, so it is gathered before writing.
/// The raised alarms as etcd keeps them: each an encoded `AlarmMember` key with no value, in
/// key order (etcd's restore and start read them back from the `alarm` bucket).
fn read_alarms(view: &View<'_>) -> Result<Vec<Vec<u8>>, SnapshotError> {
    use crate::member::alarms::{decode_key, KEY_PREFIX};
    use crate::proto::etcdserverpb::AlarmMember;
    let mut keys = Vec::new();
    let mut iter = view
        .storage
        .db()
        .raw_iterator_cf_opt(view.storage.cf(CF_META), view.options());
    iter.seek(KEY_PREFIX);
    while let Some(key) = iter.key().filter(|k| k.starts_with(KEY_PREFIX)) {
        let (member_id, alarm) =
            decode_key(key).ok_or_else(|| SnapshotError::Store("unreadable alarm key".into()))?;
        keys.push(AlarmMember { member_id, alarm }.encode_to_vec());
        iter.next();
    }
    iter.status()?;
    keys.sort();
    Ok(keys)
}

fn read_auth(view: &View<'_>) -> Result<AuthBuckets, SnapshotError> {
    use crate::auth::{KEY_ENABLED, KEY_REVISION, PREFIX, ROLE_PREFIX, USER_PREFIX};
    use crate::proto::authpb::{Role, User};

    let mut enabled = None;
    // A store that never changed auth is at etcd's initial auth revision, 1.
    let mut revision = 1u64;
    let (mut users, mut roles) = (Vec::new(), Vec::new());
    let mut iter = view
        .storage
        .db()
        .raw_iterator_cf_opt(view.storage.cf(CF_META), view.options());
    iter.seek(PREFIX);
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        if !key.starts_with(PREFIX) {
            break;
        }
        if key == KEY_ENABLED {
            enabled = Some(value == [1]);
        } else if key == KEY_REVISION {
            let raw: [u8; 8] = value
                .try_into()
                .map_err(|_| SnapshotError::Store("unreadable auth revision".into()))?;
            revision = u64::from_be_bytes(raw);
        } else if let Some(name) = key.strip_prefix(USER_PREFIX) {
            User::decode(value).map_err(|e| {
                SnapshotError::Store(format!(
                    "unreadable user {:?}: {e}",
                    String::from_utf8_lossy(name)
                ))
            })?;
            users.push((name.to_vec(), value.to_vec()));
        } else if let Some(name) = key.strip_prefix(ROLE_PREFIX) {
            Role::decode(value).map_err(|e| {
                SnapshotError::Store(format!(
                    "unreadable role {:?}: {e}",
                    String::from_utf8_lossy(name)
                ))
            })?;
            roles.push((name.to_vec(), value.to_vec()));
        }
        iter.next();
    }
    iter.status()?;
    let mut settings = Vec::with_capacity(2);
    // etcd writes `authEnabled` only once auth was enabled or disabled; a store that never
    // touched the switch leaves it out too. `authEnabled` sorts before `authRevision`.
    if let Some(enabled) = enabled {
        settings.push((etcd::AUTH_ENABLED_KEY.to_vec(), vec![u8::from(enabled)]));
    }
    settings.push((
        etcd::AUTH_REVISION_KEY.to_vec(),
        revision.to_be_bytes().to_vec(),
    ));
    Ok(AuthBuckets {
        settings,
        users,
        roles,
    })
}

/// The `key` bucket: every retained change, in revision order.
fn write_changes(view: &View<'_>, out: &mut dyn BackendSink) -> Result<u64, SnapshotError> {
    let db = view.storage.db();
    let kv_cf = view.storage.cf(CF_KV);
    let mut iter = db.raw_iterator_cf_opt(view.storage.cf(CF_REV), view.options());
    iter.seek_to_first();
    let mut count = 0;
    while iter.valid() {
        let (Some(index), Some(user_key)) = (iter.key(), iter.value()) else {
            break;
        };
        let rev = Revision::from_index_key(index)
            .ok_or_else(|| SnapshotError::Store("unreadable revision index key".into()))?;
        let raw = db
            .get_pinned_cf_opt(kv_cf, version_key(user_key, rev), &view.options())?
            .ok_or_else(|| {
                SnapshotError::Store(format!("revision {rev:?} has no version record"))
            })?;
        let record = Record::decode(&raw).map_err(|e| SnapshotError::Store(e.to_string()))?;
        let (key, value) = match record {
            Record::Tombstone => (
                etcd::revision_key(rev, true),
                KeyValue {
                    key: user_key.to_vec().into(),
                    ..Default::default()
                },
            ),
            put => {
                let kv = put
                    .into_key_value(user_key.to_vec().into(), rev.main)
                    .ok_or_else(|| SnapshotError::Store("put without a value".into()))?;
                (etcd::revision_key(rev, false), kv)
            }
        };
        out.put(&key, &value.encode_to_vec())?;
        count += 1;
        iter.next();
    }
    iter.status()?;
    Ok(count)
}

/// The `lease` bucket: every lease with its TTL and checkpointed remaining TTL.
fn write_leases(view: &View<'_>, out: &mut dyn BackendSink) -> Result<u64, SnapshotError> {
    let db = view.storage.db();
    let mut iter = db.raw_iterator_cf_opt(view.storage.cf(CF_LEASE), view.options());
    iter.seek_to_first();
    let mut count = 0;
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        let id_bytes: [u8; 8] = key
            .try_into()
            .map_err(|_| SnapshotError::Store("unreadable lease key".into()))?;
        let (ttl, remaining) = crate::lease::stored_ttls(value)
            .ok_or_else(|| SnapshotError::Store("unreadable lease record".into()))?;
        let record = LeaseRecord {
            id: i64::from_be_bytes(id_bytes),
            ttl,
            remaining_ttl: remaining,
        };
        out.put(key, &etcd::encode_lease(&record))?;
        count += 1;
        iter.next();
    }
    iter.status()?;
    Ok(count)
}
