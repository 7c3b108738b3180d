//! gRPC server metrics as go-grpc-prometheus names them (`grpc_server_*`), with every method's
//! series created at start, and etcd's client byte counters.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use super::METRICS;

/// Every etcd gRPC method with its streaming type.
pub const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Maintenance", "Downgrade", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
];

/// gRPC codes as Go spells them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

pub struct GrpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    handling_seconds: HistogramVec,
    msg_received: IntCounterVec,
    msg_sent: IntCounterVec,
    extensive: AtomicBool,
    known: OnceLock<KnownMethods>,
}

const LABELS: [&str; 3] = ["grpc_type", "grpc_service", "grpc_method"];

impl GrpcMetrics {
    pub(super) fn register(registry: &Registry) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(v.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            v
        };
        let handling_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            ),
            &LABELS,
        )
        .unwrap_or_else(|e| panic!("grpc histogram: {e}"));
        Self {
            started: vec(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &LABELS,
            ),
            handled: vec(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            ),
            msg_received: vec(
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &LABELS,
            ),
            msg_sent: vec(
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &LABELS,
            ),
            handling_seconds,
            extensive: AtomicBool::new(false),
            known: OnceLock::new(),
        }
    }

    /// `--metrics extensive` adds the handling-time histogram, as in etcd.
    pub fn enable_extensive(&self, registry: &Registry) {
        if !self.extensive.swap(true, Ordering::SeqCst) {
            if let Err(e) = registry.register(Box::new(self.handling_seconds.clone())) {
                tracing::warn!(error = %e, "cannot register the gRPC handling histogram");
            }
        }
    }

    /// Creates every method's series at zero, so dashboards see them before the first call.
    pub fn preinitialize(&self) {
        known_methods(self);
    }
}

/// Which series a call belongs to.
#[derive(Clone)]
struct CallLabels {
    kind: &'static str,
    service: String,
    method: String,
}

impl CallLabels {
    fn of_path(path: &str) -> Option<Self> {
        let (service, method) = path.trim_start_matches('/').split_once('/')?;
        let kind = METHODS
            .iter()
            .find(|(s, m, _)| *s == service && *m == method)
            .map_or("unary", |(_, _, k)| *k);
        Some(Self {
            kind,
            service: service.to_string(),
            method: method.to_string(),
        })
    }

    fn values(&self) -> [&str; 3] {
        [self.kind, &self.service, &self.method]
    }

    /// etcd_server_client_requests_total's `type`: etcd's interceptors say unary or stream.
    fn request_type(&self) -> &'static str {
        if self.kind == "unary" {
            "unary"
        } else {
            "stream"
        }
    }
}

/// One method's series, looked up once: a call then only adds to counters it holds, instead of
/// hashing its labels into each metric family five times (a put's profile showed the lookups).
struct MethodSeries {
    labels: CallLabels,
    started: IntCounter,
    msg_received: IntCounter,
    msg_sent: IntCounter,
    /// By gRPC code number (`CODES`), created at zero for etcd's methods (`METHODS`), as
    /// go-grpc-prometheus does; `None` for any other method, whose series appears with the first
    /// call that ends with its code.
    handled: Option<Vec<IntCounter>>,
    handling_seconds: Histogram,
}

impl MethodSeries {
    fn resolve(metrics: &GrpcMetrics, labels: CallLabels, every_code: bool) -> Self {
        let values = labels.values();
        let [kind, service, method] = values;
        Self {
            started: metrics.started.with_label_values(&values),
            msg_received: metrics.msg_received.with_label_values(&values),
            msg_sent: metrics.msg_sent.with_label_values(&values),
            handled: every_code.then(|| {
                CODES
                    .iter()
                    .map(|code| {
                        metrics
                            .handled
                            .with_label_values(&[kind, service, method, code])
                    })
                    .collect()
            }),
            handling_seconds: metrics.handling_seconds.with_label_values(&values),
            labels,
        }
    }
}

/// The series of every method in `METHODS`, by gRPC path (`/etcdserverpb.KV/Put`).
type KnownMethods = HashMap<String, Arc<MethodSeries>>;

fn known_methods(metrics: &GrpcMetrics) -> &KnownMethods {
    metrics.known.get_or_init(|| {
        METHODS
            .iter()
            .map(|(service, method, kind)| {
                let labels = CallLabels {
                    kind,
                    service: service.to_string(),
                    method: method.to_string(),
                };
                (
                    format!("/{service}/{method}"),
                    Arc::new(MethodSeries::resolve(metrics, labels, true)),
                )
            })
            .collect()
    })
}

/// The series a call on `path` counts in: resolved once for etcd's methods; for any other path
/// (Lock, Election, health, unknown methods) looked up on each call, as they are rare.
fn series_of(path: &str) -> Option<Arc<MethodSeries>> {
    let metrics = &METRICS.grpc;
    if let Some(series) = known_methods(metrics).get(path) {
        return Some(series.clone());
    }
    let labels = CallLabels::of_path(path)?;
    Some(Arc::new(MethodSeries::resolve(metrics, labels, false)))
}

/// The client-api-version metadata that etcd's Go client sends, as etcd labels requests by it.
/// Only short version-like values become labels, so that clients cannot grow the label set
/// without bound.
fn client_api_version<B>(request: &Request<B>) -> &str {
    request
        .headers()
        .get("client-api-version")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 8 && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        })
        .unwrap_or("unknown")
}

/// Records a call once: when its status is known, or as `Canceled` if the stream is dropped.
struct CallRecord {
    series: Arc<MethodSeries>,
    started: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: usize) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        match &self.series.handled {
            Some(handled) => {
                if let Some(counter) = handled.get(code) {
                    counter.inc();
                }
            }
            None => {
                let [kind, service, method] = self.series.labels.values();
                let code = CODES.get(code).copied().unwrap_or("Unknown");
                METRICS
                    .grpc
                    .handled
                    .with_label_values(&[kind, service, method, code])
                    .inc();
            }
        }
        if METRICS.grpc.extensive.load(Ordering::Relaxed) {
            self.series
                .handling_seconds
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(CODE_CANCELED);
    }
}

const CODE_OK: usize = 0;
const CODE_CANCELED: usize = 1;
const CODE_UNKNOWN: usize = 2;

/// The gRPC code number of a `grpc-status` value; anything unknown counts as `Unknown`.
fn code_number(status: &str) -> usize {
    status
        .parse::<usize>()
        .ok()
        .filter(|code| *code < CODES.len())
        .unwrap_or(CODE_UNKNOWN)
}

fn status_in(headers: &HeaderMap) -> Option<usize> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(code_number)
}

/// The metrics of one gRPC call, as go-grpc-prometheus and etcd's interceptors count it:
/// started and client requests when it begins, each message and its bytes both ways, and the
/// call's code (with its duration under `--metrics extensive`) when it ends.
pub struct GrpcCall {
    series: Arc<MethodSeries>,
    started: Instant,
}

impl GrpcCall {
    /// Counts the start of the call `request` makes and wraps its body to count each message
    /// received. `None` (and the request untouched) when the path names no gRPC method.
    pub fn start(request: Request<Body>) -> (Option<GrpcCall>, Request<Body>) {
        let Some(series) = series_of(request.uri().path()) else {
            return (None, request);
        };
        series.started.inc();
        METRICS
            .client_requests
            .with_label_values(&[series.labels.request_type(), client_api_version(&request)])
            .inc();
        let received = series.msg_received.clone();
        let request = request.map(|body| {
            Body::new(Counted {
                inner: body,
                messages: received,
                bytes: METRICS.client_grpc_received_bytes.clone(),
                record: None,
            })
        });
        let call = GrpcCall {
            series,
            started: Instant::now(),
        };
        (Some(call), request)
    }

    /// Records the call's code if the answer already carries it (a trailers-only answer), and
    /// wraps the answer's body to count each message sent and the code in its trailers.
    pub fn answered(self, response: Response<Body>) -> Response<Body> {
        let mut record = CallRecord {
            series: self.series,
            started: self.started,
            done: false,
        };
        if let Some(code) = status_in(response.headers()) {
            record.finish(code);
        }
        let sent = record.series.msg_sent.clone();
        response.map(|body| {
            Body::new(Counted {
                inner: body,
                messages: sent,
                bytes: METRICS.client_grpc_sent_bytes.clone(),
                record: Some(record),
            })
        })
    }
}

/// A body that counts its data and, for responses, records the call's status from trailers.
struct Counted {
    inner: Body,
    messages: IntCounter,
    bytes: IntCounter,
    record: Option<CallRecord>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.inc_by(data.len() as u64);
                    self.messages.inc();
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = status_in(trailers).unwrap_or(CODE_OK);
                    if let Some(record) = self.record.as_mut() {
                        record.finish(code);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(record) = self.record.as_mut() {
                    record.finish(CODE_OK);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(record) = self.record.as_mut() {
                    record.finish(CODE_UNKNOWN);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
