//! hyper-util's server builder, set up for WebSockets.

use hyper_util::server::conn::auto::Builder;

/// hyper-util's HTTP/1.1 + HTTP/2 server builder, set up for WebSockets:
/// extended `CONNECT` (`SETTINGS_ENABLE_CONNECT_PROTOCOL`, RFC 8441) so
/// browsers can open WebSockets over HTTP/2, and the receive windows of
/// [`HTTP2_STREAM_WINDOW`](crate::HTTP2_STREAM_WINDOW) and
/// [`HTTP2_CONNECTION_WINDOW`](crate::HTTP2_CONNECTION_WINDOW), so that
/// one WebSocket whose backend stops reading does not stall the others on
/// its connection, and frames of up to
/// [`HTTP2_MAX_FRAME_SIZE`](crate::HTTP2_MAX_FRAME_SIZE), so that a 16 KiB
/// message arrives in one piece. Serve with
/// `serve_connection_with_upgrades`.
///
/// [`Server`](super::Server) serves hyper's HTTP/1.1 and HTTP/2
/// connections with these settings; call this when you run your own
/// accept loop.
///
/// # Example
///
/// ```no_run
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::service::TowerToHyperService;
/// use wsproxy::WebSocketProxyLayer;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let proxy = WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse()?).into_service();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let http = wsproxy::serve::http_builder(TokioExecutor::new());
/// loop {
///     let (tcp, _) = listener.accept().await?;
///     let _ = tcp.set_nodelay(true);
///     let connection = http
///         .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(proxy.clone()))
///         .into_owned();
///     tokio::spawn(connection);
/// }
/// # }
/// ```
pub fn http_builder<E: Clone>(executor: E) -> Builder<E> {
    let mut builder = Builder::new(executor);
    builder
        .http2()
        .enable_connect_protocol()
        .initial_stream_window_size(crate::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(crate::HTTP2_CONNECTION_WINDOW)
        .max_frame_size(crate::HTTP2_MAX_FRAME_SIZE);
    builder
}
