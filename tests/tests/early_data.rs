//! Bytes glued to the handshake on either side reach the other side, in
//! order: the client's first frame sent in the same packet as its request,
//! and a backend's first frame sent in the same packet as its 101.

use std::net::SocketAddr;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsproxy::WebSocketProxyLayer;
use wsproxy_e2e::serve;
use wsproxy_test_support::{
    connect, echo_backend, handshake, raw, read_at_least, read_head, scripted_backend,
    switching_protocols, within,
};

async fn serve_proxy(backend: SocketAddr) -> SocketAddr {
    let layer = WebSocketProxyLayer::new(format!("ws://{backend}").parse().unwrap());
    serve(axum::Router::new().layer(layer)).await
}

#[tokio::test]
async fn client_bytes_sent_with_the_request_reach_the_backend_first() {
    let backend = echo_backend().await;
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
    let backend = scripted_backend(|mut stream, head| async move {
        let mut answer = switching_protocols(&head).into_bytes();
        answer.extend_from_slice(b"\x81\x05hello\x81\x05world");
        stream.write_all(&answer).await.unwrap();
        // Keep the connection open until the client goes away.
        let mut chunk = [0u8; 1024];
        while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
    })
    .await;
    let proxy = serve_proxy(backend).await;

    let mut ws = connect(&format!("ws://{proxy}/")).await;
    for expected in ["hello", "world"] {
        let message = within("early message", ws.next()).await.unwrap().unwrap();
        assert_eq!(message, Message::text(expected));
    }
}
