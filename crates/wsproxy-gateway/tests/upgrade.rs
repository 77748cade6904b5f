//! The binary upgrade (SIGUSR2) under a steady handshake load: the new
//! process takes the listening sockets over, the old one drains with
//! Close 1001, and no handshake fails.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsproxy_test_support::{Backend, LIMIT};

use support::Gateway;

/// Kills the new process (a PID the old one logged, started by it for
/// this test) when the test ends, however it ends.
struct Reap(Option<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The PID of the new process, from the old one's log.
fn new_pid(log: &str) -> u32 {
    log.lines()
        .find(|l| l.contains("new process started"))
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no PID in:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr2_hands_the_sockets_over_without_a_failed_handshake() {
    let backend = Backend::start().await;
    let route = format!("/a={}", backend.url());
    let mut old = Gateway::start(&[
        "--route",
        &route,
        "--workers",
        "2",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = old.admin_addr();
    let url = format!("ws://{}/a", old.addr);
    let mut tunnel = wsproxy_test_support::connect(&url).await;
    // Handshakes without a pause, before, during and after the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop, done, failed) =
                (url.clone(), stop.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut errors = Vec::new();
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match timeout(LIMIT, tokio_tungstenite::connect_async(&url)).await {
                        Ok(Ok((mut ws, _))) => {
                            let _ = ws.close(None).await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(e.to_string());
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push("timed out".into());
                        }
                    }
                }
                errors
            })
        })
        .collect();
    let wait_for = |n: u64| {
        let done = done.clone();
        async move {
            timeout(LIMIT, async {
                while done.load(Ordering::Relaxed) < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("handshakes go on");
        }
    };
    wait_for(1000).await;
    // Twice, as an impatient operator would: one new process only.
    old.signal("USR2");
    old.signal("USR2");
    let log = tokio::task::block_in_place(|| old.wait_log("new process started"));
    let pid = new_pid(&log);
    let _reap = Reap(Some(pid));
    // The old process drains: its tunnel gets Close 1001, then it exits.
    match timeout(LIMIT, tunnel.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(close.code, CloseCode::Away),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    drop(tunnel);
    let status = tokio::task::block_in_place(|| old.wait_exit(LIMIT)).expect("the old one exited");
    assert!(status.success(), "{status:?}");
    let log = format!("{log}\n{}", old.log());
    assert_eq!(log.matches("new process started").count(), 1, "{log}");
    // The new one serves on the same port, the admin listener too.
    let before = done.load(Ordering::Relaxed);
    wait_for(before + 1000).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for task in loops {
        errors.extend(task.await.unwrap());
    }
    assert!(
        errors.is_empty(),
        "{} failed: {errors:?}\n{log}",
        errors.len()
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    let mut ws = wsproxy_test_support::connect(&url).await;
    ws.close(None).await.unwrap();
    let status = tokio::net::TcpStream::connect(admin).await;
    assert!(status.is_ok(), "the admin listener was not handed over");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the new process is not running"
    );
}

/// Every socket is handed over: two public listeners (each with its own
/// sockets per worker, one of them TLS) and the redirect listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr2_hands_over_every_listener() {
    use wsproxy_test_support::{Leaf, PemFiles, handshake, raw, read_head};
    let backend = Backend::start().await;
    let cert = Leaf::localhost();
    let folder = support::Folder::new();
    let text = format!(
        "workers = 2\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\n\
         [listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [redirect]\naddress = \"127.0.0.1:0\"\n\
         [[routes]]\nprefix = \"/a\"\nupstream = \"one\"\n\n\
         [upstreams.one]\nbackends = [\"{}\"]\n",
        cert.files().cert.display(),
        cert.files().key.display(),
        backend.url()
    );
    let file = folder.write("wsgate.toml", &text);
    let mut old = Gateway::start_bare(&["--config", PemFiles::arg(&file)]);
    let plain = old.addr;
    let tls = old.next_listen_addr();
    let redirect = old.redirect_addr();
    old.signal("USR2");
    let log = tokio::task::block_in_place(|| old.wait_log("new process started"));
    let pid = new_pid(&log);
    let _reap = Reap(Some(pid));
    let status = tokio::task::block_in_place(|| old.wait_exit(LIMIT)).expect("the old one exited");
    assert!(status.success(), "{status:?}");
    // Only the new process is left to answer, on every socket.
    let mut stream = raw(plain, handshake("/a", "").as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 101);
    let mut stream = cert.connect(tls, &[b"http/1.1"]).await;
    assert_eq!(
        support::ask(&mut stream, &handshake("/a", "")).await.status,
        101
    );
    let mut stream = raw(redirect, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 308);
    assert_eq!(
        head.header("location"),
        Some(format!("https://h:{}/x", tls.port()).as_str())
    );
}

/// The file read again by the new process may list the listeners in
/// another order, or drop one: sockets go to the listener of their
/// address, never by position (a TLS socket does not become the plain
/// one), and a listener dropped is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr2_matches_sockets_to_listeners_by_address() {
    use wsproxy_test_support::{Leaf, PemFiles, handshake, raw, read_head};
    let backend = Backend::start().await;
    let cert = Leaf::localhost();
    let folder = support::Folder::new();
    let tls_table = format!(
        "[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.files().cert.display(),
        cert.files().key.display()
    );
    let routes = format!(
        "[[routes]]\nprefix = \"/a\"\nupstream = \"one\"\n\n\
         [upstreams.one]\nbackends = [\"{}\"]\n",
        backend.url()
    );
    let listen = |address: &str| format!("[[listen]]\naddress = \"{address}\"\n");
    let text = format!(
        "workers = 2\n{}{}{}{tls_table}{routes}",
        listen("127.0.0.1:0"),
        listen("127.0.0.1:0"),
        listen("127.0.0.1:0"),
    );
    let file = folder.write("wsgate.toml", &text);
    let mut old = Gateway::start_bare(&["--config", PemFiles::arg(&file)]);
    let plain = old.addr;
    let dropped = old.next_listen_addr();
    let tls = old.next_listen_addr();
    // Now: the TLS listener first, the plain one second, the third gone.
    let text = format!(
        "workers = 2\n{}{tls_table}{}{routes}",
        listen(&tls.to_string()),
        listen(&plain.to_string())
    );
    folder.write("wsgate.toml", &text);
    old.signal("USR2");
    let log = tokio::task::block_in_place(|| old.wait_log("new process started"));
    let _reap = Reap(Some(new_pid(&log)));
    let status = tokio::task::block_in_place(|| old.wait_exit(LIMIT)).expect("the old one exited");
    assert!(status.success(), "{status:?}");
    let mut stream = raw(plain, handshake("/a", "").as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 101);
    let mut stream = cert.connect(tls, &[b"http/1.1"]).await;
    assert_eq!(
        support::ask(&mut stream, &handshake("/a", "")).await.status,
        101
    );
    assert!(
        tokio::net::TcpStream::connect(dropped).await.is_err(),
        "the listener no longer configured still accepts"
    );
}
