//! The first read of a connection, made large.
//!
//! hyper-util's server reads a connection's first 24 bytes alone to tell
//! the HTTP/2 preface from an HTTP/1.1 request, then reads the rest of the
//! head: two system calls for a head that arrived in one segment. Under
//! [`ReadAhead`] that first small read reads up to [`READ_AHEAD`] bytes at
//! once and hands out the rest from memory, so a handshake costs one
//! `recvfrom` for its request, as in nginx. The buffer is freed once it is
//! handed out; later reads go straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much the first read takes: the head of a WebSocket handshake, a
/// browser's cookies included, fits.
pub(crate) const READ_AHEAD: usize = 4096;

pin_project! {
    /// A connection whose first small read reads ahead.
    #[derive(Debug)]
    pub(crate) struct ReadAhead<IO> {
        #[pin]
        io: IO,
        ahead: Ahead,
    }
}

#[derive(Debug)]
enum Ahead {
    /// Nothing read yet.
    Unread,
    /// The first read's bytes, `start..end` of them not handed out yet
    /// (`end == 0`: the read has not completed).
    Held {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
    /// Reads go straight through.
    Passed,
}

impl<IO> ReadAhead<IO> {
    pub(crate) fn new(io: IO) -> Self {
        ReadAhead {
            io,
            ahead: Ahead::Unread,
        }
    }
}

impl<IO: AsyncRead> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            match this.ahead {
                Ahead::Passed => return this.io.poll_read(cx, buf),
                // A read as large already: nothing to gain.
                Ahead::Unread if buf.remaining() >= READ_AHEAD => *this.ahead = Ahead::Passed,
                Ahead::Unread => {
                    *this.ahead = Ahead::Held {
                        buf: vec![0; READ_AHEAD].into_boxed_slice(),
                        start: 0,
                        end: 0,
                    };
                }
                Ahead::Held {
                    buf: held,
                    start,
                    end,
                } => {
                    if *end == 0 {
                        let mut read = ReadBuf::new(held);
                        ready!(this.io.as_mut().poll_read(cx, &mut read))?;
                        *end = read.filled().len();
                        if *end == 0 {
                            // End of stream, reported as such.
                            *this.ahead = Ahead::Passed;
                            return Poll::Ready(Ok(()));
                        }
                    }
                    let n = (*end - *start).min(buf.remaining());
                    buf.put_slice(&held[*start..*start + n]);
                    *start += n;
                    if *start == *end {
                        *this.ahead = Ahead::Passed;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
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
    async fn a_small_first_read_reads_the_whole_head_once() {
        let (mut client, server) = tokio::io::duplex(8192);
        let head = b"GET / HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n\r\n";
        client.write_all(head).await.unwrap();
        let mut io = ReadAhead::new(Counting {
            io: server,
            reads: 0,
        });
        // As hyper-util does: 24 bytes to look for the HTTP/2 preface...
        let mut preface = [0; 24];
        io.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, &head[..24]);
        // ...then the rest into hyper's buffer.
        let mut rest = vec![0; 8192];
        let n = io.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], &head[24..]);
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
    async fn a_large_first_read_and_an_early_end_pass_through() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        let mut io = ReadAhead::new(server);
        let mut small = [0; 24];
        assert_eq!(io.read(&mut small).await.unwrap(), 0, "end of stream");

        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"hello").await.unwrap();
        let mut io = ReadAhead::new(server);
        let mut large = vec![0; READ_AHEAD];
        assert_eq!(io.read(&mut large).await.unwrap(), 5);
        assert!(matches!(io.ahead, Ahead::Passed), "no buffer of its own");
    }
}
