//! `SharedLimit` against a real `redis-server`: two instances (two apps
//! with a limit each, as two replicas would have) share one budget; open
//! tunnels' leases are renewed; Redis down and back with each policy.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceBuilder;
use wsproxy::WebSocketProxyLayer;
use wsproxy::admit::{ConnectionLimit, Key, Rate, RateLimit, SharedLimit};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

/// An app with `admission` in front of a proxy to `backend`.
async fn instance<A>(backend: &Backend, admission: A) -> SocketAddr
where
    A: wsproxy::admit::Admission,
{
    let proxy = WebSocketProxyLayer::new(backend.url().parse().unwrap());
    serve(
        axum::Router::new()
            .route("/app", axum::routing::get(|| async { "app" }))
            .layer(
                ServiceBuilder::new()
                    .layer(wsproxy::admit::AdmitLayer::new(admission))
                    .layer(proxy),
            ),
    )
    .await
}

/// A handshake on a raw socket: its head and the open connection.
async fn try_open(addr: SocketAddr) -> (Head, tokio::net::TcpStream) {
    let mut stream = raw(addr, handshake("/", "").as_bytes()).await;
    let head = read_head(&mut stream).await;
    (head, stream)
}

#[tokio::test]
async fn two_instances_share_one_connection_budget() {
    let redis = RedisServer::start().await;
    let backend = Backend::start().await;
    let limit = || {
        SharedLimit::new(&redis.url())
            .unwrap()
            .prefix("t1")
            .max_open_per_key(Key::client_ip(), 3)
            .max_open(100)
    };
    let (a, b) = (limit(), limit());
    let one = instance(&backend, a.clone()).await;
    let two = instance(&backend, b.clone()).await;

    let mut first = connect(&format!("ws://{one}/")).await;
    let second = connect(&format!("ws://{one}/")).await;
    let third = connect(&format!("ws://{two}/")).await;
    assert_eq!((a.leases(), b.leases()), (2, 1));
    // The fourth is refused by both instances alike.
    for addr in [one, two] {
        let (head, _) = try_open(addr).await;
        assert_eq!(head.status, 429, "{addr}");
    }
    assert_eq!(backend.connections(), 3);
    assert_eq!(redis.integer(&["ZCARD", "t1:conns:key:127.0.0.1"]), 3);
    assert_eq!(redis.integer(&["ZCARD", "t1:conns:all"]), 3);

    // One ends: its lease is removed, and the other instance admits one.
    first.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, first.next()).await {}
    drop(first);
    assert!(
        wait_until(LIMIT, || redis.integer(&["ZCARD", "t1:conns:all"]) == 2).await,
        "the lease is given back"
    );
    let mut fourth = connect(&format!("ws://{two}/")).await;
    echo(&mut fourth, Message::text("admitted")).await;
    assert_eq!((a.leases(), b.leases()), (1, 2));
    drop((second, third));
}

#[tokio::test]
async fn a_shared_rate_admits_the_same_burst_and_retry_after_as_the_local_one() {
    let redis = RedisServer::start().await;
    let backend = Backend::start().await;
    let rate = Rate::per_minute(1).burst(4);
    let shared = || {
        SharedLimit::new(&redis.url())
            .unwrap()
            .prefix("t2")
            .rate_per_key(Key::client_ip(), rate)
    };
    let one = instance(&backend, shared()).await;
    let two = instance(&backend, shared()).await;
    let local = instance(&backend, RateLimit::new().per_key(Key::client_ip(), rate)).await;

    // Side by side: the local limiter alone, then the two shared instances
    // taking turns.
    let statuses = |addrs: Vec<SocketAddr>| async move {
        let mut seen = Vec::new();
        for addr in addrs {
            let (head, _) = try_open(addr).await;
            // Whole seconds, rounded up, until the next is due: 60 right
            // after the burst, 59 if a second went by on a loaded machine.
            let retry = head.header("retry-after").map(|v| match v.parse::<u64>() {
                Ok(59 | 60) => "59..=60".to_owned(),
                _ => v.to_owned(),
            });
            seen.push((head.status, retry));
        }
        seen
    };
    let local = statuses(vec![local; 6]).await;
    let shared = statuses(vec![one, two, one, two, one, two]).await;
    let admitted = (101, None);
    let refused = (429, Some("59..=60".to_owned()));
    let expected = vec![
        admitted.clone(),
        admitted.clone(),
        admitted.clone(),
        admitted.clone(),
        admitted,
        refused,
    ];
    assert_eq!(local, expected);
    assert_eq!(shared, expected, "one budget across both instances");
}

#[tokio::test]
async fn open_tunnels_keep_their_leases_past_the_lease_time() {
    let redis = RedisServer::start().await;
    let backend = Backend::start().await;
    let limit = SharedLimit::new(&redis.url())
        .unwrap()
        .prefix("t3")
        .max_open(1)
        .lease(Duration::from_millis(600));
    let addr = instance(&backend, limit).await;
    let mut open = connect(&format!("ws://{addr}/")).await;
    let score = |redis: &RedisServer| -> String {
        let reply = redis.query(&["ZRANGE", "t3:conns:all", "0", "-1", "WITHSCORES"]);
        reply.lines().nth(4).unwrap_or("").to_owned()
    };
    let first = score(&redis);
    assert!(!first.is_empty(), "a lease: {first:?}");
    // Renewed several times over (each renewal moves the expiry on)...
    let mut renewals = 0;
    let mut last = first.clone();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while renewals < 4 && tokio::time::Instant::now() < deadline {
        let now = score(&redis);
        if now != last && !now.is_empty() {
            renewals += 1;
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(renewals, 4, "the lease is renewed while the tunnel is open");
    // ...so, well past one lease, the tunnel still counts.
    let (head, _) = try_open(addr).await;
    assert_eq!(head.status, 503);
    echo(&mut open, Message::text("still open")).await;
}

#[tokio::test]
async fn redis_down_and_back_with_each_failure_policy() {
    let (logs, _guard) = Captured::start();
    let mut redis = RedisServer::start().await;
    let backend = Backend::start().await;
    // Generous: Redis killed fails at once; a loaded machine must not
    // turn a slow answer into an outage of its own.
    let timeout = Duration::from_secs(1);
    // Fail open, with this instance's own limit as the fallback.
    let open_policy = SharedLimit::new(&redis.url())
        .unwrap()
        .prefix("t4")
        .max_open_per_key(Key::client_ip(), 5)
        .timeout(timeout)
        .fallback(ConnectionLimit::new().max_open_per_key(Key::client_ip(), 1));
    let closed_policy = SharedLimit::new(&redis.url())
        .unwrap()
        .prefix("t4")
        .max_open_per_key(Key::client_ip(), 5)
        .timeout(timeout)
        .fail_closed();
    let open_addr = instance(&backend, open_policy).await;
    let closed_addr = instance(&backend, closed_policy).await;
    assert_eq!(try_open(open_addr).await.0.status, 101);
    drop(try_open(closed_addr).await);

    redis.stop();
    // Fail closed: 503, within the timeout (never a hung handshake).
    let (head, _) = within("a refusal in time", try_open(closed_addr)).await;
    assert_eq!(head.status, 503);
    // Fail open: the local fallback limit of 1 holds.
    let (head, _held) = within("an answer in time", try_open(open_addr)).await;
    assert_eq!(head.status, 101);
    let (head, _) = within("an answer in time", try_open(open_addr)).await;
    assert_eq!(head.status, 429, "the fallback limit applies");
    let warnings = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("Redis does not answer"))
        .count();
    assert_eq!(warnings, 2, "one warning per instance per outage");

    // Back: shared again (an empty Redis: no one holds a lease there yet).
    redis.start_again().await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut status = 0;
    while status != 101 && tokio::time::Instant::now() < deadline {
        status = try_open(closed_addr).await.0.status;
    }
    assert_eq!(status, 101, "fail-closed admits again once Redis answers");
    assert!(
        wait_until(LIMIT, || logs.text().contains("Redis answers again")).await,
        "logged"
    );
}

/// Redis answers after the handshake gave up on it (paused past the
/// timeout): the lease its script took then is given back, not left to
/// count until it runs out.
#[tokio::test]
async fn a_lease_taken_after_the_timeout_is_given_back() {
    let redis = RedisServer::start().await;
    let backend = Backend::start().await;
    let limit = SharedLimit::new(&redis.url())
        .unwrap()
        .prefix("t5")
        .rate_per_key(Key::client_ip(), Rate::per_minute(1).burst(100))
        .max_open(100)
        .timeout(Duration::from_millis(200));
    let addr = instance(&backend, limit).await;
    // Warm the connection (and load the script) first.
    drop(try_open(addr).await);
    let r = &redis;
    assert!(
        wait_until(LIMIT, || r.integer(&["ZCARD", "t5:conns:all"]) == 0).await,
        "the first tunnel's lease is given back"
    );
    assert_eq!(redis.query(&["CLIENT", "PAUSE", "1000", "ALL"]), "+OK\r\n");
    // Past the timeout: let on (no fallback), while the script waits.
    let (head, _open) = within("an answer in time", try_open(addr)).await;
    assert_eq!(head.status, 101);
    // Once Redis runs the script (the rate was charged twice) the lease
    // it took is removed again.
    assert!(
        wait_until(LIMIT, || r.integer(&["PTTL", "t5:rate:key:127.0.0.1"])
            > 61_000
            && r.integer(&["ZCARD", "t5:conns:all"]) == 0)
        .await,
        "ZCARD {}",
        redis.integer(&["ZCARD", "t5:conns:all"])
    );
}
