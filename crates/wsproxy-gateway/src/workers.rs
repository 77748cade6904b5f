//! Serving on one single-threaded runtime per worker, each accepting on
//! its own `SO_REUSEPORT` listener: nginx's process model in threads.
//!
//! The kernel spreads new connections over the listeners; a connection,
//! its tunnel and its backend socket then stay on one thread, with no
//! work stealing and no cross-thread wake-ups.
//!
//! Each worker serves HTTP/1.1 and HTTP/2 (by ALPN `h2` under TLS, by
//! prior knowledge without), with extended CONNECT for WebSockets over
//! HTTP/2; see [`http`] for why this is not `axum::serve`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::serve::{Listener, ListenerExt};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Socket, Type};
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tower::Service as _;
use wsproxy::Tunnels;

use crate::tls::TlsListener;

/// Bind `count` listeners to `addr` with `SO_REUSEPORT` (the first one
/// picks the port when `addr` has port 0).
pub(crate) fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = listener(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(listener(addr)?);
    }
    Ok(listeners)
}

/// A non-blocking `SO_REUSEADDR` + `SO_REUSEPORT` listener on `addr`.
fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Serve `app` on `listener` (with TLS when `tls` is given) until `stop`,
/// then drain for up to `grace`: HTTP connections finish their requests
/// while open tunnels get the same time to end, after which both are
/// closed.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: Router,
    stop: CancellationToken,
    tunnels: Tunnels,
    grace: Duration,
) -> std::io::Result<()> {
    // Like nginx's `tcp_nodelay on`: a tunnel relays partial frames, which
    // must not wait for Nagle's algorithm and the peer's delayed ACK.
    let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    match tls {
        None => serve_on(listener, false, app, stop, tunnels, grace).await,
        Some(config) => {
            serve_on(
                TlsListener::new(listener, config),
                true,
                app,
                stop,
                tunnels,
                grace,
            )
            .await
        }
    }
    Ok(())
}

/// The HTTP/1.1 and HTTP/2 server of every connection (HTTP/2 by ALPN
/// `h2` or by prior knowledge: hyper-util reads the preface).
///
/// This is what `axum::serve` does, plus the HTTP/2 receive windows that
/// the `wsproxy` docs ("Serving") recommend, which `axum::serve` cannot
/// set: a WebSocket whose backend stops reading holds at most 256 KiB of
/// its connection's 8 MiB window, so the other WebSockets multiplexed on
/// a browser's connection keep flowing.
fn http() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        // SETTINGS_ENABLE_CONNECT_PROTOCOL: WebSockets over HTTP/2 (RFC 8441).
        .enable_connect_protocol()
        .initial_stream_window_size(wsproxy::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(wsproxy::HTTP2_CONNECTION_WINDOW);
    builder
}

/// Accept on `listener` until `stop`, serving each connection on its own
/// task with the client address as axum's `ConnectInfo<SocketAddr>` (as
/// `into_make_service_with_connect_info` gives it) and, over TLS,
/// [`wsproxy::ClientTls`] (so backends are told `https`); then drain.
async fn serve_on<L>(
    mut listener: L,
    tls: bool,
    app: Router,
    stop: CancellationToken,
    tunnels: Tunnels,
    grace: Duration,
) where
    L: Listener<Addr = SocketAddr>,
{
    let http = http();
    let connections = GracefulShutdown::new();
    loop {
        let (io, client) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let app = app.clone();
        let service = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(client));
            if tls {
                req.extensions_mut().insert(wsproxy::ClientTls);
            }
            app.clone().call(req)
        });
        let connection = http
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(client = %client, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Idle connections close now, busy ones after their request (HTTP/2:
    // GOAWAY, then its streams run out). Tunnels live on the runtime that
    // accepted them: keep it running until they are gone. A request still
    // in flight at the deadline is dropped with the runtime.
    let (served, ()) = tokio::join!(
        tokio::time::timeout(grace, connections.shutdown()),
        tunnels.shutdown(grace)
    );
    if served.is_err() {
        tracing::warn!("HTTP connections still open at the shutdown deadline, dropping them");
    }
}

/// Run [`serve`] on a new thread with a single-threaded runtime.
pub(crate) fn spawn(
    index: usize,
    listener: std::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: Router,
    stop: CancellationToken,
    tunnels: Tunnels,
    grace: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("wsgate-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, worker = index, "cannot start a worker runtime");
                    return;
                }
            };
            if let Err(e) = runtime.block_on(serve(listener, tls, app, stop, tunnels, grace)) {
                tracing::error!(error = %e, worker = index, "worker stopped with an error");
            }
        })
}
