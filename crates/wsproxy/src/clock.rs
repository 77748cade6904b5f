//! One process-wide clock in nanoseconds, for times kept in atomics (when
//! a backend came up, when a connection went idle) and compared across
//! tasks and threads.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| Instant::now() - Duration::from_nanos(1))
}

/// Nanoseconds since the first call (a process-wide epoch), never 0.
pub(crate) fn now() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// `duration` in nanoseconds, saturating far beyond any timeout.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().min(u128::from(u64::MAX / 4)) as u64
}

/// The instant `at` nanoseconds after the epoch.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn instant(at: u64) -> Instant {
    epoch() + Duration::from_nanos(at)
}
