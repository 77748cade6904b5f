//! Shared helpers for the end-to-end tests in `tests/tests/`: real servers
//! on 127.0.0.1:0, recording backends, raw sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Generous bound for anything a test waits for.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Serve `app` with `ConnectInfo` on 127.0.0.1:0; returns its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Wait until `condition` holds, polling every 10 ms, for at most `limit`.
pub async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Await `future` for at most [`LIMIT`], panicking with `what` otherwise.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
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
    pub async fn stoppable(options: BackendOptions) -> (Self, tokio::task::JoinHandle<()>) {
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
    pub async fn listen_again(&self, options: BackendOptions) -> tokio::task::JoinHandle<()> {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.accept(listener, options)
    }

    fn accept(
        &self,
        listener: TcpListener,
        options: BackendOptions,
    ) -> tokio::task::JoinHandle<()> {
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
                        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                            code: 4001.into(),
                            reason: "backend says bye".into(),
                        }))
                        .await;
                    continue;
                }
                Message::Text(t) if t.as_str() == "server-drop" => break,
                Message::Text(_) | Message::Binary(_) => message,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
        self.live.fetch_sub(1, Ordering::SeqCst);
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

/// A WebSocket config allowing 32 MiB messages.
pub fn big() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(32 << 20))
        .max_frame_size(Some(32 << 20))
}

/// A proxy app for `backend` with `layer` settings applied by `configure`.
pub async fn proxy_to(
    backend: SocketAddr,
    configure: impl FnOnce(wsproxy::WebSocketProxyLayer) -> wsproxy::WebSocketProxyLayer,
) -> (SocketAddr, wsproxy::Tunnels) {
    proxy_with(configure(wsproxy::WebSocketProxyLayer::new(
        format!("ws://{backend}").parse().unwrap(),
    )))
    .await
}

/// An app with `layer` (a proxy) and plain routes `/app` and `/internal`.
pub async fn proxy_with(layer: wsproxy::WebSocketProxyLayer) -> (SocketAddr, wsproxy::Tunnels) {
    let tunnels = layer.tunnels_handle().clone();
    let app = axum::Router::new()
        .route("/app", axum::routing::get(|| async { "app" }))
        .route(
            "/internal",
            axum::routing::get(|| async { "internal app route" }),
        )
        .layer(layer);
    (serve(app).await, tunnels)
}

/// A valid handshake request for `path` with extra header lines.
pub fn handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Send raw `bytes` on a new connection to `addr`; returns the connection.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// A parsed HTTP response head.
#[derive(Debug)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// The whole head as text.
    pub text: String,
    /// Bytes read past the head.
    pub rest: Vec<u8>,
}

impl Head {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.text, name)
    }

    /// Every header `name` (case-insensitive), in order.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.text
            .lines()
            .skip(1)
            .filter_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }
}

/// Read the body of the response whose head is `head`: by
/// `Content-Length`, chunked, or (neither) up to the end of the stream.
/// Panics if bytes follow the body.
pub async fn read_body(stream: &mut TcpStream, head: &Head) -> Vec<u8> {
    let (body, rest) = read_body_and_rest(stream, head).await;
    assert!(
        rest.is_empty(),
        "{} bytes past the body: {:?}",
        rest.len(),
        String::from_utf8_lossy(&rest)
    );
    body
}

/// Like [`read_body`], also returning the bytes read past the body (e.g.
/// the start of a pipelined response).
pub async fn read_body_and_rest(stream: &mut TcpStream, head: &Head) -> (Vec<u8>, Vec<u8>) {
    let mut raw = head.rest.clone();
    if let Some(len) = head.header("content-length") {
        let len: usize = len.parse().unwrap();
        raw = read_at_least(stream, raw, len).await;
        let rest = raw.split_off(len);
        return (raw, rest);
    }
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    if !chunked {
        within("a close-delimited body", stream.read_to_end(&mut raw))
            .await
            .unwrap();
        return (raw, Vec::new());
    }
    let mut body = Vec::new();
    // Each round consumes one chunk; the last one has size 0.
    for _ in 0..100_000 {
        let line_end = loop {
            if let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            let len = raw.len();
            raw = read_at_least(stream, raw, len + 1).await;
        };
        let size_line = String::from_utf8_lossy(&raw[..line_end]).into_owned();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        let need = line_end + 2 + size + 2;
        raw = read_at_least(stream, raw, need).await;
        if size > 0 {
            body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        }
        raw.drain(..need);
        if size == 0 {
            return (body, raw);
        }
    }
    panic!("too many chunks");
}

/// The first header `name` in an HTTP head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Read one HTTP response head from `stream`.
pub async fn read_head(stream: &mut TcpStream) -> Head {
    read_head_after(stream, Vec::new()).await
}

/// Read one HTTP response head from `stream`, starting with the bytes
/// `buf` that were already read from it.
pub async fn read_head_after(stream: &mut TcpStream, mut buf: Vec<u8>) -> Head {
    let mut chunk = [0u8; 4096];
    within("a response head", async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                let text = String::from_utf8(buf).unwrap();
                let status = text[9..12].parse().unwrap();
                return Head { status, text, rest };
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before a full head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// Read until `stream` has produced at least `n` bytes past `have`.
pub async fn read_at_least(stream: &mut TcpStream, mut have: Vec<u8>, n: usize) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    within("more bytes", async {
        while have.len() < n {
            let got = stream.read(&mut chunk).await.unwrap();
            assert!(got > 0, "closed after {} bytes", have.len());
            have.extend_from_slice(&chunk[..got]);
        }
        have
    })
    .await
}

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

/// A closed port on 127.0.0.1.
pub async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Connect a tokio-tungstenite client to `url` allowing big messages.
pub async fn connect(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (ws, _) = within(
        "client handshake",
        tokio_tungstenite::connect_async_with_config(url, Some(big()), false),
    )
    .await
    .unwrap();
    ws
}

/// Send `message` and expect it echoed.
pub async fn echo<S>(ws: &mut S, message: Message)
where
    S: futures_util::Sink<Message>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
    S::Error: std::fmt::Debug,
{
    ws.send(message.clone()).await.unwrap();
    let got = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got.len(), message.len());
    assert!(got == message, "echo differs");
}

/// Encode one WebSocket frame; `mask` as a client must.
pub fn ws_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// One frame as read by [`read_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Whether it was masked.
    pub masked: bool,
    /// Payload, unmasked.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a Close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Read one frame from `stream`, after the bytes in `buf` (which keeps
/// what was read past the frame). `None` at a clean end of stream.
pub async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
    let mut chunk = [0u8; 65536];
    within("a frame", async {
        loop {
            if let Some((frame, len)) = parse_frame(buf) {
                buf.drain(..len);
                return Some(frame);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    assert!(buf.is_empty(), "stream ended inside a frame: {buf:?}");
                    return None;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

/// Parse one whole frame at the start of `bytes`, and its length.
pub fn parse_frame(bytes: &[u8]) -> Option<(Frame, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    let masked = bytes[1] & 0x80 != 0;
    let (len, mut at) = match bytes[1] & 0x7f {
        126 => (
            u16::from_be_bytes(bytes.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key: Option<[u8; 4]> = if masked {
        let key = bytes.get(at..at + 4)?.try_into().unwrap();
        at += 4;
        Some(key)
    } else {
        None
    };
    let payload = bytes.get(at..at + len)?;
    let payload = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key.map_or(0, |k| k[i % 4]))
        .collect();
    Some((
        Frame {
            fin: bytes[0] & 0x80 != 0,
            opcode: bytes[0] & 0x0f,
            masked,
            payload,
        },
        at + len,
    ))
}

/// Open a WebSocket through `proxy` on a raw socket; returns the socket and
/// the bytes read past the 101.
pub async fn raw_websocket(proxy: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 101, "{}", head.text);
    (stream, head.rest)
}

/// Log lines written on this thread, captured for a test.
#[derive(Clone, Debug, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    /// This thread's INFO and higher log lines until the guard drops (on a
    /// current-thread runtime, the proxy's tasks log here too).
    pub fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (
            captured.clone(),
            tracing::subscriber::set_default(subscriber),
        )
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The captured lines.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}

/// An HTTP/2 connection (prior knowledge, no TLS) to `proxy`.
pub async fn h2(
    proxy: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// An extended CONNECT for a WebSocket on `path`.
pub fn connect_request(
    proxy: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(format!("http://{proxy}{path}"))
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(http_body_util::Empty::new()).unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    request
}

/// A WebSocket over an HTTP/2 stream.
pub type H2Socket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Open a WebSocket over `sender`; the response head and the socket.
pub async fn open(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> (http::response::Parts, H2Socket) {
    // Extended CONNECT may only be sent once the server's SETTINGS
    // allowed it.
    within("the connection to be ready", sender.ready())
        .await
        .unwrap();
    let response = within("an answer", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK, "{response:?}");
    let (parts, body) = response.into_parts();
    let mut response = http::Response::from_parts(parts.clone(), body);
    let upgraded = within("the stream", hyper::upgrade::on(&mut response))
        .await
        .unwrap();
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        Some(big()),
    )
    .await;
    (parts, ws)
}

/// A CA made for one test.
#[allow(missing_debug_implementations)]
pub struct Ca {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, in PEM.
#[derive(Debug)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A root store holding this CA.
    pub fn roots(&self) -> Arc<tokio_rustls::rustls::RootCertStore> {
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots
            .add(
                tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(
                    self.pem.as_bytes(),
                )
                .unwrap(),
            )
            .unwrap();
        Arc::new(roots)
    }
}

impl Leaf {
    /// A self-signed certificate for `localhost` and 127.0.0.1.
    pub fn self_signed() -> Self {
        Ca::new("test CA").leaf(&["localhost", "127.0.0.1"])
    }

    /// A rustls server configuration presenting this certificate, with
    /// ALPN `h2` and `http/1.1`.
    pub fn server_config(&self) -> Arc<tokio_rustls::rustls::ServerConfig> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(self.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
