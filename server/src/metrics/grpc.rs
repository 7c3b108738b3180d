//! gRPC server metrics as go-grpc-prometheus names them (`grpc_server_*`), with every method's
//! series created at start, and etcd's client byte counters.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tower::{Layer, Service};

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

fn code_name(status: &str) -> &'static str {
    status
        .parse::<usize>()
        .ok()
        .and_then(|i| CODES.get(i).copied())
        .unwrap_or("Unknown")
}

pub struct GrpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    handling_seconds: HistogramVec,
    msg_received: IntCounterVec,
    msg_sent: IntCounterVec,
    extensive: AtomicBool,
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
        for (service, method, kind) in METHODS {
            let labels = [*kind, *service, *method];
            self.started.with_label_values(&labels);
            self.msg_received.with_label_values(&labels);
            self.msg_sent.with_label_values(&labels);
            if self.extensive.load(Ordering::Relaxed) {
                self.handling_seconds.with_label_values(&labels);
            }
            for code in CODES {
                self.handled
                    .with_label_values(&[kind, service, method, code]);
            }
        }
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

/// The `client-api-version` metadata that etcd's Go client sends, as etcd labels requests by it.
/// Only short version-like values become labels, so that clients cannot grow the label set
/// without bound.
fn client_api_version(request: &Request<Body>) -> &str {
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
    labels: CallLabels,
    started: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: &str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let m = &METRICS.grpc;
        let [kind, service, method] = self.labels.values();
        m.handled
            .with_label_values(&[kind, service, method, code])
            .inc();
        if m.extensive.load(Ordering::Relaxed) {
            m.handling_seconds
                .with_label_values(&self.labels.values())
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

fn status_in(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(code_name)
}

#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for GrpcMetricsService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(labels) = CallLabels::of_path(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        METRICS
            .grpc
            .started
            .with_label_values(&labels.values())
            .inc();
        METRICS
            .client_requests
            .with_label_values(&[labels.request_type(), client_api_version(&request)])
            .inc();
        let received = METRICS
            .grpc
            .msg_received
            .with_label_values(&labels.values());
        let request = request.map(|body| {
            Body::new(Counted {
                inner: Box::pin(body),
                on_data: Box::new(move |n| {
                    METRICS.client_grpc_received_bytes.inc_by(n as u64);
                    received.inc();
                }),
                record: None,
            })
        });
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let mut record = CallRecord {
                labels: labels.clone(),
                started,
                done: false,
            };
            if let Some(code) = status_in(response.headers()) {
                record.finish(code);
            }
            let sent = METRICS.grpc.msg_sent.with_label_values(&labels.values());
            Ok(response.map(|body| {
                Body::new(Counted {
                    inner: Box::pin(body),
                    on_data: Box::new(move |n| {
                        METRICS.client_grpc_sent_bytes.inc_by(n as u64);
                        sent.inc();
                    }),
                    record: Some(record),
                })
            }))
        })
    }
}

/// A body that counts its data and, for responses, records the call's status from trailers.
struct Counted {
    inner: Pin<Box<Body>>,
    on_data: Box<dyn Fn(usize) + Send + Sync>,
    record: Option<CallRecord>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    (self.on_data)(data.len());
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = status_in(trailers).unwrap_or("OK");
                    if let Some(record) = self.record.as_mut() {
                        record.finish(code);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(record) = self.record.as_mut() {
                    record.finish("OK");
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(record) = self.record.as_mut() {
                    record.finish("Unknown");
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
