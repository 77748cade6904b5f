//! The admin listener as an operator's tools see it: Prometheus scrapes
//! (checked by Debian's `promtool`), `/status`, `/healthz` and `/readyz`.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use wsproxy_test_support::{Backend, LIMIT, PemFiles};

use support::{Folder, Gateway};

/// `GET path` on `addr`: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    timeout(LIMIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Check `text` with `promtool check metrics` (Debian's package
/// prometheus, which CI installs; elsewhere the check is skipped unless
/// `WSPROXY_REQUIRE_PROMTOOL` is set).
fn promtool(text: &str) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("WSPROXY_REQUIRE_PROMTOOL").is_none(),
                "promtool: {e}"
            );
            eprintln!("promtool not installed: the scrape is not checked by it");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn start(backend: &Backend, folder: &Folder) -> (Gateway, SocketAddr) {
    let text = format!(
        "workers = 1\n[[routes]]\nprefix = \"/a\"\nupstream = \"chat\"\n\n\
         [upstreams.chat]\nbackends = [\"{}\"]\n",
        backend.url()
    );
    let file = folder.write("wsgate.toml", &text);
    let gateway = Gateway::start(&[
        "--config",
        PemFiles::arg(&file),
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = gateway.admin_addr();
    (gateway, admin)
}

#[tokio::test]
async fn metrics_are_scraped_from_the_admin_listener_only() {
    let backend = Backend::start().await;
    let folder = Folder::new();
    let (gateway, admin) = start(&backend, &folder);
    let url = format!("ws://{}/a", gateway.addr);
    let mut ws = wsproxy_test_support::connect(&url).await;
    ws.send(Message::text("hi")).await.unwrap();
    timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap();
    // A handshake the route refuses: version 12.
    let mut refused = wsproxy_test_support::raw(
        gateway.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n",
    )
    .await;
    let head = wsproxy_test_support::read_head(&mut refused).await;
    assert_eq!(head.status, 426);
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let backend_labels = format!("upstream=\"chat\",backend=\"{}\"", backend.url());
    for expected in [
        "wsproxy_tunnels_opened_total{route=\"/a\"} 1".to_owned(),
        "wsproxy_tunnels_open{route=\"/a\"} 1".to_owned(),
        "wsproxy_handshake_seconds_bucket{route=\"/a\",le=\"+Inf\"} 1".to_owned(),
        "wsproxy_handshakes_total{route=\"/a\",status=\"101\"} 1".to_owned(),
        "wsproxy_handshakes_total{route=\"/a\",status=\"426\"} 1".to_owned(),
        format!(
            "wsproxy_backend_handshake_seconds_bucket{{backend=\"{}/\",le=\"+Inf\"}} 1",
            backend.url().trim_end_matches('/')
        ),
        "wsgate_config_generation 1".to_owned(),
        format!("wsgate_backend_open_tunnels{{{backend_labels}}} 1"),
        format!("wsgate_backend_up{{{backend_labels}}} 1"),
    ] {
        assert!(text.contains(&expected), "{expected}:\n{text}");
    }
    promtool(&text);
    // The tunnel ends: its duration and bytes are recorded.
    ws.close(None).await.unwrap();
    while timeout(LIMIT, ws.next()).await.unwrap().is_some() {}
    let start = std::time::Instant::now();
    loop {
        let (_, text) = get(admin, "/metrics").await;
        if text.contains("wsproxy_tunnel_duration_seconds_count{route=\"/a\"} 1") {
            assert!(
                text.contains("wsproxy_tunnels_open{route=\"/a\"} 0"),
                "{text}"
            );
            assert!(
                text.contains("wsproxy_bytes_total{route=\"/a\",direction=\"up\"}"),
                "{text}"
            );
            // A Close without a code from the client.
            assert!(
                text.contains(
                    "wsproxy_close_codes_total{route=\"/a\",from=\"client\",code=\"none\"} 1"
                ),
                "{text}"
            );
            promtool(&text);
            break;
        }
        assert!(start.elapsed() < LIMIT, "no tunnel duration:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Not on the public listener.
    let (status, _) = get(gateway.addr, "/metrics").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn reloads_are_counted_and_the_status_follows_them() {
    let one = Backend::start().await;
    let two = Backend::start().await;
    let folder = Folder::new();
    let (gateway, admin) = start(&one, &folder);
    let (status, json) = get(admin, "/status").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["generation"], 1);
    assert_eq!(json["routes"][0]["route"], "/a");
    assert_eq!(json["routes"][0]["backends"][0]["url"], one.url());
    // A valid reload, then an invalid one.
    let text = std::fs::read_to_string(folder.path("wsgate.toml")).unwrap();
    folder.write("wsgate.toml", &text.replace(&one.url(), &two.url()));
    gateway.signal("HUP");
    gateway.wait_log("generation=2");
    folder.write("wsgate.toml", "workers = \"many\"\n");
    gateway.signal("HUP");
    gateway.wait_log("configuration not reloaded");
    let (_, text) = get(admin, "/metrics").await;
    for expected in [
        "wsgate_reloads_total{result=\"ok\"} 1",
        "wsgate_reloads_total{result=\"failed\"} 1",
        "wsgate_config_generation 2",
    ] {
        assert!(text.contains(expected), "{expected}:\n{text}");
    }
    // The removed backend left no series behind.
    assert!(!text.contains(&one.url()), "{text}");
    promtool(&text);
    let (_, json) = get(admin, "/status").await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["generation"], 2);
    assert_eq!(json["routes"][0]["backends"][0]["url"], two.url());
}

/// `/readyz` says 503 as soon as the gateway drains (a load balancer then
/// stops sending it clients), while `/healthz` still answers.
#[tokio::test]
async fn readyz_turns_503_while_draining() {
    let backend = Backend::start().await;
    let folder = Folder::new();
    let (gateway, admin) = start(&backend, &folder);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".to_owned()));
    // An open tunnel that does not answer its Close keeps the drain going.
    let url = format!("ws://{}/a", gateway.addr);
    let ws = wsproxy_test_support::connect(&url).await;
    gateway.terminate();
    let start = std::time::Instant::now();
    while get(admin, "/readyz").await.0 != 503 {
        assert!(start.elapsed() < LIMIT, "/readyz still 200 while draining");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(get(admin, "/healthz").await.0, 200);
    // Nothing accepts into the public port any more: new clients are
    // refused, not left waiting in a queue nobody serves.
    let start = std::time::Instant::now();
    while tokio::net::TcpStream::connect(gateway.addr).await.is_ok() {
        assert!(
            start.elapsed() < LIMIT,
            "the public port still accepts while draining"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(ws);
}

/// The Grafana dashboard beside the example configuration queries only
/// metrics that exist: those the library documents (`wsproxy::metrics`)
/// and those the admin listener adds.
#[test]
fn the_grafana_dashboard_asks_for_metrics_that_exist() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/examples/grafana/wsgate.json")).unwrap(),
    )
    .unwrap();
    let known: String = [
        "crates/wsproxy/src/metrics.rs",
        "crates/wsproxy-gateway/src/admin.rs",
    ]
    .iter()
    .map(|file| std::fs::read_to_string(format!("{root}/{file}")).unwrap())
    .collect();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("wsproxy_") || word.starts_with("wsgate_") {
                    queried.push(word.trim_end_matches("_bucket").to_owned());
                }
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in queried {
        assert!(
            [
                format!("\"{name}\""),
                format!("`{name}`"),
                format!("TYPE {name} ")
            ]
            .iter()
            .any(|form| known.contains(form.as_str())),
            "{name} is not a metric"
        );
    }
}

/// The status page lives on the admin listener (with the backends), and
/// its charts get a sample a second from `/events`; the public listener
/// shows no backend address.
#[tokio::test]
async fn the_status_page_is_on_the_admin_listener_and_live() {
    let backend = Backend::start().await;
    let folder = Folder::new();
    let (gateway, admin) = start(&backend, &folder);
    let url = format!("ws://{}/a", gateway.addr);
    let _ws = wsproxy_test_support::connect(&url).await;
    let (status, page) = get(admin, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("<code>{}</code>", backend.url())),
        "{page}"
    );
    assert!(page.contains("new EventSource('/events')"), "{page}");
    let (_, public) = get(gateway.addr, "/").await;
    assert!(!public.contains(&backend.url()), "{public}");
    // The first sample says one tunnel is open.
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    timeout(LIMIT, async {
        while !seen.contains("data: ") || !seen[seen.find("data: ").unwrap()..].contains('\n') {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended:\n{seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .expect("a sample within the limit");
    assert!(seen.contains("text/event-stream"), "{seen}");
    let data = seen.split("data: ").nth(1).unwrap().lines().next().unwrap();
    let sample: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(sample["open"], 1, "{seen}");
}
