//! The load modes. Each connects, runs bounded closed loops (at most `--total` operations,
//! at most `--duration`, every request with its own deadline) and returns a [`Report`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::keys::{self, KeyGen};
use crate::opts::{
    CasArgs, Consistency, LeaseArgs, LoadKeysArgs, LoadOpts, RangeArgs, TxnPutArgs, WatchArgs,
};
use crate::report::{error_text, is_unimplemented, PauseProbe, Recorder, Report, Status};

/// Time allowed to connect and answer a first request before a run is declared failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response a client accepts (a LIST of many keys can exceed gRPC's 4 MiB default).
const MAX_DECODE: usize = 256 * 1024 * 1024;
/// Extra time, past duration + request timeout, after which workers are aborted.
const JOIN_GRACE: Duration = Duration::from_secs(5);

/// Hands out operation numbers until `total` or the deadline, pacing them at `rate`.
pub struct Pacer {
    start: Instant,
    deadline: Instant,
    total: u64,
    rate: f64,
    next: AtomicU64,
}

impl Pacer {
    pub fn new(total: u64, duration: Duration, rate: f64) -> Pacer {
        let start = Instant::now();
        Pacer {
            start,
            deadline: start + duration,
            total,
            rate,
            next: AtomicU64::new(0),
        }
    }

    /// The number of the next operation to issue, or `None` when the run is over.
    pub async fn next(&self) -> Option<u64> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.total || Instant::now() >= self.deadline {
            return None;
        }
        if self.rate > 0.0 {
            let at = self.start + Duration::from_secs_f64(i as f64 / self.rate);
            if at >= self.deadline {
                return None;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        Some(i)
    }

    pub fn start(&self) -> Instant {
        self.start
    }
}

/// Picks key numbers: sequential (op number modulo the key space) or uniformly at random.
struct KeyPicker {
    sequential: bool,
    space: u64,
    rng: fastrand::Rng,
}

impl KeyPicker {
    fn new(opts: &LoadOpts, worker: usize) -> KeyPicker {
        KeyPicker {
            sequential: opts.sequential_keys,
            space: opts.key_space_size,
            rng: fastrand::Rng::with_seed(0x6b65_656c_736f_6e00 ^ worker as u64),
        }
    }

    fn pick(&mut self, op: u64) -> u64 {
        if self.sequential {
            op % self.space
        } else {
            self.rng.u64(0..self.space)
        }
    }
}

pub fn connect_options(opts: &LoadOpts) -> ConnectOptions {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(opts.request_timeout);
    match &opts.user {
        Some(user) => options.with_user(user.clone(), opts.password.clone()),
        None => options,
    }
}

/// Opens `--conns` connections and checks that the first answers a Range.
pub async fn connect(opts: &LoadOpts) -> Result<Vec<Client>, String> {
    let work = async {
        let mut clients = Vec::with_capacity(opts.conns);
        for _ in 0..opts.conns {
            let client = Client::connect(&opts.endpoints, Some(connect_options(opts)))
                .await
                .map_err(|e| format!("connect to {:?}: {}", opts.endpoints, error_text(&e)))?;
            clients.push(client);
        }
        for client in &clients {
            client
                .kv_client()
                .get("keelson-bench-probe", None)
                .await
                .map_err(|e| {
                    format!("first request to {:?}: {}", opts.endpoints, error_text(&e))
                })?;
        }
        Ok(clients)
    };
    timeout(CONNECT_TIMEOUT, work).await.unwrap_or_else(|_| {
        Err(format!(
            "no answer from {:?} within {CONNECT_TIMEOUT:?}",
            opts.endpoints
        ))
    })
}

/// Runs `worker(i)` for each of `n` workers and merges what they recorded. Workers still
/// running at `limit` are aborted, and that is counted as an error.
async fn run_workers<F, Fut>(n: usize, limit: Duration, worker: F) -> Recorder
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Recorder> + Send + 'static,
{
    let probe = PauseProbe::start();
    let mut set = JoinSet::new();
    for i in 0..n {
        set.spawn(worker(i));
    }
    let mut merged = Recorder::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(rec))) => merged.merge(rec),
            Ok(Some(Err(e))) => merged.error(format!("worker ended abnormally: {e}")),
            Ok(None) => break,
            Err(_) => {
                let left = set.len();
                set.abort_all();
                merged.error(format!(
                    "{left} workers still running after {limit:?}; aborted"
                ));
                break;
            }
        }
    }
    merged.max_pause = probe.finish();
    merged
}

fn worker_limit(opts: &LoadOpts) -> Duration {
    opts.duration + opts.request_timeout + JOIN_GRACE
}

/// Runs one request with a client-side deadline on top of the gRPC one.
async fn bounded<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match timeout(limit + Duration::from_secs(1), request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error_text(&e)),
        Err(_) => Err(format!("no answer within {limit:?} (client-side deadline)")),
    }
}

fn unsupported_or_failed(mode: &str, opts: &LoadOpts, detail: String) -> Report {
    Report::not_run(mode, Status::Failed, detail, opts.conns, opts.clients)
}

/// A run whose every attempt failed with `Unimplemented` is reported as unsupported.
fn finish(
    mode: &str,
    unit: &str,
    opts: &LoadOpts,
    rec: Recorder,
    ops: u64,
    elapsed: Duration,
) -> Report {
    let all_unimplemented = ops == 0
        && rec.errors.total > 0
        && rec
            .errors
            .kinds
            .keys()
            .all(|k| k.starts_with("Unimplemented"));
    if all_unimplemented {
        let detail = rec.errors.kinds.keys().next().cloned().unwrap_or_default();
        return Report::not_run(mode, Status::Unsupported, detail, opts.conns, opts.clients);
    }
    Report::from_recorder(mode, unit, opts.conns, opts.clients, rec, ops, elapsed)
}

// ---------------------------------------------------------------------------------------
// put

pub async fn put(opts: &LoadOpts) -> Report {
    let clients = match connect(opts).await {
        Ok(c) => c,
        Err(e) => return unsupported_or_failed("put", opts, e),
    };
    let keys = KeyGen::new(&opts.prefix, opts.key_size, opts.key_space_size);
    let pacer = Arc::new(Pacer::new(opts.total, opts.duration, opts.rate));
    let rec = run_workers(opts.clients, worker_limit(opts), |w| {
        let mut kv = clients[w % clients.len()].kv_client();
        let (pacer, keys, opts) = (pacer.clone(), keys.clone(), opts.clone());
        async move {
            let mut rec = Recorder::for_writes();
            let mut picker = KeyPicker::new(&opts, w);
            while let Some(i) = pacer.next().await {
                let key = keys.key(picker.pick(i));
                let t = Instant::now();
                match bounded(
                    opts.request_timeout,
                    kv.put(key, keys::random_value(opts.val_size), None),
                )
                .await
                {
                    Ok(_) => rec.ack(t),
                    Err(e) => rec.error(e),
                }
            }
            rec
        }
    })
    .await;
    let elapsed = pacer.start().elapsed();
    let ops = rec.hist.len();
    finish("put", "put", opts, rec, ops, elapsed)
}

// ---------------------------------------------------------------------------------------
// range

pub async fn range(opts: &LoadOpts, args: &RangeArgs) -> Report {
    let mode = match (args.list, args.consistency) {
        (false, Consistency::L) => "range-l",
        (false, Consistency::S) => "range-s",
        (true, Consistency::L) => "list-l",
        (true, Consistency::S) => "list-s",
    };
    let clients = match connect(opts).await {
        Ok(c) => c,
        Err(e) => return unsupported_or_failed(mode, opts, e),
    };
    let keys = KeyGen::new(&opts.prefix, opts.key_size, opts.key_space_size);
    let groups = opts.key_space_size.div_ceil(1000).max(1);
    let pacer = Arc::new(Pacer::new(opts.total, opts.duration, opts.rate));
    let rec = run_workers(opts.clients, worker_limit(opts), |w| {
        let mut kv = clients[w % clients.len()]
            .kv_client()
            .max_decoding_message_size(MAX_DECODE);
        let (pacer, keys, opts, args) = (pacer.clone(), keys.clone(), opts.clone(), args.clone());
        async move {
            let mut rec = Recorder::new();
            let mut picker = KeyPicker::new(&opts, w);
            while let Some(i) = pacer.next().await {
                let mut options = GetOptions::new();
                if args.consistency == Consistency::S {
                    options = options.with_serializable();
                }
                let key = if args.list {
                    options = options.with_prefix();
                    if args.limit > 0 {
                        options = options.with_limit(args.limit);
                    }
                    let group = if opts.sequential_keys {
                        i % groups
                    } else {
                        picker.rng.u64(0..groups)
                    };
                    keys.group_prefix(group)
                } else {
                    keys.key(picker.pick(i))
                };
                let t = Instant::now();
                match bounded(opts.request_timeout, kv.get(key, Some(options))).await {
                    Ok(resp) => {
                        rec.record(t.elapsed());
                        let n = resp.kvs().len() as u64;
                        rec.count("kvs_returned", n);
                        if n == 0 {
                            rec.count("empty_results", 1);
                        }
                    }
                    Err(e) => rec.error(e),
                }
            }
            rec
        }
    })
    .await;
    let elapsed = pacer.start().elapsed();
    let ops = rec.hist.len();
    finish(
        mode,
        if args.list { "list" } else { "range" },
        opts,
        rec,
        ops,
        elapsed,
    )
}

// ---------------------------------------------------------------------------------------
// txn-put

pub async fn txn_put(opts: &LoadOpts, args: &TxnPutArgs) -> Report {
    let clients = match connect(opts).await {
        Ok(c) => c,
        Err(e) => return unsupported_or_failed("txn-put", opts, e),
    };
    if args.txn_ops == 0 || args.txn_ops as u64 > opts.key_space_size {
        return unsupported_or_failed(
            "txn-put",
            opts,
            "--txn-ops must be between 1 and the key space size".into(),
        );
    }
    let keys = KeyGen::new(&opts.prefix, opts.key_size, opts.key_space_size);
    let pacer = Arc::new(Pacer::new(opts.total, opts.duration, opts.rate));
    let rec = run_workers(opts.clients, worker_limit(opts), |w| {
        let mut kv = clients[w % clients.len()].kv_client();
        let (pacer, keys, opts, n) = (
            pacer.clone(),
            keys.clone(),
            opts.clone(),
            args.txn_ops as u64,
        );
        async move {
            let mut rec = Recorder::for_writes();
            let mut picker = KeyPicker::new(&opts, w);
            while let Some(i) = pacer.next().await {
                let base = picker.pick(i * n);
                let ops: Vec<TxnOp> = (0..n)
                    .map(|j| {
                        TxnOp::put(
                            keys.key((base + j) % opts.key_space_size),
                            keys::random_value(opts.val_size),
                            None,
                        )
                    })
                    .collect();
                let t = Instant::now();
                match bounded(opts.request_timeout, kv.txn(Txn::new().and_then(ops))).await {
                    Ok(_) => rec.ack(t),
                    Err(e) => rec.error(e),
                }
            }
            rec
        }
    })
    .await;
    let elapsed = pacer.start().elapsed();
    let ops = rec.hist.len();
    finish("txn-put", "txn", opts, rec, ops, elapsed)
}

// ---------------------------------------------------------------------------------------
// cas: Kubernetes-style update

/// Each operation is one complete update as kube-apiserver's GuaranteedUpdate does it: read
/// the object, then `Txn If(mod_revision(k) == R) Then(Put k v) Else(Range k)`; on a
/// conflict, retry with the object the Else branch returned. The latency covers the whole
/// update, retries included; conflicts are counted.
pub async fn cas(opts: &LoadOpts, args: &CasArgs) -> Report {
    let clients = match connect(opts).await {
        Ok(c) => c,
        Err(e) => return unsupported_or_failed("cas", opts, e),
    };
    let keys = KeyGen::new(&opts.prefix, opts.key_size, opts.key_space_size);
    let pacer = Arc::new(Pacer::new(opts.total, opts.duration, opts.rate));
    let rec = run_workers(opts.clients, worker_limit(opts), |w| {
        let mut kv = clients[w % clients.len()].kv_client();
        let (pacer, keys, opts, max_retries) =
            (pacer.clone(), keys.clone(), opts.clone(), args.max_retries);
        async move {
            let mut rec = Recorder::for_writes();
            let mut picker = KeyPicker::new(&opts, w);
            'ops: while let Some(i) = pacer.next().await {
                let key = keys.key(picker.pick(i));
                let t = Instant::now();
                let mut revision =
                    match bounded(opts.request_timeout, kv.get(key.clone(), None)).await {
                        Ok(resp) => resp.kvs().first().map_or(0, |kv| kv.mod_revision()),
                        Err(e) => {
                            rec.error(e);
                            continue;
                        }
                    };
                let mut conflicts = 0;
                loop {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then([TxnOp::put(
                            key.clone(),
                            keys::random_value(opts.val_size),
                            None,
                        )])
                        .or_else([TxnOp::get(key.clone(), None)]);
                    rec.count("txns", 1);
                    match bounded(opts.request_timeout, kv.txn(txn)).await {
                        Ok(resp) if resp.succeeded() => {
                            rec.ack(t);
                            continue 'ops;
                        }
                        Ok(resp) => {
                            rec.count("conflicts", 1);
                            conflicts += 1;
                            if conflicts > max_retries {
                                rec.error(format!("update gave up after {max_retries} conflicts"));
                                continue 'ops;
                            }
                            revision = match resp.op_responses().first() {
                                Some(TxnOpResponse::Get(get)) => {
                                    get.kvs().first().map_or(0, |kv| kv.mod_revision())
                                }
                                _ => {
                                    rec.error("failed txn without the Else range response");
                                    continue 'ops;
                                }
                            };
                        }
                        Err(e) => {
                            rec.error(e);
                            continue 'ops;
                        }
                    }
                }
            }
            rec
        }
    })
    .await;
    let elapsed = pacer.start().elapsed();
    let ops = rec.hist.len();
    finish("cas", "update", opts, rec, ops, elapsed)
}

// ---------------------------------------------------------------------------------------
// load: bulk-load a key space with multi-put transactions

/// Writes keys `0 .. min(--total, --key-space-size)` with transactions of `--txn-ops` puts,
/// `--clients` transactions in flight. Latency is per transaction; ops are keys written.
pub async fn load_keys(opts: &LoadOpts, args: &LoadKeysArgs) -> Report {
    let clients = match connect(opts).await {
        Ok(c) => c,
        Err(e) => return unsupported_or_failed("load", opts, e),
    };
    let n_keys = opts.total.min(opts.key_space_size);
    let per_txn = args.txn_ops.max(1) as u64;
    let chunks = n_keys.div_ceil(per_txn);
    let keys = KeyGen::new(&opts.prefix, opts.key_size, opts.key_space_size);
    let pacer = Arc::new(Pacer::new(chunks, opts.duration, opts.rate));
    let rec = run_workers(opts.clients, worker_limit(opts), |w| {
        let mut kv = clients[w % clients.len()].kv_client();
        let (pacer, keys, opts) = (pacer.clone(), keys.clone(), opts.clone());
        async move {
            let mut rec = Recorder::for_writes();
            while let Some(c) = pacer.next().await {
                let first = c * per_txn;
                let last = (first + per_txn).min(n_keys);
                let ops: Vec<TxnOp> = (first..last)
                    .map(|k| TxnOp::put(keys.key(k), keys::random_value(opts.val_size), None))
                    .collect();
                let t = Instant::now();
                match bounded(opts.request_timeout, kv.txn(Txn::new().and_then(ops))).await {
                    Ok(_) => {
                        rec.ack(t);
                        rec.count("keys_written", last - first);
                    }
                    Err(e) => rec.error(e),
                }
            }
            rec
        }
    })
    .await;
    let elapsed = pacer.start().elapsed();
    let written = rec.counters.get("keys_written").copied().unwrap_or(0);
    if written < n_keys {
        let mut rec = rec;
        rec.error(format!(
            "only {written} of {n_keys} keys written before the --duration bound"
        ));
        return finish("load", "key", opts, rec, written, elapsed);
    }
    finish("load", "key", opts, rec, written, elapsed)
}

// ---------------------------------------------------------------------------------------
// watch

/// `--watchers` watchers on the key prefix, spread over `--streams` watch streams; `--clients`
/// putters write values stamped with their send time to random keys under the prefix. Ops are
/// events delivered, per second from the first put to the last event; the latency is from the
/// moment the value was made (just before its put) to the moment a watcher received it.
pub async fn watch(opts: &LoadOpts, args: &WatchArgs) -> Report {
    let mode = "watch";
    if args.watchers == 0 || args.streams == 0 {
        return unsupported_or_failed(
            mode,
            opts,
            "--watchers and --streams must be at least 1".into(),
        );
    }
    let clients = match connect(opts).await {
        Ok(c) => c,
        Err(e) => return unsupported_or_failed(mode, opts, e),
    };
    let keys = KeyGen::new(&opts.prefix, opts.key_size, opts.key_space_size);
    let streams = args.streams.min(args.watchers);
    let watch_options = || {
        if opts.prefix.is_empty() {
            WatchOptions::new().with_all_keys()
        } else {
            WatchOptions::new().with_prefix()
        }
    };

    // Open the streams and create every watcher before the clock starts.
    let setup_deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut opened = Vec::with_capacity(streams);
    for s in 0..streams {
        let n = args.watchers / streams + usize::from(s < args.watchers % streams);
        let mut wc = clients[s % clients.len()].watch_client();
        let first = timeout(
            CONNECT_TIMEOUT,
            wc.watch(opts.prefix.clone(), Some(watch_options())),
        )
        .await;
        let mut stream = match first {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if is_unimplemented(&e) => {
                return Report::not_run(
                    mode,
                    Status::Unsupported,
                    error_text(&e),
                    opts.conns,
                    opts.clients,
                )
            }
            Ok(Err(e)) => {
                return unsupported_or_failed(
                    mode,
                    opts,
                    format!("open watch stream: {}", error_text(&e)),
                )
            }
            Err(_) => {
                return unsupported_or_failed(mode, opts, "opening a watch stream timed out".into())
            }
        };
        for _ in 1..n {
            if let Err(e) = stream
                .watch(opts.prefix.clone(), Some(watch_options()))
                .await
            {
                return unsupported_or_failed(
                    mode,
                    opts,
                    format!("create watch: {}", error_text(&e)),
                );
            }
        }
        let mut created = 0;
        while created < n {
            let left = setup_deadline.saturating_duration_since(Instant::now());
            match timeout(left, stream.message()).await {
                Ok(Ok(Some(resp))) => {
                    if resp.canceled() {
                        return unsupported_or_failed(
                            mode,
                            opts,
                            format!("watch canceled at creation: {}", resp.cancel_reason()),
                        );
                    }
                    if resp.created() {
                        created += 1;
                    }
                }
                Ok(Ok(None)) => {
                    return unsupported_or_failed(
                        mode,
                        opts,
                        "watch stream closed during setup".into(),
                    )
                }
                Ok(Err(e)) if is_unimplemented(&e) => {
                    return Report::not_run(
                        mode,
                        Status::Unsupported,
                        error_text(&e),
                        opts.conns,
                        opts.clients,
                    )
                }
                Ok(Err(e)) => {
                    return unsupported_or_failed(
                        mode,
                        opts,
                        format!("watch setup: {}", error_text(&e)),
                    )
                }
                Err(_) => {
                    return unsupported_or_failed(
                        mode,
                        opts,
                        format!(
                            "only {created} of {n} watchers created within {CONNECT_TIMEOUT:?}"
                        ),
                    )
                }
            }
        }
        opened.push((stream, n as u64));
    }

    // Readers: one task per stream.
    let (target_tx, target_rx) = tokio::sync::watch::channel::<Option<(u64, Instant)>>(None);
    let hard_stop =
        Instant::now() + opts.duration + args.drain_timeout + opts.request_timeout + JOIN_GRACE;
    let mut readers = JoinSet::new();
    for (mut stream, n_watchers) in opened {
        let mut target_rx = target_rx.clone();
        readers.spawn(async move {
            let mut rec = Recorder::new();
            let mut events = 0u64;
            let mut last_event: Option<Instant> = None;
            loop {
                let target = *target_rx.borrow();
                let until = match target {
                    Some((puts, drain_deadline)) => {
                        if events >= puts * n_watchers || Instant::now() >= drain_deadline {
                            break;
                        }
                        drain_deadline.min(hard_stop)
                    }
                    None => hard_stop,
                };
                if Instant::now() >= hard_stop {
                    break;
                }
                tokio::select! {
                    msg = stream.message() => match msg {
                        Ok(Some(resp)) => {
                            if resp.canceled() {
                                rec.error(format!("watch canceled: {}", resp.cancel_reason()));
                                break;
                            }
                            let now_events = resp.events();
                            for ev in now_events {
                                if let Some(kv) = ev.kv() {
                                    if let Some(age) = keys::value_age_micros(kv.value()) {
                                        rec.record_micros(age);
                                    }
                                }
                            }
                            if !now_events.is_empty() {
                                events += now_events.len() as u64;
                                last_event = Some(Instant::now());
                            }
                        }
                        Ok(None) => { rec.error("watch stream closed by the server"); break; }
                        Err(e) => { rec.error(format!("watch stream: {}", error_text(&e))); break; }
                    },
                    _ = target_rx.changed() => {}
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
            }
            (rec, events, n_watchers, last_event)
        });
    }

    // Putters.
    let pacer = Arc::new(Pacer::new(opts.total, opts.duration, opts.rate));
    let put_rec = run_workers(opts.clients, worker_limit(opts), |w| {
        let mut kv = clients[w % clients.len()].kv_client();
        let (pacer, keys, opts) = (pacer.clone(), keys.clone(), opts.clone());
        async move {
            let mut rec = Recorder::new();
            let mut picker = KeyPicker::new(&opts, w);
            while let Some(i) = pacer.next().await {
                let key = keys.key(picker.pick(i));
                let t = Instant::now();
                match bounded(
                    opts.request_timeout,
                    kv.put(key, keys::timed_value(opts.val_size), None),
                )
                .await
                {
                    Ok(_) => rec.record(t.elapsed()),
                    Err(e) => rec.error(format!("put: {e}")),
                }
            }
            rec
        }
    })
    .await;
    let puts_done = Instant::now();
    let puts_ok = put_rec.hist.len();
    let _ = target_tx.send(Some((puts_ok, puts_done + args.drain_timeout)));

    let mut rec = Recorder::new();
    let mut events = 0u64;
    let mut expected = 0u64;
    let mut last_event = pacer.start();
    while let Some(joined) = readers.join_next().await {
        match joined {
            Ok((r, ev, n_watchers, last)) => {
                rec.merge(r);
                events += ev;
                expected += puts_ok * n_watchers;
                if let Some(last) = last {
                    last_event = last_event.max(last);
                }
            }
            Err(e) => rec.error(format!("watch reader ended abnormally: {e}")),
        }
    }
    for (text, n) in put_rec.errors.kinds.clone() {
        rec.errors.add(text, n);
    }
    if events < expected {
        rec.errors.add(
            format!(
                "events not delivered within {:?} after the last put",
                args.drain_timeout
            ),
            expected - events,
        );
    }
    let put_secs = puts_done.duration_since(pacer.start()).as_secs_f64();
    rec.count("watchers", args.watchers as u64);
    rec.count("streams", streams as u64);
    rec.count("puts", puts_ok);
    rec.count("events_expected", expected);
    let mut report = Report::from_recorder(
        mode,
        "event",
        opts.conns,
        opts.clients,
        rec,
        events,
        last_event.duration_since(pacer.start()),
    );
    report.counters.insert(
        "puts_per_sec".into(),
        if put_secs > 0.0 {
            puts_ok as f64 / put_secs
        } else {
            0.0
        },
    );
    let put_lat = crate::report::Latency::from_hist(&put_rec.hist);
    report.counters.insert("put_p50_ms".into(), put_lat.p50_ms);
    report.counters.insert("put_p99_ms".into(), put_lat.p99_ms);
    report
}

// ---------------------------------------------------------------------------------------
// lease-keepalive

/// Each client grants one lease and keeps it alive over its own keep-alive stream: one
/// operation is one request and its answer.
pub async fn lease_keepalive(opts: &LoadOpts, args: &LeaseArgs) -> Report {
    let mode = "lease-keepalive";
    let clients = match connect(opts).await {
        Ok(c) => c,
        Err(e) => return unsupported_or_failed(mode, opts, e),
    };
    let mut leases = Vec::with_capacity(opts.clients);
    for w in 0..opts.clients {
        let mut lc = clients[w % clients.len()].lease_client();
        let granted = match bounded(opts.request_timeout, lc.grant(args.ttl, None)).await {
            Ok(resp) => resp.id(),
            Err(e) if e.starts_with("Unimplemented") => {
                return Report::not_run(mode, Status::Unsupported, e, opts.conns, opts.clients)
            }
            Err(e) => return unsupported_or_failed(mode, opts, format!("lease grant: {e}")),
        };
        let stream = match timeout(CONNECT_TIMEOUT, lc.keep_alive(granted)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) if is_unimplemented(&e) => {
                return Report::not_run(
                    mode,
                    Status::Unsupported,
                    error_text(&e),
                    opts.conns,
                    opts.clients,
                )
            }
            Ok(Err(e)) => {
                return unsupported_or_failed(
                    mode,
                    opts,
                    format!("lease keep-alive stream: {}", error_text(&e)),
                )
            }
            Err(_) => {
                return unsupported_or_failed(
                    mode,
                    opts,
                    "opening a keep-alive stream timed out".into(),
                )
            }
        };
        leases.push(Some((lc, granted, stream)));
    }
    let leases: Vec<_> = leases
        .into_iter()
        .map(|l| Arc::new(tokio::sync::Mutex::new(l)))
        .collect();
    let pacer = Arc::new(Pacer::new(opts.total, opts.duration, opts.rate));
    let rec = run_workers(opts.clients, worker_limit(opts), |w| {
        let (pacer, opts, slot) = (pacer.clone(), opts.clone(), leases[w].clone());
        async move {
            let mut rec = Recorder::new();
            let mut slot = slot.lock().await;
            let Some((_, _, (keeper, stream))) = slot.as_mut() else {
                return rec;
            };
            while pacer.next().await.is_some() {
                let t = Instant::now();
                let round_trip = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                match timeout(opts.request_timeout, round_trip).await {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => rec.record(t.elapsed()),
                    Ok(Ok(Some(_))) => rec.error("keep-alive answered TTL 0 (lease not found)"),
                    Ok(Ok(None)) => {
                        rec.error("keep-alive stream closed by the server");
                        break;
                    }
                    Ok(Err(e)) => {
                        rec.error(error_text(&e));
                        break;
                    }
                    Err(_) => {
                        rec.error(format!(
                            "keep-alive: no answer within {:?}",
                            opts.request_timeout
                        ));
                        break;
                    }
                }
            }
            rec
        }
    })
    .await;
    let elapsed = pacer.start().elapsed();
    // Revoke the leases (best effort, outside the measurement).
    for slot in leases {
        if let Some((mut lc, id, _)) = slot.lock().await.take() {
            let _ = timeout(Duration::from_secs(2), lc.revoke(id)).await;
        }
    }
    let ops = rec.hist.len();
    finish(mode, "keepalive", opts, rec, ops, elapsed)
}
