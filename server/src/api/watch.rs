//! etcdserverpb.Watch: one bidirectional stream carries many watches.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::watch_reply::{fragments, WatchReply};
use crate::error::EtcdError;
use crate::member::{Credentials, Member};
use crate::mvcc::read::KeyRange;
use crate::mvcc::watch::merge::take_queued;
use crate::mvcc::watch::{WatchMessage, WatchReceiver, WatchSpec, WatchStream};
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};

/// What the Watch method streams back ([`WatchReply`]: events shared, encoded once).
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<WatchReply, Status>> + Send>>;
/// The same as plain `WatchResponse`s, for the generated `Watch` trait and the JSON gateway.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

pub struct WatchService {
    member: Arc<Member>,
}

impl WatchService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }
}

/// Streams whose client sent `hasleader: true` must fail when the member has no leader.
pub fn requires_leader(metadata: &MetadataMap) -> bool {
    metadata
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

/// etcd's stream check: a stream that requires a leader is refused while there is none.
pub fn check_leader(metadata: &MetadataMap, leader: Option<u64>) -> Result<bool, Status> {
    let needs_leader = requires_leader(metadata);
    if needs_leader && leader.is_none() {
        return Err(EtcdError::NoLeader.into());
    }
    Ok(needs_leader)
}

impl WatchService {
    /// Serves one watch stream whose requests come from `request`: the gRPC stream, or the
    /// gateway's JSON body (the gateway calls this in-process, so checks on the stream and its
    /// metadata belong here).
    pub fn open<S>(&self, request: Request<S>) -> Result<ReplyStream, Status>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let needs_leader = check_leader(request.metadata(), self.member.raft_status().leader)?;
        let credentials = super::auth::credentials(&request);
        let requests = request.into_inner();
        let (stream, messages) = self.member.store().watch_hub().open_stream();
        tokio::spawn(read_requests(
            self.member.clone(),
            credentials,
            requests,
            stream,
        ));
        Ok(responses(self.member.clone(), messages, needs_leader))
    }

    /// [`Self::open`], its replies made plain `WatchResponse`s.
    pub fn open_plain<S>(&self, request: Request<S>) -> Result<ResponseStream, Status>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let replies = self.open(request)?;
        Ok(Box::pin(
            replies.map(|reply| reply.map(WatchReply::into_response)),
        ))
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        Ok(Response::new(self.open_plain(request)?))
    }
}

/// etcd's `isWatchPermitted`: the stream's credentials must allow reading the watched range,
/// checked again for every watch. A refusal cancels that watch with etcd's reason (the gRPC
/// error's text).
async fn refusal(
    member: &Member,
    credentials: &Credentials,
    create: &WatchCreateRequest,
) -> Option<String> {
    if !member.auth().is_enabled() && credentials.token.is_none() {
        return None;
    }
    let checked = match member.caller(credentials).await {
        // As etcd: an empty key is "\0". Unlike etcd 3.4, which checks only the first key of a
        // watch that runs to the end of the key space, the whole watched range is checked.
        Ok(caller) => {
            let key: &[u8] = if create.key.is_empty() {
                b"\0"
            } else {
                &create.key
            };
            member.auth().check_read(&caller, key, &create.range_end)
        }
        Err(e) => Err(e),
    };
    let error = match checked {
        Ok(()) => return None,
        Err(
            e @ (EtcdError::InvalidAuthToken | EtcdError::AuthOldRevision | EtcdError::UserEmpty),
        ) => e,
        Err(_) => EtcdError::PermissionDenied,
    };
    let status = Status::from(error);
    Some(format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    ))
}

/// Turns the client's requests into hub calls until the client stops sending.
async fn read_requests<S>(
    member: Arc<Member>,
    credentials: Credentials,
    mut requests: S,
    stream: WatchStream,
) where
    S: Stream<Item = Result<WatchRequest, Status>> + Unpin,
{
    while let Some(Ok(request)) = requests.next().await {
        let outcome = match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                match refusal(&member, &credentials, &create).await {
                    Some(reason) => stream.refuse(reason).await,
                    None => stream.watch(spec_of(create)).await,
                }
            }
            Some(RequestUnion::CancelRequest(cancel)) => stream.cancel(cancel.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => stream.request_progress().await,
            // etcd ignores what it does not understand rather than ending the stream.
            None => Ok(()),
        };
        if outcome.is_err() {
            break;
        }
    }
    // Dropping `stream` removes its watchers and ends the response stream.
}

fn spec_of(create: WatchCreateRequest) -> WatchSpec {
    // As etcd: an empty key means "\0", the smallest key.
    let key = if create.key.is_empty() {
        Bytes::from_static(b"\0")
    } else {
        create.key.clone()
    };
    let filters: Vec<FilterType> = create
        .filters
        .iter()
        .filter_map(|f| FilterType::try_from(*f).ok())
        .collect();
    WatchSpec {
        watch_id: create.watch_id,
        range: KeyRange::new(&key, &create.range_end),
        start_revision: create.start_revision,
        prev_kv: create.prev_kv,
        no_put: filters.contains(&FilterType::Noput),
        no_delete: filters.contains(&FilterType::Nodelete),
        progress_notify: create.progress_notify,
        fragment: create.fragment,
    }
}

/// The stream's responses, made from the hub's messages as gRPC asks for them: what queued
/// meanwhile is taken at once ([`take_queued`]). Ends the stream if a leader-requiring stream
/// loses its leader for three election timeouts, as etcd does.
fn responses(member: Arc<Member>, messages: WatchReceiver, needs_leader: bool) -> ReplyStream {
    let check_every = member.raft().election_timeout();
    let outgoing = Outgoing {
        leader_check: needs_leader.then(|| tokio::time::interval(check_every)),
        leaderless_since: None,
        member,
        messages,
        ready: VecDeque::new(),
        ended: false,
    };
    Box::pin(futures::stream::unfold(
        outgoing,
        |mut outgoing| async move {
            let next = outgoing.next().await?;
            Some((next, outgoing))
        },
    ))
}

struct Outgoing {
    member: Arc<Member>,
    messages: WatchReceiver,
    /// Responses made and not yet handed to gRPC.
    ready: VecDeque<WatchReply>,
    /// Ticks every election timeout, for streams that require a leader.
    leader_check: Option<tokio::time::Interval>,
    leaderless_since: Option<tokio::time::Instant>,
    ended: bool,
}

impl Outgoing {
    async fn next(&mut self) -> Option<Result<WatchReply, Status>> {
        loop {
            if let Some(response) = self.ready.pop_front() {
                return Some(Ok(response));
            }
            if self.ended {
                return None;
            }
            let leader_tick = async {
                match &mut self.leader_check {
                    Some(interval) => {
                        interval.tick().await;
                        interval.period()
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = self.messages.recv() => {
                    let first = message?;
                    let header = self.member.header(0);
                    for message in take_queued(first, &mut self.messages) {
                        self.ready.extend(to_responses(&self.member, &header, message));
                    }
                }
                check_every = leader_tick => {
                    if self.member.raft_status().leader.is_some() {
                        self.leaderless_since = None;
                        continue;
                    }
                    let since = *self
                        .leaderless_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= 3 * check_every {
                        self.ended = true;
                        return Some(Err(EtcdError::NoLeader.into()));
                    }
                }
            }
        }
    }
}

/// `header` is the member's, its revision replaced by each message's.
fn to_responses(
    member: &Member,
    header: &ResponseHeader,
    message: WatchMessage,
) -> Vec<WatchReply> {
    let response = |revision: i64, watch_id: i64| WatchResponse {
        header: Some(ResponseHeader {
            revision,
            ..*header
        }),
        watch_id,
        ..Default::default()
    };
    let head = match message {
        WatchMessage::Created { watch_id, revision } => WatchResponse {
            created: true,
            ..response(revision, watch_id)
        },
        WatchMessage::Refused {
            watch_id,
            revision,
            reason,
        } => WatchResponse {
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..response(revision, watch_id)
        },
        WatchMessage::Events {
            watch_id,
            revision,
            events,
            fragment,
        } => {
            let whole = WatchReply {
                head: response(revision, watch_id),
                events,
            };
            return if fragment {
                // etcd splits at its gRPC message limit: --max-request-bytes plus the overhead.
                fragments(
                    whole,
                    member.limits().max_request_bytes + super::GRPC_OVERHEAD_BYTES,
                )
            } else {
                vec![whole]
            };
        }
        WatchMessage::Compacted {
            watch_id,
            revision,
            compact_revision,
        } => WatchResponse {
            canceled: true,
            compact_revision,
            ..response(revision, watch_id)
        },
        WatchMessage::Canceled { watch_id, revision } => WatchResponse {
            canceled: true,
            ..response(revision, watch_id)
        },
        WatchMessage::Progress { watch_id, revision } => response(revision, watch_id),
    };
    vec![WatchReply {
        head,
        events: Vec::new(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_requiring_a_leader_is_refused_without_one() {
        let mut metadata = MetadataMap::new();
        assert_eq!(check_leader(&metadata, None).ok(), Some(false));
        metadata.insert("hasleader", "true".parse().expect("ascii"));
        assert_eq!(check_leader(&metadata, Some(7)).ok(), Some(true));
        let refused = check_leader(&metadata, None).expect_err("no leader");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(refused.message(), "etcdserver: no leader");
    }
}
