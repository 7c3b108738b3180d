//! What the raft layer knows about the cluster beyond openraft's own state: which members were
//! removed (their IDs are never reused, and they are told so), when this member last heard from
//! its leader, and the fatal conditions that must stop the member.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use super::peer::faults::PeerFaults;
use std::sync::Arc;

const REMOVED_NOW: &str = "the member has been permanently removed from the cluster";

/// Requests waiting for an index to be applied, each woken once, when it is: a watch channel
/// woke every waiter at every applied batch, whether its entry was in it or not.
#[derive(Default)]
struct AppliedWaiters {
    by_index: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
    count: usize,
}

/// Waiters beyond which those whose requests gave up (a member that stopped applying while its
/// clients timed out) are dropped.
const APPLIED_WAITERS_PRUNED_AT: usize = 4096;

impl AppliedWaiters {
    fn add(&mut self, index: u64) -> oneshot::Receiver<()> {
        if self.count >= APPLIED_WAITERS_PRUNED_AT {
            self.by_index.retain(|_, waiting| {
                waiting.retain(|w| !w.is_closed());
                !waiting.is_empty()
            });
            self.count = self.by_index.values().map(Vec::len).sum();
        }
        let (notice, noticed) = oneshot::channel();
        self.by_index.entry(index).or_default().push(notice);
        self.count += 1;
        noticed
    }

    /// Removes and returns the waiters of every index up to `applied`.
    fn take_through(&mut self, applied: u64) -> Vec<oneshot::Sender<()>> {
        let later = match applied.checked_add(1) {
            Some(next) => self.by_index.split_off(&next),
            None => BTreeMap::new(),
        };
        let ready: Vec<_> = std::mem::replace(&mut self.by_index, later)
            .into_values()
            .flatten()
            .collect();
        self.count -= ready.len();
        ready
    }
}

pub struct ClusterState {
    pub member_id: u64,
    pub cluster_id: u64,
    removed: RwLock<BTreeSet<u64>>,
    /// The leader that last replicated to this member, and when.
    leader_contact: Mutex<Option<(u64, Instant)>>,
    /// Whether this member ever had a leader (a formed cluster).
    ever_had_leader: std::sync::atomic::AtomicBool,
    /// A delayed stop is already on its way.
    stop_scheduled: std::sync::atomic::AtomicBool,
    fatal: watch::Sender<Option<String>>,
    /// The last applied log index.
    applied: AtomicU64,
    /// Requests waiting to see an entry applied here, by its index.
    applied_waiters: Mutex<AppliedWaiters>,
    pub faults: Arc<PeerFaults>,
}

impl ClusterState {
    pub fn new(member_id: u64, cluster_id: u64, faults: Arc<PeerFaults>) -> Self {
        Self {
            member_id,
            cluster_id,
            removed: RwLock::new(BTreeSet::new()),
            leader_contact: Mutex::new(None),
            ever_had_leader: std::sync::atomic::AtomicBool::new(false),
            stop_scheduled: std::sync::atomic::AtomicBool::new(false),
            fatal: watch::channel(None).0,
            applied: AtomicU64::new(0),
            applied_waiters: Mutex::default(),
            faults,
        }
    }

    pub fn set_removed(&self, ids: BTreeSet<u64>) {
        if let Ok(mut removed) = self.removed.write() {
            *removed = ids;
        }
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed
            .read()
            .map(|r| r.contains(&id))
            .unwrap_or(false)
    }

    pub fn removed(&self) -> BTreeSet<u64> {
        self.removed.read().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn heard_from_leader(&self, leader: u64) {
        self.ever_had_leader
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut contact) = self.leader_contact.lock() {
            *contact = Some((leader, Instant::now()));
        }
    }

    pub fn leader_contact(&self) -> Option<(u64, Instant)> {
        self.leader_contact.lock().ok().and_then(|c| *c)
    }

    pub fn note_leader(&self) {
        self.ever_had_leader
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn ever_had_leader(&self) -> bool {
        self.ever_had_leader
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_applied(&self, index: u64) {
        if self.applied.fetch_max(index, Ordering::SeqCst) >= index {
            return;
        }
        // Taken after the store: a waiter that registers meanwhile either sees the new index or
        // is registered before this takes the lock.
        let ready = match self.applied_waiters.lock() {
            Ok(mut waiters) => waiters.take_through(index),
            Err(_) => return,
        };
        for waiter in ready {
            let _ = waiter.send(());
        }
    }

    /// The last applied log index now.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// `None` when the entry at `index` is applied here already; otherwise what is sent to once
    /// it is (dropped if the member stops first).
    pub fn applied_notice(&self, index: u64) -> Option<oneshot::Receiver<()>> {
        if self.applied() >= index {
            return None;
        }
        let mut waiters = self.applied_waiters.lock().ok()?;
        if self.applied() >= index {
            return None;
        }
        Some(waiters.add(index))
    }

    /// Stops the member with `reason` (the first reason wins).
    pub fn fail(&self, reason: String) {
        self.fatal.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Stops the member with `reason` after `delay` (a removed member answers what it is
    /// answering first, as etcd's stops with a delay).
    pub fn fail_after(self: &Arc<Self>, delay: std::time::Duration, reason: String) {
        if self
            .stop_scheduled
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("member-stop".into())
            .spawn(move || {
                std::thread::sleep(delay);
                if let Some(me) = me.upgrade() {
                    me.fail(reason);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot delay the stop; stopping now");
            self.fail(REMOVED_NOW.to_string());
        }
    }

    pub fn fatal_receiver(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ClusterState {
        ClusterState::new(1, 1, Arc::default())
    }

    #[test]
    fn a_waiter_is_told_once_its_index_is_applied_and_not_before() {
        let cluster = state();
        cluster.set_applied(5);
        assert!(
            cluster.applied_notice(5).is_none(),
            "an applied index needs no wait"
        );

        let mut seven = cluster.applied_notice(7).expect("7 is not applied yet");
        let mut nine = cluster.applied_notice(9).expect("9 is not applied yet");
        cluster.set_applied(6);
        assert!(seven.try_recv().is_err(), "6 does not reach 7");
        cluster.set_applied(8);
        assert!(seven.try_recv().is_ok(), "8 reaches 7");
        assert!(nine.try_recv().is_err(), "8 does not reach 9");
        cluster.set_applied(4);
        assert_eq!(cluster.applied(), 8, "the applied index never goes back");
        cluster.set_applied(100);
        assert!(nine.try_recv().is_ok());
        assert_eq!(
            cluster.applied_waiters.lock().map(|w| w.count).ok(),
            Some(0),
            "every told waiter is gone"
        );
    }

    #[test]
    fn waiters_whose_requests_gave_up_are_dropped_while_nothing_is_applied() {
        let cluster = state();
        for _ in 0..APPLIED_WAITERS_PRUNED_AT * 3 {
            drop(cluster.applied_notice(10));
        }
        let kept = cluster.applied_notice(10).expect("10 is not applied");
        let count = cluster.applied_waiters.lock().map(|w| w.count).ok();
        assert!(
            count.is_some_and(|c| c <= APPLIED_WAITERS_PRUNED_AT),
            "abandoned waiters pile up: {count:?}"
        );
        cluster.set_applied(10);
        let mut kept = kept;
        assert!(kept.try_recv().is_ok(), "the live waiter is still told");
    }

    #[test]
    fn a_member_that_stops_tells_its_waiters() {
        let cluster = state();
        let mut waiting = cluster.applied_notice(3).expect("3 is not applied");
        drop(cluster);
        assert!(matches!(
            waiting.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
