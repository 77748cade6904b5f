use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use crate::ResponseBody;
use crate::body::Never;

/// What the proxy answers a handshake it claimed: a body of its own or
/// the backend's, never the inner service's.
pub(crate) type ClaimResponse = Response<ResponseBody<Never>>;

/// The future of a handshake the proxy claimed.
pub(crate) type ClaimFuture =
    Pin<Box<dyn Future<Output = Result<ClaimResponse, std::convert::Infallible>> + Send>>;

/// An admission that waits: then the inner service's future, or the
/// refusal.
pub(crate) type AdmittingFuture<F, B> =
    Pin<Box<dyn Future<Output = Result<F, Response<ResponseBody<B>>>> + Send>>;

pin_project! {
    /// Response future for [`WebSocketProxy`](crate::WebSocketProxy).
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Claimed { future: ClaimFuture },
        Ready { response: Option<Response<ResponseBody<B>>> },
        Admitting { future: AdmittingFuture<F, B> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    /// A response known now (a refusal), without a task or a box.
    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    /// Wait for an admission, then go on with the inner service's future.
    pub(crate) fn admitting(future: AdmittingFuture<F, B>) -> Self {
        Self {
            kind: Kind::Admitting { future },
        }
    }

    pub(crate) fn claimed(future: ClaimFuture) -> Self {
        Self {
            kind: Kind::Claimed { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            return match kind.as_mut().project() {
                KindProj::Inner { future } => {
                    let response = ready!(future.poll(cx))?;
                    Poll::Ready(Ok(response.map(ResponseBody::inner)))
                }
                KindProj::Claimed { future } => match ready!(future.as_mut().poll(cx)) {
                    Ok(response) => Poll::Ready(Ok(response.map(ResponseBody::retype))),
                    Err(never) => match never {},
                },
                KindProj::Ready { response } => Poll::Ready(Ok(response
                    .take()
                    .expect("`ResponseFuture` polled after it completed"))),
                KindProj::Admitting { future } => match ready!(future.as_mut().poll(cx)) {
                    Ok(future) => {
                        kind.set(Kind::Inner { future });
                        continue;
                    }
                    Err(refusal) => Poll::Ready(Ok(refusal)),
                },
            };
        }
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
