//! The one RocksDB instance of a member: column families, write helpers and the WAL syncer.
//!
//! Everything a member persists lives in a single RocksDB database so that one write-ahead log
//! orders the raft log, the raft vote and the state machine: a crash recovers a prefix of all
//! writes, which keeps the applied index consistent with the data it describes.

pub mod faults;
mod syncer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options,
    ReadOptions, SliceTransform, WriteBatch, WriteOptions, DB,
};

pub use syncer::WalSyncer;

/// Raft log entries, keyed by big-endian log index.
pub const CF_LOG: &str = "raft_log";
/// Raft vote, committed log id, last purged log id.
pub const CF_RAFT: &str = "raft_state";
/// MVCC versions of every key (see docs/storage.md for the encoding).
pub const CF_KV: &str = "kv";
/// Revision index: (main, sub) -> user key, in revision order.
pub const CF_REV: &str = "rev";
/// State-machine metadata: applied log id, membership, revisions, compaction progress.
pub const CF_META: &str = "meta";
/// Leases by ID.
pub const CF_LEASE: &str = "lease";
/// (lease ID, key) pairs: the keys attached to each lease.
pub const CF_LEASE_KEYS: &str = "lease_keys";

/// Column families that hold state-machine data (copied by snapshots).
pub const STATE_MACHINE_CFS: [&str; 5] = [CF_KV, CF_REV, CF_META, CF_LEASE, CF_LEASE_KEYS];
const ALL_CFS: [&str; 7] = [
    CF_LOG,
    CF_RAFT,
    CF_KV,
    CF_REV,
    CF_META,
    CF_LEASE,
    CF_LEASE_KEYS,
];

/// Names of every column family, in the order they are opened.
pub fn all_column_families() -> [&'static str; 7] {
    ALL_CFS
}

const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// Bytes at the end of a `kv` key that name the revision (see mvcc/keys.rs).
const KV_REVISION_SUFFIX: usize = 16;
/// The separator between a `kv` key's escaped user key and its revision.
const KV_TERMINATOR: [u8; 2] = [0x00, 0x01];

/// The part of a `kv` key shared by every version of one user key (the escaped user key and
/// its terminator). It is the prefix RocksDB's bloom filters are built on, so that "the newest
/// version of this key" skips every file that holds no version of it.
pub fn kv_version_prefix(key: &[u8]) -> &[u8] {
    &key[..key.len().saturating_sub(KV_REVISION_SUFFIX)]
}

fn is_kv_version_key(key: &[u8]) -> bool {
    key.len() >= KV_REVISION_SUFFIX + KV_TERMINATOR.len()
        && key[key.len() - KV_REVISION_SUFFIX - KV_TERMINATOR.len()..key.len() - KV_REVISION_SUFFIX]
            == KV_TERMINATOR
}

/// Read options for scans: every iterator that walks across keys must ignore the `kv` prefix
/// filters (RocksDB's prefix mode would end such a scan early).
pub fn scan_options() -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_total_order_seek(true);
    opts
}

/// Read options for looking at the versions of one user key only: the prefix filters apply.
pub fn single_key_options() -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_prefix_same_as_start(true);
    opts
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Observer of disk latencies, so that metrics can be attached without this module knowing them.
pub trait DiskObserver: Send + Sync + 'static {
    fn wal_fsync(&self, seconds: f64);
    fn backend_commit(&self, seconds: f64);
}

struct NoObserver;
impl DiskObserver for NoObserver {
    fn wal_fsync(&self, _: f64) {}
    fn backend_commit(&self, _: f64) {}
}

pub struct Storage {
    db: DB,
    dir: PathBuf,
    observer: Arc<dyn DiskObserver>,
}

impl Storage {
    /// Opens (creating if needed) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        Self::open_with_observer(dir, Arc::new(NoObserver))
    }

    pub fn open_with_observer(dir: &Path, observer: Arc<dyn DiskObserver>) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(4);
        // Overwriting a recycled WAL file needs no block allocation nor size change, so its
        // fdatasync (the one every acknowledged write waits for) is about twice as fast as
        // an append to a new file on ext4 (see bench/results: the disk probe).
        db_opts.set_recycle_log_file_num(4);
        db_opts.set_max_total_wal_size(256 << 20);
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs)?;
        Ok(Arc::new(Self {
            db,
            dir: dir.to_path_buf(),
            observer,
        }))
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        // Every name in ALL_CFS is created at open; asking for another is a programming error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is not opened"))
    }

    /// Writes a batch without waiting for the disk; a later `sync_wal` makes it durable.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let started = Instant::now();
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db.write_opt(batch, &opts)?;
        self.observer
            .backend_commit(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Writes a batch and fsyncs the WAL before returning.
    pub fn write_durable(&self, batch: WriteBatch) -> Result<()> {
        let started = Instant::now();
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        faults::disk_faults().before_fsync();
        self.db.write_opt(batch, &opts)?;
        self.observer.wal_fsync(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Makes every write issued so far durable: one fsync covers all of them.
    pub fn sync_wal(&self) -> Result<()> {
        let started = Instant::now();
        faults::disk_faults().before_fsync();
        self.db.flush_wal(true)?;
        self.observer.wal_fsync(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Total bytes of the database files on disk.
    pub fn size_on_disk(&self) -> u64 {
        dir_size(&self.dir)
    }

    /// Bytes of live data, as RocksDB estimates them (excludes obsolete versions awaiting compaction).
    pub fn size_in_use(&self) -> u64 {
        let mut total = 0u64;
        for name in ALL_CFS {
            let cf = self.cf(name);
            for prop in [
                "rocksdb.estimate-live-data-size",
                "rocksdb.size-all-mem-tables",
            ] {
                if let Ok(Some(v)) = self.db.property_int_value_cf(cf, prop) {
                    total += v;
                }
            }
        }
        total
    }
}

fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_block_size(16 << 10);
    match name {
        CF_KV => {
            table.set_bloom_filter(10.0, false);
            table.set_whole_key_filtering(false);
            opts.set_prefix_extractor(SliceTransform::create(
                "keelson.kv-version-prefix",
                kv_version_prefix,
                Some(is_kv_version_key),
            ));
            opts.set_compression_type(DBCompressionType::Lz4);
            opts.set_bottommost_compression_type(DBCompressionType::Zstd);
        }
        CF_LEASE_KEYS => {
            opts.set_compression_type(DBCompressionType::Lz4);
            opts.set_bottommost_compression_type(DBCompressionType::Zstd);
        }
        CF_LOG => {
            // The log is written once, read rarely and deleted from the front: compressing it
            // on flush cost CPU on the write path (profile of put-64) and saved little.
            opts.set_compression_type(DBCompressionType::None);
            opts.set_write_buffer_size(32 << 20);
        }
        _ => {}
    }
    opts.set_block_based_table_factory(&table);
    opts
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

impl Storage {
    /// Compacts every column family fully (etcd's defragment, without the stop-the-world).
    pub fn compact_all(&self) {
        for name in ALL_CFS {
            self.db
                .compact_range_cf(self.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
    }
}
