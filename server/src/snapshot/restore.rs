//! `keelson snapshot restore`: builds a keelson data dir from an etcd snapshot (made by etcd or
//! by keelson), with the whole history the file holds and a new membership from the flags, as
//! `etcdctl snapshot restore` does for etcd.
//!
//! The data dir is built under a temporary name beside the target, fsynced, and renamed into
//! place only when complete: a bad file or a crash leaves no half-made data dir.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use prost::Message;
use rocksdb::WriteBatch;

use super::bbolt::BoltReader;
use super::etcd::{self, LeaseRecord};
use super::SnapshotError;
use crate::boot::{save_identity, Identity};
use crate::member::identity;
use crate::mvcc::keys::{decode_version_key, version_key};
use crate::mvcc::record::Record;
use crate::mvcc::write::lease_key_entry;
use crate::mvcc::{
    META_COMPACT_FINISHED, META_COMPACT_SCHEDULED, META_CURRENT_REVISION, META_KEYS_TOTAL,
};
use crate::proto::mvccpb::KeyValue;
use crate::raft::MemberNode;
use crate::storage::{scan_options, Storage, CF_KV, CF_LEASE, CF_LEASE_KEYS, CF_META, CF_REV};

/// Changes per RocksDB batch while loading.
const BATCH_CHANGES: usize = 10_000;

/// etcdctl's `snapshot restore` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub name: String,
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub skip_hash_check: bool,
    /// etcdctl's `--wal-dir`: the store's write-ahead log in a directory of its own (start
    /// keelson with the same `--wal-dir` afterwards).
    pub wal_dir: Option<PathBuf>,
}

/// The auth state a restore brought in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoredAuth {
    pub enabled: bool,
    pub revision: u64,
    pub users: u64,
    pub roles: u64,
}

/// What a restore brought in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub revision: i64,
    pub compacted: i64,
    pub changes: u64,
    pub keys: i64,
    pub leases: u64,
    pub member_id: u64,
    pub cluster_id: u64,
    /// The file's auth state, now the new data dir's.
    pub auth: RestoredAuth,
}

pub fn run(opts: &RestoreOptions) -> Result<Restored, SnapshotError> {
    if opts.data_dir.exists() {
        return Err(SnapshotError::Usage(format!(
            "data-dir {:?} exists",
            opts.data_dir.display().to_string()
        )));
    }
    if let Some(wal_dir) = &opts.wal_dir {
        if wal_dir.exists() {
            return Err(SnapshotError::Usage(format!(
                "wal-dir {:?} exists",
                wal_dir.display().to_string()
            )));
        }
    }
    let ident = identity_from_flags(opts)?;
    let db_len = super::verify(&opts.file, opts.skip_hash_check)?;
    let reader = BoltReader::new(File::open(&opts.file)?, db_len)?;
    let temp = temp_dir_for(&opts.data_dir)?;
    let built = build(&reader, &temp, opts, &ident);
    let restored = match built {
        Ok(restored) => restored,
        Err(e) => {
            let _ = fs::remove_dir_all(&temp);
            if let Some(wal_dir) = &opts.wal_dir {
                let _ = fs::remove_dir_all(wal_dir);
            }
            return Err(e);
        }
    };
    fs::rename(&temp, &opts.data_dir)?;
    sync_dir(parent_of(&opts.data_dir))?;
    Ok(restored)
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A fresh sibling of `data_dir` to build in (on the same file system, so the rename is atomic).
fn temp_dir_for(data_dir: &Path) -> Result<PathBuf, SnapshotError> {
    let name = data_dir
        .file_name()
        .ok_or_else(|| SnapshotError::Usage("--data-dir names no directory".into()))?;
    let mut temp_name = name.to_os_string();
    temp_name.push(format!(".restoring-{}", std::process::id()));
    let temp = parent_of(data_dir).join(temp_name);
    if temp.exists() {
        fs::remove_dir_all(&temp)?;
    }
    Ok(temp)
}

/// The member and cluster IDs and the membership, from the flags, as etcd derives them.
fn identity_from_flags(opts: &RestoreOptions) -> Result<Identity, SnapshotError> {
    let mine = opts.initial_cluster.get(&opts.name).ok_or_else(|| {
        SnapshotError::Usage(format!(
            "--initial-cluster has no member named {:?} (--name)",
            opts.name
        ))
    })?;
    let mut a = mine.clone();
    let mut b = opts.initial_advertise_peer_urls.clone();
    a.sort();
    b.sort();
    if a != b {
        return Err(SnapshotError::Usage(format!(
            "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
            opts.name,
            mine.join(","),
            opts.initial_advertise_peer_urls.join(",")
        )));
    }
    let members: BTreeMap<u64, MemberNode> = opts
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let id = identity::member_id(urls, &opts.initial_cluster_token);
            let node = MemberNode {
                name: name.clone(),
                peer_urls: urls.clone(),
                client_urls: Vec::new(),
            };
            (id, node)
        })
        .collect();
    let ids: Vec<u64> = members.keys().copied().collect();
    Ok(Identity {
        member_id: identity::member_id(mine, &opts.initial_cluster_token),
        cluster_id: identity::cluster_id(&ids),
        joined: false,
        initial_members: Some(members),
    })
}

fn build(
    reader: &BoltReader,
    dir: &Path,
    opts: &RestoreOptions,
    ident: &Identity,
) -> Result<Restored, SnapshotError> {
    let store_error =
        |e: crate::storage::ownership::OwnershipError| SnapshotError::Store(e.to_string());
    match &opts.wal_dir {
        None => crate::storage::ownership::claim(dir, None).map_err(store_error)?,
        // The markers name the data dir by its final name, not the one it is built under.
        Some(wal_dir) => crate::storage::ownership::claim_restored(dir, &opts.data_dir, wal_dir)
            .map_err(store_error)?,
    }
    let store_dir = dir.join("member").join("db");
    let storage = Storage::open_with_wal(&store_dir, opts.wal_dir.as_deref())?;
    let loaded = load_backend(reader, &storage)?;
    save_identity(&storage, ident).map_err(|e| SnapshotError::Store(e.to_string()))?;
    make_durable(&storage)?;
    drop(storage);
    sync_tree(dir)?;
    if let Some(wal_dir) = &opts.wal_dir {
        sync_tree(wal_dir)?;
        sync_dir(parent_of(wal_dir))?;
    }
    Ok(Restored {
        revision: loaded.revision,
        compacted: loaded.compacted,
        changes: loaded.changes,
        keys: loaded.keys,
        leases: loaded.leases,
        member_id: ident.member_id,
        cluster_id: ident.cluster_id,
        auth: loaded.auth,
    })
}

/// What [`load_backend`] brought into a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub revision: i64,
    pub compacted: i64,
    pub changes: u64,
    pub keys: i64,
    pub leases: u64,
    pub alarms: u64,
    pub auth: RestoredAuth,
}

/// Loads etcd's buckets (keys with their whole retained history, leases, compaction, auth,
/// alarms) into a new, empty store. Used by restore and by the adoption of an etcd data dir.
pub(crate) fn load_backend(
    reader: &BoltReader,
    storage: &Storage,
) -> Result<Loaded, SnapshotError> {
    let leases = load_leases(reader, storage)?;
    let (changes, last_main) = load_changes(reader, storage)?;
    let (finished, scheduled) = read_compaction(reader)?;
    let keys = index_live_keys(storage, &leases)?;
    let auth = load_auth(reader, storage)?;
    let alarms = load_alarms(reader, storage)?;
    let revision = last_main.max(finished).max(scheduled).max(1);
    let mut batch = WriteBatch::default();
    let meta = storage.cf(CF_META);
    batch.put_cf(meta, META_CURRENT_REVISION, revision.to_be_bytes());
    batch.put_cf(meta, META_KEYS_TOTAL, keys.to_be_bytes());
    if finished > 0 {
        batch.put_cf(meta, META_COMPACT_FINISHED, finished.to_be_bytes());
    }
    if scheduled > 0 {
        batch.put_cf(meta, META_COMPACT_SCHEDULED, scheduled.to_be_bytes());
    }
    storage.write(batch)?;
    Ok(Loaded {
        revision,
        compacted: finished.max(scheduled),
        changes,
        keys,
        leases: leases.len() as u64,
        alarms,
        auth,
    })
}

/// etcd's `alarm` bucket (keys are `AlarmMember` messages): raised alarms stay raised, as
/// etcd keeps them across its own restore (it copies the bucket with the rest of the file).
fn load_alarms(reader: &BoltReader, storage: &Storage) -> Result<u64, SnapshotError> {
    use crate::proto::etcdserverpb::AlarmMember;
    let Some(bucket) = reader.bucket(etcd::BUCKET_ALARM)? else {
        return Ok(0);
    };
    let alarms = crate::member::alarms::Alarms::load(storage)?;
    let mut batch = WriteBatch::default();
    let mut count = 0;
    for entry in bucket {
        let entry = entry?;
        let alarm = AlarmMember::decode(entry.key.as_slice())
            .map_err(|e| SnapshotError::File(format!("unreadable alarm: {e}")))?;
        if alarms
            .activate(&mut batch, storage, alarm.member_id, alarm.alarm)
            .is_some()
        {
            count += 1;
        }
    }
    storage.write(batch)?;
    Ok(count)
}

/// The `lease` bucket into the `lease` column family; returns the lease IDs.
fn load_leases(reader: &BoltReader, storage: &Storage) -> Result<HashSet<i64>, SnapshotError> {
    let mut ids = HashSet::new();
    let Some(bucket) = reader.bucket(etcd::BUCKET_LEASE)? else {
        return Ok(ids);
    };
    let mut batch = WriteBatch::default();
    for entry in bucket {
        let entry = entry?;
        let lease = LeaseRecord::decode(entry.value.as_slice())
            .map_err(|e| SnapshotError::File(format!("unreadable lease: {e}")))?;
        batch.put_cf(
            storage.cf(CF_LEASE),
            (lease.id as u64).to_be_bytes(),
            crate::lease::stored_lease(lease.ttl, lease.remaining_ttl),
        );
        ids.insert(lease.id);
    }
    storage.write(batch)?;
    Ok(ids)
}

/// The `key` bucket (every retained change, tombstones included) into `kv` and `rev`.
/// Returns the number of changes and the last main revision.
fn load_changes(reader: &BoltReader, storage: &Storage) -> Result<(u64, i64), SnapshotError> {
    let Some(bucket) = reader.bucket(etcd::BUCKET_KEY)? else {
        return Ok((0, 0));
    };
    let (kv_cf, rev_cf) = (storage.cf(CF_KV), storage.cf(CF_REV));
    let mut batch = WriteBatch::default();
    let mut pending = 0;
    let mut count = 0u64;
    let mut last_main = 0;
    for entry in bucket {
        let entry = entry?;
        let (rev, tombstone) = etcd::parse_revision_key(&entry.key)
            .ok_or_else(|| SnapshotError::File("a key bucket entry is not a revision".into()))?;
        let kv = KeyValue::decode(entry.value.as_slice())
            .map_err(|e| SnapshotError::File(format!("unreadable key-value at {rev:?}: {e}")))?;
        let record = if tombstone {
            Record::Tombstone
        } else {
            Record::Put {
                create_revision: kv.create_revision,
                version: kv.version,
                lease: kv.lease,
                value: kv.value,
            }
        };
        batch.put_cf(kv_cf, version_key(&kv.key, rev), record.encode());
        batch.put_cf(rev_cf, rev.index_key(), &kv.key);
        last_main = rev.main;
        count += 1;
        pending += 1;
        if pending == BATCH_CHANGES {
            storage.write(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    storage.write(batch)?;
    Ok((count, last_main))
}

/// etcd's finished and scheduled compaction revisions (0 when none).
fn read_compaction(reader: &BoltReader) -> Result<(i64, i64), SnapshotError> {
    let (mut finished, mut scheduled) = (0, 0);
    if let Some(bucket) = reader.bucket(etcd::BUCKET_META)? {
        for entry in bucket {
            let entry = entry?;
            let target = match entry.key.as_slice() {
                etcd::META_FINISHED_COMPACT => &mut finished,
                etcd::META_SCHEDULED_COMPACT => &mut scheduled,
                _ => continue,
            };
            *target = etcd::parse_compact_value(&entry.value).ok_or_else(|| {
                SnapshotError::File("unreadable compaction revision in the meta bucket".into())
            })?;
        }
    }
    Ok((finished, scheduled))
}

/// etcd's `auth`, `authUsers` and `authRoles` buckets into the auth store's keys in `meta`.
/// keelson keeps etcd's encodings (see `crate::auth`), so values are carried as they are once
/// checked: users keep their bcrypt hashes, and the auth revision stays what etcd's was, so a
/// token etcd issued is no more valid here than there (simple tokens are not carried at all).
fn load_auth(reader: &BoltReader, storage: &Storage) -> Result<RestoredAuth, SnapshotError> {
    use crate::auth::{KEY_ENABLED, KEY_REVISION, ROLE_PREFIX, USER_PREFIX};
    use crate::proto::authpb::{Role, User};

    // A file without an `authRevision` comes from an etcd that never opened its auth store
    // (which writes one at once): etcd's initial revision.
    let mut restored = RestoredAuth {
        revision: 1,
        ..Default::default()
    };
    let meta = storage.cf(CF_META);
    let mut batch = WriteBatch::default();
    if let Some(bucket) = reader.bucket(etcd::BUCKET_AUTH)? {
        for entry in bucket {
            let entry = entry?;
            match entry.key.as_slice() {
                etcd::AUTH_ENABLED_KEY => {
                    // etcd counts only the byte 1 as enabled; anything else reads as disabled.
                    restored.enabled = entry.value == [1];
                    batch.put_cf(meta, KEY_ENABLED, [u8::from(restored.enabled)]);
                }
                etcd::AUTH_REVISION_KEY => {
                    let raw: [u8; 8] = entry.value.as_slice().try_into().map_err(|_| {
                        SnapshotError::File(format!(
                            "the auth revision is {} bytes, not 8",
                            entry.value.len()
                        ))
                    })?;
                    restored.revision = u64::from_be_bytes(raw);
                    batch.put_cf(meta, KEY_REVISION, raw);
                }
                _ => {}
            }
        }
    }
    if let Some(bucket) = reader.bucket(etcd::BUCKET_AUTH_USERS)? {
        for entry in bucket {
            let entry = entry?;
            User::decode(entry.value.as_slice()).map_err(|e| {
                SnapshotError::File(format!(
                    "unreadable user {:?}: {e}",
                    String::from_utf8_lossy(&entry.key)
                ))
            })?;
            batch.put_cf(meta, [USER_PREFIX, &entry.key].concat(), &entry.value);
            restored.users += 1;
        }
    }
    if let Some(bucket) = reader.bucket(etcd::BUCKET_AUTH_ROLES)? {
        for entry in bucket {
            let entry = entry?;
            Role::decode(entry.value.as_slice()).map_err(|e| {
                SnapshotError::File(format!(
                    "unreadable role {:?}: {e}",
                    String::from_utf8_lossy(&entry.key)
                ))
            })?;
            batch.put_cf(meta, [ROLE_PREFIX, &entry.key].concat(), &entry.value);
            restored.roles += 1;
        }
    }
    storage.write(batch)?;
    Ok(restored)
}

/// One pass over `kv` in key order: counts the live keys (newest version a put) and attaches
/// each live key to its lease, as etcd's restore attaches them.
fn index_live_keys(storage: &Storage, leases: &HashSet<i64>) -> Result<i64, SnapshotError> {
    let db = storage.db();
    let mut iter = db.raw_iterator_cf_opt(storage.cf(CF_KV), scan_options());
    iter.seek_to_first();
    let mut previous: Option<Vec<u8>> = None;
    let mut live = 0i64;
    let mut batch = WriteBatch::default();
    while iter.valid() {
        let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
            break;
        };
        let (user_key, _) = decode_version_key(key)
            .ok_or_else(|| SnapshotError::Store("unreadable version key".into()))?;
        if previous.as_deref() != Some(&user_key[..]) {
            // The first version of a key is its newest.
            if let Record::Put { lease, .. } =
                Record::decode(value).map_err(|e| SnapshotError::Store(e.to_string()))?
            {
                live += 1;
                if lease != 0 && leases.contains(&lease) {
                    batch.put_cf(
                        storage.cf(CF_LEASE_KEYS),
                        lease_key_entry(lease, &user_key),
                        [],
                    );
                }
            }
            previous = Some(user_key.to_vec());
        }
        iter.next();
    }
    iter.status()?;
    drop(iter);
    storage.write(batch)?;
    Ok(live)
}

/// Flushes the memtables to SST files and fsyncs RocksDB's WAL.
pub(crate) fn make_durable(storage: &Storage) -> Result<(), SnapshotError> {
    for name in crate::storage::all_column_families() {
        storage.db().flush_cf(storage.cf(name))?;
    }
    storage.sync_wal()?;
    Ok(())
}

/// fsyncs every file and directory under `dir` (RocksDB syncs its own files; the directory
/// entries and the marker are ours to make durable before the rename publishes them).
pub(crate) fn sync_tree(dir: &Path) -> Result<(), SnapshotError> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}
