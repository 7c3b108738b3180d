//! Membership changes on the leader: the member's rules (etcd's, `member/membership.rs`) decide
//! whether a change is allowed, then openraft's joint consensus makes it. One change at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;

use super::types::MemberNode;
use super::{write_error, MembershipView, RaftNode};
use crate::error::{EtcdError, EtcdResult};
use crate::proto::peerpb::membership_change::Change;
use crate::proto::peerpb::MembershipChange;

/// A peer counts as connected once it answered without interruption for this long (etcd's
/// HealthInterval).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

impl RaftNode {
    fn membership_view(&self) -> MembershipView {
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
        MembershipView {
            me: self.settings.member_id,
            nodes,
            voters,
            matched,
            connected,
            last_log_index: m.last_log_index.unwrap_or(0),
            removed: self.cluster.removed(),
        }
    }

    /// Runs `change` on this member, which must lead; returns the log index of the change.
    pub(super) async fn change_members_here(&self, change: MembershipChange) -> EtcdResult<u64> {
        let _one_at_a_time = self.membership_changes.lock().await;
        if !self.status().is_leader {
            return Err(EtcdError::NotLeader);
        }
        let Some(change) = change.change else {
            return Err(EtcdError::InvalidArgument("empty membership change".into()));
        };
        let view = self.membership_view();
        self.settings.membership_rules.check(&view, &change)?;
        let (members, retain) = match change {
            Change::Add(add) => {
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
                let ids = BTreeSet::from([remove.id]);
                if view.voters.contains(&remove.id) {
                    (ChangeMembers::RemoveVoters(ids), false)
                } else {
                    (ChangeMembers::RemoveNodes(ids), false)
                }
            }
            Change::Update(update) => {
                let known = view
                    .nodes
                    .get(&update.id)
                    .ok_or(EtcdError::MemberNotFound)?;
                let node = MemberNode {
                    peer_urls: update.peer_urls,
                    ..known.clone()
                };
                (
                    ChangeMembers::SetNodes(BTreeMap::from([(update.id, node)])),
                    true,
                )
            }
            Change::Promote(promote) => (
                ChangeMembers::AddVoterIds(BTreeSet::from([promote.id])),
                true,
            ),
            Change::Publish(publish) => {
                let node = view
                    .nodes
                    .get(&publish.id)
                    .ok_or(EtcdError::MemberNotFound)?;
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
