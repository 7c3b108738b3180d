//! keelson: an etcd v3 server on openraft and RocksDB.

pub mod adopt;
pub mod api;
pub mod auth;
pub mod auth_bootstrap;
pub mod boot;
pub mod config;
pub mod error;
pub mod http;
pub mod lease;
pub mod leave;
pub mod logging;
pub mod member;
pub mod metrics;
pub mod mvcc;
pub mod proto;
pub mod raft;
pub mod snapshot;
pub mod storage;
pub mod transport;
pub mod version;
