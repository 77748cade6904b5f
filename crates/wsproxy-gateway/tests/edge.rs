//! `wsgate` at the edge: behind an L4 load balancer that speaks the
//! PROXY protocol; HSTS on TLS and a plain listener redirecting to it.

mod support;

use std::net::SocketAddr;

use wsproxy_test_support::{
    Backend, LIMIT, Leaf, PemFiles, handshake, proxy_v1, proxy_v2, raw, read_head, read_to_close,
};

use support::{Folder, Gateway, ask, run};

/// A gateway on `extra` TOML with one route `/a` to `backend`.
fn start(folder: &Folder, extra: &str, backend: &Backend) -> Gateway {
    let text = format!(
        "workers = 1\n{extra}\n[[routes]]\nprefix = \"/a\"\nupstream = \"one\"\n\n\
         [upstreams.one]\nbackends = [\"{}\"]\n",
        backend.url()
    );
    let file = folder.write("wsgate.toml", &text);
    Gateway::start(&["--config", PemFiles::arg(&file)])
}

/// A WebSocket handshake for `/a` after `header`; its status, and the
/// connection (open while the tunnel is).
async fn handshake_after(gateway: &Gateway, header: &[u8]) -> (u16, tokio::net::TcpStream) {
    let mut sent = header.to_vec();
    sent.extend_from_slice(handshake("/a", "").as_bytes());
    let mut stream = raw(gateway.addr, &sent).await;
    (read_head(&mut stream).await.status, stream)
}

/// The client a PROXY header names (v1 and v2, IPv4 and IPv6) is the one
/// the backend is told of, the one the access log shows and the one the
/// per-IP admission limit counts, though every connection comes from
/// 127.0.0.1.
#[tokio::test]
async fn the_proxy_protocol_names_the_client_for_forwarding_limits_and_logs() {
    let backend = Backend::start().await;
    let folder = Folder::new();
    let gateway = start(
        &folder,
        "[listen]\nproxy_protocol = true\nproxy_protocol_from = [\"127.0.0.0/8\"]\n\
         [admission]\nmax_conns_per_ip = 1\n",
        &backend,
    );
    let v4: SocketAddr = "203.0.113.7:51000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::7]:51000".parse().unwrap();
    let mut open = Vec::new();
    for (header, expected) in [(proxy_v1(v4), "203.0.113.7"), (proxy_v2(v6), "2001:db8::7")] {
        let (status, stream) = handshake_after(&gateway, &header).await;
        assert_eq!(status, 101);
        assert_eq!(backend.last_headers()["x-forwarded-for"], expected);
        open.push(stream);
    }
    // 203.0.113.7 has its one tunnel: refused, whichever version says so.
    let (status, _) = handshake_after(&gateway, &proxy_v2(v4)).await;
    assert_eq!(status, 429);
    // Another client through the same balancer is not.
    let (status, _) = handshake_after(&gateway, &proxy_v1("198.51.100.1:9".parse().unwrap())).await;
    assert_eq!(status, 101);
    let log = gateway.wait_log("429 - \"-\" \"-\" rt=");
    assert!(
        log.lines().any(|l| l.starts_with("203.0.113.7 - - [")
            && l.contains("\"GET /a HTTP/1.1\" 429 ")
            && l.contains("reason=\"connection limit per client reached\"")),
        "{log}"
    );
    // Each tunnel's line when it ends.
    drop(open);
    let tunnel = |log: &str, client: &str| {
        log.lines()
            .any(|l| l.starts_with(&format!("{client} - - [")) && l.contains("\" 101 "))
    };
    let start = std::time::Instant::now();
    loop {
        let log = gateway.log();
        if tunnel(&log, "203.0.113.7") && tunnel(&log, "2001:db8::7") {
            break;
        }
        assert!(start.elapsed() < LIMIT, "no tunnel lines:\n{log}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Without a header, with a broken one, from a peer not allowed to send
/// one: closed, and logged. A listener without the protocol answers a
/// header with 400.
#[tokio::test]
async fn proxy_headers_are_refused_where_not_expected() {
    let backend = Backend::start().await;
    let folder = Folder::new();
    let gateway = start(&folder, "[listen]\nproxy_protocol = true\n", &backend);
    let mut plain = raw(gateway.addr, handshake("/a", "").as_bytes()).await;
    assert!(read_to_close(&mut plain).await.is_empty());
    gateway.wait_log("PROXY protocol: connection closed");

    let elsewhere = Folder::new();
    let strict = start(
        &elsewhere,
        "[listen]\nproxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\"]\n",
        &backend,
    );
    let mut sent = proxy_v1("203.0.113.7:1".parse().unwrap());
    sent.extend_from_slice(handshake("/a", "").as_bytes());
    let mut stranger = raw(strict.addr, &sent).await;
    assert!(read_to_close(&mut stranger).await.is_empty());
    let log = strict.wait_log("may not send a PROXY header");
    assert!(log.contains("peer=127.0.0.1:"), "{log}");

    let other = Folder::new();
    let without = start(&other, "", &backend);
    let (status, _) = handshake_after(&without, &proxy_v1("203.0.113.7:1".parse().unwrap())).await;
    assert_eq!(status, 400);
    assert_eq!(backend.connections(), 0);
}

/// On TLS, `Strict-Transport-Security` with the configured value, on
/// plain answers and 101s alike; the redirect listener answers any method
/// with 308 to the same host, path and query over https on the TLS port.
#[tokio::test]
async fn hsts_on_tls_and_plain_http_redirected_to_https() {
    let backend = Backend::start().await;
    let cert = Leaf::localhost();
    let folder = Folder::new();
    let gateway = start(
        &folder,
        &format!(
            "[listen]\nhsts = \"max-age=31536000; includeSubDomains\"\n\
             [listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [redirect]\naddress = \"127.0.0.1:0\"\n",
            cert.files().cert.display(),
            cert.files().key.display()
        ),
        &backend,
    );
    let redirect = gateway.redirect_addr();
    for request in [
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
        handshake("/a", ""),
    ] {
        let mut tls = cert.connect(gateway.addr, &[b"http/1.1"]).await;
        let head = ask(&mut tls, &request).await;
        assert!(head.status == 200 || head.status == 101, "{head:?}");
        assert_eq!(
            head.header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains"),
            "{head:?}"
        );
    }
    let port = gateway.addr.port();
    for (request, location) in [
        (
            "GET /a/b?x=1&y HTTP/1.1\r\nHost: example.com\r\n\r\n",
            format!("https://example.com:{port}/a/b?x=1&y"),
        ),
        (
            "POST /form HTTP/1.1\r\nHost: example.com:80\r\nContent-Length: 2\r\n\r\nhi",
            format!("https://example.com:{port}/form"),
        ),
    ] {
        let mut plain = tokio::net::TcpStream::connect(redirect).await.unwrap();
        let head = ask(&mut plain, request).await;
        assert_eq!(head.status, 308, "{head:?}");
        assert_eq!(head.header("location"), Some(location.as_str()));
        assert_eq!(head.header("strict-transport-security"), None);
    }
    // Without a Host there is nowhere to send it.
    let mut plain = tokio::net::TcpStream::connect(redirect).await.unwrap();
    let head = ask(&mut plain, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(head.status, 400);
}

/// HSTS and the redirect are for TLS listeners: `--check` says so.
#[test]
fn hsts_and_the_redirect_need_tls() {
    let folder = Folder::new();
    let file = folder.write(
        "wsgate.toml",
        "[listen]\nhsts = \"max-age=60\"\n[redirect]\naddress = \"127.0.0.1:0\"\n",
    );
    let (code, stderr) = run(&["--check", "--config", PemFiles::arg(&file)]);
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [
        "listen.hsts: Strict-Transport-Security is for TLS listeners",
        "redirect.address: a redirect to https needs a TLS listener",
    ] {
        assert!(stderr.contains(expected), "{expected}:\n{stderr}");
    }
    let file = folder.write("wsgate.toml", "[listen]\nhsts = \"includeSubDomains\"\n");
    let (_, stderr) = run(&["--check", "--config", PemFiles::arg(&file)]);
    assert!(stderr.contains("has no max-age=SECONDS"), "{stderr}");
}

/// Several public listeners, nginx's `listen 80; listen 443 ssl;`: each
/// with its own TLS, HTTP/2 and PROXY protocol, all serving the same
/// routes; HSTS only on answers over TLS.
#[tokio::test]
async fn several_listeners_each_with_its_own_settings() {
    let backend = Backend::start().await;
    let cert = Leaf::localhost();
    let folder = Folder::new();
    let text = format!(
        "workers = 2\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nhttp2 = false\n\
         hsts = \"max-age=60\"\n\
         [listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[listen]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [[routes]]\nprefix = \"/a\"\nupstream = \"one\"\n\n\
         [upstreams.one]\nbackends = [\"{}\"]\n",
        cert.files().cert.display(),
        cert.files().key.display(),
        backend.url()
    );
    let file = folder.write("wsgate.toml", &text);
    // Not `Gateway::start`: its `--listen` flag would set the first one.
    let gateway = Gateway::start_bare(&["--config", PemFiles::arg(&file)]);
    let plain = gateway.addr;
    let tls = gateway.next_listen_addr();
    let proxied = gateway.next_listen_addr();

    // Plain: a tunnel, no HSTS.
    let mut stream = tokio::net::TcpStream::connect(plain).await.unwrap();
    let head = ask(&mut stream, &handshake("/a", "")).await;
    assert_eq!(head.status, 101);
    assert_eq!(head.header("strict-transport-security"), None);
    // TLS, HTTP/1.1 only: a tunnel with HSTS.
    let mut stream = cert.connect(tls, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let head = ask(&mut stream, &handshake("/a", "")).await;
    assert_eq!(head.status, 101);
    assert_eq!(head.header("strict-transport-security"), Some("max-age=60"));
    // PROXY protocol on the third only.
    let mut sent = proxy_v2("203.0.113.9:7".parse().unwrap());
    sent.extend_from_slice(handshake("/a", "").as_bytes());
    let mut stream = raw(proxied, &sent).await;
    assert_eq!(read_head(&mut stream).await.status, 101);
    assert_eq!(backend.last_headers()["x-forwarded-for"], "203.0.113.9");
    let mut stream = raw(plain, &sent).await;
    assert_eq!(read_head(&mut stream).await.status, 400);
}

/// Two listeners on one address are refused by the check.
#[test]
fn two_listeners_on_one_address_are_refused() {
    let folder = Folder::new();
    let file = folder.write(
        "wsgate.toml",
        "demo = true\n[[listen]]\naddress = \"127.0.0.1:9\"\n[[listen]]\naddress = \"127.0.0.1:9\"\n",
    );
    let (code, stderr) = run(&["--check", "--config", PemFiles::arg(&file)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("listen[1].address: 127.0.0.1:9 is listen[0]'s address too"),
        "{stderr}"
    );
}

/// nginx's most common WebSocket recipe: one port, ordinary requests to
/// the app server (Python's `http.server` here), WebSockets to their
/// backend; the app's answer relayed with its status, headers and body,
/// and an access line; a prefix of its own for another app, rewritten.
#[tokio::test]
async fn an_app_server_and_websockets_on_one_port() {
    use wsproxy_test_support::{echo, python_backend, read_body};
    let backend = Backend::start().await;
    let (_python, app) = python_backend("http_app.py").await;
    let (_python2, other) = python_backend("http_app.py").await;
    let folder = Folder::new();
    let gateway = start(
        &folder,
        &format!(
            "[[http_routes]]\nprefix = \"/\"\nupstream = \"http://{app}\"\n\n\
             [[http_routes]]\nprefix = \"/admin\"\nupstream = \"http://{other}\"\n\
             rewrite_prefix = \"/internal\"\n"
        ),
        &backend,
    );
    let mut ws = wsproxy_test_support::connect(&format!("ws://{}/a", gateway.addr)).await;
    echo(&mut ws, tokio_tungstenite::tungstenite::Message::text("ws")).await;
    for (request, expected) in [
        (
            "POST /login?next=%2F HTTP/1.1\r\nHost: site.example\r\nContent-Length: 4\r\n\r\nuser",
            vec![
                "method POST".to_owned(),
                "path /login?next=%2F".to_owned(),
                "body 4".to_owned(),
                format!("header host: {app}"),
                "header x-forwarded-host: site.example".to_owned(),
                "header x-forwarded-for: 127.0.0.1".to_owned(),
            ],
        ),
        (
            "GET /admin/users HTTP/1.1\r\nHost: site.example\r\n\r\n",
            vec!["method GET".to_owned(), "path /internal/users".to_owned()],
        ),
    ] {
        let mut stream = raw(gateway.addr, request.as_bytes()).await;
        let head = read_head(&mut stream).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("x-app"), Some("python"));
        let body = String::from_utf8(read_body(&mut stream, &head).await).unwrap();
        for line in expected {
            assert!(body.lines().any(|l| l == line), "{line}:\n{body}");
        }
    }
    // The status page is the app's now; the tunnel still echoes.
    echo(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("still"),
    )
    .await;
    gateway.wait_log("\"POST /login?next=%2F HTTP/1.1\" 200 ");
}

/// The layers in front of the routes are for handshakes (wsgate sends
/// every other request past them): an ordinary request reaches the app
/// whatever `[admission]` says of its Origin; a handshake no route claims
/// passes admission first, then reaches the app as any request does; a
/// claimed one tunnels. HSTS is on the app's answers over TLS with the
/// access log off (its answers that skip the layers), and on the 101.
#[tokio::test]
async fn ordinary_requests_skip_admission_and_unclaimed_handshakes_reach_the_app() {
    use wsproxy_test_support::python_backend;
    let backend = Backend::start().await;
    let (_python, app) = python_backend("http_app.py").await;
    let cert = Leaf::localhost();
    let folder = Folder::new();
    let gateway = start(
        &folder,
        &format!(
            "[listen]\nhsts = \"max-age=60\"\n\
             [listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [log]\naccess = false\n\
             [admission]\norigins = [\"https://good.example\"]\n\n\
             [[http_routes]]\nprefix = \"/\"\nupstream = \"http://{app}\"\n",
            cert.files().cert.display(),
            cert.files().key.display()
        ),
        &backend,
    );
    let evil = "Origin: https://evil.example\r\n";
    let good = "Origin: https://good.example\r\n";
    for (request, status, from_app) in [
        (
            format!("GET /b HTTP/1.1\r\nHost: localhost\r\n{evil}\r\n"),
            200,
            true,
        ),
        (handshake("/b", evil), 403, false),
        (handshake("/b", good), 200, true),
        (handshake("/a", good), 101, false),
    ] {
        let mut tls = cert.connect(gateway.addr, &[b"http/1.1"]).await;
        let head = ask(&mut tls, &request).await;
        assert_eq!(head.status, status, "{request:?}: {head:?}");
        assert_eq!(head.header("x-app") == Some("python"), from_app, "{head:?}");
        assert_eq!(
            head.header("strict-transport-security"),
            Some("max-age=60"),
            "{request:?}: {head:?}"
        );
    }
}

/// The app server down: 502; no answer within `timeouts.http_response`:
/// 504; each with a log line.
#[tokio::test]
async fn an_app_server_down_or_slow_is_502_or_504() {
    use wsproxy_test_support::{closed_port, silent_backend};
    let backend = Backend::start().await;
    let (_port, dead) = closed_port();
    let (silent, _) = silent_backend().await;
    let folder = Folder::new();
    let gateway = start(
        &folder,
        &format!(
            "[timeouts]\nhttp_response = \"300ms\"\n\
             [[http_routes]]\nprefix = \"/down\"\nupstream = \"http://{dead}\"\n\n\
             [[http_routes]]\nprefix = \"/slow\"\nupstream = \"http://{silent}\"\n"
        ),
        &backend,
    );
    for (path, status) in [("/down", 502), ("/slow", 504)] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut stream = raw(gateway.addr, request.as_bytes()).await;
        assert_eq!(read_head(&mut stream).await.status, status, "{path}");
    }
    let log = gateway.wait_log("app server did not answer in time: 504");
    assert!(log.contains("app server unreachable: 502"), "{log}");
}

/// A keep-alive app server on raw TCP: answers every request `ok`;
/// counts the connections it accepted.
async fn counting_app() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if tcp.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Connections to an app server are reused, unless
/// `timeouts.http_idle` is zero.
#[tokio::test]
async fn app_connections_are_reused_unless_http_idle_is_zero() {
    use std::sync::atomic::Ordering;
    let backend = Backend::start().await;
    for (timeouts, connections) in [("", 1), ("[timeouts]\nhttp_idle = \"0s\"\n", 3)] {
        let (app, accepted) = counting_app().await;
        let folder = Folder::new();
        let gateway = start(
            &folder,
            &format!("{timeouts}[[http_routes]]\nprefix = \"/\"\nupstream = \"http://{app}\"\n"),
            &backend,
        );
        for _ in 0..3 {
            let mut stream = raw(gateway.addr, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let head = read_head(&mut stream).await;
            assert_eq!(head.status, 200, "{timeouts}");
            let body = wsproxy_test_support::read_body(&mut stream, &head).await;
            assert_eq!(body, b"ok", "{timeouts}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{timeouts}");
    }
}

/// An app server URL that is not `http://` is named by the check.
#[test]
fn an_http_route_needs_an_http_url() {
    let folder = Folder::new();
    let file = folder.write(
        "wsgate.toml",
        "demo = true\n[[http_routes]]\nprefix = \"/\"\nupstream = \"ws://127.0.0.1:1\"\n",
    );
    let (code, stderr) = run(&["--check", "--config", PemFiles::arg(&file)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("http_routes[0].upstream: invalid upstream \"ws://127.0.0.1:1\": an app server URL starts with http://"),
        "{stderr}"
    );
}
