//! Backend selection cost per handshake, for each strategy, with 3 and
//! 100 backends.
//!
//! Run with `cargo bench -p wsproxy --bench select`.
//!
//! Each iteration is one [`Backends::choose`]: what the proxy does for a
//! handshake before it connects (list the usable candidates, let the
//! strategy or the sticky cookie pick, take a load unit and drop it).
//! Requests are built before timing; benchmarks that need different
//! requests cycle through a prepared list. No tunnel is open, so every
//! backend's load is zero (`choose` takes a load unit and drops it at
//! once): least connections and bounded loads still compare every
//! candidate, but bounded loads never pass one over.
//!
//! Results are in BENCHMARKS.md ("Backend selection cost").

use std::net::{Ipv4Addr, SocketAddr};

use divan::{Bencher, black_box};
use http::request::Parts;
use wsproxy::ClientAddr;
use wsproxy::admit::Key;
use wsproxy::balance::{
    Backend, Backends, ConsistentHash, LeastConn, PowerOfTwo, RoundRobin, Strategy,
};

fn main() {
    // Fixed sample sizes: divan otherwise grows a sample until its first
    // one takes 100x the timer's precision, and on a busy machine a single
    // preemption there leaves it timing one ~100 ns call per sample.
    // `--sample-size` and `--sample-count` still override these.
    divan::Divan::default()
        .sample_size(1_000)
        .sample_count(200)
        .config_with_args()
        .main();
}

/// Backend counts to compare.
const SIZES: [usize; 2] = [3, 100];

/// Distinct clients cycled through where the request matters: more than
/// the backends, few enough that the requests stay in cache (as a request
/// just parsed by the server is).
const CLIENTS: usize = 128;

const COOKIE: &str = "wsproxy_backend";

fn backend(i: usize) -> Backend {
    let port = 9000 + u16::try_from(i).expect("port");
    Backend::new(format!("ws://127.0.0.1:{port}/").parse().expect("url"))
}

/// `n` backends of weight 1.
fn set(n: usize, strategy: impl Strategy) -> Backends {
    Backends::new((0..n).map(backend)).strategy(strategy)
}

/// A handshake request, as the proxy sees it after routing.
fn request(client: Ipv4Addr, cookie: Option<String>) -> Parts {
    let mut builder = http::Request::get("/chat")
        .header("host", "example.com")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(cookie) = cookie {
        builder = builder.header("cookie", cookie);
    }
    let (mut parts, ()) = builder.body(()).expect("request").into_parts();
    parts
        .extensions
        .insert(ClientAddr(SocketAddr::from((client, 50_000))));
    parts
}

/// Client `i`'s address: 10.0.x.y.
fn client(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | u32::try_from(i).expect("client"))
}

/// `CLIENTS` requests from different addresses.
fn clients() -> Vec<Parts> {
    (0..CLIENTS).map(|i| request(client(i), None)).collect()
}

/// Time `choose` over `requests`, one request per iteration, in turn.
fn bench(bencher: Bencher<'_, '_>, backends: &Backends, requests: &[Parts]) {
    assert!(backends.choose(&requests[0]).is_some(), "no backend chosen");
    let mut i = 0;
    bencher.bench_local(|| {
        let request = &requests[i % requests.len()];
        i = i.wrapping_add(1);
        backends.choose(black_box(request))
    });
}

/// Smooth round-robin, all weights 1 (the default strategy).
#[divan::bench(args = SIZES)]
fn round_robin(bencher: Bencher<'_, '_>, n: usize) {
    bench(bencher, &set(n, RoundRobin::new()), &clients()[..1]);
}

/// Smooth round-robin with weights 5, 1, 1, 5, 1, 1, ...
#[divan::bench(args = SIZES)]
fn round_robin_weighted(bencher: Bencher<'_, '_>, n: usize) {
    let weights = [5, 1, 1];
    let backends = Backends::new((0..n).map(|i| backend(i).weight(weights[i % 3])))
        .strategy(RoundRobin::new());
    bench(bencher, &backends, &clients()[..1]);
}

/// Round-robin behind a sticky cookie that names a backend (a returning
/// client); cookies cycle over all backends.
#[divan::bench(args = SIZES)]
fn round_robin_sticky(bencher: Bencher<'_, '_>, n: usize) {
    let backends = set(n, RoundRobin::new()).sticky_cookie(COOKIE);
    let requests: Vec<Parts> = (0..CLIENTS)
        .map(|i| {
            let id = backend(i % n).id();
            request(client(i), Some(format!("theme=dark; {COOKIE}={id}")))
        })
        .collect();
    bench(bencher, &backends, &requests);
}

/// Round-robin behind a sticky cookie, first handshake (no cookie yet:
/// the strategy picks and a `Set-Cookie` value is built).
#[divan::bench(args = SIZES)]
fn round_robin_sticky_new(bencher: Bencher<'_, '_>, n: usize) {
    let backends = set(n, RoundRobin::new()).sticky_cookie(COOKIE);
    bench(bencher, &backends, &clients()[..1]);
}

/// Least connections (all loads zero: ties, taken in turn).
#[divan::bench(args = SIZES)]
fn least_conn(bencher: Bencher<'_, '_>, n: usize) {
    bench(bencher, &set(n, LeastConn::new()), &clients()[..1]);
}

/// Power of two random choices.
#[divan::bench(args = SIZES)]
fn power_of_two(bencher: Bencher<'_, '_>, n: usize) {
    bench(bencher, &set(n, PowerOfTwo::new()), &clients()[..1]);
}

/// Consistent hashing on the client IP, requests from 128 addresses.
#[divan::bench(args = SIZES)]
fn consistent_hash_ip(bencher: Bencher<'_, '_>, n: usize) {
    let strategy = ConsistentHash::new(Key::client_ip());
    bench(bencher, &set(n, strategy), &clients());
}

/// Consistent hashing on the client IP with bounded loads (1.25).
#[divan::bench(args = SIZES)]
fn consistent_hash_ip_bounded(bencher: Bencher<'_, '_>, n: usize) {
    let strategy = ConsistentHash::new(Key::client_ip()).bounded_load(1.25);
    bench(bencher, &set(n, strategy), &clients());
}
