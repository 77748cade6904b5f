//! The targets of `compare`, started afresh for each round, and the
//! scenarios run on each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::report::{Figures, Report};
use super::scenarios::{self, Measured};
use crate::client::Dialer;
use crate::procs::{self, Proc};

/// Options of `compare`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// A smoke run: 1 round, 1 s phases, `--idle 200`, `--storm 500
    /// --storm-parallel 100`.
    #[arg(long)]
    quick: bool,
    /// Rounds; the targets take turns within each round, and each figure
    /// is the median of the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Duration of each timed scenario (rtt1, rtt64, stream16, cycle32).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    phase: Duration,
    /// Idle tunnels for the memory figure.
    #[arg(long, default_value_t = 5_000)]
    idle: usize,
    /// WebSockets opened in the reconnect storm.
    #[arg(long, default_value_t = 10_000)]
    storm: usize,
    /// Handshakes under way at once in the reconnect storm.
    #[arg(long, default_value_t = 1_000)]
    storm_parallel: usize,
    /// Worker threads of the load generator's tokio runtime.
    #[arg(long, default_value_t = 2)]
    pub(crate) client_threads: usize,
    /// The gateway binary (default: `wsgate` beside this binary, else
    /// `target/release/wsgate`).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// A second gateway binary (e.g. a build of an earlier commit), run
    /// as target `baseline` with the same flags as `wsgate`.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Also run `ws-floor`, the least a WebSocket proxy built on hyper's
    /// server can do, as target `floor`: what wsgate's figures would be
    /// with nothing of its own.
    #[arg(long)]
    floor: bool,
    /// nginx's `proxy_buffer_size` (e.g. 64k, wsgate's read buffer),
    /// instead of its default of one page.
    #[arg(long)]
    nginx_buffer: Option<String>,
    /// Also write the results as a markdown section (machine, date,
    /// command, table) to this file, to paste into BENCHMARKS.md.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,
}

impl Options {
    /// The options with `--quick` applied.
    fn resolved(mut self) -> Self {
        if self.quick {
            self.rounds = 1;
            self.phase = Duration::from_secs(1);
            self.idle = 200;
            self.storm = 500;
            self.storm_parallel = 100;
        }
        self.rounds = self.rounds.max(1);
        self
    }
}

/// Connections HAProxy is configured for: the largest storm plus room.
const HAPROXY_MAXCONN: u64 = 11_000;

/// What a target of the comparison is.
#[derive(Debug, Clone)]
enum Kind {
    /// The echo backend itself.
    Direct,
    /// A gateway binary (`wsgate` or the baseline).
    Gateway(PathBuf),
    /// Debian's nginx.
    Nginx,
    /// Debian's HAProxy, with this `maxconn`.
    Haproxy(u64),
    /// `wsproxy-bench ws-floor`.
    Floor,
}

/// A target started for one round.
#[derive(Debug)]
struct Running {
    /// The `ws://` URL of the echo through it.
    url: String,
    /// Its `host:port`.
    addr: String,
    /// The proxy's process; none for the direct target.
    proxy: Option<Proc>,
}

/// Run `compare`.
pub(crate) async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let mut options = options.resolved();
    let gateway = options
        .gateway
        .clone()
        .unwrap_or_else(crate::default_gateway);
    for binary in std::iter::once(&gateway).chain(&options.baseline) {
        if !binary.exists() {
            return Err(format!(
                "{} not found: cargo build --release -p wsproxy-gateway",
                binary.display()
            )
            .into());
        }
    }
    if let Some(path) = &options.markdown
        && path.file_name().is_some_and(|name| name == "BENCHMARKS.md")
    {
        return Err("--markdown writes a section to paste into BENCHMARKS.md, not the file".into());
    }
    // Installed now (when missing) rather than in the middle of a round.
    procs::installed("nginx")?;
    procs::installed("haproxy")?;

    let nofile = procs::nofile_limit();
    // A proxy of one process (wsgate, HAProxy) needs two descriptors per
    // tunnel and a few more: a storm past that would measure the limit,
    // not the proxy. The storm is cut to fit (in hundreds), and says so.
    let fits = (nofile.saturating_sub(100) / 2 / 100 * 100) as usize;
    if options.storm > fits {
        eprintln!(
            "note: the open file limit of {nofile} (a hard limit this process cannot raise) \
             leaves room for {fits} tunnels in a proxy of one process: the storm opens {fits}, \
             not {}",
            options.storm
        );
        options.storm = fits;
        options.storm_parallel = options.storm_parallel.min(fits);
    }
    // HAProxy wants two descriptors per connection and a few more, and
    // does not start without them.
    let maxconn = HAPROXY_MAXCONN.min(nofile.saturating_sub(64) / 2);
    let mut targets = vec![("direct", Kind::Direct), ("wsgate", Kind::Gateway(gateway))];
    if let Some(baseline) = &options.baseline {
        targets.push(("baseline", Kind::Gateway(baseline.clone())));
    }
    targets.push(("nginx", Kind::Nginx));
    targets.push(("haproxy", Kind::Haproxy(maxconn)));
    if options.floor {
        targets.push(("floor", Kind::Floor));
    }

    let settings = format!(
        "cores: {}, client threads: {}, rounds: {}, phase: {:?}, idle: {}, storm: {} ({} at a \
         time), open file limit: {nofile}, HAProxy maxconn: {maxconn}, nginx proxy_buffer_size: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.client_threads,
        options.rounds,
        options.phase,
        options.idle,
        options.storm,
        options.storm_parallel,
        options.nginx_buffer.as_deref().unwrap_or("default"),
    );
    println!("{settings}");
    let scratch = std::env::temp_dir().join(format!("wsproxy-compare-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (echo, echo_addr) = Proc::echo_backend()?;
    let mut figures = Figures::new();
    for round in 0..options.rounds {
        for (name, kind) in &targets {
            eprintln!("round {}/{}: {name}", round + 1, options.rounds);
            let dir = scratch.join(format!("{name}-{round}"));
            match start(name, kind, &dir, &echo_addr, &options) {
                Ok(running) => measure(name, &running, &options, &mut figures).await,
                Err(e) => eprintln!("  {name}: cannot start: {e}"),
            }
        }
    }
    drop(echo);
    let _ = std::fs::remove_dir_all(&scratch);

    let names: Vec<&'static str> = targets.iter().map(|(name, _)| *name).collect();
    let report = Report::new(&figures, &names, options.idle, options.storm);
    println!();
    print!("{}", report.table());
    if let Some(path) = &options.markdown {
        std::fs::write(path, report.markdown(&settings))?;
        println!("\nmarkdown section written to {}", path.display());
    }
    Ok(())
}

/// Start target `name` for a round, in `dir`.
fn start(
    name: &'static str,
    kind: &Kind,
    dir: &Path,
    echo_addr: &str,
    options: &Options,
) -> Result<Running, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let (proxy, addr) = match kind {
        Kind::Direct => (None, echo_addr.to_owned()),
        Kind::Gateway(binary) => {
            let (proc, addr) = start_gateway(binary, name, echo_addr)?;
            (Some(proc), addr)
        }
        Kind::Nginx => {
            let port = procs::free_port()?;
            let proc = procs::start_nginx(dir, port, echo_addr, options.nginx_buffer.as_deref())?;
            (Some(proc), format!("127.0.0.1:{port}"))
        }
        Kind::Haproxy(maxconn) => {
            let port = procs::free_port()?;
            let proc = procs::start_haproxy(dir, port, echo_addr, Some(*maxconn), None)?;
            (Some(proc), format!("127.0.0.1:{port}"))
        }
        Kind::Floor => {
            let (proc, addr) = Proc::spawn_announcing(
                "floor",
                Command::new(std::env::current_exe()?)
                    .args(["ws-floor", "--listen", "127.0.0.1:0", "--backend"])
                    .arg(echo_addr),
                "listening on ",
            )?;
            (Some(proc), addr)
        }
    };
    Ok(Running {
        url: format!("ws://{addr}/"),
        addr,
        proxy,
    })
}

/// Start the gateway `binary` in front of the echo backend, as `compare`
/// and `profile` run it (idle timeout off, access log off as nginx's
/// `access_log off`, one worker per core); its address.
pub(super) fn start_gateway(
    binary: &Path,
    name: &'static str,
    echo_addr: &str,
) -> Result<(Proc, String), Box<dyn std::error::Error>> {
    Proc::spawn_announcing(
        name,
        Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--idle-timeout", "off"])
            .arg("--route")
            .arg(format!("/=ws://{echo_addr}"))
            .args(procs::quiet_gateway(binary))
            .env("RUST_LOG", "warn"),
        "listening on ",
    )
}

/// Run the scenarios on `target`: `idle` first, on the fresh proxy (so
/// that memory kept from other scenarios does not hide its growth), then
/// `rtt1`, `rtt64`, `stream16`, `cycle32` and `storm`.
async fn measure(name: &'static str, target: &Running, options: &Options, figures: &mut Figures) {
    let dialer = match Dialer::http1(&target.url) {
        Ok(dialer) => dialer,
        Err(e) => {
            eprintln!("  {name}: {e}");
            return;
        }
    };
    let proxy = target.proxy.as_ref();
    let mut record = |metric: &'static str, value: f64| {
        figures.entry((name, metric)).or_default().push(value);
    };

    if let Some(proxy) = proxy {
        let idle = scenarios::idle(&dialer, proxy, options.idle).await;
        if idle.failed > 0 {
            eprintln!(
                "  {name} idle: {} tunnels failed (first: {})",
                idle.failed,
                idle.first_error.as_deref().unwrap_or("?")
            );
        }
        record("idle_kib", idle.kib_per_tunnel);
    }

    let m = scenarios::round_trips(&dialer, proxy, 1, 32, options.phase).await;
    report_errors(name, "rtt1", &m);
    record("rtt1_rate", m.sample.rate());
    record("rtt1_cpu", m.cpu_us_per_op());
    record("rtt1_p50", m.sample.quantile_us(0.5));
    record("rtt1_p99", m.sample.quantile_us(0.99));

    let m = scenarios::round_trips(&dialer, proxy, 64, 1024, options.phase).await;
    report_errors(name, "rtt64", &m);
    record("rtt64_rate", m.sample.rate());
    record("rtt64_cpu", m.cpu_us_per_op());
    record("rtt64_user", m.user_us_per_op());
    record("rtt64_p50", m.sample.quantile_us(0.5));
    record("rtt64_p99", m.sample.quantile_us(0.99));

    let m = scenarios::stream(&dialer, proxy, 16, 16, 16 * 1024, options.phase).await;
    report_errors(name, "stream16", &m);
    record("stream16_mb", m.sample.mb_per_s());
    record("stream16_cpu", m.cpu_us_per_op());

    let m = scenarios::cycles(&target.addr, proxy, 32, options.phase).await;
    report_errors(name, "cycle32", &m);
    record("cycle32_rate", m.sample.rate());
    record("cycle32_cpu", m.cpu_us_per_op());
    record("cycle32_user", m.user_us_per_op());
    record("cycle32_p50", m.sample.quantile_us(0.5));
    record("cycle32_p99", m.sample.quantile_us(0.99));
    record("cycle32_errors", m.sample.errors as f64);

    let storm = scenarios::storm(&dialer, proxy, options.storm, options.storm_parallel).await;
    if storm.failed > 0 {
        eprintln!(
            "  {name} storm: {} failed (first: {})",
            storm.failed,
            storm.first_error.as_deref().unwrap_or("?")
        );
    }
    record("storm_ms", storm.elapsed.as_secs_f64() * 1e3);
    record("storm_failures", storm.failed as f64);
    if let Some(dropped) = storm.listen_overflows {
        record("storm_overflows", dropped as f64);
    }
    if let Some(cpu) = storm.proxy_cpu {
        record("storm_cpu_ms", cpu * 1e3);
    }
    if let Some(peak) = storm.peak_rss_kib {
        record("storm_peak_mib", peak as f64 / 1024.0);
    }
}

/// Log a scenario's failures, with the first one.
fn report_errors(target: &str, scenario: &str, measured: &Measured) {
    if measured.sample.errors > 0 {
        eprintln!(
            "  {target} {scenario}: {} errors (first: {})",
            measured.sample.errors,
            measured.first_error.as_deref().unwrap_or("?")
        );
    }
}
