//! Black-box compatibility harness for keelson.
//!
//! Every test starts a real server process (`keelson`, or the real `etcd` for reference) on
//! free loopback ports with a fresh data directory, and drives it through the etcd-client
//! crate or the real `etcdctl`. Which server a test run uses is chosen by the environment:
//!
//! | variable         | meaning                                                          |
//! |------------------|------------------------------------------------------------------|
//! | `COMPAT_SERVER`  | `keelson` (default) or `etcd`                                    |
//! | `KEELSON_BIN`    | path of the keelson binary (default: `<target>/<profile>/keelson`) |
//! | `ETCD_BIN`       | path of etcd (default `/usr/bin/etcd`)                           |
//! | `ETCDCTL_BIN`    | path of etcdctl (default `/usr/bin/etcdctl`)                     |
//!
//! Running (with a target directory of your own if someone else is building):
//!
//! ```text
//! cargo test -p compat-tests                                # against keelson
//! COMPAT_SERVER=etcd cargo test -p compat-tests             # against the real etcd
//! KEELSON_BIN=/path/to/keelson cargo test -p compat-tests   # a keelson built elsewhere
//! ```
//!
//! Test binaries: `kv_client` (etcd-client, every KV option and error), `kv_etcdctl` (the
//! real etcdctl), `kv_differential` (the same sequences against etcd and the server under
//! test, compared after [`normalize`]) and `crash` (SIGKILL during concurrent writes).
//!
//! Modules:
//! - [`server`]: start, restart and kill a member process;
//! - [`etcdctl`]: run the real etcdctl against a member, with a timeout;
//! - [`json`]: etcd-client responses as JSON, and [`json::normalize`] for differential
//!   comparisons;
//! - [`grpc`]: exact gRPC code and message assertions, and etcd's error messages;
//! - [`snapshot`]: backup and migration tests' helpers (a history, a dump of every revision,
//!   `keelson snapshot` and offline `etcdctl snapshot` runs);
//! - [`ops`]: the operations tests' helpers (a throwaway PKI, HTTP and TLS probes, metrics
//!   parsing, promtool and jsonnet).

pub mod auth;
pub mod cluster;
pub mod etcdctl;
pub mod grpc;
pub mod json;
pub mod kv;
pub mod lease;
pub mod ops;
pub mod server;
pub mod snapshot;
pub mod watch;

pub use cluster::Cluster;
pub use etcdctl::{etcdctl, etcdctl_at, etcdctl_stdin, OutputExt};
pub use grpc::{assert_grpc_error, messages};
pub use json::{assert_same_json, normalize, Normalizer};
pub use server::{Server, ServerKind, ServerOptions};
