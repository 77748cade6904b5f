//! [`ConnectionLimit`]: open tunnels in all (`503`) and per client
//! (`429`), held for each tunnel's life.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::StatusCode;
use http::request::Parts;

use super::admission::{Admission, Admitting, Refusal};
use super::holds::Holds;
use super::layer::AdmitLayer;
use crate::client::Key;

/// Limits on open tunnels: in all (`503 Service Unavailable`) and per
/// client [`Key`] (`429 Too Many Requests`, nginx's `limit_conn`).
///
/// A handshake takes a permit for each limit; the permits are held for the
/// whole life of the tunnel it opens (see [`Holds`]) and given back when
/// the tunnel ends, however it ends. This is what tower's
/// `ConcurrencyLimit` cannot do: it gives its permit back when the
/// handshake's response (the `101`) is sent, while the WebSocket lives on.
///
/// Share one `ConnectionLimit` (it is cheap to clone) between several
/// layers to share the counts.
///
/// # Example
///
/// ```
/// use wsproxy::admit::{ConnectionLimit, Key};
///
/// let limit = ConnectionLimit::new().max_open(10_000).max_open_per_key(Key::client_ip(), 50);
/// let layer = limit.clone().layer();
/// assert_eq!(limit.open(), 0);
/// # drop(layer);
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct ConnectionLimit {
    shared: Arc<Counts>,
    max_open: Option<usize>,
    per_key: Option<(Key, usize)>,
}

#[derive(Debug, Default)]
struct Counts {
    open: AtomicUsize,
    per_key: Mutex<HashMap<String, usize>>,
}

impl ConnectionLimit {
    /// No limits yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `max` open tunnels in all; more are refused with `503`.
    pub fn max_open(mut self, max: usize) -> Self {
        self.max_open = Some(max);
        self
    }

    /// At most `max` open tunnels per `key`; more are refused with `429`.
    pub fn max_open_per_key(mut self, key: Key, max: usize) -> Self {
        self.per_key = Some((key, max));
        self
    }

    /// This limit as a layer.
    pub fn layer(self) -> AdmitLayer<Self> {
        AdmitLayer::new(self)
    }

    /// Tunnels holding a permit now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Tunnels holding a permit of `key` now.
    pub fn open_for(&self, key: &str) -> usize {
        self.shared
            .per_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl Admission for ConnectionLimit {
    fn admit(&self, mut request: Parts) -> Admitting {
        let verdict = self.check(&mut request);
        Admitting::ready(request, verdict)
    }
}

impl ConnectionLimit {
    /// The check, decided at once.
    pub(crate) fn check(&self, request: &mut Parts) -> Result<(), Refusal> {
        let key = match &self.per_key {
            Some((key, max)) => key.of(request).map(|key| (key, *max)),
            None => None,
        };
        // The per-key count is checked and taken under its lock, with the
        // global count taken in between: a refusal of either leaves the
        // other untouched, and no entry is made for a refused key.
        let mut counts = key.as_ref().map(|_| {
            self.shared
                .per_key
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        if let (Some(counts), Some((key, max))) = (&counts, &key)
            && counts.get(key).copied().unwrap_or(0) >= *max
        {
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "connection limit per client reached",
            ));
        }
        let max = self.max_open.unwrap_or(usize::MAX);
        let taken = self
            .shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached",
            ));
        }
        Holds::push(&mut request.extensions, GlobalPermit(self.shared.clone()));
        if let (Some(counts), Some((key, _))) = (&mut counts, key) {
            *counts.entry(key.clone()).or_default() += 1;
            Holds::push(
                &mut request.extensions,
                KeyPermit {
                    shared: self.shared.clone(),
                    key,
                },
            );
        }
        Ok(())
    }
}

/// One open tunnel in [`ConnectionLimit`]'s total.
struct GlobalPermit(Arc<Counts>);

impl Drop for GlobalPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open tunnel of a key.
struct KeyPermit {
    shared: Arc<Counts>,
    key: String,
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        let mut counts = self
            .shared
            .per_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Memory follows open tunnels, not clients ever seen.
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::parts;
    use http::HeaderName;

    #[test]
    fn a_refusal_by_one_connection_limit_takes_nothing_from_the_other() {
        let user = |name: &str| parts("192.0.2.7:1", &[("x-user", name)]);
        let limit = ConnectionLimit::new()
            .max_open(2)
            .max_open_per_key(Key::header(HeaderName::from_static("x-user")), 1);
        let mut first = user("a");
        limit.check(&mut first).unwrap();
        // Refused per key: the global count does not move.
        assert_eq!(limit.check(&mut user("a")).unwrap_err().status(), 429);
        assert_eq!(limit.open(), 1);
        let mut second = user("b");
        limit.check(&mut second).unwrap();
        // Refused globally: no per-key entry is left behind.
        assert_eq!(limit.check(&mut user("c")).unwrap_err().status(), 503);
        assert_eq!(limit.open_for("c"), 0);
        assert_eq!(limit.shared.per_key.lock().unwrap().len(), 2);
        // Dropping the requests (no tunnel opened) gives everything back.
        drop((first, second));
        assert_eq!(
            (limit.open(), limit.shared.per_key.lock().unwrap().len()),
            (0, 0)
        );
        // A per-key limit of zero refuses without remembering anyone.
        let none = ConnectionLimit::new().max_open_per_key(Key::client_ip(), 0);
        for _ in 0..100 {
            assert!(none.check(&mut parts("192.0.2.7:1", &[])).is_err());
        }
        assert_eq!(none.shared.per_key.lock().unwrap().len(), 0);
    }
}
