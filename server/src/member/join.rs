//! keelson's join step (`--join-seeds`): what a member does at start when it may be joining a
//! cluster that already runs, so that a StatefulSet can scale and replace members without
//! scripts (docs/clustering.md, "Joining with --join-seeds"; docs/deploy.md).
//!
//! With data in its data dir, a member restarts as itself, unless the cluster says it was
//! removed: then its data is set aside (renamed, never deleted) and it joins as a new member.
//! With an empty data dir it asks the seeds (the peer URLs of the other members):
//! - nobody answers: a new cluster; it bootstraps from `--initial-cluster` as etcd does;
//! - the cluster lists its peer URL as a member that never published itself: it is part of
//!   the cluster's first configuration and was slow to start; it starts as that member;
//! - the cluster lists its peer URL (or its name) as a member that did publish itself: its disk
//!   was lost; that member is removed, then it joins as below;
//! - otherwise (a scale-up): it is added as a learner, starts with the cluster's member list,
//!   catches up, and promotes itself once the leader counts it in sync.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::error::EtcdError;
use crate::member::identity;
use crate::proto::peerpb::membership_change::Change;
use crate::proto::peerpb::{AddMember, ClusterInfo, MembershipChange, PromoteMember, RemoveMember};
use crate::raft::peer::client::{change_members_at, fetch_cluster};
use crate::raft::RaftNode;

/// How long one seed may take to answer.
const SEED_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds of asking the seeds or retrying a refused change.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the member starts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinDecision {
    /// Bootstrap a new cluster from `--initial-cluster` (nobody answered).
    Bootstrap,
    /// Start as this member of this cluster, without initialising raft from the flags (a
    /// learner promotes itself once started: `promote_when_ready`).
    Join { member_id: u64, cluster_id: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("--join-seeds: {0}")]
    Failed(String),
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut urls = urls.to_vec();
    urls.sort();
    urls
}

/// The seeds other than this member's own peer URLs.
fn other_seeds(config: &Config) -> Vec<String> {
    config
        .join_seeds
        .iter()
        .filter(|s| !config.initial_advertise_peer_urls.contains(s))
        .cloned()
        .collect()
}

/// The first seed's answer that describes a cluster with members (one that formed, or is
/// forming from its first configuration).
async fn ask_seeds(
    seeds: &[String],
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Option<ClusterInfo> {
    let probes = seeds
        .iter()
        .map(|url| async move { fetch_cluster(url, tls, SEED_TIMEOUT).await });
    let answers: Vec<ClusterInfo> = futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .filter(|a| !a.members.is_empty())
        .collect();
    // Prefer a member that follows a leader: it knows the current membership.
    answers
        .iter()
        .find(|a| a.leader_id != 0)
        .or_else(|| answers.first())
        .cloned()
}

/// Whether the cluster the seeds describe removed `member_id`.
pub async fn was_removed(
    config: &Config,
    member_id: u64,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> bool {
    match ask_seeds(&other_seeds(config), tls).await {
        Some(info) => info.removed_ids.contains(&member_id),
        None => false,
    }
}

/// Renames the data dir of a removed member out of the way (never deletes it), so that the
/// member can start again as an empty one.
pub fn set_aside(data_dir: &Path) -> std::io::Result<PathBuf> {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let target = data_dir.with_file_name(format!("{name}.removed-{}", now_secs()));
    std::fs::rename(data_dir, &target)?;
    Ok(target)
}

/// Whether the membership `info` describes already has `change` made.
fn is_made(change: &Change, info: &ClusterInfo) -> bool {
    let member = |id: u64| info.members.iter().find(|m| m.id == id);
    match change {
        Change::Add(add) => member(add.id).is_some_and(|m| {
            sorted(&m.peer_ur_ls) == sorted(&add.peer_urls) && m.is_learner == add.is_learner
        }),
        Change::Remove(remove) => member(remove.id).is_none(),
        Change::Promote(promote) => member(promote.id).is_some_and(|m| !m.is_learner),
        Change::Update(_) | Change::Publish(_) => false,
    }
}

/// Sends `change` to the cluster's leader as `info` names it, asking the seeds again when the
/// leader moved, until `deadline`. Retries etcd's temporary refusals (unhealthy cluster, a
/// learner still joining, not enough started members).
async fn change_through_leader(
    config: &Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
    mut info: ClusterInfo,
    change: Change,
    deadline: Instant,
) -> Result<ClusterInfo, JoinError> {
    loop {
        let leader_urls = info
            .members
            .iter()
            .find(|m| m.id == info.leader_id)
            .map(|m| m.peer_ur_ls.clone())
            .unwrap_or_default();
        let outcome = match leader_urls.first() {
            Some(url) => {
                change_members_at(
                    url,
                    tls,
                    info.cluster_id,
                    MembershipChange {
                        change: Some(change.clone()),
                    },
                    SEED_TIMEOUT * 5,
                )
                .await
            }
            None => Err(EtcdError::NoLeader),
        };
        // An earlier call may have made the change before it broke (the leader died under it);
        // its retry is then refused as a duplicate.
        if matches!(
            outcome,
            Err(EtcdError::MemberExists | EtcdError::PeerUrlExists | EtcdError::MemberNotFound)
        ) {
            let fresh = ask_seeds(&other_seeds(config), tls).await;
            if let Some(fresh) = fresh.filter(|fresh| is_made(&change, fresh)) {
                tracing::info!(change = ?change, "the cluster already made this change");
                return Ok(fresh);
            }
        }
        match outcome {
            Ok(_) => return Ok(info),
            Err(
                e @ (EtcdError::MemberExists | EtcdError::PeerUrlExists | EtcdError::BadMemberUrls),
            ) => {
                return Err(JoinError::Failed(format!(
                    "the cluster refused {change:?}: {e}"
                )))
            }
            Err(e) => {
                if Instant::now() + RETRY_EVERY >= deadline {
                    return Err(JoinError::Failed(format!(
                        "{change:?} did not go through before --join-timeout: {e}"
                    )));
                }
                tracing::info!(error = %e, "membership change refused for now; retrying");
            }
        }
        tokio::time::sleep(RETRY_EVERY).await;
        if let Some(fresh) = ask_seeds(&other_seeds(config), tls).await {
            info = fresh;
        }
    }
}

/// Decides, for a member with an empty data dir, what it starts as (see the module docs).
pub async fn decide(
    config: &Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<JoinDecision, JoinError> {
    let deadline = Instant::now() + config.join_timeout;
    let seeds = other_seeds(config);
    let mine = sorted(&config.initial_advertise_peer_urls);
    let info = loop {
        if let Some(info) = ask_seeds(&seeds, tls).await {
            break info;
        }
        // Nobody answers: a new cluster, if this member is in its first configuration.
        if config.initial_cluster.contains_key(&config.name)
            && config.initial_cluster_state == crate::config::ClusterState::New
        {
            tracing::info!("no seed answered; bootstrapping a new cluster from --initial-cluster");
            return Ok(JoinDecision::Bootstrap);
        }
        if Instant::now() + RETRY_EVERY >= deadline {
            return Err(JoinError::Failed(
                "no seed answered before --join-timeout, and this member is not in --initial-cluster to bootstrap one".into(),
            ));
        }
        tokio::time::sleep(RETRY_EVERY).await;
    };
    let same_url = info
        .members
        .iter()
        .find(|m| sorted(&m.peer_ur_ls) == mine)
        .cloned();
    if let Some(member) = &same_url {
        if member.client_ur_ls.is_empty() {
            tracing::info!(
                member = %format!("{:x}", member.id),
                "the cluster lists this member and it never started: starting as that member"
            );
            return Ok(JoinDecision::Join {
                member_id: member.id,
                cluster_id: info.cluster_id,
            });
        }
    }
    // A started member with this peer URL or name: this member's disk was lost.
    let lost = info
        .members
        .iter()
        .find(|m| {
            !m.client_ur_ls.is_empty() && (sorted(&m.peer_ur_ls) == mine || m.name == config.name)
        })
        .cloned();
    let mut info = info;
    if let Some(old) = lost {
        tracing::warn!(
            old_member = %format!("{:x}", old.id),
            "the cluster lists this member as started, but its data dir is empty: removing the old member and joining again"
        );
        info = change_through_leader(
            config,
            tls,
            info,
            Change::Remove(RemoveMember { id: old.id }),
            deadline,
        )
        .await?;
    }
    let member_id =
        identity::member_id(&config.initial_advertise_peer_urls, &now_secs().to_string());
    tracing::info!(
        member = %format!("{member_id:x}"),
        "joining the cluster as a learner"
    );
    let info = change_through_leader(
        config,
        tls,
        info,
        Change::Add(AddMember {
            id: member_id,
            peer_urls: config.initial_advertise_peer_urls.clone(),
            is_learner: true,
        }),
        deadline,
    )
    .await?;
    Ok(JoinDecision::Join {
        member_id,
        cluster_id: info.cluster_id,
    })
}

/// Promotes this learner once the leader counts it in sync, retrying etcd's temporary
/// refusals until `timeout`.
pub async fn promote_when_ready(raft: Arc<RaftNode>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let me = raft.member_id();
    loop {
        if !raft.is_learner() {
            return;
        }
        let promoted = raft
            .change_members(MembershipChange {
                change: Some(Change::Promote(PromoteMember { id: me })),
            })
            .await;
        match promoted {
            Ok(()) => {
                tracing::info!("promoted this learner to a voting member");
                return;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "not promoted yet");
            }
            Err(e) => {
                tracing::warn!(error = %e, "gave up promoting this learner; promote it with `etcdctl member promote`");
                return;
            }
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::Member;

    fn cluster_of(members: &[(u64, &str, bool)]) -> ClusterInfo {
        ClusterInfo {
            members: members
                .iter()
                .map(|(id, url, is_learner)| Member {
                    id: *id,
                    peer_ur_ls: vec![url.to_string()],
                    is_learner: *is_learner,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_change_refused_as_a_duplicate_counts_as_made_only_when_it_is() {
        let add = Change::Add(AddMember {
            id: 7,
            peer_urls: vec!["http://10.0.0.7:2380".into()],
            is_learner: true,
        });
        let with_it = cluster_of(&[
            (1, "http://10.0.0.1:2380", false),
            (7, "http://10.0.0.7:2380", true),
        ]);
        assert!(is_made(&add, &with_it));
        // Another member holding the URL (a lost disk's old member) is not this add.
        let other = cluster_of(&[
            (1, "http://10.0.0.1:2380", false),
            (9, "http://10.0.0.7:2380", false),
        ]);
        assert!(!is_made(&add, &other));
        let remove = Change::Remove(RemoveMember { id: 7 });
        assert!(!is_made(&remove, &with_it));
        assert!(is_made(&remove, &other));
        let promote = Change::Promote(PromoteMember { id: 7 });
        assert!(!is_made(&promote, &with_it));
        assert!(is_made(
            &promote,
            &cluster_of(&[(7, "http://10.0.0.7:2380", false)])
        ));
    }

    #[test]
    fn a_removed_members_data_is_renamed_not_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("member")).expect("a data dir");
        std::fs::write(data.join("member").join("x"), b"kept").expect("a file");
        let moved = set_aside(&data).expect("renamed");
        assert!(!data.exists());
        assert_eq!(
            std::fs::read(moved.join("member").join("x")).expect("still there"),
            b"kept"
        );
        assert!(moved
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("data.removed-")));
    }
}
