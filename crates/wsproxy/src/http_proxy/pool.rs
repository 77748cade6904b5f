//! The connections an [`HttpProxy`](super::HttpProxy) keeps to its app
//! server: on each thread, bare hyper HTTP/1.1 client connections
//! (`hyper::client::conn::http1`), each driven by a task on the runtime
//! that opened it and reused while the app keeps it open.
//!
//! A pool per thread, not per process: on a server with a runtime per
//! thread (wsgate's workers) a connection shared across threads would have
//! its task woken from the other thread twice a request. And a pool of
//! plain senders, not hyper-util's pooling client: no map keyed by a hash
//! of the URL, no lock shared across threads (each thread's list has one,
//! uncontended, for its sweeper), no connect future made for every
//! checkout (that client cost about 9,000 instructions a request, a sixth
//! of all).
//!
//! A connection the app closed while it was idle is found out when a
//! request cannot be sent on it; hyper gives that request back unsent, and
//! it goes on the next connection (as hyper-util's client retries such a
//! request, and as nginx's `proxy_next_upstream error` does).

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::AppBody;

/// Idle connections kept per thread for one proxy (nginx's upstream
/// `keepalive` is per worker too); more are closed when they go idle.
const MAX_IDLE: usize = 64;

/// Where the app server is.
#[derive(Clone, Copy, Debug)]
pub(super) struct App<'a> {
    pub(super) host: &'a str,
    pub(super) port: u16,
    pub(super) connect_timeout: Duration,
    /// How long a connection may rest in the pool before it is closed.
    pub(super) idle_timeout: Duration,
}

/// Why no response came.
#[derive(Debug)]
pub(super) enum Failed {
    /// No connection could be opened.
    Connect(std::io::Error),
    /// Not within the connect timeout.
    ConnectTimeout(Duration),
    /// The request or its response failed on the connection.
    Request(hyper::Error),
}

impl Failed {
    pub(super) fn is_connect(&self) -> bool {
        matches!(self, Failed::Connect(_) | Failed::ConnectTimeout(_))
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Connect(e) => write!(f, "connect: {e}"),
            Failed::ConnectTimeout(after) => write!(f, "connect: timed out after {after:?}"),
            Failed::Request(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failed::Connect(e) => e.source(),
            Failed::ConnectTimeout(_) => None,
            Failed::Request(e) => std::error::Error::source(e),
        }
    }
}

/// A pooled connection, and since when it is at rest (a response body
/// still on its way keeps it busy, not at rest).
struct Idle {
    sender: SendRequest<AppBody>,
    since: Instant,
}

impl Idle {
    /// Whether to keep it at `now`: not if the app closed it or it rested
    /// `idle_timeout`.
    fn keep(&mut self, now: Instant, idle_timeout: Duration) -> bool {
        if self.sender.is_closed() {
            return false;
        }
        if !self.sender.is_ready() {
            self.since = now;
            return true;
        }
        now.duration_since(self.since) < idle_timeout
    }
}

/// The sweeper looks at least this far apart (a tiny idle timeout does
/// not make it spin)...
const SWEEP_MIN: Duration = Duration::from_millis(10);
/// ...and at most (a dropped proxy's connections go within this).
const SWEEP_MAX: Duration = Duration::from_secs(30);

type Owner = Weak<dyn Any + Send + Sync>;

/// One thread's idle connections for one proxy. Behind a lock only for
/// its sweeper, which may run on another thread of a multi-threaded
/// runtime; otherwise never contended.
type Idles = Mutex<Vec<Idle>>;

std::thread_local! {
    /// Each thread's idle connections for each live proxy (its owner).
    /// Entries of proxies dropped since go at the next look, and their
    /// sweeper closes what they held.
    static POOLS: std::cell::RefCell<Vec<(Owner, Arc<Idles>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` on this thread's idle connections of `owner`.
fn with_idle<O: Send + Sync + 'static, R>(
    owner: &Arc<O>,
    idle_timeout: Duration,
    f: impl FnOnce(&mut Vec<Idle>) -> R,
) -> R {
    POOLS.with_borrow_mut(|pools| {
        let key = Arc::as_ptr(owner).cast::<()>();
        let at = match pools
            .iter()
            .position(|(o, _)| std::ptr::eq(o.as_ptr().cast::<()>(), key))
        {
            Some(at) => at,
            None => {
                pools.retain(|(o, _)| o.strong_count() > 0);
                let idles = Arc::new(Mutex::new(Vec::new()));
                let weak: Weak<O> = Arc::downgrade(owner);
                let weak: Owner = weak;
                tokio::spawn(sweep(weak.clone(), Arc::downgrade(&idles), idle_timeout));
                pools.push((weak, idles));
                pools.len() - 1
            }
        };
        f(&mut pools[at].1.lock().unwrap_or_else(PoisonError::into_inner))
    })
}

/// Close the connections of `idles` that rested `idle_timeout`, looking
/// every half of it, even when no request comes (nginx's upstream
/// `keepalive_timeout`); all of them once the proxy is gone.
async fn sweep(owner: Owner, idles: Weak<Idles>, idle_timeout: Duration) {
    loop {
        tokio::time::sleep((idle_timeout / 2).clamp(SWEEP_MIN, SWEEP_MAX)).await;
        let Some(idles) = idles.upgrade() else {
            return;
        };
        let mut idle = idles.lock().unwrap_or_else(PoisonError::into_inner);
        if owner.strong_count() == 0 {
            idle.clear();
            return;
        }
        let now = Instant::now();
        idle.retain_mut(|c| c.keep(now, idle_timeout));
    }
}

/// The most recently used connection that can take a request now and
/// has not rested `idle_timeout`. Only looked at, not swept: one the app
/// closed, or one with its last response body still on its way, is not
/// ready; the sweeper closes what rested too long.
fn checkout<O: Send + Sync + 'static>(
    owner: &Arc<O>,
    app: App<'_>,
) -> Option<SendRequest<AppBody>> {
    if app.idle_timeout.is_zero() {
        return None;
    }
    with_idle(owner, app.idle_timeout, |idle| {
        let now = Instant::now();
        let at = idle
            .iter()
            .rposition(|c| c.sender.is_ready() && now.duration_since(c.since) < app.idle_timeout)?;
        Some(idle.remove(at).sender)
    })
}

/// Back to the pool: ready for the next request once the response's body
/// has been read (until then a checkout passes it by).
fn put<O: Send + Sync + 'static>(owner: &Arc<O>, app: App<'_>, sender: SendRequest<AppBody>) {
    // No keep-alive asked for: the connection closes once its answer is
    // read.
    if sender.is_closed() || app.idle_timeout.is_zero() {
        return;
    }
    with_idle(owner, app.idle_timeout, |idle| {
        if idle.len() >= MAX_IDLE {
            // Closed ones not swept yet go; else the one at rest the
            // longest makes room; with all busy, this one is not kept.
            idle.retain(|c| !c.sender.is_closed());
        }
        if idle.len() >= MAX_IDLE {
            match idle.iter().position(|c| c.sender.is_ready()) {
                Some(at) => drop(idle.remove(at)),
                None => return,
            }
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    });
}

/// Open a connection to the app; its task runs on this runtime.
async fn connect(app: App<'_>) -> Result<SendRequest<AppBody>, Failed> {
    let tcp = tokio::time::timeout(
        app.connect_timeout,
        tokio::net::TcpStream::connect((app.host, app.port)),
    )
    .await
    .map_err(|_| Failed::ConnectTimeout(app.connect_timeout))?
    .map_err(Failed::Connect)?;
    // As the WebSocket side: a small request or answer is not held back.
    let _ = tcp.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(Failed::Request)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection to the app server ended");
        }
    });
    Ok(sender)
}

/// Send `request` to the app on a pooled connection, or a new one, and
/// wait for the response's head. The connection goes back to the pool.
pub(super) async fn send<O: Send + Sync + 'static>(
    owner: &Arc<O>,
    app: App<'_>,
    mut request: Request<AppBody>,
) -> Result<Response<Incoming>, Failed> {
    while let Some(mut sender) = checkout(owner, app) {
        match sender.try_send_request(request).await {
            Ok(response) => {
                put(owner, app, sender);
                return Ok(response);
            }
            Err(mut e) => match e.take_message() {
                // Not sent (the app closed the connection while it was
                // idle): on the next one.
                Some(unsent) => request = unsent,
                None => return Err(Failed::Request(e.into_error())),
            },
        }
    }
    let mut sender = connect(app).await?;
    match sender.try_send_request(request).await {
        Ok(response) => {
            put(owner, app, sender);
            Ok(response)
        }
        Err(e) => Err(Failed::Request(e.into_error())),
    }
}
