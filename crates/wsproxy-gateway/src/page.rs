//! The plain-HTTP side of the gateway: a status page and `/healthz`.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use wsproxy::Tunnels;
use wsproxy::balance::Backends;

/// What the status page shows.
#[derive(Clone)]
struct PageState {
    /// Each route: its prefix, how it chooses a backend, and its backend
    /// set, for their live status.
    routes: Vec<PageRoute>,
    /// The shared tunnels, for the open count.
    tunnels: Tunnels,
    /// Whether to add the demo client.
    demo: bool,
}

/// One route on the status page.
#[derive(Clone)]
pub(crate) struct PageRoute {
    /// Its prefix (and host, if it has one).
    pub(crate) name: String,
    /// How it chooses a backend.
    pub(crate) balance: String,
    /// Its backends.
    pub(crate) set: Backends,
}

/// The router for plain HTTP requests: the status page shows each route's
/// backends as they are at the request.
pub(crate) fn router(routes: Vec<PageRoute>, tunnels: Tunnels, demo: bool) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(PageState {
            routes,
            tunnels,
            demo,
        })
        // One log line per plain request, as for handshakes.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                    )
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
}

/// `GET /`: the routes with their backends' state, the open tunnels and,
/// in demo mode, a client.
async fn index(State(state): State<PageState>) -> Html<String> {
    let demo = if state.demo { DEMO_CLIENT } else { "" };
    let stats = state.tunnels.stats();
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>wsgate</title></head>\n<body>\n\
         <h1>wsgate</h1>\n<p>Open tunnels: {}</p>\n<p>Tunnels opened: {} (over HTTP/2: {})</p>\n\
         <h2>Routes</h2>\n{}{demo}</body></html>\n",
        stats.open,
        stats.opened,
        stats.opened_h2,
        routes(&state.routes),
    ))
}

/// One section per route: its prefix, then a table of its backends.
fn routes(routes: &[PageRoute]) -> String {
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
