//! One backend of a set and what is known of it: its live settings, open
//! tunnels, passive and active health, draining, slow start.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Backend;
use crate::clock::now;
use crate::drain::CloseSignal;

/// One backend of the set and what is known of it.
pub(crate) struct Member {
    /// Its URL and id; the settings below may change at runtime.
    pub(crate) backend: Backend,
    pub(super) weight: AtomicU32,
    pub(super) backup: AtomicBool,
    /// `usize::MAX`: no cap.
    pub(super) max_conns: AtomicUsize,
    pub(super) open: AtomicUsize,
    /// Passively down until this time (ns since the epoch of [`now`]); 0:
    /// not down.
    pub(super) down_until: AtomicU64,
    /// Failures in the current window, and when the window started.
    pub(super) fails: Mutex<(u32, Option<Instant>)>,
    pub(super) probe_up: AtomicBool,
    pub(super) draining: AtomicBool,
    /// When it last came (back) up (ns since the epoch of [`now`]; 0: in
    /// the set from the start), for slow start.
    pub(super) up_since: AtomicU64,
    pub(super) transitions: AtomicU64,
    pub(super) probing: AtomicBool,
    pub(crate) removed: CancellationToken,
    pub(super) close: Mutex<Arc<CloseSignal>>,
    /// Its URL as a metrics label, made at its first use and shared after.
    label: std::sync::OnceLock<Arc<str>>,
}

impl Member {
    pub(super) fn new(backend: Backend, up_since: u64) -> Self {
        Self {
            weight: AtomicU32::new(backend.weight),
            backup: AtomicBool::new(backend.backup),
            max_conns: AtomicUsize::new(backend.max_conns.unwrap_or(usize::MAX)),
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
            label: std::sync::OnceLock::new(),
        }
    }

    /// Its URL as a metrics label (allocated once, not per handshake).
    pub(crate) fn label(&self) -> Arc<str> {
        self.label
            .get_or_init(|| self.backend.upstream.to_string().into())
            .clone()
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Its configured weight (no slow start).
    pub(crate) fn base_weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(super) fn backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    pub(super) fn max_conns(&self) -> usize {
        self.max_conns.load(Ordering::Relaxed)
    }

    /// Take the settings of `backend` (same URL), keeping state and load.
    pub(super) fn update(&self, backend: &Backend) {
        self.weight.store(backend.weight, Ordering::Relaxed);
        self.backup.store(backend.backup, Ordering::Relaxed);
        self.max_conns
            .store(backend.max_conns.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Whether it was removed or marked down since it was listed (checked
    /// after its close signal is taken, so that a mark-down that swapped
    /// the signal first is seen).
    pub(super) fn went_away(&self, passive: bool, now: u64) -> bool {
        self.removed.is_cancelled() || !self.probe_up() || self.passively_down(passive, now)
    }

    /// Whether passive checks (if they apply) skip it at `now`.
    pub(super) fn passively_down(&self, passive: bool, now: u64) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        passive && until != 0 && now < until
    }

    /// Count a transition down or up (which starts slow start).
    pub(super) fn transition(&self, up: bool) {
        if up {
            self.up_since.store(now(), Ordering::Relaxed);
        }
        self.transitions.fetch_add(1, Ordering::Relaxed);
        crate::metrics::backend_transition(&self.backend.upstream, up);
    }

    pub(crate) fn probe_up(&self) -> bool {
        self.probe_up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_probe_up(&self, up: bool) {
        self.probe_up.store(up, Ordering::Relaxed);
        self.transition(up);
    }

    /// Close this backend's open tunnels (Close 1001, hard after `grace`);
    /// tunnels opened later are not affected.
    pub(crate) fn close_tunnels(&self, grace: Duration) {
        let signal =
            std::mem::take(&mut *self.close.lock().unwrap_or_else(PoisonError::into_inner));
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
    pub(super) fn usable(&self, now: u64, passive: bool) -> bool {
        if self.draining.load(Ordering::Relaxed) || !self.probe_up() {
            return false;
        }
        if self.open() >= self.max_conns() {
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
                self.transition(true);
                tracing::info!(backend = %self.backend.upstream, "backend back in rotation after fail_timeout");
            }
        }
        true
    }

    /// Its weight at `now`, ramped up during slow start.
    pub(super) fn weight(&self, now: u64, slow_start: Option<Duration>) -> u32 {
        let weight = self.weight.load(Ordering::Relaxed);
        let Some(period) = slow_start else {
            return weight;
        };
        let up_since = self.up_since.load(Ordering::Relaxed);
        if up_since == 0 {
            // In the set from the start, never down: no ramp.
            return weight;
        }
        let since = now.saturating_sub(up_since);
        let period = period.as_nanos() as u64;
        if period == 0 || since >= period {
            return weight;
        }
        ((u128::from(weight) * u128::from(since) / u128::from(period)) as u32).max(1)
    }
}
