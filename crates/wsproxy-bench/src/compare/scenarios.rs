//! The scenarios of `compare`, each run against one target: the load, and
//! the proxy's CPU time and memory around it.
//!
//! Every loop is bounded: timed phases by their deadline (and a cap on
//! failures), counted ones by their count and an overall limit, and every
//! wait by a timeout.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{BoxError, Dialer, Ws};
use crate::load::Sample;
use crate::procs::Proc;

/// Time allowed for an echo, and for each step of a cycle before the FIN.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Time allowed for the server's FIN once its Close arrived.
const FIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Time allowed for a closing handshake when the WebSockets of a phase
/// are closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Time allowed for opening all the WebSockets of `idle` or `storm`; those
/// not open by then count as failures.
const OPEN_LIMIT: Duration = Duration::from_secs(120);

/// Latencies kept per phase at most.
const MAX_LATENCIES: usize = 1_000_000;

/// Failed cycles after which a loop of `cycle32` gives up.
const MAX_ERRORS_PER_LOOP: u64 = 1_000;

/// What a timed scenario measured on one target.
#[derive(Debug, Default)]
pub(super) struct Measured {
    /// Operations, bytes, latencies and failures.
    pub(super) sample: Sample,
    /// CPU seconds (user + system) the proxy used while the load ran; none
    /// for the direct target.
    pub(super) proxy_cpu: Option<f64>,
    /// Of which in user space.
    pub(super) proxy_user: Option<f64>,
    /// The first failure, for the log.
    pub(super) first_error: Option<String>,
}

impl Measured {
    /// Proxy CPU in user space per operation, in microseconds.
    pub(super) fn user_us_per_op(&self) -> f64 {
        match self.proxy_user {
            Some(seconds) if self.sample.ops > 0 => seconds * 1e6 / self.sample.ops as f64,
            _ => f64::NAN,
        }
    }

    /// Proxy CPU per operation, in microseconds.
    pub(super) fn cpu_us_per_op(&self) -> f64 {
        match self.proxy_cpu {
            Some(seconds) if self.sample.ops > 0 => seconds * 1e6 / self.sample.ops as f64,
            _ => f64::NAN,
        }
    }
}

/// CPU seconds of a proxy: user and system, and user alone.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    total: f64,
    user: f64,
}

/// CPU seconds of `proxy` so far.
fn cpu(proxy: Option<&Proc>) -> Option<Cpu> {
    proxy.map(|proxy| Cpu {
        total: proxy.cpu_seconds(),
        user: proxy.user_cpu_seconds(),
    })
}

/// CPU seconds `proxy` used since `before`.
fn spent(before: Option<Cpu>, proxy: Option<&Proc>) -> Option<Cpu> {
    before.zip(cpu(proxy)).map(|(a, b)| Cpu {
        total: b.total - a.total,
        user: b.user - a.user,
    })
}

/// Open `count` WebSockets one after the other, counting failures.
async fn connect_all(dialer: &Dialer, count: usize) -> (Vec<Ws>, u64, Option<String>) {
    let mut open = Vec::with_capacity(count);
    let mut failed = 0;
    let mut first_error = None;
    for _ in 0..count {
        match dialer.connect().await {
            Ok(ws) => open.push(ws),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("connect: {e}"));
            }
        }
    }
    (open, failed, first_error)
}

/// `rtt1` and `rtt64`: `connections` WebSockets each send a `size`-byte
/// binary message and wait for its echo, again and again, for `phase`.
/// One operation is one message echoed.
pub(super) async fn round_trips(
    dialer: &Dialer,
    proxy: Option<&Proc>,
    connections: usize,
    size: usize,
    phase: Duration,
) -> Measured {
    let (clients, failed, mut first_error) = connect_all(dialer, connections).await;
    let payload = Message::binary(Bytes::from(vec![0x5a; size]));
    let kept = MAX_LATENCIES / connections.max(1);
    let before = cpu(proxy);
    let start = Instant::now();
    let deadline = start + phase;
    let tasks: Vec<JoinHandle<(Ws, Sample, Option<String>)>> = clients
        .into_iter()
        .map(|mut ws| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut sample = Sample::default();
                let mut error = None;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let echo = async {
                        ws.send(payload.clone()).await?;
                        match ws.next().await {
                            Some(Ok(_)) => Ok(()),
                            Some(Err(e)) => Err(BoxError::from(e)),
                            None => Err("closed".into()),
                        }
                    };
                    match tokio::time::timeout(STEP_TIMEOUT, echo).await {
                        Ok(Ok(())) => {
                            sample.ops += 1;
                            sample.bytes += size as u64;
                            if sample.latencies.len() < kept {
                                sample.latencies.push(sent.elapsed());
                            }
                        }
                        Ok(Err(e)) => {
                            sample.errors += 1;
                            error = Some(format!("echo: {e}"));
                            break;
                        }
                        Err(_) => {
                            sample.errors += 1;
                            error = Some("no echo within 5 s".to_owned());
                            break;
                        }
                    }
                }
                (ws, sample, error)
            })
        })
        .collect();
    let mut total = Sample {
        errors: failed,
        ..Sample::default()
    };
    let mut open = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok((ws, sample, error)) = task.await {
            open.push(ws);
            total = total.merge(sample);
            first_error = first_error.or(error);
        }
    }
    let sample = total.finish(start.elapsed());
    let spent = spent(before, proxy);
    close_all(open, 64).await;
    Measured {
        sample,
        proxy_cpu: spent.map(|c| c.total),
        proxy_user: spent.map(|c| c.user),
        first_error,
    }
}

/// `stream16`: `connections` WebSockets each stream `size`-byte binary
/// messages for `phase`: a sender keeps up to `window` of them unanswered,
/// a reader counts the echoes (and lets the sender send one more for
/// each). One operation is one message echoed; the bytes are the echoed
/// payload.
pub(super) async fn stream(
    dialer: &Dialer,
    proxy: Option<&Proc>,
    connections: usize,
    window: usize,
    size: usize,
    phase: Duration,
) -> Measured {
    let (clients, failed, mut first_error) = connect_all(dialer, connections).await;
    let payload = Message::binary(Bytes::from(vec![0xa5; size]));
    let before = cpu(proxy);
    let start = Instant::now();
    let deadline = start + phase;
    let mut pairs = Vec::with_capacity(clients.len());
    for ws in clients {
        let (mut tx, mut rx) = ws.split();
        let credit = Arc::new(Semaphore::new(window));
        let (sent_tx, mut sent_rx) = oneshot::channel::<u64>();
        let sender = {
            let credit = credit.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                let mut error = None;
                while Instant::now() < deadline {
                    // Closed when the reader gave up.
                    match tokio::time::timeout(STEP_TIMEOUT, credit.acquire()).await {
                        Ok(Ok(permit)) => permit.forget(),
                        Ok(Err(_)) => break,
                        Err(_) => {
                            error = Some("no echo within 5 s".to_owned());
                            break;
                        }
                    }
                    match tokio::time::timeout(STEP_TIMEOUT, tx.send(payload.clone())).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            error = Some(format!("send: {e}"));
                            break;
                        }
                        Err(_) => {
                            error = Some("a send stalled for 5 s".to_owned());
                            break;
                        }
                    }
                    sent += 1;
                }
                let _ = sent_tx.send(sent);
                (tx, error)
            })
        };
        let reader = tokio::spawn(async move {
            let mut sample = Sample::default();
            let mut error = None;
            // How many echoes to wait for, once the sender is done.
            let mut expected: Option<u64> = None;
            while expected.is_none_or(|expected| sample.ops < expected) {
                tokio::select! {
                    sent = &mut sent_rx, if expected.is_none() => {
                        expected = Some(sent.unwrap_or(0));
                    }
                    message = tokio::time::timeout(STEP_TIMEOUT, rx.next()) => match message {
                        Ok(Some(Ok(message))) => {
                            sample.ops += 1;
                            sample.bytes += message.len() as u64;
                            credit.add_permits(1);
                        }
                        other => {
                            sample.errors += 1;
                            error = Some(match other {
                                Ok(Some(Err(e))) => format!("echo: {e}"),
                                Ok(None) => "closed".to_owned(),
                                _ => "no echo within 5 s".to_owned(),
                            });
                            break;
                        }
                    }
                }
            }
            credit.close();
            (rx, sample, error)
        });
        pairs.push((sender, reader));
    }
    let mut total = Sample {
        errors: failed,
        ..Sample::default()
    };
    let mut open = Vec::with_capacity(pairs.len());
    for (sender, reader) in pairs {
        let (Ok((tx, send_error)), Ok((rx, sample, read_error))) = (sender.await, reader.await)
        else {
            continue;
        };
        total = total.merge(sample);
        first_error = first_error.or(read_error).or(send_error);
        if let Ok(ws) = rx.reunite(tx) {
            open.push(ws);
        }
    }
    let sample = total.finish(start.elapsed());
    let spent = spent(before, proxy);
    close_all(open, 64).await;
    Measured {
        sample,
        proxy_cpu: spent.map(|c| c.total),
        proxy_user: spent.map(|c| c.user),
        first_error,
    }
}

/// `cycle32`: `loops` loops, for `phase`, each connect to `addr`, upgrade
/// to a WebSocket (the latency is the time from the connect to the end of
/// the 101's head), send a Close, read the server's Close, then wait for
/// the server's FIN (within 2 s, else the cycle failed). One operation is
/// one cycle.
pub(super) async fn cycles(
    addr: &str,
    proxy: Option<&Proc>,
    loops: usize,
    phase: Duration,
) -> Measured {
    let request: Arc<[u8]> = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
    .into();
    let kept = MAX_LATENCIES / loops.max(1);
    let before = cpu(proxy);
    let start = Instant::now();
    let deadline = start + phase;
    let tasks: Vec<JoinHandle<(Sample, Option<String>)>> = (0..loops)
        .map(|index| {
            let addr = addr.to_owned();
            let request = request.clone();
            tokio::spawn(async move {
                let mut sample = Sample::default();
                let mut error = None;
                let mut count: u32 = 0;
                while Instant::now() < deadline && sample.errors < MAX_ERRORS_PER_LOOP {
                    count = count.wrapping_add(1);
                    // A mask that changes from frame to frame.
                    let mask = (count ^ (index as u32).rotate_left(16))
                        .wrapping_mul(0x9e37_79b9)
                        .to_be_bytes();
                    match cycle(&addr, &request, mask).await {
                        Ok(upgrade) => {
                            sample.ops += 1;
                            if sample.latencies.len() < kept {
                                sample.latencies.push(upgrade);
                            }
                        }
                        Err(e) => {
                            sample.errors += 1;
                            error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                (sample, error)
            })
        })
        .collect();
    let mut total = Sample::default();
    let mut first_error = None;
    for task in tasks {
        if let Ok((sample, error)) = task.await {
            total = total.merge(sample);
            first_error = first_error.or(error);
        }
    }
    let sample = total.finish(start.elapsed());
    let spent = spent(before, proxy);
    Measured {
        sample,
        proxy_cpu: spent.map(|c| c.total),
        proxy_user: spent.map(|c| c.user),
        first_error,
    }
}

/// One cycle of `cycle32` on a raw TCP connection; the upgrade latency.
async fn cycle(addr: &str, request: &[u8], mask: [u8; 4]) -> Result<Duration, BoxError> {
    let begun = Instant::now();
    let mut tcp = step("connect", TcpStream::connect(addr)).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(request).await?;
    // The 101's head, and whatever follows it.
    let mut buf = [0u8; 1024];
    let mut filled = 0;
    let head = loop {
        let n = step("the 101", tcp.read(&mut buf[filled..])).await?;
        if n == 0 {
            return Err("closed before the end of the response head".into());
        }
        filled += n;
        if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if filled == buf.len() {
            return Err("response head over 1 KiB".into());
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&buf[..head]);
        return Err(format!("no 101: {}", line.lines().next().unwrap_or("")).into());
    }
    let upgrade = begun.elapsed();
    // Close 1000: FIN + opcode 8, masked, two bytes of payload.
    let [m0, m1, m2, m3] = mask;
    let close = [0x88, 0x82, m0, m1, m2, m3, 0x03 ^ m0, 0xe8 ^ m1];
    tcp.write_all(&close).await?;
    // The server's Close: unmasked, at most 125 bytes of payload.
    buf.copy_within(head..filled, 0);
    filled -= head;
    while filled < 2 || filled < 2 + usize::from(buf[1] & 0x7f) {
        let n = step("the server's Close", tcp.read(&mut buf[filled..])).await?;
        if n == 0 {
            return Err("closed without a Close frame".into());
        }
        filled += n;
    }
    if buf[0] != 0x88 || buf[1] & 0x80 != 0 || buf[1] & 0x7f > 125 {
        return Err(format!("not a Close frame: {:02x} {:02x}", buf[0], buf[1]).into());
    }
    if filled > 2 + usize::from(buf[1]) {
        return Err("data after the server's Close".into());
    }
    // The FIN.
    match tokio::time::timeout(FIN_TIMEOUT, tcp.read(&mut buf)).await {
        Ok(Ok(0)) => Ok(upgrade),
        Ok(Ok(_)) => Err("data after the server's Close".into()),
        Ok(Err(e)) => Err(format!("waiting for the FIN: {e}").into()),
        Err(_) => Err("no FIN within 2 s of the server's Close".into()),
    }
}

/// `future` within [`STEP_TIMEOUT`], its error naming `what`.
async fn step<T>(
    what: &str,
    future: impl Future<Output = std::io::Result<T>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}").into()),
        Err(_) => Err(format!("{what}: no answer within 5 s").into()),
    }
}

/// WebSockets that [`open_echoed`] opened.
pub(super) struct Opened {
    /// The WebSockets, each of which echoed a message.
    pub(super) open: Vec<Ws>,
    /// Those that failed to open or to echo (or were not open in time).
    pub(super) failed: usize,
    /// The first failure, for the log.
    pub(super) first_error: Option<String>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("open", &self.open.len())
            .field("failed", &self.failed)
            .field("first_error", &self.first_error)
            .finish()
    }
}

/// Open `count` WebSockets, at most `parallel` handshakes at a time (each
/// in a task of its own, spread over the runtime's threads), each sending
/// one small message and waiting for its echo; within [`OPEN_LIMIT`].
pub(super) async fn open_echoed(dialer: &Dialer, count: usize, parallel: usize) -> Opened {
    let mut opening = futures_util::stream::iter(0..count)
        .map(|_| {
            let dialer = dialer.clone();
            tokio::spawn(async move {
                let mut ws = dialer.connect().await?;
                let echo = async {
                    ws.send(Message::text("hello")).await?;
                    match ws.next().await {
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(BoxError::from(e)),
                        None => Err("closed".into()),
                    }
                };
                match tokio::time::timeout(STEP_TIMEOUT, echo).await {
                    Ok(Ok(())) => Ok(ws),
                    Ok(Err(e)) => Err(format!("echo: {e}").into()),
                    Err(_) => Err::<_, BoxError>("no echo within 5 s".into()),
                }
            })
        })
        .buffer_unordered(parallel.max(1));
    let deadline = tokio::time::Instant::now() + OPEN_LIMIT;
    let mut opened = Opened {
        open: Vec::with_capacity(count),
        failed: 0,
        first_error: None,
    };
    loop {
        match tokio::time::timeout_at(deadline, opening.next()).await {
            Ok(Some(Ok(Ok(ws)))) => opened.open.push(ws),
            Ok(Some(Ok(Err(e)))) => {
                opened.failed += 1;
                opened.first_error.get_or_insert_with(|| e.to_string());
            }
            Ok(Some(Err(e))) => {
                opened.failed += 1;
                opened.first_error.get_or_insert_with(|| e.to_string());
            }
            Ok(None) => break,
            Err(_) => {
                opened.failed = count - opened.open.len();
                opened.first_error = Some(format!(
                    "{} not open within {} s",
                    opened.failed,
                    OPEN_LIMIT.as_secs()
                ));
                break;
            }
        }
    }
    opened
}

/// Close `open` (a closing handshake each, within 2 s, `parallel` at a
/// time) and drop them.
pub(super) async fn close_all(open: Vec<Ws>, parallel: usize) {
    futures_util::stream::iter(open)
        .map(|mut ws| {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            })
        })
        .buffer_unordered(parallel.max(1))
        .for_each(|_| async {})
        .await;
}

/// What `idle` measured.
#[derive(Debug)]
pub(super) struct Idle {
    /// Proxy RSS growth per open tunnel, KiB.
    pub(super) kib_per_tunnel: f64,
    /// Tunnels that failed to open or echo.
    pub(super) failed: usize,
    /// The first failure, for the log.
    pub(super) first_error: Option<String>,
}

/// `idle`: the proxy's settled RSS, then `count` WebSockets opened (64
/// handshakes at a time), each echoing one message, then its settled RSS
/// again; the growth per tunnel.
pub(super) async fn idle(dialer: &Dialer, proxy: &Proc, count: usize) -> Idle {
    let (before, _) = settled_rss(proxy, Duration::from_secs(5)).await;
    let opened = open_echoed(dialer, count, 64).await;
    let (after, settled) = settled_rss(proxy, Duration::from_secs(10)).await;
    if !settled {
        eprintln!("  {}: RSS still changing after 10 s", proxy.name);
    }
    let tunnels = opened.open.len();
    close_all(opened.open, 64).await;
    Idle {
        kib_per_tunnel: after.saturating_sub(before) as f64 / tunnels.max(1) as f64,
        failed: opened.failed,
        first_error: opened.first_error,
    }
}

/// The proxy's RSS in KiB once it holds still: read every 100 ms until a
/// reading equals the one 500 ms before it, for at most `limit`. Also
/// whether it held still.
async fn settled_rss(proxy: &Proc, limit: Duration) -> (u64, bool) {
    let deadline = Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut readings = VecDeque::with_capacity(6);
    loop {
        tick.tick().await;
        let rss = proxy.rss_kib();
        if readings.len() == 6 {
            readings.pop_front();
        }
        readings.push_back(rss);
        if readings.len() == 6 && readings[0] == rss {
            return (rss, true);
        }
        if Instant::now() >= deadline {
            return (rss, false);
        }
    }
}

/// What `storm` measured.
#[derive(Debug)]
pub(super) struct Storm {
    /// From the first connect until every WebSocket was open and had
    /// echoed its message (or failed).
    pub(super) elapsed: Duration,
    /// WebSockets that failed to open or echo.
    pub(super) failed: usize,
    /// The first failure, for the log.
    pub(super) first_error: Option<String>,
    /// CPU seconds the proxy used meanwhile.
    pub(super) proxy_cpu: Option<f64>,
    /// The proxy's largest RSS meanwhile (read every 20 ms), KiB.
    pub(super) peak_rss_kib: Option<u64>,
    /// SYNs the kernel dropped meanwhile because a listener's accept queue
    /// was full (`ListenOverflows`, machine-wide): each costs its client a
    /// second before its SYN is sent again.
    pub(super) listen_overflows: Option<u64>,
}

/// The kernel's count of SYNs dropped for a full accept queue
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`).
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `storm`: `count` WebSockets opened at once, at most `parallel`
/// handshakes under way, each echoing one message; then all closed.
pub(super) async fn storm(
    dialer: &Dialer,
    proxy: Option<&Proc>,
    count: usize,
    parallel: usize,
) -> Storm {
    let done = Notify::new();
    let overflows = listen_overflows();
    let before = cpu(proxy);
    let start = Instant::now();
    let opening = async {
        let opened = open_echoed(dialer, count, parallel).await;
        let elapsed = start.elapsed();
        done.notify_one();
        (opened, elapsed)
    };
    let peak = async {
        let proxy = proxy?;
        let mut peak = proxy.rss_kib();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => peak = peak.max(proxy.rss_kib()),
                () = done.notified() => break,
            }
        }
        Some(peak.max(proxy.rss_kib()))
    };
    let ((opened, elapsed), peak_rss_kib) = tokio::join!(opening, peak);
    let spent = spent(before, proxy);
    let listen_overflows = overflows
        .zip(listen_overflows())
        .map(|(a, b)| b.saturating_sub(a));
    close_all(opened.open, parallel).await;
    Storm {
        elapsed,
        failed: opened.failed,
        first_error: opened.first_error,
        proxy_cpu: spent.map(|c| c.total),
        peak_rss_kib,
        listen_overflows,
    }
}
