//! What the gateway's test files share: a `wsgate` child process, test
//! certificates made at run time, and TLS and HTTP/2 clients.

// Each test file uses its own part of this module.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// How long any one step of a test may take.
pub const LIMIT: Duration = Duration::from_secs(10);

/// A `wsgate` child process, killed and reaped on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Gateway {
    /// Start `wsgate --listen 127.0.0.1:0 ARGS` and wait for its address.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        Self::spawn(command)
    }

    /// [`start`](Self::start) with the open file limit (soft and hard) at
    /// `nofile`, as `ulimit -n` sets it; the shell `exec`s wsgate, so the
    /// child's PID is wsgate's.
    pub fn start_with_nofile(nofile: u64, args: &[&str]) -> Self {
        let mut command = Command::new("sh");
        command
            .args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")])
            .arg(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        // Read the first line on a thread, so the wait is bounded, and keep
        // reading both pipes so the gateway never writes to a closed one.
        let stdout = child.stdout.take().unwrap();
        let (first, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let _ = first.send(line.unwrap_or_default());
            }
        });
        let stderr = child.stderr.take().unwrap();
        let (log, logged) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let _ = log.send(line.unwrap_or_default());
            }
        });
        let line = match lines.recv_timeout(LIMIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let mut log = Vec::new();
                while let Ok(line) = logged.recv_timeout(Duration::from_secs(1)) {
                    log.push(line);
                }
                panic!(
                    "wsgate printed no address ({e}; {status:?}); its log:\n{}",
                    log.join("\n")
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("wsgate listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            log: logged,
        }
    }

    /// What the gateway has logged so far (that was not read before).
    pub fn log(&self) -> String {
        let mut lines = Vec::new();
        while let Ok(line) = self.log.try_recv() {
            lines.push(line);
        }
        lines.join("\n")
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run wsgate with `args` and expect a usage error (exit code 2); its stderr.
pub fn refused(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{args:?} must be a usage error"
    );
    String::from_utf8(output.stderr).unwrap()
}

/// A certificate (by default for `localhost` and `127.0.0.1`) signed by a CA of its
/// own, made at run time: its PEM files live in a fresh folder that is
/// removed on drop (no private key is ever committed).
pub struct TestCert {
    dir: PathBuf,
    /// The leaf certificate (PEM), for `--tls-cert`.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8), for `--tls-key`.
    pub key: PathBuf,
    /// The CA certificate (PEM), e.g. for `--backend-ca`.
    pub ca_file: PathBuf,
    /// The CA certificate, for clients to trust.
    pub ca: CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> Self {
        Self::with_names(&["localhost", "127.0.0.1"])
    }

    /// A certificate for `names` (DNS names or IP addresses).
    pub fn with_names(names: &[&str]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();

        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wsgate test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();

        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|&name| name.to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        let leaf = params.signed_by(&key, &ca).unwrap();

        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&cert_file, leaf.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self {
            dir,
            cert: cert_file,
            key: key_file,
            ca_file,
            ca: ca.der().clone(),
        }
    }

    /// A file in this certificate's folder (removed with it).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `path` as a `&str` flag value.
    pub fn arg(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    /// A TLS client that trusts this certificate's CA and offers `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS connection to `addr` as `localhost`, offering `alpn`.
    pub async fn connect(&self, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let tcp = timeout(LIMIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        timeout(LIMIT, self.client(alpn).connect(name, tcp))
            .await
            .expect("TLS handshake in time")
            .expect("TLS handshake succeeds")
    }
}

/// A `wss://` echo backend serving `cert`; with `client_ca`, it requires
/// a client certificate signed by that one's CA (mutual TLS).
pub async fn wss_echo(cert: &TestCert, client_ca: Option<&TestCert>) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;

    let chain = CertificateDer::pem_file_iter(&cert.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(client) => {
            let mut roots = RootCertStore::empty();
            roots.add(client.ca.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/2 client connection over `io` (TLS after ALPN `h2`, or plain
/// TCP for h2c with prior knowledge).
pub async fn h2_client<Io>(io: Io) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = timeout(
        LIMIT,
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)),
    )
    .await
    .expect("HTTP/2 handshake in time")
    .expect("HTTP/2 handshake succeeds");
    tokio::spawn(connection);
    sender
}

/// `GET path` on an HTTP/2 connection: the status and the body as text.
pub async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    authority: &str,
    scheme: &str,
    path: &str,
) -> (http::StatusCode, String) {
    let request = http::Request::get(format!("{scheme}://{authority}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = timeout(LIMIT, sender.send_request(request))
        .await
        .expect("a response in time")
        .expect("a response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status();
    let body = timeout(LIMIT, response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The tunnels the status page says were opened in all and over HTTP/2.
pub fn opened(page: &str) -> (u64, u64) {
    let rest = page
        .split_once("Tunnels opened: ")
        .unwrap_or_else(|| panic!("no tunnel counts on the page:\n{page}"))
        .1;
    let (all, rest) = rest.split_once(" (over HTTP/2: ").unwrap();
    let (h2, _) = rest.split_once(')').unwrap();
    (all.parse().unwrap(), h2.parse().unwrap())
}
