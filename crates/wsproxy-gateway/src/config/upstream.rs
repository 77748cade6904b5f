//! Upstreams: a route's backends, and how one is chosen, with health
//! checks and retries, mapped onto `wsproxy::balance`.
//!
//! A backend is `URL[;OPTION...]`, the options after `;` as in nginx's
//! `server` line (`weight=N`, `max-conns=N`, `backup`), or a table with
//! the same keys.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderName;
use serde::Deserialize;
use wsproxy::Upstream;
use wsproxy::admit::Key;
use wsproxy::balance::{
    ActiveHealth, Backend, Backends, ConsistentHash, LeastConn, PassiveHealth, PowerOfTwo, Probe,
    RoundRobin,
};

use super::value;

/// One backend of a `--route` list: `URL[;weight=N][;max-conns=N][;backup]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BackendSpec {
    /// Its URL.
    pub(crate) upstream: Upstream,
    /// `weight=N`: its share of new tunnels (library default: 1).
    pub(crate) weight: Option<u32>,
    /// `max-conns=N`: at most this many open tunnels (default: no cap).
    pub(crate) max_conns: Option<usize>,
    /// `backup`: used only while no primary backend is usable.
    pub(crate) backup: bool,
}

impl BackendSpec {
    /// The library's backend.
    pub(crate) fn backend(&self) -> Backend {
        let mut backend = Backend::new(self.upstream.clone()).backup(self.backup);
        if let Some(weight) = self.weight {
            backend = backend.weight(weight);
        }
        if let Some(max) = self.max_conns {
            backend = backend.max_conns(max);
        }
        backend
    }
}

impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(item: &str) -> Result<Self, Self::Err> {
        let mut parts = item.split(';');
        let url = parts.next().unwrap_or_default().trim();
        if url.is_empty() {
            return Err(format!(
                "a backend URL is missing in '{item}'; list backends as URL[;OPTION...],URL..."
            ));
        }
        let mut backend = Self {
            upstream: url.parse().map_err(|e| format!("{e}"))?,
            weight: None,
            max_conns: None,
            backup: false,
        };
        for option in parts {
            let (name, value) = match option.trim().split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (option.trim(), None),
            };
            let count = |value: Option<&str>| -> Result<u64, String> {
                value
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| {
                        format!("invalid option '{option}' in '{item}': {name}=N takes a whole number from 1")
                    })
            };
            match (name, value) {
                ("weight", _) => {
                    let weight = count(value)?;
                    backend.weight = Some(u32::try_from(weight).map_err(|_| {
                        format!("invalid option '{option}' in '{item}': the weight is too large")
                    })?);
                }
                ("max-conns", _) => {
                    backend.max_conns = Some(usize::try_from(count(value)?).unwrap_or(usize::MAX));
                }
                ("backup", None) => backend.backup = true,
                ("backup", Some(_)) => {
                    return Err(format!(
                        "invalid option '{option}' in '{item}': backup takes no value"
                    ));
                }
                _ => {
                    return Err(format!(
                        "unknown backend option '{option}' in '{item}'; use weight=N, max-conns=N or backup"
                    ));
                }
            }
        }
        Ok(backend)
    }
}

/// How a route chooses a backend (`--balance`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Balance {
    /// Smooth weighted round-robin.
    RoundRobin,
    /// Fewest open tunnels relative to weight.
    LeastConn,
    /// The lighter of two at random.
    PowerOfTwo,
    /// Consistent hashing on a key of the handshake.
    Hash(HashOn),
}

/// What `--balance hash:...` hashes on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HashOn {
    /// The client's IP address (through `--trusted-proxy` networks).
    ClientIp,
    /// A request header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
    /// The request path.
    Path,
}

impl FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!(
                "invalid balance '{s}'; use round-robin, least-conn, p2c, hash:ip, \
                 hash:header=NAME, hash:cookie=NAME, hash:query=NAME or hash:path"
            )
        };
        let on = match s {
            "round-robin" => return Ok(Self::RoundRobin),
            "least-conn" => return Ok(Self::LeastConn),
            "p2c" => return Ok(Self::PowerOfTwo),
            "hash:ip" => HashOn::ClientIp,
            "hash:path" => HashOn::Path,
            _ => {
                let rest = s.strip_prefix("hash:").ok_or_else(invalid)?;
                let (what, name) = rest.split_once('=').ok_or_else(invalid)?;
                if name.is_empty() {
                    return Err(format!("invalid balance '{s}': the {what} name is empty"));
                }
                match what {
                    "header" => HashOn::Header(HeaderName::from_str(name).map_err(|_| {
                        format!("invalid balance '{s}': '{name}' is not a valid header name")
                    })?),
                    "cookie" => HashOn::Cookie(name.to_owned()),
                    "query" => HashOn::Query(name.to_owned()),
                    _ => return Err(invalid()),
                }
            }
        };
        Ok(Self::Hash(on))
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RoundRobin => f.write_str("round-robin"),
            Self::LeastConn => f.write_str("least-conn"),
            Self::PowerOfTwo => f.write_str("p2c"),
            Self::Hash(HashOn::ClientIp) => f.write_str("hash:ip"),
            Self::Hash(HashOn::Header(name)) => write!(f, "hash:header={name}"),
            Self::Hash(HashOn::Cookie(name)) => write!(f, "hash:cookie={name}"),
            Self::Hash(HashOn::Query(name)) => write!(f, "hash:query={name}"),
            Self::Hash(HashOn::Path) => f.write_str("hash:path"),
        }
    }
}

impl HashOn {
    /// The library's key (a client IP is the one `ResolveClient` found
    /// behind `--trusted-proxy` networks).
    fn key(&self) -> Key {
        match self {
            Self::ClientIp => Key::client_ip(),
            Self::Header(name) => Key::header(name.clone()),
            Self::Cookie(name) => Key::cookie(name),
            Self::Query(name) => Key::query(name),
            Self::Path => Key::path(),
        }
    }
}

/// An active health check (`--health-check`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HealthCheck {
    /// `tcp`: a TCP connect.
    Tcp,
    /// `http:/PATH[=STATUS]`: an HTTP GET, passing on 2xx/3xx or on
    /// exactly `STATUS`.
    Http {
        /// The path to GET.
        path: String,
        /// The one status that passes.
        status: Option<u16>,
    },
    /// `ws:/PATH`: a WebSocket opening handshake.
    WebSocket {
        /// The path to hand-shake on.
        path: String,
    },
}

impl FromStr for HealthCheck {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = |path: &str| {
            if path.starts_with('/') {
                Ok(path.to_owned())
            } else {
                Err(format!(
                    "invalid health check '{s}': the path must start with '/'"
                ))
            }
        };
        if s == "tcp" {
            Ok(Self::Tcp)
        } else if let Some(rest) = s.strip_prefix("http:") {
            // A trailing `=DIGITS` is the status; any other `=` is the path's.
            match rest.rsplit_once('=') {
                Some((p, status))
                    if !status.is_empty() && status.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    let status = status
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or_else(|| {
                            format!("invalid health check '{s}': the status must be 100 to 599")
                        })?;
                    Ok(Self::Http {
                        path: path(p)?,
                        status: Some(status),
                    })
                }
                _ => Ok(Self::Http {
                    path: path(rest)?,
                    status: None,
                }),
            }
        } else if let Some(rest) = s.strip_prefix("ws:") {
            Ok(Self::WebSocket { path: path(rest)? })
        } else {
            Err(format!(
                "invalid health check '{s}'; use tcp, http:/PATH, http:/PATH=STATUS or ws:/PATH"
            ))
        }
    }
}

impl HealthCheck {
    fn probe(&self) -> Probe {
        match self {
            Self::Tcp => Probe::tcp(),
            Self::Http { path, status } => {
                let probe = Probe::http(path.as_str());
                match status {
                    Some(status) => probe.expect_status(*status),
                    None => probe,
                }
            }
            Self::WebSocket { path } => Probe::websocket(path.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for BackendSpec {
    /// `"URL[;OPTION...]"` as on the command line, or a table
    /// `{ url = "...", weight = N, max_conns = N, backup = true }`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(deserialize_with = "value::parsed")]
            url: Upstream,
            #[serde(default, deserialize_with = "value::some_count")]
            weight: Option<u32>,
            #[serde(default, deserialize_with = "value::some_count")]
            max_conns: Option<usize>,
            #[serde(default)]
            backup: bool,
        }
        struct Spec;
        impl<'de> serde::de::Visitor<'de> for Spec {
            type Value = BackendSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a backend: \"ws://HOST:PORT/PATH[;OPTION...]\" or a table with url")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BackendSpec, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BackendSpec, A::Error> {
                let table = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(BackendSpec {
                    upstream: table.url,
                    weight: table.weight,
                    max_conns: table.max_conns,
                    backup: table.backup,
                })
            }
        }
        deserializer.deserialize_any(Spec)
    }
}

/// `backends`: a list of URLs, or a DNS name to follow
/// (`{ dns = "chat.internal:9002", interval = "5s" }`, or `srv = NAME`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BackendList {
    /// Listed.
    Static(Vec<BackendSpec>),
    /// Found in DNS.
    Dns(DnsBackends),
}

/// `backends = { dns = "HOST:PORT" | srv = "NAME", interval, path, nameservers }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsBackends {
    /// A name and port: every A and AAAA address is a backend.
    #[serde(default)]
    pub(crate) dns: Option<String>,
    /// An SRV name: its targets, ports, weights and priorities.
    #[serde(default)]
    pub(crate) srv: Option<String>,
    /// Look up again this often (default: the records' TTL).
    #[serde(default, deserialize_with = "value::some_duration")]
    pub(crate) interval: Option<Duration>,
    /// The path of the backends' URLs (default `/`).
    #[serde(default)]
    pub(crate) path: Option<String>,
    /// Name servers to ask (default: the system's).
    #[serde(default, deserialize_with = "value::parsed_list")]
    pub(crate) nameservers: Vec<std::net::SocketAddr>,
}

impl DnsBackends {
    /// The discovery this configures, or why not.
    pub(crate) fn discover(&self) -> Result<wsproxy::balance::DnsDiscover, String> {
        use wsproxy::balance::DnsDiscover;
        let mut discover = match (&self.dns, &self.srv) {
            (Some(host), None) => {
                let (name, port) = host
                    .rsplit_once(':')
                    .and_then(|(name, port)| Some((name, port.parse::<u16>().ok()?)))
                    .filter(|(name, _)| !name.is_empty())
                    .ok_or_else(|| format!("dns '{host}': a HOST:PORT"))?;
                DnsDiscover::host(name, port)
            }
            (None, Some(name)) if !name.is_empty() => DnsDiscover::srv(name),
            _ => return Err("one of dns = \"HOST:PORT\" or srv = \"NAME\"".into()),
        };
        if let Some(every) = self.interval {
            discover = discover.interval(every);
        }
        if let Some(path) = &self.path {
            discover = discover.path(path);
            if !discover.path_is_valid() {
                return Err(format!("path '{path}': not a URL path"));
            }
        }
        if !self.nameservers.is_empty() {
            discover = discover.nameservers(self.nameservers.iter().copied());
        }
        Ok(discover)
    }
}

impl BackendList {
    /// The DNS name followed, if any.
    pub(crate) fn dns(&self) -> Option<&DnsBackends> {
        match self {
            BackendList::Dns(dns) => Some(dns),
            BackendList::Static(_) => None,
        }
    }
}

impl std::ops::Deref for BackendList {
    type Target = [BackendSpec];

    /// The listed backends (none when found in DNS).
    fn deref(&self) -> &[BackendSpec] {
        match self {
            BackendList::Static(list) => list,
            BackendList::Dns(_) => &[],
        }
    }
}

impl From<Vec<BackendSpec>> for BackendList {
    fn from(list: Vec<BackendSpec>) -> Self {
        BackendList::Static(list)
    }
}

impl<'de> Deserialize<'de> for BackendList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> serde::de::Visitor<'de> for List {
            type Value = BackendList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a list of backends, or a table { dns = \"HOST:PORT\" } or { srv = \"NAME\" }",
                )
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<BackendList, A::Error> {
                Vec::<BackendSpec>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(BackendList::Static)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BackendList, A::Error> {
                DnsBackends::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(BackendList::Dns)
            }
        }
        deserializer.deserialize_any(List)
    }
}

/// An upstream (`[upstreams.NAME]`): its backends and how a handshake
/// chooses one. A key left out keeps the library's default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamConfig {
    /// Where its handshakes go; a URL listed twice is an error. Or a DNS
    /// name to follow.
    pub(crate) backends: BackendList,
    /// `round-robin` (by weight; the default), `least-conn`, `p2c`, or
    /// consistent hashing: `hash:ip`, `hash:header=NAME`,
    /// `hash:cookie=NAME`, `hash:query=NAME`, `hash:path`.
    #[serde(default, deserialize_with = "value::some_parsed")]
    pub(crate) balance: Option<Balance>,
    /// With a hash: no backend takes more than this many times the
    /// average open tunnels.
    #[serde(default, deserialize_with = "value::some_factor")]
    pub(crate) hash_bound: Option<f64>,
    /// Sticky sessions by cookie.
    #[serde(default)]
    pub(crate) sticky: Option<Sticky>,
    /// Backends tried for one handshake (default 3).
    #[serde(default, deserialize_with = "value::some_count")]
    pub(crate) tries: Option<usize>,
    /// Failed handshakes within `fail_timeout` that take a backend out.
    #[serde(default)]
    pub(crate) max_fails: Option<u32>,
    /// The window of `max_fails`, and how long a failing backend is out.
    #[serde(default, deserialize_with = "value::some_duration")]
    pub(crate) fail_timeout: Option<Duration>,
    /// Active health checks.
    #[serde(default)]
    pub(crate) health: Option<Health>,
    /// Ramp a backend's weight up over this long after it comes back.
    #[serde(default, deserialize_with = "value::some_duration")]
    pub(crate) slow_start: Option<Duration>,
    /// Close the tunnels of a backend that goes down, or is removed by a
    /// reload, with Close 1001, hard after this grace. Without it they
    /// stay open (a removed backend is drained).
    #[serde(default, deserialize_with = "value::some_duration")]
    pub(crate) close_tunnels_when_down: Option<Duration>,
}

/// `sticky = { cookie = "NAME", secret = "..." }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sticky {
    /// The cookie the 101 sets to the chosen backend's id.
    #[serde(deserialize_with = "value::cookie_name")]
    pub(crate) cookie: String,
    /// The key of the cookie's value: give the same one to every instance
    /// (and keep it across restarts) so that they agree on it. Without
    /// it, each process picks a random one.
    #[serde(default)]
    pub(crate) secret: Option<String>,
}

/// `health = { check = "ws:/", interval = "5s", timeout = "2s", rise = 2, fall = 3 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Health {
    /// `tcp`, `http:/PATH`, `http:/PATH=STATUS` or `ws:/PATH`.
    #[serde(deserialize_with = "value::parsed")]
    pub(crate) check: HealthCheck,
    /// Time between two probes of a backend (default 5s).
    #[serde(default, deserialize_with = "value::some_duration")]
    pub(crate) interval: Option<Duration>,
    /// Time a probe may take (default 2s).
    #[serde(default, deserialize_with = "value::some_duration")]
    pub(crate) timeout: Option<Duration>,
    /// Good probes in a row that bring a backend back (default 2).
    #[serde(default, deserialize_with = "value::some_count")]
    pub(crate) rise: Option<u32>,
    /// Failed probes in a row that take it down (default 3).
    #[serde(default, deserialize_with = "value::some_count")]
    pub(crate) fall: Option<u32>,
}

impl UpstreamConfig {
    /// `backends` with every setting at its default.
    pub(crate) fn new(backends: Vec<BackendSpec>) -> Self {
        Self {
            backends: BackendList::Static(backends),
            balance: None,
            hash_bound: None,
            sticky: None,
            tries: None,
            max_fails: None,
            fail_timeout: None,
            health: None,
            slow_start: None,
            close_tunnels_when_down: None,
        }
    }

    /// A setting that makes no sense with the others, if any, named as
    /// the flags name it (`flags`) or as the file's keys.
    pub(crate) fn conflict(&self, flags: bool) -> Option<String> {
        if self.hash_bound.is_some() && !matches!(self.balance, Some(Balance::Hash(_))) {
            return Some(if flags {
                "--hash-bound needs a hash strategy, e.g. --balance hash:ip".into()
            } else {
                "hash_bound needs a hash balance, e.g. balance = \"hash:ip\"".into()
            });
        }
        let mut seen = std::collections::HashSet::new();
        self.backends
            .iter()
            .map(|b| b.upstream.to_string())
            .find(|url| !seen.insert(url.clone()))
            .map(|url| format!("the backend '{url}' is listed twice"))
    }

    /// Whether `other` differs only in its listed backends: a reload then
    /// keeps the set (its tunnels, load and health) and changes its
    /// members. A DNS name changed, or a list for a name, is a new set.
    pub(crate) fn same_settings(&self, other: &Self) -> bool {
        let settings = |upstream: &Self| Self {
            backends: match &upstream.backends {
                BackendList::Dns(dns) => BackendList::Dns(dns.clone()),
                BackendList::Static(_) => BackendList::Static(Vec::new()),
            },
            ..upstream.clone()
        };
        settings(self) == settings(other)
    }

    /// The backend URLs, comma-separated, for the log.
    pub(crate) fn describe(&self) -> String {
        let urls: Vec<String> = self
            .backends
            .iter()
            .map(|b| b.upstream.to_string())
            .collect();
        urls.join(",")
    }

    /// The strategy's name, for the status page and the log.
    pub(crate) fn strategy_name(&self) -> String {
        self.balance
            .as_ref()
            .unwrap_or(&Balance::RoundRobin)
            .to_string()
    }

    /// The library's backend set (its probes start when it goes into a
    /// layer).
    pub(crate) fn set(&self) -> Backends {
        let mut set = Backends::new(self.backends.iter().map(BackendSpec::backend));
        // (A DNS name is followed once the set is complete: `app::set`.)
        set = match &self.balance {
            None => set,
            Some(Balance::RoundRobin) => set.strategy(RoundRobin::new()),
            Some(Balance::LeastConn) => set.strategy(LeastConn::new()),
            Some(Balance::PowerOfTwo) => set.strategy(PowerOfTwo::new()),
            Some(Balance::Hash(on)) => {
                let hash = ConsistentHash::new(on.key());
                set.strategy(match self.hash_bound {
                    Some(factor) => hash.bounded_load(factor),
                    None => hash,
                })
            }
        };
        if self.max_fails.is_some() || self.fail_timeout.is_some() {
            let mut passive = PassiveHealth::new();
            if let Some(max) = self.max_fails {
                passive = passive.max_fails(max);
            }
            if let Some(timeout) = self.fail_timeout {
                passive = passive.fail_timeout(timeout);
            }
            set = set.passive_health(passive);
        }
        if let Some(period) = self.slow_start {
            set = set.slow_start(period);
        }
        if let Some(grace) = self.close_tunnels_when_down {
            set = set.close_tunnels_when_down(Some(grace));
        }
        if let Some(sticky) = &self.sticky {
            set = set.sticky_cookie(&sticky.cookie);
            if let Some(secret) = &sticky.secret {
                set = set.sticky_secret(secret);
            }
        }
        if let Some(tries) = self.tries {
            set = set.tries(tries);
        }
        if let Some(health) = &self.health {
            let mut active = ActiveHealth::new(health.check.probe());
            if let Some(interval) = health.interval {
                active = active.interval(interval);
            }
            if let Some(timeout) = health.timeout {
                active = active.timeout(timeout);
            }
            if let Some(rise) = health.rise {
                active = active.rise(rise);
            }
            if let Some(fall) = health.fall {
                active = active.fall(fall);
            }
            set = set.active_health(active);
        }
        set
    }

    /// Bring `set` (built from `old`) to this upstream's backends: new
    /// ones added, changed ones updated, gone ones drained (their tunnels
    /// stay) or, with `close_tunnels_when_down`, removed and their
    /// tunnels closed.
    pub(crate) fn update(&self, old: &Self, set: &Backends) {
        for backend in self.backends.iter() {
            if !old.backends.contains(backend) {
                set.insert(backend.backend());
            }
        }
        for gone in old
            .backends
            .iter()
            .filter(|b| self.backends.iter().all(|n| n.upstream != b.upstream))
        {
            let id = gone.backend().id();
            if self.close_tunnels_when_down.is_some() {
                set.remove(id);
            } else {
                set.drain(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(s: &str) -> BackendSpec {
        s.parse().unwrap()
    }

    #[test]
    fn backend_options_parse() {
        let plain = backend("ws://127.0.0.1:1/");
        assert_eq!(
            (plain.weight, plain.max_conns, plain.backup),
            (None, None, false)
        );
        let all = backend("ws://127.0.0.1:1/x; weight=3 ;max-conns=100;backup");
        assert_eq!(all.upstream.port(), 1);
        assert_eq!(
            (all.weight, all.max_conns, all.backup),
            (Some(3), Some(100), true)
        );
        let error = |s: &str| s.parse::<BackendSpec>().unwrap_err();
        assert_eq!(
            error("ws://a:1/;max_conns=5"),
            "unknown backend option 'max_conns=5' in 'ws://a:1/;max_conns=5'; \
             use weight=N, max-conns=N or backup"
        );
        assert!(error("ws://a;weight=0").contains("from 1"));
        assert!(error("ws://a;weight").contains("from 1"));
        assert!(error("ws://a;weight=x").contains("'weight=x' in 'ws://a;weight=x'"));
        assert!(error("ws://a;weight=99999999999").contains("too large"));
        assert!(error("ws://a;max-conns=0").contains("from 1"));
        assert!(error("ws://a;backup=yes").contains("backup takes no value"));
        assert!(error("ws://a;").contains("unknown backend option ''"));
        assert!(error("").contains("a backend URL is missing"));
        assert!(error(";weight=2").contains("a backend URL is missing"));
        assert!(error("http://a;weight=2").contains("the scheme must be ws://"));
    }

    #[test]
    fn balances_parse_and_print() {
        for text in [
            "round-robin",
            "least-conn",
            "p2c",
            "hash:ip",
            "hash:header=x-room",
            "hash:cookie=session",
            "hash:query=room",
            "hash:path",
        ] {
            let balance: Balance = text.parse().unwrap();
            assert_eq!(balance.to_string(), text);
        }
        assert_eq!(
            "hash:header=X-Room".parse::<Balance>(),
            Ok(Balance::Hash(HashOn::Header(HeaderName::from_static(
                "x-room"
            ))))
        );
        for bad in ["random", "hash", "hash:", "hash:ip=1", "hash:body=x", ""] {
            let error = bad.parse::<Balance>().unwrap_err();
            assert!(
                error.starts_with(&format!("invalid balance '{bad}'; use")),
                "{error}"
            );
        }
        assert!(
            "hash:header=a b"
                .parse::<Balance>()
                .unwrap_err()
                .contains("'a b' is not a valid header name")
        );
        assert!(
            "hash:cookie="
                .parse::<Balance>()
                .unwrap_err()
                .contains("the cookie name is empty")
        );
    }

    #[test]
    fn health_checks_parse() {
        assert_eq!("tcp".parse(), Ok(HealthCheck::Tcp));
        assert_eq!(
            "http:/healthz".parse(),
            Ok(HealthCheck::Http {
                path: "/healthz".into(),
                status: None
            })
        );
        assert_eq!(
            "http:/healthz=204".parse(),
            Ok(HealthCheck::Http {
                path: "/healthz".into(),
                status: Some(204)
            })
        );
        assert_eq!(
            "http:/h?probe=deep".parse(),
            Ok(HealthCheck::Http {
                path: "/h?probe=deep".into(),
                status: None
            })
        );
        assert_eq!(
            "ws:/".parse(),
            Ok(HealthCheck::WebSocket { path: "/".into() })
        );
        let error = |s: &str| s.parse::<HealthCheck>().unwrap_err();
        assert!(error("http:healthz").contains("must start with '/'"));
        assert!(error("ws:").contains("must start with '/'"));
        assert!(error("http:/h=999").contains("100 to 599"));
        assert!(error("udp").contains("use tcp, http:/PATH"));
    }

    #[test]
    fn the_set_gets_every_backend_and_its_options() {
        let specs = [
            backend("ws://127.0.0.1:1/;weight=3"),
            backend("ws://127.0.0.1:2/;backup"),
        ];
        let upstream = UpstreamConfig {
            balance: Some(Balance::LeastConn),
            ..UpstreamConfig::new(specs.to_vec())
        };
        let status = upstream.set().status();
        let seen: Vec<_> = status
            .iter()
            .map(|s| (s.upstream.port(), s.weight, s.backup, s.up))
            .collect();
        assert_eq!(seen, [(1, 3, false, true), (2, 1, true, true)]);
    }
}
