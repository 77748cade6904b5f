//! The `wsgate` binary as a user runs it: flags, the demo, TLS and
//! HTTP/2, and SIGTERM.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use wsproxy_test_support::{
    Backend, BackendOptions, LIMIT, Leaf, PemFiles, TlsBackend, WsClient, closed_port,
    connect_with, echo, echo_backend, extended_connect, h2_client, h2_get, handshake, open, raw,
    read_head, silent_backend, stalled_backend,
};

use support::{Gateway, opened, refused, tls_flags};

/// Open a WebSocket through the gateway.
async fn connect(addr: SocketAddr, path: &str) -> WsClient {
    wsproxy_test_support::connect(&format!("ws://{addr}{path}")).await
}

/// The next message, within [`LIMIT`].
async fn next<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    timeout(LIMIT, ws.next())
        .await
        .expect("a message in time")
        .expect("the tunnel is open")
        .expect("a valid message")
}

/// Read messages until `text` arrives.
async fn hear(ws: &mut WsClient, text: &str) {
    while next(ws).await != Message::text(text) {}
}

/// A plain HTTP/1.1 GET; the whole response as text.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut http = timeout(LIMIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    http.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    timeout(LIMIT, http.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

#[test]
fn bad_flags_exit_with_a_clear_message() {
    let stderr = refused(&["--route", "echo"]);
    assert!(
        stderr.contains("invalid route 'echo': expected PREFIX=ws://HOST:PORT/PATH"),
        "{stderr}"
    );
    let stderr = refused(&["--route", "/echo=http://127.0.0.1:1"]);
    assert!(stderr.contains("the scheme must be ws://"), "{stderr}");
    let stderr = refused(&[
        "--route",
        "/a=ws://127.0.0.1:1",
        "--connect-timeout",
        "soon",
    ]);
    assert!(stderr.contains("invalid duration 'soon'"), "{stderr}");
    let stderr = refused(&["--route", "chat=ws://127.0.0.1:1"]);
    assert!(stderr.contains("must start with '/'"), "{stderr}");
    let stderr = refused(&["--route", "/a=ws://127.0.0.1:1", "--idle-timeout", "10"]);
    assert!(stderr.contains("invalid duration '10'"), "{stderr}");
    let stderr = refused(&[
        "--route",
        "/a=ws://127.0.0.1:1",
        "--route",
        "/a/=ws://127.0.0.1:2",
    ]);
    assert!(stderr.contains("two routes claim the prefix"), "{stderr}");
    let stderr = refused(&["--demo", "--route", "/echo=ws://127.0.0.1:1"]);
    assert!(
        stderr.contains("two routes claim the prefix '/echo'"),
        "{stderr}"
    );
    let stderr = refused(&[]);
    assert!(stderr.contains("no route"), "{stderr}");
}

#[tokio::test]
async fn demo_echoes_chats_and_serves_a_page() {
    let gateway = Gateway::start(&["--demo"]);
    let addr = gateway.addr;

    let mut echo = connect(addr, "/echo").await;
    echo.send(Message::text("ping me")).await.unwrap();
    assert_eq!(next(&mut echo).await, Message::text("ping me"));
    echo.send(Message::binary(vec![0, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut echo).await, Message::binary(vec![0, 1, 2, 255]));

    let mut alice = connect(addr, "/chat").await;
    let mut bob = connect(addr, "/chat").await;
    // Each is subscribed to the room once it has heard its own message.
    alice.send(Message::text("alice here")).await.unwrap();
    hear(&mut alice, "alice here").await;
    bob.send(Message::text("bob here")).await.unwrap();
    hear(&mut bob, "bob here").await;
    alice.send(Message::text("hi bob")).await.unwrap();
    hear(&mut bob, "hi bob").await;
    bob.send(Message::text("hi alice")).await.unwrap();
    hear(&mut alice, "hi alice").await;

    let page = get(addr, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{page}"
    );
    // The demo client and the counts; the routes' backends are the admin
    // listener's to show.
    assert!(
        page.contains("send to /echo")
            && page.contains("Open tunnels: 3")
            && page.contains("<script>"),
        "{page}"
    );
    let health = get(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
}

#[tokio::test]
async fn sigterm_sends_open_tunnels_close_1001_and_exits() {
    let gateway = Gateway::start(&["--demo", "--shutdown-timeout", "30s"]);
    let mut ws = connect(gateway.addr, "/echo").await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("x"));

    terminate_expecting_1001(gateway, &mut ws).await;
}

/// SIGTERM `gateway` (started with `--shutdown-timeout 30s`): `ws` hears
/// Close 1001 "going away", answers it (tungstenite does while reading),
/// its stream ends, and the process exits 0 well before the deadline.
async fn terminate_expecting_1001<S>(mut gateway: Gateway, ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    gateway.terminate();
    match next(ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    let ended = timeout(LIMIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "the tunnel must be closed");
    let status = tokio::task::spawn_blocking(move || gateway.wait_exit(LIMIT))
        .await
        .unwrap()
        .expect("wsgate exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn keepalive_and_limit_flags_reach_the_layer() {
    let gateway = Gateway::start(&[
        "--demo",
        "--max-message",
        "1KiB",
        "--client-ping",
        "200ms",
        "--message-rate",
        "1/m",
        "--message-burst",
        "1",
    ]);
    let mut ws = connect(gateway.addr, "/echo").await;
    // Pinged while idle...
    let ping = next(&mut ws).await;
    assert!(
        matches!(&ping, Message::Ping(p) if p.len() == 8),
        "{ping:?}"
    );
    // ...and a message over 1 KiB is refused with 1009.
    ws.send(Message::binary(vec![0u8; 1025])).await.unwrap();
    loop {
        match next(&mut ws).await {
            Message::Ping(_) => continue,
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1009);
                break;
            }
            other => panic!("expected Close 1009, got {other:?}"),
        }
    }
    // Two messages at once are within --message-rate 1/m with a burst of
    // one; the third is refused with 1008.
    let mut ws = connect(gateway.addr, "/echo").await;
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.unwrap();
        loop {
            match next(&mut ws).await {
                Message::Ping(_) => continue,
                echoed => {
                    assert_eq!(echoed, Message::text(text));
                    break;
                }
            }
        }
    }
    ws.send(Message::text("three")).await.unwrap();
    loop {
        match next(&mut ws).await {
            Message::Ping(_) => continue,
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008);
                break;
            }
            other => panic!("expected Close 1008, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn sigterm_does_not_wait_past_the_deadline_for_a_stuck_request() {
    // One worker: the stuck connection is accepted and read before the
    // health check on the same runtime is answered.
    let mut gateway = Gateway::start(&["--demo", "--shutdown-timeout", "1s", "--workers", "1"]);
    // A request whose head never ends keeps its HTTP connection busy.
    let mut stuck = timeout(LIMIT, TcpStream::connect(gateway.addr))
        .await
        .unwrap()
        .unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        get(gateway.addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let start = Instant::now();
    gateway.terminate();
    let status = tokio::task::spawn_blocking(move || gateway.wait_exit(LIMIT))
        .await
        .unwrap()
        .expect("wsgate exits after SIGTERM");
    assert!(status.success(), "{status}");
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    drop(stuck);
}

/// The status line of a raw WebSocket handshake to `path` with extra
/// header lines.
async fn handshake_status(addr: SocketAddr, path: &str, extra: &str) -> String {
    let mut stream = raw(addr, handshake(path, extra).as_bytes()).await;
    read_head(&mut stream).await.text[..12].to_owned()
}

#[tokio::test]
async fn admission_flags_reach_the_layers() {
    let gateway = Gateway::start(&[
        "--demo",
        "--origin",
        "https://*.ok.example",
        "--allow-missing-origin",
        "--max-conns",
        "1",
        "--rate-per-ip",
        "1/m",
        "--burst",
        "2",
    ]);
    let addr = gateway.addr;
    // An origin off the list: 403, before any limit is counted.
    assert_eq!(
        handshake_status(addr, "/echo", "Origin: https://evil.example\r\n").await,
        "HTTP/1.1 403"
    );
    // No Origin is allowed; one open WebSocket is the limit.
    let _open = connect(addr, "/echo").await;
    assert_eq!(
        handshake_status(addr, "/echo", "Origin: https://a.ok.example\r\n").await,
        "HTTP/1.1 503"
    );
    assert_eq!(handshake_status(addr, "/echo", "").await, "HTTP/1.1 503");
    // The rate (3 at once, then 1 a minute) has run out now.
    assert_eq!(handshake_status(addr, "/echo", "").await, "HTTP/1.1 429");
    // The status page is not a handshake: never limited.
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
}

#[test]
fn bad_balancing_flags_exit_with_a_clear_message() {
    let route = |list: &str| format!("/={list}");
    let stderr = refused(&["--route", &route("ws://127.0.0.1:1/;colour=red")]);
    assert!(
        stderr.contains(
            "unknown backend option 'colour=red' in 'ws://127.0.0.1:1/;colour=red'; \
             use weight=N, max-conns=N or backup"
        ),
        "{stderr}"
    );
    let stderr = refused(&["--route", &route("ws://127.0.0.1:1;weight=0")]);
    assert!(
        stderr.contains("invalid option 'weight=0' in 'ws://127.0.0.1:1;weight=0'"),
        "{stderr}"
    );
    let stderr = refused(&["--route", &route("ws://127.0.0.1:1,http://127.0.0.1:2")]);
    assert!(stderr.contains("the scheme must be ws://"), "{stderr}");
    let stderr = refused(&["--route", &route("ws://127.0.0.1:1/,ws://127.0.0.1:1/")]);
    assert!(
        stderr.contains("the backend 'ws://127.0.0.1:1/' is listed twice"),
        "{stderr}"
    );
    let ok = route("ws://127.0.0.1:1");
    for (flags, message) in [
        (
            &["--balance", "random"][..],
            "invalid balance 'random'; use round-robin",
        ),
        (
            &["--balance", "hash:header=a b"],
            "'a b' is not a valid header name",
        ),
        (
            &["--hash-bound", "1.5"],
            "--hash-bound needs a hash strategy",
        ),
        (
            &["--balance", "hash:ip", "--hash-bound", "0.5"],
            "invalid factor '0.5'",
        ),
        (&["--tries", "0"], "invalid tries '0'"),
        (&["--sticky-cookie", "a b"], "invalid cookie name 'a b'"),
        (&["--fail-timeout", "soon"], "invalid duration 'soon'"),
        (
            &["--health-check", "http:healthz"],
            "the path must start with '/'",
        ),
        (&["--health-check", "udp"], "invalid health check 'udp'"),
        (&["--health-interval", "1s"], "--health-check <CHECK>"),
        (
            &["--health-check", "tcp", "--health-fall", "0"],
            "--health-fall",
        ),
    ] {
        let stderr = refused(&[&["--route", &ok][..], flags].concat());
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
    }
}

/// How a backend named `name` answers: every text message comes back
/// with its name, `:`, and the message.
fn named(name: &'static str) -> BackendOptions {
    BackendOptions {
        echo_name: Some(name),
        ..Default::default()
    }
}

/// The name of the backend that answers on `ws`.
async fn answered_by(ws: &mut WsClient) -> String {
    ws.send(Message::text("who")).await.unwrap();
    let Message::Text(text) = next(ws).await else {
        panic!("expected a text answer");
    };
    text.as_str()
        .strip_suffix(":who")
        .unwrap_or_else(|| panic!("unexpected answer {text:?}"))
        .to_owned()
}

/// The status page's table row of the backend at `url`.
fn row<'p>(page: &'p str, url: &str) -> &'p str {
    let cell = format!("<tr><td><code>{url}</code></td>");
    page.lines()
        .find(|line| line.starts_with(&cell))
        .unwrap_or_else(|| panic!("no row for {url}: {page}"))
}

/// The row of a primary backend of weight 1 with `open` tunnels, `health`
/// and not draining, up to the transitions.
fn primary(url: &str, open: usize, health: &str) -> String {
    format!(
        "<tr><td><code>{url}</code></td><td>primary</td><td>1</td><td>{open}</td>\
         <td>{health}</td><td>no</td>"
    )
}

#[tokio::test]
async fn round_robin_spreads_websockets_over_the_backends() {
    let a = Backend::with(named("a")).await;
    let b = Backend::with(named("b")).await;
    let gateway = Gateway::start(&[
        "--route",
        &format!("/={},{}", a.url(), b.url()),
        "--balance",
        "round-robin",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = gateway.admin_addr();
    let mut open = Vec::new();
    let mut counts = BTreeMap::new();
    for _ in 0..10 {
        let mut ws = connect(gateway.addr, "/").await;
        *counts.entry(answered_by(&mut ws).await).or_insert(0) += 1;
        open.push(ws);
    }
    assert_eq!(counts, BTreeMap::from([("a".into(), 5), ("b".into(), 5)]));
    // The status page shows both, each holding five open tunnels; the
    // public listener shows only the counts.
    let public = get(gateway.addr, "/").await;
    assert!(public.contains("Open tunnels: 10"), "{public}");
    assert!(
        !public.contains(&a.url()) && !public.contains("Balancing"),
        "{public}"
    );
    let page = get(admin, "/").await;
    assert!(page.contains("Balancing: round-robin"), "{page}");
    assert!(page.contains("Open tunnels: 10"), "{page}");
    for backend in [&a, &b] {
        let row = row(&page, &backend.url());
        assert!(row.starts_with(&primary(&backend.url(), 5, "up")), "{row}");
    }
}

/// The status line of a WebSocket handshake through the gateway to `/`.
async fn status_of_handshake(addr: SocketAddr) -> String {
    handshake_status(addr, "/", "").await
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_another_backend() {
    // The closed port comes first, so round-robin picks it first.
    let (_port, dead) = closed_port();
    let dead = format!("ws://{dead}/");
    let live = Backend::with(named("live")).await;
    let routes = format!("/={dead},{}", live.url());
    let gateway = Gateway::start(&["--route", &routes, "--admin-listen", "127.0.0.1:0"]);
    let admin = gateway.admin_addr();
    let mut open = Vec::new();
    for _ in 0..6 {
        let mut ws = connect(gateway.addr, "/").await;
        assert_eq!(answered_by(&mut ws).await, "live");
        open.push(ws);
    }
    // The refused connect took the dead backend out (max-fails 1).
    let page = get(admin, "/").await;
    let dead_row = row(&page, &dead);
    assert!(
        dead_row.starts_with(&primary(&dead, 0, "down")),
        "{dead_row}"
    );
    let live_row = row(&page, &live.url());
    assert!(
        live_row.starts_with(&primary(&live.url(), 6, "up")),
        "{live_row}"
    );
    drop((open, gateway));

    // With one try and no passive checks, every other handshake goes to
    // the closed port and fails.
    let gateway = Gateway::start(&["--route", &routes, "--tries", "1", "--max-fails", "0"]);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(status_of_handshake(gateway.addr).await);
    }
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 502",
            "HTTP/1.1 101",
            "HTTP/1.1 502",
            "HTTP/1.1 101"
        ]
    );
}

/// Open a WebSocket through the gateway as if forwarded for `client`.
async fn connect_for(addr: SocketAddr, client: &str) -> WsClient {
    connect_with(&format!("ws://{addr}/"), &[("x-forwarded-for", client)])
        .await
        .0
}

#[tokio::test]
async fn hashing_on_the_client_ip_keeps_each_client_on_one_backend() {
    let a = Backend::with(named("a")).await;
    let b = Backend::with(named("b")).await;
    let gateway = Gateway::start(&[
        "--route",
        &format!("/={},{}", a.url(), b.url()),
        "--balance",
        "hash:ip",
        "--trusted-proxy",
        "127.0.0.1/32",
    ]);
    let mut used = BTreeSet::new();
    for i in 1..=20 {
        let client = format!("10.0.0.{i}");
        let first = answered_by(&mut connect_for(gateway.addr, &client).await).await;
        let again = answered_by(&mut connect_for(gateway.addr, &client).await).await;
        assert_eq!(first, again, "client {client} moved");
        used.insert(first);
    }
    // Twenty clients on one backend: 1 in 500,000 by chance.
    assert_eq!(used.len(), 2, "{used:?}");
}

#[tokio::test]
async fn a_backend_failing_its_probes_is_taken_out_and_its_tunnels_closed() {
    let (a, accept_a) = Backend::stoppable(named("a")).await;
    let b = Backend::with(named("b")).await;
    let gateway = Gateway::start(&[
        "--route",
        &format!("/={},{}", a.url(), b.url()),
        "--health-check",
        "ws:/",
        "--health-interval",
        "100ms",
        "--health-timeout",
        "1s",
        "--health-rise",
        "1",
        "--health-fall",
        "1",
        "--admin-listen",
        "127.0.0.1:0",
        "--close-tunnels-when-down",
        "1s",
        // Only the probes may take a backend out, and nothing is retried.
        "--max-fails",
        "0",
        "--tries",
        "1",
    ]);
    let mut on_a = connect(gateway.addr, "/").await;
    assert_eq!(answered_by(&mut on_a).await, "a");

    // Its listening socket closes (new connects are refused); open
    // WebSockets stay.
    accept_a.abort();
    let _ = accept_a.await;
    // The next probe is refused: `a` is down and its tunnel gets 1001.
    match next(&mut on_a).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    let page = get(gateway.admin_addr(), "/").await;
    let a_row = row(&page, &a.url());
    assert!(a_row.contains("<td>down</td>"), "{a_row}");
    for _ in 0..4 {
        let mut ws = connect(gateway.addr, "/").await;
        assert_eq!(answered_by(&mut ws).await, "b");
    }
}

#[tokio::test]
async fn tls_serves_wss_and_https_over_http2_or_http1_by_alpn() {
    let cert = Leaf::localhost();
    let mut args = vec!["--demo"];
    args.extend(tls_flags(&cert));
    let gateway = Gateway::start(&args);
    let addr = gateway.addr;
    let authority = format!("localhost:{}", addr.port());

    // wss:// over HTTP/1.1, as tungstenite speaks it.
    let tls = cert.connect(addr, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut ws, response) = timeout(
        LIMIT,
        tokio_tungstenite::client_async(format!("wss://{authority}/echo"), tls),
    )
    .await
    .unwrap()
    .expect("a WebSocket over TLS");
    assert_eq!(response.status(), 101);
    echo(&mut ws, Message::text("over TLS")).await;
    ws.send(Message::binary(vec![0, 1, 2, 255])).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0, 1, 2, 255]));

    // A client offering h2 gets it: the page and /healthz over HTTP/2...
    let tls = cert.connect(addr, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_client(tls).await;
    let (status, body) = h2_get(&mut h2, &authority, "https", "/healthz").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"));
    let (status, page) = h2_get(&mut h2, &authority, "https", "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("send to /echo"), "{page}");
    assert_eq!(opened(&page), (1, 0), "{page}");

    // ...and WebSockets over HTTP/2 streams of that connection (RFC 8441).
    let mut first = open(
        &mut h2,
        extended_connect(&format!("https://{authority}/echo"), &[]),
    )
    .await
    .1;
    let mut second = open(
        &mut h2,
        extended_connect(&format!("https://{authority}/echo"), &[]),
    )
    .await
    .1;
    echo(&mut first, Message::text("first stream")).await;
    echo(&mut second, Message::text("second stream")).await;
    let (_, page) = h2_get(&mut h2, &authority, "https", "/").await;
    assert_eq!(opened(&page), (3, 2), "{page}");
    assert!(page.contains("Open tunnels: 3"), "{page}");

    // A client without ALPN speaks HTTP/1.1.
    let mut tls = cert.connect(addr, &[]).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    timeout(LIMIT, tls.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
}

#[tokio::test]
async fn a_stalled_tls_handshake_does_not_hold_up_others() {
    let cert = Leaf::localhost();
    let mut args = vec!["--demo", "--workers", "1"];
    args.extend(tls_flags(&cert));
    let gateway = Gateway::start(&args);
    // Connections that never say hello, and one that is not TLS at all.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(gateway.addr).await.unwrap());
    }
    let mut plain = TcpStream::connect(gateway.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The plain one is dropped (no TLS record: an alert, then EOF)...
    let mut answer = Vec::new();
    let _ = timeout(LIMIT, plain.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    // ...and a real client is served meanwhile.
    let tls = cert.connect(gateway.addr, &[b"http/1.1"]).await;
    let (mut ws, _) = timeout(
        LIMIT,
        tokio_tungstenite::client_async(
            format!("wss://localhost:{}/echo", gateway.addr.port()),
            tls,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    echo(&mut ws, Message::text("not blocked")).await;
    drop(silent);
}

#[tokio::test]
async fn h2c_with_prior_knowledge_serves_the_page_and_websockets() {
    let gateway = Gateway::start(&["--demo"]);
    let addr = gateway.addr;
    let tcp = timeout(LIMIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut h2 = h2_client(tcp).await;
    let authority = addr.to_string();
    let (status, body) = h2_get(&mut h2, &authority, "http", "/healthz").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"));
    let (status, page) = h2_get(&mut h2, &authority, "http", "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("send to /echo"), "{page}");

    let mut ws = open(
        &mut h2,
        extended_connect(&format!("http://{authority}/echo"), &[]),
    )
    .await
    .1;
    echo(&mut ws, Message::text("over h2c")).await;
    let (_, page) = h2_get(&mut h2, &authority, "http", "/").await;
    assert_eq!(opened(&page), (1, 1), "{page}");
}

#[test]
fn bad_tls_files_exit_with_a_clear_message() {
    let cert = Leaf::localhost();
    let files = cert.files();
    let (cert_file, key_file) = (PemFiles::arg(&files.cert), PemFiles::arg(&files.key));
    let stderr = refused(&["--demo", "--tls-cert", cert_file]);
    assert!(
        stderr.contains("required") && stderr.contains("--tls-key"),
        "{stderr}"
    );
    let stderr = refused(&["--demo", "--tls-key", key_file]);
    assert!(
        stderr.contains("required") && stderr.contains("--tls-cert"),
        "{stderr}"
    );

    let missing = cert.files().file("missing.pem");
    let missing = PemFiles::arg(&missing);
    let stderr = refused(&["--demo", "--tls-cert", missing, "--tls-key", key_file]);
    assert!(
        stderr.contains("--tls-cert")
            && stderr.contains(&format!("from '{missing}'"))
            && stderr.contains("No such file"),
        "{stderr}"
    );
    let garbage = cert.files().file("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let garbage = PemFiles::arg(&garbage);
    let stderr = refused(&["--demo", "--tls-cert", garbage, "--tls-key", key_file]);
    assert!(
        stderr.contains(&format!("certificate from '{garbage}'"))
            && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
    // The two files swapped.
    let stderr = refused(&["--demo", "--tls-cert", key_file, "--tls-key", cert_file]);
    assert!(
        stderr.contains(&format!("certificate from '{key_file}'"))
            && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
    let stderr = refused(&["--demo", "--tls-cert", cert_file, "--tls-key", cert_file]);
    assert!(
        stderr.contains(&format!("private key from '{cert_file}'"))
            && stderr.contains("no PEM private key"),
        "{stderr}"
    );
    let stderr = refused(&["--demo", "--tls-cert", cert_file, "--tls-key", missing]);
    assert!(
        stderr.contains(&format!("private key from '{missing}'")),
        "{stderr}"
    );
    // A key of another certificate.
    let other = Leaf::localhost();
    let stderr = refused(&[
        "--demo",
        "--tls-cert",
        cert_file,
        "--tls-key",
        PemFiles::arg(&other.files().key),
    ]);
    assert!(
        stderr.contains(&format!(
            "cannot use the certificate '{cert_file}' with the key '{}'",
            other.files().key.display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_closes_websockets_over_http2_with_1001_and_exits() {
    let cert = Leaf::localhost();
    let mut args = vec!["--demo", "--shutdown-timeout", "30s"];
    args.extend(tls_flags(&cert));
    let gateway = Gateway::start(&args);
    let tls = cert.connect(gateway.addr, &[b"h2"]).await;
    let mut h2 = h2_client(tls).await;
    let uri = format!("https://localhost:{}/echo", gateway.addr.port());
    let mut ws = open(&mut h2, extended_connect(&uri, &[])).await.1;
    echo(&mut ws, Message::text("x")).await;

    // Over HTTP/2 the same: the connection's GOAWAY lets the stream end.
    terminate_expecting_1001(gateway, &mut ws).await;
}

#[tokio::test]
async fn backend_tls_flags_reach_wss_backends() {
    // Backends reached by address whose certificate names a service, and
    // one of them wants a client certificate.
    let server = Leaf::for_names(&["backend.test"]);
    let client = Leaf::localhost();
    let open = TlsBackend::start(&server, None).await;
    let mutual = TlsBackend::start(&server, Some(&client.ca)).await;
    let routes = [
        "--route".to_owned(),
        format!("/open=wss://127.0.0.1:{}", open.addr.port()),
        "--route".to_owned(),
        format!("/mutual=wss://127.0.0.1:{}", mutual.addr.port()),
    ];
    let start = |flags: &[&str]| {
        let mut args: Vec<&str> = routes.iter().map(String::as_str).collect();
        args.extend(flags);
        Gateway::start(&args)
    };
    let ca = PemFiles::arg(&server.files().ca);

    let gateway = start(&[
        "--backend-ca",
        ca,
        "--backend-sni",
        "backend.test",
        "--backend-cert",
        PemFiles::arg(&client.files().cert),
        "--backend-key",
        PemFiles::arg(&client.files().key),
    ]);
    for path in ["/open", "/mutual"] {
        let mut ws = connect(gateway.addr, path).await;
        echo(&mut ws, Message::text(path)).await;
    }

    // Without the client certificate the mutual one refuses: 502.
    let gateway = start(&["--backend-ca", ca, "--backend-sni", "backend.test"]);
    echo(
        &mut connect(gateway.addr, "/open").await,
        Message::text("still open"),
    )
    .await;
    assert_eq!(
        handshake_status(gateway.addr, "/mutual", "").await,
        "HTTP/1.1 502"
    );
    // Checked against the URL's host (127.0.0.1), the certificate is for
    // another name; with Mozilla's roots, its CA is unknown.
    let gateway = start(&["--backend-ca", ca]);
    assert_eq!(
        handshake_status(gateway.addr, "/open", "").await,
        "HTTP/1.1 502"
    );
    let gateway = start(&["--backend-sni", "backend.test"]);
    assert_eq!(
        handshake_status(gateway.addr, "/open", "").await,
        "HTTP/1.1 502"
    );
}

#[test]
fn bad_backend_tls_flags_exit_with_a_clear_message() {
    let cert = Leaf::localhost();
    let route = ["--route", "/a=wss://127.0.0.1:1"];
    let with = |flags: &[&str]| {
        let mut args = route.to_vec();
        args.extend(flags);
        refused(&args)
    };
    let missing = cert.files().file("missing.pem");
    let missing = PemFiles::arg(&missing);
    let stderr = with(&["--backend-ca", missing]);
    assert!(
        stderr.contains("--backend-ca: ") && stderr.contains(missing),
        "{stderr}"
    );
    let key = PemFiles::arg(&cert.files().key);
    let stderr = with(&["--backend-ca", key]);
    assert!(
        stderr.contains("--backend-ca: ") && stderr.contains(key),
        "{stderr}"
    );
    let stderr = with(&["--backend-sni", "not a name!"]);
    assert!(stderr.contains("--backend-sni: "), "{stderr}");
    let stderr = with(&["--backend-cert", PemFiles::arg(&cert.files().cert)]);
    assert!(stderr.contains("--backend-key"), "{stderr}");
    let other = Leaf::localhost();
    let stderr = with(&[
        "--backend-cert",
        PemFiles::arg(&cert.files().cert),
        "--backend-key",
        PemFiles::arg(&other.files().key),
    ]);
    assert!(
        stderr.contains("--backend-cert/--backend-key: "),
        "{stderr}"
    );
}

#[tokio::test]
async fn backends_hear_https_only_for_tls_clients() {
    let backend = Backend::start().await;
    let route = format!("/p=ws://{}", backend.addr);
    let cert = Leaf::localhost();
    let mut args = vec!["--route", route.as_str()];
    args.extend(tls_flags(&cert));
    let tls_gateway = Gateway::start(&args);
    let tls = cert.connect(tls_gateway.addr, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/p", tls_gateway.addr.port());
    let (_ws, _) = timeout(LIMIT, tokio_tungstenite::client_async(url, tls))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(backend.last_headers()["x-forwarded-proto"], "https");

    let plain_gateway = Gateway::start(&["--route", route.as_str()]);
    let url = format!("ws://{}/p", plain_gateway.addr);
    let (_ws, _) = timeout(LIMIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(backend.last_headers()["x-forwarded-proto"], "http");
}

/// With hyper's default windows (1 MiB for a stream and for the whole
/// connection), one upload to a stalled backend stops every other upload
/// on the connection; the gateway's 256 KiB / 8 MiB keep them flowing.
#[tokio::test]
async fn a_stalled_websocket_does_not_stall_its_h2_neighbours() {
    let stalled = stalled_backend().await;
    let echo_backend = Backend::with(named("e")).await;
    let stalled_route = format!("/stalled=ws://{stalled}");
    let echo_route = format!("/echo={}", echo_backend.url());
    let gateway = Gateway::start(&[
        "--route",
        stalled_route.as_str(),
        "--route",
        echo_route.as_str(),
        "--workers",
        "1",
    ]);
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let mut h2 = h2_client(tcp).await;
    timeout(LIMIT, h2.ready()).await.unwrap().unwrap();
    let base = format!("http://{}", gateway.addr);
    let mut a = open(&mut h2, extended_connect(&format!("{base}/stalled"), &[]))
        .await
        .1;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let count = move || sent.load(std::sync::atomic::Ordering::SeqCst);
    let writer = tokio::spawn(async move {
        let chunk = Message::binary(vec![1u8; 1024 * 1024]);
        for _ in 0..64 {
            if a.send(chunk.clone()).await.is_err() {
                break;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // A is stalled once its writer stops making progress.
    let stalled_at = timeout(LIMIT, async {
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if count() == last {
                break last;
            }
            last = count();
        }
    })
    .await
    .expect("A stalls");
    assert!(stalled_at < 64, "64 MiB were buffered somewhere");
    let mut b = open(&mut h2, extended_connect(&format!("{base}/echo"), &[]))
        .await
        .1;
    for i in 0..10 {
        b.send(Message::text(format!("still flowing {i}")))
            .await
            .unwrap();
        assert_eq!(
            next(&mut b).await,
            Message::text(format!("e:still flowing {i}"))
        );
    }
    let big = "x".repeat(1024 * 1024);
    b.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(next(&mut b).await, Message::text(format!("e:{big}")));
    assert_eq!(count(), stalled_at, "A moved: it was not stalled");
    writer.abort();
}

/// Reads messages until the close; its code (pings skipped).
async fn close_code<S>(ws: &mut WebSocketStream<S>) -> Option<u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match timeout(LIMIT, ws.next()).await.expect("a close in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a Close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn route_and_timeout_flags_reach_the_layer() {
    let backend = Backend::start().await;
    let (silent, _) = silent_backend().await;
    let strip = format!("/strip=ws://{}/base", backend.addr);
    let keep = format!("/keep=ws://{}/base", backend.addr);
    let slow = format!("/slow=ws://{silent}");
    let stripping = Gateway::start(&["--route", strip.as_str(), "--strip-prefix"]);
    let keeping = Gateway::start(&[
        "--route",
        keep.as_str(),
        "--route",
        slow.as_str(),
        "--handshake-timeout",
        "300ms",
        "--idle-timeout",
        "300ms",
    ]);
    // --strip-prefix: /strip/room goes to /base/room; without it the
    // prefix stays.
    let _a = connect(stripping.addr, "/strip/room?id=1").await;
    assert_eq!(backend.last_uri(), "/base/room?id=1");
    let mut idle = connect(keeping.addr, "/keep/room").await;
    assert_eq!(backend.last_uri(), "/base/keep/room");
    // --handshake-timeout: a backend that never answers is a 504, soon.
    let started = Instant::now();
    assert_eq!(
        handshake_status(keeping.addr, "/slow", "").await,
        "HTTP/1.1 504"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // --idle-timeout: a silent tunnel is closed (no Close frame: TCP).
    let started = Instant::now();
    let ended = timeout(LIMIT, async {
        while let Some(Ok(_)) = idle.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel must be closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn backend_limit_and_per_ip_flags_reach_the_layers() {
    let backend = echo_backend().await;
    let route = format!("/=ws://{backend}");
    let gateway = Gateway::start(&[
        "--route",
        route.as_str(),
        "--backend-max-message",
        "1KiB",
        "--max-conns-per-ip",
        "1",
    ]);
    // The backend echoes 2 KiB, over its limit: the client is told 1001
    // (the backend got 1009).
    let mut ws = connect(gateway.addr, "/").await;
    ws.send(Message::text("x".repeat(2048))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1001));
    drop(ws);
    // One open WebSocket per client address: the second is a 429.
    let gateway = Gateway::start(&["--route", route.as_str(), "--max-conns-per-ip", "1"]);
    let _open = connect(gateway.addr, "/").await;
    assert_eq!(
        handshake_status(gateway.addr, "/", "").await,
        "HTTP/1.1 429"
    );
    // A global rate of one a minute, no burst: the second handshake is a 429.
    let gateway = Gateway::start(&["--route", route.as_str(), "--rate", "1/m", "--burst", "0"]);
    let _first = connect(gateway.addr, "/").await;
    assert_eq!(
        handshake_status(gateway.addr, "/", "").await,
        "HTTP/1.1 429"
    );
}

#[tokio::test]
async fn no_close_on_disconnect_passes_a_vanished_backend_on_as_a_tcp_close() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--no-close-on-disconnect"),
        "not in --help"
    );
    // A backend that drops its connection, without a Close frame, when
    // told to.
    let backend = Backend::start().await;
    let route = format!("/=ws://{}", backend.addr);
    // By default the client hears Close 1011 when its backend vanishes.
    let gateway = Gateway::start(&["--route", route.as_str()]);
    let mut ws = connect(gateway.addr, "/").await;
    ws.send(Message::text("server-drop")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1011));
    // With the flag its stream just ends, without a Close frame.
    let gateway = Gateway::start(&["--route", route.as_str(), "--no-close-on-disconnect"]);
    let mut ws = connect(gateway.addr, "/").await;
    ws.send(Message::text("server-drop")).await.unwrap();
    let end = timeout(LIMIT, ws.next()).await.expect("the end in time");
    assert!(
        matches!(end, None | Some(Err(_))),
        "expected no Close frame, got {end:?}"
    );
}
