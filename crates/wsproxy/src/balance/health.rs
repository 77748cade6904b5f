//! Whether a backend may take new tunnels: passive checks (failed
//! handshakes) and active probes.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::member::Member;
use crate::Upstream;
// Sideways, to the connecting phase: a probe is a connection and an
// upgrade exchange like a handshake's, through the set's own dialer.
use crate::connect::{self, Answer, BackendStream, Dialer};

/// Passive health checking, from the handshakes themselves (nginx's
/// `max_fails` and `fail_timeout`).
///
/// A backend that fails `max_fails` handshakes within `fail_timeout` is
/// skipped for the next `fail_timeout`, then tried again: one more failure
/// skips it again, a success brings it back. Failures further apart than
/// `fail_timeout` do not add up; successes in between do not clear them.
/// When every backend is skipped this way, they are all tried anyway
/// (nginx resets its counts then) rather than refusing the handshake. A failure is a refused or timed-out connect, a
/// failed TLS handshake with a `wss://` backend, a
/// handshake that times out or breaks, a `5xx` answer, or a `101` that is
/// not a valid WebSocket upgrade. An answer the backend chose — `401`,
/// `403`, `404` and other non-`5xx` refusals — is not a failure, and a
/// valid `101` clears the count.
///
/// As in nginx, a set with a single backend ignores it: that backend is
/// never skipped (there is nothing else to try).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use wsproxy::balance::PassiveHealth;
///
/// // Three failures within 30 s skip the backend for 30 s.
/// let passive = PassiveHealth::new().max_fails(3).fail_timeout(Duration::from_secs(30));
/// # drop(passive);
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct PassiveHealth {
    pub(crate) max_fails: u32,
    pub(crate) fail_timeout: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl PassiveHealth {
    /// nginx's defaults: one failure skips the backend for 10 s.
    pub fn new() -> Self {
        Self {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        }
    }

    /// Never skip a backend for its failures.
    pub fn disabled() -> Self {
        Self::new().max_fails(0)
    }

    /// Failures within [`fail_timeout`](Self::fail_timeout) that mark a
    /// backend down (default: 1; 0 disables passive checks).
    pub fn max_fails(mut self, max: u32) -> Self {
        self.max_fails = max;
        self
    }

    /// The window failures are counted in, and how long a backend is then
    /// skipped (default: 10 s).
    pub fn fail_timeout(mut self, timeout: Duration) -> Self {
        self.fail_timeout = timeout;
        self
    }
}

/// Active health checking: a probe per backend every `interval` (nginx
/// open source has none; HAProxy's `check` with `inter`, `rise`, `fall`).
///
/// A backend starts up. `fall` failed probes in a row mark it down: it
/// gets no new tunnels (its open ones are left alone unless
/// [`close_tunnels_when_down`](super::Backends::close_tunnels_when_down)
/// is set). `rise` good probes in a row bring it back. Each transition is
/// logged (`WARN` down, with the probe's error; `INFO` up), counted in
/// [`BackendStatus::transitions`](super::BackendStatus::transitions) and,
/// with feature `metrics`, in `wsproxy_backend_transitions_total`.
///
/// Probes run on the Tokio runtime from when the set is first used inside
/// one (or built inside one), and stop when the backend is removed or the
/// last handle to the set is dropped.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use wsproxy::balance::{ActiveHealth, Probe};
///
/// let health = ActiveHealth::new(Probe::http("/healthz").expect_status(200))
///     .interval(Duration::from_secs(2))
///     .timeout(Duration::from_secs(1))
///     .rise(2)
///     .fall(3);
/// # drop(health);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct ActiveHealth {
    pub(crate) probe: Probe,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) rise: u32,
    pub(crate) fall: u32,
}

impl ActiveHealth {
    /// Run `probe` every 5 s with a 2 s timeout; down after 3 failures,
    /// up after 2 successes.
    pub fn new(probe: Probe) -> Self {
        Self {
            probe,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
        }
    }

    /// Time between the starts of two probes (default: 5 s; at least
    /// 10 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Time a probe may take, connect included (default: 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Good probes in a row that bring a down backend back (default: 2;
    /// 0 is taken as 1).
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise.max(1);
        self
    }

    /// Failed probes in a row that mark an up backend down (default: 3;
    /// 0 is taken as 1).
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall.max(1);
        self
    }
}

/// What an active probe does.
#[derive(Clone, Debug)]
pub struct Probe {
    kind: ProbeKind,
}

#[derive(Clone, Debug)]
enum ProbeKind {
    Tcp,
    Http {
        path: String,
        expect: Option<StatusCode>,
    },
    WebSocket {
        path: String,
    },
}

impl Probe {
    /// A TCP connect to the backend's address (and the TLS handshake, for
    /// a `wss://` backend).
    pub fn tcp() -> Self {
        Self {
            kind: ProbeKind::Tcp,
        }
    }

    /// An HTTP/1.1 `GET` of `path` on the backend; any `2xx` or `3xx`
    /// passes unless [`expect_status`](Self::expect_status) says otherwise.
    pub fn http(path: impl Into<String>) -> Self {
        Self {
            kind: ProbeKind::Http {
                path: path.into(),
                expect: None,
            },
        }
    }

    /// A full WebSocket opening handshake on `path` (a valid `101`
    /// passes), closed right after with Close `1001`.
    pub fn websocket(path: impl Into<String>) -> Self {
        Self {
            kind: ProbeKind::WebSocket { path: path.into() },
        }
    }

    /// For [`http`](Self::http) probes: pass only on this status.
    pub fn expect_status(mut self, status: u16) -> Self {
        if let ProbeKind::Http { expect, .. } = &mut self.kind {
            *expect = StatusCode::from_u16(status).ok();
        }
        self
    }

    /// Probe `upstream` once (over TLS with `tls` for a `wss://` one); the
    /// error says why it failed.
    pub(crate) async fn run(
        &self,
        upstream: &Upstream,
        dialer: &Dialer,
        timeout: Duration,
    ) -> Result<(), String> {
        let attempt = async {
            let stream = connect::connect(upstream, dialer, timeout)
                .await
                .map_err(|e| e.to_string())?;
            match &self.kind {
                ProbeKind::Tcp => Ok(()),
                ProbeKind::Http { path, expect } => {
                    let status = http_get(stream, upstream, path).await?;
                    let good = match expect {
                        Some(expected) => status == *expected,
                        None => status.is_success() || status.is_redirection(),
                    };
                    if good {
                        Ok(())
                    } else {
                        Err(format!("GET {path} answered {status}"))
                    }
                }
                ProbeKind::WebSocket { path } => {
                    let mut request = Request::get(path.as_str())
                        .body(Empty::<Bytes>::new())
                        .map_err(|e| e.to_string())?;
                    let key = connect::complete_upgrade_request(&mut request, upstream);
                    let tunnels = crate::Tunnels::new();
                    match connect::handshake(stream, request, &key, timeout, timeout, &tunnels)
                        .await
                    {
                        Ok(Answer::Upgraded(_, mut io)) => {
                            let _ = io
                                .write_all(&crate::frame::close_frame(
                                    crate::frame::GOING_AWAY,
                                    true,
                                ))
                                .await;
                            let _ = io.shutdown().await;
                            Ok(())
                        }
                        Ok(Answer::Refused(response)) => Err(format!(
                            "WebSocket handshake on {path} answered {}",
                            response.status()
                        )),
                        Err(failure) => Err(failure.to_string()),
                    }
                }
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }
}

/// `GET path` over `stream`; the answer's status.
async fn http_get(
    stream: BackendStream,
    upstream: &Upstream,
    path: &str,
) -> Result<StatusCode, String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let request = Request::get(path)
        .header(http::header::HOST, upstream.host_header())
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let mut conn = std::pin::pin!(conn);
    let mut send = std::pin::pin!(sender.send_request(request));
    let mut conn_done = false;
    // Drive the connection here until the answer's head is in.
    poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = send.as_mut().poll(cx) {
            return std::task::Poll::Ready(r.map(|r| r.status()).map_err(|e| e.to_string()));
        }
        if !conn_done && Pin::new(&mut conn).poll(cx).is_ready() {
            conn_done = true;
            return match send.as_mut().poll(cx) {
                std::task::Poll::Ready(r) => {
                    std::task::Poll::Ready(r.map(|r| r.status()).map_err(|e| e.to_string()))
                }
                std::task::Poll::Pending => {
                    std::task::Poll::Ready(Err("connection closed without an answer".into()))
                }
            };
        }
        std::task::Poll::Pending
    })
    .await
}

/// Probe `member` until it is removed or `stopped` (the set is gone).
pub(crate) async fn probe_loop(
    member: Arc<Member>,
    health: ActiveHealth,
    dialer: Dialer,
    close_when_down: Option<Duration>,
    stopped: CancellationToken,
) {
    let upstream = member.backend.upstream.clone();
    let (mut good, mut bad) = (0u32, 0u32);
    // The first tick is at once; a slow probe delays the next ones
    // rather than bunching them.
    let mut ticks = tokio::time::interval(health.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stopped.cancelled() => return,
            () = member.removed.cancelled() => return,
        }
        let result = tokio::select! {
            result = health.probe.run(&upstream, &dialer, health.timeout) => result,
            () = stopped.cancelled() => return,
            () = member.removed.cancelled() => return,
        };
        match result {
            Ok(()) => {
                bad = 0;
                good = good.saturating_add(1);
                if !member.probe_up() && good >= health.rise {
                    member.set_probe_up(true);
                    tracing::info!(backend = %upstream, good, "backend up: active health check passed");
                }
            }
            Err(error) => {
                good = 0;
                bad = bad.saturating_add(1);
                if member.probe_up() && bad >= health.fall {
                    member.set_probe_up(false);
                    tracing::warn!(backend = %upstream, failed = bad, %error, "backend down: active health check failed");
                    if let Some(grace) = close_when_down {
                        member.close_tunnels(grace);
                    }
                } else {
                    tracing::debug!(backend = %upstream, %error, "health probe failed");
                }
            }
        }
    }
}
