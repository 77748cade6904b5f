//! The service of one client connection: the app, told who the client is,
//! with the connection's activity counted and HTTP/2 handshakes bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::ServiceExt as _;
use tower::util::Oneshot;

use super::activity::{Activity, Busy};
use super::limits::ConnectionLimits;
use crate::{BoxError, ClientAddr, ClientTls, ResponseBody};

/// The app as a hyper service for one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnService<S> {
    pub(crate) inner: S,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) activity: Arc<Activity>,
    pub(crate) limits: ConnectionLimits,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ConnBody<B>>;
    type Error = S::Error;
    type Future = ConnFuture<S, B>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let http2 = req.version() == Version::HTTP_2;
        let busy = self.activity.request(http2);
        let extensions = req.extensions_mut();
        extensions.insert(ClientAddr(self.peer));
        #[cfg(feature = "axum")]
        extensions.insert(axum::extract::ConnectInfo(self.peer));
        if self.tls {
            extensions.insert(ClientTls);
        }
        let mut handshake = None;
        // Extended CONNECT (RFC 8441): each one may make the proxy connect
        // to a backend, and one connection can open many at once. (A
        // plain CONNECT is the app's business.)
        if http2
            && req.method() == Method::CONNECT
            && req.extensions().get::<hyper::ext::Protocol>().is_some()
        {
            let at_once = self
                .activity
                .handshakes
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let guard = Handshake {
                activity: self.activity.clone(),
                limits: self.limits,
                answered: false,
            };
            // Past the bound at once, or after resetting too many: the
            // connection got GOAWAY, and hyper takes streams until the
            // client answers its PING — one that never does must not go
            // on making the proxy connect.
            let reset_too_many = self.activity.goaway_asked();
            if at_once >= self.limits.http2_handshakes || reset_too_many {
                drop(guard.answered());
                tracing::debug!(
                    client = %self.peer,
                    max = self.limits.http2_handshakes,
                    "handshake refused: too many at once on one HTTP/2 connection"
                );
                crate::metrics::refused(StatusCode::TOO_MANY_REQUESTS);
                return ConnFuture {
                    state: State::Refused {
                        response: Some(too_many(reset_too_many)),
                    },
                    busy: Some(busy),
                    handshake: None,
                };
            }
            handshake = Some(guard);
        }
        ConnFuture {
            state: State::Inner {
                future: self.inner.clone().oneshot(req),
            },
            busy: Some(busy),
            handshake,
        }
    }
}

fn too_many<B>(reset: bool) -> Response<ResponseBody<B>> {
    let reason = if reset {
        "too many WebSocket handshakes reset on this connection"
    } else {
        "too many WebSocket handshakes at once on this connection"
    };
    let mut response = crate::plain::response(StatusCode::TOO_MANY_REQUESTS, reason);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// One extended CONNECT being answered; dropped before its answer, it
/// counts as reset by the client.
#[derive(Debug)]
struct Handshake {
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    answered: bool,
}

impl Handshake {
    fn answered(mut self) -> Self {
        self.answered = true;
        self
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.activity
            .handshakes
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if !self.answered && self.activity.reset_over(self.limits.http2_resets) {
            self.activity.goaway();
        }
    }
}

pin_project! {
    /// Response future of [`ConnService`].
    pub(crate) struct ConnFuture<S, B>
    where
        S: tower::Service<Request<Incoming>>,
    {
        #[pin]
        state: State<S, B>,
        busy: Option<Busy>,
        handshake: Option<Handshake>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: tower::Service<Request<Incoming>>,
    {
        Inner { #[pin] future: Oneshot<S, Request<Incoming>> },
        Refused { response: Option<Response<ResponseBody<B>>> },
    }
}

impl<S, B> Future for ConnFuture<S, B>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>>,
{
    type Output = Result<Response<ConnBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.state.project() {
            StateProj::Inner { future } => {
                let result = ready!(future.poll(cx));
                // Answered, well or not: only a drop before this is a reset.
                if let Some(handshake) = this.handshake.take() {
                    drop(handshake.answered());
                }
                result?.map(ResponseBody::inner)
            }
            StateProj::Refused { response } => response.take().expect("polled after completion"),
        };
        if let Some(handshake) = this.handshake.take() {
            drop(handshake.answered());
        }
        let busy = this.busy.take();
        Poll::Ready(Ok(response.map(|body| ConnBody { body, busy })))
    }
}

pin_project! {
    /// A response body that keeps its connection busy until it is sent.
    pub(crate) struct ConnBody<B> {
        #[pin]
        body: ResponseBody<B>,
        busy: Option<Busy>,
    }
}

impl<B> Body for ConnBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if frame.is_none() {
            this.busy.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
