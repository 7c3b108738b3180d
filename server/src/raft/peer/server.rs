//! The server side of the peer protocol, on --listen-peer-urls: openraft's RPCs, what the
//! leader does for its followers, and etcd's peer HTTP endpoints (`/members`, `/version`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, TransferLeaderRequest,
    VoteRequest,
};
use openraft::Snapshot;
use tonic::codegen::BoxStream;
use tonic::server::NamedService;
use tonic::{Request, Status, Streaming};

use super::client::{
    CLUSTER_ID_HEADER, CLUSTER_MISMATCH_MESSAGE, FROM_HEADER, MAX_PEER_MESSAGE_BYTES,
    REMOVED_MESSAGE,
};
use super::faults::{HTTP_PATH, RULES_HTTP_PATH};
use super::wire;
use crate::metrics::METRICS;
use crate::proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    Member as PbMember,
};
use crate::proto::peerpb::peer_server::{Peer, PeerServer};
use crate::proto::peerpb::{
    ClusterInfo, GetClusterRequest, MembershipChange, MembershipChangeResponse,
    ProposeBatchRequest, ProposeBatchResponse, ProposeResponse, ProposeResult, RaftMessage,
    ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use crate::proto::raftpb::RaftRequest;
use crate::raft::types::TypeConfig;
use crate::raft::RaftNode;

pub struct PeerService {
    node: Arc<RaftNode>,
}

/// What the peer listener answers with: the peer protocol's gRPC calls go straight to its
/// service, anything else to the HTTP router. Every replicated entry crosses here on each
/// follower, so the call skips the two router levels (axum's and tonic's) it went through
/// before (bench/results/perf-push-2.md, step 16).
#[derive(Clone)]
pub struct PeerFrontDoor {
    grpc: PeerServer<PeerService>,
    http: axum::Router,
}

impl tower::Service<axum::http::Request<axum::body::Body>> for PeerFrontDoor {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<axum::body::Body>) -> Self::Future {
        if is_peer_grpc(request.uri().path()) {
            let answer = self.grpc.call(request);
            Box::pin(async move { Ok(answer.await?.map(axum::body::Body::new)) })
        } else {
            Box::pin(self.http.call(request))
        }
    }
}

/// `/keelson.peerpb.Peer/<method>`.
fn is_peer_grpc(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(<PeerServer<PeerService> as NamedService>::NAME))
        .is_some_and(|method| method.starts_with('/'))
}

/// The peer listener's front door.
pub fn front_door(node: Arc<RaftNode>) -> PeerFrontDoor {
    PeerFrontDoor {
        grpc: PeerServer::new(PeerService { node: node.clone() })
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
        http: http_router(node),
    }
}

/// etcd's peer HTTP endpoints, and the fault-injection ones when enabled.
fn http_router(node: Arc<RaftNode>) -> axum::Router {
    let mut http = axum::Router::new()
        .route("/members", get(members))
        .route("/version", get(version));
    if node.cluster.faults.enabled() {
        http = http
            .route(HTTP_PATH, get(get_faults).put(put_faults))
            .route(RULES_HTTP_PATH, get(get_rules).put(put_rules));
    }
    if crate::storage::faults::disk_faults().enabled() {
        http = http.route(
            crate::storage::faults::HTTP_PATH,
            get(get_fsync_delay).put(put_fsync_delay),
        );
    }
    http.fallback(crate::http::unknown_path).with_state(node)
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

impl PeerService {
    /// etcd's checks on every peer message: the sender is of this cluster, not removed, and
    /// (under fault injection) not cut off. Returns the sender's ID.
    fn admit<T>(&self, request: &Request<T>) -> Result<u64, Status> {
        let metadata = request.metadata();
        let header = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| u64::from_str_radix(v, 16).ok())
        };
        let from = header(FROM_HEADER).unwrap_or(0);
        let cluster = &self.node.cluster;
        if let Some(got) = header(CLUSTER_ID_HEADER) {
            if got != cluster.cluster_id {
                tracing::error!(
                    "request cluster ID mismatch (got {} want {})",
                    hex(got),
                    hex(cluster.cluster_id)
                );
                return Err(Status::failed_precondition(format!(
                    "{CLUSTER_MISMATCH_MESSAGE}: {}",
                    hex(cluster.cluster_id)
                )));
            }
        }
        still_admitted(&self.node, from)?;
        Ok(from)
    }

    fn answer<T: serde::Serialize>(
        &self,
        to: u64,
        answer: &T,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let message = wire::encode(answer)?;
        count_sent(to, message.payload.len());
        Ok(tonic::Response::new(message))
    }
}

fn link_cut() -> Status {
    Status::unavailable("the link to this member is cut (fault injection)")
}

/// The checks of `admit` that can change while a stream is open, made again on each of its
/// messages: the link cut (fault injection) or the sender removed since.
fn still_admitted(node: &RaftNode, from: u64) -> Result<(), Status> {
    if node.cluster.faults.is_blocked(from) {
        return Err(link_cut());
    }
    if node.cluster.is_removed(from) {
        return Err(Status::failed_precondition(REMOVED_MESSAGE));
    }
    Ok(())
}

/// The leader each AppendEntries on a stream came from (when its vote is committed), oldest
/// first, until its answer goes out.
type Senders = Arc<Mutex<VecDeque<Option<u64>>>>;

/// A stream's AppendEntries requests, decoded, until the leader ends the stream or a message
/// is refused; the refusal is kept for the answer stream to end with.
fn stream_requests(
    node: Arc<RaftNode>,
    from: u64,
    messages: Streaming<RaftMessage>,
    senders: Senders,
    refusal: Arc<Mutex<Option<Status>>>,
) -> impl futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static {
    futures::stream::unfold(messages, move |mut messages| {
        let (node, senders, refusal) = (node.clone(), senders.clone(), refusal.clone());
        async move {
            let message = messages.message().await.ok()??;
            let admitted = still_admitted(&node, from)
                .and_then(|()| wire::decode::<AppendEntriesRequest<TypeConfig>>(&message));
            let rpc = match admitted {
                Ok(rpc) => rpc,
                Err(status) => {
                    if let Ok(mut refusal) = refusal.lock() {
                        *refusal = Some(status);
                    }
                    return None;
                }
            };
            count_received(from, message.payload.len());
            if let Ok(mut senders) = senders.lock() {
                senders.push_back(rpc.vote.committed.then_some(rpc.vote.leader_id.voted_for));
            }
            Some((rpc, messages))
        }
    })
}

fn count_received(from: u64, bytes: usize) {
    METRICS
        .peer_received_bytes
        .with_label_values(&[&hex(from)])
        .inc_by(bytes as u64);
}

fn count_sent(to: u64, bytes: usize) {
    METRICS
        .peer_sent_bytes
        .with_label_values(&[&hex(to)])
        .inc_by(bytes as u64);
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft stopped: {e}"))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let from = self.admit(&request)?;
        count_received(from, request.get_ref().payload.len());
        let rpc: AppendEntriesRequest<TypeConfig> = wire::decode(request.get_ref())?;
        let leader = rpc.vote.leader_id.voted_for;
        let committed_leader = rpc.vote.committed;
        let response = self.node.raft.append_entries(rpc).await.map_err(fatal)?;
        if committed_leader && !matches!(response, AppendEntriesResponse::HigherVote(_)) {
            self.node.cluster.heard_from_leader(leader);
        }
        self.answer(from, &response)
    }

    async fn stream_append(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<tonic::Response<BoxStream<RaftMessage>>, Status> {
        let from = self.admit(&request)?;
        let senders = Senders::default();
        let refusal = Arc::new(Mutex::new(None));
        let requests = stream_requests(
            self.node.clone(),
            from,
            request.into_inner(),
            senders.clone(),
            refusal.clone(),
        );
        let node = self.node.clone();
        let answers = self.node.raft.stream_append(requests).map(move |answer| {
            let answer = answer.map_err(fatal)?;
            let sender = senders
                .lock()
                .ok()
                .and_then(|mut s| s.pop_front())
                .flatten();
            if let Some(leader) = sender {
                if !matches!(answer, Err(StreamAppendError::HigherVote(_))) {
                    node.cluster.heard_from_leader(leader);
                }
            }
            let message = wire::encode(&answer)?;
            count_sent(from, message.payload.len());
            Ok(message)
        });
        // After the answers to what was admitted, the refusal that ended the requests.
        let refused = futures::stream::once(async move {
            refusal.lock().ok().and_then(|mut r| r.take()).map(Err)
        })
        .filter_map(std::future::ready);
        Ok(tonic::Response::new(Box::pin(answers.chain(refused))))
    }

    async fn vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let from = self.admit(&request)?;
        count_received(from, request.get_ref().payload.len());
        let rpc: VoteRequest<TypeConfig> = wire::decode(request.get_ref())?;
        let response = self.node.raft.vote(rpc).await.map_err(fatal)?;
        self.answer(from, &response)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let from = self.admit(&request)?;
        count_received(from, request.get_ref().payload.len());
        let rpc: VoteRequest<TypeConfig> = wire::decode(request.get_ref())?;
        let response = self.node.raft.pre_vote(rpc).await.map_err(fatal)?;
        self.answer(from, &response)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let from = self.admit(&request)?;
        let rpc: TransferLeaderRequest<TypeConfig> = wire::decode(request.get_ref())?;
        let response = self
            .node
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(fatal)?;
        self.answer(from, &response)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<tonic::Response<RaftMessage>, Status> {
        let from = self.admit(&request)?;
        let label = hex(from);
        let started = Instant::now();
        let received = self.node.incoming.receive(request.into_inner()).await;
        let received = match received {
            Ok(r) => r,
            Err(e) => {
                METRICS
                    .snapshot_receive_failures
                    .with_label_values(&[&label])
                    .inc();
                tracing::warn!(peer = %label, error = %e.message(), "receiving a snapshot failed");
                return Err(e);
            }
        };
        let dir = received.data.dir.clone();
        let leader = received.vote.leader_id.voted_for;
        tracing::info!(
            peer = %label,
            snapshot = ?received.meta.last_log_id,
            "received a snapshot; installing it"
        );
        let installed = self
            .node
            .raft
            .install_full_snapshot(
                received.vote,
                Snapshot {
                    meta: received.meta,
                    snapshot: received.data,
                },
            )
            .await;
        // Installing links the files where the member keeps its snapshots.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let response = installed.map_err(|e| {
            METRICS
                .snapshot_receive_failures
                .with_label_values(&[&label])
                .inc();
            fatal(e)
        })?;
        self.node.cluster.heard_from_leader(leader);
        METRICS
            .snapshot_receive_success
            .with_label_values(&[&label])
            .inc();
        METRICS
            .snapshot_receive_seconds
            .with_label_values(&[&label])
            .observe(started.elapsed().as_secs_f64());
        self.answer(from, &response)
    }

    async fn propose(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<tonic::Response<ProposeResponse>, Status> {
        self.admit(&request)?;
        let (response, index) = self
            .node
            .propose_for_follower(request.get_ref())
            .await
            .map_err(Status::from)?;
        Ok(tonic::Response::new(ProposeResponse {
            response: Some(response),
            applied_index: index,
        }))
    }

    async fn propose_batch(
        &self,
        request: Request<ProposeBatchRequest>,
    ) -> Result<tonic::Response<ProposeBatchResponse>, Status> {
        self.admit(&request)?;
        // Proposed together, so openraft appends them as one run of entries; each answered as
        // its own Propose would have been.
        let results = self
            .node
            .propose_many_for_follower(&request.get_ref().requests)
            .await
            .into_iter()
            .map(|outcome| match outcome {
                Ok((response, applied_index)) => ProposeResult {
                    answer: Some(ProposeResponse {
                        response: Some(response),
                        applied_index,
                    }),
                    ..ProposeResult::default()
                },
                Err(e) => {
                    let status = Status::from(e);
                    ProposeResult {
                        answer: None,
                        code: status.code() as i32,
                        message: status.message().to_string(),
                    }
                }
            })
            .collect();
        Ok(tonic::Response::new(ProposeBatchResponse { results }))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<tonic::Response<ReadIndexResponse>, Status> {
        self.admit(&request)?;
        let index = self.node.read_index_here().await.map_err(Status::from)?;
        Ok(tonic::Response::new(ReadIndexResponse { index }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Result<tonic::Response<LeaseKeepAliveResponse>, Status> {
        self.admit(&request)?;
        let leases = self.node.leader_leases().map_err(Status::from)?;
        let answer = leases
            .keep_alive(request.get_ref().id)
            .await
            .map_err(Status::from)?;
        Ok(tonic::Response::new(answer))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<tonic::Response<LeaseTimeToLiveResponse>, Status> {
        self.admit(&request)?;
        let leases = self.node.leader_leases().map_err(Status::from)?;
        let answer = leases
            .time_to_live(request.into_inner())
            .await
            .map_err(Status::from)?;
        Ok(tonic::Response::new(answer))
    }

    async fn change_members(
        &self,
        request: Request<MembershipChange>,
    ) -> Result<tonic::Response<MembershipChangeResponse>, Status> {
        self.admit(&request)?;
        let index = self
            .node
            .change_members_here(request.into_inner())
            .await
            .map_err(Status::from)?;
        Ok(tonic::Response::new(MembershipChangeResponse {
            applied_index: index,
        }))
    }

    async fn get_cluster(
        &self,
        _request: Request<GetClusterRequest>,
    ) -> Result<tonic::Response<ClusterInfo>, Status> {
        Ok(tonic::Response::new(cluster_info(&self.node)))
    }
}

fn cluster_info(node: &RaftNode) -> ClusterInfo {
    ClusterInfo {
        cluster_id: node.cluster_id(),
        members: node
            .members()
            .into_iter()
            .map(|m| PbMember {
                id: m.id,
                name: m.node.name,
                peer_ur_ls: m.node.peer_urls,
                client_ur_ls: m.node.client_urls,
                is_learner: m.is_learner,
            })
            .collect(),
        removed_ids: node.cluster.removed().into_iter().collect(),
        member_id: node.member_id(),
        has_leader: node.ever_had_leader() || node.status().leader.is_some(),
        leader_id: node.status().leader.unwrap_or(0),
    }
}

/// etcd's `GET /members` on the peer URL: the members as JSON, the cluster ID in a header.
async fn members(State(node): State<Arc<RaftNode>>) -> Response {
    let members: Vec<serde_json::Value> = node
        .members()
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "id": hex(m.id),
                "name": m.node.name,
                "peerURLs": m.node.peer_urls,
                "clientURLs": m.node.client_urls,
                "isLearner": m.is_learner,
            })
        })
        .collect();
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&hex(node.cluster_id())) {
        headers.insert("X-Etcd-Cluster-ID", v);
    }
    (headers, axum::Json(members)).into_response()
}

/// etcd's `GET /version` on the peer URL.
async fn version() -> Response {
    axum::Json(serde_json::json!({
        "etcdserver": crate::version::ETCD_VERSION,
        "etcdcluster": crate::version::ETCD_CLUSTER_VERSION,
    }))
    .into_response()
}

async fn get_faults(State(node): State<Arc<RaftNode>>) -> Response {
    let list: Vec<String> = node.cluster.faults.blocked().into_iter().map(hex).collect();
    list.join(",").into_response()
}

async fn put_faults(State(node): State<Arc<RaftNode>>, body: String) -> Response {
    match node.cluster.faults.set_blocked(&body) {
        Ok(()) => {
            tracing::warn!(blocked = %body.trim(), "fault injection: peer links cut");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn get_rules(State(node): State<Arc<RaftNode>>) -> Response {
    node.cluster.faults.rules_text().into_response()
}

async fn put_rules(State(node): State<Arc<RaftNode>>, body: String) -> Response {
    match node.cluster.faults.set_rules(&body) {
        Ok(()) => {
            tracing::warn!(rules = %body.trim(), "fault injection: peer rules set");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn get_fsync_delay() -> Response {
    let delay = crate::storage::faults::disk_faults().fsync_delay();
    delay.as_millis().to_string().into_response()
}

async fn put_fsync_delay(body: String) -> Response {
    match crate::storage::faults::disk_faults().set_fsync_delay(&body) {
        Ok(()) => {
            tracing::warn!(ms = %body.trim(), "fault injection: fsync delay set");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}
