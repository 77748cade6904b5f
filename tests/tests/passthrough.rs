//! Everything the proxy does not claim reaches the app unchanged; the
//! layer composes as a tower layer and as a standalone service.

use std::convert::Infallible;

use axum::Router;
use axum::extract::ws::{Message as AxumMessage, WebSocketUpgrade};
use axum::routing::{get, post};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tower::{Service, ServiceBuilder, ServiceExt};
use wsproxy::{Route, WebSocketProxyLayer};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello from the app" }))
        .route(
            "/echo-body",
            post(|body: String| async move { format!("app got {body}") }),
        )
        .route(
            "/any",
            get(|headers: http::HeaderMap| async move {
                format!("app saw upgrade={:?}", headers.get("upgrade"))
            })
            .post(|| async { "app took the POST" }),
        )
        .route(
            "/local-ws",
            get(|upgrade: WebSocketUpgrade| async move {
                upgrade.on_upgrade(|mut socket| async move {
                    let _ = socket
                        .send(AxumMessage::text("the app's own handler"))
                        .await;
                })
            }),
        )
}

async fn proxied_app(backend: &Backend) -> std::net::SocketAddr {
    let layer = WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
        .route(Route::prefix("/proxy"));
    serve(app().layer(layer)).await
}

async fn response(addr: std::net::SocketAddr, request: &str) -> (Head, Vec<u8>) {
    let mut stream = raw(addr, request.as_bytes()).await;
    let head = read_head(&mut stream).await;
    let len: usize = head
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let rest = head.rest.clone();
    let body = read_at_least(&mut stream, rest, len).await;
    (head, body)
}

#[tokio::test]
async fn plain_requests_reach_the_app() {
    let backend = Backend::start().await;
    let proxy = proxied_app(&backend).await;
    let (head, body) = response(proxy, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        (head.status, body.as_slice()),
        (200, &b"hello from the app"[..])
    );
    let (head, body) = response(
        proxy,
        "POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload",
    )
    .await;
    assert_eq!(
        (head.status, body.as_slice()),
        (200, &b"app got payload"[..])
    );
    // A plain GET on the proxied prefix is the app's too (here: 404).
    let (head, _) = response(proxy, "GET /proxy/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 404);
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn other_upgrades_and_a_websocket_post_reach_the_app() {
    let backend = Backend::start().await;
    let proxy = proxied_app(&backend).await;
    let (head, body) = response(
        proxy,
        "GET /any HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "app saw upgrade=Some(\"h2c\")"
    );
    let (head, body) = response(
        proxy,
        &handshake("/any", "Content-Length: 0\r\n").replacen("GET", "POST", 1),
    )
    .await;
    assert_eq!(
        (head.status, body.as_slice()),
        (200, &b"app took the POST"[..])
    );
    // Even on the proxied prefix, a POST is not a handshake.
    let (head, _) = response(proxy, &handshake("/proxy/x", "").replacen("GET", "POST", 1)).await;
    assert_eq!(head.status, 404);
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn the_apps_own_websocket_route_keeps_working() {
    let backend = Backend::start().await;
    let proxy = proxied_app(&backend).await;
    let mut local = connect(&format!("ws://{proxy}/local-ws")).await;
    let got = within("app message", local.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::text("the app's own handler"));
    assert_eq!(backend.connections(), 0);
    let mut proxied = connect(&format!("ws://{proxy}/proxy/room")).await;
    echo(&mut proxied, Message::text("through the proxy")).await;
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn route_service_and_nest_service() {
    let backend = Backend::start().await;
    let upstream = || -> wsproxy::Upstream { format!("ws://{}", backend.addr).parse().unwrap() };
    let app = Router::new()
        .route_service("/ws", WebSocketProxyLayer::new(upstream()).into_service())
        .nest_service(
            "/nested",
            WebSocketProxyLayer::new(upstream()).into_service(),
        );
    let proxy = serve(app).await;

    let mut ws = connect(&format!("ws://{proxy}/ws")).await;
    echo(&mut ws, Message::text("route_service")).await;
    let mut ws = connect(&format!("ws://{proxy}/nested/deeper?q=1")).await;
    echo(&mut ws, Message::text("nest_service")).await;
    assert_eq!(
        backend.last_uri(),
        "/deeper?q=1",
        "nest_service strips its prefix"
    );

    let (head, _) = response(proxy, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(head.status, 426);
    assert_eq!(head.header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn composes_with_service_builder_over_a_hyper_style_service() {
    let backend = Backend::start().await;
    let service = ServiceBuilder::new()
        .layer(WebSocketProxyLayer::new(
            format!("ws://{}", backend.addr).parse().unwrap(),
        ))
        .service_fn(|_req: http::Request<axum::body::Body>| async {
            Ok::<_, Infallible>(http::Response::new(axum::body::Body::from("inner")))
        });
    // The app's error type passes through: still Infallible.
    fn infallible<S: Service<http::Request<axum::body::Body>, Error = Infallible>>(_: &S) {}
    infallible(&service);
    // And the future is Send, as axum and hyper need.
    fn send<T: Send>(_: &T) {}
    let future = service
        .clone()
        .oneshot(http::Request::new(axum::body::Body::empty()));
    send(&future);
    let response = future.await.unwrap();
    assert_eq!(response.status(), 200);

    let app = Router::new().fallback_service(service);
    let proxy = serve(app).await;
    let mut ws = connect(&format!("ws://{proxy}/anything")).await;
    echo(&mut ws, Message::text("service builder")).await;
    let mut stream = raw(proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_head(&mut stream).await.status, 200);
    stream.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_predicate_route_claims_only_what_it_matches() {
    let backend = Backend::start().await;
    let layer = WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap()).route(
        Route::predicate(|_uri, headers| headers.contains_key("x-to-backend")),
    );
    let proxy = serve(app().layer(layer)).await;

    // Without the header: the app's own handler on the same path.
    let mut local = connect(&format!("ws://{proxy}/local-ws")).await;
    let got = within("app message", local.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::text("the app's own handler"));
    assert_eq!(backend.connections(), 0);

    // With it: the backend.
    let (mut proxied, _) =
        connect_with(&format!("ws://{proxy}/local-ws"), &[("x-to-backend", "1")]).await;
    echo(&mut proxied, Message::text("claimed by the predicate")).await;
    assert_eq!(backend.connections(), 1);
    assert_eq!(backend.last_uri(), "/local-ws");
}
