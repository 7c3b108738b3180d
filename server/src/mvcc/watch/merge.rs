//! Taking a stream's queued messages at once, a watcher's events of several revisions in one
//! message.
//!
//! The hub hands every watcher one message per revision. While a stream's client keeps up,
//! each goes out alone as soon as it is made. When messages queue (the writes come faster than
//! the stream's answers are written), whatever queued is taken in one go, and a watcher's
//! consecutive event messages become one: one response, one header, one gRPC message for the
//! client to decode instead of one per revision. etcd batches its slow watchers' events the
//! same way.
//!
//! Order is kept: a watcher's events stay in revision order, and a message that is not events
//! (created, canceled, compacted, progress) is a barrier nothing is moved across, so a
//! progress answer never precedes events older than its revision.

use foldhash::HashMap;

use super::{SharedEvent, WatchMessage, WatchReceiver};

/// Messages taken from a stream's queue at once (its capacity).
const TAKE_AT_MOST: usize = super::STREAM_BUFFER;
/// Bytes of keys and values taken at once: what is taken waits in memory, outside the
/// stream's bounded queue, until gRPC has sent it.
const TAKE_BYTES: usize = 1 << 20;
/// A merged message grows up to about this many bytes of keys and values; a single larger
/// event is never split.
const MERGED_BYTES: usize = 256 << 10;

/// `first` and the messages queued behind it (up to [`TAKE_AT_MOST`] messages and about
/// [`TAKE_BYTES`]), merged.
pub fn take_queued(first: WatchMessage, queue: &mut WatchReceiver) -> Vec<WatchMessage> {
    let mut merger = Merger::default();
    merger.push(first);
    for _ in 1..TAKE_AT_MOST {
        if merger.bytes >= TAKE_BYTES {
            break;
        }
        match queue.try_recv() {
            Some(message) => merger.push(message),
            None => break,
        }
    }
    merger.merged
}

#[derive(Default)]
struct Merger {
    merged: Vec<WatchMessage>,
    /// For each watcher whose last message can still take events: its index in `merged` and
    /// the bytes it holds.
    open: HashMap<i64, (usize, usize)>,
    /// Bytes of keys and values taken in all.
    bytes: usize,
}

impl Merger {
    fn push(&mut self, message: WatchMessage) {
        let WatchMessage::Events {
            watch_id,
            revision,
            events,
            fragment,
        } = message
        else {
            // A barrier: nothing after it joins a message before it.
            self.open.clear();
            self.merged.push(message);
            return;
        };
        let size = events_bytes(&events);
        self.bytes += size;
        if let Some((index, held)) = self.open.get_mut(&watch_id) {
            if *held + size <= MERGED_BYTES {
                if let Some(WatchMessage::Events {
                    revision: last_revision,
                    events: held_events,
                    ..
                }) = self.merged.get_mut(*index)
                {
                    held_events.extend(events);
                    *last_revision = revision;
                    *held += size;
                    return;
                }
            }
        }
        self.open.insert(watch_id, (self.merged.len(), size));
        self.merged.push(WatchMessage::Events {
            watch_id,
            revision,
            events,
            fragment,
        });
    }
}

fn events_bytes(events: &[SharedEvent]) -> usize {
    let kv_bytes = |kv: &Option<crate::proto::mvccpb::KeyValue>| {
        kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len())
    };
    events
        .iter()
        .map(|e| kv_bytes(&e.kv) + kv_bytes(&e.prev_kv))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::queue::Queued;
    use super::*;
    use crate::proto::mvccpb::{Event, KeyValue};
    use bytes::Bytes;
    use tokio::sync::mpsc;

    fn queue(capacity: usize) -> (mpsc::Sender<Queued>, WatchReceiver) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, WatchReceiver::new(rx))
    }

    fn event(revision: i64, value_len: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: Bytes::from(format!("k{revision}")),
                mod_revision: revision,
                value: Bytes::from(vec![b'v'; value_len]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn events(watch_id: i64, revision: i64) -> WatchMessage {
        WatchMessage::Events {
            watch_id,
            revision,
            events: vec![event(revision, 10).into()],
            fragment: false,
        }
    }

    /// (watch_id, header revision, event revisions) of each message, or the message's kind.
    fn shape(messages: &[WatchMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match m {
                WatchMessage::Events {
                    watch_id,
                    revision,
                    events,
                    ..
                } => {
                    let revs: Vec<i64> = events
                        .iter()
                        .filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision))
                        .collect();
                    format!("{watch_id}@{revision}:{revs:?}")
                }
                WatchMessage::Progress { revision, .. } => format!("progress@{revision}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    async fn queued(messages: Vec<WatchMessage>) -> Vec<WatchMessage> {
        let (tx, mut rx) = queue(super::super::STREAM_BUFFER);
        for m in messages {
            tx.send(Queued::One(m)).await.expect("open");
        }
        let first = rx.recv().await.expect("one message");
        take_queued(first, &mut rx)
    }

    #[tokio::test]
    async fn a_watchers_queued_revisions_become_one_message_in_order() {
        let merged = queued(vec![
            events(1, 5),
            events(2, 5),
            events(1, 6),
            events(2, 6),
            events(1, 7),
        ])
        .await;
        assert_eq!(shape(&merged), ["1@7:[5, 6, 7]", "2@6:[5, 6]"]);
    }

    #[tokio::test]
    async fn nothing_is_moved_across_a_message_that_is_not_events() {
        let merged = queued(vec![
            events(1, 5),
            WatchMessage::Progress {
                watch_id: -1,
                revision: 5,
            },
            events(1, 6),
            events(1, 7),
        ])
        .await;
        assert_eq!(shape(&merged), ["1@5:[5]", "progress@5", "1@7:[6, 7]"]);
    }

    #[tokio::test]
    async fn a_merged_message_stops_growing_at_its_size_bound() {
        let big = |revision| WatchMessage::Events {
            watch_id: 1,
            revision,
            events: vec![event(revision, MERGED_BYTES / 2 - 8).into()],
            fragment: false,
        };
        let merged = queued(vec![big(5), big(6), big(7)]).await;
        assert_eq!(shape(&merged), ["1@6:[5, 6]", "1@7:[7]"]);
    }

    #[tokio::test]
    async fn a_take_stops_at_its_byte_bound_and_leaves_the_rest_queued() {
        let (tx, mut rx) = queue(super::super::STREAM_BUFFER);
        let large = |watch_id, revision| WatchMessage::Events {
            watch_id,
            revision,
            events: vec![event(revision, TAKE_BYTES / 2).into()],
            fragment: false,
        };
        for revision in 5..9 {
            tx.send(Queued::One(large(revision, revision)))
                .await
                .expect("open");
        }
        let first = rx.recv().await.expect("one");
        let taken = take_queued(first, &mut rx);
        assert_eq!(shape(&taken), ["5@5:[5]", "6@6:[6]"]);
        let next = rx.recv().await.expect("the rest stayed queued");
        assert_eq!(shape(&take_queued(next, &mut rx)), ["7@7:[7]", "8@8:[8]"]);
    }

    #[tokio::test]
    async fn only_what_is_queued_is_taken() {
        let (tx, mut rx) = queue(4);
        tx.send(Queued::One(events(1, 5))).await.expect("open");
        let first = rx.recv().await.expect("one");
        assert_eq!(shape(&take_queued(first, &mut rx)), ["1@5:[5]"]);
        tx.send(Queued::One(events(1, 6))).await.expect("open");
        assert!(
            rx.try_recv().is_some(),
            "a later message waits for the next take"
        );
    }
}
