//! etcd's concurrency recipes (the Go client's `concurrency` package, which etcd's v3lock and
//! v3election servers run in-process) built on the member's own primitives: a key per session
//! under `<name>/`, named after the session's lease in hex, ordered by create revision.
//!
//! The key layout and the transactions are exactly the Go recipes', so a holder through the
//! Lock/Election services and one through etcdctl's client-side `lock`/`elect` exclude each
//! other. A waiter watches only its predecessor (the newest key created before its own), so a
//! release wakes one waiter, in order; a holder whose lease expires loses its key, which is a
//! release like any other.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Credentials, Member};
use crate::error::EtcdError;
use crate::mvcc::read::KeyRange;
use crate::mvcc::watch::{WatchMessage, WatchReceiver, WatchSpec, WatchStream};
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::KeyValue;

/// The TTL of the lease etcd's servers grant when a Lock or Campaign names no lease (the Go
/// session's default); the session is orphaned at once, so nothing renews it.
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// What the recipes answer; etcd's services send every one of them as gRPC `Unknown` with
/// this text (the in-process client turns even store errors into plain errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error("{0}")]
    Store(#[from] EtcdError),
    #[error("election: not leader")]
    NotLeader,
    #[error("election: no leader")]
    NoLeader,
    /// etcd 3.5's Mutex: the waiter's own key vanished (its lease expired) while it waited.
    #[error("mutex: session is expired")]
    SessionExpired,
    #[error("lost watcher waiting for delete")]
    LostWatcher,
}

pub type RecipeResult<T> = Result<T, RecipeError>;

/// A session's key under a recipe's prefix: Go's `fmt.Sprintf("%s%x", pfx, leaseID)` of a
/// signed ID.
pub fn session_key(prefix: &[u8], lease: i64) -> Bytes {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut key = Vec::with_capacity(prefix.len() + hex.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(hex.as_bytes());
    Bytes::from(key)
}

/// `<name>/`: every recipe keeps its sessions' keys under it.
pub fn recipe_prefix(name: &[u8]) -> Bytes {
    let mut prefix = Vec::with_capacity(name.len() + 1);
    prefix.extend_from_slice(name);
    prefix.push(b'/');
    Bytes::from(prefix)
}

/// etcd's prefix end: the prefix with its last byte below 0xff incremented, or `"\0"`.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// The oldest (or newest) key under `prefix`, optionally created at or before a revision.
fn by_create_revision(prefix: &Bytes, order: SortOrder, max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

fn created_at(key: &Bytes, revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

fn op(request: Op) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn get(key: &Bytes) -> RangeRequest {
    RangeRequest {
        key: key.clone(),
        ..Default::default()
    }
}

fn put(key: &Bytes, value: Bytes, lease: i64) -> Op {
    Op::RequestPut(PutRequest {
        key: key.clone(),
        value,
        lease,
        ..Default::default()
    })
}

fn range_of(resp: &TxnResponse, index: usize) -> Option<&RangeResponse> {
    match resp.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(OpResponse::ResponseRange(range)) => Some(range),
        _ => None,
    }
}

fn header_of(resp: &TxnResponse) -> ResponseHeader {
    resp.header.unwrap_or_default()
}

/// What to undo if a waiting request goes away (its client cancelled or disconnected): the Go
/// recipes undo it with the client's own context, which outlives the request's.
enum Undo {
    /// A Lock waiter's key.
    Delete(Bytes),
    /// A candidate's key, only while it is still the one this campaign created.
    Resign { key: Bytes, rev: i64 },
}

struct UndoOnDrop {
    member: Weak<Member>,
    /// The caller's: the undo is the caller's own write.
    credentials: Credentials,
    undo: Option<Undo>,
}

impl UndoOnDrop {
    fn new(member: &Arc<Member>, credentials: &Credentials, undo: Undo) -> Self {
        Self {
            member: Arc::downgrade(member),
            credentials: credentials.clone(),
            undo: Some(undo),
        }
    }

    fn disarm(mut self) {
        self.undo = None;
    }
}

impl Drop for UndoOnDrop {
    fn drop(&mut self) {
        let (Some(undo), Some(member)) = (self.undo.take(), self.member.upgrade()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let credentials = std::mem::take(&mut self.credentials);
        runtime.spawn(async move {
            let outcome = match undo {
                Undo::Delete(key) => member.unlock(&credentials, key).await.map(|_| ()),
                Undo::Resign { key, rev } => {
                    member.resign(&credentials, key, rev).await.map(|_| ())
                }
            };
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "could not remove an abandoned lock or election key");
            }
        });
    }
}

/// A campaign's outcome: the response header and the leader key to present later.
pub struct Campaigned {
    pub header: ResponseHeader,
    pub key: Bytes,
    pub rev: i64,
    pub lease: i64,
}

impl Member {
    /// The session lease of a Lock or Campaign: the caller's, or a fresh one (etcd's default
    /// session TTL) when it names none.
    async fn session_lease(&self, lease: i64) -> RecipeResult<i64> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = self
            .lease_grant(LeaseGrantRequest {
                ttl: DEFAULT_SESSION_TTL,
                id: 0,
            })
            .await?;
        Ok(granted.id)
    }

    /// Blocks until this lease's key under `<name>/` is the oldest there; returns the header
    /// and the key. A waiter that is dropped removes its key, as etcd's does.
    pub async fn lock(
        self: &Arc<Self>,
        credentials: &Credentials,
        name: &[u8],
        lease: i64,
    ) -> RecipeResult<(ResponseHeader, Bytes)> {
        let lease = self.session_lease(lease).await?;
        let prefix = recipe_prefix(name);
        let key = session_key(&prefix, lease);
        let first = by_create_revision(&prefix, SortOrder::Ascend, 0);
        // One round trip when uncontended: create the key (or find it, when this session
        // already waits or holds) and read the current holder.
        let resp = self
            .txn(
                credentials,
                TxnRequest {
                    compare: vec![created_at(&key, 0)],
                    success: vec![
                        op(put(&key, Bytes::new(), lease)),
                        op(Op::RequestRange(first.clone())),
                    ],
                    failure: vec![op(Op::RequestRange(get(&key))), op(Op::RequestRange(first))],
                },
            )
            .await?;
        let header = header_of(&resp);
        let my_rev = if resp.succeeded {
            header.revision
        } else {
            let mine = range_of(&resp, 0).and_then(|r| r.kvs.first());
            mine.ok_or(RecipeError::SessionExpired)?.create_revision
        };
        let holder = range_of(&resp, 1).and_then(|r| r.kvs.first());
        if holder.is_none_or(|h| h.create_revision == my_rev) {
            return Ok((header, key));
        }
        let undo = UndoOnDrop::new(self, credentials, Undo::Delete(key.clone()));
        self.wait_deletes(credentials, &prefix, my_rev - 1).await?;
        // etcd 3.5: a waiter whose lease expired while it waited does not hold the lock.
        let mine = self.range(Some(credentials), get(&key)).await?;
        if mine.kvs.is_empty() {
            undo.disarm();
            return Err(RecipeError::SessionExpired);
        }
        undo.disarm();
        Ok((mine.header.unwrap_or_default(), key))
    }

    /// Releases a lock: deletes its key.
    pub async fn unlock(
        &self,
        credentials: &Credentials,
        key: Bytes,
    ) -> RecipeResult<ResponseHeader> {
        let caller = self.caller(credentials).await?;
        let resp = self
            .delete_range(
                &caller,
                DeleteRangeRequest {
                    key,
                    ..Default::default()
                },
            )
            .await?;
        Ok(resp.header.unwrap_or_default())
    }

    /// Blocks until this lease's candidate key under `<name>/` is the oldest, i.e. the leader;
    /// a campaign that finds its key with another value proclaims the new one first.
    pub async fn campaign(
        self: &Arc<Self>,
        credentials: &Credentials,
        name: &[u8],
        lease: i64,
        value: Bytes,
    ) -> RecipeResult<Campaigned> {
        let lease = self.session_lease(lease).await?;
        let prefix = recipe_prefix(name);
        let key = session_key(&prefix, lease);
        let resp = self
            .txn(
                credentials,
                TxnRequest {
                    compare: vec![created_at(&key, 0)],
                    success: vec![op(put(&key, value.clone(), lease))],
                    failure: vec![op(Op::RequestRange(get(&key)))],
                },
            )
            .await?;
        let header = header_of(&resp);
        let existing = if resp.succeeded {
            None
        } else {
            let kv = range_of(&resp, 0)
                .and_then(|r| r.kvs.first())
                .ok_or_else(|| {
                    EtcdError::Internal("a failed campaign compare read no key".into())
                })?;
            Some(kv)
        };
        let rev = existing.map_or(header.revision, |kv| kv.create_revision);
        let undo = UndoOnDrop::new(
            self,
            credentials,
            Undo::Resign {
                key: key.clone(),
                rev,
            },
        );
        if existing.is_some_and(|kv| kv.value != value) {
            // A failed proclaim resigns (the guard), as etcd's campaign does.
            self.proclaim(credentials, key.clone(), rev, lease, value)
                .await?;
        }
        let waited = self.wait_deletes(credentials, &prefix, rev - 1).await;
        // etcd resigns only when the campaign's caller went away; a failed wait leaves the key.
        undo.disarm();
        waited?;
        Ok(Campaigned {
            header,
            key,
            rev,
            lease,
        })
    }

    /// Replaces the leader's value, if the key is still the one created at `rev`.
    pub async fn proclaim(
        &self,
        credentials: &Credentials,
        key: Bytes,
        rev: i64,
        lease: i64,
        value: Bytes,
    ) -> RecipeResult<ResponseHeader> {
        let resp = self
            .txn(
                credentials,
                TxnRequest {
                    compare: vec![created_at(&key, rev)],
                    success: vec![op(put(&key, value, lease))],
                    ..Default::default()
                },
            )
            .await?;
        if !resp.succeeded {
            return Err(RecipeError::NotLeader);
        }
        Ok(header_of(&resp))
    }

    /// Gives up leadership (or a candidacy): deletes the key if it is still the one created
    /// at `rev`; not being the leader is not an error, as in etcd.
    pub async fn resign(
        &self,
        credentials: &Credentials,
        key: Bytes,
        rev: i64,
    ) -> RecipeResult<ResponseHeader> {
        let resp = self
            .txn(
                credentials,
                TxnRequest {
                    compare: vec![created_at(&key, rev)],
                    success: vec![op(Op::RequestDeleteRange(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    }))],
                    ..Default::default()
                },
            )
            .await?;
        Ok(header_of(&resp))
    }

    /// The current leader's key-value (the oldest candidate).
    pub async fn election_leader(
        &self,
        credentials: &Credentials,
        name: &[u8],
    ) -> RecipeResult<(ResponseHeader, KeyValue)> {
        let prefix = recipe_prefix(name);
        let resp = self
            .range(
                Some(credentials),
                by_create_revision(&prefix, SortOrder::Ascend, 0),
            )
            .await?;
        let header = resp.header.unwrap_or_default();
        let kv = resp.kvs.into_iter().next().ok_or(RecipeError::NoLeader)?;
        Ok((header, kv))
    }

    /// Streams the leader of `<name>/` and every change of it (new value, new leader) until the
    /// receiver goes away or the store fails; as etcd's Observe, it ends without an error
    /// when it cannot go on.
    /// The caller's read permission on `<name>/` is checked with every read of the leader.
    pub async fn observe(
        &self,
        credentials: &Credentials,
        name: &[u8],
        out: mpsc::Sender<(ResponseHeader, KeyValue)>,
    ) {
        let prefix = recipe_prefix(name);
        // Each round follows one leader until its key is deleted; it ends only with the client.
        loop {
            let Ok(resp) = self
                .range(
                    Some(credentials),
                    by_create_revision(&prefix, SortOrder::Ascend, 0),
                )
                .await
            else {
                return;
            };
            let header = resp.header.unwrap_or_default();
            let (header, leader) = match resp.kvs.into_iter().next() {
                Some(kv) => (header, kv),
                None => match self.first_put(&prefix, header.revision, &out).await {
                    Some(found) => found,
                    None => return,
                },
            };
            let revision = header.revision;
            let key = leader.key.clone();
            if out.send((header, leader)).await.is_err() {
                return;
            }
            if !self.follow_leader(key, revision + 1, &out).await {
                return;
            }
        }
    }

    /// Waits for the first key put under `prefix` from `revision` on (no leader yet).
    async fn first_put(
        &self,
        prefix: &Bytes,
        revision: i64,
        out: &mpsc::Sender<(ResponseHeader, KeyValue)>,
    ) -> Option<(ResponseHeader, KeyValue)> {
        let range = KeyRange::new(prefix, &prefix_end(prefix));
        let (_stream, mut messages) = self.watch_from(range, revision).await?;
        loop {
            let message = tokio::select! {
                message = messages.recv() => message?,
                () = out.closed() => return None,
            };
            match message {
                WatchMessage::Events { events, .. } => {
                    let put = events
                        .iter()
                        .find(|e| e.r#type == EventType::Put as i32)
                        .and_then(|e| e.kv.clone());
                    if let Some(kv) = put {
                        // etcd reports the put's own revision, not the batch's last.
                        return Some((self.header(kv.mod_revision), kv));
                    }
                }
                WatchMessage::Created { .. } | WatchMessage::Progress { .. } => {}
                _ => return None,
            }
        }
    }

    /// Sends every new value of the leader's key until it is deleted (true) or the stream
    /// cannot go on (false).
    async fn follow_leader(
        &self,
        key: Bytes,
        from: i64,
        out: &mpsc::Sender<(ResponseHeader, KeyValue)>,
    ) -> bool {
        let Some((_stream, mut messages)) = self.watch_from(KeyRange::Single(key), from).await
        else {
            return false;
        };
        loop {
            let message = tokio::select! {
                message = messages.recv() => message,
                () = out.closed() => return false,
            };
            match message {
                Some(WatchMessage::Events {
                    revision, events, ..
                }) => {
                    for event in events {
                        if event.r#type == EventType::Delete as i32 {
                            return true;
                        }
                        let Some(kv) = event.kv.clone() else { continue };
                        if out.send((self.header(revision), kv)).await.is_err() {
                            return false;
                        }
                    }
                }
                Some(WatchMessage::Created { .. } | WatchMessage::Progress { .. }) => {}
                _ => return false,
            }
        }
    }

    async fn watch_from(
        &self,
        range: KeyRange,
        start_revision: i64,
    ) -> Option<(WatchStream, WatchReceiver)> {
        let (stream, messages) = self.store.watch_hub().open_stream();
        let spec = WatchSpec {
            watch_id: 0,
            range,
            start_revision,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            fragment: false,
        };
        stream.watch(spec).await.ok()?;
        Some((stream, messages))
    }

    /// Waits until no key under `prefix` was created at or before `max_create_revision`:
    /// each round watches only the newest such key (the waiter's predecessor) for its delete.
    async fn wait_deletes(
        &self,
        credentials: &Credentials,
        prefix: &Bytes,
        max_create_revision: i64,
    ) -> RecipeResult<()> {
        // Terminates: no key can be created below a revision that has passed, so every round
        // waits for one of a shrinking set of keys to go.
        loop {
            let resp = self
                .range(
                    Some(credentials),
                    by_create_revision(prefix, SortOrder::Descend, max_create_revision),
                )
                .await?;
            let Some(predecessor) = resp.kvs.first() else {
                return Ok(());
            };
            let revision = resp.header.map_or(0, |h| h.revision);
            self.wait_delete(predecessor.key.clone(), revision).await?;
        }
    }

    /// Waits for `key` to be deleted at or after `revision`.
    async fn wait_delete(&self, key: Bytes, revision: i64) -> RecipeResult<()> {
        let (stream, mut messages) = self
            .watch_from(KeyRange::Single(key), revision)
            .await
            .ok_or(RecipeError::LostWatcher)?;
        while let Some(message) = messages.recv().await {
            match message {
                WatchMessage::Events { events, .. } => {
                    if events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                        return Ok(());
                    }
                }
                WatchMessage::Compacted { .. } => return Err(EtcdError::Compacted.into()),
                WatchMessage::Created { .. } | WatchMessage::Progress { .. } => {}
                WatchMessage::Refused { .. } | WatchMessage::Canceled { .. } => break,
            }
        }
        drop(stream);
        Err(RecipeError::LostWatcher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_gos_hex_of_the_signed_lease() {
        assert_eq!(session_key(b"l/", 0x7d0), Bytes::from_static(b"l/7d0"));
        assert_eq!(session_key(b"l/", -31), Bytes::from_static(b"l/-1f"));
        assert_eq!(
            session_key(b"l/", i64::MAX),
            Bytes::from_static(b"l/7fffffffffffffff")
        );
    }

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(prefix_end(b"a/"), Bytes::from_static(b"a0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
    }
}
