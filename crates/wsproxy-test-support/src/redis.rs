//! A `redis-server` of the test's own on a free port of 127.0.0.1.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::python::Reaped;
use crate::time::{LIMIT, wait_until};

/// A `redis-server` (Debian's package; `.ci/test` installs it) with no
/// persistence, killed and reaped on drop; [`stop`](Self::stop) and
/// [`start_again`](Self::start_again) take it down and up on the same port.
#[derive(Debug)]
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    process: Option<Reaped>,
}

impl RedisServer {
    /// Start one on a free port and wait until it answers.
    pub async fn start() -> Self {
        // A free port: bound by the OS, released for the server to take.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            process: None,
        };
        server.start_again().await;
        server
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Kill it (`SIGKILL`): connections drop, nothing is saved.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// Start it again on the same port, empty, and wait until it answers.
    pub async fn start_again(&mut self) {
        assert!(
            Command::new("redis-server")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "redis-server is missing: run `bash .ci/test` or `apt-get install redis-server`"
        );
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.process = Some(Reaped(child));
        let addr = self.addr;
        assert!(
            wait_until(LIMIT, || self.ping(addr)).await,
            "redis-server answers on {addr}"
        );
    }

    fn ping(&self, addr: SocketAddr) -> bool {
        self.command(addr, &["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    fn command(&self, addr: SocketAddr, args: &[&str]) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(LIMIT)).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// One command's reply as RESP text (a short reply, read once).
    pub fn query(&self, args: &[&str]) -> String {
        self.command(self.addr, args).expect("redis-server answers")
    }

    /// The integer of an integer reply (`ZCARD`, `DBSIZE`, ...).
    pub fn integer(&self, args: &[&str]) -> i64 {
        let reply = self.query(args);
        reply
            .strip_prefix(':')
            .and_then(|r| r.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("{args:?}: not an integer reply: {reply:?}"))
    }
}
