//! Certificates made at run time (no key is ever committed), as PEM in
//! memory, as rustls configurations and as files, and a `wss://` echo
//! backend that serves them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::{Acceptor, WebPkiClientVerifier};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::echo::echo_messages;
use crate::time::within;

/// A CA made for one test.
pub struct Ca {
    /// The CA certificate, PEM.
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

// rcgen's issuer (it holds the private key) is not `Debug`.
impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("pem", &self.pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by
    /// this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            ca: self.pem.clone(),
            files: OnceLock::new(),
        }
    }

    /// A root store holding this CA.
    pub fn roots(&self) -> Arc<RootCertStore> {
        roots(&self.pem)
    }
}

/// A root store holding the certificates in `pem`.
fn roots(pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(roots)
}

/// A certificate, its key and the CA that signed it, in PEM; written to
/// files on demand ([`files`](Self::files)).
#[derive(Debug)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert: String,
    /// Its private key, PEM (PKCS#8).
    pub key: String,
    /// The certificate of the CA that signed it, PEM.
    pub ca: String,
    files: OnceLock<PemFiles>,
}

impl Leaf {
    /// A certificate for `localhost` and 127.0.0.1, signed by a CA of its
    /// own.
    pub fn localhost() -> Self {
        Self::for_names(&["localhost", "127.0.0.1"])
    }

    /// A certificate for `names` (DNS names or IP addresses), signed by a
    /// CA of its own.
    pub fn for_names(names: &[&str]) -> Self {
        Ca::new("test CA").leaf(names)
    }

    /// A rustls server configuration presenting this certificate, with
    /// ALPN `h2` and `http/1.1`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config_for_clients_of(None)
    }

    /// [`server_config`](Self::server_config) that, with `client_ca` (PEM),
    /// demands a client certificate signed by it (mutual TLS).
    fn server_config_for_clients_of(&self, client_ca: Option<&str>) -> Arc<ServerConfig> {
        let provider = Arc::new(ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots(ca), provider)
                    .build()
                    .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let chain = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes()).unwrap();
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A TLS client that trusts this certificate's CA and offers `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let provider = Arc::new(ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&self.ca))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS connection to `addr` as `localhost`, offering `alpn`.
    pub async fn connect(&self, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let tcp = within("a TCP connection", TcpStream::connect(addr))
            .await
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        within("the TLS handshake", self.connector(alpn).connect(name, tcp))
            .await
            .expect("TLS handshake succeeds")
    }

    /// This certificate as PEM files in a fresh folder, written on the
    /// first call and removed when the leaf drops.
    pub fn files(&self) -> &PemFiles {
        self.files.get_or_init(|| PemFiles::write(self))
    }
}

/// A [`Leaf`]'s PEM files, in a fresh folder of their own that is removed
/// on drop.
#[derive(Debug)]
pub struct PemFiles {
    dir: PathBuf,
    /// The certificate, e.g. for `--tls-cert`.
    pub cert: PathBuf,
    /// Its private key (PKCS#8), e.g. for `--tls-key`.
    pub key: PathBuf,
    /// The CA certificate, e.g. for `--backend-ca`.
    pub ca: PathBuf,
}

impl PemFiles {
    fn write(leaf: &Leaf) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsproxy-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let files = Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
            dir,
        };
        std::fs::write(&files.cert, &leaf.cert).unwrap();
        std::fs::write(&files.key, &leaf.key).unwrap();
        std::fs::write(&files.ca, &leaf.ca).unwrap();
        files
    }

    /// A file in this folder (removed with it), not written.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `path` as a `&str` flag value.
    pub fn arg(path: &Path) -> &str {
        path.to_str().unwrap()
    }
}

impl Drop for PemFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a [`TlsBackend`] saw of one TLS client hello.
#[derive(Clone, Debug)]
pub struct Hello {
    /// The server name sent (SNI), if any.
    pub sni: Option<String>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// ALPN protocol agreed, after a completed handshake.
    pub agreed: Option<String>,
}

/// A `wss://` echo backend: TLS with a [`Leaf`] (ALPN `h2` and
/// `http/1.1`), then a tokio-tungstenite echo of text and binary
/// messages. It records each client hello and counts what failed and what
/// succeeded.
#[derive(Clone, Debug)]
pub struct TlsBackend {
    /// Its address.
    pub addr: SocketAddr,
    /// Each client hello, in order.
    pub hellos: Arc<Mutex<Vec<Hello>>>,
    /// TLS handshakes that failed on the backend's side.
    pub tls_failures: Arc<AtomicUsize>,
    /// WebSocket handshakes completed.
    pub sessions: Arc<AtomicUsize>,
}

impl TlsBackend {
    /// Serve `leaf`; with `client_ca` (PEM), demand a client certificate
    /// signed by it.
    pub async fn start(leaf: &Leaf, client_ca: Option<&str>) -> Self {
        let config = leaf.server_config_for_clients_of(client_ca);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Self {
            addr: listener.local_addr().unwrap(),
            hellos: Arc::default(),
            tls_failures: Arc::default(),
            sessions: Arc::default(),
        };
        let this = backend.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(this.clone().serve(tcp, config.clone()));
            }
        });
        backend
    }

    async fn serve(self, tcp: TcpStream, config: Arc<ServerConfig>) {
        let Ok(start) = LazyConfigAcceptor::new(Acceptor::default(), tcp).await else {
            self.tls_failures.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let hello = start.client_hello();
        let seen = Hello {
            sni: hello.server_name().map(str::to_owned),
            alpn: hello
                .alpn()
                .into_iter()
                .flatten()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
            agreed: None,
        };
        // Recorded before the backend answers: the proxy cannot have
        // given up on it yet.
        let index = {
            let mut hellos = self.hellos.lock().unwrap();
            hellos.push(seen);
            hellos.len() - 1
        };
        let Ok(tls) = start.into_stream(config).await else {
            self.tls_failures.fetch_add(1, Ordering::SeqCst);
            return;
        };
        self.hellos.lock().unwrap()[index].agreed = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let Ok(ws) = tokio_tungstenite::accept_async(tls).await else {
            // TLS 1.3: a missing client certificate shows here.
            self.tls_failures.fetch_add(1, Ordering::SeqCst);
            return;
        };
        self.sessions.fetch_add(1, Ordering::SeqCst);
        echo_messages(ws).await;
    }

    /// Its `wss://` URL through `host` (a name its certificate may or may
    /// not hold, or an address), with the path `/`.
    pub fn url(&self, host: &str) -> String {
        format!("wss://{host}:{}/", self.addr.port())
    }

    /// The last client hello.
    pub fn last_hello(&self) -> Hello {
        self.hellos
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no client hello")
    }
}
