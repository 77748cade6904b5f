//! TLS termination (`--tls-cert`, `--tls-key`): rustls with the `ring`
//! provider, HTTP/2 or HTTP/1.1 chosen by ALPN (the handshake itself runs
//! in `wsproxy::serve::Server`, bounded by `--tls-handshake-timeout`); and
//! the `--backend-*` flags for `wss://` backends ([`backend`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use wsproxy::tls::BackendTls;

use crate::cli::Args;

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
