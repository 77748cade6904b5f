//! How a client connection is read before hyper's HTTP gets it: its
//! first bytes read once and looked at, and HTTP/2 read in large pieces.
//!
//! hyper-util's `auto` server reads a connection's first 24 bytes alone to
//! tell the HTTP/2 preface from an HTTP/1.1 request, then hands them to
//! hyper, which reads the rest of the head and, finding its buffer already
//! started, grows it (a reallocation and an 8 KiB copy): two system calls
//! and two buffers for a head that arrived in one segment. [`ReadAhead`]
//! reads what has arrived (up to [`READ_AHEAD`] bytes) into a per-thread
//! scratch buffer, keeps only those bytes, tells HTTP/2 from HTTP/1.1 by
//! them ([`ReadAhead::poll_http2`]), and hands them to hyper's first read,
//! whole: one `recvfrom` for a handshake's request, as in nginx.
//!
//! Later reads go straight through, but for HTTP/2
//! ([`ReadAhead::buffer_reads`]): the `h2` codec under hyper reads a
//! connection a frame at a time, so its reads go through a
//! [`ReadBuffer`] of [`HTTP2_READ_BUFFER`] bytes. (Under TLS the buffer is
//! beneath rustls: `connection` wraps the socket in a
//! [`Buffered`](crate::read_buffer::Buffered).)

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::read_buffer::ReadBuffer;

/// The most the first read takes: the head of a WebSocket handshake, a
/// browser's cookies included, fits; what does not is read by hyper.
pub(crate) const READ_AHEAD: usize = 4096;

/// The most one buffered read of an HTTP/2 connection takes (the
/// stream windows already let a client have far more in flight).
pub(crate) const HTTP2_READ_BUFFER: usize = 64 * 1024;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

std::thread_local! {
    /// Where first reads land before what they got is kept.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_AHEAD].into_boxed_slice());
}

pin_project! {
    /// A connection whose first bytes are read ahead.
    #[derive(Debug)]
    pub(crate) struct ReadAhead<IO> {
        #[pin]
        io: IO,
        ahead: Ahead,
        // Buffered reads (`buffer_reads`).
        buffer: Option<ReadBuffer>,
    }
}

#[derive(Debug)]
enum Ahead {
    /// Nothing read yet.
    Unread,
    /// Bytes read ahead; those from `start` on are not handed out yet.
    Held { bytes: Vec<u8>, start: usize },
    /// Reads go straight through.
    Passed,
}

impl<IO> ReadAhead<IO> {
    pub(crate) fn new(io: IO) -> Self {
        ReadAhead {
            io,
            ahead: Ahead::Unread,
            buffer: None,
        }
    }

    /// Read up to [`HTTP2_READ_BUFFER`] bytes at a time from now on, for
    /// HTTP/2's codec (which reads a frame at a time).
    pub(crate) fn buffer_reads(&mut self) {
        self.buffer
            .get_or_insert_with(|| ReadBuffer::new(HTTP2_READ_BUFFER));
    }
}

impl<IO> ReadAhead<IO> {
    /// Whether bytes were read ahead and not handed out yet.
    pub(crate) fn holds_bytes(&self) -> bool {
        matches!(self.ahead, Ahead::Held { .. })
    }
}

impl<IO: AsyncRead> ReadAhead<IO> {
    /// Whether the connection starts with the HTTP/2 preface: the first
    /// bytes are read (more only while they could still be the preface),
    /// and kept for the reads that follow. `false` at the end of the
    /// stream, which the HTTP/1.1 side then reads.
    pub(crate) fn poll_http2(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut this = self.project();
        loop {
            let held: &[u8] = match &*this.ahead {
                Ahead::Unread => &[],
                Ahead::Held { bytes, start } => &bytes[*start..],
                Ahead::Passed => return Poll::Ready(Ok(false)),
            };
            let n = held.len().min(PREFACE.len());
            if held[..n] != PREFACE[..n] {
                return Poll::Ready(Ok(false));
            }
            if n == PREFACE.len() {
                return Poll::Ready(Ok(true));
            }
            // Nothing yet, or the start of the preface: read on.
            if ready!(read_ahead(this.io.as_mut(), cx, this.ahead))? == 0 {
                return Poll::Ready(Ok(false));
            }
        }
    }
}

/// One read of `io` into the scratch buffer, its bytes added to those held
/// in `ahead`; how many it got (`0`: the end of the stream).
fn read_ahead<IO: AsyncRead>(
    io: Pin<&mut IO>,
    cx: &mut Context<'_>,
    ahead: &mut Ahead,
) -> Poll<io::Result<usize>> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut read = ReadBuf::new(scratch);
        ready!(io.poll_read(cx, &mut read))?;
        let got = read.filled();
        match ahead {
            _ if got.is_empty() => {}
            Ahead::Held { bytes, .. } => bytes.extend_from_slice(got),
            _ => {
                *ahead = Ahead::Held {
                    bytes: got.to_vec(),
                    start: 0,
                }
            }
        }
        Poll::Ready(Ok(got.len()))
    })
}

impl<IO: AsyncRead> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if let Ahead::Held { bytes, start } = this.ahead {
            let n = (bytes.len() - *start).min(out.remaining());
            out.put_slice(&bytes[*start..*start + n]);
            *start += n;
            if *start == bytes.len() {
                *this.ahead = Ahead::Passed;
            }
            return Poll::Ready(Ok(()));
        }
        match this.buffer {
            Some(buffer) => buffer.poll_read(this.io, cx, out),
            None => this.io.poll_read(cx, out),
        }
    }
}

impl<IO: AsyncWrite> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::read_buffer::tests::Counting;

    async fn http2<IO: AsyncRead + Unpin>(io: &mut ReadAhead<IO>) -> bool {
        poll_fn(|cx| Pin::new(&mut *io).poll_http2(cx))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_http1_head_is_told_apart_and_read_once() {
        let (mut client, server) = tokio::io::duplex(8192);
        let head = b"GET / HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n\r\n";
        client.write_all(head).await.unwrap();
        let mut io = ReadAhead::new(Counting {
            io: server,
            reads: 0,
        });
        assert!(!http2(&mut io).await);
        // hyper's first read takes the whole head, as it was read.
        let mut first = vec![0; 8192];
        let n = io.read(&mut first).await.unwrap();
        assert_eq!(&first[..n], head);
        assert_eq!(io.io.reads, 1, "one read of the connection for the head");
        // Later reads go straight through, to the end of the stream.
        client.write_all(b"frame").await.unwrap();
        drop(client);
        let mut tail = Vec::new();
        io.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, b"frame");
        assert!(matches!(io.ahead, Ahead::Passed));
    }

    #[tokio::test]
    async fn a_preface_in_pieces_is_http2_and_its_bytes_are_kept() {
        let (mut client, server) = tokio::io::duplex(8192);
        let mut io = ReadAhead::new(server);
        let writer = tokio::spawn(async move {
            for piece in [&PREFACE[..3], &PREFACE[3..20], &PREFACE[20..]] {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.write_all(b"\0\0\0\x04").await.unwrap();
            client
        });
        assert!(http2(&mut io).await);
        let _client = writer.await.unwrap();
        let mut got = vec![0; PREFACE.len() + 4];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..PREFACE.len()], PREFACE);
        assert_eq!(&got[PREFACE.len()..], b"\0\0\0\x04");
    }

    #[tokio::test]
    async fn an_early_end_is_http1_and_reads_as_the_end() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        let mut io = ReadAhead::new(server);
        assert!(!http2(&mut io).await);
        let mut buf = [0; 24];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "end of stream");

        // A partial preface, then the end: HTTP/1.1's to refuse.
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HT").await.unwrap();
        drop(client);
        let mut io = ReadAhead::new(server);
        assert!(!http2(&mut io).await);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"PRI * HT");
    }

    #[tokio::test]
    async fn buffered_reads_serve_small_ones_from_one_large_one_in_order() {
        let (mut client, server) = tokio::io::duplex(HTTP2_READ_BUFFER);
        let mut io = ReadAhead::new(Counting {
            io: server,
            reads: 0,
        });
        // HTTP/2, as `Serving` starts it: the preface read ahead, then
        // reads buffered.
        client.write_all(PREFACE).await.unwrap();
        assert!(http2(&mut io).await);
        io.buffer_reads();
        let mut preface = [0; PREFACE.len()];
        io.read_exact(&mut preface).await.unwrap();
        assert_eq!(io.io.reads, 1);
        // Three 16 KiB frames' worth, arrived together.
        let sent: Vec<u8> = (0..3 * 16_393).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        // As h2's codec asks: 8 KiB at a time.
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let mut piece = vec![0; 8192];
            let n = io.read(&mut piece).await.unwrap();
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(io.io.reads, 2, "one read of the connection for all of it");
        // The end of the stream still reads as the end.
        drop(client);
        assert_eq!(io.read(&mut [0; 100]).await.unwrap(), 0);
    }
}
