//! Taking over a data dir that etcd 3.4 left (a stopped etcd's, or one `etcdctl snapshot
//! restore` wrote) in place, so that a kubeadm user migrates by changing only the image.
//!
//! keelson's own store is built beside etcd's files, in `<data-dir>/keelson/`, which then is
//! keelson's data dir in every respect (docs/storage.md); etcd's `member/` is only read, never
//! changed, so that going back means starting etcd again. The import:
//!
//! 1. reads etcd's log (`member/wal`, see [`wal`]) and its bbolt file (`member/snap/db`);
//! 2. loads the bbolt file as `keelson snapshot restore` does (the whole retained history);
//! 3. replays, through keelson's own applier, every log entry newer than the file's consistent
//!    index (the last entry the file holds), as etcd itself does when it restarts;
//! 4. keeps the cluster ID and member ID from the log and the member's name and URLs from the
//!    `members` bucket and the log's membership changes.
//!
//! It is built under a temporary name, made durable and renamed into place: a crash halfway
//! leaves etcd's files as they were and the next start imports again. Anything that cannot be
//! carried over exactly is a refusal that names the entry or file; nothing is dropped silently.

pub mod entries;
pub mod snap;
pub mod wal;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use serde::Deserialize;

use crate::auth::tokens::TokenProvider;
use crate::auth::AuthStore;
use crate::boot::{save_identity, Identity};
use crate::config::Config;
use crate::lease::{self, Lessor};
use crate::member::applier::Applier;
use crate::mvcc::MvccStore;
use crate::raft::MemberNode;
use crate::snapshot::bbolt::BoltReader;
use crate::snapshot::etcd as etcd_format;
use crate::snapshot::restore;
use crate::storage::Storage;
use entries::Action;
use wal::{ENTRY_CONF_CHANGE, ENTRY_NORMAL};

/// The subdirectory of an adopted etcd data dir that holds keelson's data dir.
pub const KEELSON_DIR: &str = "keelson";
/// Where an import is built before it is renamed to [`KEELSON_DIR`].
pub const ADOPTING_DIR: &str = "keelson.adopting";

const WHAT_TO_DO: &str = "etcd's files were left unchanged. Start etcd on this data dir again, or \
migrate with a snapshot instead (`etcdctl snapshot save FILE`, then `keelson snapshot restore FILE \
...`, see docs/migration.md)";

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("cannot adopt etcd's data dir {dir}: {problem}. {WHAT_TO_DO}")]
    Refused { dir: String, problem: String },
    #[error("cannot adopt etcd's data dir {dir}: its log entry {index} (term {term}) is {what}. {WHAT_TO_DO}")]
    Entry {
        dir: String,
        index: u64,
        term: u64,
        what: String,
    },
}

/// Where etcd keeps its files in a data dir.
struct EtcdFiles {
    db: PathBuf,
    wal: PathBuf,
}

fn etcd_files(data_dir: &Path) -> EtcdFiles {
    let member = data_dir.join("member");
    EtcdFiles {
        db: member.join("snap").join("db"),
        wal: member.join("wal"),
    }
}

/// Whether `data_dir` holds etcd's files (its bbolt file and its log).
pub fn holds_etcd_data(data_dir: &Path) -> bool {
    let files = etcd_files(data_dir);
    files.db.is_file() && files.wal.is_dir()
}

/// The data dir keelson runs on: `config.data_dir` itself, or, when it holds etcd's data,
/// `<data-dir>/keelson` (imported now if it is not there yet).
pub fn resolve_data_dir(config: &Config) -> Result<PathBuf, AdoptError> {
    let data_dir = &config.data_dir;
    let adopted = data_dir.join(KEELSON_DIR);
    let was_adopted = adopted
        .join("member")
        .join(crate::storage::ownership::MARKER)
        .is_file();
    if !was_adopted && !holds_etcd_data(data_dir) {
        return Ok(data_dir.clone());
    }
    let refused = |problem: String| AdoptError::Refused {
        dir: data_dir.display().to_string(),
        problem,
    };
    if config.wal_dir.is_some() {
        return Err(refused(
            "adopting an etcd data dir with --wal-dir is not supported (keelson's --wal-dir is \
             the place of its own log, not etcd's); start without --wal-dir"
                .into(),
        ));
    }
    if was_adopted {
        if data_dir.join("member").exists() {
            check_etcd_unchanged(data_dir, &adopted).map_err(&refused)?;
            tracing::info!(dir = %adopted.display(), "running on the keelson store beside etcd's files (adopted earlier)");
        } else {
            // The operator removed etcd's files once the move was final.
            tracing::info!(dir = %adopted.display(), "running on the keelson store adopted earlier (etcd's files were removed)");
        }
        return Ok(adopted);
    }
    let started = Instant::now();
    let building = data_dir.join(ADOPTING_DIR);
    if building.exists() {
        // An import a crash interrupted: start it over.
        fs::remove_dir_all(&building)
            .map_err(|e| refused(format!("cannot remove {}: {e}", building.display())))?;
    }
    let origin = fingerprint(data_dir).map_err(&refused)?;
    let summary = match import(config, &building, &origin) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = fs::remove_dir_all(&building);
            return Err(e);
        }
    };
    let durable = fs::rename(&building, &adopted)
        .and_then(|()| File::open(data_dir).and_then(|d| d.sync_all()));
    durable.map_err(|e| refused(format!("cannot move the import into place: {e}")))?;
    tracing::info!(
        dir = %adopted.display(),
        member = %format!("{:x}", summary.member_id),
        cluster = %format!("{:x}", summary.cluster_id),
        consistent_index = summary.consistent_index,
        replayed_entries = summary.replayed,
        revision = summary.revision,
        took_ms = started.elapsed().as_millis() as u64,
        "adopted etcd's data dir; etcd's own files are unchanged"
    );
    Ok(adopted)
}

/// The file in keelson's data dir that records which state of etcd's files it was imported
/// from (see [`check_etcd_unchanged`]).
pub const ADOPTED_FROM: &str = "adopted-from-etcd.json";

/// Name, size and modification time of each of etcd's files: etcd changes them whenever it
/// runs (it writes its log on every start).
type Fingerprint = BTreeMap<String, (u64, u128)>;

fn fingerprint(data_dir: &Path) -> Result<Fingerprint, String> {
    let files = etcd_files(data_dir);
    let mut out = BTreeMap::new();
    for dir in [files.wal.as_path(), files.db.parent().unwrap_or(data_dir)] {
        let listed = match fs::read_dir(dir) {
            Ok(listed) => listed,
            // Gone since the import: a difference like any other.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        for entry in listed {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let meta = entry
                .metadata()
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let name = entry
                .path()
                .strip_prefix(data_dir)
                .unwrap_or(&entry.path())
                .display()
                .to_string();
            out.insert(name, (meta.len(), modified));
        }
    }
    Ok(out)
}

/// etcd must not have run on the dir since keelson imported it: keelson would serve the
/// import and silently miss what was written to etcd after it.
fn check_etcd_unchanged(data_dir: &Path, adopted: &Path) -> Result<(), String> {
    let path = adopted.join(ADOPTED_FROM);
    let raw = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let recorded: Fingerprint =
        serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
    if fingerprint(data_dir)? != recorded {
        return Err(format!(
            "etcd's files changed since keelson imported them into {} (etcd ran on this data dir \
             again), so that import would miss etcd's later writes. To import etcd's current \
             data, move {} away (it holds whatever was written on keelson) and start keelson again",
            adopted.display(),
            adopted.display()
        ));
    }
    Ok(())
}

/// What an import did.
#[derive(Debug, Clone, Copy)]
struct Summary {
    member_id: u64,
    cluster_id: u64,
    consistent_index: u64,
    replayed: u64,
    revision: i64,
}

/// etcd's member record (membership.Member), in the `members` bucket and in the context of a
/// membership change.
#[derive(Debug, Clone, Deserialize)]
struct EtcdMember {
    #[serde(default, rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(default, rename = "isLearner")]
    is_learner: bool,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "clientURLs")]
    client_urls: Vec<String>,
}

/// raftpb.ConfChange.
#[derive(Clone, PartialEq, Message)]
struct ConfChange {
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(uint64, tag = "3")]
    node_id: u64,
    #[prost(bytes = "vec", tag = "4")]
    context: Vec<u8>,
}

const CONF_ADD_NODE: i32 = 0;
const CONF_REMOVE_NODE: i32 = 1;
const CONF_UPDATE_NODE: i32 = 2;
const CONF_ADD_LEARNER: i32 = 3;

fn import(config: &Config, dir: &Path, origin: &Fingerprint) -> Result<Summary, AdoptError> {
    let data_dir = &config.data_dir;
    let shown = data_dir.display().to_string();
    let refused = |problem: String| AdoptError::Refused {
        dir: shown.clone(),
        problem,
    };
    let files = etcd_files(data_dir);
    // Held until the import is done: etcd cannot start on the dir meanwhile either.
    let _etcd_lock = lock_out_etcd(&files.wal).map_err(&refused)?;
    let log = wal::read_dir(&files.wal).map_err(|e| refused(e.to_string()))?;
    let metadata = log
        .metadata
        .ok_or_else(|| refused("its WAL has no metadata record (member and cluster IDs)".into()))?;
    let db_len = fs::metadata(&files.db)
        .map_err(|e| refused(format!("{}: {e}", files.db.display())))?
        .len();
    let db = File::open(&files.db).map_err(|e| refused(format!("{}: {e}", files.db.display())))?;
    let reader =
        BoltReader::new(db, db_len).map_err(|e| refused(format!("{}: {e}", files.db.display())))?;
    let consistent_index = read_consistent_index(&reader).map_err(&refused)?;
    if let Some(first) = log.entries.first() {
        if first.index > consistent_index + 1 {
            return Err(refused(format!(
                "its WAL starts at entry {} but {} holds entries up to {consistent_index} only: \
                 the entries between are missing",
                first.index,
                files.db.display()
            )));
        }
    }
    let snap_dir = files.db.parent().unwrap_or(data_dir);
    let members = membership(&reader, snap_dir, &log.entries, &shown)?;
    let me = single_member(&members, metadata.node_id, config).map_err(&refused)?;

    crate::storage::ownership::claim(dir, None).map_err(|e| refused(e.to_string()))?;
    let storage =
        Storage::open(&dir.join("member").join("db")).map_err(|e| refused(e.to_string()))?;
    restore::load_backend(&reader, &storage)
        .map_err(|e| refused(format!("{}: {e}", files.db.display())))?;
    let replayed = replay(config, &storage, &log.entries, consistent_index, &shown)?;
    let ident = Identity {
        member_id: metadata.node_id,
        cluster_id: metadata.cluster_id,
        joined: false,
        initial_members: Some(BTreeMap::from([(metadata.node_id, me)])),
    };
    save_identity(&storage, &ident).map_err(|e| refused(e.to_string()))?;
    let revision = current_revision(&storage).map_err(&refused)?;
    restore::make_durable(&storage).map_err(|e| refused(e.to_string()))?;
    // Closed here, or not at all: a store still open would be open twice once renamed.
    drop(sole_owner(storage).map_err(&refused)?);
    let recorded = serde_json::to_vec_pretty(origin).map_err(|e| refused(e.to_string()))?;
    fs::write(dir.join(ADOPTED_FROM), recorded).map_err(|e| refused(e.to_string()))?;
    restore::sync_tree(dir).map_err(|e| refused(e.to_string()))?;
    Ok(Summary {
        member_id: metadata.node_id,
        cluster_id: metadata.cluster_id,
        consistent_index,
        replayed,
        revision,
    })
}

fn current_revision(storage: &Storage) -> Result<i64, String> {
    let raw = storage
        .db()
        .get_cf(
            storage.cf(crate::storage::CF_META),
            crate::mvcc::META_CURRENT_REVISION,
        )
        .map_err(|e| e.to_string())?
        .ok_or("the import wrote no current revision")?;
    let raw: [u8; 8] = raw
        .as_slice()
        .try_into()
        .map_err(|_| "a bad current revision")?;
    Ok(i64::from_be_bytes(raw))
}

/// Takes a read lock on etcd's newest WAL file, which a running etcd holds write-locked (an
/// open file description lock on Linux, as etcd's fileutil takes it): an etcd still running on
/// the dir (a container that has not stopped yet) is refused, rather than imported while it
/// goes on acknowledging writes.
fn lock_out_etcd(wal_dir: &Path) -> Result<File, String> {
    use std::os::fd::AsRawFd;
    let files = wal::wal_files(wal_dir).map_err(|e| e.to_string())?;
    let newest = files
        .last()
        .ok_or_else(|| format!("{} holds no .wal file", wal_dir.display()))?;
    let file = File::open(newest).map_err(|e| format!("{}: {e}", newest.display()))?;
    // SAFETY: a zeroed `flock` is a valid value of this plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_RDLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on a descriptor this function owns, with a pointer to a local flock.
    let mut locked = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    let mut error = std::io::Error::last_os_error();
    if locked != 0 && error.raw_os_error() == Some(libc::EINVAL) {
        // A kernel without open file description locks: etcd used flock there (EWOULDBLOCK
        // is EAGAIN on Linux).
        // SAFETY: flock on a descriptor this function owns.
        locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        error = std::io::Error::last_os_error();
    }
    if locked != 0 {
        let held = matches!(
            error.raw_os_error(),
            Some(libc::EAGAIN) | Some(libc::EACCES)
        );
        return Err(if held {
            format!(
                "etcd is still running on it (it holds the lock on {}); stop etcd first",
                newest.display()
            )
        } else {
            format!("cannot lock {}: {error}", newest.display())
        });
    }
    Ok(file)
}

/// The index of the last entry the bbolt file holds. etcd reads a missing one as 0 (a file
/// killed before its first commit): then the whole log is replayed.
fn read_consistent_index(reader: &BoltReader) -> Result<u64, String> {
    let Some(meta) = reader
        .bucket(etcd_format::BUCKET_META)
        .map_err(|e| e.to_string())?
    else {
        return Ok(0);
    };
    for entry in meta {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.key == etcd_format::META_CONSISTENT_INDEX {
            let raw: [u8; 8] = entry
                .value
                .as_slice()
                .try_into()
                .map_err(|_| "the consistent index is not 8 bytes")?;
            return Ok(u64::from_be_bytes(raw));
        }
    }
    Ok(0)
}

/// The members at the end of the log.
#[derive(Debug, Default)]
struct Membership {
    /// Who is a member: the newest raft snapshot's configuration, then the log's changes after
    /// it (or all of the log's changes, when etcd took no snapshot yet).
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
    /// Names and URLs, from every source there is: the `members` bucket, then the log's
    /// membership changes and publishes, in order.
    details: BTreeMap<u64, EtcdMember>,
}

fn membership(
    reader: &BoltReader,
    snap_dir: &Path,
    log: &[wal::Entry],
    shown: &str,
) -> Result<Membership, AdoptError> {
    let refused = |problem: String| AdoptError::Refused {
        dir: shown.to_string(),
        problem,
    };
    let mut members = Membership::default();
    if let Some(bucket) = reader
        .bucket(etcd_format::BUCKET_MEMBERS)
        .map_err(|e| refused(e.to_string()))?
    {
        for entry in bucket {
            let entry = entry.map_err(|e| refused(e.to_string()))?;
            let key = String::from_utf8_lossy(&entry.key).into_owned();
            let id = u64::from_str_radix(&key, 16)
                .map_err(|_| refused(format!("the members bucket has the key {key:?}")))?;
            let member: EtcdMember = serde_json::from_slice(&entry.value)
                .map_err(|e| refused(format!("unreadable member {key}: {e}")))?;
            members.details.insert(id, member);
        }
    }
    let snapshot = snap::newest(snap_dir).map_err(&refused)?;
    let changes_after = match &snapshot {
        Some(snap) => {
            members.voters = snap.voters.iter().copied().collect();
            members.learners = snap.learners.iter().copied().collect();
            snap.index
        }
        None => 0,
    };
    let mut any_change = snapshot.is_some();
    for entry in log {
        let bad = |what: String| AdoptError::Entry {
            dir: shown.to_string(),
            index: entry.index,
            term: entry.term,
            what,
        };
        match entry.kind {
            ENTRY_CONF_CHANGE => {
                let change = ConfChange::decode(entry.data.as_slice())
                    .map_err(|e| bad(format!("an unreadable membership change ({e})")))?;
                let counts = entry.index > changes_after;
                any_change |= counts;
                members.apply_change(&change, counts).map_err(bad)?;
            }
            ENTRY_NORMAL => {
                if let Ok(Action::MemberAttributes { id, attributes }) =
                    entries::decode(&entry.data, &|_| Ok(String::new()))
                {
                    if let Some(member) = members.details.get_mut(&id) {
                        member.name = attributes.name;
                        member.client_urls = attributes.client_urls;
                    }
                }
            }
            other => {
                return Err(bad(format!(
                "of entry type {other} (etcd 3.5's joint consensus), which etcd 3.4 does not write"
            )))
            }
        }
    }
    if !any_change {
        // Neither a snapshot nor a membership change in the log: only the bucket knows.
        for (id, member) in &members.details {
            if member.is_learner {
                members.learners.insert(*id);
            } else {
                members.voters.insert(*id);
            }
        }
    }
    Ok(members)
}

impl Membership {
    /// One membership change; `counts`: it is newer than the snapshot, so it changes who is a
    /// member (older ones only tell names and URLs).
    fn apply_change(&mut self, change: &ConfChange, counts: bool) -> Result<(), String> {
        let id = change.node_id;
        match change.kind {
            CONF_ADD_NODE | CONF_ADD_LEARNER | CONF_UPDATE_NODE => {
                let mut member: EtcdMember = serde_json::from_slice(&change.context)
                    .map_err(|e| format!("a membership change with an unreadable member ({e})"))?;
                if let Some(known) = self.details.get(&id) {
                    if member.name.is_empty() {
                        member.name = known.name.clone();
                        member.client_urls = known.client_urls.clone();
                    }
                }
                self.details.insert(id, member);
                if counts {
                    match change.kind {
                        CONF_ADD_NODE => {
                            self.learners.remove(&id);
                            self.voters.insert(id);
                        }
                        CONF_ADD_LEARNER => {
                            self.learners.insert(id);
                        }
                        _ => {}
                    }
                }
            }
            CONF_REMOVE_NODE => {
                if counts {
                    self.voters.remove(&id);
                    self.learners.remove(&id);
                }
            }
            other => return Err(format!("a membership change of unknown type {other}")),
        }
        Ok(())
    }
}

/// This member, when it is the only one. A member of a larger cluster is refused: which of its
/// log's last entries the cluster committed is known only to the cluster, and the other members
/// would have to move to keelson at the same log position.
fn single_member(
    members: &Membership,
    member_id: u64,
    config: &Config,
) -> Result<MemberNode, String> {
    let all: BTreeSet<u64> = members.voters.union(&members.learners).copied().collect();
    if all.len() > 1 || !members.learners.is_empty() {
        let names: Vec<String> = all
            .iter()
            .map(|id| {
                let name = members.details.get(id).map_or("", |m| m.name.as_str());
                format!("{id:x} ({name})")
            })
            .collect();
        return Err(format!(
            "it belongs to a cluster of {} members ({}); keelson adopts the data dir of a \
             single-member cluster only. For a larger cluster, migrate with a snapshot",
            all.len(),
            names.join(", ")
        ));
    }
    if !all.contains(&member_id) {
        return Err(format!(
            "its log was written by member {member_id:x}, which is not a member of its cluster"
        ));
    }
    Ok(match members.details.get(&member_id) {
        Some(m) => MemberNode {
            name: if m.name.is_empty() {
                config.name.clone()
            } else {
                m.name.clone()
            },
            peer_urls: m.peer_urls.clone(),
            client_urls: m.client_urls.clone(),
        },
        // Nothing says more than the ID: the member is who the flags say.
        None => MemberNode {
            name: config.name.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
            client_urls: Vec::new(),
        },
    })
}

/// Applies every normal entry after `consistent_index`, as etcd does when it restarts.
/// Returns how many were applied.
fn replay(
    config: &Config,
    storage: &Arc<Storage>,
    log: &[wal::Entry],
    consistent_index: u64,
    shown: &str,
) -> Result<u64, AdoptError> {
    let refused = |problem: String| AdoptError::Refused {
        dir: shown.to_string(),
        problem,
    };
    let store = MvccStore::open(storage.clone()).map_err(|e| refused(e.to_string()))?;
    let lessor = Arc::new(
        Lessor::load(
            storage.clone(),
            lease::min_ttl(config.heartbeat_interval, config.election_timeout),
        )
        .map_err(|e| refused(e.to_string()))?,
    );
    let tokens = TokenProvider::new(&config.auth_token, config.auth_token_ttl)
        .map_err(|e| refused(e.to_string()))?;
    let auth = Arc::new(
        AuthStore::open(storage.clone(), tokens, config.bcrypt_cost)
            .map_err(|e| refused(e.to_string()))?,
    );
    let applier = Applier::new(store.clone(), lessor, auth).map_err(|e| refused(e.to_string()))?;
    // etcd replaces a cost outside bcrypt's range by its default; so does PasswordHasher.
    let cost = crate::auth::password::PasswordHasher::new(config.bcrypt_cost).cost();
    let hash_password = move |password: &str| {
        bcrypt::hash_with_result(password.as_bytes(), cost)
            .map(|parts| parts.format_for_version(bcrypt::Version::TwoA))
            .map_err(|e| format!("a password that cannot be hashed ({e})"))
    };
    let mut applied = 0;
    for entry in log.iter().filter(|e| e.index > consistent_index) {
        if entry.kind != ENTRY_NORMAL {
            // Membership changes were folded into the membership already.
            continue;
        }
        let bad = |what: String| AdoptError::Entry {
            dir: shown.to_string(),
            index: entry.index,
            term: entry.term,
            what,
        };
        match entries::decode(&entry.data, &hash_password).map_err(&bad)? {
            Action::Apply(request) => {
                let response = applier
                    .apply(entry.index, Some(&request), &|_| {})
                    .map_err(|e| bad(format!("not applicable here: {e}")))?;
                if !response.error.is_empty() {
                    // etcd refused it as well when it applied it (the same checks, in the
                    // same order); nothing was written then either.
                    tracing::debug!(index = entry.index, error = %response.error, "a replayed entry was refused, as etcd refused it");
                }
                applied += 1;
            }
            Action::Skip(why) => {
                tracing::debug!(index = entry.index, why, "nothing to replay");
            }
            Action::MemberAttributes { .. } => {}
        }
    }
    // The store must be closed before the import is renamed into place and opened again:
    // its compactor thread would otherwise go on holding (and writing) it. A compaction the
    // replay scheduled resumes at the next open.
    store.compactor().stop();
    // The watch hub's thread holds the hub (and the store) for up to a second at a time; a
    // wake-up makes it look again, find the hub gone and end.
    let hub = store.watch_hub().clone();
    drop(applier);
    drop(store);
    hub.set_progress_interval(Duration::from_secs(1));
    drop(hub);
    Ok(applied)
}

/// Takes the store back from the helpers that shared it during the import (their threads let
/// go within a second), so that it is closed before the import is moved into place.
fn sole_owner(mut storage: Arc<Storage>) -> Result<Storage, String> {
    let deadline = Instant::now() + SOLE_OWNER_WITHIN;
    loop {
        match Arc::try_unwrap(storage) {
            Ok(storage) => return Ok(storage),
            Err(shared) if Instant::now() < deadline => {
                storage = shared;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                return Err(format!(
                    "the import's store was still in use after {SOLE_OWNER_WITHIN:?} (a bug); \
                     nothing was moved into place"
                ))
            }
        }
    }
}

/// How long the import waits for its helpers' threads to let go of the store.
const SOLE_OWNER_WITHIN: Duration = Duration::from_secs(5);
