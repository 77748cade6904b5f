//! Bytes glued to the handshake on either side reach the other side, in
//! order: the client's first frame sent in the same packet as its request,
//! and a backend's first frame sent in the same packet as its 101.

use std::net::SocketAddr;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsproxy::WebSocketProxyLayer;
use wsproxy_e2e::{connect, handshake, header, raw, read_at_least, read_head, serve, within};

async fn serve_proxy(backend: SocketAddr) -> SocketAddr {
    let layer = WebSocketProxyLayer::new(format!("ws://{backend}").parse().unwrap());
    serve(axum::Router::new().layer(layer)).await
}

#[tokio::test]
async fn client_bytes_sent_with_the_request_reach_the_backend_first() {
    let (backend, _task) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = serve_proxy(backend).await;

    let mut bytes = handshake("/", "").into_bytes();
    // A masked text frame "early" (mask 0): it travels in the same write.
    bytes.extend_from_slice(&[0x81, 0x85, 0, 0, 0, 0]);
    bytes.extend_from_slice(b"early");
    let mut client = raw(proxy, &bytes).await;

    let head = read_head(&mut client).await;
    assert_eq!(head.status, 101, "{}", head.text);
    let echoed = read_at_least(&mut client, head.rest, 7).await;
    assert_eq!(
        &echoed[..7],
        b"\x81\x05early",
        "the echo of the early frame"
    );
}

#[tokio::test]
async fn backend_bytes_sent_with_its_101_reach_the_client_first() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            request.extend_from_slice(&chunk[..n]);
        }
        let request = String::from_utf8(request).unwrap();
        let key = header(&request, "sec-websocket-key").unwrap();
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        answer.extend_from_slice(b"\x81\x05hello\x81\x05world");
        stream.write_all(&answer).await.unwrap();
        // Keep the connection open until the client goes away.
        while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
    });
    let proxy = serve_proxy(backend).await;

    let mut ws = connect(&format!("ws://{proxy}/")).await;
    for expected in ["hello", "world"] {
        let message = within("early message", ws.next()).await.unwrap().unwrap();
        assert_eq!(message, Message::text(expected));
    }
}
