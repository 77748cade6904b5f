//! `wsproxy::serve::Server` against raw sockets: every state a client
//! connection can sit in is bounded in time, connections are bounded in
//! number with the longest-idle one making room, and one HTTP/2
//! connection cannot make the proxy open backend connections without
//! bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use futures_util::StreamExt;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use wsproxy::admit::Rate;
use wsproxy::serve::{ConnectionLimits, ProxyProtocol, Server, Timeouts};
use wsproxy::{Route, Tunnels, WebSocketProxyLayer};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

/// An app with a plain route and the proxy on `/ws` to `backend`.
fn app(backend: SocketAddr) -> (Router, Tunnels) {
    let layer = WebSocketProxyLayer::new(format!("ws://{backend}").parse().unwrap())
        .route(Route::prefix("/ws"));
    let tunnels = layer.tunnels_handle().clone();
    let app = Router::new()
        .route("/", get(|| async { "plain" }))
        .layer(layer);
    (app, tunnels)
}

/// Long enough never to fire in a test.
const NEVER: Duration = Duration::from_secs(3600);

/// Timeouts that never fire, to change one at a time.
fn quiet() -> Timeouts {
    Timeouts::new()
        .tls_handshake(NEVER)
        .detect(NEVER)
        .request_head(NEVER)
        .keep_alive(NEVER)
        .http2_idle(NEVER)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn a_connection_that_says_nothing_is_closed_after_the_detect_timeout() {
    let backend = Backend::start().await;
    let (app, _) = app(backend.addr);
    let proxy = serve_with(
        app,
        quiet().detect(Duration::from_millis(300)),
        ConnectionLimits::new(),
    )
    .await;
    let start = Instant::now();
    let mut silent = TcpStream::connect(proxy).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    // One that speaks at once is served.
    let mut speaking = raw(proxy, GET).await;
    assert_eq!(read_head(&mut speaking).await.status, 200);
}

#[tokio::test]
async fn a_partial_head_is_closed_after_the_request_head_timeout() {
    let proxy = serve_with(
        Router::new().route("/", get(|| async { "plain" })),
        quiet().request_head(Duration::from_millis(400)),
        ConnectionLimits::new(),
    )
    .await;
    let start = Instant::now();
    let mut half = raw(proxy, b"GET / HTTP/1.1\r\nHost: t\r\n").await;
    assert!(read_to_close(&mut half).await.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_byte_at_a_time_does_not_keep_a_head_alive() {
    let head_timeout = Duration::from_millis(600);
    let proxy = serve_with(
        Router::new().route("/", get(|| async { "plain" })),
        quiet().request_head(head_timeout),
        ConnectionLimits::new(),
    )
    .await;
    // A head that never ends: "X-Pad: aaaa..." one byte every 100 ms. A
    // timer that restarted with every byte would never fire.
    let mut slow = raw(proxy, b"GET / HTTP/1.1\r\nHost: t\r\nX-Pad: ").await;
    let start = Instant::now();
    let mut closed_after = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"a").await.is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut byte)).await
        {
            closed_after = Some(start.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the trickling client was never closed");
    assert!(
        closed_after >= Duration::from_millis(500),
        "{closed_after:?}"
    );
    assert!(closed_after < LIMIT, "{closed_after:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_later_head_is_timed() {
    let keep_alive = Duration::from_millis(400);
    let proxy = serve_with(
        Router::new().route("/", get(|| async { "plain" })),
        quiet().keep_alive(keep_alive),
        ConnectionLimits::new(),
    )
    .await;
    let mut idle = raw(proxy, GET).await;
    let head = read_head(&mut idle).await;
    assert_eq!(head.status, 200);
    let _ = read_body(&mut idle, &head).await;
    let after_response = Instant::now();
    assert!(read_to_close(&mut idle).await.is_empty());
    assert!(after_response.elapsed() >= Duration::from_millis(350));

    // Keep-alive spans several requests while they come in time.
    let mut busy = TcpStream::connect(proxy).await.unwrap();
    for _ in 0..3 {
        busy.write_all(GET).await.unwrap();
        let head = read_head(&mut busy).await;
        assert_eq!(head.status, 200);
        let _ = read_body(&mut busy, &head).await;
    }
}

#[tokio::test]
async fn the_head_of_a_later_request_is_timed_from_its_first_byte() {
    let proxy = serve_with(
        Router::new().route("/", get(|| async { "plain" })),
        quiet().request_head(Duration::from_millis(400)),
        ConnectionLimits::new(),
    )
    .await;
    let mut stream = raw(proxy, GET).await;
    let head = read_head(&mut stream).await;
    let _ = read_body(&mut stream, &head).await;
    // Idle for longer than the head timeout: keep-alive never times out
    // here, and the head's time has not started.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let start = Instant::now();
    assert!(read_to_close(&mut stream).await.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_request_being_answered_is_never_cut() {
    let app = Router::new().route(
        "/",
        get(|| async {
            // Longer than every timeout of the server.
            tokio::time::sleep(Duration::from_millis(800)).await;
            "slow"
        }),
    );
    let short = Duration::from_millis(200);
    let proxy = serve_with(
        app,
        Timeouts::new()
            .detect(short)
            .request_head(short)
            .keep_alive(short)
            .http2_idle(short),
        ConnectionLimits::new(),
    )
    .await;
    let mut stream = raw(proxy, GET).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200);
    assert_eq!(read_body(&mut stream, &head).await, b"slow");
}

/// Serve `server`, connect a client that says nothing, stop the server
/// gracefully and wait until it no longer accepts; then a moment (the
/// stop once closed such a silent connection within 10 ms). The client
/// and the server's task.
async fn connected_just_before_a_stop(
    server: Server<Router>,
) -> (TcpStream, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(tokio::sync::Notify::new());
    let serving = tokio::spawn({
        let (server, stop) = (server.clone(), stop.clone());
        async move {
            server
                .serve(listener)
                .with_graceful_shutdown(async move { stop.notified().await })
                .await
        }
    });
    let client = TcpStream::connect(addr).await.unwrap();
    assert!(wait_until(LIMIT, || server.connections() == 1).await);
    stop.notify_one();
    // The listener is gone once the stop is seen.
    within("the server to stop accepting", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    (client, serving)
}

/// A client that connected just before a graceful stop writes its
/// request just after it: accepted, it is served, not closed under its
/// request (a binary upgrade under load saw such handshakes fail).
#[tokio::test]
async fn a_request_written_just_after_a_graceful_stop_is_served() {
    let backend = Backend::start().await;
    let (app, _) = app(backend.addr);
    let (mut client, serving) =
        connected_just_before_a_stop(Server::new(app).timeouts(quiet())).await;
    client.write_all(GET).await.unwrap();
    let head = read_head(&mut client).await;
    assert_eq!(head.status, 200, "{}", head.text);
    assert_eq!(read_body(&mut client, &head).await, b"plain");
    // Then it is closed, and the server's future resolves.
    read_to_close(&mut client).await;
    within("the server to finish", serving)
        .await
        .unwrap()
        .unwrap();
}

/// With the server shutting its tunnels down too, a handshake written
/// just after the stop on a connection accepted before it becomes a
/// tunnel that the drain closes with 1001 (the client reconnects, as
/// after any drain), not a 503: the drain starts once the connections
/// accepted before the stop were answered.
#[tokio::test]
async fn a_handshake_written_just_after_a_graceful_stop_gets_a_tunnel_then_1001() {
    let backend = Backend::start().await;
    let (app, tunnels) = app(backend.addr);
    let server = Server::new(app)
        .timeouts(quiet())
        .tunnels(tunnels.clone())
        .shutdown_timeout(Duration::from_secs(5));
    let (mut client, serving) = connected_just_before_a_stop(server).await;
    client
        .write_all(handshake("/ws", "").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert_eq!(head.status, 101, "{}", head.text);
    // The drain closes it: Close 1001, answered, then the connection.
    let mut close = head.rest;
    within("the Close frame", async {
        while close.len() < 4 {
            let mut chunk = [0u8; 64];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the Close frame: {close:?}");
            close.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert_eq!(close[0], 0x88, "{close:?}");
    assert_eq!(&close[2..4], &1001u16.to_be_bytes(), "{close:?}");
    // Masked with zeros: the payload as is.
    client
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9])
        .await
        .unwrap();
    read_to_close(&mut client).await;
    within("the server to finish", serving)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tunnels.open(), 0);
}

#[tokio::test]
async fn an_http2_connection_with_no_stream_gets_goaway_after_the_idle_timeout() {
    let proxy = serve_with(
        Router::new().route("/", get(|| async { "plain" })),
        // Detection and heads would close it sooner if they applied.
        quiet()
            .detect(Duration::from_millis(100))
            .request_head(Duration::from_millis(100))
            .http2_idle(Duration::from_millis(500)),
        ConnectionLimits::new(),
    )
    .await;
    let start = Instant::now();
    let mut preface_only = raw(proxy, H2_PREFACE).await;
    let frames = h2_frames(&read_to_close(&mut preface_only).await);
    assert!(frames.iter().any(|&(kind, _)| kind == GOAWAY), "{frames:?}");
    // GOAWAY at 500 ms, closed a second later as the client never closes.
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn an_http2_connection_carrying_a_websocket_is_not_idle() {
    let backend = Backend::start().await;
    let (app, tunnels) = app(backend.addr);
    let idle = Duration::from_millis(300);
    let proxy = serve_with(app, quiet().http2_idle(idle), ConnectionLimits::new()).await;
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, connection) = h2_connection(tcp).await;
    let (_, mut ws) = open(&mut sender, connect_request(proxy, "/ws", &[])).await;
    // Silent for longer than the idle timeout and the grace after a
    // GOAWAY together: the stream is open, so the connection is not idle.
    tokio::time::sleep(idle + Duration::from_millis(1_500)).await;
    assert!(!connection.is_finished());
    echo(&mut ws, Message::text("still here")).await;
    // No GOAWAY either: the connection still takes new streams.
    let plain = http::Request::get(format!("http://{proxy}/"))
        .version(http::Version::HTTP_2)
        .body(http_body_util::Empty::new())
        .unwrap();
    within("ready", sender.ready()).await.unwrap();
    let response = within("plain", sender.send_request(plain)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The WebSocket ends: now the connection is idle, and the server
    // sends GOAWAY (the client still holds its sender, so it is the
    // server that ends the connection).
    drop(ws);
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    // (hyper's client calls a connection closed after GOAWAY an error
    // or not depending on timing: that it ended is what counts.)
    let _ = within("the idle connection to close", connection)
        .await
        .unwrap();
    assert!(sender.ready().await.is_err(), "the connection is gone");
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_closed() {
    let config = Leaf::localhost().server_config();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(Router::new().route("/", get(|| async { "plain" })))
        .timeouts(quiet().tls_handshake(Duration::from_millis(300)))
        .tls(config);
    tokio::spawn(async move { server.serve(listener).await.unwrap() });
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn at_the_bound_the_longest_idle_connection_makes_room() {
    let backend = Backend::start().await;
    let (app, _) = app(backend.addr);
    let proxy = serve_with(app, quiet(), ConnectionLimits::new().max_connections(3)).await;
    let mut oldest = TcpStream::connect(proxy).await.unwrap();
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(proxy).await.unwrap());
    }
    // All three places taken by connections that say nothing, and nobody
    // waiting: nothing is closed.
    for stream in std::iter::once(&mut oldest).chain(idle.iter_mut()) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut byte)).await;
        assert!(read.is_err(), "closed with nobody waiting: {read:?}");
    }
    // A client that speaks is served, and the oldest silent one goes.
    let mut ws = connect(&format!("ws://{proxy}/ws")).await;
    echo(&mut ws, Message::text("served")).await;
    assert!(read_to_close(&mut oldest).await.is_empty());
    // Only that one.
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut byte)).await;
        assert!(read.is_err(), "more than one made room: {read:?}");
    }
}

#[tokio::test]
async fn over_the_per_ip_bound_a_busy_client_gets_no_more_connections() {
    // Each request waits for a permit.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let app = Router::new()
        .route(
            "/",
            get({
                let release = release.clone();
                move || async move {
                    release.acquire().await.unwrap().forget();
                    "released"
                }
            }),
        )
        .route("/quick", get(|| async { "quick" }));
    let proxy = serve_with(
        app,
        quiet(),
        ConnectionLimits::new().max_connections_per_ip(2),
    )
    .await;
    // Two requests in flight: both connections busy.
    let mut busy = Vec::new();
    for _ in 0..2 {
        busy.push(raw(proxy, GET).await);
    }
    // The third has nothing idle to replace: closed at once.
    let mut third = TcpStream::connect(proxy).await.unwrap();
    assert!(read_to_close(&mut third).await.is_empty());
    release.add_permits(2);
    for stream in &mut busy {
        let head = read_head(stream).await;
        assert_eq!(read_body(stream, &head).await, b"released");
    }
    // Both idle now (once each has been read and found quiet): a new
    // connection replaces the longest-idle one; until then new ones are
    // closed.
    let fresh = within("a new connection to be served", async {
        loop {
            let mut fresh = raw(proxy, b"GET /quick HTTP/1.1\r\nHost: t\r\n\r\n").await;
            let mut first = [0u8; 1];
            if let Ok(1) = fresh.read(&mut first).await {
                break fresh;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let closed = within("one idle connection to be closed", async {
        loop {
            for (index, stream) in busy.iter_mut().enumerate() {
                let mut byte = [0u8; 1];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(5), stream.read(&mut byte)).await
                {
                    return index;
                }
            }
        }
    })
    .await;
    assert_eq!(closed, 0, "the longest idle goes first");
    drop(fresh);
}

#[tokio::test]
async fn one_http2_connection_cannot_drive_more_backend_handshakes_than_the_bound() {
    let (backend, accepted) = silent_backend().await;
    let (app, _) = app(backend);
    let proxy = serve_with(
        app,
        quiet(),
        ConnectionLimits::new().http2_max_handshakes(4),
    )
    .await;
    let mut sender = h2(proxy).await;
    within("ready", sender.ready()).await.unwrap();
    let mut pending = Vec::new();
    for _ in 0..20 {
        pending.push(tokio::spawn(sender.send_request(connect_request(
            proxy,
            "/ws",
            &[],
        ))));
    }
    // 16 are refused at once; 4 wait on the silent backend.
    assert!(
        wait_until(LIMIT, || {
            pending.iter().filter(|task| task.is_finished()).count() == 16
                && accepted.load(Ordering::SeqCst) == 4
        })
        .await,
        "{} answered, {} backend connections",
        pending.iter().filter(|task| task.is_finished()).count(),
        accepted.load(Ordering::SeqCst)
    );
    for task in pending.iter_mut().filter(|task| task.is_finished()) {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "1");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "never more than the bound"
    );
    // A plain request on the same connection is not a handshake: served.
    let mut plain = http::Request::get(format!("http://{proxy}/"))
        .version(http::Version::HTTP_2)
        .body(http_body_util::Empty::new())
        .unwrap();
    plain.headers_mut().insert("x", "y".parse().unwrap());
    let response = within("plain", sender.send_request(plain)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn resetting_handshakes_faster_than_allowed_gets_goaway() {
    let (backend, accepted) = silent_backend().await;
    let (app, _) = app(backend);
    let proxy = serve_with(
        app,
        quiet(),
        ConnectionLimits::new().http2_reset_handshakes(Rate::per_minute(1).burst(3)),
    )
    .await;
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, connection) = h2_connection(tcp).await;
    // Open a handshake, wait until it reached the backend, reset it (the
    // response future dropped sends RST_STREAM), again and again.
    let mut opened = 0;
    for _ in 0..50 {
        if sender.ready().await.is_err() {
            break;
        }
        let before = accepted.load(Ordering::SeqCst);
        let mut response = Box::pin(sender.send_request(connect_request(proxy, "/ws", &[])));
        let reached = wait_until(Duration::from_secs(2), || {
            accepted.load(Ordering::SeqCst) > before
        });
        tokio::select! {
            done = &mut response => {
                // Refused because the connection is going away.
                assert!(done.is_err() || done.unwrap().status() != StatusCode::OK);
                break;
            }
            reached = reached => if !reached { break },
        }
        opened += 1;
        // Dropping the response future resets the stream.
        drop(response);
    }
    // The burst of 3 and one over it; never the 50 asked for.
    assert!(
        (4..=6).contains(&opened),
        "{opened} handshakes reached the backend"
    );
    within("the connection to end after GOAWAY", connection)
        .await
        .unwrap()
        .ok();
    assert!(accepted.load(Ordering::SeqCst) <= 6);
}

#[tokio::test]
async fn a_websocket_served_through_the_server_knows_the_client_address() {
    let backend = Backend::start().await;
    let (app, tunnels) = app(backend.addr);
    let proxy = serve_with(app, Timeouts::new(), ConnectionLimits::new()).await;
    let mut ws = connect(&format!("ws://{proxy}/ws")).await;
    echo(&mut ws, Message::text("hi")).await;
    let headers = backend.last_headers();
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
}

/// An HTTP/2 frame: type, flags, stream and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// HEADERS of an extended CONNECT for a WebSocket on `/ws`, in HPACK
/// literals (no indexing, no Huffman).
fn extended_connect_headers(stream: u32) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":path", "/ws"),
        (":authority", "proxy.test"),
        ("sec-websocket-version", "13"),
    ] {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    // HEADERS with END_HEADERS.
    h2_frame(0x1, 0x4, stream, &block)
}

#[tokio::test]
async fn a_client_that_ignores_goaway_for_its_resets_is_closed() {
    let (backend, accepted) = silent_backend().await;
    let (app, _) = app(backend);
    let proxy = serve_with(
        app,
        quiet(),
        ConnectionLimits::new().http2_reset_handshakes(Rate::per_minute(1).burst(2)),
    )
    .await;
    // A raw client: the preface, an empty SETTINGS and the ACK of the
    // server's, and from then on it never answers anything — not the
    // PING a graceful GOAWAY waits for.
    let mut client = TcpStream::connect(proxy).await.unwrap();
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(0x4, 0x1, 0, &[]));
    client.write_all(&hello).await.unwrap();
    let mut opened = 0;
    for stream in (1u32..).step_by(2).take(10) {
        let before = accepted.load(Ordering::SeqCst);
        if client
            .write_all(&extended_connect_headers(stream))
            .await
            .is_err()
        {
            break;
        }
        if !wait_until(Duration::from_secs(2), || {
            accepted.load(Ordering::SeqCst) > before
        })
        .await
        {
            break;
        }
        opened += 1;
        // RST_STREAM, CANCEL.
        if client
            .write_all(&h2_frame(0x3, 0, stream, &8u32.to_be_bytes()))
            .await
            .is_err()
        {
            break;
        }
    }
    // The burst of 2, one over it (which sends GOAWAY), and perhaps one
    // more that started before its stream task saw the last reset; then
    // every handshake is refused at once. Never the 10 asked for.
    assert!(
        (3..=5).contains(&opened),
        "{opened} handshakes reached the backend"
    );
    // GOAWAY, then closed by the server although the client never
    // answers.
    let frames = h2_frames(&read_to_close(&mut client).await);
    assert!(frames.iter().any(|&(kind, _)| kind == GOAWAY), "{frames:?}");
}

/// The PROXY protocol: a v1 or v2 header's source is the client for the
/// backend's forwarding headers and for the per-IP bound, though every
/// connection comes from the one balancer (127.0.0.1 here).
#[tokio::test]
async fn a_proxy_header_names_the_client_for_forwarding_and_limits() {
    let backend = Backend::start().await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let layer = WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
        .route(Route::prefix("/ws"));
    let app = Router::new()
        .route(
            "/",
            get({
                let (release, entered) = (release.clone(), entered.clone());
                move || async move {
                    entered.fetch_add(1, Ordering::SeqCst);
                    release.acquire().await.unwrap().forget();
                    "released"
                }
            }),
        )
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let server = Server::new(app)
        .timeouts(quiet())
        .limits(ConnectionLimits::new().max_connections_per_ip(1))
        .proxy_protocol(ProxyProtocol::new());
    tokio::spawn(async move { server.serve(listener).await.unwrap() });

    let v4: SocketAddr = "203.0.113.7:51000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::7]:51000".parse().unwrap();
    for (header, expected) in [
        (proxy_v1(v4), "203.0.113.7"),
        (proxy_v2(v4), "203.0.113.7"),
        (proxy_v1(v6), "2001:db8::7"),
        (proxy_v2(v6), "2001:db8::7"),
    ] {
        let mut sent = header;
        sent.extend_from_slice(handshake("/ws", "").as_bytes());
        let mut stream = raw(proxy, &sent).await;
        assert_eq!(read_head(&mut stream).await.status, 101);
        assert_eq!(backend.last_headers()["x-forwarded-for"], expected);
    }
    // One busy connection for 198.51.100.1: a second one for it is
    // closed, one for another client is served.
    let client = |ip: &str| {
        let mut bytes = proxy_v1(format!("{ip}:1000").parse().unwrap());
        bytes.extend_from_slice(GET);
        bytes
    };
    let mut busy = raw(proxy, &client("198.51.100.1")).await;
    // Its request reached the app (is in flight) before the next one.
    assert!(wait_until(LIMIT, || entered.load(Ordering::SeqCst) == 1).await);
    let mut other = raw(proxy, &client("198.51.100.2")).await;
    let mut second = raw(proxy, &client("198.51.100.1")).await;
    assert!(read_to_close(&mut second).await.is_empty());
    release.add_permits(2);
    for stream in [&mut busy, &mut other] {
        let head = read_head(stream).await;
        assert_eq!(read_body(stream, &head).await, b"released");
    }
}

/// What is refused on a PROXY listener: no header (an ordinary request),
/// a malformed one, one from a peer not allowed to send one; and a
/// listener without the protocol takes a header for a bad request.
#[tokio::test]
async fn proxy_headers_only_where_enabled_and_from_whom_allowed() {
    let backend = Backend::start().await;
    let serve_pp = |pp: Option<ProxyProtocol>| {
        let (app, _) = app(backend.addr);
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut server = Server::new(app).timeouts(quiet());
            if let Some(pp) = pp {
                server = server.proxy_protocol(pp);
            }
            tokio::spawn(async move { server.serve(listener).await.unwrap() });
            addr
        }
    };
    let with = serve_pp(Some(ProxyProtocol::new())).await;
    let mut plain = raw(with, GET).await;
    assert!(read_to_close(&mut plain).await.is_empty());
    let mut bad = raw(
        with,
        b"PROXY TCP4 1.2.3.999 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(read_to_close(&mut bad).await.is_empty());
    // The same header from an allowed peer is served.
    let mut sent = proxy_v1("203.0.113.7:5".parse().unwrap());
    sent.extend_from_slice(GET);
    let mut good = raw(with, &sent).await;
    assert_eq!(read_head(&mut good).await.status, 200);

    let elsewhere = serve_pp(Some(
        ProxyProtocol::new().allow_from(["10.0.0.0/8".parse().unwrap()]),
    ))
    .await;
    let mut stranger = raw(elsewhere, &sent).await;
    assert!(read_to_close(&mut stranger).await.is_empty());

    let without = serve_pp(None).await;
    let mut header = raw(without, &sent).await;
    assert_eq!(read_head(&mut header).await.status, 400);
}

/// The settings in the first frame a server sends on an HTTP/2
/// connection (its SETTINGS), by identifier.
async fn server_settings(addr: SocketAddr) -> std::collections::HashMap<u16, u32> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(H2_PREFACE).await.unwrap();
    let mut head = [0u8; 9];
    within("the server's SETTINGS", tcp.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(head[3], 0x4, "a SETTINGS frame first: {head:?}");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    within("the settings", tcp.read_exact(&mut payload))
        .await
        .unwrap();
    payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}

#[tokio::test]
async fn http2_settings_allow_websockets_bounded_windows_and_64_kib_frames() {
    // SETTINGS_ENABLE_CONNECT_PROTOCOL (0x8), INITIAL_WINDOW_SIZE (0x4),
    // MAX_FRAME_SIZE (0x5): the server and hyper-util's builder alike.
    let expected = [
        (0x8, 1),
        (0x4, wsproxy::HTTP2_STREAM_WINDOW),
        (0x5, wsproxy::HTTP2_MAX_FRAME_SIZE),
    ];
    let proxy = serve_with(Router::new(), quiet(), ConnectionLimits::new()).await;
    let settings = server_settings(proxy).await;
    for (id, value) in expected {
        assert_eq!(settings.get(&id), Some(&value), "{id:#x}: {settings:?}");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|_| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });
        let _ = wsproxy::serve::http_builder(hyper_util::rt::TokioExecutor::new())
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tcp), service)
            .await;
    });
    let settings = server_settings(addr).await;
    for (id, value) in expected {
        assert_eq!(settings.get(&id), Some(&value), "{id:#x}: {settings:?}");
    }
}
