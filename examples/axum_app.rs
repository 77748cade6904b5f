//! An axum app that keeps its own routes and its own WebSocket handler,
//! and proxies `/chat/*` WebSockets to a backend.
//!
//! Run with `cargo run -p wsproxy-examples --example axum_app`, then:
//! - `curl http://127.0.0.1:8080/` is answered by the app;
//! - a WebSocket to `ws://127.0.0.1:8080/chat/room` is proxied to an
//!   embedded echo backend (the prefix is stripped, so it sees `/room`);
//! - a WebSocket to `ws://127.0.0.1:8080/local` is the app's own handler.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use tower_http::trace::TraceLayer;
use wsproxy::{Route, Tunnels, WebSocketProxyLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let (backend, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse()?).await?;

    let tunnels = Tunnels::new();
    let chat = WebSocketProxyLayer::new(format!("ws://{backend}").parse()?)
        .route(Route::prefix("/chat"))
        .strip_prefix(true)
        .idle_timeout(Some(Duration::from_secs(3600)))
        .tunnels(tunnels.clone());

    let app = Router::new()
        .route("/", get(|| async { "answered by the app\n" }))
        .route("/local", get(local_ws))
        .layer(chat)
        .layer(TraceLayer::new_for_http());

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
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    // Refuse new upgrades, give open tunnels 5 s, then close them.
    tunnels.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

async fn local_ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket: WebSocket| async move {
        let _ = socket.send("served by the app itself".into()).await;
    })
}
