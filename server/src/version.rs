//! Versions keelson reports.

/// keelson's own version.
pub const KEELSON_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The etcd server version keelson answers with. kube-apiserver turns off consistent reads
/// from its cache for anything below 3.5.13, so this must stay at or above that.
pub const ETCD_VERSION: &str = "3.5.21";

/// The cluster version, as etcd reports it (major.minor.0).
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

/// The API capability line etcd prints at start; tooling waits for it.
pub const ETCD_CAPABILITY_VERSION: &str = "3.5";
