//! Bytes glued to the handshake on either side reach the other side, in
//! order: the client's first frame sent in the same packet as its request,
//! and a backend's first frame sent in the same packet as its 101.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsproxy::WebSocketProxyLayer;

const LIMIT: Duration = Duration::from_secs(10);

async fn serve_proxy(backend: SocketAddr) -> SocketAddr {
    let layer = WebSocketProxyLayer::new(format!("ws://{backend}").parse().unwrap());
    let app = axum::Router::new().layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Read an HTTP head (up to the blank line); returns it and any bytes after.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = timeout(LIMIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the end of the head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8(buf).unwrap(), rest);
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn client_bytes_sent_with_the_request_reach_the_backend_first() {
    let (backend, _task) = wsproxy_bench::spawn_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = serve_proxy(backend).await;

    let mut client = TcpStream::connect(proxy).await.unwrap();
    let mut bytes = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    // A masked text frame "early" (mask 0): it travels in the same write.
    bytes.extend_from_slice(&[0x81, 0x85, 0, 0, 0, 0]);
    bytes.extend_from_slice(b"early");
    client.write_all(&bytes).await.unwrap();

    let (head, mut rest) = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    while rest.len() < 7 {
        let mut chunk = [0u8; 64];
        let n = timeout(LIMIT, client.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the echo");
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&rest[..7], b"\x81\x05early", "the echo of the early frame");
}

#[tokio::test]
async fn backend_bytes_sent_with_its_101_reach_the_client_first() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (head, _) = read_head(&mut stream).await;
        let key = header(&head, "sec-websocket-key").unwrap();
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        answer.extend_from_slice(b"\x81\x05hello\x81\x05world");
        stream.write_all(&answer).await.unwrap();
        // Keep the connection open until the client goes away.
        let mut sink = [0u8; 64];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let proxy = serve_proxy(backend).await;

    let (mut ws, _) = timeout(
        LIMIT,
        tokio_tungstenite::connect_async(format!("ws://{proxy}/")),
    )
    .await
    .unwrap()
    .unwrap();
    for expected in ["hello", "world"] {
        let message = timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(message, Message::text(expected));
    }
}
