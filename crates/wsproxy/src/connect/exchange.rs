//! The HTTP/1.1 upgrade exchange with a backend over a connection: send
//! the request, drive the connection, classify the answer.

use std::error::Error;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::UPGRADE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use super::stream::BackendStream;
// Sideways, to the tunnel lifecycle: a refusal's body streams from the
// backend after the handshake returns, in a task a shutdown must wait for.
use crate::Tunnels;
use crate::opening::{SEC_WEBSOCKET_ACCEPT, accept_key, fresh_key, has_token};
use crate::upstream::Upstream;

/// What a backend answered an upgrade request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A valid 101: the response head and the upgraded connection.
    Upgraded(Response<()>, Upgraded),
    /// Any other status; relay it to the client as it is.
    Refused(Response<Incoming>),
}

/// Why a backend gave no answer that can be relayed. The proxy answers
/// the client `504` for the timeouts and `502` for the rest.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connect failed (refused, unreachable, name not resolved, or
    /// the error of a [`Connector`](super::Connector) of the user's).
    Connect(io::Error),
    /// The TLS handshake with a `wss://` backend failed: its certificate
    /// was refused (the error says why, e.g. `invalid peer certificate:
    /// UnknownIssuer`), it refused ours, or the connection broke.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls(io::Error),
    /// TCP connect (and the TLS handshake with a `wss://` backend) did not
    /// finish within the connect timeout.
    ConnectTimeout(Duration),
    /// No complete answer within the handshake timeout.
    HandshakeTimeout(Duration),
    /// The backend broke the HTTP exchange.
    Http(hyper::Error),
    /// The backend closed the connection without an answer.
    Closed,
    /// A 101 without `Upgrade: websocket`.
    WrongUpgrade,
    /// A 101 whose `Sec-WebSocket-Accept` does not match the key.
    WrongAccept,
}

impl Failure {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Failure::ConnectTimeout(_) | Failure::HandshakeTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A broken HTTP exchange, or a TLS failure that surfaced in it: with
    /// TLS 1.3 a backend refuses our client certificate (or its absence)
    /// after our side of the handshake is done, at the first read.
    fn http(e: hyper::Error) -> Self {
        #[cfg(feature = "tls")]
        {
            use tokio_rustls::rustls;
            let mut cause: Option<&(dyn Error + 'static)> = Some(&e);
            while let Some(error) = cause {
                let tls = error.downcast_ref::<rustls::Error>().or_else(|| {
                    error
                        .downcast_ref::<io::Error>()
                        .and_then(io::Error::get_ref)
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                });
                if let Some(tls) = tls {
                    return Failure::Tls(io::Error::new(io::ErrorKind::InvalidData, tls.clone()));
                }
                cause = error.source();
            }
        }
        Failure::Http(e)
    }

    /// Whether another backend may be tried: nothing was answered. A
    /// failed TLS handshake is a failed connect (as in nginx's
    /// `proxy_next_upstream error` and HAProxy's `retry-on conn-failure`):
    /// a certificate problem of one backend (expired, wrong name after a
    /// deployment) is what another backend can save.
    pub(crate) fn retryable(&self) -> bool {
        matches!(
            self,
            Failure::Connect(_)
                | Failure::Tls(_)
                | Failure::ConnectTimeout(_)
                | Failure::Http(_)
                | Failure::Closed
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect to the backend: {e}"),
            Failure::Tls(e) => write!(f, "TLS with the backend failed: {e}"),
            Failure::ConnectTimeout(t) => write!(f, "backend connect timed out after {t:?}"),
            Failure::HandshakeTimeout(t) => {
                write!(f, "backend did not answer the handshake within {t:?}")
            }
            Failure::Http(e) => write!(f, "backend handshake failed: {e}"),
            Failure::Closed => f.write_str("backend closed the connection without an answer"),
            Failure::WrongUpgrade => f.write_str("backend answered 101 without Upgrade: websocket"),
            Failure::WrongAccept => {
                f.write_str("backend answered 101 with a wrong Sec-WebSocket-Accept")
            }
        }
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Failure::Connect(e) | Failure::Tls(e) => Some(e),
            Failure::Http(e) => Some(e),
            _ => None,
        }
    }
}

/// Send the upgrade `request` over `stream` and classify the answer,
/// all within `timeout`. `key` is the `Sec-WebSocket-Key` that was sent.
pub(crate) async fn handshake(
    stream: BackendStream,
    request: Request<Empty<Bytes>>,
    key: &HeaderValue,
    timeout: Duration,
    tunnels: &Tunnels,
) -> Result<Answer, Failure> {
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(Failure::http)?;
        // The connection is driven here, in the handshake's own task: no
        // extra task and no cross-thread wake-ups on the common path.
        let mut conn = Some(conn.with_upgrades());
        let mut send = std::pin::pin!(sender.send_request(request));
        let mut response = poll_fn(|cx| {
            if let Poll::Ready(response) = send.as_mut().poll(cx) {
                return Poll::Ready(response.map_err(Failure::http));
            }
            let Some(driving) = conn.as_mut() else {
                return Poll::Pending;
            };
            match Pin::new(driving).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(Failure::http(e))),
                // Done: it handed the socket over after a 101, or the
                // backend closed. Either way any answer is ready now.
                Poll::Ready(Ok(())) => {
                    conn = None;
                    match send.as_mut().poll(cx) {
                        Poll::Ready(response) => Poll::Ready(response.map_err(Failure::http)),
                        Poll::Pending => Poll::Ready(Err(Failure::Closed)),
                    }
                }
            }
        })
        .await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // The body of a refusal streams to the client through the
            // connection, which now needs a task of its own.
            if let Some(conn) = conn {
                let drain = tunnels.drain();
                tunnels.spawn(async move {
                    tokio::select! {
                        result = conn => if let Err(e) = result {
                            tracing::debug!(error = %e, "backend connection ended with an error");
                        },
                        () = drain.hard_close() => {}
                    }
                });
            }
            return Ok(Answer::Refused(response));
        }
        if !has_token(response.headers(), &UPGRADE, "websocket") {
            return Err(Failure::WrongUpgrade);
        }
        if response.headers().get(SEC_WEBSOCKET_ACCEPT) != Some(&accept_key(key.as_bytes())) {
            return Err(Failure::WrongAccept);
        }
        // Driving the connection to its end hands the socket to the upgrade.
        let upgraded = match conn {
            Some(conn) => {
                let (driven, upgraded) = tokio::join!(conn, hyper::upgrade::on(&mut response));
                driven.map_err(Failure::http)?;
                upgraded
            }
            None => hyper::upgrade::on(&mut response).await,
        }
        .map_err(Failure::http)?;
        let (parts, _) = response.into_parts();
        Ok(Answer::Upgraded(Response::from_parts(parts, ()), upgraded))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Failure::HandshakeTimeout(timeout))?
}

/// Add what an upgrade request for `upstream` needs and lacks (`Host`,
/// `Upgrade`, `Connection`, `Sec-WebSocket-Version`, a fresh
/// `Sec-WebSocket-Key`); returns the key.
pub(crate) fn complete_upgrade_request(
    request: &mut Request<Empty<Bytes>>,
    upstream: &Upstream,
) -> HeaderValue {
    use crate::opening::{SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};
    let headers = request.headers_mut();
    headers
        .entry(http::header::HOST)
        .or_insert_with(|| upstream.host_header());
    headers
        .entry(UPGRADE)
        .or_insert(HeaderValue::from_static("websocket"));
    headers
        .entry(http::header::CONNECTION)
        .or_insert(HeaderValue::from_static("Upgrade"));
    headers
        .entry(SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
    headers
        .entry(SEC_WEBSOCKET_KEY)
        .or_insert_with(fresh_key)
        .clone()
}
