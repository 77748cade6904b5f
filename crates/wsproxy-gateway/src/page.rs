//! The plain-HTTP side of the gateway: a status page and `/healthz`.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use wsproxy::Tunnels;
use wsproxy::balance::Backends;

/// What the public page shows: counts only (no backend address), and the
/// demo client in demo mode.
#[derive(Clone)]
struct PageState {
    /// The shared tunnels, for the counts.
    tunnels: Tunnels,
    /// Whether to add the demo client.
    demo: bool,
}

/// One route on the admin listener's status page.
#[derive(Clone, Debug)]
pub(crate) struct PageRoute {
    /// Its prefix (and host, if it has one).
    pub(crate) name: String,
    /// Its upstream's name.
    pub(crate) upstream: String,
    /// How it chooses a backend.
    pub(crate) balance: String,
    /// Its backends.
    pub(crate) set: Backends,
}

/// The router for plain HTTP requests on the public listener that no
/// `[[http_routes]]` claims: `/` (the tunnel counts, and the demo client
/// in demo mode; the backends are on the admin listener) and `/healthz`.
pub(crate) fn router(tunnels: Tunnels, demo: bool) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(PageState { tunnels, demo })
}

/// The access-log span of a plain request (see `access.rs`): client,
/// version, method, path (query as `?<redacted>` unless `log_query`),
/// Referer and User-Agent; its status when answered.
pub(crate) fn trace(
    log_query: bool,
) -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&axum::http::Request<axum::body::Body>) -> tracing::Span + Clone,
    (),
    DefaultOnResponse,
> {
    TraceLayer::new_for_http()
        .make_span_with(move |request: &axum::http::Request<_>| {
            let header = |name| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
                    .unwrap_or("-")
            };
            let query = match request.uri().query() {
                Some(_) if !log_query => "?<redacted>",
                Some(query) => &format!("?{query}"),
                None => "",
            };
            let client = request
                .extensions()
                .get::<wsproxy::ClientAddr>()
                .map(|addr| addr.0);
            tracing::info_span!(
                "request",
                client = client.map(tracing::field::display),
                version = ?request.version(),
                method = %request.method(),
                path = %format_args!("{}{query}", request.uri().path()),
                referer = header(axum::http::header::REFERER),
                user_agent = header(axum::http::header::USER_AGENT),
            )
        })
        .on_request(())
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
}

/// `GET /`: the open tunnels and, in demo mode, a client.
async fn index(State(state): State<PageState>) -> Html<String> {
    let demo = if state.demo { DEMO_CLIENT } else { "" };
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>wsgate</title></head>\n<body>\n\
         <h1>wsgate</h1>\n{}{demo}</body></html>\n",
        counts(&state.tunnels),
    ))
}

/// The tunnel counts, as both pages show them.
fn counts(tunnels: &Tunnels) -> String {
    let stats = tunnels.stats();
    format!(
        "<p>Open tunnels: {}</p>\n\
         <p>Tunnels opened: {} (over HTTP/2: {})</p>\n",
        stats.open, stats.opened, stats.opened_h2
    )
}

/// The admin listener's status page: the counts, each route's backends
/// with their state, and small charts of open tunnels, handshakes and
/// bytes per second that `/events` keeps up to date.
pub(crate) fn status(routes: &[PageRoute], tunnels: &Tunnels) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>wsgate status</title></head>\n<body>\n\
         <h1>wsgate</h1>\n{}{LIVE}<h2>Routes</h2>\n{}</body></html>\n",
        counts(tunnels),
        route_tables(routes),
    )
}

/// One section per route: its prefix, then a table of its backends.
fn route_tables(routes: &[PageRoute]) -> String {
    let mut html = String::new();
    for route in routes {
        let _ = write!(
            html,
            "<h3><code>{}</code></h3>\n<p>Balancing: {}</p>\n<table>\n<tr><th>backend</th><th>role</th><th>weight</th>\
             <th>open</th><th>health</th><th>draining</th><th>transitions</th></tr>\n",
            escape(&route.name),
            escape(&route.balance),
        );
        for backend in route.set.status() {
            let _ = writeln!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td></tr>",
                escape(&backend.upstream.to_string()),
                if backend.backup { "backup" } else { "primary" },
                backend.weight,
                backend.open,
                if backend.up { "up" } else { "down" },
                if backend.draining { "yes" } else { "no" },
                backend.transitions,
            );
        }
        html.push_str("</table>\n");
    }
    html
}

/// The live part of the status page: one sample a second from
/// `/events` (server-sent events), the last minute drawn as lines.
const LIVE: &str = r#"<h2>Last minute</h2>
<p>Open tunnels <svg id="c-open" width="240" height="40"></svg>
 Handshakes/s <svg id="c-rate" width="240" height="40"></svg>
 Bytes/s (tunnels that ended) <svg id="c-bytes" width="240" height="40"></svg></p>
<script>
const series = { open: [], rate: [], bytes: [] };
const draw = (id, values) => {
  const max = Math.max(1, ...values);
  const points = values.map((v, i) => `${i * 4},${40 - 38 * v / max}`).join(' ');
  document.getElementById(id).innerHTML =
    `<polyline fill="none" stroke="black" points="${points}"/><text x="200" y="12" font-size="10">${values[values.length - 1]}</text>`;
};
new EventSource('/events').onmessage = (e) => {
  const s = JSON.parse(e.data);
  for (const k of ['open', 'rate', 'bytes']) {
    series[k].push(s[k]);
    if (series[k].length > 60) series[k].shift();
  }
  draw('c-open', series.open); draw('c-rate', series.rate); draw('c-bytes', series.bytes);
};
</script>
"#;

/// Escape text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A tiny browser client for the demo's `/echo` and `/chat`.
const DEMO_CLIENT: &str = r#"<h2>Try it</h2>
<p><input id="text" value="hello"> <button id="echo">send to /echo</button> <button id="chat">say in /chat</button></p>
<pre id="log"></pre>
<script>
const log = (line) => { document.getElementById('log').textContent += line + '\n'; };
const open = (path) => {
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + path);
  ws.onopen = () => log(path + ': open');
  ws.onmessage = (e) => log(path + ' <- ' + e.data);
  ws.onclose = (e) => log(path + ': closed ' + e.code);
  return ws;
};
const echo = open('/echo');
const chat = open('/chat');
const text = () => document.getElementById('text').value;
document.getElementById('echo').onclick = () => echo.send(text());
document.getElementById('chat').onclick = () => chat.send(text());
</script>
"#;
