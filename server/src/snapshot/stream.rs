//! Maintenance.Snapshot's data: the backend file written to a temporary file under the data
//! dir, then sent in chunks followed by its SHA-256, as etcd sends it.
//!
//! One blocking thread does the work; the chunks go through a small bounded channel, so a
//! slow client holds back the reading, never the memory. The temporary file is unlinked as
//! soon as it is open for reading: nothing is left behind when the client goes away, and
//! files left by a process that died mid-export are removed by the next export.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::export::{write_backend, Exported};
use super::SnapshotError;
use crate::storage::Storage;

/// Bytes per message (etcd sends 32 KiB).
pub const CHUNK_BYTES: usize = 32 * 1024;
/// Chunks in flight between the reading thread and the gRPC stream.
const CHANNEL_CHUNKS: usize = 8;
const TEMP_PREFIX: &str = "export-";

static NEXT_EXPORT: AtomicU64 = AtomicU64::new(0);

/// One message of the stream.
#[derive(Debug)]
pub enum Chunk {
    /// The first message of the stream carries what was exported.
    Data {
        blob: Vec<u8>,
        remaining: u64,
        exported: Option<Exported>,
    },
    /// The last message: the SHA-256 of every byte sent before it.
    Trailer([u8; 32]),
}

/// Starts exporting `storage` through a temporary file in `dir`; the receiver yields the chunks.
pub fn start(storage: Arc<Storage>, dir: PathBuf) -> mpsc::Receiver<Result<Chunk, SnapshotError>> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = run(&storage, &dir, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

fn run(
    storage: &Storage,
    dir: &Path,
    tx: &mpsc::Sender<Result<Chunk, SnapshotError>>,
) -> Result<(), SnapshotError> {
    let (mut file, len, exported) = write_temp(storage, dir)?;
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut exported = Some(exported);
    let mut buf = vec![0u8; CHUNK_BYTES];
    while sent < len {
        let want = (len - sent).min(CHUNK_BYTES as u64) as usize;
        file.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        sent += want as u64;
        let chunk = Chunk::Data {
            blob: buf[..want].to_vec(),
            remaining: len - sent,
            exported: exported.take(),
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            return Ok(()); // the client went away
        }
    }
    let _ = tx.blocking_send(Ok(Chunk::Trailer(hasher.finalize().into())));
    Ok(())
}

/// Writes the backend file, opens it for reading and unlinks it.
fn write_temp(storage: &Storage, dir: &Path) -> Result<(File, u64, Exported), SnapshotError> {
    fs::create_dir_all(dir)?;
    remove_stale(dir);
    let pid = std::process::id();
    let n = NEXT_EXPORT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{TEMP_PREFIX}{pid}-{n}.db"));
    let written = write_backend(storage, &path).and_then(|exported| {
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        Ok((file, len, exported))
    });
    let _ = fs::remove_file(&path);
    written
}

/// Removes temporary files of processes that are gone (this process's are unlinked already,
/// or being written: their names carry our pid).
fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let ours = format!("{TEMP_PREFIX}{}-", std::process::id());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) && !name.starts_with(&ours) {
            let _ = fs::remove_file(entry.path());
        }
    }
}
