//! One client connection, from accept to close: TLS, HTTP/1.1 or HTTP/2,
//! and a watchdog that bounds every state the connection can sit in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::activity::{Activity, ConnExecutor, Protocol, Watched, instant_of, now_ms};
use super::registry::Slot;
use super::server::Shared;
use super::service::ConnService;
use crate::BoxError;

/// After a `GOAWAY` for idleness or to make room, how long the client has
/// to close before the connection is closed under it.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// The signals of a server's shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    /// Stop taking requests; finish those in flight.
    pub(crate) graceful: CancellationToken,
    /// Close now.
    pub(crate) now: CancellationToken,
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    #[cfg(feature = "tls")]
    TlsHandshake,
    Detect,
    RequestHead,
    KeepAlive,
    Http2Idle,
}

impl Expiry {
    /// The label in logs and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            #[cfg(feature = "tls")]
            Expiry::TlsHandshake => "tls_handshake",
            Expiry::Detect => "detect",
            Expiry::RequestHead => "request_head",
            Expiry::KeepAlive => "keep_alive",
            Expiry::Http2Idle => "http2_idle",
        }
    }
}

/// Serve one accepted connection until it ends.
pub(crate) async fn run<S, B>(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    shared: Arc<Shared<S>>,
    stop: Stop,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _open = crate::metrics::connection_opened();
    let activity = slot.activity.clone();
    #[cfg(feature = "tls")]
    if let Some(acceptor) = &shared.tls {
        let timeout = shared.timeouts.tls_handshake;
        let tcp = Watched::under_tls(tcp, activity.clone());
        let tls = tokio::select! {
            result = acceptor.accept(tcp) => match result {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
            },
            () = tokio::time::sleep(timeout) => {
                timed_out(peer, Expiry::TlsHandshake, timeout);
                return;
            }
            () = evicted(&activity) => {
                tracing::debug!(client = %peer, "connection closed to make room (during its TLS handshake)");
                return;
            }
            () = stop.graceful.cancelled() => return,
        };
        return http(tls, true, peer, &activity, &shared, &stop).await;
    }
    http(tcp, false, peer, &activity, &shared, &stop).await;
}

/// Resolves once the connection was asked to make room.
#[cfg(feature = "tls")]
async fn evicted(activity: &Activity) {
    loop {
        let woken = activity.wake.notified();
        if activity.is_evicted() {
            return;
        }
        woken.await;
    }
}

fn timed_out(peer: SocketAddr, expiry: Expiry, after: Duration) {
    tracing::debug!(client = %peer, state = expiry.as_str(), ?after, "client connection timed out, closed");
    crate::metrics::connection_timed_out(expiry.as_str());
}

/// Serve HTTP/1.1 or HTTP/2 on `io` under the watchdog.
async fn http<IO, S, B>(
    io: IO,
    tls: bool,
    peer: SocketAddr,
    activity: &Arc<Activity>,
    shared: &Shared<S>,
    stop: &Stop,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let timeouts = shared.timeouts;
    let mut builder = super::http_builder(ConnExecutor::new(activity.clone()));
    if timeouts.keep_alive.is_zero() {
        builder.http1().keep_alive(false);
    }
    let service = ConnService {
        inner: shared.service.clone(),
        peer,
        tls,
        activity: activity.clone(),
        limits: shared.limits,
    };
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(Watched::new(io, activity.clone())), service);
    tokio::pin!(connection);
    // Detection is timed from here, after any TLS handshake.
    let start = now_ms();
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut timer_at = None;
    // A graceful close under way (shutdown, GOAWAY), and when to stop
    // waiting for an idle client to close.
    let mut closing = false;
    let mut close_by: Option<u64> = None;
    loop {
        if !closing {
            let evicted = activity.is_evicted();
            if evicted || activity.goaway_asked() {
                if evicted {
                    tracing::debug!(client = %peer, "connection closed to make room");
                } else {
                    tracing::warn!(
                        client = %peer,
                        "too many WebSocket handshakes reset on one HTTP/2 connection: GOAWAY"
                    );
                    crate::metrics::http2_goaway("resets");
                }
                if evicted && activity.protocol() != Protocol::Http2 {
                    break;
                }
                connection.as_mut().graceful_shutdown();
                closing = true;
                close_by = evicted.then(|| now_ms() + GOAWAY_GRACE.as_millis() as u64);
            }
        }
        let expiry = if closing {
            close_by
                .filter(|_| !activity.is_busy())
                .map(|at| (at, None))
        } else {
            next_expiry(activity, &timeouts, start).map(|(at, expiry)| (at, Some(expiry)))
        };
        let at = expiry.map(|(at, _)| at);
        if at != timer_at {
            if let Some(at) = at {
                timer.as_mut().reset(instant_of(at));
            }
            timer_at = at;
        }
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(client = %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = activity.wake.notified() => {}
            () = &mut timer, if at.is_some() => {
                timer_at = None;
                // The state may have changed since the timer was set (a
                // request came, which does not wake the watchdog): look
                // again.
                let now = now_ms();
                let expiry = if closing {
                    close_by.filter(|&at| now >= at && !activity.is_busy()).map(|_| None)
                } else {
                    next_expiry(activity, &timeouts, start)
                        .filter(|&(at, _)| now >= at)
                        .map(|(_, expiry)| Some(expiry))
                };
                let Some(expiry) = expiry else { continue };
                match expiry {
                    // Closing and the client did not: close under it.
                    None => break,
                    Some(Expiry::Http2Idle) => {
                        timed_out(peer, Expiry::Http2Idle, timeouts.http2_idle);
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        close_by = Some(now_ms() + GOAWAY_GRACE.as_millis() as u64);
                    }
                    Some(expiry) => {
                        let after = match expiry {
                            Expiry::Detect => timeouts.detect,
                            Expiry::RequestHead => timeouts.request_head,
                            _ => timeouts.keep_alive,
                        };
                        timed_out(peer, expiry, after);
                        break;
                    }
                }
            }
            () = stop.graceful.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = stop.now.cancelled() => break,
        }
    }
}

/// When the idle connection must be closed, and why; `None` while busy.
fn next_expiry(
    activity: &Activity,
    timeouts: &super::Timeouts,
    start: u64,
) -> Option<(u64, Expiry)> {
    if activity.is_busy() {
        return None;
    }
    let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX / 4)) as u64;
    let idle_since = activity.idle_since().max(start);
    Some(match activity.protocol() {
        Protocol::Http2 => (idle_since + ms(timeouts.http2_idle), Expiry::Http2Idle),
        Protocol::Http1 | Protocol::Unknown => match activity.first_byte() {
            Some(at) => (at + ms(timeouts.request_head), Expiry::RequestHead),
            None if !activity.served() => (start + ms(timeouts.detect), Expiry::Detect),
            None => (idle_since + ms(timeouts.keep_alive), Expiry::KeepAlive),
        },
    })
}
