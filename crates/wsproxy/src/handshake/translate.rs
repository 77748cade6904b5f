//! Translation: the upgrade request a backend gets for a client's
//! handshake — HTTP/1.1 whatever the client spoke (an HTTP/2 extended
//! `CONNECT` becomes an HTTP/1.1 upgrade with a key of the proxy's own),
//! the path mapped onto the upstream's, hop-by-hop headers removed,
//! forwarding headers and `Host` as configured.

use std::net::SocketAddr;

use bytes::Bytes;
use http::HeaderMap;
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::Empty;
use ipnet::IpNet;

use crate::Upstream;
use crate::forward::{self, Forwarding, HostHeader};
use crate::opening::SEC_WEBSOCKET_KEY;
use crate::route;

/// How a claimed handshake becomes the upgrade request a backend gets:
/// the path, `Host` and forwarding headers. Set on
/// [`WebSocketProxyLayer`](crate::WebSocketProxyLayer).
#[derive(Debug, Clone)]
pub(crate) struct Translation {
    /// Remove the route's prefix from the path.
    pub(crate) strip_prefix: bool,
    /// Put this in place of the route's prefix (no trailing `/`; empty
    /// is the same as stripping).
    pub(crate) rewrite_prefix: Option<String>,
    pub(crate) host_header: HostHeader,
    pub(crate) forwarded_header: bool,
    pub(crate) trusted_proxies: Vec<IpNet>,
}

impl Default for Translation {
    fn default() -> Self {
        Translation {
            strip_prefix: false,
            rewrite_prefix: None,
            host_header: HostHeader::Upstream,
            forwarded_header: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The upgrade request sent to the backend `upstream` for the client's
/// handshake `parts` on the route of `prefix`, with `key` as its
/// `Sec-WebSocket-Key`; `None` if the target cannot be expressed as the
/// backend's URI.
pub(crate) fn backend_request(
    parts: &http::request::Parts,
    config: &Translation,
    prefix: Option<&str>,
    peer: Option<SocketAddr>,
    upstream: &Upstream,
    key: &HeaderValue,
) -> Option<Request<Empty<Bytes>>> {
    // Each attempt (a retry on another backend too) starts from the
    // client's headers.
    let (target, mut headers) =
        forwarded(parts, parts.headers.clone(), config, prefix, peer, upstream);
    let target = target?;
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    // The key the answer is checked against: the client's over HTTP/1.1,
    // the proxy's own for an HTTP/2 client (which sent none).
    headers.insert(SEC_WEBSOCKET_KEY, key.clone());

    let mut request = Request::new(Empty::new());
    *request.uri_mut() = target;
    *request.headers_mut() = headers;
    Some(request)
}

/// What a request to the backend `upstream` carries for the client's
/// request `parts` with `headers` (its own, given up) on the route of
/// `prefix` (a handshake's or, with
/// [`HttpProxy`](crate::http_proxy::HttpProxy), a plain one's): its
/// target (path and query mapped onto the upstream's, origin-form; none
/// if that is no URI) and its headers —
/// hop-by-hop headers removed, cookies joined, forwarding headers and
/// `Host` as configured (the upstream's where the policy would leave
/// none).
pub(crate) fn forwarded(
    parts: &http::request::Parts,
    mut headers: HeaderMap,
    config: &Translation,
    prefix: Option<&str>,
    peer: Option<SocketAddr>,
    upstream: &Upstream,
) -> (Option<http::Uri>, HeaderMap) {
    let path = route::backend_path(
        parts.uri.path(),
        prefix,
        config.strip_prefix,
        config.rewrite_prefix.as_deref(),
    );
    let target = upstream.target_uri(&parts.uri, &path);

    // The client's Host, before a `Connection` naming it can remove it.
    let host_header = headers.get(header::HOST).cloned();
    forward::remove_hop_by_hop(&mut headers);
    let authority = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let http2 = parts.version == http::Version::HTTP_2;
    // HTTP/2: `:authority` wins over a `host` header (RFC 9113 §8.3.1);
    // HTTP/1.1: the `Host` header, else an absolute-form target's.
    let client_host = if http2 {
        authority.or(host_header)
    } else {
        host_header.or(authority)
    };
    if http2 {
        // HTTP/2 may split cookies into several fields; HTTP/1.1 wants one
        // (RFC 9113 §8.2.3).
        forward::join_cookies(&mut headers);
    }
    Forwarding {
        peer,
        trusted: &config.trusted_proxies,
        rfc7239: config.forwarded_header,
        // The server knows whether the connection is TLS; the request's
        // own scheme is the client's claim.
        proto: if parts.extensions.get::<crate::ClientTls>().is_some() {
            "https"
        } else {
            "http"
        },
    }
    .apply(&mut headers, client_host.as_ref());
    // HTTP/1.1 wants one: the upstream's when the client sent none.
    let host = match &config.host_header {
        HostHeader::Upstream => upstream.host_header(),
        HostHeader::Client => client_host.unwrap_or_else(|| upstream.host_header()),
        HostHeader::Fixed(value) => value.clone(),
    };
    headers.insert(header::HOST, host);
    (target, headers)
}
