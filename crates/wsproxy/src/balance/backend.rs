//! One backend: its URL, its id, and how it takes part in balancing.

use std::fmt;

use crate::Upstream;

/// A backend of a [`Backends`](super::Backends) set: an [`Upstream`] and
/// how it takes part in balancing.
///
/// It is the item type of a [`tower::discover::Discover`] stream fed to
/// [`Backends::discover`](super::Backends::discover): a description, not
/// a connection. How the proxy connects to it is the set's
/// [`Connector`](crate::connect::Connector).
///
/// # Example
///
/// ```
/// use wsproxy::balance::Backend;
///
/// let big = Backend::new("ws://10.0.0.1:9001".parse().unwrap()).weight(3);
/// let spare = Backend::new("ws://10.0.0.9:9001".parse().unwrap()).backup(true);
/// let small = Backend::new("ws://10.0.0.2:9001".parse().unwrap()).max_conns(1_000);
/// assert_ne!(big.id(), small.id());
/// # drop(spare);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Backend {
    pub(crate) upstream: Upstream,
    pub(crate) id: BackendId,
    pub(crate) weight: u32,
    pub(crate) backup: bool,
    pub(crate) max_conns: Option<usize>,
}

impl Backend {
    /// A primary backend of weight 1 and no connection cap.
    pub fn new(upstream: Upstream) -> Self {
        Self {
            id: BackendId::of(&upstream),
            upstream,
            weight: 1,
            backup: false,
            max_conns: None,
        }
    }

    /// Its share of new tunnels relative to the others' (default: 1; 0 is
    /// taken as 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// A backup is chosen only while no primary is usable (default:
    /// `false`).
    pub fn backup(mut self, backup: bool) -> Self {
        self.backup = backup;
        self
    }

    /// At most this many open tunnels (and handshakes under way) to it;
    /// while it is full, it is skipped like a backend that is down (default:
    /// no cap).
    pub fn max_conns(mut self, max: usize) -> Self {
        self.max_conns = Some(max);
        self
    }

    /// The backend's URL.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Its identity in the set (derived from the URL).
    pub fn id(&self) -> BackendId {
        self.id
    }
}

impl From<Upstream> for Backend {
    fn from(upstream: Upstream) -> Self {
        Self::new(upstream)
    }
}

/// Parses a backend URL (see [`Upstream`]) into a primary backend of
/// weight 1.
impl std::str::FromStr for Backend {
    type Err = crate::InvalidUpstream;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        url.parse().map(Self::new)
    }
}

/// The identity of a [`Backend`]: a 64-bit hash of its URL, the same on
/// every process that has the same URL (so consistent hashing agrees
/// across instances). Shown and parsed as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub(crate) u64);

impl BackendId {
    fn of(upstream: &Upstream) -> Self {
        Self(twox_hash::XxHash64::oneshot(
            0,
            upstream.to_string().as_bytes(),
        ))
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.len() != 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Self)
    }
}

/// Parses the 16 hex digits [`Display`](fmt::Display) writes (e.g. from
/// an admin API or a sticky cookie).
impl std::str::FromStr for BackendId {
    type Err = InvalidBackendId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).ok_or(InvalidBackendId { _priv: () })
    }
}

/// The error of parsing a [`BackendId`] that is not 16 hex digits.
#[derive(Debug, Clone)]
pub struct InvalidBackendId {
    _priv: (),
}

impl fmt::Display for InvalidBackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a backend id is 16 hex digits")
    }
}

impl std::error::Error for InvalidBackendId {}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackendId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_round_trip() {
        let a = Backend::new("ws://127.0.0.1:1/".parse().unwrap());
        let again = Backend::new("ws://127.0.0.1:1/".parse().unwrap());
        let b = Backend::new("ws://127.0.0.1:2/".parse().unwrap());
        assert_eq!(a.id(), again.id());
        assert_ne!(a.id(), b.id());
        assert_eq!(BackendId::parse(&a.id().to_string()), Some(a.id()));
        assert_eq!(BackendId::parse("xyz"), None);
        assert_eq!(BackendId::parse("0123456789abcdeg"), None);
        assert_eq!(Backend::new("ws://a".parse().unwrap()).weight(0).weight, 1);
        assert_eq!("ws://127.0.0.1:1/".parse::<Backend>().unwrap().id(), a.id());
        assert_eq!(a.id().to_string().parse::<BackendId>().unwrap(), a.id());
        assert!("nope".parse::<BackendId>().is_err());
    }
}
