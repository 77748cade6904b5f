//! Counters through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): whatever recorder the app installs (Prometheus,
//! StatsD, ...) receives them. Without the feature these are no-ops.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `wsproxy_tunnels_opened_total` | counter | `route` | tunnels opened (`101` sent) |
//! | `wsproxy_tunnels_open` | gauge | `route` | tunnels open now |
//! | `wsproxy_handshake_seconds` | histogram | `route` | from a client's handshake arriving to its `101` (admission, connect, the backend's answer) |
//! | `wsproxy_tunnel_duration_seconds` | histogram | `route` | how long tunnels stayed open, recorded when they end |
//! | `wsproxy_tunnels_closed_total` | counter | `route`, `reason` | tunnels ended, by reason: `client_close`, `backend_close`, `idle`, `keepalive`, `limit`, `shutdown`, `backend_down`, `error` |
//! | `wsproxy_handshakes_refused_total` | counter | `status` | handshakes answered with anything but `101`, by the proxy, an admission check, or the backend (relayed) |
//! | `wsproxy_bytes_total` | counter | `route`, `direction` (`up`: client to backend, `down`) | bytes forwarded, added when a tunnel ends |
//! | `wsproxy_messages_total` | counter | `route`, `direction` | data messages, added when a tunnel ends |
//! | `wsproxy_backend_transitions_total` | counter | `backend`, `to` (`up`, `down`) | a backend marked down or back up by a health check |
//! | `wsproxy_backend_retries_total` | counter | `backend` | handshakes moved on to another backend after this one failed |
//!
//! With the [`serve::Server`](crate::serve::Server) (feature `serve`), also:
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `wsproxy_connections_open` | gauge | | client connections the server holds (an HTTP/1.1 WebSocket leaves at its upgrade) |
//! | `wsproxy_connections_timed_out_total` | counter | `state` (`tls_handshake`, `detect`, `request_head`, `keep_alive`, `http2_idle`) | connections closed by a [timeout](crate::serve::Timeouts) |
//! | `wsproxy_connections_shed_total` | counter | `reason` (`max_connections`, `max_connections_per_ip`, `descriptors`) | idle connections closed to make room |
//! | `wsproxy_connections_refused_total` | counter | `reason` (`max_connections_per_ip`, `descriptors`) | new connections closed at once (or answered `503` from the reserve descriptor) |
//! | `wsproxy_accept_errors_total` | counter | `kind` (`descriptors`, `memory`, `other`) | `accept` failures |
//! | `wsproxy_http2_goaway_total` | counter | `reason` (`resets`) | HTTP/2 connections sent `GOAWAY` for resetting too many handshakes |

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

/// Give every metric above its help text and unit, for recorders that
/// show them (Prometheus's `# HELP` lines; `promtool check metrics` wants
/// one for each). Call it once after installing the recorder; without the
/// `metrics` feature it does nothing.
///
/// ```
/// // With a recorder installed (e.g. metrics-exporter-prometheus):
/// wsproxy::metrics::describe();
/// ```
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!("wsproxy_tunnels_opened_total", "Tunnels opened (101 sent)");
        describe_gauge!("wsproxy_tunnels_open", "Tunnels open now");
        describe_histogram!(
            "wsproxy_handshake_seconds",
            Unit::Seconds,
            "From a client's handshake arriving to its 101"
        );
        describe_histogram!(
            "wsproxy_tunnel_duration_seconds",
            Unit::Seconds,
            "How long tunnels stayed open, recorded when they end"
        );
        describe_counter!("wsproxy_tunnels_closed_total", "Tunnels ended, by reason");
        describe_counter!(
            "wsproxy_handshakes_refused_total",
            "Handshakes answered with anything but 101, by status"
        );
        describe_counter!(
            "wsproxy_bytes_total",
            Unit::Bytes,
            "Bytes forwarded, by direction (up: client to backend), added when a tunnel ends"
        );
        describe_counter!(
            "wsproxy_messages_total",
            "Data messages forwarded, by direction, added when a tunnel ends"
        );
        describe_counter!(
            "wsproxy_backend_transitions_total",
            "Backends marked down or back up by a health check"
        );
        describe_counter!(
            "wsproxy_backend_retries_total",
            "Handshakes moved on to another backend after this one failed"
        );
        describe_gauge!(
            "wsproxy_connections_open",
            "Client connections the server holds (an HTTP/1.1 WebSocket leaves at its upgrade)"
        );
        describe_counter!(
            "wsproxy_connections_timed_out_total",
            "Client connections closed by a timeout, by the state they were in"
        );
        describe_counter!(
            "wsproxy_connections_shed_total",
            "Idle client connections closed to make room, by reason"
        );
        describe_counter!(
            "wsproxy_connections_refused_total",
            "New client connections closed at once, by reason"
        );
        describe_counter!("wsproxy_accept_errors_total", "accept failures, by kind");
        describe_counter!(
            "wsproxy_http2_goaway_total",
            "HTTP/2 connections sent GOAWAY, by reason"
        );
    }
}

use http::StatusCode;

use crate::outcome::{End, Totals};
use crate::{Route, Upstream};

/// A tunnel opened on `route`, its handshake having taken `handshake`:
/// counts it, and keeps it in the open gauge until the returned guard
/// drops (in the tunnel task, so a task that ends any way at all takes it
/// out).
pub(crate) fn tunnel_opened(route: &Route, handshake: std::time::Duration) -> OpenTunnel {
    #[cfg(feature = "metrics")]
    {
        let route = route.label();
        metrics::counter!("wsproxy_tunnels_opened_total", "route" => route.clone()).increment(1);
        metrics::gauge!("wsproxy_tunnels_open", "route" => route.clone()).increment(1.0);
        metrics::histogram!("wsproxy_handshake_seconds", "route" => route.clone())
            .record(handshake.as_secs_f64());
        OpenTunnel {
            route,
            opened: std::time::Instant::now(),
        }
    }
    #[cfg(not(feature = "metrics"))]
    OpenTunnel {}
}

/// One tunnel in the `wsproxy_tunnels_open` gauge.
#[derive(Debug)]
pub(crate) struct OpenTunnel {
    #[cfg(feature = "metrics")]
    route: std::sync::Arc<str>,
    #[cfg(feature = "metrics")]
    opened: std::time::Instant,
}

impl OpenTunnel {
    /// The tunnel ended: count why, and what went through.
    pub(crate) fn closed(self, end: &End, totals: &Totals) {
        #[cfg(feature = "metrics")]
        {
            let route = &self.route;
            metrics::histogram!("wsproxy_tunnel_duration_seconds", "route" => route.clone())
                .record(self.opened.elapsed().as_secs_f64());
            metrics::counter!(
                "wsproxy_tunnels_closed_total",
                "route" => route.clone(),
                "reason" => end.kind().as_str()
            )
            .increment(1);
            for (direction, totals) in [("up", &totals.up), ("down", &totals.down)] {
                metrics::counter!("wsproxy_bytes_total", "route" => route.clone(), "direction" => direction)
                    .increment(totals.bytes);
                metrics::counter!("wsproxy_messages_total", "route" => route.clone(), "direction" => direction)
                    .increment(totals.messages);
            }
        }
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("wsproxy_tunnels_open", "route" => self.route.clone()).decrement(1.0);
    }
}

/// A handshake answered with `status` instead of `101`.
pub(crate) fn refused(status: StatusCode) {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_handshakes_refused_total", "status" => status.as_str().to_owned())
        .increment(1);
}

/// `backend` went down or came back up.
pub(crate) fn backend_transition(backend: &Upstream, up: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "wsproxy_backend_transitions_total",
        "backend" => backend.to_string(),
        "to" => if up { "up" } else { "down" }
    )
    .increment(1);
}

/// A handshake moved on from `backend` to another one.
pub(crate) fn backend_retry(backend: &Upstream) {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_backend_retries_total", "backend" => backend.to_string())
        .increment(1);
}

/// A client connection opened; it leaves the `wsproxy_connections_open`
/// gauge when the guard drops.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn connection_opened() -> OpenConnection {
    #[cfg(feature = "metrics")]
    metrics::gauge!("wsproxy_connections_open").increment(1.0);
    OpenConnection { _priv: () }
}

/// One client connection in the `wsproxy_connections_open` gauge.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    _priv: (),
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("wsproxy_connections_open").decrement(1.0);
    }
}

/// A client connection closed by a timeout in `state`.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn connection_timed_out(state: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_connections_timed_out_total", "state" => state).increment(1);
}

/// An idle client connection closed to make room.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn connection_shed(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_connections_shed_total", "reason" => reason).increment(1);
}

/// A new client connection closed at once.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn connection_refused(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_connections_refused_total", "reason" => reason).increment(1);
}

/// `accept` failed.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn accept_error(kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_accept_errors_total", "kind" => kind).increment(1);
}

/// An HTTP/2 connection was sent `GOAWAY`.
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) fn http2_goaway(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_http2_goaway_total", "reason" => reason).increment(1);
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn the_open_gauge_goes_down_however_the_tunnel_task_ends() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // A snapshot takes (and resets) what changed since the last one.
        let mut level = 0.0;
        let mut histograms: Vec<(String, f64)> = Vec::new();
        let mut gauge = || {
            for (key, _, _, value) in snapshotter.snapshot().into_vec() {
                match value {
                    DebugValue::Gauge(g) if key.key().name() == "wsproxy_tunnels_open" => {
                        level += g.into_inner();
                    }
                    DebugValue::Histogram(values) => histograms.extend(
                        values
                            .into_iter()
                            .map(|v| (key.key().name().to_owned(), v.into_inner())),
                    ),
                    _ => {}
                }
            }
            level
        };
        metrics::with_local_recorder(&recorder, || {
            let route = Route::prefix("/chat");
            let ended = tunnel_opened(&route, std::time::Duration::from_millis(3));
            let dropped = tunnel_opened(&route, std::time::Duration::from_millis(3));
            assert_eq!(gauge(), 2.0);
            ended.closed(&End::Idle, &Totals::default());
            assert_eq!(gauge(), 1.0);
            // A task dropped before its end (runtime shut down) still
            // takes its tunnel out.
            drop(dropped);
            assert_eq!(gauge(), 0.0);
        });
        // Both handshakes timed, the one tunnel that ended too.
        let of = |name: &str| -> Vec<f64> {
            histograms
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(of("wsproxy_handshake_seconds"), [0.003, 0.003]);
        assert_eq!(of("wsproxy_tunnel_duration_seconds").len(), 1);
    }
}
