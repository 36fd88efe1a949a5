//! Criterion micro-benchmarks of apiguard's pure core (no Envoy, no Wasm):
//!
//! * `routes/lookup_1000`: `RouteTable::lookup` over 1,000 routes (first, middle, last, miss);
//! * `jwt/verify/<alg>`: `jwt::verify` with `NoHostCrypto` (pure-Rust signature path), one
//!   token per algorithm minted once with the demo keys in `envoy/demo/`;
//! * `validate/body_1k`: `RouteValidation::check_body` on a ~1 KB JSON body;
//! * `ratelimit/acquire`: `ratelimit::acquire` against an in-bench `SharedStore`;
//! * `engine/<case>`: one whole `Engine::on_request_headers` decision with the policy of the
//!   Envoy benchmark (bench/run.py): a public GET, and a GET with a cached RS256 token, the
//!   scope check and a rate limit keyed by `sub` (what apiguard does per request besides
//!   the Envoy host calls).
//!
//! Run: `cargo bench --bench core` (or `make bench`, which also runs the Envoy benchmark).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;

use apiguard::engine::{Engine, Host, KnownPeer, Metrics, RequestHead};
use apiguard::host::{CasError, Clock, NoHostCrypto, SharedStore};
use apiguard::jwt::{self, Alg, Jwks, Rules};
use apiguard::policy::Policy;
use apiguard::ratelimit::{self, LimitSpec};
use apiguard::routes::{CompiledRoute, PathMatch, RouteTable};
use apiguard::validate::raw::RawValidate;
use apiguard::validate::RouteValidation;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

const ISSUER: &str = "https://issuer.demo.apiguard";
const NOW: u64 = 1_800_000_000;

fn demo(file: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("envoy/demo")
        .join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// --- routes ---------------------------------------------------------------------------

fn bench_routes(c: &mut Criterion) {
    // 1,000 routes over 50 first segments, mixing exact paths and templates, like a large
    // API: /svc{k}/items{j} and /svc{k}/items{j}/{id}.
    let mut routes = Vec::with_capacity(1000);
    for i in 0..1000usize {
        let (svc, item) = (i % 50, i / 50);
        let path = if i % 2 == 0 {
            format!("/svc{svc}/items{item}")
        } else {
            format!("/svc{svc}/items{item}/{{id}}")
        };
        routes.push(CompiledRoute {
            methods: Some(vec!["GET".to_string(), "POST".to_string()]),
            path: PathMatch::parse(Some(&path), None).unwrap(),
            value: i,
        });
    }
    let table = RouteTable::new(routes);
    assert_eq!(table.len(), 1000);

    let mut g = c.benchmark_group("routes/lookup_1000");
    for (name, method, path, want) in [
        ("first", "GET", "/svc0/items0", Some(0usize)),
        ("template", "GET", "/svc25/items9/abc-123", Some(475)),
        ("last", "POST", "/svc49/items19/42", Some(999)),
        ("miss", "GET", "/svc7/nothing/here", None),
        ("miss_first_segment", "GET", "/other/path", None),
    ] {
        assert_eq!(table.lookup(method, path).map(|m| *m.route), want, "{path}");
        g.bench_function(name, |b| {
            b.iter(|| {
                table
                    .lookup(black_box(method), black_box(path))
                    .map(|m| m.index)
            })
        });
    }
    g.finish();
}

// --- jwt ------------------------------------------------------------------------------

fn bench_jwt(c: &mut Criterion) {
    let jwks = Jwks::parse(&demo("jwks.json")).unwrap().jwks;
    let rules = Rules {
        issuer: ISSUER.to_string(),
        audiences: vec!["api.demo".to_string()],
        max_lifetime_secs: Some(86_400),
        ..Rules::default()
    };
    let claims = json!({
        "iss": ISSUER, "aud": "api.demo", "sub": "bench-user",
        "scope": "items:read items:write", "iat": NOW - 10, "exp": NOW + 3600,
    });
    let hs_secret = jwt::mint::secret_from_key_file(&demo("hs256.key")).unwrap();
    let cases: [(Alg, &str, Vec<u8>); 5] = [
        (Alg::HS256, "demo-hs256", hs_secret),
        (Alg::RS256, "demo-rs256", demo("rs256.pem")),
        (Alg::ES256, "demo-es256", demo("es256.pem")),
        (Alg::ES384, "demo-es384", demo("es384.pem")),
        (Alg::EdDSA, "demo-ed25519", demo("ed25519.pem")),
    ];
    let mut g = c.benchmark_group("jwt/verify");
    for (alg, kid, key) in cases {
        let token = jwt::mint::mint(alg, &key, Some(kid), &claims).unwrap();
        let v = jwt::verify(&token, &jwks, &rules, NOW, &NoHostCrypto).unwrap();
        assert_eq!(v.alg, alg);
        g.bench_function(alg.name(), |b| {
            b.iter(|| {
                jwt::verify(
                    black_box(&token),
                    &jwks,
                    &rules,
                    black_box(NOW),
                    &NoHostCrypto,
                )
                .is_ok()
            })
        });
    }
    g.finish();
}

// --- validate -------------------------------------------------------------------------

/// The body the Envoy benchmark posts too (bench/run.py builds the same shape).
fn body_1k() -> Vec<u8> {
    let tags: Vec<String> = (0..12).map(|i| format!("tag-{i:02}-abcdefgh")).collect();
    let attrs: Vec<serde_json::Value> = (0..8)
        .map(|i| json!({"key": format!("attr{i}"), "value": format!("value-{i}-0123456789")}))
        .collect();
    let mut body = json!({
        "name": "widget",
        "price": 12.5,
        "quantity": 3,
        "active": true,
        "tags": tags,
        "attributes": attrs,
        "description": "",
    });
    let len = serde_json::to_vec(&body).unwrap().len();
    body["description"] = json!("x".repeat(1024usize.saturating_sub(len)));
    let out = serde_json::to_vec(&body).unwrap();
    assert_eq!(out.len(), 1024);
    out
}

fn body_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "price", "tags"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "price": {"type": "number", "minimum": 0},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
            "active": {"type": "boolean"},
            "description": {"type": "string", "maxLength": 2048},
            "tags": {"type": "array", "maxItems": 32,
                     "items": {"type": "string", "pattern": "^tag-[0-9]{2}-[a-z]+$"}},
            "attributes": {"type": "array", "maxItems": 32, "items": {
                "type": "object", "additionalProperties": false,
                "required": ["key", "value"],
                "properties": {"key": {"type": "string"}, "value": {"type": "string"}}}}
        }
    })
}

fn bench_validate(c: &mut Criterion) {
    let raw: RawValidate = serde_json::from_value(json!({
        "body": {"content_types": ["application/json"], "max_bytes": 4096, "schema": body_schema()}
    }))
    .unwrap();
    let rv = RouteValidation::compile(raw, "routes[0].validate", &[]).unwrap();
    let body = body_1k();
    rv.check_body(&body).unwrap();
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("body_1k", |b| {
        b.iter(|| rv.check_body(black_box(&body)).is_ok())
    });
    g.finish();
}

// --- rate limit -----------------------------------------------------------------------

/// A single-threaded stand-in for proxy-wasm shared data (CAS semantics as in Envoy).
#[derive(Default)]
struct Store {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
}

impl SharedStore for Store {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.map.borrow().get(key).cloned()
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasError> {
        let mut map = self.map.borrow_mut();
        if let (Some(want), Some((_, have))) = (cas, map.get(key)) {
            if want != 0 && want != *have {
                return Err(CasError::Mismatch);
            }
        }
        let next = self.next_cas.get().wrapping_add(1);
        self.next_cas.set(next);
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

fn bench_ratelimit(c: &mut Criterion) {
    let limit = LimitSpec::new("bench", 1_000_000_000, 1_000_000_000, 1000);
    let store = Store::default();
    let mut g = c.benchmark_group("ratelimit/acquire");
    let mut now = NOW * 1000;
    g.bench_function("one_key", |b| {
        b.iter(|| {
            now += 1;
            ratelimit::acquire(&store, &limit, black_box("sub:bench-user"), 1, now).allowed()
        })
    });
    let keys: Vec<String> = (0..1000).map(|i| format!("sub:user-{i}")).collect();
    let mut i = 0usize;
    g.bench_function("1000_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            now += 1;
            ratelimit::acquire(&store, &limit, black_box(&keys[i]), 1, now).allowed()
        })
    });
    g.finish();
}

// --- engine ---------------------------------------------------------------------------

/// Time stands still: the bench's bucket (capacity 1e9) never runs dry, and millions of
/// iterations must not age the token past `exp`.
struct FixedClock(u64);

impl Clock for FixedClock {
    fn now_millis(&self) -> u64 {
        self.0
    }
}

/// Counts like the glue does: a name lookup per increment.
#[derive(Default)]
struct NamedCounters(HashMap<String, u64>);

impl Metrics for NamedCounters {
    fn incr(&mut self, name: &str) {
        match self.0.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                self.0.insert(name.to_string(), 1);
            }
        }
    }
}

fn bench_engine(c: &mut Criterion) {
    let jwks: serde_json::Value = serde_json::from_slice(&demo("jwks.json")).unwrap();
    let policy = json!({
        "realm": "bench",
        "unmatched": "deny",
        "providers": [{"name": "demo", "issuer": ISSUER, "audiences": ["api.demo"],
                       "jwks": {"inline": jwks}}],
        "limits": [{"name": "huge", "capacity": 1_000_000_000u64,
                    "refill": {"tokens": 1_000_000_000u64, "period_seconds": 1},
                    "key": [{"claim": "sub"}], "max_buckets": 20_000}],
        "routes": [
            {"name": "public", "match": {"path": "/public", "methods": ["GET"]}, "public": true},
            {"name": "list-items", "match": {"path": "/items", "methods": ["GET"]},
             "providers": ["demo"], "scopes": {"all_of": ["items:read"]}, "limits": ["huge"]},
        ],
    });
    let policy = Policy::from_json(policy.to_string().as_bytes()).unwrap();
    let mut engine = Engine::new(std::rc::Rc::new(policy));
    let token = jwt::mint::mint(
        Alg::RS256,
        &demo("rs256.pem"),
        Some("demo-rs256"),
        &json!({"iss": ISSUER, "aud": "api.demo", "sub": "bench-user",
                "scope": "items:read items:write", "iat": NOW - 10, "exp": NOW + 3600}),
    )
    .unwrap();
    // What curl/wrk send, plus the headers Envoy adds before the filter chain.
    let base_headers = |extra: Option<(String, String)>| -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = [
            (":authority", "127.0.0.1:10000"),
            (":method", "GET"),
            (":scheme", "http"),
            ("user-agent", "wrk"),
            ("accept", "*/*"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "6f1d9c3e-2a4b-4c5d-8e7f-0123456789ab"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        h.extend(extra);
        h
    };
    let store = Store::default();
    let clock = FixedClock(NOW * 1000);
    let host = Host {
        clock: &clock,
        crypto: &NoHostCrypto,
        store: &store,
    };
    let mut metrics = NamedCounters::default();
    let mut g = c.benchmark_group("engine");
    for (name, path, headers) in [
        ("public_get", "/public", base_headers(None)),
        (
            "rs256_cached_scope_limit",
            "/items",
            base_headers(Some(("authorization".into(), format!("Bearer {token}")))),
        ),
    ] {
        let view: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let head = RequestHead {
            method: "GET",
            path,
            headers: &view,
            request_id: Some("6f1d9c3e-2a4b-4c5d-8e7f-0123456789ab"),
            peer: &KnownPeer {
                address: Some("127.0.0.1:40000"),
                uri_san: None,
                subject: None,
            },
            end_of_stream: true,
        };
        let first = engine.on_request_headers(&head, &host, &mut metrics);
        if let apiguard::engine::Verdict::Deny(d) = &first.verdict {
            panic!("{name}: {} {}", d.status, d.reason);
        }
        g.bench_function(name, |b| {
            b.iter(|| engine.on_request_headers(black_box(&head), &host, &mut metrics))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_routes,
    bench_jwt,
    bench_validate,
    bench_ratelimit,
    bench_engine
);
criterion_main!(benches);
