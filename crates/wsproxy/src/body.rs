//! The response body of a [`WebSocketProxy`](crate::WebSocketProxy).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

// Down, to the backend side: the body of a backend's refusal.
use crate::connect::RefusalBody;

/// Errors of different origins meeting in a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// Response body of [`WebSocketProxy`](crate::WebSocketProxy): the inner
    /// service's body, a backend's body relayed to the client, or a short
    /// body the proxy wrote itself.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Upstream { #[pin] body: Incoming },
        Refusal { body: RefusalBody },
        Full { data: Option<Bytes> },
    }
}

impl<B> Default for ResponseBody<B> {
    /// An empty body (for layers such as tower-http's `CorsLayer` that
    /// write their own responses).
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn upstream(body: Incoming) -> Self {
        Self {
            kind: Kind::Upstream { body },
        }
    }

    pub(crate) fn refusal(body: RefusalBody) -> Self {
        Self {
            kind: Kind::Refusal { body },
        }
    }

    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }
}

impl ResponseBody<Never> {
    /// The same body as the response body of any inner service: it is
    /// never one of the inner service's.
    pub(crate) fn retype<B>(self) -> ResponseBody<B> {
        match self.kind {
            Kind::Inner { body } => match body {},
            Kind::Upstream { body } => ResponseBody::upstream(body),
            Kind::Refusal { body } => ResponseBody::refusal(body),
            Kind::Full { data } => ResponseBody {
                kind: Kind::Full { data },
            },
        }
    }
}

impl ResponseBody<ResponseBody<Never>> {
    /// The body of a middleware (an admission check) in front of the
    /// proxy: its own, or the proxy's it passed on.
    pub(crate) fn flatten(self) -> ResponseBody<Never> {
        match self.kind {
            Kind::Inner { body } => body,
            Kind::Upstream { body } => ResponseBody::upstream(body),
            Kind::Refusal { body } => ResponseBody::refusal(body),
            Kind::Full { data } => ResponseBody {
                kind: Kind::Full { data },
            },
        }
    }
}

/// The inner body of what the proxy answers itself: there is none.
#[derive(Debug)]
pub(crate) enum Never {}

impl Body for Never {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match *self {}
    }
}

impl<B> Body for ResponseBody<B>
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
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Upstream { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Refusal { body } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Refusal { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Upstream { body } => body.size_hint(),
            Kind::Refusal { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Upstream { .. } => "Upstream",
            Kind::Refusal { .. } => "Refusal",
            Kind::Full { .. } => "Full",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}
