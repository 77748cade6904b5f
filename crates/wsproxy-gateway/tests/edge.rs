//! `wsgate` at the edge: behind an L4 load balancer that speaks the
//! PROXY protocol.

mod support;

use std::net::SocketAddr;

use wsproxy_test_support::{
    Backend, LIMIT, PemFiles, handshake, proxy_v1, proxy_v2, raw, read_head, read_to_close,
};

use support::{Folder, Gateway};

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
