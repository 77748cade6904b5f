//! The bench's own proxy: the wsproxy layer in a hyper-util server that
//! speaks HTTP/1.1 and h2c, set up as the crate docs' "Serving" section
//! says (upgrades, `TCP_NODELAY`, extended `CONNECT`, HTTP/2 windows of
//! 256 KiB per stream and 8 MiB per connection).
//!
//! `compare-h2 --proxy layer` runs it as a child process, so that its CPU
//! and memory are its own: the library alone, on tokio's multi-threaded
//! runtime, where `wsgate` (the default) runs one single-threaded runtime
//! per core.

use std::net::SocketAddr;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;
use wsproxy::{ClientAddr, WebSocketProxyLayer};

use crate::client::BoxError;

pub(crate) use wsproxy::{
    HTTP2_CONNECTION_WINDOW as CONNECTION_WINDOW, HTTP2_STREAM_WINDOW as STREAM_WINDOW,
};

/// Bind `listen` and proxy every WebSocket to `backend` (`ws://host:port`)
/// until the task is dropped; returns the bound address and the accept
/// task.
pub(crate) async fn spawn(
    listen: SocketAddr,
    backend: &str,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BoxError> {
    // Tunnels live until a side closes, as wsgate's `--idle-timeout off`.
    let proxy = WebSocketProxyLayer::new(backend.parse()?)
        .idle_timeout(None)
        .into_service();
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            // As nginx's `tcp_nodelay on`; the proxy cannot reach this socket.
            let _ = tcp.set_nodelay(true);
            let proxy = proxy.clone();
            let service = tower::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                proxy.clone().oneshot(req)
            });
            tokio::spawn(async move {
                let _ = wsproxy::serve::http_builder(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tcp),
                        TowerToHyperService::new(service),
                    )
                    .await;
            });
        }
    });
    Ok((addr, task))
}

/// Serve until killed, printing `listening on ADDR` first.
pub(crate) async fn run(listen: SocketAddr, backend: &str) -> Result<(), BoxError> {
    let (addr, task) = spawn(listen, backend).await?;
    println!("listening on {addr}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    task.await?;
    Ok(())
}
