//! Load phases: round trips, throughput, handshakes, idle connections.
//! Every loop is bounded by a deadline and, where it counts, by a count.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{BoxError, Dialer, Ws};

/// Latency samples kept per phase at most.
const MAX_SAMPLES: usize = 2_000_000;

/// What a phase measured.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sample {
    /// Operations completed (messages echoed or handshakes done).
    pub(crate) ops: u64,
    /// Payload bytes echoed.
    pub(crate) bytes: u64,
    /// Wall time of the phase.
    pub(crate) elapsed: Duration,
    /// Latencies, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// Operations that failed.
    pub(crate) errors: u64,
}

impl Sample {
    /// Add `other`'s counts and latencies to these.
    pub(crate) fn merge(mut self, other: Sample) -> Self {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.errors += other.errors;
        if self.latencies.len() < MAX_SAMPLES {
            self.latencies.extend(other.latencies);
        }
        self
    }

    /// Set the phase's wall time and sort the latencies.
    pub(crate) fn finish(mut self, elapsed: Duration) -> Self {
        self.elapsed = elapsed;
        self.latencies.sort_unstable();
        self
    }

    /// Operations per second.
    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Megabytes (10^6) per second of echoed payload.
    pub(crate) fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of the latencies, in microseconds.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index].as_secs_f64() * 1e6
    }
}

/// Open `count` WebSockets one after the other.
async fn connect_all(dialer: &Dialer, count: usize) -> Vec<Result<Ws, BoxError>> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(dialer.connect().await);
    }
    clients
}

/// Merge the samples of a phase's tasks.
pub(crate) async fn gather(tasks: Vec<tokio::task::JoinHandle<Sample>>, start: Instant) -> Sample {
    let mut total = Sample::default();
    for task in tasks {
        total = total.merge(task.await.unwrap_or_default());
    }
    total.finish(start.elapsed())
}

/// `connections` clients each send a `size`-byte message and wait for its
/// echo, again and again, for `duration`.
pub(crate) async fn round_trips(
    dialer: &Dialer,
    connections: usize,
    size: usize,
    duration: Duration,
) -> Sample {
    let clients = connect_all(dialer, connections).await;
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let mut sample = Sample::default();
                let Ok(mut ws) = client else {
                    sample.errors += 1;
                    return sample;
                };
                let payload = Message::binary(vec![0x5a; size]);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if ws.send(payload.clone()).await.is_err() {
                        sample.errors += 1;
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                        Ok(Some(Ok(_))) => {
                            sample.ops += 1;
                            sample.bytes += size as u64;
                            if sample.latencies.len() < MAX_SAMPLES / 64 {
                                sample.latencies.push(sent.elapsed());
                            }
                        }
                        _ => {
                            sample.errors += 1;
                            break;
                        }
                    }
                }
                let _ = ws.close(None).await;
                sample
            })
        })
        .collect();
    gather(tasks, start).await
}

/// `connections` clients each keep `window` messages of `size` bytes in
/// flight for `duration`; measures echoed bytes per second.
pub(crate) async fn throughput(
    dialer: &Dialer,
    connections: usize,
    window: usize,
    size: usize,
    duration: Duration,
) -> Sample {
    let clients = connect_all(dialer, connections).await;
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let mut sample = Sample::default();
                let Ok(ws) = client else {
                    sample.errors += 1;
                    return sample;
                };
                let (mut tx, mut rx) = ws.split();
                let payload = Message::binary(vec![0xa5; size]);
                let mut in_flight = 0;
                loop {
                    while in_flight < window && Instant::now() < deadline {
                        if tx.send(payload.clone()).await.is_err() {
                            sample.errors += 1;
                            return sample;
                        }
                        in_flight += 1;
                    }
                    if in_flight == 0 {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                        Ok(Some(Ok(message))) => {
                            in_flight -= 1;
                            sample.ops += 1;
                            sample.bytes += message.len() as u64;
                        }
                        _ => {
                            sample.errors += 1;
                            break;
                        }
                    }
                }
                let _ = tx.close().await;
                sample
            })
        })
        .collect();
    gather(tasks, start).await
}

/// `concurrency` loops each open a WebSocket (timing the handshake), then
/// close it, for `duration`.
pub(crate) async fn handshakes(dialer: &Dialer, concurrency: usize, duration: Duration) -> Sample {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let dialer = dialer.clone();
            tokio::spawn(async move {
                let mut sample = Sample::default();
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    match dialer.connect().await {
                        Ok(mut ws) => {
                            sample.ops += 1;
                            sample.latencies.push(begun.elapsed());
                            let _ = ws.close(None).await;
                            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                while let Some(Ok(_)) = ws.next().await {}
                            })
                            .await;
                        }
                        Err(_) => sample.errors += 1,
                    }
                }
                sample
            })
        })
        .collect();
    gather(tasks, start).await
}

/// Open `count` WebSockets and keep them, `parallel` handshakes at a time.
pub(crate) async fn open_idle(dialer: &Dialer, count: usize, parallel: usize) -> (Vec<Ws>, u64) {
    let mut open = Vec::with_capacity(count);
    let mut errors = 0;
    let mut pending =
        futures_util::stream::iter((0..count).map(|_| dialer.connect())).buffer_unordered(parallel);
    while let Some(result) = pending.next().await {
        match result {
            Ok(ws) => open.push(ws),
            Err(_) => errors += 1,
        }
    }
    (open, errors)
}
