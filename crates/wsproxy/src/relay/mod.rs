//! The tunnel: relay bytes both ways between the upgraded client and
//! backend connections until both sides are done.
//!
//! # Memory
//!
//! An idle tunnel holds no copy buffer. Each worker thread owns one scratch
//! buffer of [`SCRATCH_SIZE`](pump::SCRATCH_SIZE) bytes that every tunnel on that thread reads
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
//! drain in progress) that is all: bytes out equal bytes in, byte for
//! byte (a source is read dry before writing, so what arrived together is
//! written together). When a setting needs it, the direction becomes frame-aware: it
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
//! - A client on a connection of its own is closed as soon as the tunnel
//!   ends (after a finished closing handshake and the backend's FIN, even
//!   before the client's FIN). A client on an HTTP/2 stream is let go only
//!   once it ended the stream too, or after the half-close timeout, or
//!   at once during a shutdown ([`Carrier`], [`let_go`]).

mod bidirectional;
mod carrier;
mod closing;
mod disconnect;
mod keepalive;
mod pump;
#[cfg(test)]
mod tests;

pub(crate) use self::bidirectional::relay;
pub(crate) use self::carrier::{Carrier, let_go};
