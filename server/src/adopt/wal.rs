//! Reading etcd's write-ahead log (`member/wal/<seq>-<index>.wal`), as etcd's own start does.
//!
//! Each file is a sequence of frames: an 8-byte little-endian length word (the low 56 bits the
//! record's length; the top byte, when its high bit is set, the padding in its low 3 bits),
//! then a `walpb.Record` padded to 8 bytes. Files are preallocated, so a zero length word ends
//! a file. Every record but the `crc` ones carries the CRC-32C rolled over the data of all
//! records before it, across files; a `crc` record at the start of each file carries the value
//! the previous file ended with.
//!
//! A record cut short at the end of the last file is a write that a crash interrupted and
//! that was never acknowledged (etcd repairs it away); anything else that does not check out
//! is corruption, and the whole log is refused.

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;

/// etcd's limit on one record (maxWALEntrySizeLimit).
const MAX_RECORD_BYTES: u64 = 10 << 20;
const FRAME_LEN: usize = 8;
/// Torn writes are recognised sector by sector (etcd's minSectorSize).
const SECTOR: usize = 512;

const RECORD_METADATA: i64 = 1;
const RECORD_ENTRY: i64 = 2;
const RECORD_STATE: i64 = 3;
const RECORD_CRC: i64 = 4;
const RECORD_SNAPSHOT: i64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} at offset {offset}: {problem}")]
    Corrupt {
        path: String,
        offset: usize,
        problem: String,
    },
    #[error("{0}")]
    Log(String),
}

/// walpb.Record.
#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(int64, tag = "1")]
    kind: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

/// raftpb.Entry.
#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(uint64, tag = "2")]
    pub term: u64,
    #[prost(uint64, tag = "3")]
    pub index: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// raftpb.EntryType.
pub const ENTRY_NORMAL: i32 = 0;
pub const ENTRY_CONF_CHANGE: i32 = 1;

/// raftpb.HardState.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct HardState {
    #[prost(uint64, tag = "1")]
    pub term: u64,
    #[prost(uint64, tag = "2")]
    pub vote: u64,
    #[prost(uint64, tag = "3")]
    pub commit: u64,
}

/// etcdserverpb.Metadata: who wrote the log.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Metadata {
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
}

/// Everything a log holds, as etcd's ReadAll returns it.
#[derive(Debug, Default)]
pub struct WalContents {
    pub metadata: Option<Metadata>,
    pub hard_state: HardState,
    /// Consecutive entries, a later entry at an index replacing the earlier one and all after
    /// it (a new leader's log overwriting an uncommitted tail).
    pub entries: Vec<Entry>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Whether the last file ended with a torn (never acknowledged) record.
    pub torn_tail: bool,
}

/// The `.wal` files of `dir`, in sequence order.
pub fn wal_files(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let io = |source| WalError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_wal = path.extension().is_some_and(|e| e == "wal");
        if is_wal {
            let seq = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.split_once('-'))
                .and_then(|(seq, _)| u64::from_str_radix(seq, 16).ok())
                .ok_or_else(|| {
                    WalError::Log(format!(
                        "{}: not a WAL file name (<seq>-<index>.wal)",
                        path.display()
                    ))
                })?;
            files.push((seq, path));
        }
    }
    files.sort();
    for pair in files.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(WalError::Log(format!(
                "WAL files are not consecutive: {} follows {}",
                pair[1].1.display(),
                pair[0].1.display()
            )));
        }
    }
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Reads every file of the log in `dir`.
pub fn read_dir(dir: &Path) -> Result<WalContents, WalError> {
    let files = wal_files(dir)?;
    if files.is_empty() {
        return Err(WalError::Log(format!(
            "{} holds no .wal file",
            dir.display()
        )));
    }
    let mut reader = Reader::default();
    let last = files.len() - 1;
    for (i, path) in files.iter().enumerate() {
        let bytes = fs::read(path).map_err(|source| WalError::Io {
            path: path.display().to_string(),
            source,
        })?;
        reader.read_file(path, &bytes, i == last)?;
    }
    reader.contents.files = files;
    Ok(reader.contents)
}

#[derive(Default)]
struct Reader {
    crc: u32,
    contents: WalContents,
}

impl Reader {
    fn read_file(&mut self, path: &Path, bytes: &[u8], is_last: bool) -> Result<(), WalError> {
        let corrupt = |offset: usize, problem: String| WalError::Corrupt {
            path: path.display().to_string(),
            offset,
            problem,
        };
        let mut offset = 0usize;
        while offset + FRAME_LEN <= bytes.len() {
            let mut word = [0u8; FRAME_LEN];
            word.copy_from_slice(&bytes[offset..offset + FRAME_LEN]);
            let word = u64::from_le_bytes(word);
            if word == 0 {
                // The preallocated, never written part of the file.
                return Ok(());
            }
            let (len, pad) = frame_size(word);
            if len >= MAX_RECORD_BYTES - pad {
                return Err(corrupt(
                    offset,
                    format!("a record of {len} bytes exceeds etcd's limit"),
                ));
            }
            let body_start = offset + FRAME_LEN;
            let body_end = body_start + (len + pad) as usize;
            if body_end > bytes.len() {
                if is_last {
                    self.contents.torn_tail = true;
                    return Ok(());
                }
                return Err(corrupt(offset, "the file ends inside a record".into()));
            }
            let body = &bytes[body_start..body_end];
            match self.check_record(&body[..len as usize]) {
                Ok(record) => self.take(record, path, offset)?,
                Err(problem) if is_last && is_torn(body, body_start) => {
                    // A write the crash cut short; etcd drops it (and anything after it).
                    tracing::warn!(file = %path.display(), offset, %problem, "dropping a torn record at the end of etcd's WAL");
                    self.contents.torn_tail = true;
                    return Ok(());
                }
                Err(problem) => return Err(corrupt(offset, problem)),
            }
            offset = body_end;
        }
        Ok(())
    }

    /// Decodes a record and checks its CRC (rolling it on).
    fn check_record(&mut self, raw: &[u8]) -> Result<Record, String> {
        let record = Record::decode(raw).map_err(|e| format!("unreadable record: {e}"))?;
        if record.kind == RECORD_CRC {
            // The first file's crc record starts the chain; later ones must continue it.
            if self.crc != 0 && record.crc != self.crc {
                return Err(format!(
                    "CRC mismatch: the file starts from {:08x}, the previous file ended at {:08x}",
                    record.crc, self.crc
                ));
            }
            self.crc = record.crc;
            return Ok(record);
        }
        let rolled = crc32c::crc32c_append(self.crc, &record.data);
        if rolled != record.crc {
            return Err(format!(
                "CRC mismatch: the record says {:08x}, its data gives {rolled:08x}",
                record.crc
            ));
        }
        self.crc = rolled;
        Ok(record)
    }

    fn take(&mut self, record: Record, path: &Path, offset: usize) -> Result<(), WalError> {
        let corrupt = |problem: String| WalError::Corrupt {
            path: path.display().to_string(),
            offset,
            problem,
        };
        match record.kind {
            RECORD_ENTRY => {
                let entry = Entry::decode(record.data.as_slice())
                    .map_err(|e| corrupt(format!("unreadable entry: {e}")))?;
                self.push_entry(entry).map_err(corrupt)?;
            }
            RECORD_STATE => {
                self.contents.hard_state = HardState::decode(record.data.as_slice())
                    .map_err(|e| corrupt(format!("unreadable hard state: {e}")))?;
            }
            RECORD_METADATA => {
                let metadata = Metadata::decode(record.data.as_slice())
                    .map_err(|e| corrupt(format!("unreadable metadata: {e}")))?;
                if self.contents.metadata.is_some_and(|m| m != metadata) {
                    return Err(corrupt(format!(
                        "metadata {metadata:?} conflicts with {:?} earlier in the log",
                        self.contents.metadata
                    )));
                }
                self.contents.metadata = Some(metadata);
            }
            // The crc was checked in check_record; a snapshot record only marks where etcd's
            // own snapshot was taken, which the bbolt file's consistent index supersedes.
            RECORD_CRC | RECORD_SNAPSHOT => {}
            other => return Err(corrupt(format!("unknown record type {other}"))),
        }
        Ok(())
    }

    /// etcd's rule: an entry at index i replaces the entries from i on.
    fn push_entry(&mut self, entry: Entry) -> Result<(), String> {
        let entries = &mut self.contents.entries;
        if let Some(first) = entries.first().map(|e| e.index) {
            if entry.index < first {
                // Older than anything kept: a new leader rewrote the log from further back.
                entries.clear();
            } else {
                let position = (entry.index - first) as usize;
                if position > entries.len() {
                    return Err(format!(
                        "entry {} follows entry {}: the log has a gap",
                        entry.index,
                        first + entries.len() as u64 - 1
                    ));
                }
                entries.truncate(position);
            }
        }
        entries.push(entry);
        Ok(())
    }
}

fn frame_size(word: u64) -> (u64, u64) {
    let len = word & !(0xffu64 << 56);
    let pad = if word & (1 << 63) != 0 {
        (word >> 56) & 0x7
    } else {
        0
    };
    (len, pad)
}

/// Whether a record that does not check out is a torn write: one of the disk sectors it
/// spans was never written (all zeroes).
fn is_torn(body: &[u8], file_offset: usize) -> bool {
    let mut position = 0;
    let mut at = file_offset;
    while position < body.len() {
        let chunk = (SECTOR - at % SECTOR).min(body.len() - position);
        if body[position..position + chunk].iter().all(|b| *b == 0) {
            return true;
        }
        position += chunk;
        at += chunk;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: i64, data: &[u8], crc: &mut u32) -> Vec<u8> {
        let crc_value = if kind == RECORD_CRC {
            *crc
        } else {
            *crc = crc32c::crc32c_append(*crc, data);
            *crc
        };
        let record = Record {
            kind,
            crc: crc_value,
            data: data.to_vec(),
        }
        .encode_to_vec();
        let pad = (8 - record.len() % 8) % 8;
        let mut word = record.len() as u64;
        if pad > 0 {
            word |= (0x80 | pad as u64) << 56;
        }
        let mut out = word.to_le_bytes().to_vec();
        out.extend_from_slice(&record);
        out.extend(std::iter::repeat_n(0u8, pad));
        out
    }

    fn entry(index: u64, term: u64) -> Vec<u8> {
        Entry {
            kind: ENTRY_NORMAL,
            term,
            index,
            data: vec![],
        }
        .encode_to_vec()
    }

    fn read(bytes: &[u8]) -> Result<WalContents, WalError> {
        let mut reader = Reader::default();
        reader.read_file(Path::new("test.wal"), bytes, true)?;
        Ok(reader.contents)
    }

    #[test]
    fn entries_hard_state_and_a_rewritten_tail() {
        let mut crc = 0;
        let mut file = frame(RECORD_CRC, &[], &mut crc);
        for (index, term) in [(1, 1), (2, 1), (3, 1), (2, 2), (3, 2)] {
            file.extend(frame(RECORD_ENTRY, &entry(index, term), &mut crc));
        }
        let state = HardState {
            term: 2,
            vote: 7,
            commit: 3,
        };
        file.extend(frame(RECORD_STATE, &state.encode_to_vec(), &mut crc));
        file.extend(vec![0u8; 4096]);
        let contents = read(&file).expect("read");
        let ids: Vec<(u64, u64)> = contents.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(ids, vec![(1, 1), (2, 2), (3, 2)]);
        assert_eq!(contents.hard_state, state);
        assert!(!contents.torn_tail);
    }

    #[test]
    fn a_flipped_byte_is_corruption_but_a_zeroed_tail_is_a_torn_write() {
        let mut crc = 0;
        let mut file = frame(RECORD_CRC, &[], &mut crc);
        let first_end = file.len();
        file.extend(frame(RECORD_ENTRY, &entry(1, 1), &mut crc));
        let second = file.len();
        file.extend(frame(RECORD_ENTRY, &entry(2, 1), &mut crc));
        let mut flipped = file.clone();
        flipped[second + FRAME_LEN + 3] ^= 0x40;
        flipped.extend(frame(RECORD_ENTRY, &entry(3, 1), &mut crc.clone()));
        let error = read(&flipped).expect_err("a flipped byte must not pass");
        assert!(error.to_string().contains("offset"), "{error}");

        let mut torn = file.clone();
        for b in &mut torn[second + FRAME_LEN..] {
            *b = 0;
        }
        let contents = read(&torn).expect("a torn tail is the normal end");
        assert_eq!(contents.entries.len(), 1);
        assert!(contents.torn_tail);
        assert!(first_end > 0);
    }

    #[test]
    fn a_gap_is_refused() {
        let mut crc = 0;
        let mut file = frame(RECORD_ENTRY, &entry(1, 1), &mut crc);
        file.extend(frame(RECORD_ENTRY, &entry(3, 1), &mut crc));
        let error = read(&file).expect_err("a gap");
        assert!(error.to_string().contains("gap"), "{error}");
    }
}

/// The decoder on logs the real etcd wrote (skipped where `/usr/bin/etcd` is not installed).
#[cfg(test)]
mod real_etcd_tests {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::super::entries::{self, Action};
    use super::*;
    use crate::proto::raftpb::raft_request::Request;

    const ETCD: &str = "/usr/bin/etcd";
    const ETCDCTL: &str = "/usr/bin/etcdctl";
    const READY_WITHIN: Duration = Duration::from_secs(20);

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    }

    fn etcdctl(endpoint: &str, args: &[&str]) -> bool {
        Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "--command-timeout", "2s"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts etcd on `data_dir`, runs `puts` through etcdctl, and kills it.
    fn etcd_writes(data_dir: &Path, puts: &[(&str, &str)]) {
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut child: Child = Command::new(ETCD)
            .args(["--name", "wal-test", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("wal-test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let deadline = Instant::now() + READY_WITHIN;
        while !etcdctl(&client_url, &["endpoint", "health"]) {
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                panic!("etcd did not become healthy within {READY_WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for (key, value) in puts {
            assert!(etcdctl(&client_url, &["put", key, value]), "put {key}");
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn reads_the_log_of_the_real_etcd() {
        if !Path::new(ETCD).exists() || !Path::new(ETCDCTL).exists() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("etcd");
        let puts = [("/a", "1"), ("/b", "2"), ("/a", "3")];
        etcd_writes(&data, &puts);

        let log = read_dir(&data.join("member/wal")).expect("the real etcd's log reads");
        let metadata = log.metadata.expect("a metadata record");
        assert_ne!(metadata.node_id, 0);
        assert_ne!(metadata.cluster_id, 0);
        assert!(log.entries.windows(2).all(|w| w[1].index == w[0].index + 1));
        assert!(log.hard_state.commit >= 1 && log.hard_state.vote == metadata.node_id);
        let mut written = Vec::new();
        let mut published = false;
        for entry in log.entries.iter().filter(|e| e.kind == ENTRY_NORMAL) {
            match entries::decode(&entry.data, &|_| Ok(String::new())) {
                Ok(Action::Apply(request)) => {
                    if let Some(Request::Put(put)) = &request.request {
                        written.push((put.key.to_vec(), put.value.to_vec()));
                    }
                }
                Ok(Action::MemberAttributes { id, attributes }) => {
                    assert_eq!(id, metadata.node_id);
                    assert_eq!(attributes.name, "wal-test");
                    published = true;
                }
                Ok(Action::Skip(_)) => {}
                Err(refusal) => panic!("entry {}: {refusal}", entry.index),
            }
        }
        let expected: Vec<(Vec<u8>, Vec<u8>)> = puts
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(written, expected, "the puts, in order");
        assert!(
            published,
            "etcd 3.4 publishes its member attributes as a v2 request"
        );
    }
}
