//! [`ForwardAuth`]: ask an auth service about each handshake (nginx's
//! `auth_request`, Traefik's `forwardAuth`, Caddy's `forward_auth`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};

use super::admission::{Admission, Admitting, Refusal};
use super::layer::AdmitLayer;
use crate::client::{ClientIp, ClientTls, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::pooling::Pooling;
use crate::upstream::InvalidUpstream;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The largest body of an auth service's answer relayed to a client.
const MAX_BODY: usize = 64 * 1024;
/// The most positive answers remembered at once.
const MAX_CACHED: usize = 10_000;

/// Ask an auth service whether a handshake may open, before any backend is
/// contacted: nginx's `auth_request`, Traefik's `forwardAuth`.
///
/// Each WebSocket handshake becomes a `GET` to the auth URL carrying the
/// client's headers (`Cookie`, `Authorization`, `Origin`,
/// `Sec-WebSocket-Protocol`, ...; not the hop-by-hop ones nor the
/// WebSocket key), and who asked for what: `X-Forwarded-For` (the client
/// address, as [resolved](super::ResolveClient)), `X-Forwarded-Proto`,
/// `X-Forwarded-Host`, `X-Forwarded-Method` (`GET`, also for an HTTP/2
/// WebSocket's `CONNECT`) and `X-Forwarded-Uri` (path and query). Its answer:
///
/// - **2xx**: the handshake goes on, with the response headers named by
///   [`copy_headers`](Self::copy_headers) (e.g. `X-User-Id`) added to
///   the upgrade request. Those names are removed from what the client
///   sent first, whatever the answer, so a client cannot forge them.
/// - **3xx, 4xx**: relayed to the client, status, headers and body, e.g.
///   `401` with `WWW-Authenticate` or a `302` to a login page (an answer
///   whose body is over 64 KiB counts as a failure).
/// - **anything else, or no answer**: `503` (`504` past the
///   [timeout](Self::timeout)), never admitted; logged at WARN when the
///   service starts failing and at INFO when it answers again.
///
/// Positive answers may be remembered for a short time
/// ([`cache`](Self::cache)), keyed by the request's host, path and query
/// and its `Origin`, `Authorization`, `Cookie` and `Sec-WebSocket-Protocol`
/// headers.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use wsproxy::admit::ForwardAuth;
///
/// let auth = ForwardAuth::new("http://127.0.0.1:9100/auth")
///     .unwrap()
///     .copy_headers(["x-user-id".parse().unwrap()])
///     .timeout(Duration::from_secs(2))
///     .cache(Duration::from_secs(10));
/// let layer = auth.layer();
/// # drop(layer);
/// ```
#[derive(Clone)]
#[must_use]
pub struct ForwardAuth {
    inner: Arc<Inner>,
}

struct Inner {
    url: Uri,
    authority: HeaderValue,
    copy: Vec<HeaderName>,
    timeout: Duration,
    cache: Option<Cache>,
    client: Pooling<Empty<Bytes>>,
    failing: AtomicBool,
}

impl Clone for Inner {
    fn clone(&self) -> Self {
        Self {
            url: self.url.clone(),
            authority: self.authority.clone(),
            copy: self.copy.clone(),
            timeout: self.timeout,
            cache: self.cache.as_ref().map(|cache| Cache {
                ttl: cache.ttl,
                entries: Mutex::default(),
            }),
            client: self.client.clone(),
            failing: AtomicBool::new(false),
        }
    }
}

impl ForwardAuth {
    /// Ask the auth service at `url` (`http://host[:port][/path][?query]`).
    pub fn new(url: &str) -> Result<Self, InvalidUpstream> {
        let invalid = |reason| InvalidUpstream::new(url, reason);
        let uri: Uri = url.parse().map_err(|_| invalid("not a valid URL"))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(invalid("an auth service URL starts with http://"));
        }
        let authority = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or_else(|| invalid("an auth service URL names a host"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: uri,
                authority,
                copy: Vec::new(),
                timeout: Duration::from_secs(5),
                cache: None,
                client: crate::pooling::client(Duration::from_secs(5)),
                failing: AtomicBool::new(false),
            }),
        })
    }

    fn inner_mut(&mut self) -> &mut Inner {
        // One configured after it was cloned becomes one of its own.
        Arc::make_mut(&mut self.inner)
    }

    /// Copy these headers of a positive answer into the upgrade request to
    /// the backend (Traefik's `authResponseHeaders`); the client's own
    /// values of these names are always removed.
    pub fn copy_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.inner_mut().copy = names.into_iter().collect();
        self
    }

    /// Time allowed for the auth service's whole answer, connect included
    /// (default: 5 s); past it, `504`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().timeout = timeout;
        self
    }

    /// Remember positive answers for `ttl` (default: not at all): a client
    /// with the same credentials, `Origin`, host and URI is let on without asking again,
    /// with the same headers. Only for an auth service that decides on
    /// those alone (not, say, on the client's address).
    pub fn cache(mut self, ttl: Duration) -> Self {
        self.inner_mut().cache = (!ttl.is_zero()).then(|| Cache {
            ttl,
            entries: Mutex::default(),
        });
        self
    }

    /// This check as a layer.
    pub fn layer(self) -> AdmitLayer<Self> {
        AdmitLayer::new(self)
    }
}

impl fmt::Debug for ForwardAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardAuth")
            .field("url", &self.inner.url)
            .field("copy_headers", &self.inner.copy)
            .field("timeout", &self.inner.timeout)
            .field("cache", &self.inner.cache.as_ref().map(|c| c.ttl))
            .finish()
    }
}

impl Admission for ForwardAuth {
    fn admit(&self, mut request: Parts) -> Admitting {
        for name in &self.inner.copy {
            request.headers.remove(name);
        }
        let key = self.inner.cache.as_ref().map(|_| cache_key(&request));
        if let (Some(cache), Some(key)) = (&self.inner.cache, &key)
            && let Some(headers) = cache.get(key)
        {
            crate::metrics::auth_answered("cached");
            request.headers.extend(headers);
            return Admitting::ready(request, Ok(()));
        }
        let ask = self.inner.request(&request);
        let inner = self.inner.clone();
        Admitting::new(async move {
            let verdict = match tokio::time::timeout(inner.timeout, inner.ask(ask)).await {
                Ok(Ok(answer)) => inner.answered(answer, &mut request, key),
                Ok(Err(error)) => Err(inner.failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "auth service unavailable",
                    &error,
                )),
                Err(_) => Err(inner.failed(
                    StatusCode::GATEWAY_TIMEOUT,
                    "auth service timed out",
                    &format_args!("no whole answer within {:?}", inner.timeout),
                )),
            };
            (request, verdict)
        })
    }
}

/// An auth service's answer, its body read.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Inner {
    /// The sub-request for a handshake.
    fn request(&self, client: &Parts) -> Request<Empty<Bytes>> {
        let mut headers = client.headers.clone();
        crate::forward::remove_hop_by_hop(&mut headers);
        for name in [
            header::HOST,
            header::CONTENT_LENGTH,
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_EXTENSIONS,
            header::FORWARDED,
            X_REAL_IP,
            HeaderName::from_static("x-original-url"),
            HeaderName::from_static("x-original-uri"),
            HeaderName::from_static("x-original-method"),
            HeaderName::from_static("x-forwarded-prefix"),
            HeaderName::from_static("x-forwarded-port"),
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            X_FORWARDED_METHOD,
            X_FORWARDED_URI,
        ] {
            headers.remove(name);
        }
        headers.insert(header::HOST, self.authority.clone());
        let ip = client
            .extensions
            .get::<ClientIp>()
            .map(|ip| ip.0)
            .or_else(|| crate::client::client_addr(&client.extensions).map(|a| a.ip()));
        if let Some(ip) = ip
            && let Ok(value) = HeaderValue::from_str(&ip.to_canonical().to_string())
        {
            headers.insert(X_FORWARDED_FOR, value);
        }
        let proto = if client.extensions.get::<ClientTls>().is_some() {
            "https"
        } else {
            "http"
        };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        let host = client.headers.get(header::HOST).cloned().or_else(|| {
            let authority = client.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        headers.insert(X_FORWARDED_METHOD, HeaderValue::from_static("GET"));
        let uri = client.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = HeaderValue::from_str(uri) {
            headers.insert(X_FORWARDED_URI, uri);
        }
        let mut request = Request::new(Empty::new());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = self.url.clone();
        *request.headers_mut() = headers;
        request
    }

    /// Send the sub-request and read the answer (its body up to
    /// [`MAX_BODY`]).
    async fn ask(&self, request: Request<Empty<Bytes>>) -> Result<Answer, crate::BoxError> {
        let response = self.client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY).collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    fn answered(
        &self,
        answer: Answer,
        request: &mut Parts,
        key: Option<Box<[u8]>>,
    ) -> Result<(), Refusal> {
        let status = answer.status;
        if status.is_success() {
            self.recovered();
            crate::metrics::auth_answered("admitted");
            let mut copied = Vec::new();
            for name in &self.copy {
                for value in answer.headers.get_all(name) {
                    copied.push((name.clone(), value.clone()));
                }
            }
            request
                .headers
                .extend(copied.iter().cloned().map(|(n, v)| (Some(n), v)));
            if let (Some(cache), Some(key)) = (&self.cache, key) {
                cache.put(key, copied);
            }
            return Ok(());
        }
        if status.is_redirection() || status.is_client_error() {
            self.recovered();
            crate::metrics::auth_answered("refused");
            let mut headers = answer.headers;
            crate::forward::remove_hop_by_hop(&mut headers);
            headers.remove(header::CONTENT_LENGTH);
            let mut refusal = Refusal::new(status, "refused by the auth service").body(answer.body);
            let mut name = None;
            for (next, value) in headers {
                name = next.or(name);
                if let Some(name) = &name {
                    refusal = refusal.header(name.clone(), value);
                }
            }
            return Err(refusal);
        }
        Err(self.failed(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth service failed",
            &format_args!("it answered {status}"),
        ))
    }

    /// A refusal because the auth service could not say; WARN when it
    /// starts failing.
    fn failed(
        &self,
        status: StatusCode,
        reason: &'static str,
        error: &dyn fmt::Display,
    ) -> Refusal {
        crate::metrics::auth_answered(if status == StatusCode::GATEWAY_TIMEOUT {
            "timeout"
        } else {
            "error"
        });
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                url = %self.url,
                error = %error,
                "auth service failing: handshakes are refused with {} until it answers",
                status.as_u16()
            );
        } else {
            tracing::debug!(url = %self.url, error = %error, "auth service failing");
        }
        Refusal::new(status, reason)
    }

    fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(url = %self.url, "auth service answers again");
        }
    }
}

/// The credentials and URI of a handshake, as a cache key.
fn cache_key(request: &Parts) -> Box<[u8]> {
    let mut key = Vec::with_capacity(256);
    key.extend_from_slice(
        request
            .uri
            .authority()
            .map_or("", |a| a.as_str())
            .as_bytes(),
    );
    key.push(0);
    key.extend_from_slice(
        request
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    for name in [
        header::HOST,
        header::ORIGIN,
        header::AUTHORIZATION,
        header::COOKIE,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        for value in request.headers.get_all(name) {
            // A separator no header value holds.
            key.push(0);
            key.extend_from_slice(value.as_bytes());
        }
        key.push(b'\n');
    }
    key.into_boxed_slice()
}

/// The headers a positive answer copied into the upgrade request.
type Copied = Vec<(HeaderName, HeaderValue)>;

/// A positive answer until when, with the headers it copied.
type Remembered = (Instant, Copied);

/// Positive answers, each with the headers it copied.
struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<Box<[u8]>, Remembered>>,
}

impl Cache {
    fn get(&self, key: &[u8]) -> Option<impl Iterator<Item = (Option<HeaderName>, HeaderValue)>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(key) {
            Some((until, headers)) if *until > Instant::now() => {
                Some(headers.clone().into_iter().map(|(n, v)| (Some(n), v)))
            }
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: Box<[u8]>, headers: Copied) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= MAX_CACHED {
                return;
            }
        }
        entries.insert(key, (now + self.ttl, headers));
    }
}
