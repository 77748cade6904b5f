//! Backend selection: a live set of backends per route, balancing
//! strategies, health checks, retries.
//!
//! A route of [`WebSocketProxyLayer::with_backends`](crate::WebSocketProxyLayer::with_backends)
//! proxies to a [`Backends`] set instead of one URL. For each handshake
//! the set lists the *usable* backends — up by both health checks, not
//! draining, below their [`max_conns`](Backend::max_conns); primaries, or
//! [backups](Backend::backup) only while no primary is usable — and its
//! [`Strategy`] picks one:
//!
//! | strategy | picks | note |
//! | --- | --- | --- |
//! | [`RoundRobin`] (default) | in turn, by weight | smooth: weights 5, 1, 1 give `a a b a c a a` |
//! | [`LeastConn`] | fewest open tunnels / weight | ties in turn |
//! | [`PowerOfTwo`] | the lighter of two at random | no herd across proxy instances |
//! | [`ConsistentHash`] | by a [`Key`](crate::admit::Key) of the request | moves only 1/N of keys when N changes; optional bounded load |
//! | yours | anything | implement [`Strategy`] |
//!
//! [Sticky cookies](Backends::sticky_cookie) sit in front of any of them.
//!
//! # Load
//!
//! A backend's load is its open tunnels: counted from the moment it is
//! chosen until the tunnel *ends*, not when the handshake's response is
//! sent (the load unit moves into the tunnel task). Least connections,
//! power of two, bounded loads and `max_conns` all see tunnels that have
//! been open for hours.
//!
//! # Health
//!
//! - **Passive** ([`PassiveHealth`], on by default with nginx's semantics):
//!   `max_fails` failed handshakes within `fail_timeout` skip a backend for
//!   `fail_timeout`.
//! - **Active** ([`ActiveHealth`], off by default): TCP, HTTP or WebSocket
//!   probes with interval, timeout, rise and fall.
//! - Optional [slow start](Backends::slow_start) for a backend that comes
//!   back, and optional [closing of the tunnels](Backends::close_tunnels_when_down)
//!   of one that goes down or is removed.
//!
//! When no backend is usable, the handshake is answered
//! **`503 Service Unavailable`** (as HAProxy does; nginx says `502`): the
//! proxy did not get a bad answer from anyone, there was nobody to ask.
//! The log line names the route. A backend that was tried and failed
//! gives its own status (`502`, or `504` for a timeout).
//!
//! # Retries
//!
//! A connect that is refused or times out, a failed TLS handshake with a
//! `wss://` backend, or a backend that closes or breaks the exchange
//! before answering, moves the handshake on to the
//! next candidate (the strategy picks again without the ones tried), up to
//! [`tries`](Backends::tries) and within the
//! [handshake timeout](crate::WebSocketProxyLayer::handshake_timeout),
//! which bounds the whole backend handshake, retries included. Nothing has
//! been sent to the client at that point. An answer of the backend — a
//! `101`, or any other status — is never retried.
//!
//! # Changing the set at runtime
//!
//! [`Backends`] is a handle: [`insert`](Backends::insert),
//! [`remove`](Backends::remove) and [`drain`](Backends::drain) act at once
//! and leave open tunnels alone (unless told otherwise);
//! [`discover`](Backends::discover) follows a
//! [`tower::discover::Discover`] stream. [`status`](Backends::status)
//! lists each backend with its load and health.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use wsproxy::admit::Key;
//! use wsproxy::balance::{ActiveHealth, Backends, ConsistentHash, Probe};
//! use wsproxy::{Route, WebSocketProxyLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let chat = Backends::new([
//!     "ws://127.0.0.1:9001".parse().unwrap(),
//!     "ws://127.0.0.1:9002".parse().unwrap(),
//!     "ws://127.0.0.1:9003".parse().unwrap(),
//! ])
//! .strategy(ConsistentHash::new(Key::query("room")))
//! .active_health(ActiveHealth::new(Probe::websocket("/")).interval(Duration::from_secs(2)));
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(WebSocketProxyLayer::with_backends(chat).route(Route::prefix("/chat")));
//! # }
//! ```

mod backend;
#[cfg(feature = "dns")]
mod dns;
mod health;
mod member;
pub(crate) mod pick;
pub(crate) mod set;
mod sticky;
mod strategy;
#[cfg(test)]
mod tests;

pub use backend::{Backend, BackendId, InvalidBackendId};
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub use dns::DnsDiscover;
pub use health::{ActiveHealth, PassiveHealth, Probe};
pub use set::{BackendStatus, Backends};
pub use strategy::{Candidate, ConsistentHash, LeastConn, PowerOfTwo, RoundRobin, Strategy};
