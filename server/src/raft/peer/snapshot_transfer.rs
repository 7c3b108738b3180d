//! Moving a snapshot (a RocksDB checkpoint directory) from the leader to a follower: its files in
//! chunks through one client-streaming call, then openraft's metadata. Both sides hold at most a
//! few chunks in memory, whatever the size of the database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use openraft::raft::SnapshotResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::client::PeerPool;
use super::wire;
use crate::proto::peerpb::peer_client::PeerClient;
use crate::proto::peerpb::snapshot_chunk::Part;
use crate::proto::peerpb::{FileChunk, FileSize, SnapshotChunk, SnapshotEnd};
use crate::raft::snapshot::SnapshotData;
use crate::raft::types::{SnapshotMeta, TypeConfig, Vote};
use crate::raft::RaftSnapshot;

/// Bytes per chunk.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of the network.
const CHUNKS_IN_FLIGHT: usize = 4;
/// A transfer may take this long plus the time its size needs at the slowest rate we accept.
const TRANSFER_BASE_TIMEOUT: Duration = Duration::from_secs(60);
const SLOWEST_BYTES_PER_SECOND: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("snapshot file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Peer(String),
    #[error("snapshot transfer timed out after {0:?}")]
    Timeout(Duration),
}

fn file_error(path: &Path, source: std::io::Error) -> TransferError {
    TransferError::File {
        path: path.display().to_string(),
        source,
    }
}

/// The regular files of a checkpoint directory with their sizes, by name.
fn list_files(dir: &Path) -> Result<Vec<(String, u64)>, TransferError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| file_error(dir, e))? {
        let entry = entry.map_err(|e| file_error(dir, e))?;
        let meta = entry.metadata().map_err(|e| file_error(&entry.path(), e))?;
        if meta.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// Streams `snapshot` to a follower and returns its answer.
pub async fn send(
    mut client: PeerClient<Channel>,
    pool: &PeerPool,
    target: u64,
    vote: Vote,
    snapshot: RaftSnapshot,
) -> Result<SnapshotResponse<TypeConfig>, TransferError> {
    let dir = snapshot.snapshot.dir.clone();
    let files = list_files(&dir)?;
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    let timeout = TRANSFER_BASE_TIMEOUT + Duration::from_secs(total / SLOWEST_BYTES_PER_SECOND);
    let end = SnapshotEnd {
        vote: wire::encode_bytes(&vote).map_err(|e| TransferError::Peer(e.message().into()))?,
        meta: wire::encode_bytes(&snapshot.meta)
            .map_err(|e| TransferError::Peer(e.message().into()))?,
        files: files
            .iter()
            .map(|(name, size)| FileSize {
                name: name.clone(),
                size: *size,
            })
            .collect(),
    };
    tracing::info!(
        peer = %format!("{target:x}"),
        bytes = total,
        files = files.len(),
        "sending a snapshot"
    );
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let sent_bytes = std::sync::Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_chunks(dir, files, end, tx, sent_bytes.clone()));
    let call = client.install_snapshot(pool.request(ReceiverStream::new(rx)));
    let answer = match tokio::time::timeout(timeout, call).await {
        Err(_) => {
            reader.abort();
            return Err(TransferError::Timeout(timeout));
        }
        Ok(answer) => answer,
    };
    let read_outcome = reader
        .await
        .map_err(|e| TransferError::Peer(format!("snapshot reader failed: {e}")))?;
    crate::metrics::METRICS
        .peer_sent_bytes
        .with_label_values(&[&format!("{target:x}")])
        .inc_by(sent_bytes.load(Ordering::Relaxed));
    let answer = answer.map_err(|s| TransferError::Peer(s.message().to_string()))?;
    read_outcome?;
    wire::decode(answer.get_ref()).map_err(|e| TransferError::Peer(e.message().to_string()))
}

async fn read_chunks(
    dir: PathBuf,
    files: Vec<(String, u64)>,
    end: SnapshotEnd,
    tx: mpsc::Sender<SnapshotChunk>,
    sent_bytes: std::sync::Arc<AtomicU64>,
) -> Result<(), TransferError> {
    for (name, _) in files {
        let path = dir.join(&name);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| file_error(&path, e))?;
        let mut offset = 0u64;
        loop {
            let mut buffer = vec![0u8; CHUNK_BYTES];
            let read = read_full(&mut file, &mut buffer)
                .await
                .map_err(|e| file_error(&path, e))?;
            if read == 0 && offset > 0 {
                break;
            }
            buffer.truncate(read);
            sent_bytes.fetch_add(read as u64, Ordering::Relaxed);
            let chunk = SnapshotChunk {
                part: Some(Part::File(FileChunk {
                    name: name.clone(),
                    offset,
                    data: Bytes::from(buffer),
                })),
            };
            if tx.send(chunk).await.is_err() {
                // The call ended early; its status says why.
                return Ok(());
            }
            offset += read as u64;
            if read < CHUNK_BYTES {
                break;
            }
        }
    }
    let _ = tx
        .send(SnapshotChunk {
            part: Some(Part::End(end)),
        })
        .await;
    Ok(())
}

async fn read_full(file: &mut tokio::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = file.read(&mut buffer[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// A snapshot received in full: where its files are, and openraft's vote and metadata.
pub struct ReceivedSnapshot {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub data: SnapshotData,
}

/// Where incoming snapshots are written; a fresh directory per transfer.
pub struct Incoming {
    root: PathBuf,
    sequence: AtomicU64,
}

impl Incoming {
    /// Clears whatever an interrupted transfer left under `root`.
    pub fn new(root: PathBuf) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            sequence: AtomicU64::new(0),
        })
    }

    /// Writes the chunks of `stream` into a new directory and returns it with the metadata.
    /// On any error the directory is removed.
    pub async fn receive(
        &self,
        mut stream: Streaming<SnapshotChunk>,
    ) -> Result<ReceivedSnapshot, Status> {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join(format!("{}-{n}", std::process::id()));
        let outcome = receive_into(&dir, &mut stream).await;
        if outcome.is_err() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        outcome
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

async fn receive_into(
    dir: &Path,
    stream: &mut Streaming<SnapshotChunk>,
) -> Result<ReceivedSnapshot, Status> {
    let io = |e: std::io::Error| Status::internal(format!("writing a snapshot: {e}"));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let mut current: Option<(String, tokio::fs::File, u64)> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        match chunk.part {
            Some(Part::File(file)) => {
                if !is_plain_file_name(&file.name) {
                    return Err(Status::invalid_argument(format!(
                        "snapshot file name {:?} is not a plain name",
                        file.name
                    )));
                }
                let same_file = current.as_ref().is_some_and(|(n, _, _)| *n == file.name);
                if !same_file {
                    if let Some((_, mut open, _)) = current.take() {
                        open.flush().await.map_err(io)?;
                        open.sync_all().await.map_err(io)?;
                    }
                    if file.offset != 0 {
                        return Err(Status::invalid_argument("snapshot file starts mid-way"));
                    }
                    let created = tokio::fs::File::create(dir.join(&file.name))
                        .await
                        .map_err(io)?;
                    current = Some((file.name.clone(), created, 0));
                }
                let Some((_, open, written)) = current.as_mut() else {
                    return Err(Status::internal("no open snapshot file"));
                };
                if file.offset != *written {
                    return Err(Status::invalid_argument(format!(
                        "snapshot chunk at offset {} of {} expected at {written}",
                        file.offset, file.name
                    )));
                }
                open.write_all(&file.data).await.map_err(io)?;
                *written += file.data.len() as u64;
            }
            Some(Part::End(end)) => {
                if let Some((_, mut open, _)) = current.take() {
                    open.flush().await.map_err(io)?;
                    open.sync_all().await.map_err(io)?;
                }
                for expected in &end.files {
                    if !is_plain_file_name(&expected.name) {
                        return Err(Status::invalid_argument("bad snapshot file name"));
                    }
                    let size = tokio::fs::metadata(dir.join(&expected.name))
                        .await
                        .map(|m| m.len())
                        .map_err(|_| {
                            Status::data_loss(format!("snapshot file {} missing", expected.name))
                        })?;
                    if size != expected.size {
                        return Err(Status::data_loss(format!(
                            "snapshot file {} has {size} bytes, {} expected",
                            expected.name, expected.size
                        )));
                    }
                }
                tokio::fs::File::open(dir)
                    .await
                    .map_err(io)?
                    .sync_all()
                    .await
                    .map_err(io)?;
                return Ok(ReceivedSnapshot {
                    vote: wire::decode_bytes(&end.vote)?,
                    meta: wire::decode_bytes(&end.meta)?,
                    data: SnapshotData {
                        dir: dir.to_path_buf(),
                    },
                });
            }
            None => return Err(Status::invalid_argument("empty snapshot chunk")),
        }
    }
    Err(Status::cancelled(
        "the snapshot stream ended before its end",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_accepted() {
        assert!(is_plain_file_name("000012.sst"));
        assert!(is_plain_file_name("keelson-snapshot.json"));
        for bad in ["", ".", "..", "../etc/passwd", "a/b", "a\\b", "a\0b"] {
            assert!(!is_plain_file_name(bad), "{bad:?} accepted");
        }
    }
}
