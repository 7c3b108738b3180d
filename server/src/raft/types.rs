//! openraft's type configuration for keelson.

use std::fmt;

use bytes::Bytes;
use openraft::vote::leader_id_std;
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::proto::raftpb::{RaftRequest, RaftResponse};

/// A member as raft knows it: etcd member ID is the raft node ID, these are its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// The payload of a normal log entry: an encoded `RaftRequest`, decoded only when applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(pub Bytes);

impl Proposal {
    pub fn encode(request: &RaftRequest) -> Self {
        Proposal(Bytes::from(request.encode_to_vec()))
    }

    pub fn decode(&self) -> Result<RaftRequest, prost::DecodeError> {
        RaftRequest::decode(self.0.clone())
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal({} bytes)", self.0.len())
    }
}

/// What applying an entry produced; travels as its protobuf encoding when serialized.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied(pub RaftResponse);

impl Serialize for Applied {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Applied {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Bytes::deserialize(deserializer)?;
        RaftResponse::decode(raw)
            .map(Applied)
            .map_err(serde::de::Error::custom)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = MemberNode,
        Term = u64,
        LeaderId = leader_id_std::LeaderId<u64, u64>,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<leader_id_std::CommittedLeaderId<u64>>;
pub type Vote = openraft::impls::Vote<leader_id_std::LeaderId<u64, u64>>;
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub type Membership = openraft::Membership<NodeId, MemberNode>;
pub type StoredMembership =
    openraft::StoredMembership<leader_id_std::CommittedLeaderId<u64>, NodeId, MemberNode>;
pub type SnapshotMeta =
    openraft::SnapshotMeta<leader_id_std::CommittedLeaderId<u64>, NodeId, MemberNode>;
