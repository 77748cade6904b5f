//! `wss://` backends: the proxy verifies the backend's certificate against
//! the configured roots and name, can present a client certificate, offers
//! ALPN `http/1.1`, and answers `502` with a log line that says why when
//! TLS fails. Health probes speak TLS the same way. Certificates are made
//! at run time (rcgen); no key is committed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};
use wsproxy::WebSocketProxyLayer;
use wsproxy::balance::{ActiveHealth, Backend, Backends, PassiveHealth, Probe};
use wsproxy::tls::BackendTls;
use wsproxy_test_support::{Ca, Captured, LIMIT, TlsBackend, wait_until, within};

// ---------------------------------------------------------------------
// The proxy, a client, captured logs.
// ---------------------------------------------------------------------

/// A proxy to `url` with `tls` (none: the defaults).
async fn proxy(url: &str, tls: Option<BackendTls>) -> SocketAddr {
    let mut layer = WebSocketProxyLayer::new(url.parse().unwrap());
    if let Some(tls) = tls {
        layer = layer.backend_tls(tls);
    }
    wsproxy_e2e::proxy_with(layer).await.0
}

/// Open a WebSocket through the proxy and echo one message; the status
/// of a refused handshake otherwise.
async fn echo_through(proxy: SocketAddr) -> Result<(), u16> {
    let connect = tokio_tungstenite::connect_async(format!("ws://{proxy}/echo"));
    let mut ws = match within("the handshake", connect).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(response)) => return Err(response.status().as_u16()),
        Err(e) => panic!("handshake: {e}"),
    };
    ws.send(Message::text("over TLS")).await.unwrap();
    let echo = within("the echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo, Message::text("over TLS"));
    ws.close(None).await.unwrap();
    Ok(())
}

/// The WARN line of the failed backend handshake.
fn failure_line(log: &Captured) -> String {
    log.lines()
        .into_iter()
        .find(|l| {
            l.contains("WARN")
                && l.contains("wsproxy::proxy")
                && l.contains("backend handshake failed")
        })
        .unwrap_or_else(|| panic!("no failure logged: {:#?}", log.lines()))
}

// ---------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_wss_backend_with_its_ca_added_echoes_and_was_offered_http_1_1_only() {
    let ca = Ca::new("test CA");
    let backend = TlsBackend::start(&ca.leaf(&["localhost"]), None).await;
    let tls = BackendTls::new().add_ca_pem(&ca.pem).unwrap();
    let proxy = proxy(&backend.url("localhost"), Some(tls)).await;

    assert_eq!(echo_through(proxy).await, Ok(()));
    let hello = backend.last_hello();
    // The backend offers h2 too; the proxy offered HTTP/1.1 alone.
    assert_eq!(hello.alpn, ["http/1.1"]);
    assert_eq!(hello.agreed.as_deref(), Some("http/1.1"));
    // SNI is the URL's host.
    assert_eq!(hello.sni.as_deref(), Some("localhost"));
    assert_eq!(backend.sessions.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unknown_ca_is_a_502_and_a_warning_that_says_why() {
    let (log, _guard) = Captured::start();
    let ca = Ca::new("test CA");
    let backend = TlsBackend::start(&ca.leaf(&["localhost"]), None).await;

    // Another CA than the backend's.
    let other = BackendTls::empty()
        .add_ca_pem(&Ca::new("other CA").pem)
        .unwrap();
    let proxy_other = proxy(&backend.url("localhost"), Some(other)).await;
    assert_eq!(echo_through(proxy_other).await, Err(502));
    let line = failure_line(&log);
    assert!(line.contains("status=502"), "{line}");
    assert!(
        line.contains("TLS with the backend failed: invalid peer certificate: UnknownIssuer"),
        "{line}"
    );
    assert!(line.contains(&backend.url("localhost")), "{line}");

    // The defaults (Mozilla's roots) do not know a private CA either.
    let proxy_default = proxy(&backend.url("localhost"), None).await;
    assert_eq!(echo_through(proxy_default).await, Err(502));
    assert_eq!(backend.sessions.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_502_unless_that_name_is_set() {
    let (log, _guard) = Captured::start();
    let ca = Ca::new("test CA");
    let backend = TlsBackend::start(&ca.leaf(&["chat.internal"]), None).await;
    let tls = BackendTls::empty().add_ca_pem(&ca.pem).unwrap();

    let by_host = proxy(&backend.url("localhost"), Some(tls.clone())).await;
    assert_eq!(echo_through(by_host).await, Err(502));
    let line = failure_line(&log);
    assert!(
        line.contains(r#"invalid peer certificate: certificate not valid for name "localhost""#),
        "{line}"
    );
    assert_eq!(backend.last_hello().sni.as_deref(), Some("localhost"));

    // Reached by address: the certificate does not name 127.0.0.1 either,
    // and an IP address is not sent as SNI.
    let by_address = proxy(&backend.url("127.0.0.1"), Some(tls.clone())).await;
    assert_eq!(echo_through(by_address).await, Err(502));
    assert_eq!(backend.last_hello().sni, None);

    let named = tls.server_name("chat.internal").unwrap();
    let by_name = proxy(&backend.url("127.0.0.1"), Some(named)).await;
    assert_eq!(echo_through(by_name).await, Ok(()));
    assert_eq!(backend.last_hello().sni.as_deref(), Some("chat.internal"));
}

#[tokio::test]
async fn a_backend_that_demands_a_client_certificate_gets_the_configured_one() {
    let (log, _guard) = Captured::start();
    let ca = Ca::new("test CA");
    let clients = Ca::new("client CA");
    let backend = TlsBackend::start(&ca.leaf(&["localhost"]), Some(&clients.pem)).await;
    let tls = BackendTls::empty().add_ca_pem(&ca.pem).unwrap();

    let without = proxy(&backend.url("localhost"), Some(tls.clone())).await;
    assert_eq!(echo_through(without).await, Err(502));
    let line = failure_line(&log);
    assert!(
        line.contains("TLS with the backend failed: received fatal alert: CertificateRequired"),
        "{line}"
    );
    let b = backend.clone();
    assert!(wait_until(LIMIT, || b.tls_failures.load(Ordering::SeqCst) == 1).await);

    // A certificate of another CA is refused too.
    let stranger = Ca::new("stranger CA").leaf(&["proxy"]);
    let wrong = tls
        .clone()
        .client_cert_pem(&stranger.cert, &stranger.key)
        .unwrap();
    let proxy_wrong = proxy(&backend.url("localhost"), Some(wrong)).await;
    assert_eq!(echo_through(proxy_wrong).await, Err(502));

    let mine = clients.leaf(&["proxy"]);
    let with = tls.client_cert_pem(&mine.cert, &mine.key).unwrap();
    let proxy_with = proxy(&backend.url("localhost"), Some(with)).await;
    assert_eq!(echo_through(proxy_with).await, Ok(()));
    assert_eq!(backend.sessions.load(Ordering::SeqCst), 1);
}

/// Probes every 50 ms; one failure marks down, one success up.
fn probing(url: &str) -> Backends {
    Backends::new([url.parse::<Backend>().unwrap()])
        .active_health(
            ActiveHealth::new(Probe::websocket("/"))
                .interval(Duration::from_millis(50))
                .timeout(Duration::from_secs(2))
                .fall(1)
                .rise(1),
        )
        .passive_health(PassiveHealth::disabled())
}

fn up(set: &Backends) -> bool {
    set.status()[0].up
}

#[tokio::test]
async fn websocket_probes_speak_tls_with_the_sets_settings() {
    let ca = Ca::new("test CA");
    let backend = TlsBackend::start(&ca.leaf(&["localhost"]), None).await;
    let right = BackendTls::empty().add_ca_pem(&ca.pem).unwrap();
    let wrong = BackendTls::empty()
        .add_ca_pem(&Ca::new("other CA").pem)
        .unwrap();

    // A wrong CA: the probe's TLS handshake fails, the backend goes down.
    let set = probing(&backend.url("localhost")).tls(wrong);
    let layer = WebSocketProxyLayer::with_backends(set.clone());
    let s = set.clone();
    assert!(wait_until(LIMIT, || !up(&s)).await, "never down");
    assert_eq!(backend.sessions.load(Ordering::SeqCst), 0);
    // The right one, set on the running set: probes pass, it comes back.
    let _ = set.clone().tls(right.clone());
    assert!(wait_until(LIMIT, || up(&s)).await, "never up");
    assert!(backend.sessions.load(Ordering::SeqCst) >= 1);
    assert_eq!(set.status()[0].transitions, 2);
    drop(layer);

    // Set through the layer after its probes started: they use it.
    let sessions = backend.sessions.load(Ordering::SeqCst);
    let set = probing(&backend.url("localhost"));
    let layer = WebSocketProxyLayer::with_backends(set.clone()).backend_tls(right);
    let b = backend.clone();
    assert!(
        wait_until(LIMIT, || b.sessions.load(Ordering::SeqCst) >= sessions + 3).await,
        "no probe passed"
    );
    assert!(up(&set));
    assert_eq!(set.status()[0].transitions, 0, "never down");
    assert_eq!(backend.last_hello().alpn, ["http/1.1"]);
    drop(layer);
}

#[tokio::test]
async fn a_tls_failure_moves_on_to_another_backend_and_counts_against_the_first() {
    let ca = Ca::new("test CA");
    // `bad` has a certificate for another name, `good` the right one.
    let bad = TlsBackend::start(&ca.leaf(&["elsewhere.test"]), None).await;
    let good = TlsBackend::start(&ca.leaf(&["localhost"]), None).await;
    let set = Backends::new([
        bad.url("localhost").parse::<Backend>().unwrap(),
        good.url("localhost").parse().unwrap(),
    ])
    .tls(BackendTls::empty().add_ca_pem(&ca.pem).unwrap());
    let (proxy, _) = wsproxy_e2e::proxy_with(WebSocketProxyLayer::with_backends(set.clone())).await;

    for _ in 0..4 {
        assert_eq!(echo_through(proxy).await, Ok(()));
    }
    assert_eq!(good.sessions.load(Ordering::SeqCst), 4);
    assert_eq!(bad.sessions.load(Ordering::SeqCst), 0);
    // Tried once, then passively down: skipped.
    assert_eq!(bad.hellos.lock().unwrap().len(), 1);
    let bad_status = set.status().into_iter().find(|s| !s.up);
    assert_eq!(
        bad_status.map(|s| s.upstream.to_string()),
        Some(bad.url("localhost"))
    );
}

#[tokio::test]
async fn tls_goes_over_a_connector_of_the_users_for_a_wss_backend() {
    let ca = Ca::new("test CA");
    let backend = TlsBackend::start(&ca.leaf(&["localhost"]), None).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let addr = backend.addr;
    // A hop of the user's: plain TCP to the backend; TLS is the proxy's.
    let hop = wsproxy::connect::Connector::new(tower::service_fn(move |_: wsproxy::Upstream| {
        counted.fetch_add(1, Ordering::SeqCst);
        tokio::net::TcpStream::connect(addr)
    }));
    let layer = WebSocketProxyLayer::new(backend.url("localhost").parse().unwrap())
        .backend_tls(BackendTls::new().add_ca_pem(&ca.pem).unwrap())
        .connector(hop);
    let proxy = wsproxy_e2e::proxy_with(layer).await.0;
    echo_through(proxy).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let hello = backend.last_hello();
    assert_eq!(hello.sni.as_deref(), Some("localhost"));
    assert_eq!(backend.sessions.load(Ordering::SeqCst), 1);
}

/// A connection to a backend that counts the reads it served and their
/// bytes.
#[derive(Debug)]
struct Counting {
    tcp: tokio::net::TcpStream,
    reads: Arc<Reads>,
}

#[derive(Debug, Default)]
struct Reads {
    count: AtomicUsize,
    bytes: AtomicUsize,
}

impl Reads {
    /// Bytes per read (that got any).
    fn average(&self) -> usize {
        self.bytes.load(Ordering::SeqCst) / self.count.load(Ordering::SeqCst).max(1)
    }
}

impl tokio::io::AsyncRead for Counting {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        if got > 0 {
            self.reads.count.fetch_add(1, Ordering::SeqCst);
            self.reads.bytes.fetch_add(got, Ordering::SeqCst);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Counting {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_wss_backend_is_read_in_larger_pieces_than_rustls_asks_for() {
    // rustls asks for 4 KiB more than it holds at a time (8 KiB a read
    // on average here, 8 reads for each 64 KiB echo); the proxy reads
    // beneath it what has arrived, up to 32 KiB (19 KiB on average, 3 or
    // 4 reads an echo). The runtime has one thread: the backend's echo
    // is written whole before the proxy reads it.
    let ca = Ca::new("test CA");
    let backend = TlsBackend::start(&ca.leaf(&["localhost"]), None).await;
    let reads = Arc::new(Reads::default());
    let counted = reads.clone();
    let addr = backend.addr;
    let hop = wsproxy::connect::Connector::new(tower::service_fn(move |_: wsproxy::Upstream| {
        let reads = counted.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            Ok::<_, std::io::Error>(Counting { tcp, reads })
        }
    }));
    let layer = WebSocketProxyLayer::new(backend.url("localhost").parse().unwrap())
        .backend_tls(BackendTls::new().add_ca_pem(&ca.pem).unwrap())
        .connector(hop);
    let proxy = wsproxy_e2e::proxy_with(layer).await.0;
    let connect = tokio_tungstenite::connect_async(format!("ws://{proxy}/echo"));
    let (mut ws, _) = within("the handshake", connect).await.unwrap();
    let message: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    for _ in 0..8 {
        ws.send(Message::binary(message.clone())).await.unwrap();
        let echo = within("the echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echo.into_data(), message);
    }
    ws.close(None).await.unwrap();
    let average = reads.average();
    assert!(
        average >= 12 * 1024,
        "the backend's connection was read {average} bytes at a time on average"
    );
}
