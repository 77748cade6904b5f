//! What the gateway's test files share beyond `wsproxy_test_support`: a
//! `wsgate` child process (`CARGO_BIN_EXE_wsgate` is only set for this
//! package's tests) and what its status page says.

// Each test file uses its own part of this module.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wsproxy_test_support::{LIMIT, Leaf, PemFiles};

/// A `wsgate` child process, killed and reaped on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Gateway {
    /// Start `wsgate --listen 127.0.0.1:0 ARGS` and wait for its address.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        Self::spawn(command)
    }

    /// [`start`](Self::start) with the open file limit (soft and hard) at
    /// `nofile`, as `ulimit -n` sets it; the shell `exec`s wsgate, so the
    /// child's PID is wsgate's.
    pub fn start_with_nofile(nofile: u64, args: &[&str]) -> Self {
        let mut command = Command::new("sh");
        command
            .args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" \"$@\"")])
            .arg(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        // Read the first line on a thread, so the wait is bounded, and keep
        // reading both pipes so the gateway never writes to a closed one.
        let stdout = child.stdout.take().unwrap();
        let (first, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let _ = first.send(line.unwrap_or_default());
            }
        });
        let stderr = child.stderr.take().unwrap();
        let (log, logged) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let _ = log.send(line.unwrap_or_default());
            }
        });
        let line = match lines.recv_timeout(LIMIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                let mut log = Vec::new();
                while let Ok(line) = logged.recv_timeout(Duration::from_secs(1)) {
                    log.push(line);
                }
                panic!(
                    "wsgate printed no address ({e}; {status:?}); its log:\n{}",
                    log.join("\n")
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("wsgate listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            log: logged,
        }
    }

    /// What the gateway has logged so far (that was not read before).
    pub fn log(&self) -> String {
        let mut lines = Vec::new();
        while let Ok(line) = self.log.try_recv() {
            lines.push(line);
        }
        lines.join("\n")
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run wsgate with `args` and expect a usage error (exit code 2); its stderr.
pub fn refused(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{args:?} must be a usage error"
    );
    String::from_utf8(output.stderr).unwrap()
}

/// The `--tls-cert` and `--tls-key` flags for `cert`.
pub fn tls_flags(cert: &Leaf) -> [&str; 4] {
    let files = cert.files();
    [
        "--tls-cert",
        PemFiles::arg(&files.cert),
        "--tls-key",
        PemFiles::arg(&files.key),
    ]
}

/// The tunnels the status page says were opened in all and over HTTP/2.
pub fn opened(page: &str) -> (u64, u64) {
    let rest = page
        .split_once("Tunnels opened: ")
        .unwrap_or_else(|| panic!("no tunnel counts on the page:\n{page}"))
        .1;
    let (all, rest) = rest.split_once(" (over HTTP/2: ").unwrap();
    let (h2, _) = rest.split_once(')').unwrap();
    (all.parse().unwrap(), h2.parse().unwrap())
}
