//! The newest entries of the raft log, kept in memory as they are appended.
//!
//! Nearly every read of the log is of entries appended a moment before: the state machine
//! applies what was just committed, and a leader sends its followers what it just appended.
//! Read from RocksDB, each such read built an iterator over the log's memtables, SST files and
//! purge tombstones and copied every entry out (3% of a member's CPU under put-64, see
//! bench/results/perf-push-2.md, step 21). Served from here, a read clones entries whose
//! payload is reference-counted.
//!
//! What is kept is always a contiguous run of the log's newest entries and never anything
//! RocksDB does not hold: entries are added after their write and forgotten before the write
//! that removes or replaces them, so a read that finds its whole range here gets exactly what
//! RocksDB would return, and any other read goes to RocksDB.

use std::collections::VecDeque;
use std::ops::RangeBounds;
use std::sync::{Mutex, MutexGuard};

use openraft::EntryPayload;

use super::log_store::{end_is_past, start_index};
use super::types::Entry;

/// Entries kept at most: more than the state machine applies in one go and than a follower
/// that keeps up lags behind.
const MAX_ENTRIES: usize = 4096;
/// Payload bytes kept at most, so that large values cannot make the cache large.
const MAX_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct RecentEntries {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// Consecutive indexes, oldest first.
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl RecentEntries {
    /// Forgets every entry at `index` and after: call it before a write that removes or
    /// replaces them.
    pub fn forget_from(&self, index: u64) {
        let mut kept = self.lock();
        while kept.entries.back().is_some_and(|e| e.log_id.index >= index) {
            kept.pop_back();
        }
    }

    /// Forgets every entry up to `index`, inclusive: call it before the purge that deletes
    /// them.
    pub fn forget_up_to(&self, index: u64) {
        let mut kept = self.lock();
        while kept
            .entries
            .front()
            .is_some_and(|e| e.log_id.index <= index)
        {
            kept.pop_front();
        }
    }

    /// Keeps `entries` (consecutive, just written); what they do not continue is forgotten.
    pub fn keep(&self, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return;
        };
        let mut kept = self.lock();
        let continues = kept
            .entries
            .back()
            .is_none_or(|last| last.log_id.index.checked_add(1) == Some(first));
        if !continues {
            kept.entries.clear();
            kept.bytes = 0;
        }
        for entry in entries {
            kept.bytes += payload_bytes(&entry);
            kept.entries.push_back(entry);
        }
        while kept.entries.len() > MAX_ENTRIES || (kept.bytes > MAX_BYTES && kept.entries.len() > 1)
        {
            kept.pop_front();
        }
    }

    /// The entries of `range` if every one of them is kept; `None` sends the read to RocksDB.
    pub fn get(&self, range: &impl RangeBounds<u64>) -> Option<Vec<Entry>> {
        let kept = self.lock();
        let oldest = kept.entries.front()?.log_id.index;
        let newest = kept.entries.back()?.log_id.index;
        let start = start_index(range);
        // Past the last entry kept, RocksDB is asked: it knows whether the log ends there.
        if start < oldest || !end_is_past(range, newest.saturating_add(1)) {
            return None;
        }
        let from = usize::try_from(start - oldest).ok()?;
        Some(
            kept.entries
                .iter()
                .skip(from)
                .take_while(|e| !end_is_past(range, e.log_id.index))
                .cloned()
                .collect(),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        // The cache holds no invariant a panic elsewhere could break half-way: a poisoned lock
        // is still a consistent cache.
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Kept {
    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= payload_bytes(&entry);
        }
    }

    fn pop_back(&mut self) {
        if let Some(entry) = self.entries.pop_back() {
            self.bytes -= payload_bytes(&entry);
        }
    }
}

fn payload_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(proposal) => proposal.0.len(),
        EntryPayload::Blank | EntryPayload::Membership(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{LogId, Proposal};
    use openraft::entry::RaftEntry;

    fn entry(index: u64, term: u64, payload: &[u8]) -> Entry {
        Entry::new(
            LogId::new_term_index(term, index),
            EntryPayload::Normal(Proposal(bytes::Bytes::copy_from_slice(payload))),
        )
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        entries.map(|v| {
            v.iter()
                .map(|e| (e.log_id.index, e.log_id.leader_id.term))
                .collect()
        })
    }

    #[test]
    fn a_range_is_served_only_when_every_entry_of_it_is_kept() {
        let recent = RecentEntries::default();
        recent.keep((5..=9).map(|i| entry(i, 1, b"x")).collect());
        assert_eq!(
            indexes(recent.get(&(6..=8))),
            Some(vec![(6, 1), (7, 1), (8, 1)])
        );
        assert_eq!(indexes(recent.get(&(5..10))).map(|v| v.len()), Some(5));
        assert_eq!(indexes(recent.get(&(4..=6))), None, "4 is not kept");
        assert_eq!(indexes(recent.get(&(8..=10))), None, "10 is not kept");
        assert_eq!(
            indexes(recent.get(&(8..))),
            None,
            "the log's end is RocksDB's to say"
        );
        assert_eq!(indexes(recent.get(&(7..7))), Some(vec![]));
    }

    #[test]
    fn replaced_and_purged_entries_are_never_served() {
        let recent = RecentEntries::default();
        recent.keep((1..=6).map(|i| entry(i, 1, b"x")).collect());
        // A follower's conflicting tail is truncated, then rewritten in a new term.
        recent.forget_from(5);
        assert_eq!(indexes(recent.get(&(4..=5))), None);
        recent.keep(vec![entry(5, 2, b"y")]);
        assert_eq!(indexes(recent.get(&(4..=5))), Some(vec![(4, 1), (5, 2)]));
        recent.forget_up_to(4);
        assert_eq!(indexes(recent.get(&(4..=5))), None);
        assert_eq!(indexes(recent.get(&(5..=5))), Some(vec![(5, 2)]));
    }

    #[test]
    fn entries_that_do_not_continue_the_kept_run_start_a_new_one() {
        let recent = RecentEntries::default();
        recent.keep((1..=3).map(|i| entry(i, 1, b"x")).collect());
        recent.keep(vec![entry(10, 2, b"x")]);
        assert_eq!(indexes(recent.get(&(3..=3))), None);
        assert_eq!(indexes(recent.get(&(10..=10))), Some(vec![(10, 2)]));
    }

    #[test]
    fn the_oldest_entries_go_first_when_the_bounds_are_reached() {
        let recent = RecentEntries::default();
        let count = MAX_ENTRIES as u64 + 10;
        recent.keep((1..=count).map(|i| entry(i, 1, b"x")).collect());
        assert_eq!(indexes(recent.get(&(10..=10))), None);
        assert_eq!(indexes(recent.get(&(11..=11))), Some(vec![(11, 1)]));

        let big = vec![0u8; MAX_BYTES / 2 + 1];
        recent.keep(vec![entry(count + 1, 1, &big), entry(count + 2, 1, &big)]);
        assert_eq!(indexes(recent.get(&(count + 1..=count + 1))), None);
        assert_eq!(
            indexes(recent.get(&(count + 2..=count + 2))),
            Some(vec![(count + 2, 1)])
        );
    }
}
