//! Both directions of a tunnel until both are done: the state machine
//! over two [`Pump`]s, with the timers (idle, half-close, keepalive,
//! closing deadlines) and the signals (shutdown, backend down) of a
//! tunnel.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::carrier::Carrier;
use super::closing::{Closing, Why, handshakes_done};
use super::disconnect::{Disconnect, VANISHED_GRACE};
use super::keepalive::Alive;
use super::pump::Pump;
use crate::drain::Drain;
use crate::frame::{GOING_AWAY, POLICY_VIOLATION};
use crate::outcome::{End, Reason, Totals};
use crate::settings::Settings;

/// Relay between `client` (carried on `carrier`) and `backend` until the
/// tunnel ends. The proxy passes its layer's shared `Arc<Settings>`, so an
/// open tunnel does not carry a copy of them.
///
/// An idle tunnel is mostly this future, so it is kept small: the
/// connections and the drain are borrowed from the tunnel's task (owned
/// once, not once there and once here), and what only some tunnels need
/// (keepalive state, an expiry's timer, the watch for a shutdown brought
/// earlier) is boxed when needed.
pub(crate) async fn relay<C, B>(
    client: &mut C,
    carrier: Carrier,
    backend: &mut B,
    settings: impl Into<std::sync::Arc<Settings>>,
    drain: &Drain,
) -> (End, Totals)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let settings = settings.into();
    let start = Instant::now();
    // Up: client to backend; the proxy's frames to the backend are masked.
    let mut up = Pump::new(
        true,
        settings.client_limits,
        settings.client_keepalive.is_some(),
        settings.close_on_disconnect,
    );
    let mut down = Pump::new(
        false,
        settings.backend_limits,
        settings.backend_keepalive.is_some(),
        settings.close_on_disconnect,
    );
    let mut client_alive = Alive::new(settings.client_keepalive, start);
    let mut backend_alive = Alive::new(settings.backend_keepalive, start);
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut timer_armed = false;
    // A shutdown and the backend's going down are watched apart: after
    // one, the other's deadline may still be the sooner.
    let mut shutdown = std::pin::pin!(drain.shutdown());
    let mut shutdown_seen = false;
    let mut backend_gone = std::pin::pin!(drain.backend_closed());
    let mut backend_gone_seen = false;
    // A shutdown's deadline brought earlier (watched once it started).
    let mut hurried = None;
    let mut hurried_seen = false;
    // What admitted the tunnel expires (a token's `exp`).
    let mut expired = drain
        .expires()
        .map(|at| Box::pin(tokio::time::sleep_until(at)));
    let mut expired_seen = false;
    let mut closing: Option<Closing> = None;
    let mut last_activity = start;
    let mut half_closed: Option<(Instant, bool)> = None;
    // Who sent the first Close frame (`true`: the client).
    let mut first_close: Option<bool> = None;

    let end = poll_fn(|cx| {
        loop {
            let mut again = false;
            for (signalled, reason) in [
                (
                    !shutdown_seen && shutdown.as_mut().poll(cx).is_ready(),
                    Reason::Shutdown,
                ),
                (
                    !backend_gone_seen && backend_gone.as_mut().poll(cx).is_ready(),
                    Reason::BackendDown,
                ),
            ] {
                if !signalled {
                    continue;
                }
                let deadline = match reason {
                    Reason::Shutdown => {
                        shutdown_seen = true;
                        hurried = Some(Box::pin(drain.hurried()));
                        drain.deadline()
                    }
                    _ => {
                        backend_gone_seen = true;
                        drain.backend_deadline()
                    }
                };
                if let Some(closing) = &mut closing {
                    // A close for another reason is under way: this
                    // deadline still bounds it.
                    closing.deadline = closing.deadline.min(deadline);
                } else {
                    // A closing handshake already under way is left to
                    // finish; otherwise both sides get Close 1001.
                    let under_way = up.frames.closes > 0 || down.frames.closes > 0;
                    if !under_way {
                        up.close_with(GOING_AWAY);
                        down.close_with(GOING_AWAY);
                    }
                    closing = Some(Closing {
                        why: Why::Proxy(reason),
                        deadline,
                        wait_client: true,
                        wait_backend: true,
                    });
                }
            }
            if !expired_seen
                && expired
                    .as_mut()
                    .is_some_and(|at| at.as_mut().poll(cx).is_ready())
            {
                expired_seen = true;
                // The client is told why (1008), the backend that its
                // client is going (1001); a closing handshake already
                // under way is left to finish.
                let under_way = up.frames.closes > 0 || down.frames.closes > 0;
                if closing.is_none() && !under_way {
                    down.close_with_reason(POLICY_VIOLATION, b"credentials expired");
                    up.close_with(GOING_AWAY);
                    closing = Some(Closing {
                        why: Why::Proxy(Reason::Expired),
                        deadline: Instant::now() + settings.half_close,
                        wait_client: true,
                        wait_backend: true,
                    });
                }
            }
            if !hurried_seen
                && hurried
                    .as_mut()
                    .is_some_and(|hurry: &mut Pin<Box<_>>| hurry.as_mut().poll(cx).is_ready())
            {
                hurried_seen = true;
                if let Some(closing) = &mut closing {
                    closing.deadline = closing.deadline.min(drain.deadline());
                }
            }
            let before = up.bytes + down.bytes;
            let mut up_done = false;
            let mut down_done = false;
            // Up first (client to backend), then down.
            for from_client in [true, false] {
                let polled = if from_client {
                    up.poll(
                        cx,
                        Pin::new(&mut *client),
                        Pin::new(&mut *backend),
                        down.done,
                    )
                } else {
                    down.poll(cx, Pin::new(&mut *backend), Pin::new(&mut *client), up.done)
                };
                let closes = if from_client {
                    up.frames.closes
                } else {
                    down.frames.closes
                };
                if first_close.is_none() && closes > 0 {
                    first_close = Some(from_client);
                }
                match polled {
                    Poll::Ready(Ok(())) if from_client => up_done = true,
                    Poll::Ready(Ok(())) => down_done = true,
                    Poll::Ready(Err(failure)) => {
                        let disconnect = Disconnect {
                            enabled: settings.close_on_disconnect,
                            closed_first: first_close
                                .or(half_closed.map(|(_, client_first)| client_first)),
                            grace: Instant::now() + settings.half_close.min(VANISHED_GRACE),
                        };
                        if let Err(end) = disconnect.handle(
                            failure,
                            from_client,
                            &mut up,
                            &mut down,
                            &mut closing,
                        ) {
                            return Poll::Ready(end);
                        }
                        again = true;
                    }
                    Poll::Pending => {}
                }
            }
            // The closing handshake is over both ways and the backend
            // closed its connection, as a server does first (RFC 6455
            // §7.1.1); the client's was shut down after it (a FIN, or TLS's
            // close_notify, with everything before it flushed). The client
            // may send nothing more: its connection is closed now, as the
            // server's, without waiting for its FIN. Not an HTTP/2 stream:
            // see `Carrier::Stream`.
            if carrier == Carrier::Connection
                && down_done
                && !up_done
                && closing.is_none()
                && up.close_passed()
                && down.close_passed()
            {
                return Poll::Ready(End::Closed {
                    client_first: first_close.unwrap_or(true),
                });
            }
            if up_done && down_done {
                if let Some(closing) = closing.take() {
                    let answered = handshakes_done(&closing, &up, &down);
                    return Poll::Ready(closing.end(answered));
                }
                let client_first = first_close
                    .unwrap_or_else(|| half_closed.is_none_or(|(_, client_first)| client_first));
                return Poll::Ready(End::Closed { client_first });
            }
            let now = Instant::now();
            // A broken limit: the sender gets 1009, the other side 1001
            // (the breaking direction already sent it, in place of the
            // frame).
            for (client, exceeded) in [(true, up.exceeded.take()), (false, down.exceeded.take())] {
                let Some(exceeded) = exceeded else { continue };
                if closing.is_none() {
                    let toward_sender = if client { &mut down } else { &mut up };
                    toward_sender.close_with(exceeded.close_code());
                    closing = Some(Closing {
                        why: Why::Proxy(Reason::Limit { client, exceeded }),
                        deadline: now + settings.half_close,
                        wait_client: true,
                        wait_backend: true,
                    });
                    again = true;
                }
            }
            if let Some(done) = &closing
                && handshakes_done(done, &up, &down)
                && up.flushed()
                && down.flushed()
                && let Some(closing) = closing.take()
            {
                return Poll::Ready(closing.end(true));
            }
            if up.bytes + down.bytes != before {
                last_activity = now;
            }
            if half_closed.is_none() && (up_done || down_done) {
                half_closed = Some((now + settings.half_close, up_done));
            }
            // Keepalive: ping a silent peer, give up on one that stays
            // silent after the ping.
            for client in [true, false] {
                let alive = if client {
                    &mut client_alive
                } else {
                    &mut backend_alive
                };
                let Some(alive) = alive.as_mut() else {
                    continue;
                };
                // The peer sends on one direction and is written to on the
                // other.
                let (from_peer, to_peer) = if client {
                    (&mut up, &mut down)
                } else {
                    (&mut down, &mut up)
                };
                match alive.check(from_peer.received, to_peer.pings, now) {
                    Ok(true) if closing.is_none() => {
                        if to_peer.ping() {
                            again = true;
                        }
                    }
                    Ok(_) => {}
                    Err(()) if closing.is_none() => {
                        // The survivor is written to by the peer's
                        // direction; the dead peer gets nothing more.
                        from_peer.close_with(GOING_AWAY);
                        to_peer.mute();
                        closing = Some(Closing {
                            why: Why::Proxy(Reason::Keepalive { client }),
                            deadline: now + settings.half_close,
                            wait_client: !client,
                            wait_backend: client,
                        });
                        again = true;
                    }
                    Err(()) => {}
                }
            }
            if again {
                continue;
            }
            // The timer is armed lazily: activity only moves the
            // deadlines, and the timer is re-armed when it fires early.
            let deadline = [
                settings.idle.map(|idle| last_activity + idle),
                half_closed.map(|(at, _)| at),
                closing.as_ref().map(|c| c.deadline),
                client_alive
                    .as_ref()
                    .filter(|_| closing.is_none())
                    .and_then(|alive| alive.next_deadline()),
                backend_alive
                    .as_ref()
                    .filter(|_| closing.is_none())
                    .and_then(|alive| alive.next_deadline()),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(deadline) = deadline else {
                return Poll::Pending;
            };
            if !timer_armed || deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
                timer_armed = true;
            }
            ready!(timer.as_mut().poll(cx));
            timer_armed = false;
            let now = Instant::now();
            if closing.as_ref().is_some_and(|c| now >= c.deadline)
                && let Some(closing) = closing.take()
            {
                return Poll::Ready(closing.end(false));
            }
            if let Some((at, client_first)) = half_closed
                && now >= at
            {
                let client_first = first_close.unwrap_or(client_first);
                // A closing handshake that finished both ways (and was
                // sent on) is a clean close, even if a side did not end its
                // connection in time (an HTTP/2 client that never ends its
                // stream, a backend that never sends its FIN).
                if closing.is_none()
                    && up.close_passed()
                    && down.close_passed()
                    && up.flushed()
                    && down.flushed()
                {
                    return Poll::Ready(End::Closed { client_first });
                }
                return Poll::Ready(End::HalfCloseTimeout { client_first });
            }
            if settings
                .idle
                .is_some_and(|idle| now >= last_activity + idle)
            {
                return Poll::Ready(End::Idle);
            }
            // A keepalive deadline: looked at on the next turn.
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
