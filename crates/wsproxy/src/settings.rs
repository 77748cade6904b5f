//! What a tunnel relays with: timeouts, keepalive pings, message limits,
//! and the rate they are measured in.

use std::num::NonZeroU32;
use std::time::Duration;

/// Keepalive pings from the proxy toward one side of each tunnel.
///
/// When nothing at all has arrived from that peer for `interval`, the proxy
/// sends it a Ping frame of its own (at a frame boundary, so never inside
/// another frame). If still nothing arrives within `timeout`, the peer is
/// taken for dead: the proxy sends Close `1001` ("going away") to the other
/// side, waits for its answer up to the
/// [half-close timeout](crate::WebSocketProxyLayer::half_close_timeout),
/// and closes both connections. The dead peer gets no Close frame (it is
/// not reading), only the TCP close.
///
/// Traffic of any kind from the peer counts as a sign of life, so a busy
/// peer is never pinged. The peer's Pong to the proxy's Ping is recognised
/// by its payload (a random token of this process) and is not forwarded;
/// every other Ping and Pong passes through untouched. Pings and the
/// proxy's own Pongs do not reset the
/// [idle timeout](crate::WebSocketProxyLayer::idle_timeout): only
/// application traffic does.
///
/// This is what finds clients that vanished behind a NAT or a dead mobile
/// link, which otherwise hold a tunnel until the idle timeout.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use wsproxy::{Keepalive, WebSocketProxyLayer};
///
/// let layer = WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap())
///     .client_keepalive(Some(Keepalive::new(Duration::from_secs(30), Duration::from_secs(10))));
/// # drop(layer);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Keepalive {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl Keepalive {
    /// Ping after `interval` of silence; give up `timeout` after the ping.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Self { interval, timeout }
    }

    /// Silence before a ping.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Time allowed for any sign of life after a ping.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Limits on the frames and messages one side of a tunnel may send.
///
/// Checked against frame headers as they pass, before a byte of the
/// offending frame is forwarded. A frame whose payload is larger than
/// `max_frame`, or a data message whose fragments add up to more than
/// `max_message`, closes the tunnel: the sender gets Close `1009` ("message
/// too big"), the other side Close `1001` ("going away"), neither gets any
/// part of the offending frame, and a log line names the limit and the
/// route.
///
/// Both limits are off by default, as in nginx and HAProxy, which do not
/// look at frames. `max_frame` also applies to control frames (RFC 6455
/// allows them at most 125 bytes of payload anyway).
///
/// # Example
///
/// ```
/// use wsproxy::{MessageLimits, WebSocketProxyLayer};
///
/// // Clients may send messages of up to 1 MiB, in frames of up to 64 KiB.
/// let layer = WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap())
///     .client_limits(MessageLimits::new().max_frame(64 * 1024).max_message(1024 * 1024));
/// # drop(layer);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct MessageLimits {
    pub(crate) max_frame: Option<u64>,
    pub(crate) max_message: Option<u64>,
    pub(crate) max_rate: Option<Rate>,
}

impl MessageLimits {
    /// No limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest frame payload, in bytes.
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// The largest data message (all its fragments), in bytes.
    pub fn max_message(mut self, bytes: u64) -> Self {
        self.max_message = Some(bytes);
        self
    }

    /// At most this many data messages per second (or minute), with room
    /// for a burst, per tunnel. A message over the rate closes the tunnel
    /// with `1008` ("policy violation") toward the sender and `1001` toward
    /// the other side, before any of it is forwarded, and is logged with
    /// the route and the client. Control frames do not count.
    ///
    /// ```
    /// use wsproxy::MessageLimits;
    /// use wsproxy::admit::Rate;
    ///
    /// // 50 messages a second, 100 at once.
    /// let limits = MessageLimits::new().max_rate(Rate::per_second(50).burst(100));
    /// # drop(limits);
    /// ```
    pub fn max_rate(mut self, rate: Rate) -> Self {
        self.max_rate = Some(rate);
        self
    }

    pub(crate) fn is_none(&self) -> bool {
        self.max_frame.is_none() && self.max_message.is_none() && self.max_rate.is_none()
    }
}

/// Which [`MessageLimits`] limit a frame broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// A frame's payload was larger than `max_frame`.
    Frame(u64),
    /// A message grew larger than `max_message`.
    Message(u64),
    /// Messages came faster than `max_rate`.
    Rate,
}

impl Exceeded {
    /// The close code the sender gets.
    pub(crate) fn close_code(self) -> u16 {
        match self {
            Exceeded::Frame(_) | Exceeded::Message(_) => crate::frame::MESSAGE_TOO_BIG,
            Exceeded::Rate => crate::frame::POLICY_VIOLATION,
        }
    }
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Frame(len) => write!(f, "max_frame (a frame of {len} bytes)"),
            Exceeded::Message(len) => write!(f, "max_message (a message of {len}+ bytes)"),
            Exceeded::Rate => f.write_str("max_rate (messages faster than the rate)"),
        }
    }
}

/// Settings of one tunnel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) idle: Option<Duration>,
    pub(crate) half_close: Duration,
    /// Pings toward the client.
    pub(crate) client_keepalive: Option<Keepalive>,
    /// Pings toward the backend.
    pub(crate) backend_keepalive: Option<Keepalive>,
    /// Limits on what the client sends.
    pub(crate) client_limits: MessageLimits,
    /// Limits on what the backend sends.
    pub(crate) backend_limits: MessageLimits,
    /// Send the survivor a Close when the other side vanishes without one.
    pub(crate) close_on_disconnect: bool,
}

/// A rate: `requests` per `period`, with room for a burst — of handshakes
/// for `RateLimit`, of messages for
/// [`MessageLimits::max_rate`](crate::MessageLimits::max_rate).
///
/// # nginx's `limit_req`
///
/// `limit_req_zone ... rate=10r/s;` + `limit_req ... burst=20 nodelay;` is
/// `Rate::per_second(10).burst(20)`: 21 handshakes may come at once (one
/// at the rate plus 20 of burst), then one every 100 ms, and every
/// handshake over that is refused at once (`nodelay`: the proxy never
/// queues handshakes). Without `burst`, nginx's default `burst=0` is
/// `burst(0)`: one at a time, one every 100 ms. The algorithm is GCRA
/// (the `governor` crate), which is what nginx's leaky bucket amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Rate {
    pub(crate) requests: NonZeroU32,
    pub(crate) period: Duration,
    pub(crate) burst: u32,
}

impl Rate {
    /// `n` per second (at least 1).
    pub fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// `n` per minute (at least 1).
    pub fn per_minute(n: u32) -> Self {
        Self::new(n, Duration::from_secs(60))
    }

    fn new(n: u32, period: Duration) -> Self {
        Self {
            requests: NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN),
            period,
            burst: 0,
        }
    }

    /// Allow `extra` over the rate at once (nginx's `burst`).
    pub fn burst(mut self, extra: u32) -> Self {
        self.burst = extra;
        self
    }

    /// Time between two requests at the rate.
    pub(crate) fn interval(self) -> Duration {
        self.period / self.requests.get()
    }

    /// Requests over the rate allowed at once.
    pub(crate) fn extra(self) -> u32 {
        self.burst
    }

    /// One more event at `now`, GCRA: `due` is when the next one is due at
    /// the rate (the theoretical arrival time); returns `false`, leaving
    /// `due` as it was, if the event is over the rate and its burst.
    pub(crate) fn allow(
        self,
        due: &mut Option<tokio::time::Instant>,
        now: tokio::time::Instant,
    ) -> bool {
        let interval = self.interval();
        let next = due.map_or(now, |due| due.max(now));
        if next.saturating_duration_since(now) > interval * self.extra() {
            return false;
        }
        *due = Some(next + interval);
        true
    }
}
