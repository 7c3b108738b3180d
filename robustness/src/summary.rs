//! The summary of a series of runs: per scenario and member count, how many runs, how many
//! failed, the worst unavailability window, the largest history and the slowest check; then
//! every anomaly with the seed that reproduces it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::run::RunReport;

#[derive(Default)]
struct Row {
    runs: usize,
    failed: usize,
    worst_unavailable_s: f64,
    max_ops: usize,
    max_checker_ms: u64,
    indeterminate: usize,
    checked: usize,
}

pub fn markdown(reports: &[RunReport], header: &str) -> String {
    let mut rows: BTreeMap<(String, usize), Row> = BTreeMap::new();
    for r in reports {
        let row = rows.entry((r.scenario.clone(), r.members)).or_default();
        row.runs += 1;
        row.failed += usize::from(!r.passed());
        row.worst_unavailable_s = row.worst_unavailable_s.max(r.unavailable_s);
        row.max_ops = row.max_ops.max(r.operations);
        row.max_checker_ms = row.max_checker_ms.max(r.kv.checker_ms);
        row.indeterminate += r.indeterminate;
        row.checked += r.kv.operations_checked;
    }
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let operations: usize = reports.iter().map(|r| r.operations).sum();
    let checked: usize = reports.iter().map(|r| r.kv.operations_checked).sum();
    let events: usize = reports.iter().map(|r| r.watch_events).sum();
    let scenarios = rows.len();
    let _ = writeln!(
        out,
        "{} runs over {scenarios} scenario/member pairs, {} with anomalies; {operations} requests \
         recorded, {checked} operations checked for linearizability, {events} watch events \
         validated.\n",
        reports.len(),
        failed
    );
    let _ = writeln!(
        out,
        "| scenario | members | runs | with anomalies | worst unavailability (s) | largest history (ops) | operations checked | indeterminate requests | slowest check (ms) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for ((scenario, members), row) in &rows {
        let _ = writeln!(
            out,
            "| {scenario} | {members} | {} | {} | {:.2} | {} | {} | {} | {} |",
            row.runs,
            row.failed,
            row.worst_unavailable_s,
            row.max_ops,
            row.checked,
            row.indeterminate,
            row.max_checker_ms
        );
    }
    let failures: Vec<&RunReport> = reports.iter().filter(|r| !r.passed()).collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "\n## Anomalies\n");
        for r in failures {
            let _ = writeln!(
                out,
                "### seed {} ({} members, {})\n\nfault: {}\n\nreproduce: `{}`\n",
                r.seed,
                r.members,
                r.scenario,
                r.fault.description,
                r.reproduce()
            );
            for a in r.anomalies.iter().take(20) {
                let _ = writeln!(out, "- {}", a.replace('\n', "\n  "));
            }
            let _ = writeln!(out);
        }
    }
    out
}
