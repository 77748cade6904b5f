//! A backend process killed with `SIGKILL` under 500 open tunnels: every
//! client hears Close 1011 from the proxy instead of a bare TCP close
//! (which browsers report as 1006), and every tunnel ends.

use std::os::unix::process::ExitStatusExt;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wsproxy_e2e::*;
use wsproxy_test_support::*;

const TUNNELS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_500_tunnels_gets_every_client_a_1011() {
    // Each tunnel takes three descriptors in this process: the client's,
    // and the proxy's two.
    let limit = rlimit::increase_nofile_limit(8192).unwrap();
    assert!(
        limit >= 4 * TUNNELS as u64,
        "this test needs {} descriptors, the hard limit is {limit}",
        4 * TUNNELS
    );
    let (mut backend, addr) = python_backend("echo_backend.py").await;
    let (proxy, tunnels) = proxy_to(addr, |l| l).await;
    let url = format!("ws://{proxy}/");

    // 500 WebSockets, 50 handshakes at a time, each one echoing end to end.
    let clients: Vec<_> = futures_util::stream::iter(0..TUNNELS)
        .map(|i| {
            let url = url.clone();
            async move {
                let mut ws = connect(&url).await;
                echo(&mut ws, Message::text(format!("client {i}"))).await;
                ws
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert_eq!(tunnels.open(), TUNNELS);

    // kill -9 by its PID: no Close frame, no goodbye.
    backend.0.kill().unwrap();
    let status = tokio::task::block_in_place(|| backend.0.wait()).unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");

    let ends: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let code = match within("the proxy's Close", ws.next()).await {
                    Some(Ok(Message::Close(Some(frame)))) => u16::from(frame.code),
                    other => panic!("expected a Close frame, got {other:?}"),
                };
                // Reading on sends tungstenite's answer; then the stream
                // ends.
                while let Some(Ok(_)) = within("the end of the stream", ws.next()).await {}
                code
            })
        })
        .collect();
    let mut codes = Vec::with_capacity(TUNNELS);
    for end in ends {
        codes.push(end.await.unwrap());
    }
    let told = codes.iter().filter(|&&code| code == 1011).count();
    assert_eq!(told, TUNNELS, "codes other than 1011: {codes:?}");
    assert!(
        wait_until(LIMIT, || tunnels.open() == 0).await,
        "open: {}",
        tunnels.open()
    );
    // Counted as the backend closing (or, for a reset, an error), as
    // before.
    let ended = tunnels.stats().ended;
    assert_eq!(
        ended.backend_close + ended.error,
        TUNNELS as u64,
        "{ended:?}"
    );
}
