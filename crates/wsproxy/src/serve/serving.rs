//! HTTP on one client connection: HTTP/1.1 with upgrades, or HTTP/2 with
//! extended `CONNECT`, told apart by the connection's first bytes.
//!
//! hyper-util's `auto` builder does the same, but reads the first 24 bytes
//! alone to do it (see [`ReadAhead`]); here they are read with the rest
//! of what arrived, and hyper's own HTTP/1.1 and HTTP/2 connections are
//! served with the settings of [`http_builder`](super::http_builder).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};

use super::activity::ConnExecutor;
use super::read_ahead::ReadAhead;
use crate::BoxError;

pin_project! {
    /// A client connection's HTTP, until it ends.
    #[project = ServingProj]
    pub(crate) enum Serving<IO, S>
    where
        S: hyper::service::HttpService<Incoming>,
    {
        /// Its first bytes are awaited.
        Detecting {
            io: Option<ReadAhead<IO>>,
            service: Option<S>,
            executor: ConnExecutor,
            keep_alive: bool,
            // Shut down gracefully before its first bytes were read.
            stopping: bool,
        },
        Http1 { #[pin] conn: http1::UpgradeableConnection<TokioIo<ReadAhead<IO>>, S> },
        Http2 { #[pin] conn: http2::Connection<TokioIo<ReadAhead<IO>>, S, ConnExecutor> },
        /// Shut down before it said anything.
        Ended,
    }
}

impl<IO, S, B> Serving<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// Serve `service` on `io`, whose streams and tasks `executor` runs;
    /// without `keep_alive`, an HTTP/1.1 connection closes after one
    /// response.
    pub(crate) fn new(
        io: ReadAhead<IO>,
        service: S,
        executor: ConnExecutor,
        keep_alive: bool,
    ) -> Self {
        Serving::Detecting {
            io: Some(io),
            service: Some(service),
            executor,
            keep_alive,
            stopping: false,
        }
    }

    /// Stop taking requests: HTTP/1.1 closes once the one in flight is
    /// answered, HTTP/2 sends `GOAWAY`. One whose first bytes were not
    /// read yet ends at its next poll if none have arrived; if some have
    /// (the request was on its way), it is answered first.
    pub(crate) fn graceful_shutdown(mut self: Pin<&mut Self>) {
        match self.as_mut().project() {
            ServingProj::Detecting { stopping, .. } => *stopping = true,
            ServingProj::Http1 { conn } => conn.graceful_shutdown(),
            ServingProj::Http2 { conn } => conn.graceful_shutdown(),
            ServingProj::Ended => {}
        }
    }
}

impl<IO, S, B> Future for Serving<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ServingProj::Detecting {
                    io,
                    service,
                    executor,
                    keep_alive,
                    stopping,
                } => {
                    let reading = io.as_mut().expect("detecting until it serves");
                    let http2 = match Pin::new(reading).poll_http2(cx) {
                        Poll::Ready(Ok(http2)) => http2,
                        Poll::Ready(Err(e)) => {
                            self.set(Serving::Ended);
                            return Poll::Ready(Err(e.into()));
                        }
                        // Stopped, and nothing arrived: nothing to answer.
                        Poll::Pending if *stopping => {
                            self.set(Serving::Ended);
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Pending => return Poll::Pending,
                    };
                    let stopping = *stopping;
                    let io = TokioIo::new(io.take().expect("detecting until it serves"));
                    let service = service.take().expect("detecting until it serves");
                    let next = if http2 {
                        let mut builder = http2::Builder::new(executor.clone());
                        builder
                            .enable_connect_protocol()
                            .initial_stream_window_size(crate::HTTP2_STREAM_WINDOW)
                            .initial_connection_window_size(crate::HTTP2_CONNECTION_WINDOW);
                        Serving::Http2 {
                            conn: builder.serve_connection(io, service),
                        }
                    } else {
                        // Stopping: the request on its way, and no other.
                        let mut builder = http1::Builder::new();
                        builder.keep_alive(*keep_alive && !stopping);
                        Serving::Http1 {
                            conn: builder.serve_connection(io, service).with_upgrades(),
                        }
                    };
                    self.set(next);
                    if stopping && let ServingProj::Http2 { conn } = self.as_mut().project() {
                        conn.graceful_shutdown();
                    }
                }
                ServingProj::Http1 { conn } => return conn.poll(cx).map_err(Into::into),
                ServingProj::Http2 { conn } => return conn.poll(cx).map_err(Into::into),
                ServingProj::Ended => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;

    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::serve::activity::Activity;

    fn serving(
        io: tokio::io::DuplexStream,
    ) -> Serving<
        tokio::io::DuplexStream,
        impl hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future: Send,
        > + Send
        + 'static,
    > {
        let service = hyper::service::service_fn(|_: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"answered"))))
        });
        let executor = ConnExecutor::new(Arc::new(Activity::new()));
        Serving::new(ReadAhead::new(io), service, executor, true)
    }

    #[tokio::test]
    async fn a_request_that_arrived_before_a_graceful_stop_is_answered() {
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
            .await
            .unwrap();
        let mut serving = std::pin::pin!(serving(server));
        // Stopped before anything was read: the request was on its way.
        serving.as_mut().graceful_shutdown();
        let served = tokio::spawn(async move {
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            String::from_utf8(answer).unwrap()
        });
        serving.await.unwrap();
        let answer = served.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("answered"), "{answer}");
        // One request, then the connection closed (keep-alive off).
        assert!(answer.contains("connection: close"), "{answer}");
    }

    #[tokio::test]
    async fn a_connection_that_sent_nothing_ends_at_a_graceful_stop() {
        let (_client, server) = tokio::io::duplex(4096);
        let mut serving = std::pin::pin!(serving(server));
        serving.as_mut().graceful_shutdown();
        // Ends at once: nothing arrived, nothing to answer.
        assert!(matches!(
            futures_util::poll!(serving.as_mut()),
            Poll::Ready(Ok(()))
        ));
    }
}
