//! etcd's snapshot format (a bbolt file of etcd's backend, then the SHA-256 of it) used for
//! backups and migrations both ways: `Maintenance.Snapshot` writes one, `keelson snapshot
//! restore` builds a data dir from one, `keelson snapshot status` describes one.

pub mod bbolt;
pub mod cli;
pub mod etcd;
pub mod export;
pub mod restore;
pub mod status;
pub mod stream;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::EtcdError;
use bbolt::BoltError;

/// Length of the SHA-256 trailer etcd appends to a snapshot.
pub const TRAILER_LEN: u64 = 32;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Bolt(#[from] BoltError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("store: {0}")]
    Store(String),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("snapshot file: {0}")]
    File(String),
    #[error("{0}")]
    Usage(String),
}

impl From<SnapshotError> for EtcdError {
    fn from(e: SnapshotError) -> Self {
        EtcdError::Internal(format!("snapshot: {e}"))
    }
}

/// Whether a file of `len` bytes ends with etcd's SHA-256 trailer: bbolt files are whole
/// pages (multiples of 512 bytes), so the trailer is what is left over (etcdctl's test).
pub fn has_trailer(len: u64) -> bool {
    len % 512 == TRAILER_LEN
}

/// Checks the trailer of the snapshot at `path` and returns the length of its database part.
/// Without a trailer the file is refused unless `skip_hash_check` (as etcdctl does).
pub fn verify(path: &Path, skip_hash_check: bool) -> Result<u64, SnapshotError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if !has_trailer(len) {
        if skip_hash_check {
            return Ok(len);
        }
        return Err(SnapshotError::File(format!(
            "{} has no sha256 trailer ({len} bytes): not a complete snapshot \
             (use --skip-hash-check for a data dir's member/snap/db)",
            path.display()
        )));
    }
    let db_len = len - TRAILER_LEN;
    if skip_hash_check {
        return Ok(db_len);
    }
    let mut hasher = Sha256::new();
    let mut remaining = db_len;
    let mut buf = vec![0u8; 1 << 20];
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        remaining -= want as u64;
    }
    let mut expected = [0u8; TRAILER_LEN as usize];
    file.read_exact(&mut expected)?;
    let actual = hasher.finalize();
    if actual.as_slice() != expected {
        return Err(SnapshotError::File(format!(
            "{}: sha256 mismatch: the file says {}, its content hashes to {} \
             (the file is corrupt or truncated)",
            path.display(),
            hex(&expected),
            hex(&actual)
        )));
    }
    Ok(db_len)
}

/// Where snapshot exports write their temporary file: `member/snap-export` beside the store.
pub fn export_dir(store_dir: &Path) -> std::path::PathBuf {
    store_dir
        .parent()
        .unwrap_or(store_dir)
        .join(crate::storage::ownership::SNAP_EXPORT)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
