//! HTTP on one client connection: HTTP/1.1 with upgrades, or HTTP/2 with
//! extended `CONNECT`, told apart by the connection's first bytes.
//!
//! hyper-util's `auto` builder does the same, but reads the first 24 bytes
//! alone to do it (see [`ReadAhead`]); here they are read with the rest
//! of what arrived, and hyper's own HTTP/1.1 and HTTP/2 connections are
//! served with the settings of [`http_builder`](super::http_builder).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

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
            buffer_http2: bool,
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
    /// response; with `buffer_http2`, HTTP/2 is read in large pieces
    /// ([`ReadAhead::buffer_reads`]; not wanted where `io` is already read
    /// so, as under TLS).
    pub(crate) fn new(
        io: ReadAhead<IO>,
        service: S,
        executor: ConnExecutor,
        keep_alive: bool,
        buffer_http2: bool,
    ) -> Self {
        Serving::Detecting {
            io: Some(io),
            service: Some(service),
            executor,
            keep_alive,
            buffer_http2,
        }
    }

    /// Stop taking requests: HTTP/1.1 closes once the one in flight is
    /// answered, HTTP/2 sends `GOAWAY`, and one that has sent nothing ends.
    /// `false` if the stop was not applied: the connection's first bytes
    /// had arrived unread (a request on its way), which it now serves; ask
    /// again once that request is answered, as for any HTTP/1.1 request
    /// in flight.
    pub(crate) fn graceful_shutdown(mut self: Pin<&mut Self>) -> bool {
        match self.as_mut().project() {
            ServingProj::Detecting { io, .. } => {
                // A look without waiting: have bytes arrived? (Outside
                // tokio's budget: in a task that spent it, every read
                // waits, and a request on its way would be ended.)
                let mut look = Context::from_waker(std::task::Waker::noop());
                let looked = {
                    let reading = io.as_mut().expect("detecting until it serves");
                    let look_ahead =
                        std::future::poll_fn(|cx| Pin::new(&mut *reading).poll_http2(cx));
                    std::pin::pin!(tokio::task::coop::unconstrained(look_ahead)).poll(&mut look)
                };
                match looked {
                    Poll::Ready(Ok(http2)) => {
                        self.start(http2);
                        false
                    }
                    // The start of a preface, or of a request that begins
                    // like one (`P`UT): on its way too.
                    Poll::Pending if io.as_ref().is_some_and(ReadAhead::holds_bytes) => false,
                    Poll::Ready(Err(_)) | Poll::Pending => {
                        self.set(Serving::Ended);
                        true
                    }
                }
            }
            ServingProj::Http1 { conn } => {
                conn.graceful_shutdown();
                true
            }
            ServingProj::Http2 { conn } => {
                conn.graceful_shutdown();
                true
            }
            ServingProj::Ended => true,
        }
    }

    /// Serve HTTP/2 or HTTP/1.1 on what was detecting.
    fn start(mut self: Pin<&mut Self>, http2: bool) {
        let ServingProj::Detecting {
            io,
            service,
            executor,
            keep_alive,
            buffer_http2,
        } = self.as_mut().project()
        else {
            return;
        };
        let mut io = io.take().expect("detecting until it serves");
        let service = service.take().expect("detecting until it serves");
        let next = if http2 {
            // As `http_builder`'s.
            let mut builder = http2::Builder::new(executor.clone());
            builder
                .enable_connect_protocol()
                .initial_stream_window_size(crate::HTTP2_STREAM_WINDOW)
                .initial_connection_window_size(crate::HTTP2_CONNECTION_WINDOW)
                .max_frame_size(crate::HTTP2_MAX_FRAME_SIZE);
            // Read in large pieces: `h2` reads a frame at a time.
            if *buffer_http2 {
                io.buffer_reads();
            }
            Serving::Http2 {
                conn: builder.serve_connection(TokioIo::new(io), service),
            }
        } else {
            let mut builder = http1::Builder::new();
            builder.keep_alive(*keep_alive);
            Serving::Http1 {
                conn: builder
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            }
        };
        self.set(next);
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
                ServingProj::Detecting { io, .. } => {
                    let reading = io.as_mut().expect("detecting until it serves");
                    match ready!(Pin::new(reading).poll_http2(cx)) {
                        Ok(http2) => self.as_mut().start(http2),
                        Err(e) => {
                            self.set(Serving::Ended);
                            return Poll::Ready(Err(e.into()));
                        }
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
        Serving::new(ReadAhead::new(io), service, executor, true, true)
    }

    /// A connection whose client sent `bytes`: the client's end, the
    /// server's.
    async fn sent(bytes: &[u8]) -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(bytes).await.unwrap();
        (client, server)
    }

    /// What the client reads up to the service's answer.
    async fn answer(client: &mut tokio::io::DuplexStream) -> String {
        let mut answer = Vec::new();
        while !answer.ends_with(b"answered") {
            let mut chunk = [0; 1024];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn a_request_that_arrived_before_a_graceful_stop_is_answered() {
        let (mut client, server) = sent(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await;
        let mut serving = std::pin::pin!(serving(server));
        // Stopped before anything was read: the request was on its way,
        // so the stop waits (the caller asks again once it is answered).
        assert!(!serving.as_mut().graceful_shutdown(), "applied at once");
        let answer = tokio::select! {
            answer = answer(&mut client) => answer,
            ended = serving.as_mut() => panic!("ended unanswered: {ended:?}"),
        };
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        // Not answered as the last (that is the caller's second ask), so
        // an upgrade's 101 would not say `Connection: close`.
        assert!(!answer.contains("connection: close"), "{answer}");
        assert!(serving.as_mut().graceful_shutdown(), "applied now");
    }

    #[tokio::test]
    async fn a_request_that_begins_like_the_preface_is_on_its_way_too() {
        // `P` could start HTTP/2's `PRI`: undecided, but not nothing.
        let (mut client, server) = sent(b"P").await;
        let mut serving = std::pin::pin!(serving(server));
        assert!(!serving.as_mut().graceful_shutdown(), "ended a request");
        client
            .write_all(b"UT / HTTP/1.1\r\nHost: example\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        tokio::select! {
            _ = answer(&mut client) => {}
            ended = serving.as_mut() => panic!("ended unanswered: {ended:?}"),
        }
    }

    #[tokio::test]
    async fn a_connection_that_sent_nothing_ends_at_a_graceful_stop() {
        let (_client, server) = sent(b"").await;
        let mut serving = std::pin::pin!(serving(server));
        assert!(serving.as_mut().graceful_shutdown());
        // Ends at once: nothing arrived, nothing to answer.
        assert!(matches!(
            futures_util::poll!(serving.as_mut()),
            Poll::Ready(Ok(()))
        ));
    }

    #[tokio::test]
    async fn a_request_that_arrived_is_seen_by_a_stop_in_a_task_out_of_budget() {
        let (_client, server) = sent(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await;
        let mut serving = std::pin::pin!(serving(server));
        // The stop comes in a task that spent its budget, after which a
        // read (of the socket, or of a buffer beneath TLS) would wait.
        let applied = std::future::poll_fn(|cx| {
            while let Poll::Ready(unit) = tokio::task::coop::poll_proceed(cx) {
                unit.made_progress();
            }
            Poll::Ready(serving.as_mut().graceful_shutdown())
        })
        .await;
        assert!(!applied, "a request on its way was ended");
    }
}
