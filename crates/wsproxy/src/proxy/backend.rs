//! The backend handshake of one claimed handshake: choose a backend,
//! connect, send the upgrade request, check the answer; on a failure that
//! left nothing to relay, the next backend, within the tries and the
//! handshake timeout.

use std::net::SocketAddr;
use std::time::Instant;

use http::header::HeaderValue;
use http::{Response, StatusCode};
use tracing::Span;

use super::config::Config;
use crate::Upstream;
use crate::balance::BackendId;
use crate::balance::pick::Picked;
use crate::body::ResponseBody;
use crate::connect::{self, Answer, Failure};
use crate::forward;
use crate::future::ClaimResponse;
use crate::handshake;

/// A valid `101` from a backend: its head, the upgraded connection, the
/// backend (whose load the tunnel holds) and a sticky cookie to set.
pub(crate) type Upgraded = (Response<()>, connect::Upgraded, Picked, Option<HeaderValue>);

/// Choose a backend and hand-shake with it, moving on to the next one
/// after a failure that left nothing to relay, while tries and the
/// handshake timeout allow. Anything but a valid `101` is the response
/// for the client.
pub(crate) async fn handshake(
    parts: &http::request::Parts,
    config: &Config,
    peer: Option<SocketAddr>,
    key: &HeaderValue,
    started: Instant,
) -> Result<Upgraded, ClaimResponse> {
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
                    crate::plain::response(StatusCode::SERVICE_UNAVAILABLE, "no backend available")
                }
            });
        };
        if let Some((failure, from)) = &last_failure {
            tracing::warn!(error = %failure, backend = %from, next = %picked.upstream(), "backend failed; trying another");
            crate::metrics::backend_retry(from);
        }
        Span::current().record("upstream", tracing::field::display(picked.upstream()));
        let Some(request) = handshake::backend_request(
            parts,
            &config.translation,
            config.route.path_prefix(),
            peer,
            picked.upstream(),
            key,
        ) else {
            tracing::info!(
                status = 400,
                "handshake refused: request target cannot be mapped to the backend"
            );
            return Err(crate::plain::response(
                StatusCode::BAD_REQUEST,
                "bad request target",
            ));
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Whether this attempt had the whole of its time: a timeout cut
        // short by the shared deadline is not the backend's failure.
        let whole_connect = remaining >= config.connect_timeout;
        let first_attempt = tried.is_empty();
        let attempt = Instant::now();
        let answer = match connect::connect(
            picked.upstream(),
            &backends.state.dialer,
            config.connect_timeout.min(remaining),
        )
        .await
        {
            Ok(stream) => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                connect::handshake(
                    stream,
                    request,
                    key,
                    remaining,
                    config.handshake_timeout,
                    &config.tunnels,
                )
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
        if answer.is_ok() {
            crate::metrics::backend_handshake(picked.label(), attempt.elapsed());
        }
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
                    return Err(crate::plain::response(
                        StatusCode::BAD_GATEWAY,
                        "bad gateway",
                    ));
                }
                Span::current().record("status", response.status().as_u16());
                tracing::info!(
                    status = response.status().as_u16(),
                    "backend refused the upgrade; relayed, no tunnel"
                );
                let (mut head, body) = response.into_parts();
                forward::remove_hop_by_hop(&mut head.headers);
                return Err(Response::from_parts(head, ResponseBody::refusal(body)));
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
fn failed(failure: &Failure) -> ClaimResponse {
    let status = failure.status();
    Span::current().record("status", status.as_u16());
    tracing::warn!(status = status.as_u16(), error = %failure, "backend handshake failed");
    // The cause is for the log; the client learns only the status.
    crate::plain::response(status, status.canonical_reason().unwrap_or("bad gateway"))
}
