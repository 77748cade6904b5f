//! Opening a connection to a backend: the set's connector, TLS over it for
//! `wss://`, within the connect timeout.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::connector::Connector;
use super::exchange::Failure;
use super::stream::BackendStream;
use crate::Upstream;

/// How a backend set opens connections to its backends — its
/// [`Connector`] and, for `wss://` ones, its TLS settings — shared by every
/// handle on the set and its health probes. Without feature `tls` there is
/// no TLS (and no `wss://` backend).
#[derive(Clone, Debug, Default)]
pub(crate) struct Dialer {
    connector: Arc<RwLock<Connector>>,
    #[cfg(feature = "tls")]
    chosen: Arc<RwLock<Option<crate::tls::BackendTls>>>,
}

impl Dialer {
    pub(crate) fn set_connector(&self, connector: Connector) {
        *self
            .connector
            .write()
            .unwrap_or_else(PoisonError::into_inner) = connector;
    }

    fn connector(&self) -> Connector {
        self.connector
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[cfg(feature = "tls")]
    pub(crate) fn set(&self, tls: crate::tls::BackendTls) {
        *self.chosen.write().unwrap_or_else(PoisonError::into_inner) = Some(tls);
    }

    /// The settings to use: the set's, else [`BackendTls::new`](crate::tls::BackendTls::new).
    #[cfg(feature = "tls")]
    fn get(&self) -> crate::tls::BackendTls {
        self.chosen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| crate::tls::BackendTls::shared_default().clone())
    }
}

/// Open a connection to `upstream` with `dialer` — its connector, then
/// TLS for a `wss://` one — within `timeout`.
pub(crate) async fn connect(
    upstream: &Upstream,
    dialer: &Dialer,
    timeout: Duration,
) -> Result<BackendStream, Failure> {
    let attempt = async {
        let stream = dialer
            .connector()
            .open(upstream)
            .await
            .map_err(Failure::Connect)?;
        #[cfg(feature = "tls")]
        if upstream.is_tls() {
            let tls = dialer.get();
            return match stream {
                BackendStream::Tcp(tcp) => tls
                    .connect(upstream, tcp)
                    .await
                    .map(|s| BackendStream::Tls(Box::new(s))),
                BackendStream::Custom(io) => tls
                    .connect(upstream, io)
                    .await
                    .map(|s| BackendStream::CustomTls(Box::new(s))),
                already => Ok(already),
            }
            .map_err(Failure::Tls);
        }
        Ok(stream)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| Failure::ConnectTimeout(timeout))?
}
