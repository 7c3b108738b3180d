//! The client side of the peer protocol: one lazily connected HTTP/2 channel per member (tonic
//! reconnects it, openraft backs off from an unreachable member), the openraft network that
//! replicates over it, and the calls a follower makes to the leader for its clients.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Uri;
use hyper_util::rt::TokioIo;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use prost::Message;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::append_stream;
use super::faults::{Outbound, PeerFaults};
use super::snapshot_transfer;
use super::wire;
use crate::error::EtcdError;
use crate::metrics::METRICS;
use crate::proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::peerpb::peer_client::PeerClient;
use crate::proto::peerpb::{
    ClusterInfo, GetClusterRequest, MembershipChange, MembershipChangeResponse,
    ProposeBatchRequest, ProposeResponse, RaftMessage, ReadIndexRequest,
};
use crate::proto::raftpb::RaftRequest;
use crate::raft::types::{MemberNode, NodeId, TypeConfig, Vote};
use crate::raft::RaftSnapshot;

/// Metadata every peer request carries, as etcd's X-Etcd-Cluster-ID and X-Server-From headers.
pub const CLUSTER_ID_HEADER: &str = "x-etcd-cluster-id";
pub const FROM_HEADER: &str = "x-etcd-from";
/// The answer to a member that was removed from the cluster, with etcd's wording.
pub const REMOVED_MESSAGE: &str = "the member has been permanently removed from the cluster";
/// The answer to a member of another cluster.
pub const CLUSTER_MISMATCH_MESSAGE: &str = "cluster ID mismatch";

/// An AppendEntries carries at most this many bytes of entries (and at least one entry); the
/// rest follows in the next request, as etcd caps a raft message at 1 MiB.
const APPEND_BYTES_BUDGET: usize = 8 << 20;
/// The largest peer message a member accepts: one entry may be a whole client request.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a snapshot transfer over a blackholed link (fault injection) hangs before it fails.
const SNAPSHOT_LOSS_WAIT: Duration = Duration::from_secs(1);
/// HTTP/2 keep-alive between members, so that a dead peer is noticed without a request.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// What went wrong talking to a peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerCallError {
    /// Nothing reached the peer (no connection, or the link is cut): safe to retry elsewhere.
    #[error("peer {0:x} is unreachable")]
    NotSent(u64),
    /// The call broke after it was sent (the connection died under it): the peer may or may
    /// not have acted on it, so only a call that is safe to repeat may go elsewhere.
    #[error("the call to peer {0:x} broke after it was sent")]
    Broken(u64),
    /// The peer answered with an error.
    #[error(transparent)]
    Failed(#[from] EtcdError),
}

/// Where this member's peer calls come from and how they are secured.
pub struct PeerPool {
    local_id: u64,
    cluster_id: u64,
    tls: Option<Arc<rustls::ClientConfig>>,
    channels: Mutex<HashMap<u64, (Vec<String>, Channel)>>,
    /// Since when each member has answered raft's calls without a failure (etcd's
    /// transport "active since"); absent while it fails.
    active_since: Mutex<HashMap<u64, Instant>>,
    faults: Arc<PeerFaults>,
    /// Set when a peer says this member was removed: the member must stop.
    on_removed: Box<dyn Fn() + Send + Sync>,
    /// Set when a peer says this member belongs to another cluster.
    on_cluster_mismatch: Box<dyn Fn(u64, String) + Send + Sync>,
}

impl PeerPool {
    pub fn new(
        local_id: u64,
        cluster_id: u64,
        tls: Option<Arc<rustls::ClientConfig>>,
        faults: Arc<PeerFaults>,
        on_removed: Box<dyn Fn() + Send + Sync>,
        on_cluster_mismatch: Box<dyn Fn(u64, String) + Send + Sync>,
    ) -> Self {
        Self {
            local_id,
            cluster_id,
            tls,
            channels: Mutex::new(HashMap::new()),
            active_since: Mutex::new(HashMap::new()),
            faults,
            on_removed,
            on_cluster_mismatch,
        }
    }

    /// A channel to `member` at `urls`, made on first use and kept while its URLs stay the same.
    fn channel(&self, member: u64, urls: &[String]) -> Result<Channel, PeerCallError> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| PeerCallError::NotSent(member))?;
        if let Some((known, channel)) = channels.get(&member) {
            if known == urls {
                return Ok(channel.clone());
            }
        }
        let url = urls.first().ok_or(PeerCallError::NotSent(member))?;
        let channel = self
            .connect_lazy(url)
            .ok_or(PeerCallError::NotSent(member))?;
        channels.insert(member, (urls.to_vec(), channel.clone()));
        Ok(channel)
    }

    fn connect_lazy(&self, url: &str) -> Option<Channel> {
        connect_lazy(url, self.tls.as_ref())
    }

    /// A request with the metadata that identifies this member and its cluster.
    pub(super) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(v) = format!("{:x}", self.cluster_id).parse() {
            metadata.insert(CLUSTER_ID_HEADER, v);
        }
        if let Ok(v) = format!("{:x}", self.local_id).parse() {
            metadata.insert(FROM_HEADER, v);
        }
        request
    }

    pub(super) fn client(
        &self,
        member: u64,
        urls: &[String],
    ) -> Result<PeerClient<Channel>, PeerCallError> {
        if self.faults.outbound(member) == Some(Outbound::Drop) {
            return Err(PeerCallError::NotSent(member));
        }
        Ok(PeerClient::new(self.channel(member, urls)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }

    /// Turns a failed call into what the caller can do about it, and notices the two answers
    /// that concern this member itself (removed, or of another cluster).
    pub(super) fn call_error(&self, member: u64, status: Status) -> PeerCallError {
        METRICS
            .peer_sent_failures
            .with_label_values(&[&format!("{member:x}")])
            .inc();
        if status.code() == Code::FailedPrecondition && status.message() == REMOVED_MESSAGE {
            (self.on_removed)();
        }
        if status.code() == Code::FailedPrecondition
            && status.message().starts_with(CLUSTER_MISMATCH_MESSAGE)
        {
            (self.on_cluster_mismatch)(member, status.message().to_string());
        }
        if was_not_sent(&status) {
            return PeerCallError::NotSent(member);
        }
        if broke_after_sent(&status) {
            return PeerCallError::Broken(member);
        }
        PeerCallError::Failed(etcd_error_of(&status))
    }

    /// One unary call to `member` bounded by `timeout`, through the test-only fault rules
    /// (faults.rs): a blackholed call is never sent, a call without reply is sent and its answer
    /// dropped, both end at the deadline as a lost packet would make them.
    async fn unary_to<T>(
        &self,
        member: u64,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        let deadline_exceeded = || Status::deadline_exceeded(EtcdError::Timeout.to_string());
        match self.faults.outbound(member) {
            None | Some(Outbound::Drop) => unary(timeout, call).await,
            Some(Outbound::Delay(delay)) => {
                let delay = delay.min(timeout);
                tokio::time::sleep(delay).await;
                unary(timeout - delay, call).await
            }
            Some(Outbound::Blackhole) => {
                drop(call);
                tokio::time::sleep(timeout).await;
                Err(deadline_exceeded())
            }
            Some(Outbound::NoReply) => {
                let started = tokio::time::Instant::now();
                let _lost = unary(timeout, call).await;
                tokio::time::sleep_until(started + timeout).await;
                Err(deadline_exceeded())
            }
        }
    }

    /// Applies the fault rules to a snapshot transfer to `member`: a transfer over a lossy link
    /// fails (openraft retries it), a slow link starts it later.
    async fn snapshot_link(&self, member: u64) -> Result<(), ()> {
        match self.faults.outbound(member) {
            None => Ok(()),
            Some(Outbound::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Some(Outbound::Drop) => Err(()),
            Some(Outbound::Blackhole) | Some(Outbound::NoReply) => {
                tokio::time::sleep(SNAPSHOT_LOSS_WAIT).await;
                Err(())
            }
        }
    }

    pub(super) fn count_sent(&self, member: u64, bytes: usize) {
        METRICS
            .peer_sent_bytes
            .with_label_values(&[&format!("{member:x}")])
            .inc_by(bytes as u64);
    }

    pub async fn propose(
        &self,
        leader: u64,
        urls: &[String],
        request: &RaftRequest,
        timeout: Duration,
    ) -> Result<ProposeResponse, PeerCallError> {
        let mut client = self.client(leader, urls)?;
        self.count_sent(leader, request.encoded_len());
        let call = client.propose(self.request(request.clone()));
        self.unary_to(leader, timeout, call)
            .await
            .map_err(|s| self.call_error(leader, s))
    }

    /// Proposes `requests` on the leader in one call; one result per request, in order. A
    /// leader without ProposeBatch (an older keelson) gets them one Propose each.
    pub async fn propose_batch(
        &self,
        leader: u64,
        urls: &[String],
        requests: Vec<RaftRequest>,
        timeout: Duration,
    ) -> Result<Vec<Result<ProposeResponse, PeerCallError>>, PeerCallError> {
        let mut client = self.client(leader, urls)?;
        let count = requests.len();
        let bytes = requests.iter().map(|r| r.encoded_len()).sum::<usize>();
        let batch = ProposeBatchRequest { requests };
        let call = client.propose_batch(self.request(batch.clone()));
        let outcome = self.unary_to(leader, timeout, call).await;
        if !matches!(&outcome, Err(status) if status.code() == Code::Unimplemented) {
            // The fallback below counts its own calls' bytes.
            self.count_sent(leader, bytes);
        }
        let answer = match outcome {
            Ok(answer) => answer,
            Err(status) if status.code() == Code::Unimplemented => {
                let one_by_one = batch
                    .requests
                    .iter()
                    .map(|request| self.propose(leader, urls, request, timeout));
                return Ok(futures::future::join_all(one_by_one).await);
            }
            Err(status) => return Err(self.call_error(leader, status)),
        };
        if answer.results.len() != count {
            return Err(PeerCallError::Failed(EtcdError::Internal(format!(
                "{} results for {count} proposals",
                answer.results.len()
            ))));
        }
        Ok(answer
            .results
            .into_iter()
            .map(|result| match result.answer {
                Some(answer) => Ok(answer),
                None => Err(self.call_error(
                    leader,
                    Status::new(Code::from_i32(result.code), result.message),
                )),
            })
            .collect())
    }

    pub async fn read_index(
        &self,
        leader: u64,
        urls: &[String],
        timeout: Duration,
    ) -> Result<u64, PeerCallError> {
        let mut client = self.client(leader, urls)?;
        let call = client.read_index(self.request(ReadIndexRequest {}));
        self.unary_to(leader, timeout, call)
            .await
            .map(|r| r.index)
            .map_err(|s| self.call_error(leader, s))
    }

    pub async fn lease_keep_alive(
        &self,
        leader: u64,
        urls: &[String],
        id: i64,
        timeout: Duration,
    ) -> Result<LeaseKeepAliveResponse, PeerCallError> {
        let mut client = self.client(leader, urls)?;
        let call = client.lease_keep_alive(self.request(LeaseKeepAliveRequest { id }));
        self.unary_to(leader, timeout, call)
            .await
            .map_err(|s| self.call_error(leader, s))
    }

    pub async fn lease_time_to_live(
        &self,
        leader: u64,
        urls: &[String],
        request: LeaseTimeToLiveRequest,
        timeout: Duration,
    ) -> Result<LeaseTimeToLiveResponse, PeerCallError> {
        let mut client = self.client(leader, urls)?;
        let call = client.lease_time_to_live(self.request(request));
        self.unary_to(leader, timeout, call)
            .await
            .map_err(|s| self.call_error(leader, s))
    }

    pub async fn change_members(
        &self,
        leader: u64,
        urls: &[String],
        change: MembershipChange,
        timeout: Duration,
    ) -> Result<MembershipChangeResponse, PeerCallError> {
        let mut client = self.client(leader, urls)?;
        let call = client.change_members(self.request(change));
        self.unary_to(leader, timeout, call)
            .await
            .map_err(|s| self.call_error(leader, s))
    }

    /// The cluster as the member at `url` knows it.
    pub async fn get_cluster(&self, url: &str, timeout: Duration) -> Result<ClusterInfo, String> {
        fetch_cluster(url, self.tls.as_ref(), timeout).await
    }

    /// Since when `member` has been reachable without interruption, if it is.
    pub fn active_since(&self, member: u64) -> Option<Instant> {
        self.active_since
            .lock()
            .ok()
            .and_then(|a| a.get(&member).copied())
    }

    fn record_activity(&self, member: u64, active: bool) {
        if let Ok(mut all) = self.active_since.lock() {
            if active {
                all.entry(member).or_insert_with(Instant::now);
            } else {
                all.remove(&member);
            }
        }
    }

    pub fn faults(&self) -> &Arc<PeerFaults> {
        &self.faults
    }

    pub fn local_id(&self) -> u64 {
        self.local_id
    }
}

/// A lazily connected channel to the peer URL `url` (also used for client URLs by
/// `keelson auth-bootstrap`).
pub(crate) fn connect_lazy(url: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Option<Channel> {
    let uri: Uri = url.parse().ok()?;
    let https = uri.scheme_str() == Some("https");
    let authority = uri.authority()?.clone();
    // The connector below does TLS itself (certificates from etcd's peer flags, or none
    // checked with --peer-auto-tls), so tonic sees a plain http endpoint.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .ok()?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20);
    if !https {
        return Some(endpoint.connect_lazy());
    }
    let tls = match tls {
        Some(tls) => tls.clone(),
        None => {
            tracing::warn!(url, "https peer URL but no peer TLS configured");
            return None;
        }
    };
    let connector = tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move { connect_tls(uri, tls).await }
    });
    Some(endpoint.connect_with_connector_lazy(connector))
}

/// The cluster as the member at peer URL `url` knows it (for joining, and the bootstrap checks).
/// The channel is throwaway: this member may not know its own ID yet.
pub async fn fetch_cluster(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<ClusterInfo, String> {
    let channel = connect_lazy(url, tls).ok_or_else(|| format!("cannot connect to {url}"))?;
    let mut client = PeerClient::new(channel);
    let call = client.get_cluster(tonic::Request::new(GetClusterRequest {}));
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => Err(format!("no answer from {url} within {timeout:?}")),
    }
}

/// Asks the member at peer URL `url` (the leader) for a membership change on behalf of a
/// process that is not a running member here: a member joining with --join-seeds, or
/// `keelson leave`. `cluster_id` is the cluster's, as the peer protocol requires it.
pub async fn change_members_at(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    cluster_id: u64,
    change: MembershipChange,
    timeout: Duration,
) -> Result<u64, EtcdError> {
    let channel = connect_lazy(url, tls)
        .ok_or_else(|| EtcdError::Internal(format!("cannot connect to {url}")))?;
    let mut client = PeerClient::new(channel);
    let mut request = tonic::Request::new(change);
    if let Ok(v) = format!("{cluster_id:x}").parse() {
        request.metadata_mut().insert(CLUSTER_ID_HEADER, v);
    }
    match tokio::time::timeout(timeout, client.change_members(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner().applied_index),
        Ok(Err(status)) if was_not_sent(&status) => Err(EtcdError::NoLeader),
        // As etcd answers a proposal whose leader failed under it.
        Ok(Err(status)) if broke_after_sent(&status) => Err(EtcdError::TimeoutDueToLeaderFail),
        Ok(Err(status)) => Err(etcd_error_of(&status)),
        Err(_) => Err(EtcdError::Timeout),
    }
}

async fn connect_tls(
    uri: Uri,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let host = uri
        .host()
        .ok_or_else(|| std::io::Error::other("peer URL without a host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from(host)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    Ok(TokioIo::new(stream))
}

async fn unary<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(EtcdError::Timeout.to_string())),
    }
}

/// Whether a failed call certainly never reached the peer: the connection was refused or could
/// not be made, or it had closed before the request was handed to it, so the request may be
/// sent elsewhere without risk of applying it twice.
fn was_not_sent(status: &Status) -> bool {
    if !matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    ) {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        // hyper cancels a request only while it still holds it unsent: the connection was not
        // ready, or closed with the request still queued (a peer that has just died). A call
        // that broke after it was sent fails with an HTTP/2 error instead.
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        let text = error.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether a call that was sent failed on the way rather than with the peer's answer: the
/// transport's errors come as Unavailable or Unknown without one of etcd's messages.
fn broke_after_sent(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown)
        && EtcdError::fixed_message(status.message()).is_none()
}

/// The etcd error a peer answered with (it travels as etcd's message).
fn etcd_error_of(status: &Status) -> EtcdError {
    match status.code() {
        Code::DeadlineExceeded => EtcdError::Timeout,
        _ => EtcdError::fixed_message(status.message())
            .unwrap_or_else(|| EtcdError::Internal(status.message().to_string())),
    }
}

/// openraft's network: a client per target, made by the factory below.
pub struct PeerNetwork {
    pool: Arc<PeerPool>,
}

impl PeerNetwork {
    pub fn new(pool: Arc<PeerPool>) -> Self {
        Self { pool }
    }
}

pub struct RaftPeer {
    pub(super) pool: Arc<PeerPool>,
    pub(super) target: NodeId,
    pub(super) urls: Vec<String>,
    pub(super) label: String,
    /// The peer answered `StreamAppend` with Unimplemented (an older keelson): replicate to it
    /// with unary AppendEntries calls.
    pub(super) stream_unsupported: AtomicBool,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> RaftPeer {
        RaftPeer {
            pool: self.pool.clone(),
            target,
            urls: node.peer_urls.clone(),
            label: format!("{target:x}"),
            stream_unsupported: AtomicBool::new(false),
        }
    }
}

impl RaftPeer {
    fn unreachable(&self, why: impl std::fmt::Display) -> Unreachable<TypeConfig> {
        Unreachable::new(&AnyError::error(format!("peer {}: {why}", self.label)))
    }

    pub(super) fn rpc_error(&self, error: PeerCallError) -> RPCError<TypeConfig> {
        match error {
            PeerCallError::NotSent(_) => RPCError::Unreachable(self.unreachable("unreachable")),
            e @ PeerCallError::Broken(_) => {
                RPCError::Network(NetworkError::new(&AnyError::error(e)))
            }
            PeerCallError::Failed(e) => RPCError::Network(NetworkError::new(&AnyError::error(e))),
        }
    }

    /// One openraft request-response call; `call` picks the RPC.
    async fn call<Req, Resp, F, Fut>(
        &self,
        request: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(PeerClient<Channel>, tonic::Request<RaftMessage>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, Status>>,
    {
        let message = wire::encode(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e.message()))))?;
        let client = self
            .pool
            .client(self.target, &self.urls)
            .map_err(|e| self.no_channel(e))?;
        self.pool.count_sent(self.target, message.payload.len());
        let started = Instant::now();
        let answer = self
            .pool
            .unary_to(
                self.target,
                option.soft_ttl(),
                call(client, self.pool.request(message)),
            )
            .await;
        match answer {
            Ok(answer) => self.answered(started, &answer),
            Err(status) => Err(self.failed_call(status)),
        }
    }

    /// The peer's answer to a call sent at `sent`: counted, and decoded.
    pub(super) fn answered<T: serde::de::DeserializeOwned>(
        &self,
        sent: Instant,
        answer: &RaftMessage,
    ) -> Result<T, RPCError<TypeConfig>> {
        self.set_active(true);
        METRICS
            .peer_round_trip_seconds
            .with_label_values(&[&self.label])
            .observe(sent.elapsed().as_secs_f64());
        METRICS
            .peer_received_bytes
            .with_label_values(&[&self.label])
            .inc_by(answer.payload.len() as u64);
        wire::decode(answer).map_err(|e| {
            RPCError::Network(NetworkError::new(&AnyError::error(format!(
                "undecodable answer from peer {}: {}",
                self.label,
                e.message()
            ))))
        })
    }

    /// No channel to the peer could be had (`PeerPool::client` failed), as openraft's error.
    pub(super) fn no_channel(&self, error: PeerCallError) -> RPCError<TypeConfig> {
        self.set_active(false);
        self.rpc_error(error)
    }

    /// A call to the peer that failed with `status`, as openraft's error.
    pub(super) fn failed_call(&self, status: Status) -> RPCError<TypeConfig> {
        let error = self.pool.call_error(self.target, status);
        // As etcd's transport: a member stops counting as connected when the connection
        // fails, not when one call is slow.
        if matches!(error, PeerCallError::NotSent(_)) {
            self.set_active(false);
        }
        self.rpc_error(error)
    }

    pub(super) fn set_active(&self, active: bool) {
        self.pool.record_activity(self.target, active);
        METRICS
            .active_peers
            .with_label_values(&[&format!("{:x}", self.pool.local_id), &self.label])
            .set(i64::from(active));
    }
}

impl RaftNetworkV2<TypeConfig> for RaftPeer {
    type SnapshotData = crate::raft::snapshot::SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // The leader sends the rest next (PartialSuccess).
        let truncated = cap_entries(&mut rpc);
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        let heartbeat = rpc.entries.is_empty();
        let response: AppendEntriesResponse<TypeConfig> = self
            .call(&rpc, &option, |mut c, r| async move {
                c.append_entries(r).await
            })
            .await
            .inspect_err(|_| {
                if heartbeat {
                    METRICS.heartbeat_send_failures.inc();
                }
            })?;
        Ok(match response {
            AppendEntriesResponse::Success if truncated => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            other => other,
        })
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        append_stream::open(self, input, option)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: RaftSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let client = self
            .pool
            .client(self.target, &self.urls)
            .map_err(|_| StreamingError::Unreachable(self.unreachable("unreachable")))?;
        if self.pool.snapshot_link(self.target).await.is_err() {
            return Err(StreamingError::Unreachable(
                self.unreachable("the link is cut (fault injection)"),
            ));
        }
        let started = Instant::now();
        let send = snapshot_transfer::send(client, &self.pool, self.target, vote, snapshot);
        let outcome = tokio::select! {
            outcome = send => outcome,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let to = [self.label.as_str()];
        match outcome {
            Ok(response) => {
                METRICS.snapshot_send_success.with_label_values(&to).inc();
                METRICS
                    .snapshot_send_seconds
                    .with_label_values(&to)
                    .observe(started.elapsed().as_secs_f64());
                Ok(response)
            }
            Err(e) => {
                METRICS.snapshot_send_failures.with_label_values(&to).inc();
                tracing::warn!(peer = %self.label, error = %e, "sending a snapshot failed; it will be retried");
                Err(StreamingError::Network(NetworkError::new(
                    &AnyError::error(e),
                )))
            }
        }
    }
}

/// Caps the bytes of one AppendEntries at `APPEND_BYTES_BUDGET` (keeping at least one entry);
/// true when entries were left out.
pub(super) fn cap_entries(rpc: &mut AppendEntriesRequest<TypeConfig>) -> bool {
    let mut kept = 0;
    let mut bytes = 0;
    for entry in &rpc.entries {
        let size = entry_size(entry);
        if kept > 0 && bytes + size > APPEND_BYTES_BUDGET {
            break;
        }
        kept += 1;
        bytes += size;
    }
    let capped = kept < rpc.entries.len();
    if capped {
        rpc.entries.truncate(kept);
    }
    capped
}

/// Bytes an entry takes on the wire, roughly (its payload dominates).
fn entry_size(entry: &crate::raft::types::Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(p) => p.0.len() + 32,
        _ => 256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error hyper gives a request on an HTTP/2 connection that has already ended (as a
    /// peer's does when it dies): the request is handed back unsent.
    async fn request_on_an_ended_connection() -> Status {
        let (ours, _theirs) = tokio::io::duplex(64 * 1024);
        let (mut send, connection) = hyper::client::conn::http2::handshake::<_, _, String>(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(ours),
        )
        .await
        .expect("an HTTP/2 handshake over a pipe");
        drop(connection);
        let error = send
            .send_request(http::Request::new(String::new()))
            .await
            .expect_err("a request on an ended connection");
        Status::from_error(Box::new(error))
    }

    #[tokio::test]
    async fn a_request_on_an_ended_connection_was_not_sent() {
        let status = request_on_an_ended_connection().await;
        assert_eq!(status.code(), Code::Cancelled, "{status:?}");
        assert!(
            was_not_sent(&status),
            "hyper's cancelled request may go to the next leader: {status:?}"
        );
    }

    #[test]
    fn a_call_the_peer_cancelled_may_have_been_applied() {
        // An HTTP/2 CANCEL from the peer comes after the request reached it.
        let status = Status::cancelled("h2 protocol error: stream cancelled");
        assert!(!was_not_sent(&status));
        assert!(!was_not_sent(&Status::unavailable("connection reset")));
    }

    #[test]
    fn a_broken_call_is_told_apart_from_the_peers_answer() {
        assert!(broke_after_sent(&Status::unavailable("connection reset")));
        assert!(broke_after_sent(&Status::unknown(
            "error reading a body from connection"
        )));
        // The same codes carrying one of etcd's messages are the peer's own answer.
        let answered = Status::unavailable(EtcdError::NoLeader.to_string());
        assert!(!broke_after_sent(&answered));
        assert_eq!(etcd_error_of(&answered), EtcdError::NoLeader);
        assert!(!broke_after_sent(&Status::deadline_exceeded("timeout")));
        assert_eq!(
            etcd_error_of(&Status::deadline_exceeded("timeout")),
            EtcdError::Timeout
        );
    }
}
