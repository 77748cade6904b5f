//! The figures of `compare` as a table on stdout and as a markdown
//! section (machine, date, command, table) for BENCHMARKS.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use crate::median;

/// Figures by target and figure key, one value per round.
pub(super) type Figures = BTreeMap<(&'static str, &'static str), Vec<f64>>;

/// How a figure's rounds make its value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Combine {
    /// The median of the rounds.
    Median,
    /// The largest of the rounds (failure counts: the worst round).
    Worst,
    /// The target's `rtt1` rate over the direct target's.
    OfDirect,
}

/// A row of the table.
#[derive(Debug)]
struct Row {
    key: &'static str,
    label: String,
    combine: Combine,
}

/// The table of one run of `compare`.
#[derive(Debug)]
pub(super) struct Report<'a> {
    figures: &'a Figures,
    /// The targets in the order they ran.
    targets: Vec<&'static str>,
    rows: Vec<Row>,
}

impl<'a> Report<'a> {
    /// The report of `figures` for `targets`, with the idle and storm
    /// counts the run used in the labels.
    pub(super) fn new(
        figures: &'a Figures,
        targets: &[&'static str],
        idle: usize,
        storm: usize,
    ) -> Self {
        use Combine::{Median, OfDirect, Worst};
        let rows = [
            (
                "rtt1_rate",
                "rtt1: messages/s (1 conn, 32 B)".to_owned(),
                Median,
            ),
            (
                "rtt1_of_direct",
                "rtt1: rate / direct's".to_owned(),
                OfDirect,
            ),
            (
                "rtt1_cpu",
                "rtt1: proxy CPU per message, µs".to_owned(),
                Median,
            ),
            ("rtt1_p50", "rtt1: p50 round trip, µs".to_owned(), Median),
            ("rtt1_p99", "rtt1: p99 round trip, µs".to_owned(), Median),
            (
                "rtt64_rate",
                "rtt64: messages/s (64 conns, 1 KiB)".to_owned(),
                Median,
            ),
            (
                "rtt64_cpu",
                "rtt64: proxy CPU per message, µs".to_owned(),
                Median,
            ),
            (
                "rtt64_user",
                "rtt64: of which user space, µs".to_owned(),
                Median,
            ),
            ("rtt64_p50", "rtt64: p50 round trip, µs".to_owned(), Median),
            ("rtt64_p99", "rtt64: p99 round trip, µs".to_owned(), Median),
            (
                "stream16_mb",
                "stream16: MB/s echoed (16 KiB msgs)".to_owned(),
                Median,
            ),
            (
                "stream16_cpu",
                "stream16: proxy CPU per message, µs".to_owned(),
                Median,
            ),
            ("cycle32_rate", "cycle32: cycles/s".to_owned(), Median),
            (
                "cycle32_cpu",
                "cycle32: proxy CPU per cycle, µs".to_owned(),
                Median,
            ),
            (
                "cycle32_user",
                "cycle32: of which user space, µs".to_owned(),
                Median,
            ),
            ("cycle32_p50", "cycle32: p50 upgrade, µs".to_owned(), Median),
            ("cycle32_p99", "cycle32: p99 upgrade, µs".to_owned(), Median),
            (
                "cycle32_errors",
                "cycle32: failed cycles (worst round)".to_owned(),
                Worst,
            ),
            (
                "idle_kib",
                format!("idle: proxy RSS per tunnel, KiB ({idle})"),
                Median,
            ),
            (
                "storm_ms",
                format!("storm: ms until {storm} open and echoed"),
                Median,
            ),
            (
                "storm_failures",
                "storm: failures (worst round)".to_owned(),
                Worst,
            ),
            (
                "storm_overflows",
                "storm: SYNs dropped, full accept queue (worst round)".to_owned(),
                Worst,
            ),
            ("storm_cpu_ms", "storm: proxy CPU, ms".to_owned(), Median),
            (
                "storm_peak_mib",
                "storm: proxy peak RSS, MiB".to_owned(),
                Median,
            ),
        ]
        .into_iter()
        .map(|(key, label, combine)| Row {
            key,
            label,
            combine,
        })
        .collect();
        Report {
            figures,
            targets: targets.to_vec(),
            rows,
        }
    }

    /// The value of `row` for `target` over the rounds (NaN if none).
    fn value(&self, row: &Row, target: &'static str) -> f64 {
        let rounds = |target, key| self.figures.get(&(target, key)).map(Vec::as_slice);
        match row.combine {
            Combine::Median => rounds(target, row.key).map_or(f64::NAN, median),
            Combine::Worst => rounds(target, row.key)
                .into_iter()
                .flatten()
                .copied()
                .filter(|v| v.is_finite())
                .reduce(f64::max)
                .unwrap_or(f64::NAN),
            Combine::OfDirect => {
                let rate = |target| rounds(target, "rtt1_rate").map_or(f64::NAN, median);
                rate(target) / rate("direct")
            }
        }
    }

    /// The columns: each target, then wsgate over each other proxy.
    fn columns(&self) -> (Vec<String>, Vec<&'static str>) {
        let names = self.targets.iter().map(|t| display(t).to_owned()).collect();
        let others = self
            .targets
            .iter()
            .copied()
            .filter(|t| !matches!(*t, "direct" | "wsgate"))
            .collect();
        (names, others)
    }

    /// One row's cells: each target's value, then the ratios.
    fn cells(&self, row: &Row) -> Vec<String> {
        let (_, others) = self.columns();
        let wsgate = self.value(row, "wsgate");
        let mut cells: Vec<String> = self
            .targets
            .iter()
            .map(|t| match row.combine {
                Combine::OfDirect => crate::ratio(self.value(row, t), 1.0),
                _ => number(self.value(row, t)),
            })
            .collect();
        cells.extend(
            others
                .iter()
                .map(|other| crate::ratio(wsgate, self.value(row, other))),
        );
        cells
    }

    /// The header of the ratio columns.
    fn ratio_names(&self) -> Vec<String> {
        let (_, others) = self.columns();
        others
            .iter()
            .map(|other| format!("wsgate/{}", display(other)))
            .collect()
    }

    /// The table as plain text.
    pub(super) fn table(&self) -> String {
        let (names, _) = self.columns();
        let mut out = format!("{:<42}", "figure (median of rounds)");
        for name in names.iter().chain(&self.ratio_names()) {
            let _ = write!(out, " {name:>9}");
        }
        out.push('\n');
        for row in &self.rows {
            let _ = write!(out, "{:<42}", row.label);
            for cell in self.cells(row) {
                let _ = write!(out, " {cell:>9}");
            }
            out.push('\n');
        }
        out
    }

    /// The markdown section: machine, date, command, settings, table.
    pub(super) fn markdown(&self, settings: &str) -> String {
        let facts = [
            ("Machine", machine()),
            ("Date", run_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
            ("Command", format!("`{}`", command_line())),
            ("Settings", settings.to_owned()),
        ];
        self.section(&facts)
    }

    /// The markdown section with `facts` listed above the table.
    fn section(&self, facts: &[(&str, String)]) -> String {
        let mut out = String::from("### `wsproxy-bench compare`\n\n");
        for (name, fact) in facts {
            let _ = writeln!(out, "- {name}: {fact}");
        }
        out.push_str(
            "- Targets take turns within each round, each started afresh; a figure is the \
             median of the rounds (failures: the worst round); the ratios are wsgate's figure \
             over the other's, from this run.\n\n",
        );
        let (names, _) = self.columns();
        let header: Vec<String> = names.into_iter().chain(self.ratio_names()).collect();
        let _ = writeln!(out, "| figure | {} |", header.join(" | "));
        let _ = writeln!(out, "|---|{}", "--:|".repeat(header.len()));
        for row in &self.rows {
            let _ = writeln!(out, "| {} | {} |", row.label, self.cells(row).join(" | "));
        }
        out
    }
}

/// A target's name in the table.
fn display(target: &str) -> &str {
    match target {
        "haproxy" => "HAProxy",
        other => other,
    }
}

/// A figure with as many decimals as it needs, or `-` when missing.
fn number(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v.fract() == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Cores, memory, kernel and the proxies' versions.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or("? GiB".to_owned(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let kernel = run_output("uname", &["-r"]);
    let version = |binary: &str| {
        crate::procs::installed(binary).map_or_else(
            |_| "?".to_owned(),
            |path| run_output(path.as_os_str(), &["-v"]),
        )
    };
    // `nginx -v` prints "nginx version: nginx/1.22.1" on stderr.
    let nginx = version("nginx");
    let nginx = nginx.rsplit('/').next().unwrap_or("?");
    // `haproxy -v`: "HAProxy version 2.6.12-1+deb12u4 2023/12/22 - ...".
    let haproxy = version("haproxy");
    let haproxy = haproxy.split_whitespace().nth(2).unwrap_or("?");
    format!(
        "{cores} cores, {memory} memory, Linux {kernel}; nginx {nginx}, HAProxy {haproxy}; \
         load generator, echo backend and proxy on the same machine"
    )
}

/// The first line `program args` printed (on stdout, else stderr), or `?`.
fn run_output(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8(text)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_owned))
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// This run's command line, as `wsproxy-bench ...`.
fn command_line() -> String {
    std::iter::once("wsproxy-bench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_worst_rounds_and_ratios() {
        let mut figures = Figures::new();
        figures.insert(("direct", "rtt1_rate"), vec![100.0, 90.0, 110.0]);
        figures.insert(("wsgate", "rtt1_rate"), vec![50.0, 60.0, 40.0]);
        figures.insert(("nginx", "rtt1_rate"), vec![25.0]);
        figures.insert(("wsgate", "storm_failures"), vec![0.0, 3.0, 1.0]);
        let report = Report::new(&figures, &["direct", "wsgate", "nginx", "haproxy"], 10, 20);
        let row = |key| report.rows.iter().find(|r| r.key == key).unwrap();
        assert_eq!(
            report.cells(row("rtt1_rate")),
            ["100", "50", "25", "-", "2.00", "-"]
        );
        assert_eq!(report.value(row("rtt1_of_direct"), "wsgate"), 0.5);
        assert_eq!(report.value(row("storm_failures"), "wsgate"), 3.0);
        let markdown = report.section(&[("Settings", "s".to_owned())]);
        assert!(markdown.contains(
            "| figure | direct | wsgate | nginx | HAProxy | wsgate/nginx | wsgate/HAProxy |"
        ));
        assert!(
            markdown.contains("| rtt1: messages/s (1 conn, 32 B) | 100 | 50 | 25 | - | 2.00 | - |")
        );
    }
}
