//! An axum app served over TLS with rustls, HTTP/2 or HTTP/1.1 by ALPN,
//! that proxies `wss://…/ws` WebSockets to a backend, over either.
//!
//! Run with `cargo run -p wsproxy-examples --example tls_app -- cert.pem key.pem`,
//! where the files hold a PEM certificate chain and its private key. A
//! pair for a test (never for production; keep the key out of version
//! control):
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
//!     -days 7 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
//!     -keyout key.pem -out cert.pem
//! ```
//!
//! Then:
//! - `curl -k --http2 https://127.0.0.1:8443/` is answered by the app over
//!   HTTP/2 (`--http1.1` for HTTP/1.1);
//! - a WebSocket to `wss://127.0.0.1:8443/ws` is proxied to an embedded
//!   echo backend. A browser that loaded a page from this origin opens it
//!   as an HTTP/2 stream (RFC 8441), since the server advertises
//!   `SETTINGS_ENABLE_CONNECT_PROTOCOL`; other clients use HTTP/1.1.
//!
//! `axum::serve` takes any `Listener`, but cannot set HTTP/2 options, so
//! this app serves each connection with hyper-util's builder, as
//! `axum::serve` does, plus the HTTP/2 windows the `wsproxy` docs
//! recommend ("Serving"). The TLS handshake runs in the connection's task,
//! within a timeout, so a slow client never holds up the accept loop.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tower::Service as _;
use wsproxy::{Route, Tunnels, WebSocketProxyLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let mut files = std::env::args_os().skip(1);
    let (Some(cert), Some(key)) = (files.next(), files.next()) else {
        return Err("usage: tls_app CERT.pem KEY.pem".into());
    };
    let tls = TlsAcceptor::from(tls_config(cert.as_ref(), key.as_ref())?);

    let (backend, _) = wsproxy_bench::spawn_echo("127.0.0.1:0".parse()?).await?;
    let tunnels = Tunnels::new();
    let app = Router::new()
        .route("/", get(|| async { "answered by the app over TLS\n" }))
        .layer(
            WebSocketProxyLayer::new(format!("ws://{backend}").parse()?)
                .route(Route::prefix("/ws"))
                .tunnels(tunnels.clone()),
        );

    let mut http = Builder::new(TokioExecutor::new());
    http.http2()
        .enable_connect_protocol()
        .initial_stream_window_size(wsproxy::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(wsproxy::HTTP2_CONNECTION_WINDOW);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    println!("listening on https://{}", listener.local_addr()?);
    let connections = GracefulShutdown::new();
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let (tcp, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut interrupt => break,
        };
        // As nginx's `tcp_nodelay on`; the proxy cannot reach this socket.
        let _ = tcp.set_nodelay(true);
        let (tls, app, http) = (tls.clone(), app.clone(), http.clone());
        let watcher = connections.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return eprintln!("TLS handshake with {client}: {e}"),
                Err(_) => return eprintln!("TLS handshake with {client} timed out"),
            };
            // What `into_make_service_with_connect_info` gives handlers,
            // and the proxy for the client address.
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(client));
                // Backends are told `https` only when the server says so.
                req.extensions_mut().insert(wsproxy::ClientTls);
                app.clone().call(req)
            });
            // hyper-util reads the first bytes: the HTTP/2 preface after
            // ALPN `h2`, an HTTP/1.1 request otherwise.
            let connection = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                eprintln!("connection from {client}: {e}");
            }
        });
    }
    // Stop accepting, let requests finish, give open tunnels 5 s.
    let (_, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), connections.shutdown()),
        tunnels.shutdown(Duration::from_secs(5)),
    );
    Ok(())
}

/// rustls with the *ring* provider, the chain and key from PEM files, and
/// ALPN offering HTTP/2 first.
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<ServerConfig>, Box<dyn std::error::Error>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
