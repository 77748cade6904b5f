//! A pool of WebSocket backends behind one route: least connections,
//! active health checks, sticky sessions, and an admin API that adds,
//! drains and removes backends while tunnels stay open.
//!
//! Run with `cargo run -p wsproxy-examples --example balance`, then open
//! WebSockets to `ws://127.0.0.1:8080/ws` (three embedded echo backends).
//! `GET /backends` lists them with their open tunnels and health;
//! `POST /backends/add` starts a fourth echo backend and adds it;
//! `POST /backends/drain/{id}` stops new tunnels to one and removes it
//! when its last tunnel ends.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Router, http::StatusCode};
use wsproxy::balance::{ActiveHealth, Backend, BackendId, Backends, LeastConn, Probe};
use wsproxy::{Route, WebSocketProxyLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let mut pool = Vec::new();
    for _ in 0..3 {
        let (addr, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse()?).await?;
        pool.push(Backend::new(format!("ws://{addr}").parse()?));
    }
    let backends = Backends::new(pool)
        .strategy(LeastConn::new())
        .active_health(
            ActiveHealth::new(Probe::tcp())
                .interval(Duration::from_secs(2))
                .fall(2),
        )
        .slow_start(Duration::from_secs(30))
        .sticky_cookie("wsproxy_backend");

    let admin = Router::new()
        .route("/backends", get(list))
        .route("/backends/add", post(add))
        .route("/backends/drain/{id}", post(drain))
        .with_state(backends.clone());
    let app = admin.layer(WebSocketProxyLayer::with_backends(backends).route(Route::prefix("/ws")));

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

async fn list(State(backends): State<Backends>) -> String {
    let mut text = String::new();
    for b in backends.status() {
        let state = match (b.up, b.draining) {
            (_, true) => "draining",
            (true, false) => "up",
            (false, false) => "down",
        };
        text.push_str(&format!(
            "{} {} open={} {state}\n",
            b.id, b.upstream, b.open
        ));
    }
    text
}

async fn add(State(backends): State<Backends>) -> Result<String, StatusCode> {
    let (addr, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let backend = Backend::new(format!("ws://{addr}").parse().unwrap());
    let id = backend.id();
    backends.insert(backend);
    Ok(format!("added {id}\n"))
}

async fn drain(State(backends): State<Backends>, Path(id): Path<String>) -> StatusCode {
    match id.parse::<BackendId>() {
        Ok(id) if backends.drain(id) => StatusCode::NO_CONTENT,
        Ok(_) => StatusCode::NOT_FOUND,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}
