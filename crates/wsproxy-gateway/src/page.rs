//! The plain-HTTP side of the gateway: a status page and `/healthz`.

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use wsproxy::Tunnels;

use crate::cli::RouteSpec;

/// What the status page shows.
#[derive(Clone)]
struct PageState {
    /// The routes, as HTML list items.
    routes: String,
    /// The shared tunnels, for the open count.
    tunnels: Tunnels,
    /// Whether to add the demo client.
    demo: bool,
}

/// The router for plain HTTP requests.
pub(crate) fn router(routes: &[RouteSpec], tunnels: Tunnels, demo: bool) -> Router {
    let routes = routes
        .iter()
        .map(|r| {
            format!(
                "<li><code>{}</code> &rarr; <code>{}</code></li>",
                escape(&r.prefix),
                escape(&r.upstream.to_string())
            )
        })
        .collect();
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(PageState {
            routes,
            tunnels,
            demo,
        })
}

/// `GET /`: the routes, the open tunnels and, in demo mode, a client.
async fn index(State(state): State<PageState>) -> Html<String> {
    let demo = if state.demo { DEMO_CLIENT } else { "" };
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>wsgate</title></head>\n<body>\n\
         <h1>wsgate</h1>\n<p>Open tunnels: {}</p>\n<h2>Routes</h2>\n<ul>{}</ul>\n{demo}</body></html>\n",
        state.tunnels.open(),
        state.routes,
    ))
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
