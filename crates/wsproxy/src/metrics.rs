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
//! | `wsproxy_tunnels_closed_total` | counter | `route`, `reason` | tunnels ended, by reason: `client_close`, `backend_close`, `idle`, `keepalive`, `limit`, `shutdown`, `backend_down`, `expired`, `error` |
//! | `wsproxy_handshakes_total` | counter | `route`, `status` | handshakes a route answered, `101` (`200` over HTTP/2) included, whoever refused the others: the proxy, an admission check added with [`admit`](crate::WebSocketProxyLayer::admit), or the backend (relayed) |
//! | `wsproxy_handshakes_refused_total` | counter | `status` | handshakes answered with anything but `101`, by the proxy, an admission check, or the backend (relayed) |
//! | `wsproxy_backend_handshake_seconds` | histogram | `backend` | one attempt on a backend: from the start of the connect to its answer to the upgrade request (any status) |
//! | `wsproxy_close_codes_total` | counter | `route`, `from` (`client`, `backend`), `code` | each side of every tunnel that ended, by the code of the Close frame it sent: `1000`–`1015`, `3xxx`, `4xxx`, `invalid`, or `none` (it sent no Close frame, or one without a code) |
//! | `wsproxy_bytes_total` | counter | `route`, `direction` (`up`: client to backend, `down`) | bytes forwarded, added when a tunnel ends |
//! | `wsproxy_messages_total` | counter | `route`, `direction` | data messages, added when a tunnel ends |
//! | `wsproxy_backend_transitions_total` | counter | `backend`, `to` (`up`, `down`) | a backend marked down or back up by a health check |
//! | `wsproxy_backend_retries_total` | counter | `backend` | handshakes moved on to another backend after this one failed |
//! | `wsproxy_shared_limit_failures_total` | counter | | `SharedLimit` checks Redis did not answer (in time), decided by its failure policy (feature `redis`) |
//! | `wsproxy_auth_answers_total` | counter | `result` (`admitted`, `cached`, `refused`, `error`, `timeout`) | handshakes `ForwardAuth` asked about (feature `forward-auth`) |
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
            "wsproxy_handshakes_total",
            "Handshakes a route answered, by status (101 or 200 when a tunnel opened)"
        );
        describe_histogram!(
            "wsproxy_backend_handshake_seconds",
            Unit::Seconds,
            "One attempt on a backend: connect and its answer to the upgrade request"
        );
        describe_counter!(
            "wsproxy_close_codes_total",
            "Each side of every tunnel that ended, by the code of the Close frame it sent"
        );
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
        describe_counter!(
            "wsproxy_shared_limit_failures_total",
            "Shared-limit checks Redis did not answer in time"
        );
        describe_counter!(
            "wsproxy_auth_answers_total",
            "Handshakes the forward-auth check asked about, by result"
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

/// The metric keys of one route, made once: a [`Key`] hashes and
/// allocates its labels when made, which the macros do on every call, so
/// the counters of a handshake and a tunnel would otherwise make a dozen
/// each time. Each is still registered with the recorder of the moment
/// (`metrics::with_recorder`), so a recorder installed later, or a local
/// one in a test, gets them as it would from the macros.
#[cfg(feature = "metrics")]
#[derive(Debug)]
pub(crate) struct RouteKeys {
    route: std::sync::Arc<str>,
    opened: Key,
    open: Key,
    handshake: Key,
    duration: Key,
    /// `up`, `down`.
    bytes: [Key; 2],
    messages: [Key; 2],
    /// By [`EndKind`](crate::outcome::EndKind), made on first use.
    closed: [OnceLock<Key>; END_KINDS],
    /// By side (`client`, `backend`) and [`CLOSE_CODE_LABELS`].
    close_codes: [[OnceLock<Key>; CLOSE_CODE_LABELS.len()]; 2],
    /// By [`STATUS_LABELS`].
    answered: [OnceLock<Key>; STATUS_LABELS.len()],
}

#[cfg(feature = "metrics")]
use std::sync::OnceLock;

#[cfg(feature = "metrics")]
use metrics::{Key, Label};

/// How many [`EndKind`](crate::outcome::EndKind)s there are (`Error` is
/// the last).
#[cfg(feature = "metrics")]
const END_KINDS: usize = crate::outcome::EndKind::Error as usize + 1;

/// What the macros register with: this module as target, level `INFO`.
#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

#[cfg(feature = "metrics")]
impl RouteKeys {
    pub(crate) fn new(route: std::sync::Arc<str>) -> Self {
        let key = |name: &'static str, more: &[(&'static str, &'static str)]| {
            let mut labels = vec![Label::new("route", route.clone())];
            labels.extend(more.iter().map(|&(k, v)| Label::from_static_parts(k, v)));
            Key::from_parts(name, labels)
        };
        RouteKeys {
            opened: key("wsproxy_tunnels_opened_total", &[]),
            open: key("wsproxy_tunnels_open", &[]),
            handshake: key("wsproxy_handshake_seconds", &[]),
            duration: key("wsproxy_tunnel_duration_seconds", &[]),
            bytes: [
                key("wsproxy_bytes_total", &[("direction", "up")]),
                key("wsproxy_bytes_total", &[("direction", "down")]),
            ],
            messages: [
                key("wsproxy_messages_total", &[("direction", "up")]),
                key("wsproxy_messages_total", &[("direction", "down")]),
            ],
            closed: Default::default(),
            close_codes: Default::default(),
            answered: Default::default(),
            route,
        }
    }

    /// `slot`'s key, made on first use: `name` with the route and `more`.
    fn lazy<'a>(
        &self,
        slot: &'a OnceLock<Key>,
        name: &'static str,
        more: &[(&'static str, &'static str)],
    ) -> &'a Key {
        slot.get_or_init(|| {
            let mut labels = vec![Label::new("route", self.route.clone())];
            labels.extend(more.iter().map(|&(k, v)| Label::from_static_parts(k, v)));
            Key::from_parts(name, labels)
        })
    }
}

#[cfg(feature = "metrics")]
fn counter(key: &Key) -> metrics::Counter {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA))
}

#[cfg(feature = "metrics")]
fn gauge(key: &Key) -> metrics::Gauge {
    metrics::with_recorder(|recorder| recorder.register_gauge(key, &METADATA))
}

#[cfg(feature = "metrics")]
fn histogram(key: &Key) -> metrics::Histogram {
    metrics::with_recorder(|recorder| recorder.register_histogram(key, &METADATA))
}

/// A tunnel opened on `route`, its handshake having taken `handshake`:
/// counts it, and keeps it in the open gauge until the returned guard
/// drops (in the tunnel task, so a task that ends any way at all takes it
/// out).
pub(crate) fn tunnel_opened(route: &Route, handshake: std::time::Duration) -> OpenTunnel {
    #[cfg(feature = "metrics")]
    {
        let keys = route.metric_keys().clone();
        counter(&keys.opened).increment(1);
        gauge(&keys.open).increment(1.0);
        histogram(&keys.handshake).record(handshake.as_secs_f64());
        OpenTunnel {
            keys,
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
    keys: std::sync::Arc<RouteKeys>,
    #[cfg(feature = "metrics")]
    opened: std::time::Instant,
}

impl OpenTunnel {
    /// The tunnel ended: count why, and what went through.
    pub(crate) fn closed(self, end: &End, totals: &Totals) {
        #[cfg(feature = "metrics")]
        {
            let keys = &self.keys;
            histogram(&keys.duration).record(self.opened.elapsed().as_secs_f64());
            let kind = end.kind();
            counter(keys.lazy(
                &keys.closed[kind as usize],
                "wsproxy_tunnels_closed_total",
                &[("reason", kind.as_str())],
            ))
            .increment(1);
            for (side, (from, code)) in [
                ("client", totals.up.close_code),
                ("backend", totals.down.close_code),
            ]
            .into_iter()
            .enumerate()
            {
                let label = close_code_index(code);
                counter(keys.lazy(
                    &keys.close_codes[side][label],
                    "wsproxy_close_codes_total",
                    &[("from", from), ("code", CLOSE_CODE_LABELS[label])],
                ))
                .increment(1);
            }
            for (direction, totals) in [&totals.up, &totals.down].into_iter().enumerate() {
                counter(&keys.bytes[direction]).increment(totals.bytes);
                counter(&keys.messages[direction]).increment(totals.messages);
            }
        }
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        gauge(&self.keys.open).decrement(1.0);
    }
}

/// A handshake for `route` answered with `status`, `101` included.
pub(crate) fn handshake_answered(route: &Route, status: StatusCode) {
    #[cfg(feature = "metrics")]
    match STATUS_LABELS
        .iter()
        .position(|&label| label == status.as_str())
    {
        Some(i) => {
            let keys = route.metric_keys();
            counter(keys.lazy(
                &keys.answered[i],
                "wsproxy_handshakes_total",
                &[("status", STATUS_LABELS[i])],
            ))
            .increment(1);
        }
        None => metrics::counter!(
            "wsproxy_handshakes_total",
            "route" => route.label(),
            "status" => status.as_str().to_owned()
        )
        .increment(1),
    }
}

/// One attempt on the backend labelled `backend` answered after `took`.
pub(crate) fn backend_handshake(backend: std::sync::Arc<str>, took: std::time::Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("wsproxy_backend_handshake_seconds", "backend" => backend)
        .record(took.as_secs_f64());
}

/// The statuses whose labels are made once per route; others are made
/// on each count.
#[cfg(feature = "metrics")]
const STATUS_LABELS: [&str; 13] = [
    "101", "200", "400", "401", "403", "404", "426", "429", "500", "501", "502", "503", "504",
];

/// A Close frame's code as a label, with a bounded set of values (a peer
/// chooses the code): the registered ones (RFC 6455 and IANA) by number,
/// the ranges for libraries (`3xxx`) and applications (`4xxx`) as one
/// value each.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
const CLOSE_CODE_LABELS: [&str; 20] = [
    "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
    "1012", "1013", "1014", "1015", "none", "3xxx", "4xxx", "invalid",
];

/// Where `code`'s label is in [`CLOSE_CODE_LABELS`].
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn close_code_index(code: Option<u16>) -> usize {
    match code {
        Some(code @ 1000..=1015) => usize::from(code - 1000),
        None => 16,
        Some(3000..=3999) => 17,
        Some(4000..=4999) => 18,
        Some(_) => 19,
    }
}

/// A handshake answered with `status` instead of `101`.
pub(crate) fn refused(status: StatusCode) {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_handshakes_refused_total", "status" => status.as_str().to_owned())
        .increment(1);
}

/// A `ForwardAuth` answer: `admitted`,
/// `cached`, `refused`, `error` or `timeout`.
#[cfg_attr(not(feature = "forward-auth"), allow(dead_code))]
pub(crate) fn auth_answered(result: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_auth_answers_total", "result" => result).increment(1);
}

/// A [`SharedLimit`](crate::admit) check Redis did not answer.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn shared_limit_failed() {
    #[cfg(feature = "metrics")]
    metrics::counter!("wsproxy_shared_limit_failures_total").increment(1);
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

    #[test]
    fn a_routes_keys_are_registered_with_the_recorder_of_the_moment() {
        // The route (its keys) is made before either recorder exists: each
        // still gets what happens while it is the recorder, under the
        // names and labels the metrics table above gives.
        let route = Route::prefix("/chat");
        let opened = |recorder: &DebuggingRecorder, times: usize| {
            metrics::with_local_recorder(recorder, || {
                for _ in 0..times {
                    let tunnel = tunnel_opened(&route, std::time::Duration::ZERO);
                    let mut totals = Totals::default();
                    totals.up.bytes = 3;
                    totals.down.messages = 1;
                    totals.up.close_code = Some(1000);
                    tunnel.closed(&End::Idle, &totals);
                    handshake_answered(&route, StatusCode::SWITCHING_PROTOCOLS);
                    // Not among the labels made once: made on each count.
                    handshake_answered(&route, StatusCode::IM_A_TEAPOT);
                }
            });
        };
        let (first, second) = (DebuggingRecorder::new(), DebuggingRecorder::new());
        opened(&first, 1);
        opened(&second, 2);
        for (recorder, times) in [(first, 1u64), (second, 2)] {
            let mut seen: Vec<String> = recorder
                .snapshotter()
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let labels: Vec<String> = key
                        .key()
                        .labels()
                        .map(|l| format!("{}={}", l.key(), l.value()))
                        .collect();
                    let value = match value {
                        DebugValue::Counter(n) => n.to_string(),
                        DebugValue::Gauge(g) => format!("gauge {}", g.into_inner()),
                        DebugValue::Histogram(h) => format!("{} values", h.len()),
                    };
                    format!("{} {} {value}", key.key().name(), labels.join(","))
                })
                .collect();
            seen.sort();
            let n = times;
            let expected = [
                "wsproxy_bytes_total route=/chat,direction=down 0".to_owned(),
                format!("wsproxy_bytes_total route=/chat,direction=up {}", 3 * n),
                format!("wsproxy_close_codes_total route=/chat,from=backend,code=none {n}"),
                format!("wsproxy_close_codes_total route=/chat,from=client,code=1000 {n}"),
                format!("wsproxy_handshake_seconds route=/chat {n} values"),
                format!("wsproxy_handshakes_total route=/chat,status=101 {n}"),
                format!("wsproxy_handshakes_total route=/chat,status=418 {n}"),
                format!("wsproxy_messages_total route=/chat,direction=down {n}"),
                "wsproxy_messages_total route=/chat,direction=up 0".to_owned(),
                format!("wsproxy_tunnel_duration_seconds route=/chat {n} values"),
                format!("wsproxy_tunnels_closed_total route=/chat,reason=idle {n}"),
                "wsproxy_tunnels_open route=/chat gauge 0".to_owned(),
                format!("wsproxy_tunnels_opened_total route=/chat {n}"),
            ];
            assert_eq!(seen, expected);
        }
    }

    #[test]
    fn close_code_labels_are_a_bounded_set() {
        let labels: Vec<_> = [
            None,
            Some(1000),
            Some(1011),
            Some(1015),
            Some(1016),
            Some(2999),
            Some(3000),
            Some(3999),
            Some(4000),
            Some(4999),
            Some(5000),
            Some(999),
        ]
        .into_iter()
        .map(|code| CLOSE_CODE_LABELS[close_code_index(code)])
        .collect();
        assert_eq!(
            labels,
            [
                "none", "1000", "1011", "1015", "invalid", "invalid", "3xxx", "3xxx", "4xxx",
                "4xxx", "invalid", "invalid"
            ]
        );
    }

    #[test]
    fn status_labels_are_the_numbers() {
        for label in STATUS_LABELS {
            let status = StatusCode::from_bytes(label.as_bytes()).unwrap();
            assert_eq!(status.as_str(), label);
        }
    }
}
