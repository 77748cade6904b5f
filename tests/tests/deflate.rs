//! `permessage-deflate` negotiated end to end through the proxy, with
//! compressed messages intact. tungstenite has no deflate, so both ends
//! are Python's `websockets` (installed by `.ci/test`).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use wsproxy_e2e::*;
use wsproxy_test_support::*;

#[tokio::test]
async fn permessage_deflate_works_end_to_end() {
    let (_backend, backend) = python_backend("deflate_backend.py").await;
    let (proxy, tunnels) = proxy_to(backend, |l| l).await;
    let mut client = Reaped(
        Command::new("python3")
            .arg(python_script("deflate_client.py"))
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
