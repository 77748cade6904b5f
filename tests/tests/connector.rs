//! The connector seam: connections to backends go through a
//! `Service<Upstream>` — a Unix socket, a hop of the user's, a test
//! double — for handshakes and health probes alike.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use wsproxy::balance::{ActiveHealth, Backends, Probe};
use wsproxy::connect::Connector;
use wsproxy::{Upstream, WebSocketProxyLayer};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

/// A WebSocket echo backend on a Unix socket in a fresh folder; it records
/// the `Host` of each handshake.
async fn unix_backend() -> (PathBuf, Arc<std::sync::Mutex<Vec<String>>>) {
    let dir = std::env::temp_dir().join(format!(
        "wsproxy-connector-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("backend.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let hosts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = hosts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)]
                let record = |req: &Request, res: Response| {
                    let host = req.headers()["host"].to_str().unwrap().to_owned();
                    seen.lock().unwrap().push(host);
                    Ok(res)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (path, hosts)
}

/// A number unlikely to repeat between runs.
fn unique() -> u64 {
    use std::hash::{BuildHasher, Hasher, RandomState};
    RandomState::new().build_hasher().finish()
}

/// A connector to the Unix socket at `path` whatever the upstream, that
/// counts its calls.
fn unix_connector(path: PathBuf, calls: Arc<AtomicUsize>) -> Connector {
    Connector::new(tower::service_fn(move |_: Upstream| {
        calls.fetch_add(1, Ordering::SeqCst);
        UnixStream::connect(path.clone())
    }))
}

#[tokio::test]
async fn a_unix_socket_backend_is_reached_through_a_connector() {
    let (path, hosts) = unix_backend().await;
    let calls = Arc::new(AtomicUsize::new(0));
    // The URL names the Host and path the backend is sent; the connector
    // decides where the bytes go.
    let layer = WebSocketProxyLayer::new("ws://chat.internal/ws".parse().unwrap())
        .connector(unix_connector(path.clone(), calls.clone()));
    let (proxy, tunnels) = proxy_with(layer).await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    echo(&mut ws, Message::text("over a Unix socket")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(hosts.lock().unwrap().as_slice(), ["chat.internal"]);
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn health_probes_go_through_the_connector_too() {
    let (path, _) = unix_backend().await;
    let calls = Arc::new(AtomicUsize::new(0));
    // No TCP listener anywhere: a probe that connected over TCP would
    // find the backend down.
    let backends = Backends::new(["ws://chat.internal/".parse().unwrap()])
        .connector(unix_connector(path.clone(), calls.clone()))
        .active_health(
            ActiveHealth::new(Probe::websocket("/"))
                .interval(Duration::from_millis(50))
                .fall(1)
                .rise(1),
        );
    let layer = WebSocketProxyLayer::with_backends(backends.clone());
    let (proxy, _) = proxy_with(layer).await;
    assert!(
        wait_until(LIMIT, || calls.load(Ordering::SeqCst) >= 3).await,
        "the probes used the connector"
    );
    assert!(backends.status()[0].up, "{:?}", backends.status());
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    echo(&mut ws, Message::text("probed and served")).await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn a_connector_that_fails_is_a_502_with_its_error_logged() {
    let (captured, _default) = Captured::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let refusing = Connector::new(tower::service_fn(move |upstream: Upstream| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            Err::<TcpStream, _>(std::io::Error::other(format!(
                "test double: no route to {upstream}"
            )))
        }
    }));
    let layer =
        WebSocketProxyLayer::new("ws://chat.internal/".parse().unwrap()).connector(refusing);
    let (proxy, tunnels) = proxy_with(layer).await;
    let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 502);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one backend, one try");
    assert_eq!(tunnels.open(), 0);
    let log = captured.text();
    assert!(
        log.contains("test double: no route to ws://chat.internal/"),
        "{log}"
    );
}
