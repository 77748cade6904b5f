//! The front door of `wsgate` under clients that say nothing, trickle,
//! hold connections or use up descriptors: the timeout and limit flags
//! reach the server, and normal clients are still served.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use wsproxy_test_support::{
    GOAWAY, H2_PREFACE, LIMIT, Leaf, connect_request, echo_backend, h2_client, h2_frames,
    read_to_close, silent_backend,
};

use support::{Gateway, tls_flags};

/// When the gateway closes `stream`, counted from `since`; what it sent
/// before.
async fn closed_after(stream: &mut TcpStream, since: Instant) -> (Duration, Vec<u8>) {
    let got = read_to_close(stream).await;
    (since.elapsed(), got)
}

/// Each timeout flag reaches the server: with every default at 10 s or
/// more, a close within 5 s can only come from the flag.
#[tokio::test]
async fn timeout_flags_reach_the_server() {
    let gateway = Gateway::start(&[
        "--demo",
        "--detect-timeout",
        "300ms",
        "--request-head-timeout",
        "700ms",
        "--keepalive-timeout",
        "500ms",
        "--http2-idle-timeout",
        "400ms",
    ]);
    let addr = gateway.addr;
    let bound = Duration::from_secs(5);

    // Says nothing: the detect timeout.
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (after, _) = closed_after(&mut silent, start).await;
    assert!(
        after >= Duration::from_millis(250) && after < bound,
        "detect: {after:?}"
    );

    // Half a head: the request head timeout, from its first byte.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let start = Instant::now();
    let (after, _) = closed_after(&mut half, start).await;
    assert!(
        after >= Duration::from_millis(600) && after < bound,
        "head: {after:?}"
    );

    // Idle after a response: the keep-alive timeout.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    while !response.ends_with(b"ok\n") {
        let n = timeout(LIMIT, kept.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{response:?}");
        response.extend_from_slice(&chunk[..n]);
    }
    let start = Instant::now();
    let (after, _) = closed_after(&mut kept, start).await;
    assert!(
        after >= Duration::from_millis(450) && after < bound,
        "keep-alive: {after:?}"
    );

    // HTTP/2 with no stream: GOAWAY after the idle timeout.
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(H2_PREFACE).await.unwrap();
    let start = Instant::now();
    let (after, frames) = closed_after(&mut h2, start).await;
    assert!(
        after >= Duration::from_millis(350) && after < bound,
        "h2 idle: {after:?}"
    );
    let frames = h2_frames(&frames);
    assert!(frames.iter().any(|&(kind, _)| kind == GOAWAY), "{frames:?}");
}

#[tokio::test]
async fn the_tls_handshake_timeout_flag_reaches_the_server() {
    let cert = Leaf::localhost();
    let mut args = vec!["--demo", "--tls-handshake-timeout", "300ms"];
    args.extend(tls_flags(&cert));
    let gateway = Gateway::start(&args);
    let start = Instant::now();
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    let (after, _) = closed_after(&mut silent, start).await;
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_secs(5),
        "{after:?}"
    );
}

#[tokio::test]
async fn the_http2_handshake_flag_reaches_the_server() {
    let (backend, accepted) = silent_backend().await;
    let route = format!("/ws=ws://{backend}");
    let gateway = Gateway::start(&["--route", &route, "--h2-max-handshakes", "2"]);
    let tcp = TcpStream::connect(gateway.addr).await.unwrap();
    let mut sender = h2_client(tcp).await;
    timeout(LIMIT, sender.ready()).await.unwrap().unwrap();
    let mut pending = Vec::new();
    for _ in 0..6 {
        let request = connect_request(gateway.addr, "/ws", &[]);
        pending.push(tokio::spawn(sender.send_request(request)));
    }
    let mut refused = 0;
    for task in pending.iter_mut() {
        if let Ok(Ok(Ok(response))) = timeout(Duration::from_secs(2), &mut *task).await {
            assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
            refused += 1;
        }
    }
    assert_eq!(refused, 4);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// Open WebSockets hold every descriptor the gateway has (two each:
/// client and backend), so `accept` fails and keeps failing: the failure
/// is logged, not once per failure; the accept loop waits between tries
/// (10 ms doubling to a second) instead of spinning, each time telling
/// one waiting client 503 from a descriptor kept in reserve; and once
/// the WebSockets close, the clients still waiting are served.
#[tokio::test]
async fn out_of_descriptors_is_logged_answered_and_survived() {
    let backend = echo_backend().await;
    let route = format!("/echo=ws://{backend}");
    // Tunnels until the gateway can take no more (at most 128 / 2). If the
    // descriptors left over the gateway's own are odd, the last one takes
    // a client whose backend connect then fails (502), and each client
    // answered frees its descriptor for the next: one more descriptor
    // makes the tunnels take them all.
    let mut attempt = None;
    for nofile in [128, 129] {
        let gateway = Gateway::start_with_nofile(
            nofile,
            &[
                "--route",
                &route,
                "--workers",
                "1",
                "--max-client-conns",
                "100000",
            ],
        );
        let mut tunnels = Vec::new();
        let mut spare = false;
        for _ in 0..64 {
            let url = format!("ws://{}/echo", gateway.addr);
            match timeout(
                Duration::from_secs(2),
                tokio_tungstenite::connect_async(url),
            )
            .await
            {
                Ok(Ok((mut ws, _))) => {
                    ws.send(Message::text("open")).await.unwrap();
                    match timeout(Duration::from_secs(2), ws.next()).await {
                        Ok(Some(Ok(_))) => tunnels.push(ws),
                        _ => break,
                    }
                }
                Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response)))
                    if response.status() == http::StatusCode::BAD_GATEWAY =>
                {
                    spare = true;
                    break;
                }
                _ => break,
            }
        }
        if !spare {
            attempt = Some((gateway, tunnels));
            break;
        }
    }
    let (gateway, tunnels) = attempt.expect("an even number of descriptors left");
    let addr = gateway.addr;
    assert!(tunnels.len() >= 20, "only {} tunnels", tunnels.len());
    // Clients that now wait for the gateway to accept them.
    let mut waiting = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        waiting.push(stream);
    }
    let mut log = String::new();
    let logged = timeout(LIMIT, async {
        loop {
            log.push_str(&gateway.log());
            if log.contains("accept failed") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(logged.is_ok(), "no accept failure logged:\n{log}");
    assert!(log.contains("Too many open files"), "{log}");
    // Two seconds of running out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    log.push_str(&gateway.log());
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("accept failed"))
        .collect();
    assert!(warnings.len() <= 4, "{} warnings:\n{log}", warnings.len());
    let mut refused = 0;
    let mut still_waiting = Vec::new();
    for mut stream in waiting {
        let mut head = [0u8; 12];
        match timeout(Duration::from_millis(20), stream.read_exact(&mut head)).await {
            Ok(Ok(_)) => {
                assert_eq!(&head, b"HTTP/1.1 503", "{log}");
                refused += 1;
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => still_waiting.push(stream),
        }
    }
    assert!(refused >= 1, "no client was told 503:\n{log}");
    assert!(
        refused <= 20,
        "{refused} of 50 refused in 2 s: the loop does not wait\n{log}"
    );
    // The WebSockets close: descriptors free up, the rest are answered
    // (served, or refused if their turn at the reserve came first).
    drop(tunnels);
    let mut served = 0;
    for (i, stream) in still_waiting.iter_mut().enumerate() {
        let mut response = Vec::new();
        timeout(LIMIT, stream.read_to_end(&mut response))
            .await
            .unwrap_or_else(|_| panic!("client {i} never answered:\n{}", gateway.log()))
            .unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 503"),
            "{text}"
        );
        served += usize::from(text.starts_with("HTTP/1.1 200"));
    }
    assert!(
        served >= 1,
        "nobody served after recovery:\n{}",
        gateway.log()
    );
}

/// The attack of the issue: with 2,048 descriptors, 2,300 connections
/// that say nothing. Normal clients are still served: 100 WebSocket
/// handshakes all succeed, as the longest-idle silent connections make
/// room.
#[tokio::test]
async fn silent_connections_past_the_descriptor_limit_do_not_shut_clients_out() {
    let limit = rlimit::increase_nofile_limit(8192).unwrap();
    assert!(
        limit >= 3000,
        "this test needs 3,000 descriptors, the limit is {limit}"
    );
    let gateway = Gateway::start_with_nofile(2048, &["--demo"]);
    let addr = gateway.addr;
    let mut silent = Vec::new();
    for _ in 0..2300 {
        // A connect the kernel cannot queue (backlog full) is the
        // attacker's problem: go on.
        if let Ok(Ok(stream)) = timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
        {
            silent.push(stream);
        }
    }
    assert!(
        silent.len() > 2048,
        "only {} silent connections",
        silent.len()
    );
    let mut latencies = Vec::new();
    for i in 0..100 {
        let start = Instant::now();
        let (mut ws, _) = timeout(
            LIMIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/echo")),
        )
        .await
        .unwrap_or_else(|_| panic!("handshake {i} timed out"))
        .unwrap_or_else(|e| panic!("handshake {i} failed: {e}"));
        latencies.push(start.elapsed());
        ws.send(Message::text("still served")).await.unwrap();
        let echoed = timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed, Message::text("still served"));
    }
    latencies.sort();
    eprintln!(
        "100 handshakes during the attack: p50 {:?}, p99 {:?}",
        latencies[49], latencies[98]
    );
    assert!(
        gateway.log().contains("connection limit reached"),
        "the shedding is logged"
    );
    drop(silent);
}

/// The client of the issue: one byte every two seconds. A timer that
/// restarted with every byte would keep it for ever; the request head
/// timeout counts in all.
#[tokio::test]
async fn a_byte_every_two_seconds_does_not_keep_a_head_alive() {
    let gateway = Gateway::start(&["--demo", "--request-head-timeout", "3s"]);
    let mut slow = TcpStream::connect(gateway.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nX-Pad: ")
        .await
        .unwrap();
    let start = Instant::now();
    let mut closed_after = None;
    // At most ten bytes (20 s): the head must be cut well before.
    for _ in 0..10 {
        let mut byte = [0u8; 1];
        match timeout(Duration::from_secs(2), slow.read(&mut byte)).await {
            Ok(Ok(0) | Err(_)) => {
                closed_after = Some(start.elapsed());
                break;
            }
            Ok(Ok(_)) => panic!("the gateway answered a head that never ended"),
            Err(_) => {
                if slow.write_all(b"a").await.is_err() {
                    closed_after = Some(start.elapsed());
                    break;
                }
            }
        }
    }
    let closed_after = closed_after.expect("a byte every 2 s kept the connection open");
    assert!(
        closed_after >= Duration::from_millis(2_500) && closed_after < Duration::from_secs(8),
        "{closed_after:?}"
    );
}
