//! Benchmarks for wsproxy: an echo backend, a load generator (HTTP/1.1 or
//! HTTP/2), a side-by-side comparison of a direct connection, the `wsgate`
//! gateway, nginx and HAProxy in six scenarios (round trips, streaming,
//! connect-upgrade-close cycles, idle memory, a reconnect storm), wsgate
//! profiled under strace and perf, one comparison of WebSockets over
//! HTTP/2 against HTTP/1.1 through the same proxy, and more (`--help`).
//!
//! Run with:
//!
//! ```text
//! cargo build --release -p wsproxy-gateway -p wsproxy-bench
//! cargo run --release -p wsproxy-bench -- compare --quick
//! cargo run --release -p wsproxy-bench -- compare --markdown /tmp/compare.md
//! cargo run --release -p wsproxy-bench -- profile
//! cargo run --release -p wsproxy-bench -- compare-h2
//! ```
//!
//! `compare`'s scenarios and targets are described in `src/compare/mod.rs`;
//! see BENCHMARKS.md for what each figure means and recorded results.

mod admission;
mod client;
mod compare;
mod exhaust;
mod h2;
mod http;
mod load;
mod procs;
mod proxy;
mod reload;
mod upgrade;
mod ws_floor;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::Dialer;

/// Echo backend, load generator and proxy comparison for wsproxy.
#[derive(Debug, Parser)]
#[command(name = "wsproxy-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the echo backend until killed.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
    },
    /// Load one WebSocket URL.
    Load {
        /// The URL, e.g. ws://127.0.0.1:8080/echo.
        #[arg(long)]
        url: String,
        /// What to measure.
        #[arg(long, value_enum, default_value = "rtt")]
        mode: Mode,
        /// Concurrent connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Message size in bytes.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Duration of the run.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Open the WebSockets over HTTP/2 (h2c with prior knowledge,
        /// RFC 8441 extended CONNECT) instead of one TCP connection each.
        #[arg(long)]
        http2: bool,
        /// With --http2: spread the WebSockets over this many HTTP/2
        /// connections, in turn.
        #[arg(long, default_value_t = 1, requires = "http2")]
        h2_connections: usize,
    },
    /// The scenarios of issue 15 (rtt1, rtt64, stream16, cycle32, idle,
    /// storm) against a direct connection, wsgate, nginx and HAProxy (and
    /// an optional baseline gateway), taking turns within each of 3
    /// rounds; each figure is the median of the rounds. Prints a table,
    /// and with `--markdown PATH` writes it as a section for
    /// BENCHMARKS.md. `--quick` is a smoke run. See `src/compare/mod.rs`.
    Compare(compare::Options),
    /// Run wsgate's `cycle32` and `rtt64` scenarios under `strace -c`
    /// (system calls per operation) and under `perf record` (the top of
    /// `perf report`, saved to files); best-effort where the tools may
    /// not attach.
    Profile(compare::ProfileOptions),
    /// The descriptor-exhaustion attack: silent connections past the
    /// proxies' descriptor limit, and handshakes during it (wsgate, an
    /// optional baseline build, nginx, HAProxy).
    Exhaust(exhaust::Options),
    /// Reloads with WebSockets open: handshake latency during them, time
    /// to apply, tunnels kept (wsgate, nginx, HAProxy).
    Reload(reload::Options),
    /// A binary upgrade under a handshake load: handshakes failed, time
    /// for the old generation to be gone, how its tunnels ended (wsgate,
    /// nginx, HAProxy).
    Upgrade(upgrade::Options),
    /// Plain-HTTP forwarding to an app server: direct, wsgate (`--app`),
    /// nginx (`proxy_pass`) and HAProxy, alternating rounds.
    Http(http::Options),
    /// Admission that asks over the network: no admission, local limits,
    /// limits in Redis and forward auth side by side; then two gateways
    /// sharing one rate through Redis.
    Admission(admission::Options),
    /// Run the app server of `http` until killed.
    App {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9003")]
        listen: std::net::SocketAddr,
    },
    /// Run the least a hyper proxy for ordinary HTTP can do, until killed:
    /// each client connection gets one hyper client connection of its own
    /// to `app`, and requests and answers pass as they are (no pool, no
    /// routing, no header rewriting). `http` measures it as `hyper floor`.
    HttpFloor {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9004")]
        listen: std::net::SocketAddr,
        /// The app server, e.g. 127.0.0.1:9003.
        #[arg(long)]
        app: std::net::SocketAddr,
    },
    /// Run the least a WebSocket proxy built on hyper's server can do,
    /// until killed: each handshake goes to `backend` as hyper parsed it,
    /// the answer comes back as it is, and after a `101` bytes pass both
    /// ways with `copy_bidirectional` (no checks, routing, header
    /// rewriting, timeouts, frame tracking or logs). `compare --floor`
    /// measures it as `floor`.
    WsFloor {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9005")]
        listen: std::net::SocketAddr,
        /// The WebSocket backend, e.g. 127.0.0.1:9001.
        #[arg(long)]
        backend: std::net::SocketAddr,
    },
    /// Compare WebSockets over HTTP/2 (many streams on few connections)
    /// with HTTP/1.1 (a connection each) through one proxy, alternating
    /// rounds.
    CompareH2(h2::Options),
    /// Run the wsproxy layer in a hyper-util server (HTTP/1.1 and h2c,
    /// extended CONNECT, windows 256 KiB per stream and 8 MiB per
    /// connection) until killed; `compare-h2 --proxy layer` starts it.
    Proxy {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9002")]
        listen: std::net::SocketAddr,
        /// The backend, e.g. ws://127.0.0.1:9001.
        #[arg(long)]
        backend: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    Rtt,
    Throughput,
    Handshake,
    Idle,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cannot raise the open file limit: {e}");
    }
    // The comparisons' load generator has a fixed number of threads, so
    // that it takes the same share of the machine whatever the cores.
    let client_threads = match &cli.command {
        Cmd::Compare(options) => Some(options.client_threads),
        Cmd::Profile(options) => Some(options.client_threads),
        _ => None,
    };
    let runtime = match client_threads {
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Runtime::new(),
    }
    .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Echo { listen } => echo(listen).await,
            Cmd::Load {
                url,
                mode,
                connections,
                size,
                duration,
                http2,
                h2_connections,
            } => {
                let dialer = if http2 {
                    Dialer::http2(&url, h2_connections).await
                } else {
                    Dialer::http1(&url)
                };
                match dialer {
                    Ok(dialer) => {
                        load_once(&dialer, mode, connections, size, duration).await;
                        Ok(())
                    }
                    Err(e) => Err(e.to_string().into()),
                }
            }
            Cmd::Compare(options) => compare::run(options).await,
            Cmd::Profile(options) => compare::profile(options).await,
            Cmd::CompareH2(options) => h2::compare(options).await,
            Cmd::Exhaust(options) => exhaust::run(options).await,
            Cmd::Reload(options) => reload::run(options).await,
            Cmd::Upgrade(options) => upgrade::run(options).await,
            Cmd::Http(options) => http::run(options).await,
            Cmd::Admission(options) => admission::run(options).await,
            Cmd::App { listen } => http::app(listen).await,
            Cmd::HttpFloor { listen, app } => http::floor(listen, app).await,
            Cmd::WsFloor { listen, backend } => ws_floor::run(listen, backend).await,
            Cmd::Proxy { listen, backend } => proxy::run(listen, &backend)
                .await
                .map_err(|e| e.to_string().into()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsproxy-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn echo(listen: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let (addr, task) = wsproxy_test_support::spawn_echo(listen).await?;
    println!("listening on {addr}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    task.await?;
    Ok(())
}

async fn load_once(
    dialer: &Dialer,
    mode: Mode,
    connections: usize,
    size: usize,
    duration: Duration,
) {
    println!("{}", dialer.describe());
    let sample = match mode {
        Mode::Rtt => load::round_trips(dialer, connections, size, duration).await,
        Mode::Throughput => load::throughput(dialer, connections, 8, size, duration).await,
        Mode::Handshake => load::handshakes(dialer, connections, duration).await,
        Mode::Idle => {
            let (open, errors) = load::open_idle(dialer, connections, 64).await;
            println!(
                "holding {} idle connections ({errors} failed) for {duration:?}",
                open.len()
            );
            tokio::time::sleep(duration).await;
            return;
        }
    };
    println!(
        "{:.0} ops/s, {:.1} MB/s, p50 {:.0} us, p99 {:.0} us, {} errors",
        sample.rate(),
        sample.mb_per_s(),
        sample.quantile_us(0.5),
        sample.quantile_us(0.99),
        sample.errors
    );
}

/// `wsgate` beside this binary (the same target directory), else in the
/// workspace's `target/release`.
pub(crate) fn default_gateway() -> PathBuf {
    std::env::current_exe()
        .map(|exe| exe.with_file_name("wsgate"))
        .ok()
        .filter(|beside| beside.exists())
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/wsgate")
        })
}

/// The median of the finite `values` (the upper one of an even count),
/// NaN if none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// `a / b` to two decimals, or `-` when either is missing.
pub(crate) fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

/// A figure to one decimal, or `-` when missing.
pub(crate) fn cell(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "-".to_owned()
    }
}
