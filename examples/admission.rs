//! A WebSocket gateway in front of an app that only lets in what it
//! should: same-site pages, a fair rate and number of connections per
//! client, bounded messages, live clients; and that closes every WebSocket
//! with 1001 when it shuts down.
//!
//! Run with `cargo run -p wsproxy-examples --example admission`, then open
//! a WebSocket to `ws://127.0.0.1:8080/ws` (proxied to an embedded echo
//! backend). Try it with `Origin: https://evil.example` (403), more than 5
//! at once (429), or a message over 64 KiB (Close 1009). Ctrl-C sends
//! every open WebSocket Close 1001 and waits up to 10 s for the answers.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use tower::ServiceBuilder;
use tower_http::cors::CorsLayer;
use wsproxy::admit::{
    AdmitLayer, ConnectionLimit, Key, OriginCheck, Rate, RateLimit, ResolveClient,
};
use wsproxy::{Keepalive, MessageLimits, Route, Tunnels, WebSocketProxyLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let (backend, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse()?).await?;

    let tunnels = Tunnels::new();
    let proxy = WebSocketProxyLayer::new(format!("ws://{backend}").parse()?)
        .route(Route::prefix("/ws"))
        .client_limits(
            MessageLimits::new()
                .max_message(64 * 1024)
                .max_rate(Rate::per_second(20).burst(40)),
        )
        .client_keepalive(Some(Keepalive::new(
            Duration::from_secs(30),
            Duration::from_secs(10),
        )))
        .tunnels(tunnels.clone());

    // Outermost first: who the client is, then Origin, rate, connections.
    let admission = ServiceBuilder::new()
        .layer(CorsLayer::permissive())
        .layer(AdmitLayer::new(ResolveClient::new([])))
        .layer(
            OriginCheck::new(["http://127.0.0.1:8080", "https://*.app.example"])
                .allow_missing(true)
                .layer(),
        )
        .layer(
            RateLimit::new()
                .per_key(Key::client_ip(), Rate::per_second(2).burst(10))
                .layer(),
        )
        .layer(
            ConnectionLimit::new()
                .max_open(10_000)
                .max_open_per_key(Key::client_ip(), 5)
                .layer(),
        );

    let app = Router::new()
        .route(
            "/",
            get(|| async { "plain HTTP passes every admission layer untouched\n" }),
        )
        .layer(proxy)
        .layer(admission);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let draining = tunnels.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = tokio::signal::ctrl_c().await;
        // Close 1001 to every WebSocket, both ways, at a frame boundary.
        draining.shutdown(Duration::from_secs(10)).await;
    })
    .await?;
    println!("stopped; {:?}", tunnels.stats().ended);
    Ok(())
}
