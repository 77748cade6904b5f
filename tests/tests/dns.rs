//! `DnsDiscover` against a name server the test controls: backends follow
//! A/AAAA and SRV records; one that leaves DNS is drained, not cut.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use wsproxy::WebSocketProxyLayer;
use wsproxy::balance::{Backends, DnsDiscover};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// The URLs of the set's backends that take new tunnels, sorted.
fn urls(backends: &Backends) -> Vec<String> {
    let mut urls: Vec<String> = backends
        .status()
        .iter()
        .filter(|b| !b.draining)
        .map(|b| b.upstream.to_string())
        .collect();
    urls.sort();
    urls
}

async fn proxy(backends: &Backends) -> SocketAddr {
    serve(axum::Router::new().layer(WebSocketProxyLayer::with_backends(backends.clone()))).await
}

#[tokio::test]
async fn a_and_aaaa_records_become_backends_and_one_that_leaves_is_drained() {
    // One echo on 127.0.0.1 and one on ::1, on the same port, as the
    // replicas behind a headless service would be.
    let (v4, _) = spawn_echo("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = v4.port();
    let (_v6, _) = spawn_echo(SocketAddr::new(V6, port)).await.unwrap();
    let dns = DnsServer::start().await;
    dns.set_ips("chat.test", &[V4, V6]);

    let backends = Backends::new([]);
    let _follow = DnsDiscover::host("chat.test", port)
        .nameservers([dns.addr])
        .path("/ws")
        .interval(Duration::from_millis(100))
        .follow(&backends);
    let both = vec![
        format!("ws://127.0.0.1:{port}/ws"),
        format!("ws://[::1]:{port}/ws"),
    ];
    let b = backends.clone();
    assert!(
        wait_until(LIMIT, || urls(&b) == both).await,
        "{:?}",
        urls(&backends)
    );

    // A tunnel to each (round-robin).
    let addr = proxy(&backends).await;
    let mut one = connect(&format!("ws://{addr}/")).await;
    let mut two = connect(&format!("ws://{addr}/")).await;
    assert!(backends.status().iter().all(|b| b.open == 1));

    // ::1 leaves DNS: no new tunnels go there, the open one stays.
    dns.set_ips("chat.test", &[V4]);
    let b = backends.clone();
    assert!(
        wait_until(LIMIT, || urls(&b) == [format!("ws://127.0.0.1:{port}/ws")]).await,
        "{:?}",
        urls(&backends)
    );
    let v6_status = || {
        backends
            .status()
            .into_iter()
            .find(|b| b.upstream.to_string().contains("[::1]"))
    };
    let v6 = v6_status().expect("in the set while its tunnel is open");
    assert!(v6.draining && v6.open == 1, "{v6:?}");
    echo(&mut one, Message::text("still here")).await;
    echo(&mut two, Message::text("still here")).await;
    let mut three = connect(&format!("ws://{addr}/")).await;
    echo(&mut three, Message::text("new")).await;
    assert_eq!(
        v6_status().map(|b| b.open),
        Some(1),
        "new tunnels go to what DNS names"
    );

    // The name server fails: what was found stays.
    dns.set_failing(true);
    let asked = dns.asked();
    assert!(
        wait_until(LIMIT, || dns.asked() >= asked + 3).await,
        "asked again"
    );
    assert_eq!(urls(&backends), [format!("ws://127.0.0.1:{port}/ws")]);
    dns.set_failing(false);

    // The name has no addresses any more: the set empties.
    dns.set_ips("chat.test", &[]);
    let b = backends.clone();
    assert!(wait_until(LIMIT, || urls(&b).is_empty()).await);
    echo(&mut one, Message::text("drained, not cut")).await;
}

#[tokio::test]
async fn srv_records_give_ports_weights_and_backups() {
    let primary = Backend::start().await;
    let second = Backend::start().await;
    let backup = Backend::start().await;
    let dns = DnsServer::start().await;
    dns.set_srv(
        "_ws._tcp.chat.test",
        &[
            (10, 3, primary.addr.port(), "a.chat.test"),
            (10, 1, second.addr.port(), "b.chat.test"),
            (20, 1, backup.addr.port(), "c.chat.test"),
        ],
    );
    for name in ["a.chat.test", "b.chat.test", "c.chat.test"] {
        dns.set_ips(name, &[V4]);
    }
    let backends = Backends::new([]);
    let _follow = DnsDiscover::srv("_ws._tcp.chat.test")
        .nameservers([dns.addr])
        .interval(Duration::from_millis(100))
        .follow(&backends);
    let b = backends.clone();
    assert!(wait_until(LIMIT, || b.status().len() == 3).await);
    let mut seen: Vec<(u16, u32, bool)> = backends
        .status()
        .iter()
        .map(|b| (b.upstream.port(), b.weight, b.backup))
        .collect();
    seen.sort();
    let mut expected = vec![
        (primary.addr.port(), 3, false),
        (second.addr.port(), 1, false),
        (backup.addr.port(), 1, true),
    ];
    expected.sort();
    assert_eq!(seen, expected);

    // Handshakes go to the primaries, by weight; the backup gets none.
    let addr = proxy(&backends).await;
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(connect(&format!("ws://{addr}/")).await);
    }
    assert_eq!(
        (
            primary.connections(),
            second.connections(),
            backup.connections()
        ),
        (6, 2, 0)
    );

    // A weight changed in DNS is a weight changed in the set; a target
    // with no address is skipped, not a failure of the whole answer.
    dns.set_srv(
        "_ws._tcp.chat.test",
        &[
            (10, 1, primary.addr.port(), "a.chat.test"),
            (10, 1, second.addr.port(), "b.chat.test"),
            (10, 1, 1, "gone.chat.test"),
        ],
    );
    let b = backends.clone();
    assert!(
        wait_until(LIMIT, || {
            let taking: Vec<_> = b.status().into_iter().filter(|s| !s.draining).collect();
            taking.len() == 2 && taking.iter().all(|s| s.weight == 1)
        })
        .await,
        "{:?}",
        backends.status()
    );
}
