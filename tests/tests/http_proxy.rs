//! `HttpProxy` (feature `http-proxy`): ordinary HTTP to an app server
//! behind the layer, WebSockets on the same port, as nginx's most common
//! recipe does. The app servers are a hyper one written here and Python's
//! `http.server`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use wsproxy::http_proxy::HttpProxy;
use wsproxy::serve::{ConnectionLimits, Timeouts};
use wsproxy::{Route, WebSocketProxyLayer};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

type AppBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// What the app server saw.
#[derive(Default)]
struct Seen {
    /// TCP connections it accepted.
    connections: AtomicUsize,
    /// Of those, the ones that ended.
    closed: AtomicUsize,
    /// Bytes of `/upload` bodies read so far.
    uploaded: AtomicU64,
    /// Lets `/download` send the rest of its body.
    go_on: tokio::sync::Notify,
}

/// An app server: `/upload` counts its body as it arrives, `/download`
/// sends a first chunk and the rest once told, `/slow` never answers,
/// anything else answers with what it got (method, target, headers, body
/// size) and an `X-Hop` named by `Connection` that must not reach the
/// client.
async fn app() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            state.connections.fetch_add(1, Ordering::SeqCst);
            let seen = state.clone();
            let ended = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, seen.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                ended.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

async fn answer(req: Request<Incoming>, seen: Arc<Seen>) -> Result<Response<AppBody>, Infallible> {
    let full = |text: String| Full::new(Bytes::from(text)).boxed_unsync();
    match req.uri().path() {
        "/upload" => {
            let mut body = req.into_body();
            // An upload cut short ends the count.
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    seen.uploaded.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
            let total = seen.uploaded.load(Ordering::SeqCst);
            Ok(Response::new(full(format!("{total}"))))
        }
        "/download" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(Bytes::from_static(b"first;"))))
                    .await
                    .unwrap();
                seen.go_on.notified().await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"rest"))))
                    .await
                    .unwrap();
            });
            let stream = tokio_stream_from(rx);
            Ok(Response::new(StreamBody::new(stream).boxed_unsync()))
        }
        "/slow" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => {
            let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (name, value) in req.headers() {
                text.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            text.push_str(&format!("body {}\n", body.len()));
            let mut response = Response::new(full(text));
            response
                .headers_mut()
                .insert("connection", "x-hop".parse().unwrap());
            response
                .headers_mut()
                .insert("x-hop", "secret".parse().unwrap());
            response
                .headers_mut()
                .insert("x-app", "yes".parse().unwrap());
            Ok(response)
        }
    }
}

/// A stream of the frames `rx` receives.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

/// The front: the app behind `proxy`, WebSockets under `/ws` to an echo
/// backend, on one port of `wsproxy::serve::Server`.
async fn front_of(proxy: HttpProxy) -> (SocketAddr, Backend) {
    let backend = Backend::start().await;
    let app = Router::new().fallback_service(proxy).layer(
        WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
            .route(Route::prefix("/ws")),
    );
    let addr = serve_with(app, Timeouts::new(), ConnectionLimits::new()).await;
    (addr, backend)
}

/// One request on a new connection; the head and the body.
async fn ask(addr: SocketAddr, request: &str) -> (Head, String) {
    let mut stream = raw(addr, request.as_bytes()).await;
    let head = read_head(&mut stream).await;
    let body = read_body(&mut stream, &head).await;
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn ordinary_requests_reach_the_app_and_websockets_the_backend_on_one_port() {
    let (app_addr, seen) = app().await;
    let (front, backend) =
        front_of(HttpProxy::new(&format!("http://{app_addr}/base")).unwrap()).await;
    let (head, body) = ask(
        front,
        "POST /api/items?id=7&x HTTP/1.1\r\nHost: www.example\r\nContent-Length: 5\r\n\
         X-Custom: 1\r\nConnection: keep-alive, X-Hop\r\nX-Hop: no\r\nKeep-Alive: timeout=5\r\n\
         X-Forwarded-For: 6.6.6.6\r\nCookie: a=1\r\n\r\nhello",
    )
    .await;
    assert_eq!(head.status, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "POST /base/api/items?id=7&x HTTP/1.1");
    let has = |line: &str| lines.contains(&line);
    for expected in [
        format!("host: {app_addr}"),
        "x-custom: 1".to_owned(),
        "cookie: a=1".to_owned(),
        // The client's claim replaced: the peer is not a trusted proxy.
        "x-forwarded-for: 127.0.0.1".to_owned(),
        "x-forwarded-host: www.example".to_owned(),
        "x-forwarded-proto: http".to_owned(),
        "body 5".to_owned(),
    ] {
        assert!(has(&expected), "{expected}:\n{body}");
    }
    for gone in ["x-hop:", "keep-alive:"] {
        assert!(
            !body.contains(gone),
            "{gone} must not reach the app:\n{body}"
        );
    }
    // The app's hop-by-hop header does not reach the client.
    assert_eq!(head.header("x-app"), Some("yes"));
    assert_eq!(head.header("x-hop"), None);
    // A WebSocket on the same port, and plain requests while it is open.
    let mut ws = connect(&format!("ws://{front}/ws")).await;
    echo(&mut ws, Message::text("tunneled")).await;
    let (head, _) = ask(front, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 200);
    echo(&mut ws, Message::text("still")).await;
    assert_eq!(backend.connections(), 1);
    // Both plain requests went over one connection to the app.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connections_to_the_app_are_reused() {
    let (app_addr, seen) = app().await;
    let (front, _backend) = front_of(HttpProxy::new(&format!("http://{app_addr}")).unwrap()).await;
    // Keep-alive on the client side too: twenty requests in turn.
    get_in_turn(front, 20).await;
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

/// `count` requests for `/x`, one after the other on one client
/// connection to `front`, each answered 200; their bodies.
async fn get_in_turn(front: SocketAddr, count: usize) -> Vec<Vec<u8>> {
    let mut stream = TcpStream::connect(front).await.unwrap();
    let mut bodies = Vec::with_capacity(count);
    for i in 0..count {
        stream
            .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 200, "request {i}: {}", head.text);
        bodies.push(read_body(&mut stream, &head).await);
    }
    bodies
}

/// An app that closes every connection after its answer, without saying
/// so (`Connection: close` absent), as one whose keep-alive timeout is
/// short does: a pooled connection the app closed is not used (it would
/// answer 502), each request is answered.
#[tokio::test]
async fn an_app_that_closes_idle_connections_does_not_cost_a_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                read_request_head(&mut tcp).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                // Closed here: the proxy's pooled connection goes stale.
            });
        }
    });
    let (front, _backend) = front_of(HttpProxy::new(&format!("http://{app_addr}")).unwrap()).await;
    for body in get_in_turn(front, 30).await {
        assert_eq!(body, b"ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 30);
}

/// The app always gets a `Host`: with the client's `Host` as the policy,
/// the client's, and the app's authority for a client that sent none (an
/// HTTP/1.0 client may not).
#[tokio::test]
async fn the_app_gets_a_host_where_the_client_sent_none() {
    let (app_addr, _seen) = app().await;
    let proxy = HttpProxy::new(&format!("http://{app_addr}"))
        .unwrap()
        .host_header(wsproxy::HostHeader::Client);
    let (front, _backend) = front_of(proxy).await;
    for (request, host) in [
        (
            "GET /x HTTP/1.1\r\nHost: site.example\r\n\r\n",
            "site.example".to_owned(),
        ),
        ("GET /x HTTP/1.0\r\n\r\n", app_addr.to_string()),
    ] {
        let (head, body) = ask(front, request).await;
        assert_eq!(head.status, 200, "{body}");
        let hosts: Vec<&str> = body.lines().filter(|l| l.starts_with("host: ")).collect();
        assert_eq!(hosts, [format!("host: {host}")], "{request:?}:\n{body}");
    }
}

/// A connection whose response body is still streaming is not handed
/// another request (it would wait behind the body): the next request
/// gets a connection of its own.
#[tokio::test]
async fn a_request_does_not_wait_behind_a_response_still_streaming() {
    let (app_addr, seen) = app().await;
    let (front, _backend) = front_of(HttpProxy::new(&format!("http://{app_addr}")).unwrap()).await;
    let mut download = raw(front, b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut head = read_head(&mut download).await;
    assert_eq!(head.status, 200);
    // The first chunk is through: the app's connection is mid-body.
    head.rest = read_until_text(&mut download, head.rest, "first;").await;
    let (other, body) = ask(front, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(other.status, 200, "{body}");
    assert!(body.starts_with("GET /other"), "{body}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    seen.go_on.notify_one();
    assert_eq!(read_body(&mut download, &head).await, b"first;rest");
}

/// A response that streams for longer than the idle timeout does not
/// count as time at rest: its connection is reused after it.
#[tokio::test]
async fn a_long_response_is_not_time_at_rest() {
    let (app_addr, seen) = app().await;
    let proxy = HttpProxy::new(&format!("http://{app_addr}"))
        .unwrap()
        .idle_timeout(Duration::from_millis(1000));
    let (front, _backend) = front_of(proxy).await;
    let mut download = raw(front, b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = read_head(&mut download).await;
    assert_eq!(head.status, 200);
    // The body goes on for longer than the idle timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    seen.go_on.notify_one();
    assert_eq!(read_body(&mut download, &head).await, b"first;rest");
    let (head, _) = ask(front, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

/// Read from `stream` after `got` until `text` shows; all that was read.
async fn read_until_text(stream: &mut TcpStream, mut got: Vec<u8>, text: &str) -> Vec<u8> {
    within(text, async {
        while !String::from_utf8_lossy(&got).contains(text) {
            let mut chunk = [0u8; 256];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before {text:?}");
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    got
}

/// A connection left at rest is closed by the proxy after the idle
/// timeout, though no request comes to look at the pool; with a zero
/// timeout none is kept.
#[tokio::test]
async fn connections_at_rest_are_closed_after_the_idle_timeout() {
    let (app_addr, seen) = app().await;
    let proxy = HttpProxy::new(&format!("http://{app_addr}"))
        .unwrap()
        .idle_timeout(Duration::from_millis(300));
    let (front, _backend) = front_of(proxy).await;
    let (head, _) = ask(front, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert!(
        wait_until(LIMIT, || seen.closed.load(Ordering::SeqCst) == 1).await,
        "the idle connection was not closed"
    );
    let (head, _) = ask(front, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);

    let (app_addr, seen) = app().await;
    let proxy = HttpProxy::new(&format!("http://{app_addr}"))
        .unwrap()
        .idle_timeout(Duration::ZERO);
    let (front, _backend) = front_of(proxy).await;
    for _ in 0..3 {
        let (head, _) = ask(front, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(head.status, 200);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
    assert!(wait_until(LIMIT, || seen.closed.load(Ordering::SeqCst) == 3).await);
}

#[tokio::test]
async fn the_app_down_is_502_and_slow_is_504() {
    let (_port, dead) = closed_port();
    let (front, _b) = front_of(HttpProxy::new(&format!("http://{dead}")).unwrap()).await;
    let (head, body) = ask(front, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((head.status, body.as_str()), (502, "bad gateway\n"));

    let (app_addr, _seen) = app().await;
    let proxy = HttpProxy::new(&format!("http://{app_addr}"))
        .unwrap()
        .response_timeout(Duration::from_millis(300));
    let (front, _b) = front_of(proxy).await;
    let (head, body) = ask(front, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((head.status, body.as_str()), (504, "gateway timeout\n"));
    // A body with its length (which hyper sends without asking for its
    // end) to an app that never answers.
    let (head, _) = ask(
        front,
        "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(head.status, 504);
    // An upload that stops half-way is not held for ever either.
    let (head, _) = ask(
        front,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello",
    )
    .await;
    assert_eq!(head.status, 504);
}

/// 100 MiB uploaded in chunks reaches the app as it is sent (the app has
/// the first MiB before the client sends the second), never held whole;
/// a response body reaches the client as the app sends it.
#[tokio::test]
async fn bodies_stream_both_ways() {
    const MIB: usize = 1 << 20;
    let (app_addr, seen) = app().await;
    let (front, _b) = front_of(HttpProxy::new(&format!("http://{app_addr}")).unwrap()).await;
    let mut stream = TcpStream::connect(front).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'x'; MIB];
    for sent in 1..=100u64 {
        stream
            .write_all(format!("{MIB:x}\r\n").as_bytes())
            .await
            .unwrap();
        stream.write_all(&chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
        if sent == 1 {
            let seen = seen.clone();
            assert!(
                wait_until(LIMIT, move || seen.uploaded.load(Ordering::SeqCst)
                    >= MIB as u64)
                .await,
                "the first MiB did not reach the app before the rest was sent"
            );
        }
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let head = read_head(&mut stream).await;
    let body = read_body(&mut stream, &head).await;
    assert_eq!(String::from_utf8(body).unwrap(), (100 * MIB).to_string());

    let mut stream = raw(front, b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200);
    // The first chunk arrives while the app still holds the rest.
    let got = read_until_text(&mut stream, head.rest.clone(), "first;").await;
    assert!(!String::from_utf8_lossy(&got).contains("rest"));
    seen.go_on.notify_one();
    read_until_text(&mut stream, got, "rest").await;
}

/// An app server that is not hyper: Python's `http.server`; the prefix
/// rewritten, an HTTP/2 client forwarded over HTTP/1.1.
#[tokio::test]
async fn an_independent_app_server_behind_it_over_http2_too() {
    let (_python, app_addr) = python_backend("http_app.py").await;
    let proxy = HttpProxy::new(&format!("http://{app_addr}"))
        .unwrap()
        .rewrite_prefix("/app", "/v2");
    let (front, _b) = front_of(proxy).await;
    let (head, body) = ask(
        front,
        "PUT /app/things/1?full HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-app"), Some("python"));
    for expected in ["method PUT", "path /v2/things/1?full", "body 3"] {
        assert!(body.contains(expected), "{expected}:\n{body}");
    }
    // HTTP/2 (prior knowledge) to the front, HTTP/1.1 to the app.
    let tcp = TcpStream::connect(front).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .uri(format!("http://{front}/app/h2"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("path /v2/h2"), "{body}");
    assert!(body.contains(&format!("header host: {app_addr}")), "{body}");
}

/// The response timeout counts time without progress: an upload that
/// keeps moving is answered however long it takes in all (here longer
/// than the timeout), as nginx's `proxy_send_timeout` times each write.
#[tokio::test]
async fn a_slow_upload_that_moves_is_not_a_timeout() {
    let (app_addr, _seen) = app().await;
    let timeout = Duration::from_millis(600);
    let proxy = HttpProxy::new(&format!("http://{app_addr}"))
        .unwrap()
        .response_timeout(timeout);
    let (front, _b) = front_of(proxy).await;
    let mut stream = raw(
        front,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
    )
    .await;
    // The client's pace (the point of the test): a byte every 100 ms,
    // 1 s in all.
    for _ in 0..10 {
        tokio::time::sleep(timeout / 6).await;
        stream.write_all(b"x").await.unwrap();
    }
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 200);
    assert_eq!(read_body(&mut stream, &head).await, b"10");
}
