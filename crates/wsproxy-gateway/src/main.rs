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
//! or say it all in a file (`examples/wsgate.toml` shows every key; a flag
//! given with it is set over what it says), checked first as `nginx -t`
//! does:
//!
//! ```text
//! wsgate --check --config wsgate.toml && wsgate --config wsgate.toml
//! ```
//!
//! Every route is one `WebSocketProxyLayer` over its upstream's
//! `Backends` set; the layers share one `Tunnels` handle. Plain HTTP gets
//! the tunnel counts at `/` (and the demo client with `--demo`) and
//! `/healthz`; the routes' backends and their health are on the admin
//! listener (`--admin-listen`), with `/metrics`, `/status`, `/readyz`.
//!
//! Signals, as nginx takes them: SIGHUP reloads the configuration (new
//! handshakes get the new one at once; open WebSockets keep theirs; an
//! invalid file is refused and the old configuration kept), SIGUSR1
//! reopens the log file, SIGUSR2 starts the binary again on the same
//! listening sockets and lets it take over (zero-downtime upgrade).
//! SIGTERM or SIGINT stops accepting, answers what was accepted, refuses
//! new upgrades with 503, sends every open WebSocket Close 1001 ("going
//! away") at a frame boundary, and gives the closing handshakes the
//! shutdown timeout before closing what is left; SIGQUIT does the same
//! with no deadline.

mod access;
mod admin;
mod app;
mod cli;
mod config;
mod demo;
mod live;
mod logfile;
mod page;
mod redirect;
mod signals;
mod tls;
#[cfg(unix)]
mod upgrade;
mod watch;
mod workers;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;
use wsproxy::Tunnels;

use crate::admin::Admin;
use crate::cli::Args;
use crate::config::{Config, LogFormat};
use crate::live::{Live, Source};
use crate::logfile::LogWriter;
use crate::signals::{Signal, Signals};

/// Read the configuration (`--check`: and stop there), set up logging,
/// and run the gateway until a signal stops it.
fn main() -> ExitCode {
    // Sockets handed over by an older process (binary upgrade), read
    // before anything else looks at the environment.
    #[cfg(unix)]
    let inherited = match upgrade::Inherited::take() {
        Ok(inherited) => inherited,
        Err(e) => {
            eprintln!("wsgate: cannot take over the listening sockets: {e}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(not(unix))]
    let inherited = None;
    let args = Args::parse();
    let source = Source {
        file: args.config.clone(),
        args,
        demo: None,
    };
    let config = match source.load() {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("wsgate: invalid configuration:\n{errors}");
            return ExitCode::from(2);
        }
    };
    if source.args.check {
        match &source.file {
            Some(file) => println!("wsgate: {} is valid", file.display()),
            None => println!("wsgate: the flags are valid"),
        }
        return ExitCode::SUCCESS;
    }
    let log = match &config.log.file {
        Some(path) => match LogWriter::file(path) {
            Ok(log) => log,
            Err(e) => {
                eprintln!("wsgate: cannot open the log file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => LogWriter::Stderr,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log.format {
        // The access lines in nginx's `combined` format, the rest as
        // tracing's text; the access log does not follow RUST_LOG.
        LogFormat::Text => {
            use tracing_subscriber::prelude::*;
            let text = tracing_subscriber::fmt::layer()
                .with_writer(log.clone())
                .with_ansi(log.is_terminal())
                .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
                    !access::is_outcome_event(metadata)
                }))
                .with_filter(filter);
            let access = config.log.access.then(|| {
                access::AccessLog::new(log.clone())
                    .with_filter(tracing_subscriber::filter::filter_fn(access::is_access))
            });
            tracing_subscriber::registry()
                .with(text)
                .with(access)
                .init();
        }
        LogFormat::Json => {
            use tracing_subscriber::prelude::*;
            let access = config.log.access;
            let json = tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(log.clone())
                .with_filter(tracing_subscriber::filter::filter_fn(move |metadata| {
                    access || !access::is_outcome_event(metadata)
                }))
                .with_filter(filter);
            tracing_subscriber::registry().with(json).init();
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wsgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(source, config, log, inherited));
    // What `run` gave up on (a connection past every deadline) does not
    // hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("wsgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Start the demo backends (with `demo`), bind, serve on every worker
/// until SIGTERM/SIGINT/SIGQUIT, reloading on SIGHUP; then drain the
/// tunnels and stop the demo.
async fn run(
    mut source: Source,
    mut config: Config,
    log: LogWriter,
    #[cfg(unix)] inherited: Option<upgrade::Inherited>,
    #[cfg(not(unix))] inherited: Option<std::convert::Infallible>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Listening from the start: a signal during start-up is not fatal.
    let mut signals = Signals::new()?;
    // A gateway holds two descriptors per tunnel.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }

    let demo_tasks = TaskTracker::new();
    let stop_demo = CancellationToken::new();
    if config.demo {
        let backends = demo::start(&demo_tasks, stop_demo.clone()).await?;
        tracing::info!(echo = %backends.echo, chat = %backends.chat, "demo backends started");
        source.demo = Some(backends);
        config = source.load()?;
    }

    let tunnels = Tunnels::new();
    // Active health probes start when a set goes into its layer, on this
    // runtime.
    let mut live = Live::new(config, tunnels.clone())?;
    let config = live.config().clone();
    #[cfg(unix)]
    let mut handover = upgrade::Handover::new()?;
    #[cfg(unix)]
    let (mut listeners, inherited_admin, inherited_redirect, retire) = match inherited {
        // A worker per socket handed over: the sockets stay as they were.
        Some(inherited) => {
            tracing::info!(
                from = inherited.from,
                listeners = inherited.public.len(),
                "taking over the listening sockets of the older process"
            );
            (
                adopt(&config, inherited.public)?,
                inherited
                    .admin
                    .filter(|socket| serves(socket, config.admin.address, "admin")),
                inherited
                    .redirect
                    .filter(|socket| serves(socket, config.redirect.address, "redirect")),
                Some(inherited.from),
            )
        }
        None => (bind(&config)?, None, None, None),
    };
    #[cfg(not(unix))]
    let (mut listeners, inherited_admin, inherited_redirect, retire): (
        _,
        Option<std::net::TcpListener>,
        Option<std::net::TcpListener>,
        Option<u32>,
    ) = {
        let _ = inherited;
        (bind(&config)?, None, None, None)
    };
    #[cfg(unix)]
    handover.public(&listeners)?;
    let workers = listeners[0].len();
    log_routes(&config);
    // Every listener's server: one set of connection bounds for all.
    let base = app::server(&config, live.service());
    let mut servers = Vec::with_capacity(listeners.len());
    for (index, (listen, sockets)) in config.listen.iter().zip(&listeners).enumerate() {
        let local = sockets[0].local_addr()?;
        let tls = live
            .certificate(index)
            .map(|certificate| certificate.server_config(listen.http2));
        match &listen.tls {
            Some(files) => {
                tracing::info!(address = %local, cert = %files.cert.display(), http2 = listen.http2, "TLS")
            }
            None => tracing::info!(
                address = %local,
                http2 = listen.http2,
                "plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge)"
            ),
        }
        if listen.proxy_protocol {
            tracing::info!(
                address = %local,
                from = %Nets(&listen.proxy_protocol_from),
                "PROXY protocol: every connection must start with a header"
            );
            if listen.proxy_protocol_from.is_empty() && !local.ip().is_loopback() {
                tracing::warn!(
                    address = %local,
                    "PROXY protocol from any peer on a public address: whoever reaches it \
                     can claim any client address (and one among the trusted proxies); \
                     list the balancers in proxy_protocol_from"
                );
            }
        }
        servers.push(app::listener(&base, listen, tls));
    }
    tracing::info!(workers, "serving");
    for sockets in &listeners {
        println!("wsgate listening on {}", sockets[0].local_addr()?);
    }
    let _ = std::io::stdout().flush();
    // The https port a redirect points to: the first TLS listener's.
    let https_port = config
        .listen
        .iter()
        .zip(&listeners)
        .find(|(listen, _)| listen.tls.is_some())
        .map(|(_, sockets)| sockets[0].local_addr().map(|a| a.port()))
        .transpose()?;

    // The admin listener, before the public one is served, so that a
    // probe finds it as soon as the port answers.
    let admin = match config.admin.address {
        Some(address) => {
            let admin = Admin::install(tunnels.clone())?;
            admin.publish(live.view());
            let listener = single(inherited_admin, address, "admin")?;
            #[cfg(unix)]
            handover.admin(&listener)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let local = listener.local_addr()?;
            tracing::info!(address = %local, "admin: /metrics, /status, /healthz, /readyz");
            println!("wsgate admin on {local}");
            let _ = std::io::stdout().flush();
            let router = admin.router();
            let task = tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "the admin listener stopped");
                }
            });
            Some((admin, task))
        }
        None => None,
    };
    let (admin, admin_task) = match admin {
        Some((admin, task)) => (Some(admin), Some(task)),
        None => (None, None),
    };

    // Counts the client connections of every worker, for the shutdown.
    let quiet = base;
    let stop = workers::Stop::new();
    // Worker w serves the w-th socket of every listener.
    let mut per_worker: Vec<Vec<workers::Listening>> = (0..workers).map(|_| Vec::new()).collect();
    for (sockets, server) in listeners.drain(..).zip(&servers) {
        for (worker, socket) in sockets.into_iter().enumerate() {
            per_worker[worker].push((socket, server.clone(), Box::pin(stop.signal())));
        }
    }
    let mut threads = Vec::with_capacity(workers - 1);
    for (index, sockets) in per_worker.drain(1..).enumerate() {
        threads.push(workers::spawn(index + 1, sockets, tunnels.clone())?);
    }
    let first = per_worker.pop().expect("one worker at least");
    let serving = tokio::spawn(workers::serve(first, tunnels.clone()));
    // The plain listener that sends clients to https.
    let redirecting = match config.redirect.address {
        Some(address) => {
            let listener = single(inherited_redirect, address, "redirect")?;
            #[cfg(unix)]
            handover.redirect(&listener)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let port = config
                .redirect
                .port
                .or(https_port)
                .ok_or("a redirect to https needs a TLS listener")?;
            tracing::info!(address = %listener.local_addr()?, port, "redirecting plain HTTP to https (308)");
            println!("wsgate redirecting on {}", listener.local_addr()?);
            let _ = std::io::stdout().flush();
            let server = app::listener(
                &app::server(&config, redirect::router(port, config.log.query)),
                &config.redirect.listen(),
                None,
            )
            .shutdown_timeout(HANDSHAKE_GRACE);
            let stopped = stop.cancelled();
            Some(tokio::spawn(async move {
                server.serve(listener).with_graceful_shutdown(stopped).await
            }))
        }
        None => None,
    };
    if let Some(admin) = &admin {
        admin.set_ready(true);
    }
    // Serving: the process this one replaces may stop.
    if let Some(pid) = retire {
        #[cfg(unix)]
        match upgrade::retire(pid) {
            Ok(()) => tracing::info!(
                pid,
                "serving: the older process was told to drain (SIGTERM)"
            ),
            Err(e) => tracing::error!(pid, error = %e, "cannot tell the older process to drain"),
        }
    }
    // A new process started by SIGUSR2 and still running.
    #[cfg(unix)]
    let upgrading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // With `watch`, a changed file reloads as SIGHUP does.
    let mut watch = match (&source.file, live.config().watch) {
        (Some(file), true) => {
            tracing::info!(file = %file.display(), "watching the configuration and certificate files");
            Some(watch::Watch::new(file.clone(), live.config()))
        }
        _ => None,
    };
    let deadline = loop {
        let signal = tokio::select! {
            signal = signals.next() => signal,
            () = async {
                match &mut watch {
                    Some(watch) => watch.changed().await,
                    None => std::future::pending().await,
                }
            } => Signal::Changed,
        };
        match signal {
            Signal::Reload | Signal::Changed => {
                let why = if signal == Signal::Reload {
                    "SIGHUP"
                } else {
                    "a file changed"
                };
                if let Some(watch) = &mut watch {
                    watch.reloading();
                }
                let ok = reload(&source, &mut live, why);
                if let Some(admin) = &admin {
                    admin::reloaded(ok);
                    admin.publish(live.view());
                }
                if let (Some(watch), Some(file)) = (&mut watch, &source.file) {
                    watch.follow(file.clone(), live.config());
                }
            }
            Signal::ReopenLog => reopen(&log),
            Signal::Upgrade => {
                #[cfg(unix)]
                upgrade(&handover, &upgrading);
            }
            Signal::Stop(name) => {
                let timeout = live.config().timeouts.shutdown;
                tracing::info!(?timeout, "{name} received, shutting down");
                break Some(timeout);
            }
            Signal::Quit => {
                tracing::info!(
                    "SIGQUIT received, shutting down with no deadline for open WebSockets"
                );
                break None;
            }
        }
    };
    if let Some(admin) = &admin {
        admin.set_ready(false);
    }
    // The sockets kept for a hand-over close now, so that nothing keeps
    // accepting connections into a queue nobody serves (a new process
    // holds its own).
    #[cfg(unix)]
    {
        drop(handover);
        // Retired by a new process: the admin listener is its to answer
        // (a probe alternating between the two would see 503 and 200).
        if upgrading.load(std::sync::atomic::Ordering::Relaxed)
            && let Some(task) = &admin_task
        {
            task.abort();
        }
    }
    #[cfg(not(unix))]
    drop(admin_task);
    // Stop accepting first; the connections already accepted get their
    // requests answered (a handshake in flight becomes a tunnel rather
    // than a 503), for at most HANDSHAKE_GRACE. Then the tunnels drain,
    // with the deadline the signal asked for; the servers and the
    // workers only wait for that. An accept loop may take one more
    // connection before it sees the stop: counted once it has.
    stop.cancel();
    let grace = tokio::time::Instant::now() + HANDSHAKE_GRACE;
    while (stop.accepting() > 0 || quiet.connections() > 0) && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // (The drain starts at the call; the workers wait for it.)
    drop(tunnels.shutdown(deadline.unwrap_or(Duration::MAX)));
    tracing::info!(open = tunnels.open(), "draining tunnels with Close 1001");
    let stopped = async move {
        serving.await??;
        if let Some(redirecting) = redirecting {
            redirecting.await??;
        }
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    tokio::pin!(stopped);
    // Past the tunnels' deadline (closed hard then), what is left (an HTTP
    // request that will not end) gets a moment, then the process exits.
    let mut give_up = deadline.map(|timeout| tokio::time::Instant::now() + timeout + GIVE_UP_AFTER);
    loop {
        let sleep = async {
            match give_up {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut stopped => {
                result?;
                break;
            }
            signal = signals.next() => match signal {
                // A fast shutdown after a slow one (or a second one):
                // the deadline only comes earlier.
                Signal::Stop(name) => {
                    let timeout = live.config().timeouts.shutdown;
                    tracing::info!(?timeout, "{name} received while draining: closing open WebSockets within the shutdown timeout");
                    drop(tunnels.shutdown(timeout));
                    let at = tokio::time::Instant::now() + timeout + GIVE_UP_AFTER;
                    give_up = Some(give_up.map_or(at, |before| before.min(at)));
                }
                Signal::ReopenLog => reopen(&log),
                other => tracing::info!(signal = ?other, "draining: signal ignored"),
            },
            () = sleep => {
                tracing::warn!(open = tunnels.open(), "still busy past the shutdown deadline; exiting");
                break;
            }
        }
    }
    stop_demo.cancel();
    demo_tasks.close();
    demo_tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGUSR2: start the binary again on the listening sockets; it tells
/// this process to drain once it serves. One at a time: while a new
/// process runs, another SIGUSR2 is refused.
#[cfg(unix)]
fn upgrade(
    handover: &upgrade::Handover,
    upgrading: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    if upgrading.swap(true, Ordering::AcqRel) {
        tracing::warn!("SIGUSR2: an upgrade is under way (its new process runs); ignored");
        return;
    }
    match handover.start() {
        Ok(mut child) => {
            let pid = child.id();
            tracing::info!(
                pid,
                "SIGUSR2: new process started on the listening sockets; it takes over once it serves"
            );
            // Said if it fails; the thread ends with this process.
            let upgrading = upgrading.clone();
            let _ = std::thread::Builder::new()
                .name("wsgate-upgrade".into())
                .spawn(move || {
                    if let Ok(status) = child.wait() {
                        upgrading.store(false, Ordering::Release);
                        tracing::error!(pid, %status, "the new process ended; a SIGUSR2 may start another");
                    }
                });
        }
        Err(e) => {
            upgrading.store(false, Ordering::Release);
            tracing::error!(error = %e, "SIGUSR2: cannot start the new process; this one goes on serving");
        }
    }
}

/// The public listeners of `config` from the sockets an older process
/// handed over, matched by address (the file may have changed since it
/// read it): a listener takes the sockets bound to its address (with
/// port 0, those at its own position, if on its IP); one that finds none
/// is bound anew, with as many sockets as the others; sockets no listener
/// takes are closed, and said.
#[cfg(unix)]
fn adopt(
    config: &Config,
    inherited: Vec<Vec<std::net::TcpListener>>,
) -> Result<Vec<Vec<std::net::TcpListener>>, String> {
    let workers = inherited.first().map_or(1, Vec::len);
    let addr = |sockets: &Vec<std::net::TcpListener>| {
        sockets.first().and_then(|socket| socket.local_addr().ok())
    };
    let mut left: Vec<Option<Vec<std::net::TcpListener>>> =
        inherited.into_iter().map(Some).collect();
    let mut listeners = Vec::with_capacity(config.listen.len());
    for (index, listen) in config.listen.iter().enumerate() {
        let wanted = listen.address;
        let found = left.iter().position(|sockets| {
            sockets.as_ref().and_then(addr).is_some_and(|bound| {
                if wanted.port() == 0 {
                    false
                } else {
                    bound == wanted
                }
            })
        });
        let found = found.or_else(|| {
            (wanted.port() == 0
                && left
                    .get(index)
                    .and_then(|s| s.as_ref())
                    .and_then(addr)
                    .is_some_and(|bound| bound.ip() == wanted.ip()))
            .then_some(index)
        });
        match found.and_then(|at| left[at].take()) {
            Some(sockets) => listeners.push(sockets),
            None => {
                tracing::info!(address = %wanted, "a listener the older process did not have: bound anew");
                listeners.push(
                    workers::bind(wanted, workers)
                        .map_err(|e| format!("cannot listen on {wanted}: {e}"))?,
                );
            }
        }
    }
    for sockets in left.into_iter().flatten() {
        if let Some(bound) = addr(&sockets) {
            tracing::warn!(address = %bound, "a listener of the older process is not in the configuration: closed");
        }
    }
    Ok(listeners)
}

/// Whether a `socket` handed over still serves as the `role` listener
/// configured at `wanted` (port 0: any port on its IP); if not it is
/// closed and a new one bound.
#[cfg(unix)]
fn serves(
    socket: &std::net::TcpListener,
    wanted: Option<std::net::SocketAddr>,
    role: &str,
) -> bool {
    let bound = socket.local_addr().ok();
    let serves = match (wanted, bound) {
        (Some(wanted), Some(bound)) if wanted.port() == 0 => wanted.ip() == bound.ip(),
        (Some(wanted), Some(bound)) => wanted == bound,
        _ => false,
    };
    if !serves {
        tracing::info!(role, bound = ?bound, wanted = ?wanted, "the older process's listener has moved or gone: closed");
    }
    serves
}

/// The socket of a listener served once (admin, redirect): the one
/// handed over, else one bound to `address`; non-blocking.
fn single(
    inherited: Option<std::net::TcpListener>,
    address: std::net::SocketAddr,
    role: &str,
) -> Result<std::net::TcpListener, Box<dyn std::error::Error>> {
    let listener = match inherited {
        Some(listener) => listener,
        None => std::net::TcpListener::bind(address)
            .map_err(|e| format!("cannot listen on {address} ({role}): {e}"))?,
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The public listeners of `config`: for each, one socket per worker.
fn bind(config: &Config) -> Result<Vec<Vec<std::net::TcpListener>>, String> {
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    config
        .listen
        .iter()
        .map(|listen| {
            let address = listen.address;
            workers::bind(address, workers).map_err(|e| format!("cannot listen on {address}: {e}"))
        })
        .collect()
}

/// On shutdown, how long connections accepted before it have to finish
/// their requests (handshakes in flight among them) before the tunnels
/// drain.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

/// How long after the tunnels' deadline the process waits for what is
/// left before it exits anyway.
const GIVE_UP_AFTER: Duration = Duration::from_secs(5);

/// SIGUSR1: reopen the log file.
fn reopen(log: &LogWriter) {
    match log.reopen() {
        Ok(true) => tracing::info!("SIGUSR1: log file reopened"),
        Ok(false) => tracing::info!("SIGUSR1: logging to standard error, nothing to reopen"),
        Err(e) => {
            tracing::error!(error = %e, "SIGUSR1: cannot reopen the log file; still writing to the old one");
        }
    }
}

/// SIGHUP: read the configuration again and apply it, or keep the one in
/// force if it is invalid; whether it was applied.
fn reload(source: &Source, live: &mut Live, why: &str) -> bool {
    let applied = source
        .load()
        .map_err(|e| e.to_string())
        .and_then(|config| live.apply(config));
    match applied {
        Ok(kept) => {
            for key in kept {
                tracing::warn!(%key, "changed, but not applied until a restart");
            }
            tracing::info!(
                generation = live.generation(),
                "{why}: configuration reloaded"
            );
            log_routes(live.config());
            true
        }
        Err(e) => {
            tracing::error!(
                generation = live.generation(),
                "{why}: configuration not reloaded, the one in force is kept: {e}"
            );
            false
        }
    }
}

/// One line per route.
fn log_routes(config: &Config) {
    for route in &config.routes {
        let upstream = &config.upstreams[&route.upstream];
        tracing::info!(
            prefix = %route.prefix,
            host = route.host.as_deref().unwrap_or("*"),
            upstream = %route.upstream,
            backends = %upstream.describe(),
            balance = %upstream.strategy_name(),
            strip_prefix = route.strip_prefix,
            "route"
        );
    }
}

/// Networks in a log line: `a, b`, or `any` for none.
struct Nets<'a>(&'a [ipnet::IpNet]);

impl std::fmt::Display for Nets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("any");
        }
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}
