//! An axum app that proxies WebSockets, and its tests with axum-test.
//!
//! Run the tests with `cargo test -p wsproxy-examples --example testing`
//! (`cargo test --workspace` runs them too), or the app with
//! `cargo run -p wsproxy-examples --example testing` and open a WebSocket
//! to `ws://127.0.0.1:8080/chat/room` (proxied to an embedded echo
//! backend).
//!
//! The tests serve the app with axum-test's HTTP transport, from
//! `into_make_service_with_connect_info` as `main` does: a proxied
//! WebSocket needs a real connection to take over, and the proxy and
//! per-client limits need the client's address. Under the default mock
//! transport a WebSocket handshake is answered `501 Not Implemented`.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use tower::ServiceBuilder;
use wsproxy::admit::{ConnectionLimit, Key, OriginCheck};
use wsproxy::{Route, WebSocketProxyLayer};

/// Open WebSockets a client may have at once.
const MAX_PER_CLIENT: usize = 2;

/// The limit on open WebSockets per client. Layers made from clones of one
/// `ConnectionLimit` share its counts.
fn connection_limit() -> ConnectionLimit {
    ConnectionLimit::new().max_open_per_key(Key::client_ip(), MAX_PER_CLIENT)
}

/// The app: its own home page, and WebSockets under `/chat` proxied to
/// `backend`, from its own pages only and `connections` at a time.
fn app(backend: SocketAddr, connections: ConnectionLimit) -> Router {
    let chat = WebSocketProxyLayer::new(format!("ws://{backend}").parse().expect("a ws:// URL"))
        .route(Route::prefix("/chat"));
    Router::new().route("/", get(|| async { "home\n" })).layer(
        ServiceBuilder::new()
            .layer(
                OriginCheck::new(["http://127.0.0.1:8080"])
                    .allow_missing(true)
                    .layer(),
            )
            .layer(connections.layer())
            .layer(chat),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (backend, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse()?).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app(backend, connection_limit()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::future::IntoFuture;
    use std::time::Duration;

    use axum::Extension;
    use axum_test::{TestServer, TestWebSocket};
    use http::StatusCode;
    use http::header::ORIGIN;
    use wsproxy::ClientAddr;

    use super::*;

    /// An echo backend for the app, on 127.0.0.1.
    async fn backend() -> SocketAddr {
        let (backend, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        backend
    }

    /// `app` served as `main` serves it, on a real socket: axum-test's
    /// HTTP transport, with the client's address as `ConnectInfo`.
    fn serve(app: Router) -> TestServer {
        TestServer::builder()
            .http_transport()
            .build(app.into_make_service_with_connect_info::<SocketAddr>())
    }

    /// `future`, or a panic if it takes more than 10 s.
    async fn within<F: IntoFuture>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), future.into_future())
            .await
            .expect("timed out")
    }

    async fn chat(server: &TestServer) -> TestWebSocket {
        let response = within(server.get_websocket("/chat/room")).await;
        response.assert_status_switching_protocols();
        within(response.into_websocket()).await
    }

    #[tokio::test]
    async fn chat_websockets_reach_the_backend() {
        let server = serve(app(backend().await, connection_limit()));
        let mut ws = chat(&server).await;
        ws.send_text("hello").await;
        within(ws.assert_receive_text("hello")).await;
    }

    #[tokio::test]
    async fn the_home_page_stays_with_the_app() {
        let server = serve(app(backend().await, connection_limit()));
        server
            .get("/")
            .await
            .assert_status_ok()
            .assert_text("home\n");
        server.get("/chat/room").await.assert_status_not_found();
    }

    #[tokio::test]
    async fn pages_of_other_sites_cannot_open_a_chat() {
        let server = serve(app(backend().await, connection_limit()));
        server
            .get_websocket("/chat/room")
            .add_header(ORIGIN, "https://evil.example")
            .await
            .assert_status_forbidden();
        let ours = server
            .get_websocket("/chat/room")
            .add_header(ORIGIN, "http://127.0.0.1:8080");
        within(ours).await.assert_status_switching_protocols();
    }

    #[tokio::test]
    async fn a_client_has_two_chats_at_a_time_and_others_their_own() {
        let backend = backend().await;
        let limit = connection_limit();
        let server = serve(app(backend, limit.clone()));

        let _first = chat(&server).await;
        let _second = chat(&server).await;
        server
            .get_websocket("/chat/room")
            .await
            .assert_status_too_many_requests();
        // Counted by the address axum-test connected from.
        assert_eq!(limit.open_for("127.0.0.1"), MAX_PER_CLIENT);

        // Another client: a `ClientAddr` layer outside the app says who.
        let other = ClientAddr("192.0.2.7:50000".parse().unwrap());
        let as_other = serve(app(backend, limit.clone()).layer(Extension(other)));
        let mut theirs = chat(&as_other).await;
        theirs.send_text("mine").await;
        within(theirs.assert_receive_text("mine")).await;
        assert_eq!(limit.open_for("192.0.2.7"), 1);
    }

    #[tokio::test]
    async fn the_mock_transport_cannot_open_websockets() {
        // A bare `Router` is served by the mock transport: no connection.
        let server = TestServer::new(app(backend().await, connection_limit()));
        server
            .get_websocket("/chat/room")
            .await
            .assert_status(StatusCode::NOT_IMPLEMENTED)
            .assert_text_contains("use the HTTP transport");
        // Plain routes are fine there.
        server.get("/").await.assert_text("home\n");
    }
}
