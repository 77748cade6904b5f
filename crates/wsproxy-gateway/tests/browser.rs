//! A real browser through the gateway: Debian's headless Chromium loads
//! the demo page over https from `wsgate --demo --tls-cert --tls-key`,
//! echoes messages through `/echo` with the page's own client, and the
//! gateway's status page shows that the browser's WebSockets arrived over
//! HTTP/2 (RFC 8441 extended CONNECT on the page's h2 connection).
//!
//! The browser is driven by `browser/echo.mjs` (playwright-core, installed
//! by `npm ci` in `tests/browser/`; `.ci/test` does both installs). Outside
//! CI the test skips, saying why, when Chromium, Node or the script's
//! `node_modules` are missing; under `CI=true` it must run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::time::timeout;

use support::{Gateway, opened, tls_flags};
use wsproxy_test_support::{Leaf, h2_client, h2_get};

/// Messages the page echoes.
const MESSAGES: usize = 5;

/// Time for Chromium to start, load the page and echo everything.
const BROWSER_LIMIT: Duration = Duration::from_secs(90);

/// The Chromium binary: `$CHROMIUM`, else Debian's.
fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Why the test cannot run here, if it cannot.
fn missing(script_dir: &Path) -> Option<String> {
    let chromium = chromium();
    if !chromium.exists() {
        return Some(format!(
            "no Chromium at {} (apt-get install chromium)",
            chromium.display()
        ));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|status| status.success()) {
        return Some("no `node` on PATH".to_owned());
    }
    if !script_dir.join("node_modules/playwright-core").exists() {
        return Some(format!(
            "playwright-core is not installed (run `npm ci` in {})",
            script_dir.display()
        ));
    }
    None
}

#[tokio::test]
async fn chromium_echoes_through_the_gateway_over_http2() {
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Some(why) = missing(&script_dir) {
        // `.ci/test` (the README's test command, which CI runs) installs
        // what the test needs and says so: then it must run.
        if std::env::var_os("WSPROXY_REQUIRE_BROWSER").is_some()
            || std::env::var("CI").is_ok_and(|ci| ci == "true")
        {
            panic!("the browser test must run here, but: {why}");
        }
        eprintln!("skipped: {why}");
        return;
    }

    let cert = Leaf::localhost();
    let mut args = vec!["--demo"];
    args.extend(tls_flags(&cert));
    let gateway = Gateway::start(&args);
    let url = format!("https://127.0.0.1:{}/", gateway.addr.port());

    let start = Instant::now();
    let mut script = tokio::process::Command::new("node");
    script
        .arg("echo.mjs")
        .arg(&url)
        .arg(&cert.files().cert)
        .arg(MESSAGES.to_string())
        .env("CHROMIUM", chromium())
        .current_dir(&script_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = timeout(BROWSER_LIMIT, script.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the browser did not finish in {BROWSER_LIMIT:?}; gateway log:\n{}",
                gateway.log()
            )
        })
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "echo.mjs failed ({}):\n{stdout}\n{}\ngateway log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        gateway.log()
    );
    eprintln!("browser: {} in {:?}", stdout.trim(), start.elapsed());

    // What the page heard back, and how it was loaded.
    let echoes: Vec<String> = (1..=MESSAGES).map(|i| format!("\"hello {i}\"")).collect();
    let expected = format!("{{\"echoes\":[{}],\"protocol\":\"h2\"}}", echoes.join(","));
    assert_eq!(stdout.trim(), expected);

    // What the proxy saw: every tunnel it opened (the page's /echo and
    // /chat) came over HTTP/2.
    let tls = cert.connect(gateway.addr, &[b"h2"]).await;
    let mut h2 = h2_client(tls).await;
    let authority = format!("localhost:{}", gateway.addr.port());
    let (status, page) = h2_get(&mut h2, &authority, "https", "/").await;
    assert_eq!(status, 200);
    let (all, over_h2) = opened(&page);
    assert!(
        all >= 1 && over_h2 == all,
        "tunnels opened: {all}, over HTTP/2: {over_h2}; gateway log:\n{}",
        gateway.log()
    );
}
