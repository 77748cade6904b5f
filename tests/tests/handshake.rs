//! The opening handshake: what is claimed, what is refused before any
//! backend is touched, and every outcome of the backend's answer.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use wsproxy_e2e::*;
use wsproxy_test_support::*;

#[tokio::test]
async fn connection_and_upgrade_token_variants_open_a_tunnel() {
    let backend = Backend::start().await;
    let (proxy, _) = proxy_to(backend.addr, |l| l).await;
    for (connection, upgrade) in [
        ("keep-alive, Upgrade", "websocket"),
        ("upgrade", "WebSocket"),
        ("Upgrade", "websocket"),
        ("keep-alive,UPGRADE", "WEBSOCKET"),
    ] {
        let request = format!(
            "GET /x HTTP/1.1\r\nHost: p\r\nUpgrade: {upgrade}\r\nConnection: {connection}\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut stream = raw(proxy, request.as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 101, "{connection} / {upgrade}: {}", head.text);
        assert_eq!(
            head.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        // A masked "hi" is echoed unmasked.
        stream
            .write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
            .await
            .unwrap();
        let echoed = read_at_least(&mut stream, head.rest, 4).await;
        assert_eq!(&echoed[..4], b"\x81\x02hi");
    }
    assert_eq!(backend.connections(), 4);
}

#[tokio::test]
async fn bad_handshakes_are_refused_before_the_backend() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let upgrade = "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    let host = "Host: p\r\n";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    for (headers, body, status, reason) in [
        // Missing, short, not base64, repeated keys.
        (format!("{host}{v13}"), "", 400, "missing Sec-WebSocket-Key"),
        (
            format!("{host}Sec-WebSocket-Key: c2hvcnQ=\r\n{v13}"),
            "",
            400,
            "not base64 of 16 bytes",
        ),
        (
            format!("{host}Sec-WebSocket-Key: !!notbase64!!!!!!!!!!!!!\r\n{v13}"),
            "",
            400,
            "not base64 of 16 bytes",
        ),
        (
            format!("{host}{key}Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n{v13}"),
            "",
            400,
            "more than one Sec-WebSocket-Key",
        ),
        // No Host, two, or an invalid one (RFC 9112 §3.2).
        (format!("{key}{v13}"), "", 400, "missing Host header"),
        (
            format!("{host}Host: q\r\n{key}{v13}"),
            "",
            400,
            "more than one Host header",
        ),
        (
            format!("Host: u@p\r\n{key}{v13}"),
            "",
            400,
            "invalid Host header",
        ),
        // A handshake with a body.
        (
            format!("{host}{key}{v13}Content-Length: 5\r\n"),
            "hello",
            400,
            "must not have a body",
        ),
        (
            format!("{host}{key}{v13}Transfer-Encoding: chunked\r\n"),
            "5\r\nhello\r\n0\r\n\r\n",
            400,
            "must not have a body",
        ),
        // Versions other than 13, or none.
        (
            format!("{host}{key}Sec-WebSocket-Version: 8\r\n"),
            "",
            426,
            "must be 13",
        ),
        (format!("{host}{key}"), "", 426, "must be 13"),
    ] {
        let mut stream = raw(proxy, format!("{upgrade}{headers}\r\n{body}").as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, status, "{headers:?}: {}", head.text);
        let text = String::from_utf8(read_body(&mut stream, &head).await).unwrap();
        assert!(text.contains(reason), "{headers:?}: {text:?}");
        if status == 426 {
            assert_eq!(head.header("sec-websocket-version"), Some("13"));
        }
    }
    assert_eq!(tunnels.open(), 0);
    // A valid handshake afterwards is the backend's first connection: none
    // of the refused ones reached it (accepts are in order).
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    echo(&mut ws, Message::text("valid")).await;
    assert_eq!(backend.connections(), 1, "nothing else reached the backend");
    assert_eq!(backend.seen.lock().unwrap().uris.len(), 1);
}

#[tokio::test]
async fn backend_subprotocol_and_headers_reach_the_client() {
    let backend = Backend::with(BackendOptions {
        protocol: Some("b"),
        headers: vec![("set-cookie", "session=42; HttpOnly"), ("x-backend", "yes")],

        ..Default::default()
    })
    .await;
    let (proxy, _) = proxy_to(backend.addr, |l| l).await;
    let (mut ws, response) = connect_with(
        &format!("ws://{proxy}/"),
        &[("sec-websocket-protocol", "a, b")],
    )
    .await;
    assert_eq!(response.headers()["sec-websocket-protocol"], "b");
    assert_eq!(response.headers()["set-cookie"], "session=42; HttpOnly");
    assert_eq!(response.headers()["x-backend"], "yes");
    echo(&mut ws, Message::text("with protocol b")).await;
}

#[tokio::test]
async fn a_refusal_is_relayed_with_its_body_and_no_tunnel_opens() {
    let backend = RawBackend::start(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Reason: no-entry\r\nContent-Length: 11\r\n\r\ngo away now",
    )
    .await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 403, "{}", head.text);
    assert_eq!(head.header("x-reason"), Some("no-entry"));
    assert_eq!(head.header("content-type"), Some("text/plain"));
    assert_eq!(read_body(&mut stream, &head).await, b"go away now");
    assert_eq!(tunnels.open(), 0);
    // The proxy does not keep the backend connection once the refusal
    // has been relayed.
    let ended = backend.ended.clone();
    assert!(
        wait_until(LIMIT, || ended.load(Ordering::SeqCst) == 1).await,
        "the backend connection was closed"
    );
    assert_eq!(tunnels.open(), 0);
}

#[tokio::test]
async fn refusal_bodies_of_every_framing_arrive_whole() {
    // Close-delimited (no length, connection closed after the body).
    let backend = RawBackend::start_closing(
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nConnection: close\r\n\r\nclose-delimited body",
    )
    .await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 401, "{}", head.text);
    assert_eq!(head.header("www-authenticate"), Some("Bearer"));
    assert_eq!(read_body(&mut stream, &head).await, b"close-delimited body");

    // Chunked.
    let backend = RawBackend::start(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n\
         6\r\nchunk \r\n3\r\none\r\n0\r\n\r\n",
    )
    .await;
    let (proxy, _) = proxy_to(backend.addr, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 429, "{}", head.text);
    assert_eq!(head.header("retry-after"), Some("7"));
    assert_eq!(read_body(&mut stream, &head).await, b"chunk one");
    assert_eq!(tunnels.open(), 0);
}

#[tokio::test]
async fn a_large_refusal_body_streams_intact() {
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let sent = body.clone();
    let backend = scripted_backend(|mut stream, _| async move {
        let head = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n",
            sent.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&sent).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let (proxy, tunnels) = proxy_to(backend, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 503, "{}", head.text);
    assert!(read_body(&mut stream, &head).await == body, "body differs");
    assert_eq!(tunnels.open(), 0);
}

/// After the backend refused, the client's next bytes on the same
/// connection are HTTP for the app, never tunnelled to the backend.
async fn smuggling_is_not_possible(answer: &'static str, status: u16, pipelined: bool) {
    let backend = RawBackend::start(answer).await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let next = "GET /internal HTTP/1.1\r\nHost: internal\r\n\r\n";
    let first = if pipelined {
        // The second request travels in the same write as the handshake.
        format!("{}{next}", handshake("/", ""))
    } else {
        handshake("/", "")
    };
    let mut stream = raw(proxy, first.as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, status, "{}", head.text);
    let (body, rest) = read_body_and_rest(&mut stream, &head).await;
    if status != 502 {
        assert_eq!(body, answer.split("\r\n\r\n").nth(1).unwrap().as_bytes());
    }

    if !pipelined {
        assert!(rest.is_empty(), "{rest:?}");
        stream.write_all(next.as_bytes()).await.unwrap();
    }
    let head = read_head_after(&mut stream, rest).await;
    assert_eq!(head.status, 200, "the app answered: {}", head.text);
    assert_eq!(read_body(&mut stream, &head).await, b"internal app route");

    assert_eq!(backend.connections(), 1, "one backend connection");
    let text = backend.received_text(0);
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "one request reached the backend: {text}"
    );
    assert!(!text.contains("internal"), "{text}");
    assert_eq!(tunnels.open(), 0);
}

#[tokio::test]
async fn smuggling_after_a_403_is_rejected() {
    let answer = "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno";
    smuggling_is_not_possible(answer, 403, false).await;
    smuggling_is_not_possible(answer, 403, true).await;
}

#[tokio::test]
async fn smuggling_after_a_200_is_rejected() {
    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    smuggling_is_not_possible(answer, 200, false).await;
    smuggling_is_not_possible(answer, 200, true).await;
}

#[tokio::test]
async fn smuggling_after_a_bad_101_is_rejected() {
    let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
    smuggling_is_not_possible(answer, 502, false).await;
    smuggling_is_not_possible(answer, 502, true).await;
}

#[tokio::test]
async fn a_wrong_accept_or_protocol_is_a_bad_gateway() {
    for answer in [
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: d3JvbmcgYWNjZXB0IGtleQ==\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n",
    ] {
        let backend = RawBackend::start(answer).await;
        let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
        let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 502, "{answer:?}: {}", head.text);
        assert_eq!(tunnels.open(), 0);
        let ended = backend.ended.clone();
        assert!(
            wait_until(LIMIT, || ended.load(Ordering::SeqCst) == 1).await,
            "the backend connection was closed"
        );
    }
}

#[tokio::test]
async fn a_backend_that_hangs_up_or_talks_nonsense_is_a_bad_gateway() {
    for answer in ["", "SSH-2.0-OpenSSH_9.6\r\n\r\n", "HTTP/1.1 abc\r\n\r\n"] {
        let backend = RawBackend::start_closing(answer).await;
        let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
        let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 502, "{answer:?}: {}", head.text);
        assert_eq!(tunnels.open(), 0);
    }
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_101_do_not_reach_the_client() {
    let backend = RawBackend::start(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Secret\r\n\
         X-Secret: s\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
         X-End-To-End: yes\r\nSec-WebSocket-Accept: {accept}\r\n\r\n",
    )
    .await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 101, "{}", head.text);
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert_eq!(head.headers("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(head.header("x-end-to-end"), Some("yes"));
    assert_eq!(head.header("x-secret"), None, "{}", head.text);
    assert_eq!(head.header("keep-alive"), None, "{}", head.text);
    assert!(
        head.header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    );
    assert!(wait_until(LIMIT, || tunnels.open() == 1).await);
}

#[tokio::test]
async fn a_dead_port_is_a_bad_gateway() {
    let (_port, dead) = closed_port();
    let (proxy, _) = proxy_to(dead, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 502);
    // The cause goes to the log, not to the client.
    let body = read_at_least(&mut stream, head.rest, 12).await;
    assert_eq!(body, b"Bad Gateway\n");
}

#[tokio::test]
async fn an_unresolvable_host_is_a_bad_gateway() {
    // A slow resolver must still end in 502, not in a connect timeout.
    let layer = wsproxy::WebSocketProxyLayer::new("ws://no-such-host.invalid:80".parse().unwrap())
        .connect_timeout(Duration::from_secs(9));
    let proxy = serve(axum::Router::new().layer(layer)).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 502);
}

#[tokio::test]
async fn a_silent_backend_is_a_gateway_timeout() {
    // Accepts TCP, never answers.
    let (silent, _) = silent_backend().await;
    let (proxy, _) = proxy_to(silent, |l| l.handshake_timeout(Duration::from_millis(500))).await;
    let start = Instant::now();
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 504);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn a_backend_that_never_accepts_is_a_gateway_timeout() {
    // A listener whose accept queue (backlog 0: one slot) is full drops
    // further SYNs, so a connect to it hangs until the connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        // The second one may itself hang; that is the point.
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(stream);
        }
    }
    let (proxy, _) = proxy_to(addr, |l| {
        l.connect_timeout(Duration::from_millis(300))
            .handshake_timeout(Duration::from_secs(30))
    })
    .await;
    let start = Instant::now();
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 504);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    drop((full, fillers));
}

/// The path the backend at `upstream_path` gets for `request` through a
/// layer set up by `configure`.
async fn backend_uri(
    backend: &Backend,
    upstream_path: &str,
    configure: impl FnOnce(wsproxy::WebSocketProxyLayer) -> wsproxy::WebSocketProxyLayer,
    request: &str,
) -> String {
    let layer = configure(wsproxy::WebSocketProxyLayer::new(
        format!("ws://{}{upstream_path}", backend.addr)
            .parse()
            .unwrap(),
    ));
    let proxy = serve(axum::Router::new().layer(layer)).await;
    let mut ws = connect(&format!("ws://{proxy}{request}")).await;
    echo(&mut ws, Message::text("hi")).await;
    backend.last_uri()
}

#[tokio::test]
async fn paths_map_onto_the_upstream_with_or_without_the_prefix() {
    let backend = Backend::start().await;
    for (upstream_path, strip, request, expected) in [
        (
            "/base",
            true,
            "/chat/room/7?token=abc",
            "/base/room/7?token=abc",
        ),
        (
            "/base",
            false,
            "/chat/room/7?token=abc",
            "/base/chat/room/7?token=abc",
        ),
        ("/base", true, "/chat?x=1", "/base?x=1"),
        ("/base/", true, "/chat", "/base/"),
        ("", true, "/chat", "/"),
        ("", true, "/chat/", "/"),
        ("", false, "/chat/a%20b/c?q=%2F&r", "/chat/a%20b/c?q=%2F&r"),
        ("/base?k=v", true, "/chat/x?q=1", "/base/x?k=v&q=1"),
    ] {
        let configure = |l: wsproxy::WebSocketProxyLayer| {
            l.route(wsproxy::Route::prefix("/chat")).strip_prefix(strip)
        };
        assert_eq!(
            backend_uri(&backend, upstream_path, configure, request).await,
            expected,
            "upstream {upstream_path:?}, strip {strip}, request {request}"
        );
    }
}

/// `rewrite_prefix`: the route's prefix replaced, the rest and the query
/// kept, whole segments only; on a route of every path (`Route::any`,
/// which `Route::prefix("/")` is) the replacement goes in front.
#[tokio::test]
async fn a_rewritten_prefix_replaces_the_route_prefix() {
    let backend = Backend::start().await;
    for (upstream_path, replacement, request, expected) in [
        (
            "",
            "/v2/rooms",
            "/chat/7?token=abc",
            "/v2/rooms/7?token=abc",
        ),
        ("", "/v2/rooms/", "/chat", "/v2/rooms"),
        ("", "/v2", "/chat/", "/v2/"),
        ("/base", "/v2", "/chat/a%20b", "/base/v2/a%20b"),
        ("", "", "/chat/x", "/x"),
        ("", "", "/chat", "/"),
    ] {
        let configure = |l: wsproxy::WebSocketProxyLayer| {
            l.route(wsproxy::Route::prefix("/chat"))
                .rewrite_prefix(replacement)
        };
        assert_eq!(
            backend_uri(&backend, upstream_path, configure, request).await,
            expected,
            "upstream {upstream_path:?}, rewrite {replacement:?}, request {request}"
        );
    }
    for route in [wsproxy::Route::any(), wsproxy::Route::prefix("/")] {
        let configure = |l: wsproxy::WebSocketProxyLayer| l.route(route).rewrite_prefix("/v2");
        assert_eq!(
            backend_uri(&backend, "", configure, "/x?y=1").await,
            "/v2/x?y=1"
        );
    }
}

#[tokio::test]
async fn end_to_end_headers_pass_and_hop_by_hop_headers_do_not() {
    let backend = Backend::start().await;
    let (proxy, _) = proxy_to(backend.addr, |l| l).await;
    let extra = "Origin: https://app.example\r\nCookie: a=b\r\nAuthorization: Bearer t\r\n\
                 X-Custom: 1\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
                 Proxy-Authorization: Basic eA==\r\n";
    let request =
        handshake("/", extra).replace("Connection: Upgrade", "Connection: Upgrade, X-Hop");
    let mut stream = raw(proxy, request.as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 101);
    let headers = backend.last_headers();
    assert_eq!(headers["origin"], "https://app.example");
    assert_eq!(headers["cookie"], "a=b");
    assert_eq!(headers["authorization"], "Bearer t");
    assert_eq!(headers["x-custom"], "1");
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["connection"], "Upgrade");
    for gone in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(!headers.contains_key(gone), "{gone} must not be forwarded");
    }
}

#[tokio::test]
async fn forwarding_headers_replace_a_spoofed_xff_unless_the_peer_is_trusted() {
    let backend = Backend::start().await;
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n\
                 Forwarded: for=6.6.6.6\r\n";

    let (proxy, _) = proxy_to(backend.addr, |l| l.forwarded_header(true)).await;
    let mut stream = raw(proxy, handshake("/", spoof).as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 101);
    let headers = backend.last_headers();
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "proxy.test");
    assert_eq!(
        headers["forwarded"],
        "for=127.0.0.1;host=proxy.test;proto=http"
    );
    assert_eq!(
        headers["host"],
        backend.addr.to_string(),
        "Host is the upstream's by default"
    );

    let (proxy, _) = proxy_to(backend.addr, |l| {
        l.forwarded_header(true)
            .trusted_proxies(["127.0.0.1/32".parse().unwrap()])
    })
    .await;
    let mut stream = raw(proxy, handshake("/", spoof).as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 101);
    let headers = backend.last_headers();
    assert_eq!(headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(headers["x-forwarded-host"], "evil");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(
        headers["forwarded"],
        "for=6.6.6.6, for=127.0.0.1;host=proxy.test;proto=http"
    );
}

#[tokio::test]
async fn host_header_policies() {
    let backend = Backend::start().await;
    for (policy, expected) in [
        (wsproxy::HostHeader::Client, "proxy.test".to_owned()),
        (
            wsproxy::HostHeader::Fixed("backend.internal".parse().unwrap()),
            "backend.internal".to_owned(),
        ),
        (wsproxy::HostHeader::Upstream, backend.addr.to_string()),
    ] {
        let (proxy, _) = proxy_to(backend.addr, |l| l.host_header(policy)).await;
        let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
        assert_eq!(read_head(&mut stream).await.status, 101);
        assert_eq!(backend.last_headers()["host"], expected.as_str());
    }
}

#[tokio::test]
async fn no_connect_info_means_no_xff_and_an_unknown_client() {
    let backend = Backend::start().await;
    let layer =
        wsproxy::WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
            .forwarded_header(true);
    // Served without `into_make_service_with_connect_info`.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let app = axum::Router::new().layer(layer);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut stream = raw(
        proxy,
        handshake("/", "X-Forwarded-For: 6.6.6.6\r\n").as_bytes(),
    )
    .await;
    assert_eq!(read_head(&mut stream).await.status, 101);
    let headers = backend.last_headers();
    assert!(!headers.contains_key("x-forwarded-for"), "{headers:?}");
    assert_eq!(
        headers["forwarded"],
        "for=unknown;host=proxy.test;proto=http"
    );
}

// ---------------------------------------------------------------------
// The backend's answer read piece by piece (the proxy's own HTTP/1.1
// reader: a head in many reads, informational answers, limits, framing).
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_101_in_single_bytes_after_informational_answers_opens_the_tunnel() {
    let backend = scripted_backend(|mut stream, head| async move {
        stream.set_nodelay(true).unwrap();
        let mut answer = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            .to_vec();
        answer.extend_from_slice(switching_protocols(&head).as_bytes());
        answer.extend_from_slice(b"\x81\x05hello");
        // A byte per write, each after the proxy could have read the last.
        for byte in answer {
            stream.write_all(&[byte]).await.unwrap();
            tokio::task::yield_now().await;
        }
        let mut chunk = [0u8; 1024];
        while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
    })
    .await;
    let (proxy, tunnels) = proxy_to(backend, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 101, "{}", head.text);
    // The informational answers are the proxy's business, not the client's.
    assert!(!head.text.contains("Early Hints"), "{}", head.text);
    assert!(head.header("link").is_none(), "{}", head.text);
    let early = read_at_least(&mut stream, head.rest, 7).await;
    assert_eq!(&early[..7], b"\x81\x05hello");
    assert_eq!(tunnels.open(), 1);
}

#[tokio::test]
async fn an_oversized_or_overlong_answer_head_is_a_bad_gateway() {
    let filler = "x".repeat(1000);
    let many_fields: String = (0..101).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let huge_fields: String = (0..70)
        .map(|i| format!("X-Big-{i}: {filler}\r\n"))
        .collect();
    for (what, extra) in [("101 fields", many_fields), ("a 70 KB head", huge_fields)] {
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             {extra}Sec-WebSocket-Accept: {{accept}}\r\n\r\n"
        );
        let backend = RawBackend::start(answer.leak()).await;
        let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
        let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 502, "{what}: {}", head.text);
        assert_eq!(tunnels.open(), 0);
    }
    // 100 fields and a 60 KB head are still answers.
    let fields: String = (0..96).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let big: String = (0..60)
        .map(|i| format!("X-Big-{i}: {filler}\r\n"))
        .collect();
    for extra in [fields, big] {
        let answer = format!("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n{extra}\r\nno");
        let backend = RawBackend::start(answer.leak()).await;
        let (proxy, _) = proxy_to(backend.addr, |l| l).await;
        let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 403, "{}", &head.text[..200]);
        assert_eq!(read_body(&mut stream, &head).await, b"no");
    }
}

#[tokio::test]
async fn a_refusal_framed_by_transfer_encoding_ignores_its_content_length() {
    // Both: the chunked framing is the one (RFC 9112 §6.3), and the
    // length must not reach the client beside a body of another size.
    let backend = RawBackend::start(
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: dropped\r\n\r\n",
    )
    .await;
    let (proxy, _) = proxy_to(backend.addr, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 403, "{}", head.text);
    assert_ne!(head.header("content-length"), Some("3"), "{}", head.text);
    assert_eq!(read_body(&mut stream, &head).await, b"hello world");

    // Two lengths that disagree: no framing to trust.
    let backend = RawBackend::start(
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    )
    .await;
    let (proxy, _) = proxy_to(backend.addr, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 502, "{}", head.text);
}

#[tokio::test]
async fn a_refusal_body_cut_short_ends_the_clients_response_unfinished() {
    let backend = RawBackend::start_closing(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    // The client's connection ends without the promised 100 bytes (hyper
    // drops what it had not flushed yet when a body fails).
    let mut answer = Vec::new();
    within("the connection's end", stream.read_to_end(&mut answer))
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 503"),
        "{text}"
    );
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert!(body.len() < 100, "{text}");
    assert_eq!(tunnels.open(), 0);
}

/// A backend that refuses with a 100-byte body, sends `started` of it,
/// and holds the connection until the proxy drops it.
async fn stalling_refusal() -> std::net::SocketAddr {
    scripted_backend(|mut stream, _| async move {
        stream
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\nstarted")
            .await
            .unwrap();
        let mut chunk = [0u8; 1024];
        while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
    })
    .await
}

#[tokio::test]
async fn a_shutdown_waits_for_a_refusal_body_until_its_deadline() {
    let backend = stalling_refusal().await;
    let (proxy, tunnels) = proxy_to(backend, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 503, "{}", head.text);
    let body = read_at_least(&mut stream, head.rest, 7).await;
    assert_eq!(&body[..7], b"started");

    let grace = Duration::from_millis(500);
    let begun = Instant::now();
    let shutdown = tokio::spawn(tunnels.shutdown(grace));
    // While the body is being relayed, the shutdown waits for it...
    tokio::task::yield_now().await;
    assert!(!shutdown.is_finished(), "the shutdown did not wait");
    // ...until the deadline, which ends the client's response unfinished.
    within("the shutdown", shutdown).await.unwrap();
    assert!(begun.elapsed() >= grace, "ended before the deadline");
    let mut rest = Vec::new();
    within("the connection's end", stream.read_to_end(&mut rest))
        .await
        .unwrap_or_default();
    assert!(
        rest.len() < 93,
        "the body was not cut: {} bytes",
        rest.len()
    );
}

#[tokio::test]
async fn a_refusal_body_that_stalls_for_the_handshake_timeout_is_ended() {
    // As nginx's `proxy_read_timeout`: a backend that starts its refusal
    // body and then sends nothing does not hold the client's connection
    // for ever. It may take the handshake timeout between two reads.
    let backend = stalling_refusal().await;
    let stall = Duration::from_millis(300);
    let (proxy, _) = proxy_to(backend, |l| l.handshake_timeout(stall)).await;
    let (captured, _logging) = Captured::start();
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 503, "{}", head.text);
    let begun = Instant::now();
    let mut rest = head.rest;
    within("the connection's end", stream.read_to_end(&mut rest))
        .await
        .unwrap_or_default();
    assert!(begun.elapsed() >= stall / 2, "ended before the timeout");
    assert!(
        rest.len() < 100,
        "the body was not cut: {} bytes",
        rest.len()
    );
    assert!(
        captured.text().contains("refusal body stalled"),
        "{}",
        captured.text()
    );
}

#[tokio::test]
async fn a_refusal_body_that_keeps_coming_is_not_cut_by_the_stall_timeout() {
    // The limit is on each silence, not on the whole body: ten bytes a
    // quarter of a second apart take longer than the timeout in all.
    let backend = scripted_backend(|mut stream, _| async move {
        stream
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\n")
            .await
            .unwrap();
        for byte in b"0123456789" {
            tokio::time::sleep(Duration::from_millis(250)).await;
            stream.write_all(&[*byte]).await.unwrap();
        }
        let mut chunk = [0u8; 1024];
        while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
    })
    .await;
    let (proxy, _) = proxy_to(backend, |l| l.handshake_timeout(Duration::from_secs(2))).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 503, "{}", head.text);
    assert_eq!(read_body(&mut stream, &head).await, b"0123456789");
}

#[tokio::test]
async fn a_length_given_twice_is_relayed_once_and_a_chunk_without_a_size_is_refused() {
    let backend =
        RawBackend::start("HTTP/1.1 403 Forbidden\r\nContent-Length: 2, 2\r\n\r\nno").await;
    let (proxy, _) = proxy_to(backend.addr, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 403, "{}", head.text);
    assert_eq!(head.header("content-length"), Some("2"), "{}", head.text);
    assert_eq!(read_body(&mut stream, &head).await, b"no");

    // A size line with no size is not the last chunk: the body is broken,
    // and the client's response ends unfinished rather than cut short as
    // if whole.
    let backend = RawBackend::start(
        "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n;ext\r\n\r\nmore",
    )
    .await;
    let (proxy, _) = proxy_to(backend.addr, |l| l).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let mut answer = Vec::new();
    within("the connection's end", stream.read_to_end(&mut answer))
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&answer);
    // hyper ends a chunked response whose body failed without its last
    // chunk: no "0\r\n\r\n" after what was relayed.
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
}
