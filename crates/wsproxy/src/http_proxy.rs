//! Ordinary HTTP to an `http://` app server (feature `http-proxy`):
//! nginx's most common WebSocket recipe is one server block in front of
//! an app, ordinary requests `proxy_pass`ed to the app and upgrades to
//! the WebSocket backends, on one port. [`HttpProxy`] is the first half
//! as a tower service, the inner service (or an axum fallback) behind a
//! [`WebSocketProxyLayer`](crate::WebSocketProxyLayer).
//!
//! It forwards what a reverse proxy should, as the layer does for
//! handshakes: method, path (mapped onto the upstream's, with the prefix
//! [stripped](HttpProxy::strip_prefix) or
//! [rewritten](HttpProxy::rewrite_prefix)), query, end-to-end headers;
//! hop-by-hop headers are removed both ways, forwarding headers
//! (`X-Forwarded-*`, optionally RFC 7239 `Forwarded`) and `Host` follow
//! the same [policy](crate::forward). Bodies stream both ways, never
//! buffered whole; HTTP/2 clients are forwarded over HTTP/1.1.
//! Connections to the app are reused: each thread keeps its own (see
//! `pool.rs`), and a request the app's closing of an idle connection kept
//! from being sent goes on another.
//!
//! Failures are responses: the app unreachable is `502`, no response
//! head within the [response timeout](HttpProxy::response_timeout) is
//! `504`, each with a WARN line.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Empty;
use http_body_util::combinators::UnsyncBoxBody;
use ipnet::IpNet;

use crate::client::client_addr;
use crate::clock;
use crate::forward::{self, HostHeader};
use crate::handshake::translate::{self, Translation};
use crate::{BoxError, InvalidUpstream, ResponseBody, Upstream};

mod pool;

/// Default [`HttpProxy::connect_timeout`], as the WebSocket layer's.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`HttpProxy::response_timeout`] (nginx's `proxy_read_timeout`).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`HttpProxy::idle_timeout`] (nginx's upstream
/// `keepalive_timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A tower service that forwards every request to an `http://` app
/// server and streams its answer back. See the [module docs](self).
///
/// ```
/// use axum::Router;
/// use wsproxy::http_proxy::HttpProxy;
/// use wsproxy::{Route, WebSocketProxyLayer};
///
/// // Upgrades under /ws to the chat servers, everything else to the app.
/// let app = Router::new()
///     .fallback_service(HttpProxy::new("http://127.0.0.1:3000").unwrap())
///     .layer(
///         WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap())
///             .route(Route::prefix("/ws")),
///     );
/// # let _: Router = app;
/// ```
#[derive(Clone, Debug)]
pub struct HttpProxy {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    upstream: Upstream,
    translation: Translation,
    prefix: Option<String>,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle_timeout: Duration,
}

impl HttpProxy {
    /// Forward to `url`: `http://host[:port][/path][?query]`. The request
    /// path is appended to the URL's path and the query strings are
    /// joined, as for WebSocket [`Upstream`]s.
    pub fn new(url: &str) -> Result<Self, InvalidUpstream> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| InvalidUpstream::new(url, "an app server URL starts with http://"))?;
        // The same URL rules as a ws:// backend's.
        let upstream: Upstream = format!("ws://{rest}")
            .parse()
            .map_err(|_| InvalidUpstream::new(url, "not a valid http:// URL"))?;
        let mut proxy = HttpProxy {
            inner: Arc::new(Inner {
                upstream,
                translation: Translation::default(),
                prefix: None,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                response_timeout: DEFAULT_RESPONSE_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
            }),
        };
        proxy.inner_mut().translation.host_header = HostHeader::Upstream;
        Ok(proxy)
    }

    fn inner_mut(&mut self) -> &mut Inner {
        // A proxy configured after it was cloned becomes one of its own
        // (with its own connections).
        Arc::make_mut(&mut self.inner)
    }

    /// Remove `prefix` (whole segments) from the path before appending it
    /// to the upstream's: `/app/x` reaches the app as `/x`.
    #[must_use]
    pub fn strip_prefix(mut self, prefix: &str) -> Self {
        let inner = self.inner_mut();
        inner.prefix = Some(prefix.trim_end_matches('/').to_owned());
        inner.translation.strip_prefix = true;
        self
    }

    /// Put `replacement` in place of `prefix` (whole segments): with
    /// `("/app", "/v2")`, `/app/x` reaches the app as `/v2/x`.
    #[must_use]
    pub fn rewrite_prefix(mut self, prefix: &str, replacement: &str) -> Self {
        let inner = self.inner_mut();
        inner.prefix = Some(prefix.trim_end_matches('/').to_owned());
        inner.translation.rewrite_prefix = Some(replacement.trim_end_matches('/').to_owned());
        self
    }

    /// The `Host` the app gets (default: [`HostHeader::Upstream`], as
    /// nginx's `proxy_pass`; the client's goes in `X-Forwarded-Host`).
    #[must_use]
    pub fn host_header(mut self, host: HostHeader) -> Self {
        self.inner_mut().translation.host_header = host;
        self
    }

    /// Also send RFC 7239 `Forwarded` (default: `false`).
    #[must_use]
    pub fn forwarded_header(mut self, enabled: bool) -> Self {
        self.inner_mut().translation.forwarded_header = enabled;
        self
    }

    /// Peers whose forwarding headers are kept and appended to (see
    /// [`forward`](mod@crate::forward)); default none.
    #[must_use]
    pub fn trusted_proxies(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.inner_mut().translation.trusted_proxies = nets.into_iter().collect();
        self
    }

    /// Time allowed for the TCP connect to the app (default: 5 s); past
    /// it, `502`.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().connect_timeout = timeout;
        self
    }

    /// How long a connection to the app may stay unused and still be
    /// reused (default: 60 s, nginx's upstream `keepalive_timeout`; set
    /// it below the app's own): past it the proxy closes it, at its next
    /// look (half the timeout later at most, 30 s at most).
    /// `Duration::ZERO` keeps none open between requests. Each thread
    /// keeps up to 64 per proxy.
    ///
    /// ```
    /// use std::time::Duration;
    /// use wsproxy::http_proxy::HttpProxy;
    ///
    /// // The app closes idle connections after 5 s: close them first.
    /// let proxy = HttpProxy::new("http://127.0.0.1:3000")
    ///     .unwrap()
    ///     .idle_timeout(Duration::from_secs(4));
    /// # let _ = proxy;
    /// ```
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().idle_timeout = timeout;
        self
    }

    /// Time allowed without progress until the app's response head
    /// (default: 60 s, nginx's `proxy_send_timeout` and
    /// `proxy_read_timeout`): between two pieces of the request's body,
    /// and from its end to the response head; past it, `504`. An upload
    /// that moves takes as long as it takes, and so does the answer's
    /// body.
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().response_timeout = timeout;
        self
    }
}

impl<B> tower::Service<Request<B>> for HttpProxy
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<Empty<Bytes>>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(forward(&inner, request).await) })
    }
}

/// Forward one request and relay the answer.
async fn forward<B>(inner: &Arc<Inner>, request: Request<B>) -> Response<ResponseBody<Empty<Bytes>>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    let peer: Option<SocketAddr> = client_addr(&parts.extensions);
    // The request's own headers, not a copy.
    let headers = std::mem::take(&mut parts.headers);
    let (target, headers) = translate::forwarded(
        &parts,
        headers,
        &inner.translation,
        inner.prefix.as_deref(),
        peer,
        &inner.upstream,
    );
    // Origin-form, as a request to an origin server is sent.
    let Some(uri) = target else {
        tracing::info!(
            path = parts.uri.path(),
            "request target cannot be mapped to the app server: 400"
        );
        return crate::plain::response(StatusCode::BAD_REQUEST, "bad request target");
    };
    // Most requests have no body: nothing to box or to follow then.
    let (body, sent) = if body.is_end_stream() {
        (AppBody::Empty, None)
    } else {
        let sent = Arc::new(Sent::new());
        let body = Tracked {
            body,
            guard: Guard(sent.clone()),
        };
        (AppBody::Streaming(UnsyncBoxBody::new(body)), Some(sent))
    };
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = headers;
    // Whatever the client spoke, the app gets HTTP/1.1.
    *upstream.version_mut() = http::Version::HTTP_11;
    // The response timeout runs from the last progress: a piece of the
    // body sent, its end.
    let timeout = async {
        let Some(sent) = &sent else {
            tokio::time::sleep(inner.response_timeout).await;
            return true;
        };
        let limit = clock::nanos(inner.response_timeout);
        loop {
            let at = sent.progress.load(Ordering::Relaxed).saturating_add(limit);
            let now = clock::now();
            if now >= at {
                return sent.ended.load(Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_nanos(at - now)).await;
        }
    };
    let app = pool::App {
        host: inner.upstream.host(),
        port: inner.upstream.port(),
        connect_timeout: inner.connect_timeout,
        idle_timeout: inner.idle_timeout,
    };
    let answer = tokio::select! {
        // The answer first, when both are ready: it came in time.
        biased;
        answer = pool::send(inner, app, upstream) => Ok(answer),
        ended = timeout => Err(ended),
    };
    match answer {
        Ok(Err(_))
            if sent
                .as_ref()
                .is_some_and(|sent| sent.failed.load(Ordering::Relaxed)) =>
        {
            tracing::info!(
                app = inner.upstream.authority(),
                "the client's request body failed (the client went away?): 400"
            );
            crate::plain::response(StatusCode::BAD_REQUEST, "request body failed")
        }
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            forward::remove_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, ResponseBody::upstream(body))
        }
        Ok(Err(e)) => {
            let app = inner.upstream.authority();
            if e.is_connect() {
                tracing::warn!(app, error = %ErrorChain(&e), "app server unreachable: 502");
            } else {
                tracing::warn!(app, error = %ErrorChain(&e), "app server failed: 502");
            }
            crate::plain::response(StatusCode::BAD_GATEWAY, "bad gateway")
        }
        Err(false) => {
            tracing::warn!(
                app = inner.upstream.authority(),
                timeout = ?inner.response_timeout,
                "the request's body made no progress in time (the client or the app stalled): 504"
            );
            crate::plain::response(StatusCode::GATEWAY_TIMEOUT, "gateway timeout")
        }
        Err(true) => {
            tracing::warn!(
                app = inner.upstream.authority(),
                timeout = ?inner.response_timeout,
                "app server did not answer in time: 504"
            );
            crate::plain::response(StatusCode::GATEWAY_TIMEOUT, "gateway timeout")
        }
    }
}

/// A request's body on its way to the app.
pub(crate) enum AppBody {
    /// None (it ended before it was sent).
    Empty,
    /// The client's, saying how far it got ([`Tracked`]).
    Streaming(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            AppBody::Empty => Poll::Ready(None),
            AppBody::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AppBody::Empty => true,
            AppBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            AppBody::Empty => http_body::SizeHint::with_exact(0),
            AppBody::Streaming(body) => body.size_hint(),
        }
    }
}

/// How far the request's body got.
#[derive(Debug)]
struct Sent {
    /// When it last moved (a piece sent, or its end; at first, the
    /// request), in [`clock`] nanoseconds.
    progress: AtomicU64,
    /// Whether it ended (whole, failed, or dropped by the client's
    /// connection when its length was reached).
    ended: AtomicBool,
    /// Whether it failed (the client's stream broke).
    failed: AtomicBool,
}

impl Sent {
    fn new() -> Self {
        Self {
            progress: AtomicU64::new(clock::now()),
            ended: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }

    fn moved(&self) {
        self.progress.store(clock::now(), Ordering::Relaxed);
    }

    fn end(&self, failed: bool) {
        if failed {
            self.failed.store(true, Ordering::Relaxed);
        }
        if !self.ended.swap(true, Ordering::Relaxed) {
            self.moved();
        }
    }
}

/// Ends the body when dropped: hyper drops a body whose declared length
/// went out (or that said it ended) without asking it for its end.
#[derive(Debug)]
struct Guard(Arc<Sent>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.end(false);
    }
}

pin_project_lite::pin_project! {
    /// The request body on its way to the app, saying when it moves and
    /// when it ends.
    struct Tracked<B> {
        #[pin]
        body: B,
        guard: Guard,
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        let sent = &this.guard.0;
        match &polled {
            Poll::Ready(None) => sent.end(false),
            Poll::Ready(Some(Err(_))) => sent.end(true),
            Poll::Ready(Some(Ok(_))) => sent.moved(),
            Poll::Pending => {}
        }
        polled.map(|frame| frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An error and its sources, `a: b: c`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
