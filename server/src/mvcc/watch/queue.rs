//! A watch stream's bounded queue, which carries a committed revision's messages for all the
//! stream's watchers as one item.
//!
//! With many watchers on one stream, one item per watcher per revision made the channel's own
//! work (a permit, a slot, a wake-up, a pop and a permit's release under a lock, each) cost
//! more than encoding the events. The hub now queues one item per stream per revision, so the
//! queue's bound ([`super::STREAM_BUFFER`]) counts revisions and the stream's other messages
//! (created, canceled, progress, a catch-up batch). The events are shared (`SharedEvent`), so
//! what a queued revision holds beyond them is a few words per watcher.

use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::WatchMessage;

/// One item of a stream's queue.
#[derive(Debug)]
pub(super) enum Queued {
    One(WatchMessage),
    /// The events of one revision for several of the stream's watchers.
    Revision(Vec<WatchMessage>),
}

/// The receiving end of a stream's queue: its messages one at a time, in the order queued.
pub struct WatchReceiver {
    queue: mpsc::Receiver<Queued>,
    /// Messages taken from the queue and not handed out yet (the rest of a revision).
    taken: VecDeque<WatchMessage>,
}

impl WatchReceiver {
    pub(super) fn new(queue: mpsc::Receiver<Queued>) -> Self {
        Self {
            queue,
            taken: VecDeque::new(),
        }
    }

    /// The next message; `None` once the stream is closed and everything was handed out.
    /// Cancel-safe: an item taken from the queue is handed out or kept whole.
    pub async fn recv(&mut self) -> Option<WatchMessage> {
        loop {
            if let Some(message) = self.taken.pop_front() {
                return Some(message);
            }
            let item = self.queue.recv().await?;
            self.keep(item);
        }
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<WatchMessage> {
        loop {
            if let Some(message) = self.taken.pop_front() {
                return Some(message);
            }
            let item = self.queue.try_recv().ok()?;
            self.keep(item);
        }
    }

    fn keep(&mut self, item: Queued) {
        match item {
            Queued::One(message) => self.taken.push_back(message),
            Queued::Revision(messages) => self.taken.extend(messages),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(revision: i64) -> WatchMessage {
        WatchMessage::Progress {
            watch_id: 1,
            revision,
        }
    }

    #[tokio::test]
    async fn a_revisions_messages_come_out_one_by_one_in_order() {
        let (tx, rx) = mpsc::channel(4);
        let mut receiver = WatchReceiver::new(rx);
        tx.send(Queued::Revision(vec![progress(1), progress(2)]))
            .await
            .expect("open");
        tx.send(Queued::One(progress(3))).await.expect("open");
        tx.send(Queued::Revision(vec![progress(4), progress(5)]))
            .await
            .expect("open");
        drop(tx);
        assert_eq!(receiver.recv().await, Some(progress(1)));
        assert_eq!(receiver.try_recv(), Some(progress(2)));
        assert_eq!(receiver.try_recv(), Some(progress(3)));
        assert_eq!(receiver.recv().await, Some(progress(4)));
        assert_eq!(receiver.recv().await, Some(progress(5)));
        assert_eq!(receiver.recv().await, None);
        assert_eq!(receiver.try_recv(), None);
    }

    #[tokio::test]
    async fn a_revision_takes_one_place_in_the_bounded_queue() {
        let (tx, rx) = mpsc::channel(1);
        let _receiver = WatchReceiver::new(rx);
        let ten = (0..10).map(progress).collect();
        assert!(tx.try_send(Queued::Revision(ten)).is_ok());
        assert!(
            tx.try_send(Queued::One(progress(11))).is_err(),
            "the queue of one place is full"
        );
    }
}
