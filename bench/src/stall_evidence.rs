//! Keeps what the server wrote around a long write stall, before its files are removed.
//!
//! A stall of hundreds of milliseconds shows up once in many runs (bench/results/perf-push-2.md)
//! and the server's directory is deleted after its run, so without this the only trace left is
//! the number. For a stall above [`keep_above_ms`] this writes, under `<results>/stalls/`, the
//! server's log, the lines of RocksDB's `LOG` files from a second before the stall to a
//! second after it (flushes, compactions, "Stalling writes" / "Stopping writes"), and how the
//! server's disk latency histograms grew during the scenario (a slow fsync or backend commit
//! of the stall's length names the disk).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::Report;
use crate::server::ServerProc;

/// Stalls longer than this keep their evidence: below issue 15's 50 ms bound for steady
/// writes, so that a stall near it can be explained. A bulk load acknowledges whole rounds of
/// large txns, so its gaps are rounds (30-60 ms), not stalls.
pub fn keep_above_ms(bulk_load: bool) -> f64 {
    if bulk_load {
        100.0
    } else {
        30.0
    }
}
/// Lines of the server's own log kept.
const SERVER_LOG_LINES: usize = 300;
/// Histograms whose growth during the scenario is kept (etcd's names; both servers have them).
const DISK_HISTOGRAMS: [&str; 2] = [
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
];

/// Writes the evidence of `report`'s stall if it is long enough; returns the file written.
pub fn keep(
    results_dir: &Path,
    run_label: &str,
    scenario: &str,
    report: &Report,
    server: &ServerProc,
    metrics_before: Option<&str>,
    keep_above_ms: f64,
) -> Option<PathBuf> {
    let stall_ms = report.max_stall_ms.filter(|ms| *ms > keep_above_ms)?;
    let data_dir = server.data_dir();
    let from = report.max_stall_from.as_deref().unwrap_or("unknown");
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{run_label} {scenario}: stall of {stall_ms:.1} ms from {from} (generator pause {:.1} ms)\n",
        report.max_pause_ms.unwrap_or(0.0)
    );
    if let Some(window) = second_of_day(from).map(|s| (s - 1, s + 2 + (stall_ms / 1000.0) as i64)) {
        let _ = writeln!(text, "## RocksDB LOG lines in that window\n");
        for log in rocksdb_logs(&data_dir) {
            let content = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = writeln!(text, "### {}", log.display());
            for line in content.lines().filter(|l| in_window(l, window)) {
                let _ = writeln!(text, "{line}");
            }
        }
    }
    let _ = writeln!(
        text,
        "## Disk latency histograms: observations during the scenario, by bucket\n"
    );
    match (metrics_before, server.metrics_text()) {
        (Some(before), Some(after)) => {
            for name in DISK_HISTOGRAMS {
                let _ = writeln!(text, "{name}: {}", bucket_growth(name, before, &after));
            }
        }
        _ => {
            let _ = writeln!(text, "(the server's /metrics could not be read)");
        }
    }
    let _ = writeln!(
        text,
        "\n## The server's log (last {SERVER_LOG_LINES} lines)\n\n{}",
        server.log_tail(SERVER_LOG_LINES)
    );
    let dir = results_dir.join("stalls");
    let path = dir.join(format!("{run_label}-{scenario}.txt"));
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text));
    match written {
        Ok(()) => Some(path),
        Err(e) => {
            eprintln!("suite: warning: could not keep the stall's evidence: {e}");
            None
        }
    }
}

/// The prefix of the evidence files `make bench-go`'s runs write; `make bench`'s have none.
const GO_PREFIX: &str = "go-";

/// The name a run's evidence files start with: both generators write into the same
/// directory, so the Go generator's files say so.
pub fn label(run_label: &str, go: bool) -> String {
    if go {
        format!("{GO_PREFIX}{run_label}")
    } else {
        run_label.to_string()
    }
}

/// Removes the evidence files the previous run of the same load generator left under
/// `<results>/stalls/`: the files are named by run and scenario only, so a stall that does
/// not recur would otherwise leave an older run's file beside the new LATEST.md, as if it
/// were that run's. The other generator's files belong to its own LATEST and stay. Returns
/// how many were removed.
pub fn clear_previous(results_dir: &Path, go: bool) -> usize {
    let Ok(entries) = std::fs::read_dir(results_dir.join("stalls")) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".txt")
            && name.starts_with(GO_PREFIX) == go
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// How many observations of histogram `name` fell in each bucket between two scrapes, as
/// `<=0.001s: 3, <=0.002s: 40, ..., rest: 0` (per-bucket, not Prometheus' cumulative counts).
fn bucket_growth(name: &str, before: &str, after: &str) -> String {
    let (old, new) = (buckets(name, before), buckets(name, after));
    if new.is_empty() {
        return "not exported".into();
    }
    let mut parts = Vec::new();
    let mut below = 0.0;
    for (le, count) in &new {
        let earlier = old.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
        let cumulative = count - earlier;
        let label = if le == "+Inf" {
            "rest".to_string()
        } else {
            format!("<={le}s")
        };
        parts.push(format!("{label}: {}", cumulative - below));
        below = cumulative;
    }
    parts.join(", ")
}

/// `(le, cumulative count)` of every bucket of histogram `name` in a Prometheus text, in order.
fn buckets(name: &str, text: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|line| {
            let labels = line.strip_prefix(&prefix)?;
            let le = labels.split("le=\"").nth(1)?.split('"').next()?;
            let count = line.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((le.to_string(), count))
        })
        .collect()
}

/// Every file named `LOG` under `dir` (RocksDB's info log).
fn rocksdb_logs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n == "LOG") {
                found.push(path);
            }
        }
    }
    found
}

/// Seconds since midnight of an RFC 3339 time such as `2026-12-01T12:32:05.512Z`.
fn second_of_day(utc: &str) -> Option<i64> {
    clock_seconds(utc.split_once('T')?.1)
}

/// Seconds since midnight of `HH:MM:SS...`.
fn clock_seconds(clock: &str) -> Option<i64> {
    let mut parts = clock.get(..8)?.split(':');
    let mut seconds = 0;
    for _ in 0..3 {
        seconds = seconds * 60 + parts.next()?.parse::<i64>().ok()?;
    }
    Some(seconds)
}

/// Whether a RocksDB LOG line (`2026/12/01-12:32:05.512345 ...`, the machine's local time,
/// UTC on the bench machines) falls in `[from, to]`, in seconds of the day.
fn in_window(line: &str, (from, to): (i64, i64)) -> bool {
    line.get(11..)
        .and_then(clock_seconds)
        .is_some_and(|s| (from..=to).contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_clears_only_its_own_generators_old_evidence() {
        let results = tempfile::tempdir().expect("temp dir");
        let stalls = results.path().join("stalls");
        std::fs::create_dir_all(&stalls).expect("stalls dir");
        for name in [
            "keelson-r1-create-64.txt",
            "etcd-r2-put-64.txt",
            "go-keelson-r1-put-64.txt",
            "notes.md",
        ] {
            std::fs::write(stalls.join(name), "x").expect("write");
        }
        assert_eq!(clear_previous(results.path(), false), 2);
        let mut left: Vec<String> = std::fs::read_dir(&stalls)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["go-keelson-r1-put-64.txt", "notes.md"]);
        assert_eq!(clear_previous(results.path(), true), 1);
        assert_eq!(
            clear_previous(&results.path().join("missing"), true),
            0,
            "no stalls directory is nothing to clear"
        );
    }

    #[test]
    fn histogram_growth_is_per_bucket_between_scrapes() {
        let before = "# HELP x\n\
            etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 10\n\
            etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.128\"} 12\n\
            etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 12\n\
            etcd_disk_wal_fsync_duration_seconds_sum 0.5\n";
        let after = "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 15\n\
            etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.128\"} 20\n\
            etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"} 21\n";
        assert_eq!(
            bucket_growth("etcd_disk_wal_fsync_duration_seconds", before, after),
            "<=0.001s: 5, <=0.128s: 3, rest: 1"
        );
        assert_eq!(
            bucket_growth("etcd_disk_backend_commit_duration_seconds", before, after),
            "not exported"
        );
    }

    #[test]
    fn rocksdb_lines_are_kept_only_around_the_stall() {
        let from = second_of_day("2026-12-01T12:32:05.512Z").expect("parses");
        assert_eq!(from, 12 * 3600 + 32 * 60 + 5);
        let window = (from - 1, from + 2);
        assert!(in_window(
            "2026/12/01-12:32:05.600000 7f [db] Stopping writes",
            window
        ));
        assert!(in_window("2026/12/01-12:32:04.000001 7f flush", window));
        assert!(!in_window("2026/12/01-12:32:09.000001 7f later", window));
        assert!(!in_window("2026/12/01-12:31:59.999999 7f earlier", window));
        assert!(!in_window("short", window));
    }
}
