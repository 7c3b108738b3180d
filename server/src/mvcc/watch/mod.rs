//! The watch hub: delivers committed events to watchers, in revision order, without ever
//! making a commit wait for a watcher.
//!
//! A watcher is either *synced* (it has been handed every event up to the hub's revision and
//! receives new ones as they are committed) or *unsynced* (it is behind, because it started in
//! the past or because its stream's buffer was full). Committing offers each synced watcher its
//! events with a non-blocking send; a full buffer turns the watcher unsynced at that revision.
//! A catch-up thread reads unsynced watchers' events from storage, in bounded chunks, as their
//! streams drain, and makes them synced again once they reach the hub's revision. Memory per
//! stream is therefore bounded by its buffer, however slow its reader.
//!
//! Every message of a stream goes through one channel, so a watch's `created` comes before its
//! events, and a progress answer (`watch_id = -1`) is sent only while every watcher of the
//! stream is synced: its revision is then never ahead of an event not yet sent.

mod history;
mod index;
pub mod merge;
mod queue;
mod shared;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};
use prost::Message;
use tokio::sync::mpsc;

use super::read::KeyRange;
use crate::error::EtcdError;
use crate::proto::mvccpb::event::EventType;
use crate::proto::mvccpb::Event;
use crate::storage::Storage;
use index::MatchIndex;
use queue::Queued;
pub use queue::WatchReceiver;
pub use shared::SharedEvent;

/// Revisions (and the stream's other messages) buffered per stream before its watchers fall
/// back to catching up from storage (etcd buffers 128 responses).
pub const STREAM_BUFFER: usize = 128;
/// Bytes of history read per catch-up round.
const CATCH_UP_BYTES: usize = 4 << 20;
/// Bytes of events per catch-up message (several whole revisions); small enough for clients'
/// default 4 MiB receive limit.
const CATCH_UP_MESSAGE_BYTES: usize = 1 << 20;
/// How often the catch-up thread retries watchers whose streams were full.
const CATCH_UP_RETRY: Duration = Duration::from_millis(10);
/// Progress notifications for idle watchers, by default (etcd's default).
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// The watch ID of a progress answer to a whole stream.
pub const STREAM_PROGRESS_ID: i64 = -1;

pub type StreamId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct WatcherKey {
    stream: StreamId,
    watch: i64,
}

/// What a client asked to watch.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// 0 lets the hub choose.
    pub watch_id: i64,
    pub range: KeyRange,
    /// 0 means "from the next revision".
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    /// Split responses larger than the request size limit.
    pub fragment: bool,
}

/// One message to a watch stream's client.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchMessage {
    Created {
        watch_id: i64,
        revision: i64,
    },
    Refused {
        watch_id: i64,
        revision: i64,
        reason: String,
    },
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<SharedEvent>,
        fragment: bool,
    },
    Compacted {
        watch_id: i64,
        revision: i64,
        compact_revision: i64,
    },
    Canceled {
        watch_id: i64,
        revision: i64,
    },
    Progress {
        watch_id: i64,
        revision: i64,
    },
}

impl WatchMessage {
    pub fn watch_id(&self) -> i64 {
        match self {
            Self::Created { watch_id, .. }
            | Self::Refused { watch_id, .. }
            | Self::Events { watch_id, .. }
            | Self::Compacted { watch_id, .. }
            | Self::Canceled { watch_id, .. }
            | Self::Progress { watch_id, .. } => *watch_id,
        }
    }
}

struct Watcher {
    spec: WatchSpec,
    /// The first revision this watcher has not been handed yet (while unsynced), or the first
    /// it wants (while synced with a future start).
    next_rev: i64,
    synced: bool,
    /// Set when events are sent; progress notifications go to watchers that stayed quiet.
    sent_since_tick: bool,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        let is_put = event.r#type == EventType::Put as i32;
        !(is_put && self.spec.no_put || !is_put && self.spec.no_delete)
    }

    fn shape(&self, event: &Event) -> Event {
        if self.keeps_prev_kv(event) {
            event.clone()
        } else {
            without_prev_kv(event)
        }
    }

    fn keeps_prev_kv(&self, event: &Event) -> bool {
        self.spec.prev_kv || event.prev_kv.is_none()
    }
}

fn without_prev_kv(event: &Event) -> Event {
    Event {
        prev_kv: None,
        ..event.clone()
    }
}

/// The two shapes of one committed event, each made the first time a watcher takes it and
/// then shared by every watcher that takes the same.
struct EventShapes<'a> {
    event: &'a Event,
    whole: Option<SharedEvent>,
    without_prev_kv: Option<SharedEvent>,
}

impl<'a> EventShapes<'a> {
    fn of(event: &'a Event) -> Self {
        Self {
            event,
            whole: None,
            without_prev_kv: None,
        }
    }

    fn for_watcher(&mut self, watcher: &Watcher) -> SharedEvent {
        let event = self.event;
        let slot = if watcher.keeps_prev_kv(event) {
            self.whole
                .get_or_insert_with(|| SharedEvent::new(event.clone()))
        } else {
            self.without_prev_kv
                .get_or_insert_with(|| SharedEvent::new(without_prev_kv(event)))
        };
        slot.clone()
    }
}

struct StreamState {
    tx: mpsc::Sender<Queued>,
    watches: BTreeSet<i64>,
    next_auto_id: i64,
    unsynced: usize,
    progress_wanted: bool,
}

struct HubState {
    current: i64,
    next_stream: StreamId,
    streams: HashMap<StreamId, StreamState>,
    watchers: HashMap<WatcherKey, Watcher>,
    index: MatchIndex<WatcherKey>,
    unsynced: BTreeSet<WatcherKey>,
    progress_interval: Duration,
    /// Kept between publishes so that its maps keep their capacity (at most one entry per
    /// watcher).
    scratch: PublishScratch,
}

/// A revision's matches while it is being published.
#[derive(Default)]
struct PublishScratch {
    by_watcher: HashMap<WatcherKey, (bool, Vec<SharedEvent>)>,
    by_stream: HashMap<StreamId, Vec<WatchMessage>>,
}

pub struct WatchHub {
    state: Mutex<HubState>,
    wake: Condvar,
    storage: Arc<Storage>,
    compacted: Arc<AtomicI64>,
}

impl WatchHub {
    /// Creates the hub at `current` and starts its catch-up thread.
    pub fn start(
        storage: Arc<Storage>,
        compacted: Arc<AtomicI64>,
        current: i64,
    ) -> std::io::Result<Arc<Self>> {
        let hub = Arc::new(Self {
            state: Mutex::new(HubState {
                current,
                next_stream: 1,
                streams: HashMap::new(),
                watchers: HashMap::new(),
                index: MatchIndex::default(),
                unsynced: BTreeSet::new(),
                progress_interval: DEFAULT_PROGRESS_INTERVAL,
                scratch: PublishScratch::default(),
            }),
            wake: Condvar::new(),
            storage,
            compacted,
        });
        let weak = Arc::downgrade(&hub);
        thread::Builder::new()
            .name("watch-catch-up".into())
            .spawn(move || catch_up_loop(weak))?;
        Ok(hub)
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping all watches; recover the guard and go on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_progress_interval(&self, interval: Duration) {
        self.lock().progress_interval = interval.max(Duration::from_millis(10));
        self.wake.notify_all();
    }

    /// Opens a stream; its messages arrive on the returned receiver.
    pub fn open_stream(self: &Arc<Self>) -> (WatchStream, WatchReceiver) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut state = self.lock();
        let id = state.next_stream;
        state.next_stream += 1;
        state.streams.insert(
            id,
            StreamState {
                tx: tx.clone(),
                watches: BTreeSet::new(),
                next_auto_id: 0,
                unsynced: 0,
                progress_wanted: false,
            },
        );
        (
            WatchStream {
                hub: self.clone(),
                id,
                tx,
            },
            WatchReceiver::new(rx),
        )
    }

    /// Offers the events of a just-committed revision to synced watchers. Never blocks.
    pub fn publish(&self, revision: i64, events: &[Event]) {
        let mut state = self.lock();
        state.current = revision;
        let mut scratch = std::mem::take(&mut state.scratch);
        match_synced(&mut state, revision, events, &mut scratch);
        let mut fell_behind = Vec::new();
        for (stream_id, messages) in scratch.by_stream.drain() {
            let Some(stream) = state.streams.get(&stream_id) else {
                continue;
            };
            let keys: Vec<WatcherKey> = messages
                .iter()
                .map(|m| WatcherKey {
                    stream: stream_id,
                    watch: m.watch_id(),
                })
                .collect();
            match stream.tx.try_send(Queued::Revision(messages)) {
                Ok(()) => {
                    for key in keys {
                        if let Some(w) = state.watchers.get_mut(&key) {
                            w.next_rev = revision + 1;
                            w.sent_since_tick = true;
                        }
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => fell_behind.extend(keys),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        state.scratch = scratch;
        for key in fell_behind {
            mark_unsynced(&mut state, key, revision);
        }
        if !state.unsynced.is_empty() {
            self.wake.notify_all();
        }
    }

    /// (streams, watchers, unsynced watchers), for metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (
            state.streams.len(),
            state.watchers.len(),
            state.unsynced.len(),
        )
    }

    /// The data underneath was replaced (snapshot install): everyone catches up from storage.
    pub fn reset(&self, current: i64) {
        let mut state = self.lock();
        let old = state.current;
        state.current = current;
        let keys: Vec<WatcherKey> = state.watchers.keys().copied().collect();
        for key in keys {
            let next = state
                .watchers
                .get(&key)
                .map_or(old + 1, |w| w.next_rev.max(old + 1));
            mark_unsynced(&mut state, key, next);
        }
        self.wake.notify_all();
    }

    fn compacted(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }
}

/// Each synced watcher's share of a just-committed revision, by stream, into
/// `scratch.by_stream`.
fn match_synced(
    state: &mut HubState,
    revision: i64,
    events: &[Event],
    scratch: &mut PublishScratch,
) {
    let HubState {
        index, watchers, ..
    } = state;
    let matched = &mut scratch.by_watcher;
    for event in events {
        let Some(kv) = &event.kv else { continue };
        let mut shapes = EventShapes::of(event);
        index.for_each_match(&kv.key, |key| {
            if let Some(w) = watchers.get(&key) {
                if w.synced && w.next_rev <= revision && w.wants(event) {
                    matched
                        .entry(key)
                        .or_insert_with(|| (w.spec.fragment, Vec::new()))
                        .1
                        .push(shapes.for_watcher(w));
                }
            }
        });
    }
    for (key, (fragment, events)) in matched.drain() {
        scratch
            .by_stream
            .entry(key.stream)
            .or_default()
            .push(WatchMessage::Events {
                watch_id: key.watch,
                revision,
                events,
                fragment,
            });
    }
}

fn mark_unsynced(state: &mut HubState, key: WatcherKey, next_rev: i64) {
    let Some(w) = state.watchers.get_mut(&key) else {
        return;
    };
    if w.synced {
        w.synced = false;
        w.next_rev = next_rev;
        state.unsynced.insert(key);
        if let Some(stream) = state.streams.get_mut(&key.stream) {
            stream.unsynced += 1;
        }
    }
}

fn mark_synced(state: &mut HubState, key: WatcherKey) {
    let Some(w) = state.watchers.get_mut(&key) else {
        return;
    };
    if !w.synced {
        w.synced = true;
        state.unsynced.remove(&key);
        if let Some(stream) = state.streams.get_mut(&key.stream) {
            stream.unsynced = stream.unsynced.saturating_sub(1);
        }
    }
}

fn remove_watcher(state: &mut HubState, key: WatcherKey) -> bool {
    let Some(w) = state.watchers.remove(&key) else {
        return false;
    };
    state.index.remove(&w.spec.range, key);
    if !w.synced {
        state.unsynced.remove(&key);
    }
    if let Some(stream) = state.streams.get_mut(&key.stream) {
        stream.watches.remove(&key.watch);
        if !w.synced {
            stream.unsynced = stream.unsynced.saturating_sub(1);
        }
    }
    true
}

/// Answers a stream's pending progress request if every one of its watchers is synced.
fn answer_progress_if_synced(state: &mut HubState, stream_id: StreamId) {
    let current = state.current;
    let Some(stream) = state.streams.get_mut(&stream_id) else {
        return;
    };
    if !stream.progress_wanted || stream.unsynced > 0 {
        return;
    }
    let answer = WatchMessage::Progress {
        watch_id: STREAM_PROGRESS_ID,
        revision: current,
    };
    if stream.tx.try_send(Queued::One(answer)).is_ok() {
        stream.progress_wanted = false;
    }
}

/// A client's watch stream. Dropping it removes its watchers.
pub struct WatchStream {
    hub: Arc<WatchHub>,
    id: StreamId,
    tx: mpsc::Sender<Queued>,
}

#[derive(Debug, thiserror::Error)]
#[error("the watch stream is closed")]
pub struct StreamClosed;

impl WatchStream {
    /// Creates a watch: its `created` (or refusal) is queued before any of its events.
    pub async fn watch(&self, spec: WatchSpec) -> Result<(), StreamClosed> {
        let permit = self.tx.reserve().await.map_err(|_| StreamClosed)?;
        let mut state = self.hub.lock();
        let current = state.current;
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Err(StreamClosed);
        };
        let watch_id = if spec.watch_id == 0 {
            while stream.watches.contains(&stream.next_auto_id) {
                stream.next_auto_id += 1;
            }
            stream.next_auto_id
        } else {
            spec.watch_id
        };
        // etcd accepts negative IDs too; -1 answers progress requests, so it stays reserved.
        let refusal = if watch_id == STREAM_PROGRESS_ID {
            Some("keelson: watch ID -1 is reserved for progress notifications")
        } else if stream.watches.contains(&watch_id) {
            Some("mvcc: duplicate watch ID provided on the WatchStream")
        } else {
            None
        };
        if let Some(reason) = refusal {
            permit.send(Queued::One(WatchMessage::Refused {
                watch_id: STREAM_PROGRESS_ID,
                revision: current,
                reason: reason.into(),
            }));
            return Ok(());
        }
        stream.watches.insert(watch_id);
        permit.send(Queued::One(WatchMessage::Created {
            watch_id,
            revision: current,
        }));
        let key = WatcherKey {
            stream: self.id,
            watch: watch_id,
        };
        let from_past = spec.start_revision != 0 && spec.start_revision <= current;
        let next_rev = if from_past {
            spec.start_revision
        } else {
            spec.start_revision.max(current + 1)
        };
        state.index.insert(&spec.range, key);
        state.watchers.insert(
            key,
            Watcher {
                spec,
                next_rev,
                synced: true,
                sent_since_tick: false,
            },
        );
        if from_past {
            mark_unsynced(&mut state, key, next_rev);
            self.hub.wake.notify_all();
        }
        Ok(())
    }

    /// Answers a create request that is refused before it reaches the hub (no permission):
    /// `created` and `canceled` with `reason`, in order with the stream's other answers.
    pub async fn refuse(&self, reason: String) -> Result<(), StreamClosed> {
        let permit = self.tx.reserve().await.map_err(|_| StreamClosed)?;
        let current = self.hub.lock().current;
        permit.send(Queued::One(WatchMessage::Refused {
            watch_id: STREAM_PROGRESS_ID,
            revision: current,
            reason,
        }));
        Ok(())
    }

    /// Cancels a watch; an unknown ID gets no answer, as in etcd.
    pub async fn cancel(&self, watch_id: i64) -> Result<(), StreamClosed> {
        let permit = self.tx.reserve().await.map_err(|_| StreamClosed)?;
        let mut state = self.hub.lock();
        let current = state.current;
        let key = WatcherKey {
            stream: self.id,
            watch: watch_id,
        };
        if remove_watcher(&mut state, key) {
            permit.send(Queued::One(WatchMessage::Canceled {
                watch_id,
                revision: current,
            }));
            answer_progress_if_synced(&mut state, self.id);
        }
        Ok(())
    }

    /// Asks for a progress answer (`watch_id = -1`) as soon as it is safe to give.
    pub async fn request_progress(&self) -> Result<(), StreamClosed> {
        let permit = self.tx.reserve().await.map_err(|_| StreamClosed)?;
        let mut state = self.hub.lock();
        let current = state.current;
        let Some(stream) = state.streams.get_mut(&self.id) else {
            return Err(StreamClosed);
        };
        if stream.unsynced == 0 {
            permit.send(Queued::One(WatchMessage::Progress {
                watch_id: STREAM_PROGRESS_ID,
                revision: current,
            }));
        } else {
            stream.progress_wanted = true;
        }
        Ok(())
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        let Some(stream) = state.streams.remove(&self.id) else {
            return;
        };
        for watch in stream.watches {
            let key = WatcherKey {
                stream: self.id,
                watch,
            };
            if let Some(w) = state.watchers.remove(&key) {
                state.index.remove(&w.spec.range, key);
                state.unsynced.remove(&key);
            }
        }
    }
}

/// Catches unsynced watchers up from storage and sends periodic progress notifications.
fn catch_up_loop(hub: std::sync::Weak<WatchHub>) {
    let mut last_tick = Instant::now();
    loop {
        // Holding the hub only for one iteration lets it be dropped when nobody else does.
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let interval = hub.lock().progress_interval;
        if last_tick.elapsed() >= interval {
            notify_progress(&hub);
            last_tick = Instant::now();
        }
        if !hub.lock().unsynced.is_empty() {
            catch_up_round(&hub);
        }
        let state = hub.lock();
        let until_tick =
            (last_tick + state.progress_interval).saturating_duration_since(Instant::now());
        let wait = if state.unsynced.is_empty() {
            until_tick.min(Duration::from_secs(1))
        } else {
            CATCH_UP_RETRY
        };
        drop(hub.wake.wait_timeout(state, wait));
    }
}

/// Sends a progress notification to every synced watcher that asked for them and was quiet.
fn notify_progress(hub: &WatchHub) {
    let mut state = hub.lock();
    let current = state.current;
    let HubState {
        watchers, streams, ..
    } = &mut *state;
    for (key, w) in watchers.iter_mut() {
        if !w.spec.progress_notify || !w.synced {
            continue;
        }
        if !std::mem::replace(&mut w.sent_since_tick, false) {
            if let Some(stream) = streams.get(&key.stream) {
                let _ = stream.tx.try_send(Queued::One(WatchMessage::Progress {
                    watch_id: key.watch,
                    revision: current,
                }));
            }
        }
    }
}

struct Behind {
    key: WatcherKey,
    range: KeyRange,
    next_rev: i64,
}

/// One round: read a bounded chunk of history from the oldest revision anyone needs, hand
/// each unsynced watcher what its stream can take, and sync those that reached the present.
fn catch_up_round(hub: &WatchHub) {
    let (behind, current) = {
        let state = hub.lock();
        // A watcher whose stream is still full cannot take anything: reading history for it
        // would be wasted work, over and over, until its client reads again.
        let has_room = |key: &WatcherKey| {
            state
                .streams
                .get(&key.stream)
                .is_some_and(|s| s.tx.capacity() > 0)
        };
        let behind: Vec<Behind> = state
            .unsynced
            .iter()
            .filter(|key| has_room(key))
            .filter_map(|key| {
                state.watchers.get(key).map(|w| Behind {
                    key: *key,
                    range: w.spec.range.clone(),
                    next_rev: w.next_rev,
                })
            })
            .collect();
        (behind, state.current)
    };
    let Some(from) = behind.iter().map(|b| b.next_rev).min() else {
        return;
    };
    let compacted = hub.compacted();
    let history = if from < compacted {
        Err(EtcdError::Compacted)
    } else {
        history::read(&hub.storage, from, current, CATCH_UP_BYTES, &|| {
            hub.compacted()
        })
    };
    let mut state = hub.lock();
    match history {
        Err(EtcdError::Compacted) => {
            let compacted = hub.compacted();
            for b in behind.iter().filter(|b| b.next_rev < compacted) {
                cancel_compacted(&mut state, b.key, compacted);
            }
        }
        Err(e) => tracing::error!(error = %e, "reading watch history failed"),
        Ok(history) => {
            for b in &behind {
                deliver_history(&mut state, b, &history);
            }
        }
    }
    let streams: Vec<StreamId> = state.streams.keys().copied().collect();
    for stream in streams {
        answer_progress_if_synced(&mut state, stream);
    }
}

fn cancel_compacted(state: &mut HubState, key: WatcherKey, compact_revision: i64) {
    let current = state.current;
    let Some(stream) = state.streams.get(&key.stream) else {
        return;
    };
    let message = WatchMessage::Compacted {
        watch_id: key.watch,
        revision: current,
        compact_revision,
    };
    if stream.tx.try_send(Queued::One(message)).is_ok() {
        remove_watcher(state, key);
    }
}

/// Hands `behind` its share of `history`, as much as its stream takes. Several revisions go
/// in one message (whole revisions only, about `CATCH_UP_MESSAGE_BYTES` each), as etcd sends
/// history, so that catching up is not one message per revision.
fn deliver_history(state: &mut HubState, behind: &Behind, history: &history::History) {
    let current = state.current;
    let Some(w) = state.watchers.get(&behind.key) else {
        return;
    };
    // The watcher may have changed while the lock was released (canceled, or re-created).
    if w.synced || w.next_rev != behind.next_rev {
        return;
    }
    let Some(tx) = state.streams.get(&behind.key.stream).map(|s| s.tx.clone()) else {
        return;
    };
    let watch_id = behind.key.watch;
    let fragment = w.spec.fragment;
    let mut handled_through = w.next_rev - 1;
    let mut pending: Option<Batch> = None;
    let mut stalled = false;
    let mut sent = false;
    for (revision, events) in history.revisions.iter().filter(|(r, _)| *r >= w.next_rev) {
        let mine: Vec<SharedEvent> = events
            .iter()
            .filter(|e| {
                e.kv.as_ref()
                    .is_some_and(|kv| behind.range.contains(&kv.key))
            })
            .filter(|e| w.wants(e))
            .map(|e| SharedEvent::new(w.shape(e)))
            .collect();
        if mine.is_empty() {
            if pending.is_none() {
                handled_through = *revision;
            }
            continue;
        }
        let size: usize = mine.iter().map(|e| e.encoded_len()).sum();
        if pending
            .as_ref()
            .is_some_and(|p| p.bytes + size > CATCH_UP_MESSAGE_BYTES)
        {
            let full = pending.take().map(|p| p.into_message(watch_id, fragment));
            match full.map(|(last, m)| (last, tx.try_send(Queued::One(m)))) {
                Some((last, Ok(()))) => {
                    handled_through = last;
                    sent = true;
                }
                _ => {
                    stalled = true;
                    break;
                }
            }
        }
        let batch = pending.get_or_insert_with(|| Batch::starting_at(*revision));
        batch.add(*revision, mine, size);
    }
    if !stalled {
        match pending.take() {
            None => handled_through = handled_through.max(history.read_through),
            Some(batch) => {
                let (_, message) = batch.into_message(watch_id, fragment);
                if tx.try_send(Queued::One(message)).is_ok() {
                    handled_through = handled_through.max(history.read_through);
                    sent = true;
                }
            }
        }
    }
    let next_rev = handled_through + 1;
    if let Some(w) = state.watchers.get_mut(&behind.key) {
        w.next_rev = next_rev;
        w.sent_since_tick |= sent;
    }
    if next_rev > current {
        mark_synced(state, behind.key);
    }
}

/// Events of consecutive revisions waiting to be sent as one message.
struct Batch {
    first: i64,
    last: i64,
    events: Vec<SharedEvent>,
    bytes: usize,
}

impl Batch {
    fn starting_at(revision: i64) -> Self {
        Self {
            first: revision,
            last: revision,
            events: Vec::new(),
            bytes: 0,
        }
    }

    fn add(&mut self, revision: i64, events: Vec<SharedEvent>, bytes: usize) {
        self.last = revision;
        self.events.extend(events);
        self.bytes += bytes;
    }

    /// The message, and the last revision it completes.
    fn into_message(self, watch_id: i64, fragment: bool) -> (i64, WatchMessage) {
        debug_assert!(self.first <= self.last);
        (
            self.last,
            WatchMessage::Events {
                watch_id,
                revision: self.last,
                events: self.events,
                fragment,
            },
        )
    }
}
