//! Counters through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): whatever recorder the app installs (Prometheus,
//! StatsD, ...) receives them. Without the feature these are no-ops.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `wsproxy_tunnels_opened_total` | counter | `route` | tunnels opened (`101` sent) |
//! | `wsproxy_tunnels_open` | gauge | `route` | tunnels open now |
//! | `wsproxy_tunnels_closed_total` | counter | `route`, `reason` | tunnels ended, by reason: `client_close`, `backend_close`, `idle`, `keepalive`, `limit`, `shutdown`, `backend_down`, `error` |
//! | `wsproxy_handshakes_refused_total` | counter | `status` | handshakes answered with anything but `101`, by the proxy, an admission check, or the backend (relayed) |
//! | `wsproxy_bytes_total` | counter | `route`, `direction` (`up`: client to backend, `down`) | bytes forwarded, added when a tunnel ends |
//! | `wsproxy_messages_total` | counter | `route`, `direction` | data messages, added when a tunnel ends |
//! | `wsproxy_backend_transitions_total` | counter | `backend`, `to` (`up`, `down`) | a backend marked down or back up by a health check |
//! | `wsproxy_backend_retries_total` | counter | `backend` | handshakes moved on to another backend after this one failed |

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use http::StatusCode;

use crate::relay::{End, Totals};
use crate::{Route, Upstream};

/// A tunnel opened on `route`.
pub(crate) fn tunnel_opened(route: &Route) {
    #[cfg(feature = "metrics")]
    {
        let route = route.to_string();
        metrics::counter!("wsproxy_tunnels_opened_total", "route" => route.clone()).increment(1);
        metrics::gauge!("wsproxy_tunnels_open", "route" => route).increment(1.0);
    }
}

/// A tunnel on `route` ended.
pub(crate) fn tunnel_closed(route: &Route, end: &End, totals: &Totals) {
    #[cfg(feature = "metrics")]
    {
        let route = route.to_string();
        metrics::gauge!("wsproxy_tunnels_open", "route" => route.clone()).decrement(1.0);
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
