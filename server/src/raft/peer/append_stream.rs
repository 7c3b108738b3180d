//! openraft's replication to one follower on one long-lived gRPC stream (`Peer/StreamAppend`).
//!
//! The leader sends each AppendEntries as openraft makes it, without waiting for the answer to
//! the one before, and the follower answers them in order. With one unary call per request, a
//! batch of entries waited for the previous call's round trip before it was even sent
//! (bench/results/perf-push-2.md, step 27).
//!
//! Failures end the stream and openraft opens the next one. The fault-injection rules act on the
//! stream as they do on unary calls: a rule for the follower ends the stream at the next request,
//! and the session after it goes through the unary path, which applies the rule.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use openraft::OptionalSend;
use tonic::{Code, Status};

use super::client::{cap_entries, PeerPool, RaftPeer};
use super::wire;
use crate::error::EtcdError;
use crate::metrics::METRICS;
use crate::proto::peerpb::RaftMessage;
use crate::raft::types::{NodeId, TypeConfig};

type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// The requests sent on one stream and not answered yet, oldest first: when each was sent, and
/// whether it carried no entries (a heartbeat or a commit notice).
#[derive(Default)]
struct Unanswered(Mutex<VecDeque<(Instant, bool)>>);

impl Unanswered {
    fn push(&self, sent: Instant, without_entries: bool) {
        if let Ok(mut queue) = self.0.lock() {
            queue.push_back((sent, without_entries));
        }
    }

    fn pop(&self) -> Option<(Instant, bool)> {
        self.0.lock().ok().and_then(|mut queue| queue.pop_front())
    }

    fn oldest(&self) -> Option<(Instant, bool)> {
        self.0.lock().ok().and_then(|queue| queue.front().copied())
    }
}

/// `RaftNetworkV2::stream_append` for `peer`.
pub(super) fn open<'s, S>(
    peer: &'s mut RaftPeer,
    input: S,
    option: RPCOption,
) -> BoxFuture<'s, Result<BoxStream<'s, Answer>, RPCError<TypeConfig>>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
{
    let link_has_a_rule = peer.pool.faults().outbound(peer.target).is_some();
    if link_has_a_rule || peer.stream_unsupported.load(Ordering::Relaxed) {
        return openraft::network::stream_append_sequential(peer, input, option);
    }
    let peer: &'s RaftPeer = peer;
    Box::pin(async move {
        // The first request is taken before the stream opens, so that a heartbeat (a stream of
        // one request without entries) that cannot be delivered counts as one.
        let mut input = input;
        let Some(first) = input.next().await else {
            let nothing: BoxStream<'s, Answer> = Box::pin(futures::stream::empty());
            return Ok(nothing);
        };
        let heartbeat = first.entries.is_empty();
        let input = futures::stream::iter([first]).chain(input);
        let mut client = peer
            .pool
            .client(peer.target, &peer.urls)
            .map_err(|e| failed(heartbeat, peer.no_channel(e)))?;
        let unanswered = Arc::new(Unanswered::default());
        let requests = outgoing(input, peer.pool.clone(), peer.target, unanswered.clone());
        let ttl = option.soft_ttl();
        let opened =
            tokio::time::timeout(ttl, client.stream_append(peer.pool.request(requests))).await;
        let answers = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                // A member of an older keelson: replicate to it with unary calls from now on.
                if status.code() == Code::Unimplemented {
                    peer.stream_unsupported.store(true, Ordering::Relaxed);
                }
                return Err(failed(heartbeat, peer.failed_call(status)));
            }
            Err(_) => {
                let timeout = Status::deadline_exceeded(EtcdError::Timeout.to_string());
                return Err(failed(heartbeat, peer.failed_call(timeout)));
            }
        };
        Ok(incoming(peer, answers, unanswered, ttl))
    })
}

/// The request side: openraft's requests as they come, capped in size, until the input ends, the
/// link gets a fault rule, or a capped request has gone out.
fn outgoing<S>(
    input: S,
    pool: Arc<PeerPool>,
    target: NodeId,
    unanswered: Arc<Unanswered>,
) -> impl Stream<Item = RaftMessage> + Send + 'static
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
{
    let link_has_a_rule = move |pool: &PeerPool| pool.faults().outbound(target).is_some();
    futures::stream::unfold(
        (input, pool, unanswered, false),
        move |(mut input, pool, unanswered, capped)| async move {
            if capped || link_has_a_rule(&pool) {
                return None;
            }
            let mut rpc = input.next().await?;
            if link_has_a_rule(&pool) {
                return None;
            }
            // A capped request is answered for the entries it kept. openraft ends the session
            // with that answer and starts the next one from there, as after a unary call's
            // PartialSuccess, so nothing may follow it on this stream.
            let capped = cap_entries(&mut rpc);
            let message = match wire::encode(&rpc) {
                Ok(message) => message,
                Err(status) => {
                    tracing::warn!(peer = %format!("{target:x}"), error = %status.message(), "cannot send an AppendEntries");
                    return None;
                }
            };
            pool.count_sent(target, message.payload.len());
            unanswered.push(Instant::now(), rpc.entries.is_empty());
            Some((message, (input, pool, unanswered, capped)))
        },
    )
}

/// The answer side: each answer decoded, until the follower ends the stream or an answer is
/// later than `ttl` after its request.
fn incoming<'s>(
    peer: &'s RaftPeer,
    answers: tonic::Streaming<RaftMessage>,
    unanswered: Arc<Unanswered>,
    ttl: Duration,
) -> BoxStream<'s, Answer> {
    let answers = futures::stream::unfold(Some(answers), move |answers| {
        let unanswered = unanswered.clone();
        async move {
            let mut answers = answers?;
            match next_answer(&mut answers, &unanswered, ttl).await {
                Ok(Some(message)) => {
                    let answer = received(peer, &unanswered, &message);
                    let go_on = answer.is_ok();
                    Some((answer, go_on.then_some(answers)))
                }
                Ok(None) => None,
                Err(status) => {
                    let heartbeat = unanswered
                        .oldest()
                        .is_some_and(|(_, without_entries)| without_entries);
                    Some((Err(failed(heartbeat, peer.failed_call(status))), None))
                }
            }
        }
    });
    Box::pin(answers)
}

/// The next answer, or a deadline error once the oldest unanswered request is `ttl` old.
async fn next_answer(
    answers: &mut tonic::Streaming<RaftMessage>,
    unanswered: &Unanswered,
    ttl: Duration,
) -> Result<Option<RaftMessage>, Status> {
    loop {
        let deadline = match unanswered.oldest() {
            Some((sent, _)) => sent + ttl,
            // Nothing is awaited: look again after `ttl`, for requests sent meanwhile.
            None => Instant::now() + ttl,
        };
        match tokio::time::timeout_at(deadline.into(), answers.message()).await {
            Ok(answer) => return answer,
            Err(_) => {
                let late = unanswered
                    .oldest()
                    .is_some_and(|(sent, _)| sent.elapsed() >= ttl);
                if late {
                    return Err(Status::deadline_exceeded(EtcdError::Timeout.to_string()));
                }
            }
        }
    }
}

fn received(peer: &RaftPeer, unanswered: &Unanswered, message: &RaftMessage) -> Answer {
    let sent = unanswered.pop().map_or_else(Instant::now, |(sent, _)| sent);
    peer.answered(sent, message)
}

/// Counts a failed heartbeat (`heartbeat`: the request that failed carried no entries), as the
/// unary path does, and passes `error` on.
fn failed(heartbeat: bool, error: RPCError<TypeConfig>) -> RPCError<TypeConfig> {
    if heartbeat {
        METRICS.heartbeat_send_failures.inc();
    }
    error
}
