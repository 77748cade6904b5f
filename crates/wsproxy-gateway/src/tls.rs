//! TLS termination (`[listen.tls]`, `--tls-cert`, `--tls-key`): rustls
//! with the `ring` provider, HTTP/2 or HTTP/1.1 chosen by ALPN (the
//! handshake itself runs in `wsproxy::serve::Server`, bounded by
//! `--tls-handshake-timeout`), its certificate re-read on reload
//! ([`Certificate`]); and `[backend_tls]` for `wss://` backends
//! ([`backend`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use wsproxy::tls::BackendTls;

/// The serving certificate, swapped in place when a reload re-reads it:
/// a handshake takes whichever is current, and connections already
/// established keep theirs.
#[derive(Debug)]
pub(crate) struct Certificate(ArcSwap<CertifiedKey>);

impl Certificate {
    /// Load `cert` (the chain, leaf first) and `key` (PKCS#8, PKCS#1 or
    /// SEC1), checking that they belong together.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
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
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(chain, private, &provider)
            .map(Arc::new)
            .map_err(|source| TlsError::Config {
                cert: cert.to_owned(),
                key: key.to_owned(),
                source,
            })
    }

    /// Serve `key` until [`replace`](Self::replace)d.
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self(ArcSwap::new(key)))
    }

    /// Serve `key` to the handshakes from now on.
    pub(crate) fn replace(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }

    /// A server configuration serving this certificate; ALPN offers `h2`
    /// (with `http2`), then `http/1.1`.
    pub(crate) fn server_config(self: &Arc<Self>, http2: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Arc::new(config)
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// `[backend_tls]`: TLS toward `wss://` backends.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BackendTlsFiles {
    /// Trust only these CAs (PEM) instead of Mozilla's roots.
    pub(crate) cas: Vec<PathBuf>,
    /// Trust the operating system's roots instead of Mozilla's.
    pub(crate) system_roots: bool,
    /// The name sent as SNI and checked, instead of each URL's host.
    pub(crate) sni: Option<String>,
    /// A client certificate (PEM chain) for mutual TLS; needs `key`.
    pub(crate) cert: Option<PathBuf>,
    /// Its private key.
    pub(crate) key: Option<PathBuf>,
}

/// The TLS settings for `wss://` backends (`[backend_tls]`), or `None`
/// without any (the library's default: Mozilla's roots, each URL's host).
/// The error names the key (`cas`, `system_roots`, `sni`, `cert/key`) and
/// says what is wrong with its file or value.
pub(crate) fn backend(
    files: &BackendTlsFiles,
) -> Result<Option<BackendTls>, (&'static str, String)> {
    let keyed = |key: &'static str| move |e: wsproxy::tls::TlsError| (key, chain(&e));
    if files.cas.is_empty()
        && !files.system_roots
        && files.sni.is_none()
        && files.cert.is_none()
        && files.key.is_none()
    {
        return Ok(None);
    }
    let mut tls = if files.cas.is_empty() {
        BackendTls::new()
    } else {
        BackendTls::empty()
    };
    if files.system_roots {
        tls = tls.system_roots().map_err(keyed("system_roots"))?;
    }
    for ca in &files.cas {
        tls = tls.add_ca_pem_file(ca).map_err(keyed("cas"))?;
    }
    if let Some(name) = &files.sni {
        tls = tls.server_name(name).map_err(keyed("sni"))?;
    }
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            tls = tls
                .client_cert_pem_files(cert, key)
                .map_err(keyed("cert/key"))?;
        }
        (None, None) => {}
        _ => {
            return Err((
                "cert/key",
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
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

/// Why a certificate and key could not be used.
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
                "cannot load a certificate from '{}': {}",
                path.display(),
                pem_error(source, "no PEM certificate (BEGIN CERTIFICATE) in the file")
            ),
            Self::Key { path, source } => write!(
                f,
                "cannot load a private key from '{}': {}",
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
