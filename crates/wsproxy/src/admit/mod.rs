//! Admission: checks a WebSocket handshake must pass before any backend is
//! contacted, each a tower layer of its own.
//!
//! An [`Admission`] looks at a handshake and either lets it on or refuses
//! it with an ordinary HTTP response (a [`Refusal`]), at once or after
//! asking something over the network ([`Admitting`]: a check that decides
//! at once costs no allocation or task). [`from_fn`] and
//! [`from_async_fn`] make one of a closure. [`AdmitLayer`] turns
//! one into a layer that checks WebSocket handshakes only: every other
//! request passes untouched, so admission layers stack on an app next to
//! its plain routes, and compose with tower-http's `CorsLayer` or
//! `TraceLayer` and with each other in a `ServiceBuilder`.
//!
//! Provided: [`OriginCheck`] (an allow-list of `Origin`s, `403`),
//! `RateLimit` (handshakes per second per client and in all, `429` with
//! `Retry-After`; feature `rate-limit`, on by default) and
//! [`ConnectionLimit`] (open tunnels, globally `503` and per client `429`),
//! `ForwardAuth` (ask an auth service, nginx's `auth_request`; feature
//! `forward-auth`), `JwtAuth` (a signed token; feature `jwt`) and
//! `SharedLimit` (rate and connection limits kept in Redis for every
//! instance; feature `redis`). [`Key`] says who "a client" is for the per-client ones.
//!
//! # Order
//!
//! Put them outside the proxy layer, in this order (outermost first), for
//! these reasons:
//!
//! 0. **[`ResolveClient`]**, if behind trusted proxies: it decides once who
//!    the client is for every check and log after it.
//! 1. **Origin** next: a cross-site page must be refused before it can
//!    use up anything that belongs to the user it rides on (rate or
//!    connection budget).
//! 2. **Rate limits** next: cheap, and they protect what follows.
//! 3. **Authentication** (`ForwardAuth`, `JwtAuth`, or
//!    your own [`from_async_fn`]) next: it asks over the network, so the
//!    cheap checks go first (as nginx runs `limit_req` before
//!    `auth_request`), and a limit per user after it can key on what it
//!    found.
//! 4. **Connection limits** last, right before the proxy: they take a
//!    permit that is held for the tunnel's whole life, and a check after
//!    them that refused would only take it and give it back.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower::ServiceBuilder;
//! use wsproxy::admit::{ConnectionLimit, Key, OriginCheck};
//! use wsproxy::WebSocketProxyLayer;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(OriginCheck::new(["https://app.example"]).layer())
//!             .layer(
//!                 ConnectionLimit::new()
//!                     .max_open(10_000)
//!                     .max_open_per_key(Key::client_ip(), 20)
//!                     .layer(),
//!             )
//!             .layer(WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap())),
//!     );
//! ```
//!
//! # Holding something for the life of a tunnel
//!
//! A WebSocket lives as long as its tunnel, not its handshake request. An
//! admission that counts open WebSockets puts its permit in the request's
//! [`Holds`]; the proxy moves them into the tunnel task and drops them when
//! the tunnel ends. If the handshake is refused later or fails, they drop
//! with the request.
//!
//! Admission layers also check the WebSocket handshakes the app answers
//! itself (its own axum `WebSocketUpgrade` routes). For those, nothing
//! moves the permits into the WebSocket's task unless the handler does:
//! take the `Holds` extension (present when an admission holds something)
//! and keep it in the upgraded task, or the permits return at the `101`.
//!
//! ```
//! use axum::extract::ws::{WebSocket, WebSocketUpgrade};
//! use axum::{Extension, response::Response};
//! use wsproxy::admit::Holds;
//!
//! async fn own_socket(ws: WebSocketUpgrade, holds: Option<Extension<Holds>>) -> Response {
//!     ws.on_upgrade(move |socket: WebSocket| async move {
//!         let _holds = holds; // released when this WebSocket ends
//!         drop(socket);
//!     })
//! }
//! ```

mod admission;
mod connections;
#[cfg(feature = "forward-auth")]
mod forward_auth;
mod function;
mod holds;
#[cfg(feature = "jwt")]
mod jwt;
mod layer;
mod origin;
#[cfg(feature = "rate-limit")]
mod rate;
mod resolve;
#[cfg(feature = "redis")]
mod shared;

pub use self::admission::{Admission, Admitting, Refusal, Verdict};
pub use self::connections::ConnectionLimit;
#[cfg(feature = "forward-auth")]
#[cfg_attr(docsrs, doc(cfg(feature = "forward-auth")))]
pub use self::forward_auth::ForwardAuth;
pub use self::function::{AdmitAsyncFn, AdmitFn, from_async_fn, from_fn};
pub use self::holds::{Expires, Holds};
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use self::jwt::{Claims, InvalidKey, JwtAuth, TokenFrom};
pub use self::layer::{Admit, AdmitLayer};
pub use self::origin::OriginCheck;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub use self::rate::RateLimit;
pub use self::resolve::ResolveClient;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::shared::SharedLimit;
pub use crate::client::{ClientIp, ForwardedBy, Key, client_ip};
pub use crate::settings::Rate;
