//! Issue 12 (routes, preflight, query and body findings): the engine refuses spellings of a
//! route that upstream frameworks fold together, instead of letting them through unchecked.

use super::test_request::TestRequest;
use super::*;
use crate::host::fake::{Counted, FakeClock, FakeStore};
use serde_json::json;

/// sha256("k"): the API key the tests present.
const KEY_SHA: &str = "8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a";

fn policy(extra: serde_json::Value) -> Engine {
    let mut p = json!({
        "unmatched": "allow",
        "api_keys": [{"name": "keys", "keys": [{"client_id": "c", "sha256": KEY_SHA}]}],
        "limits": [{"name": "quota", "capacity": 100, "key": [{"constant": "all"}],
                    "cost": {"methods": {"POST": 5}}}],
        "routes": [
            {"name": "admin", "match": {"prefix": "/admin"}, "providers": ["keys"]},
            {"name": "item", "match": {"path": "/items/{id}", "methods": ["GET", "DELETE"]},
             "providers": ["keys"]},
            {"name": "data", "match": {"path": "/tenants/{t}/data"}, "providers": ["keys"]},
            {"name": "any", "match": {"prefix": "/open"}, "public": true, "limits": ["quota"]},
        ]
    });
    if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    Engine::new(Rc::new(
        Policy::try_from(p).unwrap_or_else(|e| panic!("{e:?}")),
    ))
}

fn run(e: &mut Engine, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
    run_with(e, &FakeStore::default(), method, path, headers, true)
}

fn run_with(
    e: &mut Engine,
    store: &FakeStore,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    end_of_stream: bool,
) -> Decision {
    TestRequest::new(method, path)
        .headers(headers)
        .end_of_stream(end_of_stream)
        .at_secs(1_700_000_000)
        .store(store)
        .send(e, &mut Counted::default())
}

fn reason(d: &Decision) -> Option<(u16, &'static str)> {
    match &d.verdict {
        Verdict::Deny(x) => Some((x.status, x.reason)),
        Verdict::Allow(_) => None,
    }
}

#[test]
fn lookalike_paths_are_refused_when_unmatched_is_allow() {
    let mut e = policy(json!({}));
    for (m, p, route) in [
        ("GET", "/ADMIN", "admin"),
        ("GET", "/Admin/users", "admin"),
        ("GET", "/items/42/", "item"),
        ("DELETE", "/Items/42", "item"),
        ("GET", "/tenants/other/data/", "data"),
    ] {
        let d = run(&mut e, m, p, &[]);
        assert_eq!(reason(&d), Some((400, "noncanonical_path")), "{m} {p}");
        assert_eq!(d.route.as_deref(), Some(route), "{m} {p}");
    }
    // The exact spellings are checked as before; unrelated paths still pass.
    assert_eq!(
        reason(&run(&mut e, "GET", "/admin", &[])),
        Some((401, "missing_credentials"))
    );
    assert_eq!(reason(&run(&mut e, "GET", "/elsewhere/", &[])), None);
    // POST /items/42 is unmatched (no POST route): so is POST /Items/42.
    assert_eq!(reason(&run(&mut e, "POST", "/Items/42", &[])), None);
}

#[test]
fn lowercase_methods_of_known_methods_are_refused_everywhere() {
    for unmatched in ["allow", "deny"] {
        let mut e = policy(json!({"unmatched": unmatched}));
        for (m, p) in [
            ("delete", "/items/42"),
            ("get", "/admin"),
            ("post", "/open/x"),
            ("Options", "/anything"),
        ] {
            assert_eq!(
                reason(&run(&mut e, m, p, &[("x-api-key", "k")])),
                Some((400, "noncanonical_method")),
                "{unmatched} {m} {p}"
            );
        }
        // A custom lower-case method no policy names is just another method.
        let d = run(&mut e, "frobnicate", "/open/x", &[]);
        assert_eq!(reason(&d), None);
    }
}

#[test]
fn lowercase_post_never_pays_the_default_cost() {
    // Before: `post` matched the methodless route and paid 1 instead of POST's 5.
    let mut e = policy(json!({}));
    let store = FakeStore::default();
    for _ in 0..20 {
        assert_eq!(
            reason(&run_with(&mut e, &store, "POST", "/open/x", &[], true)),
            None
        );
    }
    assert_eq!(
        reason(&run_with(&mut e, &store, "POST", "/open/x", &[], true)),
        Some((429, "rate_limited"))
    );
    assert_eq!(
        reason(&run_with(&mut e, &store, "post", "/open/x", &[], true)),
        Some((400, "noncanonical_method"))
    );
}

#[test]
fn lookalikes_unmatched_restores_literal_matching() {
    let mut e = policy(json!({"lookalikes": "unmatched"}));
    assert_eq!(reason(&run(&mut e, "GET", "/ADMIN", &[])), None);
    assert_eq!(reason(&run(&mut e, "delete", "/items/42", &[])), None);
}

/// Issue 12 finding 7, measured: with `on_table_full: share` one client spraying distinct
/// keys fills the table and then drains the live buckets every new key shares, so
/// legitimate newcomers are refused on their first request. A per-source limit listed
/// first on the route (it refuses before the keyed limit is charged) caps what one
/// source can spray and restores service. Returns (denied newcomers, sprayer admitted).
fn spray(route: &str, sprayed: usize) -> (usize, usize) {
    let mut e = policy(json!({
        "unmatched": "deny",
        "limits": [
            {"name": "per-client", "capacity": 10, "refill": {"tokens": 10, "period_seconds": 60},
             "key": [{"header": "x-client"}], "max_buckets": 200},
            {"name": "per-source", "capacity": 100, "refill": {"tokens": 100, "period_seconds": 60},
             "key": [{"client_ip": {"trusted_hops": 0}}]},
        ],
        "routes": [
            {"name": "keyed", "match": {"path": "/keyed"}, "public": true, "limits": ["per-client"]},
            {"name": "capped", "match": {"path": "/capped"}, "public": true,
             "limits": ["per-source", "per-client"]},
        ]
    }));
    let store = FakeStore::default();
    let clock = FakeClock::at_secs(1_700_000_000);
    let mut go = |client: &str, ip: &str| {
        let d = TestRequest::get(route)
            .header("x-client", client)
            .peer_addr(ip)
            .clock(&clock)
            .store(&store)
            .send(&mut e, &mut Counted::default());
        matches!(d.verdict, Verdict::Allow(_))
    };
    let admitted = (0..sprayed)
        .filter(|i| go(&format!("spray-{i}"), "6.6.6.6:1000"))
        .count();
    let denied = (0..100)
        .filter(|i| !go(&format!("legit-{i}"), &format!("10.0.{i}.1:2000")))
        .count();
    (denied, admitted)
}

#[test]
fn table_full_share_lets_one_sprayer_deny_newcomers_unless_a_per_source_limit_runs_first() {
    // Below the table size nothing is shared: every newcomer gets its own bucket.
    assert_eq!(spray("/keyed", 100).0, 0);
    // 20 requests per slot (2,000 keys over 200 slots): every live bucket is drained, and
    // each of the 100 newcomers is refused on its first request.
    let (denied, admitted) = spray("/keyed", 4_000);
    eprintln!("share, 4000 sprayed keys over 200 slots: {denied}/100 newcomers refused, {admitted} spray requests admitted");
    assert_eq!(denied, 100, "newcomers refused after the spray");
    assert!(
        admitted > 1_000,
        "the sprayer got {admitted} requests through"
    );
    // The same spray against a route whose first limit is per source: the sprayer's 101st
    // request is refused before it reaches the keyed table, and no newcomer is denied.
    let (denied, admitted) = spray("/capped", 4_000);
    eprintln!("per-source limit first: {denied}/100 newcomers refused, {admitted} spray requests admitted");
    assert_eq!((denied, admitted), (0, 100));
}

fn preflight_engine(bypass: bool) -> Engine {
    policy(json!({
        "unmatched": "deny",
        "bypass_cors_preflight": bypass,
        "providers": [{"name": "jwt", "issuer": "https://issuer.test",
                       "jwks": {"inline": {"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256",
                                "k": "YXBpZ3VhcmQtdW5pdC10ZXN0cy1obWFjLWtleS0zMmI"}]}},
                       "from": [{"query": "access_token"}]}],
        "routes": [
            {"name": "item", "match": {"path": "/items/{id}", "methods": ["GET", "DELETE"]},
             "providers": ["keys", "jwt"]},
            {"name": "dav", "match": {"prefix": "/dav", "methods": ["OPTIONS", "PUT"]},
             "providers": ["keys"]},
        ]
    }))
}

const PREFLIGHT: [(&str, &str); 2] = [
    ("origin", "https://app.example"),
    ("access-control-request-method", "DELETE"),
];

#[test]
fn cors_preflight_is_forwarded_only_when_enabled_and_shaped_like_one() {
    let d = run(
        &mut preflight_engine(false),
        "OPTIONS",
        "/items/1",
        &PREFLIGHT,
    );
    assert_eq!(reason(&d), Some((403, "no_route")));
    let mut e = preflight_engine(true);
    let d = run(&mut e, "OPTIONS", "/items/1", &PREFLIGHT);
    assert_eq!(reason(&d), None);
    assert_eq!(d.route.as_deref(), Some("item"));
    // A method no route serves there, or a path no route serves: not bypassed.
    let put = [
        ("origin", "https://a"),
        ("access-control-request-method", "PUT"),
    ];
    assert_eq!(
        reason(&run(&mut e, "OPTIONS", "/items/1", &put)),
        Some((403, "no_route"))
    );
    assert_eq!(
        reason(&run(&mut e, "OPTIONS", "/other", &PREFLIGHT)),
        Some((403, "no_route"))
    );
}

#[test]
fn cors_preflight_is_no_way_around_authentication() {
    let mut e = preflight_engine(true);
    // Carrying any credential (even one the route does not read) makes it a real request.
    for extra in [
        ("x-api-key", "wrong"),
        ("authorization", "Bearer x"),
        ("cookie", "s=1"),
    ] {
        let mut h = PREFLIGHT.to_vec();
        h.push(extra);
        assert!(
            reason(&run(&mut e, "OPTIONS", "/items/1", &h)).is_some(),
            "{extra:?}"
        );
    }
    let d = run(&mut e, "OPTIONS", "/items/1?access_token=abc", &PREFLIGHT);
    assert!(reason(&d).is_some());
    // A body: not a preflight.
    let d = run_with(
        &mut e,
        &FakeStore::default(),
        "OPTIONS",
        "/items/1",
        &PREFLIGHT,
        false,
    );
    assert_eq!(reason(&d), Some((403, "no_route")));
    // Where OPTIONS is a real operation of the API, it stays authenticated.
    let dav = [
        ("origin", "https://a"),
        ("access-control-request-method", "PUT"),
    ];
    let d = run(&mut e, "OPTIONS", "/dav/x", &dav);
    assert_eq!(reason(&d), Some((401, "missing_credentials")));
}
