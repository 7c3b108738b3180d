//! etcd 3.4's backend schema: bucket names and the encodings of what they hold.
//!
//! - `key`: revision key `main (u64 BE) ++ '_' ++ sub (u64 BE)`, plus `'t'` for a tombstone;
//!   value an `mvccpb.KeyValue` (a tombstone's holds the key alone);
//! - `meta`: `consistent_index` (u64 BE), `scheduledCompactRev` and `finishedCompactRev`
//!   (revision keys with sub 0);
//! - `lease`: lease ID (u64 BE) -> `leasepb.Lease {ID, TTL, RemainingTTL}`;
//! - `cluster`: `clusterVersion` -> "3.4.0"; `members`, `members_removed`, `alarm`, `auth*`.

use prost::Message;

use crate::mvcc::Revision;

pub const BUCKET_ALARM: &[u8] = b"alarm";
pub const BUCKET_AUTH: &[u8] = b"auth";
pub const BUCKET_AUTH_ROLES: &[u8] = b"authRoles";
pub const BUCKET_AUTH_USERS: &[u8] = b"authUsers";
pub const BUCKET_CLUSTER: &[u8] = b"cluster";
pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_LEASE: &[u8] = b"lease";
pub const BUCKET_MEMBERS: &[u8] = b"members";
pub const BUCKET_MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const BUCKET_META: &[u8] = b"meta";

pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
pub const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
pub const CLUSTER_VERSION_KEY: &[u8] = b"clusterVersion";
/// The cluster version a keelson snapshot declares (keelson speaks etcd 3.4's API).
pub const CLUSTER_VERSION: &[u8] = b"3.4.0";
pub const AUTH_REVISION_KEY: &[u8] = b"authRevision";
pub const AUTH_ENABLED_KEY: &[u8] = b"authEnabled";

const REVISION_KEY_LEN: usize = 17;
const TOMBSTONE_MARK: u8 = b't';

/// etcd's leasepb.Lease.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// The remaining TTL recorded by a checkpoint; 0 when none.
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// The `key` bucket's key for a change at `rev`.
pub fn revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(REVISION_KEY_LEN + 1);
    out.extend_from_slice(&(rev.main as u64).to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        out.push(TOMBSTONE_MARK);
    }
    out
}

/// Decodes a `key` bucket key: the revision and whether it is a tombstone.
pub fn parse_revision_key(key: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match key.len() {
        REVISION_KEY_LEN => false,
        n if n == REVISION_KEY_LEN + 1 && key[REVISION_KEY_LEN] == TOMBSTONE_MARK => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(key[..8].try_into().ok()?);
    let sub = u64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((Revision::new(main as i64, sub as i64), tombstone))
}

/// The value of `scheduledCompactRev` / `finishedCompactRev`.
pub fn compact_value(main: i64) -> Vec<u8> {
    revision_key(Revision::new(main, 0), false)
}

pub fn parse_compact_value(value: &[u8]) -> Option<i64> {
    parse_revision_key(value).map(|(rev, _)| rev.main)
}

pub fn encode_lease(record: &LeaseRecord) -> Vec<u8> {
    record.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_sort_by_revision_and_round_trip() {
        let a = revision_key(Revision::new(5, 1), false);
        let b = revision_key(Revision::new(5, 2), true);
        let c = revision_key(Revision::new(256, 0), false);
        assert!(a < b && b < c);
        assert_eq!(parse_revision_key(&b), Some((Revision::new(5, 2), true)));
        assert_eq!(parse_revision_key(&c), Some((Revision::new(256, 0), false)));
        assert_eq!(parse_revision_key(b"short"), None);
        assert_eq!(parse_compact_value(&compact_value(9)), Some(9));
    }

    #[test]
    fn lease_encoding_is_etcds() {
        // leasepb.Lease{ID: 1, TTL: 10} as etcd marshals it.
        let record = LeaseRecord {
            id: 1,
            ttl: 10,
            remaining_ttl: 0,
        };
        assert_eq!(encode_lease(&record), vec![0x08, 0x01, 0x10, 0x0a]);
    }
}
