//! What each fuzz target does with one input, kept apart from libFuzzer so that
//! `tests/fuzz_regressions.rs` (in the main crate) can replay `fuzz/regressions/<target>/*`
//! through exactly the same code: it `#[path]`-includes this file.
//!
//! Every function must never panic on any input, except through the `assert!`s that state
//! an invariant of the code under test.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;

use apiguard::engine::{Engine, Host, KnownPeer, Metrics, RequestHead, Verdict};
use apiguard::host::{CasError, Clock, NoHostCrypto, SharedStore};
use apiguard::jwt::{self, Alg, Jwks, Rules};
use apiguard::policy::Policy;
use apiguard::ratelimit::bucket::{Bucket, Rate};
use apiguard::routes::{self, CompiledRoute, PathMatch, RouteTable};
use apiguard::validate::{RawValidate, RouteValidation};

/// The clock every target uses: 2027-01-15. Seed tokens in `fuzz/seeds/` are minted around it.
pub const NOW_SECS: u64 = 1_800_000_000;

/// Demo issuer and audience (envoy/demo/policy.yaml); the JWKS is envoy/demo/jwks.json.
pub const ISSUER: &str = "https://issuer.demo.apiguard";
const DEMO_JWKS: &str = include_str!("../../envoy/demo/jwks.json");
const DEMO_POLICY: &str = include_str!("../../envoy/demo/policy.yaml");

/// What a fuzz target runs on one input.
pub type Target = fn(&[u8]);

/// All targets by name, for the regression replay.
pub const TARGETS: [(&str, Target); 6] = [
    ("token", token),
    ("policy", policy),
    ("path", path),
    ("body", body),
    ("bucket", bucket),
    ("engine", engine),
];

// ---- token -------------------------------------------------------------------------------

fn demo_jwks() -> &'static Jwks {
    static JWKS: OnceLock<Jwks> = OnceLock::new();
    JWKS.get_or_init(|| match Jwks::parse(DEMO_JWKS.as_bytes()) {
        Ok(parsed) if parsed.rejected.is_empty() && parsed.jwks.len() == 5 => parsed.jwks,
        other => unreachable!("envoy/demo/jwks.json does not parse to 5 keys: {other:?}"),
    })
}

fn token_rules() -> &'static [Rules; 2] {
    static RULES: OnceLock<[Rules; 2]> = OnceLock::new();
    RULES.get_or_init(|| {
        [
            // The demo provider's rules.
            Rules {
                issuer: ISSUER.to_string(),
                audiences: vec!["api.demo".to_string()],
                max_lifetime_secs: Some(86_400),
                ..Rules::default()
            },
            // Everything optional on, and the other branches of each check.
            Rules {
                issuer: ISSUER.to_string(),
                audiences: Vec::new(),
                clock_skew_secs: 0,
                require_exp: false,
                max_lifetime_secs: None,
                typ: Some(vec!["jwt".to_string(), "at+jwt".to_string()]),
                algorithms: Some(vec![Alg::RS256, Alg::ES256, Alg::EdDSA, Alg::HS256]),
                max_token_bytes: 65_536,
            },
        ]
    })
}

/// `jwt::verify` (pure-Rust crypto, demo JWKS) and `jwt::peek_issuer` on a string.
pub fn token(data: &[u8]) {
    let _ = token_verifies(data);
}

/// [`token`], telling whether the demo provider's rules accepted the token.
pub fn token_verifies(data: &[u8]) -> bool {
    let mut accepted = Vec::new();
    let Ok(token) = std::str::from_utf8(data) else {
        return false;
    };
    let peeked = jwt::peek_issuer(token);
    for rules in token_rules() {
        let result = jwt::verify(token, demo_jwks(), rules, NOW_SECS, &NoHostCrypto);
        accepted.push(result.is_ok());
        if let Ok(v) = result {
            // A verified token's `iss` is the configured one, and the cheap peek (which
            // picks the provider in the engine) must read the same `iss` from it.
            let iss = v.claims.get("iss").and_then(|i| i.as_str());
            assert_eq!(iss, Some(ISSUER), "verified token with another iss");
            assert_eq!(
                peeked.as_deref(),
                Some(ISSUER),
                "peek_issuer disagrees with verify"
            );
            assert!(token.len() <= rules.max_token_bytes);
            assert!(jwt::still_valid(&v, rules, NOW_SECS));
        }
    }
    accepted.first() == Some(&true)
}

// ---- policy ------------------------------------------------------------------------------

/// `Policy::from_json` on bytes; a policy that compiles also serves one request.
pub fn policy(data: &[u8]) {
    if let Ok(policy) = Policy::from_json(data) {
        let mut engine = Engine::new(Rc::new(policy));
        let headers = vec![("authorization".to_string(), "Bearer x.y.z".to_string())];
        let _ = decide(&mut engine, "GET", "/items?limit=5", &headers, true);
    }
}

// ---- path --------------------------------------------------------------------------------

type RouteSpec = (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static [&'static str]>,
);

const ROUTE_SPECS: [RouteSpec; 10] = [
    (Some("/healthz"), None, Some(&["GET", "HEAD"])),
    (Some("/items/{id}"), None, Some(&["GET"])),
    (Some("/items/{id}/tags/{tag}"), None, None),
    (None, Some("/items"), Some(&["POST"])),
    (None, Some("/public/"), None),
    (None, Some("/public"), None),
    (Some("/{tenant}/admin"), None, None),
    (Some("/admin"), None, None),
    (None, Some("/admin"), Some(&["DELETE"])),
    (None, Some("/"), Some(&["OPTIONS"])),
];

fn compiled_routes() -> Vec<CompiledRoute<usize>> {
    ROUTE_SPECS
        .iter()
        .enumerate()
        .filter_map(|(i, (p, x, m))| {
            Some(CompiledRoute {
                methods: m.map(|m| m.iter().map(|s| s.to_string()).collect()),
                path: PathMatch::parse(*p, *x).ok()?,
                value: i,
            })
        })
        .collect()
}

fn route_table() -> &'static RouteTable<usize> {
    static TABLE: OnceLock<RouteTable<usize>> = OnceLock::new();
    TABLE.get_or_init(|| RouteTable::new(compiled_routes()))
}

fn linear_routes() -> &'static Vec<CompiledRoute<usize>> {
    static ROUTES: OnceLock<Vec<CompiledRoute<usize>>> = OnceLock::new();
    ROUTES.get_or_init(compiled_routes)
}

/// `unsafe_path_reason`, `split_query` and `RouteTable::lookup` (checked against a plain
/// first-match scan, which the table's first-segment index must agree with). An input
/// with a newline is `template\npath`: `PathMatch::parse` on the template, then `matches`.
pub fn path(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((template, candidate)) = input.split_once('\n') {
        for (p, x) in [(Some(template), None), (None, Some(template))] {
            if let Ok(m) = PathMatch::parse(p, x) {
                if let Some(params) = m.matches(candidate) {
                    for (_, value) in &params {
                        assert!(!value.is_empty() && !value.contains('/'));
                    }
                }
            }
        }
        return;
    }
    // As the engine does: the query is split off first, and only the path is checked.
    let (path, _query) = routes::split_query(input);
    assert!(!path.contains('?'));
    let reason = routes::unsafe_path_reason(path);
    if reason.is_none() {
        // What the filter refuses elsewhere never passes as safe.
        assert!(path.starts_with('/'));
        assert!(!path.split('/').any(|s| s == "." || s == ".."));
        assert!(!path.contains("//") && !path.contains('\\') && !path.contains('#'));
        // Nor does anything a lenient upstream decoder (percent-decoding, then overlong
        // UTF-8 forms of ASCII, backslash as slash) would read as another path.
        let seen = lenient_decode(path);
        assert!(
            !seen.split(|&b| b == b'/').any(|s| s == b"." || s == b".."),
            "{input:?} decodes to a dot segment"
        );
        assert!(
            !seen.windows(2).any(|w| w == b"//") && !seen.contains(&b';') && !seen.contains(&0),
            "{input:?} decodes to {seen:?}"
        );
    }
    for method in ["GET", "POST", "DELETE", "OPTIONS", "HEAD", "get"] {
        let got = route_table().lookup(method, path);
        let want = linear_routes().iter().enumerate().find_map(|(i, r)| {
            let method_ok = r
                .methods
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == method));
            if !method_ok {
                return None;
            }
            r.path.matches(path).map(|params| (i, params))
        });
        match (got, want) {
            (None, None) => {}
            (Some(g), Some((i, params))) => {
                assert_eq!(
                    g.index, i,
                    "index disagrees with a linear scan for {path:?}"
                );
                assert_eq!(g.params, params);
                assert_eq!(*g.route, i);
            }
            (g, w) => unreachable!(
                "lookup {:?} vs linear {:?} for {method} {path:?}",
                g.map(|m| m.index),
                w.map(|x| x.0)
            ),
        }
    }
}

/// What a lenient legacy decoder makes of a path: `%XX` decoded (malformed escapes kept),
/// then 2- and 3-byte overlong encodings of ASCII folded (`C0 AE` is `.`), a backslash read as `/`.
fn lenient_decode(path: &str) -> Vec<u8> {
    let raw = path.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                bytes.push(v);
                i += 3;
            }
            _ => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (0xc0 | 0xc1, Some(&c), _) if c & 0xc0 == 0x80 => {
                out.push(((b & 0x1f) << 6) | (c & 0x3f));
                i += 2;
            }
            (0xe0, Some(&c), Some(&d)) if c & 0xe0 == 0x80 && d & 0xc0 == 0x80 => {
                out.push(((c & 0x3f) << 6) | (d & 0x3f));
                i += 3;
            }
            (b'\\', _, _) => {
                out.push(b'/');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

// ---- body --------------------------------------------------------------------------------

fn validations() -> &'static [RouteValidation] {
    static V: OnceLock<Vec<RouteValidation>> = OnceLock::new();
    V.get_or_init(|| {
        let blocks = [
            // The demo create-item route.
            serde_json::json!({
                "body": {
                    "content_types": ["application/json"],
                    "max_bytes": 4096,
                    "schema": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1, "maxLength": 64},
                            "price": {"type": "number", "minimum": 0}
                        }
                    }
                }
            }),
            // A recursive schema at the deepest nesting the policy accepts.
            serde_json::json!({
                "max_errors": 100,
                "body": {
                    "max_depth": 64,
                    "schema": {
                        "$defs": {
                            "node": {
                                "anyOf": [
                                    {"type": ["string", "null", "boolean"], "pattern": "^[a-z]*$"},
                                    {"type": "number", "multipleOf": 0.5, "maximum": 1e300},
                                    {"type": "array", "items": {"$ref": "#/$defs/node"}, "uniqueItems": true},
                                    {"type": "object", "additionalProperties": {"$ref": "#/$defs/node"},
                                     "propertyNames": {"maxLength": 8}}
                                ]
                            }
                        },
                        "$ref": "#/$defs/node"
                    }
                }
            }),
            // No schema: size, UTF-8, syntax, depth and duplicate keys only.
            serde_json::json!({"body": {"content_types": ["application/json"], "max_depth": 4}}),
        ];
        blocks
            .into_iter()
            .filter_map(|b| {
                let raw: RawValidate = serde_json::from_value(b).ok()?;
                RouteValidation::compile(raw, "routes[0].validate", &[]).ok()
            })
            .collect()
    })
}

/// `RouteValidation::check_body` with schemas compiled once.
pub fn body(data: &[u8]) {
    let v = validations();
    assert_eq!(v.len(), 3, "a fuzz schema no longer compiles");
    for rule in v {
        if let Err(f) = rule.check_body(data) {
            assert!(
                matches!(f.status, 400 | 413 | 415),
                "unexpected status {}",
                f.status
            );
            let _ = f.errors_json();
        }
    }
}

// ---- bucket ------------------------------------------------------------------------------

fn take_u64(data: &mut &[u8]) -> u64 {
    let n = data.len().min(8);
    let (head, tail) = data.split_at(n);
    let mut buf = [0u8; 8];
    if let Some(dst) = buf.get_mut(..n) {
        dst.copy_from_slice(head);
    }
    *data = tail;
    u64::from_le_bytes(buf)
}

/// Token-bucket arithmetic. Input: capacity, refill tokens, period (ms), start time, then
/// steps of (time, cost), all little-endian u64. Invariants: never more than `capacity`
/// tokens; what was granted over the run never exceeds capacity plus what the elapsed time
/// (up to the latest clock seen) earned; encode/decode round-trips.
pub fn bucket(data: &[u8]) {
    let mut d = data;
    let rate = Rate::new(take_u64(&mut d), take_u64(&mut d), take_u64(&mut d));
    let start = take_u64(&mut d);
    let mut b = Bucket::full(&rate, start);
    assert_eq!(b.tokens(&rate), rate.capacity());
    let period = u128::from(rate.period_ms());
    let mut granted: Option<u128> = Some(0);
    let mut latest = start;
    let mut steps = 0;
    while d.len() >= 16 && steps < 256 {
        steps += 1;
        let now = take_u64(&mut d);
        let cost = take_u64(&mut d);
        latest = latest.max(now);
        let before = b;
        let out = b.take(&rate, cost, now);
        assert!(
            out.remaining <= rate.capacity(),
            "{rate:?} {before:?} -> {out:?}"
        );
        assert!(b.tokens(&rate) <= rate.capacity());
        assert_eq!(out.remaining, b.tokens(&rate));
        assert_eq!(out.allowed, out.retry_after_ms == Some(0), "{out:?}");
        if out.allowed {
            assert!(
                cost <= rate.capacity(),
                "granted {cost} > capacity {rate:?}"
            );
            granted = granted.and_then(|g| g.checked_add(u128::from(cost) * period));
        } else {
            assert_eq!(
                b.tokens(&rate),
                before_tokens_after_refill(&before, &rate, now)
            );
        }
        if out.reset_ms == 0 {
            assert!(b.is_full(&rate));
        }
        let budget = (u128::from(rate.capacity()) * period)
            .saturating_add(u128::from(latest - start) * u128::from(rate.refill_tokens()));
        if let Some(g) = granted {
            assert!(
                g <= budget,
                "granted {g} units > budget {budget}: {rate:?} {b:?}"
            );
        }
        // The bucket never claims to be refilled later than the latest clock seen.
        assert!(b.last_ms() <= latest);
        let round = Bucket::decode(&b.encode(), &rate);
        assert_eq!(round, Some(b));
    }
    let _ = rate.full_refill_ms();
    // Decoding foreign bytes clamps to capacity.
    if let Some(foreign) = Bucket::decode(data.get(..24).unwrap_or(&[]), &rate) {
        assert!(foreign.tokens(&rate) <= rate.capacity());
    }
}

fn before_tokens_after_refill(before: &Bucket, rate: &Rate, now: u64) -> u64 {
    let mut b = *before;
    b.refill(rate, now);
    b.tokens(rate)
}

// ---- engine ------------------------------------------------------------------------------

struct FixedClock(Cell<u64>);

impl Clock for FixedClock {
    fn now_millis(&self) -> u64 {
        self.0.get()
    }
}

#[derive(Default)]
struct MapStore {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next: Cell<u32>,
}

impl SharedStore for MapStore {
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
        self.next.set(self.next.get().wrapping_add(1));
        map.insert(key.to_string(), (value.to_vec(), self.next.get()));
        Ok(())
    }
}

struct NoMetrics;

impl Metrics for NoMetrics {
    fn incr(&mut self, _: &str) {}
}

struct Outcome {
    allowed: bool,
    status: Option<u16>,
    route: Option<String>,
    principal: Option<String>,
}

fn decide(
    engine: &mut Engine,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    end_of_stream: bool,
) -> Outcome {
    let clock = FixedClock(Cell::new(NOW_SECS * 1000));
    let store = MapStore::default();
    let host = Host {
        clock: &clock,
        crypto: &NoHostCrypto,
        store: &store,
    };
    let request_id = headers
        .iter()
        .find(|(k, _)| k == "x-request-id")
        .map(|(_, v)| v.as_str());
    let view: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = RequestHead {
        method,
        path,
        headers: &view,
        request_id,
        peer: &KnownPeer {
            address: Some("127.0.0.1:40000"),
            uri_san: None,
            subject: None,
        },
        end_of_stream,
    };
    let d = engine.on_request_headers(&req, &host, &mut NoMetrics);
    let (allowed, status) = match &d.verdict {
        Verdict::Allow(_) => (true, None),
        Verdict::Deny(denial) => (false, Some(denial.status)),
    };
    Outcome {
        allowed,
        status,
        route: d.route,
        principal: d.principal,
    }
}

thread_local! {
    static DEMO: Rc<Policy> = Rc::new(match Policy::from_yaml(DEMO_POLICY) {
        Ok(p) => p,
        Err(e) => unreachable!("envoy/demo/policy.yaml does not compile: {e:?}"),
    });
}

/// `Engine::on_request_headers` (then the body phase) with the demo policy. Input, as text
/// (invalid UTF-8 replaced): a method line, a `:path` line, `name: value` header lines,
/// then optionally an empty line and the body.
pub fn engine(data: &[u8]) {
    let _ = engine_allows(data);
}

/// [`engine`], telling whether the request was allowed at its headers.
pub fn engine_allows(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h, Some(b)),
        None => (text.as_ref(), None),
    };
    let mut lines = head.split('\n');
    let method = lines.next().unwrap_or("GET");
    let path = lines.next().unwrap_or("/");
    let headers: Vec<(String, String)> = lines
        .take(200)
        .map(|l| match l.split_once(':') {
            Some((k, v)) => (k.to_ascii_lowercase(), v.trim_start().to_string()),
            None => (l.to_ascii_lowercase(), String::new()),
        })
        .collect();
    let policy = DEMO.with(Rc::clone);
    let mut engine = Engine::new(policy);
    let clock = FixedClock(Cell::new(NOW_SECS * 1000));
    let store = MapStore::default();
    let host = Host {
        clock: &clock,
        crypto: &NoHostCrypto,
        store: &store,
    };
    let view: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = RequestHead {
        method,
        path,
        headers: &view,
        request_id: None,
        peer: &KnownPeer {
            address: Some("127.0.0.1:40000"),
            uri_san: None,
            subject: None,
        },
        end_of_stream: body.is_none(),
    };
    let d = engine.on_request_headers(&req, &host, &mut NoMetrics);
    match &d.verdict {
        Verdict::Deny(denial) => {
            assert!((400..600).contains(&denial.status), "{denial:?}");
        }
        Verdict::Allow(_) => {
            // The demo policy has one public route; anything else needs a credential.
            let public = d.route.as_deref() == Some("health");
            assert!(
                public || d.principal.is_some(),
                "allowed without a principal: {method} {path:?} -> {:?}",
                d.route
            );
            // Never allow what the path check refuses.
            assert!(routes::unsafe_path_reason(routes::split_query(path).0).is_none());
            if let (Some(check), Some(body)) = (d.body, body) {
                let bytes = body.as_bytes();
                let seen = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                let _ = engine.on_body_progress(&check, seen);
                if let Err(denial) = engine.on_body_end(&check, bytes, seen) {
                    assert!((400..600).contains(&denial.status), "{denial:?}");
                }
            }
        }
    }
    // The same request again hits the worker's token cache: same verdict.
    let again = decide(&mut engine, method, path, &headers, body.is_none());
    let first_allowed = matches!(d.verdict, Verdict::Allow(_));
    // A rate limit may deny the second one; nothing may allow what was denied.
    assert!(
        !again.allowed || first_allowed,
        "denied first, allowed second: {method} {path:?} {:?}",
        again.status
    );
    assert!(again.route == d.route || again.status == Some(429));
    let _ = again.principal;
    first_allowed
}
