//! `keelson-bench suite`: the fixed scenarios against keelson and etcd, alternating, repeated,
//! summarised as medians side by side and written to `bench/results/LATEST.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::machine::{self, CpuMeter, CpuUse, Machine};
use crate::opts::{CasArgs, Consistency, LeaseArgs, LoadKeysArgs, LoadOpts, RangeArgs, WatchArgs};
use crate::report::{fmt_num, Report, Status};
use crate::server::{Kind, ServerProc, ServerSpec};
use crate::workload;

#[derive(Args, Clone, Debug)]
pub struct BinArgs {
    /// The keelson binary (default: $KEELSON_BIN, else target/release/keelson).
    #[arg(long)]
    pub keelson_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Where the servers' data directories go (a fresh temporary directory is made inside;
    /// both servers use the same file system).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Which servers to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "keelson,etcd")]
    pub servers: Vec<String>,
}

impl BinArgs {
    pub fn keelson_bin(&self) -> PathBuf {
        self.keelson_bin
            .clone()
            .or_else(|| std::env::var_os("KEELSON_BIN").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("target/release/keelson"))
    }

    pub fn kinds(&self) -> Result<Vec<Kind>, String> {
        self.servers
            .iter()
            .map(|s| match s.as_str() {
                "keelson" => Ok(Kind::Keelson),
                "etcd" => Ok(Kind::Etcd),
                other => Err(format!("unknown server {other:?} (keelson or etcd)")),
            })
            .collect()
    }

    pub fn spec(&self, kind: Kind, extra_args: Vec<String>) -> ServerSpec {
        ServerSpec {
            kind,
            bin: match kind {
                Kind::Keelson => self.keelson_bin(),
                Kind::Etcd => self.etcd_bin.clone(),
            },
            extra_args,
        }
    }

    /// Checks that the binaries of `kinds` exist.
    pub fn check(&self, kinds: &[Kind]) -> Result<(), String> {
        for kind in kinds {
            let bin = self.spec(*kind, vec![]).bin;
            if !bin.is_file() {
                return Err(format!(
                    "{} binary not found at {} ({})",
                    kind.name(),
                    bin.display(),
                    match kind {
                        Kind::Keelson =>
                            "build it with `cargo build -p keelson --release` or pass --keelson-bin",
                        Kind::Etcd => "install Debian's etcd-server or pass --etcd-bin",
                    }
                ));
            }
        }
        Ok(())
    }

    pub fn work_parent(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

#[derive(Args, Clone, Debug)]
pub struct SuiteArgs {
    #[command(flatten)]
    pub bins: BinArgs,
    /// Rounds; each round runs every server once, the order alternating between rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Scale every scenario's duration by this factor (e.g. 0.2 for a smoke run).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Upper bound for the whole suite; rounds that would not fit are skipped.
    #[arg(long, default_value = "13m", value_parser = crate::opts::parse_duration)]
    pub max_time: Duration,
    /// Write LATEST.md and LATEST.json here (the previous ones are kept under their date).
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
    /// Run only the scenarios whose names contain one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// The key space of the put, range and CAS scenarios.
const KEY_SPACE: u64 = 100_000;
/// Keys under the LIST prefix.
const LIST_KEYS: u64 = 1_000;
const LIST_PREFIX: &str = "l/";
const WATCH_PREFIX: &str = "w/";
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Mode {
    Put,
    Range(Consistency),
    List,
    Cas,
    Watch { watchers: usize, streams: usize },
    Lease,
    Load,
}

struct Scenario {
    name: &'static str,
    what: &'static str,
    mode: Mode,
    clients: usize,
    conns: usize,
    total: u64,
    secs: f64,
    key_space: u64,
    prefix: &'static str,
    /// Whether the scenario is measured (setup loads are shown but marked as setup).
    setup: bool,
}

fn scenarios() -> Vec<Scenario> {
    let s = |name, what, mode, clients, conns, total, secs, key_space, prefix, setup| Scenario {
        name,
        what,
        mode,
        clients,
        conns,
        total,
        secs,
        key_space,
        prefix,
        setup,
    };
    vec![
        s(
            "load-100k",
            "setup: load 100k keys, txns of 128 puts, 16 clients / 4 conns",
            Mode::Load,
            16,
            4,
            KEY_SPACE,
            60.0,
            KEY_SPACE,
            "",
            true,
        ),
        s(
            "load-list",
            "setup: load the 1000 keys of the LIST prefix",
            Mode::Load,
            4,
            1,
            LIST_KEYS,
            20.0,
            LIST_KEYS,
            LIST_PREFIX,
            true,
        ),
        s(
            "put-1",
            "put, 1 client, 100k keys",
            Mode::Put,
            1,
            1,
            50_000,
            8.0,
            KEY_SPACE,
            "",
            false,
        ),
        s(
            "put-64",
            "put, 64 clients / 8 conns, 100k keys",
            Mode::Put,
            64,
            8,
            500_000,
            10.0,
            KEY_SPACE,
            "",
            false,
        ),
        s(
            "range-l-1",
            "get one key, linearizable, 1 client",
            Mode::Range(Consistency::L),
            1,
            1,
            1_000_000,
            5.0,
            KEY_SPACE,
            "",
            false,
        ),
        s(
            "range-s-1",
            "get one key, serializable, 1 client",
            Mode::Range(Consistency::S),
            1,
            1,
            1_000_000,
            5.0,
            KEY_SPACE,
            "",
            false,
        ),
        s(
            "range-l-64",
            "get one key, linearizable, 64 clients / 8 conns",
            Mode::Range(Consistency::L),
            64,
            8,
            5_000_000,
            6.0,
            KEY_SPACE,
            "",
            false,
        ),
        s(
            "range-s-64",
            "get one key, serializable, 64 clients / 8 conns",
            Mode::Range(Consistency::S),
            64,
            8,
            5_000_000,
            6.0,
            KEY_SPACE,
            "",
            false,
        ),
        s(
            "list-1000-16",
            "LIST a 1000-key prefix (linearizable), 16 clients / 4 conns",
            Mode::List,
            16,
            4,
            1_000_000,
            8.0,
            LIST_KEYS,
            LIST_PREFIX,
            false,
        ),
        s(
            "cas-64",
            "k8s update (get + txn mod_revision==R), 64 clients / 8 conns, 1000 keys",
            Mode::Cas,
            64,
            8,
            500_000,
            10.0,
            1_000,
            "",
            false,
        ),
        s(
            "watch-100",
            "100 watchers on 10 streams, 4 putters, 1000 keys",
            Mode::Watch {
                watchers: 100,
                streams: 10,
            },
            4,
            1,
            200_000,
            6.0,
            1_000,
            WATCH_PREFIX,
            false,
        ),
        s(
            "lease-keepalive-16",
            "lease keep-alive round trips, 16 clients / 1 conn",
            Mode::Lease,
            16,
            1,
            5_000_000,
            5.0,
            1,
            "",
            false,
        ),
    ]
}

impl Scenario {
    fn opts(&self, endpoint: &str, time_scale: f64) -> LoadOpts {
        let mut o = LoadOpts::defaults(vec![endpoint.to_string()]);
        o.clients = self.clients;
        o.conns = self.conns;
        o.total = self.total;
        o.key_space_size = self.key_space;
        o.prefix = self.prefix.to_string();
        o.key_size = 8;
        o.val_size = 256;
        o.sequential_keys = matches!(self.mode, Mode::Load);
        let secs = if self.setup {
            self.secs
        } else {
            self.secs * time_scale
        };
        o.duration = Duration::from_secs_f64(secs.max(0.5));
        o
    }

    async fn run(&self, endpoint: &str, time_scale: f64) -> Report {
        let o = self.opts(endpoint, time_scale);
        match self.mode {
            Mode::Put => workload::put(&o).await,
            Mode::Range(consistency) => {
                workload::range(
                    &o,
                    &RangeArgs {
                        consistency,
                        list: false,
                        limit: 0,
                    },
                )
                .await
            }
            Mode::List => {
                workload::range(
                    &o,
                    &RangeArgs {
                        consistency: Consistency::L,
                        list: true,
                        limit: 0,
                    },
                )
                .await
            }
            Mode::Cas => workload::cas(&o, &CasArgs { max_retries: 100 }).await,
            Mode::Watch { watchers, streams } => {
                workload::watch(
                    &o,
                    &WatchArgs {
                        watchers,
                        streams,
                        drain_timeout: Duration::from_secs(5),
                    },
                )
                .await
            }
            Mode::Lease => workload::lease_keepalive(&o, &LeaseArgs { ttl: 60 }).await,
            Mode::Load => workload::load_keys(&o, &LoadKeysArgs { txn_ops: 128 }).await,
        }
    }

    /// Worst-case wall time, for the time budget.
    fn budget(&self, time_scale: f64) -> Duration {
        let o = self.opts("x", time_scale);
        o.duration + Duration::from_secs(8)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerRun {
    pub kind: Kind,
    pub round: usize,
    pub start_to_ready_ms: f64,
    pub scenarios: Vec<(String, Report)>,
    pub peak_rss_bytes: Option<u64>,
    /// CPU used while the scenarios ran, by the server, keelson-bench and everything else.
    #[serde(default)]
    pub cpu: CpuUse,
    pub data_dir_bytes: u64,
    /// Set when the server could not be started or died during the run.
    pub failure: Option<String>,
    pub wall_secs: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteResult {
    pub machine: Machine,
    pub rounds_planned: usize,
    pub time_scale: f64,
    pub runs: Vec<ServerRun>,
    pub notes: Vec<String>,
    pub wall_secs: f64,
    pub scenarios: Vec<(String, String)>,
}

pub async fn run(args: SuiteArgs) -> Result<SuiteResult, String> {
    let kinds = args.bins.kinds()?;
    args.bins.check(&kinds)?;
    let start = Instant::now();
    let deadline = start + args.max_time;
    let parent = args.bins.work_parent();
    let work = tempfile::Builder::new()
        .prefix("keelson-bench-")
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
    eprintln!(
        "suite: {} round(s) over {:?} in {}; machine: {} cores, {}, fsync {}",
        args.rounds,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        work.path().display(),
        machine.cores,
        machine.disk,
        machine.fsync_probe
    );
    let list: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| {
            s.setup || args.only.is_empty() || args.only.iter().any(|o| s.name.contains(o.as_str()))
        })
        .collect();
    let run_budget: Duration = list
        .iter()
        .map(|s| s.budget(args.time_scale))
        .sum::<Duration>()
        + Duration::from_secs(20);

    let mut result = SuiteResult {
        machine,
        rounds_planned: args.rounds,
        time_scale: args.time_scale,
        runs: Vec::new(),
        notes: Vec::new(),
        wall_secs: 0.0,
        scenarios: list
            .iter()
            .map(|s| (s.name.to_string(), s.what.to_string()))
            .collect(),
    };
    let mut longest_run = Duration::ZERO;
    'rounds: for round in 0..args.rounds {
        let mut order = kinds.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for kind in order {
            let left = deadline.saturating_duration_since(Instant::now());
            let need = longest_run.max(run_budget.min(Duration::from_secs(240)));
            if left < need {
                result.notes.push(format!(
                    "stopped before round {} ({}) to stay within --max-time {:?}",
                    round + 1,
                    kind.name(),
                    args.max_time
                ));
                break 'rounds;
            }
            let t = Instant::now();
            let run = run_server(&args, &list, kind, round, work.path()).await;
            longest_run = longest_run.max(t.elapsed());
            if let Some(f) = &run.failure {
                eprintln!("suite: {} round {}: {f}", kind.name(), round + 1);
            }
            result.runs.push(run);
        }
    }
    result.wall_secs = start.elapsed().as_secs_f64();
    Ok(result)
}

async fn run_server(
    args: &SuiteArgs,
    list: &[Scenario],
    kind: Kind,
    round: usize,
    work: &Path,
) -> ServerRun {
    let wall = Instant::now();
    let mut run = ServerRun {
        kind,
        round,
        start_to_ready_ms: 0.0,
        scenarios: Vec::new(),
        peak_rss_bytes: None,
        cpu: CpuUse::default(),
        data_dir_bytes: 0,
        failure: None,
        wall_secs: 0.0,
    };
    let label = format!("{}-r{}", kind.name(), round + 1);
    let t = Instant::now();
    let mut server =
        match ServerProc::start(args.bins.spec(kind, vec![]), work, &label, START_TIMEOUT).await {
            Ok(s) => s,
            Err(e) => {
                run.failure = Some(format!("could not start: {e}"));
                return run;
            }
        };
    run.start_to_ready_ms = t.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "suite: round {} {} ready at {} (pid {:?})",
        round + 1,
        kind.name(),
        server.endpoint(),
        server.pid()
    );
    let meter = CpuMeter::start(server.pid().as_slice());
    for scenario in list {
        let report = scenario.run(&server.endpoint(), args.time_scale).await;
        eprintln!(
            "[{} r{}] {}",
            kind.name(),
            round + 1,
            report.human().trim_end().replace('\n', "\n    ")
        );
        run.scenarios.push((scenario.name.to_string(), report));
        if !server.is_running() {
            run.failure = Some(format!(
                "{} died during {}; last log lines:\n{}",
                kind.name(),
                scenario.name,
                server.log_tail(30)
            ));
            break;
        }
    }
    run.cpu = meter.stop();
    run.peak_rss_bytes = server.peak_rss();
    run.data_dir_bytes = server.disk_usage();
    server.stop(Duration::from_secs(10)).await;
    server.remove_files();
    run.wall_secs = wall.elapsed().as_secs_f64();
    run
}

// ---------------------------------------------------------------------------------------
// Summary

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

struct Cell {
    /// Median of each metric over the rounds that completed.
    ops: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    errors: u64,
    runs_ok: usize,
    unsupported: Option<String>,
    failed: Option<String>,
    counters: BTreeMap<String, f64>,
    per_round: Vec<Option<f64>>,
}

fn cell(result: &SuiteResult, kind: Kind, scenario: &str) -> Cell {
    let mut reports = Vec::new();
    let mut per_round = Vec::new();
    for run in result.runs.iter().filter(|r| r.kind == kind) {
        let found = run
            .scenarios
            .iter()
            .find(|(n, _)| n == scenario)
            .map(|(_, r)| r);
        per_round.push(
            found
                .filter(|r| r.status == Status::Ok)
                .map(|r| r.ops_per_sec),
        );
        if let Some(r) = found {
            reports.push(r);
        }
    }
    let ok: Vec<&&Report> = reports.iter().filter(|r| r.status == Status::Ok).collect();
    let mut counters = BTreeMap::new();
    let names: std::collections::BTreeSet<&String> =
        ok.iter().flat_map(|r| r.counters.keys()).collect();
    for name in names {
        if let Some(m) = median(
            ok.iter()
                .filter_map(|r| r.counters.get(name).copied())
                .collect(),
        ) {
            counters.insert(name.clone(), m);
        }
    }
    Cell {
        ops: median(ok.iter().map(|r| r.ops_per_sec).collect()),
        p50: median(ok.iter().map(|r| r.latency.p50_ms).collect()),
        p99: median(ok.iter().map(|r| r.latency.p99_ms).collect()),
        p999: median(ok.iter().map(|r| r.latency.p999_ms).collect()),
        errors: reports.iter().map(|r| r.errors.total).sum(),
        runs_ok: ok.len(),
        unsupported: reports
            .iter()
            .find(|r| r.status == Status::Unsupported)
            .and_then(|r| r.detail.clone()),
        failed: reports
            .iter()
            .find(|r| r.status == Status::Failed)
            .and_then(|r| r.detail.clone()),
        counters,
        per_round,
    }
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

fn mib(v: Option<f64>) -> Option<f64> {
    v.map(|b| b / 1024.0 / 1024.0)
}

/// The Markdown report: machine, table of medians, per-round throughput, errors, notes.
pub fn markdown(result: &SuiteResult) -> String {
    let m = &result.machine;
    let k = Kind::Keelson;
    let e = Kind::Etcd;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!-- keelson-bench run: {} -->",
        machine::file_stamp(&m.date_utc)
    );
    let _ = writeln!(out, "# keelson vs etcd: `make bench`\n");
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
    let _ = writeln!(out, "- keelson-bench {}; rounds: {} planned, {} server runs done, order alternating (keelson first in odd rounds); wall time {:.0} s{}",
        m.bench_version, result.rounds_planned, result.runs.len(), result.wall_secs,
        if (result.time_scale - 1.0).abs() > 1e-9 { format!("; durations scaled by {}", result.time_scale) } else { String::new() });
    let _ = writeln!(out, "- both servers: default flags (fsync on; etcd 3.4 defaults, no --unsafe-no-fsync), one member on 127.0.0.1, fresh data dir per run; keys 8 bytes, values 256 bytes; the load generator runs on the same 2 cores\n");

    let capacity = |r: &ServerRun| r.cpu.wall_secs * m.cores.max(1) as f64;
    let busy_runs: Vec<String> = result
        .runs
        .iter()
        .filter(|r| capacity(r) > 0.0 && r.cpu.other_secs / capacity(r) > 0.05)
        .map(|r| {
            format!(
                "{} r{} {:.0}%",
                r.kind.name(),
                r.round + 1,
                100.0 * r.cpu.other_secs / capacity(r)
            )
        })
        .collect();
    if !busy_runs.is_empty() {
        let _ = writeln!(
            out,
            "**Warning: other processes used more than 5% of the machine's CPU during some runs ({}), \
             which makes those numbers noisy; see \"Runs\" below.**\n",
            busy_runs.join(", ")
        );
    }
    let _ = writeln!(out, "## Medians over the rounds\n");
    let _ = writeln!(out, "Throughput ratio = keelson / etcd: **higher is better for keelson**. Latency ratio = keelson / etcd: **lower is better for keelson**. Latencies in ms.\n");
    let _ = writeln!(out, "| scenario | unit/s | keelson | etcd | ratio ↑ | p50 keelson | p50 etcd | p99 keelson | p99 etcd | p99 ratio ↓ | p99.9 keelson | p99.9 etcd | errors keelson / etcd |");
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for (name, _) in &result.scenarios {
        let a = cell(result, k, name);
        let b = cell(result, e, name);
        let unit = result
            .runs
            .iter()
            .flat_map(|r| r.scenarios.iter())
            .find(|(n, r)| n == name && r.status == Status::Ok)
            .map(|(_, r)| r.unit.clone())
            .unwrap_or_default();
        let show = |c: &Cell, v: Option<f64>| -> String {
            if let Some(u) = &c.unsupported {
                let _ = u;
                "unsupported".into()
            } else if c.runs_ok == 0 && c.failed.is_some() {
                "failed".into()
            } else {
                num(v)
            }
        };
        let _ = writeln!(
            out,
            "| {name} | {unit}s | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            show(&a, a.ops),
            show(&b, b.ops),
            ratio(a.ops, b.ops),
            show(&a, a.p50),
            show(&b, b.p50),
            show(&a, a.p99),
            show(&b, b.p99),
            ratio(a.p99, b.p99),
            show(&a, a.p999),
            show(&b, b.p999),
            a.errors,
            b.errors,
        );
    }
    // Server-level rows.
    let rss = |kind: Kind| {
        mib(median(
            result
                .runs
                .iter()
                .filter(|r| r.kind == kind)
                .filter_map(|r| r.peak_rss_bytes.map(|b| b as f64))
                .collect(),
        ))
    };
    let disk = |kind: Kind| {
        mib(median(
            result
                .runs
                .iter()
                .filter(|r| r.kind == kind && r.failure.is_none())
                .map(|r| r.data_dir_bytes as f64)
                .collect(),
        ))
    };
    let ready = |kind: Kind| {
        median(
            result
                .runs
                .iter()
                .filter(|r| r.kind == kind && r.start_to_ready_ms > 0.0)
                .map(|r| r.start_to_ready_ms)
                .collect(),
        )
    };
    let _ = writeln!(
        out,
        "\n| server | keelson | etcd | keelson / etcd (lower is better) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| peak RSS over a run (VmHWM), MiB | {} | {} | {} |",
        num(rss(k)),
        num(rss(e)),
        ratio(rss(k), rss(e))
    );
    let _ = writeln!(
        out,
        "| data dir at the end of a run, MiB | {} | {} | {} |",
        num(disk(k)),
        num(disk(e)),
        ratio(disk(k), disk(e))
    );
    let _ = writeln!(
        out,
        "| fresh start to ready, ms | {} | {} | {} |",
        num(ready(k)),
        num(ready(e)),
        ratio(ready(k), ready(e))
    );

    let _ = writeln!(out, "\n## Runs\n");
    let _ = writeln!(
        out,
        "CPU seconds while the scenarios ran (of {} cores × the wall time): the server, keelson-bench \
         (the load generator shares the machine) and every other process.\n",
        m.cores
    );
    let _ = writeln!(
        out,
        "| run | wall s | server CPU s | keelson-bench CPU s | other processes CPU s | peak RSS MiB | failure |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for r in &result.runs {
        let _ = writeln!(
            out,
            "| {} r{} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r.kind.name(),
            r.round + 1,
            r.cpu.wall_secs,
            r.cpu.server_secs,
            r.cpu.bench_secs,
            r.cpu.other_secs,
            num(mib(r.peak_rss_bytes.map(|b| b as f64))),
            r.failure
                .as_deref()
                .and_then(|f| f.lines().next())
                .unwrap_or("")
        );
    }
    let _ = writeln!(out, "\n## Scenarios\n");
    for (name, what) in &result.scenarios {
        let _ = writeln!(out, "- `{name}`: {what}");
    }

    let _ = writeln!(
        out,
        "\n## Throughput per round (units/s), to show the noise\n"
    );
    let rounds = result.runs.iter().map(|r| r.round + 1).max().unwrap_or(0);
    let head: Vec<String> = (1..=rounds)
        .map(|r| format!("keelson r{r}"))
        .chain((1..=rounds).map(|r| format!("etcd r{r}")))
        .collect();
    let _ = writeln!(out, "| scenario | {} |", head.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(head.len()));
    for (name, _) in &result.scenarios {
        let mut cols = Vec::new();
        for kind in [k, e] {
            let c = cell(result, kind, name);
            for i in 0..rounds {
                cols.push(num(c.per_round.get(i).copied().flatten()));
            }
        }
        let _ = writeln!(out, "| {name} | {} |", cols.join(" | "));
    }

    let _ = writeln!(out, "\n## Scenario details (medians)\n");
    for (name, _) in &result.scenarios {
        for kind in [k, e] {
            let c = cell(result, kind, name);
            if let Some(u) = &c.unsupported {
                let _ = writeln!(
                    out,
                    "- {name} / {}: unsupported by this server ({u})",
                    kind.name()
                );
                continue;
            }
            if !c.counters.is_empty() {
                let list: Vec<String> = c
                    .counters
                    .iter()
                    .map(|(n, v)| format!("{n} {}", fmt_num((*v * 100.0).round() / 100.0)))
                    .collect();
                let _ = writeln!(out, "- {name} / {}: {}", kind.name(), list.join(", "));
            }
        }
    }

    let _ = writeln!(out, "\n## Errors and failures\n");
    let mut any = false;
    for run in &result.runs {
        if let Some(f) = &run.failure {
            any = true;
            let _ = writeln!(
                out,
                "- {} round {}: **{}**",
                run.kind.name(),
                run.round + 1,
                f.lines().next().unwrap_or("")
            );
            let tail: Vec<&str> = f.lines().skip(1).collect();
            if !tail.is_empty() {
                let _ = writeln!(out, "\n```\n{}\n```\n", tail.join("\n"));
            }
        }
        for (name, r) in &run.scenarios {
            if r.status == Status::Failed {
                any = true;
                let _ = writeln!(
                    out,
                    "- {} round {} {name}: failed: {}",
                    run.kind.name(),
                    run.round + 1,
                    r.detail.as_deref().unwrap_or("")
                );
            }
            for (text, n) in &r.errors.kinds {
                any = true;
                let _ = writeln!(
                    out,
                    "- {} round {} {name}: {n} × `{}`",
                    run.kind.name(),
                    run.round + 1,
                    text.replace('`', "'")
                );
            }
        }
    }
    if !any {
        let _ = writeln!(out, "None: every request of every scenario succeeded.");
    }
    if !result.notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for n in &result.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

/// Writes `<dir>/<name>.md` and `.json`, first moving the previous ones to
/// `<dir>/<their run stamp><suffix>.md/.json`.
pub fn write_results(
    dir: &Path,
    name: &str,
    suffix: &str,
    md: &str,
    json: &str,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let latest = dir.join(format!("{name}.md"));
    if let Ok(previous) = std::fs::read_to_string(&latest) {
        let stamp = previous
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("<!-- keelson-bench run: "))
            .and_then(|l| l.strip_suffix(" -->"))
            .map(str::to_string)
            .unwrap_or_else(|| machine::file_stamp(&machine::now_utc()) + "-previous");
        let archived = dir.join(format!("{stamp}{suffix}.md"));
        std::fs::rename(&latest, &archived)
            .map_err(|e| format!("keep {}: {e}", archived.display()))?;
        let latest_json = dir.join(format!("{name}.json"));
        if latest_json.exists() {
            let _ = std::fs::rename(&latest_json, dir.join(format!("{stamp}{suffix}.json")));
        }
    }
    std::fs::write(&latest, md).map_err(|e| format!("write {}: {e}", latest.display()))?;
    std::fs::write(dir.join(format!("{name}.json")), json)
        .map_err(|e| format!("write {name}.json: {e}"))?;
    Ok(latest)
}
