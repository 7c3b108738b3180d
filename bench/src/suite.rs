//! `keelson-bench suite`: the fixed scenarios against keelson and etcd, alternating, repeated,
//! summarised as medians side by side and written to `bench/results/LATEST.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::cluster::{self, Failover, CLUSTER_SIZE, FAILOVER_SCENARIO};
use crate::cpus::CpuSplit;
use crate::machine::{self, process_cpu_seconds, CpuMeter, CpuUse, Generator, LoadUse, Machine};
use crate::opts::{CasArgs, Consistency, LeaseArgs, LoadKeysArgs, LoadOpts, RangeArgs, WatchArgs};
use crate::report::{fmt_num, ErrorCounts, PauseProbe, Report, Status};
use crate::server::{Kind, ServerProc, ServerSpec};
use crate::stall_evidence;
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
    /// What drives the load: `rust` (keelson-bench itself, the etcd-client crate) or `go`
    /// (bench/go-load, built on etcd's own Go client from Debian's sources): then only the
    /// scenarios in [`GO_SCENARIOS`] run (on one member and on three; the setup loads stay
    /// keelson-bench's), and the results go to GO-LATEST.md.
    #[arg(long, value_enum, default_value = "rust")]
    pub load_generator: LoadGenerator,
    /// The Go load generator's binary (`make bench-go` builds it).
    #[arg(long, default_value = "target/go-load/go-load")]
    pub go_load_bin: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadGenerator {
    Rust,
    Go,
}

impl SuiteArgs {
    /// Where results go: `--results-dir`, else the current directory.
    fn results_dir(&self) -> PathBuf {
        self.results_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The Go load generator's binary when it drives the load.
    pub fn go_load(&self) -> Option<&Path> {
        (self.load_generator == LoadGenerator::Go).then_some(self.go_load_bin.as_path())
    }
}

/// The scenarios the Go load generator runs (after the setup load, which keelson-bench makes).
const GO_SCENARIOS: &[&str] = &[
    "load-100k",
    "put-1",
    "put-16",
    "put-64",
    "range-l-64",
    "range-s-64",
    "watch-100",
    "watch-fanout",
    "cluster3-put-64",
    "cluster3-range-l-64",
];
/// What the Go load generator's results are labelled with.
pub const GO_GENERATOR: &str =
    "bench/go-load (etcd's Go client, clientv3 3.4.23 from Debian's golang-etcd-server-dev)";

/// The key space of the put, range and CAS scenarios.
const KEY_SPACE: u64 = 100_000;
/// Keys under the LIST prefix.
const LIST_KEYS: u64 = 1_000;
const LIST_PREFIX: &str = "l/";
const WATCH_PREFIX: &str = "w/";
/// Keys the create scenario writes: none exists before, and each is written once.
const CREATE_PREFIX: &str = "c/";
const CREATE_KEY_SPACE: u64 = 10_000_000;
/// How long the watch scenario waits for missing events after the last put.
const WATCH_DRAIN: Duration = Duration::from_secs(5);
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    Put,
    /// Puts of keys that do not exist yet (Kubernetes' creates: events, new objects).
    Create,
    Range(Consistency),
    List,
    Cas,
    Watch {
        watchers: usize,
        streams: usize,
    },
    Lease,
    Load,
}

pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    what: &'static str,
    mode: Mode,
    clients: usize,
    conns: usize,
    total: u64,
    secs: f64,
    key_space: u64,
    prefix: &'static str,
    /// Whether the scenario is measured (setup loads are shown but marked as setup).
    pub(crate) setup: bool,
    /// Whether the server runs on one CPU and the load generator on the others meanwhile
    /// ([`CpuSplit`]).
    split_cpus: bool,
}

#[allow(clippy::too_many_arguments)]
fn scenario(
    name: &'static str,
    what: &'static str,
    mode: Mode,
    clients: usize,
    conns: usize,
    total: u64,
    secs: f64,
    key_space: u64,
    prefix: &'static str,
    setup: bool,
) -> Scenario {
    Scenario {
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
        split_cpus: false,
    }
}

impl Scenario {
    fn on_split_cpus(self) -> Self {
        Self {
            split_cpus: true,
            ..self
        }
    }
}

/// The single-member scenarios, in the order they run on one server.
fn scenarios() -> Vec<Scenario> {
    let s = scenario;
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
            "put-16",
            "put, 16 clients / 4 conns, 100k keys",
            Mode::Put,
            16,
            4,
            500_000,
            6.0,
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
            "watch-fanout",
            "100 watchers on 10 streams, 16 putters / 4 conns, 1000 keys; the server on one CPU, \
             the load generator on the others",
            Mode::Watch {
                watchers: 100,
                streams: 10,
            },
            16,
            4,
            200_000,
            6.0,
            1_000,
            WATCH_PREFIX,
            false,
        )
        .on_split_cpus(),
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
        s(
            "create-64",
            "put of a new key each time, 64 clients / 8 conns (last: the keys it adds would \
             change the scenarios after it)",
            Mode::Create,
            64,
            8,
            500_000,
            10.0,
            CREATE_KEY_SPACE,
            CREATE_PREFIX,
            false,
        ),
    ]
}

/// The load scenarios of the 3-member runs, in the order they run on one cluster; the
/// failover measurement ([`crate::cluster::FAILOVER_SCENARIO`]) follows them. Every client
/// knows the endpoints of all three members, as a real etcd client is configured.
fn cluster_scenarios() -> Vec<Scenario> {
    let s = scenario;
    vec![
        s(
            "cluster3-load-100k",
            "3 members, setup: load 100k keys, txns of 128 puts, 16 clients / 4 conns",
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
            "cluster3-put-64",
            "3 members: put, 64 clients / 8 conns over all 3 endpoints, 100k keys",
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
            "cluster3-range-l-64",
            "3 members: get one key, linearizable, 64 clients / 8 conns over all 3 endpoints, 100k loaded keys",
            Mode::Range(Consistency::L),
            64,
            8,
            5_000_000,
            10.0,
            KEY_SPACE,
            "",
            false,
        ),
    ]
}

impl Scenario {
    fn opts(&self, endpoints: &[String], time_scale: f64) -> LoadOpts {
        let mut o = LoadOpts::defaults(endpoints.to_vec());
        o.clients = self.clients;
        o.conns = self.conns;
        o.total = self.total;
        o.key_space_size = self.key_space;
        o.prefix = self.prefix.to_string();
        o.key_size = 8;
        o.val_size = 256;
        o.sequential_keys = matches!(self.mode, Mode::Load | Mode::Create);
        let secs = if self.setup {
            self.secs
        } else {
            self.secs * time_scale
        };
        o.duration = Duration::from_secs_f64(secs.max(0.5));
        o
    }

    /// Runs the scenario with keelson-bench's own load, or with the Go load generator `go`
    /// (setup loads always with keelson-bench's).
    pub(crate) async fn run(
        &self,
        endpoints: &[String],
        time_scale: f64,
        go: Option<&Path>,
    ) -> Report {
        let o = self.opts(endpoints, time_scale);
        if let Some(bin) = go.filter(|_| !self.setup) {
            return run_go(bin, &o, self.mode).await;
        }
        match self.mode {
            Mode::Put | Mode::Create => workload::put(&o).await,
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
                        drain_timeout: WATCH_DRAIN,
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
        let o = self.opts(&[], time_scale);
        o.duration + Duration::from_secs(8)
    }
}

/// Runs one scenario with the Go load generator and reads the report it prints as its last
/// line of JSON (the same fields as keelson-bench's [`Report`]).
async fn run_go(bin: &Path, o: &LoadOpts, mode: Mode) -> Report {
    let (name, extra): (&str, Vec<String>) = match mode {
        Mode::Put => ("put", vec![]),
        Mode::Range(c) => (
            "range",
            vec![
                "--consistency".into(),
                match c {
                    Consistency::L => "l",
                    Consistency::S => "s",
                }
                .into(),
            ],
        ),
        Mode::Watch { watchers, streams } => (
            "watch",
            vec![
                format!("--watchers={watchers}"),
                format!("--streams={streams}"),
                format!("--drain-timeout={}ms", WATCH_DRAIN.as_millis()),
            ],
        ),
        other => {
            return Report::not_run(
                "go",
                Status::Unsupported,
                format!("the Go load generator has no mode for {other:?}"),
                o.conns,
                o.clients,
            )
        }
    };
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg(name)
        .arg(format!("--endpoints={}", o.endpoints.join(",")))
        .arg(format!("--clients={}", o.clients))
        .arg(format!("--conns={}", o.conns))
        .arg(format!("--total={}", o.total))
        .arg(format!("--duration={}ms", o.duration.as_millis()))
        .arg(format!(
            "--request-timeout={}ms",
            o.request_timeout.as_millis()
        ))
        .arg(format!("--key-space-size={}", o.key_space_size))
        .arg(format!("--key-size={}", o.key_size))
        .arg(format!("--val-size={}", o.val_size))
        .arg(format!("--prefix={}", o.prefix))
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let failed = |detail: String| Report::not_run(name, Status::Failed, detail, o.conns, o.clients);
    // go-load has no probe of its own; the machine's pauses stop every process alike, so one
    // in keelson-bench for as long as go-load runs tells them from the server's stalls.
    let probe = PauseProbe::start();
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("start {}: {e}", bin.display())),
    };
    let limit = o.duration + o.request_timeout + WATCH_DRAIN + Duration::from_secs(30);
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return failed(format!("{}: {e}", bin.display())),
        Err(_) => {
            return failed(format!(
                "{} still running after {limit:?}; killed",
                bin.display()
            ))
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match last.map(serde_json::from_str::<Report>) {
        Some(Ok(mut report)) => {
            let pause = probe.finish();
            if report.max_stall_ms.is_some() {
                report.max_pause_ms = pause.map(|p| p.as_secs_f64() * 1000.0);
            }
            report
        }
        other => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            failed(format!(
                "{} exited with {} without a report{}: {}",
                bin.display(),
                output.status,
                match other {
                    Some(Err(e)) => format!(" ({e})"),
                    _ => String::new(),
                },
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ))
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerRun {
    pub kind: Kind,
    pub round: usize,
    /// Members of the cluster this run measured: 1, or 3 for the cluster scenarios.
    #[serde(default = "one_member")]
    pub members: usize,
    /// Spawn to ready; for a cluster, spawn of the first member to the last one ready.
    pub start_to_ready_ms: f64,
    pub scenarios: Vec<(String, Report)>,
    /// For a cluster: summed over the members, read before the failover kills any.
    pub peak_rss_bytes: Option<u64>,
    /// Each member's peak RSS (cluster runs only), read before the failover kills any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_peak_rss_bytes: Vec<Option<u64>>,
    /// The leader kills of a cluster run, when the failover scenario ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    /// CPU used while the scenarios ran, by the server, keelson-bench and everything else.
    #[serde(default)]
    pub cpu: CpuUse,
    /// For a cluster: summed over the members.
    pub data_dir_bytes: u64,
    /// Set when the server could not be started or died during the run.
    pub failure: Option<String>,
    pub wall_secs: f64,
}

fn one_member() -> usize {
    1
}

impl ServerRun {
    pub(crate) fn new(kind: Kind, round: usize, members: usize) -> ServerRun {
        ServerRun {
            kind,
            round,
            members,
            start_to_ready_ms: 0.0,
            scenarios: Vec::new(),
            peak_rss_bytes: None,
            member_peak_rss_bytes: Vec::new(),
            failover: None,
            cpu: CpuUse::default(),
            data_dir_bytes: 0,
            failure: None,
            wall_secs: 0.0,
        }
    }

    /// `keelson r2`, or `keelson ×3 r2` for a cluster run.
    pub fn label(&self) -> String {
        if self.members > 1 {
            format!("{} ×{} r{}", self.kind.name(), self.members, self.round + 1)
        } else {
            format!("{} r{}", self.kind.name(), self.round + 1)
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteResult {
    pub machine: Machine,
    pub rounds_planned: usize,
    pub time_scale: f64,
    pub runs: Vec<ServerRun>,
    pub notes: Vec<String>,
    pub wall_secs: f64,
    /// The single-member scenarios (name, description).
    pub scenarios: Vec<(String, String)>,
    /// The 3-member scenarios (name, description), the failover last.
    #[serde(default)]
    pub cluster_scenarios: Vec<(String, String)>,
    /// What drove the load when it was not keelson-bench itself (the Go load generator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_generator: Option<String>,
}

/// What one server run measures: the single-member scenarios on one member, or the 3-member
/// scenarios on a cluster.
#[derive(Clone, Copy, Debug)]
struct Job {
    kind: Kind,
    members: usize,
}

/// The time to keep for the next run of a size: before one has run, its (capped) budget;
/// then the longest seen with a margin. Every run is bounded by its own budget, but taking the
/// budget each time would leave no room for the third round (runs take far less).
fn predicted_need(longest_seen: Duration, budget: Duration) -> Duration {
    if longest_seen.is_zero() {
        budget
    } else {
        longest_seen.mul_f64(1.25) + Duration::from_secs(15)
    }
}

/// Longest a cluster run is assumed to take before one has been seen (the setup load's budget
/// alone is 68 s, but it takes a few seconds).
const CLUSTER_RUN_ESTIMATE_CAP: Duration = Duration::from_secs(120);
const SINGLE_RUN_ESTIMATE_CAP: Duration = Duration::from_secs(240);

pub async fn run(args: SuiteArgs) -> Result<SuiteResult, String> {
    let kinds = args.bins.kinds()?;
    args.bins.check(&kinds)?;
    let go = args.go_load();
    if let Some(bin) = go {
        if !bin.is_file() {
            return Err(format!(
                "the Go load generator is not at {} (`make bench-go` builds it; or pass --go-load-bin)",
                bin.display()
            ));
        }
    }
    let selected = |name: &str| {
        (go.is_none() || GO_SCENARIOS.contains(&name))
            && (args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str())))
    };
    let single: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| {
            (s.setup && (go.is_none() || GO_SCENARIOS.contains(&s.name))) || selected(s.name)
        })
        .collect();
    let cluster_list: Vec<Scenario> = cluster_scenarios()
        .into_iter()
        .filter(|s| s.setup || selected(s.name))
        .collect();
    let failovers = if selected(FAILOVER_SCENARIO) {
        cluster::failovers_per_run(args.time_scale)
    } else {
        0
    };
    let single_measured = single.iter().any(|s| !s.setup);
    let cluster_measured = cluster_list.iter().any(|s| !s.setup) || failovers > 0;
    if !single_measured && !cluster_measured {
        let names: Vec<&str> = scenarios()
            .iter()
            .chain(cluster_scenarios().iter())
            .filter(|s| !s.setup)
            .map(|s| s.name)
            .chain([FAILOVER_SCENARIO])
            .collect();
        return Err(format!(
            "--only {:?} selects no scenario; the scenarios are: {}",
            args.only,
            names.join(", ")
        ));
    }
    let mut jobs = Vec::new();
    for (measured, members) in [(single_measured, 1), (cluster_measured, CLUSTER_SIZE)] {
        if measured {
            jobs.extend(kinds.iter().map(|&kind| Job { kind, members }));
        }
    }

    let start = Instant::now();
    let deadline = start + args.max_time;
    let cleared = stall_evidence::clear_previous(&args.results_dir(), go.is_some());
    if cleared > 0 {
        eprintln!("suite: removed {cleared} stall evidence file(s) of the previous run");
    }
    let parent = args.bins.work_parent();
    let work = tempfile::Builder::new()
        .prefix("keelson-bench-")
        .tempdir_in(&parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))?;
    let repo = args.results_dir();
    let machine = machine::describe(
        work.path(),
        &args.bins.keelson_bin(),
        &args.bins.etcd_bin,
        &repo,
    );
    eprintln!(
        "suite: {} round(s) over {:?} in {}; machine: {} cores, {}, fsync {}",
        args.rounds,
        jobs.iter()
            .map(|j| format!("{}×{}", j.kind.name(), j.members))
            .collect::<Vec<_>>(),
        work.path().display(),
        machine.cores,
        machine.disk,
        machine.fsync_probe
    );
    let budget_of = |list: &[Scenario]| -> Duration {
        list.iter()
            .map(|s| s.budget(args.time_scale))
            .sum::<Duration>()
            + Duration::from_secs(20)
    };
    let single_budget = budget_of(&single).min(SINGLE_RUN_ESTIMATE_CAP);
    let cluster_budget = (budget_of(&cluster_list) + cluster::failover_budget(failovers))
        .min(CLUSTER_RUN_ESTIMATE_CAP);

    let describe = |list: &[Scenario]| -> Vec<(String, String)> {
        list.iter()
            .map(|s| (s.name.to_string(), s.what.to_string()))
            .collect()
    };
    let mut cluster_described = if cluster_measured {
        describe(&cluster_list)
    } else {
        Vec::new()
    };
    if failovers > 0 {
        cluster_described.push((
            FAILOVER_SCENARIO.to_string(),
            cluster::failover_description(failovers),
        ));
    }
    let mut result = SuiteResult {
        machine,
        rounds_planned: args.rounds,
        time_scale: args.time_scale,
        runs: Vec::new(),
        notes: Vec::new(),
        wall_secs: 0.0,
        scenarios: if single_measured {
            describe(&single)
        } else {
            Vec::new()
        },
        cluster_scenarios: cluster_described,
        load_generator: go.map(|_| GO_GENERATOR.to_string()),
    };
    // The longest run seen so far of each size, to predict whether the next one fits.
    let mut longest_single = Duration::ZERO;
    let mut longest_cluster = Duration::ZERO;
    'rounds: for round in 0..args.rounds {
        let mut order = jobs.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for job in order {
            let is_cluster = job.members > 1;
            let need = if is_cluster {
                predicted_need(longest_cluster, cluster_budget)
            } else {
                predicted_need(longest_single, single_budget)
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left < need {
                result.notes.push(format!(
                    "stopped before round {} ({} ×{}) to stay within --max-time {:?}",
                    round + 1,
                    job.kind.name(),
                    job.members,
                    args.max_time
                ));
                break 'rounds;
            }
            let t = Instant::now();
            let run = if is_cluster {
                cluster::run_cluster(
                    &args,
                    &cluster_list,
                    failovers,
                    job.kind,
                    round,
                    work.path(),
                )
                .await
            } else {
                run_server(&args, &single, job.kind, round, work.path()).await
            };
            let took = t.elapsed();
            if is_cluster {
                longest_cluster = longest_cluster.max(took);
            } else {
                longest_single = longest_single.max(took);
            }
            if let Some(f) = &run.failure {
                eprintln!("suite: {}: {f}", run.label());
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
    let mut run = ServerRun::new(kind, round, 1);
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
    // The server is reaped only after the meter stops, so go-load's CPU can be counted.
    let meter = CpuMeter::start(server.pid().as_slice(), Generator::WithReapedChildren);
    let pid = server.pid();
    let cpu_of = move || pid.and_then(|p| process_cpu_seconds(&p.to_string()));
    for scenario in list {
        let split = match (scenario.split_cpus, pid) {
            (true, Some(server_pid)) => Some(CpuSplit::start(server_pid)),
            _ => None,
        };
        let metrics_before = server.metrics_text();
        let before = cpu_of();
        // No server pid: only the generator and the machine are of interest here.
        let load = CpuMeter::start(&[], Generator::WithReapedChildren);
        let mut report = scenario
            .run(&[server.endpoint()], args.time_scale, args.go_load())
            .await;
        note_load(&mut report, load.stop().load());
        set_cpu_per_op(&mut report, before, cpu_of());
        if let Some(split) = split {
            note_split(&mut report, split);
        }
        eprintln!(
            "[{} r{}] {}",
            kind.name(),
            round + 1,
            report.human().trim_end().replace('\n', "\n    ")
        );
        let evidence_label = stall_evidence::label(&label, args.go_load().is_some());
        if let Some(path) = stall_evidence::keep(
            &args.results_dir(),
            &evidence_label,
            scenario.name,
            &report,
            &server,
            metrics_before.as_deref(),
            stall_evidence::keep_above_ms(matches!(scenario.mode, Mode::Load)),
        ) {
            eprintln!("suite: the stall's evidence is in {}", path.display());
        }
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

/// Records in a split scenario's report whether the split held.
fn note_split(report: &mut Report, split: Result<CpuSplit, String>) {
    let held = match &split {
        Ok(s) => {
            eprintln!("suite: {}", s.description);
            1.0
        }
        Err(e) => {
            eprintln!("suite: warning: the server and the load generator share the CPUs: {e}");
            0.0
        }
    };
    drop(split);
    report.counters.insert("cpu_split".into(), held);
}

/// Seconds: a shorter scenario is not measured for [`note_load`]. /proc counts CPU time in
/// clock ticks (10 ms), so a setup of a few ms (load-list) would read as 0% or 100% busy.
const SHORTEST_LOAD_MEASURED: f64 = 0.5;

/// Records what a scenario cost beside the server: the load generator's CPU per operation
/// (this process and the Go generator it waited for) and how busy the machine's cores were.
pub(crate) fn note_load(report: &mut Report, load: LoadUse) {
    if report.ops == 0 || report.elapsed_secs < SHORTEST_LOAD_MEASURED {
        return;
    }
    if let Some(secs) = load.generator_secs {
        report.counters.insert(
            "generator_cpu_us_per_op".into(),
            secs * 1e6 / report.ops as f64,
        );
    }
    if let Some(share) = load.machine_busy_share {
        report
            .counters
            .insert("machine_busy_pct".into(), (share * 1000.0).round() / 10.0);
    }
}

/// Sets the server CPU per operation of a completed scenario from the server's CPU seconds
/// read just before and just after it.
pub(crate) fn set_cpu_per_op(report: &mut Report, before: Option<f64>, after: Option<f64>) {
    if let (Status::Ok, Some(b), Some(a)) = (report.status, before, after) {
        if report.ops > 0 {
            report.server_cpu_us_per_op = Some((a - b).max(0.0) * 1e6 / report.ops as f64);
        }
    }
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
    /// Write scenarios: the longest gap between two acknowledged writes, ms.
    stall: Option<f64>,
    /// Server CPU µs per operation.
    cpu: Option<f64>,
    errors: u64,
    runs_ok: usize,
    unsupported: Option<String>,
    failed: Option<String>,
    counters: BTreeMap<String, f64>,
    per_round: Vec<Option<f64>>,
    /// Each round's longest write stall and the generator's longest pause in it, ms.
    stalls_per_round: Vec<Option<(f64, Option<f64>)>>,
}

/// The medians of `scenario` over the runs of `kind` with `members` members.
fn cell(result: &SuiteResult, kind: Kind, members: usize, scenario: &str) -> Cell {
    let mut reports = Vec::new();
    let mut per_round = Vec::new();
    let mut stalls_per_round = Vec::new();
    for run in result
        .runs
        .iter()
        .filter(|r| r.kind == kind && r.members == members)
    {
        let found = run
            .scenarios
            .iter()
            .find(|(n, _)| n == scenario)
            .map(|(_, r)| r);
        let ok = found.filter(|r| r.status == Status::Ok);
        per_round.push(ok.map(|r| r.ops_per_sec));
        stalls_per_round.push(ok.and_then(|r| Some((r.max_stall_ms?, r.max_pause_ms))));
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
        stall: median(ok.iter().filter_map(|r| r.max_stall_ms).collect()),
        cpu: median(ok.iter().filter_map(|r| r.server_cpu_us_per_op).collect()),
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
        stalls_per_round,
    }
}

/// Each round's longest write stall next to the load generator's longest pause in the same
/// run, so that a stall can be told to be the machine's (both long) or the server's.
fn write_stalls_per_round(out: &mut String, result: &SuiteResult, rounds: usize) {
    let _ = writeln!(
        out,
        "\n## Write stalls per round (ms): longest gap between acknowledged writes / longest \
         pause of the load generator's own 1 ms timer in the same run\n"
    );
    let _ = writeln!(
        out,
        "A stall about as long as the pause beside it was the machine's (every process \
         stopped), not the server's; a few ms of pause are normal on two busy cores.\n"
    );
    let kinds = [Kind::Keelson, Kind::Etcd];
    let head: Vec<String> = kinds
        .iter()
        .flat_map(|kind| (1..=rounds).map(move |r| format!("{} r{r}", kind.name())))
        .collect();
    let _ = writeln!(out, "| scenario | {} |", head.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(head.len()));
    for (members, names) in scenario_groups(result) {
        for (name, _) in names.iter().filter(|(n, _)| n != FAILOVER_SCENARIO) {
            let cells: Vec<Cell> = kinds
                .iter()
                .map(|kind| cell(result, *kind, members, name))
                .collect();
            if cells
                .iter()
                .all(|c| c.stalls_per_round.iter().all(Option::is_none))
            {
                continue;
            }
            let cols: Vec<String> = cells
                .iter()
                .flat_map(|c| {
                    (0..rounds).map(|i| match c.stalls_per_round.get(i).copied().flatten() {
                        Some((stall, pause)) => format!("{} / {}", num(Some(stall)), num(pause)),
                        None => "–".into(),
                    })
                })
                .collect();
            let _ = writeln!(out, "| {name} | {} |", cols.join(" | "));
        }
    }
}

/// Where the cores went in the write scenarios: server and generator CPU per operation and
/// how busy the machine was, with the throughput ratio that CPU alone would allow.
fn cores_section(out: &mut String, result: &SuiteResult) {
    let mut rows = Vec::new();
    for (members, names) in scenario_groups(result) {
        for (name, _) in names {
            let [k, e] = [Kind::Keelson, Kind::Etcd].map(|kind| cell(result, kind, members, name));
            if k.stall.is_none() && e.stall.is_none() {
                continue;
            }
            let server = |c: &Cell| match members {
                1 => c.cpu,
                _ => c.counters.get("cpu_us_per_op_3_members").copied(),
            };
            let counter = |c: &Cell, name: &str| c.counters.get(name).copied();
            let per_op = |c: &Cell| Some(server(c)? + counter(c, "generator_cpu_us_per_op")?);
            if per_op(&k).is_none() && per_op(&e).is_none() {
                continue;
            }
            let pair = |a: Option<f64>, b: Option<f64>| format!("{} / {}", num(a), num(b));
            rows.push(format!(
                "| {name} | {} | {} | {} | {} | {} |",
                pair(
                    counter(&k, "machine_busy_pct"),
                    counter(&e, "machine_busy_pct")
                ),
                pair(server(&k), server(&e)),
                pair(
                    counter(&k, "generator_cpu_us_per_op"),
                    counter(&e, "generator_cpu_us_per_op")
                ),
                ratio(per_op(&e), per_op(&k)),
                ratio(k.ops, e.ops),
            ));
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Where the cores went (write scenarios)\n");
    let _ = writeln!(
        out,
        "The server's CPU per operation (a cluster's members summed), the load generator's (with \
         the Go generator it waited for), and how busy the machine's cores were (every process, \
         /proc/stat) while the scenario ran. When the cores are close to fully busy against both \
         servers, throughput is about cores / (server + generator µs per operation), so the \
         measured ratio follows (etcd's server + generator) / (keelson's server + generator): the \
         ratio the CPU allows, the most a cheaper server can reach with this generator on these \
         cores. A measured ratio well below it means keelson left cores idle (a latency bound).\n"
    );
    let _ = writeln!(
        out,
        "| scenario | machine busy %, keelson / etcd | server CPU µs/op, keelson / etcd | generator CPU µs/op, keelson / etcd | ratio the CPU allows ↑ | measured ratio ↑ |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(out, "{row}");
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

/// The single-member scenarios (1 member) and the cluster ones, with their members.
fn scenario_groups(result: &SuiteResult) -> [(usize, &[(String, String)]); 2] {
    [
        (1, result.scenarios.as_slice()),
        (CLUSTER_SIZE, result.cluster_scenarios.as_slice()),
    ]
}

/// What the stall and CPU columns of the medians tables are.
const COLUMNS_NOTE: &str = "Max stall (write scenarios): the longest time, in ms, between two \
    consecutive acknowledged writes over all clients. CPU µs/op: the server's CPU time (user + \
    system, from /proc) during the scenario divided by its operations.";

/// The table of medians (throughput, latencies, ratios) of `names`, measured on `members`.
fn medians_table(
    out: &mut String,
    result: &SuiteResult,
    members: usize,
    names: &[(String, String)],
) {
    let (k, e) = (Kind::Keelson, Kind::Etcd);
    let _ = writeln!(out, "| scenario | unit/s | keelson | etcd | ratio ↑ | p50 keelson | p50 etcd | p99 keelson | p99 etcd | p99 ratio ↓ | p99.9 keelson | p99.9 etcd | max stall keelson | max stall etcd | CPU µs/op keelson | CPU µs/op etcd | errors keelson / etcd |");
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for (name, _) in names {
        if name == FAILOVER_SCENARIO {
            continue;
        }
        let a = cell(result, k, members, name);
        let b = cell(result, e, members, name);
        let unit = result
            .runs
            .iter()
            .filter(|r| r.members == members)
            .flat_map(|r| r.scenarios.iter())
            .find(|(n, r)| n == name && r.status == Status::Ok)
            .map(|(_, r)| r.unit.clone())
            .unwrap_or_default();
        let show = |c: &Cell, v: Option<f64>| -> String {
            if c.unsupported.is_some() {
                "unsupported".into()
            } else if c.runs_ok == 0 && c.failed.is_some() {
                "failed".into()
            } else {
                num(v)
            }
        };
        let _ = writeln!(
            out,
            "| {name} | {unit}s | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
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
            show(&a, a.stall),
            show(&b, b.stall),
            show(&a, a.cpu),
            show(&b, b.cpu),
            a.errors,
            b.errors,
        );
    }
}

/// Median of `value` over the runs of `kind` with `members` members where it is known.
fn run_median(
    result: &SuiteResult,
    kind: Kind,
    members: usize,
    value: impl Fn(&ServerRun) -> Option<f64>,
) -> Option<f64> {
    median(
        result
            .runs
            .iter()
            .filter(|r| r.kind == kind && r.members == members)
            .filter_map(value)
            .collect(),
    )
}

/// Every failover sample of `kind`'s cluster runs, and the failover records themselves.
fn failovers(result: &SuiteResult, kind: Kind) -> (Vec<f64>, Vec<&Failover>) {
    let records: Vec<&Failover> = result
        .runs
        .iter()
        .filter(|r| r.kind == kind)
        .filter_map(|r| r.failover.as_ref())
        .collect();
    let samples = records
        .iter()
        .flat_map(|f| f.samples_ms.iter().copied())
        .collect();
    (samples, records)
}

/// The 3-member section: medians of the load scenarios, the failover, the members' memory.
fn cluster_section(out: &mut String, result: &SuiteResult) {
    let (k, e) = (Kind::Keelson, Kind::Etcd);
    let _ = writeln!(
        out,
        "\n## 3-member clusters (keelson cluster vs etcd cluster)\n"
    );
    let _ = writeln!(
        out,
        "Three members of each on 127.0.0.1, started together with the same flags (`--initial-cluster` of \
         the three, `--initial-cluster-state new`, default heartbeat and election timeouts, fsync on), \
         fresh data dirs; every client knows the three endpoints. The three members and the load \
         generator share the machine's {} cores. Throughput ratio = keelson / etcd: **higher is better \
         for keelson**; latency ratio = keelson / etcd: **lower is better for keelson**. Latencies in ms. \
         {COLUMNS_NOTE} For a cluster, CPU µs/op is the leader's (all three summed is under \
         \"Scenario details\" as `cpu_us_per_op_3_members`).\n",
        result.machine.cores
    );
    medians_table(out, result, CLUSTER_SIZE, &result.cluster_scenarios);

    if result
        .cluster_scenarios
        .iter()
        .any(|(n, _)| n == FAILOVER_SCENARIO)
    {
        let (ks, kf) = failovers(result, k);
        let (es, ef) = failovers(result, e);
        let worst = |v: &[f64]| v.iter().copied().reduce(f64::max);
        let planned = |f: &[&Failover]| f.iter().map(|f| f.planned).sum::<usize>();
        let failed = |f: &[&Failover]| f.iter().map(|f| f.writes_failed.total).sum::<u64>();
        let attempted = |f: &[&Failover]| f.iter().map(|f| f.writes_attempted).sum::<u64>();
        let _ = writeln!(
            out,
            "\n### 3-member failover: SIGKILL of the leader → first acknowledged write\n"
        );
        let _ = writeln!(
            out,
            "Over every kill of every round. **Lower is better for keelson.**\n"
        );
        let _ = writeln!(
            out,
            "| `{FAILOVER_SCENARIO}` | keelson | etcd | keelson / etcd ↓ |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| median, ms | {} | {} | {} |",
            num(median(ks.clone())),
            num(median(es.clone())),
            ratio(median(ks.clone()), median(es.clone()))
        );
        let _ = writeln!(
            out,
            "| worst, ms | {} | {} | {} |",
            num(worst(&ks)),
            num(worst(&es)),
            ratio(worst(&ks), worst(&es))
        );
        let _ = writeln!(
            out,
            "| kills measured / planned | {} / {} | {} / {} | |",
            ks.len(),
            planned(&kf),
            es.len(),
            planned(&ef)
        );
        let _ = writeln!(
            out,
            "| writes failed while waiting / issued (expected until a leader takes over) | {} / {} | {} / {} | |",
            failed(&kf),
            attempted(&kf),
            failed(&ef),
            attempted(&ef)
        );
        for (kind, records) in [(k, &kf), (e, &ef)] {
            let mut texts = ErrorCounts::default();
            for f in records.iter() {
                for (text, n) in &f.writes_failed.kinds {
                    texts.add(text.clone(), *n);
                }
            }
            if !texts.kinds.is_empty() {
                let list: Vec<String> = texts
                    .kinds
                    .iter()
                    .map(|(t, n)| format!("{n} × `{}`", t.replace('`', "'")))
                    .collect();
                let _ = writeln!(
                    out,
                    "\n{} writes failed while waiting: {}",
                    kind.name(),
                    list.join(", ")
                );
            }
        }
    }

    let n = CLUSTER_SIZE;
    let largest_member = |kind: Kind| {
        mib(run_median(result, kind, n, |r| {
            r.member_peak_rss_bytes
                .iter()
                .flatten()
                .max()
                .map(|&b| b as f64)
        }))
    };
    let summed = |kind: Kind| {
        mib(run_median(result, kind, n, |r| {
            r.peak_rss_bytes.map(|b| b as f64)
        }))
    };
    let disk = |kind: Kind| {
        mib(run_median(result, kind, n, |r| {
            (r.failure.is_none() && r.data_dir_bytes > 0).then_some(r.data_dir_bytes as f64)
        }))
    };
    let ready = |kind: Kind| {
        run_median(result, kind, n, |r| {
            (r.start_to_ready_ms > 0.0).then_some(r.start_to_ready_ms)
        })
    };
    let _ = writeln!(
        out,
        "\n| 3-member cluster (before the failover kills) | keelson | etcd | keelson / etcd (lower is better) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (what, a, b) in [
        (
            "peak RSS of the largest member, MiB",
            largest_member(k),
            largest_member(e),
        ),
        (
            "peak RSS summed over the 3 members, MiB",
            summed(k),
            summed(e),
        ),
        ("data dirs summed over the 3 members, MiB", disk(k), disk(e)),
        ("fresh start to all 3 ready, ms", ready(k), ready(e)),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} |",
            num(a),
            num(b),
            ratio(a, b)
        );
    }
}

/// The Markdown report: machine, tables of medians (one member, then 3-member clusters),
/// per-round throughput, errors, notes.
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
    match &result.load_generator {
        None => {
            let _ = writeln!(out, "# keelson vs etcd: `make bench`\n");
        }
        Some(generator) => {
            let _ = writeln!(
                out,
                "# keelson vs etcd, load from etcd's Go client: `make bench-go`\n"
            );
            let _ = writeln!(
                out,
                "- load generator: {generator}; the setup load by keelson-bench"
            );
        }
    }
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
    let _ = writeln!(
        out,
        "- both servers: default flags (fsync on; etcd 3.4 defaults, no --unsafe-no-fsync), one member on 127.0.0.1{}, fresh data dir per run; keys 8 bytes, values 256 bytes; the load generator runs on the same {} cores\n",
        if result.cluster_scenarios.is_empty() {
            String::new()
        } else {
            ", then a 3-member cluster of each (below)".to_string()
        },
        m.cores
    );

    let capacity = |r: &ServerRun| r.cpu.wall_secs * m.cores.max(1) as f64;
    let busy_runs: Vec<String> = result
        .runs
        .iter()
        .filter(|r| capacity(r) > 0.0 && r.cpu.other_secs / capacity(r) > 0.05)
        .map(|r| {
            format!(
                "{} {:.0}%",
                r.label(),
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
    if !result.scenarios.is_empty() {
        let _ = writeln!(out, "## Medians over the rounds (one member)\n");
        let _ = writeln!(out, "Throughput ratio = keelson / etcd: **higher is better for keelson**. Latency ratio = keelson / etcd: **lower is better for keelson**. Latencies in ms. {COLUMNS_NOTE}\n");
        medians_table(&mut out, result, 1, &result.scenarios);
        // Server-level rows.
        let rss = |kind: Kind| {
            mib(run_median(result, kind, 1, |r| {
                r.peak_rss_bytes.map(|b| b as f64)
            }))
        };
        let disk = |kind: Kind| {
            mib(run_median(result, kind, 1, |r| {
                r.failure.is_none().then_some(r.data_dir_bytes as f64)
            }))
        };
        let ready = |kind: Kind| {
            run_median(result, kind, 1, |r| {
                (r.start_to_ready_ms > 0.0).then_some(r.start_to_ready_ms)
            })
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
    }
    if !result.cluster_scenarios.is_empty() {
        cluster_section(&mut out, result);
    }
    cores_section(&mut out, result);

    let _ = writeln!(out, "\n## Runs\n");
    let _ = writeln!(
        out,
        "CPU seconds while the scenarios ran (of {} cores × the wall time): the server (a cluster's \
         members summed, up to the failover kills), the load generator (keelson-bench, with the \
         go-load processes it ran in `make bench-go`; it shares the machine) \
         and every other process. A cluster's peak RSS is summed over its members.\n",
        m.cores
    );
    let _ = writeln!(
        out,
        "| run | wall s | server CPU s | load generator CPU s | other processes CPU s | peak RSS MiB | failure |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for r in &result.runs {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r.label(),
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
    for (name, what) in result.scenarios.iter().chain(&result.cluster_scenarios) {
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
    for (members, names) in scenario_groups(result) {
        for (name, _) in names.iter().filter(|(n, _)| n != FAILOVER_SCENARIO) {
            let mut cols = Vec::new();
            for kind in [k, e] {
                let c = cell(result, kind, members, name);
                for i in 0..rounds {
                    cols.push(num(c.per_round.get(i).copied().flatten()));
                }
            }
            let _ = writeln!(out, "| {name} | {} |", cols.join(" | "));
        }
    }
    if result
        .cluster_scenarios
        .iter()
        .any(|(n, _)| n == FAILOVER_SCENARIO)
    {
        let mut cols = Vec::new();
        for kind in [k, e] {
            for i in 0..rounds {
                let samples = result
                    .runs
                    .iter()
                    .find(|r| r.kind == kind && r.round == i && r.members == CLUSTER_SIZE)
                    .and_then(|r| r.failover.as_ref())
                    .map(|f| {
                        f.samples_ms
                            .iter()
                            .map(|ms| format!("{ms:.0}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|s| !s.is_empty());
                cols.push(samples.unwrap_or_else(|| "–".into()));
            }
        }
        let _ = writeln!(
            out,
            "| {FAILOVER_SCENARIO} (ms per kill) | {} |",
            cols.join(" | ")
        );
    }

    write_stalls_per_round(&mut out, result, rounds);

    let _ = writeln!(out, "\n## Scenario details (medians)\n");
    for (members, names) in scenario_groups(result) {
        for (name, _) in names {
            for kind in [k, e] {
                let c = cell(result, kind, members, name);
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
    }

    let _ = writeln!(out, "\n## Errors and failures\n");
    let mut any = false;
    for run in &result.runs {
        if let Some(f) = &run.failure {
            any = true;
            let _ = writeln!(
                out,
                "- {}: **{}**",
                run.label(),
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
                    "- {} {name}: failed: {}",
                    run.label(),
                    r.detail.as_deref().unwrap_or("")
                );
            }
            for (text, n) in &r.errors.kinds {
                any = true;
                let _ = writeln!(
                    out,
                    "- {} {name}: {n} × `{}`",
                    run.label(),
                    text.replace('`', "'")
                );
            }
        }
        if let Some(f) = &run.failover {
            for failure in &f.failures {
                any = true;
                let mut lines = failure.lines();
                let _ = writeln!(
                    out,
                    "- {} {FAILOVER_SCENARIO}: **{}**",
                    run.label(),
                    lines.next().unwrap_or("")
                );
                let tail: Vec<&str> = lines.collect();
                if !tail.is_empty() {
                    let _ = writeln!(out, "\n```\n{}\n```\n", tail.join("\n"));
                }
            }
        }
    }
    if !any {
        let _ = writeln!(out, "None: every request of every scenario succeeded.");
    }
    let failover_notes = result.runs.iter().flat_map(|r| {
        r.failover.iter().flat_map(move |f| {
            f.notes
                .iter()
                .map(move |n| format!("{} {FAILOVER_SCENARIO}: {n}", r.label()))
        })
    });
    let notes: Vec<String> = result.notes.iter().cloned().chain(failover_notes).collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for n in &notes {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyGen;

    fn machine() -> Machine {
        Machine {
            date_utc: "2026-01-01T00:00:00Z".into(),
            cores: 2,
            cpu_model: "test".into(),
            memory_gib: 1.0,
            kernel: "test".into(),
            disk: "test".into(),
            fsync_probe: "test".into(),
            keelson_version: "test".into(),
            keelson_commit: "test".into(),
            etcd_version: "test".into(),
            bench_version: "test".into(),
        }
    }

    fn put_report(ops_per_sec: f64) -> Report {
        let mut report = Report::not_run("put", Status::Ok, String::new(), 8, 64);
        report.detail = None;
        report.unit = "put".into();
        report.ops_per_sec = ops_per_sec;
        report
    }

    fn cluster_run(kind: Kind, round: usize, ops: f64, samples_ms: Vec<f64>) -> ServerRun {
        let mut run = ServerRun::new(kind, round, CLUSTER_SIZE);
        let mut report = put_report(ops);
        report.max_stall_ms = Some(ops / 100.0);
        // etcd's Go generator has no pause probe.
        report.max_pause_ms = (kind == Kind::Keelson).then_some(2.5);
        run.scenarios.push(("cluster3-put-64".into(), report));
        run.member_peak_rss_bytes = vec![Some(100 << 20), Some(200 << 20), Some(150 << 20)];
        run.peak_rss_bytes = Some(450 << 20);
        let mut failover = Failover {
            planned: 3,
            samples_ms,
            writes_attempted: 50,
            ..Failover::default()
        };
        failover
            .writes_failed
            .add("Unavailable: etcdserver: leader changed".into(), 4);
        run.failover = Some(failover);
        run
    }

    #[test]
    fn every_go_scenario_exists_and_includes_the_judged_three_member_put() {
        let known: Vec<&str> = scenarios()
            .iter()
            .chain(cluster_scenarios().iter())
            .map(|s| s.name)
            .collect();
        for name in GO_SCENARIOS {
            assert!(
                known.contains(name),
                "GO_SCENARIOS names {name:?}, which is no scenario: it would be left out silently"
            );
        }
        // Issue 15 is judged with etcd's Go client on one member and on three.
        for judged in ["put-1", "put-64", "cluster3-put-64"] {
            assert!(
                GO_SCENARIOS.contains(&judged),
                "{judged} is not run by go-load"
            );
        }
    }

    #[test]
    fn cluster_rows_are_labelled_and_compared() {
        let result = SuiteResult {
            machine: machine(),
            rounds_planned: 1,
            time_scale: 1.0,
            runs: vec![
                cluster_run(Kind::Keelson, 0, 3000.0, vec![1200.0, 1500.0, 2400.0]),
                cluster_run(Kind::Etcd, 0, 2000.0, vec![1000.0, 1100.0, 1200.0]),
            ],
            notes: vec![],
            wall_secs: 1.0,
            scenarios: vec![],
            cluster_scenarios: vec![
                ("cluster3-put-64".into(), "put".into()),
                (FAILOVER_SCENARIO.into(), "failover".into()),
            ],
            load_generator: None,
        };
        let md = markdown(&result);
        assert!(md.contains("## 3-member clusters"), "{md}");
        assert!(
            md.contains("| cluster3-put-64 | puts | 3000 | 2000 | 1.50 |"),
            "{md}"
        );
        // Median and worst over every kill: keelson 1500 / 2400, etcd 1100 / 1200.
        assert!(md.contains("| median, ms | 1500 | 1100 | 1.36 |"), "{md}");
        assert!(md.contains("| worst, ms | 2400 | 1200 | 2.00 |"), "{md}");
        assert!(
            md.contains("| kills measured / planned | 3 / 3 | 3 / 3 | |"),
            "{md}"
        );
        assert!(
            md.contains("| peak RSS of the largest member, MiB | 200 | 200 | 1.00 |"),
            "{md}"
        );
        assert!(md.contains("| keelson ×3 r1 |"), "{md}");
        assert!(
            md.contains("| cluster3-put-64 | 30.0 / 2.50 | 20.0 / – |"),
            "{md}"
        );
        // Expected failover errors are shown in their section, not as failures.
        assert!(
            md.contains("None: every request of every scenario succeeded."),
            "{md}"
        );
        assert!(!md.contains("Medians over the rounds (one member)"), "{md}");
        let json = serde_json::to_string(&result).expect("serialises");
        let back: SuiteResult = serde_json::from_str(&json).expect("parses back");
        assert_eq!(markdown(&back), md);
    }

    fn single_run(kind: Kind, ops_per_sec: f64, server_us: f64, load: LoadUse) -> ServerRun {
        let mut run = ServerRun::new(kind, 0, 1);
        let mut report = put_report(ops_per_sec);
        report.ops = 30_000;
        report.elapsed_secs = 3.0;
        report.max_stall_ms = Some(5.0);
        report.server_cpu_us_per_op = Some(server_us);
        note_load(&mut report, load);
        run.scenarios.push(("put-64".into(), report));
        run
    }

    #[test]
    fn the_cores_section_sets_the_cpu_bound_beside_the_measured_ratio() {
        // 30000 puts: keelson's generator 1.2 s (40 µs per put), etcd's 1.2 s as well.
        let load = |busy| LoadUse {
            generator_secs: Some(1.2),
            machine_busy_share: Some(busy),
        };
        let result = SuiteResult {
            machine: machine(),
            rounds_planned: 1,
            time_scale: 1.0,
            runs: vec![
                single_run(Kind::Keelson, 12000.0, 60.0, load(0.9904)),
                single_run(Kind::Etcd, 10000.0, 100.0, load(0.98)),
            ],
            notes: vec![],
            wall_secs: 1.0,
            scenarios: vec![("put-64".into(), "put".into())],
            cluster_scenarios: vec![],
            load_generator: None,
        };
        let md = markdown(&result);
        assert!(
            md.contains("## Where the cores went (write scenarios)"),
            "{md}"
        );
        // (100 + 40) / (60 + 40) = 1.40 allowed by the CPU; 12000 / 10000 = 1.20 measured.
        assert!(
            md.contains("| put-64 | 99.0 / 98.0 | 60.0 / 100 | 40.0 / 40.0 | 1.40 | 1.20 |"),
            "{md}"
        );
    }

    #[test]
    fn a_scenario_too_short_to_measure_records_no_load() {
        let load = LoadUse {
            generator_secs: Some(0.01),
            machine_busy_share: Some(1.0),
        };
        // No operations, and a setup of 1000 keys in 14 ms: a clock tick or two.
        for (ops, elapsed_secs) in [(0, 5.0), (1000, 0.014)] {
            let mut report = put_report(0.0);
            report.ops = ops;
            report.elapsed_secs = elapsed_secs;
            note_load(&mut report, load);
            assert!(report.counters.is_empty(), "{:?}", report.counters);
        }
        let mut report = put_report(1000.0);
        report.ops = 1000;
        report.elapsed_secs = 1.0;
        note_load(&mut report, load);
        assert_eq!(report.counters.get("generator_cpu_us_per_op"), Some(&10.0));
        assert_eq!(report.counters.get("machine_busy_pct"), Some(&100.0));
    }

    /// A report saved before the cluster scenarios existed (no `members`, no cluster fields).
    #[test]
    fn reports_from_before_clusters_still_render() {
        let saved = include_str!("../results/2026-11-23T22-40-36Z.json");
        let result: SuiteResult = serde_json::from_str(saved).expect("a saved report parses");
        let md = markdown(&result);
        assert!(md.contains("| put-64 |"), "{md}");
        assert!(!md.contains("3-member"), "{md}");
    }

    /// create-64 measures creates: every put writes a key that did not exist.
    #[test]
    fn the_create_scenario_writes_keys_no_other_scenario_has() {
        let all = scenarios();
        let create = all
            .iter()
            .find(|s| s.name == "create-64")
            .expect("a create-64 scenario");
        let o = create.opts(&["127.0.0.1:2379".into()], 1.0);
        assert!(
            o.sequential_keys,
            "random picks would write some keys twice"
        );
        assert!(
            o.key_space_size >= o.total,
            "{} puts over {} keys would wrap to keys already written",
            o.total,
            o.key_space_size
        );
        assert_eq!(
            all.last().map(|s| s.name),
            Some("create-64"),
            "its 100k new keys (and the cache entries they take) would change the scenarios after it"
        );
        for other in all.iter().filter(|s| s.name != "create-64") {
            let first_key = KeyGen::new(other.prefix, 8, other.key_space).key(0);
            assert!(
                !first_key.starts_with(o.prefix.as_bytes()),
                "{} writes or reads keys under create-64's prefix {:?}",
                other.name,
                o.prefix
            );
        }
    }

    /// The line bench/go-load prints is read as a keelson-bench report.
    #[test]
    fn a_go_load_line_is_a_report() {
        let line = r#"{"mode":"put","status":"ok","conns":4,"clients":16,"ops":3488,"elapsed_secs":2.005,"ops_per_sec":1739.35,"unit":"put","latency":{"mean_ms":9.17,"p50_ms":7.293,"p90_ms":20.208,"p99_ms":37.997,"p999_ms":52.876,"max_ms":53.029},"max_stall_ms":43.323,"errors":{"total":1,"kinds":{"Unavailable: etcdserver: request timed out":1}},"counters":{}}"#;
        let report: Report = serde_json::from_str(line).expect("parses");
        assert_eq!(report.status, Status::Ok);
        assert_eq!(report.ops, 3488);
        assert_eq!(report.max_stall_ms, Some(43.323));
        assert_eq!(report.server_cpu_us_per_op, None);
        assert_eq!(report.errors.total, 1);
        let failed = r#"{"mode":"range-l","status":"failed","detail":"first request: DeadlineExceeded","conns":1,"clients":1,"ops":0,"elapsed_secs":0,"ops_per_sec":0,"unit":"","latency":{"mean_ms":0,"p50_ms":0,"p90_ms":0,"p99_ms":0,"p999_ms":0,"max_ms":0},"errors":{"total":0,"kinds":{}},"counters":{}}"#;
        let report: Report = serde_json::from_str(failed).expect("parses");
        assert_eq!(report.status, Status::Failed);
    }

    #[test]
    fn the_next_run_is_predicted_from_the_longest_seen() {
        let budget = Duration::from_secs(240);
        assert_eq!(predicted_need(Duration::ZERO, budget), budget);
        assert_eq!(
            predicted_need(Duration::from_secs(40), budget),
            Duration::from_secs(65)
        );
    }
}
