//! The `wsgate` binary as a user runs it: flags, the demo, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

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
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
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
    let stderr = refused(&[]);
    assert!(stderr.contains("no route"), "{stderr}");
}

#[tokio::test]
async fn demo_echoes_chats_and_serves_a_page() {
    let gateway = Gateway::start(&["--demo"]);
    let addr = gateway.addr;

    let (mut echo, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/echo"))
        .await
        .unwrap();
    echo.send(Message::text("ping me")).await.unwrap();
    let got = timeout(LIMIT, echo.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Message::text("ping me"));

    let (mut alice, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat"))
        .await
        .unwrap();
    let (mut bob, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/chat"))
        .await
        .unwrap();
    // Both are subscribed once each has heard its own first message.
    alice.send(Message::text("alice here")).await.unwrap();
    let heard = timeout(LIMIT, alice.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(heard, Message::text("alice here"));
    bob.send(Message::text("hi alice")).await.unwrap();
    loop {
        let heard = timeout(LIMIT, alice.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if heard == Message::text("hi alice") {
            break;
        }
    }

    let mut http = tokio::net::TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    timeout(LIMIT, http.read_to_string(&mut page))
        .await
        .unwrap()
        .unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("<code>/echo</code>") && page.contains("Open tunnels: 3"),
        "{page}"
    );
}

#[tokio::test]
async fn sigterm_closes_open_tunnels_within_the_shutdown_timeout() {
    let mut gateway = Gateway::start(&["--demo", "--shutdown-timeout", "1s"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", gateway.addr))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap();

    let start = Instant::now();
    gateway.terminate();
    // The open tunnel is closed by the deadline, and the process exits.
    let ended = timeout(LIMIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "the tunnel must be closed");
    let status = tokio::task::spawn_blocking(move || gateway.wait_exit(LIMIT))
        .await
        .unwrap()
        .expect("wsgate exits after SIGTERM");
    assert!(status.success(), "{status}");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "the tunnel had its grace period: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
}
