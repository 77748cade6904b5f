//! How the load generator opens WebSockets: an HTTP/1.1 upgrade on a TCP
//! connection of its own, or an RFC 8441 extended `CONNECT` stream on one
//! of a few shared HTTP/2 connections (h2c with prior knowledge).
//!
//! Every socket sets `TCP_NODELAY`, as browsers do.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Errors of different origin (TCP, hyper, tungstenite) meet here.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The byte stream under a WebSocket: a TCP connection or an HTTP/2 stream.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// A client WebSocket over either HTTP version.
pub(crate) type Ws = WebSocketStream<Box<dyn Transport>>;

/// Time allowed to open one WebSocket (or one HTTP/2 connection).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens WebSockets to one URL, over HTTP/1.1 or HTTP/2.
#[derive(Debug, Clone)]
pub(crate) enum Dialer {
    /// A TCP connection and an HTTP/1.1 upgrade per WebSocket.
    Http1 {
        /// The `ws://` URL.
        url: String,
        /// `host:port` to connect to.
        authority: String,
    },
    /// A stream per WebSocket, spread round robin over shared connections.
    Http2(Arc<H2Connections>),
}

/// HTTP/2 connections that WebSockets are opened on, in turn.
#[derive(Debug)]
pub(crate) struct H2Connections {
    /// The `:scheme`, `:authority` and `:path` of each `CONNECT`.
    uri: Uri,
    senders: Vec<SendRequest<Empty<Bytes>>>,
    next: AtomicUsize,
}

impl Dialer {
    /// One TCP connection per WebSocket to `url` (`ws://host:port/path`).
    pub(crate) fn http1(url: &str) -> Result<Self, BoxError> {
        Ok(Dialer::Http1 {
            url: url.to_owned(),
            authority: authority(url)?,
        })
    }

    /// Open `connections` HTTP/2 connections (h2c, prior knowledge) to the
    /// server of `url`; WebSockets are then opened on them in turn.
    pub(crate) async fn http2(url: &str, connections: usize) -> Result<Self, BoxError> {
        let authority = authority(url)?;
        let path = url
            .parse::<Uri>()?
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = format!("http://{authority}{path}").parse()?;
        let mut senders = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let tcp = tcp(&authority).await?;
            let (sender, connection) = tokio::time::timeout(
                CONNECT_TIMEOUT,
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(tcp)),
            )
            .await
            .map_err(|_| "HTTP/2 handshake timed out")??;
            // Ends when every sender and every stream on it is dropped.
            tokio::spawn(connection);
            senders.push(sender);
        }
        Ok(Dialer::Http2(Arc::new(H2Connections {
            uri,
            senders,
            next: AtomicUsize::new(0),
        })))
    }

    /// Open one WebSocket, within 10 s.
    pub(crate) async fn connect(&self) -> Result<Ws, BoxError> {
        tokio::time::timeout(CONNECT_TIMEOUT, async {
            match self {
                Dialer::Http1 { url, authority } => {
                    let tcp: Box<dyn Transport> = Box::new(tcp(authority).await?);
                    let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp).await?;
                    Ok(ws)
                }
                Dialer::Http2(h2) => h2.open().await,
            }
        })
        .await
        .map_err(|_| "opening a WebSocket timed out")?
    }

    /// "HTTP/1.1" or "HTTP/2 over N connections", for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Dialer::Http1 { .. } => "HTTP/1.1, a connection per WebSocket".to_owned(),
            Dialer::Http2(h2) => format!("HTTP/2 over {} connection(s)", h2.senders.len()),
        }
    }
}

impl H2Connections {
    async fn open(&self) -> Result<Ws, BoxError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        let mut sender = self.senders[index].clone();
        // Extended CONNECT may only be sent once the server's SETTINGS
        // allowed it.
        sender.ready().await?;
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(self.uri.clone())
            .header("sec-websocket-version", "13")
            .body(Empty::new())?;
        request
            .extensions_mut()
            .insert(Protocol::from_static("websocket"));
        let mut response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(format!("extended CONNECT answered {}", response.status()).into());
        }
        let stream: Box<dyn Transport> =
            Box::new(TokioIo::new(hyper::upgrade::on(&mut response).await?));
        Ok(WebSocketStream::from_raw_socket(stream, Role::Client, None).await)
    }
}

/// `host:port` of a `ws://` URL (port 80 when it has none).
fn authority(url: &str) -> Result<String, BoxError> {
    let uri: Uri = url.parse()?;
    if uri.scheme_str() != Some("ws") {
        return Err(format!("{url}: only ws:// URLs are supported").into());
    }
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

/// A TCP connection with `TCP_NODELAY`, as browsers set it.
async fn tcp(authority: &str) -> Result<TcpStream, BoxError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| format!("TCP connect to {authority} timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    #[test]
    fn authority_of_ws_urls() {
        assert_eq!(
            authority("ws://127.0.0.1:9001/x").unwrap(),
            "127.0.0.1:9001"
        );
        assert_eq!(authority("ws://127.0.0.1/").unwrap(), "127.0.0.1:80");
        assert!(authority("wss://127.0.0.1/").is_err());
    }

    async fn echo(dialer: &Dialer, text: &str) {
        let mut ws = dialer.connect().await.unwrap();
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        assert_eq!(echoed.unwrap().unwrap().unwrap(), Message::text(text));
    }

    #[tokio::test]
    async fn both_dialers_echo_through_the_layer_server() {
        let (backend, _) = wsproxy_test_support::spawn_echo("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (proxy, _) =
            crate::proxy::spawn("127.0.0.1:0".parse().unwrap(), &format!("ws://{backend}"))
                .await
                .unwrap();
        let url = format!("ws://{proxy}/");
        echo(&Dialer::http1(&url).unwrap(), "over HTTP/1.1").await;
        // Four WebSockets on two connections, in turn.
        let h2 = Dialer::http2(&url, 2).await.unwrap();
        for i in 0..4 {
            echo(&h2, &format!("over HTTP/2, {i}")).await;
        }
        let Dialer::Http2(connections) = &h2 else {
            panic!("{h2:?}")
        };
        assert_eq!(connections.next.load(Ordering::Relaxed), 4);
    }
}
