//! `wsgate` run from a configuration file, as an operator runs it: the
//! check, flags over the file, reloads (SIGHUP) with WebSockets open, the
//! other signals, the log file, and a port already served.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsproxy_test_support::{Backend, LIMIT, Leaf, PemFiles, WsClient, handshake, raw, read_head};

use support::{Folder, Gateway, run};

/// Start wsgate on `file` (its listener on a free port: the flag wins).
fn start(file: &std::path::Path) -> Gateway {
    Gateway::start(&["--config", PemFiles::arg(file), "--workers", "1"])
}

async fn connect(gateway: &Gateway, path: &str) -> WsClient {
    wsproxy_test_support::connect(&format!("ws://{}{path}", gateway.addr)).await
}

/// Send `text` and expect it back.
async fn echo(ws: &mut WsClient, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let reply = timeout(LIMIT, ws.next())
        .await
        .expect("an answer in time")
        .expect("the tunnel is open")
        .expect("a message");
    assert_eq!(reply, Message::text(text));
}

/// The status of a handshake for `path` (and its `Host`).
async fn status_of(gateway: &Gateway, path: &str, host: &str) -> u16 {
    let request = handshake(path, "").replace("Host: proxy.test", &format!("Host: {host}"));
    let mut stream = raw(gateway.addr, request.as_bytes()).await;
    read_head(&mut stream).await.status
}

/// The page at `/` of `addr`.
async fn page(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    timeout(LIMIT, stream.read_to_string(&mut page))
        .await
        .unwrap()
        .unwrap();
    page
}

/// A configuration: `routes` as `(prefix, upstream)`, `upstreams` as
/// `(name, [backend URL])`, and `extra` TOML at the top.
fn config(extra: &str, routes: &[(&str, &str)], upstreams: &[(&str, &[String])]) -> String {
    let mut text = format!("workers = 1\n{extra}\n");
    for (prefix, upstream) in routes {
        text.push_str(&format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n\n"
        ));
    }
    for (name, backends) in upstreams {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        text.push_str(&format!(
            "[upstreams.{name}]\nbackends = [{}]\n\n",
            list.join(", ")
        ));
    }
    text
}

#[test]
fn the_example_configuration_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/wsgate.toml");
    let (code, stderr) = run(&["--check", "--config", example]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn the_check_names_the_file_the_key_and_the_problem() {
    let folder = Folder::new();
    let file = folder.write(
        "bad.toml",
        r#"
[timeouts]
idle = "forever"
"#,
    );
    let (code, stderr) = run(&["--check", "--config", PemFiles::arg(&file)]);
    assert_eq!(code, Some(2), "{stderr}");
    let expected = format!(
        "{}:3:8: timeouts.idle: invalid duration 'forever'",
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    let file = folder.write(
        "bad.toml",
        r#"
[[routes]]
prefix = "/chat"
upstream = "chat"

[upstreams.chat]
backends = ["ws://127.0.0.1:1", "ws:/x"]
"#,
    );
    let (code, stderr) = run(&["--check", "--config", PemFiles::arg(&file)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("upstreams.chat.backends[1]: ") && stderr.contains("ws:/x"),
        "{stderr}"
    );

    // Checked beyond the syntax: every problem, each with its key; a
    // certificate with somebody else's key.
    let cert = Leaf::localhost();
    let other = Leaf::localhost();
    let text = format!(
        r#"
[listen.tls]
cert = "{}"
key = "{}"

[[routes]]
prefix = "/a"
upstream = "missing"

[[routes]]
prefix = "/a/"
upstream = "one"

[[routes]]
prefix = "/c"
upstream = "one"
strip_prefix = true
rewrite_prefix = "/v2"

[upstreams.one]
backends = ["ws://127.0.0.1:1"]
"#,
        cert.files().cert.display(),
        other.files().key.display()
    );
    let file = folder.write("bad.toml", &text);
    let (code, stderr) = run(&["--check", "--config", PemFiles::arg(&file)]);
    assert_eq!(code, Some(2), "{stderr}");
    for expected in [
        "routes[0].upstream: no upstream 'missing'",
        "routes[1].prefix: two routes claim the prefix '/a/' (routes[0] too)",
        "listen.tls: cannot use the certificate",
        "routes[2].rewrite_prefix: give strip_prefix or rewrite_prefix, not both",
    ] {
        assert!(stderr.contains(expected), "{expected}:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The same file, fixed, passes.
    let fixed = text
        .replace(
            &other.files().key.display().to_string(),
            &cert.files().key.display().to_string(),
        )
        .replace("\"missing\"", "\"one\"")
        .replace("\"/a/\"", "\"/b\"")
        .replace("strip_prefix = true\n", "");
    let file = folder.write("good.toml", &fixed);
    let (code, stderr) = run(&["--check", "--config", PemFiles::arg(&file)]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn a_file_serves_its_routes_and_a_flag_wins_over_it() {
    let one = Backend::start().await;
    let two = Backend::start().await;
    let folder = Folder::new();
    // The file's listener is a port nobody can have: the flag's is used.
    let text = config(
        "[listen]\naddress = \"127.0.0.1:1\"\n",
        &[("/one", "one"), ("/two", "two")],
        &[("one", &[one.url()]), ("two", &[two.url()])],
    );
    let file = folder.write("wsgate.toml", &text);
    let gateway = start(&file);
    echo(&mut connect(&gateway, "/one").await, "to one").await;
    echo(&mut connect(&gateway, "/two/x").await, "to two").await;
    assert_eq!((one.connections(), two.connections()), (1, 1));
    // A --route replaces the file's route of the same prefix.
    let flagged = Gateway::start(&[
        "--config",
        PemFiles::arg(&file),
        "--route",
        &format!("/one={}", two.url()),
    ]);
    echo(&mut connect(&flagged, "/one").await, "to two now").await;
    assert_eq!((one.connections(), two.connections()), (1, 2));
}

/// A route's prefix rewritten on its way to the backend.
#[tokio::test]
async fn a_route_can_rewrite_its_prefix() {
    let backend = Backend::start().await;
    let folder = Folder::new();
    let text = config("", &[("/v1/feed", "feeds")], &[("feeds", &[backend.url()])]).replace(
        "upstream = \"feeds\"\n",
        "upstream = \"feeds\"\nrewrite_prefix = \"/feed/v2\"\n",
    );
    let gateway = start(&folder.write("wsgate.toml", &text));
    echo(&mut connect(&gateway, "/v1/feed/7?since=3").await, "hi").await;
    assert_eq!(backend.last_uri(), "/feed/v2/7?since=3");
}

#[tokio::test]
async fn routes_can_be_for_one_host() {
    let one = Backend::start().await;
    let two = Backend::start().await;
    let folder = Folder::new();
    let text = format!(
        "workers = 1\n[[routes]]\nprefix = \"/\"\nhost = \"Chat.Example.com\"\nupstream = \"one\"\n\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"two\"\n\n\
         [upstreams.one]\nbackends = [\"{}\"]\n[upstreams.two]\nbackends = [\"{}\"]\n",
        one.url(),
        two.url()
    );
    let gateway = start(&folder.write("wsgate.toml", &text));
    assert_eq!(
        status_of(&gateway, "/x", "chat.example.com:8080").await,
        101
    );
    assert_eq!((one.connections(), two.connections()), (1, 0));
    assert_eq!(status_of(&gateway, "/x", "other.example.com").await, 101);
    assert_eq!((one.connections(), two.connections()), (1, 1));
}

/// The reload of the issue: tunnels keep echoing through several
/// reloads; a route added serves at once, a route removed is no longer
/// proxied, and nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_while_websockets_keep_echoing() {
    let one = Backend::start().await;
    let two = Backend::start().await;
    let three = Backend::start().await;
    let folder = Folder::new();
    let before = config(
        "",
        &[("/a", "one"), ("/c", "three")],
        &[("one", &[one.url()]), ("three", &[three.url()])],
    );
    let after = config(
        "",
        &[("/a", "one"), ("/b", "two")],
        &[("one", &[one.url()]), ("two", &[two.url()])],
    );
    let file = folder.write("wsgate.toml", &before);
    let gateway = start(&file);
    let mut tunnels = Vec::new();
    for _ in 0..4 {
        tunnels.push(connect(&gateway, "/a").await);
    }
    let mut c = connect(&gateway, "/c").await;
    assert_eq!(three.connections(), 1);
    // The tunnels echo without a pause while the gateway reloads.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU32::new(0));
    let echoing = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && rounds.load(Ordering::Relaxed) < 1_000_000 {
                let round = rounds.load(Ordering::Relaxed);
                for (i, ws) in tunnels.iter_mut().enumerate() {
                    echo(ws, &format!("{round}/{i}")).await;
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            tunnels
        })
    };
    // Until `rounds` passes `n` (the echo task fails the test otherwise).
    let passes = |n: u32| {
        let rounds = rounds.clone();
        async move {
            timeout(LIMIT, async {
                while rounds.load(Ordering::Relaxed) <= n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the tunnels stopped echoing");
        }
    };
    for (generation, text) in [(2, &after), (3, &before), (4, &after)] {
        passes(rounds.load(Ordering::Relaxed)).await;
        folder.write("wsgate.toml", text);
        // Blocking waits leave the runtime's other worker to the echoes.
        tokio::task::block_in_place(|| {
            gateway.signal("HUP");
            gateway.wait_log(&format!("generation={generation}"));
        });
    }
    passes(rounds.load(Ordering::Relaxed)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tunnels = echoing.await.unwrap();
    for ws in &mut tunnels {
        echo(ws, "still open").await;
    }
    // The route added serves; the one removed is not proxied any more,
    // while its open tunnel stays.
    echo(&mut connect(&gateway, "/b").await, "new route").await;
    assert_eq!(two.connections(), 1);
    assert_eq!(status_of(&gateway, "/c", "proxy.test").await, 404);
    assert_eq!(three.connections(), 1);
    echo(&mut c, "kept").await;
    assert_eq!(one.connections(), 4);
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_configuration_in_force() {
    let one = Backend::start().await;
    let two = Backend::start().await;
    let folder = Folder::new();
    let good = config("", &[("/a", "one")], &[("one", &[one.url()])]);
    let file = folder.write("wsgate.toml", &good);
    let gateway = start(&file);
    let mut ws = connect(&gateway, "/a").await;
    // A typo, then a route to an upstream that does not exist.
    folder.write("wsgate.toml", &good.replace("backends", "backend"));
    gateway.signal("HUP");
    let log = gateway.wait_log("configuration not reloaded");
    assert!(log.contains("unknown field `backend`"), "{log}");
    let missing = config("", &[("/a", "two")], &[("one", &[two.url()])]);
    folder.write("wsgate.toml", &missing);
    gateway.signal("HUP");
    let log = gateway.wait_log("configuration not reloaded");
    assert!(
        log.contains("routes[0].upstream: no upstream 'two'"),
        "{log}"
    );
    echo(&mut ws, "open").await;
    echo(&mut connect(&gateway, "/a").await, "old config").await;
    assert_eq!((one.connections(), two.connections()), (2, 0));
    // Fixed: applied.
    folder.write(
        "wsgate.toml",
        &config("", &[("/a", "two")], &[("two", &[two.url()])]),
    );
    gateway.signal("HUP");
    gateway.wait_log("generation=2");
    echo(&mut connect(&gateway, "/a").await, "new config").await;
    assert_eq!((one.connections(), two.connections()), (2, 1));
}

/// A backend gone from the file is drained: its tunnels stay open, new
/// handshakes go to the others. With `close_tunnels_when_down`, its
/// tunnels are closed with 1001 instead.
#[tokio::test]
async fn a_backend_removed_by_a_reload_is_drained_or_closed() {
    for close in [false, true] {
        let one = Backend::start().await;
        let two = Backend::start().await;
        let folder = Folder::new();
        let extra = if close {
            "close_tunnels_when_down = \"1s\"\n"
        } else {
            ""
        };
        let with = |backend: &Backend| {
            format!(
                "workers = 1\n[[routes]]\nprefix = \"/a\"\nupstream = \"up\"\n\n\
                 [upstreams.up]\nbackends = [\"{}\"]\n{extra}",
                backend.url()
            )
        };
        let file = folder.write("wsgate.toml", &with(&one));
        let (gateway, admin) = if close {
            (start(&file), None)
        } else {
            let gateway = Gateway::start(&[
                "--config",
                PemFiles::arg(&file),
                "--admin-listen",
                "127.0.0.1:0",
            ]);
            let admin = gateway.admin_addr();
            (gateway, Some(admin))
        };
        let mut ws = connect(&gateway, "/a").await;
        echo(&mut ws, "to one").await;
        folder.write("wsgate.toml", &with(&two));
        gateway.signal("HUP");
        gateway.wait_log("generation=2");
        echo(&mut connect(&gateway, "/a").await, "to two").await;
        assert_eq!((one.connections(), two.connections()), (1, 1));
        if close {
            let frame = timeout(LIMIT, ws.next()).await.unwrap();
            match frame {
                Some(Ok(Message::Close(Some(close)))) => {
                    assert_eq!(close.code, CloseCode::Away);
                }
                other => panic!("expected Close 1001, got {other:?}"),
            }
        } else {
            echo(&mut ws, "drained, still open").await;
            // Listed as draining while its tunnel is open (on the admin
            // listener).
            let page = page(admin.expect("an admin listener")).await;
            let row = format!(
                "<tr><td><code>{}</code></td><td>primary</td><td>1</td><td>1</td><td>up</td><td>yes</td>",
                one.url()
            );
            assert!(page.contains(&row), "{row}\n{page}");
        }
    }
}

#[tokio::test]
async fn signals_an_operator_sends_do_not_end_it() {
    let backend = Backend::start().await;
    let folder = Folder::new();
    let text = config("", &[("/a", "one")], &[("one", &[backend.url()])]);
    let mut gateway = start(&folder.write("wsgate.toml", &text));
    let mut ws = connect(&gateway, "/a").await;
    for (signal, logged) in [("USR1", "SIGUSR1"), ("HUP", "generation=2")] {
        gateway.signal(signal);
        gateway.wait_log(logged);
        echo(&mut ws, signal).await;
    }
    assert!(gateway.is_running());
}

/// SIGQUIT drains as SIGTERM does, but waits for the closing handshakes
/// however long they take, over HTTP/1.1 and over HTTP/2 (whose
/// WebSockets are streams of a connection the server also drains); a
/// SIGTERM then brings the deadline back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_waits_for_websockets_with_no_deadline() {
    use wsproxy_test_support::{connect_request, h2, open};
    let backend = Backend::start().await;
    let folder = Folder::new();
    let text = config(
        "[timeouts]\nshutdown = \"500ms\"\n",
        &[("/a", "one")],
        &[("one", &[backend.url()])],
    );
    let file = folder.write("wsgate.toml", &text);
    // Over HTTP/2, answered by the client; over HTTP/1.1, never answered
    // until a SIGTERM.
    for http2 in [true, false] {
        let mut gateway = start(&file);
        let mut h2_ws = None;
        let mut h1_ws = None;
        if http2 {
            let mut sender = h2(gateway.addr).await;
            let (_, mut ws) = open(&mut sender, connect_request(gateway.addr, "/a", &[])).await;
            gateway.signal("QUIT");
            assert_eq!(away(&mut ws).await, CloseCode::Away);
            h2_ws = Some((sender, ws));
        } else {
            let mut ws = connect(&gateway, "/a").await;
            gateway.signal("QUIT");
            assert_eq!(away(&mut ws).await, CloseCode::Away);
            h1_ws = Some(ws);
        }
        // Four times the shutdown timeout: SIGTERM would have closed it.
        let exited = tokio::task::block_in_place(|| gateway.wait_exit(Duration::from_secs(2)));
        assert!(
            exited.is_none(),
            "exited under SIGQUIT with a WebSocket open (HTTP/2: {http2})"
        );
        if http2 {
            // The client answers the close: the gateway is done.
            drop(h2_ws);
        } else {
            // A fast shutdown after the slow one: the deadline comes back.
            gateway.signal("TERM");
        }
        let status = tokio::task::block_in_place(|| gateway.wait_exit(LIMIT)).expect("exited");
        assert!(status.success(), "{status:?}");
        drop(h1_ws);
    }
}

/// The code of the Close frame that comes next.
async fn away<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> CloseCode
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match timeout(LIMIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(close)))) => close.code,
        other => panic!("expected a Close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn sigusr1_reopens_the_log_file() {
    let backend = Backend::start().await;
    let folder = Folder::new();
    let log = folder.path("wsgate.log");
    let text = config(
        &format!("[log]\nfile = \"{}\"\n", log.display()),
        &[("/a", "one")],
        &[("one", &[backend.url()])],
    );
    let gateway = start(&folder.write("wsgate.toml", &text));
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    assert!(read(&log).contains("serving"), "{}", read(&log));
    // What logrotate does: move the file, then signal.
    let rotated = folder.path("wsgate.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gateway.signal("USR1");
    let start = std::time::Instant::now();
    while !read(&log).contains("log file reopened") {
        assert!(start.elapsed() < LIMIT, "not reopened:\n{}", read(&rotated));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!read(&rotated).contains("log file reopened"));
}

#[test]
fn a_port_already_served_is_refused() {
    let first = Gateway::start(&["--route", "/=ws://127.0.0.1:1"]);
    let (code, stderr) = run(&[
        "--listen",
        &first.addr.to_string(),
        "--route",
        "/=ws://127.0.0.1:1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {}", first.addr)) && stderr.contains("in use"),
        "{stderr}"
    );
}

/// Whether a TLS handshake with `gateway` succeeds for a client that
/// trusts only `leaf`'s CA.
async fn trusts(gateway: &Gateway, leaf: &Leaf) -> bool {
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    timeout(LIMIT, leaf.connector(&[b"http/1.1"]).connect(name, tcp))
        .await
        .expect("a TLS handshake in time")
        .is_ok()
}

/// A renewed certificate is served after SIGHUP, without a restart; open
/// connections keep theirs.
#[tokio::test]
async fn a_reload_serves_the_renewed_certificate() {
    let backend = Backend::start().await;
    let old = Leaf::localhost();
    let renewed = Leaf::localhost();
    let folder = Folder::new();
    let cert = folder.path("cert.pem");
    let key = folder.path("key.pem");
    std::fs::copy(&old.files().cert, &cert).unwrap();
    std::fs::copy(&old.files().key, &key).unwrap();
    let text = config(
        "[listen.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
        &[("/a", "one")],
        &[("one", &[backend.url()])],
    );
    let gateway = start(&folder.write("wsgate.toml", &text));
    assert!(trusts(&gateway, &old).await);
    assert!(!trusts(&gateway, &renewed).await);
    // What certbot does: new files in place, then a reload.
    std::fs::copy(&renewed.files().cert, &cert).unwrap();
    std::fs::copy(&renewed.files().key, &key).unwrap();
    gateway.signal("HUP");
    gateway.wait_log("generation=2");
    assert!(trusts(&gateway, &renewed).await);
    assert!(!trusts(&gateway, &old).await);
    // A key that does not match: refused, the renewed one still served.
    std::fs::copy(&old.files().key, &key).unwrap();
    gateway.signal("HUP");
    let log = gateway.wait_log("configuration not reloaded");
    assert!(log.contains("listen.tls"), "{log}");
    assert!(trusts(&gateway, &renewed).await);
}

/// `listen.http2 = false`: HTTP/2 is not offered by ALPN (it is by
/// default).
#[tokio::test]
async fn http2_can_be_left_out_of_alpn() {
    let backend = Backend::start().await;
    let cert = Leaf::localhost();
    let folder = Folder::new();
    for http2 in [true, false] {
        let text = config(
            &format!(
                "[listen]\nhttp2 = {http2}\n[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.files().cert.display(),
                cert.files().key.display()
            ),
            &[("/a", "one")],
            &[("one", &[backend.url()])],
        );
        let gateway = start(&folder.write("wsgate.toml", &text));
        let tls = cert.connect(gateway.addr, &[b"h2", b"http/1.1"]).await;
        let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let expected: &[u8] = if http2 { b"h2" } else { b"http/1.1" };
        assert_eq!(chosen.as_deref(), Some(expected));
    }
}

/// The access log: one line for the handshake's outcome and one for the
/// tunnel's end, each with the client, method, path (query redacted when
/// asked), route, Origin, User-Agent, backend, status and subprotocol; the
/// end also with bytes and duration. As JSON objects with
/// `format = "json"`.
#[tokio::test]
async fn the_access_log_says_who_asked_for_what_and_what_went_through() {
    use wsproxy_test_support::{BackendOptions, connect_with};
    let backend = Backend::with(BackendOptions {
        protocol: Some("chat.v2"),
        ..BackendOptions::default()
    })
    .await;
    let folder = Folder::new();
    let text = config(
        "[log]\nformat = \"json\"\nquery = false\n",
        &[("/a", "one")],
        &[("one", &[backend.url()])],
    );
    let gateway = start(&folder.write("wsgate.toml", &text));
    let url = format!("ws://{}/a/room?token=secret", gateway.addr);
    let (mut ws, _) = connect_with(
        &url,
        &[
            ("origin", "https://app.example"),
            ("user-agent", "access-log-test/1"),
            ("sec-websocket-protocol", "chat.v2"),
        ],
    )
    .await;
    echo(&mut ws, "hello").await;
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
    while timeout(LIMIT, ws.next()).await.unwrap().is_some() {}
    let log = gateway.wait_log("tunnel closed");
    assert!(!log.contains("secret"), "{log}");
    let line = log.lines().find(|l| l.contains("tunnel closed")).unwrap();
    let json: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    let span = &json["span"];
    for (field, expected) in [
        ("method", "GET"),
        ("path", "/a/room?<redacted>"),
        ("route", "/a"),
        ("origin", "https://app.example"),
        ("user_agent", "access-log-test/1"),
        ("subprotocol", "chat.v2"),
        ("upstream", backend.url().as_str()),
    ] {
        assert_eq!(span[field], expected, "{field}: {line}");
    }
    assert_eq!(span["status"], 101, "{line}");
    assert!(
        span["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    let fields = &json["fields"];
    // "hello" and the Close 1000, each with a 2-byte head and a mask.
    assert_eq!(fields["bytes_up"], (2 + 4 + 5) + (2 + 4 + 2), "{line}");
    assert_eq!(fields["client_close"], "1000", "{line}");
    assert!(fields["duration_ms"].is_u64(), "{line}");
    assert!(json["timestamp"].is_string(), "{line}");
    // Plain requests get their line too.
    page(gateway.addr).await;
    let log = gateway.wait_log("finished processing request");
    let line = log.lines().last().unwrap();
    let json: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(json["span"]["path"], "/", "{line}");
    assert_eq!(json["fields"]["status"], 200, "{line}");
}

/// By default the access log is text in nginx's `combined` format, then
/// what a WebSocket adds: one line per tunnel at its end, one per refused
/// handshake, one per plain request; the tunnel's end is not logged a
/// second time as an event.
#[tokio::test]
async fn the_text_access_log_is_nginx_combined() {
    use wsproxy_test_support::{BackendOptions, connect_with};
    let backend = Backend::with(BackendOptions {
        protocol: Some("chat.v2"),
        ..BackendOptions::default()
    })
    .await;
    let folder = Folder::new();
    let text = config("", &[("/a", "one")], &[("one", &[backend.url()])]);
    let gateway = start(&folder.write("wsgate.toml", &text));
    let url = format!("ws://{}/a/room?token=t1", gateway.addr);
    let (mut ws, _) = connect_with(
        &url,
        &[
            ("origin", "https://app.example"),
            ("user-agent", "access \"log\" test"),
            ("sec-websocket-protocol", "chat.v2"),
        ],
    )
    .await;
    echo(&mut ws, "hello").await;
    ws.close(None).await.unwrap();
    while timeout(LIMIT, ws.next()).await.unwrap().is_some() {}
    let log = gateway.wait_log("\"GET /a/room?token=t1 HTTP/1.1\" 101 ");
    let line = log
        .lines()
        .find(|l| l.contains("\"GET /a/room?token=t1 HTTP/1.1\" 101 "))
        .unwrap();
    let (head, rest) = line.split_once(" [").unwrap();
    assert_eq!(head, "127.0.0.1 - -", "{line}");
    // [02/Dec/2026:15:40:01 +0000]
    let (time, rest) = rest.split_once("] ").unwrap();
    assert_eq!(time.len(), 26, "{line}");
    assert!(
        time.ends_with(" +0000") && time.as_bytes()[2] == b'/',
        "{line}"
    );
    // "hello" echoed (2-byte head, no mask) and the Close answer (2).
    let expected = format!(
        "\"GET /a/room?token=t1 HTTP/1.1\" 101 {} \"-\" \"access \\\"log\\\" test\" rt=",
        (2 + 5) + 2
    );
    assert!(rest.starts_with(&expected), "{expected}\n{line}");
    for field in [
        "route=/a",
        &format!("upstream={}", backend.url()),
        "subprotocol=\"chat.v2\"",
        "origin=\"https://app.example\"",
        "bytes_up=",
        "end=\"client closed",
    ] {
        assert!(line.contains(field), "{field}: {line}");
    }
    assert!(!log.contains("tunnel closed"), "{log}");
    // A refused handshake and a plain request.
    assert_eq!(status_of(&gateway, "/nope", "x").await, 404);
    page(gateway.addr).await;
    let log = gateway.wait_log("\"GET / HTTP/1.1\" 200 ");
    assert!(log.contains("\"GET /nope HTTP/1.1\" 404 - \"-\""), "{log}");
    assert!(!log.contains("finished processing request"), "{log}");
}

/// `watch = true`: an edit of the file reloads without a signal (a file
/// replaced by a rename, as editors do); an invalid edit is refused once
/// and the configuration in force kept; the next good edit applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_reloads_when_it_changes() {
    let one = Backend::start().await;
    let two = Backend::start().await;
    let folder = Folder::new();
    let with = |backend: &Backend| {
        config(
            "watch = true\n",
            &[("/a", "one")],
            &[("one", &[backend.url()])],
        )
    };
    let file = folder.write("wsgate.toml", &with(&one));
    let gateway = start(&file);
    echo(&mut connect(&gateway, "/a").await, "to one").await;
    let replace = |text: &str| {
        let new = folder.write("wsgate.toml.new", text);
        std::fs::rename(new, &file).unwrap();
    };
    replace(&with(&two));
    tokio::task::block_in_place(|| {
        gateway.wait_log("a file changed: configuration reloaded generation=2")
    });
    echo(&mut connect(&gateway, "/a").await, "to two").await;
    assert_eq!((one.connections(), two.connections()), (1, 1));
    replace("workers = 1\n[[routes]]\nprefix = \"/a\"\nupstream = \"missing\"\n");
    let mut log = tokio::task::block_in_place(|| {
        gateway.wait_log("a file changed: configuration not reloaded")
    });
    echo(&mut connect(&gateway, "/a").await, "still two").await;
    // A negative check, so a bounded pause: more than two looks at the
    // file (one a second) pass, and the invalid file is not tried again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    replace(&with(&one));
    log.push_str(&tokio::task::block_in_place(|| {
        gateway.wait_log("configuration reloaded generation=3")
    }));
    assert_eq!(
        log.matches("configuration not reloaded").count(),
        1,
        "{log}"
    );
    echo(&mut connect(&gateway, "/a").await, "to one again").await;
    assert_eq!((one.connections(), two.connections()), (2, 2));
}

/// `[log] access = false` (`--no-access-log`), nginx's `access_log off`:
/// no access line for a tunnel, a refusal or a plain request; the rest
/// of the log as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_can_be_off() {
    let backend = Backend::start().await;
    let folder = Folder::new();
    let text = config(
        "[log]\naccess = false\n",
        &[("/a", "one")],
        &[("one", &[backend.url()])],
    );
    let gateway = start(&folder.write("wsgate.toml", &text));
    let mut ws = connect(&gateway, "/a").await;
    echo(&mut ws, "hi").await;
    // The tunnel ends (both Close frames) before the reload below.
    ws.close(None).await.unwrap();
    while timeout(LIMIT, ws.next()).await.unwrap().is_some() {}
    assert_eq!(status_of(&gateway, "/nope", "x").await, 404);
    page(gateway.addr).await;
    // Everything above was answered before the reload is logged.
    let log = tokio::task::block_in_place(|| {
        gateway.signal("HUP");
        gateway.wait_log("generation=2")
    });
    assert!(!log.contains(" - - ["), "{log}");
    assert!(!log.contains("tunnel closed"), "{log}");
}

/// A setting that needs a restart is not applied by a reload, says so at
/// every reload while the file differs from what is in force, and stops
/// saying so once the file agrees again; the rest of the file applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_are_named_and_kept() {
    let one = Backend::start().await;
    let two = Backend::start().await;
    let folder = Folder::new();
    let with = |keepalive: &str, backend: &Backend| {
        config(
            &format!("[timeouts]\nkeepalive = \"{keepalive}\"\n"),
            &[("/a", "one")],
            &[("one", &[backend.url()])],
        )
    };
    let gateway = start(&folder.write("wsgate.toml", &with("75s", &one)));
    folder.write("wsgate.toml", &with("5s", &two));
    for generation in [2, 3] {
        let log = tokio::task::block_in_place(|| {
            gateway.signal("HUP");
            gateway.wait_log(&format!("generation={generation}"))
        });
        assert!(
            log.contains("key=timeouts.keepalive") && log.contains("not applied until a restart"),
            "{log}"
        );
    }
    // The route's new backend applied all the same.
    echo(&mut connect(&gateway, "/a").await, "to two").await;
    assert_eq!((one.connections(), two.connections()), (0, 1));
    folder.write("wsgate.toml", &with("75s", &two));
    let log = tokio::task::block_in_place(|| {
        gateway.signal("HUP");
        gateway.wait_log("generation=4")
    });
    assert!(!log.contains("not applied"), "{log}");
}
