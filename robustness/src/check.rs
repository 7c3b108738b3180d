//! Checking a run's key-value history.
//!
//! 1. *Patching* (etcd's trick, made exact by unique values): every value the traffic writes
//!    is unique, so the committed history (from the watches) tells which indeterminate
//!    requests took effect and at which revision. Those become required operations pinned to
//!    that revision; the ones whose writes never appeared had no effect and are dropped. The
//!    search is then almost linear: at each state only operations of its revision fit.
//! 2. *Attribution*: every committed revision must come from exactly one request (or a lease
//!    expiry: a revision deleting exactly a lease's keys); every acknowledged write must be in
//!    the committed history at the revision it was acknowledged with; no value is committed
//!    twice; no revision is seen before the request that made it was invoked; no request
//!    that failed definitely committed anything.
//! 3. *Linearizability* of everything that was answered at the current revision
//!    (`linearize` with the `model`).
//! 4. Reads that are not linearizable by contract (serializable reads, reads at an old
//!    revision) are compared with the committed history replayed to their revision, and
//!    compaction errors with the compactions requested.
//! 5. When the history is illegal, the smallest revision window that is still illegal is
//!    found, then every operation not needed to keep it illegal is removed: the report shows a
//!    minimal illegal sub-history, starting from the replayed state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::committed::{CommittedLog, Replay};
use crate::history::{describe_request, Operation, Outcome, RangeResult, Request, Response, TxnOp};
use crate::linearize::{self, Entry, Limits, Verdict};
use crate::model::{Expect, KvModel, KvOp, KvState};

#[derive(Clone, Debug, Default, Serialize)]
pub struct KvReport {
    /// "linearizable", "illegal" or "unknown: <why>".
    pub verdict: String,
    pub operations_checked: usize,
    pub indeterminate_pinned: usize,
    pub indeterminate_dropped: usize,
    pub indeterminate_open: usize,
    pub lease_expiries: usize,
    pub stale_reads_checked: usize,
    pub stale_reads_skipped: usize,
    pub steps: u64,
    pub visited: usize,
    pub checker_ms: u64,
    pub anomalies: Vec<String>,
    /// A minimal illegal sub-history, one operation per line.
    pub minimal: Vec<String>,
}

struct Prepared {
    entries: Vec<Entry<KvOp>>,
    /// The revision each entry creates, when known.
    creates: Vec<Option<i64>>,
}

fn has_deletes(request: &Request) -> bool {
    match request {
        Request::Delete { .. } | Request::LeaseRevoke { .. } => true,
        Request::Txn(txn) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| matches!(op, TxnOp::Delete { .. })),
        _ => false,
    }
}

/// The revision an acknowledged request created, if it changed anything.
fn created_by(request: &Request, response: &Response) -> Option<i64> {
    match (request, response) {
        (Request::Put { .. }, Response::Put { revision }) => Some(*revision),
        (Request::Delete { .. }, Response::Delete { revision, deleted }) => {
            (*deleted > 0).then_some(*revision)
        }
        (
            Request::Txn(txn),
            Response::Txn {
                revision,
                succeeded,
                results,
            },
        ) => {
            let branch = if *succeeded {
                &txn.success
            } else {
                &txn.failure
            };
            let changed = branch
                .iter()
                .zip(results)
                .any(|(op, result)| match (op, result) {
                    (TxnOp::Put { .. }, _) => true,
                    (TxnOp::Delete { .. }, crate::history::TxnResult::Delete { deleted }) => {
                        *deleted > 0
                    }
                    _ => false,
                });
            changed.then_some(*revision)
        }
        _ => None,
    }
}

fn entry(op: &Operation, expect: Expect) -> Entry<KvOp> {
    let ret = match expect {
        Expect::Response(_) => Some(op.ret),
        _ => None,
    };
    Entry {
        call: op.call,
        ret,
        optional: matches!(expect, Expect::Unknown),
        op: KvOp {
            id: op.id,
            request: op.request.clone(),
            expect,
        },
    }
}

/// Patching and attribution (steps 1 and 2).
fn prepare(
    ops: &[Operation],
    log: &CommittedLog,
    first_seen: &BTreeMap<i64, u64>,
    report: &mut KvReport,
) -> Prepared {
    let complete = log.is_complete();
    let put_revisions = log.put_revisions();
    for ((key, value), revisions) in &put_revisions {
        if revisions.len() > 1 {
            report.anomalies.push(format!(
                "the value {key}={value} was committed {} times (revisions {revisions:?}): a request applied twice",
                revisions.len()
            ));
        }
    }
    let revision_of = |key: &str, value: &str| {
        put_revisions
            .get(&(key.to_string(), value.to_string()))
            .and_then(|r| r.first().copied())
    };
    // Which request wrote each value.
    let mut writer_of: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        for (key, value) in op.request.written_values() {
            writer_of.insert((key, value), index);
        }
    }
    let mut prepared = Prepared {
        entries: Vec::new(),
        creates: Vec::new(),
    };
    for op in ops {
        let values = op.request.written_values();
        let committed: BTreeSet<i64> = values
            .iter()
            .filter_map(|(k, v)| revision_of(k, v))
            .collect();
        match &op.outcome {
            Outcome::Failed(error) => {
                if let Some(revision) = committed.first() {
                    report.anomalies.push(format!(
                        "{op}: failed definitely ({error}), yet its write committed at revision {revision}"
                    ));
                }
            }
            Outcome::Ok(response) => {
                let linearizable = match (&op.request, response) {
                    (Request::Range(r), _) => !r.serializable,
                    (Request::Put { .. } | Request::Delete { .. } | Request::Txn(_), _) => true,
                    (Request::LeaseRevoke { .. }, _) => true,
                    (Request::LeaseKeepAlive { .. }, Response::LeaseKeepAlive { ttl }) => *ttl > 0,
                    _ => false,
                };
                if !linearizable {
                    continue;
                }
                let creates = created_by(&op.request, response);
                if let Some(revision) = creates {
                    if revision > log.last {
                        report.anomalies.push(format!(
                            "{op}: acknowledged at revision {revision}, above the final revision {} (lost)",
                            log.last
                        ));
                    }
                    for (key, value) in &values {
                        match revision_of(key, value) {
                            Some(r) if r == revision => {}
                            Some(r) => report.anomalies.push(format!(
                                "{op}: acknowledged at revision {revision}, but {key}={value} was committed at {r}"
                            )),
                            None if log.complete_up_to(revision) && revision <= log.last => {
                                // Only the branch taken writes; a value of the other branch is
                                // legitimately absent.
                                let taken = match (&op.request, response) {
                                    (Request::Txn(txn), Response::Txn { succeeded, .. }) => {
                                        let branch = if *succeeded { &txn.success } else { &txn.failure };
                                        branch.iter().any(|o| matches!(o, TxnOp::Put { key: k, value: v, .. } if k == key && v == value))
                                    }
                                    _ => true,
                                };
                                if taken {
                                    report.anomalies.push(format!(
                                        "{op}: acknowledged at revision {revision}, but {key}={value} is not in the committed history (lost write)"
                                    ));
                                }
                            }
                            None => {}
                        }
                    }
                }
                prepared
                    .entries
                    .push(entry(op, Expect::Response(response.clone())));
                prepared.creates.push(creates);
            }
            Outcome::Unknown(_) => {
                if !op.request.may_write() {
                    continue;
                }
                if let Some(&revision) = committed.first() {
                    if committed.len() > 1 {
                        report.anomalies.push(format!(
                            "{op}: its writes committed at several revisions {committed:?}"
                        ));
                    }
                    let succeeded = match &op.request {
                        Request::Txn(txn) => Some(txn.success.iter().any(|o| {
                            matches!(o, TxnOp::Put { key, value, .. } if revision_of(key, value) == Some(revision))
                        })),
                        _ => None,
                    };
                    prepared.entries.push(entry(
                        op,
                        Expect::CommittedAt {
                            revision,
                            succeeded,
                        },
                    ));
                    prepared.creates.push(Some(revision));
                    report.indeterminate_pinned += 1;
                    continue;
                }
                // Had it taken effect with a put, its unique value would be in the history.
                let only_puts = !has_deletes(&op.request);
                if complete && only_puts {
                    // None of its values was ever committed: it had no effect.
                    report.indeterminate_dropped += 1;
                    continue;
                }
                prepared.entries.push(entry(op, Expect::Unknown));
                prepared.creates.push(None);
            }
        }
    }
    attribute(ops, log, first_seen, &writer_of, &mut prepared, report);
    report.indeterminate_open = prepared
        .entries
        .iter()
        .filter(|e| matches!(e.op.expect, Expect::Unknown))
        .count();
    prepared
}

/// Every committed revision has one author. A revision that only deletes, claimed by no
/// acknowledged request, is explained by replaying each open (indeterminate) request on the
/// state before it: the requests whose exact effect it is are its candidates. An open
/// request that explains no revision had no effect and is dropped; a revision with a single
/// candidate pins it; a revision that deletes exactly a lease's keys may be that lease's
/// expiry.
fn attribute(
    ops: &[Operation],
    log: &CommittedLog,
    first_seen: &BTreeMap<i64, u64>,
    writer_of: &BTreeMap<(&str, &str), usize>,
    prepared: &mut Prepared,
    report: &mut KvReport,
) {
    let mut claims: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (index, creates) in prepared.creates.iter().enumerate() {
        if let Some(revision) = creates {
            claims.entry(*revision).or_default().push(index);
        }
    }
    for (revision, entries) in &claims {
        let determinate: Vec<usize> = entries
            .iter()
            .copied()
            .filter(|i| matches!(prepared.entries[*i].op.expect, Expect::Response(_)))
            .collect();
        if determinate.len() > 1 {
            let names: Vec<String> = determinate
                .iter()
                .map(|i| ops_by_id(ops, prepared.entries[*i].op.id))
                .collect();
            report.anomalies.push(format!(
                "revision {revision} acknowledged to {} requests: {}",
                determinate.len(),
                names.join(" | ")
            ));
        }
    }
    let open: Vec<usize> = (0..prepared.entries.len())
        .filter(|i| matches!(prepared.entries[*i].op.expect, Expect::Unknown))
        .collect();
    let revokes: Vec<usize> = (0..prepared.entries.len())
        .filter(|i| {
            matches!(prepared.entries[*i].op.request, Request::LeaseRevoke { .. })
                && matches!(prepared.entries[*i].op.expect, Expect::Response(_))
        })
        .collect();
    let mut fits: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    let mut candidates: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let mut lease_of_revision: BTreeMap<i64, i64> = BTreeMap::new();
    let mut replay = Replay::new(log);
    let mut replay_ok = true;
    for (revision, events) in &log.revisions {
        let puts: Vec<_> = events.iter().filter(|e| e.put).collect();
        for event in &puts {
            match writer_of.get(&(event.kv.key.as_str(), event.kv.value.as_str())) {
                None => report.anomalies.push(format!(
                    "revision {revision}: {} was written by no request (phantom write)",
                    event.kv
                )),
                Some(&index) => {
                    let op = &ops[index];
                    if let Some(&seen) = first_seen.get(revision) {
                        if seen < op.call {
                            report.anomalies.push(format!(
                                "revision {revision} was delivered by a watch at {:.3}s, before its request was invoked: {op}",
                                seen as f64 / 1e9
                            ));
                        }
                    }
                }
            }
        }
        if !puts.is_empty() || claims.contains_key(revision) {
            continue;
        }
        replay_ok = replay_ok && replay.advance_to(revision - 1).is_some();
        if !replay_ok {
            continue;
        }
        let before = replay.state();
        let deleted: BTreeSet<&str> = events.iter().map(|e| e.kv.key.as_str()).collect();
        let leases: BTreeSet<i64> = deleted
            .iter()
            .map(|k| before.kvs.get(*k).map_or(0, |v| v.lease))
            .collect();
        if leases.len() == 1 {
            if let Some(&lease) = leases.first().filter(|l| **l != 0) {
                let attached: BTreeSet<&str> = before
                    .kvs
                    .iter()
                    .filter(|(_, v)| v.lease == lease)
                    .map(|(k, _)| k.as_str())
                    .collect();
                if attached == deleted {
                    lease_of_revision.insert(*revision, lease);
                }
            }
        }
        let explains = |request: &Request| -> bool {
            let Ok(applied) = crate::model::apply(&before, request) else {
                return false;
            };
            if applied.state.revision != *revision {
                return false;
            }
            let gone: BTreeSet<&str> = before
                .kvs
                .keys()
                .filter(|k| !applied.state.kvs.contains_key(*k))
                .map(String::as_str)
                .collect();
            gone == deleted && applied.state.kvs.len() + gone.len() == before.kvs.len()
        };
        if revokes.iter().any(|i| {
            explains(&prepared.entries[*i].op.request)
                && first_seen
                    .get(revision)
                    .is_none_or(|seen| prepared.entries[*i].call <= *seen)
        }) {
            // An acknowledged revoke can explain it: the model places it.
            continue;
        }
        for &i in &open {
            let entry = &prepared.entries[i];
            let in_time = first_seen
                .get(revision)
                .is_none_or(|seen| entry.call <= *seen);
            if in_time && explains(&entry.op.request) {
                fits.entry(i).or_default().push(*revision);
                candidates.entry(*revision).or_default().push(i);
            }
        }
        if !candidates.contains_key(revision) && !lease_of_revision.contains_key(revision) {
            report.anomalies.push(format!(
                "revision {revision}: deletes of {deleted:?} by no request (phantom delete)"
            ));
        }
    }
    let complete = log.is_complete();
    let mut dropped: BTreeSet<usize> = BTreeSet::new();
    for &i in &open {
        match fits.get(&i) {
            None if complete && replay_ok => {
                dropped.insert(i);
            }
            _ => {}
        }
    }
    for (revision, list) in &candidates {
        if let ([single], None) = (list.as_slice(), lease_of_revision.get(revision)) {
            if fits.get(single).is_some_and(|f| f.len() == 1) {
                prepared.entries[*single].op.expect = Expect::CommittedAt {
                    revision: *revision,
                    succeeded: None,
                };
                prepared.entries[*single].optional = false;
                prepared.creates[*single] = Some(*revision);
                report.indeterminate_pinned += 1;
            }
        }
    }
    for (revision, lease) in lease_of_revision {
        let keys: Vec<String> = log.revisions[&revision]
            .iter()
            .map(|e| e.kv.key.clone())
            .collect();
        report.lease_expiries += 1;
        prepared.entries.push(Entry {
            call: 0,
            ret: None,
            // Optional when a request could have made it too: one of them must.
            optional: candidates.contains_key(&revision),
            op: KvOp {
                id: usize::MAX,
                request: Request::LeaseExpiry { id: lease, keys },
                expect: Expect::CommittedAt {
                    revision,
                    succeeded: None,
                },
            },
        });
        prepared.creates.push(Some(revision));
    }
    if !dropped.is_empty() {
        report.indeterminate_dropped += dropped.len();
        let mut index = 0;
        prepared.entries.retain(|_| {
            let keep = !dropped.contains(&index);
            index += 1;
            keep
        });
        let mut index = 0;
        prepared.creates.retain(|_| {
            let keep = !dropped.contains(&index);
            index += 1;
            keep
        });
    }
}

fn ops_by_id(ops: &[Operation], id: usize) -> String {
    ops.iter()
        .find(|o| o.id == id)
        .map_or_else(|| format!("#{id}"), ToString::to_string)
}

fn describe_entry(ops: &[Operation], entry: &Entry<KvOp>) -> String {
    if entry.op.id == usize::MAX {
        return describe_request(&entry.op.request);
    }
    let mut line = ops_by_id(ops, entry.op.id);
    if let Expect::CommittedAt { revision, .. } = entry.op.expect {
        line += &format!(" [committed at revision {revision}, from the watch history]");
    }
    line
}

/// Runs the whole key-value check of a history.
pub fn check_history(
    ops: &[Operation],
    log: &CommittedLog,
    first_seen: &BTreeMap<i64, u64>,
    limits: Limits,
) -> KvReport {
    let mut report = KvReport::default();
    let prepared = prepare(ops, log, first_seen, &mut report);
    report.operations_checked = prepared.entries.len();
    let model = KvModel {
        initial: KvState::fresh(),
    };
    let (verdict, stats) = linearize::check(&model, &prepared.entries, limits);
    report.steps = stats.steps;
    report.visited = stats.visited;
    report.checker_ms = stats.elapsed.as_millis() as u64;
    match verdict {
        Verdict::Linearizable => report.verdict = "linearizable".into(),
        Verdict::Unknown { reason } => {
            report.verdict = format!("unknown: {reason}");
            report.minimal.push(format!(
                "(no answer; the longest linearized prefix had {} of {} operations and ended with:)",
                stats.deepest_len,
                prepared.entries.len()
            ));
            for i in &stats.deepest_tail {
                report
                    .minimal
                    .push(describe_entry(ops, &prepared.entries[*i]));
            }
            report
                .minimal
                .push("(and could not go on with any of:)".into());
            for i in stats.stuck.iter().take(30) {
                report
                    .minimal
                    .push(describe_entry(ops, &prepared.entries[*i]));
            }
        }
        Verdict::Illegal { deepest, stuck } => {
            report.verdict = "illegal".into();
            report.minimal = minimal_illegal(ops, log, &prepared, limits);
            if report.minimal.is_empty() {
                // Without a complete committed history the window cannot be replayed: show
                // where the search got stuck instead.
                let last = deepest.iter().rev().take(5).rev();
                report
                    .minimal
                    .push("(no replayable window; the deepest linearization ended with:)".into());
                for i in last {
                    report
                        .minimal
                        .push(describe_entry(ops, &prepared.entries[*i]));
                }
                report
                    .minimal
                    .push("(and could not go on with any of:)".into());
                for i in stuck.iter().take(20) {
                    report
                        .minimal
                        .push(describe_entry(ops, &prepared.entries[*i]));
                }
            }
            report.anomalies.push(format!(
                "the history is not linearizable; minimal illegal sub-history:\n  {}",
                report.minimal.join("\n  ")
            ));
        }
    }
    check_reads(ops, log, &mut report);
    check_compactions(ops, &mut report);
    report
}

/// The revision an entry is answered at (its header, or the revision it committed at).
fn pin(entry: &Entry<KvOp>) -> Option<i64> {
    match &entry.op.expect {
        Expect::Response(response) => response.revision(),
        Expect::CommittedAt { revision, .. } => Some(*revision),
        Expect::Unknown => None,
    }
}

/// Step 5: the smallest illegal revision window, then the fewest operations in it.
fn minimal_illegal(
    ops: &[Operation],
    log: &CommittedLog,
    prepared: &Prepared,
    limits: Limits,
) -> Vec<String> {
    if !log.is_complete() || log.last < 2 {
        return Vec::new();
    }
    let small = Limits {
        time: limits.time.min(Duration::from_secs(10)),
        max_visited: limits.max_visited.min(2_000_000),
    };
    let model = KvModel {
        initial: KvState::fresh(),
    };
    let window = |a: i64, b: i64| -> Vec<usize> {
        let mut chosen: Vec<usize> = Vec::new();
        let mut end = 0;
        for (i, e) in prepared.entries.iter().enumerate() {
            let inside = match (prepared.creates[i], pin(e)) {
                (Some(c), _) => a <= c && c <= b,
                (None, Some(p)) => a - 1 <= p && p <= b,
                (None, None) => false,
            };
            if inside {
                chosen.push(i);
                if let Some(ret) = e.ret {
                    end = end.max(ret);
                }
            }
        }
        for (i, e) in prepared.entries.iter().enumerate() {
            if pin(e).is_none() && e.call <= end {
                chosen.push(i);
            }
        }
        chosen.sort_unstable();
        chosen
    };
    let illegal_from = |a: i64, subset: &[usize]| -> bool {
        let Some(initial) = log.state_at(a - 1) else {
            return false;
        };
        matches!(
            linearize::check_from(&model, &prepared.entries, subset, initial, small).0,
            Verdict::Illegal { .. }
        )
    };
    let (first, last) = (2, log.last);
    if !illegal_from(first, &window(first, last)) {
        return Vec::new();
    }
    let (mut lo, mut hi) = (first, last);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if illegal_from(first, &window(first, mid)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let b = hi;
    let (mut lo, mut hi) = (first, b);
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        if illegal_from(mid, &window(mid, b)) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let a = lo;
    let subset = window(a, b);
    let core = linearize::minimize(
        &subset,
        |i| prepared.creates[i].is_none(),
        |s| illegal_from(a, s),
        200,
    );
    let mut lines = Vec::new();
    if let Some(state) = log.state_at(a - 1) {
        let kvs: Vec<String> = state
            .kvs
            .keys()
            .filter_map(|k| state.key_value(k))
            .map(|kv| kv.to_string())
            .collect();
        lines.push(format!(
            "from the committed state at revision {}: {{{}}}",
            a - 1,
            kvs.join(", ")
        ));
    }
    let mut ordered = core;
    ordered.sort_by_key(|i| prepared.entries[*i].call);
    for i in ordered {
        lines.push(describe_entry(ops, &prepared.entries[i]));
    }
    lines
}

/// Step 4: serializable reads and reads at an old revision against the replayed history.
fn check_reads(ops: &[Operation], log: &CommittedLog, report: &mut KvReport) {
    let mut reads: Vec<(i64, &Operation, &RangeResult)> = Vec::new();
    for op in ops {
        let (Request::Range(range), Outcome::Ok(Response::Range { revision, result })) =
            (&op.request, &op.outcome)
        else {
            continue;
        };
        if range.revision > 0 {
            if range.revision > *revision {
                report.anomalies.push(format!(
                    "{op}: answered a read at revision {} with header {revision}",
                    range.revision
                ));
            }
            reads.push((range.revision, op, result));
        } else if range.serializable {
            reads.push((*revision, op, result));
        }
    }
    reads.sort_by_key(|r| r.0);
    let mut replay = Replay::new(log);
    for (revision, op, result) in reads {
        if revision > log.last || replay.advance_to(revision).is_none() {
            report.stale_reads_skipped += 1;
            if revision > log.last {
                report.anomalies.push(format!(
                    "{op}: read at revision {revision}, above the final revision {}",
                    log.last
                ));
            }
            continue;
        }
        let Request::Range(range) = &op.request else {
            continue;
        };
        let expected = replay.state().range(range);
        report.stale_reads_checked += 1;
        if expected != *result {
            let kvs: Vec<String> = expected.kvs.iter().map(ToString::to_string).collect();
            report.anomalies.push(format!(
                "{op}: at revision {revision} the committed history has [{}] count {}",
                kvs.join(", "),
                expected.count
            ));
        }
    }
}

/// Compaction errors happen exactly below a requested compaction; an acknowledged compaction
/// is never undone; a future-revision error never follows an answer at that revision.
fn check_compactions(ops: &[Operation], report: &mut KvReport) {
    let compactions: Vec<(&Operation, i64)> = ops
        .iter()
        .filter_map(|op| match (&op.request, &op.outcome) {
            (Request::Compact { revision }, Outcome::Ok(_) | Outcome::Unknown(_)) => {
                Some((op, *revision))
            }
            _ => None,
        })
        .collect();
    let mut observed: Vec<(u64, i64)> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Ok(r) => r.revision().map(|rev| (op.ret, rev)),
            _ => None,
        })
        .collect();
    observed.sort_unstable();
    let mut max_so_far = Vec::with_capacity(observed.len());
    let mut running = 0;
    for (at, rev) in &observed {
        running = running.max(*rev);
        max_so_far.push((*at, running));
    }
    let highest_observed_before = |t: u64| -> i64 {
        match max_so_far.partition_point(|(at, _)| *at < t) {
            0 => 0,
            n => max_so_far[n - 1].1,
        }
    };
    for op in ops {
        let Request::Range(range) = &op.request else {
            continue;
        };
        if range.revision == 0 {
            continue;
        }
        match &op.outcome {
            Outcome::Ok(_) => {
                if let Some((compact, c)) = compactions
                    .iter()
                    .find(|(c, rev)| *rev > range.revision && c.outcome.is_ok() && c.ret < op.call)
                {
                    report.anomalies.push(format!(
                        "{op}: answered though compaction to {c} was acknowledged before ({compact})"
                    ));
                }
            }
            Outcome::Failed(error)
                if error.contains("compacted")
                    && !compactions
                        .iter()
                        .any(|(c, rev)| *rev > range.revision && c.call < op.ret) =>
            {
                report.anomalies.push(format!(
                    "{op}: compacted, but no compaction above {} was requested before",
                    range.revision
                ));
            }
            Outcome::Failed(error) if error.contains("future revision") => {
                let seen = highest_observed_before(op.call);
                if seen >= range.revision {
                    report.anomalies.push(format!(
                        "{op}: a future revision, though revision {seen} had been answered before"
                    ));
                }
            }
            _ => {}
        }
    }
}

/// The checker's own tests: histories known to be illegal must be rejected (and legal ones
/// accepted). docs/robustness.md lists them.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::committed::Event;
    use crate::history::{
        Compare, CompareOp, CompareTarget, KeyValue, RangeRequest, TxnOp, TxnRequest, TxnResult,
    };
    use crate::model::apply;

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    fn put_lease(key: &str, value: &str, lease: i64) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    fn get(key: &str) -> Request {
        Request::Range(RangeRequest::key(key))
    }

    fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: create,
            mod_revision: modr,
            version,
            lease: 0,
        }
    }

    fn read(revision: i64, kvs: Vec<KeyValue>) -> Outcome {
        let count = kvs.len() as i64;
        Outcome::Ok(Response::Range {
            revision,
            result: RangeResult {
                kvs,
                count,
                more: false,
            },
        })
    }

    fn wrote(revision: i64) -> Outcome {
        Outcome::Ok(Response::Put { revision })
    }

    struct H {
        ops: Vec<Operation>,
    }

    impl H {
        fn new() -> H {
            H { ops: Vec::new() }
        }

        fn op(mut self, call: u64, ret: u64, request: Request, outcome: Outcome) -> H {
            let id = self.ops.len();
            self.ops.push(Operation {
                id,
                client: id,
                member: 0,
                call,
                ret,
                request,
                outcome,
            });
            self
        }
    }

    /// The committed history of `writes` applied in order (what a faithful watch delivers).
    fn committed(writes: &[Request]) -> CommittedLog {
        let mut log = CommittedLog::default();
        let mut state = KvState::fresh();
        for request in writes {
            let Ok(applied) = apply(&state, request) else {
                continue;
            };
            if applied.state.revision == state.revision {
                continue;
            }
            let revision = applied.state.revision;
            let mut events = Vec::new();
            for (key, _) in state.kvs.iter() {
                if !applied.state.kvs.contains_key(key) {
                    events.push(Event {
                        put: false,
                        kv: KeyValue {
                            key: key.clone(),
                            value: String::new(),
                            create_revision: 0,
                            mod_revision: revision,
                            version: 0,
                            lease: 0,
                        },
                        prev: None,
                    });
                }
            }
            for key in applied.state.kvs.keys() {
                if let Some(now) = applied.state.key_value(key) {
                    if now.mod_revision == revision {
                        events.push(Event {
                            put: true,
                            kv: now,
                            prev: None,
                        });
                    }
                }
            }
            events.sort_by(|a, b| a.kv.key.cmp(&b.kv.key));
            log.revisions.insert(revision, events);
            state = applied.state;
        }
        log.last = state.revision;
        log
    }

    fn check(h: &H, log: &CommittedLog) -> KvReport {
        check_history(&h.ops, log, &BTreeMap::new(), Limits::default())
    }

    fn illegal(report: &KvReport) -> bool {
        report.verdict == "illegal"
    }

    #[test]
    fn a_correct_history_is_linearizable() {
        let h = H::new()
            .op(0, 10, put("a", "1"), wrote(2))
            .op(5, 15, put("b", "1"), wrote(3))
            .op(20, 21, get("a"), read(3, vec![kv("a", "1", 2, 2, 1)]))
            .op(22, 23, put("a", "2"), wrote(4))
            .op(24, 25, get("a"), read(4, vec![kv("a", "2", 2, 4, 2)]));
        let log = committed(&[put("a", "1"), put("b", "1"), put("a", "2")]);
        let r = check(&h, &log);
        assert_eq!(r.verdict, "linearizable", "{r:#?}");
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
    }

    #[test]
    fn stale_read_is_rejected_with_a_minimal_sub_history() {
        // Many unrelated writes, then a read that misses a write acknowledged before it began.
        let mut h = H::new();
        let mut writes = Vec::new();
        for i in 0..30u64 {
            h = h.op(
                i * 10,
                i * 10 + 5,
                put("x", &format!("{i}")),
                wrote(2 + i as i64),
            );
            writes.push(put("x", &format!("{i}")));
        }
        h = h.op(400, 401, put("a", "1"), wrote(32));
        writes.push(put("a", "1"));
        h = h.op(402, 403, get("a"), read(31, vec![]));
        let log = committed(&writes);
        let r = check(&h, &log);
        assert!(illegal(&r), "{r:#?}");
        // The state at revision 31, the write and the read: nothing else.
        eprintln!("{}", r.minimal.join("\n"));
        assert_eq!(r.minimal.len(), 3, "{:#?}", r.minimal);
        assert!(r.minimal[1].contains("put a=1"), "{:#?}", r.minimal);
        assert!(r.minimal[2].contains("get a"), "{:#?}", r.minimal);
    }

    #[test]
    fn lost_write_is_rejected() {
        // Acknowledged at revision 2, but a later read at revision 3 does not see it and the
        // watch history has another change at 2.
        let h = H::new()
            .op(0, 1, put("a", "1"), wrote(2))
            .op(2, 3, put("b", "1"), wrote(3))
            .op(4, 5, get("a"), read(3, vec![]));
        let log = committed(&[put("c", "0"), put("b", "1")]);
        let r = check(&h, &log);
        assert!(illegal(&r), "{r:#?}");
        assert!(
            r.anomalies
                .iter()
                .any(|a| a.contains("lost write") || a.contains("phantom")),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn duplicated_revision_is_rejected() {
        let h = H::new()
            .op(0, 1, put("a", "1"), wrote(2))
            .op(0, 1, put("b", "1"), wrote(2));
        let log = committed(&[put("a", "1"), put("b", "1")]);
        let r = check(&h, &log);
        assert!(illegal(&r), "{r:#?}");
        assert!(
            r.anomalies
                .iter()
                .any(|a| a.contains("acknowledged to 2 requests")),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn a_write_seen_before_it_was_invoked_is_rejected() {
        let h = H::new()
            .op(0, 1, get("a"), read(2, vec![kv("a", "1", 2, 2, 1)]))
            .op(2, 3, put("a", "1"), wrote(2));
        let log = committed(&[put("a", "1")]);
        let mut first_seen = BTreeMap::new();
        first_seen.insert(2, 1);
        let r = check_history(&h.ops, &log, &first_seen, Limits::default());
        assert!(illegal(&r), "{r:#?}");
        assert!(
            r.anomalies
                .iter()
                .any(|a| a.contains("before its request was invoked")),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn a_txn_whose_compare_was_misjudged_is_rejected() {
        let create = |value: &str| {
            Request::Txn(TxnRequest {
                compares: vec![Compare::Field {
                    key: "a".into(),
                    target: CompareTarget::Mod(0),
                    op: CompareOp::Equal,
                }],
                success: vec![TxnOp::Put {
                    key: "a".into(),
                    value: value.into(),
                    lease: 0,
                }],
                failure: vec![TxnOp::Range(RangeRequest::key("a"))],
            })
        };
        let h = H::new()
            .op(
                0,
                1,
                create("1"),
                Outcome::Ok(Response::Txn {
                    revision: 2,
                    succeeded: true,
                    results: vec![TxnResult::Put],
                }),
            )
            // A second create of the same key cannot succeed.
            .op(
                2,
                3,
                create("2"),
                Outcome::Ok(Response::Txn {
                    revision: 3,
                    succeeded: true,
                    results: vec![TxnResult::Put],
                }),
            );
        let log = committed(&[put("a", "1"), put("a", "2")]);
        assert!(illegal(&check(&h, &log)));
    }

    #[test]
    fn wrong_versions_and_create_revisions_are_rejected() {
        let h = H::new()
            .op(0, 1, put("a", "1"), wrote(2))
            .op(2, 3, put("a", "2"), wrote(3))
            .op(4, 5, get("a"), read(3, vec![kv("a", "2", 3, 3, 1)]));
        let log = committed(&[put("a", "1"), put("a", "2")]);
        assert!(illegal(&check(&h, &log)));
    }

    #[test]
    fn a_lease_that_comes_back_after_its_revoke_is_rejected() {
        let h = H::new()
            .op(0, 1, put_lease("a", "1", 7), wrote(2))
            .op(
                2,
                3,
                Request::LeaseRevoke { id: 7 },
                Outcome::Ok(Response::LeaseRevoke { revision: 3 }),
            )
            .op(4, 5, put_lease("b", "1", 7), wrote(4));
        let log = committed(&[
            put_lease("a", "1", 7),
            Request::LeaseRevoke { id: 7 },
            put_lease("b", "1", 7),
        ]);
        assert!(illegal(&check(&h, &log)));
        // Keep-alive answering alive after the revoke is as wrong.
        let h = H::new()
            .op(0, 1, put_lease("a", "1", 7), wrote(2))
            .op(
                2,
                3,
                Request::LeaseRevoke { id: 7 },
                Outcome::Ok(Response::LeaseRevoke { revision: 3 }),
            )
            .op(
                4,
                5,
                Request::LeaseKeepAlive { id: 7 },
                Outcome::Ok(Response::LeaseKeepAlive { ttl: 1 }),
            );
        let log = committed(&[put_lease("a", "1", 7), Request::LeaseRevoke { id: 7 }]);
        assert!(illegal(&check(&h, &log)));
    }

    #[test]
    fn a_lease_expiry_deleting_part_of_its_keys_is_rejected() {
        let h = H::new().op(0, 1, put_lease("a", "1", 7), wrote(2)).op(
            2,
            3,
            put_lease("b", "1", 7),
            wrote(3),
        );
        let mut log = committed(&[put_lease("a", "1", 7), put_lease("b", "1", 7)]);
        // The server deletes a alone at revision 4.
        log.revisions.insert(
            4,
            vec![Event {
                put: false,
                kv: KeyValue {
                    key: "a".into(),
                    value: String::new(),
                    create_revision: 0,
                    mod_revision: 4,
                    version: 0,
                    lease: 0,
                },
                prev: None,
            }],
        );
        log.last = 4;
        let r = check(&h, &log);
        assert!(
            r.anomalies.iter().any(|a| a.contains("phantom delete")),
            "{:?}",
            r.anomalies
        );
        // Deleting both in one revision is a legal expiry.
        let mut ok = committed(&[put_lease("a", "1", 7), put_lease("b", "1", 7)]);
        ok.revisions.insert(
            4,
            committed(&[
                put_lease("a", "1", 7),
                put_lease("b", "1", 7),
                Request::LeaseRevoke { id: 7 },
            ])
            .revisions[&4]
                .clone(),
        );
        ok.last = 4;
        let r = check(&h, &ok);
        assert_eq!(r.verdict, "linearizable", "{r:#?}");
        assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
        assert_eq!(r.lease_expiries, 1);
    }

    #[test]
    fn indeterminate_writes_are_resolved_from_the_watch_history() {
        // A timed-out put that committed (seen by a later read) and one that did not.
        let h = H::new()
            .op(0, 100, put("a", "1"), Outcome::Unknown("timeout".into()))
            .op(0, 100, put("b", "1"), Outcome::Unknown("timeout".into()))
            .op(200, 201, get("a"), read(2, vec![kv("a", "1", 2, 2, 1)]));
        let log = committed(&[put("a", "1")]);
        let r = check(&h, &log);
        assert_eq!(r.verdict, "linearizable", "{r:#?}");
        assert_eq!((r.indeterminate_pinned, r.indeterminate_dropped), (1, 1));
        // A read cannot see the dropped one.
        let h = h.op(300, 301, get("b"), read(2, vec![kv("b", "1", 2, 2, 1)]));
        assert!(illegal(&check(&h, &log)));
    }

    #[test]
    fn a_definitely_failed_write_that_committed_is_reported() {
        let h = H::new().op(
            0,
            1,
            put("a", "1"),
            Outcome::Failed("etcdserver: requested lease not found".into()),
        );
        let log = committed(&[put("a", "1")]);
        let r = check(&h, &log);
        assert!(
            r.anomalies.iter().any(|a| a.contains("failed definitely")),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn old_revision_reads_and_compactions_are_checked_against_the_history() {
        let mut at_2 = RangeRequest::key("a");
        at_2.revision = 2;
        let h = H::new()
            .op(0, 1, put("a", "1"), wrote(2))
            .op(2, 3, put("a", "2"), wrote(3))
            // The value at revision 2 was 1.
            .op(
                4,
                5,
                Request::Range(at_2.clone()),
                read(3, vec![kv("a", "2", 2, 3, 2)]),
            );
        let log = committed(&[put("a", "1"), put("a", "2")]);
        let r = check(&h, &log);
        assert!(
            r.anomalies
                .iter()
                .any(|a| a.contains("the committed history has")),
            "{:?}",
            r.anomalies
        );
        // An answer at revision 2 after a compaction to 3 was acknowledged.
        let h = H::new()
            .op(0, 1, put("a", "1"), wrote(2))
            .op(2, 3, put("a", "2"), wrote(3))
            .op(
                4,
                5,
                Request::Compact { revision: 3 },
                Outcome::Ok(Response::Compact { revision: 3 }),
            )
            .op(
                6,
                7,
                Request::Range(at_2.clone()),
                read(3, vec![kv("a", "1", 2, 2, 1)]),
            );
        let r = check(&h, &log);
        assert!(
            r.anomalies
                .iter()
                .any(|a| a.contains("compaction to 3 was acknowledged")),
            "{:?}",
            r.anomalies
        );
        // ErrCompacted without any compaction requested.
        let h = H::new().op(0, 1, put("a", "1"), wrote(2)).op(
            2,
            3,
            Request::Range(at_2),
            Outcome::Failed("mvcc: required revision has been compacted".into()),
        );
        let r = check(&h, &committed(&[put("a", "1")]));
        assert!(
            r.anomalies
                .iter()
                .any(|a| a.contains("no compaction above")),
            "{:?}",
            r.anomalies
        );
    }

    #[test]
    fn a_value_committed_twice_is_reported() {
        let h = H::new().op(0, 1, put("a", "1"), Outcome::Unknown("timeout".into()));
        let mut log = committed(&[put("a", "1")]);
        let mut again = log.revisions[&2].clone();
        again[0].kv.mod_revision = 3;
        again[0].kv.version = 2;
        log.revisions.insert(3, again);
        log.last = 3;
        let r = check(&h, &log);
        assert!(
            r.anomalies.iter().any(|a| a.contains("committed 2 times")),
            "{:?}",
            r.anomalies
        );
    }
}
