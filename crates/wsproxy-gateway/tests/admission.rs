//! `wsgate`'s admission configured from its file: authentication at the
//! handshake by an auth service (Python's `http.server` here).

mod support;

use wsproxy_test_support::{
    Backend, PemFiles, handshake, python_backend, raw, read_body, read_head,
};

use support::{Folder, Gateway, run};

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
    let folder = Folder::new();
    let file = folder.write(
        "wsgate.toml",
        "demo = true\n[admission.forward_auth]\nurl = \"https://auth.internal/check\"\n",
    );
    let (code, stderr) = run(&["--check", "--config", PemFiles::arg(&file)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("admission.forward_auth.url: invalid upstream \"https://auth.internal/check\": an auth service URL starts with http://"),
        "{stderr}"
    );
}
