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
//! It is served by [`wsproxy::serve::Server`], which terminates TLS
//! (the handshake in the connection's own task, within a timeout), sets
//! the HTTP/2 options WebSockets need, bounds every state a client
//! connection can sit in, and on Ctrl-C drains the open WebSockets with
//! Close 1001.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use wsproxy::serve::Server;
use wsproxy::{Route, Tunnels, WebSocketProxyLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let mut files = std::env::args_os().skip(1);
    let (Some(cert), Some(key)) = (files.next(), files.next()) else {
        return Err("usage: tls_app CERT.pem KEY.pem".into());
    };
    let tls = tls_config(cert.as_ref(), key.as_ref())?;

    let (backend, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse()?).await?;
    let tunnels = Tunnels::new();
    let app = Router::new()
        .route("/", get(|| async { "answered by the app over TLS\n" }))
        .layer(
            WebSocketProxyLayer::new(format!("ws://{backend}").parse()?)
                .route(Route::prefix("/ws"))
                .tunnels(tunnels.clone()),
        );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    println!("listening on https://{}", listener.local_addr()?);
    Server::new(app)
        .tls(tls)
        .tunnels(tunnels)
        .shutdown_timeout(Duration::from_secs(5))
        .serve(listener)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
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
