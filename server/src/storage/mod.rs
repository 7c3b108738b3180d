//! The one RocksDB instance of a member: column families, write helpers and the WAL syncer.
//!
//! Everything a member persists lives in a single RocksDB database so that one write-ahead log
//! orders the raft log, the raft vote and the state machine: a crash recovers a prefix of all
//! writes, which keeps the applied index consistent with the data it describes.

pub mod faults;
pub mod ownership;
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
/// Memtable arena block size of the state-machine column families (see `cf_options`).
const STATE_MACHINE_ARENA_BLOCK: usize = 4 << 10;

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

/// Memtable size of the raft log. RocksDB starts a new WAL file whenever a memtable is
/// switched, and the raft log's fills first: its size sets the WAL files' (about twice it,
/// with the applied state's records beside the entries: ~16 MiB with 256-byte values). Such
/// files retire four at a time under `MAX_TOTAL_WAL_BYTES`, the recycle list (4) holds them
/// all, and four of every ~six files a member starts after that are reused ones.
const RAFT_LOG_WRITE_BUFFER: usize = 8 << 20;

/// WAL kept before RocksDB flushes the memtables that still need its oldest file. A WAL file
/// is recycled only once every memtable with data in it is flushed, and only files retired
/// since the database was opened are recycled: with 256 MiB (and 32 MiB log memtables) a
/// member appended to fresh WAL files, the slower fdatasync, for well over its first 100 MiB
/// of writes after every start, and held that much more WAL on disk and in memtables
/// (bench/results/perf-push-2.md, twenty-fourth session).
const MAX_TOTAL_WAL_BYTES: u64 = 64 << 20;

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

    /// Opens the database under `dir` with its write-ahead log in `wal_dir` (or inside `dir`).
    pub fn open_with_wal(dir: &Path, wal_dir: Option<&Path>) -> Result<Arc<Self>> {
        Self::open_with_wal_dir(dir, wal_dir, Arc::new(NoObserver))
    }

    pub fn open_with_observer(dir: &Path, observer: Arc<dyn DiskObserver>) -> Result<Arc<Self>> {
        Self::open_with_wal_dir(dir, None, observer)
    }

    /// Opens the database under `dir` with its write-ahead log in `wal_dir` (etcd's
    /// `--wal-dir`: the log on a disk of its own), or inside `dir` when `None`. A store must
    /// always be opened with the same WAL dir (storage::ownership checks it).
    pub fn open_with_wal_dir(
        dir: &Path,
        wal_dir: Option<&Path>,
        observer: Arc<dyn DiskObserver>,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let mut db_opts = Options::default();
        if let Some(wal_dir) = wal_dir {
            std::fs::create_dir_all(wal_dir)?;
            db_opts.set_wal_dir(wal_dir);
        }
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(4);
        // Overwriting a recycled WAL file needs no block allocation nor size change, so its
        // fdatasync (the one every acknowledged write waits for) is about twice as fast as
        // an append to a new file on ext4 (see bench/results: the disk probe). The WAL's
        // size bound and the raft log's small memtables (`RAFT_LOG_WRITE_BUFFER`) keep the
        // recycle list supplied.
        db_opts.set_recycle_log_file_num(4);
        // WAL records stay in RocksDB's buffer until `sync_wal` writes and fsyncs them in one
        // go: every write made meanwhile shares that one write(2) instead of paying its own
        // (two per put: the log entry and the applied batch). Nothing is acknowledged before
        // that fsync, and a crash still recovers a prefix of the writes in order.
        db_opts.set_manual_wal_flush(true);
        db_opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        // Files a compaction made obsolete are deleted by whichever thread drops the last
        // reference to them, by default often a writer: unlinking six SST files of a large
        // `kv` compaction held every write for 43.5 ms in `make bench` (create-64, its stall
        // file). Deleting them on a background thread keeps that off the write path.
        db_opts.set_avoid_unnecessary_blocking_io(true);
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

    /// Whether RocksDB is slowing or stopping writes (memtables or level-0 files waiting for a
    /// flush or a compaction): a write may then wait for a long time.
    pub fn writes_throttled(&self) -> bool {
        let value = |property: &str| self.db.property_int_value(property).ok().flatten();
        throttled(
            value("rocksdb.is-write-stopped"),
            value("rocksdb.actual-delayed-write-rate"),
        )
    }

    /// What the state machine's data takes, the measure behind Status's `dbSize` and
    /// `dbSizeInUse`, the `etcd_mvcc_db_total_size*` gauges and the backend quota (see
    /// docs/storage.md, "Size"). Reads a few RocksDB properties: cheap, no file system walk.
    pub fn data_size(&self) -> DataSize {
        let mut size = DataSize::default();
        for name in STATE_MACHINE_CFS {
            let cf = self.cf(name);
            let property = |p: &str| {
                self.db
                    .property_int_value_cf(cf, p)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            let sst = property("rocksdb.total-sst-files-size");
            let live = property("rocksdb.estimate-live-data-size");
            let memtables = property("rocksdb.cur-size-all-mem-tables");
            size.total += sst + memtables;
            size.in_use += live.min(sst) + memtables;
        }
        size
    }
}

impl Drop for Storage {
    /// With `manual_wal_flush`, records written since the last group commit are still in
    /// RocksDB's buffer: a clean stop writes them, so that the next start has nothing of its
    /// own to redo (a crash instead redoes them from the raft log).
    fn drop(&mut self) {
        if let Err(e) = self.db.flush_wal(true) {
            tracing::warn!(error = %e, "could not write the last WAL records at close");
        }
    }
}

/// Bytes of the state machine's data (see [`Storage::data_size`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataSize {
    /// SST files (every version RocksDB still keeps) plus memtables: etcd's `dbSize`.
    pub total: u64,
    /// RocksDB's estimate of the live part of the SST files plus memtables: `dbSizeInUse`.
    pub in_use: u64,
}

/// RocksDB's answers: writes stopped (1) or not (0), and the rate delayed writes are held to
/// (0 when none are).
fn throttled(stopped: Option<u64>, delayed_rate: Option<u64>) -> bool {
    match (stopped, delayed_rate) {
        (Some(stopped), Some(delayed_rate)) => stopped > 0 || delayed_rate > 0,
        // Unreadable counts as throttled: the caller then takes the path that cannot block.
        _ => true,
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
            opts.set_write_buffer_size(RAFT_LOG_WRITE_BUFFER);
        }
        _ => {}
    }
    if STATE_MACHINE_CFS.contains(&name) {
        // Memtables report their size in whole arena blocks (1 MiB by default), and that size
        // is part of dbSize and the quota (`data_size`): small blocks keep it close to the
        // bytes written, so that a small --quota-backend-bytes means what etcd's does.
        opts.set_arena_block_size(STATE_MACHINE_ARENA_BLOCK);
    }
    opts.set_block_based_table_factory(&table);
    opts
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

#[cfg(test)]
mod tests {
    use super::*;

    /// dbSize must follow the bytes written closely (a tiny quota depends on it): memtables
    /// count in small arena blocks, and the raft log is not part of it.
    #[test]
    fn data_size_follows_the_bytes_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let empty = storage.data_size();
        assert!(empty.total < 16 << 10, "an empty store measures {empty:?}");
        let mut log = WriteBatch::default();
        log.put_cf(storage.cf(CF_LOG), 1u64.to_be_bytes(), vec![0u8; 1 << 20]);
        storage.write(log).expect("write the log");
        assert_eq!(
            storage.data_size(),
            empty,
            "the raft log is not the store's data"
        );
        let mut previous = empty.total;
        for i in 0..10u32 {
            let mut batch = WriteBatch::default();
            batch.put_cf(storage.cf(CF_KV), format!("key{i}"), vec![b'v'; 4096]);
            batch.put_cf(storage.cf(CF_META), "m", i.to_be_bytes());
            storage.write(batch).expect("write");
            let now = storage.data_size();
            let grown = now.total - previous;
            assert!(
                (4096..4096 + 1024).contains(&grown),
                "a 4 KiB write grew the size by {grown}"
            );
            assert!(now.in_use <= now.total);
            previous = now.total;
        }
    }

    /// After a start the WAL must reach recycled files (whose fdatasync is the faster one)
    /// within a few times its size bound, written as a member writes: raft log entries, each
    /// followed by the state machine's batch. Fails if the bound or the raft log's memtable
    /// grows back to where no WAL file retires in that stretch (256 and 32 MiB did not).
    #[test]
    fn wal_files_are_reused_soon_after_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let entry = vec![7u8; 48 << 10];
        let value = vec![b'v'; 16 << 10];
        let rounds = 3 * MAX_TOTAL_WAL_BYTES / (64 << 10);
        for index in 0..rounds {
            let mut append = WriteBatch::default();
            append.put_cf(storage.cf(CF_LOG), index.to_be_bytes(), &entry);
            storage.write(append).expect("append");
            let mut apply = WriteBatch::default();
            apply.put_cf(storage.cf(CF_KV), format!("key{}", index % 1000), &value);
            storage.write(apply).expect("apply");
            if index % 64 == 63 {
                storage.sync_wal().expect("sync");
            }
        }
        storage.sync_wal().expect("sync");
        let info_log = std::fs::read_to_string(dir.path().join("LOG")).expect("RocksDB's LOG");
        assert!(
            info_log.contains("from recycle list"),
            "no WAL file was reused in {} MiB of writes after open",
            rounds * 64 / 1024
        );
    }

    /// The options that keep slow file work off the write path must be the ones RocksDB runs
    /// with: it writes its effective options to an OPTIONS file at open.
    #[test]
    fn obsolete_files_are_deleted_off_the_write_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _storage = Storage::open(dir.path()).expect("open");
        let options_file = std::fs::read_dir(dir.path())
            .expect("list the store")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("OPTIONS-"))
            })
            .expect("RocksDB wrote no OPTIONS file");
        let options = std::fs::read_to_string(options_file).expect("read OPTIONS");
        assert!(
            options.contains("avoid_unnecessary_blocking_io=true"),
            "RocksDB runs with obsolete files deleted by the thread that frees them"
        );
    }

    #[test]
    fn writes_count_as_throttled_when_stopped_delayed_or_unknown() {
        assert!(!throttled(Some(0), Some(0)));
        assert!(throttled(Some(1), Some(0)), "stopped");
        assert!(throttled(Some(0), Some(16 << 20)), "delayed");
        assert!(throttled(None, Some(0)), "unreadable");
        assert!(throttled(Some(0), None), "unreadable");
    }

    #[test]
    fn a_healthy_store_reads_its_write_stall_state_as_unthrottled() {
        // Fails if either property name is not RocksDB's (it reads as unknown).
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut batch = WriteBatch::default();
        batch.put_cf(storage.cf(CF_KV), "key", "value");
        storage.write(batch).expect("write");
        assert!(!storage.writes_throttled());
    }
}
