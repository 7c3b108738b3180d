//! Starting a member: open the data dir, start raft, bind listeners, serve until told to stop.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api;
use crate::config::Config;
use crate::member::applier::Applier;
use crate::member::identity;
use crate::member::{Limits, Member};
use crate::mvcc::MvccStore;
use crate::raft::{MemberNode, RaftNode, RaftSettings};
use crate::storage::{Storage, CF_RAFT};
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
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("cannot start raft: {0}")]
    Raft(#[from] crate::raft::RaftStartError),
    #[error("cannot listen on {url}: {source}")]
    Listen { url: String, source: std::io::Error },
    #[error("no leader was elected within {0:?}")]
    NoLeader(Duration),
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
    prepare_data_dir(&config.data_dir)?;
    let storage =
        Storage::open(&member_dir.join("db")).map_err(|e| BootError::Store(e.to_string()))?;
    let ident = load_or_create_identity(&storage, &config)?;
    let store = MvccStore::open(storage.clone()).map_err(|e| BootError::Store(e.to_string()))?;
    store
        .watch_hub()
        .set_progress_interval(config.watch_progress_notify_interval);
    let applier =
        Arc::new(Applier::new(store.clone()).map_err(|e| BootError::Store(e.to_string()))?);
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
        Limits {
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            quota_backend_bytes: config.quota_backend_bytes,
        },
    ));
    tracing::info!(
        "published {{Name:{} ClientURLs:[{}]}} to cluster {:x}",
        config.name,
        config.advertise_client_urls.join(" "),
        ident.cluster_id
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    for url in &config.listen_client_urls {
        let listener =
            TcpListener::bind(&url.address)
                .await
                .map_err(|source| BootError::Listen {
                    url: url.original.clone(),
                    source,
                })?;
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let routes = api::routes(member.clone());
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            let served = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "client listener failed");
            }
        }));
        tracing::info!(
            "serving insecure client requests on {local}, this is strongly discouraged!"
        );
    }
    for url in &config.listen_peer_urls {
        // Peers have nothing to say to a one-member cluster yet; the port is still held so
        // that a second process cannot take it and the layout matches etcd's.
        let listener =
            TcpListener::bind(&url.address)
                .await
                .map_err(|source| BootError::Listen {
                    url: url.original.clone(),
                    source,
                })?;
        let mut stop = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            let served = tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "peer listener failed");
            }
        }));
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
