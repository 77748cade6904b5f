//! tokio-tungstenite echo backends: a plain one, and one that records what
//! it sees and obeys a few commands.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::ws::big;

/// Start a WebSocket echo backend on `addr`: text and binary messages come
/// back as they are. Returns its bound address and the accept task.
///
/// This is the echo backend of `wsproxy-bench echo` and of the examples:
/// tokio-tungstenite with its default settings, no recording.
pub async fn spawn_echo(addr: SocketAddr) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    // A deep accept queue: in the benchmarks' reconnect storm the backend's
    // queue must not be what drops SYNs (the kernel caps it at
    // `net.core.somaxconn`).
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                    echo_messages(ws).await;
                }
            });
        }
    });
    Ok((local, task))
}

/// [`spawn_echo`] on 127.0.0.1:0; its address. It serves until the
/// runtime ends.
pub async fn echo_backend() -> SocketAddr {
    spawn_echo(([127, 0, 0, 1], 0).into()).await.unwrap().0
}

/// Echo text and binary messages on `ws` until it ends or fails.
pub(crate) async fn echo_messages<S>(mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            break;
        }
    }
}

/// What a [`Backend`] saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Request target of each handshake.
    pub uris: Vec<String>,
    /// Headers of each handshake.
    pub headers: Vec<HeaderMap>,
    /// Messages received (text, binary, ping, pong, close).
    pub messages: Vec<Message>,
    /// Errors that ended a session (e.g. a protocol error).
    pub errors: Vec<String>,
}

/// A tokio-tungstenite echo backend that records what it sees.
///
/// It allows 32 MiB messages ([`big`]) and obeys three text commands:
/// `server-ping` (it sends a Ping `srv`), `server-close` (Close 4001
/// "backend says bye") and `server-drop` (it drops the connection without
/// a Close).
#[derive(Clone, Debug)]
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// WebSocket sessions that are still running.
    pub live: Arc<AtomicUsize>,
    /// What it saw.
    pub seen: Arc<Mutex<Seen>>,
}

/// How a [`Backend`] answers.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Subprotocol to choose when offered.
    pub protocol: Option<&'static str>,
    /// Extra headers on the 101.
    pub headers: Vec<(&'static str, &'static str)>,
    /// A name to put before each echoed text message, with a colon: with
    /// `a`, `hi` comes back as `a:hi`, so a client sees which backend took
    /// its WebSocket.
    pub echo_name: Option<&'static str>,
}

impl Backend {
    /// Start an echo backend with default options.
    pub async fn start() -> Self {
        Self::with(BackendOptions::default()).await
    }

    /// Start an echo backend with `options`.
    pub async fn with(options: BackendOptions) -> Self {
        Self::stoppable(options).await.0
    }

    /// Start an echo backend with `options`; aborting (and awaiting) the
    /// returned task closes its listener, and
    /// [`listen_again`](Self::listen_again) reopens it on the same port.
    /// Sessions already accepted go on.
    pub async fn stoppable(options: BackendOptions) -> (Self, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend {
            addr: listener.local_addr().unwrap(),
            connections: Arc::default(),
            live: Arc::default(),
            seen: Arc::default(),
        };
        let accept = backend.accept(listener, options);
        (backend, accept)
    }

    /// Listen on this backend's address again after its listener was
    /// closed, with the same counters; returns the new accept loop.
    pub async fn listen_again(&self, options: BackendOptions) -> JoinHandle<()> {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.accept(listener, options)
    }

    fn accept(&self, listener: TcpListener, options: BackendOptions) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                this.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(this.clone().session(stream, options.clone()));
            }
        })
    }

    // tungstenite's handshake callback returns its error response by value.
    #[allow(clippy::result_large_err)]
    async fn session(self, stream: TcpStream, options: BackendOptions) {
        let seen = self.seen.clone();
        let callback = |req: &Request, mut res: Response| {
            let mut seen = seen.lock().unwrap();
            seen.uris.push(req.uri().to_string());
            seen.headers.push(req.headers().clone());
            if let Some(protocol) = options.protocol {
                let offered = req
                    .headers()
                    .get_all("sec-websocket-protocol")
                    .iter()
                    .any(|v| v.to_str().unwrap().split(',').any(|p| p.trim() == protocol));
                if offered {
                    res.headers_mut()
                        .insert("sec-websocket-protocol", protocol.parse().unwrap());
                }
            }
            for (name, value) in &options.headers {
                res.headers_mut().append(*name, value.parse().unwrap());
            }
            Ok(res)
        };
        let Ok(mut ws) =
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(big())).await
        else {
            return;
        };
        self.live.fetch_add(1, Ordering::SeqCst);
        loop {
            let message = match ws.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    self.seen.lock().unwrap().errors.push(e.to_string());
                    break;
                }
                None => break,
            };
            self.seen.lock().unwrap().messages.push(message.clone());
            let reply = match &message {
                Message::Text(t) if t.as_str() == "server-ping" => Message::Ping("srv".into()),
                Message::Text(t) if t.as_str() == "server-close" => {
                    let _ = ws
                        .close(Some(CloseFrame {
                            code: 4001.into(),
                            reason: "backend says bye".into(),
                        }))
                        .await;
                    continue;
                }
                Message::Text(t) if t.as_str() == "server-drop" => break,
                Message::Text(t) => match options.echo_name {
                    Some(name) => Message::text(format!("{name}:{t}")),
                    None => message,
                },
                Message::Binary(_) => message,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wait (up to [`LIMIT`](crate::LIMIT)) until it has received a
    /// message that `matches`; panics naming `what` otherwise.
    pub async fn saw(&self, what: &str, matches: impl Fn(&Message) -> bool) {
        let seen = self.seen.clone();
        assert!(
            crate::wait_until(crate::LIMIT, || seen
                .lock()
                .unwrap()
                .messages
                .iter()
                .any(&matches))
            .await,
            "the backend never saw {what}: {:?}",
            self.seen.lock().unwrap()
        );
    }

    /// Its `ws://` URL, with the path `/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Headers of the last handshake.
    pub fn last_headers(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .headers
            .last()
            .cloned()
            .expect("a handshake")
    }

    /// Request target of the last handshake.
    pub fn last_uri(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .uris
            .last()
            .cloned()
            .expect("a handshake")
    }
}
