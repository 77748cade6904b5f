//! `compare-h2`: the same WebSocket workload through one proxy over
//! HTTP/1.1 (a TCP connection per WebSocket) and over HTTP/2 (RFC 8441
//! streams multiplexed on a few h2c connections), alternating rounds.
//!
//! There is no nginx column: nginx does not proxy WebSockets that arrive
//! over HTTP/2 (it has no extended `CONNECT`, and strips the upgrade of
//! HTTP/2 requests).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Dialer;
use crate::load::{self, Sample};
use crate::procs::{self, Proc};
use crate::{cell, ratio};

/// Options of `compare-h2`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Short phases and fewer idle WebSockets: a smoke run.
    #[arg(long)]
    quick: bool,
    /// Rounds (each runs HTTP/1.1, then every HTTP/2 setting).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Time per phase.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    phase: Duration,
    /// WebSockets open at once in the round-trip and throughput phases.
    #[arg(long, default_value_t = 64)]
    websockets: usize,
    /// HTTP/2 connections the WebSockets share; a column each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    h2_connections: Vec<usize>,
    /// Idle WebSockets for the memory figure (over HTTP/2, 100 streams per
    /// connection).
    #[arg(long, default_value_t = 5_000)]
    idle: usize,
    /// The proxy under test.
    #[arg(long, value_enum, default_value = "wsgate")]
    proxy: ProxyKind,
    /// The gateway binary (with `--proxy wsgate`; default: `wsgate` beside
    /// this binary, else `target/release/wsgate`).
    #[arg(long)]
    gateway: Option<PathBuf>,
}

/// Which proxy `compare-h2` measures.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProxyKind {
    /// The `wsgate` gateway (one single-threaded runtime per core, each
    /// with its own `SO_REUSEPORT` listener).
    Wsgate,
    /// The wsproxy layer in the bench's own hyper-util server, with the
    /// HTTP/2 windows the crate docs recommend (`wsproxy-bench proxy`).
    Layer,
}

/// Streams per HTTP/2 connection while measuring idle memory: under
/// hyper's default limit of 200 concurrent streams, and the 100 that
/// browsers and servers commonly use.
const IDLE_STREAMS_PER_CONNECTION: usize = 100;

/// Messages of 16 KiB each WebSocket keeps in flight in the throughput
/// phase (as `compare`).
const THROUGHPUT_WINDOW: usize = 8;

/// How a column opens its WebSockets.
#[derive(Debug, Clone, Copy)]
enum Setting {
    Http1,
    Http2 { connections: usize },
}

impl Setting {
    fn header(self) -> String {
        match self {
            Setting::Http1 => "HTTP/1.1".to_owned(),
            Setting::Http2 { connections } => format!("h2 x{connections}"),
        }
    }

    async fn dialer(self, url: &str) -> Result<Dialer, crate::client::BoxError> {
        match self {
            Setting::Http1 => Dialer::http1(url),
            Setting::Http2 { connections } => Dialer::http2(url, connections).await,
        }
    }
}

/// Values per (column, metric), one per round.
type Figures = BTreeMap<(usize, &'static str), Vec<f64>>;

/// Rows of the table; `{ws}` is the number of WebSockets.
const METRICS: &[(&str, &str)] = &[
    ("rtt1_rate", "round trips/s, 1 WebSocket (32 B)"),
    ("rtt1_p50", "  p50 latency, us"),
    ("rtt1_p99", "  p99 latency, us"),
    ("rtt_rate", "round trips/s, {ws} WebSockets (32 B)"),
    ("rtt_p50", "  p50 latency, us"),
    ("rtt_p99", "  p99 latency, us"),
    ("rtt_cpu", "  proxy CPU per message, us"),
    ("rtt_busiest", "  busiest proxy thread, % of its CPU"),
    ("rtt_load", "  load generator CPU per message, us"),
    ("tput_mb", "throughput, {ws} WebSockets, 16 KiB, MB/s"),
    ("tput_cpu", "  proxy CPU per MB, ms"),
    ("tput_busiest", "  busiest proxy thread, % of its CPU"),
    ("tput_load", "  load generator CPU per MB, ms"),
    ("hs_rate", "handshakes/s (8 parallel)"),
    ("hs_p50", "  p50 handshake, us"),
    ("hs_p99", "  p99 handshake, us"),
    ("hs_cpu", "  proxy CPU per handshake, us"),
];

/// Run `compare-h2`.
pub(crate) async fn compare(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let (rounds, phase, idle) = if options.quick {
        (1, Duration::from_millis(500), options.idle.min(500))
    } else {
        (options.rounds.max(1), options.phase, options.idle)
    };
    let websockets = options.websockets.max(1);
    let mut settings = vec![Setting::Http1];
    settings.extend(
        options
            .h2_connections
            .iter()
            .map(|&connections| Setting::Http2 {
                connections: connections.max(1),
            }),
    );

    let (echo, echo_addr) = Proc::echo_backend()?;
    let launcher = Launcher::new(options.proxy, options.gateway, echo_addr)?;
    let (proxy, proxy_addr) = launcher.start()?;
    let url = format!("ws://{proxy_addr}/");
    probe(&url).await.map_err(|e| {
        format!(
            "{} does not open a WebSocket over h2c ({e}){}",
            launcher.name(),
            match options.proxy {
                ProxyKind::Wsgate => "; try --proxy layer",
                ProxyKind::Layer => "",
            }
        )
    })?;
    println!(
        "cores: {}, rounds: {rounds}, phase: {phase:?}, WebSockets: {websockets}, \
         idle WebSockets: {idle}\nproxy: {}\n\
         client: tokio-tungstenite with TCP_NODELAY; HTTP/2 by hyper's client \
         (h2c prior knowledge, its default windows: 2 MiB per stream, 5 MiB per connection)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        launcher.describe(),
    );

    let mut figures = Figures::new();
    for round in 0..rounds {
        for (column, setting) in settings.iter().enumerate() {
            eprintln!("round {}/{rounds}: {}", round + 1, setting.header());
            match setting.dialer(&url).await {
                Ok(dialer) => {
                    run_phases(&dialer, &proxy, websockets, phase, column, &mut figures).await;
                }
                Err(e) => eprintln!("  {}: {e}", setting.header()),
            }
        }
    }
    drop(proxy);

    // Memory on a fresh proxy each, so that neither inherits the other's
    // freed heap.
    let mut idle_kib = Vec::new();
    let h2_idle = idle.div_ceil(IDLE_STREAMS_PER_CONNECTION).max(1);
    for setting in [
        Setting::Http1,
        Setting::Http2 {
            connections: h2_idle,
        },
    ] {
        eprintln!("idle: {} x {idle}", setting.header());
        let (proxy, proxy_addr) = launcher.start()?;
        let url = format!("ws://{proxy_addr}/");
        let per_ws = match setting.dialer(&url).await {
            Ok(dialer) => idle_rss(&proxy, &dialer, idle).await,
            Err(e) => {
                eprintln!("  {}: {e}", setting.header());
                f64::NAN
            }
        };
        idle_kib.push((setting, per_ws));
    }
    drop(echo);

    print_table(&settings, websockets, &figures);
    println!();
    for (setting, per_ws) in idle_kib {
        let how = match setting {
            Setting::Http1 => format!("{idle} TCP connections"),
            Setting::Http2 { connections } => {
                format!("{idle} streams on {connections} connections")
            }
        };
        println!("proxy RSS per idle WebSocket, {how}: {per_ws:.1} KiB");
    }
    Ok(())
}

/// Starts the proxy under test, as often as needed.
#[derive(Debug)]
struct Launcher {
    kind: ProxyKind,
    program: PathBuf,
    backend: String,
}

impl Launcher {
    fn new(
        kind: ProxyKind,
        gateway: Option<PathBuf>,
        backend: String,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let program = match kind {
            ProxyKind::Wsgate => {
                let gateway = gateway.unwrap_or_else(crate::default_gateway);
                if !gateway.exists() {
                    return Err(format!(
                        "{} not found: cargo build --release -p wsproxy-gateway, \
                         pass --gateway PATH, or use --proxy layer",
                        gateway.display()
                    )
                    .into());
                }
                gateway
            }
            ProxyKind::Layer => std::env::current_exe()?,
        };
        Ok(Launcher {
            kind,
            program,
            backend,
        })
    }

    fn name(&self) -> &'static str {
        match self.kind {
            ProxyKind::Wsgate => "wsgate",
            ProxyKind::Layer => "the layer server",
        }
    }

    fn describe(&self) -> String {
        match self.kind {
            ProxyKind::Wsgate => format!(
                "wsgate ({}), one worker per core, --idle-timeout off, RUST_LOG=warn; \
                 HTTP/2 settings as wsgate sets them",
                self.program.display()
            ),
            ProxyKind::Layer => format!(
                "the wsproxy layer in `wsproxy-bench proxy` (hyper-util auto builder, \
                 tokio multi-threaded runtime, extended CONNECT, HTTP/2 windows \
                 {} KiB per stream and {} MiB per connection)",
                crate::proxy::STREAM_WINDOW / 1024,
                crate::proxy::CONNECTION_WINDOW / (1024 * 1024)
            ),
        }
    }

    fn start(&self) -> Result<(Proc, String), Box<dyn std::error::Error>> {
        let mut command = Command::new(&self.program);
        match self.kind {
            ProxyKind::Wsgate => command
                .args(["--listen", "127.0.0.1:0", "--idle-timeout", "off"])
                .arg("--route")
                .arg(format!("/=ws://{}", self.backend))
                // Per-tunnel logs off, as in `compare`.
                .args(crate::procs::quiet_gateway(&self.program))
                .env("RUST_LOG", "warn"),
            ProxyKind::Layer => command
                .args(["proxy", "--listen", "127.0.0.1:0", "--backend"])
                .arg(format!("ws://{}", self.backend)),
        };
        Proc::spawn_announcing(self.name(), &mut command, "listening on ")
    }
}

/// One WebSocket over h2c echoes one message.
async fn probe(url: &str) -> Result<(), crate::client::BoxError> {
    let dialer = Dialer::http2(url, 1).await?;
    let mut ws = dialer.connect().await?;
    ws.send(Message::text("probe")).await?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(message))) if message == Message::text("probe") => {}
        other => return Err(format!("no echo: {other:?}").into()),
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// CPU counters at the start of a phase.
struct Meter<'a> {
    proxy: &'a Proc,
    cpu: f64,
    threads: BTreeMap<u32, f64>,
    own: f64,
}

/// CPU used during a phase.
struct Used {
    /// Proxy CPU seconds.
    proxy: f64,
    /// The busiest proxy thread's share of the proxy's CPU, in percent.
    busiest: f64,
    /// Load generator (this process) CPU seconds.
    own: f64,
}

impl<'a> Meter<'a> {
    fn start(proxy: &'a Proc) -> Self {
        Meter {
            proxy,
            cpu: proxy.cpu_seconds(),
            threads: proxy.thread_cpu_seconds(),
            own: procs::own_cpu_seconds(),
        }
    }

    fn stop(self) -> Used {
        let own = procs::own_cpu_seconds() - self.own;
        let proxy = self.proxy.cpu_seconds() - self.cpu;
        let deltas: Vec<f64> = self
            .proxy
            .thread_cpu_seconds()
            .into_iter()
            .map(|(tid, cpu)| cpu - self.threads.get(&tid).copied().unwrap_or(0.0))
            .collect();
        let total: f64 = deltas.iter().sum();
        let busiest = deltas.iter().copied().fold(0.0, f64::max);
        Used {
            proxy,
            busiest: if total > 0.0 {
                busiest * 100.0 / total
            } else {
                f64::NAN
            },
            own,
        }
    }
}

async fn run_phases(
    dialer: &Dialer,
    proxy: &Proc,
    websockets: usize,
    phase: Duration,
    column: usize,
    figures: &mut Figures,
) {
    let mut record = |metric: &'static str, value: f64| {
        figures.entry((column, metric)).or_default().push(value);
    };
    let what = dialer.describe();

    let s = load::round_trips(dialer, 1, 32, phase).await;
    report_errors(&what, "rtt1", &s);
    record("rtt1_rate", s.rate());
    record("rtt1_p50", s.quantile_us(0.5));
    record("rtt1_p99", s.quantile_us(0.99));

    let meter = Meter::start(proxy);
    let s = load::round_trips(dialer, websockets, 32, phase).await;
    let used = meter.stop();
    report_errors(&what, "rtt", &s);
    let messages = s.ops.max(1) as f64;
    record("rtt_rate", s.rate());
    record("rtt_p50", s.quantile_us(0.5));
    record("rtt_p99", s.quantile_us(0.99));
    record("rtt_cpu", used.proxy * 1e6 / messages);
    record("rtt_busiest", used.busiest);
    record("rtt_load", used.own * 1e6 / messages);
    eprintln!(
        "  {} WebSockets: {:.0} round trips/s, proxy {:.1} us per message, busiest thread {:.0}%",
        websockets,
        s.rate(),
        used.proxy * 1e6 / messages,
        used.busiest
    );

    let meter = Meter::start(proxy);
    let s = load::throughput(dialer, websockets, THROUGHPUT_WINDOW, 16 * 1024, phase).await;
    let used = meter.stop();
    report_errors(&what, "throughput", &s);
    let mb = (s.bytes as f64 / 1e6).max(1e-9);
    record("tput_mb", s.mb_per_s());
    record("tput_cpu", used.proxy * 1e3 / mb);
    record("tput_busiest", used.busiest);
    record("tput_load", used.own * 1e3 / mb);
    eprintln!(
        "  throughput: {:.1} MB/s, proxy {:.2} ms per MB, busiest thread {:.0}%",
        s.mb_per_s(),
        used.proxy * 1e3 / mb,
        used.busiest
    );

    let meter = Meter::start(proxy);
    let s = load::handshakes(dialer, 8, phase).await;
    let used = meter.stop();
    report_errors(&what, "handshakes", &s);
    record("hs_rate", s.rate());
    record("hs_p50", s.quantile_us(0.5));
    record("hs_p99", s.quantile_us(0.99));
    record("hs_cpu", used.proxy * 1e6 / s.ops.max(1) as f64);
}

fn report_errors(what: &str, phase: &str, sample: &Sample) {
    if sample.errors > 0 {
        eprintln!("  {what}, {phase}: {} errors", sample.errors);
    }
}

/// Proxy RSS growth per idle WebSocket, in KiB.
async fn idle_rss(proxy: &Proc, dialer: &Dialer, count: usize) -> f64 {
    let settle = Duration::from_millis(500);
    tokio::time::sleep(settle).await;
    let before = proxy.rss_kib();
    // Over HTTP/2 the handshakes take the connections in turn; 16 at a
    // time never puts more on one than the proxy's default bound of
    // handshakes at once per connection (16, answered 429 beyond it).
    let parallel = if matches!(dialer, Dialer::Http2(_)) {
        wsproxy::serve::DEFAULT_HTTP2_MAX_HANDSHAKES
    } else {
        64
    };
    let (open, errors) = load::open_idle(dialer, count, parallel).await;
    if errors > 0 {
        eprintln!("  {}: {errors} idle WebSockets failed", dialer.describe());
    }
    tokio::time::sleep(settle).await;
    let after = proxy.rss_kib();
    let opened = open.len().max(1);
    drop(open);
    after.saturating_sub(before) as f64 / opened as f64
}

fn print_table(settings: &[Setting], websockets: usize, figures: &Figures) {
    let mut header = format!("\n{:<42}", "figure (median of rounds)");
    for setting in settings {
        header += &format!(" {:>9}", setting.header());
    }
    for setting in &settings[1..] {
        header += &format!(" {:>9}", format!("{}/h1", setting.header()));
    }
    println!("{header}");
    for (key, label) in METRICS {
        let get = |column: usize| {
            figures
                .get(&(column, *key))
                .map_or(f64::NAN, |v| crate::median(v))
        };
        let mut line = format!("{:<42}", label.replace("{ws}", &websockets.to_string()));
        for column in 0..settings.len() {
            line += &format!(" {:>9}", cell(get(column)));
        }
        for column in 1..settings.len() {
            line += &format!(" {:>9}", ratio(get(column), get(0)));
        }
        println!("{line}");
    }
}
