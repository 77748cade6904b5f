//! A tower middleware that proxies WebSocket upgrades to backends while
//! every other request passes through to your service unchanged.
//!
//! Add [`WebSocketProxyLayer`] to an axum `Router` or any tower service of
//! a hyper server. It claims requests that are WebSocket opening
//! handshakes *and* match its [`Route`]; the app keeps everything else,
//! including its own WebSocket handlers on other paths.
//!
//! # Example
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{Router, routing::get, serve::ListenerExt};
//! use wsproxy::{Route, WebSocketProxyLayer};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new()
//!     .route("/", get(|| async { "plain HTTP stays with the app" }))
//!     .layer(WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse()?).route(Route::prefix("/chat")));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080")
//!     .await?
//!     .tap_io(|tcp| { let _ = tcp.set_nodelay(true); });
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # The path of one connection
//!
//! 1. **Detect.** An HTTP/1.1 `GET` with `Upgrade: websocket` and
//!    `Connection: upgrade` (tokens compared case-insensitively in
//!    comma-separated lists), or an HTTP/2 extended `CONNECT` with
//!    `:protocol` `websocket` (RFC 8441, feature `http2`, on by default),
//!    that the [`Route`] matches is claimed. Anything else — plain
//!    requests, `Upgrade: h2c`, `Upgrade: websocket` on a `POST`, other
//!    `:protocol`s — goes to the inner service untouched.
//! 2. **Admit.** [Admission](admit) checks — layers in front of the proxy,
//!    or [`WebSocketProxyLayer::admit`], which installs the same
//!    [`Admit`](admit::Admit) middleware in front of this layer's proxy —
//!    may refuse with an ordinary response (`403` Origin, `429` rate or
//!    per-client connections, `503` connections in all); nothing reaches
//!    a backend. They see every claimed handshake, valid or not, as
//!    nginx's `limit_req` counts every request.
//!    **Validate.** An HTTP/1.1 handshake without a `Host` header, with
//!    two, or with an invalid one (RFC 9112 §3.2), a missing, repeated or
//!    malformed `Sec-WebSocket-Key`, or a handshake with a body is
//!    answered `400` with the reason (HTTP/2 handshakes carry no key and
//!    name their authority in `:authority`); a `Sec-WebSocket-Version`
//!    other than 13 is answered `426` with `Sec-WebSocket-Version: 13`.
//!    Nothing reaches a backend. While [shutting down](Tunnels::shutdown),
//!    handshakes are answered `503`.
//!    **Select.** With [`WebSocketProxyLayer::with_backends`], a
//!    [balancing strategy](balance) picks a backend among the healthy
//!    ones of a live [`Backends`](balance::Backends) set (`503` when none
//!    is usable); a connect failure moves on to the next one.
//! 3. **Connect and hand-shake.** TCP connect (plus TLS for `wss://`
//!    backends, feature `tls`, see `tls`) within the
//!    [connect timeout](WebSocketProxyLayer::connect_timeout), then the
//!    upgrade request with the client's end-to-end headers, minus
//!    hop-by-hop ones, plus [forwarding headers](forward), within the
//!    [handshake timeout](WebSocketProxyLayer::handshake_timeout):
//!    - a `101` with `Upgrade: websocket` and the right
//!      `Sec-WebSocket-Accept` opens a tunnel;
//!    - any other status goes to the client as an ordinary response
//!      (status, headers, body) and no tunnel ever opens, so bytes the
//!      client sends next are parsed as HTTP, never tunnelled (this is what
//!      stops WebSocket request smuggling);
//!    - a `101` with a wrong accept key or protocol is answered `502`;
//!    - a refused connection or unresolvable host is answered `502`, a
//!      connect or handshake timeout `504`.
//! 4. **Respond.** `101` to the client with the backend's headers as sent
//!    (`Sec-WebSocket-Protocol`, `Sec-WebSocket-Extensions`, `Set-Cookie`,
//!    ...), minus hop-by-hop ones. An HTTP/2 client gets `200` instead,
//!    without `Upgrade`, `Connection` or `Sec-WebSocket-Accept`; its
//!    backend was sent an ordinary HTTP/1.1 upgrade with a key of the
//!    proxy's own, whose accept was checked. A backend's refusal is that
//!    status on the stream.
//! 5. **Relay.** A task tracked by [`Tunnels`] relays bytes both ways,
//!    untouched. See [`relay`](crate#relay) below.
//!
//! # Relay
//!
//! Bytes out equal bytes in: payloads are never copied into buffers of the
//! tunnel, unmasked or re-encoded, so subprotocols and extensions such as
//! `permessage-deflate` (RSV1) work end to end. The relay reads frame
//! *headers* as they pass, which costs a few instructions per frame, and
//! uses them to speak for itself at a frame boundary when it must:
//!
//! - **Graceful shutdown.** [`Tunnels::shutdown`] answers new handshakes
//!   `503` and sends every open WebSocket Close `1001` ("going away"),
//!   never inside a frame, to the client and (masked) to the backend, then
//!   waits for both closing handshakes up to its deadline. nginx, HAProxy,
//!   Envoy and Traefik close at the TCP level instead, so clients see
//!   `1006` and reconnect all at once.
//! - **Keepalive** ([`Keepalive`], off by default): pings silent clients or
//!   backends and closes the tunnel when a pinged peer stays silent; the
//!   answers to the proxy's own pings are not forwarded.
//! - **Limits** ([`MessageLimits`], off by default): a frame or message over
//!   the limit closes with `1009` to the sender and `1001` to the other side
//!   before any of it is forwarded.
//! - **A vanished peer**
//!   ([`close_on_disconnect`](WebSocketProxyLayer::close_on_disconnect), on
//!   by default): when a backend's connection ends without a Close frame
//!   (a crash, `kill -9`, a cut network), its client gets Close `1011`
//!   ("backend went away") at the next frame boundary instead of a bare
//!   TCP close, which browsers report as `1006` and apps often answer by
//!   reconnecting in a tight loop; a backend whose client vanished gets
//!   `1001` ("client went away"), as from a browser tab that closed. The
//!   proxy waits up to 1 s for the answering Close, then closes both
//!   connections. A side that stopped inside a frame leaves no boundary
//!   for a Close: the other side sees the TCP close.
//!
//! Otherwise (a side that sent its Close first, or with
//! `close_on_disconnect(false)`) a TCP half-close is passed on and the
//! other direction keeps flowing for the
//! [half-close timeout](WebSocketProxyLayer::half_close_timeout), and a
//! reset on one side closes the other at once. No application traffic in
//! either direction for the [idle timeout](WebSocketProxyLayer::idle_timeout)
//! closes both. An idle tunnel holds no copy buffers. Each tunnel logs one
//! `tunnel` span (client, route, upstream, status) with a closing event
//! carrying the duration, bytes, frames, messages and close codes each way
//! and how it ended; [`Tunnels::stats`] adds them up.

//! # Serving
//!
//! [`serve::Server`] does all of the following, and bounds what untrusted
//! clients can hold (timeouts for every connection state, connection
//! limits, HTTP/2 handshake bounds); `axum::serve` and a bare hyper-util
//! accept loop do not, and leave a client that connects and says nothing
//! connected for ever. With a server of your own:
//!
//! - **Upgrades.** The client's side of the upgrade needs a server that
//!   supports upgrades: `axum::serve`, or hyper's
//!   `serve_connection(..).with_upgrades()` (hyper-util's
//!   `serve_connection_with_upgrades`). Without it — or under axum-test's
//!   default mock transport, which has no connection at all — claimed
//!   handshakes are answered `501 Not Implemented` with a plain-text body
//!   saying so, before any backend is contacted, and logged at `WARN`;
//!   see [Testing](#testing-an-app-that-proxies-websockets).
//! - **`TCP_NODELAY`.** Set it on accepted connections, as nginx's
//!   `tcp_nodelay on` does. The proxy sets it toward backends, but it
//!   cannot reach the client's socket through hyper's upgrade; without it,
//!   a relayed frame split across writes can wait for Nagle's algorithm and
//!   the client's delayed ACK (measured here: 16 KiB messages at 2% of the
//!   throughput). With axum:
//!   `listener.tap_io(|tcp| { let _ = tcp.set_nodelay(true); })`
//!   (`axum::serve::ListenerExt`); with hyper, call `set_nodelay` after
//!   `accept`.
//! - **HTTP/2.** For browsers to open WebSockets over HTTP/2 the server
//!   must advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL`: `axum::serve` does
//!   (with axum's `http2` feature); with hyper-util's builder call
//!   `http2().enable_connect_protocol()` and serve
//!   `serve_connection_with_upgrades`. Without it, browsers use HTTP/1.1.
//!   **Windows:** hyper's defaults give a stream and the whole connection
//!   the same 1 MiB receive window, so one WebSocket whose backend stops
//!   reading fills the connection's window and stalls the uploads of every
//!   other stream on it (measured in `tests/tests/h2.rs`). With hyper-util's
//!   builder set `initial_stream_window_size(`[`HTTP2_STREAM_WINDOW`]`)`
//!   and `initial_connection_window_size(`[`HTTP2_CONNECTION_WINDOW`]`)`
//!   (and `max_frame_size(`[`HTTP2_MAX_FRAME_SIZE`]`)` for bulk data): a
//!   stalled
//!   WebSocket then holds at most 256 KiB (that is also the most a client
//!   can make the server hold per stream), and 31 can stall before the
//!   others feel it. `axum::serve` cannot set them; the `hyper_server`
//!   example and the gateway do.
//! - **The client address.** Serve with
//!   `into_make_service_with_connect_info::<SocketAddr>()` or insert a
//!   [`ClientAddr`]; see [`forward`] for what happens without one.
//!
//! # Testing an app that proxies WebSockets
//!
//! With [axum-test](https://docs.rs/axum-test), serve the app with its
//! **HTTP transport** (`TestServer::builder().http_transport()`). A proxied
//! WebSocket takes over the client's connection (hyper's upgrade) and
//! relays it to the backend's, so it needs a real one: the default mock
//! transport calls the `Router` with no connection behind the request,
//! and there a claimed handshake is answered `501 Not Implemented` with a
//! body saying to use the HTTP transport (no backend is contacted; plain
//! routes work as ever, and validation and admission refusals still come
//! first). axum-test opens WebSockets over its HTTP transport only anyway.
//!
//! **The client address.** Give `build` what `main` serves:
//! `app.into_make_service_with_connect_info::<SocketAddr>()`. axum-test
//! serves it with `axum::serve` on 127.0.0.1, so requests carry
//! `ConnectInfo<SocketAddr>` with the test client's address, the backend
//! gets `X-Forwarded-For: 127.0.0.1`, and per-client limits
//! ([`Key::client_ip`](admit::Key::client_ip)) count by it, as in
//! production. A bare `Router` is served without `ConnectInfo`: the proxy
//! then does not know the client (no `X-Forwarded-For`, and per-client
//! limits do not apply to it). To play other clients, add an outermost
//! `axum::Extension(ClientAddr(addr))` layer: a [`ClientAddr`] is read
//! before `ConnectInfo`. axum's `MockConnectInfo` does not reach the
//! proxy: it only feeds axum's `ConnectInfo` extractor.
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{Router, routing::get};
//! use axum_test::TestServer;
//! use http::StatusCode;
//! use wsproxy::{Route, WebSocketProxyLayer};
//!
//! fn app(backend: SocketAddr) -> Router {
//!     let chat = WebSocketProxyLayer::new(format!("ws://{backend}").parse().unwrap())
//!         .route(Route::prefix("/chat"));
//!     Router::new()
//!         .route("/", get(|| async { "home" }))
//!         .layer(chat)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let backend = echo_backend().await;
//! // A real socket, served as `main` serves the app.
//! let server = TestServer::builder()
//!     .http_transport()
//!     .build(app(backend).into_make_service_with_connect_info::<SocketAddr>());
//!
//! // This backend first says which X-Forwarded-For it got, then echoes.
//! let mut ws = server.get_websocket("/chat/room").await.into_websocket().await;
//! ws.assert_receive_text("x-forwarded-for: 127.0.0.1").await;
//! ws.send_text("hello").await;
//! ws.assert_receive_text("hello").await;
//! server.get("/").await.assert_text("home");
//!
//! // Another client, as far as the proxy and admission checks can tell.
//! let other = app(backend).layer(axum::Extension(wsproxy::ClientAddr(
//!     "192.0.2.7:50000".parse().unwrap(),
//! )));
//! let as_other = TestServer::builder()
//!     .http_transport()
//!     .build(other.into_make_service_with_connect_info::<SocketAddr>());
//! let mut ws = as_other.get_websocket("/chat/room").await.into_websocket().await;
//! ws.assert_receive_text("x-forwarded-for: 192.0.2.7").await;
//!
//! // The default mock transport has no connection to upgrade.
//! let mock = TestServer::new(app(backend));
//! mock.get_websocket("/chat/room")
//!     .await
//!     .assert_status(StatusCode::NOT_IMPLEMENTED)
//!     .assert_text_contains("use the HTTP transport");
//! mock.get("/").await.assert_text("home");
//! # }
//! #
//! # /// A tokio-tungstenite backend on 127.0.0.1: greets with the
//! # /// X-Forwarded-For of the handshake, then echoes.
//! # async fn echo_backend() -> SocketAddr {
//! #     use futures_util::{SinkExt, StreamExt};
//! #     use tokio_tungstenite::tungstenite::{Message, handshake::server::{Request, Response}};
//! #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! #     let addr = listener.local_addr().unwrap();
//! #     tokio::spawn(async move {
//! #         while let Ok((tcp, _)) = listener.accept().await {
//! #             tokio::spawn(async move {
//! #                 let mut seen = String::from("none");
//! #                 let callback = |request: &Request, response: Response| {
//! #                     if let Some(value) = request.headers().get("x-forwarded-for") {
//! #                         seen = value.to_str().unwrap().to_owned();
//! #                     }
//! #                     Ok(response)
//! #                 };
//! #                 let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
//! #                     return;
//! #                 };
//! #                 let greeting = format!("x-forwarded-for: {seen}");
//! #                 if ws.send(Message::text(greeting)).await.is_ok() {
//! #                     let (write, read) = ws.split();
//! #                     let _ = read.forward(write).await;
//! #                 }
//! #             });
//! #         }
//! #     });
//! #     addr
//! # }
//! ```

//!
//! # How the code is laid out
//!
//! Imports run one way, along the path of one connection (no module
//! imports one above it):
//!
//! | layer | modules |
//! | --- | --- |
//! | tower face | `layer`, `service` ([`WebSocketProxyLayer`], [`WebSocketProxy`]); [`serve`] in front of it |
//! | orchestrator | `proxy`: one claimed handshake, start to tunnel (`claim`, `backend`, `tunnel`) |
//! | phases | `handshake` (validate, translate, respond), [`admit`], [`balance`], [`connect`], `relay`, `tunnels` |
//! | shared vocabulary | `opening` (what a handshake is), `frame` (codec, close codes), `client` (who the client is, keys), `settings`, `outcome`, `drain`, [`forward`], `plain`, `body`, `future`, [`metrics`] |
//!
//! A phase uses another's public face only where the work is the same:
//! health probes connect as handshakes do, and a refused handshake's
//! body outlives it in a task the tunnels' shutdown waits for.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admit;
pub mod balance;
mod body;
mod client;
mod clock;
pub mod connect;
mod drain;
pub mod forward;
mod frame;
mod future;
mod handshake;
#[cfg(feature = "http-proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-proxy")))]
pub mod http_proxy;
mod layer;
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub mod metrics;
mod opening;
mod outcome;
mod plain;
#[cfg(any(feature = "forward-auth", feature = "jwt"))]
mod pooling;
mod proxy;
mod random;
#[cfg(any(feature = "serve", feature = "tls"))]
mod read_buffer;
mod relay;
mod route;
#[cfg(feature = "serve")]
#[cfg_attr(docsrs, doc(cfg(feature = "serve")))]
pub mod serve;
mod service;
mod settings;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
mod tunnels;
mod upstream;

/// Entry points for the fuzz targets in `fuzz/`; only built by
/// `cargo fuzz` (which sets `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Feed `data` to the frame-header parser in several ways that must
    /// agree; panics if they do not.
    pub fn frame_tracker(data: &[u8], seed: u8) {
        crate::frame::check_consistency(data, seed);
    }
}

pub use body::{BoxError, ResponseBody};
pub use client::{ClientAddr, ClientTls};
pub use forward::HostHeader;
pub use future::ResponseFuture;
pub use layer::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HALF_CLOSE_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, WebSocketProxyLayer,
};
pub use opening::is_handshake;
pub use route::Route;
pub use service::{UpgradeRequired, WebSocketProxy};
pub use settings::{Keepalive, MessageLimits};
pub use tunnels::{EndCounts, SideStats, TunnelStats, Tunnels};
pub use upstream::{InvalidUpstream, Upstream};

/// The HTTP/2 receive window per stream that serving docs recommend
/// (256 KiB): what one WebSocket whose backend stops reading can hold. See
/// "Serving" in the [crate docs](crate).
pub const HTTP2_STREAM_WINDOW: u32 = 256 * 1024;

/// The HTTP/2 receive window per connection that serving docs recommend
/// (8 MiB, 32 streams' worth): well above [`HTTP2_STREAM_WINDOW`], so a
/// stalled WebSocket does not stall the others on its connection.
pub const HTTP2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// The largest HTTP/2 frame payload that serving docs recommend a server
/// accept (64 KiB; HTTP/2's default is 16 KiB, nginx accepts 16 MiB). A
/// client then sends a 16 KiB WebSocket message, whose frame header makes
/// it a few bytes over 16 KiB, as one DATA frame instead of two, and the
/// proxy reads and forwards it in one piece (with
/// `SETTINGS_MAX_FRAME_SIZE` at 16 KiB the proxy's CPU per MB of 16 KiB
/// messages was 12-15% higher; BENCHMARKS.md). A connection's read buffer
/// grows to at most one frame: a client can make each of its connections
/// hold 64 KiB by announcing a frame that large (16 KiB at HTTP/2's
/// default); `serve::ConnectionLimits` bound that by bounding connections.
pub const HTTP2_MAX_FRAME_SIZE: u32 = 64 * 1024;
