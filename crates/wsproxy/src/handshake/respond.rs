//! The answer to the client once its backend said `101`: the backend's
//! head as sent (subprotocol, extensions, cookies), minus hop-by-hop
//! headers; `101` with `Upgrade` over HTTP/1.1, `200` without `Upgrade`,
//! `Connection` or `Sec-WebSocket-Accept` over HTTP/2 (RFC 8441 §5).

use http::header::{self, HeaderValue};
use http::response::Parts;
use http::{Response, StatusCode};

use crate::forward;
use crate::opening::SEC_WEBSOCKET_ACCEPT;

/// The head of the client's answer from the backend's `101` `head`, with a
/// sticky cookie to set.
pub(crate) fn client_head(head: Response<()>, http2: bool, sticky: Option<HeaderValue>) -> Parts {
    let (mut head, ()) = head.into_parts();
    forward::remove_hop_by_hop(&mut head.headers);
    if http2 {
        // RFC 8441 §5: a 2xx, and no Upgrade, Connection or Accept.
        head.status = StatusCode::OK;
        head.headers.remove(SEC_WEBSOCKET_ACCEPT);
    } else {
        head.headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Some(cookie) = sticky {
        head.headers.append(header::SET_COOKIE, cookie);
    }
    head
}
