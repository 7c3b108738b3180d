//! Every error a client can see, named after etcd's, with etcd's exact message.
//!
//! The mapping to gRPC status codes lives in one place: `api::status`.

use crate::storage::StorageError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: too many operations in txn request")]
    TooManyTxnOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: unhealthy cluster")]
    UnhealthyCluster,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: request canceled")]
    Canceled,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: given member URLs are invalid")]
    BadMemberUrls,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExists,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExists,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd has no gRPC error for this one: its own text reaches the client as `Unknown`.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    #[error("etcdserver: wrong downgrade target version format")]
    WrongDowngradeVersionFormat,
    #[error("etcdserver: invalid downgrade target version")]
    InvalidDowngradeTargetVersion,
    #[error("etcdserver: no inflight downgrade job")]
    NoInflightDowngrade,
    /// etcd has no gRPC error for an unknown Downgrade action: its text with code `Unknown`.
    #[error("etcdserver: unknown method")]
    UnknownMethod,
    /// An error etcd returns without turning it into its gRPC form (its Maintenance admin
    /// checks answer `Unknown` with the auth package's own text, e.g. `auth: permission denied`).
    #[error("{0}")]
    Untranslated(String),
    /// A failure inside this member (disk, bug) that etcd would report as a plain error.
    #[error("{0}")]
    Internal(String),
    /// A request argument etcd rejects with its own message (InvalidArgument).
    #[error("{0}")]
    InvalidArgument(String),
}

impl From<StorageError> for EtcdError {
    fn from(e: StorageError) -> Self {
        EtcdError::Internal(e.to_string())
    }
}

impl From<rocksdb::Error> for EtcdError {
    fn from(e: rocksdb::Error) -> Self {
        EtcdError::Internal(format!("rocksdb: {e}"))
    }
}

pub type EtcdResult<T> = Result<T, EtcdError>;

impl EtcdError {
    /// Every error with a fixed message, for turning a message back into its error.
    const WITH_FIXED_MESSAGE: [EtcdError; 55] = [
        EtcdError::Compacted,
        EtcdError::FutureRevision,
        EtcdError::NoLeader,
        EtcdError::NotLeader,
        EtcdError::LeaderChanged,
        EtcdError::LeaseNotFound,
        EtcdError::LeaseExists,
        EtcdError::LeaseTtlTooLarge,
        EtcdError::TooManyTxnOps,
        EtcdError::DuplicateKey,
        EtcdError::EmptyKey,
        EtcdError::KeyNotFound,
        EtcdError::ValueProvided,
        EtcdError::LeaseProvided,
        EtcdError::RequestTooLarge,
        EtcdError::TooManyRequests,
        EtcdError::NoSpace,
        EtcdError::Timeout,
        EtcdError::TimeoutDueToLeaderFail,
        EtcdError::Stopped,
        EtcdError::UnhealthyCluster,
        EtcdError::Corrupt,
        EtcdError::MemberNotFound,
        EtcdError::Canceled,
        EtcdError::NotSupportedForLearner,
        EtcdError::MemberExists,
        EtcdError::PeerUrlExists,
        EtcdError::MemberNotLearner,
        EtcdError::LearnerNotReady,
        EtcdError::TooManyLearners,
        EtcdError::NotEnoughStartedMembers,
        EtcdError::BadMemberUrls,
        EtcdError::BadLeaderTransferee,
        EtcdError::LeaderTransferTimeout,
        EtcdError::RootUserNotExist,
        EtcdError::RootRoleNotExist,
        EtcdError::UserAlreadyExists,
        EtcdError::UserEmpty,
        EtcdError::UserNotFound,
        EtcdError::RoleAlreadyExists,
        EtcdError::RoleNotFound,
        EtcdError::RoleEmpty,
        EtcdError::AuthFailed,
        EtcdError::PermissionDenied,
        EtcdError::RoleNotGranted,
        EtcdError::PermissionNotGranted,
        EtcdError::AuthNotEnabled,
        EtcdError::InvalidAuthToken,
        EtcdError::InvalidAuthMgmt,
        EtcdError::AuthOldRevision,
        EtcdError::NoPasswordUser,
        EtcdError::WrongDowngradeVersionFormat,
        EtcdError::InvalidDowngradeTargetVersion,
        EtcdError::NoInflightDowngrade,
        EtcdError::UnknownMethod,
    ];

    /// The error whose message is `message` (errors travel through the raft log as text).
    pub fn from_message(message: &str) -> Self {
        Self::fixed_message(message)
            .unwrap_or_else(|| EtcdError::InvalidArgument(message.to_string()))
    }

    /// The text etcd's auth package gives this error where etcd does not translate it into its
    /// gRPC form (the Maintenance admin checks).
    pub fn untranslated(self) -> EtcdError {
        let text = match self {
            EtcdError::PermissionDenied => "auth: permission denied",
            EtcdError::UserEmpty => "auth: user name is empty",
            EtcdError::UserNotFound => "auth: user not found",
            EtcdError::InvalidAuthToken => "auth: invalid auth token",
            EtcdError::AuthOldRevision => "auth: revision in header is old",
            other => return other,
        };
        EtcdError::Untranslated(text.to_string())
    }

    /// The error with this fixed message, if there is one.
    pub fn fixed_message(message: &str) -> Option<Self> {
        Self::WITH_FIXED_MESSAGE
            .iter()
            .find(|e| e.to_string() == message)
            .cloned()
    }
}
