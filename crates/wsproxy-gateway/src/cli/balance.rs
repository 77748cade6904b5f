//! Load balancing flags: several backends per `--route`, how one is
//! chosen, health checks and retries, mapped onto `wsproxy::balance`.
//!
//! A backend in a route's list is `URL[;OPTION...]`, the options after
//! `;` as in nginx's `server` line: `weight=N`, `max-conns=N`, `backup`.
//! The other flags apply to every route; a flag left out keeps the
//! library's default.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderName;
use wsproxy::Upstream;
use wsproxy::admit::Key;
use wsproxy::balance::{
    ActiveHealth, Backend, Backends, ConsistentHash, LeastConn, PassiveHealth, PowerOfTwo, Probe,
    RoundRobin,
};

use super::parse::parse_duration;

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

/// The balancing flags, for every route.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Load balancing (for routes with several backends)")]
pub(crate) struct BalanceArgs {
    /// How a route chooses a backend: round-robin (by weight; the
    /// default), least-conn (fewest open tunnels per weight), p2c (the
    /// lighter of two at random), or consistent hashing on hash:ip,
    /// hash:header=NAME, hash:cookie=NAME, hash:query=NAME or hash:path.
    #[arg(long, value_name = "STRATEGY")]
    pub(crate) balance: Option<Balance>,

    /// With --balance hash:..., no backend takes more than FACTOR times the
    /// average open tunnels, e.g. 1.25 (its keys spill over to their next
    /// choice). Default: no bound.
    #[arg(long, value_name = "FACTOR", value_parser = parse_factor)]
    pub(crate) hash_bound: Option<f64>,

    /// Sticky sessions: the 101 sets cookie NAME to the chosen backend's
    /// id, and a client that sends it back returns to that backend while
    /// it is usable. Default: off.
    #[arg(long, value_name = "NAME", value_parser = parse_cookie_name)]
    pub(crate) sticky_cookie: Option<String>,

    /// Backends tried for one handshake when a connect fails or a backend
    /// hangs up before answering (default: 3).
    #[arg(long, value_name = "N", value_parser = parse_tries)]
    pub(crate) tries: Option<usize>,

    /// Failed handshakes within --fail-timeout that take a backend out of
    /// rotation for --fail-timeout (default: 1; 0 never does). A route with
    /// one backend never takes it out.
    #[arg(long, value_name = "N")]
    pub(crate) max_fails: Option<u32>,

    /// The window of --max-fails, and how long a failing backend is then
    /// skipped (default: 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) fail_timeout: Option<Duration>,

    /// Probe every backend: tcp (a connect), http:/PATH (GET; 2xx or 3xx
    /// passes), http:/PATH=STATUS (only STATUS passes) or ws:/PATH (a
    /// WebSocket handshake). Default: no probes.
    #[arg(long, value_name = "CHECK")]
    pub(crate) health_check: Option<HealthCheck>,

    /// Time between two probes of a backend (default: 5s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "health_check")]
    pub(crate) health_interval: Option<Duration>,

    /// Time a probe may take, connect included (default: 2s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "health_check")]
    pub(crate) health_timeout: Option<Duration>,

    /// Good probes in a row that bring a down backend back (default: 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "health_check")]
    pub(crate) health_rise: Option<u32>,

    /// Failed probes in a row that take a backend down (default: 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "health_check")]
    pub(crate) health_fall: Option<u32>,

    /// Ramp a backend's weight up over DURATION after it comes back up
    /// (not with hash balancing). Default: off.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) slow_start: Option<Duration>,

    /// When a backend goes down (by either check), close its open
    /// WebSockets with Close 1001, hard after GRACE. Default: leave them
    /// open.
    #[arg(long, value_name = "GRACE", value_parser = parse_duration)]
    pub(crate) close_tunnels_when_down: Option<Duration>,
}

impl BalanceArgs {
    /// A flag that makes no sense with the others, if any.
    pub(crate) fn conflict(&self) -> Option<&'static str> {
        let hashing = matches!(self.balance, Some(Balance::Hash(_)));
        (self.hash_bound.is_some() && !hashing)
            .then_some("--hash-bound needs a hash strategy, e.g. --balance hash:ip")
    }

    /// The strategy's name, for the status page and the log.
    pub(crate) fn strategy_name(&self) -> String {
        self.balance
            .as_ref()
            .unwrap_or(&Balance::RoundRobin)
            .to_string()
    }

    /// The backend set of one route.
    pub(crate) fn backends(&self, backends: &[BackendSpec]) -> Backends {
        let mut set = Backends::new(backends.iter().map(BackendSpec::backend));
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
        if let Some(name) = &self.sticky_cookie {
            set = set.sticky_cookie(name);
        }
        if let Some(tries) = self.tries {
            set = set.tries(tries);
        }
        // The probes start when the set goes into its layer.
        if let Some(check) = &self.health_check {
            let mut active = ActiveHealth::new(check.probe());
            if let Some(interval) = self.health_interval {
                active = active.interval(interval);
            }
            if let Some(timeout) = self.health_timeout {
                active = active.timeout(timeout);
            }
            if let Some(rise) = self.health_rise {
                active = active.rise(rise);
            }
            if let Some(fall) = self.health_fall {
                active = active.fall(fall);
            }
            set = set.active_health(active);
        }
        set
    }
}

/// A load bound: a finite number of at least 1.
fn parse_factor(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 1.0)
        .ok_or_else(|| format!("invalid factor '{s}': a number of at least 1, e.g. 1.25"))
}

/// A try count of at least 1.
fn parse_tries(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| format!("invalid tries '{s}': a whole number from 1"))
}

/// A cookie name: an HTTP token (RFC 6265).
fn parse_cookie_name(s: &str) -> Result<String, String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !s.is_empty() && s.chars().all(token) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid cookie name '{s}': use letters, digits and !#$%&'*+-.^_`|~"
        ))
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
    fn numbers_and_names_parse() {
        assert_eq!(parse_factor("1.25"), Ok(1.25));
        assert_eq!(parse_factor("1"), Ok(1.0));
        for bad in ["0.5", "NaN", "inf", "lots"] {
            assert!(parse_factor(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_tries("2"), Ok(2));
        assert!(parse_tries("0").is_err());
        assert_eq!(
            parse_cookie_name("wsgate_backend"),
            Ok("wsgate_backend".into())
        );
        assert!(parse_cookie_name("a b").is_err());
        assert!(parse_cookie_name("a=b").is_err());
        assert!(parse_cookie_name("").is_err());
    }

    #[test]
    fn the_hash_bound_needs_a_hash() {
        use clap::Parser;
        let args = |extra: &[&str]| {
            crate::cli::Args::try_parse_from(
                ["wsgate", "--route", "/=ws://127.0.0.1:1"]
                    .iter()
                    .chain(extra),
            )
            .unwrap()
            .balance
        };
        assert!(args(&["--hash-bound", "1.5"]).conflict().is_some());
        assert!(
            args(&["--hash-bound", "1.5", "--balance", "least-conn"])
                .conflict()
                .is_some()
        );
        assert!(
            args(&["--hash-bound", "1.5", "--balance", "hash:path"])
                .conflict()
                .is_none()
        );
        assert_eq!(args(&[]).strategy_name(), "round-robin");
    }

    #[test]
    fn the_set_gets_every_backend_and_its_options() {
        let specs = [
            backend("ws://127.0.0.1:1/;weight=3"),
            backend("ws://127.0.0.1:2/;backup"),
        ];
        use clap::Parser;
        let args = crate::cli::Args::try_parse_from(["wsgate", "--balance", "least-conn"])
            .unwrap()
            .balance;
        let status = args.backends(&specs).status();
        let seen: Vec<_> = status
            .iter()
            .map(|s| (s.upstream.port(), s.weight, s.backup, s.up))
            .collect();
        assert_eq!(seen, [(1, 3, false, true), (2, 1, true, true)]);
    }
}
