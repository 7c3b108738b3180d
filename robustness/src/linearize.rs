//! A generic linearizability checker: the Wing–Gong search with Lowe's just-in-time
//! linearization and memoization (the algorithm of porcupine and Knossos' "wgl"), with
//! P-compositionality (Horn and Kroening) when the model splits a history into independent parts.
//!
//! An operation has an invocation time and either a return time, or none when its outcome is
//! unknown. Operations without a return may be linearized at any point after their invocation;
//! an *optional* one may also never take effect (a request that failed or timed out), a
//! *required* one must take effect (a request known, from elsewhere, to have been committed).
//!
//! The search keeps the pending call and return events in a linked list ordered by time and
//! repeatedly linearizes the first call it can (the model accepts it and the pair (linearized
//! set, state) was never seen), going back when it meets the return of an operation it could
//! not linearize. The visited set is stored as a 128-bit Zobrist hash of the linearized set and
//! a 64-bit hash of the state, so that memory grows by 32 bytes per visited configuration
//! rather than by the size of the history; a collision (about 2^-100 per pair) could only
//! prune a configuration, never accept an illegal history. Time and visited configurations are
//! bounded: past either bound the answer is `Unknown`.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// The sequential specification of an object.
pub trait Model {
    type State: Clone + Hash + Eq;
    type Op;

    /// The state after `op` from `state`, or `None` when `op` (with its recorded answer) cannot
    /// happen in `state`.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;

    /// Independent sub-histories (P-compositionality): each part must be linearizable on its
    /// own from `initial`, and together they are exactly when each is. The default is one part.
    fn partition(&self, ops: &[Entry<Self::Op>]) -> Vec<Vec<usize>> {
        vec![(0..ops.len()).collect()]
    }

    /// The initial state of part `part` (as returned by `partition`).
    fn initial(&self, part: &[usize]) -> Self::State;
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Entry<O> {
    pub call: u64,
    /// `None`: the outcome is unknown; the operation may take effect any time after `call`.
    pub ret: Option<u64>,
    /// With `ret = None`: whether the operation may also never take effect.
    pub optional: bool,
    pub op: O,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub time: Duration,
    /// Visited configurations kept for memoization (32 bytes each in the set).
    pub max_visited: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(120),
            max_visited: 8_000_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists. `deepest` is the longest prefix of a linearization that the search
    /// found (operation indices, in order), `stuck` the operations pending at that point that
    /// none could be linearized next (their calls, and the return the search ran into).
    Illegal {
        deepest: Vec<usize>,
        stuck: Vec<usize>,
    },
    /// A bound was reached before an answer.
    Unknown {
        reason: String,
    },
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub visited: usize,
    pub parts: usize,
    pub elapsed: Duration,
    /// Where the search got furthest: the last operations of the longest linearized prefix,
    /// and the operations it could not continue with (for reports on `Unknown`).
    pub deepest_tail: Vec<usize>,
    pub deepest_len: usize,
    pub stuck: Vec<usize>,
}

/// Checks `ops` against `model`, part by part.
pub fn check<M: Model>(model: &M, ops: &[Entry<M::Op>], limits: Limits) -> (Verdict, Stats) {
    let started = Instant::now();
    let deadline = started + limits.time;
    let parts = model.partition(ops);
    let mut stats = Stats {
        parts: parts.len(),
        ..Stats::default()
    };
    let mut unknown = None;
    for part in &parts {
        let initial = model.initial(part);
        let verdict = search(model, ops, part, initial, deadline, limits, &mut stats);
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Illegal { .. } => {
                stats.elapsed = started.elapsed();
                return (verdict, stats);
            }
            Verdict::Unknown { .. } => unknown = Some(verdict),
        }
    }
    stats.elapsed = started.elapsed();
    (unknown.unwrap_or(Verdict::Linearizable), stats)
}

/// Checks a sub-history (indices into `ops`) from a given state, without partitioning.
pub fn check_from<M: Model>(
    model: &M,
    ops: &[Entry<M::Op>],
    subset: &[usize],
    initial: M::State,
    limits: Limits,
) -> (Verdict, Stats) {
    let started = Instant::now();
    let mut stats = Stats {
        parts: 1,
        ..Stats::default()
    };
    let verdict = search(
        model,
        ops,
        subset,
        initial,
        started + limits.time,
        limits,
        &mut stats,
    );
    stats.elapsed = started.elapsed();
    (verdict, stats)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Return,
}

struct Event {
    kind: Kind,
    /// Index into `ops`.
    op: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

/// The events of one part as a doubly linked list; slot 0 is the head sentinel.
struct List {
    events: Vec<Event>,
    /// Per local operation: its call and return slots (`NIL` when it has no return).
    slots: Vec<(usize, usize)>,
}

impl List {
    fn new<O>(ops: &[Entry<O>], part: &[usize]) -> List {
        let mut raw: Vec<(u64, u8, usize)> = Vec::with_capacity(part.len() * 2);
        for (local, &index) in part.iter().enumerate() {
            let entry = &ops[index];
            // At equal times calls come first: the operations are then taken as concurrent,
            // the lenient reading of a tie.
            raw.push((entry.call, 0, local));
            if let Some(ret) = entry.ret {
                raw.push((ret.max(entry.call), 1, local));
            }
        }
        raw.sort_unstable();
        let mut events = Vec::with_capacity(raw.len() + 1);
        events.push(Event {
            kind: Kind::Call,
            op: NIL,
            prev: NIL,
            next: NIL,
        });
        let mut slots = vec![(NIL, NIL); part.len()];
        for (time_order, (_, kind, local)) in raw.into_iter().enumerate() {
            let slot = time_order + 1;
            events.push(Event {
                kind: if kind == 0 { Kind::Call } else { Kind::Return },
                op: local,
                prev: slot - 1,
                next: NIL,
            });
            events[slot - 1].next = slot;
            if kind == 0 {
                slots[local].0 = slot;
            } else {
                slots[local].1 = slot;
            }
        }
        List { events, slots }
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.events[slot].prev, self.events[slot].next);
        self.events[prev].next = next;
        if next != NIL {
            self.events[next].prev = prev;
        }
    }

    /// Puts back a slot removed by `unlink` (in the reverse order of removal).
    fn relink(&mut self, slot: usize) {
        let (prev, next) = (self.events[slot].prev, self.events[slot].next);
        self.events[prev].next = slot;
        if next != NIL {
            self.events[next].prev = slot;
        }
    }

    fn lift(&mut self, local: usize) {
        let (call, ret) = self.slots[local];
        self.unlink(call);
        if ret != NIL {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, local: usize) {
        let (call, ret) = self.slots[local];
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }
}

fn state_hash<S: Hash>(state: &S) -> u64 {
    let mut hasher = DefaultHasher::new();
    state.hash(&mut hasher);
    hasher.finish()
}

/// Zobrist keys: fixed pseudo-random 128-bit values per operation (SplitMix64).
fn zobrist(n: usize) -> Vec<u128> {
    let mut x: u64 = 0x005e_ed0f_11ea_2ab1;
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| (u128::from(next()) << 64) | u128::from(next()))
        .collect()
}

fn search<M: Model>(
    model: &M,
    ops: &[Entry<M::Op>],
    part: &[usize],
    initial: M::State,
    deadline: Instant,
    limits: Limits,
    stats: &mut Stats,
) -> Verdict {
    let mut list = List::new(ops, part);
    let keys = zobrist(part.len());
    let mut required_left = part
        .iter()
        .filter(|&&i| ops[i].ret.is_some() || !ops[i].optional)
        .count();
    let required = |local: usize| ops[part[local]].ret.is_some() || !ops[part[local]].optional;
    let mut visited: HashSet<(u128, u64)> = HashSet::new();
    let mut linearized: u128 = 0;
    let mut state = initial;
    // (local op, state before it, forced): a forced step is never a choice point (below).
    let mut stack: Vec<(usize, M::State, bool)> = Vec::new();
    let mut deepest: Vec<usize> = Vec::new();
    let mut stuck: Vec<usize> = Vec::new();
    let mut cursor = list.events[0].next;
    // Whether the current state was just reached (and not yet searched for a forced step).
    let mut fresh = true;
    loop {
        if required_left == 0 {
            return Verdict::Linearizable;
        }
        stats.steps += 1;
        if stats.steps.is_multiple_of(4096) && Instant::now() >= deadline {
            stats.deepest_len = deepest.len();
            stats.deepest_tail = deepest.iter().rev().take(8).rev().copied().collect();
            stats.stuck = stuck.clone();
            return Verdict::Unknown {
                reason: format!("no answer within {:?}", limits.time),
            };
        }
        let mut dead_end = false;
        if fresh {
            fresh = false;
            // A required operation that fits here without changing the state is linearized
            // at once and is not a choice point: any linearization that places it later can
            // place it here instead (the states in between are the same, and everything that
            // had to precede it is already linearized since it is pending now). This keeps
            // concurrent reads from multiplying the configurations.
            let mut scan = list.events[0].next;
            let mut forced = None;
            while scan != NIL && list.events[scan].kind == Kind::Call {
                let local = list.events[scan].op;
                if required(local) {
                    if let Some(next) = model.step(&state, &ops[part[local]].op) {
                        if next == state {
                            forced = Some(local);
                            break;
                        }
                    }
                }
                scan = list.events[scan].next;
            }
            if let Some(local) = forced {
                let key = (linearized ^ keys[local], state_hash(&state));
                if visited.insert(key) {
                    if visited.len() > limits.max_visited {
                        stats.visited = visited.len();
                        return Verdict::Unknown {
                            reason: format!(
                                "more than {} configurations visited",
                                limits.max_visited
                            ),
                        };
                    }
                    list.lift(local);
                    linearized ^= keys[local];
                    required_left -= 1;
                    stack.push((local, state.clone(), true));
                    cursor = list.events[0].next;
                    stats.visited = visited.len();
                    fresh = true;
                    continue;
                }
                // Already explored from there, without success.
                dead_end = true;
            }
        }
        let at_return = cursor != NIL && list.events[cursor].kind == Kind::Return;
        if dead_end || cursor == NIL || at_return {
            // Nothing more can be linearized here: remember the deepest point, then go back
            // to the last choice point.
            if stack.len() >= deepest.len() {
                deepest = stack.iter().map(|(local, _, _)| part[*local]).collect();
                stuck = pending(&list, part);
            }
            loop {
                let Some((local, previous, forced)) = stack.pop() else {
                    return Verdict::Illegal { deepest, stuck };
                };
                list.unlift(local);
                linearized ^= keys[local];
                if required(local) {
                    required_left += 1;
                }
                state = previous;
                if !forced {
                    cursor = list.events[list.slots[local].0].next;
                    break;
                }
            }
            continue;
        }
        let local = list.events[cursor].op;
        let index = part[local];
        match model.step(&state, &ops[index].op) {
            // An optional operation without effect here is better left pending: not taking
            // effect at all is always allowed, and it keeps every later place open. Without
            // this, each pending optional operation doubles the configurations.
            Some(next) if ops[index].optional && next == state => {
                cursor = list.events[cursor].next;
            }
            Some(next) => {
                let key = (linearized ^ keys[local], state_hash(&next));
                if visited.insert(key) {
                    if visited.len() > limits.max_visited {
                        stats.visited = visited.len();
                        return Verdict::Unknown {
                            reason: format!(
                                "more than {} configurations visited",
                                limits.max_visited
                            ),
                        };
                    }
                    list.lift(local);
                    linearized ^= keys[local];
                    if required(local) {
                        required_left -= 1;
                    }
                    stack.push((local, std::mem::replace(&mut state, next), false));
                    cursor = list.events[0].next;
                    stats.visited = visited.len();
                    fresh = true;
                    continue;
                }
                cursor = list.events[cursor].next;
            }
            None => cursor = list.events[cursor].next,
        }
    }
}

/// The operations whose events are still in the list up to and including the first return.
fn pending(list: &List, part: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut cursor = list.events[0].next;
    while cursor != NIL {
        let event = &list.events[cursor];
        out.push(part[event.op]);
        if event.kind == Kind::Return {
            break;
        }
        cursor = event.next;
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Shrinks an illegal history: removes, one at a time, the operations `removable` allows as
/// long as `still_illegal` holds for what is left. Bounded by `budget` checks.
pub fn minimize(
    subset: &[usize],
    removable: impl Fn(usize) -> bool,
    mut still_illegal: impl FnMut(&[usize]) -> bool,
    budget: usize,
) -> Vec<usize> {
    let mut current: Vec<usize> = subset.to_vec();
    let mut checks = 0;
    let mut i = current.len();
    while i > 0 && checks < budget {
        i -= 1;
        if !removable(current[i]) {
            continue;
        }
        let mut candidate = current.clone();
        candidate.remove(i);
        checks += 1;
        if still_illegal(&candidate) {
            current = candidate;
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registers, one per key, each holding a u32 (0 at first): the textbook example, and one
    /// that partitions by key.
    struct Registers;

    #[derive(Clone, Debug)]
    enum RegOp {
        Write(u8, u32),
        Read(u8, u32),
    }

    impl RegOp {
        fn key(&self) -> u8 {
            match self {
                RegOp::Write(k, _) | RegOp::Read(k, _) => *k,
            }
        }
    }

    impl Model for Registers {
        type State = Vec<(u8, u32)>;
        type Op = RegOp;

        fn step(&self, state: &Self::State, op: &RegOp) -> Option<Self::State> {
            let get = |k: u8| {
                state
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map_or(0, |(_, v)| *v)
            };
            match op {
                RegOp::Read(k, v) => (get(*k) == *v).then(|| state.clone()),
                RegOp::Write(k, v) => {
                    let mut next: Vec<(u8, u32)> =
                        state.iter().copied().filter(|(key, _)| key != k).collect();
                    next.push((*k, *v));
                    next.sort_unstable();
                    Some(next)
                }
            }
        }

        fn partition(&self, ops: &[Entry<RegOp>]) -> Vec<Vec<usize>> {
            let mut keys: Vec<u8> = ops.iter().map(|e| e.op.key()).collect();
            keys.sort_unstable();
            keys.dedup();
            keys.iter()
                .map(|k| (0..ops.len()).filter(|i| ops[*i].op.key() == *k).collect())
                .collect()
        }

        fn initial(&self, _: &[usize]) -> Self::State {
            Vec::new()
        }
    }

    fn op(call: u64, ret: u64, op: RegOp) -> Entry<RegOp> {
        Entry {
            call,
            ret: Some(ret),
            optional: false,
            op,
        }
    }

    fn maybe(call: u64, op: RegOp) -> Entry<RegOp> {
        Entry {
            call,
            ret: None,
            optional: true,
            op,
        }
    }

    fn verdict(ops: &[Entry<RegOp>]) -> Verdict {
        check(&Registers, ops, Limits::default()).0
    }

    use RegOp::{Read, Write};

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = [op(0, 1, Write(0, 1)), op(2, 3, Read(0, 1))];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_write_is_illegal() {
        let ops = [op(0, 1, Write(0, 1)), op(2, 3, Read(0, 0))];
        assert!(matches!(verdict(&ops), Verdict::Illegal { .. }));
    }

    #[test]
    fn concurrent_writes_may_take_effect_in_reverse_order() {
        // Three overlapping writes read back in the reverse order of their invocations.
        let ops = [
            op(0, 100, Write(0, 1)),
            op(1, 100, Write(0, 2)),
            op(2, 100, Write(0, 3)),
            op(3, 4, Read(0, 3)),
            op(5, 6, Read(0, 2)),
            op(7, 8, Read(0, 1)),
        ];
        assert_eq!(verdict(&ops), Verdict::Linearizable);
    }

    #[test]
    fn sequentially_consistent_but_not_linearizable_is_illegal() {
        // Reads of 1 then 0 during one write of 1: no single point for the write.
        let ops = [
            op(0, 10, Write(0, 1)),
            op(1, 2, Read(0, 1)),
            op(3, 4, Read(0, 0)),
        ];
        let Verdict::Illegal { deepest, stuck } = verdict(&ops) else {
            panic!("accepted");
        };
        assert_eq!(deepest, vec![0, 1], "write then the first read");
        assert!(stuck.contains(&2));
    }

    #[test]
    fn an_unknown_write_may_or_may_not_take_effect() {
        let seen = [maybe(0, Write(0, 7)), op(5, 6, Read(0, 7))];
        assert_eq!(verdict(&seen), Verdict::Linearizable);
        let unseen = [maybe(0, Write(0, 7)), op(5, 6, Read(0, 0))];
        assert_eq!(verdict(&unseen), Verdict::Linearizable);
        // ...but not before it was invoked.
        let early = [op(0, 1, Read(0, 7)), maybe(5, Write(0, 7))];
        assert!(matches!(verdict(&early), Verdict::Illegal { .. }));
        // ...and not undone once seen.
        let flicker = [
            maybe(0, Write(0, 7)),
            op(1, 2, Read(0, 7)),
            op(3, 4, Read(0, 0)),
        ];
        assert!(matches!(verdict(&flicker), Verdict::Illegal { .. }));
    }

    #[test]
    fn a_required_write_without_return_must_take_effect_but_not_before_its_call() {
        let mut committed = maybe(10, Write(0, 7));
        committed.optional = false;
        // It may take effect after everything else.
        let late = [committed.clone(), op(11, 12, Read(0, 0))];
        assert_eq!(verdict(&late), Verdict::Linearizable);
        // Its effect cannot be seen before it was invoked.
        let early = [committed, op(0, 1, Read(0, 7))];
        assert!(matches!(verdict(&early), Verdict::Illegal { .. }));
    }

    #[test]
    fn partitions_are_checked_independently() {
        let ops = [
            op(0, 1, Write(0, 1)),
            op(0, 1, Write(1, 5)),
            op(2, 3, Read(1, 5)),
            op(2, 3, Read(0, 1)),
        ];
        let (v, stats) = check(&Registers, &ops, Limits::default());
        assert_eq!(v, Verdict::Linearizable);
        assert_eq!(stats.parts, 2);
        let bad = [
            op(0, 1, Write(0, 1)),
            op(0, 1, Write(1, 5)),
            op(2, 3, Read(1, 0)),
        ];
        assert!(matches!(verdict(&bad), Verdict::Illegal { .. }));
    }

    #[test]
    fn bounds_answer_unknown() {
        // Many concurrent writes and no reads: huge, all legal; a bound of 10 visited
        // configurations stops the search early.
        let ops: Vec<_> = (0..30).map(|i| op(0, 100, Write(0, i))).collect();
        let limits = Limits {
            time: Duration::from_secs(10),
            max_visited: 10,
        };
        let mut with_read = ops.clone();
        with_read.push(op(200, 201, Read(0, 999)));
        let (v, _) = check(&Registers, &with_read, limits);
        assert!(matches!(v, Verdict::Unknown { .. }), "{v:?}");
    }

    #[test]
    fn minimize_keeps_the_core_of_an_illegal_history() {
        let mut ops: Vec<_> = (0..20)
            .map(|i| op(i * 10, i * 10 + 1, Write(1, i as u32)))
            .collect();
        ops.push(op(300, 301, Write(0, 1)));
        ops.push(op(302, 303, Read(0, 0)));
        let all: Vec<usize> = (0..ops.len()).collect();
        let illegal = |subset: &[usize]| {
            matches!(
                check_from(&Registers, &ops, subset, Vec::new(), Limits::default()).0,
                Verdict::Illegal { .. }
            )
        };
        assert!(illegal(&all));
        let core = minimize(&all, |_| true, illegal, 1000);
        assert_eq!(core, vec![20, 21]);
    }
}
