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
    /// Standard output after its first line.
    stdout: mpsc::Receiver<String>,
}

impl Gateway {
    /// Start `wsgate --listen 127.0.0.1:0 ARGS` and wait for its address.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        Self::spawn(command)
    }

    /// Start `wsgate ARGS` (its listeners from the configuration) and
    /// wait for the first listener's address.
    pub fn start_bare(args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        command.args(args);
        Self::spawn(command)
    }

    /// The address of the next listener (`wsgate listening on ...`).
    pub fn next_listen_addr(&self) -> SocketAddr {
        self.next_addr("wsgate listening on ")
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
            stdout: lines,
        }
    }

    /// The admin listener's address (with `--admin-listen`), from the
    /// line that follows the public one.
    pub fn admin_addr(&self) -> SocketAddr {
        self.next_addr("wsgate admin on ")
    }

    /// The redirecting listener's address (with `[redirect] address`),
    /// from the next line after the public one (and the admin one).
    pub fn redirect_addr(&self) -> SocketAddr {
        self.next_addr("wsgate redirecting on ")
    }

    fn next_addr(&self, prefix: &str) -> SocketAddr {
        let line = self
            .stdout
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("a line \"{prefix}...\""));
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .unwrap()
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

/// A folder of its own for a test's files (a configuration, a log),
/// removed on drop.
pub struct Folder(pub std::path::PathBuf);

impl Folder {
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Write `text` to the file `name`; its path.
    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        // Written whole then renamed, so a reload never reads half of it.
        let partial = self.0.join(format!(".{name}.partial"));
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Gateway {
    /// Send the gateway `signal` (e.g. `HUP`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait (up to [`LIMIT`]) until the log has a line containing `text`;
    /// everything logged until then.
    pub fn wait_log(&self, text: &str) -> String {
        let start = Instant::now();
        let mut log = String::new();
        while start.elapsed() < LIMIT {
            match self.log.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let found = line.contains(text);
                    log.push_str(&line);
                    log.push('\n');
                    if found {
                        return log;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no log line with {text:?}; the log:\n{log}");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Run `wsgate ARGS` to its end (killed, and the test failed, if that
/// takes longer than [`LIMIT`]): its exit code and standard error.
pub fn run(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsgate {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), reader.join().unwrap())
}

/// Run wsgate with `args` and expect a usage error (exit code 2); its stderr.
pub fn refused(args: &[&str]) -> String {
    let (code, stderr) = run(args);
    assert_eq!(code, Some(2), "{args:?} must be a usage error:\n{stderr}");
    stderr
}

/// `wsgate --check` on a file of `text` in `folder`, which must refuse it
/// (exit code 2); its stderr.
pub fn check_refuses(folder: &Folder, text: &str) -> String {
    let file = folder.write("wsgate.toml", text);
    refused(&["--check", "--config", PemFiles::arg(&file)])
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

/// One HTTP/1.1 request over `stream` (TLS or not); the head of the
/// answer.
pub async fn ask<S>(stream: &mut S, request: &str) -> wsproxy_test_support::Head
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let mut read = Vec::new();
    while !read.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before an answer");
        read.extend_from_slice(&buf[..n]);
    }
    let end = read.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let rest = read.split_off(end + 4);
    let text = String::from_utf8(read).unwrap();
    let status = text[9..12].parse().unwrap();
    wsproxy_test_support::Head { status, text, rest }
}
