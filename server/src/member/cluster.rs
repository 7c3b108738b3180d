//! The Cluster API at the member level: membership changes through the leader (any member
//! takes them, as etcd's do) and the member list.

use std::time::{SystemTime, UNIX_EPOCH};

use super::identity;
use super::Member;
use crate::error::{EtcdError, EtcdResult};
use crate::proto::etcdserverpb::{
    Member as PbMember, MemberAddResponse, MemberListResponse, MemberPromoteResponse,
    MemberRemoveResponse, MemberUpdateResponse,
};
use crate::proto::peerpb::membership_change::Change;
use crate::proto::peerpb::{
    AddMember, MembershipChange, PromoteMember, PublishMember, RemoveMember, UpdateMember,
};

/// etcd's check of member URLs: each one a URL with a scheme and a host:port.
fn check_member_urls(urls: &[String]) -> EtcdResult<()> {
    if urls.is_empty() {
        return Err(EtcdError::BadMemberUrls);
    }
    for url in urls {
        let parsed: Result<http::Uri, _> = url.parse();
        let valid = parsed.is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.port_u16().is_some()
                && u.host().is_some_and(|h| !h.is_empty())
                && matches!(u.path(), "" | "/")
        });
        if !valid {
            return Err(EtcdError::BadMemberUrls);
        }
    }
    Ok(())
}

fn change(change: Change) -> MembershipChange {
    MembershipChange {
        change: Some(change),
    }
}

impl Member {
    fn members_pb(&self) -> Vec<PbMember> {
        self.raft
            .members()
            .into_iter()
            .map(|m| PbMember {
                id: m.id,
                name: m.node.name,
                peer_ur_ls: m.node.peer_urls,
                client_ur_ls: m.node.client_urls,
                is_learner: m.is_learner,
            })
            .collect()
    }

    pub fn member_list(&self) -> MemberListResponse {
        MemberListResponse {
            header: Some(self.header(self.store.current_revision())),
            members: self.members_pb(),
        }
    }

    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> EtcdResult<MemberAddResponse> {
        check_member_urls(&peer_urls)?;
        // etcd names a new member after its URLs and the time, so IDs do not repeat.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = identity::member_id(&peer_urls, &now.to_string());
        self.raft
            .change_members(change(Change::Add(AddMember {
                id,
                peer_urls: peer_urls.clone(),
                is_learner,
            })))
            .await?;
        Ok(MemberAddResponse {
            header: Some(self.header(self.store.current_revision())),
            member: Some(PbMember {
                id,
                name: String::new(),
                peer_ur_ls: peer_urls,
                client_ur_ls: Vec::new(),
                is_learner,
            }),
            members: self.members_pb(),
        })
    }

    pub async fn member_remove(&self, id: u64) -> EtcdResult<MemberRemoveResponse> {
        self.raft
            .change_members(change(Change::Remove(RemoveMember { id })))
            .await?;
        Ok(MemberRemoveResponse {
            header: Some(self.header(self.store.current_revision())),
            members: self.members_pb(),
        })
    }

    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> EtcdResult<MemberUpdateResponse> {
        check_member_urls(&peer_urls)?;
        self.raft
            .change_members(change(Change::Update(UpdateMember { id, peer_urls })))
            .await?;
        Ok(MemberUpdateResponse {
            header: Some(self.header(self.store.current_revision())),
            members: self.members_pb(),
        })
    }

    pub async fn member_promote(&self, id: u64) -> EtcdResult<MemberPromoteResponse> {
        self.raft
            .change_members(change(Change::Promote(PromoteMember { id })))
            .await?;
        Ok(MemberPromoteResponse {
            header: Some(self.header(self.store.current_revision())),
            members: self.members_pb(),
        })
    }

    /// Records this member's name and client URLs in the cluster (etcd's publish).
    pub async fn publish(&self, name: &str, client_urls: &[String]) -> EtcdResult<()> {
        self.raft
            .change_members(change(Change::Publish(PublishMember {
                id: self.id(),
                name: name.to_string(),
                client_urls: client_urls.to_vec(),
            })))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_urls_are_checked_as_etcd_does() {
        assert!(check_member_urls(&["http://10.0.0.1:2380".into()]).is_ok());
        assert!(check_member_urls(&["https://node-1.etcd:2380".into()]).is_ok());
        for bad in [
            "",
            "10.0.0.1:2380",
            "http://10.0.0.1",
            "ftp://x:1",
            "http://x:1/path",
        ] {
            assert_eq!(
                check_member_urls(&[bad.to_string()]),
                Err(EtcdError::BadMemberUrls),
                "{bad:?} accepted"
            );
        }
        assert_eq!(check_member_urls(&[]), Err(EtcdError::BadMemberUrls));
    }
}
