//! Lease helpers shared by the `lease_*` suites: server options with a short minimum TTL,
//! bounded polling, watch collection, a raw multi-lease keep-alive stream, and etcdctl
//! processes that run until killed (`etcdctl lease keep-alive`).

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, WatchOptions, WatchStream,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::etcdctl::etcdctl_binary;
use crate::json::bytes_text;
use crate::server::{inherited_env_names, Server, ServerOptions};

/// `--heartbeat-interval 10 --election-timeout 100`: etcd's minimum lease TTL is
/// ceil(1.5 × election timeout) = 1 s instead of 2 s with the defaults, so expiry tests can use
/// short TTLs. A single member never loses its leadership, so short timeouts are harmless.
pub const FAST_ELECTION_ARGS: [&str; 4] =
    ["--heartbeat-interval", "10", "--election-timeout", "100"];
/// The minimum TTL under [`FAST_ELECTION_ARGS`].
pub const FAST_MIN_TTL: i64 = 1;
/// The minimum TTL under etcd's default timings (heartbeat 100 ms, election 1000 ms).
pub const DEFAULT_MIN_TTL: i64 = 2;

/// etcd's lease errors that `grpc::messages` does not list (`api/v3rpc/rpctypes/error.go`).
pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How often [`poll_until`] probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The server chosen by `COMPAT_SERVER`, with [`FAST_ELECTION_ARGS`].
pub fn fast_options() -> ServerOptions {
    ServerOptions::from_env().args(FAST_ELECTION_ARGS)
}

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns that value;
/// panics with `what` once `timeout` has passed.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Grants a lease (ID 0: the server picks) and returns its ID.
pub async fn grant(client: &mut Client, ttl: i64) -> i64 {
    client
        .lease_grant(ttl, None)
        .await
        .unwrap_or_else(|error| panic!("grant a lease with TTL {ttl}: {error}"))
        .id()
}

/// Grants a lease with a chosen ID.
pub async fn grant_id(client: &mut Client, ttl: i64, id: i64) -> i64 {
    client
        .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id)))
        .await
        .unwrap_or_else(|error| panic!("grant lease {id} with TTL {ttl}: {error}"))
        .id()
}

/// What LeaseTimeToLive says about a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeToLive {
    /// Remaining seconds; -1 for a lease that does not exist.
    pub ttl: i64,
    pub granted_ttl: i64,
    /// Attached keys as [`bytes_text`], sorted (etcd lists them in map order).
    pub keys: Vec<String>,
}

pub async fn time_to_live(client: &mut Client, id: i64, with_keys: bool) -> TimeToLive {
    let options = with_keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
    let response = client
        .lease_time_to_live(id, options)
        .await
        .unwrap_or_else(|error| panic!("LeaseTimeToLive {id}: {error}"));
    assert!(
        response.header().is_some(),
        "LeaseTimeToLive carries a header"
    );
    assert_eq!(
        response.id(),
        id,
        "LeaseTimeToLive answers with the asked ID"
    );
    let mut keys: Vec<String> = response.keys().iter().map(|k| bytes_text(k)).collect();
    keys.sort();
    TimeToLive {
        ttl: response.ttl(),
        granted_ttl: response.granted_ttl(),
        keys,
    }
}

/// Whether the lease still exists (TimeToLive is not -1).
pub async fn lease_exists(client: &mut Client, id: i64) -> bool {
    time_to_live(client, id, false).await.ttl != -1
}

/// The IDs LeaseLeases lists, sorted.
pub async fn lease_ids(client: &mut Client) -> Vec<i64> {
    let response = client.leases().await.expect("LeaseLeases");
    assert!(response.header().is_some(), "LeaseLeases carries a header");
    let mut ids: Vec<i64> = response.leases().iter().map(|l| l.id()).collect();
    ids.sort_unstable();
    ids
}

/// Whether `key` exists.
pub async fn key_exists(client: &mut Client, key: &str) -> bool {
    !client
        .get(key, None)
        .await
        .unwrap_or_else(|error| panic!("get {key}: {error}"))
        .kvs()
        .is_empty()
}

// ---------------------------------------------------------------------------------------
// Watching
// ---------------------------------------------------------------------------------------

/// Starts a watch and waits for its `created` answer, so that every later change is seen.
pub async fn watch_created(client: &mut Client, key: &str, options: WatchOptions) -> WatchStream {
    let mut stream = client
        .watch(key, Some(options))
        .await
        .unwrap_or_else(|error| panic!("watch {key}: {error}"));
    let created = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap_or_else(|_| panic!("no `created` answer to the watch on {key} within 10 s"))
        .unwrap_or_else(|error| panic!("watch {key}: {error}"))
        .unwrap_or_else(|| panic!("the watch stream on {key} closed before `created`"));
    assert!(
        created.created(),
        "the first answer to a watch is `created`"
    );
    stream
}

/// One DELETE event as seen by a watcher, with when it arrived.
#[derive(Clone, Debug)]
pub struct SeenDelete {
    pub key: String,
    pub mod_revision: i64,
    /// `(key, value, create_revision, mod_revision, version, lease)` of prev_kv, if sent.
    pub prev: Option<(String, String, i64, i64, i64, i64)>,
    /// Index of the watch response that carried it.
    pub response: usize,
    /// Revision in that response's header.
    pub header_revision: i64,
    pub at: Instant,
    /// Fields of the deleted kv other than key and mod_revision (etcd leaves them zero).
    pub other_fields: (i64, i64, i64, usize),
}

/// Reads watch responses until `count` DELETE events arrived (PUT events panic: callers watch
/// prefixes nobody else writes), bounded by `timeout`.
pub async fn collect_deletes(
    stream: &mut WatchStream,
    count: usize,
    timeout: Duration,
) -> Vec<SeenDelete> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::with_capacity(count);
    let mut responses = 0;
    while seen.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {count} DELETE events arrived within {timeout:?}",
                    seen.len()
                )
            })
            .unwrap_or_else(|error| panic!("watch stream failed: {error}"))
            .unwrap_or_else(|| panic!("watch stream closed after {} DELETE events", seen.len()));
        let at = Instant::now();
        assert!(
            !message.canceled(),
            "watch canceled: {}",
            message.cancel_reason()
        );
        let header_revision = message.header().map(|h| h.revision()).unwrap_or(-1);
        for event in message.events() {
            let kv = event.kv().expect("every event carries a kv");
            assert_eq!(
                event.event_type(),
                EventType::Delete,
                "unexpected event on {}",
                bytes_text(kv.key())
            );
            seen.push(SeenDelete {
                key: bytes_text(kv.key()),
                mod_revision: kv.mod_revision(),
                prev: event.prev_kv().map(|p| {
                    (
                        bytes_text(p.key()),
                        bytes_text(p.value()),
                        p.create_revision(),
                        p.mod_revision(),
                        p.version(),
                        p.lease(),
                    )
                }),
                response: responses,
                header_revision,
                at,
                other_fields: (
                    kv.create_revision(),
                    kv.version(),
                    kv.lease(),
                    kv.value().len(),
                ),
            });
        }
        if !message.events().is_empty() {
            responses += 1;
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------
// A raw LeaseKeepAlive stream carrying many lease IDs
// ---------------------------------------------------------------------------------------

/// One LeaseKeepAliveResponse, decoded by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepAliveAnswer {
    pub id: i64,
    pub ttl: i64,
    /// `header.revision`, or `None` when the answer has no header.
    pub header_revision: Option<i64>,
    pub header_member_id: Option<u64>,
}

/// Sends one LeaseKeepAliveRequest per ID, in order, on ONE LeaseKeepAlive stream, then closes
/// the sending side and returns every answer the server sent before ending the stream.
///
/// etcd-client's `LeaseKeeper` only ever sends its own lease's ID, and the crate does not
/// expose the generated stubs; compat-tests has no protobuf dependency of its own. So the
/// request body is written by hand, as a `String` (the only body type nameable here without
/// more dependencies): that limits the IDs to 0..128, whose varints are single ASCII bytes.
pub async fn raw_keep_alive(server: &Server, ids: &[i64]) -> Vec<KeepAliveAnswer> {
    use tonic::codegen::{http, Body, Service};

    let mut frames = Vec::new();
    for &id in ids {
        let mut message = Vec::new();
        if id != 0 {
            message.push(0x08); // field 1 (ID), varint
            put_varint(&mut message, id as u64);
        }
        frames.push(0u8); // not compressed
        frames.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frames.extend_from_slice(&message);
    }
    let body = String::from_utf8(frames)
        .unwrap_or_else(|_| panic!("raw_keep_alive carries only IDs below 128, not {ids:?}"));

    let io = async {
        let mut channel = tonic::transport::Channel::from_shared(server.client_url())
            .expect("a valid client URL")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|error| panic!("connect to {}: {error}", server.endpoint()));
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .expect("channel ready");
        let request = http::Request::builder()
            .method("POST")
            .uri("/etcdserverpb.Lease/LeaseKeepAlive")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(body))
            .expect("a valid request");
        let response = channel
            .call(request)
            .await
            .unwrap_or_else(|error| panic!("LeaseKeepAlive call: {error}"));
        let (head, mut body) = response.into_parts();
        assert_eq!(head.status, 200, "HTTP status of LeaseKeepAlive");
        let mut data = Vec::new();
        let mut status = head
            .headers
            .get("grpc-status")
            .map(|value| value.to_str().unwrap_or("?").to_string());
        let mut message = head
            .headers
            .get("grpc-message")
            .map(|value| value.to_str().unwrap_or("?").to_string());
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.unwrap_or_else(|error| panic!("LeaseKeepAlive body: {error}"));
            match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        status = trailers
                            .get("grpc-status")
                            .map(|v| v.to_str().unwrap_or("?").to_string());
                        message = trailers
                            .get("grpc-message")
                            .map(|v| v.to_str().unwrap_or("?").to_string());
                    }
                }
            }
        }
        (data, status, message.map(|m| percent_decode(&m)))
    };
    let (data, status, message) = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .expect("the raw LeaseKeepAlive stream did not end within 30 s of closing its side");
    let answers = decode_keep_alive_answers(&data);
    assert_eq!(
        status.as_deref(),
        Some("0"),
        "LeaseKeepAlive of {ids:?} ended with grpc-status {status:?}, grpc-message {message:?}, \
         after {} answers: {answers:?}",
        answers.len()
    );
    answers
}

/// grpc-message is percent-encoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], text.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).expect("truncated varint");
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return value;
        }
    }
    panic!("varint longer than 10 bytes");
}

/// `(field number, varint value or bytes)` of a protobuf message.
fn fields(message: &[u8]) -> Vec<(u64, Result<u64, &[u8]>)> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < message.len() {
        let key = read_varint(message, &mut pos);
        match key & 7 {
            0 => out.push((key >> 3, Ok(read_varint(message, &mut pos)))),
            2 => {
                let len = read_varint(message, &mut pos) as usize;
                let bytes = message.get(pos..pos + len).expect("truncated field");
                pos += len;
                out.push((key >> 3, Err(bytes)));
            }
            1 => pos += 8,
            5 => pos += 4,
            other => panic!("unexpected wire type {other} in a LeaseKeepAliveResponse"),
        }
    }
    out
}

fn decode_keep_alive_answers(mut data: &[u8]) -> Vec<KeepAliveAnswer> {
    let mut answers = Vec::new();
    while !data.is_empty() {
        assert!(data.len() >= 5, "truncated gRPC frame");
        assert_eq!(data[0], 0, "compressed gRPC frame");
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        let message = &data[5..5 + len];
        data = &data[5 + len..];
        let mut answer = KeepAliveAnswer {
            id: 0,
            ttl: 0,
            header_revision: None,
            header_member_id: None,
        };
        for (field, value) in fields(message) {
            match (field, value) {
                (1, Err(header)) => {
                    answer.header_revision = Some(0);
                    answer.header_member_id = Some(0);
                    for (field, value) in fields(header) {
                        match (field, value) {
                            (2, Ok(member)) => answer.header_member_id = Some(member),
                            (3, Ok(revision)) => answer.header_revision = Some(revision as i64),
                            _ => {}
                        }
                    }
                }
                (2, Ok(id)) => answer.id = id as i64,
                (3, Ok(ttl)) => answer.ttl = ttl as i64,
                _ => {}
            }
        }
        answers.push(answer);
    }
    answers
}

// ---------------------------------------------------------------------------------------
// etcdctl commands that run until killed
// ---------------------------------------------------------------------------------------

/// A running `etcdctl` whose stdout is read line by line; killed when dropped.
pub struct EtcdctlProcess {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    args: Vec<String>,
}

impl EtcdctlProcess {
    pub fn spawn(server: &Server, args: &[&str]) -> Self {
        let mut command = Command::new(etcdctl_binary());
        for name in inherited_env_names("ETCDCTL_") {
            command.env_remove(name);
        }
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.endpoint()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", etcdctl_binary().display()));
        let stdout = child.stdout.take().expect("etcdctl's stdout is piped");
        EtcdctlProcess {
            child,
            lines: BufReader::new(stdout).lines(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The next line of stdout, or `None` at its end; panics after `timeout`.
    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!("etcdctl {:?} printed no line within {timeout:?}", self.args)
            })
            .expect("read etcdctl's stdout")
    }

    /// Waits for the process to exit on its own and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("etcdctl {:?} did not exit within {timeout:?}", self.args))
            .expect("wait for etcdctl")
            .code()
    }

    pub async fn kill(mut self) {
        // An error means it already exited.
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_answers_decode() {
        // header {cluster_id: 1, member_id: 2, revision: 3}, ID 300, TTL 5
        let message = [
            0x0a, 0x06, 0x08, 0x01, 0x10, 0x02, 0x18, 0x03, 0x10, 0xac, 0x02, 0x18, 0x05,
        ];
        let mut frame = vec![0, 0, 0, 0, message.len() as u8];
        frame.extend_from_slice(&message);
        frame.extend_from_slice(&[0, 0, 0, 0, 2, 0x10, 0x07]);
        assert_eq!(
            decode_keep_alive_answers(&frame),
            vec![
                KeepAliveAnswer {
                    id: 300,
                    ttl: 5,
                    header_revision: Some(3),
                    header_member_id: Some(2)
                },
                KeepAliveAnswer {
                    id: 7,
                    ttl: 0,
                    header_revision: None,
                    header_member_id: None
                },
            ]
        );
    }
}
