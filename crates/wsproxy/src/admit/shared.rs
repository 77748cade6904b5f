//! [`SharedLimit`]: rate and connection limits kept in Redis, so that they
//! hold across every instance that shares it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER};
use http::request::Parts;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use super::admission::{Admission, Admitting, Refusal, Verdict};
use super::holds::Holds;
use super::layer::AdmitLayer;
use crate::client::Key;
use crate::settings::Rate;

/// Rate and connection limits in one round trip: every check first, then,
/// only if all pass, the rates charged and the leases taken (so a refused
/// handshake costs nothing of any budget). Time is the server's (`TIME`),
/// so instances' clocks need not agree.
///
/// KEYS: rate per key, rate in all, leases per key, leases in all.
/// ARGV: lease ms, lease id, per-key interval µs and tolerance µs, global
/// interval µs and tolerance µs (interval 0: no such rate), max per key,
/// max in all (-1: no such limit).
/// Returns {0} admitted, {1, wait µs} / {2, wait µs} over the rate per key
/// / in all, {3} / {4} at the connection limit per key / in all.
const CHECK: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local lease = tonumber(ARGV[1])
local tats = {}
for i, c in ipairs({{1, 3}, {2, 5}}) do
  local interval = tonumber(ARGV[c[2]])
  if interval > 0 then
    local tolerance = tonumber(ARGV[c[2] + 1])
    local tat = tonumber(redis.call('GET', KEYS[c[1]]))
    if not tat or tat < now then tat = now end
    if tat - now > tolerance then
      return {i, string.format('%.0f', tat - tolerance - now)}
    end
    tats[c[1]] = tat + interval
  end
end
for i, c in ipairs({{3, 7}, {4, 8}}) do
  local max = tonumber(ARGV[c[2]])
  if max >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[c[1]], '-inf', now_ms)
    if redis.call('ZCARD', KEYS[c[1]]) >= max then return {2 + i} end
  end
end
for k, tat in pairs(tats) do
  local ttl = math.max(1, math.ceil((tat - now) / 1000))
  redis.call('SET', KEYS[k], string.format('%.0f', tat), 'PX', string.format('%.0f', ttl))
end
for _, c in ipairs({{3, 7}, {4, 8}}) do
  if tonumber(ARGV[c[2]]) >= 0 then
    redis.call('ZADD', KEYS[c[1]], string.format('%.0f', now_ms + lease), ARGV[2])
    redis.call('PEXPIRE', KEYS[c[1]], lease * 2)
  end
end
return {0}
";

/// Renew leases: KEYS[i] holds lease ARGV[i + 1]; ARGV[1] is the lease in
/// ms. A lease a restarted server lost is added again.
const RENEW: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local expiry = string.format('%.0f', now_ms + lease)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], expiry, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease * 2)
end
return #KEYS
";

/// Leases renewed per script call.
const RENEW_BATCH: usize = 500;

/// Rate and connection limits shared by every instance that uses the same
/// Redis server (feature `redis`): two gateways, or two replicas of an app,
/// behind a load balancer then allow a client its budget once, not once
/// each.
///
/// - **Rates** (handshakes per second per client [`Key`] and in all) are
///   GCRA, as `RateLimit`: the same burst, the same
///   `429` with `Retry-After` in whole seconds, rounded up. One difference:
///   a handshake refused by one limit is charged to none (here every check
///   runs before anything is taken).
/// - **Open tunnels** per client and in all (`429` / `503`, as
///   [`ConnectionLimit`](super::ConnectionLimit)) are *leases*: each open
///   tunnel holds one in a sorted set, which this instance renews every
///   third of the [lease](Self::lease) while the tunnel is open and removes
///   when it ends. An instance that dies (`kill -9`, a lost machine) stops
///   renewing: its tunnels' permits are free again **at most one lease
///   (default 15 s) after its last renewal**.
///
/// A handshake costs one round trip (one script, however many limits); the
/// connection to Redis is one multiplexed connection, re-established when
/// lost.
///
/// # When Redis is down or slow
///
/// A check that fails, or has no answer within the
/// [timeout](Self::timeout) (default 250 ms), is decided by the policy:
/// by default the handshake is let on (fail open) after the
/// [fallback](Self::fallback) checks, e.g. the same limits kept by this
/// instance alone; with [`fail_closed`](Self::fail_closed) it is refused
/// with `503`. A handshake never waits longer than the timeout for Redis.
/// Logged once when Redis stops answering (WARN) and once when it answers
/// again (INFO); each failed check is counted in
/// `wsproxy_shared_limit_failures_total`.
///
/// Sticky-cookie secrets and consistent hashing need nothing shared: the
/// same backend list and secret choose the same backend on every instance.
///
/// # Example
///
/// ```
/// use wsproxy::admit::{ConnectionLimit, Key, Rate, SharedLimit};
///
/// let limit = SharedLimit::new("redis://127.0.0.1:6379/")
///     .unwrap()
///     .prefix("chat")
///     .rate_per_key(Key::client_ip(), Rate::per_second(5).burst(10))
///     .max_open_per_key(Key::client_ip(), 20)
///     // Redis down: each instance keeps the per-client limit alone.
///     .fallback(ConnectionLimit::new().max_open_per_key(Key::client_ip(), 20));
/// let layer = limit.layer();
/// # drop(layer);
/// ```
#[derive(Clone)]
#[must_use]
pub struct SharedLimit {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connection: OnceLock<ConnectionManager>,
    prefix: String,
    /// The keys every handshake names, made once: the rate in all, the
    /// open tunnels in all, and the stand-ins for a limit not set.
    fixed: FixedKeys,
    rate_per_key: Option<(Key, Rate)>,
    rate: Option<Rate>,
    max_per_key: Option<(Key, usize)>,
    max: Option<usize>,
    lease: Duration,
    timeout: Duration,
    fallback: Vec<Arc<dyn Admission>>,
    fail_closed: bool,
    check: redis::Script,
    renew: redis::Script,
    /// This instance's open leases: id, and the per-key set it is in.
    leases: Mutex<HashMap<Arc<str>, Option<String>>>,
    instance: String,
    next: AtomicU64,
    releases: mpsc::UnboundedSender<Release>,
    released: Mutex<Option<mpsc::UnboundedReceiver<Release>>>,
    /// Whether Redis answered the last time it was asked.
    up: AtomicBool,
}

impl Clone for Inner {
    /// The same settings, with leases and a connection of its own.
    fn clone(&self) -> Self {
        let (releases, released) = mpsc::unbounded_channel();
        Self {
            client: self.client.clone(),
            connection: OnceLock::new(),
            prefix: self.prefix.clone(),
            fixed: self.fixed.clone(),
            rate_per_key: self.rate_per_key.clone(),
            rate: self.rate,
            max_per_key: self.max_per_key.clone(),
            max: self.max,
            lease: self.lease,
            timeout: self.timeout,
            fallback: self.fallback.clone(),
            fail_closed: self.fail_closed,
            check: redis::Script::new(CHECK),
            renew: redis::Script::new(RENEW),
            leases: Mutex::default(),
            instance: format!("{:016x}", fastrand::u64(..)),
            next: AtomicU64::new(0),
            releases,
            released: Mutex::new(Some(released)),
            up: AtomicBool::new(true),
        }
    }
}

/// The keys of a prefix that do not depend on the client.
#[derive(Clone)]
struct FixedKeys {
    rate_all: String,
    conns_all: String,
    no_rate_key: String,
    no_conns_key: String,
}

impl FixedKeys {
    fn new(prefix: &str) -> Self {
        Self {
            rate_all: format!("{prefix}:rate:all"),
            conns_all: format!("{prefix}:conns:all"),
            no_rate_key: format!("{prefix}:rate:key:-"),
            no_conns_key: format!("{prefix}:conns:key:-"),
        }
    }
}

/// A lease to remove: its id and the per-key set it is in.
type Release = (Arc<str>, Option<String>);

impl SharedLimit {
    /// Limits kept in the Redis server at `url` (`redis://host:port/db`,
    /// `rediss://` not included); no limit yet. Nothing connects until the
    /// first handshake.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let (releases, released) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                connection: OnceLock::new(),
                prefix: "wsproxy".to_owned(),
                fixed: FixedKeys::new("wsproxy"),
                rate_per_key: None,
                rate: None,
                max_per_key: None,
                max: None,
                lease: Duration::from_secs(15),
                timeout: Duration::from_millis(250),
                fallback: Vec::new(),
                fail_closed: false,
                check: redis::Script::new(CHECK),
                renew: redis::Script::new(RENEW),
                leases: Mutex::default(),
                instance: format!("{:016x}", fastrand::u64(..)),
                next: AtomicU64::new(0),
                releases,
                released: Mutex::new(Some(released)),
                up: AtomicBool::new(true),
            }),
        })
    }

    fn inner_mut(&mut self) -> &mut Inner {
        // One configured after it was cloned becomes one of its own.
        Arc::make_mut(&mut self.inner)
    }

    /// Start every Redis key with `prefix` (default `wsproxy`): instances
    /// with the same prefix share their limits.
    pub fn prefix(mut self, prefix: &str) -> Self {
        let inner = self.inner_mut();
        inner.prefix = prefix.to_owned();
        inner.fixed = FixedKeys::new(prefix);
        self
    }

    /// Limit the handshakes of each `key` to `rate`.
    pub fn rate_per_key(mut self, key: Key, rate: Rate) -> Self {
        self.inner_mut().rate_per_key = Some((key, rate));
        self
    }

    /// Limit all handshakes together to `rate`.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.inner_mut().rate = Some(rate);
        self
    }

    /// At most `max` open tunnels per `key`; more are refused with `429`.
    pub fn max_open_per_key(mut self, key: Key, max: usize) -> Self {
        self.inner_mut().max_per_key = Some((key, max));
        self
    }

    /// At most `max` open tunnels in all; more are refused with `503`.
    pub fn max_open(mut self, max: usize) -> Self {
        self.inner_mut().max = Some(max);
        self
    }

    /// How long a lease on an open tunnel lasts unless renewed (default
    /// 15 s; renewed every third of it): the bound on how long a dead
    /// instance's tunnels still count.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.inner_mut().lease = lease.max(Duration::from_millis(30));
        self
    }

    /// Time allowed for Redis's answer (default 250 ms); past it the
    /// failure policy decides.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner_mut().timeout = timeout;
        self
    }

    /// While Redis fails, check handshakes with `admission` too (in the
    /// order added), e.g. the same limits kept by this instance alone.
    pub fn fallback(mut self, admission: impl Admission) -> Self {
        self.inner_mut().fallback.push(Arc::new(admission));
        self
    }

    /// While Redis fails, refuse handshakes with `503` instead of letting
    /// them on.
    pub fn fail_closed(mut self) -> Self {
        self.inner_mut().fail_closed = true;
        self
    }

    /// This limit as a layer.
    pub fn layer(self) -> AdmitLayer<Self> {
        AdmitLayer::new(self)
    }

    /// Leases this instance holds now (its open tunnels under a
    /// connection limit).
    pub fn leases(&self) -> usize {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl fmt::Debug for SharedLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("SharedLimit")
            .field("prefix", &inner.prefix)
            .field(
                "rate_per_key",
                &inner.rate_per_key.as_ref().map(|(k, r)| (k, r)),
            )
            .field("rate", &inner.rate)
            .field(
                "max_per_key",
                &inner.max_per_key.as_ref().map(|(k, m)| (k, m)),
            )
            .field("max", &inner.max)
            .field("lease", &inner.lease)
            .field("timeout", &inner.timeout)
            .field("fail_closed", &inner.fail_closed)
            .finish_non_exhaustive()
    }
}

impl Admission for SharedLimit {
    fn admit(&self, request: Parts) -> Admitting {
        let inner = self.inner.clone();
        Admitting::new(async move { inner.admit(request).await })
    }
}

/// GCRA's interval and tolerance of a rate, in µs.
fn gcra(rate: Option<Rate>) -> (u64, u64) {
    rate.map_or((0, 0), |rate| {
        let interval = u64::try_from(rate.interval().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        (interval, interval.saturating_mul(u64::from(rate.extra())))
    })
}

impl Inner {
    fn connection(self: &Arc<Self>) -> redis::RedisResult<ConnectionManager> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        let connection = self.connection.get_or_init(|| connection).clone();
        self.start_renewing();
        Ok(connection)
    }

    async fn admit(self: Arc<Self>, mut request: Parts) -> Verdict {
        let rate_key = self
            .rate_per_key
            .as_ref()
            .and_then(|(key, rate)| Some((key.of(&request)?, *rate)));
        let max_key = self
            .max_per_key
            .as_ref()
            .and_then(|(key, max)| Some((key.of(&request)?, *max)));
        let counts = max_key.is_some() || self.max.is_some();
        let id: Option<Arc<str>> = counts.then(|| {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            format!("{}:{n}", self.instance).into()
        });
        let p = &self.prefix;
        let lease_set = max_key
            .as_ref()
            .map(|(key, _)| format!("{p}:conns:key:{key}"));
        let (key_interval, key_tolerance) = gcra(rate_key.as_ref().map(|(_, rate)| *rate));
        let (all_interval, all_tolerance) = gcra(self.rate);
        let mut invocation = self.check.prepare_invoke();
        invocation
            .key(match &rate_key {
                Some((key, _)) => format!("{p}:rate:key:{key}"),
                None => self.fixed.no_rate_key.clone(),
            })
            .key(&self.fixed.rate_all)
            .key(
                lease_set
                    .clone()
                    .unwrap_or_else(|| self.fixed.no_conns_key.clone()),
            )
            .key(&self.fixed.conns_all)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(id.as_deref().unwrap_or("-"))
            .arg(key_interval)
            .arg(key_tolerance)
            .arg(all_interval)
            .arg(all_tolerance)
            .arg(
                max_key
                    .as_ref()
                    .map_or(-1, |(_, max)| i64::try_from(*max).unwrap_or(i64::MAX)),
            )
            .arg(
                self.max
                    .map_or(-1, |max| i64::try_from(max).unwrap_or(i64::MAX)),
            );
        let answer = match self.connection() {
            Ok(mut connection) => {
                // From here a lease may exist in Redis: released unless a tunnel
                // takes it.
                let mut pending = Pending {
                    releases: self.releases.clone(),
                    lease: id.clone().map(|id| (id, lease_set.clone())),
                };
                let answer = match tokio::time::timeout(
                    self.timeout,
                    invocation.invoke_async::<Vec<i64>>(&mut connection),
                )
                .await
                {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("no answer within {:?}", self.timeout)),
                };
                if answer.is_ok() {
                    // Answered: a lease was taken only if admitted, and then
                    // a `Lease` holds it.
                    pending.lease = None;
                }
                answer
            }
            Err(error) => Err(error.to_string()),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => return self.failed(request, &error).await,
        };
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("shared limits: Redis answers again");
        }
        let verdict = match answer.as_slice() {
            [0] => {
                if let Some(id) = id {
                    self.leases
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(id.clone(), lease_set.clone());
                    Holds::push(
                        &mut request.extensions,
                        Lease {
                            inner: self.clone(),
                            id,
                            set: lease_set,
                        },
                    );
                }
                Ok(())
            }
            [1, wait] => Err(too_many("rate limit per client reached", *wait)),
            [2, wait] => Err(too_many("rate limit reached", *wait)),
            [3] => Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "connection limit per client reached",
            )),
            _ => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached",
            )),
        };
        (request, verdict)
    }

    /// Redis failed: the policy decides.
    async fn failed(&self, mut request: Parts, error: &str) -> Verdict {
        crate::metrics::shared_limit_failed();
        if self.up.swap(false, Ordering::Relaxed) {
            let policy = if self.fail_closed {
                "refused with 503"
            } else if self.fallback.is_empty() {
                "let on"
            } else {
                "checked by this instance's own limits"
            };
            tracing::warn!(
                error,
                "shared limits: Redis does not answer; handshakes are {policy} until it does"
            );
        } else {
            tracing::debug!(error, "shared limits: Redis does not answer");
        }
        if self.fail_closed {
            return (
                request,
                Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shared limits unavailable",
                )),
            );
        }
        for check in &self.fallback {
            let (back, verdict) = check.admit(request).await;
            request = back;
            if verdict.is_err() {
                return (request, verdict);
            }
        }
        (request, Ok(()))
    }

    /// Renew this instance's leases every third of a lease, and remove
    /// those whose tunnels ended, in a task that ends with the limit.
    fn start_renewing(self: &Arc<Self>) {
        let Some(connection) = self.connection.get().cloned() else {
            return;
        };
        let Some(mut released) = self
            .released
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        // Releases need nothing of the limit (the last lease's release
        // comes as the limit itself goes): the task keeps what they need,
        // and ends when every sender is gone and the queue is empty.
        let releasing = Releasing {
            connection,
            all: self.fixed.conns_all.clone(),
            counts_all: self.max.is_some(),
            timeout: self.timeout * 4,
        };
        let weak: Weak<Inner> = Arc::downgrade(self);
        let every = self.lease / 3;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(inner) = weak.upgrade() {
                            inner.renew().await;
                        }
                    }
                    release = released.recv() => {
                        let Some(first) = release else { return };
                        let mut batch = vec![first];
                        while batch.len() < RENEW_BATCH
                            && let Ok(next) = released.try_recv()
                        {
                            batch.push(next);
                        }
                        releasing.release(batch).await;
                    }
                }
            }
        });
    }

    async fn renew(&self) {
        let leases: Vec<Release> = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, set)| (id.clone(), set.clone()))
            .collect();
        let Some(mut connection) = self.connection.get().cloned() else {
            return;
        };
        let all = &self.fixed.conns_all;
        let lease = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        for chunk in leases.chunks(RENEW_BATCH) {
            let mut invocation = self.renew.prepare_invoke();
            invocation.arg(lease);
            for (id, set) in chunk {
                if self.max.is_some() {
                    invocation.key(all).arg(&**id);
                }
                if let Some(set) = set {
                    invocation.key(set).arg(&**id);
                }
            }
            let renewed = tokio::time::timeout(
                self.timeout * 4,
                invocation.invoke_async::<i64>(&mut connection),
            )
            .await;
            if !matches!(renewed, Ok(Ok(_))) {
                tracing::debug!("shared limits: leases not renewed this time");
            }
        }
    }
}

/// What removing leases takes.
struct Releasing {
    connection: ConnectionManager,
    all: String,
    counts_all: bool,
    timeout: Duration,
}

impl Releasing {
    async fn release(&self, batch: Vec<Release>) {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        for (id, set) in &batch {
            if self.counts_all {
                pipe.cmd("ZREM").arg(&self.all).arg(&**id).ignore();
            }
            if let Some(set) = set {
                pipe.cmd("ZREM").arg(set).arg(&**id).ignore();
            }
        }
        // Not removed (Redis down): the lease runs out on its own.
        let _ = tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut connection)).await;
    }
}

/// A lease the script may have taken and no tunnel holds yet: released on
/// drop (a refusal, a timeout, a client gone while Redis answered) unless
/// it became a [`Lease`].
struct Pending {
    releases: mpsc::UnboundedSender<Release>,
    lease: Option<Release>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = self.releases.send(lease);
        }
    }
}

/// One open tunnel's lease, held in its [`Holds`].
struct Lease {
    inner: Arc<Inner>,
    id: Arc<str>,
    set: Option<String>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        let _ = self.inner.releases.send((self.id.clone(), self.set.take()));
    }
}

/// `429` with `Retry-After` for a rate that allows the next in `wait_us`.
fn too_many(reason: &'static str, wait_us: i64) -> Refusal {
    let wait = u64::try_from(wait_us).unwrap_or(0);
    let seconds = wait.div_ceil(1_000_000).max(1);
    Refusal::new(StatusCode::TOO_MANY_REQUESTS, reason)
        .header(RETRY_AFTER, HeaderValue::from(seconds))
}
