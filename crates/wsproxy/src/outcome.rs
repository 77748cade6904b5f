//! How a tunnel ended and what crossed it: what the relay reports, and
//! what stats, metrics and the tunnel log line count.

use std::fmt;
use std::io;

use crate::settings::Exceeded;

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
    /// What admitted it expired (e.g. its token): see
    /// [`Expires`](crate::admit::Expires).
    Expired,
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
    Expired,
    /// The last: metrics keep a key per kind, up to this one.
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
            EndKind::Expired => "expired",
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
    pub(crate) fn kind(self) -> EndKind {
        match self {
            Reason::Shutdown => EndKind::Shutdown,
            Reason::BackendDown => EndKind::BackendDown,
            Reason::Keepalive { .. } => EndKind::Keepalive,
            Reason::Limit { .. } => EndKind::Limit,
            Reason::Expired => EndKind::Expired,
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
                    Reason::Expired => f.write_str("its credentials expired")?,
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

impl Gone {
    pub(crate) fn into_error(self) -> Option<io::Error> {
        match self {
            Gone::Eof => None,
            Gone::Read(e) | Gone::Write(e) => Some(e),
        }
    }
}
