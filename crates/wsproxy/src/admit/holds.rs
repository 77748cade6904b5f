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
