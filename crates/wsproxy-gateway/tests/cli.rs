//! The `wsgate` binary as a user runs it: flags, the demo, and SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const LIMIT: Duration = Duration::from_secs(10);

/// A `wsgate` child process, killed and reaped on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Gateway {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        // Read the first line on a thread, so the wait is bounded, and keep
        // reading both pipes so the gateway never writes to a closed one.
        let stdout = child.stdout.take().unwrap();
        let (first, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let _ = first.send(line.unwrap_or_default());
            }
        });
        let stderr = child.stderr.take().unwrap();
        let (log, logged) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let _ = log.send(line.unwrap_or_default());
            }
        });
        let line = match lines.recv_timeout(LIMIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let mut log = Vec::new();
                while let Ok(line) = logged.recv_timeout(Duration::from_secs(1)) {
                    log.push(line);
                }
                panic!(
                    "wsgate printed no address ({e}; {status:?}); its log:\n{}",
                    log.join("\n")
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("wsgate listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open a WebSocket through the gateway.
async fn connect(addr: SocketAddr, path: &str) -> Client {
    timeout(
        LIMIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .expect("handshake in time")
    .expect("handshake succeeds")
    .0
}

/// The next message, within [`LIMIT`].
async fn next(ws: &mut Client) -> Message {
    timeout(LIMIT, ws.next())
        .await
        .expect("a message in time")
        .expect("the tunnel is open")
        .expect("a valid message")
}

/// Read messages until `text` arrives.
async fn hear(ws: &mut Client, text: &str) {
    while next(ws).await != Message::text(text) {}
}

/// A plain HTTP/1.1 GET; the whole response as text.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut http = timeout(LIMIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    http.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    timeout(LIMIT, http.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

/// Run wsgate with `args` and expect a usage error (exit code 2); its stderr.
fn refused(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{args:?} must be a usage error"
    );
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn bad_flags_exit_with_a_clear_message() {
    let stderr = refused(&["--route", "echo"]);
    assert!(
        stderr.contains("invalid route 'echo': expected PREFIX=ws://HOST:PORT/PATH"),
        "{stderr}"
    );
    let stderr = refused(&["--route", "/echo=http://127.0.0.1:1"]);
    assert!(stderr.contains("the scheme must be ws://"), "{stderr}");
    let stderr = refused(&[
        "--route",
        "/a=ws://127.0.0.1:1",
        "--connect-timeout",
        "soon",
    ]);
    assert!(stderr.contains("invalid duration 'soon'"), "{stderr}");
    let stderr = refused(&["--route", "chat=ws://127.0.0.1:1"]);
    assert!(stderr.contains("must start with '/'"), "{stderr}");
    let stderr = refused(&["--route", "/a=ws://127.0.0.1:1", "--idle-timeout", "10"]);
    assert!(stderr.contains("invalid duration '10'"), "{stderr}");
    let stderr = refused(&[
        "--route",
        "/a=ws://127.0.0.1:1",
        "--route",
        "/a/=ws://127.0.0.1:2",
    ]);
    assert!(stderr.contains("two routes claim the prefix"), "{stderr}");
    let stderr = refused(&["--demo", "--route", "/echo=ws://127.0.0.1:1"]);
    assert!(
        stderr.contains("two routes claim the prefix '/echo'"),
        "{stderr}"
    );
    let stderr = refused(&[]);
    assert!(stderr.contains("no route"), "{stderr}");
}

#[tokio::test]
async fn demo_echoes_chats_and_serves_a_page() {
    let gateway = Gateway::start(&["--demo"]);
    let addr = gateway.addr;

    let mut echo = connect(addr, "/echo").await;
    echo.send(Message::text("ping me")).await.unwrap();
    assert_eq!(next(&mut echo).await, Message::text("ping me"));
    echo.send(Message::binary(vec![0, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut echo).await, Message::binary(vec![0, 1, 2, 255]));

    let mut alice = connect(addr, "/chat").await;
    let mut bob = connect(addr, "/chat").await;
    // Each is subscribed to the room once it has heard its own message.
    alice.send(Message::text("alice here")).await.unwrap();
    hear(&mut alice, "alice here").await;
    bob.send(Message::text("bob here")).await.unwrap();
    hear(&mut bob, "bob here").await;
    alice.send(Message::text("hi bob")).await.unwrap();
    hear(&mut bob, "hi bob").await;
    bob.send(Message::text("hi alice")).await.unwrap();
    hear(&mut alice, "hi alice").await;

    let page = get(addr, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{page}"
    );
    assert!(
        page.contains("<code>/echo</code>")
            && page.contains("<code>/chat</code>")
            && page.contains("Open tunnels: 3")
            && page.contains("<script>"),
        "{page}"
    );
    let health = get(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
}

#[tokio::test]
async fn sigterm_sends_open_tunnels_close_1001_and_exits() {
    let mut gateway = Gateway::start(&["--demo", "--shutdown-timeout", "30s"]);
    let mut ws = connect(gateway.addr, "/echo").await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("x"));

    let start = Instant::now();
    gateway.terminate();
    // The client hears "going away", answers it (tungstenite does while
    // reading), and the process exits without waiting for the deadline.
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    let ended = timeout(LIMIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "the tunnel must be closed");
    let status = tokio::task::spawn_blocking(move || gateway.wait_exit(LIMIT))
        .await
        .unwrap()
        .expect("wsgate exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn keepalive_and_limit_flags_reach_the_layer() {
    let gateway = Gateway::start(&[
        "--demo",
        "--max-message",
        "1KiB",
        "--client-ping",
        "200ms",
        "--message-rate",
        "1/m",
        "--message-burst",
        "1",
    ]);
    let mut ws = connect(gateway.addr, "/echo").await;
    // Pinged while idle...
    let ping = next(&mut ws).await;
    assert!(
        matches!(&ping, Message::Ping(p) if p.len() == 8),
        "{ping:?}"
    );
    // ...and a message over 1 KiB is refused with 1009.
    ws.send(Message::binary(vec![0u8; 1025])).await.unwrap();
    loop {
        match next(&mut ws).await {
            Message::Ping(_) => continue,
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1009);
                break;
            }
            other => panic!("expected Close 1009, got {other:?}"),
        }
    }
    // Two messages at once are within --message-rate 1/m with a burst of
    // one; the third is refused with 1008.
    let mut ws = connect(gateway.addr, "/echo").await;
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.unwrap();
        loop {
            match next(&mut ws).await {
                Message::Ping(_) => continue,
                echoed => {
                    assert_eq!(echoed, Message::text(text));
                    break;
                }
            }
        }
    }
    ws.send(Message::text("three")).await.unwrap();
    loop {
        match next(&mut ws).await {
            Message::Ping(_) => continue,
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008);
                break;
            }
            other => panic!("expected Close 1008, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn sigterm_does_not_wait_past_the_deadline_for_a_stuck_request() {
    // One worker: the stuck connection is accepted and read before the
    // health check on the same runtime is answered.
    let mut gateway = Gateway::start(&["--demo", "--shutdown-timeout", "1s", "--workers", "1"]);
    // A request whose head never ends keeps its HTTP connection busy.
    let mut stuck = timeout(LIMIT, TcpStream::connect(gateway.addr))
        .await
        .unwrap()
        .unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        get(gateway.addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let start = Instant::now();
    gateway.terminate();
    let status = tokio::task::spawn_blocking(move || gateway.wait_exit(LIMIT))
        .await
        .unwrap()
        .expect("wsgate exits after SIGTERM");
    assert!(status.success(), "{status}");
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    drop(stuck);
}

/// The status line of a raw WebSocket handshake to `path` with extra
/// header lines.
async fn handshake_status(addr: SocketAddr, path: &str, extra: &str) -> String {
    let mut stream = timeout(LIMIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    timeout(LIMIT, stream.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn admission_flags_reach_the_layers() {
    let gateway = Gateway::start(&[
        "--demo",
        "--origin",
        "https://*.ok.example",
        "--allow-missing-origin",
        "--max-conns",
        "1",
        "--rate-per-ip",
        "1/m",
        "--burst",
        "2",
    ]);
    let addr = gateway.addr;
    // An origin off the list: 403, before any limit is counted.
    assert_eq!(
        handshake_status(addr, "/echo", "Origin: https://evil.example\r\n").await,
        "HTTP/1.1 403"
    );
    // No Origin is allowed; one open WebSocket is the limit.
    let _open = connect(addr, "/echo").await;
    assert_eq!(
        handshake_status(addr, "/echo", "Origin: https://a.ok.example\r\n").await,
        "HTTP/1.1 503"
    );
    assert_eq!(handshake_status(addr, "/echo", "").await, "HTTP/1.1 503");
    // The rate (3 at once, then 1 a minute) has run out now.
    assert_eq!(handshake_status(addr, "/echo", "").await, "HTTP/1.1 429");
    // The status page is not a handshake: never limited.
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
}

#[test]
fn bad_balancing_flags_exit_with_a_clear_message() {
    let route = |list: &str| format!("/={list}");
    let stderr = refused(&["--route", &route("ws://127.0.0.1:1/;colour=red")]);
    assert!(
        stderr.contains(
            "unknown backend option 'colour=red' in 'ws://127.0.0.1:1/;colour=red'; \
             use weight=N, max-conns=N or backup"
        ),
        "{stderr}"
    );
    let stderr = refused(&["--route", &route("ws://127.0.0.1:1;weight=0")]);
    assert!(
        stderr.contains("invalid option 'weight=0' in 'ws://127.0.0.1:1;weight=0'"),
        "{stderr}"
    );
    let stderr = refused(&["--route", &route("ws://127.0.0.1:1,http://127.0.0.1:2")]);
    assert!(stderr.contains("the scheme must be ws://"), "{stderr}");
    let stderr = refused(&["--route", &route("ws://127.0.0.1:1/,ws://127.0.0.1:1/")]);
    assert!(
        stderr.contains("the backend 'ws://127.0.0.1:1/' is listed twice"),
        "{stderr}"
    );
    let ok = route("ws://127.0.0.1:1");
    for (flags, message) in [
        (
            &["--balance", "random"][..],
            "invalid balance 'random'; use round-robin",
        ),
        (
            &["--balance", "hash:header=a b"],
            "'a b' is not a valid header name",
        ),
        (
            &["--hash-bound", "1.5"],
            "--hash-bound needs a hash strategy",
        ),
        (
            &["--balance", "hash:ip", "--hash-bound", "0.5"],
            "invalid factor '0.5'",
        ),
        (&["--tries", "0"], "invalid tries '0'"),
        (&["--sticky-cookie", "a b"], "invalid cookie name 'a b'"),
        (&["--fail-timeout", "soon"], "invalid duration 'soon'"),
        (
            &["--health-check", "http:healthz"],
            "the path must start with '/'",
        ),
        (&["--health-check", "udp"], "invalid health check 'udp'"),
        (&["--health-interval", "1s"], "--health-check <CHECK>"),
        (
            &["--health-check", "tcp", "--health-fall", "0"],
            "--health-fall",
        ),
    ] {
        let stderr = refused(&[&["--route", &ok][..], flags].concat());
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
    }
}

/// A WebSocket backend on 127.0.0.1 that answers every text message with
/// its name, `:`, and the message.
struct EchoBackend {
    url: String,
    accept: JoinHandle<()>,
}

impl EchoBackend {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if let Message::Text(text) = message
                            && ws
                                .send(Message::text(format!("{name}:{text}")))
                                .await
                                .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, accept }
    }

    /// Close the listening socket (new connects are refused); open
    /// WebSockets stay.
    async fn stop_accepting(&mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A port on 127.0.0.1 where nothing listens (connects are refused): a
/// socket bound and never listening, so no one else gets the port while
/// the test holds it. Its `ws://` URL comes along.
fn closed_port() -> (socket2::Socket, String) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, format!("ws://{addr}/"))
}

/// The name of the backend that answers on `ws`.
async fn answered_by(ws: &mut Client) -> String {
    ws.send(Message::text("who")).await.unwrap();
    let Message::Text(text) = next(ws).await else {
        panic!("expected a text answer");
    };
    text.as_str()
        .strip_suffix(":who")
        .unwrap_or_else(|| panic!("unexpected answer {text:?}"))
        .to_owned()
}

/// The status page's table row of the backend at `url`.
fn row<'p>(page: &'p str, url: &str) -> &'p str {
    let cell = format!("<tr><td><code>{url}</code></td>");
    page.lines()
        .find(|line| line.starts_with(&cell))
        .unwrap_or_else(|| panic!("no row for {url}: {page}"))
}

/// The row of a primary backend of weight 1 with `open` tunnels, `health`
/// and not draining, up to the transitions.
fn primary(url: &str, open: usize, health: &str) -> String {
    format!(
        "<tr><td><code>{url}</code></td><td>primary</td><td>1</td><td>{open}</td>\
         <td>{health}</td><td>no</td>"
    )
}

#[tokio::test]
async fn round_robin_spreads_websockets_over_the_backends() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let gateway = Gateway::start(&[
        "--route",
        &format!("/={},{}", a.url, b.url),
        "--balance",
        "round-robin",
    ]);
    let mut open = Vec::new();
    let mut counts = BTreeMap::new();
    for _ in 0..10 {
        let mut ws = connect(gateway.addr, "/").await;
        *counts.entry(answered_by(&mut ws).await).or_insert(0) += 1;
        open.push(ws);
    }
    assert_eq!(counts, BTreeMap::from([("a".into(), 5), ("b".into(), 5)]));
    // The status page shows both, each holding five open tunnels.
    let page = get(gateway.addr, "/").await;
    assert!(page.contains("Balancing: round-robin"), "{page}");
    assert!(page.contains("Open tunnels: 10"), "{page}");
    for backend in [&a, &b] {
        let row = row(&page, &backend.url);
        assert!(row.starts_with(&primary(&backend.url, 5, "up")), "{row}");
    }
}

/// The status line of a WebSocket handshake through the gateway to `/`.
async fn status_of_handshake(addr: SocketAddr) -> String {
    handshake_status(addr, "/", "").await
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_another_backend() {
    // The closed port comes first, so round-robin picks it first.
    let (_port, dead) = closed_port();
    let live = EchoBackend::start("live").await;
    let routes = format!("/={dead},{}", live.url);
    let gateway = Gateway::start(&["--route", &routes]);
    let mut open = Vec::new();
    for _ in 0..6 {
        let mut ws = connect(gateway.addr, "/").await;
        assert_eq!(answered_by(&mut ws).await, "live");
        open.push(ws);
    }
    // The refused connect took the dead backend out (max-fails 1).
    let page = get(gateway.addr, "/").await;
    let dead_row = row(&page, &dead);
    assert!(
        dead_row.starts_with(&primary(&dead, 0, "down")),
        "{dead_row}"
    );
    let live_row = row(&page, &live.url);
    assert!(
        live_row.starts_with(&primary(&live.url, 6, "up")),
        "{live_row}"
    );
    drop((open, gateway));

    // With one try and no passive checks, every other handshake goes to
    // the closed port and fails.
    let gateway = Gateway::start(&["--route", &routes, "--tries", "1", "--max-fails", "0"]);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(status_of_handshake(gateway.addr).await);
    }
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 502",
            "HTTP/1.1 101",
            "HTTP/1.1 502",
            "HTTP/1.1 101"
        ]
    );
}

/// Open a WebSocket through the gateway as if forwarded for `client`.
async fn connect_for(addr: SocketAddr, client: &str) -> Client {
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    timeout(LIMIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
        .expect("handshake succeeds")
        .0
}

#[tokio::test]
async fn hashing_on_the_client_ip_keeps_each_client_on_one_backend() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let gateway = Gateway::start(&[
        "--route",
        &format!("/={},{}", a.url, b.url),
        "--balance",
        "hash:ip",
        "--trusted-proxy",
        "127.0.0.1/32",
    ]);
    let mut used = BTreeSet::new();
    for i in 1..=20 {
        let client = format!("10.0.0.{i}");
        let first = answered_by(&mut connect_for(gateway.addr, &client).await).await;
        let again = answered_by(&mut connect_for(gateway.addr, &client).await).await;
        assert_eq!(first, again, "client {client} moved");
        used.insert(first);
    }
    // Twenty clients on one backend: 1 in 500,000 by chance.
    assert_eq!(used.len(), 2, "{used:?}");
}

#[tokio::test]
async fn a_backend_failing_its_probes_is_taken_out_and_its_tunnels_closed() {
    let mut a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let gateway = Gateway::start(&[
        "--route",
        &format!("/={},{}", a.url, b.url),
        "--health-check",
        "ws:/",
        "--health-interval",
        "100ms",
        "--health-timeout",
        "1s",
        "--health-rise",
        "1",
        "--health-fall",
        "1",
        "--close-tunnels-when-down",
        "1s",
        // Only the probes may take a backend out, and nothing is retried.
        "--max-fails",
        "0",
        "--tries",
        "1",
    ]);
    let mut on_a = connect(gateway.addr, "/").await;
    assert_eq!(answered_by(&mut on_a).await, "a");

    a.stop_accepting().await;
    // The next probe is refused: `a` is down and its tunnel gets 1001.
    match next(&mut on_a).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    let page = get(gateway.addr, "/").await;
    let a_row = row(&page, &a.url);
    assert!(a_row.contains("<td>down</td>"), "{a_row}");
    for _ in 0..4 {
        let mut ws = connect(gateway.addr, "/").await;
        assert_eq!(answered_by(&mut ws).await, "b");
    }
}
