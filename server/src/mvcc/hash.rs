//! HashKV: etcd's CRC-32C over its key bucket, computed over keelson's versions encoded as etcd
//! stores them, so that every member at the same revision gives the same hash (and a store
//! restored from etcd gives etcd's).
//!
//! etcd walks its key bucket in revision order up to the asked revision: keys are the
//! revision's 17 bytes (main, `_`, sub; a trailing `t` marks a tombstone), values are the
//! `mvccpb.KeyValue` (a tombstone's holds only the key). At or below the compacted revision it
//! counts only what etcd 3.4's index `Keep` set holds, so that a member whose physical
//! compaction is still running hashes the same as one where it finished. etcd 3.4.23 builds
//! that set at the asked revision, not at the compacted one: a version at or below the
//! compacted revision counts only if it is still the newest live version of its key at the
//! asked revision. When no key is live there the set is empty and etcd skips nothing, which
//! means every version its compaction kept (the newest live one of each key at the compacted
//! revision). keelson follows both rules, so that a store restored from etcd's snapshot
//! hashes as etcd does (docs/migration.md checks a migration with `endpoint hashkv`).

use prost::Message;
use rocksdb::ReadOptions;

use super::keys::{self, Revision};
use super::read::visible_revision;
use super::record::Record;
use crate::error::{EtcdError, EtcdResult};
use crate::proto::mvccpb::KeyValue;
use crate::storage::{Storage, StorageError, CF_KV, CF_REV};

/// etcd's key bucket name, hashed first.
const KEY_BUCKET: &[u8] = b"key";

/// etcd's key of a revision in its key bucket.
fn etcd_revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    out.extend_from_slice(&(rev.main as u64).to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        out.push(b't');
    }
    out
}

/// The hash of every version at or below `at`, given the compacted revision; `keep_at` is the
/// revision at which versions at or below the compacted one must still be the newest to count
/// (`at` when a key is live at `at`, else `compacted`: see the module's comment).
pub fn hash_kv(storage: &Storage, at: i64, compacted: i64, keep_at: i64) -> EtcdResult<u32> {
    let snapshot = storage.db().snapshot();
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&snapshot);
    opts.set_iterate_upper_bound(Revision::new(at + 1, 0).index_key().to_vec());
    let mut changes = storage.db().raw_iterator_cf_opt(storage.cf(CF_REV), opts);
    let mut kv_opts = ReadOptions::default();
    kv_opts.set_snapshot(&snapshot);
    changes.seek_to_first();
    let mut crc = crc32c::crc32c(KEY_BUCKET);
    while let (Some(index_key), Some(user_key)) = (changes.key(), changes.value()) {
        let rev = Revision::from_index_key(index_key)
            .ok_or_else(|| StorageError::Corrupt("unreadable revision index key".into()))?;
        let version_key = keys::version_key(user_key, rev);
        let raw = storage
            .db()
            .get_cf_opt(storage.cf(CF_KV), &version_key, &kv_opts)
            .map_err(StorageError::from)?;
        // A version removed by compaction between the two reads: nothing to hash.
        let Some(raw) = raw else {
            changes.next();
            continue;
        };
        let record = Record::decode(&raw)?;
        let tombstone = matches!(record, Record::Tombstone);
        if rev.main <= compacted {
            let kept = !tombstone
                && visible_revision(storage, user_key, keep_at)?.is_some_and(|v| v == rev);
            if !kept {
                changes.next();
                continue;
            }
        }
        let key = bytes::Bytes::copy_from_slice(user_key);
        let value = match record {
            Record::Tombstone => KeyValue {
                key,
                ..Default::default()
            },
            put => put
                .into_key_value(key, rev.main)
                .ok_or_else(|| EtcdError::Internal("unexpected tombstone".into()))?,
        };
        crc = crc32c::crc32c_append(crc, &etcd_revision_key(rev, tombstone));
        crc = crc32c::crc32c_append(crc, &value.encode_to_vec());
        changes.next();
    }
    changes.status().map_err(StorageError::from)?;
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_are_etcds() {
        let key = etcd_revision_key(Revision::new(2, 1), false);
        assert_eq!(key, [0, 0, 0, 0, 0, 0, 0, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            etcd_revision_key(Revision::new(2, 1), true).last(),
            Some(&b't')
        );
    }
}
