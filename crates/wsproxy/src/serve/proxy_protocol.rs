//! The PROXY protocol (v1 text and v2 binary, HAProxy's specification):
//! a load balancer in TCP mode (AWS NLB, HAProxy `mode tcp`, Envoy) sends
//! the client's address in a header before anything else, and the server
//! takes it as the client address for forwarding headers, limits and logs.
//!
//! Parsing is the `proxy-header` crate's; this reads the header from the
//! socket without reading past it (so the TLS or HTTP bytes after it are
//! the protocol's, untouched) and decides what to trust.

use ipnet::IpNet;
use proxy_header::{Error, ParseConfig, ProxyHeader};
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// The PROXY protocol on a [`Server`](super::Server)'s listener: every
/// connection must start with a PROXY header (v1 or v2), whose source
/// address becomes the client's — in [`ClientAddr`](crate::ClientAddr),
/// forwarding headers, per-IP limits and logs. A connection without a
/// valid header, or from an address not [allowed](Self::allow_from) to
/// send one, is closed (as nginx and HAProxy do) with a log line.
///
/// Enable it only on listeners that the load balancer alone can reach,
/// or list the balancers with [`allow_from`](Self::allow_from): anyone
/// who can send a header can claim any address. A `LOCAL` header (a
/// balancer's own health check) keeps the TCP peer as the client.
///
/// ```
/// use wsproxy::serve::{ProxyProtocol, Server};
///
/// # fn app() -> axum::Router { axum::Router::new() }
/// let server = Server::new(app()).proxy_protocol(
///     ProxyProtocol::new().allow_from(["10.0.0.0/8".parse().unwrap()]),
/// );
/// # let _ = server;
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProxyProtocol {
    /// Peers allowed to send a header; `None`: any.
    allowed: Option<Vec<IpNet>>,
}

/// Bytes a header may take: a v1 header is at most 107; a v2 header's
/// addresses and TLVs (AWS adds a VPC endpoint ID, others a TLS summary)
/// stay far below this.
const MAX_HEADER: usize = 4096;

impl ProxyProtocol {
    /// Require a PROXY header on every connection, from any peer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept headers only from peers in `nets` (the load balancers); a
    /// connection from anywhere else is closed.
    #[must_use]
    pub fn allow_from(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.allowed = Some(nets.into_iter().collect());
        self
    }

    /// Whether `peer` may send a header.
    fn allows(&self, peer: IpAddr) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|nets| crate::client::is_trusted(peer, nets))
    }
}

/// Why a connection's PROXY header was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The peer may not send one.
    NotAllowed,
    /// Not a valid header (or none at all).
    Invalid(Error),
    /// The connection ended or failed before a whole header.
    Io(std::io::Error),
}

impl Refusal {
    /// The label in metrics.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Refusal::NotAllowed => "proxy_protocol_not_allowed",
            Refusal::Invalid(_) | Refusal::Io(_) => "proxy_protocol_invalid",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAllowed => f.write_str("this address may not send a PROXY header"),
            Refusal::Invalid(Error::Invalid) => f.write_str("no valid PROXY header"),
            Refusal::Invalid(e) => write!(f, "invalid PROXY header: {e}"),
            Refusal::Io(e) => write!(f, "connection failed before a whole PROXY header: {e}"),
        }
    }
}

/// Read the PROXY header at the start of `tcp`, from `peer`, and return
/// the client's address: the header's source, or `peer` for a `LOCAL`
/// header or an unknown address family. Exactly the header is consumed.
/// Unbounded in time: the caller bounds it.
pub(crate) async fn read(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    config: &ProxyProtocol,
) -> Result<SocketAddr, Refusal> {
    if !config.allows(peer.ip()) {
        return Err(Refusal::NotAllowed);
    }
    let config = ParseConfig {
        include_tlvs: false,
        ..ParseConfig::default()
    };
    let mut buf = vec![0; MAX_HEADER];
    // Senders write the header at once (the specification asks them to),
    // so it nearly always comes whole in the first segment: look at it
    // there, then consume exactly its length.
    let n = tcp.peek(&mut buf).await.map_err(Refusal::Io)?;
    let parsed = match ProxyHeader::parse(&buf[..n], config) {
        Ok((header, len)) => Ok((header.proxied_address().map(|a| a.source), len)),
        Err(e) => Err(e),
    };
    let client = match parsed {
        Ok((client, len)) => {
            tcp.read_exact(&mut buf[..len]).await.map_err(Refusal::Io)?;
            client
        }
        // In pieces, or nothing yet: read it piece by piece, never past
        // its end (peeking again would spin on the same bytes).
        Err(Error::BufferTooShort) => {
            let header = read_piecewise(tcp).await?;
            let (header, _) = ProxyHeader::parse(&header, config).map_err(Refusal::Invalid)?;
            header.proxied_address().map(|a| a.source)
        }
        Err(e) => return Err(Refusal::Invalid(e)),
    };
    Ok(client.unwrap_or(peer))
}

/// Read one whole header from `tcp` and nothing after it: a v1 header up
/// to its line end, a v2 header by the length it gives.
async fn read_piecewise(tcp: &mut TcpStream) -> Result<Vec<u8>, Refusal> {
    /// The longest v1 header, line end included.
    const MAX_V1: usize = 107;
    let mut header = vec![0; 16];
    tcp.read_exact(&mut header[..1])
        .await
        .map_err(Refusal::Io)?;
    if header[0] == b'P' {
        header.truncate(1);
        let mut byte = [0];
        while !header.ends_with(b"\r\n") {
            if header.len() == MAX_V1 {
                return Err(Refusal::Invalid(Error::HeaderTooBig));
            }
            tcp.read_exact(&mut byte).await.map_err(Refusal::Io)?;
            header.push(byte[0]);
        }
        return Ok(header);
    }
    tcp.read_exact(&mut header[1..])
        .await
        .map_err(Refusal::Io)?;
    if !header.starts_with(b"\r\n\r\n\x00\r\nQUIT\n") {
        return Err(Refusal::Invalid(Error::Invalid));
    }
    let len = 16 + usize::from(u16::from_be_bytes([header[14], header[15]]));
    if len > MAX_HEADER {
        return Err(Refusal::Invalid(Error::HeaderTooBig));
    }
    header.resize(len, 0);
    tcp.read_exact(&mut header[16..])
        .await
        .map_err(Refusal::Io)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::io::AsyncWriteExt as _;

    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }

    /// A v2 header for a TCP over IPv4 connection from `src`, built by
    /// hand from the specification (not by the crate under test).
    fn v2(src: [u8; 4], src_port: u16, command: u8) -> Vec<u8> {
        let mut header = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
        header.push(0x20 | command); // version 2, LOCAL (0) or PROXY (1)
        header.push(0x11); // AF_INET, STREAM
        header.extend_from_slice(&12u16.to_be_bytes());
        header.extend_from_slice(&src);
        header.extend_from_slice(&[10, 0, 0, 1]);
        header.extend_from_slice(&src_port.to_be_bytes());
        header.extend_from_slice(&443u16.to_be_bytes());
        header
    }

    #[tokio::test]
    async fn v1_and_v2_give_the_source_and_leave_the_rest() {
        for (header, expected) in [
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec(),
                "203.0.113.7:51000",
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n".to_vec(),
                "[2001:db8::7]:51000",
            ),
            (v2([198, 51, 100, 9], 40000, 1), "198.51.100.9:40000"),
        ] {
            let (mut client, mut server, peer) = pair().await;
            let mut sent = header.clone();
            sent.extend_from_slice(b"GET / HTTP/1.1\r\n");
            client.write_all(&sent).await.unwrap();
            let addr = read(&mut server, peer, &ProxyProtocol::new())
                .await
                .unwrap();
            assert_eq!(addr.to_string(), expected);
            let mut rest = [0; 16];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
        }
    }

    #[tokio::test]
    async fn local_and_unknown_keep_the_peer() {
        for header in [b"PROXY UNKNOWN\r\n".to_vec(), v2([1, 2, 3, 4], 1, 0)] {
            let (mut client, mut server, peer) = pair().await;
            client.write_all(&header).await.unwrap();
            let addr = read(&mut server, peer, &ProxyProtocol::new())
                .await
                .unwrap();
            assert_eq!(addr, peer);
        }
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_waited_for() {
        let (mut client, mut server, peer) = pair().await;
        let reading =
            tokio::spawn(async move { read(&mut server, peer, &ProxyProtocol::new()).await });
        client.write_all(b"PROXY TCP4 203.0.").await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client
            .write_all(b"113.7 10.0.0.1 51000 443\r\n")
            .await
            .unwrap();
        let addr = reading.await.unwrap().unwrap();
        assert_eq!(addr.to_string(), "203.0.113.7:51000");

        let (mut client, mut server, peer) = pair().await;
        let reading = tokio::spawn(async move {
            let addr = read(&mut server, peer, &ProxyProtocol::new()).await;
            let mut rest = [0; 3];
            server.read_exact(&mut rest).await.unwrap();
            (addr, rest)
        });
        let header = v2([198, 51, 100, 9], 40000, 1);
        client.write_all(&header[..10]).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&header[10..]).await.unwrap();
        client.write_all(b"GET").await.unwrap();
        let (addr, rest) = reading.await.unwrap();
        assert_eq!(addr.unwrap().to_string(), "198.51.100.9:40000");
        assert_eq!(&rest, b"GET");
    }

    #[tokio::test]
    async fn no_header_a_bad_one_or_a_stranger_is_refused() {
        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let refused = read(&mut server, peer, &ProxyProtocol::new()).await;
        assert!(matches!(refused, Err(Refusal::Invalid(_))), "{refused:?}");

        let (mut client, mut server, peer) = pair().await;
        client
            .write_all(b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n")
            .await
            .unwrap();
        let refused = read(&mut server, peer, &ProxyProtocol::new()).await;
        assert!(matches!(refused, Err(Refusal::Invalid(_))), "{refused:?}");

        let (mut client, mut server, peer) = pair().await;
        client
            .write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n")
            .await
            .unwrap();
        let only = ProxyProtocol::new().allow_from(["10.0.0.0/8".parse().unwrap()]);
        let refused = read(&mut server, peer, &only).await;
        assert!(matches!(refused, Err(Refusal::NotAllowed)), "{refused:?}");
        let loopback = ProxyProtocol::new().allow_from(["127.0.0.0/8".parse().unwrap()]);
        assert!(read(&mut server, peer, &loopback).await.is_ok());

        // A client that closes before a whole header.
        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"PROXY TCP4").await.unwrap();
        drop(client);
        let refused = read(&mut server, peer, &ProxyProtocol::new()).await;
        assert!(refused.is_err(), "{refused:?}");
    }
}
