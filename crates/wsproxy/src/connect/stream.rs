//! A connection to a backend, whatever opened it, and the same after its
//! `101`.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[cfg(feature = "tls")]
use crate::read_buffer::Buffered;

/// How much is read from a backend at a time before its tunnel starts
/// (the handshake's answer, a refusal's body).
pub(super) const READ_SIZE: usize = 4096;

/// A byte stream to a backend that a `Connector` opened.
pub(crate) trait Connection:
    AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug + 'static
{
}

impl<T> Connection for T where T: AsyncRead + AsyncWrite + Send + Unpin + fmt::Debug + 'static {}

/// A connection to a backend: TCP, or TLS over TCP for `wss://` (the
/// default connector's), or what a connector of the user's opened, with
/// TLS over it for `wss://`.
#[derive(Debug)]
pub(crate) enum BackendStream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<Buffered<TcpStream>>>),
    Custom(Box<dyn Connection>),
    #[cfg(feature = "tls")]
    CustomTls(Box<tokio_rustls::client::TlsStream<Buffered<Box<dyn Connection>>>>),
}

/// Both variants are `Unpin`: each call goes to the one inside.
macro_rules! delegate {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            BackendStream::Tcp($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
            #[cfg(feature = "tls")]
            BackendStream::Tls($stream) => {
                let $stream = Pin::new(&mut **$stream);
                $call
            }
            BackendStream::Custom($stream) => {
                let $stream = Pin::new(&mut **$stream);
                $call
            }
            #[cfg(feature = "tls")]
            BackendStream::CustomTls($stream) => {
                let $stream = Pin::new(&mut **$stream);
                $call
            }
        }
    };
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            BackendStream::Tls(s) => s.is_write_vectored(),
            BackendStream::Custom(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            BackendStream::CustomTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// A backend connection after its `101`: first the bytes the backend sent
/// right after its answer head (early data, read with the head), then the
/// connection. Writes go to the connection.
///
/// The read buffer of the handshake is let go of as soon as its early
/// data is taken (at once without any): an idle tunnel keeps none of it.
#[derive(Debug)]
pub(crate) struct Upgraded {
    early: Bytes,
    stream: BackendStream,
}

impl Upgraded {
    pub(crate) fn new(stream: BackendStream, early: BytesMut) -> Self {
        let early = if early.is_empty() {
            Bytes::new()
        } else {
            early.freeze()
        };
        Upgraded { early, stream }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.early.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.early.len().min(buf.remaining());
        // Taking the last of it lets go of the buffer.
        buf.put_slice(&this.early.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn the_handshake_buffer_is_let_go_once_early_data_is_read() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        for early in [&b""[..], b"\x81\x02hi"] {
            // As the exchange leaves it: the head cut from the read buffer
            // (sharing it), the rest early data.
            let mut buf = BytesMut::with_capacity(4096);
            buf.extend_from_slice(answer);
            buf.extend_from_slice(early);
            let head = buf.split_to(answer.len()).freeze();
            let (ours, _theirs) = tokio::io::duplex(64);
            let mut upgraded = Upgraded::new(BackendStream::Custom(Box::new(ours)), buf);
            if !early.is_empty() {
                let mut got = vec![0; early.len()];
                upgraded.read_exact(&mut got).await.unwrap();
                assert_eq!(got, early);
            }
            assert!(
                head.is_unique(),
                "the tunnel still holds the handshake's buffer (early data: {early:?})"
            );
        }
    }
}
