//! TLS toward `wss://` backends (feature `tls`): which certificates are
//! trusted, which name is checked, and an optional client certificate.
//!
//! A backend URL `wss://host[:port]/path` ([`Upstream`],
//! port 443 by default) is reached over TLS 1.2 or 1.3 with
//! [rustls](tokio_rustls::rustls) and its *ring* crypto provider. The
//! [`BackendTls`] of its [`Backends`] set says how — set with
//! [`Backends::tls`] or [`WebSocketProxyLayer::backend_tls`]; a set without
//! one uses [`BackendTls::new`]. Active health probes of the set use the
//! same settings.
//!
//! - **Roots.** Mozilla's root certificates (the `webpki-roots` crate) by
//!   default, the operating system's with
//!   [`system_roots`](BackendTls::system_roots), or none with
//!   [`BackendTls::empty`]; plus any CA added with
//!   [`add_ca_pem_file`](BackendTls::add_ca_pem_file) or
//!   [`add_ca_pem`](BackendTls::add_ca_pem), e.g. a private CA.
//! - **Name.** The URL's host is sent as SNI and the certificate must be
//!   valid for it (an IP address is checked against the certificate's IP
//!   addresses and sends no SNI).
//!   [`server_name`](BackendTls::server_name) overrides both, e.g. to reach
//!   backends by address whose certificates name a service.
//! - **Client certificate** (mutual TLS), off by default:
//!   [`client_cert_pem`](BackendTls::client_cert_pem) or
//!   [`client_cert_pem_files`](BackendTls::client_cert_pem_files).
//! - **ALPN** offers `http/1.1` only: the upgrade is an HTTP/1.1 request
//!   whatever the client spoke, and a backend that picks anything else is
//!   refused by the handshake.
//!
//! The rustls configuration is built once per [`BackendTls`] (at its first
//! handshake) and shared by its clones; every handshake only clones it.
//!
//! # Failures
//!
//! The TLS handshake counts against the
//! [connect timeout](crate::WebSocketProxyLayer::connect_timeout)
//! (`504` when it runs out). A handshake that fails — a certificate of an
//! unknown issuer, expired, or for another name; a backend that wants a
//! client certificate and got none — is answered `502 Bad Gateway`, and the
//! `WARN` line `backend handshake failed` says why, e.g.
//! `error=TLS with the backend failed: invalid peer certificate:
//! UnknownIssuer`. Like a refused connect, it counts toward the backend's
//! [passive health](crate::balance::PassiveHealth) and moves the handshake
//! on to another backend of the set ([retries](crate::balance#retries)):
//! nothing has reached the client or the backend's application yet.
//!
//! Configuration mistakes are reported when configuring: a CA file that
//! cannot be read or holds no certificate, a key that does not match its
//! certificate, an invalid server name are [`TlsError`]s naming the file or
//! the value.
//!
//! # Example
//!
//! ```
//! use wsproxy::balance::Backends;
//! use wsproxy::tls::BackendTls;
//! use wsproxy::WebSocketProxyLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let ca_key = rcgen::KeyPair::generate()?;
//! # let mut ca = rcgen::CertificateParams::new(Vec::new())?;
//! # ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
//! # let internal_ca_pem = ca.self_signed(&ca_key)?.pem();
//! // Backends with certificates of a private CA for `chat.internal`,
//! // reached by address.
//! let tls = BackendTls::empty()
//!     .add_ca_pem(internal_ca_pem.as_bytes())?
//!     .server_name("chat.internal")?;
//! let backends = Backends::new([
//!     "wss://10.0.0.1:9443/ws".parse()?,
//!     "wss://10.0.0.2:9443/ws".parse()?,
//! ])
//! .tls(tls);
//! let layer = WebSocketProxyLayer::with_backends(backends);
//! # drop(layer);
//!
//! // Mistakes show when configuring.
//! let error = BackendTls::new().add_ca_pem_file("/no/such/ca.pem").unwrap_err();
//! assert!(error.to_string().contains("/no/such/ca.pem"));
//! # Ok(())
//! # }
//! ```
//!
//! [`Backends`]: crate::balance::Backends
//! [`Backends::tls`]: crate::balance::Backends::tls
//! [`WebSocketProxyLayer::backend_tls`]: crate::WebSocketProxyLayer::backend_tls
//! [`Upstream`]: crate::Upstream

mod backend;
mod error;
#[cfg(test)]
mod tests;

pub use backend::BackendTls;
pub use error::TlsError;
