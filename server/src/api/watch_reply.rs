//! A `WatchResponse` on its way out, with its events shared and encoded once.
//!
//! On the wire a [`WatchReply`] is exactly an `etcdserverpb.WatchResponse`: the fields other
//! than `events` are encoded by prost, then each event's own encoding (field 11, the last
//! field number, so the bytes are the ones prost would write) is copied in as it is. The Watch
//! method is served with it as its response type ([`WatchMethod`]); the JSON gateway and the
//! generated `Watch` trait get a plain `WatchResponse` from [`WatchReply::into_response`].

use std::sync::Arc;

use bytes::{Buf, BufMut};
use futures::future::BoxFuture;
use prost::encoding::{
    encode_key, encode_varint, encoded_len_varint, key_len, message, DecodeContext, WireType,
};
use prost::{DecodeError, Message};
use tonic::{Request, Response, Status, Streaming};

use super::watch::{ReplyStream, WatchService};
use crate::mvcc::watch::SharedEvent;
use crate::proto::etcdserverpb::{WatchRequest, WatchResponse};
use crate::proto::mvccpb::Event;

/// `events`' field number in `etcdserverpb.WatchResponse`.
const EVENTS_FIELD: u32 = 11;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchReply {
    /// Every field but `events`, which stays empty.
    pub head: WatchResponse,
    pub events: Vec<SharedEvent>,
}

impl WatchReply {
    pub fn into_response(self) -> WatchResponse {
        WatchResponse {
            events: self.events.iter().map(SharedEvent::to_event).collect(),
            ..self.head
        }
    }
}

fn event_field_len(event: &SharedEvent) -> usize {
    let len = event.encoded().len();
    key_len(EVENTS_FIELD) + encoded_len_varint(len as u64) + len
}

impl Message for WatchReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        for event in &self.events {
            let encoded = event.encoded();
            encode_key(EVENTS_FIELD, WireType::LengthDelimited, buf);
            encode_varint(encoded.len() as u64, buf);
            buf.put_slice(encoded);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == EVENTS_FIELD {
            let mut event = Event::default();
            message::merge(wire_type, &mut event, buf, ctx)?;
            self.events.push(SharedEvent::new(event));
            Ok(())
        } else {
            self.head.merge_field(tag, wire_type, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.head.encoded_len() + self.events.iter().map(event_field_len).sum::<usize>()
    }

    fn clear(&mut self) {
        self.head.clear();
        self.events.clear();
    }
}

/// Splits a reply whose encoding reaches `limit` into several, each marked `fragment` but the
/// last; a single event is never split (etcd's rule).
pub fn fragments(whole: WatchReply, limit: usize) -> Vec<WatchReply> {
    if whole.events.len() < 2 || whole.encoded_len() < limit {
        return vec![whole];
    }
    let head = WatchResponse {
        fragment: true,
        ..whole.head
    };
    let head_len = head.encoded_len();
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut current_len = head_len;
    for event in whole.events {
        let len = event_field_len(&event);
        if !current.is_empty() && current_len + len >= limit {
            parts.push(WatchReply {
                head: head.clone(),
                events: std::mem::take(&mut current),
            });
            current_len = head_len;
        }
        current_len += len;
        current.push(event);
    }
    parts.push(WatchReply {
        head: WatchResponse {
            fragment: false,
            ..head
        },
        events: current,
    });
    parts
}

/// `etcdserverpb.Watch/Watch` with [`WatchReply`] as its response type; tonic's server does
/// the rest as for a generated method.
pub struct WatchMethod(pub Arc<WatchService>);

impl tonic::server::StreamingService<WatchRequest> for WatchMethod {
    type Response = WatchReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<'static, Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let opened = self.0.open(request).map(Response::new);
        Box::pin(async move { opened })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::ResponseHeader;
    use crate::proto::mvccpb::KeyValue;
    use bytes::Bytes;

    fn event(i: usize, value_len: usize) -> SharedEvent {
        SharedEvent::new(Event {
            kv: Some(KeyValue {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from(vec![b'x'; value_len]),
                mod_revision: i as i64 + 1,
                ..Default::default()
            }),
            prev_kv: i.is_multiple_of(2).then(|| KeyValue {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from_static(b"old"),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn reply(events: Vec<SharedEvent>) -> WatchReply {
        WatchReply {
            head: WatchResponse {
                header: Some(ResponseHeader {
                    cluster_id: 1,
                    member_id: 2,
                    revision: 300,
                    raft_term: 4,
                }),
                watch_id: 3,
                ..Default::default()
            },
            events,
        }
    }

    #[test]
    fn a_reply_is_encoded_as_prost_encodes_the_same_response() {
        let reply = reply((0..5).map(|i| event(i, 10 * i)).collect());
        let response = reply.clone().into_response();
        assert_eq!(reply.encode_to_vec(), response.encode_to_vec());
        assert_eq!(reply.encoded_len(), response.encoded_len());
        let decoded = WatchReply::decode(reply.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, reply);
    }

    #[test]
    fn fragments_keep_every_event_in_order_and_mark_all_but_the_last() {
        let events: Vec<SharedEvent> = (0..10).map(|i| event(i, 100)).collect();
        let parts = fragments(reply(events.clone()), 300);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.head.fragment));
        assert!(!parts[parts.len() - 1].head.fragment);
        assert!(parts.iter().all(|p| p.head.watch_id == 3));
        // Every part but those holding one event fits the limit.
        assert!(parts
            .iter()
            .all(|p| p.events.len() == 1 || p.encoded_len() < 300));
        let rejoined: Vec<SharedEvent> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, events);
    }

    #[test]
    fn a_reply_under_the_limit_is_not_split() {
        let whole = reply((0..3).map(|i| event(i, 10)).collect());
        assert_eq!(fragments(whole.clone(), 1 << 20), vec![whole]);
    }
}
