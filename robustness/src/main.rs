//! `make robustness`: runs seeds one after the other and reports.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `ROBUSTNESS_RUNS` | how many runs | 17 |
//! | `ROBUSTNESS_DURATION` | traffic per run, seconds | 12 |
//! | `ROBUSTNESS_TIME` | no new run starts after this many seconds of the series | none |
//! | `ROBUSTNESS_SEED` | the first seed (run i uses seed + i) | the time |
//! | `ROBUSTNESS_SCENARIOS` | comma-separated scenario names | all |
//! | `ROBUSTNESS_MEMBERS` | comma-separated member counts | 1,3,5 |
//! | `ROBUSTNESS_CLIENTS` | KV clients per member | 3 |
//! | `ROBUSTNESS_RESULTS` | directory for LATEST.md and runs.jsonl | none |
//! | `ROBUSTNESS_ARTIFACTS` | directory for failing runs' histories | target/robustness |

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use robustness::faults::Scenario;
use robustness::run::{self, combinations, RunConfig, RunReport};
use robustness::summary;

fn env<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not valid")),
        _ => Ok(default),
    }
}

fn list<T>(
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
    default: Vec<T>,
) -> Result<Vec<T>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| parse(s.trim()).ok_or_else(|| format!("{name}: unknown {s:?}")))
            .collect(),
        _ => Ok(default),
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("keelson-robustness: {e}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<(), String> {
    if let Some(dir) = std::env::var_os("ROBUSTNESS_RECHECK") {
        let limits = robustness::linearize::Limits {
            time: Duration::from_secs(env("ROBUSTNESS_CHECK_SECONDS", 120)?),
            ..Default::default()
        };
        let (watch, kv) = run::recheck(std::path::Path::new(&dir), limits)?;
        for v in &watch {
            println!("watch: {v}");
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&kv).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let runs: usize = env("ROBUSTNESS_RUNS", 17)?;
    let duration = Duration::from_secs_f64(env("ROBUSTNESS_DURATION", 12.0)?);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let first_seed: u64 = env("ROBUSTNESS_SEED", now)?;
    let scenarios = list(
        "ROBUSTNESS_SCENARIOS",
        Scenario::from_name,
        Scenario::ALL.to_vec(),
    )?;
    let members = list(
        "ROBUSTNESS_MEMBERS",
        |s| s.parse::<usize>().ok().filter(|m| [1, 3, 5].contains(m)),
        vec![1, 3, 5],
    )?;
    let clients: usize = env("ROBUSTNESS_CLIENTS", 3)?;
    // A bound on the whole series (a run already started finishes): `make robustness` for a
    // given wall time rather than a number of runs.
    let budget: Option<Duration> = match env("ROBUSTNESS_TIME", 0.0f64)? {
        t if t > 0.0 => Some(Duration::from_secs_f64(t)),
        _ => None,
    };
    let commit = std::env::var("ROBUSTNESS_COMMIT").unwrap_or_default();
    let series_started = std::time::Instant::now();
    let results = std::env::var_os("ROBUSTNESS_RESULTS").map(PathBuf::from);
    let artifacts = std::env::var_os("ROBUSTNESS_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/robustness"));
    let combos = combinations(&members, &scenarios);
    if combos.is_empty() {
        return Err("no scenario applies to the member counts chosen".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let mut reports: Vec<RunReport> = Vec::new();
    let mut jsonl = match &results {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Some(
                std::fs::File::create(dir.join("runs.jsonl"))
                    .map_err(|e| format!("runs.jsonl: {e}"))?,
            )
        }
        None => None,
    };
    println!(
        "keelson robustness: {runs} runs from seed {first_seed}, {:?} of traffic each, {} scenario/member pairs",
        duration,
        combos.len()
    );
    for i in 0..runs {
        if budget.is_some_and(|b| series_started.elapsed() >= b) {
            println!(
                "ROBUSTNESS_TIME reached after {i} runs ({:?})",
                series_started.elapsed()
            );
            break;
        }
        let seed = first_seed.wrapping_add(i as u64);
        let (m, scenario) = combos[(seed % combos.len() as u64) as usize];
        let config = RunConfig {
            seed,
            members: m,
            scenario,
            traffic: duration,
            clients_per_member: clients,
            artifacts: Some(artifacts.clone()),
            inject: Vec::new(),
        };
        let report = runtime.block_on(run_caught(config));
        println!(
            "{} seed {seed} {m} members {:<22} ops {:>6} (unknown {:>4}) unavailable {:>5.2}s check {:>5} ms {} — {}",
            if report.passed() { "ok  " } else { "FAIL" },
            scenario.name(),
            report.operations,
            report.indeterminate,
            report.unavailable_s,
            report.kv.checker_ms,
            report.kv.verdict,
            report.fault.description
        );
        if !report.passed() {
            for a in report.anomalies.iter().take(10) {
                println!("     {}", a.replace('\n', "\n     "));
            }
            println!("     reproduce: {}", report.reproduce());
        }
        if let Some(file) = jsonl.as_mut() {
            if let Ok(line) = serde_json::to_string(&report) {
                let _ = writeln!(file, "{line}");
            }
        }
        reports.push(report);
        if let Some(dir) = &results {
            let header = format!(
                "# keelson robustness: latest long run\n\nSeeds {first_seed}..{}, {:?} of traffic per run, {clients} KV clients per member, {:.0} min of wall time{} (`make robustness`, docs/robustness.md).",
                first_seed.wrapping_add(i as u64),
                duration,
                series_started.elapsed().as_secs_f64() / 60.0,
                if commit.is_empty() {
                    String::new()
                } else {
                    format!(", keelson at commit {commit}")
                }
            );
            let _ = std::fs::write(dir.join("LATEST.md"), summary::markdown(&reports, &header));
        }
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    println!("{} passed, {} failed", reports.len() - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// A run whose harness panicked (a member that never started, ...) is a failed run with the
/// panic as its anomaly, not a crash of the whole series.
async fn run_caught(config: RunConfig) -> RunReport {
    let seed = config.seed;
    let members = config.members;
    let scenario = config.scenario;
    match tokio::spawn(run::run(config)).await {
        Ok(report) => report,
        Err(e) => {
            let message = match e.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into()),
                Err(e) => e.to_string(),
            };
            RunReport {
                seed,
                members,
                scenario: scenario.name().into(),
                anomalies: vec![format!("harness: {message}")],
                ..RunReport::default()
            }
        }
    }
}
