//! The load balancing flags: each one given sets its key in every
//! upstream (`wsgate.toml`'s `[upstreams.NAME]`), over what the file says.

use std::time::Duration;

use crate::config::upstream::{Balance, Health, HealthCheck, Sticky, UpstreamConfig};
use crate::config::value;

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
    #[arg(long, value_name = "FACTOR", value_parser = value::parse_factor)]
    pub(crate) hash_bound: Option<f64>,

    /// Sticky sessions: the 101 sets cookie NAME to the chosen backend's
    /// id, and a client that sends it back returns to that backend while
    /// it is usable. Default: off.
    #[arg(long, value_name = "NAME", value_parser = value::parse_cookie_name)]
    pub(crate) sticky_cookie: Option<String>,

    /// The key of the sticky cookie's value; give every instance the same
    /// one (and keep it across restarts) so that they agree. Default: a
    /// random one per process.
    #[arg(long, value_name = "SECRET", requires = "sticky_cookie")]
    pub(crate) sticky_secret: Option<String>,

    /// Backends tried for one handshake when a connect fails or a backend
    /// hangs up before answering (default: 3).
    #[arg(long, value_name = "N", value_parser = value::parse_tries)]
    pub(crate) tries: Option<usize>,

    /// Failed handshakes within --fail-timeout that take a backend out of
    /// rotation for --fail-timeout (default: 1; 0 never does). A route with
    /// one backend never takes it out.
    #[arg(long, value_name = "N")]
    pub(crate) max_fails: Option<u32>,

    /// The window of --max-fails, and how long a failing backend is then
    /// skipped (default: 10s).
    #[arg(long, value_name = "DURATION", value_parser = value::parse_duration)]
    pub(crate) fail_timeout: Option<Duration>,

    /// Probe every backend: tcp (a connect), http:/PATH (GET; 2xx or 3xx
    /// passes), http:/PATH=STATUS (only STATUS passes) or ws:/PATH (a
    /// WebSocket handshake). Default: no probes.
    #[arg(long, value_name = "CHECK")]
    pub(crate) health_check: Option<HealthCheck>,

    /// Time between two probes of a backend (default: 5s).
    #[arg(long, value_name = "DURATION", value_parser = value::parse_duration, requires = "health_check")]
    pub(crate) health_interval: Option<Duration>,

    /// Time a probe may take, connect included (default: 2s).
    #[arg(long, value_name = "DURATION", value_parser = value::parse_duration, requires = "health_check")]
    pub(crate) health_timeout: Option<Duration>,

    /// Good probes in a row that bring a down backend back (default: 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "health_check")]
    pub(crate) health_rise: Option<u32>,

    /// Failed probes in a row that take a backend down (default: 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), requires = "health_check")]
    pub(crate) health_fall: Option<u32>,

    /// Ramp a backend's weight up over DURATION after it comes back up
    /// (not with hash balancing). Default: off.
    #[arg(long, value_name = "DURATION", value_parser = value::parse_duration)]
    pub(crate) slow_start: Option<Duration>,

    /// When a backend goes down (by either check), close its open
    /// WebSockets with Close 1001, hard after GRACE. Default: leave them
    /// open.
    #[arg(long, value_name = "GRACE", value_parser = value::parse_duration)]
    pub(crate) close_tunnels_when_down: Option<Duration>,
}

impl BalanceArgs {
    /// Set what was given in `upstream`.
    pub(crate) fn apply(&self, upstream: &mut UpstreamConfig) {
        if let Some(balance) = &self.balance {
            upstream.balance = Some(balance.clone());
        }
        if let Some(bound) = self.hash_bound {
            upstream.hash_bound = Some(bound);
        }
        if let Some(cookie) = &self.sticky_cookie {
            upstream.sticky = Some(Sticky {
                cookie: cookie.clone(),
                secret: self.sticky_secret.clone(),
            });
        }
        if let Some(tries) = self.tries {
            upstream.tries = Some(tries);
        }
        if let Some(max) = self.max_fails {
            upstream.max_fails = Some(max);
        }
        if let Some(timeout) = self.fail_timeout {
            upstream.fail_timeout = Some(timeout);
        }
        if let Some(check) = &self.health_check {
            upstream.health = Some(Health {
                check: check.clone(),
                interval: None,
                timeout: None,
                rise: None,
                fall: None,
            });
        }
        if let Some(health) = &mut upstream.health {
            if self.health_interval.is_some() {
                health.interval = self.health_interval;
            }
            if self.health_timeout.is_some() {
                health.timeout = self.health_timeout;
            }
            if self.health_rise.is_some() {
                health.rise = self.health_rise;
            }
            if self.health_fall.is_some() {
                health.fall = self.health_fall;
            }
        }
        if let Some(period) = self.slow_start {
            upstream.slow_start = Some(period);
        }
        if let Some(grace) = self.close_tunnels_when_down {
            upstream.close_tunnels_when_down = Some(grace);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::upstream::BackendSpec;

    fn flags(extra: &[&str]) -> BalanceArgs {
        crate::cli::Args::try_parse_from(["wsgate"].iter().chain(extra))
            .unwrap()
            .balance
    }

    #[test]
    fn flags_set_their_keys_over_the_file() {
        let backend: BackendSpec = "ws://127.0.0.1:1/".parse().unwrap();
        let mut upstream = UpstreamConfig {
            balance: Some(Balance::PowerOfTwo),
            tries: Some(5),
            ..UpstreamConfig::new(vec![backend])
        };
        let file = upstream.clone();
        flags(&[]).apply(&mut upstream);
        assert_eq!(upstream, file, "no flag, no change");
        flags(&[
            "--balance",
            "least-conn",
            "--health-check",
            "tcp",
            "--health-rise",
            "4",
            "--sticky-cookie",
            "srv",
            "--sticky-secret",
            "s3",
        ])
        .apply(&mut upstream);
        assert_eq!(upstream.balance, Some(Balance::LeastConn));
        assert_eq!(upstream.tries, Some(5), "kept from the file");
        let health = upstream.health.as_ref().unwrap();
        assert_eq!((&health.check, health.rise), (&HealthCheck::Tcp, Some(4)));
        assert_eq!(upstream.sticky.unwrap().secret.as_deref(), Some("s3"));
    }
}
