//! The fault scenarios and the means to inject them: SIGKILL and SIGSTOP of member processes,
//! keelson's test-only peer hooks (cut links both ways, or per direction: drop, blackhole,
//! lost replies, delays), its fsync-delay hook, the client proxies, membership changes and
//! leader transfers. Every injection ends by healing what it broke.

use std::process::Command;
use std::time::{Duration, Instant};

use compat_tests::server::ClusterFlags;
use compat_tests::Cluster;
use serde::Serialize;

use crate::proxy::{Mode, Proxy};
use crate::rng::Rng;
use crate::traffic::{connect, Clock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Scenario {
    KillLeader,
    KillFollower,
    KillMajority,
    KillAll,
    PauseLeader,
    PauseFollower,
    PartitionLeader,
    PartitionMinority,
    AsymmetricPartition,
    PeerDelay,
    PeerBlackhole,
    ClientCut,
    ClientBlackhole,
    ClientDelay,
    WipeRejoin,
    RemoveReadd,
    LoseDiskJoin,
    LeaveJoin,
    LeaderTransfers,
    SlowDisk,
}

impl Scenario {
    pub const ALL: [Scenario; 20] = [
        Scenario::KillLeader,
        Scenario::KillFollower,
        Scenario::KillMajority,
        Scenario::KillAll,
        Scenario::PauseLeader,
        Scenario::PauseFollower,
        Scenario::PartitionLeader,
        Scenario::PartitionMinority,
        Scenario::AsymmetricPartition,
        Scenario::PeerDelay,
        Scenario::PeerBlackhole,
        Scenario::ClientCut,
        Scenario::ClientBlackhole,
        Scenario::ClientDelay,
        Scenario::WipeRejoin,
        Scenario::RemoveReadd,
        Scenario::LoseDiskJoin,
        Scenario::LeaveJoin,
        Scenario::LeaderTransfers,
        Scenario::SlowDisk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillLeader => "kill-leader",
            Scenario::KillFollower => "kill-follower",
            Scenario::KillMajority => "kill-majority",
            Scenario::KillAll => "kill-all",
            Scenario::PauseLeader => "pause-leader",
            Scenario::PauseFollower => "pause-follower",
            Scenario::PartitionLeader => "partition-leader",
            Scenario::PartitionMinority => "partition-minority",
            Scenario::AsymmetricPartition => "asymmetric-partition",
            Scenario::PeerDelay => "peer-delay",
            Scenario::PeerBlackhole => "peer-blackhole",
            Scenario::ClientCut => "client-cut",
            Scenario::ClientBlackhole => "client-blackhole",
            Scenario::ClientDelay => "client-delay",
            Scenario::WipeRejoin => "wipe-rejoin",
            Scenario::RemoveReadd => "remove-readd",
            Scenario::LoseDiskJoin => "lose-disk-join",
            Scenario::LeaveJoin => "leave-join",
            Scenario::LeaderTransfers => "leader-transfers",
            Scenario::SlowDisk => "slow-disk",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the scenario means anything with `members` members.
    pub fn applies_to(self, members: usize) -> bool {
        match self {
            Scenario::KillLeader
            | Scenario::KillAll
            | Scenario::PauseLeader
            | Scenario::ClientCut
            | Scenario::ClientBlackhole
            | Scenario::ClientDelay
            | Scenario::SlowDisk => true,
            _ => members >= 3,
        }
    }
}

/// Everything a fault may touch.
pub struct Target<'a> {
    pub cluster: &'a mut Cluster,
    pub proxies: &'a [Proxy],
    pub clock: Clock,
}

/// What was done, for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultReport {
    pub description: String,
    /// Seconds on the run's clock.
    pub injected_at: f64,
    pub healed_at: f64,
    pub notes: Vec<String>,
    /// What the cluster failed to do that it promises (a member that left and rejoined with
    /// `--join-seeds` not a voter again in time): anomalies, not notes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

const HOOK_TIMEOUT: Duration = Duration::from_secs(3);
const STATUS_WAIT: Duration = Duration::from_secs(30);

async fn put_hook(peer_url: &str, path: &str, body: String) -> Result<(), String> {
    let url = format!("{peer_url}{path}");
    let client = reqwest::Client::builder()
        .timeout(HOOK_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let response = client
        .put(&url)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("PUT {url}: {}", response.status()))
    }
}

pub async fn set_blocked(cluster: &Cluster, i: usize, ids: &[u64]) -> Result<(), String> {
    let list: Vec<String> = ids.iter().map(|id| format!("{id:x}")).collect();
    put_hook(
        &cluster.members[i].peer_url(),
        "/keelson/faults/blocked-peers",
        list.join(","),
    )
    .await
}

pub async fn set_rules(cluster: &Cluster, i: usize, rules: &[(u64, String)]) -> Result<(), String> {
    let text: String = rules
        .iter()
        .map(|(id, action)| format!("{id:x} {action}\n"))
        .collect();
    put_hook(
        &cluster.members[i].peer_url(),
        "/keelson/faults/peer-rules",
        text,
    )
    .await
}

pub async fn set_fsync_delay(cluster: &Cluster, i: usize, delay: Duration) -> Result<(), String> {
    put_hook(
        &cluster.members[i].peer_url(),
        "/keelson/faults/fsync-delay",
        delay.as_millis().to_string(),
    )
    .await
}

fn signal(cluster: &Cluster, i: usize, sig: &str) -> Result<(), String> {
    let pid = cluster.members[i]
        .pid()
        .ok_or_else(|| format!("member {i} is not running"))?;
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map_err(|e| format!("kill {sig} {pid}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill {sig} {pid}: {status}"))
    }
}

/// Member IDs of the running members (index -> ID), from their Status.
pub async fn member_ids(cluster: &Cluster) -> Vec<Option<u64>> {
    let mut ids = Vec::new();
    for i in 0..cluster.members.len() {
        let id = if cluster.members[i].is_running() {
            cluster
                .status_of(i)
                .await
                .and_then(|s| s.header().map(|h| h.member_id()))
        } else {
            None
        };
        ids.push(id);
    }
    ids
}

/// The member the running members (minus `excluded`) agree leads, within `timeout`.
pub async fn leader(cluster: &Cluster, excluded: &[usize], timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leaders = Vec::new();
        let mut ids = Vec::new();
        for i in 0..cluster.members.len() {
            if excluded.contains(&i) || !cluster.members[i].is_running() {
                continue;
            }
            match cluster.status_of(i).await {
                Some(status) => {
                    ids.push((i, status.header().map_or(0, |h| h.member_id())));
                    leaders.push(status.leader());
                }
                None => leaders.push(0),
            }
        }
        if let Some(&first) = leaders.first() {
            if first != 0 && leaders.iter().all(|l| *l == first) {
                if let Some((i, _)) = ids.iter().find(|(_, id)| *id == first) {
                    return Some(*i);
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn others(cluster: &Cluster, of: &[usize]) -> Vec<usize> {
    (0..cluster.members.len())
        .filter(|i| !of.contains(i))
        .collect()
}

async fn hold(rng: &mut Rng, low_ms: u64, high_ms: u64) -> Duration {
    let d = Duration::from_millis(rng.between(low_ms, high_ms));
    tokio::time::sleep(d).await;
    d
}

async fn restart(cluster: &mut Cluster, members: &[usize], report: &mut FaultReport) {
    for &i in members {
        if let Err(e) = cluster.members[i].try_respawn() {
            report.notes.push(format!("respawn member {i}: {e}"));
        }
    }
    for &i in members {
        if let Err(e) = cluster.members[i].try_wait_ready().await {
            report
                .notes
                .push(format!("member {i} did not become ready: {e}"));
        }
    }
}

/// Cuts `isolated` off from the rest, both directions, with the blocked-peers hook.
async fn partition(
    cluster: &Cluster,
    isolated: &[usize],
    ids: &[Option<u64>],
) -> Result<(), String> {
    for i in 0..cluster.members.len() {
        if !cluster.members[i].is_running() {
            continue;
        }
        let blocked: Vec<u64> = (0..cluster.members.len())
            .filter(|j| isolated.contains(&i) != isolated.contains(j))
            .filter_map(|j| ids[j])
            .collect();
        set_blocked(cluster, i, &blocked).await?;
    }
    Ok(())
}

/// Undoes every hook and every proxy fault, and resumes paused members.
pub async fn heal_everything(target: &mut Target<'_>, paused: &[usize]) -> Vec<String> {
    let mut notes = Vec::new();
    for &i in paused {
        if let Err(e) = signal(target.cluster, i, "-CONT") {
            notes.push(e);
        }
    }
    for proxy in target.proxies {
        proxy.set(Mode::Pass);
    }
    for i in 0..target.cluster.members.len() {
        if !target.cluster.members[i].is_running() {
            continue;
        }
        for outcome in [
            set_blocked(target.cluster, i, &[]).await,
            set_rules(target.cluster, i, &[]).await,
            set_fsync_delay(target.cluster, i, Duration::ZERO).await,
        ] {
            if let Err(e) = outcome {
                notes.push(format!("heal member {i}: {e}"));
            }
        }
    }
    notes
}

/// Injects `scenario` once, holds it, heals it.
pub async fn inject(scenario: Scenario, target: &mut Target<'_>, rng: &mut Rng) -> FaultReport {
    let mut report = FaultReport {
        injected_at: target.clock.now() as f64 / 1e9,
        ..FaultReport::default()
    };
    let n = target.cluster.members.len();
    let Some(leader_index) = leader(target.cluster, &[], STATUS_WAIT).await else {
        report.description = format!("{}: no leader to start from", scenario.name());
        report
            .notes
            .push("the cluster had no agreed leader before the fault".into());
        report.healed_at = target.clock.now() as f64 / 1e9;
        return report;
    };
    let ids = member_ids(target.cluster).await;
    let followers = others(target.cluster, &[leader_index]);
    let pick_follower =
        |rng: &mut Rng| followers[rng.index(followers.len().max(1)) % followers.len().max(1)];
    // The leader about a third of the time, otherwise a follower: membership faults on the
    // leader take the paths (self-removal, leadership hand-over) that followers never do.
    let pick_leader_sometimes = |rng: &mut Rng| {
        if rng.chance(35) {
            leader_index
        } else {
            pick_follower(rng)
        }
    };
    let mut paused = Vec::new();
    match scenario {
        Scenario::KillLeader | Scenario::KillFollower => {
            let victim = if scenario == Scenario::KillLeader {
                leader_index
            } else {
                pick_follower(rng)
            };
            target.cluster.kill(victim);
            let down = hold(rng, 500, 3000).await;
            report.description = format!("SIGKILL member {victim} for {down:?}");
            restart(target.cluster, &[victim], &mut report).await;
        }
        Scenario::KillMajority => {
            let mut victims = vec![if rng.chance(50) {
                leader_index
            } else {
                pick_follower(rng)
            }];
            while victims.len() < n / 2 + 1 {
                let candidate = rng.index(n);
                if !victims.contains(&candidate) {
                    victims.push(candidate);
                }
            }
            for &v in &victims {
                target.cluster.kill(v);
            }
            let down = hold(rng, 1000, 4000).await;
            report.description = format!("SIGKILL members {victims:?} (majority) for {down:?}");
            restart(target.cluster, &victims, &mut report).await;
        }
        Scenario::KillAll => {
            for i in 0..n {
                target.cluster.kill(i);
            }
            let down = hold(rng, 200, 2000).await;
            report.description = format!("SIGKILL every member for {down:?}");
            let all: Vec<usize> = (0..n).collect();
            restart(target.cluster, &all, &mut report).await;
        }
        Scenario::PauseLeader | Scenario::PauseFollower => {
            let victim = if scenario == Scenario::PauseLeader {
                leader_index
            } else {
                pick_follower(rng)
            };
            match signal(target.cluster, victim, "-STOP") {
                Ok(()) => {
                    paused.push(victim);
                    let frozen = hold(rng, 1500, 5000).await;
                    report.description = format!("SIGSTOP member {victim} for {frozen:?}");
                }
                Err(e) => report.notes.push(e),
            }
        }
        Scenario::PartitionLeader | Scenario::PartitionMinority => {
            let isolated = if scenario == Scenario::PartitionLeader {
                vec![leader_index]
            } else {
                let mut minority = vec![pick_follower(rng)];
                if n >= 5 && rng.chance(50) {
                    let second = followers[rng.index(followers.len())];
                    if !minority.contains(&second) {
                        minority.push(second);
                    }
                }
                minority
            };
            if let Err(e) = partition(target.cluster, &isolated, &ids).await {
                report.notes.push(e);
            }
            let held = hold(rng, 2000, 5000).await;
            report.description =
                format!("partition members {isolated:?} from the rest for {held:?}");
        }
        Scenario::AsymmetricPartition => {
            // The leader's messages are lost (it hears the others, nobody hears it), or the
            // reverse (it talks, nobody answers it).
            let outbound_lost = rng.chance(50);
            let leader_id = ids[leader_index];
            let mut outcome = Ok(());
            let leader_rules: Vec<(u64, String)> = followers
                .iter()
                .filter_map(|&f| ids[f])
                .map(|id| {
                    (
                        id,
                        if outbound_lost {
                            "blackhole"
                        } else {
                            "noreply"
                        }
                        .to_string(),
                    )
                })
                .collect();
            outcome = outcome.and(set_rules(target.cluster, leader_index, &leader_rules).await);
            if let Some(leader_id) = leader_id {
                for &f in &followers {
                    let action = if outbound_lost {
                        "noreply"
                    } else {
                        "blackhole"
                    };
                    outcome = outcome.and(
                        set_rules(target.cluster, f, &[(leader_id, action.to_string())]).await,
                    );
                }
            }
            if let Err(e) = outcome {
                report.notes.push(e);
            }
            let held = hold(rng, 2000, 5000).await;
            report.description = format!(
                "asymmetric partition for {held:?}: packets {} leader {leader_index} lost",
                if outbound_lost { "from" } else { "to" }
            );
        }
        Scenario::PeerDelay => {
            let delay = rng.between(50, 400);
            for i in 0..n {
                let rules: Vec<(u64, String)> = (0..n)
                    .filter(|j| *j != i)
                    .filter_map(|j| ids[j])
                    .map(|id| (id, format!("delay={}", rng.between(delay / 2, delay))))
                    .collect();
                if let Err(e) = set_rules(target.cluster, i, &rules).await {
                    report.notes.push(e);
                }
            }
            let held = hold(rng, 2000, 5000).await;
            report.description = format!("peer messages delayed up to {delay} ms for {held:?}");
        }
        Scenario::PeerBlackhole => {
            let victim = if rng.chance(50) {
                leader_index
            } else {
                pick_follower(rng)
            };
            let rest = others(target.cluster, &[victim]);
            let rules: Vec<(u64, String)> = rest
                .iter()
                .filter_map(|&j| ids[j])
                .map(|id| (id, "blackhole".to_string()))
                .collect();
            let mut outcome = set_rules(target.cluster, victim, &rules).await;
            if let Some(victim_id) = ids[victim] {
                for &j in &rest {
                    outcome = outcome.and(
                        set_rules(target.cluster, j, &[(victim_id, "blackhole".into())]).await,
                    );
                }
            }
            if let Err(e) = outcome {
                report.notes.push(e);
            }
            let held = hold(rng, 2000, 5000).await;
            report.description = format!("peer traffic of member {victim} blackholed for {held:?}");
        }
        Scenario::ClientCut | Scenario::ClientBlackhole | Scenario::ClientDelay => {
            let mode = match scenario {
                Scenario::ClientCut => Mode::Drop,
                Scenario::ClientBlackhole => Mode::Blackhole,
                _ => Mode::Delay(Duration::from_millis(rng.between(50, 500))),
            };
            let victims: Vec<usize> = if rng.chance(30) {
                (0..n).collect()
            } else {
                vec![rng.index(n)]
            };
            for &v in &victims {
                if let Some(proxy) = target.proxies.get(v) {
                    proxy.set(mode);
                }
            }
            let held = hold(rng, 1000, 4000).await;
            report.description =
                format!("client traffic to members {victims:?}: {mode:?} for {held:?}");
        }
        Scenario::WipeRejoin | Scenario::RemoveReadd => {
            let victim = pick_leader_sometimes(rng);
            let crash = scenario == Scenario::WipeRejoin;
            report.description = format!(
                "member {victim} {} its data dir wiped, removed and added again",
                if crash {
                    "killed,"
                } else {
                    "removed under load,"
                }
            );
            if let Err(e) = replace_member(target.cluster, victim, crash, &ids, &mut report).await {
                report.notes.push(e);
            }
        }
        Scenario::LoseDiskJoin | Scenario::LeaveJoin => {
            let victim = pick_leader_sometimes(rng);
            let lose_disk = scenario == Scenario::LoseDiskJoin;
            report.description = format!(
                "member {victim} {}, restarted with --join-seeds",
                if lose_disk {
                    "killed and its data dir wiped"
                } else {
                    "left the cluster under load (keelson leave)"
                }
            );
            if let Err(e) = join_again(target.cluster, victim, lose_disk, &ids, &mut report).await {
                report.failures.push(e);
            }
        }
        Scenario::LeaderTransfers => {
            let rounds = rng.between(3, 8);
            let mut done = 0;
            for _ in 0..rounds {
                let Some(current) = leader(target.cluster, &[], Duration::from_secs(10)).await
                else {
                    report.notes.push("no leader during the transfers".into());
                    break;
                };
                let candidates = others(target.cluster, &[current]);
                let to = candidates[rng.index(candidates.len())];
                let Some(to_id) = ids[to] else { continue };
                match connect(&target.cluster.members[current].endpoint()).await {
                    Ok(mut client) => match client.move_leader(to_id).await {
                        Ok(_) => done += 1,
                        Err(e) => report
                            .notes
                            .push(format!("move leader {current} -> {to}: {e}")),
                    },
                    Err(e) => report.notes.push(e),
                }
                hold(rng, 200, 800).await;
            }
            report.description = format!("{done} of {rounds} leader transfers");
        }
        Scenario::SlowDisk => {
            let delay = Duration::from_millis(rng.between(50, 800));
            let victims: Vec<usize> = if rng.chance(50) {
                vec![leader_index]
            } else {
                (0..n).collect()
            };
            for &v in &victims {
                if let Err(e) = set_fsync_delay(target.cluster, v, delay).await {
                    report.notes.push(e);
                }
            }
            let held = hold(rng, 2000, 5000).await;
            report.description =
                format!("fsync of members {victims:?} delayed by {delay:?} for {held:?}");
        }
    }
    report.notes.extend(heal_everything(target, &paused).await);
    report.healed_at = target.clock.now() as f64 / 1e9;
    report
}

/// How long a member restarted with `--join-seeds` may take to be a voter again (joined as a
/// learner, caught up, promoted itself).
const JOIN_WAIT: Duration = Duration::from_secs(90);
/// `keelson leave`'s own bound (it retries while the cluster refuses the removal).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(20);

/// keelson's own way back for a member, as the Helm chart uses it (docs/deploy.md): with
/// `lose_disk`, member `victim` is killed and its data dir wiped, and the join step must remove
/// its old identity and add it again as a learner; otherwise `keelson leave` removes it under
/// load (it stops by itself) and the join step must set its data aside and join as a learner.
/// Either way it must promote itself.
async fn join_again(
    cluster: &mut Cluster,
    victim: usize,
    lose_disk: bool,
    ids: &[Option<u64>],
    report: &mut FaultReport,
) -> Result<(), String> {
    let old_id = ids[victim].ok_or("no ID for the member")?;
    let seeds = cluster
        .members
        .iter()
        .map(|m| m.peer_url())
        .collect::<Vec<_>>()
        .join(",");
    if lose_disk {
        cluster.kill(victim);
        cluster.members[victim]
            .wipe_data_dir()
            .map_err(|e| format!("wipe: {e}"))?;
    } else {
        let mut leave = tokio::process::Command::new(compat_tests::server::keelson_binary());
        leave
            .arg("leave")
            .arg(format!("--timeout={}s", LEAVE_TIMEOUT.as_secs()))
            .args(cluster.members[victim].member_args())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(LEAVE_TIMEOUT + Duration::from_secs(10), leave.output())
            .await
            .map_err(|_| format!("keelson leave did not end within {LEAVE_TIMEOUT:?} + 10 s"))?
            .map_err(|e| format!("keelson leave: {e}"))?;
        if !output.status.success() {
            report.notes.push(format!(
                "keelson leave: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        // A removed member stops by itself shortly after it learns of its removal.
        if cluster.members[victim]
            .wait_for_exit(Duration::from_secs(10))
            .await
            .is_none()
        {
            report
                .notes
                .push("the member that left did not exit within 10 s".into());
        }
        cluster.kill(victim);
    }
    cluster.members[victim].add_arg(format!("--join-seeds={seeds}"));
    cluster.members[victim].try_respawn()?;
    cluster.members[victim].try_wait_ready().await?;
    // Ready answers a Range; a voter again is what the join step promises.
    let helper = others(cluster, &[victim])
        .into_iter()
        .find(|i| cluster.members[*i].is_running())
        .ok_or("no other member to ask")?;
    let peer_url = cluster.members[victim].peer_url();
    let deadline = Instant::now() + JOIN_WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match connect(&cluster.members[helper].endpoint()).await {
            Ok(mut client) => match client.member_list().await {
                Ok(list) => {
                    let entry = list
                        .members()
                        .iter()
                        .find(|m| m.peer_urls().contains(&peer_url));
                    match entry {
                        Some(m) if !m.is_learner() && m.id() != old_id => return Ok(()),
                        Some(m) if m.id() == old_id => {
                            last = "still listed under its old ID".into();
                        }
                        Some(_) => last = "still a learner".into(),
                        None => last = "not listed".into(),
                    }
                }
                Err(e) => last = format!("member list: {e}"),
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "member {victim} not a voter under a new ID within {JOIN_WAIT:?} of joining: {last}"
    ))
}

/// Removes member `victim` (killed first with `crash`, else live: it stops by itself), wipes
/// its data, adds it again under the same name and URLs and starts it with `existing`.
async fn replace_member(
    cluster: &mut Cluster,
    victim: usize,
    crash: bool,
    ids: &[Option<u64>],
    report: &mut FaultReport,
) -> Result<(), String> {
    let victim_id = ids[victim].ok_or("no ID for the member")?;
    if crash {
        cluster.kill(victim);
    }
    // Through another member; a cluster that just lost a member may answer `unhealthy
    // cluster` for a few seconds (etcd's 5 s connected rule): retry, bounded.
    let helper = others(cluster, &[victim])
        .into_iter()
        .find(|i| cluster.members[*i].is_running())
        .ok_or("no other member to ask")?;
    let mut client = connect(&cluster.members[helper].endpoint()).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.member_remove(victim_id).await {
            Ok(_) => break,
            Err(e) if e.to_string().contains("member not found") => break,
            Err(e) if Instant::now() < deadline => {
                report.notes.push(format!("member remove: {e} (retrying)"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("member remove {victim_id:x}: {e}")),
        }
    }
    if !crash {
        // A removed member stops by itself shortly after it learns of its removal.
        if cluster.members[victim]
            .wait_for_exit(Duration::from_secs(10))
            .await
            .is_none()
        {
            report
                .notes
                .push("the removed member did not exit within 10 s".into());
        }
        cluster.kill(victim);
    }
    cluster.members[victim]
        .wipe_data_dir()
        .map_err(|e| format!("wipe: {e}"))?;
    let peer_url = cluster.members[victim].peer_url();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.member_add([peer_url.clone()], None).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                report.notes.push(format!("member add: {e} (retrying)"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("member add {peer_url}: {e}")),
        }
    }
    let initial_cluster = cluster
        .members
        .iter()
        .map(|m| format!("{}={}", m.name(), m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let flags = ClusterFlags {
        initial_cluster,
        state: "existing".into(),
        token: cluster.token().to_string(),
    };
    cluster.members[victim].set_cluster_flags(flags);
    cluster.members[victim].try_respawn()?;
    cluster.members[victim].try_wait_ready().await
}
