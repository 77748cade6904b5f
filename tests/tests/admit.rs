//! Admission layers end to end: refusals are ordinary responses that never
//! reach a backend, and connection permits live as long as the tunnels.

use futures_util::StreamExt;
use http::HeaderName;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceBuilder;
use wsproxy::WebSocketProxyLayer;
use wsproxy::admit::{ConnectionLimit, Key, OriginCheck};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

/// An app with `layers` (around a proxy) and a plain route `/app`.
async fn app_with<L>(layers: L) -> std::net::SocketAddr
where
    L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<axum::extract::Request, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Response:
        axum::response::IntoResponse + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
{
    serve(
        axum::Router::new()
            .route("/app", axum::routing::get(|| async { "app" }))
            .layer(layers),
    )
    .await
}

fn proxy(backend: &Backend) -> WebSocketProxyLayer {
    WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
}

/// A handshake on a raw socket with extra header lines; the status.
async fn status(proxy: std::net::SocketAddr, extra: &str) -> (u16, String) {
    let mut stream = raw(proxy, handshake("/", extra).as_bytes()).await;
    let head = read_head(&mut stream).await;
    let body = if head.status == 101 {
        Vec::new()
    } else {
        read_body(&mut stream, &head).await
    };
    (head.status, String::from_utf8_lossy(&body).into_owned())
}

async fn open(proxy: std::net::SocketAddr, headers: &[(&str, &str)]) -> WsClient {
    connect_with(&format!("ws://{proxy}/"), headers).await.0
}

#[tokio::test]
async fn open_tunnels_hold_their_permits_until_they_close() {
    let backend = Backend::start().await;
    let limit = ConnectionLimit::new().max_open(2);
    let addr = app_with(
        ServiceBuilder::new()
            .layer(limit.clone().layer())
            .layer(proxy(&backend)),
    )
    .await;

    let mut first = open(addr, &[]).await;
    let second = open(addr, &[]).await;
    assert_eq!(limit.open(), 2);
    // The third is refused while two are open, and never reaches the backend.
    let (code, body) = status(addr, "").await;
    assert_eq!((code, body.as_str()), (503, "connection limit reached\n"));
    assert_eq!(backend.connections(), 2);
    // Plain HTTP is not counted or limited.
    let mut plain = raw(addr, b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_head(&mut plain).await.status, 200);

    // One closes cleanly: the next is admitted.
    first.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, first.next()).await {}
    drop(first);
    let l = limit.clone();
    assert!(wait_until(LIMIT, || l.open() == 1).await, "permit returned");
    let mut third = open(addr, &[]).await;
    echo(&mut third, Message::text("admitted")).await;

    // One goes away without a Close: its permit comes back too.
    drop(second);
    let l = limit.clone();
    assert!(
        wait_until(LIMIT, || l.open() == 1).await,
        "permit returned after a drop"
    );
    // And one whose connection is reset (RST, no FIN).
    let (reset, _) = raw_websocket(addr).await;
    assert_eq!(limit.open(), 2);
    reset.set_zero_linger().unwrap();
    drop(reset);
    let l = limit.clone();
    assert!(
        wait_until(LIMIT, || l.open() == 1).await,
        "permit returned after a reset"
    );
    let _fourth = open(addr, &[]).await;
    assert_eq!(limit.open(), 2);
}

#[tokio::test]
async fn towers_concurrency_limit_releases_at_the_101_which_is_why_this_exists() {
    let backend = Backend::start().await;
    let addr = app_with(
        ServiceBuilder::new()
            .concurrency_limit(1)
            .layer(proxy(&backend)),
    )
    .await;
    // With tower's limit of one, a second WebSocket opens while the first
    // is still open: its permit went back with the 101.
    let mut first = open(addr, &[]).await;
    let mut second = open(addr, &[]).await;
    echo(&mut first, Message::text("1")).await;
    echo(&mut second, Message::text("2")).await;
}

#[tokio::test]
async fn per_client_limits_refuse_with_429_and_ignore_spoofed_forwarding_headers() {
    let backend = Backend::start().await;
    let by_user =
        ConnectionLimit::new().max_open_per_key(Key::header(HeaderName::from_static("x-user")), 2);
    let by_ip = ConnectionLimit::new().max_open_per_key(Key::client_ip(), 3);
    let addr = app_with(
        ServiceBuilder::new()
            .layer(by_ip.clone().layer())
            .layer(by_user.clone().layer())
            .layer(proxy(&backend)),
    )
    .await;
    let _a1 = open(addr, &[("x-user", "alice")]).await;
    let _a2 = open(addr, &[("x-user", "alice")]).await;
    let (code, body) = status(addr, "x-user: alice\r\n").await;
    assert_eq!(
        (code, body.as_str()),
        (429, "connection limit per client reached\n")
    );
    let _b1 = open(addr, &[("x-user", "bob")]).await;
    assert_eq!((by_user.open_for("alice"), by_user.open_for("bob")), (2, 1));
    // All three come from 127.0.0.1; a spoofed X-Forwarded-For from an
    // untrusted peer does not make a fourth look like someone else.
    let (code, _) = status(addr, "x-user: carol\r\nx-forwarded-for: 203.0.113.9\r\n").await;
    assert_eq!(code, 429);
    assert_eq!(by_ip.open_for("127.0.0.1"), 3);
    assert_eq!(backend.connections(), 3);
}

#[tokio::test]
async fn origins_off_the_list_are_refused_with_403_before_the_backend() {
    let backend = Backend::start().await;
    let addr = app_with(
        ServiceBuilder::new()
            .layer(OriginCheck::new(["https://app.example", "https://*.app.example"]).layer())
            .layer(proxy(&backend)),
    )
    .await;
    let mut ok = open(addr, &[("origin", "https://chat.app.example")]).await;
    echo(&mut ok, Message::text("allowed")).await;
    for extra in [
        "Origin: https://evil.example\r\n",
        "Origin: https://app.example.evil.example\r\n",
        "Origin: null\r\n",
        "",
    ] {
        let (code, body) = status(addr, extra).await;
        assert_eq!(code, 403, "{extra:?}");
        assert!(body.starts_with("origin "), "{body}");
    }
    assert_eq!(backend.connections(), 1, "refusals never reach the backend");
    // Plain requests without Origin still reach the app.
    let mut plain = raw(addr, b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_head(&mut plain).await.status, 200);
}

#[tokio::test]
async fn towers_cors_layer_answers_preflights_and_leaves_the_upgrade_working() {
    let backend = Backend::start().await;
    let addr = app_with(
        ServiceBuilder::new()
            .layer(
                tower_http::cors::CorsLayer::new()
                    .allow_origin(http::HeaderValue::from_static("https://app.example"))
                    .allow_methods([http::Method::GET]),
            )
            .layer(OriginCheck::new(["https://app.example"]).layer())
            .layer(proxy(&backend)),
    )
    .await;
    let mut preflight = raw(
        addr,
        b"OPTIONS / HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\
          Access-Control-Request-Method: GET\r\n\r\n",
    )
    .await;
    let head = read_head(&mut preflight).await;
    assert_eq!(head.status, 200, "{}", head.text);
    assert_eq!(
        head.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let mut ws = open(addr, &[("origin", "https://app.example")]).await;
    echo(&mut ws, Message::text("through cors")).await;
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, ws.next()).await {}
}

#[tokio::test]
async fn rate_limits_refuse_with_429_and_retry_after_in_whole_seconds() {
    use wsproxy::admit::{Rate, RateLimit};
    let backend = Backend::start().await;
    let limit = RateLimit::new().per_key(Key::client_ip(), Rate::per_minute(1).burst(1));
    let addr = app_with(
        ServiceBuilder::new()
            .layer(limit.clone().layer())
            .layer(proxy(&backend)),
    )
    .await;
    let _first = open(addr, &[]).await;
    let _second = open(addr, &[]).await;
    let mut stream = raw(addr, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 429, "{}", head.text);
    let retry: u64 = head.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        read_body(&mut stream, &head).await,
        b"rate limit per client reached\n"
    );
    assert_eq!(backend.connections(), 2, "refusals never reach the backend");
    assert_eq!(limit.keys(), 1);
    // Plain requests are not counted.
    for _ in 0..3 {
        let mut plain = raw(addr, b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(read_head(&mut plain).await.status, 200);
    }
}

#[tokio::test]
async fn the_proxy_layers_builder_runs_the_same_checks_for_its_route_only() {
    let backend = Backend::start().await;
    let limit = ConnectionLimit::new().max_open(1);
    let chat = WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
        .route(wsproxy::Route::prefix("/chat"))
        .admit(OriginCheck::new(["https://app.example"]).allow_missing(true))
        .admit(limit.clone());
    let other = proxy(&backend).route(wsproxy::Route::prefix("/other"));
    let addr = app_with(ServiceBuilder::new().layer(chat).layer(other)).await;

    let (mut ws, _) = within(
        "handshake",
        tokio_tungstenite::connect_async(format!("ws://{addr}/chat")),
    )
    .await
    .unwrap();
    echo(&mut ws, Message::text("held")).await;
    assert_eq!(limit.open(), 1, "the permit lives with the tunnel");
    // /chat is full; /other has no limit; a bad Origin is refused on /chat.
    let mut full = raw(addr, handshake("/chat", "").as_bytes()).await;
    assert_eq!(read_head(&mut full).await.status, 503);
    let mut evil = raw(
        addr,
        handshake("/chat", "Origin: https://evil.example\r\n").as_bytes(),
    )
    .await;
    assert_eq!(read_head(&mut evil).await.status, 403);
    let mut free = raw(addr, handshake("/other", "").as_bytes()).await;
    assert_eq!(read_head(&mut free).await.status, 101);
    drop(ws);
    let l = limit.clone();
    assert!(wait_until(LIMIT, || l.open() == 0).await);
}

#[tokio::test]
async fn one_resolver_decides_who_the_client_is_for_every_check() {
    use wsproxy::admit::{AdmitLayer, ResolveClient};
    let backend = Backend::start().await;
    // 127.0.0.1 is the trusted load balancer here: the client is the
    // address it forwarded, for the per-IP limit as for anything after.
    let limit = ConnectionLimit::new().max_open_per_key(Key::client_ip(), 1);
    let addr = app_with(
        ServiceBuilder::new()
            .layer(AdmitLayer::new(ResolveClient::new(["127.0.0.0/8"
                .parse()
                .unwrap()])))
            .layer(limit.clone().layer())
            .layer(proxy(&backend)),
    )
    .await;
    let _a = open(addr, &[("x-forwarded-for", "198.51.100.1")]).await;
    let _b = open(addr, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(limit.open_for("198.51.100.1"), 1);
    assert_eq!(limit.open_for("198.51.100.2"), 1);
    let (code, _) = status(addr, "X-Forwarded-For: 203.0.113.7, 198.51.100.1\r\n").await;
    assert_eq!(code, 429, "the right-most untrusted address is the client");
}

/// An admission that waits for the test to decide each handshake, as one
/// asking an auth service would: nothing reaches the backend before its
/// verdict, its refusal is the client's answer, the head it changes is what
/// the backend gets, and what it holds lives as long as the tunnel.
#[tokio::test]
async fn an_admission_that_waits_holds_the_handshake_until_its_verdict() {
    use http::StatusCode;
    use std::sync::Arc;
    use tokio::sync::{Mutex, mpsc, oneshot};
    use wsproxy::admit::{self, Holds, Refusal};

    struct Held(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Each handshake sends the test a sender for its verdict.
    let (asks, mut asked) = mpsc::unbounded_channel::<oneshot::Sender<bool>>();
    let asks = Arc::new(Mutex::new(asks));
    let counter = held.clone();
    let check = admit::from_async_fn(move |mut request: http::request::Parts| {
        let asks = asks.clone();
        let held = counter.clone();
        async move {
            let (tell, verdict) = oneshot::channel();
            asks.lock().await.send(tell).unwrap();
            if verdict.await.unwrap_or(false) {
                request.headers.insert("x-user-id", "42".parse().unwrap());
                held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Holds::push(&mut request.extensions, Held(held));
                (request, Ok(()))
            } else {
                let refusal = Refusal::new(StatusCode::UNAUTHORIZED, "who are you")
                    .header(http::header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
                (request, Err(refusal))
            }
        }
    });
    let backend = Backend::start().await;
    let addr = app_with(
        ServiceBuilder::new()
            .layer(check.layer())
            .layer(proxy(&backend)),
    )
    .await;

    // Plain HTTP is never asked about.
    let mut plain = raw(addr, b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_head(&mut plain).await.status, 200);
    assert!(asked.try_recv().is_err());

    // Refused after the wait: the client gets the refusal, the backend nothing.
    let refused = tokio::spawn(status(addr, "X-User-Id: 1\r\n"));
    let tell = within("the check is asked", asked.recv()).await.unwrap();
    assert_eq!(backend.connections(), 0);
    tell.send(false).unwrap();
    let (code, body) = within("the refusal", refused).await.unwrap();
    assert_eq!((code, body.as_str()), (401, "who are you\n"));
    assert_eq!(backend.connections(), 0);

    // Admitted after the wait: nothing reached the backend before.
    let opening =
        tokio::spawn(
            async move { connect_with(&format!("ws://{addr}/"), &[("x-user-id", "1")]).await },
        );
    let tell = within("the check is asked", asked.recv()).await.unwrap();
    assert!(!opening.is_finished());
    assert_eq!(backend.connections(), 0, "no backend before the verdict");
    tell.send(true).unwrap();
    let (mut client, _) = within("the tunnel", opening).await.unwrap();
    echo(&mut client, Message::text("in")).await;
    assert_eq!(backend.connections(), 1);
    let seen = backend.last_headers();
    assert_eq!(
        seen.get_all("x-user-id").iter().collect::<Vec<_>>(),
        ["42"],
        "the check's header replaced the client's"
    );
    // What it holds lives as long as the tunnel.
    assert_eq!(held.load(std::sync::atomic::Ordering::SeqCst), 1);
    client.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, client.next()).await {}
    drop(client);
    let h = held.clone();
    assert!(
        wait_until(LIMIT, || h.load(std::sync::atomic::Ordering::SeqCst) == 0).await,
        "released with the tunnel"
    );

    // A client that leaves while the check waits: the check's future is
    // dropped with the request, nothing is held and nothing reaches the backend.
    let leaving = raw(addr, handshake("/", "").as_bytes()).await;
    let mut tell = within("the check is asked", asked.recv()).await.unwrap();
    drop(leaving);
    // The waiting check ends with its client.
    within("the check is dropped", tell.closed()).await;
    assert_eq!(backend.connections(), 1);
}
