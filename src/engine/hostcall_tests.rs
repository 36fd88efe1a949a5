//! Host calls per request, counted by a test host: every `Clock`, `SharedStore`,
//! `HostCrypto` and `Metrics` call is a crossing of the Wasm boundary in Envoy (a few
//! microseconds each for those that return data). `make bench` measures the whole count in
//! Envoy with a `hostcall-count` build; these pin the engine's share of it.

#![allow(clippy::unwrap_used, clippy::panic)]

use super::test_request::TestRequest;
use super::*;
use crate::host::fake::{FakeClock, FakeStore};
use crate::host::CasError;
use serde_json::json;
use std::cell::Cell;

const KEY_K: &str = "YXBpZ3VhcmQtdW5pdC10ZXN0cy1obWFjLWtleS0zMmI";
/// HS256, sub "alice", scope "items:read" (PyJWT, exp 1700003600).
const READ: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiYXBpIiwic3ViIjoiYWxpY2UiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMCwic2NvcGUiOiJpdGVtczpyZWFkIn0.QwNzbYkxLCD3v3919PVQQ2bC-KbSNigdnkEfUMr7d_Y";

#[derive(Default)]
struct Calls {
    clock: Cell<u32>,
    get: Cell<u32>,
    set: Cell<u32>,
    metrics: Cell<u32>,
}

struct CountingClock<'a>(&'a Calls, FakeClock);
impl Clock for CountingClock<'_> {
    fn now_millis(&self) -> u64 {
        self.0.clock.set(self.0.clock.get() + 1);
        self.1.now_millis()
    }
}

struct CountingStore<'a>(&'a Calls, &'a FakeStore);
impl SharedStore for CountingStore<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.0.get.set(self.0.get.get() + 1);
        self.1.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        self.0.set.set(self.0.set.get() + 1);
        self.1.set(key, value, cas)
    }
}

struct CountingMetrics<'a>(&'a Calls);
impl Metrics for CountingMetrics<'_> {
    fn incr(&mut self, _: &str) {
        self.0.metrics.set(self.0.metrics.get() + 1);
    }
}

/// The bench's policy shape: a public route, and a JWT route with a scope and one limit
/// keyed by `sub`.
fn engine() -> Engine {
    let policy = json!({
        "providers": [{"name": "test", "issuer": "https://issuer.test", "audiences": ["api"],
                       "jwks": {"inline": {"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": KEY_K}]}}}],
        "limits": [{"name": "huge", "capacity": 1_000_000_000u64,
                    "refill": {"tokens": 1_000_000_000u64, "period_seconds": 1},
                    "key": [{"claim": "sub"}]}],
        "routes": [
            {"name": "public", "match": {"path": "/public", "methods": ["GET"]}, "public": true},
            {"name": "items", "match": {"path": "/items", "methods": ["GET"]}, "providers": ["test"],
             "scopes": {"all_of": ["items:read"]}, "limits": ["huge"]},
        ]
    });
    Engine::new(Rc::new(
        Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}")),
    ))
}

/// (clock reads, shared-data reads, shared-data writes, counter increments) of one request.
fn count(
    e: &mut Engine,
    store: &FakeStore,
    path: &str,
    token: Option<&str>,
) -> (u32, u32, u32, u32) {
    let calls = Calls::default();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut req = TestRequest::get(path).headers(&[(":method", "GET"), (":path", path)]);
    if let Some(a) = &auth {
        req = req.header("authorization", a);
    }
    let clock = CountingClock(&calls, FakeClock::at_secs(1_700_000_100));
    let counting_store = CountingStore(&calls, store);
    let mut metrics = CountingMetrics(&calls);
    let d = req
        .peer_addr("10.0.0.1:5555")
        .clock(&clock)
        .store(&counting_store)
        .send(e, &mut metrics);
    assert!(matches!(d.verdict, Verdict::Allow(_)), "{path}");
    // The glue then counts the finished request (one counter).
    if let Some(finished) = crate::outcome::after_headers(&d) {
        metrics.incr(&crate::outcome::counter(finished));
    }
    (
        calls.clock.get(),
        calls.get.get(),
        calls.set.get(),
        calls.metrics.get(),
    )
}

/// The clock is read twice per routed request (seconds for the token, milliseconds for
/// the limits) and once more on an authenticated route (the lockout check), also where
/// none is needed: ~0.16 µs each in Envoy, the cheapest host call (docs/performance.md).
#[test]
fn a_public_route_reads_no_shared_data() {
    let (mut e, store) = (engine(), FakeStore::default());
    // The clock twice and the `apiguard.allowed` counter.
    assert_eq!(count(&mut e, &store, "/public", None), (2, 0, 0, 1));
}

#[test]
fn a_jwt_route_with_a_limit_reads_and_writes_its_bucket_once() {
    let (mut e, store) = (engine(), FakeStore::default());
    // First request: verify (cache miss), create the bucket (one probe, one write);
    // counters: cache miss, limit allowed, apiguard.allowed.
    assert_eq!(count(&mut e, &store, "/items", Some(READ)), (3, 1, 1, 3));
    // Cached token: the same crossings (cache hit counter instead of miss).
    assert_eq!(count(&mut e, &store, "/items", Some(READ)), (3, 1, 1, 3));
}
