//! [`OriginCheck`]: an allow-list of `Origin`s (`403`).

use std::fmt;
use std::sync::Arc;

use http::StatusCode;
use http::header;
use http::request::Parts;

use super::admission::{Admission, Admitting, Refusal};
use super::layer::AdmitLayer;

/// A user-supplied origin predicate.
type OriginFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Refuses a handshake whose `Origin` is not on an allow-list, with `403
/// Forbidden`, before any backend is contacted.
///
/// Browsers send `Origin` with every WebSocket handshake and do not
/// preflight it, and they attach the user's cookies: a page on any site can
/// open a WebSocket to yours as your logged-in user (cross-site WebSocket
/// hijacking). CORS does not stop it, because CORS governs what a page may
/// *read* from `fetch`, and a WebSocket handshake is never preflighted; the
/// server has to check `Origin` itself. Non-browser clients may send no
/// `Origin`: refused by default, allowed with
/// [`allow_missing`](Self::allow_missing).
///
/// Entries are exact origins (`https://app.example`, scheme and port
/// included, compared case-insensitively) or a wildcard for subdomains
/// (`https://*.example.com` matches `https://a.example.com` and
/// `https://a.b.example.com`, not `https://example.com`).
///
/// # Example
///
/// ```
/// use wsproxy::admit::OriginCheck;
///
/// let layer = OriginCheck::new(["https://app.example", "https://*.app.example"])
///     .allow_missing(true)
///     .layer();
/// # drop(layer);
/// ```
#[derive(Clone)]
#[must_use]
pub struct OriginCheck {
    exact: Vec<String>,
    wildcard: Vec<(String, String)>,
    predicate: Option<OriginFn>,
    allow_missing: bool,
}

impl OriginCheck {
    /// Allow these origins (exact, or `scheme://*.domain` wildcards).
    pub fn new<I, O>(origins: I) -> Self
    where
        I: IntoIterator<Item = O>,
        O: AsRef<str>,
    {
        let mut check = Self {
            exact: Vec::new(),
            wildcard: Vec::new(),
            predicate: None,
            allow_missing: false,
        };
        for origin in origins {
            let origin = origin.as_ref().trim_end_matches('/').to_ascii_lowercase();
            match origin.split_once("://*.") {
                Some((scheme, domain)) => check
                    .wildcard
                    .push((format!("{scheme}://"), format!(".{domain}"))),
                None => check.exact.push(origin),
            }
        }
        check
    }

    /// Also allow origins for which `allow` returns `true`.
    pub fn or(mut self, allow: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(match self.predicate.take() {
            Some(before) => Arc::new(move |origin: &str| before(origin) || allow(origin)),
            None => Arc::new(allow),
        });
        self
    }

    /// Let handshakes without `Origin` on (default: `false`).
    pub fn allow_missing(mut self, allow: bool) -> Self {
        self.allow_missing = allow;
        self
    }

    /// This check as a layer.
    pub fn layer(self) -> AdmitLayer<Self> {
        AdmitLayer::new(self)
    }

    fn allows(&self, origin: &str) -> bool {
        let lower = origin.to_ascii_lowercase();
        self.exact.contains(&lower)
            || self.wildcard.iter().any(|(scheme, suffix)| {
                lower
                    .strip_prefix(scheme.as_str())
                    .and_then(|host| host.strip_suffix(suffix.as_str()))
                    .is_some_and(is_subdomain_labels)
            })
            || self.predicate.as_ref().is_some_and(|allow| allow(origin))
    }
}

/// Whether `labels` is what may stand for `*` in `*.example.com`: one or
/// more non-empty DNS labels, and nothing else (no port, path, query,
/// fragment or userinfo).
fn is_subdomain_labels(labels: &str) -> bool {
    !labels.is_empty()
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Debug for OriginCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginCheck")
            .field("exact", &self.exact)
            .field("wildcard", &self.wildcard)
            .field("predicate", &self.predicate.is_some())
            .field("allow_missing", &self.allow_missing)
            .finish()
    }
}

impl Admission for OriginCheck {
    fn admit(&self, mut request: Parts) -> Admitting {
        let verdict = self.check(&mut request);
        Admitting::ready(request, verdict)
    }
}

impl OriginCheck {
    /// The check, decided at once.
    pub(crate) fn check(&self, request: &mut Parts) -> Result<(), Refusal> {
        let origins = request.headers.get_all(header::ORIGIN);
        let mut iter = origins.iter();
        match (iter.next(), iter.next()) {
            (None, _) if self.allow_missing => Ok(()),
            (None, _) => Err(Refusal::new(StatusCode::FORBIDDEN, "origin required")),
            (Some(origin), None) if origin.to_str().is_ok_and(|origin| self.allows(origin)) => {
                Ok(())
            }
            _ => Err(Refusal::new(StatusCode::FORBIDDEN, "origin not allowed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let check = OriginCheck::new(["https://app.example", "https://*.example.com/"]);
        assert!(check.allows("https://app.example"));
        assert!(check.allows("HTTPS://APP.example"));
        assert!(check.allows("https://a.example.com"));
        assert!(check.allows("https://a.b.example.com"));
        assert!(!check.allows("https://example.com"));
        assert!(!check.allows("https://evilexample.com"));
        assert!(!check.allows("http://a.example.com"));
        assert!(!check.allows("https://app.example.evil"));
        assert!(!check.allows("null"));
        for trick in [
            "https://evil.com/.example.com",
            "https://evil.com?.example.com",
            "https://evil.com#.example.com",
            "https://user@evil.com.example.com@x.example.com",
            "https://..example.com",
            "https://a..b.example.com",
            "https://a.example.com:8443",
        ] {
            assert!(!check.allows(trick), "{trick}");
        }
        let ported = OriginCheck::new(["https://*.example.com:8443"]);
        assert!(ported.allows("https://a.example.com:8443"));
        assert!(!ported.allows("https://a.example.com"));
        let check = check
            .or(|o| o.starts_with("http://localhost:"))
            .or(|o| o == "app://desktop");
        assert!(check.allows("http://localhost:3000"));
        assert!(check.allows("app://desktop"), "predicates add up");
    }
}
