//! The layer in an axum app tested the way its authors test it, with
//! axum-test: WebSockets need axum-test's HTTP transport (a real socket,
//! served by `axum::serve`), refusals are ordinary `TestResponse`s, and
//! under the default mock transport a handshake is answered `501` saying
//! so, without touching a backend.

use std::future::IntoFuture;
use std::net::SocketAddr;

use axum::extract::ws::{self, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{Route, get};
use axum::{Extension, Router};
use axum_test::{TestServer, TestWebSocket, WsMessage};
use http::StatusCode;
use http::header;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tower::layer::util::Identity;
use wsproxy::admit::{ConnectionLimit, Key, OriginCheck, Rate, RateLimit};
use wsproxy::{ClientAddr, WebSocketProxyLayer};
use wsproxy_test_support::*;

/// The app under test: its own pages and its own WebSocket at `/own`, and
/// WebSockets under `/chat` proxied to `backend` behind `admission`.
fn app<L>(backend: &Backend, admission: L) -> Router
where
    L: tower::Layer<Route> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<axum::extract::Request, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Response:
        axum::response::IntoResponse + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
{
    let chat = WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
        .route(wsproxy::Route::prefix("/chat"));
    Router::new()
        .route("/", get(|| async { "home" }))
        .route("/chat/rules", get(|| async { "be nice" }))
        .route("/own", get(own_socket))
        .layer(chat)
        .layer(admission)
}

/// The app's own WebSocket handler: answers each text with `app: <text>`.
async fn own_socket(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(ws::Message::Text(text))) = socket.recv().await {
            if socket.send(format!("app: {text}").into()).await.is_err() {
                break;
            }
        }
    })
}

/// axum-test over a real socket, serving `app` as `main` would: with
/// `axum::serve` and the peer's address as `ConnectInfo<SocketAddr>`.
fn http_server(app: Router) -> TestServer {
    TestServer::builder()
        .http_transport()
        .build(app.into_make_service_with_connect_info::<SocketAddr>())
}

/// Open a WebSocket on `path` through axum-test, asserting the `101`.
async fn websocket(server: &TestServer, path: &str) -> TestWebSocket {
    let response = within("handshake", server.get_websocket(path).into_future()).await;
    response.assert_status_switching_protocols();
    within("upgrade", response.into_websocket()).await
}

async fn receive(ws: &mut TestWebSocket) -> WsMessage {
    within("a message", ws.receive_message()).await
}

#[tokio::test]
async fn a_websocket_opened_with_axum_test_reaches_the_backend_both_ways() {
    let backend = Backend::start().await;
    let server = http_server(app(&backend, Identity::new()));

    let mut ws = websocket(&server, "/chat/room").await;
    ws.send_text("hello").await;
    assert_eq!(receive(&mut ws).await, WsMessage::text("hello"));
    ws.send_message(WsMessage::binary(vec![0, 1, 2, 255])).await;
    assert_eq!(
        receive(&mut ws).await,
        WsMessage::binary(vec![0, 1, 2, 255])
    );
    // The backend speaks first: its Close reaches the client.
    ws.send_text("server-close").await;
    match receive(&mut ws).await {
        WsMessage::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::from(4001));
            assert_eq!(frame.reason.as_str(), "backend says bye");
        }
        other => panic!("expected the backend's Close, got {other:?}"),
    }

    assert_eq!(backend.connections(), 1);
    assert_eq!(backend.last_uri(), "/chat/room");
    let seen = backend.seen.lock().unwrap().messages.clone();
    assert_eq!(
        seen[..3],
        [
            WsMessage::text("hello"),
            WsMessage::binary(vec![0, 1, 2, 255]),
            WsMessage::text("server-close"),
        ]
    );
}

#[tokio::test]
async fn plain_routes_and_the_apps_own_websocket_stay_with_the_app() {
    let backend = Backend::start().await;
    let server = http_server(app(&backend, Identity::new()));

    server.get("/").await.assert_status_ok().assert_text("home");
    // A plain GET under the proxied prefix is the app's too.
    server
        .get("/chat/rules")
        .await
        .assert_status_ok()
        .assert_text("be nice");
    server.get("/nowhere").await.assert_status_not_found();

    let mut own = websocket(&server, "/own").await;
    own.send_text("hi").await;
    assert_eq!(receive(&mut own).await, WsMessage::text("app: hi"));

    assert_eq!(backend.connections(), 0, "nothing reached the backend");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_403() {
    let backend = Backend::start().await;
    let server = http_server(app(
        &backend,
        OriginCheck::new(["https://app.example"]).layer(),
    ));

    server
        .get_websocket("/chat/room")
        .add_header(header::ORIGIN, "https://evil.example")
        .await
        .assert_status_forbidden()
        .assert_text("origin not allowed\n");
    assert_eq!(backend.connections(), 0);

    let ws = server
        .get_websocket("/chat/room")
        .add_header(header::ORIGIN, "https://app.example");
    let response = within("handshake", ws.into_future()).await;
    response.assert_status_switching_protocols();
    // The Origin check looks at WebSocket handshakes only.
    server.get("/").await.assert_status_ok();
}

#[tokio::test]
async fn a_client_over_its_rate_is_refused_429_with_retry_after() {
    let backend = Backend::start().await;
    let limit = RateLimit::new().per_key(Key::client_ip(), Rate::per_minute(1));
    let server = http_server(app(&backend, limit.clone().layer()));

    let _first = websocket(&server, "/chat/room").await;
    let refused = server.get_websocket("/chat/room").await;
    refused
        .assert_status_too_many_requests()
        .assert_text("rate limit per client reached\n");
    let retry: u64 = refused
        .header(header::RETRY_AFTER)
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert_eq!(backend.connections(), 1);
    // Counted by the client's address, which axum-test's HTTP transport
    // gives as `ConnectInfo` when the app is served with it.
    assert_eq!(limit.keys(), 1);
    // Plain requests are not counted.
    server.get("/").await.assert_status_ok();
    server.get("/").await.assert_status_ok();
}

#[tokio::test]
async fn open_websockets_per_client_are_limited_429_until_one_closes() {
    let backend = Backend::start().await;
    let limit = ConnectionLimit::new().max_open_per_key(Key::client_ip(), 1);
    let server = http_server(app(&backend, limit.clone().layer()));

    let mut first = websocket(&server, "/chat/room").await;
    first.send_text("first").await;
    assert_eq!(receive(&mut first).await, WsMessage::text("first"));
    assert_eq!(limit.open_for("127.0.0.1"), 1);
    server
        .get_websocket("/chat/room")
        .await
        .assert_status_too_many_requests()
        .assert_text("connection limit per client reached\n");
    assert_eq!(backend.connections(), 1);

    first.close().await;
    let l = limit.clone();
    assert!(
        wait_until(LIMIT, || l.open() == 0).await,
        "the permit comes back when the tunnel ends"
    );
    let mut again = websocket(&server, "/chat/room").await;
    again.send_text("again").await;
    assert_eq!(receive(&mut again).await, WsMessage::text("again"));
}

#[tokio::test]
async fn a_wrong_websocket_version_is_refused_426() {
    let backend = Backend::start().await;
    let server = http_server(app(&backend, Identity::new()));

    // `get_websocket` always says version 13: build the handshake by hand.
    server
        .get("/chat/room")
        .add_header(header::CONNECTION, "upgrade")
        .add_header(header::UPGRADE, "websocket")
        .add_header(header::SEC_WEBSOCKET_VERSION, "8")
        .add_header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
        .await
        .assert_status(StatusCode::UPGRADE_REQUIRED)
        .assert_header(header::SEC_WEBSOCKET_VERSION, "13");
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn served_with_connect_info_the_backend_learns_the_client_address() {
    let backend = Backend::start().await;
    let server = http_server(app(&backend, Identity::new()));

    let _ws = websocket(&server, "/chat/room").await;
    let headers = backend.last_headers();
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn served_without_connect_info_the_proxy_does_not_know_the_client() {
    // The pitfall the crate docs warn about: `build(app)` with a bare
    // `Router` serves it without `ConnectInfo`, so nothing says who the
    // client is: no `X-Forwarded-For`, and per-client limits do not apply.
    let backend = Backend::start().await;
    let limit = ConnectionLimit::new().max_open_per_key(Key::client_ip(), 1);
    let server = TestServer::builder()
        .http_transport()
        .build(app(&backend, limit.clone().layer()));

    let _first = websocket(&server, "/chat/room").await;
    let _second = websocket(&server, "/chat/room").await;
    assert_eq!(limit.open(), 2);
    assert_eq!(backend.connections(), 2);
    assert_eq!(backend.last_headers().get("x-forwarded-for"), None);
}

#[tokio::test]
async fn a_client_addr_layer_lets_a_test_play_other_clients() {
    // One limit shared by two servers, each playing a different client
    // with an outermost `Extension(ClientAddr(..))` layer.
    let backend = Backend::start().await;
    let limit = ConnectionLimit::new().max_open_per_key(Key::client_ip(), 1);
    let as_client = |addr: &str| {
        let client = ClientAddr(addr.parse().unwrap());
        let app = app(&backend, limit.clone().layer());
        http_server(app.layer(Extension(client)))
    };
    let alice = as_client("192.0.2.1:40000");
    let bob = as_client("192.0.2.2:40000");

    let _alice = websocket(&alice, "/chat/room").await;
    assert_eq!(backend.last_headers()["x-forwarded-for"], "192.0.2.1");
    alice
        .get_websocket("/chat/room")
        .await
        .assert_status_too_many_requests();
    // Another client is counted on its own.
    let _bob = websocket(&bob, "/chat/room").await;
    assert_eq!(backend.last_headers()["x-forwarded-for"], "192.0.2.2");
    assert_eq!(limit.open_for("192.0.2.1"), 1);
    assert_eq!(limit.open_for("192.0.2.2"), 1);
    assert_eq!(
        limit.open_for("127.0.0.1"),
        0,
        "ClientAddr wins over ConnectInfo"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn under_the_mock_transport_a_handshake_is_answered_501_saying_what_to_do() {
    let (captured, _logging) = Captured::start();
    let backend = Backend::start().await;
    // A bare `Router` is served by axum-test's mock transport by default:
    // no connection, so nothing can be upgraded.
    let server = TestServer::new(app(&backend, Identity::new()));

    let response = server.get_websocket("/chat/room").await;
    response
        .assert_status(StatusCode::NOT_IMPLEMENTED)
        .assert_text(
            "WebSocket upgrades need a connection that can be upgraded: \
             serve with axum::serve or hyper's with_upgrades \
             (under axum-test, use the HTTP transport)\n",
        )
        .assert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    // Decided before any backend is contacted; the response is complete,
    // so a connect would already have been counted.
    assert_eq!(backend.connections(), 0);
    // Plain routes work under the mock transport as ever.
    server.get("/").await.assert_status_ok().assert_text("home");

    let logged = captured.lines();
    let warnings: Vec<_> = logged.iter().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "one warning per handshake: {logged:#?}");
    assert!(warnings[0].contains("status=501"), "{}", warnings[0]);
    assert!(warnings[0].contains("HTTP transport"), "{}", warnings[0]);
    assert!(!captured.text().contains("ERROR"), "{logged:#?}");
}

#[tokio::test]
async fn under_the_mock_transport_other_refusals_come_first() {
    // Validation and admission answer as over a socket: only a handshake
    // they let on needs the upgrade.
    let backend = Backend::start().await;
    let server = TestServer::new(app(
        &backend,
        OriginCheck::new(["https://app.example"]).layer(),
    ));
    server
        .get_websocket("/chat/room")
        .add_header(header::ORIGIN, "https://evil.example")
        .await
        .assert_status_forbidden();
    let allowed = server
        .get_websocket("/chat/room")
        .add_header(header::ORIGIN, "https://app.example")
        .await;
    allowed.assert_status(StatusCode::NOT_IMPLEMENTED);
    assert_eq!(backend.connections(), 0);
}
