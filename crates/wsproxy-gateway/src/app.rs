//! One configuration as a service: a proxy layer per route over its
//! upstream's backend set, the admission layers in front, the status page
//! behind; and the HTTP server that serves it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tokio_rustls::rustls::ServerConfig;
use tower::Service as _;
use tower::util::BoxCloneSyncService;
use wsproxy::admit::{
    AdmitLayer, ConnectionLimit, ForwardAuth, JwtAuth, Key, OriginCheck, RateLimit, ResolveClient,
    SharedLimit,
};
use wsproxy::balance::Backends;
use wsproxy::serve::{ConnectionLimits, ProxyProtocol, Server, Timeouts};
use wsproxy::tls::BackendTls;
use wsproxy::{Keepalive, MessageLimits, Route, Tunnels, WebSocketProxyLayer};

use crate::config::{
    Admission, Config, ForwardAuthConfig, JwtConfig, Listen, OnFailure, RedisConfig, RouteConfig,
};
use crate::page::{self, PageRoute};
use wsproxy::http_proxy::HttpProxy;

/// The admission state that outlives a reload: counts of open tunnels
/// (so that a reload does not hand every client a fresh budget while its
/// tunnels are open) and the rate limiters, kept while their rates are
/// unchanged.
#[derive(Clone, Default)]
pub(crate) struct Limiters {
    /// Holds the counts; every generation's limit is built from a clone.
    connections: ConnectionLimit,
    /// The rate limiter and the settings it was built with.
    rates: Option<(RateKey, RateLimit)>,
    /// The forward-auth check (its connections and remembered answers)
    /// and the settings it was built with.
    auth: Option<(ForwardAuthConfig, ForwardAuth)>,
    /// The limits kept in Redis and the settings they were built with.
    shared: Option<(SharedKey, SharedLimit)>,
    /// The JWT check (its fetched keys) and the settings it was built with.
    jwt: Option<(JwtConfig, JwtAuth)>,
}

type SharedKey = (
    RedisConfig,
    Option<usize>,
    Option<usize>,
    Option<wsproxy::admit::Rate>,
    Option<wsproxy::admit::Rate>,
    u32,
);

type RateKey = (
    Option<wsproxy::admit::Rate>,
    Option<wsproxy::admit::Rate>,
    u32,
);

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters").finish_non_exhaustive()
    }
}

/// Each route of `config` with its upstream's set, for the status page.
pub(crate) fn page_routes(config: &Config, sets: &BTreeMap<String, Backends>) -> Vec<PageRoute> {
    config
        .routes
        .iter()
        .map(|route| PageRoute {
            name: match &route.host {
                Some(host) => format!("{host}{}", route.prefix),
                None => route.prefix.clone(),
            },
            upstream: route.upstream.clone(),
            balance: config.upstreams[&route.upstream].strategy_name(),
            set: sets[&route.upstream].clone(),
        })
        .collect()
}

/// What one configuration serves. `handshakes` has every layer: the
/// proxy layer of each route, the admission layers, HSTS; `plain` is what
/// they wrap. The layers pass every request but a WebSocket handshake
/// through unchanged (`wsproxy::is_handshake`), so [`crate::live::Switch`]
/// sends ordinary requests to `plain` at once, past their clones and
/// boxed futures. `handshakes` ends in the same `plain`, so a handshake no
/// route claims gets what any request gets.
///
/// The layers are stacked as tower layers, one box each, not with an
/// axum `Router`: its route lookup, fallback handler, boxed clones and
/// futures, URL parameters and boxed bodies cost an ordinary request 4k
/// instructions (a tenth of a small proxied GET) and a handshake 2.7k
/// (BENCHMARKS.md).
///
/// Every service here is always ready (`Plain`, `HttpProxy`, the page's
/// `Router` and tower-http's `Trace` answer `poll_ready` at once; the
/// proxy and admission layers ask their inner service): `Switch` still
/// asks the stack before each call, as tower wants, and `Plain` calls its
/// leaves directly.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) handshakes: Stack,
    pub(crate) plain: PlainService,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// Layers over [`PlainService`], boxed.
pub(crate) type Stack = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// `layer` over `stack`, boxed again (its answers as axum's `Body`).
fn stacked<L, B>(stack: Stack, layer: L) -> Stack
where
    L: tower::Layer<Stack>,
    L::Service: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<Incoming>>>::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(tower::util::MapResponse::new(
        layer.layer(stack),
        |response: Response<B>| response.map(Body::new),
    ))
}

/// The app of `config`: `sets` holds the backend set of each upstream,
/// by name (every route's upstream is there: the configuration was
/// checked).
pub(crate) fn app(
    config: &Config,
    sets: &BTreeMap<String, Backends>,
    tunnels: &Tunnels,
    limiters: &mut Limiters,
) -> App {
    let plain = plain(config, tunnels);
    let mut stack = BoxCloneSyncService::new(plain.clone());
    // The layer of the longest prefix is outermost, so it sees a
    // handshake first; a route with a host before one without.
    let mut ordered: Vec<&RouteConfig> = config.routes.iter().collect();
    ordered.sort_by_key(|route| (route.host.is_some(), route.scope().1.len()));
    for route in ordered {
        stack = stacked(
            stack,
            proxy_layer(config, route, &sets[&route.upstream], tunnels),
        );
    }
    let mut stack = admission(stack, &config.admission, config, limiters);
    // `plain` sets it on its own answers (`Plain::answer`); this is for
    // the answers to handshakes.
    if let Some(value) = config.hsts() {
        stack = BoxCloneSyncService::new(Hsts {
            inner: stack,
            value: value.clone(),
        });
    }
    App {
        handshakes: stack,
        plain,
    }
}

/// `Strict-Transport-Security: value` on every answer to a handshake that
/// came over TLS (RFC 6797 §7.2: never over plain HTTP), unless the
/// answer has one (a relayed refusal from a backend that sets its own).
/// `Plain` does the same for its answers.
#[derive(Clone)]
struct Hsts {
    inner: Stack,
    value: HeaderValue,
}

impl tower::Service<Request<Incoming>> for Hsts {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<Body>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let value = request
            .extensions()
            .get::<wsproxy::ClientTls>()
            .map(|_| self.value.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if let Some(value) = value {
                set_hsts(&mut response, value);
            }
            Ok(response)
        })
    }
}

/// HSTS on `response`, unless it has its own.
fn set_hsts(response: &mut Response<Body>, value: HeaderValue) {
    response
        .headers_mut()
        .entry(axum::http::header::STRICT_TRANSPORT_SECURITY)
        .or_insert(value);
}

/// What answers ordinary requests: [`Plain`], with one access-log line
/// for each (handshakes have theirs) unless the access log is off (then no
/// span is made for it at all, and nothing is boxed).
#[derive(Clone)]
pub(crate) enum PlainService {
    Traced(BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>),
    Untraced(Plain),
}

/// The answer of [`PlainService`].
pub(crate) type PlainServiceFuture = futures_util::future::Either<
    futures_util::future::BoxFuture<'static, Result<Response<Body>, Infallible>>,
    PlainFuture,
>;

impl PlainService {
    /// The answer to `request`, as hyper gives it.
    pub(crate) fn answer(&self, request: Request<Incoming>) -> PlainServiceFuture {
        use futures_util::future::Either;
        match self {
            PlainService::Traced(traced) => {
                Either::Left(traced.clone().call(request.map(Body::new)))
            }
            PlainService::Untraced(plain) => Either::Right(plain.answer(request)),
        }
    }
}

impl tower::Service<Request<Incoming>> for PlainService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = PlainServiceFuture;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> PlainServiceFuture {
        self.answer(request)
    }
}

fn plain(config: &Config, tunnels: &Tunnels) -> PlainService {
    let mut ordered: Vec<&RouteConfig> = config.http_routes.iter().collect();
    ordered.sort_by_key(|route| {
        std::cmp::Reverse((
            route.host.is_some(),
            route.prefix.trim_end_matches('/').len(),
        ))
    });
    let routes: Vec<(Route, HttpProxy)> = ordered
        .into_iter()
        .map(|route| {
            let mut claim = Route::prefix(&route.prefix);
            if let Some(host) = &route.host {
                claim = claim.host(host);
            }
            (claim, http_proxy(config, route))
        })
        .collect();
    let plain = Plain(Arc::new(PlainRoutes {
        routes,
        page: page::router(tunnels.clone(), config.demo),
        hsts: config.hsts().cloned(),
    }));
    if config.log.access {
        use tower::Layer as _;
        let traced = page::trace(config.log.query).layer(plain);
        PlainService::Traced(BoxCloneSyncService::new(tower::util::MapResponse::new(
            traced,
            |response: Response<_>| response.map(Body::new),
        )))
    } else {
        PlainService::Untraced(plain)
    }
}

/// The `[[http_routes]]` (longest prefix first, a route with a host
/// before one without), else the status page; HSTS on what answers a
/// request over TLS.
#[derive(Clone)]
pub(crate) struct Plain(Arc<PlainRoutes>);

struct PlainRoutes {
    routes: Vec<(Route, HttpProxy)>,
    page: Router,
    hsts: Option<HeaderValue>,
}

impl Plain {
    /// The answer to `request`: an app server's, or the page's.
    pub(crate) fn answer<B>(&self, request: Request<B>) -> PlainFuture
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let hsts = match &self.0.hsts {
            Some(value) if request.extensions().get::<wsproxy::ClientTls>().is_some() => {
                Some(value.clone())
            }
            _ => None,
        };
        let answer = match self
            .0
            .routes
            .iter()
            .find(|(route, _)| route.matches(request.uri(), request.headers()))
        {
            Some((_, proxy)) => Answer::App {
                future: proxy.clone().call(request),
            },
            None => Answer::Page {
                future: self.0.page.clone().call(request),
            },
        };
        PlainFuture { answer, hsts }
    }
}

impl<B> tower::Service<Request<B>> for Plain
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = PlainFuture;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> PlainFuture {
        self.answer(request)
    }
}

type AppFuture = <HttpProxy as tower::Service<Request<Body>>>::Future;

pin_project_lite::pin_project! {
    /// The answer of [`Plain`].
    pub(crate) struct PlainFuture {
        #[pin]
        answer: Answer,
        hsts: Option<HeaderValue>,
    }
}

pin_project_lite::pin_project! {
    #[project = AnswerProj]
    enum Answer {
        App { #[pin] future: AppFuture },
        Page { #[pin] future: axum::routing::future::RouteFuture<Infallible> },
    }
}

impl Future for PlainFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.answer.project() {
            AnswerProj::App { future } => match std::task::ready!(future.poll(cx)) {
                Ok(response) => response.map(Body::new),
                Err(never) => match never {},
            },
            AnswerProj::Page { future } => match std::task::ready!(future.poll(cx)) {
                Ok(response) => response,
                Err(never) => match never {},
            },
        };
        if let Some(value) = this.hsts.take() {
            set_hsts(&mut response, value);
        }
        Poll::Ready(Ok(response))
    }
}

/// The app server of one `[[http_routes]]` entry (checked).
fn http_proxy(config: &Config, route: &RouteConfig) -> HttpProxy {
    let mut proxy = HttpProxy::new(&route.upstream)
        .expect("checked with the configuration")
        .connect_timeout(config.timeouts.connect)
        .response_timeout(config.timeouts.http_response)
        .idle_timeout(config.timeouts.http_idle)
        .forwarded_header(config.forwarding.forwarded)
        .trusted_proxies(config.forwarding.trusted_proxies.iter().copied());
    if route.strip_prefix {
        proxy = proxy.strip_prefix(&route.prefix);
    }
    if let Some(replacement) = &route.rewrite_prefix {
        proxy = proxy.rewrite_prefix(&route.prefix, replacement);
    }
    if let Some(host) = &route.host_header {
        proxy = proxy.host_header(host.library());
    }
    proxy
}

/// The proxy layer of one route.
fn proxy_layer(
    config: &Config,
    route: &RouteConfig,
    set: &Backends,
    tunnels: &Tunnels,
) -> WebSocketProxyLayer {
    let timeouts = &config.timeouts;
    let ping = &config.ping;
    let messages = &config.messages;
    let mut claim = Route::prefix(&route.prefix);
    if let Some(host) = &route.host {
        claim = claim.host(host);
    }
    let mut client_limits = limits(messages.max_frame, messages.max_message);
    if let Some(rate) = messages.rate {
        client_limits = client_limits.max_rate(rate.burst(messages.burst));
    }
    let mut layer = WebSocketProxyLayer::with_backends(set.clone())
        .route(claim)
        .strip_prefix(route.strip_prefix)
        .connect_timeout(timeouts.connect)
        .handshake_timeout(timeouts.handshake)
        .idle_timeout(timeouts.idle)
        .half_close_timeout(timeouts.half_close)
        .close_on_disconnect(config.close_on_disconnect)
        .client_keepalive(ping.client.map(|i| Keepalive::new(i, ping.timeout)))
        .backend_keepalive(ping.backend.map(|i| Keepalive::new(i, ping.timeout)))
        .client_limits(client_limits)
        .backend_limits(limits(
            messages.backend_max_frame,
            messages.backend_max_message,
        ))
        .forwarded_header(config.forwarding.forwarded)
        .trusted_proxies(config.forwarding.trusted_proxies.iter().copied())
        .log_query(config.log.query)
        .tunnels(tunnels.clone());
    if let Some(host) = &route.host_header {
        layer = layer.host_header(host.library());
    }
    if let Some(replacement) = &route.rewrite_prefix {
        layer = layer.rewrite_prefix(replacement);
    }
    layer
}

/// The admission layers in front of every route, innermost first:
/// connection limits, forward auth and JWT, rate limits (or, instead of
/// both limits, the ones shared through Redis), then the Origin check
/// (see `wsproxy::admit` for why this order; the auth service is asked
/// after the cheap checks, as nginx's `auth_request` runs after
/// `limit_req`, and, with local limits, before a connection permit is
/// taken; the Redis check takes its lease before authentication, which
/// gives it back when it refuses: a slow auth service then holds leases of
/// handshakes it has not answered yet).
fn admission(
    mut app: Stack,
    admission: &Admission,
    config: &Config,
    limiters: &mut Limiters,
) -> Stack {
    // What a removed section kept goes with it (a JWKS stops refreshing).
    if admission.forward_auth.is_none() {
        limiters.auth = None;
    }
    if admission.jwt.is_none() {
        limiters.jwt = None;
    }
    if admission.redis.is_none() {
        limiters.shared = None;
    }
    // Who the client is was decided once, by `ResolveClient` in front
    // (with trusted proxies): the key reads its `ClientIp`.
    let client = Key::client_ip();
    let connections =
        (admission.max_conns.is_some() || admission.max_conns_per_ip.is_some()).then(|| {
            let mut limit = limiters.connections.clone();
            if let Some(max) = admission.max_conns {
                limit = limit.max_open(max);
            }
            if let Some(max) = admission.max_conns_per_ip {
                limit = limit.max_open_per_key(client.clone(), max);
            }
            limit
        });
    let rates = (admission.rate.is_some() || admission.rate_per_ip.is_some()).then(|| {
        let key = (admission.rate, admission.rate_per_ip, admission.burst);
        match &limiters.rates {
            Some((kept, limit)) if *kept == key => limit.clone(),
            _ => {
                let mut limit = RateLimit::new();
                if let Some(rate) = admission.rate_per_ip {
                    limit = limit.per_key(client.clone(), rate.burst(admission.burst));
                }
                if let Some(rate) = admission.rate {
                    limit = limit.global(rate.burst(admission.burst));
                }
                limiters.rates = Some((key, limit.clone()));
                limit
            }
        }
    });
    // With Redis, one shared check does both (where the rates go); this instance's
    // own limits stand in while Redis fails (`on_failure = "local"`).
    let shared = admission.redis.as_ref().map(|redis| {
        shared(
            admission,
            redis,
            connections.clone(),
            rates.clone(),
            limiters,
        )
    });
    let (connections, rates) = if shared.is_some() {
        (None, None)
    } else {
        (connections, rates)
    };
    if let Some(limit) = connections {
        app = stacked(app, limit.layer());
    }
    if let Some(auth) = &admission.forward_auth {
        let check = match &limiters.auth {
            Some((kept, check)) if kept == auth => check.clone(),
            _ => {
                let mut check = ForwardAuth::new(&auth.url)
                    .expect("checked with the configuration")
                    .copy_headers(auth.copy_headers.iter().cloned())
                    .timeout(auth.timeout);
                if !auth.cache.is_zero() {
                    check = check.cache(auth.cache);
                }
                limiters.auth = Some((auth.clone(), check.clone()));
                check
            }
        };
        app = stacked(app, check.layer());
    }
    if let Some(jwt) = &admission.jwt {
        let check = match &limiters.jwt {
            // Kept for a JWKS (its fetched keys); a key file is read anew.
            Some((kept, check)) if kept == jwt && jwt.jwks_url.is_some() => check.clone(),
            _ => {
                let check = jwt.build().expect("checked with the configuration");
                limiters.jwt = Some((jwt.clone(), check.clone()));
                check
            }
        };
        app = stacked(app, check.layer());
    }
    if let Some(limit) = rates {
        app = stacked(app, limit.layer());
    }
    // The shared check holds the rates, so it goes where they go: before
    // authentication, which it protects. Its connection lease is then
    // taken before authentication too, and given back if that refuses
    // (one round trip for both, rather than one each).
    if let Some(shared) = shared {
        app = stacked(app, shared.layer());
    }
    if !admission.origins.is_empty() {
        app = stacked(
            app,
            OriginCheck::new(&admission.origins)
                .allow_missing(admission.allow_missing_origin)
                .layer(),
        );
    }
    let trusted = &config.forwarding.trusted_proxies;
    if !trusted.is_empty() {
        // Outermost: who the client is, for every check and log after.
        app = stacked(
            app,
            AdmitLayer::new(ResolveClient::new(trusted.iter().copied())),
        );
    }
    app
}

/// The limits of `[admission]` kept in Redis (the same one across
/// reloads while its settings hold, so its leases stay renewed).
fn shared(
    admission: &Admission,
    redis: &RedisConfig,
    connections: Option<ConnectionLimit>,
    rates: Option<RateLimit>,
    limiters: &mut Limiters,
) -> SharedLimit {
    let key = (
        redis.clone(),
        admission.max_conns,
        admission.max_conns_per_ip,
        admission.rate,
        admission.rate_per_ip,
        admission.burst,
    );
    if let Some((kept, limit)) = &limiters.shared
        && *kept == key
    {
        return limit.clone();
    }
    let client = Key::client_ip();
    let mut limit = SharedLimit::new(&redis.url)
        .expect("checked with the configuration")
        .prefix(&redis.prefix)
        .lease(redis.lease)
        .timeout(redis.timeout);
    if let Some(max) = admission.max_conns {
        limit = limit.max_open(max);
    }
    if let Some(max) = admission.max_conns_per_ip {
        limit = limit.max_open_per_key(client.clone(), max);
    }
    if let Some(rate) = admission.rate_per_ip {
        limit = limit.rate_per_key(client, rate.burst(admission.burst));
    }
    if let Some(rate) = admission.rate {
        limit = limit.rate(rate.burst(admission.burst));
    }
    match redis.on_failure {
        OnFailure::Closed => limit = limit.fail_closed(),
        OnFailure::Local => {
            if let Some(rates) = rates {
                limit = limit.fallback(rates);
            }
            if let Some(connections) = connections {
                limit = limit.fallback(connections);
            }
        }
    }
    limiters.shared = Some((key, limit.clone()));
    limit
}

fn limits(max_frame: Option<u64>, max_message: Option<u64>) -> MessageLimits {
    let mut limits = MessageLimits::new();
    if let Some(max) = max_frame {
        limits = limits.max_frame(max);
    }
    if let Some(max) = max_message {
        limits = limits.max_message(max);
    }
    limits
}

/// The backend set of an upstream, with the shared backend TLS.
pub(crate) fn set(
    upstream: &crate::config::upstream::UpstreamConfig,
    backend_tls: Option<&BackendTls>,
) -> Backends {
    let set = upstream.set();
    // Found in DNS: followed by a task that ends with the set.
    if let Some(dns) = upstream.backends.dns() {
        drop(
            dns.discover()
                .expect("checked with the configuration")
                .follow(&set),
        );
    }
    match backend_tls {
        Some(tls) => set.tls(tls.clone()),
        None => set,
    }
}

/// The HTTP server of every worker: timeouts for every state of a client
/// connection, connection limits. These settings hold until the process
/// ends (a reload says so when they change). On shutdown it waits for its
/// connections with no deadline of its own: the tunnels' drain (which
/// `main` runs, with the deadline the signal asks for) ends the HTTP/2
/// connections that carry them. Each listener serves a clone set up by
/// [`listener`], so the connection bounds hold across all of them.
pub(crate) fn server<S: Clone>(config: &Config, service: S) -> Server<S> {
    let connections = &config.connections;
    let mut limits = ConnectionLimits::new()
        .http2_max_handshakes(connections.h2_max_handshakes)
        .http2_reset_handshakes(connections.h2_reset_rate.burst(connections.h2_reset_burst));
    if let Some(max) = connections.max {
        limits = limits.max_connections(max);
    }
    if let Some(max) = connections.max_per_ip {
        limits = limits.max_connections_per_ip(max);
    }
    let timeouts = &config.timeouts;
    Server::new(service)
        .timeouts(
            Timeouts::new()
                .tls_handshake(timeouts.tls_handshake)
                .detect(timeouts.detect)
                .request_head(timeouts.request_head)
                .keep_alive(timeouts.keepalive)
                .http2_idle(timeouts.http2_idle),
        )
        .limits(limits)
        .shutdown_timeout(Duration::MAX)
}

/// `server` as one listener serves it: with its TLS and PROXY protocol.
pub(crate) fn listener<S: Clone>(
    server: &Server<S>,
    listen: &Listen,
    tls: Option<Arc<ServerConfig>>,
) -> Server<S> {
    let mut server = server.clone();
    if listen.proxy_protocol {
        let mut proxy_protocol = ProxyProtocol::new();
        if !listen.proxy_protocol_from.is_empty() {
            proxy_protocol = proxy_protocol.allow_from(listen.proxy_protocol_from.iter().copied());
        }
        server = server.proxy_protocol(proxy_protocol);
    }
    match tls {
        Some(config) => server.tls(config),
        None => server,
    }
}
