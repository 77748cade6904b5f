//! The admin listener (`[admin] address`, `--admin-listen`; loopback in
//! the example, apart from the public listener): `/metrics` for
//! Prometheus, `/status` as JSON, `/healthz` (alive) and `/readyz`
//! (accepting: 503 while draining).
//!
//! `/metrics` renders what the library records through the `metrics`
//! facade (`wsproxy::metrics` lists it) with `metrics-exporter-prometheus`,
//! the gateway's own reload counters, and, read at each scrape from the
//! live backend sets, each backend's open tunnels and health, so that a
//! backend a reload removed leaves no stale series behind.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use wsproxy::Tunnels;

use crate::page::{self, PageRoute};

/// What a scrape or `/status` reads: the configuration in force, as
/// routes and their backend sets.
#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    /// How many configurations were applied.
    pub(crate) generation: u64,
    /// Each route with its upstream's set.
    pub(crate) routes: Vec<PageRoute>,
}

/// The admin side's shared state.
#[derive(Clone, Debug)]
pub(crate) struct Admin {
    prometheus: PrometheusHandle,
    view: Arc<ArcSwap<View>>,
    tunnels: Tunnels,
    ready: Arc<AtomicBool>,
}

impl Admin {
    /// Install the Prometheus recorder (once per process) and start with
    /// an empty view, not ready.
    pub(crate) fn install(tunnels: Tunnels) -> Result<Self, String> {
        let seconds = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let durations = [1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0];
        let prometheus = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("wsproxy_handshake_seconds".into()), &seconds)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("wsproxy_backend_handshake_seconds".into()),
                    &seconds,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("wsproxy_tunnel_duration_seconds".into()),
                    &durations,
                )
            })
            .map_err(|e| e.to_string())?
            .install_recorder()
            .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
        describe();
        Ok(Self {
            prometheus,
            view: Arc::default(),
            tunnels,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Show `view` from now on.
    pub(crate) fn publish(&self, view: View) {
        metrics::gauge!("wsgate_config_generation").set(view.generation as f64);
        self.view.store(Arc::new(view));
    }

    /// Whether `/readyz` says ready.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The admin app.
    pub(crate) fn router(&self) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/events", get(events))
            .route("/metrics", get(scrape))
            .route("/status", get(status))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state(self.clone())
    }
}

/// A reload, counted by result.
pub(crate) fn reloaded(ok: bool) {
    metrics::counter!("wsgate_reloads_total", "result" => if ok { "ok" } else { "failed" })
        .increment(1);
}

fn describe() {
    metrics::describe_counter!(
        "wsgate_reloads_total",
        "Configuration reloads (SIGHUP), by result"
    );
    metrics::describe_gauge!(
        "wsgate_config_generation",
        "Configurations applied since start, the first one included"
    );
    wsproxy::metrics::describe();
}

/// `GET /metrics`.
async fn scrape(State(admin): State<Admin>) -> impl IntoResponse {
    let mut text = admin.prometheus.render();
    let view = admin.view.load();
    text.push_str(
        "# HELP wsgate_backend_open_tunnels Tunnels open to a backend now\n\
         # TYPE wsgate_backend_open_tunnels gauge\n",
    );
    let mut up = String::from(
        "# HELP wsgate_backend_up Whether a backend is up (1) or down (0) by its health checks\n\
         # TYPE wsgate_backend_up gauge\n",
    );
    let mut seen = std::collections::HashSet::new();
    for route in &view.routes {
        let upstream = &route.upstream;
        if !seen.insert(upstream) {
            continue;
        }
        for backend in route.set.status() {
            let labels = format!(
                "upstream=\"{}\",backend=\"{}\"",
                label(upstream),
                label(&backend.upstream.to_string())
            );
            let _ = writeln!(
                text,
                "wsgate_backend_open_tunnels{{{labels}}} {}",
                backend.open
            );
            let _ = writeln!(up, "wsgate_backend_up{{{labels}}} {}", u8::from(backend.up));
        }
    }
    text.push_str(&up);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /status`: the configuration generation, open tunnels, and each
/// route's backends with their state.
async fn status(State(admin): State<Admin>) -> impl IntoResponse {
    let view = admin.view.load();
    let stats = admin.tunnels.stats();
    let routes: Vec<_> = view
        .routes
        .iter()
        .map(|route| {
            let backends: Vec<_> = route
                .set
                .status()
                .into_iter()
                .map(|b| {
                    serde_json::json!({
                        "url": b.upstream.to_string(),
                        "up": b.up,
                        "open": b.open,
                        "weight": b.weight,
                        "backup": b.backup,
                        "draining": b.draining,
                        "transitions": b.transitions,
                    })
                })
                .collect();
            serde_json::json!({
                "route": route.name,
                "upstream": route.upstream,
                "balance": route.balance,
                "backends": backends,
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "generation": view.generation,
        "ready": admin.ready.load(Ordering::Relaxed),
        "tunnels": { "open": stats.open, "opened": stats.opened, "opened_http2": stats.opened_h2 },
        "routes": routes,
    }))
}

/// `GET /`: the status page (backends included: this listener is not
/// for the public).
async fn index(State(admin): State<Admin>) -> axum::response::Html<String> {
    axum::response::Html(page::status(&admin.view.load().routes, &admin.tunnels))
}

/// `GET /events`: a sample a second for the status page's charts (open
/// tunnels, handshakes and bytes per second), as server-sent events.
async fn events(
    State(admin): State<Admin>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    let tunnels = admin.tunnels.clone();
    let first = tunnels.stats();
    let start = (first.opened, first.client.bytes + first.backend.bytes);
    let ticks = futures_util::stream::unfold(
        (
            start,
            tokio::time::interval(std::time::Duration::from_secs(1)),
        ),
        move |((opened, bytes), mut interval)| {
            let tunnels = tunnels.clone();
            async move {
                interval.tick().await;
                let stats = tunnels.stats();
                let now = (stats.opened, stats.client.bytes + stats.backend.bytes);
                let sample = serde_json::json!({
                    "open": stats.open,
                    "rate": now.0.saturating_sub(opened),
                    "bytes": now.1.saturating_sub(bytes),
                });
                let event = axum::response::sse::Event::default().data(sample.to_string());
                Some((Ok(event), (now, interval)))
            }
        },
    );
    axum::response::sse::Sse::new(ticks)
}

/// `GET /readyz`: 200 while accepting, 503 before and while draining.
async fn ready(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
