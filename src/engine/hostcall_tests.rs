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
    /// Envoy properties of the connection (`source.address`, certificate SANs, subject).
    properties: Cell<u32>,
}

/// The connection's facts, each ask a `get_property` in Envoy.
struct CountingPeer<'a>(&'a Calls, KnownPeer<'a>);
impl Peer for CountingPeer<'_> {
    fn address(&self) -> Option<String> {
        self.0.properties.set(self.0.properties.get() + 1);
        self.1.address()
    }
    fn uri_san(&self) -> Option<String> {
        self.0.properties.set(self.0.properties.get() + 1);
        self.1.uri_san()
    }
    fn subject(&self) -> Option<String> {
        self.0.properties.set(self.0.properties.get() + 1);
        self.1.subject()
    }
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

/// SHA-256 of `PARTNER_KEY` (an API key of the `partners` set).
const PARTNER_KEY: &str = "k_unit_test_key_0123456789";
const PARTNER_KEY_SHA256: &str = "0b0a23f5a028258b3a7bb22f119c738d43f9e2216d56ecf34b279bf79f7967e0";

/// The bench's policy shape: a public route, and a JWT route with a scope and one limit
/// keyed by `sub`.
fn engine() -> Engine {
    let policy = json!({
        "providers": [{"name": "test", "issuer": "https://issuer.test", "audiences": ["api"],
                       "jwks": {"inline": {"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": KEY_K}]}}}],
        "limits": [{"name": "huge", "capacity": 1_000_000_000u64,
                    "refill": {"tokens": 1_000_000_000u64, "period_seconds": 1},
                    "key": [{"claim": "sub"}]}],
        "api_keys": [{"name": "partners", "keys": [{"client_id": "partner-a", "sha256": PARTNER_KEY_SHA256}]}],
        "client_certs": [{"name": "mesh", "uri_sans": ["spiffe://test/ns/a/sa/b"]}],
        "routes": [
            {"name": "public", "match": {"path": "/public", "methods": ["GET"]}, "public": true},
            {"name": "keyed", "match": {"path": "/keyed"}, "providers": ["partners"]},
            {"name": "mesh", "match": {"path": "/mesh"}, "providers": ["mesh"]},
            {"name": "items", "match": {"path": "/items", "methods": ["GET"]}, "providers": ["test"],
             "scopes": {"all_of": ["items:read"]}, "limits": ["huge"]},
        ]
    });
    Engine::new(Rc::new(
        Policy::try_from(policy).unwrap_or_else(|e| panic!("{e:?}")),
    ))
}

/// Host calls of one request, by kind.
#[derive(Debug, PartialEq, Eq)]
struct Counted {
    clock: u32,
    store_reads: u32,
    store_writes: u32,
    counters: u32,
    properties: u32,
}

fn count(e: &mut Engine, store: &FakeStore, path: &str, token: Option<&str>) -> Counted {
    let auth = token.map(|t| format!("Bearer {t}"));
    match &auth {
        Some(a) => count_with(e, store, path, &[("authorization", a)]),
        None => count_with(e, store, path, &[]),
    }
}

fn count_with(
    e: &mut Engine,
    store: &FakeStore,
    path: &str,
    credentials: &[(&str, &str)],
) -> Counted {
    let calls = Calls::default();
    let req = TestRequest::get(path)
        .headers(&[(":method", "GET"), (":path", path)])
        .headers(credentials);
    let clock = CountingClock(&calls, FakeClock::at_secs(1_700_000_100));
    let counting_store = CountingStore(&calls, store);
    let peer = CountingPeer(
        &calls,
        KnownPeer {
            address: Some("10.0.0.1:5555"),
            uri_san: Some("spiffe://test/ns/a/sa/b"),
            subject: Some("CN=b"),
        },
    );
    let mut metrics = CountingMetrics(&calls);
    let head = RequestHead {
        peer: &peer,
        ..req.head()
    };
    let host = Host {
        clock: &clock,
        crypto: &crate::host::NoHostCrypto,
        store: &counting_store,
    };
    let d = e.on_request_headers(&head, &host, &mut metrics);
    assert!(matches!(d.verdict, Verdict::Allow(_)), "{path}");
    // The glue then counts the finished request (one counter).
    if let Some(finished) = crate::outcome::after_headers(&d) {
        metrics.incr(&crate::outcome::counter(finished));
    }
    Counted {
        clock: calls.clock.get(),
        store_reads: calls.get.get(),
        store_writes: calls.set.get(),
        counters: calls.metrics.get(),
        properties: calls.properties.get(),
    }
}

/// A public GET without limits (the bench's `public` route) needs nothing from Envoy but
/// its headers: no clock, no shared data, no connection property; only the glue's
/// `apiguard.allowed` counter.
#[test]
fn a_public_route_reads_no_clock_no_shared_data_no_property() {
    let (mut e, store) = (engine(), FakeStore::default());
    let public = Counted {
        clock: 0,
        store_reads: 0,
        store_writes: 0,
        counters: 1,
        properties: 0,
    };
    assert_eq!(count(&mut e, &store, "/public", None), public);
    assert_eq!(count(&mut e, &store, "/public", None), public);
}

/// The clock is asked twice on a JWT route with a limit (seconds for the token's lifetime,
/// milliseconds for the limit; the route has no lockout): the glue's `CallClock` makes that
/// one host call per request. A limit keyed by `sub` asks no connection property.
#[test]
fn a_jwt_route_with_a_limit_reads_and_writes_its_bucket_once() {
    let (mut e, store) = (engine(), FakeStore::default());
    // First request: verify (cache miss), create the bucket (one probe, one write);
    // counters: cache miss, limit allowed, apiguard.allowed.
    let items = Counted {
        clock: 2,
        store_reads: 1,
        store_writes: 1,
        counters: 3,
        properties: 0,
    };
    assert_eq!(count(&mut e, &store, "/items", Some(READ)), items);
    // Cached token: the same crossings (cache hit counter instead of miss).
    assert_eq!(count(&mut e, &store, "/items", Some(READ)), items);
}

/// An API key or a client certificate judges no lifetime: without limits or lockouts on
/// the route, no clock is read. The certificate route asks the certificate's URI SAN and
/// subject (both become claims for rules; two `get_property` calls in Envoy).
#[test]
fn api_key_and_certificate_routes_without_limits_read_no_clock() {
    let (mut e, store) = (engine(), FakeStore::default());
    let keyed = count_with(&mut e, &store, "/keyed", &[("x-api-key", PARTNER_KEY)]);
    assert_eq!(
        keyed,
        Counted {
            clock: 0,
            store_reads: 0,
            store_writes: 0,
            counters: 1,
            properties: 0,
        }
    );
    let mesh = count_with(&mut e, &store, "/mesh", &[]);
    assert_eq!(
        mesh,
        Counted {
            clock: 0,
            store_reads: 0,
            store_writes: 0,
            counters: 1,
            properties: 2,
        }
    );
}
