//! What the raft layer knows about the cluster beyond openraft's own state: which members were
//! removed (their IDs are never reused, and they are told so), when this member last heard from
//! its leader, and the fatal conditions that must stop the member.

use std::collections::BTreeSet;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use super::peer::faults::PeerFaults;
use std::sync::Arc;

const REMOVED_NOW: &str = "the member has been permanently removed from the cluster";

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
    /// The last applied log index, for requests waiting to see their entry applied here.
    applied: watch::Sender<u64>,
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
            applied: watch::channel(0).0,
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
        self.applied.send_if_modified(|current| {
            if index > *current {
                *current = index;
                true
            } else {
                false
            }
        });
    }

    /// The last applied log index now.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    pub fn applied_receiver(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
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
