//! [`DnsDiscover`]: a backend set that follows a DNS name (A/AAAA, or SRV
//! for ports and weights), as Kubernetes headless services and Consul DNS
//! present a scaled deployment.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::Stream;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use tower::discover::Change;

use super::backend::Backend;
use super::set::Backends;

/// Shortest and longest wait between two lookups when following TTLs.
const MIN_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Backends found in DNS, looked up again on an interval or when the
/// records' TTL runs out (feature `dns`, the `hickory-resolver` crate).
///
/// - [`host`](Self::host): every A and AAAA address of a name, on one
///   port (a Kubernetes headless service).
/// - [`srv`](Self::srv): the SRV records of a name: each target's
///   addresses, on the record's port, with its weight; records of a
///   priority above the lowest are backups (Consul, Kubernetes named
///   ports).
///
/// An address that appears becomes a backend; one that disappears is
/// drained as [`Backends::drain`] does: no new tunnels, its open ones left
/// to end, and it leaves the set with the last of them (back in DNS before
/// that, it is taken up again with its counts). A lookup that fails keeps what the
/// last one found (logged at WARN); an answer that the name has no
/// records (NXDOMAIN, or none of the type) empties the set.
///
/// By default the system's resolver configuration (`/etc/resolv.conf`);
/// [`nameservers`](Self::nameservers) names others.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use wsproxy::balance::{Backends, DnsDiscover};
///
/// # async fn run() {
/// let backends = Backends::new([]);
/// DnsDiscover::host("chat.default.svc.cluster.local", 9002)
///     .interval(Duration::from_secs(5))
///     .follow(&backends);
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct DnsDiscover {
    target: Target,
    path: String,
    interval: Option<Duration>,
    nameservers: Vec<SocketAddr>,
}

#[derive(Clone, Debug)]
enum Target {
    Host(String, u16),
    Srv(String),
}

impl DnsDiscover {
    /// Every A and AAAA address of `name`, each a backend on `port`.
    pub fn host(name: &str, port: u16) -> Self {
        Self::new(Target::Host(name.to_owned(), port))
    }

    /// The targets of the SRV records of `name` (e.g.
    /// `_chat._tcp.chat.service.consul`), on their ports and weights.
    pub fn srv(name: &str) -> Self {
        Self::new(Target::Srv(name.to_owned()))
    }

    fn new(target: Target) -> Self {
        Self {
            target,
            path: "/".to_owned(),
            interval: None,
            nameservers: Vec::new(),
        }
    }

    /// The path of the backends' URLs (`ws://ADDRESS:PORT/PATH`; default `/`).
    pub fn path(mut self, path: &str) -> Self {
        self.path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        self
    }

    /// Look up again this often (default: when the records' TTL runs out,
    /// between 1 s and 5 minutes).
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = Some(every.max(Duration::from_millis(100)));
        self
    }

    /// Ask these name servers (UDP, then TCP) instead of the system's.
    pub fn nameservers(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.nameservers = servers.into_iter().collect();
        self
    }

    fn resolver(&self) -> Result<TokioResolver, ResolveError> {
        let provider = TokioConnectionProvider::default();
        let mut builder = if self.nameservers.is_empty() {
            TokioResolver::builder(provider)?
        } else {
            let servers: Vec<NameServerConfig> = self
                .nameservers
                .iter()
                .flat_map(|addr| {
                    [
                        NameServerConfig::new(*addr, Protocol::Udp),
                        NameServerConfig::new(*addr, Protocol::Tcp),
                    ]
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                provider,
            )
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Each lookup asks: what changed is the point.
        options.cache_size = 0;
        Ok(builder.build())
    }

    /// The backends, as a [`Discover`](tower::discover::Discover) stream
    /// of changes keyed by address, for [`Backends::discover`] or any
    /// other follower.
    pub fn changes(self) -> impl Stream<Item = Result<Change<SocketAddr, Backend>, Infallible>> {
        struct State {
            discover: DnsDiscover,
            resolver: Option<TokioResolver>,
            known: BTreeMap<SocketAddr, (u32, bool)>,
            pending: Vec<Change<SocketAddr, Backend>>,
            next: Option<tokio::time::Instant>,
        }
        let state = State {
            discover: self,
            resolver: None,
            known: BTreeMap::new(),
            pending: Vec::new(),
            next: None,
        };
        futures_util::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(change) = state.pending.pop() {
                    return Some((Ok(change), state));
                }
                if let Some(at) = state.next {
                    tokio::time::sleep_until(at).await;
                }
                if state.resolver.is_none() {
                    match state.discover.resolver() {
                        Ok(resolver) => state.resolver = Some(resolver),
                        Err(error) => {
                            tracing::warn!(%error, "DNS discovery: no resolver; trying again");
                            state.next = Some(tokio::time::Instant::now() + MAX_WAIT / 10);
                            continue;
                        }
                    }
                }
                let resolver = state.resolver.as_ref().expect("set above");
                let (found, valid_until) = match state.discover.look_up(resolver).await {
                    Ok(found) => found,
                    Err(error) => {
                        tracing::warn!(
                            target = ?state.discover.target,
                            %error,
                            "DNS discovery: lookup failed; the backends found before are kept"
                        );
                        (None, None)
                    }
                };
                let wait = state.discover.interval.unwrap_or_else(|| {
                    valid_until
                        .map(|until| until.saturating_duration_since(Instant::now()))
                        .unwrap_or(MIN_WAIT * 5)
                        .clamp(MIN_WAIT, MAX_WAIT)
                });
                state.next = Some(tokio::time::Instant::now() + wait);
                let Some(found) = found else { continue };
                for gone in state.known.keys().filter(|a| !found.contains_key(a)) {
                    state.pending.push(Change::Remove(*gone));
                }
                for (addr, settings) in &found {
                    if state.known.get(addr) != Some(settings)
                        && let Some(backend) = state.discover.backend(*addr, *settings)
                    {
                        state.pending.push(Change::Insert(*addr, backend));
                    }
                }
                if !state.pending.is_empty() {
                    tracing::info!(
                        target = ?state.discover.target,
                        backends = found.len(),
                        "DNS discovery: the backends changed"
                    );
                }
                state.known = found;
                // `pop` takes the additions (pushed last) first, so the
                // set is never emptied in between when every address
                // changes.
            }
        })
    }

    /// Follow the name in `backends` from a task that ends with the set
    /// (when its last handle is dropped).
    pub fn follow(self, backends: &Backends) -> tokio::task::JoinHandle<()> {
        let weak = backends.downgrade();
        let stopped = backends.state.stopped.clone();
        let changes = self.changes();
        tokio::spawn(async move {
            let set = weak;
            let follow = async {
                let mut changes = std::pin::pin!(changes);
                let mut ids = BTreeMap::new();
                while let Some(Ok(change)) = futures_util::StreamExt::next(&mut changes).await {
                    let Some(backends) = set.upgrade() else {
                        return;
                    };
                    match change {
                        Change::Insert(addr, backend) => {
                            ids.insert(addr, backend.id());
                            backends.insert(backend);
                        }
                        Change::Remove(addr) => {
                            // Drained: it leaves when its last tunnel ends
                            // (and keeps its counts if it comes back first).
                            if let Some(id) = ids.remove(&addr) {
                                backends.drain(id);
                            }
                        }
                    }
                }
            };
            tokio::select! {
                () = stopped.cancelled() => {}
                () = follow => {}
            }
        })
    }

    fn backend(&self, addr: SocketAddr, (weight, backup): (u32, bool)) -> Option<Backend> {
        let url = format!("ws://{addr}{}", self.path);
        match url.parse() {
            Ok(upstream) => Some(Backend::new(upstream).weight(weight.max(1)).backup(backup)),
            Err(error) => {
                tracing::warn!(%url, %error, "DNS discovery: not a backend URL");
                None
            }
        }
    }

    /// Whether the [`path`](Self::path) makes valid backend URLs.
    pub fn path_is_valid(&self) -> bool {
        format!("ws://127.0.0.1:1{}", self.path)
            .parse::<crate::Upstream>()
            .is_ok()
    }

    /// What the name holds now, with when that answer expires; `None` for
    /// "keep what you had".
    #[allow(clippy::type_complexity)]
    async fn look_up(
        &self,
        resolver: &TokioResolver,
    ) -> Result<(Option<BTreeMap<SocketAddr, (u32, bool)>>, Option<Instant>), ResolveError> {
        let mut found = BTreeMap::new();
        match &self.target {
            Target::Host(name, port) => match resolver.lookup_ip(name.as_str()).await {
                Ok(lookup) => {
                    for ip in lookup.iter() {
                        found.insert(SocketAddr::new(ip, *port), (1, false));
                    }
                    Ok((Some(found), Some(lookup.valid_until())))
                }
                Err(e) if is_gone(&e) => Ok((Some(found), None)),
                Err(e) => Err(e),
            },
            Target::Srv(name) => {
                let lookup = match resolver.srv_lookup(name.as_str()).await {
                    Ok(lookup) => lookup,
                    Err(e) if is_gone(&e) => {
                        return Ok((Some(found), None));
                    }
                    Err(e) => return Err(e),
                };
                let mut valid_until = lookup.as_lookup().valid_until();
                let lowest = lookup.iter().map(|srv| srv.priority()).min().unwrap_or(0);
                for srv in lookup.iter() {
                    // A target with no address is skipped; one whose lookup
                    // failed fails the whole answer (what was found stays).
                    let ips = match resolver.lookup_ip(srv.target().clone()).await {
                        Ok(ips) => ips,
                        Err(e) if is_gone(&e) => continue,
                        Err(e) => return Err(e),
                    };
                    valid_until = valid_until.min(ips.valid_until());
                    for ip in ips.iter() {
                        found.insert(
                            SocketAddr::new(ip, srv.port()),
                            (u32::from(srv.weight()), srv.priority() > lowest),
                        );
                    }
                }
                Ok((Some(found), Some(valid_until)))
            }
        }
    }
}

/// Whether an error says the name has no such records (`NXDOMAIN`, or
/// `NOERROR` with no answer), as opposed to a server that could not say
/// (`SERVFAIL`, `REFUSED`, no answer at all).
fn is_gone(error: &ResolveError) -> bool {
    use hickory_resolver::proto::ProtoErrorKind;
    use hickory_resolver::proto::op::ResponseCode;
    match error.proto().map(|proto| proto.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            matches!(
                *response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            )
        }
        _ => false,
    }
}
