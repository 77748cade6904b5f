//! Reloading with WebSockets open: wsgate (SIGHUP), nginx (SIGHUP) and
//! HAProxy (master-worker, SIGUSR2) side by side, each holding
//! `--tunnels` idle WebSockets while a client opens handshakes.
//!
//! For each proxy: handshake latency without reloads, then with a reload
//! every `--every` (each adds a route `/genN`; the time from the signal
//! until a handshake on `/genN` succeeds is the time to apply), then
//! whether every idle tunnel still echoes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Dialer;
use crate::load::{self, Sample};
use crate::procs::{self, Proc};

/// `wsproxy-bench reload`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Idle WebSockets held open through the reloads.
    #[arg(long, default_value_t = 5000)]
    tunnels: usize,
    /// Reloads during the measured phase.
    #[arg(long, default_value_t = 6)]
    reloads: u32,
    /// Time between two reloads.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Concurrent handshake loops during each phase.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Rounds, the proxies alternating within each.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The wsgate binary (default: beside this one).
    #[arg(long)]
    gateway: Option<PathBuf>,
}

/// What one proxy did in one round.
#[derive(Debug)]
struct Outcome {
    quiet: Sample,
    reloading: Sample,
    /// Time from each signal to the first successful handshake on the
    /// route it added.
    apply: Vec<Duration>,
    /// Idle tunnels that echoed after the reloads, of those opened.
    kept: usize,
    opened: usize,
}

/// How to reload one proxy, and its configuration with `generation`
/// extra routes.
struct Target {
    name: &'static str,
    /// Stopped (and reaped) when the target drops.
    #[allow(dead_code)]
    proc: Proc,
    /// The process to signal, and with what.
    signal: (u32, &'static str),
    rewrite: Box<dyn Fn(u32) -> std::io::Result<()>>,
}

pub(crate) async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = options
        .gateway
        .clone()
        .unwrap_or_else(crate::default_gateway);
    let scratch = std::env::temp_dir().join(format!("wsproxy-reload-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (echo, backend) = Proc::echo_backend()?;
    println!(
        "{} idle WebSockets held; {} handshake loops; {} reloads, one every {:?}",
        options.tunnels, options.connections, options.reloads, options.every
    );
    let mut results: Vec<(&'static str, Outcome)> = Vec::new();
    for round in 0..options.rounds.max(1) {
        for name in ["wsgate", "nginx", "haproxy"] {
            eprintln!("round {}/{}: {name}", round + 1, options.rounds);
            let port = procs::free_port()?;
            let dir = scratch.join(format!("{name}-{round}"));
            std::fs::create_dir_all(&dir)?;
            let target = match name {
                "wsgate" => wsgate(&gateway, &dir, port, &backend)?,
                "nginx" => nginx(&dir, port, &backend)?,
                _ => haproxy(&dir, port, &backend)?,
            };
            procs::wait_listening(&format!("127.0.0.1:{port}"))?;
            let outcome = measure(&target, port, &options).await?;
            drop(target);
            results.push((name, outcome));
        }
    }
    drop(echo);
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "\n{:<8} {:>9} {:>13} {:>13} {:>13} {:>13} {:>10} {:>10}",
        "proxy",
        "kept",
        "quiet p50 ms",
        "quiet p99 ms",
        "reload p50",
        "reload p99",
        "errors",
        "apply ms"
    );
    for (name, o) in &results {
        let mut apply: Vec<f64> = o.apply.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        apply.sort_by(f64::total_cmp);
        let apply = match (apply.first(), apply.last()) {
            (Some(min), Some(max)) => format!("{min:.1}-{max:.1}"),
            _ => "-".to_owned(),
        };
        println!(
            "{:<8} {:>4}/{:<4} {:>13.1} {:>13.1} {:>13.1} {:>13.1} {:>10} {:>10}",
            name,
            o.kept,
            o.opened,
            o.quiet.quantile_us(0.5) / 1e3,
            o.quiet.quantile_us(0.99) / 1e3,
            o.reloading.quantile_us(0.5) / 1e3,
            o.reloading.quantile_us(0.99) / 1e3,
            o.quiet.errors + o.reloading.errors,
            apply,
        );
    }
    Ok(())
}

async fn measure(
    target: &Target,
    port: u16,
    options: &Options,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let dialer = Dialer::http1(&format!("ws://127.0.0.1:{port}/t")).map_err(|e| e.to_string())?;
    let (mut idle, _) = load::open_idle(&dialer, options.tunnels, 64).await;
    let opened = idle.len();
    let phase = options.every * options.reloads;
    let quiet = load::handshakes(&dialer, options.connections, phase).await;
    // The reloads run beside the handshake loops.
    let reloads = async {
        let mut apply = Vec::new();
        for generation in 1..=options.reloads {
            let started = Instant::now();
            (target.rewrite)(generation)?;
            signal(target.signal.0, target.signal.1)?;
            // Applied once the route it added answers a handshake.
            let probe = Dialer::http1(&format!("ws://127.0.0.1:{port}/gen{generation}"))
                .map_err(|e| e.to_string())?;
            let limit = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(mut ws) = probe.connect().await {
                    let _ = ws.close(None).await;
                    apply.push(started.elapsed());
                    break;
                }
                if Instant::now() > limit {
                    eprintln!("{}: generation {generation} never applied", target.name);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let next = started + options.every;
            tokio::time::sleep_until(next.into()).await;
        }
        Ok::<_, Box<dyn std::error::Error>>(apply)
    };
    let (reloading, apply) = tokio::join!(
        load::handshakes(&dialer, options.connections, phase),
        reloads
    );
    let apply = apply?;
    // Every idle tunnel echoes once more, or it was lost.
    let mut kept = 0;
    let checks = idle.iter_mut().map(|ws| async move {
        let ok = ws.send(Message::text("still there?")).await.is_ok()
            && matches!(
                tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
                Ok(Some(Ok(Message::Text(_))))
            );
        usize::from(ok)
    });
    for ok in futures_util::future::join_all(checks).await {
        kept += ok;
    }
    Ok(Outcome {
        quiet,
        reloading,
        apply,
        kept,
        opened,
    })
}

/// `kill -SIGNAL pid` (a process this benchmark started).
fn signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -{signal} {pid} failed"
        )))
    }
}

fn wsgate(
    binary: &Path,
    dir: &Path,
    port: u16,
    backend: &str,
) -> Result<Target, Box<dyn std::error::Error>> {
    let file = dir.join("wsgate.toml");
    let write = {
        let file = file.clone();
        let backend = backend.to_owned();
        move |generation: u32| {
            let mut text = format!(
                "[listen]\naddress = \"127.0.0.1:{port}\"\n\n\
                 [[routes]]\nprefix = \"/t\"\nupstream = \"echo\"\nstrip_prefix = true\n\n"
            );
            for g in 1..=generation {
                text.push_str(&format!(
                    "[[routes]]\nprefix = \"/gen{g}\"\nupstream = \"echo\"\nstrip_prefix = true\n\n"
                ));
            }
            text.push_str(&format!(
                "[upstreams.echo]\nbackends = [\"ws://{backend}\"]\n"
            ));
            let partial = file.with_extension("partial");
            std::fs::write(&partial, text)?;
            std::fs::rename(&partial, &file)
        }
    };
    write(0)?;
    let proc = Proc::spawn(
        "wsgate",
        Command::new(binary)
            .arg("--config")
            .arg(&file)
            .args(crate::procs::quiet_gateway(binary))
            .env("RUST_LOG", "warn"),
    )?;
    Ok(Target {
        name: "wsgate",
        signal: (proc.pid(), "HUP"),
        proc,
        rewrite: Box::new(write),
    })
}

fn nginx(dir: &Path, port: u16, backend: &str) -> Result<Target, Box<dyn std::error::Error>> {
    procs::installed("nginx")?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = dir.join("nginx.conf");
    let write = {
        let conf = conf.clone();
        let dir = dir.to_owned();
        let backend = backend.to_owned();
        move |generation: u32| {
            let location = |path: &str| {
                format!(
                    "location {path} {{ proxy_pass http://echo/; proxy_http_version 1.1; \
                     proxy_set_header Upgrade $http_upgrade; \
                     proxy_set_header Connection $connection_upgrade; \
                     proxy_set_header Host $host; proxy_buffering off; \
                     proxy_read_timeout 3600s; proxy_send_timeout 3600s; }}\n"
                )
            };
            let mut locations = location("/t");
            for g in 1..=generation {
                locations.push_str(&location(&format!("/gen{g}")));
            }
            let text = procs::nginx_config(
                &dir,
                &format!(
                    "map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
                     upstream echo {{ server {backend}; }}\n\
                     server {{ listen 127.0.0.1:{port};\n{locations} }}"
                ),
            );
            std::fs::write(&conf, text)
        }
    };
    write(0)?;
    let proc = procs::spawn_nginx(dir, &conf)?;
    Ok(Target {
        name: "nginx",
        signal: (proc.pid(), "HUP"),
        proc,
        rewrite: Box::new(write),
    })
}

fn haproxy(dir: &Path, port: u16, backend: &str) -> Result<Target, Box<dyn std::error::Error>> {
    let haproxy = procs::installed("haproxy")?;
    let conf = dir.join("haproxy.cfg");
    let write = {
        let conf = conf.clone();
        let backend = backend.to_owned();
        move |generation: u32| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let mut routes = String::from("    use_backend be if { path_beg /t }\n");
            for g in 1..=generation {
                routes.push_str(&format!("    use_backend be if {{ path_beg /gen{g} }}\n"));
            }
            let text = format!(
                "global\n    nbthread {threads}\n    maxconn 9000\n\
                 defaults\n    mode http\n    timeout connect 5s\n    timeout client 1m\n\
                 timeout server 1m\n    timeout tunnel 1h\n\
                 frontend fe\n    bind 127.0.0.1:{port}\n{routes}\
                 backend be\n    http-request set-path /\n    server echo {backend}\n"
            );
            std::fs::write(&conf, text)
        }
    };
    write(0)?;
    // Master-worker: SIGUSR2 to the master starts new workers on the new
    // configuration; the old ones keep their connections until they end.
    let proc = Proc::spawn(
        "haproxy",
        Command::new(haproxy)
            .arg("-W")
            .arg("-db")
            .arg("-f")
            .arg(&conf),
    )?;
    Ok(Target {
        name: "haproxy",
        signal: (proc.pid(), "USR2"),
        proc,
        rewrite: Box::new(write),
    })
}
