//! [`from_fn`] and [`from_async_fn`]: an [`Admission`] of a closure, as
//! tower-http's `ValidateRequest` and `AsyncAuthorizeRequest` are.

use std::fmt;
use std::future::Future;

use http::request::Parts;

use super::admission::{Admission, Admitting, Refusal, Verdict};
use super::layer::AdmitLayer;

/// An [`Admission`] of a closure that decides at once.
///
/// ```
/// use http::StatusCode;
/// use wsproxy::admit::{self, Refusal};
///
/// // Only handshakes for /rooms/..., and the room named for the backend.
/// let rooms = admit::from_fn(|request: &mut http::request::Parts| {
///     let Some(room) = request.uri.path().strip_prefix("/rooms/") else {
///         return Err(Refusal::new(StatusCode::NOT_FOUND, "no such room"));
///     };
///     let room = http::HeaderValue::from_str(room).map_err(|_| {
///         Refusal::new(StatusCode::BAD_REQUEST, "bad room name")
///     })?;
///     request.headers.insert("x-room", room);
///     Ok(())
/// });
/// let layer = rooms.layer();
/// # drop(layer);
/// ```
pub fn from_fn<F>(check: F) -> AdmitFn<F>
where
    F: Fn(&mut Parts) -> Result<(), Refusal> + Send + Sync + 'static,
{
    AdmitFn(check)
}

/// An [`Admission`] of a closure that returns a future of its [`Verdict`]:
/// for a check that asks something over the network.
///
/// ```
/// use http::StatusCode;
/// use wsproxy::admit::{self, Refusal};
///
/// # async fn lookup(_token: Option<String>) -> Option<String> { Some("7".into()) }
/// // Ask a session store who the token belongs to; the backend gets the id.
/// let sessions = admit::from_async_fn(|mut request: http::request::Parts| async move {
///     let token = request.uri.query().map(str::to_owned);
///     let verdict = match lookup(token).await {
///         Some(user) => {
///             request.headers.insert("x-user-id", user.parse().unwrap());
///             Ok(())
///         }
///         None => Err(Refusal::new(StatusCode::UNAUTHORIZED, "unknown session")),
///     };
///     (request, verdict)
/// });
/// let layer = sessions.layer();
/// # drop(layer);
/// ```
pub fn from_async_fn<F, Fut>(check: F) -> AdmitAsyncFn<F>
where
    F: Fn(Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Verdict> + Send + 'static,
{
    AdmitAsyncFn(check)
}

/// The [`Admission`] of [`from_fn`].
#[derive(Clone, Copy)]
#[must_use]
pub struct AdmitFn<F>(F);

impl<F> AdmitFn<F> {
    /// This check as a layer.
    pub fn layer(self) -> AdmitLayer<Self> {
        AdmitLayer::new(self)
    }
}

impl<F> Admission for AdmitFn<F>
where
    F: Fn(&mut Parts) -> Result<(), Refusal> + Send + Sync + 'static,
{
    fn admit(&self, mut request: Parts) -> Admitting {
        let verdict = (self.0)(&mut request);
        Admitting::ready(request, verdict)
    }
}

impl<F> fmt::Debug for AdmitFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdmitFn")
    }
}

/// The [`Admission`] of [`from_async_fn`].
#[derive(Clone, Copy)]
#[must_use]
pub struct AdmitAsyncFn<F>(F);

impl<F> AdmitAsyncFn<F> {
    /// This check as a layer.
    pub fn layer(self) -> AdmitLayer<Self> {
        AdmitLayer::new(self)
    }
}

impl<F, Fut> Admission for AdmitAsyncFn<F>
where
    F: Fn(Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Verdict> + Send + 'static,
{
    fn admit(&self, request: Parts) -> Admitting {
        Admitting::new((self.0)(request))
    }
}

impl<F> fmt::Debug for AdmitAsyncFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdmitAsyncFn")
    }
}
