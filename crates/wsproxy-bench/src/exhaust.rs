//! `exhaust`: the descriptor-exhaustion attack of issue 16, side by side.
//!
//! Each proxy runs with its open file limit at `--nofile` (2,048: soft and
//! hard, as `ulimit -n` sets them) in front of the echo backend. The
//! attacker opens `--silent` (2,300) TCP connections that never send a
//! byte and holds them; meanwhile clients make `--handshakes` (100)
//! WebSocket handshakes, ten at a time, each echoing one message, each
//! given 5 s. Reported per proxy: how many of the silent connections
//! the kernel let through, how many handshakes succeeded, and their
//! latency (TCP connect to the echoed message). Targets alternate, round
//! after round.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::procs::{self, Proc};

/// Options of `exhaust`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Silent connections the attacker holds.
    #[arg(long, default_value_t = 2300)]
    silent: usize,
    /// The proxies' open file limit.
    #[arg(long, default_value_t = 2048)]
    nofile: u64,
    /// Handshakes made during the attack.
    #[arg(long, default_value_t = 100)]
    handshakes: usize,
    /// Rounds (targets alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The gateway binary (default: `wsgate` beside this binary).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// A second gateway binary to run as `baseline` (e.g. a build of an
    /// earlier commit).
    #[arg(long)]
    baseline: Option<PathBuf>,
}

/// One round's figures for one proxy.
#[derive(Debug, Default, Clone)]
struct Outcome {
    silent: usize,
    succeeded: usize,
    latencies: Vec<Duration>,
}

pub(crate) async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = options
        .gateway
        .clone()
        .unwrap_or_else(crate::default_gateway);
    let scratch = std::env::temp_dir().join(format!("wsproxy-exhaust-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (echo, echo_addr) = Proc::echo_backend()?;
    let mut targets: Vec<(&'static str, Option<PathBuf>)> = vec![("wsgate", Some(gateway))];
    if let Some(baseline) = &options.baseline {
        targets.push(("baseline", Some(baseline.clone())));
    }
    targets.push(("nginx", None));
    targets.push(("haproxy", None));
    println!(
        "{} silent connections against proxies limited to {} descriptors; {} handshakes during it",
        options.silent, options.nofile, options.handshakes
    );
    let mut results: Vec<(&'static str, Vec<Outcome>)> = targets
        .iter()
        .map(|(name, _)| (*name, Vec::new()))
        .collect();
    for round in 0..options.rounds.max(1) {
        for (index, (name, binary)) in targets.iter().enumerate() {
            eprintln!("round {}/{}: {name}", round + 1, options.rounds);
            let port = procs::free_port()?;
            let dir = scratch.join(format!("{name}-{round}"));
            std::fs::create_dir_all(&dir)?;
            let proxy = match (*name, binary) {
                ("nginx", _) => start_nginx(&dir, port, &echo_addr, options.nofile)?,
                ("haproxy", _) => {
                    procs::start_haproxy(&dir, port, &echo_addr, None, Some(options.nofile))?
                }
                (_, Some(binary)) => start_gateway(name, binary, port, &echo_addr, options.nofile)?,
                _ => unreachable!("a gateway has a binary"),
            };
            let outcome = attack(port, options.silent, options.handshakes).await;
            drop(proxy);
            results[index].1.push(outcome);
        }
    }
    drop(echo);
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "\n{:<10} {:>14} {:>12} {:>10} {:>10} {:>10}",
        "proxy", "silent held", "handshakes", "p50 ms", "p99 ms", "max ms"
    );
    for (name, outcomes) in &results {
        for outcome in outcomes {
            let mut latencies = outcome.latencies.clone();
            latencies.sort();
            let at = |q: f64| {
                latencies
                    .get(
                        ((latencies.len() as f64 * q) as usize)
                            .min(latencies.len().saturating_sub(1)),
                    )
                    .map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
            };
            println!(
                "{:<10} {:>14} {:>8}/{:<3} {:>10} {:>10} {:>10}",
                name,
                outcome.silent,
                outcome.succeeded,
                options.handshakes,
                at(0.5),
                at(0.99),
                at(1.0)
            );
        }
    }
    Ok(())
}

/// Hold `silent` silent connections to 127.0.0.1:`port` while making
/// `handshakes` WebSocket handshakes, ten at a time.
async fn attack(port: u16, silent: usize, handshakes: usize) -> Outcome {
    let addr = format!("127.0.0.1:{port}");
    let connected: Vec<TcpStream> = futures_util::stream::iter(0..silent)
        .map(|_| {
            let addr = addr.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        })
        .buffer_unordered(64)
        .filter_map(|stream| async move { stream })
        .collect()
        .await;
    let mut outcome = Outcome {
        silent: connected.len(),
        ..Outcome::default()
    };
    // Ten clients at a time, each handshake given 5 s.
    let results: Vec<Option<Duration>> = futures_util::stream::iter(0..handshakes)
        .map(|_| {
            let addr = addr.clone();
            async move {
                let start = Instant::now();
                let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                    let (mut ws, _) =
                        tokio_tungstenite::connect_async(format!("ws://{addr}/")).await?;
                    ws.send(Message::text("through")).await?;
                    match ws.next().await {
                        Some(Ok(message)) if message == Message::text("through") => {}
                        other => return Err(format!("no echo: {other:?}").into()),
                    }
                    let _ = ws.close(None).await;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
                .await;
                matches!(attempt, Ok(Ok(()))).then(|| start.elapsed())
            }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    outcome.latencies = results.into_iter().flatten().collect();
    outcome.succeeded = outcome.latencies.len();
    drop(connected);
    outcome
}

fn start_gateway(
    name: &'static str,
    binary: &Path,
    port: u16,
    backend: &str,
    nofile: u64,
) -> Result<Proc, Box<dyn std::error::Error>> {
    let proc = Proc::spawn(
        name,
        procs::with_nofile(nofile, binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--route", &format!("/=ws://{backend}")])
            .args(crate::procs::quiet_gateway(binary))
            .env("RUST_LOG", "error"),
    )?;
    procs::wait_listening(&format!("127.0.0.1:{port}"))?;
    Ok(proc)
}

/// nginx as Debian ships it (2 workers, `worker_connections` 768 each,
/// `client_header_timeout` 60 s) plus the WebSocket recipe.
fn start_nginx(
    dir: &Path,
    port: u16,
    backend: &str,
    nofile: u64,
) -> Result<Proc, Box<dyn std::error::Error>> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = format!(
        r#"worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log crit;
events {{ worker_connections 768; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config)?;
    let nginx = procs::installed("nginx")?;
    let mut command = procs::with_nofile(nofile, &nginx);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"]);
    let proc = Proc::spawn_quitting("nginx", &mut command, "QUIT")?;
    procs::wait_listening(&format!("127.0.0.1:{port}"))?;
    Ok(proc)
}
