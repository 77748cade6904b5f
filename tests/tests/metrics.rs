//! The `metrics` feature: counters reach whatever recorder the app
//! installed. (One test: the recorder is process-wide.)

use futures_util::{SinkExt, StreamExt};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use tokio_tungstenite::tungstenite::Message;
use wsproxy::WebSocketProxyLayer;
use wsproxy_e2e::*;
use wsproxy_test_support::*;

fn value<U, D>(
    snapshot: &[(CompositeKey, U, D, DebugValue)],
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let matches = key.kind() == kind
            && key.key().name() == name
            && labels.iter().all(|(k, v)| {
                key.key()
                    .labels()
                    .any(|label| label.key() == *k && label.value() == *v)
            });
        match (matches, value) {
            (true, DebugValue::Counter(n)) => Some(*n as f64),
            (true, DebugValue::Gauge(g)) => Some(g.into_inner()),
            // A histogram: how many values it holds.
            (true, DebugValue::Histogram(values)) => Some(values.len() as f64),
            _ => None,
        }
    })
}

#[tokio::test]
async fn tunnels_and_refusals_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");

    let backend = Backend::start().await;
    let layer = WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
        .route(wsproxy::Route::prefix("/m"));
    let tunnels = layer.tunnels_handle().clone();
    // A second route over two backends, one of them dead.
    let (_port, dead) = closed_port();
    let pool = wsproxy::balance::Backends::new([
        format!("ws://{dead}").parse().unwrap(),
        format!("ws://{}", backend.addr).parse().unwrap(),
    ]);
    let balanced = WebSocketProxyLayer::with_backends(pool).route(wsproxy::Route::prefix("/pool"));
    // A third route whose layer checks the Origin itself.
    let checked = WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
        .route(wsproxy::Route::prefix("/o"))
        .admit(wsproxy::admit::OriginCheck::new(["https://ok.example"]));
    let proxy = serve(
        axum::Router::new()
            .layer(layer)
            .layer(balanced)
            .layer(checked),
    )
    .await;
    // Round-robin starts with the dead one: a retry, and it goes down.
    let mut pooled = connect(&format!("ws://{proxy}/pool")).await;
    echo(&mut pooled, Message::text("retried")).await;
    drop(pooled);

    let mut ws = connect(&format!("ws://{proxy}/m")).await;
    echo(&mut ws, Message::text("counted")).await;
    ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4001.into(),
            reason: "".into(),
        },
    )))
    .await
    .unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, ws.next()).await {}
    drop(ws);
    let t = tunnels.clone();
    assert!(wait_until(LIMIT, || t.open() == 0).await);
    // A refused handshake: version 12.
    let mut refused = raw(
        proxy,
        handshake("/m", "")
            .replace("Version: 13", "Version: 12")
            .as_bytes(),
    )
    .await;
    assert_eq!(read_head(&mut refused).await.status, 426);
    // Refused by the layer's own check, before the proxy's: no Origin.
    let mut refused = raw(proxy, handshake("/o", "").as_bytes()).await;
    assert_eq!(read_head(&mut refused).await.status, 403);

    let snapshot = snapshotter.snapshot().into_vec();
    let dead = format!("ws://{dead}/");
    assert_eq!(
        value(
            &snapshot,
            MetricKind::Counter,
            "wsproxy_backend_retries_total",
            &[("backend", &dead)]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &snapshot,
            MetricKind::Counter,
            "wsproxy_backend_transitions_total",
            &[("backend", &dead), ("to", "down")]
        ),
        Some(1.0)
    );
    let route = [("route", "/m")];
    assert_eq!(
        value(
            &snapshot,
            MetricKind::Counter,
            "wsproxy_tunnels_opened_total",
            &route
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&snapshot, MetricKind::Gauge, "wsproxy_tunnels_open", &route),
        Some(0.0)
    );
    assert_eq!(
        value(
            &snapshot,
            MetricKind::Counter,
            "wsproxy_tunnels_closed_total",
            &[("route", "/m"), ("reason", "client_close")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &snapshot,
            MetricKind::Counter,
            "wsproxy_messages_total",
            &[("route", "/m"), ("direction", "up")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &snapshot,
            MetricKind::Counter,
            "wsproxy_bytes_total",
            &[("direction", "down")]
        )
        .is_some_and(|b| b > 0.0)
    );
    assert_eq!(
        value(
            &snapshot,
            MetricKind::Counter,
            "wsproxy_handshakes_refused_total",
            &[("status", "426")]
        ),
        Some(1.0)
    );
    // Every answer of a route by status, whoever gave it.
    for (route, status, count) in [
        ("/m", "101", 1.0),
        ("/m", "426", 1.0),
        ("/o", "403", 1.0),
        ("/pool", "101", 1.0),
    ] {
        assert_eq!(
            value(
                &snapshot,
                MetricKind::Counter,
                "wsproxy_handshakes_total",
                &[("route", route), ("status", status)]
            ),
            Some(count),
            "{route} {status}"
        );
    }
    // One answered attempt on the live backend per tunnel; the dead one
    // never answered.
    let live = format!("ws://{}/", backend.addr);
    assert_eq!(
        value(
            &snapshot,
            MetricKind::Histogram,
            "wsproxy_backend_handshake_seconds",
            &[("backend", &live)]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &snapshot,
            MetricKind::Histogram,
            "wsproxy_backend_handshake_seconds",
            &[("backend", &dead)]
        ),
        None
    );
    // The client's Close code (an application's, 4xxx) and the backend's
    // echo of it.
    for from in ["client", "backend"] {
        assert_eq!(
            value(
                &snapshot,
                MetricKind::Counter,
                "wsproxy_close_codes_total",
                &[("route", "/m"), ("from", from), ("code", "4xxx")]
            ),
            Some(1.0),
            "{from}"
        );
    }
}
