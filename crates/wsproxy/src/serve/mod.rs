//! Serving a proxy to untrusted clients: a [`Server`] with a bound on
//! every state a connection can sit in, on the connections it holds, and
//! on what one HTTP/2 connection can make it do (feature `serve`, on by
//! default).
//!
//! `axum::serve` and a bare hyper-util accept loop leave a client that
//! says nothing connected for ever: a few thousand silent connections (or
//! ones that send a byte every few seconds) use up the process's file
//! descriptors and shut every other client out. [`Server`] serves any
//! tower service — an axum `Router` with a
//! [`WebSocketProxyLayer`](crate::WebSocketProxyLayer) — over HTTP/1.1 and
//! HTTP/2 (by ALPN under [TLS](Server::tls), by prior knowledge without)
//! with:
//!
//! - [`Timeouts`] for the TLS handshake, protocol detection, the request
//!   head (in all, not per byte), keep-alive between requests and HTTP/2
//!   connections with no stream, on by default (nginx's values where it
//!   has one: 60 s for a head, 75 s idle; 10 s for the TLS handshake and
//!   the first bytes, stricter than nginx's 60 s);
//! - [`ConnectionLimits`]: connections in all and per client IP, where the
//!   longest-idle connection is closed to make room for a new one (as
//!   nginx does); `accept` failures (out of descriptors) logged at most
//!   once a second with a count, counted, and waited out rather than spun
//!   on, with a descriptor in reserve to tell a waiting client `503`;
//! - on HTTP/2, a bound on WebSocket handshakes answered at once per
//!   connection (`429` past it) and on handshakes the client resets
//!   (`GOAWAY` past it), so one connection cannot make the proxy open
//!   backend connections faster than they are used;
//! - the settings WebSockets need: upgrades, extended `CONNECT` (RFC 8441)
//!   and the recommended HTTP/2 windows ([`http_builder`]), `TCP_NODELAY`,
//!   the client address as [`ClientAddr`](crate::ClientAddr) (and axum's
//!   `ConnectInfo<SocketAddr>`), [`ClientTls`](crate::ClientTls) on TLS;
//!   HTTP/2 and TLS connections read up to 64 and 32 KiB at a time (`h2`
//!   alone reads a frame at a time, rustls 4 KiB more than it holds),
//!   through a buffer held while the connection has bytes to read, or its
//!   reader stopped;
//! - the [PROXY protocol](ProxyProtocol) v1/v2 for clients behind an L4
//!   load balancer, only where enabled and from the peers allowed;
//! - a graceful shutdown that also drains the proxy's
//!   [`Tunnels`](crate::Tunnels) with Close 1001.
//!
//! Every timeout, shed and refused connection is logged (debug, or a
//! throttled warning when a bound is reached) and counted in
//! [`metrics`](crate::metrics).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use wsproxy::serve::{ConnectionLimits, Server, Timeouts};
//! use wsproxy::{Route, Tunnels, WebSocketProxyLayer};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tunnels = Tunnels::new();
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(
//!     WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse()?)
//!         .route(Route::prefix("/chat"))
//!         .tunnels(tunnels.clone()),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::new(app)
//!     .timeouts(Timeouts::new().keep_alive(Duration::from_secs(30)))
//!     .limits(ConnectionLimits::new().max_connections_per_ip(100))
//!     .tunnels(tunnels)
//!     .serve(listener)
//!     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! With a server of your own, [`http_builder`] gives hyper-util's builder
//! set up for WebSockets (upgrades need `serve_connection_with_upgrades`);
//! the timeouts and limits above are then yours to provide.

mod accept;
mod activity;
mod builder;
mod connection;
mod limits;
mod proxy_protocol;
mod read_ahead;
mod registry;
mod server;
mod service;
mod serving;
mod timeouts;

pub use builder::http_builder;
pub use limits::{ConnectionLimits, DEFAULT_HTTP2_MAX_HANDSHAKES};
pub use proxy_protocol::ProxyProtocol;
pub use server::{DEFAULT_SHUTDOWN_TIMEOUT, Serve, Server};
pub use timeouts::{
    DEFAULT_DETECT_TIMEOUT, DEFAULT_HTTP2_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_REQUEST_HEAD_TIMEOUT, DEFAULT_TLS_HANDSHAKE_TIMEOUT, Timeouts,
};
