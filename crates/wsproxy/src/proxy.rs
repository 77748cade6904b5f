//! One claimed handshake, from validation to the spawned tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, Span};

use crate::Upstream;
use crate::balance::BackendId;
use crate::balance::set::Picked;
use crate::body::ResponseBody;
use crate::connect::{self, Answer, Failure};
use crate::detect::{self, SEC_WEBSOCKET_VERSION};
use crate::forward::{self, Forwarding, HostHeader};
use crate::layer::Config;
use crate::relay;
use crate::route;

/// Proxy one WebSocket handshake that the route claimed.
pub(crate) async fn proxy<ReqBody, ResBody>(
    req: Request<ReqBody>,
    config: Arc<Config>,
) -> Response<ResponseBody<ResBody>> {
    let (mut parts, body) = req.into_parts();
    drop(body);
    let peer = forward::client_addr(&parts.extensions);
    // Only an RFC 8441 handshake reaches here as a CONNECT.
    let http2 = parts.method == http::Method::CONNECT;
    let span = tracing::info_span!(
        "tunnel",
        client = %DisplayPeer(peer),
        http = if http2 { "2" } else { "1.1" },
        route = %config.route,
        upstream = tracing::field::Empty,
        status = tracing::field::Empty,
        client_ip = tracing::field::Empty,
    );
    async move {
        let validated = if http2 {
            // The backend speaks HTTP/1.1: it gets a key of the proxy's own.
            detect::validate_http2(&parts.headers).map(|()| connect::fresh_key())
        } else {
            detect::validate(&parts.headers)
        };
        let key = match validated {
            Ok(key) => key,
            Err(invalid) => {
                let status = match invalid {
                    detect::Invalid::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
                    _ => StatusCode::BAD_REQUEST,
                };
                Span::current().record("status", status.as_u16());
                tracing::info!(
                    status = status.as_u16(),
                    reason = invalid.as_str(),
                    "handshake refused"
                );
                let mut response = refusal(status, invalid.as_str());
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
            return refusal(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        // The layer's own admission checks, in the order they were added.
        for admission in &config.admissions.0 {
            if let Err(refused) = admission.admit(&mut parts) {
                Span::current().record("status", refused.status().as_u16());
                tracing::info!(
                    status = refused.status().as_u16(),
                    "handshake refused by an admission check"
                );
                return refused.into_response();
            }
        }
        if let Some(crate::admit::ClientIp(ip)) = parts.extensions.get() {
            Span::current().record("client_ip", tracing::field::display(ip));
        }
        // Permits of admission checks, held for the tunnel's life.
        let holds = parts.extensions.remove::<crate::admit::Holds>();
        // No `OnUpgrade`: a server without upgrades, or axum-test's mock
        // transport. Not the client's fault, and nothing a retry mends.
        let Some(on_client_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            Span::current().record("status", 501);
            tracing::warn!(status = 501, "handshake refused: {NOT_UPGRADABLE}");
            return refusal(StatusCode::NOT_IMPLEMENTED, NOT_UPGRADABLE);
        };

        let started = Instant::now();
        let (head, backend, picked, sticky) =
            match handshake_backend(&parts, &config, peer, &key, started).await {
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
            return refusal(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        };
        Span::current().record("status", if http2 { 200 } else { 101 });

        let (mut head, ()) = head.into_parts();
        forward::remove_hop_by_hop(&mut head.headers);
        if http2 {
            // RFC 8441 §5: a 2xx, and no Upgrade, Connection or Accept.
            head.status = StatusCode::OK;
            head.headers.remove(detect::SEC_WEBSOCKET_ACCEPT);
        } else {
            head.headers
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if let Some(cookie) = sticky {
            head.headers.append(header::SET_COOKIE, cookie);
        }
        // The tunnel ends on a shutdown, or when its backend goes down (if
        // the set closes tunnels then); it holds its backend's load unit.
        let (close, load) = picked.into_parts();
        let drain = config.tunnels.drain().with_backend(close);

        let tunnels = config.tunnels.clone();
        let settings = config.settings.clone();
        let open = crate::metrics::tunnel_opened(&config.route);
        let handshake_timeout = config.handshake_timeout;
        tokio::spawn(
            async move {
                let _guard = guard;
                let _holds = holds;
                let _load = load;
                // A client that goes away before its side of the upgrade
                // completes still ends the tunnel that was counted open.
                let (end, totals) = match tokio::time::timeout(handshake_timeout, on_client_upgrade)
                    .await
                {
                    Ok(Ok(client)) => {
                        relay::relay(TokioIo::new(client), TokioIo::new(backend), settings, drain)
                            .await
                    }
                    Ok(Err(e)) => (
                        relay::End::ClientError(std::io::Error::other(format!(
                            "upgrade failed: {e}"
                        ))),
                        relay::Totals::default(),
                    ),
                    Err(_) => (
                        relay::End::ClientError(std::io::ErrorKind::TimedOut.into()),
                        relay::Totals::default(),
                    ),
                };
                tunnels.record(&end, &totals);
                open.closed(&end, &totals);
                if let relay::End::Proxy {
                    reason: relay::Reason::Limit { exceeded, .. },
                    ..
                } = &end
                {
                    tracing::warn!(
                        end = %end,
                        close_code = exceeded.close_code(),
                        "message limit broken, WebSocket closed"
                    );
                }
                let duration_ms = started.elapsed().as_millis() as u64;
                let (up, down) = (&totals.up, &totals.down);
                tracing::info!(
                    duration_ms,
                    bytes_up = up.bytes,
                    bytes_down = down.bytes,
                    frames_up = up.frames,
                    frames_down = down.frames,
                    messages_up = up.messages,
                    messages_down = down.messages,
                    client_close = %CloseCode(up.close_code),
                    backend_close = %CloseCode(down.close_code),
                    end = %end,
                    "tunnel closed"
                );
            }
            .instrument(Span::current()),
        );
        Response::from_parts(head, ResponseBody::empty())
    }
    .instrument(span)
    .await
    .inspect_status(http2)
}

/// A valid `101` from a backend: its head, the upgraded connection, the
/// backend (whose load the tunnel holds) and a sticky cookie to set.
type Upgraded = (
    Response<()>,
    hyper::upgrade::Upgraded,
    Picked,
    Option<HeaderValue>,
);

/// Choose a backend and hand-shake with it, moving on to the next one
/// after a failure that left nothing to relay, while tries and the
/// handshake timeout allow. Anything but a valid `101` is the response
/// for the client.
async fn handshake_backend<B>(
    parts: &http::request::Parts,
    config: &Config,
    peer: Option<SocketAddr>,
    key: &HeaderValue,
    started: Instant,
) -> Result<Upgraded, Response<ResponseBody<B>>> {
    let backends = &config.backends;
    let deadline = tokio::time::Instant::from_std(started) + config.handshake_timeout;
    let mut tried: Vec<BackendId> = Vec::new();
    // The failure that sent the handshake on, and the backend it came from.
    let mut last_failure: Option<(Failure, Upstream)> = None;
    loop {
        let Some((picked, sticky)) = backends.pick(parts, &tried) else {
            return Err(match last_failure {
                Some((failure, _)) => failed(&failure),
                None => {
                    Span::current().record("status", 503);
                    tracing::warn!(
                        status = 503,
                        route = %config.route,
                        backends = %backends.describe(),
                        "no usable backend: all down, draining or full"
                    );
                    refusal(StatusCode::SERVICE_UNAVAILABLE, "no backend available")
                }
            });
        };
        if let Some((failure, from)) = &last_failure {
            tracing::warn!(error = %failure, backend = %from, next = %picked.upstream(), "backend failed; trying another");
            crate::metrics::backend_retry(from);
        }
        Span::current().record("upstream", tracing::field::display(picked.upstream()));
        let Some(request) = backend_request(parts, config, peer, picked.upstream(), key) else {
            tracing::info!(
                status = 400,
                "handshake refused: request target cannot be mapped to the backend"
            );
            return Err(refusal(StatusCode::BAD_REQUEST, "bad request target"));
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Whether this attempt had the whole of its time: a timeout cut
        // short by the shared deadline is not the backend's failure.
        let whole_connect = remaining >= config.connect_timeout;
        let first_attempt = tried.is_empty();
        let answer = match connect::connect(
            picked.upstream(),
            &backends.state.tls,
            config.connect_timeout.min(remaining),
        )
        .await
        {
            Ok(stream) => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                connect::handshake(stream, request, key, remaining, &config.tunnels)
                    .await
                    .map_err(|failure| match failure {
                        // The timeout that ran out is the handshake's.
                        Failure::HandshakeTimeout(_) => {
                            Failure::HandshakeTimeout(config.handshake_timeout)
                        }
                        other => other,
                    })
            }
            Err(failure) => Err(failure),
        };
        match answer {
            Ok(Answer::Upgraded(head, upgraded)) => {
                backends.succeeded(&picked);
                return Ok((head, upgraded, picked, sticky));
            }
            Ok(Answer::Refused(response)) => {
                if response.status().is_server_error() {
                    backends.failed(&picked);
                }
                // To an HTTP/2 client a 2xx means "WebSocket open" (RFC
                // 8441): a backend's 2xx that is not an upgrade must not
                // pass as one.
                if parts.method == http::Method::CONNECT && response.status().is_success() {
                    Span::current().record("status", 502);
                    tracing::warn!(
                        status = 502,
                        backend_status = response.status().as_u16(),
                        "backend answered the upgrade with a success that is not 101; \
                         an HTTP/2 client would take it for an open WebSocket"
                    );
                    return Err(refusal(StatusCode::BAD_GATEWAY, "bad gateway"));
                }
                Span::current().record("status", response.status().as_u16());
                tracing::info!(
                    status = response.status().as_u16(),
                    "backend refused the upgrade; relayed, no tunnel"
                );
                let (mut head, body) = response.into_parts();
                forward::remove_hop_by_hop(&mut head.headers);
                return Err(Response::from_parts(head, ResponseBody::upstream(body)));
            }
            Err(failure) => {
                let counts = match failure {
                    Failure::ConnectTimeout(_) => whole_connect,
                    Failure::HandshakeTimeout(_) => first_attempt,
                    _ => true,
                };
                if counts {
                    backends.failed(&picked);
                }
                tried.push(picked.id());
                let time_left = tokio::time::Instant::now() < deadline;
                if failure.retryable() && tried.len() < backends.config.tries && time_left {
                    last_failure = Some((failure, picked.upstream().clone()));
                    continue;
                }
                return Err(failed(&failure));
            }
        }
    }
}

/// The response to a backend that failed, and its log line.
fn failed<B>(failure: &Failure) -> Response<ResponseBody<B>> {
    let status = failure.status();
    Span::current().record("status", status.as_u16());
    tracing::warn!(status = status.as_u16(), error = %failure, "backend handshake failed");
    // The cause is for the log; the client learns only the status.
    refusal(status, status.canonical_reason().unwrap_or("bad gateway"))
}

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

/// The upgrade request sent to the backend.
fn backend_request(
    parts: &http::request::Parts,
    config: &Config,
    peer: Option<SocketAddr>,
    upstream: &Upstream,
    key: &HeaderValue,
) -> Option<Request<Empty<Bytes>>> {
    let path = parts.uri.path();
    let rest = match (config.strip_prefix, config.route.prefix_str()) {
        (true, Some(prefix)) => route::strip(prefix, path).unwrap_or(path),
        _ => path,
    };
    let target = upstream.target(rest, parts.uri.query());

    let mut headers = parts.headers.clone();
    forward::remove_hop_by_hop(&mut headers);
    let authority = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let host_header = parts.headers.get(header::HOST).cloned();
    let http2 = parts.version == http::Version::HTTP_2;
    // HTTP/2: `:authority` wins over a `host` header (RFC 9113 §8.3.1);
    // HTTP/1.1: the `Host` header, else an absolute-form target's.
    let client_host = if http2 {
        authority.or(host_header)
    } else {
        host_header.or(authority)
    };
    if http2 {
        // HTTP/2 may split cookies into several fields; HTTP/1.1 wants one
        // (RFC 9113 §8.2.3).
        join_cookies(&mut headers);
    }
    Forwarding {
        peer,
        trusted: &config.trusted_proxies,
        rfc7239: config.forwarded_header,
        // The server knows whether the connection is TLS; the request's
        // own scheme is the client's claim.
        proto: if parts.extensions.get::<crate::ClientTls>().is_some() {
            "https"
        } else {
            "http"
        },
    }
    .apply(&mut headers, client_host.as_ref());
    let host = match &config.host_header {
        HostHeader::Upstream => Some(upstream.host_header()),
        HostHeader::Client => client_host,
        HostHeader::Fixed(value) => Some(value.clone()),
    };
    match host {
        Some(host) => headers.insert(header::HOST, host),
        None => headers.remove(header::HOST),
    };
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    // The key the answer is checked against: the client's over HTTP/1.1,
    // the proxy's own for an HTTP/2 client (which sent none).
    headers.insert(detect::SEC_WEBSOCKET_KEY, key.clone());

    let mut request = Request::new(Empty::new());
    *request.uri_mut() = target.parse().ok()?;
    *request.headers_mut() = headers;
    Some(request)
}

/// Join every `Cookie` field into one, separated by `; `.
fn join_cookies(headers: &mut http::HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Why a handshake on a connection that cannot be upgraded is answered `501`.
const NOT_UPGRADABLE: &str = "WebSocket upgrades need a connection that can be upgraded: \
    serve with axum::serve or hyper's with_upgrades \
    (under axum-test, use the HTTP transport)";

/// A short plain-text response written by the proxy itself.
pub(crate) fn refusal<B>(status: StatusCode, reason: &str) -> Response<ResponseBody<B>> {
    let mut body = String::with_capacity(reason.len() + 1);
    body.push_str(reason);
    body.push('\n');
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) struct DisplayPeer(pub(crate) Option<SocketAddr>);

impl std::fmt::Display for DisplayPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// A close code in logs: the number, or `none`.
struct CloseCode(Option<u16>);

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(code) => code.fmt(f),
            None => f.write_str("none"),
        }
    }
}
