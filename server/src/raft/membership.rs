//! Membership changes on the leader, with etcd's rules: the checks of etcd's
//! `ValidateConfigurationChange` and its strict reconfiguration check, then openraft's joint
//! consensus. One change at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;

use super::types::MemberNode;
use super::{write_error, RaftNode};
use crate::error::{EtcdError, EtcdResult};
use crate::proto::peerpb::membership_change::Change;
use crate::proto::peerpb::MembershipChange;

/// etcd 3.4 allows one learner at a time.
const MAX_LEARNERS: usize = 1;
/// A learner may be promoted once it has 90% of the leader's log (etcd's readyPercent).
const LEARNER_READY_RATIO: f64 = 0.9;
/// A peer counts as connected when it answered within this long (etcd's HealthInterval).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The membership as the leader sees it when a change is asked for.
struct View {
    me: u64,
    nodes: BTreeMap<u64, MemberNode>,
    voters: BTreeSet<u64>,
    /// Per follower: matched log index (None when nothing is known yet).
    matched: BTreeMap<u64, Option<u64>>,
    /// Per member ever reached: whether it has been reachable for the whole health interval.
    connected: BTreeMap<u64, bool>,
    last_log_index: u64,
}

impl View {
    fn is_started(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| !n.name.is_empty())
    }

    fn learners(&self) -> usize {
        self.nodes
            .keys()
            .filter(|id| !self.voters.contains(id))
            .count()
    }

    fn peer_url_taken(&self, urls: &[String], except: Option<u64>) -> bool {
        self.nodes
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .any(|(_, n)| n.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// Whether every voter but this one answered recently (etcd's isConnectedFullySince).
    fn connected_to_all_voters(&self) -> bool {
        self.voters
            .iter()
            .filter(|id| **id != self.me)
            .all(|id| self.connected.get(id).copied().unwrap_or(false))
    }

    fn connected_voters(&self) -> usize {
        1 + self
            .voters
            .iter()
            .filter(|id| **id != self.me)
            .filter(|id| self.connected.get(id).copied().unwrap_or(false))
            .count()
    }
}

/// etcd's IsReadyToAddVotingMember: after the change, the started voters still make a quorum.
fn ready_to_add_voter(view: &View) -> bool {
    let members = view.voters.len() + 1;
    let started = view
        .voters
        .iter()
        .filter(|id| view.is_started(**id))
        .count();
    if started == 1 && members == 2 {
        return true;
    }
    started > members / 2
}

fn ready_to_remove_voter(view: &View, id: u64) -> bool {
    let remaining: Vec<u64> = view.voters.iter().copied().filter(|v| *v != id).collect();
    let started = remaining.iter().filter(|v| view.is_started(**v)).count();
    started > remaining.len() / 2
}

fn ready_to_promote(view: &View) -> bool {
    let members = view.voters.len() + 1;
    let started = 1 + view
        .voters
        .iter()
        .filter(|id| view.is_started(**id))
        .count();
    started > members / 2
}

impl RaftNode {
    fn membership_view(&self) -> View {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let nodes: BTreeMap<u64, MemberNode> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log_id)| (*id, log_id.as_ref().map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        // etcd's isConnectedFullySince: connected without interruption for the last health
        // interval (so a cluster younger than that refuses membership changes, as etcd does).
        let connected = nodes
            .keys()
            .filter_map(|id| {
                let since = self.peers.active_since(*id)?;
                Some((*id, since.elapsed() >= HEALTH_INTERVAL))
            })
            .collect();
        View {
            me: self.settings.member_id,
            nodes,
            voters,
            matched,
            connected,
            last_log_index: m.last_log_index.unwrap_or(0),
        }
    }

    /// Runs `change` on this member, which must lead; returns the log index of the change.
    pub(super) async fn change_members_here(&self, change: MembershipChange) -> EtcdResult<u64> {
        let _one_at_a_time = self.membership_changes.lock().await;
        if !self.status().is_leader {
            return Err(EtcdError::NotLeader);
        }
        let view = self.membership_view();
        let strict = self.settings.strict_reconfig_check;
        let Some(change) = change.change else {
            return Err(EtcdError::InvalidArgument("empty membership change".into()));
        };
        let (members, retain) = match change {
            Change::Add(add) => {
                // etcd's order: the strict checks (the connection check for learners too),
                // then the validation of the change.
                if strict {
                    if !add.is_learner && !ready_to_add_voter(&view) {
                        return Err(EtcdError::NotEnoughStartedMembers);
                    }
                    if !view.connected_to_all_voters() {
                        return Err(EtcdError::UnhealthyCluster);
                    }
                }
                if self.cluster.is_removed(add.id) {
                    return Err(EtcdError::MemberNotFound);
                }
                if view.nodes.contains_key(&add.id) {
                    return Err(EtcdError::MemberExists);
                }
                if view.peer_url_taken(&add.peer_urls, None) {
                    return Err(EtcdError::PeerUrlExists);
                }
                if add.is_learner && view.learners() + 1 > MAX_LEARNERS {
                    return Err(EtcdError::TooManyLearners);
                }
                let node = MemberNode {
                    name: String::new(),
                    peer_urls: add.peer_urls,
                    client_urls: Vec::new(),
                };
                let nodes = BTreeMap::from([(add.id, node)]);
                if add.is_learner {
                    (ChangeMembers::AddNodes(nodes), true)
                } else {
                    (ChangeMembers::AddVoters(nodes), true)
                }
            }
            Change::Remove(remove) => {
                if !view.nodes.contains_key(&remove.id) {
                    return Err(EtcdError::MemberNotFound);
                }
                let is_voter = view.voters.contains(&remove.id);
                if strict && is_voter {
                    if !ready_to_remove_voter(&view, remove.id) {
                        return Err(EtcdError::NotEnoughStartedMembers);
                    }
                    let ever_active =
                        remove.id == view.me || view.connected.contains_key(&remove.id);
                    let active = view.connected_voters();
                    let voters = view.voters.len();
                    if ever_active && active.saturating_sub(1) < 1 + (voters - 1) / 2 {
                        return Err(EtcdError::UnhealthyCluster);
                    }
                }
                let ids = BTreeSet::from([remove.id]);
                if is_voter {
                    (ChangeMembers::RemoveVoters(ids), false)
                } else {
                    (ChangeMembers::RemoveNodes(ids), false)
                }
            }
            Change::Update(update) => {
                let Some(node) = view.nodes.get(&update.id) else {
                    return Err(EtcdError::MemberNotFound);
                };
                if view.peer_url_taken(&update.peer_urls, Some(update.id)) {
                    return Err(EtcdError::PeerUrlExists);
                }
                let node = MemberNode {
                    peer_urls: update.peer_urls,
                    ..node.clone()
                };
                (
                    ChangeMembers::SetNodes(BTreeMap::from([(update.id, node)])),
                    true,
                )
            }
            Change::Promote(promote) => {
                if !view.nodes.contains_key(&promote.id) {
                    return Err(EtcdError::MemberNotFound);
                }
                if view.voters.contains(&promote.id) {
                    return Err(EtcdError::MemberNotLearner);
                }
                let matched = view
                    .matched
                    .get(&promote.id)
                    .copied()
                    .flatten()
                    .unwrap_or(0);
                if (matched as f64) < (view.last_log_index as f64) * LEARNER_READY_RATIO {
                    return Err(EtcdError::LearnerNotReady);
                }
                if strict && !ready_to_promote(&view) {
                    return Err(EtcdError::NotEnoughStartedMembers);
                }
                (
                    ChangeMembers::AddVoterIds(BTreeSet::from([promote.id])),
                    true,
                )
            }
            Change::Publish(publish) => {
                let Some(node) = view.nodes.get(&publish.id) else {
                    return Err(EtcdError::MemberNotFound);
                };
                if node.name == publish.name && node.client_urls == publish.client_urls {
                    return Ok(self.status().applied_index);
                }
                let node = MemberNode {
                    name: publish.name,
                    client_urls: publish.client_urls,
                    ..node.clone()
                };
                (
                    ChangeMembers::SetNodes(BTreeMap::from([(publish.id, node)])),
                    true,
                )
            }
        };
        let changed = tokio::time::timeout(
            self.settings.request_timeout,
            self.raft.change_membership(members, retain),
        )
        .await;
        match changed {
            Err(_) => Err(EtcdError::Timeout),
            Ok(Ok(response)) => Ok(response.log_id.index),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(EtcdError::NotLeader)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                tracing::warn!(error = %e, "membership change refused");
                Err(EtcdError::Internal(format!(
                    "membership change refused: {e}"
                )))
            }
            Ok(Err(e)) => Err(write_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(voters: &[(u64, &str)], learners: &[(u64, &str)]) -> View {
        let mut nodes = BTreeMap::new();
        for (id, name) in voters.iter().chain(learners) {
            nodes.insert(
                *id,
                MemberNode {
                    name: name.to_string(),
                    peer_urls: vec![format!("http://127.0.0.1:{id}")],
                    client_urls: Vec::new(),
                },
            );
        }
        View {
            me: voters[0].0,
            nodes,
            voters: voters.iter().map(|(id, _)| *id).collect(),
            matched: BTreeMap::new(),
            connected: BTreeMap::new(),
            last_log_index: 0,
        }
    }

    #[test]
    fn strict_checks_count_started_members_as_etcd_does() {
        // Three started voters: a fourth (unstarted) voter keeps a quorum of started ones.
        let three = view(&[(1, "a"), (2, "b"), (3, "c")], &[]);
        assert!(ready_to_add_voter(&three));
        // Two started of three voters already (one added, never started): adding another
        // would leave 2 started of 4, below a quorum of 3.
        let one_unstarted = view(&[(1, "a"), (2, "b"), (3, "")], &[]);
        assert!(!ready_to_add_voter(&one_unstarted));
        // The one-member restore case is allowed.
        let single = view(&[(1, "a")], &[]);
        assert!(ready_to_add_voter(&single));
        // Removing a started voter from {a, b, unstarted} leaves 1 started of 2: refused.
        assert!(!ready_to_remove_voter(&one_unstarted, 2));
        // Removing the unstarted one leaves 2 of 2.
        assert!(ready_to_remove_voter(&one_unstarted, 3));
    }

    #[test]
    fn peer_urls_in_use_are_found() {
        let v = view(&[(1, "a"), (2, "b")], &[]);
        assert!(v.peer_url_taken(&["http://127.0.0.1:2".into()], None));
        assert!(!v.peer_url_taken(&["http://127.0.0.1:2".into()], Some(2)));
        assert!(!v.peer_url_taken(&["http://127.0.0.1:9".into()], None));
    }
}
