//! What issue 12 gave `wsgate`, configured from its file: authentication
//! at the handshake (an auth service, Python's `http.server` here, or a
//! JWT), limits shared by two gateway processes through a real
//! `redis-server`, and backends found in DNS (a name server of the test's).

mod support;

use wsproxy_test_support::{
    Backend, LIMIT, PemFiles, RedisServer, handshake, python_backend, raw, read_body, read_head,
    wait_until,
};

use support::{Folder, Gateway, check_refuses};

/// A gateway on `extra` TOML with one route `/a` to `backend`.
fn start(folder: &Folder, extra: &str, backend: &Backend) -> Gateway {
    let text = format!(
        "workers = 1\n{extra}\n[[routes]]\nprefix = \"/a\"\nupstream = \"one\"\n\n\
         [upstreams.one]\nbackends = [\"{}\"]\n",
        backend.url()
    );
    let file = folder.write("wsgate.toml", &text);
    Gateway::start(&["--config", PemFiles::arg(&file)])
}

/// A handshake for `/a` with `extra` header lines: status, headers, body.
async fn try_open(gateway: &Gateway, extra: &str) -> (wsproxy_test_support::Head, String) {
    let mut stream = raw(gateway.addr, handshake("/a", extra).as_bytes()).await;
    let head = read_head(&mut stream).await;
    let body = if head.status == 101 {
        Vec::new()
    } else {
        read_body(&mut stream, &head).await
    };
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn forward_auth_admits_who_the_auth_service_knows_and_relays_its_refusals() {
    let backend = Backend::start().await;
    let (_python, auth) = python_backend("auth_service.py").await;
    let folder = Folder::new();
    let gateway = start(
        &folder,
        &format!(
            "[admission.forward_auth]\nurl = \"http://{auth}/auth\"\n\
             copy_headers = [\"X-User-Id\", \"x-asked\"]\ncache = \"1h\"\n"
        ),
        &backend,
    );

    // Known: admitted, with who it is; the client's own claim removed.
    let alice = "Cookie: session=alice\r\nX-User-Id: admin\r\n";
    let (head, _) = try_open(&gateway, alice).await;
    assert_eq!(head.status, 101);
    let seen = backend.last_headers();
    assert_eq!(
        seen.get_all("x-user-id").iter().collect::<Vec<_>>(),
        ["alice"]
    );
    assert_eq!(seen["x-asked"], "1");
    // Again: from the cache (the service was not asked a second time).
    assert_eq!(try_open(&gateway, alice).await.0.status, 101);
    assert_eq!(backend.last_headers()["x-asked"], "1");
    assert_eq!(backend.connections(), 2);

    // Unknown: the service's 401 with its header and body; no backend.
    let (head, body) = try_open(&gateway, "Cookie: session=mallory\r\n").await;
    assert_eq!(head.status, 401);
    assert_eq!(
        head.header("www-authenticate"),
        Some("Bearer realm=\"chat\"")
    );
    assert_eq!(body, "{\"error\":\"log in first\"}");
    assert_eq!(backend.connections(), 2);
    // The access log has the refusal.
    gateway.wait_log("\"GET /a HTTP/1.1\" 401 ");
}

#[test]
fn a_forward_auth_url_is_checked() {
    let stderr = check_refuses(
        &Folder::new(),
        "demo = true
[admission.forward_auth]
url = \"https://auth.internal/check\"
",
    );
    assert!(
        stderr.contains("admission.forward_auth.url: invalid upstream \"https://auth.internal/check\": an auth service URL starts with http://"),
        "{stderr}"
    );
}

/// Two gateways with `[admission]` `limits` kept in `redis` under `prefix`.
fn two_sharing(
    redis: &RedisServer,
    backend: &Backend,
    limits: &str,
    prefix: &str,
) -> [(Folder, Gateway); 2] {
    [(), ()].map(|()| {
        let folder = Folder::new();
        let gateway = start(
            &folder,
            &format!(
                "[admission]\n{limits}\n[admission.redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\nlease = \"2s\"\n",
                redis.url()
            ),
            backend,
        );
        (folder, gateway)
    })
}

#[tokio::test]
async fn two_gateways_share_a_connection_limit_and_a_killed_ones_leases_run_out() {
    let redis = RedisServer::start().await;
    let backend = Backend::start().await;
    let [(_f1, mut one), (_f2, two)] =
        two_sharing(&redis, &backend, "max_conns_per_ip = 3", "conns");

    // Three in all, whichever gateway they reach.
    let (a, _open_a) = try_open_kept(&one).await;
    let (b, _open_b) = try_open_kept(&one).await;
    let (c, _open_c) = try_open_kept(&two).await;
    assert_eq!((a, b, c), (101, 101, 101));
    assert_eq!(try_open(&one, "").await.0.status, 429);
    assert_eq!(try_open(&two, "").await.0.status, 429);
    assert_eq!(redis.integer(&["ZCARD", "conns:conns:key:127.0.0.1"]), 3);

    // `kill -9` the one with two: no goodbye, its leases are not renewed
    // and run out (lease = 2 s), so the other admits again.
    one.signal("KILL");
    assert!(
        wait_until(LIMIT, || !one.is_running()).await,
        "the first gateway is gone"
    );
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut status = 0;
    while status != 101 && tokio::time::Instant::now() < deadline {
        status = try_open(&two, "").await.0.status;
    }
    assert_eq!(status, 101, "the dead gateway's permits ran out");
}

#[tokio::test]
async fn two_gateways_share_a_rate() {
    let redis = RedisServer::start().await;
    let backend = Backend::start().await;
    let [(_f1, one), (_f2, two)] =
        two_sharing(&redis, &backend, "rate_per_ip = \"1/m\"\nburst = 3", "rate");
    let mut statuses = Vec::new();
    for gateway in [&one, &two, &one, &two, &one] {
        statuses.push(try_open(gateway, "").await.0.status);
    }
    assert_eq!(statuses, [101, 101, 101, 101, 429], "one budget for both");
    let (head, _) = try_open(&two, "").await;
    // Whole seconds until the next is due, rounded up (59 if a second
    // went by on a loaded machine).
    let retry: u64 = head.header("retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "{retry}");
}

#[tokio::test]
async fn with_redis_down_each_gateway_keeps_the_limits_alone_or_refuses() {
    let mut redis = RedisServer::start().await;
    let backend = Backend::start().await;
    let folder = Folder::new();
    let redis_section = |policy: &str| {
        format!(
            "[admission]\nmax_conns_per_ip = 1\n[admission.redis]\nurl = \"{}\"\n\
             timeout = \"1s\"\non_failure = \"{policy}\"\n",
            redis.url()
        )
    };
    let local = start(&folder, &redis_section("local"), &backend);
    let folder2 = Folder::new();
    let closed = start(&folder2, &redis_section("closed"), &backend);
    redis.stop();
    let (status, _held) = try_open_kept(&local).await;
    assert_eq!(status, 101);
    assert_eq!(
        try_open(&local, "").await.0.status,
        429,
        "its own limit of 1"
    );
    assert_eq!(try_open(&closed, "").await.0.status, 503);
    local.wait_log("Redis does not answer");
    redis.start_again().await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut status = 0;
    while status != 101 && tokio::time::Instant::now() < deadline {
        status = try_open(&closed, "").await.0.status;
    }
    assert_eq!(status, 101, "shared again once Redis is back");
}

/// A handshake for `/a` whose connection is kept open: its status.
async fn try_open_kept(gateway: &Gateway) -> (u16, tokio::net::TcpStream) {
    let mut stream = raw(gateway.addr, handshake("/a", "").as_bytes()).await;
    (read_head(&mut stream).await.status, stream)
}

#[test]
fn redis_needs_something_to_share() {
    let stderr = check_refuses(
        &Folder::new(),
        "demo = true
[admission.redis]
url = \"redis://127.0.0.1:6379/\"
",
    );
    assert!(
        stderr.contains("admission.redis: nothing to share"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_jwt_from_a_cookie_or_a_subprotocol_admits_with_its_subject() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let backend = Backend::start().await;
    let secret = "a secret of more than thirty-two bytes, for HS256";
    let folder = Folder::new();
    let gateway = start(
        &folder,
        &format!(
            "[admission.jwt]\nalgorithm = \"HS256\"\nsecret = \"{secret}\"\naudience = [\"chat\"]\n\
             token_from = [\"cookie:session\", \"protocol:bearer.\"]\n\
             claim_headers = {{ sub = \"X-User-Id\" }}\n"
        ),
        &backend,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |aud: &str, exp: u64| {
        encode(
            &Header::default(),
            &serde_json::json!({"sub": "alice", "aud": aud, "exp": exp}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let good = token("chat", now + 600);
    let (head, _) = try_open(
        &gateway,
        &format!("Cookie: session={good}\r\nX-User-Id: root\r\n"),
    )
    .await;
    assert_eq!(head.status, 101);
    let seen = backend.last_headers();
    assert_eq!(
        seen.get_all("x-user-id").iter().collect::<Vec<_>>(),
        ["alice"]
    );
    assert!(
        seen.get("cookie").is_none(),
        "the token stays with the gateway"
    );
    let (head, _) = try_open(
        &gateway,
        &format!("Sec-WebSocket-Protocol: bearer.{good}\r\n"),
    )
    .await;
    assert_eq!(head.status, 101);

    for bad in [token("chat", now - 600), token("billing", now + 600)] {
        let (head, _) = try_open(&gateway, &format!("Cookie: session={bad}\r\n")).await;
        assert_eq!(head.status, 401);
        assert!(
            head.header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
    }
    assert_eq!(try_open(&gateway, "").await.0.status, 401);
    assert_eq!(backend.connections(), 2);
    gateway.wait_log("\"GET /a HTTP/1.1\" 401 ");
}

#[test]
fn a_jwt_check_needs_its_key() {
    let folder = Folder::new();
    for (section, expected) in [
        (
            "algorithm = \"HS256\"\nsecret = \"short\"",
            "HS256 needs a secret of at least 32 bytes",
        ),
        ("algorithm = \"RS256\"", "RS256 needs key_file"),
        (
            "algorithm = \"RS256\"\nkey_file = \"missing.pem\"",
            "key_file",
        ),
        (
            "jwks_url = \"https://idp.example/jwks\"",
            "jwks_url: invalid upstream",
        ),
        (
            "algorithm = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\ntoken_from = [\"form:x\"]",
            "invalid token place 'form:x'",
        ),
    ] {
        let stderr = check_refuses(
            &folder,
            &format!("demo = true\n[admission.jwt]\n{section}\n"),
        );
        assert!(stderr.contains(expected), "{section}: {stderr}");
    }
}

/// An upstream whose backends come from DNS (a name server the test
/// controls): handshakes follow the SRV records; a backend that leaves
/// them keeps its open tunnel.
#[tokio::test]
async fn backends_found_in_dns_follow_its_records() {
    use tokio_tungstenite::tungstenite::Message;
    use wsproxy_test_support::{DnsServer, connect, echo};
    let first = Backend::start().await;
    let second = Backend::start().await;
    let dns = DnsServer::start().await;
    dns.set_ips("a.chat.test", &[std::net::Ipv4Addr::LOCALHOST.into()]);
    dns.set_srv(
        "_ws._tcp.chat.test",
        &[(10, 1, first.addr.port(), "a.chat.test")],
    );
    let folder = Folder::new();
    let text = format!(
        "workers = 1\n[[routes]]\nprefix = \"/a\"\nupstream = \"chat\"\n\n\
         [upstreams.chat]\nbackends = {{ srv = \"_ws._tcp.chat.test\", interval = \"100ms\", \
         nameservers = [\"{}\"] }}\n",
        dns.addr
    );
    let file = folder.write("wsgate.toml", &text);
    let gateway = Gateway::start(&["--config", PemFiles::arg(&file)]);

    // Open once DNS has answered.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut status = 0;
    while status != 101 && tokio::time::Instant::now() < deadline {
        status = try_open(&gateway, "").await.0.status;
    }
    assert_eq!(status, 101);
    let mut open = connect(&format!("ws://{}/a", gateway.addr)).await;
    echo(&mut open, Message::text("first")).await;
    assert_eq!(first.connections(), 2);

    // The records now name the second backend only.
    dns.set_srv(
        "_ws._tcp.chat.test",
        &[(10, 1, second.addr.port(), "a.chat.test")],
    );
    let deadline = tokio::time::Instant::now() + LIMIT;
    while second.connections() == 0 && tokio::time::Instant::now() < deadline {
        assert_eq!(try_open(&gateway, "").await.0.status, 101);
    }
    assert!(second.connections() > 0, "new handshakes go to the second");
    let before = first.connections();
    assert_eq!(try_open(&gateway, "").await.0.status, 101);
    assert_eq!(first.connections(), before, "none to the first any more");
    echo(&mut open, Message::text("drained, not cut")).await;
}

#[test]
fn a_dns_upstream_is_checked() {
    let folder = Folder::new();
    for (backends, expected) in [
        (
            "{ dns = \"chat.internal\" }",
            "dns 'chat.internal': a HOST:PORT",
        ),
        ("{ dns = \"a:1\", srv = \"b\" }", "one of dns"),
        ("{ name = \"x\" }", "unknown field `name`"),
    ] {
        let stderr = check_refuses(
            &folder,
            &format!(
                "[[routes]]\nprefix = \"/\"\nupstream = \"u\"\n[upstreams.u]\nbackends = {backends}\n"
            ),
        );
        assert!(stderr.contains(expected), "{backends}: {stderr}");
    }
}

/// Limits kept in Redis run before authentication, as local rate limits
/// do: handshakes with bad tokens use up the client's rate (so guessing is
/// limited), and the lease each took is given back with its refusal.
#[tokio::test]
async fn shared_limits_are_checked_before_authentication() {
    let redis = RedisServer::start().await;
    let backend = Backend::start().await;
    let folder = Folder::new();
    let gateway = start(
        &folder,
        &format!(
            "[admission]\nrate_per_ip = \"1/m\"\nburst = 1\nmax_conns_per_ip = 5\n\
             [admission.redis]\nurl = \"{}\"\nprefix = \"order\"\n\
             [admission.jwt]\nalgorithm = \"HS256\"\nsecret = \"a secret of more than thirty-two bytes, for HS256\"\n",
            redis.url()
        ),
        &backend,
    );
    let bad = "Authorization: Bearer not.a.token\r\n";
    assert_eq!(try_open(&gateway, bad).await.0.status, 401);
    assert_eq!(try_open(&gateway, bad).await.0.status, 401);
    assert_eq!(
        try_open(&gateway, bad).await.0.status,
        429,
        "the rate is spent by refused tokens too"
    );
    let r = &redis;
    assert!(
        wait_until(LIMIT, || r.integer(&["ZCARD", "order:conns:key:127.0.0.1"])
            == 0)
        .await,
        "the leases of refused handshakes are given back"
    );
    assert_eq!(backend.connections(), 0);
}
