//! `keelson-bench scale` and `keelson-bench restart`: load N keys, measure memory, disk,
//! LIST latency, then SIGKILL the server and time its restart to the first linearizable read.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::machine::{self, Machine};
use crate::opts::{Consistency, LoadKeysArgs, LoadOpts, RangeArgs};
use crate::report::{Report, Status};
use crate::server::{Kind, ServerProc};
use crate::suite::BinArgs;
use crate::workload;

#[derive(Args, Clone, Debug)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub bins: BinArgs,
    /// Key counts to load, comma-separated; each runs on a fresh data dir. A size that would
    /// not fit the free disk, the free memory or the time left is skipped (and said so).
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    pub keys: Vec<u64>,
    /// SIGKILL + restart cycles per server and size (each timed to the first read).
    #[arg(long, default_value_t = 3)]
    pub restarts: usize,
    /// Seconds of LIST load (1000-key prefixes, 16 clients) after loading; 0 = skip.
    #[arg(long, default_value_t = 5.0)]
    pub list_secs: f64,
    /// Concurrent load transactions (128 puts each).
    #[arg(long, default_value_t = 32)]
    pub load_clients: usize,
    /// Connections the loaders share.
    #[arg(long, default_value_t = 4)]
    pub load_conns: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Upper bound for the whole run; sizes that would not fit are skipped.
    #[arg(long, default_value = "30m", value_parser = crate::opts::parse_duration)]
    pub max_time: Duration,
    /// Write SCALE-LATEST.md/.json here (previous ones are kept under their date).
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
    /// Print the results as JSON on stdout instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// Quota given to both servers so that millions of keys fit (etcd's default is 2 GiB).
const QUOTA: &str = "8589934592";
/// How long one restart may take before it counts as failed.
const RESTART_TIMEOUT: Duration = Duration::from_secs(300);
/// Rough bytes one key costs on disk and in a server's memory at most, for the pre-checks
/// (etcd: bbolt pages + in-memory index; measured well below these on 1M keys).
const DISK_PER_KEY: u64 = 2048;
const MEM_PER_KEY: u64 = 1536;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScaleRun {
    pub kind: Option<Kind>,
    pub keys: u64,
    pub load_secs: f64,
    pub load_keys_per_sec: f64,
    pub load_errors: u64,
    pub rss_after_load_bytes: Option<u64>,
    pub peak_rss_after_load_bytes: Option<u64>,
    pub data_dir_bytes: u64,
    pub list: Option<Report>,
    /// Spawn to first successful linearizable Range, per restart.
    pub restart_ms: Vec<f64>,
    pub rss_after_restart_bytes: Option<u64>,
    pub data_dir_after_restart_bytes: u64,
    pub failure: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleResult {
    pub machine: Machine,
    pub runs: Vec<ScaleRun>,
    pub notes: Vec<String>,
    pub wall_secs: f64,
}

pub async fn run(args: ScaleArgs) -> Result<ScaleResult, String> {
    let kinds = args.bins.kinds()?;
    args.bins.check(&kinds)?;
    let start = Instant::now();
    let deadline = start + args.max_time;
    let parent = args.bins.work_parent();
    let work = tempfile::Builder::new()
        .prefix("keelson-bench-scale-")
        .tempdir_in(&parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))?;
    let repo = args
        .results_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    let machine = machine::describe(
        work.path(),
        &args.bins.keelson_bin(),
        &args.bins.etcd_bin,
        &repo,
    );
    let mut result = ScaleResult {
        machine,
        runs: Vec::new(),
        notes: Vec::new(),
        wall_secs: 0.0,
    };
    // Seconds per key of the slowest server so far, to predict whether the next size fits.
    let mut secs_per_key: f64 = 0.0;
    for (i, &keys) in args.keys.iter().enumerate() {
        let (free_disk, free_mem) = machine::free_disk_and_memory(work.path());
        if keys * DISK_PER_KEY > free_disk {
            result.notes.push(format!(
                "skipped {keys} keys: needs about {} GiB of disk, {} GiB free",
                (keys * DISK_PER_KEY) >> 30,
                free_disk >> 30
            ));
            continue;
        }
        if keys * MEM_PER_KEY > free_mem {
            result.notes.push(format!(
                "skipped {keys} keys: needs about {} GiB of memory, {} GiB available",
                (keys * MEM_PER_KEY) >> 30,
                free_mem >> 30
            ));
            continue;
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        let predicted = secs_per_key * keys as f64 * kinds.len() as f64;
        if predicted > left {
            result.notes.push(format!(
                "skipped {keys} keys: predicted {predicted:.0} s from the previous size, {left:.0} s left of --max-time"
            ));
            continue;
        }
        let mut order = kinds.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        for kind in order {
            let t = Instant::now();
            let left = deadline.saturating_duration_since(Instant::now());
            let run = one(&args, kind, keys, work.path(), left).await;
            if let Some(f) = &run.failure {
                eprintln!("scale: {} {keys} keys: {f}", kind.name());
            }
            secs_per_key = secs_per_key.max(t.elapsed().as_secs_f64() / keys.max(1) as f64);
            result.runs.push(run);
        }
    }
    result.wall_secs = start.elapsed().as_secs_f64();
    Ok(result)
}

async fn one(
    args: &ScaleArgs,
    kind: Kind,
    keys: u64,
    work: &std::path::Path,
    left: Duration,
) -> ScaleRun {
    let mut run = ScaleRun {
        kind: Some(kind),
        keys,
        ..Default::default()
    };
    let label = format!("{}-{keys}", kind.name());
    let spec = args
        .bins
        .spec(kind, vec!["--quota-backend-bytes".into(), QUOTA.into()]);
    let mut server = match ServerProc::start(spec, work, &label, Duration::from_secs(60)).await {
        Ok(s) => s,
        Err(e) => {
            run.failure = Some(format!("could not start: {e}"));
            return run;
        }
    };
    eprintln!(
        "scale: {} ready at {}; loading {keys} keys",
        kind.name(),
        server.endpoint()
    );

    // Load.
    let mut o = LoadOpts::defaults(vec![server.endpoint()]);
    o.clients = args.load_clients;
    o.conns = args.load_conns;
    o.total = keys;
    o.key_space_size = keys;
    o.key_size = 8;
    o.val_size = args.val_size;
    o.sequential_keys = true;
    o.duration = left
        .saturating_sub(Duration::from_secs(60))
        .max(Duration::from_secs(10));
    o.request_timeout = Duration::from_secs(30);
    let load = workload::load_keys(&o, &LoadKeysArgs { txn_ops: 128 }).await;
    eprintln!("[{} {keys}] {}", kind.name(), load.human().trim_end());
    run.load_secs = load.elapsed_secs;
    run.load_keys_per_sec = load.ops_per_sec;
    run.load_errors = load.errors.total;
    if load.status != Status::Ok || load.ops < keys {
        run.failure = Some(format!(
            "load stopped at {} of {keys} keys: {}{}",
            load.ops,
            load.detail.clone().unwrap_or_default(),
            load.errors
                .kinds
                .keys()
                .next()
                .map(|k| format!(" (first error: {k})"))
                .unwrap_or_default()
        ));
        if !server.is_running() {
            run.failure = Some(format!(
                "{}; server died:\n{}",
                run.failure.take().unwrap_or_default(),
                server.log_tail(30)
            ));
        }
        server.kill();
        server.remove_files();
        return run;
    }
    run.rss_after_load_bytes = server.rss();
    run.peak_rss_after_load_bytes = server.peak_rss();
    run.data_dir_bytes = server.disk_usage();

    // LIST.
    if args.list_secs > 0.0 {
        let mut l = LoadOpts::defaults(vec![server.endpoint()]);
        l.clients = 16;
        l.conns = 4;
        l.total = 10_000_000;
        l.key_space_size = keys;
        l.key_size = 8;
        l.duration = Duration::from_secs_f64(args.list_secs);
        let report = workload::range(
            &l,
            &RangeArgs {
                consistency: Consistency::L,
                list: true,
                limit: 0,
            },
        )
        .await;
        eprintln!("[{} {keys}] {}", kind.name(), report.human().trim_end());
        run.list = Some(report);
    }

    // Restarts: SIGKILL, spawn on the same data dir, first linearizable read.
    for r in 0..args.restarts {
        server.kill();
        let spawned = match server.spawn() {
            Ok(t) => t,
            Err(e) => {
                run.failure = Some(format!("restart {}: {e}", r + 1));
                break;
            }
        };
        match server.wait_first_read(spawned, RESTART_TIMEOUT).await {
            Ok(d) => {
                let ms = d.as_secs_f64() * 1000.0;
                eprintln!(
                    "[{} {keys}] restart {}: first linearizable read after {ms:.0} ms",
                    kind.name(),
                    r + 1
                );
                run.restart_ms.push(ms);
                run.rss_after_restart_bytes = server.rss();
                // Every acknowledged key must have survived the SIGKILL.
                match count_keys(&server.endpoint()).await {
                    Ok(n) if n == keys => {}
                    Ok(n) => {
                        run.failure = Some(format!(
                            "after SIGKILL and restart {}, {n} keys found instead of the {keys} acknowledged",
                            r + 1
                        ));
                        break;
                    }
                    Err(e) => {
                        run.failure = Some(format!("count after restart {}: {e}", r + 1));
                        break;
                    }
                }
            }
            Err(e) => {
                run.failure = Some(format!("restart {}: {e}", r + 1));
                break;
            }
        }
    }
    run.data_dir_after_restart_bytes = server.disk_usage();
    server.stop(Duration::from_secs(10)).await;
    server.remove_files();
    run
}

/// The number of keys in the store (a count-only Range over every key).
async fn count_keys(endpoint: &str) -> Result<u64, String> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(120));
    let work = async {
        let mut client = etcd_client::Client::connect([endpoint], Some(options)).await?;
        client
            .get(
                "",
                Some(
                    etcd_client::GetOptions::new()
                        .with_all_keys()
                        .with_count_only(),
                ),
            )
            .await
    };
    match tokio::time::timeout(Duration::from_secs(130), work).await {
        Ok(Ok(resp)) => Ok(resp.count() as u64),
        Ok(Err(e)) => Err(crate::report::error_text(&e)),
        Err(_) => Err("no answer within 130 s".into()),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a / b < 0.1 => format!("{:.3}", a / b),
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

pub fn markdown(result: &ScaleResult, title: &str) -> String {
    let m = &result.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- keelson-bench run: {} -->",
        machine::file_stamp(&m.date_utc)
    );
    let _ = writeln!(out, "# keelson vs etcd: {title}\n");
    let _ = writeln!(out, "- date: {}", m.date_utc);
    let _ = writeln!(
        out,
        "- machine: {} cores ({}), {} GiB RAM, kernel {}",
        m.cores, m.cpu_model, m.memory_gib, m.kernel
    );
    let _ = writeln!(
        out,
        "- disk (both data dirs): {}; 4 KiB write+fdatasync: {}",
        m.disk, m.fsync_probe
    );
    let _ = writeln!(
        out,
        "- keelson: {} (commit {})",
        m.keelson_version, m.keelson_commit
    );
    let _ = writeln!(out, "- etcd: {}", m.etcd_version);
    let _ = writeln!(out, "- both servers: default flags (fsync on) plus --quota-backend-bytes {QUOTA}; keys 8 bytes (zero-padded numbers), values 256 bytes, loaded with txns of 128 puts; restart = SIGKILL, spawn on the same data dir, time to the first successful linearizable Range (fresh connection, polled every 5 ms), then a count-only Range checks that every loaded key survived; wall time {:.0} s\n", result.wall_secs);
    let mut sizes: Vec<u64> = result.runs.iter().map(|r| r.keys).collect();
    sizes.dedup();
    let _ = writeln!(out, "Ratios are keelson / etcd. Lower is better for keelson everywhere except the load rate and LIST throughput (higher is better).\n");
    let _ = writeln!(out, "| keys | metric | keelson | etcd | keelson / etcd |");
    let _ = writeln!(out, "|---:|---|---:|---:|---:|");
    for keys in sizes {
        let get = |kind: Kind| {
            result
                .runs
                .iter()
                .find(|r| r.keys == keys && r.kind == Some(kind))
        };
        let k = get(Kind::Keelson);
        let e = get(Kind::Etcd);
        type F = fn(&ScaleRun) -> Option<f64>;
        let rows: Vec<(&str, F)> = vec![
            ("load rate, keys/s ↑", |r| {
                (r.load_keys_per_sec > 0.0).then_some(r.load_keys_per_sec)
            }),
            ("load time, s", |r| {
                (r.load_secs > 0.0).then_some(r.load_secs)
            }),
            ("RSS after load, MiB", |r| {
                r.rss_after_load_bytes.map(|b| b as f64 / 1048576.0)
            }),
            ("peak RSS during load, MiB", |r| {
                r.peak_rss_after_load_bytes.map(|b| b as f64 / 1048576.0)
            }),
            ("data dir after load, MiB", |r| {
                (r.data_dir_bytes > 0).then_some(r.data_dir_bytes as f64 / 1048576.0)
            }),
            ("LIST 1000 keys, 16 clients, lists/s ↑", |r| {
                r.list
                    .as_ref()
                    .filter(|l| l.status == Status::Ok)
                    .map(|l| l.ops_per_sec)
            }),
            ("LIST p50, ms", |r| {
                r.list
                    .as_ref()
                    .filter(|l| l.status == Status::Ok)
                    .map(|l| l.latency.p50_ms)
            }),
            ("LIST p99, ms", |r| {
                r.list
                    .as_ref()
                    .filter(|l| l.status == Status::Ok)
                    .map(|l| l.latency.p99_ms)
            }),
            (
                "first restart after the load (SIGKILL) to first linearizable read, ms",
                |r| r.restart_ms.first().copied(),
            ),
            ("restart to first linearizable read, ms (median)", |r| {
                median(r.restart_ms.clone())
            }),
            ("RSS after restart + first read, MiB", |r| {
                r.rss_after_restart_bytes.map(|b| b as f64 / 1048576.0)
            }),
            ("data dir after restarts, MiB", |r| {
                (r.data_dir_after_restart_bytes > 0)
                    .then_some(r.data_dir_after_restart_bytes as f64 / 1048576.0)
            }),
        ];
        for (label, f) in rows {
            let a = k.and_then(f);
            let b = e.and_then(f);
            if a.is_none() && b.is_none() {
                continue;
            }
            let _ = writeln!(
                out,
                "| {keys} | {label} | {} | {} | {} |",
                num(a),
                num(b),
                ratio(a, b)
            );
        }
        for run in [k, e].into_iter().flatten() {
            let _ = writeln!(
                out,
                "| {keys} | {} restarts, ms | {} |  |  |",
                run.kind.map_or("?", |k| k.name()),
                run.restart_ms
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut problems = Vec::new();
    for r in &result.runs {
        let name = r.kind.map_or("?", |k| k.name());
        if let Some(f) = &r.failure {
            problems.push(format!(
                "{name} {} keys: **{}**\n\n```\n{}\n```",
                r.keys,
                f.lines().next().unwrap_or(""),
                f.lines().skip(1).collect::<Vec<_>>().join("\n")
            ));
        }
        if r.load_errors > 0 {
            problems.push(format!(
                "{name} {} keys: {} errors while loading",
                r.keys, r.load_errors
            ));
        }
        if let Some(l) = &r.list {
            for (text, n) in &l.errors.kinds {
                problems.push(format!("{name} {} keys LIST: {n} × `{text}`", r.keys));
            }
            if l.status != Status::Ok {
                problems.push(format!(
                    "{name} {} keys LIST: {:?} {}",
                    r.keys,
                    l.status,
                    l.detail.clone().unwrap_or_default()
                ));
            }
        }
    }
    let _ = writeln!(out, "\n## Errors and failures\n");
    if problems.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for p in problems {
        let _ = writeln!(out, "- {p}");
    }
    if !result.notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for n in &result.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}
