//! The signals that close open tunnels gracefully: a shutdown of the
//! proxy, or their backend going down. Each comes with a deadline after
//! which what is still open is closed hard.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Closes every tunnel watching it: Close 1001 at once, hard at the
/// deadline.
#[derive(Debug, Default)]
pub(crate) struct CloseSignal {
    token: CancellationToken,
    deadline: Mutex<Option<Instant>>,
    /// Cancelled when a later call brings the deadline earlier: tunnels
    /// then read it again.
    hurry: CancellationToken,
}

impl CloseSignal {
    /// Close every tunnel watching this signal: Close 1001 now, hard at
    /// `now + grace`. A later call can only bring the deadline earlier
    /// (a fast shutdown after a slow one), never later.
    pub(crate) fn close(&self, grace: Duration) {
        let now = Instant::now();
        // `Duration::MAX` (no deadline) would overflow: a century will do.
        let deadline = now
            .checked_add(grace)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        {
            let mut current = self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
            match *current {
                None => *current = Some(deadline),
                Some(earlier) if earlier <= deadline => {}
                Some(_) => {
                    *current = Some(deadline);
                    self.hurry.cancel();
                }
            }
        }
        self.token.cancel();
    }

    /// Resolves once a close has started.
    pub(crate) async fn closed(&self) {
        self.token.cancelled().await;
    }

    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// When tunnels still open are closed hard (now if not closed yet).
    fn deadline(&self) -> Instant {
        self.deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_else(Instant::now)
    }
}

/// What one tunnel watches: the proxy's shutdown and, if its backend set
/// closes tunnels when a backend goes down, its backend's signal.
///
/// It holds child tokens of the shared ones: a relay polls them on every
/// wake-up, and polling a token locks it, so each tunnel polls its own
/// rather than every tunnel of every worker locking the same one.
#[derive(Debug)]
pub(crate) struct Drain {
    shutdown: (Arc<CloseSignal>, CancellationToken),
    backend: Option<(Arc<CloseSignal>, CancellationToken)>,
    expires: Option<Instant>,
}

impl Drain {
    /// Watch `shutdown`.
    pub(crate) fn new(shutdown: Arc<CloseSignal>) -> Self {
        let token = shutdown.token.child_token();
        Drain {
            shutdown: (shutdown, token),
            backend: None,
            expires: None,
        }
    }

    /// Also end at `at` (what admitted the tunnel expires then).
    pub(crate) fn with_expiry(mut self, at: Option<Instant>) -> Self {
        self.expires = at;
        self
    }

    /// When the tunnel's admission expires, if it does.
    pub(crate) fn expires(&self) -> Option<Instant> {
        self.expires
    }

    /// Also end when `signal` closes the backend's tunnels.
    pub(crate) fn with_backend(mut self, signal: Arc<CloseSignal>) -> Self {
        let token = signal.token.child_token();
        self.backend = Some((signal, token));
        self
    }

    /// Resolves when a shutdown starts.
    pub(crate) fn shutdown(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shutdown.1.cancelled()
    }

    /// Resolves when the backend's tunnels are closed (never without a
    /// backend signal).
    pub(crate) async fn backend_closed(&self) {
        match &self.backend {
            Some((_, token)) => token.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// When a started shutdown closes tunnels hard.
    pub(crate) fn deadline(&self) -> Instant {
        self.shutdown.0.deadline()
    }

    /// When a started backend close closes tunnels hard.
    pub(crate) fn backend_deadline(&self) -> Instant {
        self.backend
            .as_ref()
            .map_or_else(Instant::now, |(signal, _)| signal.deadline())
    }

    /// Resolves when a started shutdown's deadline was brought earlier
    /// (read [`deadline`](Self::deadline) again); only polled once the
    /// shutdown started.
    pub(crate) fn hurried(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shutdown.0.hurry.cancelled()
    }

    /// Resolves at the deadline of a started shutdown.
    pub(crate) async fn hard_close(&self) {
        self.shutdown().await;
        tokio::select! {
            () = tokio::time::sleep_until(self.deadline()) => {}
            () = self.hurried() => tokio::time::sleep_until(self.deadline()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_later_close_only_brings_the_deadline_earlier() {
        let signal = Arc::new(CloseSignal::default());
        let drain = Drain::new(signal.clone());
        signal.close(Duration::from_secs(60));
        let first = drain.deadline();
        signal.close(Duration::MAX);
        assert_eq!(drain.deadline(), first, "never later");
        assert!(drain.hurried().now_or_never().is_none());
        signal.close(Duration::ZERO);
        assert!(drain.deadline() <= Instant::now());
        assert!(drain.hurried().now_or_never().is_some(), "tunnels are told");
        // The hard close follows the earlier deadline.
        tokio::time::timeout(Duration::from_secs(30), drain.hard_close())
            .await
            .expect("closed hard at once");
    }
}
