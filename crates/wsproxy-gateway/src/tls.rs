//! TLS termination (`--tls-cert`, `--tls-key`): rustls with the `ring`
//! provider, HTTP/2 or HTTP/1.1 chosen by ALPN; and the `--backend-*`
//! flags for `wss://` backends ([`backend`]).
//!
//! [`TlsListener`] is an axum [`Listener`]: it accepts TCP connections from
//! an inner listener and runs each TLS handshake in a task of its own,
//! bounded by [`HANDSHAKE_TIMEOUT`], so a slow or silent client never holds
//! up the accept loop. A failed handshake is logged at debug and the loop
//! goes on.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use wsproxy::tls::BackendTls;

use crate::cli::Args;

/// Time a client has to finish its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once per worker; past this the worker stops
/// accepting until one finishes (the kernel's backlog holds the rest).
const MAX_HANDSHAKES: usize = 1024;

/// A server configuration from PEM files: `cert` holds the certificate
/// chain (leaf first), `key` its private key (PKCS#8, PKCS#1 or SEC1).
/// ALPN offers `h2`, then `http/1.1`.
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: cert.to_owned(),
            source,
        })
        .and_then(|chain| {
            if chain.is_empty() {
                Err(TlsError::Cert {
                    path: cert.to_owned(),
                    source: rustls_pki_types::pem::Error::NoItemsFound,
                })
            } else {
                Ok(chain)
            }
        })?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(chain, private)
        })
        .map_err(|source| TlsError::Config {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS settings for `wss://` backends from the `--backend-*` flags, or
/// `None` without any (the library's default: Mozilla's roots, each URL's
/// host). The error names the flag and the file or value.
pub(crate) fn backend(args: &Args) -> Result<Option<BackendTls>, String> {
    let flagged = |flag: &str| {
        let flag = flag.to_owned();
        move |e: wsproxy::tls::TlsError| format!("{flag}: {}", chain(&e))
    };
    if args.backend_cas.is_empty()
        && !args.backend_system_roots
        && args.backend_sni.is_none()
        && args.backend_cert.is_none()
    {
        return Ok(None);
    }
    let mut tls = if args.backend_cas.is_empty() {
        BackendTls::new()
    } else {
        BackendTls::empty()
    };
    if args.backend_system_roots {
        tls = tls
            .system_roots()
            .map_err(flagged("--backend-system-roots"))?;
    }
    for ca in &args.backend_cas {
        tls = tls.add_ca_pem_file(ca).map_err(flagged("--backend-ca"))?;
    }
    if let Some(name) = &args.backend_sni {
        tls = tls.server_name(name).map_err(flagged("--backend-sni"))?;
    }
    if let (Some(cert), Some(key)) = (&args.backend_cert, &args.backend_key) {
        tls = tls
            .client_cert_pem_files(cert, key)
            .map_err(flagged("--backend-cert/--backend-key"))?;
    }
    Ok(Some(tls))
}

/// `error` and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Why `--tls-cert`/`--tls-key` could not be used.
#[derive(Debug)]
pub(crate) enum TlsError {
    /// The certificate file is unreadable or holds no PEM certificate.
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// The key file is unreadable or holds no PEM private key.
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the pair (e.g. the key does not match the
    /// certificate).
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cert { path, source } => write!(
                f,
                "cannot load a certificate from --tls-cert '{}': {}",
                path.display(),
                pem_error(source, "no PEM certificate (BEGIN CERTIFICATE) in the file")
            ),
            Self::Key { path, source } => write!(
                f,
                "cannot load a private key from --tls-key '{}': {}",
                path.display(),
                pem_error(
                    source,
                    "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file"
                )
            ),
            Self::Config { cert, key, source } => write!(
                f,
                "cannot use the certificate '{}' with the key '{}': {source}",
                cert.display(),
                key.display()
            ),
        }
    }
}

/// A PEM error in words, `missing` for a file without the expected
/// section (its `Display` says "no items found").
fn pem_error(error: &rustls_pki_types::pem::Error, missing: &str) -> String {
    match error {
        rustls_pki_types::pem::Error::NoItemsFound => missing.to_owned(),
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        other => other.to_string(),
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Cert { source, .. } | Self::Key { source, .. } => Some(source),
            Self::Config { source, .. } => Some(source),
        }
    }
}

/// A [`Listener`] that completes a TLS handshake on every connection of
/// `L` before handing it over (to the gateway's serve loop here; it works
/// with `axum::serve` as well).
///
/// Handshakes run in tasks owned by the listener: dropping the listener
/// (the serve loop does at shutdown) aborts those still in progress.
pub(crate) struct TlsListener<L: Listener> {
    inner: L,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<Accepted<L>>>,
}

/// A connection that completed its TLS handshake, and its peer.
type Accepted<L> = (TlsStream<<L as Listener>::Io>, <L as Listener>::Addr);

impl<L: Listener> TlsListener<L> {
    /// Terminate TLS with `config` on the connections `inner` accepts.
    pub(crate) fn new(inner: L, config: Arc<ServerConfig>) -> Self {
        Self {
            inner,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }
}

impl<L: Listener> fmt::Debug for TlsListener<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl<L> Listener for TlsListener<L>
where
    L: Listener,
    L::Addr: fmt::Debug + Send + 'static,
{
    type Io = TlsStream<L::Io>;
    type Addr = L::Addr;

    // Cancel safe, as a serve loop that also waits for a shutdown signal
    // needs (axum's and ours drop this future when it fires): a connection
    // is either still in the inner listener's queue or owned by
    // `handshakes`.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                biased;
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(accepted)) = done {
                        return accepted;
                    }
                }
                (io, addr) = self.inner.accept(), if self.handshakes.len() < MAX_HANDSHAKES => {
                    self.handshakes.spawn(handshake(self.acceptor.clone(), io, addr));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The server side of one TLS handshake, within [`HANDSHAKE_TIMEOUT`];
/// `None` (logged at debug) if it fails or times out.
async fn handshake<Io, Addr>(
    acceptor: TlsAcceptor,
    io: Io,
    addr: Addr,
) -> Option<(TlsStream<Io>, Addr)>
where
    Io: AsyncRead + AsyncWrite + Unpin,
    Addr: fmt::Debug,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(tls)) => Some((tls, addr)),
        Ok(Err(e)) => {
            tracing::debug!(client = ?addr, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = ?addr, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}
