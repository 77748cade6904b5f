//! [`ResolveClient`]: who the client is, decided once.

use std::sync::Arc;

use http::request::Parts;
use ipnet::IpNet;

use super::admission::{Admission, Admitting, Refusal};
use crate::client::resolve;
use crate::client::{ClientIp, ForwardedBy};

/// Resolves who the client is, once, for every check and log after it:
/// the peer's address, or — only when the peer is one of the trusted
/// proxies — the right-most `X-Forwarded-For` address that is not (see
/// [`client_ip`](super::client_ip)). Never refuses; stores a [`ClientIp`].
///
/// # Example
///
/// ```
/// use tower::ServiceBuilder;
/// use wsproxy::admit::{AdmitLayer, ConnectionLimit, Key, ResolveClient};
///
/// // Behind a load balancer on 10.0.0.0/8.
/// let layers = ServiceBuilder::new()
///     .layer(AdmitLayer::new(ResolveClient::new(["10.0.0.0/8".parse().unwrap()])))
///     .layer(ConnectionLimit::new().max_open_per_key(Key::client_ip(), 20).layer());
/// # drop(layers);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ResolveClient {
    trusted: Arc<[IpNet]>,
    header: ForwardedBy,
}

impl ResolveClient {
    /// Trust forwarding headers from peers in `proxies` (none: the peer
    /// address is the client), reading `X-Forwarded-For`.
    pub fn new(proxies: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            trusted: proxies.into_iter().collect(),
            header: ForwardedBy::XForwardedFor,
        }
    }

    /// Read the client address from `header` instead (default:
    /// [`ForwardedBy::XForwardedFor`]).
    pub fn header(mut self, header: ForwardedBy) -> Self {
        self.header = header;
        self
    }
}

impl Admission for ResolveClient {
    fn admit(&self, mut request: Parts) -> Admitting {
        let verdict = self.check(&mut request);
        Admitting::ready(request, verdict)
    }
}

impl ResolveClient {
    /// The check, decided at once.
    pub(crate) fn check(&self, request: &mut Parts) -> Result<(), Refusal> {
        if let Some(ip) = resolve(request, &self.trusted, self.header) {
            request.extensions.insert(ClientIp(ip));
        }
        Ok(())
    }
}
