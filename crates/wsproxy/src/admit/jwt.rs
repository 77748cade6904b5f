//! [`JwtAuth`]: a signed token (JWT) checked at the handshake, from a
//! header, a cookie, the query or a `Sec-WebSocket-Protocol` entry.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::admission::{Admission, Admitting, Refusal, Verdict};
use super::layer::AdmitLayer;
use crate::client::Key;
use crate::pooling::Pooling;
use crate::upstream::InvalidUpstream;

/// The largest JWKS document read.
const MAX_JWKS: usize = 256 * 1024;
/// At most one fetch of the key set per this long (or per refresh, if
/// shorter) for a key id it lacks (a rotation), so tokens with made-up ids
/// cannot make it fetch on every handshake.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// Checks a JSON Web Token at the handshake, before any backend is
/// contacted (feature `jwt`, the `jsonwebtoken` crate).
///
/// Browsers cannot set `Authorization` on a WebSocket, so the token may
/// come from a [cookie](TokenFrom::Cookie), a
/// [query parameter](TokenFrom::Query) or a
/// [`Sec-WebSocket-Protocol` entry](TokenFrom::Protocol) as well as a
/// [header](TokenFrom::Bearer); the places are tried in the order given
/// (default: `Authorization: Bearer`). The token is removed from what the
/// backend gets unless [`forward_token`](Self::forward_token) says
/// otherwise: its header, cookie, query parameter or subprotocol entry
/// (the backend then chooses among the client's other subprotocols, as
/// with Kubernetes' `base64url.bearer.authorization.k8s.io.<token>` beside
/// a real one; a client that offered only the token entry is answered with
/// it, since a browser fails a `101` that names none of its offers).
///
/// Keys: an HMAC secret (HS256), an RSA or EC public key in PEM (RS256,
/// ES256), or a JWKS URL, fetched at the first handshake, again every
/// [`jwks_refresh`](Self::jwks_refresh) (5 minutes) in the background and
/// when a token names a key id it does not have (a rotation; at most once
/// per 10 s, or per refresh if shorter).
///
/// Checked: the signature and algorithm, `exp` and `nbf` (with
/// [`leeway`](Self::leeway), default none), and `aud` and `iss` when
/// [`audience`](Self::audience) and [`issuer`](Self::issuer) are set.
/// Refused with `401` and a `WWW-Authenticate: Bearer` header (with
/// `error="invalid_token"` for a token that is there but not good), or
/// `503` while a JWKS cannot be fetched.
///
/// The claims go into the request's extensions as [`Claims`], for a
/// [`Key`] (a rate or connection limit per user: [`Claims::key`]), and
/// named claims can be sent to the backend as headers
/// ([`claim_header`](Self::claim_header)); a client's own headers of
/// those names are removed.
///
/// # Example
///
/// ```
/// use wsproxy::admit::{JwtAuth, TokenFrom};
///
/// let auth = JwtAuth::hs256(b"a secret of at least 32 bytes, really")
///     .audience(["chat"])
///     .token_from([TokenFrom::Cookie("session".into()), TokenFrom::Protocol("bearer.".into())])
///     .claim_header("sub", "x-user-id".parse().unwrap());
/// let layer = auth.layer();
/// # drop(layer);
/// ```
#[derive(Clone)]
#[must_use]
pub struct JwtAuth {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    keys: Keys,
    algorithms: Vec<Algorithm>,
    audience: Vec<String>,
    issuer: Vec<String>,
    leeway: Duration,
    from: Vec<TokenFrom>,
    claim_headers: Vec<(String, HeaderName)>,
    forward_token: bool,
    close_at_expiry: bool,
    /// What a token is checked against, one per allowed algorithm; made at
    /// the first handshake (and again after a setting changes).
    validations: OnceLock<Vec<Validation>>,
}

#[derive(Clone)]
enum Keys {
    Static(DecodingKey),
    Jwks(Arc<Jwks>),
}

/// Where a token is looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenFrom {
    /// `NAME: Bearer <token>` (`Authorization` by default).
    Bearer(HeaderName),
    /// The whole value of a header.
    Header(HeaderName),
    /// A cookie of this name.
    Cookie(String),
    /// A query parameter of this name (`?access_token=<token>`).
    Query(String),
    /// A `Sec-WebSocket-Protocol` entry starting with this prefix
    /// (`bearer.<token>`).
    Protocol(String),
}

/// Why a JWT check cannot be set up.
#[derive(Debug)]
pub struct InvalidKey(jsonwebtoken::errors::Error);

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid key: {}", self.0)
    }
}

impl std::error::Error for InvalidKey {}

impl JwtAuth {
    fn with(keys: Keys, algorithms: Vec<Algorithm>) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys,
                algorithms,
                audience: Vec::new(),
                issuer: Vec::new(),
                leeway: Duration::ZERO,
                from: vec![TokenFrom::Bearer(header::AUTHORIZATION)],
                claim_headers: Vec::new(),
                forward_token: false,
                close_at_expiry: false,
                validations: OnceLock::new(),
            }),
        }
    }

    /// Tokens signed with HMAC-SHA256 and `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(
            Keys::Static(DecodingKey::from_secret(secret)),
            vec![Algorithm::HS256],
        )
    }

    /// Tokens signed with RSA (RS256) by the key whose public half is
    /// `pem`.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, InvalidKey> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(InvalidKey)?;
        Ok(Self::with(Keys::Static(key), vec![Algorithm::RS256]))
    }

    /// Tokens signed with ECDSA P-256 (ES256) by the key whose public half
    /// is `pem`.
    pub fn es256_pem(pem: &[u8]) -> Result<Self, InvalidKey> {
        let key = DecodingKey::from_ec_pem(pem).map_err(InvalidKey)?;
        Ok(Self::with(Keys::Static(key), vec![Algorithm::ES256]))
    }

    /// Tokens signed (RS256 or ES256) by a key of the JWKS at `url`
    /// (`http://`; an identity provider's `jwks_uri` behind a local
    /// proxy, or a sidecar).
    pub fn jwks(url: &str) -> Result<Self, InvalidUpstream> {
        let invalid = |reason| InvalidUpstream::new(url, reason);
        let uri: Uri = url.parse().map_err(|_| invalid("not a valid URL"))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.authority().is_none() {
            return Err(invalid("a JWKS URL is http://host[:port]/path"));
        }
        Ok(Self::with(
            Keys::Jwks(Arc::new(Jwks {
                url: uri,
                client: crate::pooling::client(Duration::from_secs(5)),
                keys: RwLock::default(),
                last_fetch: Mutex::default(),
                refresh: Duration::from_secs(300),
                refreshing: AtomicBool::new(false),
                fetching: tokio::sync::Mutex::new(()),
            })),
            vec![Algorithm::RS256, Algorithm::ES256],
        ))
    }

    fn inner_mut(&mut self) -> &mut Inner {
        let inner = Arc::make_mut(&mut self.inner);
        inner.validations = OnceLock::new();
        inner
    }

    /// Only tokens whose `aud` names one of these.
    pub fn audience<S: Into<String>>(mut self, audience: impl IntoIterator<Item = S>) -> Self {
        self.inner_mut().audience = audience.into_iter().map(Into::into).collect();
        self
    }

    /// Only tokens whose `iss` is one of these.
    pub fn issuer<S: Into<String>>(mut self, issuer: impl IntoIterator<Item = S>) -> Self {
        self.inner_mut().issuer = issuer.into_iter().map(Into::into).collect();
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default: none).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.inner_mut().leeway = leeway;
        self
    }

    /// Where to look for the token, in order (default:
    /// `Authorization: Bearer`).
    pub fn token_from(mut self, from: impl IntoIterator<Item = TokenFrom>) -> Self {
        self.inner_mut().from = from.into_iter().collect();
        self
    }

    /// Send claim `claim` (a string, number or boolean) to the backend in
    /// header `header`; the client's own `header` is always removed.
    pub fn claim_header(mut self, claim: &str, header: HeaderName) -> Self {
        self.inner_mut()
            .claim_headers
            .push((claim.to_owned(), header));
        self
    }

    /// Leave the token where it was for the backend (default: removed).
    pub fn forward_token(mut self, forward: bool) -> Self {
        self.inner_mut().forward_token = forward;
        self
    }

    /// Close each tunnel when its token expires (`exp`, plus the
    /// [`leeway`](Self::leeway)): Close 1008 to the client, 1001 to the
    /// backend (default: a tunnel outlives its token, as an HTTP response
    /// outlives the request's).
    pub fn close_at_expiry(mut self, close: bool) -> Self {
        self.inner_mut().close_at_expiry = close;
        self
    }

    /// Fetch a JWKS again this often (default: 5 minutes).
    pub fn jwks_refresh(mut self, every: Duration) -> Self {
        if let Keys::Jwks(jwks) = &mut self.inner_mut().keys {
            let jwks = Arc::make_mut(jwks);
            jwks.refresh = every.max(Duration::from_secs(1));
        }
        self
    }

    /// This check as a layer.
    pub fn layer(self) -> AdmitLayer<Self> {
        AdmitLayer::new(self)
    }
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("JwtAuth")
            .field(
                "keys",
                &match &inner.keys {
                    Keys::Static(_) => "static".to_owned(),
                    Keys::Jwks(jwks) => jwks.url.to_string(),
                },
            )
            .field("algorithms", &inner.algorithms)
            .field("audience", &inner.audience)
            .field("issuer", &inner.issuer)
            .field("token_from", &inner.from)
            .field("forward_token", &inner.forward_token)
            .finish_non_exhaustive()
    }
}

/// The claims of a token [`JwtAuth`] admitted, in the request's extensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims(pub serde_json::Map<String, serde_json::Value>);

impl Claims {
    /// The claim `name`, if the token has it.
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.get(name)
    }

    /// The claim `name` as text: a string as it is, a number or boolean
    /// written out; `None` for anything else.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A [`Key`] by claim `name` (e.g. `sub`: limits per user); requests
    /// without the claim have no key.
    pub fn key(name: &str) -> Key {
        let name = name.to_owned();
        Key::custom(move |request| request.extensions.get::<Claims>()?.text(&name))
    }
}

impl Admission for JwtAuth {
    fn admit(&self, mut request: Parts) -> Admitting {
        for (_, name) in &self.inner.claim_headers {
            request.headers.remove(name);
        }
        let Some((token, from)) = self.inner.find(&request) else {
            return Admitting::ready(request, Err(unauthorized("token required", None)));
        };
        let (alg, kid) = match jsonwebtoken::decode_header(&token) {
            Ok(header) => (header.alg, header.kid),
            Err(_) => {
                return Admitting::ready(
                    request,
                    Err(unauthorized("token invalid", Some("malformed"))),
                );
            }
        };
        match &self.inner.keys {
            Keys::Static(key) => {
                let verdict = self.inner.verify(&mut request, &token, alg, &from, key);
                Admitting::ready(request, verdict)
            }
            Keys::Jwks(jwks) => {
                jwks.start_refreshing();
                if let Some(key) = jwks.key(kid.as_deref()) {
                    let verdict = self.inner.verify(&mut request, &token, alg, &from, &key);
                    return Admitting::ready(request, verdict);
                }
                let inner = self.inner.clone();
                let jwks = jwks.clone();
                Admitting::new(async move {
                    let verdict = jwks
                        .fetch_for(kid.as_deref())
                        .await
                        .and_then(|key| inner.verify(&mut request, &token, alg, &from, &key));
                    (request, verdict) as Verdict
                })
            }
        }
    }
}

/// `401` with `WWW-Authenticate: Bearer`, with `error="invalid_token"`
/// when a token was there.
fn unauthorized(reason: &'static str, invalid: Option<&'static str>) -> Refusal {
    let challenge = match invalid {
        None => HeaderValue::from_static("Bearer realm=\"websocket\""),
        Some(description) => HeaderValue::from_str(&format!(
            "Bearer realm=\"websocket\", error=\"invalid_token\", error_description=\"{description}\""
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\"")),
    };
    Refusal::new(StatusCode::UNAUTHORIZED, reason).header(header::WWW_AUTHENTICATE, challenge)
}

impl Inner {
    /// The first token found, and where.
    fn find(&self, request: &Parts) -> Option<(String, TokenFrom)> {
        self.from.iter().find_map(|from| {
            let token = match from {
                TokenFrom::Bearer(name) => request.headers.get_all(name).iter().find_map(|v| {
                    let v = v.to_str().ok()?;
                    let (scheme, token) = v.split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| token.trim().to_owned())
                }),
                TokenFrom::Header(name) => request
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_owned()),
                TokenFrom::Cookie(name) => cookies(&request.headers)
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_owned()),
                TokenFrom::Query(name) => request.uri.query().and_then(|q| {
                    q.split('&')
                        .find_map(|pair| pair.strip_prefix(name.as_str())?.strip_prefix('='))
                        .map(str::to_owned)
                }),
                TokenFrom::Protocol(prefix) => protocols(&request.headers)
                    .find_map(|p| p.strip_prefix(prefix.as_str()).map(str::to_owned)),
            }?;
            (!token.is_empty()).then(|| (token, from.clone()))
        })
    }

    /// What a token signed with `alg` is checked against.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_owned()].into();
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audience);
        }
        if !self.issuer.is_empty() {
            validation.set_issuer(&self.issuer);
        }
        validation
    }

    /// Check `token` (signed with `alg`, as its header says) with `key`; on success the claims go into the
    /// extensions, named claims into headers, and the token out of what
    /// the backend gets.
    fn verify(
        &self,
        request: &mut Parts,
        token: &str,
        alg: Algorithm,
        from: &TokenFrom,
        key: &DecodingKey,
    ) -> Result<(), Refusal> {
        let validation = self
            .validations
            .get_or_init(|| {
                self.algorithms
                    .iter()
                    .map(|alg| self.validation(*alg))
                    .collect()
            })
            .iter()
            .find(|validation| validation.algorithms == [alg])
            .ok_or_else(|| unauthorized("token invalid", Some("algorithm not allowed")))?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, key, validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => unauthorized("token expired", Some("expired")),
            ErrorKind::ImmatureSignature => {
                unauthorized("token not yet valid", Some("not yet valid"))
            }
            ErrorKind::InvalidAudience => {
                unauthorized("token for another audience", Some("wrong audience"))
            }
            ErrorKind::InvalidIssuer => {
                unauthorized("token from another issuer", Some("wrong issuer"))
            }
            ErrorKind::MissingRequiredClaim(_) => {
                unauthorized("token invalid", Some("missing claim"))
            }
            _ => unauthorized("token invalid", Some("bad signature or format")),
        })?;
        let claims = Claims(data.claims);
        for (claim, name) in &self.claim_headers {
            if let Some(value) = claims
                .text(claim)
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                request.headers.insert(name.clone(), value);
            }
        }
        if !self.forward_token {
            remove_token(request, from);
        }
        if self.close_at_expiry
            && let Some(at) = claims
                .get("exp")
                .and_then(serde_json::Value::as_f64)
                .filter(|exp| exp.is_finite() && *exp >= 0.0)
                .and_then(|exp| Duration::try_from_secs_f64(exp.ceil()).ok())
                .and_then(|exp| std::time::UNIX_EPOCH.checked_add(exp + self.leeway))
        {
            super::holds::Expires::at_most(&mut request.extensions, at);
        }
        request.extensions.insert(claims);
        Ok(())
    }
}

/// `name=value` pairs of every `Cookie` header.
fn cookies(headers: &http::HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
}

/// The entries of every `Sec-WebSocket-Protocol` header.
fn protocols(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Take the token out of the request where it was found.
fn remove_token(request: &mut Parts, from: &TokenFrom) {
    match from {
        TokenFrom::Bearer(name) | TokenFrom::Header(name) => {
            request.headers.remove(name);
        }
        TokenFrom::Cookie(name) => {
            let kept: Vec<String> = cookies(&request.headers)
                .filter(|(n, _)| n != name)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            request.headers.remove(header::COOKIE);
            if let Ok(value) = HeaderValue::from_str(&kept.join("; "))
                && !kept.is_empty()
            {
                request.headers.insert(header::COOKIE, value);
            }
        }
        TokenFrom::Query(name) => {
            let Some(query) = request.uri.query() else {
                return;
            };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| pair.split('=').next() != Some(name.as_str()))
                .collect();
            let path = request.uri.path();
            let path_and_query = if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            };
            let mut parts = request.uri.clone().into_parts();
            if let Ok(pq) = path_and_query.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    request.uri = uri;
                }
            }
        }
        TokenFrom::Protocol(prefix) => {
            let kept: Vec<String> = protocols(&request.headers)
                .filter(|p| !p.starts_with(prefix.as_str()))
                .map(str::to_owned)
                .collect();
            if kept.is_empty() {
                // The client offered nothing else: it is answered with the
                // entry it sent (the backend is offered none), as a
                // browser needs one of its offers back.
                let entry = protocols(&request.headers)
                    .find(|p| p.starts_with(prefix.as_str()))
                    .and_then(|p| HeaderValue::from_str(p).ok());
                if let Some(entry) = entry {
                    request
                        .extensions
                        .insert(crate::opening::AnswerProtocol(entry));
                }
            }
            request.headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
            if let Ok(value) = HeaderValue::from_str(&kept.join(", "))
                && !kept.is_empty()
            {
                request
                    .headers
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
        }
    }
}

/// A JWKS: its keys by id, fetched and refreshed.
struct Jwks {
    url: Uri,
    client: Pooling<Empty<Bytes>>,
    keys: RwLock<Option<HashMap<String, DecodingKey>>>,
    last_fetch: Mutex<Option<Instant>>,
    refresh: Duration,
    refreshing: AtomicBool,
    fetching: tokio::sync::Mutex<()>,
}

impl Clone for Jwks {
    /// The same URL and client, with keys of its own.
    fn clone(&self) -> Self {
        Self {
            url: self.url.clone(),
            client: self.client.clone(),
            keys: RwLock::default(),
            last_fetch: Mutex::default(),
            refresh: self.refresh,
            refreshing: AtomicBool::new(false),
            fetching: tokio::sync::Mutex::new(()),
        }
    }
}

impl Jwks {
    /// The key `kid` names (a set of one key needs no id), if known.
    fn key(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let keys = keys.as_ref()?;
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    /// Fetch the set if it has no key `kid` (unless fetched less than
    /// [`REFETCH_AT_MOST_EVERY`] ago), then the key.
    async fn fetch_for(&self, kid: Option<&str>) -> Result<DecodingKey, Refusal> {
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(key) = self.key(kid) {
            return Ok(key);
        }
        let recent = self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < REFETCH_AT_MOST_EVERY.min(self.refresh));
        if !recent && let Err(error) = self.fetch().await {
            tracing::warn!(url = %self.url, %error, "JWKS fetch failed");
        }
        if let Some(key) = self.key(kid) {
            return Ok(key);
        }
        // Never fetched: the service is down (asked again after a while,
        // not on every handshake).
        if self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token keys unavailable",
            ));
        }
        Err(unauthorized("token invalid", Some("unknown key")))
    }

    async fn fetch(&self) -> Result<(), String> {
        /// Stamps the end of a fetch, finished or given up half way (its
        /// handshake's client left): the next one waits from there.
        struct Stamp<'a>(&'a Mutex<Option<Instant>>);
        impl Drop for Stamp<'_> {
            fn drop(&mut self) {
                *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            }
        }
        let _stamp = Stamp(&self.last_fetch);
        self.fetch_once().await
    }

    async fn fetch_once(&self) -> Result<(), String> {
        let request = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(10), async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("it answered {}", response.status()));
            }
            Limited::new(response.into_body(), MAX_JWKS)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| "no answer within 10 s".to_owned())??;
        let set: JwkSet = serde_json::from_slice(&response).map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for (n, jwk) in set.keys.iter().enumerate() {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let id = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{n}"));
            keys.insert(id, key);
        }
        if keys.is_empty() {
            // A broken answer does not take the keys that work away.
            return Err(format!("no usable key among {}", set.keys.len()));
        }
        tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(keys);
        Ok(())
    }

    /// Fetch again every `refresh`, in a task that ends with the set.
    fn start_refreshing(self: &Arc<Self>) {
        if self.refreshing.load(Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
            || self.refreshing.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = self.refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(jwks) = weak.upgrade() else { return };
                let _one_at_a_time = jwks.fetching.lock().await;
                if let Err(error) = jwks.fetch().await {
                    tracing::warn!(url = %jwks.url, %error, "JWKS refresh failed; the keys fetched before are kept");
                }
            }
        });
    }
}
