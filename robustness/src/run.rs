//! One run: start a cluster, drive traffic and watches through it, inject one fault, stop,
//! heal, then check the history, the watches and every member's data, and restart every
//! member on its data dir to check that it opens and holds the same data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compat_tests::{Cluster, ServerOptions};
use etcd_client::GetOptions;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::check::{check_history, KvReport};
use crate::committed::CommittedLog;
use crate::faults::{self, FaultReport, Scenario, Target};
use crate::history::{describe_request, Operation, Outcome, RangeRequest, Request};
use crate::linearize::Limits;
use crate::proxy::Proxy;
use crate::rng::Rng;
use crate::traffic::{self, connect, Clock, Recorder, Shared};
use crate::watch::{self, Session, Violations, WatchSpec};
use crate::watcher::{self, Control, WatcherConfig};

/// A run is named by its seed alone: the member count and the scenario come from it.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub seed: u64,
    pub members: usize,
    pub scenario: Scenario,
    /// How long the traffic runs (the fault happens inside it).
    pub traffic: Duration,
    pub clients_per_member: usize,
    /// Where to write the history of a failing run.
    pub artifacts: Option<PathBuf>,
    /// Corrupt the recording before the checks (the checker's own end-to-end test).
    pub inject: Vec<Injection>,
}

/// An anomaly planted in a real recording, to show that the checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Injection {
    /// A linearizable read answers a value that never was.
    CorruptRead,
    /// An acknowledged put disappears from every watch (as if the store had lost it).
    LostWrite,
    /// One watch session misses one event.
    DroppedWatchEvent,
}

fn plant(injections: &[Injection], ops: &mut [Operation], sessions: &mut [Session]) -> Vec<String> {
    use crate::history::Response;
    let mut planted = Vec::new();
    for injection in injections {
        match injection {
            Injection::CorruptRead => {
                let target = ops.iter_mut().find(|o| {
                    matches!(&o.request, Request::Range(r) if r.revision == 0 && !r.serializable && r.end.is_none())
                        && matches!(&o.outcome, Outcome::Ok(Response::Range { result, .. }) if !result.kvs.is_empty())
                });
                if let Some(op) = target {
                    if let Outcome::Ok(Response::Range { result, .. }) = &mut op.outcome {
                        result.kvs[0].value = "never-written".into();
                        planted.push(format!("corrupted read #{}", op.id));
                    }
                }
            }
            Injection::LostWrite => {
                let target = ops
                    .iter()
                    .rev()
                    .find_map(|o| match (&o.request, &o.outcome) {
                        (Request::Put { key, value, .. }, Outcome::Ok(_)) => {
                            Some((key.clone(), value.clone()))
                        }
                        _ => None,
                    });
                if let Some((key, value)) = target {
                    for session in sessions.iter_mut() {
                        for response in &mut session.responses {
                            response
                                .events
                                .retain(|e| !(e.put && e.kv.key == key && e.kv.value == value));
                        }
                    }
                    planted.push(format!("lost write {key}={value}"));
                }
            }
            Injection::DroppedWatchEvent => {
                if let Some(session) = sessions.iter_mut().find(|s| s.events().count() > 10) {
                    if let Some(response) = session
                        .responses
                        .iter_mut()
                        .rev()
                        .find(|r| r.events.len() == 1)
                    {
                        response.events.clear();
                        planted.push(format!("dropped an event of watcher {}", session.watcher));
                    }
                }
            }
        }
    }
    planted
}

/// Every (members, scenario) pair, in a fixed order: seed `s` runs pair `s % len`, so that
/// consecutive seeds cover every pair and one seed reproduces one run.
pub fn combinations(members: &[usize], scenarios: &[Scenario]) -> Vec<(usize, Scenario)> {
    let mut all = Vec::new();
    for &scenario in scenarios {
        for &m in members {
            if scenario.applies_to(m) {
                all.push((m, scenario));
            }
        }
    }
    all
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub members: usize,
    pub scenario: String,
    pub fault: FaultReport,
    pub operations: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub indeterminate: usize,
    /// The longest time without a successful write completing, during the traffic, in seconds.
    pub unavailable_s: f64,
    pub final_revision: i64,
    pub watch_sessions: usize,
    pub watch_events: usize,
    pub kv: KvReport,
    pub watch_violations: Vec<String>,
    pub anomalies: Vec<String>,
    pub duration_s: f64,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.anomalies.is_empty()
    }

    pub fn reproduce(&self) -> String {
        format!(
            "ROBUSTNESS_SEED={} ROBUSTNESS_RUNS=1 make robustness   # {} members, {}",
            self.seed, self.members, self.scenario
        )
    }
}

/// Stops and aborts everything a run started, also when it ends early.
struct Guard {
    stop: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.abort.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

const HEAL_WAIT: Duration = Duration::from_secs(60);
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
const LEASES_GONE_WAIT: Duration = Duration::from_secs(20);

fn base_options() -> ServerOptions {
    ServerOptions::from_env()
        .name("rb")
        .env("KEELSON_PEER_FAULTS", "1")
        .env("KEELSON_DISK_FAULTS", "1")
        // Small enough that a member behind a fault catches up by snapshot now and then.
        .args([
            "--snapshot-count",
            "2000",
            "--experimental-watch-progress-notify-interval",
            "1s",
        ])
}

/// Runs one seed; never panics on what the servers do (a panic of the harness is caught by
/// the caller and reported as the run's failure).
pub async fn run(config: RunConfig) -> RunReport {
    let started = Instant::now();
    let mut report = RunReport {
        seed: config.seed,
        members: config.members,
        scenario: config.scenario.name().into(),
        ..RunReport::default()
    };
    let mut rng = Rng::new(config.seed);
    let clock = Clock(Instant::now());
    let mut cluster = Cluster::start_with(base_options(), config.members).await;
    let mut proxies = Vec::new();
    for member in &cluster.members {
        match Proxy::start(member.client_address()).await {
            Ok(p) => proxies.push(p),
            Err(e) => {
                report.anomalies.push(format!("harness: {e}"));
                return report;
            }
        }
    }
    let endpoints: Vec<String> = proxies.iter().map(|p| p.address.clone()).collect();
    let shared = Shared::new(clock);
    let abort = Arc::new(AtomicBool::new(false));
    let (target_tx, target_rx) = tokio::sync::watch::channel(None);
    let mut guard = Guard {
        stop: shared.stop.clone(),
        abort: abort.clone(),
        tasks: Vec::new(),
    };

    // Watchers: on every member, one over everything from revision 1 and one live on the
    // kube objects asking for progress; one more live over everything without prev_kv.
    let mut watcher_configs = Vec::new();
    for m in 0..config.members {
        watcher_configs.push(WatcherConfig {
            id: watcher_configs.len(),
            spec: WatchSpec::all(true),
            start_revision: 1,
            request_progress: None,
            endpoints: endpoints.clone(),
            home: m,
        });
        watcher_configs.push(WatcherConfig {
            id: watcher_configs.len(),
            spec: WatchSpec {
                key: traffic::PODS.into(),
                end: traffic::prefix_end(traffic::PODS),
                prev_kv: true,
                progress_notify: false,
            },
            start_revision: 0,
            request_progress: Some(Duration::from_millis(rng.between(100, 500))),
            endpoints: endpoints.clone(),
            home: m,
        });
    }
    watcher_configs.push(WatcherConfig {
        id: watcher_configs.len(),
        spec: WatchSpec::all(false),
        start_revision: 0,
        request_progress: Some(Duration::from_millis(300)),
        endpoints: endpoints.clone(),
        home: rng.index(config.members),
    });
    let mut watcher_tasks = Vec::new();
    for wc in watcher_configs {
        let control = Control {
            target: target_rx.clone(),
            abort: abort.clone(),
        };
        watcher_tasks.push(tokio::spawn(watcher::run(wc, clock, control)));
    }

    // Traffic.
    let mut traffic_tasks: Vec<JoinHandle<Vec<Operation>>> = Vec::new();
    let mut client_id = 0;
    let max_ops = 1_000_000;
    for (m, endpoint) in endpoints.iter().enumerate() {
        for _ in 0..config.clients_per_member {
            let client = match connect(endpoint).await {
                Ok(c) => c,
                Err(e) => {
                    report.anomalies.push(format!("harness: {e}"));
                    return report;
                }
            };
            let recorder = Recorder::new(client_id, m, client, shared.clone());
            traffic_tasks.push(tokio::spawn(traffic::kv_client(
                recorder,
                rng.fork(),
                max_ops,
            )));
            client_id += 1;
        }
    }
    let lease_member = rng.index(config.members);
    if let Ok(client) = connect(&endpoints[lease_member]).await {
        let recorder = Recorder::new(client_id, lease_member, client, shared.clone());
        let base = 0x1000_0000 + (config.seed as i64 & 0xffff) * 0x1_0000;
        traffic_tasks.push(tokio::spawn(traffic::lease_client(
            recorder,
            rng.fork(),
            base,
            max_ops,
        )));
        client_id += 1;
    }
    let compactor_member = rng.index(config.members);
    if let Ok(client) = connect(&endpoints[compactor_member]).await {
        let recorder = Recorder::new(client_id, compactor_member, client, shared.clone());
        let interval = Duration::from_millis(rng.between(1500, 4000));
        traffic_tasks.push(tokio::spawn(traffic::compactor(recorder, interval, 10_000)));
        client_id += 1;
    }
    let mut defrag = Vec::new();
    for (m, endpoint) in endpoints.iter().enumerate() {
        if let Ok(client) = connect(endpoint).await {
            defrag.push(Recorder::new(client_id, m, client, shared.clone()));
        }
    }
    let interval = Duration::from_millis(rng.between(2000, 5000));
    traffic_tasks.push(tokio::spawn(traffic::defragmenter(
        defrag,
        rng.fork(),
        interval,
        10_000,
    )));

    // The fault, a third into the traffic.
    let traffic_started = clock.now();
    tokio::time::sleep(config.traffic / 3).await;
    let mut fault_rng = rng.fork();
    {
        let mut target = Target {
            cluster: &mut cluster,
            proxies: &proxies,
            clock,
        };
        report.fault = faults::inject(config.scenario, &mut target, &mut fault_rng).await;
    }
    report
        .anomalies
        .extend(report.fault.failures.iter().map(|f| format!("fault: {f}")));
    let traffic_deadline = Duration::from_nanos(traffic_started) + config.traffic;
    let at_least_after = Duration::from_secs(2);
    let now = Duration::from_nanos(clock.now());
    let rest = traffic_deadline
        .checked_sub(now)
        .unwrap_or_default()
        .max(at_least_after);
    tokio::time::sleep(rest).await;
    shared.stop.store(true, Ordering::Relaxed);
    let traffic_ended = clock.now();
    let mut ops: Vec<Operation> = Vec::new();
    for task in traffic_tasks {
        match tokio::time::timeout(traffic::REQUEST_TIMEOUT * 3, task).await {
            Ok(Ok(mut o)) => ops.append(&mut o),
            Ok(Err(e)) => report
                .anomalies
                .push(format!("harness: a client task failed: {e}")),
            Err(_) => report
                .anomalies
                .push("harness: a client did not stop in time".into()),
        }
    }

    // Heal, let leases go, find the final revision.
    {
        let mut target = Target {
            cluster: &mut cluster,
            proxies: &proxies,
            clock,
        };
        let notes = faults::heal_everything(&mut target, &[]).await;
        report.fault.notes.extend(notes);
    }
    for i in 0..config.members {
        if !cluster.members[i].is_running() {
            report
                .anomalies
                .push(format!("member {i} is not running after the fault healed"));
        }
    }
    let final_revision = match settle(&cluster, &shared, &mut report).await {
        Some(r) => r,
        None => {
            // Without a final revision nothing else can be checked.
            return finish(
                report,
                started,
                &ops,
                &[],
                &cluster,
                config.artifacts.as_deref(),
            );
        }
    };
    report.final_revision = final_revision;
    target_tx.send_replace(Some(final_revision));
    let mut sessions: Vec<Session> = Vec::new();
    let catch_up_deadline = Instant::now() + CATCH_UP_WAIT;
    for task in watcher_tasks {
        let left = catch_up_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, task).await {
            Ok(Ok(mut s)) => sessions.append(&mut s),
            Ok(Err(e)) => report
                .anomalies
                .push(format!("harness: a watcher task failed: {e}")),
            Err(_) => {
                abort.store(true, Ordering::Relaxed);
                report.anomalies.push(format!(
                    "a watcher did not catch up to revision {final_revision} within {CATCH_UP_WAIT:?}"
                ));
            }
        }
    }
    abort.store(true, Ordering::Relaxed);
    guard.tasks.clear();

    // Check.
    for (i, op) in ops.iter_mut().enumerate() {
        op.id = i;
    }
    if !config.inject.is_empty() {
        let planted = plant(&config.inject, &mut ops, &mut sessions);
        report.fault.notes.push(format!("planted: {planted:?}"));
    }
    report.operations = ops.len();
    report.succeeded = ops.iter().filter(|o| o.outcome.is_ok()).count();
    report.failed = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Failed(_)))
        .count();
    report.indeterminate = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Unknown(_)))
        .count();
    report.unavailable_s = unavailability(&ops, traffic_started, traffic_ended);
    report.watch_sessions = sessions.len();
    report.watch_events = sessions.iter().map(|s| s.events().count()).sum();
    let mut violations = Violations::default();
    let log = watch::committed_log(&sessions, final_revision, &mut violations);
    let missing = log.missing();
    if !missing.is_empty() {
        violations.add(
            "committed-history",
            format!(
                "{} revisions up to {} delivered by no watch over the whole key space (first: {:?})",
                missing.len(),
                log.last,
                &missing[..missing.len().min(10)]
            ),
        );
    }
    let compactions: Vec<(u64, i64)> = ops
        .iter()
        .filter_map(|o| match (&o.request, &o.outcome) {
            (Request::Compact { revision }, Outcome::Ok(_) | Outcome::Unknown(_)) => {
                Some((o.call, *revision))
            }
            _ => None,
        })
        .collect();
    watch::validate(&sessions, &log, &compactions, &mut violations);
    report.watch_violations = violations.lines();
    report.anomalies.extend(
        report
            .watch_violations
            .iter()
            .map(|v| format!("watch: {v}")),
    );
    let mut first_seen: BTreeMap<i64, u64> = BTreeMap::new();
    for session in &sessions {
        for response in &session.responses {
            for event in &response.events {
                let e = first_seen.entry(event.revision()).or_insert(response.at);
                *e = (*e).min(response.at);
            }
        }
    }
    let kv_ops = ops.clone();
    let kv_log = log.clone();
    let kv = tokio::task::spawn_blocking(move || {
        check_history(&kv_ops, &kv_log, &first_seen, Limits::default())
    })
    .await;
    match kv {
        Ok(kv) => {
            report
                .anomalies
                .extend(kv.anomalies.iter().map(|a| format!("kv: {a}")));
            if kv.verdict.starts_with("unknown") {
                report
                    .anomalies
                    .push(format!("kv: checker gave no answer ({})", kv.verdict));
            }
            report.kv = kv;
        }
        Err(e) => report
            .anomalies
            .push(format!("harness: the checker failed: {e}")),
    }

    // Durability: every member holds the committed state, then again after a restart.
    durability(
        &cluster,
        &log,
        final_revision,
        "after the fault",
        &mut report,
    )
    .await;
    for i in 0..config.members {
        cluster.kill(i);
    }
    let mut restart_notes = FaultReport::default();
    for i in 0..config.members {
        if let Err(e) = cluster.members[i].try_respawn() {
            restart_notes.notes.push(e);
        }
    }
    for i in 0..config.members {
        if let Err(e) = cluster.members[i].try_wait_ready().await {
            report
                .anomalies
                .push(format!("member {i} did not restart on its data dir: {e}"));
        }
    }
    report.anomalies.extend(restart_notes.notes);
    durability(
        &cluster,
        &log,
        final_revision,
        "after a restart",
        &mut report,
    )
    .await;
    drop(guard);
    finish(
        report,
        started,
        &ops,
        &sessions,
        &cluster,
        config.artifacts.as_deref(),
    )
}

/// Copies every launch's log of every member (`server-<n>.log` in its directory) into `dir`,
/// as `member-<i>-server-<n>.log`: what the members said is the first thing to read about an
/// anomaly, and their directories go when the run ends.
fn keep_member_logs(cluster: &Cluster, dir: &std::path::Path) {
    for (i, member) in cluster.members.iter().enumerate() {
        let Ok(entries) = std::fs::read_dir(member.dir()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("server-") && name.ends_with(".log") {
                let _ = std::fs::copy(entry.path(), dir.join(format!("member-{i}-{name}")));
            }
        }
    }
}

fn finish(
    mut report: RunReport,
    started: Instant,
    ops: &[Operation],
    sessions: &[Session],
    cluster: &Cluster,
    artifacts: Option<&std::path::Path>,
) -> RunReport {
    report.duration_s = started.elapsed().as_secs_f64();
    if !report.passed() {
        if let Some(dir) = artifacts {
            let dir = dir.join(format!("seed-{}", report.seed));
            if std::fs::create_dir_all(&dir).is_ok() {
                let history: Vec<String> = ops.iter().map(ToString::to_string).collect();
                let _ = std::fs::write(dir.join("history.txt"), history.join("\n"));
                if let Ok(json) = serde_json::to_string(ops) {
                    let _ = std::fs::write(dir.join("history.json"), json);
                }
                if let Ok(json) = serde_json::to_string(sessions) {
                    let _ = std::fs::write(dir.join("watches.json"), json);
                }
                if let Ok(json) = serde_json::to_string_pretty(&report) {
                    let _ = std::fs::write(dir.join("report.json"), json);
                }
                keep_member_logs(cluster, &dir);
            }
        }
    }
    report
}

/// The longest stretch of the traffic without a successful write completing.
fn unavailability(ops: &[Operation], from: u64, to: u64) -> f64 {
    let mut done: Vec<u64> = ops
        .iter()
        .filter(|o| o.outcome.is_ok() && o.request.may_write())
        .map(|o| o.ret)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    done.sort_unstable();
    let mut previous = from;
    let mut worst = 0;
    for t in done.iter().chain(std::iter::once(&to)) {
        worst = worst.max(t.saturating_sub(previous));
        previous = *t;
    }
    worst as f64 / 1e9
}

/// Waits until every member answers a linearizable read with one leader, revokes the
/// leases left, waits until none is left, and returns the final revision.
async fn settle(cluster: &Cluster, shared: &Shared, report: &mut RunReport) -> Option<i64> {
    let deadline = Instant::now() + HEAL_WAIT;
    if faults::leader(cluster, &[], HEAL_WAIT).await.is_none() {
        report.anomalies.push(format!(
            "no agreed leader within {HEAL_WAIT:?} after healing"
        ));
        return None;
    }
    for i in 0..cluster.members.len() {
        loop {
            let answered = match connect(&cluster.members[i].endpoint()).await {
                Ok(mut c) => c.get("settle", None).await.is_ok(),
                Err(_) => false,
            };
            if answered {
                break;
            }
            if Instant::now() >= deadline {
                report.anomalies.push(format!(
                    "member {i} answers no linearizable read within {HEAL_WAIT:?} after healing"
                ));
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut client = connect(&cluster.members[0].endpoint()).await.ok()?;
    let leases = shared
        .all_leases
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    for id in leases {
        // Most are gone already ("lease not found"): only the effect matters, and it is
        // in the watch history like any other change.
        let _ = client.lease_revoke(id).await;
    }
    let deadline = Instant::now() + LEASES_GONE_WAIT;
    loop {
        match client.leases().await {
            Ok(l) if l.leases().is_empty() => break,
            _ if Instant::now() >= deadline => {
                report.anomalies.push(format!(
                    "leases still alive {LEASES_GONE_WAIT:?} after revoking them all"
                ));
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    match client.get("settle", None).await {
        Ok(r) => r.header().map(|h| h.revision()),
        Err(e) => {
            report.anomalies.push(format!("final read: {e}"));
            None
        }
    }
}

/// Every member, read locally (serializable) once it has applied up to the final revision,
/// holds exactly the committed state at its revision; members agree on HashKV.
async fn durability(
    cluster: &Cluster,
    log: &CommittedLog,
    final_revision: i64,
    when: &str,
    report: &mut RunReport,
) {
    let all = RangeRequest::range("\0", "\0");
    let mut hashes = Vec::new();
    for i in 0..cluster.members.len() {
        let Ok(mut client) = connect(&cluster.members[i].endpoint()).await else {
            report
                .anomalies
                .push(format!("durability {when}: member {i} unreachable"));
            continue;
        };
        let deadline = Instant::now() + HEAL_WAIT;
        let got = loop {
            let r = client
                .get(
                    "\0",
                    Some(GetOptions::new().with_from_key().with_serializable()),
                )
                .await;
            match r {
                Ok(r) if r.header().map_or(0, |h| h.revision()) >= final_revision => break Some(r),
                _ if Instant::now() >= deadline => break None,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let Some(got) = got else {
            report.anomalies.push(format!(
                "durability {when}: member {i} did not reach revision {final_revision} within {HEAL_WAIT:?}"
            ));
            continue;
        };
        let revision = got.header().map_or(0, |h| h.revision());
        match log.state_at(revision) {
            Some(state) => {
                let want = state.range(&all);
                let have: Vec<crate::history::KeyValue> = got
                    .kvs()
                    .iter()
                    .map(|kv| crate::history::KeyValue {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                        version: kv.version(),
                        lease: kv.lease(),
                    })
                    .collect();
                if have != want.kvs {
                    let missing: Vec<String> = want
                        .kvs
                        .iter()
                        .filter(|kv| !have.contains(kv))
                        .take(5)
                        .map(ToString::to_string)
                        .collect();
                    let extra: Vec<String> = have
                        .iter()
                        .filter(|kv| !want.kvs.contains(kv))
                        .take(5)
                        .map(ToString::to_string)
                        .collect();
                    report.anomalies.push(format!(
                        "durability {when}: member {i} at revision {revision} differs from the committed history: missing {missing:?}, unexpected {extra:?}"
                    ));
                }
            }
            None => report.anomalies.push(format!(
                "durability {when}: member {i} at revision {revision}: the committed history is incomplete there"
            )),
        }
        match client.hash_kv(final_revision).await {
            Ok(h) => hashes.push((i, h.hash(), h.compact_version())),
            Err(e) => report
                .anomalies
                .push(format!("durability {when}: HashKV on member {i}: {e}")),
        }
    }
    if let Some(first) = hashes.first() {
        if hashes.iter().any(|h| (h.1, h.2) != (first.1, first.2)) {
            report.anomalies.push(format!(
                "durability {when}: members disagree on HashKV at revision {final_revision}: {hashes:?} (member, hash, compact version)"
            ));
        }
    }
}

/// One line per operation kind with counts: for reports.
pub fn summarize_ops(ops: &[Operation]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for op in ops {
        let kind = describe_request(&op.request)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        *counts.entry(kind).or_insert(0) += 1;
    }
    counts
}

/// Checks a failing run again from its artifacts (`ROBUSTNESS_RECHECK=<dir>`): the recorded
/// history and watch sessions, without any server.
pub fn recheck(dir: &std::path::Path, limits: Limits) -> Result<(Vec<String>, KvReport), String> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let ops: Vec<Operation> =
        serde_json::from_str(&read("history.json")?).map_err(|e| format!("history.json: {e}"))?;
    let sessions: Vec<Session> =
        serde_json::from_str(&read("watches.json")?).map_err(|e| format!("watches.json: {e}"))?;
    let report: serde_json::Value =
        serde_json::from_str(&read("report.json")?).map_err(|e| format!("report.json: {e}"))?;
    let final_revision = report["final_revision"].as_i64().unwrap_or(0);
    let mut violations = Violations::default();
    let log = watch::committed_log(&sessions, final_revision, &mut violations);
    let compactions: Vec<(u64, i64)> = ops
        .iter()
        .filter_map(|o| match (&o.request, &o.outcome) {
            (Request::Compact { revision }, Outcome::Ok(_) | Outcome::Unknown(_)) => {
                Some((o.call, *revision))
            }
            _ => None,
        })
        .collect();
    watch::validate(&sessions, &log, &compactions, &mut violations);
    let mut first_seen: BTreeMap<i64, u64> = BTreeMap::new();
    for session in &sessions {
        for response in &session.responses {
            for event in &response.events {
                let e = first_seen.entry(event.revision()).or_insert(response.at);
                *e = (*e).min(response.at);
            }
        }
    }
    Ok((
        violations.lines(),
        check_history(&ops, &log, &first_seen, limits),
    ))
}
