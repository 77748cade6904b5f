//! What one client connection is doing, shared by its watchdog, its
//! service, its I/O and the executor of its HTTP/2 streams.
//!
//! Everything here is written on the request path (a few relaxed atomics
//! per request, one relaxed load per read), and read by the connection's
//! watchdog only when it wakes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::clock;
use crate::settings::Rate;

/// [`Activity::reads`]: a read with data changes nothing.
const QUIET: u8 = 0;
/// A read with data records the first bytes since going idle.
const ARMED: u8 = 1;
/// The connection is no longer served: its I/O lets go of the record.
const DONE: u8 = 2;

/// "No time recorded".
const NEVER: u64 = u64::MAX;

/// The protocol a connection speaks, as far as known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Unknown = 0,
    Http1 = 1,
    Http2 = 2,
}

/// How a server's shutdown reaches a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Finish the requests in flight, take no more (HTTP/2: GOAWAY).
    Graceful = 1,
    /// Close now.
    Now = 2,
}

/// The HTTP/2 connection preface starts with this (RFC 9113 §3.4).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// The state of one connection.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Requests being answered (from the service call to the end of the
    /// response body) plus, over HTTP/2, the tasks of open streams and
    /// upgraded streams (WebSockets): while non-zero the connection is
    /// busy, and no idle timeout applies.
    busy: AtomicUsize,
    /// When `busy` last became zero (or the connection started), on the
    /// [`clock`](crate::clock).
    idle_since: AtomicU64,
    /// What the connection's reads found; the I/O holds only this.
    reads: Arc<Reads>,
    /// Asked to close to make room for another connection.
    evicted: AtomicBool,
    /// Asked to stop taking new requests (HTTP/2: GOAWAY).
    goaway: AtomicBool,
    /// The server shuts down: 1 graceful, 2 now.
    stop: AtomicU8,
    /// WebSocket handshakes (extended CONNECT) being answered.
    pub(crate) handshakes: AtomicUsize,
    /// When the next reset handshake is due at the allowed rate (GCRA's
    /// theoretical arrival time).
    reset_due: Mutex<Option<tokio::time::Instant>>,
    /// Wakes the watchdog: evicted, GOAWAY, shutdown.
    pub(crate) wake: Notify,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(clock::now()),
            reads: Arc::new(Reads {
                state: AtomicU8::new(ARMED),
                first_byte: AtomicU64::new(NEVER),
                protocol: AtomicU8::new(Protocol::Unknown as u8),
                served: AtomicBool::new(false),
                waited: AtomicBool::new(false),
            }),
            evicted: AtomicBool::new(false),
            goaway: AtomicBool::new(false),
            stop: AtomicU8::new(0),
            handshakes: AtomicUsize::new(0),
            reset_due: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    /// Count something that keeps the connection busy until the guard
    /// drops.
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// A request arrived (its head is complete).
    pub(crate) fn request(self: &Arc<Self>, http2: bool) -> Busy {
        let busy = self.busy();
        let reads = &self.reads;
        let _ = reads
            .state
            .compare_exchange(ARMED, QUIET, Ordering::Relaxed, Ordering::Relaxed);
        reads.served.store(true, Ordering::Relaxed);
        reads.set_protocol(if http2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        });
        busy
    }

    pub(crate) fn protocol(&self) -> Protocol {
        match self.reads.protocol.load(Ordering::Relaxed) {
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            _ => Protocol::Unknown,
        }
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    pub(crate) fn idle_since(&self) -> u64 {
        self.idle_since.load(Ordering::Acquire)
    }

    /// When the first bytes arrived since the connection went idle.
    pub(crate) fn first_byte(&self) -> Option<u64> {
        Some(self.reads.first_byte.load(Ordering::Acquire)).filter(|&at| at != NEVER)
    }

    /// Whether a request was ever received.
    pub(crate) fn served(&self) -> bool {
        self.reads.served.load(Ordering::Relaxed)
    }

    /// Whether a read of the connection ever found nothing to read.
    pub(crate) fn has_waited(&self) -> bool {
        self.reads.waited.load(Ordering::Acquire)
    }

    /// As if a read had found nothing to read.
    #[cfg(test)]
    pub(crate) fn set_waited(&self) {
        self.reads.waited.store(true, Ordering::Release);
    }

    /// Ask the connection to close to make room (see the registry).
    pub(crate) fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Ask an HTTP/2 connection to stop taking streams (GOAWAY).
    pub(crate) fn goaway(&self) {
        self.goaway.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub(crate) fn goaway_asked(&self) -> bool {
        self.goaway.load(Ordering::Acquire)
    }

    /// A handshake was reset before its answer: whether that is one too
    /// many for `rate` (GCRA: one per interval, `burst` more at once).
    pub(crate) fn reset_over(&self, rate: Rate) -> bool {
        let mut due = self
            .reset_due
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        !rate.allow(&mut due, tokio::time::Instant::now())
    }

    /// The server shuts down: stop taking requests, or close now.
    pub(crate) fn stop(&self, how: Stop) {
        self.stop.fetch_max(how as u8, Ordering::AcqRel);
        self.wake.notify_one();
    }

    pub(crate) fn stop_asked(&self) -> Option<Stop> {
        match self.stop.load(Ordering::Acquire) {
            1 => Some(Stop::Graceful),
            2 => Some(Stop::Now),
            _ => None,
        }
    }

    /// The connection is no longer served (an HTTP/1.1 upgrade took its
    /// I/O, or it ended): the I/O of an open tunnel lets go of its part of
    /// this record ([`Reads`]) at its next read.
    pub(crate) fn finish(&self) {
        self.reads.state.store(DONE, Ordering::Release);
    }
}

/// What a connection's reads found, apart from the rest of its
/// [`Activity`]: an HTTP/1.1 tunnel's I/O outlives the connection's
/// service, and keeps (until it lets go) only this.
#[derive(Debug)]
struct Reads {
    /// What a read with data does: nothing ([`QUIET`]), record
    /// `first_byte` ([`ARMED`]), or let go of this record ([`DONE`]).
    state: AtomicU8,
    /// When the first bytes arrived since the connection went idle, or
    /// [`NEVER`].
    first_byte: AtomicU64,
    protocol: AtomicU8,
    /// A request was received.
    served: AtomicBool,
    /// A read found nothing to read: whatever the client sent had been
    /// read by then. A connection that has not waited yet may have a
    /// request that nobody read, and is not idle.
    waited: AtomicBool,
}

impl Reads {
    fn set_protocol(&self, protocol: Protocol) {
        if self.protocol.load(Ordering::Relaxed) == Protocol::Unknown as u8 {
            self.protocol.store(protocol as u8, Ordering::Relaxed);
        }
    }

    /// The first bytes since going idle were read: recorded.
    fn first_bytes(&self, data: &[u8]) {
        if self
            .state
            .compare_exchange(ARMED, QUIET, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let start = &H2_PREFACE_START[..data.len().min(H2_PREFACE_START.len())];
            if !self.served.load(Ordering::Relaxed) && data.len() >= 4 && data.starts_with(start) {
                // No HTTP/1.1 method starts with `PRI `; hyper reads the
                // rest of the preface. (Fewer bytes than that stay
                // unknown, and are timed as an HTTP/1.1 head.)
                self.set_protocol(Protocol::Http2);
            }
            self.first_byte.store(clock::now(), Ordering::Release);
        }
    }
}

/// Keeps a connection busy while alive; the last one to drop makes it
/// idle (the watchdog sees it when its timer fires).
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        // Before the count: a watchdog that sees it at zero must not see an
        // `idle_since` from before this busy spell. (Not the last guard:
        // the last one stores it again.)
        activity.idle_since.store(clock::now(), Ordering::Release);
        if activity.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let reads = &activity.reads;
            reads.first_byte.store(NEVER, Ordering::Release);
            let _ = reads
                .state
                .compare_exchange(QUIET, ARMED, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

pin_project! {
    /// A client connection's I/O, telling its [`Activity`] when bytes
    /// arrive after an idle spell (one relaxed load per read otherwise).
    #[derive(Debug)]
    pub(crate) struct Watched<IO> {
        #[pin]
        io: IO,
        // Let go of (`None`) once the connection is no longer served.
        reads: Option<Arc<Reads>>,
        // `reads.waited`, without touching the shared line each time.
        waited: bool,
        // Whether the bytes are HTTP (not TLS records under a TLS stream).
        http: bool,
    }
}

impl<IO> Watched<IO> {
    /// Watch the HTTP bytes of a connection: when reads find nothing, and
    /// when the first bytes of a request arrive.
    pub(crate) fn new(io: IO, activity: &Activity) -> Self {
        Watched {
            io,
            reads: Some(activity.reads.clone()),
            waited: false,
            http: true,
        }
    }

    /// Watch the TCP stream under a TLS handshake: only when reads find
    /// nothing (a client that sends no ClientHello is idle).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn under_tls(io: IO, activity: &Activity) -> Self {
        Watched {
            http: false,
            ..Self::new(io, activity)
        }
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        let Some(reads) = this.reads.as_ref() else {
            return result;
        };
        match result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                // One relaxed load on the common path.
                match reads.state.load(Ordering::Relaxed) {
                    ARMED if *this.http => reads.first_bytes(&buf.filled()[before..]),
                    DONE => *this.reads = None,
                    _ => {}
                }
            }
            // Nothing to read (not the task's spent budget, after which
            // every read waits, whatever the socket holds).
            Poll::Pending if !*this.waited && tokio::task::coop::has_budget_remaining() => {
                *this.waited = true;
                reads.waited.store(true, Ordering::Release);
            }
            _ => {}
        }
        result
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The executor of one connection's HTTP/2 stream tasks: each task keeps
/// the connection busy while it runs, so an HTTP/2 connection counts as
/// idle only when no stream — request or WebSocket — is open.
#[derive(Debug, Clone)]
pub(crate) struct ConnExecutor {
    activity: Arc<Activity>,
}

impl ConnExecutor {
    pub(crate) fn new(activity: Arc<Activity>) -> Self {
        ConnExecutor { activity }
    }
}

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let busy = self.activity.busy();
        tokio::spawn(async move {
            let _busy = busy;
            future.await
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_first_bytes_after_going_idle_are_recorded_once() {
        let activity = Arc::new(Activity::new());
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Watched::new(server, &activity);
        assert_eq!(activity.first_byte(), None);
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0; 8];
        let _ = server.read(&mut buf).await.unwrap();
        let first = activity.first_byte().expect("recorded");
        assert_eq!(activity.protocol(), Protocol::Unknown);
        // Later reads of the same idle spell change nothing.
        client.write_all(b" /").await.unwrap();
        let _ = server.read(&mut buf).await.unwrap();
        assert_eq!(activity.first_byte(), Some(first));
        // A request makes it busy; its end makes it idle and re-arms.
        let busy = activity.request(false);
        assert!(activity.is_busy());
        assert_eq!(activity.protocol(), Protocol::Http1);
        drop(busy);
        assert!(!activity.is_busy());
        assert_eq!(activity.first_byte(), None);
        client.write_all(b"x").await.unwrap();
        let _ = server.read(&mut buf).await.unwrap();
        assert!(activity.first_byte().is_some());
    }

    #[test]
    fn resets_past_the_rate_and_burst_are_too_many() {
        let activity = Activity::new();
        let rate = Rate::per_minute(1).burst(2);
        assert!(!activity.reset_over(rate));
        assert!(!activity.reset_over(rate));
        assert!(!activity.reset_over(rate));
        assert!(activity.reset_over(rate));
    }

    #[tokio::test]
    async fn the_io_lets_go_of_the_record_once_the_connection_is_done() {
        let activity = Arc::new(Activity::new());
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Watched::new(server, &activity);
        assert_eq!(Arc::strong_count(&activity.reads), 2);
        activity.finish();
        client.write_all(b"x").await.unwrap();
        let mut buf = [0; 8];
        let _ = server.read(&mut buf).await.unwrap();
        assert_eq!(
            Arc::strong_count(&activity.reads),
            1,
            "let go at the next read"
        );
        // and the I/O goes on
        client.write_all(b"y").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_preface_marks_http2() {
        let activity = Arc::new(Activity::new());
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Watched::new(server, &activity);
        client.write_all(b"PRI * HT").await.unwrap();
        let mut buf = [0; 8];
        let _ = server.read(&mut buf).await.unwrap();
        assert_eq!(activity.protocol(), Protocol::Http2);
    }

    #[tokio::test]
    async fn a_read_that_waits_only_for_the_tasks_budget_has_not_waited() {
        let activity = Arc::new(Activity::new());
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Watched::new(server, &activity);
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0; 8];
        std::future::poll_fn(|cx| {
            while let Poll::Ready(unit) = tokio::task::coop::poll_proceed(cx) {
                unit.made_progress();
            }
            let read = Pin::new(&mut server).poll_read(cx, &mut ReadBuf::new(&mut buf));
            assert!(read.is_pending(), "read past a spent budget");
            Poll::Ready(())
        })
        .await;
        assert!(!activity.has_waited(), "a request unread counted as none");
        // A read that finds nothing has waited.
        assert_eq!(server.read(&mut buf).await.unwrap(), 3);
        let nothing = futures_util::poll!(std::future::poll_fn(|cx| {
            Pin::new(&mut server).poll_read(cx, &mut ReadBuf::new(&mut buf))
        }));
        assert!(nothing.is_pending());
        assert!(activity.has_waited());
    }
}
