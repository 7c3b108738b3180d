//! The short slice of the robustness suite that `make test` runs: a few seeds over 1-, 3- and
//! 5-member clusters and several fault kinds (a crash of every member, of the leader and of a
//! majority, an asymmetric partition, a slow disk, a frozen leader, a lost disk replaced
//! through `--join-seeds`), plus one run whose recording is corrupted on
//! purpose, which the checks must reject. `make robustness` runs the long series.

use std::time::Duration;

use robustness::faults::Scenario;
use robustness::run::{self, Injection, RunConfig, RunReport};

fn config(seed: u64, members: usize, scenario: Scenario) -> RunConfig {
    RunConfig {
        seed,
        members,
        scenario,
        traffic: Duration::from_secs(6),
        clients_per_member: 2,
        artifacts: Some(std::env::temp_dir().join("keelson-robustness")),
        inject: Vec::new(),
    }
}

fn describe(report: &RunReport) -> String {
    format!(
        "seed {} ({} members, {}): {} ops, {} indeterminate, unavailable {:.2}s, check {} ms {}; fault: {}\n  {}\n  reproduce: {}",
        report.seed,
        report.members,
        report.scenario,
        report.operations,
        report.indeterminate,
        report.unavailable_s,
        report.kv.checker_ms,
        report.kv.verdict,
        report.fault.description,
        report.anomalies.join("\n  "),
        report.reproduce()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_series_of_faults_finds_no_anomaly() {
    let runs = [
        config(11, 1, Scenario::KillAll),
        config(12, 3, Scenario::KillLeader),
        config(13, 3, Scenario::AsymmetricPartition),
        config(14, 3, Scenario::SlowDisk),
        config(15, 3, Scenario::PauseLeader),
        config(16, 3, Scenario::LoseDiskJoin),
        config(17, 5, Scenario::KillMajority),
    ];
    let mut failures = Vec::new();
    for c in runs {
        let report = run::run(c).await;
        eprintln!("{}", describe(&report));
        assert!(
            report.operations > 100,
            "too little traffic: {}",
            describe(&report)
        );
        if !report.passed() {
            failures.push(describe(&report));
        }
    }
    assert!(failures.is_empty(), "anomalies:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_anomalies_in_a_real_recording_are_caught() {
    let mut c = config(21, 1, Scenario::ClientCut);
    c.inject = vec![
        Injection::CorruptRead,
        Injection::LostWrite,
        Injection::DroppedWatchEvent,
    ];
    let report = run::run(c).await;
    eprintln!("{}", describe(&report));
    let all = report.anomalies.join("\n");
    assert_eq!(report.kv.verdict, "illegal", "{all}");
    assert!(
        all.contains("never-written"),
        "the corrupted read is in the minimal history:\n{all}"
    );
    // The acknowledged write missing from every watch: a revision nobody delivered.
    assert!(all.contains("delivered by no watch"), "{all}");
    assert!(all.contains("watch: reliable"), "{all}");
}
