//! Applied entries whose writes wait to be written as one RocksDB batch.
//!
//! Writing every applied entry as its own batch cost a write-group round, a WAL record and
//! the store's meta keys (current revision, live keys, the caller's applied index) per put:
//! about a quarter of a put's CPU (bench/results/perf-push-2.md). Entries applied together
//! are collected here instead and written at once, with the meta keys written once for all.
//!
//! The collected writes are kept in RocksDB's own batch encoding, so that joining them is a
//! copy of bytes: a batch is a 12-byte header (an 8-byte sequence number, which `Write`
//! assigns, and a 4-byte little-endian record count) followed by its records, and two
//! batches join as the records of both under one header with the counts added.

use rocksdb::WriteBatch;

use super::CommittedChange;

/// The header in front of a batch's records (RocksDB's `WriteBatchInternal::kHeader`).
const BATCH_HEADER: usize = 12;

/// Records of RocksDB write batches, joined in order.
#[derive(Default)]
pub struct BatchRecords {
    bytes: Vec<u8>,
    count: u32,
}

impl BatchRecords {
    /// Appends every record of `batch` after the ones already here.
    pub fn append(&mut self, batch: &WriteBatch) {
        let data = batch.data();
        if data.len() > BATCH_HEADER {
            self.bytes.extend_from_slice(&data[BATCH_HEADER..]);
            self.count += batch.len() as u32;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
    }

    /// One batch holding `self`'s records followed by `then`'s.
    pub fn to_batch(&self, then: &BatchRecords) -> WriteBatch {
        let mut data = Vec::with_capacity(BATCH_HEADER + self.bytes.len() + then.bytes.len());
        data.extend_from_slice(&0u64.to_le_bytes());
        data.extend_from_slice(&(self.count + then.count).to_le_bytes());
        data.extend_from_slice(&self.bytes);
        data.extend_from_slice(&then.bytes);
        WriteBatch::from_data(&data)
    }
}

/// What the applier has executed beyond what readers see.
pub struct Staged {
    /// Changes of staged entries not yet written.
    pub unwritten: BatchRecords,
    /// What the caller records about the newest staged entry (raft's applied index): written
    /// with every write of staged changes, so that a crash keeps an entry's changes and its
    /// applied index together or neither.
    pub trailer: BatchRecords,
    /// The revision and live-key count after every staged entry: where the next entry starts.
    pub revision: i64,
    pub keys: i64,
    /// The revision and live-key count the store's meta keys hold in RocksDB.
    pub written_revision: i64,
    pub written_keys: i64,
    /// Staged changes, written or not, that readers and watchers do not see yet.
    pub unpublished: Vec<CommittedChange>,
    /// Compactions staged entries scheduled; they start once published.
    pub compactions: Vec<i64>,
}

impl Staged {
    /// Nothing staged, the store at `revision` with `keys` live keys.
    pub fn at(revision: i64, keys: i64) -> Self {
        Self {
            unwritten: BatchRecords::default(),
            trailer: BatchRecords::default(),
            revision,
            keys,
            written_revision: revision,
            written_keys: keys,
            unpublished: Vec::new(),
            compactions: Vec::new(),
        }
    }

    pub fn has_unwritten(&self) -> bool {
        !self.unwritten.is_empty() || !self.trailer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_batches_hold_every_record_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = rocksdb::DB::open_default(dir.path()).expect("open");
        let mut first = WriteBatch::default();
        first.put(b"a", b"1");
        first.put(b"b", b"1");
        let mut second = WriteBatch::default();
        second.put(b"b", b"2");
        second.delete(b"a");
        let mut trailer_batch = WriteBatch::default();
        trailer_batch.put(b"applied", b"7");

        let mut records = BatchRecords::default();
        records.append(&first);
        records.append(&WriteBatch::default());
        records.append(&second);
        let mut trailer = BatchRecords::default();
        trailer.append(&trailer_batch);
        let joined = records.to_batch(&trailer);
        assert_eq!(joined.len(), 5);
        db.write(joined).expect("write");

        assert_eq!(db.get(b"a").expect("get"), None);
        assert_eq!(db.get(b"b").expect("get").as_deref(), Some(&b"2"[..]));
        assert_eq!(db.get(b"applied").expect("get").as_deref(), Some(&b"7"[..]));
    }

    #[test]
    fn nothing_joined_is_an_empty_batch() {
        let joined = BatchRecords::default().to_batch(&BatchRecords::default());
        assert!(joined.is_empty());
    }
}
