//! Bounds for everything a test waits for.

use std::future::Future;
use std::time::Duration;

/// Generous bound for anything a test waits for.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Await `future` for at most [`LIMIT`], panicking with `what` otherwise.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Wait until `condition` holds, polling every 10 ms, for at most `limit`.
pub async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}
