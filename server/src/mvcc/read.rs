//! Reading the versions visible at a revision, and etcd's Range semantics on top of them.

use std::cmp::Ordering;

use bytes::Bytes;
use rocksdb::DBRawIterator;

use super::keys::{self, Revision};
use super::record::Record;
use crate::error::{EtcdError, EtcdResult};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::proto::mvccpb::KeyValue;
use crate::storage::{Storage, StorageError, CF_KV};

/// The keys a request names: `range_end` empty is one key, `"\0"` is every key >= `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    Single(Bytes),
    Span { start: Bytes, end: Option<Bytes> },
}

impl KeyRange {
    pub fn new(key: &Bytes, range_end: &Bytes) -> Self {
        match range_end.as_ref() {
            [] => KeyRange::Single(key.clone()),
            [0] => KeyRange::Span {
                start: key.clone(),
                end: None,
            },
            _ => KeyRange::Span {
                start: key.clone(),
                end: Some(range_end.clone()),
            },
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k.as_ref() == key,
            KeyRange::Span { start, end } => {
                key >= start.as_ref() && end.as_ref().is_none_or(|e| key < e.as_ref())
            }
        }
    }

    /// The smallest and (exclusive) largest user key, for overlap checks.
    pub fn bounds(&self) -> (&[u8], Option<Vec<u8>>) {
        match self {
            KeyRange::Single(k) => {
                let mut end = k.to_vec();
                end.push(0);
                (k.as_ref(), Some(end))
            }
            KeyRange::Span { start, end } => (start.as_ref(), end.as_ref().map(|e| e.to_vec())),
        }
    }
}

/// One visible version, either still encoded (from disk) or already decoded (from a txn overlay).
pub enum Visible<'a> {
    Encoded {
        version_key: &'a [u8],
        record: &'a [u8],
    },
    Decoded(&'a KeyValue),
}

impl Visible<'_> {
    pub fn to_key_value(&self) -> EtcdResult<KeyValue> {
        match self {
            Visible::Encoded {
                version_key,
                record,
            } => {
                let (key, rev) = keys::decode_version_key(version_key)
                    .ok_or_else(|| StorageError::Corrupt("unreadable version key".into()))?;
                Record::decode(record)?
                    .into_key_value(key, rev.main)
                    .ok_or_else(|| EtcdError::Internal("tombstone is not visible".into()))
            }
            Visible::Decoded(kv) => Ok((*kv).clone()),
        }
    }
}

/// Something that can list the live keys of a range at a revision.
pub trait KvSource {
    /// The newest revision this source can read.
    fn current_revision(&self) -> i64;
    /// Visits live versions in key order; the visitor returns false to stop.
    fn visit(
        &mut self,
        range: &KeyRange,
        at: i64,
        visitor: &mut dyn FnMut(Visible<'_>) -> EtcdResult<bool>,
    ) -> EtcdResult<()>;
}

/// A raw iterator over the kv column family bounded to `range`.
pub fn kv_iterator<'a>(storage: &'a Storage, range: &KeyRange) -> DBRawIterator<'a> {
    let mut opts = match range {
        KeyRange::Single(_) => crate::storage::single_key_options(),
        KeyRange::Span { .. } => crate::storage::scan_options(),
    };
    let upper = match range {
        KeyRange::Single(k) => Some(keys::after_versions_of(&keys::versions_start(k))),
        KeyRange::Span { end, .. } => end.as_ref().map(|e| keys::upper_bound(e)),
    };
    if let Some(upper) = upper {
        opts.set_iterate_upper_bound(upper);
    }
    storage.db().raw_iterator_cf_opt(storage.cf(CF_KV), opts)
}

/// Walks `iter` over `range`, handing each key's version visible at `at` (if live) to `visitor`.
pub fn scan_visible(
    iter: &mut DBRawIterator<'_>,
    range: &KeyRange,
    at: i64,
    visitor: &mut dyn FnMut(Visible<'_>) -> EtcdResult<bool>,
) -> EtcdResult<()> {
    match range {
        KeyRange::Single(k) => {
            iter.seek(keys::visible_at(k, at));
            if let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                if !Record::is_tombstone(value) {
                    visitor(Visible::Encoded {
                        version_key: key,
                        record: value,
                    })?;
                }
            }
            iter.status()?;
            return Ok(());
        }
        KeyRange::Span { start, .. } => iter.seek(keys::lower_bound(start)),
    }
    while iter.valid() {
        let Some(key) = iter.key() else { break };
        let part = keys::user_key_part(key).to_vec();
        if keys::revision_of(key).main > at {
            iter.seek(keys::seek_visible(&part, at));
            match iter.key() {
                Some(k) if keys::user_key_part(k) == part.as_slice() => {}
                _ => continue,
            }
        }
        if let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if !Record::is_tombstone(value) {
                let more = visitor(Visible::Encoded {
                    version_key: key,
                    record: value,
                })?;
                if !more {
                    return Ok(());
                }
            }
        }
        skip_older_versions(iter, &part);
    }
    iter.status()?;
    Ok(())
}

/// Moves past the remaining versions of the key `part`: a few steps, then a seek.
fn skip_older_versions(iter: &mut DBRawIterator<'_>, part: &[u8]) {
    for _ in 0..4 {
        iter.next();
        match iter.key() {
            Some(k) if keys::user_key_part(k) == part => {}
            _ => return,
        }
    }
    iter.seek(keys::after_versions_of(part));
}

/// etcd's Range: limit, count, more, revision filters, sorting, keys_only, count_only.
pub fn execute_range(source: &mut dyn KvSource, req: &RangeRequest) -> EtcdResult<RangeResponse> {
    let current = source.current_revision();
    if req.revision > current {
        return Err(EtcdError::FutureRevision);
    }
    let at = if req.revision <= 0 {
        current
    } else {
        req.revision
    };
    let range = KeyRange::new(&req.key, &req.range_end);
    // As etcd: only an explicit sort order fetches every match; a non-key target with order
    // NONE sorts just the first `limit + 1` keys.
    let needs_every_match = req.sort_order() != SortOrder::None
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let collect_limit = match (needs_every_match, req.limit > 0) {
        (false, true) => Some(req.limit as usize + 1),
        _ => None,
    };

    let mut count = 0i64;
    let mut kvs = Vec::new();
    source.visit(&range, at, &mut |visible| {
        count += 1;
        if !req.count_only && collect_limit.is_none_or(|l| kvs.len() < l) {
            kvs.push(visible.to_key_value()?);
        }
        Ok(true)
    })?;

    kvs.retain(|kv| passes_revision_filters(req, kv));
    let sort_order = effective_sort_order(req);
    if sort_order != SortOrder::None {
        sort_key_values(&mut kvs, req.sort_target(), sort_order);
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Bytes::new();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: current,
            ..Default::default()
        }),
        kvs,
        more,
        count,
    })
}

fn effective_sort_order(req: &RangeRequest) -> SortOrder {
    let order = req.sort_order();
    if order == SortOrder::None && req.sort_target() != SortTarget::Key {
        // Results already ascend by key; any other target implies an ascending sort.
        return SortOrder::Ascend;
    }
    order
}

fn passes_revision_filters(req: &RangeRequest, kv: &KeyValue) -> bool {
    !(req.max_mod_revision != 0 && kv.mod_revision > req.max_mod_revision
        || req.min_mod_revision != 0 && kv.mod_revision < req.min_mod_revision
        || req.max_create_revision != 0 && kv.create_revision > req.max_create_revision
        || req.min_create_revision != 0 && kv.create_revision < req.min_create_revision)
}

fn sort_key_values(kvs: &mut [KeyValue], target: SortTarget, order: SortOrder) {
    let compare = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| compare(b, a)),
        _ => kvs.sort_by(compare),
    }
}

/// The newest version of one key at or below `at`, or `None` if it has none or it is deleted.
pub fn latest_version(storage: &Storage, key: &Bytes, at: i64) -> EtcdResult<Option<KeyValue>> {
    let range = KeyRange::Single(key.clone());
    let mut iter = kv_iterator(storage, &range);
    let mut found = None;
    scan_visible(&mut iter, &range, at, &mut |v| {
        found = Some(v.to_key_value()?);
        Ok(false)
    })?;
    Ok(found)
}

/// The revision of the version of `key` that is visible at `at`, tombstones included.
pub fn visible_revision(storage: &Storage, key: &[u8], at: i64) -> EtcdResult<Option<Revision>> {
    let range = KeyRange::Single(Bytes::copy_from_slice(key));
    let mut iter = kv_iterator(storage, &range);
    iter.seek(keys::visible_at(key, at));
    iter.status()?;
    Ok(iter.key().map(keys::revision_of))
}
