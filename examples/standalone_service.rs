//! The proxy as a plain service under `Router::route_service`, with no
//! inner app: requests that are not WebSocket handshakes get
//! `426 Upgrade Required`.
//!
//! Run with `cargo run -p wsproxy-examples --example standalone_service`,
//! then connect to `ws://127.0.0.1:8080/ws`.

use std::net::SocketAddr;

use axum::Router;
use axum::serve::ListenerExt;
use wsproxy::WebSocketProxyLayer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (backend, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse()?).await?;
    let proxy = WebSocketProxyLayer::new(format!("ws://{backend}").parse()?);
    let app = Router::new().route_service("/ws", proxy.into_service());
    // TCP_NODELAY on accepted sockets, as nginx's `tcp_nodelay on`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
