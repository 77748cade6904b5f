//! The body of a backend's refusal, read from the backend connection as
//! the client takes it: `Content-Length`, chunked, or until the backend
//! closes (RFC 9112 §6.3).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::stream::{BackendStream, READ_SIZE};
use crate::Tunnels;

/// The longest chunk-size or trailer line taken; a longer one is an error.
const MAX_LINE: usize = 4096;

/// The body of a backend's refusal, relayed to the client as it arrives.
/// It ends with an error (which ends the client's response unfinished) if
/// the backend breaks its framing, closes early, or sends nothing for
/// `stall` (as nginx's `proxy_read_timeout`), or at a shutdown's deadline;
/// until then a shutdown waits for it, as for a tunnel.
pub(crate) struct RefusalBody {
    stream: BackendStream,
    /// The longest wait for the backend between two reads.
    stall: Duration,
    /// Armed while a read waits (made at the first wait, then reset).
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Read and not yet relayed.
    buf: BytesMut,
    framing: Framing,
    /// Told at the deadline of a started shutdown, by the task that keeps
    /// the shutdown waiting for this body: that task ends then, or when
    /// the body is dropped (which closes this), whichever comes first —
    /// even if the client stopped reading and the body is not polled.
    deadline: Option<oneshot::Receiver<()>>,
}

impl fmt::Debug for RefusalBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefusalBody")
            .field("framing", &self.framing)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line.
    Size,
    /// This much of a chunk's data is still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines (dropped), up to the empty line.
    Trailers,
}

/// What the buffer gave.
enum Step {
    Data(Bytes),
    End,
    /// More must be read.
    More,
}

fn broken(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("backend's refusal body: {what}"),
    )
}

impl RefusalBody {
    /// The body of the answer `head` to a `GET`, from `stream` whose
    /// bytes after the head are in `buf`, with at most `stall` between two
    /// reads; `None` if its `Content-Length` is not one number.
    pub(super) fn new(
        head: &Response<()>,
        stream: BackendStream,
        buf: BytesMut,
        stall: Duration,
        tunnels: &Tunnels,
    ) -> Option<Self> {
        let framing = framing(head.status(), head.version(), head.headers())?;
        let (mut tell, deadline) = oneshot::channel();
        let drain = tunnels.drain();
        tunnels.spawn(async move {
            tokio::select! {
                () = tell.closed() => {}
                () = drain.hard_close() => {
                    let _ = tell.send(());
                }
            }
        });
        Some(RefusalBody {
            stream,
            stall,
            stalled: None,
            buf,
            framing,
            deadline: Some(deadline),
        })
    }

    /// Make `headers` agree with the framing: a `Content-Length` beside a
    /// `Transfer-Encoding` is not the length (RFC 9112 §6.3) and goes; a
    /// length given twice (`12, 12`) is given once. `Transfer-Encoding`
    /// itself is hop-by-hop and goes with the rest.
    pub(super) fn framing_headers(&self, headers: &mut HeaderMap) {
        match self.framing {
            Framing::Length(length) => {
                headers.insert(header::CONTENT_LENGTH, length.into());
            }
            _ => {
                headers.remove(header::CONTENT_LENGTH);
            }
        }
    }

    /// Take what the buffer holds of the body.
    fn step(&mut self) -> io::Result<Step> {
        let buf = &mut self.buf;
        loop {
            match &mut self.framing {
                Framing::Done => return Ok(Step::End),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(Step::End);
                }
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    if let Framing::Chunked(chunk @ Chunk::Data(0)) = &mut self.framing {
                        *chunk = Chunk::DataEnd;
                    }
                    return Ok(Step::Data(buf.split_to(n as usize).freeze()));
                }
                Framing::Close => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                // A size line must have a size (httparse reads none as 0).
                Framing::Chunked(Chunk::Size)
                    if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) =>
                {
                    return Err(broken("invalid chunk size"));
                }
                Framing::Chunked(chunk @ Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *chunk = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_LINE => {
                        return Ok(Step::More);
                    }
                    _ => return Err(broken("invalid chunk size")),
                },
                Framing::Chunked(chunk @ Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if buf[..2] != *b"\r\n" {
                        return Err(broken("chunk data longer than its size"));
                    }
                    buf.advance(2);
                    *chunk = Chunk::Size;
                }
                Framing::Chunked(Chunk::Trailers) => {
                    match buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            buf.advance(2);
                            self.framing = Framing::Done;
                        }
                        Some(line) => buf.advance(line + 2),
                        None if buf.len() <= MAX_LINE => return Ok(Step::More),
                        None => return Err(broken("trailer line too long")),
                    }
                }
            }
        }
    }
}

/// How the body of an answer to a `GET` with `status` and `headers` ends
/// (RFC 9112 §6.3); `None` for a `Content-Length` that is not one number,
/// or a `Transfer-Encoding` in HTTP/1.0 (§6.1: faulty framing).
fn framing(status: StatusCode, version: Version, headers: &HeaderMap) -> Option<Framing> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Some(Framing::Done);
    }
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        if version == Version::HTTP_10 {
            return None;
        }
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Some(if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n: u64 = std::str::from_utf8(item).ok()?.parse().ok()?;
            if length.is_some_and(|seen| seen != n) {
                return None;
            }
            length = Some(n);
        }
    }
    Some(length.map_or(Framing::Close, Framing::Length))
}

impl Body for RefusalBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.framing != Framing::Done
            && let Some(deadline) = &mut this.deadline
            && let Poll::Ready(told) = Pin::new(deadline).poll(cx)
        {
            this.deadline = None;
            // Not told (the task is gone with its runtime): no deadline.
            if told.is_ok() {
                this.framing = Framing::Done;
                return Poll::Ready(Some(Err(io::Error::other(
                    "shutdown deadline passed while relaying a refusal body",
                ))));
            }
        }
        loop {
            match this.step() {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(e) => {
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.buf.capacity() - this.buf.len() < READ_SIZE / 4 {
                this.buf.reserve(READ_SIZE);
            }
            let read = match tokio_util::io::poll_read_buf(
                Pin::new(&mut this.stream),
                cx,
                &mut this.buf,
            ) {
                Poll::Ready(read) => {
                    if let Some(stalled) = &mut this.stalled {
                        stalled
                            .as_mut()
                            .reset(tokio::time::Instant::now() + this.stall);
                    }
                    read
                }
                Poll::Pending => {
                    let stall = this.stall;
                    let stalled = this
                        .stalled
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                    ready!(stalled.as_mut().poll(cx));
                    this.framing = Framing::Done;
                    tracing::info!(
                        timeout = ?stall,
                        "backend's refusal body stalled: the client's response ends unfinished"
                    );
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("backend's refusal body stalled for {stall:?}"),
                    ))));
                }
            };
            match read {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backend closed before the end of its refusal body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        fields
            .iter()
            .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = StatusCode::FORBIDDEN;
        assert_eq!(
            framing(ok, Version::HTTP_11, &headers(&[])),
            Some(Framing::Close)
        );
        assert_eq!(
            framing(ok, Version::HTTP_11, &headers(&[("content-length", "12")])),
            Some(Framing::Length(12))
        );
        assert_eq!(
            framing(
                ok,
                Version::HTTP_11,
                &headers(&[("content-length", "12, 12")])
            ),
            Some(Framing::Length(12))
        );
        assert_eq!(
            framing(
                ok,
                Version::HTTP_11,
                &headers(&[("content-length", "12, 13")])
            ),
            None
        );
        assert_eq!(
            framing(ok, Version::HTTP_11, &headers(&[("content-length", "+12")])),
            None
        );
        assert_eq!(
            framing(ok, Version::HTTP_11, &headers(&[("content-length", "")])),
            None
        );
        // Transfer-Encoding wins over Content-Length; only a final
        // `chunked` is chunked.
        assert_eq!(
            framing(
                ok,
                Version::HTTP_11,
                &headers(&[
                    ("transfer-encoding", "gzip, Chunked"),
                    ("content-length", "3")
                ])
            ),
            Some(Framing::Chunked(Chunk::Size))
        );
        assert_eq!(
            framing(
                ok,
                Version::HTTP_11,
                &headers(&[("transfer-encoding", "chunked, gzip")])
            ),
            Some(Framing::Close)
        );
        assert_eq!(
            framing(
                StatusCode::NO_CONTENT,
                Version::HTTP_11,
                &headers(&[("content-length", "3")])
            ),
            Some(Framing::Done)
        );
        assert_eq!(
            framing(StatusCode::NOT_MODIFIED, Version::HTTP_11, &headers(&[])),
            Some(Framing::Done)
        );
        // HTTP/1.0 has no transfer codings: faulty framing.
        let chunked = headers(&[("transfer-encoding", "chunked")]);
        assert_eq!(framing(ok, Version::HTTP_10, &chunked), None);
    }
}
