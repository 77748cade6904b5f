//! `profile`: where wsgate's time goes in two scenarios of `compare`.
//!
//! wsgate runs in front of the echo backend; `cycle32` and `rtt64` each
//! run once under `strace -c -f -p PID` (printed as system calls per
//! operation) and once under `perf record -e cpu-clock -g -p PID` (the
//! top lines of `perf report --stdio --no-children --percent-limit 2`
//! saved to a file and printed). strace and perf (Debian's `linux-perf`)
//! are installed when missing. Both are best-effort: where a tool may
//! not attach (ptrace or perf events not permitted) that is said, and the
//! rest goes on. strace slows the gateway a lot: its rates say nothing,
//! only the calls per operation do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::run::start_gateway;
use super::scenarios::{self, Measured};
use crate::client::Dialer;
use crate::procs::{self, Proc};

/// Options of `profile`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Duration of each scenario run.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    phase: Duration,
    /// The gateway binary (default: `wsgate` beside this binary, else
    /// `target/release/wsgate`).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Directory for the strace summaries, perf data and perf reports
    /// (default: `wsproxy-profile` in the system's temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Worker threads of the load generator's tokio runtime.
    #[arg(long, default_value_t = 2)]
    pub(crate) client_threads: usize,
}

/// A scenario of `compare` that `profile` runs.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// 32 loops of connect, upgrade, close, FIN.
    Cycle32,
    /// 64 WebSockets, 1 KiB messages, one in flight each.
    Rtt64,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Cycle32 => "cycle32",
            Scenario::Rtt64 => "rtt64",
        }
    }

    /// What one operation is.
    fn operation(self) -> &'static str {
        match self {
            Scenario::Cycle32 => "cycle",
            Scenario::Rtt64 => "message",
        }
    }

    async fn run(self, addr: &str, proxy: &Proc, phase: Duration) -> Measured {
        match self {
            Scenario::Cycle32 => scenarios::cycles(addr, Some(proxy), 32, phase).await,
            Scenario::Rtt64 => match Dialer::http1(&format!("ws://{addr}/")) {
                Ok(dialer) => scenarios::round_trips(&dialer, Some(proxy), 64, 1024, phase).await,
                Err(e) => Measured {
                    first_error: Some(e.to_string()),
                    ..Measured::default()
                },
            },
        }
    }
}

/// Run `profile`.
pub(crate) async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = options
        .gateway
        .clone()
        .unwrap_or_else(crate::default_gateway);
    if !gateway.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p wsproxy-gateway",
            gateway.display()
        )
        .into());
    }
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("wsproxy-profile"));
    std::fs::create_dir_all(&out)?;
    let strace = procs::installed("strace");
    let perf = procs::installed_from("perf", "linux-perf");
    let (echo, echo_addr) = Proc::echo_backend()?;
    let (wsgate, addr) = start_gateway(&gateway, "wsgate", &echo_addr)?;
    for scenario in [Scenario::Cycle32, Scenario::Rtt64] {
        let outcome = match &strace {
            Ok(strace) => trace(strace, &wsgate, &addr, scenario, &options, &out).await,
            Err(e) => Err(e.clone()),
        };
        if let Err(e) = outcome {
            println!("{} under strace: {e}", scenario.name());
        }
        let outcome = match &perf {
            Ok(perf) => record(perf, &wsgate, &addr, scenario, &options, &out).await,
            Err(e) => Err(e.clone()),
        };
        if let Err(e) = outcome {
            println!("{} under perf: {e}", scenario.name());
        }
    }
    drop(wsgate);
    drop(echo);
    println!("\nfiles in {}", out.display());
    Ok(())
}

/// Run `scenario` under `strace -c -f -p`, and print the system calls
/// per operation.
async fn trace(
    strace: &Path,
    wsgate: &Proc,
    addr: &str,
    scenario: Scenario,
    options: &Options,
    out: &Path,
) -> Result<(), String> {
    let summary = out.join(format!("strace-{}.txt", scenario.name()));
    let _ = std::fs::remove_file(&summary);
    let mut tracer = Proc::spawn_quitting(
        "strace",
        Command::new(strace)
            .args(["-c", "-f", "-o"])
            .arg(&summary)
            .args(["-p", &wsgate.pid().to_string()]),
        "INT",
    )
    .map_err(|e| e.to_string())?;
    // Attached once every thread of the gateway has a tracer.
    let tracer_pid = tracer.pid();
    wait_for(
        &mut tracer,
        "strace could not attach (ptrace not permitted?)",
        || traced_by(wsgate.pid(), tracer_pid),
    )
    .await?;
    let measured = scenario.run(addr, wsgate, options.phase).await;
    // On SIGINT strace detaches and writes its summary.
    tracer.stop_within(Duration::from_secs(10));
    let text = std::fs::read_to_string(&summary)
        .map_err(|e| format!("no summary in {}: {e}", summary.display()))?;
    let ops = measured.sample.ops.max(1) as f64;
    let mut calls = syscall_counts(&text);
    calls.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    println!(
        "\nwsgate {} under strace: {} {}s ({} errors); system calls per {}:",
        scenario.name(),
        measured.sample.ops,
        scenario.operation(),
        measured.sample.errors,
        scenario.operation()
    );
    for (name, count) in &calls {
        if *count as f64 / ops >= 0.01 || name == "total" {
            println!("  {:<20} {:>8.2}", name, *count as f64 / ops);
        }
    }
    Ok(())
}

/// Whether every thread of `pid` is traced by `tracer`.
fn traced_by(pid: u32, tracer: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let want = tracer.to_string();
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|v| v.trim() == want)
        })
    })
}

/// The calls per system call (and `total`) in a `strace -c` summary.
fn syscall_counts(summary: &str) -> Vec<(String, u64)> {
    // The columns are right-aligned under "% time seconds usecs/call
    // calls errors syscall"; some may be empty (a total without
    // usecs/call, a call without errors).
    let Some(calls_end) = summary
        .lines()
        .find(|l| l.contains("syscall"))
        .and_then(|header| header.find(" calls"))
        .map(|at| at + " calls".len())
    else {
        return Vec::new();
    };
    summary
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|f| f.parse::<f64>().is_ok())
        })
        .filter_map(|line| {
            let name = line.split_whitespace().last()?;
            let calls = line.get(..calls_end)?.split_whitespace().last()?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Run `scenario` under `perf record -e cpu-clock -g -p`, and save and
/// print the top of `perf report`.
async fn record(
    perf: &Path,
    wsgate: &Proc,
    addr: &str,
    scenario: Scenario,
    options: &Options,
    out: &Path,
) -> Result<(), String> {
    let data = out.join(format!("perf-{}.data", scenario.name()));
    let report = out.join(format!("perf-{}.txt", scenario.name()));
    let _ = std::fs::remove_file(&data);
    let mut recorder = Proc::spawn_quitting(
        "perf",
        Command::new(perf)
            .args(["record", "-e", "cpu-clock", "-g", "-p"])
            .arg(wsgate.pid().to_string())
            .arg("-o")
            .arg(&data),
        "INT",
    )
    .map_err(|e| e.to_string())?;
    // perf writes its file's header once the events are open.
    wait_for(
        &mut recorder,
        "perf cannot record (perf_event_paranoid, or perf events not permitted here)",
        || std::fs::metadata(&data).is_ok_and(|m| m.len() > 0),
    )
    .await?;
    let measured = scenario.run(addr, wsgate, options.phase).await;
    recorder.stop_within(Duration::from_secs(60));
    let output = Command::new(perf)
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--percent-limit",
            "2",
            "-i",
        ])
        .arg(&data)
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "perf report failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    std::fs::write(&report, &output.stdout).map_err(|e| e.to_string())?;
    println!(
        "\nwsgate {} under perf ({} {}s): top symbols by CPU (self), full report in {}",
        scenario.name(),
        measured.sample.ops,
        scenario.operation(),
        report.display()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    for line in text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains('%'))
        .take(20)
    {
        println!("  {}", line.trim());
    }
    Ok(())
}

/// Wait (every 20 ms, at most 10 s) until `ready`; fails with `failure`
/// if `tool` ends first or time runs out.
async fn wait_for(
    tool: &mut Proc,
    failure: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if ready() {
            return Ok(());
        }
        if tool.has_exited() {
            return Err(failure.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{failure} (not ready after 10 s)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summaries() {
        let summary = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 41.20    0.120000          12     10000           epoll_wait
 30.00    0.090000           3     30000      1200 recvfrom
------ ----------- ----------- --------- --------- ----------------
100.00    0.210000                 40000      1200 total
";
        assert_eq!(
            syscall_counts(summary),
            [
                ("epoll_wait".to_owned(), 10000),
                ("recvfrom".to_owned(), 30000),
                ("total".to_owned(), 40000)
            ]
        );
    }
}
