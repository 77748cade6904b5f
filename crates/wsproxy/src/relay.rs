//! The tunnel: relay bytes both ways between the upgraded client and
//! backend connections until both sides are done.
//!
//! # Memory
//!
//! An idle tunnel holds no copy buffer. Each worker thread owns one scratch
//! buffer of [`SCRATCH_SIZE`] bytes that every tunnel on that thread reads
//! into; the bytes are written to the other side at once, and only when the
//! other side cannot take them all (back-pressure) is the remainder copied
//! into a buffer owned by that direction, freed as soon as it is written.
//! While that buffer exists the direction does not read, so a slow reader
//! on one side slows the sender on the other instead of growing memory.
//!
//! # Frames
//!
//! Every chunk passes through a [`FrameTracker`], which reads frame headers
//! only. With no frame-aware setting in use (no limits, no keepalive, no
//! drain in progress) that is all: bytes out equal bytes in, chunk for
//! chunk. When a setting needs it, the direction becomes frame-aware: it
//! writes a frame header only once the header is whole (a partial header
//! at the end of a read is fed again in front of the next one), so it can
//! refuse a frame before any of it is forwarded, insert a Ping or Close of
//! the proxy's own at a frame boundary, and hold back a Pong until it
//! knows whether it answers the proxy's own Ping. Payloads are never
//! copied, unmasked or re-encoded.
//!
//! # Ending
//!
//! - A side whose connection ends *without having sent a Close frame* —
//!   a crashed or killed backend, a closed laptop lid, a cut network: an
//!   end of stream, a read error such as a reset, or a write error toward
//!   it — has vanished. With `close_on_disconnect` (the default) the
//!   survivor gets a Close frame of the proxy's own at the next frame
//!   boundary of the direction that writes to it (everything the vanished
//!   side sent has been forwarded by then): toward a client **1011**
//!   ("backend went away"; 1001 "going away" if a drain of the tunnel was
//!   under way), toward a backend **1001** ("client went away", masked).
//!   What the survivor sends from then on is read, to see its answering
//!   Close, and not forwarded; the tunnel ends at that answer or after
//!   `min(half-close timeout, 1 s)`, closing both connections.
//!
//!   Why those codes: 1006 is reserved for an endpoint to *report* a
//!   connection lost without a Close, and may never be sent (RFC 6455
//!   §7.4.1); it is what a browser reports for a bare TCP close, and apps
//!   take it for a network failure. 1011 says the server side met an
//!   unexpected condition, which is what happened, from the client's
//!   point of view, when its backend died. 1001 is what a browser itself
//!   sends when a page goes away, so it is what a backend expects when
//!   its client vanished; during a drain the client is told 1001, as
//!   every other tunnel is.
//!
//!   If the vanished side stopped in the middle of a frame there is no
//!   frame boundary, so no Close can be sent: the survivor sees the
//!   connection end as below, as it would without the setting.
//! - Otherwise (a side that sent its Close first, a side that stopped
//!   inside a frame, a proxy Close already on its way to the survivor, or
//!   the setting off) a clean end of stream (FIN) on one side is passed on
//!   as a write shutdown to the other; the other direction keeps flowing
//!   for up to the half-close timeout, and a read or write error on either
//!   side (e.g. a reset) ends the tunnel at once, which closes both
//!   connections.
//! - No application bytes in either direction for the idle timeout end the
//!   tunnel.
//! - A shutdown, a broken limit or a dead keepalive peer makes the proxy
//!   close the WebSocket itself: Close frames at the next frame boundary,
//!   then it waits for the answers up to a deadline.

use std::cell::RefCell;
use std::fmt;
use std::future::poll_fn;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::frame::{FrameTracker, Head, OP_CLOSE, OP_PING, OP_PONG};
use crate::settings::{Exceeded, Keepalive, MessageLimits};
use crate::tunnels::Drain;

/// Size of the per-thread scratch buffer reads go into.
pub(crate) const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Close code: the endpoint is going away.
pub(crate) const GOING_AWAY: u16 = 1001;
/// Close code: the server met an unexpected condition (here: the backend
/// went away without a Close).
pub(crate) const INTERNAL_ERROR: u16 = 1011;
/// Close code: a message too big to process.
pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;
/// Close code: a message that breaks the endpoint's policy.
pub(crate) const POLICY_VIOLATION: u16 = 1008;

/// Payload of the proxy's Pings: a random token of this process, so that
/// the answering Pongs can be told from the application's.
fn ping_token() -> &'static [u8; 8] {
    static TOKEN: OnceLock<[u8; 8]> = OnceLock::new();
    TOKEN.get_or_init(|| random_u64().to_be_bytes())
}

/// A random number from the standard library's randomly keyed hasher
/// (good enough for masking keys and the ping token: neither is a secret,
/// and the proxy's frames carry no attacker-chosen payload).
pub(crate) fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both sides closed; `client_first` tells who closed first: who sent
    /// the first Close frame, or without one, who ended its stream first.
    Closed { client_first: bool },
    /// One side closed and the other did not follow within the half-close
    /// timeout.
    HalfCloseTimeout { client_first: bool },
    /// No traffic either way for the idle timeout.
    Idle,
    /// The proxy closed the WebSocket for `reason`; `answered` tells
    /// whether the closing handshakes completed before the deadline.
    Proxy { reason: Reason, answered: bool },
    /// An I/O error on the client connection.
    ClientError(io::Error),
    /// An I/O error on the backend connection.
    BackendError(io::Error),
    /// One side's connection ended without a Close frame and the proxy
    /// sent the other side one (`close_on_disconnect`).
    Vanished {
        vanished: Vanished,
        /// Whether the survivor answered with its Close before the
        /// deadline.
        answered: bool,
        /// An I/O error on the survivor's connection while waiting for
        /// that answer.
        then: Option<io::Error>,
    },
}

/// A side whose connection ended before it sent a Close frame, and what
/// the proxy told the other side.
#[derive(Debug)]
pub(crate) struct Vanished {
    /// The side that went away: `true` for the client.
    pub(crate) client: bool,
    /// How its connection ended.
    pub(crate) gone: Gone,
    /// The code of the Close the proxy sent the survivor.
    pub(crate) code: u16,
    /// Who closed first, counted as for [`End::Closed`]: who sent the
    /// first Close frame, or without one, who ended its stream first.
    pub(crate) client_first: bool,
    /// A close of the proxy's own (a drain) that was under way.
    pub(crate) during: Option<Reason>,
}

/// How a side's connection ended.
#[derive(Debug)]
pub(crate) enum Gone {
    /// End of stream (TCP FIN, HTTP/2 END_STREAM).
    Eof,
    /// Reading from it failed (e.g. a reset).
    Read(io::Error),
    /// Writing to it failed.
    Write(io::Error),
}

/// Why the proxy closed a WebSocket itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The proxy is shutting down.
    Shutdown,
    /// The backend was marked down or removed from its set, which closes
    /// its tunnels.
    BackendDown,
    /// The client (`true`) or backend did not answer a keepalive ping.
    Keepalive { client: bool },
    /// The client (`true`) or backend broke a message limit.
    Limit { client: bool, exceeded: Exceeded },
}

/// Why a tunnel ended, as counted in stats and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndKind {
    ClientClose,
    BackendClose,
    Idle,
    Keepalive,
    Limit,
    Shutdown,
    BackendDown,
    Error,
}

impl EndKind {
    /// The label in metrics.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndKind::ClientClose => "client_close",
            EndKind::BackendClose => "backend_close",
            EndKind::Idle => "idle",
            EndKind::Keepalive => "keepalive",
            EndKind::Limit => "limit",
            EndKind::Shutdown => "shutdown",
            EndKind::BackendDown => "backend_down",
            EndKind::Error => "error",
        }
    }
}

impl End {
    /// Why the tunnel ended, as counted.
    pub(crate) fn kind(&self) -> EndKind {
        match self {
            End::Closed { client_first: true } | End::HalfCloseTimeout { client_first: true } => {
                EndKind::ClientClose
            }
            End::Closed { .. } | End::HalfCloseTimeout { .. } => EndKind::BackendClose,
            End::Idle => EndKind::Idle,
            End::Proxy { reason, .. } => reason.kind(),
            End::ClientError(_) | End::BackendError(_) => EndKind::Error,
            // Counted as the same TCP events were without the proxy's
            // Close: an error is an error, a drain under way counts as
            // the drain, an end of stream as who closed first.
            End::Vanished { vanished, then, .. } => match vanished {
                _ if then.is_some() => EndKind::Error,
                Vanished {
                    gone: Gone::Read(_) | Gone::Write(_),
                    ..
                } => EndKind::Error,
                Vanished {
                    during: Some(reason),
                    ..
                } => reason.kind(),
                Vanished {
                    client_first: true, ..
                } => EndKind::ClientClose,
                Vanished { .. } => EndKind::BackendClose,
            },
        }
    }
}

impl Reason {
    fn kind(self) -> EndKind {
        match self {
            Reason::Shutdown => EndKind::Shutdown,
            Reason::BackendDown => EndKind::BackendDown,
            Reason::Keepalive { .. } => EndKind::Keepalive,
            Reason::Limit { .. } => EndKind::Limit,
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |client: bool| if client { "client" } else { "backend" };
        let handshake = |f: &mut fmt::Formatter<'_>, answered: bool| {
            if answered {
                f.write_str(", closing handshake completed")
            } else {
                f.write_str(", closed without a complete closing handshake")
            }
        };
        match self {
            End::Closed { client_first } => write!(f, "{} closed first", side(*client_first)),
            End::HalfCloseTimeout { client_first } => {
                write!(
                    f,
                    "{} closed, the other side did not follow in time",
                    side(*client_first)
                )
            }
            End::Idle => f.write_str("idle timeout"),
            End::Proxy { reason, answered } => {
                match reason {
                    Reason::Shutdown => f.write_str("shutdown")?,
                    Reason::BackendDown => f.write_str("backend down or removed")?,
                    Reason::Keepalive { client } => {
                        write!(f, "keepalive: the {} did not answer", side(*client))?;
                    }
                    Reason::Limit { client, exceeded } => {
                        write!(f, "limit: the {} broke {exceeded}", side(*client))?;
                    }
                }
                handshake(f, *answered)
            }
            End::ClientError(e) => write!(f, "client error: {e}"),
            End::BackendError(e) => write!(f, "backend error: {e}"),
            End::Vanished {
                vanished,
                answered,
                then,
            } => {
                write!(f, "{} ended without a Close frame (", side(vanished.client))?;
                match &vanished.gone {
                    Gone::Eof => f.write_str("end of stream")?,
                    Gone::Read(e) => write!(f, "read error: {e}")?,
                    Gone::Write(e) => write!(f, "write error: {e}")?,
                }
                f.write_str(")")?;
                match vanished.during {
                    Some(Reason::Shutdown) => f.write_str(" during shutdown")?,
                    Some(Reason::BackendDown) => f.write_str(" while its backend was closed")?,
                    _ => {}
                }
                write!(
                    f,
                    ", Close {} sent to the {}",
                    vanished.code,
                    side(!vanished.client)
                )?;
                handshake(f, *answered)?;
                if let Some(e) = then {
                    write!(f, ", then a {} error: {e}", side(!vanished.client))?;
                }
                Ok(())
            }
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

/// What crossed a finished tunnel, per direction.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    /// Client to backend.
    pub(crate) up: Direction,
    /// Backend to client.
    pub(crate) down: Direction,
}

/// What crossed one direction of a tunnel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Direction {
    /// Bytes forwarded to the other side (the proxy's own frames are not
    /// counted).
    pub(crate) bytes: u64,
    /// Frame headers seen.
    pub(crate) frames: u64,
    /// Complete data messages seen.
    pub(crate) messages: u64,
    /// Status code of the sender's Close frame, if it sent one with a code.
    pub(crate) close_code: Option<u16>,
}

/// The proxy closing the WebSocket itself.
struct Closing {
    why: Why,
    deadline: Instant,
    /// The sides that must answer the proxy's Close before the tunnel ends
    /// (a dead keepalive peer is not waited for).
    wait_client: bool,
    wait_backend: bool,
}

/// Why the proxy is closing a WebSocket.
enum Why {
    /// For a reason of its own.
    Proxy(Reason),
    /// A side vanished; the proxy told the other.
    Vanished(Vanished),
}

impl Closing {
    /// The tunnel ends now.
    fn end(self, answered: bool) -> End {
        match self.why {
            Why::Proxy(reason) => End::Proxy { reason, answered },
            Why::Vanished(vanished) => End::Vanished {
                vanished,
                answered,
                then: None,
            },
        }
    }
}

/// Keepalive state toward one peer.
struct Alive {
    settings: Keepalive,
    /// Bytes received from the peer when last looked at.
    seen: u64,
    /// When a ping is due if nothing arrives before: an interval after
    /// something last arrived from the peer.
    ping_at: Instant,
    /// A ping was asked for and is waiting for a frame boundary.
    asked: bool,
    /// Pings written to the peer when last looked at.
    pings: u64,
    /// A ping was written; something must arrive by then.
    reply_by: Option<Instant>,
}

impl Alive {
    fn new(settings: Option<Keepalive>, now: Instant) -> Option<Self> {
        settings.map(|settings| Alive {
            settings,
            seen: 0,
            ping_at: now + settings.interval,
            asked: false,
            pings: 0,
            reply_by: None,
        })
    }

    /// Update from the bytes received from the peer and the pings written
    /// to it so far. Returns whether a ping should be asked for now, or
    /// `Err` when the peer missed its deadline. The timeout runs from when
    /// the ping was written, not asked for: a ping waits for a frame
    /// boundary, and a long frame on its way to the peer is not the peer's
    /// fault.
    fn check(&mut self, received: u64, pings: u64, now: Instant) -> Result<bool, ()> {
        if pings != self.pings {
            self.pings = pings;
            self.asked = false;
            self.reply_by = Some(now + self.settings.timeout);
        }
        if received != self.seen {
            self.seen = received;
            self.ping_at = now + self.settings.interval;
            self.reply_by = None;
        }
        match self.reply_by {
            Some(by) if now >= by => Err(()),
            Some(_) => Ok(false),
            None if !self.asked && now >= self.ping_at => {
                self.asked = true;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// When to look again; `None` while a ping waits to be written.
    fn next_deadline(&self) -> Option<Instant> {
        match self.reply_by {
            Some(by) => Some(by),
            None if self.asked => None,
            None => Some(self.ping_at),
        }
    }
}

/// Relay between `client` and `backend` until the tunnel ends. The proxy
/// passes its layer's shared `Arc<Settings>`, so an open tunnel does not
/// carry a copy of them.
pub(crate) async fn relay<C, B>(
    mut client: C,
    mut backend: B,
    settings: impl Into<std::sync::Arc<Settings>>,
    drain: Drain,
) -> (End, Totals)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let settings = settings.into();
    let start = Instant::now();
    // Up: client to backend; the proxy's frames to the backend are masked.
    let mut up = Pump::new(
        true,
        settings.client_limits,
        settings.client_keepalive.is_some(),
        settings.close_on_disconnect,
    );
    let mut down = Pump::new(
        false,
        settings.backend_limits,
        settings.backend_keepalive.is_some(),
        settings.close_on_disconnect,
    );
    let mut client_alive = Alive::new(settings.client_keepalive, start);
    let mut backend_alive = Alive::new(settings.backend_keepalive, start);
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut timer_armed = false;
    // A shutdown and the backend's going down are watched apart: after
    // one, the other's deadline may still be the sooner.
    let mut shutdown = std::pin::pin!(drain.shutdown());
    let mut shutdown_seen = false;
    let mut backend_gone = std::pin::pin!(drain.backend_closed());
    let mut backend_gone_seen = false;
    let mut closing: Option<Closing> = None;
    let mut last_activity = start;
    let mut half_closed: Option<(Instant, bool)> = None;
    // Who sent the first Close frame (`true`: the client).
    let mut first_close: Option<bool> = None;

    let end = poll_fn(|cx| {
        loop {
            let mut again = false;
            for (signalled, reason) in [
                (
                    !shutdown_seen && shutdown.as_mut().poll(cx).is_ready(),
                    Reason::Shutdown,
                ),
                (
                    !backend_gone_seen && backend_gone.as_mut().poll(cx).is_ready(),
                    Reason::BackendDown,
                ),
            ] {
                if !signalled {
                    continue;
                }
                let deadline = match reason {
                    Reason::Shutdown => {
                        shutdown_seen = true;
                        drain.deadline()
                    }
                    _ => {
                        backend_gone_seen = true;
                        drain.backend_deadline()
                    }
                };
                if let Some(closing) = &mut closing {
                    // A close for another reason is under way: this
                    // deadline still bounds it.
                    closing.deadline = closing.deadline.min(deadline);
                } else {
                    // A closing handshake already under way is left to
                    // finish; otherwise both sides get Close 1001.
                    let under_way = up.frames.closes > 0 || down.frames.closes > 0;
                    if !under_way {
                        up.close_with(GOING_AWAY);
                        down.close_with(GOING_AWAY);
                    }
                    closing = Some(Closing {
                        why: Why::Proxy(reason),
                        deadline,
                        wait_client: true,
                        wait_backend: true,
                    });
                }
            }
            let before = up.bytes + down.bytes;
            let mut up_done = false;
            let mut down_done = false;
            // Up first (client to backend), then down.
            for from_client in [true, false] {
                let polled = if from_client {
                    up.poll(cx, Pin::new(&mut client), Pin::new(&mut backend), down.done)
                } else {
                    down.poll(cx, Pin::new(&mut backend), Pin::new(&mut client), up.done)
                };
                let closes = if from_client {
                    up.frames.closes
                } else {
                    down.frames.closes
                };
                if first_close.is_none() && closes > 0 {
                    first_close = Some(from_client);
                }
                match polled {
                    Poll::Ready(Ok(())) if from_client => up_done = true,
                    Poll::Ready(Ok(())) => down_done = true,
                    Poll::Ready(Err(failure)) => {
                        let disconnect = Disconnect {
                            enabled: settings.close_on_disconnect,
                            closed_first: first_close
                                .or(half_closed.map(|(_, client_first)| client_first)),
                            grace: Instant::now() + settings.half_close.min(VANISHED_GRACE),
                        };
                        if let Err(end) = disconnect.handle(
                            failure,
                            from_client,
                            &mut up,
                            &mut down,
                            &mut closing,
                        ) {
                            return Poll::Ready(end);
                        }
                        again = true;
                    }
                    Poll::Pending => {}
                }
            }
            if up_done && down_done {
                if let Some(closing) = closing.take() {
                    let answered = handshakes_done(&closing, &up, &down);
                    return Poll::Ready(closing.end(answered));
                }
                let client_first = first_close
                    .unwrap_or_else(|| half_closed.is_none_or(|(_, client_first)| client_first));
                return Poll::Ready(End::Closed { client_first });
            }
            let now = Instant::now();
            // A broken limit: the sender gets 1009, the other side 1001
            // (the breaking direction already sent it, in place of the
            // frame).
            for (client, exceeded) in [(true, up.exceeded.take()), (false, down.exceeded.take())] {
                let Some(exceeded) = exceeded else { continue };
                if closing.is_none() {
                    let toward_sender = if client { &mut down } else { &mut up };
                    toward_sender.close_with(exceeded.close_code());
                    closing = Some(Closing {
                        why: Why::Proxy(Reason::Limit { client, exceeded }),
                        deadline: now + settings.half_close,
                        wait_client: true,
                        wait_backend: true,
                    });
                    again = true;
                }
            }
            if let Some(done) = &closing
                && handshakes_done(done, &up, &down)
                && up.flushed()
                && down.flushed()
                && let Some(closing) = closing.take()
            {
                return Poll::Ready(closing.end(true));
            }
            if up.bytes + down.bytes != before {
                last_activity = now;
            }
            if half_closed.is_none() && (up_done || down_done) {
                half_closed = Some((now + settings.half_close, up_done));
            }
            // Keepalive: ping a silent peer, give up on one that stays
            // silent after the ping.
            for client in [true, false] {
                let alive = if client {
                    &mut client_alive
                } else {
                    &mut backend_alive
                };
                let Some(alive) = alive.as_mut() else {
                    continue;
                };
                // The peer sends on one direction and is written to on the
                // other.
                let (from_peer, to_peer) = if client {
                    (&mut up, &mut down)
                } else {
                    (&mut down, &mut up)
                };
                match alive.check(from_peer.received, to_peer.pings, now) {
                    Ok(true) if closing.is_none() => {
                        if to_peer.ping() {
                            again = true;
                        }
                    }
                    Ok(_) => {}
                    Err(()) if closing.is_none() => {
                        // The survivor is written to by the peer's
                        // direction; the dead peer gets nothing more.
                        from_peer.close_with(GOING_AWAY);
                        to_peer.mute();
                        closing = Some(Closing {
                            why: Why::Proxy(Reason::Keepalive { client }),
                            deadline: now + settings.half_close,
                            wait_client: !client,
                            wait_backend: client,
                        });
                        again = true;
                    }
                    Err(()) => {}
                }
            }
            if again {
                continue;
            }
            // The timer is armed lazily: activity only moves the
            // deadlines, and the timer is re-armed when it fires early.
            let deadline = [
                settings.idle.map(|idle| last_activity + idle),
                half_closed.map(|(at, _)| at),
                closing.as_ref().map(|c| c.deadline),
                client_alive
                    .as_ref()
                    .filter(|_| closing.is_none())
                    .and_then(Alive::next_deadline),
                backend_alive
                    .as_ref()
                    .filter(|_| closing.is_none())
                    .and_then(Alive::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(deadline) = deadline else {
                return Poll::Pending;
            };
            if !timer_armed || deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
                timer_armed = true;
            }
            ready!(timer.as_mut().poll(cx));
            timer_armed = false;
            let now = Instant::now();
            if closing.as_ref().is_some_and(|c| now >= c.deadline)
                && let Some(closing) = closing.take()
            {
                return Poll::Ready(closing.end(false));
            }
            if let Some((at, client_first)) = half_closed
                && now >= at
            {
                let client_first = first_close.unwrap_or(client_first);
                return Poll::Ready(End::HalfCloseTimeout { client_first });
            }
            if settings
                .idle
                .is_some_and(|idle| now >= last_activity + idle)
            {
                return Poll::Ready(End::Idle);
            }
            // A keepalive deadline: looked at on the next turn.
        }
    })
    .await;
    (
        end,
        Totals {
            up: up.totals(),
            down: down.totals(),
        },
    )
}

/// Whether each side the proxy waits for has been sent a Close (forwarded
/// or the proxy's) and has sent one back.
fn handshakes_done(closing: &Closing, up: &Pump, down: &Pump) -> bool {
    let client = !closing.wait_client || (down.closed_toward() && up.frames.closes > 0);
    let backend = !closing.wait_backend || (up.closed_toward() && down.frames.closes > 0);
    client && backend
}

/// How long, at most, the proxy waits for the survivor to answer the Close
/// it sent after the other side vanished (less if the half-close timeout
/// is shorter): a client must learn of the end promptly even if it never
/// answers.
const VANISHED_GRACE: Duration = Duration::from_secs(1);

/// Why a direction stopped before it was done.
enum Failure {
    /// Reading from the source failed.
    Read(io::Error),
    /// Writing to the destination failed.
    Write(io::Error),
    /// The source ended (reported once, with `close_on_disconnect`): the
    /// relay decides whether the destination hears a Close first.
    Ended,
}

impl Gone {
    fn into_error(self) -> Option<io::Error> {
        match self {
            Gone::Eof => None,
            Gone::Read(e) | Gone::Write(e) => Some(e),
        }
    }
}

impl Closing {
    /// The tunnel ends at once on `error` on the `client`'s connection
    /// (`true`) or the backend's.
    fn failed(self, client: bool, error: io::Error) -> End {
        match self.why {
            Why::Vanished(vanished) => End::Vanished {
                vanished,
                answered: false,
                then: Some(error),
            },
            Why::Proxy(_) if client => End::ClientError(error),
            Why::Proxy(_) => End::BackendError(error),
        }
    }
}

/// What the relay knows when a direction stops with a [`Failure`]: a side
/// is gone.
struct Disconnect {
    /// `close_on_disconnect`.
    enabled: bool,
    /// Who closed first so far (`true`: the client): who sent the first
    /// Close frame, or without one, who ended its stream first.
    closed_first: Option<bool>,
    /// When the wait for the survivor's answer ends.
    grace: Instant,
}

impl Disconnect {
    /// The up direction (`from_client`) or the down one stopped with
    /// `failure`: the side it reads from, or on a write error the side it
    /// writes to, is gone. Either the survivor is told with a Close of the
    /// proxy's own and the tunnel goes on until it answers (`Ok`), or it
    /// goes on as without the setting: an end of stream is passed on as a
    /// half-close (`Ok`), an error ends the tunnel (`Err`).
    fn handle(
        self,
        failure: Failure,
        from_client: bool,
        up: &mut Pump,
        down: &mut Pump,
        closing: &mut Option<Closing>,
    ) -> Result<(), End> {
        let (client, gone) = match failure {
            Failure::Ended => (from_client, Gone::Eof),
            Failure::Read(e) => (from_client, Gone::Read(e)),
            // The up direction writes to the backend.
            Failure::Write(e) => (!from_client, Gone::Write(e)),
        };
        // After one side vanished, the survivor's end of stream ends the
        // tunnel the usual way, its error at once.
        if let Some(vanishing) = closing.take_if(|c| matches!(c.why, Why::Vanished(_))) {
            let Some(error) = gone.into_error() else {
                *closing = Some(vanishing);
                return Ok(());
            };
            return Err(vanishing.failed(client, error));
        }
        // The survivor hears the Close from the direction that carried the
        // vanished side's bytes, right after the last of them: not inside a
        // frame, and not after a Close (forwarded or the proxy's) or with
        // one of the proxy's already due.
        let (to_survivor, to_dead) = if client { (up, down) } else { (down, up) };
        let can_tell = self.enabled
            && !to_survivor.done
            && !to_survivor.closed_toward()
            && to_survivor.close_due.is_none()
            && to_survivor.frames.at_frame_boundary();
        if !can_tell {
            return match gone.into_error() {
                None => Ok(()),
                Some(e) if client => Err(End::ClientError(e)),
                Some(e) => Err(End::BackendError(e)),
            };
        }
        let during = match closing {
            Some(Closing {
                why: Why::Proxy(reason),
                ..
            }) => Some(*reason),
            _ => None,
        };
        let draining = matches!(during, Some(Reason::Shutdown | Reason::BackendDown));
        let (code, reason): (u16, &'static [u8]) = if client {
            (GOING_AWAY, b"client went away")
        } else if draining {
            (GOING_AWAY, b"going away")
        } else {
            (INTERNAL_ERROR, b"backend went away")
        };
        to_survivor.close_with_reason(code, reason);
        to_survivor.source_gone();
        to_dead.destination_gone();
        let why = Why::Vanished(Vanished {
            client,
            gone,
            code,
            client_first: self.closed_first.unwrap_or(client),
            during,
        });
        match closing {
            Some(closing) => {
                closing.why = why;
                closing.deadline = closing.deadline.min(self.grace);
                // The vanished side is not waited for.
                if client {
                    closing.wait_client = false;
                } else {
                    closing.wait_backend = false;
                }
            }
            None => {
                *closing = Some(Closing {
                    why,
                    deadline: self.grace,
                    wait_client: !client,
                    wait_backend: client,
                });
            }
        }
        Ok(())
    }
}

/// One direction of a tunnel.
struct Pump {
    /// Bytes to write before reading more: only under back-pressure.
    pending: Option<Pending>,
    /// Bytes read but not yet decided on (a partial frame header, or a Pong
    /// not yet whole), fed again in front of the next read.
    held: Vec<u8>,
    /// The source reached end of stream.
    eof: bool,
    /// The destination was shut down after `eof`.
    done: bool,
    /// Written bytes must be flushed before waiting for more input.
    unflushed: bool,
    /// Bytes forwarded.
    bytes: u64,
    /// Bytes read from the source, forwarded or not.
    received: u64,
    /// Frame boundaries of what passes, read from headers only.
    frames: FrameTracker,
    /// Frames the proxy writes to the destination are masked (it is the
    /// backend, and the proxy speaks to it as a client).
    mask: bool,
    limits: MessageLimits,
    /// Drop the Pongs that answer the proxy's own Pings to the source.
    own_pongs: bool,
    /// Send a Ping to the destination at the next frame boundary.
    ping_due: bool,
    /// Send a Close with this code and reason to the destination at the
    /// next frame boundary.
    close_due: Option<(u16, &'static [u8])>,
    /// The proxy sent a Close to the destination; what the source sends
    /// from now on is read (to see its Close) but not forwarded.
    close_sent: bool,
    /// A frame from the source broke a limit.
    exceeded: Option<Exceeded>,
    /// Pings of the proxy's own written to the destination.
    pings: u64,
    /// When the next message is due at the rate limit (GCRA's theoretical
    /// arrival time).
    rate_due: Option<Instant>,
    /// Report the source's end to the relay before passing it on
    /// (`close_on_disconnect`).
    report_end: bool,
    /// The source's end was reported.
    end_reported: bool,
    /// At the source's end, leave the destination open: the proxy's Close
    /// went to it, and the tunnel closes it.
    leave_open: bool,
    /// The destination is gone: nothing is written to it, not even a
    /// shutdown.
    dst_gone: bool,
}

struct Pending {
    buf: Vec<u8>,
    pos: usize,
}

impl Pump {
    fn new(mask: bool, limits: MessageLimits, own_pongs: bool, report_end: bool) -> Self {
        Pump {
            pending: None,
            held: Vec::new(),
            eof: false,
            done: false,
            unflushed: false,
            bytes: 0,
            received: 0,
            frames: FrameTracker::default(),
            mask,
            limits,
            own_pongs,
            ping_due: false,
            close_due: None,
            close_sent: false,
            exceeded: None,
            pings: 0,
            rate_due: None,
            report_end,
            end_reported: false,
            leave_open: false,
            dst_gone: false,
        }
    }

    fn totals(&self) -> Direction {
        Direction {
            bytes: self.bytes,
            frames: self.frames.frames,
            messages: self.frames.messages,
            close_code: self.frames.close_code,
        }
    }

    /// Whether the destination has been sent a Close (forwarded or the
    /// proxy's): nothing of the proxy's own may follow it.
    fn closed_toward(&self) -> bool {
        self.close_sent || self.frames.closes > 0
    }

    /// Send a Ping of the proxy's own to the destination at the next frame
    /// boundary; `false` if it can no longer be sent.
    fn ping(&mut self) -> bool {
        if self.done || self.closed_toward() {
            return false;
        }
        self.ping_due = true;
        true
    }

    /// Everything written has reached the destination's socket.
    fn flushed(&self) -> bool {
        // A done direction shut its destination down, which flushed it (or
        // left that to the tunnel closing both sockets).
        self.done || (self.pending.is_none() && !self.unflushed)
    }

    /// Send Close `code` to the destination at the next frame boundary,
    /// unless the source already sent one through (a second Close would
    /// break the protocol), and forward nothing after it.
    fn close_with(&mut self, code: u16) {
        let reason: &[u8] = match code {
            MESSAGE_TOO_BIG => b"message too big",
            POLICY_VIOLATION => b"policy violation",
            _ => b"going away",
        };
        self.close_with_reason(code, reason);
    }

    /// [`close_with`](Self::close_with) and a reason of its own (at most
    /// 123 bytes).
    fn close_with_reason(&mut self, code: u16, reason: &'static [u8]) {
        if !self.closed_toward() {
            self.close_due = Some((code, reason));
        }
    }

    /// Forward nothing more, and send nothing of the proxy's own: the
    /// destination is taken for dead.
    fn mute(&mut self) {
        self.close_due = None;
        self.ping_due = false;
        self.close_sent = true;
    }

    /// The source vanished (after [`close_with`](Self::close_with)): read
    /// nothing more from it; a partial frame held back is never sent. Once
    /// the Close is written, the destination is left open for the tunnel
    /// to close.
    fn source_gone(&mut self) {
        self.eof = true;
        self.end_reported = true;
        self.held = Vec::new();
        self.leave_open = true;
    }

    /// The destination vanished: [`mute`](Self::mute), drop what waits to
    /// be written to it, and do not shut it down. The source is still read,
    /// to see its Close.
    fn destination_gone(&mut self) {
        self.mute();
        self.dst_gone = true;
        self.pending = None;
        self.unflushed = false;
    }

    /// Whether this direction must look at frames rather than pass chunks.
    fn frame_aware(&self) -> bool {
        !self.limits.is_none() || self.own_pongs || self.ping_due || self.close_due.is_some()
    }

    /// Move bytes from `src` to `dst`; ready once `src` ended and `dst` was
    /// shut down. When the other direction is already `done`, `dst` is not
    /// shut down: the tunnel closes both sockets next, and closing sends
    /// the same FIN (`dst` was read to its end, so no reset) for one
    /// system call less per tunnel. Nor is it when it is gone, or was sent
    /// the proxy's Close after `src` vanished (only flushed then). With
    /// `report_end`, the end of `src` is first reported once as
    /// [`Failure::Ended`].
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        other_done: bool,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(pending) = &mut self.pending {
                while pending.pos < pending.buf.len() {
                    let n = ready!(dst.as_mut().poll_write(cx, &pending.buf[pending.pos..]))
                        .map_err(Failure::Write)?;
                    if n == 0 {
                        return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                    }
                    pending.pos += n;
                }
                self.pending = None;
                self.unflushed = true;
            }
            if self.frames.at_frame_boundary() && (self.ping_due || self.close_due.is_some()) {
                self.speak(cx, dst.as_mut())?;
                continue;
            }
            if self.eof {
                if self.report_end && !self.end_reported {
                    self.end_reported = true;
                    return Poll::Ready(Err(Failure::Ended));
                }
                if self.leave_open {
                    ready!(dst.as_mut().poll_flush(cx)).map_err(Failure::Write)?;
                    self.unflushed = false;
                } else if !other_done && !self.dst_gone {
                    ready!(dst.as_mut().poll_shutdown(cx)).map_err(Failure::Write)?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let held = self.held.len();
                scratch[..held].copy_from_slice(&self.held);
                let mut buf = ReadBuf::new(&mut scratch[held..]);
                match src.as_mut().poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(Failure::Read(e))),
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        self.received += n as u64;
                        self.held = Vec::new();
                        let data = &scratch[..held + n];
                        if n == 0 {
                            // End of stream: what was held back goes as is,
                            // unless nothing may follow the proxy's Close;
                            // the tracker sees it (a partial frame leaves
                            // no boundary for a Close of the proxy's).
                            if !self.close_sent {
                                self.frames.feed(data);
                                self.forward(cx, dst.as_mut(), data)?;
                            }
                            return Poll::Ready(Ok(0));
                        }
                        self.pass(cx, dst.as_mut(), data)?;
                        Poll::Ready(Ok(n))
                    }
                }
            });
            match read {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => self.unflushed = !self.dst_gone,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.unflushed {
                        // A flush that is not ready yet registers the waker;
                        // it is tried again on the next wake-up.
                        if let Poll::Ready(r) = dst.as_mut().poll_flush(cx) {
                            r.map_err(Failure::Write)?;
                            self.unflushed = false;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Pass one chunk read from the source.
    fn pass<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut dst: Pin<&mut W>,
        data: &[u8],
    ) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        if self.close_sent {
            // Only watched for the source's Close.
            self.frames.feed(data);
            return Ok(());
        }
        if !self.frame_aware() {
            self.frames.feed(data);
            return self.forward(cx, dst, data);
        }
        // Bytes `from..pos` are to be forwarded and not yet written.
        let (mut from, mut pos) = (0, 0);
        // A partial header left by the fast path was forwarded already: it
        // cannot be held back or refused (neither limits nor Pong checks
        // were on, or this direction would not have used the fast path).
        let mut carried = self.frames.partial_header_len() > 0;
        while pos < data.len() {
            if self.frames.at_frame_boundary() && (self.ping_due || self.close_due.is_some()) {
                self.forward(cx, dst.as_mut(), &data[from..pos])?;
                from = pos;
                self.speak(cx, dst.as_mut())?;
                if self.close_sent {
                    self.frames.feed(&data[pos..]);
                    return Ok(());
                }
            }
            let (n, head) = self.frames.feed_to_header(&data[pos..]);
            pos += n;
            let Some(head) = head else { break };
            let Some(start) = pos.checked_sub(head.header_len).filter(|_| !carried) else {
                carried = false;
                continue;
            };
            if let Some(exceeded) = self.limits.check(&head).or_else(|| self.over_rate(&head)) {
                // Nothing of this frame goes out: Close 1001 instead, and
                // the sender gets 1009 (too big) or 1008 (too fast) from
                // the other direction.
                self.forward(cx, dst.as_mut(), &data[from..start])?;
                self.exceeded = Some(exceeded);
                self.close_with(GOING_AWAY);
                self.speak(cx, dst.as_mut())?;
                self.frames.feed(&data[pos..]);
                return Ok(());
            }
            if self.own_pongs && head.opcode == OP_PONG && head.len == 8 {
                let end = pos + 8;
                if end > data.len() {
                    // Hold the Pong back until it is whole.
                    self.forward(cx, dst.as_mut(), &data[from..start])?;
                    self.frames.unread_control_frame();
                    self.held = data[start..].to_vec();
                    return Ok(());
                }
                if unmasked_eq(&data[pos..end], head.mask, ping_token()) {
                    // The answer to the proxy's own Ping: not forwarded.
                    self.forward(cx, dst.as_mut(), &data[from..start])?;
                    self.frames.feed(&data[pos..end]);
                    pos = end;
                    from = end;
                }
            }
        }
        // A partial header at the end waits for the rest of it.
        let mut to = data.len();
        if !carried && let Some((header, have)) = self.frames.take_partial_header() {
            to -= have;
            self.held = header[..have].to_vec();
        }
        self.forward(cx, dst, &data[from..to])
    }

    /// Write a frame of the proxy's own: a due Close, else a due Ping.
    fn speak<W>(&mut self, cx: &mut Context<'_>, dst: Pin<&mut W>) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        if self.closed_toward() {
            // A Close went through since this was asked for: nothing may
            // follow it.
            self.close_due = None;
            self.ping_due = false;
            return Ok(());
        }
        let frame = if let Some((code, reason)) = self.close_due.take() {
            self.close_sent = true;
            self.ping_due = false;
            let mut payload = Vec::with_capacity(2 + reason.len());
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason);
            control_frame(OP_CLOSE, &payload, self.mask)
        } else {
            self.ping_due = false;
            self.pings += 1;
            control_frame(OP_PING, ping_token(), self.mask)
        };
        self.write(cx, dst, &frame)
    }

    /// Forward bytes of the source.
    fn forward<W>(
        &mut self,
        cx: &mut Context<'_>,
        dst: Pin<&mut W>,
        data: &[u8],
    ) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        self.bytes += data.len() as u64;
        self.write(cx, dst, data)
    }

    /// Write `data` to `dst` as far as it goes without waiting; keep the
    /// rest in `pending`, behind what is already there.
    fn write<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut dst: Pin<&mut W>,
        data: &[u8],
    ) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        if data.is_empty() {
            return Ok(());
        }
        self.unflushed = true;
        if let Some(pending) = &mut self.pending {
            pending.buf.extend_from_slice(data);
            return Ok(());
        }
        let mut pos = 0;
        while pos < data.len() {
            match dst.as_mut().poll_write(cx, &data[pos..]) {
                Poll::Ready(Ok(0)) => return Err(Failure::Write(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => pos += n,
                Poll::Ready(Err(e)) => return Err(Failure::Write(e)),
                Poll::Pending => {
                    self.pending = Some(Pending {
                        buf: data[pos..].to_vec(),
                        pos: 0,
                    });
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

impl MessageLimits {
    /// The limit `head` breaks, if any.
    fn check(&self, head: &Head) -> Option<Exceeded> {
        if self.max_frame.is_some_and(|max| head.len > max) {
            return Some(Exceeded::Frame(head.len));
        }
        if self.max_message.is_some_and(|max| head.message_len > max) {
            return Some(Exceeded::Message(head.message_len));
        }
        None
    }
}

impl Pump {
    /// Whether the message `head` starts comes too soon for the rate limit
    /// (GCRA: one message per interval, `extra` more at once).
    fn over_rate(&mut self, head: &Head) -> Option<Exceeded> {
        let rate = self.limits.max_rate?;
        if !(0x1..=0x7).contains(&head.opcode) {
            return None;
        }
        let now = Instant::now();
        let interval = rate.interval();
        let due = self.rate_due.map_or(now, |due| due.max(now));
        if due.saturating_duration_since(now) > interval * rate.extra() {
            return Some(Exceeded::Rate);
        }
        self.rate_due = Some(due + interval);
        None
    }
}

/// Whether `payload`, unmasked with `mask`, equals `expected`.
fn unmasked_eq(payload: &[u8], mask: Option<[u8; 4]>, expected: &[u8]) -> bool {
    payload.len() == expected.len()
        && payload
            .iter()
            .zip(expected)
            .enumerate()
            .all(|(i, (&byte, &want))| byte ^ mask.map_or(0, |key| key[i % 4]) == want)
}

/// A control frame (payload of at most 125 bytes), masked with a fresh
/// key when `masked`.
/// A Close frame with status `code`, masked as a client's (toward a
/// backend) or not.
pub(crate) fn close_frame(code: u16, masked: bool) -> Vec<u8> {
    control_frame(OP_CLOSE, &code.to_be_bytes(), masked)
}

fn control_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    debug_assert!(payload.len() <= 125);
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | opcode);
    if masked {
        let key = (random_u64() as u32).to_ne_bytes();
        frame.push(0x80 | payload.len() as u8);
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.push(payload.len() as u8);
        frame.extend_from_slice(payload);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tunnels;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// Why and how the proxy closed the tunnel, if it did.
    fn proxy_close(end: &End) -> Option<(Reason, bool)> {
        match *end {
            End::Proxy { reason, answered } => Some((reason, answered)),
            _ => None,
        }
    }

    fn timeouts(idle: Option<u64>, half_close: u64) -> Settings {
        Settings {
            idle: idle.map(Duration::from_millis),
            half_close: Duration::from_millis(half_close),
            client_keepalive: None,
            backend_keepalive: None,
            client_limits: MessageLimits::new(),
            backend_limits: MessageLimits::new(),
            close_on_disconnect: false,
        }
    }

    #[tokio::test]
    async fn relays_both_ways_and_propagates_half_close() {
        let (mut client, client_side) = duplex(16);
        let (backend_side, mut backend) = duplex(16);
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            timeouts(None, 5_000),
            Tunnels::new().drain(),
        ));
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                client.write_all(&payload).await.unwrap();
                client.shutdown().await.unwrap();
                client
            })
        };
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload, "bytes out equal bytes in, then EOF");
        // The other direction still flows after the half-close.
        backend.write_all(b"late reply").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut client = writer.await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"late reply");
        let (end, totals) = task.await.unwrap();
        assert!(matches!(end, End::Closed { client_first: true }), "{end}");
        assert_eq!((totals.up.bytes, totals.down.bytes), (100_000, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_both_directions() {
        // Traffic only down, then only up: either keeps the tunnel alive.
        for up in [false, true] {
            let (mut client, client_side) = duplex(64);
            let (backend_side, mut backend) = duplex(64);
            let task = tokio::spawn(relay(
                client_side,
                backend_side,
                timeouts(Some(1_000), 5_000),
                Tunnels::new().drain(),
            ));
            let start = Instant::now();
            let mut buf = [0; 1];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(600)).await;
                if up {
                    client.write_all(b"x").await.unwrap();
                    backend.read_exact(&mut buf).await.unwrap();
                } else {
                    backend.write_all(b"x").await.unwrap();
                    client.read_exact(&mut buf).await.unwrap();
                }
            }
            let (end, _) = task.await.unwrap();
            assert!(matches!(end, End::Idle), "{end}");
            let elapsed = start.elapsed();
            assert!(
                elapsed >= Duration::from_millis(2_800),
                "up {up}: {elapsed:?}"
            );
            assert!(
                elapsed < Duration::from_millis(2_900),
                "up {up}: {elapsed:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn half_close_is_bounded() {
        let (mut client, client_side) = duplex(64);
        let (backend_side, _backend) = duplex(64);
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            timeouts(None, 2_000),
            Tunnels::new().drain(),
        ));
        client.shutdown().await.unwrap();
        let (end, _) = task.await.unwrap();
        assert!(
            matches!(end, End::HalfCloseTimeout { client_first: true }),
            "{end}"
        );
    }

    /// Frame-aware settings that never act: limits that are never broken
    /// and keepalives that never fire, so every chunk goes through the
    /// header-by-header path (partial headers held back, Pongs inspected).
    fn frame_aware_settings() -> Settings {
        let never = Some(Keepalive::new(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ));
        let huge = MessageLimits::new()
            .max_frame(u64::MAX)
            .max_message(u64::MAX);
        Settings {
            client_keepalive: never,
            backend_keepalive: never,
            client_limits: huge,
            backend_limits: huge,
            ..timeouts(None, 5_000)
        }
    }

    /// Relay `up` from the client and `down` from the backend at once, each
    /// written in `chunk`-sized pieces through pipes of `pipe` bytes, and
    /// return what arrived at the backend and at the client.
    fn relay_both_ways(
        settings: Settings,
        up: &[u8],
        down: &[u8],
        chunk: usize,
        pipe: usize,
    ) -> (Vec<u8>, Vec<u8>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, client_side) = duplex(pipe);
            let (backend_side, backend) = duplex(pipe);
            let relay = tokio::spawn(relay(
                client_side,
                backend_side,
                settings,
                Tunnels::new().drain(),
            ));
            let pump = |mut end: tokio::io::DuplexStream, data: Vec<u8>| async move {
                let (mut read, mut write) = tokio::io::split(&mut end);
                let send = async {
                    for piece in data.chunks(chunk) {
                        write.write_all(piece).await.unwrap();
                    }
                    write.shutdown().await.unwrap();
                };
                let mut received = Vec::new();
                let ((), got) = tokio::join!(send, read.read_to_end(&mut received));
                got.unwrap();
                received
            };
            let (at_backend, at_client) =
                tokio::join!(pump(backend, down.to_vec()), pump(client, up.to_vec()));
            relay.await.unwrap();
            (at_backend, at_client)
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any bytes, written in any chunks, both ways at once: what comes
        /// out is what went in, whatever the frame tracker makes of it.
        #[test]
        fn bytes_out_equal_bytes_in(
            up in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            down in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            chunk in 1usize..3000,
            pipe in 1usize..5000,
            frame_aware in proptest::prelude::any::<bool>(),
        ) {
            let settings = if frame_aware {
                frame_aware_settings()
            } else {
                timeouts(None, 5_000)
            };
            let (got_up, got_down) = relay_both_ways(settings, &up, &down, chunk, pipe);
            proptest::prop_assert_eq!(got_up, up);
            proptest::prop_assert_eq!(got_down, down);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_closes_unanswered_tunnels_at_its_deadline() {
        let (_client, client_side) = duplex(64);
        let (backend_side, _backend) = duplex(64);
        let tunnels = Tunnels::new();
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            timeouts(None, 60_000),
            tunnels.drain(),
        ));
        tokio::task::yield_now().await;
        let start = Instant::now();
        drop(tunnels.shutdown(Duration::from_secs(3)));
        let (end, _) = task.await.unwrap();
        assert_eq!(proxy_close(&end), Some((Reason::Shutdown, false)), "{end}");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_close_ends_at_its_grace_and_a_later_shutdown_keeps_its_own_deadline() {
        for (grace, shutdown_after, expect, reason) in [
            (2, None, 2, Reason::BackendDown),
            (600, Some(1), 4, Reason::BackendDown),
        ] {
            let (_client, client_side) = duplex(64);
            let (backend_side, _backend) = duplex(64);
            let tunnels = Tunnels::new();
            let signal = std::sync::Arc::new(crate::tunnels::CloseSignal::default());
            let task = tokio::spawn(relay(
                client_side,
                backend_side,
                timeouts(None, 60_000),
                tunnels.drain().with_backend(signal.clone()),
            ));
            tokio::task::yield_now().await;
            let start = Instant::now();
            signal.close(Duration::from_secs(grace));
            if let Some(after) = shutdown_after {
                tokio::time::sleep(Duration::from_secs(after)).await;
                drop(tunnels.shutdown(Duration::from_secs(3)));
            }
            let (end, _) = task.await.unwrap();
            assert_eq!(proxy_close(&end), Some((reason, false)), "{end}");
            assert_eq!(start.elapsed(), Duration::from_secs(expect));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Real frames (Pongs of the proxy's Ping length among them), cut
        /// anywhere, through the frame-aware path with tiny pipes: what
        /// comes out is what went in.
        #[test]
        fn frames_out_equal_frames_in(
            frames in proptest::collection::vec(crate::frame::tests::any_frame(), 1..10),
            chunk in 1usize..3000,
            pipe in 1usize..600,
        ) {
            use crate::frame::tests::frame;
            let up: Vec<u8> = frames
                .iter()
                .flat_map(|&(fin, op, len, _)| frame(fin, op, &vec![9; len], Some([5, 6, 7, 8])))
                .collect();
            let down: Vec<u8> = frames
                .iter()
                .rev()
                .flat_map(|&(fin, op, len, _)| frame(fin, op, &vec![4; len], None))
                .collect();
            let (got_up, got_down) =
                relay_both_ways(frame_aware_settings(), &up, &down, chunk, pipe);
            proptest::prop_assert_eq!(got_up, up);
            proptest::prop_assert_eq!(got_down, down);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_to_the_backend_is_masked_and_its_pong_is_not_forwarded() {
        use crate::frame::tests::frame;
        let (mut client, client_side) = duplex(4096);
        let (backend_side, mut backend) = duplex(4096);
        let mut settings = timeouts(None, 5_000);
        settings.backend_keepalive = Some(Keepalive::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
        ));
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            settings,
            Tunnels::new().drain(),
        ));

        // After a second of silence the backend gets a masked Ping.
        let mut ping = [0u8; 14];
        backend.read_exact(&mut ping).await.unwrap();
        assert_eq!(ping[0], 0x89, "FIN + Ping");
        assert_eq!(ping[1], 0x80 | 8, "masked, 8 bytes");
        let key = [ping[2], ping[3], ping[4], ping[5]];
        let payload: Vec<u8> = ping[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(payload, ping_token());

        // Its Pong, split across two writes, stays with the proxy; the
        // next frame goes through untouched.
        let pong = frame(true, 0xA, &payload, None);
        backend.write_all(&pong[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        backend.write_all(&pong[5..]).await.unwrap();
        let text = frame(true, 0x1, b"hello", None);
        backend.write_all(&text).await.unwrap();
        let mut got = vec![0u8; text.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, text);

        // An application Pong with another payload is forwarded.
        let other = frame(true, 0xA, b"12345678", None);
        backend.write_all(&other).await.unwrap();
        let mut got = vec![0u8; other.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, other);

        // A backend that then falls silent is given up on after the
        // interval and the timeout: the client gets Close 1001.
        let start = Instant::now();
        let mut close = [0u8; 14];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(&close[..4], &[0x88, 12, 0x03, 0xe9]);
        assert_eq!(&close[4..], b"going away");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        client
            .write_all(&frame(
                true,
                0x8,
                &1001u16.to_be_bytes(),
                Some([1, 2, 3, 4]),
            ))
            .await
            .unwrap();
        let (end, _) = task.await.unwrap();
        assert_eq!(
            proxy_close(&end),
            Some((Reason::Keepalive { client: false }, true)),
            "{end}"
        );
    }

    /// Regression tests for the frame-aware paths (found in review).
    mod frame_aware {
        use super::*;
        use crate::frame::tests::frame;

        const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);

        fn spawn(
            settings: Settings,
            tunnels: &Tunnels,
            client_pipe: usize,
            backend_pipe: usize,
        ) -> (
            tokio::io::DuplexStream,
            tokio::io::DuplexStream,
            tokio::task::JoinHandle<(End, Totals)>,
        ) {
            let (client, client_side) = duplex(client_pipe);
            let (backend_side, backend) = duplex(backend_pipe);
            let task = tokio::spawn(relay(client_side, backend_side, settings, tunnels.drain()));
            (client, backend, task)
        }

        fn keepalive(interval: u64, timeout: u64) -> Option<Keepalive> {
            Some(Keepalive::new(
                Duration::from_secs(interval),
                Duration::from_secs(timeout),
            ))
        }

        async fn read_n(stream: &mut tokio::io::DuplexStream, n: usize) -> Vec<u8> {
            let mut buf = vec![0; n];
            stream.read_exact(&mut buf).await.unwrap();
            buf
        }

        async fn nothing_more(stream: &mut tokio::io::DuplexStream) {
            let mut byte = [0; 1];
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await;
            assert!(read.is_err(), "unexpected {read:?} {byte:?}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_ping_due_inside_a_header_left_by_the_fast_path_waits_for_the_frame() {
            let mut settings = timeouts(None, 5_000);
            settings.client_keepalive = keepalive(1, 10);
            let (mut client, mut backend, _task) = spawn(settings, &Tunnels::new(), 4096, 4096);
            let text = frame(true, 0x1, &[b'x'; 200], None);
            backend.write_all(&text[..1]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            backend.write_all(&text[1..]).await.unwrap();
            assert_eq!(read_n(&mut client, text.len()).await, text);
            let ping = read_n(&mut client, 10).await;
            assert_eq!(&ping[..2], &[0x89, 8]);
        }

        #[tokio::test(start_paused = true)]
        async fn no_close_follows_a_close_that_went_through_while_a_drain_waited() {
            let tunnels = Tunnels::new();
            let (mut client, mut backend, task) =
                spawn(timeouts(None, 5_000), &tunnels, 4096, 4096);
            let close = frame(true, 0x8, &1000u16.to_be_bytes(), None);
            backend.write_all(&close[..3]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(tunnels.shutdown(Duration::from_secs(3)));
            tokio::time::sleep(Duration::from_millis(10)).await;
            backend.write_all(&close[3..]).await.unwrap();
            assert_eq!(read_n(&mut client, 4).await, close);
            // The backend got the proxy's Close 1001; the client answers
            // the backend's.
            let to_backend = read_n(&mut backend, 18).await;
            assert_eq!(&to_backend[..2], &[0x88, 0x80 | 12]);
            client
                .write_all(&frame(true, 0x8, &1000u16.to_be_bytes(), KEY))
                .await
                .unwrap();
            let (end, _) = task.await.unwrap();
            assert_eq!(proxy_close(&end), Some((Reason::Shutdown, true)), "{end}");
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "after the backend's Close: {rest:?}");
        }

        #[tokio::test(start_paused = true)]
        async fn no_ping_follows_a_forwarded_close() {
            let mut settings = timeouts(None, 5_000);
            settings.client_keepalive = keepalive(1, 10);
            let (mut client, mut backend, _task) = spawn(settings, &Tunnels::new(), 4096, 4096);
            let close = frame(true, 0x8, &1000u16.to_be_bytes(), None);
            backend.write_all(&close).await.unwrap();
            assert_eq!(read_n(&mut client, 4).await, close);
            nothing_more(&mut client).await;
        }

        #[tokio::test(start_paused = true)]
        async fn a_closing_handshake_is_done_only_once_everything_is_written() {
            let tunnels = Tunnels::new();
            let (mut client, mut backend, task) = spawn(timeouts(None, 5_000), &tunnels, 4096, 16);
            let close = frame(true, 0x8, &1000u16.to_be_bytes(), None);
            backend.write_all(&close).await.unwrap();
            assert_eq!(read_n(&mut client, 4).await, close);
            drop(tunnels.shutdown(Duration::from_secs(3)));
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mut sent = frame(true, 0x2, &[7; 100], KEY);
            sent.extend(frame(true, 0x8, &1000u16.to_be_bytes(), KEY));
            client.write_all(&sent).await.unwrap();
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                backend.read_to_end(&mut got).await.unwrap();
                got
            });
            let (end, _) = task.await.unwrap();
            assert_eq!(proxy_close(&end), Some((Reason::Shutdown, true)), "{end}");
            assert_eq!(reader.await.unwrap(), sent, "all of it reached the backend");
        }

        #[tokio::test(start_paused = true)]
        async fn an_answered_shutdown_counts_as_a_shutdown() {
            let tunnels = Tunnels::new();
            let (mut client, mut backend, task) =
                spawn(timeouts(None, 5_000), &tunnels, 4096, 4096);
            tokio::task::yield_now().await;
            drop(tunnels.shutdown(Duration::from_secs(3)));
            read_n(&mut backend, 18).await;
            read_n(&mut client, 14).await;
            client
                .write_all(&frame(true, 0x8, &1001u16.to_be_bytes(), KEY))
                .await
                .unwrap();
            client.shutdown().await.unwrap();
            backend
                .write_all(&frame(true, 0x8, &1001u16.to_be_bytes(), None))
                .await
                .unwrap();
            backend.shutdown().await.unwrap();
            let (end, _) = task.await.unwrap();
            assert_eq!(proxy_close(&end), Some((Reason::Shutdown, true)), "{end}");
        }

        #[tokio::test(start_paused = true)]
        async fn held_bytes_are_dropped_at_end_of_stream_after_the_proxys_close() {
            let tunnels = Tunnels::new();
            let mut settings = timeouts(None, 5_000);
            settings.client_limits = MessageLimits::new().max_frame(1 << 20);
            let (mut client, mut backend, _task) = spawn(settings, &tunnels, 4096, 4096);
            client.write_all(&[0x82, 0xfe]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(tunnels.shutdown(Duration::from_secs(3)));
            tokio::time::sleep(Duration::from_millis(10)).await;
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), 18, "only the proxy's Close: {got:02x?}");
        }

        #[tokio::test(start_paused = true)]
        async fn the_pong_timeout_runs_from_when_the_ping_could_be_written() {
            let mut settings = timeouts(None, 5_000);
            settings.client_keepalive = keepalive(1, 1);
            let (mut client, mut backend, task) = spawn(settings, &Tunnels::new(), 1 << 20, 4096);
            // A frame trickles toward the silent client for 6 s: no ping
            // fits before its end, and the client is not given up on.
            let slow = frame(true, 0x2, &[7; 1000], None);
            backend.write_all(&slow[..10]).await.unwrap();
            for i in 10..40 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                backend.write_all(&slow[i..=i]).await.unwrap();
            }
            assert!(!task.is_finished());
            backend.write_all(&slow[40..]).await.unwrap();
            assert_eq!(read_n(&mut client, slow.len()).await, slow);
            // Then the ping, and the timeout from there.
            let start = Instant::now();
            assert_eq!(&read_n(&mut client, 10).await[..2], &[0x89, 8]);
            // The backend hears Close 1001 one timeout later, and answers.
            let close = read_n(&mut backend, 18).await;
            assert_eq!(start.elapsed(), Duration::from_secs(1));
            assert_eq!(&close[..2], &[0x88, 0x80 | 12]);
            backend
                .write_all(&frame(true, 0x8, &1001u16.to_be_bytes(), None))
                .await
                .unwrap();
            let (end, _) = task.await.unwrap();
            assert_eq!(
                proxy_close(&end).map(|(reason, _)| reason),
                Some(Reason::Keepalive { client: true }),
                "{end}"
            );
        }
    }

    /// A side whose connection ends without a Close frame
    /// (`close_on_disconnect`).
    mod vanished {
        use super::*;
        use crate::frame::tests::frame;
        use tokio::io::DuplexStream;

        const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);

        /// The layer's default: tell the survivor.
        fn on(half_close: u64) -> Settings {
            Settings {
                close_on_disconnect: true,
                ..timeouts(None, half_close)
            }
        }

        fn spawn(
            settings: Settings,
            drain: Drain,
        ) -> (
            DuplexStream,
            DuplexStream,
            tokio::task::JoinHandle<(End, Totals)>,
        ) {
            let (client, client_side) = duplex(4096);
            let (backend_side, backend) = duplex(4096);
            let task = tokio::spawn(relay(client_side, backend_side, settings, drain));
            (client, backend, task)
        }

        /// Read one frame of under 126 payload bytes: its first byte,
        /// whether it was masked, and its payload unmasked.
        async fn read_small_frame(stream: &mut DuplexStream) -> (u8, bool, Vec<u8>) {
            let mut head = [0; 2];
            stream.read_exact(&mut head).await.unwrap();
            let masked = head[1] & 0x80 != 0;
            let len = usize::from(head[1] & 0x7f);
            assert!(len < 126, "{head:02x?}");
            let mut key = [0; 4];
            if masked {
                stream.read_exact(&mut key).await.unwrap();
            }
            let mut payload = vec![0; len];
            stream.read_exact(&mut payload).await.unwrap();
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= if masked { key[i % 4] } else { 0 };
            }
            (head[0], masked, payload)
        }

        /// A Close payload: the code, then the reason.
        fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            payload
        }

        /// Everything up to the end of stream.
        async fn rest(stream: &mut DuplexStream) -> Vec<u8> {
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            rest
        }

        /// Who vanished (`true`: the client), the code sent to the other
        /// side, and whether it answered.
        fn vanished(end: &End) -> Option<(bool, u16, bool)> {
            match end {
                End::Vanished {
                    vanished,
                    answered,
                    then: None,
                } => Some((vanished.client, vanished.code, *answered)),
                _ => None,
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_backend_gone_without_a_close_gets_the_client_a_1011() {
            let (mut client, mut backend, task) = spawn(on(5_000), Tunnels::new().drain());
            let text = frame(true, 0x1, b"last words", None);
            backend.write_all(&text).await.unwrap();
            backend.shutdown().await.unwrap();
            // What the backend sent, then the proxy's Close, unmasked.
            assert_eq!(read_n(&mut client, text.len()).await, text);
            let close = read_small_frame(&mut client).await;
            assert_eq!(
                close,
                (0x88, false, close_payload(1011, b"backend went away"))
            );
            client
                .write_all(&frame(true, 0x8, &1011u16.to_be_bytes(), KEY))
                .await
                .unwrap();
            assert_eq!(rest(&mut client).await, b"", "then the end of stream");
            let (end, totals) = task.await.unwrap();
            assert_eq!(vanished(&end), Some((false, 1011, true)), "{end}");
            assert_eq!(end.kind(), EndKind::BackendClose);
            assert_eq!(
                end.to_string(),
                "backend ended without a Close frame (end of stream), Close 1011 sent to \
                 the client, closing handshake completed"
            );
            // The client's answer went nowhere; the proxy's Close is not
            // counted as the backend's bytes.
            assert_eq!(rest(&mut backend).await, b"");
            assert_eq!(totals.down.bytes, text.len() as u64);
            assert_eq!(totals.up.close_code, Some(1011));
        }

        /// A stream whose end reads as a connection reset.
        struct ResetAtEnd(DuplexStream);

        impl AsyncRead for ResetAtEnd {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let before = buf.filled().len();
                ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
                if buf.filled().len() == before {
                    return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
                }
                Poll::Ready(Ok(()))
            }
        }

        impl AsyncWrite for ResetAtEnd {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.0).poll_write(cx, buf)
            }
            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_shutdown(cx)
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_backend_reset_gets_the_client_a_1011_and_counts_as_an_error() {
            let (mut client, client_side) = duplex(4096);
            let (backend_side, mut backend) = duplex(4096);
            let task = tokio::spawn(relay(
                client_side,
                ResetAtEnd(backend_side),
                on(5_000),
                Tunnels::new().drain(),
            ));
            backend.shutdown().await.unwrap();
            let (_, masked, payload) = read_small_frame(&mut client).await;
            assert_eq!((masked, &payload[..2]), (false, &[0x03, 0xf3][..]));
            client
                .write_all(&frame(true, 0x8, &1011u16.to_be_bytes(), KEY))
                .await
                .unwrap();
            assert_eq!(rest(&mut client).await, b"");
            let (end, _) = task.await.unwrap();
            assert_eq!(vanished(&end), Some((false, 1011, true)), "{end}");
            assert_eq!(end.kind(), EndKind::Error, "counted as before");
            assert!(
                end.to_string()
                    .starts_with("backend ended without a Close frame (read error: "),
                "{end}"
            );
        }

        /// A stream that cannot be written to, and reads from its pair.
        struct Unwritable(DuplexStream);

        impl AsyncRead for Unwritable {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_read(cx, buf)
            }
        }

        impl AsyncWrite for Unwritable {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_write_error_toward_the_backend_gets_the_client_a_1011() {
            let (mut client, client_side) = duplex(4096);
            let (backend_side, _backend) = duplex(4096);
            let task = tokio::spawn(relay(
                client_side,
                Unwritable(backend_side),
                on(5_000),
                Tunnels::new().drain(),
            ));
            client
                .write_all(&frame(true, 0x1, b"anyone there?", KEY))
                .await
                .unwrap();
            let (_, masked, payload) = read_small_frame(&mut client).await;
            assert_eq!(
                (masked, payload),
                (false, close_payload(1011, b"backend went away"))
            );
            client
                .write_all(&frame(true, 0x8, &1011u16.to_be_bytes(), KEY))
                .await
                .unwrap();
            let (end, _) = task.await.unwrap();
            assert_eq!(vanished(&end), Some((false, 1011, true)), "{end}");
            assert_eq!(end.kind(), EndKind::Error);
            assert!(end.to_string().contains("(write error: "), "{end}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_backend_gone_inside_a_frame_leaves_the_client_a_plain_end() {
            // The fast path forwards the partial frame as it comes; the
            // frame-aware one holds a partial header back and forwards it
            // at the end: either way the client has no frame boundary.
            let text = frame(true, 0x1, b"0123456789", None);
            let limited = Settings {
                backend_limits: MessageLimits::new().max_frame(1 << 20),
                ..on(5_000)
            };
            for (settings, cut) in [(on(5_000), 5), (limited, 1)] {
                let (mut client, mut backend, task) = spawn(settings, Tunnels::new().drain());
                backend.write_all(&text[..cut]).await.unwrap();
                backend.shutdown().await.unwrap();
                assert_eq!(rest(&mut client).await, &text[..cut], "no Close after it");
                // The backend's end was passed on as a FIN; the client
                // that then goes too is the one that vanished.
                client.shutdown().await.unwrap();
                let (end, _) = task.await.unwrap();
                assert_eq!(vanished(&end), Some((true, 1001, false)), "{end}");
                assert_eq!(end.kind(), EndKind::BackendClose, "the backend ended first");
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_client_gone_without_a_close_gets_the_backend_a_masked_1001() {
            let (mut client, mut backend, task) = spawn(on(5_000), Tunnels::new().drain());
            let text = frame(true, 0x2, &[7; 300], KEY);
            client.write_all(&text).await.unwrap();
            client.shutdown().await.unwrap();
            assert_eq!(read_n(&mut backend, text.len()).await, text);
            let close = read_small_frame(&mut backend).await;
            assert_eq!(
                close,
                (0x88, true, close_payload(1001, b"client went away"))
            );
            backend
                .write_all(&frame(true, 0x8, &1001u16.to_be_bytes(), None))
                .await
                .unwrap();
            assert_eq!(rest(&mut backend).await, b"");
            let (end, _) = task.await.unwrap();
            assert_eq!(vanished(&end), Some((true, 1001, true)), "{end}");
            assert_eq!(end.kind(), EndKind::ClientClose);
            assert_eq!(rest(&mut client).await, b"", "nothing to the dead client");
        }

        #[tokio::test(start_paused = true)]
        async fn a_survivor_that_never_answers_is_closed_within_the_grace() {
            // At most 1 s, or the half-close timeout when it is shorter.
            for (half_close, expect) in [(5_000, 1_000), (300, 300)] {
                let (mut client, mut backend, task) = spawn(on(half_close), Tunnels::new().drain());
                let start = Instant::now();
                backend.shutdown().await.unwrap();
                let close = read_small_frame(&mut client).await;
                assert_eq!(close.2[..2], 1011u16.to_be_bytes());
                // The client keeps talking, and never answers the Close.
                client
                    .write_all(&frame(true, 0x1, b"hello?", KEY))
                    .await
                    .unwrap();
                assert_eq!(rest(&mut client).await, b"");
                let (end, _) = task.await.unwrap();
                assert_eq!(start.elapsed(), Duration::from_millis(expect));
                assert_eq!(vanished(&end), Some((false, 1011, false)), "{end}");
                assert!(
                    end.to_string()
                        .ends_with("closed without a complete closing handshake"),
                    "{end}"
                );
                assert_eq!(rest(&mut backend).await, b"", "nothing forwarded");
            }
        }

        #[tokio::test(start_paused = true)]
        async fn during_a_drain_the_client_is_told_1001() {
            // The client started the closing handshake, a drain began (no
            // Close of the proxy's: one is under way), then the backend
            // died instead of answering.
            for backend_close in [false, true] {
                let tunnels = Tunnels::new();
                let signal = std::sync::Arc::new(crate::tunnels::CloseSignal::default());
                let (mut client, mut backend, task) =
                    spawn(on(5_000), tunnels.drain().with_backend(signal.clone()));
                let close = frame(true, 0x8, &1000u16.to_be_bytes(), KEY);
                client.write_all(&close).await.unwrap();
                assert_eq!(read_n(&mut backend, close.len()).await, close);
                let _shutdown = if backend_close {
                    signal.close(Duration::from_secs(60));
                    None
                } else {
                    Some(tunnels.shutdown(Duration::from_secs(60)))
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
                backend.shutdown().await.unwrap();
                let got = read_small_frame(&mut client).await;
                assert_eq!(got, (0x88, false, close_payload(1001, b"going away")));
                assert_eq!(rest(&mut client).await, b"");
                let (end, _) = task.await.unwrap();
                assert_eq!(vanished(&end), Some((false, 1001, true)), "{end}");
                let kind = if backend_close {
                    EndKind::BackendDown
                } else {
                    EndKind::Shutdown
                };
                assert_eq!(end.kind(), kind, "counted as the drain");
            }
        }

        #[tokio::test(start_paused = true)]
        async fn with_the_setting_off_a_fin_is_passed_on_as_a_half_close() {
            let (mut client, mut backend, task) =
                spawn(timeouts(None, 5_000), Tunnels::new().drain());
            let text = frame(true, 0x1, b"last words", None);
            backend.write_all(&text).await.unwrap();
            backend.shutdown().await.unwrap();
            assert_eq!(rest(&mut client).await, text, "no Close, the FIN");
            // The other direction still flows.
            let late = frame(true, 0x1, b"still here", KEY);
            client.write_all(&late).await.unwrap();
            assert_eq!(read_n(&mut backend, late.len()).await, late);
            client.shutdown().await.unwrap();
            let (end, _) = task.await.unwrap();
            assert!(
                matches!(
                    end,
                    End::Closed {
                        client_first: false
                    }
                ),
                "{end}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_backend_that_closed_first_gets_an_ordinary_closing_handshake() {
            let (mut client, mut backend, task) = spawn(on(5_000), Tunnels::new().drain());
            let close = frame(true, 0x8, &1000u16.to_be_bytes(), None);
            backend.write_all(&close).await.unwrap();
            backend.shutdown().await.unwrap();
            assert_eq!(rest(&mut client).await, close, "its Close, then the FIN");
            let answer = frame(true, 0x8, &1000u16.to_be_bytes(), KEY);
            client.write_all(&answer).await.unwrap();
            assert_eq!(read_n(&mut backend, answer.len()).await, answer);
            client.shutdown().await.unwrap();
            let (end, _) = task.await.unwrap();
            assert!(
                matches!(
                    end,
                    End::Closed {
                        client_first: false
                    }
                ),
                "{end}"
            );
        }

        async fn read_n(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
            let mut buf = vec![0; n];
            stream.read_exact(&mut buf).await.unwrap();
            buf
        }
    }
}
