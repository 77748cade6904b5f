//! [`Admission`]: a check a handshake must pass, and its [`Refusal`].

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};

use crate::ResponseBody;

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
    /// extensions, e.g. a permit in its [`Holds`](super::Holds).
    fn admit(&self, request: &mut Parts) -> Result<(), Refusal>;
}

impl<A: Admission + ?Sized> Admission for std::sync::Arc<A> {
    fn admit(&self, request: &mut Parts) -> Result<(), Refusal> {
        (**self).admit(request)
    }
}

/// A refused handshake: the response the client gets.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
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
        let mut response = crate::plain::response(self.status, self.reason);
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}
