//! How long a client connection may sit in each state before it is closed.

use std::time::Duration;

/// How long a client connection may sit in each state of its life before
/// the [`Server`](super::Server) closes it.
///
/// Every state has a bound, on by default, so that connections that say
/// nothing cannot pile up until the process runs out of descriptors:
///
/// | state | setter | default | nginx / HAProxy |
/// | --- | --- | --- | --- |
/// | TLS handshake | [`tls_handshake`](Self::tls_handshake) | 10 s | `ssl_handshake_timeout` 60 s / `timeout client` |
/// | before the first bytes (protocol detection) | [`detect`](Self::detect) | 10 s | `client_header_timeout` 60 s / `timeout http-request` |
/// | a request head, from its first byte to its end | [`request_head`](Self::request_head) | 60 s | `client_header_timeout` 60 s / `timeout http-request` |
/// | HTTP/1.1 keep-alive: waiting for the next request | [`keep_alive`](Self::keep_alive) | 75 s | `keepalive_timeout` 75 s / `timeout http-keep-alive` |
/// | HTTP/2 with no open stream | [`http2_idle`](Self::http2_idle) | 75 s | `keepalive_timeout` 75 s / `timeout http-keep-alive` |
///
/// Times are totals, not gaps between bytes: a client that sends a byte
/// every two seconds is closed when its head is not complete after
/// `request_head`, as nginx does. An HTTP/2 connection is idle only while
/// no stream is open — a WebSocket over HTTP/2 is an open stream, so its
/// connection stays however long the WebSocket lives; on expiry it gets
/// `GOAWAY` and is closed a second later if the client does not close it.
/// Open WebSockets (tunnels) are timed by the proxy's own
/// [idle timeout](crate::WebSocketProxyLayer::idle_timeout), not here.
///
/// What happens on expiry: the connection is closed (logged at debug and
/// counted in `wsproxy_connections_timed_out_total`, see
/// [`metrics`](crate::metrics)); a request already being answered is never
/// cut by these timeouts.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use wsproxy::serve::Timeouts;
///
/// let timeouts = Timeouts::new()
///     .request_head(Duration::from_secs(10))
///     .keep_alive(Duration::from_secs(30));
/// assert_ne!(timeouts, Timeouts::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Timeouts {
    pub(crate) tls_handshake: Duration,
    pub(crate) detect: Duration,
    pub(crate) request_head: Duration,
    pub(crate) keep_alive: Duration,
    pub(crate) http2_idle: Duration,
}

/// Default [`Timeouts::tls_handshake`].
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Timeouts::detect`].
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Timeouts::request_head`].
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`Timeouts::keep_alive`].
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default [`Timeouts::http2_idle`].
pub const DEFAULT_HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

impl Default for Timeouts {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeouts {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Timeouts {
            tls_handshake: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            detect: DEFAULT_DETECT_TIMEOUT,
            request_head: DEFAULT_REQUEST_HEAD_TIMEOUT,
            keep_alive: DEFAULT_KEEP_ALIVE_TIMEOUT,
            http2_idle: DEFAULT_HTTP2_IDLE_TIMEOUT,
        }
    }

    /// Time a client has to complete its TLS handshake (default: 10 s).
    pub fn tls_handshake(mut self, timeout: Duration) -> Self {
        self.tls_handshake = timeout;
        self
    }

    /// Time from accepting a connection (after TLS) until its first bytes
    /// arrive, which is what tells HTTP/1.1 from HTTP/2 (default: 10 s).
    /// A client that connects and says nothing is closed after this.
    pub fn detect(mut self, timeout: Duration) -> Self {
        self.detect = timeout;
        self
    }

    /// Time from the first byte of a request to the end of its head
    /// (default: 60 s). HTTP/2 requests are bounded by
    /// [`http2_idle`](Self::http2_idle) instead: until a stream opens the
    /// connection has none.
    pub fn request_head(mut self, timeout: Duration) -> Self {
        self.request_head = timeout;
        self
    }

    /// Time an HTTP/1.1 connection may wait for its next request after a
    /// response (default: 75 s). `Duration::ZERO` turns keep-alive off:
    /// every connection closes after one response.
    pub fn keep_alive(mut self, timeout: Duration) -> Self {
        self.keep_alive = timeout;
        self
    }

    /// Time an HTTP/2 connection may stay with no open stream before it is
    /// sent `GOAWAY` (default: 75 s).
    pub fn http2_idle(mut self, timeout: Duration) -> Self {
        self.http2_idle = timeout;
        self
    }
}
