//! The tunnel: relay bytes both ways between the upgraded client and
//! backend connections until both sides are done.
//!
//! # Memory
//!
//! An idle tunnel holds no copy buffer. Each worker thread owns one scratch
//! buffer of [`SCRATCH_SIZE`] bytes that every tunnel on that thread reads
//! into; the bytes are written to the other side at once, and only when the
//! other side cannot take them all (back-pressure) is the remainder copied
//! into a buffer owned by that direction, freed as soon as it is written.
//! While that buffer exists the direction does not read, so a slow reader
//! on one side slows the sender on the other instead of growing memory.
//!
//! # Ending
//!
//! - A clean end of stream (FIN) on one side is passed on as a write
//!   shutdown to the other; the other direction keeps flowing for up to the
//!   half-close timeout.
//! - A read or write error on either side (e.g. a reset) ends the tunnel at
//!   once, which closes both connections.
//! - No bytes in either direction for the idle timeout ends the tunnel.
//! - A cancelled shutdown token ends the tunnel.

use std::cell::RefCell;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::frame::FrameTracker;

/// Size of the per-thread scratch buffer reads go into.
pub(crate) const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both sides closed; `client_first` tells who closed first.
    Closed { client_first: bool },
    /// One side closed and the other did not follow within the half-close
    /// timeout.
    HalfCloseTimeout { client_first: bool },
    /// No traffic either way for the idle timeout.
    Idle,
    /// The proxy was shut down.
    Shutdown,
    /// An I/O error on the client connection.
    ClientError(io::Error),
    /// An I/O error on the backend connection.
    BackendError(io::Error),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |client_first: bool| if client_first { "client" } else { "backend" };
        match self {
            End::Closed { client_first } => write!(f, "{} closed first", side(*client_first)),
            End::HalfCloseTimeout { client_first } => {
                write!(
                    f,
                    "{} closed, the other side did not follow in time",
                    side(*client_first)
                )
            }
            End::Idle => f.write_str("idle timeout"),
            End::Shutdown => f.write_str("shutdown"),
            End::ClientError(e) => write!(f, "client error: {e}"),
            End::BackendError(e) => write!(f, "backend error: {e}"),
        }
    }
}

/// Timeouts of one tunnel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) idle: Option<Duration>,
    pub(crate) half_close: Duration,
}

/// What crossed a finished tunnel, per direction.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    /// Client to backend.
    pub(crate) up: Direction,
    /// Backend to client.
    pub(crate) down: Direction,
}

/// What crossed one direction of a tunnel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Direction {
    /// Bytes written to the other side.
    pub(crate) bytes: u64,
    /// Frame headers seen.
    pub(crate) frames: u64,
    /// Complete data messages seen.
    pub(crate) messages: u64,
    /// Status code of the sender's Close frame, if it sent one with a code.
    pub(crate) close_code: Option<u16>,
}

/// Relay between `client` and `backend` until the tunnel ends.
pub(crate) async fn relay<C, B>(
    mut client: C,
    mut backend: B,
    timeouts: Timeouts,
    closing: CancellationToken,
) -> (End, Totals)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pump::default();
    let mut down = Pump::default();
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut timer_armed = false;
    let mut closed = std::pin::pin!(closing.cancelled_owned());
    let mut last_activity = Instant::now();
    let mut half_closed: Option<(Instant, bool)> = None;

    let end = poll_fn(|cx| {
        if closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Shutdown);
        }
        let before = up.bytes + down.bytes;
        let up_done = match up.poll(cx, Pin::new(&mut client), Pin::new(&mut backend), down.done) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(Failure::Read(e))) => return Poll::Ready(End::ClientError(e)),
            Poll::Ready(Err(Failure::Write(e))) => return Poll::Ready(End::BackendError(e)),
            Poll::Pending => false,
        };
        let down_done = match down.poll(cx, Pin::new(&mut backend), Pin::new(&mut client), up.done)
        {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(Failure::Read(e))) => return Poll::Ready(End::BackendError(e)),
            Poll::Ready(Err(Failure::Write(e))) => return Poll::Ready(End::ClientError(e)),
            Poll::Pending => false,
        };
        if up_done && down_done {
            let client_first = half_closed.is_none_or(|(_, client_first)| client_first);
            return Poll::Ready(End::Closed { client_first });
        }
        let now = Instant::now();
        if up.bytes + down.bytes != before {
            last_activity = now;
        }
        if half_closed.is_none() && (up_done || down_done) {
            half_closed = Some((now + timeouts.half_close, up_done));
        }
        // The timer is armed lazily: activity only moves `last_activity`,
        // and the timer is re-armed when it fires early.
        loop {
            let idle_deadline = timeouts.idle.map(|idle| last_activity + idle);
            let deadline = match (idle_deadline, half_closed.map(|(at, _)| at)) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return Poll::Pending,
            };
            if !timer_armed || deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
                timer_armed = true;
            }
            ready!(timer.as_mut().poll(cx));
            let now = Instant::now();
            if let Some((at, client_first)) = half_closed
                && now >= at
            {
                return Poll::Ready(End::HalfCloseTimeout { client_first });
            }
            if idle_deadline.is_some_and(|at| now >= at) {
                return Poll::Ready(End::Idle);
            }
            timer_armed = false;
        }
    })
    .await;
    (
        end,
        Totals {
            up: up.totals(),
            down: down.totals(),
        },
    )
}

enum Failure {
    Read(io::Error),
    Write(io::Error),
}

/// One direction of a tunnel.
#[derive(Default)]
struct Pump {
    /// Bytes read but not yet written: only under back-pressure.
    pending: Option<Pending>,
    /// The source reached end of stream.
    eof: bool,
    /// The destination was shut down after `eof`.
    done: bool,
    /// Written bytes must be flushed before waiting for more input.
    unflushed: bool,
    bytes: u64,
    /// Frame boundaries of what passes, read from headers only.
    frames: FrameTracker,
}

struct Pending {
    buf: Box<[u8]>,
    pos: usize,
}

impl Pump {
    fn totals(&self) -> Direction {
        Direction {
            bytes: self.bytes,
            frames: self.frames.frames,
            messages: self.frames.messages,
            close_code: self.frames.close_code,
        }
    }

    /// Move bytes from `src` to `dst`; ready once `src` ended and `dst` was
    /// shut down. When the other direction is already `done`, `dst` is not
    /// shut down: the tunnel closes both sockets next, and closing sends
    /// the same FIN (`dst` was read to its end, so no reset) for one
    /// system call less per tunnel.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
        other_done: bool,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(pending) = &mut self.pending {
                while pending.pos < pending.buf.len() {
                    let n = ready!(dst.as_mut().poll_write(cx, &pending.buf[pending.pos..]))
                        .map_err(Failure::Write)?;
                    if n == 0 {
                        return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
                    }
                    pending.pos += n;
                    self.bytes += n as u64;
                }
                self.pending = None;
            }
            if self.eof {
                if !other_done {
                    ready!(dst.as_mut().poll_shutdown(cx)).map_err(Failure::Write)?;
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let read = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch);
                match src.as_mut().poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(Failure::Read(e))),
                    Poll::Ready(Ok(())) => {
                        let data = buf.filled();
                        if data.is_empty() {
                            return Poll::Ready(Ok(0));
                        }
                        self.frames.feed(data);
                        self.write_through(cx, dst.as_mut(), data)?;
                        Poll::Ready(Ok(data.len()))
                    }
                }
            });
            match read {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => self.unflushed = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.unflushed {
                        // A flush that is not ready yet registers the waker;
                        // it is tried again on the next wake-up.
                        if let Poll::Ready(r) = dst.as_mut().poll_flush(cx) {
                            r.map_err(Failure::Write)?;
                            self.unflushed = false;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Write `data` to `dst` as far as it goes without waiting; keep the
    /// rest in `pending`.
    fn write_through<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut dst: Pin<&mut W>,
        data: &[u8],
    ) -> Result<(), Failure>
    where
        W: AsyncWrite + ?Sized,
    {
        let mut pos = 0;
        while pos < data.len() {
            match dst.as_mut().poll_write(cx, &data[pos..]) {
                Poll::Ready(Ok(0)) => return Err(Failure::Write(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    pos += n;
                    self.bytes += n as u64;
                }
                Poll::Ready(Err(e)) => return Err(Failure::Write(e)),
                Poll::Pending => {
                    self.pending = Some(Pending {
                        buf: data[pos..].into(),
                        pos: 0,
                    });
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn timeouts(idle: Option<u64>, half_close: u64) -> Timeouts {
        Timeouts {
            idle: idle.map(Duration::from_millis),
            half_close: Duration::from_millis(half_close),
        }
    }

    #[tokio::test]
    async fn relays_both_ways_and_propagates_half_close() {
        let (mut client, client_side) = duplex(16);
        let (backend_side, mut backend) = duplex(16);
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            timeouts(None, 5_000),
            CancellationToken::new(),
        ));
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                client.write_all(&payload).await.unwrap();
                client.shutdown().await.unwrap();
                client
            })
        };
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload, "bytes out equal bytes in, then EOF");
        // The other direction still flows after the half-close.
        backend.write_all(b"late reply").await.unwrap();
        backend.shutdown().await.unwrap();
        let mut client = writer.await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"late reply");
        let (end, totals) = task.await.unwrap();
        assert!(matches!(end, End::Closed { client_first: true }), "{end}");
        assert_eq!((totals.up.bytes, totals.down.bytes), (100_000, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_both_directions() {
        let (mut client, client_side) = duplex(64);
        let (backend_side, mut backend) = duplex(64);
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            timeouts(Some(1_000), 5_000),
            CancellationToken::new(),
        ));
        let start = Instant::now();
        let mut buf = [0; 1];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            backend.write_all(b"x").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
        }
        let (end, _) = task.await.unwrap();
        assert!(matches!(end, End::Idle), "{end}");
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(2_800), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2_900), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn half_close_is_bounded() {
        let (mut client, client_side) = duplex(64);
        let (backend_side, _backend) = duplex(64);
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            timeouts(None, 2_000),
            CancellationToken::new(),
        ));
        client.shutdown().await.unwrap();
        let (end, _) = task.await.unwrap();
        assert!(
            matches!(end, End::HalfCloseTimeout { client_first: true }),
            "{end}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any bytes, written in any chunks, both ways at once: what comes
        /// out is what went in, whatever the frame tracker makes of it.
        #[test]
        fn bytes_out_equal_bytes_in(
            up in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            down in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            chunk in 1usize..3000,
            pipe in 1usize..5000,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (got_up, got_down) = runtime.block_on(async {
                let (client, client_side) = duplex(pipe);
                let (backend_side, backend) = duplex(pipe);
                let relay = tokio::spawn(relay(
                    client_side,
                    backend_side,
                    timeouts(None, 5_000),
                    CancellationToken::new(),
                ));
                let pump = |mut writer: tokio::io::DuplexStream, data: Vec<u8>| async move {
                    let (mut read, mut write) = tokio::io::split(&mut writer);
                    let send = async {
                        for piece in data.chunks(chunk) {
                            write.write_all(piece).await.unwrap();
                        }
                        write.shutdown().await.unwrap();
                    };
                    let mut received = Vec::new();
                    let receive = read.read_to_end(&mut received);
                    let ((), got) = tokio::join!(send, receive);
                    got.unwrap();
                    received
                };
                let (at_backend, at_client) =
                    tokio::join!(pump(backend, down.clone()), pump(client, up.clone()));
                relay.await.unwrap();
                (at_backend, at_client)
            });
            proptest::prop_assert_eq!(got_up, up);
            proptest::prop_assert_eq!(got_down, down);
        }
    }

    #[tokio::test]
    async fn cancellation_ends_the_tunnel() {
        let (_client, client_side) = duplex(64);
        let (backend_side, _backend) = duplex(64);
        let token = CancellationToken::new();
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            timeouts(None, 1),
            token.clone(),
        ));
        token.cancel();
        let (end, _) = task.await.unwrap();
        assert!(matches!(end, End::Shutdown), "{end}");
    }
}
