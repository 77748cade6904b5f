//! The tunnel: bytes and frames pass untouched both ways; closes, drops
//! (the survivor hears a Close of the proxy's), half-closes, idle timeouts
//! and shutdown end it cleanly, and the open tunnel count returns to zero.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsproxy_e2e::*;
use wsproxy_test_support::*;

#[tokio::test]
async fn text_and_binary_messages_arrive_intact_at_every_size() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    for size in [0, 125, 126, 65_535, 65_536, 16 << 20] {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        echo(&mut ws, Message::binary(bytes)).await;
        let text: String = (0..size)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        echo(&mut ws, Message::text(text)).await;
    }
    drop(ws);
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
}

#[tokio::test]
async fn pings_are_answered_end_to_end_from_either_side() {
    let backend = Backend::start().await;
    let (proxy, _) = proxy_to(backend.addr, |l| l).await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;

    ws.send(Message::Ping("from-client".into())).await.unwrap();
    let pong = within("pong", ws.next()).await.unwrap().unwrap();
    assert_eq!(
        pong,
        Message::Pong("from-client".into()),
        "the backend's pong"
    );

    // The backend pings on request; tungstenite answers with a pong.
    ws.send(Message::text("server-ping")).await.unwrap();
    let ping = within("ping", ws.next()).await.unwrap().unwrap();
    assert_eq!(ping, Message::Ping("srv".into()));
    // Reading drives the automatic pong; a later echo flushes it.
    echo(&mut ws, Message::text("after ping")).await;
    let seen = backend.seen.clone();
    assert!(
        wait_until(LIMIT, || seen
            .lock()
            .unwrap()
            .messages
            .contains(&Message::Pong("srv".into())))
        .await,
        "the client's pong reached the backend"
    );
}

#[tokio::test]
async fn close_code_and_reason_travel_both_ways() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;

    let mut ws = connect(&format!("ws://{proxy}/")).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "client done".into(),
    }))
    .await
    .unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, ws.next()).await {}
    let seen = backend.seen.clone();
    assert!(
        wait_until(LIMIT, || seen.lock().unwrap().messages.iter().any(|m| matches!(
            m,
            Message::Close(Some(f)) if f.code == CloseCode::Library(4000) && f.reason == "client done"
        )))
        .await,
        "the backend got the client's close frame"
    );
    drop(ws);

    let mut ws = connect(&format!("ws://{proxy}/")).await;
    ws.send(Message::text("server-close")).await.unwrap();
    let close = within("close", ws.next()).await.unwrap().unwrap();
    match close {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Library(4001));
            assert_eq!(frame.reason, "backend says bye");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, ws.next()).await {}
    drop(ws);
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
}

/// Wait until `backend` has received a Close frame; returns it.
async fn backend_close(backend: &Backend) -> CloseFrame {
    let seen = backend.seen.clone();
    let close = || {
        seen.lock().unwrap().messages.iter().find_map(|m| match m {
            Message::Close(Some(frame)) => Some(frame.clone()),
            _ => None,
        })
    };
    assert!(
        wait_until(LIMIT, || close().is_some()).await,
        "the backend got no Close: {:?}",
        seen.lock().unwrap().messages
    );
    close().unwrap()
}

#[tokio::test]
async fn an_abrupt_client_drop_closes_the_backend_side() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    echo(&mut ws, Message::text("hello")).await;
    assert_eq!(backend.live.load(Ordering::SeqCst), 1);
    let start = Instant::now();
    drop(ws); // TCP closed without a close frame.
    // The backend hears Close 1001, as from a browser tab that closed.
    let close = backend_close(&backend).await;
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason, "client went away");
    let live = backend.live.clone();
    assert!(wait_until(LIMIT, || live.load(Ordering::SeqCst) == 0).await);
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(backend.seen.lock().unwrap().errors.is_empty());
}

#[tokio::test]
async fn an_abrupt_backend_drop_ends_the_client_stream() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let mut ws = connect(&format!("ws://{proxy}/")).await;
    echo(&mut ws, Message::text("hello")).await;
    let start = Instant::now();
    ws.send(Message::text("server-drop")).await.unwrap();
    // The backend drops its socket without a close frame: the client gets
    // Close 1011 from the proxy instead of a bare TCP close (1006).
    match within("the Close", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Error);
            assert_eq!(frame.reason, "backend went away");
        }
        other => panic!("expected Close 1011, got {other:?}"),
    }
    // tungstenite answered; the stream then ends cleanly.
    let end = within("client stream end", ws.next()).await;
    assert!(end.is_none(), "{end:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    drop(ws);
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    let stats = tunnels.stats();
    assert_eq!(stats.ended.backend_close, 1, "{stats:?}");
    assert_eq!(stats.client.close_codes.get(&1011), Some(&1), "the answer");
}

#[tokio::test]
async fn a_fin_without_a_close_gets_the_other_side_a_close_frame() {
    // A raw backend: after the handshake it sends a frame and its FIN,
    // then records what still reaches it.
    let (after_tx, after) = tokio::sync::oneshot::channel();
    let backend = scripted_backend(|mut stream, head| async move {
        let mut answer = switching_protocols(&head).into_bytes();
        answer.extend_from_slice(b"\x81\x04last");
        stream.write_all(&answer).await.unwrap();
        stream.shutdown().await.unwrap(); // FIN, no Close
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        let _ = after_tx.send(rest);
    })
    .await;
    let (proxy, tunnels) = proxy_to(backend, |l| l).await;
    let (mut client, mut buf) = raw_websocket(proxy).await;
    let last = read_frame(&mut client, &mut buf).await.unwrap();
    assert_eq!((last.opcode, &last.payload[..]), (0x1, &b"last"[..]));
    let close = read_frame(&mut client, &mut buf).await.unwrap();
    assert!(!close.masked);
    assert_eq!(close.close_code(), Some(1011));
    assert_eq!(&close.payload[2..], b"backend went away");
    client
        .write_all(&ws_frame(true, 0x8, &1011u16.to_be_bytes(), Some([9; 4])))
        .await
        .unwrap();
    assert_eq!(
        read_frame(&mut client, &mut buf).await,
        None,
        "then the end"
    );
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    let reached = within("the backend's side closes", after).await.unwrap();
    assert!(
        reached.is_empty(),
        "the answer is not forwarded: {reached:?}"
    );
}

#[tokio::test]
async fn a_half_close_is_passed_on_and_the_other_direction_keeps_flowing() {
    // A raw backend: after the handshake it waits for the client's FIN,
    // then still sends a frame, then closes.
    let (saw_fin_tx, saw_fin) = tokio::sync::oneshot::channel();
    let backend = scripted_backend(|mut stream, head| async move {
        stream
            .write_all(switching_protocols(&head).as_bytes())
            .await
            .unwrap();
        let mut after = Vec::new();
        stream.read_to_end(&mut after).await.unwrap(); // up to the FIN
        let _ = saw_fin_tx.send(after);
        stream.write_all(b"\x81\x05after").await.unwrap();
        stream.shutdown().await.unwrap();
    })
    .await;
    // Byte-for-byte TCP semantics: no Close of the proxy's on the FIN.
    let (proxy, tunnels) = proxy_to(backend, |l| l.close_on_disconnect(false)).await;
    let mut client = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut client).await;
    assert_eq!(head.status, 101);
    client
        .write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
        .await
        .unwrap();
    client.shutdown().await.unwrap(); // FIN toward the proxy
    let before_fin = within("backend sees the FIN", saw_fin).await.unwrap();
    assert_eq!(before_fin, [0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
    let mut rest = head.rest;
    within("the rest", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(
        rest, b"\x81\x05after",
        "data still flowed to the client after its FIN"
    );
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_and_traffic_either_way_keeps_it_open() {
    let backend = Backend::start().await;
    let idle = Duration::from_millis(300);
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l.idle_timeout(Some(idle))).await;

    let mut busy = connect(&format!("ws://{proxy}/")).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1_200) {
        echo(&mut busy, Message::text("still here")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    echo(&mut busy, Message::text("alive after 4 idle timeouts")).await;

    let mut quiet = connect(&format!("ws://{proxy}/")).await;
    let start = Instant::now();
    let end = within("idle close", quiet.next()).await;
    let elapsed = start.elapsed();
    assert!(
        matches!(end, None | Some(Err(_))),
        "the stream ends without a Close frame: {end:?}"
    );
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    // Both tunnels are idle by now; the backend's sides are closed too,
    // while the clients still hold theirs.
    let live = backend.live.clone();
    assert!(wait_until(LIMIT, || live.load(Ordering::SeqCst) == 0).await);
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    drop((busy, quiet));
}

#[tokio::test]
async fn two_hundred_concurrent_tunnels_echo_correctly() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let url = format!("ws://{proxy}/");
    // Clients, proxy and backend share this process: after the load, its
    // descriptors and tasks must be back where they started.
    let metrics = tokio::runtime::Handle::current().metrics();
    let fds_before = open_fds();
    let tasks_before = metrics.num_alive_tasks();
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut ws = connect(&url).await;
                for round in 0..5 {
                    echo(&mut ws, Message::text(format!("client {i} round {round}"))).await;
                    echo(&mut ws, Message::binary(vec![i as u8; 1000 + round])).await;
                }
                ws.close(None).await.unwrap();
                while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, ws.next()).await {}
            })
        })
        .collect();
    for client in clients {
        within("client", client).await.unwrap();
    }
    assert_eq!(backend.connections(), 200);
    assert!(
        wait_until(LIMIT, || tunnels.open() == 0).await,
        "open: {}",
        tunnels.open()
    );
    assert!(
        wait_until(LIMIT, || open_fds() <= fds_before).await,
        "descriptors: {fds_before} before, {} after",
        open_fds()
    );
    assert!(
        wait_until(LIMIT, || metrics.num_alive_tasks() <= tasks_before).await,
        "tasks: {tasks_before} before, {} after",
        metrics.num_alive_tasks()
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

#[tokio::test]
async fn shutdown_resolves_as_soon_as_the_closing_handshakes_complete() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;

    let mut ws = connect(&format!("ws://{proxy}/")).await;
    echo(&mut ws, Message::text("before")).await;
    let start = Instant::now();
    let shutdown = tokio::spawn(tunnels.shutdown(Duration::from_secs(60)));
    assert!(tunnels.is_draining());
    // The client gets Close 1001 ("going away"); reading on answers it.
    match within("the Close", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected Close 1001, got {other:?}"),
    }
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, ws.next()).await {}
    within("shutdown resolves", shutdown).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(tunnels.open(), 0);
    let live = backend.live.clone();
    assert!(wait_until(LIMIT, || live.load(Ordering::SeqCst) == 0).await);

    // With nothing open, a shutdown resolves at once.
    let (_, idle) = proxy_to(backend.addr, |l| l).await;
    within("idle shutdown", idle.shutdown(Duration::from_secs(60))).await;
}

/// Drop `stream` with a TCP reset instead of a FIN.
fn reset(stream: tokio::net::TcpStream) {
    stream.set_zero_linger().unwrap();
    drop(stream);
}

#[tokio::test]
async fn a_client_reset_closes_the_backend_side() {
    let backend = Backend::start().await;
    let (proxy, tunnels) = proxy_to(backend.addr, |l| l).await;
    let mut client = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut client).await;
    assert_eq!(head.status, 101);
    client
        .write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i'])
        .await
        .unwrap();
    let echoed = read_at_least(&mut client, head.rest, 4).await;
    assert_eq!(&echoed[..4], b"\x81\x02hi");
    assert_eq!(backend.live.load(Ordering::SeqCst), 1);
    let start = Instant::now();
    reset(client);
    assert_eq!(backend_close(&backend).await.code, CloseCode::Away);
    let live = backend.live.clone();
    assert!(wait_until(LIMIT, || live.load(Ordering::SeqCst) == 0).await);
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_backend_reset_ends_the_client_stream() {
    // By default the client is told 1011; with the setting off its stream
    // just ends. Either way it is counted as an error.
    for close_on_disconnect in [true, false] {
        let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
        let backend = scripted_backend(|mut stream, head| async move {
            let mut answer = switching_protocols(&head).into_bytes();
            answer.extend_from_slice(b"\x81\x05ready");
            stream.write_all(&answer).await.unwrap();
            let _ = go.await;
            reset(stream);
        })
        .await;
        let (proxy, tunnels) =
            proxy_to(backend, |l| l.close_on_disconnect(close_on_disconnect)).await;
        let mut ws = connect(&format!("ws://{proxy}/")).await;
        let ready = within("ready", ws.next()).await.unwrap().unwrap();
        assert_eq!(ready, Message::text("ready"));
        let start = Instant::now();
        go_tx.send(()).unwrap();
        let end = within("client stream end", ws.next()).await;
        if close_on_disconnect {
            assert!(
                matches!(&end, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Error),
                "expected Close 1011, got {end:?}"
            );
            let after = within("client stream end", ws.next()).await;
            assert!(after.is_none(), "{after:?}");
        } else {
            assert!(
                matches!(end, None | Some(Err(_))),
                "the stream ends without a Close frame: {end:?}"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
        assert_eq!(tunnels.stats().ended.error, 1);
    }
}

#[tokio::test]
async fn a_half_closed_tunnel_is_closed_after_the_half_close_timeout() {
    // A raw backend that reads the client's FIN, then neither writes nor
    // closes until the test ends.
    let (release_tx, release) = tokio::sync::oneshot::channel::<()>();
    let backend = scripted_backend(|mut stream, head| async move {
        stream
            .write_all(switching_protocols(&head).as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got).await; // up to the client's FIN
        let _ = release.await;
    })
    .await;
    let (proxy, tunnels) = proxy_to(backend, |l| {
        l.half_close_timeout(Duration::from_millis(300))
            .close_on_disconnect(false)
    })
    .await;
    let mut client = raw(proxy, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut client).await;
    assert_eq!(head.status, 101);
    assert!(wait_until(LIMIT, || tunnels.open() == 1).await);
    let start = Instant::now();
    client.shutdown().await.unwrap();
    // The backend never follows, so the proxy closes the tunnel.
    let mut rest = head.rest;
    within("the client's side closes", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(wait_until(LIMIT, || tunnels.open() == 0).await);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    drop(release_tx);
}

#[tokio::test]
async fn a_handshake_in_flight_when_shutdown_starts_opens_no_tunnel_after_it() {
    // A raw backend that answers 101 only when told to.
    let (answer_tx, answer) = tokio::sync::oneshot::channel::<()>();
    let (got_request_tx, got_request) = tokio::sync::oneshot::channel::<()>();
    let backend = scripted_backend(|mut stream, head| async move {
        let _ = got_request_tx.send(());
        let _ = answer.await;
        let _ = stream
            .write_all(switching_protocols(&head).as_bytes())
            .await;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let (proxy, tunnels) = proxy_to(backend, |l| l).await;
    let mut client = raw(proxy, handshake("/", "").as_bytes()).await;
    within("the backend got the handshake", got_request)
        .await
        .unwrap();

    // Shut down while the backend has not answered yet.
    within(
        "shutdown resolves",
        tunnels.shutdown(Duration::from_millis(200)),
    )
    .await;
    answer_tx.send(()).unwrap();
    let head = read_head(&mut client).await;
    // After shutdown() resolved, no tunnel may open (or, if one does, it
    // must close at once): the proxy was told to stop claiming upgrades
    // and has reported that every tunnel is gone.
    if head.status == 101 {
        let mut rest = head.rest;
        let closed =
            tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut rest)).await;
        panic!(
            "a tunnel opened after shutdown() resolved; 2 s later it is {} and open() = {}",
            if closed.is_ok() {
                "closed"
            } else {
                "still open"
            },
            tunnels.open()
        );
    }
    assert_eq!(head.status, 503, "{}", head.text);
    assert_eq!(tunnels.open(), 0);
}

#[tokio::test]
async fn one_tunnels_handle_counts_and_shuts_down_several_layers() {
    let chat = Backend::start().await;
    let game = Backend::start().await;
    let tunnels = wsproxy::Tunnels::new();
    let layer = |backend: &Backend, prefix: &str| {
        wsproxy::WebSocketProxyLayer::new(format!("ws://{}", backend.addr).parse().unwrap())
            .route(wsproxy::Route::prefix(prefix))
            .tunnels(tunnels.clone())
    };
    let app = axum::Router::new()
        .layer(layer(&chat, "/chat"))
        .layer(layer(&game, "/game"));
    let proxy = serve(app).await;
    let mut to_chat = connect(&format!("ws://{proxy}/chat")).await;
    let mut to_game = connect(&format!("ws://{proxy}/game")).await;
    echo(&mut to_chat, Message::text("chat")).await;
    echo(&mut to_game, Message::text("game")).await;
    assert_eq!((chat.connections(), game.connections()), (1, 1));
    assert_eq!(tunnels.open(), 2);

    let shutdown = tokio::spawn(tunnels.shutdown(Duration::from_millis(300)));
    for path in ["/chat", "/game"] {
        let mut stream = raw(proxy, handshake(path, "").as_bytes()).await;
        assert_eq!(read_head(&mut stream).await.status, 503, "{path}");
    }
    within("shutdown resolves", shutdown).await.unwrap();
    assert_eq!(tunnels.open(), 0);
    // Each WebSocket was told "going away", then its stream ended.
    for ws in [&mut to_chat, &mut to_game] {
        let end = within("tunnel closed", ws.next()).await;
        assert!(
            matches!(&end, Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 1001),
            "{end:?}"
        );
        let after = within("stream end", ws.next()).await;
        assert!(matches!(after, None | Some(Err(_))), "{after:?}");
    }
}
