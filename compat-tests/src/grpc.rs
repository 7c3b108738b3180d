//! Exact gRPC errors: etcd's messages and an assertion on code and message.

use std::fmt::Debug;

pub use tonic::Code;

/// etcd's error messages, byte for byte (`api/v3rpc/rpctypes/error.go`).
pub mod messages {
    pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    pub const FUTURE_REVISION: &str = "etcdserver: mvcc: required revision is a future revision";
    pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
    pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
    pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
    pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
    pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
    pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
    pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
    pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
    /// grpc-go's own message when a message exceeds the server's receive limit; it goes on
    /// with ` (<size> vs. <limit>)`.
    pub const GRPC_MESSAGE_TOO_LARGE_PREFIX: &str = "grpc: received message larger than max (";
}

/// The gRPC status inside an etcd-client error, if the server answered with one.
pub fn grpc_status(error: &etcd_client::Error) -> Option<&tonic::Status> {
    match error {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        _ => None,
    }
}

/// `(code, message)` of a result that must have failed with a gRPC status.
#[track_caller]
pub fn expect_grpc_error<T: Debug>(result: Result<T, etcd_client::Error>) -> (Code, String) {
    match result {
        Ok(value) => panic!("expected a gRPC error, got a success: {value:?}"),
        Err(error) => match grpc_status(&error) {
            Some(status) => (status.code(), status.message().to_string()),
            None => panic!("expected a gRPC status, got another client error: {error:?}"),
        },
    }
}

/// Asserts that `result` failed with exactly this gRPC code and message.
#[track_caller]
pub fn assert_grpc_error<T: Debug>(
    result: Result<T, etcd_client::Error>,
    code: Code,
    message: &str,
) {
    let (actual_code, actual_message) = expect_grpc_error(result);
    assert_eq!(
        (actual_code, actual_message.as_str()),
        (code, message),
        "gRPC error (code, message)"
    );
}
