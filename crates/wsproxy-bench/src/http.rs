//! Plain-HTTP forwarding, the "in front of an app" half of nginx's usual
//! WebSocket recipe: an app server (`wsproxy-bench app`) reached directly,
//! through wsgate (`--app`), nginx (`proxy_pass`, keep-alive upstream
//! connections, streaming both ways) and HAProxy (`mode http`, connection
//! reuse), the targets alternating within each round; and through
//! `hyper floor` (`http-floor`), the least a proxy made of hyper's server
//! and client connections can do, to show what of wsgate's cost is
//! hyper's.
//!
//! Scenarios: small GETs (64-byte answers), 1 MiB downloads, 1 MiB
//! uploads; `--connections` keep-alive client connections each sending
//! requests one after the other for `--phase`. Reported: requests/s, p99
//! latency and the proxy's CPU time per request (user + system, its
//! workers included), medians of the rounds, and that CPU over nginx's,
//! HAProxy's and the floor's from the same run.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::load::Sample;
use crate::procs::{self, Proc};

/// `wsproxy-bench http`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Rounds, the targets alternating within each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Time per scenario and target.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    phase: Duration,
    /// Keep-alive client connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// The wsgate binary (default: beside this one).
    #[arg(long)]
    gateway: Option<PathBuf>,
}

/// One scenario: its name, method, path and request body size.
const SCENARIOS: [(&str, &str, &str, usize); 3] = [
    ("small GET", "GET", "/small", 0),
    ("1 MiB down", "GET", "/big", 0),
    ("1 MiB up", "POST", "/upload", 1 << 20),
];

/// The targets, alternating in each round; `hyper floor` is `http-floor`.
const TARGETS: [&str; 5] = ["direct", "wsgate", "nginx", "haproxy", "hyper floor"];

/// The app server: `/small` answers 64 bytes, `/big` 1 MiB, `/upload`
/// reads the body and answers `ok`; HTTP/1.1 keep-alive.
pub(crate) async fn app(listen: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let small = Bytes::from(vec![b's'; 64]);
    let big = Bytes::from(vec![b'b'; 1 << 20]);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (small, big) = (small.clone(), big.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (small, big) = (small.clone(), big.clone());
                async move {
                    let body = match req.uri().path() {
                        "/big" => big,
                        "/upload" => {
                            let _ = req.into_body().collect().await;
                            Bytes::from_static(b"ok")
                        }
                        _ => small,
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// `http-floor`: the least a proxy built of hyper's server and client
/// connections does for a request, the floor under `wsgate --app` (which
/// adds a connection pool, routes, forwarding headers and timeouts).
/// Threaded as wsgate is ([`per_core`]). Each client connection gets an app
/// connection of its own; hyper's server asks for one answer at a time,
/// so they pair up one to one.
pub(crate) async fn floor(
    listen: std::net::SocketAddr,
    app: std::net::SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    per_core(listen, move |tcp| floor_connection(tcp, app)).await
}

/// Serve on `listen` as wsgate does: a single-threaded runtime per core,
/// each accepting from a listener of its own on the one address
/// (`SO_REUSEPORT`, wsgate's backlog of 4096), running `connection` for
/// each connection, until an accept fails. Prints `listening on ADDR`
/// once all listen.
pub(crate) async fn per_core<F, Fut>(
    listen: std::net::SocketAddr,
    connection: F,
) -> Result<(), Box<dyn std::error::Error>>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // SO_REUSEPORT would share a port another process listens on: a
    // bind without it first fails then, as wsgate's does.
    if listen.port() != 0 {
        drop(std::net::TcpListener::bind(listen)?);
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut addr = listen;
    let mut listeners = Vec::with_capacity(threads);
    for _ in 0..threads {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?.into_std()?;
        // The others on the port the first one got.
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    println!("listening on {addr}");
    std::io::Write::flush(&mut std::io::stdout())?;
    let mut workers: Vec<std::thread::JoinHandle<std::io::Result<()>>> = Vec::new();
    for listener in listeners {
        let connection = connection.clone();
        workers.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                loop {
                    let (tcp, _) = listener.accept().await?;
                    tokio::spawn(connection(tcp));
                }
            })
        }));
    }
    for worker in workers {
        match worker.join() {
            Ok(result) => result?,
            Err(_) => return Err("a worker panicked".into()),
        }
    }
    Ok(())
}

/// One client connection of `http-floor` and its app connection.
async fn floor_connection(tcp: tokio::net::TcpStream, app: std::net::SocketAddr) {
    use std::sync::Arc;
    let _ = tcp.set_nodelay(true);
    let Ok(upstream) = tokio::net::TcpStream::connect(app).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let Ok((sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(upstream)).await
    else {
        return;
    };
    tokio::spawn(connection);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let answer = {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(req)
            };
            answer.await
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

/// A target running: its address and process (none for `direct`).
struct Running {
    addr: String,
    proc: Option<Proc>,
}

pub(crate) async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = options
        .gateway
        .clone()
        .unwrap_or_else(crate::default_gateway);
    let scratch = std::env::temp_dir().join(format!("wsproxy-http-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (app_proc, app_addr) = Proc::spawn_announcing(
        "app server",
        Command::new(std::env::current_exe()?).args(["app", "--listen", "127.0.0.1:0"]),
        "listening on ",
    )?;
    println!(
        "{} keep-alive connections, {:?} per scenario and target, {} rounds",
        options.connections, options.phase, options.rounds
    );
    // results[scenario][target] = one (rate, p99 µs, CPU µs/request) per round
    let mut results = vec![vec![Vec::new(); TARGETS.len()]; SCENARIOS.len()];
    for round in 0..options.rounds.max(1) {
        for (t, name) in TARGETS.iter().enumerate() {
            eprintln!("round {}/{}: {name}", round + 1, options.rounds);
            let dir = scratch.join(format!("{name}-{round}"));
            std::fs::create_dir_all(&dir)?;
            let running = start(name, &gateway, &dir, &app_addr)?;
            for (s, scenario) in SCENARIOS.iter().enumerate() {
                let cpu = running.proc.as_ref().map(Proc::cpu_seconds);
                let sample =
                    load(&running.addr, scenario, options.connections, options.phase).await;
                let per_request = match (&running.proc, cpu) {
                    (Some(proc), Some(before)) => {
                        (proc.cpu_seconds() - before) * 1e6 / sample.ops.max(1) as f64
                    }
                    _ => f64::NAN,
                };
                if sample.errors > 0 {
                    eprintln!("  {}: {} errors", scenario.0, sample.errors);
                }
                results[s][t].push((sample.rate(), sample.quantile_us(0.99), per_request));
            }
            drop(running);
        }
    }
    drop(app_proc);
    let _ = std::fs::remove_dir_all(&scratch);
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "\n{:<12} {:<11} {:>11} {:>10} {:>12} {:>16} {:>16} {:>16}",
        "scenario",
        "target",
        "requests/s",
        "p99 ms",
        "CPU µs/req",
        "CPU vs nginx",
        "CPU vs HAProxy",
        "CPU vs floor"
    );
    for (s, scenario) in SCENARIOS.iter().enumerate() {
        let figures: Vec<(f64, f64, f64)> = (0..TARGETS.len())
            .map(|t| {
                let rounds = &results[s][t];
                let mut rate: Vec<f64> = rounds.iter().map(|r| r.0).collect();
                let mut p99: Vec<f64> = rounds.iter().map(|r| r.1).collect();
                let mut cpu: Vec<f64> = rounds.iter().map(|r| r.2).collect();
                (median(&mut rate), median(&mut p99), median(&mut cpu))
            })
            .collect();
        let (nginx_cpu, haproxy_cpu, floor_cpu) = (figures[2].2, figures[3].2, figures[4].2);
        for (t, name) in TARGETS.iter().enumerate() {
            let (rate, p99, cpu) = figures[t];
            let ratio = |other: f64| {
                if cpu.is_nan() {
                    "-".to_owned()
                } else {
                    format!("{:.2}x", cpu / other)
                }
            };
            println!(
                "{:<12} {:<11} {:>11.0} {:>10.2} {:>12.1} {:>16} {:>16} {:>16}",
                scenario.0,
                name,
                rate,
                p99 / 1e3,
                cpu,
                ratio(nginx_cpu),
                ratio(haproxy_cpu),
                ratio(floor_cpu)
            );
        }
    }
    Ok(())
}

/// Start target `name` in front of the app at `app`.
fn start(
    name: &str,
    gateway: &Path,
    dir: &Path,
    app: &str,
) -> Result<Running, Box<dyn std::error::Error>> {
    if name == "direct" {
        return Ok(Running {
            addr: app.to_owned(),
            proc: None,
        });
    }
    let port = procs::free_port()?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let proc = match name {
        "wsgate" => Proc::spawn(
            "wsgate",
            Command::new(gateway)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--app")
                .arg(format!("http://{app}"))
                // As nginx's `access_log off` below.
                .args(procs::quiet_gateway(gateway))
                .env("RUST_LOG", "warn"),
        )?,
        "nginx" => {
            let conf = dir.join("nginx.conf");
            let http = format!(
                "upstream app {{ server {app}; keepalive 64; keepalive_requests 1000000; }}\n\
                 server {{ listen 127.0.0.1:{port};\n client_max_body_size 0;\n\
                 keepalive_requests 1000000;\n\
                 location / {{ proxy_pass http://app; proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\"; proxy_set_header Host $host;\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                 proxy_buffering off; proxy_request_buffering off; }} }}"
            );
            std::fs::write(&conf, procs::nginx_config(dir, &http))?;
            procs::spawn_nginx(dir, &conf)?
        }
        "hyper floor" => Proc::spawn(
            "hyper floor",
            Command::new(std::env::current_exe()?)
                .arg("http-floor")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--app")
                .arg(app),
        )?,
        _ => {
            let haproxy = procs::installed("haproxy")?;
            let conf = dir.join("haproxy.cfg");
            std::fs::write(
                &conf,
                format!(
                    "global\n    nbthread {threads}\n    maxconn 9000\n\
                     defaults\n    mode http\n    timeout connect 5s\n    timeout client 1m\n\
                     timeout server 1m\n    option forwardfor\n    http-reuse always\n\
                     frontend fe\n    bind 127.0.0.1:{port}\n    default_backend app\n\
                     backend app\n    server app {app}\n"
                ),
            )?;
            Proc::spawn(
                "haproxy",
                Command::new(haproxy).arg("-db").arg("-f").arg(&conf),
            )?
        }
    };
    let addr = format!("127.0.0.1:{port}");
    procs::wait_listening(&addr)?;
    Ok(Running {
        addr,
        proc: Some(proc),
    })
}

/// `connections` keep-alive connections to `addr`, each sending the
/// scenario's request again and again for `phase` (bounded in count too).
async fn load(
    addr: &str,
    scenario: &(&'static str, &'static str, &'static str, usize),
    connections: usize,
    phase: Duration,
) -> Sample {
    let (_, method, path, upload) = *scenario;
    let body = Bytes::from(vec![b'u'; upload]);
    let start = Instant::now();
    let deadline = start + phase;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (addr, body) = (addr.to_owned(), body.clone());
            tokio::spawn(async move {
                let mut sample = Sample::default();
                let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else {
                    sample.errors += 1;
                    return sample;
                };
                let _ = tcp.set_nodelay(true);
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await
                else {
                    sample.errors += 1;
                    return sample;
                };
                tokio::spawn(conn);
                for _ in 0..10_000_000u64 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let request = Request::builder()
                        .method(method)
                        .uri(path)
                        .header("host", "app.test");
                    let request = if upload > 0 {
                        request.body(Full::new(body.clone()).boxed_unsync())
                    } else {
                        request.body(Empty::new().map_err(|never| match never {}).boxed_unsync())
                    };
                    let sent = Instant::now();
                    let ok = match sender.send_request(request.expect("a valid request")).await {
                        Ok(response) if response.status().is_success() => {
                            match response.into_body().collect().await {
                                Ok(body) => {
                                    sample.bytes += body.to_bytes().len() as u64;
                                    true
                                }
                                Err(_) => false,
                            }
                        }
                        _ => false,
                    };
                    if !ok {
                        sample.errors += 1;
                        break;
                    }
                    sample.ops += 1;
                    sample.latencies.push(sent.elapsed());
                }
                sample
            })
        })
        .collect();
    crate::load::gather(tasks, start).await
}
