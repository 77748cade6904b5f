//! Backend sets end to end: how strategies spread real WebSockets, health
//! checks and retries, sticky cookies, backups, and changes to the set
//! while tunnels are open.
//!
//! Every backend here names itself in an `X-Backend` header on its `101`,
//! which the proxy passes on: the client sees who took its WebSocket.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::response::IntoResponse;
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tower::discover::Change;
use wsproxy::WebSocketProxyLayer;
use wsproxy::admit::Key;
use wsproxy::balance::{
    self, ActiveHealth, BackendId, BackendStatus, Backends, ConsistentHash, LeastConn,
    PassiveHealth, PowerOfTwo, Probe,
};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

/// How an echo backend named `name` answers: `X-Backend: name` on its 101.
fn tag(name: &'static str) -> BackendOptions {
    BackendOptions {
        headers: vec![("x-backend", name)],
        ..Default::default()
    }
}

/// A tokio-tungstenite echo backend named `name`.
async fn named(name: &'static str) -> Backend {
    Backend::with(tag(name)).await
}

/// The backend at `addr`, as a member of a set.
fn member(addr: SocketAddr) -> balance::Backend {
    balance::Backend::new(format!("ws://{addr}").parse().unwrap())
}

fn id(addr: SocketAddr) -> BackendId {
    member(addr).id()
}

/// A proxy in front of `backends` (a handle on the same set).
async fn balancer(backends: &Backends) -> (SocketAddr, wsproxy::Tunnels) {
    proxy_with(WebSocketProxyLayer::with_backends(backends.clone())).await
}

/// What the set says of the backend at `addr`, if it is in it.
fn status(backends: &Backends, addr: SocketAddr) -> Option<BackendStatus> {
    let id = id(addr);
    backends.status().into_iter().find(|s| s.id == id)
}

fn is_up(backends: &Backends, addr: SocketAddr) -> bool {
    status(backends, addr).expect("in the set").up
}

/// A handshake through `proxy` on a raw socket with extra header lines:
/// the response head, and the socket (dropping it ends the tunnel).
async fn knock(proxy: SocketAddr, extra: &str) -> (Head, TcpStream) {
    let mut stream = raw(proxy, handshake("/", extra).as_bytes()).await;
    let head = read_head(&mut stream).await;
    (head, stream)
}

/// The backend that answered a `101`.
fn answered(head: &Head) -> String {
    assert_eq!(head.status, 101, "{}", head.text);
    head.header("x-backend")
        .unwrap_or_else(|| panic!("no X-Backend: {}", head.text))
        .to_owned()
}

/// A WebSocket through `proxy`, closed as soon as it is open: who took it.
async fn once(proxy: SocketAddr, extra: &str) -> String {
    let (head, _stream) = knock(proxy, extra).await;
    answered(&head)
}

/// `n` WebSockets through `proxy`, one after another; the last `held`
/// stay open (the oldest is closed before the next opens), the others are
/// closed at once. Who took each, in order.
async fn churn(proxy: SocketAddr, n: usize, held: usize) -> Vec<String> {
    let mut open = VecDeque::with_capacity(held + 1);
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let (head, stream) = knock(proxy, "").await;
        took.push(answered(&head));
        open.push_back(stream);
        while open.len() > held {
            drop(open.pop_front());
        }
    }
    took
}

/// `n` WebSockets one after another, each closed at once.
async fn spread(proxy: SocketAddr, n: usize) -> Vec<String> {
    churn(proxy, n, 0).await
}

/// How many each backend took.
fn tally<S: AsRef<str>>(took: &[S]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in took {
        *counts.entry(name.as_ref().to_owned()).or_default() += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
}

/// A WebSocket held open through `proxy` with a real client, and who
/// took it.
async fn open(proxy: SocketAddr) -> (WsClient, String) {
    let (ws, response) = connect_with(&format!("ws://{proxy}/"), &[]).await;
    let name = response.headers()["x-backend"].to_str().unwrap().to_owned();
    (ws, name)
}

/// Close `ws` cleanly and wait for the end of its stream.
async fn close(mut ws: WsClient) {
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, ws.next()).await {}
}

/// An axum backend named `name`: `GET /healthz` answers 200 while
/// `healthy` holds and 503 otherwise; `/` is a WebSocket echo while it
/// holds and answers 503 otherwise.
async fn health_backend(name: &'static str, healthy: Arc<AtomicBool>) -> SocketAddr {
    let check = healthy.clone();
    let app = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || {
                let up = check.load(Ordering::SeqCst);
                async move {
                    if up {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        )
        .route(
            "/",
            axum::routing::get(move |ws: WebSocketUpgrade| {
                let up = healthy.load(Ordering::SeqCst);
                async move {
                    if !up {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let mut response = ws
                        .on_upgrade(|mut socket| async move {
                            while let Some(Ok(message)) = socket.recv().await {
                                let data = matches!(
                                    message,
                                    axum::extract::ws::Message::Text(_)
                                        | axum::extract::ws::Message::Binary(_)
                                );
                                if data && socket.send(message).await.is_err() {
                                    break;
                                }
                            }
                        })
                        .into_response();
                    response
                        .headers_mut()
                        .insert("x-backend", HeaderValue::from_static(name));
                    response
                }
            }),
        );
    serve(app).await
}

/// Three named echo backends, `a`, `b` and `c`.
async fn three() -> [Backend; 3] {
    [named("a").await, named("b").await, named("c").await]
}

fn members(backends: &[Backend]) -> Vec<balance::Backend> {
    backends.iter().map(|b| member(b.addr)).collect()
}

// ---------------------------------------------------------------------
// How strategies spread 1,000 WebSockets over three backends. Each runs
// in about a second: the 1,000 connections are kept.
// ---------------------------------------------------------------------

#[tokio::test]
async fn round_robin_gives_each_of_three_backends_a_third_in_turn() {
    let backends = three().await;
    let set = Backends::new(members(&backends));
    let (proxy, _) = balancer(&set).await;

    let took = spread(proxy, 1_000).await;
    let mut shares: Vec<usize> = tally(&took).into_values().collect();
    shares.sort_unstable();
    assert_eq!(shares, [333, 333, 334], "{:?}", tally(&took));
    // In turn: any three in a row went to three different backends.
    for (i, window) in took.windows(3).enumerate() {
        assert_eq!(tally(window).len(), 3, "at {i}: {window:?}");
    }
    // Each backend saw exactly the handshakes it was credited with.
    let seen: BTreeMap<String, usize> = ["a", "b", "c"]
        .into_iter()
        .zip(&backends)
        .map(|(n, b)| (n.to_owned(), b.connections()))
        .collect();
    assert_eq!(seen, tally(&took));
}

#[tokio::test]
async fn weighted_round_robin_is_exact_and_smooth() {
    let [a, b, c] = three().await;
    let set = Backends::new([member(a.addr).weight(3), member(b.addr), member(c.addr)]);
    let (proxy, _) = balancer(&set).await;

    let took = spread(proxy, 1_000).await;
    assert_eq!(tally(&took), counts(&[("a", 600), ("b", 200), ("c", 200)]));
    // Smooth (nginx's order), not `a a a b c`: the first ten are
    // interleaved, the heavy one never more than twice in a row, and
    // every five in a row hold its weight's share.
    assert_eq!(
        took[..10],
        ["a", "b", "a", "c", "a", "a", "b", "a", "c", "a"],
        "{:?}",
        &took[..10]
    );
    let longest_run = took
        .chunk_by(|x, y| x == y)
        .filter(|run| run[0] == "a")
        .map(<[String]>::len)
        .max();
    assert_eq!(longest_run, Some(2));
    for (i, window) in took.chunks(5).enumerate() {
        assert_eq!(
            tally(window),
            counts(&[("a", 3), ("b", 1), ("c", 1)]),
            "at {}",
            i * 5
        );
    }
}

/// Tolerance for the load-aware strategies: each backend within ±10 % of
/// a third of 1,000 (300 to 367 WebSockets).
const FAIR: std::ops::RangeInclusive<usize> = 300..=367;

#[tokio::test]
async fn least_connections_spreads_short_websockets_evenly() {
    let backends = three().await;
    let set = Backends::new(members(&backends)).strategy(LeastConn::new());
    let (proxy, _) = balancer(&set).await;

    // Each closed as soon as it is open: loads are (nearly) all zero and
    // ties go in turn.
    let took = spread(proxy, 1_000).await;
    let shares = tally(&took);
    assert_eq!(shares.len(), 3, "{shares:?}");
    for (name, share) in &shares {
        assert!(FAIR.contains(share), "{name}: {share} of 1000: {shares:?}");
    }
}

#[tokio::test]
async fn power_of_two_choices_spreads_websockets_evenly() {
    let backends = three().await;
    let set = Backends::new(members(&backends)).strategy(PowerOfTwo::new());
    let (proxy, _) = balancer(&set).await;

    // Six stay open at any time, the oldest closing as the next opens. With
    // every tunnel closed before the next opened, all loads would be zero
    // and two random choices a fair three-sided die (standard deviation 15
    // over 1,000: ±10 % would fail about one run in fourteen). A few open
    // tunnels give it load to compare, which is what it is for; simulated,
    // its worst share over 20,000 runs is then 24 off a third.
    let took = churn(proxy, 1_000, 6).await;
    let shares = tally(&took);
    assert_eq!(shares.len(), 3, "{shares:?}");
    for (name, share) in &shares {
        assert!(FAIR.contains(share), "{name}: {share} of 1000: {shares:?}");
    }
}

#[tokio::test]
async fn consistent_hashing_on_a_header_spreads_keys_and_keeps_each_on_its_backend() {
    let backends = three().await;
    let set = Backends::new(members(&backends)).strategy(ConsistentHash::new(Key::header(
        HeaderName::from_static("x-user"),
    )));
    let (proxy, _) = balancer(&set).await;

    let mut home = Vec::with_capacity(1_000);
    for user in 0..1_000 {
        home.push(once(proxy, &format!("X-User: user-{user}\r\n")).await);
    }
    let shares = tally(&home);
    assert_eq!(shares.len(), 3, "{shares:?}");
    for (name, share) in &shares {
        assert!(
            (200..=470).contains(share),
            "{name}: {share} of 1000 keys: {shares:?}"
        );
    }
    // The same key lands on the same backend again, asked in another order.
    for user in (0..1_000).rev() {
        let again = once(proxy, &format!("X-User: user-{user}\r\n")).await;
        assert_eq!(again, home[user], "user-{user} moved");
    }
}

// ---------------------------------------------------------------------
// Load is open tunnels, for their whole life.
// ---------------------------------------------------------------------

#[tokio::test]
async fn least_connections_counts_tunnels_that_stay_open() {
    let backends = three().await;
    let [a, b, c] = [&backends[0], &backends[1], &backends[2]];
    let set = Backends::new(members(&backends)).strategy(LeastConn::new());
    let (proxy, _) = balancer(&set).await;

    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(open(proxy).await);
    }
    let names: Vec<&String> = held.iter().map(|(_, n)| n).collect();
    assert_eq!(tally(&names), counts(&[("a", 10), ("b", 10), ("c", 10)]));
    let open_counts =
        |set: &Backends| [a, b, c].map(|x| status(set, x.addr).expect("in the set").open);
    assert_eq!(open_counts(&set), [10, 10, 10]);

    // The ten clients of `a` leave; `b` and `c` keep theirs.
    let (to_a, mut others): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, n)| n == "a");
    for (ws, _) in to_a {
        close(ws).await;
    }
    let s = set.clone();
    assert!(
        wait_until(LIMIT, || open_counts(&s) == [0, 10, 10]).await,
        "{:?}",
        open_counts(&set)
    );
    // The next ten all go to `a`: the others' tunnels still count.
    for i in 0..10 {
        let (ws, name) = open(proxy).await;
        assert_eq!(name, "a", "the {i}th new one");
        others.push((ws, name));
    }
    assert_eq!(open_counts(&set), [10, 10, 10]);
    for (ws, name) in &mut others {
        echo(ws, Message::text(format!("held by {name}"))).await;
    }
}

#[tokio::test]
async fn max_conns_sends_the_next_websocket_elsewhere_while_a_backend_is_full() {
    let a = named("a").await;
    let b = named("b").await;
    let set = Backends::new([member(a.addr).max_conns(2), member(b.addr)]);
    let (proxy, _) = balancer(&set).await;

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(open(proxy).await);
    }
    let names: Vec<&String> = held.iter().map(|(_, n)| n).collect();
    assert_eq!(tally(&names), counts(&[("a", 2), ("b", 2)]));
    // `a` is full: the next ones go to `b`, and `a` is still up.
    for _ in 0..3 {
        let (ws, name) = open(proxy).await;
        assert_eq!(name, "b");
        held.push((ws, name));
    }
    let full = status(&set, a.addr).unwrap();
    assert_eq!((full.open, full.up), (2, true));
    assert_eq!(a.connections(), 2);

    // One of `a`'s closes: it takes one more, and only one.
    let i = held.iter().position(|(_, n)| n == "a").unwrap();
    close(held.swap_remove(i).0).await;
    let s = set.clone();
    assert!(wait_until(LIMIT, || status(&s, a.addr).unwrap().open == 1).await);
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(open(proxy).await);
    }
    let names: Vec<&String> = more.iter().map(|(_, n)| n).collect();
    assert_eq!(tally(&names)["a"], 1, "{names:?}");
    assert_eq!(status(&set, a.addr).unwrap().open, 2);
}

// ---------------------------------------------------------------------
// Retries and passive health.
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_dead_backend_is_retried_within_the_handshake_then_skipped() {
    let (_port, dead) = closed_port();
    let a = named("a").await;
    let b = named("b").await;
    // nginx's defaults: one failure skips a backend for 10 s.
    let set = Backends::new([member(dead), member(a.addr), member(b.addr)]);
    let (proxy, _) = balancer(&set).await;

    // Round-robin tries the dead one first; the client never notices.
    let took = spread(proxy, 20).await;
    assert_eq!(tally(&took), counts(&[("a", 10), ("b", 10)]));
    let down = status(&set, dead).unwrap();
    assert_eq!((down.up, down.transitions), (false, 1), "{down:?}");
    assert_eq!(a.connections() + b.connections(), 20);
}

#[tokio::test]
async fn after_one_failure_a_backend_is_not_tried_again() {
    // Accepts, reads the request and closes without an answer.
    let mute = RawBackend::start_closing("").await;
    let a = named("a").await;
    let set = Backends::new([member(mute.addr), member(a.addr)])
        .passive_health(PassiveHealth::new().max_fails(1).fail_timeout(LIMIT));
    let (proxy, _) = balancer(&set).await;
    assert_eq!(spread(proxy, 20).await, vec!["a"; 20]);
    assert_eq!(mute.connections(), 1, "tried once, then skipped");
    assert!(!is_up(&set, mute.addr));

    // Without passive health every turn of it is a retry: invisible to
    // clients, but it is asked again and again.
    let mute = RawBackend::start_closing("").await;
    let set = Backends::new([member(mute.addr), member(a.addr)])
        .passive_health(PassiveHealth::disabled());
    let (proxy, _) = balancer(&set).await;
    assert_eq!(spread(proxy, 20).await, vec!["a"; 20]);
    assert!(mute.connections() >= 5, "{}", mute.connections());
    assert!(is_up(&set, mute.addr));
}

#[tokio::test]
async fn tries_bounds_the_backends_asked_then_the_client_gets_502() {
    let mutes = [
        RawBackend::start_closing("").await,
        RawBackend::start_closing("").await,
        RawBackend::start_closing("").await,
    ];
    let set = Backends::new(mutes.iter().map(|m| member(m.addr)))
        .passive_health(PassiveHealth::disabled())
        .tries(2);
    let (proxy, _) = balancer(&set).await;

    let (head, mut stream) = knock(proxy, "").await;
    assert_eq!(head.status, 502, "{}", head.text);
    assert_eq!(read_body(&mut stream, &head).await, b"Bad Gateway\n");
    let asked: Vec<usize> = mutes.iter().map(RawBackend::connections).collect();
    assert_eq!(asked.iter().sum::<usize>(), 2, "{asked:?}");
    assert!(
        asked.iter().all(|&n| n <= 1),
        "two different ones: {asked:?}"
    );
}

#[tokio::test]
async fn no_usable_backend_is_a_503_that_contacts_nobody() {
    let a = named("a").await;
    let b = named("b").await;
    let set = Backends::new([member(a.addr).max_conns(1), member(b.addr).max_conns(1)]);
    let (proxy, _) = balancer(&set).await;

    // Both full.
    let (mut first, _) = open(proxy).await;
    let (mut second, _) = open(proxy).await;
    let (head, mut stream) = knock(proxy, "").await;
    assert_eq!(head.status, 503, "{}", head.text);
    assert_eq!(
        read_body(&mut stream, &head).await,
        b"no backend available\n"
    );
    assert_eq!(a.connections() + b.connections(), 2);

    // Both draining (each keeps its open tunnel, so stays in the set).
    assert!(set.drain(id(a.addr)) && set.drain(id(b.addr)));
    let (head, _) = knock(proxy, "").await;
    assert_eq!(head.status, 503, "{}", head.text);
    assert!(set.status().iter().all(|s| s.draining && s.open == 1));
    assert_eq!(a.connections() + b.connections(), 2);
    echo(&mut first, Message::text("still open")).await;
    echo(&mut second, Message::text("still open")).await;
}

#[tokio::test]
async fn a_backend_answering_500_is_skipped_for_fail_timeout_then_tried_again() {
    let failing = RawBackend::start_closing(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let good = named("good").await;
    let set = Backends::new([member(failing.addr), member(good.addr)]).passive_health(
        PassiveHealth::new()
            .max_fails(1)
            .fail_timeout(Duration::from_millis(300)),
    );
    let (proxy, _) = balancer(&set).await;

    // Round-robin asks the failing one first or second. Its 500 reaches
    // the client as it is (an answer is never retried).
    let mut failed_at = None;
    for _ in 0..2 {
        let before = Instant::now();
        let (head, _) = knock(proxy, "").await;
        if head.status == 500 {
            failed_at = Some(before);
            break;
        }
        assert_eq!(answered(&head), "good");
    }
    let failed_at = failed_at.expect("a 500 from the failing backend");
    assert!(!is_up(&set, failing.addr));
    // While it is down, every handshake goes to the good one.
    assert_eq!(spread(proxy, 5).await, vec!["good"; 5]);
    assert_eq!(failing.connections(), 1);

    // Up again after the fail_timeout.
    let s = set.clone();
    assert!(wait_until(LIMIT, || is_up(&s, failing.addr)).await);
    let down_for = failed_at.elapsed();
    assert!(
        down_for >= Duration::from_millis(299) && down_for < Duration::from_secs(3),
        "{down_for:?}"
    );
    // And asked again: within two handshakes, another 500.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let (head, _) = knock(proxy, "").await;
        statuses.push(head.status);
        if head.status == 500 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&500), "{statuses:?}");
    assert_eq!(failing.connections(), 2);
    // Down, back, down again.
    let again = status(&set, failing.addr).unwrap();
    assert_eq!((again.up, again.transitions), (false, 3), "{again:?}");
}

#[tokio::test]
async fn refusals_of_the_backends_own_choosing_are_not_failures() {
    let forbidden =
        RawBackend::start_closing("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await;
    let not_found =
        RawBackend::start_closing("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
    let good = named("good").await;
    let set = Backends::new([
        member(forbidden.addr),
        member(not_found.addr),
        member(good.addr),
    ])
    .passive_health(PassiveHealth::new().max_fails(1).fail_timeout(LIMIT));
    let (proxy, _) = balancer(&set).await;

    let mut statuses = Vec::new();
    for _ in 0..9 {
        let (head, _) = knock(proxy, "").await;
        statuses.push(head.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [101, 101, 101, 403, 403, 403, 404, 404, 404]);
    assert_eq!((forbidden.connections(), not_found.connections()), (3, 3));
    for s in set.status() {
        assert_eq!((s.up, s.transitions), (true, 0), "{s:?}");
    }
}

// ---------------------------------------------------------------------
// Active health.
// ---------------------------------------------------------------------

/// Probes every 100 ms, down after two failures, up after two successes.
fn every_100ms(probe: Probe) -> ActiveHealth {
    ActiveHealth::new(probe)
        .interval(Duration::from_millis(100))
        .timeout(Duration::from_millis(500))
        .fall(2)
        .rise(2)
}

/// A set whose health is the probes' alone, and that tries one backend per
/// handshake: a handshake sent to a backend that is down fails instead of
/// moving on, so every `101` shows the choice.
fn probed(members: impl IntoIterator<Item = balance::Backend>, probe: Probe) -> Backends {
    Backends::new(members)
        .active_health(every_100ms(probe))
        .passive_health(PassiveHealth::disabled())
        .tries(1)
}

#[tokio::test]
async fn a_tcp_probe_takes_a_stopped_backend_out_and_brings_it_back() {
    let (a, accept) = Backend::stoppable(tag("a")).await;
    let b = named("b").await;
    let set = probed([member(a.addr), member(b.addr)], Probe::tcp());
    let (proxy, _) = balancer(&set).await;
    assert_eq!(
        tally(&spread(proxy, 4).await),
        counts(&[("a", 2), ("b", 2)])
    );

    // `a` stops listening: two failed probes, at least an interval apart.
    accept.abort();
    let _ = accept.await;
    let stopped = Instant::now();
    let s = set.clone();
    assert!(wait_until(LIMIT, || !is_up(&s, a.addr)).await, "never down");
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(95) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(status(&set, a.addr).unwrap().transitions, 1);
    assert_eq!(spread(proxy, 6).await, vec!["b"; 6]);

    // Listening again on the same port: up after two good probes.
    let _accept = a.listen_again(tag("a")).await;
    let restarted = Instant::now();
    assert!(wait_until(LIMIT, || is_up(&s, a.addr)).await, "never up");
    let took = restarted.elapsed();
    assert!(
        took >= Duration::from_millis(95) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(status(&set, a.addr).unwrap().transitions, 2);
    assert_eq!(
        tally(&spread(proxy, 4).await),
        counts(&[("a", 2), ("b", 2)])
    );
}

#[tokio::test]
async fn an_http_probe_follows_the_backends_health_endpoint() {
    let healthy = Arc::new(AtomicBool::new(true));
    let x = health_backend("x", healthy.clone()).await;
    let b = health_backend("b", Arc::new(AtomicBool::new(true))).await;
    let set = probed(
        [member(x), member(b)],
        Probe::http("/healthz").expect_status(200),
    );
    let (proxy, _) = balancer(&set).await;
    assert_eq!(
        tally(&spread(proxy, 4).await),
        counts(&[("b", 2), ("x", 2)])
    );

    healthy.store(false, Ordering::SeqCst);
    let s = set.clone();
    assert!(wait_until(LIMIT, || !is_up(&s, x)).await, "never down");
    assert_eq!(status(&set, x).unwrap().transitions, 1);
    assert_eq!(spread(proxy, 6).await, vec!["b"; 6]);

    healthy.store(true, Ordering::SeqCst);
    assert!(wait_until(LIMIT, || is_up(&s, x)).await, "never up");
    assert_eq!(status(&set, x).unwrap().transitions, 2);
    assert_eq!(
        tally(&spread(proxy, 4).await),
        counts(&[("b", 2), ("x", 2)])
    );
    assert_eq!(status(&set, b).unwrap().transitions, 0);
}

#[tokio::test]
async fn a_websocket_probe_needs_a_real_handshake_and_closes_it_with_1001() {
    let healthy = Arc::new(AtomicBool::new(true));
    let x = health_backend("x", healthy.clone()).await;
    let a = named("a").await;
    // Listens and answers HTTP, but is no WebSocket server: a TCP probe
    // would pass it.
    let web = RawBackend::start_closing("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let set = probed(
        [member(a.addr), member(x), member(web.addr)],
        Probe::websocket("/"),
    );
    let (proxy, _) = balancer(&set).await;

    let s = set.clone();
    assert!(
        wait_until(LIMIT, || !is_up(&s, web.addr)).await,
        "web never down"
    );
    assert_eq!(
        tally(&spread(proxy, 4).await),
        counts(&[("a", 2), ("x", 2)])
    );
    // `x` stops upgrading (503): down; back when it upgrades again.
    healthy.store(false, Ordering::SeqCst);
    assert!(wait_until(LIMIT, || !is_up(&s, x)).await, "x never down");
    assert_eq!(spread(proxy, 4).await, vec!["a"; 4]);
    healthy.store(true, Ordering::SeqCst);
    assert!(wait_until(LIMIT, || is_up(&s, x)).await, "x never up");
    assert_eq!(
        tally(&spread(proxy, 4).await),
        counts(&[("a", 2), ("x", 2)])
    );
    assert!(is_up(&set, a.addr));
    assert_eq!(status(&set, a.addr).unwrap().transitions, 0);
    // A probe's WebSocket ends with a proper Close 1001.
    a.saw("the probe's Close 1001", |m| close_code(m) == Some(1001))
        .await;
}

// ---------------------------------------------------------------------
// Sticky cookies and backups.
// ---------------------------------------------------------------------

/// The value of cookie `name` in a `Set-Cookie` header.
fn cookie_value<'a>(set_cookie: &'a str, name: &str) -> &'a str {
    set_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {set_cookie:?}"))
}

#[tokio::test]
async fn a_sticky_cookie_brings_a_client_back_to_its_backend_until_it_leaves() {
    let backends = three().await;
    let addr_of = |name: &str| backends[usize::from(name.as_bytes()[0] - b'a')].addr;
    let set = Backends::new(members(&backends)).sticky_cookie("wsb");
    let (proxy, _) = balancer(&set).await;

    let (head, _) = knock(proxy, "").await;
    let home = answered(&head);
    let set_cookie = head.header("set-cookie").expect("a sticky cookie");
    let value = cookie_value(set_cookie, "wsb").to_owned();
    assert!(
        value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "{set_cookie}"
    );
    // Keyed: not the backend's id, which anyone can compute from its URL.
    assert_ne!(value, id(addr_of(&home)).to_string());
    assert!(set_cookie.contains("Path=/") && set_cookie.contains("HttpOnly"));
    assert!(!set_cookie.contains(&addr_of(&home).port().to_string()));

    let presented = format!("Cookie: theme=dark; wsb={value}\r\n");
    let mut without = Vec::new();
    for _ in 0..10 {
        let (head, _) = knock(proxy, &presented).await;
        assert_eq!(answered(&head), home);
        assert_eq!(head.header("set-cookie"), None, "it already has it");
        // Without the cookie, round-robin goes on as usual.
        without.push(once(proxy, "").await);
    }
    assert_eq!(tally(&without).len(), 3, "{without:?}");

    // Its backend leaves: the client goes elsewhere and gets a new cookie.
    assert!(set.remove(id(addr_of(&home))));
    let (head, _) = knock(proxy, &presented).await;
    let moved = answered(&head);
    assert_ne!(moved, home);
    let set_cookie = head.header("set-cookie").expect("a new sticky cookie");
    let new_value = cookie_value(set_cookie, "wsb").to_owned();
    assert_ne!(new_value, value);
    let presented = format!("Cookie: wsb={new_value}\r\n");
    for _ in 0..5 {
        assert_eq!(once(proxy, &presented).await, moved);
    }
}

#[tokio::test]
async fn a_backup_takes_websockets_only_while_no_primary_is_usable() {
    let a = named("a").await;
    let b = named("b").await;
    let spare = named("spare").await;
    let set = Backends::new([
        member(a.addr),
        member(b.addr),
        member(spare.addr).backup(true),
    ]);
    let (proxy, _) = balancer(&set).await;
    assert_eq!(
        tally(&spread(proxy, 6).await),
        counts(&[("a", 3), ("b", 3)])
    );

    // One primary is removed: the other carries on alone.
    assert!(set.remove(id(a.addr)));
    assert_eq!(spread(proxy, 4).await, vec!["b"; 4]);
    // The other drains with a tunnel open: no primary left.
    let (mut held, name) = open(proxy).await;
    assert_eq!(name, "b");
    assert!(set.drain(id(b.addr)));
    assert_eq!(spread(proxy, 4).await, vec!["spare"; 4]);
    echo(&mut held, Message::text("b still serves me")).await;

    // A primary comes back: the backup is idle again.
    assert!(set.insert(member(a.addr)));
    assert_eq!(spread(proxy, 4).await, vec!["a"; 4]);
    assert_eq!(spare.connections(), 4);
}

#[tokio::test]
async fn a_backup_covers_for_a_dead_primary_within_the_same_handshake() {
    let (_port, dead) = closed_port();
    let spare = named("spare").await;
    let set = Backends::new([member(dead), member(spare.addr).backup(true)]);
    let (proxy, _) = balancer(&set).await;
    assert_eq!(spread(proxy, 5).await, vec!["spare"; 5]);
    assert!(!is_up(&set, dead));
}

// ---------------------------------------------------------------------
// Changing the set at runtime.
// ---------------------------------------------------------------------

#[tokio::test]
async fn inserting_removing_and_draining_leave_open_tunnels_alone() {
    let [a, b, c] = three().await;
    let set = Backends::new([member(a.addr), member(b.addr)]);
    let (proxy, tunnels) = balancer(&set).await;
    let (first, first_name) = open(proxy).await;
    let (second, second_name) = open(proxy).await;
    let (mut to_a, mut to_b) = match (first_name.as_str(), second_name.as_str()) {
        ("a", "b") => (first, second),
        ("b", "a") => (second, first),
        other => panic!("{other:?}"),
    };

    // `c` joins: new WebSockets reach it.
    assert!(set.insert(member(c.addr)));
    assert!(spread(proxy, 6).await.contains(&"c".to_owned()));

    // `a` leaves: its open tunnel goes on, no new one reaches it.
    assert!(set.remove(id(a.addr)));
    assert!(status(&set, a.addr).is_none());
    echo(&mut to_a, Message::text("a, removed")).await;
    assert!(!spread(proxy, 6).await.contains(&"a".to_owned()));

    // `b` drains: its open tunnel goes on, no new one reaches it, and it
    // leaves the set when that tunnel ends.
    assert!(set.drain(id(b.addr)));
    let draining = status(&set, b.addr).unwrap();
    assert_eq!((draining.draining, draining.open), (true, 1));
    echo(&mut to_b, Message::text("b, draining")).await;
    assert_eq!(spread(proxy, 6).await, vec!["c"; 6]);
    close(to_b).await;
    let s = set.clone();
    assert!(wait_until(LIMIT, || status(&s, b.addr).is_none()).await);
    assert_eq!(set.status().len(), 1);

    echo(&mut to_a, Message::text("a, still")).await;
    assert_eq!(tunnels.stats().ended.backend_down, 0);
}

#[tokio::test]
async fn removing_a_backend_can_close_its_tunnels_with_1001() {
    let a = named("a").await;
    let b = named("b").await;
    let set = Backends::new([member(a.addr), member(b.addr)])
        .close_tunnels_when_down(Some(Duration::from_secs(1)));
    let (proxy, tunnels) = balancer(&set).await;
    let (first, first_name) = open(proxy).await;
    let (second, _) = open(proxy).await;
    let (mut to_a, mut to_b) = if first_name == "a" {
        (first, second)
    } else {
        (second, first)
    };

    assert!(set.remove(id(a.addr)));
    match within("the Close", to_a.next()).await {
        Some(Ok(message)) if close_code(&message) == Some(1001) => {}
        other => panic!("expected Close 1001, got {other:?}"),
    }
    while let Some(Ok(_)) = within("the end", to_a.next()).await {}
    let t = tunnels.clone();
    assert!(wait_until(LIMIT, || t.open() == 1).await);
    assert_eq!(
        tunnels.stats().ended.backend_down,
        1,
        "{:?}",
        tunnels.stats()
    );
    // The backend got Close 1001 too; `b`'s tunnel is untouched.
    let seen = a.seen.clone();
    assert!(
        wait_until(LIMIT, || seen
            .lock()
            .unwrap()
            .messages
            .iter()
            .any(|m| close_code(m) == Some(1001)))
        .await
    );
    echo(&mut to_b, Message::text("b, untouched")).await;
}

/// Where a test sends discovery changes.
type Changes = tokio::sync::mpsc::UnboundedSender<Change<&'static str, balance::Backend>>;

/// A channel of discovery changes that `set` follows; the task ends with
/// the stream.
fn follow_channel(
    set: &Backends,
) -> (
    Changes,
    tokio::task::JoinHandle<Result<(), std::convert::Infallible>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let changes = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|change| (Ok::<_, std::convert::Infallible>(change), rx))
    });
    (tx, tokio::spawn(set.clone().discover(changes)))
}

#[tokio::test]
async fn a_discover_stream_adds_and_removes_backends() {
    let a = named("a").await;
    let b = named("b").await;
    let set = Backends::new(Vec::<balance::Backend>::new());
    let (proxy, _) = balancer(&set).await;
    let (tx, follow) = follow_channel(&set);
    let ids =
        |set: &Backends| -> BTreeSet<BackendId> { set.status().iter().map(|s| s.id).collect() };

    // Nothing discovered yet.
    let (head, _) = knock(proxy, "").await;
    assert_eq!(head.status, 503, "{}", head.text);

    tx.send(Change::Insert("first", member(a.addr))).unwrap();
    let s = set.clone();
    assert!(wait_until(LIMIT, || ids(&s) == BTreeSet::from([id(a.addr)])).await);
    assert_eq!(spread(proxy, 3).await, vec!["a"; 3]);

    tx.send(Change::Insert("second", member(b.addr))).unwrap();
    assert!(wait_until(LIMIT, || ids(&s).len() == 2).await);
    assert_eq!(
        tally(&spread(proxy, 4).await),
        counts(&[("a", 2), ("b", 2)])
    );

    tx.send(Change::Remove("first")).unwrap();
    assert!(wait_until(LIMIT, || ids(&s) == BTreeSet::from([id(b.addr)])).await);
    assert_eq!(spread(proxy, 3).await, vec!["b"; 3]);

    // A key that names another backend now replaces the old one.
    tx.send(Change::Insert("second", member(a.addr))).unwrap();
    assert!(wait_until(LIMIT, || ids(&s) == BTreeSet::from([id(a.addr)])).await);
    assert_eq!(spread(proxy, 3).await, vec!["a"; 3]);

    drop(tx);
    within("the stream ends", follow).await.unwrap().unwrap();
}

// ---------------------------------------------------------------------
// Slow start.
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_backend_inserted_under_slow_start_gets_less_than_its_share_at_first() {
    let old = named("old").await;
    let new = named("new").await;
    let set = Backends::new([member(old.addr).weight(10)]).slow_start(Duration::from_secs(10));
    let (proxy, _) = balancer(&set).await;

    assert!(set.insert(member(new.addr).weight(10)));
    // Same weight, but it starts at 1 of 10 and ramps up over 10 s: in
    // the first 50 (well under a second) it gets about 1 in 11, far from
    // its full share of 25.
    let took = spread(proxy, 50).await;
    let fresh = tally(&took).get("new").copied().unwrap_or(0);
    assert!(
        (1..15).contains(&fresh),
        "{fresh} of 50: {:?}",
        tally(&took)
    );
}

#[tokio::test]
async fn slow_start_leaves_the_backends_a_set_starts_with_at_full_weight() {
    let a = named("a").await;
    let b = named("b").await;
    // Neither came back up nor was added at runtime: no ramp.
    let set = Backends::new([member(a.addr).weight(3), member(b.addr)])
        .slow_start(Duration::from_secs(60));
    let (proxy, _) = balancer(&set).await;
    assert_eq!(
        tally(&spread(proxy, 40).await),
        counts(&[("a", 30), ("b", 10)])
    );
}

// ---------------------------------------------------------------------
// Closing the tunnels of a backend that goes down or leaves.
// ---------------------------------------------------------------------

/// Probes mark a backend down whose listener stopped (its sessions go
/// on); with `close_tunnels_when_down` set before or after
/// `active_health`, its open tunnel is closed with 1001.
async fn probes_close_the_tunnels_of_a_backend_they_mark_down(close_set_first: bool) {
    let (a, accept) = Backend::stoppable(tag("a")).await;
    let b = named("b").await;
    let grace = Some(Duration::from_secs(1));
    let health = every_100ms(Probe::tcp());
    let set =
        Backends::new([member(a.addr), member(b.addr)]).passive_health(PassiveHealth::disabled());
    let set = if close_set_first {
        set.close_tunnels_when_down(grace).active_health(health)
    } else {
        set.active_health(health).close_tunnels_when_down(grace)
    };
    let (proxy, tunnels) = balancer(&set).await;
    let (first, first_name) = open(proxy).await;
    let (second, _) = open(proxy).await;
    let (mut to_a, mut to_b) = if first_name == "a" {
        (first, second)
    } else {
        (second, first)
    };

    accept.abort();
    let _ = accept.await;
    let s = set.clone();
    assert!(wait_until(LIMIT, || !is_up(&s, a.addr)).await, "never down");
    // The Close comes at once; three seconds is generous.
    let next = tokio::time::timeout(Duration::from_secs(3), to_a.next())
        .await
        .expect("no Close 1001: the tunnel of the backend marked down stays open");
    match next {
        Some(Ok(message)) if close_code(&message) == Some(1001) => {}
        other => panic!("expected Close 1001, got {other:?}"),
    }
    while let Some(Ok(_)) = within("the end", to_a.next()).await {}
    let t = tunnels.clone();
    assert!(wait_until(LIMIT, || t.open() == 1).await);
    assert_eq!(tunnels.stats().ended.backend_down, 1);
    echo(&mut to_b, Message::text("b, untouched")).await;
}

#[tokio::test]
async fn probes_close_the_tunnels_of_a_backend_they_mark_down_when_told_to() {
    probes_close_the_tunnels_of_a_backend_they_mark_down(true).await;
}

#[tokio::test]
async fn close_tunnels_when_down_also_applies_when_set_after_active_health() {
    probes_close_the_tunnels_of_a_backend_they_mark_down(false).await;
}

// Regression: `remove` fires the member's close signal and puts a fresh one
// in its place; a tunnel must watch the signal taken when its backend was
// chosen, not the fresh one.
#[tokio::test]
async fn a_handshake_under_way_when_its_backend_is_removed_does_not_leave_a_tunnel_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that answers its first handshake only when told to.
    let (asked_tx, asked) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    let slow = scripted_backend(|mut stream, head| async move {
        asked_tx.send(()).unwrap();
        let _ = go_rx.await;
        stream
            .write_all(switching_protocols(&head).as_bytes())
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    })
    .await;
    let b = named("b").await;
    let set = Backends::new([member(slow), member(b.addr)])
        .close_tunnels_when_down(Some(Duration::from_millis(500)));
    let (proxy, tunnels) = balancer(&set).await;

    // Round-robin sends the first handshake to the slow one; it is
    // removed while it hesitates, then answers.
    let client = tokio::spawn(async move {
        let mut stream = raw(proxy, handshake("/", "").as_bytes()).await;
        let head = read_head(&mut stream).await;
        (stream, head)
    });
    within("the slow backend is asked", asked).await.unwrap();
    assert!(set.remove(id(slow)));
    go.send(()).unwrap();
    let (mut stream, head) = within("an answer", client).await.unwrap();
    // The backend's 101 is relayed (it answered), and then the tunnel is
    // closed with 1001 like every other tunnel of the removed backend.
    assert_eq!(head.status, 101);
    let mut buf = head.rest;
    let frame = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut stream, &mut buf))
        .await
        .expect("no Close 1001: a tunnel to the removed backend stays open");
    assert_eq!(frame.and_then(|f| f.close_code()), Some(1001));
    let t = tunnels.clone();
    assert!(wait_until(LIMIT, || t.open() == 0).await);
}

// Regression: the old member's last load unit must remove that member
// only, not a newer one with the same URL.
#[tokio::test]
async fn a_drained_backend_removed_and_added_again_stays_when_its_old_tunnel_ends() {
    let a = named("a").await;
    let b = named("b").await;
    let set = Backends::new([member(a.addr), member(b.addr)]);
    let (proxy, tunnels) = balancer(&set).await;
    let (first, first_name) = open(proxy).await;
    let (second, _) = open(proxy).await;
    let (to_a, to_b) = if first_name == "a" {
        (first, second)
    } else {
        (second, first)
    };

    assert!(set.drain(id(a.addr)));
    // A change of mind: there is no "undrain", so out and in again.
    assert!(set.remove(id(a.addr)));
    assert!(set.insert(member(a.addr)));
    let back = status(&set, a.addr).unwrap();
    assert_eq!((back.draining, back.open), (false, 0));
    assert_eq!(
        tally(&spread(proxy, 4).await),
        counts(&[("a", 2), ("b", 2)])
    );

    // The tunnel from before the drain ends.
    close(to_a).await;
    let t = tunnels.clone();
    assert!(wait_until(LIMIT, || t.open() == 1).await);
    assert!(
        status(&set, a.addr).is_some(),
        "the backend added again left with the old drained one's last tunnel: {:?}",
        set.status()
    );
    assert_eq!(
        tally(&spread(proxy, 4).await),
        counts(&[("a", 2), ("b", 2)])
    );
    drop(to_b);
}

// ---------------------------------------------------------------------
// More of consistent hashing and discovery.
// ---------------------------------------------------------------------

#[tokio::test]
async fn consistent_hashing_moves_only_the_keys_of_a_backend_that_leaves_and_brings_them_back() {
    let backends = three().await;
    let b = &backends[1];
    let set = Backends::new(members(&backends)).strategy(ConsistentHash::new(Key::query("room")));
    let (proxy, _) = balancer(&set).await;
    let homes = |proxy| async move {
        let mut homes = Vec::with_capacity(100);
        for room in 0..100 {
            let mut stream = raw(proxy, handshake(&format!("/?room={room}"), "").as_bytes()).await;
            homes.push(answered(&read_head(&mut stream).await));
        }
        homes
    };
    let before = homes(proxy).await;
    assert_eq!(tally(&before).len(), 3, "{:?}", tally(&before));

    assert!(set.remove(id(b.addr)));
    let without_b = homes(proxy).await;
    for (room, (was, is)) in before.iter().zip(&without_b).enumerate() {
        if was == "b" {
            assert_ne!(is, "b", "room {room}");
        } else {
            assert_eq!(is, was, "room {room} moved though its backend stayed");
        }
    }

    assert!(set.insert(member(b.addr)));
    assert_eq!(homes(proxy).await, before, "every room back home");
}

#[tokio::test]
async fn bounded_load_spills_one_hot_key_over_to_other_backends() {
    let backends = three().await;
    let set = Backends::new(members(&backends)).strategy(
        ConsistentHash::new(Key::header(HeaderName::from_static("x-room"))).bounded_load(1.25),
    );
    let (proxy, _) = balancer(&set).await;

    // Twelve held tunnels for one hot room: no backend above
    // ceil(1.25 × 12 / 3) = 5 open tunnels.
    let mut held = Vec::new();
    let mut took = Vec::new();
    for _ in 0..12 {
        let (head, stream) = knock(proxy, "X-Room: hot\r\n").await;
        took.push(answered(&head));
        held.push(stream);
    }
    let shares = tally(&took);
    assert_eq!(shares.len(), 3, "{shares:?}");
    assert!(shares.values().all(|&n| n <= 5), "{shares:?}");
    let open: Vec<usize> = set.status().iter().map(|s| s.open).collect();
    assert!(open.iter().all(|&n| n <= 5), "{open:?}");
    // The hot room's own backend has the most.
    assert_eq!(
        shares[&took[0]],
        *shares.values().max().unwrap(),
        "{shares:?}"
    );
}

// Regression: a discover insert for a known key and the same URL must
// update the backend's settings, not be refused.
#[tokio::test]
async fn a_discover_insert_for_a_known_key_replaces_its_backends_settings() {
    let a = named("a").await;
    let b = named("b").await;
    let set = Backends::new(Vec::<balance::Backend>::new());
    let (proxy, _) = balancer(&set).await;
    let (tx, follow) = follow_channel(&set);

    tx.send(Change::Insert("a", member(a.addr))).unwrap();
    tx.send(Change::Insert("b", member(b.addr))).unwrap();
    let s = set.clone();
    assert!(wait_until(LIMIT, || s.status().len() == 2).await);
    // The registry now says `a` weighs 3.
    tx.send(Change::Insert("a", member(a.addr).weight(3)))
        .unwrap();
    drop(tx);
    within("the stream ends", follow).await.unwrap().unwrap();
    assert_eq!(
        status(&set, a.addr).map(|s| s.weight),
        Some(3),
        "the new settings were dropped: {:?}",
        set.status()
    );
    assert_eq!(
        tally(&spread(proxy, 8).await),
        counts(&[("a", 6), ("b", 2)])
    );
}
