//! Prometheus metrics with etcd's names, types, labels and buckets, so that etcd's dashboards
//! and alerts work unchanged.

pub mod grpc;

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::storage::DiskObserver;

/// Every keelson metric. Registered once, in a registry of its own.
pub struct Metrics {
    pub registry: Registry,

    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub is_learner: IntGauge,
    pub leader_changes_seen: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub quota_backend_bytes: IntGauge,
    pub server_version: IntGaugeVec,
    pub cluster_version: IntGaugeVec,
    pub server_id: IntGaugeVec,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    pub read_indexes_failed: IntCounter,
    pub slow_read_indexes: IntCounter,
    pub slow_apply: IntCounter,
    pub heartbeat_send_failures: IntCounter,
    pub lease_expired: IntCounter,
    pub client_requests: IntCounterVec,

    pub wal_fsync_seconds: Histogram,
    pub backend_commit_seconds: Histogram,
    pub backend_defrag_seconds: Histogram,

    pub db_total_size: IntGauge,
    pub db_total_size_in_use: IntGauge,
    pub debugging_db_total_size: IntGauge,
    pub mvcc_put: IntCounter,
    pub mvcc_delete: IntCounter,
    pub mvcc_range: IntCounter,
    pub mvcc_txn: IntCounter,
    pub current_revision: IntGauge,
    pub keys_total: IntGauge,
    pub compact_revision: IntGauge,
    pub auth_revision: IntGauge,
    pub watch_streams: IntGauge,
    pub watchers: IntGauge,
    pub slow_watchers: IntGauge,

    pub peer_round_trip_seconds: HistogramVec,
    pub peer_sent_failures: IntCounterVec,
    pub peer_sent_bytes: IntCounterVec,
    pub peer_received_bytes: IntCounterVec,
    pub active_peers: IntGaugeVec,
    pub snapshot_send_success: IntCounterVec,
    pub snapshot_send_failures: IntCounterVec,
    pub snapshot_send_seconds: HistogramVec,
    pub snapshot_receive_success: IntCounterVec,
    pub snapshot_receive_failures: IntCounterVec,
    pub snapshot_receive_seconds: HistogramVec,
    pub client_grpc_sent_bytes: IntCounter,
    pub client_grpc_received_bytes: IntCounter,

    pub grpc: grpc::GrpcMetrics,
    pub health_checks: GaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

/// etcd's disk latency buckets: 1 ms doubling 14 times.
fn disk_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 14).unwrap_or_default()
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

/// etcd's snapshot transfer buckets: 100 ms doubling 11 times.
fn snapshot_buckets() -> Vec<f64> {
    exponential_buckets(0.1, 2.0, 11).unwrap_or_default()
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = r.register(Box::new(process)) {
                tracing::warn!(error = %e, "process metrics are unavailable");
            }
        }
        let peer_rtt = HistogramVec::new(
            HistogramOpts::new(
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
            )
            .buckets(exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()),
            &["To"],
        )
        .unwrap_or_else(|e| panic!("peer rtt: {e}"));
        r.register(Box::new(peer_rtt.clone()))
            .unwrap_or_else(|e| panic!("peer rtt: {e}"));
        let health_checks = GaugeVec::new(
            Opts::new(
                "etcd_server_healthcheck",
                "The result of each kind of healthcheck.",
            ),
            &["type", "name"],
        )
        .unwrap_or_else(|e| panic!("healthcheck: {e}"));
        r.register(Box::new(health_checks.clone()))
            .unwrap_or_else(|e| panic!("healthcheck: {e}"));
        Self {
            has_leader: gauge(&r, "etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."),
            is_leader: gauge(&r, "etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."),
            is_learner: gauge(&r, "etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise."),
            leader_changes_seen: counter(&r, "etcd_server_leader_changes_seen_total", "The number of leader changes seen."),
            proposals_committed: gauge(&r, "etcd_server_proposals_committed_total", "The total number of consensus proposals committed."),
            proposals_applied: gauge(&r, "etcd_server_proposals_applied_total", "The total number of consensus proposals applied."),
            proposals_pending: gauge(&r, "etcd_server_proposals_pending", "The current number of pending proposals to commit."),
            proposals_failed: counter(&r, "etcd_server_proposals_failed_total", "The total number of failed proposals seen."),
            quota_backend_bytes: gauge(&r, "etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes."),
            server_version: gauge_vec(&r, "etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.", &["server_version"]),
            cluster_version: gauge_vec(&r, "etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with current cluster version", &["cluster_version"]),
            server_id: gauge_vec(&r, "etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.", &["server_id"]),
            health_success: counter(&r, "etcd_server_health_success", "The total number of successful health checks"),
            health_failures: counter(&r, "etcd_server_health_failures", "The total number of failed health checks"),
            read_indexes_failed: counter(&r, "etcd_server_read_indexes_failed_total", "The total number of failed read indexes seen."),
            slow_read_indexes: counter(&r, "etcd_server_slow_read_indexes_total", "The total number of pending read indexes not in sync with leader's or timed out read index requests."),
            slow_apply: counter(&r, "etcd_server_slow_apply_total", "The total number of slow apply requests (likely overloaded from slow disk)."),
            heartbeat_send_failures: counter(&r, "etcd_server_heartbeat_send_failures_total", "The total number of leader heartbeat send failures (likely overloaded from slow disk)."),
            lease_expired: counter(&r, "etcd_server_lease_expired_total", "The total number of expired leases."),
            client_requests: counter_vec(&r, "etcd_server_client_requests_total", "The total number of client requests per client version.", &["type", "client_api_version"]),
            wal_fsync_seconds: histogram(&r, "etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.", disk_buckets()),
            backend_commit_seconds: histogram(&r, "etcd_disk_backend_commit_duration_seconds", "The latency distributions of commit called by backend.", disk_buckets()),
            backend_defrag_seconds: histogram(&r, "etcd_disk_backend_defrag_duration_seconds", "The latency distribution of backend defragmentation.", exponential_buckets(0.1, 2.0, 13).unwrap_or_default()),
            db_total_size: gauge(&r, "etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes."),
            db_total_size_in_use: gauge(&r, "etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes."),
            debugging_db_total_size: gauge(&r, "etcd_debugging_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes."),
            mvcc_put: counter(&r, "etcd_mvcc_put_total", "Total number of puts seen by this member."),
            mvcc_delete: counter(&r, "etcd_mvcc_delete_total", "Total number of deletes seen by this member."),
            mvcc_range: counter(&r, "etcd_mvcc_range_total", "Total number of ranges seen by this member."),
            mvcc_txn: counter(&r, "etcd_mvcc_txn_total", "Total number of txns seen by this member."),
            current_revision: gauge(&r, "etcd_debugging_mvcc_current_revision", "The current revision of store."),
            keys_total: gauge(&r, "etcd_debugging_mvcc_keys_total", "Total number of keys."),
            compact_revision: gauge(&r, "etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store."),
            auth_revision: gauge(&r, "etcd_debugging_auth_revision", "The current revision of auth store."),
            watch_streams: gauge(&r, "etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams."),
            watchers: gauge(&r, "etcd_debugging_mvcc_watcher_total", "Total number of watchers."),
            slow_watchers: gauge(&r, "etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers."),
            peer_round_trip_seconds: peer_rtt,
            peer_sent_failures: counter_vec(&r, "etcd_network_peer_sent_failures_total", "The total number of send failures from peers.", &["To"]),
            peer_sent_bytes: counter_vec(&r, "etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers.", &["To"]),
            peer_received_bytes: counter_vec(&r, "etcd_network_peer_received_bytes_total", "The total number of bytes received from peers.", &["From"]),
            active_peers: gauge_vec(&r, "etcd_network_active_peers", "The current number of active peer connections.", &["Local", "Remote"]),
            snapshot_send_success: counter_vec(&r, "etcd_network_snapshot_send_success", "Total number of successful snapshot sends", &["To"]),
            snapshot_send_failures: counter_vec(&r, "etcd_network_snapshot_send_failures", "Total number of snapshot send failures", &["To"]),
            snapshot_send_seconds: histogram_vec(&r, "etcd_network_snapshot_send_total_duration_seconds", "Total latency distributions of v3 snapshot sends", snapshot_buckets(), &["To"]),
            snapshot_receive_success: counter_vec(&r, "etcd_network_snapshot_receive_success", "Total number of successful snapshot receives", &["From"]),
            snapshot_receive_failures: counter_vec(&r, "etcd_network_snapshot_receive_failures", "Total number of snapshot receive failures", &["From"]),
            snapshot_receive_seconds: histogram_vec(&r, "etcd_network_snapshot_receive_total_duration_seconds", "Total latency distributions of v3 snapshot receives", snapshot_buckets(), &["From"]),
            client_grpc_sent_bytes: counter(&r, "etcd_network_client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients."),
            client_grpc_received_bytes: counter(&r, "etcd_network_client_grpc_received_bytes_total", "The total number of bytes received from grpc clients."),
            grpc: grpc::GrpcMetrics::register(&r),
            health_checks,
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Disk latencies from the storage layer.
pub struct DiskMetrics;

impl DiskObserver for DiskMetrics {
    fn wal_fsync(&self, seconds: f64) {
        METRICS.wal_fsync_seconds.observe(seconds);
    }

    fn backend_commit(&self, seconds: f64) {
        METRICS.backend_commit_seconds.observe(seconds);
    }
}
