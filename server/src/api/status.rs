//! The one place where keelson's errors become gRPC statuses: etcd's codes, etcd's messages.

use tonic::{Code, Status};

use crate::error::EtcdError;

pub fn to_status(error: EtcdError) -> Status {
    let code = match &error {
        EtcdError::Compacted | EtcdError::FutureRevision | EtcdError::LeaseTtlTooLarge => {
            Code::OutOfRange
        }
        EtcdError::NoLeader
        | EtcdError::LeaderChanged
        | EtcdError::Timeout
        | EtcdError::TimeoutDueToLeaderFail
        | EtcdError::Stopped
        | EtcdError::UnhealthyCluster
        | EtcdError::NotSupportedForLearner => Code::Unavailable,
        EtcdError::NotLeader
        | EtcdError::LeaseExists
        | EtcdError::MemberExists
        | EtcdError::PeerUrlExists
        | EtcdError::MemberNotLearner
        | EtcdError::LearnerNotReady
        | EtcdError::TooManyLearners
        | EtcdError::NotEnoughStartedMembers
        | EtcdError::BadLeaderTransferee => Code::FailedPrecondition,
        EtcdError::LeaseNotFound | EtcdError::MemberNotFound => Code::NotFound,
        EtcdError::TooManyTxnOps
        | EtcdError::DuplicateKey
        | EtcdError::EmptyKey
        | EtcdError::KeyNotFound
        | EtcdError::ValueProvided
        | EtcdError::LeaseProvided
        | EtcdError::RequestTooLarge
        | EtcdError::BadMemberUrls
        | EtcdError::InvalidArgument(_) => Code::InvalidArgument,
        EtcdError::TooManyRequests | EtcdError::NoSpace => Code::ResourceExhausted,
        EtcdError::Corrupt => Code::DataLoss,
        EtcdError::Canceled => Code::Cancelled,
        EtcdError::Internal(_) | EtcdError::LeaderTransferTimeout => Code::Unknown,
    };
    Status::new(code, error.to_string())
}

impl From<EtcdError> for Status {
    fn from(error: EtcdError) -> Self {
        to_status(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_are_etcds() {
        let s = to_status(EtcdError::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = to_status(EtcdError::LeaseNotFound);
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
        let s = to_status(EtcdError::RequestTooLarge);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: request is too large");
    }
}
