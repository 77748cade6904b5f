//! The WebSocket opening handshake (RFC 6455 §4, RFC 8441 §4): what one
//! is, its header names and token lists, and its keys. The vocabulary of
//! every part of the proxy that meets a handshake: the middleware that
//! tells handshakes from other requests, validation, the backend side's
//! key and accept check.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use sha1::{Digest, Sha1};

pub(crate) const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
pub(crate) const SEC_WEBSOCKET_VERSION: HeaderName =
    HeaderName::from_static("sec-websocket-version");
pub(crate) const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// In a handshake's extensions: the subprotocol to answer the client with
/// when the backend chose none. An admission that took the only entries a
/// client offered (a token carried in `Sec-WebSocket-Protocol`) leaves
/// this, since a browser that offered subprotocols fails a `101` naming
/// none.
#[derive(Clone, Debug)]
pub(crate) struct AnswerProtocol(pub(crate) HeaderValue);

/// Is `req` a WebSocket opening handshake, of either kind: an HTTP/1.1
/// `GET` with `Upgrade: websocket` and `Connection: upgrade`, or an
/// HTTP/2 extended `CONNECT` with `:protocol` `websocket` (RFC 8441;
/// with the `http2` feature only, as the proxy's HTTP/2 side is)?
///
/// This is the test of [`WebSocketProxy`](crate::WebSocketProxy) and of
/// every [`Admit`](crate::admit::Admit) middleware: a request it says no
/// to passes through them to the inner service unchanged. A server whose
/// layers are all of this crate may therefore send such a request
/// straight to what they wrap (as `wsgate` does with ordinary HTTP),
/// saving their clones and futures. Whether a handshake is well formed
/// is the proxy's to judge: a malformed one is still a handshake here,
/// and gets its `400` from the layer whose route claims it.
///
/// ```
/// use http::Request;
///
/// let handshake = Request::get("/chat")
///     .header("upgrade", "websocket")
///     .header("connection", "keep-alive, Upgrade")
///     .body(())
///     .unwrap();
/// assert!(wsproxy::is_handshake(&handshake));
///
/// let page = Request::get("/chat").body(()).unwrap();
/// assert!(!wsproxy::is_handshake(&page));
/// ```
pub fn is_handshake<B>(req: &Request<B>) -> bool {
    is_http1_handshake(req) || is_http2_handshake(req)
}

/// Is `req` an HTTP/1.1 WebSocket opening handshake?
///
/// A `GET` whose `Upgrade` header holds the token `websocket` and whose
/// `Connection` header holds the token `upgrade`, both compared
/// case-insensitively in comma-separated lists (Firefox sends
/// `Connection: keep-alive, Upgrade`).
fn is_http1_handshake<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(req.headers(), &UPGRADE, "websocket")
        && has_token(req.headers(), &CONNECTION, "upgrade")
}

/// Is `req` an HTTP/2 WebSocket opening handshake (RFC 8441): an extended
/// `CONNECT` with `:protocol` `websocket`? Other protocols are not claimed.
fn is_http2_handshake<B>(req: &Request<B>) -> bool {
    #[cfg(feature = "http2")]
    {
        req.method() == Method::CONNECT
            && req.version() == Version::HTTP_2
            && req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
    }
    #[cfg(not(feature = "http2"))]
    {
        let _ = req;
        false
    }
}

/// Does any `name` header hold `token` in its comma-separated list?
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The `Sec-WebSocket-Accept` value for `key` (RFC 6455 §4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> HeaderValue {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    HeaderValue::try_from(STANDARD.encode(digest)).expect("base64 is a valid header value")
}

/// A new random `Sec-WebSocket-Key`: base64 of 16 random bytes.
pub(crate) fn fresh_key() -> HeaderValue {
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = STANDARD.encode(nonce);
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(connection: &str, upgrade: &str) -> Request<()> {
        Request::get("/")
            .header(CONNECTION, connection)
            .header(UPGRADE, upgrade)
            .body(())
            .unwrap()
    }

    #[test]
    fn token_variants_are_detected() {
        for (connection, upgrade) in [
            ("Upgrade", "websocket"),
            ("upgrade", "WebSocket"),
            ("keep-alive, Upgrade", "websocket"),
            ("keep-alive,UPGRADE", "websocket"),
            ("Upgrade", "h2c, websocket"),
        ] {
            assert!(
                is_handshake(&request(connection, upgrade)),
                "{connection} / {upgrade}"
            );
        }
    }

    #[test]
    fn non_handshakes_are_not_detected() {
        assert!(!is_handshake(&request("keep-alive", "websocket")));
        assert!(!is_handshake(&request("Upgrade", "h2c")));
        assert!(!is_handshake(&request("Upgrades", "websocket")));
        let mut post = request("Upgrade", "websocket");
        *post.method_mut() = Method::POST;
        assert!(!is_handshake(&post));
        let mut http10 = request("Upgrade", "websocket");
        *http10.version_mut() = Version::HTTP_10;
        assert!(!is_handshake(&http10));
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
