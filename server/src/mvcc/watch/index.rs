//! Finding the watchers of a key without looking at every watcher.
//!
//! Single-key watchers sit in a hash map. Range watchers are grouped by identical range (many
//! clients watch the same prefixes) and the groups are kept sorted by start with a running
//! maximum of ends, so a stabbing query walks back only over groups that can still contain the
//! key.

use std::hash::Hash;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};

use crate::mvcc::read::KeyRange;

/// `None` is "no end" (every key from the start).
type End = Option<Bytes>;

fn end_after(end: &End, key: &[u8]) -> bool {
    end.as_ref().is_none_or(|e| e.as_ref() > key)
}

fn max_end(a: &End, b: &End) -> End {
    match (a, b) {
        (None, _) | (_, None) => None,
        (Some(x), Some(y)) => Some(if x >= y { x.clone() } else { y.clone() }),
    }
}

struct Group<K> {
    start: Bytes,
    end: End,
    members: Vec<K>,
}

pub struct MatchIndex<K> {
    single: HashMap<Bytes, Vec<K>>,
    groups: HashMap<(Bytes, End), Vec<K>>,
    sorted: Vec<Group<K>>,
    /// `reach[i]` is the largest end among `sorted[..=i]`.
    reach: Vec<End>,
    dirty: bool,
}

impl<K: Copy + Eq + Hash> Default for MatchIndex<K> {
    fn default() -> Self {
        Self {
            single: HashMap::new(),
            groups: HashMap::new(),
            sorted: Vec::new(),
            reach: Vec::new(),
            dirty: false,
        }
    }
}

impl<K: Copy + Eq + Hash> MatchIndex<K> {
    pub fn insert(&mut self, range: &KeyRange, member: K) {
        match range {
            KeyRange::Single(k) => self.single.entry(k.clone()).or_default().push(member),
            KeyRange::Span { start, end } => {
                self.groups
                    .entry((start.clone(), end.clone()))
                    .or_default()
                    .push(member);
                self.dirty = true;
            }
        }
    }

    pub fn remove(&mut self, range: &KeyRange, member: K) {
        match range {
            KeyRange::Single(k) => {
                if let Some(list) = self.single.get_mut(k) {
                    list.retain(|m| *m != member);
                    if list.is_empty() {
                        self.single.remove(k);
                    }
                }
            }
            KeyRange::Span { start, end } => {
                let slot = (start.clone(), end.clone());
                if let Some(list) = self.groups.get_mut(&slot) {
                    list.retain(|m| *m != member);
                    if list.is_empty() {
                        self.groups.remove(&slot);
                    }
                }
                self.dirty = true;
            }
        }
    }

    fn rebuild(&mut self) {
        let mut sorted: Vec<Group<K>> = self
            .groups
            .iter()
            .map(|((start, end), members)| Group {
                start: start.clone(),
                end: end.clone(),
                members: members.clone(),
            })
            .collect();
        sorted.sort_by(|a, b| a.start.cmp(&b.start));
        let mut reach = Vec::with_capacity(sorted.len());
        let mut running: End = Some(Bytes::new());
        for group in &sorted {
            running = max_end(&running, &group.end);
            reach.push(running.clone());
        }
        self.sorted = sorted;
        self.reach = reach;
        self.dirty = false;
    }

    /// Calls `f` for every member whose range contains `key`.
    pub fn for_each_match(&mut self, key: &[u8], mut f: impl FnMut(K)) {
        if let Some(list) = self.single.get(key) {
            list.iter().copied().for_each(&mut f);
        }
        if self.dirty {
            self.rebuild();
        }
        let candidates = self.sorted.partition_point(|g| g.start.as_ref() <= key);
        for i in (0..candidates).rev() {
            if !end_after(&self.reach[i], key) {
                break;
            }
            let group = &self.sorted[i];
            if end_after(&group.end, key) {
                group.members.iter().copied().for_each(&mut f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(start: &[u8], end: Option<&[u8]>) -> KeyRange {
        KeyRange::Span {
            start: Bytes::copy_from_slice(start),
            end: end.map(Bytes::copy_from_slice),
        }
    }

    proptest! {
        #[test]
        fn matches_exactly_the_containing_ranges(
            ranges in proptest::collection::vec((0u8..8, proptest::option::of(0u8..9), any::<bool>()), 0..20),
            probes in proptest::collection::vec(0u8..9, 1..10),
            removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let mut index = MatchIndex::default();
            let mut all: Vec<(KeyRange, usize)> = ranges.iter().enumerate().map(|(i, (s, e, single))| {
                let range = if *single { KeyRange::Single(Bytes::from(vec![*s])) } else { span(&[*s], e.map(|e| vec![e]).as_deref()) };
                (range, i)
            }).collect();
            for (range, id) in &all { index.insert(range, *id); }
            for r in removals {
                if all.is_empty() { break; }
                let (range, id) = all.remove(r.index(all.len()));
                index.remove(&range, id);
            }
            for probe in probes {
                let key = [probe];
                let mut got = Vec::new();
                index.for_each_match(&key, |m| got.push(m));
                got.sort();
                let mut want: Vec<usize> = all.iter().filter(|(r, _)| r.contains(&key)).map(|(_, id)| *id).collect();
                want.sort();
                prop_assert_eq!(got, want);
            }
        }
    }
}
