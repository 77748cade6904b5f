//! [`BackendTls`]: the settings, and the rustls configuration built from them.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::error::{Kind, TlsError};
use crate::Upstream;
use crate::read_buffer::{Buffered, TLS_READ_BUFFER};

/// How the proxy talks TLS to the `wss://` backends of a set: trusted
/// roots, the name checked, a client certificate. ALPN is always
/// `http/1.1`.
///
/// Cheap to clone; clones share the rustls configuration, built once at
/// the first handshake. See the [module docs](super).
///
/// # Example
///
/// ```no_run
/// use wsproxy::tls::BackendTls;
///
/// # fn main() -> Result<(), wsproxy::tls::TlsError> {
/// // The operating system's roots instead of Mozilla's, and a client
/// // certificate for backends that ask for one.
/// let tls = BackendTls::new()
///     .system_roots()?
///     .client_cert_pem_files("/etc/wsproxy/proxy.crt", "/etc/wsproxy/proxy.key")?;
/// # drop(tls);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct BackendTls {
    inner: Arc<Settings>,
}

#[derive(Clone)]
struct Settings {
    builtin: Builtin,
    added: Vec<TrustAnchor<'static>>,
    server_name: Option<ServerName<'static>>,
    client_cert: Option<Arc<CertifiedKey>>,
    /// Built from the above at the first handshake.
    config: OnceLock<Arc<ClientConfig>>,
}

#[derive(Clone)]
enum Builtin {
    Webpki,
    System(Arc<[TrustAnchor<'static>]>),
    None,
}

impl Default for BackendTls {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendTls {
    /// Trust Mozilla's root certificates (the `webpki-roots` crate, built
    /// in: the same on every machine); check the URL's host; no client
    /// certificate.
    pub fn new() -> Self {
        Self::with_builtin(Builtin::Webpki)
    }

    /// Trust no certificate until CAs are added with
    /// [`add_ca_pem_file`](Self::add_ca_pem_file) or
    /// [`add_ca_pem`](Self::add_ca_pem): for backends with certificates of
    /// a private CA, which should not accept a public one.
    pub fn empty() -> Self {
        Self::with_builtin(Builtin::None)
    }

    fn with_builtin(builtin: Builtin) -> Self {
        Self {
            inner: Arc::new(Settings {
                builtin,
                added: Vec::new(),
                server_name: None,
                client_cert: None,
                config: OnceLock::new(),
            }),
        }
    }

    /// Settings to change: the configuration built from them is dropped.
    fn settings(&mut self) -> &mut Settings {
        let settings = Arc::make_mut(&mut self.inner);
        settings.config = OnceLock::new();
        settings
    }

    /// Trust the operating system's root certificates instead of Mozilla's
    /// (or, after [`empty`](Self::empty), instead of none), loaded now with
    /// `rustls-native-certs` (on Linux: `SSL_CERT_FILE`, `SSL_CERT_DIR` or
    /// the distribution's bundle). CAs added before or after are kept.
    ///
    /// Certificates that cannot be read or parsed are skipped and logged
    /// (`WARN`); finding none at all is an error.
    pub fn system_roots(mut self) -> Result<Self, TlsError> {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(%error, "a system root certificate could not be loaded");
        }
        let mut store = RootCertStore::empty();
        let (_, unparsable) = store.add_parsable_certificates(loaded.certs);
        if unparsable > 0 {
            tracing::warn!(
                count = unparsable,
                "system root certificates skipped: not valid trust anchors"
            );
        }
        if store.roots.is_empty() {
            return Err(TlsError::new(Kind::NoSystemRoots {
                first_error: loaded.errors.into_iter().next(),
            }));
        }
        self.settings().builtin = Builtin::System(store.roots.into());
        Ok(self)
    }

    /// Also trust the CA certificates in the PEM file at `path` (one or
    /// more `CERTIFICATE` blocks; other blocks are ignored).
    ///
    /// An unreadable file, one without a certificate, or a certificate
    /// that is not a valid CA is an error naming the file.
    pub fn add_ca_pem_file(self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let pem = read(path, "CA file")?;
        self.add_cas(&pem, Some(path))
    }

    /// Also trust the CA certificates in `pem` (one or more `CERTIFICATE`
    /// blocks; other blocks are ignored).
    pub fn add_ca_pem(self, pem: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        self.add_cas(pem.as_ref(), None)
    }

    fn add_cas(mut self, pem: &[u8], path: Option<&Path>) -> Result<Self, TlsError> {
        let at = |kind| TlsError::new(kind).at(path);
        let certs = certificates(pem).map_err(|e| at(Kind::Pem("CA certificates", e)))?;
        if certs.is_empty() {
            return Err(at(Kind::NoCertificate("CA certificates")));
        }
        let mut store = RootCertStore::empty();
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| at(Kind::Rustls("a CA certificate", e)))?;
        }
        self.settings().added.extend(store.roots);
        Ok(self)
    }

    /// Send `name` as SNI and check the backend's certificate against it,
    /// instead of each URL's host (default). A DNS name or an IP address;
    /// anything else is an error.
    pub fn server_name(mut self, name: impl Into<String>) -> Result<Self, TlsError> {
        let name = name.into();
        let parsed = ServerName::try_from(name.clone())
            .map_err(|e| TlsError::new(Kind::ServerName(name, e)))?;
        self.settings().server_name = Some(parsed);
        Ok(self)
    }

    /// Present this client certificate to backends that ask for one
    /// (mutual TLS; default: none). `cert_chain_pem` holds the certificate
    /// first, then any intermediates; `key_pem` its private key (PKCS#8,
    /// PKCS#1 or SEC1).
    ///
    /// A key that cannot be used or does not match the certificate is an
    /// error.
    pub fn client_cert_pem(
        self,
        cert_chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, TlsError> {
        self.client_cert(cert_chain_pem.as_ref(), None, key_pem.as_ref(), None)
    }

    /// [`client_cert_pem`](Self::client_cert_pem) from files; errors name
    /// the file.
    pub fn client_cert_pem_files(
        self,
        cert_chain_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert_chain_path.as_ref(), key_path.as_ref());
        let chain = read(cert_path, "client certificate file")?;
        let key = read(key_path, "client key file")?;
        self.client_cert(&chain, Some(cert_path), &key, Some(key_path))
    }

    fn client_cert(
        mut self,
        chain_pem: &[u8],
        chain_path: Option<&Path>,
        key_pem: &[u8],
        key_path: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let chain = certificates(chain_pem)
            .map_err(|e| TlsError::new(Kind::Pem("the client certificate", e)).at(chain_path))?;
        if chain.is_empty() {
            return Err(TlsError::new(Kind::NoCertificate("the client certificate")).at(chain_path));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError::new(Kind::Pem("the client key", e)).at(key_path))?;
        let certified = CertifiedKey::from_der(chain, key, provider())
            .map_err(|e| TlsError::new(Kind::Rustls("the client key", e)).at(key_path))?;
        self.settings().client_cert = Some(Arc::new(certified));
        Ok(self)
    }

    /// The rustls configuration, built at the first call.
    pub(super) fn client_config(&self) -> Arc<ClientConfig> {
        self.inner
            .config
            .get_or_init(|| Arc::new(self.inner.build()))
            .clone()
    }

    /// The roots trusted.
    #[cfg(test)]
    pub(super) fn roots(&self) -> RootCertStore {
        self.inner.build_roots()
    }

    /// Hand-shake over `tcp` with `upstream`'s server. The connection is
    /// read up to [`TLS_READ_BUFFER`] bytes at a time (rustls asks for
    /// 4 KiB more than it holds).
    pub(crate) async fn connect<IO>(
        &self,
        upstream: &Upstream,
        tcp: IO,
    ) -> io::Result<TlsStream<Buffered<IO>>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = match &self.inner.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(upstream.host())
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{:?} is not a valid TLS server name: {e}", upstream.host()),
                    )
                })?
                .to_owned(),
        };
        TlsConnector::from(self.client_config())
            .connect(name, Buffered::new(tcp, TLS_READ_BUFFER))
            .await
    }

    /// The settings of a set that has none: [`BackendTls::new`], built
    /// once per process.
    pub(crate) fn shared_default() -> &'static BackendTls {
        static DEFAULT: OnceLock<BackendTls> = OnceLock::new();
        DEFAULT.get_or_init(BackendTls::new)
    }
}

impl Settings {
    fn build_roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        match &self.builtin {
            Builtin::Webpki => roots
                .roots
                .extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Builtin::System(system) => roots.roots.extend(system.iter().cloned()),
            Builtin::None => {}
        }
        roots.roots.extend(self.added.iter().cloned());
        roots
    }

    fn build(&self) -> ClientConfig {
        let builder = ClientConfig::builder_with_provider(Arc::new(provider().clone()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(self.build_roots());
        let mut config = match &self.client_cert {
            Some(certified) => builder
                .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified.clone()))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.inner;
        let roots = match &settings.builtin {
            Builtin::Webpki => "webpki",
            Builtin::System(_) => "system",
            Builtin::None => "none",
        };
        f.debug_struct("BackendTls")
            .field("roots", &roots)
            .field("added_cas", &settings.added.len())
            .field("server_name", &settings.server_name)
            .field("client_cert", &settings.client_cert.is_some())
            .finish()
    }
}

/// The crypto provider: *ring*, whatever the process default is.
fn provider() -> &'static CryptoProvider {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    PROVIDER.get_or_init(ring::default_provider)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(Kind::Read(what, e)).at(Some(path)))
}

/// The `CERTIFICATE` blocks of `pem`.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, rustls_pki_types::pem::Error> {
    CertificateDer::pem_slice_iter(pem).collect()
}
