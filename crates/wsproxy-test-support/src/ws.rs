//! WebSocket clients: tokio-tungstenite's, and a raw socket after a 101.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::http::{handshake, raw, read_head};
use crate::time::within;

/// A tokio-tungstenite client's WebSocket, as [`connect`] opens it.
pub type WsClient = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket config allowing 32 MiB messages.
pub fn big() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(32 << 20))
        .max_frame_size(Some(32 << 20))
}

/// Connect a tokio-tungstenite client to `url` allowing big messages.
pub async fn connect(url: &str) -> WsClient {
    connect_with(url, &[]).await.0
}

/// [`connect`] with extra request `headers`; the socket and the 101.
pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> (WsClient, Response) {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    within(
        "client handshake",
        tokio_tungstenite::connect_async_with_config(request, Some(big()), false),
    )
    .await
    .unwrap()
}

/// Send `message` and expect it echoed.
pub async fn echo<S>(ws: &mut S, message: Message)
where
    S: futures_util::Sink<Message> + futures_util::Stream<Item = Result<Message, Error>> + Unpin,
    S::Error: std::fmt::Debug,
{
    ws.send(message.clone()).await.unwrap();
    let got = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got.len(), message.len());
    assert!(got == message, "echo differs");
}

/// The status code of a Close message.
pub fn close_code(message: &Message) -> Option<u16> {
    match message {
        Message::Close(Some(frame)) => Some(frame.code.into()),
        _ => None,
    }
}

/// Open a WebSocket through `proxy` on a raw socket; returns the socket and
/// the bytes read past the 101.
pub async fn raw_websocket(proxy: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 101, "{}", head.text);
    (stream, head.rest)
}
