//! [`TlsError`]: a setting of [`BackendTls`](super::BackendTls) that
//! cannot be used.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A [`BackendTls`](super::BackendTls) setting that cannot be used: an unreadable file, no or
/// invalid PEM, a certificate or key rustls refuses, an invalid server
/// name. Its message names the file or value.
///
/// See the [module docs](super).
#[derive(Debug)]
pub struct TlsError {
    kind: Kind,
    path: Option<PathBuf>,
}

#[derive(Debug)]
pub(super) enum Kind {
    Read(&'static str, io::Error),
    Pem(&'static str, rustls_pki_types::pem::Error),
    NoCertificate(&'static str),
    Rustls(&'static str, tokio_rustls::rustls::Error),
    ServerName(String, rustls_pki_types::InvalidDnsNameError),
    NoSystemRoots {
        first_error: Option<rustls_native_certs::Error>,
    },
}

impl TlsError {
    pub(super) fn new(kind: Kind) -> Self {
        Self { kind, path: None }
    }

    pub(super) fn at(mut self, path: Option<&Path>) -> Self {
        self.path = path.map(Path::to_owned);
        self
    }

    /// The file the error is about, if it came from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.as_deref().map(Path::display);
        let what = |f: &mut fmt::Formatter<'_>, what: &str| match &path {
            Some(path) => write!(f, "{what} in {path}"),
            None => f.write_str(what),
        };
        match &self.kind {
            Kind::Read(file, _) => match &path {
                Some(path) => write!(f, "cannot read the {file} {path}"),
                None => write!(f, "cannot read the {file}"),
            },
            Kind::Pem(thing, _) => {
                f.write_str("invalid PEM for ")?;
                what(f, thing)
            }
            Kind::NoCertificate(thing) => {
                f.write_str("no PEM CERTIFICATE block for ")?;
                what(f, thing)
            }
            Kind::Rustls(thing, _) => {
                what(f, thing)?;
                f.write_str(" cannot be used")
            }
            Kind::ServerName(name, _) => write!(f, "{name:?} is not a valid TLS server name"),
            Kind::NoSystemRoots { .. } => {
                f.write_str("no root certificate found in the system's store")
            }
        }
    }
}

impl Error for TlsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            Kind::Read(_, e) => Some(e),
            Kind::Pem(_, e) => Some(e),
            Kind::Rustls(_, e) => Some(e),
            Kind::ServerName(_, e) => Some(e),
            Kind::NoSystemRoots { first_error } => first_error.as_ref().map(|e| e as _),
            Kind::NoCertificate(_) => None,
        }
    }
}
