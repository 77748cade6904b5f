use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tower::Layer;

use crate::admit::Admission;
use crate::balance::Backends;
use crate::handshake::Translation;
use crate::proxy::{Config, Handshakes};
use crate::settings::Settings;
use crate::{
    HostHeader, Keepalive, MessageLimits, Route, Tunnels, UpgradeRequired, Upstream, WebSocketProxy,
};

/// Default TCP connect timeout toward a backend.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a backend has to answer the upgrade request.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idle timeout of a tunnel.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default linger after one side of a tunnel closed its sending half.
pub const DEFAULT_HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Applies [`WebSocketProxy`] to a service: WebSocket handshakes that match
/// the [`Route`] go to the [`Upstream`], everything else to the service.
///
/// See the [crate docs](crate) for the path of one connection.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use wsproxy::{Route, WebSocketProxyLayer};
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(
///         WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap())
///             .route(Route::prefix("/chat"))
///             .strip_prefix(true)
///             .idle_timeout(Some(Duration::from_secs(3600))),
///     );
/// ```
#[derive(Clone)]
#[must_use]
pub struct WebSocketProxyLayer {
    config: Config,
    /// Checks added with [`admit`](Self::admit), in order.
    admissions: Vec<Arc<dyn Admission>>,
}

impl std::fmt::Debug for WebSocketProxyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketProxyLayer")
            .field("config", &self.config)
            .field("admissions", &self.admissions.len())
            .finish()
    }
}

impl WebSocketProxyLayer {
    /// Proxy every WebSocket handshake to `upstream`.
    pub fn new(upstream: Upstream) -> Self {
        Self::with_backends(Backends::from(upstream))
    }

    /// Proxy every WebSocket handshake to one of `backends`, chosen by its
    /// strategy among the healthy ones, with retries. See [`balance`](crate::balance).
    ///
    /// ```
    /// use wsproxy::balance::{Backends, LeastConn};
    /// use wsproxy::WebSocketProxyLayer;
    ///
    /// let layer = WebSocketProxyLayer::with_backends(
    ///     Backends::new([
    ///         "ws://127.0.0.1:9001".parse().unwrap(),
    ///         "ws://127.0.0.1:9002".parse().unwrap(),
    ///     ])
    ///     .strategy(LeastConn::new()),
    /// );
    /// # drop(layer);
    /// ```
    pub fn with_backends(backends: Backends) -> Self {
        backends.start_probes();
        Self {
            config: Config {
                backends,
                route: Route::any(),
                translation: Translation::default(),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                settings: Arc::new(Settings {
                    idle: Some(DEFAULT_IDLE_TIMEOUT),
                    half_close: DEFAULT_HALF_CLOSE_TIMEOUT,
                    client_keepalive: None,
                    backend_keepalive: None,
                    client_limits: MessageLimits::new(),
                    backend_limits: MessageLimits::new(),
                    close_on_disconnect: true,
                }),
                log_query: true,
                tunnels: Tunnels::new(),
            },
            admissions: Vec::new(),
        }
    }

    fn settings(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.config.settings)
    }

    /// Claim only handshakes that match `route` (default: [`Route::any`]).
    pub fn route(mut self, route: Route) -> Self {
        self.config.route = route;
        self
    }

    /// With a [`Route::prefix`], remove the prefix from the path before
    /// appending it to the upstream's path (default: `false`).
    ///
    /// With route `/chat` and upstream `ws://b/base`, a request for
    /// `/chat/room?id=1` goes to `/base/room?id=1` when stripping and to
    /// `/base/chat/room?id=1` when not.
    pub fn strip_prefix(mut self, strip: bool) -> Self {
        self.config.translation.strip_prefix = strip;
        self
    }

    /// With a [`Route::prefix`] (or [`Route::any`], then in front of the
    /// path), put `replacement` in place of the prefix
    /// before appending the path to the upstream's (Envoy's
    /// `prefix_rewrite`; nginx's `location /old/ { proxy_pass http://b/new/; }`).
    /// A trailing `/` of `replacement` is ignored; `""` is the same as
    /// [`strip_prefix(true)`](Self::strip_prefix), which this overrides.
    ///
    /// ```
    /// use wsproxy::{Route, WebSocketProxyLayer};
    ///
    /// // `/chat/room?id=1` reaches the backend as `/v2/rooms/room?id=1`,
    /// // `/chat` as `/v2/rooms`.
    /// let layer = WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap())
    ///     .route(Route::prefix("/chat"))
    ///     .rewrite_prefix("/v2/rooms/");
    /// # let _ = layer;
    /// ```
    pub fn rewrite_prefix(mut self, replacement: impl Into<String>) -> Self {
        let replacement = replacement.into();
        self.config.translation.rewrite_prefix = Some(replacement.trim_end_matches('/').to_owned());
        self
    }

    /// The `Host` header sent to the backend (default:
    /// [`HostHeader::Upstream`]).
    pub fn host_header(mut self, host: HostHeader) -> Self {
        self.config.translation.host_header = host;
        self
    }

    /// Whether the log lines of a tunnel (its `tunnel` span: client,
    /// method, path, route, Origin, User-Agent, backend, status,
    /// subprotocol) show the request's query string (default: `true`);
    /// `false` logs `?<redacted>` in its place, for queries that carry
    /// tokens.
    ///
    /// ```
    /// use wsproxy::WebSocketProxyLayer;
    ///
    /// let layer = WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap())
    ///     .log_query(false);
    /// # drop(layer);
    /// ```
    pub fn log_query(mut self, enabled: bool) -> Self {
        self.config.log_query = enabled;
        self
    }

    /// Also send an RFC 7239 `Forwarded` header (default: `false`;
    /// `X-Forwarded-For/-Proto/-Host` are always sent). See
    /// [the forwarding rules](crate::forward).
    pub fn forwarded_header(mut self, enabled: bool) -> Self {
        self.config.translation.forwarded_header = enabled;
        self
    }

    /// Peers whose forwarding headers are trusted and appended to (default:
    /// none, so a client's `X-Forwarded-For` is replaced by its address).
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.config.translation.trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// Time allowed for the TCP connect to the backend, TLS handshake
    /// included for a `wss://` one (default: 5 s); exceeding it answers
    /// `504 Gateway Timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How the proxy talks TLS to `wss://` backends: sets
    /// [`Backends::tls`] on this layer's backend set, for handshakes and
    /// health probes (default: [`BackendTls::new`](crate::tls::BackendTls::new),
    /// Mozilla's roots). See [`tls`](crate::tls).
    ///
    /// ```
    /// use wsproxy::tls::BackendTls;
    /// use wsproxy::WebSocketProxyLayer;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::env::temp_dir().join(format!("wsproxy-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let ca_path = dir.join("internal-ca.pem");
    /// # let ca_key = rcgen::KeyPair::generate()?;
    /// # let mut ca = rcgen::CertificateParams::new(Vec::new())?;
    /// # ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    /// # std::fs::write(&ca_path, ca.self_signed(&ca_key)?.pem())?;
    /// let layer = WebSocketProxyLayer::new("wss://chat.internal/ws".parse()?)
    ///     .backend_tls(BackendTls::new().add_ca_pem_file(&ca_path)?);
    /// # drop(layer);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn backend_tls(self, tls: crate::tls::BackendTls) -> Self {
        self.config.backends.state.dialer.set(tls);
        self
    }

    /// How connections to backends are opened: sets
    /// [`Backends::connector`] on this layer's backend set, for handshakes
    /// and health probes (default: TCP). See
    /// [`Connector`](crate::connect::Connector) for a Unix socket example.
    ///
    /// Like [`backend_tls`](Self::backend_tls), it changes the backend
    /// set itself: every layer (and clone of this one) over the same
    /// [`Backends`] connects through it.
    pub fn connector(self, connector: crate::connect::Connector) -> Self {
        self.config.backends.state.dialer.set_connector(connector);
        self
    }

    /// Time allowed for the whole backend handshake — connects, the
    /// backend's answer, and [retries](crate::balance#retries) on other
    /// backends (default: 10 s); exceeding it answers
    /// `504 Gateway Timeout`. It also bounds the wait for the client's side
    /// of the upgrade to complete, and the backend's silences while it
    /// sends the body of a refusal (as nginx's `proxy_read_timeout`: the
    /// longest wait between two reads; the client's response then ends
    /// unfinished).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Close a tunnel when no byte has moved in either direction for this
    /// long (default: 10 minutes; `None` never closes an idle tunnel).
    ///
    /// Unlike nginx's `proxy_read_timeout` (60 s by default, which cuts
    /// quiet WebSockets), traffic either way counts, and the default is
    /// far above the ping intervals of common clients (socket.io 25 s,
    /// graphql-ws 12 s) while still reclaiming dead tunnels.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings().idle = timeout;
        self
    }

    /// After one side ends its sending half (TCP FIN), how long the other
    /// direction may keep flowing before the tunnel is closed (default:
    /// 5 s). A WebSocket closing handshake finishes well within it. It is
    /// also how long the proxy waits for the answer to a Close it sent
    /// itself for a [limit](Self::client_limits) or a
    /// [keepalive](Self::client_keepalive), and (at most 1 s) after a side
    /// [vanished](Self::close_on_disconnect).
    pub fn half_close_timeout(mut self, timeout: Duration) -> Self {
        self.settings().half_close = timeout;
        self
    }

    /// When one side's connection ends without a WebSocket Close frame — a
    /// backend that crashed or was killed, a client whose network went
    /// away — send the other side a Close frame of the proxy's own
    /// (default: `true`).
    ///
    /// The client is sent `1011` ("backend went away"), or `1001` ("going
    /// away") if a [shutdown](Tunnels::shutdown) or a
    /// [backend close](crate::balance::Backends::close_tunnels_when_down)
    /// was already under way; a backend is sent `1001` ("client went
    /// away"), masked, as a browser sends it when a page goes away. The
    /// Close goes at the next frame boundary, after everything the
    /// vanished side sent; the proxy then waits for the answering Close
    /// for at most the [half-close timeout](Self::half_close_timeout) or
    /// 1 s, whichever is shorter, and closes both connections. A side that
    /// stopped in the middle of a frame leaves no boundary for a Close:
    /// the other side then sees the connection end as with `false`.
    ///
    /// It is on by default because of what browsers make of a bare TCP
    /// close: `1006` with no reason, which apps take for a network failure
    /// and often answer by reconnecting in a tight loop. A Close with
    /// `1011` or `1001` tells them the server side ended, and code and
    /// reason reach `onclose`. (`1006` itself may never be sent on the
    /// wire.)
    ///
    /// With `false` the proxy keeps byte-for-byte TCP semantics: a FIN is
    /// passed on as a half-close (the other direction keeps flowing for
    /// the half-close timeout) and a reset closes the other side at once,
    /// with no frame of the proxy's own.
    ///
    /// ```
    /// use wsproxy::WebSocketProxyLayer;
    ///
    /// // Pass a backend's FIN or reset on as is, as a TCP proxy would.
    /// let layer = WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap())
    ///     .close_on_disconnect(false);
    /// # drop(layer);
    /// ```
    pub fn close_on_disconnect(mut self, enabled: bool) -> Self {
        self.settings().close_on_disconnect = enabled;
        self
    }

    /// Ping clients that have been silent (default: off). See
    /// [`Keepalive`].
    pub fn client_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.settings().client_keepalive = keepalive;
        self
    }

    /// Ping backends that have been silent (default: off). See
    /// [`Keepalive`].
    pub fn backend_keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.settings().backend_keepalive = keepalive;
        self
    }

    /// Limits on the frames and messages clients send (default: none).
    /// See [`MessageLimits`].
    pub fn client_limits(mut self, limits: MessageLimits) -> Self {
        self.settings().client_limits = limits;
        self
    }

    /// Limits on the frames and messages backends send (default: none).
    /// See [`MessageLimits`].
    pub fn backend_limits(mut self, limits: MessageLimits) -> Self {
        self.settings().backend_limits = limits;
        self
    }

    /// Check this layer's handshakes with `admission` too, before anything
    /// else of the proxy (validation included) and before any backend is
    /// contacted, in the order added.
    ///
    /// It is the very [`Admit`](crate::admit::Admit) middleware of the
    /// [admission layers](crate::admit), in front of this layer's proxy
    /// only: e.g. a connection limit for `/chat` alone. Refusals log and
    /// count as the admission layers' do (target `wsproxy::admit`).
    ///
    /// ```
    /// use wsproxy::admit::{ConnectionLimit, Key, OriginCheck};
    /// use wsproxy::{Route, WebSocketProxyLayer};
    ///
    /// let chat = WebSocketProxyLayer::new("ws://127.0.0.1:9002".parse().unwrap())
    ///     .route(Route::prefix("/chat"))
    ///     .admit(OriginCheck::new(["https://app.example"]))
    ///     .admit(ConnectionLimit::new().max_open_per_key(Key::client_ip(), 5));
    /// # drop(chat);
    /// ```
    pub fn admit(mut self, admission: impl Admission) -> Self {
        self.admissions.push(Arc::new(admission));
        self
    }

    /// Track this layer's tunnels in `tunnels`, e.g. to share one handle
    /// between several layers (default: a handle of its own).
    pub fn tunnels(mut self, tunnels: Tunnels) -> Self {
        self.config.tunnels = tunnels;
        self
    }

    /// The handle over this layer's tunnels.
    pub fn tunnels_handle(&self) -> &Tunnels {
        &self.config.tunnels
    }

    /// A standalone proxy service whose non-WebSocket requests are answered
    /// `426 Upgrade Required`, for `Router::route_service` and
    /// `Router::nest_service`.
    ///
    /// # Example
    ///
    /// ```
    /// use axum::Router;
    /// use wsproxy::WebSocketProxyLayer;
    ///
    /// let proxy = WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap());
    /// let app: Router = Router::new().route_service("/ws", proxy.into_service());
    /// ```
    pub fn into_service(self) -> WebSocketProxy<UpgradeRequired> {
        self.layer(UpgradeRequired::default())
    }
}

impl<S> Layer<S> for WebSocketProxyLayer {
    type Service = WebSocketProxy<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let config = Arc::new(self.config.clone());
        let handshakes = Handshakes::new(config.clone(), &self.admissions);
        WebSocketProxy::from_parts(inner, config, handshakes)
    }
}
