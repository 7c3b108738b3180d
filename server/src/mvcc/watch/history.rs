//! Reading past events from storage, in revision order, for watchers catching up.

use bytes::Bytes;
use rocksdb::ReadOptions;

use crate::error::{EtcdError, EtcdResult};
use crate::mvcc::keys::{self, Revision};
use crate::mvcc::record::Record;
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::{Event, KeyValue};
use crate::storage::{Storage, StorageError, CF_KV, CF_REV};

/// The events of consecutive revisions, each revision whole.
#[derive(Debug, Default)]
pub struct History {
    pub revisions: Vec<(i64, Vec<Event>)>,
    /// Every revision up to here was read (some may have had no events).
    pub read_through: i64,
}

/// Reads events of revisions `from..=to`, stopping at a revision boundary once about
/// `byte_budget` bytes were read. Fails with `Compacted` if `from` is below `compacted()` once
/// the read view is pinned.
pub fn read(
    storage: &Storage,
    from: i64,
    to: i64,
    byte_budget: usize,
    compacted: &dyn Fn() -> i64,
) -> EtcdResult<History> {
    let mut history = History {
        revisions: Vec::new(),
        read_through: from - 1,
    };
    if from > to {
        return Ok(history);
    }
    let snapshot = storage.db().snapshot();
    if from < compacted() {
        return Err(EtcdError::Compacted);
    }
    let mut rev_opts = ReadOptions::default();
    rev_opts.set_snapshot(&snapshot);
    rev_opts.set_iterate_upper_bound(Revision::new(to + 1, 0).index_key().to_vec());
    let mut changes = storage
        .db()
        .raw_iterator_cf_opt(storage.cf(CF_REV), rev_opts);
    let mut kv_opts = crate::storage::scan_options();
    kv_opts.set_snapshot(&snapshot);
    let mut versions = storage.db().raw_iterator_cf_opt(storage.cf(CF_KV), kv_opts);

    changes.seek(Revision::new(from, 0).index_key());
    let mut bytes_read = 0usize;
    let mut stopped_before = None;
    while let (Some(index_key), Some(user_key)) = (changes.key(), changes.value()) {
        let rev = Revision::from_index_key(index_key)
            .ok_or_else(|| StorageError::Corrupt("unreadable revision index key".into()))?;
        let starts_new_revision = history.revisions.last().is_none_or(|(r, _)| *r != rev.main);
        if starts_new_revision {
            if bytes_read >= byte_budget {
                stopped_before = Some(rev.main);
                break;
            }
            history.revisions.push((rev.main, Vec::new()));
        }
        let user_key = Bytes::copy_from_slice(user_key);
        if let Some(event) = event_at(&mut versions, &user_key, rev)? {
            bytes_read += event_size(&event);
            if let Some((_, events)) = history.revisions.last_mut() {
                events.push(event);
            }
        }
        changes.next();
    }
    changes.status()?;
    // Whole revisions only: stopping early means everything before the next one was read.
    history.read_through = stopped_before.map_or(to, |next| next - 1);
    Ok(history)
}

fn event_size(event: &Event) -> usize {
    let kv = event
        .kv
        .as_ref()
        .map_or(0, |kv| kv.key.len() + kv.value.len());
    let prev = event
        .prev_kv
        .as_ref()
        .map_or(0, |kv| kv.key.len() + kv.value.len());
    kv + prev + 64
}

/// The event of the change to `user_key` at `rev`, with the version it replaced.
fn event_at(
    versions: &mut rocksdb::DBRawIterator<'_>,
    user_key: &Bytes,
    rev: Revision,
) -> EtcdResult<Option<Event>> {
    let target = keys::version_key(user_key, rev);
    versions.seek(&target);
    let record = match (versions.key(), versions.value()) {
        (Some(k), Some(v)) if k == target.as_slice() => Record::decode(v)?,
        // Removed by a compaction that raced this read; the caller's check covers it.
        _ => return Ok(None),
    };
    let part = keys::user_key_part(&target).to_vec();
    versions.next();
    let prev_kv = match (versions.key(), versions.value()) {
        (Some(k), Some(v)) if keys::user_key_part(k) == part.as_slice() => {
            Record::decode(v)?.into_key_value(user_key.clone(), keys::revision_of(k).main)
        }
        _ => None,
    };
    versions.status()?;
    let event = match record {
        Record::Put { .. } => Event {
            r#type: EventType::Put as i32,
            kv: record.into_key_value(user_key.clone(), rev.main),
            prev_kv,
        },
        Record::Tombstone => Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: user_key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            }),
            prev_kv,
        },
    };
    Ok(Some(event))
}
