//! Headers sent to the backend: end-to-end headers pass, hop-by-hop headers
//! do not, and forwarding headers say who the client was.
//!
//! # Forwarding headers
//!
//! The proxy sets `X-Forwarded-For`, `X-Forwarded-Proto` and
//! `X-Forwarded-Host`, and optionally RFC 7239 `Forwarded`
//! ([`WebSocketProxyLayer::forwarded_header`](crate::WebSocketProxyLayer::forwarded_header)).
//!
//! Whether the values a client sent are kept depends on the peer that
//! connected to us:
//!
//! - By default no peer is trusted: any `X-Forwarded-*` or `Forwarded`
//!   header from the client is **replaced**, so a client cannot claim to be
//!   someone else (`X-Forwarded-For: <peer ip>`).
//! - When the peer address lies in one of the
//!   [trusted proxies](crate::WebSocketProxyLayer::trusted_proxies), the
//!   peer is **appended** to the client's `X-Forwarded-For` / `Forwarded`
//!   and its `X-Forwarded-Proto` / `X-Forwarded-Host` are kept.
//!
//! # The client address
//!
//! The peer address comes from the request extensions: a [`ClientAddr`](crate::ClientAddr) set
//! by a hyper server, or axum's `ConnectInfo<SocketAddr>` (feature `axum`,
//! on by default; serve with `into_make_service_with_connect_info`). When
//! neither is present the proxy does not know the client: it trusts no
//! forwarding header, sends no `X-Forwarded-For`, sends `for=unknown` in
//! `Forwarded`, and logs `client=unknown`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

use crate::client::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, is_trusted};

/// The `Host` header sent to the backend.
///
/// The default, [`HostHeader::Upstream`], is what nginx does
/// (`$proxy_host`); the client's `Host` then travels in
/// `X-Forwarded-Host`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostHeader {
    /// The upstream URL's authority, e.g. `127.0.0.1:9001` (the default).
    #[default]
    Upstream,
    /// The `Host` the client sent (what Caddy does).
    Client,
    /// A fixed value.
    Fixed(HeaderValue),
}

const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The headers that are hop-by-hop whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Remove hop-by-hop headers (RFC 9110 §7.6.1): the fixed list plus every
/// header the message's `Connection` names.
///
/// One look at each name the message has, and a removal only of those
/// there: a handshake carries one or two of them among a dozen fields,
/// and a removal of an absent name costs a hash and a probe each.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // The usual tokens (`Upgrade`, `keep-alive`) name headers of the
    // fixed list: no name is made for them (nor an allocation).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !HOP_BY_HOP
                .iter()
                .any(|hop| t.eq_ignore_ascii_case(hop.as_str().as_bytes()))
        })
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    let mut present = [false; 9];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (name, present) in HOP_BY_HOP.into_iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// Join every `Cookie` field into one, separated by `; ` (HTTP/2 may
/// split cookies into several fields; HTTP/1.1 wants one, RFC 9113
/// §8.2.3).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// What the proxy knows about the client when it forwards a request.
#[derive(Debug)]
pub(crate) struct Forwarding<'a> {
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) trusted: &'a [IpNet],
    pub(crate) rfc7239: bool,
    pub(crate) proto: &'static str,
}

impl Forwarding<'_> {
    fn peer_is_trusted(&self) -> bool {
        self.peer
            .is_some_and(|peer| is_trusted(peer.ip(), self.trusted))
    }

    /// Rewrite the forwarding headers of a request on its way to a backend.
    /// `client_host` is the `Host` the client asked for.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, client_host: Option<&HeaderValue>) {
        let trusted = self.peer_is_trusted();
        let peer = self.peer.map(|p| p.ip().to_canonical());
        if trusted {
            if let Some(peer) = peer {
                append_list(headers, X_FORWARDED_FOR, IpText::of(peer).as_str());
            }
            if !headers.contains_key(X_FORWARDED_PROTO) {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
            }
            if let Some(host) = client_host
                && !headers.contains_key(X_FORWARDED_HOST)
            {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
        } else {
            // What the client claimed goes (only what it sent is looked
            // for), and the proxy's own values take its place.
            const CLAIMS: [HeaderName; 4] = [
                X_FORWARDED_FOR,
                X_FORWARDED_PROTO,
                X_FORWARDED_HOST,
                header::FORWARDED,
            ];
            let mut claimed = [false; 4];
            for name in headers.keys() {
                if let Some(i) = CLAIMS.iter().position(|claim| claim == name) {
                    claimed[i] = true;
                }
            }
            for (name, claimed) in CLAIMS.into_iter().zip(claimed) {
                if claimed {
                    headers.remove(name);
                }
            }
            if let Some(peer) = peer
                && let Ok(value) = HeaderValue::from_str(IpText::of(peer).as_str())
            {
                headers.insert(X_FORWARDED_FOR, value);
            }
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
            if let Some(host) = client_host {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
        }
        if self.rfc7239 {
            let mut element = String::with_capacity(64);
            match peer {
                Some(IpAddr::V4(ip)) => write!(element, "for={ip}").unwrap(),
                Some(IpAddr::V6(ip)) => write!(element, "for=\"[{ip}]\"").unwrap(),
                None => element.push_str("for=unknown"),
            }
            if let Some(host) = client_host.and_then(|h| h.to_str().ok()) {
                if is_token(host) {
                    write!(element, ";host={host}").unwrap();
                } else {
                    write!(element, ";host=\"{}\"", host.replace(['"', '\\'], "")).unwrap();
                }
            }
            write!(element, ";proto={}", self.proto).unwrap();
            append_list(headers, header::FORWARDED, &element);
        }
    }
}

/// An IP address as text, on the stack. IPv4 is written without
/// `core::fmt` (its `Display` cost 1,300 instructions a request, a few
/// percent of a small one); IPv6, rarer, goes through it.
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    fn of(ip: IpAddr) -> Self {
        let mut text = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                // At most 45 bytes (`ffff:…:255.255.255.255`).
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        // Digits, dots, hex digits and colons only.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Whether `s` is an RFC 9110 token (also what a cookie name must be).
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Append `value` to a comma-separated list header, merging repeated
/// headers into one line.
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut line = String::new();
    for existing in headers.get_all(&name) {
        if let Ok(existing) = existing.to_str() {
            line.push_str(existing);
            line.push_str(", ");
        }
    }
    line.push_str(value);
    if let Ok(line) = HeaderValue::try_from(line) {
        headers.insert(name, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_display_without_fmt() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.5.109",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, 255 - octet, octet / 2, 7]);
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
        }
    }

    fn forwarding(peer: &str, trusted: &[IpNet], rfc7239: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        headers.insert(X_FORWARDED_HOST, "evil".parse().unwrap());
        headers.insert(header::FORWARDED, "for=6.6.6.6".parse().unwrap());
        Forwarding {
            peer: Some(peer.parse().unwrap()),
            trusted,
            rfc7239,
            proto: "http",
        }
        .apply(&mut headers, Some(&"app.example".parse().unwrap()));
        headers
    }

    #[test]
    fn untrusted_peer_replaces_client_headers() {
        let h = forwarding("192.0.2.1:1234", &[], true);
        assert_eq!(h[X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(h[X_FORWARDED_HOST], "app.example");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(
            h[header::FORWARDED],
            "for=192.0.2.1;host=app.example;proto=http"
        );
    }

    #[test]
    fn trusted_peer_appends() {
        let trusted = ["192.0.2.0/24".parse().unwrap()];
        let h = forwarding("192.0.2.1:1234", &trusted, true);
        assert_eq!(h[X_FORWARDED_FOR], "6.6.6.6, 192.0.2.1");
        assert_eq!(h[X_FORWARDED_HOST], "evil");
        assert_eq!(
            h[header::FORWARDED],
            "for=6.6.6.6, for=192.0.2.1;host=app.example;proto=http"
        );
        let h = forwarding("[::1]:1", &["::1/128".parse().unwrap()], true);
        assert_eq!(h[X_FORWARDED_FOR], "6.6.6.6, ::1");
        assert!(
            h[header::FORWARDED]
                .to_str()
                .unwrap()
                .contains("for=\"[::1]\"")
        );
    }

    #[test]
    fn an_ipv4_mapped_peer_is_trusted_and_forwarded_as_ipv4() {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; the
        // trust check and the address sent must be the same as
        // `admit::client_ip`'s.
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let h = forwarding("[::ffff:10.0.0.1]:1", &trusted, true);
        assert_eq!(h[X_FORWARDED_FOR], "6.6.6.6, 10.0.0.1");
        assert!(
            h[header::FORWARDED]
                .to_str()
                .unwrap()
                .contains("for=10.0.0.1;")
        );
    }

    #[test]
    fn unknown_peer_sends_no_xff() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, "6.6.6.6".parse().unwrap());
        Forwarding {
            peer: None,
            trusted: &[],
            rfc7239: true,
            proto: "http",
        }
        .apply(&mut headers, None);
        assert!(!headers.contains_key(X_FORWARDED_FOR));
        assert_eq!(headers[header::FORWARDED], "for=unknown;proto=http");
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, Upgrade, X-Secret, close"),
            (
                "connection",
                "x-other,, Upgrade-Insecure-Requests ,Connection",
            ),
            ("x-other", "2"),
            ("upgrade-insecure-requests", "1"),
            // Not named: only like names of the fixed list.
            ("keep-alive-x", "kept"),
            ("te-x", "kept"),
            ("close", "named by the option close too"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("cookie", "a=b"),
            ("origin", "http://o"),
        ] {
            headers.append(name, value.parse().unwrap());
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["cookie", "keep-alive-x", "origin", "te-x"]);
    }
}
