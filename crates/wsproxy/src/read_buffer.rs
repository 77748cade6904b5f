//! Reads of a connection taken in large pieces for a reader that asks for
//! small ones.
//!
//! rustls asks for 4 KiB more than it holds at a time, and the `h2` codec
//! under hyper reads a connection a frame at a time (8 KiB, or exactly the
//! rest of the frame it is in): a peer streaming 16 KiB WebSocket messages
//! cost two `recvfrom`s a message over HTTP/2 and up to five under TLS,
//! even when the socket held many. A [`ReadBuffer`] takes what has arrived, up
//! to its size, and hands it out to the smaller reads above (nginx reads
//! HTTP/2 the same way: `http2_recv_buffer_size`).
//!
//! The buffer is taken when a read needs it and given back once it is
//! empty and the socket has nothing more, to a spare the thread keeps (one
//! of each size) for the next connection that reads: a connection at rest
//! holds none; one whose reader stopped reading (back-pressure) holds one.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, BufMut as _, BytesMut};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read beneath TLS takes (the client's connections to
/// `serve`, `wss://` backends): about two records of the largest size. It
/// is what a connection whose reader stopped keeps in the proxy's memory
/// on top of the kernel's buffers.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) const TLS_READ_BUFFER: usize = 32 * 1024;

std::thread_local! {
    /// Buffers between reads of connections that have nothing more to
    /// read, with their sizes: one of each size is enough, as a thread
    /// reads one connection at a time (a tunnel's two ends over TLS are
    /// read in turn, and share the 32 KiB one).
    static SPARES: RefCell<Vec<(usize, BytesMut)>> = const { RefCell::new(Vec::new()) };
}

/// Read and not handed out yet, without capacity while nothing waits;
/// reads take up to `size` bytes.
#[derive(Debug)]
pub(crate) struct ReadBuffer {
    bytes: BytesMut,
    size: usize,
}

impl ReadBuffer {
    pub(crate) fn new(size: usize) -> Self {
        ReadBuffer {
            bytes: BytesMut::new(),
            size,
        }
    }

    /// Fill `out` from the buffer, reading `io` into it first when it is
    /// empty (a read as large as the buffer goes straight through).
    pub(crate) fn poll_read<IO: AsyncRead>(
        &mut self,
        io: Pin<&mut IO>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if self.bytes.is_empty() {
            if out.remaining() >= self.size {
                // As large as the buffer: nothing to gain by it.
                self.put_back();
                return io.poll_read(cx, out);
            }
            self.take();
            let mut room = (&mut self.bytes).limit(self.size);
            match tokio_util::io::poll_read_buf(io, cx, &mut room) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                // The end of the stream, a failure, or nothing more for
                // now: the buffer goes back, empty.
                other => {
                    self.put_back();
                    return other.map_ok(|_| ());
                }
            }
        } else {
            // Served without the socket, whose read takes a unit of the
            // task's budget: one is taken here too, so a connection with
            // bytes buffered still yields to the thread's others in turn.
            ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
        }
        let n = self.bytes.len().min(out.remaining());
        out.put_slice(&self.bytes[..n]);
        self.bytes.advance(n);
        Poll::Ready(Ok(()))
    }

    /// The capacity held now.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Room for a read: the allocation this buffer had, else the
    /// thread's spare of its size, else a new one.
    fn take(&mut self) {
        if self.bytes.try_reclaim(self.size) {
            return;
        }
        let size = self.size;
        self.bytes = SPARES
            .with_borrow_mut(|spares| {
                let at = spares.iter().position(|(of, _)| *of == size)?;
                Some(spares.swap_remove(at).1)
            })
            .filter(|spare| spare.capacity() >= size)
            .unwrap_or_else(|| BytesMut::with_capacity(size));
    }

    /// Give the (empty) buffer's allocation to the thread's spare of its
    /// size, for the next connection that reads: a connection at rest
    /// holds none, and one woken again and again does not allocate and
    /// free a buffer each time (a free of 64 KiB makes glibc consolidate
    /// its heap).
    fn put_back(&mut self) {
        debug_assert!(self.bytes.is_empty(), "unread bytes given back");
        let mut bytes = std::mem::take(&mut self.bytes);
        if !bytes.try_reclaim(self.size) {
            return;
        }
        let size = self.size;
        SPARES.with_borrow_mut(|spares| {
            if spares.iter().all(|(of, _)| *of != size) {
                spares.push((size, bytes));
            }
        });
    }
}

pin_project! {
    /// `io` read through a [`ReadBuffer`]; writes go straight to it.
    #[derive(Debug)]
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) struct Buffered<IO> {
        #[pin]
        io: IO,
        buffer: ReadBuffer,
    }
}

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
impl<IO> Buffered<IO> {
    /// `io` read up to `size` bytes at a time.
    pub(crate) fn new(io: IO, size: usize) -> Self {
        Buffered {
            io,
            buffer: ReadBuffer::new(size),
        }
    }
}

impl<IO: AsyncRead> AsyncRead for Buffered<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        this.buffer.poll_read(this.io, cx, out)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Buffered<IO> {
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
pub(crate) mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Counts the reads that reach it.
    pub(crate) struct Counting<IO> {
        pub(crate) io: IO,
        pub(crate) reads: usize,
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

    /// A read of `io` finds nothing now.
    fn finds_nothing<IO: AsyncRead + Unpin>(io: &mut Buffered<IO>) {
        let mut look = Context::from_waker(std::task::Waker::noop());
        let read = Pin::new(io).poll_read(&mut look, &mut ReadBuf::new(&mut [0; 8]));
        assert!(read.is_pending(), "{read:?}");
    }

    /// The thread's spare buffers: their sizes and capacities.
    fn spares() -> Vec<(usize, usize)> {
        SPARES.with_borrow(|spares| {
            spares
                .iter()
                .map(|(size, b)| (*size, b.capacity()))
                .collect()
        })
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_one_in_order() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..3 * 16_401).map(|i| (i % 241) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        let mut io = Buffered::new(Counting { io, reads: 0 }, TLS_READ_BUFFER);
        // As rustls asks: 4 KiB at a time.
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let mut piece = vec![0; 4096];
            let n = io.read(&mut piece).await.unwrap();
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(io.io.reads, 2, "{TLS_READ_BUFFER} bytes a read");
        // The end of the stream still reads as the end.
        drop(peer);
        assert_eq!(io.read(&mut [0; 100]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_connection_at_rest_holds_no_buffer() {
        const SIZE: usize = 64 * 1024;
        let (mut peer, io) = tokio::io::duplex(SIZE);
        let mut io = Buffered::new(io, SIZE);
        peer.write_all(b"a frame").await.unwrap();
        let mut piece = [0; 7];
        io.read_exact(&mut piece).await.unwrap();
        assert_eq!(&piece, b"a frame");
        assert!(io.buffer.capacity() > 0, "held while reading");
        // The next read finds nothing: the buffer goes.
        finds_nothing(&mut io);
        assert_eq!(io.buffer.capacity(), 0, "a buffer held while idle");
        // The thread keeps it for the next connection that reads...
        assert_eq!(spares(), [(SIZE, SIZE)], "no spare buffer");
        // ...which is this one again, with the next bytes.
        peer.write_all(b"another").await.unwrap();
        io.read_exact(&mut piece).await.unwrap();
        assert_eq!(&piece, b"another");
        assert_eq!(spares(), [], "the spare was not taken");
        // A read as large as the buffer goes straight through, and lets
        // the buffer (read dry, still held) go.
        assert!(io.buffer.capacity() > 0);
        peer.write_all(&[7; 10]).await.unwrap();
        let mut large = vec![0; SIZE];
        assert_eq!(io.read(&mut large).await.unwrap(), 10);
        assert_eq!(io.buffer.capacity(), 0, "held through a large read");
        // So does the end of the stream.
        peer.write_all(b"last").await.unwrap();
        drop(peer);
        io.read_exact(&mut piece[..4]).await.unwrap();
        assert_eq!(io.read(&mut piece).await.unwrap(), 0);
        assert_eq!(io.buffer.capacity(), 0, "a buffer held at the end");
    }

    #[tokio::test]
    async fn buffers_of_another_size_are_kept_apart() {
        const LARGE: usize = 64 * 1024;
        // A connection read through a 64 KiB buffer goes to rest...
        let (mut peer, io) = tokio::io::duplex(LARGE);
        let mut large = Buffered::new(io, LARGE);
        peer.write_all(b"h2").await.unwrap();
        large.read_exact(&mut [0; 2]).await.unwrap();
        finds_nothing(&mut large);
        assert_eq!(spares(), [(LARGE, LARGE)]);
        // ...and one beneath TLS reads 32 KiB at a time all the same, in
        // a buffer of its own, which it keeps beside the first at rest.
        let (mut peer, io) = tokio::io::duplex(LARGE);
        let sent = vec![7; 48 * 1024];
        peer.write_all(&sent).await.unwrap();
        let mut tls = Buffered::new(Counting { io, reads: 0 }, TLS_READ_BUFFER);
        let mut got = vec![0; sent.len()];
        for piece in got.chunks_mut(4096) {
            tls.read_exact(piece).await.unwrap();
        }
        assert_eq!(got, sent);
        assert_eq!(tls.io.reads, 2, "{TLS_READ_BUFFER} bytes a read");
        finds_nothing(&mut tls);
        assert_eq!(
            spares(),
            [(LARGE, LARGE), (TLS_READ_BUFFER, TLS_READ_BUFFER)]
        );
    }

    #[tokio::test]
    async fn reads_from_the_buffer_take_the_tasks_budget() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        peer.write_all(&[1; 16 * 1024]).await.unwrap();
        let mut io = Buffered::new(io, TLS_READ_BUFFER);
        // Byte by byte, as fast as the reads are ready: tokio's budget (128
        // a turn) ends the run with a yield long before 16 KiB.
        let mut run = 0;
        let yielded = std::future::poll_fn(|cx| {
            let mut byte = [0; 1];
            loop {
                match Pin::new(&mut io).poll_read(cx, &mut ReadBuf::new(&mut byte)) {
                    Poll::Ready(result) => result.unwrap(),
                    Poll::Pending => return Poll::Ready(true),
                }
                run += 1;
                if run == 16 * 1024 {
                    return Poll::Ready(false);
                }
            }
        })
        .await;
        assert!(run > 0, "not one read before the yield");
        assert!(yielded, "{run} reads without a yield");
        assert!(run < 1024, "{run} reads before the yield");
    }
}
