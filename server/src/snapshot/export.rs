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
    for bucket in [
        etcd::BUCKET_ALARM,
        etcd::BUCKET_AUTH,
        etcd::BUCKET_AUTH_ROLES,
        etcd::BUCKET_AUTH_USERS,
    ] {
        out.begin_bucket(bucket)?;
        if bucket == etcd::BUCKET_AUTH {
            // What a fresh etcd 3.4 holds: auth disabled (no `authEnabled`), auth revision 1.
            out.put(etcd::AUTH_REVISION_KEY, &1u64.to_be_bytes())?;
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
