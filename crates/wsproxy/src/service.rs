use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tower::Service;

use crate::future::ResponseFuture;
use crate::opening;
use crate::proxy::{Config, Handshakes};
use crate::{Upstream, WebSocketProxyLayer};

/// Middleware that proxies WebSocket handshakes to a backend and passes
/// every other request to the inner service unchanged.
///
/// See the [crate docs](crate) for the path of one connection, and
/// [`WebSocketProxyLayer`] for the settings.
///
/// Failures of the proxy are responses (`400`, `403`, `426`, `429`, `501`,
/// `502`, `503`, `504`), never `Service::Error`: the error type is the
/// inner service's.
#[derive(Clone, Debug)]
pub struct WebSocketProxy<S> {
    inner: S,
    config: Arc<Config>,
    /// Where claimed handshakes go: the layer's admission checks, then
    /// the proxy.
    handshakes: Handshakes,
}

impl<S> WebSocketProxy<S> {
    pub(crate) fn from_parts(inner: S, config: Arc<Config>, handshakes: Handshakes) -> Self {
        Self {
            inner,
            config,
            handshakes,
        }
    }

    /// Wrap `inner`, proxying every WebSocket handshake to `upstream`.
    pub fn new(inner: S, upstream: Upstream) -> Self {
        use tower::Layer as _;
        WebSocketProxyLayer::new(upstream).layer(inner)
    }

    /// A [`WebSocketProxyLayer`] for `upstream`.
    pub fn layer(upstream: Upstream) -> WebSocketProxyLayer {
        WebSocketProxyLayer::new(upstream)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consume `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for WebSocketProxy<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<crate::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if opening::is_handshake(&req) && self.config.route.matches(req.uri(), req.headers()) {
            // A handshake's body is not read (one with a body is refused).
            let (parts, _body) = req.into_parts();
            ResponseFuture::claimed(self.handshakes.call(Request::from_parts(parts, ())))
        } else {
            ResponseFuture::inner(self.inner.call(req))
        }
    }
}

/// The fallback of [`WebSocketProxyLayer::into_service`]: answers every
/// request `426 Upgrade Required` with `Upgrade: websocket`.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpgradeRequired {
    _priv: (),
}

impl<B> Service<Request<B>> for UpgradeRequired {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        let mut response = Response::new(Empty::new());
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        std::future::ready(Ok(response))
    }
}
