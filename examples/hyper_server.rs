//! The proxy layer in front of a plain hyper service, without axum.
//!
//! Run with `cargo run -p wsproxy-examples --example hyper_server`, then
//! connect a WebSocket client to `ws://127.0.0.1:8080/ws` (it is echoed by
//! an embedded backend) or `curl http://127.0.0.1:8080/` (answered by the
//! service itself).
//!
//! A hyper server must serve connections with upgrades for the proxy to
//! take over the client's connection, and should insert a
//! [`wsproxy::ClientAddr`] so forwarding headers carry the client address.
//! This one speaks HTTP/1.1 and HTTP/2 (prior knowledge, `h2c`) with the
//! builder of [`wsproxy::serve::http_builder`]: extended `CONNECT`
//! enabled, so WebSockets work over both, and the HTTP/2 windows the
//! crate docs recommend ("Serving"): a WebSocket whose backend stops
//! reading holds 256 KiB, not the whole connection.
//!
//! A loop this bare has no timeouts: a client that connects and says
//! nothing holds its connection for ever. To face untrusted clients, serve
//! with [`wsproxy::serve::Server`] instead (see the `tls_app` example).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::{ServiceBuilder, service_fn};
use wsproxy::{ClientAddr, Route, WebSocketProxyLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();

    let (backend, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse()?).await?;
    let proxy =
        WebSocketProxyLayer::new(format!("ws://{backend}").parse()?).route(Route::prefix("/ws"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        // As nginx's `tcp_nodelay on`; the proxy cannot reach this socket.
        let _ = stream.set_nodelay(true);
        let service = ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req
            })
            .layer(proxy.clone())
            .service(service_fn(app));
        tokio::spawn(async move {
            let builder = wsproxy::serve::http_builder(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            if let Err(e) = connection.await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let peer: Option<SocketAddr> = req.extensions().get::<ClientAddr>().map(|c| c.0);
    Ok(Response::new(Full::from(format!(
        "plain HTTP to {} from {peer:?} is answered by the app\n",
        req.uri().path()
    ))))
}
