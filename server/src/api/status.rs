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
        | EtcdError::BadLeaderTransferee
        | EtcdError::RootUserNotExist
        | EtcdError::RootRoleNotExist
        | EtcdError::UserAlreadyExists
        | EtcdError::UserNotFound
        | EtcdError::RoleAlreadyExists
        | EtcdError::RoleNotFound
        | EtcdError::RoleNotGranted
        | EtcdError::PermissionNotGranted
        | EtcdError::AuthNotEnabled
        | EtcdError::NoInflightDowngrade => Code::FailedPrecondition,
        EtcdError::LeaseNotFound | EtcdError::MemberNotFound => Code::NotFound,
        EtcdError::TooManyTxnOps
        | EtcdError::DuplicateKey
        | EtcdError::EmptyKey
        | EtcdError::KeyNotFound
        | EtcdError::ValueProvided
        | EtcdError::LeaseProvided
        | EtcdError::RequestTooLarge
        | EtcdError::BadMemberUrls
        | EtcdError::UserEmpty
        | EtcdError::RoleEmpty
        | EtcdError::AuthFailed
        | EtcdError::InvalidAuthMgmt
        | EtcdError::AuthOldRevision
        | EtcdError::WrongDowngradeVersionFormat
        | EtcdError::InvalidDowngradeTargetVersion
        | EtcdError::InvalidArgument(_) => Code::InvalidArgument,
        EtcdError::PermissionDenied => Code::PermissionDenied,
        EtcdError::InvalidAuthToken => Code::Unauthenticated,
        EtcdError::TooManyRequests | EtcdError::NoSpace => Code::ResourceExhausted,
        EtcdError::Corrupt => Code::DataLoss,
        EtcdError::Canceled => Code::Cancelled,
        EtcdError::Internal(_)
        | EtcdError::LeaderTransferTimeout
        | EtcdError::NoPasswordUser
        | EtcdError::UnknownMethod
        | EtcdError::Untranslated(_) => Code::Unknown,
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

    /// etcd 3.4's rpctypes for auth, code and message.
    #[test]
    fn auth_codes_and_messages_are_etcds() {
        let cases = [
            (
                EtcdError::RootUserNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                EtcdError::RootRoleNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                EtcdError::UserAlreadyExists,
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                EtcdError::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                EtcdError::UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                EtcdError::RoleAlreadyExists,
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            (
                EtcdError::RoleNotFound,
                Code::FailedPrecondition,
                "etcdserver: role name not found",
            ),
            (
                EtcdError::RoleEmpty,
                Code::InvalidArgument,
                "etcdserver: role name is empty",
            ),
            (
                EtcdError::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                EtcdError::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                EtcdError::RoleNotGranted,
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            (
                EtcdError::PermissionNotGranted,
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            (
                EtcdError::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                EtcdError::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                EtcdError::InvalidAuthMgmt,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
            (
                EtcdError::AuthOldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            (
                EtcdError::NoPasswordUser,
                Code::Unknown,
                "auth: authentication failed, password was given for no password user",
            ),
            (
                EtcdError::PermissionDenied.untranslated(),
                Code::Unknown,
                "auth: permission denied",
            ),
            (
                EtcdError::UserEmpty.untranslated(),
                Code::Unknown,
                "auth: user name is empty",
            ),
        ];
        for (error, code, message) in cases {
            let s = to_status(error.clone());
            assert_eq!((s.code(), s.message()), (code, message), "{error:?}");
            // Errors cross the raft log as text and must come back as themselves.
            if !matches!(error, EtcdError::Untranslated(_)) {
                assert_eq!(EtcdError::from_message(message), error);
            }
        }
    }
}
