//! What wsproxy's tests, benchmarks and examples share, each kept once.
//!
//! Everything here talks to real sockets on 127.0.0.1 and knows nothing of
//! wsproxy itself (the library can take it as a dev-dependency): what a
//! test builds around the proxy stays with the test.
//!
//! # Backends
//! - [`spawn_echo`]: a plain tokio-tungstenite echo, as `wsproxy-bench
//!   echo` and the examples run it; [`echo_backend`] for a test.
//! - [`Backend`]: an echo that records what it sees (handshakes, messages)
//!   and obeys `server-ping`, `server-close` and `server-drop`.
//! - [`TlsBackend`]: a `wss://` echo that records each client hello and can
//!   demand a client certificate.
//! - [`RawBackend`]: answers each handshake with a fixed text, recording the
//!   bytes it gets; [`scripted_backend`] runs a script on one connection;
//!   [`silent_backend`] never answers; [`stalled_backend`] completes the
//!   handshake and never reads; [`closed_port`] refuses connects.
//!
//! # Clients
//! - Raw HTTP/1.1: [`raw`], [`handshake`], [`read_head`] and the [`Head`]
//!   it reads, [`read_body`], [`read_to_close`].
//! - WebSockets: [`connect`], [`echo`], [`raw_websocket`], and frames by
//!   hand: [`ws_frame`], [`read_frame`], [`parse_frame`].
//! - HTTP/2: [`h2`], [`h2_client`], [`connect_request`], [`open`],
//!   [`h2_get`], [`h2_frames`].
//!
//! # Certificates
//! [`Ca`] makes a CA at run time, [`Leaf`] a certificate it signed, as PEM
//! in memory, as rustls configurations and as files ([`PemFiles`]). No key
//! is ever committed.
//!
//! # Time, logs and processes
//! [`LIMIT`], [`within`] and [`wait_until`] bound every wait; [`Captured`]
//! holds log lines; [`python_backend`] runs a Python `websockets` script of
//! `py/` in a child process that is [`Reaped`] on drop; [`RedisServer`]
//! runs a `redis-server` of the test's own, [`DnsServer`] a name server.
//!
//! # Example
//! ```
//! use wsproxy_test_support::{Backend, connect, echo, within};
//! use tokio_tungstenite::tungstenite::Message;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let backend = Backend::start().await;
//! let mut ws = connect(&backend.url()).await;
//! echo(&mut ws, Message::text("hello")).await;
//! assert_eq!(backend.connections(), 1);
//! assert_eq!(backend.last_uri(), "/");
//! # }
//! ```

mod dns;
mod echo;
mod frame;
mod h2;
mod http;
mod log;
mod python;
mod raw;
mod redis;
mod time;
mod tls;
mod ws;

pub use dns::DnsServer;
pub use echo::{Backend, BackendOptions, Seen, echo_backend, spawn_echo};
pub use frame::{Frame, parse_frame, read_frame, ws_frame};
pub use h2::{
    GOAWAY, H2_PREFACE, H2Sender, H2Socket, connect_request, extended_connect, h2, h2_client,
    h2_connection, h2_frames, h2_get, open,
};
pub use http::{
    Head, handshake, header, proxy_v1, proxy_v2, raw, read_at_least, read_body, read_body_and_rest,
    read_head, read_head_after, read_to_close,
};
pub use log::{Captured, Capturing};
pub use python::{Reaped, python_backend, python_script};
pub use raw::{
    RawBackend, accept_key, closed_port, read_request_head, scripted_backend, silent_backend,
    stalled_backend, switching_protocols,
};
pub use redis::RedisServer;
pub use time::{LIMIT, wait_until, within};
pub use tls::{Ca, Hello, Leaf, PemFiles, TlsBackend};
pub use ws::{WsClient, big, close_code, connect, connect_with, echo, raw_websocket};
