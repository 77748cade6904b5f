//! Python `websockets` scripts as child processes, for what tungstenite
//! cannot do (permessage-deflate) or a process that can be killed.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::time::within;

/// A child process, killed (`SIGKILL`) and reaped on drop.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path of the Python script `name` in this crate's `py/`.
pub fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(name)
}

/// Start the Python backend `py/NAME` (see [`python_script`]), which
/// prints `listening on PORT` and serves until its standard input closes;
/// returns the process and its address. Python's `websockets` is installed
/// by `.ci/test`.
pub async fn python_backend(name: &str) -> (Reaped, SocketAddr) {
    let check = Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .expect("python3 is needed for this test");
    assert!(
        check.success(),
        "Python's websockets is missing: run `bash .ci/test` or `python3 -m pip install websockets`"
    );
    let mut backend = Reaped(
        Command::new("python3")
            .arg(python_script(name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = backend.0.stdout.take().unwrap();
    let line = within(
        "the Python backend's port",
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected {line:?}"))
        .parse()
        .unwrap();
    (backend, ([127, 0, 0, 1], port).into())
}
