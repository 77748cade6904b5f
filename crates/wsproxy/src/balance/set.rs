//! A live set of backends and the choice of one per handshake.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use http::HeaderValue;
use http::request::Parts;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::discover::{Change, Discover};

use super::health::{self, ActiveHealth, PassiveHealth};
use super::member::{Member, now};
use super::sticky::Sticky;
use super::strategy::{Candidate, RoundRobin, Strategy};
use super::{Backend, BackendId};
use crate::Upstream;
use crate::connect::Dialer;
use crate::drain::CloseSignal;

/// A live set of backends for one route, and how one is chosen for each
/// handshake. Cheap to clone: clones are handles on the same backends and
/// their state. Configure it before cloning: each clone keeps the settings
/// it had when it was cloned.
///
/// See the [module docs](super) for strategies, health and retries.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use wsproxy::balance::{Backend, Backends, LeastConn, PassiveHealth};
/// use wsproxy::WebSocketProxyLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let backends = Backends::new([
///     Backend::new("ws://127.0.0.1:9001".parse().unwrap()).weight(2),
///     Backend::new("ws://127.0.0.1:9002".parse().unwrap()),
///     Backend::new("ws://127.0.0.1:9009".parse().unwrap()).backup(true),
/// ])
/// .strategy(LeastConn::new())
/// .passive_health(PassiveHealth::new().max_fails(2))
/// .tries(3);
/// let layer = WebSocketProxyLayer::with_backends(backends.clone());
///
/// // Later, at runtime:
/// let new = Backend::new("ws://127.0.0.1:9003".parse().unwrap());
/// assert!(backends.insert(new.clone()));
/// assert!(backends.drain(new.id())); // no new tunnels; gone when its last one ends
/// assert_eq!(backends.status().len(), 3);
/// # drop(layer);
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct Backends {
    pub(crate) config: Arc<SetConfig>,
    pub(crate) state: Arc<SetState>,
}

#[derive(Clone)]
pub(crate) struct SetConfig {
    strategy: Arc<dyn Strategy>,
    passive: PassiveHealth,
    active: Option<ActiveHealth>,
    slow_start: Option<Duration>,
    close_when_down: Option<Duration>,
    sticky: Option<Sticky>,
    /// The key of sticky cookie values (random unless set).
    sticky_secret: u64,
    pub(crate) tries: usize,
}

pub(crate) struct SetState {
    members: RwLock<Arc<[Arc<Member>]>>,
    /// Cancelled when the last handle is dropped: probes end.
    stopped: CancellationToken,
    /// Whether the probes of the members have been started (they need a
    /// runtime, which a set built outside one gets at its first use).
    probing: AtomicBool,
    /// TLS toward its `wss://` backends, for handshakes and probes alike.
    pub(crate) dialer: Dialer,
}

impl Drop for SetState {
    fn drop(&mut self) {
        self.stopped.cancel();
    }
}

/// The backend chosen for one handshake attempt; counts toward its load
/// until dropped, so it moves into the tunnel task.
pub(crate) struct Picked {
    /// What closes the tunnel if the backend goes down or is removed,
    /// taken when it was chosen (so a removal during the handshake is not
    /// missed).
    close: Arc<CloseSignal>,
    load: Load,
}

/// One unit of a backend's load.
struct Load {
    member: Arc<Member>,
    set: Weak<SetState>,
}

impl Drop for Load {
    fn drop(&mut self) {
        // SeqCst with `drain`: of a drain and the last unit's drop, one
        // sees the other.
        let before = self.member.open.fetch_sub(1, Ordering::SeqCst);
        // The last tunnel of a draining backend removes it.
        if before == 1
            && self.member.draining.load(Ordering::SeqCst)
            && let Some(set) = self.set.upgrade()
        {
            set.take_member(&self.member);
            tracing::info!(backend = %self.member.backend.upstream, "drained backend removed: its last tunnel ended");
        }
    }
}

impl Picked {
    fn member(&self) -> &Member {
        &self.load.member
    }

    pub(crate) fn upstream(&self) -> &Upstream {
        &self.member().backend.upstream
    }

    pub(crate) fn id(&self) -> BackendId {
        self.member().backend.id
    }

    /// What closes its tunnel, and the load unit the tunnel task holds.
    pub(crate) fn into_parts(self) -> (Arc<CloseSignal>, impl Send + 'static) {
        (self.close, self.load)
    }
}

impl Default for SetConfig {
    fn default() -> Self {
        Self {
            strategy: Arc::new(RoundRobin::new()),
            passive: PassiveHealth::new(),
            active: None,
            slow_start: None,
            close_when_down: None,
            sticky: None,
            sticky_secret: crate::random::random_u64(),
            tries: 3,
        }
    }
}

impl Backends {
    /// A set of `backends`, balanced round-robin with nginx's passive
    /// health defaults and up to 3 tries. A backend listed twice (same
    /// URL) counts once.
    pub fn new(backends: impl IntoIterator<Item = Backend>) -> Self {
        let mut members: Vec<Arc<Member>> = Vec::new();
        for backend in backends {
            if members.iter().all(|m| m.backend.id != backend.id) {
                members.push(Arc::new(Member::new(backend, 0)));
            }
        }
        Self {
            config: Arc::new(SetConfig::default()),
            state: Arc::new(SetState {
                members: RwLock::new(members.into()),
                stopped: CancellationToken::new(),
                probing: AtomicBool::new(false),
                dialer: Dialer::default(),
            }),
        }
    }

    fn config(&mut self) -> &mut SetConfig {
        Arc::make_mut(&mut self.config)
    }

    /// How a backend is chosen (default: [`RoundRobin`]).
    pub fn strategy(mut self, strategy: impl Strategy) -> Self {
        self.config().strategy = Arc::new(strategy);
        self
    }

    /// Passive health checking (default: [`PassiveHealth::new`], nginx's
    /// `max_fails=1 fail_timeout=10s`).
    pub fn passive_health(mut self, passive: PassiveHealth) -> Self {
        self.config().passive = passive;
        self
    }

    /// Active health checking (default: none). See [`ActiveHealth`].
    ///
    /// Probes start when the set goes into a layer
    /// ([`with_backends`](crate::WebSocketProxyLayer::with_backends))
    /// inside a Tokio runtime, else at the first handshake.
    pub fn active_health(mut self, active: ActiveHealth) -> Self {
        self.config().active = Some(active);
        self
    }

    /// Ramp a backend's weight up from 1 to its own over `period` after it
    /// comes back up or is added at runtime (default: off). Strategies
    /// that use weights (round-robin, least connections, power of two)
    /// honour it; consistent hashing does not (a key's backend does not
    /// change with load).
    pub fn slow_start(mut self, period: Duration) -> Self {
        self.config().slow_start = Some(period);
        self
    }

    /// What happens to a backend's open tunnels when it is marked down (by
    /// either health check) or removed: `None` leaves them alone, the
    /// default (a backend failing new connects may still serve old ones);
    /// `Some(grace)` closes them like a shutdown does — Close `1001` at the
    /// next frame boundary both ways, a hard close after `grace`.
    pub fn close_tunnels_when_down(mut self, grace: Option<Duration>) -> Self {
        self.config().close_when_down = grace;
        self
    }

    /// Sticky sessions by cookie (default: off). The `101` of a tunnel
    /// sets cookie `name` to a value standing for the chosen backend
    /// (`Path=/; HttpOnly; SameSite=Lax`, a session cookie). A client that
    /// presents it returns to that backend while it is usable; otherwise
    /// the strategy chooses and the client gets a new cookie.
    ///
    /// The value is 16 hex digits, a keyed hash of the backend's id: it
    /// does not reveal the backend's address, and clients cannot compute
    /// the value of a backend they were never sent to (they can still
    /// replay one they were given). The key is random per set unless
    /// set with [`sticky_secret`](Self::sticky_secret): set it when
    /// several proxy instances share clients, or to keep cookies valid
    /// across restarts.
    ///
    /// # Panics
    ///
    /// If `name` is not a cookie name (letters, digits and
    /// ``!#$%&'*+-.^_`|~``).
    pub fn sticky_cookie(mut self, name: &str) -> Self {
        assert!(
            crate::forward::is_token(name),
            "invalid sticky cookie name {name:?}"
        );
        let secret = self.config.sticky_secret;
        self.config().sticky = Some(Sticky {
            name: name.into(),
            secret,
        });
        self
    }

    /// The key of [sticky cookie](Self::sticky_cookie) values, for
    /// cookies that hold across proxy instances and restarts (default: a
    /// random key per set), before or after `sticky_cookie`.
    pub fn sticky_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        let secret = twox_hash::XxHash64::oneshot(0x5713_c00c, secret.as_ref());
        let config = self.config();
        config.sticky_secret = secret;
        if let Some(sticky) = &mut config.sticky {
            sticky.secret = secret;
        }
        self
    }

    /// How the proxy talks TLS to the `wss://` backends of the set, in
    /// handshakes and [health probes](Self::active_health) (default:
    /// [`BackendTls::new`](crate::tls::BackendTls::new): Mozilla's roots,
    /// the URL's host as the name, no client certificate). See
    /// [`tls`](crate::tls).
    ///
    /// Unlike the other settings, this one belongs to the backends, not to
    /// a handle: every clone of the set, before or after, uses it, as do
    /// the probes already running.
    ///
    /// ```
    /// use wsproxy::balance::Backends;
    /// use wsproxy::tls::BackendTls;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Backends reached by address, whose certificates name the service.
    /// let backends = Backends::new(["wss://10.0.0.1".parse()?, "wss://10.0.0.2".parse()?])
    ///     .tls(BackendTls::new().server_name("chat.example.com")?);
    /// # drop(backends);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(self, tls: crate::tls::BackendTls) -> Self {
        self.state.dialer.set(tls);
        self
    }

    /// How connections to these backends are opened, for handshakes and
    /// health probes alike (default: [`Connector::tcp`](crate::connect::Connector::tcp)).
    /// TLS for `wss://` backends goes over what the connector opens. Like
    /// [`tls`](Self::tls), it belongs to the backends: every clone uses it.
    ///
    /// ```
    /// use wsproxy::balance::Backends;
    /// use wsproxy::connect::Connector;
    /// use wsproxy::Upstream;
    ///
    /// // Every backend through one local socket (a sidecar).
    /// let sidecar = tower::service_fn(|_: Upstream| tokio::net::UnixStream::connect("/run/mesh.sock"));
    /// let backends = Backends::new(["ws://chat-a".parse().unwrap(), "ws://chat-b".parse().unwrap()])
    ///     .connector(Connector::new(sidecar));
    /// # drop(backends);
    /// ```
    pub fn connector(self, connector: crate::connect::Connector) -> Self {
        self.state.dialer.set_connector(connector);
        self
    }

    /// Backends tried for one handshake (default: 3; 0 is taken as 1).
    /// A connect that fails or times out, or a backend that closes or
    /// breaks before answering, moves on to another backend while tries and
    /// the handshake timeout allow. Nothing has reached the client then.
    /// A backend's own answer (any status) is never retried.
    pub fn tries(mut self, tries: usize) -> Self {
        self.config().tries = tries.max(1);
        self
    }

    /// Add a backend at runtime; it takes tunnels at once (ramping up
    /// under [slow start](Self::slow_start)). If one with the same URL is
    /// in the set, its weight, backup flag and `max_conns` become those of
    /// `backend`, a [drain](Self::drain) of it is called off (its tunnels,
    /// load and health stay), and `false` is returned.
    pub fn insert(&self, backend: impl Into<Backend>) -> bool {
        let backend = backend.into();
        let upstream = backend.upstream.clone();
        {
            let mut members = self.state.write();
            if let Some(member) = members.iter().find(|m| m.backend.id == backend.id) {
                member.update(&backend);
                member.draining.store(false, Ordering::SeqCst);
                tracing::info!(backend = %upstream, "backend settings updated (and not draining)");
                return false;
            }
            let mut list = members.to_vec();
            list.push(Arc::new(Member::new(backend, now())));
            *members = list.into();
        }
        tracing::info!(backend = %upstream, "backend added");
        // Without a runtime here, the next handshake starts its probe.
        self.state.probing.store(false, Ordering::Relaxed);
        self.start_probes();
        true
    }

    /// Remove a backend at runtime; `false` if it is not in the set. Its
    /// open tunnels are left alone, or closed if
    /// [`close_tunnels_when_down`](Self::close_tunnels_when_down) is set.
    pub fn remove(&self, id: BackendId) -> bool {
        let Some(member) = self.state.take(id) else {
            return false;
        };
        tracing::info!(backend = %member.backend.upstream, open = member.open(), "backend removed");
        if let Some(grace) = self.config.close_when_down {
            member.close_tunnels(grace);
        }
        true
    }

    /// Drain a backend: no new tunnels, its open ones untouched, and it
    /// leaves the set when the last one ends (at once if it has none).
    /// `false` if it is not in the set.
    pub fn drain(&self, id: BackendId) -> bool {
        let Some(member) = self.state.get(id) else {
            return false;
        };
        member.draining.store(true, Ordering::SeqCst);
        tracing::info!(backend = %member.backend.upstream, open = member.open(), "backend draining");
        if member.open.load(Ordering::SeqCst) == 0 {
            self.state.take_member(&member);
        }
        true
    }

    /// Follow a [`Discover`] stream of backends: `Change::Insert(key,
    /// backend)` adds one (replacing the backend that key named before, or
    /// updating its settings if the URL is the same),
    /// `Change::Remove(key)` removes it, as [`insert`](Self::insert) and
    /// [`remove`](Self::remove) do. Spawn the returned future; it ends
    /// when the stream does, or with its error.
    ///
    /// ```
    /// use tower::discover::Change;
    /// use wsproxy::balance::{Backend, Backends};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let backends = Backends::new(Vec::<Backend>::new());
    /// let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    /// let changes = futures_util::stream::unfold(rx, |mut rx| async move {
    ///     rx.recv().await.map(|change| (Ok::<_, std::convert::Infallible>(change), rx))
    /// });
    /// let follow = tokio::spawn(backends.clone().discover(changes));
    /// tx.send(Change::Insert("a", Backend::new("ws://127.0.0.1:9001".parse().unwrap()))).unwrap();
    /// tx.send(Change::Insert("b", Backend::new("ws://127.0.0.1:9002".parse().unwrap()))).unwrap();
    /// tx.send(Change::Remove("a")).unwrap();
    /// drop(tx);
    /// follow.await.unwrap().unwrap();
    /// assert_eq!(backends.status().len(), 1);
    /// # }
    /// ```
    pub async fn discover<D>(self, discover: D) -> Result<(), D::Error>
    where
        D: Discover<Service = Backend>,
    {
        let mut discover = std::pin::pin!(discover);
        let mut known: Vec<(D::Key, BackendId)> = Vec::new();
        while let Some(change) =
            std::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)).await
        {
            match change? {
                Change::Insert(key, backend) => {
                    if let Some(i) = known.iter().position(|(k, _)| *k == key) {
                        let (_, old) = known.swap_remove(i);
                        if old != backend.id {
                            self.remove(old);
                        }
                    }
                    known.push((key, backend.id));
                    self.insert(backend);
                }
                Change::Remove(key) => {
                    if let Some(i) = known.iter().position(|(k, _)| *k == key) {
                        let (_, id) = known.swap_remove(i);
                        self.remove(id);
                    }
                }
            }
        }
        Ok(())
    }

    /// The backend a handshake for `request` would be sent to now, as
    /// the proxy chooses it (a round-robin moves on), without connecting
    /// or holding load; `None` when none is usable. For diagnostics,
    /// tests and benchmarks of a strategy.
    ///
    /// ```
    /// use wsproxy::admit::Key;
    /// use wsproxy::balance::{Backends, ConsistentHash};
    ///
    /// let backends = Backends::new([
    ///     "ws://127.0.0.1:9001".parse().unwrap(),
    ///     "ws://127.0.0.1:9002".parse().unwrap(),
    /// ])
    /// .strategy(ConsistentHash::new(Key::path()));
    /// let (request, ()) = http::Request::get("/room/7").body(()).unwrap().into_parts();
    /// let first = backends.choose(&request);
    /// assert!(first.is_some());
    /// assert_eq!(backends.choose(&request), first);
    /// ```
    pub fn choose(&self, request: &Parts) -> Option<BackendId> {
        self.pick(request, &[]).map(|(picked, _)| picked.id())
    }

    /// The backends in the set now and their state.
    pub fn status(&self) -> Vec<BackendStatus> {
        let members = self.state.read();
        let passive = self.passive_applies(&members);
        let now = now();
        members
            .iter()
            .map(|m| BackendStatus {
                id: m.backend.id,
                upstream: m.backend.upstream.clone(),
                weight: m.weight.load(Ordering::Relaxed),
                backup: m.backup(),
                max_conns: Some(m.max_conns()).filter(|&max| max != usize::MAX),
                open: m.open(),
                up: m.probe_up() && !m.passively_down(passive, now),
                draining: m.draining.load(Ordering::Relaxed),
                transitions: m.transitions.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Whether passive checks apply: not to a lone backend (nginx).
    fn passive_applies(&self, members: &[Arc<Member>]) -> bool {
        self.config.passive.max_fails > 0 && members.len() > 1
    }

    /// Spawn the probes of members that have none, if there is a runtime.
    pub(crate) fn start_probes(&self) {
        let Some(active) = &self.config.active else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.state.probing.store(true, Ordering::Relaxed);
        for member in self.state.read().iter() {
            if !member.probing.swap(true, Ordering::Relaxed) {
                runtime.spawn(health::probe_loop(
                    member.clone(),
                    active.clone(),
                    self.state.dialer.clone(),
                    self.config.close_when_down,
                    self.state.stopped.clone(),
                ));
            }
        }
    }

    /// Choose a backend for `request` among those not `tried`; `None` when
    /// none is usable. The sticky cookie to set, if any, comes along.
    pub(crate) fn pick(
        &self,
        request: &Parts,
        tried: &[BackendId],
    ) -> Option<(Picked, Option<HeaderValue>)> {
        if self.config.active.is_some() && !self.state.probing.load(Ordering::Relaxed) {
            self.start_probes();
        }
        let members = self.state.read();
        let passive = self.passive_applies(&members);
        let now = now();
        let slow_start = self.config.slow_start;
        let mut candidates: Vec<Candidate<'_>> = Vec::with_capacity(members.len());
        // Primaries, else backups; and when every backend is down by the
        // passive checks alone, all of them again (nginx then resets its
        // failure counts): a guess beats a certain 503.
        let mut passive = passive;
        for (backup, lenient) in [(false, false), (true, false), (false, true), (true, true)] {
            if lenient {
                if !passive {
                    break;
                }
                passive = false;
            }
            candidates.extend(
                members
                    .iter()
                    .filter(|m| m.backup() == backup && !tried.contains(&m.backend.id))
                    .filter(|m| m.usable(now, passive))
                    .map(|m| Candidate {
                        member: m,
                        weight: m.weight(now, slow_start),
                    }),
            );
            if !candidates.is_empty() {
                if lenient {
                    tracing::info!("every backend is down by passive checks: trying them anyway");
                }
                break;
            }
        }
        let sticky = self.config.sticky.as_ref();
        let wanted = sticky
            .and_then(|s| crate::client::cookie(request, &s.name))
            .and_then(|v| BackendId::parse(&v));
        while !candidates.is_empty() {
            let i = sticky
                .zip(wanted)
                .and_then(|(s, v)| candidates.iter().position(|c| s.value(c.id()) == v))
                .unwrap_or_else(|| {
                    self.config
                        .strategy
                        .pick(request, &candidates)
                        .min(candidates.len() - 1)
                });
            let member = candidates[i].member;
            let before = member.open.fetch_add(1, Ordering::SeqCst);
            let load = Load {
                member: member.clone(),
                set: Arc::downgrade(&self.state),
            };
            let close = member.close_signal();
            if before >= member.max_conns() || member.went_away(passive, now) {
                // Filled up, or went down or away, since it was listed;
                // dropping `load` gives the unit back (and removes a
                // draining member whose last unit it was).
                drop(load);
                candidates.swap_remove(i);
                continue;
            }
            let cookie = sticky
                .filter(|s| wanted != Some(s.value(member.backend.id)))
                .map(|s| s.cookie(member.backend.id));
            return Some((Picked { close, load }, cookie));
        }
        None
    }

    /// Count a failed handshake attempt on `picked` (passive health).
    pub(crate) fn failed(&self, picked: &Picked) {
        let passive = self.config.passive;
        let member = picked.member();
        if passive.max_fails == 0 || !self.passive_applies(&self.state.read()) {
            return;
        }
        let at = Instant::now();
        let mut fails = member.fails.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, last) = &mut *fails;
        // Failures further apart than fail_timeout do not add up; but a
        // backend that was marked down and fails again on its first try
        // after fail_timeout is marked down again at once (nginx).
        let expired = last.is_none_or(|t| at.duration_since(t) > passive.fail_timeout);
        if expired && *count < passive.max_fails {
            *count = 0;
        }
        *count = count.saturating_add(1);
        *last = Some(at);
        if *count < passive.max_fails {
            return;
        }
        let failed = *count;
        drop(fails);
        let timeout = u64::try_from(passive.fail_timeout.as_nanos()).unwrap_or(u64::MAX);
        let until = now().saturating_add(timeout);
        if member.down_until.swap(until, Ordering::Relaxed) == 0 {
            member.transition(false);
            tracing::warn!(
                backend = %member.backend.upstream,
                failed,
                fail_timeout = ?passive.fail_timeout,
                "backend down: failed handshakes reached max_fails"
            );
            if let Some(grace) = self.config.close_when_down {
                member.close_tunnels(grace);
            }
        }
    }

    /// Count a good handshake on `picked`. Its failures are forgotten once
    /// the last one is older than fail_timeout (a success in between does
    /// not clear them, as in nginx), or at once if it was marked down and
    /// was tried anyway because every backend was.
    pub(crate) fn succeeded(&self, picked: &Picked) {
        let member = picked.member();
        let mut fails = member.fails.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, last) = &mut *fails;
        // Only a member that was down is written to (a shared cache line).
        let was_down = member.down_until.load(Ordering::Relaxed) != 0
            && member.down_until.swap(0, Ordering::Relaxed) != 0;
        let expired = last
            .is_none_or(|t| Instant::now().duration_since(t) > self.config.passive.fail_timeout);
        if expired || was_down {
            *count = 0;
            *last = None;
        }
        if was_down {
            member.transition(true);
            tracing::info!(backend = %member.backend.upstream, "backend up: a handshake succeeded");
        }
    }

    /// A label for logs: the backends' URLs.
    pub(crate) fn describe(&self) -> String {
        let members = self.state.read();
        let mut text = String::new();
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&m.backend.upstream.to_string());
        }
        text
    }
}

impl SetState {
    fn read(&self) -> Arc<[Arc<Member>]> {
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<[Arc<Member>]>> {
        self.members.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: BackendId) -> Option<Arc<Member>> {
        self.read().iter().find(|m| m.backend.id == id).cloned()
    }

    /// Remove `member` if it is still in the set (not a newer member with
    /// the same URL).
    fn take_member(&self, member: &Arc<Member>) {
        let mut members = self.write();
        if let Some(i) = members.iter().position(|m| Arc::ptr_eq(m, member)) {
            let mut list = members.to_vec();
            list.remove(i);
            *members = list.into();
            member.removed.cancel();
        }
    }

    /// Remove a member; its probes stop.
    fn take(&self, id: BackendId) -> Option<Arc<Member>> {
        let mut members = self.write();
        let i = members.iter().position(|m| m.backend.id == id)?;
        let mut list = members.to_vec();
        let member = list.remove(i);
        *members = list.into();
        member.removed.cancel();
        Some(member)
    }
}

impl From<Upstream> for Backends {
    fn from(upstream: Upstream) -> Self {
        Self::new([Backend::new(upstream)])
    }
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backends")
            .field("backends", &self.describe())
            .field("passive", &self.config.passive)
            .field("active", &self.config.active)
            .field("slow_start", &self.config.slow_start)
            .field("sticky", &self.config.sticky)
            .field("tries", &self.config.tries)
            .finish_non_exhaustive()
    }
}

/// A backend's state, from [`Backends::status`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackendStatus {
    /// Its identity.
    pub id: BackendId,
    /// Its URL.
    pub upstream: Upstream,
    /// Its configured weight.
    pub weight: u32,
    /// Whether it is a backup.
    pub backup: bool,
    /// Open tunnels, including handshakes under way.
    pub open: usize,
    /// Its cap on open tunnels, if any.
    pub max_conns: Option<usize>,
    /// Up by both health checks (a full backend is still up).
    pub up: bool,
    /// Draining: no new tunnels, leaves when its last one ends.
    pub draining: bool,
    /// How often it went down or came back up.
    pub transitions: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::admit::Key;
    use crate::balance::{ConsistentHash, LeastConn, PowerOfTwo};

    fn backend(port: u16) -> Backend {
        format!("ws://127.0.0.1:{port}/").parse().unwrap()
    }

    fn request(path: &str) -> Parts {
        http::Request::get(path).body(()).unwrap().into_parts().0
    }

    fn id(port: u16) -> BackendId {
        backend(port).id()
    }

    fn sequence(backends: &Backends, n: usize) -> Vec<BackendId> {
        let request = request("/");
        (0..n).map(|_| backends.choose(&request).unwrap()).collect()
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let backends = Backends::new([backend(1).weight(5), backend(2), backend(3)]);
        let (a, b, c) = (id(1), id(2), id(3));
        // nginx's example: weights 5, 1, 1 give a a b a c a a, no burst.
        assert_eq!(sequence(&backends, 7), [a, a, b, a, c, a, a]);
        let equal = Backends::new([backend(1), backend(2), backend(3)]);
        assert_eq!(sequence(&equal, 6), [a, b, c, a, b, c]);
    }

    #[test]
    fn backups_only_when_no_primary_is_usable() {
        let backends = Backends::new([backend(1), backend(2), backend(9).backup(true)]);
        assert!(!sequence(&backends, 20).contains(&id(9)));
        backends.drain(id(1));
        backends.remove(id(2));
        assert_eq!(sequence(&backends, 3), [id(9); 3]);
        backends.insert(backend(3));
        assert_eq!(sequence(&backends, 3), [id(3); 3]);
    }

    #[test]
    fn nothing_usable_is_none() {
        let backends = Backends::new([backend(1).max_conns(0)]);
        assert_eq!(backends.choose(&request("/")), None);
        assert_eq!(Backends::new([]).choose(&request("/")), None);
    }

    #[test]
    fn max_conns_counts_held_load() {
        let backends =
            Backends::new([backend(1).max_conns(2), backend(2)]).strategy(LeastConn::new());
        let request = request("/");
        let held: Vec<_> = (0..4)
            .map(|_| backends.pick(&request, &[]).unwrap().0)
            .collect();
        let on_1 = held.iter().filter(|p| p.id() == id(1)).count();
        assert_eq!(on_1, 2);
        // Full: everything else goes to 2 while the load is held.
        assert_eq!(sequence(&backends, 5), [id(2); 5]);
        drop(held);
        assert!(sequence(&backends, 5).contains(&id(1)));
    }

    #[test]
    fn least_conn_and_p2c_follow_held_load() {
        for strategy in [
            Arc::new(LeastConn::new()) as Arc<dyn Strategy>,
            Arc::new(PowerOfTwo::new()),
        ] {
            let mut backends = Backends::new([backend(1), backend(2), backend(3).weight(2)]);
            Arc::make_mut(&mut backends.config).strategy = strategy;
            let request = request("/");
            let held: Vec<_> = (0..400)
                .map(|_| backends.pick(&request, &[]).unwrap().0)
                .collect();
            let mut count: HashMap<BackendId, usize> = HashMap::new();
            for picked in &held {
                *count.entry(picked.id()).or_default() += 1;
            }
            // Open tunnels per weight stay even: 100, 100, 200 (±15%).
            for (port, want) in [(1, 100.0), (2, 100.0), (3, 200.0)] {
                let got = count[&id(port)] as f64;
                assert!((got - want).abs() <= want * 0.15, "{port}: {got} vs {want}");
            }
        }
    }

    fn hashed(backends: &Backends, keys: usize) -> Vec<BackendId> {
        (0..keys)
            .map(|k| backends.choose(&request(&format!("/?k={k}"))).unwrap())
            .collect()
    }

    #[test]
    fn consistent_hash_moves_only_what_it_must() {
        const KEYS: usize = 10_000;
        const N: u16 = 5;
        let strategy = || ConsistentHash::new(Key::query("k"));
        let backends = Backends::new((1..=N).map(backend)).strategy(strategy());
        let before = hashed(&backends, KEYS);
        for port in 1..=N {
            let share = before.iter().filter(|b| **b == id(port)).count() as f64 / KEYS as f64;
            assert!((share - 0.2).abs() < 0.03, "share of {port}: {share}");
        }
        // Removing one of N moves its keys and nothing else.
        backends.remove(id(3));
        let after = hashed(&backends, KEYS);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        for (a, b) in before.iter().zip(&after) {
            assert!(a == b || *a == id(3), "a key of another backend moved");
        }
        assert!(
            moved as f64 / KEYS as f64 <= 1.0 / f64::from(N) + 0.03,
            "{moved} moved"
        );
        // Adding one moves about 1/(N+1), all to the new one.
        let grown = Backends::new((1..=N + 1).map(backend)).strategy(strategy());
        let after = hashed(&grown, KEYS);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        for (a, b) in before.iter().zip(&after) {
            assert!(
                a == b || *b == id(N + 1),
                "a key moved between old backends"
            );
        }
        let expected = 1.0 / f64::from(N + 1);
        assert!(
            (moved as f64 / KEYS as f64 - expected).abs() < 0.03,
            "{moved} moved"
        );
        // A backend that is down hands its keys over and gets them back.
        let member = backends.state.get(id(1)).unwrap();
        member.probe_up.store(false, Ordering::Relaxed);
        let down = hashed(&backends, KEYS);
        member.probe_up.store(true, Ordering::Relaxed);
        assert!(!down.contains(&id(1)));
        let back = hashed(&backends, KEYS);
        assert_eq!(back, hashed(&backends, KEYS), "stable");
        assert!(back.iter().zip(&before).all(|(a, b)| a == b || *b == id(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn consistent_hash_keys_stay_put_during_slow_start() {
        let backends = Backends::new([backend(1), backend(2).weight(2)])
            .strategy(ConsistentHash::new(Key::query("k")))
            .slow_start(Duration::from_secs(100));
        backends.insert(backend(3).weight(3));
        let early = hashed(&backends, 2_000);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(hashed(&backends, 2_000), early);
    }

    #[test]
    fn consistent_hash_weights_and_missing_keys() {
        let backends = Backends::new([backend(1).weight(3), backend(2)])
            .strategy(ConsistentHash::new(Key::query("k")));
        let picks = hashed(&backends, 10_000);
        let share = picks.iter().filter(|b| **b == id(1)).count() as f64 / 10_000.0;
        assert!((share - 0.75).abs() < 0.03, "{share}");
        // No key: spread at random rather than all on one.
        let spread = sequence(&backends, 200);
        assert!(spread.contains(&id(1)) && spread.contains(&id(2)));
    }

    #[test]
    fn bounded_load_caps_a_hot_key() {
        let backends = Backends::new([backend(1), backend(2), backend(3), backend(4)])
            .strategy(ConsistentHash::new(Key::path()).bounded_load(1.25));
        let hot = request("/hot");
        let held: Vec<_> = (0..100)
            .map(|_| backends.pick(&hot, &[]).unwrap().0)
            .collect();
        let mut count: HashMap<BackendId, usize> = HashMap::new();
        for picked in &held {
            *count.entry(picked.id()).or_default() += 1;
        }
        // No backend above ceil(1.25 × average): 32 of 100 over 4.
        assert!(count.values().all(|&n| n <= 32), "{count:?}");
        // Without load, the key stays on its first choice.
        drop(held);
        let first = backends.choose(&hot).unwrap();
        assert_eq!(sequence_of(&backends, &hot, 5), [first; 5]);
    }

    fn sequence_of(backends: &Backends, request: &Parts, n: usize) -> Vec<BackendId> {
        (0..n).map(|_| backends.choose(request).unwrap()).collect()
    }

    fn with_cookie(value: &str) -> Parts {
        let mut returning = request("/");
        returning.headers.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {value}")).unwrap(),
        );
        returning
    }

    #[test]
    fn sticky_cookie_names_the_backend_opaquely() {
        let backends = Backends::new([backend(1), backend(2)]).sticky_cookie("srv");
        let (picked, cookie) = backends.pick(&request("/"), &[]).unwrap();
        let cookie = cookie.expect("a new client gets a cookie");
        let value = cookie.to_str().unwrap().to_owned();
        let token = value
            .strip_prefix("srv=")
            .and_then(|v| v.strip_suffix("; Path=/; HttpOnly; SameSite=Lax"))
            .expect(&value);
        assert_eq!(token.len(), 16);
        // Keyed: not the id, which anyone can compute from a URL.
        assert_ne!(token, picked.id().to_string());
        let returning = with_cookie(&format!("srv={token}"));
        for _ in 0..5 {
            let (again, cookie) = backends.pick(&returning, &[]).unwrap();
            assert_eq!(again.id(), picked.id());
            assert!(cookie.is_none(), "no new cookie while it holds");
        }
        // A forged value (here: the plain id) is just an unknown cookie.
        let forged = with_cookie(&format!("srv={}", id(2)));
        let firsts: Vec<_> = (0..4)
            .map(|_| backends.pick(&forged, &[]).unwrap())
            .collect();
        assert!(firsts.iter().all(|(_, cookie)| cookie.is_some()));
        backends.remove(picked.id());
        let (moved, cookie) = backends.pick(&returning, &[]).unwrap();
        assert_ne!(moved.id(), picked.id());
        assert!(!cookie.unwrap().to_str().unwrap().contains(token));
    }

    #[test]
    fn a_shared_sticky_secret_gives_the_same_cookie_everywhere() {
        let a = Backends::new([backend(1), backend(2)])
            .sticky_cookie("srv")
            .sticky_secret("s3cret");
        // The order of the two settings does not matter.
        let b = Backends::new([backend(1), backend(2)])
            .sticky_secret("s3cret")
            .sticky_cookie("srv");
        let (picked, cookie) = a.pick(&request("/"), &[]).unwrap();
        let cookie = cookie.unwrap().to_str().unwrap().to_owned();
        let value = cookie.split(';').next().unwrap();
        let (again, none) = b.pick(&with_cookie(value), &[]).unwrap();
        assert_eq!((again.id(), none), (picked.id(), None));
        // Without the shared secret, another instance does not know it.
        let c = Backends::new([backend(1), backend(2)]).sticky_cookie("srv");
        assert!(c.pick(&with_cookie(value), &[]).unwrap().1.is_some());
    }

    #[test]
    #[should_panic(expected = "invalid sticky cookie name")]
    fn a_bad_cookie_name_is_refused_when_configured() {
        let _ = Backends::new([backend(1)]).sticky_cookie("a;b");
    }

    #[tokio::test(start_paused = true)]
    async fn passive_health_skips_for_fail_timeout_then_retries() {
        let backends = Backends::new([backend(1), backend(2)]).passive_health(
            PassiveHealth::new()
                .max_fails(2)
                .fail_timeout(Duration::from_secs(10)),
        );
        let request = request("/");
        let fail_on_1 = |times: usize| {
            for _ in 0..times {
                let picked = loop {
                    let (p, _) = backends.pick(&request, &[]).unwrap();
                    if p.id() == id(1) {
                        break p;
                    }
                };
                backends.failed(&picked);
            }
        };
        fail_on_1(1);
        assert!(backends.status()[0].up, "one failure of two allowed");
        fail_on_1(1);
        assert!(!backends.status()[0].up);
        assert_eq!(sequence(&backends, 4), [id(2); 4]);
        tokio::time::advance(Duration::from_millis(10_100)).await;
        assert!(sequence(&backends, 4).contains(&id(1)));
        assert_eq!(backends.status()[0].transitions, 2);
        // Back after fail_timeout: one more failure skips it again.
        fail_on_1(1);
        assert!(!backends.status()[0].up);
        tokio::time::advance(Duration::from_millis(10_100)).await;
        // A success brings it back and clears its failures.
        let (picked, _) = backends.pick(&request, &[id(2)]).unwrap();
        backends.succeeded(&picked);
        fail_on_1(1);
        assert!(backends.status()[0].up);
        // Failures further apart than fail_timeout do not add up.
        tokio::time::advance(Duration::from_secs(11)).await;
        fail_on_1(1);
        assert!(backends.status()[0].up);
        // A success within fail_timeout does not clear them (nginx).
        let (picked, _) = backends.pick(&request, &[id(2)]).unwrap();
        backends.succeeded(&picked);
        fail_on_1(1);
        assert!(!backends.status()[0].up);
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_backend_is_passively_down_they_are_tried_anyway() {
        let backends = Backends::new([backend(1), backend(2)]);
        let request = request("/");
        for _ in 0..2 {
            let (picked, _) = backends.pick(&request, &[]).unwrap();
            backends.failed(&picked);
        }
        assert!(backends.status().iter().all(|s| !s.up));
        let (picked, _) = backends.pick(&request, &[]).expect("not a 503");
        backends.succeeded(&picked);
        let up: Vec<_> = backends.status().iter().map(|s| s.up).collect();
        assert_eq!(
            up.iter().filter(|u| **u).count(),
            1,
            "the one that answered is up"
        );
        // A huge fail_timeout saturates instead of overflowing.
        let huge = Backends::new([backend(1), backend(2)])
            .passive_health(PassiveHealth::new().fail_timeout(Duration::MAX));
        let (picked, _) = huge.pick(&request, &[]).unwrap();
        huge.failed(&picked);
        assert_eq!(huge.status().iter().filter(|s| !s.up).count(), 1);
    }

    #[test]
    fn insert_calls_off_a_drain_and_a_backed_out_unit_still_removes_a_drained_member() {
        let backends = Backends::new([backend(1), backend(2)]);
        let request = request("/");
        let (held, _) = backends.pick(&request, &[]).unwrap();
        let drained = held.id();
        backends.drain(drained);
        assert!(!backends.insert(backend(if drained == id(1) { 1 } else { 2 })));
        assert!(backends.status().iter().all(|s| !s.draining));
        drop(held);
        assert_eq!(
            backends.status().len(),
            2,
            "not removed: the drain was called off"
        );
        // A member full since listing: the unit backed out goes through
        // the load's drop, which removes a drained member it was the last of.
        let member = backends.state.get(id(1)).unwrap();
        member.draining.store(true, Ordering::SeqCst);
        member.open.fetch_add(1, Ordering::SeqCst);
        let load = Load {
            member: member.clone(),
            set: Arc::downgrade(&backends.state),
        };
        drop(load);
        assert!(backends.status().iter().all(|s| s.id != id(1)));
    }

    #[test]
    fn passive_mark_down_closes_tunnels_only_when_told_to() {
        for close in [None, Some(Duration::from_secs(1))] {
            let backends = Backends::new([backend(1), backend(2)]).close_tunnels_when_down(close);
            // An open tunnel on backend 1...
            let (open, _) = backends.pick(&request("/"), &[id(2)]).unwrap();
            let (signal, _load) = open.into_parts();
            // ...and a handshake to it that fails (max_fails 1): down.
            let (failing, _) = backends.pick(&request("/"), &[id(2)]).unwrap();
            backends.failed(&failing);
            assert!(!backends.status()[0].up);
            assert_eq!(signal.is_closed(), close.is_some(), "{close:?}");
        }
    }

    #[test]
    fn a_lone_backend_is_never_skipped() {
        let backends = Backends::new([backend(1)]);
        for _ in 0..5 {
            let (picked, _) = backends.pick(&request("/"), &[]).unwrap();
            backends.failed(&picked);
        }
        assert!(backends.status()[0].up);
        assert_eq!(backends.choose(&request("/")), Some(id(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_the_weight() {
        let backends = Backends::new([backend(1).weight(10)]).slow_start(Duration::from_secs(10));
        let member = backends.state.get(id(1)).unwrap();
        // Present from the start: full weight.
        assert_eq!(member.weight(now(), backends.config.slow_start), 10);
        backends.insert(backend(2).weight(10));
        let added = backends.state.get(id(2)).unwrap();
        assert_eq!(added.weight(now(), backends.config.slow_start), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(added.weight(now(), backends.config.slow_start), 5);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(added.weight(now(), backends.config.slow_start), 10);
    }

    #[test]
    fn a_member_inserted_outside_a_runtime_is_probed_from_the_next_handshake() {
        use crate::balance::{ActiveHealth, Probe};
        let backends = Backends::new([backend(1)]).active_health(ActiveHealth::new(Probe::tcp()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { backends.choose(&request("/")) });
        assert!(
            backends
                .state
                .get(id(1))
                .unwrap()
                .probing
                .load(Ordering::Relaxed)
        );
        backends.insert(backend(2));
        let added = backends.state.get(id(2)).unwrap();
        assert!(
            !added.probing.load(Ordering::Relaxed),
            "no runtime to run it"
        );
        runtime.block_on(async { backends.choose(&request("/")) });
        assert!(added.probing.load(Ordering::Relaxed));
    }

    #[test]
    fn retries_skip_the_backends_tried() {
        let backends = Backends::new([backend(1), backend(2), backend(3)]);
        let request = request("/");
        let mut tried = Vec::new();
        while let Some((picked, _)) = backends.pick(&request, &tried) {
            assert!(!tried.contains(&picked.id()));
            tried.push(picked.id());
        }
        assert_eq!(tried.len(), 3);
    }

    #[test]
    fn drain_removes_after_the_last_tunnel() {
        let backends = Backends::new([backend(1), backend(2)]);
        let request = request("/");
        let (held, _) = backends.pick(&request, &[]).unwrap();
        let drained = held.id();
        backends.drain(drained);
        assert!(
            backends
                .status()
                .iter()
                .any(|s| s.id == drained && s.draining)
        );
        assert!(!sequence(&backends, 4).contains(&drained));
        drop(held);
        assert!(backends.status().iter().all(|s| s.id != drained));
    }
}
