//! Latency histograms, error counts and the report every load mode produces.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Distinct error texts kept per run; further kinds are counted under one "other" row.
const MAX_ERROR_KINDS: usize = 20;
/// Error texts are cut to this many characters.
const MAX_ERROR_TEXT: usize = 200;

/// One worker's measurements; merged into a [`Report`] at the end of a run.
pub struct Recorder {
    pub hist: Histogram<u64>,
    pub errors: ErrorCounts,
    pub counters: BTreeMap<&'static str, u64>,
    /// Acknowledgement instants of writes (µs since [`crate::keys::epoch`]), for the stall
    /// detector: only the write modes fill it, through [`Recorder::ack`].
    pub acks: Vec<u64>,
    /// The longest pause the [`PauseProbe`] saw during the run.
    pub max_pause: Option<Duration>,
}

/// Acknowledgement instants a write worker has room for before its buffer grows.
const ACKS_PRESIZED: usize = 16 * 1024;

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            // 1 µs .. 10 min, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            errors: ErrorCounts::default(),
            counters: BTreeMap::new(),
            acks: Vec::new(),
            max_pause: None,
        }
    }

    /// A recorder for a write worker: its buffer of acknowledgement instants is allocated
    /// before the clock starts.
    pub fn for_writes() -> Recorder {
        let mut rec = Recorder::new();
        rec.acks.reserve(ACKS_PRESIZED);
        rec
    }

    /// An acknowledged write sent at `sent`: its latency, and the instant of its
    /// acknowledgement for the stall detector.
    pub fn ack(&mut self, sent: Instant) {
        let now = Instant::now();
        self.record(now - sent);
        self.acks.push(
            now.saturating_duration_since(crate::keys::epoch())
                .as_micros() as u64,
        );
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_micros(latency.as_micros() as u64);
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.hist.saturating_record(micros.max(1));
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.errors.add(text.into(), 1);
    }

    pub fn count(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_insert(0) += n;
    }

    pub fn merge(&mut self, other: Recorder) {
        self.hist.add(&other.hist).expect("histograms share bounds");
        for (text, n) in other.errors.kinds {
            self.errors.add(text, n);
        }
        for (name, n) in other.counters {
            *self.counters.entry(name).or_insert(0) += n;
        }
        self.acks.extend(other.acks);
        self.max_pause = self.max_pause.max(other.max_pause);
    }
}

/// How long the probe asks to sleep each time.
const PROBE_TICK: Duration = Duration::from_millis(1);

/// Tells the machine's pauses from the server's: a thread of the load generator that sleeps
/// 1 ms at a time and records the longest it overslept. A write stall about as long as a
/// pause seen at the same time is the machine's (the VM descheduled, the host busy, every
/// process waiting), not the server's. A few ms of oversleep are normal on a machine whose
/// cores the server and the generator keep busy.
pub struct PauseProbe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Duration>>,
}

impl PauseProbe {
    pub fn start() -> PauseProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pause-probe".into())
            .spawn(move || {
                let mut longest = Duration::ZERO;
                while !stopped.load(Ordering::Relaxed) {
                    let asleep = Instant::now();
                    std::thread::sleep(PROBE_TICK);
                    longest = longest.max(asleep.elapsed().saturating_sub(PROBE_TICK));
                }
                longest
            })
            .ok();
        PauseProbe { stop, thread }
    }

    /// The longest oversleep since [`PauseProbe::start`]; `None` if the thread could not run.
    pub fn finish(mut self) -> Option<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take()?.join().ok()
    }
}

impl Drop for PauseProbe {
    /// A probe given up on (an early return) stops its thread too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The longest gap between two consecutive acknowledgements (µs since [`crate::keys::epoch`],
/// any order) across every client: when it started and how long it was, in µs; `None` with
/// fewer than two.
pub fn longest_gap(acks: &mut [u64]) -> Option<(u64, u64)> {
    if acks.len() < 2 {
        return None;
    }
    acks.sort_unstable();
    acks.windows(2)
        .map(|w| (w[0], w[1] - w[0]))
        .max_by_key(|&(_, gap)| gap)
}

/// The wall-clock time (UTC, ms) of an instant given in µs since [`crate::keys::epoch`], to
/// find a stall in the server's log.
fn utc_of_ack(micros: u64) -> String {
    let epoch_wall = std::time::SystemTime::now() - crate::keys::epoch().elapsed();
    crate::machine::utc_millis(epoch_wall + Duration::from_micros(micros))
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// Errors by text: every error is counted in `total`, the first texts are kept verbatim.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub total: u64,
    pub kinds: BTreeMap<String, u64>,
}

impl ErrorCounts {
    pub fn add(&mut self, mut text: String, n: u64) {
        self.total += n;
        if text.chars().count() > MAX_ERROR_TEXT {
            text = text.chars().take(MAX_ERROR_TEXT).collect::<String>() + "…";
        }
        if !self.kinds.contains_key(&text) && self.kinds.len() >= MAX_ERROR_KINDS {
            text = "(other error kinds)".to_string();
        }
        *self.kinds.entry(text).or_insert(0) += n;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The run completed (it may still have counted errors).
    Ok,
    /// The server answered `Unimplemented` for the API this mode needs.
    Unsupported,
    /// The run could not be carried out (no connection, setup failed, ...).
    Failed,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The result of one load run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub status: Status,
    /// Why the run is unsupported or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub conns: usize,
    pub clients: usize,
    /// Successful operations (for `watch`: events delivered).
    pub ops: u64,
    pub elapsed_secs: f64,
    pub ops_per_sec: f64,
    /// What one operation is, e.g. "put", "update", "event".
    pub unit: String,
    pub latency: Latency,
    /// Write modes: the longest gap between two consecutive acknowledged writes, across all
    /// clients (a server that stops acknowledging for a while shows here even when the
    /// percentiles hide it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stall_ms: Option<f64>,
    /// Write modes: the longest the generator's own 1 ms timer overslept during the run
    /// ([`PauseProbe`]): a stall about this long was the machine's, not the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pause_ms: Option<f64>,
    /// Write modes: when the longest gap began (UTC, ms), to look it up in the server's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stall_from: Option<String>,
    /// Server CPU time (user + system) per operation in µs, measured by the suite around the
    /// scenario (for a 3-member cluster: the leader's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_op: Option<f64>,
    pub errors: ErrorCounts,
    /// Mode-specific counts: CAS conflicts, puts behind a watch run, ...
    pub counters: BTreeMap<String, f64>,
}

impl Report {
    pub fn from_recorder(
        mode: &str,
        unit: &str,
        conns: usize,
        clients: usize,
        mut rec: Recorder,
        ops: u64,
        elapsed: Duration,
    ) -> Report {
        let secs = elapsed.as_secs_f64();
        let gap = longest_gap(&mut rec.acks);
        let max_stall_ms = gap.map(|(_, gap)| gap as f64 / 1000.0);
        let max_stall_from = gap.map(|(from, _)| utc_of_ack(from));
        let max_pause_ms = max_stall_ms
            .and(rec.max_pause)
            .map(|pause| pause.as_secs_f64() * 1000.0);
        Report {
            mode: mode.to_string(),
            status: Status::Ok,
            detail: None,
            conns,
            clients,
            ops,
            elapsed_secs: secs,
            ops_per_sec: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            unit: unit.to_string(),
            latency: Latency::from_hist(&rec.hist),
            max_stall_ms,
            max_pause_ms,
            max_stall_from,
            server_cpu_us_per_op: None,
            errors: rec.errors,
            counters: rec
                .counters
                .into_iter()
                .map(|(k, v)| (k.to_string(), v as f64))
                .collect(),
        }
    }

    pub fn not_run(
        mode: &str,
        status: Status,
        detail: String,
        conns: usize,
        clients: usize,
    ) -> Report {
        Report {
            mode: mode.to_string(),
            status,
            detail: Some(detail),
            conns,
            clients,
            ops: 0,
            elapsed_secs: 0.0,
            ops_per_sec: 0.0,
            unit: String::new(),
            latency: Latency::default(),
            max_stall_ms: None,
            max_pause_ms: None,
            max_stall_from: None,
            server_cpu_us_per_op: None,
            errors: ErrorCounts::default(),
            counters: BTreeMap::new(),
        }
    }

    /// A few lines for a person.
    pub fn human(&self) -> String {
        let mut out = String::new();
        match self.status {
            Status::Unsupported => {
                let _ = writeln!(
                    out,
                    "{}: unsupported by this server ({})",
                    self.mode,
                    self.detail.as_deref().unwrap_or("")
                );
                return out;
            }
            Status::Failed => {
                let _ = writeln!(
                    out,
                    "{}: FAILED: {}",
                    self.mode,
                    self.detail.as_deref().unwrap_or("")
                );
            }
            Status::Ok => {}
        }
        let _ = writeln!(
            out,
            "{}: {} {}s in {:.2} s = {:.1} {}s/s (clients {}, conns {}), errors: {}",
            self.mode,
            self.ops,
            self.unit,
            self.elapsed_secs,
            self.ops_per_sec,
            self.unit,
            self.clients,
            self.conns,
            self.errors.total,
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "  latency ms: mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
        let mut extra = Vec::new();
        if let Some(ms) = self.max_stall_ms {
            extra.push(match &self.max_stall_from {
                Some(from) => format!("max stall ms {ms:.3} (from {from})"),
                None => format!("max stall ms {ms:.3}"),
            });
        }
        if let Some(ms) = self.max_pause_ms {
            extra.push(format!("generator pause ms {ms:.3}"));
        }
        if let Some(us) = self.server_cpu_us_per_op {
            extra.push(format!("server CPU µs/op {us:.1}"));
        }
        if !extra.is_empty() {
            let _ = writeln!(out, "  {}", extra.join("  "));
        }
        for (name, value) in &self.counters {
            let _ = writeln!(out, "  {name}: {}", fmt_num(*value));
        }
        for (text, n) in &self.errors.kinds {
            let _ = writeln!(out, "  error x{n}: {text}");
        }
        out
    }
}

pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.2}")
    }
}

/// The text of an etcd-client error, with the gRPC code spelled out when there is one.
pub fn error_text(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

/// Whether the server said it does not implement the called method.
pub fn is_unimplemented(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unimplemented)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unimplemented_is_recognised() {
        let e = etcd_client::Error::GRpcStatus(tonic::Status::unimplemented("no watch here"));
        assert!(is_unimplemented(&e));
        assert_eq!(error_text(&e), "Unimplemented: no watch here");
        let other =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        assert!(!is_unimplemented(&other));
    }

    #[test]
    fn error_kinds_are_bounded_but_totals_exact() {
        let mut c = ErrorCounts::default();
        for i in 0..100 {
            c.add(format!("error {i}"), 2);
        }
        assert_eq!(c.total, 200);
        assert_eq!(c.kinds.len(), MAX_ERROR_KINDS + 1);
        assert_eq!(c.kinds.values().sum::<u64>(), 200);
    }

    #[test]
    fn report_from_recorder() {
        let mut r = Recorder::new();
        for ms in 1..=100u64 {
            r.record(Duration::from_millis(ms));
        }
        r.error("Unavailable: etcdserver: request timed out");
        let rep = Report::from_recorder("put", "put", 1, 1, r, 100, Duration::from_secs(2));
        assert_eq!(rep.ops_per_sec, 50.0);
        assert!((rep.latency.p50_ms - 50.0).abs() < 0.1);
        assert!((rep.latency.p99_ms - 99.0).abs() < 0.1);
        assert_eq!(rep.errors.total, 1);
        assert_eq!(rep.max_stall_ms, None);
    }

    #[test]
    fn the_longest_gap_between_acks_across_clients() {
        let mut a = Recorder::for_writes();
        let mut b = Recorder::for_writes();
        a.acks.extend([1_000, 3_000, 250_000]);
        b.acks.extend([2_000, 4_000, 5_000, 260_000]);
        a.merge(b);
        // 5 ms -> 250 ms is the longest gap with both clients' acks merged.
        assert_eq!(longest_gap(&mut a.acks), Some((5_000, 245_000)));
        assert_eq!(longest_gap(&mut [7]), None);
        let t = Instant::now();
        let mut r = Recorder::for_writes();
        r.ack(t);
        r.ack(t);
        assert_eq!(r.hist.len(), 2);
        assert_eq!(r.acks.len(), 2);
    }

    #[test]
    fn the_generator_pause_is_reported_beside_a_write_stall_only() {
        let mut writes = Recorder::for_writes();
        writes.acks.extend([1_000, 31_000]);
        let mut other = Recorder::new();
        other.max_pause = Some(Duration::from_millis(4));
        writes.merge(other);
        let report = Report::from_recorder("put", "put", 1, 1, writes, 2, Duration::from_secs(1));
        assert_eq!(report.max_stall_ms, Some(30.0));
        assert_eq!(report.max_pause_ms, Some(4.0));

        let mut reads = Recorder::new();
        reads.max_pause = Some(Duration::from_millis(4));
        let report =
            Report::from_recorder("range", "range", 1, 1, reads, 0, Duration::from_secs(1));
        assert_eq!(report.max_pause_ms, None);
    }

    #[test]
    fn the_pause_probe_reports_once_stopped() {
        let probe = PauseProbe::start();
        assert!(
            probe.finish().is_some(),
            "the probe thread ran and answered"
        );
    }
}
