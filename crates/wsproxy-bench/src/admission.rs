//! Admission that asks over the network, measured: wsgate's handshakes
//! with no admission, with the local limits, with the same limits kept in
//! Redis (`[admission.redis]`) and with forward auth against a local auth
//! service (Debian's nginx answering `204` with `X-User-Id`), the variants
//! alternating within each round. Reported: handshakes/s, p50/p99 and the
//! gateway's CPU per handshake (medians of the rounds), and Redis commands
//! per handshake (`INFO commandstats`).
//!
//! Then the shared budget: two gateways sharing `rate_per_ip` through
//! Redis, loaded from one client through both at once well over the rate;
//! the handshakes admitted in all beside what the rate allows in that time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::client::Dialer;
use crate::load::{self, Sample};
use crate::procs::{self, Proc};

/// `wsproxy-bench admission`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Rounds, the variants alternating within each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Time per variant.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    phase: Duration,
    /// Handshake loops at once.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// The shared rate of the two-instance run, per second.
    #[arg(long, default_value_t = 100)]
    shared_rate: u32,
    /// How long the two-instance run lasts.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    shared_for: Duration,
    /// The wsgate binary (default: beside this one).
    #[arg(long)]
    gateway: Option<PathBuf>,
}

/// The burst of the shared rate.
const BURST: u32 = 10;

const VARIANTS: [&str; 4] = ["none", "local", "redis", "forward-auth"];

/// Limits every handshake passes (so each variant does the same work as
/// the others, and the load is never refused).
const LIMITS: &str = "max_conns = 1000000\nmax_conns_per_ip = 1000000\n\
                      rate_per_ip = \"1000000/s\"\nrate = \"1000000/s\"\nburst = 1000000\n";

pub(crate) async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = options
        .gateway
        .clone()
        .unwrap_or_else(crate::default_gateway);
    let scratch = std::env::temp_dir().join(format!("wsproxy-bench-adm-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (_echo, echo) = Proc::echo_backend()?;
    let (_redis, redis) = start_redis()?;
    let (_auth, auth) = start_auth(&scratch)?;

    let config = |variant: &str| match variant {
        "none" => String::new(),
        "local" => format!("[admission]\n{LIMITS}"),
        "redis" => format!(
            "[admission]\n{LIMITS}[admission.redis]\nurl = \"redis://{redis}/\"\nprefix = \"bench\"\n"
        ),
        _ => format!(
            "[admission.forward_auth]\nurl = \"http://{auth}/auth\"\ncopy_headers = [\"x-user-id\"]\n"
        ),
    };
    let mut gateways = Vec::new();
    for variant in VARIANTS {
        let file = scratch.join(format!("{variant}.toml"));
        std::fs::write(&file, config(variant))?;
        gateways.push(start_gateway(&gateway, &file, &echo, &[])?);
    }
    println!(
        "admission: {} rounds, {:?} per variant, {} handshake loops; gateway {}",
        options.rounds,
        options.phase,
        options.connections,
        gateway.display()
    );
    let mut figures: Vec<Vec<[f64; 6]>> = vec![Vec::new(); VARIANTS.len()];
    for round in 1..=options.rounds {
        for (i, variant) in VARIANTS.iter().enumerate() {
            let (proc, addr) = &gateways[i];
            let dialer = Dialer::http1(&format!("ws://{addr}/")).map_err(|e| e.to_string())?;
            let commands = (*variant == "redis").then(|| redis_commands(&redis));
            let cpu = proc.cpu_seconds();
            let sample = load::handshakes(&dialer, options.connections, options.phase).await;
            let cpu = proc.cpu_seconds() - cpu;
            let per = |total: f64| total / sample.ops.max(1) as f64;
            let (scripts, commands) = commands.map_or((f64::NAN, f64::NAN), |(s, a)| {
                let (s2, a2) = redis_commands(&redis);
                (
                    per(s2.saturating_sub(s) as f64),
                    per(a2.saturating_sub(a) as f64),
                )
            });
            figures[i].push([
                sample.rate(),
                sample.quantile_us(0.5),
                sample.quantile_us(0.99),
                per(cpu) * 1e6,
                scripts,
                commands,
            ]);
            eprintln!(
                "  round {round} {variant:>12}: {:.0}/s, p99 {:.0} us, {:.1} us CPU, {} errors",
                sample.rate(),
                sample.quantile_us(0.99),
                per(cpu) * 1e6,
                sample.errors
            );
        }
    }
    drop(gateways);
    println!(
        "\n| variant | handshakes/s | p50 us | p99 us | gateway CPU us/handshake | vs none | Redis scripts (all commands)/handshake |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let none_cpu = median(figures[0].iter().map(|f| f[3]).collect());
    for (i, variant) in VARIANTS.iter().enumerate() {
        let column = |k: usize| median(figures[i].iter().map(|f| f[k]).collect());
        let scripts = column(4);
        let commands = column(5);
        println!(
            "| {variant} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2}x | {} |",
            column(0),
            column(1),
            column(2),
            column(3),
            column(3) / none_cpu,
            if scripts.is_nan() {
                "-".to_owned()
            } else {
                format!("{scripts:.2} ({commands:.2})")
            }
        );
    }

    shared_budget(&options, &gateway, &scratch, &echo, &redis).await?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Two gateways sharing one rate: what is admitted in all against what the
/// rate allows.
async fn shared_budget(
    options: &Options,
    gateway: &Path,
    scratch: &Path,
    echo: &str,
    redis: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let rate = options.shared_rate;
    let file = scratch.join("shared.toml");
    std::fs::write(
        &file,
        format!(
            "[admission]\nrate_per_ip = \"{rate}/s\"\nburst = {BURST}\n\
             [admission.redis]\nurl = \"redis://{redis}/\"\nprefix = \"budget\"\n"
        ),
    )?;
    let one = start_gateway(gateway, &file, echo, &[])?;
    let two = start_gateway(gateway, &file, echo, &[])?;
    let dialers = [
        Dialer::http1(&format!("ws://{}/", one.1)).map_err(|e| e.to_string())?,
        Dialer::http1(&format!("ws://{}/", two.1)).map_err(|e| e.to_string())?,
    ];
    let loops = options.connections.div_ceil(2).max(1);
    let start = std::time::Instant::now();
    let samples: Vec<Sample> = futures_util::future::join_all(
        dialers
            .iter()
            .map(|dialer| load::handshakes(dialer, loops, options.shared_for)),
    )
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let admitted: u64 = samples.iter().map(|s| s.ops).sum();
    let refused: u64 = samples.iter().map(|s| s.errors).sum();
    // GCRA: the burst and one at once, then one per interval (with a
    // burst, a late arrival loses no time: the next is due from the last
    // due time, not from when it came).
    let allowed = (elapsed * f64::from(rate)).floor() + f64::from(BURST) + 1.0;
    println!(
        "\nshared budget: 2 gateways, rate_per_ip {rate}/s burst {BURST} through Redis, {elapsed:.1} s of handshakes \
         from one client through both: {admitted} admitted ({} + {}), {refused} refused; \
         the rate allows {allowed:.0}: admitted/allowed = {:.4}",
        samples[0].ops,
        samples[1].ops,
        admitted as f64 / allowed
    );
    Ok(())
}

fn start_gateway(
    binary: &Path,
    config: &Path,
    echo: &str,
    extra: &[&str],
) -> Result<(Proc, String), Box<dyn std::error::Error>> {
    Proc::spawn_announcing(
        "wsgate",
        Command::new(binary)
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--idle-timeout", "off"])
            .arg("--route")
            .arg(format!("/=ws://{echo}"))
            .args(extra)
            .args(procs::quiet_gateway(binary))
            .env("RUST_LOG", "warn"),
        "listening on ",
    )
}

/// Debian's redis-server on a free port, without persistence.
fn start_redis() -> Result<(Proc, String), Box<dyn std::error::Error>> {
    let port = procs::free_port()?;
    let proc = Proc::spawn(
        "redis-server",
        Command::new(procs::installed("redis-server")?).args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ]),
    )?;
    let addr = format!("127.0.0.1:{port}");
    procs::wait_listening(&addr)?;
    Ok((proc, addr))
}

/// An auth service: Debian's nginx answering `204` with `X-User-Id`.
fn start_auth(scratch: &Path) -> Result<(Proc, String), Box<dyn std::error::Error>> {
    let port = procs::free_port()?;
    let dir = scratch.join("nginx-auth");
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        procs::nginx_config(
            &dir,
            &format!(
                "server {{ listen 127.0.0.1:{port}; keepalive_requests 100000; \
                 location /auth {{ add_header X-User-Id alice; return 204; }} }}"
            ),
        ),
    )?;
    let proc = procs::spawn_nginx(&dir, &conf)?;
    let addr = format!("127.0.0.1:{port}");
    procs::wait_listening(&addr)?;
    Ok((proc, addr))
}

/// Script calls (`EVALSHA` + `EVAL`) and all commands Redis ran so far.
fn redis_commands(addr: &str) -> (u64, u64) {
    use std::io::{BufRead, BufReader, Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, 0);
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n");
    // A bulk reply: `$LENGTH`, then that many bytes.
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    let _ = reader.read_line(&mut first);
    let length: usize = first.trim().trim_start_matches('$').parse().unwrap_or(0);
    let mut text = vec![0; length];
    let _ = reader.read_exact(&mut text);
    let text = String::from_utf8_lossy(&text);
    let mut scripts = 0;
    let mut all = 0;
    for line in text.lines().filter(|l| l.starts_with("cmdstat_")) {
        let calls: u64 = line
            .split("calls=")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        all += calls;
        if line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:") {
            scripts += calls;
        }
    }
    (scripts, all)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
