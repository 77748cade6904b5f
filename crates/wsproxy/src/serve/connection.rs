//! One client connection, from accept to close: TLS, HTTP/1.1 or HTTP/2,
//! and a watchdog that bounds every state the connection can sit in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::activity::{Activity, ConnExecutor, Protocol, Stop, Watched};
use super::read_ahead::ReadAhead;
use super::registry::{Registry, Slot};
use super::service::ConnService;
use super::serving::Serving;
use super::{ConnectionLimits, Timeouts};
use crate::BoxError;
use crate::clock::{self, nanos};
#[cfg(feature = "tls")]
use crate::read_buffer::{Buffered, TLS_READ_BUFFER};

/// What every connection of a server shares.
#[derive(Clone)]
pub(crate) struct Shared<S> {
    pub(crate) service: S,
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: ConnectionLimits,
    pub(crate) registry: Arc<Registry>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) tunnels: Option<crate::Tunnels>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) proxy_protocol: Option<super::ProxyProtocol>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Server");
        debug
            .field("service", &self.service)
            .field("timeouts", &self.timeouts)
            .field("limits", &self.limits)
            .field("connections", &self.registry.open());
        #[cfg(feature = "tls")]
        debug.field("tls", &self.tls.is_some());
        debug
            .field("tunnels", &self.tunnels)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

/// After a `GOAWAY` for idleness or to make room, how long the client has
/// to close before the connection is closed under it.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

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
    /// The timeout that ran out.
    fn timeout(self, timeouts: &Timeouts) -> Duration {
        match self {
            #[cfg(feature = "tls")]
            Expiry::TlsHandshake => timeouts.tls_handshake,
            Expiry::Detect => timeouts.detect,
            Expiry::RequestHead => timeouts.request_head,
            Expiry::KeepAlive => timeouts.keep_alive,
            Expiry::Http2Idle => timeouts.http2_idle,
        }
    }

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
pub(crate) async fn run<S, B>(tcp: TcpStream, peer: SocketAddr, slot: Slot, shared: Arc<Shared<S>>)
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _open = crate::metrics::connection_opened();
    let activity = slot.activity.clone();
    let mut tcp = tcp;
    let peer = match &shared.proxy_protocol {
        None => peer,
        // Before anything else, TLS included: the client's address.
        Some(config) => {
            let read = tokio::select! {
                read = super::proxy_protocol::read(&mut tcp, peer, config) => read,
                () = tokio::time::sleep(shared.timeouts.detect) => {
                    timed_out(peer, Expiry::Detect, &shared.timeouts);
                    return;
                }
                () = interrupted(&activity) => return,
            };
            let client = match read {
                Ok(client) => client,
                Err(refusal) => {
                    tracing::info!(peer = %peer, reason = %refusal, "PROXY protocol: connection closed");
                    crate::metrics::connection_refused(refusal.as_str());
                    return;
                }
            };
            // Counted against the per-IP bound as the client it is.
            if slot.identify(client.ip()).is_err() {
                tracing::debug!(client = %client, "a client IP is at its connection limit: connection closed");
                crate::metrics::connection_refused("max_connections_per_ip");
                return;
            }
            client
        }
    };
    #[cfg(feature = "tls")]
    if let Some(acceptor) = &shared.tls {
        let timeout = shared.timeouts.tls_handshake;
        // Read in large pieces: rustls asks for 4 KiB more than it holds.
        let tcp = Buffered::new(Watched::under_tls(tcp, &activity), TLS_READ_BUFFER);
        let tls = tokio::select! {
            result = acceptor.accept(tcp) => match result {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
            },
            () = tokio::time::sleep(timeout) => {
                timed_out(peer, Expiry::TlsHandshake, &shared.timeouts);
                return;
            }
            () = interrupted(&activity) => {
                tracing::debug!(client = %peer, "connection closed during its TLS handshake (to make room, or shutting down)");
                return;
            }
        };
        return http(tls, true, peer, &activity, &shared).await;
    }
    http(tcp, false, peer, &activity, &shared).await;
}

/// Resolves once the connection was asked to make room, or to stop now
/// (a graceful stop lets a TLS handshake or a PROXY header under way
/// finish: the client was accepted).
async fn interrupted(activity: &Activity) {
    loop {
        let woken = activity.wake.notified();
        if activity.is_evicted() || activity.stop_asked() == Some(Stop::Now) {
            return;
        }
        woken.await;
    }
}

fn timed_out(peer: SocketAddr, expiry: Expiry, timeouts: &Timeouts) {
    let after = expiry.timeout(timeouts);
    tracing::debug!(client = %peer, state = expiry.as_str(), ?after, "client connection timed out, closed");
    crate::metrics::connection_timed_out(expiry.as_str());
}

/// Serve HTTP/1.1 or HTTP/2 on `io` under the watchdog.
///
/// The watchdog is this loop: it looks at the connection's [`Activity`]
/// when its timer fires or it is woken (evicted, GOAWAY, shutdown), never
/// on the way of a request or a read — those only write a few atomics.
/// While the connection is busy, or idle before a deadline it may not see
/// coming (the first byte of a head), the timer is set to look again no
/// later than that deadline could be.
async fn http<IO, S, B>(
    io: IO,
    tls: bool,
    peer: SocketAddr,
    activity: &Arc<Activity>,
    shared: &Shared<S>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let timeouts = shared.timeouts;
    let service = ConnService {
        inner: shared.service.clone(),
        peer,
        tls,
        activity: activity.clone(),
        limits: shared.limits,
    };
    // HTTP/1.1 or HTTP/2, by the first bytes: one read for a head that
    // arrived whole.
    let connection = Serving::new(
        ReadAhead::new(Watched::new(io, activity)),
        service,
        ConnExecutor::new(activity.clone()),
        !timeouts.keep_alive.is_zero(),
        // Under TLS the connection is read so beneath rustls.
        !tls,
    );
    tokio::pin!(connection);
    // Detection is timed from here, after any TLS handshake.
    let start = clock::now();
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut timer_at = None;
    let woken = activity.wake.notified();
    tokio::pin!(woken);
    // A graceful close under way (shutdown, GOAWAY), and when to stop
    // waiting for an idle client to close.
    let mut closing = false;
    let mut close_by: Option<u64> = None;
    // When a graceful stop was first seen.
    let mut stopped_at: Option<u64> = None;
    loop {
        // hyper answers a request in flight on an HTTP/1.1 connection it
        // was told to shut down with `Connection: close`, which would
        // spoil a handshake's 101: such a connection is closed after it.
        let http1_busy = activity.protocol() != Protocol::Http2 && activity.is_busy();
        // Asked to close, but not yet (see below): looked at again within
        // this.
        let mut deferred: Option<Duration> = None;
        match activity.stop_asked() {
            Some(Stop::Now) => break,
            // A connection accepted before the stop gets its first
            // request answered (its bytes may be on their way), and an
            // HTTP/1.1 request in flight is answered whole; then, or when
            // its timeouts end it, it is closed. A client that was
            // accepted is not turned away.
            Some(Stop::Graceful) if !closing => {
                let stop_at = *stopped_at.get_or_insert_with(clock::now);
                // HTTP/2 takes GOAWAY at any time. An HTTP/1.1 request
                // in flight is waited for (its own timeouts bound it); a
                // first request on its way, for STOP_GRACE: from the
                // stop once bytes of it arrived or may be unread, from
                // when the connection was ready for HTTP (accepted, past
                // any TLS handshake and PROXY header) while none did: a
                // client writes its request right after it connects,
                // which may be just after the stop. One silent for
                // longer has nothing to lose.
                let nothing_sent =
                    !activity.served() && activity.first_byte().is_none() && activity.has_waited();
                let waited_from = if nothing_sent { start } else { stop_at };
                let first_on_its_way =
                    !activity.served() && clock::now() < waited_from + nanos(STOP_GRACE);
                if activity.protocol() != Protocol::Http2 && (http1_busy || first_on_its_way) {
                    // Nothing sent yet: its bytes, when they come, are
                    // served anyway, so a look now and then will do (not
                    // a hundred wake-ups of every silent connection).
                    deferred = Some(if nothing_sent && !http1_busy {
                        RECHECK_SILENT
                    } else {
                        RECHECK_STOPPING
                    });
                } else if connection.as_mut().graceful_shutdown() {
                    closing = true;
                } else {
                    // Its first request had arrived unread: answered
                    // first, then closed as any request in flight.
                    deferred = Some(RECHECK_STOPPING);
                }
            }
            _ => {}
        }
        let evicted = activity.is_evicted();
        if evicted || (!closing && activity.goaway_asked()) {
            if evicted && activity.protocol() != Protocol::Http2 && !activity.is_busy() {
                // Nothing in flight on HTTP/1.1: close now.
                tracing::debug!(client = %peer, "connection closed to make room");
                break;
            }
            if evicted && http1_busy {
                // Its request is answered, and the connection closes after
                // it (above, once it is idle).
                deferred = Some(RECHECK_STOPPING);
            } else if !closing {
                if evicted {
                    tracing::debug!(client = %peer, "connection closing to make room (GOAWAY)");
                } else {
                    tracing::warn!(
                        client = %peer,
                        "too many WebSocket handshakes reset on one HTTP/2 connection: GOAWAY"
                    );
                    crate::metrics::http2_goaway("resets");
                }
                closing = connection.as_mut().graceful_shutdown();
            }
            // A client that ignores GOAWAY (HTTP/2 waits for it to answer
            // a PING) is closed once nothing of it is in flight.
            if closing && close_by.is_none() {
                close_by = Some(clock::now() + nanos(GOAWAY_GRACE));
            }
        }
        let now = clock::now();
        // When to look again.
        let next = if closing {
            match close_by {
                // Closing and the client did not: close under it.
                Some(at) if now >= at && !activity.is_busy() => break,
                // Busy: look again later, not in a loop.
                Some(at) if activity.is_busy() => Some(at.max(now + nanos(RECHECK_BUSY))),
                Some(at) => Some(at),
                None => None,
            }
        } else {
            match next_expiry(activity, &timeouts, start) {
                Some((at, expiry)) if now >= at => {
                    match expiry {
                        Expiry::Http2Idle => {
                            timed_out(peer, Expiry::Http2Idle, &timeouts);
                            closing = connection.as_mut().graceful_shutdown();
                            close_by = Some(now + nanos(GOAWAY_GRACE));
                        }
                        expiry => {
                            timed_out(peer, expiry, &timeouts);
                            break;
                        }
                    }
                    continue;
                }
                Some((at, _)) => Some(at.min(now + recheck(activity, &timeouts))),
                // Busy: look again by when it could go idle and expire.
                None => Some(now + recheck(activity, &timeouts)),
            }
            .map(|at| {
                if let Some(recheck) = deferred {
                    at.min(now + nanos(recheck))
                } else {
                    at
                }
            })
        };
        if next != timer_at {
            if let Some(at) = next {
                timer.as_mut().reset(clock::instant(at));
            }
            timer_at = next;
        }
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(client = %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = woken.as_mut() => woken.set(activity.wake.notified()),
            () = &mut timer, if timer_at.is_some() => timer_at = None,
        }
    }
    // An HTTP/1.1 tunnel keeps the connection's I/O: it lets go of the
    // activity record at its next read.
    activity.finish();
}

/// How long a graceful stop waits for an HTTP/1.1 connection's first
/// request before shutting it down anyway: from the stop if bytes of it
/// arrived (or may be unread), from when the connection was ready for
/// HTTP (accepted, past any TLS handshake and PROXY header) if none did.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(1);

/// Asked to close but deferred with nothing sent yet: how often to look
/// again (its first bytes are served meanwhile either way).
const RECHECK_SILENT: Duration = Duration::from_millis(100);

/// Asked to close but deferred (no request yet, or an HTTP/1.1 request in
/// flight): how often to look again.
const RECHECK_STOPPING: Duration = Duration::from_millis(10);

/// While closing and busy, how often to look whether the client is done.
const RECHECK_BUSY: Duration = Duration::from_secs(1);

/// How soon to look again at a connection that is busy, or idle with a
/// deadline that bytes it has not been told about could bring forward:
/// no later than the shortest deadline that could start now.
fn recheck(activity: &Activity, timeouts: &Timeouts) -> u64 {
    let http1 = || {
        let head = nanos(timeouts.request_head);
        match nanos(timeouts.keep_alive) {
            0 => head,
            keep_alive => head.min(keep_alive),
        }
    };
    match activity.protocol() {
        Protocol::Http2 => nanos(timeouts.http2_idle),
        Protocol::Http1 => http1(),
        // Either may come, and HTTP/2 from the first bytes.
        Protocol::Unknown => http1().min(nanos(timeouts.http2_idle)),
    }
    .max(1)
}

/// When the idle connection must be closed, and why; `None` while busy.
fn next_expiry(activity: &Activity, timeouts: &Timeouts, start: u64) -> Option<(u64, Expiry)> {
    if activity.is_busy() {
        return None;
    }
    let idle_since = activity.idle_since().max(start);
    Some(match activity.protocol() {
        Protocol::Http2 => (idle_since + nanos(timeouts.http2_idle), Expiry::Http2Idle),
        Protocol::Http1 | Protocol::Unknown => match activity.first_byte() {
            Some(at) => (at + nanos(timeouts.request_head), Expiry::RequestHead),
            None if !activity.served() => (start + nanos(timeouts.detect), Expiry::Detect),
            None => (idle_since + nanos(timeouts.keep_alive), Expiry::KeepAlive),
        },
    })
}
