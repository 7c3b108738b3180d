//! openraft's messages on the wire: postcard, a positional serde format that openraft keeps its
//! message types compatible with, and that copies byte fields (log payloads) as they are.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use crate::proto::peerpb::RaftMessage;

pub fn encode<T: Serialize>(message: &T) -> Result<RaftMessage, Status> {
    postcard::to_stdvec(message)
        .map(|payload| RaftMessage {
            payload: Bytes::from(payload),
        })
        .map_err(|e| Status::internal(format!("cannot encode a raft message: {e}")))
}

pub fn decode<T: DeserializeOwned>(message: &RaftMessage) -> Result<T, Status> {
    decode_bytes(&message.payload)
}

pub fn decode_bytes<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(payload)
        .map_err(|e| Status::invalid_argument(format!("cannot decode a raft message: {e}")))
}

pub fn encode_bytes<T: Serialize>(message: &T) -> Result<Bytes, Status> {
    encode(message).map(|m| m.payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{Entry, LogId, TypeConfig, Vote};
    use openraft::raft::AppendEntriesRequest;
    use openraft::vote::leader_id_std::CommittedLeaderId;
    use openraft::EntryPayload;

    #[test]
    fn append_entries_round_trip_keeps_payload_bytes() {
        let log_id = LogId::new(CommittedLeaderId::new(3), 42);
        let entry = Entry {
            log_id,
            payload: EntryPayload::Normal(crate::raft::types::Proposal(Bytes::from_static(
                b"\x00\x01payload",
            ))),
        };
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 7),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(3), 41)),
            entries: vec![entry.clone()],
            leader_commit: Some(log_id),
        };
        let wire = encode(&request).expect("encode");
        let back: AppendEntriesRequest<TypeConfig> = decode(&wire).expect("decode");
        assert_eq!(back.entries, vec![entry]);
        assert_eq!(back.vote, request.vote);
        assert_eq!(back.leader_commit, request.leader_commit);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let garbage = RaftMessage {
            payload: Bytes::from_static(&[0xff; 7]),
        };
        assert!(decode::<AppendEntriesRequest<TypeConfig>>(&garbage).is_err());
    }
}
