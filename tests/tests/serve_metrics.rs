//! `wsproxy::serve` counts what it does to client connections: timeouts,
//! shed connections, and `accept` failures when descriptors run out (one
//! test: the recorder and the descriptor limit are process-wide).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wsproxy::serve::{ConnectionLimits, Timeouts};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

/// A metric: its name and labels.
type Id = (String, Vec<(String, String)>);

/// Running totals of every counter and gauge: a snapshot of the
/// debugging recorder drains what changed since the last one.
struct Totals {
    snapshotter: Snapshotter,
    /// (name, labels) -> total.
    seen: Vec<(Id, f64)>,
}

impl Totals {
    /// The total of `name` over the keys that have `label` (any with an
    /// empty label name).
    fn get(&mut self, name: &str, label: (&str, &str)) -> f64 {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let delta = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => 0.0,
            };
            let id: Id = (
                key.key().name().to_owned(),
                key.key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect::<Vec<_>>(),
            );
            match self.seen.iter_mut().find(|(seen, _)| *seen == id) {
                Some((_, total)) => *total += delta,
                None => self.seen.push((id, delta)),
            }
        }
        self.seen
            .iter()
            .filter(|((n, labels), _)| {
                n == name
                    && (label.0.is_empty()
                        || labels.iter().any(|(k, v)| k == label.0 && v == label.1))
            })
            .map(|(_, total)| total)
            .sum()
    }
}

/// Descriptors open in this process.
fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");
    let mut totals = Totals {
        snapshotter,
        seen: Vec::new(),
    };
    let mut total = |name: &str, label: (&str, &str)| totals.get(name, label);

    // A timeout, by state.
    let plain = Router::new().route("/", get(|| async { "plain" }));
    let addr = serve_with(
        plain.clone(),
        Timeouts::new().detect(Duration::from_millis(100)),
        ConnectionLimits::new(),
    )
    .await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    within(
        "the silent connection to be closed",
        silent.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(
        wait_until(LIMIT, || total(
            "wsproxy_connections_timed_out_total",
            ("state", "detect")
        ) == 1.0)
        .await
    );

    // Shed to make room.
    let addr = serve_with(
        plain,
        Timeouts::new(),
        ConnectionLimits::new().max_connections(1),
    )
    .await;
    let mut oldest = TcpStream::connect(addr).await.unwrap();
    // Held open: counted in the gauge.
    assert!(
        wait_until(LIMIT, || total("wsproxy_connections_open", ("", "")) == 1.0).await,
        "the open connections gauge counts a held connection"
    );
    let mut speaking = TcpStream::connect(addr).await.unwrap();
    speaking
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1];
    within(
        "the new client to be served",
        speaking.read_exact(&mut first),
    )
    .await
    .unwrap();
    within("the oldest to be closed", oldest.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        total(
            "wsproxy_connections_shed_total",
            ("reason", "max_connections")
        ) >= 1.0
    );
    speaking.shutdown().await.unwrap();

    // Out of descriptors: requests that wait for a permit hold theirs.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let app = Router::new().route(
        "/",
        get({
            let release = release.clone();
            move || async move {
                release.acquire().await.unwrap().forget();
                "released"
            }
        }),
    );
    let addr = serve_with(
        app,
        Timeouts::new(),
        ConnectionLimits::new().max_connections(100_000),
    )
    .await;
    // The clients' sockets are made before the limit drops (connecting
    // takes no new descriptor); each accepted one takes one of the
    // server's.
    let sockets: Vec<TcpSocket> = (0..60).map(|_| TcpSocket::new_v4().unwrap()).collect();
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    rlimit::setrlimit(rlimit::Resource::NOFILE, open_descriptors() + 20, hard).unwrap();
    let mut clients = Vec::new();
    for socket in sockets {
        let mut stream = socket.connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        clients.push(stream);
    }
    assert!(
        wait_until(LIMIT, || total(
            "wsproxy_accept_errors_total",
            ("kind", "descriptors")
        ) >= 1.0)
        .await,
        "accept failures counted"
    );
    assert!(
        wait_until(LIMIT, || total(
            "wsproxy_connections_refused_total",
            ("reason", "descriptors")
        ) >= 1.0)
        .await,
        "a client answered 503 from the reserve"
    );
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).unwrap();
    release.add_permits(1000);
    drop(clients);
    // Every connection ends: the gauge is back to zero.
    assert!(
        wait_until(LIMIT, || total("wsproxy_connections_open", ("", "")) == 0.0).await,
        "open connections gauge"
    );
}
