//! What the end-to-end tests in `tests/tests/` build around the proxy:
//! apps served on 127.0.0.1:0 with the layer in them, or by
//! `wsproxy::serve::Server`. Backends, clients, frames, certificates and
//! deadlines are `wsproxy_test_support`'s.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use wsproxy::serve::{ConnectionLimits, Server, Timeouts};
use wsproxy::{Tunnels, WebSocketProxyLayer};

/// Serve `app` with `ConnectInfo` on 127.0.0.1:0; returns its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Serve `app` with `wsproxy::serve::Server`, `timeouts` and `limits` on
/// 127.0.0.1:0; returns its address.
pub async fn serve_with(
    app: axum::Router,
    timeouts: Timeouts,
    limits: ConnectionLimits,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(app).timeouts(timeouts).limits(limits);
    tokio::spawn(async move { server.serve(listener).await.unwrap() });
    addr
}

/// A proxy app for `backend` with `layer` settings applied by `configure`.
pub async fn proxy_to(
    backend: SocketAddr,
    configure: impl FnOnce(WebSocketProxyLayer) -> WebSocketProxyLayer,
) -> (SocketAddr, Tunnels) {
    proxy_with(configure(WebSocketProxyLayer::new(
        format!("ws://{backend}").parse().unwrap(),
    )))
    .await
}

/// An app with `layer` (a proxy) and plain routes `/app` and `/internal`.
pub async fn proxy_with(layer: WebSocketProxyLayer) -> (SocketAddr, Tunnels) {
    let tunnels = layer.tunnels_handle().clone();
    let app = axum::Router::new()
        .route("/app", axum::routing::get(|| async { "app" }))
        .route(
            "/internal",
            axum::routing::get(|| async { "internal app route" }),
        )
        .layer(layer);
    (serve(app).await, tunnels)
}
