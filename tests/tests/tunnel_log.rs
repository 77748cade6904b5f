//! Each tunnel logs one span with the client, route and upstream, and a
//! closing event with the status, duration, bytes each way and how it
//! ended (for a backend that vanished: the Close the proxy sent the
//! client).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use wsproxy::{Route, Tunnels, WebSocketProxyLayer};
use wsproxy_e2e::proxy_to;
use wsproxy_test_support::{Backend, Captured, LIMIT, echo_backend, wait_until};

async fn tunnel_closes(tunnels: &Tunnels) {
    assert!(
        wait_until(LIMIT, || tunnels.open() == 0).await,
        "the tunnel closes"
    );
}

/// The first captured line with `needle`; the whole log in the panic if
/// none.
fn line_with(captured: &Captured, needle: &str) -> String {
    let log = captured.text();
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} line in:\n{log}"))
        .to_owned()
}

/// Read `ws` to its end, drop it, and wait for its tunnel to close.
async fn drained<S>(mut ws: S, tunnels: &Tunnels)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Ok(Some(Ok(_))) = timeout(Duration::from_secs(10), ws.next()).await {}
    drop(ws);
    tunnel_closes(tunnels).await;
}

/// An echo backend behind a proxy configured by `configure`: the proxy's
/// address, its tunnels and the backend's address.
async fn logged_proxy(
    configure: impl FnOnce(WebSocketProxyLayer) -> WebSocketProxyLayer,
) -> (std::net::SocketAddr, Tunnels, std::net::SocketAddr) {
    let backend = echo_backend().await;
    let (proxy, tunnels) = proxy_to(backend, configure).await;
    (proxy, tunnels, backend)
}

#[tokio::test(flavor = "current_thread")]
async fn a_tunnel_logs_who_where_how_much_and_how_it_ended() {
    let (captured, _default) = Captured::start();

    let (proxy, tunnels, backend) = logged_proxy(|l| l.route(Route::prefix("/logged"))).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/logged"))
        .await
        .unwrap();
    let client_addr = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().unwrap(),
        _ => unreachable!(),
    };
    ws.send(Message::text("0123456789")).await.unwrap();
    let echo = timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("0123456789"));
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 4000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    drained(ws, &tunnels).await;

    let line = line_with(&captured, "tunnel closed");
    for expected in [
        format!("client={client_addr}"),
        "route=/logged".to_owned(),
        format!("upstream=ws://{backend}/"),
        "status=101".to_owned(),
        "duration_ms=".to_owned(),
        "bytes_up=".to_owned(),
        "bytes_down=".to_owned(),
        "end=".to_owned(),
        // A text message and a close frame each way; tungstenite answers
        // a close with the same code.
        "frames_up=2".to_owned(),
        "frames_down=2".to_owned(),
        "messages_up=1".to_owned(),
        "messages_down=1".to_owned(),
        "client_close=4000".to_owned(),
        "backend_close=4000".to_owned(),
    ] {
        assert!(
            line.contains(&expected),
            "{expected:?} missing from: {line}"
        );
    }
    let bytes = |key: &str| -> u64 {
        let start = line.find(key).unwrap() + key.len();
        line[start..].split(' ').next().unwrap().parse().unwrap()
    };
    // A masked 10-byte text frame is 16 bytes, its unmasked echo 12.
    assert!(bytes("bytes_up=") >= 16, "{line}");
    assert!(bytes("bytes_down=") >= 12, "{line}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_broken_limit_is_logged_with_the_limit_and_the_route() {
    let (captured, _default) = Captured::start();

    let (proxy, tunnels, _) = logged_proxy(|l| {
        l.route(Route::prefix("/limited"))
            .client_limits(wsproxy::MessageLimits::new().max_message(100))
            .admit(wsproxy::admit::ResolveClient::new([]))
    })
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/limited"))
        .await
        .unwrap();
    ws.send(Message::binary(vec![0u8; 101])).await.unwrap();
    drained(ws, &tunnels).await;

    let line = line_with(&captured, "message limit broken");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("route=/limited"), "{line}");
    assert!(line.contains("the client broke max_message"), "{line}");
    // The resolved client is on every line of the tunnel.
    assert!(line.contains("client_ip=127.0.0.1"), "{line}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_vanished_backend_is_logged_with_the_close_the_client_got() {
    let (captured, _default) = Captured::start();
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
        .await
        .unwrap();
    // The backend drops its socket without a Close frame.
    ws.send(Message::text("server-drop")).await.unwrap();
    while let Ok(Some(Ok(_))) = timeout(LIMIT, ws.next()).await {}
    drop(ws);
    tunnel_closes(&tunnels).await;

    let line = line_with(&captured, "tunnel closed");
    assert!(
        line.contains(
            "end=backend ended without a Close frame (end of stream), Close 1011 sent to the \
             client, closing handshake completed"
        ),
        "{line}"
    );
    // The client's answer, never forwarded to the dead backend.
    assert!(line.contains("client_close=1011"), "{line}");
    assert!(line.contains("backend_close=none"), "{line}");
}

/// The closing event is logged inside the tunnel's span, so a log filter
/// scoped to that span (`[tunnel]=info` under a `warn` default) lets it
/// through.
#[tokio::test(flavor = "current_thread")]
async fn a_filter_scoped_to_the_tunnel_span_keeps_its_closing_line() {
    let (captured, _default) = Captured::start_filtered("warn,[tunnel]=info");
    let (proxy, tunnels, _) = logged_proxy(|l| l.route(Route::prefix("/scoped"))).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/scoped"))
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    let echo = timeout(Duration::from_secs(10), ws.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap(), Message::text("ping"));
    ws.close(None).await.unwrap();
    drained(ws, &tunnels).await;

    let line = line_with(&captured, "tunnel closed");
    assert!(line.contains("route=/scoped"), "{line}");
}
