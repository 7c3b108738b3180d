//! Raft snapshots as RocksDB checkpoints.
//!
//! Building one hard-links the database's files into `<data-dir>/snap/<term>-<index>` (cheap,
//! whatever the data size) next to a JSON file with the snapshot's raft metadata. `CURRENT`
//! names the latest complete one; older ones are removed once a newer one is in place.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{Options, WriteBatch, DB};

use super::types::SnapshotMeta;
use crate::storage::{Storage, StorageError, STATE_MACHINE_CFS};

const META_FILE: &str = "keelson-snapshot.json";
const CURRENT_FILE: &str = "CURRENT";
/// Bytes copied per write batch when installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// A complete snapshot on disk: a checkpoint directory.
#[derive(Debug, Clone)]
pub struct SnapshotData {
    pub dir: PathBuf,
}

impl SnapshotData {
    /// The data of a snapshot that only records a point in the log (see
    /// `StateMachine::try_create_snapshot_builder`); openraft keeps its metadata only.
    pub fn not_materialised() -> Self {
        Self {
            dir: PathBuf::new(),
        }
    }
}

pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    pub fn new(root: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    fn name_for(meta: &SnapshotMeta) -> String {
        let (term, index) = meta
            .last_log_id
            .as_ref()
            .map_or((0, 0), |id| (id.leader_id.term, id.index));
        format!("{term:016x}-{index:016x}")
    }

    /// Checkpoints the live database as the snapshot described by `meta`.
    pub fn create(&self, storage: &Storage, meta: &SnapshotMeta) -> io::Result<SnapshotData> {
        let name = Self::name_for(meta);
        let staging = self.root.join(format!("{name}.tmp"));
        remove_dir_if_present(&staging)?;
        Checkpoint::new(storage.db())
            .and_then(|c| c.create_checkpoint(&staging))
            .map_err(StorageError::from)?;
        self.finish(&staging, &name, meta)
    }

    /// Keeps a snapshot that came from elsewhere as this member's current snapshot.
    pub fn adopt(&self, meta: &SnapshotMeta, data: &SnapshotData) -> io::Result<SnapshotData> {
        let name = Self::name_for(meta);
        if data.dir == self.root.join(&name) {
            return Ok(data.clone());
        }
        let staging = self.root.join(format!("{name}.tmp"));
        remove_dir_if_present(&staging)?;
        fs::create_dir_all(&staging)?;
        for entry in fs::read_dir(&data.dir)? {
            let entry = entry?;
            let target = staging.join(entry.file_name());
            if fs::hard_link(entry.path(), &target).is_err() {
                fs::copy(entry.path(), &target)?;
            }
        }
        self.finish(&staging, &name, meta)
    }

    fn finish(&self, staging: &Path, name: &str, meta: &SnapshotMeta) -> io::Result<SnapshotData> {
        write_synced(
            &staging.join(META_FILE),
            &serde_json::to_vec(meta).map_err(io::Error::other)?,
        )?;
        let dir = self.root.join(name);
        remove_dir_if_present(&dir)?;
        fs::rename(staging, &dir)?;
        let current_tmp = self.root.join(format!("{CURRENT_FILE}.tmp"));
        write_synced(&current_tmp, name.as_bytes())?;
        fs::rename(&current_tmp, self.root.join(CURRENT_FILE))?;
        sync_dir(&self.root)?;
        self.remove_all_but(name)?;
        Ok(SnapshotData { dir })
    }

    fn remove_all_but(&self, keep: &str) -> io::Result<()> {
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() && entry.file_name() != keep {
                fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    /// The latest complete snapshot, if any.
    pub fn current(&self) -> io::Result<Option<(SnapshotMeta, SnapshotData)>> {
        let name = match fs::read_to_string(self.root.join(CURRENT_FILE)) {
            Ok(name) => name,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let dir = self.root.join(name.trim());
        let meta: SnapshotMeta = serde_json::from_slice(&fs::read(dir.join(META_FILE))?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((meta, SnapshotData { dir })))
    }
}

/// Replaces every state-machine column family of `storage` with the snapshot's contents.
pub fn copy_state_machine(storage: &Storage, snapshot: &SnapshotData) -> Result<(), StorageError> {
    let source = DB::open_cf_for_read_only(
        &Options::default(),
        &snapshot.dir,
        crate::storage::all_column_families(),
        false,
    )?;
    for name in STATE_MACHINE_CFS {
        clear_column_family(storage, name)?;
        let source_cf = source
            .cf_handle(name)
            .ok_or_else(|| StorageError::Corrupt(format!("snapshot lacks column family {name}")))?;
        let target_cf = storage.cf(name);
        let mut batch = WriteBatch::default();
        let mut iter = source.raw_iterator_cf(source_cf);
        iter.seek_to_first();
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            batch.put_cf(target_cf, k, v);
            if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
                storage.write(std::mem::take(&mut batch))?;
            }
            iter.next();
        }
        iter.status()?;
        storage.write(batch)?;
    }
    storage.sync_wal()
}

fn clear_column_family(storage: &Storage, name: &str) -> Result<(), StorageError> {
    let cf = storage.cf(name);
    let mut iter = storage
        .db()
        .raw_iterator_cf_opt(cf, crate::storage::scan_options());
    iter.seek_to_first();
    let Some(first) = iter.key().map(<[u8]>::to_vec) else {
        return Ok(());
    };
    iter.seek_to_last();
    let Some(last) = iter.key().map(<[u8]>::to_vec) else {
        return Ok(());
    };
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf, &first, &last);
    batch.delete_cf(cf, &last);
    storage.write(batch)
}

fn remove_dir_if_present(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn write_synced(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = fs::File::create(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
