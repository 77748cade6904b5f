//! [`AdmitLayer`] and [`Admit`]: an [`Admission`] as tower middleware
//! that checks WebSocket handshakes only.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use http::request::Parts;

use super::admission::{Admission, Refusal};
use crate::client::ClientIp;
use crate::client::{DisplayPeer, client_addr};
use crate::{ResponseBody, ResponseFuture};

/// Applies an [`Admission`] to the WebSocket handshakes a service gets.
#[derive(Debug)]
#[must_use]
pub struct AdmitLayer<A> {
    admission: Arc<A>,
}

// Not derived: the admission is shared, it need not be `Clone` itself.
impl<A> Clone for AdmitLayer<A> {
    fn clone(&self) -> Self {
        Self {
            admission: self.admission.clone(),
        }
    }
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
#[derive(Debug)]
pub struct Admit<S, A> {
    inner: S,
    admission: Arc<A>,
}

impl<S: Clone, A> Clone for Admit<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            admission: self.admission.clone(),
        }
    }
}

impl<S, A> Admit<S, A> {
    /// Check the handshakes `inner` gets with `admission`.
    pub fn new(inner: S, admission: A) -> Self {
        Self {
            inner,
            admission: Arc::new(admission),
        }
    }

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
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    A: Admission,
    ReqBody: Send + 'static,
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
        if !crate::opening::is_handshake(&req) {
            return ResponseFuture::inner(self.inner.call(req));
        }
        let (parts, body) = req.into_parts();
        match self.admission.admit(parts).now() {
            // Decided at once: on in this call, as a synchronous check.
            Ok((parts, Ok(()))) => {
                ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body)))
            }
            Ok((parts, Err(refusal))) => ResponseFuture::ready(refuse(&parts, refusal)),
            Err(waiting) => {
                // The inner service is ready now; a clone takes its place
                // (tower's way for middleware that calls it later).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::admitting(Box::pin(async move {
                    match waiting.await {
                        (parts, Ok(())) => Ok(inner.call(Request::from_parts(parts, body))),
                        (parts, Err(refusal)) => Err(refuse(&parts, refusal)),
                    }
                }))
            }
        }
    }
}

/// The response to a refused handshake, logged and counted.
fn refuse<B>(parts: &Parts, refusal: Refusal) -> Response<ResponseBody<B>> {
    // The path without its query, which may carry a token.
    tracing::info!(
        status = refusal.status.as_u16(),
        reason = refusal.reason,
        method = %parts.method,
        path = parts.uri.path(),
        client = %DisplayPeer(client_addr(&parts.extensions)),
        client_ip = parts.extensions.get::<ClientIp>().map(|ip| tracing::field::display(ip.0)),
        user_agent = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        "handshake refused before any backend was contacted"
    );
    crate::metrics::refused(refusal.status);
    refusal.into_response()
}
