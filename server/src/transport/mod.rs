//! Listeners: TCP, optionally TLS, serving HTTP/2 (gRPC) and HTTP/1.1 on the same port, as
//! etcd's client URLs do.

mod coalesce;
mod h2_authority;
pub mod tls;

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use coalesce::{CoalescedWrites, InFlight};
use h2_authority::AuthorityFix;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        // etcd (grpc-go) does not limit concurrent streams; kube-apiserver multiplexes many
        // watches on one connection.
        .max_concurrent_streams(u32::MAX)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(2 << 20)
        .max_frame_size(1 << 20)
        .enable_connect_protocol();
    builder
}

/// How a listener's connections write their answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Answers completed together go out in one socket write (clients: many requests per
    /// connection, one raft apply answers dozens of them).
    Coalesced,
    /// Each answer is written as soon as it is ready (peers: raft's messages must not wait).
    Immediate,
}

/// What a listener answers requests with: an axum router, or the client URLs' own dispatch.
pub trait Handler:
    tower::Service<
        axum::http::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Handler for S where
    S: tower::Service<
            axum::http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `router` on `listener` until `stop` turns true.
pub async fn serve<R: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: R,
    writes: Writes,
    mut stop: watch::Receiver<bool>,
) {
    let builder = connection_builder();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(serve_connection(builder, stream, tls, router, writes));
    }
}

/// Who the client of a TLS connection proved to be: the common name of the certificate it
/// presented and the listener verified (`--client-cert-auth`). Every request of the connection
/// carries it as an extension; etcd takes it as the user name when there is no token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub common_name: Option<String>,
}

/// `router` for one connection: the client identity (TLS) added to each request, and each
/// answer counted in `in_flight` until it is ready.
fn per_connection<R: Handler>(
    router: R,
    identity: Option<ClientIdentity>,
    in_flight: Option<InFlight>,
) -> impl tower::Service<
    axum::http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            if let Some(identity) = &identity {
                request.extensions_mut().insert(identity.clone());
            }
            let mut router = router.clone();
            let answer = async move { router.call(request.map(axum::body::Body::new)).await };
            let in_flight = in_flight.clone();
            async move {
                match in_flight {
                    Some(in_flight) => in_flight.track(answer).await,
                    None => answer.await,
                }
            }
        },
    )
}

async fn serve_connection<R: Handler>(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    router: R,
    writes: Writes,
) {
    let in_flight = (writes == Writes::Coalesced).then(InFlight::default);
    let outcome = match tls {
        None => {
            let service = TowerToHyperService::new(per_connection(router, None, in_flight.clone()));
            let io = CoalescedWrites::new(AuthorityFix::new(stream), in_flight);
            builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await
        }
        Some(acceptor) => {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let identity = ClientIdentity {
                common_name: stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| tls::common_name(leaf)),
            };
            let service =
                TowerToHyperService::new(per_connection(router, Some(identity), in_flight.clone()));
            let io = CoalescedWrites::new(AuthorityFix::new(stream), in_flight);
            builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
