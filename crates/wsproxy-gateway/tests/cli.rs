//! The `wsgate` binary as a user runs it: flags, the demo, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
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
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wsgate");
        // Read the first line on a thread, so the wait is bounded, and keep
        // reading so the gateway never writes to a closed pipe.
        let stdout = child.stdout.take().unwrap();
        let (first, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let _ = first.send(line.unwrap_or_default());
            }
        });
        let line = match lines.recv_timeout(LIMIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wsgate printed no address: {e}");
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
