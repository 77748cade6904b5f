//! Which WebSocket handshakes a proxy claims.
//!
//! A [`WebSocketProxy`](crate::WebSocketProxy) only takes requests that are
//! WebSocket opening handshakes *and* match its [`Route`]; everything else,
//! including the app's own WebSocket handlers on other paths, goes to the
//! inner service untouched.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Uri};

/// Which handshakes a proxy claims: all, a path prefix, or a predicate.
///
/// # Example
///
/// ```
/// use wsproxy::Route;
///
/// let route = Route::prefix("/chat");
/// assert!(route.matches(&"/chat".parse().unwrap(), &Default::default()));
/// assert!(route.matches(&"/chat/room?id=1".parse().unwrap(), &Default::default()));
/// assert!(!route.matches(&"/chatty".parse().unwrap(), &Default::default()));
/// ```
#[derive(Clone)]
pub struct Route {
    kind: Kind,
    /// Only handshakes for this host (lowercase, no port), if set.
    host: Option<Arc<str>>,
    /// How it shows (`[host]prefix`), made once: the metrics label of
    /// every handshake and tunnel of the route.
    label: Arc<str>,
    /// Its metric keys, made once with the label.
    #[cfg(feature = "metrics")]
    keys: Arc<crate::metrics::RouteKeys>,
}

#[derive(Clone)]
enum Kind {
    Any,
    Prefix(Arc<str>),
    Predicate(Arc<Predicate>),
}

type Predicate = dyn Fn(&Uri, &HeaderMap) -> bool + Send + Sync;

impl Route {
    /// Claim every WebSocket handshake (the default).
    pub fn any() -> Self {
        Self::labelled(Kind::Any, None, "/".into())
    }

    /// Claim handshakes whose path is `prefix` or lies below it, by whole
    /// segments: `/chat` matches `/chat`, `/chat/` and `/chat/room`, not
    /// `/chatty`. A trailing `/` on `prefix` is ignored; `/` matches all.
    ///
    /// # Panics
    ///
    /// If `prefix` does not start with `/`.
    pub fn prefix(prefix: &str) -> Self {
        assert!(prefix.starts_with('/'), "a route prefix starts with '/'");
        let trimmed = prefix.trim_end_matches('/');
        if trimmed.is_empty() {
            return Self::any();
        }
        let prefix: Arc<str> = trimmed.into();
        Self::labelled(Kind::Prefix(prefix.clone()), None, prefix)
    }

    /// Claim handshakes for which `predicate` returns `true`.
    pub fn predicate<F>(predicate: F) -> Self
    where
        F: Fn(&Uri, &HeaderMap) -> bool + Send + Sync + 'static,
    {
        Self::labelled(
            Kind::Predicate(Arc::new(predicate)),
            None,
            "<predicate>".into(),
        )
    }

    /// Claim only handshakes for `host` (the request's `Host`, or its
    /// `:authority` over HTTP/2; the port and the letter case do not
    /// count), as nginx's `server_name` does.
    ///
    /// ```
    /// use wsproxy::Route;
    /// use http::{HeaderMap, HeaderValue, header::HOST};
    ///
    /// let route = Route::prefix("/chat").host("Chat.example.com");
    /// let mut headers = HeaderMap::new();
    /// headers.insert(HOST, HeaderValue::from_static("chat.example.com:8443"));
    /// assert!(route.matches(&"/chat".parse().unwrap(), &headers));
    /// headers.insert(HOST, HeaderValue::from_static("example.com"));
    /// assert!(!route.matches(&"/chat".parse().unwrap(), &headers));
    /// ```
    pub fn host(self, host: &str) -> Self {
        let host: Arc<str> = host.to_ascii_lowercase().into();
        let path = match &self.kind {
            Kind::Any => "/",
            Kind::Prefix(prefix) => prefix,
            Kind::Predicate(_) => "<predicate>",
        };
        let label = format!("{host}{path}").into();
        Self::labelled(self.kind, Some(host), label)
    }

    fn labelled(kind: Kind, host: Option<Arc<str>>, label: Arc<str>) -> Self {
        Self {
            kind,
            host,
            #[cfg(feature = "metrics")]
            keys: Arc::new(crate::metrics::RouteKeys::new(label.clone())),
            label,
        }
    }

    /// Does this route claim a handshake for `uri` with `headers`?
    pub fn matches(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        if let Some(host) = &self.host
            && !host_is(host, uri, headers)
        {
            return false;
        }
        match &self.kind {
            Kind::Any => true,
            Kind::Prefix(prefix) => strip_prefix(prefix, uri.path()).is_some(),
            Kind::Predicate(predicate) => predicate(uri, headers),
        }
    }

    /// This route as a metrics label, made once (labelling a handshake or
    /// a tunnel allocates nothing).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(&self) -> Arc<str> {
        self.label.clone()
    }

    /// Its metric keys, made once.
    #[cfg(feature = "metrics")]
    pub(crate) fn metric_keys(&self) -> &Arc<crate::metrics::RouteKeys> {
        &self.keys
    }

    /// The prefix a backend's path is mapped from (stripped or
    /// rewritten): a prefix route's, the empty one for [`Route::any`]
    /// (which `Route::prefix("/")` is: a replacement goes in front), none
    /// for a predicate (the path goes as it is).
    pub(crate) fn path_prefix(&self) -> Option<&str> {
        match &self.kind {
            Kind::Prefix(prefix) => Some(prefix),
            Kind::Any => Some(""),
            Kind::Predicate(_) => None,
        }
    }
}

/// Whether the request is for `host` (lowercase): its `:authority`, else
/// its `Host`, without the port.
fn host_is(host: &str, uri: &Uri, headers: &HeaderMap) -> bool {
    let authority = match uri.authority() {
        Some(authority) => authority.host(),
        None => {
            let Some(value) = headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
            else {
                return false;
            };
            // `[v6]:port`, `name:port` or `name`.
            match value.rfind(':') {
                Some(colon) if !value[colon..].contains(']') => &value[..colon],
                _ => value,
            }
        }
    };
    authority.eq_ignore_ascii_case(host)
}

/// The path a backend gets for `path`, claimed under `prefix`: without
/// the prefix (`strip`), or with `rewrite` in its place, or as it is.
pub(crate) fn backend_path<'a>(
    path: &'a str,
    prefix: Option<&str>,
    strip: bool,
    rewrite: Option<&str>,
) -> std::borrow::Cow<'a, str> {
    let rest = match prefix {
        Some(prefix) if strip || rewrite.is_some() => strip_prefix(prefix, path),
        _ => None,
    };
    match (rest, rewrite) {
        (Some(rest), Some(replacement)) => format!("{replacement}{rest}").into(),
        (Some(rest), None) => rest.into(),
        (None, _) => path.into(),
    }
}

/// `path` without `prefix`, if `path` lies at or below `prefix`.
pub(crate) fn strip_prefix<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

impl Default for Route {
    fn default() -> Self {
        Self::any()
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(route: &Route, path: &str) -> bool {
        route.matches(&path.parse().unwrap(), &HeaderMap::new())
    }

    #[test]
    fn prefix_matches_whole_segments() {
        let route = Route::prefix("/chat/");
        assert!(matches(&route, "/chat"));
        assert!(matches(&route, "/chat/"));
        assert!(matches(&route, "/chat/a/b?x=1"));
        assert!(!matches(&route, "/chatty"));
        assert!(!matches(&route, "/"));
        assert!(matches(&Route::prefix("/"), "/anything"));
    }

    #[test]
    fn predicate_sees_uri_and_headers() {
        let route = Route::predicate(|uri, headers| {
            uri.query() == Some("proxy") && headers.contains_key("x-proxy")
        });
        let mut headers = HeaderMap::new();
        assert!(!route.matches(&"/a?proxy".parse().unwrap(), &headers));
        headers.insert("x-proxy", "1".parse().unwrap());
        assert!(route.matches(&"/a?proxy".parse().unwrap(), &headers));
    }

    #[test]
    fn a_route_shows_as_host_and_prefix_and_labels_with_the_same_text() {
        for (route, text) in [
            (Route::any(), "/"),
            (Route::prefix("/chat/"), "/chat"),
            (
                Route::prefix("/chat").host("Chat.Example"),
                "chat.example/chat",
            ),
            (Route::any().host("h"), "h/"),
            (Route::predicate(|_, _| true), "<predicate>"),
        ] {
            assert_eq!(route.to_string(), text);
            assert_eq!(&*route.label(), text);
        }
    }
}
