//! Serving on one single-threaded runtime per worker, each accepting on
//! its own `SO_REUSEPORT` listener: nginx's process model in threads.
//!
//! The kernel spreads new connections over the listeners; a connection,
//! its tunnel and its backend socket then stay on one thread, with no
//! work stealing and no cross-thread wake-ups.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use socket2::{Domain, Socket, Type};
use tokio_util::sync::CancellationToken;
use wsproxy::Tunnels;

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

/// Serve `app` on `listener` until `stop`, then drain for up to `grace`:
/// HTTP connections finish their requests while open tunnels get the same
/// time to end, after which both are closed.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
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
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned())
    .into_future();
    let mut server = std::pin::pin!(server);
    tokio::select! {
        served = &mut server => return served,
        () = stop.cancelled() => {}
    }
    // Tunnels live on the runtime that accepted them: keep it running
    // until they are gone. A request still in flight at the deadline is
    // dropped with the runtime.
    let (served, ()) = tokio::join!(tokio::time::timeout(grace, server), tunnels.shutdown(grace));
    match served {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!("HTTP connections still open at the shutdown deadline, dropping them");
            Ok(())
        }
    }
}

/// Run [`serve`] on a new thread with a single-threaded runtime.
pub(crate) fn spawn(
    index: usize,
    listener: std::net::TcpListener,
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
            if let Err(e) = runtime.block_on(serve(listener, app, stop, tunnels, grace)) {
                tracing::error!(error = %e, worker = index, "worker stopped with an error");
            }
        })
}
