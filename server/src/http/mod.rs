//! HTTP next to gRPC: `/metrics`, `/health`, `/livez`, `/readyz` and `/version`, answering as
//! etcd 3.5 does (kubeadm probes `/livez` and `/readyz`; dashboards scrape `/metrics`); and,
//! on the client URLs, etcd's JSON gateway (`gateway`).

pub mod gateway;

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;

use crate::error::EtcdError;
use crate::member::Member;
use crate::metrics::METRICS;
use crate::proto::etcdserverpb::{AlarmType, RangeRequest};
use crate::version::{ETCD_CLUSTER_VERSION, ETCD_VERSION};

/// The checks of `/livez` and `/readyz`, in the order they are reported.
const LIVEZ_CHECKS: &[&str] = &["serializable_read"];
const READYZ_CHECKS: &[&str] = &["data_corruption", "serializable_read", "linearizable_read"];

pub fn router(member: Arc<Member>) -> Router {
    let mut router = Router::new()
        .route("/metrics", any(metrics))
        .route("/health", any(health))
        .route("/version", any(version))
        .route("/livez", any(livez))
        .route("/readyz", any(readyz));
    for check in LIVEZ_CHECKS {
        let name: &'static str = check;
        router = router.route(
            &format!("/livez/{check}"),
            any(move |state, method| single_check(state, method, "livez", name)),
        );
    }
    for check in READYZ_CHECKS {
        let name: &'static str = check;
        router = router.route(
            &format!("/readyz/{check}"),
            any(move |state, method| single_check(state, method, "readyz", name)),
        );
    }
    router.with_state(member)
}

/// An unknown path on the client or peer URLs: gRPC clients get `Unimplemented` (as grpc-go
/// answers), anyone else Go's `404 page not found` (as etcd's HTTP mux does), never an empty
/// 200.
pub async fn unknown_path(request: axum::extract::Request) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented("")
            .into_http::<axum::body::Body>()
            .into_response();
    }
    let mut response = (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Go's `http.Error`: text/plain, the message and a newline.
fn text_error(status: StatusCode, message: &str) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn method_not_allowed() -> Response {
    let mut response = text_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    response
}

/// Query parameters, repeated ones kept; a bare `verbose` counts as present.
fn query_pairs(query: &Option<String>) -> Vec<(String, String)> {
    query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

async fn metrics(method: Method) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let mut response = METRICS.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn version(method: Method) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    // Field order as etcd's (Go marshals struct fields in declaration order).
    let body =
        format!(r#"{{"etcdserver":"{ETCD_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}"}}"#);
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A read through the whole request path: linearizable unless `serializable`.
async fn read_check(member: &Member, serializable: bool) -> Result<(), String> {
    let request = RangeRequest {
        key: Bytes::from_static(b"health"),
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    member
        .range(None, request)
        .await
        .map(|_| ())
        .map_err(|e: EtcdError| e.to_string())
}

async fn health(
    State(member): State<Arc<Member>>,
    method: Method,
    RawQuery(query): RawQuery,
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let pairs = query_pairs(&query);
    let excluded: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    let serializable = pairs
        .iter()
        .any(|(k, v)| k == "serializable" && v == "true");
    let reason = health_problem(&member, &excluded, serializable).await;
    let body = serde_json::json!({
        "health": if reason.is_none() { "true" } else { "false" },
        "reason": reason.clone().unwrap_or_default(),
    })
    .to_string();
    match reason {
        None => {
            METRICS.health_success.inc();
            let mut response = body.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
        Some(_) => {
            METRICS.health_failures.inc();
            text_error(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

/// etcd's /health checks, in etcd's order: alarms, leader, a read.
async fn health_problem(member: &Member, excluded: &[&str], serializable: bool) -> Option<String> {
    for alarm in member.active_alarms() {
        let name = AlarmType::try_from(alarm.alarm).unwrap_or(AlarmType::None);
        if excluded.contains(&name.as_str_name()) {
            continue;
        }
        return Some(match name {
            AlarmType::Nospace => "ALARM NOSPACE".into(),
            AlarmType::Corrupt => "ALARM CORRUPT".into(),
            AlarmType::None => "ALARM UNKNOWN".into(),
        });
    }
    if !serializable && member.raft_status().leader.is_none() {
        return Some("RAFT NO LEADER".into());
    }
    read_check(member, serializable)
        .await
        .err()
        .map(|e| format!("RANGE ERROR:{e}"))
}

async fn run_check(member: &Member, name: &str) -> Result<(), String> {
    match name {
        "data_corruption" => {
            if member
                .active_alarms()
                .iter()
                .any(|a| a.alarm == AlarmType::Corrupt as i32)
            {
                Err("alarm activated: CORRUPT".into())
            } else {
                Ok(())
            }
        }
        "serializable_read" => read_check(member, true).await,
        "linearizable_read" => read_check(member, false).await,
        other => Err(format!("unknown check {other}")),
    }
}

/// Runs checks the way etcd's livez/readyz do: `[+]name ok` / `[-]name failed: reason` lines,
/// `ok` on success (with the lines only when `verbose`), 503 with the lines on failure.
async fn run_checks(member: &Member, kind: &str, checks: &[&str], verbose: bool) -> Response {
    let mut lines = String::new();
    let mut failed = false;
    for name in checks {
        match run_check(member, name).await {
            Ok(()) => {
                lines.push_str(&format!("[+]{name} ok\n"));
                METRICS
                    .health_checks
                    .with_label_values(&[kind, name])
                    .set(1.0);
            }
            Err(reason) => {
                failed = true;
                lines.push_str(&format!("[-]{name} failed: {reason}\n"));
                METRICS
                    .health_checks
                    .with_label_values(&[kind, name])
                    .set(0.0);
            }
        }
    }
    if failed {
        return text_error(StatusCode::SERVICE_UNAVAILABLE, &lines);
    }
    let body = if verbose {
        format!("{lines}ok\n")
    } else {
        "ok\n".to_string()
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn probe(
    member: Arc<Member>,
    method: Method,
    query: Option<String>,
    kind: &str,
    all: &[&str],
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let pairs = query_pairs(&query);
    let verbose = pairs.iter().any(|(k, _)| k == "verbose");
    let excluded: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    let checks: Vec<&str> = all
        .iter()
        .copied()
        .filter(|c| !excluded.contains(c))
        .collect();
    run_checks(&member, kind, &checks, verbose).await
}

async fn livez(
    State(member): State<Arc<Member>>,
    method: Method,
    RawQuery(query): RawQuery,
) -> Response {
    probe(member, method, query, "livez", LIVEZ_CHECKS).await
}

async fn readyz(
    State(member): State<Arc<Member>>,
    method: Method,
    RawQuery(query): RawQuery,
) -> Response {
    probe(member, method, query, "readyz", READYZ_CHECKS).await
}

async fn single_check(
    State(member): State<Arc<Member>>,
    method: Method,
    kind: &'static str,
    name: &'static str,
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    run_checks(&member, kind, &[name], false).await
}
