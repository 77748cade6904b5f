//! HTTP/1.1 by hand on the client's side: a request's bytes, a response's
//! head and body as they arrive.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::time::within;

/// A valid handshake request for `path` with extra header lines.
pub fn handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: proxy.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A PROXY protocol v1 header saying the connection comes from `source`
/// (to `10.0.0.1:443`, or `[2001:db8::1]:443`).
pub fn proxy_v1(source: SocketAddr) -> Vec<u8> {
    let (family, destination) = match source {
        SocketAddr::V4(_) => ("TCP4", "10.0.0.1"),
        SocketAddr::V6(_) => ("TCP6", "2001:db8::1"),
    };
    format!(
        "PROXY {family} {} {destination} {} 443\r\n",
        source.ip(),
        source.port()
    )
    .into_bytes()
}

/// A PROXY protocol v2 header (`PROXY` command, TCP) saying the
/// connection comes from `source`, with one TLV (a unique ID) after the
/// addresses; built from the specification by hand.
pub fn proxy_v2(source: SocketAddr) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match source {
        SocketAddr::V4(v4) => {
            addresses.extend_from_slice(&v4.ip().octets());
            addresses.extend_from_slice(&[10, 0, 0, 1]);
            0x11
        }
        SocketAddr::V6(v6) => {
            addresses.extend_from_slice(&v6.ip().octets());
            addresses.extend_from_slice(
                &"2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            0x21
        }
    };
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&443u16.to_be_bytes());
    // PP2_TYPE_UNIQUE_ID, 4 bytes.
    addresses.extend_from_slice(&[0x05, 0, 4, 1, 2, 3, 4]);
    let mut header = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    header.push(0x21);
    header.push(family);
    header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    header.extend_from_slice(&addresses);
    header
}

/// Send raw `bytes` on a new connection to `addr`; returns the connection.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// A parsed HTTP response head.
#[derive(Debug)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// The whole head as text.
    pub text: String,
    /// Bytes read past the head.
    pub rest: Vec<u8>,
}

impl Head {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.text, name)
    }

    /// Every header `name` (case-insensitive), in order.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.text
            .lines()
            .skip(1)
            .filter_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .collect()
    }
}

/// The first header `name` in an HTTP head (a request's or a response's).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Read one HTTP response head from `stream`.
pub async fn read_head(stream: &mut TcpStream) -> Head {
    read_head_after(stream, Vec::new()).await
}

/// Read one HTTP response head from `stream`, starting with the bytes
/// `buf` that were already read from it.
pub async fn read_head_after(stream: &mut TcpStream, mut buf: Vec<u8>) -> Head {
    let mut chunk = [0u8; 4096];
    within("a response head", async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                let text = String::from_utf8(buf).unwrap();
                let status = text[9..12].parse().unwrap();
                return Head { status, text, rest };
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before a full head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// Read the body of the response whose head is `head`: by
/// `Content-Length`, chunked, or (neither) up to the end of the stream.
/// Panics if bytes follow the body.
pub async fn read_body(stream: &mut TcpStream, head: &Head) -> Vec<u8> {
    let (body, rest) = read_body_and_rest(stream, head).await;
    assert!(
        rest.is_empty(),
        "{} bytes past the body: {:?}",
        rest.len(),
        String::from_utf8_lossy(&rest)
    );
    body
}

/// Like [`read_body`], also returning the bytes read past the body (e.g.
/// the start of a pipelined response).
pub async fn read_body_and_rest(stream: &mut TcpStream, head: &Head) -> (Vec<u8>, Vec<u8>) {
    let mut raw = head.rest.clone();
    if let Some(len) = head.header("content-length") {
        let len: usize = len.parse().unwrap();
        raw = read_at_least(stream, raw, len).await;
        let rest = raw.split_off(len);
        return (raw, rest);
    }
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    if !chunked {
        within("a close-delimited body", stream.read_to_end(&mut raw))
            .await
            .unwrap();
        return (raw, Vec::new());
    }
    let mut body = Vec::new();
    // Each round consumes one chunk; the last one has size 0.
    for _ in 0..100_000 {
        let line_end = loop {
            if let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            let len = raw.len();
            raw = read_at_least(stream, raw, len + 1).await;
        };
        let size_line = String::from_utf8_lossy(&raw[..line_end]).into_owned();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        let need = line_end + 2 + size + 2;
        raw = read_at_least(stream, raw, need).await;
        if size > 0 {
            body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        }
        raw.drain(..need);
        if size == 0 {
            return (body, raw);
        }
    }
    panic!("too many chunks");
}

/// Read until `stream` has produced at least `n` bytes past `have`.
pub async fn read_at_least(stream: &mut TcpStream, mut have: Vec<u8>, n: usize) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    within("more bytes", async {
        while have.len() < n {
            let got = stream.read(&mut chunk).await.unwrap();
            assert!(got > 0, "closed after {} bytes", have.len());
            have.extend_from_slice(&chunk[..got]);
        }
        have
    })
    .await
}

/// Read until the other side closes `stream` (an end of stream or an
/// error such as a reset), within [`LIMIT`](crate::LIMIT); what was read.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    within("the other side to close the connection", async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    got
}
