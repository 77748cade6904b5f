//! Bounds on the client connections a server holds.

use crate::settings::Rate;

/// Bounds on the client connections a [`Server`](super::Server) holds,
/// and on what one HTTP/2 connection may make the proxy do.
///
/// - **Connections in all** ([`max_connections`](Self::max_connections)):
///   connections the HTTP server is serving — handshaking TLS, waiting for
///   or reading a request, answering one, idle between requests, or
///   carrying HTTP/2 streams. An HTTP/1.1 WebSocket leaves this count
///   when its upgrade completes: it is a tunnel then, bounded by the
///   [admission](crate::admit) limits. Default: half the process's
///   descriptor limit (the soft `RLIMIT_NOFILE` when the server is built),
///   leaving the other half for backend connections and tunnels, as
///   HAProxy derives its `maxconn`.
/// - **Connections per client IP**
///   ([`max_connections_per_ip`](Self::max_connections_per_ip)): off by
///   default (as in nginx and HAProxy: many users can share one address
///   behind a NAT).
///
/// When a bound is reached, the connection that has been idle the longest
/// (no request in flight, no stream open: a silent new connection, one
/// trickling a request head, an idle keep-alive one) is closed to make
/// room, as nginx reuses idle connections when it runs out: a flood of
/// silent connections cannot shut out clients that send requests. When
/// none is idle, the server stops accepting (new clients wait in the
/// kernel's backlog) until a connection ends; over a client IP's bound,
/// its new connection is closed at once. The same happens when `accept`
/// fails for want of descriptors; with none to free the server still
/// answers one waiting client `503` (plain HTTP) from a descriptor it
/// keeps in reserve, then pauses. Every such event is logged (at most
/// one warning a second per kind, with a count) and counted in
/// [`metrics`](crate::metrics).
///
/// - **WebSocket handshakes per HTTP/2 connection**
///   ([`http2_max_handshakes`](Self::http2_max_handshakes), default 16):
///   one HTTP/2 connection can open many streams at once, and each
///   WebSocket handshake makes the proxy connect to a backend. Extended
///   `CONNECT` streams past the bound are answered `429` with
///   `Retry-After: 1` before anything is connected.
/// - **Reset handshakes per HTTP/2 connection**
///   ([`http2_reset_handshakes`](Self::http2_reset_handshakes), default 2
///   a second with a burst of 20): a client that opens handshakes and
///   resets them before they are answered makes the proxy start backend
///   connections for nothing (the "rapid reset" pattern). Past this rate
///   the connection gets `GOAWAY`: its open streams finish, no new one is
///   taken.
///
/// # Example
///
/// ```
/// use wsproxy::admit::Rate;
/// use wsproxy::serve::ConnectionLimits;
///
/// let limits = ConnectionLimits::new()
///     .max_connections(20_000)
///     .max_connections_per_ip(200)
///     .http2_max_handshakes(8)
///     .http2_reset_handshakes(Rate::per_second(1).burst(10));
/// # drop(limits);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct ConnectionLimits {
    pub(crate) max: Option<usize>,
    pub(crate) per_ip: Option<usize>,
    pub(crate) http2_handshakes: usize,
    pub(crate) http2_resets: Rate,
}

/// Default [`ConnectionLimits::http2_max_handshakes`].
pub const DEFAULT_HTTP2_MAX_HANDSHAKES: usize = 16;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionLimits {
    /// The defaults (see above).
    pub fn new() -> Self {
        ConnectionLimits {
            max: None,
            per_ip: None,
            http2_handshakes: DEFAULT_HTTP2_MAX_HANDSHAKES,
            http2_resets: Rate::per_second(2).burst(20),
        }
    }

    /// At most `n` connections in all (at least 1; default: half the
    /// descriptor limit).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max = Some(n.max(1));
        self
    }

    /// At most `n` connections per client IP (at least 1; default: no
    /// bound).
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.per_ip = Some(n.max(1));
        self
    }

    /// At most `n` WebSocket handshakes being answered at once on one
    /// HTTP/2 connection (at least 1; default: 16).
    pub fn http2_max_handshakes(mut self, n: usize) -> Self {
        self.http2_handshakes = n.max(1);
        self
    }

    /// Handshakes an HTTP/2 client may reset before their answer, at this
    /// rate with this burst, before its connection gets `GOAWAY`
    /// (default: 2 a second, burst 20).
    pub fn http2_reset_handshakes(mut self, rate: Rate) -> Self {
        self.http2_resets = rate;
        self
    }

    /// The bound on connections in all: the one set, or half the soft
    /// descriptor limit (at least 64).
    pub(crate) fn resolved_max(&self) -> usize {
        self.max.unwrap_or_else(|| {
            let limit = descriptor_limit().unwrap_or(1024);
            (limit / 2).max(64)
        })
    }
}

/// The soft `RLIMIT_NOFILE` of the process.
fn descriptor_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}
