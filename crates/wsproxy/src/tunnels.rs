//! A handle over the open tunnels of one or more proxies: how many are
//! open, and shutting them down.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
/// // On shutdown: refuse new upgrades with 503, give open tunnels 5 s to
/// // end, then close them.
/// tunnels.shutdown(Duration::from_secs(5)).await;
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
    close: CancellationToken,
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

    /// Stop claiming new upgrades (they get `503`), wait up to `deadline`
    /// for open tunnels to end on their own, then close the rest, and
    /// resolve once every task of the proxy has ended.
    ///
    /// Ordinary requests keep reaching the inner service; stopping the
    /// server is the server's job (e.g. axum's `with_graceful_shutdown`).
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
        async move {
            if tokio::time::timeout(deadline, shared.tasks.wait())
                .await
                .is_err()
            {
                tracing::info!(
                    open = shared.open.load(Ordering::Relaxed),
                    "shutdown deadline reached, closing tunnels"
                );
                shared.close.cancel();
                shared.tasks.wait().await;
            }
        }
    }

    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.tasks.spawn(task)
    }

    /// A token cancelled when open tunnels must close now.
    pub(crate) fn closing(&self) -> CancellationToken {
        self.shared.close.clone()
    }

    /// Admit one tunnel unless a shutdown has started. The returned guard
    /// counts the tunnel as open, and keeps `shutdown` from resolving,
    /// until it drops: move it into the relay task.
    pub(crate) fn admit(&self) -> Option<TunnelGuard> {
        let _admission = self
            .shared
            .admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.draining.load(Ordering::Relaxed) {
            return None;
        }
        self.shared.open.fetch_add(1, Ordering::Relaxed);
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
