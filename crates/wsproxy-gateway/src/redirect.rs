//! The plain-HTTP listener that sends every request to https: nginx's
//! `listen 80; return 308 https://$host$request_uri;`. `308` (not `301`)
//! so that a client keeps its method and body.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The app: `308` to `https://HOST[:port]/path?query` for every request;
/// `port` is left out of the URL when it is 443.
pub(crate) fn router(port: u16, log_query: bool) -> Router {
    Router::new()
        .fallback(redirect)
        .with_state(port)
        .layer(crate::page::trace(log_query))
}

async fn redirect(State(port): State<u16>, request: Request) -> Response {
    match location(&request, port) {
        Some(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            "a request needs a Host to be sent to https\n",
        )
            .into_response(),
    }
}

/// Where `request` goes: its host (an absolute-form target's, which wins
/// over `Host` as RFC 9112 §3.2.2 says, else `Host`), without its port,
/// over https on `port`, same path and query (`/` for `OPTIONS *`).
fn location(request: &Request, port: u16) -> Option<HeaderValue> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => request
            .headers()
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse::<axum::http::uri::Authority>()
            .ok()?,
    };
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let url = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    HeaderValue::from_str(&url).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, host: Option<&str>) -> Request {
        let mut builder = axum::http::Request::builder().uri(target);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn the_host_without_its_port_the_path_and_the_query() {
        for (target, host, port, expected) in [
            (
                "/a/b?x=1&y",
                Some("example.com:80"),
                443,
                Some("https://example.com/a/b?x=1&y"),
            ),
            (
                "/",
                Some("Example.com"),
                8443,
                Some("https://Example.com:8443/"),
            ),
            (
                "/ws",
                Some("[::1]:8080"),
                8443,
                Some("https://[::1]:8443/ws"),
            ),
            (
                "http://abs.example/p?q",
                None,
                443,
                Some("https://abs.example/p?q"),
            ),
            (
                "http://abs.example/p",
                Some("other.example"),
                443,
                Some("https://abs.example/p"),
            ),
            ("*", Some("h"), 443, Some("https://h/")),
            ("/", None, 443, None),
            ("/", Some("bad host"), 443, None),
        ] {
            let location = location(&request(target, host), port);
            assert_eq!(
                location.as_ref().map(|v| v.to_str().unwrap()),
                expected,
                "{target} {host:?}"
            );
        }
    }
}
