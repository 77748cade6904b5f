//! `wsgate`: a standalone WebSocket gateway built on the `wsproxy` library.
//!
//! Run with `cargo run --release -p wsproxy-gateway -- --demo` for a demo
//! with embedded echo and chat backends (open <http://127.0.0.1:8080/>), or
//! route to your own backends:
//!
//! ```text
//! wsgate --listen 127.0.0.1:8080 \
//!     --route /echo=ws://127.0.0.1:9001 --route /chat=ws://127.0.0.1:9002 \
//!     --connect-timeout 5s --handshake-timeout 10s --idle-timeout 10m --strip-prefix
//! ```
//!
//! or balance a route over several backends:
//!
//! ```text
//! wsgate --route '/chat=ws://10.0.0.1:9002;weight=2,ws://10.0.0.2:9002,ws://10.0.0.9:9002;backup' \
//!     --balance least-conn --health-check ws:/ --health-interval 2s
//! ```
//!
//! or terminate TLS, with HTTP/2 or HTTP/1.1 by ALPN (WebSockets from
//! browsers then arrive as HTTP/2 streams, RFC 8441), toward `wss://`
//! backends of a private CA:
//!
//! ```text
//! wsgate --tls-cert cert.pem --tls-key key.pem \
//!     --route /chat=wss://10.0.0.1:9443 --backend-ca internal-ca.pem
//! ```
//!
//! Without TLS the gateway serves HTTP/1.1 and, to clients that start
//! with it, HTTP/2 (h2c prior knowledge).
//!
//! Every route is one `WebSocketProxyLayer` over a `Backends` set; the
//! layers share one `Tunnels` handle. Plain HTTP gets a status page at `/`
//! (routes, backends and their health) and `/healthz`. SIGTERM or SIGINT
//! stops accepting, refuses new upgrades with 503, sends every open
//! WebSocket Close 1001 ("going away") at a frame boundary, and gives the
//! closing handshakes `--shutdown-timeout` before closing what is left.

mod cli;
mod demo;
mod page;
mod tls;
mod workers;

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use clap::{CommandFactory, Parser};
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;
use wsproxy::admit::{AdmitLayer, ConnectionLimit, Key, OriginCheck, RateLimit, ResolveClient};
use wsproxy::balance::Backends;
use wsproxy::serve::{ConnectionLimits, Server, Timeouts};
use wsproxy::tls::BackendTls;
use wsproxy::{Keepalive, MessageLimits, Route, Tunnels, WebSocketProxyLayer};

use crate::cli::{Args, RouteSpec};

/// Parse the flags, set up logging, and run the gateway until a signal.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.routes.is_empty() && !args.demo {
        Args::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no route: give --route PREFIX=ws://HOST:PORT/PATH (repeatable) or --demo",
            )
            .exit();
    }
    if let Some(conflict) = args.balance.conflict() {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, conflict)
            .exit();
    }
    if let Some(prefix) = duplicate_prefix(&args) {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("two routes claim the prefix '{prefix}'; give each prefix once"),
            )
            .exit();
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match tls::server_config(cert, key) {
            Ok(config) => Some(config),
            Err(e) => Args::command()
                .error(clap::error::ErrorKind::InvalidValue, e)
                .exit(),
        },
        _ => None,
    };
    let backend_tls = match tls::backend(&args) {
        Ok(backend_tls) => backend_tls,
        Err(e) => Args::command()
            .error(clap::error::ErrorKind::InvalidValue, e)
            .exit(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run(args, tls, backend_tls).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Start the demo backends (with `--demo`), bind, serve on every worker
/// until SIGTERM/SIGINT, then drain the tunnels and stop the demo.
async fn run(
    args: Args,
    tls: Option<Arc<ServerConfig>>,
    backend_tls: Option<BackendTls>,
) -> Result<(), Box<dyn std::error::Error>> {
    // A gateway holds two descriptors per tunnel.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }

    let demo_tasks = TaskTracker::new();
    let stop_demo = CancellationToken::new();
    let mut routes = args.routes.clone();
    for route in &mut routes {
        route.strip_prefix = args.strip_prefix;
    }
    if args.demo {
        let backends = demo::start(&demo_tasks, stop_demo.clone()).await?;
        tracing::info!(echo = %backends.echo, chat = %backends.chat, "demo backends started");
        for (prefix, addr) in [("/echo", backends.echo), ("/chat", backends.chat)] {
            let mut route = RouteSpec::new(prefix, &format!("ws://{addr}"))?;
            route.strip_prefix = true;
            routes.push(route);
        }
    }

    let tunnels = Tunnels::new();
    // Active health probes start when a set goes into its layer, on this
    // runtime.
    let sets: Vec<Backends> = routes
        .iter()
        .map(|route| {
            let set = args.balance.backends(&route.backends);
            match &backend_tls {
                Some(tls) => set.tls(tls.clone()),
                None => set,
            }
        })
        .collect();
    let app = router(&args, &routes, &sets, &tunnels);

    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let mut listeners = workers::bind(args.listen, workers)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listeners[0].local_addr()?;
    for route in &routes {
        tracing::info!(
            prefix = %route.prefix,
            backends = %route.describe(),
            strip_prefix = route.strip_prefix,
            "route"
        );
    }
    tracing::info!(balance = %args.balance.strategy_name(), "balancing");
    match &args.tls_cert {
        Some(cert) => tracing::info!(cert = %cert.display(), alpn = "h2,http/1.1", "TLS"),
        None => tracing::info!("plain HTTP (HTTP/1.1, or HTTP/2 with prior knowledge)"),
    }
    tracing::info!(workers, "serving");
    println!("wsgate listening on {local}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let server = server(&args, app, tls, &tunnels);
    let stop = CancellationToken::new();
    let mut threads = Vec::with_capacity(workers - 1);
    for (index, listener) in listeners.drain(1..).enumerate() {
        threads.push(workers::spawn(
            index + 1,
            listener,
            server.clone(),
            stop.clone(),
        )?);
    }
    let first = listeners.pop().expect("one listener at least");
    let serving = tokio::spawn(workers::serve(first, server, stop.clone()));
    shutdown_signal().await;
    stop.cancel();
    tracing::info!(open = tunnels.open(), timeout = ?args.shutdown_timeout, "draining tunnels with Close 1001");
    serving.await??;
    tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await?;
    stop_demo.cancel();
    demo_tasks.close();
    demo_tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// The HTTP server of every worker: timeouts for every state of a client
/// connection, connection limits, TLS, and the tunnels to drain on
/// shutdown.
fn server(
    args: &Args,
    app: Router,
    tls: Option<Arc<ServerConfig>>,
    tunnels: &Tunnels,
) -> Server<Router> {
    let mut limits = ConnectionLimits::new()
        .http2_max_handshakes(args.h2_max_handshakes)
        .http2_reset_handshakes(args.h2_reset_rate.burst(args.h2_reset_burst));
    if let Some(max) = args.max_client_conns {
        limits = limits.max_connections(max);
    }
    if let Some(max) = args.max_client_conns_per_ip {
        limits = limits.max_connections_per_ip(max);
    }
    let server = Server::new(app)
        .timeouts(
            Timeouts::new()
                .tls_handshake(args.tls_handshake_timeout)
                .detect(args.detect_timeout)
                .request_head(args.request_head_timeout)
                .keep_alive(args.keepalive_timeout)
                .http2_idle(args.http2_idle_timeout),
        )
        .limits(limits)
        .tunnels(tunnels.clone())
        .shutdown_timeout(args.shutdown_timeout);
    match tls {
        Some(config) => server.tls(config),
        None => server,
    }
}

/// A prefix that two routes claim (the demo's `/echo` and `/chat` count
/// with `--demo`), if any.
fn duplicate_prefix(args: &Args) -> Option<&str> {
    let demo: &[&str] = if args.demo { &["/echo", "/chat"] } else { &[] };
    let mut seen = std::collections::HashSet::new();
    demo.iter()
        .copied()
        .chain(args.routes.iter().map(|r| r.prefix.as_str()))
        .find(|prefix| !seen.insert(prefix.trim_end_matches('/')))
}

/// The app: a status page, with one proxy layer per route over its
/// backend set (`sets[i]` is the set of `routes[i]`). The layer of the
/// longest prefix is outermost, so it sees a handshake first.
fn router(args: &Args, routes: &[RouteSpec], sets: &[Backends], tunnels: &Tunnels) -> Router {
    let status: Vec<(String, Backends)> = routes
        .iter()
        .zip(sets)
        .map(|(route, set)| (route.prefix.clone(), set.clone()))
        .collect();
    let mut app = page::router(
        status,
        args.balance.strategy_name(),
        tunnels.clone(),
        args.demo,
    );
    let mut ordered: Vec<(&RouteSpec, &Backends)> = routes.iter().zip(sets).collect();
    ordered.sort_by_key(|(route, _)| route.scope().len());
    for (route, set) in ordered {
        let layer = WebSocketProxyLayer::with_backends(set.clone())
            .route(Route::prefix(&route.prefix))
            .strip_prefix(route.strip_prefix)
            .connect_timeout(args.connect_timeout)
            .handshake_timeout(args.handshake_timeout)
            .idle_timeout(args.idle_timeout.0)
            .half_close_timeout(args.half_close_timeout)
            .close_on_disconnect(!args.no_close_on_disconnect)
            .client_keepalive(
                args.client_ping
                    .map(|i| Keepalive::new(i, args.ping_timeout)),
            )
            .backend_keepalive(
                args.backend_ping
                    .map(|i| Keepalive::new(i, args.ping_timeout)),
            )
            .client_limits(client_limits(args))
            .backend_limits(limits(args.backend_max_frame, args.backend_max_message))
            .forwarded_header(args.forwarded)
            .trusted_proxies(args.trusted_proxies.iter().copied())
            .tunnels(tunnels.clone());
        app = app.layer(layer);
    }
    admission(app, args)
}

/// The admission layers in front of every route, innermost first:
/// connection limits, rate limits, then the Origin check (see
/// `wsproxy::admit` for why this order).
fn admission(mut app: Router, args: &Args) -> Router {
    // Who the client is was decided once, by `ResolveClient` in front
    // (with --trusted-proxy): the key reads its `ClientIp`.
    let client = Key::client_ip();
    if args.max_conns.is_some() || args.max_conns_per_ip.is_some() {
        let mut limit = ConnectionLimit::new();
        if let Some(max) = args.max_conns {
            limit = limit.max_open(max);
        }
        if let Some(max) = args.max_conns_per_ip {
            limit = limit.max_open_per_key(client.clone(), max);
        }
        app = app.layer(limit.layer());
    }
    if args.rate.is_some() || args.rate_per_ip.is_some() {
        let mut limit = RateLimit::new();
        if let Some(rate) = args.rate_per_ip {
            limit = limit.per_key(client, rate.burst(args.burst));
        }
        if let Some(rate) = args.rate {
            limit = limit.global(rate.burst(args.burst));
        }
        app = app.layer(limit.layer());
    }
    if !args.origins.is_empty() {
        app = app.layer(
            OriginCheck::new(&args.origins)
                .allow_missing(args.allow_missing_origin)
                .layer(),
        );
    }
    if !args.trusted_proxies.is_empty() {
        // Outermost: who the client is, for every check and log after.
        app = app.layer(AdmitLayer::new(ResolveClient::new(
            args.trusted_proxies.iter().copied(),
        )));
    }
    app
}

fn client_limits(args: &Args) -> MessageLimits {
    let limits = limits(args.max_frame, args.max_message);
    match args.message_rate {
        Some(rate) => limits.max_rate(rate.burst(args.message_burst)),
        None => limits,
    }
}

fn limits(max_frame: Option<u64>, max_message: Option<u64>) -> MessageLimits {
    let mut limits = MessageLimits::new();
    if let Some(max) = max_frame {
        limits = limits.max_frame(max);
    }
    if let Some(max) = max_message {
        limits = limits.max_message(max);
    }
    limits
}

/// Resolve on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install SIGTERM handler");
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
        tracing::info!("interrupt received, shutting down");
    }
}
