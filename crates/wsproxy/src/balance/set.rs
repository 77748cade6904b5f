//! A live set of backends and the choice of one per handshake.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use http::HeaderValue;
use http::request::Parts;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::discover::{Change, Discover};

use super::health::{self, ActiveHealth, PassiveHealth};
use super::strategy::{Candidate, RoundRobin, Strategy};
use super::{Backend, BackendId};
use crate::Upstream;
use crate::tunnels::CloseSignal;

/// A live set of backends for one route, and how one is chosen for each
/// handshake. Cheap to clone: clones are handles on the same set.
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
    pub(crate) tries: usize,
}

#[derive(Clone, Debug)]
struct Sticky {
    name: Arc<str>,
}

pub(crate) struct SetState {
    members: RwLock<Arc<[Arc<Member>]>>,
    /// Cancelled when the last handle is dropped: probes end.
    stopped: CancellationToken,
}

impl Drop for SetState {
    fn drop(&mut self) {
        self.stopped.cancel();
    }
}

/// One backend of the set and what is known of it.
pub(crate) struct Member {
    pub(crate) backend: Backend,
    open: AtomicUsize,
    /// Passively down until this time (ns since [`epoch`]); 0: not down.
    down_until: AtomicU64,
    /// Failures in the current window, and when the window started.
    fails: Mutex<(u32, Option<Instant>)>,
    probe_up: AtomicBool,
    draining: AtomicBool,
    /// When it last came (back) up (ns since [`epoch`]), for slow start.
    up_since: AtomicU64,
    transitions: AtomicU64,
    probing: AtomicBool,
    pub(crate) removed: CancellationToken,
    close: Mutex<Arc<CloseSignal>>,
}

impl Member {
    fn new(backend: Backend, up_since: u64) -> Self {
        Self {
            backend,
            open: AtomicUsize::new(0),
            down_until: AtomicU64::new(0),
            fails: Mutex::new((0, None)),
            probe_up: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            up_since: AtomicU64::new(up_since),
            transitions: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            removed: CancellationToken::new(),
            close: Mutex::new(Arc::default()),
        }
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn probe_up(&self) -> bool {
        self.probe_up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_probe_up(&self, up: bool) {
        self.probe_up.store(up, Ordering::Relaxed);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        if up {
            self.up_since.store(now(), Ordering::Relaxed);
        }
        crate::metrics::backend_transition(&self.backend.upstream, up);
    }

    /// Close this backend's open tunnels (Close 1001, hard after `grace`);
    /// tunnels opened later are not affected.
    pub(crate) fn close_tunnels(&self, grace: Duration) {
        let signal = std::mem::take(&mut *self.close.lock().unwrap_or_else(PoisonError::into_inner));
        signal.close(grace);
    }

    /// What this backend's next tunnel watches to be closed.
    pub(crate) fn close_signal(&self) -> Arc<CloseSignal> {
        self.close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether it may take a new tunnel at `now`.
    fn usable(&self, now: u64, passive: bool) -> bool {
        if self.draining.load(Ordering::Relaxed) || !self.probe_up() {
            return false;
        }
        if let Some(max) = self.backend.max_conns
            && self.open() >= max
        {
            return false;
        }
        let until = self.down_until.load(Ordering::Relaxed);
        if until != 0 && passive {
            if now < until {
                return false;
            }
            // Its fail_timeout is over: back in rotation (once).
            if self
                .down_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.up_since.store(now, Ordering::Relaxed);
                self.transitions.fetch_add(1, Ordering::Relaxed);
                crate::metrics::backend_transition(&self.backend.upstream, true);
                tracing::info!(backend = %self.backend.upstream, "backend back in rotation after fail_timeout");
            }
        }
        true
    }

    /// Its weight at `now`, ramped up during slow start.
    fn weight(&self, now: u64, slow_start: Option<Duration>) -> u32 {
        let weight = self.backend.weight;
        let Some(period) = slow_start else {
            return weight;
        };
        let since = now.saturating_sub(self.up_since.load(Ordering::Relaxed));
        let period = period.as_nanos() as u64;
        if period == 0 || since >= period {
            return weight;
        }
        ((u128::from(weight) * u128::from(since) / u128::from(period)) as u32).max(1)
    }
}

/// Nanoseconds since the first call (a process-wide epoch), never 0.
fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| Instant::now() - Duration::from_nanos(1));
    epoch.elapsed().as_nanos() as u64
}

/// The backend chosen for one handshake attempt; counts toward its load
/// until dropped, so it moves into the tunnel task.
pub(crate) struct Picked {
    pub(crate) member: Arc<Member>,
    load: Load,
}

/// One unit of a backend's load.
struct Load {
    member: Arc<Member>,
    set: Weak<SetState>,
}

impl Drop for Load {
    fn drop(&mut self) {
        let before = self.member.open.fetch_sub(1, Ordering::Relaxed);
        // The last tunnel of a draining backend removes it.
        if before == 1
            && self.member.draining.load(Ordering::Relaxed)
            && let Some(set) = self.set.upgrade()
        {
            set.take(self.member.backend.id);
            tracing::info!(backend = %self.member.backend.upstream, "drained backend removed: its last tunnel ended");
        }
    }
}

impl Picked {
    pub(crate) fn upstream(&self) -> &Upstream {
        &self.member.backend.upstream
    }

    pub(crate) fn id(&self) -> BackendId {
        self.member.backend.id
    }

    /// The load unit, for the tunnel task to hold.
    pub(crate) fn into_load(self) -> impl Send + 'static {
        self.load
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
            tries: 3,
        }
    }
}

impl Backends {
    /// A set of `backends` (URLs or [`Backend`]s), balanced round-robin
    /// with nginx's passive health defaults and up to 3 tries.
    pub fn new<I>(backends: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Backend>,
    {
        let mut members: Vec<Arc<Member>> = Vec::new();
        for backend in backends {
            let backend = backend.into();
            if members.iter().all(|m| m.backend.id != backend.id) {
                members.push(Arc::new(Member::new(backend, 0)));
            }
        }
        Self {
            config: Arc::new(SetConfig::default()),
            state: Arc::new(SetState {
                members: RwLock::new(members.into()),
                stopped: CancellationToken::new(),
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
    pub fn active_health(mut self, active: ActiveHealth) -> Self {
        self.config().active = Some(active);
        self.start_probes();
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
    /// sets cookie `name` to the chosen backend's [`BackendId`] (16 hex
    /// digits: opaque, not its address; `Path=/; HttpOnly;
    /// SameSite=Lax`, a session cookie). A client that presents it returns
    /// to that backend while it is usable; otherwise the strategy chooses
    /// and the client gets a new cookie.
    pub fn sticky_cookie(mut self, name: &str) -> Self {
        self.config().sticky = Some(Sticky { name: name.into() });
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

    /// Add a backend at runtime; `false` if one with the same URL is
    /// already in the set. It takes tunnels at once (ramping up under
    /// [slow start](Self::slow_start)).
    pub fn insert(&self, backend: impl Into<Backend>) -> bool {
        let backend = backend.into();
        let upstream = backend.upstream.clone();
        {
            let mut members = self.state.write();
            if members.iter().any(|m| m.backend.id == backend.id) {
                return false;
            }
            let mut list = members.to_vec();
            list.push(Arc::new(Member::new(backend, now())));
            *members = list.into();
        }
        tracing::info!(backend = %upstream, "backend added");
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
        member.draining.store(true, Ordering::Relaxed);
        tracing::info!(backend = %member.backend.upstream, open = member.open(), "backend draining");
        if member.open() == 0 {
            self.state.take(id);
        }
        true
    }

    /// Follow a [`Discover`] stream of backends: `Change::Insert(key,
    /// backend)` adds one (replacing the backend that key named before),
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
    /// or counting load; `None` when none is usable. For diagnostics,
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
            .map(|m| {
                let until = m.down_until.load(Ordering::Relaxed);
                BackendStatus {
                    id: m.backend.id,
                    upstream: m.backend.upstream.clone(),
                    weight: m.backend.weight,
                    backup: m.backend.backup,
                    open: m.open(),
                    up: m.probe_up() && !(passive && until != 0 && now < until),
                    draining: m.draining.load(Ordering::Relaxed),
                    transitions: m.transitions.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Whether passive checks apply: not to a lone backend (nginx).
    fn passive_applies(&self, members: &[Arc<Member>]) -> bool {
        self.config.passive.max_fails > 0 && members.len() > 1
    }

    /// Spawn the probes of members that have none, if there is a runtime.
    fn start_probes(&self) {
        let Some(active) = &self.config.active else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for member in self.state.read().iter() {
            if !member.probing.swap(true, Ordering::Relaxed) {
                runtime.spawn(health::probe_loop(
                    member.clone(),
                    active.clone(),
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
        if self.config.active.is_some() {
            self.start_probes();
        }
        let members = self.state.read();
        let passive = self.passive_applies(&members);
        let now = now();
        let slow_start = self.config.slow_start;
        let mut candidates: Vec<Candidate<'_>> = Vec::with_capacity(members.len());
        for backup in [false, true] {
            candidates.extend(
                members
                    .iter()
                    .filter(|m| m.backend.backup == backup && !tried.contains(&m.backend.id))
                    .filter(|m| m.usable(now, passive))
                    .map(|m| Candidate {
                        member: m,
                        weight: m.weight(now, slow_start),
                    }),
            );
            if !candidates.is_empty() {
                break;
            }
        }
        let sticky = self.config.sticky.as_ref();
        let wanted = sticky
            .and_then(|s| crate::admit::cookie(request, &s.name))
            .and_then(|v| BackendId::parse(&v));
        while !candidates.is_empty() {
            let i = wanted
                .and_then(|id| candidates.iter().position(|c| c.id() == id))
                .unwrap_or_else(|| {
                    self.config
                        .strategy
                        .pick(request, &candidates)
                        .min(candidates.len() - 1)
                });
            let member = candidates[i].member.clone();
            let before = member.open.fetch_add(1, Ordering::Relaxed);
            if member.backend.max_conns.is_some_and(|max| before >= max) {
                // Filled up since it was listed.
                member.open.fetch_sub(1, Ordering::Relaxed);
                candidates.swap_remove(i);
                continue;
            }
            let cookie = sticky
                .filter(|_| wanted != Some(member.backend.id))
                .map(|s| sticky_cookie(&s.name, member.backend.id));
            let load = Load {
                member: member.clone(),
                set: Arc::downgrade(&self.state),
            };
            return Some((Picked { member, load }, cookie));
        }
        None
    }

    /// Count a failed handshake attempt on `picked` (passive health).
    pub(crate) fn failed(&self, picked: &Picked) {
        let passive = self.config.passive;
        let member = &picked.member;
        if passive.max_fails == 0 || !self.passive_applies(&self.state.read()) {
            return;
        }
        let now_instant = Instant::now();
        let mut fails = member.fails.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, window) = &mut *fails;
        if window.is_none_or(|start| now_instant.duration_since(start) > passive.fail_timeout) {
            *count = 0;
            *window = Some(now_instant);
        }
        *count += 1;
        if *count >= passive.max_fails {
            let failed = *count;
            *count = 0;
            *window = None;
            drop(fails);
            let until = now() + passive.fail_timeout.as_nanos() as u64;
            if member.down_until.swap(until, Ordering::Relaxed) == 0 {
                member.transitions.fetch_add(1, Ordering::Relaxed);
                crate::metrics::backend_transition(&member.backend.upstream, false);
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
    }

    /// Count a good handshake on `picked`: its failure count starts over.
    pub(crate) fn succeeded(&self, picked: &Picked) {
        let mut fails = picked
            .member
            .fails
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *fails = (0, None);
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

fn sticky_cookie(name: &str, id: BackendId) -> HeaderValue {
    HeaderValue::from_str(&format!("{name}={id}; Path=/; HttpOnly; SameSite=Lax"))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-sticky-cookie-name=1"))
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
        Self::new([upstream])
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
    /// Its identity (what a sticky cookie holds).
    pub id: BackendId,
    /// Its URL.
    pub upstream: Upstream,
    /// Its configured weight.
    pub weight: u32,
    /// Whether it is a backup.
    pub backup: bool,
    /// Open tunnels, including handshakes under way.
    pub open: usize,
    /// Up by both health checks (a full backend is still up).
    pub up: bool,
    /// Draining: no new tunnels, leaves when its last one ends.
    pub draining: bool,
    /// How often it went down or came back up.
    pub transitions: u64,
}
