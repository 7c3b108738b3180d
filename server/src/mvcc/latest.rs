//! The newest version of recently written keys, so that a put finds the version it replaces
//! without a seek across RocksDB's sorted runs: that seek was the largest single cost of a put
//! (bench/results/perf-push-2.md). Bounded in bytes, so memory does not grow with the data.
//!
//! It describes the store at exactly one revision. Only the applier changes it, in
//! `MvccStore::stage` from the entry's own changes, before the new revision is published;
//! and it answers only a transaction that starts at that same revision. Anything else (a
//! reader at an older revision, a store reloaded from a snapshot) misses and reads RocksDB.
//!
//! It also remembers the newest change it let go of (evicted, too large, or forgotten with
//! everything else). Once RocksDB holds that change, every key the staged, unwritten entries
//! changed is still here, so a miss can read RocksDB without writing them first.

use std::sync::Mutex;

use bytes::Bytes;
use foldhash::fast::RandomState;
use lru::LruCache;

use crate::proto::mvccpb::KeyValue;

/// Bytes a cached entry costs beyond its key and value (map slot, list links, KeyValue).
const ENTRY_OVERHEAD: usize = 128;

pub struct LatestVersions {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The store revision the entries describe.
    revision: i64,
    entries: LruCache<Bytes, Cached, RandomState>,
    bytes: usize,
    budget: usize,
    /// The newest revision whose change to some key is no longer held (0: none).
    newest_dropped_change: i64,
}

struct Cached {
    /// `None`: the key has no live version at `revision`.
    version: Option<KeyValue>,
    /// The revision of the staged change this came from; 0 for what a read of RocksDB found.
    changed_at: i64,
}

/// What a read of RocksDB found, not a change of its own.
const READ_FROM_STORE: i64 = 0;

fn cost(key: &Bytes, version: &Option<KeyValue>) -> usize {
    key.len() + version.as_ref().map_or(0, |kv| kv.value.len()) + ENTRY_OVERHEAD
}

impl LatestVersions {
    pub fn new(revision: i64, budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                revision,
                entries: LruCache::unbounded_with_hasher(RandomState::default()),
                bytes: 0,
                budget,
                newest_dropped_change: 0,
            }),
        }
    }

    /// The newest version of `key` at `revision`, if known: `Some(None)` means no live one.
    pub fn get(&self, key: &Bytes, revision: i64) -> Option<Option<KeyValue>> {
        let mut inner = self.inner.lock().ok()?;
        if inner.revision != revision {
            return None;
        }
        inner.entries.get(key).map(|cached| cached.version.clone())
    }

    /// Whether a key this cache does not hold may have been changed by an entry after
    /// `written` (the newest revision RocksDB holds) up to `revision`: a dropped change, or a
    /// cache that does not describe `revision`. If not, RocksDB's newest version of such a key
    /// is its newest at `revision` too.
    pub fn may_lack_changes_after(&self, written: i64, revision: i64) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return true;
        };
        inner.revision != revision || inner.newest_dropped_change > written
    }

    /// Remembers what a read at `revision` found, if the cache still describes that revision.
    pub fn fill(&self, key: &Bytes, revision: i64, version: &Option<KeyValue>) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.revision == revision {
                inner.insert(key.clone(), version.clone(), READ_FROM_STORE);
            }
        }
    }

    /// Moves the cache from `from` to `to` with the changes that entry made. A cache that did
    /// not describe `from` cannot be brought up to date and starts over.
    pub fn advance(
        &self,
        from: i64,
        to: i64,
        changes: impl IntoIterator<Item = (Bytes, Option<KeyValue>)>,
    ) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.revision != from {
            inner.start_over(to);
            return;
        }
        inner.revision = to;
        for (key, version) in changes {
            inner.insert(key, version, to);
        }
    }

    /// Forgets everything: the store underneath was replaced and is now at `revision`.
    pub fn reset(&self, revision: i64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.start_over(revision);
        }
    }
}

impl Inner {
    fn insert(&mut self, key: Bytes, version: Option<KeyValue>, changed_at: i64) {
        let added = cost(&key, &version);
        if added > self.budget {
            if let Some(old) = self.entries.pop(&key) {
                self.bytes -= cost(&key, &old.version);
            }
            self.note_dropped(changed_at);
            return;
        }
        let cached = Cached {
            version,
            changed_at,
        };
        if let Some((old_key, old)) = self.entries.push(key, cached) {
            // `push` hands back the replaced value of the same key (or an evicted entry,
            // which cannot happen in an unbounded map); the new value supersedes it.
            self.bytes -= cost(&old_key, &old.version);
        }
        self.bytes += added;
        while self.bytes > self.budget {
            match self.entries.pop_lru() {
                Some((k, old)) => {
                    self.bytes -= cost(&k, &old.version);
                    self.note_dropped(old.changed_at);
                }
                None => break,
            }
        }
    }

    fn note_dropped(&mut self, changed_at: i64) {
        self.newest_dropped_change = self.newest_dropped_change.max(changed_at);
    }

    /// Forgets every entry and describes `revision` from now on; any change up to it may have
    /// been among the forgotten.
    fn start_over(&mut self, revision: i64) {
        self.entries.clear();
        self.bytes = 0;
        self.revision = revision;
        self.note_dropped(revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> Option<KeyValue> {
        Some(KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            mod_revision: rev,
            create_revision: rev,
            version: 1,
            lease: 0,
        })
    }

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    #[test]
    fn answers_only_at_the_revision_it_describes() {
        let cache = LatestVersions::new(5, 1 << 20);
        cache.fill(&key("a"), 5, &kv("a", "1", 3));
        assert_eq!(cache.get(&key("a"), 5), Some(kv("a", "1", 3)));
        assert_eq!(
            cache.get(&key("a"), 4),
            None,
            "a reader at another revision misses"
        );
        cache.advance(5, 6, [(key("a"), None)]);
        assert_eq!(cache.get(&key("a"), 6), Some(None), "deleted at 6");
        assert_eq!(cache.get(&key("a"), 5), None);
        cache.fill(&key("b"), 5, &kv("b", "old", 2));
        assert_eq!(
            cache.get(&key("b"), 6),
            None,
            "a fill for a past revision is dropped"
        );
    }

    #[test]
    fn a_gap_in_revisions_empties_the_cache() {
        let cache = LatestVersions::new(5, 1 << 20);
        cache.fill(&key("a"), 5, &kv("a", "1", 3));
        cache.advance(7, 8, [(key("b"), kv("b", "2", 8))]);
        assert_eq!(cache.get(&key("a"), 8), None);
        assert_eq!(cache.get(&key("b"), 8), None);
        cache.reset(9);
        cache.fill(&key("c"), 9, &None);
        assert_eq!(cache.get(&key("c"), 9), Some(None));
    }

    #[test]
    fn stays_within_its_budget_evicting_the_least_recent() {
        let budget = 10 * (ENTRY_OVERHEAD + 2 + 100);
        let cache = LatestVersions::new(1, budget);
        let value = "v".repeat(100);
        for i in 0..50 {
            let k = format!("k{i:01}");
            cache.fill(&key(&k), 1, &kv(&k, &value, 1));
            cache.get(&key("k0"), 1);
        }
        let inner = cache.inner.lock().expect("lock");
        assert!(inner.bytes <= budget, "{} bytes over {budget}", inner.bytes);
        assert!(inner.entries.len() <= 10);
        assert!(
            inner.entries.contains(&key("k0")),
            "recently read entries stay"
        );
        assert!(!inner.entries.contains(&key("k1")), "old entries go");
    }

    #[test]
    fn knows_when_a_staged_change_may_be_missing() {
        let budget = 2 * (ENTRY_OVERHEAD + 2 + 1);
        let cache = LatestVersions::new(1, budget);
        cache.fill(&key("r1"), 1, &kv("r1", "x", 1));
        cache.fill(&key("r2"), 1, &kv("r2", "x", 1));
        cache.fill(&key("r3"), 1, &kv("r3", "x", 1));
        assert!(
            !cache.may_lack_changes_after(1, 1),
            "evicting what reads found drops no change"
        );
        assert!(
            cache.may_lack_changes_after(1, 2),
            "a cache at another revision knows nothing"
        );
        cache.advance(1, 2, [(key("c2"), kv("c2", "x", 2))]);
        cache.advance(2, 3, [(key("c3"), kv("c3", "x", 3))]);
        assert!(!cache.may_lack_changes_after(1, 3), "both changes held");
        cache.advance(3, 4, [(key("c4"), kv("c4", "x", 4))]);
        assert!(
            cache.may_lack_changes_after(1, 4),
            "the change at 2 was evicted before it was written"
        );
        assert!(
            !cache.may_lack_changes_after(2, 4),
            "once 2 is written, its eviction does not matter"
        );
        let too_large = "v".repeat(budget);
        cache.advance(4, 5, [(key("big"), kv("big", &too_large, 5))]);
        assert!(
            cache.may_lack_changes_after(4, 5),
            "a change too large to hold"
        );
        cache.advance(7, 8, [(key("c8"), kv("c8", "x", 8))]);
        assert!(
            cache.may_lack_changes_after(7, 8),
            "a gap forgets every change"
        );
        assert!(!cache.may_lack_changes_after(8, 8));
    }

    #[test]
    fn replacing_a_key_accounts_its_bytes_once() {
        let cache = LatestVersions::new(1, 1 << 20);
        for rev in 2..100 {
            cache.advance(rev - 1, rev, [(key("a"), kv("a", "xyz", rev))]);
        }
        let inner = cache.inner.lock().expect("lock");
        assert_eq!(inner.entries.len(), 1);
        assert_eq!(inner.bytes, 1 + 3 + ENTRY_OVERHEAD);
    }
}
