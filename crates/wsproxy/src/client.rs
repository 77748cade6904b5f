//! Who the client is: the peer address the server saw, whether it came
//! over TLS, the address resolved behind trusted proxies, and the keys
//! (IP, header, cookie, ...) that admission and balancing tell clients
//! apart by.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::Extensions;
use http::header::{self, HeaderName};
use http::request::Parts;
use ipnet::IpNet;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The address of the peer that sent a request.
///
/// Insert it into request extensions when serving with plain hyper; with
/// axum, `ConnectInfo<SocketAddr>` is read instead (feature `axum`).
///
/// # Example
///
/// ```
/// use wsproxy::ClientAddr;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ClientAddr("127.0.0.1:50000".parse().unwrap()));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Marks a request that arrived over TLS, so that forwarding headers say
/// `https` (`X-Forwarded-Proto`, `Forwarded: proto=`).
///
/// The server inserts it on TLS connections: only it knows. Without it the
/// proxy says `http`, whatever the request claims (an HTTP/2 client's
/// `:scheme` is its own word, not the connection's).
///
/// ```
/// use wsproxy::ClientTls;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ClientTls);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientTls;

/// The peer address of a request: a [`ClientAddr`], else axum's
/// `ConnectInfo<SocketAddr>` (feature `axum`).
pub(crate) fn client_addr(extensions: &Extensions) -> Option<SocketAddr> {
    if let Some(ClientAddr(addr)) = extensions.get() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    None
}

/// Whether `ip` is in one of `nets`, compared in canonical form (the
/// IPv4-mapped `::ffff:10.0.0.1` of a dual-stack listener is `10.0.0.1`).
pub(crate) fn is_trusted(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|net| net.contains(&ip))
}

/// A client address in logs: the address, or `unknown`.
pub(crate) struct DisplayPeer(pub(crate) Option<SocketAddr>);

impl fmt::Display for DisplayPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// The client's address as resolved once by [`ResolveClient`](crate::admit::ResolveClient), in the
/// request's extensions: [`Key::client_ip`] and the proxy's tunnel log use
/// it when present, so every feature agrees on who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The header a trusted proxy puts the client's address in.
///
/// Read one, never "whichever is present": a proxy that appends to
/// `X-Forwarded-For` passes a client's own `Forwarded` header through
/// untouched, and reading that would let the client pick its identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardedBy {
    /// `X-Forwarded-For` (nginx, HAProxy, AWS and most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`, its `for=` parameters.
    Forwarded,
}

/// Who "a client" is, for limits kept per client.
///
/// # Example
///
/// ```
/// use wsproxy::admit::Key;
///
/// // The peer address, or, behind a load balancer on 10.0.0.0/8, the
/// // address it saw (the right-most untrusted `X-Forwarded-For` entry).
/// let by_ip = Key::client_ip().trusting(["10.0.0.0/8".parse().unwrap()]);
/// // An authenticated user id set by an auth layer in an extension.
/// #[derive(Clone)]
/// struct UserId(String);
/// let by_user = Key::custom(|request| request.extensions.get::<UserId>().map(|u| u.0.clone()));
/// # drop((by_ip, by_user));
/// ```
#[derive(Clone)]
pub struct Key {
    kind: KeyKind,
}

/// A user-supplied key function.
type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

#[derive(Clone)]
enum KeyKind {
    ClientIp(Arc<[IpNet]>),
    Header(HeaderName),
    Cookie(Arc<str>),
    Query(Arc<str>),
    Path,
    Custom(KeyFn),
}

impl Key {
    /// The client's IP address: a [`ClientIp`] resolved earlier by
    /// [`ResolveClient`](crate::admit::ResolveClient), else the peer's, unless the peer is a trusted
    /// proxy (see [`trusting`](Self::trusting)). Spoofed forwarding headers
    /// from untrusted peers change nothing.
    pub fn client_ip() -> Self {
        Self {
            kind: KeyKind::ClientIp(Arc::from([])),
        }
    }

    /// Trust these proxies: when the peer is one of them, the client is
    /// the right-most address in `X-Forwarded-For` that is not (for RFC
    /// 7239 `Forwarded`, use [`ResolveClient`](crate::admit::ResolveClient) in front).
    pub fn trusting(self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            kind: KeyKind::ClientIp(proxies.into_iter().collect()),
        }
    }

    /// The value of a request header.
    pub fn header(name: HeaderName) -> Self {
        Self {
            kind: KeyKind::Header(name),
        }
    }

    /// The value of a cookie.
    pub fn cookie(name: &str) -> Self {
        Self {
            kind: KeyKind::Cookie(name.into()),
        }
    }

    /// The value of a query parameter (the first one of that name, as
    /// written: not percent-decoded).
    pub fn query(name: &str) -> Self {
        Self {
            kind: KeyKind::Query(name.into()),
        }
    }

    /// The request path.
    pub fn path() -> Self {
        Self {
            kind: KeyKind::Path,
        }
    }

    /// Whatever `key` returns (`None`: the client has no key, and the
    /// per-key limit does not apply to it).
    pub fn custom(key: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            kind: KeyKind::Custom(Arc::new(key)),
        }
    }

    /// The key of `request`, if it has one.
    pub fn of(&self, request: &Parts) -> Option<String> {
        match &self.kind {
            KeyKind::ClientIp(trusted) => client_ip(request, trusted).map(|ip| ip.to_string()),
            KeyKind::Header(name) => request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            KeyKind::Cookie(name) => cookie(request, name),
            KeyKind::Query(name) => request.uri.query().and_then(|query| {
                query.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == &**name).then(|| v.to_owned())
                })
            }),
            KeyKind::Path => Some(request.uri.path().to_owned()),
            KeyKind::Custom(key) => key(request),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            KeyKind::ClientIp(trusted) => f.debug_tuple("ClientIp").field(trusted).finish(),
            KeyKind::Header(name) => f.debug_tuple("Header").field(name).finish(),
            KeyKind::Cookie(name) => f.debug_tuple("Cookie").field(name).finish(),
            KeyKind::Query(name) => f.debug_tuple("Query").field(name).finish(),
            KeyKind::Path => f.write_str("Path"),
            KeyKind::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// The client's address: a [`ClientIp`] already resolved, else the
/// peer's, or when the peer is trusted, the right-most `X-Forwarded-For`
/// entry that is not a trusted proxy.
///
/// Addresses are compared in canonical form (`::ffff:10.0.0.1` is
/// `10.0.0.1`); `X-Forwarded-For` entries may carry a port
/// (`203.0.113.9:5555`, `[2001:db8::1]:5555`). An entry that is not an
/// address (or a header value that is not text) hides everything left of
/// it: the client is then the right-most address after it.
pub fn client_ip(request: &Parts, trusted: &[IpNet]) -> Option<IpAddr> {
    if let Some(ClientIp(ip)) = request.extensions.get() {
        return Some(*ip);
    }
    resolve(request, trusted, ForwardedBy::XForwardedFor)
}

pub(crate) fn resolve(request: &Parts, trusted: &[IpNet], header: ForwardedBy) -> Option<IpAddr> {
    let peer = client_addr(&request.extensions)?.ip().to_canonical();
    let is_trusted = |ip: &IpAddr| is_trusted(*ip, trusted);
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let (name, parse): (HeaderName, fn(&str) -> Option<IpAddr>) = match header {
        ForwardedBy::XForwardedFor => (X_FORWARDED_FOR, address),
        ForwardedBy::Forwarded => (header::FORWARDED, forwarded_for),
    };
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in request.headers.get_all(name) {
        let Ok(value) = value.to_str() else {
            hops.clear();
            continue;
        };
        for hop in value.split(',') {
            match parse(hop) {
                Some(ip) => hops.push(ip.to_canonical()),
                None => hops.clear(),
            }
        }
    }
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .unwrap_or(peer),
    )
}

/// An address, possibly with a port: `192.0.2.1`, `192.0.2.1:80`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Some(bracketed) = text.strip_prefix('[') {
        let (ip, rest) = bracketed.split_once(']')?;
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return ip.parse().ok();
    }
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let (ip, port) = text.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(text: &str) -> bool {
    text.parse::<u16>().is_ok()
}

/// The address in the `for=` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    address(value.trim_matches('"'))
}

pub(crate) fn cookie(request: &Parts, name: &str) -> Option<String> {
    request
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::Request;

    /// A request from `peer` with `headers`.
    pub(crate) fn parts(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().uri("/chat");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(crate::ClientAddr(peer.parse().unwrap()));
        parts
    }

    #[test]
    fn client_ip_trusts_forwarding_headers_only_from_trusted_peers() {
        let spoofed = parts("192.0.2.7:1", &[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(client_ip(&spoofed, &[]), Some("192.0.2.7".parse().unwrap()));
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // Behind two trusted hops: the right-most untrusted entry.
        let behind = parts(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.9, 10.0.0.2")],
        );
        assert_eq!(
            client_ip(&behind, &trusted),
            Some("198.51.100.9".parse().unwrap())
        );
        // Untrusted peer with the same header: the peer.
        let direct = parts("203.0.113.5:1", &[("x-forwarded-for", "198.51.100.9")]);
        assert_eq!(
            client_ip(&direct, &trusted),
            Some("203.0.113.5".parse().unwrap())
        );
        // Nothing but trusted hops: the left-most is as far as we can see.
        let internal = parts("10.0.0.1:1", &[("x-forwarded-for", "10.0.0.3")]);
        assert_eq!(
            client_ip(&internal, &trusted),
            Some("10.0.0.1".parse().unwrap())
        );
        // Only the configured header counts: a client's own `Forwarded`,
        // passed through by a proxy that appends to X-Forwarded-For,
        // changes nothing.
        let spoof = parts(
            "10.0.0.1:1",
            &[
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        );
        assert_eq!(
            client_ip(&spoof, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // RFC 7239 `Forwarded` when asked for.
        let rfc = parts(
            "10.0.0.1:1",
            &[
                (
                    "forwarded",
                    "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https",
                ),
                ("x-forwarded-for", "198.51.100.9"),
            ],
        );
        let via_forwarded = |p: &Parts| resolve(p, &trusted, ForwardedBy::Forwarded);
        assert_eq!(via_forwarded(&rfc), Some("2001:db8::7".parse().unwrap()));
        let rfc = parts(
            "10.0.0.1:1",
            &[("forwarded", "for=\"192.0.2.60:80\", for=unknown")],
        );
        assert_eq!(via_forwarded(&rfc), Some("10.0.0.1".parse().unwrap()));
        let rfc = parts("10.0.0.1:1", &[("forwarded", "For=192.0.2.60;by=10.0.0.1")]);
        assert_eq!(via_forwarded(&rfc), Some("192.0.2.60".parse().unwrap()));
        // Ports, brackets, and IPv4-mapped peers.
        for hop in ["203.0.113.9:5555", "[203.0.113.9]:5555"] {
            let ported = parts("10.0.0.1:1", &[("x-forwarded-for", hop)]);
            assert_eq!(
                client_ip(&ported, &trusted),
                Some("203.0.113.9".parse().unwrap()),
                "{hop}"
            );
        }
        let v6 = parts("10.0.0.1:1", &[("x-forwarded-for", "[2001:db8::1]:5555")]);
        assert_eq!(
            client_ip(&v6, &trusted),
            Some("2001:db8::1".parse().unwrap())
        );
        let mapped = parts("[::ffff:10.0.0.1]:1", &[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            client_ip(&mapped, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        // Garbage left of a valid hop does not leak through.
        let garbage = parts(
            "10.0.0.1:1",
            &[("x-forwarded-for", "nonsense, 198.51.100.9")],
        );
        assert_eq!(
            client_ip(&garbage, &trusted),
            Some("198.51.100.9".parse().unwrap())
        );
    }

    #[test]
    fn keys() {
        let p = parts(
            "192.0.2.7:1",
            &[("x-user", "alice"), ("cookie", "a=1; session=xyz; b=2")],
        );
        assert_eq!(Key::client_ip().of(&p).as_deref(), Some("192.0.2.7"));
        assert_eq!(
            Key::header(HeaderName::from_static("x-user"))
                .of(&p)
                .as_deref(),
            Some("alice")
        );
        assert_eq!(Key::cookie("session").of(&p).as_deref(), Some("xyz"));
        assert_eq!(Key::cookie("missing").of(&p), None);
        assert_eq!(Key::path().of(&p).as_deref(), Some("/chat"));
        let mut q = parts("192.0.2.7:1", &[]);
        q.uri = "/chat?room=7&user=bo&flag".parse().unwrap();
        assert_eq!(Key::query("user").of(&q).as_deref(), Some("bo"));
        assert_eq!(Key::query("flag").of(&q).as_deref(), Some(""));
        assert_eq!(Key::query("us").of(&q), None);
        assert_eq!(Key::query("user").of(&p), None);
        assert_eq!(
            Key::custom(|r| Some(r.method.to_string()))
                .of(&p)
                .as_deref(),
            Some("GET")
        );
    }
}
