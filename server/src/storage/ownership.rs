//! Whose data is in `--data-dir` (and `--wal-dir`)? keelson starts only on directories that
//! are empty, missing, or its own, and then marks them as its own.
//!
//! The danger this guards against is silent data loss: an operator who swaps etcd's binary
//! for keelson's with the same flags must never get a healthy member with an empty store
//! beside etcd's files (kube-apiserver would see an empty cluster). A complete etcd data dir
//! (`member/snap/db` and `member/wal/`) is adopted before this check runs (crate::adopt: keelson's
//! data dir is then `<data-dir>/keelson`); what is left of etcd's layout here (`member/snap/db`,
//! `member/snap/*.snap`, `member/wal/*.wal` without the rest) and anything else keelson does
//! not recognise is a fatal error that says what was found and what to do.
//!
//! keelson's own layout: `member/db/` (RocksDB), `member/snap/` (raft snapshots),
//! `member/snap-incoming/` (snapshots arriving from a leader),
//! `member/keelson.json` (the marker below), `fixtures/` (`--auto-tls` certificates, where
//! etcd keeps them too). A `lost+found` directory (the root of a freshly formatted volume,
//! e.g. a Kubernetes PersistentVolume) is the file system's, not data, and is ignored.
//!
//! The marker records the format and the WAL directory the data was written with: RocksDB
//! opened on its data without the WAL files that go with it would silently lose the writes
//! not yet flushed, so a restart with another `--wal-dir` is refused too. Directories made
//! before the marker existed are recognised by their RocksDB column families and adopted.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file that marks a data dir as keelson's.
pub const MARKER: &str = "keelson.json";
/// The file that marks a WAL dir as the WAL of one keelson data dir.
pub const WAL_MARKER: &str = "keelson-wal.json";
/// The data-dir format this keelson writes and reads.
const FORMAT: u32 = 1;

const LOST_FOUND: &str = "lost+found";
const MEMBER: &str = "member";
const FIXTURES: &str = "fixtures";
const DB: &str = "db";
const SNAP: &str = "snap";
/// Snapshots being received from a leader (cleared at every start).
const SNAP_INCOMING: &str = "snap-incoming";
/// Temporary files of `Maintenance.Snapshot` (snapshot/stream.rs).
pub const SNAP_EXPORT: &str = "snap-export";

const WHAT_TO_DO: &str = "keelson takes over an etcd data dir in place only when it holds both \
etcd's bbolt file (member/snap/db) and its log (member/wal/), and refuses to start beside a part \
of etcd's files rather than serve an empty store. Start keelson on etcd's complete data dir, or \
take a snapshot from the running etcd (`etcdctl snapshot save FILE`), restore it with `keelson \
snapshot restore FILE --data-dir NEW_DIR ...` (etcdctl's flags; see docs/migration.md) and start \
keelson on NEW_DIR";

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("{dir} holds an etcd data directory ({found}). {WHAT_TO_DO}")]
    EtcdData { dir: String, found: String },
    #[error(
        "{dir} holds files keelson does not recognise ({found}); refusing to start on data \
         that may not be keelson's. Point {flag} at an empty directory or at one keelson created"
    )]
    Unrecognised {
        dir: String,
        found: String,
        flag: &'static str,
    },
    #[error(
        "{dir} was written with the write-ahead log in {recorded}, but this start has it in \
         {configured}; starting would lose the writes still in that log. Start keelson with \
         the same --wal-dir as before"
    )]
    WalDirChanged {
        dir: String,
        recorded: String,
        configured: String,
    },
    #[error(
        "--wal-dir {wal_dir} holds the write-ahead log of another data dir ({owner}); each \
         member needs a WAL directory of its own"
    )]
    WalDirTaken { wal_dir: String, owner: String },
    #[error("--wal-dir {0} must be a directory of its own, not the data dir or a part of keelson's store")]
    WalDirInvalid(String),
    #[error("{dir} was written by a newer keelson (data format {found}, this one reads {FORMAT})")]
    NewerFormat { dir: String, found: u32 },
    #[error("cannot inspect {path}: {source}")]
    Io { path: String, source: io::Error },
}

type Result<T> = std::result::Result<T, OwnershipError>;

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> OwnershipError + '_ {
    move |source| OwnershipError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The content of [`MARKER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    format: u32,
    /// Where the RocksDB WAL lives; `None` = inside `member/db` (no `--wal-dir`).
    wal_dir: Option<PathBuf>,
}

/// The content of [`WAL_MARKER`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WalMarker {
    data_dir: PathBuf,
}

/// What was found in a data dir.
#[derive(Debug, Default)]
struct Findings {
    /// etcd's files, relative to the directory inspected.
    etcd: Vec<String>,
    /// Anything else keelson does not know.
    unknown: Vec<String>,
    /// `member/db` is a RocksDB store with keelson's column families.
    keelson_store: bool,
    marker: Option<Marker>,
}

/// Checks that `data_dir` and `wal_dir` are empty, missing or keelson's, then records them
/// as keelson's (creating `member/` and the WAL dir, mode 0700). Call before opening the store.
pub fn claim(data_dir: &Path, wal_dir: Option<&Path>) -> Result<()> {
    let data_abs = std::path::absolute(data_dir).map_err(io_error(data_dir))?;
    let wal_abs = wal_dir
        .map(|w| std::path::absolute(w).map_err(io_error(w)))
        .transpose()?;
    if let Some(wal) = &wal_abs {
        let store = data_abs.join(MEMBER).join(DB);
        let snap = data_abs.join(MEMBER).join(SNAP);
        if *wal == data_abs
            || *wal == data_abs.join(MEMBER)
            || wal.starts_with(&store)
            || wal.starts_with(&snap)
            || data_abs.starts_with(wal)
        {
            return Err(OwnershipError::WalDirInvalid(wal.display().to_string()));
        }
    }
    let findings = inspect_data_dir(&data_abs, wal_abs.as_deref())?;
    let shown = data_dir.display().to_string();
    if !findings.etcd.is_empty() {
        return Err(OwnershipError::EtcdData {
            dir: shown,
            found: summarise(&findings.etcd),
        });
    }
    if !findings.unknown.is_empty() {
        return Err(OwnershipError::Unrecognised {
            dir: shown,
            found: summarise(&findings.unknown),
            flag: "--data-dir",
        });
    }
    if let Some(wal) = &wal_abs {
        check_wal_dir(wal, &data_abs)?;
    }
    let recorded = match &findings.marker {
        Some(marker) if marker.format > FORMAT => {
            return Err(OwnershipError::NewerFormat {
                dir: shown,
                found: marker.format,
            })
        }
        Some(marker) => Some(marker.wal_dir.clone()),
        // Written before the marker existed, when the WAL was always inside member/db.
        None if findings.keelson_store => Some(None),
        None => None,
    };
    if let Some(recorded) = recorded {
        if recorded != wal_abs {
            let describe = |w: &Option<PathBuf>| match w {
                Some(p) => p.display().to_string(),
                None => format!(
                    "{} (no --wal-dir)",
                    data_abs.join(MEMBER).join(DB).display()
                ),
            };
            return Err(OwnershipError::WalDirChanged {
                dir: shown,
                recorded: describe(&recorded),
                configured: describe(&wal_abs),
            });
        }
    }
    let member = data_abs.join(MEMBER);
    create_private_dir(&member)?;
    if findings.marker.is_none() {
        let marker = Marker {
            format: FORMAT,
            wal_dir: wal_abs.clone(),
        };
        write_json(&member.join(MARKER), &marker)?;
    }
    if let Some(wal) = &wal_abs {
        create_private_dir(wal)?;
        let path = wal.join(WAL_MARKER);
        if !path.exists() {
            write_json(
                &path,
                &WalMarker {
                    data_dir: data_abs.clone(),
                },
            )?;
        }
    }
    Ok(())
}

/// Marks `build_dir`, a data dir being built under a temporary name that will become
/// `data_dir`, as keelson's with its write-ahead log in `wal_dir` (which must not exist yet):
/// what `claim` records for a start with `--data-dir data_dir --wal-dir wal_dir`.
pub fn claim_restored(build_dir: &Path, data_dir: &Path, wal_dir: &Path) -> Result<()> {
    let data_abs = std::path::absolute(data_dir).map_err(io_error(data_dir))?;
    let wal_abs = std::path::absolute(wal_dir).map_err(io_error(wal_dir))?;
    if wal_abs.starts_with(&data_abs) || data_abs.starts_with(&wal_abs) {
        return Err(OwnershipError::WalDirInvalid(wal_abs.display().to_string()));
    }
    let member = build_dir.join(MEMBER);
    create_private_dir(&member)?;
    write_json(
        &member.join(MARKER),
        &Marker {
            format: FORMAT,
            wal_dir: Some(wal_abs.clone()),
        },
    )?;
    create_private_dir(&wal_abs)?;
    write_json(&wal_abs.join(WAL_MARKER), &WalMarker { data_dir: data_abs })
}

/// A few names, then how many more.
fn summarise(found: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = found
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if found.len() > SHOWN {
        text.push_str(&format!(" and {} more", found.len() - SHOWN));
    }
    text
}

/// The entries of `dir` (name, is a directory); `None` when it does not exist.
fn entries(dir: &Path) -> Result<Option<Vec<(String, bool)>>> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(io_error(dir))?;
        let is_dir = entry.file_type().map_err(io_error(dir))?.is_dir();
        out.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
    }
    out.sort();
    Ok(Some(out))
}

fn inspect_data_dir(data_dir: &Path, wal_dir: Option<&Path>) -> Result<Findings> {
    let mut findings = Findings::default();
    let Some(top) = entries(data_dir)? else {
        return Ok(findings);
    };
    for (name, is_dir) in top {
        let path = data_dir.join(&name);
        // The WAL dir may live inside the data dir (etcd's default is member/wal); it is
        // inspected on its own.
        if wal_dir.is_some_and(|w| w.starts_with(&path)) && name != MEMBER {
            continue;
        }
        match (name.as_str(), is_dir) {
            (LOST_FOUND, true) | (FIXTURES, true) => {}
            // The record of the etcd files an adopted data dir was imported from.
            (crate::adopt::ADOPTED_FROM, false) => {}
            (MEMBER, true) => inspect_member(&path, wal_dir, &mut findings)?,
            _ => findings.unknown.push(name),
        }
    }
    Ok(findings)
}

fn inspect_member(member: &Path, wal_dir: Option<&Path>, findings: &mut Findings) -> Result<()> {
    for (name, is_dir) in entries(member)?.unwrap_or_default() {
        let path = member.join(&name);
        let shown = format!("{MEMBER}/{name}");
        if Some(path.as_path()) == wal_dir {
            continue;
        }
        match (name.as_str(), is_dir) {
            (DB, true) => inspect_store(&path, &shown, findings)?,
            // etcd's bbolt database is the file member/snap/db.
            (SNAP, true) => inspect_snap(&path, &shown, findings)?,
            (SNAP_INCOMING, true) | (SNAP_EXPORT, true) => {}
            ("wal", true) => {
                let wal_files: Vec<String> = entries(&path)?
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(n, _)| format!("{shown}/{n}"))
                    .collect();
                if wal_files.is_empty() {
                    findings.etcd.push(shown);
                } else {
                    findings.etcd.extend(wal_files);
                }
            }
            // A marker write that a crash interrupted; the marker is written again.
            (n, false) if n == format!("{MARKER}.tmp") => {}
            (MARKER, false) => {
                let raw = fs::read(&path).map_err(io_error(&path))?;
                match serde_json::from_slice::<Marker>(&raw) {
                    Ok(marker) => findings.marker = Some(marker),
                    Err(_) => findings.unknown.push(shown),
                }
            }
            _ => findings.unknown.push(shown),
        }
    }
    Ok(())
}

/// `member/db`: keelson's RocksDB store (or empty, when a first start stopped early).
fn inspect_store(store: &Path, shown: &str, findings: &mut Findings) -> Result<()> {
    let contents = entries(store)?.unwrap_or_default();
    if contents.is_empty() {
        return Ok(());
    }
    let has_current = contents.iter().any(|(n, d)| n == "CURRENT" && !d);
    if !has_current {
        findings
            .unknown
            .push(format!("{shown} (not a RocksDB store)"));
        return Ok(());
    }
    match rocksdb::DB::list_cf(&rocksdb::Options::default(), store) {
        Ok(cfs) => {
            let theirs: std::collections::BTreeSet<&str> = cfs.iter().map(String::as_str).collect();
            let ours: std::collections::BTreeSet<&str> = super::all_column_families()
                .into_iter()
                .chain(["default"])
                .collect();
            if theirs.is_subset(&ours) && theirs.contains(super::CF_KV) {
                findings.keelson_store = true;
            } else {
                findings.unknown.push(format!(
                    "{shown} (a RocksDB store with column families {})",
                    cfs.join(", ")
                ));
            }
        }
        Err(e) => findings
            .unknown
            .push(format!("{shown} (unreadable RocksDB store: {e})")),
    }
    Ok(())
}

/// `member/snap`: keelson's snapshots (`CURRENT`, `<term>-<index>` directories) or etcd's
/// (`db`, `*.snap`, `*.snap.db`).
fn inspect_snap(snap: &Path, shown: &str, findings: &mut Findings) -> Result<()> {
    for (name, is_dir) in entries(snap)?.unwrap_or_default() {
        let item = format!("{shown}/{name}");
        let is_keelson = if is_dir {
            is_snapshot_dir_name(name.trim_end_matches(".tmp"))
        } else {
            name == "CURRENT" || name == "CURRENT.tmp"
        };
        if is_keelson {
            continue;
        }
        let is_etcd = !is_dir
            && (name == "db"
                || name.ends_with(".snap")
                || name.ends_with(".snap.db")
                || name.ends_with(".snap.broken"));
        if is_etcd {
            findings.etcd.push(item);
        } else {
            findings.unknown.push(item);
        }
    }
    Ok(())
}

/// `<term>-<index>`, both 16 hex digits (raft/snapshot.rs).
fn is_snapshot_dir_name(name: &str) -> bool {
    let hex16 = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
    name.split_once('-')
        .is_some_and(|(term, index)| hex16(term) && hex16(index))
}

/// The WAL dir holds RocksDB log files of this data dir only.
fn check_wal_dir(wal: &Path, data_dir: &Path) -> Result<()> {
    let mut etcd = Vec::new();
    let mut unknown = Vec::new();
    for (name, is_dir) in entries(wal)?.unwrap_or_default() {
        match (name.as_str(), is_dir) {
            (LOST_FOUND, true) => {}
            (WAL_MARKER, false) => {
                let path = wal.join(WAL_MARKER);
                let raw = fs::read(&path).map_err(io_error(&path))?;
                match serde_json::from_slice::<WalMarker>(&raw) {
                    Ok(marker) if marker.data_dir == data_dir => {}
                    Ok(marker) => {
                        return Err(OwnershipError::WalDirTaken {
                            wal_dir: wal.display().to_string(),
                            owner: marker.data_dir.display().to_string(),
                        })
                    }
                    Err(_) => unknown.push(name),
                }
            }
            (n, false) if is_rocksdb_wal_name(n) || n == format!("{WAL_MARKER}.tmp") => {}
            (n, false) if n.ends_with(".wal") || n.ends_with(".tmp") => etcd.push(name),
            _ => unknown.push(name),
        }
    }
    let shown = wal.display().to_string();
    if !etcd.is_empty() {
        return Err(OwnershipError::EtcdData {
            dir: shown,
            found: summarise(&etcd),
        });
    }
    if !unknown.is_empty() {
        return Err(OwnershipError::Unrecognised {
            dir: shown,
            found: summarise(&unknown),
            flag: "--wal-dir",
        });
    }
    Ok(())
}

/// RocksDB's log files: `<number>.log`.
fn is_rocksdb_wal_name(name: &str) -> bool {
    name.strip_suffix(".log")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
    }
    Ok(())
}

/// Writes `value` durably: a temporary file, fsync, rename, fsync of the directory.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value).map_err(|e| OwnershipError::Io {
        path: path.display().to_string(),
        source: io::Error::other(e),
    })?;
    let mut file = fs::File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(&body).map_err(io_error(&tmp))?;
    file.write_all(b"\n").map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_error(parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
