//! keelson-bench: a load generator for the etcd v3 API (keelson or etcd alike), and the
//! side-by-side suite behind `make bench` and `make bench-scale`. See bench/README.md.

mod cluster;
mod cpus;
mod keys;
mod machine;
mod opts;
mod report;
mod scale;
mod server;
mod stall_evidence;
mod suite;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::opts::{CasArgs, LeaseArgs, LoadKeysArgs, LoadOpts, RangeArgs, TxnPutArgs, WatchArgs};
use crate::report::{Report, Status};

#[derive(Parser)]
#[command(
    name = "keelson-bench",
    version,
    about = "Load generator and benchmark suite for the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Put random keys.
    Put {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        out: Out,
    },
    /// Get single keys, or LIST 1000-key prefixes with --list.
    Range {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        args: RangeArgs,
        #[command(flatten)]
        out: Out,
    },
    /// Transactions of --txn-ops puts.
    TxnPut {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        args: TxnPutArgs,
        #[command(flatten)]
        out: Out,
    },
    /// Kubernetes-style updates: get, then Txn If(mod_revision(k)==R) Then Put Else Range,
    /// retried on conflict.
    Cas {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        args: CasArgs,
        #[command(flatten)]
        out: Out,
    },
    /// Watch fan-out: events/s delivered and put-to-event latency.
    Watch {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        args: WatchArgs,
        #[command(flatten)]
        out: Out,
    },
    /// Lease keep-alive round trips.
    LeaseKeepalive {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        args: LeaseArgs,
        #[command(flatten)]
        out: Out,
    },
    /// Bulk-load keys 0..--total with multi-put transactions.
    Load {
        #[command(flatten)]
        load: LoadOpts,
        #[command(flatten)]
        args: LoadKeysArgs,
        #[command(flatten)]
        out: Out,
    },
    /// Start keelson and etcd in turn and run the fixed scenarios (`make bench`).
    Suite {
        #[command(flatten)]
        args: suite::SuiteArgs,
        /// Print the full results as JSON on stdout instead of the Markdown report.
        #[arg(long)]
        json: bool,
    },
    /// Load 1M (and more) keys into each server: RSS, disk, LIST, restart time (`make bench-scale`).
    Scale {
        #[command(flatten)]
        args: scale::ScaleArgs,
    },
    /// Print the Markdown report of a saved LATEST.json or SCALE-LATEST.json again (after the
    /// report format changed, say).
    Render {
        /// The JSON file a suite or scale run wrote.
        json_file: std::path::PathBuf,
    },
    /// Load N keys, SIGKILL the server, restart it and time the first linearizable read.
    Restart {
        #[command(flatten)]
        bins: suite::BinArgs,
        /// Keys to load before the restarts.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Restarts per server.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone, Debug)]
struct Out {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn print_report(report: &Report, out: &Out) -> ExitCode {
    if out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialise")
        );
    } else {
        print!("{}", report.human());
    }
    match report.status {
        Status::Ok if report.errors.total == 0 => ExitCode::SUCCESS,
        // Errors were counted and printed; the exit code says so too.
        Status::Ok => ExitCode::from(1),
        Status::Unsupported => ExitCode::from(3),
        Status::Failed => ExitCode::from(2),
    }
}

async fn load_mode(cmd: Cmd) -> ExitCode {
    macro_rules! check {
        ($load:expr) => {
            if let Err(e) = $load.validate() {
                eprintln!("keelson-bench: {e}");
                return ExitCode::from(2);
            }
        };
    }
    match cmd {
        Cmd::Put { load, out } => {
            check!(load);
            print_report(&workload::put(&load).await, &out)
        }
        Cmd::Range { load, args, out } => {
            check!(load);
            print_report(&workload::range(&load, &args).await, &out)
        }
        Cmd::TxnPut { load, args, out } => {
            check!(load);
            print_report(&workload::txn_put(&load, &args).await, &out)
        }
        Cmd::Cas { load, args, out } => {
            check!(load);
            print_report(&workload::cas(&load, &args).await, &out)
        }
        Cmd::Watch { load, args, out } => {
            check!(load);
            print_report(&workload::watch(&load, &args).await, &out)
        }
        Cmd::LeaseKeepalive { load, args, out } => {
            check!(load);
            print_report(&workload::lease_keepalive(&load, &args).await, &out)
        }
        Cmd::Load { load, args, out } => {
            check!(load);
            print_report(&workload::load_keys(&load, &args).await, &out)
        }
        Cmd::Render { json_file } => {
            let text = match std::fs::read_to_string(&json_file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("keelson-bench: read {}: {e}", json_file.display());
                    return ExitCode::from(2);
                }
            };
            if let Ok(r) = serde_json::from_str::<suite::SuiteResult>(&text) {
                println!("{}", suite::markdown(&r));
            } else if let Ok(r) = serde_json::from_str::<scale::ScaleResult>(&text) {
                println!("{}", scale::markdown(&r, "`make bench-scale`"));
            } else {
                eprintln!(
                    "keelson-bench: {} holds neither suite nor scale results",
                    json_file.display()
                );
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Cmd::Suite { .. } | Cmd::Scale { .. } | Cmd::Restart { .. } => unreachable!(),
    }
}

/// Runs the orchestrating commands. They own server processes: this future is dropped on
/// SIGINT/SIGTERM/SIGHUP or at the hard time bound, and dropping it kills every server.
async fn orchestrate(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Suite { args, json } => {
            let results_dir = args.results_dir.clone();
            let (name, suffix) = match args.load_generator {
                suite::LoadGenerator::Rust => ("LATEST", ""),
                suite::LoadGenerator::Go => ("GO-LATEST", "-go"),
            };
            let result = suite::run(args).await?;
            let md = suite::markdown(&result);
            let js = serde_json::to_string_pretty(&result).expect("results serialise");
            if json {
                println!("{js}");
            } else {
                println!("{md}");
            }
            if let Some(dir) = results_dir {
                let path = suite::write_results(&dir, name, suffix, &md, &js)?;
                eprintln!("suite: wrote {}", path.display());
            }
            if result.runs.iter().any(|r| r.failure.is_some()) {
                return Err("some server runs failed (see the report)".into());
            }
            Ok(())
        }
        Cmd::Scale { args } => {
            let results_dir = args.results_dir.clone();
            let json = args.json;
            let result = scale::run(args).await?;
            let md = scale::markdown(&result, "`make bench-scale`");
            let js = serde_json::to_string_pretty(&result).expect("results serialise");
            if json {
                println!("{js}");
            } else {
                println!("{md}");
            }
            if let Some(dir) = results_dir {
                let path = suite::write_results(&dir, "SCALE-LATEST", "-scale", &md, &js)?;
                eprintln!("scale: wrote {}", path.display());
            }
            if result.runs.iter().any(|r| r.failure.is_some()) {
                return Err("some server runs failed (see the report)".into());
            }
            Ok(())
        }
        Cmd::Restart {
            bins,
            keys,
            repeat,
            json,
        } => {
            let args = scale::ScaleArgs {
                bins,
                keys: vec![keys],
                restarts: repeat,
                list_secs: 0.0,
                load_clients: 32,
                load_conns: 4,
                val_size: 256,
                max_time: Duration::from_secs(1800),
                results_dir: None,
                json,
            };
            let result = scale::run(args).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result).expect("results serialise")
                );
            } else {
                println!(
                    "{}",
                    scale::markdown(&result, &format!("restart after {keys} keys"))
                );
            }
            if result.runs.iter().any(|r| r.failure.is_some()) {
                return Err("some server runs failed (see the report)".into());
            }
            Ok(())
        }
        _ => unreachable!(),
    }
}

/// Hard bound on an orchestrating command, past its own --max-time, before it is cut off.
fn hard_limit(cmd: &Cmd) -> Duration {
    let soft = match cmd {
        Cmd::Suite { args, .. } => args.max_time,
        Cmd::Scale { args } => args.max_time,
        _ => Duration::from_secs(1800),
    };
    soft + Duration::from_secs(90)
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
        _ = int.recv() => "SIGINT",
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    keys::epoch();
    match cli.command {
        cmd @ (Cmd::Suite { .. } | Cmd::Scale { .. } | Cmd::Restart { .. }) => {
            let limit = hard_limit(&cmd);
            // The servers are spawned from this (the main) thread: block_on runs this future
            // here, which is what PR_SET_PDEATHSIG in server.rs relies on.
            let outcome = tokio::select! {
                r = tokio::time::timeout(limit, orchestrate(cmd)) => match r {
                    Ok(r) => r,
                    Err(_) => Err(format!("hard time limit of {limit:?} reached; servers killed")),
                },
                sig = interrupted() => Err(format!("interrupted by {sig}; servers killed")),
            };
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("keelson-bench: {e}");
                    ExitCode::from(1)
                }
            }
        }
        cmd => {
            let outcome = tokio::select! {
                code = load_mode(cmd) => code,
                sig = interrupted() => {
                    eprintln!("keelson-bench: interrupted by {sig}");
                    ExitCode::from(130)
                }
            };
            outcome
        }
    }
}
