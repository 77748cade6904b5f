//! Tests of backend sets: picking, strategies, health, draining.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::HeaderValue;
use http::request::Parts;

use super::pick::Load;
use crate::clock::now;

use super::set::*;
use super::*;
use crate::admit::Key;
use crate::balance::{ConsistentHash, LeastConn, PowerOfTwo};

fn backend(port: u16) -> Backend {
    format!("ws://127.0.0.1:{port}/").parse().unwrap()
}

fn request(path: &str) -> Parts {
    http::Request::get(path).body(()).unwrap().into_parts().0
}

fn id(port: u16) -> BackendId {
    backend(port).id()
}

fn sequence(backends: &Backends, n: usize) -> Vec<BackendId> {
    let request = request("/");
    (0..n).map(|_| backends.choose(&request).unwrap()).collect()
}

#[test]
fn smooth_weighted_round_robin_interleaves() {
    let backends = Backends::new([backend(1).weight(5), backend(2), backend(3)]);
    let (a, b, c) = (id(1), id(2), id(3));
    // nginx's example: weights 5, 1, 1 give a a b a c a a, no burst.
    assert_eq!(sequence(&backends, 7), [a, a, b, a, c, a, a]);
    let equal = Backends::new([backend(1), backend(2), backend(3)]);
    assert_eq!(sequence(&equal, 6), [a, b, c, a, b, c]);
}

#[test]
fn backups_only_when_no_primary_is_usable() {
    let backends = Backends::new([backend(1), backend(2), backend(9).backup(true)]);
    assert!(!sequence(&backends, 20).contains(&id(9)));
    backends.drain(id(1));
    backends.remove(id(2));
    assert_eq!(sequence(&backends, 3), [id(9); 3]);
    backends.insert(backend(3));
    assert_eq!(sequence(&backends, 3), [id(3); 3]);
}

#[test]
fn nothing_usable_is_none() {
    let backends = Backends::new([backend(1).max_conns(0)]);
    assert_eq!(backends.choose(&request("/")), None);
    assert_eq!(Backends::new([]).choose(&request("/")), None);
}

#[test]
fn max_conns_counts_held_load() {
    let backends = Backends::new([backend(1).max_conns(2), backend(2)]).strategy(LeastConn::new());
    let request = request("/");
    let held: Vec<_> = (0..4)
        .map(|_| backends.pick(&request, &[]).unwrap().0)
        .collect();
    let on_1 = held.iter().filter(|p| p.id() == id(1)).count();
    assert_eq!(on_1, 2);
    // Full: everything else goes to 2 while the load is held.
    assert_eq!(sequence(&backends, 5), [id(2); 5]);
    drop(held);
    assert!(sequence(&backends, 5).contains(&id(1)));
}

#[test]
fn least_conn_and_p2c_follow_held_load() {
    for strategy in [
        Arc::new(LeastConn::new()) as Arc<dyn Strategy>,
        Arc::new(PowerOfTwo::new()),
    ] {
        let mut backends = Backends::new([backend(1), backend(2), backend(3).weight(2)]);
        Arc::make_mut(&mut backends.config).strategy = strategy;
        let request = request("/");
        let held: Vec<_> = (0..400)
            .map(|_| backends.pick(&request, &[]).unwrap().0)
            .collect();
        let mut count: HashMap<BackendId, usize> = HashMap::new();
        for picked in &held {
            *count.entry(picked.id()).or_default() += 1;
        }
        // Open tunnels per weight stay even: 100, 100, 200 (±15%).
        for (port, want) in [(1, 100.0), (2, 100.0), (3, 200.0)] {
            let got = count[&id(port)] as f64;
            assert!((got - want).abs() <= want * 0.15, "{port}: {got} vs {want}");
        }
    }
}

fn hashed(backends: &Backends, keys: usize) -> Vec<BackendId> {
    (0..keys)
        .map(|k| backends.choose(&request(&format!("/?k={k}"))).unwrap())
        .collect()
}

#[test]
fn consistent_hash_moves_only_what_it_must() {
    const KEYS: usize = 10_000;
    const N: u16 = 5;
    let strategy = || ConsistentHash::new(Key::query("k"));
    let backends = Backends::new((1..=N).map(backend)).strategy(strategy());
    let before = hashed(&backends, KEYS);
    for port in 1..=N {
        let share = before.iter().filter(|b| **b == id(port)).count() as f64 / KEYS as f64;
        assert!((share - 0.2).abs() < 0.03, "share of {port}: {share}");
    }
    // Removing one of N moves its keys and nothing else.
    backends.remove(id(3));
    let after = hashed(&backends, KEYS);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    for (a, b) in before.iter().zip(&after) {
        assert!(a == b || *a == id(3), "a key of another backend moved");
    }
    assert!(
        moved as f64 / KEYS as f64 <= 1.0 / f64::from(N) + 0.03,
        "{moved} moved"
    );
    // Adding one moves about 1/(N+1), all to the new one.
    let grown = Backends::new((1..=N + 1).map(backend)).strategy(strategy());
    let after = hashed(&grown, KEYS);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    for (a, b) in before.iter().zip(&after) {
        assert!(
            a == b || *b == id(N + 1),
            "a key moved between old backends"
        );
    }
    let expected = 1.0 / f64::from(N + 1);
    assert!(
        (moved as f64 / KEYS as f64 - expected).abs() < 0.03,
        "{moved} moved"
    );
    // A backend that is down hands its keys over and gets them back.
    let member = backends.state.get(id(1)).unwrap();
    member.probe_up.store(false, Ordering::Relaxed);
    let down = hashed(&backends, KEYS);
    member.probe_up.store(true, Ordering::Relaxed);
    assert!(!down.contains(&id(1)));
    let back = hashed(&backends, KEYS);
    assert_eq!(back, hashed(&backends, KEYS), "stable");
    assert!(back.iter().zip(&before).all(|(a, b)| a == b || *b == id(3)));
}

#[tokio::test(start_paused = true)]
async fn consistent_hash_keys_stay_put_during_slow_start() {
    let backends = Backends::new([backend(1), backend(2).weight(2)])
        .strategy(ConsistentHash::new(Key::query("k")))
        .slow_start(Duration::from_secs(100));
    backends.insert(backend(3).weight(3));
    let early = hashed(&backends, 2_000);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(hashed(&backends, 2_000), early);
}

#[test]
fn consistent_hash_weights_and_missing_keys() {
    let backends = Backends::new([backend(1).weight(3), backend(2)])
        .strategy(ConsistentHash::new(Key::query("k")));
    let picks = hashed(&backends, 10_000);
    let share = picks.iter().filter(|b| **b == id(1)).count() as f64 / 10_000.0;
    assert!((share - 0.75).abs() < 0.03, "{share}");
    // No key: spread at random rather than all on one.
    let spread = sequence(&backends, 200);
    assert!(spread.contains(&id(1)) && spread.contains(&id(2)));
}

#[test]
fn bounded_load_caps_a_hot_key() {
    let backends = Backends::new([backend(1), backend(2), backend(3), backend(4)])
        .strategy(ConsistentHash::new(Key::path()).bounded_load(1.25));
    let hot = request("/hot");
    let held: Vec<_> = (0..100)
        .map(|_| backends.pick(&hot, &[]).unwrap().0)
        .collect();
    let mut count: HashMap<BackendId, usize> = HashMap::new();
    for picked in &held {
        *count.entry(picked.id()).or_default() += 1;
    }
    // No backend above ceil(1.25 × average): 32 of 100 over 4.
    assert!(count.values().all(|&n| n <= 32), "{count:?}");
    // Without load, the key stays on its first choice.
    drop(held);
    let first = backends.choose(&hot).unwrap();
    assert_eq!(sequence_of(&backends, &hot, 5), [first; 5]);
}

fn sequence_of(backends: &Backends, request: &Parts, n: usize) -> Vec<BackendId> {
    (0..n).map(|_| backends.choose(request).unwrap()).collect()
}

fn with_cookie(value: &str) -> Parts {
    let mut returning = request("/");
    returning.headers.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("a=b; {value}")).unwrap(),
    );
    returning
}

#[test]
fn sticky_cookie_names_the_backend_opaquely() {
    let backends = Backends::new([backend(1), backend(2)]).sticky_cookie("srv");
    let (picked, cookie) = backends.pick(&request("/"), &[]).unwrap();
    let cookie = cookie.expect("a new client gets a cookie");
    let value = cookie.to_str().unwrap().to_owned();
    let token = value
        .strip_prefix("srv=")
        .and_then(|v| v.strip_suffix("; Path=/; HttpOnly; SameSite=Lax"))
        .expect(&value);
    assert_eq!(token.len(), 16);
    // Keyed: not the id, which anyone can compute from a URL.
    assert_ne!(token, picked.id().to_string());
    let returning = with_cookie(&format!("srv={token}"));
    for _ in 0..5 {
        let (again, cookie) = backends.pick(&returning, &[]).unwrap();
        assert_eq!(again.id(), picked.id());
        assert!(cookie.is_none(), "no new cookie while it holds");
    }
    // A forged value (here: the plain id) is just an unknown cookie.
    let forged = with_cookie(&format!("srv={}", id(2)));
    let firsts: Vec<_> = (0..4)
        .map(|_| backends.pick(&forged, &[]).unwrap())
        .collect();
    assert!(firsts.iter().all(|(_, cookie)| cookie.is_some()));
    backends.remove(picked.id());
    let (moved, cookie) = backends.pick(&returning, &[]).unwrap();
    assert_ne!(moved.id(), picked.id());
    assert!(!cookie.unwrap().to_str().unwrap().contains(token));
}

#[test]
fn a_shared_sticky_secret_gives_the_same_cookie_everywhere() {
    let a = Backends::new([backend(1), backend(2)])
        .sticky_cookie("srv")
        .sticky_secret("s3cret");
    // The order of the two settings does not matter.
    let b = Backends::new([backend(1), backend(2)])
        .sticky_secret("s3cret")
        .sticky_cookie("srv");
    let (picked, cookie) = a.pick(&request("/"), &[]).unwrap();
    let cookie = cookie.unwrap().to_str().unwrap().to_owned();
    let value = cookie.split(';').next().unwrap();
    let (again, none) = b.pick(&with_cookie(value), &[]).unwrap();
    assert_eq!((again.id(), none), (picked.id(), None));
    // Without the shared secret, another instance does not know it.
    let c = Backends::new([backend(1), backend(2)]).sticky_cookie("srv");
    assert!(c.pick(&with_cookie(value), &[]).unwrap().1.is_some());
}

#[test]
#[should_panic(expected = "invalid sticky cookie name")]
fn a_bad_cookie_name_is_refused_when_configured() {
    let _ = Backends::new([backend(1)]).sticky_cookie("a;b");
}

#[tokio::test(start_paused = true)]
async fn passive_health_skips_for_fail_timeout_then_retries() {
    let backends = Backends::new([backend(1), backend(2)]).passive_health(
        PassiveHealth::new()
            .max_fails(2)
            .fail_timeout(Duration::from_secs(10)),
    );
    let request = request("/");
    let fail_on_1 = |times: usize| {
        for _ in 0..times {
            let picked = loop {
                let (p, _) = backends.pick(&request, &[]).unwrap();
                if p.id() == id(1) {
                    break p;
                }
            };
            backends.failed(&picked);
        }
    };
    fail_on_1(1);
    assert!(backends.status()[0].up, "one failure of two allowed");
    fail_on_1(1);
    assert!(!backends.status()[0].up);
    assert_eq!(sequence(&backends, 4), [id(2); 4]);
    tokio::time::advance(Duration::from_millis(10_100)).await;
    assert!(sequence(&backends, 4).contains(&id(1)));
    assert_eq!(backends.status()[0].transitions, 2);
    // Back after fail_timeout: one more failure skips it again.
    fail_on_1(1);
    assert!(!backends.status()[0].up);
    tokio::time::advance(Duration::from_millis(10_100)).await;
    // A success brings it back and clears its failures.
    let (picked, _) = backends.pick(&request, &[id(2)]).unwrap();
    backends.succeeded(&picked);
    fail_on_1(1);
    assert!(backends.status()[0].up);
    // Failures further apart than fail_timeout do not add up.
    tokio::time::advance(Duration::from_secs(11)).await;
    fail_on_1(1);
    assert!(backends.status()[0].up);
    // A success within fail_timeout does not clear them (nginx).
    let (picked, _) = backends.pick(&request, &[id(2)]).unwrap();
    backends.succeeded(&picked);
    fail_on_1(1);
    assert!(!backends.status()[0].up);
}

#[tokio::test(start_paused = true)]
async fn when_every_backend_is_passively_down_they_are_tried_anyway() {
    let backends = Backends::new([backend(1), backend(2)]);
    let request = request("/");
    for _ in 0..2 {
        let (picked, _) = backends.pick(&request, &[]).unwrap();
        backends.failed(&picked);
    }
    assert!(backends.status().iter().all(|s| !s.up));
    let (picked, _) = backends.pick(&request, &[]).expect("not a 503");
    backends.succeeded(&picked);
    let up: Vec<_> = backends.status().iter().map(|s| s.up).collect();
    assert_eq!(
        up.iter().filter(|u| **u).count(),
        1,
        "the one that answered is up"
    );
    // A huge fail_timeout saturates instead of overflowing.
    let huge = Backends::new([backend(1), backend(2)])
        .passive_health(PassiveHealth::new().fail_timeout(Duration::MAX));
    let (picked, _) = huge.pick(&request, &[]).unwrap();
    huge.failed(&picked);
    assert_eq!(huge.status().iter().filter(|s| !s.up).count(), 1);
}

#[test]
fn insert_calls_off_a_drain_and_a_backed_out_unit_still_removes_a_drained_member() {
    let backends = Backends::new([backend(1), backend(2)]);
    let request = request("/");
    let (held, _) = backends.pick(&request, &[]).unwrap();
    let drained = held.id();
    backends.drain(drained);
    assert!(!backends.insert(backend(if drained == id(1) { 1 } else { 2 })));
    assert!(backends.status().iter().all(|s| !s.draining));
    drop(held);
    assert_eq!(
        backends.status().len(),
        2,
        "not removed: the drain was called off"
    );
    // A member full since listing: the unit backed out goes through
    // the load's drop, which removes a drained member it was the last of.
    let member = backends.state.get(id(1)).unwrap();
    member.draining.store(true, Ordering::SeqCst);
    member.open.fetch_add(1, Ordering::SeqCst);
    let load = Load {
        member: member.clone(),
        set: Arc::downgrade(&backends.state),
    };
    drop(load);
    assert!(backends.status().iter().all(|s| s.id != id(1)));
}

#[test]
fn passive_mark_down_closes_tunnels_only_when_told_to() {
    for close in [None, Some(Duration::from_secs(1))] {
        let backends = Backends::new([backend(1), backend(2)]).close_tunnels_when_down(close);
        // An open tunnel on backend 1...
        let (open, _) = backends.pick(&request("/"), &[id(2)]).unwrap();
        let (signal, _load) = open.into_parts();
        // ...and a handshake to it that fails (max_fails 1): down.
        let (failing, _) = backends.pick(&request("/"), &[id(2)]).unwrap();
        backends.failed(&failing);
        assert!(!backends.status()[0].up);
        assert_eq!(signal.is_closed(), close.is_some(), "{close:?}");
    }
}

#[test]
fn a_lone_backend_is_never_skipped() {
    let backends = Backends::new([backend(1)]);
    for _ in 0..5 {
        let (picked, _) = backends.pick(&request("/"), &[]).unwrap();
        backends.failed(&picked);
    }
    assert!(backends.status()[0].up);
    assert_eq!(backends.choose(&request("/")), Some(id(1)));
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_the_weight() {
    let backends = Backends::new([backend(1).weight(10)]).slow_start(Duration::from_secs(10));
    let member = backends.state.get(id(1)).unwrap();
    // Present from the start: full weight.
    assert_eq!(member.weight(now(), backends.config.slow_start), 10);
    backends.insert(backend(2).weight(10));
    let added = backends.state.get(id(2)).unwrap();
    assert_eq!(added.weight(now(), backends.config.slow_start), 1);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(added.weight(now(), backends.config.slow_start), 5);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(added.weight(now(), backends.config.slow_start), 10);
}

#[test]
fn a_member_inserted_outside_a_runtime_is_probed_from_the_next_handshake() {
    use crate::balance::{ActiveHealth, Probe};
    let backends = Backends::new([backend(1)]).active_health(ActiveHealth::new(Probe::tcp()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { backends.choose(&request("/")) });
    assert!(
        backends
            .state
            .get(id(1))
            .unwrap()
            .probing
            .load(Ordering::Relaxed)
    );
    backends.insert(backend(2));
    let added = backends.state.get(id(2)).unwrap();
    assert!(
        !added.probing.load(Ordering::Relaxed),
        "no runtime to run it"
    );
    runtime.block_on(async { backends.choose(&request("/")) });
    assert!(added.probing.load(Ordering::Relaxed));
}

#[test]
fn retries_skip_the_backends_tried() {
    let backends = Backends::new([backend(1), backend(2), backend(3)]);
    let request = request("/");
    let mut tried = Vec::new();
    while let Some((picked, _)) = backends.pick(&request, &tried) {
        assert!(!tried.contains(&picked.id()));
        tried.push(picked.id());
    }
    assert_eq!(tried.len(), 3);
}

#[test]
fn drain_removes_after_the_last_tunnel() {
    let backends = Backends::new([backend(1), backend(2)]);
    let request = request("/");
    let (held, _) = backends.pick(&request, &[]).unwrap();
    let drained = held.id();
    backends.drain(drained);
    assert!(
        backends
            .status()
            .iter()
            .any(|s| s.id == drained && s.draining)
    );
    assert!(!sequence(&backends, 4).contains(&drained));
    drop(held);
    assert!(backends.status().iter().all(|s| s.id != drained));
}
