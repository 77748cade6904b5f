//! [`Server`]: the accept loop, with connection limits and accept errors
//! handled; each connection is served by [`connection`](super::connection).

use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::accept::{AcceptError, Backoff, Reserve, Throttled};
use super::activity::Stop;
use super::connection::{self, Shared};
use super::registry::{Refused, Registry};
use super::{ConnectionLimits, ProxyProtocol, Timeouts};
use crate::{BoxError, Tunnels};

/// Default [`Server::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/1.1 and HTTP/2 server for a tower service that proxies
/// WebSockets, with a bound on every state a client connection can sit in
/// and on the connections it holds. See the [module docs](super).
///
/// Clones share their connection counts: serve several listeners (say one
/// per worker thread with `SO_REUSEPORT`) from clones of one server and the
/// [limits](ConnectionLimits) hold across them.
#[derive(Debug, Clone)]
pub struct Server<S> {
    /// Copied into an `Arc` for each listener served; the registry inside
    /// is what clones share.
    shared: Shared<S>,
}

impl<S: Clone> Server<S> {
    /// Serve `service` (an axum `Router`, or any tower service of
    /// `Request<hyper::body::Incoming>`) with the default
    /// [`Timeouts`] and [`ConnectionLimits`].
    pub fn new(service: S) -> Self {
        let limits = ConnectionLimits::new();
        Server {
            shared: Shared {
                service,
                timeouts: Timeouts::new(),
                registry: Arc::new(Registry::new(limits.resolved_max(), limits.per_ip)),
                limits,
                #[cfg(feature = "tls")]
                tls: None,
                tunnels: None,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                proxy_protocol: None,
            },
        }
    }

    /// How long connections may sit in each state (default:
    /// [`Timeouts::new`]).
    #[must_use]
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.shared.timeouts = timeouts;
        self
    }

    /// Bounds on connections (default: [`ConnectionLimits::new`]). Set
    /// them before cloning the server for several listeners: a server
    /// given new limits counts its connections apart from its clones.
    #[must_use]
    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.shared.registry = Arc::new(Registry::new(limits.resolved_max(), limits.per_ip));
        self.shared.limits = limits;
        self
    }

    /// Terminate TLS with `config` on every connection (feature `tls`):
    /// ALPN picks HTTP/2 or HTTP/1.1 if the config offers them (`h2`,
    /// `http/1.1`), and requests carry [`ClientTls`](crate::ClientTls) so
    /// backends are told `https`. The handshake is bounded by
    /// [`Timeouts::tls_handshake`].
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[must_use]
    pub fn tls(mut self, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        self.shared.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// Read a PROXY protocol header (v1 or v2) at the start of every
    /// connection and take its source as the client's address (see
    /// [`ProxyProtocol`]). Its reading is bounded by
    /// [`Timeouts::detect`]; the per-IP [limit](ConnectionLimits) counts
    /// the client it names, not the balancer.
    #[must_use]
    pub fn proxy_protocol(mut self, config: ProxyProtocol) -> Self {
        self.shared.proxy_protocol = Some(config);
        self
    }

    /// On a graceful shutdown, also [shut down](Tunnels::shutdown) these
    /// tunnels (Close 1001 to every open WebSocket) within the same
    /// [deadline](Self::shutdown_timeout), and wait for them.
    ///
    /// The drain starts once the connections accepted before the stop
    /// were answered, a second after the stop at most (the deadline
    /// still runs from the stop): a handshake on one of them
    /// (a client that connected just before the stop) becomes a tunnel
    /// that the drain closes with 1001, as every other, rather than a
    /// `503`.
    #[must_use]
    pub fn tunnels(mut self, tunnels: Tunnels) -> Self {
        self.shared.tunnels = Some(tunnels);
        self
    }

    /// How long a graceful shutdown waits for requests in flight (and
    /// [tunnels](Self::tunnels)) before closing what is left (default:
    /// 10 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shared.shutdown_timeout = timeout;
        self
    }

    /// Client connections counted against the bounds now, across this
    /// server and its clones: not the tunnels that left HTTP/1.1 by an
    /// upgrade, nor connections already asked to close to make room
    /// (they still hold their descriptors for the moment they take to
    /// close).
    pub fn connections(&self) -> usize {
        self.shared.registry.open()
    }

    /// Accept and serve connections on `listener` until the returned
    /// future is dropped (which stops accepting; connections already
    /// accepted run on until they end), or until a
    /// [graceful shutdown](Serve::with_graceful_shutdown) ends, which
    /// closes them too.
    pub fn serve(&self, listener: TcpListener) -> Serve<S> {
        Serve {
            server: self.clone(),
            listener,
            signal: None,
        }
    }
}

/// A server accepting on one listener; await it (it is
/// [`IntoFuture`]). From [`Server::serve`].
#[must_use = "a Serve does nothing until awaited"]
pub struct Serve<S> {
    server: Server<S>,
    listener: TcpListener,
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<S> std::fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl<S> Serve<S> {
    /// When `signal` resolves: stop accepting, let requests in flight
    /// finish (HTTP/2 connections get `GOAWAY`, idle ones close; one
    /// accepted just before, whose first request is on its way, gets it
    /// answered), shut the [tunnels](Server::tunnels) down, and after the
    /// [shutdown timeout](Server::shutdown_timeout) close what is left.
    /// The server's future then resolves.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }
}

impl<S, B> IntoFuture for Serve<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

/// The accept loop, then the drain.
async fn run<S, B>(serve: Serve<S>) -> io::Result<()>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Serve {
        server,
        listener,
        signal,
    } = serve;
    let shared = Arc::new(server.shared);
    let registry = shared.registry.clone();
    let mut signal = signal.unwrap_or_else(|| Box::pin(std::future::pending()));
    let tasks = TaskTracker::new();
    // The connections of this accept loop, among those of the registry.
    let owner = registry.owner();
    let mut reserve = Reserve::new();
    let mut backoff = Backoff::default();
    let mut accept_failed = Throttled::new("accept failed");
    let mut full = Throttled::new("connection limit reached: closing the longest-idle connections");
    let mut per_ip =
        Throttled::new("a client IP is at its connection limit: new connections closed");
    loop {
        // A descriptor given up to answer 503 may not have come back.
        reserve.restore();
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                let kind = AcceptError::of(&e);
                if kind == AcceptError::Connection {
                    continue;
                }
                crate::metrics::accept_error(kind.as_str());
                accept_failed.warn(&e);
                if kind == AcceptError::Descriptors {
                    if registry.shed_one() {
                        crate::metrics::connection_shed("descriptors");
                    } else {
                        overloaded(&listener, &mut reserve, &shared);
                    }
                }
                // Wait for a connection to end (a descriptor freed), or
                // a while: never spin on a failing accept.
                tokio::select! {
                    () = tokio::time::sleep(backoff.next()) => {}
                    () = registry.ended() => {}
                    () = &mut signal => break,
                }
                continue;
            }
        };
        // A client is here: at the bound, the connection idle the longest
        // makes room for it; with none idle it waits (and the next ones in
        // the kernel's backlog) until a connection ends or goes idle.
        // Room first: a connection accepted is served, even if the stop
        // comes at the same moment (the graceful stop then answers it).
        let shed = tokio::select! {
            biased;
            shed = registry.room() => shed,
            () = &mut signal => break,
        };
        if shed > 0 {
            crate::metrics::connection_shed("max_connections");
            full.warn(&format_args!("max {} connections", registry_max(&shared)));
        }
        backoff.reset();
        // As nginx's `tcp_nodelay on`: a tunnel relays frames split across
        // writes, which must not wait for Nagle and delayed ACKs.
        let _ = tcp.set_nodelay(true);
        // Behind the PROXY protocol the client is not known yet: its
        // connection counts per IP once its header names it.
        let ip = shared.proxy_protocol.is_none().then(|| peer.ip());
        match registry.take(ip, owner) {
            Ok((slot, shed)) => {
                if shed {
                    crate::metrics::connection_shed("max_connections_per_ip");
                }
                // Boxed, as a tunnel's task (see `proxy::tunnel::spawn`).
                tasks.spawn(Box::pin(connection::run(tcp, peer, slot, shared.clone())));
            }
            Err(Refused::PerIp) => {
                crate::metrics::connection_refused("max_connections_per_ip");
                per_ip.warn(&format_args!("client {}", peer.ip()));
            }
        }
    }
    drop(listener);
    registry.stop(owner, Stop::Graceful);
    tasks.close();
    let deadline = shared.shutdown_timeout;
    // A handshake on a connection accepted before the stop (its request
    // may come just after it) becomes a tunnel that the drain then
    // closes with 1001, not a 503: the drain starts once those
    // connections were answered or upgraded, STOP_GRACE at most.
    // The deadline still runs from the stop.
    let stopped = tokio::time::Instant::now();
    let tunnels = shared.tunnels.as_ref().map(|tunnels| async {
        let _ = tokio::time::timeout(connection::STOP_GRACE.min(deadline), tasks.wait()).await;
        tunnels
            .shutdown(deadline.saturating_sub(stopped.elapsed()))
            .await;
    });
    let connections = async {
        if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
            tracing::warn!(
                open = tasks.len(),
                "client connections still open at the shutdown deadline, closing them"
            );
            registry.stop(owner, Stop::Now);
            tasks.wait().await;
        }
    };
    match tunnels {
        Some(tunnels) => {
            tokio::join!(connections, tunnels);
        }
        None => connections.await,
    }
    Ok(())
}

fn registry_max<S>(shared: &Shared<S>) -> usize {
    shared.registry.max()
}

/// Out of descriptors with nothing to free: answer one waiting client
/// from the reserve descriptor.
fn overloaded<S>(listener: &TcpListener, reserve: &mut Reserve, shared: &Shared<S>) {
    #[cfg(feature = "tls")]
    let plain = shared.tls.is_none();
    #[cfg(not(feature = "tls"))]
    let plain = {
        let _ = shared;
        true
    };
    if let Some(peer) = reserve.answer(listener, plain) {
        crate::metrics::connection_refused("descriptors");
        tracing::debug!(client = %peer, "out of descriptors: answered 503 from the reserve");
    }
}
