//! Benchmarks for wsproxy: an echo backend, a load generator (HTTP/1.1 or
//! HTTP/2), a side-by-side comparison of a direct connection, the `wsgate`
//! gateway and nginx, and one of WebSockets over HTTP/2 against HTTP/1.1
//! through the same proxy.
//!
//! Run with:
//!
//! ```text
//! cargo build --release -p wsproxy-gateway -p wsproxy-bench
//! cargo run --release -p wsproxy-bench -- compare
//! cargo run --release -p wsproxy-bench -- compare-h2
//! ```
//!
//! See BENCHMARKS.md for what each figure means and recorded results.

mod admission;
mod client;
mod exhaust;
mod h2;
mod http;
mod load;
mod procs;
mod proxy;
mod reload;
mod upgrade;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::Dialer;
use crate::load::Sample;
use crate::procs::Proc;

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
    /// Compare direct, wsgate and nginx side by side, alternating rounds.
    Compare {
        /// Short phases and fewer idle connections: a smoke run.
        #[arg(long)]
        quick: bool,
        /// Rounds per target (alternating targets).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per phase.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        phase: Duration,
        /// Idle connections for the memory figure.
        #[arg(long, default_value_t = 5_000)]
        idle: usize,
        /// The gateway binary (default: `wsgate` beside this binary, else
        /// `target/release/wsgate`).
        #[arg(long)]
        gateway: Option<PathBuf>,
        /// A second gateway binary (e.g. a build of an earlier commit), run
        /// as target `baseline` with the same flags as `wsgate`.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// nginx's `proxy_buffer_size` (e.g. 64k, wsgate's read buffer),
        /// instead of its default of one page.
        #[arg(long)]
        nginx_buffer: Option<String>,
    },
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
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
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
            Cmd::Compare {
                quick,
                rounds,
                phase,
                idle,
                gateway,
                baseline,
                nginx_buffer,
            } => {
                let (rounds, phase, idle) = if quick {
                    (1, Duration::from_millis(500), idle.min(500))
                } else {
                    (rounds.max(1), phase, idle)
                };
                compare(
                    rounds,
                    phase,
                    idle,
                    gateway,
                    baseline,
                    nginx_buffer.as_deref(),
                )
                .await
            }
            Cmd::CompareH2(options) => h2::compare(options).await,
            Cmd::Exhaust(options) => exhaust::run(options).await,
            Cmd::Reload(options) => reload::run(options).await,
            Cmd::Upgrade(options) => upgrade::run(options).await,
            Cmd::Http(options) => http::run(options).await,
            Cmd::Admission(options) => admission::run(options).await,
            Cmd::App { listen } => http::app(listen).await,
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

/// One proxied or direct target of the comparison.
struct Target<'a> {
    name: &'static str,
    url: String,
    proxy: Option<&'a Proc>,
}

/// Figures per target, one value per round.
type Figures = BTreeMap<(&'static str, &'static str), Vec<f64>>;

const METRICS: &[(&str, &str)] = &[
    ("rtt1_rate", "round trips/s, 1 conn (32 B)"),
    ("rtt1_p50", "  p50 latency, us"),
    ("rtt1_p99", "  p99 latency, us"),
    ("rtt64_rate", "round trips/s, 64 conns (32 B)"),
    ("rtt64_p50", "  p50 latency, us"),
    ("rtt64_p99", "  p99 latency, us"),
    ("rtt64_cpu", "  proxy CPU per message, us"),
    ("tput_mb", "throughput, 16 KiB msgs, MB/s"),
    ("tput_cpu", "  proxy CPU per MB, ms"),
    ("hs_rate", "handshakes/s (8 parallel)"),
    ("hs_p50", "  p50 handshake, us"),
    ("hs_p99", "  p99 handshake, us"),
    ("hs_cpu", "  proxy CPU per handshake, us"),
    ("idle_kib", "proxy RSS per idle conn, KiB"),
];

async fn compare(
    rounds: usize,
    phase: Duration,
    idle: usize,
    gateway: Option<PathBuf>,
    baseline: Option<PathBuf>,
    nginx_buffer: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = gateway.unwrap_or_else(default_gateway);
    if !gateway.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p wsproxy-gateway",
            gateway.display()
        )
        .into());
    }
    let scratch = std::env::temp_dir().join(format!("wsproxy-bench-{}", std::process::id()));

    let (echo, echo_addr) = Proc::echo_backend()?;
    let start_wsgate = |name, extra: &[&str]| start_gateway(&gateway, name, &echo_addr, extra);
    let (wsgate, wsgate_addr) = start_wsgate("wsgate", &[])?;
    let baseline = match &baseline {
        Some(binary) => Some(start_gateway(binary, "baseline", &echo_addr, &[])?),
        None => None,
    };
    // Frame-aware in both directions (limits and keepalives that never
    // fire): every chunk is walked header by header.
    let (frames, frames_addr) = start_wsgate(
        "wsgate-frames",
        &[
            "--max-frame",
            "1GiB",
            "--backend-max-frame",
            "1GiB",
            "--client-ping",
            "1h",
            "--backend-ping",
            "1h",
        ],
    )?;
    let nginx_port = procs::free_port()?;
    let nginx = procs::start_nginx(&scratch, nginx_port, &echo_addr, nginx_buffer)?;
    let mut targets = vec![
        Target {
            name: "direct",
            url: format!("ws://{echo_addr}/"),
            proxy: None,
        },
        Target {
            name: "wsgate",
            url: format!("ws://{wsgate_addr}/"),
            proxy: Some(&wsgate),
        },
        Target {
            name: "frames",
            url: format!("ws://{frames_addr}/"),
            proxy: Some(&frames),
        },
        Target {
            name: "nginx",
            url: format!("ws://127.0.0.1:{nginx_port}/"),
            proxy: Some(&nginx),
        },
    ];
    if let Some((proc, addr)) = &baseline {
        targets.insert(
            2,
            Target {
                name: "baseline",
                url: format!("ws://{addr}/"),
                proxy: Some(proc),
            },
        );
    }
    println!(
        "cores: {}, rounds: {rounds}, phase: {phase:?}, idle connections: {idle}, \
         nginx proxy_buffer_size: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        nginx_buffer.unwrap_or("default")
    );

    let mut figures = Figures::new();
    for round in 0..rounds {
        for target in &targets {
            eprintln!("round {}/{rounds}: {}", round + 1, target.name);
            run_phases(target, phase, &mut figures).await;
        }
    }
    for target in targets.iter().filter(|t| t.proxy.is_some()) {
        eprintln!("idle: {} x {}", target.name, idle);
        let per_conn = idle_rss(target, idle).await;
        figures
            .entry((target.name, "idle_kib"))
            .or_default()
            .push(per_conn);
    }
    drop(echo);
    let _ = std::fs::remove_dir_all(&scratch);
    print_table(&figures);
    Ok(())
}

/// Start the gateway `binary` in front of the echo backend, as `compare`
/// runs it (idle timeout off, per-tunnel logs off as nginx's access_log).
fn start_gateway(
    binary: &std::path::Path,
    name: &'static str,
    echo_addr: &str,
    extra: &[&str],
) -> Result<(Proc, String), Box<dyn std::error::Error>> {
    Proc::spawn_announcing(
        name,
        Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--idle-timeout", "off"])
            .arg("--route")
            .arg(format!("/=ws://{echo_addr}"))
            .args(extra)
            .args(procs::quiet_gateway(binary))
            .env("RUST_LOG", "warn"),
        "listening on ",
    )
}

async fn run_phases(target: &Target<'_>, phase: Duration, figures: &mut Figures) {
    let dialer = match Dialer::http1(&target.url) {
        Ok(dialer) => dialer,
        Err(e) => {
            eprintln!("  {}: {e}", target.name);
            return;
        }
    };
    let cpu = || target.proxy.map(Proc::cpu_seconds);
    let mut record = |metric: &'static str, value: f64| {
        figures
            .entry((target.name, metric))
            .or_default()
            .push(value);
    };

    let s = load::round_trips(&dialer, 1, 32, phase).await;
    report_errors(target.name, "rtt1", &s);
    record("rtt1_rate", s.rate());
    record("rtt1_p50", s.quantile_us(0.5));
    record("rtt1_p99", s.quantile_us(0.99));

    let before = cpu();
    let s = load::round_trips(&dialer, 64, 32, phase).await;
    report_errors(target.name, "rtt64", &s);
    record("rtt64_rate", s.rate());
    record("rtt64_p50", s.quantile_us(0.5));
    record("rtt64_p99", s.quantile_us(0.99));
    if let (Some(a), Some(b)) = (before, cpu()) {
        record("rtt64_cpu", (b - a) * 1e6 / s.ops.max(1) as f64);
    }

    let before = cpu();
    let s = load::throughput(&dialer, 4, 8, 16 * 1024, phase).await;
    report_errors(target.name, "throughput", &s);
    record("tput_mb", s.mb_per_s());
    if let (Some(a), Some(b)) = (before, cpu()) {
        record("tput_cpu", (b - a) * 1e3 / (s.bytes as f64 / 1e6).max(1e-9));
    }

    let before = cpu();
    let s = load::handshakes(&dialer, 8, phase).await;
    report_errors(target.name, "handshakes", &s);
    record("hs_rate", s.rate());
    record("hs_p50", s.quantile_us(0.5));
    record("hs_p99", s.quantile_us(0.99));
    if let (Some(a), Some(b)) = (before, cpu()) {
        record("hs_cpu", (b - a) * 1e6 / s.ops.max(1) as f64);
    }
}

fn report_errors(target: &str, phase: &str, sample: &Sample) {
    if sample.errors > 0 {
        eprintln!("  {target} {phase}: {} errors", sample.errors);
    }
}

/// Proxy RSS growth per idle connection, in KiB.
async fn idle_rss(target: &Target<'_>, count: usize) -> f64 {
    let proxy = target.proxy.expect("a proxy");
    let settle = Duration::from_millis(500);
    tokio::time::sleep(settle).await;
    let before = proxy.rss_kib();
    let dialer = match Dialer::http1(&target.url) {
        Ok(dialer) => dialer,
        Err(e) => {
            eprintln!("  {}: {e}", target.name);
            return f64::NAN;
        }
    };
    let (open, errors) = load::open_idle(&dialer, count, 64).await;
    if errors > 0 {
        eprintln!("  {}: {errors} idle connections failed", target.name);
    }
    tokio::time::sleep(settle).await;
    let after = proxy.rss_kib();
    let opened = open.len().max(1);
    drop(open);
    tokio::time::sleep(settle).await;
    after.saturating_sub(before) as f64 / opened as f64
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn print_table(figures: &Figures) {
    println!(
        "\n(frames: wsgate with limits and keepalives that never fire, so the frame-aware path runs)"
    );
    let baseline = figures.keys().any(|(target, _)| *target == "baseline");
    let mut header = format!(
        "{:<36} {:>9} {:>9}",
        "figure (median of rounds)", "direct", "wsgate"
    );
    if baseline {
        header.push_str(&format!(" {:>9}", "baseline"));
    }
    header.push_str(&format!(
        " {:>9} {:>9} {:>8} {:>8} {:>8}",
        "frames", "nginx", "ws/dir", "ws/ngx", "fr/ws"
    ));
    if baseline {
        header.push_str(&format!(" {:>8}", "ws/base"));
    }
    println!("{header}");
    for (key, label) in METRICS {
        let get = |target| figures.get(&(target, *key)).map_or(f64::NAN, |v| median(v));
        let (direct, wsgate, frames, nginx) =
            (get("direct"), get("wsgate"), get("frames"), get("nginx"));
        let mut row = format!("{:<36} {:>9} {:>9}", label, cell(direct), cell(wsgate));
        if baseline {
            row.push_str(&format!(" {:>9}", cell(get("baseline"))));
        }
        row.push_str(&format!(
            " {:>9} {:>9} {:>8} {:>8} {:>8}",
            cell(frames),
            cell(nginx),
            ratio(wsgate, direct),
            ratio(wsgate, nginx),
            ratio(frames, wsgate)
        ));
        if baseline {
            row.push_str(&format!(" {:>8}", ratio(wsgate, get("baseline"))));
        }
        println!("{row}");
    }
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
