//! One claimed handshake, start to tunnel: validation, the backend
//! handshake (with retries), the client's answer, and the tunnel's task.
//! As a tower service ([`Claim`]), so that the layer's own admission
//! checks are the very [`Admit`](crate::admit::Admit) middleware in front
//! of it ([`Handshakes`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt as _};
use tracing::{Instrument, Span};

use super::config::Config;
use super::{backend, tunnel};
use crate::admit::{Admission, Admit, ClientIp, Holds};
use crate::body::ResponseBody;
use crate::future::{ClaimFuture, ClaimResponse};
use crate::handshake;
use crate::opening::{self, SEC_WEBSOCKET_VERSION};
use crate::relay::Carrier;

/// The proxy's answer to handshakes its route claimed, as a service.
#[derive(Clone, Debug)]
pub(crate) struct Claim {
    pub(crate) config: Arc<Config>,
}

impl Service<Request<()>> for Claim {
    type Response = ClaimResponse;
    type Error = Infallible;
    type Future = ClaimFuture;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move { Ok(proxy(req, config).await) })
    }
}

/// [`Claim`] behind the admission checks added with
/// [`WebSocketProxyLayer::admit`](crate::WebSocketProxyLayer::admit), each
/// an [`Admit`] middleware, the first added outermost (so they run in the
/// order added).
#[derive(Clone)]
pub(crate) enum Handshakes {
    /// No checks of the layer's own.
    Claim(Claim),
    /// The stack of checks in front of the claim.
    Admitted(BoxCloneSyncService<Request<()>, ClaimResponse, Infallible>),
}

impl std::fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handshakes::Claim(claim) => f.debug_tuple("Claim").field(claim).finish(),
            Handshakes::Admitted(_) => f.write_str("Admitted"),
        }
    }
}

impl Handshakes {
    pub(crate) fn new(config: Arc<Config>, admissions: &[Arc<dyn Admission>]) -> Self {
        let claim = Claim { config };
        if admissions.is_empty() {
            return Handshakes::Claim(claim);
        }
        let route = claim.config.route.clone();
        let mut stack = BoxCloneSyncService::new(claim);
        for admission in admissions.iter().rev() {
            let admitted = Admit::new(stack, admission.clone())
                .map_response(|response| response.map(ResponseBody::flatten));
            stack = BoxCloneSyncService::new(admitted);
        }
        // Every answer of the route, the checks' refusals included.
        let counted = stack.map_response(move |response: ClaimResponse| {
            crate::metrics::handshake_answered(&route, response.status());
            response
        });
        Handshakes::Admitted(BoxCloneSyncService::new(counted))
    }

    pub(crate) fn call(&self, req: Request<()>) -> ClaimFuture {
        match self {
            Handshakes::Claim(claim) => {
                let config = claim.config.clone();
                Box::pin(async move {
                    let response = proxy(req, config.clone()).await;
                    crate::metrics::handshake_answered(&config.route, response.status());
                    Ok(response)
                })
            }
            Handshakes::Admitted(stack) => Box::pin(stack.clone().oneshot(req)),
        }
    }
}

/// Proxy one WebSocket handshake that the route claimed.
async fn proxy(req: Request<()>, config: Arc<Config>) -> ClaimResponse {
    let (mut parts, ()) = req.into_parts();
    let peer = crate::client::client_addr(&parts.extensions);
    // Only an RFC 8441 handshake reaches here as a CONNECT.
    let http2 = parts.method == http::Method::CONNECT;
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .unwrap_or("-")
    };
    let query = match parts.uri.query() {
        Some(_) if !config.log_query => "?<redacted>",
        Some(query) => &format!("?{query}"),
        None => "",
    };
    let span = tracing::info_span!(
        "tunnel",
        client = %crate::client::DisplayPeer(peer),
        http = if http2 { "2" } else { "1.1" },
        method = %parts.method,
        path = %format_args!("{}{query}", parts.uri.path()),
        route = %config.route,
        origin = header(http::header::ORIGIN),
        user_agent = header(http::header::USER_AGENT),
        upstream = tracing::field::Empty,
        status = tracing::field::Empty,
        subprotocol = tracing::field::Empty,
        client_ip = tracing::field::Empty,
    );
    async move {
        let validated = if http2 {
            // The backend speaks HTTP/1.1: it gets a key of the proxy's own.
            handshake::validate_http2(&parts.headers).map(|()| opening::fresh_key())
        } else {
            handshake::validate(&parts.headers)
        };
        let key = match validated {
            Ok(key) => key,
            Err(invalid) => {
                let status = match invalid {
                    handshake::Invalid::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
                    _ => StatusCode::BAD_REQUEST,
                };
                Span::current().record("status", status.as_u16());
                tracing::info!(
                    status = status.as_u16(),
                    reason = invalid.as_str(),
                    "handshake refused"
                );
                let mut response = crate::plain::response(status, invalid.as_str());
                if status == StatusCode::UPGRADE_REQUIRED {
                    response
                        .headers_mut()
                        .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                }
                return response;
            }
        };
        if config.tunnels.is_draining() {
            Span::current().record("status", 503);
            tracing::info!(status = 503, "handshake refused: shutting down");
            return crate::plain::response(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        if let Some(ClientIp(ip)) = parts.extensions.get() {
            Span::current().record("client_ip", tracing::field::display(ip));
        }
        // Permits of admission checks, held for the tunnel's life.
        let holds = parts.extensions.remove::<Holds>();
        // No upgrade on this connection: a server without upgrades, or a
        // test harness without a real connection (axum-test's mock
        // transport). Not the client's fault, and nothing a retry mends.
        let Some(on_client_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            Span::current().record("status", 501);
            tracing::warn!(status = 501, "handshake refused: {NOT_UPGRADABLE}");
            return crate::plain::response(StatusCode::NOT_IMPLEMENTED, NOT_UPGRADABLE);
        };

        let started = Instant::now();
        let (head, backend, picked, sticky) =
            match backend::handshake(&parts, &config, peer, &key, started).await {
                Ok(upgraded) => upgraded,
                Err(response) => return response,
            };
        // A shutdown may have started while the backend was answering; it
        // promised that no tunnel opens after it, and the client has not
        // seen the 101 yet. Dropping `backend` closes that connection.
        let Some(guard) = config.tunnels.admit(http2) else {
            Span::current().record("status", 503);
            tracing::info!(
                status = 503,
                "handshake refused: shutdown started during the handshake"
            );
            return crate::plain::response(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        };
        Span::current().record("status", if http2 { 200 } else { 101 });
        if let Some(protocol) = head
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
        {
            Span::current().record("subprotocol", protocol);
        }
        let mut head = handshake::client_head(head, http2, sticky);
        if !head
            .headers
            .contains_key(http::header::SEC_WEBSOCKET_PROTOCOL)
            && let Some(opening::AnswerProtocol(protocol)) = parts.extensions.remove()
        {
            head.headers
                .insert(http::header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        tunnel::spawn(tunnel::Tunnel {
            config: &config,
            guard,
            holds,
            picked,
            client: on_client_upgrade,
            carrier: if http2 {
                Carrier::Stream
            } else {
                Carrier::Connection
            },
            backend,
            started,
            expires: parts.extensions.get().copied(),
        });
        Response::from_parts(head, ResponseBody::empty())
    }
    .instrument(span)
    .await
    .inspect_status(http2)
}

/// Why a handshake on a connection that cannot be upgraded is answered `501`.
const NOT_UPGRADABLE: &str = "WebSocket upgrades need a connection that can be upgraded: \
    serve with axum::serve or hyper's with_upgrades \
    (under axum-test, use the HTTP transport)";

/// Count a refused handshake in the metrics.
trait InspectStatus {
    fn inspect_status(self, http2: bool) -> Self;
}

impl<B> InspectStatus for Response<B> {
    fn inspect_status(self, http2: bool) -> Self {
        let opened = if http2 {
            StatusCode::OK
        } else {
            StatusCode::SWITCHING_PROTOCOLS
        };
        if self.status() != opened {
            crate::metrics::refused(self.status());
        }
        self
    }
}
