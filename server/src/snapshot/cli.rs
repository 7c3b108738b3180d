//! `keelson snapshot restore|status`: etcdctl's `snapshot` subcommands, with its flags (in
//! `--flag value` or `--flag=value` form) and its output.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::restore::{self, RestoreOptions};
use super::status::{self, Format};
use super::SnapshotError;

pub const USAGE: &str = "\
Usage:
  keelson snapshot restore FILE [--data-dir DIR] [--name NAME] [--initial-cluster NAME=URL,...]
                                [--initial-cluster-token TOKEN]
                                [--initial-advertise-peer-urls URL,...] [--skip-hash-check]
                                [--wal-dir DIR]
  keelson snapshot status FILE [-w simple|table|json]

restore builds a keelson data dir from an etcd snapshot (from `etcdctl snapshot save`, made by
etcd or by keelson): every revision it holds, leases, the compacted revision, and a new
cluster membership from the flags (defaults as etcdctl's). Start keelson on the data dir
afterwards (with the same --wal-dir, if one was given). status prints what `etcdctl snapshot status` prints.";

/// Runs the subcommand; returns what to print on stdout.
pub fn run(args: &[String]) -> Result<String, SnapshotError> {
    let (command, rest) = args
        .split_first()
        .ok_or_else(|| SnapshotError::Usage(USAGE.into()))?;
    let parsed = parse_flags(rest)?;
    match command.as_str() {
        "restore" => restore_command(parsed),
        "status" => status_command(parsed),
        "help" | "--help" | "-h" => Ok(format!("{USAGE}\n")),
        other => Err(SnapshotError::Usage(format!(
            "unknown snapshot command {other:?}\n{USAGE}"
        ))),
    }
}

struct Parsed {
    file: Option<String>,
    flags: BTreeMap<String, String>,
}

const BOOLEAN_FLAGS: [&str; 1] = ["skip-hash-check"];

fn parse_flags(args: &[String]) -> Result<Parsed, SnapshotError> {
    let mut parsed = Parsed {
        file: None,
        flags: BTreeMap::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if parsed.file.replace(arg.clone()).is_some() {
                return Err(SnapshotError::Usage(
                    "snapshot restore and status take one file".into(),
                ));
            }
            continue;
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None if BOOLEAN_FLAGS.contains(&flag) => (flag.to_string(), "true".to_string()),
            None => {
                let value = args.get(i).ok_or_else(|| {
                    SnapshotError::Usage(format!("flag needs an argument: --{flag}"))
                })?;
                i += 1;
                (flag.to_string(), value.clone())
            }
        };
        let name = if name == "w" {
            "write-out".into()
        } else {
            name
        };
        parsed.flags.insert(name, value);
    }
    Ok(parsed)
}

fn take(parsed: &mut Parsed, name: &str, default: &str) -> String {
    parsed
        .flags
        .remove(name)
        .unwrap_or_else(|| default.to_string())
}

fn no_more_flags(parsed: &Parsed) -> Result<(), SnapshotError> {
    match parsed.flags.keys().next() {
        Some(name) => Err(SnapshotError::Usage(format!("unknown flag: --{name}"))),
        None => Ok(()),
    }
}

fn file_of(parsed: &Parsed, command: &str) -> Result<PathBuf, SnapshotError> {
    parsed.file.as_ref().map(PathBuf::from).ok_or_else(|| {
        SnapshotError::Usage(format!(
            "snapshot {command} expects one argument (the file)"
        ))
    })
}

fn restore_command(mut parsed: Parsed) -> Result<String, SnapshotError> {
    let file = file_of(&parsed, "restore")?;
    let name = take(&mut parsed, "name", "default");
    let data_dir = take(&mut parsed, "data-dir", &format!("{name}.etcd"));
    let cluster = take(
        &mut parsed,
        "initial-cluster",
        "default=http://localhost:2380",
    );
    let token = take(&mut parsed, "initial-cluster-token", "etcd-cluster");
    let peer_urls = take(
        &mut parsed,
        "initial-advertise-peer-urls",
        "http://localhost:2380",
    );
    let wal_dir = parsed.flags.remove("wal-dir").map(PathBuf::from);
    let skip = match take(&mut parsed, "skip-hash-check", "false").as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(SnapshotError::Usage(format!(
                "invalid value {other:?} for --skip-hash-check"
            )))
        }
    };
    no_more_flags(&parsed)?;
    let initial_cluster = crate::config::urls::parse_initial_cluster(&cluster)
        .map_err(|e| SnapshotError::Usage(e.to_string()))?;
    let opts = RestoreOptions {
        file,
        data_dir: PathBuf::from(&data_dir),
        name,
        initial_cluster,
        initial_cluster_token: token,
        initial_advertise_peer_urls: peer_urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect(),
        skip_hash_check: skip,
        wal_dir,
    };
    let done = restore::run(&opts).map_err(|e| match e {
        usage @ SnapshotError::Usage(_) => usage,
        other => in_file(&opts.file, other),
    })?;
    Ok(format!(
        "restored snapshot {} into {}: revision {}, compacted revision {}, {} changes, \
         {} live keys, {} leases; auth {} at auth revision {}, {} users, {} roles; \
         member {:x} of cluster {:x}\n",
        opts.file.display(),
        data_dir,
        done.revision,
        done.compacted,
        done.changes,
        done.keys,
        done.leases,
        if done.auth.enabled {
            "enabled"
        } else {
            "disabled"
        },
        done.auth.revision,
        done.auth.users,
        done.auth.roles,
        done.member_id,
        done.cluster_id
    ))
}

fn status_command(mut parsed: Parsed) -> Result<String, SnapshotError> {
    let file = file_of(&parsed, "status")?;
    let format = Format::parse(&take(&mut parsed, "write-out", "simple"))?;
    no_more_flags(&parsed)?;
    let status = status::read(&file).map_err(|e| in_file(&file, e))?;
    Ok(status::render(&status, format))
}

/// Names the file in an error that does not already (an io error says only what failed).
fn in_file(file: &std::path::Path, e: SnapshotError) -> SnapshotError {
    let shown = file.display().to_string();
    match e {
        SnapshotError::File(message) if message.contains(&shown) => SnapshotError::File(message),
        other => SnapshotError::File(format!("{shown}: {other}")),
    }
}
