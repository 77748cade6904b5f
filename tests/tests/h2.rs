//! WebSockets over HTTP/2 (RFC 8441): a hyper HTTP/2 client does extended
//! `CONNECT` (h2c with prior knowledge) through the layer to an HTTP/1.1
//! tokio-tungstenite backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::Empty;
use hyper::ext::Protocol;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use wsproxy::serve::{ConnectionLimits, Timeouts};
use wsproxy::{Route, Tunnels, WebSocketProxyLayer};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

async fn proxy_over(layer: WebSocketProxyLayer) -> (SocketAddr, Tunnels) {
    let tunnels = layer.tunnels_handle().clone();
    let app = axum::Router::new()
        .route("/plain", axum::routing::get(|| async { "plain over h2" }))
        .layer(layer);
    (serve(app).await, tunnels)
}

#[tokio::test]
async fn an_h2_websocket_reaches_an_http1_backend_and_echoes() {
    let backend = Backend::with(BackendOptions {
        protocol: Some("chat"),
        headers: vec![("set-cookie", "seen=1")],

        ..Default::default()
    })
    .await;
    let layer = WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
        .route(Route::prefix("/ws"));
    let (proxy, tunnels) = proxy_over(layer).await;
    let mut sender = h2(proxy).await;
    let request = connect_request(
        proxy,
        "/ws/room?id=7",
        &[
            ("sec-websocket-protocol", "superchat, chat"),
            ("origin", "https://app.example"),
        ],
    );
    let (head, mut ws) = open(&mut sender, request).await;
    // 200, never 101; no Upgrade, Connection or Accept on HTTP/2; the
    // backend's subprotocol and cookie come through.
    for absent in ["upgrade", "connection", "sec-websocket-accept"] {
        assert!(!head.headers.contains_key(absent), "{absent}: {head:?}");
    }
    assert_eq!(head.headers["sec-websocket-protocol"], "chat");
    assert_eq!(head.headers["set-cookie"], "seen=1");

    echo(&mut ws, Message::text("hello over h2")).await;
    echo(&mut ws, Message::binary(vec![7u8; 70_000])).await;
    // The backend got a real HTTP/1.1 handshake with a key of its own.
    let seen = backend.last_headers();
    assert_eq!(backend.last_uri(), "/ws/room?id=7");
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["sec-websocket-version"], "13");
    assert_eq!(seen["sec-websocket-key"].len(), 24);
    assert_eq!(seen["host"], backend.addr.to_string().as_str());
    assert_eq!(seen["origin"], "https://app.example");
    assert_eq!(seen["x-forwarded-proto"], "http");

    ws.close(Some(CloseFrame {
        code: 4000.into(),
        reason: "client bye".into(),
    }))
    .await
    .unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, ws.next()).await {}
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    let stats = tunnels.stats();
    assert_eq!((stats.opened, stats.opened_h2), (1, 1));
    assert_eq!(stats.client.close_codes.get(&4000), Some(&1));
    // Plain requests on the same HTTP/2 connection still reach the app.
    let plain = Request::get(format!("http://{proxy}/plain"))
        .version(Version::HTTP_2)
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(plain).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn close_codes_and_a_16_mib_message_cross_over_h2() {
    let backend = Backend::start().await;
    let (proxy, _) = proxy_over(WebSocketProxyLayer::new(
        format!("ws://{}", backend.addr).parse().unwrap(),
    ))
    .await;
    let mut sender = h2(proxy).await;
    let (_, mut ws) = open(&mut sender, connect_request(proxy, "/", &[])).await;
    let big_message: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    echo(&mut ws, Message::binary(big_message)).await;
    // The backend closes with 4001: the client sees it.
    ws.send(Message::text("server-close")).await.unwrap();
    let close = within("the backend's close", next_close(&mut ws)).await;
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4001));
}

/// The next Close frame on `ws` (other messages skipped).
async fn next_close(ws: &mut H2Socket) -> Option<CloseFrame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// A proxy to a raw backend that answers `answer`, and an HTTP/2
/// connection to it, ready for extended CONNECT.
async fn h2_to_raw(answer: &'static str) -> (RawBackend, SocketAddr, Tunnels, H2Sender) {
    let backend = RawBackend::start(answer).await;
    let (proxy, tunnels) = proxy_over(WebSocketProxyLayer::new(
        format!("ws://{}", backend.addr).parse().unwrap(),
    ))
    .await;
    let mut sender = h2(proxy).await;
    within("the connection to be ready", sender.ready())
        .await
        .unwrap();
    (backend, proxy, tunnels, sender)
}

#[tokio::test]
async fn refusals_are_statuses_on_the_h2_stream() {
    // The backend's own answer: relayed as that status.
    let (refusing, proxy, tunnels, mut sender) =
        h2_to_raw("HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno").await;
    let response = sender
        .send_request(connect_request(proxy, "/", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // A version other than 13: 426 before any backend.
    let mut bad = connect_request(proxy, "/", &[]);
    bad.headers_mut()
        .insert("sec-websocket-version", "8".parse().unwrap());
    let response = sender.send_request(bad).await.unwrap();
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["sec-websocket-version"], "13");
    assert_eq!(refusing.connections(), 1);
    // Another :protocol is not claimed: the app answers it.
    let mut other = connect_request(proxy, "/", &[]);
    other
        .extensions_mut()
        .insert(Protocol::from_static("connect-udp"));
    let response = sender.send_request(other).await.unwrap();
    // The app (an empty router) has no such route.
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(refusing.connections(), 1, "nothing reached the backend");
    assert_eq!(tunnels.stats().opened, 0);

    // A backend's 200 (not an upgrade) must not reach an HTTP/2 client as
    // a 200, which would mean "WebSocket open": 502.
    let (_, proxy, tunnels, mut sender) =
        h2_to_raw("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").await;
    let response = sender
        .send_request(connect_request(proxy, "/", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(tunnels.stats().opened, 0);
}

#[tokio::test]
async fn a_stalled_stream_does_not_stall_its_neighbours_and_is_not_buffered() {
    let stalled = stalled_backend().await;
    let echo_backend = Backend::start().await;
    let layer_stalled = WebSocketProxyLayer::new(format!("ws://{stalled}").parse().unwrap())
        .route(Route::prefix("/stalled"));
    let layer_echo =
        WebSocketProxyLayer::new(format!("ws://{}", echo_backend.addr).parse().unwrap())
            .route(Route::prefix("/echo"));
    let app = axum::Router::new().layer(layer_stalled).layer(layer_echo);
    // With hyper's defaults (1 MiB for a stream and for the whole
    // connection), one stalled upload fills the connection's window and
    // every other upload on it stops: see "Serving" in the crate docs.
    // `wsproxy::serve::Server` has the windows the crate docs recommend
    // (stream 256 KiB, connection 8 MiB) and extended CONNECT enabled.
    let proxy = serve_with(app, Timeouts::new(), ConnectionLimits::new()).await;
    let mut sender = h2(proxy).await;

    // Stream A: 64 MiB toward a backend that reads nothing.
    let (_, mut a) = open(&mut sender, connect_request(proxy, "/stalled", &[])).await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        let chunk = Message::binary(vec![1u8; 1024 * 1024]);
        for _ in 0..64 {
            a.send(chunk.clone()).await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    // A is stalled once its writer stops making progress (every window
    // and buffer on the way is full).
    let stalled_at = within("A to stall", async {
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = sent.load(Ordering::SeqCst);
            if now == last {
                break now;
            }
            last = now;
        }
    })
    .await;
    assert!(stalled_at < 64, "64 MiB were buffered somewhere");
    // Stream B on the same connection still echoes while A stays stalled.
    let (_, mut b) = open(&mut sender, connect_request(proxy, "/echo", &[])).await;
    for i in 0..20 {
        echo(&mut b, Message::text(format!("still flowing {i}"))).await;
    }
    echo(&mut b, Message::binary(vec![2u8; 1024 * 1024])).await;
    assert_eq!(
        sent.load(Ordering::SeqCst),
        stalled_at,
        "A moved: it was not stalled"
    );
    writer.abort();
}

/// Open a WebSocket over h2 to a raw backend; the HTTP/1.1 head it
/// received, lower-cased.
async fn backend_head(uri: impl Fn(SocketAddr) -> String, headers: &[(&str, &str)]) -> String {
    let raw = RawBackend::start(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n",
    )
    .await;
    let (proxy, _) = proxy_over(WebSocketProxyLayer::new(
        format!("ws://{}", raw.addr).parse().unwrap(),
    ))
    .await;
    let mut sender = h2(proxy).await;
    let mut request = connect_request(proxy, "/", headers);
    *request.uri_mut() = uri(proxy).parse().unwrap();
    let (_, _ws) = open(&mut sender, request).await;
    raw.received_text(0).to_ascii_lowercase()
}

#[tokio::test]
async fn h2_header_translation_follows_rfc_9113() {
    // Cookie crumbs are joined into one field for HTTP/1.1 (§8.2.3).
    let head = backend_head(
        |p| format!("http://{p}/"),
        &[("cookie", "a=1"), ("cookie", "session=secret")],
    )
    .await;
    assert_eq!(head.matches("\r\ncookie:").count(), 1, "{head}");
    assert!(
        head.contains("\r\ncookie: a=1; session=secret\r\n"),
        "{head}"
    );
    // `:authority` wins over a `host` field (§8.3.1).
    let head = backend_head(|p| format!("http://{p}/"), &[("host", "evil.example")]).await;
    assert!(!head.contains("x-forwarded-host: evil.example"), "{head}");
    assert!(head.contains("x-forwarded-host: 127.0.0.1:"), "{head}");
    // A plaintext client's `:scheme: https` is only its claim: the
    // connection was not TLS, so the backend is told `http`.
    let head = backend_head(|p| format!("https://{p}/"), &[]).await;
    assert!(head.contains("x-forwarded-proto: http\r\n"), "{head}");
}

/// A page that opens and closes WebSockets on one HTTP/2 connection: each
/// closing handshake ends its stream with both sides' END_STREAM, and the
/// proxy waits for the client's before it lets the stream go. Were the
/// stream dropped first, the proxy would reset it while the client still
/// sends; h2 counts the resets it must send for frames on such streams,
/// and after 1,024 of them ends the whole connection (GOAWAY
/// ENHANCE_YOUR_CALM), every WebSocket on it with it.
#[tokio::test]
async fn closing_handshakes_end_h2_streams_cleanly_and_keep_the_connection() {
    const LOOPS: usize = 48;
    const EACH: usize = 25;
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_over(WebSocketProxyLayer::new(
        format!("ws://{}", backend.addr).parse().unwrap(),
    ))
    .await;
    let sender = h2(proxy).await;
    let loops: Vec<_> = (0..LOOPS)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                for _ in 0..EACH {
                    let (_, mut ws) = open(&mut sender, connect_request(proxy, "/", &[])).await;
                    ws.close(None).await.unwrap();
                    while let Some(Ok(_)) = within("the server's Close", ws.next()).await {}
                    // The client ends its side of the stream too.
                    within("END_STREAM", ws.get_mut().shutdown()).await.unwrap();
                }
            })
        })
        .collect();
    for task in loops {
        task.await.unwrap();
    }
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    let stats = tunnels.stats();
    assert_eq!(stats.opened_h2, (LOOPS * EACH) as u64);
    // The connection is still up: a plain request on it is answered.
    let mut sender = sender;
    let (status, body) = h2_get(&mut sender, &proxy.to_string(), "http", "/plain").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "plain over h2"));
}

/// The proxy closing a WebSocket over HTTP/2 itself (here for a broken
/// message limit) lets its stream go only once the client ended it too:
/// dropped at once, the stream would be reset while the client still
/// sends, with the same count toward GOAWAY as above.
#[tokio::test]
async fn a_websocket_the_proxy_closes_over_h2_is_not_reset_under_the_client() {
    let backend = Backend::start().await;
    let layer = WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
        .client_limits(wsproxy::MessageLimits::new().max_message(16))
        // Only the client's end of its stream lets it go in this test.
        .half_close_timeout(LIMIT);
    let (proxy, tunnels) = proxy_over(layer).await;
    let mut sender = h2(proxy).await;
    let (_, mut ws) = open(&mut sender, connect_request(proxy, "/", &[])).await;
    ws.send(Message::binary(vec![1u8; 64])).await.unwrap();
    // The proxy's Close 1009; tungstenite answers it.
    let close = within("the proxy's Close", next_close(&mut ws)).await;
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1009));
    while let Some(Ok(_)) = within("the end of the WebSocket", ws.next()).await {}
    // The relay is over (its end counted); a round trip on the same
    // connection makes sure the client has seen whatever the proxy did
    // with the stream since.
    assert!(wait_until(LIMIT, || tunnels.stats().ended.limit == 1).await);
    let (status, _) = h2_get(&mut sender, &proxy.to_string(), "http", "/plain").await;
    assert_eq!(status, StatusCode::OK);
    // The stream is still there for the client to end, and the tunnel
    // counts open until it does.
    assert_eq!(tunnels.open(), 1);
    within("END_STREAM", ws.get_mut().shutdown()).await.unwrap();
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
}
