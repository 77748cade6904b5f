//! A handle over the open tunnels of one or more proxies: how many are
//! open, and shutting them down.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::drain::{CloseSignal, Drain};
use crate::outcome::{End, EndKind, Totals};

/// A cheap, cloneable handle over the tunnels of one or more proxies.
///
/// Every task a proxy spawns (the relay of each tunnel, the backend
/// connection of a relayed refusal) is tracked here, so a shutdown can wait
/// for all of them and nothing outlives it. Share one handle between
/// several layers with
/// [`WebSocketProxyLayer::tunnels`](crate::WebSocketProxyLayer::tunnels).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use wsproxy::{Tunnels, WebSocketProxyLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tunnels = Tunnels::new();
/// let layer = WebSocketProxyLayer::new("ws://127.0.0.1:9001".parse().unwrap())
///     .tunnels(tunnels.clone());
/// assert_eq!(tunnels.open(), 0);
///
/// // On shutdown: refuse new upgrades with 503, send every open
/// // WebSocket Close 1001, give the closing handshakes 5 s, then close
/// // what is left.
/// tunnels.shutdown(Duration::from_secs(5)).await;
/// assert_eq!(tunnels.stats().opened, 0);
/// assert!(tunnels.is_draining());
/// # drop(layer);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Tunnels {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    open: AtomicUsize,
    draining: AtomicBool,
    /// Held while deciding to admit a tunnel and while a shutdown starts,
    /// so that no tunnel is admitted after `shutdown` saw none left.
    admission: Mutex<()>,
    tasks: TaskTracker,
    /// Closed when a shutdown starts: tunnels close gracefully, and hard
    /// at its deadline.
    shutdown: Arc<CloseSignal>,
    stats: Mutex<TunnelStats>,
}

impl Tunnels {
    /// A handle with no tunnels.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of tunnels open right now: from the 101 sent to the
    /// client until both sides are closed.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Whether [`shutdown`](Self::shutdown) was called: new upgrades are
    /// answered with `503 Service Unavailable`.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Stop claiming new upgrades (they get `503`) and drain the open
    /// tunnels: each WebSocket gets Close `1001` ("going away") at the next
    /// frame boundary of each direction (the client's unmasked, the
    /// backend's masked, never inside a frame), the proxy waits for both
    /// closing handshakes, and whatever is still open at `deadline` is
    /// closed hard (`Duration::MAX`: never, as nginx's `SIGQUIT` waits).
    /// Resolves once every task of the proxy has ended.
    ///
    /// A tunnel whose closing handshake was already under way is left to
    /// finish it. Ordinary requests keep reaching the inner service;
    /// stopping the server is the server's job (e.g. axum's
    /// `with_graceful_shutdown`). Calling it again with an earlier
    /// deadline brings the deadline earlier (a fast shutdown after a slow
    /// one: nginx's `SIGTERM` after `SIGQUIT`); otherwise it changes
    /// nothing but waits again.
    pub fn shutdown(&self, deadline: Duration) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        {
            let _admission = shared
                .admission
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shared.draining.store(true, Ordering::Relaxed);
            shared.tasks.close();
        }
        shared.shutdown.close(deadline);
        async move {
            tracing::info!(
                open = shared.open.load(Ordering::Relaxed),
                "shutting down: closing tunnels with 1001"
            );
            shared.tasks.wait().await;
        }
    }

    /// Resolves once a [shutdown](Self::shutdown) has started (from any
    /// clone of this handle) and every task of the proxy has ended; it
    /// starts nothing itself. For a runtime that hosts tunnels and must
    /// run until they are gone, while another part of the program
    /// decides when and with what deadline to shut down.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use wsproxy::Tunnels;
    ///
    /// let tunnels = Tunnels::new();
    /// let drained = tunnels.drained();
    /// tunnels.shutdown(Duration::from_secs(5)).await;
    /// drained.await; // no tunnel was open: at once
    /// # }
    /// ```
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            shared.shutdown.closed().await;
            shared.tasks.wait().await;
        }
    }

    /// Counters over every tunnel this handle has tracked.
    pub fn stats(&self) -> TunnelStats {
        let mut stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        stats.open = self.open();
        stats
    }

    /// Count a tunnel that ended.
    pub(crate) fn record(&self, end: &End, totals: &Totals) {
        let mut stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ended = &mut stats.ended;
        *match end.kind() {
            EndKind::ClientClose => &mut ended.client_close,
            EndKind::BackendClose => &mut ended.backend_close,
            EndKind::Idle => &mut ended.idle,
            EndKind::Keepalive => &mut ended.keepalive,
            EndKind::Limit => &mut ended.limit,
            EndKind::Shutdown => &mut ended.shutdown,
            EndKind::BackendDown => &mut ended.backend_down,
            EndKind::Expired => &mut ended.expired,
            EndKind::Error => &mut ended.error,
        } += 1;
        let TunnelStats {
            client, backend, ..
        } = &mut *stats;
        for (side, direction) in [(client, &totals.up), (backend, &totals.down)] {
            side.bytes += direction.bytes;
            side.frames += direction.frames;
            side.messages += direction.messages;
            if let Some(code) = direction.close_code {
                *side.close_codes.entry(code).or_default() += 1;
            }
        }
    }

    /// Run `task` as one a shutdown waits for.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.tasks.spawn(task);
    }

    /// What a tunnel watches to learn of a shutdown.
    pub(crate) fn drain(&self) -> Drain {
        Drain::new(self.shared.shutdown.clone())
    }

    /// Admit one tunnel unless a shutdown has started. The returned guard
    /// counts the tunnel as open, and keeps `shutdown` from resolving,
    /// until it drops: move it into the relay task.
    pub(crate) fn admit(&self, http2: bool) -> Option<TunnelGuard> {
        let _admission = self
            .shared
            .admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.draining.load(Ordering::Relaxed) {
            return None;
        }
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        let mut stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stats.opened += 1;
        stats.opened_h2 += u64::from(http2);
        drop(stats);
        Some(TunnelGuard {
            shared: self.shared.clone(),
            _task: self.shared.tasks.token(),
        })
    }
}

/// Counts one open tunnel; moves into the relay task.
#[derive(Debug)]
pub(crate) struct TunnelGuard {
    shared: Arc<Shared>,
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counters over the tunnels of a [`Tunnels`] handle, from
/// [`Tunnels::stats`].
///
/// Frame, message and byte counts are added when a tunnel ends, so they
/// cover ended tunnels only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TunnelStats {
    /// Tunnels open now.
    pub open: usize,
    /// Tunnels opened (a `101`, or over HTTP/2 a `200`, sent to the
    /// client) since the handle was created.
    pub opened: u64,
    /// Of those, the ones whose client spoke HTTP/2 (RFC 8441).
    pub opened_h2: u64,
    /// Why the ended tunnels ended.
    pub ended: EndCounts,
    /// What clients sent.
    pub client: SideStats,
    /// What backends sent.
    pub backend: SideStats,
}

/// How many tunnels ended for each reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndCounts {
    /// The client closed first (Close frame or TCP close).
    pub client_close: u64,
    /// The backend closed first.
    pub backend_close: u64,
    /// No traffic either way for the idle timeout.
    pub idle: u64,
    /// A peer did not answer a keepalive ping.
    pub keepalive: u64,
    /// A peer broke a message limit.
    pub limit: u64,
    /// A shutdown closed it.
    pub shutdown: u64,
    /// Its backend was marked down or removed, with
    /// [`Backends::close_tunnels_when_down`](crate::balance::Backends::close_tunnels_when_down).
    pub backend_down: u64,
    /// What admitted it expired ([`Expires`](crate::admit::Expires)): Close
    /// 1008 to the client.
    pub expired: u64,
    /// An I/O error (e.g. a connection reset) on either side.
    pub error: u64,
}

/// What one side sent, over ended tunnels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SideStats {
    /// Bytes forwarded to the other side.
    pub bytes: u64,
    /// Frames.
    pub frames: u64,
    /// Complete data messages.
    pub messages: u64,
    /// Status codes of the Close frames this side sent, and how often.
    pub close_codes: BTreeMap<u16, u64>,
}
