//! An HTTP/2 connection's reads, taken in large pieces.
//!
//! The `h2` codec under hyper reads a connection a frame at a time: 8 KiB,
//! or exactly the rest of the frame it is in. A client streaming 16 KiB
//! WebSocket messages over HTTP/2 then costs two `recvfrom`s a message,
//! even when the socket holds many messages. [`ReadBuffer`] reads what has
//! arrived, up to [`READ_BUFFER`] bytes, in one call, and hands it out to
//! the codec's smaller reads (nginx reads HTTP/2 connections into a
//! buffer the same way: `http2_recv_buffer_size`).
//!
//! The buffer is allocated when a read needs it and released once it is
//! empty and the connection has nothing more to read, so an idle
//! connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read of the connection takes.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

pin_project! {
    /// A connection read through a buffer that is released when idle.
    #[derive(Debug)]
    pub(crate) struct ReadBuffer<IO> {
        #[pin]
        io: IO,
        // Read and not handed out yet; without capacity when released.
        buffer: BytesMut,
    }
}

impl<IO> ReadBuffer<IO> {
    pub(crate) fn new(io: IO) -> Self {
        ReadBuffer {
            io,
            buffer: BytesMut::new(),
        }
    }
}

impl<IO: AsyncRead> AsyncRead for ReadBuffer<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if this.buffer.is_empty() {
            if out.remaining() >= READ_BUFFER {
                // As large as the buffer: nothing to gain by it.
                return this.io.poll_read(cx, out);
            }
            this.buffer.reserve(READ_BUFFER);
            match tokio_util::io::poll_read_buf(this.io.as_mut(), cx, this.buffer) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    *this.buffer = BytesMut::new();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    // Nothing more has arrived: idle until it does.
                    *this.buffer = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
        let n = this.buffer.len().min(out.remaining());
        out.put_slice(&this.buffer[..n]);
        this.buffer.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite> AsyncWrite for ReadBuffer<IO> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Counts the reads that reach it.
    struct Counting<IO> {
        io: IO,
        reads: usize,
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Counting<IO> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            let polled = Pin::new(&mut this.io).poll_read(cx, buf);
            if polled.is_ready() {
                this.reads += 1;
            }
            polled
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_one_in_order() {
        let (mut client, server) = tokio::io::duplex(READ_BUFFER);
        // Three 16 KiB frames' worth, arrived together.
        let sent: Vec<u8> = (0..3 * 16_393).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut io = ReadBuffer::new(Counting {
            io: server,
            reads: 0,
        });
        // As h2's codec asks: 8 KiB at a time.
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let mut piece = vec![0; 8192];
            let n = io.read(&mut piece).await.unwrap();
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(io.io.reads, 1, "one read of the connection for all of it");
        // The end of the stream still reads as the end.
        drop(client);
        assert_eq!(io.read(&mut [0; 100]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(READ_BUFFER);
        let mut io = ReadBuffer::new(server);
        client.write_all(b"a frame").await.unwrap();
        let mut piece = [0; 7];
        io.read_exact(&mut piece).await.unwrap();
        assert_eq!(&piece, b"a frame");
        assert!(io.buffer.capacity() > 0, "held while reading");
        // The next read finds nothing: the buffer goes.
        let mut look = Context::from_waker(std::task::Waker::noop());
        let waiting = Pin::new(&mut io).poll_read(&mut look, &mut ReadBuf::new(&mut piece));
        assert!(waiting.is_pending());
        assert_eq!(io.buffer.capacity(), 0, "a buffer held while idle");
        // And comes back with the next bytes.
        client.write_all(b"another").await.unwrap();
        io.read_exact(&mut piece).await.unwrap();
        assert_eq!(&piece, b"another");
    }
}
