//! The proxy closing a WebSocket itself: why, by when, and whom it waits
//! for.

use std::io;

use tokio::time::Instant;

use super::pump::Pump;
use crate::outcome::{End, Reason, Vanished};

/// The proxy closing the WebSocket itself.
pub(super) struct Closing {
    pub(super) why: Why,
    pub(super) deadline: Instant,
    /// The sides that must answer the proxy's Close before the tunnel ends
    /// (a dead keepalive peer is not waited for).
    pub(super) wait_client: bool,
    pub(super) wait_backend: bool,
}

/// Why the proxy is closing a WebSocket.
pub(super) enum Why {
    /// For a reason of its own.
    Proxy(Reason),
    /// A side vanished; the proxy told the other.
    Vanished(Vanished),
}

impl Closing {
    /// The tunnel ends now.
    pub(super) fn end(self, answered: bool) -> End {
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

/// Whether each side the proxy waits for has been sent a Close (forwarded
/// or the proxy's) and has sent one back.
pub(super) fn handshakes_done(closing: &Closing, up: &Pump, down: &Pump) -> bool {
    let client = !closing.wait_client || (down.closed_toward() && up.frames.closes > 0);
    let backend = !closing.wait_backend || (up.closed_toward() && down.frames.closes > 0);
    client && backend
}

impl Closing {
    /// The tunnel ends at once on `error` on the `client`'s connection
    /// (`true`) or the backend's.
    pub(super) fn failed(self, client: bool, error: io::Error) -> End {
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
