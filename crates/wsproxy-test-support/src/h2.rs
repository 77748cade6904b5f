//! HTTP/2 clients: hyper's, over TLS (after ALPN `h2`) or plain TCP (h2c
//! with prior knowledge), WebSockets over its streams (RFC 8441), and
//! frames read by hand.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::time::within;
use crate::ws::big;

/// The sending half of an HTTP/2 client connection.
pub type H2Sender = SendRequest<Empty<Bytes>>;

/// A WebSocket over an HTTP/2 stream.
pub type H2Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An HTTP/2 client connection over `io` (TLS after ALPN `h2`, or plain
/// TCP for h2c with prior knowledge), and the task that drives it: it ends
/// when the connection does.
pub async fn h2_connection<Io>(io: Io) -> (H2Sender, JoinHandle<hyper::Result<()>>)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = within(
        "the HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)),
    )
    .await
    .expect("HTTP/2 handshake succeeds");
    (sender, tokio::spawn(connection))
}

/// [`h2_connection`], driven in the background.
pub async fn h2_client<Io>(io: Io) -> H2Sender
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    h2_connection(io).await.0
}

/// An HTTP/2 connection (prior knowledge, no TLS) to `addr`.
pub async fn h2(addr: SocketAddr) -> H2Sender {
    let tcp = within("a TCP connection", TcpStream::connect(addr))
        .await
        .unwrap();
    h2_client(tcp).await
}

/// An extended CONNECT (RFC 8441) for a WebSocket at `uri`, with extra
/// `headers`.
pub fn extended_connect(uri: &str, headers: &[(&str, &str)]) -> http::Request<Empty<Bytes>> {
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(uri)
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Empty::new()).unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    request
}

/// An [`extended_connect`] for a WebSocket on `path` of `proxy`, over
/// plain HTTP.
pub fn connect_request(
    proxy: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Request<Empty<Bytes>> {
    extended_connect(&format!("http://{proxy}{path}"), headers)
}

/// Open a WebSocket over `sender` with an extended CONNECT `request`,
/// expecting `200`; the response head and the socket (big messages
/// allowed).
pub async fn open(
    sender: &mut H2Sender,
    request: http::Request<Empty<Bytes>>,
) -> (http::response::Parts, H2Socket) {
    // Extended CONNECT may only be sent once the server's SETTINGS
    // allowed it.
    within("the connection to be ready", sender.ready())
        .await
        .unwrap();
    let response = within("an answer", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK, "{response:?}");
    let (parts, body) = response.into_parts();
    let mut response = http::Response::from_parts(parts.clone(), body);
    let upgraded = within("the stream", hyper::upgrade::on(&mut response))
        .await
        .unwrap();
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, Some(big())).await;
    (parts, ws)
}

/// `GET path` on an HTTP/2 connection: the status and the body as text.
pub async fn h2_get(
    sender: &mut H2Sender,
    authority: &str,
    scheme: &str,
    path: &str,
) -> (http::StatusCode, String) {
    let request = http::Request::get(format!("{scheme}://{authority}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = within("a response", sender.send_request(request))
        .await
        .expect("a response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status();
    let body = within("the body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The client preface of HTTP/2 and an empty SETTINGS frame: a
/// connection with no stream.
pub const H2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The type of a GOAWAY frame.
pub const GOAWAY: u8 = 0x7;

/// The HTTP/2 frames in `bytes` (a server's, from its first frame on):
/// the type and flags of each.
pub fn h2_frames(mut bytes: &[u8]) -> Vec<(u8, u8)> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        frames.push((bytes[3], bytes[4]));
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    frames
}
