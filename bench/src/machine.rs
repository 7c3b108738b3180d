//! What the results were measured on: CPU, memory, disk, versions, date.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub date_utc: String,
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub disk: String,
    /// fdatasync of a 4 KiB write in the data directory's file system: p50 / p99 in ms.
    pub fsync_probe: String,
    pub keelson_version: String,
    pub keelson_commit: String,
    pub etcd_version: String,
    pub bench_version: String,
}

pub fn describe(work_dir: &Path, keelson_bin: &Path, etcd_bin: &Path, repo: &Path) -> Machine {
    Machine {
        date_utc: now_utc(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into()),
        memory_gib: read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<f64>().ok())
            .map_or(0.0, |k| (k / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        disk: disk_of(work_dir),
        fsync_probe: fsync_probe(work_dir),
        keelson_version: first_line(keelson_bin, &["--version"]),
        keelson_commit: git_commit(repo),
        etcd_version: first_line(etcd_bin, &["--version"]),
        bench_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn run(cmd: &str, args: &[&str], dir: Option<&Path>) -> String {
    let mut c = Command::new(cmd);
    c.args(args).stdin(Stdio::null()).stderr(Stdio::null());
    if let Some(d) = dir {
        c.current_dir(d);
    }
    c.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn first_line(bin: &Path, args: &[&str]) -> String {
    let out = run(&bin.display().to_string(), args, None);
    let joined: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("ersion"))
        .take(2)
        .collect();
    if joined.is_empty() {
        "unknown".into()
    } else {
        joined.join(", ")
    }
}

fn git_commit(repo: &Path) -> String {
    let head = run("git", &["rev-parse", "--short", "HEAD"], Some(repo));
    if head.is_empty() {
        return "unknown".into();
    }
    let dirty = !run(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        Some(repo),
    )
    .is_empty();
    if dirty {
        format!("{head} + uncommitted changes")
    } else {
        head
    }
}

fn disk_of(dir: &Path) -> String {
    let d = dir.display().to_string();
    let df = run("df", &["-PT", &d], None);
    let line = df.lines().nth(1).unwrap_or("");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (source, fstype, size_kib) = match fields.as_slice() {
        [source, fstype, size, ..] => (*source, *fstype, size.parse::<u64>().unwrap_or(0)),
        _ => return "unknown".into(),
    };
    let dev = source.rsplit('/').next().unwrap_or("");
    let base = dev.trim_end_matches(|c: char| c.is_ascii_digit());
    let sys = |f: &str| {
        [dev, base]
            .iter()
            .map(|d| read(&format!("/sys/block/{d}/{f}")).trim().to_string())
            .find(|s| !s.is_empty())
            .unwrap_or_default()
    };
    let rotational = match sys("queue/rotational").as_str() {
        "0" => "non-rotational",
        "1" => "rotational",
        _ => "rotational?",
    };
    let model = sys("device/model");
    format!(
        "{source} ({fstype}, {:.0} GiB, {rotational}{})",
        size_kib as f64 / 1024.0 / 1024.0,
        if model.is_empty() {
            String::new()
        } else {
            format!(", {model}")
        }
    )
}

/// The cost every durable write pays, measured in `dir`: 4 KiB written then fdatasync'ed, 100
/// times appending to a new file (the file size changes, so the journal commits too) and 100
/// times overwriting a preallocated file (as a write-ahead log with preallocated segments does).
fn fsync_probe(dir: &Path) -> String {
    use std::io::{Seek, SeekFrom};
    let path = dir.join("fsync-probe");
    let block = [7u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    let measure = |preallocate: bool| -> Option<String> {
        let mut file = std::fs::File::create(&path).ok()?;
        if preallocate {
            file.write_all(&vec![0u8; 4096 * 100]).ok()?;
            file.sync_all().ok()?;
            file.seek(SeekFrom::Start(0)).ok()?;
        }
        let mut samples = Vec::with_capacity(100);
        for _ in 0..100 {
            let t = Instant::now();
            file.write_all(&block).ok()?;
            file.sync_data().ok()?;
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
            if Instant::now() > deadline {
                break;
            }
        }
        let _ = std::fs::remove_file(&path);
        samples.sort_by(f64::total_cmp);
        let q = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
        Some(format!("p50 {:.2} ms, p99 {:.2} ms", q(0.5), q(0.99)))
    };
    let append = measure(false).unwrap_or_else(|| "unavailable".into());
    let overwrite = measure(true).unwrap_or_else(|| "unavailable".into());
    format!("appending {append}; overwriting {overwrite}")
}

/// `2025-11-23T20:55:01Z`
pub fn now_utc() -> String {
    utc(SystemTime::now(), false)
}

/// `2025-11-23T20:55:01.042Z`
pub fn utc_millis(at: SystemTime) -> String {
    utc(at, true)
}

fn utc(at: SystemTime, with_millis: bool) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let millis = if with_millis {
        format!(".{:03}", since.subsec_millis())
    } else {
        String::new()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{millis}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A file-name-safe form of a date from [`now_utc`]: `2025-11-23T20-55-01Z`.
pub fn file_stamp(date: &str) -> String {
    date.replace(':', "-")
}

/// Free bytes on the file system of `dir`, and available memory in bytes.
pub fn free_disk_and_memory(dir: &Path) -> (u64, u64) {
    let d = dir.display().to_string();
    let df = run("df", &["-Pk", &d], None);
    let disk = df
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |k| k * 1024);
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |k| k * 1024);
    (disk, mem)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    stat_cpu_ticks(pid, 2).map(|t| t / clock_ticks())
}

/// CPU seconds this process and the children it has waited for (the Go load generator) used.
fn generator_cpu_seconds() -> Option<f64> {
    stat_cpu_ticks("self", 4).map(|t| t / clock_ticks())
}

/// Which processes count as the load generator: this one alone, or with the children it has
/// waited for (go-load). Counting children is exact only while no server is reaped before the
/// meter stops: a server found dead mid-run is reaped by the liveness check, and its CPU would
/// then count as the generator's (in a run that is reported as failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generator {
    ThisProcess,
    WithReapedChildren,
}

impl Generator {
    fn cpu_seconds(self) -> Option<f64> {
        match self {
            Generator::ThisProcess => process_cpu_seconds("self"),
            Generator::WithReapedChildren => generator_cpu_seconds(),
        }
    }
}

/// The sum of the first `fields` of utime, stime, cutime, cstime in `/proc/<pid>/stat`.
fn stat_cpu_ticks(pid: &str, fields: usize) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    // utime is field 14 of the line, the 12th after the name; stime, cutime, cstime follow.
    rest.split_whitespace()
        .skip(11)
        .take(fields)
        .map(|f| f.parse::<f64>().ok())
        .sum()
}

/// CPU seconds the whole machine has spent busy (every core, every process) since boot.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy =
        v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0.0);
    Some(busy / clock_ticks())
}

/// Where the CPU went while a server was measured: the server, this load generator, and every
/// other process on the machine (which makes the numbers noisier, and is reported).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct CpuUse {
    pub server_secs: f64,
    pub bench_secs: f64,
    pub other_secs: f64,
    pub wall_secs: f64,
}

pub struct CpuMeter {
    start: Instant,
    machine: Option<f64>,
    counted: Generator,
    bench: Option<f64>,
    /// Each server process and the CPU seconds it had used when the meter started.
    servers: Vec<(u32, Option<f64>)>,
}

impl CpuMeter {
    /// Starts measuring; `server_pids` are the members (one, or every member of a cluster).
    pub fn start(server_pids: &[u32], counted: Generator) -> CpuMeter {
        CpuMeter {
            start: Instant::now(),
            machine: machine_busy_seconds(),
            counted,
            bench: counted.cpu_seconds(),
            servers: server_pids
                .iter()
                .map(|&pid| (pid, process_cpu_seconds(&pid.to_string())))
                .collect(),
        }
    }

    /// Call while the servers still run (a process that is gone has no CPU time to read).
    pub fn stop(&self) -> CpuUse {
        let delta = |before: Option<f64>, now: Option<f64>| match (before, now) {
            (Some(b), Some(n)) => (n - b).max(0.0),
            _ => 0.0,
        };
        let machine = delta(self.machine, machine_busy_seconds());
        let bench = delta(self.bench, self.counted.cpu_seconds());
        let server: f64 = self
            .servers
            .iter()
            .map(|&(pid, before)| delta(before, process_cpu_seconds(&pid.to_string())))
            .sum();
        CpuUse {
            server_secs: server,
            bench_secs: bench,
            other_secs: (machine - bench - server).max(0.0),
            wall_secs: self.start.elapsed().as_secs_f64(),
        }
    }
}

/// What one scenario cost beside the server, from a [`CpuUse`] measured around it: CPU seconds
/// of the load generator, and the share (0 to 1) of the machine's cores × the wall time that
/// was busy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadUse {
    pub generator_secs: Option<f64>,
    pub machine_busy_share: Option<f64>,
}

impl CpuUse {
    pub fn load(&self) -> LoadUse {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let busy = self.server_secs + self.bench_secs + self.other_secs;
        LoadUse {
            generator_secs: Some(self.bench_secs),
            machine_busy_share: busy_share(busy, self.wall_secs, cores),
        }
    }
}

/// The share of `cores` × `wall_secs` that `busy_secs` of CPU time fills; none for an empty
/// interval. The clock ticks of /proc/stat can put a short scenario a little over 1.
pub fn busy_share(busy_secs: f64, wall_secs: f64, cores: usize) -> Option<f64> {
    let capacity = wall_secs * cores as f64;
    (capacity > 0.0).then(|| (busy_secs.max(0.0) / capacity).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_share_is_the_part_of_every_core_that_was_busy() {
        assert_eq!(busy_share(1.0, 1.0, 2), Some(0.5));
        assert_eq!(busy_share(3.0, 2.0, 2), Some(0.75));
        // Tick rounding may report a little more than the cores can give.
        assert_eq!(busy_share(2.1, 1.0, 2), Some(1.0));
        assert_eq!(busy_share(1.0, 0.0, 2), None);
        assert_eq!(busy_share(1.0, 1.0, 0), None);
    }

    #[test]
    fn cpu_of_self() {
        // Spin for 150 ms so that at least a few clock ticks are charged to this process.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(150) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(process_cpu_seconds("self").expect("readable") > 0.0);
        assert!(machine_busy_seconds().expect("readable") > 0.0);
    }

    #[test]
    fn civil_dates() {
        let at = UNIX_EPOCH + Duration::from_millis(19_000 * 86_400_000 + 3_723_042);
        assert_eq!(utc_millis(at), "2022-01-08T01:02:03.042Z");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_000), (2022, 1, 8));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
