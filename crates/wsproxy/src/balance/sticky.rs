//! Sticky cookies: a keyed value that stands for a backend, so the
//! client's next handshake goes back to it.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use super::BackendId;

#[derive(Clone)]
pub(super) struct Sticky {
    pub(super) name: Arc<str>,
    /// Keys the cookie values: without it, a value does not tell which
    /// URL it stands for.
    pub(super) secret: u64,
}

impl fmt::Debug for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sticky")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Sticky {
    /// The cookie value standing for `id`.
    pub(super) fn value(&self, id: BackendId) -> BackendId {
        BackendId(twox_hash::XxHash64::oneshot(
            self.secret,
            &id.0.to_le_bytes(),
        ))
    }

    pub(super) fn cookie(&self, id: BackendId) -> HeaderValue {
        let cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax",
            self.name,
            self.value(id)
        );
        HeaderValue::from_str(&cookie).expect("a checked cookie name and hex digits")
    }
}
