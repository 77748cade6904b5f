use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, duplex,
};
use tokio::time::Instant;

use super::keepalive::ping_token;
use super::{Carrier, bidirectional};
use crate::Tunnels;
use crate::drain::Drain;
use crate::outcome::{End, EndKind, Reason, Totals};
use crate::settings::{Keepalive, MessageLimits, Settings};

/// [`bidirectional::relay`] owning what it relays, as a task can, with a
/// client on a connection of its own.
async fn relay<C, B>(
    client: C,
    backend: B,
    settings: impl Into<std::sync::Arc<Settings>>,
    drain: Drain,
) -> (End, Totals)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_on(Carrier::Connection, client, backend, settings, drain).await
}

/// [`relay`], the client carried on `carrier`.
async fn relay_on<C, B>(
    carrier: Carrier,
    mut client: C,
    mut backend: B,
    settings: impl Into<std::sync::Arc<Settings>>,
    drain: Drain,
) -> (End, Totals)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    bidirectional::relay(&mut client, carrier, &mut backend, settings, &drain).await
}

/// Why and how the proxy closed the tunnel, if it did.
fn proxy_close(end: &End) -> Option<(Reason, bool)> {
    match *end {
        End::Proxy { reason, answered } => Some((reason, answered)),
        _ => None,
    }
}

fn timeouts(idle: Option<u64>, half_close: u64) -> Settings {
    Settings {
        idle: idle.map(Duration::from_millis),
        half_close: Duration::from_millis(half_close),
        client_keepalive: None,
        backend_keepalive: None,
        client_limits: MessageLimits::new(),
        backend_limits: MessageLimits::new(),
        close_on_disconnect: false,
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
        Tunnels::new().drain(),
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
    // Traffic only down, then only up: either keeps the tunnel alive.
    for up in [false, true] {
        let (mut client, client_side) = duplex(64);
        let (backend_side, mut backend) = duplex(64);
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            timeouts(Some(1_000), 5_000),
            Tunnels::new().drain(),
        ));
        let start = Instant::now();
        let mut buf = [0; 1];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            if up {
                client.write_all(b"x").await.unwrap();
                backend.read_exact(&mut buf).await.unwrap();
            } else {
                backend.write_all(b"x").await.unwrap();
                client.read_exact(&mut buf).await.unwrap();
            }
        }
        let (end, _) = task.await.unwrap();
        assert!(matches!(end, End::Idle), "{end}");
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(2_800),
            "up {up}: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(2_900),
            "up {up}: {elapsed:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn half_close_is_bounded() {
    let (mut client, client_side) = duplex(64);
    let (backend_side, _backend) = duplex(64);
    let task = tokio::spawn(relay(
        client_side,
        backend_side,
        timeouts(None, 2_000),
        Tunnels::new().drain(),
    ));
    client.shutdown().await.unwrap();
    let (end, _) = task.await.unwrap();
    assert!(
        matches!(end, End::HalfCloseTimeout { client_first: true }),
        "{end}"
    );
}

/// A masked Close 1000 from the client, and the backend's unmasked one.
const CLIENT_CLOSE: [u8; 8] = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
const BACKEND_CLOSE: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];

/// A closing handshake as a client starts it: its Close reaches the
/// backend, which answers with its own and closes its connection.
async fn close_both_ways(client: &mut DuplexStream, backend: &mut DuplexStream) {
    client.write_all(&CLIENT_CLOSE).await.unwrap();
    let mut close = [0; 8];
    backend.read_exact(&mut close).await.unwrap();
    assert_eq!(close, CLIENT_CLOSE);
    backend.write_all(&BACKEND_CLOSE).await.unwrap();
    backend.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_finished_closing_handshake_ends_with_the_backends_fin() {
    // The client sends its Close and keeps its connection open (no FIN);
    // the backend answers and closes, as a server does. The half-close
    // timeout is an hour: only the shortcut ends the tunnel in time.
    let (mut client, client_side) = duplex(64);
    let (backend_side, mut backend) = duplex(64);
    let task = tokio::spawn(relay(
        client_side,
        backend_side,
        timeouts(None, 3_600_000),
        Tunnels::new().drain(),
    ));
    close_both_ways(&mut client, &mut backend).await;
    let (end, totals) = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the tunnel ended without the client's FIN")
        .unwrap();
    assert!(matches!(end, End::Closed { client_first: true }), "{end}");
    assert_eq!(totals.down.close_code, Some(1000));
    // The client got the whole Close, then the end of its connection.
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, BACKEND_CLOSE);
}

/// A tunnel's client end, backend end and task.
type Spawned = (
    DuplexStream,
    DuplexStream,
    tokio::task::JoinHandle<(End, Totals)>,
);

/// A tunnel whose client is carried on `carrier`, relaying with
/// `settings`: the client's end, the backend's, the task.
fn spawn_on(carrier: Carrier, settings: Settings, drain: Drain) -> Spawned {
    let (client, client_side) = duplex(4096);
    let (backend_side, backend) = duplex(4096);
    let task = tokio::spawn(relay_on(
        carrier,
        client_side,
        backend_side,
        settings,
        drain,
    ));
    (client, backend, task)
}

/// [`spawn_on`] an HTTP/2 stream, with the half-close timeout
/// `half_close` ms.
fn stream_tunnel(half_close: u64) -> Spawned {
    spawn_on(
        Carrier::Stream,
        timeouts(None, half_close),
        Tunnels::new().drain(),
    )
}

#[tokio::test(start_paused = true)]
async fn an_h2_stream_is_let_go_only_once_the_client_ended_it_too() {
    // The same closing handshake with the client on an HTTP/2 stream: the
    // tunnel waits for the client's end of the stream, which costs no
    // system call, instead of having the stream reset under it.
    let (mut client, mut backend, task) = stream_tunnel(3_600_000);
    close_both_ways(&mut client, &mut backend).await;
    // The client gets the Close and the end of the stream...
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, BACKEND_CLOSE);
    // ...and the tunnel is still there, an hour before its half-close
    // timeout (paused time runs only when everything waits).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!task.is_finished(), "the stream was let go before its end");
    client.shutdown().await.unwrap();
    let (end, _) = task.await.unwrap();
    assert!(matches!(end, End::Closed { client_first: true }), "{end}");
}

#[tokio::test(start_paused = true)]
async fn an_h2_stream_the_client_never_ends_is_let_go_at_the_half_close_timeout_as_closed() {
    // The closing handshake finished both ways; the client never ends its
    // stream. The tunnel waits for it no longer than the half-close
    // timeout, and counts a clean close, not a side that did not follow.
    let (mut client, mut backend, task) = stream_tunnel(2_000);
    let start = Instant::now();
    close_both_ways(&mut client, &mut backend).await;
    let (end, _) = task.await.unwrap();
    assert!(matches!(end, End::Closed { client_first: true }), "{end}");
    assert!(start.elapsed() >= Duration::from_millis(2_000));
}

/// Keeps what is written until it is flushed or shut down, as a TLS
/// stream keeps records it could not send yet.
struct Buffering<IO> {
    io: IO,
    kept: Vec<u8>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Buffering<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Buffering<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.kept.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while !this.kept.is_empty() {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &this.kept))?;
            this.kept.drain(..n);
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn the_clients_connection_is_shut_down_not_just_dropped_after_the_closing_handshake() {
    // A client connection that sends only when flushed or shut down: the
    // backend's Close must reach the client before the tunnel ends.
    let (mut client, client_side) = duplex(64);
    let (backend_side, mut backend) = duplex(64);
    let client_side = Buffering {
        io: client_side,
        kept: Vec::new(),
    };
    let task = tokio::spawn(relay(
        client_side,
        backend_side,
        timeouts(None, 3_600_000),
        Tunnels::new().drain(),
    ));
    close_both_ways(&mut client, &mut backend).await;
    let (end, _) = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the tunnel ended without the client's FIN")
        .unwrap();
    assert!(matches!(end, End::Closed { client_first: true }), "{end}");
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, BACKEND_CLOSE, "the Close was sent, then the end");
}

#[tokio::test(start_paused = true)]
async fn a_backend_fin_without_a_closing_handshake_stays_a_half_close() {
    // Only the backend's Close passed (the client has not answered): the
    // client may still send, so its side stays open until the timeout.
    let (mut client, client_side) = duplex(64);
    let (backend_side, mut backend) = duplex(64);
    let task = tokio::spawn(relay(
        client_side,
        backend_side,
        timeouts(None, 2_000),
        Tunnels::new().drain(),
    ));
    backend.write_all(&BACKEND_CLOSE).await.unwrap();
    backend.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, BACKEND_CLOSE, "the Close, then a FIN (half-close)");
    // The client's answer still reaches the backend after the FIN.
    client.write_all(&CLIENT_CLOSE).await.unwrap();
    let mut close = [0; 8];
    backend.read_exact(&mut close).await.unwrap();
    assert_eq!(close, CLIENT_CLOSE);
    client.shutdown().await.unwrap();
    let (end, _) = task.await.unwrap();
    assert!(
        matches!(
            end,
            End::Closed {
                client_first: false
            }
        ),
        "{end}"
    );
}

/// Frame-aware settings that never act: limits that are never broken
/// and keepalives that never fire, so every chunk goes through the
/// header-by-header path (partial headers held back, Pongs inspected).
fn frame_aware_settings() -> Settings {
    let never = Some(Keepalive::new(
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    let huge = MessageLimits::new()
        .max_frame(u64::MAX)
        .max_message(u64::MAX);
    Settings {
        client_keepalive: never,
        backend_keepalive: never,
        client_limits: huge,
        backend_limits: huge,
        ..timeouts(None, 5_000)
    }
}

/// Relay `up` from the client and `down` from the backend at once, each
/// written in `chunk`-sized pieces through pipes of `pipe` bytes, and
/// return what arrived at the backend and at the client.
fn relay_both_ways(
    settings: Settings,
    up: &[u8],
    down: &[u8],
    chunk: usize,
    pipe: usize,
) -> (Vec<u8>, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, client_side) = duplex(pipe);
        let (backend_side, backend) = duplex(pipe);
        let relay = tokio::spawn(relay(
            client_side,
            backend_side,
            settings,
            Tunnels::new().drain(),
        ));
        let pump = |mut end: tokio::io::DuplexStream, data: Vec<u8>| async move {
            let (mut read, mut write) = tokio::io::split(&mut end);
            let send = async {
                for piece in data.chunks(chunk) {
                    write.write_all(piece).await.unwrap();
                }
                write.shutdown().await.unwrap();
            };
            let mut received = Vec::new();
            let ((), got) = tokio::join!(send, read.read_to_end(&mut received));
            got.unwrap();
            received
        };
        let (at_backend, at_client) =
            tokio::join!(pump(backend, down.to_vec()), pump(client, up.to_vec()));
        relay.await.unwrap();
        (at_backend, at_client)
    })
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
        frame_aware in proptest::prelude::any::<bool>(),
    ) {
        let settings = if frame_aware {
            frame_aware_settings()
        } else {
            timeouts(None, 5_000)
        };
        let (got_up, got_down) = relay_both_ways(settings, &up, &down, chunk, pipe);
        proptest::prop_assert_eq!(got_up, up);
        proptest::prop_assert_eq!(got_down, down);
    }
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_closes_unanswered_tunnels_at_its_deadline() {
    let (_client, client_side) = duplex(64);
    let (backend_side, _backend) = duplex(64);
    let tunnels = Tunnels::new();
    let task = tokio::spawn(relay(
        client_side,
        backend_side,
        timeouts(None, 60_000),
        tunnels.drain(),
    ));
    tokio::task::yield_now().await;
    let start = Instant::now();
    drop(tunnels.shutdown(Duration::from_secs(3)));
    let (end, _) = task.await.unwrap();
    assert_eq!(proxy_close(&end), Some((Reason::Shutdown, false)), "{end}");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_backend_close_ends_at_its_grace_and_a_later_shutdown_keeps_its_own_deadline() {
    for (grace, shutdown_after, expect, reason) in [
        (2, None, 2, Reason::BackendDown),
        (600, Some(1), 4, Reason::BackendDown),
    ] {
        let (_client, client_side) = duplex(64);
        let (backend_side, _backend) = duplex(64);
        let tunnels = Tunnels::new();
        let signal = std::sync::Arc::new(crate::drain::CloseSignal::default());
        let task = tokio::spawn(relay(
            client_side,
            backend_side,
            timeouts(None, 60_000),
            tunnels.drain().with_backend(signal.clone()),
        ));
        tokio::task::yield_now().await;
        let start = Instant::now();
        signal.close(Duration::from_secs(grace));
        if let Some(after) = shutdown_after {
            tokio::time::sleep(Duration::from_secs(after)).await;
            drop(tunnels.shutdown(Duration::from_secs(3)));
        }
        let (end, _) = task.await.unwrap();
        assert_eq!(proxy_close(&end), Some((reason, false)), "{end}");
        assert_eq!(start.elapsed(), Duration::from_secs(expect));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Real frames (Pongs of the proxy's Ping length among them), cut
    /// anywhere, through the frame-aware path with tiny pipes: what
    /// comes out is what went in.
    #[test]
    fn frames_out_equal_frames_in(
        frames in proptest::collection::vec(crate::frame::tests::any_frame(), 1..10),
        chunk in 1usize..3000,
        pipe in 1usize..600,
    ) {
        use crate::frame::tests::frame;
        // Nothing follows a side's Close (RFC 6455 §5.5.1): once both
        // Closes passed and the backend ended, the proxy may close the
        // client's connection, and what a client wrote after its Close
        // would meet a closed pipe.
        let until_close = |frames: &mut dyn Iterator<Item = &(bool, u8, usize, bool)>| {
            let mut kept = Vec::new();
            for &frame in frames {
                kept.push(frame);
                if frame.1 == 0x8 {
                    break;
                }
            }
            kept
        };
        let up: Vec<u8> = until_close(&mut frames.iter())
            .into_iter()
            .flat_map(|(fin, op, len, _)| frame(fin, op, &vec![9; len], Some([5, 6, 7, 8])))
            .collect();
        let down: Vec<u8> = until_close(&mut frames.iter().rev())
            .into_iter()
            .flat_map(|(fin, op, len, _)| frame(fin, op, &vec![4; len], None))
            .collect();
        let (got_up, got_down) =
            relay_both_ways(frame_aware_settings(), &up, &down, chunk, pipe);
        proptest::prop_assert_eq!(got_up, up);
        proptest::prop_assert_eq!(got_down, down);
    }
}

#[tokio::test(start_paused = true)]
async fn a_ping_to_the_backend_is_masked_and_its_pong_is_not_forwarded() {
    use crate::frame::tests::frame;
    let (mut client, client_side) = duplex(4096);
    let (backend_side, mut backend) = duplex(4096);
    let mut settings = timeouts(None, 5_000);
    settings.backend_keepalive = Some(Keepalive::new(
        Duration::from_secs(1),
        Duration::from_secs(1),
    ));
    let task = tokio::spawn(relay(
        client_side,
        backend_side,
        settings,
        Tunnels::new().drain(),
    ));

    // After a second of silence the backend gets a masked Ping.
    let mut ping = [0u8; 14];
    backend.read_exact(&mut ping).await.unwrap();
    assert_eq!(ping[0], 0x89, "FIN + Ping");
    assert_eq!(ping[1], 0x80 | 8, "masked, 8 bytes");
    let key = [ping[2], ping[3], ping[4], ping[5]];
    let payload: Vec<u8> = ping[6..]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    assert_eq!(payload, ping_token());

    // Its Pong, split across two writes, stays with the proxy; the
    // next frame goes through untouched.
    let pong = frame(true, 0xA, &payload, None);
    backend.write_all(&pong[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    backend.write_all(&pong[5..]).await.unwrap();
    let text = frame(true, 0x1, b"hello", None);
    backend.write_all(&text).await.unwrap();
    let mut got = vec![0u8; text.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, text);

    // An application Pong with another payload is forwarded.
    let other = frame(true, 0xA, b"12345678", None);
    backend.write_all(&other).await.unwrap();
    let mut got = vec![0u8; other.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, other);

    // A backend that then falls silent is given up on after the
    // interval and the timeout: the client gets Close 1001.
    let start = Instant::now();
    let mut close = [0u8; 14];
    client.read_exact(&mut close).await.unwrap();
    assert_eq!(&close[..4], &[0x88, 12, 0x03, 0xe9]);
    assert_eq!(&close[4..], b"going away");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    client
        .write_all(&frame(
            true,
            0x8,
            &1001u16.to_be_bytes(),
            Some([1, 2, 3, 4]),
        ))
        .await
        .unwrap();
    let (end, _) = task.await.unwrap();
    assert_eq!(
        proxy_close(&end),
        Some((Reason::Keepalive { client: false }, true)),
        "{end}"
    );
}

/// Regression tests for the frame-aware paths (found in review).
mod frame_aware {
    use super::*;
    use crate::frame::tests::frame;

    const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn spawn(
        settings: Settings,
        tunnels: &Tunnels,
        client_pipe: usize,
        backend_pipe: usize,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<(End, Totals)>,
    ) {
        let (client, client_side) = duplex(client_pipe);
        let (backend_side, backend) = duplex(backend_pipe);
        let task = tokio::spawn(relay(client_side, backend_side, settings, tunnels.drain()));
        (client, backend, task)
    }

    fn keepalive(interval: u64, timeout: u64) -> Option<Keepalive> {
        Some(Keepalive::new(
            Duration::from_secs(interval),
            Duration::from_secs(timeout),
        ))
    }

    async fn read_n(stream: &mut tokio::io::DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    }

    async fn nothing_more(stream: &mut tokio::io::DuplexStream) {
        let mut byte = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await;
        assert!(read.is_err(), "unexpected {read:?} {byte:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_due_inside_a_header_left_by_the_fast_path_waits_for_the_frame() {
        let mut settings = timeouts(None, 5_000);
        settings.client_keepalive = keepalive(1, 10);
        let (mut client, mut backend, _task) = spawn(settings, &Tunnels::new(), 4096, 4096);
        let text = frame(true, 0x1, &[b'x'; 200], None);
        backend.write_all(&text[..1]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        backend.write_all(&text[1..]).await.unwrap();
        assert_eq!(read_n(&mut client, text.len()).await, text);
        let ping = read_n(&mut client, 10).await;
        assert_eq!(&ping[..2], &[0x89, 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_close_follows_a_close_that_went_through_while_a_drain_waited() {
        let tunnels = Tunnels::new();
        let (mut client, mut backend, task) = spawn(timeouts(None, 5_000), &tunnels, 4096, 4096);
        let close = frame(true, 0x8, &1000u16.to_be_bytes(), None);
        backend.write_all(&close[..3]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(tunnels.shutdown(Duration::from_secs(3)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        backend.write_all(&close[3..]).await.unwrap();
        assert_eq!(read_n(&mut client, 4).await, close);
        // The backend got the proxy's Close 1001; the client answers
        // the backend's.
        let to_backend = read_n(&mut backend, 18).await;
        assert_eq!(&to_backend[..2], &[0x88, 0x80 | 12]);
        client
            .write_all(&frame(true, 0x8, &1000u16.to_be_bytes(), KEY))
            .await
            .unwrap();
        let (end, _) = task.await.unwrap();
        assert_eq!(proxy_close(&end), Some((Reason::Shutdown, true)), "{end}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "after the backend's Close: {rest:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_ping_follows_a_forwarded_close() {
        let mut settings = timeouts(None, 5_000);
        settings.client_keepalive = keepalive(1, 10);
        let (mut client, mut backend, _task) = spawn(settings, &Tunnels::new(), 4096, 4096);
        let close = frame(true, 0x8, &1000u16.to_be_bytes(), None);
        backend.write_all(&close).await.unwrap();
        assert_eq!(read_n(&mut client, 4).await, close);
        nothing_more(&mut client).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_closing_handshake_is_done_only_once_everything_is_written() {
        let tunnels = Tunnels::new();
        let (mut client, mut backend, task) = spawn(timeouts(None, 5_000), &tunnels, 4096, 16);
        let close = frame(true, 0x8, &1000u16.to_be_bytes(), None);
        backend.write_all(&close).await.unwrap();
        assert_eq!(read_n(&mut client, 4).await, close);
        drop(tunnels.shutdown(Duration::from_secs(3)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut sent = frame(true, 0x2, &[7; 100], KEY);
        sent.extend(frame(true, 0x8, &1000u16.to_be_bytes(), KEY));
        client.write_all(&sent).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            got
        });
        let (end, _) = task.await.unwrap();
        assert_eq!(proxy_close(&end), Some((Reason::Shutdown, true)), "{end}");
        assert_eq!(reader.await.unwrap(), sent, "all of it reached the backend");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_shutdown_counts_as_a_shutdown() {
        let tunnels = Tunnels::new();
        let (mut client, mut backend, task) = spawn(timeouts(None, 5_000), &tunnels, 4096, 4096);
        tokio::task::yield_now().await;
        drop(tunnels.shutdown(Duration::from_secs(3)));
        read_n(&mut backend, 18).await;
        read_n(&mut client, 14).await;
        client
            .write_all(&frame(true, 0x8, &1001u16.to_be_bytes(), KEY))
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        backend
            .write_all(&frame(true, 0x8, &1001u16.to_be_bytes(), None))
            .await
            .unwrap();
        backend.shutdown().await.unwrap();
        let (end, _) = task.await.unwrap();
        assert_eq!(proxy_close(&end), Some((Reason::Shutdown, true)), "{end}");
    }

    #[tokio::test(start_paused = true)]
    async fn held_bytes_are_dropped_at_end_of_stream_after_the_proxys_close() {
        let tunnels = Tunnels::new();
        let mut settings = timeouts(None, 5_000);
        settings.client_limits = MessageLimits::new().max_frame(1 << 20);
        let (mut client, mut backend, _task) = spawn(settings, &tunnels, 4096, 4096);
        client.write_all(&[0x82, 0xfe]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(tunnels.shutdown(Duration::from_secs(3)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 18, "only the proxy's Close: {got:02x?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pong_timeout_runs_from_when_the_ping_could_be_written() {
        let mut settings = timeouts(None, 5_000);
        settings.client_keepalive = keepalive(1, 1);
        let (mut client, mut backend, task) = spawn(settings, &Tunnels::new(), 1 << 20, 4096);
        // A frame trickles toward the silent client for 6 s: no ping
        // fits before its end, and the client is not given up on.
        let slow = frame(true, 0x2, &[7; 1000], None);
        backend.write_all(&slow[..10]).await.unwrap();
        for i in 10..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            backend.write_all(&slow[i..=i]).await.unwrap();
        }
        assert!(!task.is_finished());
        backend.write_all(&slow[40..]).await.unwrap();
        assert_eq!(read_n(&mut client, slow.len()).await, slow);
        // Then the ping, and the timeout from there.
        let start = Instant::now();
        assert_eq!(&read_n(&mut client, 10).await[..2], &[0x89, 8]);
        // The backend hears Close 1001 one timeout later, and answers.
        let close = read_n(&mut backend, 18).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(&close[..2], &[0x88, 0x80 | 12]);
        backend
            .write_all(&frame(true, 0x8, &1001u16.to_be_bytes(), None))
            .await
            .unwrap();
        let (end, _) = task.await.unwrap();
        assert_eq!(
            proxy_close(&end).map(|(reason, _)| reason),
            Some(Reason::Keepalive { client: true }),
            "{end}"
        );
    }
}

/// A side whose connection ends without a Close frame
/// (`close_on_disconnect`).
mod vanished {
    use super::*;
    use crate::frame::tests::frame;

    const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    /// The layer's default: tell the survivor.
    fn on(half_close: u64) -> Settings {
        Settings {
            close_on_disconnect: true,
            ..timeouts(None, half_close)
        }
    }

    fn spawn(settings: Settings, drain: Drain) -> Spawned {
        spawn_on(Carrier::Connection, settings, drain)
    }

    /// Read one frame of under 126 payload bytes: its first byte,
    /// whether it was masked, and its payload unmasked.
    async fn read_small_frame(stream: &mut DuplexStream) -> (u8, bool, Vec<u8>) {
        let mut head = [0; 2];
        stream.read_exact(&mut head).await.unwrap();
        let masked = head[1] & 0x80 != 0;
        let len = usize::from(head[1] & 0x7f);
        assert!(len < 126, "{head:02x?}");
        let mut key = [0; 4];
        if masked {
            stream.read_exact(&mut key).await.unwrap();
        }
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await.unwrap();
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= if masked { key[i % 4] } else { 0 };
        }
        (head[0], masked, payload)
    }

    /// A Close payload: the code, then the reason.
    fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        payload
    }

    /// Everything up to the end of stream.
    async fn rest(stream: &mut DuplexStream) -> Vec<u8> {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        rest
    }

    /// Who vanished (`true`: the client), the code sent to the other
    /// side, and whether it answered.
    fn vanished(end: &End) -> Option<(bool, u16, bool)> {
        match end {
            End::Vanished {
                vanished,
                answered,
                then: None,
            } => Some((vanished.client, vanished.code, *answered)),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_gone_without_a_close_gets_the_client_a_1011() {
        let (mut client, mut backend, task) = spawn(on(5_000), Tunnels::new().drain());
        let text = frame(true, 0x1, b"last words", None);
        backend.write_all(&text).await.unwrap();
        backend.shutdown().await.unwrap();
        // What the backend sent, then the proxy's Close, unmasked.
        assert_eq!(read_n(&mut client, text.len()).await, text);
        let close = read_small_frame(&mut client).await;
        assert_eq!(
            close,
            (0x88, false, close_payload(1011, b"backend went away"))
        );
        client
            .write_all(&frame(true, 0x8, &1011u16.to_be_bytes(), KEY))
            .await
            .unwrap();
        assert_eq!(rest(&mut client).await, b"", "then the end of stream");
        let (end, totals) = task.await.unwrap();
        assert_eq!(vanished(&end), Some((false, 1011, true)), "{end}");
        assert_eq!(end.kind(), EndKind::BackendClose);
        assert_eq!(
            end.to_string(),
            "backend ended without a Close frame (end of stream), Close 1011 sent to \
             the client, closing handshake completed"
        );
        // The client's answer went nowhere; the proxy's Close is not
        // counted as the backend's bytes.
        assert_eq!(rest(&mut backend).await, b"");
        assert_eq!(totals.down.bytes, text.len() as u64);
        assert_eq!(totals.up.close_code, Some(1011));
    }

    /// A stream whose end reads as a connection reset.
    struct ResetAtEnd(DuplexStream);

    impl AsyncRead for ResetAtEnd {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for ResetAtEnd {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_reset_gets_the_client_a_1011_and_counts_as_an_error() {
        let (mut client, client_side) = duplex(4096);
        let (backend_side, mut backend) = duplex(4096);
        let task = tokio::spawn(relay(
            client_side,
            ResetAtEnd(backend_side),
            on(5_000),
            Tunnels::new().drain(),
        ));
        backend.shutdown().await.unwrap();
        let (_, masked, payload) = read_small_frame(&mut client).await;
        assert_eq!((masked, &payload[..2]), (false, &[0x03, 0xf3][..]));
        client
            .write_all(&frame(true, 0x8, &1011u16.to_be_bytes(), KEY))
            .await
            .unwrap();
        assert_eq!(rest(&mut client).await, b"");
        let (end, _) = task.await.unwrap();
        assert_eq!(vanished(&end), Some((false, 1011, true)), "{end}");
        assert_eq!(end.kind(), EndKind::Error, "counted as before");
        assert!(
            end.to_string()
                .starts_with("backend ended without a Close frame (read error: "),
            "{end}"
        );
    }

    /// A stream that cannot be written to, and reads from its pair.
    struct Unwritable(DuplexStream);

    impl AsyncRead for Unwritable {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Unwritable {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_error_toward_the_backend_gets_the_client_a_1011() {
        let (mut client, client_side) = duplex(4096);
        let (backend_side, _backend) = duplex(4096);
        let task = tokio::spawn(relay(
            client_side,
            Unwritable(backend_side),
            on(5_000),
            Tunnels::new().drain(),
        ));
        client
            .write_all(&frame(true, 0x1, b"anyone there?", KEY))
            .await
            .unwrap();
        let (_, masked, payload) = read_small_frame(&mut client).await;
        assert_eq!(
            (masked, payload),
            (false, close_payload(1011, b"backend went away"))
        );
        client
            .write_all(&frame(true, 0x8, &1011u16.to_be_bytes(), KEY))
            .await
            .unwrap();
        let (end, _) = task.await.unwrap();
        assert_eq!(vanished(&end), Some((false, 1011, true)), "{end}");
        assert_eq!(end.kind(), EndKind::Error);
        assert!(end.to_string().contains("(write error: "), "{end}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_gone_inside_a_frame_leaves_the_client_a_plain_end() {
        // The fast path forwards the partial frame as it comes; the
        // frame-aware one holds a partial header back and forwards it
        // at the end: either way the client has no frame boundary.
        let text = frame(true, 0x1, b"0123456789", None);
        let limited = Settings {
            backend_limits: MessageLimits::new().max_frame(1 << 20),
            ..on(5_000)
        };
        for (settings, cut) in [(on(5_000), 5), (limited, 1)] {
            let (mut client, mut backend, task) = spawn(settings, Tunnels::new().drain());
            backend.write_all(&text[..cut]).await.unwrap();
            backend.shutdown().await.unwrap();
            assert_eq!(rest(&mut client).await, &text[..cut], "no Close after it");
            // The backend's end was passed on as a FIN; the client
            // that then goes too is the one that vanished.
            client.shutdown().await.unwrap();
            let (end, _) = task.await.unwrap();
            assert_eq!(vanished(&end), Some((true, 1001, false)), "{end}");
            assert_eq!(end.kind(), EndKind::BackendClose, "the backend ended first");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gone_without_a_close_gets_the_backend_a_masked_1001() {
        let (mut client, mut backend, task) = spawn(on(5_000), Tunnels::new().drain());
        let text = frame(true, 0x2, &[7; 300], KEY);
        client.write_all(&text).await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_n(&mut backend, text.len()).await, text);
        let close = read_small_frame(&mut backend).await;
        assert_eq!(
            close,
            (0x88, true, close_payload(1001, b"client went away"))
        );
        backend
            .write_all(&frame(true, 0x8, &1001u16.to_be_bytes(), None))
            .await
            .unwrap();
        assert_eq!(rest(&mut backend).await, b"");
        let (end, _) = task.await.unwrap();
        assert_eq!(vanished(&end), Some((true, 1001, true)), "{end}");
        assert_eq!(end.kind(), EndKind::ClientClose);
        assert_eq!(rest(&mut client).await, b"", "nothing to the dead client");
    }

    #[tokio::test(start_paused = true)]
    async fn a_survivor_that_never_answers_is_closed_within_the_grace() {
        // At most 1 s, or the half-close timeout when it is shorter.
        for (half_close, expect) in [(5_000, 1_000), (300, 300)] {
            let (mut client, mut backend, task) = spawn(on(half_close), Tunnels::new().drain());
            let start = Instant::now();
            backend.shutdown().await.unwrap();
            let close = read_small_frame(&mut client).await;
            assert_eq!(close.2[..2], 1011u16.to_be_bytes());
            // The client keeps talking, and never answers the Close.
            client
                .write_all(&frame(true, 0x1, b"hello?", KEY))
                .await
                .unwrap();
            assert_eq!(rest(&mut client).await, b"");
            let (end, _) = task.await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_millis(expect));
            assert_eq!(vanished(&end), Some((false, 1011, false)), "{end}");
            assert!(
                end.to_string()
                    .ends_with("closed without a complete closing handshake"),
                "{end}"
            );
            assert_eq!(rest(&mut backend).await, b"", "nothing forwarded");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn during_a_drain_the_client_is_told_1001() {
        // The client started the closing handshake, a drain began (no
        // Close of the proxy's: one is under way), then the backend
        // died instead of answering.
        for backend_close in [false, true] {
            let tunnels = Tunnels::new();
            let signal = std::sync::Arc::new(crate::drain::CloseSignal::default());
            let (mut client, mut backend, task) =
                spawn(on(5_000), tunnels.drain().with_backend(signal.clone()));
            let close = frame(true, 0x8, &1000u16.to_be_bytes(), KEY);
            client.write_all(&close).await.unwrap();
            assert_eq!(read_n(&mut backend, close.len()).await, close);
            let _shutdown = if backend_close {
                signal.close(Duration::from_secs(60));
                None
            } else {
                Some(tunnels.shutdown(Duration::from_secs(60)))
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
            backend.shutdown().await.unwrap();
            let got = read_small_frame(&mut client).await;
            assert_eq!(got, (0x88, false, close_payload(1001, b"going away")));
            assert_eq!(rest(&mut client).await, b"");
            let (end, _) = task.await.unwrap();
            assert_eq!(vanished(&end), Some((false, 1001, true)), "{end}");
            let kind = if backend_close {
                EndKind::BackendDown
            } else {
                EndKind::Shutdown
            };
            assert_eq!(end.kind(), kind, "counted as the drain");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_setting_off_a_fin_is_passed_on_as_a_half_close() {
        let (mut client, mut backend, task) = spawn(timeouts(None, 5_000), Tunnels::new().drain());
        let text = frame(true, 0x1, b"last words", None);
        backend.write_all(&text).await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(rest(&mut client).await, text, "no Close, the FIN");
        // The other direction still flows.
        let late = frame(true, 0x1, b"still here", KEY);
        client.write_all(&late).await.unwrap();
        assert_eq!(read_n(&mut backend, late.len()).await, late);
        client.shutdown().await.unwrap();
        let (end, _) = task.await.unwrap();
        assert!(
            matches!(
                end,
                End::Closed {
                    client_first: false
                }
            ),
            "{end}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_that_closed_first_gets_an_ordinary_closing_handshake() {
        let (mut client, mut backend, task) = spawn(on(5_000), Tunnels::new().drain());
        let close = frame(true, 0x8, &1000u16.to_be_bytes(), None);
        backend.write_all(&close).await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(rest(&mut client).await, close, "its Close, then the FIN");
        let answer = frame(true, 0x8, &1000u16.to_be_bytes(), KEY);
        client.write_all(&answer).await.unwrap();
        assert_eq!(read_n(&mut backend, answer.len()).await, answer);
        client.shutdown().await.unwrap();
        let (end, _) = task.await.unwrap();
        assert!(
            matches!(
                end,
                End::Closed {
                    client_first: false
                }
            ),
            "{end}"
        );
    }

    async fn read_n(stream: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    }
}

/// Gives what it holds one `chunk` at a time, as an HTTP/2 stream gives
/// one DATA frame per read; then waits (never ends).
struct Chunked {
    data: Vec<u8>,
    chunk: usize,
    /// What comes after the data: `None` waits, else the end of stream
    /// (`Ok`) or an error.
    then: Option<io::Result<()>>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.data.is_empty() {
            return match self.then.take() {
                None => Poll::Pending,
                Some(Ok(())) => {
                    self.then = Some(Ok(()));
                    Poll::Ready(Ok(()))
                }
                Some(Err(e)) => Poll::Ready(Err(e)),
            };
        }
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data.drain(..n);
        Poll::Ready(Ok(()))
    }
}

/// Records the size of every write.
#[derive(Default)]
struct Writes(Vec<usize>);

impl AsyncWrite for Writes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.push(buf.len());
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn a_source_is_read_dry_before_one_write() {
    // A 16 KiB binary message (a masked frame, as a client sends) that
    // arrives as 8 KiB pieces: one write of all of it, as long as the
    // scratch buffer has room; then the rest.
    let mut message = vec![0x82, 0xfe, 0x40, 0x00, 0, 0, 0, 0];
    message.resize(8 + 16 * 1024, 0xa5);
    let mut source = Chunked {
        data: message.repeat(5),
        chunk: 8 * 1024,
        then: None,
    };
    let mut destination = Writes::default();
    let mut pump = super::pump::Pump::new(true, MessageLimits::new(), false, false);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let polled = pump.poll(
        &mut cx,
        Pin::new(&mut source),
        Pin::new(&mut destination),
        false,
    );
    assert!(polled.is_pending());
    let total = 5 * message.len();
    assert_eq!(destination.0.iter().sum::<usize>(), total);
    // 64 KiB of scratch, read into while 4 KiB or more of it is free.
    assert_eq!(destination.0, [65_536, total - 65_536]);
}

#[test]
fn the_end_of_a_source_read_dry_comes_after_its_data() {
    // Frame-aware (a limit is set): a whole frame and the first byte of
    // the next one's header, then the end of the stream, all in one poll.
    // The frame goes through, and the held-back header byte goes as it is
    // at the end; the destination is shut down.
    let frame = [0x81, 0x82, 0, 0, 0, 0, b'h', b'i'];
    let mut data = frame.to_vec();
    data.push(0x81);
    let mut source = Chunked {
        data: data.clone(),
        chunk: 3,
        then: Some(Ok(())),
    };
    let mut destination = Writes::default();
    let limits = MessageLimits::new().max_frame(1024);
    let mut pump = super::pump::Pump::new(true, limits, false, false);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let polled = pump.poll(
        &mut cx,
        Pin::new(&mut source),
        Pin::new(&mut destination),
        false,
    );
    assert!(matches!(polled, Poll::Ready(Ok(()))));
    assert_eq!(
        destination.0,
        [frame.len(), 1],
        "the frame, then the held byte"
    );

    // An error after data: the data is passed, then the error reported.
    let mut source = Chunked {
        data: frame.to_vec(),
        chunk: 3,
        then: Some(Err(io::ErrorKind::ConnectionReset.into())),
    };
    let mut destination = Writes::default();
    let mut pump = super::pump::Pump::new(true, limits, false, false);
    let polled = pump.poll(
        &mut cx,
        Pin::new(&mut source),
        Pin::new(&mut destination),
        false,
    );
    assert!(
        matches!(polled, Poll::Ready(Err(super::pump::Failure::Read(_)))),
        "the error is reported"
    );
    assert_eq!(destination.0, [frame.len()], "after the data it followed");
}

#[tokio::test(start_paused = true)]
async fn let_go_waits_for_an_h2_clients_end_only_where_the_relay_did_not() {
    use super::let_go;
    let hour = Duration::from_secs(3_600);
    let drain = Tunnels::new().drain();
    let proxy_closed = End::Proxy {
        reason: Reason::BackendDown,
        answered: true,
    };
    // Returns at once (paused time does not move): a connection of its
    // own, a stream the relay saw end or waited for already.
    for (carrier, end) in [
        (Carrier::Connection, &proxy_closed),
        (Carrier::Stream, &End::Closed { client_first: true }),
        (
            Carrier::Stream,
            &End::HalfCloseTimeout { client_first: true },
        ),
        (
            Carrier::Stream,
            &End::ClientError(std::io::ErrorKind::ConnectionReset.into()),
        ),
    ] {
        let (mut client, _peer) = duplex(64);
        let start = Instant::now();
        let_go(&mut client, carrier, end, hour, &drain).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "{carrier:?} {end}");
    }
    // After the proxy closed: the stream is ended from its side, what the
    // client still sends is read, and it is let go at the client's end.
    let (mut client, mut peer) = duplex(64);
    let waiting = tokio::spawn(async move {
        let_go(
            &mut client,
            Carrier::Stream,
            &proxy_closed,
            hour,
            &Tunnels::new().drain(),
        )
        .await;
    });
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the proxy's side ended");
    peer.write_all(&[0u8; 1000]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!waiting.is_finished(), "let go before the client's end");
    peer.shutdown().await.unwrap();
    waiting.await.unwrap();
    // A client that never ends: let go after `within`.
    let (mut client, _peer) = duplex(64);
    let start = Instant::now();
    let_go(
        &mut client,
        Carrier::Stream,
        &End::Idle,
        Duration::from_secs(5),
        &drain,
    )
    .await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    // During a shutdown: at once.
    let tunnels = Tunnels::new();
    let drain = tunnels.drain();
    drop(tunnels.shutdown(Duration::from_secs(1)));
    let (mut client, _peer) = duplex(64);
    let start = Instant::now();
    let_go(&mut client, Carrier::Stream, &End::Idle, hour, &drain).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
}
