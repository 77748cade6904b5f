//! The HTTP/1.1 upgrade exchange with a backend over a connection: one
//! write of the request head, reads until the answer's head is whole
//! (parsed with `httparse`, the parser hyper itself uses), then the answer
//! classified. No HTTP client connection and no task: a `101` leaves the
//! connection and any bytes the backend sent after its head (early data)
//! to the tunnel; a refusal leaves them to the [`RefusalBody`] relayed to
//! the client.

use std::error::Error;
use std::fmt;
use std::io;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{HeaderName, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::Empty;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::refusal::RefusalBody;
use super::stream::{BackendStream, READ_SIZE, Upgraded};
// Sideways, to the tunnel lifecycle: a refusal's body streams from the
// backend after the handshake returns, and a shutdown must wait for it.
use crate::Tunnels;
use crate::opening::{SEC_WEBSOCKET_ACCEPT, accept_key, fresh_key, has_token};
use crate::upstream::Upstream;

/// The most a backend's answer head may take, informational answers
/// before it included (nginx's `proxy_buffer_size` is 4 or 8 KiB;
/// hyper's own limit is larger): past it, `502`.
const MAX_HEAD: usize = 64 * 1024;

/// The most header fields an answer head may have (hyper's default).
const MAX_HEADERS: usize = 100;

/// What a backend answered an upgrade request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A valid 101: the response head and the upgraded connection.
    Upgraded(Response<()>, Upgraded),
    /// Any other status; relay it to the client as it is.
    Refused(Response<RefusalBody>),
}

/// Why a backend gave no answer that can be relayed. The proxy answers
/// the client `504` for the timeouts and `502` for the rest.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connect failed (refused, unreachable, name not resolved, or
    /// the error of a [`Connector`](super::Connector) of the user's).
    Connect(io::Error),
    /// The TLS handshake with a `wss://` backend failed: its certificate
    /// was refused (the error says why, e.g. `invalid peer certificate:
    /// UnknownIssuer`), it refused ours, or the connection broke.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls(io::Error),
    /// TCP connect (and the TLS handshake with a `wss://` backend) did not
    /// finish within the connect timeout.
    ConnectTimeout(Duration),
    /// No complete answer within the handshake timeout.
    HandshakeTimeout(Duration),
    /// Sending the request or reading the answer failed.
    Io(io::Error),
    /// The backend's answer is not an HTTP/1.x response head.
    Malformed(Malformed),
    /// The backend closed the connection without an answer.
    Closed,
    /// A 101 without `Upgrade: websocket`.
    WrongUpgrade,
    /// A 101 whose `Sec-WebSocket-Accept` does not match the key.
    WrongAccept,
}

/// What is wrong with a backend's answer head.
#[derive(Debug)]
pub(crate) enum Malformed {
    /// `httparse` refused it.
    Parse(httparse::Error),
    /// More than [`MAX_HEAD`] bytes, or more than [`MAX_HEADERS`] fields.
    TooLarge,
    /// The connection ended within it.
    Truncated,
    /// A field name or value that HTTP does not allow.
    Field,
    /// A `Content-Length` that is not one number.
    Length,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Parse(e) => write!(f, "not an HTTP/1.x response head ({e})"),
            Malformed::TooLarge => write!(
                f,
                "response head larger than {} KiB or with more than {MAX_HEADERS} fields",
                MAX_HEAD / 1024
            ),
            Malformed::Truncated => f.write_str("connection closed within the response head"),
            Malformed::Field => f.write_str("invalid header field in the response head"),
            Malformed::Length => f.write_str("invalid Content-Length in the response head"),
        }
    }
}

impl Failure {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Failure::ConnectTimeout(_) | Failure::HandshakeTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A failed write or read, or a TLS failure that surfaced in one: with
    /// TLS 1.3 a backend refuses our client certificate (or its absence)
    /// after our side of the handshake is done, at the first read.
    fn io(e: io::Error) -> Self {
        #[cfg(feature = "tls")]
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
        {
            return Failure::Tls(io::Error::new(io::ErrorKind::InvalidData, tls.clone()));
        }
        Failure::Io(e)
    }

    /// Whether another backend may be tried: nothing was answered. A
    /// failed TLS handshake is a failed connect (as in nginx's
    /// `proxy_next_upstream error` and HAProxy's `retry-on conn-failure`):
    /// a certificate problem of one backend (expired, wrong name after a
    /// deployment) is what another backend can save.
    pub(crate) fn retryable(&self) -> bool {
        matches!(
            self,
            Failure::Connect(_)
                | Failure::Tls(_)
                | Failure::ConnectTimeout(_)
                | Failure::Io(_)
                | Failure::Malformed(_)
                | Failure::Closed
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect to the backend: {e}"),
            Failure::Tls(e) => write!(f, "TLS with the backend failed: {e}"),
            Failure::ConnectTimeout(t) => write!(f, "backend connect timed out after {t:?}"),
            Failure::HandshakeTimeout(t) => {
                write!(f, "backend did not answer the handshake within {t:?}")
            }
            Failure::Io(e) => write!(f, "backend handshake failed: {e}"),
            Failure::Malformed(what) => write!(f, "backend handshake failed: {what}"),
            Failure::Closed => f.write_str("backend closed the connection without an answer"),
            Failure::WrongUpgrade => f.write_str("backend answered 101 without Upgrade: websocket"),
            Failure::WrongAccept => {
                f.write_str("backend answered 101 with a wrong Sec-WebSocket-Accept")
            }
        }
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Failure::Connect(e) | Failure::Tls(e) | Failure::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Send the upgrade `request` over `stream` and classify the answer,
/// all within `timeout`; a refusal's body may then take `stall` between
/// two reads. `key` is the `Sec-WebSocket-Key` that was sent.
pub(crate) async fn handshake(
    mut stream: BackendStream,
    request: Request<Empty<Bytes>>,
    key: &HeaderValue,
    timeout: Duration,
    stall: Duration,
    tunnels: &Tunnels,
) -> Result<Answer, Failure> {
    let exchange = async {
        stream
            .write_all(&request_head(&request))
            .await
            .map_err(Failure::io)?;
        // A no-op over TCP; TLS sends what it holds.
        stream.flush().await.map_err(Failure::io)?;
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        let mut taken = 0;
        let head = loop {
            if let Some(head) = parse_head(&mut buf, &mut taken)? {
                break head;
            }
            if taken + buf.len() >= MAX_HEAD {
                return Err(Failure::Malformed(Malformed::TooLarge));
            }
            buf.reserve(READ_SIZE);
            if stream.read_buf(&mut buf).await.map_err(Failure::io)? == 0 {
                return Err(if taken + buf.len() == 0 {
                    Failure::Closed
                } else {
                    Failure::Malformed(Malformed::Truncated)
                });
            }
        };
        if head.status() != StatusCode::SWITCHING_PROTOCOLS {
            let body = RefusalBody::new(&head, stream, buf, stall, tunnels)
                .ok_or(Failure::Malformed(Malformed::Length))?;
            let (mut parts, ()) = head.into_parts();
            body.framing_headers(&mut parts.headers);
            return Ok(Answer::Refused(Response::from_parts(parts, body)));
        }
        if !has_token(head.headers(), &UPGRADE, "websocket") {
            return Err(Failure::WrongUpgrade);
        }
        if head.headers().get(SEC_WEBSOCKET_ACCEPT) != Some(&accept_key(key.as_bytes())) {
            return Err(Failure::WrongAccept);
        }
        // What the backend sent after its head belongs to the tunnel.
        Ok(Answer::Upgraded(head, Upgraded::new(stream, buf)))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Failure::HandshakeTimeout(timeout))?
}

/// The head of `request`, in one buffer of the size it needs.
fn request_head(request: &Request<Empty<Bytes>>) -> Vec<u8> {
    let method = request.method().as_str();
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut head = Vec::with_capacity(method.len() + target.len() + 13 + fields + 2);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The answer head at the start of `buf`, once it is whole: it is taken
/// from `buf`, which keeps what follows. Informational answers (`100`,
/// `103`) before it are skipped, as hyper's client does; `taken` counts
/// the bytes of those.
fn parse_head(buf: &mut BytesMut, taken: &mut usize) -> Result<Option<Response<()>>, Failure> {
    loop {
        // Left uninitialised: filling a hundred slots costs more than
        // parsing a 101.
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Failure::Malformed(Malformed::TooLarge));
            }
            Err(e) => return Err(Failure::Malformed(Malformed::Parse(e))),
        };
        let code = parsed.code.unwrap_or_default();
        if (100..200).contains(&code) && code != 101 {
            buf.advance(len);
            *taken += len;
            continue;
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| Failure::Malformed(Malformed::Parse(httparse::Error::Status)))?;
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Where each field lies, so its value can share the head's bytes
        // (httparse's slices are of its input).
        let start = buf.as_ptr() as usize;
        let within = |part: &[u8]| {
            let at = (part.as_ptr() as usize).checked_sub(start)?;
            (at + part.len() <= len).then_some(at..at + part.len())
        };
        let fields = parsed
            .headers
            .iter()
            .map(|field| Some((within(field.name.as_bytes())?, within(field.value)?)))
            .collect::<Option<Vec<_>>>()
            .ok_or(Failure::Malformed(Malformed::Field))?;
        let bytes = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(fields.len());
        for (name, value) in fields {
            let name = HeaderName::from_bytes(&bytes[name])
                .map_err(|_| Failure::Malformed(Malformed::Field))?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(value))
                .map_err(|_| Failure::Malformed(Malformed::Field))?;
            headers.append(name, value);
        }
        let mut head = Response::new(());
        *head.status_mut() = status;
        *head.version_mut() = version;
        *head.headers_mut() = headers;
        return Ok(Some(head));
    }
}

/// Add what an upgrade request for `upstream` needs and lacks (`Host`,
/// `Upgrade`, `Connection`, `Sec-WebSocket-Version`, a fresh
/// `Sec-WebSocket-Key`); returns the key.
pub(crate) fn complete_upgrade_request(
    request: &mut Request<Empty<Bytes>>,
    upstream: &Upstream,
) -> HeaderValue {
    use crate::opening::{SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};
    let headers = request.headers_mut();
    headers
        .entry(http::header::HOST)
        .or_insert_with(|| upstream.host_header());
    headers
        .entry(UPGRADE)
        .or_insert(HeaderValue::from_static("websocket"));
    headers
        .entry(http::header::CONNECTION)
        .or_insert(HeaderValue::from_static("Upgrade"));
    headers
        .entry(SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
    headers
        .entry(SEC_WEBSOCKET_KEY)
        .or_insert_with(fresh_key)
        .clone()
}
