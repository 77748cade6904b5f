//! [`Admission`]: a check a handshake must pass, its answer ([`Admitting`])
//! and its [`Refusal`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};

use crate::ResponseBody;

/// A check a WebSocket handshake must pass before any backend is contacted.
///
/// The check takes the request's head and gives it back with its verdict,
/// now or later: [`Admitting::ready`] for a check that decides at once (no
/// allocation, no task: the middleware goes on in the same call), or
/// [`Admitting::new`] around a future for one that asks something over
/// the network (an auth service, a shared store). The head may be changed
/// on the way, e.g. a header added for the backend or a permit put in its
/// [`Holds`](super::Holds).
///
/// [`from_fn`](super::from_fn) and [`from_async_fn`](super::from_async_fn)
/// make one of a closure.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use http::request::Parts;
/// use wsproxy::admit::{AdmitLayer, Admission, Admitting, Refusal};
///
/// /// Only handshakes that carry a ticket.
/// struct Ticket;
///
/// impl Admission for Ticket {
///     fn admit(&self, request: Parts) -> Admitting {
///         let verdict = if request.uri.query().is_some_and(|q| q.contains("ticket=")) {
///             Ok(())
///         } else {
///             Err(Refusal::new(StatusCode::UNAUTHORIZED, "a ticket is required"))
///         };
///         Admitting::ready(request, verdict)
///     }
/// }
///
/// let layer = AdmitLayer::new(Ticket);
/// # drop(layer);
/// ```
pub trait Admission: Send + Sync + 'static {
    /// Let the handshake on, or refuse it.
    fn admit(&self, request: Parts) -> Admitting;
}

impl<A: Admission + ?Sized> Admission for std::sync::Arc<A> {
    fn admit(&self, request: Parts) -> Admitting {
        (**self).admit(request)
    }
}

/// What an [`Admission`] gives back: the request's head, and `Ok` to let
/// the handshake on or the [`Refusal`] the client gets.
pub type Verdict = (Parts, Result<(), Refusal>);

pub(crate) type Waiting = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// The answer of an [`Admission`]: a [`Verdict`] now, or a future of one.
///
/// A future in its own right, so an admission may also be awaited
/// directly; the middleware looks for a verdict that is already there and
/// goes on without waiting, so a check that never waits costs what a
/// synchronous call does.
#[must_use = "an admission's answer does nothing unless it is looked at"]
pub struct Admitting(Kind);

// A decided verdict is kept inline (no allocation for a check that never
// waits); only one that waits is boxed.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Ready(Option<Verdict>),
    Waiting(Waiting),
}

impl Admitting {
    /// A verdict decided now.
    pub fn ready(request: Parts, verdict: Result<(), Refusal>) -> Self {
        Admitting(Kind::Ready(Some((request, verdict))))
    }

    /// A verdict `future` will give (boxed once).
    pub fn new(future: impl Future<Output = Verdict> + Send + 'static) -> Self {
        Admitting(Kind::Waiting(Box::pin(future)))
    }

    /// The verdict if it is decided, else the future to wait on.
    pub(crate) fn now(self) -> Result<Verdict, Waiting> {
        match self.0 {
            Kind::Ready(Some(verdict)) => Ok(verdict),
            Kind::Ready(None) => panic!("`Admitting` used after it completed"),
            Kind::Waiting(future) => Err(future),
        }
    }
}

impl Future for Admitting {
    type Output = Verdict;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Verdict> {
        match &mut self.0 {
            Kind::Ready(verdict) => Poll::Ready(
                verdict
                    .take()
                    .expect("`Admitting` polled after it completed"),
            ),
            Kind::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for Admitting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Ready(_) => f.write_str("Admitting::Ready"),
            Kind::Waiting(_) => f.write_str("Admitting::Waiting"),
        }
    }
}

/// A refused handshake: the response the client gets.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Option<Bytes>,
}

impl Refusal {
    /// A refusal with `status` and a one-line plain-text body `reason`.
    pub fn new(status: StatusCode, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            headers: Vec::new(),
            body: None,
        }
    }

    /// Add a header to the response (e.g. `Retry-After`).
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Answer with `body` instead of the reason, and with only the headers
    /// added (no `Content-Type` of its own), e.g. to relay an auth
    /// service's page; the reason is still what the log says.
    #[must_use]
    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Why, in a few words (the log line's `reason`).
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    pub(crate) fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let mut response = match self.body {
            None => crate::plain::response(self.status, self.reason),
            Some(body) => {
                let mut response = Response::new(ResponseBody::full(body));
                *response.status_mut() = self.status;
                response
            }
        };
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}
