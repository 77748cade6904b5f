//! The configuration: everything the gateway serves by, read from a TOML
//! file (`wsgate --config wsgate.toml`) with the flags given on the
//! command line set over it.
//!
//! Every flag has a key of the same name (dashes as underscores) in the
//! section its help names; `examples/wsgate.toml` shows each one. Unknown
//! keys are errors, and every error names the file, the key and the
//! problem. [`Config::check`] validates what can be validated without
//! serving (files readable, certificates that parse and match their keys,
//! routes that name an upstream, prefixes given once); `wsgate --check`
//! stops there, a reload (SIGHUP) swaps a checked configuration in or
//! keeps the old one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use wsproxy::admit::Rate;

pub(crate) mod upstream;
pub(crate) mod value;

use self::upstream::UpstreamConfig;
pub(crate) use crate::tls::BackendTlsFiles;

/// The whole configuration (the file's top level).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// The public listeners: `[listen]`, or several `[[listen]]`.
    #[serde(deserialize_with = "value::one_or_many")]
    pub(crate) listen: Vec<Listen>,
    /// The admin listener: metrics, status, health (default: none).
    pub(crate) admin: AdminConfig,
    /// A plain-HTTP listener that redirects to the TLS one (default:
    /// none).
    pub(crate) redirect: Redirect,
    /// Worker threads, each with its own runtime and `SO_REUSEPORT`
    /// listener (default: one per core).
    #[serde(deserialize_with = "value::some_count")]
    pub(crate) workers: Option<usize>,
    /// Where the log goes: standard error, or a file reopened on SIGUSR1.
    pub(crate) log: Log,
    /// Every time bound.
    pub(crate) timeouts: Timeouts,
    /// Pings on quiet tunnels.
    pub(crate) ping: Ping,
    /// Frame, message and rate bounds on tunnels.
    pub(crate) messages: Messages,
    /// Bounds on client connections to the HTTP server.
    pub(crate) connections: Connections,
    /// Checks on WebSocket handshakes before a backend is chosen.
    pub(crate) admission: Admission,
    /// What the backend is told about the client.
    pub(crate) forwarding: Forwarding,
    /// TLS toward `wss://` backends.
    pub(crate) backend_tls: BackendTlsFiles,
    /// When a backend's connection ends without a Close frame, send the
    /// client Close 1011 (and a backend whose client vanished 1001)
    /// rather than a bare TCP close (default: true).
    pub(crate) close_on_disconnect: bool,
    /// Start embedded echo and chat backends on `/echo` and `/chat`.
    pub(crate) demo: bool,
    /// Reload when this file or a listener's certificate or key changes,
    /// as SIGHUP does (looked at every second). Needs a restart to change.
    pub(crate) watch: bool,
    /// `[[routes]]`: which handshakes go to which upstream.
    pub(crate) routes: Vec<RouteConfig>,
    /// `[[http_routes]]`: which ordinary requests go to which app server.
    pub(crate) http_routes: Vec<RouteConfig>,
    /// `[upstreams.NAME]`: backend sets.
    pub(crate) upstreams: BTreeMap<String, UpstreamConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![Listen::default()],
            admin: AdminConfig::default(),
            redirect: Redirect::default(),
            workers: None,
            log: Log::default(),
            timeouts: Timeouts::default(),
            ping: Ping::default(),
            messages: Messages::default(),
            connections: Connections::default(),
            admission: Admission::default(),
            forwarding: Forwarding::default(),
            backend_tls: BackendTlsFiles::default(),
            close_on_disconnect: true,
            demo: false,
            watch: false,
            routes: Vec::new(),
            http_routes: Vec::new(),
            upstreams: BTreeMap::new(),
        }
    }
}

/// `[listen]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Listen {
    /// Address and port (default `127.0.0.1:8080`).
    #[serde(deserialize_with = "value::parsed")]
    pub(crate) address: SocketAddr,
    /// Serve HTTPS and wss:// with this certificate; HTTP/2 or HTTP/1.1
    /// by ALPN. Re-read on reload (renewed certificates).
    pub(crate) tls: Option<TlsFiles>,
    /// With TLS, offer HTTP/2 by ALPN as well as HTTP/1.1 (default:
    /// true). Without TLS, HTTP/2 with prior knowledge (h2c) is always
    /// served to clients that start with it.
    pub(crate) http2: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2,
    /// from an L4 load balancer): its source is the client address for
    /// forwarding headers, limits and logs; a connection without one is
    /// closed (default: false). Needs a restart to change.
    pub(crate) proxy_protocol: bool,
    /// With `proxy_protocol`, only these peers (CIDR) may send the
    /// header; others are closed (default: any peer, as nginx and
    /// HAProxy do: then let only the balancer reach this listener).
    #[serde(deserialize_with = "value::parsed_list")]
    pub(crate) proxy_protocol_from: Vec<ipnet::IpNet>,
    /// With TLS, the `Strict-Transport-Security` header of every answer
    /// over TLS, e.g. `"max-age=31536000; includeSubDomains"` (default:
    /// none, as nginx and HAProxy: a browser remembers it for max-age,
    /// so it is yours to turn on).
    #[serde(deserialize_with = "value::some_parsed")]
    pub(crate) hsts: Option<axum::http::HeaderValue>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            http2: true,
            proxy_protocol: false,
            proxy_protocol_from: Vec::new(),
            hsts: None,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminConfig {
    /// Serve `/metrics` (Prometheus), `/status` (JSON), `/healthz` and
    /// `/readyz` here; keep it on loopback or a private network. Needs a
    /// restart to change.
    #[serde(deserialize_with = "value::some_parsed")]
    pub(crate) address: Option<SocketAddr>,
}

/// `[redirect]`: nginx's `listen 80; return 308 https://$host$request_uri;`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Redirect {
    /// Answer every request here with `308 Permanent Redirect` to the same
    /// host, path and query over https. Needs `listen.tls`, and a restart
    /// to change.
    #[serde(deserialize_with = "value::some_parsed")]
    pub(crate) address: Option<SocketAddr>,
    /// The port in the https URL (default: the first TLS listener's; none
    /// in the URL when it is 443).
    #[serde(deserialize_with = "value::some_parsed")]
    pub(crate) port: Option<u16>,
    /// Read a PROXY protocol header first, as `listen.proxy_protocol`.
    pub(crate) proxy_protocol: bool,
    /// With `proxy_protocol`, only from these peers (default: any).
    #[serde(deserialize_with = "value::parsed_list")]
    pub(crate) proxy_protocol_from: Vec<ipnet::IpNet>,
}

impl Redirect {
    /// As a listener: its address and PROXY protocol.
    pub(crate) fn listen(&self) -> Listen {
        Listen {
            address: self.address.unwrap_or(Listen::default().address),
            proxy_protocol: self.proxy_protocol,
            proxy_protocol_from: self.proxy_protocol_from.clone(),
            ..Listen::default()
        }
    }
}

/// A certificate chain (PEM, leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Log {
    /// Append the log to this file instead of standard error; SIGUSR1
    /// reopens it (after logrotate moved it). Needs a restart to change.
    pub(crate) file: Option<PathBuf>,
    /// `text` (the default) or `json`, one object per line. Needs a
    /// restart to change.
    pub(crate) format: LogFormat,
    /// Show the query string of handshake requests (default: true);
    /// false logs `?<redacted>` instead, for queries that carry tokens.
    pub(crate) query: bool,
    /// Write the access log: a line per handshake, tunnel and plain
    /// request (default: true; nginx's `access_log off` is false). Needs
    /// a restart to change.
    pub(crate) access: bool,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            file: None,
            format: LogFormat::Text,
            query: true,
            access: true,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines; access lines in nginx's `combined` format
    /// followed by what a WebSocket adds (see `access.rs`).
    Text,
    /// One JSON object per line (tracing-subscriber's format, with the
    /// tunnel's fields under `span`).
    Json,
}

/// `[timeouts]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Timeouts {
    /// TCP connect to a backend (5s).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) connect: Duration,
    /// A backend's answer to the upgrade request (10s).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) handshake: Duration,
    /// A tunnel with no traffic either way (10m; "off").
    #[serde(deserialize_with = "value::timeout_or_off")]
    pub(crate) idle: Option<Duration>,
    /// The other direction after one side closed its sending half (5s).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) half_close: Duration,
    /// A client's TLS handshake (10s).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) tls_handshake: Duration,
    /// From accepting a connection to its first bytes (10s).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) detect: Duration,
    /// From the first byte of a request to the end of its head (60s).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) request_head: Duration,
    /// An HTTP/1.1 connection between requests (75s; 0 closes after one).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) keepalive: Duration,
    /// An HTTP/2 connection with no open stream, before GOAWAY (75s).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) http2_idle: Duration,
    /// On SIGTERM/SIGINT, how long open WebSockets have to finish their
    /// closing handshakes after Close 1001 (10s).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) shutdown: Duration,
    /// An app server's response head to a plain request of an
    /// `[[http_routes]]` (60s, nginx's `proxy_read_timeout`); past it 504.
    #[serde(deserialize_with = "value::duration")]
    pub(crate) http_response: Duration,
    /// A connection to an app server at rest between requests, before the
    /// gateway closes it (60s, nginx's upstream `keepalive_timeout`; 0
    /// keeps none). Below the app's own idle timeout.
    #[serde(deserialize_with = "value::duration")]
    pub(crate) http_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        use wsproxy::serve;
        Self {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(10),
            idle: Some(Duration::from_secs(600)),
            half_close: Duration::from_secs(5),
            tls_handshake: serve::DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            detect: serve::DEFAULT_DETECT_TIMEOUT,
            request_head: serve::DEFAULT_REQUEST_HEAD_TIMEOUT,
            keepalive: serve::DEFAULT_KEEP_ALIVE_TIMEOUT,
            http2_idle: serve::DEFAULT_HTTP2_IDLE_TIMEOUT,
            shutdown: Duration::from_secs(10),
            http_response: wsproxy::http_proxy::DEFAULT_RESPONSE_TIMEOUT,
            http_idle: wsproxy::http_proxy::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// `[ping]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Ping {
    /// Ping clients silent for this long (default: off).
    #[serde(deserialize_with = "value::some_duration")]
    pub(crate) client: Option<Duration>,
    /// Ping backends silent for this long (default: off).
    #[serde(deserialize_with = "value::some_duration")]
    pub(crate) backend: Option<Duration>,
    /// How long a pinged peer has to show a sign of life (10s).
    #[serde(deserialize_with = "value::duration")]
    pub(crate) timeout: Duration,
}

impl Default for Ping {
    fn default() -> Self {
        Self {
            client: None,
            backend: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[messages]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Messages {
    /// Largest frame payload a client may send (1009 past it).
    #[serde(deserialize_with = "value::some_size")]
    pub(crate) max_frame: Option<u64>,
    /// Largest message a client may send.
    #[serde(deserialize_with = "value::some_size")]
    pub(crate) max_message: Option<u64>,
    /// Messages per tunnel a client may send (1008 past it).
    #[serde(deserialize_with = "value::some_rate")]
    pub(crate) rate: Option<Rate>,
    /// Extra messages at once over `rate` (10).
    pub(crate) burst: u32,
    /// Largest frame payload a backend may send.
    #[serde(deserialize_with = "value::some_size")]
    pub(crate) backend_max_frame: Option<u64>,
    /// Largest message a backend may send.
    #[serde(deserialize_with = "value::some_size")]
    pub(crate) backend_max_message: Option<u64>,
}

impl Default for Messages {
    fn default() -> Self {
        Self {
            max_frame: None,
            max_message: None,
            rate: None,
            burst: 10,
            backend_max_frame: None,
            backend_max_message: None,
        }
    }
}

/// `[connections]`: client connections to the HTTP server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Connections {
    /// In all (default: half the open file limit).
    #[serde(deserialize_with = "value::some_count")]
    pub(crate) max: Option<usize>,
    /// Per client IP (default: no bound).
    #[serde(deserialize_with = "value::some_count")]
    pub(crate) max_per_ip: Option<usize>,
    /// WebSocket handshakes answered at once on one HTTP/2 connection.
    pub(crate) h2_max_handshakes: usize,
    /// Handshakes an HTTP/2 client may reset before their answer (2/s).
    #[serde(deserialize_with = "value::rate")]
    pub(crate) h2_reset_rate: Rate,
    /// Resets at once over `h2_reset_rate` (20).
    pub(crate) h2_reset_burst: u32,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max: None,
            max_per_ip: None,
            h2_max_handshakes: wsproxy::serve::DEFAULT_HTTP2_MAX_HANDSHAKES,
            h2_reset_rate: Rate::per_second(2),
            h2_reset_burst: 20,
        }
    }
}

/// `[admission]`: checks on WebSocket handshakes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Admission {
    /// Origins allowed (exact, or `https://*.example.com`); others get
    /// 403. Empty: any.
    pub(crate) origins: Vec<String>,
    /// With `origins`, also allow handshakes without an Origin.
    pub(crate) allow_missing_origin: bool,
    /// Open WebSockets in all (503 past it).
    #[serde(deserialize_with = "value::some_count")]
    pub(crate) max_conns: Option<usize>,
    /// Open WebSockets per client IP (429 past it).
    #[serde(deserialize_with = "value::some_count")]
    pub(crate) max_conns_per_ip: Option<usize>,
    /// Handshakes per client IP (429 with Retry-After past it).
    #[serde(deserialize_with = "value::some_rate")]
    pub(crate) rate_per_ip: Option<Rate>,
    /// Handshakes in all.
    #[serde(deserialize_with = "value::some_rate")]
    pub(crate) rate: Option<Rate>,
    /// Extra handshakes at once over the rates (0).
    pub(crate) burst: u32,
    /// Ask an auth service about each handshake (nginx's `auth_request`).
    pub(crate) forward_auth: Option<ForwardAuthConfig>,
    /// Keep the limits above in Redis, shared by every instance.
    pub(crate) redis: Option<RedisConfig>,
    /// Check a signed token (JWT) at the handshake.
    pub(crate) jwt: Option<JwtConfig>,
}

/// `[admission.jwt]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtConfig {
    /// `"HS256"` (with `secret`), `"RS256"` or `"ES256"` (with
    /// `key_file`); not with `jwks_url`, whose keys say.
    #[serde(default)]
    pub(crate) algorithm: Option<String>,
    /// The HMAC secret of HS256.
    #[serde(default)]
    pub(crate) secret: Option<String>,
    /// A PEM file with the public key of RS256 or ES256.
    #[serde(default)]
    pub(crate) key_file: Option<PathBuf>,
    /// A JWKS (`http://`), fetched at the first handshake and refreshed.
    #[serde(default)]
    pub(crate) jwks_url: Option<String>,
    /// How often the JWKS is fetched again (5 minutes).
    #[serde(default, deserialize_with = "value::some_duration")]
    pub(crate) jwks_refresh: Option<Duration>,
    /// Only tokens for one of these audiences (`aud`).
    #[serde(default)]
    pub(crate) audience: Vec<String>,
    /// Only tokens from one of these issuers (`iss`).
    #[serde(default)]
    pub(crate) issuer: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (none).
    #[serde(default, deserialize_with = "value::duration")]
    pub(crate) leeway: Duration,
    /// Where the token is, tried in order: `"bearer:Authorization"`,
    /// `"header:NAME"`, `"cookie:NAME"`, `"query:NAME"`,
    /// `"protocol:PREFIX"` (a `Sec-WebSocket-Protocol` entry).
    #[serde(default, deserialize_with = "value::parsed_list")]
    pub(crate) token_from: Vec<TokenFromConfig>,
    /// Claims sent to the backend as headers: `{ sub = "X-User-Id" }`.
    #[serde(default)]
    pub(crate) claim_headers: BTreeMap<String, String>,
    /// Leave the token where it was for the backend (removed by default).
    #[serde(default)]
    pub(crate) forward_token: bool,
    /// Close a WebSocket when its token expires (Close 1008).
    #[serde(default)]
    pub(crate) close_at_expiry: bool,
}

impl JwtConfig {
    /// The check this configures, or why it cannot be built.
    pub(crate) fn build(&self) -> Result<wsproxy::admit::JwtAuth, String> {
        use wsproxy::admit::JwtAuth;
        let mut auth = match (&self.jwks_url, self.algorithm.as_deref()) {
            (Some(url), None) => JwtAuth::jwks(url).map_err(|e| format!("jwks_url: {e}"))?,
            (Some(_), Some(_)) => {
                return Err("algorithm: a JWKS's keys name their own; leave it out".into());
            }
            (None, Some("HS256")) => {
                let secret = self
                    .secret
                    .as_deref()
                    .filter(|s| s.len() >= 32)
                    .ok_or("HS256 needs a secret of at least 32 bytes")?;
                JwtAuth::hs256(secret.as_bytes())
            }
            (None, Some(algorithm @ ("RS256" | "ES256"))) => {
                let file = self
                    .key_file
                    .as_ref()
                    .ok_or_else(|| format!("{algorithm} needs key_file (a PEM public key)"))?;
                let pem =
                    std::fs::read(file).map_err(|e| format!("key_file {}: {e}", file.display()))?;
                let built = if algorithm == "RS256" {
                    JwtAuth::rs256_pem(&pem)
                } else {
                    JwtAuth::es256_pem(&pem)
                };
                built.map_err(|e| format!("key_file {}: {e}", file.display()))?
            }
            (None, Some(other)) => {
                return Err(format!("algorithm '{other}': HS256, RS256 or ES256"));
            }
            (None, None) => return Err("set jwks_url, or algorithm with its key".into()),
        };
        if let Some(every) = self.jwks_refresh {
            auth = auth.jwks_refresh(every);
        }
        auth = auth
            .audience(self.audience.iter().cloned())
            .issuer(self.issuer.iter().cloned())
            .leeway(self.leeway)
            .forward_token(self.forward_token)
            .close_at_expiry(self.close_at_expiry);
        if !self.token_from.is_empty() {
            auth = auth.token_from(self.token_from.iter().map(|from| from.0.clone()));
        }
        for (claim, header) in &self.claim_headers {
            let name = header
                .parse()
                .map_err(|_| format!("claim_headers.{claim}: invalid header name '{header}'"))?;
            auth = auth.claim_header(claim, name);
        }
        Ok(auth)
    }
}

/// One `token_from` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenFromConfig(pub(crate) wsproxy::admit::TokenFrom);

impl std::str::FromStr for TokenFromConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        use wsproxy::admit::TokenFrom;
        let header = |name: &str| {
            name.parse::<axum::http::HeaderName>()
                .map_err(|_| format!("invalid header name '{name}'"))
        };
        let from = match s.split_once(':') {
            Some(("bearer", name)) => TokenFrom::Bearer(header(name)?),
            Some(("header", name)) => TokenFrom::Header(header(name)?),
            Some(("cookie", name)) if !name.is_empty() => TokenFrom::Cookie(name.into()),
            Some(("query", name)) if !name.is_empty() => TokenFrom::Query(name.into()),
            Some(("protocol", prefix)) if !prefix.is_empty() => TokenFrom::Protocol(prefix.into()),
            _ => {
                return Err(format!(
                    "invalid token place '{s}': bearer:HEADER, header:HEADER, cookie:NAME, query:NAME or protocol:PREFIX"
                ));
            }
        };
        Ok(Self(from))
    }
}

/// `[admission.redis]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisConfig {
    /// `redis://host:port/db`.
    pub(crate) url: String,
    /// Instances with the same prefix share their limits ("wsgate").
    #[serde(default = "RedisConfig::default_prefix")]
    pub(crate) prefix: String,
    /// A dead instance's open WebSockets stop counting at most this long
    /// after its last renewal (15 s).
    #[serde(
        default = "RedisConfig::default_lease",
        deserialize_with = "value::duration"
    )]
    pub(crate) lease: Duration,
    /// Redis's answer (250 ms); past it `on_failure` decides.
    #[serde(
        default = "RedisConfig::default_timeout",
        deserialize_with = "value::duration"
    )]
    pub(crate) timeout: Duration,
    /// Redis down or slow: `"local"` (each instance keeps the same limits
    /// alone) or `"closed"` (503).
    #[serde(default)]
    pub(crate) on_failure: OnFailure,
}

impl RedisConfig {
    fn default_prefix() -> String {
        "wsgate".into()
    }
    fn default_lease() -> Duration {
        Duration::from_secs(15)
    }
    fn default_timeout() -> Duration {
        Duration::from_millis(250)
    }
}

/// `on_failure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnFailure {
    #[default]
    Local,
    Closed,
}

/// `[admission.forward_auth]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForwardAuthConfig {
    /// The auth service, `http://host:port/path`: 2xx admits, 3xx and 4xx
    /// are relayed to the client, anything else is 503 (504 past the
    /// timeout).
    pub(crate) url: String,
    /// Headers of a positive answer copied into the upgrade request
    /// (`X-User-Id`); the client's own of these names are removed.
    #[serde(default, deserialize_with = "value::parsed_list")]
    pub(crate) copy_headers: Vec<axum::http::HeaderName>,
    /// The auth service's whole answer (5 s).
    #[serde(
        default = "ForwardAuthConfig::default_timeout",
        deserialize_with = "value::duration"
    )]
    pub(crate) timeout: Duration,
    /// Remember positive answers this long, by URI and credentials
    /// (`Authorization`, `Cookie`, `Sec-WebSocket-Protocol`); `"0s"`: not.
    #[serde(default, deserialize_with = "value::duration")]
    pub(crate) cache: Duration,
}

impl ForwardAuthConfig {
    fn default_timeout() -> Duration {
        Duration::from_secs(5)
    }
}

/// `[forwarding]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Forwarding {
    /// Also send an RFC 7239 `Forwarded` header.
    pub(crate) forwarded: bool,
    /// Peer networks whose `X-Forwarded-For` is trusted and appended to;
    /// the client address is then the one they name, for limits and logs.
    #[serde(deserialize_with = "value::parsed_list")]
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
}

/// `[[routes]]` (WebSocket handshakes) and `[[http_routes]]` (ordinary
/// requests, nginx's `proxy_pass`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    /// The path prefix (whole segments: `/chat` is not `/chatty`); the
    /// longest wins.
    pub(crate) prefix: String,
    /// Only for this `Host` (port ignored); default any.
    #[serde(default)]
    pub(crate) host: Option<String>,
    /// Where its requests go: for `[[routes]]` the name of an
    /// `[upstreams.NAME]`, for `[[http_routes]]` an app server's
    /// `http://host:port[/path]`.
    pub(crate) upstream: String,
    /// Remove the prefix from the path sent to the backend.
    #[serde(default)]
    pub(crate) strip_prefix: bool,
    /// Put this in place of the prefix in the path sent to the backend
    /// (`/chat/7` with `rewrite_prefix = "/v2/rooms"` → `/v2/rooms/7`).
    #[serde(default)]
    pub(crate) rewrite_prefix: Option<String>,
    /// The `Host` the backend gets: `"upstream"` (its URL's authority,
    /// the default), `"client"`, or a fixed value.
    #[serde(default, deserialize_with = "value::some_parsed")]
    pub(crate) host_header: Option<HostHeaderConfig>,
}

impl RouteConfig {
    /// What this route claims: two routes with the same scope would leave
    /// one unreachable. A trailing `/` is ignored, as
    /// [`wsproxy::Route::prefix`] does; host names are case-insensitive.
    pub(crate) fn scope(&self) -> (Option<String>, &str) {
        (
            self.host.as_ref().map(|h| h.to_ascii_lowercase()),
            self.prefix.trim_end_matches('/'),
        )
    }
}

/// `host_header`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HostHeaderConfig {
    Upstream,
    Client,
    Fixed(axum::http::HeaderValue),
}

impl std::str::FromStr for HostHeaderConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "upstream" => Ok(Self::Upstream),
            "client" => Ok(Self::Client),
            fixed => fixed
                .parse::<axum::http::uri::Authority>()
                .ok()
                .and_then(|a| axum::http::HeaderValue::from_str(a.as_str()).ok())
                .map(Self::Fixed)
                .ok_or_else(|| {
                    format!(
                        "invalid host_header '{s}': use \"upstream\", \"client\" or a host[:port]"
                    )
                }),
        }
    }
}

impl HostHeaderConfig {
    pub(crate) fn library(&self) -> wsproxy::HostHeader {
        match self {
            Self::Upstream => wsproxy::HostHeader::Upstream,
            Self::Client => wsproxy::HostHeader::Client,
            Self::Fixed(value) => wsproxy::HostHeader::Fixed(value.clone()),
        }
    }
}

/// A configuration error: where, and what.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConfigError {
    /// The file, if the error is in one (not in a flag).
    pub(crate) file: Option<PathBuf>,
    /// Line and column in the file, when known.
    pub(crate) at: Option<(usize, usize)>,
    /// The key path, e.g. `upstreams.chat.backends[1]`; empty for the
    /// whole file.
    pub(crate) key: String,
    /// The problem.
    pub(crate) problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.at) {
            (Some(file), Some((line, column))) => {
                write!(f, "{}:{line}:{column}: ", file.display())?;
            }
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some((line, column))) => write!(f, "line {line}, column {column}: ")?,
            (None, None) => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Every error of a configuration, one per line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConfigErrors(pub(crate) Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Read and parse `path` (nothing checked beyond the syntax and the
    /// types of the values).
    pub(crate) fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            at: None,
            key: String::new(),
            problem: format!("cannot read it: {e}"),
        })?;
        let mut config = Self::parse(&text).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// How errors name listener `i`: `listen` when it is the only one.
    fn listen_key(&self, i: usize) -> String {
        if self.listen.len() == 1 {
            "listen".to_owned()
        } else {
            format!("listen[{i}]")
        }
    }

    /// The value of `Strict-Transport-Security` on answers over TLS (every
    /// TLS listener gives the same, checked).
    pub(crate) fn hsts(&self) -> Option<&axum::http::HeaderValue> {
        self.listen
            .iter()
            .find(|l| l.tls.is_some())
            .and_then(|l| l.hsts.as_ref())
    }

    /// Make the file names in the configuration that are relative to its
    /// file's folder (`dir`) usable from any working directory.
    fn resolve_paths(&mut self, dir: &Path) {
        let mut resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        for listen in &mut self.listen {
            if let Some(tls) = &mut listen.tls {
                resolve(&mut tls.cert);
                resolve(&mut tls.key);
            }
        }
        if let Some(file) = &mut self.log.file {
            resolve(file);
        }
        if let Some(file) = self
            .admission
            .jwt
            .as_mut()
            .and_then(|jwt| jwt.key_file.as_mut())
        {
            resolve(file);
        }
        let backend = &mut self.backend_tls;
        backend.cas.iter_mut().for_each(&mut resolve);
        if let Some(cert) = &mut backend.cert {
            resolve(cert);
        }
        if let Some(key) = &mut backend.key {
            resolve(key);
        }
    }

    /// Parse TOML text.
    pub(crate) fn parse(text: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| toml_error(text, &e, ""))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            toml_error(text, e.inner(), &key)
        })
    }

    /// Everything that can be checked without serving; the first
    /// problem of each key. `file` names the source in the errors.
    pub(crate) fn check(&self, file: Option<&Path>) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut error = |key: String, problem: String| {
            errors.push(ConfigError {
                file: file.map(Path::to_owned),
                at: None,
                key,
                problem,
            });
        };
        if self.routes.is_empty() && self.http_routes.is_empty() && !self.demo {
            error(
                "routes".into(),
                "no route: add a [[routes]] (or --route PREFIX=ws://HOST:PORT/PATH), or demo = true"
                    .into(),
            );
        }
        if self.listen.is_empty() {
            error("listen".into(), "no listener: give at least one".into());
        }
        let tls_listeners: Vec<&Listen> = self.listen.iter().filter(|l| l.tls.is_some()).collect();
        if self.redirect.address.is_some() && tls_listeners.is_empty() {
            error(
                "redirect.address".to_owned(),
                "a redirect to https needs a TLS listener: set listen.tls too".to_owned(),
            );
        }
        if self.redirect.port.is_some() && self.redirect.address.is_none() {
            error(
                "redirect.port".to_owned(),
                "set only with redirect.address".to_owned(),
            );
        }
        if !self.redirect.proxy_protocol_from.is_empty() && !self.redirect.proxy_protocol {
            error(
                "redirect.proxy_protocol_from".to_owned(),
                "set only with proxy_protocol = true".to_owned(),
            );
        }
        let mut addresses = std::collections::HashMap::new();
        for (i, listen) in self.listen.iter().enumerate() {
            let key = self.listen_key(i);
            if listen.address.port() != 0
                && let Some(other) = addresses.insert(listen.address, key.clone())
            {
                error(
                    format!("{key}.address"),
                    format!("{} is {other}'s address too", listen.address),
                );
            }
            if listen.hsts.is_some() && listen.tls.is_none() {
                error(
                    format!("{key}.hsts"),
                    "Strict-Transport-Security is for TLS listeners: set listen.tls too".to_owned(),
                );
            }
            if let Some(hsts) = &listen.hsts
                && !hsts
                    .to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("max-age="))
            {
                error(
                    format!("{key}.hsts"),
                    format!(
                        "'{}' has no max-age=SECONDS (RFC 6797)",
                        String::from_utf8_lossy(hsts.as_bytes())
                    ),
                );
            }
            // One header for every answer over TLS.
            if listen.tls.is_some() && listen.hsts != tls_listeners[0].hsts {
                error(
                    format!("{key}.hsts"),
                    "every TLS listener must give the same hsts (one header for all)".to_owned(),
                );
            }
            if !listen.proxy_protocol_from.is_empty() && !listen.proxy_protocol {
                error(
                    format!("{key}.proxy_protocol_from"),
                    "set only with proxy_protocol = true".to_owned(),
                );
            }
        }
        for (list, routes) in [("routes", &self.routes), ("http_routes", &self.http_routes)] {
            let mut scopes = std::collections::HashMap::new();
            for (i, route) in routes.iter().enumerate() {
                let key = format!("{list}[{i}]");
                if !route.prefix.starts_with('/') {
                    error(
                        format!("{key}.prefix"),
                        format!("the prefix '{}' must start with '/'", route.prefix),
                    );
                }
                let (host, prefix) = route.scope();
                if let Some(other) = scopes.insert((host, prefix.to_owned()), key.clone()) {
                    error(
                        format!("{key}.prefix"),
                        format!(
                            "two {list} claim the prefix '{}' ({other} too); give each prefix (per host) once",
                            route.prefix
                        ),
                    );
                }
                match &route.rewrite_prefix {
                    Some(_) if route.strip_prefix => error(
                        format!("{key}.rewrite_prefix"),
                        "give strip_prefix or rewrite_prefix, not both".to_owned(),
                    ),
                    Some(to) if !(to.is_empty() || to.starts_with('/')) => error(
                        format!("{key}.rewrite_prefix"),
                        format!("the replacement '{to}' must start with '/' (or be empty)"),
                    ),
                    Some(to)
                        if to.parse::<axum::http::uri::PathAndQuery>().is_err()
                            || to.contains('?') =>
                    {
                        error(
                            format!("{key}.rewrite_prefix"),
                            format!("the replacement '{to}' is not a valid path"),
                        )
                    }
                    _ => {}
                }
                if let Some(host) = &route.host {
                    let valid = host
                        .parse::<axum::http::uri::Authority>()
                        .is_ok_and(|a| a.as_str() == a.host() && !a.host().is_empty());
                    if !valid {
                        error(
                            format!("{key}.host"),
                            format!("invalid host '{host}': a name or address, without port"),
                        );
                    }
                }
                if list == "http_routes" {
                    if let Err(e) = wsproxy::http_proxy::HttpProxy::new(&route.upstream) {
                        error(format!("{key}.upstream"), e.to_string());
                    }
                } else if !self.upstreams.contains_key(&route.upstream) {
                    error(
                        format!("{key}.upstream"),
                        format!(
                            "no upstream '{}' (add [upstreams.{}])",
                            route.upstream, route.upstream
                        ),
                    );
                }
            }
        }
        if let Some(auth) = &self.admission.forward_auth
            && let Err(e) = wsproxy::admit::ForwardAuth::new(&auth.url)
        {
            error("admission.forward_auth.url".into(), e.to_string());
        }
        if let Some(jwt) = &self.admission.jwt
            && let Err(e) = jwt.build()
        {
            error("admission.jwt".into(), e);
        }
        if let Some(redis) = &self.admission.redis {
            if let Err(e) = wsproxy::admit::SharedLimit::new(&redis.url) {
                error("admission.redis.url".into(), e.to_string());
            }
            let a = &self.admission;
            if a.max_conns.is_none()
                && a.max_conns_per_ip.is_none()
                && a.rate.is_none()
                && a.rate_per_ip.is_none()
            {
                error(
                    "admission.redis".into(),
                    "nothing to share: set max_conns, max_conns_per_ip, rate or rate_per_ip in [admission]".into(),
                );
            }
        }
        for (name, upstream) in &self.upstreams {
            if let Some(dns) = upstream.backends.dns() {
                if let Err(e) = dns.discover() {
                    error(format!("upstreams.{name}.backends"), e);
                }
            } else if upstream.backends.is_empty() {
                error(
                    format!("upstreams.{name}.backends"),
                    "no backend; list at least one URL".into(),
                );
            }
            if let Some(conflict) = upstream.conflict(file.is_none()) {
                error(format!("upstreams.{name}"), conflict);
            }
        }
        // Without a file, what was wrong came from a flag: name it.
        let named = |key: &str, flag: &str| if file.is_some() { key } else { flag }.to_owned();
        for (i, listen) in self.listen.iter().enumerate() {
            if let Some(tls) = &listen.tls
                && let Err(e) = crate::tls::Certificate::load(&tls.cert, &tls.key)
            {
                let key = format!("{}.tls", self.listen_key(i));
                error(named(&key, "--tls-cert/--tls-key"), e.to_string());
            }
        }
        if let Err((key, e)) = crate::tls::backend(&self.backend_tls) {
            let flag = match key {
                "cas" => "--backend-ca",
                "system_roots" => "--backend-system-roots",
                "sni" => "--backend-sni",
                _ => "--backend-cert/--backend-key",
            };
            error(named(&format!("backend_tls.{key}"), flag), e);
        }
        if let Some(log) = &self.log.file {
            // Checked without creating it.
            let writable = if log.exists() {
                std::fs::OpenOptions::new().append(true).open(log).err()
            } else {
                match log.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(dir) if !dir.is_dir() => Some(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no folder '{}'", dir.display()),
                    )),
                    _ => None,
                }
            };
            if let Some(e) = writable {
                error(
                    named("log.file", "log.file"),
                    format!("cannot write to '{}': {e}", log.display()),
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// A TOML error as a [`ConfigError`]: its message without toml's own
/// framing, and where it is.
fn toml_error(text: &str, error: &toml::de::Error, key: &str) -> ConfigError {
    let at = error.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    });
    ConfigError {
        file: None,
        at,
        key: key.to_owned(),
        problem: error.message().trim_end().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let bad_url = r#"
[upstreams.chat]
backends = ["ws://127.0.0.1:1", "ws:/x"]
"#;
        let e = error(bad_url);
        assert!(e.contains("upstreams.chat.backends[1]: "), "{e}");
        assert!(e.contains("ws:/x"), "{e}");
        let e = error("[timeouts]\nconnect = \"soon\"\n");
        assert!(
            e.contains("timeouts.connect: invalid duration 'soon'"),
            "{e}"
        );
        let e = error("[timeouts]\nconect = \"1s\"\n");
        assert!(e.contains("unknown field `conect`"), "{e}");
        let e = error("[[routes]]\nprefix = \"/a\"\n");
        assert!(e.contains("routes[0]: missing field `upstream`"), "{e}");
        let e = error("[messages]\nmax_frame = \"1MB\"\n");
        assert!(e.contains("messages.max_frame: invalid size '1MB'"), "{e}");
        let e = error("workers = 0\n");
        assert!(e.contains("workers: invalid value 0"), "{e}");
        let e = error("workers = 2\nlisten = nothing\n");
        assert!(e.starts_with("line 2, column 10: invalid float"), "{e}");
        let e = Config::read(Path::new("/nonexistent/w.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/w.toml: cannot read it: "),
            "{e}"
        );
    }

    #[test]
    fn backends_are_text_or_tables() {
        let config = Config::parse(
            r#"
[upstreams.a]
backends = ["ws://127.0.0.1:1/;weight=2", { url = "ws://127.0.0.1:2/", max_conns = 5, backup = true }]
"#,
        )
        .unwrap();
        let backends = &config.upstreams["a"].backends;
        assert_eq!(backends[0].weight, Some(2));
        assert_eq!((backends[1].max_conns, backends[1].backup), (Some(5), true));
        let e = error("[upstreams.a]\nbackends = [{ url = \"ws://a\", colour = 1 }]\n");
        assert!(e.contains("upstreams.a.backends[0]"), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn the_check_names_every_problem() {
        let config = Config::parse(
            r#"
[[routes]]
prefix = "/a"
upstream = "one"

[[routes]]
prefix = "/a/"
upstream = "nowhere"

[[routes]]
prefix = "/a"
host = "Chat.example.com"
upstream = "one"

[upstreams.one]
backends = ["ws://127.0.0.1:1", "ws://127.0.0.1:1"]
hash_bound = 1.5
"#,
        )
        .unwrap();
        let errors = config
            .check(Some(Path::new("w.toml")))
            .unwrap_err()
            .to_string();
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(
            lines,
            [
                "w.toml: routes[1].prefix: two routes claim the prefix '/a/' (routes[0] too); give each prefix (per host) once",
                "w.toml: routes[1].upstream: no upstream 'nowhere' (add [upstreams.nowhere])",
                "w.toml: upstreams.one: hash_bound needs a hash balance, e.g. balance = \"hash:ip\"",
            ],
            "{errors}"
        );
        assert!(
            Config::default()
                .check(None)
                .unwrap_err()
                .to_string()
                .contains("no route")
        );
    }
}
