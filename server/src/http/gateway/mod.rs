//! etcd's JSON gateway (grpc-gateway) on the client URLs: every RPC of etcd 3.4's gateway at
//! its path under `/v3/` (and `/v3beta/`, which etcd 3.4 rewrites to `/v3/`), POST only, the
//! request and response in etcd's JSON mapping (generated from the protos, see build.rs),
//! errors as `{"error","message","code"}` with grpc-gateway's HTTP statuses, and the client
//! streams (watch, lease keep-alive, election observe) as one `{"result": ...}` JSON object a
//! line.
//!
//! Each route calls the same service method gRPC does, in-process: validation, errors and
//! auth are the services' own. The `Authorization` header reaches them as the `token`
//! metadata etcd reads (and as `authorization`, as grpc-gateway forwards it);
//! `Grpc-Metadata-<name>` headers become metadata `<name>`, as grpc-gateway does.

mod json;

use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::api::{Services, GRPC_OVERHEAD_BYTES};
use crate::error::EtcdError;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{LeaseKeepAliveRequest, SnapshotRequest, WatchRequest};
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::LeaderRequest;
use crate::proto::v3lockpb::lock_server::Lock;
use json::{Next, RequestReader};

/// Messages queued towards a streaming HTTP response.
const STREAM_BUFFER: usize = 16;

/// The gateway's routes, for the client URLs' router.
pub fn router(services: Services) -> Router {
    Router::new()
        .route("/v3/{*method}", any(handle))
        .route("/v3beta/{*method}", any(handle))
        .with_state(services)
}

/// What a path names: a unary RPC, or one of the streams.
enum Route {
    Unary(UnaryRpc),
    Watch,
    KeepAlive,
    Observe,
    Snapshot,
}

type Reply = Pin<Box<dyn Future<Output = Result<Vec<u8>, Status>> + Send>>;
type UnaryRpc = fn(Services, MetadataMap, &[u8]) -> Reply;

/// Decodes the JSON request, calls `$service.$method` with it and encodes the answer.
macro_rules! unary {
    ($service:ident . $method:ident) => {{
        fn call(services: Services, metadata: MetadataMap, body: &[u8]) -> Reply {
            let decoded = decode(&services, body);
            Box::pin(async move {
                let request =
                    tonic::Request::from_parts(metadata, tonic::Extensions::default(), decoded?);
                let response = services.$service.$method(request).await?;
                json::to_vec(response.get_ref())
            })
        }
        Route::Unary(call)
    }};
}

/// etcd 3.4's gateway table (etcdserverpb, v3lockpb and v3electionpb `*.pb.gw.go`). Where two
/// RPCs share a path (`maintenance/hash`), the one grpc-gateway matches, Hash, is listed.
fn route(method: &str) -> Option<(Route, &'static str)> {
    let found = match method {
        "kv/range" => (unary!(kv.range), "/etcdserverpb.KV/Range"),
        "kv/put" => (unary!(kv.put), "/etcdserverpb.KV/Put"),
        "kv/deleterange" => (unary!(kv.delete_range), "/etcdserverpb.KV/DeleteRange"),
        "kv/txn" => (unary!(kv.txn), "/etcdserverpb.KV/Txn"),
        "kv/compaction" => (unary!(kv.compact), "/etcdserverpb.KV/Compact"),
        "watch" => (Route::Watch, "/etcdserverpb.Watch/Watch"),
        "lease/grant" => (unary!(lease.lease_grant), "/etcdserverpb.Lease/LeaseGrant"),
        "lease/revoke" | "kv/lease/revoke" => (
            unary!(lease.lease_revoke),
            "/etcdserverpb.Lease/LeaseRevoke",
        ),
        "lease/keepalive" => (Route::KeepAlive, "/etcdserverpb.Lease/LeaseKeepAlive"),
        "lease/timetolive" | "kv/lease/timetolive" => (
            unary!(lease.lease_time_to_live),
            "/etcdserverpb.Lease/LeaseTimeToLive",
        ),
        "lease/leases" | "kv/lease/leases" => (
            unary!(lease.lease_leases),
            "/etcdserverpb.Lease/LeaseLeases",
        ),
        "cluster/member/add" => (
            unary!(cluster.member_add),
            "/etcdserverpb.Cluster/MemberAdd",
        ),
        "cluster/member/remove" => (
            unary!(cluster.member_remove),
            "/etcdserverpb.Cluster/MemberRemove",
        ),
        "cluster/member/update" => (
            unary!(cluster.member_update),
            "/etcdserverpb.Cluster/MemberUpdate",
        ),
        "cluster/member/list" => (
            unary!(cluster.member_list),
            "/etcdserverpb.Cluster/MemberList",
        ),
        "cluster/member/promote" => (
            unary!(cluster.member_promote),
            "/etcdserverpb.Cluster/MemberPromote",
        ),
        "maintenance/alarm" => (unary!(maintenance.alarm), "/etcdserverpb.Maintenance/Alarm"),
        "maintenance/status" => (
            unary!(maintenance.status),
            "/etcdserverpb.Maintenance/Status",
        ),
        "maintenance/defragment" => (
            unary!(maintenance.defragment),
            "/etcdserverpb.Maintenance/Defragment",
        ),
        "maintenance/hash" => (unary!(maintenance.hash), "/etcdserverpb.Maintenance/Hash"),
        "maintenance/snapshot" => (Route::Snapshot, "/etcdserverpb.Maintenance/Snapshot"),
        "maintenance/transfer-leadership" => (
            unary!(maintenance.move_leader),
            "/etcdserverpb.Maintenance/MoveLeader",
        ),
        "auth/enable" => (unary!(auth.auth_enable), "/etcdserverpb.Auth/AuthEnable"),
        "auth/disable" => (unary!(auth.auth_disable), "/etcdserverpb.Auth/AuthDisable"),
        // etcd 3.5's route (keelson reports 3.5); etcd 3.4 has no AuthStatus.
        "auth/status" => (unary!(auth.auth_status), "/etcdserverpb.Auth/AuthStatus"),
        "auth/authenticate" => (unary!(auth.authenticate), "/etcdserverpb.Auth/Authenticate"),
        "auth/user/add" => (unary!(auth.user_add), "/etcdserverpb.Auth/UserAdd"),
        "auth/user/get" => (unary!(auth.user_get), "/etcdserverpb.Auth/UserGet"),
        "auth/user/list" => (unary!(auth.user_list), "/etcdserverpb.Auth/UserList"),
        "auth/user/delete" => (unary!(auth.user_delete), "/etcdserverpb.Auth/UserDelete"),
        "auth/user/changepw" => (
            unary!(auth.user_change_password),
            "/etcdserverpb.Auth/UserChangePassword",
        ),
        "auth/user/grant" => (
            unary!(auth.user_grant_role),
            "/etcdserverpb.Auth/UserGrantRole",
        ),
        "auth/user/revoke" => (
            unary!(auth.user_revoke_role),
            "/etcdserverpb.Auth/UserRevokeRole",
        ),
        "auth/role/add" => (unary!(auth.role_add), "/etcdserverpb.Auth/RoleAdd"),
        "auth/role/get" => (unary!(auth.role_get), "/etcdserverpb.Auth/RoleGet"),
        "auth/role/list" => (unary!(auth.role_list), "/etcdserverpb.Auth/RoleList"),
        "auth/role/delete" => (unary!(auth.role_delete), "/etcdserverpb.Auth/RoleDelete"),
        "auth/role/grant" => (
            unary!(auth.role_grant_permission),
            "/etcdserverpb.Auth/RoleGrantPermission",
        ),
        "auth/role/revoke" => (
            unary!(auth.role_revoke_permission),
            "/etcdserverpb.Auth/RoleRevokePermission",
        ),
        "lock/lock" => (unary!(lock.lock), "/v3lockpb.Lock/Lock"),
        "lock/unlock" => (unary!(lock.unlock), "/v3lockpb.Lock/Unlock"),
        "election/campaign" => (unary!(election.campaign), "/v3electionpb.Election/Campaign"),
        "election/proclaim" => (unary!(election.proclaim), "/v3electionpb.Election/Proclaim"),
        "election/leader" => (unary!(election.leader), "/v3electionpb.Election/Leader"),
        "election/observe" => (Route::Observe, "/v3electionpb.Election/Observe"),
        "election/resign" => (unary!(election.resign), "/v3electionpb.Election/Resign"),
        _ => return None,
    };
    Some(found)
}

/// The gRPC receive limit the same request would meet.
fn max_message(services: &Services) -> usize {
    services.member.limits().max_request_bytes + GRPC_OVERHEAD_BYTES
}

/// A body held whole: JSON spells bytes in base64 (4/3) plus the field names, so the limit is
/// the gRPC message limit with room for that.
fn max_body(services: &Services) -> usize {
    max_message(services).saturating_mul(2)
}

fn decode<T>(services: &Services, body: &[u8]) -> Result<T, Status>
where
    T: DeserializeOwned + Default + prost::Message,
{
    let request: T = json::decode_one(body).map_err(Status::invalid_argument)?;
    check_size(services, &request)?;
    Ok(request)
}

/// grpc-go's refusal of a message over the receive limit, with its wording.
fn check_size<T: prost::Message>(services: &Services, request: &T) -> Result<(), Status> {
    let (size, limit) = (request.encoded_len(), max_message(services));
    if size > limit {
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({size} vs. {limit})"
        )));
    }
    Ok(())
}

async fn handle(State(services): State<Services>, request: Request) -> Response {
    let path = request.uri().path();
    let method = path
        .strip_prefix("/v3/")
        .or_else(|| path.strip_prefix("/v3beta/"))
        .unwrap_or_default()
        .to_string();
    let mut response = if request.method() == Method::OPTIONS {
        // CORS preflight: etcd answers any OPTIONS with an empty 200.
        StatusCode::OK.into_response()
    } else {
        match route(&method) {
            None => not_found(),
            Some(_) if request.method() != Method::POST => method_not_allowed(),
            Some((route, grpc_path)) => match refuse_for_learner(&services, grpc_path) {
                Some(refusal) => error_response(&refusal),
                None => serve(services, route, request).await,
            },
        }
    };
    add_cors(response.headers_mut());
    response
}

async fn serve(services: Services, route: Route, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let metadata = metadata_of(&parts.headers);
    match route {
        Route::Unary(call) => {
            let limit = max_body(&services);
            let body = match axum::body::to_bytes(body, limit).await {
                Ok(body) => body,
                Err(_) => return error_response(&too_large(&services)),
            };
            match call(services, metadata, &body).await {
                Ok(json) => ok_response(json),
                Err(status) => error_response(&status),
            }
        }
        Route::Watch => {
            let (requests, closed) =
                match client_stream::<WatchRequest>(&services, body.into_data_stream(), true).await
                {
                    Ok(opened) => opened,
                    Err(status) => return error_response(&status),
                };
            let request =
                tonic::Request::from_parts(metadata, tonic::Extensions::default(), requests);
            match services.watch.open_plain(request) {
                Ok(responses) => stream_response(responses, Some(closed)).await,
                Err(status) => error_response(&status),
            }
        }
        Route::KeepAlive => {
            let (requests, closed) = match client_stream::<LeaseKeepAliveRequest>(
                &services,
                body.into_data_stream(),
                false,
            )
            .await
            {
                Ok(opened) => opened,
                Err(status) => return error_response(&status),
            };
            let request =
                tonic::Request::from_parts(metadata, tonic::Extensions::default(), requests);
            match services.lease.keep_alive(request) {
                Ok(responses) => stream_response(responses, Some(closed)).await,
                Err(status) => error_response(&status),
            }
        }
        Route::Observe => {
            let election = services.election.clone();
            server_stream::<LeaderRequest, _, _, _, _>(
                &services,
                metadata,
                body,
                |request| async move { election.observe(request).await },
            )
            .await
        }
        Route::Snapshot => {
            let maintenance = services.maintenance.clone();
            server_stream::<SnapshotRequest, _, _, _, _>(
                &services,
                metadata,
                body,
                |request| async move { maintenance.snapshot(request).await },
            )
            .await
        }
    }
}

/// A server stream: one JSON request, then the stream's answers.
async fn server_stream<Req, Resp, S, F, Fut>(
    services: &Services,
    metadata: MetadataMap,
    body: Body,
    call: F,
) -> Response
where
    Req: DeserializeOwned + Default + prost::Message,
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + Unpin + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let request = match axum::body::to_bytes(body, max_body(services)).await {
        Ok(body) => decode::<Req>(services, &body),
        Err(_) => Err(too_large(services)),
    };
    let request = match request {
        Ok(request) => tonic::Request::from_parts(metadata, tonic::Extensions::default(), request),
        Err(status) => return error_response(&status),
    };
    match call(request).await {
        Ok(responses) => stream_response(responses.into_inner(), None).await,
        Err(status) => error_response(&status),
    }
}

/// A body past `max_body` is certainly over the gRPC limit; its exact size is not read.
fn too_large(services: &Services) -> Status {
    let limit = max_message(services);
    Status::resource_exhausted(format!(
        "grpc: received message larger than max (more than {limit} bytes vs. {limit})"
    ))
}

/// The requests of a client stream from the body, as grpc-gateway feeds them: a first request
/// that is not valid JSON fails the call; a later one ends the requests. With `keep_open`
/// (watch), the requests end only when the response is dropped, since etcd keeps a watch
/// stream whose client finished sending; the returned sender is that response's token.
async fn client_stream<T>(
    services: &Services,
    body: axum::body::BodyDataStream,
    keep_open: bool,
) -> Result<
    (
        impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
        oneshot::Sender<()>,
    ),
    Status,
>
where
    T: DeserializeOwned + prost::Message + Send + 'static,
{
    let mut reader = RequestReader::new(body, max_body(services));
    let first = match reader.next::<T>().await {
        Next::Request(first) => {
            check_size(services, &first)?;
            Some(first)
        }
        Next::End => None,
        // grpc-gateway passes the decoder's error on as it is: gRPC Unknown.
        Next::Invalid(message) => return Err(Status::unknown(message)),
    };
    let (tx, rx) = mpsc::channel::<Result<T, Status>>(STREAM_BUFFER);
    let (closed_tx, mut closed_rx) = oneshot::channel::<()>();
    let limit = max_message(services);
    tokio::spawn(async move {
        if let Some(first) = first {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            // One request per round; the body is finite and each value bounded.
            loop {
                let next = tokio::select! {
                    next = reader.next::<T>() => next,
                    _ = &mut closed_rx => return,
                };
                let Next::Request(request) = next else { break };
                if request.encoded_len() > limit || tx.send(Ok(request)).await.is_err() {
                    break;
                }
            }
        }
        if keep_open {
            // Hold the requests open (the sender alive) until the response goes away.
            let _ = closed_rx.await;
        }
        drop(tx);
    });
    Ok((ReceiverStream::new(rx), closed_tx))
}

/// A streaming answer: one `{"result": ...}` line per message, then `{"error": ...}` if the
/// stream fails. As in grpc-gateway, nothing is sent (not even the status line) before the
/// first message, so a stream that fails at once gets the error's HTTP status.
async fn stream_response<S, T>(
    mut responses: S,
    response_dropped: Option<oneshot::Sender<()>>,
) -> Response
where
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    T: Serialize + Send + 'static,
{
    let first = match responses.next().await {
        None => None,
        Some(Ok(first)) => Some(first),
        Some(Err(status)) => {
            let mut response = (http_status(status.code()), stream_error(&status)).into_response();
            set_json(response.headers_mut());
            return response;
        }
    };
    let head = futures::stream::iter(first.map(Ok));
    let lines = head.chain(responses).scan(false, |failed, item| {
        if *failed {
            return futures::future::ready(None);
        }
        let line = match item {
            Ok(message) => match json::to_vec(&Chunk { result: &message }) {
                Ok(mut line) => {
                    line.push(b'\n');
                    line
                }
                Err(status) => {
                    *failed = true;
                    stream_error(&status)
                }
            },
            Err(status) => {
                *failed = true;
                stream_error(&status)
            }
        };
        futures::future::ready(Some(Ok::<_, std::convert::Infallible>(Bytes::from(line))))
    });
    // The token lives as long as the body: dropping it tells the request side to stop.
    let lines = lines.map(move |line| {
        let _keep = &response_dropped;
        line
    });
    let mut response = Response::new(Body::from_stream(lines));
    set_json(response.headers_mut());
    response
}

#[derive(Serialize)]
struct Chunk<'a, T> {
    result: &'a T,
}

/// grpc-gateway's stream error object (`internal.StreamError`, field names as in its proto).
fn stream_error(status: &Status) -> Vec<u8> {
    #[derive(Serialize)]
    struct StreamError<'a> {
        grpc_code: i32,
        http_code: u16,
        #[serde(skip_serializing_if = "str::is_empty")]
        message: &'a str,
        http_status: &'a str,
    }
    #[derive(Serialize)]
    struct Wrapper<'a> {
        error: StreamError<'a>,
    }
    let http = http_status(status.code());
    let body = Wrapper {
        error: StreamError {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or_default(),
        },
    };
    json::to_vec(&body).unwrap_or_default()
}

fn set_json(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // grpc-gateway forwards the gRPC response headers; etcd's carry only the content type.
    headers.insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
}

fn ok_response(json: Vec<u8>) -> Response {
    let mut response = json.into_response();
    set_json(response.headers_mut());
    response
}

/// grpc-gateway's error body; empty strings are omitted, as its JSONPb marshaler omits them.
pub fn error_body(status: &Status) -> Vec<u8> {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        #[serde(skip_serializing_if = "str::is_empty")]
        error: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        message: &'a str,
        code: i32,
    }
    json::to_vec(&ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    })
    .unwrap_or_default()
}

fn error_response(status: &Status) -> Response {
    let mut response = (http_status(status.code()), error_body(status)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// grpc-gateway's `HTTPStatusFromCode`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Go's `http.Error` text answers, as etcd's mux gives them.
fn text_response(status: StatusCode, text: &'static str) -> Response {
    let mut response = (status, text).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn not_found() -> Response {
    // grpc-gateway's answer for a path under /v3/ it has no route for.
    text_response(StatusCode::NOT_FOUND, "Not Found\n")
}

fn method_not_allowed() -> Response {
    text_response(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

/// etcd's default `--cors '*'`: every origin may call the gateway from a browser.
fn add_cors(headers: &mut HeaderMap) {
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

/// A learner serves over the gateway what it serves over gRPC (the gateway is a gRPC client
/// in etcd, so the same refusal applies).
fn refuse_for_learner(services: &Services, grpc_path: &str) -> Option<Status> {
    (services.member.raft().is_learner() && !crate::api::learner::allowed_for_learner(grpc_path))
        .then(|| EtcdError::NotSupportedForLearner.into())
}

/// The gRPC metadata grpc-gateway derives from the HTTP headers, plus `token`, which etcd's
/// auth reads.
fn metadata_of(headers: &HeaderMap) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| MetadataValue::try_from(v.as_bytes()).ok())
    {
        metadata.insert("token", token.clone());
        metadata.insert("authorization", token);
    }
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix("grpc-metadata-") else {
            continue;
        };
        let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_bytes()),
        ) else {
            continue;
        };
        metadata.append(key, value);
    }
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_grpc_gateways() {
        let status = Status::not_found("etcdserver: requested lease not found");
        assert_eq!(
            String::from_utf8(error_body(&status)).expect("utf-8"),
            r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#
        );
        assert_eq!(
            http_status(Code::Unknown),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::PRECONDITION_FAILED
        );
    }

    #[test]
    fn stream_errors_are_grpc_gateways() {
        let status = Status::unavailable("etcdserver: no leader");
        assert_eq!(
            String::from_utf8(stream_error(&status)).expect("utf-8"),
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#
        );
    }

    #[test]
    fn every_gateway_path_of_etcd_3_4_is_routed() {
        let paths = [
            "kv/range",
            "kv/put",
            "kv/deleterange",
            "kv/txn",
            "kv/compaction",
            "watch",
            "lease/grant",
            "lease/revoke",
            "kv/lease/revoke",
            "lease/keepalive",
            "lease/timetolive",
            "kv/lease/timetolive",
            "lease/leases",
            "kv/lease/leases",
            "cluster/member/add",
            "cluster/member/remove",
            "cluster/member/update",
            "cluster/member/list",
            "cluster/member/promote",
            "maintenance/alarm",
            "maintenance/status",
            "maintenance/defragment",
            "maintenance/hash",
            "maintenance/snapshot",
            "maintenance/transfer-leadership",
            "auth/enable",
            "auth/disable",
            "auth/status",
            "auth/authenticate",
            "auth/user/add",
            "auth/user/get",
            "auth/user/list",
            "auth/user/delete",
            "auth/user/changepw",
            "auth/user/grant",
            "auth/user/revoke",
            "auth/role/add",
            "auth/role/get",
            "auth/role/list",
            "auth/role/delete",
            "auth/role/grant",
            "auth/role/revoke",
            "lock/lock",
            "lock/unlock",
            "election/campaign",
            "election/proclaim",
            "election/leader",
            "election/observe",
            "election/resign",
        ];
        for path in paths {
            assert!(route(path).is_some(), "{path} is not routed");
        }
        assert!(route("lock").is_none());
        assert!(route("kv/nothing").is_none());
    }

    #[test]
    fn the_authorization_header_becomes_the_token() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("abc.123"));
        headers.insert("grpc-metadata-hasleader", HeaderValue::from_static("true"));
        let metadata = metadata_of(&headers);
        assert_eq!(
            metadata.get("token").and_then(|v| v.to_str().ok()),
            Some("abc.123")
        );
        assert_eq!(
            metadata.get("hasleader").and_then(|v| v.to_str().ok()),
            Some("true")
        );
    }
}
