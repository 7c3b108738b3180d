//! Starting a member: open the data dir, start raft, bind listeners, serve until told to stop.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api;
use crate::config::{Config, ListenUrl, Scheme};
use crate::lease::{self, Lessor};
use crate::member::applier::Applier;
use crate::member::identity;
use crate::member::{Limits, Member};
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::metrics::{DiskMetrics, METRICS};
use crate::mvcc::MvccStore;
use crate::raft::{MemberNode, RaftNode, RaftSettings};
use crate::storage::{Storage, CF_RAFT};
use crate::transport::{self, tls};
use crate::version::ETCD_CAPABILITY_VERSION;

/// How long a write or linearizable read may wait, as etcd's default request timeout
/// (5 s plus twice the election timeout).
fn request_timeout(config: &Config) -> Duration {
    Duration::from_secs(5) + 2 * config.election_timeout
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot use data dir {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error(transparent)]
    Ownership(#[from] crate::storage::ownership::OwnershipError),
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("cannot start raft: {0}")]
    Raft(#[from] crate::raft::RaftStartError),
    #[error("cannot listen on {url}: {source}")]
    Listen { url: String, source: std::io::Error },
    #[error("no leader was elected within {0:?}")]
    NoLeader(Duration),
    #[error("TLS for {url}: {source}")]
    Tls { url: String, source: tls::TlsError },
}

/// Who this member is; fixed when its data dir is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    member_id: u64,
    cluster_id: u64,
}

const KEY_IDENTITY: &[u8] = b"identity";

fn load_or_create_identity(storage: &Storage, config: &Config) -> Result<Identity, BootError> {
    let db = storage.db();
    let cf = storage.cf(CF_RAFT);
    let stored = db
        .get_cf(cf, KEY_IDENTITY)
        .map_err(|e| BootError::Store(e.to_string()))?;
    if let Some(raw) = stored {
        return serde_json::from_slice(&raw)
            .map_err(|e| BootError::Store(format!("identity: {e}")));
    }
    let member_ids: Vec<u64> = config
        .initial_cluster
        .values()
        .map(|urls| identity::member_id(urls, &config.initial_cluster_token))
        .collect();
    let ident = Identity {
        member_id: identity::member_id(
            &config.initial_advertise_peer_urls,
            &config.initial_cluster_token,
        ),
        cluster_id: identity::cluster_id(&member_ids),
    };
    let mut batch = rocksdb::WriteBatch::default();
    let encoded = serde_json::to_vec(&ident).map_err(|e| BootError::Store(e.to_string()))?;
    batch.put_cf(cf, KEY_IDENTITY, encoded);
    storage
        .write_durable(batch)
        .map_err(|e| BootError::Store(e.to_string()))?;
    Ok(ident)
}

fn prepare_data_dir(dir: &Path) -> Result<(), BootError> {
    let fail = |source| BootError::DataDir {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(())
}

fn initial_members(config: &Config) -> BTreeMap<u64, MemberNode> {
    config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let id = identity::member_id(urls, &config.initial_cluster_token);
            let is_me = *name == config.name;
            let node = MemberNode {
                name: name.clone(),
                peer_urls: urls.clone(),
                client_urls: if is_me {
                    config.advertise_client_urls.clone()
                } else {
                    Vec::new()
                },
            };
            (id, node)
        })
        .collect()
}

/// Starts the member and serves until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), BootError> {
    for notice in &config.notices {
        tracing::warn!("{notice}");
    }
    let member_dir = config.data_dir.join("member");
    // Before anything is created or changed: a dir keelson does not own stays untouched.
    crate::storage::ownership::claim(&config.data_dir, config.wal_dir.as_deref())?;
    prepare_data_dir(&config.data_dir)?;
    let storage = Storage::open_with_wal_dir(
        &member_dir.join("db"),
        config.wal_dir.as_deref(),
        Arc::new(DiskMetrics),
    )
    .map_err(|e| BootError::Store(e.to_string()))?;
    let ident = load_or_create_identity(&storage, &config)?;
    let store = MvccStore::open(storage.clone()).map_err(|e| BootError::Store(e.to_string()))?;
    store
        .watch_hub()
        .set_progress_interval(config.watch_progress_notify_interval);
    let lessor = Arc::new(
        Lessor::load(
            storage.clone(),
            lease::min_ttl(config.heartbeat_interval, config.election_timeout),
        )
        .map_err(|e| BootError::Store(e.to_string()))?,
    );
    let applier = Arc::new(
        Applier::new(store.clone(), lessor.clone()).map_err(|e| BootError::Store(e.to_string()))?,
    );
    let alarms = applier.alarms().clone();
    let settings = RaftSettings {
        member_id: ident.member_id,
        member: MemberNode {
            name: config.name.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
        },
        initial_members: initial_members(&config),
        heartbeat_interval: config.heartbeat_interval,
        election_timeout: config.election_timeout,
        snapshot_count: config.snapshot_count,
        snapshot_dir: member_dir.join("snap"),
        request_timeout: request_timeout(&config),
    };
    let raft = RaftNode::start(settings, storage, applier).await?;
    let election_wait = request_timeout(&config);
    if !raft.wait_for_leader(election_wait).await {
        return Err(BootError::NoLeader(election_wait));
    }
    tracing::info!("enabled capabilities for version {ETCD_CAPABILITY_VERSION}");
    let member = Arc::new(Member::new(
        ident.cluster_id,
        raft.clone(),
        store,
        alarms,
        lessor,
        Limits {
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            quota_backend_bytes: config.quota_backend_bytes,
        },
    ));
    member.start_lease_tasks();
    member.start_auto_compaction(config.auto_compaction);
    start_metrics(&config, &member);
    tracing::info!(
        "published {{Name:{} ClientURLs:[{}]}} to cluster {:x}",
        config.name,
        config.advertise_client_urls.join(" "),
        ident.cluster_id
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let listeners = bind_listeners(&config, &member).await?;
    let mut servers = Vec::new();
    for listener in listeners {
        if listener.kind == ListenerKind::Client && listener.tls.is_none() {
            tracing::info!(
                "serving insecure client requests on {}, this is strongly discouraged!",
                listener.local
            );
        } else {
            tracing::info!(
                "serving {:?} requests on {} ({})",
                listener.kind,
                listener.local,
                listener.url
            );
        }
        servers.push(tokio::spawn(transport::serve(
            listener.tcp,
            listener.tls,
            listener.router,
            stop_rx.clone(),
        )));
    }
    tracing::info!("ready to serve client requests");

    wait_for_stop_signal().await;
    tracing::info!("received stop signal; shutting down");
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    raft.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerKind {
    Client,
    Metrics,
    Peer,
}

struct BoundListener {
    kind: ListenerKind,
    url: String,
    local: String,
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
}

/// gRPC (with etcd's message-limit wording and gRPC metrics) and HTTP on one router.
fn client_router(member: &Arc<Member>) -> axum::Router {
    let grpc = api::routes(member.clone())
        .into_axum_router()
        .layer(api::message_limit::EtcdMessageLimitLayer)
        .layer(GrpcMetricsLayer);
    grpc.merge(crate::http::router(member.clone()))
        .fallback(client_url_fallback)
}

/// An unknown path: gRPC clients get `Unimplemented` (as grpc-go answers), anyone else Go's
/// `404 page not found` (as etcd's HTTP mux does), never an empty 200.
async fn client_url_fallback(request: axum::extract::Request) -> axum::response::Response {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented("")
            .into_http::<axum::body::Body>()
            .into_response();
    }
    let mut response = (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn hosts_of(urls: &[ListenUrl]) -> Vec<String> {
    urls.iter()
        .filter_map(|u| {
            u.address
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        })
        .collect()
}

async fn bind_listeners(
    config: &Config,
    member: &Arc<Member>,
) -> Result<Vec<BoundListener>, BootError> {
    let client_router = client_router(member);
    let metrics_router = crate::http::router(member.clone());
    let peer_router = axum::Router::new();
    let mut bound = Vec::new();
    let groups = [
        (
            ListenerKind::Client,
            &config.listen_client_urls,
            &config.client_tls,
            "client",
            &client_router,
        ),
        (
            ListenerKind::Metrics,
            &config.listen_metrics_urls,
            &config.client_tls,
            "client",
            &metrics_router,
        ),
        (
            ListenerKind::Peer,
            &config.listen_peer_urls,
            &config.peer_tls,
            "peer",
            &peer_router,
        ),
    ];
    for (kind, urls, tls_settings, fixture, router) in groups {
        let acceptor = if urls.iter().any(|u| u.scheme == Scheme::Https) {
            let auto_dir = tls::auto_tls_dir(&config.data_dir, fixture);
            let server_config = tls::server_config(tls_settings, &auto_dir, &hosts_of(urls))
                .map_err(|source| BootError::Tls {
                    url: urls
                        .iter()
                        .map(|u| u.original.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                    source,
                })?;
            Some(TlsAcceptor::from(server_config))
        } else {
            None
        };
        for url in urls {
            let tcp =
                TcpListener::bind(&url.address)
                    .await
                    .map_err(|source| BootError::Listen {
                        url: url.original.clone(),
                        source,
                    })?;
            let local = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
            bound.push(BoundListener {
                kind,
                url: url.original.clone(),
                local,
                tcp,
                tls: (url.scheme == Scheme::Https)
                    .then(|| acceptor.clone())
                    .flatten(),
                router: router.clone(),
            });
        }
    }
    Ok(bound)
}

/// Keeps the gauges that mirror the member's state up to date.
fn start_metrics(config: &Config, member: &Arc<Member>) {
    if config.extensive_metrics {
        METRICS.grpc.enable_extensive(&METRICS.registry);
    }
    METRICS.grpc.preinitialize();
    METRICS
        .server_version
        .with_label_values(&[crate::version::ETCD_VERSION])
        .set(1);
    METRICS
        .cluster_version
        .with_label_values(&[crate::version::ETCD_CLUSTER_VERSION])
        .set(1);
    METRICS
        .server_id
        .with_label_values(&[&format!("{:x}", member.id())])
        .set(1);
    METRICS.quota_backend_bytes.set(config.quota_backend_bytes);
    let weak = Arc::downgrade(member);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut last_leader = None;
        loop {
            tick.tick().await;
            let Some(member) = weak.upgrade() else { return };
            let raft = member.raft_status();
            if raft.leader.is_some() && raft.leader != last_leader {
                METRICS.leader_changes_seen.inc();
            }
            last_leader = raft.leader;
            METRICS.has_leader.set(i64::from(raft.leader.is_some()));
            METRICS.is_leader.set(i64::from(raft.is_leader));
            METRICS.is_learner.set(i64::from(member.is_learner()));
            METRICS.proposals_committed.set(raft.commit_index as i64);
            METRICS.proposals_applied.set(raft.applied_index as i64);
            let store = member.store();
            METRICS.current_revision.set(store.current_revision());
            METRICS.keys_total.set(store.keys_total());
            METRICS.compact_revision.set(store.compacted_revision());
            let (streams, watchers, slow) = store.watch_hub().counts();
            METRICS.watch_streams.set(streams as i64);
            METRICS.watchers.set(watchers as i64);
            METRICS.slow_watchers.set(slow as i64);
        }
    });
}
