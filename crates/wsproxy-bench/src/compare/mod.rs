//! `compare`: the same scenarios against a direct connection to the echo
//! backend, `wsgate`, nginx and HAProxy (issue 15); and `profile`, two of
//! them against wsgate under strace and perf.
//!
//! # Targets
//! - `direct`: the echo backend itself (`wsproxy-bench echo`).
//! - `wsgate` (and `baseline`, another gateway binary, with `--baseline`):
//!   idle timeout off, access log off, one worker per core.
//! - nginx (Debian's): a worker per core, `access_log off`, the WebSocket
//!   recipe (`proxy_http_version 1.1`, `Upgrade`/`Connection` headers,
//!   `proxy_buffering off`, 3600 s read and send timeouts).
//! - HAProxy (Debian's): `mode http`, `nbthread` one per core, `timeout
//!   tunnel 3600s`, `maxconn` 11,000 (less when the open file limit does
//!   not allow two descriptors per connection), no logs.
//!
//! nginx and HAProxy are installed with apt-get when missing. Each target
//! is started afresh for its turn in each round; the targets take turns
//! within a round (direct, wsgate, nginx, HAProxy; again...), 3 rounds by
//! default, and each figure is the median of the rounds. The load
//! generator runs on 2 tokio worker threads (`--client-threads`).
//!
//! # Scenarios
//! Proxy CPU is the user + system time of the proxy's processes (nginx:
//! master and workers) over the scenario, divided by its operations.
//!
//! 1. `rtt1`: 1 WebSocket, 32-byte messages, one in flight: messages/s,
//!    the rate as a share of direct's, proxy CPU per message, p50/p99.
//! 2. `rtt64`: 64 WebSockets, 1 KiB messages, one in flight each:
//!    messages/s, proxy CPU per message, p50/p99.
//! 3. `stream16`: 16 WebSockets each streaming 16 KiB binary messages, up
//!    to 16 unanswered: MB/s of echoed payload, proxy CPU per message.
//! 4. `cycle32`: 32 loops of TCP connect and upgrade (timed: p50/p99), a
//!    Close from the client, the server's Close, then the server's FIN
//!    (within 2 s, else the cycle failed), on raw sockets: cycles/s,
//!    proxy CPU per cycle.
//! 5. `idle`: 5,000 tunnels (`--idle`) opened 64 handshakes at a time,
//!    each echoing one message; the proxy's RSS growth per tunnel, from
//!    before the first to when it holds still (run first, on the fresh
//!    proxy).
//! 6. `storm`: 10,000 WebSockets (`--storm`) opened at once, at most
//!    1,000 handshakes under way (`--storm-parallel`), each echoing one
//!    message: the time until all did, failures, proxy CPU, and the
//!    proxy's peak RSS (read every 20 ms).
//!
//! Every phase is bounded in time (its duration, or a limit on opening)
//! and every wait has a timeout. Tunnels need descriptors: the benchmark
//! raises its open file limit to the hard limit, which the processes it
//! starts inherit (nginx sets `worker_rlimit_nofile`, wsgate raises its
//! own); a proxy of one process needs two per tunnel.
//!
//! # Output
//! A table on stdout: a column per target, then wsgate's figure over
//! each other proxy's. With `--markdown PATH`, the same as a markdown
//! section (machine, date, command line, settings, table) written to PATH
//! for BENCHMARKS.md.

mod profile;
mod report;
mod run;
mod scenarios;

pub(crate) use profile::{Options as ProfileOptions, run as profile};
pub(crate) use run::{Options, run};
