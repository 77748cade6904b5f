//! `permessage-deflate` negotiated end to end through the proxy, with
//! compressed messages intact. tungstenite has no deflate, so both ends
//! are Python's `websockets` (installed by `.ci/test`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use wsproxy_e2e::*;

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(name)
}

#[tokio::test]
async fn permessage_deflate_works_end_to_end() {
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
            .arg(script("deflate_backend.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(backend.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected {line:?}"))
        .parse()
        .unwrap();

    let (proxy, tunnels) = proxy_to(([127, 0, 0, 1], port).into(), |l| l).await;
    let client = tokio::process::Command::new("python3")
        .arg(script("deflate_client.py"))
        .arg(format!("ws://{proxy}/"))
        .kill_on_drop(true)
        .output();
    let output = within("python client", client).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("ok permessage-deflate"), "{stdout}");
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
}
