//! One applied entry's changes: versions written at `begin + 1`, visible to later operations of
//! the same entry (etcd lets a txn's range see its own puts), collected in one write batch.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use rocksdb::WriteBatch;

use super::keys::{self, Revision};
use super::read::{KeyRange, KvSource, Visible};
use super::record::Record;
use super::{visit_committed, CommittedChange, MvccStore};
use crate::error::EtcdResult;
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::{Event, KeyValue};
use crate::storage::{CF_KV, CF_LEASE_KEYS, CF_REV};

pub struct WriteTxn<'s> {
    store: &'s MvccStore,
    begin: i64,
    /// A read-only txn of a client, outside the applier: it reads the published revision and
    /// never writes what the applier has staged.
    reader: bool,
    changes: u32,
    /// Keys written so far: `Some` holds the new version, `None` a deletion.
    overlay: BTreeMap<Bytes, Option<KeyValue>>,
    batch: WriteBatch,
    events: Vec<Event>,
    compaction: Option<i64>,
    /// Live keys created minus live keys deleted by this entry.
    keys_delta: i64,
}

/// A finished entry, ready for `MvccStore::commit`.
pub struct FinishedTxn {
    pub batch: WriteBatch,
    /// The revision the entry started from.
    pub begin: i64,
    pub change: Option<CommittedChange>,
    /// The newest version of every key the entry wrote (`None`: deleted).
    pub written: BTreeMap<Bytes, Option<KeyValue>>,
    pub compaction: Option<i64>,
    pub keys_delta: i64,
}

impl<'s> WriteTxn<'s> {
    /// The applier's txn for the next entry, after everything applied (and staged) so far.
    pub fn new(store: &'s MvccStore) -> Self {
        Self::starting_at(store, store.write_revision(), false)
    }

    /// A read-only txn at the published revision, for a client's read-only Txn.
    pub fn for_reading(store: &'s MvccStore) -> Self {
        Self::starting_at(store, store.current_revision(), true)
    }

    fn starting_at(store: &'s MvccStore, begin: i64, reader: bool) -> Self {
        Self {
            store,
            begin,
            reader,
            changes: 0,
            overlay: BTreeMap::new(),
            batch: WriteBatch::default(),
            events: Vec::new(),
            compaction: None,
            keys_delta: 0,
        }
    }

    pub fn store(&self) -> &'s MvccStore {
        self.store
    }

    /// The revision before this entry.
    pub fn begin_revision(&self) -> i64 {
        self.begin
    }

    /// The revision after the changes made so far.
    pub fn revision(&self) -> i64 {
        if self.changes > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }

    pub fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    /// The newest live version of `key`, including this entry's own changes.
    pub fn latest(&self, key: &Bytes) -> EtcdResult<Option<KeyValue>> {
        if let Some(change) = self.overlay.get(key) {
            return Ok(change.clone());
        }
        if self.reader {
            return self.store.get(key, self.begin);
        }
        self.store.get_for_write(key, self.begin)
    }

    fn next_revision(&mut self) -> Revision {
        let rev = Revision::new(self.begin + 1, i64::from(self.changes));
        self.changes += 1;
        rev
    }

    /// Writes a new version of `key` over `prev`, its newest version (`latest`); returns it.
    pub fn put(
        &mut self,
        key: Bytes,
        value: Bytes,
        lease: i64,
        prev: Option<KeyValue>,
    ) -> Option<KeyValue> {
        let rev = self.next_revision();
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => {
                self.keys_delta += 1;
                (rev.main, 1)
            }
        };
        let record = Record::Put {
            create_revision,
            version,
            lease,
            value: value.clone(),
        };
        self.write_version(&key, rev, &record);
        self.move_lease(&key, prev.as_ref().map_or(0, |p| p.lease), lease);
        let kv = KeyValue {
            key: key.clone(),
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        self.overlay.insert(key, Some(kv.clone()));
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        prev
    }

    /// Deletes every live key in `range`; returns the deleted pairs in key order.
    pub fn delete_range(&mut self, range: &KeyRange) -> EtcdResult<Vec<KeyValue>> {
        let mut live = Vec::new();
        let at = self.begin + 1;
        self.visit(range, at, &mut |v| {
            live.push(v.to_key_value()?);
            Ok(true)
        })?;
        self.keys_delta -= live.len() as i64;
        for prev in &live {
            let rev = self.next_revision();
            self.write_version(&prev.key, rev, &Record::Tombstone);
            self.move_lease(&prev.key, prev.lease, 0);
            self.overlay.insert(prev.key.clone(), None);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: prev.key.clone(),
                    mod_revision: rev.main,
                    ..Default::default()
                }),
                prev_kv: Some(prev.clone()),
            });
        }
        Ok(live)
    }

    fn write_version(&mut self, key: &[u8], rev: Revision, record: &Record) {
        let kv_cf = self.store.storage.cf(CF_KV);
        let rev_cf = self.store.storage.cf(CF_REV);
        self.batch
            .put_cf(kv_cf, keys::version_key(key, rev), record.encode());
        self.batch.put_cf(rev_cf, rev.index_key(), key);
    }

    fn move_lease(&mut self, key: &[u8], from: i64, to: i64) {
        if from == to {
            return;
        }
        let cf = self.store.storage.cf(CF_LEASE_KEYS);
        if from != 0 {
            self.batch.delete_cf(cf, lease_key_entry(from, key));
        }
        if to != 0 {
            self.batch.put_cf(cf, lease_key_entry(to, key), []);
        }
    }

    /// Records a compaction at `revision`; it takes effect when the entry is committed.
    pub fn schedule_compaction(&mut self, revision: i64) -> EtcdResult<()> {
        self.store.schedule_compaction(&mut self.batch, revision)?;
        self.compaction = Some(revision);
        Ok(())
    }

    /// Finishes the entry: the batch to write and, if anything changed, the new revision.
    pub fn finish(self) -> FinishedTxn {
        let change = (self.changes > 0).then(|| CommittedChange {
            revision: self.begin + 1,
            events: self.events,
        });
        FinishedTxn {
            batch: self.batch,
            begin: self.begin,
            change,
            written: self.overlay,
            compaction: self.compaction,
            keys_delta: self.keys_delta,
        }
    }

    fn overlay_touches(&self, range: &KeyRange) -> bool {
        match range {
            KeyRange::Single(k) => self.overlay.contains_key(k),
            KeyRange::Span { start, end } => {
                let upper = match end {
                    Some(e) => Bound::Excluded(e.clone()),
                    None => Bound::Unbounded,
                };
                self.overlay
                    .range((Bound::Included(start.clone()), upper))
                    .next()
                    .is_some()
            }
        }
    }
}

/// Key of the (lease, key) attachment record.
pub fn lease_key_entry(lease: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&(lease as u64).to_be_bytes());
    out.extend_from_slice(key);
    out
}

impl KvSource for WriteTxn<'_> {
    fn current_revision(&self) -> i64 {
        self.revision()
    }

    fn visit(
        &mut self,
        range: &KeyRange,
        at: i64,
        visitor: &mut dyn FnMut(Visible<'_>) -> EtcdResult<bool>,
    ) -> EtcdResult<()> {
        if !self.reader {
            // The entries staged before this one must be in RocksDB for the read to see them.
            self.store.write_staged()?;
        }
        if at <= self.begin || !self.overlay_touches(range) {
            return visit_committed(self.store, range, at.min(self.begin), visitor);
        }
        // Rare: a range inside a txn over keys the txn already wrote. Merge both views.
        let mut merged: BTreeMap<Bytes, KeyValue> = BTreeMap::new();
        visit_committed(self.store, range, self.begin, &mut |v| {
            let kv = v.to_key_value()?;
            merged.insert(kv.key.clone(), kv);
            Ok(true)
        })?;
        for (key, change) in &self.overlay {
            if !range.contains(key) {
                continue;
            }
            match change {
                Some(kv) => merged.insert(key.clone(), kv.clone()),
                None => merged.remove(key),
            };
        }
        for kv in merged.values() {
            if !visitor(Visible::Decoded(kv))? {
                break;
            }
        }
        Ok(())
    }
}
