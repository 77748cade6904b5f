//! Binary upgrade under a handshake load: wsgate (SIGUSR2: a new process
//! on the same sockets, the old one drains with Close 1001), nginx
//! (SIGUSR2 to the master, then SIGQUIT to the old master, with
//! `worker_shutdown_timeout`) and HAProxy (master-worker SIGUSR2, the
//! master re-executes itself, with `hard-stop-after`), each holding
//! `--tunnels` WebSockets whose clients answer a Close.
//!
//! Reported: handshakes done and failed across the switch, how long the
//! old generation took to be gone, and how its tunnels ended (a Close
//! frame, or cut).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Dialer;
use crate::load;
use crate::procs::{self, Proc};

/// `wsproxy-bench upgrade`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// WebSockets open when the upgrade starts.
    #[arg(long, default_value_t = 1000)]
    tunnels: usize,
    /// Concurrent handshake loops.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The wsgate binary (default: beside this one).
    #[arg(long)]
    gateway: Option<PathBuf>,
}

#[derive(Debug)]
struct Outcome {
    handshakes: u64,
    failed: u64,
    /// From the upgrade signal until the old generation's processes were
    /// gone.
    drained: Option<Duration>,
    /// Tunnels that got a Close frame, and that were cut.
    closed: u64,
    cut: u64,
}

pub(crate) async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = options
        .gateway
        .clone()
        .unwrap_or_else(crate::default_gateway);
    let scratch = std::env::temp_dir().join(format!("wsproxy-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (echo, backend) = Proc::echo_backend()?;
    println!(
        "{} WebSockets open, {} handshake loops; the upgrade 1 s into the run",
        options.tunnels, options.connections
    );
    let mut results = Vec::new();
    for name in ["wsgate", "nginx", "haproxy"] {
        eprintln!("{name}");
        let port = procs::free_port()?;
        let dir = scratch.join(name);
        std::fs::create_dir_all(&dir)?;
        let outcome = match name {
            "wsgate" => wsgate(&gateway, port, &backend, &options).await?,
            "nginx" => nginx(&dir, port, &backend, &options).await?,
            _ => haproxy(&dir, port, &backend, &options).await?,
        };
        results.push((name, outcome));
    }
    drop(echo);
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "\n{:<8} {:>11} {:>7} {:>11} {:>20}",
        "proxy", "handshakes", "failed", "drained s", "old tunnels closed/cut"
    );
    for (name, o) in &results {
        println!(
            "{:<8} {:>11} {:>7} {:>11} {:>14}/{}",
            name,
            o.handshakes,
            o.failed,
            o.drained
                .map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64())),
            o.closed,
            o.cut
        );
    }
    Ok(())
}

/// Open the tunnels (each read, so its client answers a Close), run the
/// handshake loops, call `upgrade` 1 s in (it returns when the old
/// generation is gone), and run 1 s more.
async fn exercise<F, Fut>(
    port: u16,
    options: &Options,
    upgrade: F,
) -> Result<Outcome, Box<dyn std::error::Error>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Duration, Box<dyn std::error::Error>>>,
{
    procs::wait_listening(&format!("127.0.0.1:{port}"))?;
    let dialer = Dialer::http1(&format!("ws://127.0.0.1:{port}/t")).map_err(|e| e.to_string())?;
    let (idle, _) = load::open_idle(&dialer, options.tunnels, 64).await;
    let closed = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    for mut ws in idle {
        let (closed, cut) = (closed.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) => {
                        closed.fetch_add(1, Ordering::Relaxed);
                        // Let tungstenite send the answer, then end.
                        while let Some(Ok(_)) = ws.next().await {}
                        return;
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        cut.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loops: Vec<_> = (0..options.connections)
        .map(|_| {
            let (dialer, stop, done, failed) =
                (dialer.clone(), stop.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                for _ in 0..1_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match dialer.connect().await {
                        Ok(mut ws) => {
                            let _ = ws.close(None).await;
                            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                while let Some(Ok(_)) = ws.next().await {}
                            })
                            .await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let drained = upgrade().await;
    if let Err(e) = &drained {
        eprintln!("upgrade: {e}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        let _ = task.await;
    }
    Ok(Outcome {
        handshakes: done.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        drained: drained.ok(),
        closed: closed.load(Ordering::Relaxed),
        cut: cut.load(Ordering::Relaxed),
    })
}

/// `kill -SIGNAL pid` (a process this benchmark started, or one of its
/// children).
fn signal(pid: u32, signal: &str) -> std::io::Result<()> {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .map(|_| ())
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for this purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.split(") ").nth(1).unwrap_or("").starts_with('Z'))
}

/// Wait (at most 30 s) until none of `pids` runs; how long that took.
async fn gone(pids: &[u32], since: Instant) -> Result<Duration, Box<dyn std::error::Error>> {
    while pids.iter().any(|&pid| alive(pid)) {
        if since.elapsed() > Duration::from_secs(30) {
            return Err("the old generation did not end within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(since.elapsed())
}

/// The direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

async fn wsgate(
    binary: &Path,
    port: u16,
    backend: &str,
    options: &Options,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let old = Proc::spawn(
        "wsgate",
        Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--route", &format!("/t=ws://{backend}"), "--strip-prefix"])
            .args(crate::procs::quiet_gateway(binary))
            .env("RUST_LOG", "warn"),
    )?;
    let pid = old.pid();
    let mut new = None;
    let outcome = exercise(port, options, || async {
        let since = Instant::now();
        signal(pid, "USR2")?;
        // The new process is the old one's child until the old one ends.
        let limit = Instant::now() + Duration::from_secs(10);
        while new.is_none() && Instant::now() < limit {
            new = children(pid).first().copied();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gone(&[pid], since).await
    })
    .await;
    drop(old);
    if let Some(new) = new {
        signal(new, "KILL")?;
    }
    outcome
}

async fn nginx(
    dir: &Path,
    port: u16,
    backend: &str,
    options: &Options,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let nginx = procs::installed("nginx")?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\nworker_rlimit_nofile 19000;\nworker_shutdown_timeout 10s;\n\
             pid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\n\
             events {{ worker_connections 9000; }}\n\
             http {{\n access_log off;\n client_body_temp_path {dir}/body;\n\
             proxy_temp_path {dir}/proxy;\n fastcgi_temp_path {dir}/fastcgi;\n\
             uwsgi_temp_path {dir}/uwsgi;\n scgi_temp_path {dir}/scgi;\n tcp_nodelay on;\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             upstream echo {{ server {backend}; }}\n\
             server {{ listen 127.0.0.1:{port};\n location /t {{ proxy_pass http://echo/; \
             proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; \
             proxy_set_header Connection $connection_upgrade; proxy_buffering off; \
             proxy_read_timeout 3600s; }} }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    // nginx upgrades its binary only as a daemon (in the foreground it
    // ignores USR2): it forks, and its master's PID is in the pid file.
    let status = Command::new(nginx)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .status()?;
    if !status.success() {
        return Err(format!("nginx did not start: {status}").into());
    }
    let pid_file = dir.join("nginx.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    let mut new = None;
    let outcome = exercise(port, options, || async {
        let since = Instant::now();
        let old_workers = children(pid);
        signal(pid, "USR2")?;
        // The new master writes nginx.pid (the old one's moved to .oldbin).
        let limit = Instant::now() + Duration::from_secs(10);
        while new.is_none() && Instant::now() < limit {
            new = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|&p| p != pid);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Its workers serve: then the old master is told to quit.
        let new_master = new.ok_or("nginx started no new master")?;
        while children(new_master).is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        signal(pid, "QUIT")?;
        let mut all = old_workers;
        all.push(pid);
        gone(&all, since).await
    })
    .await;
    // Both masters are this benchmark's: the old one if it is still
    // there, the new one.
    for master in [Some(pid), new].into_iter().flatten() {
        let workers = children(master);
        if alive(master) {
            signal(master, "QUIT")?;
            let _ = gone(&[master], Instant::now()).await;
            signal(master, "KILL")?;
        }
        for worker in workers {
            if alive(worker) {
                signal(worker, "KILL")?;
            }
        }
    }
    outcome
}

async fn haproxy(
    dir: &Path,
    port: u16,
    backend: &str,
    options: &Options,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let haproxy = procs::installed("haproxy")?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n    nbthread {threads}\n    maxconn 9000\n    hard-stop-after 10s\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 1m\n\
             timeout server 1m\n    timeout tunnel 1h\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    use_backend be if {{ path_beg /t }}\n\
             backend be\n    http-request set-path /\n    server echo {backend}\n"
        ),
    )?;
    let master = Proc::spawn(
        "haproxy",
        Command::new(haproxy)
            .arg("-W")
            .arg("-db")
            .arg("-f")
            .arg(&conf),
    )?;
    let pid = master.pid();
    let outcome = exercise(port, options, || async {
        let since = Instant::now();
        let old_workers = children(pid);
        // The master re-executes itself and starts new workers; the old
        // ones finish their connections (at most hard-stop-after).
        signal(pid, "USR2")?;
        gone(&old_workers, since).await
    })
    .await;
    drop(master);
    outcome
}
