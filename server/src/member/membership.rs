//! etcd's rules for membership changes: the checks of etcd's `ValidateConfigurationChange` and
//! its strict reconfiguration check (`--strict-reconfig-check`), in etcd's order. The raft
//! layer asks them on the leader before it changes the membership.

use crate::error::{EtcdError, EtcdResult};
use crate::proto::peerpb::membership_change::Change;
use crate::raft::{MembershipRules, MembershipView};

/// etcd 3.4 allows one learner at a time.
const MAX_LEARNERS: usize = 1;
/// A learner may be promoted once it has 90% of the leader's log (etcd's readyPercent).
const LEARNER_READY_RATIO: f64 = 0.9;

pub struct EtcdMembershipRules {
    /// etcd's --strict-reconfig-check.
    pub strict: bool,
}

fn is_started(view: &MembershipView, id: u64) -> bool {
    view.nodes.get(&id).is_some_and(|n| !n.name.is_empty())
}

fn learners(view: &MembershipView) -> usize {
    view.nodes
        .keys()
        .filter(|id| !view.voters.contains(id))
        .count()
}

fn peer_url_taken(view: &MembershipView, urls: &[String], except: Option<u64>) -> bool {
    view.nodes
        .iter()
        .filter(|(id, _)| Some(**id) != except)
        .any(|(_, n)| n.peer_urls.iter().any(|u| urls.contains(u)))
}

/// etcd's isConnectedFullySince: every other voter connected for the whole health interval.
fn connected_to_all_voters(view: &MembershipView) -> bool {
    view.voters
        .iter()
        .filter(|id| **id != view.me)
        .all(|id| view.connected.get(id).copied().unwrap_or(false))
}

/// etcd's numConnectedSince: this member and the voters connected for the health interval.
fn connected_voters(view: &MembershipView) -> usize {
    1 + view
        .voters
        .iter()
        .filter(|id| **id != view.me)
        .filter(|id| view.connected.get(id).copied().unwrap_or(false))
        .count()
}

/// etcd's IsReadyToAddVotingMember: after the change, the started voters still make a quorum.
fn ready_to_add_voter(view: &MembershipView) -> bool {
    let members = view.voters.len() + 1;
    let started = view
        .voters
        .iter()
        .filter(|id| is_started(view, **id))
        .count();
    if started == 1 && members == 2 {
        return true;
    }
    started > members / 2
}

fn ready_to_remove_voter(view: &MembershipView, id: u64) -> bool {
    let remaining: Vec<u64> = view.voters.iter().copied().filter(|v| *v != id).collect();
    let started = remaining.iter().filter(|v| is_started(view, **v)).count();
    started > remaining.len() / 2
}

fn ready_to_promote(view: &MembershipView) -> bool {
    let members = view.voters.len() + 1;
    let started = 1 + view
        .voters
        .iter()
        .filter(|id| is_started(view, **id))
        .count();
    started > members / 2
}

impl MembershipRules for EtcdMembershipRules {
    fn check(&self, view: &MembershipView, change: &Change) -> EtcdResult<()> {
        let strict = self.strict;
        match change {
            Change::Add(add) => {
                // etcd's order: the strict checks (the connection check for learners too),
                // then the validation of the change.
                if strict {
                    if !add.is_learner && !ready_to_add_voter(view) {
                        return Err(EtcdError::NotEnoughStartedMembers);
                    }
                    if !connected_to_all_voters(view) {
                        return Err(EtcdError::UnhealthyCluster);
                    }
                }
                if view.removed.contains(&add.id) {
                    return Err(EtcdError::MemberNotFound);
                }
                if view.nodes.contains_key(&add.id) {
                    return Err(EtcdError::MemberExists);
                }
                if peer_url_taken(view, &add.peer_urls, None) {
                    return Err(EtcdError::PeerUrlExists);
                }
                if add.is_learner && learners(view) + 1 > MAX_LEARNERS {
                    return Err(EtcdError::TooManyLearners);
                }
            }
            Change::Remove(remove) => {
                if !view.nodes.contains_key(&remove.id) {
                    return Err(EtcdError::MemberNotFound);
                }
                if strict && view.voters.contains(&remove.id) {
                    if !ready_to_remove_voter(view, remove.id) {
                        return Err(EtcdError::NotEnoughStartedMembers);
                    }
                    // A member never reached may always go.
                    let ever_active =
                        remove.id == view.me || view.connected.contains_key(&remove.id);
                    let voters = view.voters.len();
                    if ever_active
                        && connected_voters(view).saturating_sub(1) < 1 + (voters - 1) / 2
                    {
                        return Err(EtcdError::UnhealthyCluster);
                    }
                }
            }
            Change::Update(update) => {
                if !view.nodes.contains_key(&update.id) {
                    return Err(EtcdError::MemberNotFound);
                }
                if peer_url_taken(view, &update.peer_urls, Some(update.id)) {
                    return Err(EtcdError::PeerUrlExists);
                }
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
                if strict && !ready_to_promote(view) {
                    return Err(EtcdError::NotEnoughStartedMembers);
                }
            }
            Change::Publish(publish) => {
                if !view.nodes.contains_key(&publish.id) {
                    return Err(EtcdError::MemberNotFound);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::MemberNode;
    use std::collections::BTreeMap;

    fn view(voters: &[(u64, &str)], learners: &[(u64, &str)]) -> MembershipView {
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
        MembershipView {
            me: voters[0].0,
            nodes,
            voters: voters.iter().map(|(id, _)| *id).collect(),
            matched: BTreeMap::new(),
            connected: BTreeMap::new(),
            last_log_index: 0,
            removed: Default::default(),
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
        assert!(peer_url_taken(&v, &["http://127.0.0.1:2".into()], None));
        assert!(!peer_url_taken(&v, &["http://127.0.0.1:2".into()], Some(2)));
        assert!(!peer_url_taken(&v, &["http://127.0.0.1:9".into()], None));
    }
}
