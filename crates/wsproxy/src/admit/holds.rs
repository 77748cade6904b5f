//! [`Holds`]: what a handshake holds for the life of its tunnel.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// What is held for the life of the tunnel a handshake opens (e.g. the
/// permits of [`ConnectionLimit`](super::ConnectionLimit)), kept in the request's extensions.
#[derive(Clone, Default)]
pub struct Holds(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl Holds {
    /// Hold `value` until the tunnel the request opens ends, or until the
    /// request is dropped if it opens none.
    pub fn push(extensions: &mut http::Extensions, value: impl Any + Send) {
        extensions
            .get_or_insert_default::<Holds>()
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(value));
    }

    /// How many things are held.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Holds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holds").field("len", &self.len()).finish()
    }
}

/// In a handshake's extensions: when what admitted it expires (e.g. a
/// token's `exp`). The tunnel it opens is closed then: Close 1008 ("policy
/// violation", reason `credentials expired`) to the client, 1001 to the
/// backend, counted as `expired`. An admission puts it there;
/// [`JwtAuth::close_at_expiry`](crate::admit::JwtAuth::close_at_expiry) does
/// for a token.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use wsproxy::admit::Expires;
///
/// let mut request = http::Request::new(());
/// request
///     .extensions_mut()
///     .insert(Expires(SystemTime::now() + Duration::from_secs(3600)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expires(pub std::time::SystemTime);

impl Expires {
    /// Set `at` in `extensions`, unless an earlier expiry is there.
    pub fn at_most(extensions: &mut http::Extensions, at: std::time::SystemTime) {
        match extensions.get_mut::<Expires>() {
            Some(Expires(earlier)) if *earlier <= at => {}
            Some(Expires(later)) => *later = at,
            None => {
                extensions.insert(Expires(at));
            }
        }
    }

    /// The same moment on the monotonic clock tunnels keep time by; `None`
    /// for one too far away to keep (as good as never).
    pub(crate) fn instant(self) -> Option<tokio::time::Instant> {
        let left = self
            .0
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::Instant::now().checked_add(left)
    }
}
