//! keelson: an etcd v3 server on openraft and RocksDB.

pub mod api;
pub mod boot;
pub mod config;
pub mod error;
pub mod logging;
pub mod member;
pub mod mvcc;
pub mod proto;
pub mod raft;
pub mod storage;
pub mod version;
