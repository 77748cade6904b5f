//! `permessage-deflate` negotiated end to end through the proxy, with
//! compressed messages intact. tungstenite has no deflate, so both ends
//! are Python's `websockets` (installed by `.ci/test`).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    let stdout = backend.0.stdout.take().unwrap();
    let line = within(
        "the Python backend's port",
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
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

    let (proxy, tunnels) = proxy_to(([127, 0, 0, 1], port).into(), |l| l).await;
    let mut client = Reaped(
        Command::new("python3")
            .arg(script("deflate_client.py"))
            .arg(format!("ws://{proxy}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = drain(client.0.stdout.take().unwrap());
    let stderr = drain(client.0.stderr.take().unwrap());
    let status = within("the Python client", async {
        loop {
            if let Some(status) = client.0.try_wait().unwrap() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let stdout = within("client output", stdout).await.unwrap();
    let stderr = within("client output", stderr).await.unwrap();
    assert!(status.success(), "client failed: {stdout}\n{stderr}");
    assert!(stdout.starts_with("ok permessage-deflate"), "{stdout}");
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
}

/// Read all of `pipe` on a blocking thread.
fn drain(mut pipe: impl Read + Send + 'static) -> tokio::task::JoinHandle<String> {
    tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
