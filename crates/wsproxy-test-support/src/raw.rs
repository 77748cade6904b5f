//! Backends that speak raw TCP: they answer what a test tells them to, or
//! not at all.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::http::header;
use crate::time::within;

/// A raw TCP backend that answers the first request head on each
/// connection with a fixed text and records every byte it receives.
///
/// In the answer, `{accept}` is replaced by the `Sec-WebSocket-Accept`
/// that matches the request's key.
#[derive(Clone, Debug)]
pub struct RawBackend {
    /// Its address.
    pub addr: SocketAddr,
    /// Bytes received, one entry per accepted connection.
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections that have ended (end of stream or error from the proxy).
    pub ended: Arc<AtomicUsize>,
}

impl RawBackend {
    /// Answer `answer` and keep each connection open, reading until the
    /// proxy closes it.
    pub async fn start(answer: &'static str) -> Self {
        Self::spawn(answer, false).await
    }

    /// Answer `answer` (which may be empty) and close the connection.
    pub async fn start_closing(answer: &'static str) -> Self {
        Self::spawn(answer, true).await
    }

    async fn spawn(answer: &'static str, close: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = RawBackend {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            ended: Arc::default(),
        };
        let this = backend.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(this.clone().session(stream, answer, close));
            }
        });
        backend
    }

    async fn session(self, mut stream: TcpStream, answer: &'static str, close: bool) {
        let index = {
            let mut received = self.received.lock().unwrap();
            received.push(Vec::new());
            received.len() - 1
        };
        let mut buf = [0u8; 4096];
        let mut answered = false;
        loop {
            let n = match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let all = {
                let mut received = self.received.lock().unwrap();
                received[index].extend_from_slice(&buf[..n]);
                received[index].clone()
            };
            if !answered && all.windows(4).any(|w| w == b"\r\n\r\n") {
                answered = true;
                let text = String::from_utf8_lossy(&all).into_owned();
                let key = header(&text, "sec-websocket-key").unwrap_or("");
                let reply = answer.replace("{accept}", &accept_key(key));
                let _ = stream.write_all(reply.as_bytes()).await;
                if close {
                    break;
                }
            }
        }
        self.ended.fetch_add(1, Ordering::SeqCst);
    }

    /// What the `index`th connection received, as text.
    pub fn received_text(&self, index: usize) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()[index]).into_owned()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// A backend that accepts one connection, reads its request head and hands
/// the connection and the head (as text) to `script`; its address.
///
/// A script that answers the handshake writes [`switching_protocols`]
/// first; what it does next is the test's.
pub async fn scripted_backend<F, Fut>(script: F) -> SocketAddr
where
    F: FnOnce(TcpStream, String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_request_head(&mut stream).await;
        script(stream, head).await;
    });
    addr
}

/// A backend that accepts TCP connections, counts them, and never answers
/// (nor reads); its address and the count.
pub async fn silent_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted)
}

/// A WebSocket backend that completes every handshake and then never
/// reads: what is sent to it fills the buffers on the way and stays there.
pub async fn stalled_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let head = read_request_head(&mut stream).await;
            stream
                .write_all(switching_protocols(&head).as_bytes())
                .await
                .unwrap();
            held.push(stream);
        }
    });
    addr
}

/// A port on 127.0.0.1 where nothing listens, so connects to it are
/// refused: the socket is bound and never listens, and no one else gets
/// the port while the test holds it.
pub fn closed_port() -> (TcpSocket, SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// The `Sec-WebSocket-Accept` for `key`.
pub fn accept_key(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// Read one HTTP request head from `stream` (a raw backend's side).
pub async fn read_request_head(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    within("a request head", async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a full request head");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    String::from_utf8(buf).unwrap()
}

/// A `101` answering the handshake request `head`.
pub fn switching_protocols(head: &str) -> String {
    let key = header(head, "sec-websocket-key").unwrap();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
}
