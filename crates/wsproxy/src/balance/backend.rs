//! One backend: its settings, and the tower service that hand-shakes with it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use tower::Service;

use crate::connect::{self, Answer, Failure};
use crate::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, Tunnels, Upstream};

/// A backend of a [`Backends`](super::Backends) set: an [`Upstream`] and
/// how it takes part in balancing.
///
/// It is also a tower [`Service`]: given the upgrade request meant for it
/// (a target path, headers with a `Sec-WebSocket-Key`), it connects,
/// hand-shakes and returns the backend's [`Answer`] — the connected and
/// upgraded stream after a valid `101`, or the response it gave instead.
/// That is the item type of a [`tower::discover::Discover`] stream fed to
/// [`Backends::discover`](super::Backends::discover), and it can be used
/// alone (e.g. in tests, with the default timeouts).
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

impl Service<Request<Empty<Bytes>>> for Backend {
    type Response = Answer;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Failure>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    /// Connect and hand-shake within [`DEFAULT_CONNECT_TIMEOUT`] and
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] (a `wss://` backend with the default
    /// TLS settings, `BackendTls::new()`). The answer's `Sec-WebSocket-Accept`
    /// is checked against the request's `Sec-WebSocket-Key` (a fresh one
    /// is added when it has none); `Upgrade`, `Connection` and
    /// `Sec-WebSocket-Version` are added when missing.
    fn call(&mut self, mut request: Request<Empty<Bytes>>) -> Self::Future {
        let upstream = self.upstream.clone();
        Box::pin(async move {
            let key = connect::complete_upgrade_request(&mut request, &upstream);
            let stream = connect::connect(
                &upstream,
                &connect::SetTls::default(),
                DEFAULT_CONNECT_TIMEOUT,
            )
            .await?;
            connect::handshake(
                stream,
                request,
                &key,
                DEFAULT_HANDSHAKE_TIMEOUT,
                &Tunnels::new(),
            )
            .await
        })
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

    #[tokio::test]
    async fn as_a_service_it_hand_shakes() {
        use tower::ServiceExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            use futures_util::StreamExt;
            // The client's (masked) Close comes through.
            ws.next().await
        });
        let backend: Backend = format!("ws://{addr}/").parse().unwrap();
        let request = Request::get("/x").body(Empty::new()).unwrap();
        match backend.clone().oneshot(request).await.unwrap() {
            Answer::Upgraded(head, upgraded) => {
                assert_eq!(head.status(), http::StatusCode::SWITCHING_PROTOCOLS);
                use tokio::io::AsyncWriteExt;
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                // Close 1000, masked with a zero key.
                io.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
                    .await
                    .unwrap();
            }
            Answer::Refused(response) => panic!("refused: {}", response.status()),
        }
        let closed = server.await.unwrap().unwrap().unwrap();
        assert!(closed.is_close());

        let (_port, dead_addr) = wsproxy_test_support::closed_port();
        let backend: Backend = format!("ws://{dead_addr}/").parse().unwrap();
        let request = Request::get("/").body(Empty::new()).unwrap();
        let failure = backend.oneshot(request).await.unwrap_err();
        assert!(matches!(failure, Failure::Connect(_)), "{failure}");
    }
}
