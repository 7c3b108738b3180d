//! Watch helpers shared by the `watch_*` suites:
//!
//! - bounded reads of a watch stream ([`next_message`], [`expect_created`], [`read_events`])
//!   and events as comparable values ([`Ev`], [`Kv`], [`Resp`]);
//! - [`EtcdctlWatch`]: `etcdctl watch` as a long-running child whose output is read line by
//!   line, with bounded waits, and killed at the end;
//! - the guarantee checker: a random [`workload`] whose acknowledged writes give an
//!   independent [`History`] of the store, [`StreamRecorder`]s that record everything a watch
//!   stream delivers, and [`check_stream`], which checks a recording against the history
//!   (ordered, unique, atomic per revision, gap-free, prev_kv-correct, progress revisions safe
//!   resume points), plus [`check_resumable`].
//!
//! Nothing here knows which server it talks to: the same code checks keelson and etcd.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, Event, EventType, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::etcdctl::etcdctl_binary;
use crate::json::bytes_text;
use crate::server::{inherited_env_names, Server};

/// The longest a test waits for one expected watch message.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Events and responses as values
// ---------------------------------------------------------------------------------------

/// A key-value pair as a plain comparable value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Kv {
    pub fn of(kv: &KeyValue) -> Kv {
        Kv {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }

    /// What a DELETE event carries: the key and the delete revision, nothing else.
    pub fn tombstone(key: &[u8], revision: i64) -> Kv {
        Kv {
            key: key.to_vec(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: 0,
        }
    }
}

impl fmt::Display for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} (create {}, mod {}, version {}, lease {})",
            bytes_text(&self.key),
            short_value(&self.value),
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease
        )
    }
}

/// A value for failure messages: long values are cut and their length shown.
pub fn short_value(value: &[u8]) -> String {
    const SHOWN: usize = 24;
    if value.len() <= SHOWN {
        bytes_text(value)
    } else {
        format!("{}…[{} bytes]", bytes_text(&value[..SHOWN]), value.len())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Put,
    Delete,
}

/// One watch event as a plain comparable value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ev {
    pub kind: Kind,
    pub kv: Kv,
    pub prev: Option<Kv>,
}

impl Ev {
    pub fn of(event: &Event) -> Ev {
        Ev {
            kind: match event.event_type() {
                EventType::Put => Kind::Put,
                EventType::Delete => Kind::Delete,
            },
            kv: Kv::of(event.kv().expect("every watch event carries a kv")),
            prev: event.prev_kv().map(Kv::of),
        }
    }

    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    pub fn key(&self) -> &[u8] {
        &self.kv.key
    }

    /// `(revision, key)`: what identifies an event in a history (a key changes at most once
    /// per revision).
    pub fn id(&self) -> (i64, Vec<u8>) {
        (self.revision(), self.kv.key.clone())
    }

    /// The same event without its previous pair.
    pub fn without_prev(&self) -> Ev {
        Ev {
            prev: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Put => "PUT",
            Kind::Delete => "DELETE",
        };
        write!(f, "{kind} {}", self.kv)?;
        match &self.prev {
            Some(prev) => write!(f, " prev {prev}"),
            None => write!(f, " no prev"),
        }
    }
}

/// Whether a response has `fragment = true`.
///
/// etcd-client 0.21 has no accessor for the field (only with its `pub-response-field`
/// feature, which this crate does not enable), but its `Debug` output is the prost message's,
/// which prints the fields in declaration order: `fragment` comes before `events`. The
/// output is cut off at `events`, so a response with megabytes of values costs nothing.
pub fn is_fragment(response: &WatchResponse) -> bool {
    struct UntilEvents(String);
    impl fmt::Write for UntilEvents {
        fn write_str(&mut self, text: &str) -> fmt::Result {
            self.0.push_str(text);
            if self.0.contains("events: ") || self.0.len() > 64 * 1024 {
                Err(fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut out = UntilEvents(String::new());
    // The writer stops the formatting on purpose once it reached the events.
    let _ = fmt::write(&mut out, format_args!("{response:?}"));
    if out.0.contains(", fragment: true,") {
        true
    } else if out.0.contains(", fragment: false,") {
        false
    } else {
        panic!(
            "cannot find the fragment field in the Debug output of a WatchResponse: {}",
            out.0
        )
    }
}

/// A watch response as a plain value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resp {
    pub watch_id: i64,
    pub header_revision: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub fragment: bool,
    pub events: Vec<Ev>,
}

impl Resp {
    pub fn of(response: &WatchResponse) -> Resp {
        Resp {
            watch_id: response.watch_id(),
            header_revision: response
                .header()
                .expect("every watch response carries a header")
                .revision(),
            created: response.created(),
            canceled: response.canceled(),
            compact_revision: response.compact_revision(),
            cancel_reason: response.cancel_reason().to_string(),
            fragment: is_fragment(response),
            events: response.events().iter().map(Ev::of).collect(),
        }
    }

    /// A progress notification: no events and neither created nor canceled.
    pub fn is_progress(&self) -> bool {
        !self.created && !self.canceled && self.events.is_empty() && self.compact_revision == 0
    }

    /// The answer to a `WatchProgressRequest` (for the whole stream, `watch_id = -1`).
    pub fn is_stream_progress(&self) -> bool {
        self.is_progress() && self.watch_id == -1
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "watch {} rev {}", self.watch_id, self.header_revision)?;
        if self.created {
            write!(f, " created")?;
        }
        if self.canceled {
            write!(f, " canceled ({:?})", self.cancel_reason)?;
        }
        if self.compact_revision != 0 {
            write!(f, " compact_revision {}", self.compact_revision)?;
        }
        if self.fragment {
            write!(f, " fragment")?;
        }
        if self.is_progress() {
            write!(f, " progress")?;
        }
        for event in self.events.iter().take(6) {
            write!(f, "\n    {event}")?;
        }
        if self.events.len() > 6 {
            write!(f, "\n    … {} events in all", self.events.len())?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Bounded reads
// ---------------------------------------------------------------------------------------

/// The largest watch response the test clients accept. etcd-client's default is 4 MiB, but
/// etcd 3.4 batches the events of up to 1000 revisions into one catch-up response, which
/// easily exceeds that: hundreds of MB with large values (Go clients accept up to 2 GiB).
pub const MAX_WATCH_MESSAGE: usize = 1 << 30;

/// Opens a watch stream with a first create request (accepting responses up to
/// [`MAX_WATCH_MESSAGE`]).
pub async fn open_watch(
    client: &mut Client,
    key: impl Into<Vec<u8>>,
    options: WatchOptions,
) -> WatchStream {
    let key = key.into();
    let mut watch_client = client
        .watch_client()
        .max_decoding_message_size(MAX_WATCH_MESSAGE);
    match tokio::time::timeout(
        WATCH_TIMEOUT,
        watch_client.watch(key.clone(), Some(options)),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => panic!("open a watch on {}: {error}", bytes_text(&key)),
        Err(_) => panic!(
            "opening a watch on {} took more than {WATCH_TIMEOUT:?}",
            bytes_text(&key)
        ),
    }
}

/// The next message of the stream within `timeout`; panics if the stream ends or fails.
pub async fn next_message_within(
    stream: &mut WatchStream,
    timeout: Duration,
    what: &str,
) -> WatchResponse {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(Ok(Some(response))) => response,
        Ok(Ok(None)) => panic!("{what}: the watch stream ended"),
        Ok(Err(error)) => panic!("{what}: the watch stream failed: {error}"),
        Err(_) => panic!("{what}: no watch response within {timeout:?}"),
    }
}

/// The next message of the stream within [`WATCH_TIMEOUT`].
pub async fn next_message(stream: &mut WatchStream, what: &str) -> WatchResponse {
    next_message_within(stream, WATCH_TIMEOUT, what).await
}

/// The next message, which must be a `created` answer that was not refused.
pub async fn expect_created(stream: &mut WatchStream, what: &str) -> Resp {
    let response = Resp::of(&next_message(stream, what).await);
    assert!(
        response.created && !response.canceled && response.events.is_empty(),
        "{what}: expected a created response first, got {response}"
    );
    response
}

/// Reads responses until `count` events of `watch_id` arrived, and returns the responses.
/// Any other message (another watch, a progress notification, a cancel) fails the test, as
/// does an event beyond `count`.
pub async fn read_events(
    stream: &mut WatchStream,
    watch_id: i64,
    count: usize,
    what: &str,
) -> Vec<Resp> {
    let mut responses = Vec::new();
    let mut seen = 0;
    while seen < count {
        let response = Resp::of(
            &next_message(stream, &format!("{what} ({seen} of {count} events so far)")).await,
        );
        assert!(
            response.watch_id == watch_id
                && !response.created
                && !response.canceled
                && !response.events.is_empty(),
            "{what}: expected events of watch {watch_id}, got {response}"
        );
        seen += response.events.len();
        assert!(
            seen <= count,
            "{what}: expected {count} events, got at least {seen}; last response: {response}"
        );
        responses.push(response);
    }
    responses
}

/// The events of a list of responses, in order.
pub fn events_of(responses: &[Resp]) -> Vec<Ev> {
    responses
        .iter()
        .flat_map(|response| response.events.iter().cloned())
        .collect()
}

/// `(kind, key, value)` of events, for compact assertions.
pub fn summary(events: &[Ev]) -> Vec<(Kind, String, String)> {
    events
        .iter()
        .map(|event| {
            (
                event.kind,
                bytes_text(&event.kv.key),
                bytes_text(&event.kv.value),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// etcdctl watch
// ---------------------------------------------------------------------------------------

/// `etcdctl watch ...` running as a child: its stdout is read line by line with bounded
/// waits, its stdin stays open (interactive mode exits at the end of its input), and it is
/// killed when dropped.
pub struct EtcdctlWatch {
    args: Vec<String>,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: JoinHandle<String>,
}

impl EtcdctlWatch {
    /// Starts `etcdctl --endpoints=<server> <args>` with `ETCDCTL_API=3`.
    pub fn spawn(server: &Server, args: &[&str]) -> EtcdctlWatch {
        let mut command = Command::new(etcdctl_binary());
        for name in inherited_env_names("ETCDCTL_") {
            command.env_remove(name);
        }
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", etcdctl_binary().display()));
        let stdout = child.stdout.take().expect("etcdctl's stdout is piped");
        let mut stderr = child.stderr.take().expect("etcdctl's stderr is piped");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        EtcdctlWatch {
            args: args.iter().map(|arg| arg.to_string()).collect(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    /// Writes one line (a newline is added) to etcdctl's standard input.
    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("etcdctl's stdin is still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap_or_else(|error| panic!("write {line:?} to etcdctl {:?}: {error}", self.args));
        stdin.flush().await.expect("flush etcdctl's stdin");
    }

    /// The next line of stdout within `timeout`, or `None` if none came (or stdout ended).
    pub async fn try_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next `count` lines of stdout, each within [`WATCH_TIMEOUT`].
    pub async fn lines(&mut self, count: usize, what: &str) -> Vec<String> {
        let mut lines = Vec::with_capacity(count);
        while lines.len() < count {
            match tokio::time::timeout(WATCH_TIMEOUT, self.lines.recv()).await {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => {
                    let stderr = self.stderr_now().await;
                    panic!(
                        "etcdctl {:?} ({what}): stdout ended after {} of {count} lines: {lines:?}; stderr: {stderr}",
                        self.args,
                        lines.len(),
                    )
                }
                Err(_) => panic!(
                    "etcdctl {:?} ({what}): only {} of {count} lines within {WATCH_TIMEOUT:?}: {lines:?}",
                    self.args,
                    lines.len()
                ),
            }
        }
        lines
    }

    /// Reads lines until one satisfies `is_last` (bounded by `max_lines` and
    /// [`WATCH_TIMEOUT`] per line), and returns the lines before it.
    pub async fn lines_until(
        &mut self,
        is_last: impl Fn(&str) -> bool,
        max_lines: usize,
        what: &str,
    ) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let next = self.lines(1, what).await.remove(0);
            if is_last(&next) {
                return before;
            }
            before.push(next);
            assert!(
                before.len() <= max_lines,
                "etcdctl {:?} ({what}): the awaited line did not come within {max_lines} lines: {before:?}",
                self.args
            );
        }
    }

    /// Waits (bounded) until etcdctl exits on its own; returns its status, the stdout lines
    /// not read yet and its stderr.
    pub async fn wait_exit(mut self, what: &str) -> (ExitStatus, Vec<String>, String) {
        let status = match tokio::time::timeout(WATCH_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.expect("wait for etcdctl"),
            Err(_) => panic!(
                "etcdctl {:?} ({what}) did not exit within {WATCH_TIMEOUT:?}",
                self.args
            ),
        };
        let mut rest = Vec::new();
        while let Some(line) = self.try_line(Duration::from_secs(2)).await {
            rest.push(line);
        }
        let stderr = tokio::time::timeout(WATCH_TIMEOUT, &mut self.stderr)
            .await
            .map(|text| text.unwrap_or_default())
            .unwrap_or_default();
        (status, rest, stderr)
    }

    /// Kills etcdctl (it never exits on its own while the watch lasts) and returns the stdout
    /// lines not read yet.
    pub async fn kill(mut self) -> Vec<String> {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WATCH_TIMEOUT, self.child.wait()).await;
        let mut rest = Vec::new();
        while let Some(line) = self.try_line(Duration::from_millis(200)).await {
            rest.push(line);
        }
        rest
    }

    async fn stderr_now(&mut self) -> String {
        let _ = self.child.start_kill();
        tokio::time::timeout(Duration::from_secs(2), &mut self.stderr)
            .await
            .map(|text| text.unwrap_or_default())
            .unwrap_or_else(|_| "<not available>".into())
    }
}

/// Makes sure a freshly started `etcdctl watch` is watching before the test writes: puts
/// `probe_key` (which the watch must cover) until etcdctl prints something, then puts
/// `probe_key = marker` and discards everything up to the line for which `is_marker` holds
/// (the marker's value line, or in JSON the response holding its base64). What etcdctl
/// prints afterwards no longer depends on when its watch started.
pub async fn wait_until_watching(
    client: &mut Client,
    watch: &mut EtcdctlWatch,
    probe_key: &str,
    marker: &str,
    is_marker: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + WATCH_TIMEOUT;
    let mut attempt = 0;
    loop {
        attempt += 1;
        client
            .put(probe_key, format!("probe-{attempt}"), None)
            .await
            .expect("put the probe key");
        if watch.try_line(Duration::from_millis(100)).await.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {:?} printed nothing for {attempt} puts of {probe_key} within {WATCH_TIMEOUT:?}",
            watch.args
        );
    }
    client
        .put(probe_key, marker, None)
        .await
        .expect("put the marker");
    watch
        .lines_until(is_marker, 1000, "waiting for the marker")
        .await;
}

// ---------------------------------------------------------------------------------------
// A tiny deterministic random generator
// ---------------------------------------------------------------------------------------

/// SplitMix64: enough randomness for workloads, reproducible from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// `COMPAT_SEED` if set, otherwise a seed from the clock (printed by the caller so that a
/// failure can be replayed).
pub fn seed_from_env() -> u64 {
    match std::env::var("COMPAT_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("COMPAT_SEED must be an integer, not {text:?}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos() as u64)
            .unwrap_or(1),
    }
}

// ---------------------------------------------------------------------------------------
// Workload and history
// ---------------------------------------------------------------------------------------

/// One operation of an acknowledged write, with what the store reported.
#[derive(Clone, Debug)]
pub enum Applied {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// A delete (of one key or a range) and the pairs it removed, in key order, as the store
    /// reported them with `prev_kv`.
    Delete {
        removed: Vec<Kv>,
    },
}

/// A write the store acknowledged, at the revision its response header reported.
#[derive(Clone, Debug)]
pub struct AckedWrite {
    pub revision: i64,
    pub ops: Vec<Applied>,
    pub label: String,
}

impl AckedWrite {
    /// Whether the write changed anything (a delete of nothing does not take a revision).
    pub fn changed(&self) -> bool {
        self.ops.iter().any(|op| match op {
            Applied::Put { .. } => true,
            Applied::Delete { removed } => !removed.is_empty(),
        })
    }
}

/// The random workload of the guarantee checker.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Every key written starts with this.
    pub prefix: String,
    pub writers: usize,
    /// Writes in all (acknowledged or not), across writers.
    pub max_writes: usize,
    /// Writers stop after this long even if `max_writes` was not reached.
    pub max_duration: Duration,
    /// Keys are `<prefix>a/NN` and `<prefix>b/NN` for NN below this.
    pub keys_per_group: usize,
    pub value_size: usize,
    pub seed: u64,
}

impl WorkloadConfig {
    pub fn key(&self, group: char, index: usize) -> Vec<u8> {
        format!("{}{group}/{index:02}", self.prefix).into_bytes()
    }
}

/// Shared progress of running writers: how many writes they sent, and a stop flag.
#[derive(Default)]
pub struct WorkloadControl {
    pub sent: AtomicUsize,
    pub stop: AtomicBool,
}

/// Runs one writer per client until `max_writes` were sent in all, `max_duration` passed or
/// `control.stop` is set. Returns every acknowledged write that changed the store. A write
/// that fails fails the test: a single member under this load must not refuse writes.
pub async fn run_workload(
    clients: Vec<Client>,
    config: WorkloadConfig,
    control: Arc<WorkloadControl>,
) -> Vec<AckedWrite> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (writer, client) in clients.into_iter().enumerate() {
        let config = config.clone();
        let control = control.clone();
        tasks.spawn(async move {
            let mut rng = Rng::new(config.seed.wrapping_add(writer as u64 * 7919));
            let mut client = client;
            let mut acked = Vec::new();
            let mut sequence = 0usize;
            loop {
                if control.stop.load(Ordering::Relaxed)
                    || started.elapsed() >= config.max_duration
                    || control.sent.fetch_add(1, Ordering::Relaxed) >= config.max_writes
                {
                    break;
                }
                sequence += 1;
                let write = one_write(&mut client, &config, &mut rng, writer, sequence).await;
                if write.changed() {
                    acked.push(write);
                }
            }
            acked
        });
    }
    let mut all = Vec::new();
    while let Some(result) = tasks.join_next().await {
        all.extend(result.expect("a writer panicked"));
    }
    all.sort_by_key(|write| write.revision);
    all
}

fn random_key(config: &WorkloadConfig, rng: &mut Rng) -> Vec<u8> {
    let group = if rng.below(2) == 0 { 'a' } else { 'b' };
    config.key(group, rng.below(config.keys_per_group as u64) as usize)
}

fn value_for(config: &WorkloadConfig, writer: usize, sequence: usize, op: usize) -> Vec<u8> {
    let mut value = format!("w{writer}-s{sequence}-o{op}-").into_bytes();
    while value.len() < config.value_size {
        value.push(b'a' + (value.len() % 26) as u8);
    }
    value
}

/// `n` distinct random keys.
fn distinct_keys(config: &WorkloadConfig, rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for _ in 0..n * 4 {
        if keys.len() == n {
            break;
        }
        let key = random_key(config, rng);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

async fn one_write(
    client: &mut Client,
    config: &WorkloadConfig,
    rng: &mut Rng,
    writer: usize,
    sequence: usize,
) -> AckedWrite {
    let prev = || DeleteOptions::new().with_prev_key();
    let roll = rng.below(100);
    if roll < 40 {
        let key = random_key(config, rng);
        let value = value_for(config, writer, sequence, 0);
        let response = client
            .put(key.clone(), value.clone(), None)
            .await
            .unwrap_or_else(|error| panic!("writer {writer}: put {}: {error}", bytes_text(&key)));
        AckedWrite {
            revision: response.header().expect("put header").revision(),
            ops: vec![Applied::Put {
                key: key.clone(),
                value,
            }],
            label: format!("put {}", bytes_text(&key)),
        }
    } else if roll < 55 {
        let key = random_key(config, rng);
        let response = client
            .delete(key.clone(), Some(prev()))
            .await
            .unwrap_or_else(|error| {
                panic!("writer {writer}: delete {}: {error}", bytes_text(&key))
            });
        AckedWrite {
            revision: response.header().expect("delete header").revision(),
            ops: vec![Applied::Delete {
                removed: response.prev_kvs().iter().map(Kv::of).collect(),
            }],
            label: format!("delete {}", bytes_text(&key)),
        }
    } else if roll < 65 {
        // A small range delete: [<group>/i, <group>/j).
        let group = if rng.below(2) == 0 { 'a' } else { 'b' };
        let start = rng.below(config.keys_per_group as u64) as usize;
        let end = (start + 1 + rng.below(4) as usize).min(config.keys_per_group);
        let (key, range_end) = (config.key(group, start), config.key(group, end));
        let response = client
            .delete(key.clone(), Some(prev().with_range(range_end.clone())))
            .await
            .unwrap_or_else(|error| panic!("writer {writer}: delete range: {error}"));
        AckedWrite {
            revision: response.header().expect("delete header").revision(),
            ops: vec![Applied::Delete {
                removed: response.prev_kvs().iter().map(Kv::of).collect(),
            }],
            label: format!("delete [{}, {})", bytes_text(&key), bytes_text(&range_end)),
        }
    } else {
        // A multi-key txn; one in three is conditional on a key existing.
        let count = 2 + rng.below(3) as usize;
        let keys = distinct_keys(config, rng, count);
        let mut ops = Vec::new();
        let mut planned = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            if rng.below(10) < 7 {
                let value = value_for(config, writer, sequence, index);
                ops.push(TxnOp::put(key.clone(), value.clone(), None));
                planned.push(Some(value));
            } else {
                ops.push(TxnOp::delete(key.clone(), Some(prev())));
                planned.push(None);
            }
        }
        let conditional = rng.below(3) == 0;
        let txn = if conditional {
            let probe = random_key(config, rng);
            // The failure branch writes the same keys in reverse order, so both branches
            // are worth checking.
            let mut reversed: Vec<TxnOp> = ops.clone();
            reversed.reverse();
            Txn::new()
                .when([Compare::version(probe, CompareOp::Greater, 0)])
                .and_then(ops)
                .or_else(reversed)
        } else {
            Txn::new().and_then(ops)
        };
        let response = client
            .txn(txn)
            .await
            .unwrap_or_else(|error| panic!("writer {writer}: txn: {error}"));
        let mut order: Vec<usize> = (0..keys.len()).collect();
        if conditional && !response.succeeded() {
            order.reverse();
        }
        let results = response.op_responses();
        assert_eq!(results.len(), keys.len(), "writer {writer}: txn results");
        let mut applied = Vec::new();
        for (position, index) in order.into_iter().enumerate() {
            match (&planned[index], &results[position]) {
                (Some(value), TxnOpResponse::Put(_)) => applied.push(Applied::Put {
                    key: keys[index].clone(),
                    value: value.clone(),
                }),
                (None, TxnOpResponse::Delete(delete)) => applied.push(Applied::Delete {
                    removed: delete.prev_kvs().iter().map(Kv::of).collect(),
                }),
                (_, other) => panic!("writer {writer}: unexpected txn result {other:?}"),
            }
        }
        AckedWrite {
            revision: response.header().expect("txn header").revision(),
            ops: applied,
            label: format!(
                "txn of {} ops{}",
                keys.len(),
                if conditional { " (conditional)" } else { "" }
            ),
        }
    }
}

/// Every event of the store, revision by revision, rebuilt from acknowledged writes alone
/// (never from a watch): the oracle the checker compares watchers with.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Events of each revision, in the order the store applies them, with `prev_kv`.
    pub revisions: BTreeMap<i64, Vec<Ev>>,
    /// The last revision of the history.
    pub last: i64,
    /// The state at `last`.
    pub state: BTreeMap<Vec<u8>, Kv>,
}

impl History {
    /// Replays `writes` (those that changed the store) on an empty key space that was at
    /// `initial_revision`. Fails if the acknowledged revisions are not exactly the next ones
    /// (a gap, a reuse), or if a delete removed something the model does not have.
    pub fn from_writes(initial_revision: i64, writes: &[AckedWrite]) -> Result<History, String> {
        let mut history = History {
            last: initial_revision,
            ..History::default()
        };
        let mut writes: Vec<&AckedWrite> = writes.iter().filter(|w| w.changed()).collect();
        writes.sort_by_key(|write| write.revision);
        for write in writes {
            let revision = history.last + 1;
            if write.revision != revision {
                return Err(format!(
                    "acknowledged revisions are not consecutive: after {} came {} ({})",
                    history.last, write.revision, write.label
                ));
            }
            let mut events = Vec::new();
            for op in &write.ops {
                match op {
                    Applied::Put { key, value } => {
                        let prev = history.state.get(key).cloned();
                        let kv = Kv {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                            mod_revision: revision,
                            version: prev.as_ref().map_or(1, |p| p.version + 1),
                            lease: 0,
                        };
                        history.state.insert(key.clone(), kv.clone());
                        events.push(Ev {
                            kind: Kind::Put,
                            kv,
                            prev,
                        });
                    }
                    Applied::Delete { removed } => {
                        for reported in removed {
                            let prev = history.state.remove(&reported.key);
                            if prev.as_ref() != Some(reported) {
                                return Err(format!(
                                    "{} at revision {revision} reported removing {reported}, the model had {}",
                                    write.label,
                                    prev.map_or("nothing".into(), |p| p.to_string())
                                ));
                            }
                            events.push(Ev {
                                kind: Kind::Delete,
                                kv: Kv::tombstone(&reported.key, revision),
                                prev,
                            });
                        }
                    }
                }
            }
            history.revisions.insert(revision, events);
            history.last = revision;
        }
        Ok(history)
    }

    /// What a watch of `spec` must deliver for revisions `from..=to`, in order.
    pub fn expected(&self, spec: &WatchSpec, from: i64, to: i64) -> Vec<Ev> {
        self.revisions
            .range(from..=to)
            .flat_map(|(_, events)| events.iter())
            .filter(|event| spec.covers(event))
            .map(|event| spec.shape(event))
            .collect()
    }

    /// Compares the model's final state with a Range of `prefix` at the last revision.
    pub async fn check_against_store(
        &self,
        client: &mut Client,
        prefix: &str,
    ) -> Result<(), String> {
        let response = client
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_revision(self.last)),
            )
            .await
            .map_err(|error| format!("range {prefix} at {}: {error}", self.last))?;
        let store: BTreeMap<Vec<u8>, Kv> = response
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), Kv::of(kv)))
            .collect();
        if store == self.state {
            return Ok(());
        }
        let differences: Vec<String> = store
            .keys()
            .chain(self.state.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|key| store.get(*key) != self.state.get(*key))
            .take(5)
            .map(|key| {
                format!(
                    "{}: store {:?}, model {:?}",
                    bytes_text(key),
                    store.get(key).map(ToString::to_string),
                    self.state.get(key).map(ToString::to_string)
                )
            })
            .collect();
        Err(format!(
            "the store's state at revision {} differs from the model rebuilt from acknowledged writes: {}",
            self.last,
            differences.join("; ")
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Watch specifications and recorders
// ---------------------------------------------------------------------------------------

/// What a watch asks for, kept by the checker to compute what it must receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    /// Empty: only `key`; `"\0"`: every key from `key` on; otherwise `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// 0: from the revision after the `created` answer.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

impl WatchSpec {
    pub fn key(key: impl Into<Vec<u8>>) -> WatchSpec {
        WatchSpec {
            key: key.into(),
            range_end: Vec::new(),
            start_revision: 0,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            fragment: false,
        }
    }

    pub fn prefix(prefix: impl Into<Vec<u8>>) -> WatchSpec {
        let key = prefix.into();
        let mut end = key.clone();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                break;
            }
        }
        if end.is_empty() {
            end = vec![0];
        }
        WatchSpec {
            range_end: end,
            ..WatchSpec::key(key)
        }
    }

    pub fn range(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> WatchSpec {
        WatchSpec {
            range_end: range_end.into(),
            ..WatchSpec::key(key)
        }
    }

    pub fn from_revision(mut self, revision: i64) -> WatchSpec {
        self.start_revision = revision;
        self
    }

    pub fn with_prev_kv(mut self) -> WatchSpec {
        self.prev_kv = true;
        self
    }

    pub fn no_put(mut self) -> WatchSpec {
        self.no_put = true;
        self
    }

    pub fn no_delete(mut self) -> WatchSpec {
        self.no_delete = true;
        self
    }

    pub fn with_progress_notify(mut self) -> WatchSpec {
        self.progress_notify = true;
        self
    }

    pub fn with_fragment(mut self) -> WatchSpec {
        self.fragment = true;
        self
    }

    /// The create request's options (the key is passed separately to etcd-client).
    pub fn options(&self, watch_id: i64) -> WatchOptions {
        let mut options = WatchOptions::new().with_watch_id(watch_id);
        if !self.range_end.is_empty() {
            options = options.with_range(self.range_end.clone());
        }
        if self.start_revision != 0 {
            options = options.with_start_revision(self.start_revision);
        }
        if self.prev_kv {
            options = options.with_prev_key();
        }
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(WatchFilterType::NoPut);
        }
        if self.no_delete {
            filters.push(WatchFilterType::NoDelete);
        }
        if !filters.is_empty() {
            options = options.with_filters(filters);
        }
        if self.progress_notify {
            options = options.with_progress_notify();
        }
        if self.fragment {
            options = options.with_fragment();
        }
        options
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else if self.range_end == [0] {
            key >= self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.range_end.as_slice()
        }
    }

    /// Whether the watch receives `event` (range and filters).
    pub fn covers(&self, event: &Ev) -> bool {
        self.contains(event.key())
            && match event.kind {
                Kind::Put => !self.no_put,
                Kind::Delete => !self.no_delete,
            }
    }

    /// `event` as this watch must receive it (without `prev_kv` unless asked for).
    pub fn shape(&self, event: &Ev) -> Ev {
        if self.prev_kv {
            event.clone()
        } else {
            event.without_prev()
        }
    }
}

impl fmt::Display for WatchSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.range_end.is_empty() {
            write!(f, "key {}", bytes_text(&self.key))?;
        } else {
            write!(
                f,
                "[{}, {})",
                bytes_text(&self.key),
                bytes_text(&self.range_end)
            )?;
        }
        if self.start_revision != 0 {
            write!(f, " from {}", self.start_revision)?;
        }
        for (on, name) in [
            (self.prev_kv, "prev_kv"),
            (self.no_put, "NOPUT"),
            (self.no_delete, "NODELETE"),
            (self.progress_notify, "progress_notify"),
            (self.fragment, "fragment"),
        ] {
            if on {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

/// How a recorded stream behaves.
#[derive(Clone, Debug, Default)]
pub struct StreamBehaviour {
    /// Send a `WatchProgressRequest` this often.
    pub progress_every: Option<Duration>,
    /// A slow reader: read for the first duration, then stop reading for the second, and
    /// so on, until told to catch up.
    pub read_pause: Option<(Duration, Duration)>,
}

enum RecorderCommand {
    Watch(i64, WatchSpec),
    RequestProgress,
    /// Stop pausing and stop periodic progress requests.
    CatchUp,
    Finish,
}

/// One entry of a stream's recording: a response, in the order the stream delivered it.
pub type Recording = Arc<Mutex<Vec<Resp>>>;

/// A watch stream whose every response is recorded by a background task.
pub struct StreamRecorder {
    pub name: String,
    pub behaviour: StreamBehaviour,
    /// Watches created on this stream, by client-chosen ID.
    pub watches: Vec<(i64, WatchSpec)>,
    log: Recording,
    commands: mpsc::UnboundedSender<RecorderCommand>,
    task: JoinHandle<Result<(), String>>,
}

impl StreamRecorder {
    /// Opens a stream whose first watch is `(watch_id, spec)` and starts recording it.
    pub async fn start(
        client: &mut Client,
        name: impl Into<String>,
        behaviour: StreamBehaviour,
        watch_id: i64,
        spec: WatchSpec,
    ) -> StreamRecorder {
        let name = name.into();
        let stream = open_watch(client, spec.key.clone(), spec.options(watch_id)).await;
        let log: Recording = Arc::default();
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(record(stream, receiver, log.clone(), behaviour.clone()));
        StreamRecorder {
            name,
            behaviour,
            watches: vec![(watch_id, spec)],
            log,
            commands,
            task,
        }
    }

    /// Adds a watch on the same stream.
    pub fn watch(&mut self, watch_id: i64, spec: WatchSpec) {
        self.watches.push((watch_id, spec.clone()));
        let _ = self.commands.send(RecorderCommand::Watch(watch_id, spec));
    }

    pub fn request_progress(&self) {
        let _ = self.commands.send(RecorderCommand::RequestProgress);
    }

    /// Stops pausing and stops periodic progress requests.
    pub fn catch_up(&self) {
        let _ = self.commands.send(RecorderCommand::CatchUp);
    }

    /// A copy of what was recorded so far.
    pub fn snapshot(&self) -> Vec<Resp> {
        self.log.lock().expect("recording lock").clone()
    }

    /// Whether every watch of the stream received its last expected event (`expected_last`
    /// gives the revision of each watch's last expected event, 0 if none) and a progress
    /// answer (`watch_id = -1`) at or above `final_revision` arrived after those events.
    pub fn caught_up(&self, expected_last: &HashMap<i64, i64>, final_revision: i64) -> bool {
        let log = self.log.lock().expect("recording lock");
        let mut last_seen: HashMap<i64, i64> = HashMap::new();
        let mut all_seen_at = None;
        for (index, response) in log.iter().enumerate() {
            if let Some(event) = response.events.last() {
                let seen = last_seen.entry(response.watch_id).or_default();
                *seen = (*seen).max(event.revision());
            }
            if all_seen_at.is_none()
                && self.watches.iter().all(|(id, _)| {
                    last_seen.get(id).copied().unwrap_or(0)
                        >= expected_last.get(id).copied().unwrap_or(0)
                })
            {
                all_seen_at = Some(index);
            }
            if let Some(at) = all_seen_at {
                if index >= at
                    && response.is_stream_progress()
                    && response.header_revision >= final_revision
                {
                    return true;
                }
            }
        }
        false
    }

    /// Stops the recording task (bounded) and returns everything recorded.
    pub async fn finish(self) -> Result<Vec<Resp>, String> {
        let _ = self.commands.send(RecorderCommand::Finish);
        let outcome = match tokio::time::timeout(WATCH_TIMEOUT, self.task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => Err(format!("the recording task failed: {error}")),
            Err(_) => Err(format!(
                "the recording task did not stop within {WATCH_TIMEOUT:?}"
            )),
        };
        let log = self.log.lock().expect("recording lock").clone();
        outcome.map(|()| log)
    }
}

async fn record(
    stream: WatchStream,
    mut commands: mpsc::UnboundedReceiver<RecorderCommand>,
    log: Recording,
    behaviour: StreamBehaviour,
) -> Result<(), String> {
    let (mut sender, mut receiver) = stream.split();
    let far = Duration::from_secs(3600);
    let mut progress = tokio::time::interval(behaviour.progress_every.unwrap_or(far));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut periodic_progress = behaviour.progress_every.is_some();
    let mut pause = behaviour.read_pause;
    let mut phase_ends = tokio::time::Instant::now() + pause.map_or(far, |(read, _)| read);
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                None | Some(RecorderCommand::Finish) => return Ok(()),
                Some(RecorderCommand::Watch(id, spec)) => {
                    sender.watch(spec.key.clone(), Some(spec.options(id))).await
                        .map_err(|error| format!("create watch {id}: {error}"))?;
                }
                Some(RecorderCommand::RequestProgress) => {
                    sender.request_progress().await
                        .map_err(|error| format!("progress request: {error}"))?;
                }
                Some(RecorderCommand::CatchUp) => {
                    pause = None;
                    reading = true;
                    periodic_progress = false;
                }
            },
            _ = tokio::time::sleep_until(phase_ends), if pause.is_some() => {
                let (read, paused) = pause.expect("checked by the branch condition");
                reading = !reading;
                phase_ends = tokio::time::Instant::now() + if reading { read } else { paused };
            }
            _ = progress.tick(), if periodic_progress => {
                sender.request_progress().await
                    .map_err(|error| format!("progress request: {error}"))?;
            }
            message = receiver.message(), if reading => match message {
                Ok(Some(response)) => log.lock().expect("recording lock").push(Resp::of(&response)),
                Ok(None) => return Err("the server ended the watch stream".into()),
                Err(error) => return Err(format!("the watch stream failed: {error}")),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------

/// Which properties [`check_stream`] enforces.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Progress revisions are safe resume points: no event at or below a progress revision
    /// arrives after that progress notification.
    pub progress_safety: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            progress_safety: true,
        }
    }
}

/// What one watch of a recorded stream received, once checked.
#[derive(Clone, Debug)]
pub struct WatchView {
    pub watch_id: i64,
    pub spec: WatchSpec,
    /// The revision the watch starts at (its start revision, or created revision + 1).
    pub from: i64,
    pub events: Vec<Ev>,
    /// Revisions of progress notifications that applied to this watch.
    pub progress: Vec<i64>,
}

/// Violations of one property, keyed by property name, each a list of messages.
#[derive(Debug, Default)]
pub struct Violations(pub BTreeMap<&'static str, Vec<String>>);

impl Violations {
    pub fn add(&mut self, property: &'static str, message: String) {
        self.0.entry(property).or_default().push(message);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn count(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    pub fn merge(&mut self, other: Violations) {
        for (property, messages) in other.0 {
            self.0.entry(property).or_default().extend(messages);
        }
    }

    /// Up to `per_property` messages of each property.
    pub fn report(&self, per_property: usize) -> String {
        let mut text = String::new();
        for (property, messages) in &self.0 {
            text.push_str(&format!("{property}: {} violation(s)\n", messages.len()));
            for message in messages.iter().take(per_property) {
                text.push_str(&format!("  - {message}\n"));
            }
        }
        text
    }
}

/// Checks one recorded stream against the history up to `final_revision`.
///
/// For each watch: exactly one `created`, before any of its events; responses reassembled
/// from fragments; inside a response revisions never decrease, across responses they
/// strictly increase (so a revision is never split); `header.revision` is at least the
/// revision of the response's events; the events equal, one for one, the history's events in
/// the watch's range from its start (no gap, no duplicate, every event of a revision,
/// `prev_kv` equal to the pair at `mod_revision - 1` and absent for creates). For the stream:
/// no event at or below a progress revision arrives after the progress notification.
pub fn check_stream(
    name: &str,
    watches: &[(i64, WatchSpec)],
    log: &[Resp],
    history: &History,
    final_revision: i64,
    options: CheckOptions,
) -> (Violations, Vec<WatchView>) {
    let mut violations = Violations::default();
    let mut views = Vec::new();
    let spec_of: HashMap<i64, &WatchSpec> = watches.iter().map(|(id, spec)| (*id, spec)).collect();

    // Created answers, and where each watch was created in the log.
    let mut created_at: HashMap<i64, (usize, i64)> = HashMap::new();
    for (index, response) in log.iter().enumerate() {
        if response.created {
            if response.canceled {
                violations.add(
                    "created",
                    format!("{name}: a create was refused: {response}"),
                );
                continue;
            }
            if created_at
                .insert(response.watch_id, (index, response.header_revision))
                .is_some()
            {
                violations.add(
                    "created",
                    format!("{name}: watch {} created twice", response.watch_id),
                );
            }
            if !spec_of.contains_key(&response.watch_id) {
                violations.add(
                    "created",
                    format!("{name}: created an unknown watch {}", response.watch_id),
                );
            }
        }
    }
    for (id, _) in watches {
        if !created_at.contains_key(id) {
            violations.add("created", format!("{name}: watch {id} was never created"));
        }
    }

    // Progress safety over the whole stream, in delivery order. A stream progress answer
    // covers the watches created before it; a watch's own notification covers that watch.
    let mut stream_progress: Vec<(usize, i64)> = Vec::new();
    let mut watch_progress: HashMap<i64, i64> = HashMap::new();
    let mut progress_per_watch: HashMap<i64, Vec<i64>> = HashMap::new();
    for (index, response) in log.iter().enumerate() {
        if response.is_progress() {
            if response.header_revision > final_revision {
                violations.add(
                    "progress",
                    format!(
                        "{name}: progress revision {} is beyond the store's final revision {final_revision}",
                        response.header_revision
                    ),
                );
            }
            if response.watch_id == -1 {
                stream_progress.push((index, response.header_revision));
                for (id, (created, _)) in &created_at {
                    if *created < index {
                        progress_per_watch
                            .entry(*id)
                            .or_default()
                            .push(response.header_revision);
                    }
                }
            } else {
                let entry = watch_progress.entry(response.watch_id).or_default();
                *entry = (*entry).max(response.header_revision);
                progress_per_watch
                    .entry(response.watch_id)
                    .or_default()
                    .push(response.header_revision);
            }
            continue;
        }
        let Some(first) = response.events.first() else {
            continue;
        };
        let created = created_at
            .get(&response.watch_id)
            .map_or(usize::MAX, |c| c.0);
        let stream_bound = stream_progress
            .iter()
            .filter(|(at, _)| *at > created)
            .map(|(_, revision)| *revision)
            .max()
            .unwrap_or(0);
        let bound = stream_bound.max(watch_progress.get(&response.watch_id).copied().unwrap_or(0));
        if first.revision() <= bound {
            violations.add(
                "progress-safe",
                format!(
                    "{name}: watch {} received an event at revision {} after a progress notification at revision {bound}: {first}",
                    response.watch_id,
                    first.revision()
                ),
            );
        }
    }

    for (id, spec) in watches {
        let Some(&(created_index, created_revision)) = created_at.get(id) else {
            continue;
        };
        let from = if spec.start_revision != 0 {
            spec.start_revision
        } else {
            created_revision + 1
        };
        // Reassemble fragments, then check the order of whole responses.
        let mut whole: Vec<Resp> = Vec::new();
        let mut pending: Option<Resp> = None;
        for (index, response) in log.iter().enumerate() {
            if response.watch_id != *id || response.events.is_empty() {
                if response.watch_id == *id && response.canceled {
                    violations.add(
                        "canceled",
                        format!("{name}: watch {id} was canceled: {response}"),
                    );
                }
                continue;
            }
            if index < created_index {
                violations.add(
                    "created",
                    format!(
                        "{name}: watch {id} received events before its created answer: {response}"
                    ),
                );
            }
            if response.fragment && !spec.fragment {
                violations.add(
                    "fragment",
                    format!("{name}: watch {id} did not ask for fragments: {response}"),
                );
            }
            match pending.as_mut() {
                Some(part) => {
                    if part.header_revision != response.header_revision {
                        violations.add(
                            "fragment",
                            format!(
                                "{name}: watch {id}: fragments of one response disagree on the header revision ({} then {})",
                                part.header_revision, response.header_revision
                            ),
                        );
                    }
                    part.events.extend(response.events.iter().cloned());
                    part.fragment = response.fragment;
                }
                None => pending = Some(response.clone()),
            }
            if !response.fragment {
                whole.push(pending.take().expect("a pending response"));
            }
        }
        if let Some(part) = pending {
            violations.add(
                "fragment",
                format!("{name}: watch {id}: the last response is an unfinished fragment"),
            );
            whole.push(part);
        }
        let mut previous_last = 0;
        for response in &whole {
            let revisions: Vec<i64> = response.events.iter().map(Ev::revision).collect();
            if revisions.windows(2).any(|pair| pair[1] < pair[0]) {
                violations.add(
                    "ordered",
                    format!("{name}: watch {id}: revisions go backwards inside a response: {revisions:?}"),
                );
            }
            let first = revisions[0];
            let last = *revisions.iter().max().expect("non-empty");
            if first <= previous_last {
                violations.add(
                    "ordered",
                    format!(
                        "{name}: watch {id}: a response starts at revision {first} after one that reached {previous_last} (reordered, duplicated or split revision)"
                    ),
                );
            }
            if response.header_revision < last {
                violations.add(
                    "header",
                    format!(
                        "{name}: watch {id}: header revision {} is below the revision {last} of its events",
                        response.header_revision
                    ),
                );
            }
            previous_last = previous_last.max(last);
        }
        let received: Vec<Ev> = whole
            .iter()
            .flat_map(|r| r.events.iter().cloned())
            .collect();
        let expected = history.expected(spec, from, final_revision);
        compare_events(
            &mut violations,
            &format!("{name}: watch {id} ({spec})"),
            &expected,
            &received,
        );
        views.push(WatchView {
            watch_id: *id,
            spec: (*spec).clone(),
            from,
            events: received,
            progress: progress_per_watch.remove(id).unwrap_or_default(),
        });
    }
    if !options.progress_safety {
        violations.0.remove("progress-safe");
    }
    (violations, views)
}

/// Compares received events with expected ones and names each kind of difference.
pub fn compare_events(violations: &mut Violations, who: &str, expected: &[Ev], received: &[Ev]) {
    if expected == received {
        return;
    }
    let mut counts: HashMap<(i64, Vec<u8>), usize> = HashMap::new();
    for event in received {
        *counts.entry(event.id()).or_default() += 1;
    }
    for (id, count) in &counts {
        if *count > 1 {
            violations.add(
                "unique",
                format!(
                    "{who}: event ({}, {}) received {count} times",
                    id.0,
                    bytes_text(&id.1)
                ),
            );
        }
    }
    let expected_by_id: HashMap<(i64, Vec<u8>), &Ev> =
        expected.iter().map(|e| (e.id(), e)).collect();
    let received_by_id: HashMap<(i64, Vec<u8>), &Ev> =
        received.iter().map(|e| (e.id(), e)).collect();
    // Missing events, grouped by revision: a revision partly delivered breaks atomicity, a
    // revision not delivered at all is a gap.
    let mut missing_by_revision: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
    for event in expected {
        let entry = missing_by_revision.entry(event.revision()).or_default();
        entry.1 += 1;
        if !received_by_id.contains_key(&event.id()) {
            entry.0 += 1;
        }
    }
    for (revision, (missing, total)) in missing_by_revision {
        if missing == 0 {
            continue;
        }
        if missing < total {
            violations.add(
                "atomic",
                format!("{who}: revision {revision} delivered partly: {missing} of {total} events missing"),
            );
        } else {
            violations.add(
                "gap-free",
                format!("{who}: revision {revision} missing ({total} events)"),
            );
        }
    }
    for event in received {
        match expected_by_id.get(&event.id()) {
            None => violations.add("no-extra", format!("{who}: unexpected event {event}")),
            Some(want) if event.prev != want.prev => violations.add(
                "prev_kv",
                format!(
                    "{who}: at revision {} key {}: prev_kv {:?}, expected {:?}",
                    event.revision(),
                    bytes_text(event.key()),
                    event.prev.as_ref().map(ToString::to_string),
                    want.prev.as_ref().map(ToString::to_string)
                ),
            ),
            Some(want) if event.without_prev() != want.without_prev() => {
                violations.add("event", format!("{who}: received {event}, expected {want}"))
            }
            Some(_) => {}
        }
    }
    // Same events, different order.
    let expected_ids: Vec<_> = expected.iter().map(Ev::id).collect();
    let received_ids: Vec<_> = received.iter().map(Ev::id).collect();
    if counts.values().all(|c| *c == 1)
        && received.len() == expected.len()
        && expected_ids != received_ids
    {
        let at = expected_ids
            .iter()
            .zip(&received_ids)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        violations.add(
            "ordered",
            format!(
                "{who}: event {at} is ({}, {}), expected ({}, {})",
                received_ids[at].0,
                bytes_text(&received_ids[at].1),
                expected_ids[at].0,
                bytes_text(&expected_ids[at].1)
            ),
        );
    }
}

/// Resumability: for each of `revisions`, a new watch of the same spec from that revision
/// must deliver exactly the suffix of `view.events` at or after it.
/// Runs the watches concurrently, each bounded by [`WATCH_TIMEOUT`].
pub async fn check_resumable(
    client: &Client,
    who: &str,
    view: &WatchView,
    revisions: &[i64],
) -> Violations {
    let mut tasks = tokio::task::JoinSet::new();
    for &revision in revisions {
        let suffix: Vec<Ev> = view
            .events
            .iter()
            .filter(|event| event.revision() >= revision)
            .cloned()
            .collect();
        let Some(last) = suffix.last().map(Ev::revision) else {
            continue;
        };
        let spec = WatchSpec {
            start_revision: revision,
            progress_notify: false,
            ..view.spec.clone()
        };
        let mut client = client.clone();
        let who = format!("{who} resumed from {revision}");
        tasks.spawn(async move {
            let mut violations = Violations::default();
            let mut stream = open_watch(&mut client, spec.key.clone(), spec.options(1)).await;
            let mut received = Vec::new();
            let deadline = Instant::now() + WATCH_TIMEOUT;
            while received.last().is_none_or(|e: &Ev| e.revision() < last) {
                let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                    violations.add(
                        "resumable",
                        format!(
                            "{who}: only {} of {} events within {WATCH_TIMEOUT:?}",
                            received.len(),
                            suffix.len()
                        ),
                    );
                    break;
                };
                match tokio::time::timeout(remaining, stream.message()).await {
                    Ok(Ok(Some(response))) => {
                        let response = Resp::of(&response);
                        if response.canceled {
                            violations.add("resumable", format!("{who}: canceled: {response}"));
                            break;
                        }
                        received.extend(response.events);
                    }
                    Ok(Ok(None)) => {
                        violations.add("resumable", format!("{who}: the stream ended"));
                        break;
                    }
                    Ok(Err(error)) => {
                        violations.add("resumable", format!("{who}: the stream failed: {error}"));
                        break;
                    }
                    Err(_) => continue,
                }
            }
            if received != suffix {
                let mut detail = Violations::default();
                compare_events(&mut detail, &who, &suffix, &received);
                let details: Vec<String> = detail.0.into_values().flatten().take(3).collect();
                violations.add(
                    "resumable",
                    format!(
                        "{who}: {} events differ from the {} the watcher saw from there: {}",
                        received.len(),
                        suffix.len(),
                        details.join("; ")
                    ),
                );
            }
            violations
        });
    }
    let mut all = Violations::default();
    while let Some(result) = tasks.join_next().await {
        all.merge(result.expect("a resume check panicked"));
    }
    all
}

/// Up to `count` revisions spread over the events a watch saw, plus the revision after each
/// of its first progress notifications: the resume points [`check_resumable`] tries.
pub fn resume_points(view: &WatchView, count: usize) -> Vec<i64> {
    let mut points = Vec::new();
    let n = view.events.len();
    if n > 0 {
        let count = count.max(2);
        for step in 0..count {
            points.push(view.events[step * (n - 1) / (count - 1)].revision());
        }
    }
    // A watch that starts in the future may hear of progress below its start; resuming it
    // from there would ask for events it never watched.
    for progress in view.progress.iter().take(2) {
        points.push((progress + 1).max(view.from));
    }
    points.sort_unstable();
    points.dedup();
    points
}

// ---------------------------------------------------------------------------------------
// Process memory
// ---------------------------------------------------------------------------------------

/// `(VmRSS, RssAnon)` of a process in bytes, from `/proc/<pid>/status`.
pub fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}
