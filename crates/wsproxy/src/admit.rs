//! Admission: checks a WebSocket handshake must pass before any backend is
//! contacted, each a tower layer of its own.
//!
//! An [`Admission`] looks at a handshake and either lets it on or refuses
//! it with an ordinary HTTP response (a [`Refusal`]). [`AdmitLayer`] turns
//! one into a layer that checks WebSocket handshakes only: every other
//! request passes untouched, so admission layers stack on an app next to
//! its plain routes, and compose with tower-http's `CorsLayer` or
//! `TraceLayer` and with each other in a `ServiceBuilder`.
//!
//! Provided: [`OriginCheck`] (an allow-list of `Origin`s, `403`),
//! `RateLimit` (handshakes per second per client and in all, `429` with
//! `Retry-After`; feature `rate-limit`, on by default) and
//! [`ConnectionLimit`] (open tunnels, globally `503` and per client `429`).
//! [`Key`] says who "a client" is for the per-client ones.
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
//! 3. **Connection limits** last, right before the proxy: they take a
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

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::{ResponseBody, ResponseFuture, detect, forward};

#[cfg(feature = "rate-limit")]
mod rate;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub use rate::RateLimit;

/// A check a WebSocket handshake must pass before any backend is contacted.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use http::request::Parts;
/// use wsproxy::admit::{AdmitLayer, Admission, Refusal};
///
/// /// Only handshakes that carry a ticket.
/// struct Ticket;
///
/// impl Admission for Ticket {
///     fn admit(&self, request: &mut Parts) -> Result<(), Refusal> {
///         if request.uri.query().is_some_and(|q| q.contains("ticket=")) {
///             Ok(())
///         } else {
///             Err(Refusal::new(StatusCode::UNAUTHORIZED, "a ticket is required"))
///         }
///     }
/// }
///
/// let layer = AdmitLayer::new(Ticket);
/// # drop(layer);
/// ```
pub trait Admission: Send + Sync + 'static {
    /// Let the handshake on, or refuse it. May add to the request's
    /// extensions, e.g. a permit in its [`Holds`].
    fn admit(&self, request: &mut Parts) -> Result<(), Refusal>;
}

/// A refused handshake: the response the client gets.
#[derive(Debug, Clone)]
pub struct Refusal {
    status: StatusCode,
    reason: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    /// A refusal with `status` and a one-line plain-text body `reason`.
    pub fn new(status: StatusCode, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            headers: Vec::new(),
        }
    }

    /// Add a header to the response (e.g. `Retry-After`).
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let mut response = crate::proxy::refusal(self.status, self.reason);
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

/// Applies an [`Admission`] to the WebSocket handshakes a service gets.
#[derive(Debug, Clone)]
#[must_use]
pub struct AdmitLayer<A> {
    admission: Arc<A>,
}

impl<A> AdmitLayer<A> {
    /// A layer checking handshakes with `admission`.
    pub fn new(admission: A) -> Self {
        Self {
            admission: Arc::new(admission),
        }
    }
}

impl<S, A> Layer<S> for AdmitLayer<A> {
    type Service = Admit<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            inner,
            admission: self.admission.clone(),
        }
    }
}

/// Middleware that refuses WebSocket handshakes an [`Admission`] does not
/// let on, and passes everything else to the inner service unchanged.
///
/// Refusals are responses, never `Service::Error`.
#[derive(Debug, Clone)]
pub struct Admit<S, A> {
    inner: S,
    admission: Arc<A>,
}

impl<S, A> Admit<S, A> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consume `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, A, ReqBody, ResBody> Service<Request<ReqBody>> for Admit<S, A>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    A: Admission,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if !detect::is_handshake(&req) {
            return ResponseFuture::inner(self.inner.call(req));
        }
        let (mut parts, body) = req.into_parts();
        match self.admission.admit(&mut parts) {
            Ok(()) => ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body))),
            Err(refusal) => {
                tracing::info!(
                    status = refusal.status.as_u16(),
                    reason = refusal.reason,
                    uri = %parts.uri,
                    client = %crate::proxy::DisplayPeer(forward::client_addr(&parts.extensions)),
                    client_ip = ?parts.extensions.get::<ClientIp>().map(|ip| ip.0),
                    "handshake refused before any backend was contacted"
                );
                crate::metrics::refused(refusal.status);
                ResponseFuture::proxy(Box::pin(std::future::ready(refusal.into_response())))
            }
        }
    }
}

/// A rate: `requests` per `period`, with room for a burst — of handshakes
/// for `RateLimit`, of messages for
/// [`MessageLimits::max_rate`](crate::MessageLimits::max_rate).
///
/// # nginx's `limit_req`
///
/// `limit_req_zone ... rate=10r/s;` + `limit_req ... burst=20 nodelay;` is
/// `Rate::per_second(10).burst(20)`: 21 handshakes may come at once (one
/// at the rate plus 20 of burst), then one every 100 ms, and every
/// handshake over that is refused at once (`nodelay`: the proxy never
/// queues handshakes). Without `burst`, nginx's default `burst=0` is
/// `burst(0)`: one at a time, one every 100 ms. The algorithm is GCRA
/// (the `governor` crate), which is what nginx's leaky bucket amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Rate {
    requests: NonZeroU32,
    period: Duration,
    burst: u32,
}

impl Rate {
    /// `n` per second (at least 1).
    pub fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// `n` per minute (at least 1).
    pub fn per_minute(n: u32) -> Self {
        Self::new(n, Duration::from_secs(60))
    }

    fn new(n: u32, period: Duration) -> Self {
        Self {
            requests: NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN),
            period,
            burst: 0,
        }
    }

    /// Allow `extra` over the rate at once (nginx's `burst`).
    pub fn burst(mut self, extra: u32) -> Self {
        self.burst = extra;
        self
    }

    /// Time between two requests at the rate.
    pub(crate) fn interval(self) -> Duration {
        self.period / self.requests.get()
    }

    /// Requests over the rate allowed at once.
    pub(crate) fn extra(self) -> u32 {
        self.burst
    }
}

/// What is held for the life of the tunnel a handshake opens (e.g. the
/// permits of [`ConnectionLimit`]), kept in the request's extensions.
#[derive(Clone, Default)]
pub struct Holds(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl Holds {
    /// Hold `value` until the tunnel the request opens ends, or until the
    /// request is dropped if it opens none.
    pub fn push(extensions: &mut http::Extensions, value: impl Any + Send) {
        extensions
            .get_or_insert_default::<Holds>()
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(value));
    }

    /// How many things are held.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Holds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holds").field("len", &self.len()).finish()
    }
}

/// The client's address as resolved once by [`ResolveClient`], in the
/// request's extensions: [`Key::client_ip`] and the proxy's tunnel log use
/// it when present, so every feature agrees on who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Resolves who the client is, once, for every check and log after it:
/// the peer's address, or — only when the peer is one of the trusted
/// proxies — the right-most `X-Forwarded-For` address that is not (see
/// [`client_ip`]). Never refuses; stores a [`ClientIp`].
///
/// # Example
///
/// ```
/// use tower::ServiceBuilder;
/// use wsproxy::admit::{AdmitLayer, ConnectionLimit, Key, ResolveClient};
///
/// // Behind a load balancer on 10.0.0.0/8.
/// let layers = ServiceBuilder::new()
///     .layer(AdmitLayer::new(ResolveClient::new(["10.0.0.0/8".parse().unwrap()])))
///     .layer(ConnectionLimit::new().max_open_per_key(Key::client_ip(), 20).layer());
/// # drop(layers);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ResolveClient {
    trusted: Arc<[IpNet]>,
    header: ForwardedBy,
}

/// The header a trusted proxy puts the client's address in.
///
/// Read one, never "whichever is present": a proxy that appends to
/// `X-Forwarded-For` passes a client's own `Forwarded` header through
/// untouched, and reading that would let the client pick its identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedBy {
    /// `X-Forwarded-For` (nginx, HAProxy, AWS and most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`, its `for=` parameters.
    Forwarded,
}

impl ResolveClient {
    /// Trust forwarding headers from peers in `proxies` (none: the peer
    /// address is the client), reading `X-Forwarded-For`.
    pub fn new(proxies: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            trusted: proxies.into_iter().collect(),
            header: ForwardedBy::XForwardedFor,
        }
    }

    /// Read the client address from `header` instead (default:
    /// [`ForwardedBy::XForwardedFor`]).
    pub fn header(mut self, header: ForwardedBy) -> Self {
        self.header = header;
        self
    }
}

impl Admission for ResolveClient {
    fn admit(&self, request: &mut Parts) -> Result<(), Refusal> {
        if let Some(ip) = resolve(request, &self.trusted, self.header) {
            request.extensions.insert(ClientIp(ip));
        }
        Ok(())
    }
}

/// Who "a client" is, for limits kept per client.
///
/// # Example
///
/// ```
/// use wsproxy::admit::Key;
///
/// // The peer address, or, behind a load balancer on 10.0.0.0/8, the
/// // address it saw (the right-most untrusted `X-Forwarded-For` entry).
/// let by_ip = Key::client_ip().trusting(["10.0.0.0/8".parse().unwrap()]);
/// // An authenticated user id set by an auth layer in an extension.
/// #[derive(Clone)]
/// struct UserId(String);
/// let by_user = Key::custom(|request| request.extensions.get::<UserId>().map(|u| u.0.clone()));
/// # drop((by_ip, by_user));
/// ```
#[derive(Clone)]
pub struct Key {
    kind: KeyKind,
}

/// A user-supplied key function.
type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// A user-supplied origin predicate.
type OriginFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Clone)]
enum KeyKind {
    ClientIp(Arc<[IpNet]>),
    Header(HeaderName),
    Cookie(Arc<str>),
    Query(Arc<str>),
    Path,
    Custom(KeyFn),
}

impl Key {
    /// The client's IP address: a [`ClientIp`] resolved earlier by
    /// [`ResolveClient`], else the peer's, unless the peer is a trusted
    /// proxy (see [`trusting`](Self::trusting)). Spoofed forwarding headers
    /// from untrusted peers change nothing.
    pub fn client_ip() -> Self {
        Self {
            kind: KeyKind::ClientIp(Arc::from([])),
        }
    }

    /// Trust these proxies: when the peer is one of them, the client is
    /// the right-most address in `X-Forwarded-For` that is not (for RFC
    /// 7239 `Forwarded`, use [`ResolveClient`] in front).
    pub fn trusting(self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            kind: KeyKind::ClientIp(proxies.into_iter().collect()),
        }
    }

    /// The value of a request header.
    pub fn header(name: HeaderName) -> Self {
        Self {
            kind: KeyKind::Header(name),
        }
    }

    /// The value of a cookie.
    pub fn cookie(name: &str) -> Self {
        Self {
            kind: KeyKind::Cookie(name.into()),
        }
    }

    /// The value of a query parameter (the first one of that name, as
    /// written: not percent-decoded).
    pub fn query(name: &str) -> Self {
        Self {
            kind: KeyKind::Query(name.into()),
        }
    }

    /// The request path.
    pub fn path() -> Self {
        Self {
            kind: KeyKind::Path,
        }
    }

    /// Whatever `key` returns (`None`: the client has no key, and the
    /// per-key limit does not apply to it).
    pub fn custom(key: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            kind: KeyKind::Custom(Arc::new(key)),
        }
    }

    /// The key of `request`, if it has one.
    pub fn of(&self, request: &Parts) -> Option<String> {
        match &self.kind {
            KeyKind::ClientIp(trusted) => client_ip(request, trusted).map(|ip| ip.to_string()),
            KeyKind::Header(name) => request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            KeyKind::Cookie(name) => cookie(request, name),
            KeyKind::Query(name) => request.uri.query().and_then(|query| {
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == &**name).then(|| v.to_owned())
                })
            }),
            KeyKind::Path => Some(request.uri.path().to_owned()),
            KeyKind::Custom(key) => key(request),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            KeyKind::ClientIp(trusted) => f.debug_tuple("ClientIp").field(trusted).finish(),
            KeyKind::Header(name) => f.debug_tuple("Header").field(name).finish(),
            KeyKind::Cookie(name) => f.debug_tuple("Cookie").field(name).finish(),
            KeyKind::Query(name) => f.debug_tuple("Query").field(name).finish(),
            KeyKind::Path => f.write_str("Path"),
            KeyKind::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// The client's address: a [`ClientIp`] already resolved, else the
/// peer's, or when the peer is trusted, the right-most `X-Forwarded-For`
/// entry that is not a trusted proxy.
///
/// Addresses are compared in canonical form (`::ffff:10.0.0.1` is
/// `10.0.0.1`); `X-Forwarded-For` entries may carry a port
/// (`203.0.113.9:5555`, `[2001:db8::1]:5555`). An entry that is not an
/// address (or a header value that is not text) hides everything left of
/// it: the client is then the right-most address after it.
pub fn client_ip(request: &Parts, trusted: &[IpNet]) -> Option<IpAddr> {
    if let Some(ClientIp(ip)) = request.extensions.get() {
        return Some(*ip);
    }
    resolve(request, trusted, ForwardedBy::XForwardedFor)
}

fn resolve(request: &Parts, trusted: &[IpNet], header: ForwardedBy) -> Option<IpAddr> {
    let peer = forward::client_addr(&request.extensions)?
        .ip()
        .to_canonical();
    let is_trusted = |ip: &IpAddr| forward::is_trusted(*ip, trusted);
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let (name, parse): (HeaderName, fn(&str) -> Option<IpAddr>) = match header {
        ForwardedBy::XForwardedFor => (forward::X_FORWARDED_FOR, address),
        ForwardedBy::Forwarded => (header::FORWARDED, forwarded_for),
    };
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in request.headers.get_all(name) {
        let Ok(value) = value.to_str() else {
            hops.clear();
            continue;
        };
        for hop in value.split(',') {
            match parse(hop) {
                Some(ip) => hops.push(ip.to_canonical()),
                None => hops.clear(),
            }
        }
    }
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .unwrap_or(peer),
    )
}

/// An address, possibly with a port: `192.0.2.1`, `192.0.2.1:80`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Some(bracketed) = text.strip_prefix('[') {
        let (ip, rest) = bracketed.split_once(']')?;
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return ip.parse().ok();
    }
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let (ip, port) = text.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(text: &str) -> bool {
    text.parse::<u16>().is_ok()
}

/// The address in the `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    address(value.trim_matches('"'))
}

pub(crate) fn cookie(request: &Parts, name: &str) -> Option<String> {
    request
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
}

/// Refuses a handshake whose `Origin` is not on an allow-list, with `403
/// Forbidden`, before any backend is contacted.
///
/// Browsers send `Origin` with every WebSocket handshake and do not
/// preflight it, and they attach the user's cookies: a page on any site can
/// open a WebSocket to yours as your logged-in user (cross-site WebSocket
/// hijacking). CORS does not stop it, because CORS governs what a page may
/// *read* from `fetch`, and a WebSocket handshake is never preflighted; the
/// server has to check `Origin` itself. Non-browser clients may send no
/// `Origin`: refused by default, allowed with
/// [`allow_missing`](Self::allow_missing).
///
/// Entries are exact origins (`https://app.example`, scheme and port
/// included, compared case-insensitively) or a wildcard for subdomains
/// (`https://*.example.com` matches `https://a.example.com` and
/// `https://a.b.example.com`, not `https://example.com`).
///
/// # Example
///
/// ```
/// use wsproxy::admit::OriginCheck;
///
/// let layer = OriginCheck::new(["https://app.example", "https://*.app.example"])
///     .allow_missing(true)
///     .layer();
/// # drop(layer);
/// ```
#[derive(Clone)]
#[must_use]
pub struct OriginCheck {
    exact: Vec<String>,
    wildcard: Vec<(String, String)>,
    predicate: Option<OriginFn>,
    allow_missing: bool,
}

impl OriginCheck {
    /// Allow these origins (exact, or `scheme://*.domain` wildcards).
    pub fn new<I, O>(origins: I) -> Self
    where
        I: IntoIterator<Item = O>,
        O: AsRef<str>,
    {
        let mut check = Self {
            exact: Vec::new(),
            wildcard: Vec::new(),
            predicate: None,
            allow_missing: false,
        };
        for origin in origins {
            let origin = origin.as_ref().trim_end_matches('/').to_ascii_lowercase();
            match origin.split_once("://*.") {
                Some((scheme, domain)) => check
                    .wildcard
                    .push((format!("{scheme}://"), format!(".{domain}"))),
                None => check.exact.push(origin),
            }
        }
        check
    }

    /// Also allow origins for which `allow` returns `true`.
    pub fn or(mut self, allow: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(match self.predicate.take() {
            Some(before) => Arc::new(move |origin: &str| before(origin) || allow(origin)),
            None => Arc::new(allow),
        });
        self
    }

    /// Let handshakes without `Origin` on (default: `false`).
    pub fn allow_missing(mut self, allow: bool) -> Self {
        self.allow_missing = allow;
        self
    }

    /// This check as a layer.
    pub fn layer(self) -> AdmitLayer<Self> {
        AdmitLayer::new(self)
    }

    fn allows(&self, origin: &str) -> bool {
        let lower = origin.to_ascii_lowercase();
        self.exact.contains(&lower)
            || self.wildcard.iter().any(|(scheme, suffix)| {
                lower
                    .strip_prefix(scheme.as_str())
                    .and_then(|host| host.strip_suffix(suffix.as_str()))
                    .is_some_and(is_subdomain_labels)
            })
            || self.predicate.as_ref().is_some_and(|allow| allow(origin))
    }
}

/// Whether `labels` is what may stand for `*` in `*.example.com`: one or
/// more non-empty DNS labels, and nothing else (no port, path, query,
/// fragment or userinfo).
fn is_subdomain_labels(labels: &str) -> bool {
    !labels.is_empty()
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Debug for OriginCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginCheck")
            .field("exact", &self.exact)
            .field("wildcard", &self.wildcard)
            .field("predicate", &self.predicate.is_some())
            .field("allow_missing", &self.allow_missing)
            .finish()
    }
}

impl Admission for OriginCheck {
    fn admit(&self, request: &mut Parts) -> Result<(), Refusal> {
        let origins = request.headers.get_all(header::ORIGIN);
        let mut iter = origins.iter();
        match (iter.next(), iter.next()) {
            (None, _) if self.allow_missing => Ok(()),
            (None, _) => Err(Refusal::new(StatusCode::FORBIDDEN, "origin required")),
            (Some(origin), None) if origin.to_str().is_ok_and(|origin| self.allows(origin)) => {
                Ok(())
            }
            _ => Err(Refusal::new(StatusCode::FORBIDDEN, "origin not allowed")),
        }
    }
}

/// Limits on open tunnels: in all (`503 Service Unavailable`) and per
/// client [`Key`] (`429 Too Many Requests`, nginx's `limit_conn`).
///
/// A handshake takes a permit for each limit; the permits are held for the
/// whole life of the tunnel it opens (see [`Holds`]) and given back when
/// the tunnel ends, however it ends. This is what tower's
/// `ConcurrencyLimit` cannot do: it gives its permit back when the
/// handshake's response (the `101`) is sent, while the WebSocket lives on.
///
/// Share one `ConnectionLimit` (it is cheap to clone) between several
/// layers to share the counts.
///
/// # Example
///
/// ```
/// use wsproxy::admit::{ConnectionLimit, Key};
///
/// let limit = ConnectionLimit::new().max_open(10_000).max_open_per_key(Key::client_ip(), 50);
/// let layer = limit.clone().layer();
/// assert_eq!(limit.open(), 0);
/// # drop(layer);
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct ConnectionLimit {
    shared: Arc<Counts>,
    max_open: Option<usize>,
    per_key: Option<(Key, usize)>,
}

#[derive(Debug, Default)]
struct Counts {
    open: AtomicUsize,
    per_key: Mutex<HashMap<String, usize>>,
}

impl ConnectionLimit {
    /// No limits yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `max` open tunnels in all; more are refused with `503`.
    pub fn max_open(mut self, max: usize) -> Self {
        self.max_open = Some(max);
        self
    }

    /// At most `max` open tunnels per `key`; more are refused with `429`.
    pub fn max_open_per_key(mut self, key: Key, max: usize) -> Self {
        self.per_key = Some((key, max));
        self
    }

    /// This limit as a layer.
    pub fn layer(self) -> AdmitLayer<Self> {
        AdmitLayer::new(self)
    }

    /// Tunnels holding a permit now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Tunnels holding a permit of `key` now.
    pub fn open_for(&self, key: &str) -> usize {
        self.shared
            .per_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl Admission for ConnectionLimit {
    fn admit(&self, request: &mut Parts) -> Result<(), Refusal> {
        let key = match &self.per_key {
            Some((key, max)) => key.of(request).map(|key| (key, *max)),
            None => None,
        };
        // The per-key count is checked and taken under its lock, with the
        // global count taken in between: a refusal of either leaves the
        // other untouched, and no entry is made for a refused key.
        let mut counts = key.as_ref().map(|_| {
            self.shared
                .per_key
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        if let (Some(counts), Some((key, max))) = (&counts, &key)
            && counts.get(key).copied().unwrap_or(0) >= *max
        {
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "connection limit per client reached",
            ));
        }
        let max = self.max_open.unwrap_or(usize::MAX);
        let taken = self
            .shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached",
            ));
        }
        Holds::push(&mut request.extensions, GlobalPermit(self.shared.clone()));
        if let (Some(counts), Some((key, _))) = (&mut counts, key) {
            *counts.entry(key.clone()).or_default() += 1;
            Holds::push(
                &mut request.extensions,
                KeyPermit {
                    shared: self.shared.clone(),
                    key,
                },
            );
        }
        Ok(())
    }
}

/// One open tunnel in [`ConnectionLimit`]'s total.
struct GlobalPermit(Arc<Counts>);

impl Drop for GlobalPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open tunnel of a key.
struct KeyPermit {
    shared: Arc<Counts>,
    key: String,
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        let mut counts = self
            .shared
            .per_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Memory follows open tunnels, not clients ever seen.
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().uri("/chat");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(crate::ClientAddr(peer.parse().unwrap()));
        parts
    }

    #[test]
    fn client_ip_trusts_forwarding_headers_only_from_trusted_peers() {
        let spoofed = parts("192.0.2.7:1", &[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(client_ip(&spoofed, &[]), Some("192.0.2.7".parse().unwrap()));
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // Behind two trusted hops: the right-most untrusted entry.
        let behind = parts(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.9, 10.0.0.2")],
        );
        assert_eq!(
            client_ip(&behind, &trusted),
            Some("198.51.100.9".parse().unwrap())
        );
        // Untrusted peer with the same header: the peer.
        let direct = parts("203.0.113.5:1", &[("x-forwarded-for", "198.51.100.9")]);
        assert_eq!(
            client_ip(&direct, &trusted),
            Some("203.0.113.5".parse().unwrap())
        );
        // Nothing but trusted hops: the left-most is as far as we can see.
        let internal = parts("10.0.0.1:1", &[("x-forwarded-for", "10.0.0.3")]);
        assert_eq!(
            client_ip(&internal, &trusted),
            Some("10.0.0.1".parse().unwrap())
        );
        // Only the configured header counts: a client's own `Forwarded`,
        // passed through by a proxy that appends to X-Forwarded-For,
        // changes nothing.
        let spoof = parts(
            "10.0.0.1:1",
            &[
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        );
        assert_eq!(
            client_ip(&spoof, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // RFC 7239 `Forwarded` when asked for.
        let rfc = parts(
            "10.0.0.1:1",
            &[
                (
                    "forwarded",
                    "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https",
                ),
                ("x-forwarded-for", "198.51.100.9"),
            ],
        );
        let via_forwarded = |p: &Parts| resolve(p, &trusted, ForwardedBy::Forwarded);
        assert_eq!(via_forwarded(&rfc), Some("2001:db8::7".parse().unwrap()));
        let rfc = parts(
            "10.0.0.1:1",
            &[("forwarded", "for=\"192.0.2.60:80\", for=unknown")],
        );
        assert_eq!(via_forwarded(&rfc), Some("10.0.0.1".parse().unwrap()));
        let rfc = parts("10.0.0.1:1", &[("forwarded", "For=192.0.2.60;by=10.0.0.1")]);
        assert_eq!(via_forwarded(&rfc), Some("192.0.2.60".parse().unwrap()));
        // Ports, brackets, and IPv4-mapped peers.
        for hop in ["203.0.113.9:5555", "[203.0.113.9]:5555"] {
            let ported = parts("10.0.0.1:1", &[("x-forwarded-for", hop)]);
            assert_eq!(
                client_ip(&ported, &trusted),
                Some("203.0.113.9".parse().unwrap()),
                "{hop}"
            );
        }
        let v6 = parts("10.0.0.1:1", &[("x-forwarded-for", "[2001:db8::1]:5555")]);
        assert_eq!(
            client_ip(&v6, &trusted),
            Some("2001:db8::1".parse().unwrap())
        );
        let mapped = parts("[::ffff:10.0.0.1]:1", &[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            client_ip(&mapped, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // Garbage left of a valid hop does not leak through.
        let garbage = parts(
            "10.0.0.1:1",
            &[("x-forwarded-for", "nonsense, 198.51.100.9")],
        );
        assert_eq!(
            client_ip(&garbage, &trusted),
            Some("198.51.100.9".parse().unwrap())
        );
    }

    #[test]
    fn keys() {
        let p = parts(
            "192.0.2.7:1",
            &[("x-user", "alice"), ("cookie", "a=1; session=xyz; b=2")],
        );
        assert_eq!(Key::client_ip().of(&p).as_deref(), Some("192.0.2.7"));
        assert_eq!(
            Key::header(HeaderName::from_static("x-user"))
                .of(&p)
                .as_deref(),
            Some("alice")
        );
        assert_eq!(Key::cookie("session").of(&p).as_deref(), Some("xyz"));
        assert_eq!(Key::cookie("missing").of(&p), None);
        assert_eq!(Key::path().of(&p).as_deref(), Some("/chat"));
        let mut q = parts("192.0.2.7:1", &[]);
        q.uri = "/chat?room=7&user=bo&flag".parse().unwrap();
        assert_eq!(Key::query("user").of(&q).as_deref(), Some("bo"));
        assert_eq!(Key::query("flag").of(&q).as_deref(), Some(""));
        assert_eq!(Key::query("us").of(&q), None);
        assert_eq!(Key::query("user").of(&p), None);
        assert_eq!(
            Key::custom(|r| Some(r.method.to_string()))
                .of(&p)
                .as_deref(),
            Some("GET")
        );
    }

    #[test]
    fn a_refusal_by_one_connection_limit_takes_nothing_from_the_other() {
        let user = |name: &str| parts("192.0.2.7:1", &[("x-user", name)]);
        let limit = ConnectionLimit::new()
            .max_open(2)
            .max_open_per_key(Key::header(HeaderName::from_static("x-user")), 1);
        let mut first = user("a");
        limit.admit(&mut first).unwrap();
        // Refused per key: the global count does not move.
        assert_eq!(limit.admit(&mut user("a")).unwrap_err().status(), 429);
        assert_eq!(limit.open(), 1);
        let mut second = user("b");
        limit.admit(&mut second).unwrap();
        // Refused globally: no per-key entry is left behind.
        assert_eq!(limit.admit(&mut user("c")).unwrap_err().status(), 503);
        assert_eq!(limit.open_for("c"), 0);
        assert_eq!(limit.shared.per_key.lock().unwrap().len(), 2);
        // Dropping the requests (no tunnel opened) gives everything back.
        drop((first, second));
        assert_eq!(
            (limit.open(), limit.shared.per_key.lock().unwrap().len()),
            (0, 0)
        );
        // A per-key limit of zero refuses without remembering anyone.
        let none = ConnectionLimit::new().max_open_per_key(Key::client_ip(), 0);
        for _ in 0..100 {
            assert!(none.admit(&mut parts("192.0.2.7:1", &[])).is_err());
        }
        assert_eq!(none.shared.per_key.lock().unwrap().len(), 0);
    }

    #[test]
    fn origins() {
        let check = OriginCheck::new(["https://app.example", "https://*.example.com/"]);
        assert!(check.allows("https://app.example"));
        assert!(check.allows("HTTPS://APP.example"));
        assert!(check.allows("https://a.example.com"));
        assert!(check.allows("https://a.b.example.com"));
        assert!(!check.allows("https://example.com"));
        assert!(!check.allows("https://evilexample.com"));
        assert!(!check.allows("http://a.example.com"));
        assert!(!check.allows("https://app.example.evil"));
        assert!(!check.allows("null"));
        for trick in [
            "https://evil.com/.example.com",
            "https://evil.com?.example.com",
            "https://evil.com#.example.com",
            "https://user@evil.com.example.com@x.example.com",
            "https://..example.com",
            "https://a..b.example.com",
            "https://a.example.com:8443",
        ] {
            assert!(!check.allows(trick), "{trick}");
        }
        let ported = OriginCheck::new(["https://*.example.com:8443"]);
        assert!(ported.allows("https://a.example.com:8443"));
        assert!(!ported.allows("https://a.example.com"));
        let check = check
            .or(|o| o.starts_with("http://localhost:"))
            .or(|o| o == "app://desktop");
        assert!(check.allows("http://localhost:3000"));
        assert!(check.allows("app://desktop"), "predicates add up");
    }
}
