//! The backend a route proxies to, and how a request's target maps onto it.

use std::error::Error;
use std::fmt;
use std::str::FromStr;

use http::uri::Authority;
use http::{HeaderValue, Uri};

/// A WebSocket backend: `ws://host[:port][/path][?query]`, or
/// `wss://host[:port][/path][?query]` reached over TLS (feature `tls`;
/// see the `wsproxy::tls` module).
///
/// The request path is appended to the upstream's path (after optional
/// prefix stripping, see
/// [`WebSocketProxyLayer::strip_prefix`](crate::WebSocketProxyLayer::strip_prefix))
/// and the request's query string is kept.
///
/// # Example
///
/// ```
/// use wsproxy::Upstream;
///
/// let upstream: Upstream = "ws://127.0.0.1:9001/base".parse().unwrap();
/// assert_eq!(upstream.authority(), "127.0.0.1:9001");
/// assert!(!upstream.is_tls());
/// assert!("http://127.0.0.1:9001".parse::<Upstream>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    host: String,
    port: u16,
    authority: Authority,
    /// `authority` as a header value, made once: each request to it may
    /// carry it as `Host`.
    host_header: HeaderValue,
    path: String,
    query: Option<String>,
    tls: bool,
}

impl Upstream {
    /// The host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port (when the URL has none: 80 for `ws://`, 443 for
    /// `wss://`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it is a `wss://` backend, reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The authority as written in the URL, the default `Host` sent to it.
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    pub(crate) fn host_header(&self) -> HeaderValue {
        self.host_header.clone()
    }

    /// The request target sent to this upstream for a client request with
    /// path `rest` (already stripped of any prefix) and `query`.
    pub(crate) fn target(&self, rest: &str, query: Option<&str>) -> String {
        let base = self.path.trim_end_matches('/');
        let mut target = String::with_capacity(base.len() + rest.len() + 16);
        target.push_str(base);
        if rest.is_empty() {
            if self.path.ends_with('/') || base.is_empty() {
                target.push('/');
            }
        } else {
            if !rest.starts_with('/') {
                target.push('/');
            }
            target.push_str(rest);
        }
        match (self.query.as_deref(), query) {
            (Some(a), Some(b)) => {
                target.push('?');
                target.push_str(a);
                target.push('&');
                target.push_str(b);
            }
            (Some(q), None) | (None, Some(q)) => {
                target.push('?');
                target.push_str(q);
            }
            (None, None) => {}
        }
        target
    }

    /// [`target`](Self::target) as an origin-form URI, for a client's
    /// request `uri` whose path the route mapped to `rest`. When nothing
    /// changes the client's target (`rest` is its whole path, and this
    /// upstream has no path or query of its own) that target is taken as
    /// it is, without copying or parsing it again.
    pub(crate) fn target_uri(&self, uri: &Uri, rest: &str) -> Option<Uri> {
        if self.query.is_none()
            && self.path.trim_end_matches('/').is_empty()
            && rest == uri.path()
            && let Some(target) = uri.path_and_query()
            && target.as_str().starts_with('/')
        {
            return Some(Uri::from(target.clone()));
        }
        Uri::try_from(self.target(rest, uri.query())).ok()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.authority, self.path)?;
        if let Some(query) = &self.query {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

impl FromStr for Upstream {
    type Err = InvalidUpstream;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s
            .parse()
            .map_err(|_| InvalidUpstream::new(s, "not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            #[cfg(feature = "tls")]
            Some("wss") => true,
            #[cfg(not(feature = "tls"))]
            Some("wss") => {
                return Err(InvalidUpstream::new(
                    s,
                    "wss:// backends need the `tls` feature",
                ));
            }
            _ => {
                return Err(InvalidUpstream::new(
                    s,
                    "the scheme must be ws:// or wss://",
                ));
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| InvalidUpstream::new(s, "no host"))?;
        if authority.as_str().contains('@') {
            return Err(InvalidUpstream::new(s, "user information is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(InvalidUpstream::new(s, "no host"));
        }
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| InvalidUpstream::new(s, "not a URL"))?;
        Ok(Self {
            host: host.to_owned(),
            host_header,
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            authority,
            tls,
        })
    }
}

impl TryFrom<&str> for Upstream {
    type Error = InvalidUpstream;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The error returned when an [`Upstream`] URL cannot be parsed.
#[derive(Debug, Clone)]
pub struct InvalidUpstream {
    url: String,
    reason: &'static str,
}

impl InvalidUpstream {
    pub(crate) fn new(url: &str, reason: &'static str) -> Self {
        Self {
            url: url.to_owned(),
            reason,
        }
    }
}

impl fmt::Display for InvalidUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid upstream {:?}: {}", self.url, self.reason)
    }
}

impl Error for InvalidUpstream {}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Upstream {
        s.parse().unwrap()
    }

    #[test]
    fn parses() {
        let u = up("ws://[::1]:9000/x");
        assert_eq!(
            (u.host(), u.port(), u.authority()),
            ("::1", 9000, "[::1]:9000")
        );
        assert_eq!(up("ws://example.com").port(), 80);
        assert!(!up("ws://example.com").is_tls());
        for bad in [
            "http://a",
            "https://a",
            "a:1",
            "ws://u@a/",
            "ws:///x",
            "nonsense",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn parses_wss() {
        let u = up("wss://example.com/base?k=v");
        assert!(u.is_tls());
        assert_eq!((u.host(), u.port()), ("example.com", 443));
        assert_eq!(u.authority(), "example.com");
        assert_eq!(u.to_string(), "wss://example.com/base?k=v");
        let u = up("wss://[::1]:8443");
        assert_eq!((u.host(), u.port(), u.is_tls()), ("::1", 8443, true));
        // Not the same backend as the plain one on the same port.
        assert_ne!(up("wss://a:443"), up("ws://a:443"));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn wss_needs_the_tls_feature() {
        let error = "wss://a".parse::<Upstream>().unwrap_err().to_string();
        assert!(
            error.contains("wss:// backends need the `tls` feature"),
            "{error}"
        );
    }

    #[test]
    fn targets() {
        assert_eq!(up("ws://a").target("/x", None), "/x");
        assert_eq!(up("ws://a").target("", None), "/");
        assert_eq!(up("ws://a/").target("/x", Some("q=1")), "/x?q=1");
        assert_eq!(up("ws://a/base").target("/x", None), "/base/x");
        assert_eq!(up("ws://a/base/").target("/x", None), "/base/x");
        assert_eq!(up("ws://a/base").target("", None), "/base");
        assert_eq!(up("ws://a/base/").target("", None), "/base/");
        assert_eq!(up("ws://a/base").target("/", None), "/base/");
        assert_eq!(up("ws://a/b?k=v").target("/x", Some("q=1")), "/b/x?k=v&q=1");
    }

    #[test]
    fn a_target_uri_is_the_target_whether_taken_as_it_is_or_made() {
        let upstreams = [
            "ws://a",
            "ws://a/",
            "ws://a/base",
            "ws://a/base/",
            "ws://a?k=v",
        ];
        // (the client's target, the path the route mapped it to)
        let requests = [
            ("/", "/"),
            ("/x/y?q=1&r", "/x/y"),
            ("/x?", "/x"),
            ("http://host", "/"),
            ("http://host?q=1", "/"),
            ("http://host/p?q", "/p"),
            // a prefix stripped, and one rewritten to one of equal length
            ("/api/x?q", "/x"),
            ("/api/x?q", "/web/x"),
            ("/api", ""),
        ];
        for upstream in upstreams {
            let upstream = up(upstream);
            for (target, rest) in requests {
                let uri: Uri = target.parse().unwrap();
                let made = upstream.target(rest, uri.query());
                let got = upstream.target_uri(&uri, rest).unwrap();
                // As the request head has it (`Uri`'s `Display` would
                // write a `/` before a target of only a query).
                assert_eq!(
                    got.path_and_query().unwrap().as_str(),
                    made,
                    "{upstream} {target} {rest}"
                );
                assert!(got.scheme().is_none() && got.authority().is_none());
            }
        }
        // Taken as it is: the same bytes as the client's target.
        let uri: Uri = "/x/y?q=1".parse().unwrap();
        let got = up("ws://a").target_uri(&uri, "/x/y").unwrap();
        assert_eq!(
            got.path_and_query().unwrap().as_str().as_ptr(),
            uri.path_and_query().unwrap().as_str().as_ptr()
        );
    }
}
