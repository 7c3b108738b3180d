//! Starting a member: open the data dir, start raft, bind listeners, serve until told to stop.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api;
use crate::auth::tokens::TokenProvider;
use crate::auth::AuthStore;
use crate::config::ClusterState;
use crate::config::{Config, ListenUrl, Scheme};
use crate::lease::{self, Lessor};
use crate::member::applier::Applier;
use crate::member::identity;
use crate::member::join::{self, JoinDecision};
use crate::member::membership::EtcdMembershipRules;
use crate::member::{Limits, Member};
use crate::metrics::{DiskMetrics, METRICS};
use crate::mvcc::MvccStore;
use crate::raft::{LeaderLeases, MemberNode, RaftNode, RaftSettings};
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
    Adopt(#[from] crate::adopt::AdoptError),
    #[error(transparent)]
    Ownership(#[from] crate::storage::ownership::OwnershipError),
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("cannot start raft: {0}")]
    Raft(#[from] crate::raft::RaftStartError),
    #[error("cannot listen on {url}: {source}")]
    Listen { url: String, source: std::io::Error },
    #[error("TLS for {url}: {source}")]
    Tls { url: String, source: tls::TlsError },
    /// `--auth-token` names keys that cannot be used.
    #[error("failed to create token provider: {0}")]
    Auth(#[from] crate::auth::tokens::TokenConfigError),
    /// Joining or bootstrapping a cluster failed; etcd's wording.
    #[error("{0}")]
    Cluster(String),
    /// The member must stop (removed from the cluster, wrong cluster).
    #[error("{0}")]
    Fatal(String),
}

/// Who this member is; fixed when its data dir is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) member_id: u64,
    pub(crate) cluster_id: u64,
    /// Joined a running cluster (--initial-cluster-state existing): raft is never initialised
    /// from the flags, the leader replicates the cluster to it.
    #[serde(default)]
    pub(crate) joined: bool,
    /// The membership a data dir made by `keelson snapshot restore` bootstraps with (from the
    /// restore's flags, as etcdctl's restore fixes it); `None`: from --initial-cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) initial_members: Option<BTreeMap<u64, MemberNode>>,
}

const KEY_IDENTITY: &[u8] = b"identity";
/// How long a peer has to say what cluster it is in (etcd allows 10 s per peer URL).
const CLUSTER_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The bootstrap checks ask quickly: an absent peer is normal while a cluster forms.
const BOOTSTRAP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn stored_identity(storage: &Storage) -> Result<Option<Identity>, BootError> {
    let stored = storage
        .db()
        .get_cf(storage.cf(CF_RAFT), KEY_IDENTITY)
        .map_err(|e| BootError::Store(e.to_string()))?;
    stored
        .map(|raw| {
            serde_json::from_slice(&raw).map_err(|e| BootError::Store(format!("identity: {e}")))
        })
        .transpose()
}

pub(crate) fn save_identity(storage: &Storage, ident: &Identity) -> Result<(), BootError> {
    let mut batch = rocksdb::WriteBatch::default();
    let encoded = serde_json::to_vec(ident).map_err(|e| BootError::Store(e.to_string()))?;
    batch.put_cf(storage.cf(CF_RAFT), KEY_IDENTITY, encoded);
    storage
        .write_durable(batch)
        .map_err(|e| BootError::Store(e.to_string()))
}

/// The peer URLs of the other members named in --initial-cluster.
fn other_members_urls(config: &Config) -> Vec<String> {
    config
        .initial_cluster
        .iter()
        .filter(|(name, _)| **name != config.name)
        .flat_map(|(_, urls)| urls.iter().cloned())
        .collect()
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut urls = urls.to_vec();
    urls.sort();
    urls
}

/// The identity of a new member of a new cluster: etcd's hashes of the flags.
async fn new_cluster_identity(
    config: &Config,
    peer_tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Identity, BootError> {
    let member_ids: Vec<u64> = config
        .initial_cluster
        .values()
        .map(|urls| identity::member_id(urls, &config.initial_cluster_token))
        .collect();
    let member_id = identity::member_id(
        &config.initial_advertise_peer_urls,
        &config.initial_cluster_token,
    );
    // etcd's isMemberBootstrapped: a member that already published itself in a running
    // cluster must not bootstrap again (its data dir was lost: remove and re-add it instead).
    let probes = other_members_urls(config)
        .into_iter()
        .map(|url| async move {
            crate::raft::peer::client::fetch_cluster(&url, peer_tls, BOOTSTRAP_PROBE_TIMEOUT).await
        });
    for answer in futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
    {
        let published = answer
            .members
            .iter()
            .any(|m| m.id == member_id && !m.client_ur_ls.is_empty());
        if published {
            return Err(BootError::Cluster(format!(
                "member {member_id:x} has already been bootstrapped"
            )));
        }
    }
    Ok(Identity {
        member_id,
        cluster_id: identity::cluster_id(&member_ids),
        joined: false,
        initial_members: None,
    })
}

/// etcd's join of a running cluster: ask a member for the cluster, check that --initial-cluster
/// describes it, and take this member's ID (given by `member add`) from it.
async fn join_cluster_identity(
    config: &Config,
    peer_tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Identity, BootError> {
    let mut last_error = String::from("no other member in --initial-cluster");
    let mut existing = None;
    for url in other_members_urls(config) {
        match crate::raft::peer::client::fetch_cluster(&url, peer_tls, CLUSTER_FETCH_TIMEOUT).await
        {
            Ok(info) => {
                existing = Some(info);
                break;
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "could not get cluster response");
                last_error = e;
            }
        }
    }
    let existing = existing.ok_or_else(|| {
        BootError::Cluster(format!(
            "cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs ({last_error})"
        ))
    })?;
    let described = |urls: &[String]| {
        format!(
            "{:x}={}",
            existing.cluster_id,
            existing
                .members
                .iter()
                .map(|m| format!("{}={}", m.name, urls.join(",")))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    if existing.members.len() != config.initial_cluster.len() {
        return Err(BootError::Cluster(format!(
            "error validating peerURLs {}: member count is unequal",
            described(&[])
        )));
    }
    for m in &existing.members {
        let known = config
            .initial_cluster
            .values()
            .any(|urls| sorted(urls) == sorted(&m.peer_ur_ls));
        if !known {
            return Err(BootError::Cluster(format!(
                "error validating peerURLs {}: PeerURLs: no match found for existing member ({:x}, {:?}), last resolver error (<nil>)",
                described(&[]),
                m.id,
                m.peer_ur_ls
            )));
        }
    }
    let mine = sorted(&config.initial_advertise_peer_urls);
    let me = existing
        .members
        .iter()
        .find(|m| sorted(&m.peer_ur_ls) == mine)
        .ok_or_else(|| {
            BootError::Cluster(format!(
                "this member's --initial-advertise-peer-urls {:?} are not in the cluster; add it first with `etcdctl member add`",
                config.initial_advertise_peer_urls
            ))
        })?;
    Ok(Identity {
        member_id: me.id,
        cluster_id: existing.cluster_id,
        joined: true,
        initial_members: None,
    })
}

/// The identity of a member whose data dir holds none yet: etcd's bootstrap or join, or
/// keelson's join step with --join-seeds.
async fn create_identity(
    config: &Config,
    peer_tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Identity, BootError> {
    if !config.join_seeds.is_empty() {
        return match join::decide(config, peer_tls)
            .await
            .map_err(|e| BootError::Cluster(e.to_string()))?
        {
            JoinDecision::Bootstrap => new_cluster_identity(config, peer_tls).await,
            JoinDecision::Join {
                member_id,
                cluster_id,
            } => Ok(Identity {
                member_id,
                cluster_id,
                joined: true,
                initial_members: None,
            }),
        };
    }
    match config.initial_cluster_state {
        ClusterState::Existing => join_cluster_identity(config, peer_tls).await,
        ClusterState::New => new_cluster_identity(config, peer_tls).await,
    }
}

fn open_storage(config: &Config) -> Result<Arc<Storage>, BootError> {
    // Before anything is created or changed: a dir keelson does not own stays untouched.
    crate::storage::ownership::claim(&config.data_dir, config.wal_dir.as_deref())?;
    prepare_data_dir(&config.data_dir)?;
    Storage::open_with_wal_dir(
        &config.data_dir.join("member").join("db"),
        config.wal_dir.as_deref(),
        Arc::new(DiskMetrics),
    )
    .map_err(|e| BootError::Store(e.to_string()))
}

/// With --join-seeds, a member the cluster removed sets its data aside (data dir and WAL dir,
/// renamed, never deleted) and starts empty.
async fn set_aside_if_removed(
    config: &Config,
    storage: Arc<Storage>,
    stored: Option<Identity>,
    peer_tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(Arc<Storage>, Option<Identity>), BootError> {
    let Some(ident) = stored else {
        return Ok((storage, None));
    };
    if config.join_seeds.is_empty() || !join::was_removed(config, ident.member_id, peer_tls).await {
        return Ok((storage, Some(ident)));
    }
    drop(storage);
    let aside = |dir: &Path| {
        join::set_aside(dir).map_err(|source| BootError::DataDir {
            dir: dir.display().to_string(),
            source,
        })
    };
    let moved = aside(&config.data_dir)?;
    tracing::warn!(
        member = %format!("{:x}", ident.member_id),
        moved_to = %moved.display(),
        "this member was removed from the cluster: its data is set aside and it joins as a new member"
    );
    if let Some(wal) = &config.wal_dir {
        let moved = aside(wal)?;
        tracing::warn!(moved_to = %moved.display(), "set aside the removed member's WAL dir");
    }
    Ok((open_storage(config)?, None))
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

/// The membership a new cluster starts with: every member of --initial-cluster with its name
/// and peer URLs. It must be the same on every member (it is the first log entry of each), so
/// client URLs are left out: each member publishes its own once the cluster has a leader.
fn initial_members(config: &Config) -> BTreeMap<u64, MemberNode> {
    config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let id = identity::member_id(urls, &config.initial_cluster_token);
            let node = MemberNode {
                name: name.clone(),
                peer_urls: urls.clone(),
                client_urls: Vec::new(),
            };
            (id, node)
        })
        .collect()
}

/// TLS towards other members, when peer URLs are https or peer TLS is configured.
pub(crate) fn peer_client_tls(
    config: &Config,
) -> Result<Option<Arc<rustls::ClientConfig>>, BootError> {
    let any_https = config
        .initial_cluster
        .values()
        .flatten()
        .chain(&config.initial_advertise_peer_urls)
        .any(|u| u.starts_with("https://"));
    if !any_https && !config.peer_tls.is_configured() {
        return Ok(None);
    }
    let auto_dir = tls::auto_tls_dir(&config.data_dir, "peer");
    tls::peer_client_config(
        &config.peer_tls,
        &auto_dir,
        &hosts_of(&config.listen_peer_urls),
    )
    .map(Some)
    .map_err(|source| BootError::Tls {
        url: "peer client".into(),
        source,
    })
}

/// Starts the member and serves until SIGINT or SIGTERM, or until it must stop.
pub async fn run(mut config: Config) -> Result<(), BootError> {
    for notice in &config.notices {
        tracing::warn!("{notice}");
    }
    // On a data dir etcd left, keelson's own data dir is the one beside etcd's files.
    config.data_dir = crate::adopt::resolve_data_dir(&config)?;
    let member_dir = config.data_dir.join("member");
    let storage = open_storage(&config)?;
    let peer_tls = peer_client_tls(&config)?;
    let stored = stored_identity(&storage)?;
    let (storage, stored) =
        set_aside_if_removed(&config, storage, stored, peer_tls.as_ref()).await?;
    let first_start = stored.is_none();
    let ident = match stored {
        Some(ident) => {
            tracing::info!(
                member = %format!("{:x}", ident.member_id),
                cluster = %format!("{:x}", ident.cluster_id),
                "restarting member on its data dir; --initial-cluster flags are ignored"
            );
            ident
        }
        None => {
            let ident = create_identity(&config, peer_tls.as_ref()).await?;
            save_identity(&storage, &ident)?;
            ident
        }
    };
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
    let tokens = TokenProvider::new(&config.auth_token, config.auth_token_ttl)?;
    let auth = Arc::new(
        AuthStore::open(storage.clone(), tokens, config.bcrypt_cost)
            .map_err(|e| BootError::Store(e.to_string()))?,
    );
    let applier = Arc::new(
        Applier::new(store.clone(), lessor.clone(), auth.clone())
            .map_err(|e| BootError::Store(e.to_string()))?,
    );
    let alarms = applier.alarms().clone();
    let settings = RaftSettings {
        member_id: ident.member_id,
        cluster_id: ident.cluster_id,
        member: MemberNode {
            name: config.name.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
        },
        initial_members: match (&ident.initial_members, ident.joined) {
            (_, true) => BTreeMap::new(),
            (Some(restored), false) => restored.clone(),
            (None, false) => initial_members(&config),
        },
        heartbeat_interval: config.heartbeat_interval,
        election_timeout: config.election_timeout,
        snapshot_count: config.snapshot_count,
        snapshot_dir: member_dir.join("snap"),
        incoming_snapshot_dir: member_dir.join("snap-incoming"),
        request_timeout: request_timeout(&config),
        peer_tls: peer_tls.clone(),
        membership_rules: Arc::new(EtcdMembershipRules {
            strict: config.strict_reconfig_check,
        }),
    };
    let raft = RaftNode::start(settings, storage, applier).await?;
    let member = Arc::new(Member::new(
        ident.cluster_id,
        raft.clone(),
        store,
        alarms,
        lessor,
        auth,
        Limits {
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            quota_backend_bytes: config.quota_backend_bytes,
        },
    ));
    let leases: Arc<dyn LeaderLeases> = member.clone();
    raft.set_leader_leases(Arc::downgrade(&leases));
    member.start_lease_tasks();
    member.start_auto_compaction(config.auto_compaction);
    start_metrics(&config, &member);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    let mut client_listeners = Vec::new();
    for listener in bind_listeners(&config, &member, &raft).await? {
        if listener.kind == ListenerKind::Client {
            client_listeners.push(listener);
        } else {
            servers.push(serve_listener(listener, &stop_rx));
        }
    }
    if first_start && !ident.joined && config.initial_cluster.len() > 1 {
        tokio::spawn(check_bootstrap_peers(
            raft.clone(),
            other_members_urls(&config),
            peer_tls.clone(),
        ));
    }
    let mut fatal = raft.fatal_receiver();
    let outcome = tokio::select! {
        () = publish(&member, &config) => None,
        () = wait_for_stop_signal() => Some(Ok(())),
        reason = fatal.wait_for(Option::is_some) => Some(Err(fatal_reason(reason.ok().and_then(|r| r.clone())))),
    };
    if let Some(outcome) = outcome {
        let _ = stop_tx.send(true);
        for server in servers {
            let _ = server.await;
        }
        raft.shutdown().await;
        return outcome;
    }
    tracing::info!("enabled capabilities for version {ETCD_CAPABILITY_VERSION}");
    tracing::info!(
        "published {{Name:{} ClientURLs:[{}]}} to cluster {:x}",
        config.name,
        config.advertise_client_urls.join(" "),
        ident.cluster_id
    );
    // A scrape right after "ready" must see the leader the member just found.
    set_leadership_gauges(&member);
    for listener in client_listeners {
        servers.push(serve_listener(listener, &stop_rx));
    }
    tracing::info!("ready to serve client requests");
    if !config.join_seeds.is_empty() && raft.is_learner() {
        tokio::spawn(join::promote_when_ready(raft.clone(), config.join_timeout));
    }

    let outcome = tokio::select! {
        () = wait_for_stop_signal() => {
            tracing::info!("received stop signal; shutting down");
            Ok(())
        }
        reason = fatal.wait_for(Option::is_some) => Err(fatal_reason(reason.ok().and_then(|r| r.clone()))),
    };
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    raft.shutdown().await;
    outcome
}

fn fatal_reason(reason: Option<String>) -> BootError {
    BootError::Fatal(reason.unwrap_or_else(|| "raft stopped".to_string()))
}

fn serve_listener(
    listener: BoundListener,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
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
    let writes = match listener.kind {
        ListenerKind::Client => transport::Writes::Coalesced,
        ListenerKind::Metrics | ListenerKind::Peer => transport::Writes::Immediate,
    };
    match listener.handler {
        ListenerHandler::Client(client) => tokio::spawn(transport::serve(
            listener.tcp,
            listener.tls,
            client,
            writes,
            stop.clone(),
        )),
        ListenerHandler::Peer(peer) => tokio::spawn(transport::serve(
            listener.tcp,
            listener.tls,
            peer,
            writes,
            stop.clone(),
        )),
        ListenerHandler::Router(router) => tokio::spawn(transport::serve(
            listener.tcp,
            listener.tls,
            router,
            writes,
            stop.clone(),
        )),
    }
}

/// How often a member waiting for its cluster says so.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(5);
/// The pauses between attempts to publish this member: short at first, since the usual
/// refusal (a leader that has not committed its first entry) clears within milliseconds.
const PUBLISH_RETRY_FIRST: Duration = Duration::from_millis(10);
const PUBLISH_RETRY_MAX: Duration = Duration::from_millis(500);

/// Waits for a leader, then records this member's name and client URLs in the cluster (etcd's
/// publish); a member serves clients only after that, as etcd's do.
async fn publish(member: &Arc<Member>, config: &Config) {
    let mut last_log = Instant::now();
    let mut retry_after = PUBLISH_RETRY_FIRST;
    loop {
        if member.raft().wait_for_leader(Duration::from_secs(1)).await {
            match member
                .publish(&config.name, &config.advertise_client_urls)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    if last_log.elapsed() >= WAITING_LOG_EVERY {
                        tracing::warn!(error = %e, "failed to publish local member to cluster through raft");
                        last_log = Instant::now();
                    }
                    // A refusal can come back at once (a new leader whose first entry is not
                    // committed yet refuses membership changes): without a pause this loop spun.
                    tokio::time::sleep(retry_after).await;
                    retry_after = (retry_after * 2).min(PUBLISH_RETRY_MAX);
                }
            }
        } else if last_log.elapsed() >= WAITING_LOG_EVERY {
            tracing::info!("waiting for the cluster to elect a leader before serving clients");
            last_log = Instant::now();
        }
    }
}

/// While a new cluster forms, makes sure this member's flags agree with its peers': if most of
/// the other members belong to another cluster (other --initial-cluster or token), this member
/// is the odd one out and stops, rather than waiting for a leader forever.
async fn check_bootstrap_peers(
    raft: Arc<RaftNode>,
    peer_urls: Vec<String>,
    peer_tls: Option<Arc<rustls::ClientConfig>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if raft.ever_had_leader() || raft.status().leader.is_some() {
            return;
        }
        let probes = peer_urls.iter().map(|url| {
            let tls = peer_tls.clone();
            async move {
                crate::raft::peer::client::fetch_cluster(url, tls.as_ref(), BOOTSTRAP_PROBE_TIMEOUT)
                    .await
            }
        });
        let answers: Vec<_> = futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        let others: std::collections::BTreeSet<u64> = answers.iter().map(|a| a.member_id).collect();
        let disagreeing: Vec<&crate::proto::peerpb::ClusterInfo> = answers
            .iter()
            .filter(|a| a.cluster_id != raft.cluster_id())
            .collect();
        let expected_others = peer_urls.len().max(others.len());
        if !disagreeing.is_empty() && disagreeing.len() * 2 > expected_others {
            let theirs = disagreeing[0].cluster_id;
            raft.fail(format!(
                "request sent was ignored (cluster ID mismatch: peer[{:x}]={theirs:x}, local={:x}); \
                 this member's --initial-cluster or --initial-cluster-token differs from its peers'",
                disagreeing[0].member_id,
                raft.cluster_id()
            ));
            return;
        }
    }
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
    handler: ListenerHandler,
}

/// What a listener answers with.
#[derive(Clone)]
enum ListenerHandler {
    /// The client URLs: etcd's gRPC services, then HTTP.
    Client(api::dispatch::ClientService),
    /// The peer URLs: the peer protocol, then etcd's peer HTTP endpoints.
    Peer(crate::raft::peer::server::PeerFrontDoor),
    Router(axum::Router),
}

/// gRPC (with etcd's message-limit wording and gRPC metrics) and HTTP on one port.
fn client_handler(member: &Arc<Member>, gateway: bool) -> ListenerHandler {
    let services = api::Services::new(member.clone());
    let mut http = crate::http::router(member.clone());
    if gateway {
        http = http.merge(crate::http::gateway::router(services.clone()));
    }
    let http = http.fallback(crate::http::unknown_path);
    ListenerHandler::Client(api::dispatch::ClientService::new(&services, http))
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
    raft: &Arc<RaftNode>,
) -> Result<Vec<BoundListener>, BootError> {
    let client_router = client_handler(member, config.enable_grpc_gateway);
    let metrics_router = ListenerHandler::Router(crate::http::router(member.clone()));
    let peer_router = ListenerHandler::Peer(raft.peer_front_door());
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
                handler: router.clone(),
            });
        }
    }
    Ok(bound)
}

/// has_leader, is_leader, is_learner as they are now.
fn set_leadership_gauges(member: &Member) {
    let raft = member.raft_status();
    METRICS.has_leader.set(i64::from(raft.leader.is_some()));
    METRICS.is_leader.set(i64::from(raft.is_leader));
    METRICS
        .is_learner
        .set(i64::from(member.raft().is_learner()));
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
            set_leadership_gauges(&member);
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
