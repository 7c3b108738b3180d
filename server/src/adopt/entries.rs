//! What etcd 3.4's log entries ask for, in keelson's terms.
//!
//! A normal entry's data is an `InternalRaftRequest` (raft_internal.proto) or, for what etcd
//! still does through its v2 store (publishing a member's name and client URLs, the cluster
//! version, the v2 TTL sweep), a bare v2 `Request`; etcd tries the first and falls back to the
//! second, and so does this. Every kind that changes client data maps onto keelson's own
//! request; anything keelson cannot apply is refused with the entry's index.

use prost::Message;
use serde::Deserialize;

use crate::proto::etcdserverpb::{
    AlarmRequest, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest, CompactionRequest, DeleteRangeRequest, LeaseCheckpointRequest,
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, TxnRequest,
};
use crate::proto::raftpb::raft_request::Request;
use crate::proto::raftpb::{RaftRequest, RequestAuth};

/// etcdserverpb.RequestHeader.
#[derive(Clone, PartialEq, Message)]
struct RequestHeader {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    username: String,
    #[prost(uint64, tag = "3")]
    auth_revision: u64,
}

/// etcdserverpb.Request (v2): only the fields that say what it is.
#[derive(Clone, PartialEq, Message)]
struct V2Request {
    #[prost(string, tag = "2")]
    method: String,
    #[prost(string, tag = "3")]
    path: String,
    #[prost(string, tag = "4")]
    val: String,
}

/// etcdserverpb.InternalAuthenticateRequest.
#[derive(Clone, PartialEq, Message)]
struct InternalAuthenticate {
    #[prost(string, tag = "1")]
    name: String,
}

/// etcdserverpb.InternalRaftRequest, with etcd's field numbers. The read-only auth requests
/// (user/role get and list) are left out: decoding skips them, and they change nothing.
#[derive(Clone, PartialEq, Message)]
struct InternalRaftRequest {
    #[prost(message, optional, tag = "100")]
    header: Option<RequestHeader>,
    #[prost(message, optional, tag = "2")]
    v2: Option<V2Request>,
    #[prost(message, optional, tag = "3")]
    range: Option<RangeRequest>,
    #[prost(message, optional, tag = "4")]
    put: Option<PutRequest>,
    #[prost(message, optional, tag = "5")]
    delete_range: Option<DeleteRangeRequest>,
    #[prost(message, optional, tag = "6")]
    txn: Option<TxnRequest>,
    #[prost(message, optional, tag = "7")]
    compaction: Option<CompactionRequest>,
    #[prost(message, optional, tag = "8")]
    lease_grant: Option<LeaseGrantRequest>,
    #[prost(message, optional, tag = "9")]
    lease_revoke: Option<LeaseRevokeRequest>,
    #[prost(message, optional, tag = "10")]
    alarm: Option<AlarmRequest>,
    #[prost(message, optional, tag = "11")]
    lease_checkpoint: Option<LeaseCheckpointRequest>,
    #[prost(message, optional, tag = "1000")]
    auth_enable: Option<AuthEnableRequest>,
    #[prost(message, optional, tag = "1011")]
    auth_disable: Option<AuthDisableRequest>,
    #[prost(message, optional, tag = "1012")]
    authenticate: Option<InternalAuthenticate>,
    #[prost(message, optional, tag = "1100")]
    auth_user_add: Option<AuthUserAddRequest>,
    #[prost(message, optional, tag = "1101")]
    auth_user_delete: Option<AuthUserDeleteRequest>,
    #[prost(message, optional, tag = "1103")]
    auth_user_change_password: Option<AuthUserChangePasswordRequest>,
    #[prost(message, optional, tag = "1104")]
    auth_user_grant_role: Option<AuthUserGrantRoleRequest>,
    #[prost(message, optional, tag = "1105")]
    auth_user_revoke_role: Option<AuthUserRevokeRoleRequest>,
    #[prost(message, optional, tag = "1200")]
    auth_role_add: Option<AuthRoleAddRequest>,
    #[prost(message, optional, tag = "1201")]
    auth_role_delete: Option<AuthRoleDeleteRequest>,
    #[prost(message, optional, tag = "1203")]
    auth_role_grant_permission: Option<AuthRoleGrantPermissionRequest>,
    #[prost(message, optional, tag = "1204")]
    auth_role_revoke_permission: Option<AuthRoleRevokePermissionRequest>,
    /// etcd 3.5's cluster-level requests (cluster version, member attributes, downgrade
    /// info): present means a 3.5 log, which this does not read.
    #[prost(bytes = "vec", optional, tag = "1300")]
    cluster_version_set: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "1301")]
    cluster_member_attr_set: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "1302")]
    downgrade_info_set: Option<Vec<u8>>,
}

/// A member's name and client URLs as etcd publishes them (membership.Attributes).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct MemberAttributes {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "clientURLs")]
    pub client_urls: Vec<String>,
}

/// What one normal entry does.
#[derive(Debug)]
pub enum Action {
    /// A request for keelson's applier.
    Apply(Box<RaftRequest>),
    /// Nothing to apply; why, for the log.
    Skip(&'static str),
    /// etcd's publish: member `id` now has these attributes.
    MemberAttributes {
        id: u64,
        attributes: MemberAttributes,
    },
}

/// The v2 store path of a member's attributes: `/0/members/<hex id>/attributes`.
const MEMBERS_PREFIX: &str = "/0/members/";
const ATTRIBUTES_SUFFIX: &str = "/attributes";
const CLUSTER_VERSION_PATH: &str = "/0/version";

/// Reads a normal entry's data. `Err` is a refusal: what the entry holds and why it cannot be
/// carried over.
pub fn decode(
    data: &[u8],
    hash_password: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Action, String> {
    if data.is_empty() {
        return Ok(Action::Skip("a new leader's empty entry"));
    }
    match InternalRaftRequest::decode(data) {
        Ok(request) => from_internal(request, hash_password),
        // As etcd: what is not an InternalRaftRequest is a v2 request.
        Err(_) => match V2Request::decode(data) {
            Ok(v2) => from_v2(v2),
            Err(e) => Err(format!("neither an etcd v3 nor a v2 request ({e})")),
        },
    }
}

fn from_v2(request: V2Request) -> Result<Action, String> {
    match (request.method.as_str(), request.path.as_str()) {
        // The leader's periodic sweep of v2 TTL keys: keelson has no v2 store.
        ("SYNC", _) => Ok(Action::Skip("a v2 store TTL sweep")),
        // keelson reports its own cluster version.
        ("PUT", CLUSTER_VERSION_PATH) => Ok(Action::Skip("the cluster version")),
        ("PUT", path) if path.starts_with(MEMBERS_PREFIX) && path.ends_with(ATTRIBUTES_SUFFIX) => {
            let hex = &path[MEMBERS_PREFIX.len()..path.len() - ATTRIBUTES_SUFFIX.len()];
            let id = u64::from_str_radix(hex, 16)
                .map_err(|_| format!("a member attributes update for {hex:?}, not a member ID"))?;
            let attributes = serde_json::from_str(&request.val)
                .map_err(|e| format!("unreadable member attributes {:?}: {e}", request.val))?;
            Ok(Action::MemberAttributes { id, attributes })
        }
        (method, path) => Err(format!(
            "a v2 API request ({method} {path}); keelson has no v2 store, so v2 data cannot be carried over"
        )),
    }
}

fn from_internal(
    r: InternalRaftRequest,
    hash_password: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Action, String> {
    if r.cluster_version_set.is_some()
        || r.cluster_member_attr_set.is_some()
        || r.downgrade_info_set.is_some()
    {
        return Err("an etcd 3.5 cluster request; only etcd 3.4 data dirs are adopted".into());
    }
    if let Some(v2) = r.v2 {
        return from_v2(v2);
    }
    let auth = r
        .header
        .as_ref()
        .filter(|h| !h.username.is_empty())
        .map(|h| RequestAuth {
            username: h.username.clone(),
            revision: h.auth_revision,
            internal: false,
        });
    let request = if let Some(x) = r.put {
        Request::Put(x)
    } else if let Some(x) = r.delete_range {
        Request::DeleteRange(x)
    } else if let Some(x) = r.txn {
        Request::Txn(x)
    } else if let Some(x) = r.compaction {
        Request::Compaction(x)
    } else if let Some(x) = r.lease_grant {
        Request::LeaseGrant(x)
    } else if let Some(x) = r.lease_revoke {
        Request::LeaseRevoke(x)
    } else if let Some(x) = r.alarm {
        Request::Alarm(x)
    } else if r.lease_checkpoint.is_some() {
        // Only a hint of a lease's remaining TTL for a new leader; the lease itself, its keys
        // and its TTL are in the grant. Dropping it can at most give a lease its full TTL
        // again, as a leader change without checkpoints does in etcd.
        return Ok(Action::Skip("a lease checkpoint (a remaining-TTL hint)"));
    } else if r.range.is_some() {
        return Ok(Action::Skip("a read"));
    } else if r.authenticate.is_some() {
        // It issues a token; tokens are not carried over (clients authenticate again).
        return Ok(Action::Skip(
            "an authentication (tokens are not carried over)",
        ));
    } else if let Some(x) = r.auth_enable {
        Request::AuthEnable(x)
    } else if let Some(x) = r.auth_disable {
        Request::AuthDisable(x)
    } else if let Some(mut x) = r.auth_user_add {
        // etcd 3.4 logs the password and hashes it when applying; keelson's log holds the hash.
        if x.hashed_password.is_empty() && !x.options.as_ref().is_some_and(|o| o.no_password) {
            x.hashed_password = hash_password(&x.password)?;
        }
        x.password.clear();
        Request::AuthUserAdd(x)
    } else if let Some(x) = r.auth_user_delete {
        Request::AuthUserDelete(x)
    } else if let Some(mut x) = r.auth_user_change_password {
        if x.hashed_password.is_empty() {
            x.hashed_password = hash_password(&x.password)?;
        }
        x.password.clear();
        Request::AuthUserChangePassword(x)
    } else if let Some(x) = r.auth_user_grant_role {
        Request::AuthUserGrantRole(x)
    } else if let Some(x) = r.auth_user_revoke_role {
        Request::AuthUserRevokeRole(x)
    } else if let Some(x) = r.auth_role_add {
        Request::AuthRoleAdd(x)
    } else if let Some(x) = r.auth_role_delete {
        Request::AuthRoleDelete(x)
    } else if let Some(x) = r.auth_role_grant_permission {
        Request::AuthRoleGrantPermission(x)
    } else if let Some(x) = r.auth_role_revoke_permission {
        Request::AuthRoleRevokePermission(x)
    } else if r.header.is_some() {
        // A read-only auth request (user/role get or list): changes nothing.
        return Ok(Action::Skip("a read-only auth request"));
    } else {
        return Err("an entry with no request keelson knows".into());
    };
    Ok(Action::Apply(Box::new(RaftRequest {
        id: r.header.map_or(0, |h| h.id),
        auth,
        request: Some(request),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_hash(_: &str) -> Result<String, String> {
        Err("no password here".into())
    }

    #[test]
    fn a_put_keeps_its_caller_and_a_publish_names_the_member() {
        let put = InternalRaftRequest {
            header: Some(RequestHeader {
                id: 9,
                username: "alice".into(),
                auth_revision: 4,
            }),
            put: Some(PutRequest {
                key: b"k".to_vec().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let Action::Apply(request) = decode(&put.encode_to_vec(), &no_hash).expect("a put") else {
            panic!("a put is applied");
        };
        assert!(matches!(request.request, Some(Request::Put(_))));
        assert_eq!(
            request.auth.map(|a| (a.username, a.revision)),
            Some(("alice".into(), 4))
        );

        // etcd 3.4's publish is a bare v2 request (not wrapped in an InternalRaftRequest).
        let publish = V2Request {
            method: "PUT".into(),
            path: "/0/members/8e9e05c52164694d/attributes".into(),
            val: r#"{"name":"default","clientURLs":["http://127.0.0.1:2379"]}"#.into(),
        };
        match decode(&publish.encode_to_vec(), &no_hash).expect("a publish") {
            Action::MemberAttributes { id, attributes } => {
                assert_eq!(id, 0x8e9e05c52164694d);
                assert_eq!(attributes.name, "default");
            }
            other => panic!("{other:?}"),
        }
        let v2_write = V2Request {
            method: "PUT".into(),
            path: "/1/foo".into(),
            val: "bar".into(),
        };
        let refusal = decode(&v2_write.encode_to_vec(), &no_hash).expect_err("v2 data");
        assert!(refusal.contains("v2"), "{refusal}");
    }
}
