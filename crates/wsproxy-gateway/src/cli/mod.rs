//! Command-line flags: [`Args`], each one the quick form of a key of
//! the configuration file, set over it by [`Args::apply`]; the balancing
//! flags in [`balance`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

mod balance;

use self::balance::BalanceArgs;
use crate::config::upstream::{BackendSpec, UpstreamConfig};
use crate::config::value::{parse_duration, parse_rate, parse_size, parse_timeout_or_off};
use crate::config::{Config, RouteConfig, TlsFiles};

/// A standalone WebSocket gateway built on the wsproxy library.
#[derive(Debug, Parser)]
#[command(name = "wsgate", version, about)]
pub(crate) struct Args {
    /// A configuration file (TOML; see examples/wsgate.toml). The flags
    /// given with it are set over what it says.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Reload when the --config file or a listener's certificate or key
    /// changes, as SIGHUP does (Caddy's --watch).
    #[arg(long)]
    pub(crate) watch: bool,

    /// Check the configuration (files readable, certificates matching
    /// their keys, routes, values) and exit: 0 if it is valid, 2 with
    /// every problem otherwise, like `nginx -t`.
    #[arg(long)]
    pub(crate) check: bool,

    /// Address to listen on.
    /// [default: 127.0.0.1:8080]
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,

    /// Read a PROXY protocol header (v1 or v2, from an L4 load balancer)
    /// at the start of every connection: its source is the client
    /// [listen.proxy_protocol].
    #[arg(long)]
    pub(crate) proxy_protocol: bool,

    /// With --proxy-protocol, only these peers (CIDR) may send the
    /// header; repeat for more [listen.proxy_protocol_from]. Default: any.
    #[arg(long, value_name = "CIDR")]
    pub(crate) proxy_protocol_from: Vec<ipnet::IpNet>,

    /// With TLS, answer plain HTTP on this address with 308 to the same
    /// URL over https [redirect.address]. Default: none.
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) redirect_listen: Option<SocketAddr>,

    /// Serve /metrics (Prometheus), /status (JSON), /healthz and /readyz
    /// on this address, e.g. 127.0.0.1:9090 [admin.address]. Default:
    /// none.
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) admin_listen: Option<SocketAddr>,

    /// No access log (nginx's `access_log off`): no line per handshake,
    /// tunnel or plain request [log.access = false].
    #[arg(long)]
    pub(crate) no_access_log: bool,

    /// Log lines as text or as JSON objects [log.format]. Default: text.
    #[arg(long, value_name = "FORMAT")]
    pub(crate) log_format: Option<crate::config::LogFormat>,

    /// A route, PREFIX=URL[,URL...]: WebSocket handshakes under PREFIX go
    /// to one of the backend URLs (ws://HOST:PORT/PATH), chosen by
    /// --balance; repeat for more routes. A URL may take options after
    /// ';' (quote them in a shell): weight=N (its share of new tunnels,
    /// default 1), max-conns=N (at most N open tunnels), backup (used only
    /// while no other backend is usable), e.g.
    /// '/chat=ws://10.0.0.1:9001;weight=3,ws://10.0.0.2:9001,ws://10.0.0.9:9001;backup'.
    #[arg(long = "route", value_name = "PREFIX=URL[,URL...]")]
    pub(crate) routes: Vec<RouteSpec>,

    /// Send ordinary requests (all but the WebSocket handshakes a --route
    /// claims) to this app server, http://HOST:PORT[/PATH], nginx's
    /// `proxy_pass` (an `http_routes` entry for "/").
    #[arg(long, value_name = "URL")]
    pub(crate) app: Option<String>,

    /// Time allowed for the TCP connect to a backend (e.g. 500ms, 5s).
    /// [default: 5s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) connect_timeout: Option<Duration>,

    /// Time allowed for a backend to answer the upgrade request, and the
    /// longest silence while it sends the body of a refusal.
    /// [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) handshake_timeout: Option<Duration>,

    /// Close a tunnel with no traffic either way for this long ("off" or 0
    /// never closes idle tunnels).
    /// [default: 10m]
    #[arg(long)]
    pub(crate) idle_timeout: Option<IdleTimeout>,

    /// How long the other direction may flow after one side closed its
    /// sending half.
    /// [default: 5s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) half_close_timeout: Option<Duration>,

    /// When a backend's connection ends without a WebSocket Close frame
    /// (a crash, kill -9), pass that on to the client as a bare TCP close
    /// (browsers report 1006), a FIN as a half-close, instead of sending it
    /// Close 1011; likewise toward a backend whose client vanished (1001).
    #[arg(long)]
    pub(crate) no_close_on_disconnect: bool,

    /// Remove the route prefix from the path sent to the backend.
    #[arg(long)]
    pub(crate) strip_prefix: bool,

    /// Also send an RFC 7239 `Forwarded` header.
    #[arg(long)]
    pub(crate) forwarded: bool,

    /// A peer network (CIDR) whose X-Forwarded-For is trusted and appended
    /// to; repeat for more.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,

    /// Ping clients silent for this long; close those that stay silent for
    /// --ping-timeout after the ping (default: off).
    #[arg(long, value_name = "INTERVAL", value_parser = parse_duration)]
    pub(crate) client_ping: Option<Duration>,

    /// Ping backends silent for this long (default: off).
    #[arg(long, value_name = "INTERVAL", value_parser = parse_duration)]
    pub(crate) backend_ping: Option<Duration>,

    /// How long a pinged peer has to show any sign of life.
    /// [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) ping_timeout: Option<Duration>,

    /// Largest frame payload a client may send, e.g. 64KiB (default: no
    /// limit); a larger one closes the WebSocket with 1009.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(crate) max_frame: Option<u64>,

    /// Largest message (all fragments) a client may send, e.g. 1MiB
    /// (default: no limit).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(crate) max_message: Option<u64>,

    /// Messages per tunnel a client may send, e.g. 50/s (faster closes the
    /// WebSocket with 1008); default: no limit.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub(crate) message_rate: Option<wsproxy::admit::Rate>,

    /// Extra messages allowed at once over --message-rate. Messages that
    /// were sent apart can arrive together (TCP merges packets, a slow
    /// backend backs them up), so leave some room.
    /// [default: 10]
    #[arg(long, value_name = "N")]
    pub(crate) message_burst: Option<u32>,

    /// Largest frame payload a backend may send (default: no limit).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(crate) backend_max_frame: Option<u64>,

    /// Largest message a backend may send (default: no limit).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub(crate) backend_max_message: Option<u64>,

    /// Allow WebSocket handshakes only from this Origin (exact, or
    /// https://*.example.com for subdomains); repeat for more. Others get
    /// 403. Default: any origin.
    #[arg(long = "origin", value_name = "ORIGIN")]
    pub(crate) origins: Vec<String>,

    /// With --origin, also allow handshakes that send no Origin
    /// (non-browser clients).
    #[arg(long)]
    pub(crate) allow_missing_origin: bool,

    /// At most this many open WebSockets in all (more get 503).
    #[arg(long, value_name = "N")]
    pub(crate) max_conns: Option<usize>,

    /// At most this many open WebSockets per client IP (more get 429).
    #[arg(long, value_name = "N")]
    pub(crate) max_conns_per_ip: Option<usize>,

    /// Handshakes per client IP, e.g. 10/s or 600/m (more get 429 with
    /// Retry-After); like nginx's limit_req rate.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub(crate) rate_per_ip: Option<wsproxy::admit::Rate>,

    /// Handshakes in all, e.g. 2000/s.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub(crate) rate: Option<wsproxy::admit::Rate>,

    /// Extra handshakes allowed at once over --rate-per-ip and --rate
    /// (nginx's burst).
    /// [default: 0]
    #[arg(long, value_name = "N")]
    pub(crate) burst: Option<u32>,

    /// Time a client has to complete its TLS handshake.
    /// [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) tls_handshake_timeout: Option<Duration>,

    /// Time from accepting a connection (after TLS) to its first bytes: a
    /// client that connects and says nothing is closed after this.
    /// [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) detect_timeout: Option<Duration>,

    /// Time from the first byte of a request to the end of its head (in
    /// all, not per byte; nginx's client_header_timeout).
    /// [default: 60s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) request_head_timeout: Option<Duration>,

    /// Time an HTTP/1.1 connection may wait for its next request (nginx's
    /// keepalive_timeout); 0 closes every connection after one response.
    /// [default: 75s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) keepalive_timeout: Option<Duration>,

    /// Time an HTTP/2 connection may stay with no open stream before it
    /// gets GOAWAY (a WebSocket over HTTP/2 is an open stream).
    /// [default: 75s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) http2_idle_timeout: Option<Duration>,

    /// At most this many client connections held by the HTTP server (in
    /// all workers; an HTTP/1.1 WebSocket leaves the count at its upgrade,
    /// see --max-conns). At the bound the longest-idle one is closed to
    /// make room. Default: half the open file limit.
    #[arg(long, value_name = "N")]
    pub(crate) max_client_conns: Option<usize>,

    /// At most this many client connections per client IP (default: no
    /// bound); over it the IP's longest-idle connection is closed, or the
    /// new one if none is idle.
    #[arg(long, value_name = "N")]
    pub(crate) max_client_conns_per_ip: Option<usize>,

    /// WebSocket handshakes answered at once on one HTTP/2 connection;
    /// more get 429 with Retry-After.
    /// [default: 16]
    #[arg(long, value_name = "N")]
    pub(crate) h2_max_handshakes: Option<usize>,

    /// Handshakes an HTTP/2 client may reset before their answer, e.g.
    /// 2/s; faster (past --h2-reset-burst) gets its connection GOAWAY.
    /// [default: 2/s]
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub(crate) h2_reset_rate: Option<wsproxy::admit::Rate>,

    /// Resets allowed at once over --h2-reset-rate.
    /// [default: 20]
    #[arg(long, value_name = "N")]
    pub(crate) h2_reset_burst: Option<u32>,

    /// On SIGTERM/SIGINT, how long open WebSockets have to finish their
    /// closing handshakes after the proxy's Close 1001.
    /// [default: 10s]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) shutdown_timeout: Option<Duration>,

    /// Worker threads, each with its own runtime and `SO_REUSEPORT`
    /// listener (default: one per core, like nginx's
    /// `worker_processes auto`).
    #[arg(long)]
    pub(crate) workers: Option<usize>,

    /// Serve HTTPS and wss:// with this certificate chain (PEM, leaf
    /// first); needs --tls-key. HTTP/2 or HTTP/1.1 is chosen by ALPN.
    /// Without it the gateway serves plain HTTP/1.1, and HTTP/2 to clients
    /// that start with it (h2c prior knowledge).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,

    /// Trust only these CAs (PEM) for wss:// backends, instead of
    /// Mozilla's roots (with --backend-system-roots: as well as the
    /// system's); repeat for more.
    #[arg(long = "backend-ca", value_name = "FILE")]
    pub(crate) backend_cas: Vec<PathBuf>,

    /// Trust the operating system's root certificates for wss:// backends
    /// instead of Mozilla's (built in).
    #[arg(long)]
    pub(crate) backend_system_roots: bool,

    /// Send this name as SNI to wss:// backends and check their
    /// certificates against it, instead of each URL's host.
    #[arg(long, value_name = "NAME")]
    pub(crate) backend_sni: Option<String>,

    /// Present this client certificate (PEM chain) to wss:// backends that
    /// ask for one (mutual TLS); needs --backend-key.
    #[arg(long, value_name = "FILE", requires = "backend_key")]
    pub(crate) backend_cert: Option<PathBuf>,

    /// The private key of --backend-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "backend_cert")]
    pub(crate) backend_key: Option<PathBuf>,

    /// Start embedded echo and chat backends and route /echo and /chat to
    /// them (prefix stripped).
    #[arg(long)]
    pub(crate) demo: bool,

    #[command(flatten)]
    pub(crate) balance: BalanceArgs,
}

impl Args {
    /// Set every flag given over `config` (the file's, or the defaults).
    /// A `--route` replaces a file route with the same prefix (and no
    /// host); its backends become an upstream named after the prefix. The
    /// balancing flags set their keys in every upstream.
    pub(crate) fn apply(&self, config: &mut Config) {
        fn set<T: Clone>(to: &mut T, flag: &Option<T>) {
            if let Some(value) = flag {
                *to = value.clone();
            }
        }
        fn set_some<T: Clone>(to: &mut Option<T>, flag: &Option<T>) {
            if flag.is_some() {
                to.clone_from(flag);
            }
        }
        // The listener flags set the first listener.
        if config.listen.is_empty() {
            config.listen.push(Default::default());
        }
        let listen = &mut config.listen[0];
        set(&mut listen.address, &self.listen);
        listen.proxy_protocol |= self.proxy_protocol;
        if !self.proxy_protocol_from.is_empty() {
            listen
                .proxy_protocol_from
                .clone_from(&self.proxy_protocol_from);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            listen.tls = Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        config.watch |= self.watch;
        set_some(&mut config.admin.address, &self.admin_listen);
        set_some(&mut config.redirect.address, &self.redirect_listen);
        set(&mut config.log.format, &self.log_format);
        if self.no_access_log {
            config.log.access = false;
        }
        set_some(&mut config.workers, &self.workers);
        let timeouts = &mut config.timeouts;
        set(&mut timeouts.connect, &self.connect_timeout);
        set(&mut timeouts.handshake, &self.handshake_timeout);
        if let Some(IdleTimeout(idle)) = self.idle_timeout {
            timeouts.idle = idle;
        }
        set(&mut timeouts.half_close, &self.half_close_timeout);
        set(&mut timeouts.tls_handshake, &self.tls_handshake_timeout);
        set(&mut timeouts.detect, &self.detect_timeout);
        set(&mut timeouts.request_head, &self.request_head_timeout);
        set(&mut timeouts.keepalive, &self.keepalive_timeout);
        set(&mut timeouts.http2_idle, &self.http2_idle_timeout);
        set(&mut timeouts.shutdown, &self.shutdown_timeout);
        set_some(&mut config.ping.client, &self.client_ping);
        set_some(&mut config.ping.backend, &self.backend_ping);
        set(&mut config.ping.timeout, &self.ping_timeout);
        let messages = &mut config.messages;
        set_some(&mut messages.max_frame, &self.max_frame);
        set_some(&mut messages.max_message, &self.max_message);
        set_some(&mut messages.rate, &self.message_rate);
        set(&mut messages.burst, &self.message_burst);
        set_some(&mut messages.backend_max_frame, &self.backend_max_frame);
        set_some(&mut messages.backend_max_message, &self.backend_max_message);
        let connections = &mut config.connections;
        set_some(&mut connections.max, &self.max_client_conns);
        set_some(&mut connections.max_per_ip, &self.max_client_conns_per_ip);
        set(&mut connections.h2_max_handshakes, &self.h2_max_handshakes);
        set(&mut connections.h2_reset_rate, &self.h2_reset_rate);
        set(&mut connections.h2_reset_burst, &self.h2_reset_burst);
        let admission = &mut config.admission;
        if !self.origins.is_empty() {
            admission.origins.clone_from(&self.origins);
        }
        admission.allow_missing_origin |= self.allow_missing_origin;
        set_some(&mut admission.max_conns, &self.max_conns);
        set_some(&mut admission.max_conns_per_ip, &self.max_conns_per_ip);
        set_some(&mut admission.rate_per_ip, &self.rate_per_ip);
        set_some(&mut admission.rate, &self.rate);
        set(&mut admission.burst, &self.burst);
        config.forwarding.forwarded |= self.forwarded;
        if !self.trusted_proxies.is_empty() {
            config
                .forwarding
                .trusted_proxies
                .clone_from(&self.trusted_proxies);
        }
        if self.no_close_on_disconnect {
            config.close_on_disconnect = false;
        }
        let backend_tls = &mut config.backend_tls;
        if !self.backend_cas.is_empty() {
            backend_tls.cas.clone_from(&self.backend_cas);
        }
        backend_tls.system_roots |= self.backend_system_roots;
        set_some(&mut backend_tls.sni, &self.backend_sni);
        set_some(&mut backend_tls.cert, &self.backend_cert);
        set_some(&mut backend_tls.key, &self.backend_key);
        config.demo |= self.demo;
        // A flag's route replaces the file's of the same prefix; two
        // flags with the same prefix stay, for the check to refuse.
        config.routes.retain(|r| {
            r.host.is_some() || self.routes.iter().all(|flag| flag.scope() != r.scope().1)
        });
        for route in &self.routes {
            let name = route.prefix.clone();
            config.routes.push(RouteConfig {
                prefix: route.prefix.clone(),
                host: None,
                upstream: name.clone(),
                strip_prefix: false,
                rewrite_prefix: None,
                host_header: None,
            });
            config
                .upstreams
                .insert(name, UpstreamConfig::new(route.backends.clone()));
        }
        if let Some(app) = &self.app {
            config
                .http_routes
                .retain(|route| !route.prefix.trim_end_matches('/').is_empty());
            config.http_routes.push(crate::config::RouteConfig {
                prefix: "/".to_owned(),
                host: None,
                upstream: app.clone(),
                strip_prefix: false,
                rewrite_prefix: None,
                host_header: None,
            });
        }
        if self.strip_prefix {
            for route in &mut config.routes {
                route.strip_prefix = true;
            }
        }
        for upstream in config.upstreams.values_mut() {
            self.balance.apply(upstream);
        }
    }
}

/// An idle timeout, or none (`off` or `0`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleTimeout(pub(crate) Option<Duration>);

impl FromStr for IdleTimeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_timeout_or_off(s).map(Self)
    }
}

/// One `--route PREFIX=URL[,URL...]`.
#[derive(Debug, Clone)]
pub(crate) struct RouteSpec {
    /// The path prefix, as given; starts with `/`.
    pub(crate) prefix: String,
    /// Where the route's handshakes go, in the order given; never empty.
    pub(crate) backends: Vec<BackendSpec>,
}

impl RouteSpec {
    /// A route from `prefix` to the comma-separated `backends`
    /// (`URL[;OPTION...]` each), prefix kept.
    pub(crate) fn new(prefix: &str, backends: &str) -> Result<Self, RouteError> {
        if !prefix.starts_with('/') {
            return Err(RouteError(format!(
                "the prefix '{prefix}' must start with '/'"
            )));
        }
        let mut list: Vec<BackendSpec> = Vec::new();
        for item in backends.split(',') {
            let backend: BackendSpec = item.parse().map_err(RouteError)?;
            // The set tells backends apart by URL, as written.
            let url = backend.upstream.to_string();
            if list.iter().any(|b| b.upstream.to_string() == url) {
                return Err(RouteError(format!(
                    "the backend '{url}' is listed twice for '{prefix}'"
                )));
            }
            list.push(backend);
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            backends: list,
        })
    }

    /// The paths this route claims, by whole segments (a trailing `/` is
    /// ignored, as [`wsproxy::Route::prefix`] does): two routes with the
    /// same scope would leave one unreachable.
    pub(crate) fn scope(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }
}

impl FromStr for RouteSpec {
    type Err = RouteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, url) = s.split_once('=').ok_or_else(|| {
            RouteError(format!(
                "invalid route '{s}': expected PREFIX=ws://HOST:PORT/PATH[,ws://...]"
            ))
        })?;
        Self::new(prefix, url)
    }
}

/// Why a `--route` was rejected.
#[derive(Debug, Clone)]
pub(crate) struct RouteError(String);

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RouteError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        let route: RouteSpec = "/chat=ws://127.0.0.1:9002/x".parse().unwrap();
        assert_eq!(route.prefix, "/chat");
        assert_eq!(route.backends.len(), 1);
        assert_eq!(route.backends[0].upstream.port(), 9002);
        assert!("chat=ws://a".parse::<RouteSpec>().is_err());
        assert!("/chat".parse::<RouteSpec>().is_err());
        assert!("/chat=http://a".parse::<RouteSpec>().is_err());
        let slash: RouteSpec = "/chat/=ws://127.0.0.1:9002".parse().unwrap();
        assert_eq!(slash.scope(), route.scope());
        let root: RouteSpec = "/=ws://127.0.0.1:9002".parse().unwrap();
        assert_eq!(root.scope(), "");
    }

    #[test]
    fn routes_take_several_backends() {
        let route: RouteSpec = "/chat=ws://127.0.0.1:1/;weight=2,ws://127.0.0.1:2/;backup"
            .parse()
            .unwrap();
        let ports: Vec<_> = route.backends.iter().map(|b| b.upstream.port()).collect();
        assert_eq!(ports, [1, 2]);
        assert_eq!(route.backends[0].weight, Some(2));
        assert!(route.backends[1].backup);
        let error = |s: &str| s.parse::<RouteSpec>().unwrap_err().to_string();
        assert_eq!(
            error("/a=ws://127.0.0.1:1/,ws://127.0.0.1:1/;weight=2"),
            "the backend 'ws://127.0.0.1:1/' is listed twice for '/a'"
        );
        assert!(error("/a=ws://127.0.0.1:1,").contains("a backend URL is missing in ''"));
        assert!(
            error("/a=ws://127.0.0.1:1;colour=red").contains("unknown backend option 'colour=red'")
        );
    }

    #[test]
    fn idle_timeouts_parse() {
        assert_eq!("off".parse::<IdleTimeout>().unwrap().0, None);
        assert_eq!("0s".parse::<IdleTimeout>().unwrap().0, None);
        assert_eq!("0".parse::<IdleTimeout>().unwrap().0, None);
        assert_eq!(
            "10m".parse::<IdleTimeout>().unwrap().0,
            Some(Duration::from_secs(600))
        );
        assert!("ten".parse::<IdleTimeout>().is_err());
    }
}
