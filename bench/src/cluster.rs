//! The 3-member runs of the suite: a keelson cluster and an etcd cluster started alike (the
//! same flags, fresh data dirs, fsync on, default heartbeat and election timeouts), the load
//! scenarios through clients that know every member, then the failover measurement: SIGKILL
//! the leader and time the first write the survivors acknowledge.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, KvClient};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::{timeout, MissedTickBehavior};

use crate::keys;
use crate::machine::{process_cpu_seconds, CpuMeter, Generator};
use crate::report::{error_text, ErrorCounts, Report};
use crate::server::{member_status, Kind, ServerProc};
use crate::suite::{note_load, set_cpu_per_op, Scenario, ServerRun, SuiteArgs, START_TIMEOUT};

pub const CLUSTER_SIZE: usize = 3;
pub const FAILOVER_SCENARIO: &str = "cluster3-failover";

/// Leader kills per cluster run at `--time-scale 1`.
const FAILOVERS_PER_RUN: usize = 3;
/// While waiting for the first write after a kill, a new Put leaves this often. Each has its
/// own deadline instead of waiting for the previous one: a Put a follower forwarded to the dead
/// leader is lost and would only end at its deadline, which would measure the deadline, not
/// the failover. The interval is the resolution of the measurement.
const FAILOVER_WRITE_INTERVAL: Duration = Duration::from_millis(25);
/// Deadline of each of those Puts (so at most about 80 are in flight).
const FAILOVER_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// New Puts stop this long after the kill; no success by then fails the measurement.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// No further kill starts once the failover part of a run has taken this long.
const FAILOVER_SECTION_LIMIT: Duration = Duration::from_secs(60);
/// Expected time of one kill (leader search, kill, first write, restart of the member).
const FAILOVER_ESTIMATE: Duration = Duration::from_secs(10);
/// How long the members may take to agree on a leader before a kill.
const LEADER_WAIT: Duration = Duration::from_secs(30);
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
const LEADER_POLL: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The leader kills of one cluster run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failover {
    /// Kills planned for the run.
    pub planned: usize,
    /// Per kill that was measured: SIGKILL of the leader to the first Put acknowledged
    /// through the surviving members, in milliseconds.
    pub samples_ms: Vec<f64>,
    /// Puts issued after the kills.
    pub writes_attempted: u64,
    /// Puts that failed before a leader took over, by error text. Expected (they are what
    /// the measurement waits out), so they are shown apart from the scenarios' errors.
    pub writes_failed: ErrorCounts,
    /// Puts still in flight when an earlier one succeeded; their outcome was not awaited.
    pub writes_abandoned: u64,
    /// Kills that gave no measurement, and why.
    pub failures: Vec<String>,
    /// Kills left out to stay within the time bound.
    pub notes: Vec<String>,
}

/// Leader kills per cluster run: 3 at `--time-scale 1`, at least one.
pub fn failovers_per_run(time_scale: f64) -> usize {
    ((FAILOVERS_PER_RUN as f64 * time_scale).round() as usize).clamp(1, 3 * FAILOVERS_PER_RUN)
}

/// The failover part's share of a cluster run's time estimate.
pub fn failover_budget(failovers: usize) -> Duration {
    FAILOVER_ESTIMATE
        .saturating_mul(failovers as u32)
        .min(FAILOVER_SECTION_LIMIT)
}

pub fn failover_description(failovers: usize) -> String {
    format!(
        "3 members: SIGKILL of the leader (found by Maintenance.Status) → first Put acknowledged through \
         the 2 survivors' endpoints (a new Put every {} ms, each with a {} s deadline); {failovers} kill(s) \
         per run, the member restarted on its data dir in between",
        FAILOVER_WRITE_INTERVAL.as_millis(),
        FAILOVER_WRITE_TIMEOUT.as_secs()
    )
}

/// Starts a 3-member cluster of `kind`, runs `list` through all three endpoints, then kills
/// the leader `failovers` times.
pub async fn run_cluster(
    args: &SuiteArgs,
    list: &[Scenario],
    failovers: usize,
    kind: Kind,
    round: usize,
    work: &Path,
) -> ServerRun {
    let wall = Instant::now();
    let mut run = ServerRun::new(kind, round, CLUSTER_SIZE);
    let label = format!("{}-x{CLUSTER_SIZE}-r{}", kind.name(), round + 1);
    let t = Instant::now();
    let mut members = match ServerProc::start_cluster(
        args.bins.spec(kind, vec![]),
        work,
        &label,
        CLUSTER_SIZE,
        START_TIMEOUT,
    )
    .await
    {
        Ok(m) => m,
        Err(e) => {
            run.failure = Some(format!(
                "could not start a {CLUSTER_SIZE}-member cluster: {e}"
            ));
            run.wall_secs = wall.elapsed().as_secs_f64();
            return run;
        }
    };
    run.start_to_ready_ms = t.elapsed().as_secs_f64() * 1000.0;
    let endpoints: Vec<String> = members.iter().map(ServerProc::endpoint).collect();
    eprintln!(
        "suite: {} ready at {endpoints:?} (pids {:?})",
        run.label(),
        members.iter().map(ServerProc::pid).collect::<Vec<_>>()
    );
    let pids: Vec<u32> = members.iter().filter_map(ServerProc::pid).collect();
    let go = args.go_load();
    let generator = generator_of(go);
    let meter = CpuMeter::start(&pids, generator);
    let member_pids: Vec<Option<u32>> = members.iter().map(ServerProc::pid).collect();
    let cpu_of = || -> Vec<Option<f64>> {
        member_pids
            .iter()
            .map(|pid| pid.and_then(|p| process_cpu_seconds(&p.to_string())))
            .collect()
    };
    for scenario in list {
        let leader_before = leader_index(&endpoints).await;
        let before = cpu_of();
        // No server pid: only the generator and the machine are of interest here.
        let load = CpuMeter::start(&[], generator);
        let mut report = scenario.run(&endpoints, args.time_scale, go).await;
        note_load(&mut report, load.stop().load());
        let after = cpu_of();
        let leader_after = leader_index(&endpoints).await;
        set_cluster_cpu_per_op(&mut report, &before, &after, leader_before, leader_after);
        eprintln!(
            "[{}] {}",
            run.label(),
            report.human().trim_end().replace('\n', "\n    ")
        );
        run.scenarios.push((scenario.name.to_string(), report));
        if let Some(dead) = members.iter_mut().position(|m| !m.is_running()) {
            let dead = &members[dead];
            run.failure = Some(format!(
                "member {} died during {}; last log lines:\n{}",
                dead.name(),
                scenario.name,
                dead.log_tail(30)
            ));
            break;
        }
    }
    // Read before the failover: a killed member's CPU time and peak RSS go with it.
    run.cpu = meter.stop();
    run.member_peak_rss_bytes = members.iter().map(ServerProc::peak_rss).collect();
    run.peak_rss_bytes = run.member_peak_rss_bytes.iter().copied().sum();
    run.data_dir_bytes = members.iter().map(ServerProc::disk_usage).sum();
    if run.failure.is_none() && failovers > 0 {
        let failover = measure_failovers(&mut members, failovers).await;
        eprintln!(
            "[{}] {FAILOVER_SCENARIO}: {} of {} kills measured, ms {:?}, {} writes failed meanwhile{}",
            run.label(),
            failover.samples_ms.len(),
            failover.planned,
            failover
                .samples_ms
                .iter()
                .map(|ms| ms.round() as u64)
                .collect::<Vec<_>>(),
            failover.writes_failed.total,
            failover
                .failures
                .iter()
                .map(|f| format!("; FAILED: {f}"))
                .collect::<String>()
        );
        run.failover = Some(failover);
    }
    for member in &members {
        member.terminate();
    }
    for member in &mut members {
        member.stop(STOP_GRACE).await;
        member.remove_files();
    }
    run.wall_secs = wall.elapsed().as_secs_f64();
    run
}

/// Which processes count as the load generator of a cluster run. go-load runs as a child
/// that is waited for before each meter stops, so its runs must count reaped children. The
/// members are reaped only after the meters stop (the failover kills come later), except a
/// member found dead mid-run, which fails the run; keelson-bench's own runs count this
/// process alone, so that such a member's CPU can never show as the generator's.
fn generator_of(go: Option<&Path>) -> Generator {
    match go {
        Some(_) => Generator::WithReapedChildren,
        None => Generator::ThisProcess,
    }
}

/// The index of the member every answering member names as leader, if they agree.
async fn leader_index(endpoints: &[String]) -> Option<usize> {
    let mut ids = Vec::with_capacity(endpoints.len());
    let mut leader = None;
    for endpoint in endpoints {
        let (id, named) = member_status(endpoint, STATUS_TIMEOUT).await.ok()?;
        if named == 0 || leader.is_some_and(|l| l != named) {
            return None;
        }
        leader = Some(named);
        ids.push(id);
    }
    ids.iter().position(|&id| Some(id) == leader)
}

/// A cluster scenario's server CPU per operation: the leader's when the same member led before
/// and after it, else the three summed; the three summed is kept as a counter either way.
fn set_cluster_cpu_per_op(
    report: &mut Report,
    before: &[Option<f64>],
    after: &[Option<f64>],
    leader_before: Option<usize>,
    leader_after: Option<usize>,
) {
    let sum = |v: &[Option<f64>]| v.iter().copied().sum::<Option<f64>>();
    set_cpu_per_op(report, sum(before), sum(after));
    let Some(all) = report.server_cpu_us_per_op else {
        return;
    };
    report.counters.insert(
        "cpu_us_per_op_3_members".into(),
        (all * 10.0).round() / 10.0,
    );
    match leader_before.filter(|_| leader_before == leader_after) {
        Some(l) => set_cpu_per_op(report, before[l], after[l]),
        None => {
            report.counters.insert("cpu_leader_unknown".into(), 1.0);
        }
    }
}

async fn measure_failovers(members: &mut [ServerProc], planned: usize) -> Failover {
    let mut failover = Failover {
        planned,
        ..Failover::default()
    };
    let started = Instant::now();
    for kill in 0..planned {
        if kill > 0 && started.elapsed() + FAILOVER_ESTIMATE > FAILOVER_SECTION_LIMIT {
            failover.notes.push(format!(
                "stopped after {kill} of {planned} kills to stay within {FAILOVER_SECTION_LIMIT:?}"
            ));
            break;
        }
        if let Err(e) = kill_leader_once(members, kill, &mut failover).await {
            // The cluster may not be whole any more: a further kill could leave no quorum.
            failover.failures.push(format!("kill {}: {e}", kill + 1));
            break;
        }
    }
    failover
}

/// Finds the leader, checks that the other two accept a write, SIGKILLs the leader, times the
/// first acknowledged write through the survivors, and restarts the killed member.
async fn kill_leader_once(
    members: &mut [ServerProc],
    kill: usize,
    failover: &mut Failover,
) -> Result<(), String> {
    let leader = agreed_leader(members, LEADER_WAIT).await?;
    let survivors: Vec<String> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, m)| m.endpoint())
        .collect();
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(FAILOVER_WRITE_TIMEOUT);
    let client = match timeout(
        CONNECT_TIMEOUT,
        Client::connect(survivors.clone(), Some(options)),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("connect to {survivors:?}: {}", error_text(&e))),
        Err(_) => {
            return Err(format!(
                "connect to {survivors:?}: no answer within {CONNECT_TIMEOUT:?}"
            ))
        }
    };
    let mut kv = client.kv_client();
    let key = format!("keelson-bench/failover/{kill}");
    // A write through the survivors before the kill opens the connections and shows the path
    // works, so that what follows the kill is the cluster's failover alone.
    match timeout(
        FAILOVER_WRITE_TIMEOUT + Duration::from_secs(1),
        kv.put(key.clone(), keys::random_value(256), None),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(format!(
                "the write through the followers before the kill failed: {}",
                error_text(&e)
            ))
        }
        Err(_) => {
            return Err(format!(
                "the write through the followers before the kill had no answer within {FAILOVER_WRITE_TIMEOUT:?}"
            ))
        }
    }
    let killed_at = Instant::now();
    members[leader].kill();
    let measured = first_write_after(&kv, &key, killed_at, failover).await;
    // Whatever the measurement gave, the member comes back so that the next kill leaves a
    // quorum; it restarts on its data dir (its flags name the initial cluster, which a member
    // with data ignores, as etcd does).
    let restarted = members[leader].restart(START_TIMEOUT).await.map_err(|e| {
        format!(
            "member {} did not come back after its kill: {e}",
            members[leader].name()
        )
    });
    match (measured, restarted) {
        (Ok(elapsed), Ok(_)) => {
            failover.samples_ms.push(elapsed.as_secs_f64() * 1000.0);
            Ok(())
        }
        (Ok(elapsed), Err(e)) => {
            failover.samples_ms.push(elapsed.as_secs_f64() * 1000.0);
            Err(e)
        }
        (Err(e), Ok(_)) => Err(e),
        (Err(e), Err(restart)) => Err(format!("{e}; then {restart}")),
    }
}

/// Issues a Put every [`FAILOVER_WRITE_INTERVAL`] until one is acknowledged; returns the time
/// from `killed_at` to that acknowledgement. Failures are counted in `failover`.
async fn first_write_after(
    kv: &KvClient,
    key: &str,
    killed_at: Instant,
    failover: &mut Failover,
) -> Result<Duration, String> {
    let mut attempts = JoinSet::new();
    let mut pace = tokio::time::interval(FAILOVER_WRITE_INTERVAL);
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stop_issuing = killed_at + FAILOVER_TIMEOUT;
    let give_up = stop_issuing + FAILOVER_WRITE_TIMEOUT + Duration::from_secs(2);
    let mut failed_here = 0u64;
    loop {
        tokio::select! {
            _ = pace.tick(), if Instant::now() < stop_issuing => {
                let mut kv = kv.clone();
                let key = key.to_string();
                let value = keys::random_value(256);
                failover.writes_attempted += 1;
                attempts.spawn(async move {
                    // The gRPC deadline (set on the connection) ends the request; this one
                    // only bounds a request whose deadline went unnoticed.
                    let backstop = FAILOVER_WRITE_TIMEOUT + Duration::from_secs(1);
                    match timeout(backstop, kv.put(key, value, None)).await {
                        Ok(Ok(_)) => Ok(Instant::now()),
                        Ok(Err(e)) => Err(error_text(&e)),
                        Err(_) => Err(format!("no answer within {backstop:?} (client-side deadline)")),
                    }
                });
            }
            Some(joined) = attempts.join_next() => match joined {
                Ok(Ok(acknowledged_at)) => {
                    failover.writes_abandoned += attempts.len() as u64;
                    attempts.abort_all();
                    return Ok(acknowledged_at.duration_since(killed_at));
                }
                Ok(Err(text)) => {
                    failed_here += 1;
                    failover.writes_failed.add(text, 1);
                }
                Err(e) => {
                    failed_here += 1;
                    failover.writes_failed.add(format!("write attempt ended abnormally: {e}"), 1);
                }
            },
            _ = tokio::time::sleep_until(give_up.into()) => {
                failover.writes_abandoned += attempts.len() as u64;
                return Err(format!(
                    "no write was acknowledged within {FAILOVER_TIMEOUT:?} of the leader's SIGKILL \
                     ({failed_here} failed)"
                ));
            }
        }
    }
}

/// Asks every member for its Status until all of them name the same leader, one of them;
/// returns its index.
async fn agreed_leader(members: &mut [ServerProc], limit: Duration) -> Result<usize, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(dead) = members.iter_mut().position(|m| !m.is_running()) {
            let dead = &members[dead];
            return Err(format!(
                "member {} is not running; last log lines:\n{}",
                dead.name(),
                dead.log_tail(30)
            ));
        }
        let mut seen = Vec::with_capacity(members.len());
        for member in members.iter() {
            seen.push(member_status(&member.endpoint(), STATUS_TIMEOUT).await);
        }
        let leaders: Vec<u64> = seen
            .iter()
            .map(|s| s.as_ref().map_or(0, |&(_, leader)| leader))
            .collect();
        let agreed = leaders
            .first()
            .copied()
            .filter(|&l| l != 0 && leaders.iter().all(|&x| x == l));
        if let Some(leader) = agreed {
            if let Some(index) = seen
                .iter()
                .position(|s| matches!(s, Ok((id, _)) if *id == leader))
            {
                return Ok(index);
            }
        }
        if Instant::now() >= deadline {
            let views: Vec<String> = members
                .iter()
                .zip(&seen)
                .map(|(m, s)| match s {
                    Ok((id, leader)) => format!("{} (id {id:x}) sees leader {leader:x}", m.name()),
                    Err(e) => format!("{}: {e}", m.name()),
                })
                .collect();
            return Err(format!(
                "the members did not agree on a leader within {limit:?}: {}",
                views.join("; ")
            ));
        }
        tokio::time::sleep(LEADER_POLL).await;
    }
}
