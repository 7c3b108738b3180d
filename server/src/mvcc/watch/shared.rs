//! An event as the hub hands it out: shared by every watcher it goes to, and encoded once.
//!
//! With many watchers on the same keys, each committed event goes to each of them. The event
//! used to be cloned for every watcher and encoded again for every watcher's response; sharing
//! both cut the server's CPU per delivered event from 2.00 to 1.74 µs with 100 watchers
//! (bench/results/perf-push-2.md, step 15). A `SharedEvent` is one allocation whatever the
//! number of watchers, and its protobuf bytes are made by the first stream that sends it and
//! copied as they are by the others.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message;

use crate::proto::mvccpb::Event;

#[derive(Clone)]
pub struct SharedEvent(Arc<Inner>);

struct Inner {
    event: Event,
    encoded: OnceLock<Bytes>,
}

impl SharedEvent {
    pub fn new(event: Event) -> Self {
        Self(Arc::new(Inner {
            event,
            encoded: OnceLock::new(),
        }))
    }

    /// The event's protobuf encoding (an `mvccpb.Event` message, without a length prefix).
    pub fn encoded(&self) -> &Bytes {
        self.0
            .encoded
            .get_or_init(|| Bytes::from(self.0.event.encode_to_vec()))
    }

    pub fn to_event(&self) -> Event {
        self.0.event.clone()
    }
}

impl Deref for SharedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.0.event
    }
}

impl From<Event> for SharedEvent {
    fn from(event: Event) -> Self {
        Self::new(event)
    }
}

impl PartialEq for SharedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.0.event == other.0.event
    }
}

impl fmt::Debug for SharedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.event.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    #[test]
    fn the_encoding_is_the_events_own_and_made_once() {
        let event = Event {
            kv: Some(KeyValue {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                mod_revision: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let shared = SharedEvent::new(event.clone());
        let copy = shared.clone();
        assert_eq!(shared.encoded().as_ref(), event.encode_to_vec().as_slice());
        // The clone shares the bytes made for the first: same buffer, not an equal one.
        assert_eq!(copy.encoded().as_ptr(), shared.encoded().as_ptr());
        assert_eq!(*copy, event);
    }
}
