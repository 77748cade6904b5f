//! `JwtAuth` end to end with real tokens (signed here with `jsonwebtoken`):
//! each place a token may come from, every way a token is not good, claims
//! for headers and per-user limits, and a JWKS served over HTTP and rotated.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceBuilder;
use wsproxy::WebSocketProxyLayer;
use wsproxy::admit::{Claims, JwtAuth, Rate, RateLimit, TokenFrom};
use wsproxy_e2e::*;
use wsproxy_test_support::*;

const SECRET: &[u8] = b"a test secret that is long enough for HS256";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token with `claims` (an hour of validity unless they say).
fn hs256(claims: serde_json::Value) -> String {
    let mut all =
        json!({"sub": "alice", "aud": "chat", "iss": "https://auth.test", "exp": now() + 3600});
    all.as_object_mut()
        .unwrap()
        .extend(claims.as_object().unwrap().clone());
    encode(&Header::default(), &all, &EncodingKey::from_secret(SECRET)).unwrap()
}

async fn gateway(backend: &Backend, auth: JwtAuth) -> SocketAddr {
    serve(
        axum::Router::new()
            .route("/app", axum::routing::get(|| async { "app" }))
            .layer(WebSocketProxyLayer::new(backend.url().parse().unwrap()))
            .layer(auth.layer()),
    )
    .await
}

async fn ask(addr: SocketAddr, path: &str, extra: &str) -> Head {
    let mut stream = raw(addr, handshake(path, extra).as_bytes()).await;
    read_head(&mut stream).await
}

#[tokio::test]
async fn a_token_from_each_place_admits_and_does_not_reach_the_backend() {
    let backend = Backend::with(BackendOptions {
        protocol: Some("chat.v1"),
        ..Default::default()
    })
    .await;
    let auth = JwtAuth::hs256(SECRET)
        .audience(["chat"])
        .issuer(["https://auth.test"])
        .token_from([
            TokenFrom::Bearer(http::header::AUTHORIZATION),
            TokenFrom::Cookie("session".into()),
            TokenFrom::Query("access_token".into()),
            TokenFrom::Protocol("bearer.".into()),
        ])
        .claim_header("sub", "x-user-id".parse().unwrap());
    let addr = gateway(&backend, auth).await;
    let token = hs256(json!({}));

    // Authorization: Bearer; a forged X-User-Id is replaced by the claim.
    let head = ask(
        addr,
        "/",
        &format!("Authorization: Bearer {token}\r\nX-User-Id: root\r\n"),
    )
    .await;
    assert_eq!(head.status, 101);
    let seen = backend.last_headers();
    assert!(seen.get("authorization").is_none());
    assert_eq!(
        seen.get_all("x-user-id").iter().collect::<Vec<_>>(),
        ["alice"]
    );

    // A cookie: the other cookies pass.
    let head = ask(
        addr,
        "/",
        &format!("Cookie: theme=dark; session={token}; lang=en\r\n"),
    )
    .await;
    assert_eq!(head.status, 101);
    assert_eq!(backend.last_headers()["cookie"], "theme=dark; lang=en");

    // The query: the other parameters pass.
    let head = ask(addr, &format!("/room?id=7&access_token={token}&x=1"), "").await;
    assert_eq!(head.status, 101);
    assert_eq!(backend.last_uri(), "/room?id=7&x=1");

    // A subprotocol entry beside a real one: the backend picks the real
    // one, which is what the client is answered.
    let head = ask(
        addr,
        "/",
        &format!("Sec-WebSocket-Protocol: chat.v1, bearer.{token}\r\n"),
    )
    .await;
    assert_eq!(head.status, 101);
    assert_eq!(head.header("sec-websocket-protocol"), Some("chat.v1"));
    assert_eq!(backend.last_headers()["sec-websocket-protocol"], "chat.v1");

    // And a WebSocket client opens and echoes.
    let (mut ws, _) = connect_with(&format!("ws://{addr}/?access_token={token}"), &[]).await;
    echo(&mut ws, Message::text("hi")).await;
    // A client that offers only the token entry (a browser's
    // `new WebSocket(url, ["bearer." + token])`) gets it back, as a client
    // must get one of its offers; the backend is offered none.
    let entry = format!("bearer.{token}");
    let (mut ws, response) = connect_with(
        &format!("ws://{addr}/"),
        &[("sec-websocket-protocol", &entry)],
    )
    .await;
    assert_eq!(response.headers()["sec-websocket-protocol"], entry.as_str());
    assert!(
        backend
            .last_headers()
            .get("sec-websocket-protocol")
            .is_none()
    );
    echo(&mut ws, Message::text("hi")).await;
    assert_eq!(backend.connections(), 6);
}

#[tokio::test]
async fn tokens_that_are_not_good_are_refused_with_401() {
    let backend = Backend::start().await;
    let auth = JwtAuth::hs256(SECRET)
        .audience(["chat"])
        .issuer(["https://auth.test"]);
    let addr = gateway(&backend, auth).await;
    let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n");
    let other_key = encode(
        &Header::default(),
        &json!({"sub": "alice", "aud": "chat", "iss": "https://auth.test", "exp": now() + 3600}),
        &EncodingKey::from_secret(b"another secret, not the gateway's one at all"),
    )
    .unwrap();
    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &json!({"sub": "alice", "aud": "chat", "iss": "https://auth.test", "exp": now() + 3600}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD
            .encode(json!({"sub": "alice", "aud": "chat", "exp": now() + 3600}).to_string())
    );
    let cases = [
        ("missing", String::new(), None),
        (
            "expired",
            bearer(&hs256(json!({"exp": now() - 120}))),
            Some("expired"),
        ),
        (
            "not yet valid",
            bearer(&hs256(json!({"nbf": now() + 600}))),
            Some("not yet valid"),
        ),
        (
            "wrong audience",
            bearer(&hs256(json!({"aud": "billing"}))),
            Some("wrong audience"),
        ),
        (
            "wrong issuer",
            bearer(&hs256(json!({"iss": "https://evil.test"}))),
            Some("wrong issuer"),
        ),
        (
            "no exp",
            bearer(&hs256(json!({"exp": null}))),
            Some("missing claim"),
        ),
        ("other key", bearer(&other_key), Some("bad signature")),
        ("HS512", bearer(&hs512), Some("algorithm not allowed")),
        ("alg none", bearer(&unsigned), Some("malformed")),
        ("garbage", bearer("not.a.jwt"), Some("malformed")),
    ];
    for (what, extra, error) in cases {
        let head = ask(addr, "/", &extra).await;
        assert_eq!(head.status, 401, "{what}");
        let challenge = head
            .header("www-authenticate")
            .unwrap_or_default()
            .to_owned();
        assert!(
            challenge.starts_with("Bearer realm=\"websocket\""),
            "{what}: {challenge}"
        );
        match error {
            None => assert!(!challenge.contains("error="), "{what}: {challenge}"),
            Some(description) => {
                assert!(
                    challenge.contains("error=\"invalid_token\""),
                    "{what}: {challenge}"
                );
                assert!(challenge.contains(description), "{what}: {challenge}");
            }
        }
    }
    assert_eq!(backend.connections(), 0);
    // The good one, for contrast.
    assert_eq!(ask(addr, "/", &bearer(&hs256(json!({})))).await.status, 101);
}

#[tokio::test]
async fn claims_key_a_limit_per_user() {
    let backend = Backend::start().await;
    let addr = serve(
        axum::Router::new()
            .layer(WebSocketProxyLayer::new(backend.url().parse().unwrap()))
            .layer(
                ServiceBuilder::new()
                    .layer(JwtAuth::hs256(SECRET).layer())
                    .layer(
                        RateLimit::new()
                            .per_key(Claims::key("sub"), Rate::per_minute(1))
                            .layer(),
                    ),
            ),
    )
    .await;
    let as_user = |sub: &str| format!("Authorization: Bearer {}\r\n", hs256(json!({"sub": sub})));
    assert_eq!(ask(addr, "/", &as_user("alice")).await.status, 101);
    assert_eq!(ask(addr, "/", &as_user("alice")).await.status, 429);
    assert_eq!(ask(addr, "/", &as_user("bob")).await.status, 101);
}

/// A JWKS server whose key set the test replaces.
async fn jwks_server(set: Arc<Mutex<serde_json::Value>>) -> SocketAddr {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let set = set.lock().unwrap().clone();
            async move { axum::Json(set) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A P-256 key pair: its JWK (public, with `kid`) and its signing key.
fn es256_key(kid: &str) -> (serde_json::Value, EncodingKey) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let point = pair.public_key_raw();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    });
    let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    (jwk, signing)
}

fn es256(kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    encode(&header, &json!({"sub": "alice", "exp": now() + 3600}), key).unwrap()
}

#[tokio::test]
async fn a_jwks_is_fetched_refreshed_and_rotated() {
    let backend = Backend::start().await;
    let (jwk_a, key_a) = es256_key("a");
    let (jwk_b, key_b) = es256_key("b");
    let set = Arc::new(Mutex::new(json!({"keys": [jwk_a]})));
    let jwks = jwks_server(set.clone()).await;

    // Unreachable at first: 503, never admitted.
    let (_held, closed) = closed_port();
    let down = gateway(
        &backend,
        JwtAuth::jwks(&format!("http://{closed}/jwks.json")).unwrap(),
    )
    .await;
    let bearer = |token: String| format!("Authorization: Bearer {token}\r\n");
    assert_eq!(
        ask(down, "/", &bearer(es256("a", &key_a))).await.status,
        503
    );

    let auth = JwtAuth::jwks(&format!("http://{jwks}/jwks.json"))
        .unwrap()
        .jwks_refresh(Duration::from_secs(1));
    let addr = gateway(&backend, auth).await;
    assert_eq!(
        ask(addr, "/", &bearer(es256("a", &key_a))).await.status,
        101
    );
    // A key the set does not have yet: refused.
    assert_eq!(
        ask(addr, "/", &bearer(es256("b", &key_b))).await.status,
        401
    );

    // Rotation: the set now has only "b". Within a refresh, "b" is
    // admitted and "a" no longer.
    *set.lock().unwrap() = json!({"keys": [jwk_b]});
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut status = 0;
    while status != 101 && tokio::time::Instant::now() < deadline {
        status = ask(addr, "/", &bearer(es256("b", &key_b))).await.status;
        if status != 101 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(status, 101, "the rotated key is fetched");
    assert_eq!(
        ask(addr, "/", &bearer(es256("a", &key_a))).await.status,
        401
    );
    // A token signed by "a" but claiming to be "b" is not good either.
    assert_eq!(
        ask(addr, "/", &bearer(es256("b", &key_a))).await.status,
        401
    );
}

/// RS256 with a static public key: an RSA pair made by the `openssl`
/// command (`.ci/test` installs it), the token signed with the private half.
#[tokio::test]
async fn rs256_with_a_public_key_file() {
    let dir = std::env::temp_dir().join(format!("wsproxy-jwt-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is needed for this test: run `bash .ci/test`");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let signing = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let public_pem = std::fs::read(&public).unwrap();
    let auth = JwtAuth::rs256_pem(&public_pem).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let backend = Backend::start().await;
    let addr = gateway(&backend, auth).await;
    let token = |claims: serde_json::Value, key: &EncodingKey| {
        encode(&Header::new(Algorithm::RS256), &claims, key).unwrap()
    };
    let good = token(json!({"sub": "alice", "exp": now() + 600}), &signing);
    let head = ask(addr, "/", &format!("Authorization: Bearer {good}\r\n")).await;
    assert_eq!(head.status, 101);
    let expired = token(json!({"sub": "alice", "exp": now() - 600}), &signing);
    let head = ask(addr, "/", &format!("Authorization: Bearer {expired}\r\n")).await;
    assert_eq!(head.status, 401);
    // An HS256 token made with the public key as its secret (the classic
    // algorithm confusion) is not taken.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "mallory", "exp": now() + 600}),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let head = ask(addr, "/", &format!("Authorization: Bearer {confused}\r\n")).await;
    assert_eq!(head.status, 401);
    assert_eq!(backend.connections(), 1);
}

/// With `close_at_expiry`, a tunnel ends when its token does: Close 1008
/// "credentials expired" to the client, 1001 to the backend, counted as
/// `expired`; a tunnel whose token lasts stays open.
#[tokio::test]
async fn a_tunnel_is_closed_with_1008_when_its_token_expires() {
    use futures_util::StreamExt;
    let backend = Backend::start().await;
    let layer = WebSocketProxyLayer::new(backend.url().parse().unwrap());
    let tunnels = layer.tunnels_handle().clone();
    let addr = serve(
        axum::Router::new()
            .layer(layer)
            .layer(JwtAuth::hs256(SECRET).close_at_expiry(true).layer()),
    )
    .await;
    let open = |exp: f64| {
        let token = hs256(json!({"exp": exp}));
        async move {
            connect_with(
                &format!("ws://{addr}/"),
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await
            .0
        }
    };
    let mut long = open((now() + 3600) as f64).await;
    // A NumericDate may have a fraction (RFC 7519 §2).
    let mut short = open((now() + 4) as f64 + 0.5).await;
    echo(&mut short, Message::text("before")).await;

    // The short one's Close comes within a few seconds of its `exp`.
    let close = within("the Close at expiry", async {
        loop {
            match short.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("the tunnel ended without a Close: {other:?}"),
            }
        }
    })
    .await
    .expect("a Close frame with a code");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "credentials expired")
    );
    backend
        .saw("Close 1001: its client is going", |m| {
            close_code(m) == Some(1001)
        })
        .await;
    drop(short);
    let t = tunnels.clone();
    assert!(wait_until(LIMIT, || t.stats().ended.expired == 1).await);
    // The other is still open.
    echo(&mut long, Message::text("still open")).await;
    assert_eq!(tunnels.open(), 1);
}
