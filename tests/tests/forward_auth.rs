//! `ForwardAuth` end to end, against a real auth service (an axum app on
//! its own port): what it is asked, which answers admit, which are relayed,
//! and what happens when it is down, failing or slow.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use http::{HeaderMap, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use wsproxy::WebSocketProxyLayer;
use wsproxy::admit::ForwardAuth;
use wsproxy_e2e::*;
use wsproxy_test_support::*;

/// An auth service deciding on the `session` cookie (or `Authorization`),
/// remembering the headers of every request it got.
#[derive(Clone, Default)]
struct AuthService {
    asked: Arc<Mutex<Vec<HeaderMap>>>,
}

impl AuthService {
    async fn start() -> (Self, SocketAddr) {
        let service = Self::default();
        let asked = service.asked.clone();
        let app = axum::Router::new().route(
            "/auth",
            axum::routing::get(move |headers: HeaderMap| {
                asked.lock().unwrap().push(headers.clone());
                answer(headers)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (service, addr)
    }

    fn asked(&self) -> usize {
        self.asked.lock().unwrap().len()
    }

    fn last(&self) -> HeaderMap {
        self.asked.lock().unwrap().last().unwrap().clone()
    }
}

async fn answer(headers: HeaderMap) -> axum::response::Response {
    let cookie = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let session = cookie
        .split(';')
        .find_map(|c| c.trim().strip_prefix("session="))
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .unwrap_or("");
    match session {
        "alice" | "alice2" => (
            [
                ("x-user-id", "alice"),
                ("x-role", "admin"),
                ("x-not-copied", "1"),
            ],
            "",
        )
            .into_response(),
        "anonymous" => StatusCode::NO_CONTENT.into_response(),
        "expired" => (StatusCode::FOUND, [("location", "/login?next=/chat")], "").into_response(),
        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        "slow" => std::future::pending().await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [
                ("www-authenticate", "Bearer realm=\"chat\""),
                ("content-type", "application/json"),
            ],
            "{\"error\":\"log in first\"}",
        )
            .into_response(),
    }
}

fn auth(addr: SocketAddr) -> ForwardAuth {
    ForwardAuth::new(&format!("http://{addr}/auth"))
        .unwrap()
        .copy_headers(["x-user-id".parse().unwrap(), "x-role".parse().unwrap()])
}

async fn gateway(backend: &Backend, auth: ForwardAuth) -> SocketAddr {
    let layer = WebSocketProxyLayer::new(backend.url().parse().unwrap());
    serve(
        axum::Router::new()
            .route("/app", axum::routing::get(|| async { "app" }))
            .layer(layer)
            .layer(auth.layer()),
    )
    .await
}

/// A handshake on a raw socket with extra header lines: head and body.
async fn ask(addr: SocketAddr, path: &str, extra: &str) -> (Head, String) {
    let mut stream = raw(addr, handshake(path, extra).as_bytes()).await;
    let head = read_head(&mut stream).await;
    let body = if head.status == 101 {
        Vec::new()
    } else {
        read_body(&mut stream, &head).await
    };
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_positive_answer_admits_with_its_headers_and_forged_ones_are_removed() {
    let (service, auth_addr) = AuthService::start().await;
    let backend = Backend::start().await;
    let addr = gateway(&backend, auth(auth_addr)).await;

    // Plain HTTP is never sent to the auth service.
    let mut plain = raw(addr, b"GET /app HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_head(&mut plain).await.status, 200);
    assert_eq!(service.asked(), 0);

    let (mut client, _) = connect_with(
        &format!("ws://{addr}/chat?room=7"),
        &[
            ("cookie", "theme=dark; session=alice"),
            ("origin", "https://app.example"),
            ("x-user-id", "mallory"),
            ("X-Role", "root"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await;
    echo(&mut client, Message::text("hi")).await;

    // What the auth service was asked.
    let asked = service.last();
    assert_eq!(asked["cookie"], "theme=dark; session=alice");
    assert_eq!(asked["origin"], "https://app.example");
    assert_eq!(asked["x-forwarded-method"], "GET");
    assert_eq!(asked["x-forwarded-uri"], "/chat?room=7");
    assert_eq!(
        asked["x-forwarded-for"], "127.0.0.1",
        "the client's own is replaced"
    );
    assert_eq!(asked["x-forwarded-proto"], "http");
    assert_eq!(asked["x-forwarded-host"], addr.to_string());
    assert_eq!(asked["host"], auth_addr.to_string());
    for absent in [
        "upgrade",
        "connection",
        "sec-websocket-key",
        "x-user-id",
        "x-role",
    ] {
        assert!(
            asked.get(absent).is_none(),
            "{absent} sent to the auth service"
        );
    }

    // What the backend got: the service's values only, and only those named.
    let seen = backend.last_headers();
    let all = |name: &str| {
        seen.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("x-user-id"), ["alice"]);
    assert_eq!(all("x-role"), ["admin"]);
    assert!(all("x-not-copied").is_empty());
    assert_eq!(backend.last_uri(), "/chat?room=7");

    // A positive answer without the headers: the forged ones are still gone.
    let (head, _) = ask(
        addr,
        "/",
        "Cookie: session=anonymous\r\nX-User-Id: mallory\r\n",
    )
    .await;
    assert_eq!(head.status, 101);
    assert!(backend.last_headers().get("x-user-id").is_none());
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn refusals_of_the_auth_service_are_relayed_and_no_backend_is_contacted() {
    let (service, auth_addr) = AuthService::start().await;
    let backend = Backend::start().await;
    let addr = gateway(&backend, auth(auth_addr)).await;

    let (head, body) = ask(addr, "/", "Cookie: session=nobody\r\n").await;
    assert_eq!(head.status, 401);
    assert_eq!(
        head.header("www-authenticate"),
        Some("Bearer realm=\"chat\"")
    );
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(body, "{\"error\":\"log in first\"}");

    let (head, _) = ask(addr, "/", "Authorization: Bearer expired\r\n").await;
    assert_eq!(head.status, 302);
    assert_eq!(head.header("location"), Some("/login?next=/chat"));

    assert_eq!(service.asked(), 2);
    assert_eq!(backend.connections(), 0);
}

#[tokio::test]
async fn an_auth_service_down_failing_or_slow_refuses_with_503_or_504_and_a_warning() {
    let (logs, _guard) = Captured::start();
    let backend = Backend::start().await;

    // Down: nothing listens.
    let (_held, closed) = closed_port();
    let addr = gateway(&backend, auth(closed)).await;
    let (head, body) = ask(addr, "/", "Cookie: session=alice\r\n").await;
    assert_eq!(
        (head.status, body.as_str()),
        (503, "auth service unavailable\n")
    );
    let warnings = |logs: &Captured| {
        logs.lines()
            .into_iter()
            .filter(|l| l.contains("WARN") && l.contains("auth service failing"))
            .count()
    };
    assert_eq!(warnings(&logs), 1);
    // Still down: refused again, without another warning.
    let (head, _) = ask(addr, "/", "Cookie: session=alice\r\n").await;
    assert_eq!(head.status, 503);
    assert_eq!(warnings(&logs), 1, "one warning per outage");

    // Failing: a 5xx is not relayed, and never admits.
    let (service, auth_addr) = AuthService::start().await;
    let addr = gateway(&backend, auth(auth_addr)).await;
    let (head, body) = ask(addr, "/", "Cookie: session=broken\r\n").await;
    assert_eq!((head.status, body.as_str()), (503, "auth service failed\n"));
    assert_eq!(warnings(&logs), 2);
    // It answers again: logged, and the next failure warns anew.
    let (head, _) = ask(addr, "/", "Cookie: session=alice\r\n").await;
    assert_eq!(head.status, 101);
    assert!(logs.text().contains("auth service answers again"));

    // Slow: 504 at the timeout.
    let addr = gateway(
        &backend,
        auth(auth_addr).timeout(Duration::from_millis(300)),
    )
    .await;
    let (head, body) = within("the timeout", ask(addr, "/", "Cookie: session=slow\r\n")).await;
    assert_eq!(
        (head.status, body.as_str()),
        (504, "auth service timed out\n")
    );
    assert_eq!(warnings(&logs), 3);
    assert_eq!(service.asked(), 3);
    assert_eq!(backend.connections(), 1, "only the one admitted");
}

#[tokio::test]
async fn positive_answers_are_remembered_by_credentials_for_the_time_asked() {
    let (service, auth_addr) = AuthService::start().await;
    let backend = Backend::start().await;
    let addr = gateway(&backend, auth(auth_addr).cache(Duration::from_secs(3600))).await;

    let alice = "Cookie: session=alice\r\nX-User-Id: mallory\r\n";
    assert_eq!(ask(addr, "/", alice).await.0.status, 101);
    assert_eq!(ask(addr, "/", alice).await.0.status, 101);
    assert_eq!(service.asked(), 1, "the second was answered from the cache");
    // With the headers of the answer, and the forged one still removed.
    let seen = backend.last_headers();
    assert_eq!(
        seen.get_all("x-user-id").iter().collect::<Vec<_>>(),
        ["alice"]
    );

    // Other credentials, another URI: asked.
    assert_eq!(
        ask(addr, "/", "Cookie: session=alice2\r\n").await.0.status,
        101
    );
    assert_eq!(ask(addr, "/other", alice).await.0.status, 101);
    assert_eq!(service.asked(), 3);
    // Another Origin or Host: asked (a yes is for its own).
    let elsewhere = format!("{alice}Origin: https://evil.example\r\n");
    assert_eq!(ask(addr, "/", &elsewhere).await.0.status, 101);
    assert_eq!(service.asked(), 4, "a cached yes is for its own Origin");
    let request = handshake("/", alice).replace("Host: proxy.test", "Host: tenant-b.test");
    let mut stream = raw(addr, request.as_bytes()).await;
    assert_eq!(read_head(&mut stream).await.status, 101);
    assert_eq!(service.asked(), 5, "and for its own Host");
    // Refusals are not remembered.
    assert_eq!(
        ask(addr, "/", "Cookie: session=nobody\r\n").await.0.status,
        401
    );
    assert_eq!(
        ask(addr, "/", "Cookie: session=nobody\r\n").await.0.status,
        401
    );
    assert_eq!(service.asked(), 7);

    // A short cache: asked again once the answer is older than it.
    let addr = gateway(&backend, auth(auth_addr).cache(Duration::from_millis(200))).await;
    assert_eq!(ask(addr, "/", alice).await.0.status, 101);
    assert_eq!(service.asked(), 8);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while service.asked() == 8 && tokio::time::Instant::now() < deadline {
        assert_eq!(ask(addr, "/", alice).await.0.status, 101);
    }
    assert_eq!(service.asked(), 9, "the remembered answer expired");
}
