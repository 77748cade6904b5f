//! The frame-aware relay end to end: graceful drain with Close 1001,
//! keepalive pings, message limits, and the counters behind them.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as TFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error, Message};
use wsproxy::{Keepalive, MessageLimits};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

const KEY: Option<[u8; 4]> = Some([0x11, 0x22, 0x33, 0x44]);

/// Wait until no tunnel is open (a tunnel is counted in the stats before
/// it stops counting as open, but the peers may see it end a little
/// earlier).
async fn tunnels_end(tunnels: &wsproxy::Tunnels) {
    let tunnels = tunnels.clone();
    assert!(
        wait_until(LIMIT, || tunnels.open() == 0).await,
        "tunnels stay open"
    );
}

/// Messages and errors the backend saw, as (kind, length or close code).
fn backend_log(backend: &Backend) -> (Vec<(String, usize)>, Vec<String>) {
    let seen = backend.seen.lock().unwrap();
    let messages = seen
        .messages
        .iter()
        .map(|m| match m {
            Message::Close(_) => ("close".to_owned(), close_code(m).unwrap_or(0) as usize),
            Message::Text(t) => ("text".to_owned(), t.len()),
            Message::Binary(b) => ("binary".to_owned(), b.len()),
            Message::Ping(p) => ("ping".to_owned(), p.len()),
            Message::Pong(p) => ("pong".to_owned(), p.len()),
            Message::Frame(_) => ("frame".to_owned(), 0),
        })
        .collect();
    (messages, seen.errors.clone())
}

#[tokio::test]
async fn shutdown_waits_for_the_frame_in_flight_then_closes_both_sides_with_1001() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let (mut client, mut buf) = raw_websocket(proxy).await;

    // Half of a 100 kB binary frame is on its way when the shutdown starts.
    let payload = vec![0x5a; 100_000];
    let frame = ws_frame(true, 0x2, &payload, KEY);
    client.write_all(&frame[..50_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shutdown = tokio::spawn(tunnels.shutdown(LIMIT));

    // The client gets Close 1001 at once (nothing flows toward it),
    // unmasked as a server's frames are.
    let close = read_frame(&mut client, &mut buf).await.expect("a Close");
    assert_eq!(close.opcode, 0x8, "{close:?}");
    assert_eq!(close.close_code(), Some(1001));
    assert!(!close.masked);
    assert!(close.fin);

    // The backend gets nothing inside the unfinished frame...
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backend_log(&backend), (vec![], vec![]));
    // ...and once the frame is whole, the frame and then Close 1001.
    client.write_all(&frame[50_000..]).await.unwrap();
    backend
        .saw("Close 1001", |m| close_code(m) == Some(1001))
        .await;
    assert_eq!(
        backend_log(&backend),
        (
            vec![("binary".into(), 100_000), ("close".into(), 1001)],
            vec![]
        )
    );

    // The client answers the Close; the proxy then closes the connection
    // (the backend's echo and Close reply are not forwarded after the
    // proxy's Close).
    client
        .write_all(&ws_frame(true, 0x8, &1001u16.to_be_bytes(), KEY))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut client, &mut buf).await, None);
    within("shutdown resolves", shutdown).await.unwrap();
    let stats = tunnels.stats();
    assert_eq!((stats.open, stats.ended.shutdown), (0, 1), "{stats:?}");
}

#[tokio::test]
async fn a_client_in_the_middle_of_a_fragmented_message_sees_a_clean_close_1001() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let ws = connect(&format!("ws://{proxy}/")).await;
    let (mut sink, mut stream) = ws.split();

    // A message of 16 KiB fragments that never ends on its own: at most
    // 2,000 fragments, one every 2 ms.
    sink.send(Message::Frame(TFrame::message(
        vec![1u8; 16 * 1024],
        OpCode::Data(Data::Binary),
        false,
    )))
    .await
    .unwrap();
    let sender = tokio::spawn(async move {
        let mut sent = 1;
        for _ in 0..2_000 {
            let fragment =
                TFrame::message(vec![2u8; 16 * 1024], OpCode::Data(Data::Continue), false);
            if sink.send(Message::Frame(fragment)).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let shutdown = tokio::spawn(tunnels.shutdown(Duration::from_secs(20)));

    // A clean Close 1001, then a clean end: no protocol error.
    let first = within("the Close", stream.next()).await;
    match &first {
        Some(Ok(message)) if close_code(message) == Some(1001) => {}
        other => panic!("expected Close 1001, got {other:?}"),
    }
    match within("the end of the stream", stream.next()).await {
        None | Some(Err(Error::ConnectionClosed)) => {}
        Some(Ok(message)) => panic!("a message after the Close: {message:?}"),
        Some(Err(e)) => panic!("the client saw an error: {e}"),
    }
    let sent = within("the sender stops", sender).await.unwrap();
    assert!(sent > 1, "fragments were on their way");
    within("shutdown resolves", shutdown).await.unwrap();
    // Well before the 20 s deadline: both closing handshakes completed.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );

    // The backend saw whole frames only: no protocol error, then Close
    // 1001 between two fragments (control frames may come between them).
    backend
        .saw("Close 1001", |m| close_code(m) == Some(1001))
        .await;
    let (messages, errors) = backend_log(&backend);
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(messages, vec![("close".into(), 1001)]);
    tunnels_end(&tunnels).await;
    let stats = tunnels.stats();
    assert_eq!(stats.ended.shutdown, 1, "{stats:?}");
}

#[tokio::test]
async fn shutdown_closes_hard_at_the_deadline_when_a_peer_does_not_answer_the_close() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let (mut client, mut buf) = raw_websocket(proxy).await;

    let start = Instant::now();
    let shutdown = tokio::spawn(tunnels.shutdown(Duration::from_millis(500)));
    // New upgrades are refused while draining; plain HTTP still works.
    let mut refused = raw(proxy, handshake("/", "").as_bytes()).await;
    assert_eq!(read_head(&mut refused).await.status, 503);
    let mut plain = raw(proxy, b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_head(&mut plain).await.status, 200);

    // The client reads the Close and never answers it.
    let close = read_frame(&mut client, &mut buf).await.unwrap();
    assert_eq!(close.close_code(), Some(1001));
    assert_eq!(read_frame(&mut client, &mut buf).await, None);
    within("shutdown resolves", shutdown).await.unwrap();
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert_eq!(tunnels.open(), 0);
    // The backend answered; it got Close 1001 and its session ended.
    backend
        .saw("Close 1001", |m| close_code(m) == Some(1001))
        .await;
    let live = backend.live.clone();
    assert!(
        wait_until(LIMIT, || live.load(std::sync::atomic::Ordering::SeqCst)
            == 0)
        .await
    );
}

#[tokio::test]
async fn a_closing_handshake_under_way_is_left_to_finish() {
    // A backend that never answers a Close.
    let backend = RawBackend::start(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n",
    )
    .await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let (mut client, mut buf) = raw_websocket(proxy).await;
    client
        .write_all(&ws_frame(true, 0x8, &4000u16.to_be_bytes(), KEY))
        .await
        .unwrap();
    let received = backend.received.clone();
    assert!(
        wait_until(LIMIT, || {
            received.lock().unwrap()[0]
                .windows(2)
                .any(|w| w == [0x88, 0x82])
        })
        .await
    );
    let shutdown = tokio::spawn(tunnels.shutdown(Duration::from_millis(300)));
    // No second Close from the proxy: the client's own close stands.
    assert_eq!(read_frame(&mut client, &mut buf).await, None);
    within("shutdown resolves", shutdown).await.unwrap();
    let text = backend.received_text(0);
    let after_head = &backend.received.lock().unwrap()[0][text.find("\r\n\r\n").unwrap() + 4..];
    let (frame, len) = parse_frame(after_head).expect("the client's Close");
    assert_eq!(frame.close_code(), Some(4000));
    assert_eq!(len, after_head.len(), "nothing after the client's Close");
}

#[tokio::test]
async fn a_client_that_stops_answering_is_closed_after_interval_plus_timeout() {
    let backend = Backend::start().await;
    let keepalive = Keepalive::new(Duration::from_millis(300), Duration::from_millis(300));
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l.client_keepalive(Some(keepalive))).await;
    let (mut client, mut buf) = raw_websocket(proxy).await;
    let start = Instant::now();

    // A Ping of the proxy's own arrives after the interval...
    let ping = read_frame(&mut client, &mut buf).await.unwrap();
    assert_eq!(
        (ping.opcode, ping.payload.len(), ping.masked),
        (0x9, 8, false)
    );
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    // ...it is not answered, and the tunnel is closed after the timeout:
    // no Close for the dead client, Close 1001 for the backend.
    assert_eq!(read_frame(&mut client, &mut buf).await, None);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(550), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    backend
        .saw("Close 1001", |m| close_code(m) == Some(1001))
        .await;
    tunnels_end(&tunnels).await;
    let stats = tunnels.stats();
    assert_eq!((stats.open, stats.ended.keepalive), (0, 1), "{stats:?}");
}

#[tokio::test]
async fn a_healthy_idle_client_stays_connected_and_the_proxys_pongs_are_not_forwarded() {
    let backend = Backend::start().await;
    let keepalive = Keepalive::new(Duration::from_millis(200), Duration::from_millis(300));
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l.client_keepalive(Some(keepalive))).await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;

    // Idle for six intervals; tungstenite answers each Ping while reading.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1_300);
    while let Ok(next) = tokio::time::timeout_at(until, ws.next()).await {
        match next {
            Some(Ok(Message::Ping(payload))) => {
                assert_eq!(payload.len(), 8);
                pings += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings");
    assert_eq!(tunnels.open(), 1);
    echo(&mut ws, Message::text("still here")).await;

    // The application's own Ping and Pong (same length as the proxy's)
    // pass through.
    ws.send(Message::Pong(b"apppong!".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Ping(b"appping!".to_vec().into()))
        .await
        .unwrap();
    backend
        .saw("the app's Ping", |m| matches!(m, Message::Ping(_)))
        .await;
    let (messages, errors) = backend_log(&backend);
    assert_eq!(
        messages,
        vec![("text".into(), 10), ("pong".into(), 8), ("ping".into(), 8)],
        "the proxy's Pongs reached the backend"
    );
    assert!(errors.is_empty());
}

#[tokio::test]
async fn a_backend_that_stops_answering_is_closed_and_the_client_gets_1001() {
    // A backend that completes the handshake and then reads nothing.
    let addr = stalled_backend().await;
    let keepalive = Keepalive::new(Duration::from_millis(200), Duration::from_millis(200));
    let (proxy, tunnels) = proxy_to(addr, |l| l.backend_keepalive(Some(keepalive))).await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    let close = within("the Close", ws.next()).await;
    match &close {
        Some(Ok(message)) if close_code(message) == Some(1001) => {}
        other => panic!("expected Close 1001, got {other:?}"),
    }
    // The client's answer completes the close.
    while let Some(Ok(_)) = within("the end", ws.next()).await {}
    tunnels_end(&tunnels).await;
    assert_eq!(tunnels.stats().ended.keepalive, 1);
}

#[tokio::test]
async fn a_message_over_the_client_limit_closes_with_1009_and_never_reaches_the_backend() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| {
        l.client_limits(MessageLimits::new().max_message(1_000))
    })
    .await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    echo(&mut ws, Message::binary(vec![1u8; 1_000])).await;
    ws.send(Message::binary(vec![2u8; 1_001])).await.unwrap();
    let close = within("the Close", ws.next()).await;
    match &close {
        Some(Ok(message)) if close_code(message) == Some(1009) => {}
        other => panic!("expected Close 1009, got {other:?}"),
    }
    while let Some(Ok(_)) = within("the end", ws.next()).await {}
    backend
        .saw("Close 1001", |m| close_code(m) == Some(1001))
        .await;
    assert_eq!(
        backend_log(&backend),
        (
            vec![("binary".into(), 1_000), ("close".into(), 1001)],
            vec![]
        )
    );
    tunnels_end(&tunnels).await;
    assert_eq!(tunnels.stats().ended.limit, 1);
}

#[tokio::test]
async fn fragments_count_toward_the_message_limit() {
    let backend = Backend::start().await;
    let (proxy, _tunnels) = proxy_to(backend.addr, |l| {
        l.client_limits(MessageLimits::new().max_message(1_000).max_frame(600))
    })
    .await;
    let (mut client, mut buf) = raw_websocket(proxy).await;
    // 600 + 600 bytes: the second fragment breaks the message limit.
    let mut bytes = ws_frame(false, 0x2, &[7; 600], KEY);
    bytes.extend(ws_frame(true, 0x0, &[8; 600], KEY));
    client.write_all(&bytes).await.unwrap();
    let close = read_frame(&mut client, &mut buf).await.unwrap();
    assert_eq!(close.close_code(), Some(1009));
    client
        .write_all(&ws_frame(true, 0x8, &1009u16.to_be_bytes(), KEY))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut client, &mut buf).await, None);
    // The backend got the first fragment and Close 1001: a valid stream.
    backend
        .saw("Close 1001", |m| close_code(m) == Some(1001))
        .await;
    assert_eq!(
        backend_log(&backend),
        (vec![("close".into(), 1001)], vec![])
    );

    // A single frame over max_frame is refused the same way.
    let (mut client, mut buf) = raw_websocket(proxy).await;
    client
        .write_all(&ws_frame(true, 0x1, &[b'a'; 601], KEY))
        .await
        .unwrap();
    let close = read_frame(&mut client, &mut buf).await.unwrap();
    assert_eq!(close.close_code(), Some(1009));
}

#[tokio::test]
async fn a_frame_over_the_backend_limit_closes_the_backend_with_1009() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| {
        l.backend_limits(MessageLimits::new().max_frame(1_000))
    })
    .await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    echo(&mut ws, Message::text("small")).await;
    // The backend echoes 2,000 bytes: too big on the way back.
    ws.send(Message::binary(vec![3u8; 2_000])).await.unwrap();
    let close = within("the Close", ws.next()).await;
    match &close {
        Some(Ok(message)) if close_code(message) == Some(1001) => {}
        other => panic!("expected Close 1001, got {other:?}"),
    }
    while let Some(Ok(_)) = within("the end", ws.next()).await {}
    backend
        .saw("Close 1009", |m| close_code(m) == Some(1009))
        .await;
    tunnels_end(&tunnels).await;
    assert_eq!(tunnels.stats().ended.limit, 1);
}

#[tokio::test]
async fn stats_count_frames_messages_close_codes_and_how_tunnels_ended() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    for i in 0..3 {
        echo(&mut ws, Message::text(format!("message {i}"))).await;
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4002),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    while let Some(Ok(_)) = within("the end", ws.next()).await {}
    tunnels_end(&tunnels).await;

    // A tunnel is counted in the stats before it stops counting as open.
    let stats = tunnels.stats();
    assert_eq!(stats.opened, 1);
    assert_eq!(stats.ended.client_close, 1, "{stats:?}");
    assert_eq!((stats.client.messages, stats.client.frames), (3, 4));
    assert_eq!((stats.backend.messages, stats.backend.frames), (3, 4));
    assert_eq!(stats.client.close_codes.get(&4002), Some(&1));
    assert_eq!(stats.backend.close_codes.get(&4002), Some(&1));
    assert!(stats.client.bytes > 0 && stats.backend.bytes > 0);
}

#[tokio::test]
async fn messages_faster_than_the_rate_close_with_1008() {
    use wsproxy::admit::Rate;
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| {
        l.client_limits(MessageLimits::new().max_rate(Rate::per_minute(60).burst(4)))
    })
    .await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    // Five at once are within the burst (one at the rate plus four); a
    // Ping is not a message and does not count.
    for i in 0..5 {
        echo(&mut ws, Message::text(format!("m{i}"))).await;
    }
    ws.send(Message::Ping(b"not counted".to_vec().into()))
        .await
        .unwrap();
    // The sixth comes too soon.
    ws.send(Message::text("too soon")).await.unwrap();
    loop {
        match within("the Close", ws.next()).await {
            Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(message)) if close_code(&message) == Some(1008) => break,
            other => panic!("expected Close 1008, got {other:?}"),
        }
    }
    while let Some(Ok(_)) = within("the end", ws.next()).await {}
    backend
        .saw("Close 1001", |m| close_code(m) == Some(1001))
        .await;
    let (messages, _) = backend_log(&backend);
    assert_eq!(
        messages.iter().filter(|(kind, _)| kind == "text").count(),
        5,
        "the sixth never reached the backend: {messages:?}"
    );
    tunnels_end(&tunnels).await;
    assert_eq!(tunnels.stats().ended.limit, 1);
}
