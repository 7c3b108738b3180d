//! etcd 3.4's raft snapshot files (`member/snap/<term>-<index>.snap`): only the membership
//! they record is read. In etcd 3.4 the member list lives in the v2 store these files hold
//! and in the log; the bbolt `members` bucket is not kept exact (`etcdctl snapshot restore`
//! leaves the old cluster's members in it), so the set of members comes from here.

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;

/// snappb.Snapshot: the file's framing.
#[derive(Clone, PartialEq, Message)]
struct SnapFile {
    #[prost(uint32, tag = "1")]
    crc: u32,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

/// raftpb.Snapshot, without its data (the v2 store).
#[derive(Clone, PartialEq, Message)]
struct RaftSnapshot {
    #[prost(message, optional, tag = "2")]
    metadata: Option<SnapshotMetadata>,
}

#[derive(Clone, PartialEq, Message)]
struct SnapshotMetadata {
    #[prost(message, optional, tag = "1")]
    conf_state: Option<ConfState>,
    #[prost(uint64, tag = "2")]
    index: u64,
    #[prost(uint64, tag = "3")]
    term: u64,
}

#[derive(Clone, PartialEq, Message)]
struct ConfState {
    #[prost(uint64, repeated, tag = "1")]
    voters: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    learners: Vec<u64>,
}

/// The membership a snapshot file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapMembership {
    pub file: PathBuf,
    pub index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// The newest `.snap` file of `dir`, if any. Names are `<term>-<index>.snap` in 16 hex digits
/// each, so name order is index order within a term and terms only grow.
pub fn newest(dir: &Path) -> Result<Option<SnapMembership>, String> {
    let listed = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in listed {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "snap") {
            names.push(path);
        }
    }
    names.sort();
    let Some(file) = names.pop() else {
        return Ok(None);
    };
    read(&file).map(Some)
}

fn read(file: &Path) -> Result<SnapMembership, String> {
    let bytes = fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let framed = SnapFile::decode(bytes.as_slice())
        .map_err(|e| format!("{}: unreadable snapshot file: {e}", file.display()))?;
    let crc = crc32c::crc32c(&framed.data);
    if crc != framed.crc {
        return Err(format!(
            "{}: CRC mismatch (the file says {:08x}, its data gives {crc:08x})",
            file.display(),
            framed.crc
        ));
    }
    let snapshot = RaftSnapshot::decode(framed.data.as_slice())
        .map_err(|e| format!("{}: unreadable raft snapshot: {e}", file.display()))?;
    let metadata = snapshot.metadata.unwrap_or_default();
    let conf = metadata.conf_state.unwrap_or_default();
    Ok(SnapMembership {
        file: file.to_path_buf(),
        index: metadata.index,
        voters: conf.voters,
        learners: conf.learners,
    })
}
