//! How a backend is chosen among the usable ones.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::request::Parts;

use super::member::Member;
use super::{Backend, BackendId};
use crate::client::Key;

/// Chooses one backend for a handshake among the usable candidates.
///
/// The set calls it with the backends that may take a tunnel right now
/// (up, not draining, not full; primaries, or backups when no primary is
/// usable), never an empty slice, and uses the candidate at the returned
/// index (an index out of range is taken as the last). When a connect
/// fails and the handshake is retried, it is called again without the
/// backends already tried.
///
/// # Example
///
/// A custom strategy: the backend named in a header, else the least
/// loaded.
///
/// ```
/// use http::request::Parts;
/// use wsproxy::balance::{Backends, Candidate, LeastConn, Strategy};
///
/// #[derive(Debug, Default)]
/// struct Pinned(LeastConn);
///
/// impl Strategy for Pinned {
///     fn pick(&self, request: &Parts, candidates: &[Candidate<'_>]) -> usize {
///         let wanted = request.headers.get("x-backend").and_then(|v| v.to_str().ok());
///         candidates
///             .iter()
///             .position(|c| Some(c.backend().upstream().authority()) == wanted)
///             .unwrap_or_else(|| self.0.pick(request, candidates))
///     }
/// }
///
/// let backends = Backends::new([
///     "ws://127.0.0.1:9001".parse().unwrap(),
///     "ws://127.0.0.1:9002".parse().unwrap(),
/// ])
/// .strategy(Pinned::default());
/// # drop(backends);
/// ```
pub trait Strategy: Send + Sync + 'static {
    /// The index in `candidates` of the backend for `request`.
    fn pick(&self, request: &Parts, candidates: &[Candidate<'_>]) -> usize;
}

impl<S: Strategy + ?Sized> Strategy for Box<S> {
    fn pick(&self, request: &Parts, candidates: &[Candidate<'_>]) -> usize {
        (**self).pick(request, candidates)
    }
}

impl<S: Strategy + ?Sized> Strategy for Arc<S> {
    fn pick(&self, request: &Parts, candidates: &[Candidate<'_>]) -> usize {
        (**self).pick(request, candidates)
    }
}

/// A backend a [`Strategy`] may choose.
#[derive(Clone, Copy)]
pub struct Candidate<'a> {
    pub(crate) member: &'a Arc<Member>,
    pub(crate) weight: u32,
}

impl Candidate<'_> {
    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.member.backend
    }

    /// Its identity.
    pub fn id(&self) -> BackendId {
        self.member.backend.id
    }

    /// Its weight now: the configured one, or less while it is in
    /// [slow start](super::Backends::slow_start).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Its open tunnels, including handshakes under way to it.
    pub fn open(&self) -> usize {
        self.member.open()
    }

    /// Whether `self` carries less load than `other` relative to weight
    /// (open / weight, compared without division).
    fn lighter_than(&self, other: &Candidate<'_>) -> bool {
        (self.open() as u64) * u64::from(other.weight)
            < (other.open() as u64) * u64::from(self.weight)
    }
}

impl fmt::Debug for Candidate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("upstream", &self.member.backend.upstream.to_string())
            .field("weight", &self.weight)
            .field("open", &self.open())
            .finish()
    }
}

/// Smooth weighted round-robin (nginx's algorithm): over any window of
/// the total weight, each backend gets its weight's share, interleaved
/// (weights 5, 1, 1 give `a a b a c a a`, never five in a row). The
/// default strategy.
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// The running "current weight" of each backend.
    current: Mutex<HashMap<BackendId, i64, BuildHasherDefault<IdHasher>>>,
}

/// A [`BackendId`] is already a hash of the URL: use it as it is.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl RoundRobin {
    /// A round-robin with no history.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for RoundRobin {
    fn pick(&self, _: &Parts, candidates: &[Candidate<'_>]) -> usize {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        // Backends that left the set leave their entry behind; forget them
        // now and then.
        if current.len() > 2 * candidates.len() + 16 {
            current.retain(|id, _| candidates.iter().any(|c| c.id() == *id));
        }
        let mut total = 0i64;
        let mut best = (0, i64::MIN);
        for (i, candidate) in candidates.iter().enumerate() {
            let weight = i64::from(candidate.weight);
            let value = current.entry(candidate.id()).or_insert(0);
            *value += weight;
            total += weight;
            if *value > best.1 {
                best = (i, *value);
            }
        }
        if let Some(value) = current.get_mut(&candidates[best.0].id()) {
            *value -= total;
        }
        best.0
    }
}

/// The backend with the fewest open tunnels relative to its weight; ties
/// go round-robin. Open tunnels count from selection to the tunnel's end
/// (not only in-flight handshakes), so long-lived WebSockets balance.
#[derive(Debug, Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl LeastConn {
    /// A least-connections strategy.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for LeastConn {
    fn pick(&self, _: &Parts, candidates: &[Candidate<'_>]) -> usize {
        let n = candidates.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        for k in 1..n {
            let i = (start + k) % n;
            if candidates[i].lighter_than(&candidates[best]) {
                best = i;
            }
        }
        best
    }
}

/// Power of two random choices: two distinct candidates at random, the
/// one with fewer open tunnels relative to weight. Nearly as even as
/// [`LeastConn`], without every proxy instance herding onto the same
/// least-loaded backend.
#[derive(Debug, Default)]
pub struct PowerOfTwo {
    _priv: (),
}

impl PowerOfTwo {
    /// A power-of-two-choices strategy.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for PowerOfTwo {
    fn pick(&self, _: &Parts, candidates: &[Candidate<'_>]) -> usize {
        let n = candidates.len();
        if n == 1 {
            return 0;
        }
        let a = fastrand::usize(..n);
        let mut b = fastrand::usize(..n - 1);
        if b >= a {
            b += 1;
        }
        if candidates[b].lighter_than(&candidates[a]) {
            b
        } else {
            a
        }
    }
}

/// Consistent hashing on a [`Key`] of the request (client IP, header,
/// cookie, query parameter, path or your own).
///
/// Rendezvous (highest random weight) hashing: each backend scores
/// `hash(key, backend id)` and the best score wins. Removing one of N
/// backends moves only the keys it had; adding one moves about 1/(N+1) of
/// the keys, all to the new one; a backend that is down passes its keys to
/// their second choice and gets them back when it recovers. Scores are
/// weighted (a backend of weight 2 gets twice the keys) and depend only on
/// the key and the backend URLs, so every proxy instance with the same
/// list chooses alike, with no shared state. Cost: one hash per candidate
/// per handshake (see BENCHMARKS.md).
///
/// A request without the key (no such header, say) goes to a random
/// candidate.
///
/// Unlike nginx's `ip_hash`, which hashes only the first three octets of
/// an IPv4 address (so a whole /24, e.g. everyone behind one carrier NAT
/// range, lands on one backend), [`Key::client_ip`] hashes the whole
/// address, IPv4 or IPv6: clients spread per address, and one client
/// keeps its backend while its address stays the same.
///
/// # Example
///
/// ```
/// use wsproxy::admit::Key;
/// use wsproxy::balance::{Backends, ConsistentHash};
///
/// let backends = Backends::new([
///     "ws://127.0.0.1:9001".parse().unwrap(),
///     "ws://127.0.0.1:9002".parse().unwrap(),
/// ])
/// // Same room, same backend; no backend above 1.25 × the average load.
/// .strategy(ConsistentHash::new(Key::query("room")).bounded_load(1.25));
/// # drop(backends);
/// ```
#[derive(Debug)]
pub struct ConsistentHash {
    key: Key,
    bound: Option<f64>,
}

impl ConsistentHash {
    /// Hash on `key`, with no load bound.
    pub fn new(key: Key) -> Self {
        Self { key, bound: None }
    }

    /// Consistent hashing with bounded loads: a backend already at
    /// `ceil(factor × average open tunnels)` is passed over for the key's
    /// next choice (default: no bound; `factor` below 1 is taken as 1).
    /// Keys then stay put while load is even and spill over only from hot
    /// backends.
    pub fn bounded_load(mut self, factor: f64) -> Self {
        self.bound = Some(if factor.is_nan() {
            1.0
        } else {
            factor.max(1.0)
        });
        self
    }
}

impl Strategy for ConsistentHash {
    fn pick(&self, request: &Parts, candidates: &[Candidate<'_>]) -> usize {
        let Some(key) = self.key.of(request) else {
            return fastrand::usize(..candidates.len());
        };
        let key = twox_hash::XxHash64::oneshot(0, key.as_bytes());
        let cap = self.bound.map(|factor| {
            let total: usize = candidates.iter().map(Candidate::open).sum();
            let average = (total + 1) as f64 / candidates.len() as f64;
            (factor * average).ceil() as usize
        });
        // With equal weights the ranking is that of the hashes alone: no
        // logarithm needed.
        // Configured weights, not slow start's: a key must not wander while
        // a backend ramps up, and instances that saw it come up at
        // different times must agree.
        let weight = |c: &Candidate<'_>| c.member.base_weight();
        let equal = candidates
            .iter()
            .all(|c| weight(c) == weight(&candidates[0]));
        let mut best: Option<(usize, f64)> = None;
        for (i, candidate) in candidates.iter().enumerate() {
            if cap.is_some_and(|cap| candidate.open() >= cap) {
                continue;
            }
            let score = if equal {
                unit(key, candidate.id())
            } else {
                score(key, candidate.id(), weight(candidate))
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        // With a cap of at least the average, someone is under it.
        best.map_or(0, |(i, _)| i)
    }
}

/// The weighted rendezvous score of `backend` for a key hashed to `key`:
/// `-weight / ln(u)` with `u` uniform in (0, 1) from both hashes.
fn score(key: u64, backend: BackendId, weight: u32) -> f64 {
    -f64::from(weight) / unit(key, backend).ln()
}

/// A number uniform in (0, 1) from the key's and the backend's hashes.
fn unit(key: u64, backend: BackendId) -> f64 {
    let mixed = mix(key ^ backend.0.rotate_left(29));
    ((mixed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// The splitmix64 finaliser: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
