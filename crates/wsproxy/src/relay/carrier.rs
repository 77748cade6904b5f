//! What carries the client's side of a tunnel, and letting go of it once
//! the tunnel ended.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::drain::Drain;
use crate::outcome::End;

/// What the client's side of a tunnel travels on; it decides how the
/// tunnel may end after a clean closing handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carrier {
    /// A connection of its own (HTTP/1.1, over TCP or TLS). Once both
    /// Close frames have passed and the backend closed its connection,
    /// the client's is shut down and closed as a server's, without waiting
    /// for its FIN (RFC 6455 §7.1.1).
    Connection,
    /// A stream of an HTTP/2 connection (RFC 8441). The stream is let go
    /// only once the client ended it too (END_STREAM, or a reset):
    /// dropped earlier, it would be reset while the client still sends,
    /// and h2 counts the resets it must send for frames on such streams
    /// against the whole connection (after 1,024 it ends it with GOAWAY
    /// `ENHANCE_YOUR_CALM`, and every WebSocket on it). Waiting costs no
    /// system call here: the end of a stream is a frame on a connection
    /// that stays open.
    Stream,
}

/// Let go of the client's side of a tunnel that ended with `end`, carried
/// on `carrier`. A connection of its own is simply closed (dropped), and
/// so is a stream the relay already saw end or already waited the
/// half-close timeout for (a clean close, a half-close timeout, the
/// client's own error). Any other stream (the proxy closed the WebSocket,
/// or the backend failed) is ended from the proxy's side, and what the
/// client still sends is read and dropped until it ends its side too,
/// for at most `within` (the half-close timeout): a stream dropped while
/// the client still sends is reset, and h2 counts the resets such a
/// client's frames then cause against its whole connection (see
/// [`Carrier::Stream`]). Once a shutdown started the stream is let go at
/// once: its connection is going away.
pub(crate) async fn let_go<C>(
    client: &mut C,
    carrier: Carrier,
    end: &End,
    within: Duration,
    drain: &Drain,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let waited = matches!(
        end,
        End::Closed { .. } | End::HalfCloseTimeout { .. } | End::ClientError(_)
    );
    if carrier == Carrier::Connection || waited {
        return;
    }
    // The end of the proxy's side is started, not awaited: hyper waits for
    // the client's window to send it, which only reading reopens (and it
    // is sent even if the stream is dropped first).
    let mut shut = false;
    let ended = std::future::poll_fn(|cx| {
        if !shut {
            shut = Pin::new(&mut *client).poll_shutdown(cx).is_ready();
        }
        loop {
            // Read into the stack, not into the task's future.
            let mut sink = [0u8; 8 * 1024];
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut *client).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    });
    tokio::select! {
        biased;
        () = drain.shutdown() => {}
        _ = tokio::time::timeout(within, ended) => {}
    }
}
