//! Serving on one single-threaded runtime per worker, each accepting on
//! its own `SO_REUSEPORT` listener: nginx's process model in threads.
//!
//! The kernel spreads new connections over the listeners; a connection,
//! its tunnel and its backend socket then stay on one thread, with no
//! work stealing and no cross-thread wake-ups. Every worker serves a clone
//! of one `wsproxy::serve::Server`, so its connection limits hold across
//! workers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use socket2::{Domain, Socket, Type};
use tokio_util::sync::CancellationToken;
use wsproxy::Tunnels;
use wsproxy::serve::Server;

use crate::live::Switch;

/// Bind `count` listeners to `addr` with `SO_REUSEPORT` (the first one
/// picks the port when `addr` has port 0).
///
/// `SO_REUSEPORT` would let this process share a port that another one
/// (a second `wsgate` started by mistake) already serves, each taking
/// part of the connections; so the address is first bound without it,
/// which fails with "address in use" if anyone listens there.
pub(crate) fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // Still allowed: connections of an earlier process in TIME_WAIT.
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let first = listener(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(listener(addr)?);
    }
    Ok(listeners)
}

/// The accept queue of each worker's listener. A reconnect storm (a
/// deploy, a drain with Close 1001) brings thousands of SYNs at once; a
/// full queue drops them and each client waits a second for its SYN to be
/// sent again. The kernel caps it at `net.core.somaxconn` (4096 on
/// current kernels); HAProxy asks for its `maxconn`, nginx for 511.
const BACKLOG: i32 = 4096;

/// A non-blocking `SO_REUSEADDR` + `SO_REUSEPORT` listener on `addr`.
fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The stop of the accept loops, and how many of them still accept.
///
/// A loop told to stop may accept once more (its accept and the stop can
/// be ready together), and the connection it accepts then is served: the
/// tunnels' drain, which refuses handshakes with 503, waits until every
/// loop has stopped and their connections were answered.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stop {
    token: CancellationToken,
    accepting: Arc<AtomicUsize>,
}

impl Stop {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The graceful-shutdown signal of one accept loop, counted as
    /// accepting from now until it resolves in that loop (or is
    /// dropped).
    pub(crate) fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        self.accepting.fetch_add(1, Ordering::Relaxed);
        let mut accepting = Accepting(Some(self.accepting.clone()));
        let token = self.token.clone();
        async move {
            token.cancelled().await;
            accepting.done();
        }
    }

    /// Tell every accept loop to stop.
    pub(crate) fn cancel(&self) {
        self.token.cancel();
    }

    /// Resolves at the stop (for listeners not counted).
    pub(crate) fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// Accept loops that have not seen the stop yet.
    pub(crate) fn accepting(&self) -> usize {
        // Acquire: the connections a loop accepted before it stopped are
        // counted by then.
        self.accepting.load(Ordering::Acquire)
    }
}

/// One accept loop's count in [`Stop`], given back once.
struct Accepting(Option<Arc<AtomicUsize>>);

impl Accepting {
    fn done(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.done();
    }
}

/// One listener of a worker: its socket, its listener's server and the
/// signal that stops it ([`Stop::signal`], taken before the worker
/// starts, so that it counts at once).
pub(crate) type Listening = (
    std::net::TcpListener,
    Server<Switch>,
    std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
);

/// Serve on `sockets` (one per listener, each with its listener's
/// server and stop signal) until they stop, then drain: HTTP connections finish their
/// requests while open tunnels, whose drain `main` started, end. Tunnels
/// live on the runtime that accepted them, which runs until they are
/// gone.
pub(crate) async fn serve(sockets: Vec<Listening>, tunnels: Tunnels) -> std::io::Result<()> {
    // Every worker's runtime, the first one's (the main runtime) too.
    let _tick = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(keep_a_timer_due()));
    let mut serving = Vec::with_capacity(sockets.len());
    for (socket, server, signal) in sockets {
        let listener = tokio::net::TcpListener::from_std(socket)?;
        serving.push(async move { server.serve(listener).with_graceful_shutdown(signal).await });
    }
    for result in futures_util::future::join_all(serving).await {
        result?;
    }
    // `main` starts the drain (with its deadline) once the connections
    // accepted before the stop were answered: this only waits for it,
    // keeping the runtime of this worker's tunnels alive.
    tunnels.drained().await;
    Ok(())
}

/// Run [`serve`] on a new thread with a single-threaded runtime.
pub(crate) fn spawn(
    index: usize,
    sockets: Vec<Listening>,
    tunnels: Tunnels,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("wsgate-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, worker = index, "cannot start a worker runtime");
                    return;
                }
            };
            if let Err(e) = runtime.block_on(serve(sockets, tunnels)) {
                tracing::error!(error = %e, worker = index, "worker stopped with an error");
            }
        })
}

/// Keep a timer due within a second on a worker's runtime, for as long as
/// it runs.
///
/// tokio's time driver wakes its own thread (an `eventfd` write, then an
/// extra return of `epoll_wait`) whenever a new timer is due before the
/// wake-up it planned when it last parked, or when it planned none. On a
/// runtime of short connections that is nearly every handshake: its
/// timeouts are the only timers, and the last connection's went with it.
/// With this tick planned, a new timeout (seconds away) is due later and
/// wakes nothing: one wake-up a second instead of one a handshake.
async fn keep_a_timer_due() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_counts_each_accept_loop_until_its_signal_resolves_or_is_dropped() {
        let stop = Stop::new();
        let first = stop.signal();
        let second = stop.signal();
        assert_eq!(stop.accepting(), 2);
        // A loop that never ran (a worker that failed to start).
        drop(second);
        assert_eq!(stop.accepting(), 1);
        stop.cancel();
        // Told, but not seen yet by its loop.
        assert_eq!(stop.accepting(), 1);
        first.await;
        assert_eq!(stop.accepting(), 0);
    }

    #[tokio::test]
    async fn a_storm_of_1500_connects_fits_in_the_accept_queue() {
        // Nothing accepts: every connect that completes waits in the
        // queue. With the old 1,024 the rest would have had their SYNs
        // dropped and never connected.
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if somaxconn < 1500 {
            eprintln!(
                "net.core.somaxconn is {somaxconn}: the kernel caps the queue below the test"
            );
            return;
        }
        let std_listener = listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let _listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let connects = (0..1500).map(|_| tokio::net::TcpStream::connect(addr));
        let connected = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            futures_util::future::join_all(connects),
        )
        .await
        .expect("every connect completed");
        let failed = connected.iter().filter(|c| c.is_err()).count();
        assert_eq!(failed, 0, "{failed} connects failed");
    }
}
