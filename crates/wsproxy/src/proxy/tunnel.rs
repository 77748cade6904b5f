//! The task of one tunnel: it waits for the client's side of the upgrade,
//! relays until the tunnel ends, then counts and logs how it ended. It
//! owns what the tunnel holds: its place among the open tunnels, the
//! admission permits, its backend's load unit.

use std::time::Instant;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Span;

use super::config::Config;
use crate::admit::Holds;
use crate::balance::pick::Picked;
use crate::outcome::{End, Reason, Totals};
use crate::relay::{self, Carrier};
use crate::tunnels::TunnelGuard;

/// What a tunnel starts with.
pub(crate) struct Tunnel<'a> {
    pub(crate) config: &'a Config,
    /// Counts it open until it ends.
    pub(crate) guard: TunnelGuard,
    /// Admission permits held for its life.
    pub(crate) holds: Option<Holds>,
    /// Its backend: the load unit it holds, and what closes it when the
    /// backend goes down.
    pub(crate) picked: Picked,
    /// The client's side of the upgrade, once the response is sent.
    pub(crate) client: OnUpgrade,
    /// What that side travels on.
    pub(crate) carrier: Carrier,
    /// The backend's upgraded connection.
    pub(crate) backend: crate::connect::Upgraded,
    /// When the handshake started.
    pub(crate) started: Instant,
    /// When what admitted it expires, if it does.
    pub(crate) expires: Option<crate::admit::Expires>,
}

/// Spawn the task of `tunnel`, in the current span.
pub(crate) fn spawn(tunnel: Tunnel<'_>) {
    let Tunnel {
        config,
        guard,
        holds,
        picked,
        client: on_client_upgrade,
        carrier,
        mut backend,
        started,
        expires,
    } = tunnel;
    // The tunnel ends on a shutdown, or when its backend goes down (if
    // the set closes tunnels then); it holds its backend's load unit.
    let (close, load) = picked.into_parts();
    let drain = config
        .tunnels
        .drain()
        .with_backend(close)
        .with_expiry(expires.and_then(crate::admit::Expires::instant));
    let tunnels = config.tunnels.clone();
    let settings = config.settings.clone();
    let open = crate::metrics::tunnel_opened(&config.route, started.elapsed());
    let handshake_timeout = config.handshake_timeout;
    let half_close = config.settings.half_close;
    let span = Span::current();
    // Boxed: tokio moves a task's future into its cell and writes its
    // stage over whole (the output, then "consumed"); a 1.6 KiB future
    // was copied about six times a tunnel, a box pointer costs one
    // allocation (callgrind: 5,200 fewer instructions a handshake with
    // the connection's task boxed too).
    tokio::spawn(Box::pin(async move {
        let mut client = None;
        // A client that goes away before its side of the upgrade
        // completes still ends the tunnel that was counted open.
        let (end, totals) = match tokio::time::timeout(handshake_timeout, on_client_upgrade).await {
            Ok(Ok(upgraded)) => {
                let client = client.insert(TokioIo::new(upgraded));
                relay::relay(client, carrier, &mut backend, settings, &drain).await
            }
            Ok(Err(e)) => (
                End::ClientError(std::io::Error::other(format!("upgrade failed: {e}"))),
                Totals::default(),
            ),
            Err(_) => (
                End::ClientError(std::io::ErrorKind::TimedOut.into()),
                Totals::default(),
            ),
        };
        // In the handshake's span (entered here only, not on every poll
        // of the relay): what ends with the tunnel logs with its fields,
        // and span-scoped log filters match it.
        span.in_scope(|| {
            tunnels.record(&end, &totals);
            open.closed(&end, &totals);
            if let End::Proxy {
                reason: Reason::Limit { exceeded, .. },
                ..
            } = &end
            {
                tracing::warn!(
                    end = %end,
                    close_code = exceeded.close_code(),
                    "message limit broken, WebSocket closed"
                );
            }
            let duration_ms = started.elapsed().as_millis() as u64;
            let (up, down) = (&totals.up, &totals.down);
            tracing::info!(
                duration_ms,
                bytes_up = up.bytes,
                bytes_down = down.bytes,
                frames_up = up.frames,
                frames_down = down.frames,
                messages_up = up.messages,
                messages_down = down.messages,
                client_close = %CloseCode(up.close_code),
                backend_close = %CloseCode(down.close_code),
                end = %end,
                "tunnel closed"
            );
            // The backend, its load unit and the admission permits go
            // now; the tunnel counts open (and a shutdown waits for it)
            // until the client's side is let go too.
            drop((holds, load, backend));
        });
        if let Some(client) = &mut client {
            relay::let_go(client, carrier, &end, half_close, &drain).await;
        }
        drop(guard);
    }));
}

/// A close code in logs: the number, or `none`.
struct CloseCode(Option<u16>);

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(code) => code.fmt(f),
            None => f.write_str("none"),
        }
    }
}
