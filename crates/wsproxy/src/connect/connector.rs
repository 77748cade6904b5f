//! [`Connector`]: how the proxy opens a connection to a backend.

use std::fmt;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt as _};

use super::stream::{BackendStream, Connection};
use crate::{BoxError, Upstream};

/// How the proxy opens a connection to a backend: a tower service from the
/// backend's [`Upstream`] to a byte stream, as hyper-util's connectors are
/// services from a `Uri`.
///
/// The default, [`Connector::tcp`], connects over TCP to the upstream's
/// host and port (with `TCP_NODELAY`). Give your own for a Unix socket, a
/// SOCKS or HTTP `CONNECT` hop, or a test double: any
/// `Service<Upstream>` whose response is an `AsyncRead + AsyncWrite`
/// stream. Whatever the connector, the proxy does the rest: TLS over the
/// stream for a `wss://` upstream (feature `tls`, with the set's
/// [`BackendTls`](crate::tls::BackendTls)), the connect timeout around the
/// call, the upgrade request, health probes. Its errors are connect
/// failures: `502`, logged with the error, and the next backend is tried.
///
/// Set it with [`WebSocketProxyLayer::connector`](crate::WebSocketProxyLayer::connector)
/// or [`Backends::connector`](crate::balance::Backends::connector).
///
/// # Example
///
/// ```
/// use wsproxy::connect::Connector;
/// use wsproxy::{Upstream, WebSocketProxyLayer};
///
/// // The backend listens on a Unix socket; the URL still names the Host
/// // and path it is sent.
/// let unix = tower::service_fn(|_: Upstream| tokio::net::UnixStream::connect("/run/chat.sock"));
/// let layer = WebSocketProxyLayer::new("ws://chat.internal/ws".parse().unwrap())
///     .connector(Connector::new(unix));
/// # drop(layer);
/// ```
#[derive(Clone)]
pub struct Connector {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Tcp,
    Custom(Arc<BoxCloneSyncService<Upstream, Box<dyn Connection>, BoxError>>),
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Tcp => f.write_str("Connector::tcp()"),
            Kind::Custom(_) => f.write_str("Connector::new(..)"),
        }
    }
}

impl Default for Connector {
    fn default() -> Self {
        Self::tcp()
    }
}

impl Connector {
    /// TCP to the upstream's host and port (the default).
    pub fn tcp() -> Self {
        Connector { kind: Kind::Tcp }
    }

    /// Open connections with `connector`, a service from the backend's
    /// [`Upstream`] to a byte stream.
    pub fn new<C>(connector: C) -> Self
    where
        C: Service<Upstream> + Clone + Send + Sync + 'static,
        C::Response: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug + 'static,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
    {
        let boxed = BoxCloneSyncService::new(
            connector
                .map_response(|stream| Box::new(stream) as Box<dyn Connection>)
                .map_err(Into::into),
        );
        Connector {
            kind: Kind::Custom(Arc::new(boxed)),
        }
    }

    /// Open a connection to `upstream` (no TLS yet).
    pub(crate) async fn open(&self, upstream: &Upstream) -> io::Result<BackendStream> {
        match &self.kind {
            Kind::Tcp => {
                let tcp = TcpStream::connect((upstream.host(), upstream.port())).await?;
                // Small WebSocket frames must not wait for Nagle.
                let _ = tcp.set_nodelay(true);
                Ok(BackendStream::Tcp(tcp))
            }
            Kind::Custom(service) => (**service)
                .clone()
                .oneshot(upstream.clone())
                .await
                .map(BackendStream::Custom)
                .map_err(io::Error::other),
        }
    }
}
