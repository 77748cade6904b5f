//! A live set of backends and the choice of one per handshake.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http::request::Parts;
use tokio_util::sync::CancellationToken;
use tower::discover::{Change, Discover};

use super::health::{self, ActiveHealth, PassiveHealth};
use super::member::Member;
use super::sticky::Sticky;
use super::strategy::{RoundRobin, Strategy};
use super::{Backend, BackendId};
use crate::Upstream;
use crate::clock::now;
// Sideways, to the connecting phase: the set owns how its backends are
// dialled (connector, TLS), for handshakes and probes alike.
use crate::connect::Dialer;

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
    pub(super) strategy: Arc<dyn Strategy>,
    pub(super) passive: PassiveHealth,
    pub(super) active: Option<ActiveHealth>,
    pub(super) slow_start: Option<Duration>,
    pub(super) close_when_down: Option<Duration>,
    pub(super) sticky: Option<Sticky>,
    /// The key of sticky cookie values (random unless set).
    pub(super) sticky_secret: u64,
    pub(crate) tries: usize,
}

pub(crate) struct SetState {
    pub(super) members: RwLock<Arc<[Arc<Member>]>>,
    /// Cancelled when the last handle is dropped: probes end.
    pub(crate) stopped: CancellationToken,
    /// Whether the probes of the members have been started (they need a
    /// runtime, which a set built outside one gets at its first use).
    pub(super) probing: AtomicBool,
    /// TLS toward its `wss://` backends, for handshakes and probes alike.
    pub(crate) dialer: Dialer,
}

impl Drop for SetState {
    fn drop(&mut self) {
        self.stopped.cancel();
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

    pub(super) fn config(&mut self) -> &mut SetConfig {
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
    pub(super) fn passive_applies(&self, members: &[Arc<Member>]) -> bool {
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
    pub(super) fn read(&self) -> Arc<[Arc<Member>]> {
        self.members
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<[Arc<Member>]>> {
        self.members.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn get(&self, id: BackendId) -> Option<Arc<Member>> {
        self.read().iter().find(|m| m.backend.id == id).cloned()
    }

    /// Remove `member` if it is still in the set (not a newer member with
    /// the same URL).
    pub(super) fn take_member(&self, member: &Arc<Member>) {
        let mut members = self.write();
        if let Some(i) = members.iter().position(|m| Arc::ptr_eq(m, member)) {
            let mut list = members.to_vec();
            list.remove(i);
            *members = list.into();
            member.removed.cancel();
        }
    }

    /// Remove a member; its probes stop.
    pub(super) fn take(&self, id: BackendId) -> Option<Arc<Member>> {
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

/// A handle on a set that does not keep it alive.
#[cfg(feature = "dns")]
pub(crate) struct WeakBackends {
    config: Arc<SetConfig>,
    state: std::sync::Weak<SetState>,
}

#[cfg(feature = "dns")]
impl WeakBackends {
    pub(crate) fn upgrade(&self) -> Option<Backends> {
        Some(Backends {
            config: self.config.clone(),
            state: self.state.upgrade()?,
        })
    }
}

#[cfg(feature = "dns")]
impl Backends {
    pub(crate) fn downgrade(&self) -> WeakBackends {
        WeakBackends {
            config: self.config.clone(),
            state: Arc::downgrade(&self.state),
        }
    }
}
